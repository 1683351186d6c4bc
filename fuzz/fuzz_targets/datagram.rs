//! One datagram (issue 15): any bytes, any limit, cut into messages and encoded as the datagram
//! socket does. Invariants: no empty or oversized piece; the pieces put together are the datagram
//! less its terminator (one NUL, then one `\n`, then one `\r`); only the first is not a
//! continuation; encoding (prefix, syslog header) never panics.
#![no_main]

use std::collections::HashMap;

use app::config::{self, ConfigFile, Overrides, Sources};
use app::server::encode::{self, LineState};
use app::journal::{Batch, Target};
use app::journal::entry::Encoder;
use app::peer::Peer;
use app::protocol::datagram_pieces;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, datagram)) = data.split_first() else {
        return;
    };
    let max = 1 + m as usize % 64;
    let mut pieces: Vec<(Vec<u8>, bool)> = Vec::new();
    datagram_pieces(datagram, max, &mut |msg| {
        pieces.push((msg.bytes.to_vec(), msg.continuation));
        true
    });
    let body = datagram.strip_suffix(b"\0").unwrap_or(datagram);
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let joined: Vec<u8> = pieces.iter().flat_map(|p| p.0.iter().copied()).collect();
    assert_eq!(joined, body);
    for (i, (bytes, continuation)) in pieces.iter().enumerate() {
        assert!(!bytes.is_empty() && bytes.len() <= max);
        assert_eq!(*continuation, i > 0);
    }

    let mut settings = config::load(&Sources {
        file: ConfigFile::Default("/nonexistent/app.toml".into()),
        env: &HashMap::new(),
        overrides: Overrides::default(),
        euid: 0,
    })
    .expect("default settings");
    settings.limits.max_line_bytes = std::num::NonZeroUsize::new(max).unwrap();
    let peer = Peer::Unix {
        pid: Some(1),
        uid: 0,
        gid: 0,
    };
    let encoder = Encoder::new(Target::Journal, &peer, 1, None);
    let mut line = LineState::new(&settings);
    let mut batch = Batch::default();
    datagram_pieces(datagram, max, &mut |msg| {
        encode::encode(msg, &mut line, &encoder, &settings, &mut batch);
        true
    });
    assert_eq!(batch.len(), pieces.len());
});
