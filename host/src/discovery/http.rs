//! The plain HTTP/1.1 client etcd's JSON gateway and Consul's HTTP API are spoken to
//! with (hyper, as for upstreams; no gRPC stack).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer read whole (a range or a health listing).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub type ProviderClient = Client<HttpConnector, Full<Bytes>>;

/// Why a provider request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("answer larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("HTTP {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("answer is not the JSON expected: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Protocol(String),
}

pub fn client(connect_timeout: Duration) -> ProviderClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `req` and waits at most `timeout` for the response head.
pub async fn send(
    client: &ProviderClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<Incoming>, FetchError> {
    let response = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| FetchError::Timeout(timeout))??;
    if !response.status().is_success() {
        let status = response.status();
        let body = tokio::time::timeout(timeout, read_body(response.into_body()))
            .await
            .unwrap_or(Ok(Bytes::new()))
            .unwrap_or_default();
        let mut body = String::from_utf8_lossy(&body).into_owned();
        body.truncate(200);
        return Err(FetchError::Status { status, body });
    }
    Ok(response)
}

/// Reads a whole (bounded) body.
pub async fn read_body(body: Incoming) -> Result<Bytes, FetchError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(e) => Err(FetchError::Body(*e)),
            Err(_) => Err(FetchError::TooLarge),
        },
    }
}
