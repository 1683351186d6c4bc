//! The syslog clients already on a Debian machine (issue 15), each run for real against the
//! stream socket or the datagram socket, read back from a real journald: Python's
//! `SysLogHandler` (NUL-terminated records), Perl's `Sys::Syslog` (`\n\0`), `logger -u` on the
//! datagram socket, nginx and HAProxy (datagrams only).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A daemon with a datagram socket too (`socket.datagram_path`), in `dir`.
fn daemon_with_datagrams(journald: &Journald, id: &str, dir: &Path) -> (Daemon, PathBuf) {
    let dgram = dir.join("app.dgram");
    let daemon = DaemonBuilder::new()
        .journald(journald)
        .identifier(id)
        .env("APP_SOCKET__DATAGRAM_PATH", dgram.to_str().unwrap())
        // A pause never ends a record here: only its terminator, or the client's close, can.
        .env("APP_PROTOCOL__FLUSH_AFTER", "300ms")
        .start();
    wait_until(Duration::from_secs(10), "the datagram socket", || {
        dgram.exists().then_some(())
    });
    (daemon, dgram)
}

fn wait_entries(journald: &Journald, matches: &[&str], n: usize) -> Vec<Entry> {
    let got = wait_until(
        Duration::from_secs(20),
        &format!("{n} entries {matches:?}"),
        || {
            let e = journald.query(matches);
            (e.len() >= n).then_some(e)
        },
    );
    // A little longer, to catch anything spurious that follows.
    std::thread::sleep(Duration::from_millis(800));
    let again = journald.query(matches);
    assert_eq!(
        again.len(),
        got.len(),
        "more entries than expected: {again:?}"
    );
    again
}

/// Microseconds since the epoch, as journald stamps entries.
fn realtime(e: &Entry) -> u64 {
    e.get("__REALTIME_TIMESTAMP").parse().unwrap()
}

/// Runs Python's logging.handlers.SysLogHandler at `address`; returns its pid and the time (µs
/// since the epoch) right after each record was written. The client stays connected for 1.5 s
/// after the last record, so that a record logged only at the close is seen late.
fn python_records(address: &Path, socktype: &str) -> (u32, Vec<u64>) {
    let script = format!(
        r#"
import logging, logging.handlers, socket, sys, time
h = logging.handlers.SysLogHandler(address={address:?}, socktype={socktype})
log = logging.getLogger("pytest"); log.addHandler(h); log.setLevel(logging.DEBUG)
for level, text in [(logging.WARNING, "python one"), (logging.ERROR, "python two"), (logging.INFO, "python three")]:
    log.log(level, text)
    print(time.time_ns() // 1000, flush=True)
    time.sleep(0.2)
time.sleep(1.5)
h.close()
"#,
        address = address.to_str().unwrap()
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let times = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    (pid, times)
}

/// Python sends `<PRI>text\0` and no newline (stream, its fallback for a path) or one datagram
/// per record: either way, one entry per record, its priority, no NUL, logged at once.
#[test]
fn python_syslog_handler_stream_and_datagram_journald() {
    let journald = Journald::start();
    let id = identifier("python");
    let dir = temp_dir();
    let (daemon, dgram) = daemon_with_datagrams(&journald, &id, dir.path());
    for (address, socktype) in [
        (daemon.socket.as_path(), "None"),
        (dgram.as_path(), "socket.SOCK_DGRAM"),
    ] {
        let (pid, written) = python_records(address, socktype);
        let entries = wait_entries(&journald, &[&format!("CLIENT_PID={pid}")], 3);
        let got: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.get("MESSAGE"), e.get("PRIORITY")))
            .collect();
        assert_eq!(
            got,
            [
                ("python one".into(), "4".into()),
                ("python two".into(), "3".into()),
                ("python three".into(), "6".into()),
            ],
            "{socktype}"
        );
        for (e, at) in entries.iter().zip(&written) {
            assert_eq!(e.get("SYSLOG_IDENTIFIER"), id, "{socktype}");
            assert_eq!(e.get("SYSLOG_FACILITY"), "1", "{socktype}");
            assert!(e.str("LINE_BREAK").is_none(), "{socktype}: {e:?}");
            // Logged when its NUL (or its datagram) arrived, not at a pause or the close.
            let late_us = realtime(e).saturating_sub(*at);
            eprintln!("{socktype}: logged {late_us} µs after the write");
            assert!(late_us < 100_000, "{socktype}: logged {late_us} µs late");
        }
    }
}

/// `logger.exception()` sends its traceback inside the record (`<11>boom\nTraceback…\0`): the
/// record after it is still one entry of its own, at its priority, logged at once — the
/// traceback does not swallow it.
#[test]
fn python_traceback_does_not_swallow_the_next_record_journald() {
    let journald = Journald::start();
    let id = identifier("pytrace");
    let dir = temp_dir();
    let (daemon, _dgram) = daemon_with_datagrams(&journald, &id, dir.path());
    let script = format!(
        r#"
import logging, logging.handlers, time
h = logging.handlers.SysLogHandler(address={address:?})
log = logging.getLogger("pytrace"); log.addHandler(h)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
log.warning("after the traceback")
print(time.time_ns() // 1000, flush=True)
time.sleep(1.5)
h.close()
"#,
        address = daemon.socket.to_str().unwrap()
    );
    let child = Command::new("python3")
        .die_with_test()
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let written: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let after = wait_entries(
        &journald,
        &[&format!("CLIENT_PID={pid}"), "MESSAGE=after the traceback"],
        1,
    );
    assert_eq!(after[0].get("PRIORITY"), "4");
    assert_eq!(after[0].get("SYSLOG_IDENTIFIER"), id);
    let late_us = realtime(&after[0]).saturating_sub(written);
    assert!(late_us < 100_000, "logged {late_us} µs late");
    let all = journald.query(&[&format!("CLIENT_PID={pid}")]);
    let messages: Vec<Vec<u8>> = all.iter().filter_map(|e| e.bytes("MESSAGE")).collect();
    assert!(
        messages.iter().any(|m| m == b"boom"),
        "the record's first line: {messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m == b"ZeroDivisionError: division by zero"),
        "the traceback's last line, ended by its NUL: {messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains(&0)),
        "no NUL in any entry: {messages:?}"
    );
}

/// Perl's Sys::Syslog (0.36, Debian 12) with `setlogsock({type => "unix", path => …})`: a stream
/// connection (it falls back to a datagram one only if that fails), `<PRI>… \n\0` per record.
#[test]
fn perl_sys_syslog_journald() {
    let journald = Journald::start();
    let id = identifier("perl");
    let dir = temp_dir();
    let (daemon, _dgram) = daemon_with_datagrams(&journald, &id, dir.path());
    let tag = format!("perltag{}", std::process::id());
    let script = r#"
use Sys::Syslog qw(:standard :macros setlogsock);
setlogsock({type => "unix", path => $ARGV[0]}) or die "setlogsock";
openlog($ARGV[1], "pid", "user");
syslog("err", "perl one");
syslog("warning", "perl two %d", 2);
sleep 1;   # past protocol.flush_after: the NUL after a record must not come out alone
syslog("info", "perl three");
closelog();
"#;
    let mut child = Command::new("perl")
        .args(["-e", script])
        .arg(&daemon.socket)
        .arg(&tag)
        .spawn()
        .expect("perl");
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let entries = wait_entries(&journald, &[&format!("CLIENT_PID={pid}")], 3);
    let got: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e.get("SYSLOG_IDENTIFIER"),
                e.get("PRIORITY"),
                e.get("SYSLOG_PID"),
                e.get("MESSAGE"),
            )
        })
        .collect();
    let p = pid.to_string();
    assert_eq!(
        got,
        [
            (tag.clone(), "3".into(), p.clone(), "perl one".into()),
            (tag.clone(), "4".into(), p.clone(), "perl two 2".into()),
            (tag.clone(), "6".into(), p.clone(), "perl three".into()),
        ]
    );
    // Nothing under the daemon's default identifier (a lone NUL, a record without its tag).
    assert!(
        journald.entries(&id).is_empty(),
        "{:?}",
        journald.entries(&id)
    );
}

/// `logger -u PATH` on the datagram socket: one datagram, one entry, CLIENT_* from the
/// datagram's own credentials (here: a process running as nobody), SOCKET= naming the socket.
#[test]
fn logger_datagram_journald() {
    let journald = Journald::start();
    let id = identifier("logger-dgram");
    let dir = temp_dir();
    // nobody must reach the socket: a directory it may enter, a socket it may write to.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dgram = dir.path().join("app.dgram");
    let _daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .env("APP_SOCKET__DATAGRAM_PATH", dgram.to_str().unwrap())
        .env("APP_SOCKET__MODE", "0666")
        .start();
    let tag = format!("dgtag{}", std::process::id());
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["logger", "-d", "--socket-errors=on", "-u"])
        .arg(&dgram)
        .args(["-t", &tag, "-p", "local3.err", "--", "over a datagram"])
        .status()
        .expect("setpriv logger");
    assert!(status.success());
    let entries = wait_entries(&journald, &[&format!("SYSLOG_IDENTIFIER={tag}")], 1);
    let e = &entries[0];
    assert_eq!(e.get("MESSAGE"), "over a datagram");
    assert_eq!(e.get("PRIORITY"), "3");
    assert_eq!(e.get("SYSLOG_FACILITY"), "19");
    assert_eq!(e.get("CLIENT_UID"), "65534");
    assert_eq!(e.get("CLIENT_GID"), "65534");
    assert!(!e.get("CLIENT_PID").is_empty());
    assert_eq!(e.get("SOCKET"), dgram.to_str().unwrap());
    // A datagram larger than limits.max_line_bytes is cut as a long line is.
    let long = "x".repeat(100_000);
    let status = Command::new("logger")
        .args(["-d", "--socket-errors=on", "--size", "200000", "-u"])
        .arg(&dgram)
        .args(["-t", &format!("{tag}long"), "--", &long])
        .status()
        .unwrap();
    assert!(status.success());
    let pieces = wait_entries(&journald, &[&format!("SYSLOG_IDENTIFIER={tag}long")], 3);
    let sizes: Vec<String> = pieces
        .iter()
        .map(|e| e.str("LINE_BREAK").unwrap_or_default())
        .collect();
    assert_eq!(sizes, ["line-max", "line-max", ""], "{pieces:?}");
    let joined: String = pieces.iter().map(|e| e.get("MESSAGE")).collect();
    assert!(joined.ends_with(&long), "{}", joined.len());
}

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// nginx speaks syslog over datagrams only: its access log (tag `web`) arrives with the worker's
/// pid as CLIENT_PID.
#[test]
fn nginx_access_log_over_datagrams_journald() {
    let journald = Journald::start();
    let id = identifier("nginx");
    let dir = temp_dir();
    let (_daemon, dgram) = daemon_with_datagrams(&journald, &id, dir.path());
    let addr = free_tcp_addr();
    let d = dir.path().display();
    let sink = format!("syslog:server=unix:{},tag=web", dgram.display());
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {sink} info;\n\
         events {{ worker_connections 16; }}\n\
         http {{\n  access_log {sink};\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  server {{ listen {addr}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    // In a pid namespace of its own: its worker does not die with the master, but every process
    // in the namespace dies with the namespace's first one (and that one with the test).
    let nginx = Reaped(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "nginx"])
            .die_with_test()
            .args(["-p", &d.to_string(), "-e", &format!("{d}/startup.log")])
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("nginx"),
    );
    let worker = wait_until(Duration::from_secs(10), "nginx's worker", || {
        let master = children(nginx.0.id()).first().copied()?;
        children(master).first().copied()
    });
    let probe = format!("/probe-{}", std::process::id());
    let response = wait_until(Duration::from_secs(10), "nginx answering", || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        write!(s, "GET {probe} HTTP/1.0\r\n\r\n").ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        Some(r)
    });
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let entries = wait_until(Duration::from_secs(20), "nginx's access line", || {
        let e: Vec<Entry> = journald
            .query(&["SYSLOG_IDENTIFIER=web"])
            .into_iter()
            .filter(|e| e.get("MESSAGE").contains(&probe))
            .collect();
        (!e.is_empty()).then_some(e)
    });
    let e = &entries[0];
    assert!(
        e.get("MESSAGE")
            .contains(&format!("\"GET {probe} HTTP/1.0\" 200")),
        "{e:?}"
    );
    assert_eq!(e.get("CLIENT_PID"), worker.to_string());
    // Attribution per datagram: the worker is alive while its datagram is handled.
    assert_eq!(e.get("CLIENT_COMM"), "nginx", "{e:?}");
    assert!(e.str("CLIENT_CGROUP").is_some(), "{e:?}");
    assert_eq!(e.get("CLIENT_UID"), "0");
    assert_eq!(e.get("PRIORITY"), "6");
    assert_eq!(e.get("SYSLOG_FACILITY"), "23");
}

/// HAProxy logs over datagrams only: its proxy log line (HAProxy 2.6 sends no start-up line to
/// syslog; a connection to the frontend makes one) arrives at facility local0 (16).
#[test]
fn haproxy_logs_over_datagrams_journald() {
    let journald = Journald::start();
    let id = identifier("haproxy");
    let dir = temp_dir();
    let (_daemon, dgram) = daemon_with_datagrams(&journald, &id, dir.path());
    let addr = free_tcp_addr();
    let conf = format!(
        "global\n  log {} local0\n\ndefaults\n  log global\n  mode http\n  timeout connect 1s\n  \
         timeout client 1s\n  timeout server 1s\n\nfrontend fe_{pid}\n  bind {addr}\n  \
         default_backend be\n\nbackend be\n  server s1 127.0.0.1:9\n",
        dgram.display(),
        pid = std::process::id()
    );
    std::fs::write(dir.path().join("haproxy.cfg"), conf).unwrap();
    let haproxy = Reaped(
        Command::new("haproxy")
            .die_with_test()
            .arg("-db")
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .spawn()
            .expect("haproxy"),
    );
    wait_until(Duration::from_secs(10), "haproxy answering", || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(s, "GET /probe HTTP/1.0\r\n\r\n").ok()?;
        let _ = s.read_to_end(&mut Vec::new());
        Some(())
    });
    let entries = wait_until(Duration::from_secs(20), "haproxy's proxy log line", || {
        let e = journald.query(&["SYSLOG_IDENTIFIER=haproxy"]);
        (!e.is_empty()).then_some(e)
    });
    let e = &entries[0];
    assert_eq!(e.get("SYSLOG_FACILITY"), "16", "{e:?}");
    assert!(
        e.get("MESSAGE")
            .contains(&format!("fe_{}", std::process::id())),
        "{e:?}"
    );
    assert_eq!(e.get("SYSLOG_PID"), haproxy.0.id().to_string());
    assert_eq!(e.get("CLIENT_PID"), haproxy.0.id().to_string());
}
