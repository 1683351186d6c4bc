//! `app send`: a small client, like logger(1) for our socket.

use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The system socket, where the packaged `app.socket` listens.
pub const SYSTEM_SOCKET: &str = "/run/app.sock";

/// Where `app send` looks for the daemon when `--socket` is not given, in order: `socket.path`
/// when it is configured (file or `APP_SOCKET__PATH`), alone; else `/run/app.sock` (the
/// system daemon, which a user in group `app` may write to) and `$XDG_RUNTIME_DIR/app.sock`
/// (a daemon the user runs), tried in that order.
pub fn candidates(configured: Option<PathBuf>, runtime_dir: Option<&str>) -> Vec<PathBuf> {
    if let Some(path) = configured {
        return vec![path];
    }
    let mut paths = vec![PathBuf::from(SYSTEM_SOCKET)];
    if let Some(dir) = runtime_dir.filter(|d| !d.is_empty()) {
        paths.push(Path::new(dir).join("app.sock"));
    }
    paths
}

/// Connects to the first of `paths` that exists (to the only one, when there is one); the
/// error names every path tried and why each failed.
pub fn connect(paths: &[PathBuf]) -> anyhow::Result<(UnixStream, &Path)> {
    if let [only] = paths {
        return UnixStream::connect(only)
            .map(|s| (s, only.as_path()))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot connect to {}", only.display()))
            });
    }
    let mut tried = Vec::new();
    for path in paths {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok((stream, path)),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    anyhow::bail!(
        "cannot connect to the daemon; tried {} (use --socket PATH)",
        tried.join(", ")
    )
}

/// Writes `messages` (or stdin's lines when there are none) to the daemon at the first of
/// `sockets` that answers ([`connect`]).
///
/// Returns an error when the daemon cannot be reached or refuses the connection (it then says
/// why in one `app: …` line, which becomes the error).
pub fn send(
    sockets: &[PathBuf],
    priority: Option<u8>,
    messages: &[String],
    stdin: &mut dyn BufRead,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let (stream, socket) = connect(sockets)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_alone_else_system_then_runtime_dir() {
        let configured = candidates(Some("/etc.sock".into()), Some("/run/user/1000"));
        assert_eq!(configured, [PathBuf::from("/etc.sock")]);
        let default = candidates(None, Some("/run/user/1000"));
        assert_eq!(
            default,
            [
                PathBuf::from("/run/app.sock"),
                "/run/user/1000/app.sock".into()
            ]
        );
        assert_eq!(candidates(None, None), [PathBuf::from("/run/app.sock")]);
        assert_eq!(candidates(None, Some("")), [PathBuf::from("/run/app.sock")]);
    }

    #[test]
    fn the_error_names_every_path_tried() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        let err = connect(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(err.contains(&format!("{}: ", a.display())), "{err}");
        assert!(err.contains(&format!("{}: ", b.display())), "{err}");
        let err = format!("{:#}", connect(std::slice::from_ref(&a)).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot connect to {}: ", a.display())),
            "{err}"
        );
    }
}
