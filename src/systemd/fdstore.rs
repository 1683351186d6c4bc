//! systemd's file-descriptor store (`FileDescriptorStoreMax=`, sd_pid_notify_with_fds(3)):
//! client connections and one state record kept by the service manager across a restart, an
//! upgrade or a crash, and handed to the next instance in `LISTEN_FDS`/`LISTEN_FDNAMES`.
//!
//! Names: every connection is stored under a name of its own, `app-conn-<CLIENT_CONNECTION>`,
//! because systemd (v252 `service.c`) keeps stored fds in no order the next instance could rely
//! on (each is prepended to a list; the fds of one message come out of a hash set), and
//! `FDSTOREREMOVE=1` removes every fd of a name. So one message per connection. The state
//! record is `app-state`. Neither contains `:` (the `LISTEN_FDNAMES` separator) nor can be a
//! socket unit's default name (`app.socket`).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::notify::Notifier;

/// Names of stored connections: this prefix and the connection's `CLIENT_CONNECTION`.
pub const CONNECTION_PREFIX: &str = "app-conn-";
/// The name of the state record.
pub const STATE_NAME: &str = "app-state";

/// The store name of connection `id`.
pub fn connection_name(id: u64) -> String {
    format!("{CONNECTION_PREFIX}{id}")
}

/// The `CLIENT_CONNECTION` a store name carries, if it is a connection's name.
pub fn connection_id(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CONNECTION_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|id| *id > 0)
}

/// The service manager's fd store, when the unit has one.
#[derive(Debug, Clone)]
pub struct FdStore {
    notifier: Notifier,
    /// How many fds it holds at most (`$FDSTORE`, i.e. `FileDescriptorStoreMax=`).
    max: u64,
}

impl FdStore {
    /// The fd store, if this process may use it: `NOTIFY_SOCKET` is set and `$FDSTORE` (set by
    /// systemd ≥ 254 to `FileDescriptorStoreMax=`; our unit sets it itself for systemd 252,
    /// which cannot be asked) is above zero. Unsets `FDSTORE` so that children do not see it.
    ///
    /// # Safety
    /// Mutates the process environment: call before any other thread exists.
    pub unsafe fn from_env(notifier: &Notifier) -> Option<FdStore> {
        let max = std::env::var("FDSTORE").ok();
        // SAFETY: forwarded to the caller.
        unsafe { std::env::remove_var("FDSTORE") };
        let max: u64 = max?.trim().parse().ok()?;
        (max > 0 && notifier.is_enabled()).then(|| FdStore {
            notifier: notifier.clone(),
            max,
        })
    }

    /// A store reached through `notifier` (tests, and the harness that plays systemd), of
    /// unknown size.
    pub fn new(notifier: Notifier) -> Self {
        FdStore {
            notifier,
            max: u64::MAX,
        }
    }

    /// How many fds the store holds at most: a connection per client plus the state record.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Warns when `max_connections` clients and the state record would not fit: systemd refuses
    /// what is over (the newest), and those clients are cut off at a restart.
    pub fn check_room(&self, max_connections: u64) {
        if self.max != u64::MAX && max_connections.saturating_add(1) > self.max {
            tracing::warn!(
                "limits.max_connections = {max_connections} but the fd store holds {} fds \
                 ($FDSTORE, FileDescriptorStoreMax=): at a restart, connections past {} are \
                 closed; raise both FileDescriptorStoreMax= and FDSTORE= to at least {}",
                self.max,
                self.max - 1,
                max_connections.saturating_add(1)
            );
        }
    }

    /// Hands `fd` to the store as `name`. `FDPOLL=0`: systemd must not drop a connection whose
    /// client hung up — the lines it wrote before are still in the socket, for the next instance
    /// to read; this daemon removes it once it has read it to the end. With `wait` false, a
    /// full queue at the manager is `WouldBlock` rather than a wait.
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>, wait: bool) -> io::Result<()> {
        let state = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0");
        self.notifier.send_with_fds(&state, &[fd], wait)
    }

    /// Takes every fd stored as `name` out of the store (systemd closes its copies).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.notifier
            .send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }

    /// [`FdStore::remove`], a failure logged.
    pub fn remove_logged(&self, name: &str) {
        if let Err(e) = self.remove(name) {
            tracing::warn!("fd store: removing {name}: {e}");
        }
    }
}

/// What the store gave this instance at start, set apart from the listeners.
#[derive(Debug, Default)]
pub struct FromStore {
    /// Connections by their `CLIENT_CONNECTION`, in the order they came.
    pub connections: Vec<(u64, OwnedFd)>,
    /// The state record, if one came (a second one is stale).
    pub state: Option<OwnedFd>,
    /// Names of fds that are ours by name but of no use (closed on arrival): taken out of the
    /// store once logging is up.
    pub stale: Vec<String>,
}

impl FromStore {
    /// Takes `fd` if `name` is one this daemon stores under; gives it back otherwise.
    pub fn take(&mut self, fd: OwnedFd, name: &str) -> Option<OwnedFd> {
        if let Some(id) = connection_id(name) {
            self.connections.push((id, fd));
        } else if name == STATE_NAME && self.state.is_none() {
            self.state = Some(fd);
        } else if name == STATE_NAME || name.starts_with(CONNECTION_PREFIX) || name == "stored" {
            // "stored" is what systemd calls an fd stored without FDNAME=: not ours.
            self.stale.push(name.to_owned());
        } else {
            return Some(fd);
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.state.is_none() && self.stale.is_empty()
    }
}

/// The first bytes of a state record, which say what wrote it and in which format.
const MAGIC: &[u8] = b"app fd-store state v1\n";

/// Writes `body` into a new sealed memfd (no one can change it afterwards, as systemd does for
/// what it passes in memfds), after [`MAGIC`].
pub fn sealed_record(body: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Write;
    sealed_record_with(|w| w.write_all(body))
}

/// [`sealed_record`] with the body written by `write`, straight into the memfd: a record of
/// many megabytes (pending lines) is never also built in memory.
pub fn sealed_record_with(
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd =
        rustix::fs::memfd_create("app-state", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    {
        use std::io::Write;
        file.write_all(MAGIC)?;
        write(&mut file)?;
    }
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(file.into())
}

/// What a state record holds after its magic, read piece by piece where it lies: a record of
/// many megabytes (pending lines) is never in memory whole, only each connection's part, in the
/// buffer that goes on with it.
pub trait RecordBody {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// `n` bytes from `offset`; an error if they are not all there.
    fn read_at(&self, offset: u64, n: usize) -> Result<Vec<u8>, String>;
}

impl RecordBody for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, n: usize) -> Result<Vec<u8>, String> {
        usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(n)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "cut short".to_owned())
    }
}

/// A state record in its sealed memfd, checked: sealed, of our format, not too large.
#[derive(Debug)]
pub struct Record<'a> {
    fd: BorrowedFd<'a>,
    size: u64,
}

impl RecordBody for Record<'_> {
    fn size(&self) -> u64 {
        self.size - MAGIC.len() as u64
    }

    fn read_at(&self, offset: u64, n: usize) -> Result<Vec<u8>, String> {
        // Checked before anything is allocated: a damaged record may claim any length.
        if offset
            .checked_add(n as u64)
            .is_none_or(|end| end > self.size())
        {
            return Err("cut short".to_owned());
        }
        pread_exact(self.fd, MAGIC.len() as u64 + offset, n)
    }
}

fn pread_exact(fd: BorrowedFd<'_>, offset: u64, n: usize) -> Result<Vec<u8>, String> {
    let mut data = vec![0u8; n];
    let mut at = 0;
    while at < n {
        match rustix::io::pread(fd, &mut data[at..], offset + at as u64) {
            Ok(0) => return Err("cut short".to_owned()),
            Ok(got) => at += got,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(data)
}

/// Checks a record [`sealed_record`] wrote, for reading with [`RecordBody`]; an error says why
/// it is not one (not sealed, a foreign magic, too large).
pub fn read_record(fd: BorrowedFd<'_>, max: u64) -> Result<Record<'_>, String> {
    use rustix::fs::SealFlags;
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| format!("not a sealed memfd: {e}"))?;
    if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW) {
        return Err("not sealed against writes".to_owned());
    }
    let size = rustix::fs::fstat(fd).map_err(|e| e.to_string())?.st_size as u64;
    if size > max {
        return Err(format!(
            "{size} bytes, more than the {max} a record can have"
        ));
    }
    let foreign = || "not an app state record (foreign or older format)".to_owned();
    if size < MAGIC.len() as u64 || pread_exact(fd, 0, MAGIC.len()).map_err(|_| foreign())? != MAGIC
    {
        return Err(foreign());
    }
    Ok(Record { fd, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn connection_names_round_trip_and_nothing_else_is_one() {
        assert_eq!(connection_name(42), "app-conn-42");
        assert_eq!(connection_id("app-conn-42"), Some(42));
        for other in [
            "app-conn-",
            "app-conn-0",
            "app-conn-4x",
            "app.socket",
            STATE_NAME,
            "stored",
        ] {
            assert_eq!(connection_id(other), None, "{other}");
        }
    }

    #[test]
    fn a_record_reads_back_and_a_foreign_one_is_refused() {
        let fd = sealed_record(b"{\"x\":1}").unwrap();
        let whole = |fd: &OwnedFd| {
            let r = read_record(fd.as_fd(), 1 << 20)?;
            r.read_at(0, r.size() as usize)
        };
        assert_eq!(whole(&fd).unwrap(), b"{\"x\":1}");
        assert_eq!(whole(&sealed_record(b"").unwrap()).unwrap(), b"");
        let r = read_record(fd.as_fd(), 1 << 20).unwrap();
        assert_eq!(r.read_at(2, 3).unwrap(), b"x\":");
        assert!(r.read_at(2, 6).is_err());
        assert!(
            read_record(fd.as_fd(), 4)
                .unwrap_err()
                .contains("more than")
        );
        let plain = tempfile::tempfile().unwrap();
        assert!(
            read_record(plain.as_fd(), 1 << 20)
                .unwrap_err()
                .contains("sealed")
        );
        let mut foreign = sealed_record(b"").unwrap();
        foreign = {
            use rustix::fs::{MemfdFlags, SealFlags};
            drop(foreign);
            let fd = rustix::fs::memfd_create("x", MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::io::write(&fd, b"someone else's\n").unwrap();
            rustix::fs::fcntl_add_seals(
                &fd,
                SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW,
            )
            .unwrap();
            fd
        };
        assert!(
            read_record(foreign.as_fd(), 1 << 20)
                .unwrap_err()
                .contains("foreign")
        );
    }
}
