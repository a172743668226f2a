//! What has been made durable, and the flusher that makes it so. Consumers commit their
//! part of a transaction without syncing and queue their log; the ShapeLogCollector
//! records each transaction as written once every shape has replied; the flusher syncs
//! all queued logs in one round and then declares durable every transaction written
//! before the round began. The replication stream acknowledges only that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use volt_storage::SyncQueue;

use crate::shapes;
use crate::shared::Shared;
use crate::task::OwnedTask;

pub struct Durability {
    queue: SyncQueue,
    /// Commit end LSN of the last transaction every affected shape has written.
    written: AtomicU64,
    /// Commit end LSN up to which everything written is durable.
    durable: watch::Sender<u64>,
    wake: Notify,
    /// Bumped by `reset`: a flush round that began before it declares nothing.
    epoch: AtomicU64,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            queue: SyncQueue::default(),
            written: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            wake: Notify::new(),
            epoch: AtomicU64::new(0),
        }
    }
}

impl Durability {
    /// Logs committed and not yet synced.
    pub fn queue(&self) -> &SyncQueue {
        &self.queue
    }

    /// Every shape a transaction affects has written it (and queued its log): it is
    /// durable after the next flush round.
    pub fn written(&self, commit_end_lsn: u64) {
        self.written.fetch_max(commit_end_lsn, Ordering::AcqRel);
        self.wake.notify_one();
    }

    pub fn written_lsn(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn durable_lsn(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The stream starts over on another WAL history (a new cluster or timeline, every
    /// shape purged), where LSNs may be lower than any seen so far.
    pub fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.written.store(0, Ordering::Release);
        self.durable.send_replace(0);
    }

    /// Follows the durable LSN.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Wait until everything written up to `lsn` is durable, for at most `within`.
    pub async fn wait_durable(&self, lsn: u64, within: Duration) -> bool {
        let mut rx = self.durable.subscribe();
        tokio::time::timeout(within, rx.wait_for(|d| *d >= lsn))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Flush rounds, back to back while there is something to flush, until the task is
/// dropped. Each round takes the written LSN and the queued logs together: every log a
/// transaction up to that LSN wrote was queued before the collector recorded it (a
/// consumer queues its log before replying), so it is in this round or was synced by an
/// earlier one. `on_panic` hears of a panic, which would otherwise stop every
/// acknowledgement silently.
pub fn flusher(shared: Arc<Shared>, on_panic: impl FnOnce(String) + Send + 'static) -> OwnedTask {
    OwnedTask::spawn_catching(
        async move {
            let d = &shared.durability;
            let mut backoff = Duration::from_millis(100);
            let mut was_full = false;
            loop {
                let epoch = d.epoch.load(Ordering::Acquire);
                let target = d.written_lsn();
                if target <= d.durable_lsn() && d.queue.is_empty() {
                    d.wake.notified().await;
                    continue;
                }
                if let Some(gate) = shared.failpoints.hold_flush.load_full() {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                let logs = d.queue.take();
                let dir = shared.config.shapes_dir();
                let started = std::time::Instant::now();
                let n = logs.len();
                let failed =
                    match tokio::task::spawn_blocking(move || volt_storage::sync_logs(logs, &dir))
                        .await
                    {
                        Ok(failed) => failed,
                        Err(e) => panic!("a flush round failed: {e}"),
                    };
                let mut retry = false;
                for (log, e) in failed {
                    if e.is_disk_full() {
                        if !shared.storage_full.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "the storage disk is full; acknowledging nothing until it has space");
                        }
                        d.queue.push(&log);
                        retry = true;
                        was_full = true;
                    } else if let Some(handle) = log.dir().file_name().and_then(|n| n.to_str()) {
                        // What the page cache held for it is in doubt: the shape goes,
                        // its clients refetch.
                        tracing::error!(%handle, error = %e, "a shape log could not be synced; invalidating the shape");
                        shapes::invalidate(&shared, handle);
                    }
                }
                if retry {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                backoff = Duration::from_millis(100);
                if std::mem::take(&mut was_full) {
                    shared.storage_full.store(false, Ordering::Relaxed);
                }
                let took = started.elapsed();
                metrics::histogram!("volt_flush_round_seconds").record(took.as_secs_f64());
                if took > shared.config.flush_stall_grace {
                    tracing::warn!(logs = n, took = ?took, "a flush round took longer than the flush-stall grace period");
                }
                d.durable.send_if_modified(|cur| {
                    let advanced = target > *cur && d.epoch.load(Ordering::Acquire) == epoch;
                    if advanced {
                        *cur = target;
                    }
                    advanced
                });
            }
        },
        on_panic,
    )
}
