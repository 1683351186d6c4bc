//! The command line (DESIGN §7).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::SinkKind;

/// Writes lines from local programs into the systemd journal, with who sent them.
#[derive(Debug, Parser)]
#[command(name = "app", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/app/app.toml, if it exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the sockets systemd passed, or bind socket.path.
    Serve(ServeArgs),
    /// Send messages to a running daemon: the arguments as one message, or each line of stdin.
    Send(SendArgs),
    /// Validate the configuration and print the effective settings.
    CheckConfig(ServeArgs),
    /// Make a running daemon reload its configuration, and wait until it has: exits 0 once the
    /// new settings are in force, non-zero with the reason if they were rejected. For
    /// `ExecReload=`.
    Reload(ReloadArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ReloadArgs {
    /// The daemon's pid [default: $MAINPID, which systemd sets for ExecReload=]
    #[arg(long, env = "MAINPID", value_name = "PID")]
    pub pid: i32,

    /// The daemon's runtime directory, where it writes each reload's outcome
    /// [default: $RUNTIME_DIRECTORY, which systemd sets with RuntimeDirectory=]
    #[arg(long, env = "RUNTIME_DIRECTORY", value_name = "DIR")]
    pub runtime_directory: PathBuf,

    /// How long to wait for the outcome
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    /// Socket to bind when systemd passes none [default: socket.path]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Where client messages go [default: journal.sink]
    #[arg(long, value_enum)]
    pub sink: Option<SinkKind>,

    /// Log filter for the daemon's own messages, e.g. "debug" [default: service.log_level]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct SendArgs {
    /// Socket of the daemon [default: socket.path]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Priority of every message: 0..7 or a name (err, warning, info …)
    #[arg(short, long, value_parser = parse_priority)]
    pub priority: Option<u8>,

    /// The message; without it, each line of stdin is one message
    pub message: Vec<String>,
}

fn parse_priority(s: &str) -> Result<u8, String> {
    crate::config::parse_priority(s)
}
