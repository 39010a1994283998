//! log-flood (test plugin): on-request logs `lines` lines (default 20) of `bytes` bytes each (default 100); with `"newline": true` each message starts with "\n" and a forged gateway log line; then the request goes on.

use fluxgate_sdk::{Action, Config, Plugin, Request, log};
use serde::Deserialize;

/// A message that tries to pass for a line of the gateway's own log.
const FORGED: &str = "\n2025-01-01T00:00:00.000000Z  INFO fluxgate_host: forged log line ";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_lines")]
    lines: usize,
    #[serde(default = "default_bytes")]
    bytes: usize,
    #[serde(default)]
    newline: bool,
}

fn default_lines() -> usize {
    20
}

fn default_bytes() -> usize {
    100
}

/// Logs what its config says on every request.
pub struct LogFlood {
    lines: usize,
    message: String,
}

#[fluxgate_sdk::plugin]
impl Plugin for LogFlood {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let mut message = if s.newline {
            FORGED.to_string()
        } else {
            String::new()
        };
        if message.len() < s.bytes {
            message.push_str(&"x".repeat(s.bytes - message.len()));
        }
        Ok(Self {
            lines: s.lines,
            message,
        })
    }

    fn on_request(&self, _req: &mut Request) -> Action {
        for _ in 0..self.lines {
            log::info(&self.message);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    #[test]
    fn logs_as_configured() {
        testing::reset();
        let p =
            testing::init::<LogFlood>(r#"{"lines": 20, "bytes": 5000, "newline": true}"#).unwrap();
        p.on_request(&mut testing::request().build())
            .assert_continue();
        let logs = testing::take_logs();
        // As in the gateway: 16 lines a call, each cut to 4 KiB.
        assert_eq!(logs.len(), 16);
        assert_eq!(testing::dropped_logs(), 4);
        assert!(logs[0].1.starts_with("\n2025-01-01T00:00:00"));
        assert_eq!(logs[0].1.len(), 4096);

        let p = testing::init::<LogFlood>("{}").unwrap();
        p.on_request(&mut testing::request().build())
            .assert_continue();
        assert_eq!(testing::take_logs()[0].1, "x".repeat(100));
    }
}
