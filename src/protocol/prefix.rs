//! The `<N>` prefix of a message: a priority (sd-daemon(3)) or a syslog PRI.

/// A priority (and optional facility) taken from a message's `<N>` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub priority: u8,
    /// Set when the client sent a full syslog PRI (8..=191).
    pub facility: Option<u8>,
}

/// Splits a leading `<N>` off `text`: N in 0..=7 is a priority (sd-daemon(3) style); N in
/// 8..=191 is a syslog PRI (facility N/8, severity N%8). Anything else is not a prefix, and the
/// text is returned whole.
pub fn parse_prefix(text: &[u8]) -> (Option<Prefix>, &[u8]) {
    let Some(rest) = text.strip_prefix(b"<") else {
        return (None, text);
    };
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') {
        return (None, text);
    }
    // No leading zeros except "<0>" itself, as RFC 5424 spells PRI.
    if digits > 1 && rest[0] == b'0' {
        return (None, text);
    }
    let n = rest[..digits]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let prefix = match n {
        0..=7 => Prefix {
            priority: n as u8,
            facility: None,
        },
        8..=191 => Prefix {
            priority: (n % 8) as u8,
            facility: Some((n / 8) as u8),
        },
        _ => return (None, text),
    };
    (Some(prefix), &rest[digits + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for n in 0..=7u8 {
            let text = format!("<{n}>msg");
            let (p, rest) = parse_prefix(text.as_bytes());
            assert_eq!(
                p,
                Some(Prefix {
                    priority: n,
                    facility: None
                })
            );
            assert_eq!(rest, b"msg");
        }
        assert_eq!(
            parse_prefix(b"<13>x"),
            (
                Some(Prefix {
                    priority: 5,
                    facility: Some(1)
                }),
                &b"x"[..]
            )
        );
        assert_eq!(
            parse_prefix(b"<191>x"),
            (
                Some(Prefix {
                    priority: 7,
                    facility: Some(23)
                }),
                &b"x"[..]
            )
        );
        for kept in [
            &b"<192>x"[..],
            b"<999>x",
            b"<1000>x",
            b"<>x",
            b"<a>x",
            b"<03>x",
            b"<3",
            b"3>x",
        ] {
            assert_eq!(
                parse_prefix(kept),
                (None, kept),
                "{:?}",
                String::from_utf8_lossy(kept)
            );
        }
    }
}
