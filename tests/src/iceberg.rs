//! A topic's Iceberg table read with the `iceberg` crate (Apache Iceberg's Rust implementation):
//! an independent reader of what the broker commits, from `version-hint.text` to the Parquet
//! rows, each row's partition the identity partition value of its file.

use std::path::Path;

use arrow_array_58::cast::AsArray;
use arrow_array_58::types::Int64Type;
use arrow_array_58::{Array, RecordBatch};
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::spec::{Literal, PrimitiveLiteral};
use iceberg::table::StaticTable;

/// One row of a topic's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergRow {
    /// The Kafka partition (from the identity partition value).
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// The record's value.
    pub value: Option<Vec<u8>>,
}

/// The current metadata file of `topic`'s table in the `file://` lake at `lake_dir`, as
/// `version-hint.text` names it; `None` before the first commit.
pub fn metadata_file(lake_dir: &Path, topic: &str) -> Option<std::path::PathBuf> {
    let metadata = lake_dir.join("_iceberg").join(topic).join("metadata");
    let hint = std::fs::read_to_string(metadata.join("version-hint.text")).ok()?;
    let version: u64 = hint.trim().parse().ok()?;
    Some(metadata.join(format!("v{version}.metadata.json")))
}

/// Every row of `topic`'s table at its current snapshot, sorted by partition and offset; `None`
/// before the first commit.
///
/// The crate (0.10.1) does not fill identity partition columns missing from the files (its
/// main branch does), so the partition of each row is the one the crate's scan planning gives
/// its file, read from the manifests, each file read as a task of its own; and it refuses the
/// files' TIMESTAMP(MILLIS) column, so `timestamp` is not read here.
pub async fn scan(lake_dir: &Path, topic: &str) -> Option<Vec<IcebergRow>> {
    let metadata = metadata_file(lake_dir, topic)?;
    let table = StaticTable::from_metadata_file(
        &format!("file://{}", metadata.display()),
        TableIdent::from_strs(["strata", topic]).unwrap(),
        FileIO::new_with_fs(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{}: the iceberg crate cannot load it: {e}",
            metadata.display()
        )
    });
    if table.metadata().current_snapshot().is_none() {
        return Some(Vec::new());
    }
    let tasks: Vec<FileScanTask> = table
        .scan()
        .select(["offset", "value"])
        .build()
        .unwrap_or_else(|e| panic!("{}: planning a scan failed: {e}", metadata.display()))
        .plan_files()
        .await
        .unwrap_or_else(|e| panic!("{}: planning a scan failed: {e}", metadata.display()))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{}: planning a scan failed: {e}", metadata.display()));
    let mut rows = Vec::new();
    for task in tasks {
        let partition = match task.partition.as_ref().map(|p| &p[0]) {
            Some(Some(Literal::Primitive(PrimitiveLiteral::Int(p)))) => *p,
            other => panic!("{}: partition value {other:?}", task.data_file_path),
        };
        let file = task.data_file_path.clone();
        let batches: Vec<RecordBatch> = table
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter([Ok(task)])))
            .map(|read| read.stream())
            .unwrap_or_else(|e| panic!("{file}: reading failed: {e}"))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{file}: reading failed: {e}"));
        for batch in batches {
            let offset = batch
                .column_by_name("offset")
                .expect("an offset column")
                .as_primitive::<Int64Type>();
            let value = batch.column_by_name("value").expect("a value column");
            // Iceberg's binary is LargeBinary in this reader.
            let value_at = |i: usize| -> Option<Vec<u8>> {
                if value.is_null(i) {
                    None
                } else if let Some(large) = value.as_binary_opt::<i64>() {
                    Some(large.value(i).to_vec())
                } else {
                    Some(value.as_binary::<i32>().value(i).to_vec())
                }
            };
            for i in 0..batch.num_rows() {
                rows.push(IcebergRow {
                    partition,
                    offset: offset.value(i),
                    value: value_at(i),
                });
            }
        }
    }
    rows.sort_by_key(|r| (r.partition, r.offset));
    Some(rows)
}

/// `(partition, offset)` of every row of `rows` that appears more than once.
pub fn duplicates(rows: &[IcebergRow]) -> Vec<(i32, i64)> {
    let mut seen = std::collections::BTreeSet::new();
    rows.iter()
        .map(|r| (r.partition, r.offset))
        .filter(|key| !seen.insert(*key))
        .collect()
}
