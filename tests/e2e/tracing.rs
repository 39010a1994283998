//! Request ids and W3C trace context end to end (client → gateway → upstream), and the
//! OTLP/HTTP export checked by a real receiver on loopback that decodes the protobuf
//! with the official opentelemetry-proto definitions (no Collector installs from the
//! package registries reachable here).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::upstream::Upstream;
use crate::support::wasm::plugin;
use crate::support::{PATIENCE, TestGateway, client, get};

/// A span as the receiver decoded it, with its service name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: decodes each `POST /v1/traces` body and
/// passes the spans on; answers after `delay` (to make a slow collector).
struct Receiver {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Received>,
    posts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = mpsc::unbounded_channel();
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, counter) = (tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, counter) = (tx.clone(), counter.clone());
                        async move { Ok::<_, Infallible>(receive(req, tx, counter, delay).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            spans,
            posts,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received until `want` says the set is complete (bounded by PATIENCE).
    async fn collect(&mut self, want: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !want(&got) {
            match tokio::time::timeout_at(deadline, self.spans.recv()).await {
                Ok(Some(span)) => got.push(span),
                _ => panic!("spans missing after {PATIENCE:?}; got {got:#?}"),
            }
        }
        got
    }
}

async fn receive(
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Received>,
    posts: Arc<AtomicUsize>,
    delay: Duration,
) -> Response<Full<Bytes>> {
    assert_eq!(req.uri().path(), "/v1/traces");
    assert_eq!(
        req.headers()["content-type"],
        "application/x-protobuf",
        "OTLP/HTTP with protobuf"
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let decoded = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    posts.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    for resource_spans in decoded.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                AnyValue::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let _ = tx.send(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(
        ExportTraceServiceResponse::default().encode_to_vec(),
    )));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn upstream_header(reply: &crate::support::Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name][0].as_str().map(str::to_owned)
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn trace_context_and_request_ids_flow_from_client_to_upstream_and_spans_reach_the_collector()
{
    let up = Upstream::start("u").await;
    let mut receiver = Receiver::start(Duration::ZERO).await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"edge-gw\"\nexport_interval_ms = 50\n\
         [plugins]\ntimeout_ms = 1000\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\nretry = {{ attempts = 3, base_ms = 1, on_status = [503] }}\n\
         [[routes]]\nname = \"api\"\npath = \"/api/*\"\nupstream = \"u\"\nstrip_prefix = \"/api\"\n\
         plugins = [{{ name = \"header-rewrite\", config = {{ request = {{ set = {{ x-env = \"prod\" }} }} }} }}]\n\
         [[routes]]\nname = \"seen\"\npath = \"/seen/*\"\nupstream = \"u\"\n\
         plugins = [{{ name = \"header-rewrite\", config = {{ request = {{ rename = {{ x-request-id = \"x-plugin-saw\" }} }} }} }}]\n",
        receiver.endpoint(),
        up.addr
    );
    let wasm = plugin("header_rewrite");
    let gw = TestGateway::start_with_plugins(&config, &[("header-rewrite", &wasm)]).await;
    let c = client();

    // /fail/1/...: the upstream's first answer is a 503, retried once.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(
        &c,
        &gw.url("/api/fail/1/x"),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
            ("x-request-id", "client-id-1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers["x-request-id"], "client-id-1",
        "kept and returned"
    );
    assert_eq!(
        upstream_header(&reply, "x-request-id").as_deref(),
        Some("client-id-1")
    );
    assert_eq!(
        upstream_header(&reply, "tracestate").as_deref(),
        Some("vendor=abc")
    );
    let sent = upstream_header(&reply, "traceparent").expect("the upstream got a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", CLIENT_TRACE, "01"),
        "same trace, sampled"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the gateway's span is the upstream's parent"
    );
    let upstream_parent = parts[2].to_owned();

    let spans = receiver
        .collect(|got| {
            got.iter()
                .filter(|r| hex(&r.span.trace_id) == CLIENT_TRACE)
                .count()
                >= 4
        })
        .await;
    let ours: Vec<&Received> = spans
        .iter()
        .filter(|r| hex(&r.span.trace_id) == CLIENT_TRACE)
        .collect();
    assert!(ours.iter().all(|r| r.service == "edge-gw"), "{ours:#?}");
    let server = ours
        .iter()
        .find(|r| r.span.kind == SpanKind::Server as i32)
        .expect("a server span for the request");
    let request_span = hex(&server.span.span_id);
    assert_eq!(
        hex(&server.span.parent_span_id),
        CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(server.span.trace_state, "vendor=abc");
    assert_eq!(server.span.name, "GET api");
    assert_eq!(attr(&server.span, "http.route").as_deref(), Some("api"));
    assert_eq!(
        attr(&server.span, "fluxgate.upstream").as_deref(),
        Some("u")
    );
    assert_eq!(
        attr(&server.span, "fluxgate.target"),
        Some(format!("http://{}", up.addr))
    );
    assert_eq!(
        attr(&server.span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&server.span, "fluxgate.retry_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(&server.span, "fluxgate.request_id").as_deref(),
        Some("client-id-1")
    );
    assert_eq!(
        attr(&server.span, "url.path").as_deref(),
        Some("/api/fail/1/x")
    );

    let mut attempts: Vec<&Span> = ours
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| attr(s, "fluxgate.attempt"));
    assert_eq!(attempts.len(), 2, "two upstream attempts: {attempts:#?}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(hex(&attempt.parent_span_id), request_span);
        assert_eq!(attr(attempt, "fluxgate.attempt"), Some((i + 1).to_string()));
        assert_eq!(attr(attempt, "fluxgate.retry_count"), Some(i.to_string()));
        assert_eq!(attr(attempt, "fluxgate.upstream").as_deref(), Some("u"));
        assert!(attempt.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(attempt.end_time_unix_nano <= server.span.end_time_unix_nano);
    }
    assert_eq!(
        attr(attempts[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        attr(attempts[1], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        hex(&attempts[1].span_id),
        upstream_parent,
        "the upstream's parent is the attempt that reached it"
    );
    let plugin_span = ours
        .iter()
        .map(|r| &r.span)
        .find(|s| s.name == "plugins on_request")
        .expect("a span for the plugin chain");
    assert_eq!(hex(&plugin_span.parent_span_id), request_span);
    assert_eq!(
        attr(plugin_span, "fluxgate.plugin.count").as_deref(),
        Some("1")
    );

    // No traceparent and an invalid request id: a new trace and a generated id.
    let reply = get(
        &c,
        &gw.url("/api/plain"),
        &[
            ("x-request-id", "has spaces, not valid"),
            ("tracestate", "lonely=1"),
        ],
    )
    .await;
    let generated = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        upstream_header(&reply, "x-request-id"),
        Some(generated.clone())
    );
    assert_eq!(
        upstream_header(&reply, "tracestate"),
        None,
        "no tracestate without a traceparent"
    );
    let sent = upstream_header(&reply, "traceparent").unwrap();
    let new_trace = sent.split('-').nth(1).unwrap().to_owned();
    assert_ne!(new_trace, CLIENT_TRACE);
    let spans = receiver
        .collect(|got| {
            got.iter().any(|r| {
                hex(&r.span.trace_id) == new_trace && r.span.kind == SpanKind::Server as i32
            })
        })
        .await;
    let root = spans
        .iter()
        .find(|r| hex(&r.span.trace_id) == new_trace && r.span.kind == SpanKind::Server as i32)
        .unwrap();
    assert!(
        root.span.parent_span_id.is_empty(),
        "a trace started here has no parent"
    );
    assert_eq!(attr(&root.span, "fluxgate.request_id"), Some(generated));

    // Plugins get the request id in the request's headers.
    let reply = get(
        &c,
        &gw.url("/seen/x"),
        &[("x-request-id", "for-the-plugin")],
    )
    .await;
    assert_eq!(
        upstream_header(&reply, "x-plugin-saw").as_deref(),
        Some("for-the-plugin")
    );
    assert_eq!(reply.headers["x-request-id"], "for-the-plugin");

    // The gateway's own answers carry the id too.
    let reply = get(&c, &gw.url("/nowhere"), &[("x-request-id", "on-a-404")]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers["x-request-id"], "on-a-404");
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_trace_spans_exported_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_a_sampled_parent() {
    let up = Upstream::start("u").await;
    let mut receiver = Receiver::start(Duration::ZERO).await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}/v1/traces\"\nsampling_ratio = 0.0\nexport_interval_ms = 50\n\
         request_id_header = \"x-correlation-id\"\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        receiver.endpoint(),
        up.addr
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    for _ in 0..5 {
        let reply = get(&c, &gw.url("/x"), &[]).await;
        // Not sampled: still propagated, with the sampled flag off.
        let sent = upstream_header(&reply, "traceparent").unwrap();
        assert!(sent.ends_with("-00"), "{sent}");
        assert!(reply.headers.contains_key("x-correlation-id"));
        assert!(
            !reply.headers.contains_key("x-request-id"),
            "the configured name only"
        );
    }
    // A sampled parent wins over the ratio (parent-based sampling).
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    get(&c, &gw.url("/x"), &[("traceparent", &traceparent)]).await;
    let spans = receiver
        .collect(|got| got.iter().any(|r| hex(&r.span.trace_id) == CLIENT_TRACE))
        .await;
    assert!(
        spans.iter().all(|r| hex(&r.span.trace_id) == CLIENT_TRACE),
        "unsampled requests were exported: {spans:#?}"
    );
}

#[tokio::test]
async fn a_slow_collector_drops_spans_and_counts_them_without_slowing_requests() {
    let up = Upstream::start("u").await;
    // Each export takes 3 s; the queue holds 2 requests.
    let receiver = Receiver::start(Duration::from_secs(3)).await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nexport_queue_size = 2\nexport_batch_size = 1\n\
         export_interval_ms = 10\nexport_timeout_ms = 10000\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        receiver.endpoint(),
        up.addr
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let started = tokio::time::Instant::now();
    for _ in 0..30 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited for the exporter: {:?}",
        started.elapsed()
    );
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("fluxgate_trace_spans_dropped_total{reason=\"queue_full\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 20, "{metrics}");
    assert!(receiver.posts.load(Ordering::Relaxed) <= 2);
}

/// Requests keep working when tracing is off entirely: no headers added.
#[tokio::test]
async fn trace_context_and_request_ids_can_be_turned_off() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[telemetry]\ntrace_context = false\nrequest_id = false\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n[[routes]]\npath = \"/*\"\nupstream = \"u\"\n",
        up.addr
    );
    let gw = TestGateway::start(&config).await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(upstream_header(&reply, "traceparent"), None);
    assert_eq!(upstream_header(&reply, "x-request-id"), None);
    assert!(!reply.headers.contains_key("x-request-id"));
    let _ = TokioExecutor::new();
}
