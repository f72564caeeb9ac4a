//! Ranged reads of lake files, for serving consumers: the footer once (a suffix GET), then only
//! the row groups holding the wanted offsets (one ranged GET per column chunk, coalesced by the
//! object store), decoded off the async threads into whole RecordBatch v2 batches that a Fetch
//! answer slices without copying.
//!
//! A *chunk* is what one row group serves: every batch that starts in it, in offset order. The
//! writer ends row groups at batch boundaries, so a chunk is usually exactly its row group; a batch
//! that continues into the next row group (files written otherwise) is completed from it.

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
use crate::records::{self, LakeRecord};

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
        let covers = groups.first().map(|g| g.first_offset) == Some(entry.base_offset)
            && groups.last().map(|g| g.last_offset) == Some(entry.last_offset);
        if !ordered || !covers {
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

    /// The chunks to look in, in order, for the batch holding `offset`: the one whose row group
    /// holds it, preceded by the chunk where its batch may have begun.
    pub fn chunks_for(&self, offset: i64) -> Range<usize> {
        let Some(mut k) = self.groups.iter().position(|g| g.last_offset >= offset) else {
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

    /// The number of chunks (row groups).
    pub fn chunk_count(&self) -> usize {
        self.groups.len()
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
        let payload: usize = records
            .iter()
            .map(|r| {
                r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len) + 24
            })
            .sum();
        let mut data = BytesMut::with_capacity(payload + 64 * records.len().min(1 << 16));
        let mut batches = Vec::new();
        for batch in records.chunk_by(|a, b| a.batch_offset == b.batch_offset) {
            records::encode_batch_into(batch, &mut data);
            let last = batch.last().expect("chunks are not empty");
            let max_ts = batch.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1);
            batches.push((batch[0].batch_offset, last.offset, max_ts, data.len()));
        }
        Self {
            data: data.freeze(),
            batches,
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
    Ok(Chunk::from_records(&records))
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
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let file = crate::parquet_file::write_with(records, rows_per_group, false).unwrap();
        let entry = FileEntry {
            path: "t/f.parquet".into(),
            base_offset: records[0].offset,
            last_offset: records.last().unwrap().offset,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: records.len() as u64,
            size_bytes: file.len() as u64,
            source_bytes: 0,
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
