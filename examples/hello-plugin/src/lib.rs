//! The walkthrough plugin: answers `GET /hello` itself and tags every other response.

use fluxgate_sdk::{Action, Config, DirectResponse, Plugin, Request, Response};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".to_owned()
}

/// Edit this greeting, rebuild, copy the file: the gateway picks it up live.
const VERSION: &str = "v1";

pub struct Hello {
    greeting: String,
}

// The attribute exports the plugin and tells the gateway which hooks it defines.
#[fluxgate_sdk::plugin]
impl Plugin for Hello {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Self {
            greeting: settings.greeting,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if req.path() == "/hello" {
            return Action::Respond(DirectResponse::json(
                200,
                &fluxgate_sdk::serde_json::json!({ "message": self.greeting, "version": VERSION }),
            ));
        }
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_header("x-hello", format!("{} ({VERSION})", self.greeting));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    fn hello() -> testing::Harness<Hello> {
        testing::init::<Hello>(r#"{"greeting":"hi"}"#).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn answers_hello_itself() {
        let mut req = testing::request().method("GET").path("/hello").build();
        let outcome = hello().on_request(&mut req);
        let resp = outcome
            .response()
            .unwrap_or_else(|| panic!("expected a direct response"));
        assert_eq!(resp.status(), 200);
    }

    #[test]
    fn tags_other_responses() {
        let mut req = testing::request().method("GET").path("/other").build();
        let plugin = hello();
        assert!(plugin.on_request(&mut req).is_continue());
        let mut resp = testing::response(200).build();
        plugin.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-hello"), Some("hi (v1)"));
    }

    #[test]
    fn rejects_unknown_config_keys() {
        assert!(testing::init::<Hello>(r#"{"greting":"typo"}"#).is_err());
    }
}
