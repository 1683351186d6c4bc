//! One client's life: read, cut into messages, encode, hand to the sink; drain on shutdown.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{self, Settings};
use crate::journal::entry::Encoder;
use crate::journal::{self, Batch};
use crate::peer::Peer;
use crate::protocol::{Framer, LineBreak};
use crate::ratelimit::{Admission, Key};
use crate::server::state::Context;

use super::encode::{LineState, encode};
use super::handover::{ConnectionRecord, Registration, Resume};

/// Bytes read per `read` call. The buffer exists only while data flows, so an idle connection
/// costs no read memory.
const READ_SIZE: usize = 64 * 1024;

/// What a connection reserves of `limits.max_buffered_bytes` to read: its read buffer and the
/// batch it encodes, which may overshoot `BATCH_BYTES` by one entry.
pub const TURN_BYTES: usize = READ_SIZE + journal::BATCH_BYTES + 64 * 1024;

/// A client's stream socket, Unix or TCP.
#[derive(Debug)]
pub enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl Stream {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.readable().await,
            Stream::Tcp(s) => s.readable().await,
        }
    }

    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_read_buf(buf),
            Stream::Tcp(s) => s.try_read_buf(buf),
        }
    }

    /// Whether the client has closed its end (it may still have unread data queued). Asked
    /// without reading, of a connection that is not being read.
    fn hung_up(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        let fd = self.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
    }

    /// The address the client connected to (a listener's path, `ip:port`), as
    /// [`crate::listener::Socket::address`] names a listener.
    pub fn local_address(&self) -> Option<String> {
        match self {
            Stream::Unix(s) => s
                .local_addr()
                .ok()?
                .as_pathname()
                .map(|p| p.display().to_string()),
            Stream::Tcp(s) => s.local_addr().ok().map(|a| a.to_string()),
        }
    }

    /// Best-effort, never-blocking write of a short notice: a client that does not read must not
    /// hold the daemon up.
    pub fn notify(&self, text: &str) {
        let _ = match self {
            Stream::Unix(s) => s.try_write(text.as_bytes()),
            Stream::Tcp(s) => s.try_write(text.as_bytes()),
        };
    }
}

/// Who the client is beyond its credentials (`journal.attribution`), as encoded fields, resolved
/// once per connection, when its first bytes arrive (for nearly every client, right after the
/// accept), and then only if the process is not in the cache already (`server::attribution`):
/// a miss costs about 20 µs of /proc reads, which a connection that never writes does not cost.
/// Done in place: a blocking-pool hop cost more than it saved, and under a storm of connections
/// its queue held connection slots that the clients had already left (measured, issue 16).
fn attribute(
    stream: &Stream,
    peer: &Peer,
    ctx: &Context,
    settings: &Settings,
) -> Option<Arc<[u8]>> {
    match (stream, peer, settings.journal.attribution) {
        (Stream::Unix(s), Peer::Unix { pid: Some(pid), .. }, config::Attribution::Auto) => {
            ctx.attributions.of_peer(s.as_fd(), *pid)
        }
        _ => None,
    }
}

/// Serves one client until it closes, or until shutdown and its drain deadline — or, with an
/// fd store, until shutdown, when it is handed over to the next instance. `resume` is what the
/// previous instance handed over, for a connection carried across a restart.
pub async fn serve(
    stream: Stream,
    peer: Peer,
    id: u64,
    socket: Option<Arc<str>>,
    ctx: Context,
    resume: Option<Box<Resume>>,
    stored: bool,
) {
    let mut settings_rx = ctx.settings.clone();
    let mut settings = settings_rx.borrow_and_update().clone();
    let mut encoder = Encoder::new(ctx.sink.target(), &peer, id, socket.as_deref());
    let max_line = settings.limits.max_line_bytes.get();
    // Boxed, and taken apart before the first await: a connection's future stays small.
    let (framer, line, mut attributed) = match resume.map(|r| *r) {
        Some(Resume {
            record,
            pending,
            fields,
        }) => {
            encoder.add_encoded(&fields);
            (
                Framer::from_parts(max_line, record.framer, pending),
                LineState::restore(&record.line, &settings),
                record.attributed,
            )
        }
        None => (Framer::new(max_line), LineState::new(&settings), false),
    };
    // Declared after `stream` (a parameter): dropped before it, so the store lets go first.
    let registration = Registration::new(ctx.store.as_deref(), id, stream.as_fd(), stored);
    let mut conn = Connection {
        framer,
        line,
        encoder,
        ctx: &ctx,
        stream: &stream,
        key: Key::of(&peer),
        told: None,
    };
    let mut drain_until: Option<Instant> = None;

    // Everything held across an `.await` in this loop is per-connection memory for as long as
    // the client stays connected: one timer serves every deadline, and the futures that only
    // run while data flows (`process`, `finish`) are boxed, so that an idle connection's task
    // stays small.
    loop {
        conn.refresh(&mut settings_rx, &mut settings);
        // A client that has spent its rate-limit budget is not read until its window ends:
        // its writes block in the kernel, which is the backpressure it asked for.
        let mut paused_until = conn.paused_until(&settings);
        // ...unless it has hung up, or the daemon is stopping: then what it left in its socket
        // is read now, and what is over the budget is dropped and counted (there is no next
        // window to log it in), so that it is neither kept waiting nor lost uncounted.
        if paused_until.is_some() && (drain_until.is_some() || stream.hung_up()) {
            paused_until = None;
        }
        let flush_after = settings.protocol.flush_after;
        // The timer runs only while we wait for the client: time spent waiting for the
        // journal (backpressure) or for the rate-limit window is not the client being quiet,
        // so neither splits a line.
        let flush_at =
            (paused_until.is_none() && conn.framer.has_pending() && !flush_after.is_zero())
                .then(|| Instant::now() + flush_after);
        // A paused client is looked at again now and then, in case it hangs up meanwhile.
        let recheck = paused_until.map(|until| until.min(Instant::now() + HANGUP_CHECK));
        let wake_at = [flush_at, drain_until, recheck].into_iter().flatten().min();

        tokio::select! {
            ready = stream.readable(), if paused_until.is_none() => {
                if let Err(e) = ready {
                    tracing::debug!(connection = id, "waiting for data: {e}");
                    Box::pin(conn.finish(LineBreak::Eof, &settings)).await;
                    return;
                }
            }
            () = ctx.shutdown.cancelled(), if drain_until.is_none() => {
                if registration.is_active() {
                    // Everything read is with the sink already: hand over what is left.
                    break;
                }
                drain_until = Some(Instant::now() + drain_time(&settings));
                continue;
            }
            () = sleep_until_opt(wake_at) => {
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    Box::pin(conn.finish(LineBreak::Eof, &settings)).await;
                    stream.notify("app: shutting down\n");
                    return;
                }
                if flush_at.is_some_and(|f| Instant::now() >= f) {
                    Box::pin(conn.finish(LineBreak::Timeout, &settings)).await;
                }
                continue;
            }
        }

        // Memory: read only with a share of limits.max_buffered_bytes in hand; without one, the
        // data stays in the kernel and this connection holds no buffer while it waits.
        let reserve = ctx
            .budget
            .reserve(TURN_BYTES, settings.limits.max_buffered_bytes);
        let turn = match drain_until {
            None => tokio::select! {
                turn = reserve => Some(turn),
                () = ctx.shutdown.cancelled() => None,
            },
            Some(deadline) => tokio::time::timeout_at(deadline, reserve).await.ok(),
        };
        let Some(_turn) = turn else {
            continue;
        };
        // A reload while we waited applies to what we are about to read.
        conn.refresh(&mut settings_rx, &mut settings);
        // Read until the socket is empty, allocating the buffer only now that data flows.
        let mut buf = Vec::with_capacity(READ_SIZE);
        loop {
            buf.clear();
            match stream.try_read_buf(&mut buf) {
                Ok(0) => {
                    Box::pin(conn.finish(LineBreak::Eof, &settings)).await;
                    return;
                }
                Ok(n) => {
                    if n < READ_SIZE / 4 {
                        // A short read: give the rest of the buffer back before waiting on the
                        // journal, so that many clients held up by backpressure do not pin
                        // 64 KiB each (glibc shrinks the block in place; nothing is copied).
                        buf.shrink_to_fit();
                    }
                    if !attributed {
                        attributed = true;
                        if let Some(fields) = attribute(&stream, &peer, &ctx, &settings) {
                            conn.encoder.add_shared(fields);
                        }
                    }
                    Box::pin(conn.process(&buf[..n], &settings)).await;
                    // No connection may hold the runtime: a client that keeps its socket full
                    // would otherwise be read for as long as it writes, while the sink takes
                    // every batch at once (or the rate limit takes none).
                    tokio::task::consume_budget().await;
                    if n < READ_SIZE || drain_until.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    if drain_until.is_none() && ctx.shutdown.is_cancelled() {
                        break;
                    }
                    if conn.paused_until(&settings).is_some()
                        && drain_until.is_none()
                        && !stream.hung_up()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // A reset or a killed client: what it sent of its last line is still logged.
                    tracing::debug!(connection = id, "reading: {e}");
                    Box::pin(conn.finish(LineBreak::Eof, &settings)).await;
                    return;
                }
            }
        }
    }

    // Handover (the loop ends only so): the connection goes to the next instance as it stands.
    let Connection {
        framer,
        line,
        encoder,
        ..
    } = conn;
    let fields = encoder.added_fields().to_vec();
    drop(encoder);
    let (framer, pending) = framer.into_parts();
    let record = ConnectionRecord {
        id,
        socket: socket.as_deref().map(str::to_owned),
        framer,
        pending: pending.len(),
        line: line.snapshot(),
        attributed,
        fields: fields.len(),
    };
    let resume = Resume {
        record,
        pending,
        fields,
    };
    registration.hand_over(stream, resume);
}

/// How often a rate-limited connection, not being read, is checked for a hang-up.
const HANGUP_CHECK: Duration = Duration::from_millis(250);

/// How long a connection keeps reading after shutdown starts: most of `shutdown_timeout`,
/// leaving the rest for the sink to write what was read.
pub fn drain_time(settings: &Settings) -> Duration {
    settings.service.shutdown_timeout.mul_f64(0.8)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Connection<'a> {
    framer: Framer,
    line: LineState,
    encoder: Encoder,
    ctx: &'a Context,
    stream: &'a Stream,
    /// The rate-limit budget this client draws on.
    key: Key,
    /// The rate-limit window the client was last told about: it hears once per window.
    told: Option<Instant>,
}

impl Connection<'_> {
    /// Picks up settings changed by a reload.
    fn refresh(&mut self, rx: &mut watch::Receiver<Arc<Settings>>, settings: &mut Arc<Settings>) {
        if rx.has_changed().unwrap_or(false) {
            *settings = rx.borrow_and_update().clone();
            self.framer
                .set_max_line(settings.limits.max_line_bytes.get());
        }
    }

    /// The end of the rate-limit window, when this client has spent its budget in it.
    fn paused_until(&mut self, settings: &Settings) -> Option<Instant> {
        let limits = &settings.limits;
        let paused = self.ctx.limiter.paused_until(
            self.key,
            limits.rate_limit_burst,
            limits.rate_limit_interval,
            Instant::now(),
        )?;
        self.tell(paused, settings);
        Some(paused.window + limits.rate_limit_interval)
    }

    /// Tells the client, once per window, that it reached the rate limit.
    fn tell(&mut self, admission: Admission, settings: &Settings) {
        if self.told != Some(admission.window) {
            self.told = Some(admission.window);
            self.stream.notify(&format!(
                "app: rate limit reached ({} messages per {}): dropping messages\n",
                settings.limits.rate_limit_burst,
                humantime::format_duration(settings.limits.rate_limit_interval)
            ));
        }
    }

    /// Frames `input` and hands the entries to the sink, one bounded batch at a time. The rate
    /// limit is applied before encoding: what is over it is framed (to keep the line
    /// boundaries), counted and dropped, never encoded.
    async fn process(&mut self, mut input: &[u8], settings: &Settings) {
        while !input.is_empty() {
            // One message per newline (or NUL, for syslog records), usually; pieces of long
            // lines ask for more as they come.
            let lines = memchr::memchr2_iter(b'\n', 0, input).count() as u64 + 1;
            let mut allowance = Allowance::new(self.ctx, self.key, lines, settings);
            let mut batch = if allowance.left > 0 {
                Batch::for_input(input)
            } else {
                Batch::default()
            };
            let used = {
                let Connection {
                    framer,
                    line,
                    encoder,
                    ..
                } = self;
                framer.feed(input, &mut |m| {
                    if !allowance.take() {
                        return true;
                    }
                    encode(m, line, encoder, settings, &mut batch);
                    !batch.is_full()
                })
            };
            input = &input[used..];
            self.settle(allowance, settings);
            self.send(batch).await;
        }
    }

    /// Logs the partial line held back, if any (at EOF, timeout or shutdown).
    async fn finish(&mut self, why: LineBreak, settings: &Settings) {
        if !self.framer.has_pending() {
            return;
        }
        let mut allowance = Allowance::new(self.ctx, self.key, 1, settings);
        let mut batch = Batch::default();
        let Connection {
            framer,
            line,
            encoder,
            ..
        } = self;
        framer.flush(why, &mut |m| {
            if allowance.take() {
                encode(m, line, encoder, settings, &mut batch);
            }
            true
        });
        self.settle(allowance, settings);
        self.send(batch).await;
    }

    /// Gives back what a read did not use and counts what it dropped.
    fn settle(&mut self, allowance: Allowance<'_>, settings: &Settings) {
        let Allowance {
            ctx,
            key,
            admission,
            left,
            dropped,
            ..
        } = allowance;
        ctx.limiter.settle(key, admission, left, dropped);
        if dropped > 0 {
            ctx.stats.suppressed.fetch_add(dropped, Ordering::Relaxed);
            self.tell(admission, settings);
        }
    }

    /// Hands the batch to the sink, waiting while its queue is full.
    async fn send(&mut self, batch: Batch) {
        let logged = batch.len() as u64;
        if logged == 0 {
            return;
        }
        self.ctx.sink.send(batch).await;
        self.ctx.stats.messages.fetch_add(logged, Ordering::Relaxed);
    }
}

/// The part of a client's rate-limit budget reserved for one read, taken message by message.
struct Allowance<'a> {
    ctx: &'a Context,
    key: Key,
    burst: u64,
    interval: Duration,
    admission: Admission,
    /// Reserved and not yet used.
    left: u64,
    /// Messages over the limit.
    dropped: u64,
}

impl<'a> Allowance<'a> {
    fn new(ctx: &'a Context, key: Key, n: u64, settings: &Settings) -> Self {
        let (burst, interval) = (
            settings.limits.rate_limit_burst,
            settings.limits.rate_limit_interval,
        );
        let admission = ctx.limiter.admit(key, n, burst, interval, Instant::now());
        Allowance {
            ctx,
            key,
            burst,
            interval,
            admission,
            left: admission.allowed,
            dropped: 0,
        }
    }

    /// True if one more message may be logged; counts it as dropped otherwise.
    fn take(&mut self) -> bool {
        if self.left == 0 && self.dropped == 0 {
            // More messages than the estimate (pieces of a long line): ask for one more.
            let more =
                self.ctx
                    .limiter
                    .admit(self.key, 1, self.burst, self.interval, Instant::now());
            self.left = more.allowed;
        }
        if self.left == 0 {
            self.dropped += 1;
            return false;
        }
        self.left -= 1;
        true
    }
}

#[cfg(test)]
mod tests;
