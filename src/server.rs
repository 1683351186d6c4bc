//! The accept loops: one per listener, a bounded number of connection tasks, orderly shutdown.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::connection::{self, Stream};
use crate::error::Error;
use crate::journal::{self, Peer, SinkHandle, Target};
use crate::listener::{Listeners, Socket};
use crate::notify::Notifier;

/// Live figures, for `STATUS=` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: AtomicUsize,
    pub messages: AtomicU64,
    pub suppressed: AtomicU64,
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub sink: SinkHandle,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
}

/// Serves `listeners` until `shutdown` is cancelled (or, for an `Accept=yes` connection, until
/// the client leaves), then drains the connections and the sink.
///
/// `settings` may change while running (reload); `shutdown` is the caller's: production cancels
/// it on SIGTERM/SIGINT, tests whenever they like.
pub async fn run(
    listeners: Listeners,
    settings: watch::Receiver<Arc<Settings>>,
    shutdown: CancellationToken,
    notifier: Notifier,
) -> Result<(), Error> {
    let initial = settings.borrow().clone();
    let target = Target::resolve(initial.journal.sink);
    let (sink, sink_task) = journal::spawn(target);
    let stats = Arc::new(Stats::default());
    let ctx = Context {
        settings,
        sink,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };

    let Listeners { sockets, bound } = listeners;
    let single = !sockets.is_empty()
        && sockets
            .iter()
            .all(|l| matches!(l.socket, Socket::ConnectedUnix(_) | Socket::ConnectedTcp(_)));
    let named = sockets.len() > 1;
    let limit = Arc::new(Semaphore::new(initial.limits.max_connections.get()));
    let next_id = Arc::new(AtomicU64::new(1));
    let tracker = TaskTracker::new();
    let accept_loops = TaskTracker::new();

    for listener in sockets {
        listener
            .socket
            .set_nonblocking()
            .map_err(|e| Error::io(format!("{}: set_nonblocking", listener.origin), e))?;
        let socket_name: Option<Arc<str>> = named.then(|| Arc::from(listener.name.as_str()));
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
        let accept = Accept {
            ctx: ctx.clone(),
            tracker: tracker.clone(),
            limit: limit.clone(),
            next_id: next_id.clone(),
            socket_name,
        };
        match listener.socket {
            Socket::Unix(l) => {
                let l = tokio::net::UnixListener::from_std(l)
                    .map_err(|e| Error::io(format!("{}: registering", listener.origin), e))?;
                accept_loops.spawn(accept.unix_loop(l));
            }
            Socket::Tcp(l) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| Error::io(format!("{}: registering", listener.origin), e))?;
                accept_loops.spawn(accept.tcp_loop(l));
            }
            Socket::ConnectedUnix(s) => {
                let s = tokio::net::UnixStream::from_std(s)
                    .map_err(|e| Error::io(format!("{}: registering", listener.origin), e))?;
                accept.unix_connection(s);
            }
            Socket::ConnectedTcp(s) => {
                let s = tokio::net::TcpStream::from_std(s)
                    .map_err(|e| Error::io(format!("{}: registering", listener.origin), e))?;
                accept.tcp_connection(s);
            }
        }
    }
    accept_loops.close();
    notifier.ready();

    if single {
        // Accept=yes: the one connection is the whole job.
        tracker.close();
        tokio::select! {
            () = tracker.wait() => {}
            () = shutdown.cancelled() => {}
        }
    } else {
        shutdown.cancelled().await;
    }

    notifier.stopping();
    let timeout = ctx.settings.borrow().service.shutdown_timeout;
    let started = tokio::time::Instant::now();
    accept_loops.wait().await;
    // Stop accepting: a client connecting from now on is refused by the kernel, not left hanging.
    drop(bound);
    tracker.close();
    tracing::debug!(
        "shutting down: draining {} connections",
        stats.clients.load(Ordering::Relaxed)
    );
    tracker.wait().await;
    drop(ctx);
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    if tokio::time::timeout(left, sink_task).await.is_err() {
        tracing::error!(
            "the journal did not take the last messages within service.shutdown_timeout; exiting anyway"
        );
    }
    Ok(())
}

/// One listener's accept loop and what it needs to start connections.
struct Accept {
    ctx: Context,
    tracker: TaskTracker,
    limit: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    socket_name: Option<Arc<str>>,
}

impl Accept {
    async fn unix_loop(self, listener: tokio::net::UnixListener) {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.reset();
                        self.unix_connection(stream);
                    }
                    Err(e) => backoff.wait(&e).await,
                },
            }
        }
    }

    async fn tcp_loop(self, listener: tokio::net::TcpListener) {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.reset();
                        self.tcp_connection(stream);
                    }
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
        // The permit lives as long as the connection task: it is the connection limit.
        let permit: OwnedSemaphorePermit = match self.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stream.notify("app: too many connections\n");
                tracing::warn!("refused a connection from {peer:?}: too many connections");
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctx = self.ctx.clone();
        let socket_name = self.socket_name.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            ctx.stats.clients.fetch_add(1, Ordering::Relaxed);
            let stats = ctx.stats.clone();
            connection::serve(stream, peer, id, socket_name, ctx).await;
            stats.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Retry pacing for a failing `accept` (EMFILE, ENFILE, ENOMEM): the daemon keeps serving its
/// existing clients and tries again, instead of spinning or exiting.
#[derive(Debug, Default)]
struct Backoff {
    delay: Duration,
}

impl Backoff {
    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn wait(&mut self, e: &io::Error) {
        if self.delay.is_zero() {
            tracing::warn!("accept failed: {e}; retrying with backoff");
            self.delay = Duration::from_millis(5);
        } else {
            self.delay = (self.delay * 2).min(Duration::from_secs(1));
        }
        tokio::time::sleep(self.delay).await;
    }
}
