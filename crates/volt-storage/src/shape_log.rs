//! One shape's log on disk, crash-safe and chunked.
//!
//! Layout of a shape directory:
//! - `meta.json`: format version, the Postgres snapshot the initial snapshot was taken
//!   in, and the number of snapshot chunks once the snapshot is complete. Written
//!   atomically (temporary file, fsync, rename).
//! - `snapshot.<k>.jsonl`: initial snapshot chunk `k`, one JSON item per line.
//! - `log.bin`: the change log, records of
//!   `tx u64 | op u64 | flags u8 | len u32 | json | crc32 u32` (big endian). Flag bit 0
//!   marks the last record of a transaction: recovery truncates everything after the last
//!   such record, so a crash mid-transaction or mid-write leaves no trace.
//! - `log.idx`: the chunk index, 24-byte entries `first tx | first op | file position`,
//!   one per change-log chunk. A read from any offset finds its chunk here and scans at
//!   most that chunk. It is created when the log's second chunk starts, with the first
//!   chunk's entry too: a log of one chunk is read from position 0 without it, most
//!   shapes never fill a chunk, and every file made per shape costs an inode allocation.
//!   (Builds that created it with the log read a missing index as an empty one.)
//!
//! Readers follow the writer through a `watch` of the latest committed offset and never
//! read past it, so they never see half a transaction. Committed change records stay in
//! memory (`Visible::tail`) until a flush round writes them out (`write_committed`),
//! and readers read them from there meanwhile: a follower instance, reading the files,
//! sees a commit once a round of its writer has written it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::offset::LogOffset;
use crate::open_files;
use crate::recent_chunks::{RecentChunks, recent_chunks};

const META_FILE: &str = "meta.json";
const LOG_FILE: &str = "log.bin";
const INDEX_FILE: &str = "log.idx";
const FORMAT_VERSION: u32 = 1;
/// tx (u64) + op (u64) + flags (u8) + length (u32).
const RECORD_HEADER: usize = 21;
const RECORD_TRAILER: usize = 4;
const INDEX_ENTRY: usize = 24;
const FLAG_TXN_END: u8 = 1;
/// Recent commits remembered per log (see `Visible::commits`).
const COMMIT_POINTS: usize = 256;

/// Room a log's tail starts with: most logs see a few small commits between two flush
/// rounds, which then fit without growing it.
const TAIL_START: usize = 1024;
/// Buffered change bytes are written out (not yet fsynced) past this size, so a large
/// transaction never sits in memory.
const WRITE_BUFFER: usize = 64 * 1024;
/// Committed bytes held in memory across all logs (see `Visible::tail`) past which a
/// commit writes its log out itself instead of leaving it to the next flush round.
const TAIL_BUDGET: u64 = 64 << 20;

/// Committed change bytes of every log of this process not written to their files yet.
static TAIL_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of every open shape log of this process on disk (snapshot chunks, change log,
/// chunk index), for the storage metric.
static STORED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes the shape logs open in this process hold on disk.
pub fn stored_bytes() -> u64 {
    STORED_BYTES.load(Ordering::Relaxed)
}

fn snapshot_file(k: u32) -> String {
    format!("snapshot.{k}.jsonl")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// The snapshot query has not started yet.
    Pending,
    /// The snapshot transaction is open: changes after it are being captured.
    Started,
    /// Every snapshot row is on disk, in this many chunks.
    Done { chunks: u32 },
    /// The snapshot could not be taken; the shape is unusable (a retryable error for
    /// its readers: a new shape can be made).
    Failed(String),
    /// The shape was removed before its snapshot finished: its readers must refetch.
    Removed,
}

/// Snapshot state plus how many snapshot chunks are complete (readable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProgress {
    pub state: SnapshotState,
    pub chunks_complete: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("shape storage I/O failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shape log lock poisoned")]
    Poisoned,
    #[error("shape storage at {path} is unusable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// This instance was fenced: a successor opened on the same directory owns its files.
    #[error("shape log at {path} was reopened by a successor; this writer may not write")]
    Fenced { path: PathBuf },
    /// This instance follows a log that another process writes.
    #[error("shape log at {path} is written by another instance; this one only reads it")]
    ReadOnly { path: PathBuf },
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether what was read is not what was written (a failed checksum, a record cut
    /// short): reading again will not help.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt { .. })
    }

    /// Whether the disk is full (or over quota): worth reporting as such.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. }
            if source.raw_os_error() == Some(28) || source.raw_os_error() == Some(122))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    /// Opaque to storage: the consumer's description of the Postgres snapshot.
    pg_snapshot: Option<serde_json::Value>,
    /// Set once the snapshot is complete.
    snapshot_chunks: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    first: LogOffset,
    pos: u64,
}

/// What readers may see.
struct Visible {
    chunks: Vec<Chunk>,
    /// End of the last committed record.
    committed_pos: u64,
    /// (commit offset, end of the log at that commit) of the latest commits, oldest
    /// first. Live clients ask for what follows a commit they were sent: reading from
    /// its position instead of its chunk's start keeps each read proportional to what
    /// is new, not to how full the chunk is.
    commits: VecDeque<(LogOffset, u64)>,
    /// Committed bytes from `tail_start` on that are not in the file yet. A commit
    /// leaves its bytes here and the next flush round writes them out together with
    /// everything else the shape got since (`write_committed`): a write per shape per
    /// round instead of one per shape per transaction (with 10,000 shapes each hit now
    /// and then, the writes were a quarter of volt's CPU). Readers read them from here.
    tail: Vec<u8>,
    /// Where `tail` starts in the change log: the end of the file while it is empty.
    tail_start: u64,
}

struct Writer {
    /// End of everything appended (written, in the committed tail or buffered).
    end_pos: u64,
    /// End of what is in the file: the committed tail and then `buffer` follow it.
    written_pos: u64,
    /// Bytes in the current chunk.
    chunk_len: u64,
    /// `chunk_len` at the last commit, to roll back to.
    committed_chunk_len: u64,
    buffer: Vec<u8>,
    /// Chunks begun since the last commit: published (and indexed) on commit.
    new_chunks: Vec<Chunk>,
    snapshot: Option<SnapshotWriter>,
    meta: Meta,
    /// Set by `fence`: nothing may be written any more.
    fenced: bool,
    /// The change log exists and its directory entry is durable (made with the
    /// snapshot's metadata): a first commit does not need a directory sync.
    change_files_durable: bool,
    index: Index,
    /// After an append could not write out for a full disk: the buffer size at which
    /// the next append tries again (doubling, so a large transaction is not rewritten
    /// in full at every append); 0 when nothing failed.
    retry_write_at: usize,
}

impl Writer {
    /// Empty the buffer after it was written out or committed; idle shapes must not keep
    /// a large transaction's buffer.
    fn clear_buffer(&mut self) {
        self.buffer.clear();
        self.retry_write_at = 0;
        if self.buffer.capacity() > 16 * 1024 {
            self.buffer = Vec::new();
        }
    }
}

/// Whether the chunk index exists yet (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    /// Not yet: the log has at most this one chunk, which the index will start with.
    Missing(Option<Chunk>),
    Exists,
}

impl Index {
    /// The state of a log with these chunks whose index file `exists` or not.
    fn of(exists: bool, chunks: &[Chunk]) -> Index {
        if exists {
            Index::Exists
        } else {
            Index::Missing(chunks.first().copied())
        }
    }
}

struct SnapshotWriter {
    file: File,
    chunk: u32,
    /// Bytes of the chunk's lines.
    len: u64,
    /// `[` and the chunk's lines not yet in its file; while `keep`, all its lines: the
    /// body readers get from memory once the chunk closes (`recent_chunks`).
    body: Vec<u8>,
    /// Where in `body` the lines not yet in the file start.
    written: usize,
    /// The chunk's body is kept whole.
    keep: bool,
    /// Bytes of `body` counted against the budget of chunks being built.
    counted: usize,
    recent: &'static RecentChunks,
    /// fsyncs of the closed chunks, running beside the writer: `finish_snapshot` waits
    /// for them before the snapshot counts as complete.
    syncing: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

/// Snapshot chunks are written in large blocks: a snapshot is hundreds of megabytes.
const SNAPSHOT_WRITE_BUFFER: usize = 256 * 1024;

/// Ask the kernel to back `buf`'s spare capacity with huge pages where it can. A chunk
/// body is megabytes of fresh memory filled at once: with 4 KiB pages, the page faults
/// of filling it were a seventh of a snapshot's CPU. Only a hint (ignored where
/// transparent huge pages are off).
fn huge_pages(buf: &mut Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let spare = buf.spare_capacity_mut();
        let start = spare.as_mut_ptr() as usize;
        let end = start + spare.len();
        let (start, end) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
        if end > start {
            // SAFETY: the range lies within `buf`'s allocation, page-aligned; the advice
            // changes how the kernel backs it, never its contents (none written yet).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

impl SnapshotWriter {
    fn new(path: &Path, recent: &'static RecentChunks) -> Result<SnapshotWriter, StorageError> {
        let file = File::create(path).map_err(|e| StorageError::io(path, e))?;
        Ok(SnapshotWriter {
            file,
            chunk: 0,
            len: 0,
            body: Vec::new(),
            written: 0,
            keep: true,
            counted: 0,
            recent,
            syncing: Vec::new(),
        })
    }

    /// Add lines to the chunk; they go to the file once a write buffer's worth waits.
    fn write(&mut self, lines: &[u8], chunk_bytes: u64) -> io::Result<()> {
        if self.keep {
            // `[`, the lines, and room for the `]` the body ends with.
            let want = self.body.len().max(1) + lines.len() + 1;
            if want > self.counted {
                // The allocation is counted before it is made. A chunk past the write
                // buffer is allocated whole once, instead of copied at each doubling.
                let grow_to = if want > SNAPSHOT_WRITE_BUFFER {
                    usize::try_from(chunk_bytes)
                        .unwrap_or(usize::MAX)
                        .saturating_add(2)
                        .max(want)
                } else {
                    want.next_power_of_two()
                };
                if self.recent.reserve_building(grow_to - self.counted) {
                    self.body.reserve_exact(grow_to - self.body.len());
                    self.counted = grow_to;
                    if grow_to > SNAPSHOT_WRITE_BUFFER {
                        huge_pages(&mut self.body);
                    }
                } else {
                    self.stop_keeping();
                }
            }
        }
        if self.body.is_empty() {
            self.body.push(b'[');
            self.written = 1;
        }
        self.body.extend_from_slice(lines);
        self.len += lines.len() as u64;
        if self.body.len() - self.written >= SNAPSHOT_WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.body[self.written..])?;
        self.written = self.body.len();
        if !self.keep {
            self.body.truncate(1);
            self.written = 1;
        }
        Ok(())
    }

    /// Serve this chunk from its file: over the building budget, or the log is closed.
    fn stop_keeping(&mut self) {
        self.keep = false;
        self.recent
            .release_building(std::mem::take(&mut self.counted));
        if self.body.is_empty() {
            return;
        }
        self.body.drain(1..self.written);
        self.written = 1;
        self.body.shrink_to(2 * SNAPSHOT_WRITE_BUFFER);
    }

    /// Close the current chunk: written out, its fsync started in the background (or,
    /// for the `last`, done here: the snapshot waits for it anyway, and most snapshots
    /// are one chunk, which would cost a thread each), its body (if kept, and
    /// `keep_body`) handed to `recent` under `log`'s id.
    fn close_chunk(
        &mut self,
        dir: &Path,
        log: u64,
        keep_body: bool,
        last: bool,
    ) -> Result<(), StorageError> {
        let path = dir.join(snapshot_file(self.chunk));
        if !self.body.is_empty() {
            self.flush().map_err(|e| StorageError::io(&path, e))?;
        }
        if last {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io(&path, e))?;
        } else {
            let file = self
                .file
                .try_clone()
                .map_err(|e| StorageError::io(&path, e))?;
            self.syncing
                .push(std::thread::spawn(move || file.sync_data()));
        }
        if self.keep && keep_body {
            let mut body = std::mem::take(&mut self.body);
            if body.is_empty() {
                body.push(b'[');
            }
            lines_into_array(&mut body);
            // A chunk allocated whole but closed short of it (the last one, or one
            // closed early by a large item) would keep the rest allocated for as long
            // as it is kept; the cache counts lengths.
            if body.capacity() > body.len() + body.len() / 8 {
                body.shrink_to_fit();
            }
            self.recent.insert(log, self.chunk, body.into());
        }
        self.recent
            .release_building(std::mem::take(&mut self.counted));
        Ok(())
    }

    /// Start chunk `self.chunk + 1` (the current one is closed).
    fn next_chunk(&mut self, dir: &Path) -> Result<(), StorageError> {
        let next = self.chunk + 1;
        let path = dir.join(snapshot_file(next));
        self.file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
        self.chunk = next;
        self.len = 0;
        self.body = Vec::new();
        self.written = 0;
        self.keep = true;
        Ok(())
    }

    /// Wait for every closed chunk to be durable.
    fn wait_synced(&mut self, dir: &Path) -> Result<(), StorageError> {
        for handle in self.syncing.drain(..) {
            handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
                .map_err(|e| StorageError::io(dir, e))?;
        }
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.recent.release_building(self.counted);
    }
}

/// `[` and a chunk's lines into the JSON array a response sends: items are one per line
/// and JSON never holds a raw newline, so the line breaks become the commas in place.
fn lines_into_array(body: &mut Vec<u8>) {
    // Line breaks are one byte in ~200: finding them (SIMD) and writing only those
    // beats comparing and rewriting every byte of a 10 MB chunk.
    let mut at = 1;
    while let Some(i) = memchr::memchr(b'\n', &body[at..]) {
        body[at + i] = b',';
        at += i + 1;
    }
    // The last line's break: an item never ends with a comma.
    if body.len() > 1 && body.last() == Some(&b',') {
        body.pop();
    }
    body.push(b']');
}

pub struct ShapeLog {
    dir: PathBuf,
    chunk_bytes: u64,
    visible: RwLock<Visible>,
    writer: Mutex<Writer>,
    committed: watch::Sender<LogOffset>,
    snapshot: watch::Sender<SnapshotProgress>,
    closed: AtomicBool,
    /// This log's share of `STORED_BYTES`.
    bytes: std::sync::atomic::AtomicU64,
    /// Another process writes these files: this instance only reads them (`follow`)
    /// until `promote`, which clears it holding the writer's lock. Read without the lock
    /// by request handlers, which must not wait behind a commit's fsync.
    follower: AtomicBool,
    /// Committed bytes may not be durable yet: the log is (or is about to be) in a
    /// `SyncQueue`.
    unsynced: AtomicBool,
    /// The change log or its index was created since the last sync: the directory entry
    /// is synced with them.
    new_files: AtomicBool,
    /// This instance's key among the change logs kept open (`open_files`) and the
    /// snapshot bodies kept in memory (`recent`).
    id: u64,
    recent: &'static RecentChunks,
}

/// Keys of `ShapeLog` instances among the open change logs: a log reopened on the same
/// directory is another writer, which must not write through its predecessor's file.
static NEXT_LOG_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_log_id() -> u64 {
    NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed)
}

impl Drop for ShapeLog {
    fn drop(&mut self) {
        STORED_BYTES.fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
        if let Ok(v) = self.visible.get_mut() {
            TAIL_BYTES.fetch_sub(v.tail.len() as u64, Ordering::Relaxed);
        }
        open_files::change_logs().forget(self.id);
        self.recent.forget_log(self.id);
    }
}

/// What a read of the change log returned.
#[derive(Debug, Default)]
pub struct LogRead {
    /// The items' JSON in log order as the start of a JSON array (`[a,b,c`, or nothing
    /// when there are none): compacted in place in the buffer the records were read
    /// into, so that a 10 MB chunk costs one 10 MB buffer, not one per copy.
    joined: Vec<u8>,
    /// Where each item ends in `joined`.
    ends: Vec<usize>,
    /// Offset of the last item returned, if any.
    pub last: Option<LogOffset>,
    /// Whether the read reached the latest committed offset.
    pub reached_end: bool,
    /// Bytes of the log file read to answer.
    pub scanned: u64,
}

impl LogRead {
    /// The items, in log order. Records are written from `str`s and checked by their
    /// CRC on reading, so an item that is not UTF-8 is a corrupt log.
    pub fn try_items(&self) -> Result<Vec<&str>, std::str::Utf8Error> {
        let mut start = 1;
        self.ends
            .iter()
            .map(|&end| {
                let item = std::str::from_utf8(&self.joined[start..end]);
                start = end + 1;
                item
            })
            .collect()
    }

    /// `try_items`, for tests.
    #[cfg(test)]
    fn items(&self) -> Vec<&str> {
        self.try_items().expect("UTF-8 items")
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The items as the start of a JSON array: `[a,b,c`, or `[` when there are none.
    pub fn into_array_start(self) -> Vec<u8> {
        let mut out = self.joined;
        if out.is_empty() {
            out.push(b'[');
        }
        out
    }
}

/// One decoded record.
struct Record<'a> {
    offset: LogOffset,
    txn_end: bool,
    json: &'a [u8],
    /// Position just after the record.
    end: usize,
}

/// Decode the record at `pos` of `buf`; `None` if it is incomplete or corrupt.
fn decode(buf: &[u8], pos: usize) -> Option<Record<'_>> {
    let header = buf.get(pos..pos + RECORD_HEADER)?;
    let tx = u64::from_be_bytes(header[0..8].try_into().ok()?);
    let op = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let flags = header[16];
    let len = u32::from_be_bytes(header[17..21].try_into().ok()?) as usize;
    let body_start = pos + RECORD_HEADER;
    let json = buf.get(body_start..body_start + len)?;
    let crc_bytes = buf.get(body_start + len..body_start + len + RECORD_TRAILER)?;
    let crc = u32::from_be_bytes(crc_bytes.try_into().ok()?);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(json);
    if hasher.finalize() != crc {
        return None;
    }
    Some(Record {
        offset: LogOffset::new(tx, op),
        txn_end: flags & FLAG_TXN_END != 0,
        json,
        end: body_start + len + RECORD_TRAILER,
    })
}

fn encode(out: &mut Vec<u8>, offset: LogOffset, txn_end: bool, json: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&offset.tx.to_be_bytes());
    out.extend_from_slice(&offset.op.to_be_bytes());
    out.push(if txn_end { FLAG_TXN_END } else { 0 });
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + RECORD_HEADER]);
    hasher.update(json);
    out.extend_from_slice(&hasher.finalize().to_be_bytes());
}

fn index_entry(c: &Chunk) -> [u8; INDEX_ENTRY] {
    let mut e = [0u8; INDEX_ENTRY];
    e[0..8].copy_from_slice(&c.first.tx.to_be_bytes());
    e[8..16].copy_from_slice(&c.first.op.to_be_bytes());
    e[16..24].copy_from_slice(&c.pos.to_be_bytes());
    e
}

/// The change log (made when the snapshot completes, or by the first change of a log
/// that predates that) and its index (made by the second chunk) may not exist yet: each
/// file made per shape costs an inode allocation, which dominates creating many shapes.
/// Missing means empty.
fn read_or_empty(path: &Path) -> Result<Vec<u8>, StorageError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// The length of a file that may not exist yet (see `read_or_empty`).
fn len_or_zero(path: &Path) -> Result<u64, StorageError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

fn read_index(path: &Path) -> Result<Vec<Chunk>, StorageError> {
    let bytes = read_or_empty(path)?;
    Ok(bytes
        .chunks_exact(INDEX_ENTRY)
        .map(|e| Chunk {
            first: LogOffset::new(
                u64::from_be_bytes(e[0..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(e[8..16].try_into().unwrap_or_default()),
            ),
            pos: u64::from_be_bytes(e[16..24].try_into().unwrap_or_default()),
        })
        .collect())
}

/// Bytes `from..to` of a file.
fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, StorageError> {
    // Nothing to read, and the file may not exist yet.
    if from >= to {
        return Ok(Vec::new());
    }
    let mut file = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut buf = Vec::with_capacity(to.saturating_sub(from) as usize);
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.take(to.saturating_sub(from)).read_to_end(&mut buf))
        .map_err(|e| StorageError::io(path, e))?;
    Ok(buf)
}

/// What a scan of the change log found, counting complete transactions only.
struct Scanned {
    /// Chunks that start in the scanned range.
    chunks: Vec<Chunk>,
    /// End of the last complete transaction (the scan's start if there is none).
    committed_pos: u64,
    /// How far into its chunk `committed_pos` is.
    chunk_len: u64,
    latest: Option<LogOffset>,
}

/// Walk the records of `buf`, which starts at file position `base`, `chunk_len` bytes
/// into its chunk. Chunks are cut by the writer's own rule (see `append`), so a reader
/// finds the boundaries the writer chose even before they are indexed. `have_chunks`:
/// whether a chunk already starts at or before `base`.
fn scan(buf: &[u8], base: u64, chunk_len: u64, chunk_bytes: u64, have_chunks: bool) -> Scanned {
    let mut out = Scanned {
        chunks: Vec::new(),
        committed_pos: base,
        chunk_len,
        latest: None,
    };
    let mut pending = Vec::new();
    let mut len = chunk_len;
    let mut started = have_chunks;
    let mut pos = 0usize;
    while let Some(rec) = decode(buf, pos) {
        let record_len = (rec.end - pos) as u64;
        if !started || (len > 0 && len + record_len > chunk_bytes) {
            pending.push(Chunk {
                first: rec.offset,
                pos: base + pos as u64,
            });
            len = 0;
            started = true;
        }
        len += record_len;
        pos = rec.end;
        if rec.txn_end {
            out.chunks.append(&mut pending);
            out.committed_pos = base + pos as u64;
            out.chunk_len = len;
            out.latest = Some(rec.offset);
        }
    }
    out
}

/// The file at `path` opened for appending, created if it does not exist.
fn open_append(path: &Path) -> Result<File, StorageError> {
    open_append_io(path).map_err(|e| StorageError::io(path, e))
}

fn open_append_io(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Written once, when the snapshot completes. Straight to its name, without a temporary
/// file and a rename: a crash mid-write leaves metadata that does not parse, which is
/// what a crash before completion leaves too (no metadata): the shape is dropped and
/// its clients refetch. One file fewer per shape (see `read_or_empty`).
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StorageError> {
    let path = dir.join(META_FILE);
    let bytes = serde_json::to_vec(meta).map_err(|e| StorageError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)
}

impl ShapeLog {
    /// Create an empty log in `dir`, removing whatever was there.
    pub fn create(dir: impl Into<PathBuf>, chunk_bytes: u64) -> Result<ShapeLog, StorageError> {
        ShapeLog::create_with(dir.into(), chunk_bytes, recent_chunks())
    }

    /// `create`, keeping snapshot bodies in `recent` (tests give each log its own).
    fn create_with(
        dir: PathBuf,
        chunk_bytes: u64,
        recent: &'static RecentChunks,
    ) -> Result<ShapeLog, StorageError> {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        // meta.json is first written when the snapshot completes: until then a crash
        // leaves a directory that cannot be restored (nor needs to be), so nothing here
        // waits for the disk.
        let meta = Meta {
            version: FORMAT_VERSION,
            pg_snapshot: None,
            snapshot_chunks: None,
        };
        let snapshot = SnapshotWriter::new(&dir.join(snapshot_file(0)), recent)?;
        Ok(ShapeLog {
            dir,
            chunk_bytes: chunk_bytes.max(1),
            visible: RwLock::new(Visible {
                chunks: Vec::new(),
                committed_pos: 0,
                commits: VecDeque::new(),
                tail: Vec::new(),
                tail_start: 0,
            }),
            writer: Mutex::new(Writer {
                end_pos: 0,
                written_pos: 0,
                chunk_len: 0,
                committed_chunk_len: 0,
                buffer: Vec::new(),
                new_chunks: Vec::new(),
                snapshot: Some(snapshot),
                meta,
                fenced: false,
                change_files_durable: false,
                index: Index::Missing(None),
                retry_write_at: 0,
            }),
            committed: watch::Sender::new(LogOffset::SNAPSHOT_END),
            snapshot: watch::Sender::new(SnapshotProgress {
                state: SnapshotState::Pending,
                chunks_complete: 0,
            }),
            closed: AtomicBool::new(false),
            bytes: std::sync::atomic::AtomicU64::new(0),
            follower: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
            new_files: AtomicBool::new(false),
            id: next_log_id(),
            recent,
        })
    }

    /// Recover a log written by an earlier run. A log whose snapshot never completed is
    /// unusable (`Corrupt`); a torn tail (a crash mid-write or mid-transaction) is cut
    /// back to the end of the last complete transaction.
    pub fn open(dir: impl Into<PathBuf>, chunk_bytes: u64) -> Result<ShapeLog, StorageError> {
        let log = ShapeLog::load(dir.into(), chunk_bytes, false)?;
        let mut w = log.writer.lock().map_err(|_| StorageError::Poisoned)?;
        log.recover(&mut w)?;
        drop(w);
        Ok(log)
    }

    /// Open a log that another process writes (the instance that holds the replication
    /// slot, during a rolling deploy), to serve what it has stored without writing a
    /// byte: `follow` picks up its later transactions, `promote` makes this instance the
    /// writer once the other one is gone.
    pub fn open_follower(
        dir: impl Into<PathBuf>,
        chunk_bytes: u64,
    ) -> Result<ShapeLog, StorageError> {
        ShapeLog::load(dir.into(), chunk_bytes, true)
    }

    /// Read what is on disk, up to the last complete transaction, changing nothing.
    fn load(dir: PathBuf, chunk_bytes: u64, follower: bool) -> Result<ShapeLog, StorageError> {
        let chunk_bytes = chunk_bytes.max(1);
        let corrupt = |reason: &str| StorageError::Corrupt {
            path: dir.clone(),
            reason: reason.to_string(),
        };
        let meta_path = dir.join(META_FILE);
        let meta_bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt("the initial snapshot never completed"));
            }
            Err(e) => return Err(StorageError::io(&meta_path, e)),
        };
        let meta: Meta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| corrupt(&format!("bad metadata: {e}")))?;
        if meta.version != FORMAT_VERSION {
            return Err(corrupt(&format!(
                "format version {} is not {FORMAT_VERSION}",
                meta.version
            )));
        }
        let Some(snapshot_chunks) = meta.snapshot_chunks else {
            return Err(corrupt("the initial snapshot never completed"));
        };
        let log_path = dir.join(LOG_FILE);
        let file_len = len_or_zero(&log_path)?;
        let index_path = dir.join(INDEX_FILE);
        let mut chunks = read_index(&index_path)?;
        chunks.retain(|c| c.pos < file_len);

        // Scan from the start of the last indexed chunk to find the last complete
        // transaction; everything after it is a torn tail (or, for a follower, a
        // transaction its writer has not finished). The index and the log are made
        // durable together but written back by the kernel on their own, so after a
        // machine crash the index may name a chunk whose records never reached the
        // disk: that chunk is part of the torn tail (never acknowledged to Postgres,
        // which sends it again).
        let scanned = loop {
            let scan_from = chunks.last().map_or(0, |c| c.pos);
            let tail = read_range(&log_path, scan_from, file_len)?;
            let scanned = scan(&tail, scan_from, 0, chunk_bytes, !chunks.is_empty());
            if scanned.latest.is_some() || chunks.is_empty() {
                break scanned;
            }
            chunks.pop();
        };
        chunks.extend(scanned.chunks);
        let index = Index::of(index_path.exists(), &chunks);
        let snapshot_bytes: u64 = (0..snapshot_chunks)
            .filter_map(|c| fs::metadata(dir.join(snapshot_file(c))).ok())
            .map(|m| m.len())
            .sum();
        let on_disk = snapshot_bytes + scanned.committed_pos + (chunks.len() * INDEX_ENTRY) as u64;
        let log = ShapeLog {
            dir,
            chunk_bytes,
            visible: RwLock::new(Visible {
                chunks,
                committed_pos: scanned.committed_pos,
                commits: VecDeque::new(),
                tail: Vec::new(),
                tail_start: scanned.committed_pos,
            }),
            writer: Mutex::new(Writer {
                end_pos: scanned.committed_pos,
                // A writer's file is cut to it (`recover`); a follower writes nothing.
                written_pos: scanned.committed_pos,
                chunk_len: scanned.chunk_len,
                committed_chunk_len: scanned.chunk_len,
                buffer: Vec::new(),
                new_chunks: Vec::new(),
                snapshot: None,
                meta,
                fenced: false,
                // Logs from before volt created them with the snapshot may have none.
                change_files_durable: log_path.exists(),
                index,
                retry_write_at: 0,
            }),
            committed: watch::Sender::new(scanned.latest.unwrap_or(LogOffset::SNAPSHOT_END)),
            snapshot: watch::Sender::new(SnapshotProgress {
                state: SnapshotState::Done {
                    chunks: snapshot_chunks,
                },
                chunks_complete: snapshot_chunks,
            }),
            closed: AtomicBool::new(false),
            bytes: std::sync::atomic::AtomicU64::new(0),
            follower: AtomicBool::new(follower),
            unsynced: AtomicBool::new(false),
            new_files: AtomicBool::new(false),
            id: next_log_id(),
            recent: recent_chunks(),
        };
        log.account(on_disk);
        Ok(log)
    }

    /// Make the files agree with what was loaded: cut the torn tail and index the chunks
    /// found past the index (a crash between a commit's data and its index entry).
    fn recover(&self, w: &mut Writer) -> Result<(), StorageError> {
        let log_path = self.dir.join(LOG_FILE);
        let file_len = len_or_zero(&log_path)?;
        if w.end_pos < file_len {
            let file = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(|e| StorageError::io(&log_path, e))?;
            tracing::warn!(
                dir = %self.dir.display(),
                dropped = file_len - w.end_pos,
                "truncating a torn tail of the shape log"
            );
            file.set_len(w.end_pos)
                .and_then(|_| file.sync_all())
                .map_err(|e| StorageError::io(&log_path, e))?;
        }
        w.written_pos = w.end_pos;
        let index_path = self.dir.join(INDEX_FILE);
        let existed = index_path.exists();
        let on_file = read_or_empty(&index_path)?;
        let mut visible = self.visible.write().map_err(|_| StorageError::Poisoned)?;
        visible.tail_start = w.written_pos;
        let valid_index: Vec<u8> = visible.chunks.iter().flat_map(index_entry).collect();
        // A log of one chunk needs no index (see the module's doc).
        let write = valid_index != on_file && (existed || visible.chunks.len() > 1);
        // Set here whatever `load` found: a promoted follower has read chunks since.
        w.index = Index::of(existed || write, &visible.chunks);
        drop(visible);
        if write {
            fs::write(&index_path, &valid_index)
                .and_then(|_| File::open(&index_path)?.sync_all())
                .map_err(|e| StorageError::io(&index_path, e))?;
            if !existed {
                sync_dir(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Whether this instance may write: not fenced, not following another writer.
    fn writable(&self, w: &Writer, path: &Path) -> Result<(), StorageError> {
        if w.fenced {
            return Err(StorageError::Fenced {
                path: path.to_path_buf(),
            });
        }
        if self.is_follower() {
            return Err(StorageError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn account(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        STORED_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether this instance only follows another process's writes.
    pub fn is_follower(&self) -> bool {
        self.follower.load(Ordering::Acquire)
    }

    /// A follower catches up with the transactions its writer completed since it last
    /// looked, and wakes the readers waiting for them. A shape whose directory is gone
    /// was removed by the writer: the log closes, so its readers refetch. Does nothing
    /// for the writer's own log.
    pub fn follow(&self) -> Result<(), StorageError> {
        if !self.is_follower() || self.is_closed() {
            return Ok(());
        }
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        if !self.dir.join(META_FILE).exists() {
            drop(w);
            self.close();
            return Ok(());
        }
        let log_path = self.dir.join(LOG_FILE);
        // Missing: nothing written yet (the shape's removal is told by its metadata).
        let file_len = len_or_zero(&log_path)?;
        // Shorter only while the writer rolls back a transaction it will write again.
        if file_len <= w.end_pos {
            return Ok(());
        }
        let buf = read_range(&log_path, w.end_pos, file_len)?;
        let have_chunks = !self
            .visible
            .read()
            .map_err(|_| StorageError::Poisoned)?
            .chunks
            .is_empty();
        let scanned = scan(&buf, w.end_pos, w.chunk_len, self.chunk_bytes, have_chunks);
        let Some(latest) = scanned.latest else {
            return Ok(());
        };
        w.end_pos = scanned.committed_pos;
        w.written_pos = scanned.committed_pos;
        w.chunk_len = scanned.chunk_len;
        w.committed_chunk_len = scanned.chunk_len;
        // Still holding the writer's lock: two follows at once (a request's and the
        // follower task's) publish in the order they read.
        self.publish(
            scanned.chunks,
            scanned.committed_pos,
            latest,
            (w.written_pos, &[]),
        )
        .map(|_| ())
    }

    /// Become the writer of a followed log (the instance that wrote it is gone): take
    /// what it completed, cut what it left unfinished, and write from there on. Readers
    /// keep following the same log, so none of them has to refetch.
    pub fn promote(&self) -> Result<(), StorageError> {
        self.follow()?;
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        if !self.is_follower() {
            return Ok(());
        }
        self.recover(&mut w)?;
        self.follower.store(false, Ordering::Release);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Postgres snapshot recorded when the initial snapshot started.
    pub fn pg_snapshot(&self) -> Option<serde_json::Value> {
        self.writer.lock().ok()?.meta.pg_snapshot.clone()
    }

    // ---- writer side (the shape's Consumer and Snapshotter) ----

    /// Record the snapshot's Postgres snapshot, then let waiters know it started. It is
    /// stored with the completed snapshot (`finish_snapshot`): a shape is only restored
    /// from a complete one.
    pub fn mark_snapshot_started(
        &self,
        pg_snapshot: serde_json::Value,
    ) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        self.writable(&w, &self.dir)?;
        w.meta.pg_snapshot = Some(pg_snapshot);
        drop(w);
        self.snapshot.send_if_modified(|p| {
            let pending = p.state == SnapshotState::Pending;
            if pending {
                p.state = SnapshotState::Started;
            }
            pending
        });
        Ok(())
    }

    /// Only a snapshot in progress can fail: a removed shape stays removed (its readers
    /// must refetch, not retry) and a finished snapshot stays readable.
    pub fn mark_snapshot_failed(&self, reason: String) {
        self.snapshot.send_if_modified(|p| {
            if matches!(p.state, SnapshotState::Pending | SnapshotState::Started) {
                p.state = SnapshotState::Failed(reason);
                true
            } else {
                false
            }
        });
    }

    /// Append one snapshot item (a JSON object); chunks are cut at the threshold.
    pub fn append_snapshot_line(&self, json: &str) -> Result<(), StorageError> {
        self.append_snapshot_bytes(json.as_bytes())
    }

    /// `append_snapshot_line` for an item already encoded as (UTF-8 JSON) bytes.
    pub fn append_snapshot_bytes(&self, json: &[u8]) -> Result<(), StorageError> {
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json);
        line.push(b'\n');
        self.append_snapshot_lines(&line)
    }

    /// Append snapshot items already encoded, each ending with a newline: a batch of
    /// rows takes the lock and is accounted once, not once per row (1M rows in S1).
    /// Chunks are cut between items, as for single items.
    pub fn append_snapshot_lines(&self, lines: &[u8]) -> Result<(), StorageError> {
        if lines.is_empty() {
            return Ok(());
        }
        debug_assert!(lines.ends_with(b"\n"), "snapshot lines end with a newline");
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        let dir = &self.dir;
        self.writable(&w, dir)?;
        let chunk_bytes = self.chunk_bytes;
        let s = w.snapshot.as_mut().ok_or_else(|| StorageError::Corrupt {
            path: dir.clone(),
            reason: "snapshot already finished".into(),
        })?;
        let mut rest = lines;
        while !rest.is_empty() {
            let room = chunk_bytes.saturating_sub(s.len);
            // The items that fit in the chunk whole.
            let mut take = if rest.len() as u64 <= room {
                rest.len()
            } else {
                rest[..room as usize]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            if take == 0 {
                if s.len > 0 {
                    // Readers may have a closed chunk at once; it is durable (fsynced in
                    // the background) before the snapshot counts as complete. Until then
                    // a crash discards the shape, so nothing served from a chunk lost in
                    // a crash can be served again.
                    s.close_chunk(dir, self.id, !self.is_closed(), false)?;
                    s.next_chunk(dir)?;
                    let next = s.chunk;
                    self.snapshot.send_modify(|p| p.chunks_complete = next);
                    continue;
                }
                // An item larger than a chunk: alone in its chunk.
                take = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
            }
            // The file's path is built only for an error.
            if let Err(e) = s.write(&rest[..take], chunk_bytes) {
                let path = dir.join(snapshot_file(s.chunk));
                drop(w);
                // What went out before the failure is on disk all the same.
                self.account((lines.len() - rest.len()) as u64);
                return Err(StorageError::io(&path, e));
            }
            rest = &rest[take..];
        }
        drop(w);
        self.account(lines.len() as u64);
        Ok(())
    }

    /// Make the snapshot durable and visible to readers.
    pub fn finish_snapshot(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        self.writable(&w, &self.dir)?;
        let Some(mut s) = w.snapshot.take() else {
            return Ok(());
        };
        s.close_chunk(&self.dir, self.id, !self.is_closed(), true)?;
        s.wait_synced(&self.dir)?;
        let chunks = s.chunk + 1;
        w.meta.snapshot_chunks = Some(chunks);
        // Changes buffered during the snapshot and committed since are made durable
        // first: once the metadata is, a restore takes the log as it is.
        if self.is_unsynced() {
            self.begin_sync();
            self.write_tail(&mut w)?;
            self.sync_files()?;
        }
        // The change log is created here, made durable by the metadata's directory
        // sync, rather than by the shape's first change: creating files is slow (ext4
        // inode allocation), and on the replication path it holds back every shape
        // (750 new shapes hit by one transaction took ~0.5 s longer to see it). The
        // index waits for a second chunk (see the module's doc).
        open_append(&self.dir.join(LOG_FILE))?;
        write_meta(&self.dir, &w.meta)?;
        w.change_files_durable = true;
        drop(w);
        self.snapshot.send_replace(SnapshotProgress {
            state: SnapshotState::Done { chunks },
            chunks_complete: chunks,
        });
        Ok(())
    }

    /// Append one change; it stays invisible to readers until `commit`. `txn_end` marks
    /// the shape's last change of its transaction.
    pub fn append(&self, offset: LogOffset, json: &str, txn_end: bool) -> Result<(), StorageError> {
        self.append_bytes(offset, json.as_bytes(), txn_end)
    }

    /// `append` of a line already encoded as UTF-8 bytes.
    pub fn append_bytes(
        &self,
        offset: LogOffset,
        json: &[u8],
        txn_end: bool,
    ) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        self.writable(&w, &self.dir)?;
        let record_len = (RECORD_HEADER + json.len() + RECORD_TRAILER) as u64;
        if w.end_pos == 0 || (w.chunk_len > 0 && w.chunk_len + record_len > self.chunk_bytes) {
            let chunk = Chunk {
                first: offset,
                pos: w.end_pos,
            };
            w.new_chunks.push(chunk);
            w.chunk_len = 0;
        }
        encode(&mut w.buffer, offset, txn_end, json);
        w.end_pos += record_len;
        w.chunk_len += record_len;
        if w.buffer.len() >= WRITE_BUFFER.max(w.retry_write_at) {
            match self.write_out(&mut w, false) {
                // Kept in memory, up to the budget for all tails: the commit writes it
                // out or reports the full disk, and is retried until there is space
                // (the transaction is not lost half-way).
                Err(e) if e.is_disk_full() && w.buffer.len() < TAIL_BUDGET as usize => {
                    w.retry_write_at = w.buffer.len() * 2;
                }
                res => res?,
            }
        }
        Ok(())
    }

    /// Write out the committed tail, then what the transaction in progress appended so
    /// far; `sync`: and make the file durable.
    fn write_out(&self, w: &mut Writer, sync: bool) -> Result<(), StorageError> {
        let f = self.write_tail(w)?;
        self.append_to_file(&mut w.written_pos, &f, &w.buffer)?;
        w.clear_buffer();
        if sync {
            let path = self.dir.join(LOG_FILE);
            f.sync_data().map_err(|e| StorageError::io(&path, e))?;
        }
        Ok(())
    }

    /// Write the committed tail to the file (readers find it there from now on), and
    /// return the file, kept open.
    fn write_tail(&self, w: &mut Writer) -> Result<Arc<File>, StorageError> {
        // The path is only joined when needed: this runs for every log in every round.
        self.writable(w, &self.dir)?;
        // Kept open while the log is among those written most recently: a shape not
        // written for a while loses its descriptor to those that are.
        let files = open_files::change_logs();
        let f = files
            .get_or_open(self.id, || open_append_io(&self.dir.join(LOG_FILE)))
            .map_err(|e| StorageError::io(&self.dir.join(LOG_FILE), e))?;
        if self.is_closed() {
            // `close` (which does not take the writer's lock) may have forgotten the file
            // just before this open kept it again: a removed shape keeps no descriptor.
            files.forget(self.id);
        }
        // Only a commit, which holds the writer's lock as this does, adds to the tail:
        // readers go on reading it from memory until it is dropped below.
        let written = {
            let v = self.visible.read().map_err(|_| StorageError::Poisoned)?;
            self.append_to_file(&mut w.written_pos, &f, &v.tail)?;
            v.tail.len()
        };
        if written > 0 {
            let mut v = self.visible.write().map_err(|_| StorageError::Poisoned)?;
            v.tail = Vec::new();
            v.tail_start = w.written_pos;
            TAIL_BYTES.fetch_sub(written as u64, Ordering::Relaxed);
        }
        Ok(f)
    }

    /// Append `bytes` at the end of the file, `written_pos`, and move it past them.
    fn append_to_file(
        &self,
        written_pos: &mut u64,
        f: &File,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*f).write_all(bytes) {
            // Leave the file as it was, so that writing the same bytes again (after the
            // disk got space back) does not duplicate what made it out.
            let _ = f.set_len(*written_pos);
            return Err(StorageError::io(&self.dir.join(LOG_FILE), e));
        }
        *written_pos += bytes.len() as u64;
        Ok(())
    }

    /// Write out what was committed and is still held in memory (the flush round does,
    /// before it syncs). A fenced log or a follower has nothing of its own to write.
    pub fn write_committed(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        self.write_own_tail(&mut w)
    }

    /// `write_tail`, unless the log is fenced, a follower's or closed: then nothing
    /// committed is this instance's to write.
    fn write_own_tail(&self, w: &mut Writer) -> Result<(), StorageError> {
        if w.fenced || self.is_follower() || self.is_closed() {
            return Ok(());
        }
        self.write_tail(w).map(|_| ())
    }

    /// Clear `begin_sync`'s flag, then write out what was committed: a commit landing
    /// after the clear sets it again, so its bytes, which this write may miss, are
    /// synced by a later round. A failed write leaves the log still to be synced.
    pub(crate) fn write_for_sync(&self) -> Result<(), StorageError> {
        self.begin_sync();
        self.write_committed().inspect_err(|_| self.mark_unsynced())
    }

    /// Let readers see everything appended, up to `offset`. It stays in memory, where
    /// readers find it, until the next flush round writes it out with the log's other
    /// commits since (`write_committed`) and syncs it: only then may the transaction be
    /// acknowledged to Postgres. Readers may see it first: a crash of the process or
    /// the machine loses only what Postgres sends again, which the shape writes again as
    /// the same records at the same offsets (a client ahead of the log meanwhile waits
    /// for it to catch up).
    pub fn commit(&self, offset: LogOffset) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        self.writable(&w, &self.dir)?;
        let mut created_index = false;
        let entries: Vec<Chunk> = match (w.index, w.new_chunks.as_slice()) {
            (_, []) => Vec::new(),
            // The log's first chunk: no index yet (see the module's doc).
            (Index::Missing(None), [first]) => {
                w.index = Index::Missing(Some(*first));
                Vec::new()
            }
            // A second chunk: the index starts, with the first one's entry.
            (Index::Missing(first), new) => first.iter().chain(new).copied().collect(),
            (Index::Exists, new) => new.to_vec(),
        };
        if !entries.is_empty() {
            let path = self.dir.join(INDEX_FILE);
            let bytes: Vec<u8> = entries.iter().flat_map(index_entry).collect();
            let mut f = open_append(&path)?;
            let before = f.metadata().map_err(|e| StorageError::io(&path, e))?.len();
            if let Err(e) = f.write_all(&bytes) {
                // As for the log: a retry (the disk got space back) must not find half
                // an entry in front of it.
                let _ = f.set_len(before);
                return Err(StorageError::io(&path, e));
            }
            created_index = matches!(w.index, Index::Missing(_));
            w.index = Index::Exists;
        }
        let new_chunks = std::mem::take(&mut w.new_chunks);
        let end_pos = w.end_pos;
        w.committed_chunk_len = w.chunk_len;
        // The first commit creates the change log (its first record starts a chunk),
        // unless the snapshot's completion did; the index is created by the second
        // chunk's.
        if created_index
            || (!w.change_files_durable && new_chunks.first().is_some_and(|c| c.pos == 0))
        {
            self.new_files.store(true, Ordering::Release);
        }
        self.unsynced.store(true, Ordering::Release);
        let tail = self.publish(new_chunks, end_pos, offset, (w.written_pos, &w.buffer));
        w.clear_buffer();
        // Bounded memory: a log with a large tail, or any log while the tails of all
        // together are over budget, writes out now rather than at the next round. A
        // retried commit (the disk was full) finds everything published already.
        if tail? >= WRITE_BUFFER || TAIL_BYTES.load(Ordering::Relaxed) > TAIL_BUDGET {
            self.write_tail(&mut w)?;
        }
        Ok(())
    }

    /// Whether committed bytes may not be durable yet.
    pub fn is_unsynced(&self) -> bool {
        self.unsynced.load(Ordering::Acquire)
    }

    /// A sync covering this log starts: cleared before it, so that a commit landing
    /// meanwhile sets it again and the log is synced once more rather than left out.
    pub(crate) fn begin_sync(&self) {
        self.unsynced.store(false, Ordering::SeqCst);
    }

    /// Committed bytes are still to be made durable (a round could not write them).
    pub(crate) fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::SeqCst);
    }

    /// A sync of the whole filesystem starts (its logs' `begin_sync` came before they
    /// were written out): it covers directories too.
    pub(crate) fn begin_filesystem_sync(&self) {
        self.new_files.store(false, Ordering::SeqCst);
    }

    /// Make everything committed durable: written out, then the change log synced, then
    /// its index. A log that was closed (its shape removed, its directory gone) has
    /// nothing left to keep.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.write_for_sync()?;
        self.sync_files()
    }

    /// `sync` of what is written out already; `begin_sync` came before it was written.
    pub(crate) fn sync_files(&self) -> Result<(), StorageError> {
        // Never given a change: its change log and index do not exist yet.
        if self
            .visible
            .read()
            .map_err(|_| StorageError::Poisoned)?
            .committed_pos
            == 0
        {
            return Ok(());
        }
        let new_files = self.new_files.swap(false, Ordering::SeqCst);
        let synced = [LOG_FILE, INDEX_FILE]
            .into_iter()
            .try_for_each(|name| {
                let path = self.dir.join(name);
                match File::open(&path) {
                    Ok(f) => f.sync_data().map_err(|e| StorageError::io(&path, e)),
                    // No second chunk yet: no index.
                    Err(e) if name == INDEX_FILE && e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StorageError::io(&path, e)),
                }
            })
            .and_then(|()| {
                if new_files {
                    sync_dir(&self.dir)
                } else {
                    Ok(())
                }
            });
        match synced {
            Ok(()) => Ok(()),
            Err(_) if self.is_closed() => Ok(()),
            Err(e) => {
                self.unsynced.store(true, Ordering::SeqCst);
                if new_files {
                    self.new_files.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    /// Let readers see the log up to `end_pos` (`latest` the offset of its last record),
    /// with the chunks that start before it, and wake those waiting. `tail`: where the
    /// file ends, and committed bytes that follow it, kept in memory. Returns how many
    /// bytes the log now keeps in memory.
    fn publish(
        &self,
        new_chunks: Vec<Chunk>,
        end_pos: u64,
        latest: LogOffset,
        (written_pos, tail): (u64, &[u8]),
    ) -> Result<usize, StorageError> {
        let (grown, kept) = {
            let mut v = self.visible.write().map_err(|_| StorageError::Poisoned)?;
            if v.tail.is_empty() {
                v.tail_start = written_pos;
                // A few commits land between two rounds: room for them at once.
                v.tail.reserve(tail.len().max(TAIL_START));
            }
            v.tail.extend_from_slice(tail);
            TAIL_BYTES.fetch_add(tail.len() as u64, Ordering::Relaxed);
            let grown =
                end_pos.saturating_sub(v.committed_pos) + (new_chunks.len() * INDEX_ENTRY) as u64;
            v.chunks.extend(new_chunks);
            v.committed_pos = end_pos;
            if v.commits.back().is_none_or(|(o, _)| latest > *o) {
                if v.commits.len() == COMMIT_POINTS {
                    v.commits.pop_front();
                }
                v.commits.push_back((latest, end_pos));
            }
            (grown, v.tail.len())
        };
        self.account(grown);
        self.committed.send_if_modified(|cur| {
            if latest > *cur {
                *cur = latest;
                true
            } else {
                false
            }
        });
        Ok(kept)
    }

    /// Forget everything appended since the last commit (the transaction will be sent
    /// again, from its start, by a new replication stream).
    pub fn rollback(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        let committed_pos = self
            .visible
            .read()
            .map_err(|_| StorageError::Poisoned)?
            .committed_pos;
        w.buffer.clear();
        w.new_chunks.clear();
        w.chunk_len = w.committed_chunk_len;
        self.writable(&w, &self.dir.join(LOG_FILE))?;
        // Only a transaction larger than the write buffer reaches the file before its
        // commit (the file is shorter than the committed log while a tail is held).
        if w.written_pos > committed_pos {
            let path = self.dir.join(LOG_FILE);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(committed_pos))
                .map_err(|e| StorageError::io(&path, e))?;
            w.written_pos = committed_pos;
            self.visible
                .write()
                .map_err(|_| StorageError::Poisoned)?
                .tail_start = committed_pos;
        }
        w.end_pos = committed_pos;
        Ok(())
    }

    /// Stop this instance from ever writing again, after the write in progress (if any)
    /// finishes. Called on the log of a shape's previous incarnation before its directory
    /// is reopened: a killed consumer's commit may still be running on the blocking pool,
    /// and bytes it appended after the reopen would shift every later record of the new
    /// writer (readers then find an unreadable record at the end of the log, for good).
    pub fn fence(&self) {
        let mut w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What it committed is kept, as a crash would have left it had the flush round
        // written it: the successor recovers it and Postgres need not send it again.
        if let Err(e) = self.write_own_tail(&mut w) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write out a fenced log's committed changes; the stream sends them again");
        }
        w.fenced = true;
        w.buffer = Vec::new();
        open_files::change_logs().forget(self.id);
    }

    // ---- reader side (HTTP requests) ----

    pub fn snapshot_progress(&self) -> watch::Receiver<SnapshotProgress> {
        self.snapshot.subscribe()
    }

    /// The latest committed offset: `0_inf` until a change arrives.
    pub fn latest_offset(&self) -> LogOffset {
        *self.committed.borrow()
    }

    /// Whether any reader waits on (or is about to read) this log.
    pub fn has_readers(&self) -> bool {
        self.committed.receiver_count() > 0
    }

    pub fn subscribe(&self) -> watch::Receiver<LogOffset> {
        self.committed.subscribe()
    }

    /// Snapshot chunk `k`'s body if it is kept in memory: no I/O, so callers that must
    /// not block can try it first.
    pub fn kept_snapshot_body(&self, k: u32) -> Option<bytes::Bytes> {
        self.recent.get(self.id, k)
    }

    /// Snapshot chunk `k` as the JSON array a response sends: the body kept in memory,
    /// or else read from its file (and kept: a complete chunk never changes).
    pub fn read_snapshot_body(&self, k: u32) -> Result<bytes::Bytes, StorageError> {
        if let Some(body) = self.kept_snapshot_body(k) {
            return Ok(body);
        }
        let body = self.read_snapshot_file(k)?;
        if !self.is_closed() {
            self.recent.insert(self.id, k, body.clone());
        }
        Ok(body)
    }

    /// Snapshot chunk `k` read from its file into the one buffer it is sent from.
    fn read_snapshot_file(&self, k: u32) -> Result<bytes::Bytes, StorageError> {
        let path = self.dir.join(snapshot_file(k));
        let io_err = |e| StorageError::io(&path, e);
        let mut file = File::open(&path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len() as usize;
        let mut body = Vec::with_capacity(len + 2);
        body.push(b'[');
        file.read_to_end(&mut body).map_err(io_err)?;
        lines_into_array(&mut body);
        Ok(body.into())
    }

    /// Committed changes after `after`, up to the end of the chunk holding the first of
    /// them: chunk boundaries never move, so identical requests get identical answers.
    pub fn read_after(&self, after: LogOffset) -> Result<LogRead, StorageError> {
        self.read_after_within(after, u64::MAX)
            .map(|read| read.unwrap_or_default())
    }

    /// `read_after`, unless it would read more than `max_bytes` of the log: `None`
    /// then, decided before any I/O (callers read small answers where a blocking read
    /// is cheap, and hand large ones to a thread that may block).
    pub fn read_after_within(
        &self,
        after: LogOffset,
        max_bytes: u64,
    ) -> Result<Option<LogRead>, StorageError> {
        let end = self.latest_offset();
        let (chunks, committed_pos, resume) = {
            let v = self.visible.read().map_err(|_| StorageError::Poisoned)?;
            // The latest commit at or before `after`: every record past its position
            // is past it.
            let at = v.commits.partition_point(|(o, _)| *o <= after);
            let resume = at.checked_sub(1).map(|i| v.commits[i].1);
            (v.chunks.clone(), v.committed_pos, resume)
        };
        if chunks.is_empty() || after >= end {
            return Ok(Some(LogRead {
                reached_end: true,
                ..LogRead::default()
            }));
        }
        // The chunk holding the first entry after `after`.
        let mut i = chunks
            .partition_point(|c| c.first <= after)
            .saturating_sub(1);
        let path = self.dir.join(LOG_FILE);
        let io_err = |e| StorageError::io(&path, e);
        let mut file: Option<File> = None;
        let mut scanned = 0;
        loop {
            let stop = chunks
                .get(i + 1)
                .map_or(committed_pos, |c| c.pos)
                .min(committed_pos);
            let start = match resume {
                Some(p) if p >= chunks[i].pos && p <= stop => p,
                _ => chunks[i].pos,
            };
            scanned += stop - start;
            if scanned > max_bytes {
                return Ok(None);
            }
            let len = (stop - start) as usize;
            let mut buf = vec![0u8; len];
            // The part still held in memory first: what is not there any more was
            // written out before it was dropped.
            let in_file = self.copy_tail(start, &mut buf)?;
            if in_file > 0 {
                let f = match &mut file {
                    Some(f) => f,
                    None => file.insert(File::open(&path).map_err(io_err)?),
                };
                f.seek(SeekFrom::Start(start)).map_err(io_err)?;
                f.read_exact(&mut buf[..in_file]).map_err(io_err)?;
            }
            // Each record's JSON moves down over the headers before it: `[` and the
            // commas take less room than a record's header, so the write position
            // never passes the read position.
            let mut ends = Vec::new();
            let mut last = None;
            let (mut pos, mut write) = (0, 0);
            while pos < len {
                let rec = decode(&buf, pos).ok_or_else(|| StorageError::Corrupt {
                    path: path.clone(),
                    reason: format!("unreadable record at byte {}", start as usize + pos),
                })?;
                let (json_start, json_len) =
                    (rec.end - RECORD_TRAILER - rec.json.len(), rec.json.len());
                let (offset, rec_end) = (rec.offset, rec.end);
                pos = rec_end;
                if offset > after {
                    buf[write] = if ends.is_empty() { b'[' } else { b',' };
                    write += 1;
                    buf.copy_within(json_start..json_start + json_len, write);
                    write += json_len;
                    ends.push(write);
                    last = Some(offset);
                }
            }
            if let Some(last) = last {
                buf.truncate(write);
                // A read that skipped most of what it scanned (an offset the log no
                // longer remembers the position of) must not pin the whole chunk.
                if buf.capacity() > write + write / 8 {
                    buf.shrink_to_fit();
                }
                return Ok(Some(LogRead {
                    joined: buf,
                    ends,
                    reached_end: last >= end,
                    last: Some(last),
                    scanned,
                }));
            }
            // `after` was the last entry of this chunk: the answer starts in the next.
            if i + 1 >= chunks.len() {
                return Ok(Some(LogRead {
                    reached_end: true,
                    scanned,
                    ..LogRead::default()
                }));
            }
            i += 1;
        }
    }

    /// Copy the committed bytes at `start..start + buf.len()` that are held in memory
    /// into `buf`; returns how many bytes at its front are to be read from the file.
    fn copy_tail(&self, start: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let v = self.visible.read().map_err(|_| StorageError::Poisoned)?;
        let stop = start + buf.len() as u64;
        let tail_end = v.tail_start + v.tail.len() as u64;
        if v.tail.is_empty() || stop <= v.tail_start || start >= tail_end {
            return Ok(buf.len());
        }
        let from = start.max(v.tail_start);
        let to = stop.min(tail_end);
        let at = (from - start) as usize;
        let len = (to - from) as usize;
        let tail_at = (from - v.tail_start) as usize;
        buf[at..at + len].copy_from_slice(&v.tail[tail_at..tail_at + len]);
        Ok(at)
    }

    /// The shape is gone: wake every reader so it can tell its client to refetch.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        open_files::change_logs().forget(self.id);
        self.recent.forget_log(self.id);
        // A snapshot still running lets go of the body it was building (it ends at its
        // next message). Not waited for: a commit may hold the writer through an fsync.
        if let Ok(mut w) = self.writer.try_lock()
            && let Some(s) = w.snapshot.as_mut()
        {
            s.stop_keeping();
        }
        self.committed.send_modify(|_| {});
        self.snapshot.send_if_modified(|p| {
            if matches!(p.state, SnapshotState::Pending | SnapshotState::Started) {
                p.state = SnapshotState::Removed;
                true
            } else {
                false
            }
        });
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(chunk: u64) -> (tempfile::TempDir, ShapeLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), chunk).unwrap();
        log.mark_snapshot_started(serde_json::json!({"xmin": 1}))
            .unwrap();
        log.finish_snapshot().unwrap();
        (dir, log)
    }

    fn reopen(dir: &tempfile::TempDir, chunk: u64) -> ShapeLog {
        ShapeLog::open(dir.path().join("shape"), chunk).unwrap()
    }

    #[test]
    fn huge_page_advice_leaves_a_buffer_as_it_was_and_usable() {
        let mut buf = b"[head".to_vec();
        buf.reserve_exact(8 << 20);
        huge_pages(&mut buf);
        assert_eq!(buf, b"[head");
        buf.extend(std::iter::repeat_n(7u8, 8 << 20));
        assert_eq!(&buf[..5], b"[head");
        assert!(buf[5..].iter().all(|&b| b == 7));
        // No spare capacity, or less than a page of it: nothing to advise.
        let mut full = vec![1u8; 10];
        huge_pages(&mut full);
        assert_eq!(full, vec![1u8; 10]);
    }

    #[test]
    fn uncommitted_changes_are_invisible_to_readers() {
        let (_d, log) = log(1 << 20);
        log.append(LogOffset::new(10, 0), "{\"a\":1}", true)
            .unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert!(read.is_empty());
        assert!(read.reached_end);
        log.commit(LogOffset::new(10, 0)).unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!(read.items(), vec!["{\"a\":1}".to_string()]);
        assert_eq!(read.last, Some(LogOffset::new(10, 0)));
        assert!(read.reached_end);
    }

    #[test]
    fn a_written_log_keeps_its_file_open_until_fenced_closed_or_dropped() {
        let files = open_files::change_logs();
        let written = |log: &ShapeLog, tx: u64| {
            log.append(LogOffset::new(tx, 0), "{}", true).unwrap();
            log.commit(LogOffset::new(tx, 0)).unwrap();
            log.write_committed().unwrap();
        };
        let (d, log) = log(1 << 20);
        written(&log, 10);
        assert!(files.is_open(log.id));
        log.fence();
        assert!(!files.is_open(log.id));

        let log = reopen(&d, 1 << 20);
        written(&log, 11);
        assert!(files.is_open(log.id));
        log.close();
        assert!(!files.is_open(log.id));
        // A commit that was under way when the shape was removed does not keep it open
        // (nor is it written out: the shape is gone).
        written(&log, 12);
        assert!(!files.is_open(log.id));

        let log = reopen(&d, 1 << 20);
        written(&log, 13);
        let id = log.id;
        drop(log);
        assert!(!files.is_open(id));
        // What went through the kept files is all there.
        let read = reopen(&d, 1 << 20)
            .read_after(LogOffset::SNAPSHOT_END)
            .unwrap();
        assert_eq!(read.last, Some(LogOffset::new(13, 0)));
        assert_eq!(read.items(), vec!["{}"; 3]);
    }

    #[test]
    fn a_read_is_the_start_of_the_json_array_of_its_items() {
        let (_d, log) = log(1 << 20);
        let items = ["{\"a\":\"x,y\"}", "[]", "\"\u{e9}\u{1d11e}\"", "{}"];
        for (op, item) in items.iter().enumerate() {
            log.append(LogOffset::new(7, op as u64), item, op == items.len() - 1)
                .unwrap();
        }
        log.commit(LogOffset::new(7, items.len() as u64 - 1))
            .unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!(read.items(), items);
        let array = read.into_array_start();
        assert_eq!(
            String::from_utf8(array).unwrap(),
            format!("[{}", items.join(","))
        );
        let read = log.read_after(LogOffset::new(7, 1)).unwrap();
        assert_eq!(read.items(), &items[2..]);
        let array = read.into_array_start();
        assert_eq!(array, format!("[{}", items[2..].join(",")).into_bytes());
        let nothing = log.read_after(LogOffset::new(7, 3)).unwrap();
        assert_eq!(nothing.into_array_start(), b"[");
    }

    #[test]
    fn a_read_within_a_bound_reads_nothing_when_the_answer_is_larger() {
        let (_d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "{}", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        for op in [0, 2] {
            log.append(LogOffset::new(6, op), "[1,2,3]", op == 2)
                .unwrap();
        }
        log.commit(LogOffset::new(6, 2)).unwrap();
        let whole = log.read_after(LogOffset::new(5, 0)).unwrap();
        let n = whole.scanned;
        let within = log
            .read_after_within(LogOffset::new(5, 0), n)
            .unwrap()
            .expect("within the bound");
        assert_eq!(within.items(), whole.items());
        assert_eq!(within.last, Some(LogOffset::new(6, 2)));
        assert!(
            log.read_after_within(LogOffset::new(5, 0), n - 1)
                .unwrap()
                .is_none()
        );
        // From the snapshot's end the whole chunk is scanned.
        assert!(
            log.read_after_within(LogOffset::SNAPSHOT_END, n)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_read_that_skips_most_of_what_it_scanned_does_not_keep_the_scanned_buffer() {
        let (_d, log) = log(1 << 20);
        let item = "x".repeat(100);
        for op in 0..1000 {
            log.append(LogOffset::new(8, op), &format!("\"{item}\""), op == 999)
                .unwrap();
        }
        log.commit(LogOffset::new(8, 999)).unwrap();
        let read = log.read_after(LogOffset::new(8, 997)).unwrap();
        assert_eq!(read.len(), 2);
        assert!(read.scanned > 100_000);
        assert!(read.joined.capacity() < 1_000, "{}", read.joined.capacity());
    }

    #[test]
    fn reads_start_strictly_after_the_requested_offset() {
        let (_d, log) = log(1 << 20);
        for op in [0, 2, 4] {
            log.append(LogOffset::new(7, op), &format!("{op}"), op == 4)
                .unwrap();
        }
        log.commit(LogOffset::new(7, 4)).unwrap();
        let read = log.read_after(LogOffset::new(7, 0)).unwrap();
        assert_eq!(read.items(), vec!["2".to_string(), "4".to_string()]);
        // An offset that matches no stored entry still works.
        let read = log.read_after(LogOffset::new(7, 1)).unwrap();
        assert_eq!(read.len(), 2);
    }

    #[test]
    fn a_read_after_a_recent_commit_scans_only_what_follows_it() {
        // One large chunk holding 100 transactions of one 100-byte change each.
        let (_d, log) = log(1 << 20);
        let change = "x".repeat(100);
        for tx in 1..=100 {
            log.append(LogOffset::new(tx, 0), &change, true).unwrap();
            log.commit(LogOffset::new(tx, 0)).unwrap();
        }
        let record = (RECORD_HEADER + 100 + RECORD_TRAILER) as u64;
        // A live client at the 99th commit: one record to read, not the whole chunk.
        let read = log.read_after(LogOffset::new(99, 0)).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read.last, Some(LogOffset::new(100, 0)));
        assert_eq!(read.scanned, record);
        // An offset between commits starts at the commit before it, and skips to it.
        let read = log.read_after(LogOffset::new(50, 7)).unwrap();
        assert_eq!(read.len(), 50);
        assert_eq!(read.scanned, 50 * record);
        // Older than every remembered commit: the whole chunk, as before.
        let read = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!(read.len(), 100);
        assert_eq!(read.scanned, 100 * record);
    }

    #[test]
    fn a_read_after_a_commit_in_an_earlier_chunk_starts_in_the_next_chunk() {
        // Three 35-byte records per chunk; one transaction per record.
        let (_d, log) = log(105);
        for tx in 1..=7 {
            commit_tx(&log, tx);
        }
        // tx 3 ends the first chunk: the answer is the second chunk, whole.
        let read = log.read_after(LogOffset::new(3, 0)).unwrap();
        let offsets: Vec<_> = (4..=6).map(|tx| LogOffset::new(tx, 0)).collect();
        assert_eq!(read.len(), 3);
        assert_eq!(read.last, offsets.last().copied());
        assert!(!read.reached_end);
        let read = log.read_after(LogOffset::new(5, 0)).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read.last, Some(LogOffset::new(6, 0)));
        let read = log.read_after(LogOffset::new(6, 0)).unwrap();
        assert_eq!(read.last, Some(LogOffset::new(7, 0)));
        assert!(read.reached_end);
    }

    #[test]
    fn responses_end_at_stable_chunk_boundaries() {
        // Each record is 21 + 10 + 4 = 35 bytes: three fit in a 105-byte chunk.
        let (d, log) = log(105);
        for op in 0..10 {
            log.append(LogOffset::new(1, op), "0123456789", op == 9)
                .unwrap();
        }
        log.commit(LogOffset::new(1, 9)).unwrap();
        let first = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!(first.len(), 3);
        assert!(!first.reached_end);
        // The same request from the middle of a chunk ends at the same boundary.
        let mid = log.read_after(LogOffset::new(1, 0)).unwrap();
        assert_eq!(mid.last, first.last);
        let mut offset = first.last.unwrap();
        let mut seen = 3;
        loop {
            let r = log.read_after(offset).unwrap();
            seen += r.len();
            offset = r.last.unwrap();
            if r.reached_end {
                break;
            }
        }
        assert_eq!(seen, 10);
        // And the boundaries survive a restart.
        log.write_committed().unwrap();
        drop(log);
        let log = reopen(&d, 105);
        assert_eq!(
            log.read_after(LogOffset::SNAPSHOT_END).unwrap().last,
            first.last
        );
    }

    #[test]
    fn a_reopened_log_has_its_changes_and_latest_offset() {
        let (d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "a", false).unwrap();
        log.append(LogOffset::new(5, 2), "b", true).unwrap();
        log.commit(LogOffset::new(5, 2)).unwrap();
        log.write_committed().unwrap();
        drop(log);
        let log = reopen(&d, 1 << 20);
        assert_eq!(log.latest_offset(), LogOffset::new(5, 2));
        assert_eq!(
            log.read_after(LogOffset::SNAPSHOT_END).unwrap().items(),
            ["a", "b"]
        );
        assert_eq!(log.pg_snapshot(), Some(serde_json::json!({"xmin": 1})));
        // And it keeps going.
        log.append(LogOffset::new(6, 0), "c", true).unwrap();
        log.commit(LogOffset::new(6, 0)).unwrap();
        log.write_committed().unwrap();
        let log2 = reopen(&d, 1 << 20);
        assert_eq!(
            log2.read_after(LogOffset::new(5, 2)).unwrap().items(),
            ["c"]
        );
    }

    #[test]
    fn a_fenced_log_writes_out_what_it_committed_and_never_writes_behind_its_reopened_successor() {
        let (d, old) = log(1 << 20);
        old.append(LogOffset::new(5, 0), "kept", true).unwrap();
        old.commit(LogOffset::new(5, 0)).unwrap();
        // A killed consumer's transaction, still to be committed on the blocking pool
        // when the shape subsystem restarts and reopens the directory.
        old.append(LogOffset::new(6, 0), "late", true).unwrap();
        old.fence();
        // What it committed was in memory only: the fence wrote it out.
        let new = reopen(&d, 1 << 20);
        assert_eq!(new.latest_offset(), LogOffset::new(5, 0));
        assert!(
            old.write_committed().is_ok(),
            "a fenced log has nothing to write"
        );
        assert_eq!(file_len(&d), (RECORD_HEADER + 4 + RECORD_TRAILER) as u64);
        assert!(matches!(
            old.commit(LogOffset::new(6, 0)),
            Err(StorageError::Fenced { .. })
        ));
        assert!(matches!(old.rollback(), Err(StorageError::Fenced { .. })));
        // The stream resends the transaction to the new writer; every record reads back.
        new.append(LogOffset::new(6, 0), "resent", true).unwrap();
        new.commit(LogOffset::new(6, 0)).unwrap();
        new.append(LogOffset::new(7, 0), "next", true).unwrap();
        new.commit(LogOffset::new(7, 0)).unwrap();
        assert_eq!(
            new.read_after(LogOffset::SNAPSHOT_END).unwrap().items(),
            ["kept", "resent", "next"]
        );
    }

    #[test]
    fn a_torn_tail_is_truncated_to_the_last_complete_transaction() {
        let (d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "kept", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        // A transaction written out but never committed, then half a record.
        log.append(LogOffset::new(6, 0), "lost", false).unwrap();
        {
            let mut w = log.writer.lock().unwrap();
            log.write_out(&mut w, true).unwrap();
        }
        drop(log);
        let path = d.path().join("shape").join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 0, 0, 0, 0, 7, 0]).unwrap();
        drop(f);
        let log = reopen(&d, 1 << 20);
        assert_eq!(log.latest_offset(), LogOffset::new(5, 0));
        assert_eq!(
            log.read_after(LogOffset::SNAPSHOT_END).unwrap().items(),
            ["kept"]
        );
        let len = fs::metadata(&path).unwrap().len();
        assert_eq!(len, (RECORD_HEADER + 4 + RECORD_TRAILER) as u64);
    }

    #[test]
    fn a_corrupted_record_is_treated_as_a_torn_tail() {
        let (d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "kept", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        log.append(LogOffset::new(6, 0), "flipped", true).unwrap();
        log.commit(LogOffset::new(6, 0)).unwrap();
        log.write_committed().unwrap();
        drop(log);
        let path = d.path().join("shape").join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let log = reopen(&d, 1 << 20);
        assert_eq!(log.latest_offset(), LogOffset::new(5, 0));
    }

    #[test]
    fn a_rolled_back_transaction_leaves_no_trace() {
        let (d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "kept", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        for op in 0..5000 {
            // Big enough to be written out before its commit.
            log.append(LogOffset::new(6, op), "partial transaction", false)
                .unwrap();
        }
        log.rollback().unwrap();
        log.append(LogOffset::new(6, 0), "replayed", true).unwrap();
        log.commit(LogOffset::new(6, 0)).unwrap();
        assert_eq!(
            log.read_after(LogOffset::SNAPSHOT_END).unwrap().items(),
            ["kept", "replayed"]
        );
        log.write_committed().unwrap();
        drop(log);
        assert_eq!(
            reopen(&d, 1 << 20)
                .read_after(LogOffset::SNAPSHOT_END)
                .unwrap()
                .items(),
            ["kept", "replayed"]
        );
    }

    #[test]
    fn a_log_whose_snapshot_never_finished_is_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), 1 << 20).unwrap();
        log.append_snapshot_line("{}").unwrap();
        drop(log);
        assert!(matches!(
            ShapeLog::open(dir.path().join("shape"), 1 << 20),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn snapshot_chunks_are_cut_at_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), 20).unwrap();
        for i in 0..5 {
            log.append_snapshot_line(&format!("{{\"row\":{i}}}"))
                .unwrap();
        }
        assert!(log.snapshot_progress().borrow().chunks_complete >= 1);
        log.finish_snapshot().unwrap();
        let SnapshotState::Done { chunks } = log.snapshot_progress().borrow().state.clone() else {
            panic!("snapshot not done");
        };
        let total: usize = (0..chunks)
            .map(|k| {
                let body = log.read_snapshot_body(k).unwrap();
                serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total, 5);
        assert!(chunks >= 2);
    }

    #[test]
    fn a_batch_of_snapshot_lines_is_cut_into_the_chunks_single_lines_would_be() {
        let chunks_of = |log: &ShapeLog| -> Vec<Vec<u8>> {
            log.finish_snapshot().unwrap();
            let SnapshotState::Done { chunks } = log.snapshot_progress().borrow().state.clone()
            else {
                panic!("snapshot not done");
            };
            (0..chunks)
                .map(|k| log.read_snapshot_body(k).unwrap().to_vec())
                .collect()
        };
        // Items of many sizes, one larger than a chunk, against a 40-byte threshold.
        let items: Vec<String> = (0..40)
            .map(|i| match i {
                17 => format!("{{\"big\":\"{}\"}}", "x".repeat(60)),
                _ => format!("{{\"row\":{}}}", "7".repeat(i % 9 + 1)),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let single = ShapeLog::create(dir.path().join("single"), 40).unwrap();
        for item in &items {
            single.append_snapshot_line(item).unwrap();
        }
        let batched = ShapeLog::create(dir.path().join("batched"), 40).unwrap();
        for batch in items.chunks(7) {
            let lines: String = batch.iter().map(|i| format!("{i}\n")).collect();
            batched.append_snapshot_lines(lines.as_bytes()).unwrap();
        }
        let (single, batched) = (chunks_of(&single), chunks_of(&batched));
        assert!(single.len() > 5);
        assert_eq!(single, batched);
    }

    #[test]
    fn a_snapshot_chunk_body_is_its_lines_as_a_json_array() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), 1 << 20).unwrap();
        let lines = ["{\"a\":\"x\\ny\"}", "[1,2]", "\"\u{e9}\""];
        for line in lines {
            log.append_snapshot_line(line).unwrap();
        }
        log.finish_snapshot().unwrap();
        let body = log.read_snapshot_body(0).unwrap();
        assert_eq!(body, format!("[{}]", lines.join(",")).as_bytes());

        let empty = ShapeLog::create(dir.path().join("empty"), 1 << 20).unwrap();
        empty.finish_snapshot().unwrap();
        assert_eq!(empty.read_snapshot_body(0).unwrap(), b"[]".as_slice());
    }

    /// A log whose snapshot bodies are kept in a cache of its own, of the given budgets.
    fn log_with_recent(
        dir: &Path,
        chunk: u64,
        kept: usize,
        building: usize,
    ) -> (ShapeLog, &'static RecentChunks) {
        let recent: &'static RecentChunks = Box::leak(Box::new(RecentChunks::new(kept, building)));
        (
            ShapeLog::create_with(dir.join("shape"), chunk, recent).unwrap(),
            recent,
        )
    }

    /// Items of many sizes (one larger than a 40-byte chunk), in batches.
    fn write_awkward_snapshot(log: &ShapeLog) -> u32 {
        let items: Vec<String> = (0..40)
            .map(|i| match i {
                17 => format!("{{\"big\":\"{}\"}}", "x".repeat(60)),
                _ => format!("{{\"row\":{}}}", "7".repeat(i % 9 + 1)),
            })
            .collect();
        for batch in items.chunks(7) {
            let lines: String = batch.iter().map(|i| format!("{i}\n")).collect();
            log.append_snapshot_lines(lines.as_bytes()).unwrap();
        }
        log.finish_snapshot().unwrap();
        let SnapshotState::Done { chunks } = log.snapshot_progress().borrow().state.clone() else {
            panic!("snapshot not done");
        };
        chunks
    }

    #[test]
    fn a_closed_chunk_is_served_from_memory_exactly_as_its_file_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recent) = log_with_recent(dir.path(), 40, 1 << 20, 1 << 20);
        let chunks = write_awkward_snapshot(&log);
        assert!(chunks > 5);
        for k in 0..chunks {
            let kept = recent
                .get(log.id, k)
                .expect("the closed chunk's body is kept");
            assert_eq!(kept, log.read_snapshot_file(k).unwrap(), "chunk {k}");
            assert_eq!(log.read_snapshot_body(k).unwrap(), kept);
        }
        assert_eq!(recent.building_bytes(), 0, "nothing counted once closed");
        // Served from memory: the file is not read.
        fs::remove_file(log.dir().join(snapshot_file(0))).unwrap();
        assert!(log.read_snapshot_body(0).is_ok());
        log.close();
        assert_eq!(recent.kept_bytes(), 0, "a closed log keeps no body");
    }

    #[test]
    fn chunks_beyond_the_building_budget_are_written_through_and_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        // Room to build about one small chunk at a time, and to keep few.
        let (log, recent) = log_with_recent(dir.path(), 40, 60, 25);
        let (plain, _) = log_with_recent(&dir.path().join("plain"), 40, 1 << 20, 1 << 20);
        let chunks = write_awkward_snapshot(&log);
        assert_eq!(chunks, write_awkward_snapshot(&plain));
        assert!((0..chunks).any(|k| recent.get(log.id, k).is_none()));
        for k in 0..chunks {
            assert_eq!(
                log.read_snapshot_body(k).unwrap(),
                plain.read_snapshot_body(k).unwrap(),
                "chunk {k}"
            );
            assert_eq!(
                log.read_snapshot_body(k).unwrap(),
                log.read_snapshot_file(k).unwrap()
            );
        }
        assert_eq!(recent.building_bytes(), 0);
        assert!(recent.kept_bytes() <= 60);
    }

    #[test]
    fn a_snapshot_dropped_half_written_releases_what_it_was_building() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recent) = log_with_recent(dir.path(), 1 << 20, 1 << 20, 1 << 20);
        log.append_snapshot_lines(b"{\"a\":1}\n").unwrap();
        assert!(
            recent.building_bytes() >= 10,
            "`[`, the line and `]` are counted"
        );
        drop(log);
        assert_eq!(recent.building_bytes(), 0);
    }

    /// Lines of about 100 bytes, `n` of them.
    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{{\"row\":{i},\"pad\":\"{}\"}}\n", "p".repeat(80)))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn large_chunks_are_kept_only_when_their_whole_allocation_fits_the_building_budget() {
        let dir = tempfile::tempdir().unwrap();
        let data = lines(40_000); // ~4 MB: two 2 MB chunks and a part.
        let (plain, _) = log_with_recent(&dir.path().join("plain"), 2 << 20, 64 << 20, 64 << 20);
        // Room for one whole 2 MB chunk at a time, but not for two.
        let (roomy, roomy_recent) =
            log_with_recent(&dir.path().join("roomy"), 2 << 20, 64 << 20, 3 << 20);
        // Too little for any chunk past the write buffer: written through after the
        // first 256 KiB were flushed.
        let (tight, tight_recent) =
            log_with_recent(&dir.path().join("tight"), 2 << 20, 64 << 20, 600 << 10);
        for log in [&plain, &roomy, &tight] {
            // Batches of whole lines, as the Snapshotter appends them.
            let mut batch = Vec::new();
            for line in data.split_inclusive(|&b| b == b'\n') {
                batch.extend_from_slice(line);
                if batch.len() >= 64 * 1024 {
                    log.append_snapshot_lines(&batch).unwrap();
                    batch.clear();
                }
            }
            log.append_snapshot_lines(&batch).unwrap();
            log.finish_snapshot().unwrap();
        }
        let SnapshotState::Done { chunks } = plain.snapshot_progress().borrow().state.clone()
        else {
            panic!("snapshot not done");
        };
        assert!(chunks >= 2);
        for k in 0..chunks {
            assert!(roomy_recent.get(roomy.id, k).is_some(), "chunk {k} kept");
            assert!(
                tight_recent.get(tight.id, k).is_none(),
                "chunk {k} not kept"
            );
            let expected = plain.read_snapshot_file(k).unwrap();
            assert_eq!(roomy.read_snapshot_body(k).unwrap(), expected, "chunk {k}");
            assert_eq!(tight.read_snapshot_body(k).unwrap(), expected, "chunk {k}");
            // Read from its file once, kept from then on.
            assert!(
                tight_recent.get(tight.id, k).is_some(),
                "chunk {k} kept once read"
            );
        }
        assert_eq!(roomy_recent.building_bytes(), 0);
        assert_eq!(tight_recent.building_bytes(), 0);
    }

    #[test]
    fn a_log_closed_during_its_snapshot_lets_go_of_its_body_and_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recent) = log_with_recent(dir.path(), 1 << 20, 64 << 20, 64 << 20);
        log.append_snapshot_lines(&lines(100)).unwrap();
        assert!(recent.building_bytes() > 0);
        log.close();
        assert_eq!(recent.building_bytes(), 0);
        // A snapshot that has not noticed yet goes on, keeping nothing.
        log.append_snapshot_lines(&lines(100)).unwrap();
        log.finish_snapshot().unwrap();
        assert_eq!((recent.building_bytes(), recent.kept_bytes()), (0, 0));
        assert!(
            log.read_snapshot_body(0).is_ok(),
            "still served from its file"
        );
    }

    /// Every response a reader can get, from every offset the log holds.
    fn all_reads(log: &ShapeLog) -> Vec<(Vec<String>, Option<LogOffset>, bool)> {
        let mut offsets = vec![LogOffset::SNAPSHOT_END];
        let mut at = LogOffset::SNAPSHOT_END;
        loop {
            let r = log.read_after(at).unwrap();
            let Some(last) = r.last else { break };
            offsets.push(last);
            at = last;
        }
        offsets
            .iter()
            .map(|o| {
                let r = log.read_after(*o).unwrap();
                let items = r.items().into_iter().map(str::to_string).collect();
                (items, r.last, r.reached_end)
            })
            .collect()
    }

    fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_follower_answers_as_its_writer_does_at_the_same_chunk_boundaries() {
        let (d, writer) = log(100);
        let follower = ShapeLog::open_follower(d.path().join("shape"), 100).unwrap();
        assert!(follower.is_follower());
        let mut latest = follower.subscribe();
        for tx in 1..=20u64 {
            for op in 0..3u64 {
                writer
                    .append(
                        LogOffset::new(tx, op),
                        &format!("{{\"tx\":{tx},\"op\":{op}}}"),
                        op == 2,
                    )
                    .unwrap();
            }
            writer.commit(LogOffset::new(tx, 2)).unwrap();
            // What a follower reads is what the writer's flush rounds wrote out.
            writer.write_committed().unwrap();
            if tx % 7 == 0 {
                follower.follow().unwrap();
                assert!(
                    latest.has_changed().unwrap(),
                    "a follower wakes its readers"
                );
                latest.borrow_and_update();
            }
        }
        follower.follow().unwrap();
        assert_eq!(follower.latest_offset(), LogOffset::new(20, 2));
        assert_eq!(all_reads(&follower), all_reads(&writer));
        // A follower opened now, from the index, agrees too.
        let late = ShapeLog::open_follower(d.path().join("shape"), 100).unwrap();
        assert_eq!(all_reads(&late), all_reads(&writer));
    }

    #[test]
    fn a_follower_never_shows_an_unfinished_transaction_nor_writes_a_byte() {
        let (d, writer) = log(1 << 20);
        writer.append(LogOffset::new(5, 0), "kept", true).unwrap();
        writer.commit(LogOffset::new(5, 0)).unwrap();
        // Written out (past the write buffer) but not finished by its writer.
        let big = "x".repeat(WRITE_BUFFER);
        writer.append(LogOffset::new(6, 0), &big, false).unwrap();
        let before = dir_bytes(&d.path().join("shape"));
        let follower = ShapeLog::open_follower(d.path().join("shape"), 1 << 20).unwrap();
        follower.follow().unwrap();
        assert_eq!(dir_bytes(&d.path().join("shape")), before);
        assert_eq!(follower.latest_offset(), LogOffset::new(5, 0));
        assert_eq!(
            follower
                .read_after(LogOffset::SNAPSHOT_END)
                .unwrap()
                .items(),
            ["kept"]
        );
        assert!(matches!(
            follower
                .append(LogOffset::new(7, 0), "no", true)
                .and_then(|_| follower.commit(LogOffset::new(7, 0))),
            Err(StorageError::ReadOnly { .. })
        ));
        // Once the writer finishes it, the follower shows it.
        writer.append(LogOffset::new(6, 1), "end", true).unwrap();
        writer.commit(LogOffset::new(6, 1)).unwrap();
        follower.follow().unwrap();
        assert_eq!(
            follower.latest_offset(),
            LogOffset::new(5, 0),
            "not written out yet"
        );
        writer.write_committed().unwrap();
        follower.follow().unwrap();
        assert_eq!(follower.latest_offset(), LogOffset::new(6, 1));
    }

    #[test]
    fn a_promoted_follower_cuts_what_its_writer_left_unfinished_and_writes_on() {
        let (d, writer) = log(1 << 20);
        writer.append(LogOffset::new(5, 0), "kept", true).unwrap();
        writer.commit(LogOffset::new(5, 0)).unwrap();
        let big = "x".repeat(WRITE_BUFFER);
        writer.append(LogOffset::new(6, 0), &big, false).unwrap();
        let follower = ShapeLog::open_follower(d.path().join("shape"), 1 << 20).unwrap();
        let mut latest = follower.subscribe();
        latest.borrow_and_update();
        // The writer dies; the follower takes over, and the stream resends tx 6.
        drop(writer);
        follower.promote().unwrap();
        assert!(!follower.is_follower());
        follower
            .append(LogOffset::new(6, 0), "resent", true)
            .unwrap();
        follower.commit(LogOffset::new(6, 0)).unwrap();
        assert!(
            latest.has_changed().unwrap(),
            "readers of the follower see the new writes"
        );
        assert_eq!(
            follower
                .read_after(LogOffset::SNAPSHOT_END)
                .unwrap()
                .items(),
            ["kept", "resent"]
        );
        follower.write_committed().unwrap();
        let reopened = reopen(&d, 1 << 20);
        assert_eq!(
            reopened
                .read_after(LogOffset::SNAPSHOT_END)
                .unwrap()
                .items(),
            ["kept", "resent"]
        );
    }

    #[test]
    fn a_follower_closes_when_its_writer_removes_the_shape() {
        let (d, _writer) = log(1 << 20);
        let follower = ShapeLog::open_follower(d.path().join("shape"), 1 << 20).unwrap();
        fs::rename(d.path().join("shape"), d.path().join("trashed")).unwrap();
        follower.follow().unwrap();
        assert!(follower.is_closed());
    }

    #[test]
    fn stored_bytes_count_what_each_log_holds_on_disk() {
        fn on_disk(dir: &Path) -> u64 {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name() != META_FILE)
                .map(|e| e.metadata().unwrap().len())
                .sum()
        }
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), 64).unwrap();
        for i in 0..10 {
            log.append_snapshot_line(&format!("{{\"row\":{i}}}"))
                .unwrap();
        }
        log.mark_snapshot_started(serde_json::json!({})).unwrap();
        log.finish_snapshot().unwrap();
        for tx in 1..=10u64 {
            log.append(LogOffset::new(tx, 0), "{\"a\":\"change\"}", true)
                .unwrap();
            log.commit(LogOffset::new(tx, 0)).unwrap();
        }
        let path = dir.path().join("shape");
        log.write_committed().unwrap();
        assert_eq!(log.bytes.load(Ordering::Relaxed), on_disk(&path));
        let reopened = ShapeLog::open(&path, 64).unwrap();
        assert_eq!(reopened.bytes.load(Ordering::Relaxed), on_disk(&path));
    }

    #[test]
    fn a_commit_is_readable_at_once_and_durable_only_after_a_sync() {
        let (_d, log) = log(1 << 20);
        assert!(!log.is_unsynced());
        log.append(LogOffset::new(10, 0), "{\"a\":1}", true)
            .unwrap();
        log.commit(LogOffset::new(10, 0)).unwrap();
        let read = log.read_after(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!(read.len(), 1);
        assert!(log.is_unsynced());
        log.sync().unwrap();
        assert!(!log.is_unsynced());
    }

    fn file_len(d: &tempfile::TempDir) -> u64 {
        len_or_zero(&d.path().join("shape").join(LOG_FILE)).unwrap()
    }

    #[test]
    fn a_commit_is_read_from_memory_until_a_flush_round_writes_it_out() {
        // Three 35-byte records per chunk.
        let (d, log) = log(105);
        commit_tx(&log, 1);
        for tx in 2..=5 {
            log.append(LogOffset::new(tx, 0), "0123456789", true)
                .unwrap();
            log.commit(LogOffset::new(tx, 0)).unwrap();
        }
        // Tx 1 is in the file, 2 to 5 only in memory: reads span both.
        assert_eq!(file_len(&d), 35);
        let before = reads(&log);
        assert_eq!(
            before[..5],
            [
                Some(LogOffset::new(3, 0)),
                Some(LogOffset::new(3, 0)),
                Some(LogOffset::new(3, 0)),
                Some(LogOffset::new(5, 0)),
                Some(LogOffset::new(5, 0)),
            ]
        );
        log.write_committed().unwrap();
        assert_eq!(file_len(&d), 5 * 35);
        assert_eq!(reads(&log), before);
        assert_eq!(reads(&reopen(&d, 105)), before);
    }

    #[test]
    fn a_rollback_leaves_the_committed_tail_in_memory_and_the_file_as_it_was() {
        let (d, log) = log(1 << 20);
        log.append(LogOffset::new(5, 0), "kept", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        log.append(LogOffset::new(6, 0), "partial", false).unwrap();
        log.rollback().unwrap();
        assert_eq!(
            file_len(&d),
            0,
            "nothing was written: nothing cut, nothing grown"
        );
        log.append(LogOffset::new(6, 0), "replayed", true).unwrap();
        log.commit(LogOffset::new(6, 0)).unwrap();
        log.write_committed().unwrap();
        let items = |log: &ShapeLog| {
            log.read_after(LogOffset::SNAPSHOT_END)
                .unwrap()
                .items()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(items(&log), ["kept", "replayed"]);
        assert_eq!(items(&reopen(&d, 1 << 20)), ["kept", "replayed"]);
    }

    #[test]
    fn a_log_whose_tail_outgrows_the_write_buffer_writes_it_out_at_its_commit() {
        let (d, log) = log(1 << 20);
        let item = "x".repeat(1000);
        let mut tx = 1;
        while file_len(&d) == 0 {
            assert!(tx < 100, "never written out");
            log.append(LogOffset::new(tx, 0), &item, true).unwrap();
            log.commit(LogOffset::new(tx, 0)).unwrap();
            tx += 1;
        }
        let record = (RECORD_HEADER + 1000 + RECORD_TRAILER) as u64;
        assert_eq!(file_len(&d), (tx - 1) * record);
        assert!((tx - 1) * record >= WRITE_BUFFER as u64);
    }

    #[test]
    fn recovery_cuts_an_indexed_chunk_whose_records_never_reached_the_disk() {
        // Three 35-byte records per chunk: tx 4 starts the second chunk.
        let (d, log) = log(105);
        for tx in 1..=4 {
            commit_tx(&log, tx);
        }
        drop(log);
        // A machine crash kept the index entry of the second chunk but not its record.
        let path = d.path().join("shape").join(LOG_FILE);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3 * 35)
            .unwrap();
        let log = reopen(&d, 105);
        assert_eq!(log.latest_offset(), LogOffset::new(3, 0));
        // Postgres sends tx 4 again: it is written as before, at the same place.
        commit_tx(&log, 4);
        drop(log);
        let log = reopen(&d, 105);
        let read = log.read_after(LogOffset::new(3, 0)).unwrap();
        assert_eq!(read.last, Some(LogOffset::new(4, 0)));
        let index = fs::read(d.path().join("shape").join(INDEX_FILE)).unwrap();
        assert_eq!(
            index.len(),
            2 * INDEX_ENTRY,
            "one entry per chunk, none twice"
        );
    }

    #[test]
    fn a_finished_snapshot_has_an_empty_change_log_and_a_log_without_it_still_reopens() {
        let (d, log) = log(1 << 20);
        let files = |d: &tempfile::TempDir| {
            let mut names: Vec<String> = fs::read_dir(d.path().join("shape"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(&d), [LOG_FILE, META_FILE, "snapshot.0.jsonl"]);
        assert_eq!(
            fs::metadata(d.path().join("shape").join(LOG_FILE))
                .unwrap()
                .len(),
            0
        );
        // Its directory entry was synced with the metadata: no directory sync for the
        // first change.
        log.append(LogOffset::new(4, 0), "{}", true).unwrap();
        log.commit(LogOffset::new(4, 0)).unwrap();
        assert!(!log.new_files.load(Ordering::SeqCst));
        drop(log);
        // As an earlier volt left a shape without changes.
        fs::remove_file(d.path().join("shape").join(LOG_FILE)).unwrap();
        let log = reopen(&d, 1 << 20);
        let follower = ShapeLog::open_follower(d.path().join("shape"), 1 << 20).unwrap();
        follower.follow().unwrap();
        assert!(!follower.is_closed());
        log.append(LogOffset::new(5, 0), "{}", true).unwrap();
        log.commit(LogOffset::new(5, 0)).unwrap();
        // This commit created it: its entry needs the directory synced.
        assert!(log.new_files.load(Ordering::SeqCst));
        log.sync().unwrap();
        assert_eq!(files(&d), [LOG_FILE, META_FILE, "snapshot.0.jsonl"]);
        follower.follow().unwrap();
        assert_eq!(follower.latest_offset(), LogOffset::new(5, 0));
    }

    #[test]
    fn changes_committed_during_the_snapshot_are_durable_before_it_completes() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShapeLog::create(dir.path().join("shape"), 1 << 20).unwrap();
        log.mark_snapshot_started(serde_json::json!({"xmin": 1}))
            .unwrap();
        log.append(LogOffset::new(9, 0), "{}", true).unwrap();
        log.commit(LogOffset::new(9, 0)).unwrap();
        assert!(log.is_unsynced());
        log.finish_snapshot().unwrap();
        assert!(!log.is_unsynced());
    }

    /// Transaction `tx`: one 35-byte record (a 10-byte item), committed and written
    /// out (as the next flush round does).
    fn commit_tx(log: &ShapeLog, tx: u64) {
        log.append(LogOffset::new(tx, 0), "0123456789", true)
            .unwrap();
        log.commit(LogOffset::new(tx, 0)).unwrap();
        log.write_committed().unwrap();
    }

    /// Reads from every offset of a log of seven one-record transactions.
    fn reads(log: &ShapeLog) -> Vec<Option<LogOffset>> {
        (0..=7)
            .map(|tx| {
                let after = if tx == 0 {
                    LogOffset::SNAPSHOT_END
                } else {
                    LogOffset::new(tx, 0)
                };
                log.read_after(after).unwrap().last
            })
            .collect()
    }

    fn chunk(tx: u64, pos: u64) -> Chunk {
        Chunk {
            first: LogOffset::new(tx, 0),
            pos,
        }
    }

    #[test]
    fn the_index_is_created_by_the_second_chunk_and_names_every_chunk() {
        // Three 35-byte records per chunk.
        let (d, log) = log(105);
        let index = d.path().join("shape").join(INDEX_FILE);
        for tx in 1..=3 {
            commit_tx(&log, tx);
            log.sync().unwrap();
        }
        assert!(!index.exists(), "one chunk needs no index");
        commit_tx(&log, 4);
        assert!(
            log.new_files.load(Ordering::SeqCst),
            "the new index's directory entry must be synced"
        );
        log.sync().unwrap();
        for tx in 5..=7 {
            commit_tx(&log, tx);
        }
        let all = [chunk(1, 0), chunk(4, 105), chunk(7, 210)];
        assert_eq!(read_index(&index).unwrap(), all);
        drop(log);
        let reopened = reopen(&d, 105);
        let expected = reads(&reopened);
        assert_eq!(
            expected[0],
            Some(LogOffset::new(3, 0)),
            "a read stops at its chunk's end"
        );
        assert_eq!(expected[7], None);
        drop(reopened);
        // A crash lost the index: the log is scanned and the index made again.
        fs::remove_file(&index).unwrap();
        let reopened = reopen(&d, 105);
        assert_eq!(reads(&reopened), expected);
        assert_eq!(read_index(&index).unwrap(), all);
    }

    #[test]
    fn a_log_of_one_chunk_reopens_without_an_index_and_its_second_chunk_starts_one() {
        let (d, log) = log(105);
        let index = d.path().join("shape").join(INDEX_FILE);
        for tx in 1..=2 {
            commit_tx(&log, tx);
        }
        drop(log);
        let log = reopen(&d, 105);
        assert!(!index.exists());
        for tx in 3..=4 {
            commit_tx(&log, tx);
        }
        assert_eq!(read_index(&index).unwrap(), [chunk(1, 0), chunk(4, 105)]);
        assert!(log.new_files.load(Ordering::SeqCst));
    }

    #[test]
    fn a_promoted_follower_indexes_its_next_chunk_at_its_commit() {
        let (d, writer) = log(105);
        let index = d.path().join("shape").join(INDEX_FILE);
        // The follower starts while the log is empty; the writer then starts the index.
        let follower = ShapeLog::open_follower(d.path().join("shape"), 105).unwrap();
        for tx in 1..=4 {
            commit_tx(&writer, tx);
        }
        drop(writer);
        follower.promote().unwrap();
        for tx in 5..=7 {
            commit_tx(&follower, tx);
        }
        assert_eq!(
            read_index(&index).unwrap(),
            [chunk(1, 0), chunk(4, 105), chunk(7, 210)]
        );
        assert!(
            !follower.new_files.load(Ordering::SeqCst),
            "the index was there: no directory sync"
        );
    }
}
