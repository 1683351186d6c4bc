//! One datagram, one message (DESIGN §2): what a datagram socket client (`logger -u`, nginx,
//! HAProxy, Python's `SysLogHandler` with `SOCK_DGRAM`) sends is a whole record, never a stream.

use super::framer::{LineBreak, Message};

/// Cuts one datagram into the messages it makes: one, or pieces of at most `max_line` bytes
/// (`LINE_BREAK=line-max`, as a long line on a stream is cut). One trailing NUL, then one
/// trailing `\n` (and a `\r` before it) are the record's terminator and dropped; newlines
/// inside are kept, as in an octet-counted frame. An empty datagram makes no message.
/// Returns what `emit` last said.
pub fn datagram_pieces(
    datagram: &[u8],
    max_line: usize,
    emit: &mut dyn FnMut(Message<'_>) -> bool,
) -> bool {
    let max_line = max_line.max(1);
    let body = datagram.strip_suffix(b"\0").unwrap_or(datagram);
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let mut go_on = true;
    let count = body.len().div_ceil(max_line);
    for (i, piece) in body.chunks(max_line).enumerate() {
        go_on = emit(Message {
            bytes: piece,
            line_break: if i + 1 < count {
                LineBreak::LineMax
            } else {
                LineBreak::Newline
            },
            continuation: i > 0,
            octet_counted: true,
        });
    }
    go_on
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(d: &[u8], max: usize) -> Vec<(Vec<u8>, LineBreak, bool)> {
        let mut out = Vec::new();
        datagram_pieces(d, max, &mut |m| {
            out.push((m.bytes.to_vec(), m.line_break, m.continuation));
            true
        });
        out
    }

    #[test]
    fn a_datagram_is_one_message_less_its_terminator() {
        for d in [
            &b"<14>hi\0"[..],
            b"<14>hi\n",
            b"<14>hi\n\0",
            b"<14>hi\r\n",
            b"<14>hi",
        ] {
            assert_eq!(
                pieces(d, 100),
                [(b"<14>hi".to_vec(), LineBreak::Newline, false)],
                "{d:?}"
            );
        }
        // Newlines and NULs inside are the message's own.
        assert_eq!(pieces(b"a\nb\0c\n", 100)[0].0, b"a\nb\0c");
        assert!(pieces(b"", 100).is_empty());
        assert!(pieces(b"\n\0", 100).is_empty());
    }

    #[test]
    fn a_long_datagram_is_cut_like_a_long_line() {
        assert_eq!(
            pieces(b"<1>abcdefg\n", 4),
            [
                (b"<1>a".to_vec(), LineBreak::LineMax, false),
                (b"bcde".to_vec(), LineBreak::LineMax, true),
                (b"fg".to_vec(), LineBreak::Newline, true),
            ]
        );
    }
}
