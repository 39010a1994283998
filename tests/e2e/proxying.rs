//! Proxy correctness: headers both ways, Host, rewrites, streamed bodies.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::support::upstream::Upstream;
use crate::support::{ChannelBody, PATIENCE, TestGateway, client, config_with, get};

fn route(extra: &str) -> String {
    format!("[[routes]]\npath = \"/*\"\nupstream = \"g\"\n{extra}\n")
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_forwarded_headers_added() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&config_with(&[("g", &[up.addr], "")], &route(""))).await;
    let c = client();
    let reply = get(
        &c,
        &gw.url("/echo"),
        &[
            ("connection", "x-client-secret"),
            ("x-client-secret", "s"),
            ("keep-alive", "timeout=1"),
            ("te", "gzip"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-end-to-end", "kept"),
            ("host", "api.example.test"),
        ],
    )
    .await;
    let headers = &reply.json()["headers"];
    for gone in [
        "x-client-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} was forwarded: {headers}"
        );
    }
    assert_eq!(headers["x-end-to-end"][0], "kept");
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-host"][0], "api.example.test");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    // Default: the upstream sees its own host:port.
    assert_eq!(headers["host"][0], up.addr.to_string());

    let hop = get(&c, &gw.url("/hop"), &[]).await;
    assert_eq!(hop.status, 200);
    for gone in ["x-upstream-secret", "keep-alive", "proxy-authenticate"] {
        assert!(hop.headers.get(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(hop.headers["x-upstream"], "u");
}

#[tokio::test]
async fn host_is_forwarded_as_configured() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        "[[routes]]\npath = \"/keep\"\nupstream = \"g\"\npreserve_host = true\n\
         [[routes]]\npath = \"/fixed\"\nupstream = \"g\"\nhost_rewrite = \"internal.svc\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let host_of =
        |r: crate::support::Reply| r.json()["headers"]["host"][0].as_str().unwrap().to_owned();
    assert_eq!(
        host_of(get(&c, &gw.url("/keep"), &[("host", "public.example")]).await),
        "public.example"
    );
    assert_eq!(
        host_of(get(&c, &gw.url("/fixed"), &[("host", "public.example")]).await),
        "internal.svc"
    );
}

#[tokio::test]
async fn paths_are_rewritten_and_headers_edited_per_route() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        r#"
[[routes]]
path = "/api/v1/users/:id"
upstream = "g"
strip_prefix = "/api/v1"
request_headers = { set = { x-env = "prod" }, remove = ["cookie"] }
response_headers = { set = { x-served-by = "fluxgate" }, remove = ["x-upstream"] }
[[routes]]
path = "/svc/*"
upstream = "g"
add_prefix = "/internal"
[[routes]]
path = "/old/*"
upstream = "g"
replace_prefix = { from = "/old", to = "/new/v2" }
"#,
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let reply = get(
        &c,
        &gw.url("/api/v1/users/7?full=1"),
        &[("cookie", "a=b"), ("x-env", "dev")],
    )
    .await;
    let json = reply.json();
    assert_eq!(json["path"], "/users/7");
    assert_eq!(json["query"], "full=1");
    assert_eq!(json["headers"]["x-env"], serde_json::json!(["prod"]));
    assert!(json["headers"].get("cookie").is_none());
    assert_eq!(reply.headers["x-served-by"], "fluxgate");
    assert!(reply.headers.get("x-upstream").is_none());
    assert_eq!(
        get(&c, &gw.url("/svc/a/b"), &[]).await.json()["path"],
        "/internal/svc/a/b"
    );
    assert_eq!(
        get(&c, &gw.url("/old/x"), &[]).await.json()["path"],
        "/new/v2/x"
    );
    // Dot segments are resolved before routing: this cannot escape /svc/*.
    assert_eq!(
        get(&c, &gw.url("/svc/a/../b"), &[]).await.json()["path"],
        "/internal/svc/b"
    );
}

#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&config_with(&[("g", &[up.addr], "")], &route(""))).await;
    let response = tokio::time::timeout(
        PATIENCE,
        client().request(
            Request::get(gw.url("/stream"))
                .body(Default::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let mut body = response.into_body();
    // The upstream holds "second" back until we have seen "first": a buffering proxy
    // would never deliver "first" and this would time out.
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("first chunk streamed");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        Bytes::from_static(b"first")
    );
    up.release_stream.notify_one();
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
}

#[tokio::test]
async fn request_bodies_stream_without_buffering() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&config_with(&[("g", &[up.addr], "")], &route(""))).await;
    let streaming_client: Client<_, ChannelBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let (tx, rx) = mpsc::channel(1);
    let request = Request::post(gw.url("/upload"))
        .body(ChannelBody(rx))
        .unwrap();
    let pending = tokio::spawn(async move { streaming_client.request(request).await });
    tx.send(Bytes::from_static(b"part-one;")).await.unwrap();
    // The upstream sees the first part while the client still holds the rest.
    let first = tokio::time::timeout(PATIENCE, async {
        up.first_chunks.lock().await.recv().await
    })
    .await
    .expect("first part streamed through")
    .unwrap();
    assert_eq!(first, Bytes::from_static(b"part-one;"));
    tx.send(Bytes::from_static(b"part-two")).await.unwrap();
    drop(tx);
    let response = tokio::time::timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"part-one;part-two"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_with_latency() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        "[[routes]]\nname = \"everything\"\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    for _ in 0..3 {
        get(&c, &gw.url("/ok"), &[]).await;
    }
    get(&c, &gw.url("/status/503"), &[]).await;
    // The access hook runs as the body ends; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        text.contains("fluxgate_requests_total{route=\"everything\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("fluxgate_requests_total{route=\"everything\",status=\"503\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fluxgate_request_duration_seconds_count{route=\"everything\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn requests_abandoned_by_their_clients_are_accounted_exactly_once() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&config_with(&[("g", &[up.addr], "")], &route(""))).await;
    let metrics = &gw.gateway.metrics;
    assert_eq!(metrics.in_flight.get(), 0);
    // Five clients send a request the upstream takes a while over, then go away
    // before the answer.
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let request = format!("GET /slow/3000/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
            .await
            .unwrap();
        clients.push(conn);
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metrics.in_flight.get() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(clients);
    // Each abandoned request ends its accounting once: the gauge comes back to zero
    // (not below), and each is counted once, as the client-closed 499.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metrics.in_flight.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight stuck at {}",
            metrics.in_flight.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metrics.in_flight.get(), 0);
    let text = metrics.render();
    assert!(
        text.contains("fluxgate_requests_total{route=\"/*\",status=\"499\"} 5"),
        "{text}"
    );
}
