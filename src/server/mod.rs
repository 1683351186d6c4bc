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
use crate::peer::Peer;
use crate::ratelimit::RateLimiter;
use crate::systemd::fdstore::{FdStore, FromStore};
use accept::{Accept, Incoming};
use connection::Stream;
use handover::Store;
use state::{Context, Stats};
use supervisor::{Control, Heartbeat, Supervisor, Watchdog};

mod accept;
pub mod attribution;
pub mod connection;
mod datagram;
pub mod encode;
pub mod handover;
pub mod reload;
pub mod state;
pub mod supervisor;

pub use accept::{contain, raise_fd_limit};

/// Serves `listeners` until `control.shutdown` is cancelled (or, for an `Accept=yes`
/// connection, until the client leaves), then drains the connections and the sink.
///
/// The caller owns every trigger: production passes signals and systemd's notify socket in
/// `control`, tests pass a token they cancel.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    mut control: Control,
) -> Result<(), Error> {
    let target = Target::resolve(settings.journal.sink);
    let budget = Budget::new(settings.limits.max_buffered_bytes);
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
    let (sink, sink_task) = journal::spawn(target);
    let stats = Arc::new(Stats::default());
    let shutdown = control.shutdown.clone();
    let single = listeners.is_single_connection();
    // Accept=yes: one connection per instance, nothing to carry over.
    let store = match (&control.fd_store, single) {
        (Some(fdstore), false) => Some(Arc::new(Store::new(fdstore.clone()))),
        _ => None,
    };
    if let Some(store) = &store {
        store
            .fdstore()
            .check_room(settings_tx.borrow().limits.max_connections.get() as u64);
    }
    let ctx = Context {
        settings: settings_rx,
        sink,
        stats: stats.clone(),
        limiter: Arc::new(RateLimiter::default()),
        budget,
        shutdown: shutdown.clone(),
        store: store.clone(),
        attributions: Arc::new(attribution::Attributions::new(
            crate::peer::sends_object_fields(),
        )),
    };

    let inherited = listeners.inherited();
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

    let from_store = std::mem::take(&mut control.from_store);
    // Which listener a carried connection came in on, when no state record says (a crash):
    // its local address is the listener's.
    let addresses: Vec<(String, Arc<str>)> = match named {
        true => sockets
            .iter()
            .zip(&names)
            .map(|(l, name)| (l.socket.address(), Arc::from(name.as_str())))
            .collect(),
        false => Vec::new(),
    };
    let carried = resume_carried(from_store, &control, &ctx, &tracker, &next_id, &addresses);

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
    if carried > 0 {
        tracing::info!("{carried} connections carried over from the previous instance");
        notifier.ready_with_status(&format!(
            "{}; {carried} connections carried over",
            stats.summary()
        ));
    } else {
        notifier.ready_with_status(&stats.summary());
    }

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
    let storing = store.clone().map(|store| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { store.keep_storing(shutdown).await })
    });
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
    if let Some(storing) = storing {
        let _ = storing.await;
    }
    // Not accepting any more: a client connecting from now on is refused, not left hanging.
    drop(bound);
    tracker.close();
    if store.is_some() {
        tracing::debug!("shutting down: handing the connections over to the fd store");
    } else {
        tracing::debug!(
            "shutting down: draining {} connections",
            stats.clients.load(Ordering::Relaxed)
        );
    }
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
    if let Some(store) = store {
        // Every connection has given itself up by now (the tracker is empty) and everything
        // they read is in the journal: the next instance goes on from here.
        match store.commit(next_id.load(Ordering::Relaxed)) {
            Ok(n) => tracing::info!("handed {n} connections over to the fd store"),
            Err(e) => tracing::error!(
                "handing the connections over to the fd store failed: {e}; they are closed"
            ),
        }
    }
    tracing::info!("stopped: {}", stats.summary());
    Ok(())
}

/// Serves the connections the fd store gave back, each going on from the state record when
/// there is one; takes stale entries out of the store. Returns how many were carried over.
fn resume_carried(
    from_store: FromStore,
    control: &Control,
    ctx: &Context,
    tracker: &TaskTracker,
    next_id: &Arc<AtomicU64>,
    addresses: &[(String, Arc<str>)],
) -> usize {
    if from_store.is_empty() {
        return 0;
    }
    // Removal works whether or not this instance stores anything itself.
    let remover = control.fd_store.clone().or_else(|| {
        control
            .notifier
            .is_enabled()
            .then(|| FdStore::new(control.notifier.clone()))
    });
    let remove = |name: &str| {
        if let Some(r) = &remover {
            r.remove_logged(name);
        }
    };
    for name in &from_store.stale {
        tracing::warn!("fd store: {name} is of no use here; removed");
        remove(name);
    }
    let (next, mut resumes) = handover::pick_up(from_store.state, remover.as_ref());
    let mut carried = 0;
    let mut highest = 0;
    for (id, fd) in from_store.connections {
        let name = crate::systemd::fdstore::connection_name(id);
        let (stream, peer) = match carried_stream(fd) {
            Ok(parts) => parts,
            Err(why) => {
                tracing::warn!("fd store: {name}: {why}; removed");
                remove(&name);
                continue;
            }
        };
        if ctx.store.is_none() {
            // This instance keeps no store ($FDSTORE unset or 0 now): systemd's copy must go,
            // or the client would never see this connection close.
            remove(&name);
        }
        let resume = resumes.remove(&id).map(Box::new);
        let socket_name = match &resume {
            Some(r) => r.record.socket.as_deref().map(Arc::from),
            None => {
                let local = stream.local_address();
                addresses
                    .iter()
                    .find(|(address, _)| Some(address) == local.as_ref())
                    .map(|(_, name)| name.clone())
            }
        };
        let accept = Accept {
            ctx: ctx.clone(),
            tracker: tracker.clone(),
            next_id: next_id.clone(),
            socket_name,
            heartbeat: None,
        };
        accept.resume(stream, peer, id, resume);
        highest = highest.max(id);
        carried += 1;
    }
    if !resumes.is_empty() {
        tracing::warn!(
            "fd store: the state record lists {} connections the store did not give back (a \
             FileDescriptorStoreMax= smaller than $FDSTORE says?): those clients were cut off",
            resumes.len()
        );
    }
    // New connections are numbered after the carried ones.
    next_id.fetch_max(next.max(highest + 1), Ordering::Relaxed);
    carried
}

/// A connection from the fd store as a stream to serve, with who is at the other end.
fn carried_stream(fd: std::os::fd::OwnedFd) -> Result<(Stream, Peer), String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let ty = sockopt::socket_type(&fd).map_err(|e| format!("not a socket ({e})"))?;
    let listening = sockopt::socket_acceptconn(&fd).map_err(|e| e.to_string())?;
    if ty != SocketType::STREAM || listening {
        return Err("not a connected stream socket".to_owned());
    }
    let domain = sockopt::socket_domain(&fd).map_err(|e| e.to_string())?;
    let registering = |e: std::io::Error| format!("registering with the runtime: {e}");
    match domain {
        AddressFamily::UNIX => {
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true).map_err(registering)?;
            let s = tokio::net::UnixStream::from_std(s).map_err(registering)?;
            // SO_PEERCRED of a passed socket is still the client's, as of its connect.
            let c = s.peer_cred().map_err(|e| format!("SO_PEERCRED: {e}"))?;
            let peer = Peer::Unix {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            };
            Ok((Stream::Unix(s), peer))
        }
        AddressFamily::INET | AddressFamily::INET6 => {
            let s = std::net::TcpStream::from(fd);
            s.set_nonblocking(true).map_err(registering)?;
            let s = tokio::net::TcpStream::from_std(s).map_err(registering)?;
            let addr = s.peer_addr().map_err(|e| format!("peer address: {e}"))?;
            Ok((Stream::Tcp(s), Peer::Tcp(addr)))
        }
        other => Err(format!("address family {}", other.as_raw())),
    }
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
