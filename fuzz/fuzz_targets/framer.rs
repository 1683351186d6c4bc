//! The line framer: any bytes, cut into reads anywhere, with any limit.
//! Invariants: messages are never empty, never exceed the limit, hold a newline only when
//! octet-counted (RFC 6587); the way the input is cut into reads changes nothing; no byte is
//! invented.
#![no_main]

use app::protocol::{Framer, LineBreak};
use libfuzzer_sys::fuzz_target;

fn frame(input: &[u8], max: usize, cuts: &[usize]) -> Vec<(Vec<u8>, LineBreak, bool, bool)> {
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

    let whole = frame(input, max, &[]);
    let pieces = frame(input, max, &cuts);
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
});
