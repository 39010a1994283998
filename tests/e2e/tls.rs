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

/// Waits until a new handshake for `sni` is answered with `expected`; returns how long
/// that took (printed by the callers for the record).
async fn wait_for_certificate(
    addr: std::net::SocketAddr,
    sni: &str,
    expected: &Pem,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let want = certs::certs(&expected.cert).remove(0);
    let inspect = certs::inspecting_client_config(&[b"http/1.1"]);
    for _ in 0..1000 {
        let (_, handshake) = certs::connect(addr, sni, inspect.clone()).await.unwrap();
        if handshake.leaf.as_ref() == Some(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < crate::support::PATIENCE,
            "the new certificate was not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the new certificate was not served");
}

/// The leaf a fresh handshake gets now.
async fn served_leaf(
    addr: std::net::SocketAddr,
    sni: &str,
) -> rustls::pki_types::CertificateDer<'static> {
    let inspect = certs::inspecting_client_config(&[b"http/1.1"]);
    certs::connect(addr, sni, inspect)
        .await
        .unwrap()
        .1
        .leaf
        .unwrap()
}

#[tokio::test]
async fn certificates_replaced_in_place_by_rename_or_broken_are_handled_without_dropping_connections()
 {
    let ca = TestCa::new("test CA");
    let a = ca.server(&["gw.test"]);
    let up = Upstream::start("u").await;
    let gw = tls_gateway(&up, &[&a], "").await;
    let addr = gw.tls_addr.unwrap();
    // A keep-alive connection opened on the first certificate.
    let (held, _) = certs::connect(addr, "gw.test", ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let (mut held, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(held),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (cert_path, key_path) = (gw.dir().join("c0.pem"), gw.dir().join("c0.key"));

    // 1. In place: key first, then certificate (a moment where they do not match).
    let b = ca.server(&["gw.test"]);
    std::fs::write(&key_path, &b.key).unwrap();
    std::fs::write(&cert_path, &b.cert).unwrap();
    let took = wait_for_certificate(addr, "gw.test", &b).await;
    println!("in-place replacement served after {took:?}");

    // 2. By atomic rename, as most tools write.
    let c = ca.server(&["gw.test"]);
    for (path, text) in [(&key_path, &c.key), (&cert_path, &c.cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    let took = wait_for_certificate(addr, "gw.test", &c).await;
    println!("renamed replacement served after {took:?}");

    // 3. Broken: garbage in the certificate file. The certificate in force keeps serving.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
        if metrics.contains("fluxgate_tls_certificate_reloads_total{result=\"error\"}") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "broken file not noticed: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_leaf(addr, "gw.test").await,
        certs::certs(&c.cert).remove(0)
    );
    let verifying = ca.client_config(&[b"http/1.1"]);
    let (reply, _) = certs::request(addr, "gw.test", verifying, get_req("/still", "gw.test")).await;
    assert_eq!(reply.status, 200);

    // 4. Fixed again: served.
    let d = ca.server(&["gw.test"]);
    std::fs::write(&key_path, &d.key).unwrap();
    std::fs::write(&cert_path, &d.cert).unwrap();
    wait_for_certificate(addr, "gw.test", &d).await;

    // The connection opened before all this still works.
    let response = held
        .send_request(get_req("/held", "gw.test"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = get(&client(), &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_tls_certificate_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_swapped_symlink_is_served_under_load_with_no_failed_request() {
    let ca = TestCa::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    // certbot's layout: live/ holds symlinks into archive/.
    let (live, archive) = (dir.path().join("live"), dir.path().join("archive"));
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let write_version = |n: u32, pem: &Pem| {
        std::fs::write(archive.join(format!("cert{n}.pem")), &pem.cert).unwrap();
        std::fs::write(archive.join(format!("key{n}.pem")), &pem.key).unwrap();
        for (link, target) in [
            ("cert.pem", format!("cert{n}.pem")),
            ("key.pem", format!("key{n}.pem")),
        ] {
            let tmp = live.join(format!("{link}.new"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("../archive/{target}"), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(link)).unwrap();
        }
    };
    let first = ca.server(&["gw.test"]);
    write_version(1, &first);
    let up = Upstream::start("u").await;
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"live/cert.pem\", key = \"live/key.pem\" }}]\n{}",
        config_with(
            &[("g", &[up.addr], "")],
            "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n"
        )
    );
    let gw = TestGateway::start_in(dir, &config, &[]).await;
    let addr = gw.tls_addr.unwrap();

    // Clients making new connections (each a full handshake) the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, config) = (stop.clone(), ca.client_config(&[b"http/1.1", b"h2"]));
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            for i in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let result = tokio::time::timeout(crate::support::PATIENCE, async {
                    let (stream, handshake) =
                        certs::connect(addr, "gw.test", config.clone()).await?;
                    let reply = certs::send_on(
                        stream,
                        handshake.alpn.as_deref() == Some(b"h2"),
                        get_req(&format!("/w{worker}/{i}"), "gw.test"),
                    )
                    .await;
                    Ok::<_, std::io::Error>(reply.status)
                })
                .await;
                match result {
                    Ok(Ok(status)) if status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let second = ca.server(&["gw.test"]);
    let third = ca.server(&["gw.test"]);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let gw_dir = gw.dir().to_owned();
    let swap = |n: u32, pem: &Pem| {
        let (live, archive) = (gw_dir.join("live"), gw_dir.join("archive"));
        std::fs::write(archive.join(format!("cert{n}.pem")), &pem.cert).unwrap();
        std::fs::write(archive.join(format!("key{n}.pem")), &pem.key).unwrap();
        for (link, target) in [
            ("key.pem", format!("key{n}.pem")),
            ("cert.pem", format!("cert{n}.pem")),
        ] {
            let tmp = live.join(format!("{link}.new"));
            std::os::unix::fs::symlink(format!("../archive/{target}"), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(link)).unwrap();
        }
    };
    swap(2, &second);
    let took = wait_for_certificate(addr, "gw.test", &second).await;
    println!("symlink swap served after {took:?}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    swap(3, &third);
    wait_for_certificate(addr, "gw.test", &third).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during the swaps: {failed:?}"
        );
        total += ok;
    }
    println!("{total} requests on new TLS connections during two swaps, none failed");
    assert!(total > 20, "too little load to mean anything: {total}");
}

#[tokio::test]
async fn websockets_work_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("test CA");
    let pem = ca.server(&["gw.test"]);
    let up = Upstream::start("u").await;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("c.pem", pem.cert.as_bytes()),
        ("c.key", pem.key.as_bytes()),
    ];
    files.truncate(2);
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"c.pem\", key = \"c.key\" }}]\n{}",
        config_with(
            &[("g", &[up.addr], "")],
            "[[routes]]\npath = \"/ws\"\nupstream = \"g\"\nwebsocket = true\n"
        )
    );
    let gw = TestGateway::start_with_files(&config, &[], &files).await;
    // wss:// offers only http/1.1 (the upgrade is an HTTP/1.1 mechanism).
    let (mut stream, handshake) = certs::connect(
        gw.tls_addr.unwrap(),
        "gw.test",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(handshake.alpn.as_deref(), Some(&b"http/1.1"[..]));
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(crate::support::PATIENCE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"hello over tls"[..], b"second frame"] {
        stream.write_all(message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        tokio::time::timeout(crate::support::PATIENCE, stream.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, message);
    }
}

#[tokio::test]
async fn bad_certificate_files_are_validate_errors_naming_the_entry() {
    let ca = TestCa::new("test CA");
    let good = ca.server(&["gw.test"]);
    let other = ca.server(&["gw.test"]);
    let expired = ca.expired_server(&["old.test"]);
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("good.pem", &good.cert),
        ("good.key", &good.key),
        ("other.key", &other.key),
        ("expired.pem", &expired.cert),
        ("expired.key", &expired.key),
        ("garbage.pem", &"hello".to_owned()),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let check = |certificates: &str| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, format!("[tls]\ncertificates = [{certificates}]\n")).unwrap();
        match fluxgate_host::plan::load_file(&path, &Default::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(check("{ cert = \"good.pem\", key = \"good.key\" }"), "");
    let mismatch = check(
        "{ cert = \"good.pem\", key = \"good.key\" }, { cert = \"good.pem\", key = \"other.key\" }",
    );
    assert!(
        mismatch.contains("tls.certificates[1]") && mismatch.contains("does not match"),
        "{mismatch}"
    );
    let old = check("{ cert = \"expired.pem\", key = \"expired.key\" }");
    assert!(
        old.contains("tls.certificates[0]") && old.contains("expired"),
        "{old}"
    );
    let missing = check("{ cert = \"nope.pem\", key = \"good.key\" }");
    assert!(
        missing.contains("tls.certificates[0]") && missing.contains("nope.pem"),
        "{missing}"
    );
    let garbage = check("{ cert = \"garbage.pem\", key = \"good.key\" }");
    assert!(
        garbage.contains("tls.certificates[0]") && garbage.contains("garbage.pem"),
        "{garbage}"
    );
    let none = check("");
    assert!(none.contains("tls.certificates"), "{none}");
}
