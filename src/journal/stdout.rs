//! The stdout sink, for a machine without a journal: one plain line per entry.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use super::SinkCounters;
use super::entry::Batch;

pub(super) async fn run_stdout(mut rx: mpsc::Receiver<Batch>, counters: Arc<SinkCounters>) {
    let mut closed = false;
    while let Some(batch) = rx.recv().await {
        if closed {
            counters
                .lost
                .fetch_add(batch.len() as u64, Ordering::AcqRel);
            continue;
        }
        // Blocking stdout writes stay off the runtime's worker threads.
        let written = tokio::task::spawn_blocking(move || {
            let result = write_all_waiting(io::stdout().as_fd(), &batch.data);
            let bytes = match &result {
                Ok(()) => batch.data.len(),
                Err((n, _)) => *n,
            };
            // Only whole entries count as written.
            let entries = batch.ends.partition_point(|&end| end <= bytes);
            (entries, batch.len(), result.err().map(|(_, e)| e))
        })
        .await;
        let Ok((entries, total, error)) = written else {
            continue;
        };
        counters
            .delivered
            .fetch_add(entries as u64, Ordering::AcqRel);
        if let Some(e) = error {
            let lost = total - entries;
            counters.lost.fetch_add(lost as u64, Ordering::AcqRel);
            tracing::error!(
                "writing messages to stdout: {e}; {lost} messages lost, and every later one"
            );
            closed = true;
        }
    }
}

/// Writes all of `data` to `fd`, waiting whenever it would block: stdout may be a non-blocking
/// pipe that its reader drains slowly. On failure, says how many bytes were written first.
fn write_all_waiting(
    fd: std::os::fd::BorrowedFd<'_>,
    mut data: &[u8],
) -> Result<(), (usize, io::Error)> {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::io::Errno;
    let total = data.len();
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => {
                return Err((total - data.len(), io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err((total - data.len(), e.into())),
                }
            }
            Err(e) => return Err((total - data.len(), e.into())),
        }
    }
    Ok(())
}
