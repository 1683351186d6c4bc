//! A stand-in for systemd's file-descriptor store, so that handing connections over across a
//! restart can be tested without PID 1 (tests/it/handover.rs, benches/handover.rs).
//!
//! It plays what systemd does for a `Type=notify` service with `FileDescriptorStoreMax=` and a
//! socket unit (`service.c` in systemd v252): it owns the listening socket (the socket unit)
//! and the notify socket; it keeps the fds the daemon sends with `FDSTORE=1`, under their
//! `FDNAME=`, dropping a second copy of an fd it already holds; `FDSTOREREMOVE=1` closes every
//! fd of a name; and it starts each instance with the listener first and then the stored fds in
//! `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` — newest first, as systemd's list (entries are
//! prepended) hands them out — keeping them stored, as systemd does. A restart is SIGTERM, the
//! wait for the exit, and a new start; a crash is SIGKILL and a new start. What it does not
//! play: polling stored fds (the daemon always sends `FDPOLL=0`, which the harness checks),
//! the store's size limit, and the check that the sender is the main pid.
//!
//! Self-contained (no `support.rs`): the bench includes this file too.

#![allow(dead_code)] // the test and the bench each use a part

use std::collections::HashMap;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One stored fd and its name.
pub struct Stored {
    pub name: String,
    pub fd: OwnedFd,
}

/// What the manager saw on the notify socket.
#[derive(Debug, Clone)]
pub struct Notice {
    pub at: Instant,
    pub text: String,
    pub fds: usize,
}

struct Shared {
    /// Oldest first.
    store: Vec<Stored>,
    /// (st_dev, st_ino) of every stored fd: systemd compares each new fd with every stored one
    /// (`same_fd`), a cost of PID 1's that the benchmark is not about.
    inodes: std::collections::HashSet<(u64, u64)>,
    notices: Vec<Notice>,
    /// The last sync marker the receiving thread has seen, and the last one sent.
    synced: u64,
    synced_asked: u64,
    /// Messages that broke the protocol (FDSTORE=1 without FDNAME, without FDPOLL=0, a name
    /// with `:`), for the test to fail on.
    errors: Vec<String>,
    /// `FileDescriptorStoreMax=`, when a test plays it: systemd 252's `service_add_fd_store`
    /// refuses (EXFULL, "Hit fd store limit") every fd past it, before its duplicate check.
    max: Option<usize>,
}

/// systemd, as far as the fd store goes.
pub struct FdStoreManager {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    listener: UnixListener,
    /// More listeners of the socket unit, with their names (`FileDescriptorName=`).
    extra: Vec<(UnixListener, String)>,
    notify_path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    ready_rx: mpsc::Receiver<Instant>,
    stdout: PathBuf,
    stderr: PathBuf,
    pub child: Option<Child>,
    /// Instances started so far.
    pub starts: usize,
}

impl FdStoreManager {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("app.sock");
        let listener = UnixListener::bind(&socket).expect("binding the listener");
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        // Big enough that the daemon's burst at a handover never waits for this thread long.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&notify, 8 << 20);
        let shared = Arc::new(Mutex::new(Shared {
            store: Vec::new(),
            inodes: Default::default(),
            notices: Vec::new(),
            synced: 0,
            synced_asked: 0,
            errors: Vec::new(),
            max: None,
        }));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let shared = shared.clone();
            std::thread::spawn(move || receive(notify, shared, ready_tx));
        }
        FdStoreManager {
            stdout: dir.path().join("stdout"),
            stderr: dir.path().join("stderr"),
            dir,
            socket,
            listener,
            extra: Vec::new(),
            notify_path,
            shared,
            ready_rx,
            child: None,
            starts: 0,
        }
    }

    /// Adds a listener at `file` in the manager's directory, named `name`, passed after the
    /// first one; returns its path.
    pub fn add_listener(&mut self, file: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        self.extra
            .push((UnixListener::bind(&path).unwrap(), name.to_owned()));
        path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `toml` as the daemon's configuration file in [`FdStoreManager::dir`]; its path,
    /// for `--config`.
    pub fn config(&self, toml: &str) -> String {
        let path = self.dir().join("app.toml");
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    }

    /// Starts an instance as systemd would: `argv` after the binary, the listener and the
    /// store in `LISTEN_FDS`, `NOTIFY_SOCKET`, `FDSTORE=4224` (what the unit sets); waits for
    /// `READY=1` and returns when it came.
    pub fn start(&mut self, app: &str, argv: &[&str], env: &[(&str, &str)]) -> Instant {
        self.start_in(&[], app, argv, env)
    }

    /// [`FdStoreManager::start`] through `prefix`, a command that must exec what follows it in
    /// the same process (`nsenter --target PID --mount --`, to run inside a test journald's
    /// mount namespace).
    pub fn start_in(
        &mut self,
        prefix: &[&str],
        app: &str,
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> Instant {
        assert!(self.child.is_none(), "an instance is running");
        while self.ready_rx.try_recv().is_ok() {}
        let (fds, names) = {
            let shared = self.shared.lock().unwrap();
            let mut fds: Vec<OwnedFd> = vec![self.listener.as_fd().try_clone_to_owned().unwrap()];
            let mut names = vec!["app.socket".to_owned()];
            for (l, name) in &self.extra {
                fds.push(l.as_fd().try_clone_to_owned().unwrap());
                names.push(name.clone());
            }
            // systemd prepends each stored fd to its list: the newest comes first.
            for s in shared.store.iter().rev() {
                fds.push(s.fd.try_clone().unwrap());
                names.push(s.name.clone());
            }
            (fds, names)
        };
        let n = fds.len();
        // Each fd above 3 + n first, so that putting them at 3, 4, … overwrites none of them.
        let high: Vec<OwnedFd> = fds
            .iter()
            .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 3 + n as i32).unwrap())
            .collect();
        drop(fds);
        let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("sh");
                c
            }
            None => Command::new("sh"),
        };
        // LISTEN_PID must be the daemon's pid: the shell's, which exec keeps.
        cmd.arg("-c")
            .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
            .arg(app)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("FDSTORE", "4224")
            .env("LISTEN_FDS", n.to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(append(&self.stdout))
            .stderr(append(&self.stderr));
        // SAFETY: only dup2 and prctl (async-signal-safe) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The daemon dies with the test.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("starting the daemon");
        drop(high);
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(at) = self.ready_rx.recv_timeout(Duration::from_millis(20)) {
                return at;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited before READY=1 ({status}): {}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 20 s: {}",
                self.stderr()
            );
        }
    }

    /// SIGTERM (systemd's stop, and the first half of a restart); the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit()
    }

    /// [`FdStoreManager::stop`], with the instance's own peak RSS in KiB (`wait4`'s rusage of
    /// that one child: `RUSAGE_CHILDREN` would mix in other tests' children).
    pub fn stop_with_peak_rss(&mut self) -> (ExitStatus, u64) {
        use std::os::unix::process::ExitStatusExt;
        self.signal(rustix::process::Signal::TERM);
        let pid = self.child.as_ref().expect("a running instance").id() as libc::pid_t;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut status = 0;
            let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
            // SAFETY: wait4 fills `status` and `usage` for our own child.
            let reaped =
                unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
            if reaped == pid {
                // Reaped here: std's handle has nothing left to wait for.
                self.child = None;
                self.sync();
                // SAFETY: filled by the successful wait4.
                let usage = unsafe { usage.assume_init() };
                return (ExitStatus::from_raw(status), usage.ru_maxrss as u64);
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within 20 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL (a crash); returns once the process is gone.
    pub fn kill(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        self.wait_exit();
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("a running instance").id();
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig)
            .unwrap();
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running instance");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.sync();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit within 20 s: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Returns once every message sent to the notify socket so far has been taken in: systemd
    /// reads what a service sent before it handles the service's exit (the notify socket's
    /// event source has the higher priority), and so must the stand-in.
    pub fn sync(&self) {
        let n = {
            let mut shared = self.shared.lock().unwrap();
            shared.synced_asked += 1;
            shared.synced_asked
        };
        let s = UnixDatagram::unbound().unwrap();
        s.send_to(format!("{SYNC}{n}").as_bytes(), &self.notify_path)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.shared.lock().unwrap().synced < n {
            assert!(
                Instant::now() < deadline,
                "the notify socket was not drained"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Puts `fd` in the store as `name`, as if the daemon had sent it; replaces what is stored
    /// under that name if `replace`.
    pub fn inject(&self, name: &str, fd: OwnedFd, replace: bool) {
        let mut shared = self.shared.lock().unwrap();
        if replace {
            shared.store.retain(|s| s.name != name);
        }
        shared.store.push(Stored {
            name: name.to_owned(),
            fd,
        });
    }

    /// Plays `FileDescriptorStoreMax=n`: fds past `n` are refused, as systemd 252 does.
    pub fn set_store_max(&self, n: usize) {
        self.shared.lock().unwrap().max = Some(n);
    }

    /// Names in the store now, oldest first.
    pub fn stored_names(&self) -> Vec<String> {
        let shared = self.shared.lock().unwrap();
        shared.store.iter().map(|s| s.name.clone()).collect()
    }

    pub fn notices(&self) -> Vec<Notice> {
        self.shared.lock().unwrap().notices.clone()
    }

    /// Protocol errors the daemon made.
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().unwrap().errors.clone()
    }

    /// Waits until the daemon has had a second message with `needle` since `since`.
    pub fn wait_notice(&self, needle: &str, since: Instant, timeout: Duration) -> Notice {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self
                .notices()
                .into_iter()
                .find(|n| n.at >= since && n.text.contains(needle))
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no notification with {needle:?} within {timeout:?}: {:?}",
                self.notices()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything every instance wrote to stdout.
    pub fn stdout(&self) -> Vec<u8> {
        std::fs::read(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }
}

impl Drop for FdStoreManager {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Close what is stored, and let the receiving thread go.
        if let Ok(mut shared) = self.shared.lock() {
            shared.store.clear();
        }
        if let Ok(s) = UnixDatagram::unbound() {
            let _ = s.send_to(STOP.as_bytes(), &self.notify_path);
        }
    }
}

/// What the manager sends itself to end its receiving thread.
const STOP: &str = "X_HARNESS_STOP=1";
/// What the manager sends itself to know the thread has read everything before it.
const SYNC: &str = "X_HARNESS_SYNC=";

fn append(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// The manager's side of `NOTIFY_SOCKET`: every message, with the fds it carries.
fn receive(socket: UnixDatagram, shared: Arc<Mutex<Shared>>, ready: mpsc::Sender<Instant>) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; 4096];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let n = match rustix::net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        {
            Ok(r) => r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        };
        let at = Instant::now();
        let mut fds: Vec<OwnedFd> = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text == STOP {
            return;
        }
        if let Some(n) = text.strip_prefix(SYNC).and_then(|n| n.parse().ok()) {
            shared.lock().unwrap().synced = n;
            continue;
        }
        let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let mut shared = shared.lock().unwrap();
        shared.notices.push(Notice {
            at,
            text: text.clone(),
            fds: fds.len(),
        });
        if fields.get("FDSTORE") == Some(&"1") {
            let Some(name) = fields.get("FDNAME") else {
                shared
                    .errors
                    .push(format!("FDSTORE=1 without FDNAME: {text:?}"));
                continue;
            };
            if name.contains(':') || name.is_empty() || name.len() > 255 {
                shared.errors.push(format!("invalid FDNAME: {text:?}"));
            }
            if fields.get("FDPOLL") != Some(&"0") {
                shared
                    .errors
                    .push(format!("FDSTORE=1 without FDPOLL=0: {text:?}"));
            }
            for fd in fds {
                if shared.max.is_some_and(|max| shared.store.len() >= max) {
                    shared.errors.push(format!("store full, refused: {name}"));
                    continue;
                }
                // systemd's same_fd(): a copy of an fd already stored is dropped.
                let st = rustix::fs::fstat(&fd).unwrap();
                if shared.inodes.insert((st.st_dev, st.st_ino)) {
                    shared.store.push(Stored {
                        name: name.to_string(),
                        fd,
                    });
                }
            }
        } else if !fds.is_empty() {
            shared
                .errors
                .push(format!("fds without FDSTORE=1: {text:?}"));
        }
        if fields.get("FDSTOREREMOVE") == Some(&"1") {
            match fields.get("FDNAME") {
                Some(name) => {
                    let Shared { store, inodes, .. } = &mut *shared;
                    store.retain(|s| {
                        let keep = s.name != *name;
                        if !keep {
                            let st = rustix::fs::fstat(&s.fd).unwrap();
                            inodes.remove(&(st.st_dev, st.st_ino));
                        }
                        keep
                    });
                }
                None => shared
                    .errors
                    .push(format!("FDSTOREREMOVE=1 without FDNAME: {text:?}")),
            }
        }
        if fields.get("READY") == Some(&"1") {
            let _ = ready.send(at);
        }
    }
}
