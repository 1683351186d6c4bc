//! Who the client is: its credentials ([`Peer`]), and beyond them its command and systemd unit
//! (kept per process by `server::attribution`).
//!
//! `CLIENT_UNIT`, `CLIENT_USER_UNIT`, `CLIENT_SLICE` and `CLIENT_CGROUP` come from the peer's
//! cgroup (the unified `0::` line of `/proc/PID/cgroup`), parsed with the rules of systemd's
//! `sd_pid_get_unit(3)` (`src/basic/cgroup-util.c`: `cg_path_get_unit`, `cg_path_get_user_unit`,
//! `cg_path_get_slice`); `CLIENT_COMM` is `/proc/PID/comm`. A field that cannot be read is left
//! out: a wrong unit is worse than none.
//!
//! A pid is only a number; by the time we read `/proc/PID` the client may have exited and the
//! number may belong to another process. Where the kernel has `SO_PEERPIDFD` (Linux 6.5), the
//! socket hands us a pidfd for the process that connected: we read `/proc/PID`, then check that
//! this process is still running. If it is, the number was never free during the reads, so what
//! we read was the client's. If it is not, everything read is dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// Who sent a message: fixed for the life of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Unix {
        pid: Option<i32>,
        uid: u32,
        gid: u32,
    },
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix {
                pid: Some(pid),
                uid,
                ..
            } => write!(f, "pid {pid} uid {uid}"),
            Peer::Unix { pid: None, uid, .. } => write!(f, "uid {uid}"),
            Peer::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// `SO_PEERPIDFD` (asm-generic/socket.h, Linux 6.5; not exported by the libc crate yet).
#[cfg(not(target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 77;
#[cfg(target_arch = "sparc64")]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// What systemd would say about the client process, as of accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub comm: Option<String>,
    /// The cgroup path, relative to the host's root cgroup (journald's `_SYSTEMD_CGROUP`).
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub user_unit: Option<String>,
    pub slice: Option<String>,
}

/// Whether entries carry `OBJECT_*` fields: only when the daemon runs as uid 0, which journalctl
/// trusts for them. The daemon's uid does not change while it runs: asked of the kernel once.
pub fn sends_object_fields() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

impl Attribution {
    /// Resolves the client at the other end of `socket`, whose `SO_PEERCRED` pid is `pid`.
    /// Returns an empty attribution when the client is gone or nothing could be read.
    pub fn of_peer(socket: BorrowedFd<'_>, pid: i32) -> Attribution {
        Attribution::resolve(pid, PeerPidfd::of(socket))
    }

    /// [`Attribution::of_peer`] in two steps: the pidfd is taken from the socket at once (cheap),
    /// the reads can run elsewhere (they cost tens of microseconds).
    pub fn resolve(pid: i32, pidfd: PeerPidfd) -> Attribution {
        if pid <= 0 {
            return Attribution::default();
        }
        match pidfd {
            PeerPidfd::Held(pidfd) => Attribution::read_checked(pid, pidfd.as_fd()),
            // Before Linux 6.5: the pid is all there is (README: "the remaining race").
            PeerPidfd::Unsupported => Attribution::read_proc(pid),
            PeerPidfd::Gone | PeerPidfd::Exhausted => Attribution::default(),
        }
    }

    /// Reads `/proc/PID` for the process behind `pidfd`, whose pid is `pid`: empty unless that
    /// process is still running after the reads (then the pid was its own all along).
    pub fn read_checked(pid: i32, pidfd: BorrowedFd<'_>) -> Attribution {
        let read = Attribution::read_proc(pid);
        if running(pidfd) {
            read
        } else {
            Attribution::default()
        }
    }

    /// Nothing was resolved.
    pub fn is_empty(&self) -> bool {
        *self == Attribution::default()
    }

    /// Reads `/proc/PID/comm` and `/proc/PID/cgroup`, with no check of who `pid` is now.
    pub fn read_proc(pid: i32) -> Attribution {
        let mut buf = [0u8; 4096];
        let comm = read_small(&format!("/proc/{pid}/comm"), &mut buf)
            .and_then(|c| std::str::from_utf8(c).ok())
            .map(|c| c.trim_end_matches('\n'))
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let cgroup = read_small(&format!("/proc/{pid}/cgroup"), &mut buf)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|text| unified_path(text).map(|p| shift(p, root()).to_owned()));
        let mut a = Attribution::from_cgroup(cgroup.as_deref());
        a.comm = comm;
        a
    }

    /// The unit fields for a cgroup path (already shifted to the host's root).
    pub fn from_cgroup(cgroup: Option<&str>) -> Attribution {
        let Some(path) = cgroup else {
            return Attribution::default();
        };
        Attribution {
            comm: None,
            cgroup: Some(path.to_owned()),
            unit: path_unit(path),
            user_unit: path_user_unit(path),
            slice: path_slice(path),
        }
    }

    /// The journal fields, in native-protocol order; with `objects` (the daemon is uid 0) also
    /// `OBJECT_SYSTEMD_UNIT`, `OBJECT_SYSTEMD_USER_UNIT` and `OBJECT_COMM`, which journalctl's
    /// `-u`/`--user-unit` match on entries from uid 0.
    ///
    /// Never `OBJECT_PID=`: journald would then look that pid up itself when it processes the
    /// entry (journald-native.c, `allow_object_pid`; dispatch_message_real appends its own
    /// `OBJECT_*` set), after a short-lived client has exited or its pid has been reused, and
    /// every `OBJECT_*` field would appear twice, once possibly wrong.
    pub fn fields(&self, objects: bool) -> Vec<(&'static [u8], &[u8])> {
        let client: [(&'static [u8], &Option<String>); 5] = [
            (b"CLIENT_COMM", &self.comm),
            (b"CLIENT_UNIT", &self.unit),
            (b"CLIENT_USER_UNIT", &self.user_unit),
            (b"CLIENT_SLICE", &self.slice),
            (b"CLIENT_CGROUP", &self.cgroup),
        ];
        let object: [(&'static [u8], &Option<String>); 3] = [
            (b"OBJECT_SYSTEMD_UNIT", &self.unit),
            (b"OBJECT_SYSTEMD_USER_UNIT", &self.user_unit),
            (b"OBJECT_COMM", &self.comm),
        ];
        let object = if objects { &object[..] } else { &[] };
        client
            .iter()
            .chain(object)
            .filter_map(|&(name, value)| value.as_ref().map(|v| (name, v.as_bytes())))
            .collect()
    }
}

/// A small /proc file in one `read`: open, read, close and nothing else, since this runs for
/// every connection (`std::fs::read` would add a `statx` and a second `read`). `None` if it
/// cannot be read or does not fit.
fn read_small<'b>(path: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let n = rustix::io::read(&fd, &mut *buf).ok()?;
    (n < buf.len()).then(|| &buf[..n])
}

/// The process that connected, as the kernel knows it (`SO_PEERPIDFD`, Linux 6.5).
#[derive(Debug)]
pub enum PeerPidfd {
    /// A pidfd for the process that connected: it cannot be confused with a later holder of
    /// its pid.
    Held(OwnedFd),
    /// The kernel is older than 6.5: only the pid number is known.
    Unsupported,
    /// The client has already exited (or the socket has no peer process).
    Gone,
    /// No descriptor was left for the pidfd (EMFILE, ENFILE).
    Exhausted,
}

impl PeerPidfd {
    pub fn of(socket: BorrowedFd<'_>) -> PeerPidfd {
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&raw mut fd).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOPROTOOPT) => PeerPidfd::Unsupported,
                Some(libc::EMFILE | libc::ENFILE) => PeerPidfd::Exhausted,
                // ESRCH (EINVAL on some kernels): the client exited before we asked.
                _ => PeerPidfd::Gone,
            };
        }
        if fd < 0 {
            return PeerPidfd::Gone;
        }
        // SAFETY: the kernel just gave us this descriptor, and nobody else owns it.
        PeerPidfd::Held(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Whether the process behind `pidfd` has not exited: a pidfd polls readable once it has
/// (pidfd_open(2)), zombie or reaped, so an exited client counts as gone. A running process
/// holds its pid, and no other process can have that pid meanwhile: two pidfds of running
/// processes with the same pid are one process (`server::attribution` relies on it). A `poll`,
/// not `pidfd_send_signal(pidfd, 0)`, which `attribute-to-units.conf` forbids (root may not
/// signal) and whose EPERM would then read as "alive".
pub fn running(pidfd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 0
}

/// The path of the unified (`0::`) hierarchy in `/proc/PID/cgroup`. A removed cgroup (the
/// kernel appends ` (deleted)`) names nothing any more.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_end();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// The cgroup under which systemd (PID 1) keeps its units, as systemd's `cg_get_root_path`
/// finds it: PID 1's own cgroup without `/init.scope`. `/` on a host, more in a container
/// that has no cgroup namespace of its own. Read once.
fn root() -> &'static str {
    static ROOT: OnceLock<String> = OnceLock::new();
    ROOT.get_or_init(|| {
        let pid1 = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
        let path = unified_path(&pid1).unwrap_or("/");
        let root = ["/init.scope", "/system.slice", "/system"]
            .iter()
            .find_map(|suffix| path.strip_suffix(suffix))
            .unwrap_or(path);
        root.to_owned()
    })
}

/// `cg_shift_path`: `cgroup` relative to `root` when it lies below it.
pub fn shift<'a>(cgroup: &'a str, root: &str) -> &'a str {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return cgroup;
    }
    match cgroup.strip_prefix(root) {
        Some(rest) if rest.starts_with('/') => rest,
        Some("") => "/",
        _ => cgroup,
    }
}

/// The unit types of systemd 252 (`unit_type_from_string`).
const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// `UNIT_NAME_MAX`: names are shorter than this.
const UNIT_NAME_MAX: usize = 256;

/// `unit_name_is_valid` with `UNIT_NAME_PLAIN` (`foo.service`) and, if `instance`, also
/// `UNIT_NAME_INSTANCE` (`foo@bar.service`); templates (`foo@.service`) never.
fn unit_name_is_valid(name: &str, instance: bool) -> bool {
    if name.is_empty() || name.len() >= UNIT_NAME_MAX {
        return false;
    }
    let Some(dot) = name.rfind('.') else {
        return false;
    };
    if dot == 0 || !UNIT_TYPES.contains(&&name[dot + 1..]) {
        return false;
    }
    let stem = &name[..dot];
    let valid = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if !stem.chars().all(valid) {
        return false;
    }
    match stem.find('@') {
        None => true,
        Some(0) => false,
        Some(at) => instance && at + 1 < stem.len(),
    }
}

/// `cg_unescape`: one leading `_` is an escape.
fn unescape(s: &str) -> &str {
    s.strip_prefix('_').unwrap_or(s)
}

/// The next path component of `p` (after any slashes) and what follows it.
fn component(p: &str) -> (&str, &str) {
    let p = p.trim_start_matches('/');
    let end = p.find('/').unwrap_or(p.len());
    (&p[..end], &p[end..])
}

/// `valid_slice_name`: `x.slice` at least, a valid plain unit name once unescaped.
fn valid_slice_name(c: &str) -> bool {
    c.len() >= "x.slice".len() && c.ends_with(".slice") && unit_name_is_valid(unescape(c), false)
}

/// `skip_slices`: past every leading slice component.
fn skip_slices(mut p: &str) -> &str {
    loop {
        let (c, rest) = component(p);
        if !valid_slice_name(c) {
            return p.trim_start_matches('/');
        }
        p = rest;
    }
}

/// `cg_path_decode_unit`: the first component as a unit name (plain or instance).
fn decode_unit(p: &str) -> Option<String> {
    let (c, _) = component(p);
    if c.len() < 3 {
        return None;
    }
    let name = unescape(c);
    unit_name_is_valid(name, true).then(|| name.to_owned())
}

/// `cg_path_get_unit`: the first non-slice component, if it is a unit and not a slice.
pub fn path_unit(path: &str) -> Option<String> {
    decode_unit(skip_slices(path)).filter(|u| !u.ends_with(".slice"))
}

/// `skip_user_manager`: requires `user@UID.service` next and skips it.
fn skip_user_manager(p: &str) -> Option<&str> {
    let (c, rest) = component(p);
    let uid = c.strip_prefix("user@")?.strip_suffix(".service")?;
    parse_uid(uid)?;
    Some(rest.trim_start_matches('/'))
}

/// `skip_session`: requires `session-ID.scope` next and skips it.
fn skip_session(p: &str) -> Option<&str> {
    let (c, rest) = component(p);
    let id = c.strip_prefix("session-")?.strip_suffix(".scope")?;
    // session_id_valid: non-empty, letters and digits only.
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| rest.trim_start_matches('/'))
}

/// `parse_uid`: decimal, and not one of the two invalid uids (-1 and the 16-bit -1).
fn parse_uid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>()
        .ok()
        .filter(|&u| u != u32::MAX && u != 0xFFFF)
}

/// `skip_user_prefix`: past the slices and then the user manager or a login session.
fn skip_user_prefix(path: &str) -> Option<&str> {
    let e = skip_slices(path);
    if e.is_empty() {
        return None;
    }
    skip_user_manager(e).or_else(|| skip_session(e))
}

/// `cg_path_get_user_unit`: the unit inside a user manager (or a session scope).
pub fn path_user_unit(path: &str) -> Option<String> {
    path_unit(skip_user_prefix(path)?)
}

/// `cg_path_get_slice`: the right-most slice of the leading run of slices, `-.slice` if none.
pub fn path_slice(mut p: &str) -> Option<String> {
    let mut last = None;
    loop {
        let (c, rest) = component(p);
        if !valid_slice_name(c) {
            return match last {
                None => Some("-.slice".to_owned()),
                Some(slice) => decode_unit(slice),
            };
        }
        last = Some(c);
        p = rest;
    }
}

#[cfg(test)]
mod tests;
