//! Soak: 5 million lines from 64 clients, end to end into a real journald, each exactly once.
//!
//! Ignored in the ordinary run (it takes a minute or more and wants a release build); `.ci/run`
//! runs it explicitly: `cargo test --release --test it -- --ignored --nocapture soak`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::*;

const CLIENTS: usize = 64;
const LINES: usize = 5_000_000 / CLIENTS; // 78,125 each

#[test]
#[ignore = "soak: minutes long; .ci/run runs it with --release --ignored"]
fn soak_five_million_lines_from_64_clients_journald() {
    let journald = Journald::start();
    let id = identifier("soak");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();

    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (barrier, path) = (barrier.clone(), daemon.socket.clone());
            std::thread::spawn(move || {
                let s = UnixStream::connect(&path).unwrap();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, s);
                barrier.wait();
                for i in 0..LINES {
                    // ~100-byte lines, as a typical log line.
                    writeln!(out, "soak c{c:02} l{i:06} {:.<80}", "").unwrap();
                }
                writeln!(out, "soak c{c:02} done").unwrap();
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for w in writers {
        w.join().unwrap();
    }
    let written = started.elapsed();

    // Cheap to ask for: the 64 "done" lines (a field match uses journald's index).
    let dir = journald.root().join("run/log/journal");
    let done_matches: Vec<String> = (0..CLIENTS)
        .map(|c| format!("MESSAGE=soak c{c:02} done"))
        .collect();
    wait_until(Duration::from_secs(600), "every client's last line", || {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(&dir)
            .args(["-o", "cat", "-q", "--no-pager"])
            .args(&done_matches)
            .output()
            .unwrap();
        (out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            == CLIENTS)
            .then_some(())
    });
    let end_to_end = started.elapsed();

    // Every line, once, in order per client: streamed, not held in memory.
    let mut reader = Command::new("journalctl")
        .arg("-D")
        .arg(&dir)
        .args(["-o", "cat", "-q", "--no-pager", "--all"])
        .arg(format!("SYSLOG_IDENTIFIER={id}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut next = [0usize; CLIENTS];
    let mut done = [false; CLIENTS];
    let padding = format!("{:.<80}", "");
    for line in BufReader::new(reader.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let rest = line
            .strip_prefix("soak c")
            .unwrap_or_else(|| panic!("stray entry {line:?}"));
        let c: usize = rest[..2].parse().unwrap();
        if &rest[2..] == " done" {
            assert_eq!(next[c], LINES, "client {c}: done after {} lines", next[c]);
            done[c] = true;
            continue;
        }
        let expected = format!(" l{:06} {padding}", next[c]);
        assert_eq!(
            &rest[2..],
            expected,
            "client {c}: line {} missing, doubled or out of order",
            next[c]
        );
        next[c] += 1;
    }
    assert!(reader.wait().unwrap().success());
    assert!(done.iter().all(|&d| d), "every client's last line");
    let total = CLIENTS * LINES;
    eprintln!(
        "soak: {total} lines from {CLIENTS} clients: written in {:.1} s, all in the journal after \
         {:.1} s = {:.0} lines/s end to end; daemon peak RSS {} KiB",
        written.as_secs_f64(),
        end_to_end.as_secs_f64(),
        total as f64 / end_to_end.as_secs_f64(),
        peak_rss_kib(daemon.pid())
    );
}
