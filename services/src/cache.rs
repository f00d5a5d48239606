//! A least-recently-used map of shared slots that never drops a slot in use.
//!
//! The aggregate cache keeps one lock per aggregate. Evicting a slot while a command
//! holds (or is waiting for) its lock would let the next command on that aggregate
//! create a second slot and run beside the first, so a slot is only evicted when the
//! cache holds the sole reference to it. References are handed out only under the
//! cache's own lock, so "sole reference" cannot change while eviction looks at it.
//!
//! When more than `capacity` slots are in use at once the cache grows past its
//! capacity; each [`Lease`] trims it back as it is returned.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct SlotCache<T> {
    inner: Mutex<Lru<T>>,
}

struct Lru<T> {
    capacity: usize,
    /// Increases on every access; an entry's tick is its last use.
    clock: u64,
    entries: HashMap<String, (Arc<T>, u64)>,
    /// Keys by last use, oldest first.
    recency: BTreeMap<u64, String>,
}

/// A slot on loan from the cache. While it lives the slot cannot be evicted.
pub struct Lease<'a, T> {
    cache: &'a SlotCache<T>,
    slot: Option<Arc<T>>,
}

impl<T: Default> SlotCache<T> {
    /// A cache of at most `capacity` idle slots (at least one).
    pub fn new(capacity: usize) -> SlotCache<T> {
        SlotCache {
            inner: Mutex::new(Lru {
                capacity: capacity.max(1),
                clock: 0,
                entries: HashMap::new(),
                recency: BTreeMap::new(),
            }),
        }
    }

    /// The slot for `key`, created empty if absent, and whether it was cached.
    pub fn get(&self, key: &str) -> (Lease<'_, T>, bool) {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        let (slot, hit) = if let Some((slot, used)) = lru.entries.get_mut(key) {
            let previous = std::mem::replace(used, now);
            let slot = slot.clone();
            lru.recency.remove(&previous);
            (slot, true)
        } else {
            // Make room first, so the new slot is never the one evicted.
            while lru.entries.len() >= lru.capacity && lru.evict_oldest_idle() {}
            let slot = Arc::new(T::default());
            lru.entries.insert(key.to_string(), (slot.clone(), now));
            (slot, false)
        };
        lru.recency.insert(now, key.to_string());
        let lease = Lease {
            cache: self,
            slot: Some(slot),
        };
        (lease, hit)
    }

    /// Slots currently held, in use or not.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, Lru<T>> {
        // The map is consistent after every statement, so a panic elsewhere while
        // holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Lru<T> {
    /// Removes the least recently used slot nobody else holds; false if all are held.
    fn evict_oldest_idle(&mut self) -> bool {
        let idle = self.recency.iter().find_map(|(&used, key)| {
            let (slot, _) = self.entries.get(key)?;
            (Arc::strong_count(slot) == 1).then_some(used)
        });
        let Some(used) = idle else {
            return false;
        };
        if let Some(key) = self.recency.remove(&used) {
            self.entries.remove(&key);
        }
        true
    }
}

impl<T> Deref for Lease<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.slot
            .as_deref()
            .expect("a lease holds its slot until dropped")
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        // Our reference goes first, so this slot itself may now be evicted.
        drop(self.slot.take());
        let mut lru = self.cache.inner.lock().unwrap_or_else(|p| p.into_inner());
        while lru.entries.len() > lru.capacity && lru.evict_oldest_idle() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cache = SlotCache<Mutex<u32>>;

    fn touch(cache: &Cache, key: &str) -> bool {
        cache.get(key).1
    }

    #[test]
    fn the_least_recently_used_slot_makes_room() {
        let cache = Cache::new(2);
        assert!(!touch(&cache, "a"));
        assert!(!touch(&cache, "b"));
        assert!(touch(&cache, "a"));
        assert!(!touch(&cache, "c"), "b was least recently used");
        assert_eq!(cache.len(), 2);
        assert!(touch(&cache, "a"));
        assert!(!touch(&cache, "b"));
    }

    #[test]
    fn a_slot_keeps_its_contents_while_cached() {
        let cache = Cache::new(2);
        *cache.get("a").0.lock().unwrap() = 7;
        touch(&cache, "b");
        assert_eq!(*cache.get("a").0.lock().unwrap(), 7);
    }

    #[test]
    fn a_slot_on_loan_is_never_evicted() {
        let cache = Cache::new(1);
        let (held, _) = cache.get("a");
        *held.lock().unwrap() = 1;
        // Over capacity while "a" is held: "b" and "c" cannot push it out.
        let (b, _) = cache.get("b");
        drop(b);
        assert_eq!(cache.len(), 1, "b was trimmed when returned");
        let (again, hit) = cache.get("a");
        assert!(hit);
        assert!(Arc::ptr_eq(
            held.slot.as_ref().unwrap(),
            again.slot.as_ref().unwrap()
        ));
        drop(again);
        let (c, _) = cache.get("c");
        assert_eq!(cache.len(), 2, "a and c are both held");
        drop(held);
        assert_eq!(cache.len(), 1, "trimmed back once a was returned");
        drop(c);
        assert!(touch(&cache, "c"));
    }

    #[test]
    fn many_keys_never_exceed_the_capacity_when_returned() {
        let cache = Cache::new(8);
        for n in 0..1000 {
            touch(&cache, &format!("k{}", n % 97));
            assert!(cache.len() <= 8);
        }
    }

    #[test]
    fn a_capacity_of_zero_still_caches_one_slot() {
        let cache = Cache::new(0);
        touch(&cache, "a");
        assert!(touch(&cache, "a"));
    }
}
