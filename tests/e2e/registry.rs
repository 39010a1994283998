//! The service registry on one node: register, route at `/{service}/*`, list,
//! deregister, TTL and heartbeats, bad input, health checks, config precedence.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::cli::Process;
use crate::support::upstream::Upstream;
use crate::support::{PATIENCE, Reply, TestClient, TestGateway, client, get, send};

async fn post(c: &TestClient, url: &str, body: &str) -> Reply {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(c, req).await
}

async fn delete(c: &TestClient, url: &str, body: &str) -> Reply {
    let req = Request::delete(url)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(c, req).await
}

fn registration(id: &str, service: &str, up: &Upstream, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","service":"{service}","address":"127.0.0.1","port":{}{extra}}}"#,
        up.addr.port()
    )
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registered_services_are_served_listed_and_removed() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start("").await;
    let c = client();
    let created = post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration(
            "my-api-1",
            "my-api",
            &a,
            r#","metadata":{"version":"2.0","weight":"2","region":"eu"}"#,
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["route"], "/my-api/*");
    post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration("my-api-2", "my-api", &b, ""),
    )
    .await;

    // Served at /my-api/* with the prefix stripped, weighted 2:1.
    let mut from_a = 0;
    for _ in 0..30 {
        let reply = get(&c, &gw.url("/my-api/info?x=1"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["path"], "/info");
        assert_eq!(reply.json()["query"], "x=1");
        from_a += usize::from(reply.json()["upstream"] == "a");
    }
    assert_eq!(from_a, 20, "weight 2 gets two thirds");

    let listed = get(&c, &gw.url("/api/v1/services"), &[]).await.json();
    let instances = listed["services"]["my-api"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[0]["id"], "my-api-1");
    assert_eq!(instances[0]["metadata"]["version"], "2.0");
    assert_eq!(instances[0]["node"], listed["node"]);
    assert_eq!(instances[0]["healthy"], true);
    let filtered = get(&c, &gw.url("/api/v1/services?version=2.0"), &[])
        .await
        .json();
    assert_eq!(filtered["services"]["my-api"].as_array().unwrap().len(), 1);
    let upstreams = get(&c, &gw.url("/api/v1/upstreams"), &[]).await.json();
    assert_eq!(upstreams["upstreams"][0]["name"], "service/my-api");

    // Deregister by query and by body; an unknown id is a 404.
    assert_eq!(
        delete(&c, &gw.url("/api/v1/services/deregister?id=my-api-1"), "")
            .await
            .status,
        200
    );
    for _ in 0..4 {
        assert_eq!(
            get(&c, &gw.url("/my-api/x"), &[]).await.json()["upstream"],
            "b"
        );
    }
    assert_eq!(
        delete(
            &c,
            &gw.url("/api/v1/services/deregister"),
            r#"{"id":"my-api-2"}"#
        )
        .await
        .status,
        200
    );
    let gone = get(&c, &gw.url("/my-api/x"), &[]).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"], "no_route");
    let unknown = delete(&c, &gw.url("/api/v1/services/deregister?id=nope"), "").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "unknown_instance");
}

#[tokio::test]
async fn bad_registrations_get_a_400_naming_the_field() {
    let gw = TestGateway::start("").await;
    let c = client();
    for (body, field) in [
        (
            r#"{"service":"s","address":"127.0.0.1","port":1}"#,
            "(body)",
        ),
        (
            r#"{"id":"a","service":"s","address":"127.0.0.1","port":"80"}"#,
            "port",
        ),
        (
            r#"{"id":"a","service":"no/slash","address":"127.0.0.1","port":1}"#,
            "service",
        ),
        (
            r#"{"id":"a","service":"s","address":"","port":1}"#,
            "address",
        ),
        (
            r#"{"id":"a","service":"s","address":"h","port":1,"metadata":{"weight":"x"}}"#,
            "metadata.weight",
        ),
        (
            r#"{"id":"a","service":"s","address":"h","port":1,"ttl_s":0}"#,
            "ttl_s",
        ),
        ("{", "(body)"),
    ] {
        let reply = post(&c, &gw.url("/api/v1/services/register"), body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.json()["error"], "invalid_field");
        assert_eq!(reply.json()["field"], field, "{body}: {}", reply.text());
    }
    let wrong_method = get(&c, &gw.url("/api/v1/services/register"), &[]).await;
    assert_eq!(wrong_method.status, 405);
    assert!(
        get(&c, &gw.url("/api/v1/services"), &[]).await.json()["services"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn instances_expire_without_heartbeats() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start("").await;
    let c = client();
    let register = registration("short", "svc", &up, r#","ttl_s":1"#);
    let created = post(&c, &gw.url("/api/v1/services/register"), &register).await;
    assert_eq!(created.status, 201, "{}", created.text());
    // Heartbeats keep it for 2.5 s, well past its 1 s TTL.
    let mut last_beat = tokio::time::Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last_beat = tokio::time::Instant::now();
        let beat = post(&c, &gw.url("/api/v1/services/heartbeat?id=short"), "").await;
        assert_eq!(beat.status, 200, "{}", beat.text());
        assert_eq!(get(&c, &gw.url("/svc/x"), &[]).await.status, 200);
    }
    // Without heartbeats it goes once its TTL has passed: expiry runs once a second, so
    // between 1 and 2 s after the last heartbeat (0.5 s more for a loaded machine).
    let limit = Duration::from_millis(2500);
    loop {
        let status = get(&c, &gw.url("/svc/x"), &[]).await.status;
        let waited = last_beat.elapsed();
        if status == 404 {
            assert!(
                waited >= Duration::from_millis(900),
                "expired {waited:?} after the last heartbeat, before its 1 s TTL"
            );
            break;
        }
        assert!(
            waited < limit,
            "still served {waited:?} after the last heartbeat, with a 1 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let beat = post(&c, &gw.url("/api/v1/services/heartbeat?id=short"), "").await;
    assert_eq!(beat.status, 404);
}

#[tokio::test]
async fn config_routes_take_precedence_and_checks_gate_instances() {
    let configured = Upstream::start("configured").await;
    let registered = Upstream::start("registered").await;
    let sick = Upstream::start("sick").await;
    sick.healthy.store(false, Ordering::SeqCst);
    let config = format!(
        "[upstreams.fixed]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/pinned/*\"\nupstream = \"fixed\"\n",
        configured.addr
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let pinned = post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration("p", "pinned", &registered, ""),
    )
    .await;
    assert_eq!(pinned.status, 201, "{}", pinned.text());
    // The registration is taken and listed; only its route yields to the config's.
    let listed = get(&c, &gw.url("/api/v1/services?service=pinned"), &[])
        .await
        .json();
    assert_eq!(listed["services"]["pinned"][0]["id"], "p", "{listed}");
    for _ in 0..3 {
        assert_eq!(
            get(&c, &gw.url("/pinned/x"), &[]).await.json()["upstream"],
            "configured"
        );
    }
    let check = r#","check":{"path":"/health","interval_ms":100}"#;
    post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration("ok", "checked", &registered, check),
    )
    .await;
    post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration("bad", "checked", &sick, check),
    )
    .await;
    wait_until("the sick instance is marked unhealthy", async || {
        let listed = get(&c, &gw.url("/api/v1/services?service=checked"), &[])
            .await
            .json();
        listed["services"]["checked"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["id"] == "bad" && i["healthy"] == false))
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            get(&c, &gw.url("/checked/x"), &[]).await.json()["upstream"],
            "registered"
        );
    }
}

/// Registers instance `id` on the gateway at `addr` with an optional bearer token.
async fn register_with(
    c: &TestClient,
    addr: std::net::SocketAddr,
    id: &str,
    token: Option<&str>,
) -> Reply {
    let body = format!(r#"{{"id":"{id}","service":"tok","address":"127.0.0.1","port":9}}"#);
    let mut req = Request::post(format!("http://{addr}/api/v1/services/register"));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send(c, req.body(Full::new(Bytes::from(body))).unwrap()).await
}

async fn listed_ids(c: &TestClient, addr: std::net::SocketAddr) -> Vec<String> {
    let listed = get(
        c,
        &format!("http://{addr}/api/v1/services?service=tok"),
        &[],
    )
    .await
    .json();
    listed["services"]["tok"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The admin token from `server.admin_token` and from `FLUXGATE_ADMIN_TOKEN`, on the real
/// binary over HTTP from loopback: the right token is accepted, a wrong one is refused
/// with 403 (a wrong token is wrong from anywhere), no token is accepted (loopback).
#[tokio::test]
async fn the_admin_token_from_config_or_environment_guards_registry_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"cfg-secret\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap().to_owned();
    let plain_path = dir.path().join("plain.toml");
    std::fs::write(&plain_path, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let plain = plain_path.to_str().unwrap().to_owned();
    let c = client();
    // Config token (the environment's is ignored when the config has one).
    let mut from_config = Process::start_with_env(
        &["--config", &config],
        &[("FLUXGATE_ADMIN_TOKEN", "env-secret")],
    );
    // Environment token only.
    let mut from_env = Process::start_with_env(
        &["--config", &plain],
        &[("FLUXGATE_ADMIN_TOKEN", "env-secret")],
    );
    for (what, process, right, wrong) in [
        (
            "config",
            &mut from_config,
            "cfg-secret",
            ["nope", "env-secret"],
        ),
        (
            "environment",
            &mut from_env,
            "env-secret",
            ["nope", "cfg-secret"],
        ),
    ] {
        let addr = process.listening_addr();
        let ok = register_with(&c, addr, "right", Some(right)).await;
        assert_eq!(ok.status, 201, "{what}: right token: {}", ok.text());
        for token in wrong {
            let refused = register_with(&c, addr, &format!("wrong-{token}"), Some(token)).await;
            assert_eq!(
                refused.status,
                403,
                "{what}: token {token:?}: {}",
                refused.text()
            );
            assert_eq!(refused.json()["error"], "forbidden", "{what}");
        }
        let wrong_delete = send(
            &c,
            Request::delete(format!("http://{addr}/api/v1/services/deregister?id=right"))
                .header("authorization", "Bearer nope")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(wrong_delete.status, 403, "{what}: {}", wrong_delete.text());
        let anonymous = register_with(&c, addr, "anonymous", None).await;
        assert_eq!(
            anonymous.status,
            201,
            "{what}: no token from loopback: {}",
            anonymous.text()
        );
        let mut ids = listed_ids(&c, addr).await;
        ids.sort();
        assert_eq!(ids, ["anonymous", "right"], "{what}");
    }
}
