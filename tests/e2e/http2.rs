//! HTTP/2 end to end: h2 over TLS (ALPN) and h2c with prior knowledge on the plain
//! listener (only when `server.h2c` is on), many streams on one connection, HTTP/2
//! upstreams (`protocol = "http2"`: h2c, and h2 by ALPN over TLS) multiplexed on one
//! upstream connection, and the gateway's features (limits, cache, plugins, CORS,
//! metrics) working the same for HTTP/2 clients.
//!
//! - `abuse`  the `[server.http2]` limits against misbehaving clients (python3-h2)
//! - `grpc`   a real gRPC client and server (python3-grpcio) through the gateway

mod abuse;
mod grpc;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::certs::{Pem, TestCa};
use crate::support::h2::{self, H2, get_req};
use crate::support::upstream::{Serving, Upstream};
use crate::support::wasm::plugin;
use crate::support::{TestGateway, client, get, raw_exchange};

/// The name the gateway's test certificate is for.
pub(crate) const NAME: &str = "gw.test";

/// A gateway with a TLS listener (certificate for gw.test, the CA next to the config as
/// `ca.pem`), `[server]` lines `server`, then `rest` (upstreams and routes).
pub(crate) async fn gateway(ca: &TestCa, server: &str, rest: &str) -> TestGateway {
    gateway_with(ca, server, rest, &[], &[]).await
}

/// As `gateway`, with extra files next to the config and plugins in its folder.
pub(crate) async fn gateway_with(
    ca: &TestCa,
    server: &str,
    rest: &str,
    files: &[(&str, Vec<u8>)],
    plugins: &[(&str, &[u8])],
) -> TestGateway {
    let pem: Pem = ca.server(&[NAME]);
    let config = format!(
        "[server]\n{server}\n\n[tls]\nlisten = \"127.0.0.1:0\"\n\
         certificates = [{{ cert = \"gw.pem\", key = \"gw.key\" }}]\n\n{rest}"
    );
    let mut all: Vec<(&str, &[u8])> = vec![
        ("gw.pem", pem.cert.as_bytes()),
        ("gw.key", pem.key.as_bytes()),
    ];
    let ca_pem = ca.cert_pem();
    all.push(("ca.pem", ca_pem.as_bytes()));
    for (name, bytes) in files {
        all.push((name, bytes));
    }
    TestGateway::start_with_files(&config, plugins, &all).await
}

/// An HTTP/2 connection to the gateway's TLS listener.
pub(crate) async fn tls_h2(gw: &TestGateway, ca: &TestCa) -> H2 {
    let addr = gw.tls_addr.expect("TLS listener");
    h2::h2_tls(addr, NAME, ca.client_config(&[b"h2"])).await
}

fn upstream_to(name: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "[upstreams.{name}]\ntargets = [{{ url = \"http://{}\" }}]\n{extra}\n",
        up.addr
    )
}

#[tokio::test]
async fn h2_over_tls_and_h2c_with_prior_knowledge_reach_the_routes() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let rest = format!(
        "{}[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        upstream_to("u", &up, "")
    );
    let gw = gateway(&ca, "h2c = true", &rest).await;

    let tls = tls_h2(&gw, &ca).await;
    let reply = h2::send(&tls, get_req("/over/tls?x=1")).await.unwrap();
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.reply.status, 200, "{}", reply.reply.text());
    let echo = reply.reply.json();
    assert_eq!(echo["path"], "/over/tls");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    // :authority becomes the Host the upstream sees (and X-Forwarded-Host).
    assert_eq!(echo["headers"]["x-forwarded-host"][0], NAME);
    // An HTTP/1.1 upstream is spoken to with HTTP/1.1 whatever the client used.
    assert_eq!(echo["version"], "HTTP/1.1");

    let plain = h2::h2c(gw.addr).await;
    let reply = h2::send(&plain, get_req("/over/h2c")).await.unwrap();
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.reply.status, 200, "{}", reply.reply.text());
    let echo = reply.reply.json();
    assert_eq!(echo["path"], "/over/h2c");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "http");

    // HTTP/1.1 keeps working on the same plain listener.
    let reply = get(&client(), &gw.url("/over/http1"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/over/http1");

    // A request body crosses HTTP/2 → HTTP/1.1 whole (no Content-Length from the
    // client: HTTP/2 frames it).
    let body = "x".repeat(100_000);
    let post = Request::post("http://gw.test/upload")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = h2::send(&tls, post).await.unwrap();
    assert_eq!(reply.reply.status, 200);
    assert_eq!(reply.reply.body.len(), body.len());
}

#[tokio::test]
async fn without_h2c_a_preface_on_the_plain_port_is_not_served_as_http2() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let rest = format!(
        "{}[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        upstream_to("u", &up, "")
    );
    let gw = gateway(&ca, "h2c = false", &rest).await;
    // The preface and an empty SETTINGS frame, as an h2c client opens.
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let answer = raw_exchange(gw.addr, &opening, Duration::from_secs(3)).await;
    assert!(
        answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5") || answer.is_empty(),
        "an HTTP/1.1 refusal or a close, not HTTP/2: {answer:?}"
    );
    // No SETTINGS frame came back: a real h2 client gets nowhere.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(5), async move {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await?;
        tokio::spawn(conn);
        sender.send_request(get_req("/x")).await
    })
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "h2c was served with server.h2c = false"
    );
    // HTTP/2 over TLS is unaffected.
    let tls = tls_h2(&gw, &ca).await;
    assert_eq!(
        h2::send(&tls, get_req("/x")).await.unwrap().reply.status,
        200
    );
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection_are_served_in_parallel() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let rest = format!(
        "{}[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        upstream_to("u", &up, "")
    );
    let gw = gateway(&ca, "h2c = true", &rest).await;
    for conn in [tls_h2(&gw, &ca).await, h2::h2c(gw.addr).await] {
        let started = Instant::now();
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(
                    async move { h2::send(&conn, get_req(&format!("/slow/300/{i}"))).await },
                )
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let reply = call.await.unwrap().unwrap();
            assert_eq!(reply.reply.status, 200);
            assert_eq!(reply.reply.json()["path"], format!("/slow/300/{i}"));
        }
        // 50 × 300 ms one after the other would take 15 s.
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "streams were not served in parallel: {took:?}"
        );
    }
}

/// Concurrent requests through the gateway to `path`, answered over HTTP/2 by `up`.
async fn burst(gw: &TestGateway, path: &str, n: usize) {
    let c = client();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url(&format!("{path}/slow/200/{i}")));
            tokio::spawn(async move { get(&c, &url, &[]).await })
        })
        .collect();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["version"], "HTTP/2.0");
    }
}

#[tokio::test]
async fn http2_upstreams_over_h2c_and_tls_alpn_multiplex_on_one_connection() {
    let ca = TestCa::new("test CA");
    let h2c_up = Upstream::start_with(
        "h2c",
        Serving {
            tls: None,
            http2: true,
        },
    )
    .await;
    let upstream_pem = ca.server(&["upstream.test"]);
    let tls_up = Upstream::start_with(
        "h2tls",
        Serving {
            // ALPN decides: the upstream offers h2 and http/1.1, the gateway asks for h2.
            tls: Some(TestCa::server_config(&upstream_pem, &[b"h2", b"http/1.1"])),
            http2: false,
        },
    )
    .await;
    let rest = format!(
        "[upstreams.plain]\nprotocol = \"http2\"\ntargets = [{{ url = \"http://{}\" }}]\n\n\
         [upstreams.secure]\nprotocol = \"http2\"\ntargets = [{{ url = \"https://{}\" }}]\n\
         tls = {{ ca_file = \"ca.pem\", server_name = \"upstream.test\" }}\n\n\
         [[routes]]\npath = \"/plain/*\"\nupstream = \"plain\"\nstrip_prefix = \"/plain\"\n\n\
         [[routes]]\npath = \"/secure/*\"\nupstream = \"secure\"\nstrip_prefix = \"/secure\"\n",
        h2c_up.addr, tls_up.addr
    );
    let gw = gateway(&ca, "", &rest).await;
    burst(&gw, "/plain", 20).await;
    burst(&gw, "/secure", 20).await;
    assert_eq!(
        h2c_up.connections.load(Ordering::SeqCst),
        1,
        "20 concurrent requests share one h2c connection"
    );
    assert_eq!(
        tls_up.connections.load(Ordering::SeqCst),
        1,
        "20 concurrent requests share one h2 connection"
    );
    assert_eq!(h2c_up.requests.load(Ordering::SeqCst), 20);
    assert_eq!(tls_up.requests.load(Ordering::SeqCst), 20);

    // An HTTP/2 client through to an HTTP/2 upstream, streaming a body both ways.
    let conn = tls_h2(&gw, &ca).await;
    let body = Bytes::from(vec![b'z'; 300_000]);
    let post = Request::post("http://gw.test/secure/upload")
        .body(Full::new(body.clone()))
        .unwrap();
    let reply = h2::send(&conn, post).await.unwrap();
    assert_eq!(reply.reply.status, 200);
    assert_eq!(reply.reply.body, body);
    let reply = h2::send(&conn, get_req("/plain/echo")).await.unwrap();
    assert_eq!(reply.reply.json()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn limits_cache_plugins_cors_and_metrics_work_the_same_over_http2() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let rest = format!(
        "{}\
         [[routes]]\npath = \"/limited\"\nupstream = \"u\"\n\
         rate_limit = {{ capacity = 2, refill_per_s = 0.01 }}\n\n\
         [[routes]]\npath = \"/cached/*\"\nupstream = \"u\"\ncache = {{ ttl_ms = 10000 }}\n\n\
         [[routes]]\npath = \"/auth/*\"\nupstream = \"u\"\n\
         plugins = [{{ name = \"api-key-auth\", config = {{ keys = {{ \"k-alice\" = \"alice\" }} }} }}]\n\n\
         [[routes]]\npath = \"/cors/*\"\nupstream = \"u\"\n\
         cors = {{ allow_origins = [\"https://app.example\"], allow_methods = [\"GET\", \"PUT\"] }}\n",
        upstream_to("u", &up, "")
    );
    let wasm = plugin("api_key_auth");
    let gw = gateway_with(&ca, "", &rest, &[], &[("api-key-auth", &wasm)]).await;
    let conn = tls_h2(&gw, &ca).await;
    let status = |r: &h2::H2Reply| r.reply.status.as_u16();

    // Rate limit: 2 allowed, then 429 with Retry-After, on one HTTP/2 connection.
    for _ in 0..2 {
        let r = h2::send(&conn, get_req("/limited")).await.unwrap();
        assert_eq!(status(&r), 200);
        assert!(
            r.reply.headers.contains_key("ratelimit-remaining"),
            "{:?}",
            r.reply.headers
        );
    }
    let refused = h2::send(&conn, get_req("/limited")).await.unwrap();
    assert_eq!(status(&refused), 429);
    assert_eq!(refused.reply.json()["error"], "rate_limited");
    assert!(refused.reply.headers.contains_key("retry-after"));

    // Cache: a miss, then a hit with the same stored body.
    let first = h2::send(&conn, get_req("/cached/item")).await.unwrap();
    let second = h2::send(&conn, get_req("/cached/item")).await.unwrap();
    assert_eq!(first.reply.headers["x-cache"], "MISS");
    assert_eq!(second.reply.headers["x-cache"], "HIT");
    assert_eq!(first.reply.json()["n"], second.reply.json()["n"]);

    // A plugin: refused without a key, the identity forwarded with one.
    let missing = h2::send(&conn, get_req("/auth/x")).await.unwrap();
    assert_eq!(status(&missing), 401);
    assert_eq!(missing.reply.json()["error"], "unauthorized");
    let keyed = Request::get("http://gw.test/auth/x")
        .header("x-api-key", "k-alice")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let ok = h2::send(&conn, keyed).await.unwrap();
    assert_eq!(status(&ok), 200);
    assert_eq!(ok.reply.json()["headers"]["x-consumer-id"][0], "alice");

    // CORS: a preflight answered by the gateway, headers on the actual response.
    let preflight = Request::options("http://gw.test/cors/x")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = h2::send(&conn, preflight).await.unwrap();
    assert_eq!(status(&answer), 204);
    assert_eq!(
        answer.reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let actual = Request::get("http://gw.test/cors/x")
        .header("origin", "https://app.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let actual = h2::send(&conn, actual).await.unwrap();
    assert_eq!(
        actual.reply.headers["access-control-allow-origin"],
        "https://app.example"
    );

    // The gateway's own endpoints answer over HTTP/2, and count HTTP/2 requests.
    let health = h2::send(&conn, get_req("/api/v1/health")).await.unwrap();
    assert_eq!(status(&health), 200);
    let metrics = h2::send(&conn, get_req("/metrics"))
        .await
        .unwrap()
        .reply
        .text();
    assert!(
        metrics.contains("fluxgate_rate_limited_total{route=\"/limited\",scope=\"route\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fluxgate_tls_handshakes_total{alpn=\"h2\",version=\"1.3\"} 1"),
        "{metrics}"
    );
}
