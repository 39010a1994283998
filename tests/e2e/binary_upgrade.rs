//! Replacing the running binary without dropping anything (the real binary, a copy of
//! it replaced on disk as a package upgrade would): under concurrent load no request
//! fails and no connection is refused, and a WebSocket opened on the old process keeps
//! working until it closes. SIGHUP reopens the log file and forces a config reload.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cli::{BIN, Process};
use crate::policies::{WS_HANDSHAKE, echo, read_head};
use crate::support::upstream::Upstream;
use crate::support::{client, get};

/// A copy of the binary in `dir`, written as a package manager does: a new file
/// renamed over the old path (the running process keeps the old inode).
fn install_binary(dir: &Path) -> PathBuf {
    let path = dir.join("fluxgate-host");
    let temp = dir.join(".fluxgate-host.new");
    std::fs::copy(BIN, &temp).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    path
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The PID in the PID file, waiting (bounded) for it to be written: the process writes
/// it once it serves, which may be just after it logged its address.
fn read_pid(path: &Path) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no PID in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a process we started (directly or through the upgrade) by its PID.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the successor (not our child: the old process started it) when the test ends,
/// passed or not.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        terminate(self.0);
    }
}

/// Counts of the load while it ran.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

/// Keep-alive clients and one-request-per-connection clients, until `stop`.
fn start_load(
    addr: std::net::SocketAddr,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let (load, stop) = (load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Workers 0-2 reuse connections (a draining old process closes them after
            // their current request); 3-5 open a new connection every time.
            let keep_alive = worker < 3;
            let mut pooled = client();
            // Bounded in count as well as by `stop`.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if !keep_alive {
                    pooled = client();
                }
                let url = format!("http://{addr}/api/ping");
                let sent = tokio::time::timeout(
                    Duration::from_secs(10),
                    pooled.request(
                        http::Request::get(&url)
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(response)) if response.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(response.into_body()).await;
                        if body.is_ok() {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(e)) if e.is_connect() => {
                        eprintln!("connect error: {e:?}");
                        load.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed request: {other:?}");
                        load.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tasks
}

#[tokio::test]
async fn upgrading_the_binary_under_load_drops_nothing_and_old_websockets_finish() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let program = install_binary(dir.path());
    let pid_file = dir.path().join("fluxgate.pid");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 15000\npid_file = \"fluxgate.pid\"\n\
             upgrade_timeout_ms = 30000\naccess_log = false\n\
             [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
             [[routes]]\npath = \"/api/*\"\nupstream = \"u\"\nstrip_prefix = \"/api\"\n\
             [[routes]]\npath = \"/ws\"\nupstream = \"u\"\nwebsocket = true\n",
            up.addr
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let mut old = Process::start_program(&program, &["--config", &config_arg], &[]);
    let addr = old.listening_addr();
    let old_pid = old.pid();
    assert_eq!(
        read_pid(&pid_file),
        old_pid,
        "the PID file names the running process"
    );

    // A WebSocket on the old process.
    let mut ws = TcpStream::connect(addr).await.unwrap();
    ws.write_all(WS_HANDSHAKE.as_bytes()).await.unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut ws, b"before").await, b"before");

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_load(addr, load.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The package manager replaces the file; the operator asks for the upgrade.
    install_binary(dir.path());
    let upgraded = {
        let (program, pid_file) = (program.clone(), pid_file.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(program)
                .args([
                    "upgrade",
                    "--pid-file",
                    pid_file.to_str().unwrap(),
                    "--wait-s",
                    "40",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let said = String::from_utf8_lossy(&upgraded.stdout).into_owned()
        + &String::from_utf8_lossy(&upgraded.stderr);
    assert!(upgraded.status.success(), "upgrade failed: {said}");
    assert!(said.contains("upgraded"), "{said}");
    let new_pid = read_pid(&pid_file);
    assert_ne!(new_pid, old_pid, "{said}");
    let successor = Successor(new_pid);
    assert!(alive(new_pid));
    old.wait_for("upgrade: the new process serves");

    // Load goes on through the switch; the old process still holds the WebSocket.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        alive(old_pid),
        "the old process drains while its WebSocket is open"
    );
    assert_eq!(
        echo(&mut ws, b"after the upgrade").await,
        b"after the upgrade"
    );
    drop(ws);
    let exited = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit(Duration::from_secs(15));
        (status, old)
    })
    .await
    .unwrap();
    let (status, mut old) = exited;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the old process exits cleanly once its WebSocket closed"
    );
    let lines = old.seen_lines();
    assert!(
        lines.iter().any(|l| l.contains("all connections drained")),
        "{}",
        lines.join("\n")
    );

    // Still served, by the new process alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, failed, refused) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
    );
    println!("load during the upgrade: {ok} ok, {failed} failed, {refused} refused");
    assert_eq!((failed, refused), (0, 0), "{ok} ok");
    assert!(ok > 100, "the load ran: {ok}");
    let health = get(&client(), &format!("http://{addr}/api/v1/health"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(read_pid(&pid_file), new_pid);
    drop(successor);
    assert!(!alive(new_pid));
    assert!(!pid_file.exists(), "the last process removes its PID file");
}

#[tokio::test]
async fn a_successor_that_cannot_start_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let program = install_binary(dir.path());
    let pid_file = dir.path().join("fluxgate.pid");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\npid_file = \"fluxgate.pid\"\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let mut old = Process::start_program(&program, &["--config", &config_arg], &[]);
    let addr = old.listening_addr();
    // The new "binary" is broken: it exits at once.
    let broken = dir.path().join(".broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &program).unwrap();
    let output = Command::new(BIN)
        .args([
            "upgrade",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--wait-s",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    old.wait_for("upgrade failed");
    assert_eq!(read_pid(&pid_file), old.pid());
    let health = get(&client(), &format!("http://{addr}/api/v1/health"), &[]).await;
    assert_eq!(health.status, 200, "the old process keeps serving");
}

#[tokio::test]
async fn sighup_reopens_the_log_file_and_forces_a_reload() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
            up.addr
        ),
    )
    .unwrap();
    let (config_arg, log_arg) = (
        config.to_str().unwrap().to_owned(),
        log.to_str().unwrap().to_owned(),
    );
    let gw = Process::start(&[
        "--config",
        &config_arg,
        "--port",
        "0",
        "--log-file",
        &log_arg,
    ]);
    let addr = wait_for_log(&log, "fluxgate listening").await;
    let addr = listen_addr(&addr);
    let c = client();
    let reply = get(
        &c,
        &format!("http://{addr}/first"),
        &[("x-request-id", "req-one")],
    )
    .await;
    assert_eq!(reply.status, 200);
    wait_for_log(&log, "req-one").await;

    // logrotate moves the file away, then signals.
    let rotated = dir.path().join("gateway.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let generation = |body: serde_json::Value| body["config"]["generation"].as_u64().unwrap();
    let before = generation(
        get(&c, &format!("http://{addr}/api/v1/health"), &[])
            .await
            .json(),
    );
    let status = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&log, "log file reopened").await;
    wait_for_log(&log, "config reloaded").await;
    let after = generation(
        get(&c, &format!("http://{addr}/api/v1/health"), &[])
            .await
            .json(),
    );
    assert!(
        after > before,
        "an unchanged file was reloaded: {before} -> {after}"
    );
    get(
        &c,
        &format!("http://{addr}/second"),
        &[("x-request-id", "req-two")],
    )
    .await;
    wait_for_log(&log, "req-two").await;
    let old_text = std::fs::read_to_string(&rotated).unwrap();
    assert!(old_text.contains("req-one") && !old_text.contains("req-two"));
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Waits (bounded) for a line with `needle` in the log file; returns it.
async fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().find(|l| l.contains(needle))
        {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in {}: {}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listen_addr(line: &str) -> std::net::SocketAddr {
    let start = line.find("listen=").expect("listen field") + 7;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    let addr: std::net::SocketAddr = rest[..end].parse().unwrap();
    std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
}
