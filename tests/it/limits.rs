//! Limits and abuse (DESIGN §5): connection limit, rate limit, descriptor exhaustion.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const SEC: Duration = Duration::from_secs(1);

fn read_reply(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(5 * SEC)).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

#[test]
fn connection_limit_refuses_the_101st_and_recovers() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_LIMITS__MAX_CONNECTIONS", "100")
        .start();
    let mut held: Vec<UnixStream> = (0..100)
        .map(|i| {
            let mut s = UnixStream::connect(&daemon.socket).unwrap();
            s.write_all(format!("held {i}\n").as_bytes()).unwrap();
            s
        })
        .collect();
    wait_until(10 * SEC, "100 lines", || {
        (daemon.stdout().matches("> held ").count() == 100).then_some(())
    });
    for _ in 0..5 {
        let mut extra = UnixStream::connect(&daemon.socket).unwrap();
        assert_eq!(read_reply(&mut extra), "app: too many connections\n");
    }
    // The 100 keep working.
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(format!("still {i}\n").as_bytes()).unwrap();
    }
    wait_until(10 * SEC, "100 more lines", || {
        (daemon.stdout().matches("> still ").count() == 100).then_some(())
    });
    // One leaves: the next is accepted.
    drop(held.pop());
    wait_until(10 * SEC, "a free slot", || {
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        // Refused while the slot is not yet free: the daemon may have closed already (EPIPE).
        s.write_all(b"newcomer\n").ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        read_reply(&mut s).is_empty().then_some(())
    });
    wait_until(5 * SEC, "the newcomer's line", || {
        daemon.stdout().contains("> newcomer").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    assert!(daemon.stop().success());
    let stderr = daemon.stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("too many connections"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the burst, not one per client: {stderr}"
    );
    assert!(
        warnings[0].contains("WARN refused ")
            && warnings[0].contains("limits.max_connections = 100")
    );
}

#[test]
fn rate_limit_per_uid_with_an_exact_report_journald() {
    let journald = Journald::start();
    let id = identifier("rate");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "100")
        .env("APP_LIMITS__RATE_LIMIT_INTERVAL", "3s")
        .env("APP_SOCKET__MODE", "0666")
        .start();
    // Root sends 3× the burst; nobody sends 80 lines at the same time.
    let mut nobody = socat_as_nobody(&daemon.socket);
    let mut heavy = UnixStream::connect(&daemon.socket).unwrap();
    let mut nobody_in = nobody.stdin.take().unwrap();
    // Root's 300 lines in one write, so they arrive in one read: 100 are logged, the 200 read
    // past the budget are dropped (a client over its budget is not read any further).
    let root: String = (0..300).map(|i| format!("root {i}\n")).collect();
    heavy.write_all(root.as_bytes()).unwrap();
    for i in 0..80 {
        nobody_in
            .write_all(format!("nobody {i}\n").as_bytes())
            .unwrap();
    }
    drop(nobody_in);
    assert!(nobody.wait().unwrap().success());
    heavy.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = read_reply(&mut heavy);
    assert_eq!(
        reply, "app: rate limit reached (100 messages per 3s): dropping messages\n",
        "told once"
    );

    // 100 + 80 lines, plus the report once the 3 s window ends.
    let entries = journald.wait_for(&id, 181);
    let msgs: Vec<String> = entries.iter().map(|e| e.get("MESSAGE")).collect();
    let root: Vec<&String> = msgs.iter().filter(|m| m.starts_with("root ")).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("root {i}")).collect();
    assert_eq!(
        root,
        expected.iter().collect::<Vec<_>>(),
        "the burst, first come first served"
    );
    assert_eq!(
        msgs.iter().filter(|m| m.starts_with("nobody ")).count(),
        80,
        "the other uid lost nothing"
    );
    let reports: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.get("MESSAGE").starts_with("suppressed "))
        .collect();
    assert_eq!(reports.len(), 1, "{msgs:?}");
    assert_eq!(
        reports[0].get("MESSAGE"),
        "suppressed 200 messages from uid 0"
    );
    assert_eq!(reports[0].get("PRIORITY"), "4");
    assert_eq!(reports[0].get("CLIENT_UID"), "0");
    assert_eq!(entries.len(), 181);
}

/// A client over its budget is not read until its window ends; once it hangs up, what it left
/// in its socket is over the budget anyway: dropped and counted, and the client is not kept
/// waiting for the close until the window ends.
#[test]
fn a_rate_limited_client_that_hangs_up_is_let_go() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_LIMITS__RATE_LIMIT_BURST", "2")
        .env("APP_LIMITS__RATE_LIMIT_INTERVAL", "60s")
        .start();
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    // Two writes, so that the second is still unread when the budget is spent.
    s.write_all(b"one\ntwo\nthree\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"four\nfive\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let started = std::time::Instant::now();
    let reply = read_reply(&mut s);
    let waited = started.elapsed();
    assert!(reply.starts_with("app: rate limit reached"), "{reply:?}");
    assert!(
        waited < Duration::from_secs(5),
        "the daemon closed only after {waited:?} (the window is 60 s)"
    );
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    assert_eq!(
        out.lines().filter(|l| !l.contains("suppressed")).count(),
        2,
        "{out}"
    );
}

/// At stop there is no next window: what a rate-limited client sent while it was not read is
/// read at the drain, over the budget, and dropped *and counted*, not lost with the socket.
#[test]
fn at_stop_a_rate_limited_clients_unread_lines_are_counted() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_LIMITS__RATE_LIMIT_BURST", "10")
        .env("APP_LIMITS__RATE_LIMIT_INTERVAL", "60s")
        .start();
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    let first: String = (0..11).map(|i| format!("first{i}\n")).collect();
    s.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(b"later0\nlater1\nlater2\nlater3\nlater4\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The client stays connected: the stop drains it until the drain deadline, as any client.
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    let logged = out.lines().filter(|l| l.contains("> first")).count();
    assert_eq!(logged, 10, "{out}");
    assert!(!out.contains("> later"), "{out}");
    assert!(
        out.contains("suppressed 6 messages from uid 0"),
        "the 1 + 5 lines over the budget are counted:\n{out}"
    );
}

#[test]
fn rate_limit_burst_zero_is_off() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .start();
    let input: String = (0..20_000).map(|i| format!("m{i}\n")).collect();
    assert_eq!(send(&daemon.socket, input.as_bytes()), "");
    assert!(daemon.stop().success());
    assert_eq!(daemon.stdout().lines().count(), 20_000);
}

#[test]
fn descriptor_exhaustion_is_survived() {
    // Hard and soft limit 48: the daemon cannot raise it, and runs out of descriptors at ~35
    // clients.
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let child = Command::new("prlimit")
        .die_with_test()
        .args([
            "--nofile=48:48",
            "--",
            APP,
            "serve",
            "--sink",
            "stdout",
            "--socket",
        ])
        .arg(&socket)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(10 * SEC, "the socket", || socket.exists().then_some(()));
    std::thread::sleep(Duration::from_millis(200));
    let clients: Vec<UnixStream> = (0..80)
        .map(|i| {
            let mut s = UnixStream::connect(&socket).expect("connect (the backlog takes it)");
            // A client refused at once (reserve descriptor) may find the daemon's end closed
            // already (EPIPE): what it reads says why.
            let _ = s.write_all(format!("client {i}\n").as_bytes());
            s
        })
        .collect();
    std::thread::sleep(SEC);
    // Clients beyond the limit are told at once, from the reserve descriptor, and closed.
    let told: Vec<bool> = clients
        .into_iter()
        .map(|mut c| {
            c.set_nonblocking(true).unwrap();
            let mut reply = String::new();
            let _ = c.read_to_string(&mut reply);
            assert!(
                reply.is_empty() || reply == "app: too many open files\n",
                "{reply}"
            );
            !reply.is_empty()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Descriptors are free again: a newcomer is served (and ends any failing burst).
    assert_eq!(send(&socket, b"final\n"), "");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let failures = stderr
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(failures >= 1, "EMFILE never happened: {stderr}");
    assert!(stderr.contains("Too many open files"), "{stderr}");
    let bursts = stderr
        .lines()
        .filter(|l| l.contains("accepting again"))
        .count();
    assert_eq!(
        failures, bursts,
        "one line per burst, and each burst ended: {stderr}"
    );
    assert!(stdout.contains("> final\n"), "{stdout}");
    assert!(told.iter().any(|&t| t), "nobody was told");
    for (i, told) in told.into_iter().enumerate() {
        assert_eq!(
            stdout.contains(&format!("> client {i}\n")),
            !told,
            "client {i} was neither served nor told:\n{stdout}\n{stderr}"
        );
    }
}

/// Runs `f` on a thread whose credentials are uid/gid `uid` (Linux credentials are per thread
/// under the raw syscalls), so that its connections carry that uid in SO_PEERCRED.
fn as_uid<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        rustix::thread::set_thread_res_gid(
            rustix::process::Gid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
        )
        .unwrap();
        rustix::thread::set_thread_res_uid(
            rustix::process::Uid::from_raw(uid),
            rustix::process::Uid::from_raw(uid),
            rustix::process::Uid::from_raw(uid),
        )
        .unwrap();
        f()
    })
}

/// Issue 12.1: a client flooding past its rate limit is not read until its window ends; it
/// must not hold up other clients or the watchdog (the runtime has one thread).
#[test]
fn a_rate_limited_flood_holds_up_no_other_client_nor_the_watchdog_root() {
    require_root("connects as another uid");
    let notify = NotifySocket::new();
    let daemon = DaemonBuilder::new()
        .stdout_sink()
        .notify(&notify)
        .env("WATCHDOG_USEC", "1000000")
        .env("APP_LIMITS__RATE_LIMIT_BURST", "10")
        .env("APP_SOCKET__MODE", "0666")
        .start();
    notify.until("READY=1", 5 * SEC);
    let socket = daemon.socket.clone();
    let flood_for = 6 * SEC;
    let flooder = std::thread::spawn(move || {
        let chunk = "x\n".repeat(32768);
        let start = std::time::Instant::now();
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while start.elapsed() < flood_for {
            match s.write_all(chunk.as_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("flood: {e}"),
            }
        }
    });
    // uid 65534: one line every 0.5 s, each on a fresh connection, timed until it is logged.
    std::thread::sleep(Duration::from_millis(300));
    let socket = daemon.socket.clone();
    let stdout = daemon.stdout_path();
    let lines = as_uid(65534, move || {
        let mut late = Vec::new();
        for i in 0..10 {
            let line = format!("nobody {i}");
            let sent = std::time::Instant::now();
            let mut s = UnixStream::connect(&socket).unwrap();
            s.write_all(format!("{line}\n").as_bytes()).unwrap();
            drop(s);
            let logged = loop {
                let out = std::fs::read(&stdout).unwrap_or_default();
                if String::from_utf8_lossy(&out).contains(&format!("> {line}\n")) {
                    break sent.elapsed();
                }
                assert!(sent.elapsed() < 10 * SEC, "{line} never logged");
                std::thread::sleep(Duration::from_millis(2));
            };
            late.push(logged);
            std::thread::sleep(Duration::from_millis(500).saturating_sub(logged));
        }
        late
    });
    let pings: Vec<std::time::Instant> = notify
        .collect(flood_for - Duration::from_millis(500))
        .into_iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect();
    let late = lines.join().unwrap();
    flooder.join().unwrap();
    let worst = late.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(100),
        "uid 65534's lines were logged after {late:?}"
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        pings.len() >= 8,
        "WATCHDOG=1 pings during the flood: {}",
        pings.len()
    );
    assert!(
        gaps.iter().all(|g| *g <= SEC),
        "a gap between WATCHDOG=1 pings above WatchdogSec: {gaps:?}"
    );
    // The flood: its first read's budget was logged, the rest of that read dropped and
    // counted, and the client was told once.
    let out = daemon.stdout();
    assert_eq!(out.matches("> x\n").count(), 10, "the burst");
}

/// Issue 12.4: one uid opens every connection slot; other uids are still served.
#[test]
fn one_uid_cannot_take_every_connection_slot_root() {
    require_root("connects as other uids");
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_LIMITS__MAX_CONNECTIONS", "8")
        .env("APP_SOCKET__MODE", "0666")
        .start();
    let socket = daemon.socket.clone();
    let (held, replies) = as_uid(65534, move || {
        let mut held = Vec::new();
        let mut replies = Vec::new();
        for i in 0..8 {
            let mut s = UnixStream::connect(&socket).unwrap();
            // A refused client may find the daemon gone already (EPIPE): its reply says why.
            let _ = s.write_all(format!("nobody {i}\n").as_bytes());
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            replies.push(reply);
            held.push(s);
        }
        (held, replies)
    })
    .join()
    .unwrap();
    let refused = "app: too many connections from uid 65534\n";
    assert_eq!(
        replies,
        [vec![""; 2], vec![refused; 6]].concat(),
        "a quarter of max_connections each"
    );
    // Another uid, and root, are still served.
    let socket = daemon.socket.clone();
    let other = as_uid(65533, move || send(&socket, b"another uid\n"))
        .join()
        .unwrap();
    assert_eq!(other, "");
    assert_eq!(send(&daemon.socket, b"root\n"), "");
    wait_until(5 * SEC, "the lines", || {
        let out = daemon.stdout();
        (out.contains("> another uid\n")
            && out.contains("> root\n")
            && out.contains("> nobody 1\n"))
        .then_some(())
    });
    assert!(!daemon.stdout().contains("> nobody 2\n"));
    // One warning for the burst.
    wait_until(5 * SEC, "the refusals reported", || {
        daemon
            .stderr()
            .contains("refused 6 connections: too many connections")
            .then_some(())
    });
    drop(held);
    assert!(daemon.stop().success());
}

/// Issue 12.3: bytes read but not yet taken by a frozen journal stay within
/// limits.max_buffered_bytes (the clients wait in the kernel), and the memory is given back.
#[test]
fn buffered_memory_is_bounded_while_the_journal_is_frozen_journald() {
    let journald = Journald::start();
    let id = identifier("budget");
    let budget_mib = 16;
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .env(
            "APP_LIMITS__MAX_BUFFERED_BYTES",
            &format!("{budget_mib}MiB"),
        )
        .start();
    raise_nofile(20_000);
    let rss_kib = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    // Warm up (the journal socket, the first allocations), then measure the daemon at rest.
    assert_eq!(send(&daemon.socket, b"warm up\n"), "");
    journald.wait_for(&id, 1);
    std::thread::sleep(SEC);
    let rest = rss_kib(daemon.pid());
    journald.signal(rustix::process::Signal::STOP);
    // 4,000 clients × one 64 KiB write of 1 KiB lines.
    let line = format!("{}\n", "y".repeat(1023));
    let chunk = line.repeat(64);
    let clients: Vec<UnixStream> = (0..4000)
        .map(|_| {
            let mut s = UnixStream::connect(&daemon.socket).unwrap();
            s.write_all(chunk.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(3 * SEC);
    let peak = peak_rss_kib(daemon.pid());
    journald.signal(rustix::process::Signal::CONT);
    drop(clients);
    let limit = (budget_mib + 32) * 1024;
    assert!(
        peak < limit,
        "peak RSS {peak} KiB with the journal frozen, over the budget + 32 MiB ({limit} KiB); at rest {rest} KiB"
    );
    // Every line is written, then the memory goes back.
    let after = wait_until_or(
        120 * SEC,
        "RSS back near rest",
        &mut || {
            let now = rss_kib(daemon.pid());
            (now < rest + 8 * 1024).then_some(now)
        },
        || format!("at rest {rest} KiB, now {} KiB", rss_kib(daemon.pid())),
    );
    eprintln!("RSS: rest {rest} KiB, peak {peak} KiB, after {after} KiB");
    assert!(daemon.stop().success());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("stopped: 0 clients, {} messages", 1 + 4000 * 64)),
        "{stderr}"
    );
}

/// The attribution cache holds a pidfd per client process; at descriptor exhaustion it must give
/// them up rather than cost clients their service. 30 client processes, each connected with a
/// line written and staying: 30 connections fit under a limit of 48 descriptors, 30 connections
/// and 30 cached pidfds do not.
#[test]
fn the_attribution_cache_gives_way_to_clients_at_descriptor_exhaustion() {
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let child = Command::new("prlimit")
        .die_with_test()
        .args([
            "--nofile=48:48",
            "--",
            APP,
            "serve",
            "--sink",
            "stdout",
            "--socket",
        ])
        .arg(&socket)
        .env_clear()
        .env("APP_LIMITS__RATE_LIMIT_BURST", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(10 * SEC, "the socket", || socket.exists().then_some(()));
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut socat = Command::new("socat")
            .die_with_test()
            .args(["-u", "-", &format!("UNIX-CONNECT:{}", socket.display())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = socat.stdin.take().unwrap();
        stdin.write_all(format!("client {i}\n").as_bytes()).unwrap();
        // Read, resolved and cached while the client lives.
        std::thread::sleep(Duration::from_millis(30));
        clients.push((socat, stdin));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    for (mut socat, stdin) in clients {
        drop(stdin);
        let _ = socat.kill();
        let _ = socat.wait();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for i in 0..30 {
        assert!(
            stdout.contains(&format!("> client {i}\n")),
            "client {i} was not served:\n{stdout}\n{stderr}"
        );
    }
}
