//! Unit tests of `config`.

use super::validate::*;
use super::*;

fn load_with(
    file: Option<&str>,
    env: &[(&str, &str)],
    overrides: Overrides,
) -> Result<Settings, Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load(&Sources {
        file: ConfigFile::Default(path),
        env: &env,
        overrides,
        euid: 0,
    })
}

fn err(r: Result<Settings, Error>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn defaults_match_the_contract() {
    let s = load_with(None, &[], Overrides::default()).unwrap();
    assert_eq!(s.socket.path.as_deref(), Some(Path::new("/run/app.sock")));
    assert_eq!(s.socket.mode, 0o660);
    assert_eq!(s.socket.group, None);
    assert_eq!(s.journal.sink, SinkKind::Auto);
    assert_eq!(s.journal.identifier, "app");
    assert_eq!(s.journal.default_priority, 6);
    assert_eq!(s.protocol.flush_after, Duration::from_millis(500));
    assert_eq!(s.protocol.json, JsonMode::Auto);
    assert_eq!(s.protocol.json_max_fields, 64);
    assert!(!s.protocol.json_identifier);
    assert_eq!(s.limits.max_line_bytes.get(), 49152);
    assert_eq!(s.limits.max_connections.get(), 4096);
    assert_eq!(s.limits.max_connections_per_uid.get(), 1024);
    assert_eq!(s.limits.max_buffered_bytes, 64 << 20);
    assert_eq!(s.limits.rate_limit_interval, Duration::from_secs(30));
    assert_eq!(s.limits.rate_limit_burst, 10_000);
    assert_eq!(s.service.idle_timeout, Duration::ZERO);
    assert_eq!(s.service.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.service.log_level, "info");
}

#[test]
fn layers_override_in_order() {
    let file =
        "[limits]\nmax_connections = 10\nmax_line_bytes = 100\n[socket]\npath = \"/file.sock\"\n";
    let s = load_with(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!(s.limits.max_connections.get(), 10);
    assert_eq!(s.socket.path.as_deref(), Some(Path::new("/file.sock")));

    let env = [
        ("APP_LIMITS__MAX_CONNECTIONS", "20"),
        ("APP_SOCKET__PATH", "/env.sock"),
    ];
    let s = load_with(Some(file), &env, Overrides::default()).unwrap();
    assert_eq!(s.limits.max_connections.get(), 20);
    assert_eq!(
        s.limits.max_line_bytes.get(),
        100,
        "file value kept where env is silent"
    );
    assert_eq!(s.socket.path.as_deref(), Some(Path::new("/env.sock")));

    let flags = Overrides {
        socket_path: Some("/flag.sock".into()),
        ..Overrides::default()
    };
    let s = load_with(Some(file), &env, flags).unwrap();
    assert_eq!(s.socket.path.as_deref(), Some(Path::new("/flag.sock")));
}

#[test]
fn env_strings_keep_leading_zeros() {
    let s = load_with(
        None,
        &[
            ("APP_SOCKET__MODE", "0640"),
            ("APP_JOURNAL__IDENTIFIER", "007"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.socket.mode, 0o640);
    assert_eq!(s.journal.identifier, "007");
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = err(load_with(
        Some("[limits]\nmax_conections = 3\n"),
        &[],
        Overrides::default(),
    ));
    assert!(
        e.contains("app.toml: limits.max_conections: unknown key"),
        "{e}"
    );
    let e = err(load_with(
        None,
        &[("APP_LIMITS__MAX_CONECTIONS", "3")],
        Overrides::default(),
    ));
    assert!(
        e.starts_with("environment: limits.max_conections: unknown key"),
        "{e}"
    );
    let e = err(load_with(Some("colour = 1\n"), &[], Overrides::default()));
    assert!(e.contains("app.toml: colour: unknown key"), "{e}");
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let e = err(load_with(
        Some("[limits]\nmax_connections = \"many\"\n"),
        &[],
        Overrides::default(),
    ));
    assert!(
        e.contains("app.toml: limits.max_connections: expected an integer"),
        "{e}"
    );
    let e = err(load_with(
        None,
        &[("APP_LIMITS__MAX_LINE_BYTES", "big")],
        Overrides::default(),
    ));
    assert!(
        e.contains("environment: limits.max_line_bytes: expected an integer"),
        "{e}"
    );
}

#[test]
fn syntax_error_names_the_file() {
    let e = err(load_with(Some("[limits\n"), &[], Overrides::default()));
    assert!(e.contains("app.toml: TOML parse error at line 1"), "{e}");
}

#[test]
fn values_are_validated() {
    for (file, needle) in [
        ("[socket]\nmode = \"0999\"\n", "socket.mode"),
        (
            "[journal]\ndefault_priority = 9\n",
            "journal.default_priority",
        ),
        ("[journal]\nidentifier = \"\"\n", "journal.identifier"),
        (
            "[journal]\nattribution = \"on\"\n",
            "journal.attribution: \"on\" is not one of",
        ),
        (
            "[journal]\nidentifier = \"app-daemon\"\n",
            "journal.identifier: \"app-daemon\" is reserved",
        ),
        (
            "[protocol]\nflush_after = \"soon\"\n",
            "protocol.flush_after",
        ),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("[limits]\nmax_line_bytes = 0\n", "limits.max_line_bytes"),
        ("[service]\nlog_level = \"app=loud\"\n", "service.log_level"),
        (
            "[journal]\nsink = \"file\"\n",
            "journal.sink: \"file\" is not one of",
        ),
        (
            "[protocol]\njson = \"on\"\n",
            "protocol.json: \"on\" is not one of \"auto\", \"off\"",
        ),
        (
            "[protocol]\njson_max_fields = 513\n",
            "protocol.json_max_fields: 513 is out of range 0..=512",
        ),
        (
            "[protocol]\njson_identifier = \"maybe\"\n",
            "protocol.json_identifier",
        ),
    ] {
        let e = err(load_with(Some(file), &[], Overrides::default()));
        assert!(e.contains(needle), "{file:?}: {e}");
    }
}

/// Issue 13.7: a duration too large to add to a clock reading passed validation, then
/// panicked the daemon at use. Every duration has a maximum, named in the error.
#[test]
fn durations_are_bounded() {
    for (file, needle) in [
        (
            "[service]\nshutdown_timeout = \"300000000000y\"\n",
            "service.shutdown_timeout: \"300000000000y\" is more than the maximum of 1day",
        ),
        (
            "[protocol]\nflush_after = \"2h\"\n",
            "protocol.flush_after: \"2h\" is more than the maximum of 1h",
        ),
        (
            "[service]\nidle_timeout = \"366d\"\n",
            "service.idle_timeout: \"366d\" is more than the maximum of 1year",
        ),
        (
            "[limits]\nrate_limit_interval = \"25h\"\n",
            "limits.rate_limit_interval: \"25h\" is more than the maximum of 1day",
        ),
    ] {
        let e = err(load_with(Some(file), &[], Overrides::default()));
        assert!(e.contains(needle), "{file:?}: {e}");
    }
    // The maxima themselves are fine.
    let s = load_with(
        Some(
            "[protocol]\nflush_after = \"1h\"\n[limits]\nrate_limit_interval = \"1d\"\n\
                 [service]\nidle_timeout = \"365d\"\nshutdown_timeout = \"1d\"\n",
        ),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.service.idle_timeout, Duration::from_secs(365 * 86400));
}

#[test]
fn attribution_is_auto_unless_turned_off() {
    let s = load_with(None, &[], Overrides::default()).unwrap();
    assert_eq!(s.journal.attribution, Attribution::Auto);
    let s = load_with(
        None,
        &[("APP_JOURNAL__ATTRIBUTION", "off")],
        Overrides::default(),
    );
    assert_eq!(s.unwrap().journal.attribution, Attribution::Off);
}

#[test]
fn priorities_by_number_or_name() {
    assert_eq!(parse_priority("3"), Ok(3));
    assert_eq!(parse_priority("warning"), Ok(4));
    assert_eq!(parse_priority("ERR"), Ok(3));
    assert!(parse_priority("8").is_err());
    let s = load_with(
        Some("[journal]\ndefault_priority = \"debug\"\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.journal.default_priority, 7);
    let s = load_with(
        Some("[journal]\ndefault_priority = 2\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.journal.default_priority, 2);
}

#[test]
fn per_uid_connections_default_to_a_quarter() {
    let s = load_with(
        Some("[limits]\nmax_connections = 10\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.limits.max_connections_per_uid.get(), 2);
    let s = load_with(
        Some("[limits]\nmax_connections = 3\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.limits.max_connections_per_uid.get(), 1, "never 0");
    let e = err(load_with(
        Some("[limits]\nmax_connections_per_uid = 0\n"),
        &[],
        Overrides::default(),
    ));
    assert!(e.contains("limits.max_connections_per_uid"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("64M"), Ok(64 << 20));
    assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert_eq!(parse_size("1000B"), Ok(1000));
    assert!(parse_size("64MB").is_err(), "no decimal units: say MiB");
    assert!(parse_size("lots").is_err());
    assert!(parse_size("99999999999G").is_err());
    assert_eq!(format_size(64 << 20), "64MiB");
    assert_eq!(format_size(1500), "1500B");
    assert_eq!(format_size(3 << 10), "3KiB");
    for (file, env, want) in [
        ("max_buffered_bytes = 2097152", None, 2 << 20),
        ("max_buffered_bytes = \"16MiB\"", None, 16 << 20),
        ("", Some("8MiB"), 8 << 20),
        ("", Some("4194304"), 4 << 20),
    ] {
        let env: Vec<(&str, &str)> = env
            .map(|v| ("APP_LIMITS__MAX_BUFFERED_BYTES", v))
            .into_iter()
            .collect();
        let s = load_with(
            Some(&format!("[limits]\n{file}\n")),
            &env,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.limits.max_buffered_bytes, want, "{file} {env:?}");
    }
    let e = err(load_with(
        Some("[limits]\nmax_buffered_bytes = \"1KiB\"\n"),
        &[],
        Overrides::default(),
    ));
    assert!(
        e.contains("limits.max_buffered_bytes: 1KiB is below the minimum of 1MiB"),
        "{e}"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
}

#[test]
fn non_root_default_socket_is_in_runtime_dir() {
    let mut env = HashMap::new();
    env.insert("XDG_RUNTIME_DIR".to_owned(), "/run/user/1000".to_owned());
    assert_eq!(
        default_socket_path(1000, &env).unwrap(),
        Path::new("/run/user/1000/app.sock")
    );
    assert_eq!(default_socket_path(1000, &HashMap::new()), None);
    // Not an error by itself: a socket-activated daemon needs no path of its own.
    let env = HashMap::new();
    let s = load(&Sources {
        file: ConfigFile::Default("/nonexistent".into()),
        env: &env,
        overrides: Overrides::default(),
        euid: 1000,
    })
    .unwrap();
    assert!(
        s.socket
            .path()
            .unwrap_err()
            .to_string()
            .contains("XDG_RUNTIME_DIR is unset")
    );
}

#[test]
fn effective_settings_round_trip_through_toml() {
    let s = load_with(
        Some("[socket]\nmode = \"0600\"\n[protocol]\nflush_after = \"0s\"\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    let text = s.to_toml();
    assert!(text.contains("mode = \"0600\""), "{text}");
    let again = load_with(Some(&text), &[], Overrides::default()).unwrap();
    assert_eq!(again, s);
}

#[test]
fn explicit_missing_file_is_an_error() {
    let env = HashMap::new();
    let e = load(&Sources {
        file: ConfigFile::Explicit("/nonexistent/app.toml".into()),
        env: &env,
        overrides: Overrides::default(),
        euid: 0,
    })
    .unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/app.toml: "), "{e}");
}

mod shipped_file {
    use super::*;

    /// The shipped `packaging/app.toml` lists every key with its default: uncommented, it must
    /// load and give exactly the built-in defaults (with the example group left out).
    #[test]
    fn shipped_config_lists_every_key_with_its_default() {
        let shipped = include_str!("../../packaging/app.toml");
        let uncommented: String =
            shipped
                .lines()
                .map(
                    |l| match l.strip_prefix("# ").and_then(|kv| kv.split_once(" = ")) {
                        Some((key, _))
                            if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
                        {
                            if key == "group" { "" } else { &l[2..] }
                        }
                        _ if l.starts_with('#') => "",
                        _ => l,
                    },
                )
                .collect::<Vec<_>>()
                .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let env = HashMap::new();
        let load_from = |file| {
            load(&Sources {
                file,
                env: &env,
                overrides: Overrides::default(),
                euid: 0,
            })
            .unwrap()
        };
        let from_file = load_from(ConfigFile::Explicit(path));
        let defaults = load_from(ConfigFile::Default(dir.path().join("absent.toml")));
        assert_eq!(from_file, defaults);
        let keys = uncommented.lines().filter(|l| l.contains(" = ")).count();
        assert_eq!(keys, 20, "every key but socket.group, once:\n{uncommented}");
    }
}
