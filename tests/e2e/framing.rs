//! Framing and client limits over raw TCP: no ambiguous framing is forwarded, slow
//! clients are cut off with 408, oversized heads get 414/431.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::upstream::Upstream;
use crate::support::{
    ReadEnd, TestGateway, client, config_with, get, raw_exchange, read_to_close, read_until_close,
};

async fn gateway(server: &str) -> (Upstream, TestGateway) {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        &format!("[server]\n{server}\n[[routes]]\npath = \"/*\"\nupstream = \"g\"\n"),
    );
    let gw = TestGateway::start(&config).await;
    (up, gw)
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_normalised_to_chunked() {
    let (up, gw) = gateway("").await;
    // A classic smuggling attempt: CL says 4 bytes, chunked framing carries a whole
    // second request after them.
    let attack = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = raw_exchange(gw.addr, attack, Duration::from_secs(2)).await;
    assert!(status_line(&response).contains(" 200 "), "{response}");
    // The upstream saw the chunked body (empty) and no Content-Length.
    assert!(response.contains(r#""body":"""#), "{response}");
    assert!(!response.contains(r#""content-length""#), "{response}");
    // The connection was closed after the response, so the tail was never parsed.
    assert!(!response.contains("/smuggled"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "no smuggled request reached the upstream"
    );
}

#[tokio::test]
async fn conflicting_or_malformed_content_length_is_400() {
    let (up, gw) = gateway("").await;
    for request in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ] {
        let response = raw_exchange(gw.addr, request, Duration::from_secs(2)).await;
        assert!(
            status_line(&response).contains(" 400 "),
            "{:?} got {response:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn equal_duplicate_content_lengths_are_folded_into_one() {
    let (_up, gw) = gateway("").await;
    let response = raw_exchange(
        gw.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(2),
    )
    .await;
    assert!(status_line(&response).contains(" 200 "), "{response}");
    assert!(response.contains(r#""content-length":["3"]"#), "{response}");
    assert!(response.contains(r#""body":"abc""#), "{response}");
}

#[tokio::test]
async fn slow_clients_get_408_while_others_are_served() {
    let (_up, gw) = gateway("header_read_timeout_ms = 300").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Trickle bytes while another client is served normally.
    let c = client();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = slow.write_all(b"a").await;
        assert_eq!(get(&c, &gw.url("/fine"), &[]).await.status, 200);
    }
    let response = read_until_close(&mut slow, Duration::from_secs(3)).await;
    assert!(status_line(&response).contains(" 408 "), "{response:?}");
    assert!(response.contains("request_timeout"), "{response}");
}

/// Asserts that `conn` gets no bytes and is closed by the gateway about one header
/// timeout (300 ms) after `idle_since`: not at once, and not never.
async fn assert_closed_quietly(conn: &mut TcpStream, idle_since: Instant, what: &str) {
    let (received, end) = read_to_close(conn, Duration::from_secs(4)).await;
    assert!(
        matches!(end, ReadEnd::Closed(_)),
        "{what}: the gateway never closed the idle connection (still open after 4 s; got {received:?})"
    );
    assert_eq!(received, "", "{what}: closed quietly, without a 408");
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(250) && idle_for <= Duration::from_millis(2500),
        "{what}: closed after {idle_for:?} idle, expected about the 300 ms header timeout"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_quietly_after_the_header_timeout() {
    let (_up, gw) = gateway("header_read_timeout_ms = 300").await;
    // A connection that never sends a byte.
    let mut fresh = TcpStream::connect(gw.addr).await.unwrap();
    let connected = Instant::now();
    assert_closed_quietly(&mut fresh, connected, "fresh connection").await;

    // A keep-alive connection after one complete exchange.
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_echo(&mut conn).await;
    let answered = Instant::now();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "the first answer keeps the connection open: {first}"
    );
    assert_closed_quietly(&mut conn, answered, "keep-alive connection").await;
}

/// Reads one complete JSON echo response from upstream "u" off `conn`.
async fn read_echo(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"upstream\":\"u\"") {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(conn, &mut buf),
        )
        .await
        .expect("response in time")
        .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_stalled_second_request_on_a_keep_alive_connection_gets_408() {
    let (_up, gw) = gateway("header_read_timeout_ms = 300").await;
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the first (complete, JSON echo) response.
    while !String::from_utf8_lossy(&first).contains("\"upstream\":\"u\"") {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
        )
        .await
        .expect("first response in time")
        .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));
    conn.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let response = read_until_close(&mut conn, Duration::from_secs(3)).await;
    assert!(status_line(&response).contains(" 408 "), "{response:?}");
}

#[tokio::test]
async fn long_targets_and_big_header_sections_are_refused() {
    let (up, gw) = gateway("max_uri_bytes = 64\nmax_headers = 10\nmax_header_bytes = 512").await;
    let c = client();
    let long = get(&c, &gw.url(&format!("/{}", "a".repeat(100))), &[]).await;
    assert_eq!(long.status, 414);
    assert_eq!(long.json()["error"], "uri_too_long");
    let big = get(&c, &gw.url("/"), &[("x-big", &"b".repeat(600))]).await;
    assert_eq!(big.status, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let response = raw_exchange(gw.addr, many.as_bytes(), Duration::from_secs(2)).await;
    assert!(status_line(&response).contains(" 431 "), "{response}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_408_answer_declares_exactly_the_body_it_sends() {
    let (_up, gw) = gateway("header_read_timeout_ms = 300").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let response = read_until_close(&mut slow, Duration::from_secs(3)).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {response:?}"));
    assert!(status_line(head).contains(" 408 "), "{response:?}");
    let declared: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
        .trim()
        .parse()
        .unwrap();
    // A strict client reads exactly `declared` bytes: they must all come, and be all.
    assert_eq!(declared, body.len(), "{response:?}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "request_timeout");
}
