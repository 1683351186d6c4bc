//! The fd store's edges, found in review: memory at the worst-case handover and pickup (the
//! unit's `MemoryMax=512M`), and the store turned off (`FDSTORE=0`) while it still holds
//! connections. Against `fdstore_harness.rs`, the stand-in for PID 1's fd store.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::fdstore_harness::FdStoreManager;
use crate::handover::sealed;
use crate::support::{APP, peak_rss_kib};

/// The state record a handover of `n` connections, each with `pending` bytes of a line read
/// and not yet ended, writes (the format of `StateRecord::write_to`; a missing `Option` is `None`).
fn record(n: u64, pending: usize) -> Vec<u8> {
    let mut out = b"app fd-store state v1\n".to_vec();
    write!(out, "{{\"next_connection\":{},\"connections\":[", n + 1).unwrap();
    for id in 1..=n {
        if id > 1 {
            out.push(b',');
        }
        write!(
            out,
            "{{\"id\":{id},\"framer\":{{\"continuing\":false,\"header_stash\":false,\
             \"record\":false,\"after_record\":false,\"syslog_client\":false}},\
             \"pending\":{pending},\"line\":{{\"priority\":6}},\"attributed\":false,\"fields\":0}}"
        )
        .unwrap();
    }
    out.extend_from_slice(b"]}\n");
    out.resize(out.len() + n as usize * pending, b'z');
    out
}

/// DESIGN §5 (bounded memory) and the shipped unit's `MemoryMax=512M`: the worst case the
/// defaults allow at a handover — 4096 connections (max_connections) each holding a partial
/// line just under `max_line_bytes` — is a 192 MiB state record. The next instance reads each
/// connection's part into that connection's own buffer, never the whole record besides: its
/// peak plus the memfd (shmem, charged to the same cgroup) stays under 512 MiB. (Before: the
/// record read whole, then copied twice, ~400 MiB RSS plus the memfd.)
#[test]
fn picking_up_a_worst_case_state_record_stays_under_memory_max() {
    let mut manager = FdStoreManager::new();
    let config = manager.config("");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);
    let base = peak_rss_kib(manager.child.as_ref().unwrap().id());
    assert!(manager.stop().success());

    let data = record(4096, 49_151);
    let record_mib = data.len() as u64 >> 20;
    manager.inject("app-state", sealed(&data), true);
    drop(data);
    manager.start(APP, &argv, &[]);
    let peak = peak_rss_kib(manager.child.as_ref().unwrap().id());
    let stderr = manager.stderr();
    assert!(manager.stop().success());
    eprintln!(
        "state record {record_mib} MiB; daemon peak RSS {} MiB without it, {} MiB picking it up",
        base >> 10,
        peak >> 10
    );
    // The memfd's pages (shmem, written by the previous instance in the same cgroup and kept
    // by systemd) stay charged to app.service while the new instance reads them.
    assert!(
        (peak >> 10) + record_mib < 512,
        "picking up a {record_mib} MiB state record peaks at {} MiB RSS (without the record: {} \
         MiB); with the memfd's own {record_mib} MiB that is over app.service's MemoryMax=512M \
         (and MemoryHigh=384M): {stderr}",
        peak >> 10,
        base >> 10
    );
}

/// README: "Without a store — `FDSTORE` unset or 0 … — a stop drains instead", and issue 18.4:
/// a stored connection the daemon ends must leave the store, or systemd's copy keeps the socket
/// open and the client never sees the close. Turning the store off as README says
/// (`Environment=FDSTORE=0`, restart) hands the connections to an instance that serves them and
/// takes them out of the store at once: its drain tells the client `app: shutting down` and the
/// client sees the close.
#[test]
fn with_fdstore_0_a_carried_connection_leaves_the_store_and_closes() {
    let mut manager = FdStoreManager::new();
    let config = manager.config("[service]\nshutdown_timeout = \"1s\"\n");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);
    let mut client = UnixStream::connect(&manager.socket).unwrap();
    client.write_all(b"one\n").unwrap();
    std::thread::sleep(Duration::from_millis(1600)); // stored while it lives
    assert!(manager.stop().success());
    // The admin turns the store off as README says, and restarts.
    manager.start(APP, &argv, &[("FDSTORE", "0")]);
    client.write_all(b"two\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(manager.stop().success()); // drains: "app: shutting down", close
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let closed = loop {
        match std::io::Read::read(&mut client, &mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let told = String::from_utf8_lossy(&got).into_owned();
    let stored = manager.stored_names();
    assert!(
        closed,
        "told {told:?} but never closed: the store still holds {stored:?}"
    );
}

/// The handover side of the memory case: `Store::commit` writes the state record straight into
/// the memfd, freeing each connection's pending bytes once written, so 192 MiB pending (the
/// unit's own worst case, 4096 x 48 KiB; here 48 x 4 MiB, fewer fds) is never in memory twice:
/// the stopping instance's peak plus the memfd stays under MemoryMax=512M.
#[test]
fn handing_over_192_mib_of_partial_lines_stays_under_memory_max() {
    crate::support::raise_nofile(4096);
    const CLIENTS: usize = 48;
    const LINE: usize = 4 << 20;
    let mut manager = FdStoreManager::new();
    let config = manager.config(&format!(
        "[protocol]\nflush_after = \"0s\"\n[limits]\nmax_line_bytes = {LINE}\n\
             rate_limit_burst = 0\n"
    ));
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);
    let pid = manager.child.as_ref().unwrap().id();
    let mut writers = Vec::new();
    let clients: Vec<UnixStream> = (0..CLIENTS)
        .map(|_| {
            let c = UnixStream::connect(&manager.socket).unwrap();
            let mut socket = c.try_clone().unwrap();
            writers.push(std::thread::spawn(move || {
                socket.write_all(&vec![b'p'; LINE - 1]).unwrap();
            }));
            c
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // What is left in the socket buffers is read by now, too.
    std::thread::sleep(Duration::from_secs(1));
    let serving = peak_rss_kib(pid);
    let (status, peak) = manager.stop_with_peak_rss();
    assert!(status.success());
    let pending_mib = (CLIENTS * LINE) as u64 >> 20;
    eprintln!(
        "{pending_mib} MiB pending: peak RSS {} MiB while serving, {} MiB at the handover",
        serving >> 10,
        peak >> 10
    );
    drop(clients);
    assert!(
        (peak >> 10) + pending_mib < 512,
        "with {pending_mib} MiB of partial lines the handover peaks at {} MiB RSS (serving: {} \
         MiB) plus the {pending_mib} MiB memfd: over MemoryMax=512M",
        peak >> 10,
        serving >> 10
    );
}

/// Four long-lived clients, each with a partial line pending, a store of `max` fds, a restart,
/// then each client ends its line. Returns the lines the second instance logged whole, the
/// harness's refusals and the daemon's stderr.
fn restart_with_store_of(max: usize) -> (Vec<String>, Vec<String>, String) {
    let mut manager = FdStoreManager::new();
    manager.set_store_max(max);
    let config = manager.config("[protocol]\nflush_after = \"0s\"\n");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    let fdstore = max.to_string();
    let env = [("FDSTORE", fdstore.as_str())];
    manager.start(APP, &argv, &env);
    let mut clients: Vec<UnixStream> = (1..=4)
        .map(|i| {
            let mut c = UnixStream::connect(&manager.socket).unwrap();
            c.write_all(format!("part{i}").as_bytes()).unwrap();
            c
        })
        .collect();
    // Long-lived: each goes into the store while it lives (STORE_AFTER = 1 s).
    std::thread::sleep(Duration::from_millis(1800));
    assert!(manager.stop().success());
    manager.start(APP, &argv, &env);
    for (i, c) in clients.iter_mut().enumerate() {
        let _ = c.write_all(format!("-end{}\n", i + 1).as_bytes());
    }
    std::thread::sleep(Duration::from_millis(800));
    let stderr = manager.stderr();
    assert!(manager.stop().success());
    let out = String::from_utf8_lossy(&manager.stdout()).into_owned();
    let whole = (1..=4)
        .map(|i| format!("part{i}-end{i}"))
        .filter(|l| out.contains(l.as_str()))
        .collect();
    drop(clients);
    (whole, manager.errors(), stderr)
}

/// Control: a store with room for the four connections and the record carries every
/// partial line across the restart.
#[test]
fn a_roomy_store_carries_every_partial_line() {
    let (whole, refused, _) = restart_with_store_of(5);
    assert_eq!(
        whole.len(),
        4,
        "whole lines: {whole:?}; refused: {refused:?}"
    );
}

/// A store one slot short (`FDSTORE=4`: 3 connections and the record; 4 clients): connections
/// stored while they live never take the last slot, so at the handover the record gets it and
/// the connections that are in the store go on with their partial lines; systemd refuses the
/// newest connection only. (Before: the store filled with connections, the record was refused
/// and every partial line was lost.)
#[test]
fn a_store_full_of_connections_keeps_a_slot_for_the_state_record() {
    let (whole, refused, stderr) = restart_with_store_of(4);
    eprintln!("refused by the store: {refused:?}");
    eprintln!("whole lines after the restart: {whole:?}");
    assert!(
        whole.len() >= 3,
        "with FDSTORE=4 (3 connections + the record) only {} of 4 partial lines survived the \
         restart: {whole:?}; the store refused {refused:?}; daemon stderr:\n{stderr}",
        whole.len()
    );
}

/// Every size in a state record is checked before anything is allocated, and the JSON part is
/// bounded too (16 MiB, 65,536 connections): a damaged record naming 700,000 connections (~120
/// MiB) is refused before it is parsed, so the next instance stays far from MemoryMax=512M.
/// (Before: parsed and cloned, 545 MiB RSS.)
#[test]
fn a_record_naming_too_many_connections_is_refused_before_it_is_parsed() {
    let mut manager = FdStoreManager::new();
    let config = manager.config("");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);
    let base = peak_rss_kib(manager.child.as_ref().unwrap().id());
    assert!(manager.stop().success());
    let data = record(700_000, 0);
    let record_mib = data.len() as u64 >> 20;
    manager.inject("app-state", sealed(&data), true);
    drop(data);
    manager.start(APP, &argv, &[]);
    let peak = peak_rss_kib(manager.child.as_ref().unwrap().id());
    assert!(manager.stop().success());
    eprintln!(
        "record {record_mib} MiB: peak RSS {} MiB picking it up (without: {} MiB)",
        peak >> 10,
        base >> 10
    );
    assert!(
        (peak >> 10) + record_mib < 512,
        "a {record_mib} MiB record peaks at {} MiB RSS (+{record_mib} MiB memfd): over \
         MemoryMax=512M",
        peak >> 10
    );
}

/// `limits.max_connections` has no upper bound (`APP_LIMITS__MAX_CONNECTIONS` takes any usize):
/// the open-file check adds to it without overflowing (a debug build panicked at start).
#[test]
fn a_huge_max_connections_does_not_panic_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, "").unwrap();
    let socket = dir.path().join("app.sock");
    let mut child = std::process::Command::new(APP)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--sink", "stdout", "--socket"])
        .arg(&socket)
        .env_clear()
        .env("APP_LIMITS__MAX_CONNECTIONS", u64::MAX.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
