//! Configuration: the file < `APP_*` environment < command-line flags, validated into `Settings`.
//!
//! Loading happens in two steps (STYLE §8): each source is deserialized on its own into
//! `RawConfig` (in `file.rs`; so an unknown key or a wrong type is reported against the source
//! that holds it), then the merged result is turned into [`Settings`] with real types
//! (`validate.rs`). Nothing here reads the process environment: callers pass it in as a map,
//! which keeps every rule unit-testable.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

mod file;
mod validate;

use file::{deserialize, deserialize_builder, read_file};
use validate::{format_size, validate};

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

/// `protocol.flush_after` at most: a pause inside a line longer than this is not a pause.
pub const MAX_FLUSH_AFTER: Duration = Duration::from_secs(3600);
/// `limits.rate_limit_interval` at most.
pub const MAX_RATE_LIMIT_INTERVAL: Duration = Duration::from_secs(86400);
/// `service.idle_timeout` at most (humantime's year, 365.25 days).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(31_557_600);
/// `service.shutdown_timeout` at most (systemd's own stop timeout bounds the stop anyway).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(86400);

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
#[cfg(test)]
mod tests;
