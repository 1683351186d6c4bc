//! Configuration layers (DESIGN §6): file < environment < flags, and errors that say where.

use std::process::Command;

use crate::support::*;

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec!["check-config"];
    all.extend_from_slice(args);
    run_app(&all, env, b"")
}

#[test]
fn each_layer_overrides_the_one_below() {
    let dir = temp_dir();
    let file = dir.path().join("app.toml");
    std::fs::write(
        &file,
        "[socket]\npath = \"/from/file.sock\"\n[limits]\nmax_connections = 11\nmax_line_bytes = 1000\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let (code, out, err) = check_config(&["--config", f], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("path = \"/from/file.sock\""), "{out}");
    assert!(out.contains("max_connections = 11"), "{out}");

    let env = [
        ("APP_SOCKET__PATH", "/from/env.sock"),
        ("APP_LIMITS__MAX_CONNECTIONS", "22"),
    ];
    let (code, out, err) = check_config(&["--config", f], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("path = \"/from/env.sock\""), "{out}");
    assert!(out.contains("max_connections = 22"), "{out}");
    assert!(
        out.contains("max_line_bytes = 1000"),
        "the file still counts where env is silent: {out}"
    );

    let (code, out, err) = check_config(&["--config", f, "--socket", "/from/flag.sock"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("path = \"/from/flag.sock\""), "{out}");
    assert!(out.contains("max_connections = 22"), "{out}");
}

#[test]
fn check_config_prints_every_key() {
    let (code, out, err) = check_config(&["--config", "/dev/null"], &[]);
    assert_eq!(code, 0, "{err}");
    for key in [
        "[socket]",
        "path = ",
        "mode = \"0660\"",
        "[journal]",
        "sink = \"auto\"",
        "identifier = \"app\"",
        "default_priority = 6",
        "[protocol]",
        "flush_after = \"500ms\"",
        "[limits]",
        "max_line_bytes = 49152",
        "max_connections = 4096",
        "rate_limit_interval = \"30s\"",
        "rate_limit_burst = 10000",
        "[service]",
        "idle_timeout = \"0s\"",
        "shutdown_timeout = \"5s\"",
        "log_level = \"info\"",
    ] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
}

#[test]
fn unknown_key_exits_2_naming_file_and_key() {
    let dir = temp_dir();
    let file = dir.path().join("app.toml");
    std::fs::write(&file, "[limits]\nmax_conections = 5\n").unwrap();
    for cmd in ["check-config", "serve"] {
        let (code, _, err) = run_app(&[cmd, "--config", file.to_str().unwrap()], &[], b"");
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with(&format!(
                "app: {}: limits.max_conections: unknown key",
                file.display()
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "printed once: {err}");
    }
    let (code, _, err) = check_config(
        &["--config", "/dev/null"],
        &[("APP_LIMITS__MAX_CONECTIONS", "5")],
    );
    assert_eq!(code, 2);
    assert!(
        err.starts_with("app: environment: limits.max_conections: unknown key"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let dir = temp_dir();
    let file = dir.path().join("app.toml");
    std::fs::write(&file, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    let (code, _, err) = check_config(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("limits.max_connections: expected an integer"),
        "{err}"
    );
    let (code, _, err) = check_config(
        &["--config", "/dev/null"],
        &[("APP_SERVICE__SHUTDOWN_TIMEOUT", "later")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("service.shutdown_timeout: \"later\" is not a duration"),
        "{err}"
    );
}

#[test]
fn missing_explicit_file_is_an_error() {
    let (code, _, err) = check_config(&["--config", "/nonexistent/app.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.starts_with("app: /nonexistent/app.toml: "), "{err}");
}

/// The default file is `/etc/app/app.toml`: shown in a private mount namespace, so the host's
/// `/etc` is left alone.
#[test]
fn default_file_is_etc_app_app_toml_root() {
    require_root("mounting a private /etc/app");
    let script = format!(
        "set -e; mkdir -p /etc/app; mount -t tmpfs tmpfs /etc/app; \
         printf '[journal]\\nidentifier = \"from-etc\"\\n' > /etc/app/app.toml; \
         exec {APP} check-config"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("identifier = \"from-etc\""), "{stdout}");
}

/// Issue 13.7: `shutdown_timeout = "300000000000y"` passed check-config and the daemon panicked
/// at SIGTERM (exit 101). Now check-config and serve both refuse it, naming key and maximum.
#[test]
fn absurd_durations_are_refused_not_a_panic() {
    let dir = temp_dir();
    for (text, needle) in [
        (
            "[service]\nshutdown_timeout = \"300000000000y\"\n",
            "service.shutdown_timeout: \"300000000000y\" is more than the maximum of 1day",
        ),
        (
            "[protocol]\nflush_after = \"300000000000y\"\n",
            "protocol.flush_after: \"300000000000y\" is more than the maximum of 1h",
        ),
    ] {
        let config = dir.path().join("app.toml");
        std::fs::write(&config, text).unwrap();
        let socket = dir.path().join("app.sock");
        for args in [
            vec!["--config", config.to_str().unwrap(), "check-config"],
            vec![
                "--config",
                config.to_str().unwrap(),
                "serve",
                "--sink",
                "stdout",
                "--socket",
                socket.to_str().unwrap(),
            ],
        ] {
            let (code, _, stderr) = run_app(&args, &[], b"");
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
            assert_ne!(code, 0, "{args:?}");
            assert_ne!(code, 101, "{args:?}: a panic");
        }
    }
}
