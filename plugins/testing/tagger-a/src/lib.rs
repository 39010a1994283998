//! tagger-a (test plugin): sets `x-tagger: a` on the request and on the response (hot-swap test).

/// The tag this build sets.
const TAG: &str = "a";

include!("../../tagger.rs");
