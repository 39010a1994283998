//! Framing and client limits over raw TCP: no ambiguous framing is forwarded, slow
//! clients are cut off with 408, oversized heads get 414/431, and each framing rule of
//! issue 13 holds both ways (raw upstreams play the misbehaving servers).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{Act, RawUpstream, Seen, answer, header_values};
use crate::support::upstream::Upstream;
use crate::support::{
    PATIENCE, ReadEnd, TestGateway, client, config_with, get, raw_exchange, read_to_close,
    read_until_close,
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
    // Long enough that a loaded machine delivers the partial head before it ends (a
    // connection still idle at the deadline is closed quietly, without a 408).
    let (_up, gw) = gateway("header_read_timeout_ms = 1000").await;
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

// ---------------------------------------------------------------------------------
// The framing rules of issue 13, each over raw TCP against the real gateway.
// ---------------------------------------------------------------------------------

/// A gateway whose route `/*` goes to `target` (a raw upstream, usually).
async fn gateway_to(target: std::net::SocketAddr, server: &str) -> TestGateway {
    let config = config_with(
        &[("g", &[target], "")],
        &format!("[server]\n{server}\n[[routes]]\npath = \"/*\"\nupstream = \"g\"\n"),
    );
    TestGateway::start(&config).await
}

/// One answer read off a raw client connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A raw client connection and the bytes read past the last answer.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; `false` when the gateway closed (or PATIENCE passed).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    async fn need(&mut self, n: usize, what: &str) {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed before {what}: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads one answer, framed as a client must frame it: no body after a HEAD
    /// request or on 1xx/204/304, else chunked, Content-Length, or until close.
    async fn answer(&mut self, to_head: bool) -> Answer {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "closed before a complete answer head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let bodiless = to_head || (100..200).contains(&status) || status == 204 || status == 304;
        let chunked = header_values(&head, "transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length = header_values(&head, "content-length").first().map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("bad length in {head:?}"))
        });
        let body = if bodiless {
            Vec::new()
        } else if chunked {
            self.chunked_body().await
        } else if let Some(n) = length {
            self.need(n, "the whole body").await;
            self.buf.drain(..n).collect()
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Answer { status, head, body }
    }

    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.need(self.buf.len() + 1, "a chunk size line").await;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // No trailers from the gateway's answers in these tests.
                self.need(2, "the end of the chunked body").await;
                assert_eq!(&self.buf[..2], b"\r\n", "trailers were not expected");
                self.buf.drain(..2);
                return body;
            }
            self.need(size + 2, "a chunk").await;
            body.extend_from_slice(&self.buf[..size]);
            assert_eq!(
                &self.buf[size..size + 2],
                b"\r\n",
                "chunk not ended by CRLF"
            );
            self.buf.drain(..size + 2);
        }
    }

    /// Reads until the gateway closes (or `limit` passes): what came, and whether it
    /// closed.
    async fn rest_until_close(&mut self, limit: Duration) -> (String, bool) {
        let (more, end) = read_to_close(&mut self.stream, limit).await;
        let mut all = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
        all.push_str(&more);
        (all, matches!(end, ReadEnd::Closed(_)))
    }

    /// Asserts nothing more arrives within `quiet` (no stray bytes after an answer).
    async fn assert_quiet(&mut self, quiet: Duration, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: stray bytes after the answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(quiet, self.stream.read(&mut chunk)).await {
            assert_eq!(
                n,
                0,
                "{what}: stray bytes after the answer: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            );
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A raw upstream answering every request with `path=<target>`.
async fn echo_target_upstream() -> RawUpstream {
    RawUpstream::start(|seen: &Seen| {
        Act::Reply(answer("200 OK", "", &format!("path={}", seen.target())))
    })
    .await
}

/// Sends `request` on a new connection and expects the refusal `status`, with
/// `connection: close`, and the connection closed after it.
async fn assert_refused(addr: std::net::SocketAddr, request: &[u8], status: u16) {
    let shown = String::from_utf8_lossy(request).into_owned();
    let mut conn = RawClient::connect(addr).await;
    conn.send(request).await;
    let answer = conn.answer(false).await;
    assert_eq!(answer.status, status, "{shown:?} got {answer:?}");
    assert_eq!(
        answer.header("connection"),
        ["close"],
        "{shown:?} got {answer:?}"
    );
    let (rest, closed) = conn.rest_until_close(Duration::from_secs(3)).await;
    assert!(
        closed,
        "{shown:?}: the connection stayed open after the refusal"
    );
    assert_eq!(rest, "", "{shown:?}: bytes after the refusal");
}

/// A request that would reach the upstream if the gateway misread the framing before it.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn transfer_encoding_must_end_in_chunked_over_all_its_lines() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    // 400: the last coding is not chunked (the body's length cannot be known).
    // 501: it ends in chunked, but another coding (or chunked twice) is applied first.
    let cases: [(&str, u16); 10] = [
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip", 400),
        ("Transfer-Encoding: chunked, gzip", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            400,
        ),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: ", 400),
        ("Transfer-Encoding: chunked,", 400),
        ("Transfer-Encoding: xchunked", 400),
        ("Transfer-Encoding: chunked-false", 400),
        ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", 501),
        ("Transfer-Encoding: gzip, chunked", 501),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            501,
        ),
    ];
    for (fields, status) in cases {
        let request = format!(
            "POST /te HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        assert_refused(gw.addr, request.as_bytes(), status).await;
    }
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
    // The control: one chunked line (any case) is taken and its body forwarded.
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let answer = conn.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "path=/ok"));
    let seen = up.wait_for(1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].body.ends_with(b"0\r\n\r\n") && seen[0].complete,
        "{seen:?}"
    );
}

#[tokio::test]
async fn transfer_encoding_in_an_http_1_0_request_is_400() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    for fields in [
        "Transfer-Encoding: chunked",
        "Host: x\r\nTransfer-Encoding: chunked",
        // With a length too: in HTTP/1.1 this would be normalised, in 1.0 it is refused.
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
    ] {
        let request =
            format!("POST /old HTTP/1.0\r\n{fields}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        assert_refused(gw.addr, request.as_bytes(), 400).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn content_length_must_be_digits_only() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    for value in [
        "+5",
        "0x5",
        "5,6",
        "5 5",
        "5.0",
        "1e1",
        "-5",
        "5;",
        "\"5\"",
        "٥",
        "",
        "5\x0b",
        "18446744073709551621",
    ] {
        let request = format!(
            "POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello{SMUGGLED}"
        );
        assert_refused(gw.addr, request.as_bytes(), 400).await;
    }
    // A list or repeat of one length is that length (the control).
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(
        b"POST /same HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let answer = conn.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "path=/same"));
    let seen = up.wait_for(1).await;
    assert_eq!(seen.len(), 1, "only the control was forwarded: {seen:?}");
    assert_eq!(seen[0].header("content-length"), ["5"]);
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test]
async fn bare_lf_line_endings_are_400() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    for request in [
        "GET /lf HTTP/1.1\nHost: x\r\n\r\n",
        "GET /lf HTTP/1.1\r\nHost: x\n\r\n",
        "GET /lf HTTP/1.1\r\nHost: x\r\n\n",
        "GET /lf HTTP/1.1\nHost: x\n\n",
        "GET /lf HTTP/1.1\r\nHost: x\r\nX-A: 1\nContent-Length: 5\r\n\r\nhello",
        // A bare CR is no line ending either.
        "GET /lf HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n",
    ] {
        assert_refused(gw.addr, request.as_bytes(), 400).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn obsolete_line_folding_is_400() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    for request in [
        "GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        "GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
        "GET /fold HTTP/1.1\r\n Host: x\r\n\r\n",
        "GET /fold HTTP/1.1\r\nHost: x\r\n X-B: c\r\n\r\n",
        "POST /fold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n",
        "POST /fold HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nhello",
    ] {
        assert_refused(gw.addr, request.as_bytes(), 400).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

/// Chunked bodies broken at their first chunk: size overflow, extensions too long or
/// with control characters, an extra CRLF between chunks, lines not ending in CRLF.
fn broken_chunked_bodies() -> Vec<(&'static str, String)> {
    vec![
        (
            "17 hex digits",
            "10000000000000005\r\nhello\r\n0\r\n\r\n".into(),
        ),
        (
            "size past u64",
            "fffffffffffffffff\r\nhello\r\n0\r\n\r\n".into(),
        ),
        (
            "control char in extension",
            "5;a\x01b\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("NUL in extension", "5;a=\x00\r\nhello\r\n0\r\n\r\n".into()),
        ("LF in extension", "5;a\nb\r\nhello\r\n0\r\n\r\n".into()),
        (
            "extension over the bound",
            format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(2000)),
        ),
        (
            "extra CRLF between chunks",
            "5\r\nhello\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "CRLF before the first chunk",
            "\r\n5\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n".into()),
        (
            "data longer than its size",
            "3\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n".into()),
        ("size with a prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
    ]
}

#[tokio::test]
async fn malformed_chunked_bodies_are_not_forwarded_and_close_the_connection() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    let mut cases = broken_chunked_bodies();
    // Broken after a good first chunk: the head may have left, but the upstream must
    // never get a complete request.
    cases.push((
        "extra CRLF after a good chunk",
        "3\r\nabc\r\n\r\n2\r\nde\r\n0\r\n\r\n".into(),
    ));
    for (why, body) in cases {
        let request = format!(
            "POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
        );
        let mut conn = RawClient::connect(gw.addr).await;
        conn.send(request.as_bytes()).await;
        let (got, closed) = conn.rest_until_close(Duration::from_secs(3)).await;
        assert!(closed, "{why}: the connection stayed open: {got:?}");
        assert!(!got.starts_with("HTTP/1.1 200"), "{why}: accepted: {got:?}");
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "{why}: one answer only: {got:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for seen in up.seen() {
        assert!(!seen.complete, "a complete request was forwarded: {seen:?}");
        assert_ne!(seen.target(), "/smuggled", "smuggled: {seen:?}");
    }
}

#[tokio::test]
async fn malformed_chunked_bodies_are_answered_400() {
    let up = echo_target_upstream().await;
    let gw = gateway_to(up.addr, "").await;
    let mut wrong = Vec::new();
    for (why, body) in broken_chunked_bodies() {
        let request =
            format!("POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (got, _) = {
            let mut conn = RawClient::connect(gw.addr).await;
            conn.send(request.as_bytes()).await;
            conn.rest_until_close(Duration::from_secs(3)).await
        };
        if !status_line(&got).contains(" 400 ") {
            wrong.push(format!("{why}: {:?}", status_line(&got)));
        }
    }
    assert!(wrong.is_empty(), "not answered 400:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn head_204_and_304_answers_never_carry_a_body_even_when_the_upstream_sends_one() {
    // The upstream sends five body bytes where none may be: right behind the head, or
    // a moment later (after the gateway may already have pooled the connection).
    let up = RawUpstream::start(|seen: &Seen| {
        let stray = b"hello".to_vec();
        let (head, later) = match seen.target() {
            "/head-now" | "/head-later" => (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                seen.target().ends_with("later"),
            ),
            "/204-now" | "/204-later" => (
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                seen.target().ends_with("later"),
            ),
            "/304-now" | "/304-later" => (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                seen.target().ends_with("later"),
            ),
            other => return Act::Reply(answer("200 OK", "", &format!("path={other}"))),
        };
        if later {
            Act::ReplyInTwo(head.as_bytes().to_vec(), Duration::from_millis(50), stray)
        } else {
            let mut all = head.as_bytes().to_vec();
            all.extend_from_slice(&stray);
            Act::Reply(all)
        }
    })
    .await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    let cases = [
        ("HEAD", "/head-now", 200),
        ("HEAD", "/head-later", 200),
        ("GET", "/204-now", 204),
        ("GET", "/204-later", 204),
        ("GET", "/304-now", 304),
        ("GET", "/304-later", 304),
    ];
    for (i, (method, path, status)) in cases.into_iter().enumerate() {
        conn.send(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let bodiless = conn.answer(method == "HEAD").await;
        assert_eq!(bodiless.status, status, "{method} {path}: {bodiless:?}");
        assert!(
            bodiless.header("transfer-encoding").is_empty(),
            "{method} {path}: {bodiless:?}"
        );
        // Not one byte of the upstream's body reaches the client.
        conn.assert_quiet(Duration::from_millis(150), path).await;
        // The next request on the same client connection gets its own answer.
        let next = format!("/next-{i}");
        conn.send(format!("GET {next} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let answer = conn.answer(false).await;
        assert_eq!(
            (answer.status, answer.text()),
            (200, format!("path={next}")),
            "after {method} {path}"
        );
    }
    // Every request reached the upstream whole and once.
    let seen = up.seen();
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(seen.iter().all(|s| s.complete));
}

#[tokio::test]
async fn a_close_delimited_answer_is_delivered_whole_and_its_connection_not_reused() {
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big_for_upstream = big.clone();
    // Close-delimited answers end with a half close: the upstream still reads, so a
    // request the gateway sent on that connection anyway would show up in `seen`.
    let up = RawUpstream::start(move |seen: &Seen| match seen.target() {
        "/until-close" => Act::ReplyAndHalfClose(
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{big_for_upstream}")
                .into_bytes(),
        ),
        "/gzip-coded" => Act::ReplyAndHalfClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nnot-really-gzip".to_vec(),
        ),
        other => Act::Reply(answer("200 OK", "", &format!("path={other}"))),
    })
    .await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    for path in ["/until-close", "/until-close", "/gzip-coded", "/after"] {
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let answer = conn.answer(false).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let expected = match path {
            "/until-close" => big.clone(),
            "/gzip-coded" => "not-really-gzip".to_owned(),
            _ => "path=/after".to_owned(),
        };
        assert_eq!(answer.text().len(), expected.len(), "{path}");
        assert_eq!(answer.text(), expected, "{path}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for s in &seen {
        assert_eq!(
            s.nth, 0,
            "a request went on a close-delimited connection: {seen:?}"
        );
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 4);

    // An HTTP/1.0 client gets it close-delimited too.
    let mut old = RawClient::connect(gw.addr).await;
    old.send(b"GET /until-close HTTP/1.0\r\n\r\n").await;
    let answer = old.answer(false).await;
    assert_eq!((answer.status, answer.text()), (200, big));
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let (up, gw) = gateway("").await;
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = conn.answer(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
    conn.assert_quiet(Duration::from_millis(100), "after 100")
        .await;
    conn.send(b"hello").await;
    let answer = conn.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["body"], "hello");
    // The connection carries the next request.
    conn.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let second = conn.answer(false).await;
    assert_eq!(
        (second.status, second.json()["path"].as_str()),
        (200, Some("/second"))
    );
    // A request without a body gets no 100, only its answer.
    conn.send(b"GET /third HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let third = conn.answer(false).await;
    assert_eq!(third.status, 200, "{third:?}");
    // HTTP/1.0 clients do not know 100 Continue: they get none.
    let mut old = RawClient::connect(gw.addr).await;
    old.send(b"POST /old HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc")
        .await;
    let answer = old.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["body"], "abc");
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
}

/// A refusal made before the body is needed goes out without a 100; the body never
/// asked for cannot be told from a next request, so the connection then closes.
async fn assert_refused_without_100(addr: std::net::SocketAddr, head: &str, status: u16) {
    let mut conn = RawClient::connect(addr).await;
    conn.send(head.as_bytes()).await;
    let answer = conn.answer(false).await;
    assert_eq!(answer.status, status, "{head:?}: {answer:?}");
    assert_eq!(
        answer.header("connection"),
        ["close"],
        "{head:?}: the answer says the connection closes: {answer:?}"
    );
    // A client that sends its body anyway (after its own timeout), with a request
    // hidden in it: that request must not be served.
    conn.send(format!("hello{SMUGGLED}").as_bytes()).await;
    let (rest, closed) = conn.rest_until_close(Duration::from_secs(3)).await;
    assert!(
        closed,
        "{head:?}: still open after the refusal; got {rest:?}"
    );
    assert_eq!(rest, "", "{head:?}: more after the refusal");
}

#[tokio::test]
async fn expect_100_continue_refused_before_the_body_gets_no_100() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/api/*\"\nupstream = \"u\"\n\
         plugins = [{{ name = \"api-key-auth\", config = {{ keys = {{ \"k-alice\" = \"alice\" }} }} }}]\n",
        up.addr
    );
    let auth = crate::support::wasm::plugin("api_key_auth");
    let gw = TestGateway::start_with_plugins(&config, &[("api-key-auth", &auth)]).await;
    // No route.
    assert_refused_without_100(
        gw.addr,
        "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        404,
    )
    .await;
    // The auth plugin says no.
    assert_refused_without_100(
        gw.addr,
        "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        401,
    )
    .await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    // With the key, the same request is let through: 100, then the answer.
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(b"POST /api/x HTTP/1.1\r\nHost: x\r\nX-Api-Key: k-alice\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(conn.answer(false).await.status, 100);
    conn.send(b"hello").await;
    let answer = conn.answer(false).await;
    assert_eq!(
        (answer.status, answer.json()["body"].as_str()),
        (200, Some("hello"))
    );
}

#[tokio::test]
async fn hop_by_hop_fields_and_those_connection_names_are_removed_both_ways() {
    let up = RawUpstream::start(|_: &Seen| {
        Act::Reply(answer(
            "200 OK",
            "Connection: X-Up-Secret, keep-alive\r\nConnection: X-Up-Second\r\n\
             X-Up-Secret: s1\r\nX-Up-Second: s2\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n\
             Upgrade: h2c\r\nX-Up-End: kept\r\n",
            "ok",
        ))
    })
    .await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(
        b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Client-Secret\r\n\
          Connection: X-Second\r\nX-Client-Secret: a\r\nX-Second: b\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
          Proxy-Authorization: Basic eA==\r\nX-End: kept\r\n\r\n",
    )
    .await;
    let answer = conn.answer(false).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "ok"),
        "{answer:?}"
    );
    let hop = [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "transfer-encoding",
    ];
    // Upstream-bound: exactly what arrived on the wire.
    let seen = up.wait_for(1).await;
    let sent = &seen[0];
    for name in hop.iter().chain(&["x-client-secret", "x-second"]) {
        assert!(
            sent.header(name).is_empty(),
            "{name} reached the upstream: {}",
            sent.head
        );
    }
    for value in sent.header("connection") {
        let value = value.to_ascii_lowercase();
        assert!(
            !value.contains("x-"),
            "Connection names leaked upstream: {}",
            sent.head
        );
    }
    assert_eq!(sent.header("x-end"), ["kept"]);
    // Client-bound.
    for name in hop.iter().chain(&["x-up-secret", "x-up-second"]) {
        assert!(
            answer.header(name).is_empty(),
            "{name} reached the client: {}",
            answer.head
        );
    }
    for value in answer.header("connection") {
        let value = value.to_ascii_lowercase();
        assert!(
            !value.contains("x-"),
            "Connection names leaked to the client: {}",
            answer.head
        );
    }
    assert_eq!(answer.header("x-up-end"), ["kept"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, gw) = gateway("").await;
    let mut conn = RawClient::connect(gw.addr).await;
    // Four requests in one write; the first is the slowest to answer.
    conn.send(
        b"GET /slow/150/one?q=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n2nd\
          POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n3rd\r\n0\r\n\r\n\
          HEAD /four HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /five HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let expected = [
        ("GET", "/slow/150/one", ""),
        ("POST", "/two", "2nd"),
        ("POST", "/three", "3rd"),
        ("HEAD", "/four", ""),
        ("GET", "/five", ""),
    ];
    let mut numbers = Vec::new();
    for (method, path, body) in expected {
        let answer = conn.answer(method == "HEAD").await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        if method == "HEAD" {
            assert!(answer.body.is_empty());
            continue;
        }
        let json = answer.json();
        assert_eq!(json["path"], path, "answers out of order: {json}");
        assert_eq!(json["method"], method, "{json}");
        assert_eq!(json["body"], body, "{json}");
        numbers.push(json["n"].as_u64().unwrap());
    }
    // Handled one after the other, in the order sent.
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let (rest, closed) = conn.rest_until_close(Duration::from_secs(3)).await;
    assert!(closed && rest.is_empty(), "after the last: {rest:?}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
}

/// An upstream whose first connection answers one request, then reads the next and
/// closes without a byte of answer (as a server whose keep-alive timeout fired just
/// as the request arrived); every later connection answers everything.
async fn upstream_dropping_its_second_request() -> RawUpstream {
    RawUpstream::start(|seen: &Seen| {
        if seen.conn == 0 && seen.nth >= 1 {
            return Act::Close;
        }
        let body = format!(
            "path={} body={}",
            seen.target(),
            String::from_utf8_lossy(&seen.body)
        );
        Act::Reply(answer("200 OK", "", &body))
    })
    .await
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_before_any_answer_is_retried_once() {
    let up = upstream_dropping_its_second_request().await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = conn.answer(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "path=/one body=")
    );
    // The pooled connection carries /two and is closed under it: a fresh one answers.
    conn.send(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let second = conn.answer(false).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "path=/two body="),
        "{second:?}"
    );
    let seen = up.seen();
    let tries: Vec<(usize, usize)> = seen
        .iter()
        .filter(|s| s.target() == "/two")
        .map(|s| (s.conn, s.nth))
        .collect();
    assert_eq!(
        tries,
        [(0, 1), (1, 0)],
        "once on the pooled connection, once on a new one"
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_on_a_connection_closed_before_any_answer_is_not_replayed() {
    let up = upstream_dropping_its_second_request().await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1")
        .await;
    let first = conn.answer(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "path=/one body=1")
    );
    conn.send(b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n2")
        .await;
    let second = conn.answer(false).await;
    assert_eq!(second.status, 502, "{second:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tries: Vec<(usize, usize)> = up
        .seen()
        .iter()
        .filter(|s| s.target() == "/two")
        .map(|s| (s.conn, s.nth))
        .collect();
    assert_eq!(tries, [(0, 1)], "the POST went out once");
    // The client connection is still good.
    conn.send(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let third = conn.answer(false).await;
    assert_eq!(
        (third.status, third.text().as_str()),
        (200, "path=/three body=")
    );
}

#[tokio::test]
async fn a_client_s_malformed_chunked_body_does_not_count_against_the_target() {
    let up = echo_target_upstream().await;
    let config = config_with(
        &[(
            "g",
            &[up.addr],
            "outlier_detection = { consecutive_failures = 2, base_ejection_ms = 60000 }",
        )],
        "[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        let _ = raw_exchange(
            gw.addr,
            b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            Duration::from_secs(2),
        )
        .await;
    }
    // The target did nothing wrong: it still gets traffic.
    let mut conn = RawClient::connect(gw.addr).await;
    conn.send(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = conn.answer(false).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "path=/fine"),
        "{answer:?}"
    );
}

/// HTTP/1.0 keep-alive: a 1.0 client that asks for it keeps its connection (each answer
/// says `connection: keep-alive` and carries a length, never chunked coding, which 1.0
/// does not know); one that does not ask gets its answer and a closed connection.
#[tokio::test]
async fn http_1_0_keep_alive_is_kept_only_when_asked_for() {
    // An upstream answering with a length (a 1.0 client cannot be kept without one).
    let up = RawUpstream::start(|seen: &Seen| {
        Act::Reply(answer("200 OK", "", &format!("saw {}", seen.target())))
    })
    .await;
    let gw = gateway_to(up.addr, "").await;
    let mut conn = RawClient::connect(gw.addr).await;
    for i in 0..2 {
        let request = format!("GET /ka/{i} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
        conn.send(request.as_bytes()).await;
        let answer = conn.answer(false).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("connection"), ["keep-alive"], "{answer:?}");
        assert!(
            answer.header("transfer-encoding").is_empty(),
            "no chunked coding to a 1.0 client: {answer:?}"
        );
        assert_eq!(answer.text(), format!("saw /ka/{i}"), "{answer:?}");
    }
    conn.send(b"GET /ka/last HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let answer = conn.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("connection"), ["close"], "{answer:?}");
    let (rest, closed) = conn.rest_until_close(Duration::from_secs(3)).await;
    assert!(
        closed,
        "a 1.0 request without keep-alive leaves the connection open"
    );
    assert_eq!(rest, "");
}
