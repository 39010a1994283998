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
        Self::start_with_env(args, &[])
    }

    /// Starts the binary with extra environment variables (`FLUXGATE_ADMIN_TOKEN` is
    /// otherwise removed, like `RUST_LOG`, so the test's own environment cannot leak in).
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_program(std::path::Path::new(BIN), args, env)
    }

    /// Starts `program` (a copy of the binary, for upgrades) like `start_with_env`.
    pub(crate) fn start_program(
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let cwd = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(program);
        command
            .current_dir(cwd.path())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("FLUXGATE_ADMIN_TOKEN")
            .env_remove("FLUXGATE_INHERIT_FDS")
            .env_remove("FLUXGATE_READY_FD")
            .env_remove("NOTIFY_SOCKET");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
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

    /// A line containing `needle` seen already, or else the next one (bounded).
    pub(crate) fn seen_or_wait_for(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    /// Every stdout line read so far, after draining what is already there.
    pub(crate) fn seen_lines(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    /// Every stdout line from now up to and including the first one containing `needle`.
    pub(crate) fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let from = self.seen.len();
        self.wait_for(needle);
        self.seen[from..].to_vec()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting for the exit.
    pub(crate) fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (bounded by `limit`) for the process to exit; None if it is still running.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
    // Each field once, under a name of its own: tracing writes its own "target"
    // ("access"), so the upstream target must not be called that.
    assert_eq!(log["client"], "127.0.0.1", "{line}");
    assert_eq!(
        log["upstream_target"],
        format!("http://{}", up.addr),
        "{line}"
    );
    assert_eq!(
        log["bytes"].as_u64(),
        Some(reply.body.len() as u64),
        "{line}"
    );
    assert_eq!(
        line.matches("\"target\"").count(),
        1,
        "one target key only: {line}"
    );
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

/// Writes `text` to `path` the way an editor saves: a temp file, then a rename.
fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.web]\ntargets = [{{ url = \"http://{}\" }}]\n\
             [[routes]]\npath = \"/*\"\nupstream = \"web\"\n",
            up.addr
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap().to_owned();
    let mut gw = Process::start(&["--config", &config]);
    let addr = gw.listening_addr();
    let url = format!("http://{addr}/slow/1500?q=drain");
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    // SIGTERM once the request is on the upstream, i.e. well inside its 1.5 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let termed = Instant::now();
    // Blocking waits run off the runtime: the upstream answering the request lives on it.
    let stopping = tokio::task::spawn_blocking(move || {
        gw.signal_term();
        gw.wait_for("shutting down: draining in-flight requests");
        let drained = gw.wait_for("connections drained");
        let status = gw.wait_exit(Duration::from_secs(12));
        (drained, status, termed.elapsed())
    });
    let reply = in_flight.await.unwrap();
    let answered = termed.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["path"], "/slow/1500", "the full answer: {echo}");
    assert_eq!(echo["query"], "q=drain", "{echo}");
    assert_eq!(echo["upstream"], "u", "{echo}");
    assert!(
        answered >= Duration::from_millis(500),
        "the request was in flight at SIGTERM (answered {answered:?} after it)"
    );
    let (drained, status, exited) = stopping.await.unwrap();
    assert!(drained.contains("all connections drained"), "{drained}");
    let status = status.expect("exited after draining");
    assert_eq!(status.code(), Some(0));
    // It exits once the request is done, not at the end of the 10 s grace period.
    assert!(
        exited < Duration::from_secs(6),
        "exited {exited:?} after SIGTERM"
    );
}

#[test]
fn a_rejected_reload_is_logged_with_the_problems_validate_prints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let good = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.users]\ntargets = [{ url = \"http://127.0.0.1:9\" }]\n\
                [[routes]]\npath = \"/a\"\nupstream = \"users\"\n";
    std::fs::write(&path, good).unwrap();
    let config = path.to_str().unwrap().to_owned();
    let mut gw = Process::start(&["--config", &config, "--log-format", "json"]);
    gw.listening_addr();
    save(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nlistn = \"x\"\n[upstreams.users]\ntargets = [{ url = \"http://127.0.0.1:9\" }]\n\
         [[routes]]\npath = \"/a\"\nupstream = \"users\"\n\
         [[routes]]\npath = \"/c\"\nupstream = \"userz\"\n\
         [[routes]]\npath = \"d\"\nupstream = \"users\"\n",
    );
    let lines = gw.lines_until("keeping the previous config");
    let prefix = "config reload rejected: ";
    let logged: Vec<String> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|log| {
            log["message"]
                .as_str()
                .and_then(|m| m.strip_prefix(prefix))
                .map(str::to_owned)
        })
        .collect();

    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut printed = stderr.lines();
    let header = printed.next().unwrap_or("");
    let printed: Vec<String> = printed.map(str::to_owned).collect();
    assert!(
        header.ends_with(&format!("{} problem(s)", printed.len())),
        "{stderr}"
    );
    assert_eq!(printed.len(), 3, "{stderr}");
    assert_eq!(
        logged,
        printed,
        "reload log lines:\n{}\nvalidate:\n{stderr}",
        lines.join("\n")
    );
    let status = gw.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_reload_that_keeps_plugins_dir_does_not_warn_about_it() {
    let dir = tempfile::tempdir().unwrap();
    // An absolute path, as a service manager would pass it.
    let path = std::path::absolute(dir.path().join("gateway.toml")).unwrap();
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let config = path.to_str().unwrap().to_owned();
    let mut gw = Process::start(&["--config", &config]);
    gw.listening_addr();
    // An edit that leaves [plugins] alone.
    save(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n",
    );
    let lines = gw.lines_until("config reloaded");
    assert!(
        !lines.iter().any(|l| l.contains("plugins.dir changed")),
        "plugins.dir did not change:\n{}",
        lines.join("\n")
    );
    assert_eq!(gw.terminate().code(), Some(0));
}

/// `workers = 3`: three event loops, each on its own thread with its own SO_REUSEPORT
/// listener, all serving: the kernel spreads new connections over them and each
/// worker's accepts are counted in `fluxgate_worker_connections_total`.
#[tokio::test]
async fn each_worker_serves_connections_on_its_own_listener() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nworkers = 3\naccess_log = false\n\
             [upstreams.web]\ntargets = [{{ url = \"http://{}\" }}]\n\
             [[routes]]\npath = \"/web/*\"\nupstream = \"web\"\n",
            up.addr
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap().to_owned();
    let mut gw = Process::start(&["--config", &config, "--port", "0"]);
    let addr = gw.listening_addr();
    let pid = gw.child.id();
    // The workers start when serving begins, just after the "listening" line.
    let thread_names = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut threads = thread_names();
    while !["fluxgate-w1", "fluxgate-w2"]
        .iter()
        .all(|w| threads.iter().any(|t| t == w))
    {
        assert!(Instant::now() < deadline, "worker threads: {threads:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        threads = thread_names();
    }
    // One request per new connection: each connection lands on one worker's queue.
    for i in 0..150 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /web/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer),
        )
        .await
        .expect("answer in time")
        .unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "request {i}");
    }
    let metrics = get(&client(), &format!("http://{addr}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for worker in 0..3 {
        let needle = format!("fluxgate_worker_connections_total{{worker=\"{worker}\"}} ");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count > 0, "worker {worker} accepted nothing:\n{text}");
    }
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
