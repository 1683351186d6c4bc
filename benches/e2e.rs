//! End to end: app against two references, all writing into one real systemd-journald.
//!
//! ```text
//! sudo -E cargo bench --bench e2e              # the full run (a few minutes), figures for BENCHMARKS.md
//! sudo -E cargo bench --bench e2e -- --quick   # one round with a tenth of the lines (CI)
//! ```
//!
//! It needs root: it re-executes itself in private mount, pid and network namespaces with a
//! tmpfs `/run`, `net.unix.max_dgram_qlen = 512` (systemd's value), and a standalone journald with
//! rate limiting off, started afresh for every run. The contenders, fed by the same client
//! threads with the same lines:
//!
//! - **app**: the release daemon on its own socket, per-client rate limit off, full field set;
//! - **(a) stream**: journald's own stdout stream socket, as `systemd-cat` uses it;
//! - **(b) native**: a minimal relay (this binary, re-executed) that reads the lines and sends one
//!   bare `MESSAGE=`/`PRIORITY=` datagram each through one socket: the ceiling for any daemon
//!   that logs entries one by one.
//!
//! Throughput is end to end: from the first write until journald's `__REALTIME_TIMESTAMP` of the
//! last entry. Every run reads the journal back and fails the benchmark unless every line arrived
//! exactly once and intact.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which part of the benchmark this process plays.
const ROLE: &str = "E2E_BENCH_ROLE";
const WORK: &str = "/run/bench";
const JOURNAL_DIR: &str = "/run/log/journal";
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match std::env::var(ROLE).as_deref() {
        Ok("bench") => bench(&Options::parse(&args)),
        Ok("relay") => relay(Path::new(&args[0]), args[1] == "full"),
        _ => enter_namespaces(&args),
    }
}

fn enter_namespaces(args: &[String]) {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "the end-to-end benchmark needs root (private namespaces, a real systemd-journald): \
             run `sudo -E cargo bench --bench e2e`"
        );
        std::process::exit(1);
    }
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--net", "--pid"])
        .args(["--fork", "--kill-child", "--mount-proc", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(args)
        .env(ROLE, "bench")
        .status()
        .expect("running unshare (util-linux)");
    std::process::exit(status.code().unwrap_or(1));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    App,
    /// (a) journald's stdout stream socket.
    Stream,
    /// (b) the relay, bare entries.
    Native,
    /// (c) the relay, with app's field set: what journald itself allows app.
    NativeFull,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::App,
        Target::Stream,
        Target::Native,
        Target::NativeFull,
    ];
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    clients: usize,
    lines: usize,
    bytes: usize,
}

impl Scenario {
    fn total(&self) -> usize {
        self.clients * self.lines
    }

    fn name(&self) -> String {
        let size = if self.bytes >= 1024 {
            format!("{} KiB", self.bytes / 1024)
        } else {
            format!("{} B", self.bytes)
        };
        format!("{} × {} × {size}", self.clients, self.lines)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    msgs_per_s: f64,
    /// CPU (user, system) of the process between clients and journald, none for the stream.
    server_us_per_msg: Option<(f64, f64)>,
    journald_us_per_msg: f64,
    server_peak_rss_kib: Option<u64>,
}

/// `--quick`: one round, a tenth of the lines. `--only app|stream|native` and `--scenario N`
/// (1-based) narrow the run down, for profiling one contender.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    only: Option<Target>,
    scenario: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut o = Options::default();
        let mut args = args.iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--only" => {
                    o.only = Some(match args.next().map(String::as_str) {
                        Some("app") => Target::App,
                        Some("stream") => Target::Stream,
                        Some("native") => Target::Native,
                        Some("native-full") => Target::NativeFull,
                        other => panic!("--only app|stream|native|native-full, not {other:?}"),
                    })
                }
                "--scenario" => {
                    o.scenario = args.next().and_then(|n| n.parse().ok());
                    assert!(o.scenario.is_some(), "--scenario N");
                }
                "--bench" => {} // what cargo bench passes
                other => {
                    eprintln!("unknown argument {other:?}: --quick, --only TARGET, --scenario N");
                    std::process::exit(2);
                }
            }
        }
        o
    }
}

fn bench(options: &Options) {
    let quick = options.quick;
    setup_namespace();
    let scale = if quick { 10 } else { 1 };
    let rounds = if quick { 1 } else { 3 };
    let scenarios = [
        Scenario {
            clients: 1,
            lines: 200_000 / scale,
            bytes: 100,
        },
        Scenario {
            clients: 32,
            lines: 10_000 / scale,
            bytes: 100,
        },
        Scenario {
            clients: 8,
            lines: 2_000 / scale,
            bytes: 4096,
        },
    ];
    println!("{}", machine());
    println!(
        "{rounds} round(s), the contenders interleaved; figures are medians.{}\n",
        if quick {
            " QUICK: a tenth of the lines."
        } else {
            ""
        }
    );

    let mut results: HashMap<(usize, Target), Vec<Outcome>> = HashMap::new();
    for round in 0..rounds {
        for (i, scenario) in scenarios.iter().enumerate() {
            if options.scenario.is_some_and(|n| n != i + 1) {
                continue;
            }
            for k in 0..Target::ALL.len() {
                let target = Target::ALL[(k + round + i) % Target::ALL.len()];
                if options.only.is_some_and(|t| t != target) {
                    continue;
                }
                let outcome = run(target, scenario);
                eprintln!(
                    "round {} {:<18} {:<7} {:>9.0} msg/s",
                    round + 1,
                    scenario.name(),
                    format!("{target:?}"),
                    outcome.msgs_per_s
                );
                results.entry((i, target)).or_default().push(outcome);
            }
        }
    }

    println!(
        "| scenario | app msg/s | (a) stream | (b) native | (c) native, app's fields \
         | app ÷ (a) | app ÷ (b) | app ÷ (c) | app CPU µs/msg, user + system | (b) CPU µs/msg \
         | journald CPU µs/msg: app / (a) / (b) / (c) | app peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, scenario) in scenarios.iter().enumerate() {
        let m = |t: Target, f: &dyn Fn(&Outcome) -> Option<f64>| {
            let runs = results.get(&(i, t)).map_or(&[][..], Vec::as_slice);
            median(runs.iter().filter_map(f).collect())
        };
        let rate = |t| m(t, &|o| Some(o.msgs_per_s));
        let journald = |t| m(t, &|o| Some(o.journald_us_per_msg));
        let user = |t| m(t, &|o| o.server_us_per_msg.map(|c| c.0));
        let system = |t| m(t, &|o| o.server_us_per_msg.map(|c| c.1));
        let [app, stream, native, full] = Target::ALL.map(rate);
        println!(
            "| {} | {app:.0} | {stream:.0} | {native:.0} | {full:.0} | {:.2} | {:.2} | {:.2} \
             | {:.2} + {:.2} | {:.2} + {:.2} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} MiB |",
            scenario.name(),
            app / stream,
            app / native,
            app / full,
            user(Target::App),
            system(Target::App),
            user(Target::Native),
            system(Target::Native),
            journald(Target::App),
            journald(Target::Stream),
            journald(Target::Native),
            journald(Target::NativeFull),
            m(Target::App, &|o| o.server_peak_rss_kib.map(|k| k as f64)) / 1024.0,
        );
    }
    println!();
    idle(if quick { 500 } else { 5000 });
    startup(if quick { 5 } else { 20 });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let journald = output(Command::new("journalctl").arg("--version"));
    format!(
        "machine: {model}, {cores} cores, Linux {}, {}",
        kernel.trim(),
        journald.lines().next().unwrap_or("").trim()
    )
}

fn setup_namespace() {
    sh("mount -t tmpfs tmpfs /run && mkdir -p /var/log/journal \
        && mount -t tmpfs tmpfs /var/log/journal && mkdir -p /run/systemd/journald.conf.d /run/bench");
    // What systemd sets; the kernel default of 10 would make every datagram sender stall.
    std::fs::write("/proc/sys/net/unix/max_dgram_qlen", "512").unwrap();
    std::fs::write(
        "/run/systemd/journald.conf.d/bench.conf",
        "[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitIntervalSec=0\nForwardToSyslog=no\n\
         ForwardToWall=no\nForwardToConsole=no\nForwardToKMsg=no\nRuntimeMaxUse=8G\n",
    )
    .unwrap();
    std::fs::write(
        format!("{WORK}/app.toml"),
        "[journal]\nsink = \"journal\"\n[limits]\nrate_limit_burst = 0\nmax_connections = 20000\n",
    )
    .unwrap();
    raise_nofile();
}

fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}: {status}");
}

fn output(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&cmd.output().expect("running a command").stdout).into_owned()
}

/// The idle test holds two sockets per client: the soft open-file limit goes up to the hard one.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raising RLIMIT_NOFILE");
}

/// A process we started and stop at the end of a run.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

/// A datagram socket for `NOTIFY_SOCKET`.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(name: &str) -> Self {
        let path = PathBuf::from(format!("{WORK}/{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Notify { socket, path }
    }

    fn wait_ready(&self, who: &str) {
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{who} never said READY=1: {e}"));
            if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
                return;
            }
        }
    }
}

fn start_journald() -> Proc {
    sh(&format!("rm -rf {JOURNAL_DIR} /run/systemd/journal"));
    let notify = Notify::new("journald");
    let child = Command::new("/lib/systemd/systemd-journald")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting /lib/systemd/systemd-journald");
    let journald = Proc { child };
    notify.wait_ready("systemd-journald");
    journald
}

/// The daemon under test, on its own socket; returns once it is ready.
fn start_app(socket: &Path) -> (Proc, Duration) {
    let _ = std::fs::remove_file(socket);
    let notify = Notify::new("app");
    let log = format!("{WORK}/app.log");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_app"))
        .args(["--config", &format!("{WORK}/app.toml"), "serve", "--socket"])
        .arg(socket)
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove(ROLE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting app");
    let app = Proc { child };
    notify.wait_ready(&format!(
        "app (its log: {:?})",
        std::fs::read_to_string(&log).unwrap_or_default()
    ));
    (app, started.elapsed())
}

fn start_relay(socket: &Path, fields: &str) -> Proc {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(std::env::current_exe().unwrap())
        .arg(socket)
        .arg(fields)
        .env(ROLE, "relay")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the relay");
    let relay = Proc { child };
    wait(Duration::from_secs(10), "the relay's socket", || {
        UnixStream::connect(socket).is_ok()
    });
    relay
}

fn wait(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Line `seq` of client `client`: recognisable, checkable, exactly `bytes` long.
fn line(client: usize, seq: usize, bytes: usize) -> Vec<u8> {
    const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut l = format!("c{client:03} s{seq:08} ").into_bytes();
    l.extend((0..bytes).map(|i| FILL[(seq + i) % FILL.len()]));
    l.truncate(bytes);
    l
}

fn parse_line(message: &str) -> Option<(usize, usize)> {
    let rest = message.strip_prefix('c')?;
    let client = rest.get(..3)?.parse().ok()?;
    let seq = rest.get(5..13)?.parse().ok()?;
    Some((client, seq))
}

fn run(target: Target, scenario: &Scenario) -> Outcome {
    let journald = start_journald();
    let socket = PathBuf::from(format!("{WORK}/bench.sock"));
    let (server, address) = match target {
        Target::App => (Some(start_app(&socket).0), socket.clone()),
        Target::Native => (Some(start_relay(&socket, "bare")), socket.clone()),
        Target::NativeFull => (Some(start_relay(&socket, "full")), socket.clone()),
        Target::Stream => (None, PathBuf::from(STDOUT_SOCKET)),
    };
    // The stream protocol's header: identifier, unit, priority, level prefix, and no forwarding.
    let header: &[u8] = match target {
        Target::Stream => b"bench\n\n6\n0\n0\n0\n0\n",
        _ => b"",
    };
    let payloads: Vec<Vec<u8>> = (0..scenario.clients)
        .map(|c| {
            let mut buf = header.to_vec();
            for seq in 0..scenario.lines {
                buf.extend(line(c, seq, scenario.bytes));
                buf.push(b'\n');
            }
            buf
        })
        .collect();
    let lasts: Vec<String> = (0..scenario.clients)
        .map(|c| String::from_utf8(line(c, scenario.lines - 1, scenario.bytes)).unwrap())
        .collect();

    let barrier = Arc::new(Barrier::new(scenario.clients + 1));
    let clients: Vec<_> = payloads
        .into_iter()
        .map(|payload| {
            let mut stream = UnixStream::connect(&address).expect("connecting a client");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                stream.write_all(&payload).expect("writing");
            })
        })
        .collect();

    // E2E_BENCH_ATTACH='perf record -g -o /tmp/app.perf -p {pid}' (or strace -c -f …): a tool
    // attached to the server while it works, stopped with SIGINT once the lines are in.
    let attached = std::env::var("E2E_BENCH_ATTACH")
        .ok()
        .zip(server.as_ref())
        .map(|(command, s)| {
            let child = Command::new("sh")
                .args([
                    "-c",
                    &format!("exec {}", command.replace("{pid}", &s.pid().to_string())),
                ])
                .spawn()
                .expect("running E2E_BENCH_ATTACH");
            std::thread::sleep(Duration::from_millis(300));
            child
        });
    let server_cpu = server.as_ref().map(|s| cpu_ticks(s.pid()));
    let journald_cpu = cpu_ticks(journald.pid());
    let start = SystemTime::now();
    barrier.wait();
    for c in clients {
        c.join().unwrap();
    }
    // journalctl competes with journald for the CPU: ask rarely. The figures come from
    // journald's timestamps, not from when we notice.
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrived(&lasts) < lasts.len() {
        assert!(
            Instant::now() < deadline,
            "the last lines never reached the journal"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ticks_per_s = clk_tck();
    let per_msg = |ticks: u64| ticks as f64 * 1e6 / ticks_per_s / scenario.total() as f64;
    let server_us = server.as_ref().zip(server_cpu).map(|(s, before)| {
        let now = cpu_ticks(s.pid());
        (per_msg(now.0 - before.0), per_msg(now.1 - before.1))
    });
    let journald_us = {
        let (now, before) = (cpu_ticks(journald.pid()), journald_cpu);
        per_msg(now.0 + now.1 - before.0 - before.1)
    };
    let server_rss = server.as_ref().map(|s| status_kib(s.pid(), "VmHWM"));
    if let Some(mut tool) = attached {
        let pid = rustix::process::Pid::from_raw(tool.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let _ = tool.wait();
    }

    let last = verify(scenario, target);
    let start_us = start.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let elapsed = Duration::from_micros(last.saturating_sub(start_us));
    Outcome {
        msgs_per_s: scenario.total() as f64 / elapsed.as_secs_f64(),
        server_us_per_msg: server_us,
        journald_us_per_msg: journald_us,
        server_peak_rss_kib: server_rss,
    }
}

/// How many of `messages` are in the journal (a match query: cheap while journald is busy).
fn arrived(messages: &[String]) -> usize {
    let out = output(
        Command::new("journalctl")
            .args(["-D", JOURNAL_DIR, "-o", "cat"])
            .args(messages.iter().map(|m| format!("MESSAGE={m}"))),
    );
    out.lines().filter(|l| !l.is_empty()).count()
}

/// Checks that every line arrived exactly once and intact; returns the last entry's
/// `__REALTIME_TIMESTAMP` (µs). app must be exact, or the benchmark fails; a reference that is
/// not (journald's stdout stream has been seen cutting a line in two: LINE_BREAK says why) is
/// reported, and its figure stands.
fn verify(scenario: &Scenario, target: Target) -> u64 {
    let out = Command::new("journalctl")
        .args([
            "-D",
            JOURNAL_DIR,
            "-o",
            "json",
            "--all",
            "--output-fields=MESSAGE,LINE_BREAK",
        ])
        .output()
        .expect("running journalctl");
    let mut seen = vec![false; scenario.total()];
    let (mut last, mut duplicates, mut mangled) = (0u64, 0usize, Vec::new());
    for entry in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<serde_json::Value>()
    {
        let entry = entry.expect("journalctl's JSON");
        let Some(message) = entry["MESSAGE"].as_str() else {
            continue;
        };
        let is_ours = message.starts_with('c') && message.as_bytes().get(4) == Some(&b' ');
        if !is_ours {
            continue; // journald's own messages
        }
        match parse_line(message) {
            Some((c, s))
                if c < scenario.clients
                    && s < scenario.lines
                    && message.as_bytes() == line(c, s, scenario.bytes) =>
            {
                let slot = &mut seen[c * scenario.lines + s];
                duplicates += usize::from(*slot);
                *slot = true;
                let ts: u64 = entry["__REALTIME_TIMESTAMP"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .expect("__REALTIME_TIMESTAMP");
                last = last.max(ts);
            }
            _ => mangled.push(format!(
                "{:?} LINE_BREAK={}",
                message.chars().take(40).collect::<String>(),
                entry["LINE_BREAK"].as_str().unwrap_or("-")
            )),
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    if missing + duplicates + mangled.len() > 0 {
        let report = format!(
            "{} {target:?}: {missing} lines missing, {duplicates} duplicated, {} mangled {:?}",
            scenario.name(),
            mangled.len(),
            &mangled[..mangled.len().min(4)]
        );
        assert!(target != Target::App, "{report}");
        eprintln!("NOTE (a reference, not app): {report}");
    }
    last
}

fn clk_tck() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// (utime, stime) of a whole process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// `n` clients connect and send one line each, then stay: memory per idle connection.
fn idle(n: usize) {
    let journald = start_journald();
    let socket = PathBuf::from(format!("{WORK}/idle.sock"));
    let (app, _) = start_app(&socket);
    std::thread::sleep(Duration::from_millis(300));
    let before = (
        status_kib(app.pid(), "VmRSS"),
        status_kib(app.pid(), "RssAnon"),
    );
    let journald_before = status_kib(journald.pid(), "RssAnon");
    let mut clients = Vec::with_capacity(2 * n);
    for i in 0..n {
        let mut c = UnixStream::connect(&socket).expect("connecting an idle client");
        writeln!(c, "idle {i}").unwrap();
        clients.push(c);
    }
    // journald's own stdout streams, for comparison (it takes at most 4096 of them).
    let streams = n.min(4000);
    for i in 0..streams {
        let mut c = UnixStream::connect(STDOUT_SOCKET).expect("connecting a stream");
        c.write_all(format!("idle\n\n6\n0\n0\n0\n0\nstream {i}\n").as_bytes())
            .unwrap();
        clients.push(c);
    }
    wait(Duration::from_secs(60), "the idle clients' lines", || {
        count_entries() >= n + streams
    });
    // Idle means after the burst: the daemon hands memory freed by it back to the system once
    // traffic pauses, at most every 5 s (lifecycle::HeapTrim).
    std::thread::sleep(Duration::from_secs(6));
    let after = (
        status_kib(app.pid(), "VmRSS"),
        status_kib(app.pid(), "RssAnon"),
    );
    let journald_after = status_kib(journald.pid(), "RssAnon");
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 * 1024.0 / n as f64;
    println!(
        "idle: {n} connected clients that each sent one line: app RSS {:.1} → {:.1} MiB, \
         {:.0} bytes per connection ({:.0} anonymous); journald's own stdout streams: {:.0} \
         anonymous bytes per stream",
        before.0 as f64 / 1024.0,
        after.0 as f64 / 1024.0,
        per(after.0, before.0),
        per(after.1, before.1),
        (journald_after.saturating_sub(journald_before)) as f64 * 1024.0 / streams as f64,
    );
    drop(clients);
    drop(app);
}

fn count_entries() -> usize {
    let out = Command::new("journalctl")
        .args(["-D", JOURNAL_DIR, "-o", "cat", "--output-fields=MESSAGE"])
        .output()
        .expect("running journalctl");
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"idle ") || l.starts_with(b"stream "))
        .count()
}

/// exec → READY=1, and memory at rest.
fn startup(runs: usize) {
    let _journald = start_journald();
    let socket = PathBuf::from(format!("{WORK}/start.sock"));
    let (mut ready, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (app, took) = start_app(&socket);
        std::thread::sleep(Duration::from_millis(200));
        ready.push(took.as_secs_f64() * 1000.0);
        rss.push(status_kib(app.pid(), "VmRSS") as f64);
    }
    let max = ready.iter().copied().fold(0.0, f64::max);
    println!(
        "startup: exec → READY=1 median {:.1} ms (max {max:.1} ms over {runs} starts); \
         RSS at rest {:.1} MiB",
        median(ready),
        median(rss) / 1024.0
    );
}

/// References (b) and (c): read lines from clients and send each as one native datagram through
/// one shared socket. A thread per client, blocking I/O, one reused buffer per thread: nothing a
/// one-entry-per-line daemon could do much faster. (b) sends MESSAGE= and PRIORITY= only; (c)
/// adds the fields app sends for a plain line (SYSLOG_IDENTIFIER, CLIENT_*), to show what
/// journald's own cost per field leaves for any daemon that records who sent a line.
fn relay(path: &Path, app_fields: bool) {
    let journal = UnixDatagram::unbound().unwrap();
    journal.connect(JOURNAL_SOCKET).unwrap();
    let journal = Arc::new(journal);
    let listener = UnixListener::bind(path).unwrap();
    for (connection, client) in listener.incoming().enumerate() {
        let client = client.unwrap();
        let mut fields = b"\nPRIORITY=6\n".to_vec();
        if app_fields {
            let cred = rustix::net::sockopt::socket_peercred(&client).unwrap();
            fields.extend(
                format!(
                    "SYSLOG_IDENTIFIER=app\nCLIENT_PID={}\nCLIENT_UID={}\nCLIENT_GID={}\n\
                     CLIENT_CONNECTION={}\n",
                    cred.pid.as_raw_nonzero(),
                    cred.uid.as_raw(),
                    cred.gid.as_raw(),
                    connection + 1
                )
                .bytes(),
            );
        }
        let journal = journal.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(64 * 1024, client);
            let mut line = Vec::new();
            let mut datagram = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    return;
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                datagram.clear();
                datagram.extend_from_slice(b"MESSAGE=");
                datagram.extend_from_slice(text);
                datagram.extend_from_slice(&fields);
                journal.send(&datagram).expect("sending to journald");
            }
        });
    }
}
