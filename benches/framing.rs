//! The daemon's per-line work in one process, without sockets: framing, the `<N>` prefix, the
//! syslog header check and the journal entry, exactly as a connection runs them
//! (`encode::encode`), over input read in 64 KiB chunks into 256 KiB batches.
//!
//! ```text
//! cargo bench --bench framing
//! ```
//!
//! Prints nanoseconds and heap allocations per line for plain text, `<N>`-prefixed text,
//! logger(1)'s RFC 3164 and RFC 5424 lines, Python's SysLogHandler records (`<14>text\0`:
//! NUL-terminated, no newline), and a pino-like JSON line (8 keys, one of them a nested object)
//! that becomes fields (`protocol::json`). A counting global allocator does the counting.
//! No root needed. Timings on a shared machine wander; for figures that do not, count
//! instructions: `FRAMING_ONLY=plain FRAMING_RUNS=1 valgrind --tool=callgrind
//! --toggle-collect='*framing::run*' target/release/deps/framing-*` and divide by the lines.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use app::config::{self, ConfigFile, Overrides, Settings, Sources};
use app::journal::entry::Encoder;
use app::journal::{Batch, Target};
use app::peer::Peer;
use app::protocol::Framer;
use app::server::encode::{self, LineState};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LINES: usize = 1_000_000;

/// Line `i` of one kind of input.
type LineMaker = fn(usize) -> String;
const READ_SIZE: usize = 64 * 1024;

fn main() {
    let settings = config::load(&Sources {
        file: ConfigFile::Default("/nonexistent/app.toml".into()),
        env: &HashMap::new(),
        overrides: Overrides::default(),
        euid: 0,
    })
    .expect("default settings");
    let runs: usize = std::env::var("FRAMING_RUNS").map_or(5, |r| r.parse().expect("FRAMING_RUNS"));
    println!("{LINES} lines of about 100 bytes each, median of {runs} runs:");
    println!("| input | ns/line | allocations/line |");
    println!("|---|---:|---:|");
    let kinds: [(&str, LineMaker); 6] = [
        ("plain text", |i| format!("c000 s{i:08} {}", FILL)),
        ("`<N>` prefix", |i| format!("<3>c000 s{i:08} {}", FILL)),
        ("logger(1), RFC 3164", |i| {
            format!(
                "<13>Nov 25 23:38:36 myhost mytag[4242]: s{i:08} {}",
                &FILL[..50]
            )
        }),
        ("logger(1) --rfc5424", |i| {
            format!(
                "<13>1 2026-11-25T23:38:36.123456+00:00 myhost mytag 4242 ID42 - s{i:08} {}",
                &FILL[..30]
            )
        }),
        ("pino JSON, 8 keys", |i| {
            format!(
                r#"{{"level":30,"time":1764110316123,"pid":4242,"hostname":"myhost","name":"billing","reqId":"s{i:08}","http":{{"method":"GET","status":200}},"msg":"request done"}}"#
            )
        }),
        ("Python SysLogHandler, NUL-terminated", |i| {
            format!("<14>c000 s{i:08} {}", FILL)
        }),
    ];
    let only = std::env::var("FRAMING_ONLY").ok();
    for (name, make) in kinds {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let end = if name.contains("NUL") { b'\0' } else { b'\n' };
        let mut input = Vec::new();
        for i in 0..LINES {
            input.extend_from_slice(make(i).as_bytes());
            input.push(end);
        }
        let mut results: Vec<(f64, f64)> = (0..runs).map(|_| run(&input, &settings)).collect();
        results.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ns, allocations) = results[runs / 2];
        println!("| {name} | {ns:.0} | {allocations:.4} |");
    }
}

const FILL: &str =
    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01";

/// Frames and encodes `input` as a connection does; returns (ns per line, allocations per line).
fn run(input: &[u8], settings: &Settings) -> (f64, f64) {
    let peer = Peer::Unix {
        pid: Some(4242),
        uid: 1000,
        gid: 1000,
    };
    let encoder = Encoder::new(Target::Journal, &peer, 1, None);
    let mut framer = Framer::new(settings.limits.max_line_bytes.get());
    let mut line = LineState::new(settings);
    let (mut entries, mut bytes) = (0usize, 0usize);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    for mut chunk in input.chunks(READ_SIZE) {
        while !chunk.is_empty() {
            let mut batch = Batch::for_input(chunk);
            let used = framer.feed(chunk, &mut |m| {
                encode::encode(m, &mut line, &encoder, settings, &mut batch);
                !batch.is_full()
            });
            chunk = &chunk[used..];
            entries += batch.len();
            bytes += batch.entries().map(<[u8]>::len).sum::<usize>();
            std::hint::black_box(&batch);
        }
    }
    let elapsed = start.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(entries, LINES, "every line is one entry");
    assert!(
        bytes > LINES * 100,
        "entries hold the text and their fields"
    );
    (
        elapsed.as_nanos() as f64 / LINES as f64,
        allocations as f64 / LINES as f64,
    )
}
