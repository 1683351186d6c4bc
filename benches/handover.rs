//! The gap a restart leaves (issue 18.5): from SIGTERM to the next instance's `READY=1`, with
//! 1,000 connected clients handed over through the fd store, and the longest a streaming
//! client's `write` is held up meanwhile.
//!
//! ```text
//! cargo bench --bench handover              # 10 restarts of each kind, figures for BENCHMARKS.md
//! cargo bench --bench handover -- --quick   # 2 of each
//! ```
//!
//! systemd is played by `tests/it/fdstore_harness.rs` (the same stand-in the integration tests
//! use): it keeps what the daemon stores and starts the next instance with it, as PID 1 does,
//! so the figures leave out PID 1's own work (fork, cgroup, exec of the unit) and include
//! ours. Messages go to the stdout sink (a file): no journald, no root needed.
//!
//! Two kinds of restart: **settled**, every client connected for more than a second (already in
//! the store, as long-lived clients are: the handover stores only the state record); and
//! **fresh**, restarted right after 1,000 clients connected (each goes into the store at the
//! handover: 1,000 `FDSTORE=1` messages).

#[path = "../tests/it/fdstore_harness.rs"]
mod fdstore_harness;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdstore_harness::FdStoreManager;

const APP: &str = env!("CARGO_BIN_EXE_app");
const CLIENTS: usize = 1000;
/// Of them, this many write a 200-byte line every millisecond and time each `write`.
const STREAMING: usize = 20;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2 } else { 10 };
    raise_nofile(65536);
    println!(
        "handover: {CLIENTS} clients ({STREAMING} streaming a line per ms), stdout sink, {rounds} \
         restarts each"
    );
    for kind in [Kind::Settled, Kind::Fresh] {
        let mut gaps = Vec::new();
        let mut stalls = Vec::new();
        let mut exits = Vec::new();
        for _ in 0..rounds {
            let r = round(kind);
            gaps.push(r.gap);
            stalls.push(r.stall);
            exits.push(r.exit);
        }
        println!(
            "{:<8} SIGTERM→READY=1 median {:>6.1} ms, max {:>6.1} ms | SIGTERM→exit median {:>6.1} ms \
             | longest write stall median {:>6.1} ms, max {:>6.1} ms",
            kind.name(),
            ms(median(&mut gaps)),
            ms(*gaps.iter().max().unwrap()),
            ms(median(&mut exits)),
            ms(median(&mut stalls)),
            ms(*stalls.iter().max().unwrap()),
        );
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Settled,
    Fresh,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Settled => "settled",
            Kind::Fresh => "fresh",
        }
    }
}

struct Round {
    gap: Duration,
    exit: Duration,
    stall: Duration,
}

/// One instance, 1,000 clients, one restart.
fn round(kind: Kind) -> Round {
    let mut manager = FdStoreManager::new();
    let config = manager.config("[limits]\nrate_limit_burst = 0\n");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);

    let mut idle: Vec<UnixStream> = (STREAMING..CLIENTS)
        .map(|c| {
            let mut s = UnixStream::connect(&manager.socket).unwrap();
            writeln!(s, "idle client {c} says hello").unwrap();
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let streamers: Vec<_> = (0..STREAMING)
        .map(|c| {
            let (socket, stop, worst) = (manager.socket.clone(), stop.clone(), worst.clone());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(socket).unwrap();
                // A send buffer of a few lines: a write blocks once the daemon has not read
                // for a few milliseconds, so the longest write is how long it was not read.
                rustix::net::sockopt::set_socket_send_buffer_size(&s, 4096).unwrap();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let line = format!("streaming client {c} line {seq:08} {:150}\n", "");
                    let t = Instant::now();
                    s.write_all(line.as_bytes()).expect("a write failed");
                    worst.fetch_max(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                s
            })
        })
        .collect();
    let settle = match kind {
        Kind::Settled => Duration::from_millis(1600),
        Kind::Fresh => Duration::from_millis(200),
    };
    std::thread::sleep(settle);
    if let Kind::Settled = kind {
        let stored = manager
            .stored_names()
            .iter()
            .filter(|n| n.starts_with("app-conn-"))
            .count();
        assert_eq!(stored, CLIENTS, "every settled client is in the store");
    }
    // Only the restart's stalls count.
    worst.store(0, Ordering::Relaxed);
    let term = Instant::now();
    let status = manager.stop();
    let exit = term.elapsed();
    assert!(status.success(), "{status}: {}", manager.stderr());
    let ready = manager.start(APP, &argv, &[]);
    let gap = ready - term;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let streams: Vec<UnixStream> = streamers.into_iter().map(|h| h.join().unwrap()).collect();
    let stall = Duration::from_nanos(worst.load(Ordering::Relaxed));
    assert!(
        manager
            .stderr()
            .contains(&format!("{CLIENTS} connections carried over")),
        "{}",
        manager.stderr()
    );
    assert!(manager.errors().is_empty(), "{:?}", manager.errors());
    // Clients still there: one more line each goes through.
    for s in idle.iter_mut() {
        writeln!(s, "still here").expect("an idle client lost its connection");
    }
    drop(streams);
    if std::env::var_os("HANDOVER_BENCH_LOG").is_some() {
        eprintln!("{}", manager.stderr());
    }
    Round { gap, exit, stall }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raise_nofile(n: u64) {
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
