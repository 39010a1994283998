//! `[server.http2]` limits against misbehaving clients: tests/e2e/scripts/h2_abuse.py
//! (python3-h2's frame layer) sends the frames, while a second, well-behaved
//! connection keeps getting 200s. Limits are set small so each case is quick.

use std::time::Duration;

use serde_json::Value;

use super::{NAME, gateway, tls_h2};
use crate::support::TestGateway;
use crate::support::certs::TestCa;
use crate::support::h2::{self, Bystander};
use crate::support::python::run_json;
use crate::support::upstream::Upstream;

/// A gateway with h2c on, `[server.http2]` set to `limits`, routing `/*` to `up`.
async fn limited_gateway(ca: &TestCa, up: &Upstream, limits: &str) -> TestGateway {
    let rest = format!(
        "[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\n\
         [[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        up.addr
    );
    gateway(
        ca,
        &format!("h2c = true\n\n[server.http2]\n{limits}"),
        &rest,
    )
    .await
}

/// Runs h2_abuse.py against the gateway (over TLS when `tls`, else h2c) while a
/// well-behaved HTTP/2 connection sends requests, and checks that one was never
/// disturbed. Returns the script's report.
async fn abuse(gw: &TestGateway, ca: &TestCa, tls: bool, args: &[&str]) -> Value {
    let ca_file = gw.dir().join("ca.pem");
    let mut argv: Vec<String> = Vec::new();
    if tls {
        let port = gw.tls_addr.expect("TLS").port();
        argv.extend(["--port".into(), port.to_string(), "--tls-ca".into()]);
        argv.push(ca_file.display().to_string());
        argv.extend(["--server-name".into(), NAME.into()]);
    } else {
        argv.extend(["--port".into(), gw.addr.port().to_string()]);
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let bystander = Bystander::start(tls_h2(gw, ca).await, "/bystander");
    // Let the bystander get going before the abuse starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = run_json("h2_abuse.py", argv, Duration::from_secs(60)).await;
    println!("h2_abuse.py {}: {report}", args.join(" "));
    // And keep it going a little after.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, failures) = bystander.stop().await;
    assert!(
        failures.is_empty(),
        "the well-behaved connection was disturbed: {failures:?}"
    );
    assert!(ok >= 5, "the well-behaved connection got only {ok} answers");
    // And a new connection is served too.
    let fresh = h2::h2c(gw.addr).await;
    assert_eq!(
        h2::send(&fresh, h2::get_req("/after"))
            .await
            .unwrap()
            .reply
            .status,
        200
    );
    report
}

fn count(report: &Value, key: &str, value: &Value) -> usize {
    report[key]
        .as_object()
        .map_or(0, |m| m.values().filter(|v| *v == value).count())
}

#[tokio::test]
async fn streams_over_max_concurrent_streams_are_refused() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_concurrent_streams = 4").await;
    let report = abuse(
        &gw,
        &ca,
        false,
        &["--count", "10", "--path", "/slow/500", "streams"],
    )
    .await;
    assert_eq!(
        report["server_settings"]["3"], 4,
        "SETTINGS_MAX_CONCURRENT_STREAMS: {report}"
    );
    assert_eq!(
        count(&report, "responses", &Value::from(200)),
        4,
        "{report}"
    );
    assert_eq!(
        count(&report, "resets", &Value::from("REFUSED_STREAM")),
        6,
        "{report}"
    );
    assert!(
        report["goaway"].is_null(),
        "refusing streams does not end the connection: {report}"
    );
}

#[tokio::test]
async fn an_oversized_header_list_is_refused_and_the_connection_stays_usable() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_header_list_bytes = 8192").await;
    let report = abuse(&gw, &ca, false, &["--bytes", "20000", "headers"]).await;
    assert_eq!(
        report["server_settings"]["6"], 8192,
        "SETTINGS_MAX_HEADER_LIST_SIZE: {report}"
    );
    let refused = report["responses"]["1"] == 431 || !report["resets"]["1"].is_null();
    assert!(
        refused,
        "a 431 or a reset for the oversized request: {report}"
    );
    assert_eq!(report["responses"]["3"], 200, "{report}");
    assert!(report["goaway"].is_null(), "{report}");
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_and_a_close() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_pending_accept_reset_streams = 20").await;
    // Over TLS, in batches of 200 HEADERS + RST_STREAM pairs.
    let report = abuse(
        &gw,
        &ca,
        true,
        &[
            "--count",
            "5000",
            "--batch",
            "200",
            "--path",
            "/slow/100",
            "rapid-reset",
        ],
    )
    .await;
    assert_eq!(report["goaway"]["error"], "ENHANCE_YOUR_CALM", "{report}");
    assert_eq!(report["closed"], true, "{report}");
    assert!(report["pairs_sent"].as_u64().unwrap() < 5000, "{report}");
}

#[tokio::test]
async fn a_paced_rapid_reset_flood_gets_goaway_and_a_close() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_cancelled_streams_per_s = 50").await;
    // Each batch's streams are reset 20 ms after they were sent: accepted and started
    // on by then, so h2's count of streams reset before acceptance never sees them
    // (with the gateway's guard off this runs to the end: see the report's break
    // checks). About 500 cancelled streams a second against a limit of 50.
    let report = abuse(
        &gw,
        &ca,
        false,
        &[
            "--count",
            "2000",
            "--batch",
            "10",
            "--pace-ms",
            "20",
            "--path",
            "/slow/1000",
            "rapid-reset",
        ],
    )
    .await;
    assert!(!report["goaway"].is_null(), "{report}");
    assert_eq!(report["closed"], true, "{report}");
    assert!(report["pairs_sent"].as_u64().unwrap() < 2000, "{report}");
    // The cancelled streams were really started on: some reached the upstream.
    assert!(up.requests.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn a_client_cancelling_streams_now_and_then_keeps_its_connection() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_cancelled_streams_per_s = 50").await;
    // 5 streams cancelled every 200 ms: 25 a second, under the limit.
    let report = abuse(
        &gw,
        &ca,
        false,
        &[
            "--count",
            "40",
            "--batch",
            "5",
            "--pace-ms",
            "100",
            "--path",
            "/slow/1000",
            "--read-for",
            "0.5",
            "rapid-reset",
        ],
    )
    .await;
    assert!(report["goaway"].is_null(), "{report}");
    assert_eq!(report["closed"], false, "{report}");
    assert_eq!(report["pairs_sent"], 40, "{report}");
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway_and_a_close_within_the_header_list_limit() {
    let ca = TestCa::new("test CA");
    let up = Upstream::start("u").await;
    let gw = limited_gateway(&ca, &up, "max_header_list_bytes = 16384").await;
    let report = abuse(
        &gw,
        &ca,
        false,
        &["--count", "2000", "--frame-bytes", "16000", "continuation"],
    )
    .await;
    assert_eq!(report["goaway"]["error"], "ENHANCE_YOUR_CALM", "{report}");
    assert_eq!(report["closed"], true, "{report}");
    // 2000 frames are 32 MB: the gateway stopped reading long before.
    assert!(
        report["continuations_sent"].as_u64().unwrap() < 2000,
        "{report}"
    );
    assert!(
        report["responses"].as_object().unwrap().is_empty(),
        "{report}"
    );
}
