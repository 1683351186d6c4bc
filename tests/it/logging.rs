//! The daemon's own diagnostics: the journal when stderr is the journal, plain text otherwise.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn diagnostics_go_to_the_journal_when_stderr_is_the_journal_journald() {
    let journald = Journald::start();
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    // What systemd sets when it connects stderr to the journal: that stream's device:inode.
    let journal_stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = journald
        .command(APP)
        .args(["serve", "--socket", socket.to_str().unwrap()])
        .env_clear()
        .env("JOURNAL_STREAM", &journal_stream)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let entries = wait_until(Duration::from_secs(10), "the startup entry", || {
        let e = journald.entries("app-daemon");
        (!e.is_empty()).then_some(e)
    });
    let _ = child.kill();
    let _ = child.wait();
    let startup = &entries[0];
    assert!(
        startup.get("MESSAGE").starts_with("serving "),
        "{startup:?}"
    );
    assert_eq!(
        startup.get("PRIORITY"),
        "6",
        "INFO is priority 6 (info), not 5"
    );
    assert_eq!(
        std::fs::read_to_string(&stderr_path).unwrap(),
        "",
        "nothing on stderr"
    );
}

#[test]
fn diagnostics_are_plain_text_on_stderr_otherwise() {
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let mut child = Command::new(APP)
        .die_with_test()
        .args([
            "serve",
            "--sink",
            "stdout",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .env_clear()
        // A JOURNAL_STREAM that does not match our stderr (a pipe) must be ignored.
        .env("JOURNAL_STREAM", "1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the socket", || {
        socket.exists().then_some(())
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(text.contains("INFO serving "), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no ANSI codes when stderr is not a terminal: {text:?}"
    );
}

/// The JOURNAL_STREAM and socket-activation paths together (issue 13.5): the daemon takes
/// `LISTEN_*` out of its environment (an `unsafe` change, sound only while single-threaded)
/// before it starts its first thread, the journal log forwarder. strace shows the order: the
/// inherited socket's `SO_ACCEPTCONN` query comes before the first `clone`/`clone3`.
/// The daemon's own diagnostics carry `SYSLOG_IDENTIFIER=app-daemon` and no `CLIENT_*` field,
/// and a client cannot take that identifier (issue 12.7).
#[test]
fn environment_is_changed_before_the_first_thread_journald() {
    require_root("strace and a private journald");
    let journald = Journald::start();
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let trace = dir.path().join("strace.out");
    let config = dir.path().join("app.toml");
    std::fs::write(&config, "").unwrap();
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let journal_stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = journald
        .command("strace")
        .args(["-f", "-o"])
        .arg(&trace)
        .args(["-e", "trace=execve,clone,clone3,getsockopt"])
        .args(["systemd-socket-activate", "-l"])
        .arg(&socket)
        .arg(format!("-EJOURNAL_STREAM={journal_stream}"))
        // strace forks the daemon: it must die with strace, not outlive the test.
        .args(["setpriv", "--pdeathsig", "KILL", "--"])
        .args([APP, "--config"])
        .arg(&config)
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .stderr(stderr)
        .die_with_test()
        .spawn()
        .expect("strace (apt-get install strace)");
    wait_until(Duration::from_secs(10), "the socket", || {
        socket.exists().then_some(())
    });
    assert_eq!(
        send(
            &socket,
            b"<13>Nov 25 21:57:27 app-daemon[1]: a client posing as the daemon\n"
        ),
        ""
    );
    let own = wait_until(Duration::from_secs(10), "the startup entry", || {
        let e = journald.entries("app-daemon");
        (!e.is_empty()).then_some(e)
    });
    let client = journald.wait_for("app", 1);
    let _ = child.kill();
    let _ = child.wait();

    assert!(own[0].get("MESSAGE").starts_with("serving "), "{own:?}");
    for e in &own {
        assert!(
            !e.0.keys().any(|k| k.starts_with("CLIENT_")),
            "a diagnostic with CLIENT_ fields: {e:?}"
        );
    }
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(client[0].get("MESSAGE"), "a client posing as the daemon");
    assert_eq!(client[0].get("CLIENT_UID"), "0");

    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let exec = lines
        .iter()
        .position(|l| l.contains(&format!("execve(\"{APP}\"")))
        .unwrap_or_else(|| panic!("no execve of the daemon in\n{trace}"));
    let after = &lines[exec..];
    let query = after
        .iter()
        .position(|l| l.contains("SO_ACCEPTCONN"))
        .unwrap_or_else(|| panic!("no SO_ACCEPTCONN query in\n{trace}"));
    let clone = after
        .iter()
        .position(|l| l.contains("clone3(") || l.contains("clone("))
        .unwrap_or_else(|| panic!("no thread started in\n{trace}"));
    assert!(
        query < clone,
        "a thread started before the inherited sockets were taken:\n{}",
        after[..=query.max(clone)].join("\n")
    );
}
