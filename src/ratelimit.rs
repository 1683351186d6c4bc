//! Per-client rate limit (DESIGN §5): at most `rate_limit_burst` messages per
//! `rate_limit_interval` for each client uid (each address, for TCP clients), journald-style
//! fixed windows. The excess is dropped and counted; each window that dropped something is
//! reported once, when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Whose budget a message counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Uid(u32),
    Addr(IpAddr),
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

impl RateLimiter {
    /// Admits up to `n` messages for `key` at `now`. One lock per batch, not per message.
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
        let State { windows, ended } = &mut *state;
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
        let allowed = n.min(burst.saturating_sub(w.used));
        w.used += allowed;
        w.dropped += n - allowed;
        Admission {
            allowed,
            window: w.start,
        }
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

    #[test]
    fn burst_per_window_then_one_exact_report() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let a = Key::Uid(1000);
        let b = Key::Uid(0);
        // 3× the burst in one window, in uneven batches.
        let mut allowed = 0;
        for n in [40, 70, 100, 90] {
            allowed += rl.admit(a, n, 100, 30 * SEC, t0).allowed;
        }
        assert_eq!(allowed, 100);
        assert_eq!(
            rl.admit(b, 50, 100, 30 * SEC, t0).allowed,
            50,
            "another uid is unaffected"
        );
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
    fn a_new_window_starts_fresh_and_the_old_one_is_still_reported() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        let k = Key::Addr("127.0.0.1".parse().unwrap());
        assert_eq!(rl.admit(k, 15, 10, SEC, t0).allowed, 10);
        let later = rl.admit(k, 15, 10, SEC, t0 + 2 * SEC);
        assert_eq!(later.allowed, 10);
        assert_eq!(later.window, t0 + 2 * SEC);
        let reports = rl.take_reports(SEC, t0 + 3 * SEC);
        assert_eq!(
            reports,
            vec![Report { key: k, dropped: 5 }, Report { key: k, dropped: 5 }]
        );
    }

    #[test]
    fn zero_burst_is_off() {
        let rl = RateLimiter::default();
        assert_eq!(
            rl.admit(Key::Uid(1), 1_000_000, 0, SEC, Instant::now())
                .allowed,
            1_000_000
        );
    }
}
