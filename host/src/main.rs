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
use fluxgate_host::plugins::check::{self, CheckOptions, Sample};
use fluxgate_host::scaffold;
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
    #[arg(long, short)]
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
    Validate {
        /// The config file (also accepted before the subcommand).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
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
    /// Write and check plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Write a ready plugin project in ./NAME: one working hook, one test, the build
    /// file and a README with the build command.
    New(NewArgs),
    /// Load a component as the gateway would, without starting one: contract version,
    /// hooks and needs, `init` with the config, one dry call of each hook. Exit 0, or 1
    /// with the reason (not a component, wrong world, old contract, init error, trap,
    /// timeout, memory, invalid output).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// The plugin's name: the project folder, and NAME.wasm in the plugin folder
    /// (letters, digits, '-', '_').
    name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    lang: scaffold::Lang,
    /// Folder to create the project in (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rust: depend on fluxgate-sdk by path (a FluxGate checkout's sdk/ folder). The
    /// default when the SDK this binary was built from is on this machine.
    #[arg(long, group = "sdk")]
    sdk_path: Option<PathBuf>,
    /// Rust: depend on fluxgate-sdk from a git repository holding FluxGate.
    #[arg(long, group = "sdk")]
    sdk_git: Option<String>,
    /// Rust: the revision (commit, tag or branch) of --sdk-git.
    #[arg(long, requires = "sdk_git")]
    sdk_rev: Option<String>,
    /// Rust: depend on a published fluxgate-sdk version (e.g. 0.2).
    #[arg(long, group = "sdk")]
    sdk_version: Option<String>,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The chain entry's config as JSON, given to `init` (default `{}`).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Path (and query) of the sample request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Method of the sample request.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A header of the sample request, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Client IP of the sample request.
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: String,
    /// Also make N fresh instances and print their cost (time, memory).
    #[arg(long, default_value_t = 0)]
    instances: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { config }) => {
            return validate(config.as_deref().or(cli.config.as_deref()));
        }
        Some(Command::Plugin {
            command: PluginCommand::New(args),
        }) => return plugin_new(args),
        Some(Command::Plugin {
            command: PluginCommand::Check(args),
        }) => return plugin_check(args),
        Some(Command::Upgrade { wait_s }) => {
            return report(control::upgrade_command(
                pid_path(&cli).as_deref(),
                Duration::from_secs(wait_s),
            ));
        }
        Some(Command::Health { url }) => return report(control::health_command(&url)),
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

fn plugin_new(args: NewArgs) -> ExitCode {
    let sdk = if let Some(path) = args.sdk_path {
        Some(scaffold::SdkSource::Path(path))
    } else if let Some(url) = args.sdk_git {
        Some(scaffold::SdkSource::Git {
            url,
            rev: args.sdk_rev,
        })
    } else {
        args.sdk_version.map(scaffold::SdkSource::Version)
    };
    let request = scaffold::NewPlugin {
        dir: args.dir.unwrap_or_else(|| PathBuf::from(&args.name)),
        name: args.name,
        lang: args.lang,
        sdk,
    };
    match scaffold::write(&request) {
        Ok(written) => {
            print!("{written}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fluxgate-host plugin new: {e}");
            ExitCode::FAILURE
        }
    }
}

fn plugin_check(args: CheckArgs) -> ExitCode {
    let file = args.file.display().to_string();
    match run_check(&args) {
        Ok(report) => {
            print!("{file}: OK\n{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{file}: FAILED ({}): {e:#}", kind_of(&e));
            ExitCode::FAILURE
        }
    }
}

/// The failure label of a check: the plugin's, or `usage` for the command line's.
fn kind_of(e: &anyhow::Error) -> &'static str {
    e.downcast_ref::<check::CheckError>()
        .map_or("usage", check::CheckError::kind)
}

fn run_check(args: &CheckArgs) -> anyhow::Result<check::Report> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut sample = Sample {
        method: args
            .method
            .parse()
            .with_context(|| format!("--method {}", args.method))?,
        client_ip: args.client_ip.clone(),
        ..Sample::default()
    };
    match args.path.split_once('?') {
        Some((path, query)) => {
            sample.path = path.to_owned();
            sample.query = Some(query.to_owned());
        }
        None => sample.path = args.path.clone(),
    }
    anyhow::ensure!(sample.path.starts_with('/'), "--path must start with '/'");
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected `name: value`"))?;
        sample.headers.push((
            name.trim()
                .to_ascii_lowercase()
                .parse()
                .with_context(|| format!("--header {header:?}: bad name"))?,
            value
                .trim()
                .parse()
                .with_context(|| format!("--header {header:?}: bad value"))?,
        ));
    }
    let options = CheckOptions {
        config_json: args.config.clone(),
        sample,
        instances: args.instances,
        limits: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok(runtime.block_on(check::check(&bytes, &options))?)
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
