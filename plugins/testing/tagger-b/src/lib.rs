//! tagger-b (test plugin): sets `x-tagger: b` on the request and on the response (hot-swap test).

/// The tag this build sets.
const TAG: &str = "b";

include!("../../tagger.rs");
