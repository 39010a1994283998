//! `fluxgate-host plugin check FILE`: loads one component the way the gateway does —
//! the same compile and contract check (`runtime`), the same registry, pools, limits and
//! output rules — without a gateway: `init` with the given config, then one dry call of
//! each hook it declares on a sample request and answer. Either a report, or the one
//! reason the gateway would refuse or fail it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::bindings::PluginInfo;
use super::call::{CallError, Limits, LimitsByLanguage};
use super::language::Language;
use super::message::{RequestState, ResponseState};
use super::registry::{ChainEntry, Compiled, LoadError, PluginHost};
use super::runtime::{CONTRACT, CompileError};
use crate::metrics::Metrics;

/// The request the hooks are called with (and the answer on-response gets).
#[derive(Debug, Clone)]
pub struct Sample {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub client_ip: String,
    /// The request body, given to plugins that declare `request-body`.
    pub body: Bytes,
    pub status: StatusCode,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The answer's body, given to plugins that declare `response-body`.
    pub response_body: Bytes,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            method: Method::GET,
            path: "/".into(),
            query: None,
            headers: vec![
                (
                    http::header::HOST,
                    HeaderValue::from_static("localhost:8080"),
                ),
                (
                    http::header::USER_AGENT,
                    HeaderValue::from_static("fluxgate-plugin-check"),
                ),
                (http::header::ACCEPT, HeaderValue::from_static("*/*")),
            ],
            client_ip: "127.0.0.1".into(),
            body: Bytes::new(),
            status: StatusCode::OK,
            response_headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            response_body: Bytes::from_static(b"{\"ok\":true}"),
        }
    }
}

impl Sample {
    fn request(&self, with_body: bool) -> Result<RequestState, CheckError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        Ok(RequestState {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers,
            client_ip: HeaderValue::from_str(&self.client_ip)
                .map_err(|_| CheckError::Sample(format!("client ip {:?}", self.client_ip)))?,
            route: Arc::from("check"),
            body: with_body.then(|| self.body.clone()),
            ..RequestState::default()
        })
    }

    fn response(&self, with_body: bool) -> ResponseState {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.response_headers {
            headers.append(name.clone(), value.clone());
        }
        ResponseState {
            status: self.status,
            headers,
            body: with_body.then(|| self.response_body.clone()),
            body_replaced: false,
        }
    }
}

/// What to check with.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The chain entry's config, as JSON (what `init` gets).
    pub config_json: String,
    pub sample: Sample,
    /// Also make this many fresh instances and report their cost (0: skip).
    pub instances: usize,
    /// The limits to run under; `None`: the gateway's defaults for the file's language.
    pub limits: Option<LimitsByLanguage>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            config_json: "{}".into(),
            sample: Sample::default(),
            instances: 0,
            limits: None,
        }
    }
}

/// One dry hook call.
#[derive(Debug, Clone)]
pub struct HookRun {
    pub took: Duration,
    /// What the hook did, in words ("continue; set x-canary", "respond 403 ...").
    pub outcome: String,
}

/// The cost of fresh instances.
#[derive(Debug, Clone)]
pub struct InstanceFigures {
    pub count: usize,
    /// Instantiation + `init`, per instance.
    pub each: Duration,
    /// Resident memory the process grew by, per instance (Linux; `None` elsewhere).
    pub rss_each: Option<u64>,
    /// Linear memory per instance.
    pub linear_each: usize,
}

/// A component that passed.
#[derive(Debug, Clone)]
pub struct Report {
    pub bytes: usize,
    pub language: Language,
    /// The contract version it imports, e.g. "0.2.0".
    pub contract: Option<String>,
    pub compile_time: Duration,
    pub limits: Limits,
    pub config_json: String,
    /// The first instance: instantiation + `init`.
    pub init_time: Duration,
    pub info: PluginInfo,
    pub on_request: Option<HookRun>,
    pub on_response: Option<HookRun>,
    pub instances: Option<InstanceFigures>,
}

/// Why the gateway would refuse the component or fail its calls.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("init failed with config {config}: {error}")]
    Init { config: String, error: CallError },
    #[error("{hook} failed on the sample request: {error}")]
    Hook {
        hook: &'static str,
        error: CallError,
    },
    #[error("--config is not a JSON object: {0}")]
    Config(String),
    #[error("bad sample request: {0}")]
    Sample(String),
    #[error("the wasm runtime: {0}")]
    Runtime(String),
}

impl CheckError {
    /// A short label: `not_a_component`, `contract_version`, `wrong_world`, `init`,
    /// `trap`, `timeout`, `memory`, `invalid_output`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            CheckError::Compile(e) => e.kind(),
            CheckError::Init { .. } => "init",
            CheckError::Hook { error, .. } => error.kind(),
            CheckError::Config(_) => "config",
            CheckError::Sample(_) => "sample",
            CheckError::Runtime(_) => "runtime",
        }
    }
}

/// The limits `plugin check` runs a file under by default: the gateway's defaults
/// (`[plugins]` and the built-in language defaults), as a gateway without a config
/// file would.
pub fn default_limits() -> LimitsByLanguage {
    crate::plan::defaults(&crate::plan::Overrides::default())
        .map(|plan| plan.plugin_limits.default)
        .unwrap_or_else(|_| LimitsByLanguage::uniform(Limits::default()))
}

/// Checks one component file's bytes. Compiling is CPU-heavy: this blocks the calling
/// thread for it (the CLI has nothing else to do).
pub async fn check(bytes: &[u8], options: &CheckOptions) -> Result<Report, CheckError> {
    let config: serde_json::Value = serde_json::from_str(&options.config_json)
        .map_err(|e| CheckError::Config(e.to_string()))?;
    if !config.is_object() {
        return Err(CheckError::Config(options.config_json.clone()));
    }
    let config_json = config.to_string();
    let compiled = Compiled::new("check", bytes).map_err(|e| match e {
        LoadError::Compile(e) => CheckError::Compile(e),
        other => CheckError::Runtime(other.to_string()),
    })?;
    let language = compiled.language;
    let contract = compiled.contract.clone();
    let compile_time = compiled.compile_time;
    let mut by_language = options.limits.unwrap_or_else(default_limits);
    let limits = by_language.get(language);
    // Room for the measured instances besides the one serving the dry calls.
    let wanted = options.instances.saturating_add(1);
    for l in [
        &mut by_language.native,
        &mut by_language.javascript,
        &mut by_language.python,
    ] {
        l.max_instances = l.max_instances.max(wanted);
        l.max_idle_bytes = l.max_idle_bytes.max(limits.memory_bytes.saturating_mul(2));
    }

    let host = PluginHost::default();
    let metrics = Metrics::new();
    let config: Arc<str> = Arc::from(config_json.as_str());
    let started = Instant::now();
    host.install(compiled, &[(config.clone(), by_language)], &metrics)
        .await
        .map_err(|e| match e {
            LoadError::Init { config, error } | LoadError::Regression { config, error } => {
                CheckError::Init { config, error }
            }
            other => CheckError::Runtime(other.to_string()),
        })?;
    let init_time = started.elapsed();
    let entry = ChainEntry::new(
        "check",
        config_json.clone(),
        by_language,
        metrics.for_plugin("check"),
    );
    let pool = host
        .resolve(&entry)
        .map_err(|e| CheckError::Runtime(e.to_string()))?;
    let info = pool.info().await.map_err(|error| CheckError::Init {
        config: config_json.clone(),
        error,
    })?;

    let sample = &options.sample;
    let mut request = sample.request(info.request_body)?;
    let on_request = if info.on_request {
        let before = sample.request(info.request_body)?;
        let started = Instant::now();
        let answer = pool
            .on_request(0, &mut request)
            .await
            .map_err(|error| CheckError::Hook {
                hook: "on-request",
                error,
            })?;
        let took = started.elapsed();
        let outcome = match answer {
            Some(answer) => format!(
                "respond {} ({} header fields, {} body bytes)",
                answer.status,
                answer.headers.len(),
                answer.body.as_ref().map_or(0, Bytes::len)
            ),
            None => format!("continue{}", request_changes(&before, &request)),
        };
        Some(HookRun { took, outcome })
    } else {
        None
    };
    let on_response = if info.on_response {
        let before = sample.response(info.response_body);
        let mut response = sample.response(info.response_body);
        let started = Instant::now();
        pool.on_response(0, &mut request, &mut response)
            .await
            .map_err(|error| CheckError::Hook {
                hook: "on-response",
                error,
            })?;
        let took = started.elapsed();
        Some(HookRun {
            took,
            outcome: format!("ok{}", response_changes(&before, &response)),
        })
    } else {
        None
    };

    let instances = if options.instances > 0 {
        let rss_before = resident_bytes();
        let started = Instant::now();
        let held = pool
            .fresh_instances(options.instances)
            .await
            .map_err(|error| CheckError::Init {
                config: config_json.clone(),
                error,
            })?;
        let took = started.elapsed();
        let rss_after = resident_bytes();
        let count = held.len().max(1);
        let figures = InstanceFigures {
            count: held.len(),
            each: took / count as u32,
            rss_each: rss_before
                .zip(rss_after)
                .map(|(b, a)| a.saturating_sub(b) / count as u64),
            linear_each: held.memory_bytes() / count,
        };
        drop(held);
        Some(figures)
    } else {
        None
    };

    Ok(Report {
        bytes: bytes.len(),
        language,
        contract,
        compile_time,
        limits,
        config_json,
        init_time,
        info,
        on_request,
        on_response,
        instances,
    })
}

/// The process's resident memory in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// "; path /a -> /b; set x-y; removed z" for what a hook changed on the request.
fn request_changes(before: &RequestState, after: &RequestState) -> String {
    let mut out = String::new();
    if before.path != after.path {
        let _ = write!(out, "; path {} -> {}", before.path, after.path);
    }
    if before.query != after.query {
        let _ = write!(out, "; query {:?} -> {:?}", before.query, after.query);
    }
    out.push_str(&header_changes(&before.headers, &after.headers));
    if after.body_replaced {
        out.push_str("; body replaced");
    }
    out
}

fn response_changes(before: &ResponseState, after: &ResponseState) -> String {
    let mut out = String::new();
    if before.status != after.status {
        let _ = write!(out, "; status {} -> {}", before.status, after.status);
    }
    out.push_str(&header_changes(&before.headers, &after.headers));
    if after.body_replaced {
        out.push_str("; body replaced");
    }
    out
}

fn header_changes(before: &HeaderMap, after: &HeaderMap) -> String {
    let mut out = String::new();
    for name in after.keys() {
        let old: Vec<_> = before.get_all(name).iter().collect();
        let new: Vec<_> = after.get_all(name).iter().collect();
        if old != new {
            let values: Vec<String> = new
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            let _ = write!(out, "; set {name}: {}", values.join(", "));
        }
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            let _ = write!(out, "; removed {name}");
        }
    }
    out
}

fn hooks(info: &PluginInfo) -> String {
    let mut hooks = Vec::new();
    if info.on_request {
        hooks.push("on-request");
    }
    if info.on_response {
        hooks.push("on-response");
    }
    let mut bodies = Vec::new();
    if info.request_body {
        bodies.push("request body");
    }
    if info.response_body {
        bodies.push("response body");
    }
    format!(
        "hooks: {}; needs: {}",
        if hooks.is_empty() {
            "none".to_owned()
        } else {
            hooks.join(", ")
        },
        if bodies.is_empty() {
            "no bodies".to_owned()
        } else {
            bodies.join(", ")
        }
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let contract = self.contract.as_deref().map_or_else(
            || format!("{CONTRACT}.x"),
            |v| format!("fluxgate:plugin@{v}"),
        );
        writeln!(f, "contract     {contract}")?;
        writeln!(
            f,
            "component    {} bytes, {} ({})",
            self.bytes,
            self.language,
            self.language.toolchain()
        )?;
        writeln!(f, "compiled     in {}", ms(self.compile_time))?;
        writeln!(
            f,
            "limits       memory {} MiB, {} ms per call, {} warm instances (the gateway's defaults for {})",
            self.limits.memory_bytes >> 20,
            self.limits.timeout_ms,
            self.limits.max_idle,
            self.language
        )?;
        writeln!(
            f,
            "init         ok in {} with config {}",
            ms(self.init_time),
            self.config_json
        )?;
        writeln!(f, "declares     {}", hooks(&self.info))?;
        if let Some(run) = &self.on_request {
            writeln!(f, "on-request   {} in {}", run.outcome, ms(run.took))?;
        }
        if let Some(run) = &self.on_response {
            writeln!(f, "on-response  {} in {}", run.outcome, ms(run.took))?;
        }
        if let Some(i) = &self.instances {
            let rss = i.rss_each.map_or_else(
                || "unknown".to_owned(),
                |b| format!("{:.1} MiB", b as f64 / 1048576.0),
            );
            writeln!(
                f,
                "instances    {} fresh: {} each to instantiate and init; resident memory +{rss} each; linear memory {:.1} MiB each",
                i.count,
                ms(i.each),
                i.linear_each as f64 / 1048576.0
            )?;
        }
        Ok(())
    }
}
