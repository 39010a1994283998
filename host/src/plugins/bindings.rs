//! Generated bindings for the `fluxgate:plugin` world (wit/plugin.wit), all in one module.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    additional_derives: [PartialEq],
});

// The world's `use types.{...}` already puts request, response, request-action,
// response-edits and plugin-info at this module's root; these are the rest.
pub use fluxgate::plugin::types::{DirectResponse, Header, LogLevel, RequestEdits};
