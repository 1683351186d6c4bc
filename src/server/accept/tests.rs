//! Unit tests of `server::accept`.

use super::*;
use std::collections::HashMap;

use crate::budget::Budget;
use crate::journal::{self, Target};
use crate::server::state::Stats;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_panicking_connection_is_contained() {
    let other = tokio::spawn(async { 42 });
    let result = contain(async { panic!("bad input") }).await;
    assert_eq!(result, Err("bad input".to_owned()));
    let formatted = contain(async { panic!("client {}", 7) }).await;
    assert_eq!(formatted, Err("client 7".to_owned()));
    assert_eq!(other.await.unwrap(), 42, "other tasks carry on");
    assert_eq!(contain(async {}).await, Ok(()));
}

fn context() -> Context {
    let env = HashMap::new();
    let settings = crate::config::load(&crate::config::Sources {
        file: crate::config::ConfigFile::Default("/nonexistent/app.toml".into()),
        env: &env,
        overrides: Default::default(),
        euid: 0,
    })
    .unwrap();
    let (sink, _) = journal::spawn(Target::Stdout);
    Context {
        budget: Budget::new(settings.limits.max_buffered_bytes),
        settings: watch::channel(Arc::new(settings)).1,
        sink,
        stats: Default::default(),
        limiter: Default::default(),
        shutdown: CancellationToken::new(),
        store: None,
        attributions: Arc::new(crate::server::attribution::Attributions::new(false)),
    }
}

/// Issue 13.9: the idle exit cancels `shutdown`; a client that is in the backlog at that
/// moment must stay there for the next instance, not be accepted and cut off.
#[tokio::test]
async fn once_shutdown_is_decided_a_pending_client_stays_in_the_backlog() {
    for _ in 0..32 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        // What systemd keeps: the socket outlives this instance's accept loop.
        let held = listener.try_clone().unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        // Let the runtime see the connection ready before the decision is taken.
        tokio::task::yield_now().await;
        let ctx = context();
        ctx.shutdown.cancel();
        let accept = Accept {
            ctx: ctx.clone(),
            tracker: TaskTracker::new(),
            next_id: Default::default(),
            socket_name: None,
            heartbeat: None,
        };
        accept.run(Incoming::Unix(listener)).await;
        assert_eq!(
            ctx.stats.accepted.load(Ordering::Relaxed),
            0,
            "accepted after the decision to stop"
        );
        held.accept().expect("the client is still in the backlog");
    }
}

#[test]
fn uid_0_is_exempt_from_the_per_uid_limit_but_not_from_the_total() {
    let stats = Stats::default();
    let nobody = Key::Uid(65534);
    assert_eq!(stats.join(nobody, 8, 2), None);
    assert_eq!(stats.join(nobody, 8, 2), None);
    assert_eq!(
        stats.join(nobody, 8, 2).as_deref(),
        Some("too many connections from uid 65534")
    );
    assert_eq!(stats.join(Key::Uid(1000), 8, 2), None);
    for _ in 0..5 {
        assert_eq!(stats.join(Key::Uid(0), 8, 2), None);
    }
    assert_eq!(
        stats.join(Key::Uid(0), 8, 2).as_deref(),
        Some("too many connections")
    );
    stats.leave(nobody);
    assert_eq!(stats.join(nobody, 8, 2), None, "a slot of its own again");
    assert_eq!(stats.clients.load(Ordering::Relaxed), 8);
}

#[test]
fn status_summary() {
    let stats = Stats::default();
    stats.clients.store(1, Ordering::Relaxed);
    stats.messages.store(1042, Ordering::Relaxed);
    assert_eq!(stats.summary(), "1 client, 1042 messages, 0 suppressed");
    stats.clients.store(3, Ordering::Relaxed);
    assert_eq!(stats.summary(), "3 clients, 1042 messages, 0 suppressed");
}
