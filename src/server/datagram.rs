//! The datagram socket (`ListenDatagram=`, `socket.datagram_path`; DESIGN §1, §2): each
//! datagram is one message, parsed as a stream record is, attributed by its own
//! `SCM_CREDENTIALS` — per message, so even a sender that forks is named right.
//!
//! One loop serves the socket. It reads only with a share of `limits.max_buffered_bytes` in
//! hand, hands each batch to the sink and, while the journal pushes back, does not read: the
//! kernel queue fills and senders block or get `EAGAIN`, as with /dev/log. It beats the
//! watchdog's heart while it waits, so a slow journal is not mistaken for a hung daemon.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use super::state::Context;
use crate::journal::entry::Encoder;
use crate::journal::{self, Batch};
use crate::peer::Peer;
use crate::protocol;
use crate::ratelimit::Key;
use crate::server::connection;
use crate::server::encode::{self, LineState};
use crate::server::supervisor::Heartbeat;

/// The largest datagram read whole: more than the kernel's default `wmem_max` (208 KiB) lets a
/// sender write. A longer one (a raised `wmem_max`) is cut here and says so in the logs.
pub const MAX_DATAGRAM: usize = 256 * 1024;

/// Datagrams read per turn at most: then the batch goes to the sink and others get a turn.
const PER_TURN: usize = 256;

/// What the loop needs besides its socket.
pub struct Datagrams {
    pub ctx: Context,
    pub next_id: Arc<AtomicU64>,
    pub socket_name: Option<Arc<str>>,
    pub heartbeat: Option<(Arc<Heartbeat>, Duration)>,
}

/// One datagram as received.
struct Received {
    len: usize,
    truncated: bool,
    peer: Option<Peer>,
}

impl Datagrams {
    /// Serves `socket` until shutdown. Datagrams still queued then stay in the kernel, for the
    /// next instance when systemd holds the socket.
    pub async fn run(self, socket: UnixDatagram) {
        if let Err(e) = rustix::net::sockopt::set_socket_passcred(&socket, true) {
            tracing::error!("datagram socket: cannot turn on SO_PASSCRED: {e}");
        }
        let mut beat = tokio::time::interval(
            self.heartbeat
                .as_ref()
                .map_or(Duration::from_secs(3600), |h| h.1),
        );
        let shutdown = self.ctx.shutdown.clone();
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = beat.tick() => {
                    self.beat();
                    continue;
                }
                ready = socket.readable() => {
                    if let Err(e) = ready {
                        tracing::error!("datagram socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let limit = self.ctx.settings.borrow().limits.max_buffered_bytes;
            let reserve = self
                .ctx
                .budget
                .reserve(MAX_DATAGRAM + journal::BATCH_BYTES, limit);
            let _turn = tokio::select! {
                turn = reserve => turn,
                () = shutdown.cancelled() => return,
            };
            // The buffer exists only while datagrams flow: an idle socket holds none.
            buf.resize(MAX_DATAGRAM, 0);
            let batch = self.read_turn(&socket, &mut buf);
            buf = Vec::new();
            self.send(batch, &mut beat).await;
            tokio::task::consume_budget().await;
        }
    }

    fn beat(&self) {
        if let Some((heart, _)) = &self.heartbeat {
            heart.beat();
        }
    }

    /// Reads what is queued, up to a batch, and encodes it.
    fn read_turn(&self, socket: &UnixDatagram, buf: &mut [u8]) -> Batch {
        let settings = self.ctx.settings.borrow().clone();
        let mut batch = Batch::default();
        for _ in 0..PER_TURN {
            let got = socket.try_io(Interest::READABLE, || receive(socket, buf));
            let received = match got {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("datagram socket: receiving: {e}");
                    break;
                }
            };
            let Some(peer) = received.peer else {
                tracing::warn!("datagram socket: a datagram without credentials, dropped");
                continue;
            };
            if received.truncated {
                tracing::warn!(
                    "datagram socket: a datagram from {peer} over {MAX_DATAGRAM} bytes; \
                     logged its first {MAX_DATAGRAM} bytes"
                );
            }
            self.encode(&buf[..received.len], &peer, &settings, &mut batch);
            if batch.is_full() {
                break;
            }
        }
        batch
    }

    /// One datagram: its pieces, within the sender's rate limit.
    fn encode(
        &self,
        datagram: &[u8],
        peer: &Peer,
        settings: &crate::config::Settings,
        batch: &mut Batch,
    ) {
        let max_line = settings.limits.max_line_bytes.get();
        let pieces = datagram.len().div_ceil(max_line).max(1) as u64;
        let key = Key::of(peer);
        let limits = &settings.limits;
        let limiter = &self.ctx.limiter;
        let admission = limiter.admit(
            key,
            pieces,
            limits.rate_limit_burst,
            limits.rate_limit_interval,
            tokio::time::Instant::now(),
        );
        let mut left = admission.allowed;
        let mut dropped = 0;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut encoder = Encoder::new(
            self.ctx.sink.target(),
            peer,
            id,
            self.socket_name.as_deref(),
        );
        // The sender's unit and command, as for a stream client, from the same cache; a
        // datagram brings no pidfd, so a miss reads whoever has its pid as the datagram is
        // handled (README "Journal fields" says what that leaves open). Not for a datagram
        // dropped whole.
        if left > 0
            && settings.journal.attribution == crate::config::Attribution::Auto
            && let Peer::Unix { pid: Some(pid), .. } = peer
            && let Some(fields) = self.ctx.attributions.of_sender(*pid)
        {
            encoder.add_shared(fields);
        }
        let mut line = LineState::new(settings);
        let before = batch.len();
        protocol::datagram_pieces(datagram, max_line, &mut |m| {
            if left == 0 {
                dropped += 1;
            } else {
                left -= 1;
                encode::encode(m, &mut line, &encoder, settings, batch);
            }
            true
        });
        limiter.settle(key, admission, left, dropped);
        let stats = &self.ctx.stats;
        stats
            .messages
            .fetch_add((batch.len() - before) as u64, Ordering::Relaxed);
        if dropped > 0 {
            stats.suppressed.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Hands `batch` to the sink, waiting while the journal pushes back (and beating the
    /// watchdog meanwhile). After shutdown it waits at most the drain time.
    async fn send(&self, batch: Batch, beat: &mut tokio::time::Interval) {
        if batch.is_empty() {
            return;
        }
        let drain = connection::drain_time(&self.ctx.settings.borrow());
        let send = self.ctx.sink.send(batch);
        tokio::pin!(send);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = &mut send => return,
                _ = beat.tick() => self.beat(),
                () = self.ctx.shutdown.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + drain);
                }
                () = sleep_until_opt(deadline) => {
                    tracing::error!(
                        "datagram socket: the journal did not take the last datagrams' messages \
                         before shutdown; they are lost"
                    );
                    return;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One `recvmsg`: the datagram into `buf`, the sender from its `SCM_CREDENTIALS`. Descriptors
/// a sender attached (`SCM_RIGHTS`) are closed at once.
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut peer = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmCredentials(cred) = message {
            let pid = cred.pid.as_raw_nonzero().get();
            peer = Some(Peer::Unix {
                pid: (pid > 0).then_some(pid),
                uid: cred.uid.as_raw(),
                gid: cred.gid.as_raw(),
            });
        }
    }
    Ok(Received {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        peer,
    })
}
