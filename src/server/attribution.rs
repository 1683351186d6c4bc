//! Who a client is, resolved once per process rather than once per connection: a small cache
//! of [`Attribution`]s by pid, handing out the encoded journal fields for connections (and
//! datagrams) of one process to share.
//!
//! A pid is only a number, so each entry keeps a pidfd of the process it was read from. A later
//! client with the same pid is that process if the process is still running: a process holds
//! its pid until it is reaped, and no other process can have it meanwhile. [`peer::running`]
//! asks the kernel (a `poll` of the pidfd); never by pid alone. (Holding the pid lasts a little
//! longer, while the process is a zombie, but what tells a zombie from a reaped process —
//! `pidfd_send_signal(0)` — is forbidden by `attribute-to-units.conf`, and an exited process is
//! not resolved afresh either.)
//!
//! Entries expire after [`TTL`]: a process can change its command (`prctl(PR_SET_NAME)`,
//! `exec`) or be moved to another cgroup, and what the cache hands out is at most that old
//! (README "Journal fields"). At most [`CAPACITY`] entries, one pidfd each; when descriptors run
//! out the cache empties and stops caching for a while ([`Attributions::give_way`]), so it never
//! holds one a connection needs.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::journal::entry::encode_fields;
use crate::peer::{self, Attribution, PeerPidfd};

/// How long an entry is handed out: long enough for a burst of connections from one process,
/// short enough that a renamed or moved process is named right soon after.
pub const TTL: Duration = Duration::from_secs(1);

/// Entries at most, each a pidfd.
pub const CAPACITY: usize = 256;

/// The cache; one per daemon, shared by every connection and the datagram loop.
#[derive(Debug)]
pub struct Attributions {
    /// Whether the fields include `OBJECT_*` ([`peer::sends_object_fields`]).
    objects: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<i32, Entry>,
    /// Nothing is cached before this: descriptors ran out ([`Attributions::give_way`]).
    paused_until: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    /// The process the fields were read from.
    pidfd: OwnedFd,
    fields: Arc<[u8]>,
    at: Instant,
}

impl Attributions {
    pub fn new(objects: bool) -> Self {
        Attributions {
            objects,
            inner: Mutex::default(),
        }
    }

    /// The fields for the stream client at the other end of `socket`, whose `SO_PEERCRED` pid
    /// is `pid`; `None` when nothing could be resolved.
    pub fn of_peer(&self, socket: BorrowedFd<'_>, pid: i32) -> Option<Arc<[u8]>> {
        if pid <= 0 {
            return None;
        }
        let mut pidfd = PeerPidfd::of(socket);
        if matches!(pidfd, PeerPidfd::Exhausted) {
            self.give_way(Instant::now());
            pidfd = PeerPidfd::of(socket);
        }
        match pidfd {
            PeerPidfd::Held(client) => self.of_pidfd(pid, client, Instant::now()),
            // Before Linux 6.5 there is no pidfd to tell the client from a later holder of its
            // pid: read uncached, as the connection is handled.
            PeerPidfd::Unsupported => self.encode(&Attribution::read_proc(pid)),
            PeerPidfd::Gone | PeerPidfd::Exhausted => None,
        }
    }

    /// The fields for the sender of a datagram, whose `SCM_CREDENTIALS` pid is `pid`. A
    /// datagram brings no pidfd: a miss opens one for whoever has the pid now (README "Journal
    /// fields" says what that leaves open).
    pub fn of_sender(&self, pid: i32) -> Option<Arc<[u8]>> {
        if pid <= 0 {
            return None;
        }
        let now = Instant::now();
        if let Some(fields) = self.lookup(pid, now) {
            return Some(fields);
        }
        let raw = rustix::process::Pid::from_raw(pid)?;
        match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => self.resolve(pid, pidfd, now),
            Err(rustix::io::Errno::SRCH) => None,
            Err(e) => {
                if matches!(e, rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) {
                    self.give_way(now);
                }
                self.encode(&Attribution::read_proc(pid))
            }
        }
    }

    /// A stream client's fields, `client` being its pidfd: the cached ones if the cached
    /// process is the client — both are running with the same pid, so they are one process —
    /// else read now and cached with `client`.
    fn of_pidfd(&self, pid: i32, client: OwnedFd, now: Instant) -> Option<Arc<[u8]>> {
        if let Some(fields) = self.lookup(pid, now)
            && peer::running(client.as_fd())
        {
            return Some(fields);
        }
        self.resolve(pid, client, now)
    }

    /// Reads the process behind `pidfd` and caches what was read.
    fn resolve(&self, pid: i32, pidfd: OwnedFd, now: Instant) -> Option<Arc<[u8]>> {
        let fields = self.encode(&Attribution::read_checked(pid, pidfd.as_fd()))?;
        Some(self.insert(pid, pidfd, fields, now))
    }

    fn encode(&self, who: &Attribution) -> Option<Arc<[u8]>> {
        (!who.is_empty()).then(|| encode_fields(who.fields(self.objects)))
    }

    /// The cached fields for `pid`, if the entry is fresh and its process still runs (and so
    /// holds `pid`). A stale or dead entry is dropped, and with it its pidfd.
    fn lookup(&self, pid: i32, now: Instant) -> Option<Arc<[u8]>> {
        let mut inner = self.lock();
        let entry = inner.entries.get(&pid)?;
        if now.saturating_duration_since(entry.at) < TTL && peer::running(entry.pidfd.as_fd()) {
            return Some(entry.fields.clone());
        }
        inner.entries.remove(&pid);
        None
    }

    /// Caches `fields` for the process behind `pidfd` (unless caching is paused) and returns
    /// them — or an equal copy already cached for another process: the workers of one unit
    /// share one.
    fn insert(&self, pid: i32, pidfd: OwnedFd, fields: Arc<[u8]>, now: Instant) -> Arc<[u8]> {
        let mut inner = self.lock();
        let fields = inner
            .entries
            .values()
            .find(|e| e.fields == fields)
            .map_or(fields, |e| e.fields.clone());
        if inner.paused_until.is_some_and(|until| now < until) {
            return fields;
        }
        inner.paused_until = None;
        if inner.entries.len() >= CAPACITY && !inner.entries.contains_key(&pid) {
            inner
                .entries
                .retain(|_, e| now.saturating_duration_since(e.at) < TTL);
            if inner.entries.len() >= CAPACITY {
                let oldest = inner
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(&p, _)| p);
                inner
                    .entries
                    .remove(&oldest.expect("a full cache has entries"));
            }
        }
        let entry = Entry {
            pidfd,
            fields: fields.clone(),
            at: now,
        };
        inner.entries.insert(pid, entry);
        fields
    }

    /// Descriptors ran out (EMFILE, ENFILE): closes every cached pidfd and caches nothing for
    /// [`TTL`], so that the cache never holds descriptors the daemon's clients need. True if
    /// that closed any.
    pub fn give_way(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let freed = !inner.entries.is_empty();
        inner.entries.clear();
        inner.paused_until = Some(now + TTL);
        freed
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing in here can be left half-done by a panic: take it as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
