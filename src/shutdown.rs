//! Signals: SIGTERM and SIGINT cancel the shutdown token, SIGHUP asks for a reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Wires the signals to `token` and returns the reload requests. Must run inside the runtime.
pub fn on_signals(token: CancellationToken) -> std::io::Result<mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // One pending request is enough: SIGHUPs that arrive during a reload fold into the next.
    let (reload_tx, reload_rx) = mpsc::channel(1);
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
