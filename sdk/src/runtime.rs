//! The glue between the generated bindings and a [`Plugin`]: conversions, instance slot, hook runners.
//!
//! Used by `export_plugin!` (through `__private`) and by `testing`.

use crate::bindings::fluxgate::plugin::types as wit;
use crate::bindings::{PluginInfo, RequestAction};
use crate::request::RequestParts;
use crate::response::error_body;
use crate::{Action, Config, Info, Plugin, Request, Response};
use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// The instance's plugin, set by a successful `init`. A component instance is
    /// single-threaded, so a thread-local is the instance global.
    static SLOT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// The message hooks answer with when `init` did not succeed.
const NOT_INITIALISED: &str = "plugin hook called before a successful init";

/// Builds a plugin from its JSON config.
pub(crate) fn instantiate<P: Plugin>(config: &str) -> Result<(P, Info), String> {
    let plugin = P::init(Config::new(config))?;
    let info = plugin.info();
    Ok((plugin, info))
}

/// Runs `on_request` on a wire request and turns the outcome into the wire action.
pub(crate) fn run_on_request<P: Plugin>(plugin: &P, req: wit::Request) -> RequestAction {
    let mut view = Request::from_parts(request_parts(req));
    match plugin.on_request(&mut view) {
        Action::Continue => {
            let edits = view.edits();
            RequestAction::Continue(wit::RequestEdits {
                set_headers: to_wire_headers(edits.set_headers),
                remove_headers: edits.remove_headers,
                path: edits.path,
                query: edits.query,
                body: edits.body,
            })
        }
        Action::Respond(response) => {
            let (status, headers, body) = response.into_parts();
            RequestAction::Respond(wit::DirectResponse {
                status,
                headers: to_wire_headers(headers),
                body,
            })
        }
    }
}

/// Runs `on_response` on a wire request/response and returns the wire edits.
pub(crate) fn run_on_response<P: Plugin>(
    plugin: &P,
    req: wit::Request,
    resp: wit::Response,
) -> wit::ResponseEdits {
    let req = Request::from_parts(request_parts(req));
    let mut view = Response::from_parts(resp.status, from_wire_headers(resp.headers), resp.body);
    plugin.on_response(&req, &mut view);
    let edits = view.edits();
    wit::ResponseEdits {
        status: edits.status,
        set_headers: to_wire_headers(edits.set_headers),
        remove_headers: edits.remove_headers,
        body: edits.body,
    }
}

/// The export `init`: builds the plugin and keeps it in the instance slot.
pub fn init<P: Plugin>(config: String) -> Result<PluginInfo, String> {
    SLOT.with_borrow_mut(|slot| *slot = None);
    let (plugin, info) = instantiate::<P>(&config)?;
    SLOT.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
    Ok(PluginInfo {
        on_request: info.on_request,
        on_response: info.on_response,
        request_body: info.request_body,
        response_body: info.response_body,
    })
}

/// The export `on-request`; 500 if `init` did not succeed.
pub fn on_request<P: Plugin>(req: wit::Request) -> RequestAction {
    SLOT.with_borrow(
        |slot| match slot.as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(plugin) => run_on_request(plugin, req),
            None => RequestAction::Respond(wit::DirectResponse {
                status: 500,
                headers: vec![json_content_type()],
                body: error_body("plugin_error", NOT_INITIALISED),
            }),
        },
    )
}

/// The export `on-response`; turns the response into a 500 if `init` did not succeed.
pub fn on_response<P: Plugin>(req: wit::Request, resp: wit::Response) -> wit::ResponseEdits {
    SLOT.with_borrow(
        |slot| match slot.as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(plugin) => run_on_response(plugin, req, resp),
            None => wit::ResponseEdits {
                status: Some(500),
                set_headers: vec![json_content_type()],
                remove_headers: Vec::new(),
                body: Some(error_body("plugin_error", NOT_INITIALISED)),
            },
        },
    )
}

fn json_content_type() -> wit::Header {
    wit::Header {
        name: "content-type".into(),
        value: b"application/json".to_vec(),
    }
}

fn request_parts(req: wit::Request) -> RequestParts {
    RequestParts {
        method: req.method,
        path: req.path,
        query: req.query,
        headers: from_wire_headers(req.headers),
        client_ip: req.client_ip,
        route: req.route,
        params: req.params,
        body: req.body,
    }
}

pub(crate) fn from_wire_headers(headers: Vec<wit::Header>) -> Vec<(String, Vec<u8>)> {
    headers.into_iter().map(|h| (h.name, h.value)).collect()
}

pub(crate) fn to_wire_headers(headers: Vec<(String, Vec<u8>)>) -> Vec<wit::Header> {
    headers
        .into_iter()
        .map(|(name, value)| wit::Header { name, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tagger;

    impl Plugin for Tagger {
        fn init(config: Config) -> Result<Self, String> {
            if config.raw().contains("fail") {
                return Err("refused".into());
            }
            Ok(Self)
        }

        fn info(&self) -> Info {
            Info::new().on_response(true)
        }

        fn on_request(&self, req: &mut Request) -> Action {
            req.set_header("x-tag", "a");
            Action::Continue
        }

        fn on_response(&self, _req: &Request, resp: &mut Response) {
            resp.set_header("x-tag", "a");
        }
    }

    fn wire_request() -> wit::Request {
        wit::Request {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: vec![],
            client_ip: "127.0.0.1".into(),
            route: "r".into(),
            params: vec![],
            body: None,
        }
    }

    fn wire_response() -> wit::Response {
        wit::Response {
            status: 200,
            headers: vec![],
            body: None,
        }
    }

    // One test, because the slot is per thread and the steps depend on each other.
    #[test]
    fn slot_lifecycle() {
        // Before init: 500s.
        match on_request::<Tagger>(wire_request()) {
            RequestAction::Respond(r) => assert_eq!(r.status, 500),
            RequestAction::Continue(_) => panic!("continued before init"),
        }
        assert_eq!(
            on_response::<Tagger>(wire_request(), wire_response()).status,
            Some(500)
        );

        // A successful init.
        let info = init::<Tagger>("{}".into()).unwrap_or_else(|e| panic!("{e}"));
        assert!(info.on_request && info.on_response && !info.request_body);
        match on_request::<Tagger>(wire_request()) {
            RequestAction::Continue(e) => {
                assert_eq!(e.set_headers.len(), 1);
                assert_eq!(e.set_headers[0].name, "x-tag");
                assert_eq!(e.set_headers[0].value, b"a");
            }
            RequestAction::Respond(_) => panic!("responded after init"),
        }
        let edits = on_response::<Tagger>(wire_request(), wire_response());
        assert_eq!(edits.status, None);
        assert_eq!(edits.set_headers[0].name, "x-tag");

        // A failed re-init leaves no plugin behind.
        assert_eq!(
            init::<Tagger>("fail".into()).err().as_deref(),
            Some("refused")
        );
        assert!(matches!(
            on_request::<Tagger>(wire_request()),
            RequestAction::Respond(_)
        ));
    }
}
