//! Test support: real upstream servers, a real gateway on port 0, and HTTP clients.

pub mod certs;
pub mod daemons;
pub mod h2;
pub mod python;
pub mod raw;
pub mod upstream;
pub mod wasm;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fluxgate_host::Gateway;
use fluxgate_host::launch::{self, Launch};
use fluxgate_host::plan::{self, Overrides};
use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Every wait in these tests gives up after this long rather than hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A gateway running in-process on 127.0.0.1:0 with its config file watched, started
/// through the same `launch::start` as the binary.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The TLS listener, when the config has `[tls]` (bound to 127.0.0.1:0 too).
    pub tls_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub config_path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The watched plugin folder (`<temp>/plugins.d`).
    pub plugin_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from config text (its `server.listen` is ignored: port 0 is used).
    pub async fn start(config_text: &str) -> Self {
        Self::start_with_plugins(config_text, &[]).await
    }

    /// Starts a gateway whose plugin folder holds `plugins` (name, wasm bytes) at start.
    pub async fn start_with_plugins(config_text: &str, plugins: &[(&str, &[u8])]) -> Self {
        Self::start_with_files(config_text, plugins, &[]).await
    }

    /// Starts a gateway whose folder (the config's, so relative paths resolve there)
    /// holds `files` (name, bytes) at start: certificates and the like.
    pub async fn start_with_files(
        config_text: &str,
        plugins: &[(&str, &[u8])],
        files: &[(&str, &[u8])],
    ) -> Self {
        Self::start_inner(config_text, plugins, files, None, None).await
    }

    /// Starts a gateway like `start_with_files` on listeners the test bound itself
    /// (to know the ports before the gateway starts); `None` = 127.0.0.1:0.
    pub async fn start_on(
        config_text: &str,
        files: &[(&str, &[u8])],
        listener: Option<TcpListener>,
        tls_listener: Option<TcpListener>,
    ) -> Self {
        Self::start_inner(config_text, &[], files, listener, tls_listener).await
    }

    async fn start_inner(
        config_text: &str,
        plugins: &[(&str, &[u8])],
        files: &[(&str, &[u8])],
        listener: Option<TcpListener>,
        tls_listener: Option<TcpListener>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).expect("write file");
        }
        Self::start_in_on(dir, config_text, plugins, listener, tls_listener).await
    }

    /// Starts a gateway whose config is written into `dir`, prepared by the caller
    /// (certificate folders with symlinks and the like).
    pub async fn start_in(
        dir: tempfile::TempDir,
        config_text: &str,
        plugins: &[(&str, &[u8])],
    ) -> Self {
        Self::start_in_on(dir, config_text, plugins, None, None).await
    }

    async fn start_in_on(
        dir: tempfile::TempDir,
        config_text: &str,
        plugins: &[(&str, &[u8])],
        listener: Option<TcpListener>,
        tls_listener: Option<TcpListener>,
    ) -> Self {
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config_text).expect("write config");
        let plan =
            plan::load_file(&config_path, &Overrides::default()).expect("test config is valid");
        let plugin_dir = plan.config.plugins.dir.clone();
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for (name, bytes) in plugins {
            std::fs::write(plugin_dir.join(format!("{name}.wasm")), bytes).expect("write plugin");
        }
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let tls_listener = match (plan.tls.as_ref(), tls_listener) {
            (Some(_), Some(listener)) => Some(listener),
            (Some(_), None) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
            (None, _) => None,
        };
        let running = launch::start(Launch {
            plan,
            config_path: Some(config_path.clone()),
            overrides: Overrides::default(),
            listener: Some(listener),
            tls_listener,
            inherited: Default::default(),
        })
        .await
        .expect("gateway starts");
        let (addr, tls_addr, gateway) = (running.addr, running.tls_addr, running.gateway.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(running.serve(async {
            let _ = rx.await;
            launch::Stop::Shutdown
        }));
        Self {
            addr,
            tls_addr,
            gateway,
            config_path,
            shutdown: Some(tx),
            task: Some(task),
            plugin_dir,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The folder of the config file (where `start_with_files` put its files).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Rewrites the config file and waits until the gateway has swapped it in.
    pub async fn reconfigure(&self, text: &str) {
        let before = self.gateway.snapshot().generation;
        std::fs::write(&self.config_path, text).expect("write config");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.gateway.snapshot().generation == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "config was not reloaded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Begins shutdown without waiting.
    pub fn begin_stop(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled keep-alive client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole response, failing the test after PATIENCE.
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET with optional extra headers.
pub async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).expect("request")).await
}

/// Writes raw bytes on a new connection and reads until the server closes it (or
/// `read_for` passes), returning everything received.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], read_for: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_until_close(&mut stream, read_for).await
}

pub async fn read_until_close(stream: &mut TcpStream, read_for: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + read_for;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a read of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer closed the connection (EOF, or a reset), this long after the read began.
    Closed(Duration),
    /// Still open when the read gave up.
    StillOpen,
}

/// Reads until the peer closes the connection or `limit` passes, and says which
/// happened (unlike `read_until_close`, which cannot tell a close from a timeout).
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, ReadEnd) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    let end = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break ReadEnd::Closed(started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break ReadEnd::StillOpen,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), end)
}

/// A request body fed chunk by chunk from the test.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Minimal config with one upstream group `name` over `targets` and the given routes.
pub fn config_with(upstreams: &[(&str, &[SocketAddr], &str)], routes: &str) -> String {
    let mut text = String::new();
    for (name, targets, extra) in upstreams {
        let list: Vec<String> = targets
            .iter()
            .map(|a| format!("{{ url = \"http://{a}\" }}"))
            .collect();
        text.push_str(&format!(
            "[upstreams.{name}]\ntargets = [{}]\n{extra}\n",
            list.join(", ")
        ));
    }
    text.push_str(routes);
    text
}
