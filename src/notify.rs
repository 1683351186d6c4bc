//! sd_notify(3): telling systemd we are ready, reloading or stopping.
//!
//! Written against the protocol rather than through `sd_notify::notify`, because that function
//! rejects an abstract-namespace `NOTIFY_SOCKET` (`@name`), which systemd may hand out.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends state changes to the service manager; a no-op when `NOTIFY_SOCKET` was unset.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` from the environment and unsets it, so children never inherit it.
    ///
    /// # Safety
    /// Mutates the process environment: call before any other thread exists.
    pub unsafe fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        // SAFETY: forwarded to the caller.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        Notifier { socket }
    }

    /// A notifier that says nothing (not under systemd, or in tests).
    pub fn disabled() -> Self {
        Notifier { socket: None }
    }

    /// For tests and embedding: notify the socket at `path` (`@name` for the abstract namespace).
    pub fn to_socket(path: impl Into<OsString>) -> Self {
        Notifier {
            socket: Some(path.into()),
        }
    }

    pub fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC=` stamp that systemd ≥ 253 requires (and 252
    /// ignores): it tells a reload that completed from one that merely started.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
        self.send_logged(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn status(&self, text: &str) {
        self.send_logged(&format!("STATUS={text}"));
    }

    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). Failures are logged, never
    /// fatal: a daemon must not die because its supervisor's socket hiccuped.
    pub fn send_logged(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }

    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(std::path::Path::new(path))?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, if `WATCHDOG_PID` is unset or
/// ours), after unsetting both so that children do not inherit them.
///
/// # Safety
/// Mutates the process environment: call before any other thread exists.
pub unsafe fn take_watchdog() -> Option<std::time::Duration> {
    let interval = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    // SAFETY: forwarded to the caller.
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::to_socket(path.as_os_str()).ready();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("app-test-notify-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        Notifier::to_socket(format!("@{name}"))
            .send("STOPPING=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn unset_is_silent() {
        assert!(Notifier::disabled().send("READY=1").is_ok());
    }
}
