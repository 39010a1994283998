//! The binary's operator controls: signals (SIGTERM/SIGINT stop, SIGUSR2 upgrades,
//! SIGHUP reopens the log file and reloads the config), `fluxgate-host upgrade`, and
//! the `health` probe used by container health checks.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fluxgate_host::handoff::Handoff;
use fluxgate_host::launch::Stop;
use fluxgate_host::log_file::LogFile;
use fluxgate_host::reload::Reloader;
use fluxgate_host::{binary_upgrade, pid_file};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals the gateway acts on, installed before it serves.
pub struct Signals {
    term: Signal,
    interrupt: Signal,
    upgrade: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            upgrade: signal(SignalKind::user_defined2())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// What the signal loop acts with.
pub struct Control {
    pub handoff: Handoff,
    pub reloader: Option<Reloader>,
    pub log: Option<LogFile>,
    /// This program's path (as started) and arguments: what an upgrade runs again.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub upgrade_timeout: Duration,
}

impl Control {
    /// Acts on signals until one stops the gateway; says why it stops.
    pub async fn run(self, mut signals: Signals) -> Stop {
        loop {
            tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.interrupt.recv() => break,
                _ = signals.hangup.recv() => self.hangup(),
                _ = signals.upgrade.recv() => {
                    if self.upgrade().await {
                        return Stop::Upgraded;
                    }
                }
            }
        }
        tracing::info!("shutdown signal received");
        Stop::Shutdown
    }

    /// SIGHUP: the log file is reopened (logrotate moved it) and the config reloaded.
    fn hangup(&self) {
        if let Some(log) = &self.log {
            match log.reopen() {
                Ok(()) => tracing::info!(path = %log.path().display(), "log file reopened"),
                Err(e) => {
                    tracing::error!(path = %log.path().display(), error = %e, "cannot reopen the log file; writing to the old one")
                }
            }
        }
        match &self.reloader {
            Some(reloader) => {
                tracing::info!("SIGHUP: reloading the config");
                reloader.reload();
            }
            None => tracing::info!("SIGHUP: no config file to reload"),
        }
    }

    /// SIGUSR2: starts the binary at our path with our sockets; true once it serves.
    async fn upgrade(&self) -> bool {
        tracing::info!(exe = %self.exe.display(), "SIGUSR2: upgrading the binary");
        match binary_upgrade::start_successor(
            &self.exe,
            &self.args,
            &self.handoff,
            self.upgrade_timeout,
        )
        .await
        {
            Ok(pid) => {
                tracing::info!(
                    new_pid = pid,
                    "upgrade: the new process serves; this one stops accepting and drains"
                );
                true
            }
            Err(e) => {
                tracing::error!("upgrade failed: {e}; this process keeps serving");
                false
            }
        }
    }
}

/// `fluxgate-host upgrade`: SIGUSR2 to the process in the PID file, then waits until
/// the file names a new, running process (the old one drains on its own).
pub fn upgrade_command(pid_file: Option<&Path>, wait: Duration) -> anyhow::Result<String> {
    let Some(path) = pid_file else {
        bail!("no PID file: give --pid-file, or --config with server.pid_file set");
    };
    let old = pid_file::read(path)?;
    if !alive(old) {
        bail!("process {old} (from {}) is not running", path.display());
    }
    send_signal(old, libc::SIGUSR2).with_context(|| format!("signalling process {old}"))?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        // The new process writes the file once it serves.
        if let Some(new) = pid_file::read(path)
            .ok()
            .filter(|pid| *pid != old && alive(*pid))
        {
            return Ok(format!(
                "upgraded: process {new} serves; {old} stops accepting, drains and exits"
            ));
        }
        if !alive(old) {
            bail!("process {old} exited without a successor");
        }
    }
    bail!(
        "no new process took over within {wait:?} (see the gateway's log: the old one keeps serving)"
    )
}

/// Is `pid` a running process (not a zombie)?
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: Z = zombie, X = dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and has no memory effects in this process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `fluxgate-host health`: one GET over plain HTTP/1.0 (no client library, so the
/// runtime image needs no curl); success is status 200 within 5 s.
pub fn health_command(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url.parse().context("not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs can be probed");
    }
    let authority = uri.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let timeout = Duration::from_secs(5);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(authority.host(), port))?
        .next()
        .context("the host does not resolve")?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: fluxgate-health\r\n\r\n"
    )?;
    let mut head = Vec::new();
    stream.take(4096).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(format!("{url}: healthy"))
    } else {
        bail!("{url}: status {status:?}")
    }
}
