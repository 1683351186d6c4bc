//! Unit tests of `protocol::json`.

use super::*;
use crate::journal::entry::parse_native;

const OPTIONS: Options = Options {
    max_fields: 64,
    priority: true,
    identifier: false,
};

/// The fields of `text` as (name, value) text pairs, message and priority first.
fn fields(text: &str, options: Options) -> Option<Vec<(String, String)>> {
    let m = map(text.as_bytes(), options)?;
    let mut out = vec![];
    if let Some(msg) = m.message {
        out.push(("MESSAGE".into(), String::from_utf8(msg).unwrap()));
    }
    if let Some(p) = m.priority {
        out.push(("PRIORITY".into(), p.to_string()));
    }
    if let Some(id) = m.identifier {
        out.push(("SYSLOG_IDENTIFIER".into(), String::from_utf8(id).unwrap()));
    }
    for (k, v) in parse_native(&m.fields).expect("fields parse back") {
        out.push((k, String::from_utf8(v).unwrap()));
    }
    Some(out)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_pino_line_becomes_fields() {
    let line = r#"{"level":30,"time":1764110316123,"pid":4242,"hostname":"h","reqId":"r-1","http":{"method":"GET","status":500},"tags":["a","b"],"ok":true,"none":null,"msg":"request done"}"#;
    assert_eq!(
        fields(line, OPTIONS).unwrap(),
        pairs(&[
            ("MESSAGE", "request done"),
            ("PRIORITY", "6"),
            ("TIME", "1764110316123"),
            ("PID", "4242"),
            ("HOSTNAME", "h"),
            ("REQID", "r-1"),
            ("HTTP_METHOD", "GET"),
            ("HTTP_STATUS", "500"),
            ("TAGS", r#"["a","b"]"#),
            ("OK", "true"),
            ("NONE", "null"),
        ])
    );
}

#[test]
fn levels_map_to_priorities() {
    let cases: &[(&str, u8)] = &[
        (r#""trace""#, 7),
        (r#""DEBUG""#, 7),
        (r#""Info""#, 6),
        (r#""notice""#, 5),
        (r#""WARN""#, 4),
        (r#""warning""#, 4),
        (r#""error""#, 3),
        (r#""err""#, 3),
        (r#""CRITICAL""#, 2),
        (r#""crit""#, 2),
        (r#""fatal""#, 2),
        (r#""alert""#, 1),
        (r#""emerg""#, 0),
        (r#""panic""#, 0),
        ("10", 7),
        ("20", 7),
        ("30", 6),
        ("40", 4),
        ("50", 3),
        ("60", 2),
        ("3", 3),
        (r#""5""#, 5),
    ];
    for (level, want) in cases {
        for key in LEVEL_KEYS {
            let line = format!(r#"{{"{key}":{level},"msg":"m"}}"#);
            let m = map(line.as_bytes(), OPTIONS).unwrap();
            assert_eq!(m.priority, Some(*want), "{line}");
            assert!(m.fields.is_empty(), "{line}: the level key is used up");
        }
    }
    // Not a level: kept as a field, and the priority is left to the caller.
    let m = fields(r#"{"level":"verbose","msg":"m"}"#, OPTIONS).unwrap();
    assert_eq!(m, pairs(&[("MESSAGE", "m"), ("LEVEL", "verbose")]));
    // A <N> prefix set it: the level is a field.
    let no_priority = Options {
        priority: false,
        ..OPTIONS
    };
    let m = fields(r#"{"level":"warn","msg":"m"}"#, no_priority).unwrap();
    assert_eq!(m, pairs(&[("MESSAGE", "m"), ("LEVEL", "warn")]));
    // The first usable key wins.
    let m = map(br#"{"level":"x","severity":"err","lvl":"info"}"#, OPTIONS).unwrap();
    assert_eq!(m.priority, Some(3));
}

#[test]
fn the_message_is_the_first_string_of_msg_message_message() {
    let m = fields(r#"{"message":"b","msg":"a","MESSAGE":"c"}"#, OPTIONS).unwrap();
    assert_eq!(
        m,
        pairs(&[
            ("MESSAGE", "a"),
            ("JSON_MESSAGE", "b"),
            ("JSON_MESSAGE", "c")
        ])
    );
    let m = fields(r#"{"msg":42,"message":"text"}"#, OPTIONS).unwrap();
    assert_eq!(m, pairs(&[("MESSAGE", "text"), ("MSG", "42")]));
    // None: the caller logs the line as sent.
    let m = map(br#"{"msg":"","a":1}"#, OPTIONS).unwrap();
    assert_eq!(m.message, None);
}

#[test]
fn keys_become_valid_field_names() {
    for (key, name) in [
        ("user.id", "USER_ID"),
        ("user-agent", "USER_AGENT"),
        ("Grüße", "GR__E"),
        ("9lives", "F_9LIVES"),
        ("_SYSTEMD_UNIT", "F__SYSTEMD_UNIT"),
        ("", "F_"),
        ("client_pid", "JSON_CLIENT_PID"),
        ("CLIENT_UID", "JSON_CLIENT_UID"),
        ("object_systemd_unit", "JSON_OBJECT_SYSTEMD_UNIT"),
        ("socket", "JSON_SOCKET"),
        ("line_break", "JSON_LINE_BREAK"),
        ("syslog_identifier", "JSON_SYSLOG_IDENTIFIER"),
        ("priority", "JSON_PRIORITY"),
        ("json_rest", "JSON_JSON_REST"),
        ("code_line", "CODE_LINE"),
    ] {
        assert_eq!(field_name(key), name, "{key:?}");
    }
    let long = "k".repeat(100);
    assert_eq!(field_name(&long), "K".repeat(64));
    let long_reserved = format!("client_{long}");
    let n = field_name(&long_reserved);
    assert_eq!(n.len(), 64);
    assert!(n.starts_with("JSON_CLIENT_K"), "{n}");
}

#[test]
fn nesting_is_flattened_one_level() {
    let m = fields(
        r#"{"http":{"status":500,"req":{"h":{"a":1}}},"empty":{},"client":{"pid":1}}"#,
        OPTIONS,
    )
    .unwrap();
    assert_eq!(
        m,
        pairs(&[
            ("HTTP_STATUS", "500"),
            ("HTTP_REQ", r#"{"h":{"a":1}}"#),
            ("EMPTY", "{}"),
            ("JSON_CLIENT_PID", "1"),
        ])
    );
}

#[test]
fn not_one_object_is_not_mapped() {
    for text in [
        "",
        "{",
        "{}}",
        r#"{"a":1} x"#,
        r#"{"a":1}{"b":2}"#,
        "[1,2]",
        r#""text""#,
        "{a:1}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\u{1}\"}",
    ] {
        assert_eq!(map(text.as_bytes(), OPTIONS), None, "{text:?}");
    }
    assert_eq!(map(b"{\"a\":\"\xff\"}", OPTIONS), None);
    // Surrounding whitespace is fine.
    assert!(map(b" \t{\"a\":1}\r\n ", OPTIONS).is_some());
}

#[test]
fn deep_nesting_is_plain_text() {
    let nest = |n: usize| format!("{}{}", r#"{"a":"#.repeat(n - 1) + "{}", "}".repeat(n - 1));
    assert!(map(nest(32).as_bytes(), OPTIONS).is_some());
    assert_eq!(map(nest(33).as_bytes(), OPTIONS), None);
    assert_eq!(map(nest(200).as_bytes(), OPTIONS), None);
    let arrays = format!(r#"{{"a":{}{}}}"#, "[".repeat(32), "]".repeat(32));
    assert_eq!(map(arrays.as_bytes(), OPTIONS), None);
}

#[test]
fn the_last_duplicate_wins() {
    let m = fields(r#"{"a":1,"b":2,"a":3}"#, OPTIONS).unwrap();
    assert_eq!(m, pairs(&[("A", "3"), ("B", "2")]));
}

#[test]
fn fields_past_the_bound_go_in_json_rest() {
    let options = Options {
        max_fields: 3,
        ..OPTIONS
    };
    let m = fields(
        r#"{"a":1,"msg":"m","b":{"x":1,"y":2},"c":"3","d":[4]}"#,
        options,
    )
    .unwrap();
    assert_eq!(
        m,
        pairs(&[
            ("MESSAGE", "m"),
            ("A", "1"),
            ("B_X", "1"),
            ("B_Y", "2"),
            ("JSON_REST", r#"{"c":"3","d":[4]}"#),
        ])
    );
    let options = Options {
        max_fields: 0,
        ..OPTIONS
    };
    let m = fields(r#"{"a":1,"b":{"x":1}}"#, options).unwrap();
    assert_eq!(m, pairs(&[("JSON_REST", r#"{"a":1,"b":{"x":1}}"#)]));
}

#[test]
fn the_identifier_comes_from_name_only_when_asked() {
    let line = r#"{"name":"billing","logger":"x","msg":"m"}"#;
    assert_eq!(
        fields(line, OPTIONS).unwrap(),
        pairs(&[("MESSAGE", "m"), ("NAME", "billing"), ("LOGGER", "x")])
    );
    let asked = Options {
        identifier: true,
        ..OPTIONS
    };
    assert_eq!(
        fields(line, asked).unwrap(),
        pairs(&[
            ("MESSAGE", "m"),
            ("SYSLOG_IDENTIFIER", "billing"),
            ("LOGGER", "x")
        ])
    );
    // Never the daemon's own name: kept as a field, and logger is next.
    let posing = r#"{"name":"app-daemon","logger":"x","msg":"m"}"#;
    assert_eq!(
        fields(posing, asked).unwrap(),
        pairs(&[
            ("MESSAGE", "m"),
            ("SYSLOG_IDENTIFIER", "x"),
            ("NAME", "app-daemon")
        ])
    );
}

#[test]
fn values_with_newlines_and_nul_survive() {
    let m = fields(r#"{"stack":"a\nb\u0000c","msg":"x\ny"}"#, OPTIONS).unwrap();
    assert_eq!(m, pairs(&[("MESSAGE", "x\ny"), ("STACK", "a\nb\0c")]));
}

#[test]
fn only_text_starting_with_a_brace_is_tried() {
    assert!(looks_like_object(b"{"));
    assert!(looks_like_object(b" \t\r\n{\"a\""));
    for text in [&b""[..], b"plain {", b" x{", b"[{}]", b"\x0b{"] {
        assert!(!looks_like_object(text), "{text:?}");
    }
}
