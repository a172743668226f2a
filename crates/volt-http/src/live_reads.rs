//! Live requests woken by the same commit ask for the same thing: what follows the offset
//! they were all sent last. They share one read of the log and one body, instead of each
//! reading the log and holding its own copy (a thousand clients of one shape meant a
//! thousand reads and copies of the same bytes per commit; 500 clients held one copy
//! each of a 2M-row transaction's chunks).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;
use volt_storage::LogOffset;

/// A live response body: the items after the request's offset (and an up-to-date when
/// they reach the end).
#[derive(Debug)]
pub struct LiveBody {
    pub body: Bytes,
    pub last: LogOffset,
    pub reached_end: bool,
}

/// (handle, the request's offset, the log's latest offset when asked): with the latest
/// offset in the key, a shared answer is exactly what a read of its own would return.
type Key = (String, LogOffset, LogOffset);
type Cell = Arc<OnceCell<Option<Arc<LiveBody>>>>;

struct Slot {
    cell: Cell,
    bytes: usize,
}

pub struct LiveReads {
    budget: usize,
    max_keys: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<Key>,
    bytes: usize,
}

impl LiveReads {
    /// Keeps finished bodies up to `budget` bytes and `max_keys` keys; requests in flight
    /// share a read however large it is.
    pub fn new(budget: usize, max_keys: usize) -> LiveReads {
        LiveReads {
            budget,
            max_keys: max_keys.max(1),
            inner: Mutex::default(),
        }
    }

    /// The shared answer for `key`, running `read` only if no request made or is making
    /// it. `Ok(None)`: nothing after the offset. A failed read is not shared: the next
    /// request for the key reads again.
    pub async fn get_or_read<F, Fut, E>(
        &self,
        handle: &str,
        after: LogOffset,
        latest: LogOffset,
        read: F,
    ) -> Result<Option<Arc<LiveBody>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<LiveBody>>, E>>,
    {
        let key = (handle.to_string(), after, latest);
        let cell = {
            let Ok(mut inner) = self.inner.lock() else {
                return read().await;
            };
            match inner.slots.get(&key) {
                Some(slot) => slot.cell.clone(),
                None => {
                    let cell = Cell::default();
                    inner.slots.insert(
                        key.clone(),
                        Slot {
                            cell: cell.clone(),
                            bytes: 0,
                        },
                    );
                    inner.order.push_back(key.clone());
                    self.evict(&mut inner);
                    cell
                }
            }
        };
        let mut fresh = false;
        let got = cell
            .get_or_try_init(|| {
                fresh = true;
                read()
            })
            .await?
            .clone();
        if fresh
            && let Some(body) = &got
            && let Ok(mut inner) = self.inner.lock()
        {
            let n = body.body.len();
            if let Some(slot) = inner.slots.get_mut(&key)
                && Arc::ptr_eq(&slot.cell, &cell)
            {
                slot.bytes = n;
                inner.bytes += n;
                self.evict(&mut inner);
            }
        }
        Ok(got)
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.bytes > self.budget || inner.slots.len() > self.max_keys {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(slot) = inner.slots.remove(&old) {
                inner.bytes -= slot.bytes;
            }
        }
    }

    /// Bytes of the finished bodies kept (for the admin stats).
    pub fn kept_bytes(&self) -> usize {
        self.inner.lock().map(|i| i.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn body(len: usize) -> Option<Arc<LiveBody>> {
        Some(Arc::new(LiveBody {
            body: Bytes::from(vec![b'x'; len]),
            last: LogOffset::new(1, 0),
            reached_end: true,
        }))
    }

    #[tokio::test]
    async fn concurrent_requests_for_the_same_offset_share_one_read_and_one_body() {
        let reads = Arc::new(LiveReads::new(1 << 20, 64));
        let count = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (reads, count, mut released) = (reads.clone(), count.clone(), released.clone());
                tokio::spawn(async move {
                    reads
                        .get_or_read(
                            "h",
                            LogOffset::new(1, 0),
                            LogOffset::new(2, 0),
                            || async move {
                                count.fetch_add(1, Ordering::SeqCst);
                                let _ = released.wait_for(|r| *r).await;
                                Ok::<_, ()>(body(1000))
                            },
                        )
                        .await
                })
            })
            .collect();
        release.send_replace(true);
        let mut bodies = Vec::new();
        for t in tasks {
            bodies.push(t.await.unwrap().unwrap().unwrap());
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(
            bodies
                .iter()
                .all(|b| b.body.as_ptr() == bodies[0].body.as_ptr())
        );
    }

    #[tokio::test]
    async fn a_different_offset_or_a_newer_log_reads_again() {
        let reads = LiveReads::new(1 << 20, 64);
        let count = AtomicUsize::new(0);
        let read = || async {
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(body(10))
        };
        let (a, b) = (LogOffset::new(1, 0), LogOffset::new(2, 0));
        reads.get_or_read("h", a, b, read).await.unwrap();
        reads.get_or_read("h", a, b, read).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        reads.get_or_read("h", b, b, read).await.unwrap();
        reads
            .get_or_read("h", a, LogOffset::new(3, 0), read)
            .await
            .unwrap();
        reads.get_or_read("other", a, b, read).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_read_is_not_shared_and_bodies_past_the_budget_are_not_kept() {
        let reads = LiveReads::new(100, 64);
        let (a, b) = (LogOffset::new(1, 0), LogOffset::new(2, 0));
        let failed = reads
            .get_or_read("h", a, b, || async {
                Err::<Option<Arc<LiveBody>>, _>("disk")
            })
            .await;
        assert!(failed.is_err());
        let ok = reads
            .get_or_read("h", a, b, || async { Ok::<_, ()>(body(60)) })
            .await;
        assert!(ok.unwrap().is_some());
        assert_eq!(reads.kept_bytes(), 60);
        // A second 60-byte body pushes the first out.
        reads
            .get_or_read("h", b, b, || async { Ok::<_, ()>(body(60)) })
            .await
            .unwrap();
        assert_eq!(reads.kept_bytes(), 60);
    }
}
