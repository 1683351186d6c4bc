//! Unit tests of `server::attribution`, on real processes and real pidfds.

use super::*;

use std::process::{Child, Command};

fn pidfd(pid: u32) -> OwnedFd {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
}

fn fields(s: &str) -> Arc<[u8]> {
    Arc::from(format!("CLIENT_COMM={s}\n").into_bytes())
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("running sleep")
}

/// `/proc/PID/stat`'s state letter, `None` once the process is reaped.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn a_live_process_is_resolved_once() {
    let cache = Attributions::new(false);
    let me = std::process::id() as i32;
    let first = cache.of_sender(me).expect("our own comm and cgroup");
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.starts_with("CLIENT_COMM="), "{text}");
    assert!(text.contains("CLIENT_CGROUP=/"), "{text}");
    let again = cache.of_sender(me).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "a hit hands out the same copy");
    assert_eq!(cache.len(), 1);
}

/// The stream path: the pidfd comes from the socket (`SO_PEERPIDFD`), and a hit needs the
/// connecting process and the cached one to hold the pid both.
#[test]
fn connections_of_one_process_share_their_fields() {
    let cache = Attributions::new(true);
    let me = std::process::id() as i32;
    let (a, _a) = std::os::unix::net::UnixStream::pair().unwrap();
    let (b, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let first = cache.of_peer(a.as_fd(), me).expect("resolved");
    let second = cache.of_peer(b.as_fd(), me).expect("resolved");
    assert!(Arc::ptr_eq(&first, &second));
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.contains("OBJECT_COMM="), "with objects: {text}");
}

/// Once the cached process has exited its pid can be freed (at reaping) and given to another
/// process: the entry must not be handed out for it. Checked when the process has exited and
/// not been reaped yet (a zombie: the last moment the entry could still be mistaken for it), and
/// after it is reaped (when the pid is free).
#[test]
fn an_exited_process_entry_is_never_reused() {
    let cache = Attributions::new(false);
    let mut child = sleeper();
    let pid = child.id();
    let now = Instant::now();
    cache.insert(pid as i32, pidfd(pid), fields("sleep"), now);
    assert!(cache.lookup(pid as i32, now).is_some(), "alive");
    child.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid) != Some('Z') {
        assert!(Instant::now() < deadline, "the child never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cache.lookup(pid as i32, now).is_none(), "exited");
    assert!(cache.is_empty(), "the entry dropped with its pidfd");
    cache.insert(pid as i32, pidfd(pid), fields("sleep"), now);
    child.wait().unwrap();
    assert_eq!(state(pid), None, "reaped");
    assert!(
        cache.lookup(pid as i32, now).is_none(),
        "reaped: the pid is free"
    );
    assert!(cache.is_empty());
}

/// The stream path with a client that has exited: nothing is read, nothing is cached.
#[test]
fn a_process_gone_before_the_reads_is_not_cached() {
    let cache = Attributions::new(false);
    let mut child = sleeper();
    let pid = child.id();
    let fd = pidfd(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(cache.resolve(pid as i32, fd, Instant::now()).is_none());
    assert!(cache.is_empty());
}

#[test]
fn entries_expire() {
    let cache = Attributions::new(false);
    let me = std::process::id();
    let now = Instant::now();
    cache.insert(me as i32, pidfd(me), fields("x"), now);
    let almost = now + TTL - Duration::from_millis(1);
    assert!(cache.lookup(me as i32, almost).is_some());
    assert!(cache.lookup(me as i32, now + TTL).is_none());
    assert!(cache.is_empty());
}

/// At most CAPACITY entries (pidfds): a fresh one displaces the oldest; expired ones go first.
#[test]
fn the_cache_is_capped() {
    let cache = Attributions::new(false);
    let me = std::process::id();
    let start = Instant::now();
    // Entries under made-up pids, each with a pidfd of this process.
    let at = |i: usize| start + Duration::from_micros(i as u64);
    for i in 0..CAPACITY {
        cache.insert(
            1_000_000 + i as i32,
            pidfd(me),
            fields(&i.to_string()),
            at(i),
        );
    }
    assert_eq!(cache.len(), CAPACITY);
    cache.insert(2_000_000, pidfd(me), fields("new"), at(CAPACITY));
    assert_eq!(cache.len(), CAPACITY);
    assert!(
        cache.lookup(1_000_000, at(CAPACITY)).is_none(),
        "the oldest went"
    );
    assert!(cache.lookup(1_000_001, at(CAPACITY)).is_some());
    assert!(cache.lookup(2_000_000, at(CAPACITY)).is_some());
    // All expired: one insertion clears them all.
    let later = at(CAPACITY) + TTL;
    cache.insert(3_000_000, pidfd(me), fields("later"), later);
    assert_eq!(cache.len(), 1);
}

/// Workers of one unit with one command have the same fields: one copy serves them all.
#[test]
fn equal_fields_are_stored_once() {
    let cache = Attributions::new(false);
    let me = std::process::id();
    let now = Instant::now();
    let a = cache.insert(1_000_001, pidfd(me), fields("worker"), now);
    let b = cache.insert(1_000_002, pidfd(me), fields("worker"), now);
    let c = cache.insert(1_000_003, pidfd(me), fields("other"), now);
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
}

/// Out of descriptors: every pidfd is given back and nothing is cached for a while.
#[test]
fn the_cache_gives_way_when_descriptors_run_out() {
    let cache = Attributions::new(false);
    let me = std::process::id();
    let now = Instant::now();
    cache.insert(me as i32, pidfd(me), fields("x"), now);
    assert!(cache.give_way(now), "closed a pidfd");
    assert!(cache.is_empty());
    assert!(!cache.give_way(now), "nothing more to close");
    let handed = cache.insert(me as i32, pidfd(me), fields("x"), now);
    assert_eq!(&*handed, b"CLIENT_COMM=x\n", "still handed out");
    assert!(cache.is_empty(), "but not cached");
    cache.insert(me as i32, pidfd(me), fields("x"), now + TTL);
    assert_eq!(cache.len(), 1, "cached again after a while");
}
