//! Configuration: the file < `APP_*` environment < command-line flags, validated into `Settings`.
//!
//! Loading happens in two steps (STYLE §8): each source is deserialized on its own into
//! [`RawConfig`] (so an unknown key or a wrong type is reported against the source that holds it),
//! then the merged result is turned into [`Settings`] with real types. Nothing here reads the
//! process environment: callers pass it in as a map, which keeps every rule unit-testable.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where the daemon reads its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/app/app.toml";

/// Default socket for root; other users get `$XDG_RUNTIME_DIR/app.sock`.
pub const DEFAULT_ROOT_SOCKET: &str = "/run/app.sock";

/// Largest accepted `limits.max_line_bytes`: a line is buffered whole before it is split, so this
/// bounds per-connection memory.
const MAX_LINE_BYTES_CEILING: usize = 64 << 20;

/// Default `limits.max_buffered_bytes`.
const DEFAULT_MAX_BUFFERED_BYTES: u64 = 64 << 20;

/// Smallest `limits.max_buffered_bytes`: what one connection reserves to read (see
/// `connection::TURN_BYTES`), so that one client at a time can always make progress.
const MIN_BUFFERED_BYTES: u64 = 1 << 20;

/// The file as written. Every field is optional: a missing one takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    socket: RawSocket,
    journal: RawJournal,
    protocol: RawProtocol,
    limits: RawLimits,
    service: RawService,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSocket {
    path: Option<PathBuf>,
    mode: Option<String>,
    group: Option<String>,
    datagram_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJournal {
    sink: Option<String>,
    identifier: Option<String>,
    default_priority: Option<String>,
    attribution: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProtocol {
    flush_after: Option<String>,
    json: Option<String>,
    json_max_fields: Option<usize>,
    json_identifier: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_line_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    max_buffered_bytes: Option<RawSize>,
    rate_limit_interval: Option<String>,
    rate_limit_burst: Option<u64>,
}

/// A size: a number of bytes, or text such as `"64MiB"` (environment values are always text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawService {
    idle_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    log_level: Option<String>,
}

/// Where client messages go (`journal.sink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The journal when its socket exists, else stdout.
    Auto,
    /// Always the journal.
    Journal,
    /// Always stdout, one line per message.
    Stdout,
}

/// What to do with a line whose text is a JSON object (`protocol.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonMode {
    /// Its keys become journal fields (README "Structured lines").
    Auto,
    /// It is plain text, like any other line.
    Off,
}

/// Largest `protocol.json_max_fields`: journald ignores an entry of more than 1024 fields
/// (ENTRY_FIELDS_MAX), and app and journald add a few dozen of their own.
pub const MAX_JSON_FIELDS: usize = 512;

/// Validated, effective settings. Serializes back to the file format for `app check-config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub socket: SocketSettings,
    pub journal: JournalSettings,
    pub protocol: ProtocolSettings,
    pub limits: Limits,
    pub service: ServiceSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketSettings {
    /// `None` when there is no default (not root, no `XDG_RUNTIME_DIR`): that is only an error
    /// if the socket must be bound, not when systemd passes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(serialize_with = "ser_mode")]
    pub mode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The datagram socket bound beside `path` when not socket-activated (`""`: none). Same
    /// mode and group.
    #[serde(serialize_with = "ser_opt_path")]
    pub datagram_path: Option<PathBuf>,
}

fn ser_opt_path<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(
        &path
            .as_deref()
            .map_or(String::new(), |p| p.display().to_string()),
    )
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalSettings {
    pub sink: SinkKind,
    pub identifier: String,
    pub default_priority: u8,
    pub attribution: Attribution,
}

/// `journal.attribution`: whether entries say which unit and command the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribution {
    /// `CLIENT_COMM`, `CLIENT_UNIT` … always; `OBJECT_SYSTEMD_UNIT` … too when running as uid 0.
    Auto,
    /// Only the credentials (`CLIENT_PID`, `CLIENT_UID`, `CLIENT_GID`).
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProtocolSettings {
    #[serde(with = "humantime_serde")]
    pub flush_after: Duration,
    pub json: JsonMode,
    /// Fields from one JSON object at most; the rest are kept in one `JSON_REST` field.
    pub json_max_fields: usize,
    /// SYSLOG_IDENTIFIER may come from a JSON line's `name`/`logger`.
    pub json_identifier: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub max_line_bytes: NonZeroUsize,
    pub max_connections: NonZeroUsize,
    /// Connections at once per client uid (per address for TCP); uid 0 is exempt.
    pub max_connections_per_uid: NonZeroUsize,
    /// Bytes read from clients and not yet taken by the sink, all connections together.
    #[serde(serialize_with = "ser_size")]
    pub max_buffered_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub rate_limit_interval: Duration,
    pub rate_limit_burst: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSettings {
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub log_level: String,
}

fn ser_size<S: serde::Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_size(*bytes))
}

fn ser_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

impl Settings {
    /// The effective settings as TOML, as `app check-config` prints them.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings always serialize")
    }
}

/// Which configuration file to read.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// The default path: a missing file is normal.
    Default(PathBuf),
    /// Named on the command line: it must exist.
    Explicit(PathBuf),
}

impl ConfigFile {
    pub fn path(&self) -> &Path {
        match self {
            ConfigFile::Default(p) | ConfigFile::Explicit(p) => p,
        }
    }
}

/// Values given as command-line flags: the top layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket_path: Option<PathBuf>,
    pub sink: Option<SinkKind>,
    pub log_level: Option<String>,
}

/// Everything `load` needs from the outside world.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    pub file: ConfigFile,
    /// The process environment (only `APP_*` and `XDG_RUNTIME_DIR` are looked at).
    pub env: &'a HashMap<String, String>,
    pub overrides: Overrides,
    /// Effective uid: decides the default socket path.
    pub euid: u32,
}

/// Reads, merges and validates every layer.
pub fn load(sources: &Sources<'_>) -> Result<Settings, Error> {
    let file_text = read_file(&sources.file)?;
    let origin = sources.file.path().display().to_string();

    // Each layer alone first, so that an error names the layer it comes from.
    let file_layer = file_text
        .as_deref()
        .map(|text| config::File::from_str(text, config::FileFormat::Toml));
    if let Some(layer) = &file_layer {
        deserialize(std::slice::from_ref(layer), &origin)?;
    }
    let env: HashMap<String, String> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("APP_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let env_layer = config::Environment::with_prefix("APP")
        .prefix_separator("_")
        .separator("__")
        // Values stay strings: `try_parsing(true)` would turn a mode of "0660" into 660.
        .source(Some(env.into_iter().collect()));
    deserialize(std::slice::from_ref(&env_layer), "environment")?;

    let mut builder = config::Config::builder();
    if let Some(layer) = file_layer {
        builder = builder.add_source(layer);
    }
    let raw = deserialize_builder(builder.add_source(env_layer), &origin)?;
    validate(raw, sources)
}

fn read_file(file: &ConfigFile) -> Result<Option<String>, Error> {
    match (std::fs::read_to_string(file.path()), file) {
        (Ok(text), _) => Ok(Some(text)),
        (Err(e), ConfigFile::Default(_)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (Err(e), _) => Err(Error::Config(format!("{}: {e}", file.path().display()))),
    }
}

fn deserialize<S>(layers: &[S], origin: &str) -> Result<RawConfig, Error>
where
    S: config::Source + Clone + Send + Sync + 'static,
{
    let mut builder = config::Config::builder();
    for layer in layers {
        builder = builder.add_source(layer.clone());
    }
    deserialize_builder(builder, origin)
}

fn deserialize_builder(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    origin: &str,
) -> Result<RawConfig, Error> {
    builder
        .build()
        .and_then(|c| c.try_deserialize::<RawConfig>())
        .map_err(|e| Error::Config(format!("{origin}: {}", describe(e))))
}

/// Renders a `config` error without the crate's own (relative, duplicated) origin suffix.
fn describe(e: config::ConfigError) -> String {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => format!("{key}: expected {expected}, found {unexpected}"),
        config::ConfigError::FileParse { cause, .. } => cause.to_string().trim_end().to_owned(),
        other => {
            let text = other.to_string();
            // "unknown field `x`, expected ... for key `limits`" → "limits.x: unknown key (expected ...)"
            match parse_unknown_field(&text) {
                Some((key, rest)) => format!("{key}: unknown key ({rest})"),
                None => text,
            }
        }
    }
}

fn parse_unknown_field(text: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let rest = rest.trim_start_matches(", ");
    let (expected, section) = match rest.rsplit_once(" for key `") {
        Some((expected, section)) => (expected, section.trim_end_matches('`')),
        None => (rest, ""),
    };
    let key = if section.is_empty() {
        field.to_owned()
    } else {
        format!("{section}.{field}")
    };
    Some((key, expected.to_owned()))
}

/// `protocol.flush_after` at most: a pause inside a line longer than this is not a pause.
pub const MAX_FLUSH_AFTER: Duration = Duration::from_secs(3600);
/// `limits.rate_limit_interval` at most.
pub const MAX_RATE_LIMIT_INTERVAL: Duration = Duration::from_secs(86400);
/// `service.idle_timeout` at most (humantime's year, 365.25 days).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(31_557_600);
/// `service.shutdown_timeout` at most (systemd's own stop timeout bounds the stop anyway).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(86400);

fn validate(raw: RawConfig, sources: &Sources<'_>) -> Result<Settings, Error> {
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

/// `/run/app.sock` for root, `$XDG_RUNTIME_DIR/app.sock` for everyone else (none without it).
pub fn default_socket_path(euid: u32, env: &HashMap<String, String>) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from(DEFAULT_ROOT_SOCKET));
    }
    env.get("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|dir| Path::new(dir).join("app.sock"))
}

impl SocketSettings {
    /// The socket path, for binding or connecting: an error if there is none.
    pub fn path(&self) -> Result<&Path, Error> {
        self.path.as_deref().ok_or_else(|| {
            Error::Config(
                "socket.path: not set, and XDG_RUNTIME_DIR is unset (use --socket PATH)".to_owned(),
            )
        })
    }
}

fn parse_sink(s: &str) -> Result<SinkKind, String> {
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
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal permission mode such as \"0660\""
        )),
    }
}

/// Syslog severity names as syslog(3) and journalctl spell them, in priority order.
const PRIORITY_NAMES: [&[&str]; 8] = [
    &["emerg", "panic"],
    &["alert"],
    &["crit"],
    &["err", "error"],
    &["warning", "warn"],
    &["notice"],
    &["info"],
    &["debug"],
];

/// A priority: `0`..`7` or a name (`"info"`, `"warning"` …).
pub fn parse_priority(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>()
        && n <= 7
    {
        return Ok(n);
    }
    let lower = s.to_ascii_lowercase();
    PRIORITY_NAMES
        .iter()
        .position(|names| names.contains(&lower.as_str()))
        .map(|p| p as u8)
        .ok_or_else(|| {
            format!("{s:?} is not a priority (0..7, or emerg, alert, crit, err, warning, notice, info, debug)")
        })
}

/// Binary size suffixes, as systemd's `MemoryMax=` reads them: `K` and `KiB` are both 1024.
const SIZE_UNITS: [(&[&str], u64); 4] = [
    (&["", "B"], 1),
    (&["K", "KiB"], 1 << 10),
    (&["M", "MiB"], 1 << 20),
    (&["G", "GiB"], 1 << 30),
];

/// A size in bytes: `67108864`, `"64MiB"`, `"64M"`, `"512KiB"`.
fn parse_size(s: &str) -> Result<u64, String> {
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
fn format_size(bytes: u64) -> String {
    for (names, scale) in SIZE_UNITS.iter().rev() {
        if bytes != 0 && bytes.is_multiple_of(*scale) {
            let suffix = names.last().expect("every unit has a name");
            return format!("{}{suffix}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as \"500ms\", \"30s\" or \"5m\": {e}"))
}

#[cfg(test)]
mod tests;
