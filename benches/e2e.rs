//! End to end: app against two references, all writing into one real systemd-journald.
//!
//! ```text
//! sudo -E cargo bench --bench e2e              # the full run (a few minutes), figures for BENCHMARKS.md
//! sudo -E cargo bench --bench e2e -- --quick   # one round with a tenth of the lines (CI)
//! ```
//!
//! It needs root: it re-executes itself in private mount, pid and network namespaces with a
//! tmpfs `/run`, `net.unix.max_dgram_qlen = 512` (systemd's value), and a standalone journald with
//! rate limiting off, started afresh for every run; the bench process (and so its clients) runs
//! in a cgroup of its own that app attributes to the unit `init.scope` ([`BenchCgroup`]). The
//! contenders, fed by the same client threads with the same lines:
//!
//! - **app**: the release daemon on its own socket, per-client rate limit off, full field set
//!   (the client's unit and command included, `journal.attribution = "auto"`);
//! - **app, attribution off**: the same with `journal.attribution = "off"` (issue 16);
//! - **(a) stream**: journald's own stdout stream socket, as `systemd-cat` uses it;
//! - **(b) native**: a minimal relay (this binary, re-executed) that reads the lines and sends one
//!   bare `MESSAGE=`/`PRIORITY=` datagram each through one socket: the ceiling for any daemon
//!   that logs entries one by one;
//! - **(c) native, app's fields**: the same relay sending the fields app sends (see [`relay`]);
//!   the benchmark fails unless an entry of (c) has the same field names as one of app's.
//!
//! Scenarios: plain lines (1 client × 100 B, 32 clients × 100 B, 8 clients × 4 KiB) and
//! pino-like JSON objects (1 client, 8 keys, one nested; issue 17), which app and (c) turn into
//! fields and (a) and (b) log as text.
//!
//! Throughput is end to end: from the first write until journald's `__REALTIME_TIMESTAMP` of the
//! last entry. Every run reads the journal back and fails the benchmark unless every line arrived
//! exactly once and intact.
//!
//! Then app alone: memory per idle connection (attribution on and off), the connect/line/close
//! rate of 20,000 clients in a row (on and off, against the stdout sink: [`churn`]) and startup.
//! `--scenario 0` skips the throughput scenarios and measures only these.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which part of the benchmark this process plays.
const ROLE: &str = "E2E_BENCH_ROLE";
/// The cgroup the bench runs in (`BenchCgroup`).
const CGROUP: &str = "E2E_BENCH_CGROUP";
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
    let cgroup = BenchCgroup::create();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--net", "--pid"])
        .args(["--fork", "--kill-child", "--mount-proc", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(args)
        .env(ROLE, "bench")
        .env(CGROUP, &cgroup.scope)
        .status()
        .expect("running unshare (util-linux)");
    drop(cgroup);
    std::process::exit(status.code().unwrap_or(1));
}

/// Where the bench process (PID 1 of its namespace, and the clients' process) runs:
/// `<cgroup2>/app-e2e-PID/init.scope`, so that it looks like a container's init to app's
/// attribution (`app::peer`: the root is PID 1's cgroup without `/init.scope`) and the
/// clients get the field set of a client in a unit (CLIENT_UNIT=init.scope, CLIENT_SLICE,
/// CLIENT_CGROUP, CLIENT_COMM, and as root OBJECT_SYSTEMD_UNIT and OBJECT_COMM) rather than
/// the smaller set of a process in the root cgroup, which belongs to no unit.
struct BenchCgroup {
    top: PathBuf,
    scope: PathBuf,
}

impl BenchCgroup {
    fn create() -> BenchCgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| PathBuf::from(f[1]))
            .expect("a cgroup2 hierarchy (/sys/fs/cgroup/unified on a hybrid host)");
        let top = root.join(format!("app-e2e-{}", std::process::id()));
        let scope = top.join("init.scope");
        std::fs::create_dir_all(&scope)
            .unwrap_or_else(|e| panic!("creating the cgroup {scope:?}: {e}"));
        BenchCgroup { top, scope }
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        // The namespace's processes are gone once unshare returns; their cgroup empties as
        // the kernel finishes them.
        for _ in 0..100 {
            let _ = std::fs::remove_dir(&self.scope);
            if std::fs::remove_dir(&self.top).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove the cgroup {:?}", self.top);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    App,
    /// app with `journal.attribution = "off"`: no CLIENT_COMM/UNIT/SLICE/CGROUP, no OBJECT_*.
    AppUnattributed,
    /// (a) journald's stdout stream socket.
    Stream,
    /// (b) the relay, bare entries.
    Native,
    /// (c) the relay, with app's field set: what journald itself allows app.
    NativeFull,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::App,
        Target::AppUnattributed,
        Target::Stream,
        Target::Native,
        Target::NativeFull,
    ];

    /// Whether a JSON-object line becomes fields (app's `protocol.json = "auto"`, and (c)).
    fn maps_json(self) -> bool {
        matches!(
            self,
            Target::App | Target::AppUnattributed | Target::NativeFull
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    clients: usize,
    lines: usize,
    /// Plain lines: exactly this long. JSON lines: the length of their `msg`.
    bytes: usize,
    /// Pino-like JSON objects (8 keys, one nested) instead of plain text.
    json: bool,
}

impl Scenario {
    fn total(&self) -> usize {
        self.clients * self.lines
    }

    fn name(&self) -> String {
        if self.json {
            let size = self.line(0, 0).len();
            return format!("{} × {} × JSON, {size} B", self.clients, self.lines);
        }
        let size = if self.bytes >= 1024 {
            format!("{} KiB", self.bytes / 1024)
        } else {
            format!("{} B", self.bytes)
        };
        format!("{} × {} × {size}", self.clients, self.lines)
    }

    /// Line `seq` of client `client`, as the client writes it (without the newline).
    fn line(&self, client: usize, seq: usize) -> Vec<u8> {
        let text = line(client, seq, self.bytes);
        if !self.json {
            return text;
        }
        // What pino writes for a request (the shape of benches/framing.rs's JSON line): the
        // time moves every 20 lines, the request id every line, method and status now and then.
        let method = ["GET", "GET", "GET", "POST", "PUT"][seq % 5];
        let status = [200, 200, 200, 201, 404, 500][seq % 6];
        format!(
            r#"{{"level":30,"time":{},"pid":4242,"hostname":"myhost","name":"billing","reqId":"c{client:03}-s{seq:08}","http":{{"method":"{method}","status":{status}}},"msg":"{}"}}"#,
            1_764_110_316_123 + seq / 20,
            String::from_utf8(text).unwrap()
        )
        .into_bytes()
    }

    /// The MESSAGE that line `seq` of `client` must arrive as through `target`: a JSON line's
    /// `msg` where the line becomes fields, else the line as sent.
    fn message(&self, target: Target, client: usize, seq: usize) -> Vec<u8> {
        if self.json && target.maps_json() {
            line(client, seq, self.bytes)
        } else {
            self.line(client, seq)
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Outcome {
    msgs_per_s: f64,
    /// CPU (user, system) of the process between clients and journald, none for the stream.
    server_us_per_msg: Option<(f64, f64)>,
    journald_us_per_msg: f64,
    server_peak_rss_kib: Option<u64>,
    /// The fields (names) of the last line's entry, sorted.
    fields: Vec<String>,
}

/// `--quick`: one round, a tenth of the lines. `--only app|app-unattributed|stream|native|
/// native-full` (repeatable) and `--scenario N` (1-based; 0: none, only idle, churn and
/// startup) narrow the run down, for profiling one contender; `--rounds N` for more rounds
/// than three.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    only: Vec<Target>,
    rounds: Option<usize>,
    scenario: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut o = Options::default();
        let mut args = args.iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--only" => o.only.push(match args.next().map(String::as_str) {
                    Some("app") => Target::App,
                    Some("app-unattributed") => Target::AppUnattributed,
                    Some("stream") => Target::Stream,
                    Some("native") => Target::Native,
                    Some("native-full") => Target::NativeFull,
                    other => panic!(
                        "--only app|app-unattributed|stream|native|native-full, not {other:?}"
                    ),
                }),
                "--rounds" => {
                    o.rounds = args.next().and_then(|n| n.parse().ok());
                    assert!(o.rounds.is_some(), "--rounds N");
                }
                "--scenario" => {
                    o.scenario = args.next().and_then(|n| n.parse().ok());
                    assert!(o.scenario.is_some(), "--scenario N");
                }
                "--bench" => {} // what cargo bench passes
                other => {
                    eprintln!(
                        "unknown argument {other:?}: --quick, --only TARGET, --scenario N, \
                         --rounds N"
                    );
                    std::process::exit(2);
                }
            }
        }
        o
    }
}

fn bench(options: &Options) {
    let quick = options.quick;
    // Into the cgroup made for us (BenchCgroup); every process started from here on inherits it.
    let cgroup = std::env::var(CGROUP).expect("the bench's cgroup");
    std::fs::write(format!("{cgroup}/cgroup.procs"), "0")
        .unwrap_or_else(|e| panic!("moving the bench into {cgroup}: {e}"));
    setup_namespace();
    let scale = if quick { 10 } else { 1 };
    let rounds = options.rounds.unwrap_or(if quick { 1 } else { 3 });
    let scenarios = [
        Scenario {
            clients: 1,
            lines: 200_000 / scale,
            bytes: 100,
            json: false,
        },
        Scenario {
            clients: 32,
            lines: 10_000 / scale,
            bytes: 100,
            json: false,
        },
        Scenario {
            clients: 8,
            lines: 2_000 / scale,
            bytes: 4096,
            json: false,
        },
        // Issue 17: a JSON object per line, which app and (c) turn into fields.
        Scenario {
            clients: 1,
            lines: 100_000 / scale,
            bytes: 40,
            json: true,
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
                if !options.only.is_empty() && !options.only.contains(&target) {
                    continue;
                }
                let outcome = run(target, scenario);
                eprintln!(
                    "round {} {:<18} {:<15} {:>9.0} msg/s",
                    round + 1,
                    scenario.name(),
                    format!("{target:?}"),
                    outcome.msgs_per_s
                );
                results.entry((i, target)).or_default().push(outcome);
                let compared = [Target::App, Target::AppUnattributed, Target::NativeFull];
                if compared.contains(&target) {
                    same_fields(scenario, &results, i, round == 0);
                }
            }
        }
    }

    println!(
        "| scenario | app msg/s | app, attribution off | (a) stream | (b) native \
         | (c) native, app's fields | app ÷ (a) | app ÷ (b) | app ÷ (c) | app on ÷ off \
         | app CPU µs/msg, user + system: on / off | (b) / (c) CPU µs/msg \
         | journald CPU µs/msg: app / off / (a) / (b) / (c) | app peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let measured = |i: usize| Target::ALL.iter().any(|&t| results.contains_key(&(i, t)));
    for (i, scenario) in scenarios.iter().enumerate().filter(|(i, _)| measured(*i)) {
        let m = |t: Target, f: &dyn Fn(&Outcome) -> Option<f64>| {
            let runs = results.get(&(i, t)).map_or(&[][..], Vec::as_slice);
            median(runs.iter().filter_map(f).collect())
        };
        let rate = |t| m(t, &|o| Some(o.msgs_per_s));
        let journald = |t| m(t, &|o| Some(o.journald_us_per_msg));
        let cpu = |t| {
            let user = m(t, &|o: &Outcome| o.server_us_per_msg.map(|c| c.0));
            let system = m(t, &|o: &Outcome| o.server_us_per_msg.map(|c| c.1));
            format!("{user:.2} + {system:.2}")
        };
        let [app, off, stream, native, full] = Target::ALL.map(rate);
        let [j_app, j_off, j_stream, j_native, j_full] = Target::ALL.map(journald);
        println!(
            "| {} | {app:.0} | {off:.0} | {stream:.0} | {native:.0} | {full:.0} | {:.2} | {:.2} \
             | {:.2} | {:.2} | {} / {} | {} / {} | {j_app:.1} / {j_off:.1} / {j_stream:.1} \
             / {j_native:.1} / {j_full:.1} | {:.1} MiB |",
            scenario.name(),
            app / stream,
            app / native,
            app / full,
            app / off,
            cpu(Target::App),
            cpu(Target::AppUnattributed),
            cpu(Target::Native),
            cpu(Target::NativeFull),
            m(Target::App, &|o| o.server_peak_rss_kib.map(|k| k as f64)) / 1024.0,
        );
    }
    println!();
    // On a shared machine the load moves between rounds: a ratio of two runs of the same round
    // (minutes apart at most) says more than a ratio of medians taken over all of them.
    for (i, scenario) in scenarios.iter().enumerate().filter(|(i, _)| measured(*i)) {
        let paired = |a: Target, b: Target| {
            let rates = |t| results.get(&(i, t)).map_or(vec![], |r| r.to_vec());
            let ratios: Vec<String> = rates(a)
                .iter()
                .zip(&rates(b))
                .map(|(a, b)| format!("{:.2}", a.msgs_per_s / b.msgs_per_s))
                .collect();
            ratios.join(" / ")
        };
        // About 1.0 or more: journald was the bottleneck; less: it waited for entries, or
        // for a core.
        let busy = |t: Target| {
            let runs = results.get(&(i, t)).map_or(&[][..], Vec::as_slice);
            let busy: Vec<String> = runs
                .iter()
                .map(|o| format!("{:.2}", o.msgs_per_s * o.journald_us_per_msg / 1e6))
                .collect();
            busy.join(" / ")
        };
        println!(
            "{}, round by round: app ÷ (c) {}; app on ÷ off {}; journald's CPU seconds per \
             second of the run, app: {}, (c): {}",
            scenario.name(),
            paired(Target::App, Target::NativeFull),
            paired(Target::App, Target::AppUnattributed),
            busy(Target::App),
            busy(Target::NativeFull),
        );
    }
    println!();
    idle(if quick { 500 } else { 5000 }, "app");
    idle(if quick { 500 } else { 5000 }, "app-unattributed");
    churn(
        if quick { 5_000 } else { 20_000 },
        if quick { 1 } else { 3 },
    );
    startup(if quick { 5 } else { 20 });
}

/// The benchmark fails unless (c) sent the same fields as app (by name: the values of
/// CLIENT_PID and the like differ from run to run), and unless app with attribution off sent
/// app's fields without the attribution ones. Prints them the first time.
fn same_fields(
    scenario: &Scenario,
    results: &HashMap<(usize, Target), Vec<Outcome>>,
    i: usize,
    print: bool,
) {
    let last = |t| {
        results
            .get(&(i, t))
            .and_then(|r| r.last())
            .map(|o| &o.fields)
    };
    let (Some(app), Some(off), Some(full)) = (
        last(Target::App),
        last(Target::AppUnattributed),
        last(Target::NativeFull),
    ) else {
        return; // not all three have run yet
    };
    assert_eq!(
        app,
        full,
        "{}: (c) must send the fields app sends",
        scenario.name()
    );
    const ATTRIBUTION: [&str; 5] = [
        "CLIENT_COMM",
        "CLIENT_UNIT",
        "CLIENT_USER_UNIT",
        "CLIENT_SLICE",
        "CLIENT_CGROUP",
    ];
    let is_attribution = |f: &String| ATTRIBUTION.contains(&f.as_str()) || f.starts_with("OBJECT_");
    let without: Vec<&String> = app.iter().filter(|f| !is_attribution(f)).collect();
    assert_eq!(
        off.iter().collect::<Vec<_>>(),
        without,
        "{}: app with attribution off",
        scenario.name()
    );
    assert!(
        app.iter().any(|f| f == "CLIENT_UNIT"),
        "{}: the bench's client has a unit (init.scope): {app:?}",
        scenario.name()
    );
    if print {
        println!("{}: app and (c) send {}", scenario.name(), app.join(" "));
    }
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
    let config = "[journal]\nsink = \"journal\"\n[limits]\nrate_limit_burst = 0\n\
                  max_connections = 20000\n";
    std::fs::write(format!("{WORK}/app.toml"), config).unwrap();
    std::fs::write(
        format!("{WORK}/app-unattributed.toml"),
        config.replace("[journal]\n", "[journal]\nattribution = \"off\"\n"),
    )
    .unwrap();
    // The connect/line/close figures: app's own cost, without journald's.
    let churn = "[journal]\nsink = \"stdout\"\n[limits]\nrate_limit_burst = 0\n\
                 max_connections = 30000\n";
    std::fs::write(format!("{WORK}/churn.toml"), churn).unwrap();
    std::fs::write(
        format!("{WORK}/churn-unattributed.toml"),
        churn.replace("[journal]\n", "[journal]\nattribution = \"off\"\n"),
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

/// The daemon under test, on its own socket, with `{WORK}/{config}.toml`; returns once it is
/// ready.
fn start_app(socket: &Path, config: &str, stdout: Stdio) -> (Proc, Duration) {
    let _ = std::fs::remove_file(socket);
    let notify = Notify::new("app");
    let log = format!("{WORK}/app.log");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_app"))
        .args([
            "--config",
            &format!("{WORK}/{config}.toml"),
            "serve",
            "--socket",
        ])
        .arg(socket)
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove(ROLE)
        .stdin(Stdio::null())
        .stdout(stdout)
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
        Target::App => (
            Some(start_app(&socket, "app", Stdio::null()).0),
            socket.clone(),
        ),
        Target::AppUnattributed => (
            Some(start_app(&socket, "app-unattributed", Stdio::null()).0),
            socket.clone(),
        ),
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
                buf.extend(scenario.line(c, seq));
                buf.push(b'\n');
            }
            buf
        })
        .collect();
    let lasts: Vec<String> = (0..scenario.clients)
        .map(|c| String::from_utf8(scenario.message(target, c, scenario.lines - 1)).unwrap())
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
        fields: field_names(&lasts[0]),
    }
}

/// The names of the fields the sender set on the entry whose MESSAGE is `message`: all but
/// the ones journald adds itself (`_PID`, `__CURSOR`, …).
fn field_names(message: &str) -> Vec<String> {
    let out = output(
        Command::new("journalctl")
            .args(["-D", JOURNAL_DIR, "-o", "json", "--all"])
            .arg(format!("MESSAGE={message}")),
    );
    let entry: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("the last line's entry")).unwrap();
    let mut names: Vec<String> = entry
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with('_'))
        .cloned()
        .collect();
    names.sort();
    names
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
        // A line as sent, or a JSON line's msg.
        let is_ours = (message.starts_with('c') && message.as_bytes().get(4) == Some(&b' '))
            || message.starts_with(r#"{"level":"#);
        if !is_ours {
            continue; // journald's own messages
        }
        match identify(message) {
            Some((c, s))
                if c < scenario.clients
                    && s < scenario.lines
                    && message.as_bytes() == scenario.message(target, c, s) =>
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
        assert!(
            !matches!(target, Target::App | Target::AppUnattributed),
            "{report}"
        );
        eprintln!("NOTE (a reference, not app): {report}");
    }
    last
}

/// Which client's which line a MESSAGE is: the line itself, or a JSON line holding it as `msg`.
fn identify(message: &str) -> Option<(usize, usize)> {
    if message.starts_with('{') {
        let object: serde_json::Value = serde_json::from_str(message).ok()?;
        return parse_line(object["msg"].as_str()?);
    }
    parse_line(message)
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

/// `n` clients connect and send one line each, then stay: memory per idle connection, for app
/// with `{WORK}/{config}.toml` (run with attribution on and off: a connection keeps its unit and
/// command as encoded fields for its life).
fn idle(n: usize, config: &str) {
    let journald = start_journald();
    let socket = PathBuf::from(format!("{WORK}/idle.sock"));
    let (app, _) = start_app(&socket, config, Stdio::null());
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
        "idle ({config}): {n} connected clients that each sent one line: app RSS {:.1} → {:.1} MiB, \
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

/// Issue 16: `n` clients of one process, one after the other, each connecting, writing a line
/// and closing, with attribution on and off (alternated, `runs` each, medians): what resolving
/// the client costs a connection. The stdout sink, so that journald's cost per field (above)
/// does not hide app's; timed until app has written every line.
fn churn(n: usize, runs: usize) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        off.push(churn_once(n, "churn-unattributed"));
        on.push(churn_once(n, "churn"));
    }
    let rounds = |v: &[f64]| {
        let v: Vec<String> = v.iter().map(|r| format!("{r:.0}")).collect();
        v.join(" / ")
    };
    let (m_on, m_off) = (median(on.clone()), median(off.clone()));
    println!(
        "connect/line/close: {n} clients in a row, stdout sink: {m_on:.0}/s with attribution, \
         {m_off:.0}/s without (on ÷ off {:.2}); round by round {} and {}",
        m_on / m_off,
        rounds(&on),
        rounds(&off),
    );
}

fn churn_once(n: usize, config: &str) -> f64 {
    let socket = PathBuf::from(format!("{WORK}/churn.sock"));
    let out = format!("{WORK}/churn.out");
    let file = std::fs::File::create(&out).unwrap();
    let (app, _) = start_app(&socket, config, Stdio::from(file));
    let started = Instant::now();
    for _ in 0..n {
        let mut c = UnixStream::connect(&socket).expect("connecting a client");
        c.write_all(b"one line\n").unwrap();
    }
    wait(Duration::from_secs(60), "every client's line", || {
        let written = std::fs::read(&out).unwrap_or_default();
        memchr::memmem::find_iter(&written, b"> one line\n").count() >= n
    });
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(app);
    rate
}

/// exec → READY=1, and memory at rest.
fn startup(runs: usize) {
    let _journald = start_journald();
    let socket = PathBuf::from(format!("{WORK}/start.sock"));
    let (mut ready, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (app, took) = start_app(&socket, "app", Stdio::null());
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
/// sends what app sends for the same client and line, to show what journald's own cost per field
/// leaves for any daemon that records who sent a line: SYSLOG_IDENTIFIER and CLIENT_* from the
/// peer's credentials, and the client's command and unit resolved once per connection by the
/// same code as app's (`app::peer`, /proc reads); a line that is a JSON object is parsed with
/// serde_json and its keys sent as fields, by the mapping of README "Structured lines" (as far
/// as the bench's lines need it: `msg`, a pino `level`, one level of nesting). The bench checks
/// that an entry of (c) has the same field names as app's.
fn relay(path: &Path, app_fields: bool) {
    let journal = UnixDatagram::unbound().unwrap();
    journal.connect(JOURNAL_SOCKET).unwrap();
    let journal = Arc::new(journal);
    let listener = UnixListener::bind(path).unwrap();
    for (connection, client) in listener.incoming().enumerate() {
        let client = client.unwrap();
        let mut fields = Vec::new();
        if app_fields {
            let cred = rustix::net::sockopt::socket_peercred(&client).unwrap();
            let pid = cred.pid.as_raw_nonzero().get();
            push_field(&mut fields, b"SYSLOG_IDENTIFIER", b"app");
            for (name, value) in [
                (&b"CLIENT_PID"[..], pid.to_string()),
                (b"CLIENT_UID", cred.uid.as_raw().to_string()),
                (b"CLIENT_GID", cred.gid.as_raw().to_string()),
                (b"CLIENT_CONNECTION", (connection + 1).to_string()),
            ] {
                push_field(&mut fields, name, value.as_bytes());
            }
            let who = app::peer::Attribution::of_peer(client.as_fd(), pid);
            for (name, value) in who.fields(app::peer::sends_object_fields()) {
                push_field(&mut fields, name, value);
            }
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
                let object = (app_fields && text.first() == Some(&b'{'))
                    .then(|| serde_json::from_slice::<JsonObject>(text).ok())
                    .flatten();
                let Some(object) = object else {
                    push_field(&mut datagram, b"MESSAGE", text);
                    datagram.extend_from_slice(b"PRIORITY=6\n");
                    datagram.extend_from_slice(&fields);
                    journal.send(&datagram).expect("sending to journald");
                    continue;
                };
                let message = object
                    .get("msg")
                    .and_then(serde_json::Value::as_str)
                    .filter(|m| !m.is_empty());
                let priority = object.get("level").and_then(pino_priority);
                push_field(
                    &mut datagram,
                    b"MESSAGE",
                    message.map_or(text, str::as_bytes),
                );
                datagram.extend_from_slice(b"PRIORITY=");
                datagram.push(b'0' + priority.unwrap_or(6));
                datagram.push(b'\n');
                datagram.extend_from_slice(&fields);
                for (key, value) in &object {
                    let taken = (key == "msg" && message.is_some())
                        || (key == "level" && priority.is_some());
                    match value {
                        _ if taken => {}
                        serde_json::Value::Object(inner) if !inner.is_empty() => {
                            for (inner_key, inner_value) in inner {
                                push_json(
                                    &mut datagram,
                                    &format!("{key}_{inner_key}"),
                                    inner_value,
                                );
                            }
                        }
                        value => push_json(&mut datagram, key, value),
                    }
                }
                journal.send(&datagram).expect("sending to journald");
            }
        });
    }
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A pino/bunyan level number, or a level name, as a syslog priority.
fn pino_priority(level: &serde_json::Value) -> Option<u8> {
    match level {
        serde_json::Value::Number(n) => match n.as_u64()? {
            10 | 20 => Some(7),
            30 => Some(6),
            40 => Some(4),
            50 => Some(3),
            60 => Some(2),
            _ => None,
        },
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "trace" | "debug" => Some(7),
            "info" => Some(6),
            "warn" | "warning" => Some(4),
            "error" => Some(3),
            "fatal" => Some(2),
            _ => None,
        },
        _ => None,
    }
}

/// One JSON key as a field: its name upper-cased with anything outside `[A-Z0-9_]` as `_`, a
/// string as its bytes, anything else as compact JSON.
fn push_json(out: &mut Vec<u8>, key: &str, value: &serde_json::Value) {
    let name: Vec<u8> = key
        .bytes()
        .map(|b| match b.to_ascii_uppercase() {
            b @ (b'A'..=b'Z' | b'0'..=b'9' | b'_') => b,
            _ => b'_',
        })
        .collect();
    match value {
        serde_json::Value::String(s) => push_field(out, &name, s.as_bytes()),
        other => push_field(out, &name, other.to_string().as_bytes()),
    }
}

/// `NAME=value\n`, or the length-prefixed form for a value holding a newline (sd_journal_sendv).
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}
