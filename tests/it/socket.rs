//! The daemon's own socket (DESIGN §1.2): bind, mode, stale and live sockets, cleanup.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use crate::support::*;

#[test]
fn binds_with_mode_0660_and_removes_on_exit() {
    let mut daemon = DaemonBuilder::new().stdout_sink().start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    assert!(daemon.stop().success());
    assert!(!daemon.socket.exists());
}

#[test]
fn mode_is_configurable() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_SOCKET__MODE", "0600")
        .start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(daemon.stop().success());
}

#[test]
fn stale_socket_is_replaced() {
    let dir = temp_dir();
    let path = dir.path().join("app.sock");
    drop(UnixListener::bind(&path).unwrap()); // bound, never unlinked: stale
    let (code, _, stderr) = run_app_until_listening(&path);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn live_socket_is_refused_and_left_alone() {
    let dir = temp_dir();
    let path = dir.path().join("app.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let (code, _, stderr) = run_app(&["serve", "--socket", path.to_str().unwrap()], &[], b"");
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last().unwrap(),
        format!("app: another instance is listening on {}", path.display())
    );
    std::os::unix::net::UnixStream::connect(&path).expect("the live socket still answers");
}

#[test]
fn regular_file_is_never_deleted() {
    let dir = temp_dir();
    let path = dir.path().join("app.sock");
    std::fs::write(&path, "keep me").unwrap();
    let (code, _, stderr) = run_app(&["serve", "--socket", path.to_str().unwrap()], &[], b"");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

/// Starts `app serve --socket path`, checks it answers, stops it; returns its exit code.
fn run_app_until_listening(path: &std::path::Path) -> (i32, String, String) {
    let child = std::process::Command::new(APP)
        .args([
            "serve",
            "--sink",
            "stdout",
            "--socket",
            path.to_str().unwrap(),
        ])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the daemon to answer",
        || std::os::unix::net::UnixStream::connect(path).ok(),
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::new(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
