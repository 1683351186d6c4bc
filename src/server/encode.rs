//! One message to one journal entry, the per-message hot path shared by stream connections
//! and datagrams: the `<N>` prefix, a syslog header, a JSON object's fields, the entry.

use crate::config::{JsonMode, Settings};
use crate::journal::entry::{Encoder, Record};
use crate::journal::{Batch, Target};
use crate::protocol::syslog;
use crate::protocol::{self, LineBreak, Message, json};

/// Per-line state that outlives one message: a line cut into pieces (`line-max`, or a
/// `timeout` pause) is one line, and its priority, facility and syslog header apply to every
/// piece. The header is copied only when a line is actually cut; whole lines allocate nothing.
#[derive(Debug, Clone)]
pub struct LineState {
    priority: u8,
    facility: Option<u8>,
    /// The first piece's syslog header, when the line had one and is being cut.
    header: syslog::OwnedHeader,
    has_header: bool,
}

impl LineState {
    pub fn new(settings: &Settings) -> Self {
        LineState {
            priority: settings.journal.default_priority,
            facility: None,
            header: syslog::OwnedHeader::default(),
            has_header: false,
        }
    }
}

/// A [`LineState`] as the next process gets it at a handover: the priority, facility and
/// syslog header of a line cut into pieces apply to the pieces the next process logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineSnapshot {
    pub priority: u8,
    pub facility: Option<u8>,
    /// identifier, pid, timestamp, msgid, structured data of the line's syslog header.
    pub header: Option<[Option<Vec<u8>>; 5]>,
}

impl LineState {
    pub fn snapshot(&self) -> LineSnapshot {
        let header = self.has_header.then(|| {
            let h = self.header.get();
            [h.identifier, h.pid, h.timestamp, h.msgid, h.structured_data]
                .map(|part| part.map(<[u8]>::to_vec))
        });
        LineSnapshot {
            priority: self.priority,
            facility: self.facility,
            header,
        }
    }

    /// The state [`LineState::snapshot`] saved. A priority out of range (a foreign record) is
    /// the default priority.
    pub fn restore(snapshot: &LineSnapshot, settings: &Settings) -> Self {
        let mut line = LineState::new(settings);
        if snapshot.priority <= 7 {
            line.priority = snapshot.priority;
        }
        line.facility = snapshot.facility.filter(|f| *f <= 23);
        if let Some([identifier, pid, timestamp, msgid, structured_data]) = &snapshot.header {
            line.header.set(&syslog::Header {
                identifier: identifier.as_deref(),
                pid: pid.as_deref(),
                timestamp: timestamp.as_deref(),
                msgid: msgid.as_deref(),
                structured_data: structured_data.as_deref(),
            });
            line.has_header = true;
        }
        line
    }
}

/// The per-message hot path: the `<N>` prefix, a syslog header if there is one, a JSON object's
/// fields, the entry. Allocates nothing itself on a whole plain line (`benches/framing.rs`
/// counts); the first piece of a cut line copies its header into `line` for the pieces after it.
pub fn encode(
    m: Message<'_>,
    line: &mut LineState,
    encoder: &Encoder,
    settings: &Settings,
    batch: &mut Batch,
) {
    let mut prefixed = false;
    let (text, header) = if m.continuation {
        (m.bytes, line.has_header.then(|| line.header.get()))
    } else {
        let (prefix, text) = protocol::parse_prefix(m.bytes);
        prefixed = prefix.is_some();
        (line.priority, line.facility) = match prefix {
            Some(p) => (p.priority, p.facility),
            None => (settings.journal.default_priority, None),
        };
        line.has_header = false;
        // Only a line that starts with a PRI can carry a syslog header (logger always sends one).
        match prefix.and_then(|_| syslog::parse(text)) {
            Some((h, message)) => {
                let h = client_header(h);
                if matches!(m.line_break, LineBreak::LineMax | LineBreak::Timeout) {
                    // More pieces of this line follow: they keep its header.
                    line.header.set(&h);
                    line.has_header = true;
                }
                (message, Some(h))
            }
            None => (text, None),
        }
    };
    // A JSON object becomes fields (README "Structured lines"); only a whole line can be one:
    // the pieces of a cut line are text. Out of line, so that a plain line pays the `{` check.
    if json::looks_like_object(text)
        && !m.continuation
        && matches!(m.line_break, LineBreak::Newline | LineBreak::Eof)
        && settings.protocol.json == JsonMode::Auto
    {
        encode_json(
            text,
            m.line_break,
            prefixed,
            header,
            (&mut line.priority, line.facility),
            encoder,
            settings,
            batch,
        );
        return;
    }
    encoder.encode(
        &Record {
            message: text,
            priority: line.priority,
            facility: line.facility,
            line_break: m.line_break,
            identifier: &settings.journal.identifier,
            header,
        },
        batch,
    );
}

/// [`encode`] for a line that looks like a JSON object: its fields, or the line as text if it
/// is not one.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn encode_json(
    text: &[u8],
    line_break: LineBreak,
    prefixed: bool,
    header: Option<syslog::Header<'_>>,
    (priority, facility): (&mut u8, Option<u8>),
    encoder: &Encoder,
    settings: &Settings,
    batch: &mut Batch,
) {
    let json = map_json(text, prefixed, header, settings);
    let (mut message, mut header) = (text, header);
    let journal = encoder.target() == Target::Journal;
    if let Some(j) = &json {
        if let Some(p) = j.priority {
            *priority = p;
        }
        if let Some(id) = &j.identifier {
            header = Some(syslog::Header {
                identifier: Some(id),
                ..header.unwrap_or_default()
            });
        }
        // The stdout sink prints the line as sent: its keys are in it.
        if let Some(msg) = &j.message
            && journal
        {
            message = msg;
        }
    }
    encoder.encode(
        &Record {
            message,
            priority: *priority,
            facility,
            line_break,
            identifier: &settings.journal.identifier,
            header,
        },
        batch,
    );
    if let Some(j) = &json
        && journal
    {
        batch.extend_last(&j.fields);
    }
}

/// A JSON object's fields, or `None` if `text` is not one.
#[inline(never)]
fn map_json(
    text: &[u8],
    prefixed: bool,
    header: Option<syslog::Header<'_>>,
    settings: &Settings,
) -> Option<json::Mapped> {
    json::map(
        text,
        json::Options {
            max_fields: settings.protocol.json_max_fields,
            priority: !prefixed,
            identifier: settings.protocol.json_identifier
                && header.and_then(|h| h.identifier).is_none(),
        },
    )
}

/// A client may not take the daemon's own identifier: a tag equal to it is dropped, and the
/// entry gets `journal.identifier` (which may not be the daemon's either; see `config`).
fn client_header(mut h: syslog::Header<'_>) -> syslog::Header<'_> {
    if h.identifier == Some(crate::logging::DAEMON_IDENTIFIER.as_bytes()) {
        h.identifier = None;
    }
    h
}
