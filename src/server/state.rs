//! What the server's tasks share: the [`Context`] every connection gets, and the live [`Stats`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::config::Settings;
use crate::journal::SinkHandle;
use crate::ratelimit::{Key, RateLimiter};

/// Live figures, for `STATUS=` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections ended since start.
    pub closed: AtomicU64,
    pub messages: AtomicU64,
    pub suppressed: AtomicU64,
    /// Connections refused by `limits.max_connections` or `limits.max_connections_per_uid`.
    pub refused: AtomicU64,
    /// Clients connected now, per uid (per address for TCP), for `max_connections_per_uid`.
    per_client: Mutex<HashMap<Key, usize>>,
}

impl Stats {
    /// Counts a new client against `limits.max_connections` and, unless it is root,
    /// `limits.max_connections_per_uid`; says why if it must be refused. Both follow the
    /// settings live: a lowered limit refuses newcomers and closes no one.
    ///
    /// uid 0 is exempt from the per-uid limit: it is the system's own services (most run as
    /// root), which a shared cap would pit against each other, and root could stop the daemon
    /// anyway; it still counts towards `max_connections`.
    pub(super) fn join(&self, key: Key, max: usize, per_client: usize) -> Option<String> {
        let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.get(&key).copied().unwrap_or(0);
        if mine >= per_client && key != Key::Uid(0) {
            return Some(format!("too many connections from {key}"));
        }
        if self
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Some("too many connections".to_owned());
        }
        *counts.entry(key).or_insert(0) += 1;
        None
    }

    /// Counts in a connection carried over from the previous instance: it was admitted there,
    /// so no limit refuses it here (a lowered limit refuses newcomers, as on reload).
    pub(super) fn rejoin(&self, key: Key) {
        let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        self.clients.fetch_add(1, Ordering::AcqRel);
        *counts.entry(key).or_insert(0) += 1;
    }

    pub(super) fn leave(&self, key: Key) {
        let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }

    /// `2 clients, 1042 messages, 0 suppressed`: what `systemctl status` shows.
    pub fn summary(&self) -> String {
        let clients = self.clients.load(Ordering::Relaxed);
        format!(
            "{clients} client{}, {} messages, {} suppressed",
            if clients == 1 { "" } else { "s" },
            self.messages.load(Ordering::Relaxed),
            self.suppressed.load(Ordering::Relaxed)
        )
    }
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub sink: SinkHandle,
    pub stats: Arc<Stats>,
    pub limiter: Arc<RateLimiter>,
    /// `limits.max_buffered_bytes`, shared by every connection.
    pub budget: Arc<Budget>,
    pub shutdown: CancellationToken,
    /// systemd's fd store, when the unit has one: connections are handed over at shutdown
    /// instead of drained, and long-lived ones kept there while they live.
    pub store: Option<Arc<super::handover::Store>>,
    /// Clients' units and commands, resolved once per process (`journal.attribution`).
    pub attributions: Arc<super::attribution::Attributions>,
}
