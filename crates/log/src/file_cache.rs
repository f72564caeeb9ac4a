//! The process-wide bound on open segment files.
//!
//! A segment holds no file handle for its own sake. Its `.log` file is opened when it is first
//! appended to or read and kept here, among the recently used ones; past a cap
//! ([`open_files_max`], set from the process's open-files limit by the broker) the least recently
//! used are closed. So twenty thousand idle partitions cost no handle, while a busy partition keeps
//! its active segment open: an append or a read finds the open file here (a lookup under the
//! segment's own lock, no `open(2)`).
//!
//! Closing only drops the cache's reference: a [`crate::FileSlice`] being sent with `sendfile(2)`
//! keeps its own, so eviction never disturbs a reader. The offset and time indexes are kept in
//! memory and written whole when a segment is sealed or the log closed (see `segment`), so they
//! hold no handle either.
//!
//! Durability: a file closed by eviction may hold data not yet fsynced. The fsync that makes it
//! durable (the flush job, [`crate::Log::flush`]) runs at the same moment as before, through the
//! cached handle or a fresh one. Linux reports a writeback error to the first `fsync` of a handle
//! opened after it (unless an earlier `fsync` already saw it), so a reopened handle does not hide an
//! error. A flush that fails stops the broker from advancing the recovery point, as before.
//!
//! Lock order: a segment's slot, then the cache's table. Eviction, which holds the table, only
//! *tries* other slots (a busy one is skipped), so it never waits on a slot while holding the table.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};

use crate::error::{IoContext, Result};

/// Segment files kept open at once by default, before the broker sizes the cache from its
/// open-files limit: Linux's usual soft limit is 1024, and sockets need their share of it.
pub const OPEN_FILES_MAX_DEFAULT: usize = 512;

/// When the cache is over its cap it closes files down to this fraction below it (one eighth), so
/// that an eviction pass, which sorts the open files by last use, runs once per many opens.
const EVICTION_SLACK_DIVISOR: usize = 8;

/// The process-wide cache every segment uses.
pub(crate) static GLOBAL: FileCache = FileCache::new(OPEN_FILES_MAX_DEFAULT);

/// Sets how many segment files this process keeps open at once (at least 1). Files over the cap
/// are closed, least recently used first, at the next open.
pub fn set_open_files_max(max: usize) {
    GLOBAL.max.store(max.max(1), Ordering::Relaxed);
}

/// How many segment files this process keeps open at most.
pub fn open_files_max() -> usize {
    GLOBAL.max.load(Ordering::Relaxed)
}

/// How many segment files the cache holds open now (readers holding a [`crate::FileSlice`] may keep
/// a few more open until they finish).
pub fn open_files() -> usize {
    GLOBAL.open_count()
}

/// A bounded set of open segment files, least recently used closed first.
#[derive(Debug)]
pub(crate) struct FileCache {
    max: AtomicUsize,
    /// Files holding an open handle, by id.
    open: Mutex<BTreeMap<u64, Weak<SegmentFile>>>,
    /// A logical clock: each use of a file takes the next tick.
    clock: AtomicU64,
}

impl FileCache {
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            open: Mutex::new(BTreeMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Weak<SegmentFile>>> {
        // The table is a plain map whose every update is whole: a panic elsewhere leaves it usable.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files open now.
    pub(crate) fn open_count(&self) -> usize {
        self.table()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Records that `file` holds a handle (called with its slot locked) and closes the least
    /// recently used others when over the cap. Returns the evicted files and their handles, to be
    /// dropped (closed) by the caller after every lock is released.
    fn admit(&self, file: &Arc<SegmentFile>) -> Vec<Evicted> {
        let mut table = self.table();
        table.insert(file.id, Arc::downgrade(file));
        let max = self.max.load(Ordering::Relaxed);
        if table.len() <= max {
            return Vec::new();
        }
        table.retain(|_, w| w.strong_count() > 0);
        let target = max - max / EVICTION_SLACK_DIVISOR;
        let mut by_age: Vec<(u64, u64)> = table
            .iter()
            .filter(|(id, _)| **id != file.id)
            .filter_map(|(id, w)| {
                w.upgrade()
                    .map(|f| (f.last_used.load(Ordering::Relaxed), *id))
            })
            .collect();
        by_age.sort_unstable();
        let mut evicted = Vec::new();
        for (_, id) in by_age {
            if table.len() <= target {
                break;
            }
            let Some(victim) = table.get(&id).and_then(Weak::upgrade) else {
                table.remove(&id);
                continue;
            };
            let handle = match victim.slot.try_lock() {
                Ok(mut slot) => slot.file.take(),
                Err(TryLockError::Poisoned(p)) => p.into_inner().file.take(),
                // In use this very moment: it is not the least recently used any more.
                Err(TryLockError::WouldBlock) => continue,
            };
            table.remove(&id);
            evicted.push((victim, handle));
        }
        evicted
    }

    fn forget(&self, id: u64) {
        self.table().remove(&id);
    }
}

/// A file closed by eviction, with the handle the cache held (closed when the last reader drops it).
type Evicted = (Arc<SegmentFile>, Option<Arc<File>>);

/// Ids of [`SegmentFile`]s, unique in the process: a segment deleted and created again at the same
/// path (a topic deleted and created again) never finds the old one's handle.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
struct Slot {
    file: Option<Arc<File>>,
    /// The segment was closed or deleted: the file is not opened again.
    retired: bool,
}

/// One segment's `.log` file, open while it is in the cache.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    id: u64,
    path: PathBuf,
    cache: &'static FileCache,
    last_used: AtomicU64,
    slot: Mutex<Slot>,
}

impl SegmentFile {
    /// A closed handle on the existing file at `path`, opened at its first use.
    pub(crate) fn new(path: PathBuf, cache: &'static FileCache) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path,
            cache,
            last_used: AtomicU64::new(0),
            slot: Mutex::new(Slot::default()),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // A slot is replaced whole: a panic elsewhere leaves it usable.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open file, opened (read-write) and admitted to the cache when it is not open.
    pub(crate) fn get(self: &Arc<Self>) -> Result<Arc<File>> {
        let tick = self.cache.clock.fetch_add(1, Ordering::Relaxed);
        self.last_used.store(tick, Ordering::Relaxed);
        {
            let slot = self.slot();
            if let Some(file) = &slot.file {
                return Ok(Arc::clone(file));
            }
            if slot.retired {
                return Err(retired()).at(&self.path);
            }
        }
        // Opened without holding the slot: another thread may open it too, and one copy wins.
        let opened = Arc::new(open_existing(&self.path)?);
        let evicted;
        let file = {
            let mut slot = self.slot();
            if slot.retired {
                return Err(retired()).at(&self.path);
            }
            if let Some(file) = &slot.file {
                return Ok(Arc::clone(file));
            }
            slot.file = Some(Arc::clone(&opened));
            evicted = self.cache.admit(self);
            opened
        };
        drop(evicted);
        Ok(file)
    }

    /// Forces the file's data to stable storage, through the open handle or a fresh one. A file
    /// whose segment was closed (a close flushes first) or deleted has nothing left to flush.
    pub(crate) fn sync_data(&self) -> Result<()> {
        let held = {
            let slot = self.slot();
            if slot.retired {
                return Ok(());
            }
            slot.file.clone()
        };
        match held {
            Some(file) => file.sync_data().at(&self.path),
            None => sync_path(&self.path),
        }
    }

    /// Closes the handle (it is opened again at the next use).
    pub(crate) fn release(&self) {
        self.close(false);
    }

    /// Closes the handle for good: the segment was closed or deleted.
    pub(crate) fn retire(&self) {
        self.close(true);
    }

    fn close(&self, retire: bool) {
        let file = {
            let mut slot = self.slot();
            slot.retired |= retire;
            let file = slot.file.take();
            if file.is_some() {
                self.cache.forget(self.id);
            }
            file
        };
        drop(file);
    }

    /// Whether the cache holds the file open (for tests).
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.slot().file.is_some()
    }
}

fn retired() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the segment was closed or deleted",
    )
}

/// Opens an existing segment file for reading and appending (never creating it: a missing file is
/// an error, not an empty segment).
fn open_existing(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)
}

/// Forces a file's data to stable storage through a fresh handle; a missing file has none.
pub(crate) fn sync_path(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(file) => file.sync_data().at(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cache(max: usize) -> &'static FileCache {
        Box::leak(Box::new(FileCache::new(max)))
    }

    fn files(dir: &Path, n: usize, cache: &'static FileCache) -> Vec<Arc<SegmentFile>> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.log"));
                std::fs::write(&path, format!("file {i}")).unwrap();
                SegmentFile::new(path, cache)
            })
            .collect()
    }

    #[test]
    fn files_open_at_first_use_and_stay_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(4);
        let f = &files(dir.path(), 1, cache)[0];
        assert!(!f.is_open());
        let first = f.get().unwrap();
        assert!(f.is_open());
        assert!(Arc::ptr_eq(&first, &f.get().unwrap()), "no second open");
        assert_eq!(cache.open_count(), 1);
    }

    #[test]
    fn the_least_recently_used_are_closed_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(8);
        let all = files(dir.path(), 20, cache);
        for (i, f) in all.iter().enumerate() {
            f.get().unwrap();
            // File 0 is used again before every open: it is never the least recently used.
            all[0].get().unwrap();
            assert!(cache.open_count() <= 8, "after {i} opens");
        }
        assert!(all[0].is_open());
        assert!(all[19].is_open(), "the last opened stays");
        assert!(!all[1].is_open(), "an old one was closed");
        // A closed file opens again and reads the same bytes.
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &*all[1].get().unwrap(), &mut text).unwrap();
        assert_eq!(text, "file 1");
    }

    #[test]
    fn eviction_does_not_close_a_file_a_reader_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(1);
        let all = files(dir.path(), 2, cache);
        let held = all[0].get().unwrap();
        all[1].get().unwrap();
        assert!(!all[0].is_open(), "evicted from the cache");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &*held, &mut text).unwrap();
        assert_eq!(text, "file 0", "the reader's handle still reads");
    }

    #[test]
    fn a_retired_file_is_not_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(4);
        let f = &files(dir.path(), 1, cache)[0];
        f.get().unwrap();
        f.retire();
        assert_eq!(cache.open_count(), 0);
        assert!(f.get().is_err());
        f.sync_data().unwrap();
        let g = &files(dir.path(), 1, cache)[0];
        g.get().unwrap();
        g.release();
        assert_eq!(cache.open_count(), 0);
        assert!(g.get().is_ok(), "a released file opens again");
    }

    #[test]
    fn sync_works_open_or_closed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(4);
        let f = &files(dir.path(), 1, cache)[0];
        f.sync_data().unwrap();
        (&*f.get().unwrap()).write_all(b"more").unwrap();
        f.sync_data().unwrap();
        std::fs::remove_file(f.path()).unwrap();
        f.release();
        f.sync_data().unwrap();
        assert!(f.get().is_err(), "a missing file is not created again");
    }
}
