//! Three real `fluxgate-host` processes gossiping on loopback: a registration made on
//! one node is served by the others; a killed node's registrations are withdrawn; a
//! restarted node rejoins; a node only TCP can reach stays alive (the fallback ping).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::cli::Process;
use crate::support::upstream::Upstream;
use crate::support::{TestClient, client, get, send};

/// A node: its process, HTTP address and gossip address.
pub(crate) struct Node {
    pub(crate) process: Process,
    pub(crate) http: SocketAddr,
    pub(crate) gossip: SocketAddr,
}

pub(crate) fn start_node(join: Option<SocketAddr>) -> Node {
    let join_arg = join.map(|a| a.to_string());
    let mut args = vec!["--port", "0", "--gossip-port", "0"];
    if let Some(join) = &join_arg {
        args.extend(["--join", join.as_str()]);
    }
    node(Process::start(&args))
}

/// Reads a started node's gossip and HTTP addresses from its log.
fn node(mut process: Process) -> Node {
    let line = process.wait_for("cluster starting");
    let start = line.find("gossip=").expect("gossip field") + "gossip=".len();
    let rest = &line[start..];
    let gossip: SocketAddr = rest[..rest.find(' ').unwrap_or(rest.len())]
        .parse()
        .expect("gossip address");
    let http = process.listening_addr();
    Node {
        process,
        http,
        gossip: SocketAddr::from(([127, 0, 0, 1], gossip.port())),
    }
}

/// Registers `id` of `service` on `node`, pointing at `port` on loopback.
pub(crate) async fn register(
    c: &TestClient,
    node: &Node,
    id: &str,
    service: &str,
    port: u16,
) -> u16 {
    let body =
        format!(r#"{{"id":"{id}","service":"{service}","address":"127.0.0.1","port":{port}}}"#);
    let request = Request::post(url(node, "/api/v1/services/register"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(c, request).await.status.as_u16()
}

pub(crate) fn url(node: &Node, path: &str) -> String {
    format!("http://{}{path}", node.http)
}

pub(crate) async fn alive_members(c: &TestClient, node: &Node) -> usize {
    let health = get(c, &url(node, "/api/v1/health"), &[]).await.json();
    health["cluster"]["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
}

/// How `node` sees each member: name → state ("alive", "suspect", "dead", "left").
pub(crate) async fn member_states(
    c: &TestClient,
    node: &Node,
) -> std::collections::BTreeMap<String, String> {
    let health = get(c, &url(node, "/api/v1/health"), &[]).await.json();
    health["cluster"]["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (field("name"), field("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` every 50 ms for at most `limit`; returns how long it took.
pub(crate) async fn within(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn register_anywhere_route_everywhere_and_survive_a_node_crash() {
    let up = Upstream::start("svc-instance").await;
    let a = start_node(None);
    let b = start_node(Some(a.gossip));
    let c_node = start_node(Some(a.gossip));
    let c = client();
    let formed = within(Duration::from_secs(20), "three alive members", async || {
        alive_members(&c, &a).await == 3 && alive_members(&c, &c_node).await == 3
    })
    .await;
    eprintln!("cluster of 3 formed in {formed:?}");

    assert_eq!(
        register(&c, &a, "orders-1", "orders", up.addr.port()).await,
        201
    );
    let spread = within(Duration::from_secs(10), "served by node C", async || {
        get(&c, &url(&c_node, "/orders/health"), &[]).await.status == 200
    })
    .await;
    eprintln!("registration on A visible on C after {spread:?}");
    let reply = get(&c, &url(&c_node, "/orders/items?x=1"), &[]).await;
    assert_eq!(reply.json()["upstream"], "svc-instance");
    assert_eq!(reply.json()["path"], "/items");
    // Gossip reaches B on its own schedule: wait for it there too.
    within(Duration::from_secs(10), "listed on node B", async || {
        get(&c, &url(&b, "/api/v1/services"), &[]).await.json()["services"]
            .get("orders")
            .is_some()
    })
    .await;
    let listed = get(&c, &url(&b, "/api/v1/services"), &[]).await.json();
    assert_eq!(
        listed["services"]["orders"][0]["node"],
        get(&c, &url(&a, "/api/v1/health"), &[]).await.json()["node"]
    );

    // A crashes: its registration leaves B and C once they declare it dead. README says
    // "about 5-7 s on loopback" (up to 2 probe rounds of 1 s to notice, 0.5 s probe
    // timeout, 4 s suspicion with three members); 2 s more for a loaded machine.
    a.process.kill();
    let withdrawn = within(
        Duration::from_secs(9),
        "A's registration withdrawn (README: about 5-7 s)",
        async || {
            get(&c, &url(&c_node, "/orders/x"), &[]).await.status == 404
                && get(&c, &url(&b, "/orders/x"), &[]).await.status == 404
        },
    )
    .await;
    eprintln!("A's registrations withdrawn from B and C {withdrawn:?} after the crash");

    // A restarts, joins through B, and is alive everywhere again.
    let restarted = start_node(Some(b.gossip));
    let rejoined = within(
        Duration::from_secs(20),
        "restarted A alive on B and C",
        async || alive_members(&c, &b).await == 3 && alive_members(&c, &c_node).await == 3,
    )
    .await;
    eprintln!("restarted node alive on B and C after {rejoined:?}");
    // It can take registrations again, and they spread.
    assert_eq!(
        register(&c, &restarted, "orders-2", "orders", up.addr.port()).await,
        201
    );
    within(
        Duration::from_secs(10),
        "new registration served by B",
        async || get(&c, &url(&b, "/orders/x"), &[]).await.status == 200,
    )
    .await;

    // A clean stop (SIGTERM) leaves the cluster: peers see "left" at once, not "dead"
    // after a suspicion timeout.
    let b_name = get(&c, &url(&b, "/api/v1/health"), &[]).await.json()["node"].clone();
    assert!(b.process.terminate().success());
    let left = within(Duration::from_secs(5), "B seen as left", async || {
        let health = get(&c, &url(&c_node, "/api/v1/health"), &[]).await.json();
        health["cluster"]["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["name"] == b_name && m["state"] == "left")
        })
    })
    .await;
    eprintln!("B's clean stop seen as left on C after {left:?}");
}

/// Starts a node from a config file with `[cluster] secret_key` (None = no key).
pub(crate) fn start_keyed(
    dir: &std::path::Path,
    name: &str,
    key: Option<&str>,
    join: Option<SocketAddr>,
) -> Node {
    start_configured(dir, name, key, join, "")
}

/// Starts node `name` (also its node name) from a config file; `extra` goes at the end
/// of its `[cluster]` section.
pub(crate) fn start_configured(
    dir: &std::path::Path,
    name: &str,
    key: Option<&str>,
    join: Option<SocketAddr>,
    extra: &str,
) -> Node {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cluster]\ngossip_listen = \"127.0.0.1:0\"\nnode_name = \"{name}\"\n{extra}"
    );
    if let Some(key) = key {
        text.push_str(&format!("secret_key = \"{key}\"\n"));
    }
    if let Some(join) = join {
        text.push_str(&format!("join = [\"{join}\"]\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    let path = path.to_string_lossy().into_owned();
    node(Process::start(&["--config", &path]))
}

#[tokio::test]
async fn a_node_without_the_secret_key_cannot_join_or_inject() {
    let dir = tempfile::tempdir().unwrap();
    // 32-byte keys, base64.
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let wrong = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let a = start_keyed(dir.path(), "a", Some(key), None);
    let b = start_keyed(dir.path(), "b", Some(key), Some(a.gossip));
    let intruder = start_keyed(dir.path(), "intruder", Some(wrong), Some(a.gossip));
    let plain = start_keyed(dir.path(), "plain", None, Some(a.gossip));
    let c = client();
    within(
        Duration::from_secs(20),
        "A and B see each other",
        async || alive_members(&c, &a).await == 2 && alive_members(&c, &b).await == 2,
    )
    .await;
    // Give the others time to try (the driver re-joins every 1-2 s while alone).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alive_members(&c, &a).await, 2, "nobody else got in");
    assert_eq!(
        alive_members(&c, &intruder).await,
        1,
        "the wrong key is refused"
    );
    assert_eq!(
        alive_members(&c, &plain).await,
        1,
        "unencrypted gossip is refused"
    );
    // A registration on the intruder never reaches the cluster.
    assert_eq!(register(&c, &intruder, "evil", "evil", 9).await, 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = get(&c, &url(&a, "/api/v1/services"), &[]).await.json();
    assert!(listed["services"].get("evil").is_none(), "{listed}");
}

/// A gossip port whose UDP goes nowhere and whose TCP is forwarded to a node (set with
/// [`UdpBlackHole::forward_to`]): a node advertising it is reachable over TCP only, as
/// behind a firewall that drops UDP.
pub(crate) struct UdpBlackHole {
    pub(crate) addr: SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// Bound and never read: datagrams to the port are swallowed.
    _udp: std::net::UdpSocket,
    task: tokio::task::JoinHandle<()>,
}

impl UdpBlackHole {
    pub(crate) async fn start() -> Self {
        // TCP and UDP on one port, as a gossip address needs.
        let (listener, udp) = loop {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
                break (listener, udp);
            }
        };
        let addr = listener.local_addr().unwrap();
        let target = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(dest) = *to.lock().unwrap() else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(dest).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        UdpBlackHole {
            addr,
            target,
            _udp: udp,
            task,
        }
    }

    pub(crate) fn forward_to(&self, dest: SocketAddr) {
        *self.target.lock().unwrap() = Some(dest);
    }
}

impl Drop for UdpBlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_only_tcp_reaches_is_kept_alive_by_the_fallback_ping() {
    // B advertises a port whose UDP is dropped: every UDP probe of it (direct, and
    // indirect through C) fails, and only memberlist's TCP fallback ping gets through.
    let dir = tempfile::tempdir().unwrap();
    let hole = UdpBlackHole::start().await;
    let advertise = format!("advertise = \"{}\"\n", hole.addr);
    let mut a = start_configured(dir.path(), "a", None, None, "");
    let b = start_configured(dir.path(), "b", None, Some(a.gossip), &advertise);
    hole.forward_to(b.gossip);
    let c_node = start_configured(dir.path(), "c", None, Some(a.gossip), "");
    let c = client();
    within(Duration::from_secs(20), "three alive members", async || {
        alive_members(&c, &a).await == 3 && alive_members(&c, &c_node).await == 3
    })
    .await;
    // Long enough for several probes of B from A and C (one target per second each,
    // round-robin over two) and past a suspicion timeout (4 s at three members): B must
    // never be suspected.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        for (who, node) in [("A", &a), ("C", &c_node)] {
            let states = member_states(&c, node).await;
            assert_eq!(
                states.get("b").map(String::as_str),
                Some("alive"),
                "{who} sees B {states:?} after {:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It was the TCP fallback that kept it alive (memberlist logs the same warning).
    a.process
        .wait_for("was able to connect over TCP but other probes failed");
    drop(b);
}
