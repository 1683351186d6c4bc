//! The daemon's own diagnostics: to the journal when stderr is the journal, else plain stderr.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// `SYSLOG_IDENTIFIER` of the daemon's own diagnostics in the journal. No client entry carries
/// it: a client's syslog tag equal to it is dropped (`encode::encode`), and
/// `journal.identifier` may not be set to it; and the daemon's own entries carry no `CLIENT_*`
/// field, which every client entry has.
pub const DAEMON_IDENTIFIER: &str = "app-daemon";

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
        Some(layer) => registry.with(JournalForwarder::start(layer)).init(),
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

/// Diagnostics waiting for the journal; beyond this they are counted and dropped.
const FORWARD_QUEUE: usize = 1024;

/// Sends the daemon's own diagnostics to the journal from a thread of their own.
///
/// tracing-journald writes with a blocking send, and journald may be stalled (the very situation
/// the daemon is built to ride out): logging from a runtime worker would then block the worker.
/// So events are formatted here, queued without waiting, and written by a dedicated thread
/// through tracing-journald; when the queue is full they are counted, and the count is logged
/// once the journal takes messages again.
struct JournalForwarder {
    tx: SyncSender<(Level, String)>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl JournalForwarder {
    fn start(layer: tracing_journald::Layer) -> Self {
        use tracing_journald::{Priority, PriorityMappings};
        // tracing-journald maps INFO to notice (5) by default; info belongs at 6.
        let layer = layer
            .with_syslog_identifier(DAEMON_IDENTIFIER.to_owned())
            .with_priority_mappings(PriorityMappings {
                info: Priority::Informational,
                debug: Priority::Debug,
                ..PriorityMappings::new()
            });
        let (tx, rx) = sync_channel(FORWARD_QUEUE);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        std::thread::Builder::new()
            .name("journal-log".to_owned())
            .spawn(move || forward(rx, dispatch, counter))
            .expect("spawning the log thread");
        JournalForwarder { tx, dropped }
    }
}

fn forward(
    rx: Receiver<(Level, String)>,
    dispatch: tracing::Dispatch,
    dropped: std::sync::Arc<AtomicU64>,
) {
    tracing::dispatcher::with_default(&dispatch, || {
        for (level, text) in rx {
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(
                    "{lost} log messages were dropped while the journal was not accepting them"
                );
            }
            match level {
                Level::ERROR => tracing::error!("{text}"),
                Level::WARN => tracing::warn!("{text}"),
                Level::INFO => tracing::info!("{text}"),
                Level::DEBUG => tracing::debug!("{text}"),
                Level::TRACE => tracing::trace!("{text}"),
            }
        }
    });
}

impl<S: Subscriber> Layer<S> for JournalForwarder {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        match self.tx.try_send((*event.metadata().level(), text.0)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// An event as one line: its message, then `key=value` for any other field.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, &format_args!("{value:?}"));
    }
}

impl Text {
    fn push(&mut self, field: &Field, value: &dyn std::fmt::Display) {
        use std::fmt::Write;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value}{rest}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}
