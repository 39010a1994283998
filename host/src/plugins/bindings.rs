//! Generated bindings for the `fluxgate:plugin` world (wit/plugin.wit), all in one module.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Exports are called with `call_async`: at every epoch tick a running call yields
    // to the runtime, so a plugin that spins shares the worker instead of holding it.
    exports: { default: async },
    // Host imports that can refuse (an edit breaking a rule) trap the call.
    imports: { default: trappable },
});

// The world's `use types.{...}` already puts request, response, request-action and
// plugin-info at this module's root; these are the rest.
pub use fluxgate::plugin::types::{DirectResponse, LogLevel};
