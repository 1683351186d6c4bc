//! The listening sockets ([`Listeners`]), and binding our own when systemd passes none.
//!
//! Binding runs in the synchronous part of `main`, before the runtime exists, right after
//! [`crate::systemd::activation`] has found no inherited socket.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::SocketSettings;
use crate::error::Error;

/// A socket to serve, still in blocking `std` form (tokio takes it over in `server`).
#[derive(Debug)]
pub enum Socket {
    /// A listening Unix stream socket.
    Unix(UnixListener),
    /// A listening TCP socket (a `ListenStream=127.0.0.1:5140` drop-in).
    Tcp(TcpListener),
    /// One accepted Unix connection (`Accept=yes`): serve it, then exit.
    ConnectedUnix(UnixStream),
    /// One accepted TCP connection (`Accept=yes`).
    ConnectedTcp(std::net::TcpStream),
    /// An unconnected Unix datagram socket (`ListenDatagram=`): each datagram is one message.
    Datagram(UnixDatagram),
}

/// A socket and what to call it in logs: its `LISTEN_FDNAMES` name, or its path.
#[derive(Debug)]
pub struct Listener {
    pub socket: Socket,
    pub name: String,
    /// Where it came from, for the startup log line (`fd 3`, or the bound path).
    pub origin: String,
}

/// The sockets the daemon will serve, plus the file it must remove on exit (if it bound one).
#[derive(Debug)]
pub struct Listeners {
    pub sockets: Vec<Listener>,
    /// Present only when the daemon bound the sockets itself: dropped, they unlink the files.
    pub bound: Vec<BoundPath>,
}

impl Listeners {
    /// True when systemd handed over an already-accepted connection (`Accept=yes`).
    pub fn is_single_connection(&self) -> bool {
        !self.sockets.is_empty()
            && self
                .sockets
                .iter()
                .all(|l| matches!(l.socket, Socket::ConnectedUnix(_) | Socket::ConnectedTcp(_)))
    }

    /// True when the sockets came from systemd rather than from our own `bind`.
    pub fn inherited(&self) -> bool {
        self.bound.is_empty()
    }
}

/// The socket's own address, as a name: a path, `ip:port`, or `unix` when it has neither.
fn local_name(socket: &Socket) -> String {
    let unix = |addr: std::io::Result<std::os::unix::net::SocketAddr>| {
        addr.ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "unix".to_owned())
    };
    let tcp = |addr: std::io::Result<std::net::SocketAddr>| {
        addr.map_or_else(|_| "tcp".to_owned(), |a| a.to_string())
    };
    match socket {
        Socket::Unix(l) => unix(l.local_addr()),
        Socket::ConnectedUnix(s) => unix(s.local_addr()),
        Socket::Tcp(l) => tcp(l.local_addr()),
        Socket::ConnectedTcp(s) => tcp(s.local_addr()),
        Socket::Datagram(s) => unix(s.local_addr()),
    }
}

/// A socket file the daemon created, removed again when this is dropped — but only if the file
/// at the path is still the one we bound (another instance may have replaced it).
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the daemon's own socket at `settings.path` with the configured mode and group.
///
/// A stale socket file (nothing answers a connect) is replaced; a live one is an error; anything
/// that is not a socket is never touched.
///
/// Race-free (issue 12.5): the socket is bound in a fresh 0700 directory beside the target
/// (`.NAME.XXXXXX`, same filesystem), gets its group and mode there — by name inside that
/// directory, which nobody else can enter, so no symlink can be swapped in and no umask leaves it
/// open meanwhile — and is then `rename`d into place, complete. Where the target is absent the
/// rename is `RENAME_NOREPLACE`, so a file created meanwhile is never replaced.
///
/// A parent directory writable by other users is refused unless it is sticky and owned by root
/// or by us (like /tmp): anyone else could replace the socket between our check and our use.
/// systemd itself binds its sockets in directories only root can write (/run, /run/systemd) and
/// has no such check; a root daemon run by hand with `--socket` may be pointed anywhere.
///
/// With `socket.datagram_path` set, the datagram socket is bound there the same way, with the
/// same mode and group.
pub fn bind(settings: &SocketSettings) -> Result<Listeners, Error> {
    let path = settings.path()?.to_owned();
    let stream_live = |p: &Path| UnixStream::connect(p).map(drop);
    let (listener, bound) = bind_at(
        &path,
        "socket.path",
        settings,
        UnixListener::bind,
        stream_live,
    )?;
    let mut listeners = Listeners {
        sockets: vec![Listener {
            socket: Socket::Unix(listener),
            name: path.display().to_string(),
            origin: path.display().to_string(),
        }],
        bound: vec![bound],
    };
    if let Some(dpath) = &settings.datagram_path {
        let datagram_live = |p: &Path| UnixDatagram::unbound()?.connect(p);
        // SO_PASSCRED before the socket is in place: a datagram queued before the option is
        // set would carry no credentials.
        let bind_passcred = |p: PathBuf| {
            let socket = UnixDatagram::bind(p)?;
            rustix::net::sockopt::set_socket_passcred(&socket, true)?;
            Ok(socket)
        };
        let (socket, bound) = bind_at(
            dpath,
            "socket.datagram_path",
            settings,
            bind_passcred,
            datagram_live,
        )?;
        listeners.sockets.push(Listener {
            socket: Socket::Datagram(socket),
            name: dpath.display().to_string(),
            origin: dpath.display().to_string(),
        });
        listeners.bound.push(bound);
    }
    Ok(listeners)
}

/// Binds one socket at `path` (`key` names its setting in errors) race-free, as [`bind`]
/// describes: `make` binds it, `live` connects to tell a live socket from a stale one.
fn bind_at<T>(
    path: &Path,
    key: &str,
    settings: &SocketSettings,
    make: impl FnOnce(PathBuf) -> io::Result<T>,
    live: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(T, BoundPath), Error> {
    use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
    let path = &path.to_owned();
    let at = |what: &str, e: io::Error| Error::io(format!("{}: {what}", path.display()), e);
    let (Some(name), Some(parent)) = (path.file_name(), path.parent()) else {
        return Err(Error::Config(format!(
            "{key}: {} names no file",
            path.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let parent_fd = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| at("cannot bind", e.into()))?;
    check_parent(&parent_fd, parent, key)?;

    let replace_stale = match rustix::fs::statat(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket =>
        {
            match live(path) {
                Ok(()) => return Err(Error::SocketInUse(path.clone())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => true,
                Err(e) => return Err(at("checking whether another instance listens", e)),
            }
        }
        Ok(_) => return Err(Error::NotASocket(path.clone())),
        Err(rustix::io::Errno::NOENT) => false,
        Err(e) => return Err(at("", e.into())),
    };

    // The private directory: mkdir never follows a symlink, and fails if the name exists.
    let mut tmp_name = None;
    for attempt in 0..100u32 {
        let candidate = format!(
            ".{}.{:06x}",
            name.to_string_lossy(),
            (std::process::id() ^ attempt.wrapping_mul(0x9e37_79b9) ^ nanos()) & 0xff_ffff
        );
        match rustix::fs::mkdirat(&parent_fd, candidate.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                tmp_name = Some(candidate);
                break;
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(at("creating a temporary directory beside it", e.into())),
        }
    }
    let tmp_name = tmp_name.ok_or_else(|| {
        at(
            "creating a temporary directory beside it",
            io::Error::from(io::ErrorKind::AlreadyExists),
        )
    })?;
    let tmp = TempDir {
        parent: &parent_fd,
        name: &tmp_name,
        entry: name,
    };
    let tmp_fd = rustix::fs::openat(
        &parent_fd,
        tmp_name.as_str(),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| at("opening the temporary directory", e.into()))?;
    let listener = make(parent.join(&tmp_name).join(name)).map_err(|e| at("cannot bind", e))?;
    if let Some(group) = &settings.group {
        let gid = lookup_group(group)?;
        rustix::fs::chownat(
            &tmp_fd,
            name,
            None,
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| at(&format!("cannot set group {group}"), e.into()))?;
    }
    rustix::fs::chmodat(
        &tmp_fd,
        name,
        Mode::from_raw_mode(settings.mode),
        AtFlags::empty(),
    )
    .map_err(|e| at("cannot set mode", e.into()))?;
    let st = rustix::fs::statat(&tmp_fd, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| at("", e.into()))?;
    let flags = if replace_stale {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    rustix::fs::renameat_with(&tmp_fd, name, &parent_fd, name, flags).map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            Error::NotASocket(path.clone())
        } else {
            at("moving the socket into place", e.into())
        }
    })?;
    drop(tmp);
    Ok((
        listener,
        BoundPath {
            path: path.clone(),
            dev: st.st_dev,
            ino: st.st_ino,
        },
    ))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// The private directory `bind` works in: removed (with the socket, if still inside) on drop.
struct TempDir<'a> {
    parent: &'a OwnedFd,
    name: &'a str,
    entry: &'a std::ffi::OsStr,
}

impl Drop for TempDir<'_> {
    fn drop(&mut self) {
        use rustix::fs::{AtFlags, OFlags};
        if let Ok(fd) = rustix::fs::openat(
            self.parent,
            self.name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            let _ = rustix::fs::unlinkat(&fd, self.entry, AtFlags::empty());
        }
        let _ = rustix::fs::unlinkat(self.parent, self.name, AtFlags::REMOVEDIR);
    }
}

/// Refuses a directory other users may write to, unless it is sticky and owned by root or us.
fn check_parent(fd: &OwnedFd, dir: &std::path::Path, key: &str) -> Result<(), Error> {
    let st =
        rustix::fs::fstat(fd).map_err(|e| Error::io(format!("{}", dir.display()), e.into()))?;
    let mode = st.st_mode;
    let egid = rustix::process::getegid().as_raw();
    let euid = rustix::process::geteuid().as_raw();
    // A directory's owner can always make it writable (chmod), so one owned by another user
    // counts as writable by others whatever its mode says.
    let trusted_owner = st.st_uid == 0 || st.st_uid == euid;
    let others_write =
        !trusted_owner || mode & 0o002 != 0 || (mode & 0o020 != 0 && st.st_gid != egid);
    let sticky_and_trusted = mode & 0o1000 != 0 && trusted_owner;
    if others_write && !sticky_and_trusted {
        return Err(Error::Config(format!(
            "{key}: {} is writable by other users (mode {:04o}, owner uid {}) and not sticky: \
             another user could replace the socket; use a directory only root (or the daemon's \
             user) can write, such as /run",
            dir.display(),
            mode & 0o7777,
            st.st_uid
        )));
    }
    Ok(())
}

fn lookup_group(name: &str) -> Result<u32, Error> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(Error::Config(format!(
            "socket.group: no group named {name:?}"
        ))),
        Err(e) => Err(Error::io(format!("looking up group {name:?}"), e.into())),
    }
}
impl Socket {
    /// Switches to non-blocking mode, which tokio requires of every socket it adopts.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_nonblocking(true),
            Socket::Tcp(s) => s.set_nonblocking(true),
            Socket::ConnectedUnix(s) => s.set_nonblocking(true),
            Socket::ConnectedTcp(s) => s.set_nonblocking(true),
            Socket::Datagram(s) => s.set_nonblocking(true),
        }
    }

    /// Its own address: a path, `ip:port`, or `unix`.
    pub fn address(&self) -> String {
        local_name(self)
    }

    /// `unix /run/app.sock`, `tcp 127.0.0.1:5140`, `accepted unix connection …`: for logs.
    pub fn describe(&self) -> String {
        let kind = match self {
            Socket::Unix(_) => "unix",
            Socket::Tcp(_) => "tcp",
            Socket::ConnectedUnix(_) => "accepted unix connection on",
            Socket::ConnectedTcp(_) => "accepted tcp connection on",
            Socket::Datagram(_) => "unix datagram",
        };
        format!("{kind} {}", local_name(self))
    }
}

#[cfg(test)]
mod tests;
