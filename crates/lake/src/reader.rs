//! Ranged reads of lake files, for serving consumers: the footer once (a suffix GET), then only
//! the row groups holding the wanted offsets (one ranged GET per column chunk, coalesced by the
//! object store), decoded off the async threads into whole RecordBatch v2 batches that a Fetch
//! answer slices without copying.
//!
//! A *chunk* is what one row group serves: every batch that starts in it, in offset order. The
//! writer ends row groups at batch boundaries, so a chunk is usually exactly its row group; a batch
//! that continues into the next row group (files written otherwise) is completed from it.
//!
//! A file covers the offsets of its manifest entry, which may be more than its rows hold: the
//! offsets of control batches and aborted transactions, left out of the lake, are gaps (see
//! [`crate::txn`]). A consumer fetching inside a gap is served the next batch after it in the
//! file; past the file's last record, its last batch, whose header then covers the file's
//! offsets to the end (as compaction leaves a batch whose last records it removed), so the
//! consumer's next fetch starts after the file; in a file with no record at all, batches of no
//! record covering it. Every offset of a file's range thus answers with the batches that
//! move a consumer on, never with nothing.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;

use crate::error::{Error, Result};
use crate::manifest::FileEntry;
use crate::records::{self, BATCH_SPAN_MAX, LakeRecord};

/// Where a row group's records lie, from its column statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpan {
    /// First offset.
    pub first_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// Base offset of the batch of the first record.
    pub first_batch: i64,
    /// Base offset of the batch of the last record.
    pub last_batch: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
}

/// A lake file whose footer was read: enough to fetch any of its chunks with ranged GETs.
#[derive(Debug)]
pub struct OpenFile {
    entry: FileEntry,
    metadata: ArrowReaderMetadata,
    groups: Vec<GroupSpan>,
}

fn int64_range(statistics: Option<&Statistics>) -> Option<(i64, i64)> {
    match statistics? {
        Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
        _ => None,
    }
}

impl OpenFile {
    /// Reads the row-group spans of a file's metadata.
    fn new(entry: FileEntry, metadata: ArrowReaderMetadata) -> Result<Self> {
        let parquet = metadata.metadata();
        let schema = parquet.file_metadata().schema_descr();
        let index = |name: &str| {
            (0..schema.num_columns())
                .find(|&i| schema.column(i).path().string() == name)
                .ok_or_else(|| {
                    Error::Corrupt(format!("lake file {} has no {name} column", entry.path))
                })
        };
        let (offset, timestamp, batch) = (
            index("offset")?,
            index("timestamp")?,
            index("batch_offset")?,
        );
        let groups = parquet
            .row_groups()
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let stats = |column: usize| {
                    int64_range(group.column(column).statistics()).ok_or_else(|| {
                        Error::Corrupt(format!(
                            "lake file {} row group {i} lacks statistics of column {}",
                            entry.path,
                            schema.column(column).name()
                        ))
                    })
                };
                let (first_offset, last_offset) = stats(offset)?;
                let (_, max_timestamp_ms) = stats(timestamp)?;
                let (first_batch, last_batch) = stats(batch)?;
                Ok(GroupSpan {
                    first_offset,
                    last_offset,
                    first_batch,
                    last_batch,
                    max_timestamp_ms,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ordered = groups
            .windows(2)
            .all(|w| w[0].last_offset < w[1].first_offset);
        // Rows may leave gaps (records left out of the lake), never fall outside the entry.
        let within = entry.base_offset <= entry.last_offset
            && groups
                .first()
                .is_none_or(|g| g.first_offset >= entry.base_offset)
            && groups
                .last()
                .is_none_or(|g| g.last_offset <= entry.last_offset);
        if !ordered || !within {
            return Err(Error::Corrupt(format!(
                "lake file {} does not hold offsets {}..={} in order as its manifest says",
                entry.path, entry.base_offset, entry.last_offset
            )));
        }
        Ok(Self {
            entry,
            metadata,
            groups,
        })
    }

    /// The manifest entry of the file.
    pub fn entry(&self) -> &FileEntry {
        &self.entry
    }

    /// Memory the footer takes, for cache accounting.
    pub fn memory_bytes(&self) -> usize {
        self.metadata.metadata().memory_size() + self.groups.len() * size_of::<GroupSpan>()
    }

    /// Whether row group `k` starts in the middle of a batch begun in the one before.
    fn continues(&self, k: usize) -> bool {
        k > 0 && self.groups[k].first_batch == self.groups[k - 1].last_batch
    }

    /// Whether chunk `k` holds no batch: its row group only continues an earlier batch.
    fn empty_chunk(&self, k: usize) -> bool {
        self.continues(k) && self.groups[k].first_batch == self.groups[k].last_batch
    }

    /// The chunks to look in, in order, for the batch holding `offset` (or the first after it):
    /// the one whose row group holds it, preceded by the chunk where its batch may have begun.
    /// Past the last record but within the file's offsets, the last chunk (whose last batch
    /// covers them); in a file without records, its one chunk of empty batches.
    pub fn chunks_for(&self, offset: i64) -> Range<usize> {
        let in_file = (self.entry.base_offset..=self.entry.last_offset).contains(&offset);
        if self.groups.is_empty() {
            return if in_file { 0..1 } else { 0..0 };
        }
        let found = self.groups.iter().position(|g| g.last_offset >= offset);
        let Some(mut k) = found.or_else(|| in_file.then_some(self.groups.len() - 1)) else {
            return self.groups.len()..self.groups.len();
        };
        let end = k + 1;
        while self.continues(k) {
            k -= 1;
        }
        k..end
    }

    /// The chunks to look in, in order, for the first record at or after `timestamp_ms`: empty
    /// when every record of the file is older.
    pub fn chunks_for_timestamp(&self, timestamp_ms: i64) -> Range<usize> {
        match self
            .groups
            .iter()
            .position(|g| g.max_timestamp_ms >= timestamp_ms)
        {
            Some(k) => self.chunks_for(self.groups[k].first_offset),
            None => self.groups.len()..self.groups.len(),
        }
    }

    /// The row groups to decode for chunk `k`: its own, and the following ones its last batch
    /// continues into.
    fn groups_of_chunk(&self, k: usize) -> Range<usize> {
        let mut end = k + 1;
        while end < self.groups.len() && self.continues(end) {
            end += 1;
        }
        k..end
    }

    /// The number of chunks (row groups): none in a file without records, whose one chunk
    /// (of empty batches, see [`OpenFile::chunks_for`]) needs no read.
    pub fn chunk_count(&self) -> usize {
        self.groups.len()
    }

    /// Where chunk `k`'s last batch ends: at the file's last offset for the chunk holding the
    /// file's last batch, at its last record otherwise (`None`).
    fn chunk_end(&self, k: usize) -> Option<i64> {
        let last_batch = self.groups.last().map(|g| g.last_batch);
        (Some(self.groups[k].last_batch) == last_batch).then_some(self.entry.last_offset)
    }
}

/// Whole encoded batches in offset order, contiguous in one buffer.
#[derive(Debug, Default)]
pub struct Chunk {
    data: Bytes,
    /// Per batch: base offset, last offset, largest timestamp, end in `data`.
    batches: Vec<(i64, i64, i64, usize)>,
}

impl Chunk {
    /// Encodes records (whole batches, in offset order) for serving.
    pub fn from_records(records: &[LakeRecord]) -> Self {
        Self::covering(records, None)
    }

    /// [`Chunk::from_records`] whose last batch covers offsets up to `last_offset` (when given,
    /// at or after the last record's): its header says so, so that a consumer reading it
    /// continues after `last_offset`. Batches of no record cover what one batch's header
    /// cannot, and all of it when there is no record.
    pub fn covering(records: &[LakeRecord], last_offset: Option<i64>) -> Self {
        let payload: usize = records
            .iter()
            .map(|r| {
                r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len) + 24
            })
            .sum();
        let mut data = BytesMut::with_capacity(payload + 64 * records.len().min(1 << 16));
        let mut batches = Vec::new();
        let mut groups = records
            .chunk_by(|a, b| a.batch_offset == b.batch_offset)
            .peekable();
        let end = last_offset.unwrap_or(i64::MIN);
        let mut covered = None;
        while let Some(batch) = groups.next() {
            let base = batch[0].batch_offset;
            let last = batch.last().expect("chunks are not empty").offset;
            // The last batch takes the rest of the range when its header can say it.
            let last = if groups.peek().is_none() && end > last && end - base < BATCH_SPAN_MAX {
                end
            } else {
                last
            };
            records::encode_batch_covering_into(batch, last, &mut data);
            let max_ts = batch.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1);
            batches.push((base, last, max_ts, data.len()));
            covered = Some(last);
        }
        if let Some(covered) = covered
            && end > covered
        {
            // More offsets than one header can cover: batches of no record take the rest.
            records::encode_empty_batches_into(covered + 1, end, &mut data);
            batches.push((covered + 1, end, -1, data.len()));
        }
        Self {
            data: data.freeze(),
            batches,
        }
    }

    /// Batches of no record covering `base_offset..=last_offset`: what a file without records
    /// serves.
    pub fn empty(base_offset: i64, last_offset: i64) -> Self {
        let mut data = BytesMut::new();
        records::encode_empty_batches_into(base_offset, last_offset, &mut data);
        Self {
            batches: vec![(base_offset, last_offset, -1, data.len())],
            data: data.freeze(),
        }
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.batches.len() * size_of::<(i64, i64, i64, usize)>()
    }

    /// Whole batches from the one holding `offset` (or the first after it), up to `max_bytes`
    /// but at least one: empty when the chunk ends before `offset`.
    pub fn slice_from(&self, offset: i64, max_bytes: usize) -> Bytes {
        let first = self.batches.partition_point(|b| b.1 < offset);
        if first == self.batches.len() {
            return Bytes::new();
        }
        let start = if first == 0 {
            0
        } else {
            self.batches[first - 1].3
        };
        let mut end = self.batches[first].3;
        for b in &self.batches[first + 1..] {
            if b.3 - start > max_bytes {
                break;
            }
            end = b.3;
        }
        self.data.slice(start..end)
    }

    /// The first record at or after `timestamp_ms` whose offset is at least `from_offset` (the
    /// log start: records below it were deleted): `(offset, timestamp)`.
    pub fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        from_offset: i64,
    ) -> Result<Option<(i64, i64)>> {
        for (i, batch) in self.batches.iter().enumerate() {
            if batch.1 < from_offset || batch.2 < timestamp_ms {
                continue;
            }
            let start = if i == 0 { 0 } else { self.batches[i - 1].3 };
            let records = records::decode_batch(&self.data[start..batch.3])?;
            // Only the batch holding `from_offset` can hold a later timestamp below it.
            if let Some(r) = records
                .iter()
                .find(|r| r.timestamp_ms >= timestamp_ms && r.offset >= from_offset)
            {
                return Ok(Some((r.offset, r.timestamp_ms)));
            }
        }
        Ok(None)
    }
}

/// A file's fetched column chunks, as the parquet reader's source.
struct Fetched {
    size: u64,
    ranges: Vec<(u64, Bytes)>,
}

impl Fetched {
    fn find(&self, start: u64) -> parquet::errors::Result<Bytes> {
        let i = self.ranges.partition_point(|(s, _)| *s <= start);
        let missing = || ParquetError::General(format!("byte {start} was not fetched"));
        let (s, bytes) = self
            .ranges
            .get(i.checked_sub(1).ok_or_else(missing)?)
            .ok_or_else(missing)?;
        let at = usize::try_from(start - s).map_err(|_| missing())?;
        if at > bytes.len() {
            return Err(missing());
        }
        Ok(bytes.slice(at..))
    }
}

impl Length for Fetched {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for Fetched {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.find(start)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let bytes = self.find(start)?;
        if bytes.len() < length {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at {start} were not fetched"
            )));
        }
        Ok(bytes.slice(..length))
    }
}

/// Bytes read from the end of a file at first: the footer of a lake file usually fits.
const FOOTER_GUESS_BYTES: u64 = 64 * 1024;

/// Reads the footer of a lake file (a ranged GET of its end, a second one if it is larger).
pub async fn open(store: &Arc<dyn ObjectStore>, entry: &FileEntry) -> Result<OpenFile> {
    let size = entry.size_bytes;
    let path = Path::from(entry.path.as_str());
    let mut suffix = FOOTER_GUESS_BYTES.min(size);
    let metadata = loop {
        let bytes = store
            .get_range(&path, size - suffix..size)
            .await
            .map_err(|e| store_error(entry, e))?;
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&bytes, size) {
            Ok(()) => break reader.finish().map_err(|e| named(entry, e))?,
            Err(ParquetError::NeedMoreData(needed)) if (needed as u64) > suffix => {
                suffix = needed as u64;
            }
            Err(e) => return Err(named(entry, e)),
        }
    };
    let metadata = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
        .map_err(|e| named(entry, e))?;
    OpenFile::new(entry.clone(), metadata)
}

/// An object store error reading a file: a missing file is named as such; anything else is
/// unreachable storage and retriable.
fn store_error(entry: &FileEntry, e: object_store::Error) -> Error {
    let what = format!(
        "lake file {} (offsets {}..={})",
        entry.path, entry.base_offset, entry.last_offset
    );
    match e {
        object_store::Error::NotFound { .. } => Error::Corrupt(format!("{what} is missing: {e}")),
        e => Error::Storage(format!("{what}: {e}")),
    }
}

/// A decoding error of the file, named with the file and its offsets.
fn named(entry: &FileEntry, e: ParquetError) -> Error {
    Error::Corrupt(format!(
        "lake file {} (offsets {}..={}): {e}",
        entry.path, entry.base_offset, entry.last_offset
    ))
}

/// Fetches and decodes chunk `k` of a file: only its row groups' column chunks are read.
pub async fn read_chunk(
    store: &Arc<dyn ObjectStore>,
    file: &Arc<OpenFile>,
    k: usize,
) -> Result<Chunk> {
    if file.chunk_count() == 0 && k == 0 {
        // A file without records: its offsets were all left out of the lake.
        let entry = file.entry();
        return Ok(Chunk::empty(entry.base_offset, entry.last_offset));
    }
    if k >= file.chunk_count() || file.empty_chunk(k) {
        return Ok(Chunk::default());
    }
    let groups = file.groups_of_chunk(k);
    let parquet = file.metadata.metadata();
    let mut ranges: Vec<Range<u64>> = groups
        .clone()
        .flat_map(|g| parquet.row_group(g).columns().iter())
        .map(|c| {
            let (start, length) = c.byte_range();
            start..start + length
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let entry = file.entry();
    let path = Path::from(entry.path.as_str());
    let fetched = store
        .get_ranges(&path, &ranges)
        .await
        .map_err(|e| store_error(entry, e))?;
    let source = Fetched {
        size: entry.size_bytes,
        ranges: ranges.iter().map(|r| r.start).zip(fetched).collect(),
    };
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || decode_chunk(&file, k, groups, source))
        .await
        .map_err(|e| Error::Corrupt(format!("decoding task failed: {e}")))?
}

fn decode_chunk(file: &OpenFile, k: usize, groups: Range<usize>, source: Fetched) -> Result<Chunk> {
    let entry = file.entry();
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(source, file.metadata.clone())
        .with_row_groups(groups.collect())
        .with_batch_size(8192)
        .build()
        .map_err(|e| named(entry, e))?;
    // Records of a batch begun in the row group before belong to the chunk before.
    let skip_batch = file.continues(k).then(|| file.groups[k].first_batch);
    let last_batch = file.groups[k].last_batch;
    let mut records = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::Corrupt(format!("lake file {}: {e}", entry.path)))?;
        records.extend(
            crate::parquet_file::from_arrow(&batch)?
                .into_iter()
                .filter(|r| Some(r.batch_offset) != skip_batch && r.batch_offset <= last_batch),
        );
    }
    if records.windows(2).any(|w| w[0].offset >= w[1].offset) {
        return Err(Error::Corrupt(format!(
            "lake file {} holds offsets out of order",
            entry.path
        )));
    }
    Ok(Chunk::covering(&records, file.chunk_end(k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;

    fn records(count: i64, batch: i64) -> Vec<LakeRecord> {
        (0..count)
            .map(|i| LakeRecord {
                offset: 100 + i,
                timestamp_ms: 1000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; (i % 50) as usize])),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
                batch_offset: 100 + i - i % batch,
                batch_attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                sequence: -1,
                partition_leader_epoch: 0,
            })
            .collect()
    }

    async fn stored(
        records: &[LakeRecord],
        rows_per_group: usize,
    ) -> (Arc<dyn ObjectStore>, Arc<OpenFile>) {
        let span = (records[0].offset, records.last().unwrap().offset);
        stored_as(records, rows_per_group, false, span).await
    }

    /// A file of `records` whose manifest entry covers offsets `span` (first, last); row groups
    /// of `rows_per_group` rows, ended at batch boundaries when `align`.
    async fn stored_as(
        records: &[LakeRecord],
        rows_per_group: usize,
        align: bool,
        (base_offset, last_offset): (i64, i64),
    ) -> (Arc<dyn ObjectStore>, Arc<OpenFile>) {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let file = crate::parquet_file::write_with(records, rows_per_group, align).unwrap();
        let entry = FileEntry {
            path: "t/f.parquet".into(),
            base_offset,
            last_offset,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: records.len() as u64,
            size_bytes: file.len() as u64,
            source_bytes: 0,
            fresh: false,
        };
        store
            .put(&Path::from(entry.path.as_str()), PutPayload::from(file))
            .await
            .unwrap();
        let open = Arc::new(open(&store, &entry).await.unwrap());
        (store, open)
    }

    /// Reads every chunk that may hold `offset` and returns what it serves.
    async fn serve(
        store: &Arc<dyn ObjectStore>,
        file: &Arc<OpenFile>,
        offset: i64,
    ) -> Vec<LakeRecord> {
        for k in file.chunks_for(offset) {
            let chunk = read_chunk(store, file, k).await.unwrap();
            let bytes = chunk.slice_from(offset, 1);
            if !bytes.is_empty() {
                return crate::segment::decode(&bytes).unwrap();
            }
        }
        Vec::new()
    }

    /// What a consumer fetching at `offset` takes from the file (as librdkafka and the Java
    /// client do): the records at or after `offset` of the batches served, and the offset it
    /// fetches next (after the last batch's header's last offset).
    async fn consume_once(
        store: &Arc<dyn ObjectStore>,
        file: &Arc<OpenFile>,
        offset: i64,
        max_bytes: usize,
    ) -> (Vec<i64>, i64) {
        for k in file.chunks_for(offset) {
            let chunk = read_chunk(store, file, k).await.unwrap();
            let bytes = chunk.slice_from(offset, max_bytes);
            if bytes.is_empty() {
                continue;
            }
            let mut reader = crate::segment::BatchReader::new(&bytes[..]);
            let (mut taken, mut next) = (Vec::new(), offset);
            while let Some(batch) = reader.next_batch().unwrap() {
                batch.check().unwrap();
                let records = batch.decode(offset).unwrap();
                taken.extend(records.iter().map(|r| r.offset));
                next = next.max(batch.header.next_offset());
            }
            return (taken, next);
        }
        (Vec::new(), offset)
    }

    /// Records of producer batches `(base offset, records)`, in order.
    fn batches_at(batches: &[(i64, i64)]) -> Vec<LakeRecord> {
        batches
            .iter()
            .flat_map(|&(base, count)| {
                (base..base + count).map(move |offset| LakeRecord {
                    offset,
                    timestamp_ms: 1000 + offset,
                    key: None,
                    value: Some(Bytes::from(format!("v{offset}"))),
                    headers: Vec::new(),
                    batch_offset: base,
                    batch_attributes: strata_log::batch::ATTR_TRANSACTIONAL,
                    producer_id: 9,
                    producer_epoch: 0,
                    sequence: offset as i32,
                    partition_leader_epoch: 4,
                })
            })
            .collect()
    }

    /// A file whose records leave gaps (offsets of markers and aborted records, left out of the
    /// lake) at its start, in its middle and at its end: a consumer starting at any offset of
    /// the file's range reads exactly the records from there, never stays in place, and leaves
    /// the file at its last offset + 1; with row groups aligned on batches or not, and budgets
    /// of one batch or all.
    #[tokio::test]
    async fn a_consumer_starting_anywhere_crosses_the_gaps_and_leaves_at_the_files_end() {
        // The entry covers 95..=130; records at 100..=104, 110..=112, 114..=116, 117..=118.
        let all = batches_at(&[(100, 5), (110, 3), (114, 3), (117, 2)]);
        let span = (95, 130);
        for (rows, align) in [(5, true), (2, false), (4, false), (100, true)] {
            let (store, file) = stored_as(&all, rows, align, span).await;
            for max_bytes in [1, 1 << 20] {
                for start in 95..=130 {
                    let (mut at, mut taken, mut fetches) = (start, Vec::new(), 0);
                    while at <= 130 {
                        let (records, next) = consume_once(&store, &file, at, max_bytes).await;
                        assert!(next > at, "a fetch at {at} moves the consumer on");
                        taken.extend(records);
                        at = next;
                        fetches += 1;
                        assert!(fetches <= 10, "from {start}: no end");
                    }
                    assert_eq!(at, 131, "from {start}: leaves after the file");
                    let expected: Vec<i64> = all
                        .iter()
                        .map(|r| r.offset)
                        .filter(|&o| o >= start)
                        .collect();
                    assert_eq!(taken, expected, "from {start} ({rows} rows, {max_bytes} B)");
                }
                // Past the range: nothing, as before.
                assert_eq!(
                    consume_once(&store, &file, 131, max_bytes).await,
                    (vec![], 131)
                );
            }
        }
    }

    /// The last batch's header covers the file's end; its records and CRC are intact.
    #[tokio::test]
    async fn the_last_batch_covers_the_end_of_the_file() {
        let all = batches_at(&[(100, 5), (110, 3)]);
        let (store, file) = stored_as(&all, 100, true, (100, 120)).await;
        let chunk = read_chunk(&store, &file, 0).await.unwrap();
        let bytes = chunk.slice_from(0, usize::MAX);
        let mut reader = crate::segment::BatchReader::new(&bytes[..]);
        let first = reader.next_batch().unwrap().unwrap().header;
        assert_eq!((first.base_offset, first.last_offset()), (100, 104));
        let last = reader.next_batch().unwrap().unwrap();
        last.check().unwrap();
        assert_eq!(
            (last.header.base_offset, last.header.last_offset()),
            (110, 120)
        );
        assert_eq!(last.header.record_count, 3);
        assert_eq!(last.header.partition_leader_epoch, 4);
        assert_eq!(last.decode(0).unwrap(), all[5..].to_vec());
        assert!(reader.next_batch().unwrap().is_none());
    }

    /// A file without records (its segment held only aborted transactions and markers) serves
    /// batches of no record covering it, without reading the file beyond its footer.
    #[tokio::test]
    async fn a_file_without_records_moves_a_consumer_past_it() {
        let (store, file) = stored_as(&[], 100, true, (200, 210)).await;
        assert_eq!(file.chunk_count(), 0);
        for start in 200..=210 {
            assert_eq!(file.chunks_for(start), 0..1);
            assert_eq!(
                consume_once(&store, &file, start, 1).await,
                (vec![], 211),
                "from {start}"
            );
        }
        assert!(file.chunks_for(211).is_empty() && file.chunks_for(199).is_empty());
        assert!(file.chunks_for_timestamp(0).is_empty());
        let chunk = read_chunk(&store, &file, 0).await.unwrap();
        assert_eq!(chunk.offset_for_timestamp(0, 0).unwrap(), None);
        // A file whose records fall outside its entry is refused.
        let all = batches_at(&[(100, 5)]);
        let bytes = crate::parquet_file::write(&all).unwrap();
        let entry = FileEntry {
            path: "t/g.parquet".into(),
            base_offset: 101,
            last_offset: 110,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: 5,
            size_bytes: bytes.len() as u64,
            source_bytes: 0,
            fresh: false,
        };
        store
            .put(&Path::from("t/g.parquet"), PutPayload::from(bytes))
            .await
            .unwrap();
        let e = open(&store, &entry).await.unwrap_err();
        assert!(
            e.to_string().contains("does not hold offsets 101..=110"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn chunks_serve_whole_batches_even_across_row_groups() {
        // Batches of 7 records in row groups of 10 rows: most batches straddle two groups.
        let all = records(95, 7);
        let (store, file) = stored(&all, 10).await;
        assert_eq!(file.chunk_count(), 10);
        for offset in 100..195 {
            let served = serve(&store, &file, offset).await;
            let base = offset - (offset - 100) % 7;
            let expected: Vec<LakeRecord> = all
                .iter()
                .filter(|r| r.batch_offset == base)
                .cloned()
                .collect();
            assert_eq!(served, expected, "offset {offset}");
        }
        // Every batch in exactly one chunk: all chunks together are the file.
        let mut together = Vec::new();
        for k in 0..file.chunk_count() {
            let chunk = read_chunk(&store, &file, k).await.unwrap();
            let bytes = chunk.slice_from(0, usize::MAX);
            together.extend(crate::segment::decode(&bytes).unwrap());
        }
        assert_eq!(together, all);
    }

    #[tokio::test]
    async fn a_batch_longer_than_a_row_group_is_served_whole() {
        let all = records(60, 25);
        let (store, file) = stored(&all, 10).await;
        assert_eq!(serve(&store, &file, 130).await, all[25..50].to_vec());
        assert_eq!(serve(&store, &file, 159).await, all[50..].to_vec());
        assert!(serve(&store, &file, 160).await.is_empty());
    }

    #[tokio::test]
    async fn the_writer_ends_row_groups_at_batch_boundaries() {
        let all = records(300, 7);
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let bytes = crate::parquet_file::write_with(&all, 50, true).unwrap();
        let entry = FileEntry {
            path: "f.parquet".into(),
            base_offset: 100,
            last_offset: 399,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: 300,
            size_bytes: bytes.len() as u64,
            source_bytes: 0,
            fresh: false,
        };
        store
            .put(&Path::from("f.parquet"), PutPayload::from(bytes))
            .await
            .unwrap();
        let file = Arc::new(open(&store, &entry).await.unwrap());
        assert!(file.chunk_count() > 1);
        assert!((0..file.chunk_count()).all(|k| !file.continues(k)));
        let chunks = file.chunks_for_timestamp(1120);
        assert_eq!(chunks.len(), 1, "aligned row groups need one chunk");
        let chunk = read_chunk(&store, &file, chunks.start).await.unwrap();
        assert_eq!(
            chunk.offset_for_timestamp(1120, 0).unwrap(),
            Some((220, 1120))
        );
        // Records below the log start do not count.
        assert_eq!(
            chunk.offset_for_timestamp(1120, 223).unwrap(),
            Some((223, 1123))
        );
        assert!(file.chunks_for_timestamp(5000).is_empty());
    }

    #[tokio::test]
    async fn missing_and_damaged_files_are_named() {
        let all = records(30, 5);
        let (store, file) = stored(&all, 10).await;
        store.delete(&Path::from("t/f.parquet")).await.unwrap();
        let e = read_chunk(&store, &file, 0).await.unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        assert!(
            e.to_string()
                .contains("t/f.parquet (offsets 100..=129) is missing"),
            "{e}"
        );
        let e = open(&store, file.entry()).await.unwrap_err();
        assert!(e.to_string().contains("t/f.parquet"), "{e}");
        store
            .put(
                &Path::from("t/f.parquet"),
                PutPayload::from_static(b"not parquet, not at all, no"),
            )
            .await
            .unwrap();
        let e = open(
            &store,
            &FileEntry {
                size_bytes: 27,
                ..file.entry().clone()
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::Corrupt(_)) && e.to_string().contains("t/f.parquet"),
            "{e}"
        );
    }
}
