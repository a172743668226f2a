//! Requests woken by the same commit, or catching up from the same offset, ask for the
//! same thing: what follows that offset in the log as it stands. They share one read of
//! the log and one body, instead of each reading the log and holding its own copy (a
//! thousand clients of one shape meant a thousand reads and copies of the same bytes per
//! commit; 500 clients held one copy each of a 2M-row transaction's chunks). A body is
//! shared for as long as any response still sends it, and the last ones finished are
//! kept within a budget for requests that come later.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OnceCell;
use volt_storage::LogOffset;

/// The items after a request's offset, as the start of a JSON array (`[a,b,c`): each
/// response closes it with a tail of its own (an up-to-date message when the items
/// reach the end of the log, which for a non-live request names the service's latest
/// LSN at the time of the response).
#[derive(Debug)]
pub struct LiveBody {
    pub items: Bytes,
    pub last: LogOffset,
    pub reached_end: bool,
}

impl LiveBody {
    /// A response body: the shared items, then `tail` (one more JSON value) and the
    /// closing bracket. The body holds the `LiveBody`, so requests for the same bytes
    /// share it for as long as any response is still sending it.
    pub fn response_body(self: &Arc<Self>, tail: Option<&str>) -> axum::body::Body {
        let close = match tail {
            Some(t) => format!(",{t}]"),
            None => "]".to_string(),
        };
        axum::body::Body::new(TwoPart {
            parts: [
                Some(Bytes::from_owner(Held(self.clone()))),
                Some(Bytes::from(close)),
            ],
        })
    }
}

struct Held(Arc<LiveBody>);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.0.items
    }
}

/// Two buffers sent one after the other, with their exact length announced.
struct TwoPart {
    parts: [Option<Bytes>; 2],
}

impl http_body::Body for TwoPart {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.parts.iter_mut().find_map(Option::take);
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.iter().all(Option::is_none)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.parts.iter().flatten().map(|b| b.len() as u64).sum())
    }
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
    /// Every body read, kept or not: one that responses still hold is shared with new
    /// requests at no cost in memory.
    sent: HashMap<Key, Weak<LiveBody>>,
    /// Entries of `sent` after its last clean-up: it is cleaned again when it doubles.
    sent_after_cleanup: usize,
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
                    if let Some(body) = inner.sent.get(&key).and_then(Weak::upgrade) {
                        return Ok(Some(body));
                    }
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
            let n = body.items.len();
            if inner.sent.len() >= self.max_keys.max(2 * inner.sent_after_cleanup) {
                inner.sent.retain(|_, b| b.strong_count() > 0);
                inner.sent_after_cleanup = inner.sent.len();
            }
            inner.sent.insert(key.clone(), Arc::downgrade(body));
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
            items: Bytes::from(vec![b'x'; len]),
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
                .all(|b| b.items.as_ptr() == bodies[0].items.as_ptr())
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
    async fn a_body_a_response_still_sends_is_shared_after_it_left_the_budget() {
        let reads = LiveReads::new(100, 64);
        let count = AtomicUsize::new(0);
        let read = || async {
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(body(80))
        };
        let (a, b, c) = (
            LogOffset::new(1, 0),
            LogOffset::new(2, 0),
            LogOffset::new(3, 0),
        );
        let first = reads.get_or_read("h", a, c, read).await.unwrap().unwrap();
        let sending = first.response_body(None);
        drop(first);
        // Another 80-byte body pushes the first out of the kept budget...
        reads.get_or_read("h", b, c, read).await.unwrap();
        assert_eq!(reads.kept_bytes(), 80);
        // ...but a response still holds it: shared, not read again.
        reads.get_or_read("h", a, c, read).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        drop(sending);
        // Once nothing holds it, it is gone.
        reads.get_or_read("h", a, c, read).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_response_body_is_the_shared_items_then_its_own_tail_with_its_exact_length() {
        let shared = Arc::new(LiveBody {
            items: Bytes::from_static(b"[1,2"),
            last: LogOffset::new(1, 0),
            reached_end: true,
        });
        for (tail, expected) in [(None, "[1,2]"), (Some("{\"up\":3}"), "[1,2,{\"up\":3}]")] {
            let body = shared.response_body(tail);
            assert_eq!(
                http_body::Body::size_hint(&body).exact(),
                Some(expected.len() as u64)
            );
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            assert_eq!(bytes, expected.as_bytes());
        }
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
