//! The sink: where client messages go. journald's native protocol through one datagram socket,
//! or plain lines on stdout when there is no journal (a developer's laptop).
//!
//! Connections encode their entries themselves (in parallel, on their own tasks) into a
//! [`Batch`] and hand it to the single sink task through a bounded channel. The bound is the
//! backpressure: when journald is slow the channel fills, connections wait on it, stop reading,
//! and the kernel's socket buffers push back on the clients. Nothing is dropped and nothing is
//! queued without bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

pub mod entry;
mod escape;
mod native;
mod stdout;

pub use entry::{BATCH_BYTES, Batch, JOURNAL_SOCKET, Target};

/// Batches in flight between the connections and the sink. With batches capped at
/// [`BATCH_BYTES`] this bounds the sink's queue to a few MiB.
const QUEUE_BATCHES: usize = 16;

/// Entries counted on their way through the sink: what a stop that cannot wait any longer
/// reports as undelivered is exactly `handed - delivered - lost`.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Entries handed to [`SinkHandle::send`] (counted before any wait for room).
    handed: AtomicU64,
    /// Entries the journal (or stdout) took.
    delivered: AtomicU64,
    /// Entries that can never be delivered (stdout closed).
    lost: AtomicU64,
}

impl SinkCounters {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// Entries handed over and neither delivered nor lost yet.
    pub fn pending(&self) -> u64 {
        let done = self.delivered() + self.lost();
        self.handed.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// The connections' side of the sink.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    target: Target,
    tx: mpsc::Sender<Batch>,
    counters: Arc<SinkCounters>,
}

impl SinkHandle {
    pub fn target(&self) -> Target {
        self.target
    }

    pub fn counters(&self) -> &Arc<SinkCounters> {
        &self.counters
    }

    /// Hands a batch to the sink, waiting while its queue is full (backpressure).
    pub async fn send(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        self.counters
            .handed
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        // The receiver lives until every handle is dropped, so this cannot fail.
        let _ = self.tx.send(batch).await;
    }

    /// Hands a batch over only if the queue has room; gives it back otherwise. For senders that
    /// must never wait on the journal (the supervisor, whose ticks feed the watchdog).
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.len() as u64;
        self.counters.handed.fetch_add(n, Ordering::AcqRel);
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                self.counters.handed.fetch_sub(n, Ordering::AcqRel);
                Err(b)
            }
        }
    }
}

/// Starts the sink task. It ends once every [`SinkHandle`] is dropped and the queue is written.
///
/// Everything it needs to deliver is opened here, before the service says it is ready: the
/// journal socket (unconnected, so that a journald restart needs no new one) and a spare memfd
/// for the first entry too large for a datagram. Out of descriptors later, it still delivers.
pub fn spawn(target: Target) -> (SinkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let counters = Arc::new(SinkCounters::default());
    let task = match target {
        Target::Journal => {
            let journal = native::JournalSocket::new(PathBuf::from(JOURNAL_SOCKET));
            tokio::spawn(native::run_journal(rx, journal, counters.clone()))
        }
        Target::Stdout => tokio::spawn(stdout::run_stdout(rx, counters.clone())),
    };
    (
        SinkHandle {
            target,
            tx,
            counters,
        },
        task,
    )
}
