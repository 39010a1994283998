//! Cluster-wide rate limits against a real redis-server started on a free loopback
//! port: one limit shared by several gateways, Redis stopped and started again under
//! load, and three real gateway processes admitting the cluster limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cli::Process;
use crate::support::daemons::{Daemon, redis_command};
use crate::support::upstream::Upstream;
use crate::support::{PATIENCE, TestClient, TestGateway, client, get};

fn config(redis: u16, upstream: SocketAddr, routes: &str) -> String {
    config_with_timeout(redis, upstream, 1000, routes)
}

/// Redis gets 1 s per call by default here: on a loaded 2-core test machine a slow
/// answer must not count as Redis being down unless the test means it.
fn config_with_timeout(redis: u16, upstream: SocketAddr, timeout_ms: u64, routes: &str) -> String {
    format!(
        "[cluster]\ngossip = false\n[cluster.redis]\nurl = \"redis://127.0.0.1:{redis}\"\ntimeout_ms = {timeout_ms}\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{upstream}\" }}]\n{routes}"
    )
}

/// The value of a metric line starting with `prefix` (0 when absent).
async fn metric(c: &TestClient, base: &str, prefix: &str) -> f64 {
    let text = get(c, &format!("{base}/metrics"), &[]).await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls until `metric(prefix) == want`, at most PATIENCE.
async fn wait_metric(c: &TestClient, base: &str, prefix: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = metric(c, base, prefix).await;
        if value == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}: {prefix} is {value}, waited for {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_cluster_limit_through_redis() {
    let redis = Daemon::redis();
    let up = Upstream::start("u").await;
    let text = config(
        redis.port,
        up.addr,
        "[[routes]]\npath = \"/limited\"\nupstream = \"u\"\n\
         rate_limit = { capacity = 20, refill_per_s = 0.01, scope = \"cluster\" }\n",
    );
    let a = TestGateway::start(&text).await;
    let b = TestGateway::start(&text).await;
    let c = client();
    for g in [&a, &b] {
        wait_metric(&c, &g.url(""), "fluxgate_cluster_redis_up ", 1.0).await;
    }
    let mut admitted = 0;
    for i in 0..120 {
        let g = if i % 2 == 0 { &a } else { &b };
        let reply = get(&c, &g.url("/limited"), &[]).await;
        match reply.status.as_u16() {
            200 => admitted += 1,
            429 => assert!(reply.headers.contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
        // Spread over a few lease periods so tokens a node holds are spent or given back.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Node-scoped, the two gateways would admit 40. One request per node may be
    // admitted on credit; a node may still hold a token or two it has not spent.
    assert!(
        (18..=22).contains(&admitted),
        "admitted {admitted} of a cluster limit of 20"
    );
    let keys = redis_command(redis.port, "KEYS fluxgate:rl:*").unwrap_or_default();
    assert!(
        keys.starts_with("*1"),
        "one Redis key for the limit: {keys}"
    );
    let ttl = redis_command(
        redis.port,
        "EVAL \"return redis.call('PTTL', redis.call('KEYS', 'fluxgate:rl:*')[1])\" 0",
    )
    .unwrap_or_default();
    assert!(
        ttl.starts_with(':') && !ttl.starts_with(":-"),
        "the key expires by itself: {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_falls_back_and_recovers() {
    let mut redis = Daemon::redis();
    let port = redis.port;
    let up = Upstream::start("u").await;
    let text = config(
        port,
        up.addr,
        "[[routes]]\npath = \"/local\"\nupstream = \"u\"\n\
         rate_limit = { capacity = 1000000, refill_per_s = 1000000.0, scope = \"cluster\" }\n\
         [[routes]]\npath = \"/deny\"\nupstream = \"u\"\n\
         rate_limit = { capacity = 1000000, refill_per_s = 1000000.0, scope = \"cluster\", on_redis_error = \"deny\" }\n",
    );
    let g = TestGateway::start(&text).await;
    let base = g.url("");
    let c = client();
    wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 1.0).await;
    assert_eq!(get(&c, &g.url("/deny"), &[]).await.status, 200);
    assert_eq!(get(&c, &g.url("/local"), &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Load on /local for the whole test (bounded in time).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, other, url, c) = (
            stop.clone(),
            ok.clone(),
            other.clone(),
            g.url("/local"),
            c.clone(),
        );
        load.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let status = get(&c, &url, &[]).await.status;
                let counter = if status == 200 { &ok } else { &other };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.stop();
    wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 0.0).await;
    assert_eq!(
        get(&c, &g.url("/deny"), &[]).await.status,
        429,
        "on_redis_error = deny refuses while Redis is down"
    );
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "on_redis_error = local keeps admitting while Redis is down"
    );
    assert!(
        metric(
            &c,
            &base,
            "fluxgate_rate_limit_fallback_total{mode=\"local\"}"
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &c,
            &base,
            "fluxgate_rate_limit_fallback_total{mode=\"deny\"}"
        )
        .await
            > 0.0
    );

    // Back on the same port: the gateway finds it by itself.
    let _redis = Daemon::redis_at(port, redis.dir.clone(), None);
    wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 1.0).await;
    assert_eq!(get(&c, &g.url("/deny"), &[]).await.status, 200);
    let calls = metric(&c, &base, "fluxgate_cluster_redis_calls_total{op=\"take\"}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        metric(&c, &base, "fluxgate_cluster_redis_calls_total{op=\"take\"}").await > calls,
        "tokens are taken from Redis again"
    );

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "no request failed or was refused"
    );
    // Logged (and counted) once per transition, however many calls failed.
    assert_eq!(
        metric(
            &c,
            &base,
            "fluxgate_cluster_redis_transitions_total{to=\"down\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &c,
            &base,
            "fluxgate_cluster_redis_transitions_total{to=\"up\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_counts_as_down_after_the_timeout() {
    let redis = Daemon::redis();
    let up = Upstream::start("u").await;
    let text = config_with_timeout(
        redis.port,
        up.addr,
        200,
        "[[routes]]\npath = \"/deny\"\nupstream = \"u\"\n\
         rate_limit = { capacity = 1000000, refill_per_s = 1000000.0, scope = \"cluster\", on_redis_error = \"deny\" }\n",
    );
    let g = TestGateway::start(&text).await;
    let (base, url) = (g.url(""), g.url("/deny"));
    let c = client();
    wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 1.0).await;
    assert_eq!(get(&c, &url, &[]).await.status, 200);

    // Frozen: connections stay open, nothing answers. Requests keep being decided at
    // once (never waiting on Redis); once a call has waited 200 ms, Redis is down.
    redis.signal("STOP");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let asked = Instant::now();
        let status = get(&c, &url, &[]).await.status;
        assert!(
            asked.elapsed() < Duration::from_millis(150),
            "a request waited for Redis"
        );
        if status == 429 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a frozen Redis was never taken as down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metric(
            &c,
            &base,
            "fluxgate_cluster_redis_errors_total{kind=\"timeout\"}"
        )
        .await
            >= 1.0
    );

    redis.signal("CONT");
    wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 1.0).await;
    assert_eq!(get(&c, &url, &[]).await.status, 200);
}

/// A gateway process of the three-node test.
struct Node {
    process: Process,
    http: SocketAddr,
    gossip: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Redis gets 1 s per call here (not the default 100 ms): on a loaded 2-core test
/// machine a slow answer must not count as Redis being down, which would measure the
/// fallback (tested above) instead of the shared limit.
fn start_node(name: &str, redis: u16, upstream: SocketAddr, join: Option<SocketAddr>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let join = join.map_or(String::new(), |a| format!("join = [\"{a}\"]\n"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [cluster]\ngossip_listen = \"127.0.0.1:0\"\nnode_name = \"{name}\"\n{join}\
         [cluster.redis]\nurl = \"redis://127.0.0.1:{redis}\"\ntimeout_ms = 1000\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{upstream}\" }}]\n\
         [[routes]]\npath = \"/limited\"\nupstream = \"u\"\n\
         rate_limit = {{ algorithm = \"token_bucket\", capacity = 100, refill_per_s = 10.0, scope = \"cluster\" }}\n"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut process = Process::start(&["--config", path.to_str().unwrap()]);
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
        _dir: dir,
    }
}

/// The figure: 3 nodes, a cluster limit of N per minute (a bucket of 100
/// refilled at 10/s = 600/min), hard load on all three for 10 s: the total admitted
/// is within 0.9 N ..= 1.05 N, N being what the limit allows over the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateway_processes_admit_the_cluster_limit() {
    let redis = Daemon::redis();
    let up = Upstream::start("u").await;
    let a = start_node("n1", redis.port, up.addr, None);
    let b = start_node("n2", redis.port, up.addr, Some(a.gossip));
    let c3 = start_node("n3", redis.port, up.addr, Some(a.gossip));
    let nodes = [&a, &b, &c3];
    let c = client();
    for node in nodes {
        let base = format!("http://{}", node.http);
        wait_metric(&c, &base, "fluxgate_cluster_redis_up ", 1.0).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let health = get(&c, &format!("{base}/api/v1/health"), &[]).await.json();
            let alive = health["cluster"]["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            if alive == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base} sees {alive} alive members"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let duration = Duration::from_secs(10);
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut load = Vec::new();
    // Two request loops per node are far above the limit (each does hundreds of
    // requests a second) while leaving CPU for the other tests running alongside.
    for node in nodes {
        for _ in 0..2 {
            let (admitted, refused, c) = (admitted.clone(), refused.clone(), c.clone());
            let url = format!("http://{}/limited", node.http);
            load.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    match get(&c, &url, &[]).await.status.as_u16() {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                }
            }));
        }
    }
    for task in load {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = 100.0 + 10.0 * elapsed;
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let refused = refused.load(Ordering::Relaxed);
    println!(
        "3 nodes, cluster limit 100 + 10/s over {elapsed:.2} s: N = {n:.0}, admitted {admitted} ({:.3} N), refused {refused}",
        admitted / n
    );
    assert!(refused > 500, "the load was hard: {refused} refused");
    for node in nodes {
        let base = format!("http://{}", node.http);
        assert!(
            metric(&c, &base, "fluxgate_cluster_redis_calls_total{op=\"take\"}").await > 0.0,
            "{base} counted in Redis"
        );
        assert_eq!(
            metric(
                &c,
                &base,
                "fluxgate_rate_limit_fallback_total{mode=\"local\"}"
            )
            .await,
            0.0,
            "{base} never fell back"
        );
    }
    assert!(
        admitted >= 0.9 * n && admitted <= 1.05 * n,
        "admitted {admitted} outside 0.9 N ..= 1.05 N (N = {n:.0})"
    );
    for node in [a, b, c3] {
        let _ = node.process.terminate();
    }
}
