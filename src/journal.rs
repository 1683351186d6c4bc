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
use std::time::{Duration, SystemTime};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

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
    pub header: Option<crate::syslog::Header<'a>>,
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
        Encoder { target, client }
    }

    /// Appends one entry to `batch`.
    pub fn encode(&self, record: &Record<'_>, batch: &mut Batch) {
        let out = &mut batch.data;
        match self.target {
            Target::Journal => {
                push_field(out, b"MESSAGE", record.message);
                out.extend_from_slice(b"PRIORITY=");
                out.push(b'0' + record.priority);
                out.push(b'\n');
                if let Some(facility) = record.facility {
                    push_field(out, b"SYSLOG_FACILITY", facility.to_string().as_bytes());
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
                // One message, one line: a newline inside is shown escaped.
                for chunk in record.message.split_inclusive(|&b| b == b'\n') {
                    match chunk.strip_suffix(b"\n") {
                        Some(text) => {
                            out.extend_from_slice(text);
                            out.extend_from_slice(b"\\n");
                        }
                        None => out.extend_from_slice(chunk),
                    }
                }
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

/// The connections' side of the sink.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    target: Target,
    tx: mpsc::Sender<Batch>,
}

impl SinkHandle {
    pub fn target(&self) -> Target {
        self.target
    }

    /// Hands a batch to the sink, waiting while its queue is full (backpressure).
    pub async fn send(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        // The receiver lives until every handle is dropped, so this cannot fail.
        let _ = self.tx.send(batch).await;
    }

    /// Hands a batch over only if the queue has room; gives it back otherwise. For senders that
    /// must never wait on the journal (the supervisor, whose ticks feed the watchdog).
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                Err(b)
            }
        }
    }
}

/// Starts the sink task. It ends once every [`SinkHandle`] is dropped and the queue is written.
pub fn spawn(target: Target) -> (SinkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let task = match target {
        Target::Journal => tokio::spawn(run_journal(rx, PathBuf::from(JOURNAL_SOCKET))),
        Target::Stdout => tokio::spawn(run_stdout(rx)),
    };
    (SinkHandle { target, tx }, task)
}

async fn run_stdout(mut rx: mpsc::Receiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        // Blocking stdout writes stay off the runtime's worker threads.
        let result = tokio::task::spawn_blocking(move || {
            let mut out = io::stdout().lock();
            out.write_all(&batch.data)?;
            out.flush()
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!("writing messages to stdout: {e}");
        }
    }
}

async fn run_journal(mut rx: mpsc::Receiver<Batch>, path: PathBuf) {
    let mut journal = JournalSocket::new(path);
    while let Some(batch) = rx.recv().await {
        for entry in batch.entries() {
            journal.send(entry).await;
        }
    }
}

/// The one datagram socket to journald, reconnected when journald restarts.
struct JournalSocket {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    /// Set while journald is unreachable, so that the outage is reported once, not per entry.
    outage: Option<io::Error>,
}

impl JournalSocket {
    fn new(path: PathBuf) -> Self {
        JournalSocket {
            path,
            socket: None,
            outage: None,
        }
    }

    /// Sends one entry, waiting (never dropping) while journald is busy or away.
    async fn send(&mut self, entry: &[u8]) {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.try_send(entry).await {
                Ok(()) => {
                    if let Some(e) = self.outage.take() {
                        tracing::info!(
                            "journal socket {} is back (it had failed with: {e})",
                            self.path.display()
                        );
                    }
                    return;
                }
                Err(e) => {
                    if self.outage.is_none() {
                        tracing::warn!(
                            "journal socket {}: {e}; holding messages until it accepts them again",
                            self.path.display()
                        );
                        self.outage = Some(e);
                    }
                    self.socket = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_send(&mut self, entry: &[u8]) -> io::Result<()> {
        let socket = match &self.socket {
            Some(s) => s,
            None => self.socket.insert(connect(&self.path)?),
        };
        if entry.len() > MAX_DATAGRAM {
            tracing::debug!("entry of {} bytes sent through a memfd", entry.len());
            return send_memfd(socket, entry).await;
        }
        // A connected socket lets the kernel wake us when journald's queue has room again.
        match socket.send(entry).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc_errno::EMSGSIZE | libc_errno::ENOBUFS)
                ) =>
            {
                send_memfd(socket, entry).await
            }
            Err(e) => Err(e),
        }
    }
}

/// The errno values we act on (std does not name them).
mod libc_errno {
    pub const EMSGSIZE: i32 = rustix::io::Errno::MSGSIZE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SNDBUF);
    socket.connect(path)?;
    Ok(socket)
}

/// An entry too large for one datagram travels as a sealed memfd, exactly as
/// sd_journal_sendv(3) does: journald reads the fd's contents as the entry.
async fn send_memfd(socket: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "journal-entry",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(entry)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    socket
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [file.as_fd()];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(socket, &[], &mut control, SendFlags::empty())
                .map(|_| ())
                .map_err(io::Error::from)
        })
        .await
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
mod tests {
    use super::*;

    fn parse(data: &[u8]) -> Vec<(String, Vec<u8>)> {
        parse_native(data).unwrap()
    }

    fn record(message: &[u8]) -> Record<'_> {
        Record {
            message,
            priority: 3,
            facility: Some(1),
            line_break: LineBreak::Eof,
            identifier: "app",
            header: None,
        }
    }

    #[test]
    fn native_entries_parse_back() {
        let peer = Peer::Unix {
            pid: Some(42),
            uid: 1000,
            gid: 100,
        };
        let enc = Encoder::new(Target::Journal, &peer, 7, Some("main"));
        let mut batch = Batch::default();
        enc.encode(&record(b"two\nlines\x00\xff"), &mut batch);
        enc.encode(&record(b"plain"), &mut batch);
        let entries: Vec<_> = batch.entries().collect();
        assert_eq!(entries.len(), 2);
        let fields = parse(entries[0]);
        let get = |k: &str| {
            fields
                .iter()
                .find(|f| f.0 == k)
                .map(|f| f.1.clone())
                .unwrap()
        };
        assert_eq!(get("MESSAGE"), b"two\nlines\x00\xff");
        assert_eq!(get("PRIORITY"), b"3");
        assert_eq!(get("SYSLOG_FACILITY"), b"1");
        assert_eq!(get("SYSLOG_IDENTIFIER"), b"app");
        assert_eq!(get("LINE_BREAK"), b"eof");
        assert_eq!(get("CLIENT_PID"), b"42");
        assert_eq!(get("CLIENT_UID"), b"1000");
        assert_eq!(get("CLIENT_GID"), b"100");
        assert_eq!(get("CLIENT_CONNECTION"), b"7");
        assert_eq!(get("SOCKET"), b"main");
        assert_eq!(
            parse(entries[1])[0],
            ("MESSAGE".to_owned(), b"plain".to_vec())
        );
    }

    #[test]
    fn tcp_peers_carry_their_address() {
        let peer = Peer::Tcp("127.0.0.1:5140".parse().unwrap());
        let enc = Encoder::new(Target::Journal, &peer, 1, None);
        let mut batch = Batch::default();
        enc.encode(&record(b"x"), &mut batch);
        let fields = parse(batch.entries().next().unwrap());
        assert!(fields.contains(&("CLIENT_ADDRESS".to_owned(), b"127.0.0.1:5140".to_vec())));
        assert!(
            !fields
                .iter()
                .any(|f| f.0 == "CLIENT_UID" || f.0 == "SOCKET")
        );
    }

    #[tokio::test]
    async fn holds_entries_while_the_journal_is_away_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let first = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut journal = JournalSocket::new(path.clone());
        journal.send(b"one").await;
        let recv = |s: &std::os::unix::net::UnixDatagram| {
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        assert_eq!(recv(&first), b"one");

        // journald goes away: the next entry waits, it is not dropped.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let pending = tokio::spawn(async move {
            journal.send(b"two").await;
            journal
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "nobody to take it yet");

        let second = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut journal = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("sent once the journal is back")
            .unwrap();
        assert_eq!(recv(&second), b"two");
        journal.send(b"three").await;
        assert_eq!(recv(&second), b"three");
    }

    #[test]
    fn stdout_lines_show_priority_and_client() {
        let peer = Peer::Unix {
            pid: Some(42),
            uid: 1000,
            gid: 100,
        };
        let enc = Encoder::new(Target::Stdout, &peer, 3, None);
        let mut batch = Batch::default();
        enc.encode(&record(b"a\nb"), &mut batch);
        let line = String::from_utf8(batch.data.clone()).unwrap();
        assert!(
            line.ends_with(" app[pid=42 uid=1000 conn=3] <3> a\\nb [eof]\n"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }
}
