//! Unit tests of `protocol::framer`.

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
                // A syslog client's connection: every line on it ends at a NUL.
                msg(b"def", LineBreak::Newline, false),
            ]
        );
    }
}

#[test]
fn a_record_with_newlines_does_not_run_into_the_next() {
    // Python's SysLogHandler with a traceback: one NUL ends the whole record.
    for out in frame_all_ways(100, b"<11>boom\nTraceback\nZeroDiv\0<12>after\0", &[]) {
        assert_eq!(
            out,
            [
                msg(b"<11>boom", LineBreak::Newline, false),
                msg(b"Traceback", LineBreak::Newline, false),
                msg(b"ZeroDiv", LineBreak::Newline, false),
                msg(b"<12>after", LineBreak::Newline, false),
            ]
        );
    }
    // Perl's Sys::Syslog: `\n\0` after every record, newlines inside one.
    for out in frame_all_ways(100, b"<11>one\ntwo\n\0<12>next\n\0", &[]) {
        assert_eq!(
            out,
            [
                msg(b"<11>one", LineBreak::Newline, false),
                msg(b"two", LineBreak::Newline, false),
                msg(b"<12>next", LineBreak::Newline, false),
            ]
        );
    }
    // A connection that never sent a record keeps NUL bytes in its lines.
    for out in frame_all_ways(100, b"a\0b\n\0c\n", &[]) {
        assert_eq!(
            out,
            [
                msg(b"a\0b", LineBreak::Newline, false),
                msg(b"\0c", LineBreak::Newline, false),
            ]
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

/// Found by the fuzzer: a record whose CRLF falls exactly at the limit made the connection a
/// syslog client only when it came in one read.
#[test]
fn a_crlf_record_at_the_limit_makes_a_syslog_client_in_any_chunking() {
    let mut input = b"<6>HHHHHHH|".to_vec();
    input.extend_from_slice(&[b'\r'; 41]);
    input.extend_from_slice(b"\n<$\x08\xe9\x02|\x01\n\0\x8a<G");
    let all = frame_all_ways(3, &input, &[]);
    for out in &all {
        assert_eq!(out, &all[0]);
        assert_eq!(out.last().unwrap(), &msg(b"\x8a<G", LineBreak::Eof, false));
    }
}

/// Issue 18: a framer taken apart between two reads (a handover to the next process) and put
/// together again cuts the stream exactly as one framer would, wherever the cut falls: plain
/// lines, CRLF, long lines cut at the limit, a timeout piece, NUL-ended syslog records,
/// octet-counted frames.
#[test]
fn a_framer_taken_apart_and_put_together_goes_on_exactly() {
    let long = "x".repeat(70);
    let inputs: Vec<Vec<u8>> = vec![
        format!("a\r\nbb\n{long}\nc\n").into_bytes(),
        b"<13>Nov 25 19:28:59 host tag: one\0<14>two\n\0three\n".to_vec(),
        b"29 <13>1 - - - - - - octet\nline\n5 <13>x\n".to_vec(),
        format!("<3>{long}{long}\nafter\n").into_bytes(),
    ];
    // With `timeout`, the client also went quiet at the cut (a `timeout` piece, the line open).
    let run = |input: &[u8], cut: usize, timeout: bool, apart: bool| {
        let mut out = Out::new();
        let mut emit = |m: Message<'_>| {
            out.push((m.bytes.to_vec(), m.line_break, m.continuation));
            true
        };
        let mut f = Framer::new(32);
        f.feed(&input[..cut], &mut emit);
        if timeout {
            f.flush(LineBreak::Timeout, &mut emit);
        }
        if apart {
            let (state, pending) = f.into_parts();
            f = Framer::from_parts(32, state, pending);
        }
        f.feed(&input[cut..], &mut emit);
        f.flush(LineBreak::Eof, &mut emit);
        out
    };
    for input in &inputs {
        for cut in 0..=input.len() {
            for timeout in [false, true] {
                assert_eq!(
                    run(input, cut, timeout, true),
                    run(input, cut, timeout, false),
                    "cut at {cut} (timeout: {timeout}) of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }
}
