//! systemd's interfaces to a service: the sockets it passes (`activation`) and readiness and
//! status messages (`notify`).

pub mod activation;
pub mod notify;
