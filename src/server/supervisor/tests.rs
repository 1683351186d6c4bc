//! Unit tests of `server::supervisor`.

use super::*;

#[test]
fn the_heap_is_trimmed_once_a_burst_is_over_and_not_more_often_than_every_5s() {
    let stats = Stats::default();
    let mut heap = HeapTrim::default();
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    assert!(!heap.tick(&stats, at(0)), "nothing happened yet");
    stats.accepted.fetch_add(100, Ordering::Relaxed);
    assert!(!heap.tick(&stats, at(250)), "busy");
    assert!(heap.tick(&stats, at(500)), "a quiet tick after the burst");
    assert!(!heap.tick(&stats, at(750)), "once per burst");
    stats.messages.fetch_add(1, Ordering::Relaxed);
    assert!(!heap.tick(&stats, at(1000)), "busy again");
    assert!(!heap.tick(&stats, at(1250)), "too soon after the last trim");
    assert!(heap.tick(&stats, at(5600)), "the burst's memory, later");
}

#[test]
fn watchdog_waits_for_the_first_beat() {
    let a = Arc::new(Heartbeat::default());
    let w = Watchdog::new(vec![a.clone()]);
    assert!(!w.started());
    a.beat();
    assert!(w.started());
}

#[test]
fn watchdog_needs_every_loop_to_progress() {
    let a = Arc::new(Heartbeat::default());
    let b = Arc::new(Heartbeat::default());
    let mut w = Watchdog::new(vec![a.clone(), b.clone()]);
    assert!(!w.all_alive(), "nobody beat yet");
    a.beat();
    b.beat();
    assert!(w.all_alive());
    a.beat(); // b is stuck
    assert!(!w.all_alive());
    a.beat();
    b.beat();
    assert!(w.all_alive());
    assert!(
        Watchdog::new(vec![]).all_alive(),
        "no accept loop: the supervisor's tick is proof enough"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_clock_counts_only_time_without_clients() {
    let stats = Stats::default();
    let mut idle = IdleClock::new(&stats);
    let timeout = Duration::from_secs(2);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert!(!idle.expired(&stats, timeout));
    // A client connects and leaves between two looks: the clock restarts.
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    stats.closed.fetch_add(1, Ordering::Relaxed);
    tokio::time::advance(Duration::from_millis(600)).await;
    assert!(!idle.expired(&stats, timeout));
    tokio::time::advance(Duration::from_millis(1900)).await;
    assert!(!idle.expired(&stats, timeout));
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(idle.expired(&stats, timeout));
    // Connected clients keep it from expiring.
    stats.clients.fetch_add(1, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!idle.expired(&stats, timeout));
    // It leaves: the clock starts at its departure, not at the last look.
    stats.clients.fetch_sub(1, Ordering::Relaxed);
    stats.closed.fetch_add(1, Ordering::Relaxed);
    assert!(!idle.expired(&stats, timeout));
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(!idle.expired(&stats, timeout));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(idle.expired(&stats, timeout));
    assert!(!idle.expired(&stats, Duration::ZERO));
}
