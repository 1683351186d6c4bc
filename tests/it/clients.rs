//! Real clients (DESIGN §2): logger(1) with its RFC 3164 and RFC 5424 headers.

use std::process::Command;

use crate::support::*;

fn logger(socket: &std::path::Path, args: &[&str]) -> u32 {
    let mut child = Command::new("logger")
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
