//! The lake's Parquet files: the schema of ARCHITECTURE.md §5, writing (zstd, row groups with
//! statistics and a page index, sorted by offset) batch by batch as a segment is decoded, and
//! reading back.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::records::LakeRecord;

/// Rows per row group: small enough for a ranged read to fetch little beyond what a consumer
/// asks, large enough for scans and compression.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Keys and values per row group: a consumer's first ranged read of a cold file stays small.
pub const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Iceberg field ids of the lake's columns: the schema of each topic's Iceberg table
/// ([`crate::iceberg`]). New files carry them as `PARQUET:field_id` so that Iceberg readers
/// resolve columns by id; files written before carry none, and Iceberg readers map them by name
/// (the table's `schema.name-mapping.default`). Ids are the columns' positions, so a reader that
/// falls back to positions finds the same columns.
pub mod field_id {
    /// `offset`.
    pub const OFFSET: i32 = 1;
    /// `timestamp`.
    pub const TIMESTAMP: i32 = 2;
    /// `key`.
    pub const KEY: i32 = 3;
    /// `value`.
    pub const VALUE: i32 = 4;
    /// `headers` (the list).
    pub const HEADERS: i32 = 5;
    /// `batch_offset`.
    pub const BATCH_OFFSET: i32 = 6;
    /// `batch_attributes`.
    pub const BATCH_ATTRIBUTES: i32 = 7;
    /// `producer_id`.
    pub const PRODUCER_ID: i32 = 8;
    /// `producer_epoch`.
    pub const PRODUCER_EPOCH: i32 = 9;
    /// `sequence`.
    pub const SEQUENCE: i32 = 10;
    /// `partition_leader_epoch`.
    pub const PARTITION_LEADER_EPOCH: i32 = 11;
    /// `partition`: a column of the Iceberg table only, never of a file (readers fill it from the
    /// file's identity partition value).
    pub const PARTITION: i32 = 12;
    /// The element of `headers` (a header struct).
    pub const HEADER: i32 = 13;
    /// A header's `key`.
    pub const HEADER_KEY: i32 = 14;
    /// A header's `value`.
    pub const HEADER_VALUE: i32 = 15;
    /// The largest id the table's schema uses.
    pub const LAST: i32 = HEADER_VALUE;
}

/// A field carrying its Iceberg field id.
fn field(name: &str, data_type: DataType, nullable: bool, id: i32) -> Field {
    Field::new(name, data_type, nullable)
        .with_metadata([(PARQUET_FIELD_ID_META_KEY, id.to_string())])
}

fn header_fields() -> Fields {
    Fields::from(vec![
        field("key", DataType::Utf8, false, field_id::HEADER_KEY),
        field("value", DataType::Binary, true, field_id::HEADER_VALUE),
    ])
}

/// The element field of `headers`.
fn header_field() -> Field {
    field(
        "item",
        DataType::Struct(header_fields()),
        false,
        field_id::HEADER,
    )
}

/// The Arrow schema of a lake file, each field with its Iceberg id ([`field_id`]).
pub fn schema() -> SchemaRef {
    use field_id::*;
    let headers = DataType::List(Arc::new(header_field()));
    let timestamp = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        field("offset", DataType::Int64, false, OFFSET),
        field("timestamp", timestamp, false, TIMESTAMP),
        field("key", DataType::Binary, true, KEY),
        field("value", DataType::Binary, true, VALUE),
        field("headers", headers, false, HEADERS),
        field("batch_offset", DataType::Int64, false, BATCH_OFFSET),
        field("batch_attributes", DataType::Int16, false, BATCH_ATTRIBUTES),
        field("producer_id", DataType::Int64, false, PRODUCER_ID),
        field("producer_epoch", DataType::Int16, false, PRODUCER_EPOCH),
        field("sequence", DataType::Int32, false, SEQUENCE),
        field(
            "partition_leader_epoch",
            DataType::Int32,
            false,
            PARTITION_LEADER_EPOCH,
        ),
    ]))
}

/// Records (in offset order) as one Arrow batch.
pub fn to_arrow(records: &[LakeRecord]) -> RecordBatch {
    let mut headers = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
        .with_field(Arc::new(header_field()));
    for r in records {
        let entries = headers.values();
        for (k, v) in &r.headers {
            entries
                .field_builder::<StringBuilder>(0)
                .expect("key")
                .append_value(k);
            entries
                .field_builder::<BinaryBuilder>(1)
                .expect("value")
                .append_option(v.as_deref());
            entries.append(true);
        }
        headers.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.offset),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.timestamp_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(
            records
                .iter()
                .map(|r| r.key.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(
            records
                .iter()
                .map(|r| r.value.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(headers.finish()),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.batch_offset),
        )),
        Arc::new(Int16Array::from_iter_values(
            records.iter().map(|r| r.batch_attributes),
        )),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.producer_id),
        )),
        Arc::new(Int16Array::from_iter_values(
            records.iter().map(|r| r.producer_epoch),
        )),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|r| r.sequence),
        )),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|r| r.partition_leader_epoch),
        )),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// zstd level of every column. Level 1 converts JSON-like values about a quarter faster than
/// level 3 for files 1.5% larger (`cargo bench --bench lake`), so offload keeps up with produce.
pub const ZSTD_LEVEL: i32 = 1;

/// Writes records (in offset order) as a Parquet file whose row groups end at batch boundaries,
/// once they hold [`ROW_GROUP_ROWS`] records or [`ROW_GROUP_BYTES`] of keys and values.
pub fn write(records: &[LakeRecord]) -> Result<Vec<u8>> {
    write_with(records, ROW_GROUP_ROWS, true)
}

/// Records per row group: [`ROW_GROUP_ROWS`] as a rule, ended at the next batch boundary when
/// `align` (otherwise exactly `rows_per_group`, batches straddling groups).
pub fn write_with(records: &[LakeRecord], rows_per_group: usize, align: bool) -> Result<Vec<u8>> {
    if align {
        let limits = RowGroupLimits {
            rows: rows_per_group,
            ..RowGroupLimits::default()
        };
        let mut writer = FileWriter::new(Vec::new(), limits)?;
        for batch in records.chunk_by(|a, b| a.batch_offset == b.batch_offset) {
            writer.write_batch(batch.to_vec())?;
        }
        return Ok(writer.finish()?.0);
    }
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(properties(rows_per_group)))?;
    for group in records.chunks(rows_per_group.max(1)) {
        writer.write(&to_arrow(group))?;
        writer.flush()?;
    }
    writer.close()?;
    Ok(out)
}

/// Encoding settings of every lake file; `max_rows` caps a row group whatever its batches.
fn properties(max_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(max_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Min/max of whole keys, values and headers cost space and prune nothing.
        .set_column_statistics_enabled(ColumnPath::from("key"), EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from("value"), EnabledStatistics::None)
        .set_column_statistics_enabled(
            ColumnPath::new(vec![
                "headers".into(),
                "list".into(),
                "item".into(),
                "key".into(),
            ]),
            EnabledStatistics::None,
        )
        .set_column_statistics_enabled(
            ColumnPath::new(vec![
                "headers".into(),
                "list".into(),
                "item".into(),
                "value".into(),
            ]),
            EnabledStatistics::None,
        )
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_created_by("strata".into())
        .build()
}

/// When a row group ends: at the first batch boundary once it holds `rows` records or `bytes` of
/// keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGroupLimits {
    /// Records.
    pub rows: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

impl Default for RowGroupLimits {
    /// [`ROW_GROUP_ROWS`] and [`ROW_GROUP_BYTES`].
    fn default() -> Self {
        Self {
            rows: ROW_GROUP_ROWS,
            bytes: ROW_GROUP_BYTES,
        }
    }
}

/// Decoded records handed to the encoder at once. Per-call costs vanish above a few thousand rows,
/// and below this the decoded records never pile up beside the row group the encoder holds.
const ENCODE_CHUNK_ROWS: usize = 8 * 1024;
/// Bytes of decoded records handed to the encoder at once (see [`ENCODE_CHUNK_ROWS`]).
pub(crate) const ENCODE_CHUNK_BYTES: usize = 1024 * 1024;

/// What a lake file holds, counted as it was written: the figures of its manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    /// Records.
    pub rows: u64,
    /// Row groups (set by [`FileWriter::finish`]).
    pub row_groups: usize,
    /// First offset, -1 when empty.
    pub first_offset: i64,
    /// Last offset, -1 when empty.
    pub last_offset: i64,
    /// Smallest timestamp, -1 when empty.
    pub min_timestamp_ms: i64,
    /// Largest timestamp, -1 when empty.
    pub max_timestamp_ms: i64,
}

impl Default for FileSummary {
    fn default() -> Self {
        Self {
            rows: 0,
            row_groups: 0,
            first_offset: -1,
            last_offset: -1,
            min_timestamp_ms: -1,
            max_timestamp_ms: -1,
        }
    }
}

/// A lake file written batch by batch into `W`, as the records of a segment are decoded.
///
/// Memory: the row group in progress, encoded and compressed by the Parquet encoder, plus at most
/// one chunk of decoded records ([`ENCODE_CHUNK_BYTES`], overshot by one batch). Each finished row
/// group goes to `W` at once, so what `W` keeps is up to it.
pub struct FileWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    limits: RowGroupLimits,
    /// Decoded records not yet encoded, whole batches.
    chunk: Vec<LakeRecord>,
    chunk_bytes: usize,
    /// Records and key/value bytes of the row group in progress.
    group_rows: usize,
    group_bytes: usize,
    summary: FileSummary,
}

impl<W: Write + Send> std::fmt::Debug for FileWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("limits", &self.limits)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> FileWriter<W> {
    /// A writer of one file into `sink`.
    pub fn new(sink: W, limits: RowGroupLimits) -> Result<Self> {
        // A batch larger than a whole row group is not split at its boundary, but nothing grows
        // past four groups' worth of records.
        let max_rows = limits.rows.saturating_mul(4);
        Ok(Self {
            writer: ArrowWriter::try_new(sink, schema(), Some(properties(max_rows)))?,
            limits,
            chunk: Vec::new(),
            chunk_bytes: 0,
            group_rows: 0,
            group_bytes: 0,
            summary: FileSummary::default(),
        })
    }

    /// Appends the records of one batch (in offset order, after those written before). The row
    /// group in progress ends first when it is full, so row groups end at batch boundaries.
    pub fn write_batch(&mut self, records: Vec<LakeRecord>) -> Result<()> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        assert_eq!(first.batch_offset, last.batch_offset, "one batch at a time");
        // Data from disk: out-of-order offsets are an error, not a broken invariant.
        let mut previous = self.summary.last_offset;
        for r in &records {
            if r.offset <= previous {
                return Err(Error::Corrupt(format!(
                    "offset {} follows offset {previous}",
                    r.offset
                )));
            }
            previous = r.offset;
        }
        if self.group_rows >= self.limits.rows || self.group_bytes >= self.limits.bytes {
            self.end_row_group()?;
        }
        let s = &mut self.summary;
        if s.rows == 0 {
            s.first_offset = first.offset;
            (s.min_timestamp_ms, s.max_timestamp_ms) = (i64::MAX, i64::MIN);
        }
        s.last_offset = last.offset;
        s.rows += records.len() as u64;
        for r in &records {
            s.min_timestamp_ms = s.min_timestamp_ms.min(r.timestamp_ms);
            s.max_timestamp_ms = s.max_timestamp_ms.max(r.timestamp_ms);
            let payload = payload_bytes(r);
            self.group_bytes += payload;
            self.chunk_bytes += payload + header_bytes(r) + std::mem::size_of::<LakeRecord>();
        }
        self.group_rows += records.len();
        self.chunk.extend(records);
        if self.chunk.len() >= ENCODE_CHUNK_ROWS || self.chunk_bytes >= ENCODE_CHUNK_BYTES {
            self.encode_chunk()?;
        }
        Ok(())
    }

    /// Bytes this writer holds: decoded records waiting for the encoder and the encoder's row
    /// group in progress (the Parquet writer's own estimate).
    pub fn buffered_bytes(&self) -> usize {
        self.chunk_bytes + self.writer.memory_size()
    }

    /// The sink.
    pub fn sink(&self) -> &W {
        self.writer.inner()
    }

    /// Writes the last row group and the footer; returns the sink and what the file holds.
    pub fn finish(mut self) -> Result<(W, FileSummary)> {
        self.end_row_group()?;
        self.summary.row_groups = self.writer.flushed_row_groups().len();
        let sink = self.writer.into_inner()?;
        Ok((sink, self.summary))
    }

    fn encode_chunk(&mut self) -> Result<()> {
        if !self.chunk.is_empty() {
            self.writer.write(&to_arrow(&self.chunk))?;
            self.chunk.clear();
            self.chunk_bytes = 0;
        }
        Ok(())
    }

    fn end_row_group(&mut self) -> Result<()> {
        self.encode_chunk()?;
        if self.group_rows > 0 {
            self.writer.flush()?;
            (self.group_rows, self.group_bytes) = (0, 0);
        }
        Ok(())
    }
}

/// Bytes of a record's key and value: what row groups are sized by.
fn payload_bytes(r: &LakeRecord) -> usize {
    r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len)
}

/// Bytes of a record's headers.
fn header_bytes(r: &LakeRecord) -> usize {
    r.headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
        .sum()
}

/// Reads every record of a lake file.
pub fn read(file: Bytes) -> Result<Vec<LakeRecord>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.extend(from_arrow(&batch?)?);
    }
    Ok(out)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Corrupt(format!("lake file lacks a well-typed {name} column")))
}

/// Records of an Arrow batch in the lake schema.
pub fn from_arrow(batch: &RecordBatch) -> Result<Vec<LakeRecord>> {
    let offsets = column::<Int64Array>(batch, "offset")?;
    let timestamps = column::<TimestampMillisecondArray>(batch, "timestamp")?;
    let keys = column::<BinaryArray>(batch, "key")?;
    let values = column::<BinaryArray>(batch, "value")?;
    let headers = column::<ListArray>(batch, "headers")?;
    let batch_offsets = column::<Int64Array>(batch, "batch_offset")?;
    let attributes = column::<Int16Array>(batch, "batch_attributes")?;
    let producer_ids = column::<Int64Array>(batch, "producer_id")?;
    let epochs = column::<Int16Array>(batch, "producer_epoch")?;
    let sequences = column::<Int32Array>(batch, "sequence")?;
    let leader_epochs = column::<Int32Array>(batch, "partition_leader_epoch")?;
    let binary =
        |a: &BinaryArray, i: usize| (!a.is_null(i)).then(|| Bytes::copy_from_slice(a.value(i)));
    // Keys and values: slices of the columns' own buffers, no copy.
    let (key_data, value_data) = (
        Bytes::from_owner(keys.values().clone()),
        Bytes::from_owner(values.values().clone()),
    );
    let sliced = |a: &BinaryArray, data: &Bytes, i: usize| {
        (!a.is_null(i)).then(|| {
            let offsets = a.value_offsets();
            data.slice(offsets[i] as usize..offsets[i + 1] as usize)
        })
    };
    (0..batch.num_rows())
        .map(|i| {
            let entries = headers.value(i);
            let entries = entries
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| Error::Corrupt("headers are not structs".into()))?;
            let hk = entries.column(0).as_any().downcast_ref::<StringArray>();
            let hv = entries.column(1).as_any().downcast_ref::<BinaryArray>();
            let (Some(hk), Some(hv)) = (hk, hv) else {
                return Err(Error::Corrupt("header columns are mistyped".into()));
            };
            Ok(LakeRecord {
                offset: offsets.value(i),
                timestamp_ms: timestamps.value(i),
                key: sliced(keys, &key_data, i),
                value: sliced(values, &value_data, i),
                headers: (0..entries.len())
                    .map(|j| (hk.value(j).to_string(), binary(hv, j)))
                    .collect(),
                batch_offset: batch_offsets.value(i),
                batch_attributes: attributes.value(i),
                producer_id: producer_ids.value(i),
                producer_epoch: epochs.value(i),
                sequence: sequences.value(i),
                partition_leader_epoch: leader_epochs.value(i),
            })
        })
        .collect()
}

/// A lake file as written before files carried Iceberg field ids: the same columns, no
/// `PARQUET:field_id` (readers map them by name).
#[cfg(test)]
pub(crate) fn write_without_field_ids(records: &[LakeRecord]) -> Vec<u8> {
    let bare = |f: &Field| f.clone().with_metadata(std::collections::HashMap::new());
    let batch = to_arrow(records);
    let headers = column::<ListArray>(&batch, "headers").unwrap().clone();
    let (_, offsets, entries, nulls) = headers.into_parts();
    let entries = entries
        .as_any()
        .downcast_ref::<StructArray>()
        .unwrap()
        .clone();
    let (fields, columns, entry_nulls) = entries.into_parts();
    let fields: Fields = fields.iter().map(|f| bare(f)).collect();
    let item = Field::new("item", DataType::Struct(fields.clone()), false);
    let entries = StructArray::new(fields, columns, entry_nulls);
    let headers = ListArray::new(Arc::new(item), offsets, Arc::new(entries), nulls);
    let schema: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "headers" => Field::new("headers", headers.data_type().clone(), false),
            _ => bare(f),
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[4] = Arc::new(headers);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(schema)), columns).unwrap();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(properties(ROW_GROUP_ROWS))).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::arb_records;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn parquet_round_trip(records in arb_records()) {
            let file = write(&records).unwrap();
            prop_assert_eq!(read(Bytes::from(file)).unwrap(), records);
        }
    }

    /// The parquet crate's generic (non-Arrow) reader sees the documented columns, zstd and
    /// statistics on offset and timestamp.
    #[test]
    fn files_are_readable_by_a_generic_reader() {
        let records: Vec<LakeRecord> = (0..1000)
            .map(|i| LakeRecord {
                offset: 500 + i,
                timestamp_ms: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: (i % 10 != 0).then(|| Bytes::from(format!("{{\"n\":{i}}}"))),
                headers: vec![
                    ("h".into(), Some(Bytes::from_static(b"1"))),
                    ("h".into(), None),
                ],
                batch_offset: 500 + i - i % 10,
                batch_attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                sequence: -1,
                partition_leader_epoch: 0,
            })
            .collect();
        let file = write(&records).unwrap();
        let reader = SerializedFileReader::new(Bytes::from(file)).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().num_rows(), 1000);
        let row_group = metadata.row_group(0);
        let names: Vec<&str> = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name())
            .collect();
        assert!(
            names.starts_with(&["offset", "timestamp", "key", "value"]),
            "{names:?}"
        );
        let offset = row_group.column(0);
        assert!(matches!(offset.compression(), Compression::ZSTD(_)));
        let stats = offset.statistics().unwrap();
        assert_eq!(stats.min_bytes_opt().unwrap(), &500i64.to_le_bytes());
        assert_eq!(stats.max_bytes_opt().unwrap(), &1499i64.to_le_bytes());
        assert!(
            row_group.column(1).statistics().is_some(),
            "timestamp statistics"
        );
        let mut rows = reader.get_row_iter(None).unwrap();
        let first = rows.next().unwrap().unwrap();
        assert!(first.to_string().contains("offset: 500"), "{first}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        /// Row groups end at the first batch boundary past the limit, and the summary counts
        /// what was written. (A batch of more than four groups' rows would be split: not here.)
        #[test]
        fn row_groups_end_at_batch_boundaries(sizes in proptest::collection::vec(1usize..30, 1..40), rows in 10usize..50) {
            let mut records = Vec::new();
            let mut batch_starts = std::collections::BTreeSet::new();
            for size in sizes {
                let base = records.len() as i64;
                batch_starts.insert(base);
                records.extend((0..size as i64).map(|i| LakeRecord {
                    offset: base + i,
                    timestamp_ms: 5000 - base - i,
                    key: None,
                    value: Some(Bytes::from(vec![1u8; 10])),
                    headers: Vec::new(),
                    batch_offset: base,
                    batch_attributes: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    sequence: -1,
                    partition_leader_epoch: 0,
                }));
            }
            let mut writer = FileWriter::new(Vec::new(), RowGroupLimits { rows, bytes: usize::MAX }).unwrap();
            for batch in records.chunk_by(|a, b| a.batch_offset == b.batch_offset) {
                writer.write_batch(batch.to_vec()).unwrap();
            }
            let (file, summary) = writer.finish().unwrap();
            let last = records.len() as i64 - 1;
            prop_assert_eq!(
                (summary.rows, summary.first_offset, summary.last_offset),
                (records.len() as u64, 0, last)
            );
            prop_assert_eq!((summary.min_timestamp_ms, summary.max_timestamp_ms), (5000 - last, 5000));
            let reader = SerializedFileReader::new(Bytes::from(file.clone())).unwrap();
            let groups = reader.metadata().row_groups();
            prop_assert_eq!(groups.len(), summary.row_groups);
            let mut start = 0i64;
            for (i, g) in groups.iter().enumerate() {
                prop_assert!(batch_starts.contains(&start), "group {} starts inside a batch", i);
                if i + 1 < groups.len() {
                    prop_assert!(g.num_rows() as usize >= rows, "group {} ended early", i);
                }
                start += g.num_rows();
            }
            prop_assert_eq!(read(Bytes::from(file)).unwrap(), records);
        }
    }

    /// Every column, nested ones included, carries its Iceberg field id in the Parquet schema;
    /// a file written without them reads back the same.
    #[test]
    fn files_carry_iceberg_field_ids() {
        use parquet::schema::types::Type;
        fn ids(t: &Type, path: String, out: &mut Vec<(String, Option<i32>)>) {
            let info = t.get_basic_info();
            out.push((path.clone(), info.has_id().then(|| info.id())));
            if t.is_group() {
                for f in t.get_fields() {
                    ids(f, format!("{path}.{}", f.name()), out);
                }
            }
        }
        let records = vec![LakeRecord {
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("h".into(), None)],
            batch_offset: 7,
            batch_attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            sequence: -1,
            partition_leader_epoch: 0,
        }];
        let file = write(&records).unwrap();
        let reader = SerializedFileReader::new(Bytes::from(file)).unwrap();
        let mut found = Vec::new();
        for f in reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
        {
            ids(f, f.name().to_string(), &mut found);
        }
        let expected: Vec<(String, Option<i32>)> = [
            ("offset", Some(1)),
            ("timestamp", Some(2)),
            ("key", Some(3)),
            ("value", Some(4)),
            ("headers", Some(5)),
            ("headers.list", None),
            ("headers.list.item", Some(13)),
            ("headers.list.item.key", Some(14)),
            ("headers.list.item.value", Some(15)),
            ("batch_offset", Some(6)),
            ("batch_attributes", Some(7)),
            ("producer_id", Some(8)),
            ("producer_epoch", Some(9)),
            ("sequence", Some(10)),
            ("partition_leader_epoch", Some(11)),
        ]
        .into_iter()
        .map(|(p, id)| (p.to_string(), id))
        .collect();
        assert_eq!(found, expected);

        let old = write_without_field_ids(&records);
        let reader = SerializedFileReader::new(Bytes::from(old.clone())).unwrap();
        let descr = reader.metadata().file_metadata().schema_descr();
        assert!(
            descr
                .columns()
                .iter()
                .all(|c| !c.self_type().get_basic_info().has_id())
        );
        assert_eq!(read(Bytes::from(old)).unwrap(), records);
    }

    #[test]
    fn offsets_out_of_order_are_an_error() {
        let record = |offset| LakeRecord {
            offset,
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: Vec::new(),
            batch_offset: offset,
            batch_attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            sequence: -1,
            partition_leader_epoch: 0,
        };
        let mut writer = FileWriter::new(Vec::new(), RowGroupLimits::default()).unwrap();
        writer.write_batch(vec![record(5)]).unwrap();
        let e = writer.write_batch(vec![record(5)]).unwrap_err();
        assert!(e.to_string().contains("offset 5 follows offset 5"), "{e}");
        // An empty file is still a valid one.
        let (file, summary) = FileWriter::new(Vec::new(), RowGroupLimits::default())
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!((summary.rows, summary.first_offset), (0, -1));
        assert!(read(Bytes::from(file)).unwrap().is_empty());
    }
}
