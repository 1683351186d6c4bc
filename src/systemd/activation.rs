//! Socket activation (sd_listen_fds(3)): the fds systemd (or `systemfd`) passes us, checked
//! and named, and the choice between them and binding our own socket.
//!
//! Everything here runs in the synchronous part of `main`, before the runtime (and any thread)
//! exists, because taking the inherited fds unsets `LISTEN_*` in the process environment.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use rustix::net::{AddressFamily, SocketType, sockopt};

use crate::config::SocketSettings;
use crate::error::Error;
use crate::listener::{self, Listener, Listeners, Socket};

use super::fdstore::FromStore;

/// The inherited sockets, or our own socket when systemd passed none; and what the fd store
/// gave back (connections carried over from the previous instance, its state record).
///
/// # Safety
/// Mutates the process environment (see [`take_inherited`]): call before any thread exists.
pub unsafe fn acquire(settings: &SocketSettings) -> Result<(Listeners, FromStore), Error> {
    // SAFETY: forwarded to the caller.
    let (inherited, stored) = unsafe { take_inherited() }?;
    let listeners = if inherited.is_empty() {
        listener::bind(settings)?
    } else {
        Listeners {
            sockets: inherited,
            bound: Vec::new(),
        }
    };
    Ok((listeners, stored))
}

/// Takes the sockets passed by systemd, if any, and unsets `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` so that children never see them.
///
/// `LISTEN_PID` must name this process (sd_listen_fds(3)); otherwise the variables were meant
/// for someone else and nothing is inherited. `LISTEN_FDS` without any `LISTEN_PID` is what
/// `systemfd --no-pid` passes (the development loop): accepted, see `take_without_pid`.
///
/// # Safety
/// Mutates the process environment: call it before any other thread exists.
pub unsafe fn take_inherited() -> Result<(Vec<Listener>, FromStore), Error> {
    if std::env::var_os("LISTEN_PID").is_none() && std::env::var_os("LISTEN_FDS").is_some() {
        // SAFETY: forwarded to the caller.
        return unsafe { take_without_pid() };
    }
    // SAFETY: forwarded to the caller.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| Error::io("reading LISTEN_FDS/LISTEN_FDNAMES", e))?;
    let fds: Vec<(RawFd, String)> = fds.collect();
    let mut stored = FromStore::default();
    let listeners = fds
        .into_iter()
        .filter_map(|(fd, name)| {
            // SAFETY: systemd passed us this fd and nothing else in the process owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // What the fd store gave back is told apart by its name, before any check that
            // would refuse a connected socket or a memfd as a listener.
            let owned = stored.take(owned, &name)?;
            Some(classify(owned, fd, name))
        })
        .collect::<Result<_, _>>()?;
    Ok((listeners, stored))
}

/// `LISTEN_FDS` with no `LISTEN_PID` at all: `systemfd --no-pid` holds the socket while the
/// daemon is rebuilt and restarted under it (through `cargo watch` and `cargo run`, so no pid
/// can be named). That is listenfd's rule, so listenfd reads it; sd-notify (which reads
/// `LISTEN_FDNAMES` too) keeps the strict systemd path. Names, if any were passed, still apply.
///
/// # Safety
/// Mutates the process environment: call it before any other thread exists.
unsafe fn take_without_pid() -> Result<(Vec<Listener>, FromStore), Error> {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: forwarded to the caller. (listenfd unsets LISTEN_PID and LISTEN_FDS itself.)
    unsafe { std::env::remove_var("LISTEN_FDNAMES") };
    let mut fds = listenfd::ListenFd::from_env();
    let mut names = names.split(':');
    let mut stored = FromStore::default();
    let listeners = (0..fds.len())
        .filter_map(|i| fds.take_raw_fd(i).ok().flatten())
        .map(|fd| {
            let name = names.next().unwrap_or_default().to_owned();
            // An fd that LISTEN_FDS names but that is not open is a startup error, not an
            // OwnedFd of nothing (whose drop would abort the process).
            // SAFETY: only asks the kernel about the number; nothing is owned or closed.
            let probe = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
            if let Err(e) = rustix::io::fcntl_getfd(probe) {
                return Err(Error::InheritedFd {
                    fd,
                    reason: format!("LISTEN_FDS names it, but it is not open: {e}"),
                });
            }
            // SAFETY: open, passed to us by systemfd and owned by nothing else in the process.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // As sd-notify does for systemd's fds: nothing we might start inherits them.
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| {
                Error::InheritedFd {
                    fd,
                    reason: format!("cannot set FD_CLOEXEC: {e}"),
                }
            })?;
            match stored.take(owned, &name) {
                Some(owned) => classify(owned, fd, name).map(Some),
                None => Ok(None),
            }
        })
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    Ok((listeners, stored))
}

/// Decides what an inherited fd is, refusing anything that is not a stream socket or an
/// unconnected Unix datagram socket.
fn classify(fd: OwnedFd, raw: RawFd, name: String) -> Result<Listener, Error> {
    let bad = |reason: String| Error::InheritedFd { fd: raw, reason };
    let ty = sockopt::socket_type(&fd).map_err(|e| {
        if e == rustix::io::Errno::NOTSOCK {
            bad("not a socket".to_owned())
        } else {
            bad(format!("cannot query the socket type: {e}"))
        }
    })?;
    if ty == SocketType::DGRAM {
        return classify_datagram(fd, raw, name);
    }
    if ty != SocketType::STREAM {
        let kind = match ty {
            SocketType::SEQPACKET => "a seqpacket socket",
            _ => "not a stream socket",
        };
        return Err(bad(format!(
            "{kind}; app serves stream sockets (ListenStream=) and Unix datagram sockets \
             (ListenDatagram=) only"
        )));
    }
    let domain = sockopt::socket_domain(&fd)
        .map_err(|e| bad(format!("cannot query the address family: {e}")))?;
    let listening = sockopt::socket_acceptconn(&fd)
        .map_err(|e| bad(format!("cannot query SO_ACCEPTCONN: {e}")))?;
    let socket = match (domain, listening) {
        (AddressFamily::UNIX, true) => Socket::Unix(UnixListener::from(fd)),
        (AddressFamily::UNIX, false) => Socket::ConnectedUnix(UnixStream::from(fd)),
        (AddressFamily::INET | AddressFamily::INET6, true) => Socket::Tcp(TcpListener::from(fd)),
        (AddressFamily::INET | AddressFamily::INET6, false) => {
            Socket::ConnectedTcp(std::net::TcpStream::from(fd))
        }
        (other, _) => {
            return Err(bad(format!(
                "unsupported address family {}; app serves Unix and TCP stream sockets",
                other.as_raw()
            )));
        }
    };
    Ok(listener(socket, raw, name))
}

/// The inherited `socket` at fd `raw` with its `FileDescriptorName=`; without one (or outside
/// systemd) a socket is named by its address.
fn listener(socket: Socket, raw: RawFd, name: String) -> Listener {
    let name = if name.is_empty() || name == "unknown" {
        socket.address()
    } else {
        name
    };
    Listener {
        socket,
        name,
        origin: format!("fd {raw}"),
    }
}

/// A datagram socket: served if it is a Unix one that is not connected to a peer (a connected
/// one would hear only that peer).
fn classify_datagram(fd: OwnedFd, raw: RawFd, name: String) -> Result<Listener, Error> {
    let bad = |reason: String| Error::InheritedFd { fd: raw, reason };
    let domain = sockopt::socket_domain(&fd)
        .map_err(|e| bad(format!("cannot query the address family: {e}")))?;
    if domain != AddressFamily::UNIX {
        return Err(bad(format!(
            "a datagram socket of address family {}; app serves Unix datagram sockets only \
             (ListenDatagram=/run/app.dgram)",
            domain.as_raw()
        )));
    }
    match rustix::net::getpeername(&fd) {
        Err(rustix::io::Errno::NOTCONN) => {}
        Ok(_) => {
            return Err(bad(
                "a connected datagram socket; app serves an unconnected one \
                 (ListenDatagram=/run/app.dgram)"
                    .to_owned(),
            ));
        }
        Err(e) => return Err(bad(format!("cannot query the peer: {e}"))),
    }
    Ok(listener(
        Socket::Datagram(UnixDatagram::from(fd)),
        raw,
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// Issue 15.2: an unconnected Unix datagram socket (`ListenDatagram=`) is served; a
    /// connected one, or a seqpacket socket, is still a clear startup error.
    #[test]
    fn classify_accepts_an_unconnected_datagram_socket_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = UnixDatagram::bind(dir.path().join("d")).unwrap();
        let l = classify(d.into(), 7, "dgram".into()).unwrap();
        assert!(matches!(l.socket, Socket::Datagram(_)));
        assert_eq!(l.name, "dgram");
        let (a, _b) = UnixDatagram::pair().unwrap();
        let err = classify(a.into(), 7, "x".into()).unwrap_err();
        assert_eq!(
            err.to_string().split(';').next().unwrap(),
            "fd 7: a connected datagram socket"
        );
        let seq = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        let err = classify(seq, 8, "x".into()).unwrap_err();
        assert_eq!(
            err.to_string().split(';').next().unwrap(),
            "fd 8: a seqpacket socket"
        );
    }

    #[test]
    fn classify_refuses_a_file() {
        let f = tempfile::tempfile().unwrap();
        let err = classify(f.into(), 9, "x".into()).unwrap_err();
        assert_eq!(err.to_string(), "fd 9: not a socket");
    }

    #[test]
    fn classify_tells_listening_from_connected() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        let c = UnixStream::connect(dir.path().join("s")).unwrap();
        assert!(matches!(
            classify(l.into(), 3, "a".into()).unwrap().socket,
            Socket::Unix(_)
        ));
        assert!(matches!(
            classify(c.into(), 4, "b".into()).unwrap().socket,
            Socket::ConnectedUnix(_)
        ));
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            classify(t.into(), 5, "c".into()).unwrap().socket,
            Socket::Tcp(_)
        ));
    }
}
