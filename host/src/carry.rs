//! State carried across config snapshots, keyed by typed values: each rebuild keeps
//! the state whose key the new snapshot still uses and drops the rest.
//!
//! Everything that must survive a reload (target counters and breakers, retry budgets,
//! connection pools, rate limiters, response caches) goes through this one mechanism,
//! keyed by what identifies it (a group and target address, a route label and its
//! limit spec), so a changed setting starts fresh state and an unchanged one keeps it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// The live state of one kind, by key.
#[derive(Debug)]
pub struct Carried<K, V> {
    live: Mutex<HashMap<K, Arc<V>>>,
}

impl<K, V> Default for Carried<K, V> {
    fn default() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V> Carried<K, V> {
    /// Starts a rebuild. It holds the state's lock until it is committed or dropped,
    /// so two rebuilds never interleave; a rebuild dropped without `commit` changes
    /// nothing.
    pub fn rebuild(&self) -> Rebuild<'_, K, V> {
        Rebuild {
            live: self.live.lock().unwrap_or_else(|e| e.into_inner()),
            kept: HashMap::new(),
        }
    }

    /// How many entries are live (for tests and the admin API).
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One rebuild in progress: what the new snapshot uses, taken from the live state or
/// made new.
pub struct Rebuild<'a, K, V> {
    live: MutexGuard<'a, HashMap<K, Arc<V>>>,
    kept: HashMap<K, Arc<V>>,
}

impl<K: Eq + Hash, V> Rebuild<'_, K, V> {
    /// The state for `key`: the live one if the last snapshot had it (or this rebuild
    /// already kept it), else `make()`. Either way the new snapshot keeps it.
    pub fn keep(&mut self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        if let Some(kept) = self.kept.get(&key) {
            return kept.clone();
        }
        let state = self
            .live
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new(make()));
        self.kept.insert(key, state.clone());
        state
    }

    /// Makes the kept state the live state; everything not kept is dropped.
    pub fn commit(mut self) {
        *self.live = std::mem::take(&mut self.kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_keeps_what_it_uses_and_drops_the_rest() {
        let carried: Carried<(&str, u32), u32> = Carried::default();
        let mut first = carried.rebuild();
        let a = first.keep(("a", 1), || 10);
        let again = first.keep(("a", 1), || 99);
        assert!(
            Arc::ptr_eq(&a, &again),
            "one key, one state within a rebuild"
        );
        first.keep(("b", 1), || 20);
        first.commit();
        assert_eq!(carried.len(), 2);

        let mut second = carried.rebuild();
        let kept = second.keep(("a", 1), || 0);
        assert!(Arc::ptr_eq(&a, &kept), "same key: same state");
        let changed = second.keep(("a", 2), || 30);
        assert_eq!(*changed, 30, "a changed setting starts fresh");
        second.commit();
        assert_eq!(carried.len(), 2, "b was not used and is gone");

        let mut abandoned = carried.rebuild();
        abandoned.keep(("c", 1), || 40);
        drop(abandoned);
        let mut third = carried.rebuild();
        assert!(Arc::ptr_eq(&third.keep(("a", 1), || 0), &a));
    }
}
