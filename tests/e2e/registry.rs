//! The service registry on one node: register, route at `/{service}/*`, list,
//! deregister, TTL and heartbeats, bad input, health checks, config precedence.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

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
    post(&c, &gw.url("/api/v1/services/register"), &register).await;
    // Heartbeats keep it for 2.5 s, well past its 1 s TTL.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let beat = post(&c, &gw.url("/api/v1/services/heartbeat?id=short"), "").await;
        assert_eq!(beat.status, 200, "{}", beat.text());
        assert_eq!(get(&c, &gw.url("/svc/x"), &[]).await.status, 200);
    }
    wait_until("the instance expired", async || {
        get(&c, &gw.url("/svc/x"), &[]).await.status == 404
    })
    .await;
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
    post(
        &c,
        &gw.url("/api/v1/services/register"),
        &registration("p", "pinned", &registered, ""),
    )
    .await;
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
