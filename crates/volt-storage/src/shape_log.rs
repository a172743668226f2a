//! One shape's log on disk: the initial snapshot as JSON lines, then every change as a
//! length-prefixed record keyed by its offset. Readers follow the writer through a
//! `watch` of the latest committed offset and never read past it, so they never see
//! half a transaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use tokio::sync::watch;

use crate::offset::LogOffset;

const SNAPSHOT_FILE: &str = "snapshot.jsonl";
const LOG_FILE: &str = "log.bin";
/// tx (u64) + op (u64) + length (u32).
const RECORD_HEADER: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// The snapshot query has not started yet.
    Pending,
    /// The snapshot transaction is open: changes after it are being captured.
    Started,
    /// Every snapshot row is on disk.
    Done,
    /// The snapshot could not be taken; the shape is unusable.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("shape storage I/O failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shape log writer lock poisoned")]
    Poisoned,
}

impl StorageError {
    fn io(path: &Path, source: io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

struct Writer {
    log: BufWriter<File>,
    log_len: u64,
    snapshot: Option<BufWriter<File>>,
}

#[derive(Clone, Copy)]
struct IndexEntry {
    offset: LogOffset,
    pos: u64,
    len: u32,
}

pub struct ShapeLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    index: RwLock<Vec<IndexEntry>>,
    committed: watch::Sender<LogOffset>,
    snapshot: watch::Sender<SnapshotState>,
    closed: AtomicBool,
}

/// What a read of the change log returned.
#[derive(Debug, Default)]
pub struct LogRead {
    /// JSON items, in log order.
    pub items: Vec<String>,
    /// Offset of the last item returned, if any.
    pub last: Option<LogOffset>,
    /// Whether the read reached the latest committed offset.
    pub reached_end: bool,
}

impl ShapeLog {
    /// Create an empty log in `dir`, removing whatever a previous shape left there.
    pub fn create(dir: impl Into<PathBuf>) -> Result<ShapeLog, StorageError> {
        let dir = dir.into();
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map(BufWriter::new)
                .map_err(|e| StorageError::io(&path, e))
        };
        let writer = Writer {
            log: open(LOG_FILE)?,
            log_len: 0,
            snapshot: Some(open(SNAPSHOT_FILE)?),
        };
        Ok(ShapeLog {
            dir,
            writer: Mutex::new(writer),
            index: RwLock::new(Vec::new()),
            committed: watch::Sender::new(LogOffset::SNAPSHOT_END),
            snapshot: watch::Sender::new(SnapshotState::Pending),
            closed: AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ---- writer side (the shape's Consumer and Snapshotter) ----

    pub fn mark_snapshot_started(&self) {
        self.snapshot.send_replace(SnapshotState::Started);
    }

    pub fn mark_snapshot_failed(&self, reason: String) {
        self.snapshot.send_replace(SnapshotState::Failed(reason));
    }

    /// Append one snapshot row (a JSON object).
    pub fn append_snapshot_line(&self, json: &str) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        let path = self.dir.join(SNAPSHOT_FILE);
        let file = w.snapshot.as_mut().ok_or_else(|| {
            StorageError::io(&path, io::Error::other("snapshot already finished"))
        })?;
        file.write_all(json.as_bytes())
            .and_then(|_| file.write_all(b"\n"))
            .map_err(|e| StorageError::io(&path, e))
    }

    /// Make the snapshot durable and visible to readers.
    pub fn finish_snapshot(&self) -> Result<(), StorageError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        if let Some(mut file) = w.snapshot.take() {
            file.flush().map_err(|e| StorageError::io(&path, e))?;
            file.get_ref()
                .sync_data()
                .map_err(|e| StorageError::io(&path, e))?;
        }
        drop(w);
        self.snapshot.send_replace(SnapshotState::Done);
        Ok(())
    }

    /// Append one change; it stays invisible to readers until `commit`.
    pub fn append(&self, offset: LogOffset, json: &str) -> Result<(), StorageError> {
        let path = self.dir.join(LOG_FILE);
        let len = u32::try_from(json.len())
            .map_err(|_| StorageError::io(&path, io::Error::other("log item larger than 4 GiB")))?;
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        let pos = w.log_len;
        let mut header = [0u8; RECORD_HEADER];
        header[..8].copy_from_slice(&offset.tx.to_be_bytes());
        header[8..16].copy_from_slice(&offset.op.to_be_bytes());
        header[16..].copy_from_slice(&len.to_be_bytes());
        w.log
            .write_all(&header)
            .and_then(|_| w.log.write_all(json.as_bytes()))
            .map_err(|e| StorageError::io(&path, e))?;
        w.log_len += (RECORD_HEADER + json.len()) as u64;
        drop(w);
        self.index
            .write()
            .map_err(|_| StorageError::Poisoned)?
            .push(IndexEntry {
                offset,
                pos: pos + RECORD_HEADER as u64,
                len,
            });
        Ok(())
    }

    /// Make everything appended durable, then let readers see it up to `offset`.
    pub fn commit(&self, offset: LogOffset) -> Result<(), StorageError> {
        let path = self.dir.join(LOG_FILE);
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        w.log.flush().map_err(|e| StorageError::io(&path, e))?;
        w.log
            .get_ref()
            .sync_data()
            .map_err(|e| StorageError::io(&path, e))?;
        drop(w);
        self.committed.send_if_modified(|cur| {
            if offset > *cur {
                *cur = offset;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    // ---- reader side (HTTP requests) ----

    pub fn snapshot_state(&self) -> watch::Receiver<SnapshotState> {
        self.snapshot.subscribe()
    }

    /// The latest committed offset: `0_inf` until a change arrives.
    pub fn latest_offset(&self) -> LogOffset {
        *self.committed.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<LogOffset> {
        self.committed.subscribe()
    }

    /// Every snapshot line, once the snapshot is done.
    pub fn read_snapshot(&self) -> Result<Vec<String>, StorageError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let text = fs::read_to_string(&path).map_err(|e| StorageError::io(&path, e))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Committed changes after `after`, at most about `max_bytes` of them (always at
    /// least one when there is one).
    pub fn read_after(&self, after: LogOffset, max_bytes: usize) -> Result<LogRead, StorageError> {
        let end = self.latest_offset();
        let entries: Vec<IndexEntry> = {
            let index = self.index.read().map_err(|_| StorageError::Poisoned)?;
            let start = index.partition_point(|e| e.offset <= after);
            let mut total = 0usize;
            index[start..]
                .iter()
                .take_while(|e| e.offset <= end)
                .take_while(|e| {
                    let take = total == 0 || total + e.len as usize <= max_bytes;
                    total += e.len as usize;
                    take
                })
                .copied()
                .collect()
        };
        let Some(first) = entries.first() else {
            return Ok(LogRead {
                reached_end: true,
                ..LogRead::default()
            });
        };
        let path = self.dir.join(LOG_FILE);
        let io_err = |e| StorageError::io(&path, e);
        let mut file = File::open(&path).map_err(io_err)?;
        let last_entry = entries[entries.len() - 1];
        let span = (last_entry.pos + u64::from(last_entry.len) - first.pos) as usize;
        let mut buf = vec![0u8; span];
        file.seek(SeekFrom::Start(first.pos)).map_err(io_err)?;
        file.read_exact(&mut buf).map_err(io_err)?;
        let mut items = Vec::with_capacity(entries.len());
        for e in &entries {
            let from = (e.pos - first.pos) as usize;
            let bytes = &buf[from..from + e.len as usize];
            items.push(String::from_utf8_lossy(bytes).into_owned());
        }
        let last = last_entry.offset;
        let reached_end = !self
            .index
            .read()
            .map_err(|_| StorageError::Poisoned)?
            .iter()
            .rev()
            .take_while(|e| e.offset > last)
            .any(|e| e.offset <= end);
        Ok(LogRead {
            items,
            last: Some(last),
            reached_end,
        })
    }

    /// The shape is gone: wake every reader so it can tell its client to refetch.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.committed.send_modify(|_| {});
        self.snapshot.send_if_modified(|s| {
            if matches!(s, SnapshotState::Pending | SnapshotState::Started) {
                *s = SnapshotState::Failed("the shape was removed".into());
                true
            } else {
                false
            }
        });
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Remove the shape's files.
    pub fn remove_files(&self) -> Result<(), StorageError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(&self.dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, ShapeLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape")).unwrap();
        (dir, log)
    }

    #[test]
    fn uncommitted_changes_are_invisible_to_readers() {
        let (_d, log) = log();
        log.append(LogOffset::new(10, 0), "{\"a\":1}").unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END, 1 << 20).unwrap();
        assert!(read.items.is_empty());
        assert!(read.reached_end);
        log.commit(LogOffset::new(10, 0)).unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END, 1 << 20).unwrap();
        assert_eq!(read.items, vec!["{\"a\":1}".to_string()]);
        assert_eq!(read.last, Some(LogOffset::new(10, 0)));
        assert!(read.reached_end);
    }

    #[test]
    fn reads_start_strictly_after_the_requested_offset() {
        let (_d, log) = log();
        for op in [0, 2, 4] {
            log.append(LogOffset::new(7, op), &format!("{op}")).unwrap();
        }
        log.commit(LogOffset::new(7, 4)).unwrap();
        let read = log.read_after(LogOffset::new(7, 0), 1 << 20).unwrap();
        assert_eq!(read.items, vec!["2".to_string(), "4".to_string()]);
        // An offset that matches no stored entry still works.
        let read = log.read_after(LogOffset::new(7, 1), 1 << 20).unwrap();
        assert_eq!(read.items.len(), 2);
    }

    #[test]
    fn reads_are_bounded_by_size_and_report_whether_they_reached_the_end() {
        let (_d, log) = log();
        for op in 0..10 {
            log.append(LogOffset::new(1, op), "0123456789").unwrap();
        }
        log.commit(LogOffset::new(1, 9)).unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END, 35).unwrap();
        assert_eq!(read.items.len(), 3);
        assert!(!read.reached_end);
        let read = log.read_after(read.last.unwrap(), 1 << 20).unwrap();
        assert_eq!(read.items.len(), 7);
        assert!(read.reached_end);
    }

    #[test]
    fn snapshot_lines_are_readable_after_finish() {
        let (_d, log) = log();
        log.append_snapshot_line("{\"x\":1}").unwrap();
        log.append_snapshot_line("{\"x\":2}").unwrap();
        log.finish_snapshot().unwrap();
        assert_eq!(*log.snapshot_state().borrow(), SnapshotState::Done);
        assert_eq!(log.read_snapshot().unwrap().len(), 2);
    }
}
