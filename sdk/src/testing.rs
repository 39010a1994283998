//! A host-free test harness: run a plugin's hooks natively with `cargo test`.
//!
//! Outside wasm32 the SDK's host functions are backed by fakes kept per thread (each
//! `#[test]` runs on its own thread, so tests do not see each other's state):
//! an in-memory [`crate::kv`] store with TTLs, captured [`crate::log`] lines
//! ([`logs`]) and a clock ([`set_now_ms`], [`advance_ms`]; the system clock until set).
//!
//! ```
//! use fluxgate_sdk::{testing, Action, Config, Plugin, Request};
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn init(_: Config) -> Result<Self, String> { Ok(Hello) }
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         req.set_header("x-hello", "world");
//!         Action::Continue
//!     }
//! }
//!
//! let plugin = testing::init::<Hello>("{}").unwrap_or_else(|e| panic!("{e}"));
//! let req = testing::request().method("GET").path("/x").header("x-api-key", "k").build();
//! let edits = plugin.on_request(&req).into_edits();
//! assert_eq!(edits.set_header("x-hello"), Some("world"));
//! ```

use crate::bindings::RequestAction;
use crate::bindings::fluxgate::plugin::types as wit;
use crate::log::Level;
use crate::request::RequestParts;
use crate::runtime::{
    from_wire_headers, instantiate, run_on_request, run_on_response, to_wire_headers,
};
use crate::{DirectResponse, Info, Plugin, RequestEdits, ResponseEdits};

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

/// Builds a plugin from a JSON config, as the gateway's `init` would.
pub fn init<P: Plugin>(config: &str) -> Result<Harness<P>, String> {
    let (plugin, info) = instantiate::<P>(config)?;
    Ok(Harness { plugin, info })
}

/// Builds a plugin from a JSON value (e.g. `serde_json::json!({...})`).
pub fn init_json<P: Plugin>(config: &serde_json::Value) -> Result<Harness<P>, String> {
    init(&config.to_string())
}

/// A test request builder; defaults: `GET /`, no query, headers or body, client
/// `127.0.0.1`, route `test`.
pub fn request() -> RequestBuilder {
    RequestBuilder {
        parts: RequestParts {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: Vec::new(),
            client_ip: "127.0.0.1".into(),
            route: "test".into(),
            params: Vec::new(),
            body: None,
        },
    }
}

/// A test upstream-response builder with this status and no headers or body.
pub fn response(status: u16) -> ResponseBuilder {
    ResponseBuilder {
        response: TestResponse {
            status,
            headers: Vec::new(),
            body: None,
        },
    }
}

/// A plugin built by [`init`], whose hooks run through the same code path as in the
/// gateway (wire types in, wire types out).
///
/// Like the gateway, it honours the plugin's [`Info`]: a hook not asked for is not
/// called (`on_request` continues unchanged, `on_response` makes no edits), and a body
/// not asked for is not passed.
pub struct Harness<P> {
    plugin: P,
    info: Info,
}

impl<P: Plugin> Harness<P> {
    /// What the plugin asked for.
    pub fn info(&self) -> Info {
        self.info
    }

    /// The plugin itself.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// Runs `on_request`.
    pub fn on_request(&self, req: &TestRequest) -> RequestOutcome {
        if !self.info.on_request {
            return RequestOutcome::Continue(RequestEdits::default());
        }
        match run_on_request(&self.plugin, self.wire_request(req)) {
            RequestAction::Continue(e) => RequestOutcome::Continue(RequestEdits {
                set_headers: from_wire_headers(e.set_headers),
                remove_headers: e.remove_headers,
                path: e.path,
                query: e.query,
                body: e.body,
            }),
            RequestAction::Respond(r) => {
                let mut direct = DirectResponse::new(r.status).with_body(r.body);
                for h in r.headers {
                    direct = direct.with_header(&h.name, h.value);
                }
                RequestOutcome::Respond(direct)
            }
        }
    }

    /// Runs `on_response` for `req` (the request as the plugin should see it) and the
    /// upstream's `resp`.
    pub fn on_response(&self, req: &TestRequest, resp: &TestResponse) -> ResponseEdits {
        if !self.info.on_response {
            return ResponseEdits::default();
        }
        let wire_resp = wit::Response {
            status: resp.status,
            headers: to_wire_headers(resp.headers.clone()),
            body: if self.info.response_body {
                resp.body.clone()
            } else {
                None
            },
        };
        let e = run_on_response(&self.plugin, self.wire_request(req), wire_resp);
        ResponseEdits {
            status: e.status,
            set_headers: from_wire_headers(e.set_headers),
            remove_headers: e.remove_headers,
            body: e.body,
        }
    }

    fn wire_request(&self, req: &TestRequest) -> wit::Request {
        let p = &req.parts;
        wit::Request {
            method: p.method.clone(),
            path: p.path.clone(),
            query: p.query.clone(),
            headers: to_wire_headers(p.headers.clone()),
            client_ip: p.client_ip.clone(),
            route: p.route.clone(),
            params: p.params.clone(),
            body: if self.info.request_body {
                p.body.clone()
            } else {
                None
            },
        }
    }
}

/// What `on_request` decided, in SDK types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Continue with these edits.
    Continue(RequestEdits),
    /// Answer with this response.
    Respond(DirectResponse),
}

impl RequestOutcome {
    /// True for [`RequestOutcome::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue(_))
    }

    /// The edits, if the plugin continued.
    pub fn edits(&self) -> Option<&RequestEdits> {
        match self {
            Self::Continue(e) => Some(e),
            Self::Respond(_) => None,
        }
    }

    /// The direct response, if the plugin answered.
    pub fn response(&self) -> Option<&DirectResponse> {
        match self {
            Self::Continue(_) => None,
            Self::Respond(r) => Some(r),
        }
    }

    /// The edits; panics (failing the test) if the plugin answered instead.
    #[track_caller]
    pub fn into_edits(self) -> RequestEdits {
        match self {
            Self::Continue(e) => e,
            Self::Respond(r) => panic!(
                "expected the plugin to continue, it answered {} {}",
                r.status(),
                r.body_str()
            ),
        }
    }

    /// The direct response; panics (failing the test) if the plugin continued.
    #[track_caller]
    pub fn into_response(self) -> DirectResponse {
        match self {
            Self::Respond(r) => r,
            Self::Continue(e) => panic!("expected the plugin to answer, it continued with {e:?}"),
        }
    }
}

/// Builds a [`TestRequest`]; see [`request`].
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    parts: RequestParts,
}

impl RequestBuilder {
    /// The method.
    pub fn method(mut self, method: &str) -> Self {
        self.parts.method = method.to_string();
        self
    }

    /// The path; a query after '?' becomes the query string.
    pub fn path(mut self, path: &str) -> Self {
        match path.split_once('?') {
            Some((path, query)) => {
                self.parts.path = path.to_string();
                self.parts.query = Some(query.to_string());
            }
            None => self.parts.path = path.to_string(),
        }
        self
    }

    /// The query string (without '?').
    pub fn query(mut self, query: &str) -> Self {
        self.parts.query = Some(query.to_string());
        self
    }

    /// Adds a header (name lower-cased, as the gateway sends them).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.parts
            .headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The client IP.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.parts.client_ip = ip.to_string();
        self
    }

    /// The matched route's name.
    pub fn route(mut self, route: &str) -> Self {
        self.parts.route = route.to_string();
        self
    }

    /// Adds a route path parameter.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.parts
            .params
            .push((name.to_string(), value.to_string()));
        self
    }

    /// The body (passed only to plugins that ask for it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.parts.body = Some(body.into());
        self
    }

    /// The request.
    pub fn build(self) -> TestRequest {
        TestRequest { parts: self.parts }
    }
}

/// A request for the harness; see [`request`].
#[derive(Clone, Debug)]
pub struct TestRequest {
    parts: RequestParts,
}

impl TestRequest {
    /// The request as the next plugin or the upstream sees it after `edits`, applied
    /// the way the gateway does: removals first, then each set replaces its name.
    pub fn with_edits(&self, edits: &RequestEdits) -> TestRequest {
        let mut parts = self.parts.clone();
        parts
            .headers
            .retain(|(n, _)| !edits.remove_headers.iter().any(|r| r == n));
        for (name, value) in &edits.set_headers {
            parts.headers.retain(|(n, _)| n != name);
            parts.headers.push((name.clone(), value.clone()));
        }
        if let Some(path) = &edits.path {
            parts.path = path.clone();
        }
        if let Some(query) = &edits.query {
            parts.query = (!query.is_empty()).then(|| query.clone());
        }
        if let Some(body) = &edits.body {
            parts.body = Some(body.clone());
        }
        TestRequest { parts }
    }

    /// The first value of header `name` (any case) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parts
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.parts.path
    }

    /// The query string.
    pub fn query(&self) -> Option<&str> {
        self.parts.query.as_deref()
    }
}

/// Builds a [`TestResponse`]; see [`response`].
#[derive(Clone, Debug)]
pub struct ResponseBuilder {
    response: TestResponse,
}

impl ResponseBuilder {
    /// Adds a header (name lower-cased).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.response
            .headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The body (passed only to plugins that ask for it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.response.body = Some(body.into());
        self
    }

    /// The response.
    pub fn build(self) -> TestResponse {
        self.response
    }
}

/// An upstream response for the harness; see [`response`].
#[derive(Clone, Debug)]
pub struct TestResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

/// The per-thread fakes behind the SDK's host functions outside wasm32.
pub(crate) mod fake {
    use crate::log::Level;
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
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State::default());
    }

    pub(crate) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with_borrow_mut(f)
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
        with(|s| s.logs.push((level, message.to_string())));
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

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        let now = now_ms();
        with(|s| live(s, key, now))
    }

    pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let now = now_ms();
        let expiry = ttl_ms.map(|t| now.saturating_add(t));
        with(|s| s.kv.insert(key.to_string(), (value.to_vec(), expiry)));
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
    pub(crate) fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let now = now_ms();
        with(|s| {
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
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Config, Request, Response, kv, now_ms};

    #[test]
    fn kv_with_ttl_and_clock() {
        reset();
        set_now_ms(1_000);
        assert_eq!(now_ms(), 1_000);
        kv::set("a", "1", Some(100));
        kv::set("b", b"2", None);
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
        assert_eq!(kv::incr("c", 1, Some(10)), 1);
        assert_eq!(kv::incr("c", 5, Some(1_000)), 6);
        assert_eq!(kv::incr("c", 0, None), 6);
        assert_eq!(kv::get_string("c").as_deref(), Some("6"));
        set_now_ms(10);
        assert_eq!(kv::incr("c", -1, None), -1, "expired key counts from 0");
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
            Info::new().on_response(true).request_body(true)
        }

        fn on_request(&self, req: &mut Request) -> Action {
            if req.path() == self.reject {
                return Action::json(403, &serde_json::json!({"error": "forbidden"}));
            }
            let body_len = req.body().map_or(0, <[u8]>::len);
            req.set_header("x-body-len", body_len.to_string());
            let id = req.param("id").unwrap_or("none").to_string();
            req.set_header("x-id", id);
            req.remove_header("x-secret");
            req.set_query("");
            Action::Continue
        }

        fn on_response(&self, req: &Request, resp: &mut Response) {
            if let Some(id) = req.header("x-id") {
                resp.set_header("x-seen-id", id);
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
        assert!(h.info().on_response);
        assert_eq!(h.plugin().reject, "/no");

        let denied = h.on_request(&request().path("/no").build()).into_response();
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.header("Content-Type"), Some("application/json"));
        assert_eq!(denied.body_str(), r#"{"error":"forbidden"}"#);

        let req = request()
            .method("POST")
            .path("/users/7?x=1")
            .param("id", "7")
            .header("X-Secret", "s")
            .body("abc")
            .build();
        let outcome = h.on_request(&req);
        assert!(outcome.is_continue());
        assert!(outcome.response().is_none());
        let edits = outcome.into_edits();
        assert_eq!(edits.set_header("x-body-len"), Some("3"));
        assert_eq!(edits.set_header("x-id"), Some("7"));
        assert_eq!(edits.remove_headers, vec!["x-secret".to_string()]);
        assert_eq!(edits.query.as_deref(), Some(""));
        assert_eq!(edits.path, None);

        let forwarded = req.with_edits(&edits);
        assert_eq!(forwarded.header("x-secret"), None);
        assert_eq!(forwarded.header("x-id"), Some("7"));
        assert_eq!(forwarded.query(), None);
        assert_eq!(forwarded.path(), "/users/7");

        // The response body is not passed: the plugin did not ask for it.
        let resp = response(200).header("Server", "up").body("x").build();
        let edits = h.on_response(&forwarded, &resp);
        assert_eq!(edits.status, Some(202));
        assert_eq!(edits.set_header("x-seen-id"), Some("7"));
        assert_eq!(edits.body, None);
    }

    struct RequestOnly;

    impl Plugin for RequestOnly {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }

        fn on_request(&self, req: &mut Request) -> Action {
            // Not asked for: the body is withheld.
            req.set_header("x-has-body", req.body().is_some().to_string());
            Action::Continue
        }

        fn on_response(&self, _: &Request, resp: &mut Response) {
            resp.set_status(500);
        }
    }

    #[test]
    fn harness_honours_info() {
        let h = init::<RequestOnly>("").unwrap_or_else(|e| panic!("{e}"));
        let req = request().body("abc").build();
        let edits = h.on_request(&req).into_edits();
        assert_eq!(edits.set_header("x-has-body"), Some("false"));
        // on_response not declared: not called.
        assert!(h.on_response(&req, &response(200).build()).is_empty());
    }
}
