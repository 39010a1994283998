//! Per-route rewrites: the upstream path (strip/replace/add prefix) and header edits.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::RouteConfig;

/// How a route turns the client's path into the upstream path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRewrite {
    /// Removed from the front (strip_prefix, or replace_prefix.from).
    strip: Option<String>,
    /// Put in its place (replace_prefix.to).
    replace_with: Option<String>,
    /// Added in front of the result (add_prefix).
    add: Option<String>,
}

impl PathRewrite {
    pub fn from_route(route: &RouteConfig) -> Self {
        let trim = |p: &str| p.trim_end_matches('/').to_owned();
        let (strip, replace_with) = match (&route.strip_prefix, &route.replace_prefix) {
            (Some(s), _) => (Some(trim(s)), None),
            (None, Some(r)) => (Some(trim(&r.from)), Some(trim(&r.to))),
            (None, None) => (None, None),
        };
        Self {
            strip,
            replace_with,
            add: route.add_prefix.as_deref().map(trim),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.strip.is_none() && self.add.is_none()
    }

    /// Rewrites `path` (no query). Prefixes only match whole segments: stripping `/api`
    /// leaves `/apiary` alone. The result always starts with '/'.
    pub fn apply(&self, path: &str) -> String {
        let mut rest = path;
        let mut head = String::new();
        if let Some(strip) = &self.strip
            && let Some(after) = path.strip_prefix(strip.as_str())
            && (after.is_empty() || after.starts_with('/'))
        {
            rest = after;
            if let Some(with) = &self.replace_with {
                head.push_str(with);
            }
        }
        let mut out = String::with_capacity(path.len() + 16);
        if let Some(add) = &self.add {
            out.push_str(add);
        }
        out.push_str(&head);
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        out
    }
}

/// Compiled header edits: names and values checked once when the config loads.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Edits from names and values the config plan has parsed.
    pub fn new(remove: Vec<HeaderName>, set: Vec<(HeaderName, HeaderValue)>) -> Self {
        Self { remove, set }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplacePrefix;

    fn rewrite(
        strip: Option<&str>,
        replace: Option<(&str, &str)>,
        add: Option<&str>,
    ) -> PathRewrite {
        PathRewrite::from_route(&RouteConfig {
            strip_prefix: strip.map(str::to_owned),
            replace_prefix: replace.map(|(f, t)| ReplacePrefix {
                from: f.into(),
                to: t.into(),
            }),
            add_prefix: add.map(str::to_owned),
            ..RouteConfig::default()
        })
    }

    #[test]
    fn strip_prefix_removes_whole_segments_only() {
        let r = rewrite(Some("/api/v1/"), None, None);
        assert_eq!(r.apply("/api/v1/users/5"), "/users/5");
        assert_eq!(r.apply("/api/v1"), "/");
        assert_eq!(r.apply("/api/v10/x"), "/api/v10/x");
    }

    #[test]
    fn add_and_replace_prefix() {
        assert_eq!(
            rewrite(None, None, Some("/internal")).apply("/users"),
            "/internal/users"
        );
        assert_eq!(
            rewrite(None, Some(("/api/v1", "/api/v2")), None).apply("/api/v1/u"),
            "/api/v2/u"
        );
        assert_eq!(
            rewrite(None, Some(("/old", "/")), None).apply("/old/x"),
            "/x"
        );
        assert_eq!(
            rewrite(Some("/api"), None, Some("/internal")).apply("/api/users"),
            "/internal/users"
        );
        assert!(rewrite(None, None, None).is_identity());
    }

    #[test]
    fn header_edits_remove_then_set() {
        let edits = HeaderEdits::new(
            vec![
                HeaderName::from_static("cookie"),
                HeaderName::from_static("x-env"),
            ],
            vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
        );
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1"));
        h.append("x-env", HeaderValue::from_static("dev"));
        h.append("x-env", HeaderValue::from_static("test"));
        edits.apply(&mut h);
        assert!(h.get("cookie").is_none());
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), vec!["prod"]);
    }
}
