//! `fluxgate-host`: the gateway binary (CLI parsing, runtime, signals; errors via anyhow).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fluxgate_host::config::{self, Config, ConfigError};
use fluxgate_host::telemetry::{self, LogFormat};
use fluxgate_host::{Gateway, reload};

// mimalloc: glibc malloc showed up at ~5% of a proxied request's CPU; mimalloc's
// thread-local free lists make the per-request allocations (heads, header maps) cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    match config::load_file(path) {
        Ok(config) => {
            println!(
                "{}: OK ({} routes, {} upstreams)",
                path.display(),
                config.routes.len(),
                config.upstreams.len()
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

/// `[cluster]` plus `--gossip-port` / `--join`, resolved to what the driver needs.
fn cluster_settings(
    config: &Config,
    cli: &Cli,
) -> anyhow::Result<Option<fluxgate_host::cluster::ClusterSettings>> {
    if config.cluster.is_none() && cli.gossip_port.is_none() && cli.join.is_empty() {
        return Ok(None);
    }
    let cluster = config.cluster.clone().unwrap_or_default();
    let mut listen: SocketAddr = cluster
        .gossip_listen
        .parse()
        .context("cluster.gossip_listen is not a socket address")?;
    if let Some(port) = cli.gossip_port {
        listen.set_port(port);
    }
    let advertise = match &cluster.advertise {
        Some(a) => a
            .parse()
            .context("cluster.advertise is not a socket address")?,
        None if listen.ip().is_unspecified() => {
            tracing::warn!(
                "cluster.advertise not set: other nodes are told 127.0.0.1 (single-host clusters only)"
            );
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        None => listen,
    };
    let secret_key = match &cluster.secret_key {
        Some(key) => Some(
            fluxgate_host::cluster::decode_key(key)
                .map_err(|e| anyhow::anyhow!("cluster.secret_key {e}"))?,
        ),
        None => None,
    };
    let mut join = cluster.join.clone();
    join.extend(cli.join.iter().cloned());
    Ok(Some(fluxgate_host::cluster::ClusterSettings {
        gossip_listen: listen,
        advertise,
        join,
        secret_key,
    }))
}

/// Applies `--port` to a config (also to every reloaded one).
fn override_port(config: &mut Config, port: Option<u16>) {
    if let Some(port) = port
        && let Ok(mut addr) = config.server.listen.parse::<SocketAddr>()
    {
        addr.set_port(port);
        config.server.listen = addr.to_string();
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(path) => config::load_file(path)?,
        None => Config::default(),
    };
    override_port(&mut config, cli.port);
    let addr: SocketAddr = config
        .server
        .listen
        .parse()
        .context("server.listen is not a socket address")?;
    // One worker: a current-thread runtime, whose task wake-ups need no cross-thread
    // synchronisation (measurably cheaper per proxied request than a 1-thread pool).
    let mut runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.server.workers > 1 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let plugin_dir = config.plugins.dir.clone();
        let cluster = cluster_settings(&config, &cli)?;
        let node_name = config.cluster.as_ref().and_then(|c| c.node_name.clone());
        let gateway = match node_name {
            Some(name) => Gateway::with_node_name(config, local, name),
            None => Gateway::new(config, local),
        };
        let cluster_task = match cluster {
            Some(settings) => {
                let gossip = settings.gossip_listen;
                let (view, task) = fluxgate_host::cluster::start(gateway.clone(), settings)
                    .await
                    .with_context(|| format!("cannot start gossip on {gossip}"))?;
                let _ = gateway.cluster.set(view);
                Some(task)
            }
            None => None,
        };
        fluxgate_host::plugins::watch::load_all(&gateway, &plugin_dir).await;
        let _plugin_watcher = fluxgate_host::plugins::watch::watch(gateway.clone(), &plugin_dir)
            .with_context(|| format!("watching the plugin folder {}", plugin_dir.display()))?;
        let _watcher = match &cli.config {
            Some(path) => {
                let port = cli.port;
                Some(
                    reload::watch(path, gateway.clone(), move |c| override_port(c, port))
                        .context("watching the config file")?,
                )
            }
            None => None,
        };
        tracing::info!(listen = %local, config = ?cli.config, "fluxgate listening");
        fluxgate_host::run(listener, gateway.clone(), shutdown_signal()).await?;
        if let (Some(view), Some(mut task)) = (gateway.cluster.get(), cluster_task) {
            // Peers should see a clean stop as "left", not wait to declare us dead.
            view.leave();
            if tokio::time::timeout(std::time::Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// The HTTP listener, with a deep accept backlog.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(fluxgate_host::server::listen_tcp(addr, 1024)?)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
