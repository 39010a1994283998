//! Span export: finished, sampled requests go into a bounded queue (full = dropped and
//! counted, never waited for); one task batches them into OpenTelemetry `SpanData`
//! and sends them with the OTLP HTTP/protobuf exporter.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use opentelemetry::trace::{
    SpanContext as OtelContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::span::{ChildKind, FinishedTrace};
use crate::metrics::Metrics;
use crate::plan::ExportSettings;

/// Where finished traces go: the queue of the exporter in force, if any.
pub struct Tracer {
    queue: ArcSwapOption<ExportQueue>,
    /// Spans dropped, by reason (`queue_full`, `export_failed`, `no_exporter`).
    dropped: IntCounterVec,
    exported: IntCounter,
    /// The export task of the queue in force (awaited on shutdown).
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

struct ExportQueue {
    sender: mpsc::Sender<Box<FinishedTrace>>,
    settings: ExportSettings,
}

/// Why an exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct ExportSetupError(String);

impl Tracer {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            queue: ArcSwapOption::empty(),
            dropped: metrics.trace_spans_dropped.clone(),
            exported: metrics.trace_spans_exported.clone(),
            task: std::sync::Mutex::new(None),
        }
    }

    /// Puts `settings` in force: a changed exporter gets a new queue and task (the old
    /// task sends what it holds and ends when the last request using it is done);
    /// `None` stops exporting. Must run inside the tokio runtime.
    pub fn configure(
        &self,
        settings: Option<&ExportSettings>,
        node: &str,
    ) -> Result<(), ExportSetupError> {
        let current = self.queue.load();
        if current.as_ref().map(|q| &q.settings) == settings {
            return Ok(());
        }
        let Some(settings) = settings else {
            self.queue.store(None);
            return Ok(());
        };
        let exporter = build_exporter(settings, node)?;
        let (sender, receiver) = mpsc::channel(settings.queue_size);
        let task = tokio::spawn(run(
            receiver,
            exporter,
            settings.clone(),
            self.dropped.clone(),
            self.exported.clone(),
        ));
        self.queue.store(Some(Arc::new(ExportQueue {
            sender,
            settings: settings.clone(),
        })));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        tracing::info!(endpoint = %settings.endpoint, "exporting spans over OTLP");
        Ok(())
    }

    /// Hands a finished trace to the exporter without waiting: a full queue drops it.
    pub fn submit(&self, trace: Box<FinishedTrace>) {
        let spans = trace.span_count() as u64;
        let guard = self.queue.load();
        let Some(queue) = guard.as_ref() else {
            self.dropped
                .with_label_values(&["no_exporter"])
                .inc_by(spans);
            return;
        };
        if queue.sender.try_send(trace).is_err() {
            self.dropped
                .with_label_values(&["queue_full"])
                .inc_by(spans);
        }
    }

    /// Stops exporting and gives the export task up to `grace` to send what it holds.
    pub async fn shutdown(&self, grace: Duration) {
        self.queue.store(None);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

fn build_exporter(
    settings: &ExportSettings,
    node: &str,
) -> Result<opentelemetry_otlp::SpanExporter, ExportSetupError> {
    let tls = crate::tls::client::compile(None).map_err(|problems| {
        ExportSetupError(
            problems
                .into_iter()
                .map(|p| p.message)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(connector, settings.timeout, None);
    let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.timeout)
        .with_headers(headers)
        // A failed batch is dropped and counted: retrying would hold the queue up.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| ExportSetupError(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", node.to_owned()),
            ])
            .build(),
    );
    Ok(exporter)
}

/// The export task: a batch is sent when it holds `batch_size` spans or its first
/// span has waited `interval`; ends (after sending what it holds) when the queue's
/// last sender is gone.
async fn run(
    mut receiver: mpsc::Receiver<Box<FinishedTrace>>,
    exporter: opentelemetry_otlp::SpanExporter,
    settings: ExportSettings,
    dropped: IntCounterVec,
    exported: IntCounter,
) {
    let scope = InstrumentationScope::builder("fluxgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut failing = false;
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        let deadline = Instant::now() + settings.interval;
        let mut batch = to_spans(&first, &scope);
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(trace)) => batch.extend(to_spans(&trace, &scope)),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        match tokio::time::timeout(settings.timeout, exporter.export(batch)).await {
            Ok(Ok(())) => {
                exported.inc_by(count);
                if failing {
                    tracing::info!(endpoint = %settings.endpoint, "span export works again");
                    failing = false;
                }
            }
            outcome => {
                dropped.with_label_values(&["export_failed"]).inc_by(count);
                // Logged once per failing stretch, not per batch.
                if !failing {
                    let reason = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", settings.timeout),
                    };
                    tracing::warn!(endpoint = %settings.endpoint, %reason, "span export failed; spans are dropped until it works");
                    failing = true;
                }
            }
        }
    }
}

/// A finished request as OpenTelemetry spans: the request span (kind server) and its
/// children (plugin chains: internal; upstream attempts: client).
fn to_spans(trace: &FinishedTrace, scope: &InstrumentationScope) -> Vec<SpanData> {
    let recording = &trace.recording;
    let trace_id = TraceId::from(trace.context.trace_id);
    let state = recording
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = |span_id: u64| {
        OtelContext::new(
            trace_id,
            SpanId::from(span_id),
            TraceFlags::SAMPLED,
            false,
            state.clone(),
        )
    };
    let at = |offset: Duration| recording.wall_start + offset;
    let request_span = trace.context.span_id;
    let mut attributes = vec![
        KeyValue::new("http.request.method", trace.method.as_str().to_owned()),
        KeyValue::new("url.path", trace.path.clone()),
        KeyValue::new("http.route", trace.route.to_string()),
        KeyValue::new("http.response.status_code", i64::from(trace.status)),
        KeyValue::new("client.address", trace.client.to_string()),
        KeyValue::new("fluxgate.retry_count", i64::from(trace.retries)),
    ];
    if let Some(upstream) = &trace.upstream {
        attributes.push(KeyValue::new("fluxgate.upstream", upstream.to_string()));
    }
    if let Some(target) = &trace.target {
        attributes.push(KeyValue::new("fluxgate.target", target.to_string()));
    }
    if let Some(id) = &trace.request_id {
        attributes.push(KeyValue::new("fluxgate.request_id", id.clone()));
    }
    if let Some(error) = trace.error {
        attributes.push(KeyValue::new("error.type", error));
    }
    // A server span is an error for 5xx only (OpenTelemetry's HTTP conventions).
    let status = if trace.status >= 500 {
        Status::error(trace.error.unwrap_or("server error"))
    } else {
        Status::Unset
    };
    let mut spans = Vec::with_capacity(trace.span_count());
    spans.push(SpanData {
        span_context: context(request_span),
        parent_span_id: trace.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: trace.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(format!("{} {}", trace.method, trace.route)),
        start_time: recording.wall_start,
        end_time: at(trace.duration),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    });
    for child in &recording.children {
        let (name, kind, attributes, status) = match &child.kind {
            ChildKind::Plugins { hook, plugins } => (
                Cow::Owned(format!("plugins {hook}")),
                SpanKind::Internal,
                vec![
                    KeyValue::new("fluxgate.plugin.hook", *hook),
                    KeyValue::new("fluxgate.plugin.count", *plugins as i64),
                    KeyValue::new("http.route", trace.route.to_string()),
                ],
                Status::Unset,
            ),
            ChildKind::Attempt {
                upstream,
                target,
                attempt,
                status,
                error,
            } => {
                let mut attributes = vec![
                    KeyValue::new("http.request.method", trace.method.as_str().to_owned()),
                    KeyValue::new("http.route", trace.route.to_string()),
                    KeyValue::new("fluxgate.upstream", upstream.to_string()),
                    KeyValue::new("fluxgate.target", target.to_string()),
                    KeyValue::new("fluxgate.attempt", i64::from(*attempt)),
                    KeyValue::new("fluxgate.retry_count", i64::from(attempt.saturating_sub(1))),
                ];
                if let Some(status) = status {
                    attributes.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(*status),
                    ));
                }
                if let Some(error) = error {
                    attributes.push(KeyValue::new("error.type", *error));
                }
                let failed = error.is_some() || status.is_some_and(|s| s >= 500);
                (
                    Cow::Owned(format!("upstream {upstream}")),
                    SpanKind::Client,
                    attributes,
                    if failed {
                        Status::error(error.unwrap_or("upstream error"))
                    } else {
                        Status::Unset
                    },
                )
            }
        };
        spans.push(SpanData {
            span_context: context(child.span_id),
            parent_span_id: SpanId::from(request_span),
            parent_span_is_remote: false,
            span_kind: kind,
            name,
            start_time: at(child.start),
            end_time: at(child.end),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        });
    }
    spans
}
