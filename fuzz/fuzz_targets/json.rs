//! JSON-object lines (issue 17): random objects (nested, odd keys, big, duplicate keys) and
//! near-JSON (the same with a byte cut out or put in), through the framer and
//! `encode::encode` exactly as a connection runs them.
//! Invariants: every entry parses back (valid field names, exact lengths); no panic; MESSAGE is
//! never empty; the fields are bounded by `protocol.json_max_fields`; what app says about the
//! sender (CLIENT_*, SOCKET) is never overridden and nothing starts with `_`.
#![no_main]

use std::collections::HashMap;

use app::config::{self, ConfigFile, Overrides, Sources};
use app::server::encode::{self, LineState};
use app::journal::{Batch, Target};
use app::journal::entry::{Encoder, parse_native};
use app::peer::Peer;
use app::protocol::{Framer, LineBreak};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// A JSON value built from the fuzzer's bytes.
fn value(data: &mut &[u8], depth: usize) -> Value {
    let Some((&b, rest)) = data.split_first() else {
        return Value::Null;
    };
    *data = rest;
    let n = (b >> 3) as usize;
    match b % 8 {
        0 => Value::Null,
        1 => Value::Bool(b & 8 != 0),
        2 => Value::from(n as u64 * 10),
        3 => Value::from(-(n as f64) / 3.0),
        4 | 5 => Value::String(text(data, n)),
        6 if depth < 40 => Value::Array((0..n % 4).map(|_| value(data, depth + 1)).collect()),
        _ if depth < 40 => Value::Object(object(data, n % 6, depth + 1)),
        _ => Value::Null,
    }
}

fn object(data: &mut &[u8], n: usize, depth: usize) -> Map<String, Value> {
    const KEYS: [&str; 12] = [
        "msg",
        "message",
        "level",
        "severity",
        "name",
        "client_pid",
        "_PID",
        "socket",
        "a.b",
        "9x",
        "http",
        "",
    ];
    let mut m = Map::new();
    for _ in 0..n {
        let k = match data.split_first() {
            Some((&b, rest)) => {
                *data = rest;
                if b & 1 == 0 {
                    KEYS[(b as usize >> 1) % KEYS.len()].to_owned()
                } else {
                    text(data, (b >> 2) as usize)
                }
            }
            None => "k".to_owned(),
        };
        let v = value(data, depth);
        m.insert(k, v);
    }
    m
}

fn text(data: &mut &[u8], n: usize) -> String {
    let n = n.min(data.len());
    let (t, rest) = data.split_at(n);
    *data = rest;
    String::from_utf8_lossy(t).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let env = HashMap::new();
    let mut settings = config::load(&Sources {
        file: ConfigFile::Default("/nonexistent/app.toml".into()),
        env: &env,
        overrides: Overrides::default(),
        euid: 0,
    })
    .unwrap();
    settings.protocol.json_max_fields = (mode >> 2) as usize;
    settings.protocol.json_identifier = mode & 1 != 0;
    let generated = mode & 2 != 0;
    let line: Vec<u8> = if !generated {
        // Raw bytes: near-JSON as the fuzzer finds it.
        data.to_vec()
    } else {
        let n = data.len() % 40;
        let mut bytes = serde_json::to_vec(&Value::Object(object(&mut data, n, 1))).unwrap();
        // Near-JSON: one byte cut out or put in, where the rest of the input says.
        if let [at, what, ..] = *data {
            let at = at as usize % (bytes.len() + 1);
            match what % 3 {
                0 => {}
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, what),
            }
        }
        bytes
    };

    let peer = Peer::Unix {
        pid: Some(42),
        uid: 1000,
        gid: 100,
    };
    let encoder = Encoder::new(Target::Journal, &peer, 7, Some("main"));
    let mut framer = Framer::new(settings.limits.max_line_bytes.get());
    let mut state = LineState::new(&settings);
    let mut batch = Batch::default();
    let mut emit = |m: app::protocol::Message<'_>| {
        encode::encode(m, &mut state, &encoder, &settings, &mut batch);
        true
    };
    framer.feed(&line, &mut emit);
    framer.flush(LineBreak::Eof, &mut emit);

    for entry in batch.entries() {
        let fields = parse_native(entry).expect("the entry parses back");
        let all = |k: &'static str| fields.iter().filter(move |f| f.0 == k).map(|f| &f.1[..]);
        assert!(
            fields.len() <= settings.protocol.json_max_fields + 16,
            "{} fields",
            fields.len()
        );
        assert_eq!(all("MESSAGE").count(), 1);
        // A JSON object's entry always has text (its msg, or the line as sent). A raw line may
        // be nothing but a prefix (`<7>` then its terminator): an empty MESSAGE, as journald's
        // own stdout stream logs an empty line.
        if generated {
            assert!(all("MESSAGE").all(|m| !m.is_empty()));
        }
        assert_eq!(all("PRIORITY").count(), 1);
        assert_eq!(all("SYSLOG_IDENTIFIER").count(), 1);
        assert_ne!(all("SYSLOG_IDENTIFIER").next(), Some(&b"app-daemon"[..]));
        assert_eq!(all("CLIENT_PID").collect::<Vec<_>>(), [b"42"]);
        assert_eq!(all("SOCKET").collect::<Vec<_>>(), [b"main"]);
        assert!(fields.iter().all(|f| !f.0.starts_with('_')));
    }
});
