//! What runs beside the accept loops (DESIGN §4): reload on SIGHUP, `STATUS=`, the watchdog and
//! the idle exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Error;
use crate::journal::{self, SinkHandle};
use crate::logging::LogHandle;
use crate::ratelimit::RateLimiter;
use crate::server::state::Stats;
use crate::systemd::fdstore::{FdStore, FromStore};
use crate::systemd::notify::Notifier;

use super::reload::{ReloadState, ReloadStatus};

/// Re-reads the configuration (all layers) for a reload.
pub type Reloader = Box<dyn FnMut() -> Result<Settings, Error> + Send>;

/// How the outside world steers a running server. Production wires signals and systemd into
/// it; tests pass what they control.
pub struct Control {
    /// Cancelled to stop (SIGTERM/SIGINT in production).
    pub shutdown: CancellationToken,
    /// One message per reload request (SIGHUP in production).
    pub reload: Option<mpsc::Receiver<()>>,
    pub reloader: Option<Reloader>,
    pub notifier: Notifier,
    /// `WATCHDOG_USEC`, when systemd wants keep-alive pings.
    pub watchdog: Option<Duration>,
    /// Applies `service.log_level` on reload.
    pub log: Option<LogHandle>,
    /// Where each reload's outcome is written for `app reload` to wait on.
    pub reload_status: Option<ReloadStatus>,
    /// systemd's fd store, when the unit has one (`$FDSTORE`): connections are handed over
    /// to it at shutdown instead of drained.
    pub fd_store: Option<FdStore>,
    /// What the fd store gave back at start: connections carried over, the state record.
    pub from_store: FromStore,
}

impl Control {
    /// A server stopped by `shutdown` and nothing else: no reload, no notifications.
    pub fn new(shutdown: CancellationToken) -> Self {
        Control {
            shutdown,
            reload: None,
            reloader: None,
            notifier: Notifier::disabled(),
            watchdog: None,
            log: None,
            reload_status: None,
            fd_store: None,
            from_store: FromStore::default(),
        }
    }
}

/// How often the supervisor looks at the figures and the idle clock.
const TICK: Duration = Duration::from_millis(250);
/// `STATUS=` is sent when the figures change, but not more often than this.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Counts the wake-ups of one accept loop, so the watchdog can tell it still runs.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The watchdog's rule: ping only if every accept loop woke up since the last check.
#[derive(Debug)]
pub struct Watchdog {
    hearts: Vec<Arc<Heartbeat>>,
    seen: Vec<u64>,
}

impl Watchdog {
    pub fn new(hearts: Vec<Arc<Heartbeat>>) -> Self {
        let seen = hearts.iter().map(|h| h.0.load(Ordering::Relaxed)).collect();
        Watchdog { hearts, seen }
    }

    /// True once every accept loop has run at least once: before that, a check would only
    /// measure how long the runtime took to poll them the first time.
    pub fn started(&self) -> bool {
        self.hearts.iter().all(|h| h.0.load(Ordering::Relaxed) > 0)
    }

    /// True when every accept loop made progress since the previous call.
    pub fn all_alive(&mut self) -> bool {
        let mut alive = true;
        for (heart, seen) in self.hearts.iter().zip(self.seen.iter_mut()) {
            let now = heart.0.load(Ordering::Relaxed);
            alive &= now != *seen;
            *seen = now;
        }
        alive
    }
}

pub(crate) struct Supervisor {
    pub settings: watch::Sender<Arc<Settings>>,
    pub stats: Arc<Stats>,
    pub sink: SinkHandle,
    pub limiter: Arc<RateLimiter>,
    /// Suppression reports waiting for room in the sink's queue.
    pub reports: std::collections::VecDeque<journal::Batch>,
    pub control: Control,
    /// Idle exit applies only when systemd holds the socket for us.
    pub inherited: bool,
    pub watchdog: Watchdog,
}

impl Supervisor {
    /// Runs until shutdown; cancels it itself when the idle timeout expires.
    pub async fn run(&mut self) {
        let shutdown = self.control.shutdown.clone();
        let mut reload = self.control.reload.take();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watchdog_every = self.control.watchdog.map(|w| w / 2);
        // (The placeholder period is never used: the branch is disabled without a watchdog.)
        let mut watchdog_tick =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        watchdog_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status = StatusLine::default();
        let mut refusals = Refusals::default();
        let mut idle = IdleClock::new(&self.stats);
        let mut heap = HeapTrim::default();
        let mut watchdog_failing = false;
        let started = Instant::now();
        let mut reloads = 0u64;
        if let Some(file) = &self.control.reload_status {
            file.write(0, ReloadState::Done(Ok(())));
        }

        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = recv(&mut reload) => {
                    reloads += 1;
                    self.reload(reloads);
                }
                _ = tick.tick() => {
                    self.report_suppressed();
                    refusals.report(&self.stats, &self.settings.borrow());
                    status.update(&self.stats, &self.control.notifier);
                    heap.tick(&self.stats, Instant::now());
                    let timeout = self.settings.borrow().service.idle_timeout;
                    if self.inherited && idle.expired(&self.stats, timeout) {
                        tracing::info!(
                            "no clients for {}: exiting (systemd keeps the socket)",
                            humantime::format_duration(timeout)
                        );
                        shutdown.cancel();
                        return;
                    }
                }
                _ = watchdog_tick.tick(), if watchdog_every.is_some() => {
                    let every = watchdog_every.unwrap_or_default();
                    if !self.watchdog.started() && started.elapsed() < every {
                        // The accept loops have not run yet: look again in a moment rather
                        // than a false alarm now and the first ping half an interval late.
                        watchdog_tick.reset_after(Duration::from_millis(5));
                    } else if self.watchdog.all_alive() {
                        self.control.notifier.watchdog();
                        watchdog_failing = false;
                    } else if !watchdog_failing {
                        tracing::error!("an accept loop stopped making progress: withholding WATCHDOG=1");
                        watchdog_failing = true;
                    }
                }
            }
        }
    }

    /// One entry per rate-limit window that dropped messages, when that window ends. Never
    /// waits on the journal: a report that finds the queue full waits for a later tick, so a
    /// stalled journal cannot stop the watchdog pings.
    fn report_suppressed(&mut self) {
        let interval = self.settings.borrow().limits.rate_limit_interval;
        self.queue_reports(interval);
        while let Some(batch) = self.reports.pop_front() {
            if let Err(batch) = self.sink.try_send(batch) {
                self.reports.push_front(batch);
                break;
            }
        }
    }

    /// Hands every pending suppression report to the sink now, windows still open included,
    /// waiting for room in its queue: at stop, at idle exit, and before a handover of the
    /// sockets to a new process (whose limiter starts empty), so that no count is lost.
    pub(crate) async fn write_pending_reports(&mut self) {
        self.queue_reports(Duration::ZERO);
        while let Some(batch) = self.reports.pop_front() {
            self.sink.send(batch).await;
        }
    }

    /// Turns the reports of windows older than `interval` into entries queued in `reports`.
    fn queue_reports(&mut self, interval: Duration) {
        let identifier = self.settings.borrow().journal.identifier.clone();
        for report in self.limiter.take_reports(interval, Instant::now()) {
            let message = format!("suppressed {} messages from {}", report.dropped, report.key);
            let about = report.key.to_string();
            let batch =
                journal::entry::notice(self.sink.target(), &identifier, 4, &message, &about);
            self.reports.push_back(batch);
        }
    }

    /// Reload number `seq`: its outcome goes to the log, `STATUS=` and the reload status file.
    fn reload(&mut self, seq: u64) {
        let notifier = &self.control.notifier;
        notifier.reloading();
        let status = self.control.reload_status.as_ref();
        if let Some(file) = status {
            file.write(seq, ReloadState::Reloading);
        }
        let Some(reloader) = self.control.reloader.as_mut() else {
            tracing::warn!("reload requested, but this server has no configuration source");
            if let Some(file) = status {
                file.write(seq, ReloadState::Done(Ok(())));
            }
            notifier.ready();
            return;
        };
        let outcome = match reloader() {
            Ok(new) => {
                let old = self.settings.borrow().clone();
                let applied = apply_live(&old, new);
                if applied.service.log_level != old.service.log_level
                    && let Some(log) = &self.control.log
                    && let Err(e) = log.set_level(&applied.service.log_level)
                {
                    tracing::warn!("service.log_level: {e}");
                }
                if let Some(store) = &self.control.fd_store {
                    store.check_room(applied.limits.max_connections.get() as u64);
                }
                self.settings.send_replace(Arc::new(applied));
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!("reload failed, keeping the running configuration: {e}");
                notifier.status(&format!("reload failed: {e}"));
                Err(e.to_string())
            }
        };
        if let Some(file) = status {
            file.write(seq, ReloadState::Done(outcome));
        }
        notifier.ready();
    }
}

/// The new settings, less what cannot change without a restart (which is kept, with a warning).
pub fn apply_live(old: &Settings, new: Settings) -> Settings {
    let needs_restart = [
        ("socket.path", old.socket.path != new.socket.path),
        ("socket.mode", old.socket.mode != new.socket.mode),
        ("socket.group", old.socket.group != new.socket.group),
        (
            "socket.datagram_path",
            old.socket.datagram_path != new.socket.datagram_path,
        ),
        ("journal.sink", old.journal.sink != new.journal.sink),
    ];
    for (key, changed) in needs_restart {
        if changed {
            tracing::warn!("{key} changed: it takes effect when the service restarts");
        }
    }
    let mut applied = new;
    applied.socket = old.socket.clone();
    applied.journal.sink = old.journal.sink;
    applied
}

async fn recv(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `STATUS=` text, sent when it changes and at most once a second.
#[derive(Default)]
struct StatusLine {
    last: String,
    sent_at: Option<Instant>,
}

impl StatusLine {
    fn update(&mut self, stats: &Stats, notifier: &Notifier) {
        if !notifier.is_enabled() {
            return;
        }
        let text = stats.summary();
        let due = self.sent_at.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        if text != self.last && due {
            notifier.status(&text);
            self.last = text;
            self.sent_at = Some(Instant::now());
        }
    }
}

/// Connection refusals, reported as one warning per burst (at most one per
/// [`REFUSALS_EVERY`]), never one per refused client.
#[derive(Default)]
struct Refusals {
    reported: u64,
    at: Option<Instant>,
}

const REFUSALS_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    fn report(&mut self, stats: &Stats, settings: &Settings) {
        let refused = stats.refused.load(Ordering::Relaxed);
        let due = self.at.is_none_or(|t| t.elapsed() >= REFUSALS_EVERY);
        if refused > self.reported && due {
            tracing::warn!(
                "refused {} connection{}: too many connections (limits.max_connections = {}, \
                 limits.max_connections_per_uid = {})",
                refused - self.reported,
                if refused - self.reported == 1 {
                    ""
                } else {
                    "s"
                },
                settings.limits.max_connections,
                settings.limits.max_connections_per_uid
            );
            self.reported = refused;
            self.at = Some(Instant::now());
        }
    }
}

/// Gives the memory freed after a burst back to the system. Clients that all send at once
/// while the journal pushes back each hold a read buffer and a batch for a moment; glibc keeps
/// that freed memory in its arenas, so without this a daemon that once served a burst keeps
/// its peak RSS for good, however few clients stay connected.
#[derive(Debug, Default)]
struct HeapTrim {
    /// Connections opened and closed and messages logged when last looked at.
    seen: u64,
    /// There was activity since the last trim.
    pending: bool,
    last: Option<Instant>,
}

impl HeapTrim {
    /// Trimming walks the heap: at most this often, however spiky the traffic.
    const EVERY: Duration = Duration::from_secs(5);

    /// Trims once a tick passes without activity after some.
    fn tick(&mut self, stats: &Stats, now: Instant) -> bool {
        let activity = stats.accepted.load(Ordering::Relaxed)
            + stats.closed.load(Ordering::Relaxed)
            + stats.messages.load(Ordering::Relaxed);
        if activity != self.seen {
            self.seen = activity;
            self.pending = true;
            return false;
        }
        if !self.pending || self.last.is_some_and(|t| now - t < HeapTrim::EVERY) {
            return false;
        }
        self.pending = false;
        self.last = Some(now);
        release_free_heap();
        true
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    // SAFETY: malloc_trim(3) only returns free pages to the kernel; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

/// Measures how long the server has had no client at all.
struct IdleClock {
    since: Instant,
    /// Connections opened and closed when last looked at: any change is activity.
    seen: (u64, u64),
}

impl IdleClock {
    fn new(stats: &Stats) -> Self {
        IdleClock {
            since: Instant::now(),
            seen: Self::activity(stats),
        }
    }

    fn activity(stats: &Stats) -> (u64, u64) {
        (
            stats.accepted.load(Ordering::Relaxed),
            stats.closed.load(Ordering::Relaxed),
        )
    }

    /// True once there has been no client for `timeout`. The clock restarts whenever a
    /// connection opened or closed since the last look, so it may run up to one tick late,
    /// never early.
    fn expired(&mut self, stats: &Stats, timeout: Duration) -> bool {
        let now = Self::activity(stats);
        if stats.clients.load(Ordering::Relaxed) > 0 || now != self.seen {
            self.seen = now;
            self.since = Instant::now();
            return false;
        }
        !timeout.is_zero() && self.since.elapsed() >= timeout
    }
}

#[cfg(test)]
mod tests;
