//! Upstreams over HTTPS: certificates verified by default (web roots plus `ca_file`),
//! `server_name` for SNI and the checked name, client certificates (mTLS), the logged
//! `insecure_skip_verify` opt-out, and a JSON 502 (`upstream_tls`) for any certificate
//! that fails, never a fallback to plain HTTP.

use crate::support::certs::{Pem, TestCa};
use crate::support::upstream::{Serving, Upstream};
use crate::support::{TestGateway, client, get};

/// A gateway routing `/*` to one `https://` target with `tls_table` as its `tls`, the
/// files (name, text) written next to the config.
async fn gateway_to(
    target: std::net::SocketAddr,
    tls_table: &str,
    files: &[(&str, &str)],
) -> TestGateway {
    let config = format!(
        "[upstreams.secure]\ntargets = [{{ url = \"https://{target}\" }}]\n{tls_table}\n\
         [[routes]]\npath = \"/*\"\nupstream = \"secure\"\n"
    );
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
    TestGateway::start_with_files(&config, &[], &files).await
}

async fn tls_upstream(server: &Pem) -> Upstream {
    Upstream::start_with(
        "secure",
        Serving {
            tls: Some(TestCa::server_config(server, &[b"http/1.1"])),
            http2: false,
        },
    )
    .await
}

#[tokio::test]
async fn a_trusted_certificate_is_verified_and_reused_over_pooled_connections() {
    let ca = TestCa::new("upstream CA");
    let up = tls_upstream(&ca.server(&["127.0.0.1"])).await;
    let gw = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\" }",
        &[("ca.pem", &ca.cert_pem())],
    )
    .await;
    let c = client();
    for i in 0..5 {
        let reply = get(&c, &gw.url(&format!("/x/{i}")), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["path"], format!("/x/{i}"));
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "pooled: one TLS connection"
    );
}

#[tokio::test]
async fn an_untrusted_or_mismatched_certificate_is_a_502_naming_tls() {
    let ca = TestCa::new("upstream CA");
    let stranger = TestCa::new("someone else");
    // Not trusted: signed by a CA the gateway does not know.
    let up = tls_upstream(&stranger.server(&["127.0.0.1"])).await;
    let gw = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\" }",
        &[("ca.pem", &ca.cert_pem())],
    )
    .await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_tls", "{}", reply.text());
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent"
    );
    // Trusted CA, wrong name: the certificate is for another host.
    let up = tls_upstream(&ca.server(&["other.internal"])).await;
    let gw = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\" }",
        &[("ca.pem", &ca.cert_pem())],
    )
    .await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_tls");
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .contains("fluxgate_upstream_errors_total{kind=\"upstream_tls\",upstream=\"secure\"}"),
        "{metrics}"
    );
    // No CA file: the web roots do not know the test CA either.
    let gw = gateway_to(up.addr, "", &[]).await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.json()["error"], "upstream_tls");
}

#[tokio::test]
async fn server_name_sets_sni_and_the_checked_name() {
    let ca = TestCa::new("upstream CA");
    let up = tls_upstream(&ca.server(&["api.internal"])).await;
    let gw = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\", server_name = \"api.internal\" }",
        &[("ca.pem", &ca.cert_pem())],
    )
    .await;
    let reply = get(&client(), &gw.url("/named"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn client_certificates_are_presented_to_upstreams_that_require_them() {
    let ca = TestCa::new("upstream CA");
    let server = ca.server(&["127.0.0.1"]);
    let up = Upstream::start_with(
        "secure",
        Serving {
            tls: Some(ca.mtls_server_config(&server, &[b"http/1.1"])),
            http2: false,
        },
    )
    .await;
    let client_pem = ca.client("gateway");
    let with = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\", client_cert = \"c.pem\", client_key = \"c.key\" }",
        &[
            ("ca.pem", &ca.cert_pem()),
            ("c.pem", &client_pem.cert),
            ("c.key", &client_pem.key),
        ],
    )
    .await;
    let reply = get(&client(), &with.url("/mtls"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let without = gateway_to(
        up.addr,
        "tls = { ca_file = \"ca.pem\" }",
        &[("ca.pem", &ca.cert_pem())],
    )
    .await;
    let reply = get(&client(), &without.url("/mtls"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

#[tokio::test]
async fn insecure_skip_verify_is_an_explicit_opt_out() {
    let stranger = TestCa::new("someone else");
    let up = tls_upstream(&stranger.server(&["whatever.test"])).await;
    let gw = gateway_to(up.addr, "tls = { insecure_skip_verify = true }", &[]).await;
    let reply = get(&client(), &gw.url("/anything"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn bad_upstream_tls_settings_are_validate_errors() {
    let dir = tempfile::tempdir().unwrap();
    let check = |upstream: &str| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!("[upstreams.s]\n{upstream}\n[[routes]]\npath = \"/*\"\nupstream = \"s\"\n"),
        )
        .unwrap();
        match fluxgate_host::plan::load_file(&path, &Default::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let missing =
        check("targets = [{ url = \"https://127.0.0.1:1\" }]\ntls = { ca_file = \"nope.pem\" }");
    assert!(
        missing.contains("upstreams.s.tls.ca_file") && missing.contains("nope.pem"),
        "{missing}"
    );
    let half =
        check("targets = [{ url = \"https://127.0.0.1:1\" }]\ntls = { client_cert = \"c.pem\" }");
    assert!(half.contains("upstreams.s.tls.client_key"), "{half}");
    let plain =
        check("targets = [{ url = \"http://127.0.0.1:1\" }]\ntls = { server_name = \"a.test\" }");
    assert!(
        plain.contains("upstreams.s.tls"),
        "tls without https targets: {plain}"
    );
}
