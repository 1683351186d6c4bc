//! The sink: where client messages go. journald's native protocol through one datagram socket,
//! or plain lines on stdout when there is no journal (a developer's laptop).
//!
//! Connections encode their entries themselves (in parallel, on their own tasks) into a
//! [`Batch`] and hand it to the single sink task through a bounded channel. The bound is the
//! backpressure: when journald is slow the channel fills, connections wait on it, stop reading,
//! and the kernel's socket buffers push back on the clients. Nothing is dropped and nothing is
//! queued without bound.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrAny};
use std::os::unix::net::UnixDatagram;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

mod escape;

use crate::protocol::LineBreak;

/// journald's native-protocol socket (systemd.journal-fields(7), "native protocol").
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Batches in flight between the connections and the sink. With batches capped at
/// [`BATCH_BYTES`] this bounds the sink's queue to a few MiB.
const QUEUE_BATCHES: usize = 16;

/// A connection hands its batch over once it holds this much.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Entries larger than this always travel as a memfd, whatever `net.core.wmem_max` would
/// allow: one giant datagram would hold journald's receive queue hostage, and the path an entry
/// takes should not depend on a sysctl.
const MAX_DATAGRAM: usize = 512 * 1024;

/// Send buffer asked for on the journal socket, as sd_journal_sendv(3) does. The kernel caps it
/// at `net.core.wmem_max`, and it caps the largest entry that fits in one datagram: bigger
/// entries go through a memfd, exactly as systemd's own clients do.
const SNDBUF: usize = 8 * 1024 * 1024;

/// Where messages go, once `journal.sink = "auto"` has been decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journal,
    Stdout,
}

impl Target {
    /// Resolves `auto`: the journal when its socket exists.
    pub fn resolve(kind: crate::config::SinkKind) -> Target {
        match kind {
            crate::config::SinkKind::Journal => Target::Journal,
            crate::config::SinkKind::Stdout => Target::Stdout,
            crate::config::SinkKind::Auto => {
                if Path::new(JOURNAL_SOCKET).exists() {
                    Target::Journal
                } else {
                    Target::Stdout
                }
            }
        }
    }
}

/// Encoded entries, back to back: one datagram each for the journal, one line each for stdout.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// A batch for the entries of `input`, client text: each line becomes the text plus a
    /// couple of hundred bytes of fields. Sized up front so that the buffers seldom grow (two
    /// allocations per batch rather than a few dozen), without reserving a full batch for a
    /// one-line read. Counting the newlines (and NULs, which end syslog records) costs a few
    /// nanoseconds per line.
    pub fn for_input(input: &[u8]) -> Self {
        let entries = memchr::memchr2_iter(b'\n', 0, input).count() + 1;
        Batch {
            data: Vec::with_capacity((input.len() + entries * 192).min(BATCH_BYTES + 4096)),
            ends: Vec::with_capacity(entries.min(BATCH_BYTES / 64)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Keeps the first `n` entries.
    pub fn truncate(&mut self, n: usize) {
        if n < self.ends.len() {
            self.data
                .truncate(if n == 0 { 0 } else { self.ends[n - 1] });
            self.ends.truncate(n);
        }
    }

    pub fn is_full(&self) -> bool {
        self.data.len() >= BATCH_BYTES
    }

    /// Appends native-format fields to the last entry: a JSON line's keys (`protocol::json`).
    pub fn extend_last(&mut self, fields: &[u8]) {
        if let Some(end) = self.ends.last_mut() {
            self.data.extend_from_slice(fields);
            *end = self.data.len();
        }
    }

    /// The encoded entries, one by one.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(s, &e)| &self.data[s..e])
    }
}

/// Who sent a message: fixed for the life of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Unix {
        pid: Option<i32>,
        uid: u32,
        gid: u32,
    },
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix {
                pid: Some(pid),
                uid,
                ..
            } => write!(f, "pid {pid} uid {uid}"),
            Peer::Unix { pid: None, uid, .. } => write!(f, "uid {uid}"),
            Peer::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// One message, ready to encode.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub message: &'a [u8],
    pub priority: u8,
    pub facility: Option<u8>,
    pub line_break: LineBreak,
    /// `journal.identifier`: used unless the syslog header names a tag.
    pub identifier: &'a str,
    /// A syslog header the client sent, if any.
    pub header: Option<crate::protocol::syslog::Header<'a>>,
}

impl Record<'_> {
    /// SYSLOG_IDENTIFIER: the client's syslog tag if it sent one, else `journal.identifier`.
    fn tag(&self) -> &[u8] {
        self.header
            .and_then(|h| h.identifier)
            .unwrap_or(self.identifier.as_bytes())
    }
}

/// Encodes a connection's records for the sink target. The fields that never change during a
/// connection are encoded once, at connect time.
#[derive(Debug)]
pub struct Encoder {
    target: Target,
    /// `CLIENT_*` (and `SOCKET=`) fields in native format, or the stdout line's client part.
    client: Vec<u8>,
}

impl Encoder {
    pub fn new(target: Target, peer: &Peer, connection: u64, socket: Option<&str>) -> Self {
        let mut client = Vec::with_capacity(96);
        match target {
            Target::Journal => {
                match peer {
                    Peer::Unix { pid, uid, gid } => {
                        if let Some(pid) = pid {
                            push_field(&mut client, b"CLIENT_PID", pid.to_string().as_bytes());
                        }
                        push_field(&mut client, b"CLIENT_UID", uid.to_string().as_bytes());
                        push_field(&mut client, b"CLIENT_GID", gid.to_string().as_bytes());
                    }
                    Peer::Tcp(addr) => {
                        push_field(&mut client, b"CLIENT_ADDRESS", addr.to_string().as_bytes())
                    }
                }
                push_field(
                    &mut client,
                    b"CLIENT_CONNECTION",
                    connection.to_string().as_bytes(),
                );
                if let Some(name) = socket {
                    push_field(&mut client, b"SOCKET", name.as_bytes());
                }
            }
            Target::Stdout => {
                let _ = match peer {
                    Peer::Unix { pid, uid, .. } => match pid {
                        Some(pid) => write!(client, "pid={pid} uid={uid}"),
                        None => write!(client, "uid={uid}"),
                    },
                    Peer::Tcp(addr) => write!(client, "{addr}"),
                };
                let _ = write!(client, " conn={connection}");
            }
        }
        // Kept for the life of the connection: no spare capacity.
        client.shrink_to_fit();
        Encoder { target, client }
    }

    /// Where the entries go.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Adds fields that hold for the whole connection (the client's unit and command, see
    /// [`crate::peer`]) to every journal entry; the stdout line stays as it is.
    pub fn add_fields<'f>(&mut self, fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>) {
        if self.target == Target::Journal {
            for (name, value) in fields {
                push_field(&mut self.client, name, value);
            }
            self.client.shrink_to_fit();
        }
    }

    /// Appends one entry to `batch`.
    #[inline(always)]
    pub fn encode(&self, record: &Record<'_>, batch: &mut Batch) {
        let out = &mut batch.data;
        match self.target {
            Target::Journal => {
                push_field(out, b"MESSAGE", record.message);
                out.extend_from_slice(b"PRIORITY=");
                out.push(b'0' + record.priority);
                out.push(b'\n');
                if let Some(facility) = record.facility {
                    // 0..=23, written without formatting machinery: this runs per message.
                    let digits = [b'0' + facility / 10, b'0' + facility % 10];
                    let digits = if facility < 10 {
                        &digits[1..]
                    } else {
                        &digits[..]
                    };
                    push_field(out, b"SYSLOG_FACILITY", digits);
                }
                push_field(out, b"SYSLOG_IDENTIFIER", record.tag());
                if let Some(h) = &record.header {
                    for (name, value) in [
                        (&b"SYSLOG_PID"[..], h.pid),
                        (b"SYSLOG_TIMESTAMP", h.timestamp),
                        (b"SYSLOG_MSGID", h.msgid),
                        (b"SYSLOG_STRUCTURED_DATA", h.structured_data),
                    ] {
                        if let Some(value) = value {
                            push_field(out, name, value);
                        }
                    }
                }
                if let Some(why) = record.line_break.field() {
                    push_field(out, b"LINE_BREAK", why.as_bytes());
                }
                out.extend_from_slice(&self.client);
            }
            Target::Stdout => {
                let now = humantime::format_rfc3339_millis(SystemTime::now());
                let _ = write!(out, "{now} ");
                out.extend_from_slice(record.tag());
                out.push(b'[');
                out.extend_from_slice(&self.client);
                let _ = write!(out, "] <{}> ", record.priority);
                // One message, one line: newlines and control bytes inside are shown escaped.
                escape::push_escaped(out, record.message);
                if let Some(why) = record.line_break.field() {
                    let _ = write!(out, " [{why}]");
                }
                out.push(b'\n');
            }
        }
        batch.ends.push(out.len());
    }
}

/// One entry of the daemon's own about a client (a suppression report, say), in the same
/// stream as the client's messages, so that `journalctl -u app` shows it in place.
pub fn notice(target: Target, identifier: &str, priority: u8, message: &str, about: &str) -> Batch {
    let mut batch = Batch::default();
    let out = &mut batch.data;
    match target {
        Target::Journal => {
            push_field(out, b"MESSAGE", message.as_bytes());
            out.extend_from_slice(b"PRIORITY=");
            out.push(b'0' + priority);
            out.push(b'\n');
            push_field(out, b"SYSLOG_IDENTIFIER", identifier.as_bytes());
            // "uid 1000" → CLIENT_UID=1000; "address 10.0.0.1" → CLIENT_ADDRESS=10.0.0.1
            match about.split_once(' ') {
                Some(("uid", uid)) => push_field(out, b"CLIENT_UID", uid.as_bytes()),
                Some(("address", addr)) => push_field(out, b"CLIENT_ADDRESS", addr.as_bytes()),
                _ => {}
            }
        }
        Target::Stdout => {
            let now = humantime::format_rfc3339_millis(SystemTime::now());
            let _ = writeln!(out, "{now} {identifier}[app] <{priority}> {message}");
        }
    }
    batch.ends.push(out.len());
    batch
}

/// Appends `NAME=value\n`, or the length-prefixed form when the value holds a newline (exactly
/// the rule of sd_journal_sendv(3); every other byte, NUL included, is fine in the plain form).
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    if memchr::memchr(b'\n', value).is_some() {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Entries counted on their way through the sink: what a stop that cannot wait any longer
/// reports as undelivered is exactly `handed - delivered - lost`.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Entries handed to [`SinkHandle::send`] (counted before any wait for room).
    handed: AtomicU64,
    /// Entries the journal (or stdout) took.
    delivered: AtomicU64,
    /// Entries that can never be delivered (stdout closed).
    lost: AtomicU64,
}

impl SinkCounters {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// Entries handed over and neither delivered nor lost yet.
    pub fn pending(&self) -> u64 {
        let done = self.delivered() + self.lost();
        self.handed.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// The connections' side of the sink.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    target: Target,
    tx: mpsc::Sender<Batch>,
    counters: Arc<SinkCounters>,
}

impl SinkHandle {
    pub fn target(&self) -> Target {
        self.target
    }

    pub fn counters(&self) -> &Arc<SinkCounters> {
        &self.counters
    }

    /// Hands a batch to the sink, waiting while its queue is full (backpressure).
    pub async fn send(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        self.counters
            .handed
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        // The receiver lives until every handle is dropped, so this cannot fail.
        let _ = self.tx.send(batch).await;
    }

    /// Hands a batch over only if the queue has room; gives it back otherwise. For senders that
    /// must never wait on the journal (the supervisor, whose ticks feed the watchdog).
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.len() as u64;
        self.counters.handed.fetch_add(n, Ordering::AcqRel);
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                self.counters.handed.fetch_sub(n, Ordering::AcqRel);
                Err(b)
            }
        }
    }
}

/// Starts the sink task. It ends once every [`SinkHandle`] is dropped and the queue is written.
///
/// Everything it needs to deliver is opened here, before the service says it is ready: the
/// journal socket (unconnected, so that a journald restart needs no new one) and a spare memfd
/// for the first entry too large for a datagram. Out of descriptors later, it still delivers.
pub fn spawn(target: Target) -> (SinkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let counters = Arc::new(SinkCounters::default());
    let task = match target {
        Target::Journal => {
            let journal = JournalSocket::new(PathBuf::from(JOURNAL_SOCKET));
            tokio::spawn(run_journal(rx, journal, counters.clone()))
        }
        Target::Stdout => tokio::spawn(run_stdout(rx, counters.clone())),
    };
    (
        SinkHandle {
            target,
            tx,
            counters,
        },
        task,
    )
}

async fn run_stdout(mut rx: mpsc::Receiver<Batch>, counters: Arc<SinkCounters>) {
    let mut closed = false;
    while let Some(batch) = rx.recv().await {
        if closed {
            counters
                .lost
                .fetch_add(batch.len() as u64, Ordering::AcqRel);
            continue;
        }
        // Blocking stdout writes stay off the runtime's worker threads.
        let written = tokio::task::spawn_blocking(move || {
            let result = write_all_waiting(io::stdout().as_fd(), &batch.data);
            let bytes = match &result {
                Ok(()) => batch.data.len(),
                Err((n, _)) => *n,
            };
            // Only whole entries count as written.
            let entries = batch.ends.partition_point(|&end| end <= bytes);
            (entries, batch.len(), result.err().map(|(_, e)| e))
        })
        .await;
        let Ok((entries, total, error)) = written else {
            continue;
        };
        counters
            .delivered
            .fetch_add(entries as u64, Ordering::AcqRel);
        if let Some(e) = error {
            let lost = total - entries;
            counters.lost.fetch_add(lost as u64, Ordering::AcqRel);
            tracing::error!(
                "writing messages to stdout: {e}; {lost} messages lost, and every later one"
            );
            closed = true;
        }
    }
}

/// Writes all of `data` to `fd`, waiting whenever it would block: stdout may be a non-blocking
/// pipe that its reader drains slowly. On failure, says how many bytes were written first.
fn write_all_waiting(
    fd: std::os::fd::BorrowedFd<'_>,
    mut data: &[u8],
) -> Result<(), (usize, io::Error)> {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::io::Errno;
    let total = data.len();
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => {
                return Err((total - data.len(), io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err((total - data.len(), e.into())),
                }
            }
            Err(e) => return Err((total - data.len(), e.into())),
        }
    }
    Ok(())
}

async fn run_journal(
    mut rx: mpsc::Receiver<Batch>,
    mut journal: JournalSocket,
    counters: Arc<SinkCounters>,
) {
    loop {
        let batch = match rx.try_recv() {
            Ok(batch) => batch,
            Err(mpsc::error::TryRecvError::Empty) => {
                journal.pacer.idle();
                match rx.recv().await {
                    Some(batch) => batch,
                    None => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
        };
        let entries: Vec<&[u8]> = batch.entries().collect();
        let mut sent = 0;
        while sent < entries.len() {
            let n = journal.send_some(&entries[sent..]).await;
            sent += n;
            counters.delivered.fetch_add(n as u64, Ordering::AcqRel);
        }
    }
}

/// The one datagram socket to journald, opened at start. A journald that restarts with a new
/// socket at the same path is reached by connecting the same socket again: no new descriptor.
/// (Connected rather than `sendto` on an unconnected socket: only a connected socket can wait,
/// in poll(2), for room in journald's receive queue; an unconnected one reads as writable while
/// every send fails with EAGAIN.)
struct JournalSocket {
    path: PathBuf,
    addr: SocketAddrAny,
    /// Opened at start; `None` only if that failed (then it is retried).
    socket: Option<UnixDatagram>,
    /// Connected to `addr`; cleared by any send error, so the next try connects again.
    connected: bool,
    /// A memfd made ahead of time for the next entry too large for a datagram: out of
    /// descriptors, that entry still goes out whole, at once.
    spare_memfd: Option<std::fs::File>,
    /// Set while journald is unreachable, so that the outage is reported once, not per entry.
    outage: Option<io::Error>,
    /// journald's receive queue was found full: wait for room before the next send.
    full: bool,
    pacer: Pacer,
}

impl JournalSocket {
    fn new(path: PathBuf) -> Self {
        use rustix::net::addr::SocketAddrArg;
        let addr = rustix::net::SocketAddrUnix::new(path.as_path())
            .map(|a| a.as_any())
            .unwrap_or_else(|_| rustix::net::SocketAddrUnix::new_unnamed().as_any());
        let socket = match open_socket() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("opening a socket for the journal: {e}; retrying when needed");
                None
            }
        };
        JournalSocket {
            path,
            addr,
            socket,
            spare_memfd: new_memfd().ok(),
            connected: false,
            outage: None,
            full: false,
            pacer: Pacer::default(),
        }
    }

    /// Sends one entry, waiting (never dropping) while journald is busy or away.
    #[cfg(test)]
    async fn send(&mut self, entry: &[u8]) {
        self.send_some(&[entry]).await;
    }

    /// Sends the first of `entries` and as many after it as journald takes at once; returns how
    /// many went. Waits (never drops) while journald is busy or away.
    async fn send_some(&mut self, entries: &[&[u8]]) -> usize {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.try_send_some(entries).await {
                Ok(sent) => {
                    if let Some(e) = self.outage.take() {
                        tracing::info!(
                            "journal socket {} is back (it had failed with: {e})",
                            self.path.display()
                        );
                    }
                    return sent;
                }
                Err(e) => {
                    if self.outage.is_none() {
                        tracing::warn!(
                            "journal socket {}: {e}; holding messages until it accepts them again",
                            self.path.display()
                        );
                        self.outage = Some(e);
                    }
                    self.connected = false;
                    self.pacer.idle();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_send_some(&mut self, entries: &[&[u8]]) -> io::Result<usize> {
        let socket = match &self.socket {
            Some(s) => s,
            None => self.socket.insert(open_socket()?),
        };
        if !self.connected {
            rustix::net::connect(socket, &self.addr)?;
            self.connected = true;
        }
        let first = entries[0];
        if first.len() > MAX_DATAGRAM {
            tracing::debug!("entry of {} bytes sent through a memfd", first.len());
            send_memfd(socket, &mut self.spare_memfd, first).await?;
            return Ok(1);
        }
        let n = entries
            .iter()
            .take(MMSG_BATCH)
            .take_while(|e| e.len() <= MAX_DATAGRAM)
            .count();
        loop {
            if self.full {
                // journald's receive queue was full. Rather than refill it one slot at a time
                // as journald frees them, let it drain a while and refill many at once.
                match self.pacer.pause() {
                    Some(pause) => {
                        tokio::time::sleep(pause).await;
                        self.pacer.paused();
                    }
                    None => writable(socket).await?,
                }
                self.full = false;
            }
            match send_datagrams(socket, &entries[..n]) {
                Ok(sent) => {
                    self.pacer.sent(sent);
                    if sent < n {
                        // The kernel took what fit: the queue is full again.
                        self.pacer.full(Instant::now());
                        self.full = true;
                    }
                    return Ok(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pacer.full(Instant::now());
                    self.full = true;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc_errno::EMSGSIZE | libc_errno::ENOBUFS)
                    ) =>
                {
                    send_memfd(socket, &mut self.spare_memfd, first).await?;
                    return Ok(1);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `socket` can send. The socket is registered with the runtime only for the
/// wait: registered for good, the kernel would wake the runtime each time journald takes one of
/// our entries off its queue (the freed buffer space is a write-space event), a wake-up per
/// message that cost more CPU than everything else the daemon does.
async fn writable(socket: &UnixDatagram) -> io::Result<()> {
    // SAFETY: a `BorrowedFd` stays open and names the same socket for as long as the `AsyncFd`
    // holding it lives, which is all `register_with_interest` asks.
    let fd = unsafe { AsyncFd::register_with_interest(socket.as_fd(), Interest::WRITABLE) }
        .map_err(io::Error::from)?;
    let _ready = fd.writable().await?;
    Ok(())
}

/// Datagrams handed to the kernel per sendmmsg(2) call.
const MMSG_BATCH: usize = 64;

/// One sendmmsg(2) of up to [`MMSG_BATCH`] entries: returns how many of `entries` the kernel
/// took (at least one), or the error of the first. The message headers live on the stack: this
/// runs for every few dozen entries, and allocates nothing.
fn send_datagrams(socket: &UnixDatagram, entries: &[&[u8]]) -> io::Result<usize> {
    use rustix::net::MMsgHdr;
    let n = entries.len().min(MMSG_BATCH);
    let iovs: [[io::IoSlice<'_>; 1]; MMSG_BATCH] = std::array::from_fn(|i| {
        [io::IoSlice::new(
            entries.get(i).copied().unwrap_or_default(),
        )]
    });
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; MMSG_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut controls = controls.iter_mut();
    let mut messages: [MMsgHdr<'_>; MMSG_BATCH] = std::array::from_fn(|i| {
        MMsgHdr::new(
            &iovs[i],
            controls.next().expect("one control buffer per message"),
        )
    });
    Ok(rustix::net::sendmmsg(
        socket,
        &mut messages[..n],
        SendFlags::empty(),
    )?)
}

/// Paces refills of journald's receive queue while it is full.
///
/// A sender blocked on a full datagram queue is woken each time journald takes one entry out,
/// so a daemon that simply waits for the socket to become writable refills one slot per
/// wake-up, and both it and journald spend more time on wake-ups than on entries. Instead, once
/// the queue has room, the pacer lets journald drain part of it before the next `sendmmsg`
/// refills many slots at once. The queue's size (`net.unix.max_dgram_qlen` in journald's network
/// namespace, 512 under systemd, 10 by default) cannot be read from here, so it is learnt: the
/// longest run of entries the kernel took between two "full" answers bounds it from below, and
/// journald's drain rate is measured between "full" answers. The pause is a share of the time
/// the known capacity takes to drain, minus the timer's slack; when that is under a
/// millisecond (a small queue or a fast journald) there is no pause, and the daemon refills
/// at each wake-up as before. A run close to the whole capacity means the queue may have run
/// dry during the pause, and the share halves.
#[derive(Debug)]
struct Pacer {
    /// Entries the kernel took since the queue was last full, sent back to back.
    run: usize,
    /// When the queue was last found full; `None` after the sink ran out of entries, when the
    /// next run measures nothing but how much there was to send.
    last_full: Option<Instant>,
    /// The longest run seen: a lower bound on the queue's capacity.
    capacity: usize,
    /// journald's drain rate in entries per second, from runs that cannot have emptied the queue.
    rate: f64,
    /// Share of the known capacity journald may drain before the next refill.
    share: f64,
    /// The run now going in follows a pause (not a wait for room).
    paused: bool,
    /// A short refill after a pause, and how many times in a row it was exactly that.
    dry: (usize, u32),
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            run: 0,
            last_full: None,
            capacity: 0,
            rate: 0.0,
            share: Pacer::MAX_SHARE,
            paused: false,
            dry: (0, 0),
        }
    }
}

impl Pacer {
    const MAX_SHARE: f64 = 0.5;
    const MIN_SHARE: f64 = 1.0 / 8.0;
    /// tokio's timer fires up to a millisecond late.
    const TIMER_SLACK: Duration = Duration::from_millis(1);
    const MAX_PAUSE: Duration = Duration::from_millis(4);

    fn sent(&mut self, n: usize) {
        self.run += n;
    }

    /// The sink has nothing more to send for now.
    fn idle(&mut self) {
        self.run = 0;
        self.last_full = None;
    }

    /// The kernel said the queue is full.
    ///
    /// Between two "full" answers journald took exactly the `run` entries sent meanwhile:
    /// `run / elapsed` is its drain rate if the queue never ran dry, a lower bound if it did.
    /// After a stall (a rate near zero, the longest pause) the next refill finds the queue
    /// drained, and its sample replaces the estimate: the pacer re-measures after any stall, and
    /// a pause is never longer than the last observed drain needs.
    fn full(&mut self, now: Instant) {
        let run = std::mem::take(&mut self.run);
        let after_pause = std::mem::take(&mut self.paused);
        // The capacity is learnt from the longest run, which can overstate it (journald drains
        // while a long run goes in). If the refill after a pause is the very same short run
        // three times over, the queue ran dry during each pause and that run is its size.
        if after_pause && run > 0 && run * 10 <= self.capacity * 9 {
            if run == self.dry.0 {
                self.dry.1 += 1;
            } else {
                self.dry = (run, 1);
            }
            if self.dry.1 >= 3 {
                self.capacity = run;
                self.dry = (0, 0);
            }
        } else if after_pause {
            self.dry = (0, 0);
        }
        // Nearly the whole capacity went in: the queue may have run dry, journald idled.
        let nearly_whole = run * 10 > self.capacity * 9;
        if let Some(then) = self.last_full {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            if run > 0 && elapsed > 0.0 {
                let sample = run as f64 / elapsed;
                self.rate = if self.rate == 0.0 {
                    sample
                } else if nearly_whole {
                    // journald drained at least this fast, and the pause was longer than the
                    // drain needed: never keep a lower estimate (one measured across a stall,
                    // say) that would make the next pause as long again.
                    self.rate.max(sample)
                } else {
                    0.875 * self.rate + 0.125 * sample
                };
            }
        }
        if run > self.capacity {
            // A longer run than ever: the queue holds at least this many.
            self.capacity = run;
        } else if nearly_whole {
            // Pause less.
            self.share = (self.share / 2.0).max(Pacer::MIN_SHARE);
        } else if run * 4 < self.capacity {
            self.share = (self.share * 1.25).min(Pacer::MAX_SHARE);
        }
        self.last_full = Some(now);
    }

    /// The sink waited [`Pacer::pause`] before the run now starting.
    fn paused(&mut self) {
        self.paused = true;
    }

    /// How long to wait, once the queue has room, before refilling it.
    fn pause(&self) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let drain = Duration::from_secs_f64(self.share * self.capacity as f64 / self.rate);
        let pause = drain.checked_sub(Pacer::TIMER_SLACK)?;
        (pause >= Duration::from_millis(1)).then(|| pause.min(Pacer::MAX_PAUSE))
    }
}

/// The errno values we act on (std does not name them).
mod libc_errno {
    pub const EMSGSIZE: i32 = rustix::io::Errno::MSGSIZE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
}

fn open_socket() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SNDBUF);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn new_memfd() -> io::Result<std::fs::File> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        "journal-entry",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    Ok(std::fs::File::from(fd))
}

/// An entry too large for one datagram travels as a sealed memfd, exactly as
/// sd_journal_sendv(3) does: journald reads the fd's contents as the entry. It uses the spare
/// memfd made ahead of time, and makes the next spare afterwards; without a spare (out of
/// descriptors) the error holds the entry, to be retried, whole.
async fn send_memfd(
    socket: &UnixDatagram,
    spare: &mut Option<std::fs::File>,
    entry: &[u8],
) -> io::Result<()> {
    let mut file = match spare.take() {
        Some(file) => file,
        None => new_memfd()?,
    };
    let result = fill_and_send(socket, &mut file, entry).await;
    if result.is_err() && file.metadata().is_ok_and(|m| m.len() == 0) {
        // Not written to: still good for the next try.
        *spare = Some(file);
    } else {
        drop(file);
        *spare = new_memfd().ok();
    }
    result
}

async fn fill_and_send(
    socket: &UnixDatagram,
    file: &mut std::fs::File,
    entry: &[u8],
) -> io::Result<()> {
    use rustix::fs::SealFlags;
    file.write_all(entry)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        match rustix::net::sendmsg(socket, &[], &mut control, SendFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::AGAIN) => writable(socket).await?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one native-protocol entry back into `(name, value)` pairs, checking what journald
/// checks: field names of `A-Z`, `0-9` and `_` not starting with `_` or a digit, plain values
/// ending in a newline, binary values whose length matches. For tests and the fuzzer.
pub fn parse_native(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let nl = memchr::memchr(b'\n', data).ok_or("a field without a newline")?;
        let line = &data[..nl];
        let (name, value, rest) = match memchr::memchr(b'=', line) {
            Some(eq) => (&line[..eq], line[eq + 1..].to_vec(), &data[nl + 1..]),
            None => {
                let rest = &data[nl + 1..];
                let len_bytes: [u8; 8] = rest
                    .get(..8)
                    .ok_or("a binary field without its length")?
                    .try_into()
                    .expect("8 bytes");
                let len = u64::from_le_bytes(len_bytes) as usize;
                let value = rest
                    .get(8..8 + len)
                    .ok_or("a binary value shorter than its length")?;
                if rest.get(8 + len) != Some(&b'\n') {
                    return Err("a binary value not followed by a newline".into());
                }
                (line, value.to_vec(), &rest[9 + len..])
            }
        };
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name[0].is_ascii_digit()
            && name[0] != b'_'
            && name
                .iter()
                .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "invalid field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        fields.push((
            String::from_utf8(name.to_vec()).expect("checked ASCII"),
            value,
        ));
        data = rest;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests;
