//! `[telemetry]`: request ids, W3C trace context and the OTLP span export.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[telemetry]`. Everything is on by default except the export (no endpoint).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP (protobuf) collector: `http://host:4318` (spans go to
    /// `/v1/traces` under it). Absent = spans are not recorded or exported; trace
    /// context is still continued and propagated.
    pub otlp_endpoint: Option<String>,
    /// Extra headers on every export request (an API key, a tenant).
    pub otlp_headers: BTreeMap<String, String>,
    /// Share of the traces started here that are sampled (0.0..=1.0); a request that
    /// comes with a `traceparent` follows its sampled flag.
    pub sampling_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Finished requests (each a request span with its children) waiting for export;
    /// more are dropped and counted, never waited for.
    pub export_queue_size: usize,
    /// Most spans per export request.
    pub export_batch_size: usize,
    /// Longest a finished span waits before its batch is sent.
    pub export_interval_ms: u64,
    /// Time allowed for one export request.
    pub export_timeout_ms: u64,
    /// Continue or start W3C trace context (`traceparent`, `tracestate`) and send it
    /// upstream.
    pub trace_context: bool,
    /// Keep or generate a request id, send it upstream and return it.
    pub request_id: bool,
    /// The request id header.
    pub request_id_header: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_headers: BTreeMap::new(),
            sampling_ratio: 1.0,
            service_name: "fluxgate".to_owned(),
            export_queue_size: 2048,
            export_batch_size: 512,
            export_interval_ms: 1000,
            export_timeout_ms: 5000,
            trace_context: true,
            request_id: true,
            request_id_header: "x-request-id".to_owned(),
        }
    }
}
