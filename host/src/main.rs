//! `fluxgate-host`: the gateway binary (CLI parsing, runtime, signals; errors via anyhow).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fluxgate_host::config::ConfigError;
use fluxgate_host::launch::{self, Launch};
use fluxgate_host::plan::{self, Overrides};
use fluxgate_host::telemetry::{self, LogFormat};

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
    /// TLS listen port, overriding tls.listen's port.
    #[arg(long)]
    tls_port: Option<u16>,
    /// Gossip port (UDP + TCP): turns clustering on, overriding cluster.gossip_listen's port.
    #[arg(long)]
    gossip_port: Option<u16>,
    /// Cluster nodes to join, host:port[,host:port] (turns clustering on).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: exit 0 if valid, else print every problem and exit 1.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Validate) = cli.command {
        return validate(cli.config.as_deref());
    }
    telemetry::init(cli.log_format, &cli.log_level);
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fluxgate-host: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn serve(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        port: cli.port,
        gossip_port: cli.gossip_port,
        join: cli.join.clone(),
        tls_port: cli.tls_port,
    };
    let plan = match &cli.config {
        Some(path) => plan::load_file(path, &overrides)?,
        None => plan::defaults(&overrides)?,
    };
    // Worker 0 (and the background tasks) on this thread's current-thread runtime;
    // `server.workers` > 1 starts the others, one thread and runtime each, when
    // serving begins (server::workers). No work stealing on the data path.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Registered before anything is served: a SIGTERM that arrives right after
        // startup must stop the gateway gracefully, not kill it.
        let shutdown = shutdown_signal();
        let running = launch::start(Launch {
            plan,
            config_path: cli.config.clone(),
            overrides,
            listener: None,
            tls_listener: None,
        })
        .await?;
        running.serve(shutdown).await?;
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called (not
/// when the future is first polled), so no signal is missed in between.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
