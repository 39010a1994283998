//! stash (test plugin): on-request stashes the request's `x-stash` header (the path when there is none), or with `{"bytes": N}` N bytes of 'x' (to try the 4 KiB bound); on-response sets the response header `x-stashed` to what it stashed (no header if nothing was).

use fluxgate_sdk::{Action, Config, Plugin, Request, Response};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    bytes: Option<usize>,
}

/// Carries a value from on-request to on-response.
pub struct Stash {
    fixed: Option<Vec<u8>>,
}

#[fluxgate_sdk::plugin]
impl Plugin for Stash {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        Ok(Self {
            fixed: s.bytes.map(|n| vec![b'x'; n]),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        match &self.fixed {
            Some(value) => req.stash(value),
            None => {
                let value = req
                    .header_bytes("x-stash")
                    .unwrap_or_else(|| req.path().into_bytes());
                req.stash(value);
            }
        }
        Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &mut Response) {
        if let Some(value) = req.stashed() {
            resp.set_header("x-stashed", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    fn round_trip(config: &str, req: testing::RequestBuilder) -> Option<String> {
        let p = testing::init::<Stash>(config).unwrap();
        let mut req = req.build();
        p.on_request(&mut req).assert_continue();
        let mut resp = testing::response(200).build();
        p.on_response(&req, &mut resp);
        resp.header("x-stashed").map(str::to_string)
    }

    #[test]
    fn carries_the_value_to_on_response() {
        let stashed = round_trip("{}", testing::request().header("x-stash", "abc"));
        assert_eq!(stashed.as_deref(), Some("abc"));
        let stashed = round_trip("{}", testing::request().path("/p?q=1"));
        assert_eq!(stashed.as_deref(), Some("/p"));
        let stashed = round_trip(r#"{"bytes": 4096}"#, testing::request());
        assert_eq!(stashed.map(|s| s.len()), Some(4096));
    }

    #[test]
    fn each_plugin_has_its_own_stash() {
        let a = testing::init::<Stash>("{}").unwrap();
        let b = testing::init::<Stash>(r#"{"bytes": 1}"#).unwrap();
        let mut req = testing::request().header("x-stash", "a").build();
        a.on_request(&mut req).assert_continue();
        // b never ran on_request for this request: nothing stashed for it.
        let mut resp = testing::response(200).build();
        b.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-stashed"), None);
        a.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-stashed"), Some("a"));
    }

    #[test]
    #[should_panic(expected = "a stash holds at most 4 KiB")]
    fn a_big_stash_fails_the_call() {
        round_trip(r#"{"bytes": 4097}"#, testing::request());
    }
}
