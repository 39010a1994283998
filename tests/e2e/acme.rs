//! Automatic certificates against a real ACME CA on loopback: pebble (its DNS answered
//! by pebble-challtestsrv, every name → 127.0.0.1) validating the gateway's own
//! listeners. http-01 and tls-alpn-01 issuance, a restart that serves the stored
//! certificate without ordering, and a renewal (pebble issuing short-lived
//! certificates) that fails first and keeps the previous certificate serving.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use crate::support::certs::{self, TestCa};
use crate::support::daemons::{Daemon, free_port};
use crate::support::upstream::Upstream;
use crate::support::{Reply, TestGateway, client, config_with, get};

/// How long issuance may take (pebble validates at once; the machine may be busy).
const ISSUANCE: Duration = Duration::from_secs(60);

/// pebble and its DNS server, with what a client needs to trust either.
struct Pebble {
    pebble: Daemon,
    dns: Daemon,
    /// The directory URL.
    directory: String,
    /// The CA of pebble's own HTTPS certificate (for the directory and management).
    tls_ca: TestCa,
    management: u16,
}

impl Pebble {
    /// Starts pebble validating http-01 on `http_port` and tls-alpn-01 on `tls_port`
    /// (the gateway's listeners), issuing certificates valid for `validity_s` seconds
    /// (pebble's default, 5 years, when `None`).
    fn start(http_port: u16, tls_port: u16, validity_s: Option<u64>) -> Self {
        let (dns, dns_port) = Daemon::challtestsrv();
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        // pebble's own HTTPS certificate, from a throwaway CA the tests trust.
        let tls_ca = TestCa::new("pebble TLS CA");
        let server = tls_ca.server(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), &server.cert).unwrap();
        std::fs::write(dir.join("key.pem"), &server.key).unwrap();
        let (port, management) = (free_port(), free_port());
        let validity = validity_s.map_or(String::new(), |s| {
            format!(", \"certificateValidityPeriod\": {s}")
        });
        let config = format!(
            "{{\"pebble\": {{\"listenAddress\": \"127.0.0.1:{port}\", \
             \"managementListenAddress\": \"127.0.0.1:{management}\", \
             \"certificate\": \"cert.pem\", \"privateKey\": \"key.pem\", \
             \"httpPort\": {http_port}, \"tlsPort\": {tls_port}, \
             \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false{validity}}}}}"
        );
        std::fs::write(dir.join("pebble.json"), config).unwrap();
        let pebble = Daemon::pebble(port, management, dir, Some(temp), "pebble.json", dns_port);
        Self {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{port}/dir"),
            tls_ca,
            management,
        }
    }

    /// The root pebble issues under (generated at its start), PEM.
    async fn issuing_root(&self) -> String {
        let addr = format!("127.0.0.1:{}", self.management).parse().unwrap();
        let req = Request::get("/roots/0")
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (reply, _) = certs::request(
            addr,
            "127.0.0.1",
            self.tls_ca.client_config(&[b"http/1.1"]),
            req,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    }
}

/// Listeners bound before the gateway starts, so pebble knows their ports.
async fn listeners() -> (TcpListener, TcpListener) {
    (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
}

/// A gateway with `[tls.acme]` (no certificate files), routing `/*` to `up`.
async fn acme_gateway(
    pebble: &Pebble,
    up: &Upstream,
    domains: &[&str],
    challenge: &str,
    storage: &Path,
    listeners: Option<(TcpListener, TcpListener)>,
) -> TestGateway {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\nredirect_http = true\n\
         [tls.acme]\nemail = \"ops@fluxgate.test\"\ndirectory = \"{}\"\n\
         directory_ca_file = \"pebble-ca.pem\"\ndomains = [{}]\nchallenge = \"{challenge}\"\n\
         storage = \"{}\"\nretry_min_s = 1\nretry_max_s = 2\n\n{}",
        pebble.directory,
        domains.join(", "),
        storage.display(),
        config_with(
            &[("g", &[up.addr], "")],
            "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n"
        )
    );
    let ca = pebble.tls_ca.cert_pem();
    let files: [(&str, &[u8]); 1] = [("pebble-ca.pem", ca.as_bytes())];
    let (plain, tls) = match listeners {
        Some((plain, tls)) => (Some(plain), Some(tls)),
        None => (None, None),
    };
    TestGateway::start_on(&config, &files, plain, tls).await
}

/// GETs `path` over TLS with SNI `name`, verifying the gateway's certificate against
/// `root` (pebble's issuing root): the leaf served and the answer; `None` if the
/// handshake fails.
async fn tls_get(
    gw: &TestGateway,
    name: &str,
    root: &str,
    path: &str,
) -> Option<(CertificateDer<'static>, Reply)> {
    let config = certs::client_config_for(root, &[b"http/1.1"], None);
    let addr = gw.tls_addr.unwrap();
    let (stream, handshake) = certs::connect(addr, name, config).await.ok()?;
    let req = Request::get(path)
        .header("host", name)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = certs::send_on(stream, false, req).await;
    Some((handshake.leaf?, reply))
}

/// The leaf the gateway serves for `name`, verified against `root`, after a request
/// over it reached the upstream; `None` if the handshake fails.
async fn served_leaf(gw: &TestGateway, name: &str, root: &str) -> Option<CertificateDer<'static>> {
    let (leaf, reply) = tls_get(gw, name, root, "/hello").await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/hello");
    Some(leaf)
}

/// Waits until the gateway serves a certificate for `name` that `root` verifies and
/// that is not `other`.
async fn wait_for_leaf(
    gw: &TestGateway,
    name: &str,
    root: &str,
    other: Option<&CertificateDer<'static>>,
    pebble: &Pebble,
) -> CertificateDer<'static> {
    let deadline = tokio::time::Instant::now() + ISSUANCE;
    loop {
        if let Some(leaf) = served_leaf(gw, name, root).await
            && Some(&leaf) != other
        {
            return leaf;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no (new) certificate for {name} within {ISSUANCE:?}; pebble log:\n{}",
            pebble.pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/metrics`, over TLS (the plain listener redirects everything to HTTPS).
async fn metrics(gw: &TestGateway, name: &str, root: &str) -> String {
    let (_, reply) = tls_get(gw, name, root, "/metrics")
        .await
        .expect("TLS handshake for /metrics");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

/// The value of a counter line, 0 when absent.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn http_01_issues_a_certificate_and_a_restart_serves_it_without_a_new_order() {
    let (plain, tls) = listeners().await;
    let (http_port, tls_port) = (
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );
    let pebble = Pebble::start(http_port, tls_port, None);
    let root = pebble.issuing_root().await;
    let up = Upstream::start("u").await;
    let storage = tempfile::tempdir().unwrap();
    let name = "www.fluxgate.test";
    let gw = acme_gateway(
        &pebble,
        &up,
        &[name, "api.fluxgate.test"],
        "http-01",
        storage.path(),
        Some((plain, tls)),
    )
    .await;
    let leaf = wait_for_leaf(&gw, name, &root, None, &pebble).await;
    // One certificate for both names.
    assert_eq!(
        served_leaf(&gw, "api.fluxgate.test", &root).await.as_ref(),
        Some(&leaf)
    );
    let text = metrics(&gw, name, &root).await;
    assert_eq!(
        counter(&text, "fluxgate_acme_orders_total{result=\"issued\"}"),
        1,
        "{text}"
    );
    assert_eq!(
        counter(&text, "fluxgate_acme_orders_total{result=\"failed\"}"),
        0,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fluxgate_tls_certificate_expiry_seconds{{name=\"{name}\"}}"
        )),
        "{text}"
    );
    // pebble validated over plain HTTP (it validates from several perspectives),
    // although redirect_http sends everything else there to HTTPS.
    let answered = "fluxgate_acme_challenges_answered_total";
    assert!(
        counter(&text, &format!("{answered}{{challenge=\"http-01\"}}")) >= 1,
        "{text}"
    );
    assert!(!text.contains("challenge=\"tls-alpn-01\""), "{text}");
    let plain = get(&client(), &gw.url("/hello"), &[("host", name)]).await;
    assert_eq!(plain.status, 308);
    let stale = "/.well-known/acme-challenge/no-such-token";
    let plain = get(&client(), &gw.url(stale), &[("host", name)]).await;
    assert_ne!(plain.status, 308, "challenge paths are never redirected");
    // The key is stored private, the account too.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    let stored: Vec<_> = walk(storage.path());
    let key = stored
        .iter()
        .find(|p| p.ends_with("key.pem"))
        .expect("stored key");
    assert_eq!(mode(key), 0o600);
    let account = stored
        .iter()
        .find(|p| p.ends_with("account.json"))
        .expect("stored account");
    assert_eq!(mode(account), 0o600);
    drop(gw);

    // A restart with the same storage serves the stored certificate from its first
    // handshake, and orders nothing.
    let gw = acme_gateway(
        &pebble,
        &up,
        &[name, "api.fluxgate.test"],
        "http-01",
        storage.path(),
        None,
    )
    .await;
    assert_eq!(served_leaf(&gw, name, &root).await.as_ref(), Some(&leaf));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics(&gw, name, &root).await;
    assert!(!text.contains("fluxgate_acme_orders_total{"), "{text}");
    assert!(
        text.contains(&format!(
            "fluxgate_tls_certificate_expiry_seconds{{name=\"{name}\"}}"
        )),
        "{text}"
    );
    assert_eq!(served_leaf(&gw, name, &root).await.as_ref(), Some(&leaf));
}

#[tokio::test]
async fn tls_alpn_01_issues_a_certificate() {
    let (plain, tls) = listeners().await;
    let (http_port, tls_port) = (
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );
    let pebble = Pebble::start(http_port, tls_port, None);
    let root = pebble.issuing_root().await;
    let up = Upstream::start("u").await;
    let storage = tempfile::tempdir().unwrap();
    let name = "alpn.fluxgate.test";
    let gw = acme_gateway(
        &pebble,
        &up,
        &[name],
        "tls-alpn-01",
        storage.path(),
        Some((plain, tls)),
    )
    .await;
    wait_for_leaf(&gw, name, &root, None, &pebble).await;
    let text = metrics(&gw, name, &root).await;
    assert_eq!(
        counter(&text, "fluxgate_acme_orders_total{result=\"issued\"}"),
        1,
        "{text}"
    );
    // pebble validated with acme-tls/1 handshakes on the TLS listener, not over HTTP.
    let answered = "fluxgate_acme_challenges_answered_total";
    assert!(
        counter(&text, &format!("{answered}{{challenge=\"tls-alpn-01\"}}")) >= 1,
        "{text}"
    );
    assert!(!text.contains("challenge=\"http-01\""), "{text}");
    assert!(text.contains("alpn=\"acme-tls/1\""), "{text}");
}

#[tokio::test]
async fn renewal_keeps_the_previous_certificate_serving_through_failures() {
    let (plain, tls) = listeners().await;
    let (http_port, tls_port) = (
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );
    // 24-second certificates: renewed a third of their life before the end (8 s).
    let pebble = Pebble::start(http_port, tls_port, Some(24));
    let root = pebble.issuing_root().await;
    let up = Upstream::start("u").await;
    let storage = tempfile::tempdir().unwrap();
    let name = "renew.fluxgate.test";
    let gw = acme_gateway(
        &pebble,
        &up,
        &[name],
        "tls-alpn-01",
        storage.path(),
        Some((plain, tls)),
    )
    .await;
    let first = wait_for_leaf(&gw, name, &root, None, &pebble).await;
    // From now on the CA's validation reaches nothing: renewal attempts fail.
    pebble.dns.set_default_ipv4("127.0.0.2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Every handshake meanwhile gets the first certificate, verified.
        assert_eq!(served_leaf(&gw, name, &root).await.as_ref(), Some(&first));
        let text = metrics(&gw, name, &root).await;
        if counter(&text, "fluxgate_acme_orders_total{result=\"failed\"}") >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed renewal: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_leaf(&gw, name, &root).await.as_ref(), Some(&first));
    // Validation works again: the next retry renews.
    pebble.dns.set_default_ipv4("127.0.0.1");
    let second = wait_for_leaf(&gw, name, &root, Some(&first), &pebble).await;
    assert_ne!(second, first);
    let text = metrics(&gw, name, &root).await;
    assert_eq!(
        counter(&text, "fluxgate_acme_orders_total{result=\"issued\"}"),
        2,
        "{text}"
    );
    // The renewed certificate is the stored one.
    let stored: Vec<_> = walk(storage.path());
    let cert = stored.iter().find(|p| p.ends_with("cert.pem")).unwrap();
    let pem = std::fs::read_to_string(cert).unwrap();
    assert_eq!(certs::certs(&pem)[0], second);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
