//! bad-init (test plugin): `init` always fails, to exercise the gateway's handling of rejected plugins.

use fluxgate_sdk::{Config, Plugin};

/// Refuses every config.
pub struct BadInit;

#[fluxgate_sdk::plugin]
impl Plugin for BadInit {
    fn init(_config: Config) -> Result<Self, String> {
        Err("bad-init refuses to start".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn init_fails() {
        assert_eq!(
            testing::init::<BadInit>("{}").err().as_deref(),
            Some("bad-init refuses to start")
        );
    }
}
