//! A host-free test harness: run a plugin's hooks natively with `cargo test`.
//!
//! [`init`] builds a plugin as the gateway's `init` would and returns a [`Harness`],
//! whose hooks behave like the gateway's calls:
//! - only the hooks the plugin asks for run ([`Plugin::HOOKS`], narrowed by
//!   [`Plugin::info`]); a hook not asked for leaves the request or response untouched;
//! - [`Request::body`]/[`Response::body`] return the body only if the plugin declared
//!   it, and a request `set_body` without the declaration fails;
//! - the request and response are test doubles ([`TestRequest`], [`TestResponse`])
//!   that apply each edit at once and enforce the gateway's rules ([`crate::rules`]),
//!   panicking with a message that names the rule, so the test fails where the gateway
//!   would fail the call; a direct response is checked the same way;
//! - a plugin's [`Request::stash`] in `on_request` is what [`Request::stashed`] returns
//!   in its `on_response` of the same [`TestRequest`] (each harness has its own);
//! - [`crate::kv`] and [`crate::log`] keep the gateway's per-call limits (64 kv writes,
//!   16 log lines of at most 4 KiB) inside hook calls.
//!
//! The host functions are backed by fakes kept per thread (each `#[test]` runs on its
//! own thread, so tests do not see each other's state): an in-memory [`crate::kv`] store
//! with TTLs, captured [`crate::log`] lines ([`logs`]) and a clock ([`set_now_ms`],
//! [`advance_ms`]; the system clock until set).
//!
//! ```
//! use fluxgate_sdk::{testing, Action, Config, Plugin, Request, Response};
//!
//! struct Hello;
//!
//! #[fluxgate_sdk::plugin]
//! impl Plugin for Hello {
//!     fn init(_: Config) -> Result<Self, String> { Ok(Hello) }
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         req.set_header("x-hello", "world");
//!         req.stash(req.path());
//!         Action::Continue
//!     }
//!     fn on_response(&self, req: &Request, resp: &mut Response) {
//!         resp.set_header("x-path", req.stashed().unwrap_or_default());
//!     }
//! }
//!
//! let plugin = testing::init::<Hello>("{}").unwrap();
//! let mut req = testing::request().method("GET").path("/x").build();
//! assert!(plugin.on_request(&mut req).is_continue());
//! assert_eq!(req.header("x-hello"), Some("world"));
//! assert_eq!(req.edits(), [testing::Edit::SetHeader("x-hello".into(), b"world".to_vec()),
//!                          testing::Edit::Stash(b"/x".to_vec())]);
//!
//! let mut resp = testing::response(200).build();
//! plugin.on_response(&req, &mut resp);
//! assert_eq!(resp.header("x-path"), Some("/x"));
//! ```

use crate::backend::{Header, RequestBackend, ResponseBackend};
use crate::log::Level;
use crate::rules;
use crate::runtime::effective_info;
use crate::{Action, DirectResponse, Hooks, Info, Plugin, Request, Response};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Clears this thread's fake state: the kv store, the captured logs, and the clock
/// (back to the system clock).
pub fn reset() {
    fake::with(|s| *s = fake::State::default());
}

/// Freezes the fake clock at `ms` (milliseconds since the Unix epoch).
pub fn set_now_ms(ms: u64) {
    fake::with(|s| s.clock = Some(ms));
}

/// Moves the fake clock forward by `ms` (freezing it at the current time first if it
/// was following the system clock).
pub fn advance_ms(ms: u64) {
    let now = fake::now_ms();
    fake::with(|s| s.clock = Some(now.saturating_add(ms)));
}

/// The log lines captured on this thread so far, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    fake::with(|s| s.logs.clone())
}

/// Returns and clears the captured log lines.
pub fn take_logs() -> Vec<(Level, String)> {
    fake::with(|s| std::mem::take(&mut s.logs))
}

/// How many log lines were dropped because a hook call wrote more than
/// [`crate::log::MAX_LINES_PER_CALL`].
pub fn dropped_logs() -> usize {
    fake::with(|s| s.dropped_logs)
}

/// Builds a plugin from a JSON config, as the gateway's `init` would.
pub fn init<P: Plugin>(config: &str) -> Result<Harness<P>, String> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let plugin = P::init(crate::Config::new(config))?;
    let info = effective_info(&plugin);
    Ok(Harness {
        plugin,
        info,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
    })
}

/// Builds a plugin from a JSON value (e.g. `serde_json::json!({...})`).
pub fn init_json<P: Plugin>(config: &serde_json::Value) -> Result<Harness<P>, String> {
    init(&config.to_string())
}

/// A test request builder; defaults: `GET /`, no query, headers or body, client
/// `127.0.0.1`, route `test`.
pub fn request() -> RequestBuilder {
    RequestBuilder {
        request: TestRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: Vec::new(),
            client_ip: "127.0.0.1".into(),
            route: "test".into(),
            params: Vec::new(),
            body: None,
            stashes: Vec::new(),
            scope: Scope::default(),
            edits: Vec::new(),
            calls: RefCell::new(Vec::new()),
        },
    }
}

/// A test response builder with this status and no headers or body.
pub fn response(status: u16) -> ResponseBuilder {
    ResponseBuilder {
        response: TestResponse {
            status,
            headers: Vec::new(),
            body: None,
            body_declared: true,
            edits: Vec::new(),
            calls: RefCell::new(Vec::new()),
        },
    }
}

/// A plugin built by [`init`], whose hooks run the way the gateway calls them (see the
/// [module docs](self)).
pub struct Harness<P> {
    plugin: P,
    info: Info,
    /// Whose stash a request carries.
    id: u64,
}

impl<P: Plugin> Harness<P> {
    /// What `init` tells the gateway: the hooks it calls (the impl's [`Plugin::HOOKS`]
    /// as narrowed by [`Plugin::info`]) and the bodies it buffers.
    pub fn info(&self) -> Info {
        self.info
    }

    /// The hooks the impl defines ([`Plugin::HOOKS`]).
    pub fn hooks(&self) -> Hooks {
        P::HOOKS
    }

    /// The plugin itself.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// Runs `on_request` on `req` if the gateway would call it. Its edits are applied
    /// to `req` at once ([`TestRequest::edits`] lists them); an edit or direct response
    /// the gateway refuses panics with the rule it breaks.
    #[track_caller]
    pub fn on_request(&self, req: &mut TestRequest) -> RequestOutcome {
        req.begin(Scope {
            owner: self.id,
            body_declared: self.info.request_body,
        });
        let action = if self.info.on_request {
            let _hook = fake::Hook::begin();
            self.plugin.on_request(&mut Request::new(req))
        } else {
            Action::Continue
        };
        req.scope = Scope::default();
        match action {
            Action::Continue => RequestOutcome::Continue,
            Action::Respond(response) => {
                if let Err(rule) = check_direct(&response) {
                    panic!("the gateway refuses this direct response: {rule}");
                }
                RequestOutcome::Respond(response)
            }
        }
    }

    /// Runs `on_response` with `req` (the request as it went upstream, carrying what
    /// this plugin stashed in its `on_request`) and `resp`, if the gateway would call
    /// it. Its edits are applied to `resp` at once ([`TestResponse::edits`] lists
    /// them); an edit the gateway refuses panics with the rule it breaks.
    pub fn on_response(&self, req: &TestRequest, resp: &mut TestResponse) {
        resp.begin(self.info.response_body);
        if self.info.on_response {
            let mut req = req.clone();
            req.begin(Scope {
                owner: self.id,
                body_declared: self.info.request_body,
            });
            let _hook = fake::Hook::begin();
            self.plugin
                .on_response(&Request::new(&mut req), &mut Response::new(resp));
        }
        resp.body_declared = true;
    }

    /// What this plugin stashed for `req`, if anything.
    pub fn stashed<'r>(&self, req: &'r TestRequest) -> Option<&'r [u8]> {
        req.stash_of(self.id)
    }
}

/// The rule a direct response breaks, if any.
fn check_direct(response: &DirectResponse) -> Result<(), String> {
    rules::check_status(response.status())?;
    for (name, value) in response.headers() {
        rules::check_field(name, value)?;
    }
    rules::check_totals(response.headers())
}

/// What `on_request` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The request goes on (with the edits applied to the [`TestRequest`]); also what a
    /// hook the gateway would not call amounts to.
    Continue,
    /// The plugin answered with this response.
    Respond(DirectResponse),
}

impl RequestOutcome {
    /// True for [`RequestOutcome::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue)
    }

    /// The direct response, if the plugin answered.
    pub fn response(&self) -> Option<&DirectResponse> {
        match self {
            Self::Continue => None,
            Self::Respond(r) => Some(r),
        }
    }

    /// Panics (failing the test) if the plugin answered instead of continuing.
    #[track_caller]
    pub fn assert_continue(&self) {
        if let Self::Respond(r) = self {
            panic!(
                "expected the plugin to continue, it answered {} {}",
                r.status(),
                r.body_str()
            );
        }
    }

    /// The direct response; panics (failing the test) if the plugin continued.
    #[track_caller]
    pub fn into_response(self) -> DirectResponse {
        match self {
            Self::Respond(r) => r,
            Self::Continue => panic!("expected the plugin to answer, it continued"),
        }
    }
}

/// One edit a hook made, as [`TestRequest::edits`] and [`TestResponse::edits`] list
/// them (header names lower-case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// `set-header(name, value)`.
    SetHeader(String, Vec<u8>),
    /// `append-header(name, value)`.
    AppendHeader(String, Vec<u8>),
    /// `remove-header(name)`.
    RemoveHeader(String),
    /// `set-path(path)`, as given.
    SetPath(String),
    /// `set-query(query)`.
    SetQuery(Option<String>),
    /// `set-body(body)`.
    SetBody(Vec<u8>),
    /// `stash(value)`.
    Stash(Vec<u8>),
    /// `set-status(status)` (responses).
    SetStatus(u16),
}

/// Panics for an edit the gateway refuses.
fn refuse(rule: &str) -> ! {
    panic!("the gateway refuses this edit: {rule}")
}

/// Runs a rule check, panicking if it fails.
fn enforce<T>(check: Result<T, String>) -> T {
    check.unwrap_or_else(|rule| refuse(&rule))
}

/// Who is calling: the harness whose stash is read and written, and whether it declared
/// the request body. Outside a harness call: nobody (0), body visible.
#[derive(Clone, Copy, Debug)]
struct Scope {
    owner: u64,
    body_declared: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            owner: 0,
            body_declared: true,
        }
    }
}

/// Builds a [`TestRequest`]; see [`request`].
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    request: TestRequest,
}

impl RequestBuilder {
    /// The method.
    pub fn method(mut self, method: &str) -> Self {
        self.request.method = method.to_string();
        self
    }

    /// The path; a query after '?' becomes the query string.
    pub fn path(mut self, path: &str) -> Self {
        match path.split_once('?') {
            Some((path, query)) => {
                self.request.path = path.to_string();
                self.request.query = Some(query.to_string());
            }
            None => self.request.path = path.to_string(),
        }
        self
    }

    /// The query string (without '?').
    pub fn query(mut self, query: &str) -> Self {
        self.request.query = Some(query.to_string());
        self
    }

    /// Adds a header field (name lower-cased, as the gateway has them).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.request
            .headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The client IP.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.request.client_ip = ip.to_string();
        self
    }

    /// The matched route's name.
    pub fn route(mut self, route: &str) -> Self {
        self.request.route = route.to_string();
        self
    }

    /// Adds a route path parameter.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.request
            .params
            .push((name.to_string(), value.to_string()));
        self
    }

    /// The body (returned only to plugins that declare the request body).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = Some(body.into());
        self
    }

    /// The request.
    pub fn build(self) -> TestRequest {
        self.request
    }
}

/// The native double of the gateway's request: a [`RequestBackend`] that applies edits
/// at once, enforcing the gateway's rules (a refused edit panics naming the rule), and
/// records the edits and host calls of the last hook call.
///
/// Its inherent methods (`header`, `path`, ...) are for assertions: they read the
/// current state without being recorded as host calls.
#[derive(Clone, Debug)]
pub struct TestRequest {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<Header>,
    client_ip: String,
    route: String,
    params: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// (harness id, value).
    stashes: Vec<(u64, Vec<u8>)>,
    scope: Scope,
    edits: Vec<Edit>,
    calls: RefCell<Vec<&'static str>>,
}

impl TestRequest {
    /// Starts a hook call: clears the edit and call logs.
    fn begin(&mut self, scope: Scope) {
        self.scope = scope;
        self.edits.clear();
        self.calls.get_mut().clear();
    }

    fn call(&self, name: &'static str) {
        self.calls.borrow_mut().push(name);
    }

    fn stash_of(&self, owner: u64) -> Option<&[u8]> {
        self.stashes
            .iter()
            .find(|(o, _)| *o == owner)
            .map(|(_, v)| v.as_slice())
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path (after the edits so far).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first value of header `name` (any case) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        all(&self.headers, name)
    }

    /// Every header field as (lower-case name, value), in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The edits the last hook call made, in order.
    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    /// The host calls the last hook call made on the request (WIT names, e.g.
    /// `"header"`, `"headers"`, `"set-header"`), in order: to check that a plugin reads
    /// only what it needs.
    pub fn host_calls(&self) -> Vec<&'static str> {
        self.calls.borrow().clone()
    }
}

impl RequestBackend for TestRequest {
    fn method(&self) -> String {
        self.call("method");
        self.method.clone()
    }
    fn path(&self) -> String {
        self.call("path");
        self.path.clone()
    }
    fn query(&self) -> Option<String> {
        self.call("query");
        self.query.clone()
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("header");
        first(&self.headers, name).map(<[u8]>::to_vec)
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.call("header-values");
        all(&self.headers, name)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }
    fn headers(&self) -> Vec<Header> {
        self.call("headers");
        self.headers.clone()
    }
    fn client_ip(&self) -> String {
        self.call("client-ip");
        self.client_ip.clone()
    }
    fn route(&self) -> String {
        self.call("route");
        self.route.clone()
    }
    fn param(&self, name: &str) -> Option<String> {
        self.call("param");
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn params(&self) -> Vec<(String, String)> {
        self.call("params");
        self.params.clone()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.call("body");
        if self.scope.body_declared {
            self.body.clone()
        } else {
            None
        }
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.call("set-header");
        let name = enforce(set(&mut self.headers, name, value));
        self.edits.push(Edit::SetHeader(name, value.to_vec()));
    }
    fn append_header(&mut self, name: &str, value: &[u8]) {
        self.call("append-header");
        let name = enforce(append(&mut self.headers, name, value));
        self.edits.push(Edit::AppendHeader(name, value.to_vec()));
    }
    fn remove_header(&mut self, name: &str) {
        self.call("remove-header");
        let name = enforce(remove(&mut self.headers, name));
        self.edits.push(Edit::RemoveHeader(name));
    }
    fn set_path(&mut self, path: &str) {
        self.call("set-path");
        self.path = enforce(rules::normalise_path(path));
        self.edits.push(Edit::SetPath(path.to_string()));
    }
    fn set_query(&mut self, query: Option<&str>) {
        self.call("set-query");
        if let Some(query) = query {
            enforce(rules::check_query(query));
        }
        self.query = query.map(str::to_string);
        self.edits.push(Edit::SetQuery(self.query.clone()));
    }
    fn set_body(&mut self, body: &[u8]) {
        self.call("set-body");
        if !self.scope.body_declared {
            refuse(
                "set_body on the request (rule: the plugin must declare request_body in \
                 info() to replace the request body)",
            );
        }
        self.body = Some(body.to_vec());
        self.edits.push(Edit::SetBody(body.to_vec()));
    }
    fn stash(&mut self, value: &[u8]) {
        self.call("stash");
        enforce(rules::check_stash(value));
        let owner = self.scope.owner;
        self.stashes.retain(|(o, _)| *o != owner);
        self.stashes.push((owner, value.to_vec()));
        self.edits.push(Edit::Stash(value.to_vec()));
    }
    fn stashed(&self) -> Option<Vec<u8>> {
        self.call("stashed");
        self.stash_of(self.scope.owner).map(<[u8]>::to_vec)
    }
}

/// Builds a [`TestResponse`]; see [`response`].
#[derive(Clone, Debug)]
pub struct ResponseBuilder {
    response: TestResponse,
}

impl ResponseBuilder {
    /// Adds a header field (name lower-cased).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.response
            .headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The body (returned only to plugins that declare the response body).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.response.body = Some(body.into());
        self
    }

    /// The response.
    pub fn build(self) -> TestResponse {
        self.response
    }
}

/// The native double of the gateway's response: a [`ResponseBackend`] that applies
/// edits at once, enforcing the gateway's rules, and records the edits and host calls
/// of the last hook call. Its inherent methods are for assertions.
#[derive(Clone, Debug)]
pub struct TestResponse {
    status: u16,
    headers: Vec<Header>,
    body: Option<Vec<u8>>,
    body_declared: bool,
    edits: Vec<Edit>,
    calls: RefCell<Vec<&'static str>>,
}

impl TestResponse {
    fn begin(&mut self, body_declared: bool) {
        self.body_declared = body_declared;
        self.edits.clear();
        self.calls.get_mut().clear();
    }

    fn call(&self, name: &'static str) {
        self.calls.borrow_mut().push(name);
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        all(&self.headers, name)
    }

    /// Every header field as (lower-case name, value), in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The body as UTF-8 text (invalid bytes replaced; empty if none).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(self.body().unwrap_or_default()).into_owned()
    }

    /// The edits the last hook call made, in order.
    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    /// The host calls the last hook call made on the response (WIT names), in order.
    pub fn host_calls(&self) -> Vec<&'static str> {
        self.calls.borrow().clone()
    }
}

impl ResponseBackend for TestResponse {
    fn status(&self) -> u16 {
        self.call("status");
        self.status
    }
    fn set_status(&mut self, status: u16) {
        self.call("set-status");
        enforce(rules::check_status(status));
        self.status = status;
        self.edits.push(Edit::SetStatus(status));
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("header");
        first(&self.headers, name).map(<[u8]>::to_vec)
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.call("header-values");
        all(&self.headers, name)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }
    fn headers(&self) -> Vec<Header> {
        self.call("headers");
        self.headers.clone()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.call("body");
        if self.body_declared {
            self.body.clone()
        } else {
            None
        }
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.call("set-header");
        let name = enforce(set(&mut self.headers, name, value));
        self.edits.push(Edit::SetHeader(name, value.to_vec()));
    }
    fn append_header(&mut self, name: &str, value: &[u8]) {
        self.call("append-header");
        let name = enforce(append(&mut self.headers, name, value));
        self.edits.push(Edit::AppendHeader(name, value.to_vec()));
    }
    fn remove_header(&mut self, name: &str) {
        self.call("remove-header");
        let name = enforce(remove(&mut self.headers, name));
        self.edits.push(Edit::RemoveHeader(name));
    }
    fn set_body(&mut self, body: &[u8]) {
        self.call("set-body");
        self.body = Some(body.to_vec());
        self.edits.push(Edit::SetBody(body.to_vec()));
    }
}

/// The first value of `name` (any case).
fn first<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Every value of `name` (any case).
fn all<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// `set-header`: the new value takes the place of the first old one (or goes last);
/// returns the lower-cased name, or the rule broken.
fn set(headers: &mut Vec<Header>, name: &str, value: &[u8]) -> Result<String, String> {
    rules::check_field(name, value)?;
    let name = name.to_ascii_lowercase();
    let mut edited = headers.clone();
    let at = edited.iter().position(|(n, _)| *n == name);
    edited.retain(|(n, _)| *n != name);
    let at = at.unwrap_or(edited.len());
    edited.insert(at, (name.clone(), value.to_vec()));
    rules::check_totals(&edited)?;
    *headers = edited;
    Ok(name)
}

/// `append-header`; returns the lower-cased name, or the rule broken.
fn append(headers: &mut Vec<Header>, name: &str, value: &[u8]) -> Result<String, String> {
    rules::check_field(name, value)?;
    let name = name.to_ascii_lowercase();
    headers.push((name.clone(), value.to_vec()));
    if let Err(rule) = rules::check_totals(headers) {
        headers.pop();
        return Err(rule);
    }
    Ok(name)
}

/// `remove-header`; returns the lower-cased name, or the rule broken.
fn remove(headers: &mut Vec<Header>, name: &str) -> Result<String, String> {
    rules::check_edit_name(name)?;
    let name = name.to_ascii_lowercase();
    headers.retain(|(n, _)| *n != name);
    Ok(name)
}

/// The per-thread fakes behind the SDK's host functions outside wasm32.
pub(crate) mod fake {
    use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES, MAX_WRITES_PER_CALL};
    use crate::log::{Level, MAX_LINE_BYTES, MAX_LINES_PER_CALL};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[derive(Default)]
    pub(crate) struct State {
        /// key -> (value, expiry in ms since the epoch).
        pub kv: HashMap<String, (Vec<u8>, Option<u64>)>,
        pub logs: Vec<(Level, String)>,
        /// A frozen time, or `None` for the system clock.
        pub clock: Option<u64>,
        /// Inside a harness hook call: the per-call limits apply.
        pub in_hook: bool,
        /// kv writes in this hook call.
        pub writes: usize,
        /// Log lines in this hook call.
        pub lines: usize,
        /// Log lines dropped over the per-call limit.
        pub dropped_logs: usize,
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State::default());
    }

    pub(crate) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with_borrow_mut(f)
    }

    /// A harness hook call in progress: the per-call limits apply until it is dropped
    /// (also when the hook panics).
    pub(crate) struct Hook;

    impl Hook {
        pub(crate) fn begin() -> Self {
            with(|s| {
                s.in_hook = true;
                s.writes = 0;
                s.lines = 0;
            });
            Hook
        }
    }

    impl Drop for Hook {
        fn drop(&mut self) {
            with(|s| s.in_hook = false);
        }
    }

    pub(crate) fn now_ms() -> u64 {
        with(|s| s.clock).unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        })
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|s| {
            if s.in_hook {
                if s.lines >= MAX_LINES_PER_CALL {
                    s.dropped_logs += 1;
                    return;
                }
                s.lines += 1;
            }
            let mut end = message.len().min(MAX_LINE_BYTES);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            s.logs.push((level, message[..end].to_string()));
        });
    }

    /// The live value under `key`, dropping it if expired.
    fn live(s: &mut State, key: &str, now: u64) -> Option<Vec<u8>> {
        match s.kv.get(key) {
            Some((_, Some(expiry))) if *expiry <= now => {
                s.kv.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Counts a write against the per-call limit, or says why it is refused.
    fn write(s: &mut State, key: &str) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "kv key of {} bytes is longer than 1 KiB",
                key.len()
            ));
        }
        if s.in_hook {
            if s.writes >= MAX_WRITES_PER_CALL {
                return Err(format!(
                    "more than {MAX_WRITES_PER_CALL} kv writes in one hook call"
                ));
            }
            s.writes += 1;
        }
        Ok(())
    }

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        let now = now_ms();
        with(|s| live(s, key, now))
    }

    pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "kv value of {} bytes is longer than 64 KiB",
                value.len()
            ));
        }
        let now = now_ms();
        let expiry = ttl_ms.map(|t| now.saturating_add(t));
        with(|s| {
            write(s, key)?;
            s.kv.insert(key.to_string(), (value.to_vec(), expiry));
            Ok(())
        })
    }

    pub(crate) fn kv_delete(key: &str) -> bool {
        let now = now_ms();
        with(|s| {
            let existed = live(s, key, now).is_some();
            s.kv.remove(key);
            existed
        })
    }

    /// Counters are stored as decimal text; a value that is not a number counts as 0.
    pub(crate) fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        let now = now_ms();
        with(|s| {
            write(s, key)?;
            let (current, expiry) = match live(s, key, now) {
                Some(value) => {
                    let n = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .unwrap_or(0);
                    (n, s.kv.get(key).and_then(|(_, e)| *e))
                }
                None => (0, ttl_ms.map(|t| now.saturating_add(t))),
            };
            let next = current.saturating_add(delta);
            s.kv.insert(key.to_string(), (next.to_string().into_bytes(), expiry));
            Ok(next)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, kv, now_ms};

    #[test]
    fn kv_with_ttl_and_clock() {
        reset();
        set_now_ms(1_000);
        assert_eq!(now_ms(), 1_000);
        assert_eq!(kv::set("a", "1", Some(100)), Ok(()));
        assert_eq!(kv::set("b", b"2", None), Ok(()));
        assert_eq!(kv::get_string("a").as_deref(), Some("1"));
        advance_ms(99);
        assert_eq!(kv::get("a").as_deref(), Some(&b"1"[..]));
        advance_ms(1);
        assert_eq!(kv::get("a"), None);
        assert_eq!(kv::get("b").as_deref(), Some(&b"2"[..]));
        assert!(kv::delete("b"));
        assert!(!kv::delete("b"));
        reset();
        assert!(now_ms() > 1_000_000_000_000, "system clock after reset");
    }

    #[test]
    fn kv_incr_counts_and_keeps_the_first_ttl() {
        reset();
        set_now_ms(0);
        assert_eq!(kv::incr("c", 1, Some(10)), Ok(1));
        assert_eq!(kv::incr("c", 5, Some(1_000)), Ok(6));
        assert_eq!(kv::incr("c", 0, None), Ok(6));
        assert_eq!(kv::get_string("c").as_deref(), Some("6"));
        set_now_ms(10);
        assert_eq!(kv::incr("c", -1, None), Ok(-1), "expired key counts from 0");
    }

    #[test]
    fn kv_refuses_what_the_gateway_refuses() {
        reset();
        let long_key = "k".repeat(kv::MAX_KEY_BYTES + 1);
        assert!(kv::set(&long_key, "v", None).is_err_and(|e| e.contains("1 KiB")));
        assert!(kv::incr(&long_key, 1, None).is_err());
        let big = vec![0u8; kv::MAX_VALUE_BYTES + 1];
        assert!(kv::set("k", &big, None).is_err_and(|e| e.contains("64 KiB")));
        assert_eq!(kv::get("k"), None);
        // Outside a hook call there is no per-call limit.
        for i in 0..100 {
            assert_eq!(kv::set(&format!("k{i}"), "v", None), Ok(()));
        }
    }

    #[test]
    fn logs_are_captured() {
        reset();
        crate::log::info("hello");
        let n = 3;
        crate::log::warn!("n = {n}");
        crate::log::error!("{}", "boom");
        assert_eq!(
            logs(),
            vec![
                (Level::Info, "hello".to_string()),
                (Level::Warn, "n = 3".to_string()),
                (Level::Error, "boom".to_string()),
            ]
        );
        assert_eq!(take_logs().len(), 3);
        assert!(logs().is_empty());
    }

    struct Demo {
        reject: String,
    }

    #[crate::plugin]
    impl Plugin for Demo {
        fn init(config: Config) -> Result<Self, String> {
            #[derive(serde::Deserialize)]
            struct C {
                reject: String,
            }
            let c: C = config.parse()?;
            Ok(Self { reject: c.reject })
        }

        fn info(&self) -> Info {
            Info::new().request_body(true)
        }

        fn on_request(&self, req: &mut Request) -> Action {
            if req.path() == self.reject {
                return Action::json(403, &serde_json::json!({"error": "forbidden"}));
            }
            let body_len = req.body().map_or(0, |b| b.len());
            req.set_header("x-body-len", body_len.to_string());
            let id = req.param("id").unwrap_or_else(|| "none".into());
            req.set_header("x-id", id);
            req.remove_header("x-secret");
            req.remove_query();
            req.stash(req.method());
            Action::Continue
        }

        fn on_response(&self, req: &Request, resp: &mut Response) {
            if let Some(id) = req.header("x-id") {
                resp.set_header("x-seen-id", id);
            }
            if let Some(method) = req.stashed() {
                resp.set_header("x-method", method);
            }
            resp.set_status(202);
            if resp.body().is_some() {
                resp.set_body("body was passed");
            }
        }
    }

    #[test]
    fn harness_runs_hooks() {
        assert!(init::<Demo>("{}").is_err());
        let h = init_json::<Demo>(&serde_json::json!({"reject": "/no"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.info(), Info::new().request_body(true));
        assert_eq!(h.hooks(), Hooks::BOTH);
        assert_eq!(h.plugin().reject, "/no");

        let denied = h
            .on_request(&mut request().path("/no").build())
            .into_response();
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.header("Content-Type"), Some("application/json"));
        assert_eq!(denied.body_str(), r#"{"error":"forbidden"}"#);

        let mut req = request()
            .method("POST")
            .path("/users/7?x=1")
            .param("id", "7")
            .header("X-Secret", "s")
            .body("abc")
            .build();
        let outcome = h.on_request(&mut req);
        outcome.assert_continue();
        assert!(outcome.response().is_none());
        assert_eq!(req.header("x-body-len"), Some("3"));
        assert_eq!(req.header("x-id"), Some("7"));
        assert_eq!(req.header("x-secret"), None);
        assert_eq!(req.query(), None);
        assert_eq!(req.path(), "/users/7");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.body(), Some(&b"abc"[..]));
        assert_eq!(
            req.edits(),
            [
                Edit::SetHeader("x-body-len".into(), b"3".to_vec()),
                Edit::SetHeader("x-id".into(), b"7".to_vec()),
                Edit::RemoveHeader("x-secret".into()),
                Edit::SetQuery(None),
                Edit::Stash(b"POST".to_vec()),
            ]
        );
        assert!(!req.host_calls().contains(&"headers"));
        assert_eq!(h.stashed(&req), Some(&b"POST"[..]));

        // The response body is not passed: the plugin did not declare it.
        let mut resp = response(200).header("Server", "up").body("x").build();
        h.on_response(&req, &mut resp);
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.header("x-seen-id"), Some("7"));
        assert_eq!(resp.header("x-method"), Some("POST"));
        assert_eq!(resp.header("server"), Some("up"));
        assert_eq!(resp.body(), Some(&b"x"[..]));
        assert!(
            !resp
                .edits()
                .contains(&Edit::SetBody(b"body was passed".to_vec()))
        );
        assert_eq!(resp.headers().len(), 3);
        assert_eq!(resp.header_values("x-method").len(), 1);
        assert_eq!(resp.host_calls()[0], "set-header");
        assert_eq!(resp.body_str(), "x");
    }

    struct RequestOnly;

    #[crate::plugin]
    impl Plugin for RequestOnly {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }

        fn on_request(&self, req: &mut Request) -> Action {
            // Not declared: the body is withheld.
            req.set_header("x-has-body", req.body().is_some().to_string());
            Action::Continue
        }
    }

    #[test]
    fn harness_honours_hooks_and_bodies() {
        let h = init::<RequestOnly>("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.hooks(), Hooks::ON_REQUEST);
        let info = h.info();
        assert!(info.on_request && !info.on_response && !info.request_body);
        let mut req = request().body("abc").build();
        h.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-has-body"), Some("false"));
        // on_response is not defined: not called.
        let mut resp = response(200).build();
        h.on_response(&req, &mut resp);
        assert!(resp.edits().is_empty() && resp.host_calls().is_empty());
        // Outside the harness the double shows the body.
        assert!(RequestBackend::body(&req).is_some());
    }

    /// Without the attribute both hooks run (the default is never to skip one).
    struct NoAttribute;

    impl Plugin for NoAttribute {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }

        fn on_response(&self, _: &Request, resp: &mut Response) {
            resp.set_header("x-called", "yes");
        }
    }

    #[test]
    fn without_the_attribute_every_hook_is_called() {
        let h = init::<NoAttribute>("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.info(), Info::new());
        let mut req = request().build();
        h.on_request(&mut req).assert_continue();
        let mut resp = response(200).build();
        h.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-called"), Some("yes"));
    }

    /// Edits what its config says, to try the rules.
    struct Editor(serde_json::Value);

    #[crate::plugin]
    impl Plugin for Editor {
        fn init(config: Config) -> Result<Self, String> {
            Ok(Self(config.value()?))
        }

        fn on_request(&self, req: &mut Request) -> Action {
            let c = &self.0;
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            match s("op").as_str() {
                "set" => req.set_header(&s("name"), s("value")),
                "append" => req.append_header(&s("name"), s("value")),
                "remove" => req.remove_header(&s("name")),
                "path" => req.set_path(&s("value")),
                "query" => req.set_query(&s("value")),
                "body" => req.set_body(s("value")),
                "stash" => req.stash(vec![b'x'; c["n"].as_u64().unwrap_or(0) as usize]),
                "flood" => {
                    for i in 0..c["n"].as_u64().unwrap_or(0) {
                        req.set_header(&format!("x-{i}"), s("value"));
                    }
                }
                "respond" => {
                    return Action::Respond(
                        DirectResponse::new(c["status"].as_u64().unwrap_or(200) as u16)
                            .with_header(&s("name"), s("value")),
                    );
                }
                _ => {}
            }
            Action::Continue
        }

        fn on_response(&self, _: &Request, resp: &mut Response) {
            let c = &self.0;
            if let Some(status) = c["status"].as_u64() {
                resp.set_status(status as u16);
            }
            if let Some(name) = c["name"].as_str() {
                resp.set_header(name, "v");
            }
        }
    }

    fn edit(config: serde_json::Value) {
        let h = init_json::<Editor>(&config).unwrap_or_else(|e| panic!("{e}"));
        let mut req = request().header("x-a", "1").build();
        h.on_request(&mut req);
    }

    fn edit_response(config: serde_json::Value) {
        let h = init_json::<Editor>(&config).unwrap_or_else(|e| panic!("{e}"));
        h.on_response(&request().build(), &mut response(200).build());
    }

    #[test]
    fn allowed_edits_pass() {
        use serde_json::json;
        edit(json!({"op": "set", "name": "X-New", "value": "v\tw"}));
        edit(json!({"op": "append", "name": "x-a", "value": "2"}));
        edit(json!({"op": "remove", "name": "host"}));
        edit(json!({"op": "path", "value": "/a/../b"}));
        edit(json!({"op": "query", "value": "a=1&b=?"}));
        edit(json!({"op": "stash", "n": 4096}));
        edit(json!({"op": "flood", "n": 255, "value": "v"}));
        edit(json!({"op": "respond", "status": 599, "name": "x-a", "value": "v"}));
        edit_response(json!({"status": 200, "name": "x-b"}));
    }

    #[test]
    #[should_panic(expected = "header names must be tokens")]
    fn bad_header_name_panics() {
        edit(serde_json::json!({"op": "set", "name": "x\r\ny", "value": "v"}));
    }

    #[test]
    #[should_panic(expected = "must not hold CR, LF, NUL")]
    fn bad_header_value_panics() {
        edit(serde_json::json!({"op": "append", "name": "x-a", "value": "a\u{0}"}));
    }

    #[test]
    #[should_panic(expected = "cannot be set or removed")]
    fn framing_header_removal_panics() {
        edit(serde_json::json!({"op": "remove", "name": "Transfer-Encoding"}));
    }

    #[test]
    #[should_panic(expected = "at most 256 header fields")]
    fn header_flood_panics() {
        edit(serde_json::json!({"op": "flood", "n": 256, "value": "v"}));
    }

    #[test]
    #[should_panic(expected = "64 KiB of header bytes")]
    fn header_bytes_flood_panics() {
        edit(serde_json::json!({"op": "flood", "n": 2, "value": "v".repeat(40_000)}));
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn relative_path_panics() {
        edit(serde_json::json!({"op": "path", "value": "no-slash"}));
    }

    #[test]
    #[should_panic(expected = "climbs above '/'")]
    fn climbing_path_panics() {
        edit(serde_json::json!({"op": "path", "value": "/../x"}));
    }

    #[test]
    #[should_panic(expected = "a query holds no '#'")]
    fn bad_query_panics() {
        edit(serde_json::json!({"op": "query", "value": "a#b"}));
    }

    #[test]
    #[should_panic(expected = "must declare request_body")]
    fn undeclared_body_edit_panics() {
        edit(serde_json::json!({"op": "body", "value": "x"}));
    }

    #[test]
    #[should_panic(expected = "at most 4 KiB")]
    fn big_stash_panics() {
        edit(serde_json::json!({"op": "stash", "n": 4097}));
    }

    #[test]
    #[should_panic(expected = "direct response: status 101")]
    fn direct_response_status_panics() {
        edit(serde_json::json!({"op": "respond", "status": 101, "name": "x", "value": "v"}));
    }

    #[test]
    #[should_panic(expected = "direct response: header \"content-length\"")]
    fn direct_response_framing_header_panics() {
        edit(serde_json::json!({"op": "respond", "name": "Content-Length", "value": "1"}));
    }

    #[test]
    #[should_panic(expected = "status 600")]
    fn response_status_panics() {
        edit_response(serde_json::json!({"status": 600}));
    }

    #[test]
    #[should_panic(expected = "cannot be set or removed")]
    fn response_framing_header_panics() {
        edit_response(serde_json::json!({"name": "connection"}));
    }

    /// Writes and logs what its config says inside a hook.
    struct Flood(u64);

    #[crate::plugin]
    impl Plugin for Flood {
        fn init(config: Config) -> Result<Self, String> {
            Ok(Self(config.value()?["n"].as_u64().unwrap_or(0)))
        }

        fn on_request(&self, _: &mut Request) -> Action {
            let mut refused = 0;
            for i in 0..self.0 {
                if kv::set(&format!("k{i}"), "v", None).is_err() {
                    refused += 1;
                }
                crate::log::info!("line {i}");
            }
            Action::json(200, &serde_json::json!({ "refused": refused }))
        }
    }

    #[test]
    fn per_call_limits_apply_in_hooks() {
        reset();
        let h = init::<Flood>(r#"{"n": 70}"#).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..2 {
            let resp = h.on_request(&mut request().build()).into_response();
            assert_eq!(resp.body_str(), r#"{"refused":6}"#);
        }
        assert_eq!(take_logs().len(), 32);
        assert_eq!(dropped_logs(), 2 * 54);
        crate::log::info(&"€".repeat(2000));
        let (_, line) = &take_logs()[0];
        assert_eq!(line.len(), 4095, "cut at a character boundary under 4 KiB");
    }
}
