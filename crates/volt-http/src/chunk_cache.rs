//! Finished snapshot chunks never change (a handle is never reused), so the bodies of
//! recently served ones are kept in memory: a herd reading the same new shape shares one
//! buffer instead of reading and copying the file once per request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<(String, u32), Bytes>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<(String, u32)>,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of bodies.
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Bytes of the chunk bodies kept (for the admin stats).
    pub fn kept_bytes(&self) -> usize {
        self.inner.lock().map(|i| i.bytes).unwrap_or(0)
    }

    pub fn get(&self, handle: &str, k: u32) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        inner.bodies.get(&(handle.to_string(), k)).cloned()
    }

    pub fn insert(&self, handle: &str, k: u32, body: Bytes) {
        // A body larger than a quarter of the budget would evict most of the cache for one
        // shape: serve it from disk each time instead.
        if body.len() > self.budget / 4 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (handle.to_string(), k);
        if inner.bodies.contains_key(&key) {
            return;
        }
        inner.bytes += body.len();
        inner.bodies.insert(key.clone(), body);
        inner.order.push_back(key);
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.bodies.remove(&old) {
                inner.bytes -= b.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_bodies_go_first_when_over_budget() {
        let cache = ChunkCache::new(40);
        cache.insert("a", 0, Bytes::from(vec![b'x'; 10]));
        cache.insert("b", 0, Bytes::from(vec![b'x'; 10]));
        cache.insert("c", 0, Bytes::from(vec![b'x'; 10]));
        cache.insert("d", 0, Bytes::from(vec![b'x'; 10]));
        cache.insert("e", 0, Bytes::from(vec![b'x'; 10]));
        assert!(cache.get("a", 0).is_none());
        assert!(cache.get("e", 0).is_some());
        // Too large for the cache: not kept, nothing evicted.
        cache.insert("f", 0, Bytes::from(vec![b'x'; 11]));
        assert!(cache.get("f", 0).is_none());
        assert!(cache.get("b", 0).is_some());
    }
}
