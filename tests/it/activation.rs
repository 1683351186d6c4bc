//! Getting the socket from systemd (DESIGN §1), with `systemd-socket-activate` passing real fds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn socket_activated_hello_reaches_journald() {
    let journald = Journald::start();
    let id = identifier("hello");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .activated(&[])
        .start();

    // A client running as root: this test process.
    assert_eq!(send(&daemon.socket, b"hello\n"), "");
    // A client running as nobody (systemd-socket-activate leaves the socket at 0755).
    std::fs::set_permissions(
        &daemon.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let mut nobody = socat_as_nobody(&daemon.socket);
    let nobody_pid = nobody.id();
    nobody
        .stdin
        .take()
        .unwrap()
        .write_all(b"from nobody\n")
        .unwrap();
    assert!(nobody.wait().unwrap().success());

    let entries = journald.wait_for(&id, 2);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let hello = &entries
        .iter()
        .find(|e| e.get("MESSAGE") == "hello")
        .expect("hello");
    assert_eq!(hello.get("PRIORITY"), "6");
    assert_eq!(hello.get("SYSLOG_IDENTIFIER"), id);
    assert_eq!(hello.get("CLIENT_PID"), std::process::id().to_string());
    assert_eq!(hello.get("CLIENT_UID"), "0");
    assert_eq!(hello.get("CLIENT_GID"), "0");
    assert_eq!(hello.str("LINE_BREAK"), None);
    assert_eq!(hello.str("SYSLOG_FACILITY"), None);

    let other = entries
        .iter()
        .find(|e| e.get("MESSAGE") == "from nobody")
        .expect("nobody's line");
    assert_eq!(other.get("CLIENT_UID"), "65534");
    assert_eq!(other.get("CLIENT_GID"), "65534");
    assert_eq!(other.get("CLIENT_PID"), nobody_pid.to_string());
    assert_ne!(
        other.get("CLIENT_CONNECTION"),
        hello.get("CLIENT_CONNECTION")
    );
}

#[test]
fn unix_and_tcp_listeners_are_served_together_journald() {
    let journald = Journald::start();
    let id = identifier("tcp");
    let tcp_addr = free_tcp_addr();
    let mut daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .activated(&["-l", &tcp_addr])
        .start();

    send(&daemon.socket, b"over unix\n");
    let mut tcp = TcpStream::connect(&tcp_addr).unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(b"over tcp\n").unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "");

    let entries = journald.wait_for(&id, 2);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let unix = entries
        .iter()
        .find(|e| e.get("MESSAGE") == "over unix")
        .unwrap();
    let tcp = entries
        .iter()
        .find(|e| e.get("MESSAGE") == "over tcp")
        .unwrap();
    assert_eq!(tcp.get("CLIENT_ADDRESS"), local.to_string());
    assert_eq!(tcp.str("CLIENT_UID"), None);
    assert_eq!(unix.get("CLIENT_UID"), "0");
    assert_eq!(unix.str("CLIENT_ADDRESS"), None);
    // Two listeners: each entry says which one it came through.
    assert!(unix.str("SOCKET").is_some() && tcp.str("SOCKET").is_some());
    assert_ne!(unix.get("SOCKET"), tcp.get("SOCKET"));

    assert!(daemon.stop().success());
    assert!(
        daemon.socket.exists(),
        "an inherited socket is never unlinked"
    );
}

#[test]
fn listen_pid_of_another_process_is_ignored() {
    // LISTEN_FDS meant for some other process (pid 1): the daemon binds its own socket instead.
    let mut daemon = DaemonBuilder::new()
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdout_sink()
        .start();
    assert!(
        daemon
            .stderr()
            .contains(&format!("serving {}", daemon.socket.display()))
    );
    send(&daemon.socket, b"bound it myself\n");
    assert!(daemon.stop().success());
    assert!(
        daemon.stdout().contains("bound it myself"),
        "{}",
        daemon.stdout()
    );
    assert!(!daemon.socket.exists(), "its own socket is removed on exit");
}

/// Issue 15.2: an inherited Unix datagram socket (`ListenDatagram=`) is served, one message
/// per datagram.
#[test]
fn inherited_datagram_socket_is_served() {
    let dir = temp_dir();
    let path = dir.path().join("dgram.sock");
    let out_path = dir.path().join("stdout");
    let mut child = Command::new("systemd-socket-activate")
        .die_with_test()
        .args(["--datagram", "-l"])
        .arg(&path)
        .args([APP, "serve", "--sink", "stdout"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    // It starts the daemon when the first datagram arrives.
    wait_until(
        std::time::Duration::from_secs(10),
        "the datagram socket",
        || path.exists().then_some(()),
    );
    std::os::unix::net::UnixDatagram::unbound()
        .unwrap()
        .send_to(b"<13>Nov 25 21:57:27 dtag[7]: hello datagram\n", &path)
        .unwrap();
    let find = |what: &str| {
        wait_until(std::time::Duration::from_secs(10), "the message", || {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            out.lines().find(|l| l.contains(what)).map(str::to_owned)
        })
    };
    // The datagram that started it was queued before anyone turned on SO_PASSCRED
    // (systemd-socket-activate has no PassCredentials=): the kernel reports no pid for it.
    let line = find("hello datagram");
    assert!(line.contains("dtag[uid="), "{line}");
    assert!(line.ends_with("<5> hello datagram"), "{line}");
    // Once the daemon runs, each datagram carries its sender's credentials.
    std::os::unix::net::UnixDatagram::unbound()
        .unwrap()
        .send_to(b"<14>second\0", &path)
        .unwrap();
    let line = find("second");
    let me = format!("[pid={} uid=0 ", std::process::id());
    assert!(line.contains(&me), "{line}");
    assert!(line.ends_with("<6> second"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A socket of another kind (seqpacket) is still a clear startup error naming the fd.
#[test]
fn inherited_seqpacket_socket_is_a_startup_error() {
    let dir = temp_dir();
    let path = dir.path().join("seq.sock");
    let child = Command::new("systemd-socket-activate")
        .args(["--seqpacket", "-l"])
        .arg(&path)
        .args([APP, "serve"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    wait_until(std::time::Duration::from_secs(10), "the socket", || {
        path.exists().then_some(())
    });
    let client = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    rustix::net::connect(&client, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("app: fd 3: a seqpacket socket"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `systemfd`, from crates.io (`tests/setup` installs it): in `PATH`, or where `cargo install`
/// puts it.
fn systemfd() -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(std::path::Path::new(&home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("systemfd"))
        .find(|p| p.is_file())
        .expect("systemfd not found: `cargo install systemfd --locked` (tests/setup does it)")
}

/// README "Developing": `systemfd --no-pid` holds the socket while the daemon under it is
/// rebuilt and restarted, and passes it as `LISTEN_FDS` without `LISTEN_PID`. A client that
/// connects in a loop across three restarts is never refused, and every line arrives once.
#[test]
fn systemfd_no_pid_keeps_clients_connecting_across_restarts() {
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let (out, err, pidfile) = (
        dir.path().join("stdout"),
        dir.path().join("stderr"),
        dir.path().join("pid"),
    );
    // If the daemon ignored the passed socket, it would bind this one instead.
    let config = dir.path().join("app.toml");
    let own = dir.path().join("bound-by-itself.sock");
    std::fs::write(&config, format!("[socket]\npath = {own:?}\n")).unwrap();
    // What `cargo watch` does on every change: start the daemon again once the last one exited.
    let restart_loop = format!(
        "while :; do setpriv --pdeathsig KILL -- {APP} --config {config} serve --sink stdout \
         >>{out} 2>>{err} & echo $! >{pid}.new; mv {pid}.new {pid}; wait $!; done",
        config = config.display(),
        out = out.display(),
        err = err.display(),
        pid = pidfile.display(),
    );
    let mut systemfd = Command::new(systemfd())
        .die_with_test()
        .args(["--no-pid", "-s"])
        .arg(format!("unix::{}", socket.display()))
        .args(["--", "setpriv", "--pdeathsig", "KILL", "--", "sh", "-c"])
        .arg(&restart_loop)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running systemfd");
    let daemon_pid =
        || -> Option<i32> { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() };
    let mut pid = wait_until(
        std::time::Duration::from_secs(10),
        "the first daemon",
        daemon_pid,
    );
    let mut pids = vec![pid];

    const LINES: usize = 400;
    let mut refused = Vec::new();
    for i in 0..LINES {
        if i > 0 && i % 100 == 0 {
            // Restart: SIGTERM the daemon and connect again at once, while it stops.
            let pid_now = rustix::process::Pid::from_raw(pid).unwrap();
            rustix::process::kill_process(pid_now, rustix::process::Signal::TERM).unwrap();
        }
        let mut s = match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => {
                refused.push(format!("line {i}: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        s.write_all(format!("dev loop {i}\n").as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The daemon closes once it has read everything: the line was taken.
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let mut reply = String::new();
        if let Err(e) = s.read_to_string(&mut reply) {
            let _ = systemfd.kill();
            panic!(
                "line {i} not taken within 15 s ({e}); daemons' stderr: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        assert_eq!(reply, "", "line {i}");
        if i % 100 == 0 && i > 0 {
            pid = wait_until(
                std::time::Duration::from_secs(10),
                "the next daemon",
                || daemon_pid().filter(|p| *p != pid),
            );
            pids.push(pid);
        }
    }
    // The last daemon stops cleanly (its output written) before systemfd goes.
    let pid_now = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid_now, rustix::process::Signal::TERM).unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the last daemon to stop",
        || daemon_pid().filter(|p| *p != pid),
    );
    let _ = systemfd.kill();
    let _ = systemfd.wait();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert_eq!(pids.len(), 4, "three restarts: {pids:?}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    for i in 0..LINES {
        let n = stdout.matches(&format!("> dev loop {i}\n")).count();
        assert_eq!(n, 1, "line {i} logged {n} times: {stdout}");
    }
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(
        !own.exists() && !stderr.contains("bound-by-itself"),
        "{stderr}"
    );
}

/// `LISTEN_FDS` without `LISTEN_PID` naming an fd that is not open: a clear startup error
/// (exit 2), not an abort of the process.
#[test]
fn listen_fds_without_pid_naming_a_closed_fd_is_a_startup_error() {
    let (code, _, stderr) = run_app(&["serve", "--sink", "stdout"], &[("LISTEN_FDS", "1")], b"");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("app: fd 3: LISTEN_FDS names it, but it is not open"),
        "{stderr}"
    );
}
