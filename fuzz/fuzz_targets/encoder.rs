//! The journal-entry encoder: whatever the message and identifier bytes, the entry parses back
//! (valid field names, exact lengths) to exactly the fields that went in.
#![no_main]

use app::journal::{Batch, Target};
use app::journal::entry::{Encoder, Record, parse_native};
use app::peer::Peer;
use app::protocol::LineBreak;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let priority = data[0] % 8;
    let facility = (data[1] % 3 == 0).then_some(data[1] % 24);
    let line_break = [
        LineBreak::Newline,
        LineBreak::LineMax,
        LineBreak::Eof,
        LineBreak::Timeout,
    ][data[2] as usize % 4];
    let split = 3 + (data[3] as usize).min(data.len() - 3);
    let identifier = String::from_utf8_lossy(&data[3..split]).replace(['\n', '\0'], "");
    let identifier = if identifier.is_empty() {
        "app".to_owned()
    } else {
        identifier
    };
    let message = &data[split.min(data.len())..];

    let peer = Peer::Unix {
        pid: Some(42),
        uid: 1000,
        gid: 100,
    };
    let encoder = Encoder::new(Target::Journal, &peer, 7, Some("main"));
    let mut batch = Batch::default();
    encoder.encode(
        &Record {
            message,
            priority,
            facility,
            line_break,
            identifier: &identifier,
            header: None,
        },
        &mut batch,
    );
    let entry = batch.entries().next().unwrap();
    let fields = parse_native(entry).expect("the entry parses back");
    let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.as_slice());
    assert_eq!(get("MESSAGE"), Some(message));
    assert_eq!(get("PRIORITY"), Some([b'0' + priority].as_slice()));
    assert_eq!(
        get("SYSLOG_FACILITY").map(|v| v.to_vec()),
        facility.map(|f| f.to_string().into_bytes())
    );
    assert_eq!(get("SYSLOG_IDENTIFIER"), Some(identifier.as_bytes()));
    assert_eq!(get("LINE_BREAK"), line_break.field().map(str::as_bytes));
    assert_eq!(get("CLIENT_UID"), Some(b"1000".as_slice()));
});
