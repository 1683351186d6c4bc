//! systemd's interfaces to a service: the sockets it passes (`activation`), readiness and
//! status messages (`notify`) and the file-descriptor store (`fdstore`).

pub mod activation;
pub mod fdstore;
pub mod notify;
