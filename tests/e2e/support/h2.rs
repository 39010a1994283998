//! HTTP/2 clients for the tests: one connection (h2c with prior knowledge, or TLS with
//! ALPN h2) on which any number of requests are multiplexed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

use super::{PATIENCE, Reply};

/// One HTTP/2 connection; clone it to send requests on it concurrently.
pub type H2 = SendRequest<Full<Bytes>>;

/// HTTP/2 with prior knowledge (h2c) over plain TCP.
pub async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    handshake(tcp).await
}

/// HTTP/2 over TLS, ALPN h2, trusting `config`'s roots and sending `server_name`.
pub async fn h2_tls(addr: SocketAddr, server_name: &str, config: Arc<rustls::ClientConfig>) -> H2 {
    let (stream, handshake_seen) = super::certs::connect(addr, server_name, config)
        .await
        .expect("TLS handshake");
    assert_eq!(handshake_seen.alpn.as_deref(), Some(&b"h2"[..]));
    handshake(stream).await
}

/// The HTTP/2 handshake on `stream`; the connection is driven by its own task.
pub async fn handshake<S>(stream: S) -> H2
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = tokio::time::timeout(
        PATIENCE,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake in time")
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A GET for `path` on an HTTP/2 connection (`:authority` gw.test).
pub fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://gw.test{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Sends `req` on the connection and reads the whole response (trailers included).
pub async fn send(h2: &H2, req: Request<Full<Bytes>>) -> Result<H2Reply, String> {
    let mut sender = h2.clone();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .map_err(|_| "no response in time".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .map_err(|_| "no body in time".to_owned())?
        .map_err(|e| format!("body failed: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok(H2Reply {
        reply: Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
        },
        version: parts.version,
        trailers,
    })
}

/// A response read over HTTP/2.
#[derive(Debug)]
pub struct H2Reply {
    pub reply: Reply,
    pub version: http::Version,
    pub trailers: Option<http::HeaderMap>,
}

/// A well-behaved client on its own connection, sending a GET every few milliseconds
/// while something else (an abusive connection) runs; `stop` ends it and reports.
pub struct Bystander {
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Bystander {
    pub fn start(h2: H2, path: &'static str) -> Self {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: at most 3000 requests (30 s at one per 10 ms).
                for _ in 0..3000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match send(&h2, get_req(path)).await {
                        Ok(r) if r.reply.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.reply.status)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Self {
            ok,
            failures,
            stop,
            task,
        }
    }

    /// Stops the client and returns (answered 200, failures).
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("bystander stops")
            .expect("bystander task");
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}
