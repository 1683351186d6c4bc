//! Unit tests of `journal::entry`.

use super::*;

fn parse(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    parse_native(data).unwrap()
}

fn record(message: &[u8]) -> Record<'_> {
    Record {
        message,
        priority: 3,
        facility: Some(1),
        line_break: LineBreak::Eof,
        identifier: "app",
        header: None,
    }
}

#[test]
fn native_entries_parse_back() {
    let peer = Peer::Unix {
        pid: Some(42),
        uid: 1000,
        gid: 100,
    };
    let enc = Encoder::new(Target::Journal, &peer, 7, Some("main"));
    let mut batch = Batch::default();
    enc.encode(&record(b"two\nlines\x00\xff"), &mut batch);
    enc.encode(&record(b"plain"), &mut batch);
    let entries: Vec<_> = batch.entries().collect();
    assert_eq!(entries.len(), 2);
    let fields = parse(entries[0]);
    let get = |k: &str| {
        fields
            .iter()
            .find(|f| f.0 == k)
            .map(|f| f.1.clone())
            .unwrap()
    };
    assert_eq!(get("MESSAGE"), b"two\nlines\x00\xff");
    assert_eq!(get("PRIORITY"), b"3");
    assert_eq!(get("SYSLOG_FACILITY"), b"1");
    assert_eq!(get("SYSLOG_IDENTIFIER"), b"app");
    assert_eq!(get("LINE_BREAK"), b"eof");
    assert_eq!(get("CLIENT_PID"), b"42");
    assert_eq!(get("CLIENT_UID"), b"1000");
    assert_eq!(get("CLIENT_GID"), b"100");
    assert_eq!(get("CLIENT_CONNECTION"), b"7");
    assert_eq!(get("SOCKET"), b"main");
    assert_eq!(
        parse(entries[1])[0],
        ("MESSAGE".to_owned(), b"plain".to_vec())
    );
}

#[test]
fn tcp_peers_carry_their_address() {
    let peer = Peer::Tcp("127.0.0.1:5140".parse().unwrap());
    let enc = Encoder::new(Target::Journal, &peer, 1, None);
    let mut batch = Batch::default();
    enc.encode(&record(b"x"), &mut batch);
    let fields = parse(batch.entries().next().unwrap());
    assert!(fields.contains(&("CLIENT_ADDRESS".to_owned(), b"127.0.0.1:5140".to_vec())));
    assert!(
        !fields
            .iter()
            .any(|f| f.0 == "CLIENT_UID" || f.0 == "SOCKET")
    );
}

#[test]
fn stdout_lines_show_priority_and_client() {
    let peer = Peer::Unix {
        pid: Some(42),
        uid: 1000,
        gid: 100,
    };
    let enc = Encoder::new(Target::Stdout, &peer, 3, None);
    let mut batch = Batch::default();
    enc.encode(&record(b"a\nb"), &mut batch);
    let line = String::from_utf8(batch.data.clone()).unwrap();
    assert!(
        line.ends_with(" app[pid=42 uid=1000 conn=3] <3> a\\nb [eof]\n"),
        "{line}"
    );
    assert_eq!(line.matches('\n').count(), 1);
}

/// Issue 18: the fields a connection takes to the next process come back as they were; a
/// damaged copy is left out rather than let into entries.
#[test]
fn added_fields_carry_over_whole_or_not_at_all() {
    let peer = Peer::Unix {
        pid: Some(7),
        uid: 1,
        gid: 2,
    };
    let mut a = Encoder::new(Target::Journal, &peer, 3, None);
    let binary: &[u8] = b"a\nb";
    a.add_fields([
        (&b"CLIENT_COMM"[..], &b"sh"[..]),
        (&b"CLIENT_UNIT"[..], binary),
    ]);
    let carried = a.added_fields().to_vec();
    let mut b = Encoder::new(Target::Journal, &peer, 3, None);
    b.add_encoded(&carried);
    assert_eq!(b.added_fields(), carried);
    for damaged in [
        &carried[..carried.len() - 1],
        b"lower=x\n",
        b"NO_END=x",
        b"X\n\x09\0\0\0\0\0\0\0ab\n",
    ] {
        let mut c = Encoder::new(Target::Journal, &peer, 3, None);
        c.add_encoded(damaged);
        assert!(c.added_fields().is_empty(), "{damaged:?}");
    }
}

/// Issue 16 follow-up: the attribution fields of one client are shared by its connections, not
/// copied into each, and come out in every entry after the connection's own fields.
#[test]
fn shared_fields_are_shared_and_encoded() {
    let peer = Peer::Unix {
        pid: Some(7),
        uid: 1,
        gid: 2,
    };
    let fields = encode_fields([(&b"CLIENT_COMM"[..], &b"sh"[..])]);
    let mut a = Encoder::new(Target::Journal, &peer, 3, None);
    let mut b = Encoder::new(Target::Journal, &peer, 4, None);
    a.add_shared(fields.clone());
    b.add_shared(fields.clone());
    assert!(std::ptr::eq(a.added_fields(), b.added_fields()));
    assert_eq!(a.added_fields(), b"CLIENT_COMM=sh\n");
    let mut batch = Batch::default();
    a.encode(&record(b"hi"), &mut batch);
    let entry = parse_native(batch.entries().next().unwrap()).unwrap();
    let names: Vec<&str> = entry.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"CLIENT_COMM"));
    assert_eq!(
        names.iter().filter(|&&n| n == "CLIENT_CONNECTION").count(),
        1
    );
    // The stdout line carries no journal fields.
    let mut s = Encoder::new(Target::Stdout, &peer, 3, None);
    s.add_shared(fields);
    assert!(s.added_fields().is_empty());
}
