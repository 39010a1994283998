//! Paths the gateway answers itself on the main listener; no route may take them.

/// Health, upstream state and metrics (`admin`).
pub const ADMIN_PATHS: &[&str] = &["/api/v1/health", "/api/v1/upstreams", "/metrics"];

/// The service registry's management API (`registry::api`).
pub const REGISTRY_PATHS: &[&str] = &[
    "/api/v1/services",
    "/api/v1/services/register",
    "/api/v1/services/deregister",
    "/api/v1/services/heartbeat",
];

/// Is `path` answered by the gateway itself?
pub fn is_reserved(path: &str) -> bool {
    ADMIN_PATHS.contains(&path) || REGISTRY_PATHS.contains(&path)
}
