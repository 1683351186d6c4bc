//! `app send`: a small client, like logger(1) for our socket.

use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Writes `messages` (or stdin's lines when there are none) to the daemon at `socket`.
///
/// Returns an error when the daemon cannot be reached or refuses the connection (it then says
/// why in one `app: …` line, which becomes the error).
pub fn send(
    socket: &Path,
    priority: Option<u8>,
    messages: &[String],
    stdin: &mut dyn BufRead,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let prefix = priority.map(|p| format!("<{p}>")).unwrap_or_default();
    let mut out = BufWriter::new(&stream);
    let write = |out: &mut BufWriter<&UnixStream>, line: &[u8]| -> io::Result<()> {
        out.write_all(prefix.as_bytes())?;
        out.write_all(line)?;
        out.write_all(b"\n")
    };
    let written: io::Result<()> = (|| {
        if messages.is_empty() {
            let mut line = Vec::new();
            while stdin.read_until(b'\n', &mut line)? > 0 {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                if !text.is_empty() {
                    write(&mut out, text)?;
                }
                line.clear();
            }
        } else {
            write(&mut out, messages.join(" ").as_bytes())?;
        }
        out.flush()
    })();
    drop(out);

    // The daemon says nothing on a healthy connection; a refusal is one "app: …" line.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = String::new();
    let _ = (&stream).take(4096).read_to_string(&mut reply);
    if let Some(reason) = reply.lines().next().and_then(|l| l.strip_prefix("app: ")) {
        anyhow::bail!("{}: the daemon refused: {reason}", socket.display());
    }
    written.with_context(|| format!("writing to {}", socket.display()))
}
