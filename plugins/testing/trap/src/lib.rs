//! trap (test plugin): `on_request` traps unless the request has `x-trap: no`; then the response gets `x-trap-plugin: ok`.

use fluxgate_sdk::{Action, Config, Plugin, Request, Response};

/// Traps in `on_request` unless told not to.
pub struct Trap;

#[fluxgate_sdk::plugin]
impl Plugin for Trap {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if req.header("x-trap").as_deref() == Some("no") {
            return Action::Continue;
        }
        trap()
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_header("x-trap-plugin", "ok");
    }
}

/// A wasm `unreachable` trap (a panic off wasm32, where tests run).
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("trap plugin: trapping");
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn continues_with_x_trap_no() {
        let p = testing::init::<Trap>("{}").unwrap_or_else(|e| panic!("{e}"));
        let mut req = testing::request().header("x-trap", "no").build();
        p.on_request(&mut req).assert_continue();
        assert!(req.edits().is_empty());
        let mut resp = testing::response(200).build();
        p.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-trap-plugin"), Some("ok"));
    }

    #[test]
    #[should_panic(expected = "trapping")]
    fn traps_otherwise() {
        let p = testing::init::<Trap>("{}").unwrap_or_else(|e| panic!("{e}"));
        p.on_request(&mut testing::request().build());
    }
}
