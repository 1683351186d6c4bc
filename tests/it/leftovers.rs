//! Nothing the suite starts outlives the test that started it (issue 19): not on success, not
//! on panic, not when the test's thread ends without cleaning up.

use std::time::Duration;

use crate::support::*;

fn alive(pid: u32) -> bool {
    // A zombie is dead, it just has not been reaped yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn kill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

/// The held journald's holder restarts journald whenever it exits; killing the holder must take
/// journald along (it used to be re-parented to init and run on).
#[test]
fn held_journald_dies_with_its_holder_journald() {
    let journald = Journald::start_held();
    let pid = journald.journald_pid();
    assert!(alive(pid));
    drop(journald);
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !alive(pid)
    });
    if !gone {
        kill(pid);
    }
    assert!(
        gone,
        "journald {pid} still running 5 s after its holder was killed"
    );
}

/// A test whose thread ends without dropping what it started (forgotten, or the thread died)
/// still leaves no daemon behind.
#[test]
fn a_daemon_dies_with_the_thread_that_started_it() {
    let pid = std::thread::spawn(|| {
        let daemon = DaemonBuilder::new().stdout_sink().start();
        let pid = daemon.pid();
        std::mem::forget(daemon);
        pid
    })
    .join()
    .unwrap();
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !alive(pid)
    });
    if !gone {
        kill(pid);
    }
    assert!(
        gone,
        "daemon {pid} still running 5 s after its test thread ended"
    );
}
