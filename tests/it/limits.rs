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
        s.write_all(b"newcomer\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
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
    for i in 0..300 {
        heavy.write_all(format!("root {i}\n").as_bytes()).unwrap();
        if i < 80 {
            nobody_in
                .write_all(format!("nobody {i}\n").as_bytes())
                .unwrap();
        }
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
            s.write_all(format!("client {i}\n").as_bytes()).unwrap();
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
