//! Per-client rate limit (DESIGN §5): at most `rate_limit_burst` messages per
//! `rate_limit_interval` for each client uid (each address, for TCP clients), journald-style
//! fixed windows. A client whose budget is spent is not read until its window ends (its writes
//! block in the kernel: backpressure); what it had already sent past the budget in the read that
//! spent it is dropped and counted, and each window that dropped something is reported once,
//! when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::peer::Peer;

/// Whose budget a message counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Uid(u32),
    Addr(IpAddr),
}

impl Key {
    /// A Unix client's uid, a TCP client's address.
    pub fn of(peer: &Peer) -> Key {
        match peer {
            Peer::Unix { uid, .. } => Key::Uid(*uid),
            Peer::Tcp(addr) => Key::Addr(addr.ip()),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Uid(uid) => write!(f, "uid {uid}"),
            Key::Addr(addr) => write!(f, "address {addr}"),
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    used: u64,
    dropped: u64,
}

/// The verdict on a batch of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// How many of the messages, from the first, may be logged.
    pub allowed: u64,
    /// When the window that decided started: identifies it, so a client is told once per window.
    pub window: Instant,
}

/// A window that ended after dropping messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub key: Key,
    pub dropped: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<Key, Window>,
    /// Windows that ended with drops, noticed on admission, not yet reported.
    ended: Vec<Report>,
}

impl State {
    /// `key`'s current window, a fresh one if the last has ended (which is then kept for its
    /// report if it dropped anything).
    fn window(&mut self, key: Key, interval: Duration, now: Instant) -> &mut Window {
        let State { windows, ended } = self;
        let w = windows.entry(key).or_insert(Window {
            start: now,
            used: 0,
            dropped: 0,
        });
        if now.duration_since(w.start) >= interval {
            if w.dropped > 0 {
                ended.push(Report {
                    key,
                    dropped: w.dropped,
                });
            }
            *w = Window {
                start: now,
                used: 0,
                dropped: 0,
            };
        }
        w
    }
}

impl RateLimiter {
    /// Reserves up to `n` messages of `key`'s budget at `now`, before they are encoded. One lock
    /// per read, not per message: [`RateLimiter::settle`] gives back what the read did not use
    /// and records what it dropped.
    pub fn admit(
        &self,
        key: Key,
        n: u64,
        burst: u64,
        interval: Duration,
        now: Instant,
    ) -> Admission {
        if burst == 0 {
            return Admission {
                allowed: n,
                window: now,
            };
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let w = state.window(key, interval, now);
        let allowed = n.min(burst.saturating_sub(w.used));
        w.used += allowed;
        Admission {
            allowed,
            window: w.start,
        }
    }

    /// Closes an admission: `unused` reserved messages go back to the window they came from (if
    /// it is still current), and `dropped` messages are counted for its report.
    pub fn settle(&self, key: Key, admission: Admission, unused: u64, dropped: u64) {
        if unused == 0 && dropped == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.windows.get_mut(&key) {
            Some(w) if w.start == admission.window => {
                w.used = w.used.saturating_sub(unused);
                w.dropped += dropped;
            }
            // The window ended in between (the supervisor reported it): report these on their own.
            _ if dropped > 0 => state.ended.push(Report { key, dropped }),
            _ => {}
        }
    }

    /// When `key` has spent its budget: the end of its window, until which it is not read.
    pub fn paused_until(
        &self,
        key: Key,
        burst: u64,
        interval: Duration,
        now: Instant,
    ) -> Option<Admission> {
        if burst == 0 {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let w = state.windows.get(&key)?;
        (w.used >= burst && now.duration_since(w.start) < interval).then_some(Admission {
            allowed: 0,
            window: w.start,
        })
    }

    /// Every window that has ended with drops since the last call, and forgets idle clients.
    pub fn take_reports(&self, interval: Duration, now: Instant) -> Vec<Report> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { windows, ended } = &mut *state;
        let mut reports = std::mem::take(ended);
        windows.retain(|&key, w| {
            if now.duration_since(w.start) < interval {
                return true;
            }
            if w.dropped > 0 {
                reports.push(Report {
                    key,
                    dropped: w.dropped,
                });
            }
            false
        });
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Admits `n` messages of which all are there: the excess is dropped.
    fn take(
        rl: &RateLimiter,
        key: Key,
        n: u64,
        burst: u64,
        interval: Duration,
        now: Instant,
    ) -> u64 {
        let a = rl.admit(key, n, burst, interval, now);
        rl.settle(key, a, 0, n - a.allowed);
        a.allowed
    }

    #[test]
    fn burst_per_window_then_one_exact_report() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let a = Key::Uid(1000);
        let b = Key::Uid(0);
        // 3× the burst in one window, in uneven batches.
        let mut allowed = 0;
        for n in [40, 70, 100, 90] {
            allowed += take(&rl, a, n, 100, 30 * SEC, t0);
        }
        assert_eq!(allowed, 100);
        assert_eq!(
            rl.paused_until(a, 100, 30 * SEC, t0 + SEC)
                .map(|p| p.window),
            Some(t0),
            "spent: not read until the window ends"
        );
        assert_eq!(rl.paused_until(a, 100, 30 * SEC, t0 + 30 * SEC), None);
        assert_eq!(
            take(&rl, b, 50, 100, 30 * SEC, t0),
            50,
            "another uid is unaffected"
        );
        assert_eq!(rl.paused_until(b, 100, 30 * SEC, t0), None);
        assert_eq!(
            rl.take_reports(30 * SEC, t0 + SEC),
            vec![],
            "not before the window ends"
        );
        assert_eq!(
            rl.take_reports(30 * SEC, t0 + 30 * SEC),
            vec![Report {
                key: a,
                dropped: 200
            }]
        );
        assert_eq!(
            rl.take_reports(30 * SEC, t0 + 31 * SEC),
            vec![],
            "reported once"
        );
    }

    #[test]
    fn unused_reservations_are_given_back() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let k = Key::Uid(7);
        // A read that might hold 8 messages held 3.
        let a = rl.admit(k, 8, 10, SEC, t0);
        assert_eq!(a.allowed, 8);
        rl.settle(k, a, 5, 0);
        assert_eq!(rl.admit(k, 20, 10, SEC, t0).allowed, 7);
        assert_eq!(
            rl.take_reports(SEC, t0 + 2 * SEC),
            vec![],
            "nothing dropped"
        );
    }

    #[test]
    fn a_new_window_starts_fresh_and_the_old_one_is_still_reported() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let k = Key::Addr("127.0.0.1".parse().unwrap());
        assert_eq!(take(&rl, k, 15, 10, SEC, t0), 10);
        let later = rl.admit(k, 15, 10, SEC, t0 + 2 * SEC);
        assert_eq!(later.allowed, 10);
        assert_eq!(later.window, t0 + 2 * SEC);
        rl.settle(k, later, 0, 5);
        let reports = rl.take_reports(SEC, t0 + 3 * SEC);
        assert_eq!(
            reports,
            vec![Report { key: k, dropped: 5 }, Report { key: k, dropped: 5 }]
        );
    }

    #[test]
    fn zero_burst_is_off() {
        let rl = RateLimiter::default();
        let k = Key::Uid(1);
        assert_eq!(
            rl.admit(k, 1_000_000, 0, SEC, Instant::now()).allowed,
            1_000_000
        );
        assert_eq!(rl.paused_until(k, 0, SEC, Instant::now()), None);
    }
}
