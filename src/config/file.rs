//! The configuration as written: [`RawConfig`] mirrors the file (and each other source), read
//! and deserialized one source at a time so that an error names the source that holds it.

use std::path::PathBuf;

use serde::Deserialize;

use super::*;
use crate::error::Error;

/// The file as written. Every field is optional: a missing one takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub(super) socket: RawSocket,
    pub(super) journal: RawJournal,
    pub(super) protocol: RawProtocol,
    pub(super) limits: RawLimits,
    pub(super) service: RawService,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSocket {
    pub(super) path: Option<PathBuf>,
    pub(super) mode: Option<String>,
    pub(super) group: Option<String>,
    pub(super) datagram_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawJournal {
    pub(super) sink: Option<String>,
    pub(super) identifier: Option<String>,
    pub(super) default_priority: Option<String>,
    pub(super) attribution: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProtocol {
    pub(super) flush_after: Option<String>,
    pub(super) json: Option<String>,
    pub(super) json_max_fields: Option<usize>,
    pub(super) json_identifier: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_line_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_uid: Option<usize>,
    pub(super) max_buffered_bytes: Option<RawSize>,
    pub(super) rate_limit_interval: Option<String>,
    pub(super) rate_limit_burst: Option<u64>,
}

/// A size: a number of bytes, or text such as `"64MiB"` (environment values are always text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawService {
    pub(super) idle_timeout: Option<String>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) log_level: Option<String>,
}

pub(super) fn read_file(file: &ConfigFile) -> Result<Option<String>, Error> {
    match (std::fs::read_to_string(file.path()), file) {
        (Ok(text), _) => Ok(Some(text)),
        (Err(e), ConfigFile::Default(_)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (Err(e), _) => Err(Error::Config(format!("{}: {e}", file.path().display()))),
    }
}

pub(super) fn deserialize<S>(layers: &[S], origin: &str) -> Result<RawConfig, Error>
where
    S: config::Source + Clone + Send + Sync + 'static,
{
    let mut builder = config::Config::builder();
    for layer in layers {
        builder = builder.add_source(layer.clone());
    }
    deserialize_builder(builder, origin)
}

pub(super) fn deserialize_builder(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    origin: &str,
) -> Result<RawConfig, Error> {
    builder
        .build()
        .and_then(|c| c.try_deserialize::<RawConfig>())
        .map_err(|e| Error::Config(format!("{origin}: {}", describe(e))))
}

/// Renders a `config` error without the crate's own (relative, duplicated) origin suffix.
pub(super) fn describe(e: config::ConfigError) -> String {
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

pub(super) fn parse_unknown_field(text: &str) -> Option<(String, String)> {
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
