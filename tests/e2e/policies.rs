//! Traffic policies end to end: rate limits, circuit breaker, retries, response cache,
//! health checks, outlier ejection, CORS and WebSockets, against real upstreams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::upstream::Upstream;
use crate::support::{PATIENCE, Reply, TestClient, TestGateway, client, config_with, get, send};

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", reply.headers))
}

/// Polls `check` every 20 ms until it holds, failing after PATIENCE.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upstream_of(c: &TestClient, url: &str) -> String {
    let reply = get(c, url, &[]).await;
    reply
        .headers
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| format!("(gateway {})", reply.status))
}

async fn upstreams_json(gw: &TestGateway, c: &TestClient) -> serde_json::Value {
    get(c, &gw.url("/api/v1/upstreams"), &[]).await.json()
}

#[tokio::test]
async fn route_rate_limit_answers_429_with_headers_for_every_algorithm() {
    let up = Upstream::start("u").await;
    for algorithm in [
        "algorithm = \"token_bucket\", capacity = 3, refill_per_s = 0.01",
        "algorithm = \"leaky_bucket\", capacity = 3, refill_per_s = 0.01",
        "algorithm = \"fixed_window\", capacity = 3, window_ms = 60000",
        "algorithm = \"sliding_window\", capacity = 3, window_ms = 60000",
    ] {
        let routes = format!(
            "[[routes]]\npath = \"/limited\"\nupstream = \"u\"\nrate_limit = {{ {algorithm} }}\n\
             [[routes]]\npath = \"/free\"\nupstream = \"u\"\n"
        );
        let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], &routes)).await;
        let c = client();
        for remaining in ["2", "1", "0"] {
            let ok = get(&c, &gw.url("/limited"), &[]).await;
            assert_eq!(ok.status, 200, "{algorithm}");
            assert_eq!(header(&ok, "ratelimit-limit"), "3");
            assert_eq!(header(&ok, "ratelimit-remaining"), remaining, "{algorithm}");
            assert!(header(&ok, "ratelimit-reset").parse::<u64>().is_ok());
        }
        let refused = get(&c, &gw.url("/limited"), &[]).await;
        assert_eq!(refused.status, 429, "{algorithm}");
        assert_eq!(refused.json()["error"], "rate_limited");
        assert!(header(&refused, "retry-after").parse::<u64>().unwrap() >= 1);
        assert_eq!(header(&refused, "ratelimit-remaining"), "0");
        let free = get(&c, &gw.url("/free"), &[]).await;
        assert_eq!(free.status, 200);
        assert!(free.headers.get("ratelimit-limit").is_none());
        let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
        assert!(
            metrics.contains("fluxgate_rate_limited_total{route=\"/limited\",scope=\"route\"} 1"),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn user_rate_limit_keeps_one_allowance_per_user() {
    let up = Upstream::start("u").await;
    let routes = "[[routes]]\npath = \"/api/*\"\nupstream = \"u\"\n\
        user_rate_limit = { algorithm = \"token_bucket\", capacity = 2, refill_per_s = 0.01, key = [\"header:x-user-id\", \"query:user\", \"ip\"] }\n";
    let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], routes)).await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(
            get(&c, &gw.url("/api/x"), &[("x-user-id", "alice")])
                .await
                .status,
            200
        );
    }
    let refused = get(&c, &gw.url("/api/x"), &[("x-user-id", "alice")]).await;
    assert_eq!(refused.status, 429);
    assert!(refused.json()["message"].as_str().unwrap().contains("user"));
    // Other users, found by header or by query, have their own allowance.
    assert_eq!(
        get(&c, &gw.url("/api/x"), &[("x-user-id", "bob")])
            .await
            .status,
        200
    );
    assert_eq!(get(&c, &gw.url("/api/x?user=carol"), &[]).await.status, 200);
    assert_eq!(get(&c, &gw.url("/api/x?user=alice"), &[]).await.status, 429);
    // No id at all: the client address is the key.
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 200);
    }
    assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 429);
}

#[tokio::test]
async fn breaker_opens_skips_the_target_then_closes_after_recovery() {
    let good = Upstream::start("good").await;
    let bad = Upstream::start("bad").await;
    bad.failing.store(true, Ordering::SeqCst);
    let extra = "circuit_breaker = { failure_threshold = 2, window_s = 60, open_s = 1, half_open_requests = 1, success_threshold = 1 }";
    let config = config_with(
        &[("g", &[good.addr, bad.addr], extra)],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let mut bad_answers = 0;
    for _ in 0..20 {
        if upstream_of(&c, &gw.url("/x")).await == "bad" {
            bad_answers += 1;
        }
    }
    assert_eq!(bad_answers, 2, "the breaker opens after exactly 2 failures");
    let state = upstreams_json(&gw, &c).await;
    let targets = state["upstreams"][0]["targets"].as_array().unwrap().clone();
    let bad_url = format!("http://{}", bad.addr);
    let bad_state = targets
        .iter()
        .find(|t| t["url"] == bad_url.as_str())
        .unwrap();
    assert_eq!(bad_state["breaker"], "open", "{state}");
    assert_eq!(bad_state["available"], false);
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains(&format!(
            "fluxgate_circuit_breaker_state{{target=\"{bad_url}\",upstream=\"g\"}} 2"
        )),
        "{metrics}"
    );
    // The target recovers; after open_s a trial request closes the breaker again.
    bad.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut seen_bad = false;
    for _ in 0..6 {
        seen_bad |= upstream_of(&c, &gw.url("/x")).await == "bad";
    }
    assert!(seen_bad, "the recovered target gets traffic again");
    let state = upstreams_json(&gw, &c).await;
    let targets = state["upstreams"][0]["targets"].as_array().unwrap().clone();
    let bad_state = targets
        .iter()
        .find(|t| t["url"] == bad_url.as_str())
        .unwrap();
    assert_eq!(bad_state["breaker"], "closed", "{state}");
}

#[tokio::test]
async fn all_breakers_open_gives_json_503() {
    let bad = Upstream::start("bad").await;
    bad.failing.store(true, Ordering::SeqCst);
    let extra = "circuit_breaker = { failure_threshold = 1, open_s = 60 }";
    let config = config_with(
        &[("g", &[bad.addr], extra)],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 503);
    let before = bad.requests.load(Ordering::SeqCst);
    let refused = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "no_target");
    assert_eq!(
        bad.requests.load(Ordering::SeqCst),
        before,
        "an open breaker sends nothing"
    );
}

#[tokio::test]
async fn retries_recover_from_failures_on_another_target_within_budget() {
    let flaky = Upstream::start("flaky").await;
    let extra = "retry = { attempts = 3, base_ms = 1, max_ms = 5 }";
    let routes = "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n";
    let gw = TestGateway::start(&config_with(&[("g", &[flaky.addr], extra)], routes)).await;
    let c = client();
    // Fails twice, then recovers: the client sees one success.
    let reply = get(&c, &gw.url("/fail/2"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(flaky.requests.load(Ordering::SeqCst), 3);
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_retries_total{outcome=\"sent\",upstream=\"g\"} 2"),
        "{metrics}"
    );
    // POST is not idempotent: not retried.
    let fresh = Upstream::start("fresh").await;
    gw.reconfigure(&config_with(&[("g", &[fresh.addr], extra)], routes))
        .await;
    let post = Request::post(gw.url("/fail/1"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(send(&c, post).await.status, 503);
    assert_eq!(fresh.requests.load(Ordering::SeqCst), 1);
    // A small PUT body is kept and sent again.
    let put = Request::put(gw.url("/fail/0"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let reply = send(&c, put).await;
    assert_eq!(reply.json()["body"], "payload");

    // Two targets: every retry goes to the one not tried yet.
    let down = Upstream::start("down").await;
    down.failing.store(true, Ordering::SeqCst);
    let up = Upstream::start("up").await;
    gw.reconfigure(&config_with(
        &[(
            "g",
            &[down.addr, up.addr],
            "retry = { attempts = 2, base_ms = 1, max_ms = 2 }",
        )],
        routes,
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(upstream_of(&c, &gw.url("/y")).await, "up");
    }
    assert_eq!(
        down.requests.load(Ordering::SeqCst),
        5,
        "round robin tried it every other time"
    );
}

#[tokio::test]
async fn an_exhausted_retry_budget_stops_retries() {
    let down = Upstream::start("down").await;
    down.failing.store(true, Ordering::SeqCst);
    let extra = "retry = { attempts = 3, base_ms = 1, max_ms = 2, budget_ratio = 0.2, budget_min_per_s = 0.0 }";
    let gw = TestGateway::start(&config_with(
        &[("g", &[down.addr], extra)],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 503);
    }
    // 20 requests at ratio 0.2 (no floor) allow exactly 4 retries, one each after the
    // 5th, 10th, 15th and 20th request; without a budget, attempts = 3 would have sent
    // 60, and without retries 20. Every request's last retry was refused by the budget.
    let sent = down.requests.load(Ordering::SeqCst);
    assert_eq!(sent, 24, "20 requests + 4 retries reached the upstream");
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_retries_total{outcome=\"sent\",upstream=\"g\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("fluxgate_retries_total{outcome=\"budget_exhausted\",upstream=\"g\"} 20\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cache_serves_hits_honours_cache_control_and_vary_and_expires() {
    let up = Upstream::start("u").await;
    let routes = "[[routes]]\npath = \"/*\"\nupstream = \"u\"\ncache = { ttl_ms = 400, max_entries = 100 }\n";
    let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], routes)).await;
    let c = client();
    let first = get(&c, &gw.url("/item?id=1"), &[]).await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let second = get(&c, &gw.url("/item?id=1"), &[]).await;
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert_eq!(first.json()["n"], second.json()["n"], "same stored body");
    assert!(second.headers.contains_key("age"));
    assert_eq!(
        header(&get(&c, &gw.url("/item?id=2"), &[]).await, "x-cache"),
        "MISS"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    // Stale after ttl_ms.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        header(&get(&c, &gw.url("/item?id=1"), &[]).await, "x-cache"),
        "MISS"
    );
    // no-store and private are never stored; max-age overrides the route ttl.
    for cc in ["no-store", "private"] {
        let url = gw.url(&format!("/cc?cc={cc}"));
        get(&c, &url, &[]).await;
        assert_eq!(header(&get(&c, &url, &[]).await, "x-cache"), "MISS", "{cc}");
    }
    let url = gw.url("/long?cc=max-age%3D60");
    get(&c, &url, &[]).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(header(&get(&c, &url, &[]).await, "x-cache"), "HIT");
    // Vary splits entries by the named request header.
    let url = gw.url("/v?vary=accept-language");
    get(&c, &url, &[("accept-language", "en")]).await;
    let en = get(&c, &url, &[("accept-language", "en")]).await;
    let fr = get(&c, &url, &[("accept-language", "fr")]).await;
    assert_eq!(header(&en, "x-cache"), "HIT");
    assert_eq!(header(&fr, "x-cache"), "MISS");
    // POST and requests with credentials bypass the cache.
    let post = Request::post(gw.url("/item?id=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(header(&send(&c, post).await, "x-upstream"), "u");
    let with_auth = get(&c, &gw.url("/item?id=1"), &[("authorization", "Bearer x")]).await;
    assert!(with_auth.headers.get("x-cache").is_none(), "bypassed");
}

#[tokio::test]
async fn concurrent_misses_collapse_into_one_upstream_request() {
    let up = Upstream::start_with_delay("u", Duration::from_millis(300)).await;
    let routes = "[[routes]]\npath = \"/*\"\nupstream = \"u\"\ncache = { ttl_ms = 10000 }\n";
    let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], routes)).await;
    let url = gw.url("/hot");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url, &[]).await })
        })
        .collect();
    let mut hits = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        hits += usize::from(header(&reply, "x-cache") == "HIT");
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "one upstream request"
    );
    assert_eq!(hits, 9);
}

#[tokio::test]
async fn active_health_checks_take_targets_out_and_bring_them_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let extra = "health_check = { path = \"/health\", interval_ms = 100, timeout_ms = 100, healthy_threshold = 2, unhealthy_threshold = 2 }";
    let gw = TestGateway::start(&config_with(
        &[("g", &[a.addr, b.addr], extra)],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    ))
    .await;
    let c = client();
    b.healthy.store(false, Ordering::SeqCst);
    eventually("b marked unhealthy", || async {
        upstreams_json(&gw, &c).await["upstreams"][0]["targets"][1]["health"] == "unhealthy"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(upstream_of(&c, &gw.url("/x")).await, "a");
    }
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_target_health_changes_total"),
        "{metrics}"
    );
    b.healthy.store(true, Ordering::SeqCst);
    eventually("b back", || async {
        upstreams_json(&gw, &c).await["upstreams"][0]["targets"][1]["health"] == "healthy"
    })
    .await;

    // Killed: probes fail to connect. Restarted on the same port: it comes back.
    let b_addr = b.addr;
    drop(b);
    eventually("killed b marked unhealthy", || async {
        upstreams_json(&gw, &c).await["upstreams"][0]["targets"][1]["health"] == "unhealthy"
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            upstream_of(&c, &gw.url("/x")).await,
            "a",
            "no traffic to a dead target"
        );
    }
    let _b = Upstream::start_at("b2", b_addr).await;
    eventually("restarted b serves again", || async {
        upstream_of(&c, &gw.url("/x")).await == "b2"
    })
    .await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_target_for_a_while() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    b.failing.store(true, Ordering::SeqCst);
    let extra = "outlier_detection = { consecutive_failures = 2, base_ejection_ms = 500, max_ejection_ms = 5000 }";
    let gw = TestGateway::start(&config_with(
        &[("g", &[a.addr, b.addr], extra)],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    ))
    .await;
    let c = client();
    let mut from_b = 0;
    for _ in 0..12 {
        from_b += usize::from(upstream_of(&c, &gw.url("/x")).await == "b");
    }
    assert_eq!(from_b, 2, "ejected after two consecutive failures");
    let state = upstreams_json(&gw, &c).await;
    assert_eq!(
        state["upstreams"][0]["targets"][1]["health"], "ejected",
        "{state}"
    );
    b.failing.store(false, Ordering::SeqCst);
    eventually("b back after its ejection", || async {
        upstream_of(&c, &gw.url("/x")).await == "b"
    })
    .await;
}

#[tokio::test]
async fn cors_preflight_and_actual_responses() {
    let up = Upstream::start("u").await;
    let routes = "[[routes]]\npath = \"/api/*\"\nupstream = \"u\"\n\
        cors = { allow_origins = [\"https://app.example\"], allow_methods = [\"GET\", \"PUT\"], allow_headers = [\"x-token\"], expose_headers = [\"x-upstream\"], allow_credentials = true, max_age_s = 600 }\n\
        rate_limit = { capacity = 2, refill_per_s = 0.01 }\n";
    let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], routes)).await;
    let c = client();
    let preflight = |origin: &str, method: &str, headers: &str| {
        Request::options(gw.url("/api/x"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let ok = send(&c, preflight("https://app.example", "PUT", "X-Token")).await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        header(&ok, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&ok, "access-control-allow-credentials"), "true");
    assert_eq!(header(&ok, "access-control-max-age"), "600");
    assert!(header(&ok, "access-control-allow-methods").contains("PUT"));
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "answered by the gateway"
    );
    let bad_origin = send(&c, preflight("https://evil.example", "PUT", "x-token")).await;
    assert_eq!(bad_origin.status, 403);
    assert_eq!(bad_origin.json()["error"], "cors_rejected");
    assert_eq!(
        send(&c, preflight("https://app.example", "DELETE", ""))
            .await
            .status,
        403
    );
    assert_eq!(
        send(&c, preflight("https://app.example", "GET", "x-other"))
            .await
            .status,
        403
    );

    let actual = get(&c, &gw.url("/api/x"), &[("origin", "https://app.example")]).await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        header(&actual, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(
        header(&actual, "access-control-expose-headers"),
        "x-upstream"
    );
    assert!(
        header(&actual, "vary")
            .to_ascii_lowercase()
            .contains("origin")
    );
    let foreign = get(&c, &gw.url("/api/x"), &[("origin", "https://evil.example")]).await;
    assert!(foreign.headers.get("access-control-allow-origin").is_none());
    // Errors of the route carry CORS headers too, so a browser can read the 429.
    let limited = get(&c, &gw.url("/api/x"), &[("origin", "https://app.example")]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        header(&limited, "access-control-allow-origin"),
        "https://app.example"
    );
}

pub(crate) const WS_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

pub(crate) async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends the WebSocket handshake to `/ws` and checks the 101 keeps its upgrade headers.
async fn open_tunnel(gw: &TestGateway) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(WS_HANDSHAKE.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    stream
}

pub(crate) async fn echo(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("write");
    let mut got = vec![0u8; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    got
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled_and_survive_a_reload() {
    let up = Upstream::start("u").await;
    let routes = |extra: &str| {
        format!(
            "[[routes]]\npath = \"/ws\"\nupstream = \"u\"\nwebsocket = true\n{extra}\n\
             [[routes]]\npath = \"/plain/*\"\nupstream = \"u\"\nstrip_prefix = \"/plain\"\n"
        )
    };
    let gw = TestGateway::start(&config_with(&[("u", &[up.addr], "")], &routes(""))).await;
    let mut stream = open_tunnel(&gw).await;
    assert_eq!(
        echo(&mut stream, b"hello over the tunnel").await,
        b"hello over the tunnel"
    );
    // A reload (here: the route gets a response header) does not cut the tunnel.
    gw.reconfigure(&config_with(
        &[("u", &[up.addr], "")],
        &routes("response_headers = { set = { x-gen = \"2\" } }"),
    ))
    .await;
    assert_eq!(echo(&mut stream, b"still here").await, b"still here");
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_websocket_connections 1"),
        "{metrics}"
    );

    // A route without `websocket = true` strips Upgrade: the upstream sees a plain GET.
    let plain = raw_handshake(&gw, "/plain/ws").await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
}

async fn raw_handshake(gw: &TestGateway, path: &str) -> String {
    let request = WS_HANDSHAKE.replacen("/ws", path, 1);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut stream).await
}

#[tokio::test]
async fn limiter_state_survives_a_reload_unless_its_settings_change() {
    let up = Upstream::start("u").await;
    let config = |capacity: u32, extra: &str| {
        config_with(
            &[("u", &[up.addr], "")],
            &format!(
                "[[routes]]\npath = \"/a\"\nupstream = \"u\"\n\
                 rate_limit = {{ capacity = {capacity}, refill_per_s = 0.01 }}\n{extra}\n"
            ),
        )
    };
    let gw = TestGateway::start(&config(2, "")).await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/a"), &[]).await.status, 200);
    }
    gw.reconfigure(&config(2, "response_headers = { set = { x-gen = \"2\" } }"))
        .await;
    let still = get(&c, &gw.url("/a"), &[]).await;
    assert_eq!(
        still.status, 429,
        "an unrelated edit keeps the spent allowance"
    );
    gw.reconfigure(&config(3, "")).await;
    assert_eq!(
        get(&c, &gw.url("/a"), &[]).await.status,
        200,
        "new settings start fresh"
    );
}

#[tokio::test]
async fn websocket_handshakes_pass_plugins_and_keep_their_upgrade_headers() {
    let up = Upstream::start("u").await;
    let auth = crate::support::wasm::plugin("api_key_auth");
    let rewrite = crate::support::wasm::plugin("header_rewrite");
    let config = config_with(
        &[("u", &[up.addr], "")],
        "[plugins]\ntimeout_ms = 1000\n\
         [[routes]]\npath = \"/ws\"\nupstream = \"u\"\nwebsocket = true\n\
         plugins = [{ name = \"api-key-auth\", config = { keys = { \"k-alice\" = \"alice\" } } }, \
         { name = \"header-rewrite\", config = { response = { set = { x-served-by = \"fluxgate\" } } } }]\n",
    );
    let gw = TestGateway::start_with_plugins(
        &config,
        &[("api-key-auth", &auth), ("header-rewrite", &rewrite)],
    )
    .await;
    // Without the key, or with a wrong one, the auth plugin refuses the handshake before
    // it reaches the upstream.
    for key in [None, Some("wrong")] {
        let mut request = WS_HANDSHAKE.to_owned();
        if let Some(key) = key {
            request = request.replacen("\r\n\r\n", &format!("\r\nX-Api-Key: {key}\r\n\r\n"), 1);
        }
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 401"), "key {key:?}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "refused handshakes stay in the gateway"
    );
    // With the key: the handshake reaches the upstream with the plugin's edits, the 101
    // keeps its upgrade headers, and the tunnel echoes.
    let request = WS_HANDSHAKE.replacen("\r\n\r\n", "\r\nX-Api-Key: k-alice\r\n\r\n", 1);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains("x-upstream-saw-consumer: alice"),
        "the upstream got the handshake as the auth plugin left it: {head}"
    );
    assert!(
        !lower.contains("x-served-by"),
        "on-response hooks do not run on the 101: {head}"
    );
    assert_eq!(
        echo(&mut stream, b"through plugins").await,
        b"through plugins"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}
