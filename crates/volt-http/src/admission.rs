//! Admission control (Electric's two permit buckets): the first thing a shape request
//! meets. A request whose handle is known takes an `existing` permit, any other an
//! `initial` one; a full bucket answers 503 with `Retry-After` before any parsing,
//! database work or actor message. `initial` therefore bounds how many requests are
//! validating and creating shapes at once, and through that the snapshot queries; a
//! request moves to `existing` once its shape's snapshot has started.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

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

#[derive(Debug, Default)]
struct Bucket {
    in_use: AtomicUsize,
    rejects: AtomicU64,
}

/// The two buckets and their counters.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    initial: Bucket,
    existing: Bucket,
    failed_swaps: AtomicU64,
}

/// What the counters say, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStats {
    pub initial_in_use: usize,
    pub existing_in_use: usize,
    pub initial_rejects: u64,
    pub existing_rejects: u64,
    pub failed_swaps: u64,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            ..Admission::default()
        }
    }

    fn bucket(&self, kind: Kind) -> (&Bucket, usize) {
        match kind {
            Kind::Initial => (&self.initial, self.limits.initial),
            Kind::Existing => (&self.existing, self.limits.existing),
        }
    }

    /// A permit of `kind`, or the 503 for a full bucket.
    #[allow(clippy::result_large_err)] // the rejection is the response itself
    pub fn try_acquire(self: &Arc<Self>, kind: Kind) -> Result<Permit, Response> {
        let (bucket, cap) = self.bucket(kind);
        // Increment first, then check: concurrent acquirers never both see room for one.
        if bucket.in_use.fetch_add(1, Ordering::AcqRel) >= cap {
            bucket.in_use.fetch_sub(1, Ordering::AcqRel);
            bucket.rejects.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("volt_admission_rejects_total", "kind" => kind.as_str()).increment(1);
            return Err(overloaded(kind, cap));
        }
        in_use_gauge(kind).increment(1.0);
        Ok(Permit {
            admission: self.clone(),
            kind,
        })
    }

    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            initial_in_use: self.initial.in_use.load(Ordering::Acquire),
            existing_in_use: self.existing.in_use.load(Ordering::Acquire),
            initial_rejects: self.initial.rejects.load(Ordering::Relaxed),
            existing_rejects: self.existing.rejects.load(Ordering::Relaxed),
            failed_swaps: self.failed_swaps.load(Ordering::Relaxed),
        }
    }
}

/// A held permit; released when dropped, however the request ends (including a client
/// that goes away mid-body: the permit lives in the response body, see [`hold`]).
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    kind: Kind,
}

impl Permit {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Move an `initial` permit to `existing` (the request's shape has its snapshot
    /// started, so it no longer contends for creation). The target is incremented
    /// unclamped and rolled back if over its cap, so concurrent swaps never over-admit
    /// and a rejected swap removes exactly its own increment; the request then keeps
    /// its `initial` permit.
    pub fn try_swap_to_existing(&mut self) -> bool {
        if self.kind == Kind::Existing {
            return true;
        }
        let a = &self.admission;
        if a.existing.in_use.fetch_add(1, Ordering::AcqRel) >= a.limits.existing {
            a.existing.in_use.fetch_sub(1, Ordering::AcqRel);
            a.failed_swaps.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("volt_admission_failed_swaps_total").increment(1);
            return false;
        }
        a.initial.in_use.fetch_sub(1, Ordering::AcqRel);
        in_use_gauge(Kind::Initial).decrement(1.0);
        in_use_gauge(Kind::Existing).increment(1.0);
        self.kind = Kind::Existing;
        true
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (bucket, _) = self.admission.bucket(self.kind);
        bucket.in_use.fetch_sub(1, Ordering::AcqRel);
        in_use_gauge(self.kind).decrement(1.0);
    }
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

    fn admission(initial: usize, existing: usize) -> Arc<Admission> {
        Arc::new(Admission::new(Limits { initial, existing }))
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
