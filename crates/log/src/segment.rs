//! One segment: a file of whole RecordBatch v2 batches, its sparse offset and time indexes, and the
//! scan that checks or rebuilds them.
//!
//! Files: `<base offset, 20 digits>.log`, `.index` and `.timeindex`, as Kafka names them.
//!
//! Handles: the `.log` file is opened at its first append or read and kept in the process-wide
//! [`crate::file_cache`], which closes the least recently used files beyond its cap; an idle segment
//! holds no handle. The indexes live in memory and are written whole, each through a handle opened
//! for that write only, when the segment is sealed (rolled), rebuilt at open, or the log closed.
//! The active segment's index files on disk are therefore stale until then; nothing trusts them:
//! after a crash the active segment (whose end is past any recovery point) is always scanned and its
//! indexes rebuilt.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader, HEADER_BYTES, LOG_OVERHEAD};
use crate::error::{Error, IoContext, Result};
use crate::file_cache::{self, SegmentFile};
use crate::index::{self, OffsetEntry, TimeEntry, decode_offset_index, decode_time_index};
use crate::policy::SegmentStat;

/// How a segment is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Trust the batches; load the indexes, rebuilding them when missing or damaged.
    Trusted,
    /// Check every batch (CRC, offsets); truncate at the first bad one and rebuild the indexes.
    Recover,
}

/// A segment file and its indexes.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    /// The `.log` file, open only while it is in the file cache.
    file: Arc<SegmentFile>,
    pub(crate) size_bytes: u64,
    pub(crate) next_offset: i64,
    offset_index: Vec<OffsetEntry>,
    time_index: Vec<TimeEntry>,
    /// What the index files hold (`None`: not known), so that a close with nothing new writes
    /// nothing.
    index_files: Option<IndexFiles>,
    bytes_since_index: u64,
    pub(crate) max_timestamp_ms: i64,
    /// Offset of the record batch holding `max_timestamp_ms`.
    pub(crate) offset_of_max_timestamp: i64,
    pub(crate) created_ms: i64,
    index_interval_bytes: u64,
}

/// What a segment's index files on disk hold: the first `offsets` and `times` entries, forced to
/// stable storage when `synced`. Entries are only ever added in memory (a log cut by recovery
/// rebuilds its indexes at open), so the counts tell whether the files are current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexFiles {
    offsets: usize,
    times: usize,
    synced: bool,
}

/// The path of a segment file with the given extension.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, extension: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{extension}"))
}

/// A byte range of a segment, to be read outside the log's lock.
#[derive(Debug, Clone)]
pub struct FileSlice {
    file: Arc<File>,
    path: PathBuf,
    position: u64,
    len: usize,
}

impl FileSlice {
    /// Reads the range (from the page cache when it is warm).
    pub fn read(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len];
        self.file
            .read_exact_at(&mut buf, self.position)
            .at(&self.path)?;
        Ok(buf)
    }

    /// The segment file, for zero-copy sends (`sendfile(2)`) of the range.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The segment file's path, for errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the range starts in the file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes in the range.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Segment {
    /// Creates an empty segment.
    /// Creates an empty segment. Its file stays closed until the first append: creating ten
    /// thousand partitions opens and closes ten thousand files, and holds none.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<Self> {
        let log_path = segment_path(dir, base_offset, "log");
        drop(open_rw(&log_path, true)?);
        let mut segment = Self::closed(dir, base_offset, index_interval_bytes, now_ms);
        // No index file is the empty index (a missing file loads as one); none is left behind by
        // an earlier segment at this offset.
        for path in [&segment.index_path, &segment.time_index_path] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(path),
                _ => {}
            }
        }
        segment.index_files = Some(IndexFiles {
            offsets: 0,
            times: 0,
            synced: true,
        });
        Ok(segment)
    }

    fn closed(dir: &Path, base_offset: i64, index_interval_bytes: u64, now_ms: i64) -> Self {
        let log_path = segment_path(dir, base_offset, "log");
        Self {
            base_offset,
            file: SegmentFile::new(log_path.clone(), &file_cache::GLOBAL),
            log_path,
            index_path: segment_path(dir, base_offset, "index"),
            time_index_path: segment_path(dir, base_offset, "timeindex"),
            size_bytes: 0,
            next_offset: base_offset,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            index_files: None,
            bytes_since_index: 0,
            max_timestamp_ms: -1,
            offset_of_max_timestamp: -1,
            created_ms: now_ms,
            index_interval_bytes,
        }
    }

    /// Opens an existing segment. In [`OpenMode::Recover`] a torn or corrupt tail is cut off at the
    /// last whole valid batch; the number of bytes cut is returned beside the segment. The file is
    /// scanned through a handle of its own, closed before this returns.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        mode: OpenMode,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<(Self, u64)> {
        let mut segment = Self::closed(dir, base_offset, index_interval_bytes, now_ms);
        let log_path = segment.log_path.clone();
        let file = open_rw(&log_path, false)?;
        let file_bytes = file.metadata().at(&log_path)?.len();
        let loaded = mode == OpenMode::Trusted && segment.load_indexes(file_bytes)?;
        let scan_from = segment
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        if !loaded {
            segment.offset_index.clear();
            segment.time_index.clear();
        }
        // Scan from the last indexed batch (or the start) to the end of the file.
        let valid_end = segment.scan_tail(
            &file,
            scan_from,
            file_bytes,
            mode == OpenMode::Recover,
            !loaded,
        )?;
        let cut = file_bytes - valid_end;
        if cut > 0 {
            file.set_len(valid_end).at(&log_path)?;
        }
        if !loaded {
            segment.write_indexes(false)?;
        }
        Ok((segment, cut))
    }

    /// Loads the index files; `false` when either is missing or damaged.
    fn load_indexes(&mut self, file_bytes: u64) -> Result<bool> {
        let offsets = read_file(&self.index_path)?;
        let times = read_file(&self.time_index_path)?;
        let Some(offset_index) = decode_offset_index(&offsets, file_bytes) else {
            return Ok(false);
        };
        let max_relative = offset_index.last().map_or(0, |e| e.relative_offset);
        let Some(time_index) = decode_time_index(&times, max_relative) else {
            return Ok(false);
        };
        if let Some(last) = time_index.last() {
            self.max_timestamp_ms = last.timestamp_ms;
            self.offset_of_max_timestamp = self.base_offset + i64::from(last.relative_offset);
        }
        // Trusted only after a clean close or below the recovery point: both forced them to disk.
        self.index_files = Some(IndexFiles {
            offsets: offset_index.len(),
            times: time_index.len(),
            synced: true,
        });
        self.offset_index = offset_index;
        self.time_index = time_index;
        Ok(true)
    }

    /// Walks the batches in `[from, end)`, updating the segment's state, and returns where the last
    /// whole (and, when `validate`, valid) batch ends.
    fn scan_tail(
        &mut self,
        file: &File,
        from: u64,
        end: u64,
        validate: bool,
        index: bool,
    ) -> Result<u64> {
        let mut position = from;
        let mut expected_offset = None;
        while let Some(header) = self.header_at(file, position, end, validate)? {
            if header.base_offset < self.base_offset
                || expected_offset.is_some_and(|o| header.base_offset < o)
            {
                tracing::warn!(path = %self.log_path.display(), position, "batch offsets go backwards; cutting here");
                break;
            }
            expected_offset = Some(header.next_offset());
            self.size_bytes = position;
            self.note_batch(position, &header, index)?;
            position += header.total_bytes() as u64;
        }
        self.size_bytes = position;
        Ok(position)
    }

    /// The header of the whole batch at `position`, or `None` at the end, at a torn batch or, when
    /// `validate`, at an invalid one.
    fn header_at(
        &self,
        file: &File,
        position: u64,
        end: u64,
        validate: bool,
    ) -> Result<Option<BatchHeader>> {
        if end.saturating_sub(position) < HEADER_BYTES as u64 {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut head, position).at(&self.log_path)?;
        let header = BatchHeader::parse(&head)?;
        let total = header.total_bytes() as u64;
        if header.magic != batch::MAGIC_V2 || total < HEADER_BYTES as u64 || position + total > end
        {
            return Ok(None);
        }
        if validate {
            let mut whole = vec![0u8; total as usize];
            file.read_exact_at(&mut whole, position)
                .at(&self.log_path)?;
            if let Err(e) = batch::validate_batch(&whole) {
                tracing::warn!(path = %self.log_path.display(), position, error = %e, "invalid batch; cutting here");
                return Ok(None);
            }
        }
        Ok(Some(header))
    }

    /// Updates offsets, timestamps and (when `index`) the in-memory indexes for a batch at `position`.
    fn note_batch(&mut self, position: u64, header: &BatchHeader, index: bool) -> Result<()> {
        self.next_offset = header.next_offset();
        if header.max_timestamp > self.max_timestamp_ms {
            self.max_timestamp_ms = header.max_timestamp;
            self.offset_of_max_timestamp = header.base_offset;
        }
        self.bytes_since_index += header.total_bytes() as u64;
        if index && self.bytes_since_index >= self.index_interval_bytes {
            self.bytes_since_index = 0;
            let relative_offset = (header.base_offset - self.base_offset) as u32;
            self.offset_index.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            if self
                .time_index
                .last()
                .is_none_or(|t| self.max_timestamp_ms > t.timestamp_ms)
            {
                self.time_index.push(TimeEntry {
                    timestamp_ms: self.max_timestamp_ms,
                    relative_offset,
                });
            }
        }
        Ok(())
    }

    /// Writes both index files whole from memory (and, when `sync`, forces them to stable storage
    /// through the handle that wrote them), unless they already hold every entry. Called when the
    /// segment is sealed, rebuilt at open, or its log closed.
    pub(crate) fn write_indexes(&mut self, sync: bool) -> Result<()> {
        let (offsets_len, times_len) = (self.offset_index.len(), self.time_index.len());
        if self.index_files.is_some_and(|f| {
            f.offsets == offsets_len && f.times == times_len && (f.synced || !sync)
        }) {
            return Ok(());
        }
        let offsets: Vec<u8> = self
            .offset_index
            .iter()
            .copied()
            .flat_map(index::encode_offset_entry)
            .collect();
        let times: Vec<u8> = self
            .time_index
            .iter()
            .copied()
            .flat_map(index::encode_time_entry)
            .collect();
        self.index_files = None;
        write_file(&self.index_path, &offsets, sync)?;
        write_file(&self.time_index_path, &times, sync)?;
        self.index_files = Some(IndexFiles {
            offsets: offsets_len,
            times: times_len,
            synced: sync,
        });
        Ok(())
    }

    /// Appends one batch that already carries its offsets. The bytes reach the page cache before
    /// this returns, so they survive a crash of the process.
    pub(crate) fn append(
        &mut self,
        head: &[u8; HEADER_BYTES],
        body: &[u8],
        header: &BatchHeader,
    ) -> Result<()> {
        debug_assert_eq!(HEADER_BYTES + body.len(), header.total_bytes());
        let position = self.size_bytes;
        // The cached handle: `open(2)` only at the first append or after an eviction.
        let file = self.file.get()?;
        file.write_all_at(head, position).at(&self.log_path)?;
        file.write_all_at(body, position + HEADER_BYTES as u64)
            .at(&self.log_path)?;
        self.size_bytes += (HEADER_BYTES + body.len()) as u64;
        // Index entries go to memory only; see `write_indexes`.
        self.note_batch(position, header, true)
    }

    /// Position of the batch holding `offset` (at or after `self.next_offset` is not here: the
    /// caller checks first), read through `file`.
    fn position_of(&self, file: &File, offset: i64) -> Result<Option<u64>> {
        debug_assert!(offset < self.next_offset);
        let relative =
            (offset.max(self.base_offset) - self.base_offset).min(i64::from(u32::MAX)) as u32;
        let mut position =
            index::floor_offset(&self.offset_index, relative).map_or(0, |e| u64::from(e.position));
        while let Some(header) = self.header_at(file, position, self.size_bytes, false)? {
            if header.last_offset() >= offset {
                return Ok(Some(position));
            }
            position += header.total_bytes() as u64;
        }
        Ok(None)
    }

    /// A slice starting at the batch holding `offset`, of at most `max_bytes`, but always holding the
    /// whole first batch (KIP-74). `None` when the offset is past this segment.
    /// Batches from `upto` on are left out (`upto` is a batch boundary: a high watermark).
    pub(crate) fn slice_from(
        &self,
        offset: i64,
        max_bytes: usize,
        upto: i64,
    ) -> Result<Option<FileSlice>> {
        if offset >= self.next_offset || offset >= upto {
            // Past the end: a long-polling fetch at the log end opens nothing.
            return Ok(None);
        }
        let file = self.file.get()?;
        let Some(position) = self.position_of(&file, offset)? else {
            return Ok(None);
        };
        let mut prefix = [0u8; LOG_OVERHEAD];
        file.read_exact_at(&mut prefix, position)
            .at(&self.log_path)?;
        let first_batch = LOG_OVERHEAD + batch::peek_offset_and_size(&prefix).1.max(0) as usize;
        let end = if upto < self.next_offset {
            self.position_of(&file, upto)?.unwrap_or(self.size_bytes)
        } else {
            self.size_bytes
        };
        let available = end.saturating_sub(position) as usize;
        let len = max_bytes.max(first_batch).min(available);
        Ok(Some(FileSlice {
            file,
            path: self.log_path.clone(),
            position,
            len,
        }))
    }

    /// Cuts the segment so that it ends before the batch holding `offset` (a replica truncating
    /// what its leader does not have). The kept batches are scanned again to rebuild the indexes.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> Result<()> {
        if offset >= self.next_offset {
            return Ok(());
        }
        let file = self.file.get()?;
        let cut = if offset <= self.base_offset {
            0
        } else {
            self.position_of(&file, offset)?.unwrap_or(self.size_bytes)
        };
        file.set_len(cut).at(&self.log_path)?;
        self.size_bytes = 0;
        self.next_offset = self.base_offset;
        self.offset_index.clear();
        self.time_index.clear();
        self.bytes_since_index = 0;
        self.max_timestamp_ms = -1;
        self.offset_of_max_timestamp = -1;
        self.index_files = None;
        self.scan_tail(&file, 0, cut, false, true)?;
        file.sync_all().at(&self.log_path)?;
        self.write_indexes(true)
    }

    /// The whole segment, opened only when it is read.
    pub(crate) fn content(&self) -> SegmentContent {
        SegmentContent {
            file: Arc::clone(&self.file),
            len: self.size_bytes as usize,
        }
    }

    /// The first record at or after `timestamp_ms` in this segment: `(offset, timestamp)`.
    pub(crate) fn find_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        if self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let start_relative = index::scan_start_for_timestamp(&self.time_index, timestamp_ms);
        let start = self.base_offset + i64::from(start_relative);
        if start >= self.next_offset {
            return Ok(None);
        }
        let file = self.file.get()?;
        let Some(mut position) = self.position_of(&file, start)? else {
            return Ok(None);
        };
        while let Some(header) = self.header_at(&file, position, self.size_bytes, false)? {
            if header.max_timestamp >= timestamp_ms {
                let mut whole = vec![0u8; header.total_bytes()];
                file.read_exact_at(&mut whole, position)
                    .at(&self.log_path)?;
                return Ok(Some(self.first_record_at_or_after(
                    &whole,
                    &header,
                    timestamp_ms,
                )?));
            }
            position += header.total_bytes() as u64;
        }
        Ok(None)
    }

    fn first_record_at_or_after(
        &self,
        whole: &[u8],
        header: &BatchHeader,
        timestamp_ms: i64,
    ) -> Result<(i64, i64)> {
        if header.attributes & batch::ATTR_LOG_APPEND_TIME != 0 {
            return Ok((header.base_offset, header.max_timestamp));
        }
        let corrupt = |e: crate::record::RecordError| Error::Corrupt {
            path: self.log_path.clone(),
            reason: format!(
                "batch at offset {} does not decode: {e}",
                header.base_offset
            ),
        };
        // The log's own bounded decompression and record parser, as on produce.
        let mut decompressed = Vec::new();
        let body = if header.compression() == crate::record::codec::NONE {
            &whole[batch::HEADER_BYTES..header.total_bytes()]
        } else {
            crate::record::decompress_into(
                header.compression(),
                &whole[batch::HEADER_BYTES..header.total_bytes()],
                &mut decompressed,
                crate::record::DECOMPRESSED_BATCH_BYTES_MAX,
            )
            .map_err(corrupt)?;
            &decompressed[..]
        };
        for record in crate::record::records(body, header.record_count) {
            let record = record.map_err(corrupt)?;
            let timestamp = header.base_timestamp.saturating_add(record.timestamp_delta);
            if timestamp >= timestamp_ms {
                return Ok((
                    header.base_offset + i64::from(record.offset_delta),
                    timestamp,
                ));
            }
        }
        Ok((header.base_offset, header.max_timestamp))
    }

    /// Every batch header from `offset` on, in order (used to rebuild producer state).
    pub(crate) fn headers_from(&self, offset: i64) -> Result<Vec<BatchHeader>> {
        if offset >= self.next_offset {
            return Ok(Vec::new());
        }
        let file = self.file.get()?;
        let Some(mut position) = self.position_of(&file, offset)? else {
            return Ok(Vec::new());
        };
        let mut headers = Vec::new();
        while let Some(header) = self.header_at(&file, position, self.size_bytes, false)? {
            position += header.total_bytes() as u64;
            headers.push(header);
        }
        Ok(headers)
    }

    /// The headers of the batches from the one holding `offset` on, each control batch with its
    /// transaction marker (read from the file: control batches are small).
    pub(crate) fn headers_and_markers_from(
        &self,
        offset: i64,
    ) -> Result<Vec<(BatchHeader, Option<crate::txn::Marker>)>> {
        if offset >= self.next_offset {
            return Ok(Vec::new());
        }
        let file = self.file.get()?;
        let Some(mut position) = self.position_of(&file, offset)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while let Some(header) = self.header_at(&file, position, self.size_bytes, false)? {
            let marker = if header.is_control() {
                let mut whole = vec![0u8; header.total_bytes()];
                file.read_exact_at(&mut whole, position)
                    .at(&self.log_path)?;
                crate::txn::parse_marker(&whole).ok().flatten()
            } else {
                None
            };
            position += header.total_bytes() as u64;
            out.push((header, marker));
        }
        Ok(out)
    }

    /// The segment's files to force to stable storage: the `.log` file, and the index files when
    /// `sealed` (an active segment's are written only at its seal or close).
    pub(crate) fn files(&self, sealed: bool) -> SegmentFiles {
        SegmentFiles {
            log: Arc::clone(&self.file),
            indexes: sealed.then(|| [self.index_path.clone(), self.time_index_path.clone()]),
        }
    }

    /// Closes the `.log` file's handle; the next append or read opens it again.
    pub(crate) fn release(&self) {
        self.file.release();
    }

    /// The figures roll and retention decisions need.
    pub(crate) fn stat(&self) -> SegmentStat {
        SegmentStat {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size_bytes: self.size_bytes,
            max_timestamp_ms: self.max_timestamp_ms,
            created_ms: self.created_ms,
        }
    }

    /// Removes the segment's files. Readers holding a [`FileSlice`] keep reading the open file.
    /// Dropping the segment retires its handle.
    pub(crate) fn delete(self) -> Result<()> {
        for path in [&self.log_path, &self.index_path, &self.time_index_path] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(path),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for Segment {
    /// The segment was deleted or its log closed or dropped: its file leaves the cache for good,
    /// and a later read of its [`SegmentContent`] fails instead of finding another file at the same
    /// path.
    fn drop(&mut self) {
        self.file.retire();
    }
}

/// A whole sealed segment (see [`crate::SealedSegment`]), opened only when it is read: the
/// offloader may list many waiting segments of a partition and holds no file for them.
#[derive(Debug, Clone)]
pub struct SegmentContent {
    file: Arc<SegmentFile>,
    len: usize,
}

impl SegmentContent {
    /// Bytes in the segment.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment's bytes as a slice of its (now open) file.
    pub fn open(&self) -> Result<FileSlice> {
        Ok(FileSlice {
            file: self.file.get()?,
            path: self.file.path().to_path_buf(),
            position: 0,
            len: self.len,
        })
    }

    /// Reads the whole segment (from the page cache when it is warm). Fails once the segment was
    /// deleted or its log closed.
    pub fn read(&self) -> Result<Vec<u8>> {
        self.open()?.read()
    }
}

/// The files of one segment a flush forces to stable storage, usable without the log's lock.
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    log: Arc<SegmentFile>,
    indexes: Option<[PathBuf; 2]>,
}

impl SegmentFiles {
    /// `fsync`s the data of each file. A segment deleted or closed meanwhile is skipped: deletion
    /// leaves nothing to keep and a close flushes first.
    pub(crate) fn sync(&self) -> Result<()> {
        self.log.sync_data()?;
        for path in self.indexes.iter().flatten() {
            file_cache::sync_path(path)?;
        }
        Ok(())
    }
}

/// Replaces a file's content (`sync`: and forces it to stable storage).
fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut file = File::create(path).at(path)?;
    std::io::Write::write_all(&mut file, bytes).at(path)?;
    if sync {
        file.sync_data().at(path)?;
    }
    Ok(())
}

fn open_rw(path: &Path, create_new: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    options.open(path).at(path)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).at(path),
    }
}
