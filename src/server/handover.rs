//! Connections carried across a restart in systemd's fd store (DESIGN §4, issue 18): which
//! connections are in the store ([`Store`]), the state record handed to the next instance with
//! them ([`StateRecord`]), and reading it back at start ([`pick_up`]).
//!
//! A connection goes into the store when it has lived a second (so a crash or `kill -9` drops
//! no long-lived client, and 20,000 short connections a second never reach PID 1), or at the
//! latest at the handover on SIGTERM. It leaves the store when this daemon ends it: otherwise
//! systemd's copy would keep the socket open and the client would never see the close.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::FramerState;
use crate::systemd::fdstore::{self, FdStore, RecordBody};

use super::connection::Stream;
use super::encode::LineSnapshot;

/// How long a connection lives before it goes into the store.
pub const STORE_AFTER: Duration = Duration::from_secs(1);
/// How often connections that came of age are looked for.
const STORE_EVERY: Duration = Duration::from_millis(250);

/// The JSON part of a state record is at most this long, and names at most this many
/// connections (an fd store holds 4224 fds, journald's own figure; a record names only
/// connections it holds).
const MAX_JSON: u64 = 16 << 20;
const MAX_CONNECTIONS: usize = 65_536;

/// A state record larger than this is not read (4096 connections with a 48 KiB line each
/// pending stay well below).
const MAX_RECORD: u64 = 1 << 30;

/// One connection as the next instance needs it to go on where this one stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionRecord {
    /// Its `CLIENT_CONNECTION`, which its entries keep.
    pub id: u64,
    /// Its listener's name (`SOCKET=`), when there were several.
    pub socket: Option<String>,
    pub framer: FramerState,
    /// How many bytes of the record's data (after the JSON) are this connection's pending line.
    pub pending: usize,
    pub line: LineSnapshot,
    /// Whether the client was attributed (its unit and command, resolved when it first
    /// wrote): then the fields came along, and are not resolved again. (Its pid, uid and gid
    /// are `SO_PEERCRED`, which the socket keeps.)
    pub attributed: bool,
    /// How many bytes of the record's data, after the pending ones, are those fields (native
    /// format, as the entries carry them).
    pub fields: usize,
}

/// The state record: `CLIENT_CONNECTION` to continue from, and the carried connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateRecord {
    pub next_connection: u64,
    pub connections: Vec<ConnectionRecord>,
}

/// A connection's state handed over, with its pending bytes and attribution fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub record: ConnectionRecord,
    pub pending: Vec<u8>,
    pub fields: Vec<u8>,
}

impl StateRecord {
    /// Writes the record to `w`: JSON, a newline, then every connection's pending bytes and
    /// fields one after the other (binary stays compact). Each pair is dropped once written.
    pub fn write_to(
        &self,
        w: &mut impl std::io::Write,
        data: impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>,
    ) -> std::io::Result<()> {
        w.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        w.write_all(b"\n")?;
        for (pending, fields) in data {
            w.write_all(pending.as_ref())?;
            w.write_all(fields.as_ref())?;
        }
        Ok(())
    }

    /// The record and each connection's pending bytes, by `CLIENT_CONNECTION`, read piece by
    /// piece: each connection's bytes land in their own buffer, never the whole record at once.
    pub fn decode(
        body: &(impl RecordBody + ?Sized),
    ) -> Result<(StateRecord, HashMap<u64, Resume>), String> {
        // The JSON part ends at the first newline (serde_json escapes those in strings). A few
        // hundred bytes per connection: a damaged record claiming more is refused before it is
        // parsed (parsing costs a few times its size).
        const CHUNK: usize = 64 * 1024;
        let total = body.size();
        let mut json = Vec::new();
        let end = loop {
            let at = json.len() as u64;
            if at >= total {
                return Err("no end of the JSON part".to_owned());
            }
            if at >= MAX_JSON {
                return Err(format!(
                    "no end of the JSON part in its first {MAX_JSON} bytes"
                ));
            }
            let n = CHUNK.min((total - at) as usize);
            json.extend_from_slice(&body.read_at(at, n)?);
            if let Some(i) = memchr::memchr(b'\n', &json[at as usize..]) {
                break at as usize + i;
            }
        };
        let record: StateRecord =
            serde_json::from_slice(&json[..end]).map_err(|e| format!("JSON: {e}"))?;
        drop(json);
        if record.connections.len() > MAX_CONNECTIONS {
            return Err(format!(
                "{} connections, more than the {MAX_CONNECTIONS} a record can have",
                record.connections.len()
            ));
        }
        let mut offset = end as u64 + 1;
        let mut by_id = HashMap::new();
        let mut take = |n: usize, id: u64| {
            let part = body
                .read_at(offset, n)
                .map_err(|_| format!("connection {id}: its data cut short"))?;
            offset += n as u64;
            Ok::<_, String>(part)
        };
        for c in &record.connections {
            let resume = Resume {
                record: c.clone(),
                pending: take(c.pending, c.id)?,
                fields: take(c.fields, c.id)?,
            };
            if by_id.insert(c.id, resume).is_some() {
                return Err(format!("connection {} twice", c.id));
            }
        }
        if offset != total {
            return Err(format!(
                "{} bytes after the last connection",
                total - offset
            ));
        }
        Ok((record, by_id))
    }
}

/// Reads the state record the previous instance left, then takes it out of the store (it
/// describes one handover only). A missing, corrupt or foreign one is logged and ignored: the
/// connections are then served as fresh ones, under the numbers their names carry.
pub fn pick_up(state: Option<OwnedFd>, store: Option<&FdStore>) -> (u64, HashMap<u64, Resume>) {
    let Some(fd) = state else {
        return (0, HashMap::new());
    };
    // Out of the store before it is read: should reading it kill this process (memory), the
    // next instance serves the connections afresh instead of dying on the same record.
    if let Some(store) = store {
        store.remove_logged(fdstore::STATE_NAME);
    }
    let decoded =
        fdstore::read_record(fd.as_fd(), MAX_RECORD).and_then(|body| StateRecord::decode(&body));
    match decoded {
        Ok((record, by_id)) => (record.next_connection, by_id),
        Err(e) => {
            tracing::warn!(
                "fd store: ignoring the state record {} ({e}): carried connections start afresh",
                fdstore::STATE_NAME
            );
            (0, HashMap::new())
        }
    }
}

/// Keeps a connection counted in the store's view while it lives: dropped before the socket
/// closes, it takes the connection out of the store (unless handed over). Without a store it
/// does nothing.
pub struct Registration<'a> {
    store: Option<&'a Store>,
    id: u64,
    handed_over: bool,
}

impl<'a> Registration<'a> {
    /// Counts connection `id` (socket `fd`) in; `stored` when it came from the store.
    pub fn new(store: Option<&'a Store>, id: u64, fd: BorrowedFd<'_>, stored: bool) -> Self {
        if let Some(store) = store {
            store.register(id, fd, stored);
        }
        Registration {
            store,
            id,
            handed_over: false,
        }
    }

    /// True when the connection is handed over at shutdown rather than drained.
    pub fn is_active(&self) -> bool {
        self.store.is_some()
    }

    /// Gives the connection up for the next instance (at shutdown).
    pub fn hand_over(mut self, stream: Stream, resume: Resume) {
        if let Some(store) = self.store {
            store.hand_over(stream, resume);
            self.handed_over = true;
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store {
            store.unregister(self.id, self.handed_over);
        }
    }
}

/// A live connection, as the store sees it.
#[derive(Debug)]
struct Live {
    /// Valid while the entry exists: the connection removes it before its socket closes.
    fd: RawFd,
    since: Instant,
    stored: bool,
}

/// The fd store and the connections that may go into it.
#[derive(Debug)]
pub struct Store {
    fdstore: FdStore,
    live: Mutex<HashMap<u64, Live>>,
    /// Filled by the connections at the handover: each with whether it is in the store already.
    handed: Mutex<Vec<(Stream, Resume, bool)>>,
    /// Set at the commit: a connection still running then (stuck behind a journal that took
    /// nothing for `service.shutdown_timeout`) is dropped with the runtime, and stays in the
    /// store if it is there, for the next instance, as after a crash.
    committed: std::sync::atomic::AtomicBool,
}

impl Store {
    pub fn new(fdstore: FdStore) -> Self {
        Store {
            fdstore,
            live: Mutex::default(),
            handed: Mutex::default(),
            committed: Default::default(),
        }
    }

    pub fn fdstore(&self) -> &FdStore {
        &self.fdstore
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, id: u64, fd: BorrowedFd<'_>, stored: bool) {
        use std::os::fd::AsRawFd;
        self.live().insert(
            id,
            Live {
                fd: fd.as_raw_fd(),
                since: Instant::now(),
                stored,
            },
        );
    }

    /// Connection `id` ends (its socket is still open): out of the store, unless `handed_over`.
    fn unregister(&self, id: u64, handed_over: bool) {
        let was = self.live().remove(&id);
        let committed = self.committed.load(std::sync::atomic::Ordering::Relaxed);
        if was.is_some_and(|l| l.stored) && !handed_over && !committed {
            self.fdstore.remove_logged(&fdstore::connection_name(id));
        }
    }

    /// Stores every connection older than `age` that is not in the store yet; returns false
    /// if PID 1's queue was full before the last one.
    ///
    /// One slot of the store stays free for the state record: a store filled with connections
    /// would refuse the record at the handover, and every connection's partial line with it.
    pub fn store_long_lived(&self, age: Duration) -> bool {
        let now = Instant::now();
        let mut live = self.live();
        let room = self.fdstore.max().saturating_sub(1);
        let mut stored = live.values().filter(|l| l.stored).count() as u64;
        for (id, l) in live.iter_mut() {
            if l.stored || now.duration_since(l.since) < age {
                continue;
            }
            if stored >= room {
                // check_room warned at start; these go in at the handover, after the record.
                break;
            }
            // SAFETY: the connection unregisters (under this lock) before its socket closes.
            let fd = unsafe { BorrowedFd::borrow_raw(l.fd) };
            // Never waits on PID 1 here: the runtime serves every client meanwhile. What does not
            // fit in its queue now goes a moment later (`keep_storing`).
            let name = fdstore::connection_name(*id);
            match self.fdstore.store(&name, fd, false) {
                Ok(()) => {
                    l.stored = true;
                    stored += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::warn!("fd store: storing connection {id}: {e}");
                    break;
                }
            }
        }
        true
    }

    /// Puts long-lived connections into the store as they come of age, until `shutdown`. When
    /// PID 1's queue is full (`net.unix.max_dgram_qlen` datagrams) it tries again shortly, never
    /// holding up the runtime meanwhile.
    pub async fn keep_storing(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let pause = if self.store_long_lived(STORE_AFTER) {
                STORE_EVERY
            } else {
                Duration::from_millis(2)
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// A connection gives itself up at the handover (while still registered).
    fn hand_over(&self, stream: Stream, resume: Resume) {
        let stored = self.live().get(&resume.record.id).is_some_and(|l| l.stored);
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stream, resume, stored));
    }

    /// Puts what the connections gave up into the store with the state record; the sockets
    /// are closed here (systemd holds them now). Returns how many connections were carried.
    ///
    /// The state record goes first: should the store be too small (`FileDescriptorStoreMax=`),
    /// systemd refuses the newest connections, not the record the others need.
    pub fn commit(&self, next_connection: u64) -> std::io::Result<usize> {
        self.committed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut handed =
            std::mem::take(&mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()));
        let room = self.fdstore.max().saturating_sub(1);
        if handed.len() as u64 > room {
            tracing::error!(
                "{} connections to hand over, but the fd store holds {room} besides the state \
                 record (FileDescriptorStoreMax=, $FDSTORE): systemd closes the newest",
                handed.len()
            );
        }
        let record = StateRecord {
            next_connection,
            connections: handed.iter().map(|(_, r, _)| r.record.clone()).collect(),
        };
        // Written straight into the memfd, each connection's pending bytes freed once written:
        // the worst case (every connection holding a line of limits.max_line_bytes) is never in
        // memory twice.
        let fd = fdstore::sealed_record_with(|w| {
            let data = handed.iter_mut().map(|(_, resume, _)| {
                (
                    std::mem::take(&mut resume.pending),
                    std::mem::take(&mut resume.fields),
                )
            });
            record.write_to(w, data)
        })?;
        self.fdstore.store(fdstore::STATE_NAME, fd.as_fd(), true)?;
        drop(fd);
        for (stream, resume, stored) in &handed {
            if *stored {
                continue; // already there: systemd would only drop the duplicate
            }
            let name = fdstore::connection_name(resume.record.id);
            self.fdstore.store(&name, stream.as_fd(), true)?;
        }
        Ok(handed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_what_was_encoded_and_damage_is_an_error() {
        let conn = |id, pending| ConnectionRecord {
            id,
            socket: Some("app.socket".into()),
            framer: FramerState {
                continuing: true,
                ..Default::default()
            },
            pending,
            line: LineSnapshot {
                priority: 3,
                facility: Some(4),
                header: None,
            },
            attributed: true,
            fields: 1,
        };
        let record = StateRecord {
            next_connection: 9,
            connections: vec![conn(3, 2), conn(7, 0), conn(8, 3)],
        };
        let mut data = Vec::new();
        let parts: [(&[u8], &[u8]); 3] = [(b"ab", b"1"), (b"", b"2"), (b"\n\x00z", b"3")];
        record.write_to(&mut data, parts).unwrap();
        let (back, by_id) = StateRecord::decode(&data[..]).unwrap();
        assert_eq!(back, record);
        assert_eq!(by_id[&3].pending, b"ab");
        assert_eq!(by_id[&8].pending, b"\n\x00z");
        assert_eq!(by_id[&8].fields, b"3");
        assert!(StateRecord::decode(&data[..data.len() - 1]).is_err());
        assert!(StateRecord::decode(&b"{}\n"[..]).is_err());
        assert!(StateRecord::decode(&b"garbage"[..]).is_err());
    }

    /// The priority, facility and syslog header of a line being cut come back as they were;
    /// out-of-range values from a foreign record fall back to the defaults.
    #[test]
    fn a_line_state_comes_back_from_its_snapshot() {
        use crate::server::encode::LineState;
        let env = HashMap::new();
        let settings = crate::config::load(&crate::config::Sources {
            file: crate::config::ConfigFile::Default("/nonexistent/app.toml".into()),
            env: &env,
            overrides: Default::default(),
            euid: 0,
        })
        .unwrap();
        let snapshot = LineSnapshot {
            priority: 2,
            facility: Some(16),
            header: Some([
                Some(b"tag".to_vec()),
                Some(b"42".to_vec()),
                None,
                Some(b"ID7".to_vec()),
                Some(b"[x@1 a=\"b\"]".to_vec()),
            ]),
        };
        assert_eq!(
            LineState::restore(&snapshot, &settings).snapshot(),
            snapshot
        );
        let foreign = LineSnapshot {
            priority: 9,
            facility: Some(99),
            header: None,
        };
        let back = LineState::restore(&foreign, &settings).snapshot();
        assert_eq!(back.priority, settings.journal.default_priority);
        assert_eq!(back.facility, None);
    }
}
