//! gRPC through the gateway with real parts: tests/e2e/scripts/grpc_server.py (h2c and
//! TLS) behind `protocol = "http2"` upstreams, tests/e2e/scripts/grpc_client.py calling
//! the gateway over TLS + HTTP/2 (python3-grpcio). Statuses, messages and trailers
//! arrive intact (trailers-only answers stay trailers-only), and the gateway's own
//! refusals reach the client as the gRPC codes it understands.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use super::{NAME, gateway_with, tls_h2};
use crate::support::certs::TestCa;
use crate::support::daemons::free_port;
use crate::support::h2;
use crate::support::python::{GrpcServer, run_json};
use crate::support::wasm::plugin;
use crate::support::{TestGateway, client, get};

const ECHO: &str = "/fluxgate.test.Echo";

/// The gateway under test and the gRPC servers behind it.
struct Setup {
    gw: TestGateway,
    _servers: (GrpcServer, GrpcServer),
}

/// Groups: `grpc` (h2c server), `grpcs` (TLS server, ALPN h2), `slow` (the h2c server
/// with a 300 ms request timeout), `refused` (nothing listens), `down` (health checks
/// fail). Routes: the service itself, and `/PREFIX/...` (prefix stripped) for the
/// others: `/tls`, `/limited` (one call allowed), `/timeout`, `/refused`, `/down`,
/// `/auth` (api-key-auth).
async fn setup(ca: &TestCa) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream_pem = ca.server(&["grpc.test"]);
    let (cert, key) = (dir.path().join("up.pem"), dir.path().join("up.key"));
    std::fs::write(&cert, &upstream_pem.cert).unwrap();
    std::fs::write(&key, &upstream_pem.key).unwrap();
    let plain = GrpcServer::start(None);
    let secure = GrpcServer::start(Some((&cert, &key)));
    let route = |prefix: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\npath = \"/{prefix}/*\"\nupstream = \"{upstream}\"\n\
             strip_prefix = \"/{prefix}\"\n{extra}\n\n"
        )
    };
    let mut rest = format!(
        "[upstreams.grpc]\nprotocol = \"http2\"\ntargets = [{{ url = \"http://127.0.0.1:{p}\" }}]\n\n\
         [upstreams.grpcs]\nprotocol = \"http2\"\ntargets = [{{ url = \"https://127.0.0.1:{s}\" }}]\n\
         tls = {{ ca_file = \"ca.pem\", server_name = \"grpc.test\" }}\n\n\
         [upstreams.slow]\nprotocol = \"http2\"\nrequest_timeout_ms = 300\n\
         targets = [{{ url = \"http://127.0.0.1:{p}\" }}]\n\n\
         [upstreams.refused]\nprotocol = \"http2\"\ntargets = [{{ url = \"http://127.0.0.1:{r}\" }}]\n\n\
         [upstreams.down]\nprotocol = \"http2\"\ntargets = [{{ url = \"http://127.0.0.1:{d}\" }}]\n\
         health_check = {{ path = \"/health\", interval_ms = 100, timeout_ms = 100, unhealthy_threshold = 1 }}\n\n\
         [[routes]]\npath = \"{ECHO}/*\"\nupstream = \"grpc\"\n\n",
        p = plain.port,
        s = secure.port,
        r = free_port(),
        d = free_port(),
    );
    rest.push_str(&route("tls", "grpcs", ""));
    rest.push_str(&route(
        "limited",
        "grpc",
        "rate_limit = { capacity = 1, refill_per_s = 0.01 }",
    ));
    rest.push_str(&route("timeout", "slow", ""));
    rest.push_str(&route("refused", "refused", ""));
    rest.push_str(&route("down", "down", ""));
    rest.push_str(&route(
        "auth",
        "grpc",
        "plugins = [{ name = \"api-key-auth\", config = { keys = { \"k-alice\" = \"alice\" } } }]",
    ));
    let wasm = plugin("api_key_auth");
    let gw = gateway_with(ca, "h2c = true", &rest, &[], &[("api-key-auth", &wasm)]).await;
    Setup {
        gw,
        _servers: (plain, secure),
    }
}

/// One call with grpc_client.py to the gateway's TLS listener (or its plain one with
/// h2c when `tls` is false): `kind` unary|stream, `method` path, then extra arguments.
async fn call(gw: &TestGateway, tls: bool, kind: &str, method: &str, extra: &[&str]) -> Value {
    let mut args: Vec<String> = Vec::new();
    if tls {
        let port = gw.tls_addr.expect("TLS").port();
        args.extend(["--target".into(), format!("127.0.0.1:{port}")]);
        args.extend(["--ca".into(), gw.dir().join("ca.pem").display().to_string()]);
        args.extend(["--server-name".into(), NAME.into()]);
    } else {
        args.extend(["--target".into(), format!("127.0.0.1:{}", gw.addr.port())]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend([kind.to_owned(), method.to_owned()]);
    run_json("grpc_client.py", args, Duration::from_secs(60)).await
}

fn payload(value: Value) -> String {
    value.to_string()
}

#[tokio::test]
async fn grpc_calls_reach_h2c_and_tls_upstreams_with_statuses_and_trailers_intact() {
    let ca = TestCa::new("test CA");
    let s = setup(&ca).await;
    let gw = &s.gw;
    for prefix in ["", "/tls"] {
        let at = |m: &str| format!("{prefix}{ECHO}/{m}");
        // Unary: the answer, initial metadata, and trailing metadata (text and binary).
        let unary = call(gw, true, "unary", &at("Unary"), &["--size", "1000"]).await;
        assert_eq!(unary["code"], "OK", "{prefix}: {unary}");
        assert_eq!(unary["echo_ok"], true, "{unary}");
        assert_eq!(unary["initial"]["x-initial"], "yes", "{unary}");
        assert_eq!(unary["trailing"]["x-trailer"], "kept", "{unary}");
        assert_eq!(unary["trailing"]["x-blob-bin"], "0001feff", "{unary}");

        // Big messages both ways (past every flow-control window on the way).
        let big = call(gw, true, "unary", &at("Unary"), &["--size", "3000000"]).await;
        assert_eq!(big["code"], "OK", "{prefix}: {big}");
        assert_eq!(big["echo_ok"], true);
        assert_eq!(big["messages"], json!([3_000_000]));

        // Server streaming, then an error status with a message, in real trailers after
        // the data.
        let spec = payload(json!({
            "count": 20, "size": 100_000, "code": "NOT_FOUND", "message": "gone: ü 100%"
        }));
        let streamed = call(gw, true, "stream", &at("Stream"), &["--payload", &spec]).await;
        assert_eq!(streamed["code"], "NOT_FOUND", "{prefix}: {streamed}");
        assert_eq!(streamed["details"], "gone: ü 100%", "{streamed}");
        assert_eq!(streamed["messages"], json!(vec![100_000; 20]), "{streamed}");
        assert_eq!(streamed["trailing"]["x-trailer"], "kept", "{streamed}");

        // A streaming call that ends well.
        let spec = payload(json!({ "count": 3, "size": 10 }));
        let fine = call(gw, true, "stream", &at("Stream"), &["--payload", &spec]).await;
        assert_eq!(fine["code"], "OK", "{fine}");
        assert_eq!(fine["messages"], json!([10, 10, 10]));

        // A trailers-only answer: the status without any message.
        let spec = payload(json!({ "code": "PERMISSION_DENIED", "message": "not you" }));
        let denied = call(gw, true, "unary", &at("Fail"), &["--payload", &spec]).await;
        assert_eq!(denied["code"], "PERMISSION_DENIED", "{prefix}: {denied}");
        assert_eq!(denied["details"], "not you", "{denied}");
    }
    // h2c with prior knowledge on the plain listener works for gRPC too.
    let plain = call(
        gw,
        false,
        "unary",
        &format!("{ECHO}/Unary"),
        &["--size", "10"],
    )
    .await;
    assert_eq!(plain["code"], "OK", "{plain}");
    assert_eq!(plain["trailing"]["x-trailer"], "kept", "{plain}");
}

/// The gRPC message framing: uncompressed flag and big-endian length, then the bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

fn grpc_request(path: &str, message: &[u8]) -> Request<Full<Bytes>> {
    Request::post(format!("https://gw.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(message)))
        .unwrap()
}

#[tokio::test]
async fn grpc_framing_survives_the_gateway_trailers_stay_trailers() {
    let ca = TestCa::new("test CA");
    let s = setup(&ca).await;
    let conn = tls_h2(&s.gw, &ca).await;
    // An answer with a message: status in the trailers, after the data.
    let ok = h2::send(&conn, grpc_request(&format!("{ECHO}/Unary"), b"hello"))
        .await
        .unwrap();
    assert_eq!(ok.reply.status, 200);
    assert!(
        !ok.reply.headers.contains_key("grpc-status"),
        "{:?}",
        ok.reply.headers
    );
    assert_eq!(ok.reply.body, grpc_frame(b"hello"));
    let trailers = ok.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");
    // A trailers-only answer stays one: the status in the only HEADERS frame.
    let spec = json!({ "code": "UNAUTHENTICATED", "message": "who?" }).to_string();
    let denied = h2::send(
        &conn,
        grpc_request(&format!("{ECHO}/Fail"), spec.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(denied.reply.status, 200);
    assert_eq!(denied.reply.headers["grpc-status"], "16");
    assert_eq!(denied.reply.headers["grpc-message"], "who?");
    assert!(denied.reply.body.is_empty());
    assert!(denied.trailers.is_none(), "{:?}", denied.trailers);
}

#[tokio::test]
async fn the_gateways_own_refusals_reach_grpc_clients_as_grpc_statuses() {
    let ca = TestCa::new("test CA");
    let s = setup(&ca).await;
    let gw = &s.gw;
    let unary = |prefix: &str| format!("/{prefix}{ECHO}/Unary");

    // 429 → RESOURCE_EXHAUSTED: the first call is allowed, the second refused.
    let first = call(gw, true, "unary", &unary("limited"), &["--size", "5"]).await;
    assert_eq!(first["code"], "OK", "{first}");
    let limited = call(gw, true, "unary", &unary("limited"), &["--size", "5"]).await;
    assert_eq!(limited["code"], "RESOURCE_EXHAUSTED", "{limited}");
    assert!(
        limited["details"]
            .as_str()
            .unwrap()
            .contains("rate limit exceeded"),
        "{limited}"
    );

    // 504 → DEADLINE_EXCEEDED: the upstream takes 3 s, the group allows 300 ms (the
    // client's own deadline is 10 s).
    let spec = json!({ "ms": 3000 }).to_string();
    let late = call(
        gw,
        true,
        "unary",
        &format!("/timeout{ECHO}/Slow"),
        &["--payload", &spec],
    )
    .await;
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    assert!(
        late["details"]
            .as_str()
            .unwrap()
            .contains("did not answer in time"),
        "{late}"
    );

    // 502 → UNAVAILABLE: nothing listens at the target.
    let refused = call(gw, true, "unary", &unary("refused"), &["--size", "5"]).await;
    assert_eq!(refused["code"], "UNAVAILABLE", "{refused}");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{refused}"
    );

    // 503 → UNAVAILABLE: no live target (its health checks fail).
    let c = client();
    for _ in 0..100 {
        let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
        if metrics.contains("upstream=\"down\"} 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down = call(gw, true, "unary", &unary("down"), &["--size", "5"]).await;
    assert_eq!(down["code"], "UNAVAILABLE", "{down}");
    assert!(
        down["details"]
            .as_str()
            .unwrap()
            .contains("no available target"),
        "{down}"
    );

    // A plugin's deny (401 from api-key-auth) → UNAUTHENTICATED, its reason as the
    // message; with the key the call goes through.
    let anonymous = call(gw, true, "unary", &unary("auth"), &["--size", "5"]).await;
    assert_eq!(anonymous["code"], "UNAUTHENTICATED", "{anonymous}");
    assert_eq!(anonymous["details"], "missing API key", "{anonymous}");
    let keyed = call(
        gw,
        true,
        "unary",
        &unary("auth"),
        &["--size", "5", "--metadata", "x-api-key=k-alice"],
    )
    .await;
    assert_eq!(keyed["code"], "OK", "{keyed}");

    // No route → UNIMPLEMENTED, as a server without the method would say.
    let unknown = call(
        gw,
        true,
        "unary",
        "/nowhere.Service/Method",
        &["--size", "5"],
    )
    .await;
    assert_eq!(unknown["code"], "UNIMPLEMENTED", "{unknown}");

    // The same refusals are JSON for clients that are not gRPC.
    let conn = tls_h2(gw, &ca).await;
    let plain = h2::send(&conn, h2::get_req(&unary("refused")))
        .await
        .unwrap();
    assert_eq!(plain.reply.status, 502);
    assert_eq!(plain.reply.json()["error"], "upstream_connect");
}
