//! `[telemetry]` compiled: the request id header, the sampling bound and the export
//! settings, each checked here.

use std::time::Duration;

use http::HeaderName;

use crate::config::{Problem, TelemetryConfig};

/// Longest request id kept from a client (longer ones are replaced).
pub const MAX_REQUEST_ID_BYTES: usize = 200;

/// `[telemetry]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryPlan {
    /// `None` = request ids are off.
    pub request_id_header: Option<HeaderName>,
    pub trace_context: bool,
    /// A new trace is sampled when its id's random part is below this (the
    /// OpenTelemetry `TraceIdRatioBased` rule).
    pub sample_bound: u64,
    /// `None` = spans are not recorded.
    pub export: Option<ExportSettings>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The full traces URL (`…/v1/traces`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub queue_size: usize,
    pub batch_size: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The sampling bound of `ratio`, as OpenTelemetry's `TraceIdRatioBased` computes it.
pub fn sample_bound(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

/// The traces URL for a configured endpoint: the OTLP convention appends
/// `/v1/traces` to a base URL; a URL already ending in it is kept.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

pub(super) fn compile_telemetry(t: &TelemetryConfig, out: &mut Vec<Problem>) -> TelemetryPlan {
    let request_id_header = match HeaderName::from_bytes(t.request_id_header.as_bytes()) {
        Ok(name) => t.request_id.then_some(name),
        Err(_) => {
            out.push(Problem::new(
                "telemetry.request_id_header",
                format!("\"{}\" is not a header name", t.request_id_header),
            ));
            None
        }
    };
    if !(0.0..=1.0).contains(&t.sampling_ratio) {
        out.push(Problem::new(
            "telemetry.sampling_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    if t.service_name.is_empty() || t.service_name.len() > 128 {
        out.push(Problem::new(
            "telemetry.service_name",
            "must be 1-128 characters",
        ));
    }
    for (key, value, max) in [
        ("export_queue_size", t.export_queue_size as u64, 1_000_000),
        ("export_batch_size", t.export_batch_size as u64, 100_000),
        ("export_interval_ms", t.export_interval_ms, 3_600_000),
        ("export_timeout_ms", t.export_timeout_ms, 600_000),
    ] {
        if value == 0 || value > max {
            out.push(Problem::new(
                format!("telemetry.{key}"),
                format!("must be between 1 and {max}"),
            ));
        }
    }
    for (name, value) in &t.otlp_headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            out.push(Problem::new(
                format!("telemetry.otlp_headers.{name}"),
                "is not a valid header name and value",
            ));
        }
    }
    let export = t.otlp_endpoint.as_ref().and_then(|endpoint| {
        let uri = endpoint.parse::<http::Uri>().ok();
        let ok = uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if !ok {
            out.push(Problem::new(
                "telemetry.otlp_endpoint",
                format!("\"{endpoint}\" is not an http:// or https:// URL"),
            ));
            return None;
        }
        Some(ExportSettings {
            endpoint: traces_url(endpoint),
            headers: t
                .otlp_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            service_name: t.service_name.clone(),
            queue_size: t.export_queue_size,
            batch_size: t.export_batch_size,
            interval: Duration::from_millis(t.export_interval_ms),
            timeout: Duration::from_millis(t.export_timeout_ms),
        })
    });
    TelemetryPlan {
        request_id_header,
        trace_context: t.trace_context,
        sample_bound: sample_bound(t.sampling_ratio),
        export,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_problems as problems;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(traces_url("https://c/otlp/"), "https://c/otlp/v1/traces");
    }

    #[test]
    fn the_bound_matches_the_ratio() {
        assert_eq!(sample_bound(0.0), 0);
        assert_eq!(sample_bound(1.0), 1u64 << 63);
        assert_eq!(sample_bound(0.5), 1u64 << 62);
    }

    #[test]
    fn bad_values_are_named() {
        let text = "[telemetry]\notlp_endpoint = \"ftp://x\"\nsampling_ratio = 1.5\nrequest_id_header = \"bad header\"\nexport_queue_size = 0\n";
        let found = problems(text);
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.sampling_ratio",
            "telemetry.request_id_header",
            "telemetry.export_queue_size",
        ] {
            assert!(found.iter().any(|p| p.contains(key)), "{key}: {found:?}");
        }
        assert!(problems("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n").is_empty());
    }
}
