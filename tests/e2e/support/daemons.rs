//! Real servers the tests start on free loopback ports: redis-server, etcd, dnsmasq,
//! pebble and pebble-challtestsrv (Debian packages; scripts/test.sh installs them).
//! Each is stopped by its PID when dropped, and every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process this test started.
pub struct Daemon {
    child: Child,
    pub port: u16,
    /// Its working folder (data, logs).
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    name: &'static str,
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn program(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!(
        "{name} is not installed (scripts/test.sh installs redis-server, etcd-server, dnsmasq and pebble)"
    );
}

impl Daemon {
    fn spawn(
        name: &'static str,
        port: u16,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        args: &[String],
    ) -> Self {
        Self::spawn_with_env(name, port, dir, temp, args, &[])
    }

    fn spawn_with_env(
        name: &'static str,
        port: u16,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(program(name))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            port,
            dir,
            _temp: temp,
            name,
        }
    }

    /// redis-server on a free port, no persistence.
    pub fn redis() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        Self::redis_at(free_port(), dir, Some(temp))
    }

    /// redis-server on `port` (to bring a stopped one back).
    pub fn redis_at(port: u16, dir: PathBuf, temp: Option<tempfile::TempDir>) -> Self {
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        .map(str::to_owned);
        let mut d = Self::spawn("redis-server", port, dir, temp, &args);
        d.wait_until(|| redis_ping(port));
        d
    }

    /// etcd with its data in `dir` (kept across a restart), client URL on `port`.
    pub fn etcd_at(port: u16, peer: u16, dir: PathBuf, temp: Option<tempfile::TempDir>) -> Self {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let args = [
            "--name".to_owned(),
            "t".to_owned(),
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--listen-client-urls".to_owned(),
            client.clone(),
            "--advertise-client-urls".to_owned(),
            client,
            "--listen-peer-urls".to_owned(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_owned(),
            peer.clone(),
            "--initial-cluster".to_owned(),
            format!("t={peer}"),
        ];
        let mut d = Self::spawn("etcd", port, dir, temp, &args);
        d.wait_until(|| http_ok(port, "/health"));
        d
    }

    /// A fresh etcd on free ports.
    pub fn etcd() -> (Self, u16) {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        let peer = free_port();
        (Self::etcd_at(free_port(), peer, dir, Some(temp)), peer)
    }

    /// dnsmasq answering on 127.0.0.1:`port` (UDP and TCP) from `records` only
    /// (`--srv-host=…`, `--host-record=…`), with TTL `ttl_s` on them.
    pub fn dnsmasq_at(
        port: u16,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        ttl_s: u32,
        records: &[String],
    ) -> Self {
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".to_owned(),
            "--bind-interfaces".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            format!(
                "--log-facility={}",
                dir.join("dnsmasq-queries.log").display()
            ),
            format!("--local-ttl={ttl_s}"),
            "--user=root".to_owned(),
        ];
        args.extend(records.iter().cloned());
        let mut d = Self::spawn("dnsmasq", port, dir, temp, &args);
        d.wait_until(|| TcpStream::connect(("127.0.0.1", port)).is_ok());
        d
    }

    /// pebble-challtestsrv as pebble's DNS server only: DNS on a free port (returned),
    /// its management API on `port`, every A query answered with 127.0.0.1 (set through
    /// that API), no AAAA answers, none of its own challenge servers.
    pub fn challtestsrv() -> (Self, u16) {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        let (dns, management) = (free_port(), free_port());
        let args = [
            "-dns01".to_owned(),
            format!("127.0.0.1:{dns}"),
            "-management".to_owned(),
            format!("127.0.0.1:{management}"),
            "-http01".to_owned(),
            String::new(),
            "-https01".to_owned(),
            String::new(),
            "-tlsalpn01".to_owned(),
            String::new(),
            "-defaultIPv6".to_owned(),
            String::new(),
        ];
        let mut d = Self::spawn("pebble-challtestsrv", management, dir, Some(temp), &args);
        d.wait_until(|| TcpStream::connect(("127.0.0.1", management)).is_ok());
        d.set_default_ipv4("127.0.0.1");
        (d, dns)
    }

    /// challtestsrv: answer every A query with `ip` from now on.
    pub fn set_default_ipv4(&self, ip: &str) {
        let reply = http_post(
            self.port,
            "/set-default-ipv4",
            &format!("{{\"ip\":\"{ip}\"}}"),
        );
        assert!(
            reply
                .as_deref()
                .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
            "challtestsrv set-default-ipv4 failed: {reply:?}"
        );
    }

    /// pebble (an ACME CA for tests) with `config` (JSON, in `dir` with its TLS
    /// files), its DNS queries sent to `dns_port`, ready once `port` (the ACME
    /// listener) and `management` accept connections. Validation without random
    /// sleeps, no nonces rejected on purpose, no authorization reused (every order is
    /// validated).
    pub fn pebble(
        port: u16,
        management: u16,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        config: &str,
        dns_port: u16,
    ) -> Self {
        let args = [
            "-config".to_owned(),
            config.to_owned(),
            "-dnsserver".to_owned(),
            format!("127.0.0.1:{dns_port}"),
        ];
        let env = [
            ("PEBBLE_VA_NOSLEEP", "1"),
            ("PEBBLE_WFE_NONCEREJECT", "0"),
            ("PEBBLE_AUTHZREUSE", "0"),
        ];
        let mut d = Self::spawn_with_env("pebble", port, dir, temp, &args, &env);
        d.wait_until(|| {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", management)).is_ok()
        });
        d
    }

    /// What the process wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the process, by its PID: a server that stops
    /// answering without closing its connections.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the process (by its PID) and waits for it.
    pub fn stop(&mut self) {
        // A frozen process must be thawed to die cleanly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_until(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
                    .unwrap_or_default();
                panic!("{} exited ({status}):\n{log}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PING answered with PONG.
pub fn redis_ping(port: u16) -> bool {
    redis_command(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
}

/// Sends one inline Redis command and returns the raw reply.
pub fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// POSTs a JSON body over plain HTTP/1.1 and returns the raw answer.
fn http_post(port: u16, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 512];
    s.read(&mut buf)
        .is_ok_and(|n| String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.0 200"))
}
