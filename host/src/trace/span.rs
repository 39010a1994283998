//! One request's trace: its ids (always: they are propagated even when nothing is
//! recorded) and, when the request is sampled and spans are exported, the recorded
//! request span and its children (plugin chain, upstream attempts).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::context::{self, SpanContext};
use crate::plan::TelemetryPlan;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's trace state, carried by its accounting until the response ends.
#[derive(Debug, Default)]
pub struct RequestTrace {
    /// The gateway's request span; `None` = trace context is off.
    pub context: Option<SpanContext>,
    /// The client's span, when the request continued a trace.
    pub parent: Option<u64>,
    /// Recorded spans: only for sampled requests while spans are exported.
    pub recording: Option<Box<Recording>>,
}

/// What a sampled request records beyond its ids.
#[derive(Debug)]
pub struct Recording {
    pub wall_start: SystemTime,
    started: Instant,
    pub tracestate: Option<String>,
    pub children: Vec<ChildSpan>,
}

/// A child of the request span, timed from the request's start.
#[derive(Debug, Clone)]
pub struct ChildSpan {
    pub span_id: u64,
    pub start: Duration,
    pub end: Duration,
    pub kind: ChildKind,
}

/// What a child span was.
#[derive(Debug, Clone)]
pub enum ChildKind {
    /// A plugin chain's hooks (`on_request` or `on_response`).
    Plugins { hook: &'static str, plugins: usize },
    /// One exchange with one upstream target.
    Attempt {
        upstream: Arc<str>,
        target: Arc<str>,
        /// 1 for the first try.
        attempt: u32,
        status: Option<u16>,
        error: Option<&'static str>,
    },
}

/// A child span being timed (copyable: it is only an id and a start).
#[derive(Debug, Clone, Copy)]
pub struct ChildStart {
    span_id: u64,
    start: Duration,
}

impl RequestTrace {
    /// Continues the client's trace (a valid `traceparent`) or starts one, and puts
    /// the gateway's span in the request's `traceparent`, so plugins and the upstream
    /// see the gateway as the parent. Records only when `exporting` and sampled.
    pub fn begin(plan: &TelemetryPlan, headers: &mut HeaderMap, exporting: bool) -> Self {
        if !plan.trace_context {
            return Self::default();
        }
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let (trace_id, sampled) = match parent {
            Some(parent) => (parent.trace_id, parent.sampled),
            None => {
                // tracestate means nothing without a valid traceparent (W3C).
                headers.remove(&TRACESTATE);
                let id = new_trace_id();
                (id, context::ratio_sampled(id, plan.sample_bound))
            }
        };
        let context = SpanContext {
            trace_id,
            span_id: new_span_id(),
            sampled,
        };
        headers.insert(TRACEPARENT.clone(), header_value(&context));
        let recording = (exporting && sampled).then(|| {
            Box::new(Recording {
                wall_start: SystemTime::now(),
                started: Instant::now(),
                tracestate: headers
                    .get(&TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                children: Vec::new(),
            })
        });
        Self {
            context: Some(context),
            parent: parent.map(|p| p.span_id),
            recording,
        }
    }

    /// Starts timing a child span (`None` when nothing is recorded).
    pub fn start_child(&self) -> Option<ChildStart> {
        let recording = self.recording.as_ref()?;
        Some(ChildStart {
            span_id: new_span_id(),
            start: recording.started.elapsed(),
        })
    }

    /// Ends a child span started by `start_child`; `kind` is only built when the span
    /// is recorded.
    pub fn end_child(&mut self, start: Option<ChildStart>, kind: impl FnOnce() -> ChildKind) {
        if let (Some(start), Some(recording)) = (start, self.recording.as_mut()) {
            recording.children.push(ChildSpan {
                span_id: start.span_id,
                start: start.start,
                end: recording.started.elapsed(),
                kind: kind(),
            });
        }
    }

    /// The `traceparent` an upstream attempt carries: the attempt's span as the
    /// parent when it is recorded. `None` = leave the request's header as it is.
    pub fn upstream_traceparent(&self, attempt: Option<ChildStart>) -> Option<HeaderValue> {
        let context = self.context?;
        let attempt = attempt?;
        Some(header_value(&SpanContext {
            span_id: attempt.span_id,
            ..context
        }))
    }

    /// The request span's length so far.
    pub fn elapsed(&self) -> Option<Duration> {
        self.recording.as_ref().map(|r| r.started.elapsed())
    }
}

/// What the request span ends with, from the accounting.
#[derive(Debug)]
pub struct RequestEnd<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub route: &'a Arc<str>,
    pub upstream: Option<&'a Arc<str>>,
    pub target: Option<&'a Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub retries: u32,
    pub request_id: Option<&'a HeaderValue>,
    pub client: IpAddr,
}

/// A finished, sampled request: what the exporter turns into spans.
#[derive(Debug)]
pub struct FinishedTrace {
    pub context: SpanContext,
    pub parent: Option<u64>,
    pub recording: Box<Recording>,
    pub duration: Duration,
    pub method: http::Method,
    pub path: String,
    pub route: Arc<str>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub retries: u32,
    pub request_id: Option<String>,
    pub client: IpAddr,
}

impl FinishedTrace {
    /// Spans this request exports: its own and its children.
    pub fn span_count(&self) -> usize {
        1 + self.recording.children.len()
    }
}

impl RequestTrace {
    /// Ends the request span; `Some` when it was recorded (and is to be exported).
    pub fn finish(&mut self, end: RequestEnd<'_>) -> Option<Box<FinishedTrace>> {
        let recording = self.recording.take()?;
        let context = self.context?;
        Some(Box::new(FinishedTrace {
            context,
            parent: self.parent,
            duration: recording.started.elapsed(),
            recording,
            method: end.method.clone(),
            path: end.path.to_owned(),
            route: end.route.clone(),
            upstream: end.upstream.cloned(),
            target: end.target.cloned(),
            status: end.status,
            error: end.error,
            retries: end.retries,
            request_id: end
                .request_id
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            client: end.client,
        }))
    }
}

fn header_value(context: &SpanContext) -> HeaderValue {
    let text = context::format_traceparent(context);
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A random, non-zero trace id.
fn new_trace_id() -> u128 {
    rand::random::<u128>().max(1)
}

/// A random, non-zero span id.
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sampling: f64) -> TelemetryPlan {
        TelemetryPlan {
            request_id_header: None,
            trace_context: true,
            sample_bound: crate::plan::sample_bound(sampling),
            export: None,
        }
    }

    #[test]
    fn continues_a_clients_trace_with_a_new_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let trace = RequestTrace::begin(&plan(0.0), &mut headers, true);
        let context = trace.context.unwrap();
        assert_eq!(context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.parent, Some(0x00f067aa0ba902b7));
        assert!(context.sampled, "the parent's decision wins over the ratio");
        let sent = headers.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!sent.contains("00f067aa0ba902b7"));
        assert_eq!(headers.get(&TRACESTATE).unwrap(), "vendor=1");
        assert_eq!(
            trace.recording.unwrap().tracestate.as_deref(),
            Some("vendor=1")
        );
    }

    #[test]
    fn starts_a_trace_and_drops_a_lone_tracestate() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let trace = RequestTrace::begin(&plan(0.0), &mut headers, true);
        assert!(!trace.context.unwrap().sampled);
        assert!(trace.recording.is_none(), "not sampled: nothing recorded");
        assert!(headers.get(&TRACESTATE).is_none());
        assert!(
            headers
                .get(&TRACEPARENT)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn records_children_only_when_sampled_and_exporting() {
        let mut headers = HeaderMap::new();
        let mut trace = RequestTrace::begin(&plan(1.0), &mut headers, false);
        assert!(trace.start_child().is_none());
        assert!(trace.upstream_traceparent(None).is_none());
        let mut trace2 = RequestTrace::begin(&plan(1.0), &mut HeaderMap::new(), true);
        let child = trace2.start_child();
        let header = trace2.upstream_traceparent(child).unwrap();
        trace2.end_child(child, || ChildKind::Plugins {
            hook: "on_request",
            plugins: 1,
        });
        let recording = trace2.recording.as_ref().unwrap();
        assert_eq!(recording.children.len(), 1);
        let id = format!("{:016x}", recording.children[0].span_id);
        assert!(header.to_str().unwrap().contains(&id));
        trace.end_child(None, || unreachable!("not recorded: not built"));
    }

    #[test]
    fn off_means_untouched() {
        let mut headers = HeaderMap::new();
        let off = TelemetryPlan {
            trace_context: false,
            ..plan(1.0)
        };
        let trace = RequestTrace::begin(&off, &mut headers, true);
        assert!(trace.context.is_none() && headers.is_empty());
    }
}
