//! The stdout sink's view of a message: one message, one terminal line, nothing the terminal
//! would act on. A newline shows as `\n`, a carriage return as `\r`, and every other control
//! byte (ESC, BEL, DEL…; tab excepted) as `\xNN`, so a client cannot rewrite or forge what a
//! developer watching `app serve` sees. Other bytes, UTF-8 included, are written as they are.

/// Appends `message` to `out`, control bytes escaped.
pub fn push_escaped(out: &mut Vec<u8>, message: &[u8]) {
    let mut rest = message;
    while let Some(i) = rest.iter().position(|&b| needs_escape(b)) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

fn needs_escape(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_escaped() {
        let mut out = Vec::new();
        push_escaped(&mut out, b"a\nb\rc\x1b[2Jd\x00\x7f\te \xc3\xa4");
        assert_eq!(out, b"a\\nb\\rc\\x1b[2Jd\\x00\\x7f\te \xc3\xa4");
    }
}
