//! The accept loops: one per listener, a bounded number of connection tasks, orderly shutdown.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::Budget;
use crate::config::Settings;
use crate::error::Error;
use crate::journal::{self, SinkHandle, Target};
use crate::listener::{Listeners, Socket};
use crate::peer::Peer;
use crate::ratelimit::{Key, RateLimiter};
use connection::Stream;
use supervisor::{Control, Heartbeat, Supervisor, Watchdog};

pub mod connection;
mod datagram;
pub mod supervisor;

/// Live figures, for `STATUS=` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections ended since start.
    pub closed: AtomicU64,
    pub messages: AtomicU64,
    pub suppressed: AtomicU64,
    /// Connections refused by `limits.max_connections` or `limits.max_connections_per_uid`.
    pub refused: AtomicU64,
    /// Clients connected now, per uid (per address for TCP), for `max_connections_per_uid`.
    per_client: Mutex<HashMap<Key, usize>>,
}

impl Stats {
    /// Counts a new client against `limits.max_connections` and, unless it is root,
    /// `limits.max_connections_per_uid`; says why if it must be refused. Both follow the
    /// settings live: a lowered limit refuses newcomers and closes no one.
    ///
    /// uid 0 is exempt from the per-uid limit: it is the system's own services (most run as
    /// root), which a shared cap would pit against each other, and root could stop the daemon
    /// anyway; it still counts towards `max_connections`.
    fn join(&self, key: Key, max: usize, per_client: usize) -> Option<String> {
        let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.get(&key).copied().unwrap_or(0);
        if mine >= per_client && key != Key::Uid(0) {
            return Some(format!("too many connections from {key}"));
        }
        if self
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Some("too many connections".to_owned());
        }
        *counts.entry(key).or_insert(0) += 1;
        None
    }

    fn leave(&self, key: Key) {
        let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }

    /// `2 clients, 1042 messages, 0 suppressed`: what `systemctl status` shows.
    pub fn summary(&self) -> String {
        let clients = self.clients.load(Ordering::Relaxed);
        format!(
            "{clients} client{}, {} messages, {} suppressed",
            if clients == 1 { "" } else { "s" },
            self.messages.load(Ordering::Relaxed),
            self.suppressed.load(Ordering::Relaxed)
        )
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: systemd starts services with a soft limit
/// of 1024, well below `limits.max_connections` (4096). Says so if even the hard limit is short.
pub fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return; // unlimited already
    };
    let target = hard.unwrap_or(soft.max(1 << 20));
    let now = if target > soft {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: hard,
            },
        ) {
            Ok(()) => {
                tracing::debug!("raised the open-file limit from {soft} to {target}");
                target
            }
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit above {soft}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    // Each client is one descriptor; leave room for listeners, the journal socket and the runtime.
    let needed = max_connections as u64 + 64;
    if now < needed {
        tracing::warn!(
            "open-file limit {now} is below limits.max_connections + 64 = {needed}: \
             accepting may fail with EMFILE before the connection limit is reached \
             (raise LimitNOFILE= in the unit)"
        );
    }
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub sink: SinkHandle,
    pub stats: Arc<Stats>,
    pub limiter: Arc<RateLimiter>,
    /// `limits.max_buffered_bytes`, shared by every connection.
    pub budget: Arc<Budget>,
    pub shutdown: CancellationToken,
}

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

enum Incoming {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// One listener's accept loop and what it needs to start connections.
struct Accept {
    ctx: Context,
    tracker: TaskTracker,
    next_id: Arc<AtomicU64>,
    socket_name: Option<Arc<str>>,
    heartbeat: Option<(Arc<Heartbeat>, Duration)>,
}

impl Accept {
    async fn run(self, listener: Incoming) {
        let mut backoff = Backoff::default();
        let mut reserve = Reserve::open();
        let mut beat = tokio::time::interval(
            self.heartbeat
                .as_ref()
                .map_or(Duration::from_secs(3600), |h| h.1),
        );
        loop {
            tokio::select! {
                // Shutdown first, always: once the idle exit (or a stop) is decided, a client
                // still in the backlog is left there for the next instance (systemd holds the
                // socket) rather than accepted and cut off at the drain deadline. On our one
                // thread nothing runs between this check and the accept below, and a connection
                // accepted before the decision counts as a client, which the idle clock sees.
                biased;
                () = self.ctx.shutdown.cancelled() => return,
                _ = beat.tick(), if self.heartbeat.is_some() => {
                    if let Some((heart, _)) = &self.heartbeat {
                        heart.beat();
                    }
                }
                accepted = accept(&listener) => match accepted {
                    Ok(stream) => {
                        backoff.reset();
                        match stream {
                            Accepted::Unix(s) => self.unix_connection(s),
                            Accepted::Tcp(s) => self.tcp_connection(s),
                        }
                    }
                    Err(e) if reserve.refuse_one(&e, &listener) => backoff.note(&e),
                    Err(e) => backoff.wait(&e).await,
                },
            }
        }
    }

    fn unix_connection(&self, stream: tokio::net::UnixStream) {
        // Credentials as of connect time (SO_PEERCRED), which is what a client cannot fake later.
        let peer = match stream.peer_cred() {
            Ok(c) => Peer::Unix {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(e) => {
                tracing::warn!("SO_PEERCRED failed, closing the connection: {e}");
                return;
            }
        };
        self.start(Stream::Unix(stream), peer);
    }

    fn tcp_connection(&self, stream: tokio::net::TcpStream) {
        match stream.peer_addr() {
            Ok(addr) => self.start(Stream::Tcp(stream), Peer::Tcp(addr)),
            Err(e) => tracing::debug!("peer address of a TCP client: {e}"),
        }
    }

    fn start(&self, stream: Stream, peer: Peer) {
        let stats = &self.ctx.stats;
        let key = Key::of(&peer);
        let refused = {
            let limits = &self.ctx.settings.borrow().limits;
            stats.join(
                key,
                limits.max_connections.get(),
                limits.max_connections_per_uid.get(),
            )
        };
        if let Some(why) = refused {
            // Reported in aggregate by the supervisor: one line per burst, not one per client.
            stream.notify(&format!("app: {why}\n"));
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("refused a connection from {peer}: {why}");
            return;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("connection {id} from {peer}");
        let who = peer.clone();
        // A combinator, not an async block: an async block that awaits a future it captured
        // stores that future twice, and this one is most of what a connection costs.
        let serve = contain(connection::serve(
            stream,
            peer,
            id,
            self.socket_name.clone(),
            self.ctx.clone(),
        ));
        let stats = self.ctx.stats.clone();
        self.tracker.spawn(serve.map(move |served| {
            stats.leave(key);
            stats.closed.fetch_add(1, Ordering::Relaxed);
            if let Err(panic) = served {
                tracing::error!(
                    "connection {id} from {who} panicked: {panic}; it was closed, other clients are unaffected"
                );
            }
        }));
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// A descriptor held in reserve for when there are none left (the nginx/HAProxy pattern): at
/// EMFILE or ENFILE the accept loop closes it, accepts the waiting client, tells it why and
/// closes it, then takes the reserve again. Clients beyond the limit get an answer at once,
/// rather than waiting in the backlog, unanswered, while the connected ones are served.
struct Reserve(Option<rustix::fd::OwnedFd>);

impl Reserve {
    fn open() -> Self {
        use rustix::fs::{Mode, OFlags};
        Reserve(rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok())
    }

    /// At descriptor exhaustion, refuses one waiting client with a reason; false if `e` is not
    /// exhaustion or there was no reserve to spend.
    fn refuse_one(&mut self, e: &io::Error, listener: &Incoming) -> bool {
        let exhausted = matches!(
            rustix::io::Errno::from_io_error(e),
            Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
        );
        if !exhausted {
            return false;
        }
        if self.0.take().is_none() {
            // Spent and not taken back: try again, for the next time.
            *self = Reserve::open();
            return false;
        }
        const WHY: &[u8] = b"app: too many open files\n";
        match accept(listener).now_or_never() {
            Some(Ok(Accepted::Unix(s))) => drop(s.try_write(WHY)),
            Some(Ok(Accepted::Tcp(s))) => drop(s.try_write(WHY)),
            _ => {}
        }
        *self = Reserve::open();
        true
    }
}

async fn accept(listener: &Incoming) -> io::Result<Accepted> {
    match listener {
        Incoming::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        Incoming::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
    }
}

/// Runs `fut`, turning a panic into an error message: a bug hit by one client must not take
/// down the daemon or any other client.
///
/// A plain function rather than an `async fn`: the returned future holds `fut` once, where an
/// `async fn` would keep the argument and the wrapped future side by side (per-connection memory).
pub fn contain<F: std::future::Future<Output = ()>>(
    fut: F,
) -> impl std::future::Future<Output = Result<(), String>> {
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .map(|result| {
            result.map_err(|payload| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned())
            })
        })
}

/// Retry pacing for a failing `accept` (EMFILE, ENFILE, ENOMEM): the daemon keeps serving its
/// existing clients and tries again, instead of spinning or exiting.
#[derive(Debug, Default)]
struct Backoff {
    delay: Duration,
    failures: u64,
}

impl Backoff {
    fn reset(&mut self) {
        if self.failures > 0 {
            tracing::info!("accepting again, after {} failed attempts", self.failures);
        }
        self.delay = Duration::ZERO;
        self.failures = 0;
    }

    /// Counts a failure handled without waiting (a client refused from the reserve).
    fn note(&mut self, e: &io::Error) {
        if self.failures == 0 {
            tracing::warn!("accept failed: {e}; refusing clients until descriptors are free");
        }
        self.failures += 1;
    }

    /// Logs the first failure of a burst only: EMFILE under load would otherwise flood the log.
    async fn wait(&mut self, e: &io::Error) {
        if self.failures == 0 {
            tracing::warn!("accept failed: {e}; retrying with backoff until it works again");
            self.delay = Duration::from_millis(5);
        } else {
            self.delay = (self.delay * 2).min(Duration::from_secs(1));
        }
        self.failures += 1;
        tokio::time::sleep(self.delay).await;
    }
}

#[cfg(test)]
mod tests;
