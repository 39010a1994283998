//! The per-plugin key-value store: TTLs, atomic increments, bounded in bytes.
//!
//! Built on moka: the bound is a weight (key + value + overhead bytes) enforced by
//! amortised, concurrent eviction, so no write holds a lock over the whole store (a
//! plugin writing unique keys as fast as it can only ever evicts its own old entries).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

/// Longest key and value a plugin may store.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// What an entry costs beyond its key and value (moka's node, our header).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    ttl: Option<Duration>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// Lets moka reclaim an entry once its TTL passed (reads check the TTL themselves on
/// the tokio clock, so paused-time tests see it exactly).
struct EntryTtl;

impl moka::Expiry<String, Arc<Entry>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        entry.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _now: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        entry.ttl
    }
}

/// One plugin's store, shared by all its instances (and kept across plugin versions).
pub struct KvStore {
    entries: Cache<String, Arc<Entry>>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish()
    }
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("value longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong,
}

impl KvStore {
    /// A store that holds at most `max_bytes` of keys, values and overhead.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_bytes.max(1))
                .weigher(|key: &String, entry: &Arc<Entry>| {
                    u32::try_from(key.len() + entry.value.len() + ENTRY_OVERHEAD)
                        .unwrap_or(u32::MAX)
                })
                .expire_after(EntryTtl)
                .build(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entry = self.entries.get(key)?;
        if entry.live(Instant::now()) {
            Some(entry.value.clone())
        } else {
            self.entries.invalidate(key);
            None
        }
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLong);
        }
        self.entries
            .insert(key.to_owned(), Arc::new(entry(value, ttl, Instant::now())));
        Ok(())
    }

    pub fn delete(&self, key: &str) -> bool {
        self.entries
            .remove(key)
            .is_some_and(|e| e.live(Instant::now()))
    }

    /// Adds `delta` to the counter at `key` (stored as decimal text, so `get` reads it;
    /// a missing, expired or non-numeric value counts as 0) and returns the new value.
    /// `ttl` is set only when the counter is created. Atomic per key.
    pub fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        check_key(key)?;
        let now = Instant::now();
        let mut next = delta;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let current = current.map(|e| e.into_value()).filter(|e| e.live(now));
                let (value, expires, ttl) = match &current {
                    Some(entry) => {
                        let count = std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|text| text.trim().parse::<i64>().ok())
                            .unwrap_or(0);
                        next = count.saturating_add(delta);
                        (next, entry.expires, entry.expires.map(|at| at - now))
                    }
                    None => (delta, ttl.map(|t| now + t), ttl),
                };
                moka::ops::compute::Op::Put(Arc::new(Entry {
                    value: value.to_string().into_bytes(),
                    expires,
                    ttl,
                }))
            });
        Ok(next)
    }

    /// Entries held now (after pending evictions run).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now (keys, values and per-entry overhead).
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

fn entry(value: Vec<u8>, ttl: Option<Duration>, now: Instant) -> Entry {
    Entry {
        value,
        expires: ttl.map(|t| now + t),
        ttl,
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        Err(KvError::KeyTooLong)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn values_expire_after_their_ttl() {
        let kv = KvStore::new(1 << 20);
        kv.set("a", b"1".to_vec(), Some(Duration::from_secs(5)))
            .unwrap();
        kv.set("forever", b"2".to_vec(), None).unwrap();
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(kv.get("a"), None);
        assert_eq!(kv.get("forever"), Some(b"2".to_vec()));
        assert!(kv.delete("forever"));
        assert!(!kv.delete("forever"));
    }

    #[tokio::test(start_paused = true)]
    async fn incr_counts_atomically_and_restarts_after_expiry() {
        let kv = KvStore::new(1 << 20);
        assert_eq!(kv.incr("c", 1, Some(Duration::from_secs(1))), Ok(1));
        assert_eq!(kv.incr("c", 5, Some(Duration::from_secs(100))), Ok(6));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            kv.incr("c", 1, None),
            Ok(1),
            "the TTL from creation applied"
        );
        kv.set("s", b"not a counter".to_vec(), None).unwrap();
        assert_eq!(kv.incr("s", 2, None), Ok(2));
        assert_eq!(
            kv.get("s"),
            Some(b"2".to_vec()),
            "counters read back as decimal text"
        );
        kv.set("n", b"40".to_vec(), None).unwrap();
        assert_eq!(kv.incr("n", 2, None), Ok(42));
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let kv = Arc::new(KvStore::new(1 << 20));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        kv.incr("n", 1, None).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("n"), Some(b"2000".to_vec()));
    }

    #[test]
    fn the_store_stays_within_its_bytes_whatever_is_written() {
        let max = 256 * 1024;
        let kv = KvStore::new(max);
        for i in 0..20_000 {
            kv.set(&format!("flood-{i}"), vec![7; 1000], None).unwrap();
        }
        let held = kv.bytes();
        assert!(held <= max, "{held} bytes held, bound {max}");
        assert!(kv.len() > 100, "the store still holds recent entries");
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let kv = KvStore::new(1 << 20);
        assert_eq!(
            kv.set(&"k".repeat(2000), vec![], None),
            Err(KvError::KeyTooLong)
        );
        assert_eq!(
            kv.set("k", vec![0; MAX_VALUE_BYTES + 1], None),
            Err(KvError::ValueTooLong)
        );
        assert!(kv.is_empty());
    }
}
