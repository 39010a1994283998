//! Binary upgrade without dropping a connection: the running process starts its binary
//! again with every listening socket handed over (`handoff`) and a pipe to report on;
//! once the new process says it is ready (it serves on those sockets), the old one
//! stops accepting and drains. The new process's side of the report is
//! [`report_ready`].

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::handoff::{self, Handoff, INHERIT_ENV};

/// The environment variable naming the pipe a new process reports "ready" on.
pub const READY_FD_ENV: &str = "FLUXGATE_READY_FD";

/// What the new process writes once it serves.
const READY: &[u8] = b"ready\n";

/// Why an upgrade did not happen (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) exited before it was ready: {status}")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) was not ready within {waited:?}; it was stopped")]
    Timeout { pid: u32, waited: Duration },
    #[error("preparing the upgrade: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts `exe` with `args`, the sockets of `handoff` and a ready pipe; returns the new
/// process's pid once it reported ready within `timeout`. A new process that exits or
/// does not report in time is stopped (it is ours) and the upgrade fails.
pub async fn start_successor(
    exe: &Path,
    args: &[OsString],
    handoff: &Handoff,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let (reader, writer) = std::io::pipe()?;
    let writer_fd = writer.as_raw_fd();
    let mut inherit = handoff.fds();
    inherit.push(writer_fd);
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .env(INHERIT_ENV, handoff.env_value())
        .env(READY_FD_ENV, writer_fd.to_string());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it only calls fcntl (no allocation, no
    // lock) on descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            for fd in &inherit {
                handoff::set_cloexec(*fd, false)?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    // Our end of the write side: once the child's copy closes too, the read sees EOF.
    drop(writer);
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), sockets = handoff.len(), "upgrade: new process started");
    let report = tokio::task::spawn_blocking(move || read_report(reader));
    match tokio::time::timeout(timeout, report).await {
        Ok(Ok(report)) if report.starts_with(READY) => Ok(pid),
        Ok(_) => {
            // It closed the pipe without the word: it is exiting (or exited).
            let status = tokio::task::spawn_blocking(move || match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            })
            .await
            .unwrap_or_else(|e| e.to_string());
            Err(UpgradeError::Exited { pid, status })
        }
        Err(_) => {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            Err(UpgradeError::Timeout {
                pid,
                waited: timeout,
            })
        }
    }
}

/// Reads the child's report: up to a newline or EOF, at most a few bytes.
fn read_report(mut reader: std::io::PipeReader) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 64 {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    got
}

/// The new process's side: tells the process that started it (if any) that it serves.
/// Without `FLUXGATE_READY_FD` (a normal start) this does nothing.
pub fn report_ready() {
    let Ok(text) = std::env::var(READY_FD_ENV) else {
        return;
    };
    let Ok(fd) = text.parse::<RawFd>() else {
        tracing::warn!("{READY_FD_ENV}={text:?} is not a descriptor number");
        return;
    };
    // 0-2 are stdio, and an unopened number is not ours to adopt.
    if fd < 3 || handoff::set_cloexec(fd, true).is_err() {
        tracing::warn!("{READY_FD_ENV}={fd} is not an open descriptor");
        return;
    }
    // SAFETY: the parent opened this pipe for us, named it in READY_FD_ENV and cleared
    // close-on-exec on it (checked open above); nothing else in this process uses it,
    // and it is adopted once: the variable is only read here.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = pipe.write_all(READY) {
        tracing::warn!(error = %e, "cannot report ready to the old process");
    }
}
