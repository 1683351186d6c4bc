//! The wire protocol (DESIGN §2): cutting a byte stream into messages, and the `<N>` prefix.
//!
//! Pure code, no I/O: the connection feeds it whatever it read, and it hands back messages as
//! borrowed slices. Memory per connection is bounded by `max_line_bytes`: a line that grows past
//! it is cut into pieces (`LINE_BREAK=line-max`), as journald does with its `LineMax=`.

use memchr::{memchr, memchr2};

mod datagram;
pub use datagram::datagram_pieces;

pub mod json;
pub mod syslog;

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
                    self.after_record = self.is_record(&[]);
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
            let may_be_record = if self.continuing {
                self.record
            } else {
                self.pending.first().unwrap_or(&rest[0]) == &b'<'
            };
            let nul_end = if may_be_record {
                memchr2(b'\n', 0, window).filter(|&i| window[i] == 0 && self.is_record(&rest[..i]))
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
                self.after_record =
                    nul_end.is_some() || (may_be_record && self.is_record(&rest[..i]));
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

/// A priority (and optional facility) taken from a message's `<N>` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub priority: u8,
    /// Set when the client sent a full syslog PRI (8..=191).
    pub facility: Option<u8>,
}

/// Splits a leading `<N>` off `text`: N in 0..=7 is a priority (sd-daemon(3) style); N in
/// 8..=191 is a syslog PRI (facility N/8, severity N%8). Anything else is not a prefix, and the
/// text is returned whole.
pub fn parse_prefix(text: &[u8]) -> (Option<Prefix>, &[u8]) {
    let Some(rest) = text.strip_prefix(b"<") else {
        return (None, text);
    };
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') {
        return (None, text);
    }
    // No leading zeros except "<0>" itself, as RFC 5424 spells PRI.
    if digits > 1 && rest[0] == b'0' {
        return (None, text);
    }
    let n = rest[..digits]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let prefix = match n {
        0..=7 => Prefix {
            priority: n as u8,
            facility: None,
        },
        8..=191 => Prefix {
            priority: (n % 8) as u8,
            facility: Some((n / 8) as u8),
        },
        _ => return (None, text),
    };
    (Some(prefix), &rest[digits + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Vec<(Vec<u8>, LineBreak, bool)>;

    fn frame_chunks(max: usize, chunks: &[&[u8]], eof: bool) -> Out {
        let mut f = Framer::new(max);
        let mut out = Out::new();
        let mut emit = |m: Message<'_>| {
            out.push((m.bytes.to_vec(), m.line_break, m.continuation));
            true
        };
        for c in chunks {
            assert_eq!(f.feed(c, &mut emit), c.len());
        }
        if eof {
            f.flush(LineBreak::Eof, &mut emit);
        }
        out
    }

    fn lines(out: &Out) -> Vec<&[u8]> {
        out.iter().map(|(b, _, _)| b.as_slice()).collect()
    }

    #[test]
    fn lines_crlf_and_empty_lines() {
        let out = frame_chunks(100, &[b"a\r\n\nb\n\r\n", b"c"], true);
        assert_eq!(lines(&out), [&b"a"[..], b"b", b"c"]);
        assert_eq!(out[0].1, LineBreak::Newline);
        assert_eq!(out[2].1, LineBreak::Eof);
    }

    #[test]
    fn a_line_split_across_reads_is_one_message() {
        let out = frame_chunks(100, &[b"hel", b"lo wo", b"rld\nx\n"], false);
        assert_eq!(lines(&out), [&b"hello world"[..], b"x"]);
    }

    #[test]
    fn bytes_are_kept_exactly() {
        let out = frame_chunks(100, &[b"\xff\x00\xfe bin\x00\n"], false);
        assert_eq!(lines(&out), [&b"\xff\x00\xfe bin\x00"[..]]);
    }

    #[test]
    fn long_lines_are_cut_at_max_and_reassemble() {
        let line: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = line.clone();
        input.push(b'\n');
        // Every way of chunking the input gives the same pieces.
        for chunk in [1, 7, 300, 1001] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let out = frame_chunks(300, &chunks, false);
            let sizes: Vec<usize> = out.iter().map(|o| o.0.len()).collect();
            assert_eq!(sizes, [300, 300, 300, 100], "chunk {chunk}");
            assert!(out[..3].iter().all(|o| o.1 == LineBreak::LineMax));
            assert_eq!(out[3].1, LineBreak::Newline);
            assert_eq!(
                out.iter().map(|o| o.2).collect::<Vec<_>>(),
                [false, true, true, true]
            );
            assert_eq!(out.concat_bytes(), line);
        }
    }

    #[test]
    fn a_line_of_exactly_max_is_not_split() {
        let out = frame_chunks(5, &[b"abcde\nfghij", b"\n"], false);
        assert_eq!(lines(&out), [&b"abcde"[..], b"fghij"]);
        assert!(out.iter().all(|o| o.1 == LineBreak::Newline));
    }

    /// Every way of cutting `input` into reads, fed with `flush_at` timeouts after the reads
    /// that end at those offsets; the messages as (bytes, why, continuation, octet_counted).
    fn frame_all_ways(max: usize, input: &[u8], timeouts: &[usize]) -> Vec<Out4> {
        let mut results = Vec::new();
        for chunk in 1..=input.len().max(1) {
            let mut f = Framer::new(max);
            let mut out = Vec::new();
            let mut emit = |m: Message<'_>| {
                out.push((
                    m.bytes.to_vec(),
                    m.line_break,
                    m.continuation,
                    m.octet_counted,
                ));
                true
            };
            let mut start = 0;
            let mut stops: Vec<usize> = timeouts.to_vec();
            stops.push(input.len());
            for stop in stops {
                for c in input[start..stop].chunks(chunk) {
                    let mut c = c;
                    while !c.is_empty() {
                        let used = f.feed(c, &mut emit);
                        c = &c[used..];
                    }
                }
                if stop < input.len() {
                    f.flush(LineBreak::Timeout, &mut emit);
                }
                start = stop;
            }
            f.flush(LineBreak::Eof, &mut emit);
            results.push(out);
        }
        results
    }

    type Out4 = Vec<(Vec<u8>, LineBreak, bool, bool)>;

    #[test]
    fn a_crlf_line_of_exactly_max_is_a_normal_line() {
        for out in frame_all_ways(5, b"abcde\r\nfghij\r\nklmnop\r\n", &[]) {
            assert_eq!(
                out,
                [
                    (b"abcde".to_vec(), LineBreak::Newline, false, false),
                    (b"fghij".to_vec(), LineBreak::Newline, false, false),
                    (b"klmno".to_vec(), LineBreak::LineMax, false, false),
                    (b"p".to_vec(), LineBreak::Newline, true, false),
                ]
            );
        }
        // A `\r` at the limit that is not followed by `\n` is text, carried into the next piece.
        for out in frame_all_ways(5, b"abcde\rx\n", &[]) {
            assert_eq!(
                out,
                [
                    (b"abcde".to_vec(), LineBreak::LineMax, false, false),
                    (b"\rx".to_vec(), LineBreak::Newline, true, false),
                ]
            );
        }
    }

    #[test]
    fn a_timeout_never_leaves_a_crlf_cr_in_the_message_nor_loses_it() {
        // The `\r` before a pause may be the first half of CRLF: it is held back, and dropped
        // if `\n` follows, or leads the next piece if text does.
        for out in frame_all_ways(100, b"abc\r\nxyz\rmore\n", &[4, 9]) {
            assert_eq!(
                out,
                [
                    (b"abc".to_vec(), LineBreak::Timeout, false, false),
                    (b"xyz".to_vec(), LineBreak::Timeout, false, false),
                    (b"\rmore".to_vec(), LineBreak::Newline, true, false),
                ]
            );
        }
        // At the limit too.
        for out in frame_all_ways(3, b"abc\r\nd\n", &[4]) {
            assert_eq!(
                out,
                [
                    (b"abc".to_vec(), LineBreak::Timeout, false, false),
                    (b"d".to_vec(), LineBreak::Newline, false, false),
                ]
            );
        }
    }

    #[test]
    fn a_timeout_tail_belongs_to_the_same_line() {
        // The tail after a pause is a continuation: never re-read as `<N>`, nor as an
        // RFC 6587 length; the line, and its state, end at the newline.
        for out in frame_all_ways(100, b"<3>first part 12 <5>x\n6 <1>abc", &[13]) {
            assert_eq!(
                out,
                [
                    (b"<3>first part".to_vec(), LineBreak::Timeout, false, false),
                    (b" 12 <5>x".to_vec(), LineBreak::Newline, true, false),
                    (b"<1>abc".to_vec(), LineBreak::Newline, false, true),
                ]
            );
        }
        for out in frame_all_ways(100, b"abc12 <5>x\n", &[3]) {
            assert_eq!(
                out,
                [
                    (b"abc".to_vec(), LineBreak::Timeout, false, false),
                    (b"12 <5>x".to_vec(), LineBreak::Newline, true, false),
                ]
            );
        }
    }

    /// The fuzz target's line-state invariants, exhaustively over short inputs: with a timeout
    /// after every read, each line's bytes (less its CRLF/LF) come out exactly, in pieces whose
    /// first alone is not a continuation.
    #[test]
    fn timeouts_keep_every_byte_and_the_line_together() {
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=7u32 {
            for code in 0..3usize.pow(len) {
                let input: Vec<u8> = (0..len)
                    .map(|i| alphabet[code / 3usize.pow(i) % 3])
                    .collect();
                for max in 1..=3 {
                    for step in 1..=2 {
                        let timeouts: Vec<usize> = (step..input.len()).step_by(step).collect();
                        for out in &frame_all_ways(max, &input, &timeouts) {
                            let lines: Vec<&[u8]> = input
                                .split(|&b| b == b'\n')
                                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                                .filter(|l| !l.is_empty())
                                .collect();
                            let ctx = format!("{input:?} max {max} step {step}: {out:?}");
                            assert_eq!(out.iter().filter(|m| !m.2).count(), lines.len(), "{ctx}");
                            let got: Vec<u8> = out.iter().flat_map(|m| m.0.clone()).collect();
                            assert_eq!(got, lines.concat(), "{ctx}");
                            assert!(
                                out.iter().all(|m| !m.0.is_empty() && m.0.len() <= max),
                                "{ctx}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pending_memory_is_bounded() {
        let mut f = Framer::new(64);
        let mut n = 0;
        for _ in 0..1000 {
            f.feed(&[b'x'; 1000], &mut |_| {
                n += 1;
                true
            });
            assert!(f.pending.len() <= 64);
        }
        assert_eq!(n * 64 + f.pending.len(), 1000 * 1000);
    }

    #[test]
    fn feed_pauses_when_emit_says_so() {
        let mut f = Framer::new(100);
        let input = b"a\nb\nc\n";
        let mut got = Vec::new();
        let used = f.feed(input, &mut |m| {
            got.push(m.bytes.to_vec());
            false
        });
        assert_eq!(used, 2);
        let used2 = f.feed(&input[used..], &mut |m| {
            got.push(m.bytes.to_vec());
            true
        });
        assert_eq!(used + used2, input.len());
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn timeout_flush_emits_the_partial_line() {
        let mut f = Framer::new(100);
        let mut got = Vec::new();
        f.feed(b"no newline", &mut |_| unreachable!());
        assert!(f.has_pending());
        f.flush(LineBreak::Timeout, &mut |m| {
            got.push((m.bytes.to_vec(), m.line_break));
            true
        });
        assert_eq!(got, [(b"no newline".to_vec(), LineBreak::Timeout)]);
        assert!(!f.has_pending());
    }

    #[test]
    fn octet_counted_frames_in_any_chunking() {
        let input: &[u8] = b"11 <13>a\nb c d3 <5>12 apples\n7 <1>\r\n\n\nplain\n";
        let expected: Vec<(Vec<u8>, bool)> = vec![
            (b"<13>a\nb c d".to_vec(), true),
            (b"<5>".to_vec(), true),
            (b"12 apples".to_vec(), false),
            (b"<1>\r\n\n\n".to_vec(), true),
            (b"plain".to_vec(), false),
        ];
        for chunk in 1..=input.len() {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let mut f = Framer::new(100);
            let mut got = Vec::new();
            for c in &chunks {
                f.feed(c, &mut |m| {
                    got.push((m.bytes.to_vec(), m.octet_counted));
                    true
                });
            }
            assert_eq!(got, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn octet_frames_respect_max_line_and_eof() {
        let mut f = Framer::new(4);
        let mut got = Vec::new();
        let mut emit = |m: Message<'_>| {
            got.push((m.bytes.to_vec(), m.line_break, m.continuation));
            true
        };
        f.feed(b"11 <3>abcdefgh9 <1>xy", &mut emit);
        f.flush(LineBreak::Eof, &mut emit);
        assert_eq!(
            got,
            vec![
                (b"<3>a".to_vec(), LineBreak::LineMax, false),
                (b"bcde".to_vec(), LineBreak::LineMax, true),
                (b"fgh".to_vec(), LineBreak::Newline, true),
                (b"<1>x".to_vec(), LineBreak::LineMax, false),
                (b"y".to_vec(), LineBreak::Eof, true),
            ]
        );
        // Digits alone at EOF are just text.
        let mut f = Framer::new(100);
        let mut got = Vec::new();
        f.feed(b"123", &mut |_| unreachable!());
        f.flush(LineBreak::Eof, &mut |m| {
            got.push(m.bytes.to_vec());
            true
        });
        assert_eq!(got, vec![b"123".to_vec()]);
    }

    /// Found by the fuzzer: digits held back as a possible octet-counting header, which then
    /// turned out to be text, came out as one piece over the limit.
    #[test]
    fn held_back_digits_are_cut_like_any_text() {
        let frame = |max: usize, input: &[u8], chunk: usize| {
            let mut f = Framer::new(max);
            let mut out = Vec::new();
            let mut emit = |m: Message<'_>| {
                out.push((
                    m.bytes.to_vec(),
                    m.line_break,
                    m.continuation,
                    m.octet_counted,
                ));
                true
            };
            for c in input.chunks(chunk) {
                let mut c = c;
                while !c.is_empty() {
                    let used = f.feed(c, &mut emit);
                    c = &c[used..];
                }
            }
            f.flush(LineBreak::Eof, &mut emit);
            out
        };
        for input in [
            &b"5555555555555555555\n\n"[..],
            b"1234567 x\n",
            b"12 <1",
            b"99",
        ] {
            for max in [1, 2, 3, 100] {
                let whole = frame(max, input, input.len());
                for chunk in 1..input.len() {
                    assert_eq!(
                        frame(max, input, chunk),
                        whole,
                        "{input:?} max {max} chunk {chunk}"
                    );
                }
            }
        }
    }

    fn msg(bytes: &[u8], why: LineBreak, continuation: bool) -> (Vec<u8>, LineBreak, bool, bool) {
        (bytes.to_vec(), why, continuation, false)
    }

    /// Issue 15.1: Python's SysLogHandler ends each record with a NUL; each is a message of its
    /// own, whole as soon as its NUL arrives (no EOF, no timeout needed).
    #[test]
    fn nul_terminated_records_python() {
        let input = b"<12>python one\0<11>python two\0<14>python three\0";
        for chunk in 1..=input.len() {
            let out = frame_chunks(100, &input.chunks(chunk).collect::<Vec<_>>(), false);
            assert_eq!(
                lines(&out),
                [
                    &b"<12>python one"[..],
                    b"<11>python two",
                    b"<14>python three"
                ],
                "chunk {chunk}"
            );
            assert!(out.iter().all(|o| o.1 == LineBreak::Newline));
        }
    }

    /// Issue 15.1: Perl's Sys::Syslog sends `\n\0`: the NUL after a record's end is dropped,
    /// never a message, even when a pause (a `timeout` flush) comes between.
    #[test]
    fn nul_after_a_record_is_dropped_perl() {
        let input = b"<11>Dec  2 05:16:13 perltag[9987]: perl one\n\0<11>Dec  2 05:16:13 perltag[9987]: perl two\n\0";
        let one = input.iter().position(|&b| b == 0).unwrap();
        for timeouts in [&[][..], &[one], &[one + 1], &[one, input.len() - 1]] {
            for out in frame_all_ways(100, input, timeouts) {
                assert_eq!(
                    out,
                    [
                        msg(
                            b"<11>Dec  2 05:16:13 perltag[9987]: perl one",
                            LineBreak::Newline,
                            false
                        ),
                        msg(
                            b"<11>Dec  2 05:16:13 perltag[9987]: perl two",
                            LineBreak::Newline,
                            false
                        ),
                    ],
                    "timeouts {timeouts:?}"
                );
            }
        }
    }

    /// Plain lines keep their NUL bytes; so does a line whose `<…>` is not a valid PRI, and a
    /// NUL that does not directly follow a record's end.
    #[test]
    fn nul_in_plain_lines_is_kept() {
        for out in frame_all_ways(100, b"a\0b\n\0x\0\n<x>\0y\n<999>z\0w\nq\n\0r\n", &[]) {
            assert_eq!(
                out,
                [
                    msg(b"a\0b", LineBreak::Newline, false),
                    msg(b"\0x\0", LineBreak::Newline, false),
                    msg(b"<x>\0y", LineBreak::Newline, false),
                    msg(b"<999>z\0w", LineBreak::Newline, false),
                    msg(b"q", LineBreak::Newline, false),
                    msg(b"\0r", LineBreak::Newline, false),
                ]
            );
        }
    }

    /// A record cut at `max_line` or by a pause still ends at its NUL: its later pieces no
    /// longer show the PRI, the line remembers it.
    #[test]
    fn a_cut_record_still_ends_at_nul() {
        for out in frame_all_ways(4, b"<1>abcdef\0<2>x\0", &[]) {
            assert_eq!(
                out,
                [
                    msg(b"<1>a", LineBreak::LineMax, false),
                    msg(b"bcde", LineBreak::LineMax, true),
                    msg(b"f", LineBreak::Newline, true),
                    msg(b"<2>x", LineBreak::Newline, false),
                ]
            );
        }
        for out in frame_all_ways(100, b"<1>abc\0def\0", &[5]) {
            assert_eq!(
                out,
                [
                    msg(b"<1>ab", LineBreak::Timeout, false),
                    msg(b"c", LineBreak::Newline, true),
                    msg(b"def\0", LineBreak::Eof, false),
                ]
            );
        }
    }

    #[test]
    fn prefixes() {
        for n in 0..=7u8 {
            let text = format!("<{n}>msg");
            let (p, rest) = parse_prefix(text.as_bytes());
            assert_eq!(
                p,
                Some(Prefix {
                    priority: n,
                    facility: None
                })
            );
            assert_eq!(rest, b"msg");
        }
        assert_eq!(
            parse_prefix(b"<13>x"),
            (
                Some(Prefix {
                    priority: 5,
                    facility: Some(1)
                }),
                &b"x"[..]
            )
        );
        assert_eq!(
            parse_prefix(b"<191>x"),
            (
                Some(Prefix {
                    priority: 7,
                    facility: Some(23)
                }),
                &b"x"[..]
            )
        );
        for kept in [
            &b"<192>x"[..],
            b"<999>x",
            b"<1000>x",
            b"<>x",
            b"<a>x",
            b"<03>x",
            b"<3",
            b"3>x",
        ] {
            assert_eq!(
                parse_prefix(kept),
                (None, kept),
                "{:?}",
                String::from_utf8_lossy(kept)
            );
        }
    }

    trait ConcatBytes {
        fn concat_bytes(&self) -> Vec<u8>;
    }
    impl ConcatBytes for Out {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter().flat_map(|o| o.0.iter().copied()).collect()
        }
    }
}
