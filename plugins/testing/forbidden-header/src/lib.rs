//! forbidden-header (test plugin): does `op` (`set`, the default, `append` or `remove`) with header `name` and `value` on the request, on the response (`"on": "response"`) or in a direct 200 answer (`"on": "respond"`), unchecked: to try content-length, transfer-encoding, connection, upgrade, host, and names or values with CR, LF or NUL.

use fluxgate_sdk::{Action, Config, DirectResponse, Info, Plugin, Request, Response};
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Side {
    #[default]
    Request,
    Response,
    Respond,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Op {
    #[default]
    Set,
    Append,
    Remove,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    on: Side,
    #[serde(default)]
    op: Op,
}

/// Edits one header exactly as configured.
pub struct ForbiddenHeader(Settings);

/// The header operations the request and response views share.
trait Headers {
    fn set(&mut self, name: &str, value: &str);
    fn append(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
}

impl Headers for Request<'_> {
    fn set(&mut self, name: &str, value: &str) {
        self.set_header(name, value);
    }
    fn append(&mut self, name: &str, value: &str) {
        self.append_header(name, value);
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

impl Headers for Response<'_> {
    fn set(&mut self, name: &str, value: &str) {
        self.set_header(name, value);
    }
    fn append(&mut self, name: &str, value: &str) {
        self.append_header(name, value);
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

impl ForbiddenHeader {
    fn apply(&self, headers: &mut impl Headers) {
        let s = &self.0;
        match s.op {
            Op::Set => headers.set(&s.name, &s.value),
            Op::Append => headers.append(&s.name, &s.value),
            Op::Remove => headers.remove(&s.name),
        }
    }
}

#[fluxgate_sdk::plugin]
impl Plugin for ForbiddenHeader {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Self(config.parse()?))
    }

    fn info(&self) -> Info {
        Info::new()
            .on_request(self.0.on != Side::Response)
            .on_response(self.0.on == Side::Response)
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if self.0.on == Side::Respond {
            return Action::Respond(
                DirectResponse::text(200, "forbidden-header")
                    .with_header(&self.0.name, &self.0.value),
            );
        }
        self.apply(req);
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        self.apply(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    fn run(config: &str) {
        let p = testing::init::<ForbiddenHeader>(config).unwrap();
        let mut req = testing::request().header("host", "example.com").build();
        p.on_request(&mut req);
        p.on_response(&req, &mut testing::response(200).build());
    }

    #[test]
    fn ordinary_headers_pass() {
        run(r#"{"name": "x-ok", "value": "1"}"#);
        run(r#"{"name": "host", "value": "other.example"}"#);
        run(r#"{"name": "x-ok", "value": "1", "on": "response", "op": "append"}"#);
        run(r#"{"name": "x-ok", "value": "1", "on": "respond"}"#);
    }

    #[test]
    #[should_panic(expected = "cannot be set or removed")]
    fn content_length_fails_the_call() {
        run(r#"{"name": "Content-Length", "value": "0"}"#);
    }

    #[test]
    #[should_panic(expected = "cannot be set or removed")]
    fn removing_connection_fails_the_call() {
        run(r#"{"name": "connection", "op": "remove", "on": "response"}"#);
    }

    #[test]
    #[should_panic(expected = "CR, LF, NUL")]
    fn crlf_in_a_value_fails_the_call() {
        run(r#"{"name": "x-a", "value": "1\r\nx-injected: 1"}"#);
    }

    #[test]
    #[should_panic(expected = "header names must be tokens")]
    fn nul_in_a_name_fails_the_call() {
        run(r#"{"name": "x-a\u0000", "value": "1", "on": "respond"}"#);
    }
}
