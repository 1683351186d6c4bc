//! Issue 18: connections carried across restarts in systemd's fd store, against the stand-in
//! for systemd in `fdstore_harness.rs` (the .deb end-to-end test does it with the real one).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::fdstore_harness::FdStoreManager;
use crate::support::{APP, raise_nofile};

/// One message as the stdout sink printed it.
#[derive(Debug)]
pub(crate) struct Printed {
    pub(crate) conn: u64,
    pub(crate) priority: u8,
    pub(crate) text: String,
    pub(crate) line_max: bool,
}

/// Parses the stdout sink's lines (`TIME tag[pid=… uid=… conn=N] <P> text [why]`); any other
/// `[why]` (eof, timeout) is kept in `text`, so that it fails the comparison.
pub(crate) fn printed(stdout: &[u8]) -> Vec<Printed> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let conn_at = l.find(" conn=").expect("conn=") + 6;
            let close = conn_at + l[conn_at..].find("] <").expect("] <");
            let conn = l[conn_at..close].parse().unwrap();
            let rest = &l[close + 3..];
            let (priority, text) = rest.split_once("> ").expect("<P> ");
            let (text, line_max) = match text.strip_suffix(" [line-max]") {
                Some(t) => (t, true),
                None => (text, false),
            };
            Printed {
                conn,
                priority: priority.parse().unwrap(),
                text: text.to_owned(),
                line_max,
            }
        })
        .collect()
}

/// The line number `seq` of client `c`: mostly short, every 13th 20 KB long.
fn line(c: usize, seq: u64) -> String {
    let pad = if seq % 13 == 12 {
        20_000
    } else {
        (seq % 50) as usize
    };
    format!("c{c:02} n{seq:06} {}", "x".repeat(pad))
}

/// The line a client cuts in two around a restart: 70 KB (more than the 48 KiB line limit, so
/// the first piece is logged by one instance and the second by the next), priority 3.
fn cut_line(c: usize, seq: u64) -> String {
    format!("c{c:02} n{seq:06} cut {}", "y".repeat(70_000))
}

pub(crate) struct Client {
    /// Lines it wrote completely, in order (`<3>` prefix not included).
    pub(crate) written: Vec<String>,
    pub(crate) stream: UnixStream,
}

/// Streams numbered lines until `stop`; when asked on `cut`, writes the first half of a
/// [`cut_line`], says so on `halfway`, and waits for `go_on` before the rest.
pub(crate) fn client(
    c: usize,
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    cut: Option<(mpsc::Receiver<()>, mpsc::Sender<()>, mpsc::Receiver<()>)>,
) -> Client {
    let mut stream = UnixStream::connect(&socket).expect("connect");
    let mut written = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some((ask, halfway, go_on)) = &cut
            && ask.try_recv().is_ok()
        {
            let text = cut_line(c, seq);
            let whole = format!("<3>{text}\n");
            let (a, b) = whole.as_bytes().split_at(35_000);
            stream
                .write_all(a)
                .unwrap_or_else(|e| panic!("client {c}: {e}"));
            halfway.send(()).unwrap();
            go_on.recv().unwrap();
            stream
                .write_all(b)
                .unwrap_or_else(|e| panic!("client {c}: {e}"));
            written.push(text);
            seq += 1;
            continue;
        }
        let text = line(c, seq);
        stream
            .write_all(format!("{text}\n").as_bytes())
            .unwrap_or_else(|e| panic!("client {c}: write failed: {e}"));
        written.push(text);
        seq += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    Client { written, stream }
}

/// Issue 18 "done when": 50 clients streaming numbered lines, 5 restarts in a row, some in the
/// middle of a long line: every line exactly once, whole, in order per client, under the same
/// CLIENT_CONNECTION throughout; no client sees an error, a word from the daemon, or EOF.
#[test]
fn restarts_hand_every_connection_over_and_lose_no_line() {
    raise_nofile(4096);
    let mut manager = FdStoreManager::new();
    // Every client is this test's uid: one rate-limit budget would not do for all of them.
    // Only a newline ends a line here: under load a client can stall mid-line past the default
    // flush_after (500 ms), which would log the piece on its own, restart or not.
    let config =
        manager.config("[protocol]\nflush_after = \"0s\"\n[limits]\nrate_limit_burst = 0\n");
    let argv = ["--config", &config, "serve", "--sink", "stdout"];
    manager.start(APP, &argv, &[]);

    const CLIENTS: usize = 50;
    const CUTTERS: usize = 5;
    let stop = Arc::new(AtomicBool::new(false));
    let mut cutters = Vec::new();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let cut = (c < CUTTERS).then(|| {
                let (ask_tx, ask_rx) = mpsc::channel();
                let (half_tx, half_rx) = mpsc::channel();
                let (go_tx, go_rx) = mpsc::channel();
                cutters.push((ask_tx, half_rx, go_tx));
                (ask_rx, half_tx, go_rx)
            });
            let (socket, stop) = (manager.socket.clone(), stop.clone());
            std::thread::spawn(move || client(c, socket, stop, cut))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    for restart in 0..5 {
        // One client stops in the middle of a long line, and stays there over the restart.
        let (ask, halfway, go_on) = &cutters[restart % CUTTERS];
        ask.send(()).unwrap();
        halfway
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("restart {restart}: {e}: {}", manager.stderr()));
        std::thread::sleep(Duration::from_millis(50));
        let status = manager.stop();
        assert!(status.success(), "instance {restart} exited with {status}");
        manager.start(APP, &argv, &[]);
        go_on.send(()).unwrap();
        // Long enough that some connections go into the store while they live.
        std::thread::sleep(Duration::from_millis(if restart == 2 { 1500 } else { 300 }));
    }
    stop.store(true, Ordering::Relaxed);
    let mut clients: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // Nothing came back on any connection, and none was closed: the daemon never spoke.
    for (c, client) in clients.iter_mut().enumerate() {
        client.stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        match client.stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) => panic!("client {c} saw EOF"),
            other => panic!("client {c} read {other:?}"),
        }
    }
    // The clients close; each connection's last lines are logged before the daemon closes it.
    for client in &clients {
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (c, client) in clients.iter_mut().enumerate() {
        client.stream.set_nonblocking(false).unwrap();
        client
            .stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut reply = Vec::new();
        client.stream.read_to_end(&mut reply).unwrap();
        assert!(
            reply.is_empty(),
            "client {c} was told {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    let expected: usize = clients.iter().map(|c| c.written.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    let messages = loop {
        let messages = printed(&manager.stdout());
        let pieces = messages.iter().filter(|m| m.line_max).count();
        if messages.len() - pieces >= expected || Instant::now() > deadline {
            break messages;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // Per connection, the pieces of a cut line joined again.
    let mut by_conn: HashMap<u64, Vec<(u8, String)>> = HashMap::new();
    let mut open: HashMap<u64, (Vec<u8>, String)> = HashMap::new();
    for m in messages {
        let (priorities, text) = open.entry(m.conn).or_default();
        priorities.push(m.priority);
        text.push_str(&m.text);
        if !m.line_max {
            let (priorities, text) = open.remove(&m.conn).unwrap();
            assert!(
                priorities.windows(2).all(|w| w[0] == w[1]),
                "connection {}: pieces of one line with priorities {priorities:?}",
                m.conn
            );
            by_conn
                .entry(m.conn)
                .or_default()
                .push((priorities[0], text));
        }
    }
    assert!(open.is_empty(), "lines left unfinished: {:?}", open.keys());
    assert_eq!(by_conn.len(), CLIENTS, "one CLIENT_CONNECTION per client");
    let mut cuts = 0;
    for (conn, lines) in &by_conn {
        let c: usize = lines[0].1[1..3].parse().unwrap();
        let written = &clients[c].written;
        let got: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
        let want: Vec<&str> = written.iter().map(String::as_str).collect();
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "client {c} (connection {conn}): {} lines logged, {} written; first difference \
                 at {first:?}: {:?}",
                got.len(),
                want.len(),
                first.map(|i| (
                    &got[i][..got[i].len().min(40)],
                    &want[i][..want[i].len().min(40)]
                ))
            );
        }
        for (priority, text) in lines {
            let want = if text.contains(" cut ") { 3 } else { 6 };
            assert_eq!(*priority, want, "client {c}: {}", &text[..20]);
            cuts += usize::from(text.contains(" cut "));
        }
    }
    assert_eq!(cuts, 5, "a line cut over each restart");
    assert_eq!(manager.errors(), Vec::<String>::new());

    // Every connection the daemon ended was taken out of the store; the state record was
    // taken out by the instance that read it, and the last one is there for the next.
    let stderr = manager.stderr();
    assert_eq!(manager.stored_names(), Vec::<String>::new(), "{stderr}");
    let carried = manager
        .notices()
        .iter()
        .filter(|n| n.text.contains("50 connections carried over"))
        .count();
    assert_eq!(carried, 5, "STATUS= after each restart: {stderr}");
    let stored_live = manager
        .notices()
        .iter()
        .filter(|n| n.text.starts_with("FDSTORE=1") && n.text.contains("app-conn-"))
        .count();
    assert!(
        stored_live >= CLIENTS,
        "every connection was stored: {stored_live}"
    );
    assert!(manager.stop().success());
    assert_eq!(manager.stored_names(), vec!["app-state".to_owned()]);
}

/// A sealed memfd with `data`, as a state record would be (the magic is the caller's).
pub(crate) fn sealed(data: &[u8]) -> std::os::fd::OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("x", MemfdFlags::ALLOW_SEALING).unwrap();
    let file = std::fs::File::from(fd);
    (&file).write_all(data).unwrap();
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW,
    )
    .unwrap();
    file.into()
}

/// Issue 18.3: a corrupt or foreign state record is logged and ignored, the connections are
/// served afresh under the numbers their names carry; entries that are ours by name but of no
/// use are removed; a client that wrote its last line and closed while no instance ran has
/// that line logged, and is then taken out of the store.
#[test]
fn a_bad_state_record_and_stale_entries_are_logged_and_ignored() {
    for (what, record) in [
        (
            "corrupt",
            b"app fd-store state v1\n{\"next_connection\": [".to_vec(),
        ),
        ("foreign", b"{\"some\": \"other program\"}\n".to_vec()),
    ] {
        let mut manager = FdStoreManager::new();
        let config = manager.config("");
        let argv = ["--config", &config, "serve", "--sink", "stdout"];
        manager.start(APP, &argv, &[]);
        let mut stays = UnixStream::connect(&manager.socket).unwrap();
        let mut leaves = UnixStream::connect(&manager.socket).unwrap();
        stays.write_all(b"before\n").unwrap();
        leaves.write_all(b"hello\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while printed(&manager.stdout()).len() < 2 {
            assert!(Instant::now() < deadline, "{}", manager.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(manager.stop().success());
        let mut names = manager.stored_names();
        names.sort();
        assert_eq!(names, ["app-conn-1", "app-conn-2", "app-state"], "{what}");

        // While no instance runs: one client says goodbye and closes.
        leaves.write_all(b"goodbye\n").unwrap();
        leaves.shutdown(std::net::Shutdown::Write).unwrap();
        manager.inject("app-state", sealed(&record), true);
        let (pipe, _w) = rustix::pipe::pipe().unwrap();
        manager.inject("app-conn-77", pipe, false);
        manager.inject("app-conn-x", sealed(b""), false);
        manager.start(APP, &argv, &[]);

        stays.write_all(b"after\n").unwrap();
        leaves
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        leaves
            .read_to_end(&mut rest)
            .expect("the daemon closes after reading to the end");
        assert!(rest.is_empty());
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let lines: Vec<(u64, String)> = printed(&manager.stdout())
                .into_iter()
                .map(|m| (m.conn, m.text))
                .collect();
            if lines.len() >= 4 || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let conn_of = |t: &str| lines.iter().find(|(_, l)| l == t).map(|(c, _)| *c);
        assert_eq!(conn_of("before"), conn_of("after"), "{what}: {lines:?}");
        assert_eq!(conn_of("hello"), conn_of("goodbye"), "{what}: {lines:?}");
        assert!(
            conn_of("after").is_some() && conn_of("goodbye").is_some(),
            "{lines:?}"
        );
        let stderr = manager.stderr();
        assert!(
            stderr.contains("ignoring the state record app-state"),
            "{what}: {stderr}"
        );
        assert!(stderr.contains("app-conn-77: not a socket"), "{stderr}");
        assert!(stderr.contains("app-conn-x is of no use here"), "{stderr}");
        // The closed client, the stale entries and the record are out of the store.
        let deadline = Instant::now() + Duration::from_secs(5);
        while manager.stored_names() != ["app-conn-1"] {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                manager.stored_names()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A connection after the pickup is numbered after the carried ones.
        let mut third = UnixStream::connect(&manager.socket).unwrap();
        third.write_all(b"third\n").unwrap();
        drop(third);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = printed(&manager.stdout());
            if let Some(m) = p.iter().find(|m| m.text == "third") {
                assert_eq!(m.conn, 3, "{what}");
                break;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(manager.stop().success());
        assert_eq!(manager.errors(), Vec::<String>::new());
    }
}

/// Issue 18.2 with a real journald: a client's entries keep every CLIENT_* field across a
/// restart — its credentials (SO_PEERCRED, re-read from the socket), its command and unit
/// (resolved once, when it first wrote, and carried in the state record) and CLIENT_CONNECTION.
#[test]
fn a_carried_client_keeps_its_fields_journald() {
    crate::support::require_root("a_carried_client_keeps_its_fields_journald");
    let journald = crate::support::Journald::start();
    let id = crate::support::identifier("handover-fields");
    let mut manager = FdStoreManager::new();
    let config = manager.config("");
    let argv = ["--config", &config, "serve"];
    let target = journald.pid().to_string();
    let prefix = ["nsenter", "--target", &target, "--mount", "--"];
    let env = [("APP_JOURNAL__IDENTIFIER", id.as_str())];
    manager.start_in(&prefix, APP, &argv, &env);
    let mut socat = std::process::Command::new("socat")
        .args(["-", &format!("UNIX-CONNECT:{}", manager.socket.display())])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("socat");
    let mut stdin = socat.stdin.take().unwrap();
    stdin.write_all(b"before the restart\n").unwrap();
    journald.wait_for(&id, 1);
    assert!(manager.stop().success(), "{}", manager.stderr());
    manager.start_in(&prefix, APP, &argv, &env);
    stdin.write_all(b"after the restart\n").unwrap();
    let entries = journald.wait_for(&id, 2);
    let _ = socat.kill();
    let _ = socat.wait();
    assert_eq!(entries[0].get("MESSAGE"), "before the restart");
    assert_eq!(entries[1].get("MESSAGE"), "after the restart");
    for field in [
        "CLIENT_CONNECTION",
        "CLIENT_PID",
        "CLIENT_UID",
        "CLIENT_GID",
        "CLIENT_COMM",
        "CLIENT_CGROUP",
    ] {
        assert_eq!(
            entries[0].str(field),
            entries[1].str(field),
            "{field}: {:?}",
            entries
        );
    }
    assert_eq!(entries[1].get("CLIENT_COMM"), "socat");
    // Two pids on the journal socket, one CLIENT_CONNECTION: two instances, one connection.
    assert_ne!(entries[0].get("_PID"), entries[1].get("_PID"));
}
