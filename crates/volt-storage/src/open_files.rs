//! Change logs kept open for appending, a bounded number of them, least recently
//! written closed first.
//!
//! A commit used to open its shape's change log, write and close it: with many shapes
//! each hit now and then (10,000 `owner = k` shapes, every change for another one) the
//! open and close cost more than the write (a path walk and a file table entry each
//! time, 19% of volt's CPU). Keeping every log open is not an option either: 50,000
//! idle shapes would hold 50,000 descriptors, and HTTP clients need them too. So the
//! logs written most recently stay open, up to a budget taken from the process's
//! descriptor limit.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A bounded least-recently-used set of open files, by key.
pub struct OpenFiles {
    capacity: AtomicUsize,
    lru: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// key -> (file, stamp of its last use).
    files: HashMap<u64, (Arc<File>, u64)>,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, key: u64) -> Option<Arc<File>> {
        self.clock += 1;
        let (file, stamp) = self.files.get_mut(&key)?;
        *stamp = self.clock;
        Some(file.clone())
    }

    fn insert(&mut self, key: u64, file: Arc<File>) {
        self.clock += 1;
        self.files.insert(key, (file, self.clock));
    }

    fn remove(&mut self, key: u64) -> Option<Arc<File>> {
        self.files.remove(&key).map(|(file, _)| file)
    }

    /// Close the least recently used until at most `keep` are open, and an eighth more
    /// when over `keep`: a full set then pays one pass over the stamps per eighth of it
    /// that it replaces, not one per file (as an ordered map of stamps, 2% of volt's CPU
    /// with 10,000 shapes written at random, would). The files are returned to be
    /// dropped (closed) outside the lock.
    fn shrink_to(&mut self, keep: usize) -> Vec<Arc<File>> {
        if self.files.len() <= keep {
            return Vec::new();
        }
        let keep = keep - keep / 8;
        let mut stamps: Vec<u64> = self.files.values().map(|(_, s)| *s).collect();
        let drop_n = stamps.len() - keep;
        // The stamp of the newest file to close: stamps are unique.
        let (_, newest_closed, _) = stamps.select_nth_unstable(drop_n - 1);
        let newest_closed = *newest_closed;
        let mut closed = Vec::with_capacity(drop_n);
        self.files.retain(|_, (file, stamp)| {
            if *stamp <= newest_closed {
                closed.push(file.clone());
                false
            } else {
                true
            }
        });
        closed
    }
}

impl OpenFiles {
    pub fn new(capacity: usize) -> OpenFiles {
        OpenFiles {
            capacity: AtomicUsize::new(capacity),
            lru: Mutex::new(Lru::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Keep at most `capacity` files open from now on (0: none).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        let closed = self.lock().shrink_to(capacity);
        drop(closed);
    }

    pub fn len(&self) -> usize {
        self.lock().files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a file is kept open under `key`.
    pub fn is_open(&self, key: u64) -> bool {
        self.lock().files.contains_key(&key)
    }

    /// The file open under `key`, or `open`ed now and kept (closing the least recently
    /// used beyond the capacity). Callers must not open the same key concurrently: a
    /// log opens its file under its writer's lock. When the process is out of
    /// descriptors, more than half of those kept are closed and the open is tried once
    /// more.
    pub fn get_or_open(
        &self,
        key: u64,
        open: impl Fn() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        if let Some(file) = self.lock().touch(key) {
            return Ok(file);
        }
        let file = match open() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let closed = {
                    let mut lru = self.lock();
                    let keep = lru.files.len() / 2;
                    lru.shrink_to(keep)
                };
                if closed.is_empty() {
                    return Err(e);
                }
                tracing::warn!(
                    closed = closed.len(),
                    "out of file descriptors: closing change logs kept open"
                );
                drop(closed);
                open()?
            }
            other => other?,
        };
        let file = Arc::new(file);
        let capacity = self.capacity();
        if capacity > 0 {
            let closed = {
                let mut lru = self.lock();
                lru.insert(key, file.clone());
                lru.shrink_to(capacity)
            };
            drop(closed);
        }
        Ok(file)
    }

    /// Close the file kept under `key`, if any (its log was fenced, closed or dropped).
    pub fn forget(&self, key: u64) {
        let file = self.lock().remove(key);
        drop(file);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The map is consistent between statements: a panic elsewhere leaves it usable.
        self.lru
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The change logs of this process. Its capacity starts at `default_capacity()`; the
/// daemon sets it from its configuration.
pub fn change_logs() -> &'static OpenFiles {
    static FILES: OnceLock<OpenFiles> = OnceLock::new();
    FILES.get_or_init(|| OpenFiles::new(default_capacity()))
}

/// Half of the process's descriptor limit, keeping at least 1,024 for HTTP connections,
/// Postgres connections, snapshot files and ShapeDb (but an eighth of a lower limit);
/// at most 16,384. (A log that cannot be opened for want of descriptors closes most of
/// those kept first; nothing else does.)
pub fn default_capacity() -> usize {
    capacity_for(descriptor_limit())
}

/// `default_capacity` under a descriptor limit of `limit`.
pub fn capacity_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    (limit / 2)
        .min(limit.saturating_sub(1024))
        .max(limit / 8)
        .min(16_384)
}

/// The soft `RLIMIT_NOFILE` (256 when it cannot be read).
pub fn descriptor_limit() -> u64 {
    nofile().map_or(256, |lim| lim.rlim_cur)
}

fn nofile() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raise the soft descriptor limit to the hard one, as servers do: the soft default
/// (often 1,024) is too low for thousands of live clients. Returns the limit now in
/// force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let lim = nofile()?;
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raised.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn temp_file(dir: &tempfile::TempDir, name: &str) -> impl Fn() -> io::Result<File> {
        let path = dir.path().join(name);
        move || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
        }
    }

    /// Keys `0..n`, each with its own file.
    fn keep(files: &OpenFiles, dir: &tempfile::TempDir, n: u64) {
        for k in 0..n {
            files
                .get_or_open(k, temp_file(dir, &format!("f{k}")))
                .unwrap();
        }
    }

    #[test]
    fn a_kept_file_is_reused_without_opening_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(4);
        let opens = AtomicUsize::new(0);
        let open = temp_file(&dir, "a");
        let counting = || {
            opens.fetch_add(1, Ordering::Relaxed);
            open()
        };
        let first = files.get_or_open(1, counting).unwrap();
        let again = files.get_or_open(1, counting).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(opens.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn beyond_the_capacity_the_least_recently_used_file_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(2);
        let a = files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        files.get_or_open(2, temp_file(&dir, "b")).unwrap();
        // 1 is used again, so 2 is now the least recently used.
        files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        files.get_or_open(3, temp_file(&dir, "c")).unwrap();
        assert_eq!(files.len(), 2);
        let reopened = files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        assert!(Arc::ptr_eq(&a, &reopened), "1 was kept");
        let opens = AtomicUsize::new(0);
        files
            .get_or_open(2, || {
                opens.fetch_add(1, Ordering::Relaxed);
                temp_file(&dir, "b")()
            })
            .unwrap();
        assert_eq!(
            opens.load(Ordering::Relaxed),
            1,
            "2 was closed and is opened again"
        );
        assert_eq!(files.len(), 2);
    }

    #[test]
    fn a_full_set_closes_its_oldest_eighth_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(16);
        keep(&files, &dir, 16);
        files.get_or_open(16, temp_file(&dir, "f16")).unwrap();
        assert_eq!(files.len(), 14);
        let lru = files.lock();
        let mut kept: Vec<u64> = lru.files.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            (3..=16).collect::<Vec<_>>(),
            "the three oldest were closed"
        );
    }

    #[test]
    fn the_default_capacity_leaves_room_for_connections() {
        assert_eq!(capacity_for(20_000), 10_000);
        assert_eq!(capacity_for(4_096), 2_048);
        assert_eq!(capacity_for(1_500), 476);
        assert_eq!(capacity_for(1_024), 128);
        assert_eq!(capacity_for(1 << 20), 16_384);
    }

    #[test]
    fn with_no_capacity_nothing_is_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(3);
        files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        files.get_or_open(2, temp_file(&dir, "b")).unwrap();
        files.set_capacity(0);
        assert!(files.is_empty());
        files.get_or_open(3, temp_file(&dir, "c")).unwrap();
        assert!(files.is_empty());
    }

    #[test]
    fn a_forgotten_file_is_closed_and_opened_again_on_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(3);
        let a = files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        files.forget(1);
        assert!(files.is_empty());
        let again = files.get_or_open(1, temp_file(&dir, "a")).unwrap();
        assert!(!Arc::ptr_eq(&a, &again));
    }

    #[test]
    fn out_of_descriptors_closes_half_of_the_kept_files_and_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8);
        keep(&files, &dir, 4);
        let tries = AtomicUsize::new(0);
        let open = temp_file(&dir, "new");
        files
            .get_or_open(9, || {
                if tries.fetch_add(1, Ordering::Relaxed) == 0 {
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    open()
                }
            })
            .unwrap();
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        // Two of the four were closed, then the new one kept.
        assert_eq!(files.len(), 3);
    }
}
