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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
        })
    }

    /// A store reached through `notifier` (tests, and the harness that plays systemd).
    pub fn new(notifier: Notifier) -> Self {
        FdStore { notifier }
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
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd =
        rustix::fs::memfd_create("app-state", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let file = std::fs::File::from(fd);
    {
        use std::io::Write;
        let mut w = &file;
        w.write_all(MAGIC)?;
        w.write_all(body)?;
    }
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(file.into())
}

/// Reads a record [`sealed_record`] wrote; an error says why it is not one (not sealed, a
/// foreign magic, too large).
pub fn read_record(fd: impl AsFd, max: u64) -> Result<Vec<u8>, String> {
    use rustix::fs::SealFlags;
    let fd = fd.as_fd();
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
    let mut data = vec![0u8; size as usize];
    let mut at = 0;
    while at < data.len() {
        match rustix::io::pread(fd, &mut data[at..], at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    data.truncate(at);
    data.strip_prefix(MAGIC)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "not an app state record (foreign or older format)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(read_record(&fd, 1 << 20).unwrap(), b"{\"x\":1}");
        assert!(read_record(&fd, 4).unwrap_err().contains("more than"));
        let plain = tempfile::tempfile().unwrap();
        assert!(read_record(&plain, 1 << 20).unwrap_err().contains("sealed"));
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
            read_record(&foreign, 1 << 20)
                .unwrap_err()
                .contains("foreign")
        );
    }
}
