//! hog (test plugin): `on_request` allocates and touches memory without bound, to exercise the gateway's memory limit.

use fluxgate_sdk::{Action, Config, Plugin, Request};

/// Allocates 1 MiB chunks in `on_request` until the instance runs out of memory.
pub struct Hog;

#[fluxgate_sdk::plugin]
impl Plugin for Hog {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_request(&self, _req: &mut Request) -> Action {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filled with a non-zero byte, so every page is really written.
            chunks.push(vec![0xa5; 1 << 20]);
            core::hint::black_box(&mut chunks);
        }
    }
}
