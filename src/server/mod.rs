//! The accept loops: one per listener, a bounded number of connection tasks, orderly shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::budget::Budget;
use crate::config::Settings;
use crate::error::Error;
use crate::journal::{self, Target};
use crate::listener::{Listeners, Socket};
use crate::ratelimit::RateLimiter;
use accept::{Accept, Incoming};
use state::{Context, Stats};
use supervisor::{Control, Heartbeat, Supervisor, Watchdog};

mod accept;
pub mod connection;
mod datagram;
pub mod encode;
pub mod reload;
pub mod state;
pub mod supervisor;

pub use accept::{contain, raise_fd_limit};

/// Serves `listeners` until `control.shutdown` is cancelled (or, for an `Accept=yes`
/// connection, until the client leaves), then drains the connections and the sink.
///
/// The caller owns every trigger: production passes signals and systemd's notify socket in
/// `control`, tests pass a token they cancel.
pub async fn run(listeners: Listeners, settings: Settings, control: Control) -> Result<(), Error> {
    let target = Target::resolve(settings.journal.sink);
    let budget = Budget::new(settings.limits.max_buffered_bytes);
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
    let (sink, sink_task) = journal::spawn(target);
    let stats = Arc::new(Stats::default());
    let shutdown = control.shutdown.clone();
    let ctx = Context {
        settings: settings_rx,
        sink,
        stats: stats.clone(),
        limiter: Arc::new(RateLimiter::default()),
        budget,
        shutdown: shutdown.clone(),
    };

    let inherited = listeners.inherited();
    let single = listeners.is_single_connection();
    let Listeners { sockets, bound } = listeners;
    let named = sockets.len() > 1;
    // One socket unit names all its sockets alike (`FileDescriptorName=` is per unit): a name
    // that two listeners share gives way to each one's own address, so SOCKET= tells them apart.
    let names = listener_names(&sockets);
    let next_id = Arc::new(AtomicU64::new(1));
    let tracker = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    let mut hearts = Vec::new();
    // Accept loops wake this often to show the watchdog they are alive.
    let beat_every = control.watchdog.map(|w| w / 4);

    for (listener, name) in sockets.into_iter().zip(names) {
        let origin = listener.origin.clone();
        let registering = |e| Error::io(format!("{origin}: registering with the runtime"), e);
        listener.socket.set_nonblocking().map_err(registering)?;
        tracing::info!(
            "serving {} ({}, name {}), messages to {}",
            listener.origin,
            listener.socket.describe(),
            listener.name,
            match target {
                Target::Journal => "the journal",
                Target::Stdout => "stdout",
            }
        );
        let heart = Arc::new(Heartbeat::default());
        let accept = Accept {
            ctx: ctx.clone(),
            tracker: tracker.clone(),
            next_id: next_id.clone(),
            socket_name: named.then(|| Arc::from(name.as_str())),
            heartbeat: beat_every.map(|every| (heart.clone(), every)),
        };
        match listener.socket {
            Socket::Unix(l) => {
                let l = tokio::net::UnixListener::from_std(l).map_err(registering)?;
                hearts.push(heart);
                accept_loops.spawn(accept.run(Incoming::Unix(l)));
            }
            Socket::Tcp(l) => {
                let l = tokio::net::TcpListener::from_std(l).map_err(registering)?;
                hearts.push(heart);
                accept_loops.spawn(accept.run(Incoming::Tcp(l)));
            }
            Socket::ConnectedUnix(s) => {
                accept.unix_connection(tokio::net::UnixStream::from_std(s).map_err(registering)?);
            }
            Socket::ConnectedTcp(s) => {
                accept.tcp_connection(tokio::net::TcpStream::from_std(s).map_err(registering)?);
            }
            Socket::Datagram(s) => {
                let s = tokio::net::UnixDatagram::from_std(s).map_err(registering)?;
                hearts.push(heart);
                let datagrams = datagram::Datagrams {
                    ctx: accept.ctx,
                    next_id: accept.next_id,
                    socket_name: accept.socket_name,
                    heartbeat: accept.heartbeat,
                };
                accept_loops.spawn(contain(datagrams.run(s)).map(|served| {
                    if let Err(panic) = served {
                        tracing::error!("the datagram socket's loop panicked: {panic}");
                    }
                }));
            }
        }
    }
    accept_loops.close();
    let notifier = control.notifier.clone();
    notifier.ready_with_status(&stats.summary());

    let mut supervisor = Supervisor {
        settings: settings_tx,
        stats: stats.clone(),
        sink: ctx.sink.clone(),
        limiter: ctx.limiter.clone(),
        reports: Default::default(),
        control,
        inherited,
        watchdog: Watchdog::new(hearts),
    };
    if single {
        // Accept=yes: the one connection is the whole job.
        tracker.close();
        tokio::select! {
            () = tracker.wait() => {}
            () = supervisor.run() => {}
        }
    } else {
        supervisor.run().await;
    }

    notifier.stopping(&format!("stopping: {}", stats.summary()));
    let timeout = ctx.settings.borrow().service.shutdown_timeout;
    shutdown.cancel();
    accept_loops.wait().await;
    // Not accepting any more: a client connecting from now on is refused, not left hanging.
    drop(bound);
    tracker.close();
    tracing::debug!(
        "shutting down: draining {} connections",
        stats.clients.load(Ordering::Relaxed)
    );
    // Connections stop reading at their drain deadline; then everything read is written,
    // the pending suppression reports too, for as long as the journal keeps taking entries.
    let counters = ctx.sink.counters().clone();
    let drained = async {
        tracker.wait().await;
        supervisor.write_pending_reports().await;
        drop(supervisor);
        drop(ctx);
        let _ = sink_task.await;
    };
    if !drain_while_delivering(drained, &counters, timeout, &notifier).await {
        tracing::error!(
            "the journal took no message for {} (service.shutdown_timeout); exiting anyway: \
             {} messages read from clients were not delivered",
            humantime::format_duration(timeout),
            counters.pending()
        );
    }
    tracing::info!("stopped: {}", stats.summary());
    Ok(())
}

/// Runs `drain` to its end as long as the sink keeps delivering: it gives up only after
/// `timeout` without a single entry delivered (journald stopped or gone), and returns false
/// then. While entries flow past that, it asks systemd each second for `timeout` more
/// (`EXTEND_TIMEOUT_USEC=`), so that only `TimeoutStopSec=` bounds a stop that is progressing.
async fn drain_while_delivering(
    drain: impl std::future::Future<Output = ()>,
    counters: &journal::SinkCounters,
    timeout: Duration,
    notifier: &crate::systemd::notify::Notifier,
) -> bool {
    let mut drain = std::pin::pin!(drain);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = counters.delivered();
    let mut progress_at = tokio::time::Instant::now();
    // The timer may fire late; never give up before `timeout` has passed.
    let give_up = |at: tokio::time::Instant| at + timeout;
    loop {
        tokio::select! {
            () = &mut drain => return true,
            () = tokio::time::sleep_until(give_up(progress_at)) => {
                if counters.delivered() == seen {
                    return false;
                }
                seen = counters.delivered();
                progress_at = tokio::time::Instant::now();
            }
            _ = tick.tick() => {
                let now = counters.delivered();
                if now != seen {
                    seen = now;
                    progress_at = tokio::time::Instant::now();
                    notifier.extend_timeout(timeout);
                }
            }
        }
    }
}

/// Each listener's name for `SOCKET=`: its `FileDescriptorName=`, or its address when another
/// listener has the same name.
fn listener_names(sockets: &[crate::listener::Listener]) -> Vec<String> {
    sockets
        .iter()
        .map(|l| {
            let shared = sockets.iter().filter(|o| o.name == l.name).count() > 1;
            if shared {
                l.socket.address()
            } else {
                l.name.clone()
            }
        })
        .collect()
}
