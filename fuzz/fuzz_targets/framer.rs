//! The line framer: any bytes, cut into reads anywhere, with any limit, with or without a
//! `flush_after` timeout after some reads.
//! Invariants: messages are never empty, never exceed the limit, hold a newline only when
//! octet-counted (RFC 6587); the way the input is cut into reads changes nothing; no byte is
//! invented. With timeouts (issue 13.4/13.8): a line is one line across its pieces — exactly its
//! first piece is not a continuation, so its state (priority, header) carries to every other
//! piece; and no byte of a line is lost, nor a CRLF's `\r` kept. NUL framing (issue 15): a
//! syslog record never holds a NUL, which ends it.
#![no_main]

use app::protocol::{Framer, LineBreak};
use libfuzzer_sys::fuzz_target;

type Out = Vec<(Vec<u8>, LineBreak, bool, bool)>;

fn frame(input: &[u8], max: usize, cuts: &[usize], timeouts: bool) -> Out {
    let mut f = Framer::new(max);
    let mut out = Vec::new();
    let mut emit = |m: app::protocol::Message<'_>| {
        out.push((
            m.bytes.to_vec(),
            m.line_break,
            m.continuation,
            m.octet_counted,
        ));
        true
    };
    let mut pos = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = cut.clamp(pos, input.len());
        let mut chunk = &input[pos..end];
        while !chunk.is_empty() {
            let used = f.feed(chunk, &mut emit);
            chunk = &chunk[used..];
        }
        pos = end;
        if timeouts && pos < input.len() {
            f.flush(LineBreak::Timeout, &mut emit);
        }
    }
    f.flush(LineBreak::Eof, &mut emit);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 1 + (data[0] as usize % 64);
    let step = 1 + data[1] as usize;
    let input = &data[2..];
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();

    let whole = frame(input, max, &[], false);
    let pieces = frame(input, max, &cuts, false);
    assert_eq!(whole, pieces, "chunking changed the result");

    let mut total = 0;
    for (bytes, why, _, octet_counted) in &whole {
        assert!(!bytes.is_empty());
        assert!(bytes.len() <= max);
        assert!(*octet_counted || !bytes.contains(&b'\n'));
        if *why == LineBreak::LineMax {
            assert_eq!(bytes.len(), max, "a line-max piece is full size");
        }
        total += bytes.len();
    }
    assert!(total <= input.len(), "bytes invented");

    // A timeout after every read.
    let timed = frame(input, max, &cuts, true);
    for (bytes, _, _, octet_counted) in &timed {
        assert!(!bytes.is_empty());
        assert!(bytes.len() <= max);
        assert!(*octet_counted || !bytes.contains(&b'\n'));
    }
    // Issue 15.1: a syslog record (a line whose first piece starts with a valid `<PRI>`) ends at
    // a NUL: none of its pieces holds one, with or without timeouts.
    for out in [&whole, &timed] {
        let mut record = false;
        for (bytes, _, continuation, octet_counted) in out {
            if !continuation {
                record = !octet_counted && app::protocol::parse_prefix(bytes).0.is_some();
            }
            assert!(!(record && bytes.contains(&0)), "a record holds a NUL: {bytes:?}");
        }
    }
    // Without octet counting (no digit can start one), the pieces are exactly the lines: each
    // line's bytes (its CRLF or LF, and a `\r` before EOF, not included), its first piece alone
    // not a continuation.
    if !input.iter().any(u8::is_ascii_digit) {
        let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let lines: Vec<&[u8]> = lines
            .drain(..)
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect();
        let firsts = timed.iter().filter(|m| !m.2).count();
        assert_eq!(firsts, lines.len(), "one first piece per line");
        let got: Vec<u8> = timed.iter().flat_map(|m| m.0.iter().copied()).collect();
        assert_eq!(got, lines.concat(), "bytes lost or changed by timeouts");
    }
});
