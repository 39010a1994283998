//! Generated bindings for the `fluxgate:plugin` world (wit/plugin.wit), all in one module.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    additional_derives: [PartialEq],
    // Exports are called with `call_async`: WASI's async host functions then run on
    // our tokio runtime, and a long call yields at every epoch tick.
    exports: { default: async },
});

// The world's `use types.{...}` already puts request, response, request-action,
// response-edits and plugin-info at this module's root; these are the rest.
pub use fluxgate::plugin::types::{DirectResponse, Header, LogLevel, RequestEdits};
