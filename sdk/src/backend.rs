//! The operations of the WIT `request` and `response` resources, as traits.
//!
//! The gateway's handles implement them on wasm32 (each method is one host call); the
//! native test double ([`crate::testing::TestRequest`], [`crate::testing::TestResponse`])
//! implements them in `cargo test`, applying the gateway's rules. Plugins use the views
//! [`crate::Request`] and [`crate::Response`] over them and rarely need these traits,
//! except to write another double.
//!
//! Names may be given in any case; names handed back are lower-case. Values are bytes.
//! An edit that breaks one of the gateway's rules ([`crate::rules`]) fails the hook
//! call: a trap in the gateway, a panic naming the rule in the test double.

/// A header field: its lower-case name and its raw value bytes (the WIT `header`).
pub type Header = (String, Vec<u8>);

/// The request a hook borrows: the WIT `request` resource's operations.
pub trait RequestBackend {
    /// The method, e.g. `"GET"`.
    fn method(&self) -> String;
    /// The normalised path (with the edits made so far).
    fn path(&self) -> String;
    /// The raw query string without '?', if any.
    fn query(&self) -> Option<String>;
    /// The first value of a header (name in any case).
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of a header, in order.
    fn header_values(&self, name: &str) -> Vec<Vec<u8>>;
    /// Every header field as (lower-case name, value), in order: a copy of them all.
    fn headers(&self) -> Vec<Header>;
    /// The client's IP address.
    fn client_ip(&self) -> String;
    /// The name of the matched route.
    fn route(&self) -> String;
    /// A path parameter of the route.
    fn param(&self, name: &str) -> Option<String>;
    /// Every path parameter, in pattern order.
    fn params(&self) -> Vec<(String, String)>;
    /// The whole body, if the plugin declared the request body and it fit the limit.
    fn body(&self) -> Option<Vec<u8>>;
    /// Replaces every value of a header with this one.
    fn set_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value to a header.
    fn append_header(&mut self, name: &str, value: &[u8]);
    /// Removes every value of a header.
    fn remove_header(&mut self, name: &str);
    /// Replaces the path (must start with '/'; normalised; may not climb above '/').
    fn set_path(&mut self, path: &str);
    /// Replaces the query string (without '?'); `None` removes it.
    fn set_query(&mut self, query: Option<&str>);
    /// Replaces the body (needs the request body declared).
    fn set_body(&mut self, body: &[u8]);
    /// Keeps a value (at most 4 KiB) for this plugin's `on_response` of this request.
    fn stash(&mut self, value: &[u8]);
    /// What this plugin stashed for this request, if anything.
    fn stashed(&self) -> Option<Vec<u8>>;
}

/// The response a hook borrows: the WIT `response` resource's operations.
pub trait ResponseBackend {
    /// The status code.
    fn status(&self) -> u16;
    /// Replaces the status (200-599).
    fn set_status(&mut self, status: u16);
    /// The first value of a header (name in any case).
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of a header, in order.
    fn header_values(&self, name: &str) -> Vec<Vec<u8>>;
    /// Every header field as (lower-case name, value), in order: a copy of them all.
    fn headers(&self) -> Vec<Header>;
    /// The whole body, if the plugin declared the response body and it fit the limit.
    fn body(&self) -> Option<Vec<u8>>;
    /// Replaces every value of a header with this one.
    fn set_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value to a header.
    fn append_header(&mut self, name: &str, value: &[u8]);
    /// Removes every value of a header.
    fn remove_header(&mut self, name: &str);
    /// Replaces the body.
    fn set_body(&mut self, body: &[u8]);
}
