//! The glue between the generated bindings and a [`Plugin`]: the instance slot, the
//! handle backends and the export functions `__export_plugin!` calls.

use crate::backend::{Header, RequestBackend, ResponseBackend};
use crate::bindings::fluxgate::plugin::types as wit;
use crate::bindings::{PluginInfo, RequestAction};
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

/// What `init` tells the gateway: the hooks the impl defines ([`Plugin::HOOKS`]) that
/// [`Plugin::info`] leaves on, and the bodies it declares.
pub(crate) fn effective_info<P: Plugin>(plugin: &P) -> Info {
    let declared = plugin.info();
    Info {
        on_request: P::HOOKS.on_request && declared.on_request,
        on_response: P::HOOKS.on_response && declared.on_response,
        request_body: declared.request_body,
        response_body: declared.response_body,
    }
}

/// The export `init`: builds the plugin and keeps it in the instance slot.
pub fn init<P: Plugin>(config: String) -> Result<PluginInfo, String> {
    SLOT.with_borrow_mut(|slot| *slot = None);
    let plugin = P::init(Config::new(config))?;
    let info = effective_info(&plugin);
    SLOT.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
    Ok(PluginInfo {
        on_request: info.on_request,
        on_response: info.on_response,
        request_body: info.request_body,
        response_body: info.response_body,
    })
}

/// The export `on-request`; a 500 if `init` did not succeed.
pub fn on_request<P: Plugin>(req: &wit::Request) -> RequestAction {
    SLOT.with_borrow(
        |slot| match slot.as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(plugin) => {
                let mut handle = HostRequest(req);
                match plugin.on_request(&mut Request::new(&mut handle)) {
                    Action::Continue => RequestAction::Continue,
                    Action::Respond(response) => {
                        let (status, headers, body) = response.into_parts();
                        RequestAction::Respond(wit::DirectResponse {
                            status,
                            headers,
                            body,
                        })
                    }
                }
            }
            None => RequestAction::Respond(wit::DirectResponse {
                status: 500,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: error_body("plugin_error", NOT_INITIALISED),
            }),
        },
    )
}

/// The export `on-response`; turns the response into a 500 if `init` did not succeed.
pub fn on_response<P: Plugin>(req: &wit::Request, resp: &wit::Response) {
    SLOT.with_borrow(
        |slot| match slot.as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(plugin) => {
                let mut req_handle = HostRequest(req);
                let mut resp_handle = HostResponse(resp);
                plugin.on_response(
                    &Request::new(&mut req_handle),
                    &mut Response::new(&mut resp_handle),
                );
            }
            None => {
                resp.set_status(500);
                resp.set_header("content-type", b"application/json");
                resp.set_body(&error_body("plugin_error", NOT_INITIALISED));
            }
        },
    );
}

/// The gateway's request handle, borrowed for one hook call.
struct HostRequest<'h>(&'h wit::Request);

impl RequestBackend for HostRequest<'_> {
    fn method(&self) -> String {
        self.0.method()
    }
    fn path(&self) -> String {
        self.0.path()
    }
    fn query(&self) -> Option<String> {
        self.0.query()
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(name)
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_values(name)
    }
    fn headers(&self) -> Vec<Header> {
        self.0.headers()
    }
    fn client_ip(&self) -> String {
        self.0.client_ip()
    }
    fn route(&self) -> String {
        self.0.route()
    }
    fn param(&self, name: &str) -> Option<String> {
        self.0.param(name)
    }
    fn params(&self) -> Vec<(String, String)> {
        self.0.params()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.0.body()
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.0.set_header(name, value);
    }
    fn append_header(&mut self, name: &str, value: &[u8]) {
        self.0.append_header(name, value);
    }
    fn remove_header(&mut self, name: &str) {
        self.0.remove_header(name);
    }
    fn set_path(&mut self, path: &str) {
        self.0.set_path(path);
    }
    fn set_query(&mut self, query: Option<&str>) {
        self.0.set_query(query);
    }
    fn set_body(&mut self, body: &[u8]) {
        self.0.set_body(body);
    }
    fn stash(&mut self, value: &[u8]) {
        self.0.stash(value);
    }
    fn stashed(&self) -> Option<Vec<u8>> {
        self.0.stashed()
    }
}

/// The gateway's response handle, borrowed for one hook call.
struct HostResponse<'h>(&'h wit::Response);

impl ResponseBackend for HostResponse<'_> {
    fn status(&self) -> u16 {
        self.0.status()
    }
    fn set_status(&mut self, status: u16) {
        self.0.set_status(status);
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(name)
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_values(name)
    }
    fn headers(&self) -> Vec<Header> {
        self.0.headers()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.0.body()
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.0.set_header(name, value);
    }
    fn append_header(&mut self, name: &str, value: &[u8]) {
        self.0.append_header(name, value);
    }
    fn remove_header(&mut self, name: &str) {
        self.0.remove_header(name);
    }
    fn set_body(&mut self, body: &[u8]) {
        self.0.set_body(body);
    }
}
