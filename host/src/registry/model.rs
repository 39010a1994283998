//! What a service registers: the JSON body of `POST /api/v1/services/register`, checked
//! field by field so a bad request gets a 400 naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest accepted TTL and check interval, and other bounds on client input.
const MAX_TTL_S: u64 = 86_400;
const MAX_METADATA: usize = 64;
const MAX_TEXT: usize = 256;

/// One service instance as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Unique instance id (re-registering the same id updates it).
    pub id: String,
    /// Service name: served at `/{service}/*`.
    pub service: String,
    /// Host name or IP of the instance.
    pub address: String,
    pub port: u16,
    /// Free-form; `weight` feeds weighted balancing, `version`/`region` are shown and
    /// can be filtered on in `GET /api/v1/services`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Active health check of this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// The instance must re-register (or heartbeat) within this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// `check = { path, interval_ms }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_interval() -> u64 {
    2_000
}

/// A field that failed its check, for the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Service names become the first path segment: keep them to URL-safe characters.
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "api"
        && name != "metrics"
}

impl Registration {
    /// Parses and checks a JSON body; the error names the first bad field.
    pub fn from_json(body: &[u8]) -> Result<Self, FieldError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let reg: Registration = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            bad(
                if path == "." || path == "?" {
                    "(body)"
                } else {
                    &path
                },
                message,
            )
        })?;
        reg.check()?;
        Ok(reg)
    }

    /// The checks serde cannot make.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.id.is_empty() || self.id.len() > MAX_TEXT || self.id.chars().any(char::is_control) {
            return Err(bad("id", "must be 1-256 printable characters"));
        }
        if !is_service_name(&self.service) {
            return Err(bad(
                "service",
                "must be 1-128 letters, digits, '-', '_' or '.' (and not \"api\" or \"metrics\")",
            ));
        }
        let host_ok = !self.address.is_empty()
            && self.address.len() <= 253
            && format!("http://{}:{}", self.host_for_url(), self.port)
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some() && u.path() == "/");
        if !host_ok || self.address.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad("address", "must be a host name or IP address"));
        }
        if self.port == 0 {
            return Err(bad("port", "must be between 1 and 65535"));
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(bad("metadata", "at most 64 entries"));
        }
        for (key, value) in &self.metadata {
            if key.len() > MAX_TEXT || value.len() > MAX_TEXT {
                return Err(bad(&format!("metadata.{key}"), "at most 256 bytes"));
            }
        }
        if let Some(weight) = self.metadata.get("weight")
            && !weight
                .parse::<u32>()
                .is_ok_and(|w| (1..=10_000).contains(&w))
        {
            return Err(bad(
                "metadata.weight",
                "must be a whole number from 1 to 10000",
            ));
        }
        if let Some(check) = &self.check {
            if !check.path.starts_with('/')
                || check.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(bad("check.path", "must be a path starting with '/'"));
            }
            if !(100..=3_600_000).contains(&check.interval_ms) {
                return Err(bad("check.interval_ms", "must be between 100 and 3600000"));
            }
        }
        if let Some(ttl) = self.ttl_s
            && !(1..=MAX_TTL_S).contains(&ttl)
        {
            return Err(bad("ttl_s", "must be between 1 and 86400"));
        }
        Ok(())
    }

    /// `address` as it goes into a URL (IPv6 in brackets).
    pub fn host_for_url(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        }
    }

    /// The target URL of this instance.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host_for_url(), self.port)
    }

    /// Balancing weight from `metadata.weight` (default 1).
    pub fn weight(&self) -> u32 {
        self.metadata
            .get("weight")
            .and_then(|w| w.parse().ok())
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        Registration::from_json(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_seed_style_registration_is_accepted() {
        let reg = Registration::from_json(
            br#"{"id":"user-service-v2","service":"user-service","address":"10.0.1.100","port":8080,
                "metadata":{"version":"2.0","weight":"2","region":"us-west"}}"#,
        )
        .unwrap();
        assert_eq!(reg.weight(), 2);
        assert_eq!(reg.url(), "http://10.0.1.100:8080");
        let v6 = Registration::from_json(br#"{"id":"x","service":"s","address":"::1","port":1}"#)
            .unwrap();
        assert_eq!(v6.url(), "http://[::1]:1");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(err(r#"{"service":"s","address":"h","port":1}"#), "(body)");
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":"x"}"#),
            "port"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":70000}"#),
            "port"
        );
        assert_eq!(
            err(r#"{"id":"","service":"s","address":"h","port":1}"#),
            "id"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"a/b","address":"h","port":1}"#),
            "service"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"api","address":"h","port":1}"#),
            "service"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h/x","port":1}"#),
            "address"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":0}"#),
            "port"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":1,"metadata":{"weight":"0"}}"#),
            "metadata.weight"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":1,"check":{"path":"x"}}"#),
            "check.path"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":1,"ttl_s":0}"#),
            "ttl_s"
        );
        assert_eq!(
            err(r#"{"id":"a","service":"s","address":"h","port":1,"extra":1}"#),
            "extra",
            "an unknown field is named"
        );
        assert_eq!(err("not json"), "(body)");
    }
}
