//! Discovery providers feeding `/{service}/*`: a real etcd (watched through its JSON
//! gateway), a real dnsmasq serving SRV + A records, and Consul's health API replayed
//! from its documented response by a small in-test server honouring `?index=` blocking.
//! A provider that goes away leaves its instances routed, marked stale.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::support::daemons::{Daemon, free_port};
use crate::support::upstream::Upstream;
use crate::support::{PATIENCE, TestClient, TestGateway, client, get, send};

/// The upstream names that answered `path` over `tries` requests.
async fn served_by(c: &TestClient, url: &str, tries: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..tries {
        let reply = get(c, url, &[]).await;
        if reply.status == 200 {
            names.insert(reply.json()["upstream"].as_str().unwrap_or("?").to_owned());
        } else {
            names.insert(reply.status.as_u16().to_string());
        }
    }
    names
}

/// Polls until `check` holds (every 50 ms, at most PATIENCE).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The `/api/v1/services` entries of `service`.
async fn listed(c: &TestClient, g: &TestGateway, service: &str) -> Vec<serde_json::Value> {
    let json = get(c, &g.url("/api/v1/services"), &[]).await.json();
    json["services"][service]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn etcd_call(c: &TestClient, port: u16, path: &str, body: serde_json::Value) {
    let req = Request::post(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(c, req).await;
    assert_eq!(reply.status, 200, "etcd {path}: {}", reply.text());
}

async fn etcd_put(c: &TestClient, port: u16, key: &str, value: &str) {
    let body = serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) });
    etcd_call(c, port, "/v3/kv/put", body).await;
}

async fn etcd_delete(c: &TestClient, port: u16, key: &str) {
    etcd_call(
        c,
        port,
        "/v3/kv/deleterange",
        serde_json::json!({ "key": B64.encode(key) }),
    )
    .await;
}

fn registration(id: &str, service: &str, port: u16) -> String {
    format!(r#"{{"id":"{id}","service":"{service}","address":"127.0.0.1","port":{port}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_instances_are_watched_and_kept_when_etcd_goes_away() {
    let (mut etcd, peer) = Daemon::etcd();
    let port = etcd.port;
    let (a, b, cfg_up) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("config").await,
    );
    let c = client();
    let p = "/fluxgate/services";
    etcd_put(
        &c,
        port,
        &format!("{p}/users/u1"),
        &registration("u1", "users", a.addr.port()),
    )
    .await;
    etcd_put(&c, port, &format!("{p}/users/bad"), "{not a registration").await;
    etcd_put(
        &c,
        port,
        &format!("{p}/orders/o1"),
        &registration("o1", "orders", a.addr.port()),
    )
    .await;
    let text = format!(
        "[[discovery]]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:{port}\"]\nprefix = \"{p}\"\n\
         [upstreams.config]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/orders/*\"\nupstream = \"config\"\n",
        cfg_up.addr
    );
    let g = TestGateway::start(&text).await;
    let url = g.url("/users/x");
    eventually("u1 routed", async || {
        served_by(&c, &url, 1).await == names(&["a"])
    })
    .await;
    let list = listed(&c, &g, "users").await;
    assert_eq!(
        list.len(),
        1,
        "the bad entry is skipped, the rest loads: {list:?}"
    );
    assert_eq!(
        (list[0]["owner"].as_str(), list[0]["stale"].as_bool()),
        (Some("etcd"), Some(false))
    );
    let metrics = get(&c, &g.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fluxgate_discovery_skipped_total") && l.ends_with(" 1")),
        "the bad entry is counted"
    );
    assert_eq!(
        served_by(&c, &g.url("/orders/x"), 3).await,
        names(&["config"]),
        "a config route with the same path wins"
    );

    // Changes arrive through the watch.
    etcd_put(
        &c,
        port,
        &format!("{p}/users/u2"),
        &registration("u2", "users", b.addr.port()),
    )
    .await;
    eventually("u2 routed", async || {
        served_by(&c, &url, 4).await == names(&["a", "b"])
    })
    .await;
    etcd_delete(&c, port, &format!("{p}/users/u1")).await;
    eventually("u1 gone", async || {
        served_by(&c, &url, 4).await == names(&["b"])
    })
    .await;

    // Watched, not polled: one range and one watch stream, never re-read.
    let metrics = get(&c, &g.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fluxgate_discovery_errors_total") && l.ends_with(" 0")),
        "the watch stream stayed open: {metrics}"
    );

    // etcd goes away: the last instances stay, marked stale.
    etcd.stop();
    eventually("stale", async || {
        listed(&c, &g, "users").await[0]["stale"] == true
    })
    .await;
    assert_eq!(served_by(&c, &url, 4).await, names(&["b"]), "still routed");

    // Back with its data: fresh again, and watching.
    let _etcd = Daemon::etcd_at(port, peer, etcd.dir.clone(), None);
    eventually("fresh", async || {
        listed(&c, &g, "users")
            .await
            .first()
            .is_some_and(|i| i["stale"] == false)
    })
    .await;
    etcd_put(
        &c,
        port,
        &format!("{p}/users/u1"),
        &registration("u1", "users", a.addr.port()),
    )
    .await;
    eventually("u1 back", async || {
        served_by(&c, &url, 4).await == names(&["a", "b"])
    })
    .await;
}

fn srv_records(ports: &[(&str, u16)]) -> Vec<String> {
    let mut records = Vec::new();
    for (host, port) in ports {
        records.push(format!(
            "--srv-host=_http._tcp.users.service.consul,{host}.test,{port},0,10"
        ));
        records.push(format!("--host-record={host}.test,127.0.0.1"));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_srv_records_are_followed_by_their_ttl() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let temp = tempfile::tempdir().unwrap();
    let dns_port = free_port();
    let records = srv_records(&[("a", a.addr.port()), ("b", b.addr.port())]);
    let mut dns = Daemon::dnsmasq_at(dns_port, temp.path().to_owned(), None, 1, &records);
    let text = format!(
        "[[discovery]]\ntype = \"dns_srv\"\nservice = \"users\"\nname = \"_http._tcp.users.service.consul\"\n\
         resolver = \"127.0.0.1:{dns_port}\"\nmin_refresh_ms = 200\ntimeout_ms = 500\n"
    );
    let g = TestGateway::start(&text).await;
    let c = client();
    let url = g.url("/users/x");
    eventually("both targets routed", async || {
        served_by(&c, &url, 4).await == names(&["a", "b"])
    })
    .await;
    let list = listed(&c, &g, "users").await;
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|i| i["owner"] == "dns_srv" && i["stale"] == false),
        "{list:?}"
    );

    dns.stop();
    eventually("stale", async || {
        listed(&c, &g, "users")
            .await
            .iter()
            .all(|i| i["stale"] == true)
    })
    .await;
    assert_eq!(
        served_by(&c, &url, 4).await,
        names(&["a", "b"]),
        "still routed while DNS is away"
    );

    // Back with one record only: seen once the TTL (1 s) runs out.
    let records = srv_records(&[("b", b.addr.port())]);
    let _dns = Daemon::dnsmasq_at(dns_port, temp.path().to_owned(), None, 1, &records);
    eventually("only b", async || {
        served_by(&c, &url, 4).await == names(&["b"])
    })
    .await;
    assert_eq!(listed(&c, &g, "users").await[0]["stale"], false);
}

/// Consul's health endpoint as documented, replayed: `?index=` blocks until the state
/// changes or `wait` runs out; `X-Consul-Index` says the state's index.
#[derive(Default)]
struct ConsulState {
    index: u64,
    entries: Vec<serde_json::Value>,
    failing: bool,
    /// Every query seen: its query string and token header.
    seen: Vec<(String, Option<String>)>,
}

struct FakeConsul {
    addr: SocketAddr,
    state: Arc<Mutex<ConsulState>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeConsul {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ConsulState {
            index: 10,
            ..ConsulState::default()
        }));
        let changed = Arc::new(Notify::new());
        let (s, n) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, n) = (s.clone(), n.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, s.clone(), n.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            changed,
            task,
        }
    }

    fn set(&self, entries: Vec<serde_json::Value>, failing: bool) {
        let mut s = self.state.lock().unwrap();
        s.entries = entries;
        s.failing = failing;
        s.index += 1;
        drop(s);
        self.changed.notify_waiters();
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<ConsulState>>,
    changed: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or_default().to_owned();
    let token = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let index: u64 = param("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = param("wait")
        .and_then(|w| w.trim_end_matches('s').parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    state.lock().unwrap().seen.push((query.clone(), token));
    if req.uri().path() != "/v1/health/service/users" {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    // Blocking: hold the query while the state's index is the one the client has.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = changed.notified();
        if index == 0 || state.lock().unwrap().index > index {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let s = state.lock().unwrap();
    if s.failing {
        return Ok(Response::builder()
            .status(500)
            .body(Full::new(Bytes::from("rpc error")))
            .unwrap());
    }
    let passing_only = param("passing").is_some();
    let entries: Vec<&serde_json::Value> = s
        .entries
        .iter()
        .filter(|e| {
            !passing_only
                || e["Checks"]
                    .as_array()
                    .is_none_or(|c| c.iter().all(|c| c["Status"] == "passing"))
        })
        .collect();
    let body = serde_json::to_string(&entries).unwrap();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-consul-index", s.index.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// The documented sample entry, pointed at a local upstream.
fn consul_entry(node: &str, id: &str, port: u16, status: &str) -> serde_json::Value {
    let recorded: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/consul-health-service.json")).unwrap();
    let mut entry = recorded[0].clone();
    entry["Node"]["Node"] = node.into();
    entry["Service"]["ID"] = id.into();
    entry["Service"]["Service"] = "users".into();
    entry["Service"]["Address"] = "127.0.0.1".into();
    entry["Service"]["Port"] = port.into();
    entry["Checks"][0]["Status"] = status.into();
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_blocking_queries_follow_the_health_api() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let consul = FakeConsul::start().await;
    let mut bad = consul_entry("n9", "broken", 1, "passing");
    bad["Service"]["Port"] = "not a port".into();
    consul.set(
        vec![
            consul_entry("n1", "users-1", a.addr.port(), "passing"),
            consul_entry("n2", "users-2", b.addr.port(), "critical"),
            bad,
        ],
        false,
    );
    let text = format!(
        "[[discovery]]\ntype = \"consul\"\naddress = \"http://{}\"\nservices = [\"users\"]\n\
         datacenter = \"dc1\"\ntoken = \"secret-token\"\nwait_s = 30\n",
        consul.addr
    );
    let g = TestGateway::start(&text).await;
    let c = client();
    let url = g.url("/users/x");
    eventually("passing instance routed", async || {
        served_by(&c, &url, 4).await == names(&["a"])
    })
    .await;
    let list = listed(&c, &g, "users").await;
    assert_eq!(
        list.len(),
        1,
        "critical and broken entries are left out: {list:?}"
    );
    assert_eq!(list[0]["owner"], "consul");
    assert_eq!(
        list[0]["metadata"]["weight"], "10",
        "Weights.Passing of the recorded answer"
    );
    assert_eq!(list[0]["metadata"]["tags"], "primary");

    // A change is seen as soon as it happens although the query waits up to 30 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed_at = Instant::now();
    consul.set(
        vec![
            consul_entry("n1", "users-1", a.addr.port(), "passing"),
            consul_entry("n2", "users-2", b.addr.port(), "passing"),
        ],
        false,
    );
    eventually("both routed", async || {
        served_by(&c, &url, 4).await == names(&["a", "b"])
    })
    .await;
    assert!(
        changed_at.elapsed() < Duration::from_secs(5),
        "blocking query answered at once"
    );
    {
        let s = consul.state.lock().unwrap();
        assert!(
            s.seen
                .iter()
                .any(|(q, _)| q.contains("index=") && q.contains("wait=30s")),
            "blocking queries were made: {:?}",
            s.seen
        );
        assert!(
            s.seen.iter().all(|(q, t)| q.contains("passing=1")
                && q.contains("dc=dc1")
                && t.as_deref() == Some("secret-token")),
            "every query asks for passing instances of dc1 with the token: {:?}",
            s.seen
        );
        assert!(
            s.seen.len() < 20,
            "no busy polling: {} queries",
            s.seen.len()
        );
    }

    // Consul failing: the instances stay, stale; back: fresh.
    consul.set(Vec::new(), true);
    eventually("stale", async || {
        listed(&c, &g, "users")
            .await
            .iter()
            .all(|i| i["stale"] == true)
    })
    .await;
    assert_eq!(served_by(&c, &url, 4).await, names(&["a", "b"]));
    consul.set(
        vec![consul_entry("n2", "users-2", b.addr.port(), "passing")],
        false,
    );
    eventually("fresh, b only", async || {
        served_by(&c, &url, 4).await == names(&["b"])
    })
    .await;
    assert_eq!(listed(&c, &g, "users").await[0]["stale"], false);
}
