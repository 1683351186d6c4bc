//! Unit tests of `journal::native`.

use super::*;

#[tokio::test]
async fn holds_entries_while_the_journal_is_away_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let first = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut journal = JournalSocket::new(path.clone());
    journal.send(b"one").await;
    let recv = |s: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 16];
        let n = s.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    assert_eq!(recv(&first), b"one");

    // journald goes away: the next entry waits, it is not dropped.
    drop(first);
    std::fs::remove_file(&path).unwrap();
    let pending = tokio::spawn(async move {
        journal.send(b"two").await;
        journal
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "nobody to take it yet");

    let second = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut journal = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("sent once the journal is back")
        .unwrap();
    assert_eq!(recv(&second), b"two");
    journal.send(b"three").await;
    assert_eq!(recv(&second), b"three");
}

#[tokio::test]
async fn batches_go_out_whole_and_in_order_through_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let entries: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("entry {i}").into_bytes())
        .collect();
    // A slow reader: the queue (net.unix.max_dgram_qlen) fills again and again.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 1000 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
            if got.len() % 100 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        got
    });
    let mut journal = JournalSocket::new(path);
    let slices: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let (mut sent, mut calls) = (0, 0);
    while sent < slices.len() {
        let n = journal.send_some(&slices[sent..]).await;
        assert!((1..=MMSG_BATCH).contains(&n), "{n}");
        sent += n;
        calls += 1;
    }
    assert!(calls < 1000, "one call per entry: no batching");
    assert_eq!(reader.join().unwrap(), entries);
}

/// A pacer that has seen a fill of `capacity` entries, then `wakes` single-entry refills
/// `1 / rate` seconds apart.
fn pacer_after(capacity: usize, rate: f64, wakes: u32) -> (Pacer, Instant) {
    let mut pacer = Pacer::default();
    let mut now = Instant::now();
    // Found full once; then a refill of the whole queue, drained at `rate`.
    pacer.full(now);
    now += Duration::from_secs_f64(capacity as f64 / rate);
    pacer.sent(capacity);
    pacer.full(now);
    for _ in 0..wakes {
        now += Duration::from_secs_f64(1.0 / rate);
        pacer.sent(1);
        pacer.full(now);
    }
    (pacer, now)
}

#[test]
fn no_pause_until_the_drain_rate_is_known() {
    let mut pacer = Pacer::default();
    pacer.sent(512);
    pacer.full(Instant::now());
    assert_eq!(pacer.pause(), None);
}

#[test]
fn a_large_queue_is_refilled_after_a_pause() {
    // systemd's 512 slots drained at 50k entries/s: half of them last 5.1 ms.
    let (pacer, _) = pacer_after(512, 50_000.0, 20);
    assert_eq!(pacer.pause(), Some(Pacer::MAX_PAUSE));
}

#[test]
fn a_small_queue_is_refilled_at_each_wake_up() {
    // The kernel's default of 10 slots drains in 0.2 ms: any pause would starve journald.
    let (pacer, _) = pacer_after(10, 50_000.0, 20);
    assert_eq!(pacer.pause(), None);
}

#[test]
fn a_run_that_nearly_emptied_the_queue_shortens_the_pause() {
    let (mut pacer, now) = pacer_after(512, 50_000.0, 20);
    pacer.sent(500);
    pacer.full(now + Duration::from_millis(10));
    // A quarter of 512 at 50k/s is 2.56 ms, less the timer's slack.
    let pause = pacer.pause().unwrap();
    assert!(
        pause > Duration::from_micros(1400) && pause < Duration::from_micros(1700),
        "{pause:?}"
    );
    // 500 entries drained in 4 ms: journald is faster than thought (125k/s at least), and
    // a quarter of the queue drains in 1 ms: no pause.
    pacer.sent(500);
    pacer.full(now + Duration::from_millis(14));
    assert_eq!(pacer.pause(), None);
}

#[test]
fn a_stall_before_the_rate_is_known_is_forgotten_at_the_next_run() {
    // The kernel's 10 slots (a first run of 30 from an idle sink overstates them);
    // journald stops right after, for a second, and takes 8 entries when it wakes.
    let mut pacer = Pacer::default();
    let mut now = Instant::now();
    pacer.sent(30);
    pacer.full(now);
    now += Duration::from_secs(1);
    pacer.sent(8);
    pacer.full(now);
    assert_eq!(pacer.pause(), Some(Pacer::MAX_PAUSE), "8 entries/s");
    // journald is back and drains the 10 entries in 0.2 ms: each refill after a pause is
    // the whole queue. Within a few pauses there are none: the sink refills at each
    // wake-up, as a small queue needs (the old pacer stayed at 4 ms per 10 entries).
    let mut pauses = 0;
    while let Some(pause) = pacer.pause() {
        pauses += 1;
        assert!(pauses <= 5, "still pausing {pause:?}: {pacer:?}");
        now += pause + Duration::from_micros(50);
        pacer.paused();
        pacer.sent(10);
        pacer.full(now);
    }
    for _ in 0..100 {
        now += Duration::from_micros(200);
        pacer.sent(10);
        pacer.full(now);
        assert_eq!(pacer.pause(), None, "{pacer:?}");
    }
}

#[test]
fn a_run_after_idling_measures_nothing() {
    // A fast journald: half of 512 slots drain in 1.3 ms, under the timer's resolution.
    let (mut pacer, mut now) = pacer_after(512, 200_000.0, 20);
    assert_eq!(pacer.pause(), None);
    for _ in 0..20 {
        // The sink waited for clients; then a hundred entries, then "full", a second
        // after the last "full": that second is the clients' pace, not journald's.
        pacer.idle();
        pacer.sent(100);
        now += Duration::from_secs(1);
        pacer.full(now);
    }
    assert_eq!(pacer.pause(), None);
}
