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
    #[error("upstream response is larger than {limit} bytes, the most plugins may buffer")]
    ResponseTooLarge { limit: usize },
    #[error("plugin \"{plugin}\" failed ({kind})")]
    Plugin { plugin: String, kind: &'static str },
    #[error("plugin \"{plugin}\" failed (not_loaded)")]
    PluginNotLoaded { plugin: String },
    #[error("request head not received in time")]
    RequestTimeout,
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
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::PluginNotLoaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
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
            GatewayError::ResponseTooLarge { .. } => "response_too_large",
            GatewayError::Plugin { .. } | GatewayError::PluginNotLoaded { .. } => "plugin_failed",
            GatewayError::RequestTimeout => "request_timeout",
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
}
