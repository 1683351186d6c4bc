//! The wire protocol (DESIGN §2) as the journal records it.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};

use crate::support::*;

#[test]
fn priorities_text_and_line_endings_journald() {
    let journald = Journald::start();
    let id = identifier("proto");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();

    let mut input = Vec::new();
    for n in 0..=7 {
        writeln!(input, "<{n}>prio {n}").unwrap();
    }
    input.extend_from_slice(b"<13>full pri\n<999>x\ncrlf line\r\n\n\r\n\nafter empties\n");
    send(&daemon.socket, &input);
    send(&daemon.socket, b"first\nlast without newline");

    let entries = journald.wait_for(&id, 14);
    let by_msg: HashMap<String, &Entry> = entries.iter().map(|e| (e.get("MESSAGE"), e)).collect();
    assert_eq!(entries.len(), 14, "{:?}", by_msg.keys());
    for n in 0..=7 {
        let e = by_msg[&format!("prio {n}")];
        assert_eq!(e.get("PRIORITY"), n.to_string());
        assert_eq!(e.str("SYSLOG_FACILITY"), None);
    }
    let full = by_msg["full pri"];
    assert_eq!(full.get("PRIORITY"), "5");
    assert_eq!(full.get("SYSLOG_FACILITY"), "1");
    assert_eq!(by_msg["<999>x"].get("PRIORITY"), "6");
    assert!(by_msg.contains_key("crlf line"), "the CR is dropped");
    assert!(by_msg.contains_key("after empties"));
    assert_eq!(by_msg["first"].str("LINE_BREAK"), None);
    assert_eq!(by_msg["last without newline"].get("LINE_BREAK"), "eof");
    // Order within a connection is kept.
    let order: Vec<String> = entries.iter().map(|e| e.get("MESSAGE")).collect();
    let pos = |m: &str| order.iter().position(|o| o == m).unwrap();
    assert!(pos("prio 0") < pos("prio 7") && pos("prio 7") < pos("after empties"));
}

#[test]
fn bytes_are_preserved_exactly_journald() {
    let journald = Journald::start();
    let id = identifier("bytes");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();
    let payloads: [&[u8]; 4] = [
        b"invalid \xff\xfe utf-8",
        b"nul \x00 inside \x00",
        b"\x1b[31mescape\x1b[0m and \xc3\xa9",
        b"tab\there \x7f del",
    ];
    for p in payloads {
        let mut line = p.to_vec();
        line.push(b'\n');
        send(&daemon.socket, &line);
    }
    let entries = journald.wait_for(&id, payloads.len());
    let got: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| e.bytes("MESSAGE").unwrap())
        .collect();
    for p in payloads {
        assert!(
            got.contains(&p.to_vec()),
            "{:?} not in {got:?}",
            String::from_utf8_lossy(p)
        );
    }
    assert_eq!(got.len(), payloads.len());
}

#[test]
fn long_lines_are_split_at_line_max_journald() {
    let journald = Journald::start();
    let id = identifier("split");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();
    let line: Vec<u8> = (0..200 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = line.clone();
    input.push(b'\n');
    send(&daemon.socket, &input);

    // 200 KiB = 4 × 48 KiB + 8 KiB.
    let entries = journald.wait_for(&id, 5);
    assert_eq!(entries.len(), 5);
    let pieces: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| e.bytes("MESSAGE").unwrap())
        .collect();
    let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
    assert_eq!(sizes, [49152, 49152, 49152, 49152, 8192]);
    for e in &entries[..4] {
        assert_eq!(e.get("LINE_BREAK"), "line-max");
    }
    assert_eq!(
        entries[4].str("LINE_BREAK"),
        None,
        "the last piece ended with its newline"
    );
    assert_eq!(pieces.concat(), line);
}

#[test]
fn one_mib_entry_goes_through_a_memfd_journald() {
    let journald = Journald::start();
    let id = identifier("memfd");
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .config("[limits]\nmax_line_bytes = 2000000\n")
        .arg("--log-level")
        .arg("debug")
        .start();
    let line: Vec<u8> = (0..1024 * 1024u32).map(|i| b'A' + (i % 23) as u8).collect();
    let mut input = line.clone();
    input.push(b'\n');
    send(&daemon.socket, &input);
    let entries = journald.wait_for(&id, 1);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].bytes("MESSAGE").unwrap(), line);
    assert_eq!(entries[0].str("LINE_BREAK"), None);
    assert!(daemon.stop().success());
    assert!(
        daemon.stderr().contains("sent through a memfd"),
        "the entry did not take the memfd path: {}",
        daemon.stderr()
    );
}

#[test]
fn five_hundred_clients_interleaved_journald() {
    const CLIENTS: usize = 500;
    const LINES: usize = 200;
    let journald = Journald::start();
    let id = identifier("many");
    // 100,000 lines from one uid: the per-uid rate limit is not what this test is about.
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let barrier = barrier.clone();
            let path = daemon.socket.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    barrier.wait();
                    for l in 0..LINES {
                        // One write per line, all clients at once: the lines interleave.
                        s.write_all(format!("c{c} l{l}\n").as_bytes()).unwrap();
                    }
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let entries = journald.wait_for(&id, CLIENTS * LINES);
    assert_eq!(entries.len(), CLIENTS * LINES);
    // Per connection: each client's lines exactly once, in the order sent.
    let mut next: HashMap<String, (usize, usize)> = HashMap::new();
    for e in &entries {
        let msg = e.get("MESSAGE");
        let (c, l) = msg.split_once(' ').unwrap();
        let c: usize = c[1..].parse().unwrap();
        let l: usize = l[1..].parse().unwrap();
        let slot = next.entry(e.get("CLIENT_CONNECTION")).or_insert((c, 0));
        assert_eq!(slot.0, c, "one connection, one client");
        assert_eq!(slot.1, l, "client {c}: line {l} out of order");
        slot.1 += 1;
    }
    assert_eq!(next.len(), CLIENTS);
    assert!(next.values().all(|&(_, n)| n == LINES));
}

/// A line's state belongs to the whole line (issue 13.4): the tail after a `flush_after` pause
/// and every `line-max` piece keep the first piece's syslog tag, pid and priority.
#[test]
fn pieces_of_a_line_keep_its_tag_and_priority_journald() {
    let journald = Journald::start();
    let id = identifier("pieces");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .config("[protocol]\nflush_after = \"200ms\"\n")
        .start();
    let mut c = UnixStream::connect(&daemon.socket).unwrap();
    c.write_all(b"<3>Nov 25 21:57:27 mytag[42]: first part")
        .unwrap();
    // Well past flush_after: the first part is logged on its own.
    std::thread::sleep(std::time::Duration::from_millis(900));
    c.write_all(b" second part\n").unwrap();
    let mut long = b"<13>Nov 25 21:57:27 bigtag[7]: ".to_vec();
    long.extend((0..200 * 1024u32).map(|i| b'a' + (i % 26) as u8));
    long.push(b'\n');
    c.write_all(&long).unwrap();
    drop(c);

    let tail = journald.wait_for("mytag", 2);
    let summary: Vec<_> = tail
        .iter()
        .map(|e| {
            (
                e.get("MESSAGE"),
                e.get("PRIORITY"),
                e.get("SYSLOG_PID"),
                e.str("LINE_BREAK"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "first part".into(),
                "3".into(),
                "42".into(),
                Some("timeout".into())
            ),
            (" second part".into(), "3".into(), "42".into(), None),
        ]
    );
    let pieces = journald.wait_for("bigtag", 5);
    assert_eq!(pieces.len(), 5, "every piece is tagged");
    for e in &pieces {
        assert_eq!(e.get("SYSLOG_PID"), "7");
        assert_eq!(e.get("PRIORITY"), "5");
        assert_eq!(e.get("SYSLOG_FACILITY"), "1");
    }
    assert!(
        journald.entries(&id).is_empty(),
        "no piece fell back to {id}"
    );
}
