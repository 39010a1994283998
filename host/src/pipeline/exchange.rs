//! The per-request context every phase takes by `&mut`, and the accounting that ends
//! exactly once however the request ends.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use tokio::time::Instant;

use crate::trace::{RequestEnd, RequestTrace, request_id};

use crate::body::OnBodyEnd;
use crate::forward::UpstreamRecord;
use crate::gateway::{Gateway, Route, Snapshot};
use crate::metrics::RouteMetrics;
use crate::peer::Peer;
use crate::policy::rate_limit::Decision;

/// Status recorded for a request whose client went away before it was answered
/// (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's journey through the phases: what they decided and learned.
pub struct Exchange {
    pub gateway: Arc<Gateway>,
    /// The config in force when the request arrived, for its whole life.
    pub snapshot: Arc<Snapshot>,
    pub peer: Peer,
    /// A gRPC call: the gateway's own refusals take the gRPC form.
    pub grpc: bool,
    /// Phase 3: the normalised path routes are matched against.
    pub path: String,
    /// Phase 4: the matched route and its path parameters.
    pub route: Option<Arc<Route>>,
    pub params: Vec<(Arc<str>, String)>,
    /// Phase 4: the form body read to find a `form:` user id, if one was needed.
    pub form: Option<Bytes>,
    /// Phase 5: the request's Origin, kept on CORS routes for the response headers.
    pub origin: Option<HeaderValue>,
    /// Phase 7: the rate-limit decision whose RateLimit-* headers the answer carries.
    pub rate_limit: Option<Decision>,
    /// What the access log and metrics record; written once when the response body
    /// ends, or when the request is abandoned.
    pub log: Accounting,
}

impl Exchange {
    /// Starts a request's accounting (in-flight gauge up, clock started), its request
    /// id and its trace context (both put in the request's headers, so plugins and the
    /// upstream see them).
    pub fn begin<B>(gateway: Arc<Gateway>, req: &mut Request<B>, peer: Peer) -> Self {
        let snapshot = gateway.snapshot();
        let log = Accounting::start(gateway.clone(), &snapshot, req, peer.ip);
        Self {
            gateway,
            snapshot,
            peer,
            grpc: crate::error::is_grpc(req.headers()),
            path: String::new(),
            route: None,
            params: Vec::new(),
            form: None,
            origin: None,
            rate_limit: None,
            log,
        }
    }

    /// The matched route (phase 4 onwards).
    pub fn route(&self) -> Option<&Route> {
        self.route.as_deref()
    }
}

/// The access-log line and request metrics of one request, written exactly once: when
/// its response body ends (or is dropped), or, if the request never got that far
/// (the client went away mid-request, the task panicked), when this is dropped.
pub struct Accounting(Option<Box<AccessRecord>>);

/// What the access log and metrics record about a request.
pub struct AccessRecord {
    gateway: Arc<Gateway>,
    access_log: bool,
    start: Instant,
    method: Method,
    /// Kept only when access logging is on.
    path: Option<String>,
    client_ip: IpAddr,
    pub status: u16,
    /// The matched route's metrics (or the admin pseudo-route's); `None` = unrouted.
    pub route: Option<Arc<RouteMetrics>>,
    pub upstream: UpstreamRecord,
    pub error: Option<&'static str>,
    /// The request id (kept or generated), when request ids are on.
    pub request_id: Option<HeaderValue>,
    /// Trace ids, and the recorded spans of a sampled request.
    pub trace: RequestTrace,
}

impl Accounting {
    fn start<B>(
        gateway: Arc<Gateway>,
        snapshot: &Snapshot,
        req: &mut Request<B>,
        client_ip: IpAddr,
    ) -> Self {
        gateway.metrics.in_flight.inc();
        let access_log = snapshot.config().server.access_log;
        let telemetry = &snapshot.plan.telemetry;
        let trace = RequestTrace::begin(telemetry, req.headers_mut(), telemetry.export.is_some());
        let request_id = telemetry.request_id_header.as_ref().map(|name| {
            let id = match req.headers().get(name) {
                Some(given) if request_id::is_valid(given) => given.clone(),
                _ => request_id::generate(),
            };
            // Also replaces an invalid id, and extra copies of a valid one.
            req.headers_mut().insert(name.clone(), id.clone());
            id
        });
        let keep_path = access_log || trace.recording.is_some();
        Self(Some(Box::new(AccessRecord {
            gateway,
            access_log,
            start: Instant::now(),
            method: req.method().clone(),
            path: keep_path.then(|| req.uri().path().to_owned()),
            client_ip,
            status: 0,
            route: None,
            upstream: UpstreamRecord::default(),
            error: None,
            request_id,
            trace,
        })))
    }

    /// The record, while the request is running.
    pub fn record(&mut self) -> &mut AccessRecord {
        match &mut self.0 {
            Some(record) => record,
            // Only `into_hook` and `drop` take the record, and both end the accounting.
            None => unreachable!("accounting used after it ended"),
        }
    }

    /// Hands the record to the response body, which writes it when it ends.
    pub fn into_hook(mut self) -> Option<Box<dyn OnBodyEnd>> {
        self.0.take().map(|r| r as Box<dyn OnBodyEnd>)
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if let Some(mut record) = self.0.take() {
            if record.status == 0 {
                record.status = CLIENT_CLOSED;
                record.error.get_or_insert("client_closed");
            }
            record.on_end(0, false);
        }
    }
}

impl OnBodyEnd for AccessRecord {
    fn on_end(mut self: Box<Self>, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        let route = self
            .route
            .clone()
            .unwrap_or_else(|| self.gateway.unrouted_metrics.clone());
        route.record(self.status, elapsed.as_secs_f64());
        self.gateway.metrics.in_flight.dec();
        if self.access_log {
            tracing::info!(
                target: "access",
                method = %self.method,
                path = self.path.as_deref().unwrap_or("-"),
                client = %self.client_ip,
                route = &*route.label,
                upstream = self.upstream.upstream.as_deref().unwrap_or("-"),
                upstream_target = self.upstream.target.as_deref().unwrap_or("-"),
                status = self.status,
                bytes,
                complete,
                error = self.error.unwrap_or("-"),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                trace_id = %TraceIdText(self.trace.context.map(|c| c.trace_id)),
            );
        }
        let finished = self.trace.finish(RequestEnd {
            method: &self.method,
            path: self.path.as_deref().unwrap_or("-"),
            route: &route.label,
            upstream: self.upstream.upstream.as_ref(),
            target: self.upstream.target.as_ref(),
            status: self.status,
            error: self.error,
            retries: self.upstream.attempts.saturating_sub(1),
            request_id: self.request_id.as_ref(),
            client: self.client_ip,
        });
        if let Some(finished) = finished {
            self.gateway.tracer.submit(finished);
        }
    }
}

/// A trace id as the access log writes it: 32 hex digits, or `-` (written straight
/// into the log line, no string made).
struct TraceIdText(Option<u128>);

impl std::fmt::Display for TraceIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id:032x}"),
            None => f.write_str("-"),
        }
    }
}
