//! A route's response cache: a bounded store, Vary-aware keys, and collapsing of
//! concurrent misses so one upstream request fills a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cache_policy;
use crate::config::CacheConfig;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    stored_at: Instant,
    ttl: Duration,
}

impl Stored {
    /// Seconds since it was stored (the `Age` header).
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored_at).as_secs()
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.ttl
    }
}

/// Tells moka to drop each entry when its own freshness ends.
struct ExpireAtTtl;

impl moka::Expiry<String, Arc<Stored>> for ExpireAtTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Stored>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The cache of one route. Memory is bounded by `max_entries × max_body_bytes` (plus
/// headers): bigger bodies are never stored.
pub struct ResponseCache {
    pub config: CacheConfig,
    entries: moka::sync::Cache<String, Arc<Stored>>,
    /// The Vary header names last seen for a primary key, to build the full key of
    /// the next request before its response is known.
    vary: moka::sync::Cache<String, Arc<[HeaderName]>>,
    /// Keys being fetched now; followers wait on the leader's channel.
    filling: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("config", &self.config)
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Stored>),
    /// Fetch from upstream; store through the guard. Other requests for the key wait.
    Lead(FillGuard),
    /// Another request for the key is already being fetched: wait on this, then look
    /// again (and fetch yourself if it was not stored).
    Follow(watch::Receiver<bool>),
}

/// Held by the one request filling a key; dropping it releases the followers.
pub struct FillGuard {
    cache: Arc<ResponseCache>,
    primary: String,
    key: String,
    sender: watch::Sender<bool>,
}

impl ResponseCache {
    pub fn new(config: CacheConfig) -> Self {
        let max_ttl = Duration::from_millis(config.max_ttl_ms.max(1));
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(ExpireAtTtl)
                .build(),
            vary: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(max_ttl)
                .build(),
            filling: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// The primary key: method, host, path and query.
    pub fn primary_key<B>(req: &Request<B>) -> String {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        format!("{} {}{}", req.method(), host.to_ascii_lowercase(), target)
    }

    fn full_key(&self, primary: &str, headers: &HeaderMap) -> String {
        match self.vary.get(primary) {
            Some(names) if !names.is_empty() => {
                format!("{primary}\n{}", cache_policy::vary_key(&names, headers))
            }
            _ => primary.to_owned(),
        }
    }

    /// Finds a fresh response for the request, or says who fetches it. With
    /// `refresh` (request `no-cache`) any stored copy is ignored.
    pub fn lookup(self: &Arc<Self>, primary: String, headers: &HeaderMap, refresh: bool) -> Lookup {
        let key = self.full_key(&primary, headers);
        let now = Instant::now();
        if !refresh && let Some(stored) = self.entries.get(&key).filter(|s| s.is_fresh(now)) {
            return Lookup::Hit(stored);
        }
        let mut filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = filling.get(&key) {
            return Lookup::Follow(waiting.clone());
        }
        let (sender, receiver) = watch::channel(false);
        filling.insert(key.clone(), receiver);
        Lookup::Lead(FillGuard {
            cache: self.clone(),
            primary,
            key,
            sender,
        })
    }

    /// Entries stored now (approximate until moka's maintenance runs).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FillGuard {
    /// Stores the response under this request's key (recomputed with the response's
    /// Vary names), when it is fresh for `ttl`.
    pub fn store(
        &self,
        request_headers: &HeaderMap,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        ttl: Duration,
    ) {
        let Some(names) = cache_policy::vary_names(&headers) else {
            return;
        };
        let key = if names.is_empty() {
            self.primary.clone()
        } else {
            format!(
                "{}\n{}",
                self.primary,
                cache_policy::vary_key(&names, request_headers)
            )
        };
        self.cache
            .vary
            .insert(self.primary.clone(), Arc::from(names));
        self.cache.entries.insert(
            key,
            Arc::new(Stored {
                status,
                headers,
                body,
                stored_at: Instant::now(),
                ttl,
            }),
        );
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.cache
            .filling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        // Followers look again whether or not anything was stored.
        let _ = self.sender.send(true);
    }
}

/// Waits (at most `limit`) for the leader of a key to finish.
pub async fn wait_for_leader(mut receiver: watch::Receiver<bool>, limit: Duration) {
    let _ = tokio::time::timeout(limit, receiver.wait_for(|done| *done)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CacheConfig {
        CacheConfig {
            max_entries: 10,
            ..CacheConfig::default()
        }
    }

    fn request(path: &str, accept: Option<&str>) -> Request<()> {
        let mut b = Request::get(path).header("host", "Example.COM");
        if let Some(a) = accept {
            b = b.header("accept-language", a);
        }
        b.body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn stores_serves_and_expires_by_ttl() {
        let cache = Arc::new(ResponseCache::new(config()));
        let req = request("/a?x=1", None);
        let primary = ResponseCache::primary_key(&req);
        assert_eq!(primary, "GET example.com/a?x=1");
        let Lookup::Lead(guard) = cache.lookup(primary.clone(), req.headers(), false) else {
            panic!("first lookup must lead");
        };
        assert!(matches!(
            cache.lookup(primary.clone(), req.headers(), false),
            Lookup::Follow(_)
        ));
        guard.store(
            req.headers(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"hi"),
            Duration::from_secs(5),
        );
        drop(guard);
        let Lookup::Hit(hit) = cache.lookup(primary.clone(), req.headers(), false) else {
            panic!("stored response must hit");
        };
        assert_eq!(hit.body, "hi");
        assert!(
            matches!(
                cache.lookup(primary.clone(), req.headers(), true),
                Lookup::Lead(_)
            ),
            "refresh ignores the stored copy"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            matches!(cache.lookup(primary, req.headers(), false), Lookup::Lead(_)),
            "stale entries are not served"
        );
    }

    #[tokio::test]
    async fn vary_headers_split_entries() {
        let cache = Arc::new(ResponseCache::new(config()));
        let en = request("/v", Some("en"));
        let fr = request("/v", Some("fr"));
        let primary = ResponseCache::primary_key(&en);
        let Lookup::Lead(guard) = cache.lookup(primary.clone(), en.headers(), false) else {
            panic!()
        };
        let mut headers = HeaderMap::new();
        headers.insert("vary", "Accept-Language".parse().unwrap());
        guard.store(
            en.headers(),
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            Duration::from_secs(60),
        );
        drop(guard);
        assert!(matches!(
            cache.lookup(primary.clone(), en.headers(), false),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            cache.lookup(primary, fr.headers(), false),
            Lookup::Lead(_)
        ));
    }

    #[tokio::test]
    async fn followers_are_released_when_the_leader_ends() {
        let cache = Arc::new(ResponseCache::new(config()));
        let req = request("/w", None);
        let primary = ResponseCache::primary_key(&req);
        let Lookup::Lead(guard) = cache.lookup(primary.clone(), req.headers(), false) else {
            panic!()
        };
        let Lookup::Follow(rx) = cache.lookup(primary.clone(), req.headers(), false) else {
            panic!()
        };
        let waiter = tokio::spawn(wait_for_leader(rx, Duration::from_secs(10)));
        drop(guard); // nothing stored (e.g. uncacheable response)
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("follower released")
            .unwrap();
        assert!(matches!(
            cache.lookup(primary, req.headers(), false),
            Lookup::Lead(_)
        ));
    }

    #[test]
    fn entry_count_is_bounded() {
        let cache = Arc::new(ResponseCache::new(config()));
        for i in 0..500 {
            let req = request(&format!("/k{i}"), None);
            if let Lookup::Lead(g) =
                cache.lookup(ResponseCache::primary_key(&req), req.headers(), false)
            {
                g.store(
                    req.headers(),
                    StatusCode::OK,
                    HeaderMap::new(),
                    Bytes::from_static(b"x"),
                    Duration::from_secs(60),
                );
            }
        }
        assert!(cache.len() <= 10, "{}", cache.len());
    }
}
