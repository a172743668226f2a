//! What has been made durable, and the flusher that makes it so. Consumers commit their
//! part of a transaction without syncing and queue their log; the ShapeLogCollector
//! records each transaction as written once every shape has replied; the flusher syncs
//! all queued logs in one round and then declares durable every transaction written
//! before the round began. The replication stream acknowledges only that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Bumped by `reset`: a flush round that began before it declares nothing, and a
    /// transaction routed before it is not recorded.
    epoch: AtomicU64,
    /// A shape was removed since the last round began.
    removed: AtomicBool,
    /// Commit LSNs of transactions a Consumer answered for before storing them (it
    /// buffers them until its snapshot starts), with how many hold each: nothing from
    /// the lowest on is declared durable while it is held.
    holds: Arc<std::sync::Mutex<Holds>>,
}

type Holds = std::collections::BTreeMap<u64, usize>;

/// Keeps transactions from `lsn` on from being declared durable until dropped.
pub struct DurabilityHold {
    holds: Arc<std::sync::Mutex<Holds>>,
    lsn: u64,
}

impl Drop for DurabilityHold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = holds.get_mut(&self.lsn) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.lsn);
            }
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            queue: SyncQueue::default(),
            written: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            wake: Notify::new(),
            epoch: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            holds: Default::default(),
        }
    }
}

impl Durability {
    /// Logs committed and not yet synced.
    pub fn queue(&self) -> &SyncQueue {
        &self.queue
    }

    /// The current WAL history (see `reset`): taken when a transaction's routing starts.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Every shape a transaction affects has written it (and queued its log): it is
    /// durable after the next flush round. Ignored when the WAL history changed since
    /// `epoch` was taken: its LSNs mean nothing in the new one.
    pub fn written(&self, epoch: u64, commit_end_lsn: u64) {
        if self.epoch() != epoch {
            return;
        }
        self.written.fetch_max(commit_end_lsn, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// A shape's files were renamed into the trash: the next round makes that durable.
    pub fn shape_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub fn written_lsn(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Hold back durability from the transaction committed at `lsn` on: taken by a
    /// Consumer that answers for a transaction it has not stored yet, dropped once it has
    /// stored it and queued its log (or once it is gone, and its shape with it).
    pub fn hold(&self, lsn: u64) -> DurabilityHold {
        *self
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(lsn)
            .or_default() += 1;
        DurabilityHold {
            holds: self.holds.clone(),
            lsn,
        }
    }

    /// What a round may declare durable: the written LSN, short of the lowest hold.
    fn declarable(&self) -> u64 {
        let lowest = self
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .next()
            .copied();
        let written = self.written_lsn();
        lowest.map_or(written, |h| written.min(h.saturating_sub(1)))
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

/// Flush rounds, at most one per `flush_interval` while there is something to flush
/// (holds permitting: see `Durability::hold`), until the task is
/// dropped. Each round takes the written LSN and the queued logs together: every log a
/// transaction up to that LSN wrote was queued before the collector recorded it (a
/// consumer queues its log before replying), so it is in this round or was synced by an
/// earlier one. A round after a shape's removal also syncs the directories its rename
/// changed, so a removed shape does not come back after a machine crash without what
/// was acknowledged for it. `on_panic` hears of a panic, which would otherwise stop
/// every acknowledgement silently.
///
/// Started by a collector only after it queued every log it restored: a round that the
/// previous collector's end cut short (or a crash) may have left their bytes unsynced.
pub fn flusher(shared: Arc<Shared>, on_panic: impl FnOnce(String) + Send + 'static) -> OwnedTask {
    OwnedTask::spawn_catching(
        async move {
            let d = &shared.durability;
            let mut shutdown = shared.replication_shutdown.subscribe();
            let mut last_round: Option<tokio::time::Instant> = None;
            loop {
                if d.written_lsn() <= d.durable_lsn() && d.queue.is_empty() {
                    d.wake.notified().await;
                    continue;
                }
                // Rounds are spaced: what shapes commit meanwhile is written once per
                // shape. A shutdown does not wait: its last rounds are what it acknowledges.
                if let Some(last) = last_round {
                    tokio::select! {
                        () = tokio::time::sleep_until(last + shared.config.flush_interval) => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                }
                last_round = Some(tokio::time::Instant::now());
                if let Some(gate) = shared.failpoints.hold_flush.load_full() {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                // Taken after the wait, together with the queue: the round declares
                // durable what it writes and syncs. Holds are read before the written
                // LSN, and that before the queue: a Consumer queues its log before it
                // drops its hold.
                let epoch = d.epoch.load(Ordering::Acquire);
                let target = d.declarable();
                let logs = d.queue.take();
                let removed = d.removed.swap(false, Ordering::AcqRel);
                let started = std::time::Instant::now();
                let n = logs.len();
                let s = shared.clone();
                let round = tokio::task::spawn_blocking(move || {
                    let failed = volt_storage::sync_logs(logs, &s.config.shapes_dir());
                    let dirs = if removed {
                        crate::shapes::sync_removal_dirs(&s.config)
                    } else {
                        Ok(())
                    };
                    (failed, dirs)
                })
                .await;
                let (failed, dirs) = match round {
                    Ok(r) => r,
                    Err(e) => panic!("a flush round failed: {e}"),
                };
                if let Err(e) = dirs {
                    // Retried by the next round; nothing is declared durable meanwhile.
                    tracing::error!(error = %e, "could not sync the shapes directory after a removal");
                    d.removed.store(true, Ordering::Release);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let unwritten = !failed.unwritten.is_empty();
                for (log, e) in failed.unwritten {
                    if e.is_disk_full() {
                        // Still in memory, readable and intact: written by a later round
                        // once there is space, and acknowledged only then.
                        if !shared.storage_full.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "the storage disk is full; holding acknowledgements until it has space");
                        }
                        d.queue.push(&log);
                    } else if let Some(handle) = handle_of(&log) {
                        tracing::error!(%handle, error = %e, "a shape log could not be written out; invalidating the shape");
                        shapes::invalidate(&shared, handle);
                    }
                }
                if !failed.unsynced.is_empty() {
                    for (log, e) in failed.unsynced {
                        if e.is_disk_full() && !shared.storage_full.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "the storage disk is full");
                        }
                        // After a failed fsync the kernel may have dropped the pages it
                        // could not write, so a retry could succeed with the data lost:
                        // the shape goes (its clients refetch), whatever the error.
                        if let Some(handle) = handle_of(&log) {
                            tracing::error!(%handle, error = %e, "a shape log could not be synced; invalidating the shape");
                            shapes::invalidate(&shared, handle);
                        }
                    }
                    // The removals are made durable by the next round, before the LSN
                    // is declared durable.
                    continue;
                }
                if unwritten {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                if shared.disk_full_retries.load(Ordering::Acquire) == 0
                    && shared.storage_full.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("the storage disk has space again");
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

/// The handle of the shape a log belongs to: its directory's name.
fn handle_of(log: &volt_storage::ShapeLog) -> Option<&str> {
    log.dir().file_name().and_then(|n| n.to_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_keeps_its_transaction_and_later_ones_from_being_declared_durable() {
        let d = Durability::default();
        d.written(d.epoch(), 500);
        assert_eq!(d.declarable(), 500);
        let first = d.hold(300);
        let second = d.hold(300);
        let later = d.hold(400);
        assert_eq!(d.declarable(), 299);
        drop(first);
        assert_eq!(d.declarable(), 299, "still held once");
        drop(second);
        assert_eq!(d.declarable(), 399);
        drop(later);
        assert_eq!(d.declarable(), 500);
    }

    #[test]
    fn a_transaction_routed_before_a_reset_is_not_recorded_after_it() {
        let d = Durability::default();
        let before = d.epoch();
        d.written(before, 500);
        assert_eq!(d.written_lsn(), 500);
        d.reset();
        // Routed under the old WAL history, finished after the reset: its LSN means
        // nothing in the new one.
        d.written(before, 900);
        assert_eq!((d.written_lsn(), d.durable_lsn()), (0, 0));
        d.written(d.epoch(), 40);
        assert_eq!(d.written_lsn(), 40);
    }
}
