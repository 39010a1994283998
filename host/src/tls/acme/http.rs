//! The HTTPS client the CA is spoken to with: hyper-util over hyper-rustls with our
//! rustls config (the web roots plus `directory_ca_file`), every request and its body
//! bounded in time and size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};

/// One request to the CA, body included, must finish within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connecting to the CA must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read from the CA (a certificate chain is a few KiB).
const MAX_BODY: usize = 1024 * 1024;

/// The client handed to instant-acme.
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// HTTPS only, verified with `tls`.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let target = req.uri().to_string();
        let sent = self.client.request(req);
        Box::pin(async move {
            let exchange = async {
                let response = sent.await.map_err(|e| {
                    let reason = crate::tls::client::failure_reason(&e)
                        .map_or_else(|| format!("{e:?}"), |tls| format!("{e} ({tls})"));
                    other(format!("{target}: {reason}"))
                })?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| other(format!("{target}: reading the answer: {e}")))?
                    .to_bytes();
                Ok(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(other(format!(
                        "{target}: no answer within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    )))
                })
        })
    }
}

fn other(message: String) -> Error {
    Error::Other(message.into())
}
