//! Route matching: path patterns, most-specific-first ordering, method and user filters.
//!
//! Specificity (documented in docs/ROUTING.md): patterns are compared segment by segment
//! from the left; at the first difference a literal segment beats a `:param`, which beats
//! the end of an exact pattern, which beats a trailing `*`. So exact beats parameter
//! beats wildcard, and a longer prefix beats a shorter one. Ties go to the route with
//! `users`, then to the route with `methods`, then to the earlier route in the file.
//! Because this order does not depend on the request, routes are sorted once per config
//! snapshot and the first route that matches wins.

use std::sync::Arc;

use http::Method;

use crate::user_id::KeySource;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(Arc<str>),
}

/// A compiled route path pattern such as `/api/:version/users/{id}/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    wildcard: bool,
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("\"{path}\" must start with '/'"));
        }
        if path.contains(['?', '#']) {
            return Err(format!("\"{path}\" must not contain a query or fragment"));
        }
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut wildcard = false;
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "\"{path}\": '*' is only allowed as the last segment"
                    ));
                }
                wildcard = true;
                continue;
            }
            let name = if let Some(name) = part.strip_prefix(':') {
                Some(name)
            } else if let Some(inner) = part.strip_prefix('{') {
                match inner.strip_suffix('}') {
                    Some(name) => Some(name),
                    None => return Err(format!("\"{path}\": unclosed '{{' in \"{part}\"")),
                }
            } else {
                None
            };
            match name {
                Some(name) => {
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(format!("\"{path}\": bad parameter name in \"{part}\""));
                    }
                    if names.contains(&name) {
                        return Err(format!("\"{path}\": parameter \"{name}\" appears twice"));
                    }
                    names.push(name);
                    segments.push(Segment::Param(Arc::from(name)));
                }
                None => {
                    if part.contains(['*', '{', '}']) {
                        return Err(format!(
                            "\"{path}\": \"{part}\" mixes literal text with '*', '{{' or '}}'"
                        ));
                    }
                    if *part == "." || *part == ".." {
                        return Err(format!("\"{path}\": dot segments are not allowed"));
                    }
                    segments.push(Segment::Literal((*part).to_owned()));
                }
            }
        }
        Ok(Self { segments, wildcard })
    }

    /// A canonical form where every parameter looks alike (`/users/:/x/*`).
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(_) => out.push(':'),
            }
        }
        if self.wildcard {
            out.push_str("/*");
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// True when `prefix` (e.g. "/api/v1") equals the pattern's first literal segments.
    pub fn has_literal_prefix(&self, prefix: &str) -> bool {
        let wanted: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        wanted.len() <= self.segments.len()
            && wanted
                .iter()
                .zip(&self.segments)
                .all(|(w, s)| matches!(s, Segment::Literal(l) if l == w))
    }

    /// The ordering key: literal 4, param 3, then end-of-exact 2 or wildcard 1.
    fn specificity(&self) -> Vec<u8> {
        let mut key: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 4,
                Segment::Param(_) => 3,
            })
            .collect();
        key.push(if self.wildcard { 1 } else { 2 });
        key
    }

    /// Matches request path segments, filling `params` on success.
    fn matches<'p>(&self, path: &[&'p str], params: &mut Vec<(Arc<str>, &'p str)>) -> bool {
        if path.len() < self.segments.len() || (!self.wildcard && path.len() != self.segments.len())
        {
            return false;
        }
        params.clear();
        for (segment, part) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(l) => {
                    if l != part {
                        return false;
                    }
                }
                Segment::Param(name) => params.push((name.clone(), part)),
            }
        }
        true
    }
}

/// What the router needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub pattern: Pattern,
    /// Empty = any method.
    pub methods: Vec<Method>,
    /// Empty = every user.
    pub users: Vec<String>,
    pub user_id_key: Arc<[KeySource]>,
}

impl RouteSpec {
    /// A per-user route whose user id may come from a form field.
    pub fn keys_users_on_form(&self) -> bool {
        !self.users.is_empty()
            && self
                .user_id_key
                .iter()
                .any(|k| matches!(k, KeySource::Form(_)))
    }
}

/// The result of a successful match: which route, and its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into the route list the router was built from (config order).
    pub index: usize,
    pub params: Vec<(Arc<str>, String)>,
}

/// Routes in specificity order.
#[derive(Debug, Default)]
pub struct Router {
    /// (config index, spec), best first.
    ordered: Vec<(usize, RouteSpec)>,
    /// Some route identifies users by a form field.
    form_keys: bool,
}

impl Router {
    pub fn new(routes: Vec<RouteSpec>) -> Self {
        let mut ordered: Vec<(usize, RouteSpec)> = routes.into_iter().enumerate().collect();
        ordered.sort_by(|(ia, a), (ib, b)| {
            b.pattern
                .specificity()
                .cmp(&a.pattern.specificity())
                .then_with(|| (!a.users.is_empty()).cmp(&!b.users.is_empty()).reverse())
                .then_with(|| {
                    (!a.methods.is_empty())
                        .cmp(&!b.methods.is_empty())
                        .reverse()
                })
                .then_with(|| ia.cmp(ib))
        });
        let form_keys = ordered.iter().any(|(_, r)| r.keys_users_on_form());
        Self { ordered, form_keys }
    }

    /// True when some route identifies users by a form field (the body must be read).
    pub fn uses_form_keys(&self) -> bool {
        self.form_keys
    }

    /// True when a route that `method` and `path` could match identifies users by a
    /// form field, so a form post's body must be read before the route is decided.
    pub fn needs_form(&self, method: &Method, path: &str) -> bool {
        if !self.uses_form_keys() {
            return false;
        }
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut params = Vec::new();
        self.ordered.iter().any(|(_, r)| {
            r.keys_users_on_form()
                && (r.methods.is_empty() || r.methods.contains(method))
                && r.pattern.matches(&parts, &mut params)
        })
    }

    /// Finds the most specific route for `method` and `path`. `user_of` resolves the
    /// user id for a route's key list; it is only called for routes with `users`.
    pub fn find(
        &self,
        method: &Method,
        path: &str,
        mut user_of: impl FnMut(&[KeySource]) -> Option<String>,
    ) -> Option<RouteMatch> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut params = Vec::new();
        // The same key list is usually shared by all user routes: resolve it once.
        let mut cached: Option<(Arc<[KeySource]>, Option<String>)> = None;
        for (index, route) in &self.ordered {
            if !route.pattern.matches(&parts, &mut params) {
                continue;
            }
            if !route.methods.is_empty() && !route.methods.contains(method) {
                continue;
            }
            if !route.users.is_empty() {
                let user = match &cached {
                    Some((keys, user)) if Arc::ptr_eq(keys, &route.user_id_key) => user.clone(),
                    _ => {
                        let user = user_of(&route.user_id_key);
                        cached = Some((route.user_id_key.clone(), user.clone()));
                        user
                    }
                };
                match user {
                    Some(user) if route.users.contains(&user) => {}
                    _ => continue,
                }
            }
            return Some(RouteMatch {
                index: *index,
                params: params
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).to_owned()))
                    .collect(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> RouteSpec {
        RouteSpec {
            pattern: Pattern::parse(path).unwrap(),
            methods: Vec::new(),
            users: Vec::new(),
            user_id_key: Arc::from(vec![KeySource::Header("x-user-id".parse().unwrap())]),
        }
    }

    fn winner(paths: &[&str], request: &str) -> Option<&'static str> {
        let router = Router::new(paths.iter().map(|p| spec(p)).collect());
        let found = router.find(&Method::GET, request, |_| None)?;
        Some(Box::leak(paths[found.index].to_owned().into_boxed_str()))
    }

    #[test]
    fn patterns_parse_and_reject_bad_input() {
        assert!(Pattern::parse("/a/:id/{name}/*").is_ok());
        assert!(Pattern::parse("/").is_ok());
        for bad in [
            "a", "/a/*/b", "/a/{x", "/a/:", "/a/:x/:x", "/a/b*", "/a/../b", "/a?x=1",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn exact_beats_parameter_beats_wildcard() {
        let routes = ["/users/*", "/users/:id", "/users/me"];
        assert_eq!(winner(&routes, "/users/me"), Some("/users/me"));
        assert_eq!(winner(&routes, "/users/42"), Some("/users/:id"));
        assert_eq!(winner(&routes, "/users/42/posts"), Some("/users/*"));
    }

    #[test]
    fn longer_beats_shorter_and_leftmost_difference_decides() {
        let routes = ["/*", "/api/*", "/api/v1/*", "/api/:v/users"];
        assert_eq!(winner(&routes, "/api/v1/users"), Some("/api/v1/*"));
        assert_eq!(winner(&routes, "/api/v2/users"), Some("/api/:v/users"));
        assert_eq!(winner(&routes, "/api/v2/other"), Some("/api/*"));
        assert_eq!(winner(&routes, "/else"), Some("/*"));
        assert_eq!(winner(&routes, "/"), Some("/*"));
    }

    #[test]
    fn the_order_documented_in_routing_md_holds() {
        let documented = [
            "/api/v1/users",
            "/api/v1/:x",
            "/api/v1/*",
            "/api/:v/users",
            "/api/*",
            "/*",
        ];
        for (i, expected) in documented.iter().enumerate() {
            let mut remaining: Vec<&str> = documented[i..].to_vec();
            remaining.reverse();
            assert_eq!(winner(&remaining, "/api/v1/users"), Some(*expected));
        }
    }

    #[test]
    fn wildcard_matches_zero_or_more_segments_and_exact_wins_a_tie() {
        assert_eq!(winner(&["/api/*"], "/api"), Some("/api/*"));
        assert_eq!(winner(&["/api/*", "/api"], "/api"), Some("/api"));
        assert_eq!(winner(&["/api"], "/api/x"), None);
        assert_eq!(winner(&["/api"], "/api/"), Some("/api"));
    }

    #[test]
    fn braces_and_colons_are_the_same_parameter_and_params_are_captured() {
        let router = Router::new(vec![spec("/u/{id}/p/:post")]);
        let m = router.find(&Method::GET, "/u/7/p/abc", |_| None).unwrap();
        let params: Vec<(String, String)> = m
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(
            params,
            vec![("id".into(), "7".into()), ("post".into(), "abc".into())]
        );
    }

    #[test]
    fn methods_filter_and_a_method_specific_route_wins_a_tie() {
        let mut get = spec("/x");
        get.methods = vec![Method::GET];
        let any = spec("/x");
        let router = Router::new(vec![any, get]);
        assert_eq!(router.find(&Method::GET, "/x", |_| None).unwrap().index, 1);
        assert_eq!(router.find(&Method::POST, "/x", |_| None).unwrap().index, 0);
        let only_get = Router::new(vec![{
            let mut g = spec("/x");
            g.methods = vec![Method::GET];
            g
        }]);
        assert!(only_get.find(&Method::DELETE, "/x", |_| None).is_none());
    }

    #[test]
    fn per_user_routes_only_serve_their_users_and_win_ties() {
        let mut demo = spec("/fast");
        demo.users = vec!["demo".into()];
        let router = Router::new(vec![spec("/fast"), demo]);
        let mut calls = 0;
        let demo_match = router.find(&Method::GET, "/fast", |_| {
            calls += 1;
            Some("demo".into())
        });
        assert_eq!(demo_match.unwrap().index, 1);
        assert_eq!(calls, 1);
        assert_eq!(
            router
                .find(&Method::GET, "/fast", |_| Some("bob".into()))
                .unwrap()
                .index,
            0
        );
        assert_eq!(
            router.find(&Method::GET, "/fast", |_| None).unwrap().index,
            0
        );
    }

    #[test]
    fn the_user_id_is_resolved_once_per_request_for_a_shared_key_list() {
        let keys: Arc<[KeySource]> = Arc::from(vec![KeySource::Ip]);
        let mut a = spec("/a/:x");
        a.users = vec!["u1".into()];
        a.user_id_key = keys.clone();
        let mut b = spec("/a/*");
        b.users = vec!["u2".into()];
        b.user_id_key = keys;
        let router = Router::new(vec![a, b]);
        let mut calls = 0;
        let m = router.find(&Method::GET, "/a/1", |_| {
            calls += 1;
            Some("u2".into())
        });
        assert_eq!(m.unwrap().index, 1);
        assert_eq!(calls, 1);
    }
}
