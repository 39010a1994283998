//! Upstream groups: every balancer over real targets, pooling, 502/504 without hangs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::upstream::Upstream;
use crate::support::{TestGateway, client, config_with, get};

async fn spread(balancer: &str, weights: [u32; 3], requests: usize) -> HashMap<String, usize> {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let targets: Vec<String> = ups
        .iter()
        .zip(weights)
        .map(|(u, w)| format!("{{ url = \"http://{}\", weight = {w} }}", u.addr))
        .collect();
    let config = format!(
        "[upstreams.g]\nbalancer = \"{balancer}\"\ntargets = [{}]\n[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
        targets.join(", ")
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let reply = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(reply.status, 200);
        *counts
            .entry(reply.headers["x-upstream"].to_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let counts = spread("round_robin", [1, 1, 1], 30).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let counts = spread("weighted_round_robin", [3, 2, 1], 60).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (30, 20, 10));
}

#[tokio::test]
async fn random_reaches_every_target_roughly_by_weight() {
    let counts = spread("random", [1, 1, 2], 400).await;
    assert!(
        counts["a"] > 50 && counts["b"] > 50 && counts["c"] > 120,
        "{counts:?}"
    );
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_target() {
    let counts = spread("ip_hash", [1, 1, 1], 20).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
}

#[tokio::test]
async fn least_connections_sends_more_to_the_target_that_finishes_sooner() {
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(200)).await;
    let fast = Upstream::start("fast").await;
    let config = config_with(
        &[(
            "g",
            &[slow.addr, fast.addr],
            "balancer = \"least_connections\"",
        )],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    // 6 clients, 10 requests each: the slow target keeps requests in flight longer, so
    // it should get far fewer than round robin's half.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = gw.url("/x");
            tokio::spawn(async move {
                let c = client();
                for _ in 0..10 {
                    assert_eq!(get(&c, &url, &[]).await.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let (s, f) = (
        slow.requests.load(Ordering::SeqCst),
        fast.requests.load(Ordering::SeqCst),
    );
    assert_eq!(s + f, 60);
    assert!(f >= 3 * s, "fast {f} vs slow {s}");
}

#[tokio::test]
async fn connections_to_targets_are_pooled() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 50);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "sequential requests reuse one connection"
    );
}

#[tokio::test]
async fn a_dead_target_is_a_quick_json_502() {
    // Bind and drop a listener to get a port nothing listens on.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = config_with(
        &[("g", &[dead], "")],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let started = Instant::now();
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_connect");
    assert!(
        !reply.text().contains(&dead.port().to_string()),
        "no internals leak: {}",
        reply.text()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .contains("fluxgate_upstream_errors_total{kind=\"upstream_connect\",upstream=\"g\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_slow_target_is_a_json_504_at_the_request_timeout() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "request_timeout_ms = 200")],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let started = Instant::now();
    let reply = get(&client(), &gw.url("/slow/3000"), &[]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_target_that_never_accepts_is_a_json_504_at_the_connect_timeout() {
    // A loopback listener with a backlog of 0 that never accepts: once its queue is
    // full, the kernel drops further SYNs, so a connect neither succeeds nor is refused.
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let silent: std::net::SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(silent),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "the accept queue never filled ({} connected)",
        queued.len()
    );

    let config = config_with(
        &[(
            "g",
            &[silent],
            "connect_timeout_ms = 300\nrequest_timeout_ms = 10000",
        )],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let started = Instant::now();
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "upstream_timeout");
    // At the 300 ms connect timeout, not at the 10 s request timeout.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .contains("fluxgate_upstream_errors_total{kind=\"upstream_timeout\",upstream=\"g\"} 1"),
        "{metrics}"
    );
    drop(queued);
}
