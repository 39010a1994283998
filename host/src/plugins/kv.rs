//! The per-plugin key-value store: TTLs, atomic increments, bounded size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longest key and value a plugin may store.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// One plugin's store, shared by all its instances (and kept across plugin versions).
/// Bounded: when full, expired entries are swept, then the entry closest to expiry (or
/// an arbitrary one without TTL) is evicted, so memory stays flat whatever plugins do.
#[derive(Debug)]
pub struct KvStore {
    entries: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
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
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(key) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLong);
        }
        let now = Instant::now();
        let mut entries = self.lock();
        self.make_room(&mut entries, key, now);
        entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(())
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        self.lock().remove(key).is_some_and(|e| e.live(now))
    }

    /// Adds `delta` to the counter at `key` (stored as decimal text, so `get` reads it; a
    /// missing, expired or non-numeric value counts as 0) and returns the new value. `ttl` is set only when
    /// the counter is created.
    pub fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        check_key(key)?;
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key)
            && entry.live(now)
        {
            let current = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .unwrap_or(0);
            let next = current.saturating_add(delta);
            entry.value = next.to_string().into_bytes();
            return Ok(next);
        }
        self.make_room(&mut entries, key, now);
        entries.insert(
            key.to_owned(),
            Entry {
                value: delta.to_string().into_bytes(),
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(delta)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn make_room(&self, entries: &mut HashMap<String, Entry>, key: &str, now: Instant) {
        if entries.len() < self.max_entries || entries.contains_key(key) {
            return;
        }
        entries.retain(|_, e| e.live(now));
        if entries.len() < self.max_entries {
            return;
        }
        let victim = entries
            .iter()
            .min_by_key(|(_, e)| e.expires.map_or((1, now), |at| (0, at)))
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            entries.remove(&victim);
        }
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
        let kv = KvStore::new(10);
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
        let kv = KvStore::new(10);
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

    #[tokio::test(start_paused = true)]
    async fn the_store_stays_bounded_evicting_expired_then_soonest() {
        let kv = KvStore::new(3);
        kv.set("short", vec![], Some(Duration::from_secs(1)))
            .unwrap();
        kv.set("long", vec![], Some(Duration::from_secs(100)))
            .unwrap();
        kv.set("none", vec![], None).unwrap();
        kv.set("new", vec![], None).unwrap();
        assert_eq!(kv.len(), 3);
        assert_eq!(kv.get("short"), None, "soonest to expire went first");
        for i in 0..1000 {
            kv.incr(&format!("flood-{i}"), 1, None).unwrap();
        }
        assert_eq!(kv.len(), 3);
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let kv = KvStore::new(3);
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
