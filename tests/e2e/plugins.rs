//! WebAssembly plugins end to end: the example plugins and test-only misbehaving ones,
//! compiled to wasm32-wasip2 by the test run and loaded by the real host.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Request;
use http_body_util::Full;
use sha2::Sha256;

use crate::support::upstream::Upstream;
use crate::support::wasm::plugin;
use crate::support::{ChannelBody, PATIENCE, Reply, TestGateway, client, get, send};

/// A gateway with one upstream, `[plugins]` settings and one route `/*` whose chain is
/// `route_plugins` (TOML array body), with the given plugin files in its folder. Unless a
/// test is about time limits, hooks get a 1 s budget so a loaded CI machine cannot
/// turn a slow call into a spurious timeout.
async fn gateway(
    up: &Upstream,
    plugin_settings: &str,
    route_plugins: &str,
    files: &[(&str, &str)],
) -> TestGateway {
    let relaxed;
    let plugin_settings = if plugin_settings.contains("timeout_ms") {
        plugin_settings
    } else {
        relaxed = format!("timeout_ms = 1000\n{plugin_settings}");
        &relaxed
    };
    let config = format!(
        "[plugins]\n{plugin_settings}\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\nname = \"all\"\npath = \"/*\"\nupstream = \"u\"\nplugins = [{route_plugins}]\n",
        up.addr
    );
    let wasm: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(name, krate)| ((*name).to_owned(), plugin(krate)))
        .collect();
    let refs: Vec<(&str, &[u8])> = wasm
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    TestGateway::start_with_plugins(&config, &refs).await
}

fn upstream_header(reply: &Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name][0].as_str().map(str::to_owned)
}

#[tokio::test]
async fn api_key_auth_rejects_missing_and_wrong_keys_and_forwards_the_identity() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "",
        r#"{ name = "api-key-auth", config = { keys = { "k-alice" = "alice" } } }"#,
        &[("api-key-auth", "api_key_auth")],
    )
    .await;
    let c = client();
    let missing = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"], "unauthorized");
    let wrong = get(&c, &gw.url("/x"), &[("x-api-key", "nope")]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "direct responses skip the upstream"
    );
    let ok = get(&c, &gw.url("/x"), &[("x-api-key", "k-alice")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        upstream_header(&ok, "x-consumer-id").as_deref(),
        Some("alice")
    );
    assert_eq!(
        upstream_header(&ok, "x-api-key"),
        None,
        "the key is not forwarded"
    );
}

fn jwt(secret: &str, claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[tokio::test]
async fn jwt_auth_verifies_signature_and_time_claims() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "",
        r#"{ name = "jwt-auth", config = { secret = "s3cret", claims_to_headers = { sub = "x-user", role = "x-role" } } }"#,
        &[("jwt-auth", "jwt_auth")],
    )
    .await;
    let c = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bearer = |t: String| format!("Bearer {t}");
    let good = bearer(jwt(
        "s3cret",
        serde_json::json!({"sub": "alice", "role": "admin", "exp": now + 60}),
    ));
    let reply = get(&c, &gw.url("/x"), &[("authorization", &good)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream_header(&reply, "x-user").as_deref(), Some("alice"));
    assert_eq!(upstream_header(&reply, "x-role").as_deref(), Some("admin"));
    for (why, token) in [
        (
            "expired",
            bearer(jwt(
                "s3cret",
                serde_json::json!({"sub": "a", "exp": now - 60}),
            )),
        ),
        (
            "not yet valid",
            bearer(jwt(
                "s3cret",
                serde_json::json!({"sub": "a", "nbf": now + 600}),
            )),
        ),
        (
            "wrong key",
            bearer(jwt(
                "other",
                serde_json::json!({"sub": "a", "exp": now + 60}),
            )),
        ),
        ("garbage", "Bearer a.b.c".to_owned()),
    ] {
        let reply = get(&c, &gw.url("/x"), &[("authorization", &token)]).await;
        assert_eq!(reply.status, 401, "{why}: {}", reply.text());
        assert_eq!(reply.json()["error"], "unauthorized", "{why}");
    }
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 401);
}

#[tokio::test]
async fn header_rewrite_edits_both_directions_and_the_chain_runs_in_order() {
    let up = Upstream::start("u").await;
    // Global tagger runs first on the request and last on the response.
    let gw = gateway(
        &up,
        "global = [\"tagger\"]",
        r#"{ name = "header-rewrite", config = { request = { set = { x-env = "prod" }, remove = ["cookie"], rename = { x-tagger = "x-renamed" } }, response = { set = { x-served-by = "fluxgate", x-tagger = "route" }, remove = ["x-upstream"] } } }"#,
        &[("header-rewrite", "header_rewrite"), ("tagger", "tagger_a")],
    )
    .await;
    let reply = get(
        &client(),
        &gw.url("/x"),
        &[("cookie", "a=1"), ("x-env", "dev")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream_header(&reply, "x-env").as_deref(), Some("prod"));
    assert_eq!(upstream_header(&reply, "cookie"), None);
    // The route's rename saw the global plugin's request header: global ran first.
    assert_eq!(upstream_header(&reply, "x-renamed").as_deref(), Some("a"));
    assert_eq!(upstream_header(&reply, "x-tagger"), None);
    assert_eq!(reply.headers["x-served-by"], "fluxgate");
    assert!(reply.headers.get("x-upstream").is_none());
    // The global plugin's on-response ran after the route's: its value won.
    assert_eq!(reply.headers["x-tagger"], "a");
}

#[tokio::test]
async fn rate_quota_counts_per_key_in_the_shared_store() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "",
        r#"{ name = "rate-quota", config = { limit = 2 } }"#,
        &[("rate-quota", "rate_quota")],
    )
    .await;
    let c = client();
    let first = get(&c, &gw.url("/x"), &[("x-api-key", "k1")]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-quota-limit"], "2");
    assert_eq!(first.headers["x-quota-remaining"], "1");
    assert_eq!(
        get(&c, &gw.url("/x"), &[("x-api-key", "k1")]).await.status,
        200
    );
    let over = get(&c, &gw.url("/x"), &[("x-api-key", "k1")]).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.json()["error"], "quota_exceeded");
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    // Another key has its own quota; no key at all is refused.
    assert_eq!(
        get(&c, &gw.url("/x"), &[("x-api-key", "k2")]).await.status,
        200
    );
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 401);
}

/// Sends `n` plain requests concurrently and returns how many got a 200.
async fn healthy_requests(gw: &TestGateway, path: &str, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = gw.url(path);
            tokio::spawn(async move { get(&client(), &url, &[]).await.status == 200 })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap_or(false));
    }
    ok
}

#[tokio::test]
async fn a_looping_plugin_is_cut_off_at_its_time_limit_and_others_are_served() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 50\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/spin\"\nupstream = \"u\"\nplugins = [\"spin\"]\n\
         [[routes]]\npath = \"/plain\"\nupstream = \"u\"\n",
        up.addr
    );
    let spin = plugin("spin");
    let gw = TestGateway::start_with_plugins(&config, &[("spin", &spin)]).await;
    let c = client();
    let started = Instant::now();
    let spun = tokio::spawn({
        let url = gw.url("/spin");
        async move { get(&client(), &url, &[]).await }
    });
    assert_eq!(healthy_requests(&gw, "/plain", 20).await, 20);
    let reply = spun.await.unwrap();
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"], "plugin_failed");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{}",
        reply.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let again = get(&c, &gw.url("/spin"), &[]).await;
    assert_eq!(again.status, 500);
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_plugin_errors_total{kind=\"timeout\",plugin=\"spin\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_trapping_instance_is_replaced_and_the_plugin_keeps_working() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "\"trap\"", &[("trap", "trap")]).await;
    let c = client();
    let trapped = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(trapped.status, 500);
    assert!(trapped.json()["message"].as_str().unwrap().contains("trap"));
    let fine = get(&c, &gw.url("/x"), &[("x-trap", "no")]).await;
    assert_eq!(fine.status, 200);
    assert_eq!(fine.headers["x-trap-plugin"], "ok");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_memory_limit() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "memory_limit_mb = 16", "\"hog\"", &[("hog", "hog")]).await;
    let c = client();
    let reply = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.json()["message"].as_str().unwrap().contains("memory"),
        "{}",
        reply.text()
    );
    assert_eq!(get(&c, &gw.url("/api/v1/health"), &[]).await.status, 200);
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_plugin_errors_total{kind=\"memory\",plugin=\"hog\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn on_error_allow_skips_a_failing_plugin() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "timeout_ms = 20\non_error = \"allow\"",
        "\"spin\", \"missing\"",
        &[("spin", "spin")],
    )
    .await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_missing_plugin_or_one_whose_init_always_fails_is_not_loaded() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "\"not-there\"", &[]).await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "plugin_failed");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("not_loaded"),
        "{}",
        reply.text()
    );
    // bad-init refuses every config: the file is rejected at load.
    let gw = gateway(&up, "", "\"bad-init\"", &[("bad-init", "bad_init")]).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 503);
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_plugin_loads_total{plugin=\"bad-init\",result=\"error\"} 1"),
        "{metrics}"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_bad_config_fails_only_the_routes_that_use_it() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/good\"\nupstream = \"u\"\nplugins = [{{ name = \"api-key-auth\", config = {{ keys = {{ k = \"alice\" }} }} }}]\n\
         [[routes]]\npath = \"/bad\"\nupstream = \"u\"\nplugins = [{{ name = \"api-key-auth\", config = {{ keys = {{}} }} }}]\n",
        up.addr
    );
    let auth = plugin("api_key_auth");
    let gw = TestGateway::start_with_plugins(&config, &[("api-key-auth", &auth)]).await;
    let c = client();
    assert_eq!(
        get(&c, &gw.url("/good"), &[("x-api-key", "k")])
            .await
            .status,
        200
    );
    let bad = get(&c, &gw.url("/bad"), &[("x-api-key", "k")]).await;
    assert_eq!(bad.status, 500);
    assert!(
        bad.json()["message"].as_str().unwrap().contains("init"),
        "{}",
        bad.text()
    );
}

/// Writes a plugin file the way a careful deploy does: a temp file, then a rename.
fn install(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

async fn wait_for_tag(gw: &TestGateway, tag: &str) {
    let c = client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = get(&c, &gw.url("/x"), &[]).await;
        if reply.headers.get("x-tagger").is_some_and(|v| v == tag) {
            return;
        }
        assert!(Instant::now() < deadline, "tag {tag} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plugins_are_added_replaced_and_removed_without_a_restart() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up, "", "\"tagger\"", &[]).await;
    let c = client();
    assert_eq!(
        get(&c, &gw.url("/x"), &[]).await.status,
        503,
        "not loaded yet"
    );
    install(&gw.plugin_dir, "tagger", &plugin("tagger_a"));
    wait_for_tag(&gw, "a").await;
    // A broken file is rejected and the loaded version keeps serving.
    std::fs::write(gw.plugin_dir.join("tagger.wasm"), b"not wasm at all").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.headers["x-tagger"], "a");
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_plugin_loads_total{plugin=\"tagger\",result=\"error\"} 1"),
        "{metrics}"
    );
    install(&gw.plugin_dir, "tagger", &plugin("tagger_b"));
    wait_for_tag(&gw, "b").await;
    std::fs::remove_file(gw.plugin_dir.join("tagger.wasm")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while get(&c, &gw.url("/x"), &[]).await.status != 503 {
        assert!(Instant::now() < deadline, "removal not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request of the hot-swap test: the tags its two hooks set, its upstream request
/// number and how many upstream requests had arrived when the upstream answered it.
struct Traced {
    request_tag: Option<String>,
    response_tag: Option<String>,
    n: u64,
    arrived_by_answer: u64,
}

#[tokio::test]
async fn a_hot_swap_under_load_fails_nothing_and_never_mixes_versions() {
    let up = Upstream::start("u").await;
    let gw = Arc::new(gateway(&up, "", "\"tagger\"", &[("tagger", "tagger_a")]).await);
    // Each worker's upstream answer takes a different time, so the workers do not run in
    // lockstep: whenever the swap lands, requests are waiting on the upstream between
    // their on-request and on-response hooks.
    let workers: Vec<_> = (0..6u64)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let c = client();
                let url = gw.url(&format!("/slow/{}", 120 + 45 * i));
                let deadline = Instant::now() + PATIENCE;
                let mut traced = Vec::new();
                let mut b_here = 0;
                // Until this worker has seen the new version 5 times (bounded in time).
                while b_here < 5 && Instant::now() < deadline {
                    let reply = get(&c, &url, &[]).await;
                    let response_tag = reply
                        .headers
                        .get("x-tagger")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let (request_tag, n, arrived_by_answer) = if reply.status == 200 {
                        let echo = reply.json();
                        (
                            upstream_header(&reply, "x-tagger"),
                            echo["n"].as_u64().unwrap_or(0),
                            echo["arrived_by_answer"].as_u64().unwrap_or(0),
                        )
                    } else {
                        (None, 0, 0)
                    };
                    b_here += usize::from(response_tag.as_deref() == Some("b"));
                    traced.push(Traced {
                        request_tag,
                        response_tag,
                        n,
                        arrived_by_answer,
                    });
                }
                traced
            })
        })
        .collect();
    // Swap once every worker has a request on the upstream.
    let started = Instant::now();
    while up.requests.load(Ordering::SeqCst) < 12 {
        assert!(started.elapsed() < PATIENCE, "load never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    install(&gw.plugin_dir, "tagger", &plugin("tagger_b"));
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    // Both hooks of one request must come from the same version.
    let mixed: Vec<_> = all
        .iter()
        .filter(|t| {
            !matches!(
                (t.request_tag.as_deref(), t.response_tag.as_deref()),
                (Some("a"), Some("a")) | (Some("b"), Some("b"))
            )
        })
        .map(|t| (t.request_tag.clone(), t.response_tag.clone()))
        .collect();
    assert!(
        mixed.is_empty(),
        "failed or mixed requests (request tag, response tag): {mixed:?}"
    );
    let seen_b = all
        .iter()
        .filter(|t| t.response_tag.as_deref() == Some("b"))
        .count();
    assert_eq!(seen_b, 6 * 5, "every worker saw the new version");
    // A request spanned the swap when a request that got the new version reached the
    // upstream before the upstream answered it with the old one: the swap came before
    // the first one's on-request, so after the second one's on-request and before its
    // on-response.
    let first_b = all
        .iter()
        .filter(|t| t.request_tag.as_deref() == Some("b"))
        .map(|t| t.n)
        .min()
        .expect("a request with the new version");
    let spanning = all
        .iter()
        .filter(|t| t.request_tag.as_deref() == Some("a") && t.arrived_by_answer >= first_b)
        .count();
    assert!(
        spanning > 0,
        "no request was between its two hooks when the swap landed"
    );
    eprintln!("{spanning} requests spanned the swap");
}

#[tokio::test]
async fn the_walkthrough_plugin_works_as_the_examples_readme_says() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "",
        r#"{ name = "hello", config = { greeting = "hello from wasm" } }"#,
        &[("hello", "hello_plugin")],
    )
    .await;
    let c = client();
    let hello = get(&c, &gw.url("/hello"), &[]).await;
    assert_eq!(
        hello.json(),
        serde_json::json!({"message": "hello from wasm", "version": "v1"})
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    let proxied = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(proxied.headers["x-hello"], "hello from wasm (v1)");
}

#[tokio::test]
async fn a_body_over_plugins_max_body_bytes_is_413_for_a_plugin_that_asks_for_it() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "max_body_bytes = 1024",
        "\"body-size\"",
        &[("body-size", "body_size")],
    )
    .await;
    let c = client();
    let post = |size: usize| {
        Request::post(gw.url("/upload-echo"))
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap()
    };
    // Up to the limit: the plugin sees the whole body, the upstream gets it too.
    let fits = send(&c, post(1024)).await;
    assert_eq!(fits.status, 200, "{}", fits.text());
    assert_eq!(
        upstream_header(&fits, "x-body-size").as_deref(),
        Some("1024")
    );
    assert_eq!(fits.json()["body"].as_str().map(str::len), Some(1024));
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
    // One byte more, announced by Content-Length: refused with 413.
    let over = send(&c, post(1025)).await;
    assert_eq!(over.status, 413, "{}", over.text());
    assert_eq!(over.json()["error"], "body_too_large");
    // The same without a Content-Length (chunked, in pieces).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let chunked = Request::post(gw.url("/upload-echo"))
        .body(ChannelBody(rx))
        .unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..4 {
            if tx.send(Bytes::from(vec![b'y'; 400])).await.is_err() {
                break;
            }
        }
    });
    let chunked_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<ChannelBody>();
    let response = tokio::time::timeout(PATIENCE, chunked_client.request(chunked))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(response.status(), 413);
    feeder.abort();
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "refused bodies never reach the upstream"
    );
    // Nor the plugin: it never sees a cut-off body.
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .contains("fluxgate_plugin_calls_total{hook=\"on_request\",plugin=\"body-size\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn on_response_hooks_run_on_cache_hits() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/*\"\nupstream = \"u\"\ncache = {{ ttl_ms = 60000 }}\nplugins = [\"tagger\"]\n",
        up.addr
    );
    let tagger = plugin("tagger_a");
    let gw = TestGateway::start_with_plugins(&config, &[("tagger", &tagger)]).await;
    let c = client();
    let miss = get(&c, &gw.url("/cached"), &[]).await;
    assert_eq!(miss.headers["x-cache"], "MISS");
    assert_eq!(miss.headers["x-tagger"], "a");
    let hit = get(&c, &gw.url("/cached"), &[]).await;
    assert_eq!(hit.headers["x-cache"], "HIT");
    assert_eq!(hit.json()["n"], miss.json()["n"], "the stored answer");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
    // The stored copy is taken before on-response hooks run, so the tag on the hit is
    // the hook's work on the hit itself; the call count says so too.
    assert_eq!(
        hit.headers.get("x-tagger").map(|v| v.to_str().unwrap()),
        Some("a"),
        "the plugin's on-response header on the cached answer"
    );
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_plugin_calls_total{hook=\"on_response\",plugin=\"tagger\"} 2\n"),
        "{metrics}"
    );
}
