//! A slow or frozen journal (DESIGN §3): the daemon stops reading instead of queueing without
//! bound, stays responsive, and loses nothing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const SEC: Duration = Duration::from_secs(1);
const CLIENTS: usize = 50;
/// 50 clients × 1000 lines × 4 KiB = 200 MiB.
const LINES: usize = 1000;
const LINE: usize = 4096;

fn line(c: usize, i: usize) -> Vec<u8> {
    let mut l = format!("c{c:02} {i:04} ").into_bytes();
    l.resize(LINE - 1, b'x');
    l.push(b'\n');
    l
}

fn spawn_writers(socket: &std::path::Path) -> Vec<std::thread::JoinHandle<String>> {
    (0..CLIENTS)
        .map(|c| {
            let path = socket.to_owned();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                for i in 0..LINES {
                    if s.write_all(&line(c, i)).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                reply
            })
        })
        .collect()
}

#[test]
fn frozen_journald_bounds_memory_and_loses_nothing_journald() {
    let journald = Journald::start();
    let id = identifier("frozen");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .env("APP_LIMITS__MAX_CONNECTIONS", "51")
        .start();
    journald.signal(Signal::STOP);
    let writers = spawn_writers(&daemon.socket);
    std::thread::sleep(3 * SEC);

    // Stalled: the runtime still accepts, serves and refuses by the rules.
    let mut probe = UnixStream::connect(&daemon.socket).unwrap();
    probe.write_all(b"probe during the stall\n").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        probe.read(&mut buf).is_err(),
        "the 51st client is accepted, not refused"
    );
    let mut refused = UnixStream::connect(&daemon.socket).unwrap();
    refused.set_read_timeout(Some(5 * SEC)).unwrap();
    let mut reply = String::new();
    let _ = refused.read_to_string(&mut reply);
    assert_eq!(
        reply, "app: too many connections\n",
        "the 52nd is refused, promptly"
    );
    let stalled_peak = peak_rss_kib(daemon.pid());
    assert!(
        stalled_peak < 64 * 1024,
        "peak RSS while stalled: {stalled_peak} KiB"
    );

    journald.signal(Signal::CONT);
    drop(probe);
    let started = Instant::now();
    for w in writers {
        assert_eq!(w.join().unwrap(), "");
    }
    let messages = journald.wait_for_messages(&id, CLIENTS * LINES + 1, Duration::from_secs(300));
    eprintln!(
        "frozen journal: peak RSS {stalled_peak} KiB while stalled, {} KiB overall; drained in {:?}",
        peak_rss_kib(daemon.pid()),
        started.elapsed()
    );
    assert!(peak_rss_kib(daemon.pid()) < 64 * 1024);
    assert_eq!(messages.len(), CLIENTS * LINES + 1);
    let mut next = [0usize; CLIENTS];
    for m in &messages {
        if m == b"probe during the stall" {
            continue;
        }
        let c: usize = std::str::from_utf8(&m[1..3]).unwrap().parse().unwrap();
        let expected = line(c, next[c]);
        assert_eq!(
            m[..],
            expected[..LINE - 1],
            "client {c}: line {} missing or out of order",
            next[c]
        );
        next[c] += 1;
    }
    assert!(next.iter().all(|&n| n == LINES));
}

/// SIGTERM while journald is frozen: the daemon still exits within shutdown_timeout. Run twice:
/// with diagnostics on stderr, and with stderr as the journal (`JOURNAL_STREAM`), where logging
/// itself must not wait on the frozen journald.
fn sigterm_during_a_stall(journal_stream: bool) {
    let journald = Journald::start();
    let id = identifier("stallterm");
    let mut builder = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .env("APP_LIMITS__MAX_CONNECTIONS", "50")
        .env("APP_SERVICE__SHUTDOWN_TIMEOUT", "2s");
    if journal_stream {
        builder = builder.journal_stream();
    }
    let mut daemon = builder.start();
    journald.signal(Signal::STOP);
    let writers = spawn_writers(&daemon.socket);
    std::thread::sleep(2 * SEC);
    // Refusals are logged while the journal is frozen; the accept loop must not block on that.
    for _ in 0..20 {
        let mut extra = UnixStream::connect(&daemon.socket).unwrap();
        extra.set_read_timeout(Some(5 * SEC)).unwrap();
        let mut reply = String::new();
        let _ = extra.read_to_string(&mut reply);
        assert_eq!(reply, "app: too many connections\n");
    }
    let signalled = Instant::now();
    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit(10 * SEC);
    let took = signalled.elapsed();
    journald.signal(Signal::CONT);
    for w in writers {
        let _ = w.join();
    }
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} with shutdown_timeout 2s"
    );
    if !journal_stream {
        assert!(
            daemon.stderr().contains("exiting anyway"),
            "{}",
            daemon.stderr()
        );
    }
}

#[test]
fn sigterm_during_a_stall_exits_within_shutdown_timeout_journald() {
    sigterm_during_a_stall(false);
}

#[test]
fn sigterm_during_a_stall_with_diagnostics_to_the_journal_journald() {
    sigterm_during_a_stall(true);
}

/// journald restarted mid-stream (SIGTERM, as `systemctl restart systemd-journald` does) while
/// its socket is held, as systemd holds it: no line lost, none twice, and the daemon carries on.
#[test]
fn journald_restart_mid_stream_loses_nothing_journald() {
    const TOTAL: usize = 30_000;
    let journald = Journald::start_held();
    let id = identifier("restart");
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();
    let path = daemon.socket.clone();
    let writer = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        for i in 0..TOTAL {
            s.write_all(format!("steady {i}\n").as_bytes()).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(8));
            }
        }
    });
    let mut restarts = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let before = journald.journald_pid();
        journald.signal(Signal::TERM);
        wait_until(10 * SEC, "journald to be restarted", || {
            (journald.journald_pid() != before).then_some(())
        });
        restarts += 1;
    }
    assert!(!writer.is_finished(), "the stream outlasted the restarts");
    writer.join().unwrap();
    let messages = wait_until_or(
        Duration::from_secs(20),
        "all lines",
        &mut || {
            let m = journald.messages(&id);
            (m.len() >= TOTAL).then_some(m)
        },
        || {
            let got: std::collections::HashSet<Vec<u8>> =
                journald.messages(&id).into_iter().collect();
            let missing: Vec<usize> = (0..TOTAL)
                .filter(|i| !got.contains(format!("steady {i}").as_bytes()))
                .take(20)
                .collect();
            format!(": missing {missing:?}; daemon stderr:\n{}", daemon.stderr())
        },
    );
    let expected: Vec<Vec<u8>> = (0..TOTAL)
        .map(|i| format!("steady {i}").into_bytes())
        .collect();
    assert_eq!(messages.len(), TOTAL, "after {restarts} restarts");
    assert!(messages == expected, "every line once, in order");
    assert!(
        daemon.stop().success(),
        "the daemon kept running: {}",
        daemon.stderr()
    );
    // The socket outlived each journald (no outage seen by the daemon), as under systemd.
    assert!(
        !daemon.stderr().contains("holding messages"),
        "{}",
        daemon.stderr()
    );
}
