//! Structured lines (issue 17, README "Structured lines"): real JSON loggers — pino,
//! python-json-logger, tracing-subscriber's json layer — writing to the socket, read back from a
//! real journald by the fields their keys became.
//!
//! pino and python-json-logger are installed by `.ci/run` into `target/test-deps` (pinned
//! versions; the commands are in [`PINO`] and [`PYTHON_JSON_LOGGER`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// How `.ci/run` installs pino; the test says so when it is missing.
const PINO: &str = "npm install --prefix target/test-deps/node --no-audit --no-fund pino@10.4.0";
const PYTHON_JSON_LOGGER: &str =
    "pip3 install --target target/test-deps/python python-json-logger==4.2.0";

fn deps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps")
}

/// The one entry with `REQ_ID=req_id`, once it is in.
fn by_req_id(journald: &Journald, req_id: &str) -> Entry {
    let m = format!("REQ_ID={req_id}");
    let mut got = wait_until(Duration::from_secs(15), &m, || {
        let e = journald.query(&[&m]);
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

#[test]
fn pino_lines_become_fields_journald() {
    let modules = deps().join("node/node_modules");
    assert!(
        modules.join("pino/package.json").exists(),
        "pino is not installed in {}: run `{PINO}` in the repository (as .ci/run does)",
        modules.display()
    );
    let journald = Journald::start();
    let id = identifier("pino");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();
    let req = format!("pino-{}", std::process::id());
    // pino's destination is any stream with write(): here a connected net.Socket.
    let script = r#"
        const pino = require('pino');
        const net = require('net');
        const [socket, req] = process.argv.slice(1); // node -e: no script path
        const sock = net.createConnection(socket, () => {
            const log = pino({ name: 'billing' }, sock);
            log.info({ req_id: req + '-info', http: { method: 'GET', status: 200 } }, 'request done');
            log.warn({ req_id: req + '-warn', tags: ['slow', 'db'] }, 'slow query');
            log.error({ req_id: req + '-error', err: new Error('boom') }, 'failed');
            sock.end();
        });
    "#;
    let status = Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(&daemon.socket)
        .arg(&req)
        .env("NODE_PATH", &modules)
        .status()
        .expect("node");
    assert!(status.success());

    let info = by_req_id(&journald, &format!("{req}-info"));
    assert_eq!(info.get("MESSAGE"), "request done");
    assert_eq!(info.get("PRIORITY"), "6");
    assert_eq!(info.get("HTTP_METHOD"), "GET");
    assert_eq!(info.get("HTTP_STATUS"), "200");
    // json_identifier is off by default: the name is a field, the tag is the daemon's.
    assert_eq!(info.get("NAME"), "billing");
    assert_eq!(info.get("SYSLOG_IDENTIFIER"), id);
    assert_eq!(info.str("LEVEL"), None, "the level became PRIORITY");
    assert!(info.get("TIME").parse::<u64>().is_ok(), "{info:?}");
    assert!(info.str("CLIENT_PID").is_some());
    let warn = by_req_id(&journald, &format!("{req}-warn"));
    assert_eq!(warn.get("MESSAGE"), "slow query");
    assert_eq!(warn.get("PRIORITY"), "4");
    assert_eq!(warn.get("TAGS"), r#"["slow","db"]"#);
    let error = by_req_id(&journald, &format!("{req}-error"));
    assert_eq!(error.get("MESSAGE"), "failed");
    assert_eq!(error.get("PRIORITY"), "3");
    assert_eq!(error.get("ERR_TYPE"), "Error");
    assert_eq!(error.get("ERR_MESSAGE"), "boom");
    // A multi-line value (the stack) is kept whole.
    let stack = error.get("ERR_STACK");
    assert!(stack.starts_with("Error: boom\n    at "), "{stack}");
}

#[test]
fn python_json_logger_lines_become_fields_journald() {
    let path = deps().join("python");
    assert!(
        path.join("pythonjsonlogger").exists(),
        "python-json-logger is not installed in {}: run `{PYTHON_JSON_LOGGER}` in the repository \
         (as .ci/run does)",
        path.display()
    );
    let journald = Journald::start();
    let id = identifier("pyjson");
    // The logger's name may be the tag when the configuration says so.
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .config("[protocol]\njson_identifier = true\n")
        .start();
    let req = format!("py-{}", std::process::id());
    let script = r#"
import logging, socket, sys
from pythonjsonlogger.json import JsonFormatter

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
stream = sock.makefile("w", encoding="utf-8")
handler = logging.StreamHandler(stream)
handler.setFormatter(
    JsonFormatter("%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
)
log = logging.getLogger("shop")
log.addHandler(handler)
log.setLevel(logging.DEBUG)
log.warning("low stock", extra={"req_id": sys.argv[2] + "-warning", "sku": "A-1", "cart": {"items": 3}})
log.debug("cart read", extra={"req_id": sys.argv[2] + "-debug", "user": {"id": 42}})
handler.flush()
stream.close()
sock.close()
"#;
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&daemon.socket)
        .arg(&req)
        .env("PYTHONPATH", &path)
        .status()
        .expect("python3");
    assert!(status.success());

    let warning = by_req_id(&journald, &format!("{req}-warning"));
    assert_eq!(warning.get("MESSAGE"), "low stock");
    assert_eq!(warning.get("PRIORITY"), "4");
    assert_eq!(warning.get("SKU"), "A-1");
    assert_eq!(warning.get("CART_ITEMS"), "3");
    assert_eq!(warning.get("SYSLOG_IDENTIFIER"), "shop");
    let debug = by_req_id(&journald, &format!("{req}-debug"));
    assert_eq!(debug.get("MESSAGE"), "cart read");
    assert_eq!(debug.get("PRIORITY"), "7");
    assert_eq!(debug.get("USER_ID"), "42");
}

#[test]
fn tracing_json_lines_become_fields_journald() {
    let journald = Journald::start();
    let id = identifier("tracingjson");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();
    let req = format!("tracing-{}", std::process::id());
    // A tiny client: tracing-subscriber's json layer, writing to the socket. flatten_event puts
    // the message and the event's fields at the top level, where they become fields.
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::sync::Mutex::new(stream))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(req_id = %format!("{req}-warn"), attempt = 3, "disk slow");
        tracing::error!(req_id = %format!("{req}-error"), "disk gone");
        tracing::trace!(req_id = %format!("{req}-trace"), "polling");
    });

    let warn = by_req_id(&journald, &format!("{req}-warn"));
    assert_eq!(warn.get("MESSAGE"), "disk slow");
    assert_eq!(warn.get("PRIORITY"), "4");
    assert_eq!(warn.get("ATTEMPT"), "3");
    assert_eq!(warn.get("TARGET"), "it::json");
    assert_eq!(warn.get("SYSLOG_IDENTIFIER"), id);
    let error = by_req_id(&journald, &format!("{req}-error"));
    assert_eq!(
        (error.get("MESSAGE"), error.get("PRIORITY")),
        ("disk gone".to_owned(), "3".to_owned())
    );
    let trace = by_req_id(&journald, &format!("{req}-trace"));
    assert_eq!(trace.get("PRIORITY"), "7");
}
