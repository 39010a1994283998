//! header-flood (test plugin): sets `n` distinct headers `x-flood-<i>` (values of `value_bytes` bytes, default 1) on the request (`{"n": 100000}`), in a direct 200 answer (`{"n": N, "respond": true}`) or on the response (`{"n": N, "on": "response"}`), to exercise the header count and size limits.

use fluxgate_sdk::{Action, Config, DirectResponse, Info, Plugin, Request, Response};
use serde::Deserialize;

/// Which message gets the headers.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Side {
    #[default]
    Request,
    Response,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    n: usize,
    #[serde(default)]
    respond: bool,
    #[serde(default)]
    on: Side,
    #[serde(default = "one")]
    value_bytes: usize,
}

fn one() -> usize {
    1
}

/// Sets `n` headers where its config says.
pub struct HeaderFlood {
    n: usize,
    respond: bool,
    on: Side,
    value: Vec<u8>,
}

fn name(i: usize) -> String {
    format!("x-flood-{i}")
}

#[fluxgate_sdk::plugin]
impl Plugin for HeaderFlood {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.respond && s.on == Side::Response {
            return Err("header-flood: `respond` needs `on` = \"request\"".into());
        }
        Ok(Self {
            n: s.n,
            respond: s.respond,
            on: s.on,
            value: vec![b'v'; s.value_bytes],
        })
    }

    fn info(&self) -> Info {
        Info::new()
            .on_request(self.on == Side::Request)
            .on_response(self.on == Side::Response)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if self.respond {
            let mut answer = DirectResponse::text(200, "header-flood");
            for i in 0..self.n {
                answer = answer.with_header(&name(i), &self.value);
            }
            return Action::Respond(answer);
        }
        for i in 0..self.n {
            req.set_header(&name(i), &self.value);
        }
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        for i in 0..self.n {
            resp.set_header(&name(i), &self.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn floods_where_configured() {
        let p = testing::init::<HeaderFlood>(r#"{"n": 3}"#).unwrap();
        let mut req = testing::request().build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.headers().len(), 3);
        assert_eq!(req.header("x-flood-2"), Some("v"));

        let p = testing::init::<HeaderFlood>(r#"{"n": 2, "respond": true}"#).unwrap();
        let answer = p
            .on_request(&mut testing::request().build())
            .into_response();
        assert_eq!(answer.headers().len(), 3, "content-type and two floods");

        let p = testing::init::<HeaderFlood>(r#"{"n": 2, "on": "response", "value_bytes": 3}"#)
            .unwrap();
        assert!(!p.info().on_request);
        let mut resp = testing::response(200).build();
        p.on_response(&testing::request().build(), &mut resp);
        assert_eq!(resp.header("x-flood-1"), Some("vvv"));

        assert!(
            testing::init::<HeaderFlood>(r#"{"n": 1, "respond": true, "on": "response"}"#).is_err()
        );
    }

    #[test]
    #[should_panic(expected = "at most 256 header fields")]
    fn too_many_headers_fail_the_call() {
        let p = testing::init::<HeaderFlood>(r#"{"n": 100000}"#).unwrap();
        p.on_request(&mut testing::request().build());
    }

    #[test]
    #[should_panic(expected = "direct response: 257 header fields")]
    fn too_many_headers_in_a_direct_response_fail_the_call() {
        let p = testing::init::<HeaderFlood>(r#"{"n": 256, "respond": true}"#).unwrap();
        p.on_request(&mut testing::request().build());
    }
}
