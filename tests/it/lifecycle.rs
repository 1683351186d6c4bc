//! Service lifecycle (DESIGN §4): sd_notify, signals, reload, watchdog, idle exit, Accept=yes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn ready_only_once_listening_with_status() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new().stdout_sink().notify(&notify).start();
    let first = notify.recv(10 * SEC).expect("a notification");
    assert_eq!(first, "READY=1\nSTATUS=0 clients, 0 messages, 0 suppressed");
    UnixStream::connect(&daemon.socket).expect("READY=1 means the socket answers");
    assert!(daemon.stop().success());
    let rest = notify.until("STOPPING=1", 5 * SEC);
    assert!(
        rest.last()
            .unwrap()
            .starts_with("STOPPING=1\nSTATUS=stopping: "),
        "{rest:?}"
    );
}

#[test]
fn abstract_notify_socket_works() {
    let notify = NotifySocket::new_abstract();
    let mut daemon = DaemonBuilder::new().stdout_sink().notify(&notify).start();
    assert!(
        notify
            .recv(10 * SEC)
            .expect("READY over @socket")
            .starts_with("READY=1")
    );
    assert!(daemon.stop().success());
    assert!(
        !daemon.stderr().contains("sd_notify"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn no_notify_socket_is_silent() {
    let mut daemon = DaemonBuilder::new().stdout_sink().start();
    send(&daemon.socket, b"x\n");
    assert!(daemon.stop().success());
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{stderr}"
    );
}

#[test]
fn broken_config_sends_no_ready_and_exits_2() {
    let notify = NotifySocket::new();
    let out = Command::new(APP)
        .args(["serve", "--socket", "/nonexistent/never.sock"])
        .env_clear()
        .env("NOTIFY_SOCKET", &notify.address)
        .env("APP_LIMITS__MAX_CONNECTIONS", "zero")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.max_connections: expected an integer"),
        "{stderr}"
    );
    let msg = notify.recv(SEC).expect("a STATUS= on failure");
    assert!(!msg.contains("READY=1"), "{msg}");
    assert!(
        msg.starts_with("STATUS=failed to start: environment: limits.max_connections"),
        "{msg}"
    );
    assert!(msg.ends_with("\nERRNO=22"), "{msg}");
    assert_eq!(
        notify.recv(Duration::from_millis(200)),
        None,
        "nothing else, READY least of all"
    );
}

#[test]
fn a_fatal_start_error_is_reported_and_exits_1() {
    let notify = NotifySocket::new();
    let out = Command::new(APP)
        .args([
            "serve",
            "--sink",
            "stdout",
            "--socket",
            "/nonexistent/dir/app.sock",
        ])
        .env_clear()
        .env("NOTIFY_SOCKET", &notify.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("app: /nonexistent/dir/app.sock: cannot bind: "),
        "{stderr}"
    );
    let msg = notify.recv(SEC).expect("STATUS=");
    assert!(
        msg.starts_with("STATUS=failed to start: /nonexistent/dir/app.sock: cannot bind"),
        "{msg}"
    );
}

#[test]
fn status_follows_clients_and_messages() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new().stdout_sink().notify(&notify).start();
    notify.until("READY=1", 10 * SEC);
    let mut a = UnixStream::connect(&daemon.socket).unwrap();
    let mut b = UnixStream::connect(&daemon.socket).unwrap();
    a.write_all(b"1\n2\n3\n").unwrap();
    b.write_all(b"4\n").unwrap();
    notify.until("STATUS=2 clients, 4 messages, 0 suppressed", 5 * SEC);
    drop(a);
    notify.until("STATUS=1 client, 4 messages, 0 suppressed", 5 * SEC);
    // While the figures change all the time, STATUS= goes out about once a second, no faster.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                b.write_all(b"more\n").unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let seen = notify.collect(Duration::from_millis(3500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let statuses: Vec<&(Instant, String)> = seen
        .iter()
        .filter(|(_, m)| m.starts_with("STATUS="))
        .collect();
    assert!((2..=5).contains(&statuses.len()), "{seen:?}");
    for pair in statuses.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(900),
            "STATUS= {gap:?} apart: {seen:?}"
        );
    }
    assert!(daemon.stop().success());
}

#[test]
fn watchdog_pings_at_half_the_interval_and_stop_when_the_daemon_stalls() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .notify(&notify)
        .env("WATCHDOG_USEC", "400000")
        .start();
    notify.until("READY=1", 10 * SEC);
    let pings = |seen: &[(Instant, String)]| seen.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    let seen = notify.collect(2 * SEC);
    // Every 200 ms for 2 s: about 10.
    assert!((7..=12).contains(&pings(&seen)), "{seen:?}");

    // A stalled daemon sends nothing; pings resume when it runs again.
    daemon.signal(Signal::STOP);
    std::thread::sleep(Duration::from_millis(100));
    while notify.recv(Duration::from_millis(50)).is_some() {} // what was already queued
    let stalled = notify.collect(SEC);
    daemon.signal(Signal::CONT);
    assert_eq!(pings(&stalled), 0, "{stalled:?}");
    let resumed = notify.collect(SEC);
    assert!(pings(&resumed) >= 3, "{resumed:?}");
    assert!(daemon.stop().success());
}

#[test]
fn watchdog_for_another_pid_is_ignored() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .notify(&notify)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .start();
    notify.until("READY=1", 10 * SEC);
    let seen = notify.collect(SEC);
    assert!(seen.iter().all(|(_, m)| m != "WATCHDOG=1"), "{seen:?}");
    assert!(daemon.stop().success());
}

/// 50 clients stream; SIGTERM (or SIGINT) arrives mid-stream. Every line a client managed to
/// write is in the journal; a client that stays connected is told why it is cut off.
fn stop_mid_stream(signal: Signal, name: &str) {
    const CLIENTS: usize = 50;
    let journald = Journald::start();
    let id = identifier(name);
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .notify(&notify)
        .env("APP_SERVICE__SHUTDOWN_TIMEOUT", "3s")
        // Tens of thousands of lines from one uid: not a rate-limit test.
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();
    notify.until("READY=1", 10 * SEC);

    // One client that connects and never sends anything nor closes.
    let mut lingering = UnixStream::connect(&daemon.socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, started, path) = (stop.clone(), started.clone(), daemon.socket.clone());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                started.wait();
                let mut written = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(format!("c{c} line {written}\n").as_bytes())
                        .is_err()
                    {
                        break;
                    }
                    written += 1;
                }
                // The last write is done: half-close, as a well-behaved client does.
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                (written, reply)
            })
        })
        .collect();
    started.wait();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    daemon.signal(signal);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(usize, String)> = clients.into_iter().map(|t| t.join().unwrap()).collect();

    let status = daemon.wait_exit(10 * SEC);
    let took = signalled.elapsed();
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let msgs = notify.collect(Duration::from_millis(100));
    assert!(
        msgs.iter().any(|(_, m)| m.starts_with("STOPPING=1")),
        "{msgs:?}"
    );
    // Past shutdown_timeout only while journald still takes what was read, and then with
    // systemd told (EXTEND_TIMEOUT_USEC=).
    assert!(
        took < Duration::from_secs(3)
            || (took < Duration::from_secs(8)
                && msgs
                    .iter()
                    .any(|(_, m)| m.starts_with("EXTEND_TIMEOUT_USEC="))),
        "exit took {took:?}, shutdown_timeout is 3s: {msgs:?}"
    );

    let mut reply = String::new();
    lingering.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "app: shutting down\n");

    let total: usize = results.iter().map(|r| r.0).sum();
    assert!(
        results.iter().all(|r| r.0 > 0),
        "every client was streaming"
    );
    assert!(
        results.iter().all(|r| r.1.is_empty()),
        "clients that half-closed were fully read: {:?}",
        results
            .iter()
            .filter(|r| !r.1.is_empty())
            .collect::<Vec<_>>()
    );
    let entries = journald.wait_for(&id, total);
    assert_eq!(
        entries.len(),
        total,
        "every line written is in the journal, once"
    );
    let mut per_client = vec![0usize; CLIENTS];
    for e in &entries {
        let msg = e.get("MESSAGE");
        let c: usize = msg[1..msg.find(' ').unwrap()].parse().unwrap();
        assert_eq!(
            msg,
            format!("c{c} line {}", per_client[c]),
            "in order, nothing missing"
        );
        per_client[c] += 1;
    }
    assert_eq!(per_client, results.iter().map(|r| r.0).collect::<Vec<_>>());
}

#[test]
fn sigterm_mid_stream_loses_no_line_journald() {
    stop_mid_stream(Signal::TERM, "term");
}

#[test]
fn sigint_mid_stream_loses_no_line_journald() {
    stop_mid_stream(Signal::INT, "int");
}

#[test]
fn reload_applies_live_settings_and_survives_a_broken_file() {
    let notify = NotifySocket::new();
    let config = |identifier: &str, priority: u8, max_line: usize, level: &str, path: &str| {
        format!(
            "[socket]\npath = \"{path}\"\n[journal]\nidentifier = \"{identifier}\"\n\
             default_priority = {priority}\n[limits]\nmax_line_bytes = {max_line}\n\
             [service]\nlog_level = \"{level}\"\n"
        )
    };
    let builder = DaemonBuilder::new()
        .stdout_sink()
        .notify(&notify)
        .socket_from_config();
    let socket = builder.socket_path().display().to_string();
    let mut daemon = builder
        .config(&config("before", 6, 1000, "info", &socket))
        .start();
    notify.until("READY=1", 10 * SEC);
    let config_path = daemon.socket.with_file_name("app.toml");

    let mut existing = UnixStream::connect(&daemon.socket).unwrap();
    existing.write_all(b"old settings line\n").unwrap();
    wait_until(5 * SEC, "the first line", || {
        daemon.stdout().contains("old settings line").then_some(())
    });
    assert!(
        daemon.stdout().contains("before[") && daemon.stdout().contains("<6> old settings line")
    );

    std::fs::write(&config_path, config("after", 4, 10, "debug", "/after.sock")).unwrap();
    daemon.signal(Signal::HUP);
    let msgs = notify.until("READY=1", 5 * SEC);
    let reloading = msgs
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .expect("RELOADING=1");
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);

    existing.write_all(b"existing 0123456789\n").unwrap();
    send(&daemon.socket, b"new conn 0123456789\n");
    wait_until(5 * SEC, "lines after reload", || {
        let out = daemon.stdout();
        (out.contains("new conn 0") && out.contains("existing 0")).then_some(())
    });
    let out = daemon.stdout();
    // Identifier and default priority changed; max_line_bytes = 10 splits both lines.
    for line in [
        "<4> existing 0 [line-max]",
        "<4> 123456789",
        "<4> new conn 0 [line-max]",
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains("after[") && l.ends_with(line)),
            "{line:?} in\n{out}"
        );
    }
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("socket.path changed: it takes effect when the service restarts"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DEBUG connection "),
        "log level debug now: {stderr}"
    );

    // A broken file: the running settings stay, the reason is logged, READY=1 still follows.
    std::fs::write(&config_path, "[limits\n").unwrap();
    daemon.signal(Signal::HUP);
    let msgs = notify.until("READY=1", 5 * SEC);
    assert!(
        msgs.iter().any(|m| m.starts_with("STATUS=reload failed: ")),
        "{msgs:?}"
    );
    assert!(
        daemon
            .stderr()
            .contains("reload failed, keeping the running configuration")
    );
    send(&daemon.socket, b"still after\n");
    wait_until(5 * SEC, "a line after the failed reload", || {
        daemon
            .stdout()
            .lines()
            .any(|l| l.contains("after[") && l.ends_with("<4> still afte [line-max]"))
            .then_some(())
    });
    drop(existing);
    assert!(daemon.stop().success());
}

#[test]
fn idle_exit_leaves_the_socket_for_the_next_start_journald() {
    let journald = Journald::start();
    let id = identifier("idle");
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_SERVICE__IDLE_TIMEOUT", "2s")
        .activated(&[])
        .start();
    // The first client starts it; while a client is connected, it never exits.
    let mut client = UnixStream::connect(&daemon.socket).unwrap();
    client.write_all(b"first\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon_running(&mut daemon),
        "exited with a client connected"
    );
    drop(client);
    let closed = Instant::now();
    let status = daemon.wait_exit(10 * SEC);
    let idle = closed.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_millis(3500),
        "{idle:?}"
    );
    assert!(daemon.socket.exists(), "the inherited socket stays");

    // The next start on the same socket path serves the next client.
    let mut next = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .activated(&[])
        .at(&daemon.socket)
        .start();
    send(&next.socket, b"second\n");
    let entries = journald.wait_for(&id, 2);
    let msgs: Vec<String> = entries.iter().map(|e| e.get("MESSAGE")).collect();
    assert_eq!(msgs, ["first", "second"]);
    assert!(next.stop().success());
}

#[test]
fn idle_timeout_zero_never_exits() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_SERVICE__IDLE_TIMEOUT", "0s")
        .activated(&[])
        .start();
    send(&daemon.socket, b"x\n");
    std::thread::sleep(Duration::from_secs(3));
    assert!(daemon_running(&mut daemon));
    assert!(daemon.stop().success());
}

fn daemon_running(daemon: &mut Daemon) -> bool {
    let pid = daemon.pid();
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn accept_yes_serves_one_connection_and_exits_journald() {
    let journald = Journald::start();
    let id = identifier("accept");
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let mut activator = journald
        .command("systemd-socket-activate")
        .args(["-a", "-l"])
        .arg(&socket)
        .arg(format!("-EAPP_JOURNAL__IDENTIFIER={id}"))
        .args([APP, "serve"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(10 * SEC, "the socket", || socket.exists().then_some(()));
    assert_eq!(send(&socket, b"one\ntwo\n"), "");
    assert_eq!(send(&socket, b"three\n"), "");
    let entries = journald.wait_for(&id, 3);
    let msgs: Vec<String> = entries.iter().map(|e| e.get("MESSAGE")).collect();
    assert_eq!(msgs, ["one", "two", "three"]);
    for e in &entries {
        assert_eq!(e.get("CLIENT_PID"), std::process::id().to_string());
        assert_eq!(e.get("CLIENT_UID"), "0");
    }
    // Each connection had its own instance, which exited 0 when its client closed.
    let _ = activator.kill();
    let mut log = String::new();
    activator
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = activator.wait();
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("died with code"))
        .collect();
    assert_eq!(exits.len(), 2, "{log}");
    assert!(
        exits.iter().all(|l| l.ends_with("died with code 0")),
        "{log}"
    );
}

#[test]
fn named_sockets_are_logged_and_tagged_journald() {
    let journald = Journald::start();
    let id = identifier("named");
    let tcp_addr = free_tcp_addr();
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .activated(&["-l", &tcp_addr, "--fdname=local:network"])
        .start();
    send(&daemon.socket, b"via local\n");
    let mut tcp = std::net::TcpStream::connect(&tcp_addr).unwrap();
    tcp.write_all(b"via network\n").unwrap();
    drop(tcp);
    let entries = journald.wait_for(&id, 2);
    let socket_of = |m: &str| {
        entries
            .iter()
            .find(|e| e.get("MESSAGE") == m)
            .unwrap()
            .get("SOCKET")
    };
    assert_eq!(socket_of("via local"), "local");
    assert_eq!(socket_of("via network"), "network");
    assert!(daemon.stop().success());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("serving fd 3 (unix ") && stderr.contains(", name local)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("serving fd 4 (tcp 127.0.0.1:") && stderr.contains(", name network)"),
        "{stderr}"
    );
}

/// systemd may send SIGTERM at any moment, also while the daemon is still starting: the signal
/// waits for its handler instead of killing the process (CI once saw exit "-1" here).
#[test]
fn sigterm_during_startup_still_stops_cleanly() {
    for _ in 0..50 {
        let dir = temp_dir();
        let socket = dir.path().join("app.sock");
        let mut child = Command::new(APP)
            .die_with_test()
            .args(["serve", "--sink", "stdout", "--socket"])
            .arg(&socket)
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // As early as we can tell it is alive: the socket file appears before the runtime starts,
        // so poll for it without sleeping, to land in that window.
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < 5 * SEC, "no socket");
            std::hint::spin_loop();
        }
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{status}");
    }
}
