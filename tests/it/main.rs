//! Integration tests: the real binary, real sockets, and (in tests named `*journald*`, which
//! need root) a real systemd-journald.

mod activation;
mod attribution;
mod backpressure;
mod cli;
mod clients;
mod config;
mod fdstore_harness;
mod handover;
mod handover_crash;
mod handover_edges;
mod hostile;
mod json;
mod leftovers;
mod lifecycle;
mod limits;
mod logging;
mod protocol;
mod sink;
mod soak;
mod socket;
mod support;
mod syslog_clients;
