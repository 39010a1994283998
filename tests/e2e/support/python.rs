//! The Python parts of the HTTP/2 and gRPC tests (tests/e2e/scripts/), run with
//! `/usr/bin/python3` and Debian's python3-h2 and python3-grpcio (scripts/test.sh
//! installs them): one-shot scripts that print one JSON object, and a gRPC server
//! process stopped by its PID when dropped. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

/// A script in tests/e2e/scripts/.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/scripts")
        .join(name)
}

/// Runs `script` with `args` (off the async runtime), killing it if it runs past
/// `limit`, and parses the JSON object it prints last.
pub async fn run_json(script_name: &str, args: Vec<String>, limit: Duration) -> serde_json::Value {
    let path = script(script_name);
    let shown = format!("{script_name} {}", args.join(" "));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(PYTHON)
            .arg(&path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {PYTHON} {}: {e}", path.display()));
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait().expect("wait for the script") {
                Some(_) => break,
                None if Instant::now() >= deadline => {
                    // Ours, by its PID.
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{shown}: still running after {limit:?}");
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let output = child.wait_with_output().expect("script output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{shown} failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{shown}: not JSON ({e}):\n{stdout}\n{stderr}"))
    })
    .await
    .expect("script task")
}

/// tests/e2e/scripts/grpc_server.py running on a free loopback port.
pub struct GrpcServer {
    child: Child,
    pub port: u16,
}

impl GrpcServer {
    /// An h2c server, or a TLS one when `tls` gives (cert, key) PEM file paths.
    pub fn start(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script("grpc_server.py"))
            .args(["--lifetime", "300"])
            // Kept open: the server stops by itself when it closes (this test is gone).
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = cmd.spawn().expect("start grpc_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20));
        let port = line
            .ok()
            .and_then(|l| l.trim().strip_prefix("PORT ")?.parse().ok());
        match port {
            Some(port) => Self { child, port },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("grpc_server.py did not report its port (is python3-grpcio installed?)");
            }
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        // Ours, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
