//! Cutting a byte stream into messages ([`Framer`]): newline-terminated lines, NUL-terminated
//! records, octet-counted frames, and lines cut at `max_line_bytes` (DESIGN §2).

use memchr::{memchr, memchr2};

use super::prefix::parse_prefix;

/// Why a message ended, when it did not end with a newline (the journal's `LINE_BREAK=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBreak {
    /// Ended by `\n`: no `LINE_BREAK` field.
    Newline,
    /// A piece of a line longer than `max_line_bytes`.
    LineMax,
    /// The client closed the connection after a final line without `\n`.
    Eof,
    /// The client went quiet for `protocol.flush_after` in the middle of a line.
    Timeout,
}

impl LineBreak {
    /// The `LINE_BREAK=` value, or `None` for an ordinary line.
    pub fn field(self) -> Option<&'static str> {
        match self {
            LineBreak::Newline => None,
            LineBreak::LineMax => Some("line-max"),
            LineBreak::Eof => Some("eof"),
            LineBreak::Timeout => Some("timeout"),
        }
    }
}

/// One message cut out of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub bytes: &'a [u8],
    pub line_break: LineBreak,
    /// True for the second and later pieces of one long line: they carry no `<N>` prefix of their
    /// own and inherit the first piece's priority.
    pub continuation: bool,
    /// Framed by RFC 6587 octet counting (`LEN SP <PRI>…`): may hold newlines.
    pub octet_counted: bool,
}

/// Cuts a byte stream into messages.
#[derive(Debug)]
pub struct Framer {
    /// The start of a line whose end has not arrived yet; never longer than `max_line`.
    pending: Vec<u8>,
    max_line: usize,
    /// The line being read has already had a piece cut from it (`line-max`, or a `timeout`
    /// flush): what follows continues it, and is never read as the start of a new message.
    continuing: bool,
    /// Inside an octet-counted frame: how many of its bytes are still to come.
    frame_left: Option<usize>,
    /// `pending` holds what may be the start of an octet-counting header (`29`, `29 `), cut by
    /// a read boundary: the next bytes decide.
    header_stash: bool,
    /// The line being read (already cut into pieces: `continuing`) is a syslog record: it
    /// started with a `<PRI>`, so a NUL also ends it.
    record: bool,
    /// A syslog record just ended: a NUL right here (Perl's `\n\0`) is dropped.
    after_record: bool,
    /// This connection has sent a syslog record: from then on it is a syslog client, every
    /// line on it also ends at a NUL and a NUL right after a line's end is dropped. The lines
    /// of a record that holds newlines (a Python traceback, a Perl message with `\n`) then end
    /// at their NUL too instead of running into the next record.
    syslog_client: bool,
}

/// Where a [`Framer`] stands between two reads, less the bytes it holds: what a new process
/// needs, with those bytes, to go on cutting the same stream exactly where this one stopped
/// (a restart that hands the connection over, DESIGN §4).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FramerState {
    pub continuing: bool,
    pub frame_left: Option<usize>,
    pub header_stash: bool,
    pub record: bool,
    pub after_record: bool,
    pub syslog_client: bool,
}

/// What the start of a message says about RFC 6587 octet counting.
#[derive(Debug, PartialEq, Eq)]
enum Octets {
    /// `LEN SP` followed by `<`: a frame of LEN bytes (the PRI onwards); `header` bytes to skip.
    Frame {
        len: usize,
        header: usize,
    },
    /// Could still become a header: wait for more bytes.
    NeedMore,
    No,
}

/// `LEN SP <` with LEN a number without leading zeros, at most 7 digits (frames up to ~10 MB;
/// longer ones are still cut at `max_line_bytes`).
fn octet_header(s: &[u8]) -> Octets {
    if !s.first().is_some_and(|b| (b'1'..=b'9').contains(b)) {
        return Octets::No;
    }
    let digits = s.iter().take(8).take_while(|b| b.is_ascii_digit()).count();
    if digits > 7 {
        return Octets::No;
    }
    match (s.get(digits), s.get(digits + 1)) {
        (None, _) | (Some(b' '), None) => Octets::NeedMore,
        (Some(b' '), Some(b'<')) => Octets::Frame {
            len: s[..digits]
                .iter()
                .fold(0, |n, d| n * 10 + usize::from(d - b'0')),
            header: digits + 1,
        },
        _ => Octets::No,
    }
}

impl Framer {
    pub fn new(max_line: usize) -> Self {
        Framer {
            pending: Vec::new(),
            max_line: max_line.max(1),
            continuing: false,
            frame_left: None,
            header_stash: false,
            record: false,
            after_record: false,
            syslog_client: false,
        }
    }

    /// Takes the framer apart for a handover: its state and the bytes of the line it holds
    /// (read after the last complete message).
    pub fn into_parts(self) -> (FramerState, Vec<u8>) {
        let state = FramerState {
            continuing: self.continuing,
            frame_left: self.frame_left,
            header_stash: self.header_stash,
            record: self.record,
            after_record: self.after_record,
            syslog_client: self.syslog_client,
        };
        (state, self.pending)
    }

    /// A framer that goes on from [`Framer::into_parts`] of another one. Pending bytes beyond
    /// `max_line` (a lowered limit) are cut at the next `feed`, as after a reload.
    pub fn from_parts(max_line: usize, state: FramerState, pending: Vec<u8>) -> Self {
        Framer {
            pending,
            max_line: max_line.max(1),
            continuing: state.continuing,
            frame_left: state.frame_left,
            header_stash: state.header_stash,
            record: state.record,
            after_record: state.after_record,
            syslog_client: state.syslog_client,
        }
    }

    /// Applies a new `limits.max_line_bytes` (on reload). A pending partial line longer than the
    /// new limit is cut at the next `feed`.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(1);
    }

    /// True when part of a line is buffered, waiting for its end, that a timeout flush would
    /// log. A lone `\r` held back by a timeout flush (see [`Framer::flush`]) does not count.
    pub fn has_pending(&self) -> bool {
        let held_cr = self.pending == b"\r" && self.frame_left.is_none();
        !self.pending.is_empty() && !held_cr
    }

    /// Feeds `input`, calling `emit` for each complete message. `emit` returns `false` to pause
    /// (its batch is full); `feed` then returns how many bytes of `input` it consumed, and the
    /// caller feeds the rest later. Empty lines are skipped.
    pub fn feed(&mut self, input: &[u8], emit: &mut dyn FnMut(Message<'_>) -> bool) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            // A line may hold one byte over the limit while that byte is a `\r` that could
            // start the line's CRLF.
            let cr_at_limit = self.frame_left.is_none()
                && self.pending.len() == self.max_line + 1
                && self.pending.last() == Some(&b'\r');
            if self.pending.len() > self.max_line && !self.header_stash && !cr_at_limit {
                // After a reload lowered the limit, or a stashed octet-counting header turned
                // out to be text: cut what is held in pieces of the limit, as if it had come
                // in one read.
                if !self.emit_overflow(emit) {
                    return pos;
                }
                continue;
            }
            if let Some(left) = self.frame_left {
                if !self.feed_frame(rest, left, &mut pos, emit) {
                    return pos;
                }
                continue;
            }
            if self.after_record && self.pending.is_empty() && !self.continuing {
                // The NUL of Perl's `\n\0` (or a second terminator) ends nothing more.
                self.after_record = false;
                if rest[0] == 0 {
                    pos += 1;
                    continue;
                }
            }
            let may_be_header = self.header_stash
                || (self.pending.is_empty()
                    && !self.continuing
                    && (b'1'..=b'9').contains(&rest[0]));
            if may_be_header {
                // RFC 6587 octet counting is recognised at the start of a message, as rsyslog
                // does: `29 <13>…` is a frame of 29 bytes, newlines and all.
                let stash = if self.header_stash {
                    self.pending.len()
                } else {
                    0
                };
                let mut candidate = [0u8; 10];
                let n = (stash + rest.len()).min(candidate.len());
                candidate[..stash].copy_from_slice(&self.pending);
                candidate[stash..n].copy_from_slice(&rest[..n - stash]);
                match octet_header(&candidate[..n]) {
                    Octets::Frame { len, header } => {
                        pos += header - stash;
                        self.pending.clear();
                        self.header_stash = false;
                        self.frame_left = Some(len);
                        continue;
                    }
                    Octets::NeedMore => {
                        self.pending.extend_from_slice(rest);
                        self.header_stash = true;
                        return input.len();
                    }
                    Octets::No => {
                        self.header_stash = false;
                        if self.pending.len() > self.max_line {
                            continue; // cut into pieces first, above
                        }
                    }
                }
            }
            if cr_at_limit {
                // `max_line` bytes and a `\r`: `\n` makes it a CRLF line of exactly the limit;
                // anything else makes the `\r` the start of the next piece.
                let go_on = if rest[0] == b'\n' {
                    pos += 1;
                    let record = self.is_record(&[]);
                    self.line_ended(record);
                    self.record = false;
                    let continuation = std::mem::replace(&mut self.continuing, false);
                    let line = std::mem::take(&mut self.pending);
                    let go_on = emit_line(&line, LineBreak::Newline, continuation, emit);
                    self.reuse(line);
                    go_on
                } else {
                    self.emit_overflow(emit)
                };
                if !go_on {
                    return pos;
                }
                continue;
            }
            let room = self.max_line - self.pending.len();
            // A newline right after `room` bytes still ends a line of exactly `max_line` bytes,
            // and so does a CRLF.
            let window = &rest[..rest.len().min(room + 1)];
            let cr_at_room = rest.get(room) == Some(&b'\r');
            // A syslog record (a line that starts with `<PRI>`) also ends at a NUL (Python's
            // SysLogHandler, Perl's Sys::Syslog); a plain line keeps its NUL bytes. Only a line
            // that starts with `<` pays for the second search.
            let may_be_record = if self.syslog_client {
                true
            } else if self.continuing {
                self.record
            } else {
                self.pending.first().unwrap_or(&rest[0]) == &b'<'
            };
            let nul_end = if may_be_record {
                memchr2(b'\n', 0, window).filter(|&i| {
                    window[i] == 0 && (self.syslog_client || self.is_record(&rest[..i]))
                })
            } else {
                None
            };
            let newline = nul_end.or_else(|| {
                memchr(b'\n', window).or_else(|| {
                    (cr_at_room && rest.get(room + 1) == Some(&b'\n')).then_some(room + 1)
                })
            });
            let go_on = if let Some(i) = newline {
                pos += i + 1;
                let record = nul_end.is_some() || (may_be_record && self.is_record(&rest[..i]));
                self.line_ended(record);
                self.record = false;
                let continuation = std::mem::replace(&mut self.continuing, false);
                if self.pending.is_empty() {
                    emit_line(&rest[..i], LineBreak::Newline, continuation, emit)
                } else {
                    self.pending.extend_from_slice(&rest[..i]);
                    let line = std::mem::take(&mut self.pending);
                    let go_on = emit_line(&line, LineBreak::Newline, continuation, emit);
                    self.reuse(line);
                    go_on
                }
            } else if rest.len() > room && !(cr_at_room && rest.len() == room + 1) {
                // No newline within the limit: cut a full-size piece.
                pos += room;
                if self.pending.is_empty() {
                    let continuation = self.start_continuing(&rest[..room]);
                    emit(Message {
                        bytes: &rest[..room],
                        line_break: LineBreak::LineMax,
                        continuation,
                        octet_counted: false,
                    })
                } else {
                    self.pending.extend_from_slice(&rest[..room]);
                    let piece = std::mem::take(&mut self.pending);
                    let go_on = self.emit_piece(&piece, emit);
                    self.reuse(piece);
                    go_on
                }
            } else {
                // The line goes on (or, with a `\r` at the limit, `\n` may follow): wait.
                self.pending.extend_from_slice(rest);
                pos = input.len();
                true
            };
            if !go_on {
                return pos;
            }
        }
        pos
    }

    /// Emits the buffered partial line (if any) as a message of its own: at EOF or after the
    /// client went quiet. The buffer is freed: an idle connection holds no line memory.
    ///
    /// After a `Timeout` the line stays open: what the client sends next is the rest of the same
    /// line (a continuation, never re-read for `<N>` or an octet count), up to its newline. A
    /// `\r` at the end of a timed-out piece may be the first half of a CRLF whose `\n` has not
    /// arrived: it is held back, dropped if `\n` follows and sent at the start of the next piece
    /// if anything else does, so no byte is lost and no CRLF line leaves a `\r` in `MESSAGE`.
    /// At EOF a trailing `\r` is the end of the line, and dropped.
    pub fn flush(&mut self, why: LineBreak, emit: &mut dyn FnMut(Message<'_>) -> bool) {
        let timeout = why == LineBreak::Timeout;
        if !self.has_pending() && (timeout || self.pending.is_empty()) {
            return;
        }
        self.header_stash = false;
        let octet_counted = self.frame_left.is_some();
        let cr = !octet_counted && self.pending.last() == Some(&b'\r');
        if cr {
            self.pending.pop();
        }
        while self.pending.len() > self.max_line {
            self.emit_overflow(emit);
        }
        let line = std::mem::take(&mut self.pending);
        let continuation = if timeout {
            self.start_continuing(&line)
        } else {
            self.frame_left = None;
            self.record = false;
            std::mem::replace(&mut self.continuing, false)
        };
        if !line.is_empty() {
            emit(Message {
                bytes: &line,
                line_break: why,
                continuation,
                octet_counted,
            });
        }
        if cr && timeout {
            self.pending.push(b'\r');
        }
    }

    /// Takes bytes of an octet-counted frame; emits it when complete (or a `line-max` piece when
    /// it outgrows the limit). Returns what `emit` said.
    fn feed_frame(
        &mut self,
        rest: &[u8],
        left: usize,
        pos: &mut usize,
        emit: &mut dyn FnMut(Message<'_>) -> bool,
    ) -> bool {
        let room = self.max_line.saturating_sub(self.pending.len());
        if room == 0 {
            let piece = std::mem::take(&mut self.pending);
            let continuation = std::mem::replace(&mut self.continuing, true);
            return emit(Message {
                bytes: &piece,
                line_break: LineBreak::LineMax,
                continuation,
                octet_counted: true,
            });
        }
        let take = left.min(rest.len()).min(room);
        self.pending.extend_from_slice(&rest[..take]);
        *pos += take;
        if left > take {
            self.frame_left = Some(left - take);
            return true;
        }
        self.frame_left = None;
        let frame = std::mem::take(&mut self.pending);
        let continuation = std::mem::replace(&mut self.continuing, false);
        let go_on = emit(Message {
            bytes: &frame,
            line_break: LineBreak::Newline,
            continuation,
            octet_counted: true,
        });
        self.reuse(frame);
        go_on
    }

    /// Emits the first `max_line` bytes held as a `line-max` piece, keeping the rest.
    fn emit_overflow(&mut self, emit: &mut dyn FnMut(Message<'_>) -> bool) -> bool {
        let rest = self.pending.split_off(self.max_line);
        let piece = std::mem::replace(&mut self.pending, rest);
        self.emit_piece(&piece, emit)
    }

    fn emit_piece(&mut self, piece: &[u8], emit: &mut dyn FnMut(Message<'_>) -> bool) -> bool {
        let continuation = self.start_continuing(piece);
        emit(Message {
            bytes: piece,
            line_break: LineBreak::LineMax,
            continuation,
            octet_counted: false,
        })
    }

    /// A line ended at its newline or NUL; `record` says whether it was a syslog record. On a
    /// syslog client's connection (one that has sent a record) a NUL right after any line is
    /// its terminator's second half, dropped.
    fn line_ended(&mut self, record: bool) {
        self.syslog_client |= record;
        self.after_record = self.syslog_client;
    }

    /// Marks the line as cut, remembering from its first `piece` whether it is a syslog record
    /// (its later pieces no longer show the `<PRI>`). Returns whether it was already cut.
    fn start_continuing(&mut self, piece: &[u8]) -> bool {
        let was = std::mem::replace(&mut self.continuing, true);
        if !was {
            self.record = self.frame_left.is_none() && parse_prefix(piece).0.is_some();
        }
        was
    }

    /// Whether the line whose bytes are `pending` followed by `tail` is a syslog record: it
    /// starts with a valid `<PRI>` (at most 5 bytes, `<191>`).
    fn is_record(&self, tail: &[u8]) -> bool {
        if self.continuing {
            return self.record;
        }
        let mut start = [0u8; 5];
        let held = self.pending.len().min(5);
        start[..held].copy_from_slice(&self.pending[..held]);
        let more = tail.len().min(5 - held);
        start[held..held + more].copy_from_slice(&tail[..more]);
        parse_prefix(&start[..held + more]).0.is_some()
    }

    /// Keeps a buffer's allocation for the next partial line, unless it is large: a connection
    /// that once sent a long line should not hold on to that memory.
    fn reuse(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= 4096 {
            buf.clear();
            self.pending = buf;
        }
    }
}

fn emit_line(
    line: &[u8],
    line_break: LineBreak,
    continuation: bool,
    emit: &mut dyn FnMut(Message<'_>) -> bool,
) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return true;
    }
    emit(Message {
        bytes: line,
        line_break,
        continuation,
        octet_counted: false,
    })
}

#[cfg(test)]
mod tests;
