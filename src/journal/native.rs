//! Delivery to journald's native socket: one connected datagram socket, sendmmsg(2) in batches
//! paced to journald's drain rate ([`Pacer`]), and a sealed memfd for entries too large for a
//! datagram.

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrAny};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::SinkCounters;
use super::entry::Batch;

/// Entries larger than this always travel as a memfd, whatever `net.core.wmem_max` would
/// allow: one giant datagram would hold journald's receive queue hostage, and the path an entry
/// takes should not depend on a sysctl.
const MAX_DATAGRAM: usize = 512 * 1024;

/// Send buffer asked for on the journal socket, as sd_journal_sendv(3) does. The kernel caps it
/// at `net.core.wmem_max`, and it caps the largest entry that fits in one datagram: bigger
/// entries go through a memfd, exactly as systemd's own clients do.
const SNDBUF: usize = 8 * 1024 * 1024;

pub(super) async fn run_journal(
    mut rx: mpsc::Receiver<Batch>,
    mut journal: JournalSocket,
    counters: Arc<SinkCounters>,
) {
    loop {
        let batch = match rx.try_recv() {
            Ok(batch) => batch,
            Err(mpsc::error::TryRecvError::Empty) => {
                journal.pacer.idle();
                match rx.recv().await {
                    Some(batch) => batch,
                    None => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
        };
        let entries: Vec<&[u8]> = batch.entries().collect();
        let mut sent = 0;
        while sent < entries.len() {
            let n = journal.send_some(&entries[sent..]).await;
            sent += n;
            counters.delivered.fetch_add(n as u64, Ordering::AcqRel);
        }
    }
}

/// The one datagram socket to journald, opened at start. A journald that restarts with a new
/// socket at the same path is reached by connecting the same socket again: no new descriptor.
/// (Connected rather than `sendto` on an unconnected socket: only a connected socket can wait,
/// in poll(2), for room in journald's receive queue; an unconnected one reads as writable while
/// every send fails with EAGAIN.)
pub(super) struct JournalSocket {
    path: PathBuf,
    addr: SocketAddrAny,
    /// Opened at start; `None` only if that failed (then it is retried).
    socket: Option<UnixDatagram>,
    /// Connected to `addr`; cleared by any send error, so the next try connects again.
    connected: bool,
    /// A memfd made ahead of time for the next entry too large for a datagram: out of
    /// descriptors, that entry still goes out whole, at once.
    spare_memfd: Option<std::fs::File>,
    /// Set while journald is unreachable, so that the outage is reported once, not per entry.
    outage: Option<io::Error>,
    /// journald's receive queue was found full: wait for room before the next send.
    full: bool,
    pacer: Pacer,
}

impl JournalSocket {
    pub(super) fn new(path: PathBuf) -> Self {
        use rustix::net::addr::SocketAddrArg;
        let addr = rustix::net::SocketAddrUnix::new(path.as_path())
            .map(|a| a.as_any())
            .unwrap_or_else(|_| rustix::net::SocketAddrUnix::new_unnamed().as_any());
        let socket = match open_socket() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("opening a socket for the journal: {e}; retrying when needed");
                None
            }
        };
        JournalSocket {
            path,
            addr,
            socket,
            spare_memfd: new_memfd().ok(),
            connected: false,
            outage: None,
            full: false,
            pacer: Pacer::default(),
        }
    }

    /// Sends one entry, waiting (never dropping) while journald is busy or away.
    #[cfg(test)]
    async fn send(&mut self, entry: &[u8]) {
        self.send_some(&[entry]).await;
    }

    /// Sends the first of `entries` and as many after it as journald takes at once; returns how
    /// many went. Waits (never drops) while journald is busy or away.
    async fn send_some(&mut self, entries: &[&[u8]]) -> usize {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.try_send_some(entries).await {
                Ok(sent) => {
                    if let Some(e) = self.outage.take() {
                        tracing::info!(
                            "journal socket {} is back (it had failed with: {e})",
                            self.path.display()
                        );
                    }
                    return sent;
                }
                Err(e) => {
                    if self.outage.is_none() {
                        tracing::warn!(
                            "journal socket {}: {e}; holding messages until it accepts them again",
                            self.path.display()
                        );
                        self.outage = Some(e);
                    }
                    self.connected = false;
                    self.pacer.idle();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_send_some(&mut self, entries: &[&[u8]]) -> io::Result<usize> {
        let socket = match &self.socket {
            Some(s) => s,
            None => self.socket.insert(open_socket()?),
        };
        if !self.connected {
            rustix::net::connect(socket, &self.addr)?;
            self.connected = true;
        }
        let first = entries[0];
        if first.len() > MAX_DATAGRAM {
            tracing::debug!("entry of {} bytes sent through a memfd", first.len());
            send_memfd(socket, &mut self.spare_memfd, first).await?;
            return Ok(1);
        }
        let n = entries
            .iter()
            .take(MMSG_BATCH)
            .take_while(|e| e.len() <= MAX_DATAGRAM)
            .count();
        loop {
            if self.full {
                // journald's receive queue was full. Rather than refill it one slot at a time
                // as journald frees them, let it drain a while and refill many at once.
                match self.pacer.pause() {
                    Some(pause) => {
                        tokio::time::sleep(pause).await;
                        self.pacer.paused();
                    }
                    None => writable(socket).await?,
                }
                self.full = false;
            }
            match send_datagrams(socket, &entries[..n]) {
                Ok(sent) => {
                    self.pacer.sent(sent);
                    if sent < n {
                        // The kernel took what fit: the queue is full again.
                        self.pacer.full(Instant::now());
                        self.full = true;
                    }
                    return Ok(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pacer.full(Instant::now());
                    self.full = true;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc_errno::EMSGSIZE | libc_errno::ENOBUFS)
                    ) =>
                {
                    send_memfd(socket, &mut self.spare_memfd, first).await?;
                    return Ok(1);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `socket` can send. The socket is registered with the runtime only for the
/// wait: registered for good, the kernel would wake the runtime each time journald takes one of
/// our entries off its queue (the freed buffer space is a write-space event), a wake-up per
/// message that cost more CPU than everything else the daemon does.
async fn writable(socket: &UnixDatagram) -> io::Result<()> {
    // SAFETY: a `BorrowedFd` stays open and names the same socket for as long as the `AsyncFd`
    // holding it lives, which is all `register_with_interest` asks.
    let fd = unsafe { AsyncFd::register_with_interest(socket.as_fd(), Interest::WRITABLE) }
        .map_err(io::Error::from)?;
    let _ready = fd.writable().await?;
    Ok(())
}

/// Datagrams handed to the kernel per sendmmsg(2) call.
const MMSG_BATCH: usize = 64;

/// One sendmmsg(2) of up to [`MMSG_BATCH`] entries: returns how many of `entries` the kernel
/// took (at least one), or the error of the first. The message headers live on the stack: this
/// runs for every few dozen entries, and allocates nothing.
fn send_datagrams(socket: &UnixDatagram, entries: &[&[u8]]) -> io::Result<usize> {
    use rustix::net::MMsgHdr;
    let n = entries.len().min(MMSG_BATCH);
    let iovs: [[io::IoSlice<'_>; 1]; MMSG_BATCH] = std::array::from_fn(|i| {
        [io::IoSlice::new(
            entries.get(i).copied().unwrap_or_default(),
        )]
    });
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; MMSG_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut controls = controls.iter_mut();
    let mut messages: [MMsgHdr<'_>; MMSG_BATCH] = std::array::from_fn(|i| {
        MMsgHdr::new(
            &iovs[i],
            controls.next().expect("one control buffer per message"),
        )
    });
    Ok(rustix::net::sendmmsg(
        socket,
        &mut messages[..n],
        SendFlags::empty(),
    )?)
}

/// Paces refills of journald's receive queue while it is full.
///
/// A sender blocked on a full datagram queue is woken each time journald takes one entry out,
/// so a daemon that simply waits for the socket to become writable refills one slot per
/// wake-up, and both it and journald spend more time on wake-ups than on entries. Instead, once
/// the queue has room, the pacer lets journald drain part of it before the next `sendmmsg`
/// refills many slots at once. The queue's size (`net.unix.max_dgram_qlen` in journald's network
/// namespace, 512 under systemd, 10 by default) cannot be read from here, so it is learnt: the
/// longest run of entries the kernel took between two "full" answers bounds it from below, and
/// journald's drain rate is measured between "full" answers. The pause is a share of the time
/// the known capacity takes to drain, minus the timer's slack; when that is under a
/// millisecond (a small queue or a fast journald) there is no pause, and the daemon refills
/// at each wake-up as before. A run close to the whole capacity means the queue may have run
/// dry during the pause, and the share halves.
#[derive(Debug)]
struct Pacer {
    /// Entries the kernel took since the queue was last full, sent back to back.
    run: usize,
    /// When the queue was last found full; `None` after the sink ran out of entries, when the
    /// next run measures nothing but how much there was to send.
    last_full: Option<Instant>,
    /// The longest run seen: a lower bound on the queue's capacity.
    capacity: usize,
    /// journald's drain rate in entries per second, from runs that cannot have emptied the queue.
    rate: f64,
    /// Share of the known capacity journald may drain before the next refill.
    share: f64,
    /// The run now going in follows a pause (not a wait for room).
    paused: bool,
    /// A short refill after a pause, and how many times in a row it was exactly that.
    dry: (usize, u32),
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            run: 0,
            last_full: None,
            capacity: 0,
            rate: 0.0,
            share: Pacer::MAX_SHARE,
            paused: false,
            dry: (0, 0),
        }
    }
}

impl Pacer {
    const MAX_SHARE: f64 = 0.5;
    const MIN_SHARE: f64 = 1.0 / 8.0;
    /// tokio's timer fires up to a millisecond late.
    const TIMER_SLACK: Duration = Duration::from_millis(1);
    const MAX_PAUSE: Duration = Duration::from_millis(4);

    fn sent(&mut self, n: usize) {
        self.run += n;
    }

    /// The sink has nothing more to send for now.
    fn idle(&mut self) {
        self.run = 0;
        self.last_full = None;
    }

    /// The kernel said the queue is full.
    ///
    /// Between two "full" answers journald took exactly the `run` entries sent meanwhile:
    /// `run / elapsed` is its drain rate if the queue never ran dry, a lower bound if it did.
    /// After a stall (a rate near zero, the longest pause) the next refill finds the queue
    /// drained, and its sample replaces the estimate: the pacer re-measures after any stall, and
    /// a pause is never longer than the last observed drain needs.
    fn full(&mut self, now: Instant) {
        let run = std::mem::take(&mut self.run);
        let after_pause = std::mem::take(&mut self.paused);
        // The capacity is learnt from the longest run, which can overstate it (journald drains
        // while a long run goes in). If the refill after a pause is the very same short run
        // three times over, the queue ran dry during each pause and that run is its size.
        if after_pause && run > 0 && run * 10 <= self.capacity * 9 {
            if run == self.dry.0 {
                self.dry.1 += 1;
            } else {
                self.dry = (run, 1);
            }
            if self.dry.1 >= 3 {
                self.capacity = run;
                self.dry = (0, 0);
            }
        } else if after_pause {
            self.dry = (0, 0);
        }
        // Nearly the whole capacity went in: the queue may have run dry, journald idled.
        let nearly_whole = run * 10 > self.capacity * 9;
        if let Some(then) = self.last_full {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            if run > 0 && elapsed > 0.0 {
                let sample = run as f64 / elapsed;
                self.rate = if self.rate == 0.0 {
                    sample
                } else if nearly_whole {
                    // journald drained at least this fast, and the pause was longer than the
                    // drain needed: never keep a lower estimate (one measured across a stall,
                    // say) that would make the next pause as long again.
                    self.rate.max(sample)
                } else {
                    0.875 * self.rate + 0.125 * sample
                };
            }
        }
        if run > self.capacity {
            // A longer run than ever: the queue holds at least this many.
            self.capacity = run;
        } else if nearly_whole {
            // Pause less.
            self.share = (self.share / 2.0).max(Pacer::MIN_SHARE);
        } else if run * 4 < self.capacity {
            self.share = (self.share * 1.25).min(Pacer::MAX_SHARE);
        }
        self.last_full = Some(now);
    }

    /// The sink waited [`Pacer::pause`] before the run now starting.
    fn paused(&mut self) {
        self.paused = true;
    }

    /// How long to wait, once the queue has room, before refilling it.
    fn pause(&self) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let drain = Duration::from_secs_f64(self.share * self.capacity as f64 / self.rate);
        let pause = drain.checked_sub(Pacer::TIMER_SLACK)?;
        (pause >= Duration::from_millis(1)).then(|| pause.min(Pacer::MAX_PAUSE))
    }
}

/// The errno values we act on (std does not name them).
mod libc_errno {
    pub const EMSGSIZE: i32 = rustix::io::Errno::MSGSIZE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
}

fn open_socket() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SNDBUF);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn new_memfd() -> io::Result<std::fs::File> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        "journal-entry",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    Ok(std::fs::File::from(fd))
}

/// An entry too large for one datagram travels as a sealed memfd, exactly as
/// sd_journal_sendv(3) does: journald reads the fd's contents as the entry. It uses the spare
/// memfd made ahead of time, and makes the next spare afterwards; without a spare (out of
/// descriptors) the error holds the entry, to be retried, whole.
async fn send_memfd(
    socket: &UnixDatagram,
    spare: &mut Option<std::fs::File>,
    entry: &[u8],
) -> io::Result<()> {
    let mut file = match spare.take() {
        Some(file) => file,
        None => new_memfd()?,
    };
    let result = fill_and_send(socket, &mut file, entry).await;
    if result.is_err() && file.metadata().is_ok_and(|m| m.len() == 0) {
        // Not written to: still good for the next try.
        *spare = Some(file);
    } else {
        drop(file);
        *spare = new_memfd().ok();
    }
    result
}

async fn fill_and_send(
    socket: &UnixDatagram,
    file: &mut std::fs::File,
    entry: &[u8],
) -> io::Result<()> {
    use rustix::fs::SealFlags;
    file.write_all(entry)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        match rustix::net::sendmsg(socket, &[], &mut control, SendFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::AGAIN) => writable(socket).await?,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
