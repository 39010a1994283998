//! Every way a request can be refused or fail, and the one place each becomes a response.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::GatewayBody;

/// A request the gateway answers itself with an error status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{path} only answers {allowed}")]
    MethodNotAllowed {
        path: &'static str,
        allowed: &'static str,
    },
    #[error("request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request headers exceed {0}")]
    HeadersTooLarge(&'static str),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("upstream \"{upstream}\" has no available target")]
    NoTarget { upstream: String },
    #[error("could not connect to upstream \"{upstream}\"")]
    UpstreamConnect { upstream: String },
    #[error("upstream \"{upstream}\" did not answer in time")]
    UpstreamTimeout { upstream: String },
    #[error("upstream \"{upstream}\" failed")]
    UpstreamFailed { upstream: String },
    /// The TLS handshake with a target failed (untrusted or mismatched certificate, no
    /// common protocol...): the reason is logged, never shown to the client.
    #[error("TLS with upstream \"{upstream}\" failed")]
    UpstreamTls { upstream: String },
    #[error("upstream response is larger than {limit} bytes, the most plugins may buffer")]
    ResponseTooLarge { limit: usize },
    #[error("plugin \"{plugin}\" failed ({kind})")]
    Plugin { plugin: String, kind: &'static str },
    #[error("plugin \"{plugin}\" failed (not_loaded)")]
    PluginNotLoaded { plugin: String },
    #[error("request head not received in time")]
    RequestTimeout,
    /// A request head our HTTP/1.1 codec refuses (framing rules, limits).
    #[error("{0}")]
    MalformedHead(crate::h1::HeadError),
    /// A chunked request body that breaks the coding's rules.
    #[error("malformed request body: {0}")]
    MalformedBody(crate::h1::ChunkError),
    #[error("rate limit exceeded ({scope} limit); retry in {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    #[error("CORS preflight refused: {0}")]
    CorsRejected(String),
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("no registered instance with id \"{0}\"")]
    UnknownInstance(String),
    #[error("instance \"{id}\" is owned by node {node}: heartbeat there or re-register here")]
    OwnedElsewhere { id: String, node: String },
    #[error("this write needs Authorization: Bearer <admin token>")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect { .. }
            | GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::PluginNotLoaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::MalformedHead(e) => e.status(),
            GatewayError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::CorsRejected(_) => StatusCode::FORBIDDEN,
            GatewayError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            GatewayError::UnknownInstance(_) => StatusCode::NOT_FOUND,
            GatewayError::OwnedElsewhere { .. } => StatusCode::CONFLICT,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A short stable machine-readable code for the JSON body and logs.
    /// A refusal caused by the client's own request (a broken body while forwarding):
    /// never held against the target's health, breaker or error metrics.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            GatewayError::MalformedBody(_) | GatewayError::BadRequest(_)
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::UriTooLong { .. } => "uri_too_long",
            GatewayError::HeadersTooLarge(_) => "headers_too_large",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NoTarget { .. } => "no_target",
            GatewayError::UpstreamConnect { .. } => "upstream_connect",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamFailed { .. } => "upstream_failed",
            GatewayError::UpstreamTls { .. } => "upstream_tls",
            GatewayError::ResponseTooLarge { .. } => "response_too_large",
            GatewayError::Plugin { .. } | GatewayError::PluginNotLoaded { .. } => "plugin_failed",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::MalformedHead(e) => match e.status().as_u16() {
                431 => "headers_too_large",
                414 => "uri_too_long",
                501 => "not_implemented",
                _ => "bad_request",
            },
            GatewayError::MalformedBody(_) => "bad_request",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::CorsRejected(_) => "cors_rejected",
            GatewayError::InvalidField { .. } => "invalid_field",
            GatewayError::UnknownInstance(_) => "unknown_instance",
            GatewayError::OwnedElsewhere { .. } => "owned_elsewhere",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
        }
    }

    /// The HTTP response: `{"error": code, "message": text, "status": n}`. Messages name
    /// routes and upstreams from the config, never addresses or internal errors.
    pub fn into_response(self) -> Response<GatewayBody> {
        let status = self.status();
        let allow = match &self {
            GatewayError::MethodNotAllowed { allowed, .. } => Some(*allowed),
            _ => None,
        };
        let retry_after = match &self {
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "status": status.as_u16(),
        });
        if let GatewayError::InvalidField { field, .. } = &self {
            body["field"] = serde_json::Value::from(field.as_str());
        }
        let unauthorized = matches!(self, GatewayError::Unauthorized);
        let mut response = json_response(status, &body);
        if let Some(allowed) = allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fluxgate\""),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code for an HTTP status the gateway (or a plugin) answers a gRPC call with.
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 | 411 | 414 | 422 => GrpcCode::InvalidArgument,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 | 405 | 501 => GrpcCode::Unimplemented,
            408 | 504 => GrpcCode::DeadlineExceeded,
            409 | 412 => GrpcCode::FailedPrecondition,
            413 | 429 | 431 => GrpcCode::ResourceExhausted,
            500 => GrpcCode::Internal,
            502 | 503 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

impl GatewayError {
    /// The gRPC code of this refusal (a finer choice than by status where one exists).
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            GatewayError::UnknownInstance(_) => GrpcCode::NotFound,
            GatewayError::ResponseTooLarge { .. } => GrpcCode::ResourceExhausted,
            GatewayError::PluginNotLoaded { .. } => GrpcCode::Unavailable,
            other => GrpcCode::for_status(other.status()),
        }
    }

    /// The refusal of a gRPC call, as gRPC clients read it: HTTP 200, trailers-only,
    /// `grpc-status` and `grpc-message` (plus `retry-after` when rate limited).
    pub fn into_grpc_response(self) -> Response<GatewayBody> {
        let mut response = grpc_answer(self.grpc_code(), &self.to_string());
        if let GatewayError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc[+proto|;...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A trailers-only gRPC answer: HTTP 200, no body, the status in the headers.
pub fn grpc_answer(code: GrpcCode, message: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(value) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `grpc-message` encoding: printable ASCII except `%` as is, other bytes as `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_become_json_with_the_right_status() {
        let response = GatewayError::NoRoute {
            method: "GET".into(),
            path: "/x".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "no_route");
        assert_eq!(json["status"], 404);
        assert_eq!(json["message"], "no route matches GET /x");
        assert_eq!(
            GatewayError::UpstreamTimeout {
                upstream: "u".into()
            }
            .status(),
            504
        );
        assert_eq!(
            GatewayError::UpstreamConnect {
                upstream: "u".into()
            }
            .status(),
            502
        );
    }

    #[tokio::test]
    async fn grpc_calls_get_grpc_statuses() {
        let limited = GatewayError::RateLimited {
            scope: "route",
            retry_after_secs: 3,
        }
        .into_grpc_response();
        assert_eq!(limited.status(), StatusCode::OK);
        assert_eq!(limited.headers()["grpc-status"], "8");
        assert_eq!(limited.headers()["content-type"], "application/grpc");
        assert_eq!(limited.headers()[header::RETRY_AFTER], "3");
        let message = limited.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(message, "rate limit exceeded (route limit); retry in 3 s");
        assert!(
            limited
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        let cases = [
            (
                GatewayError::NoTarget {
                    upstream: "u".into(),
                },
                "14",
            ),
            (
                GatewayError::UpstreamTimeout {
                    upstream: "u".into(),
                },
                "4",
            ),
            (
                GatewayError::UpstreamTls {
                    upstream: "u".into(),
                },
                "14",
            ),
            (
                GatewayError::NoRoute {
                    method: "POST".into(),
                    path: "/x".into(),
                },
                "12",
            ),
            (GatewayError::Forbidden("no"), "7"),
            (
                GatewayError::Plugin {
                    plugin: "p".into(),
                    kind: "trap",
                },
                "13",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.into_grpc_response().headers()["grpc-status"], code);
        }
        assert_eq!(grpc_percent_encode("100% ü\n"), "100%25 %C3%BC%0A");
    }
}
