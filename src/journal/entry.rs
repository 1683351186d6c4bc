//! What a journal entry is: a [`Record`] from a client, encoded by an [`Encoder`] into a
//! [`Batch`] as native-protocol fields (or a stdout line), and read back by [`parse_native`].

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::peer::Peer;
use crate::protocol::LineBreak;

use super::escape;

/// journald's native-protocol socket (systemd.journal-fields(7), "native protocol").
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A connection hands its batch over once it holds this much.
pub const BATCH_BYTES: usize = 256 * 1024;

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
    pub(super) data: Vec<u8>,
    pub(super) ends: Vec<usize>,
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
    /// The fields added after connect (the client's unit and command), in native format:
    /// shared, not copied, by the connections of one process (`server::attribution`).
    added: Option<Arc<[u8]>>,
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
        Encoder {
            target,
            client,
            added: None,
        }
    }

    /// Where the entries go.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Adds fields that hold for the whole connection (the client's unit and command, see
    /// [`crate::peer`]) to every journal entry; the stdout line stays as it is.
    pub fn add_fields<'f>(&mut self, fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>) {
        if self.target == Target::Journal {
            self.add_shared(encode_fields(fields));
        }
    }

    /// Adds fields already encoded (whole native-format fields, as [`encode_fields`] makes
    /// them), kept by reference: every connection of one client shares one copy.
    pub fn add_shared(&mut self, fields: Arc<[u8]>) {
        if self.target == Target::Journal && !fields.is_empty() {
            match &self.added {
                None => self.added = Some(fields),
                Some(_) => self.append(&fields),
            }
        }
    }

    /// The fields added with [`Encoder::add_fields`] or [`Encoder::add_shared`], in native
    /// format: what a connection handed to the next process takes along (`add_encoded` there).
    pub fn added_fields(&self) -> &[u8] {
        self.added.as_deref().unwrap_or_default()
    }

    /// Adds fields [`Encoder::added_fields`] gave, as they are. Ignored unless they are whole
    /// native-format fields (`NAME=value\n`, or the length-prefixed form), so that a damaged
    /// record cannot break the entries.
    pub fn add_encoded(&mut self, fields: &[u8]) {
        if self.target == Target::Journal && native_fields_are_whole(fields) {
            self.append(fields);
        }
    }

    /// `fields` after those added so far, in an allocation of their own.
    fn append(&mut self, fields: &[u8]) {
        if fields.is_empty() {
            return;
        }
        let joined = [self.added_fields(), fields].concat();
        self.added = Some(Arc::from(joined));
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
                if let Some(added) = &self.added {
                    out.extend_from_slice(added);
                }
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

/// `fields` in native format, in one allocation that connections can share.
pub fn encode_fields<'f>(fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>) -> Arc<[u8]> {
    let mut out = Vec::new();
    for (name, value) in fields {
        push_field(&mut out, name, value);
    }
    Arc::from(out)
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

/// True if `data` is a run of whole native-format fields with valid names.
fn native_fields_are_whole(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let Some(end) = data.iter().position(|&b| b == b'=' || b == b'\n') else {
            return false;
        };
        let name = &data[..end];
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name[0].is_ascii_digit()
            && name
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
        if !valid {
            return false;
        }
        if data[end] == b'=' {
            let Some(nl) = data[end..].iter().position(|&b| b == b'\n') else {
                return false;
            };
            data = &data[end + nl + 1..];
        } else {
            let rest = &data[end + 1..];
            if rest.len() < 8 {
                return false;
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            if rest.len() - 8 < len + 1 || rest[8 + len] != b'\n' {
                return false;
            }
            data = &rest[8 + len + 1..];
        }
    }
    true
}

#[cfg(test)]
mod tests;
