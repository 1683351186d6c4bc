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
        let e = journald.entries("app");
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
