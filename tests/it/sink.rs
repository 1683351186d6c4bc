//! The sink, the notify path and the supervisor in hard corners: descriptor exhaustion, a stalled
//! journald, a non-blocking stdout, stop with pending reports, `STATUS=` hygiene, `app reload`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::*;

const SEC: Duration = Duration::from_secs(1);

/// Lowers the daemon's open-file limit (soft and hard) to `n`, after its start.
fn limit_nofile(pid: u32, n: u32) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit");
}

/// Issue 12.2: with the descriptors exhausted by clients before the first message, connected
/// clients are still served, the notify path still works, a 1 MiB line arrives whole, clients
/// beyond are told why, a journald restart loses nothing, and a reload fails cleanly.
#[test]
fn descriptor_exhaustion_before_the_first_message_keeps_serving_journald() {
    const CLIENTS: usize = 100;
    let journald = Journald::start_held();
    let id = identifier("exhaust");
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .notify(&notify)
        .env("WATCHDOG_USEC", "1000000")
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        // The 1 MiB line is one entry (through a memfd), not pieces of `line-max`.
        .env("APP_LIMITS__MAX_LINE_BYTES", "2000000")
        .start();
    notify.until("READY=1", 10 * SEC);
    limit_nofile(daemon.pid(), 64);

    // The first client, surely accepted, will send a 1 MiB line once the others hold every
    // descriptor.
    let mut big = UnixStream::connect(&daemon.socket).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let burst = Instant::now();
    let mut clients: Vec<UnixStream> = (0..CLIENTS)
        .map(|i| {
            let mut s = UnixStream::connect(&daemon.socket).expect("connect (backlog)");
            // A client refused at once (reserve descriptor) may find the daemon's end closed
            // already (EPIPE): its reply, read below, says why.
            let _ = s.write_all(format!("client {i}\n").as_bytes());
            s
        })
        .collect();
    let mut line = vec![b'b'; 1 << 20];
    line[..4].copy_from_slice(b"big ");
    line.push(b'\n');
    big.write_all(&line).unwrap();
    let watched = notify.collect(SEC.saturating_sub(burst.elapsed()));

    let mut refused = 0;
    let mut connected = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_nonblocking(true).unwrap();
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        if reply == "app: too many open files\n" {
            refused += 1;
        } else {
            assert_eq!(reply, "", "client {i}");
            connected.push(i);
        }
    }
    let logged = journald.messages(&id);
    let missing: Vec<usize> = connected
        .iter()
        .copied()
        .filter(|i| !logged.contains(&format!("client {i}").into_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} connected clients' lines not in the journal 1 s after the burst \
         ({refused} refused): {missing:?}\n{}",
        missing.len(),
        connected.len(),
        daemon.stderr()
    );
    assert!(refused > 0, "the limit was never reached");
    assert!(connected.len() > 10, "{} connected", connected.len());
    let pings = watched.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(pings >= 1, "no WATCHDOG=1 while exhausted: {watched:?}");

    // A reload needs to open the configuration: it fails, cleanly, and says so.
    daemon.signal(Signal::HUP);
    let msgs = notify.until("READY=1", 5 * SEC);
    assert!(
        msgs.iter().any(|m| m.starts_with("STATUS=reload failed")),
        "{msgs:?}"
    );
    // The figures change (one more message): a new STATUS= follows.
    clients[connected[0]].set_nonblocking(false).unwrap();
    clients[connected[0]].write_all(b"status\n").unwrap();
    let watched = notify.collect(2 * SEC);
    assert!(
        watched.iter().filter(|(_, m)| m == "WATCHDOG=1").count() >= 2,
        "{watched:?}"
    );
    assert!(
        watched.iter().any(|(_, m)| m.starts_with("STATUS=")),
        "{watched:?}"
    );

    // journald restarts (systemd holds its socket): the next lines arrive all the same.
    let before = journald.journald_pid();
    journald.signal(Signal::TERM);
    for &i in &connected {
        clients[i].set_nonblocking(false).unwrap();
        clients[i]
            .write_all(format!("again {i}\n").as_bytes())
            .unwrap();
    }
    wait_until(10 * SEC, "journald to be restarted", || {
        (journald.journald_pid() != before).then_some(())
    });
    let want = connected.len() * 2 + 2;
    let logged = wait_until_or(
        Duration::from_secs(15),
        "every line",
        &mut || {
            let m = journald.messages(&id);
            (m.len() >= want).then_some(m)
        },
        || format!(": daemon stderr:\n{}", daemon.stderr()),
    );
    for &i in &connected {
        assert!(
            logged.contains(&format!("again {i}").into_bytes()),
            "again {i}"
        );
    }
    line.pop();
    assert!(logged.contains(&line), "the 1 MiB line, whole");
    assert_eq!(logged.len(), want, "nothing twice, nothing split");
    assert!(
        daemon
            .stderr()
            .contains("reload failed, keeping the running configuration"),
        "{}",
        daemon.stderr()
    );
    drop(clients);
    drop(big);
    assert!(daemon.stop().success(), "{}", daemon.stderr());
}

/// Issue 12.6: the first watchdog check waits for the accept loops' first heartbeat.
#[test]
fn watchdog_first_ping_comes_early_and_start_logs_no_error() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .notify(&notify)
        .env("WATCHDOG_USEC", "1000000")
        .start();
    notify.until("READY=1", 10 * SEC);
    let ready = Instant::now();
    notify.until("WATCHDOG=1", 2 * SEC);
    let first = ready.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stderr = daemon.stderr();
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(
        first < Duration::from_millis(400),
        "first WATCHDOG=1 {first:?} after READY=1 (interval 1 s)"
    );
    assert!(daemon.stop().success());
}

/// Sends 12,000 lines on `s` and returns how long until all are in the journal (which holds
/// `before` entries of `id` already).
fn time_12000(
    journald: &Journald,
    id: &str,
    s: &mut UnixStream,
    tag: &str,
    before: usize,
) -> Duration {
    let input: String = (0..12_000).map(|i| format!("{tag} {i:05}\n")).collect();
    let start = Instant::now();
    s.write_all(input.as_bytes()).unwrap();
    wait_until(30 * SEC, "12,000 entries", || {
        (journald.messages(id).len() >= before + 12_000).then_some(())
    });
    start.elapsed()
}

/// Issue 13.1: after journald stalls right after start, the pacer recovers within a second
/// (qlen 10), and at SIGTERM every line read is in the journal.
#[test]
fn pacer_recovers_after_an_early_stall_and_stop_loses_nothing_journald() {
    const N: usize = 12_000;
    // The same 12,000 entries without a stall, for the time they normally take here.
    let normal = {
        let journald = Journald::start_with_qlen(10);
        let id = identifier("pacer-normal");
        let _daemon = DaemonBuilder::new()
            .journald(&journald)
            .identifier(&id)
            .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
            .start();
        let mut s = UnixStream::connect(&_daemon.socket).unwrap();
        time_12000(&journald, &id, &mut s, "normal", 0)
    };

    let journald = Journald::start_with_qlen(10);
    let id = identifier("pacer");
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();
    journald.signal(Signal::STOP);
    // Entries that find the queue full while journald sleeps.
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    for i in 0..200 {
        s.write_all(format!("stalled {i}\n").as_bytes()).unwrap();
    }
    std::thread::sleep(SEC);
    // journald wakes for a moment, long enough to take a few entries, and stalls again: the
    // pacer measures a drain rate across the stall.
    for _ in 0..3 {
        journald.signal(Signal::CONT);
        journald.signal(Signal::STOP);
        std::thread::sleep(Duration::from_millis(300));
    }
    journald.signal(Signal::CONT);
    journald.wait_for_messages(&id, 200, 10 * SEC);

    let took = time_12000(&journald, &id, &mut s, "first", 200);
    eprintln!("12,000 entries: {normal:?} normally, {took:?} after the stall");
    assert!(
        took < normal + SEC,
        "12,000 entries took {took:?} after the stall, {normal:?} normally"
    );

    // At stop, every line read is written.
    let input: String = (0..N).map(|i| format!("second {i:05}\n")).collect();
    s.write_all(input.as_bytes()).unwrap();
    drop(s);
    assert!(daemon.stop().success(), "{}", daemon.stderr());
    let logged = journald.messages(&id);
    let second = logged.iter().filter(|m| m.starts_with(b"second ")).count();
    assert_eq!(second, N, "lines lost at stop: {}", daemon.stderr());
    assert_eq!(logged.len(), 200 + 2 * N);
}

/// Issue 13.2: stdout a non-blocking pipe, read slowly: every line arrives whole.
#[test]
fn stdout_sink_survives_a_slow_non_blocking_pipe() {
    const N: usize = 3000;
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let (read, write) = rustix::pipe::pipe().unwrap();
    // O_NONBLOCK on the write end's open file description, which the daemon inherits.
    rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut child = Command::new(APP)
        .args([
            "--config",
            "/dev/null",
            "serve",
            "--sink",
            "stdout",
            "--socket",
        ])
        .arg(&socket)
        .env_clear()
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(10 * SEC, "the socket", || socket.exists().then_some(()));
    let input: String = (0..N)
        .map(|i| format!("line {i:04} {}\n", "x".repeat(200)))
        .collect();
    let path = socket.clone();
    let sender = std::thread::spawn(move || send(&path, input.as_bytes()));
    let mut pipe = std::fs::File::from(read);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Slowly: a few KiB every 2 ms, and no more than 3 s without anything new.
    rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut last = Instant::now();
    while out.iter().filter(|&&b| b == b'\n').count() < N && last.elapsed() < 3 * SEC {
        std::thread::sleep(Duration::from_millis(2));
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    sender.join().unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), N, "{stderr}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.ends_with(&format!("> line {i:04} {}", "x".repeat(200))),
            "line {i}: {l}"
        );
    }
    assert!(status.success(), "{stderr}");
}

/// Issue 13.3: a suppression report still pending at SIGTERM is written, with its exact count.
#[test]
fn pending_suppression_report_is_written_at_stop_journald() {
    let journald = Journald::start();
    let id = identifier("suppstop");
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "2")
        .env("APP_LIMITS__RATE_LIMIT_INTERVAL", "60s")
        .start();
    let input: String = (0..10).map(|i| format!("line {i}\n")).collect();
    send(&daemon.socket, input.as_bytes());
    journald.wait_for_messages(&id, 2, 10 * SEC);
    assert!(daemon.stop().success(), "{}", daemon.stderr());
    let msgs = journald.wait_for_messages(&id, 3, 10 * SEC);
    assert!(
        msgs.contains(&b"suppressed 8 messages from uid 0".to_vec()),
        "{:?}",
        msgs.iter()
            .map(|m| String::from_utf8_lossy(m))
            .collect::<Vec<_>>()
    );
}

/// Issue 13.6: whatever goes into `STATUS=` is one line: a bad configuration cannot add
/// assignments to the notify datagram.
#[test]
fn status_is_one_line_whatever_the_error_says() {
    let notify = NotifySocket::new();
    let mut daemon = DaemonBuilder::new().stdout_sink().notify(&notify).start();
    notify.until("READY=1", 10 * SEC);
    let config_path = daemon.socket.with_file_name("app.toml");
    let known = [
        "READY",
        "RELOADING",
        "MONOTONIC_USEC",
        "STATUS",
        "WATCHDOG",
        "STOPPING",
        "ERRNO",
        "EXTEND_TIMEOUT_USEC",
    ];
    for bad in [
        "[limits\nx = \n\"\n",
        "\"x\\nMAINPID=1\\nEXTEND_TIMEOUT_USEC=999999999\" = 1\n",
        "[limits]\nmax_connections = \"x\\nMAINPID=1\"\n",
    ] {
        std::fs::write(&config_path, bad).unwrap();
        daemon.signal(Signal::HUP);
        let msgs = notify.until("READY=1", 5 * SEC);
        let status = msgs
            .iter()
            .flat_map(|m| m.lines())
            .find(|l| l.starts_with("STATUS=reload failed"))
            .unwrap_or_else(|| panic!("{msgs:?}"));
        assert!(!status.chars().any(char::is_control), "{status:?}");
        for m in &msgs {
            for line in m.lines() {
                let key = line.split('=').next().unwrap();
                assert!(known.contains(&key), "{line:?} in {m:?} for {bad:?}");
            }
        }
    }
    assert!(daemon.stop().success());
}

/// Issue 13.10: `app reload` returns once the new settings are in force, and fails with the
/// reason when they are rejected.
#[test]
fn app_reload_returns_once_the_new_settings_are_in_force() {
    let runtime = temp_dir();
    let rundir = runtime.path().display().to_string();
    let builder = DaemonBuilder::new()
        .stdout_sink()
        .env("RUNTIME_DIRECTORY", &rundir);
    let mut daemon = builder
        .config("[journal]\nidentifier = \"before\"\n")
        .start();
    let config_path = daemon.socket.with_file_name("app.toml");
    let pid = daemon.pid().to_string();
    let env = [
        ("RUNTIME_DIRECTORY", rundir.as_str()),
        ("MAINPID", pid.as_str()),
    ];
    for round in 0..5 {
        let name = format!("after{round}");
        std::fs::write(
            &config_path,
            format!("[journal]\nidentifier = \"{name}\"\n"),
        )
        .unwrap();
        let (code, _, stderr) = run_app(&["reload"], &env, b"");
        assert_eq!(code, 0, "{stderr}");
        let marker = format!("right after reload {round}");
        send(&daemon.socket, format!("{marker}\n").as_bytes());
        wait_until(5 * SEC, "the line", || {
            daemon.stdout().contains(&marker).then_some(())
        });
        let out = daemon.stdout();
        let line = out.lines().find(|l| l.contains(&marker)).unwrap();
        assert!(line.contains(&format!(" {name}[")), "{line}");
    }
    // Rejected: non-zero, with the reason; the running settings stay.
    std::fs::write(&config_path, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    let (code, _, stderr) = run_app(&["reload", "--pid", &pid], &env[..1], b"");
    assert_ne!(code, 0);
    assert!(stderr.contains("max_connections"), "{stderr}");
    // No such daemon: a clear error, not a hang.
    let (code, _, stderr) = run_app(&["reload", "--pid", "999999999"], &env[..1], b"");
    assert_ne!(code, 0);
    assert!(!stderr.is_empty());
    assert!(daemon.stop().success());
}
