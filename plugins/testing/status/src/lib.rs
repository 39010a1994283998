//! status (test plugin): on-request answers directly with `status` (`{"status": 101}`: try 100, 101, 103, 600, 999), or with `{"on": "response", "status": S}` sets the response's status to S.

use fluxgate_sdk::{Action, Config, DirectResponse, Info, Plugin, Request, Response};
use serde::Deserialize;

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
    status: u16,
    #[serde(default)]
    on: Side,
}

/// Answers with, or sets, a status.
pub struct Status {
    status: u16,
    on: Side,
}

#[fluxgate_sdk::plugin]
impl Plugin for Status {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        Ok(Self {
            status: s.status,
            on: s.on,
        })
    }

    fn info(&self) -> Info {
        Info::new()
            .on_request(self.on == Side::Request)
            .on_response(self.on == Side::Response)
    }

    fn on_request(&self, _req: &mut Request) -> Action {
        Action::Respond(DirectResponse::text(self.status, "status plugin"))
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_status(self.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn valid_statuses() {
        let p = testing::init::<Status>(r#"{"status": 418}"#).unwrap();
        let answer = p
            .on_request(&mut testing::request().build())
            .into_response();
        assert_eq!(answer.status(), 418);

        let p = testing::init::<Status>(r#"{"status": 299, "on": "response"}"#).unwrap();
        let mut resp = testing::response(200).build();
        p.on_response(&testing::request().build(), &mut resp);
        assert_eq!(resp.status(), 299);
    }

    #[test]
    #[should_panic(expected = "status 101 (rule: a status must be 200-599)")]
    fn an_informational_answer_fails_the_call() {
        let p = testing::init::<Status>(r#"{"status": 101}"#).unwrap();
        p.on_request(&mut testing::request().build());
    }

    #[test]
    #[should_panic(expected = "status 999")]
    fn an_out_of_range_response_status_fails_the_call() {
        let p = testing::init::<Status>(r#"{"status": 999, "on": "response"}"#).unwrap();
        p.on_response(
            &testing::request().build(),
            &mut testing::response(200).build(),
        );
    }
}
