//! What a plugin can call: the methods of the request and response handles (reads of
//! the message lent to the call, checked edits), and the host imports (log, kv, clock),
//! each bounded per call.
//!
//! The handles a hook gets are borrows the gateway made for that call only: one request
//! (rep 0) and one response (rep 1) per call, so a method finds its message in the
//! store's `Call` and no resource table entry is allocated per call.

use std::time::Duration;

use wasmtime::component::Resource;

use super::bindings::fluxgate::plugin::{host, types};
use super::bindings::{LogLevel, Request, Response};
use super::message::{Violation, check_body, check_status, lookup_name};
use super::runtime::{MAX_KV_WRITES, MAX_LOG_BYTES, MAX_LOG_LINES, StoreState};

/// The rep of the request handle of a call.
pub const REQUEST_REP: u32 = 0;
/// The rep of the response handle of a call.
pub const RESPONSE_REP: u32 = 1;

type Result<T> = wasmtime::Result<T>;

impl StoreState {
    /// Records the rule the plugin broke and fails the host call (which traps it).
    fn refuse<T>(&mut self, violation: Violation) -> Result<T> {
        let error = wasmtime::Error::new(violation.clone());
        self.call.violation.get_or_insert(violation);
        Err(error)
    }

    fn check_request(&self, handle: &Resource<Request>) -> Result<()> {
        if handle.rep() == REQUEST_REP {
            Ok(())
        } else {
            Err(wasmtime::Error::msg("not a request handle of this call"))
        }
    }

    /// An edit of the request: only in on-request (in on-response it has gone upstream).
    fn check_request_edit(&mut self, handle: &Resource<Request>) -> Result<()> {
        self.check_request(handle)?;
        if self.call.response.is_some() {
            return self.refuse(Violation::RequestGone);
        }
        Ok(())
    }

    fn check_response(&self, handle: &Resource<Response>) -> Result<()> {
        if handle.rep() == RESPONSE_REP && self.call.response.is_some() {
            Ok(())
        } else {
            Err(wasmtime::Error::msg("no response in this call"))
        }
    }

    fn edited<T>(&mut self, result: std::result::Result<T, Violation>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(violation) => self.refuse(violation),
        }
    }
}

impl types::Host for StoreState {}

impl types::HostRequest for StoreState {
    fn method(&mut self, r: Resource<Request>) -> Result<String> {
        self.check_request(&r)?;
        Ok(self.call.request.method.as_str().to_owned())
    }

    fn path(&mut self, r: Resource<Request>) -> Result<String> {
        self.check_request(&r)?;
        let call = &self.call;
        Ok(call
            .request_edits
            .path
            .clone()
            .unwrap_or_else(|| call.request.path.clone()))
    }

    fn query(&mut self, r: Resource<Request>) -> Result<Option<String>> {
        self.check_request(&r)?;
        let call = &self.call;
        Ok(match &call.request_edits.query {
            Some(edited) => edited.clone(),
            None => call.request.query.clone(),
        })
    }

    fn header(&mut self, r: Resource<Request>, name: String) -> Result<Option<Vec<u8>>> {
        self.check_request(&r)?;
        let Some(name) = lookup_name(&name) else {
            return Ok(None);
        };
        let call = &self.call;
        Ok(call
            .request_edits
            .headers
            .first(&call.request.headers, &name)
            .map(|v| v.as_bytes().to_vec()))
    }

    fn header_values(&mut self, r: Resource<Request>, name: String) -> Result<Vec<Vec<u8>>> {
        self.check_request(&r)?;
        let Some(name) = lookup_name(&name) else {
            return Ok(Vec::new());
        };
        let call = &self.call;
        Ok(call
            .request_edits
            .headers
            .values(&call.request.headers, &name))
    }

    fn headers(&mut self, r: Resource<Request>) -> Result<Vec<(String, Vec<u8>)>> {
        self.check_request(&r)?;
        let call = &self.call;
        Ok(call.request_edits.headers.all(&call.request.headers))
    }

    fn client_ip(&mut self, r: Resource<Request>) -> Result<String> {
        self.check_request(&r)?;
        Ok(self
            .call
            .request
            .client_ip
            .to_str()
            .unwrap_or("unknown")
            .to_owned())
    }

    fn route(&mut self, r: Resource<Request>) -> Result<String> {
        self.check_request(&r)?;
        Ok(self.call.request.route.to_string())
    }

    fn param(&mut self, r: Resource<Request>, name: String) -> Result<Option<String>> {
        self.check_request(&r)?;
        Ok(self
            .call
            .request
            .params
            .iter()
            .find(|(k, _)| **k == *name)
            .map(|(_, v)| v.clone()))
    }

    fn params(&mut self, r: Resource<Request>) -> Result<Vec<(String, String)>> {
        self.check_request(&r)?;
        Ok(self
            .call
            .request
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect())
    }

    fn body(&mut self, r: Resource<Request>) -> Result<Option<Vec<u8>>> {
        self.check_request(&r)?;
        let call = &self.call;
        if !call.request_body {
            return Ok(None);
        }
        Ok(call
            .request_edits
            .body
            .as_ref()
            .or(call.request.body.as_ref())
            .map(|b| b.to_vec()))
    }

    fn set_header(&mut self, r: Resource<Request>, name: String, value: Vec<u8>) -> Result<()> {
        self.check_request_edit(&r)?;
        let call = &mut self.call;
        let result = call
            .request_edits
            .headers
            .set(&call.request.headers, &name, value);
        self.edited(result)
    }

    fn append_header(&mut self, r: Resource<Request>, name: String, value: Vec<u8>) -> Result<()> {
        self.check_request_edit(&r)?;
        let call = &mut self.call;
        let result = call
            .request_edits
            .headers
            .append(&call.request.headers, &name, value);
        self.edited(result)
    }

    fn remove_header(&mut self, r: Resource<Request>, name: String) -> Result<()> {
        self.check_request_edit(&r)?;
        let call = &mut self.call;
        let result = call
            .request_edits
            .headers
            .remove(&call.request.headers, &name);
        self.edited(result)
    }

    fn set_path(&mut self, r: Resource<Request>, path: String) -> Result<()> {
        self.check_request_edit(&r)?;
        let result = self.call.request_edits.set_path(path);
        self.edited(result)
    }

    fn set_query(&mut self, r: Resource<Request>, query: Option<String>) -> Result<()> {
        self.check_request_edit(&r)?;
        let result = self.call.request_edits.set_query(query);
        self.edited(result)
    }

    fn set_body(&mut self, r: Resource<Request>, body: Vec<u8>) -> Result<()> {
        self.check_request_edit(&r)?;
        if !self.call.request_body {
            return self.refuse(Violation::BodyNotDeclared);
        }
        let result = check_body(body, self.call.max_body);
        let body = self.edited(result)?;
        self.call.request_edits.body = Some(body);
        Ok(())
    }

    fn stash(&mut self, r: Resource<Request>, value: Vec<u8>) -> Result<()> {
        self.check_request_edit(&r)?;
        let result = self.call.request_edits.set_stash(value);
        self.edited(result)
    }

    fn stashed(&mut self, r: Resource<Request>) -> Result<Option<Vec<u8>>> {
        self.check_request(&r)?;
        let call = &self.call;
        Ok(call
            .request_edits
            .stash
            .clone()
            .or_else(|| call.request.stashes.get(call.step).cloned().flatten()))
    }

    fn drop(&mut self, _r: Resource<Request>) -> Result<()> {
        // The handle is a borrow the gateway made for one call: nothing to free.
        Ok(())
    }
}

impl types::HostResponse for StoreState {
    fn status(&mut self, r: Resource<Response>) -> Result<u16> {
        self.check_response(&r)?;
        let call = &self.call;
        Ok(match (call.response_edits.status, &call.response) {
            (Some(status), _) => status.as_u16(),
            (None, Some(resp)) => resp.status.as_u16(),
            (None, None) => 0,
        })
    }

    fn set_status(&mut self, r: Resource<Response>, status: u16) -> Result<()> {
        self.check_response(&r)?;
        let result = check_status(status);
        let status = self.edited(result)?;
        self.call.response_edits.status = Some(status);
        Ok(())
    }

    fn header(&mut self, r: Resource<Response>, name: String) -> Result<Option<Vec<u8>>> {
        self.check_response(&r)?;
        let (Some(name), Some(resp)) = (lookup_name(&name), &self.call.response) else {
            return Ok(None);
        };
        Ok(self
            .call
            .response_edits
            .headers
            .first(&resp.headers, &name)
            .map(|v| v.as_bytes().to_vec()))
    }

    fn header_values(&mut self, r: Resource<Response>, name: String) -> Result<Vec<Vec<u8>>> {
        self.check_response(&r)?;
        let (Some(name), Some(resp)) = (lookup_name(&name), &self.call.response) else {
            return Ok(Vec::new());
        };
        Ok(self
            .call
            .response_edits
            .headers
            .values(&resp.headers, &name))
    }

    fn headers(&mut self, r: Resource<Response>) -> Result<Vec<(String, Vec<u8>)>> {
        self.check_response(&r)?;
        let Some(resp) = &self.call.response else {
            return Ok(Vec::new());
        };
        Ok(self.call.response_edits.headers.all(&resp.headers))
    }

    fn body(&mut self, r: Resource<Response>) -> Result<Option<Vec<u8>>> {
        self.check_response(&r)?;
        let call = &self.call;
        let Some(resp) = &call.response else {
            return Ok(None);
        };
        if !call.response_body && !resp.body_replaced {
            return Ok(None);
        }
        Ok(call
            .response_edits
            .body
            .as_ref()
            .or(resp.body.as_ref())
            .map(|b| b.to_vec()))
    }

    fn set_header(&mut self, r: Resource<Response>, name: String, value: Vec<u8>) -> Result<()> {
        self.check_response(&r)?;
        let call = &mut self.call;
        let Some(resp) = &call.response else {
            return Ok(());
        };
        let result = call.response_edits.headers.set(&resp.headers, &name, value);
        self.edited(result)
    }

    fn append_header(&mut self, r: Resource<Response>, name: String, value: Vec<u8>) -> Result<()> {
        self.check_response(&r)?;
        let call = &mut self.call;
        let Some(resp) = &call.response else {
            return Ok(());
        };
        let result = call
            .response_edits
            .headers
            .append(&resp.headers, &name, value);
        self.edited(result)
    }

    fn remove_header(&mut self, r: Resource<Response>, name: String) -> Result<()> {
        self.check_response(&r)?;
        let call = &mut self.call;
        let Some(resp) = &call.response else {
            return Ok(());
        };
        let result = call.response_edits.headers.remove(&resp.headers, &name);
        self.edited(result)
    }

    fn set_body(&mut self, r: Resource<Response>, body: Vec<u8>) -> Result<()> {
        self.check_response(&r)?;
        let result = check_body(body, self.call.max_body);
        let body = self.edited(result)?;
        self.call.response_edits.body = Some(body);
        Ok(())
    }

    fn drop(&mut self, _r: Resource<Response>) -> Result<()> {
        Ok(())
    }
}

impl host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) -> Result<()> {
        if self.call.log_lines >= MAX_LOG_LINES {
            self.call.log_dropped += 1;
            return Ok(());
        }
        self.call.log_lines += 1;
        let message = loggable(&message);
        let plugin = &*self.shared.name;
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
        Ok(())
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        Ok(self.shared.kv.get(&key))
    }

    fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<std::result::Result<(), String>> {
        if let Err(refusal) = self.count_kv_write() {
            return Ok(Err(refusal));
        }
        Ok(self
            .shared
            .kv
            .set(&key, value, ttl_ms.map(Duration::from_millis))
            .map_err(|e| e.to_string()))
    }

    fn kv_delete(&mut self, key: String) -> Result<bool> {
        Ok(self.shared.kv.delete(&key))
    }

    fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<std::result::Result<i64, String>> {
        if let Err(refusal) = self.count_kv_write() {
            return Ok(Err(refusal));
        }
        Ok(self
            .shared
            .kv
            .incr(&key, delta, ttl_ms.map(Duration::from_millis))
            .map_err(|e| e.to_string()))
    }

    fn now_ms(&mut self) -> Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
}

impl StoreState {
    fn count_kv_write(&mut self) -> std::result::Result<(), String> {
        if self.call.kv_writes >= MAX_KV_WRITES {
            return Err(format!(
                "more than {MAX_KV_WRITES} key-value writes in one hook call"
            ));
        }
        self.call.kv_writes += 1;
        Ok(())
    }
}

/// A plugin's log message made safe for one log line: at most `MAX_LOG_BYTES` (cut on
/// a character boundary, marked), control characters escaped so nothing can start a
/// forged line.
pub fn loggable(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LOG_BYTES) + 8);
    for c in message.chars() {
        if out.len() >= MAX_LOG_BYTES {
            out.push_str("…(cut)");
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_cannot_forge_lines_and_are_bounded() {
        assert_eq!(
            loggable("ok\nINFO access forged\r\0"),
            "ok\\nINFO access forged\\r\\u{0}"
        );
        let long = loggable(&"é".repeat(10_000));
        assert!(long.len() <= MAX_LOG_BYTES + 16, "{}", long.len());
        assert!(long.ends_with("…(cut)"));
    }
}
