//! Real clients (DESIGN §2): logger(1) with its RFC 3164 and RFC 5424 headers.

use std::process::Command;

use crate::support::*;

fn logger(socket: &std::path::Path, args: &[&str]) -> u32 {
    let mut child = Command::new("logger")
        .die_with_test()
        .arg("-u")
        .arg(socket)
        .arg("--socket-errors=on")
        .args(args)
        .spawn()
        .expect("logger (util-linux)");
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    pid
}

#[test]
fn logger_headers_become_syslog_fields_journald() {
    let journald = Journald::start();
    let id = identifier("logger");
    let daemon = DaemonBuilder::new()
        .journald(&journald)
        .identifier(&id)
        .start();

    logger(&daemon.socket, &["-t", "plaintag", "hello"]);
    let pid = logger(
        &daemon.socket,
        &["-t", "mytag", "-i", "-p", "local3.err", "x"],
    );
    logger(
        &daemon.socket,
        &[
            "--rfc5424",
            "-t",
            "tag5424",
            "--msgid",
            "ID42",
            "--sd-id",
            "zoo@123",
            "--sd-param",
            "tiger=\"hungry\"",
            "y",
        ],
    );
    // RFC 6587 octet counting, both formats, several messages on one connection, one of them
    // holding a newline (octet counting keeps it one entry).
    let counted = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new("logger")
            .die_with_test()
            .arg("-u")
            .arg(&daemon.socket)
            .args(["--socket-errors=on", "--octet-count"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
        assert!(child.wait().unwrap().success());
    };
    counted(&["-t", "oc3164"], b"first\nsecond\n");
    counted(&["--rfc5424", "-t", "oc5424"], b"third\n");
    let body = "<13>1 - - oc5424 - - - multi\nline";
    send(&daemon.socket, format!("{} {body}", body.len()).as_bytes());
    // Starts like a header, is not one: kept whole after its PRI.
    send(&daemon.socket, b"<13>Nov 25 21:57:27 no colon here\n");

    let all = |tag: &str| journald.query(&[&format!("SYSLOG_IDENTIFIER={tag}")]);
    let wait = |tag: &str| {
        wait_until(std::time::Duration::from_secs(10), tag, || {
            let e = all(tag);
            (!e.is_empty()).then_some(e)
        })
    };
    let plain = &wait("plaintag")[0];
    assert_eq!(plain.get("MESSAGE"), "hello");
    assert_eq!(plain.get("PRIORITY"), "5");
    assert_eq!(plain.get("SYSLOG_FACILITY"), "1");
    assert!(
        plain.str("SYSLOG_TIMESTAMP").is_some_and(|t| t.len() == 15),
        "{plain:?}"
    );
    assert_eq!(plain.str("SYSLOG_PID"), None);

    let tagged = &wait("mytag")[0];
    assert_eq!(tagged.get("MESSAGE"), "x");
    assert_eq!(tagged.get("SYSLOG_PID"), pid.to_string());
    assert_eq!(tagged.get("PRIORITY"), "3");
    assert_eq!(tagged.get("SYSLOG_FACILITY"), "19");

    let rfc5424 = &wait("tag5424")[0];
    assert_eq!(rfc5424.get("MESSAGE"), "y");
    assert_eq!(rfc5424.get("SYSLOG_MSGID"), "ID42");
    assert!(
        rfc5424
            .get("SYSLOG_STRUCTURED_DATA")
            .contains("[zoo@123 tiger=\"hungry\"]"),
        "{rfc5424:?}"
    );
    assert!(
        rfc5424.get("SYSLOG_TIMESTAMP").starts_with("20"),
        "{rfc5424:?}"
    );

    let kept = &wait(&id)[0];
    assert_eq!(kept.get("MESSAGE"), "Nov 25 21:57:27 no colon here");
    assert_eq!(kept.get("PRIORITY"), "5");
    let oc3164: Vec<String> = wait("oc3164").iter().map(|e| e.get("MESSAGE")).collect();
    assert_eq!(oc3164, ["first", "second"]);
    let oc5424 = wait_until(std::time::Duration::from_secs(10), "oc5424", || {
        let e = all("oc5424");
        (e.len() == 2).then_some(e)
    });
    assert_eq!(oc5424[0].get("MESSAGE"), "third");
    assert_eq!(
        oc5424[1].get("MESSAGE"),
        "multi\nline",
        "one entry, newline and all"
    );

    for tag in ["plaintag", "mytag", "tag5424", id.as_str()] {
        assert_eq!(all(tag).len(), 1, "{tag}: one entry");
    }
}

/// The fenced code blocks of README's "Clients" section, as (language, code).
fn readme_snippets() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("## Clients")
        .expect("README has a Clients section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut snippets = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) {
            let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            snippets.push((lang.to_owned(), code.join("\n") + "\n"));
        }
    }
    snippets
}

#[test]
fn every_readme_client_snippet_works() {
    let mut daemon = DaemonBuilder::new().stdout_sink().start();
    let socket = daemon.socket.display().to_string();
    let dir = temp_dir();
    let app_dir = std::path::Path::new(APP)
        .parent()
        .unwrap()
        .display()
        .to_string();
    // Our own PATH too: it is where rustc and node are.
    let path = format!("{app_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let run = |cmd: &mut Command, what: &str| {
        // `app send` without --socket finds the socket through the configuration.
        let out = cmd
            .env("PATH", &path)
            .env("APP_SOCKET__PATH", &socket)
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let snippets = readme_snippets();
    let langs: Vec<&str> = snippets.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(langs, ["sh", "python", "js", "rust", "c"]);
    for (lang, code) in &snippets {
        let code = code.replace("/run/app.sock", &socket);
        let file = dir.path().join(format!("client.{lang}"));
        std::fs::write(&file, &code).unwrap();
        let bin = dir.path().join(format!("client-{lang}"));
        match lang.as_str() {
            "sh" => {
                for line in code.lines() {
                    run(Command::new("sh").args(["-c", line]), line);
                }
            }
            "python" => run(Command::new("python3").arg(&file), "python3"),
            "js" => run(Command::new("node").arg(&file), "node"),
            "rust" => {
                run(
                    Command::new("rustc").arg("-o").arg(&bin).arg(&file),
                    "rustc",
                );
                run(&mut Command::new(&bin), "the Rust client");
            }
            "c" => {
                run(
                    Command::new("cc")
                        .args(["-Wall", "-Werror", "-o"])
                        .arg(&bin)
                        .arg(&file),
                    "cc",
                );
                run(&mut Command::new(&bin), "the C client");
            }
            other => panic!("no runner for {other}"),
        }
    }
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    for (expected, _) in [
        ("> hello from socat", ()),
        ("> hello from nc", ()),
        ("myscript[", ()),
        ("<4> hello from app send", ()),
        ("<4> hello from python", ()),
        ("> hello from node", ()),
        ("> hello from rust", ()),
        ("> hello from c", ()),
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("myscript[") && l.ends_with("> hello from logger")),
        "{out}"
    );
}

/// The classic Node.js client: `client.write(text)` once a second, no newline.
fn node_writer(socket: &std::path::Path, script: &str) {
    let out = Command::new("node")
        .args(["-e", script, socket.to_str().unwrap()])
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EVERY_SECOND: &str = r#"
const net = require("net");
const client = net.createConnection(process.argv[1], () => {
  let n = 0;
  const timer = setInterval(() => {
    client.write("text");
    if (++n === 5) { clearInterval(timer); setTimeout(() => client.end(), 1000); }
  }, 1000);
});
"#;

#[test]
fn newline_less_writers_get_one_entry_per_write() {
    let mut daemon = DaemonBuilder::new().stdout_sink().start();
    node_writer(&daemon.socket, EVERY_SECOND);
    // Half a line, a 200 ms pause, then the rest with its newline: one entry.
    node_writer(
        &daemon.socket,
        r#"const c = require("net").createConnection(process.argv[1], () => {
             c.write("half a line, ");
             setTimeout(() => c.end("then the rest\n"), 200);
           });"#,
    );
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    let writes: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("> text [timeout]"))
        .collect();
    assert_eq!(writes.len(), 5, "{out}");
    assert!(
        out.lines()
            .any(|l| l.ends_with("> half a line, then the rest")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 6, "{out}");
}

#[test]
fn flush_after_zero_waits_for_the_close() {
    let mut daemon = DaemonBuilder::new()
        .stdout_sink()
        .env("APP_PROTOCOL__FLUSH_AFTER", "0s")
        .start();
    node_writer(&daemon.socket, EVERY_SECOND);
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.trim_end().ends_with("> texttexttexttexttext [eof]"),
        "{out}"
    );
}
