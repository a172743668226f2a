//! Admission control (Electric's two permit buckets): the first thing a shape request
//! meets. A request whose handle is known takes an `existing` permit, any other an
//! `initial` one; a full bucket answers 503 with `Retry-After` before any parsing,
//! database work or actor message. `initial` therefore bounds how many requests are
//! validating and creating shapes at once, and through that the snapshot queries; a
//! request moves to `existing` once its shape's snapshot has started.
//!
//! volt adds one thing to Electric's gate: a bounded waiting room in front of `initial`
//! ([`Queue`]). A request that finds the bucket full waits there, first come first
//! served, for a permit to turn over; only when the room is full, or its wait runs out,
//! is it answered 503. Under a herd Electric's clients come back in waves a second or
//! more apart, and the bucket drains and sits empty between them (BENCHMARKS.md, S2);
//! a waiter takes the next free permit instead. A waiter holds no permit and has done no
//! work beyond its connection, so the room bounds memory and its wait bounds latency.
//! The room takes only as many as the bucket has turned over in the last wait (see
//! [`RoomSizer`]): a waiter it cannot expect to serve in time is better told at once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::response::error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub initial: usize,
    pub existing: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            initial: 300,
            existing: 10_000,
        }
    }
}

/// The waiting room in front of the `initial` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Requests that may wait at once, at most; 0 rejects at a full bucket, as Electric
    /// does.
    pub size: usize,
    /// How long one request waits before it is answered 503 + `Retry-After`.
    pub wait: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        // A second herd's worth of the default bucket would still be absorbed, and a
        // waiter costs only its connection. Three seconds is the longest `Retry-After`
        // volt gives: a waiter turned away at the end has lost no more than one retry.
        Queue {
            size: 1_000,
            wait: Duration::from_secs(u64::from(RETRY_AFTER_MAX)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Initial,
    Existing,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Initial => "initial",
            Kind::Existing => "existing",
        }
    }
}

/// The two buckets and their counters.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    /// `limits.initial` as the semaphore holds it (it caps permits).
    initial_limit: usize,
    queue: Queue,
    /// `initial` permits: a fair semaphore, so a released permit goes to the longest
    /// waiter and a newcomer never takes it first.
    initial: Arc<Semaphore>,
    initial_rejects: AtomicU64,
    /// Requests in the waiting room now, and those that left it with a permit or
    /// with a 503 because their wait ran out.
    waiting: AtomicUsize,
    waited: AtomicU64,
    wait_timeouts: AtomicU64,
    /// `initial` permits given back (moved to `existing` or released), and what the
    /// room makes of that.
    turned_over: AtomicU64,
    sizer: Mutex<RoomSizer>,
    existing_in_use: AtomicUsize,
    existing_rejects: AtomicU64,
    failed_swaps: AtomicU64,
}

/// What the counters say, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStats {
    pub initial_in_use: usize,
    pub existing_in_use: usize,
    /// Every 503 of the `initial` bucket: a full room, or a wait that ran out.
    pub initial_rejects: u64,
    pub existing_rejects: u64,
    pub failed_swaps: u64,
    pub initial_waiting: usize,
    pub initial_waited: u64,
    pub initial_wait_timeouts: u64,
}

impl Admission {
    pub fn new(limits: Limits, queue: Queue) -> Admission {
        let initial_limit = limits.initial.min(Semaphore::MAX_PERMITS);
        Admission {
            limits,
            initial_limit,
            queue,
            initial: Arc::new(Semaphore::new(initial_limit)),
            initial_rejects: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            waited: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            turned_over: AtomicU64::new(0),
            sizer: Mutex::new(RoomSizer::default()),
            existing_in_use: AtomicUsize::new(0),
            existing_rejects: AtomicU64::new(0),
            failed_swaps: AtomicU64::new(0),
        }
    }

    /// A permit of `kind`: at once, or for `initial` after a wait in the room; else the
    /// 503 for a full bucket. A wait ends early, with the same 503, when `stop` does
    /// (the server shutting down: a waiter admitted then would start a snapshot as the
    /// stack goes away).
    pub async fn acquire(
        self: &Arc<Self>,
        kind: Kind,
        stop: impl Future<Output = ()>,
    ) -> Result<Permit, Response> {
        if let Some(permit) = self.try_take(kind) {
            return Ok(permit);
        }
        if kind == Kind::Existing || !self.enter_room() {
            return Err(self.reject(kind));
        }
        let _left = LeaveRoom(&self.waiting);
        let wait = tokio::time::timeout(self.queue.wait, self.initial.clone().acquire_owned());
        tokio::select! {
            biased;
            got = wait => match got {
                Ok(Ok(held)) => {
                    self.waited.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("volt_admission_waited_total").increment(1);
                    return Ok(self.initial_permit(held));
                }
                // The semaphore is never closed; a wait that runs out is the same 503.
                Ok(Err(_)) | Err(_) => {
                    self.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("volt_admission_wait_timeouts_total").increment(1);
                }
            },
            () = stop => {}
        }
        Err(self.reject(kind))
    }

    /// A permit of `kind` if one is free now, or the 503 for a full bucket.
    #[allow(clippy::result_large_err)] // the rejection is the response itself
    pub fn try_acquire(self: &Arc<Self>, kind: Kind) -> Result<Permit, Response> {
        self.try_take(kind).ok_or_else(|| self.reject(kind))
    }

    /// A permit of `kind` if one is free now.
    fn try_take(self: &Arc<Self>, kind: Kind) -> Option<Permit> {
        match kind {
            Kind::Initial => {
                let held = self.initial.clone().try_acquire_owned().ok()?;
                Some(self.initial_permit(held))
            }
            Kind::Existing => {
                // Increment first, then check: concurrent acquirers never both see
                // room for one.
                if self.existing_in_use.fetch_add(1, Ordering::AcqRel) >= self.limits.existing {
                    self.existing_in_use.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                in_use_gauge(kind).increment(1.0);
                Some(Permit {
                    admission: self.clone(),
                    initial: None,
                })
            }
        }
    }

    fn initial_permit(self: &Arc<Self>, held: OwnedSemaphorePermit) -> Permit {
        in_use_gauge(Kind::Initial).increment(1.0);
        Permit {
            admission: self.clone(),
            initial: Some(held),
        }
    }

    /// A place in the waiting room, if there is one.
    fn enter_room(&self) -> bool {
        let room = self.sizer.lock().unwrap_or_else(|p| p.into_inner()).room(
            Instant::now(),
            self.turned_over.load(Ordering::Acquire),
            self.queue,
        );
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= room {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        waiting_gauge().increment(1.0);
        true
    }

    fn reject(&self, kind: Kind) -> Response {
        let (rejects, cap) = match kind {
            Kind::Initial => (&self.initial_rejects, self.limits.initial),
            Kind::Existing => (&self.existing_rejects, self.limits.existing),
        };
        rejects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("volt_admission_rejects_total", "kind" => kind.as_str()).increment(1);
        overloaded(kind, cap)
    }

    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            initial_in_use: self.initial_limit - self.initial.available_permits(),
            existing_in_use: self.existing_in_use.load(Ordering::Acquire),
            initial_rejects: self.initial_rejects.load(Ordering::Relaxed),
            existing_rejects: self.existing_rejects.load(Ordering::Relaxed),
            failed_swaps: self.failed_swaps.load(Ordering::Relaxed),
            initial_waiting: self.waiting.load(Ordering::Acquire),
            initial_waited: self.waited.load(Ordering::Relaxed),
            initial_wait_timeouts: self.wait_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// Leaves the waiting room however the wait ends, including a client that goes away
/// while waiting (its request future is dropped).
struct LeaveRoom<'a>(&'a AtomicUsize);

impl Drop for LeaveRoom<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        waiting_gauge().decrement(1.0);
    }
}

/// How many the room takes: as many `initial` permits as turned over in the last wait,
/// at most `Queue::size`. The count is sampled only while requests find the bucket
/// full, every [`SAMPLE_EVERY`]. Until a herd has gone on for half a wait, the room
/// takes `Queue::size`: a herd's first moments, while the snapshot sessions connect and
/// the first snapshots run, say little of its turnover (S2 turned away 622 requests
/// when it trusted a quarter of a second). With no turnover (no snapshot can start:
/// Postgres is down) it takes no one, rather than holding requests only to turn them
/// away when their wait runs out.
#[derive(Debug, Default)]
struct RoomSizer {
    /// (when, permits turned over by then), oldest first, none older than one wait.
    samples: VecDeque<(Instant, u64)>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl RoomSizer {
    fn room(&mut self, now: Instant, turned_over: u64, queue: Queue) -> usize {
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > queue.wait)
        {
            self.samples.pop_front();
        }
        if self
            .samples
            .back()
            .is_none_or(|&(at, _)| now.saturating_duration_since(at) >= SAMPLE_EVERY)
        {
            self.samples.push_back((now, turned_over));
        }
        let (since, then) = self.samples[0];
        let span = now.saturating_duration_since(since);
        if span < queue.wait / 2 {
            return queue.size;
        }
        let per_wait =
            turned_over.saturating_sub(then) as f64 * queue.wait.as_secs_f64() / span.as_secs_f64();
        (per_wait as usize).min(queue.size)
    }
}

/// A held permit; released when dropped, however the request ends (including a client
/// that goes away mid-body: the permit lives in the response body, see [`hold`]).
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    /// The `initial` permit, or none for an `existing` one.
    initial: Option<OwnedSemaphorePermit>,
}

impl Permit {
    pub fn kind(&self) -> Kind {
        if self.initial.is_some() {
            Kind::Initial
        } else {
            Kind::Existing
        }
    }

    /// Move an `initial` permit to `existing` (the request's shape has its snapshot
    /// started, so it no longer contends for creation). The target is incremented
    /// unclamped and rolled back if over its cap, so concurrent swaps never over-admit
    /// and a rejected swap removes exactly its own increment; the request then keeps
    /// its `initial` permit.
    pub fn try_swap_to_existing(&mut self) -> bool {
        if self.initial.is_none() {
            return true;
        }
        let a = &self.admission;
        if a.existing_in_use.fetch_add(1, Ordering::AcqRel) >= a.limits.existing {
            a.existing_in_use.fetch_sub(1, Ordering::AcqRel);
            a.failed_swaps.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("volt_admission_failed_swaps_total").increment(1);
            return false;
        }
        // Released to the longest waiter, if any.
        self.initial = None;
        a.turned_over.fetch_add(1, Ordering::AcqRel);
        in_use_gauge(Kind::Initial).decrement(1.0);
        in_use_gauge(Kind::Existing).increment(1.0);
        true
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let kind = self.kind();
        match kind {
            // The semaphore's permit is released with the field, right after this.
            Kind::Initial => {
                self.admission.turned_over.fetch_add(1, Ordering::AcqRel);
            }
            Kind::Existing => {
                self.admission
                    .existing_in_use
                    .fetch_sub(1, Ordering::AcqRel);
            }
        }
        in_use_gauge(kind).decrement(1.0);
    }
}

fn waiting_gauge() -> metrics::Gauge {
    metrics::gauge!("volt_admission_waiting")
}

fn in_use_gauge(kind: Kind) -> metrics::Gauge {
    metrics::gauge!("volt_admission_permits_in_use", "kind" => kind.as_str())
}

/// The range of a rejection's `Retry-After`, in seconds (see `overloaded`).
const RETRY_AFTER_MIN: u32 = 1;
const RETRY_AFTER_MAX: u32 = 3;

fn overloaded(kind: Kind, cap: usize) -> Response {
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "message": format!(
                "Concurrent request limit exceeded for {} requests (limit: {cap}); retry later",
                kind.as_str()
            ),
            "code": "concurrent_request_limit_exceeded",
        }),
    );
    // Jitter spreads the herd's retries over a few seconds instead of one instant. The
    // client waits at least this long (it is a floor under its own backoff, which
    // doubles on each retry), so a long floor only delays clients once permits are free:
    // an `initial` permit turns over when its snapshot starts, well within a second
    // under a herd (see BENCHMARKS.md, S2).
    let retry = rand::random_range(RETRY_AFTER_MIN..=RETRY_AFTER_MAX);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    res
}

/// Tie the permit to the response body: it is released when the body has been sent or
/// dropped (the client went away), not when the handler returns.
pub fn hold(res: Response, permit: Permit) -> Response {
    res.map(|body| {
        Body::new(PermitBody {
            inner: body,
            _permit: permit,
        })
    })
}

struct PermitBody {
    inner: Body,
    _permit: Permit,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn admission(initial: usize, existing: usize) -> Arc<Admission> {
        queued(initial, existing, Queue::default())
    }

    fn queued(initial: usize, existing: usize, queue: Queue) -> Arc<Admission> {
        Arc::new(Admission::new(Limits { initial, existing }, queue))
    }

    /// Waits, with a deadline, until `n` requests are in the room.
    async fn until_waiting(a: &Admission, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while a.stats().initial_waiting != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} waiting, never; {:?}", a.stats()));
    }

    #[tokio::test]
    async fn a_released_permit_goes_to_the_longest_waiter_not_to_a_newcomer() {
        let a = admission(1, 10);
        let held = a.try_acquire(Kind::Initial).unwrap();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let a = a.clone();
            async move {
                let permit = a.acquire(Kind::Initial, pending()).await;
                // Keep the permit until the test has seen who holds it.
                let _ = first_tx.send(permit.is_ok());
                let _ = done_rx.await;
                drop(permit);
            }
        });
        until_waiting(&a, 1).await;
        let second = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Kind::Initial, pending()).await.is_ok() }
        });
        until_waiting(&a, 2).await;
        drop(held);
        assert!(first_rx.await.unwrap(), "the first waiter is served first");
        assert_eq!(a.stats().initial_waiting, 1, "the second still waits");
        assert!(
            a.try_acquire(Kind::Initial).is_err(),
            "a newcomer does not take the permit"
        );
        done_tx.send(()).unwrap();
        first.await.unwrap();
        assert!(second.await.unwrap(), "then the second is served");
        let s = a.stats();
        assert_eq!((s.initial_waiting, s.initial_waited), (0, 2));
        assert_eq!(s.initial_in_use, 0);
    }

    #[tokio::test]
    async fn a_shutdown_ends_a_wait_with_a_503() {
        let a = admission(1, 10);
        let _held = a.try_acquire(Kind::Initial).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move {
                a.acquire(Kind::Initial, async {
                    let _ = stop_rx.await;
                })
                .await
                .map(|_| ())
            }
        });
        until_waiting(&a, 1).await;
        stop_tx.send(()).unwrap();
        let res = waiter.await.unwrap().expect_err("shut down");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(a.stats().initial_waiting, 0);
    }

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    const ROOM: Queue = Queue {
        size: 1_000,
        wait: Duration::from_secs(3),
    };

    #[test]
    fn until_a_herd_is_measured_the_room_takes_its_full_size() {
        let (mut sizer, t) = (RoomSizer::default(), Instant::now());
        assert_eq!(sizer.room(t, 0, ROOM), 1_000);
        assert_eq!(sizer.room(at(t, 1_400), 0, ROOM), 1_000);
    }

    #[test]
    fn the_room_takes_what_the_bucket_turns_over_in_one_wait() {
        let (mut sizer, t) = (RoomSizer::default(), Instant::now());
        sizer.room(t, 50, ROOM);
        // 100 permits a second for the last two seconds: 300 in three seconds.
        assert_eq!(sizer.room(at(t, 2_000), 250, ROOM), 300);
        // Faster than the room can hold: its size.
        assert_eq!(sizer.room(at(t, 2_500), 10_000, ROOM), 1_000);
    }

    #[test]
    fn with_nothing_turning_over_the_room_takes_no_one() {
        let (mut sizer, t) = (RoomSizer::default(), Instant::now());
        sizer.room(t, 7, ROOM);
        assert_eq!(sizer.room(at(t, 1_600), 7, ROOM), 0);
    }

    #[test]
    fn turnover_older_than_one_wait_is_forgotten() {
        let (mut sizer, t) = (RoomSizer::default(), Instant::now());
        sizer.room(t, 0, ROOM);
        sizer.room(at(t, 1_000), 3_000, ROOM);
        // Long after: only the sample of a moment ago counts, so nothing is measured.
        assert_eq!(sizer.room(at(t, 10_000), 3_000, ROOM), 1_000);
        assert_eq!(sizer.room(at(t, 11_600), 3_000, ROOM), 0);
    }

    #[tokio::test]
    async fn past_a_full_room_a_request_gets_its_503_at_once() {
        let a = queued(
            1,
            10,
            Queue {
                size: 1,
                wait: Duration::from_secs(600),
            },
        );
        let _held = a.try_acquire(Kind::Initial).unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Kind::Initial, pending()).await.is_ok() }
        });
        until_waiting(&a, 1).await;
        let res = a
            .acquire(Kind::Initial, pending())
            .await
            .expect_err("room full");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(a.stats().initial_rejects, 1);
        waiter.abort();
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_is_a_503_with_retry_after() {
        let a = queued(
            1,
            10,
            Queue {
                size: 10,
                wait: Duration::from_millis(20),
            },
        );
        let _held = a.try_acquire(Kind::Initial).unwrap();
        let res = a
            .acquire(Kind::Initial, pending())
            .await
            .expect_err("never freed");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
        let s = a.stats();
        assert_eq!((s.initial_wait_timeouts, s.initial_rejects), (1, 1));
        assert_eq!((s.initial_waiting, s.initial_in_use), (0, 1));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_room_and_takes_no_permit() {
        let a = admission(1, 10);
        let held = a.try_acquire(Kind::Initial).unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Kind::Initial, pending()).await.is_ok() }
        });
        until_waiting(&a, 1).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(a.stats().initial_waiting, 0);
        drop(held);
        assert!(a.try_acquire(Kind::Initial).is_ok());
    }

    #[tokio::test]
    async fn with_no_room_a_full_bucket_rejects_at_once_as_electric_does() {
        let a = queued(
            1,
            1,
            Queue {
                size: 0,
                wait: Duration::from_secs(600),
            },
        );
        let _held = a.try_acquire(Kind::Initial).unwrap();
        let _live = a.try_acquire(Kind::Existing).unwrap();
        assert!(a.acquire(Kind::Initial, pending()).await.is_err());
        assert!(
            a.acquire(Kind::Existing, pending()).await.is_err(),
            "existing never waits"
        );
        let s = a.stats();
        assert_eq!((s.initial_rejects, s.existing_rejects), (1, 1));
        assert_eq!(s.initial_waited, 0);
    }

    #[test]
    fn a_full_bucket_rejects_with_a_503_retry_after_and_counts_it() {
        let a = admission(1, 1);
        let held = a.try_acquire(Kind::Initial).expect("room for one");
        let res = a.try_acquire(Kind::Initial).expect_err("bucket full");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(a.stats().initial_rejects, 1);
        drop(held);
        assert_eq!(a.stats().initial_in_use, 0);
        assert!(a.try_acquire(Kind::Initial).is_ok());
    }

    #[test]
    fn retry_after_spreads_rejections_over_one_to_three_seconds() {
        let a = admission(1, 1);
        let _held = a.try_acquire(Kind::Initial).expect("room for one");
        let seen: std::collections::BTreeSet<u32> = (0..300)
            .map(|_| {
                let res = a.try_acquire(Kind::Initial).expect_err("bucket full");
                res.headers()[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seen,
            (RETRY_AFTER_MIN..=RETRY_AFTER_MAX).collect(),
            "every value, and only those"
        );
        assert_eq!((RETRY_AFTER_MIN, RETRY_AFTER_MAX), (1, 3));
    }

    #[test]
    fn a_swap_moves_the_permit_and_a_failed_swap_keeps_it() {
        let a = admission(2, 1);
        let mut p1 = a.try_acquire(Kind::Initial).unwrap();
        let mut p2 = a.try_acquire(Kind::Initial).unwrap();
        assert!(p1.try_swap_to_existing());
        assert_eq!(
            (a.stats().initial_in_use, a.stats().existing_in_use),
            (1, 1)
        );
        assert!(!p2.try_swap_to_existing(), "existing is full");
        assert_eq!(p2.kind(), Kind::Initial);
        assert_eq!(a.stats().failed_swaps, 1);
        assert_eq!(
            (a.stats().initial_in_use, a.stats().existing_in_use),
            (1, 1)
        );
        drop((p1, p2));
        assert_eq!(
            (a.stats().initial_in_use, a.stats().existing_in_use),
            (0, 0)
        );
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_cap() {
        let a = admission(8, 8);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if let Ok(p) = a.try_acquire(Kind::Initial) {
                            assert!(a.stats().initial_in_use <= 8 + 16);
                            held.lock().unwrap().push(p);
                            let mut h = held.lock().unwrap();
                            assert!(h.len() <= 8);
                            h.pop();
                        }
                    }
                });
            }
        });
        assert_eq!(a.stats().initial_in_use, 0);
    }
}
