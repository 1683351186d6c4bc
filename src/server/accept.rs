//! Taking connections off the listeners: the accept loop ([`Accept`]), a reserve descriptor for
//! EMFILE, retry pacing ([`Backoff`]), and a panic fence around each connection task ([`contain`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::task::TaskTracker;

use super::connection::{self, Stream};
use super::handover::Resume;
use super::state::Context;
use super::supervisor::Heartbeat;
use crate::peer::Peer;
use crate::ratelimit::Key;

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
    // Each client is one descriptor; leave room for listeners, the journal socket, the runtime
    // and the attribution cache's pidfds.
    let needed = (max_connections as u64).saturating_add(64 + super::attribution::CAPACITY as u64);
    if now < needed {
        tracing::warn!(
            "open-file limit {now} is below limits.max_connections + 320 = {needed}: \
             accepting may fail with EMFILE before the connection limit is reached \
             (raise LimitNOFILE= in the unit)"
        );
    }
}

pub(super) enum Incoming {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// One listener's accept loop and what it needs to start connections.
pub(super) struct Accept {
    pub(super) ctx: Context,
    pub(super) tracker: TaskTracker,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) socket_name: Option<Arc<str>>,
    pub(super) heartbeat: Option<(Arc<Heartbeat>, Duration)>,
}

impl Accept {
    pub(super) async fn run(self, listener: Incoming) {
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
                    Err(e) => {
                        // Out of descriptors: the attribution cache's pidfds go first, and
                        // then the waiting client is accepted, not refused.
                        if exhausted(&e)
                            && self.ctx.attributions.give_way(std::time::Instant::now())
                        {
                            continue;
                        }
                        if reserve.refuse_one(&e, &listener) {
                            backoff.note(&e);
                        } else {
                            backoff.wait(&e).await;
                        }
                    }
                },
            }
        }
    }

    pub(super) fn unix_connection(&self, stream: tokio::net::UnixStream) {
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

    pub(super) fn tcp_connection(&self, stream: tokio::net::TcpStream) {
        match stream.peer_addr() {
            Ok(addr) => self.start(Stream::Tcp(stream), Peer::Tcp(addr)),
            Err(e) => tracing::debug!("peer address of a TCP client: {e}"),
        }
    }

    /// Serves a connection carried over from the previous instance, under its number, going
    /// on from where that instance stopped (`resume`; `None` after a crash).
    pub(super) fn resume(&self, stream: Stream, peer: Peer, id: u64, resume: Option<Box<Resume>>) {
        let key = Key::of(&peer);
        self.ctx.stats.rejoin(key);
        self.ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("connection {id} from {peer}: carried over");
        self.spawn(stream, peer, id, key, resume, true);
    }

    pub(super) fn start(&self, stream: Stream, peer: Peer) {
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
        self.spawn(stream, peer, id, key, None, false);
    }

    fn spawn(
        &self,
        stream: Stream,
        peer: Peer,
        id: u64,
        key: Key,
        resume: Option<Box<Resume>>,
        stored: bool,
    ) {
        let who = peer.clone();
        // A combinator, not an async block: an async block that awaits a future it captured
        // stores that future twice, and this one is most of what a connection costs.
        let serve = contain(connection::serve(
            stream,
            peer,
            id,
            self.socket_name.clone(),
            self.ctx.clone(),
            resume,
            stored,
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

pub(super) enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// A descriptor held in reserve for when there are none left (the nginx/HAProxy pattern): at
/// EMFILE or ENFILE the accept loop closes it, accepts the waiting client, tells it why and
/// closes it, then takes the reserve again. Clients beyond the limit get an answer at once,
/// rather than waiting in the backlog, unanswered, while the connected ones are served.
pub(super) struct Reserve(Option<rustix::fd::OwnedFd>);

impl Reserve {
    pub(super) fn open() -> Self {
        use rustix::fs::{Mode, OFlags};
        Reserve(rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok())
    }

    /// At descriptor exhaustion, refuses one waiting client with a reason; false if `e` is not
    /// exhaustion or there was no reserve to spend.
    pub(super) fn refuse_one(&mut self, e: &io::Error, listener: &Incoming) -> bool {
        if !exhausted(e) {
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

/// EMFILE or ENFILE: no descriptor left, for this process or the system.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

pub(super) async fn accept(listener: &Incoming) -> io::Result<Accepted> {
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
pub(super) struct Backoff {
    delay: Duration,
    failures: u64,
}

impl Backoff {
    pub(super) fn reset(&mut self) {
        if self.failures > 0 {
            tracing::info!("accepting again, after {} failed attempts", self.failures);
        }
        self.delay = Duration::ZERO;
        self.failures = 0;
    }

    /// Counts a failure handled without waiting (a client refused from the reserve).
    pub(super) fn note(&mut self, e: &io::Error) {
        if self.failures == 0 {
            tracing::warn!("accept failed: {e}; refusing clients until descriptors are free");
        }
        self.failures += 1;
    }

    /// Logs the first failure of a burst only: EMFILE under load would otherwise flood the log.
    pub(super) async fn wait(&mut self, e: &io::Error) {
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
