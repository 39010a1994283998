//! FluxGate nodes and HashiCorp's memberlist (the reference implementation) in one
//! cluster on loopback. The Go side is `tests/interop/memberlist-peer/main.go`, built
//! from Debian's `golang-github-hashicorp-memberlist-dev` in GOPATH mode, offline, once
//! per test run (cached under the target folder by a hash of its source; `scripts/test.sh`
//! installs the packages). It speaks a line protocol on stdin/stdout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::cluster::{
    Node, UdpBlackHole, alive_members, member_states, register, start_configured, url, within,
};
use crate::support::{TestClient, client, get};

const PEER_SOURCE: &str = include_str!("../interop/memberlist-peer/main.go");
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const WRONG_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// The Go peer's binary, built once per test run (and reused across runs until its
/// source changes).
fn peer_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_peer).clone()
}

fn build_peer() -> PathBuf {
    // FNV-1a of the source names the binary: a changed source builds a new one.
    let hash = PEER_SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("memberlist-peer");
    let binary = dir.join(format!("memberlist-peer-{hash:016x}"));
    if binary.exists() {
        return binary;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/memberlist-peer/main.go");
    let partial = dir.join(format!("building-{}", std::process::id()));
    let started = Instant::now();
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(&source)
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOCACHE", dir.join("go-cache"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `go` ({e}): the interop tests need Debian's golang-go and \
                 golang-github-hashicorp-memberlist-dev (scripts/test.sh installs them)"
            )
        });
    assert!(
        output.status.success(),
        "building the memberlist peer failed (are golang-go and \
         golang-github-hashicorp-memberlist-dev installed? scripts/test.sh installs them):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &binary).unwrap();
    eprintln!("memberlist peer built in {:?}", started.elapsed());
    binary
}

/// A running memberlist node.
struct GoPeer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    name: String,
    gossip: SocketAddr,
    /// memberlist's own log (the peer's standard error), shown when a wait fails.
    log: tempfile::NamedTempFile,
}

impl GoPeer {
    fn start(name: &str, key: Option<&str>) -> Self {
        Self::start_with(name, key, &[])
    }

    fn start_with(name: &str, key: Option<&str>, extra: &[&str]) -> Self {
        let mut command = Command::new(peer_binary());
        command
            .args(["-name", name, "-bind", "127.0.0.1"])
            .args(extra);
        if let Some(key) = key {
            command.args(["-key", key]);
        }
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start the memberlist peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = GoPeer {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            name: name.to_owned(),
            gossip: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let ready = peer.wait_for("ready ", Duration::from_secs(10));
        let addr = ready.rsplit(' ').next().unwrap_or_default();
        peer.gossip = addr.parse().expect("the peer's address");
        peer
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (bounded) for an output line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line.clone());
                if line.starts_with(prefix) {
                    return line;
                }
            }
        }
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{}: no line starting {prefix:?} within {limit:?}; saw:\n{}\nmemberlist's log \
             (last lines, newest first):\n{}",
            self.name,
            self.seen.join("\n"),
            tail.join("\n")
        );
    }

    /// `join ADDR`: Ok(number joined) or Err(memberlist's error).
    fn join(&mut self, addr: SocketAddr) -> Result<String, String> {
        self.send(&format!("join {addr}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let line = self.wait_for("", Duration::from_secs(15));
            if let Some(n) = line.strip_prefix("joined ") {
                return Ok(n.to_owned());
            }
            if let Some(e) = line.strip_prefix("error join: ") {
                return Err(e.to_owned());
            }
        }
        panic!("{}: no answer to join", self.name);
    }

    /// How this node sees every member it has not declared dead or left.
    fn members(&mut self) -> BTreeMap<String, String> {
        self.send("members");
        let line = self.wait_for("members", Duration::from_secs(5));
        line.split_whitespace()
            .skip(1)
            .filter_map(|pair| pair.split_once('='))
            .map(|(n, s)| (n.to_owned(), s.to_owned()))
            .collect()
    }

    /// Waits (bounded) for a membership event line about `node`, or finds it among the
    /// lines already read.
    fn wait_member(&mut self, node: &str, state: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let line = format!("member {node} {state}");
        if !self.seen.contains(&line) {
            self.wait_for(&line, limit);
        }
        started.elapsed()
    }

    /// memberlist's log so far.
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Stops the process at once (SIGKILL by its own PID), as a crash would.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both TCP and UDP on loopback right now.
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn state_of(c: &TestClient, node: &Node, name: &str) -> Option<String> {
    member_states(c, node).await.get(name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_memberlist_joins_fluxgate_and_fluxgate_joins_go() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    // Go joins a FluxGate node.
    let a = start_configured(dir.path(), "flux-a", None, None, "");
    let mut go = GoPeer::start("go-1", None);
    assert_eq!(go.join(a.gossip), Ok("1".to_owned()));
    go.wait_member("flux-a", "alive", Duration::from_secs(10));
    within(Duration::from_secs(10), "A sees go-1 alive", async || {
        state_of(&c, &a, "go-1").await.as_deref() == Some("alive")
    })
    .await;
    // A FluxGate node joins through the Go node: it learns A from Go's push/pull.
    let b = start_configured(dir.path(), "flux-b", None, Some(go.gossip), "");
    let formed = within(
        Duration::from_secs(20),
        "three alive everywhere",
        async || alive_members(&c, &a).await == 3 && alive_members(&c, &b).await == 3,
    )
    .await;
    go.wait_member("flux-b", "alive", Duration::from_secs(10));
    let members = go.members();
    assert_eq!(
        members.values().filter(|s| *s == "alive").count(),
        3,
        "{members:?}"
    );
    eprintln!("FluxGate x2 + memberlist: all see 3 alive after {formed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_gossip_interoperates_and_a_wrong_key_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let a = start_configured(dir.path(), "flux-a", Some(KEY), None, "");
    let mut go = GoPeer::start("go-1", Some(KEY));
    assert_eq!(go.join(a.gossip), Ok("1".to_owned()));
    go.wait_member("flux-a", "alive", Duration::from_secs(10));
    within(Duration::from_secs(10), "A sees go-1 alive", async || {
        state_of(&c, &a, "go-1").await.as_deref() == Some("alive")
    })
    .await;
    // Encrypted probes keep both alive past a suspicion timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(state_of(&c, &a, "go-1").await.as_deref(), Some("alive"));
    assert_eq!(
        go.members().get("flux-a").map(String::as_str),
        Some("alive")
    );

    // A Go node with the wrong key cannot join FluxGate...
    let mut intruder = GoPeer::start("go-intruder", Some(WRONG_KEY));
    let refused = intruder.join(a.gossip);
    assert!(refused.is_err(), "{refused:?}");
    // ...and a FluxGate node with the wrong key cannot join Go.
    let wrong = start_configured(
        dir.path(),
        "flux-wrong",
        Some(WRONG_KEY),
        Some(go.gossip),
        "",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        alive_members(&c, &wrong).await,
        1,
        "the wrong key is refused"
    );
    let members = go.members();
    assert!(!members.contains_key("flux-wrong"), "{members:?}");
    assert!(!members.contains_key("go-intruder"), "{members:?}");
    assert_eq!(state_of(&c, &a, "go-intruder").await, None);
    assert_eq!(state_of(&c, &a, "flux-wrong").await, None);
    eprintln!("wrong key refused: Go said {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_go_node_is_declared_dead_by_fluxgate_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let a = start_configured(dir.path(), "flux-a", None, None, "");
    let b = start_configured(dir.path(), "flux-b", None, Some(a.gossip), "");
    let mut go = GoPeer::start("go-1", None);
    assert_eq!(go.join(a.gossip), Ok("1".to_owned()));
    within(
        Duration::from_secs(20),
        "three alive on A and B",
        async || alive_members(&c, &a).await == 3 && alive_members(&c, &b).await == 3,
    )
    .await;

    // The Go node crashes; only FluxGate nodes are left to detect it (probe, suspicion,
    // dead).
    go.kill();
    let dead = within(
        Duration::from_secs(15),
        "go-1 dead on A and B",
        async || {
            state_of(&c, &a, "go-1").await.as_deref() == Some("dead")
                && state_of(&c, &b, "go-1").await.as_deref() == Some("dead")
        },
    )
    .await;
    eprintln!("killed Go node declared dead by both FluxGate nodes after {dead:?}");

    // A new Go node joins; then a FluxGate node crashes and the Go node declares it dead,
    // by its own probes (its log says so), not only by hearing it from A.
    let mut go2 = GoPeer::start("go-2", None);
    assert_eq!(go2.join(b.gossip), Ok("1".to_owned()));
    go2.wait_member("flux-a", "alive", Duration::from_secs(10));
    within(Duration::from_secs(10), "A sees go-2 alive", async || {
        state_of(&c, &a, "go-2").await.as_deref() == Some("alive")
    })
    .await;
    b.process.kill();
    // With three members at most one peer confirms memberlist's suspicion, so its timer
    // runs to about 12 s (4 s min, 24 s max): up to 25 s here.
    let took = go2.wait_member("flux-b", "dead", Duration::from_secs(25));
    let log = go2.log_text();
    assert!(
        log.contains("Suspect flux-b has failed, no acks received"),
        "memberlist probed flux-b itself:\n{log}"
    );
    eprintln!("killed FluxGate node declared dead by memberlist after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_pings_work_between_fluxgate_and_memberlist() {
    // Each side in turn is reachable over TCP only: the other's UDP probes fail and its
    // TCP fallback ping (ours to Go, Go's to us) must keep it alive.
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let go_hole = UdpBlackHole::start().await;
    let flux_hole = UdpBlackHole::start().await;
    let a = start_configured(dir.path(), "flux-a", None, None, "");
    let advertise = format!("advertise = \"{}\"\n", flux_hole.addr);
    let b = start_configured(dir.path(), "flux-b", None, Some(a.gossip), &advertise);
    flux_hole.forward_to(b.gossip);
    // memberlist advertises its bound port when it picks one itself: give it one.
    let bound = free_port();
    let (bound_arg, hole_port) = (bound.to_string(), go_hole.addr.port().to_string());
    let mut go = GoPeer::start_with(
        "go-1",
        None,
        &["-port", &bound_arg, "-advertise-port", &hole_port],
    );
    assert_eq!(go.gossip, go_hole.addr, "it advertises the hole");
    go_hole.forward_to(SocketAddr::from(([127, 0, 0, 1], bound)));
    assert_eq!(go.join(a.gossip), Ok("1".to_owned()));
    within(Duration::from_secs(20), "three alive on A", async || {
        alive_members(&c, &a).await == 3
    })
    .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        let on_a = member_states(&c, &a).await;
        assert_eq!(
            on_a.get("go-1").map(String::as_str),
            Some("alive"),
            "{on_a:?}"
        );
        assert_eq!(
            on_a.get("flux-b").map(String::as_str),
            Some("alive"),
            "{on_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // memberlist 0.2.2 does not report suspicions to a delegate: its log does.
    let log = go.log_text();
    assert!(
        !log.contains("Suspect flux-b") && !log.contains("Suspect flux-a"),
        "memberlist suspected a FluxGate node:\n{log}"
    );
    assert!(
        log.contains("Was able to connect to flux-b but other probes failed"),
        "memberlist reached flux-b over TCP only:\n{log}"
    );
    assert!(go.members().contains_key("flux-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_reach_every_fluxgate_node_with_a_go_member_among_ten() {
    // Nine FluxGate nodes and one memberlist node: Go receives our registry deltas but
    // never relays them (and sends no registry state), so each FluxGate node passes on
    // what is news to it. Measured: time until all nine list a registration.
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let first = start_configured(dir.path(), "flux-0", None, None, "");
    let mut go = GoPeer::start("go-1", None);
    assert_eq!(go.join(first.gossip), Ok("1".to_owned()));
    let mut nodes = vec![first];
    for i in 1..9 {
        let seed = if i % 2 == 0 {
            nodes[0].gossip
        } else {
            go.gossip
        };
        nodes.push(start_configured(
            dir.path(),
            &format!("flux-{i}"),
            None,
            Some(seed),
            "",
        ));
    }
    // The Go node's own list counts too: it may learn the last joiner a little after
    // the FluxGate nodes do (under a loaded CI machine it once lagged the check).
    let formed = within(
        Duration::from_secs(30),
        "ten alive on every node, the Go node included",
        async || {
            for node in &nodes {
                if alive_members(&c, node).await != 10 {
                    return false;
                }
            }
            go.members().len() == 10
        },
    )
    .await;
    eprintln!("9 FluxGate + 1 memberlist node formed in {formed:?}");

    let mut spread = Vec::new();
    for k in 0..12 {
        let origin = &nodes[(k * 5) % nodes.len()];
        let id = format!("interop-{k}");
        let service = format!("svc{k}");
        let made = Instant::now();
        assert_eq!(register(&c, origin, &id, &service, 9).await, 201);
        let mut missing: Vec<&Node> = nodes.iter().collect();
        while !missing.is_empty() {
            assert!(
                made.elapsed() < Duration::from_secs(40),
                "{id} not on every node after 40 s"
            );
            let mut still = Vec::new();
            for node in missing {
                let listed = get(&c, &url(node, "/api/v1/services"), &[]).await.json();
                if listed["services"].get(&service).is_none() {
                    still.push(node);
                }
            }
            missing = still;
            if !missing.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        spread.push(made.elapsed());
    }
    spread.sort();
    let p50 = spread[spread.len() / 2];
    let max = spread[spread.len() - 1];
    eprintln!(
        "with 1 memberlist node among 10: a registration reached all 9 FluxGate nodes in p50 \
         {p50:?}, max {max:?} (12 registrations)"
    );
    // Relaying through FluxGate peers: a second or so; push/pull alone would take up to
    // its 30 s interval.
    assert!(max < Duration::from_secs(5), "max {max:?}");
    // Go received deltas (it is a gossip target like any member) but relays none.
    go.members();
    assert!(go.seen.iter().any(|l| l.starts_with("user ")));
}
