//! Unit tests of `server::connection`.

use super::*;
use crate::config::JsonMode;
use crate::config::{self, ConfigFile, Overrides, Sources};
use crate::journal::Target;
use crate::journal::entry::parse_native;
use std::collections::HashMap;

fn settings(max_line: usize) -> Settings {
    let env = HashMap::new();
    let mut s = config::load(&Sources {
        file: ConfigFile::Default("/nonexistent/app.toml".into()),
        env: &env,
        overrides: Overrides::default(),
        euid: 0,
    })
    .unwrap();
    s.limits.max_line_bytes = std::num::NonZeroUsize::new(max_line).unwrap();
    s
}

/// Frames and encodes `reads` as a connection does, with a timeout flush after each read
/// listed in `pauses`; returns each entry's fields.
fn entries(max_line: usize, reads: &[&[u8]], pauses: &[usize]) -> Vec<HashMap<String, Vec<u8>>> {
    entries_in(&settings(max_line), reads, pauses)
}

/// [`entries`] with `settings`.
fn entries_in(
    settings: &Settings,
    reads: &[&[u8]],
    pauses: &[usize],
) -> Vec<HashMap<String, Vec<u8>>> {
    let max_line = settings.limits.max_line_bytes.get();
    let peer = Peer::Unix {
        pid: Some(4242),
        uid: 1000,
        gid: 1000,
    };
    let encoder = Encoder::new(Target::Journal, &peer, 1, None);
    let mut framer = Framer::new(max_line);
    let mut line = LineState::new(settings);
    let mut batch = Batch::default();
    for (i, read) in reads.iter().enumerate() {
        framer.feed(read, &mut |m| {
            encode(m, &mut line, &encoder, settings, &mut batch);
            true
        });
        if pauses.contains(&i) {
            framer.flush(LineBreak::Timeout, &mut |m| {
                encode(m, &mut line, &encoder, settings, &mut batch);
                true
            });
        }
    }
    framer.flush(LineBreak::Eof, &mut |m| {
        encode(m, &mut line, &encoder, settings, &mut batch);
        true
    });
    batch
        .entries()
        .map(|e| parse_native(e).unwrap().into_iter().collect())
        .collect()
}

fn field<'a>(e: &'a HashMap<String, Vec<u8>>, k: &str) -> &'a str {
    e.get(k).map_or("", |v| std::str::from_utf8(v).unwrap())
}

#[test]
fn a_timeout_tail_keeps_the_lines_tag_and_priority() {
    let got = entries(
        1000,
        &[
            b"<3>Nov 25 21:57:27 mytag[42]: first part",
            b" second part\n<14>x\n",
        ],
        &[0],
    );
    let summary: Vec<_> = got
        .iter()
        .map(|e| {
            (
                field(e, "SYSLOG_IDENTIFIER"),
                field(e, "PRIORITY"),
                field(e, "SYSLOG_PID"),
                field(e, "MESSAGE"),
                field(e, "LINE_BREAK"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("mytag", "3", "42", "first part", "timeout"),
            ("mytag", "3", "42", " second part", ""),
            // The next line starts afresh.
            ("app", "6", "", "x", ""),
        ]
    );
}

#[test]
fn a_client_cannot_take_the_daemons_identifier() {
    let got = entries(
        1000,
        &[b"<13>Nov 25 21:57:27 app-daemon[7]: posing\n<13>Nov 25 21:57:27 mytag: ok\n"],
        &[],
    );
    let tags: Vec<_> = got.iter().map(|e| field(e, "SYSLOG_IDENTIFIER")).collect();
    assert_eq!(tags, ["app", "mytag"]);
    assert_eq!(field(&got[0], "SYSLOG_PID"), "7");
    assert_eq!(field(&got[0], "MESSAGE"), "posing");
}

#[test]
fn every_line_max_piece_keeps_the_header() {
    let mut line = b"<13>1 2026-11-25T21:57:27Z host mytag 42 ID7 - ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 1000));
    line.push(b'\n');
    // One read, or a read per byte: the same.
    for chunk in [line.len(), 1] {
        let reads: Vec<&[u8]> = line.chunks(chunk).collect();
        let got = entries(100, &reads, &[]);
        assert!(got.len() > 10, "{}", got.len());
        for e in &got {
            assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "mytag");
            assert_eq!(field(e, "SYSLOG_PID"), "42");
            assert_eq!(field(e, "SYSLOG_MSGID"), "ID7");
            assert_eq!(field(e, "PRIORITY"), "5");
            assert_eq!(field(e, "SYSLOG_FACILITY"), "1");
        }
    }
}

/// Issue 17: a JSON-object line becomes fields, after a `<N>` prefix or a syslog header too.
#[test]
fn a_json_line_becomes_fields() {
    let got = entries(
            1000,
            &[concat!(
                r#"{"level":50,"msg":"boom","reqId":"r1","http":{"status":500},"client_pid":1,"socket":"x"}"#,
                "\n",
                r#"<5>{"level":"debug","msg":"prefix wins"}"#,
                "\n",
                r#"<13>Nov 25 21:57:27 mytag[7]: {"msg":"after a header","name":"n"}"#,
                "\n",
                r#"{"no_msg":true}"#,
                "\n",
                r#"{"broken":"#,
                "\n",
            )
            .as_bytes()],
            &[],
        );
    assert_eq!(got.len(), 5);
    let e = &got[0];
    assert_eq!(field(e, "MESSAGE"), "boom");
    assert_eq!(field(e, "PRIORITY"), "3");
    assert_eq!(field(e, "REQID"), "r1");
    assert_eq!(field(e, "HTTP_STATUS"), "500");
    // What app says about the sender cannot be overridden; the key is kept, renamed.
    assert_eq!(field(e, "CLIENT_PID"), "4242");
    assert_eq!(field(e, "JSON_CLIENT_PID"), "1");
    assert_eq!(field(e, "JSON_SOCKET"), "x");
    assert_eq!(field(e, "SOCKET"), "");
    assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "app");
    assert_eq!(field(e, "LEVEL"), "");
    let e = &got[1];
    assert_eq!(
        (field(e, "MESSAGE"), field(e, "PRIORITY"), field(e, "LEVEL")),
        ("prefix wins", "5", "debug")
    );
    let e = &got[2];
    assert_eq!(
        (
            field(e, "MESSAGE"),
            field(e, "SYSLOG_IDENTIFIER"),
            field(e, "SYSLOG_PID"),
            field(e, "NAME")
        ),
        ("after a header", "mytag", "7", "n")
    );
    // No message key: the line as sent; not JSON: plain text.
    assert_eq!(field(&got[3], "MESSAGE"), r#"{"no_msg":true}"#);
    assert_eq!(field(&got[3], "NO_MSG"), "true");
    assert_eq!(field(&got[4], "MESSAGE"), r#"{"broken":"#);
    assert_eq!(got[4].len(), got[3].len() - 1, "{:?}", got[4]);
}

#[test]
fn json_identifier_and_json_off() {
    let line: &[u8] = b"{\"name\":\"billing\",\"msg\":\"m\",\"level\":\"warn\"}\n\
            {\"name\":\"app-daemon\",\"msg\":\"posing\"}\n";
    let mut s = settings(1000);
    s.protocol.json_identifier = true;
    let got = entries_in(&s, &[line], &[]);
    assert_eq!(field(&got[0], "SYSLOG_IDENTIFIER"), "billing");
    assert_eq!(field(&got[0], "NAME"), "");
    assert_eq!(field(&got[1], "SYSLOG_IDENTIFIER"), "app");
    assert_eq!(field(&got[1], "NAME"), "app-daemon");
    s.protocol.json = JsonMode::Off;
    let got = entries_in(&s, &[line], &[]);
    assert_eq!(
        field(&got[0], "MESSAGE"),
        r#"{"name":"billing","msg":"m","level":"warn"}"#
    );
    assert_eq!(field(&got[0], "PRIORITY"), "6");
    assert_eq!(field(&got[0], "NAME"), "");
}

/// A JSON line cut at line-max or by a timeout is text: its pieces are not objects.
#[test]
fn a_cut_json_line_is_text() {
    let line = br#"{"msg":"a long one","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let mut input = line.to_vec();
    input.push(b'\n');
    let got = entries(40, &[&input], &[]);
    assert!(got.len() > 1);
    let joined: Vec<u8> = got.iter().flat_map(|e| e["MESSAGE"].clone()).collect();
    assert_eq!(joined, line);
    assert!(got.iter().all(|e| !e.contains_key("PAD")));
    // The same line, paused after its closing brace and then ended: the first piece is cut
    // by the timeout, so it is text too.
    let got = entries(1000, &[line, b"\n"], &[0]);
    assert_eq!(field(&got[0], "MESSAGE").as_bytes(), line);
    assert_eq!(field(&got[0], "LINE_BREAK"), "timeout");
    assert!(!got[0].contains_key("PAD"));
}
