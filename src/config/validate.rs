//! From [`RawConfig`](super::file::RawConfig) to [`Settings`]: every rule a value must meet,
//! and the parsers for sizes, modes, durations and sink names.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::file::*;
use super::*;
use crate::error::Error;

pub(super) fn validate(raw: RawConfig, sources: &Sources<'_>) -> Result<Settings, Error> {
    let bad = |key: &str, msg: String| Error::Config(format!("{key}: {msg}"));
    let RawConfig {
        socket,
        journal,
        protocol,
        limits,
        service,
    } = raw;

    let path = match (&sources.overrides.socket_path, socket.path) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(p),
        (None, None) => default_socket_path(sources.euid, sources.env),
    };
    let mode = match socket.mode {
        Some(m) => parse_mode(&m).map_err(|msg| bad("socket.mode", msg))?,
        None => 0o660,
    };

    let identifier = journal.identifier.unwrap_or_else(|| "app".to_owned());
    if identifier.is_empty() || identifier.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad(
            "journal.identifier",
            format!("{identifier:?} must be non-empty text without control characters"),
        ));
    }
    if identifier == crate::logging::DAEMON_IDENTIFIER {
        return Err(bad(
            "journal.identifier",
            format!("{identifier:?} is reserved for the daemon's own diagnostics"),
        ));
    }
    let default_priority = match journal.default_priority {
        Some(p) => parse_priority(&p).map_err(|msg| bad("journal.default_priority", msg))?,
        None => 6,
    };

    // Every duration has a maximum (issue 13.7): far beyond any sensible setting, and far below
    // what a clock reading can have added to it, so that no use can overflow.
    let duration = |key: &str, value: Option<String>, default: Duration, max: Duration| {
        let Some(v) = value else {
            return Ok(default);
        };
        let d = parse_duration(&v).map_err(|msg| bad(key, msg))?;
        if d > max {
            return Err(bad(
                key,
                format!(
                    "{:?} is more than the maximum of {}",
                    v.trim(),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(d)
    };

    let max_line_bytes = limits.max_line_bytes.unwrap_or(48 * 1024);
    if !(1..=MAX_LINE_BYTES_CEILING).contains(&max_line_bytes) {
        return Err(bad(
            "limits.max_line_bytes",
            format!("{max_line_bytes} is out of range 1..={MAX_LINE_BYTES_CEILING}"),
        ));
    }
    let max_connections = NonZeroUsize::new(limits.max_connections.unwrap_or(4096))
        .ok_or_else(|| bad("limits.max_connections", "must be at least 1".to_owned()))?;
    // A quarter by default: one uid cannot take every slot, and four busy ones still fit.
    let max_connections_per_uid = NonZeroUsize::new(
        limits
            .max_connections_per_uid
            .unwrap_or((max_connections.get() / 4).max(1)),
    )
    .ok_or_else(|| {
        bad(
            "limits.max_connections_per_uid",
            "must be at least 1".to_owned(),
        )
    })?;
    let max_buffered_bytes = match limits.max_buffered_bytes {
        None => DEFAULT_MAX_BUFFERED_BYTES,
        Some(RawSize::Bytes(n)) => n,
        Some(RawSize::Text(t)) => {
            parse_size(&t).map_err(|msg| bad("limits.max_buffered_bytes", msg))?
        }
    };
    if max_buffered_bytes < MIN_BUFFERED_BYTES {
        return Err(bad(
            "limits.max_buffered_bytes",
            format!(
                "{} is below the minimum of {} (one client's read and batch)",
                format_size(max_buffered_bytes),
                format_size(MIN_BUFFERED_BYTES)
            ),
        ));
    }

    let log_level = sources
        .overrides
        .log_level
        .clone()
        .or(service.log_level)
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::builder()
        .parse(&log_level)
        .map_err(|e| bad("service.log_level", format!("{log_level:?}: {e}")))?;

    Ok(Settings {
        socket: SocketSettings {
            path,
            mode,
            group: socket.group.filter(|g| !g.is_empty()),
            datagram_path: socket.datagram_path.filter(|p| !p.as_os_str().is_empty()),
        },
        journal: JournalSettings {
            sink: match (sources.overrides.sink, journal.sink) {
                (Some(sink), _) => sink,
                (None, Some(name)) => parse_sink(&name).map_err(|msg| bad("journal.sink", msg))?,
                (None, None) => SinkKind::Auto,
            },
            identifier,
            default_priority,
            attribution: match journal.attribution.as_deref() {
                None | Some("auto") => Attribution::Auto,
                Some("off") => Attribution::Off,
                Some(other) => {
                    return Err(bad(
                        "journal.attribution",
                        format!("{other:?} is not one of \"auto\", \"off\""),
                    ));
                }
            },
        },
        protocol: ProtocolSettings {
            flush_after: duration(
                "protocol.flush_after",
                protocol.flush_after,
                Duration::from_millis(500),
                MAX_FLUSH_AFTER,
            )?,
            json: match protocol.json.as_deref() {
                None | Some("auto") => JsonMode::Auto,
                Some("off") => JsonMode::Off,
                Some(other) => {
                    return Err(bad(
                        "protocol.json",
                        format!("{other:?} is not one of \"auto\", \"off\""),
                    ));
                }
            },
            json_max_fields: match protocol.json_max_fields {
                None => 64,
                Some(n) if n <= MAX_JSON_FIELDS => n,
                Some(n) => {
                    return Err(bad(
                        "protocol.json_max_fields",
                        format!("{n} is out of range 0..={MAX_JSON_FIELDS}"),
                    ));
                }
            },
            json_identifier: protocol.json_identifier.unwrap_or(false),
        },
        limits: Limits {
            max_line_bytes: NonZeroUsize::new(max_line_bytes).expect("checked above"),
            max_connections,
            max_connections_per_uid,
            max_buffered_bytes,
            rate_limit_interval: duration(
                "limits.rate_limit_interval",
                limits.rate_limit_interval,
                Duration::from_secs(30),
                MAX_RATE_LIMIT_INTERVAL,
            )?,
            rate_limit_burst: limits.rate_limit_burst.unwrap_or(10_000),
        },
        service: ServiceSettings {
            idle_timeout: duration(
                "service.idle_timeout",
                service.idle_timeout,
                Duration::ZERO,
                MAX_IDLE_TIMEOUT,
            )?,
            shutdown_timeout: duration(
                "service.shutdown_timeout",
                service.shutdown_timeout,
                Duration::from_secs(5),
                MAX_SHUTDOWN_TIMEOUT,
            )?,
            log_level,
        },
    })
}

pub(super) fn parse_sink(s: &str) -> Result<SinkKind, String> {
    match s {
        "auto" => Ok(SinkKind::Auto),
        "journal" => Ok(SinkKind::Journal),
        "stdout" => Ok(SinkKind::Stdout),
        _ => Err(format!(
            "{s:?} is not one of \"auto\", \"journal\", \"stdout\""
        )),
    }
}

/// An octal permission string such as `"0660"`.
pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal permission mode such as \"0660\""
        )),
    }
}

/// Binary size suffixes, as systemd's `MemoryMax=` reads them: `K` and `KiB` are both 1024.
pub(super) const SIZE_UNITS: [(&[&str], u64); 4] = [
    (&["", "B"], 1),
    (&["K", "KiB"], 1 << 10),
    (&["M", "MiB"], 1 << 20),
    (&["G", "GiB"], 1 << 30),
];

/// A size in bytes: `67108864`, `"64MiB"`, `"64M"`, `"512KiB"`.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, suffix) = t.split_at(digits);
    let scale = SIZE_UNITS
        .iter()
        .find(|(names, _)| names.contains(&suffix.trim()))
        .map(|&(_, scale)| scale);
    match (number.parse::<u64>(), scale) {
        (Ok(n), Some(scale)) => n
            .checked_mul(scale)
            .ok_or_else(|| format!("{s:?} is too large")),
        _ => Err(format!(
            "{s:?} is not a size such as \"64MiB\", \"512KiB\" or a number of bytes"
        )),
    }
}

/// The shortest exact spelling of a size: `"64MiB"`, `"1500B"`.
pub(super) fn format_size(bytes: u64) -> String {
    for (names, scale) in SIZE_UNITS.iter().rev() {
        if bytes != 0 && bytes.is_multiple_of(*scale) {
            let suffix = names.last().expect("every unit has a name");
            return format!("{}{suffix}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as \"500ms\", \"30s\" or \"5m\": {e}"))
}
