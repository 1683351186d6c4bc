//! Syslog headers after a `<PRI>` (DESIGN §2), so that `logger -u /run/app.sock` is a
//! first-class client: RFC 3164 as logger(1) writes it (`Nov 25 19:28:59 [host ]tag[pid]: text`)
//! and RFC 5424 (`1 TIMESTAMP HOST APP PROCID MSGID SD text`).
//!
//! Parsing never loses bytes: anything that does not match a header exactly is left to be logged
//! whole. Everything is borrowed from the line; nothing is allocated — except an [`OwnedHeader`]
//! copy for a line that is cut into pieces, whose later pieces carry the first piece's header.

/// What a header says about a message. `None` fields were absent or nil (`-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header<'a> {
    pub identifier: Option<&'a [u8]>,
    pub pid: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub msgid: Option<&'a [u8]>,
    pub structured_data: Option<&'a [u8]>,
}

/// A [`Header`] kept past the bytes it was parsed from: the later pieces of a line cut at
/// `line-max` or by a `timeout` carry the header of its first piece. One buffer, reused from line
/// to line, so a connection allocates only for the first split line (and a longer header).
#[derive(Debug, Clone, Default)]
pub struct OwnedHeader {
    buf: Vec<u8>,
    /// identifier, pid, timestamp, msgid, structured_data: where each is in `buf`.
    fields: [Option<(usize, usize)>; 5],
}

impl OwnedHeader {
    /// Copies `h`.
    pub fn set(&mut self, h: &Header<'_>) {
        self.buf.clear();
        let parts = [h.identifier, h.pid, h.timestamp, h.msgid, h.structured_data];
        for (slot, part) in self.fields.iter_mut().zip(parts) {
            *slot = part.map(|p| {
                let start = self.buf.len();
                self.buf.extend_from_slice(p);
                (start, self.buf.len())
            });
        }
    }

    /// The header, borrowed from this copy.
    pub fn get(&self) -> Header<'_> {
        let f = |i: usize| self.fields[i].map(|(a, b)| &self.buf[a..b]);
        Header {
            identifier: f(0),
            pid: f(1),
            timestamp: f(2),
            msgid: f(3),
            structured_data: f(4),
        }
    }
}

/// Splits a syslog header off `text` (what follows the PRI); `None` if there is none.
pub fn parse(text: &[u8]) -> Option<(Header<'_>, &[u8])> {
    if text.starts_with(b"1 ") {
        parse_5424(&text[2..])
    } else {
        parse_3164(text)
    }
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd hh:mm:ss ` then `[hostname ]tag[[pid]]:` then the text.
fn parse_3164(text: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let ts = text.get(..15)?;
    // A number of two digits (the first may be a space, for the day) up to `max`.
    let number = |at: usize, min: u8, max: u8| {
        let tens = match ts[at] {
            b' ' if at == 4 => 0,
            d @ b'0'..=b'9' => d - b'0',
            _ => return false,
        };
        ts[at + 1].is_ascii_digit() && (min..=max).contains(&(tens * 10 + ts[at + 1] - b'0'))
    };
    // An impossible date or time (`Nov 25 99:99:99`) is no header: the line is kept whole.
    if !MONTHS.iter().any(|m| &ts[..3] == *m)
        || ts[3] != b' '
        || !number(4, 1, 31)
        || ts[6] != b' '
        || !number(7, 0, 23)
        || ts[9] != b':'
        || !number(10, 0, 59)
        || ts[12] != b':'
        || !number(13, 0, 60)
        || text.get(15) != Some(&b' ')
    {
        return None;
    }
    let mut rest = &text[16..];
    // A first word followed by a space is the hostname (logger omits it on a local socket).
    // (A tag ends in ':' or '[', which no hostname contains.)
    let word = token_end(rest);
    if word > 0
        && rest.get(word) == Some(&b' ')
        && printable(&rest[..word])
        && !rest[..word].iter().any(|&b| b == b':' || b == b'[')
    {
        rest = &rest[word + 1..];
    }
    let tag_len = rest
        .iter()
        .position(|&b| b == b'[' || b == b':' || b == b' ')
        .unwrap_or(rest.len());
    if tag_len == 0 || tag_len > 64 || !printable(&rest[..tag_len]) {
        return None;
    }
    let identifier = &rest[..tag_len];
    rest = &rest[tag_len..];
    let mut pid = None;
    if rest.first() == Some(&b'[') {
        let close = rest.iter().take(130).position(|&b| b == b']')?;
        if close < 2 || !printable(&rest[1..close]) {
            return None;
        }
        pid = Some(&rest[1..close]);
        rest = &rest[close + 1..];
    }
    let rest = rest.strip_prefix(b":")?;
    let message = rest.strip_prefix(b" ").unwrap_or(rest);
    Some((
        Header {
            identifier: Some(identifier),
            pid,
            timestamp: Some(&ts[..15]),
            msgid: None,
            structured_data: None,
        },
        message,
    ))
}

/// RFC 5424's PRINTUSASCII (0x21–0x7E), all that a tag, hostname, PROCID or MSGID may hold: a
/// newline or an escape sequence there would let a client forge what `journalctl` shows.
fn printable(s: &[u8]) -> bool {
    s.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Where the current space-free word ends.
fn token_end(s: &[u8]) -> usize {
    s.iter().position(|&b| b == b' ').unwrap_or(s.len())
}

/// After `1 `: `TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA[ MSG]`.
fn parse_5424(mut text: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let mut field = |max: usize| -> Option<&[u8]> {
        let end = token_end(text);
        if end == 0 || end > max || text.get(end) != Some(&b' ') || !printable(&text[..end]) {
            return None;
        }
        let f = &text[..end];
        text = &text[end + 1..];
        Some(f)
    };
    let timestamp = field(64)?;
    // A timestamp is nil or starts like 2026-11-25T…
    if timestamp != b"-"
        && !(timestamp.len() >= 11
            && timestamp[..4].iter().all(u8::is_ascii_digit)
            && timestamp[4] == b'-')
    {
        return None;
    }
    let _hostname = field(255)?;
    let app = field(48)?;
    let procid = field(128)?;
    let msgid = field(32)?;
    let sd_len = structured_data_len(text)?;
    let sd = &text[..sd_len];
    let rest = &text[sd_len..];
    let message = match rest.strip_prefix(b" ") {
        Some(m) => m.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(m),
        None if rest.is_empty() => rest,
        None => return None,
    };
    Some((
        Header {
            identifier: value(app),
            pid: value(procid),
            timestamp: value(timestamp),
            msgid: value(msgid),
            structured_data: value(sd),
        },
        message,
    ))
}

/// `-` is NILVALUE: the field is absent.
fn value(f: &[u8]) -> Option<&[u8]> {
    (f != b"-").then_some(f)
}

/// Length of the STRUCTURED-DATA at the start of `s`: `-`, or `[…]` elements back to back,
/// where `]` inside a quoted value (and `\"`, `\\`) do not end an element.
fn structured_data_len(s: &[u8]) -> Option<usize> {
    if s.first() == Some(&b'-') {
        return Some(1);
    }
    let mut i = 0;
    while s.get(i) == Some(&b'[') {
        i += 1;
        let mut quoted = false;
        loop {
            match *s.get(i)? {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    (i > 0).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &[u8]) -> Option<(Header<'_>, &[u8])> {
        parse(text)
    }

    #[test]
    fn rfc3164_as_logger_writes_it() {
        let (hd, msg) = h(b"Nov 25 21:57:27 root: hello world").unwrap();
        assert_eq!(hd.identifier, Some(&b"root"[..]));
        assert_eq!(hd.pid, None);
        assert_eq!(hd.timestamp, Some(&b"Nov 25 21:57:27"[..]));
        assert_eq!(msg, b"hello world");

        let (hd, msg) = h(b"Nov  5 01:02:03 mytag[18286]: x").unwrap();
        assert_eq!(
            (hd.identifier, hd.pid, msg),
            (Some(&b"mytag"[..]), Some(&b"18286"[..]), &b"x"[..])
        );

        let (hd, msg) = h(b"Nov 25 21:57:27 myhost sshd[42]: Accepted key").unwrap();
        assert_eq!(
            (hd.identifier, hd.pid, msg),
            (Some(&b"sshd"[..]), Some(&b"42"[..]), &b"Accepted key"[..])
        );
    }

    #[test]
    fn rfc5424() {
        let text = br#"1 2026-11-25T21:57:27.940945+00:00 vm mytag - ID42 [timeQuality tzKnown="1"][zoo@123 tiger="hun]gry\"x"] y"#;
        let (hd, msg) = h(text).unwrap();
        assert_eq!(hd.identifier, Some(&b"mytag"[..]));
        assert_eq!(hd.pid, None);
        assert_eq!(hd.msgid, Some(&b"ID42"[..]));
        assert_eq!(hd.timestamp, Some(&b"2026-11-25T21:57:27.940945+00:00"[..]));
        assert_eq!(
            hd.structured_data,
            Some(&br#"[timeQuality tzKnown="1"][zoo@123 tiger="hun]gry\"x"]"#[..])
        );
        assert_eq!(msg, b"y");
        let (hd, msg) = h(b"1 - - app 7 - - \xEF\xBB\xBFtext").unwrap();
        assert_eq!(
            (hd.identifier, hd.pid, hd.structured_data, msg),
            (Some(&b"app"[..]), Some(&b"7"[..]), None, &b"text"[..])
        );
        let (_, msg) = h(b"1 - - app - - -").unwrap();
        assert_eq!(msg, b"");
    }

    #[test]
    fn owned_headers_give_back_what_went_in() {
        let text = b"1 2026-11-25T21:57:27Z vm mytag 7 ID42 [a b=\"c\"] y";
        let (hd, _) = h(text).unwrap();
        let mut owned = OwnedHeader::default();
        owned.set(&hd);
        assert_eq!(owned.get(), hd);
        let (hd, _) = h(b"Nov 25 21:57:27 root: x").unwrap();
        owned.set(&hd);
        assert_eq!(owned.get(), hd);
        assert_eq!(owned.get().msgid, None);
    }

    #[test]
    fn edge_times_are_headers() {
        for text in [
            &b"Nov  1 00:00:00 tag: t"[..],
            b"Dec 31 23:59:60 tag: t",
            b"Feb 09 05:06:07 tag: t",
        ] {
            assert!(h(text).is_some(), "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn near_misses_are_not_headers() {
        for text in [
            &b"Nov 25 21:57:27"[..],
            b"Nov 25 21:57:27 no colon here",
            b"Foo 25 21:57:27 tag: x",
            b"Nov 25 2x:57:27 tag: x",
            b"Nov 25 21:57:27 : empty tag",
            b"Nov 25 21:57:27 tag[]: empty pid",
            b"Nov 25 21:57:27 tag[12: unclosed",
            b"1 not-a-date host app - - - x",
            b"1 2026-11-25T00:00:00Z host app - - [unclosed x",
            b"1 2026-11-25T00:00:00Z host app - -x",
            b"12 apples",
            b"plain text",
            // Issue 15.4: impossible times, and fields holding more than printable ASCII.
            b"Nov 25 99:99:99 host tag: t",
            b"Nov 25 24:00:00 tag: t",
            b"Nov 32 21:57:27 tag: t",
            b"Nov 00 21:57:27 tag: t",
            b"Nov 25 21:60:27 tag: t",
            b"Nov 25 21:57:27 ta\ng: t",
            b"Nov 25 21:57:27 \x1b[2Jtag: t",
            b"Nov 25 21:57:27 host\x1b x\x1b: t",
            b"Nov 25 21:57:27 tag[1\r2]: t",
            b"Nov 25 21:57:27 t\xc3\xa4g: t",
            b"1 - - ap\x1bp - - - x",
            b"1 - - app 1\x07 - - x",
            b"1 - - app - ID\x7f - x",
        ] {
            assert_eq!(h(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
