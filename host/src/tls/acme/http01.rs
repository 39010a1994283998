//! The http-01 answers under way: token → key authorization, read by the pipeline on
//! the plain listener for `GET /.well-known/acme-challenge/<token>`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The tokens the CA may ask for now (usually none).
#[derive(Debug, Default)]
pub struct Http01Tokens {
    tokens: ArcSwap<HashMap<String, Arc<str>>>,
}

impl Http01Tokens {
    /// Answers `token` with `key_authorization` from now on.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let value: Arc<str> = Arc::from(key_authorization);
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(token.to_owned(), value.clone());
            next
        });
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(token);
            next
        });
    }

    /// The key authorization for `token`, while its challenge is under way.
    pub fn get(&self, token: &str) -> Option<Arc<str>> {
        self.tokens.load().get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_answered_until_removed() {
        let tokens = Http01Tokens::default();
        assert!(tokens.get("t1").is_none());
        tokens.insert("t1", "t1.thumb");
        tokens.insert("t2", "t2.thumb");
        assert_eq!(tokens.get("t1").as_deref(), Some("t1.thumb"));
        tokens.remove("t1");
        assert!(tokens.get("t1").is_none());
        assert_eq!(tokens.get("t2").as_deref(), Some("t2.thumb"));
    }
}
