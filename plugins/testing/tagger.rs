// Shared source of tagger-a and tagger-b (each crate defines `TAG`, then includes this).

use fluxgate_sdk::{Action, Config, Plugin, Request, Response};

/// Tags the request and the response with [`TAG`].
pub struct Tagger;

#[fluxgate_sdk::plugin]
impl Plugin for Tagger {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        req.set_header("x-tagger", TAG);
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_header("x-tagger", TAG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn tags_both_ways() {
        let p = testing::init::<Tagger>("{}").unwrap_or_else(|e| panic!("{e}"));
        let mut req = testing::request().build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-tagger"), Some(TAG));
        let mut resp = testing::response(200).build();
        p.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-tagger"), Some(TAG));
    }
}
