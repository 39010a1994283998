//! FluxGate plugin SDK: write gateway plugins in plain Rust, built as wasm32-wasip2 components.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`]:
//!
//! ```
//! use fluxgate_sdk::{export_plugin, Action, Config, DirectResponse, Plugin, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     header: String,
//! }
//!
//! struct RequireHeader {
//!     header: String,
//! }
//!
//! impl Plugin for RequireHeader {
//!     fn init(config: Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?;
//!         Ok(Self { header: settings.header })
//!     }
//!
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         if req.header(&self.header).is_none() {
//!             return Action::Respond(DirectResponse::error(400, "bad_request", "header missing"));
//!         }
//!         req.set_header("x-checked", "yes");
//!         Action::Continue
//!     }
//! }
//!
//! export_plugin!(RequireHeader);
//! # fn main() {}
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the gateway loads.
//!
//! On other targets (plain `cargo test`) the host functions ([`kv`], [`log`],
//! [`now_ms`]) are backed by in-memory fakes, and [`testing`] runs a plugin's hooks
//! without a gateway.

mod headers;
pub mod kv;
pub mod log;
mod request;
mod response;
mod runtime;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The bindings generated from `wit/plugin.wit`. Plugin authors normally do not need
/// them; [`export_plugin!`] wires a [`Plugin`] to the generated `Guest` trait.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "fluxgate_sdk::bindings",
    });
}

pub use headers::{is_valid_header_name, is_valid_header_value};
pub use request::{Request, RequestEdits};
pub use response::{Action, DirectResponse, Response, ResponseEdits};
pub use serde_json;

#[doc(hidden)]
pub mod __private {
    //! Used by [`crate::export_plugin!`]; not part of the public API.
    pub use crate::runtime::{init, on_request, on_response};
}

/// A gateway plugin.
///
/// The gateway creates pooled instances of the component; each instance calls
/// [`Plugin::init`] once with the route's config, then the hooks for many requests,
/// one at a time. Keep per-instance state in `Cell`/`RefCell` fields if you need it
/// (an instance is single-threaded); state shared between instances belongs in [`kv`].
///
/// A panic traps the instance: the gateway answers that request with its error
/// handling and throws the instance away.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config (the route entry's `config` table). An error
    /// rejects the plugin for that config.
    fn init(config: Config) -> Result<Self, String>;

    /// Which hooks and bodies the plugin wants. The default is [`Info::new`]:
    /// `on_request` only, no bodies. Declare `on_response` if you implement it.
    fn info(&self) -> Info {
        Info::new()
    }

    /// Runs before the upstream is called. Edit `req` and return
    /// [`Action::Continue`], or answer with [`Action::Respond`].
    fn on_request(&self, req: &mut Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// Runs on the upstream's response (only if [`Info::on_response`] is set). Edit
    /// `resp` in place.
    fn on_response(&self, req: &Request, resp: &mut Response) {
        let _ = (req, resp);
    }
}

/// What a plugin wants from the gateway: which hooks to call and which bodies to
/// buffer. Hooks not asked for are skipped.
///
/// ```
/// use fluxgate_sdk::Info;
/// const INFO: Info = Info::new().on_response(true).response_body(true);
/// assert!(INFO.on_request && INFO.on_response && !INFO.request_body);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Call `on_request`.
    pub on_request: bool,
    /// Call `on_response`.
    pub on_response: bool,
    /// Buffer the request body and pass it to `on_request`.
    pub request_body: bool,
    /// Buffer the response body and pass it to `on_response`.
    pub response_body: bool,
}

impl Info {
    /// `on_request` only, no bodies.
    pub const fn new() -> Self {
        Self {
            on_request: true,
            on_response: false,
            request_body: false,
            response_body: false,
        }
    }

    /// No hooks at all (a starting point for [`Info::on_request`] and friends).
    pub const fn none() -> Self {
        Self {
            on_request: false,
            on_response: false,
            request_body: false,
            response_body: false,
        }
    }

    /// Sets whether `on_request` is called.
    pub const fn on_request(mut self, yes: bool) -> Self {
        self.on_request = yes;
        self
    }

    /// Sets whether `on_response` is called.
    pub const fn on_response(mut self, yes: bool) -> Self {
        self.on_response = yes;
        self
    }

    /// Sets whether the request body is buffered for `on_request`.
    pub const fn request_body(mut self, yes: bool) -> Self {
        self.request_body = yes;
        self
    }

    /// Sets whether the response body is buffered for `on_response`.
    pub const fn response_body(mut self, yes: bool) -> Self {
        self.response_body = yes;
        self
    }
}

impl Default for Info {
    fn default() -> Self {
        Self::new()
    }
}

/// A plugin's config: the route entry's `config` table as JSON (`{}` when none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    raw: String,
}

impl Config {
    /// Wraps a JSON text.
    pub fn new(raw: impl Into<String>) -> Self {
        Self { raw: raw.into() }
    }

    /// The JSON text as the gateway sent it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Deserialises the config; an empty text counts as `{}`. The error says what is
    /// wrong, e.g. ``invalid config: missing field `keys` at line 1 column 2``.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let raw = if self.raw.trim().is_empty() {
            "{}"
        } else {
            self.raw.as_str()
        };
        serde_json::from_str(raw).map_err(|e| format!("invalid config: {e}"))
    }

    /// The config as a JSON value.
    pub fn value(&self) -> Result<serde_json::Value, String> {
        self.parse()
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, from the host (a settable
/// fake clock in [`testing`] outside wasm32).
pub fn now_ms() -> u64 {
    sys::now_ms()
}

/// Exports a [`Plugin`] type as the component's `init`, `on-request` and
/// `on-response`. Use it once, in the plugin crate's `lib.rs`:
/// `fluxgate_sdk::export_plugin!(MyPlugin);`
///
/// `init` parses the config and keeps the plugin in a per-instance global; a hook
/// called without a successful `init` answers 500.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct __FluxgateExports;

            impl $crate::bindings::Guest for __FluxgateExports {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::bindings::PluginInfo, ::std::string::String>
                {
                    $crate::__private::init::<$plugin>(config)
                }

                fn on_request(req: $crate::bindings::Request) -> $crate::bindings::RequestAction {
                    $crate::__private::on_request::<$plugin>(req)
                }

                fn on_response(
                    req: $crate::bindings::Request,
                    resp: $crate::bindings::Response,
                ) -> $crate::bindings::ResponseEdits {
                    $crate::__private::on_response::<$plugin>(req, resp)
                }
            }

    $crate::bindings::export!(__FluxgateExports with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Settings {
        keys: Vec<String>,
        #[serde(default)]
        header: Option<String>,
    }

    #[test]
    fn config_parse() {
        let c = Config::new(r#"{"keys":["a"]}"#);
        let s: Settings = c.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.keys, vec!["a"]);
        assert_eq!(s.header, None);
        let err = Config::new("{}")
            .parse::<Settings>()
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("invalid config: missing field `keys`"),
            "{err}"
        );
        assert_eq!(Config::new("").value(), Ok(serde_json::json!({})));
        assert_eq!(Config::new("{}").raw(), "{}");
    }

    #[test]
    fn info_builders() {
        assert_eq!(Info::default(), Info::new());
        let i = Info::none().on_response(true).response_body(true);
        assert!(!i.on_request && i.on_response && !i.request_body && i.response_body);
        let i = Info::new().request_body(true);
        assert!(i.on_request && i.request_body && !i.on_response);
    }
}
