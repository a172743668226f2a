//! Group commit for shape logs. A transaction touches many shapes, and an fsync per
//! shape per transaction caps the replication stream at the disk's fsync rate. Logs
//! commit without syncing and are queued here; one round of syncs then covers every
//! transaction written before it began, for all the logs at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::shape_log::{ShapeLog, StorageError};

/// From this many logs in one round on, one `syncfs` of their filesystem replaces an
/// fsync per log: it costs about one journal commit however many files it covers.
pub const SYNCFS_FROM: usize = 32;

/// Parallel fsyncs below `SYNCFS_FROM`: the filesystem's journal folds concurrent
/// fsyncs into fewer commits than sequential ones.
const SYNC_THREADS: usize = 8;

/// Logs with committed bytes that may not be durable yet.
#[derive(Default)]
pub struct SyncQueue {
    pending: Mutex<HashMap<usize, Arc<ShapeLog>>>,
}

impl SyncQueue {
    /// Queue a log after a commit (once, however many commits it gets before a round).
    pub fn push(&self, log: &Arc<ShapeLog>) {
        let key = Arc::as_ptr(log) as usize;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.entry(key).or_insert_with(|| log.clone());
    }

    /// Take every queued log for a round.
    pub fn take(&self) -> Vec<Arc<ShapeLog>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain().map(|(_, log)| log).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a flush round could not do.
#[derive(Default)]
pub struct RoundFailures {
    /// Logs whose committed bytes could not be written out (a full disk, say): they are
    /// still in memory, readable and intact, for a later round to write.
    pub unwritten: Vec<(Arc<ShapeLog>, StorageError)>,
    /// Logs that could not be synced: what the kernel held for them may be lost.
    pub unsynced: Vec<(Arc<ShapeLog>, StorageError)>,
}

impl RoundFailures {
    pub fn is_empty(&self) -> bool {
        self.unwritten.is_empty() && self.unsynced.is_empty()
    }
}

/// Make everything `logs` committed before this call durable: write out what their
/// commits left in memory, then sync them; `fs` is any path on their filesystem.
/// Blocking.
pub fn sync_logs(logs: Vec<Arc<ShapeLog>>, fs: &Path) -> RoundFailures {
    let mut failures = RoundFailures::default();
    // Each log's flag is cleared before it is written out, not after (`write_for_sync`).
    let logs: Vec<Arc<ShapeLog>> = logs
        .into_iter()
        .filter(|log| match log.write_for_sync() {
            Ok(()) => true,
            Err(e) => {
                failures.unwritten.push((log.clone(), e));
                false
            }
        })
        .collect();
    if logs.len() >= SYNCFS_FROM && syncfs(&logs, fs).is_ok() {
        return failures;
    }
    let per_thread = logs.len().div_ceil(SYNC_THREADS).max(1);
    failures.unsynced = std::thread::scope(|scope| {
        let workers: Vec<_> = logs
            .chunks(per_thread)
            .map(|group| {
                scope.spawn(move || {
                    group
                        .iter()
                        .filter_map(|log| log.sync_files().err().map(|e| (log.clone(), e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    failures
}

/// Whether `syncfs` says when writing back failed: Linux does so from 5.8 on; before, it
/// returns success whatever happened, so the logs are fsynced one by one instead (an
/// fsync does report it).
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let reports = kernel_at_least(release.trim(), (5, 8));
        if !reports {
            tracing::info!(
                kernel = release.trim(),
                "syncfs does not report write errors before Linux 5.8: flush rounds fsync each log"
            );
        }
        reports
    })
}

/// Whether a kernel release (`uname -r`: "6.1.0-18-amd64") is at least `major.minor`;
/// false if it does not parse.
#[cfg(any(target_os = "linux", test))]
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// One sync of the whole filesystem holding the logs. On failure the caller syncs each
/// log on its own, which says which of them failed.
#[cfg(target_os = "linux")]
fn syncfs(logs: &[Arc<ShapeLog>], fs: &Path) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    if !syncfs_reports_errors() {
        return Err(StorageError::io(
            fs,
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "syncfs does not report write errors before Linux 5.8",
            ),
        ));
    }
    let dir = std::fs::File::open(fs).map_err(|e| StorageError::io(fs, e))?;
    // Directory entries are covered too (each log's unsynced flag was cleared before
    // it was written out).
    for log in logs {
        log.begin_filesystem_sync();
    }
    // SAFETY: syncfs takes any open descriptor on the filesystem; `dir` outlives the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(StorageError::io(fs, std::io::Error::last_os_error()))
    }
}

#[cfg(not(target_os = "linux"))]
fn syncfs(_: &[Arc<ShapeLog>], fs: &Path) -> Result<(), StorageError> {
    Err(StorageError::io(
        fs,
        std::io::Error::new(std::io::ErrorKind::Unsupported, "no syncfs here"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogOffset;

    #[test]
    fn syncfs_is_trusted_from_linux_5_8_on_and_never_on_a_release_that_does_not_parse() {
        for (release, trusted) in [
            ("5.8.0", true),
            ("5.10.0-28-amd64", true),
            ("6.18.44-fc-v782", true),
            ("5.7.19", false),
            ("5.4.0-150-generic", false),
            ("4.19.0", false),
            ("", false),
            ("linux", false),
        ] {
            assert_eq!(kernel_at_least(release, (5, 8)), trusted, "{release}");
        }
    }

    fn committed_logs(n: usize) -> (tempfile::TempDir, Vec<Arc<ShapeLog>>) {
        let dir = tempfile::tempdir().unwrap();
        let logs = (0..n)
            .map(|i| {
                let log = ShapeLog::create(dir.path().join(format!("s{i}")), 1 << 20).unwrap();
                log.mark_snapshot_started(serde_json::json!({})).unwrap();
                log.finish_snapshot().unwrap();
                log.append(LogOffset::new(5, 0), "{}", true).unwrap();
                log.commit(LogOffset::new(5, 0)).unwrap();
                Arc::new(log)
            })
            .collect();
        (dir, logs)
    }

    #[test]
    fn a_log_is_queued_once_however_many_commits_it_gets_before_a_round() {
        let (_d, logs) = committed_logs(2);
        let queue = SyncQueue::default();
        queue.push(&logs[0]);
        queue.push(&logs[0]);
        queue.push(&logs[1]);
        assert_eq!(queue.take().len(), 2);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_round_syncs_every_log_one_by_one_or_with_one_syncfs() {
        for n in [3, SYNCFS_FROM + 1] {
            let (d, logs) = committed_logs(n);
            assert!(logs.iter().all(|l| l.is_unsynced()));
            let failed = sync_logs(logs.clone(), d.path());
            assert!(failed.is_empty(), "{n} logs");
            assert!(logs.iter().all(|l| !l.is_unsynced()), "{n} logs");
        }
    }

    #[test]
    fn a_commit_landing_between_a_rounds_write_and_its_sync_is_left_to_the_next_round() {
        let (d, logs) = committed_logs(1);
        let log = &logs[0];
        // The steps of `sync_logs`, with a commit between the write and the sync.
        log.begin_sync();
        log.write_committed().unwrap();
        log.append(LogOffset::new(6, 0), "{}", true).unwrap();
        log.commit(LogOffset::new(6, 0)).unwrap();
        log.sync_files().unwrap();
        assert!(
            log.is_unsynced(),
            "its bytes were not in this round's write"
        );
        assert!(sync_logs(logs.clone(), d.path()).is_empty());
        assert!(!log.is_unsynced());
    }

    #[test]
    fn a_log_without_changes_has_nothing_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("s"), 1 << 20).unwrap();
        log.mark_snapshot_started(serde_json::json!({})).unwrap();
        log.finish_snapshot().unwrap();
        let reopened = Arc::new(ShapeLog::open(dir.path().join("s"), 1 << 20).unwrap());
        assert!(sync_logs(vec![reopened], dir.path()).is_empty());
    }

    #[test]
    fn a_log_that_cannot_be_synced_is_reported_and_a_closed_one_is_not() {
        let (d, logs) = committed_logs(2);
        for log in &logs {
            std::fs::remove_dir_all(log.dir()).unwrap();
        }
        logs[1].close();
        let failed = sync_logs(logs.clone(), d.path());
        // Its commit is still in memory: writing it out is what fails.
        assert!(failed.unsynced.is_empty());
        assert_eq!(failed.unwritten.len(), 1);
        assert!(Arc::ptr_eq(&failed.unwritten[0].0, &logs[0]));
        assert!(logs[0].is_unsynced(), "still to be made durable");
        // Written out already, the sync is what fails.
        let (d, logs) = committed_logs(1);
        logs[0].write_committed().unwrap();
        std::fs::remove_dir_all(logs[0].dir()).unwrap();
        let failed = sync_logs(logs.clone(), d.path());
        assert!(failed.unwritten.is_empty());
        assert_eq!(failed.unsynced.len(), 1);
        assert!(logs[0].is_unsynced(), "still to be made durable");
    }
}
