//! body-size (test plugin): asks for the request body and sets `x-body-size` to its
//! length (`none` when the gateway passed no body), to exercise `plugins.max_body_bytes`.

use fluxgate_sdk::{Action, Config, Info, Plugin, Request, export_plugin};

/// Reports the size of the buffered request body.
pub struct BodySize;

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

export_plugin!(BodySize);

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn reports_the_body_size() {
        let p = testing::init::<BodySize>("{}").unwrap_or_else(|e| panic!("{e}"));
        let req = testing::request().body("hello").build();
        let edits = p.on_request(&req).into_edits();
        assert_eq!(edits.set_header("x-body-size"), Some("5"));
    }
}
