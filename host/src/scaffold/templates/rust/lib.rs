//! {{name}}: a FluxGate plugin. It adds a header to every answer the client gets; the
//! header's value comes from the route's config (`config = { greeting = "..." }`).

use fluxgate_sdk::{Config, Plugin, Request, Response};

pub struct Greeter {
    greeting: String,
}

#[derive(serde::Deserialize)]
struct Settings {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello from {{name}}".into()
}

#[fluxgate_sdk::plugin]
impl Plugin for Greeter {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !fluxgate_sdk::is_valid_header_value(settings.greeting.as_bytes()) {
            return Err("greeting must be a valid header value".into());
        }
        Ok(Self {
            greeting: settings.greeting,
        })
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        resp.set_header("x-greeting", &self.greeting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn every_answer_gets_the_greeting() {
        let plugin = testing::init::<Greeter>(r#"{"greeting":"hi"}"#).unwrap();
        let req = testing::request().path("/anything").build();
        let mut resp = testing::response(200).build();
        plugin.on_response(&req, &mut resp);
        assert_eq!(resp.header("x-greeting"), Some("hi"));
        assert!(testing::init::<Greeter>(r#"{"greeting":"a\nb"}"#).is_err());
    }
}
