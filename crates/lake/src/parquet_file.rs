//! The lake's Parquet files: the schema of ARCHITECTURE.md §5, writing (zstd, row groups with
//! statistics and a page index, sorted by offset) and reading back.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
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

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The Arrow schema of a lake file.
pub fn schema() -> SchemaRef {
    let headers = DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        false,
    )));
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", headers, false),
        Field::new("batch_offset", DataType::Int64, false),
        Field::new("batch_attributes", DataType::Int16, false),
        Field::new("producer_id", DataType::Int64, false),
        Field::new("producer_epoch", DataType::Int16, false),
        Field::new("sequence", DataType::Int32, false),
        Field::new("partition_leader_epoch", DataType::Int32, false),
    ]))
}

/// Records (in offset order) as one Arrow batch.
pub fn to_arrow(records: &[LakeRecord]) -> RecordBatch {
    let mut headers = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(
        Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
    );
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
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(if align {
            rows_per_group.saturating_mul(4)
        } else {
            rows_per_group
        }))
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
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(properties))?;
    for group in row_groups(records, rows_per_group, align) {
        writer.write(&to_arrow(group))?;
        writer.flush()?;
    }
    writer.close()?;
    Ok(out)
}

/// Splits records into row groups.
fn row_groups(records: &[LakeRecord], rows: usize, align: bool) -> Vec<&[LakeRecord]> {
    if !align {
        return records.chunks(rows.max(1)).collect();
    }
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let full = i - start >= rows || bytes >= ROW_GROUP_BYTES;
        if full && r.batch_offset != records[i - 1].batch_offset {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len);
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
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
}
