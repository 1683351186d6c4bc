//! The library's error type: what callers match on, and the exit code each kind maps to.

use std::path::PathBuf;

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code for a failure while running (I/O, the journal, a lost socket).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage or configuration error (bad flag, bad config, unusable socket setup).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the source and the key.
    #[error("{0}")]
    Config(String),

    /// An inherited file descriptor cannot be served.
    #[error("fd {fd}: {reason}")]
    InheritedFd { fd: i32, reason: String },

    /// Another daemon answers on the socket path.
    #[error("another instance is listening on {}", .0.display())]
    SocketInUse(PathBuf),

    /// Something that is not a socket is in the way; it is never deleted.
    #[error("{}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),

    /// A setup step that failed for a reason outside our control.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code this error maps to (DESIGN §7).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::InheritedFd { .. }
            | Error::SocketInUse(_)
            | Error::NotASocket(_) => EXIT_USAGE,
            Error::Io { .. } => EXIT_FAILURE,
        }
    }
}
