//! JSON-object lines (DESIGN §2, README "Structured lines"): a message whose text is one JSON
//! object becomes journal fields, so `journalctl REQ_ID=42` finds what pino, python-json-logger,
//! slog, zap or tracing-subscriber's json layer wrote.
//!
//! Parsing is serde_json's; this module only decides which key becomes which field. It is tried
//! only on text whose first byte (after whitespace) is `{` ([`looks_like_object`]), so plain lines
//! pay one byte comparison. Anything that is not exactly one JSON object, or nests deeper than
//! [`MAX_DEPTH`], is left to be logged as plain text, byte for byte.

use serde_json::{Map, Value};

use crate::journal::push_field;

/// Objects nested deeper than this are not mapped: the line is logged as plain text.
pub const MAX_DEPTH: usize = 32;

/// journald's longest field name (`journal_field_valid` in systemd's journal-file.c).
const MAX_NAME: usize = 64;

/// Keys whose string value is the MESSAGE, first match wins.
const MESSAGE_KEYS: [&str; 3] = ["msg", "message", "MESSAGE"];
/// Keys whose value may name the PRIORITY, first usable one wins.
const LEVEL_KEYS: [&str; 4] = ["level", "severity", "lvl", "PRIORITY"];
/// Keys whose string value may be the SYSLOG_IDENTIFIER (`protocol.json_identifier = true`).
const IDENTIFIER_KEYS: [&str; 2] = ["name", "logger"];

/// What one JSON-object line says, ready for the journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    /// The first of `msg`, `message`, `MESSAGE` that is a non-empty string; `None`: the caller
    /// logs the line as sent.
    pub message: Option<Vec<u8>>,
    /// From `level`/`severity`/`lvl`/`PRIORITY`, when the caller asked for one.
    pub priority: Option<u8>,
    /// From `name`/`logger`, when the caller asked for one.
    pub identifier: Option<Vec<u8>>,
    /// Every other key, in the native protocol's format (`NAME=value\n` or length-prefixed).
    pub fields: Vec<u8>,
}

/// What the caller wants taken from the object besides its fields.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `protocol.json_max_fields`: fields from keys at most; the rest go in `JSON_REST`.
    pub max_fields: usize,
    /// Map a level key to PRIORITY (no `<N>` prefix set it).
    pub priority: bool,
    /// Take SYSLOG_IDENTIFIER from `name`/`logger` (`protocol.json_identifier`, and no syslog
    /// tag on the line).
    pub identifier: bool,
}

/// True if `text` is worth handing to [`map`]: its first byte after JSON whitespace is `{`.
/// The plain-line cost of this feature is this check.
#[inline]
pub fn looks_like_object(text: &[u8]) -> bool {
    // The common case first: a plain line starts with something else.
    match text.first() {
        Some(b'{') => return true,
        Some(b' ' | b'\t' | b'\r' | b'\n') => {}
        _ => return false,
    }
    text.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .is_some_and(|&b| b == b'{')
}

/// Maps `text`, one JSON object with optional surrounding whitespace, to journal fields; `None`
/// if it is anything else (invalid JSON, trailing bytes, nesting deeper than [`MAX_DEPTH`]).
pub fn map(text: &[u8], options: Options) -> Option<Mapped> {
    // serde_json stops at 128 levels by itself, so neither parsing nor `depth` can overflow.
    let Value::Object(object) = serde_json::from_slice(text).ok()? else {
        return None;
    };
    if object_depth(&object) > MAX_DEPTH {
        return None;
    }

    let message_key = MESSAGE_KEYS
        .into_iter()
        .find(|k| matches!(object.get(*k), Some(Value::String(s)) if !s.is_empty()));
    let (priority_key, priority) = if options.priority {
        LEVEL_KEYS
            .into_iter()
            .find_map(|k| Some((Some(k), priority(object.get(k)?)?)))
            .map_or((None, None), |(k, p)| (k, Some(p)))
    } else {
        (None, None)
    };
    let identifier_key = if options.identifier {
        IDENTIFIER_KEYS.into_iter().find(|k| match object.get(*k) {
            Some(Value::String(s)) => usable_identifier(s),
            _ => false,
        })
    } else {
        None
    };

    let mut mapped = Mapped {
        priority,
        ..Mapped::default()
    };
    let mut count = 0;
    let mut rest = Map::new();
    for (key, value) in object {
        let k = Some(key.as_str());
        if k == message_key || k == identifier_key {
            let Value::String(s) = value else {
                unreachable!("chosen because it is a string")
            };
            if k == message_key {
                mapped.message = Some(s.into_bytes());
            } else {
                mapped.identifier = Some(s.into_bytes());
            }
            continue;
        }
        if k == priority_key {
            continue;
        }
        // One key, one field; a non-empty object, one field per key it holds.
        let needs = match &value {
            Value::Object(inner) if !inner.is_empty() => inner.len(),
            _ => 1,
        };
        // Keys stay in order: once one does not fit, it and every key after it go in JSON_REST.
        if !rest.is_empty() || count + needs > options.max_fields {
            rest.insert(key, value);
            continue;
        }
        count += needs;
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                for (inner_key, inner_value) in inner {
                    push(
                        &mut mapped.fields,
                        &format!("{key}_{inner_key}"),
                        inner_value,
                    );
                }
            }
            value => push(&mut mapped.fields, &key, value),
        }
    }
    if !rest.is_empty() {
        push_field(
            &mut mapped.fields,
            b"JSON_REST",
            Value::Object(rest).to_string().as_bytes(),
        );
    }
    Some(mapped)
}

/// Appends one field: a string as its bytes, anything else as compact JSON text.
fn push(out: &mut Vec<u8>, key: &str, value: Value) {
    let name = field_name(key);
    match value {
        Value::String(s) => push_field(out, name.as_bytes(), s.as_bytes()),
        other => push_field(out, name.as_bytes(), other.to_string().as_bytes()),
    }
}

/// The journal field name for a JSON key: upper-cased, every character outside `[A-Z0-9_]` made
/// `_`, `F_` before a leading digit or underscore (or an empty key), at most 64 bytes — the rule
/// of systemd's `journal_field_valid`. A name app sets itself, or one journald trusts, gets
/// `JSON_` in front instead of being dropped.
pub fn field_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len().min(MAX_NAME) + 2);
    if key
        .bytes()
        .next()
        .is_none_or(|b| b.is_ascii_digit() || b == b'_')
    {
        name.push_str("F_");
    }
    for c in key.chars() {
        if name.len() >= MAX_NAME {
            break;
        }
        name.push(match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_') => c,
            _ => '_',
        });
    }
    if reserved(&name) {
        name.insert_str(0, "JSON_");
    }
    name.truncate(MAX_NAME);
    name
}

/// Names a JSON key may not set: what app writes about the message and its sender, and JSON_REST.
/// (`_*`, which journald trusts, cannot occur: a leading `_` gets `F_`.)
fn reserved(name: &str) -> bool {
    matches!(
        name,
        "MESSAGE" | "PRIORITY" | "SOCKET" | "LINE_BREAK" | "JSON_REST"
    ) || ["CLIENT_", "OBJECT_", "SYSLOG_", "_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A level value as a syslog priority: a name in any case, a pino/bunyan number, or 0..=7.
fn priority(value: &Value) -> Option<u8> {
    match value {
        Value::String(s) => {
            let p = match s.to_ascii_lowercase().as_str() {
                "trace" | "debug" => 7,
                "info" => 6,
                "notice" => 5,
                "warn" | "warning" => 4,
                "error" | "err" => 3,
                "critical" | "crit" | "fatal" => 2,
                "alert" => 1,
                "emerg" | "panic" => 0,
                digit if digit.len() == 1 && (b'0'..=b'7').contains(&digit.as_bytes()[0]) => {
                    digit.as_bytes()[0] - b'0'
                }
                _ => return None,
            };
            Some(p)
        }
        Value::Number(n) => match n.as_u64()? {
            p @ 0..=7 => Some(p as u8),
            10 | 20 => Some(7),
            30 => Some(6),
            40 => Some(4),
            50 => Some(3),
            60 => Some(2),
            _ => None,
        },
        _ => None,
    }
}

/// A `name`/`logger` that may stand as SYSLOG_IDENTIFIER: text without control characters, and
/// never the daemon's own identifier (a client cannot pose as the daemon).
fn usable_identifier(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control) && s != crate::logging::DAEMON_IDENTIFIER
}

/// Levels of objects: `{}` is 1, `{"a":{}}` is 2; arrays count as levels too.
fn object_depth(object: &Map<String, Value>) -> usize {
    1 + object.values().map(depth).max().unwrap_or(0)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(o) => object_depth(o),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::parse_native;

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
}
