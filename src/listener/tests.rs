//! Unit tests of `listener`.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn settings(path: &Path) -> SocketSettings {
    SocketSettings {
        path: Some(path.to_owned()),
        mode: 0o660,
        group: None,
        datagram_path: None,
    }
}

#[test]
fn bind_sets_mode_replaces_stale_and_removes_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    // A stale socket: bound, then its listener closed without unlinking.
    drop(UnixListener::bind(&path).unwrap());
    let listeners = bind(&settings(&path)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    UnixStream::connect(&path).expect("the new socket answers");
    drop(listeners);
    assert!(!path.exists(), "socket removed on drop");
}

#[test]
fn bind_refuses_a_live_socket_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let err = bind(&settings(&path)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("another instance is listening on {}", path.display())
    );
    UnixStream::connect(&path).expect("the other instance's socket is untouched");
}

#[test]
fn bind_never_deletes_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = bind(&settings(&path)).unwrap_err();
    assert!(matches!(err, Error::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

/// Issue 12.5: `bind`, then `chown`/`chmod` by path, followed a symlink an attacker swapped
/// in between. An attacker thread replaces the socket with a symlink to a root-only file the
/// moment it appears; the file must never change, in 1,000 tries.
#[test]
fn a_symlink_swapped_in_never_changes_its_target() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("app.sock");
    let mut s = settings(&path);
    s.mode = 0o666;
    s.group = Some("65534".to_owned());
    let mut swapped = 0;
    for i in 0..1000 {
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (path, secret, stop) = (path.clone(), secret.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::symlink_metadata(&path).is_ok() {
                        let _ = std::fs::remove_file(&path);
                        return std::os::unix::fs::symlink(&secret, &path).is_ok();
                    }
                    std::hint::spin_loop();
                }
                false
            })
        };
        let bound = bind(&s);
        stop.store(true, Ordering::Relaxed);
        swapped += usize::from(attacker.join().unwrap());
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.gid()),
            (0o600, 0),
            "try {i}: the symlink's target was changed ({bound:?})"
        );
        drop(bound);
        let _ = std::fs::remove_file(&path);
    }
    assert!(swapped > 0, "the attacker never got to swap");
}

#[test]
fn a_world_writable_parent_is_refused_unless_sticky() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("app.sock");
    let err = bind(&settings(&path)).unwrap_err();
    assert!(err.to_string().contains("writable by other users"), "{err}");
    assert!(!path.exists());
    // Sticky and ours (root's, in this test): like /tmp, allowed.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bound = bind(&settings(&path)).unwrap();
    UnixStream::connect(&path).expect("the socket answers");
    drop(bound);
    assert!(!path.exists());
}

/// Needs root (to give the directory to another user), as the integration tests named
/// `*_root` do; CI runs as root.
#[test]
fn a_parent_owned_by_another_user_is_refused_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it gives a directory to uid 65534"
    );
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("theirs");
    std::fs::create_dir(&parent).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
    let path = parent.join("app.sock");
    let err = bind(&settings(&path)).unwrap_err();
    assert!(err.to_string().contains("owner uid 65534"), "{err}");
    assert!(!path.exists());
}

#[test]
fn under_umask_000_the_socket_is_never_reachable_before_its_mode_is_set() {
    // The socket is bound inside a private 0700 directory and appears at its path only
    // with its final mode: nothing is left behind in the parent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let bound = bind(&settings(&path)).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.sock"], "the temporary directory is gone");
    drop(bound);
}
