//! body-size (test plugin): asks for the request body and sets `x-body-size` to its
//! length (`none` when the gateway passed no body), to exercise `plugins.max_body_bytes`.

use fluxgate_sdk::{Action, Config, Info, Plugin, Request};

/// Reports the size of the buffered request body.
pub struct BodySize;

#[fluxgate_sdk::plugin]
impl Plugin for BodySize {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn info(&self) -> Info {
        Info::new().request_body(true)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let size = req
            .body()
            .map_or_else(|| "none".to_owned(), |b| b.len().to_string());
        req.set_header("x-body-size", &size);
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn reports_the_body_size() {
        let p = testing::init::<BodySize>("{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.info().request_body);
        let mut req = testing::request().body("hello").build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-body-size"), Some("5"));
        let mut req = testing::request().build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-body-size"), Some("none"));
    }
}
