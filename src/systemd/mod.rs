//! systemd's interfaces to a service: readiness and status messages (`notify`).

pub mod notify;
