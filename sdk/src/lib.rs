//! FluxGate plugin SDK: write gateway plugins in plain Rust, built as wasm32-wasip2
//! components.
//!
//! This is `fluxgate-sdk` 0.2, for the plugin contract `fluxgate:plugin@0.2.0`
//! (`wit/plugin.wit`). The crate's version moves with the WIT package's: an SDK 0.2.x
//! builds components the gateways speaking `fluxgate:plugin@0.2.x` load.
//!
//! A plugin is a type implementing [`Plugin`], with the [`plugin`] attribute on the
//! impl block. The hooks receive views of the request and the response, which the
//! gateway owns: every read and every edit is a call to the gateway, so a hook pays for
//! what it reads, not for the whole message.
//!
//! ```
//! use fluxgate_sdk::{Action, Config, DirectResponse, Info, Plugin, Request, Response};
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     header: String,
//! }
//!
//! /// Requires a header, forwards it as `x-checked`, and reports on the response how
//! /// long the request was in the gateway and upstream.
//! struct RequireHeader {
//!     header: String,
//! }
//!
//! #[fluxgate_sdk::plugin]
//! impl Plugin for RequireHeader {
//!     fn init(config: Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?;
//!         if !fluxgate_sdk::is_valid_header_name(&settings.header) {
//!             return Err(format!("{:?} is not a header name", settings.header));
//!         }
//!         Ok(Self { header: settings.header })
//!     }
//!
//!     // Optional: the default is Info::new() (no bodies).
//!     fn info(&self) -> Info {
//!         Info::new()
//!     }
//!
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         let Some(value) = req.header(&self.header) else {
//!             return Action::Respond(DirectResponse::error(400, "bad_request", "header missing"));
//!         };
//!         if fluxgate_sdk::is_valid_header_value(value.as_bytes()) {
//!             req.set_header("x-checked", value);
//!         }
//!         req.stash(fluxgate_sdk::now_ms().to_string());
//!         Action::Continue
//!     }
//!
//!     fn on_response(&self, req: &Request, resp: &mut Response) {
//!         let started: Option<u64> = req.stashed_str().and_then(|s| s.parse().ok());
//!         if let Some(started) = started {
//!             let ms = fluxgate_sdk::now_ms().saturating_sub(started);
//!             resp.set_header("x-took-ms", ms.to_string());
//!         }
//!     }
//! }
//!
//! // Its unit test, with plain `cargo test`:
//! use fluxgate_sdk::testing;
//!
//! testing::set_now_ms(1_000);
//! let plugin = testing::init::<RequireHeader>(r#"{"header": "x-user"}"#).unwrap();
//! assert!(plugin.info().on_request && plugin.info().on_response);
//!
//! let mut req = testing::request().path("/orders").header("X-User", "alice").build();
//! assert!(plugin.on_request(&mut req).is_continue());
//! assert_eq!(req.header("x-checked"), Some("alice"));
//!
//! testing::advance_ms(7);
//! let mut resp = testing::response(200).build();
//! plugin.on_response(&req, &mut resp);
//! assert_eq!(resp.header("x-took-ms"), Some("7"));
//!
//! let denied = plugin.on_request(&mut testing::request().build()).into_response();
//! assert_eq!(denied.status(), 400);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the gateway loads (the crate needs
//! `crate-type = ["cdylib", "rlib"]`).
//!
//! # Hooks and bodies
//! The gateway calls a hook only if the plugin's `init` asks for it, and buffers a body
//! only if it asks for it. The [`plugin`] attribute sees which of `on_request` and
//! `on_response` the impl block defines and records them in [`Plugin::HOOKS`]: a hook
//! that is written is called, one that is not is never called for nothing. Bodies are
//! declared by [`Plugin::info`] ([`Info::request_body`], [`Info::response_body`]); the
//! same method may also turn a defined hook off for some configs
//! ([`Info::on_request`], [`Info::on_response`]: they can only narrow `HOOKS`).
//!
//! # Rules
//! The gateway refuses some edits (header names must be tokens, values must not hold
//! control characters, framing headers are its own, at most 256 header fields and
//! 64 KiB of header bytes, status 200-599, paths start with '/', a stash holds at most
//! 4 KiB: see [`rules`]). An edit that breaks one fails the hook call like a trap: the
//! request gets the gateway's `plugins.on_error` outcome. The test double applies the
//! same rules and panics naming the rule, so a unit test fails where the gateway would.
//! Check values you do not control first ([`is_valid_header_name`],
//! [`is_valid_header_value`], [`is_reserved_header`]).
//!
//! # Testing
//! On other targets than wasm32 (plain `cargo test`) the host functions ([`kv`],
//! [`log`], [`now_ms`]) are backed by in-memory fakes, and [`testing`] runs a plugin's
//! hooks the way the gateway would: only the hooks and bodies it asks for, the stash
//! carried from `on_request` to `on_response`, the gateway's rules enforced.

#![warn(missing_docs)]

// The `plugin` attribute names `::fluxgate_sdk`; this makes that path work inside the
// crate too (its own tests).
extern crate self as fluxgate_sdk;

mod backend;
pub mod kv;
pub mod log;
mod request;
mod response;
pub mod rules;
mod runtime;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The bindings generated from `wit/plugin.wit`. Plugin authors do not need them: the
/// [`plugin`] attribute wires a [`Plugin`] to the generated `Guest` trait.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    // `wit` is a link to the repository's `wit/` (the one contract), so the packaged
    // crate and git checkouts carry it too.
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "fluxgate_sdk::bindings",
    });
}

pub use backend::{Header, RequestBackend, ResponseBackend};
/// Marks a plugin's `impl Plugin for MyPlugin { ... }` block: records the hooks it
/// defines in [`Plugin::HOOKS`] and exports `MyPlugin` as the component's `init`,
/// `on-request` and `on-response` (on wasm32; elsewhere only `HOOKS` is set). Use it on
/// exactly one impl per plugin crate; the type must not be generic.
///
/// `HOOKS` is the attribute's to set:
///
/// ```compile_fail
/// use fluxgate_sdk::{Config, Hooks, Plugin};
/// struct P;
/// #[fluxgate_sdk::plugin]
/// impl Plugin for P {
///     const HOOKS: Hooks = Hooks::BOTH; // error: HOOKS is set by #[fluxgate_sdk::plugin]
///     fn init(_: Config) -> Result<Self, String> { Ok(P) }
/// }
/// ```
pub use fluxgate_sdk_macros::plugin;
pub use request::Request;
pub use response::{Action, DirectResponse, Response};
pub use rules::{is_reserved_header, is_valid_header_name, is_valid_header_value};
pub use serde_json;

#[doc(hidden)]
pub mod __private {
    //! Used by [`crate::__export_plugin!`]; not part of the public API.
    pub use crate::runtime::{init, on_request, on_response};
}

/// A gateway plugin. Put [`plugin`] on the impl: `#[fluxgate_sdk::plugin] impl Plugin
/// for MyPlugin { ... }`.
///
/// The gateway creates pooled instances of the component; each instance calls
/// [`Plugin::init`] once with the route's config, then the hooks for many requests,
/// one at a time. Keep per-instance state in `Cell`/`RefCell` fields if you need it
/// (an instance is single-threaded); state shared between instances belongs in [`kv`],
/// and a value for the same request's `on_response` in [`Request::stash`].
///
/// A panic traps the instance: the gateway answers that request with its error
/// handling (`plugins.on_error`) and throws the instance away.
pub trait Plugin: Sized + 'static {
    /// The hooks the impl defines, set by the [`plugin`] attribute; do not set it
    /// yourself. Without the attribute it is [`Hooks::BOTH`]: a hook is then called
    /// even if only its default (which does nothing) exists, never skipped.
    const HOOKS: Hooks = Hooks::BOTH;

    /// Builds the plugin from its config (the chain entry's `config` table as JSON,
    /// `{}` when none). An error rejects the plugin for that config.
    fn init(config: Config) -> Result<Self, String>;

    /// Which bodies the plugin wants buffered, and optionally a defined hook to skip
    /// for this config. The default is [`Info::new`]: the hooks in [`Plugin::HOOKS`],
    /// no bodies.
    fn info(&self) -> Info {
        Info::new()
    }

    /// Runs before the upstream is called, in chain order. Read and edit `req`, then
    /// return [`Action::Continue`] or answer with [`Action::Respond`].
    fn on_request(&self, req: &mut Request<'_>) -> Action {
        let _ = req;
        Action::Continue
    }

    /// Runs on the answer, in reverse chain order: `req` is the request as it went
    /// upstream (read-only; [`Request::stashed`] reads what `on_request` stashed),
    /// `resp` the answer so far, to edit in place.
    fn on_response(&self, req: &Request<'_>, resp: &mut Response<'_>) {
        let _ = (req, resp);
    }
}

/// Which hooks a [`Plugin`] impl defines: [`Plugin::HOOKS`], set by the [`plugin`]
/// attribute.
///
/// ```
/// use fluxgate_sdk::{Action, Config, Hooks, Plugin, Request};
/// struct OnlyRequests;
/// #[fluxgate_sdk::plugin]
/// impl Plugin for OnlyRequests {
///     fn init(_: Config) -> Result<Self, String> { Ok(Self) }
///     fn on_request(&self, _: &mut Request) -> Action { Action::Continue }
/// }
/// assert_eq!(OnlyRequests::HOOKS, Hooks::ON_REQUEST);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hooks {
    /// The impl defines `on_request`.
    pub on_request: bool,
    /// The impl defines `on_response`.
    pub on_response: bool,
}

impl Hooks {
    /// Both hooks (the default of an impl without the attribute).
    pub const BOTH: Self = Self {
        on_request: true,
        on_response: true,
    };
    /// `on_request` only.
    pub const ON_REQUEST: Self = Self {
        on_request: true,
        on_response: false,
    };
    /// `on_response` only.
    pub const ON_RESPONSE: Self = Self {
        on_request: false,
        on_response: true,
    };
    /// Neither hook.
    pub const NONE: Self = Self {
        on_request: false,
        on_response: false,
    };
}

/// What a plugin asks of the gateway besides its hooks, returned by [`Plugin::info`]:
/// the bodies to buffer, and which defined hooks to leave on for this config.
///
/// `init` tells the gateway `HOOKS.on_request && info.on_request` (same for
/// `on_response`) and the bodies as declared; the test harness's
/// [`testing::Harness::info`] shows that result. The hook switches can only turn a
/// defined hook off (e.g. header-rewrite without response rules skips `on_response`),
/// never on a hook the impl does not define.
///
/// ```
/// use fluxgate_sdk::Info;
/// const INFO: Info = Info::new().response_body(true);
/// assert!(INFO.on_request && INFO.on_response && INFO.response_body && !INFO.request_body);
/// assert!(!Info::new().on_response(false).on_response);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Info {
    /// Leave `on_request` on (if the impl defines it).
    pub on_request: bool,
    /// Leave `on_response` on (if the impl defines it).
    pub on_response: bool,
    /// Buffer the request body so [`Request::body`] returns it (up to
    /// `plugins.max_body_bytes`); needed for [`Request::set_body`] too.
    pub request_body: bool,
    /// Buffer the response body so [`Response::body`] returns it.
    pub response_body: bool,
}

impl Info {
    /// Every hook the impl defines, no bodies.
    pub const fn new() -> Self {
        Self {
            on_request: true,
            on_response: true,
            request_body: false,
            response_body: false,
        }
    }

    /// Leaves `on_request` on (the default) or turns it off for this config.
    pub const fn on_request(mut self, yes: bool) -> Self {
        self.on_request = yes;
        self
    }

    /// Leaves `on_response` on (the default) or turns it off for this config.
    pub const fn on_response(mut self, yes: bool) -> Self {
        self.on_response = yes;
        self
    }

    /// Sets whether the request body is buffered for the hooks.
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

/// A plugin's config: the chain entry's `config` table as JSON (`{}` when none).
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
/// `on-response`, on wasm32 only. What the [`plugin`] attribute expands to; not for
/// direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __FluxgateExports;

            impl $crate::bindings::Guest for __FluxgateExports {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::bindings::PluginInfo, ::std::string::String>
                {
                    $crate::__private::init::<$plugin>(config)
                }

                fn on_request(req: &$crate::bindings::Request) -> $crate::bindings::RequestAction {
                    $crate::__private::on_request::<$plugin>(req)
                }

                fn on_response(req: &$crate::bindings::Request, resp: &$crate::bindings::Response) {
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
        let i = Info::new().on_request(false).response_body(true);
        assert!(!i.on_request && i.on_response && !i.request_body && i.response_body);
        let i = Info::new().request_body(true);
        assert!(i.on_request && i.request_body && i.on_response);
    }

    struct Both;
    #[plugin]
    impl Plugin for Both {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }
        fn on_request(&self, _: &mut Request) -> Action {
            Action::Continue
        }
        fn on_response(&self, _: &Request, _: &mut Response) {}
    }

    struct ResponseOnly;
    #[plugin]
    impl Plugin for ResponseOnly {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }
        fn on_response(&self, _: &Request, _: &mut Response) {}
        // The response hook is turned off for this config: info() narrows HOOKS.
        fn info(&self) -> Info {
            Info::new().on_response(false).request_body(true)
        }
    }

    struct NoAttribute;
    impl Plugin for NoAttribute {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }
    }

    struct Conditional;
    #[plugin]
    impl Plugin for Conditional {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Self)
        }
        #[cfg(test)]
        fn on_request(&self, _: &mut Request) -> Action {
            Action::Continue
        }
        #[cfg(not(test))]
        fn on_response(&self, _: &Request, _: &mut Response) {}
    }

    #[test]
    fn the_attribute_records_the_defined_hooks() {
        assert_eq!(Both::HOOKS, Hooks::BOTH);
        assert_eq!(ResponseOnly::HOOKS, Hooks::ON_RESPONSE);
        assert_eq!(NoAttribute::HOOKS, Hooks::BOTH);
        assert_eq!(Conditional::HOOKS, Hooks::ON_REQUEST);
        assert_eq!(
            Hooks::NONE,
            Hooks {
                on_request: false,
                on_response: false
            }
        );
    }

    #[test]
    fn effective_info_narrows_hooks() {
        let info = runtime::effective_info(&ResponseOnly);
        assert_eq!(
            info,
            Info {
                on_request: false,
                on_response: false,
                request_body: true,
                response_body: false
            }
        );
        assert_eq!(runtime::effective_info(&NoAttribute), Info::new());
        assert_eq!(runtime::effective_info(&Both), Info::new());
    }
}

#[cfg(test)]
mod version_tests {
    /// The crate's major.minor is the contract package's (`wit/plugin.wit`), and the
    /// attribute crate's version is the SDK's: bump them together.
    #[test]
    fn the_sdk_version_moves_with_the_wit_package_version() {
        let wit = include_str!("../wit/plugin.wit");
        let version = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package fluxgate:plugin@"))
            .and_then(|v| v.strip_suffix(';'))
            .expect("a package line");
        let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
        assert_eq!(
            major_minor(version),
            major_minor(env!("CARGO_PKG_VERSION")),
            "fluxgate-sdk {} for fluxgate:plugin@{version}",
            env!("CARGO_PKG_VERSION")
        );
        let macros = include_str!("../macros/Cargo.toml");
        assert!(
            macros.contains(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))),
            "fluxgate-sdk-macros has the SDK's version"
        );
    }
}
