//! spin (test plugin): `on_request` loops forever, to exercise the gateway's execution time limit.

use fluxgate_sdk::{Action, Config, Plugin, Request};

/// Never returns from `on_request`.
pub struct Spin;

#[fluxgate_sdk::plugin]
impl Plugin for Spin {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_request(&self, _req: &mut Request) -> Action {
        let mut n: u64 = 0;
        loop {
            // black_box keeps the loop (and its work) from being optimised away.
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
