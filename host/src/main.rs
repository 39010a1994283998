//! `fluxgate-host`: the gateway binary (CLI parsing, runtime, signals; errors via anyhow).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fluxgate_host::config::ConfigError;
use fluxgate_host::handoff::Inherited;
use fluxgate_host::launch::{self, Launch, Stop};
use fluxgate_host::log_file::LogFile;
use fluxgate_host::plan::{self, Overrides};
use fluxgate_host::telemetry::{self, LogFormat};
use fluxgate_host::{binary_upgrade, pid_file, sd_notify};

mod control;

// mimalloc: glibc malloc showed up at ~5% of a proxied request's CPU; mimalloc's
// thread-local free lists make the per-request allocations (heads, header maps) cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs before `main` (and before mimalloc reads its options): mimalloc would commit
/// its arenas eagerly and back them with transparent huge pages, so every touched byte
/// costs 2 MiB of RSS (measured: the example plugin chain idled at 90 MB, with this at
/// about 35 MB). A value set in the environment still wins.
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = fluxgate_host::memory::tune_allocator;

/// FluxGate: a programmable API gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (gateway.toml); without it the gateway runs with defaults on :8080.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Listen port, overriding server.listen's port.
    #[arg(long, short)]
    port: Option<u16>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Write log lines (the access log included) to this file instead of stdout;
    /// SIGHUP reopens it (for logrotate).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// PID file, overriding server.pid_file (written once serving; read by `upgrade`).
    #[arg(long, global = true)]
    pid_file: Option<PathBuf>,
    /// TLS listen port, overriding tls.listen's port.
    #[arg(long)]
    tls_port: Option<u16>,
    /// Gossip port (UDP + TCP): turns clustering on, overriding cluster.gossip_listen's port.
    #[arg(long)]
    gossip_port: Option<u16>,
    /// Cluster nodes to join, host:port[,host:port] (turns clustering on).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Address other cluster nodes reach this one at (ip:port), overriding
    /// cluster.advertise (a pod's address is only known when it starts).
    #[arg(long)]
    advertise: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: exit 0 if valid, else print every problem and exit 1.
    Validate,
    /// Replace the running gateway (found by its PID file) with the binary now at its
    /// path, without closing a connection: sends it SIGUSR2 and waits for the new
    /// process to take over.
    Upgrade {
        /// Longest wait for the new process, in seconds.
        #[arg(long, default_value_t = 90)]
        wait_s: u64,
    },
    /// Probe a gateway's health endpoint: exit 0 on HTTP 200 (container health checks).
    Health {
        /// The URL to probe (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/health")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Validate) => return validate(cli.config.as_deref()),
        Some(Command::Upgrade { wait_s }) => {
            return report(control::upgrade_command(
                pid_path(&cli).as_deref(),
                Duration::from_secs(*wait_s),
            ));
        }
        Some(Command::Health { url }) => return report(control::health_command(url)),
        None => {}
    }
    let log = match telemetry::init(cli.log_format, &cli.log_level, cli.log_file.as_deref()) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("fluxgate-host: cannot open the log file: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(cli, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fluxgate-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fluxgate-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The PID file: `--pid-file`, else `server.pid_file` of `--config`.
fn pid_path(cli: &Cli) -> Option<PathBuf> {
    cli.pid_file.clone().or_else(|| {
        let path = cli.config.as_deref()?;
        plan::load_file(path, &Overrides::default())
            .ok()?
            .config
            .server
            .pid_file
    })
}

fn validate(path: Option<&Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("fluxgate-host validate: --config FILE is required");
        return ExitCode::from(2);
    };
    match plan::load_file(path, &Overrides::default()) {
        Ok(plan) => {
            println!(
                "{}: OK ({} routes, {} upstreams)",
                path.display(),
                plan.routes.len(),
                plan.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for problem in problems {
                eprintln!("{problem}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: Cli, log: Option<LogFile>) -> anyhow::Result<()> {
    // Taken now: after the binary is replaced on disk, /proc/self/exe names a deleted
    // file, and the upgrade must start what is at the path today.
    let exe = std::env::current_exe().context("finding this program's path")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let overrides = Overrides {
        port: cli.port,
        gossip_port: cli.gossip_port,
        join: cli.join.clone(),
        tls_port: cli.tls_port,
        advertise: cli.advertise.clone(),
    };
    let plan = match &cli.config {
        Some(path) => plan::load_file(path, &overrides)?,
        None => plan::defaults(&overrides)?,
    };
    let pid_file = cli
        .pid_file
        .clone()
        .or_else(|| plan.config.server.pid_file.clone());
    let upgrade_timeout = Duration::from_millis(plan.config.server.upgrade_timeout_ms);
    let inherited = Inherited::from_env().context("taking over the listening sockets")?;
    let upgraded = !inherited.is_empty();
    // One worker: a current-thread runtime, whose task wake-ups need no cross-thread
    // synchronisation (measurably cheaper per proxied request than a 1-thread pool).
    let workers = plan.config.server.workers;
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        runtime.worker_threads(workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Registered before anything is served: a SIGTERM that arrives right after
        // startup must stop the gateway gracefully, not kill it.
        let signals = control::Signals::install()?;
        let mut running = launch::start(Launch {
            plan,
            config_path: cli.config.clone(),
            overrides,
            listener: None,
            tls_listener: None,
            inherited,
        })
        .await?;
        let pid = std::process::id();
        if let Some(path) = &pid_file {
            pid_file::write(path, pid)?;
        }
        // The old process (after an upgrade) learns we serve; so does systemd.
        binary_upgrade::report_ready();
        if upgraded {
            sd_notify::notify(&format!("MAINPID={pid}\nREADY=1"));
        } else {
            sd_notify::notify("READY=1");
        }
        let control = control::Control {
            handoff: std::mem::take(&mut running.handoff),
            reloader: running.reloader.clone(),
            log,
            exe,
            args,
            upgrade_timeout,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let control = tokio::spawn(async move {
            let why = control.run(signals).await;
            let _ = stop_tx.send(why);
            why
        });
        let served = running
            .serve(async move { stop_rx.await.unwrap_or(Stop::Shutdown) })
            .await;
        let why = if control.is_finished() {
            control.await.unwrap_or(Stop::Shutdown)
        } else {
            control.abort();
            Stop::Shutdown
        };
        if let (Some(path), Stop::Shutdown) = (&pid_file, why) {
            pid_file::remove_if_ours(path, pid);
        }
        served?;
        Ok(())
    })
}
