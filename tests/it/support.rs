//! Test fixtures: a real journald in a private mount namespace, the daemon as a subprocess, and
//! small clients.
//!
//! Tests whose name contains `journald` or ends in `_root` need root (they create mount namespaces and run
//! systemd-journald); they fail with a message saying so when run without it. CI runs as root.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const APP: &str = env!("CARGO_BIN_EXE_app");

/// Fails the test, loudly, when it cannot do what it is about.
pub fn require_root(what: &str) {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "{what} needs root (private mount namespaces, a real systemd-journald). \
             Run the suite as root (`sudo -E tests/setup`, or `bash .ci/run` as CI does), \
             or leave these tests out explicitly with `cargo test -- --skip journald`."
        );
    }
}

/// Makes a spawned process die with the test that started it.
pub trait DieWithTest {
    /// SIGKILL when the thread that spawns it ends — the test, also on panic or when the test
    /// binary is killed (`PR_SET_PDEATHSIG`, kept across exec). A process that starts others
    /// must pass this on (`setpriv --pdeathsig KILL`), or run them in a pid namespace of its own.
    fn die_with_test(&mut self) -> &mut Self;
}

impl DieWithTest for Command {
    fn die_with_test(&mut self) -> &mut Self {
        // SAFETY: prctl only (async-signal-safe) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(self, || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            })
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    wait_until_or(timeout, what, &mut f, String::new)
}

/// Like [`wait_until`], adding `context()` to the failure message.
pub fn wait_until_or<T>(
    timeout: Duration,
    what: &str,
    f: &mut dyn FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A systemd-journald of our own: private `/run` and `/var/log/journal` (tmpfs), volatile
/// storage, no rate limit, and `max_dgram_qlen` 512 as under systemd (its own network
/// namespace, which does not affect Unix sockets reached by path).
pub struct Journald {
    child: Child,
    /// Set when a holder process owns journald's native socket and restarts journald whenever
    /// it exits, as systemd does with systemd-journald.socket.
    held: bool,
}

const JOURNALD_CONF: &str = "[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitIntervalSec=0\nRuntimeMaxUse=6G\nRuntimeMaxFileSize=256M\n";

/// Not a test: the entry point of the holder process that [`Journald::start_held`] runs in a
/// mount namespace of its own (it is this test binary, re-executed). Without
/// `APP_IT_JOURNALD_HOLDER` it returns at once.
#[test]
fn journald_holder_process() {
    if std::env::var_os("APP_IT_JOURNALD_HOLDER").is_none() {
        return;
    }
    let sh = |script: &str| {
        let ok = Command::new("sh")
            .args(["-c", script])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    };
    sh(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /var/log/journal; \
        mount -t tmpfs tmpfs /var/log/journal; mkdir -p /run/systemd/journal /run/systemd/journald.conf.d; \
        echo 512 > /proc/sys/net/unix/max_dgram_qlen",
    );
    std::fs::write("/run/systemd/journald.conf.d/test.conf", JOURNALD_CONF).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
    std::fs::set_permissions(
        "/run/systemd/journal/socket",
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    loop {
        let mut cmd = Command::new("sh");
        // `exec` keeps the shell's pid, which is what LISTEN_PID must name.
        cmd.args([
            "-c",
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec /lib/systemd/systemd-journald",
        ]);
        // SAFETY: only dup2 and fcntl (async-signal-safe) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let src = std::os::fd::BorrowedFd::borrow_raw(fd);
                let mut three = std::os::fd::OwnedFd::from_raw_fd(3);
                if fd != 3 {
                    rustix::io::dup2(src, &mut three)?;
                }
                // The socket must survive exec (dup2 onto itself would keep FD_CLOEXEC).
                rustix::io::fcntl_setfd(&three, rustix::io::FdFlags::empty())?;
                std::mem::forget(three);
                Ok(())
            });
        }
        // Dies with this holder: killing the holder (the test's drop, or the test dying) must
        // not leave a journald behind.
        let mut journald = cmd
            .die_with_test()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write("/run/journald.pid", journald.id().to_string()).unwrap();
        let _ = journald.wait();
    }
}

impl Journald {
    pub fn start() -> Journald {
        Journald::start_with_qlen(512)
    }

    /// Like [`Journald::start`], with `net.unix.max_dgram_qlen` set to `qlen` in journald's
    /// network namespace (10 is the kernel's default, outside systemd).
    pub fn start_with_qlen(qlen: u32) -> Journald {
        require_root("a real journald");
        let script = r#"set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log/journal 2>/dev/null || { mkdir -p /var/log/journal && mount -t tmpfs tmpfs /var/log/journal; }
mkdir -p /run/systemd/journald.conf.d
printf '%s' "$JOURNALD_CONF" > /run/systemd/journald.conf.d/test.conf
echo "$QLEN" > /proc/sys/net/unix/max_dgram_qlen
exec /lib/systemd/systemd-journald"#;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--net", "--"])
            .args(["setpriv", "--pdeathsig", "KILL", "--", "sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("JOURNALD_CONF", JOURNALD_CONF)
            .env("QLEN", qlen.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning unshare for journald");
        let j = Journald { child, held: false };
        j.wait_started();
        j
    }

    /// A journald whose native socket is held by another process across restarts (as systemd
    /// holds it): killing journald loses nothing that was queued on the socket.
    pub fn start_held() -> Journald {
        require_root("a real journald");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--net", "--"])
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "support::journald_holder_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("APP_IT_JOURNALD_HOLDER", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the journald holder");
        let j = Journald { child, held: true };
        j.wait_started();
        j
    }

    /// The pid of the journald running now.
    pub fn journald_pid(&self) -> u32 {
        if !self.held {
            return self.pid();
        }
        let file = self.root().join("run/journald.pid");
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until our journald is up in its own `/run`. On a machine where a journald already
    /// runs (systemd as init, a container), `/proc/PID/root/run/systemd/journal/socket` exists
    /// before ours is there — it is the machine's, seen until `unshare` has mounted the tmpfs —
    /// so first our config file (only in our `/run`), then the sockets and journal directory.
    fn wait_started(&self) {
        let j = self;
        let conf = j.root().join("run/systemd/journald.conf.d/test.conf");
        let socket = j.root().join("run/systemd/journal/socket");
        let stdout = j.root().join("run/systemd/journal/stdout");
        let journal = j.root().join("run/log/journal");
        wait_until(Duration::from_secs(10), "journald's sockets", || {
            (conf.exists() && socket.exists() && stdout.exists() && journal.exists()).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// journald's view of `/`: its private `/run` is under here.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid()))
    }

    /// A command that runs inside journald's mount namespace (so it sees journald's `/run`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "--target",
            &self.pid().to_string(),
            "--mount",
            "--",
            program,
        ]);
        c
    }

    /// Every entry with `SYSLOG_IDENTIFIER=identifier`, in journal order.
    pub fn entries(&self, identifier: &str) -> Vec<Entry> {
        self.query(&[&format!("SYSLOG_IDENTIFIER={identifier}")])
    }

    pub fn query(&self, matches: &[&str]) -> Vec<Entry> {
        let dir = self.root().join("run/log/journal");
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(&dir)
            .args(["-o", "json", "--all", "--no-pager", "-q"])
            .args(matches)
            .output()
            .expect("running journalctl");
        assert!(
            out.status.success(),
            "journalctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Entry(serde_json::from_slice(l).expect("journalctl JSON")))
            .collect()
    }

    /// Just the MESSAGE of each entry of `identifier`, in journal order (`-o cat`): cheap enough
    /// for hundreds of megabytes.
    pub fn messages(&self, identifier: &str) -> Vec<Vec<u8>> {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.root().join("run/log/journal"))
            .args(["-o", "cat", "--all", "--no-pager", "-q"])
            .arg(format!("SYSLOG_IDENTIFIER={identifier}"))
            .output()
            .expect("running journalctl");
        assert!(
            out.status.success(),
            "journalctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<Vec<u8>> = out
            .stdout
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        lines.pop(); // after the last newline
        lines
    }

    /// Waits until at least `n` messages of `identifier` are in, then returns them all.
    pub fn wait_for_messages(&self, identifier: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let start = Instant::now();
        loop {
            let got = self.messages(identifier);
            if got.len() >= n {
                std::thread::sleep(Duration::from_millis(500));
                return self.messages(identifier);
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} of {n} messages of {identifier} after {timeout:?}",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.journald_pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits until at least `n` entries with `identifier` are in, then a little longer to catch
    /// any duplicate, and returns them all.
    pub fn wait_for(&self, identifier: &str, n: usize) -> Vec<Entry> {
        let timeout = Duration::from_secs(30 + n as u64 / 5000);
        wait_until(timeout, &format!("{n} entries of {identifier}"), || {
            (self.entries(identifier).len() >= n).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        self.entries(identifier)
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One journal entry as `journalctl -o json` prints it.
#[derive(Debug, Clone)]
pub struct Entry(pub serde_json::Map<String, serde_json::Value>);

impl Entry {
    /// A field's bytes: journalctl prints text as a string and binary as an array of numbers.
    pub fn bytes(&self, field: &str) -> Option<Vec<u8>> {
        match self.0.get(field)? {
            serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
            serde_json::Value::Array(a) => Some(
                a.iter()
                    .map(|v| v.as_u64().expect("byte array") as u8)
                    .collect(),
            ),
            other => panic!("{field}: unexpected JSON {other}"),
        }
    }

    pub fn str(&self, field: &str) -> Option<String> {
        self.bytes(field)
            .map(|b| String::from_utf8(b).expect("UTF-8 field"))
    }

    pub fn get(&self, field: &str) -> String {
        self.str(field)
            .unwrap_or_else(|| panic!("entry has no {field}: {self:?}"))
    }
}

/// A temporary directory that other users can enter (for clients running as nobody).
pub fn temp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A unique `journal.identifier` for a test, so that its entries are easy to find.
pub fn identifier(test: &str) -> String {
    format!("t-{test}-{}", std::process::id())
}

/// How to start the daemon.
pub struct DaemonBuilder<'a> {
    journald: Option<&'a Journald>,
    env: HashMap<String, String>,
    args: Vec<String>,
    activate: Option<Vec<String>>,
    config: Option<String>,
    dir: tempfile::TempDir,
    socket: Option<PathBuf>,
    socket_flag: bool,
    journal_stream: bool,
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    /// Holds the socket, config and output files; removed when the daemon is dropped.
    _dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl<'a> DaemonBuilder<'a> {
    pub fn new() -> Self {
        DaemonBuilder {
            journald: None,
            env: HashMap::new(),
            args: Vec::new(),
            activate: None,
            config: None,
            dir: temp_dir(),
            socket: None,
            socket_flag: true,
            journal_stream: false,
        }
    }

    /// Runs the daemon inside `journald`'s mount namespace, so that its messages go there.
    pub fn journald(mut self, j: &'a Journald) -> Self {
        self.journald = Some(j);
        self
    }

    pub fn identifier(self, id: &str) -> Self {
        self.env("APP_JOURNAL__IDENTIFIER", id)
    }

    /// Client messages to the daemon's stdout (read back with [`Daemon::stdout`]).
    pub fn stdout_sink(self) -> Self {
        self.arg("--sink").arg("stdout")
    }

    /// Passes `notify` as `NOTIFY_SOCKET`.
    pub fn notify(self, notify: &NotifySocket) -> Self {
        self.env("NOTIFY_SOCKET", &notify.address)
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// The contents of a `--config` file.
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_owned());
        self
    }

    /// Starts the daemon under `systemd-socket-activate` with these extra arguments (for example
    /// `["-l", "127.0.0.1:5140"]`); the daemon's socket path is always passed first.
    pub fn activated(mut self, extra: &[&str]) -> Self {
        self.activate = Some(extra.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Where the daemon's socket will be.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.dir.path().join("app.sock"))
    }

    /// Sets `JOURNAL_STREAM` to the daemon's stderr, as systemd does when stderr is the journal:
    /// the daemon's own diagnostics then go to journald.
    pub fn journal_stream(mut self) -> Self {
        self.journal_stream = true;
        self
    }

    /// Leaves `--socket` out: the configuration must name the socket.
    pub fn socket_from_config(mut self) -> Self {
        self.socket_flag = false;
        self
    }

    /// Uses this socket path instead of a fresh one.
    pub fn at(mut self, socket: &Path) -> Self {
        self.socket = Some(socket.to_owned());
        self
    }

    pub fn start(self) -> Daemon {
        let socket = self.socket_path();
        let stdout = self.dir.path().join("stdout");
        let stderr = self.dir.path().join("stderr");
        let mut argv: Vec<String> = Vec::new();
        if let Some(extra) = &self.activate {
            argv.extend(["systemd-socket-activate".to_owned(), "-l".to_owned()]);
            argv.push(socket.display().to_string());
            argv.extend(extra.iter().cloned());
            // systemd-socket-activate gives the daemon a fresh environment: pass ours along.
            for (k, v) in &self.env {
                argv.push(format!("-E{k}={v}"));
            }
        }
        argv.push(APP.to_owned());
        // Always a config file of our own: the host's /etc/app/app.toml must not leak in.
        let config = self.dir.path().join("app.toml");
        std::fs::write(&config, self.config.as_deref().unwrap_or("")).unwrap();
        argv.extend(["--config".to_owned(), config.display().to_string()]);
        argv.push("serve".to_owned());
        if self.activate.is_none() && self.socket_flag {
            argv.extend(["--socket".to_owned(), socket.display().to_string()]);
        }
        argv.extend(self.args.iter().cloned());

        let mut cmd = match self.journald {
            Some(j) => {
                let mut c = j.command(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let stderr_file = File::create(&stderr).unwrap();
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(&self.env);
        if self.journal_stream {
            use std::os::unix::fs::MetadataExt;
            let meta = stderr_file.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let child = cmd
            .die_with_test()
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(stderr_file)
            .spawn()
            .expect("spawning the daemon");
        let mut d = Daemon {
            child: Some(child),
            socket,
            _dir: self.dir,
            stdout,
            stderr,
        };
        // systemd-socket-activate, like systemd, starts the daemon on the first connection.
        if self.journal_stream {
            // Its startup line goes to the journal, not to stderr.
            wait_until(Duration::from_secs(10), "the socket", || {
                d.socket.exists().then_some(())
            });
        } else {
            d.wait_listening(if self.activate.is_some() {
                "Listening on "
            } else {
                "serving "
            });
        }
        d
    }
}

impl Daemon {
    fn wait_listening(&mut self, marker: &str) {
        let socket = self.socket.clone();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({status}): {}", self.stderr());
            }
            // The daemon's startup line comes after every listener is registered.
            if socket.exists() && self.stderr().contains(marker) {
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("daemon not listening after 10s: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Where the daemon's stdout goes.
    pub fn stdout_path(&self) -> PathBuf {
        self.stdout.clone()
    }

    /// What the daemon printed (lossy: client bytes need not be UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then the exit status (panics if it takes over 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(10))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = wait_until(timeout, "the daemon to exit", || child.try_wait().unwrap());
        self.child = None;
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connects, writes `bytes`, closes the write side and waits for the daemon to close in turn
/// (which it does once it has taken everything). Returns what the daemon wrote back.
pub fn send(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connecting to the daemon");
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// Runs the app binary with a clean environment and returns (status, stdout, stderr).
pub fn run_app(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(APP)
        .die_with_test()
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The receiving end of `NOTIFY_SOCKET`, as systemd holds it.
pub struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    /// What to put in `NOTIFY_SOCKET`.
    pub address: String,
    _dir: Option<tempfile::TempDir>,
}

impl NotifySocket {
    pub fn new() -> Self {
        let dir = temp_dir();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            address: path.display().to_string(),
            _dir: Some(dir),
        }
    }

    /// One in the abstract namespace (`@name`), which sd-notify alone cannot reach.
    pub fn new_abstract() -> Self {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "app-it-notify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket {
            socket,
            address: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next datagram, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        if timeout.is_zero() {
            return None;
        }
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Datagrams until one contains `needle` (returned last); panics after `timeout`.
    pub fn until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while let Some(left) = timeout.checked_sub(start.elapsed()) {
            match self.recv(left) {
                Some(m) => {
                    let done = m.contains(needle);
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                None => break,
            }
        }
        panic!("no {needle:?} within {timeout:?}; got {seen:?}");
    }

    /// Everything that arrives during `period`.
    pub fn collect(&self, period: Duration) -> Vec<(Instant, String)> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while let Some(left) = period.checked_sub(start.elapsed()) {
            if left.is_zero() {
                break;
            }
            if let Some(m) = self.recv(left) {
                seen.push((Instant::now(), m));
            }
        }
        seen
    }
}

/// A process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Raises this process's open-file limit, for tests that hold many connections.
pub fn raise_nofile(n: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n.min(hard)),
            maximum: l.maximum,
        },
    )
    .unwrap();
}

/// `socat` connected to `socket` as uid/gid 65534 (nobody), its stdin ready for lines.
pub fn socat_as_nobody(socket: &Path) -> Child {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args(["socat", "-", &format!("UNIX-CONNECT:{}", socket.display())])
        .die_with_test()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv + socat")
}

/// `127.0.0.1:PORT` with a port that was free a moment ago, for a TCP listener.
pub fn free_tcp_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}
