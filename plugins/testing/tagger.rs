// Shared source of tagger-a and tagger-b (each crate defines `TAG`, then includes this).

use fluxgate_sdk::{Action, Config, Info, Plugin, Request, Response, export_plugin};

/// Tags the request and the response with [`TAG`].
pub struct Tagger;

impl Plugin for Tagger {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn info(&self) -> Info {
        Info::new().on_response(true)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        req.set_header("x-tagger", TAG);
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_header("x-tagger", TAG);
    }
}

export_plugin!(Tagger);

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn tags_both_ways() {
        let p = testing::init::<Tagger>("{}").unwrap_or_else(|e| panic!("{e}"));
        let req = testing::request().build();
        let edits = p.on_request(&req).into_edits();
        assert_eq!(edits.set_header("x-tagger"), Some(TAG));
        let edits = p.on_response(&req, &testing::response(200).build());
        assert_eq!(edits.set_header("x-tagger"), Some(TAG));
    }
}
