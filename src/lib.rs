//! `app`: a Unix-socket front door to the systemd journal.
//!
//! Local programs connect to a stream socket and write lines; each line becomes one structured
//! journal entry that records who sent it. `main.rs` is a thin shell around this library:
//! [`systemd::activation`] gets the sockets (binding through [`listener`] when systemd passes
//! none), [`config`] the settings, and [`server::run`] does the rest.

pub mod budget;
pub mod cli;
pub mod config;
pub mod error;
pub mod journal;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod protocol;
pub mod ratelimit;
pub mod send;
pub mod server;
pub mod shutdown;
pub mod systemd;

pub use error::Error;
