//! Signals: SIGTERM and SIGINT cancel the shutdown token, SIGHUP asks for a reload.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The signals the daemon handles.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Holds SIGTERM, SIGINT and SIGHUP back until [`on_signals`] is ready for them: systemd may
/// send SIGTERM at any moment, and one that arrived before the handlers were installed would
/// kill the daemon outright instead of stopping it. Call first thing in `main`; every thread
/// started later inherits the mask, so the signals reach the main thread once it unblocks them.
pub fn hold_signals() {
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None);
}

/// Wires the signals to `token` and returns the reload requests. Must run inside the runtime.
pub fn on_signals(token: CancellationToken) -> std::io::Result<mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // One pending request is enough: SIGHUPs that arrive during a reload fold into the next.
    let (reload_tx, reload_rx) = mpsc::channel(1);
    // Handlers are in place: a signal held back since start is delivered now, to this thread
    // (the one that runs `block_on`; the runtime's workers keep them blocked).
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled()), None);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    let _ = reload_tx.try_send(());
                    continue;
                }
            };
            tracing::info!("{name} received: stopping");
            token.cancel();
            return;
        }
    });
    Ok(reload_rx)
}
