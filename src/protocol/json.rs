//! JSON-object lines (DESIGN §2, README "Structured lines"): a message whose text is one JSON
//! object becomes journal fields, so `journalctl REQ_ID=42` finds what pino, python-json-logger,
//! slog, zap or tracing-subscriber's json layer wrote.
//!
//! Parsing is serde_json's; this module only decides which key becomes which field. It is tried
//! only on text whose first byte (after whitespace) is `{` ([`looks_like_object`]), so plain lines
//! pay one byte comparison. Anything that is not exactly one JSON object, or nests deeper than
//! [`MAX_DEPTH`], is left to be logged as plain text, byte for byte.

use serde_json::{Map, Value};

use crate::journal::entry::push_field;

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
mod tests;
