//! The reload handshake of `app reload` (systemd's `ExecReload=`): the status file the daemon
//! writes at each reload, and the command's side that signals and waits for it.

use std::time::Duration;

/// The outcome of a reload, as the reload status file says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadState {
    Reloading,
    Done(Result<(), String>),
}

/// The reload status file: one line, `PID SEQ ok`, `PID SEQ reloading` or
/// `PID SEQ failed: REASON`, rewritten in place at each reload. `app reload` (systemd's
/// `ExecReload=`) signals the daemon and waits here for a reload that started after its signal.
///
/// Why a file: systemd 252 has no `Type=notify-reload`, and the command cannot read what the
/// daemon sends to the notify socket. The file lives in `$RUNTIME_DIRECTORY` (`/run/app`, from
/// `RuntimeDirectory=`): writable by the daemon under `ProtectSystem=strict`, readable by the
/// command, which runs as the same user in the same sandbox; nothing else to set up. It is
/// opened once at start, so a reload out of descriptors still reports its (failed) outcome.
#[derive(Debug)]
pub struct ReloadStatus {
    file: std::fs::File,
}

/// The file's name in the runtime directory.
pub const RELOAD_STATUS_FILE: &str = "reload-status";

impl ReloadStatus {
    /// Creates (or takes over) the status file in `dir`.
    pub fn create(dir: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(dir.join(RELOAD_STATUS_FILE))?;
        Ok(ReloadStatus { file })
    }

    pub(super) fn write(&self, seq: u64, state: ReloadState) {
        let pid = std::process::id();
        let line = match state {
            ReloadState::Reloading => format!("{pid} {seq} reloading\n"),
            ReloadState::Done(Ok(())) => format!("{pid} {seq} ok\n"),
            ReloadState::Done(Err(why)) => {
                format!(
                    "{pid} {seq} failed: {}\n",
                    crate::systemd::notify::one_line(&why)
                )
            }
        };
        // One pwrite, then the length: a reader that sees a longer old tail finds two lines
        // and reads again.
        let result = rustix::io::pwrite(&self.file, line.as_bytes(), 0)
            .and_then(|_| rustix::fs::ftruncate(&self.file, line.len() as u64));
        if let Err(e) = result {
            tracing::warn!("writing the reload status: {e}");
        }
    }
}

/// Parses the status file: `(pid, seq, state)`, or `None` if it is not one complete line.
fn parse_reload_status(text: &str) -> Option<(u32, u64, ReloadState)> {
    let line = text.strip_suffix('\n').filter(|l| !l.contains('\n'))?;
    let mut parts = line.splitn(3, ' ');
    let pid = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let state = match parts.next()? {
        "reloading" => ReloadState::Reloading,
        "ok" => ReloadState::Done(Ok(())),
        rest => ReloadState::Done(Err(rest.strip_prefix("failed: ")?.to_owned())),
    };
    Some((pid, seq, state))
}

/// `app reload`: sends SIGHUP to `pid` and waits, up to `timeout`, for the outcome of a reload
/// that started after the signal, read from the status file in `dir`. `Err` says why the
/// configuration was rejected, or why there is no answer.
pub fn reload_and_wait(pid: i32, dir: &std::path::Path, timeout: Duration) -> Result<(), String> {
    let path = dir.join(RELOAD_STATUS_FILE);
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| parse_reload_status(&t))
            .filter(|(p, _, _)| *p as i32 == pid)
    };
    // A reload under way when we look may have read the configuration before the change we
    // are asked to apply: wait for a later one. SIGHUPs that arrive during a reload fold into
    // one more reload, so there is always a later one.
    let after = read().map_or(0, |(_, seq, _)| seq);
    let target = rustix::process::Pid::from_raw(pid).ok_or("invalid pid")?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|e| format!("signalling pid {pid}: {e}"))?;
    let start = std::time::Instant::now();
    loop {
        if let Some((_, seq, ReloadState::Done(outcome))) = read()
            && seq > after
        {
            return outcome.map_err(|why| format!("the new configuration was rejected: {why}"));
        }
        if rustix::process::test_kill_process(target).is_err() {
            return Err(format!("pid {pid} exited during the reload"));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no reload outcome from pid {pid} in {} after {} (is {} its runtime directory?)",
                path.display(),
                humantime::format_duration(timeout),
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_status_lines_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let status = ReloadStatus::create(dir.path()).unwrap();
        let read = || {
            parse_reload_status(
                &std::fs::read_to_string(dir.path().join(RELOAD_STATUS_FILE)).unwrap(),
            )
        };
        let pid = std::process::id();
        status.write(3, ReloadState::Done(Err("bad\nMAINPID=1".into())));
        assert_eq!(
            read(),
            Some((pid, 3, ReloadState::Done(Err("bad MAINPID=1".into()))))
        );
        status.write(4, ReloadState::Reloading);
        assert_eq!(read(), Some((pid, 4, ReloadState::Reloading)));
        status.write(4, ReloadState::Done(Ok(())));
        assert_eq!(read(), Some((pid, 4, ReloadState::Done(Ok(())))));
        assert_eq!(parse_reload_status("1 2 ok\n3 4 ok\n"), None, "torn");
        assert_eq!(parse_reload_status("1 2 o"), None, "short");
    }
}
