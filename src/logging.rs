//! The daemon's own diagnostics: to the journal when stderr is the journal, else plain stderr.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// Changes the log filter while running (`service.log_level` on reload).
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl LogHandle {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| format!("{level:?}: {e}"))?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// True when systemd connected our stderr to the journal: `JOURNAL_STREAM` holds the
/// `device:inode` of that stream (systemd.exec(5), "$JOURNAL_STREAM").
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

/// Installs the global subscriber. `level` has already been validated by the config.
pub fn init(level: &str, journal_stream: Option<&str>) -> LogHandle {
    let filter = EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);

    let journal = stderr_is_journal(journal_stream)
        .then(|| tracing_journald::layer().ok())
        .flatten();
    match journal {
        Some(layer) => {
            use tracing_journald::{Priority, PriorityMappings};
            // tracing-journald maps INFO to notice (5) by default; info belongs at 6.
            let layer = layer
                .with_syslog_identifier("app".to_owned())
                .with_priority_mappings(PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                });
            registry.with(layer.boxed()).init();
        }
        None => {
            let stderr = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false);
            registry.with(stderr.boxed()).init();
        }
    }
    LogHandle { filter: handle }
}
