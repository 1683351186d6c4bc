//! sd_notify(3): telling systemd we are ready, reloading or stopping.
//!
//! Written against the protocol rather than through `sd_notify::notify`, because that function
//! rejects an abstract-namespace `NOTIFY_SOCKET` (`@name`), which systemd may hand out, and
//! opens a socket per call: out of descriptors, `WATCHDOG=1` would fail. Here the socket is
//! opened once, at start, and every notification is a `sendmsg` on it (with the fds of
//! `FDSTORE=1`, when there are some).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

/// Sends state changes to the service manager; a no-op when `NOTIFY_SOCKET` was unset.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

/// Where notifications go, and the one socket they go through.
#[derive(Debug)]
struct Target {
    path: OsString,
    /// An error if it could not be opened at start (then every send says why).
    socket: io::Result<(UnixDatagram, rustix::net::SocketAddrUnix)>,
}

impl Target {
    fn open(path: OsString) -> Self {
        let socket = (|| {
            let bytes = path.as_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => rustix::net::SocketAddrUnix::new_abstract_name(name)?,
                None => rustix::net::SocketAddrUnix::new(bytes)?,
            };
            Ok((UnixDatagram::unbound()?, addr))
        })();
        Target { path, socket }
    }
}

/// `text` as one line of printable text, fit for `STATUS=`: anything that could end the
/// assignment or add another (a newline in a TOML error, in a key of the configuration) becomes
/// a space, runs of blanks fold into one, and the text is cut at 1 KiB.
pub fn one_line(text: &str) -> String {
    const MAX: usize = 1024;
    let mut out = String::with_capacity(text.len().min(MAX));
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
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
        Notifier {
            target: socket.map(|path| Arc::new(Target::open(path))),
        }
    }

    /// A notifier that says nothing (not under systemd, or in tests).
    pub fn disabled() -> Self {
        Notifier { target: None }
    }

    /// For tests and embedding: notify the socket at `path` (`@name` for the abstract namespace).
    pub fn to_socket(path: impl Into<OsString>) -> Self {
        Notifier {
            target: Some(Arc::new(Target::open(path.into()))),
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

    /// `STATUS=text`, made one line of printable text first ([`one_line`]).
    pub fn status(&self, text: &str) {
        self.send_logged(&format!("STATUS={}", one_line(text)));
    }

    /// A start that failed: `STATUS=` with the reason (one line) and `ERRNO=`.
    pub fn failed(&self, reason: &str, errno: i32) {
        self.send_logged(&format!(
            "STATUS=failed to start: {}\nERRNO={errno}",
            one_line(reason)
        ));
    }

    /// `READY=1` with a `STATUS=` line.
    pub fn ready_with_status(&self, text: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(text)));
    }

    /// `STOPPING=1` with a `STATUS=` line.
    pub fn stopping(&self, text: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={}", one_line(text)));
    }

    /// Asks systemd for `usec` more from now to finish the current start, reload or stop.
    pub fn extend_timeout(&self, by: std::time::Duration) {
        self.send_logged(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). Failures are logged, never
    /// fatal: a daemon must not die because its supervisor's socket hiccuped.
    pub fn send_logged(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }

    /// Sends `state` as given: callers put untrusted text through [`one_line`] first.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.send_with_fds(state, &[], true)
    }

    /// Sends `state` with `fds` attached (`SCM_RIGHTS`), as sd_pid_notify_with_fds(3) does:
    /// `FDSTORE=1` hands them to the fd store. Blocks while the manager's queue is full, unless
    /// `wait` is false: then that is `WouldBlock`.
    pub fn send_with_fds(
        &self,
        state: &str,
        fds: &[std::os::fd::BorrowedFd<'_>],
        wait: bool,
    ) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::mem::MaybeUninit;
        let Some(target) = &self.target else {
            return Ok(());
        };
        let (socket, addr) = target.socket.as_ref().map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", target.path.to_string_lossy()))
        })?;
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many fds for one message"));
        }
        let iov = [io::IoSlice::new(state.as_bytes())];
        let flags = if wait {
            SendFlags::empty()
        } else {
            SendFlags::DONTWAIT
        };
        loop {
            match rustix::net::sendmsg_addr(socket, addr, &iov, &mut control, flags) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
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
    use std::os::unix::net::SocketAddr;

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
    fn status_is_one_printable_line() {
        assert_eq!(
            one_line("bad\nMAINPID=1\r\n\tEXTEND_TIMEOUT_USEC=9\u{0}x  "),
            "bad MAINPID=1 EXTEND_TIMEOUT_USEC=9 x"
        );
        assert_eq!(one_line("é ok"), "é ok");
        assert_eq!(one_line(&"é".repeat(2000)).len(), 1024);
    }

    /// What sd_pid_notify_with_fds(3) sends: the text, and the fds as `SCM_RIGHTS`.
    #[test]
    fn sends_fds_with_a_message() {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::mem::MaybeUninit;
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let file = tempfile::tempfile().unwrap();
        Notifier::to_socket(path.as_os_str())
            .send_with_fds("FDSTORE=1\nFDNAME=x", &[file.as_fd()], true)
            .unwrap();
        let mut buf = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let n = rustix::net::recvmsg(&rx, &mut iov, &mut control, RecvFlags::empty())
            .unwrap()
            .bytes;
        let fds: Vec<_> = control
            .drain()
            .flat_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=x");
        assert_eq!(fds.len(), 1);
        let (a, b) = (
            rustix::fs::fstat(&fds[0]).unwrap(),
            rustix::fs::fstat(&file).unwrap(),
        );
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
    }

    #[test]
    fn unset_is_silent() {
        assert!(Notifier::disabled().send("READY=1").is_ok());
    }
}
