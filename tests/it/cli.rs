//! The command line (DESIGN §7): `send`, `--version`, `--help`, exit codes, the stdout sink.

use crate::support::*;

fn stdout_daemon() -> Daemon {
    DaemonBuilder::new().stdout_sink().start()
}

#[test]
fn send_delivers_arguments_and_stdin_lines() {
    let mut daemon = stdout_daemon();
    let sock = daemon.socket.to_str().unwrap().to_owned();
    let (code, _, err) = run_app(&["send", "--socket", &sock, "one", "message"], &[], b"");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_app(
        &["send", "--socket", &sock, "--priority", "err"],
        &[],
        b"a\nb\n",
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_app(&["send", "--socket", &sock, "-p", "4", "warned"], &[], b"");
    assert_eq!(code, 0, "{err}");
    assert!(daemon.stop().success());
    let out = daemon.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].ends_with("] <6> one message"), "{out}");
    assert!(lines[1].ends_with("] <3> a"), "{out}");
    assert!(lines[2].ends_with("] <3> b"), "{out}");
    assert!(lines[3].ends_with("] <4> warned"), "{out}");
}

#[test]
fn send_uses_the_configured_socket_path() {
    let mut daemon = stdout_daemon();
    let sock = daemon.socket.to_str().unwrap().to_owned();
    let (code, _, err) = run_app(&["send", "via env"], &[("APP_SOCKET__PATH", &sock)], b"");
    assert_eq!(code, 0, "{err}");
    assert!(daemon.stop().success());
    assert!(daemon.stdout().contains("] <6> via env"));
}

#[test]
fn stdout_sink_shows_priority_and_client() {
    // What `cargo run -- serve --socket ./app.sock` prints on a machine without journald.
    let mut daemon = stdout_daemon();
    let out = std::process::Command::new("socat")
        .die_with_test()
        .args(["-", &format!("UNIX-CONNECT:{}", daemon.socket.display())])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"hi\n")?;
            let pid = c.id();
            c.wait().map(|s| (s, pid))
        })
        .expect("socat");
    assert!(out.0.success());
    assert!(daemon.stop().success());
    let text = daemon.stdout();
    assert!(
        text.trim_end()
            .ends_with(&format!(" app[pid={} uid=0 conn=1] <6> hi", out.1)),
        "{text}"
    );
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_app(&["--version"], &[], b"");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("app {}", env!("CARGO_PKG_VERSION")));
    let (code, out, _) = run_app(&["--help"], &[], b"");
    assert_eq!(code, 0);
    for word in ["serve", "send", "check-config", "--config"] {
        assert!(out.contains(word), "{word} not in --help:\n{out}");
    }
}

#[test]
fn exit_codes() {
    // 2: usage.
    let (code, _, err) = run_app(&["serve", "--no-such-flag"], &[], b"");
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run_app(&[], &[], b"");
    assert_eq!(code, 2);
    let (code, _, err) = run_app(&["send", "--priority", "loud", "x"], &[], b"");
    assert_eq!(code, 2, "{err}");
    // 2: configuration.
    let (code, _, err) = run_app(&["check-config"], &[("APP_JOURNAL__SINK", "nowhere")], b"");
    assert_eq!(code, 2, "{err}");
    // 1: runtime failure (nothing listens there).
    let dir = temp_dir();
    let missing = dir.path().join("none.sock");
    let (code, _, err) = run_app(
        &["send", "--socket", missing.to_str().unwrap(), "x"],
        &[],
        b"",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!("app: cannot connect to {}: ", missing.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // 0.
    let (code, _, _) = run_app(&["check-config", "--config", "/dev/null"], &[], b"");
    assert_eq!(code, 0);
}

/// `journal.sink = "auto"` with no journal socket at all: messages go to stdout. Shown in a
/// private mount namespace with an empty `/run`, so the result does not depend on the host.
#[test]
fn auto_sink_without_journald_prints_to_stdout_root() {
    require_root("a private, empty /run");
    let dir = temp_dir();
    let socket = dir.path().join("app.sock");
    let stdout = dir.path().join("stdout");
    let script = format!(
        "mount -t tmpfs tmpfs /run && exec {APP} serve --socket {}",
        socket.display()
    );
    let mut child = std::process::Command::new("unshare")
        .die_with_test()
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(std::time::Duration::from_secs(10), "the socket", || {
        socket.exists().then_some(())
    });
    send(&socket, b"no journald here\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&stdout).unwrap();
    let expected = format!(
        " app[pid={} uid=0 conn=1] <6> no journald here",
        std::process::id()
    );
    assert!(text.trim_end().ends_with(&expected), "{text}");
}

/// `app send` as a user, with no socket configured: the system daemon's `/run/app.sock` when it
/// is there (README "Clients"), not the server's default for that user; with no daemon at
/// all, the error names every path tried. In a private mount namespace with an empty `/run`.
#[test]
fn send_finds_the_system_socket_as_a_user_root() {
    require_root("a private /run");
    let dir = temp_dir();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, "[socket]\nmode = \"0666\"\n").unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    // A copy nobody can run: the checkout may be in a home directory others cannot enter
    // (root's, or any on Debian 12, whose new homes are 0700).
    let app = dir.path().join("app");
    std::fs::copy(APP, &app).unwrap();
    let as_nobody = format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups -- \
         env -i XDG_RUNTIME_DIR={} {} --config {}",
        runtime.display(),
        app.display(),
        empty.display()
    );
    let script = format!(
        "mount -t tmpfs tmpfs /run
{APP} --config {config} serve --socket /run/app.sock --sink stdout &
daemon=$!
i=0; while [ ! -S /run/app.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
{as_nobody} send 'to the system socket'; echo \"first: $?\" >&2
kill $daemon; wait $daemon
{as_nobody} send 'nowhere'; echo \"second: $?\" >&2",
        config = config.display()
    );
    let out = std::process::Command::new("unshare")
        .die_with_test()
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("first: 0"), "{stderr}");
    assert!(
        stdout.contains("uid=65534 conn=1] <6> to the system socket"),
        "{stdout}"
    );
    let tried = format!(
        "app: cannot connect to the daemon; tried /run/app.sock: No such file or directory \
         (os error 2), {}/app.sock: No such file or directory (os error 2) (use --socket PATH)",
        runtime.display()
    );
    assert!(stderr.contains(&tried), "{stderr}");
    assert!(stderr.contains("second: 1"), "{stderr}");
}
