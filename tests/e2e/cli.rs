//! The real `fluxgate-host` binary: default start, --port, validate, SIGTERM, JSON logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::upstream::Upstream;
use crate::support::{client, get};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fluxgate-host");

/// A running gateway process whose stdout lines are collected on a channel.
pub(crate) struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The process's working folder (it creates `plugins.d` there when run without a
    /// config), so tests never write into the source tree.
    _cwd: tempfile::TempDir,
}

impl Process {
    pub(crate) fn start(args: &[&str]) -> Self {
        let cwd = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BIN)
            .current_dir(cwd.path())
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fluxgate-host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            _cwd: cwd,
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n"));
    }

    /// The address from the "fluxgate listening" line.
    pub(crate) fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("fluxgate listening");
        let start = line
            .find("listen=")
            .map(|i| i + 7)
            .or_else(|| line.find("\"listen\":\"").map(|i| i + 10));
        let rest = &line[start.expect("listen field")..];
        let end = rest.find([' ', '"']).unwrap_or(rest.len());
        let addr: SocketAddr = rest[..end].parse().expect("address");
        // 0.0.0.0 is where it listens; connect over loopback.
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    }

    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Process {
    /// Kills the process at once (no graceful leave), as a crash would.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn starts_without_config_answers_health_and_exits_zero_on_sigterm() {
    let mut gw = Process::start(&["--port", "0"]);
    let addr = gw.listening_addr();
    let reply = get(&client(), &format!("http://{addr}/api/v1/health"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let json = reply.json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["config"]["routes"], 0);
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn runs_a_config_file_with_port_override_and_json_access_log() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.web]\ntargets = [{{ url = \"http://{}\" }}]\n\
             [[routes]]\nname = \"web\"\npath = \"/web/*\"\nupstream = \"web\"\n",
            up.addr
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap().to_owned();
    let mut gw = Process::start(&["--config", &config, "--port", "0", "--log-format", "json"]);
    let addr = gw.listening_addr();
    let reply = get(&client(), &format!("http://{addr}/web/hello"), &[]).await;
    assert_eq!(reply.status, 200);
    let line = gw.wait_for("\"target\":\"access\"");
    let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(log["method"], "GET");
    assert_eq!(log["path"], "/web/hello");
    assert_eq!(log["route"], "web");
    assert_eq!(log["upstream"], "web");
    assert_eq!(log["status"], 200);
    assert!(log["duration_ms"].as_f64().is_some(), "{line}");
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[upstreams.users]\ntargets = [{ url = \"http://127.0.0.1:9000\" }]\n[[routes]]\npath = \"/u/:id\"\nupstream = \"users\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 routes, 1 upstreams)"));
}

#[test]
fn validate_prints_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listn = "0.0.0.0:8080"
[upstreams.users]
targets = [{ url = "http://127.0.0.1:9000" }]
balancer = "round_robin"
[[routes]]
path = "/a"
upstream = "users"
[[routes]]
path = "/b"
upstream = "users"
[[routes]]
path = "/c"
upstream = "userz"
[[routes]]
path = "d"
upstream = "users"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listn: unknown key"), "{stderr}");
    assert!(
        stderr.contains("routes[2].upstream: no upstream named \"userz\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[3].path: \"d\" must start with '/'"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn a_bad_config_at_startup_exits_nonzero_with_the_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[routes]]\npath = \"/x\"\nupstream = \"none\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--port", "0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].upstream: no upstream named \"none\""),
        "{stderr}"
    );
}
