//! Bodies of snapshot chunks kept in memory: from the moment they close (the clients of
//! a new shape ask for each chunk as soon as it closes, and a body built while the chunk
//! is written spares reading the file back: the read was 12% of volt's CPU in S1's cold
//! sync), and once read from their files (a herd reading the same shape shares one body
//! instead of reading and copying the file once per request). Both the chunks being
//! built and the kept bodies are bounded in bytes, so many concurrent or unread
//! snapshots cost memory no more than the bounds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Bodies kept, oldest out first.
const KEPT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of chunks being built in memory, across every snapshot running. A chunk that
/// would go beyond it is written through a small buffer instead and read back from its
/// file when served, as before this cache existed.
const BUILDING_BYTES: usize = 64 * 1024 * 1024;

pub struct RecentChunks {
    budget: usize,
    building_budget: usize,
    building: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By (log id, chunk): a log's bodies are one range, so forgetting a log costs its
    /// own bodies, not a scan of everyone's.
    bodies: BTreeMap<(u64, u32), Bytes>,
    /// Insertion order, for eviction. Keys of forgotten bodies stay until they reach
    /// the front, or until they are half the queue and it is compacted.
    order: VecDeque<(u64, u32)>,
    bytes: usize,
}

/// The process's cache (log ids are unique within it).
pub fn recent_chunks() -> &'static RecentChunks {
    static CHUNKS: OnceLock<RecentChunks> = OnceLock::new();
    CHUNKS.get_or_init(|| RecentChunks::new(KEPT_BYTES, BUILDING_BYTES))
}

impl RecentChunks {
    pub fn new(budget: usize, building_budget: usize) -> RecentChunks {
        RecentChunks {
            budget,
            building_budget,
            building: AtomicUsize::new(0),
            inner: Mutex::default(),
        }
    }

    /// Count `n` more bytes of a chunk being built; false (nothing counted) when that
    /// would go beyond the building budget.
    pub fn reserve_building(&self, n: usize) -> bool {
        self.building
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(n).filter(|&t| t <= self.building_budget)
            })
            .is_ok()
    }

    pub fn release_building(&self, n: usize) {
        self.building.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes counted for chunks being built.
    pub fn building_bytes(&self) -> usize {
        self.building.load(Ordering::Acquire)
    }

    /// Bytes of the closed bodies kept.
    pub fn kept_bytes(&self) -> usize {
        self.inner.lock().map(|i| i.bytes).unwrap_or(0)
    }

    pub fn get(&self, log: u64, k: u32) -> Option<Bytes> {
        self.inner.lock().ok()?.bodies.get(&(log, k)).cloned()
    }

    pub fn insert(&self, log: u64, k: u32, body: Bytes) {
        // A body larger than a quarter of the budget would evict most of the cache for
        // one shape: it is read from its file each time instead.
        if body.len() > self.budget / 4 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.bytes += body.len();
        if let Some(old) = inner.bodies.insert((log, k), body) {
            inner.bytes -= old.len();
        } else {
            inner.order.push_back((log, k));
        }
        while inner.bytes > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.bodies.remove(&oldest) {
                inner.bytes -= b.len();
            }
        }
    }

    /// Drop every body of a log that is gone.
    pub fn forget_log(&self, log: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let keys: Vec<(u64, u32)> = inner
            .bodies
            .range((log, 0)..=(log, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return;
        }
        for key in keys {
            if let Some(b) = inner.bodies.remove(&key) {
                inner.bytes -= b.len();
            }
        }
        if inner.order.len() > 2 * inner.bodies.len() + 64 {
            let Inner { bodies, order, .. } = &mut *inner;
            order.retain(|k| bodies.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_bodies_go_first_when_over_budget() {
        let cache = RecentChunks::new(100, 0);
        for k in 0..5 {
            cache.insert(1, k, Bytes::from(vec![b'x'; 25]));
        }
        assert!(cache.get(1, 0).is_none());
        assert!((1..5).all(|k| cache.get(1, k).is_some()));
        assert_eq!(cache.kept_bytes(), 100);
        // Larger than a quarter of the budget: not kept, nothing evicted.
        cache.insert(2, 0, Bytes::from(vec![b'x'; 26]));
        assert!(cache.get(2, 0).is_none());
        assert_eq!(cache.kept_bytes(), 100);
    }

    #[test]
    fn a_forgotten_log_leaves_no_body_behind() {
        let cache = RecentChunks::new(100, 0);
        cache.insert(1, 0, Bytes::from_static(b"[1]"));
        cache.insert(2, 0, Bytes::from_static(b"[22]"));
        cache.insert(1, 1, Bytes::from_static(b"[333]"));
        cache.forget_log(1);
        assert!(cache.get(1, 0).is_none() && cache.get(1, 1).is_none());
        assert_eq!(cache.get(2, 0).as_deref(), Some(&b"[22]"[..]));
        assert_eq!(cache.kept_bytes(), 4);
    }

    #[test]
    fn building_is_refused_beyond_its_budget_until_released() {
        let cache = RecentChunks::new(0, 100);
        assert!(cache.reserve_building(60));
        assert!(!cache.reserve_building(41));
        assert_eq!(cache.building_bytes(), 60);
        assert!(cache.reserve_building(40));
        cache.release_building(60);
        assert!(cache.reserve_building(60));
    }
}
