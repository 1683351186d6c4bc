//! The `app` binary: parse flags, load config, take the sockets, run.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use app::cli::{Cli, Command, ServeArgs};
use app::config::{self, ConfigFile, Overrides, Settings, Sources};
use app::error::{EXIT_FAILURE, Error};
use app::server::supervisor::Control;
use app::systemd::notify::{self, Notifier};
use app::{logging, server, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(ref args) => serve(&cli, args),
        Command::CheckConfig(ref args) => check_config(&cli, args),
        Command::Send(ref args) => send(&cli, args),
        Command::Reload(ref args) => reload(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("app: {}", chain(&e));
            let code = e
                .downcast_ref::<Error>()
                .map_or(EXIT_FAILURE, Error::exit_code);
            ExitCode::from(code as u8)
        }
    }
}

/// `error: cause: cause…`, each link once.
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The configuration sources, kept so that a reload reads exactly the same layers again.
struct ConfigInputs {
    file: ConfigFile,
    env: HashMap<String, String>,
    overrides: Overrides,
}

impl ConfigInputs {
    fn new(cli: &Cli, args: &ServeArgs) -> Self {
        ConfigInputs {
            file: match &cli.config {
                Some(path) => ConfigFile::Explicit(path.clone()),
                None => ConfigFile::Default(config::DEFAULT_CONFIG_PATH.into()),
            },
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            overrides: Overrides {
                socket_path: args.socket.clone(),
                sink: args.sink,
                log_level: args.log_level.clone(),
            },
        }
    }

    fn load(&self) -> Result<Settings, Error> {
        config::load(&Sources {
            file: self.file.clone(),
            env: &self.env,
            overrides: self.overrides.clone(),
            euid: rustix::process::geteuid().as_raw(),
        })
    }
}

fn load_settings(cli: &Cli, args: &ServeArgs) -> Result<Settings, Error> {
    ConfigInputs::new(cli, args).load()
}

fn check_config(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let settings = load_settings(cli, args)?;
    print!("{}", settings.to_toml());
    Ok(())
}

fn send(cli: &Cli, args: &app::cli::SendArgs) -> anyhow::Result<()> {
    let sockets = match &args.socket {
        Some(path) => vec![path.clone()],
        None => {
            // The server's default path is not what a client means: a user sends to the system
            // socket when there is one. So only a configured socket.path counts here: without
            // XDG_RUNTIME_DIR and with a uid that is not root, there is no default path.
            let mut inputs = ConfigInputs::new(cli, &ServeArgs::default());
            let runtime_dir = inputs.env.remove("XDG_RUNTIME_DIR");
            let configured = config::load(&Sources {
                file: inputs.file.clone(),
                env: &inputs.env,
                overrides: Overrides::default(),
                euid: u32::MAX,
            })?
            .socket
            .path;
            app::send::candidates(configured, runtime_dir.as_deref())
        }
    };
    app::send::send(
        &sockets,
        args.priority,
        &args.message,
        &mut std::io::stdin().lock(),
    )
}

fn reload(args: &app::cli::ReloadArgs) -> anyhow::Result<()> {
    // RUNTIME_DIRECTORY may list several directories; ours is the first.
    let dir = args
        .runtime_directory
        .to_str()
        .and_then(|s| s.split(':').next())
        .map_or(args.runtime_directory.clone(), std::path::PathBuf::from);
    app::server::reload::reload_and_wait(args.pid, &dir, args.timeout)
        .map_err(|why| anyhow::anyhow!("reload of pid {}: {why}", args.pid))
}

fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    // Before anything else, so that an early SIGTERM waits for its handler.
    shutdown::hold_signals();
    // Everything that reads or changes the environment happens here, before any thread exists:
    // the first thread is the log forwarder that `logging::init` starts (when stderr is the
    // journal), so it comes after the last environment change
    // (`systemd::activation::acquire`), and the runtime after that. `tests/it/logging.rs` checks the order with strace.
    let inputs = ConfigInputs::new(cli, args);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let runtime_directory = std::env::var_os("RUNTIME_DIRECTORY");
    // SAFETY: single-threaded so far: no logging thread, no runtime, no other thread.
    let notifier = unsafe { Notifier::from_env() };
    // SAFETY: as above.
    let watchdog = unsafe { notify::take_watchdog() };
    // SAFETY: as above.
    let fd_store = unsafe { app::systemd::fdstore::FdStore::from_env(&notifier) };
    let result = (|| {
        let settings = inputs.load()?;
        // SAFETY: as above: still single-threaded, `logging::init` comes next.
        let listeners = unsafe { app::systemd::activation::acquire(&settings.socket) }?;
        // From here on threads may exist; nothing below touches the environment.
        let log = logging::init(&settings.service.log_level, journal_stream.as_deref());
        server::raise_fd_limit(settings.limits.max_connections.get());
        anyhow::Ok((settings, log, listeners))
    })();
    // Where `app reload` reads each reload's outcome: opened now, so that a reload out of
    // descriptors can still say it failed.
    let reload_status = runtime_directory.and_then(|dirs| {
        let first = dirs.to_str()?.split(':').next()?.to_owned();
        match app::server::reload::ReloadStatus::create(std::path::Path::new(&first)) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(
                    "{first}: cannot write the reload status (app reload will wait in vain): {e}"
                );
                None
            }
        }
    });
    let (settings, log, (listeners, from_store)) = match result {
        Ok(parts) => parts,
        Err(e) => {
            // No READY=1: systemd sees the start fail, with the reason in `systemctl status`.
            let errno = e
                .downcast_ref::<Error>()
                .map_or(5, |e| match e.exit_code() {
                    EXIT_FAILURE => 5, // EIO
                    _ => 22,           // EINVAL
                });
            notifier.failed(&chain(&e), errno);
            return Err(e);
        }
    };

    // One thread, like journald's own event loop. The daemon's share of the work per message
    // is a fraction of journald's (BENCHMARKS.md), so a second worker would only compete with
    // journald for the CPU, and add cross-thread wake-ups and memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let token = CancellationToken::new();
        let reload = shutdown::on_signals(token.clone()).context("installing signal handlers")?;
        let control = Control {
            shutdown: token,
            reload: Some(reload),
            reloader: Some(Box::new(move || inputs.load())),
            notifier,
            watchdog,
            log: Some(log),
            reload_status,
            fd_store,
            from_store,
        };
        server::run(listeners, settings, control).await?;
        anyhow::Ok(())
    });
    // Whatever is still blocked (a write to a stalled journal) is abandoned, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
