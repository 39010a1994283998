//! Paths: the ones the gateway answers itself on the main listener (no route may take
//! them), and the normalisation every request path (and every plugin edit of one) gets.

use std::borrow::Cow;

/// Health, upstream state and metrics (`admin`).
pub const ADMIN_PATHS: &[&str] = &["/api/v1/health", "/api/v1/upstreams", "/metrics"];

/// The service registry's management API (`registry::api`).
pub const REGISTRY_PATHS: &[&str] = &[
    "/api/v1/services",
    "/api/v1/services/register",
    "/api/v1/services/deregister",
    "/api/v1/services/heartbeat",
];

/// The dashboard's data (admin access only).
pub const DASHBOARD_DATA: &str = "/api/v1/dashboard";

/// The dashboard: its page and assets (served to anyone: they hold no data) and its
/// data (`dashboard`).
pub const DASHBOARD_PATHS: &[&str] = &[
    "/dashboard",
    "/dashboard/",
    "/dashboard/app.js",
    "/dashboard/app.css",
    DASHBOARD_DATA,
];

/// Is `path` answered by the gateway itself?
pub fn is_reserved(path: &str) -> bool {
    ADMIN_PATHS.contains(&path) || REGISTRY_PATHS.contains(&path) || DASHBOARD_PATHS.contains(&path)
}

/// Resolves `.` and `..` segments (also percent-encoded, `%2e`), so `/public/../admin`
/// cannot escape a route; a path that climbs above `/` is refused with the reason.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if !path.starts_with('/') {
        return Err("request path must start with '/'");
    }
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let is_dotdot = |s: &str| {
        s.len() >= 2
            && s.len() <= 6
            && matches!(
                s.to_ascii_lowercase().as_str(),
                ".." | ".%2e" | "%2e." | "%2e%2e"
            )
    };
    if !path.split('/').any(|s| is_dot(s) || is_dotdot(s)) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if is_dot(segment) {
            if i == last {
                out.push("");
            }
        } else if is_dotdot(segment) {
            if out.pop().is_none() {
                return Err("request path climbs above '/'");
            }
            if i == last {
                out.push("");
            }
        } else {
            out.push(segment);
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}
