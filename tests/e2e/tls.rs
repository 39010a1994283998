//! TLS termination: SNI over several certificates (exact, wildcard, default), ALPN
//! choosing HTTP/1.1 or HTTP/2, TLS 1.2 and 1.3, session resumption, `validate` errors
//! for bad certificate files, the HTTP → HTTPS redirect, WebSockets over TLS, and h2c
//! on the plain listener.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::certs::{self, Pem, TestCa};
use crate::support::upstream::Upstream;
use crate::support::{TestGateway, client, config_with, get};

/// A gateway with `[tls]` serving `certificates` (written next to the config as
/// `c<i>.pem` / `c<i>.key`), routing `/*` to `up`.
async fn tls_gateway(up: &Upstream, certificates: &[&Pem], tls_extra: &str) -> TestGateway {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut list = Vec::new();
    for (i, pem) in certificates.iter().enumerate() {
        files.push((format!("c{i}.pem"), pem.cert.clone().into_bytes()));
        files.push((format!("c{i}.key"), pem.key.clone().into_bytes()));
        list.push(format!("{{ cert = \"c{i}.pem\", key = \"c{i}.key\" }}"));
    }
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{}]\n{tls_extra}\n{}",
        list.join(", "),
        config_with(
            &[("g", &[up.addr], "")],
            "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n"
        )
    );
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    TestGateway::start_with_files(&config, &[], &files).await
}

fn get_req(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn sni_picks_the_exact_then_the_wildcard_certificate_else_the_first() {
    let ca = TestCa::new("test CA");
    let first = ca.server(&["first.test", "127.0.0.1"]);
    let wild = ca.server(&["*.wild.test"]);
    let exact = ca.server(&["api.wild.test"]);
    let up = Upstream::start("u").await;
    let gw = tls_gateway(&up, &[&first, &wild, &exact], "").await;
    let addr = gw.tls_addr.unwrap();
    let leaf = |pem: &Pem| certs::certs(&pem.cert).remove(0);
    let inspect = certs::inspecting_client_config(&[b"http/1.1"]);
    for (sni, expected) in [
        ("api.wild.test", &exact),
        ("other.wild.test", &wild),
        ("OTHER.Wild.Test", &wild),
        ("first.test", &first),
        ("unknown.test", &first),
        ("deep.other.wild.test", &first),
        // An IP address sends no SNI: the first certificate answers.
        ("127.0.0.1", &first),
    ] {
        let (_, handshake) = certs::connect(addr, sni, inspect.clone()).await.unwrap();
        assert!(
            handshake.leaf.as_ref() == Some(&leaf(expected)),
            "SNI {sni} got the wrong certificate"
        );
    }
    // And a verifying client accepts what it was given for its names.
    let verifying = ca.client_config(&[b"http/1.1"]);
    let (reply, _) = certs::request(
        addr,
        "x.wild.test",
        verifying,
        get_req("/hi", "x.wild.test"),
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn alpn_chooses_http2_or_http1_over_tls_1_2_and_1_3() {
    let ca = TestCa::new("test CA");
    let pem = ca.server(&["gw.test"]);
    let up = Upstream::start("u").await;
    let gw = tls_gateway(&up, &[&pem], "").await;
    let addr = gw.tls_addr.unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (alpn, expected_version) in [
            (&b"h2"[..], http::Version::HTTP_2),
            (b"http/1.1", http::Version::HTTP_11),
        ] {
            let config = certs::client_config_for(&ca.cert_pem(), &[alpn], Some(version));
            let (reply, handshake) =
                certs::request(addr, "gw.test", config, get_req("/echo?x=1", "gw.test")).await;
            assert_eq!(handshake.alpn.as_deref(), Some(alpn));
            assert_eq!(handshake.version, Some(version.version));
            assert_eq!(reply.status, 200, "{}", reply.text());
            let echo = reply.json();
            assert_eq!(echo["path"], "/echo");
            assert_eq!(echo["query"], "x=1");
            assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
            // The upstream is spoken to with HTTP/1.1 whatever the client used.
            assert_eq!(echo["version"], "HTTP/1.1");
            let _ = expected_version;
        }
    }
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_tls_handshakes_total{alpn=\"h2\",version=\"1.3\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fluxgate_tls_handshakes_total{alpn=\"http/1.1\",version=\"1.2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("fluxgate_tls_certificate_expiry_seconds{name=\"gw.test\"}"));
}

#[tokio::test]
async fn a_second_connection_resumes_the_session() {
    let ca = TestCa::new("test CA");
    let pem = ca.server(&["gw.test"]);
    let up = Upstream::start("u").await;
    let gw = tls_gateway(&up, &[&pem], "").await;
    let addr = gw.tls_addr.unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One client config = one client session cache.
        let config = certs::client_config_for(&ca.cert_pem(), &[b"http/1.1"], Some(version));
        let (reply, first) =
            certs::request(addr, "gw.test", config.clone(), get_req("/a", "gw.test")).await;
        assert_eq!(reply.status, 200);
        assert!(!first.resumed);
        let (reply, second) =
            certs::request(addr, "gw.test", config, get_req("/b", "gw.test")).await;
        assert_eq!(reply.status, 200);
        assert!(
            second.resumed,
            "TLS {:?} session was not resumed",
            version.version
        );
    }
}

#[tokio::test]
async fn plain_requests_are_redirected_to_https_except_acme_challenges() {
    let ca = TestCa::new("test CA");
    let pem = ca.server(&["gw.test"]);
    let up = Upstream::start("u").await;
    let gw = tls_gateway(&up, &[&pem], "redirect_http = true").await;
    let port = gw.tls_addr.unwrap().port();
    let c = client();
    let reply = get(&c, &gw.url("/a/b?x=1&y=2"), &[("host", "gw.test:8080")]).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!("https://gw.test:{port}/a/b?x=1&y=2").as_str()
    );
    let post = crate::support::send(
        &c,
        Request::post(gw.url("/form"))
            .header("host", "gw.test")
            .body(Full::new(Bytes::from_static(b"k=v")))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 308, "308 keeps the method: no 301/302");
    // ACME http-01 challenges are not redirected.
    let acme = get(
        &c,
        &gw.url("/.well-known/acme-challenge/token"),
        &[("host", "gw.test")],
    )
    .await;
    assert_ne!(acme.status, 308);
    // Over TLS the request is served.
    let config = ca.client_config(&[b"http/1.1"]);
    let (reply, _) = certs::request(
        gw.tls_addr.unwrap(),
        "gw.test",
        config,
        get_req("/a", "gw.test"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/a");
}
