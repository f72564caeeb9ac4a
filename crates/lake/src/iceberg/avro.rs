//! Manifests and manifest lists: the spec's Avro schemas (format v2, every field with its
//! `field-id`, which readers resolve fields by) and the files' key-value metadata; encoding
//! from and decoding to plain structs. No I/O.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::{Codec, DeflateSettings, Reader, Schema, Writer};

use crate::error::{Error, Result};
use crate::parquet_file::field_id;

use super::metadata;

/// A manifest entry (`manifest_entry`, v2). The field ids are the spec's.
const MANIFEST_SCHEMA: &str = r#"{
  "type": "record", "name": "manifest_entry",
  "fields": [
    {"name": "status", "type": "int", "field-id": 0},
    {"name": "snapshot_id", "type": ["null", "long"], "default": null, "field-id": 1},
    {"name": "sequence_number", "type": ["null", "long"], "default": null, "field-id": 3},
    {"name": "file_sequence_number", "type": ["null", "long"], "default": null, "field-id": 4},
    {"name": "data_file", "field-id": 2, "type": {
      "type": "record", "name": "r2",
      "fields": [
        {"name": "content", "type": "int", "field-id": 134},
        {"name": "file_path", "type": "string", "field-id": 100},
        {"name": "file_format", "type": "string", "field-id": 101},
        {"name": "partition", "field-id": 102, "type": {
          "type": "record", "name": "r102",
          "fields": [
            {"name": "partition", "type": ["null", "int"], "default": null, "field-id": 1000}
          ]}},
        {"name": "record_count", "type": "long", "field-id": 103},
        {"name": "file_size_in_bytes", "type": "long", "field-id": 104},
        {"name": "column_sizes", "default": null, "field-id": 108, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k117_v118",
            "fields": [{"name": "key", "type": "int", "field-id": 117},
                       {"name": "value", "type": "long", "field-id": 118}]}}]},
        {"name": "value_counts", "default": null, "field-id": 109, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k119_v120",
            "fields": [{"name": "key", "type": "int", "field-id": 119},
                       {"name": "value", "type": "long", "field-id": 120}]}}]},
        {"name": "null_value_counts", "default": null, "field-id": 110, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k121_v122",
            "fields": [{"name": "key", "type": "int", "field-id": 121},
                       {"name": "value", "type": "long", "field-id": 122}]}}]},
        {"name": "nan_value_counts", "default": null, "field-id": 137, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k138_v139",
            "fields": [{"name": "key", "type": "int", "field-id": 138},
                       {"name": "value", "type": "long", "field-id": 139}]}}]},
        {"name": "lower_bounds", "default": null, "field-id": 125, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k126_v127",
            "fields": [{"name": "key", "type": "int", "field-id": 126},
                       {"name": "value", "type": "bytes", "field-id": 127}]}}]},
        {"name": "upper_bounds", "default": null, "field-id": 128, "type": ["null",
          {"type": "array", "logicalType": "map", "items": {"type": "record", "name": "k129_v130",
            "fields": [{"name": "key", "type": "int", "field-id": 129},
                       {"name": "value", "type": "bytes", "field-id": 130}]}}]},
        {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 131},
        {"name": "split_offsets", "default": null, "field-id": 132, "type": ["null",
          {"type": "array", "items": "long", "element-id": 133}]},
        {"name": "equality_ids", "default": null, "field-id": 135, "type": ["null",
          {"type": "array", "items": "int", "element-id": 136}]},
        {"name": "sort_order_id", "type": ["null", "int"], "default": null, "field-id": 140}
      ]}}
  ]
}"#;

/// A manifest list entry (`manifest_file`, v2). The field ids are the spec's.
const MANIFEST_LIST_SCHEMA: &str = r#"{
  "type": "record", "name": "manifest_file",
  "fields": [
    {"name": "manifest_path", "type": "string", "field-id": 500},
    {"name": "manifest_length", "type": "long", "field-id": 501},
    {"name": "partition_spec_id", "type": "int", "field-id": 502},
    {"name": "content", "type": "int", "field-id": 517},
    {"name": "sequence_number", "type": "long", "field-id": 515},
    {"name": "min_sequence_number", "type": "long", "field-id": 516},
    {"name": "added_snapshot_id", "type": "long", "field-id": 503},
    {"name": "added_files_count", "type": "int", "field-id": 504},
    {"name": "existing_files_count", "type": "int", "field-id": 505},
    {"name": "deleted_files_count", "type": "int", "field-id": 506},
    {"name": "added_rows_count", "type": "long", "field-id": 512},
    {"name": "existing_rows_count", "type": "long", "field-id": 513},
    {"name": "deleted_rows_count", "type": "long", "field-id": 514},
    {"name": "partitions", "default": null, "field-id": 507, "type": ["null",
      {"type": "array", "element-id": 508, "items": {"type": "record", "name": "r508",
        "fields": [
          {"name": "contains_null", "type": "boolean", "field-id": 509},
          {"name": "contains_nan", "type": ["null", "boolean"], "default": null, "field-id": 518},
          {"name": "lower_bound", "type": ["null", "bytes"], "default": null, "field-id": 510},
          {"name": "upper_bound", "type": ["null", "bytes"], "default": null, "field-id": 511}
        ]}}]},
    {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 519}
  ]
}"#;

static MANIFEST: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(MANIFEST_SCHEMA).expect("the manifest schema parses"));
static MANIFEST_LIST: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(MANIFEST_LIST_SCHEMA).expect("the manifest list schema parses")
});

/// Avro metadata key of a manifest: the leader epoch of the partition leader that wrote it.
/// Not an Iceberg key (readers ignore it): it fences a deposed leader's commits.
const LEADER_EPOCH_KEY: &str = "strata.leader-epoch";

/// A manifest entry's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Kept from an earlier snapshot.
    Existing = 0,
    /// Added by the snapshot that wrote the manifest.
    Added = 1,
    /// Removed by the snapshot that wrote the manifest.
    Deleted = 2,
}

/// A data file as a manifest names it. Bounds and counts are written for `offset` and
/// `timestamp` only: the columns queries prune on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Absolute URI.
    pub path: String,
    /// The Kafka partition (the identity partition value).
    pub partition: i32,
    /// Rows.
    pub record_count: i64,
    /// Bytes of the object.
    pub file_size_in_bytes: i64,
    /// Smallest and largest offset of its rows, when known exactly.
    pub offsets: Option<(i64, i64)>,
    /// Smallest and largest timestamp of its rows (milliseconds), when it has rows.
    pub timestamps_ms: Option<(i64, i64)>,
}

/// An entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// What the snapshot that wrote the manifest did with the file.
    pub status: Status,
    /// The snapshot that added (or, when deleted, removed) the file; `None` inherits the
    /// manifest's (only for [`Status::Added`]).
    pub snapshot_id: Option<i64>,
    /// Data sequence number; `None` inherits the manifest's (only for [`Status::Added`]).
    pub sequence_number: Option<i64>,
    /// File sequence number; `None` as `sequence_number`.
    pub file_sequence_number: Option<i64>,
    /// The file.
    pub file: DataFile,
}

/// An entry of a manifest list: one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Absolute URI.
    pub manifest_path: String,
    /// Bytes of the manifest.
    pub manifest_length: i64,
    /// Sequence number of the snapshot that added it.
    pub sequence_number: i64,
    /// Smallest data sequence number of its live files.
    pub min_sequence_number: i64,
    /// The snapshot that added it.
    pub added_snapshot_id: i64,
    /// Files added.
    pub added_files_count: i32,
    /// Files kept.
    pub existing_files_count: i32,
    /// Files removed.
    pub deleted_files_count: i32,
    /// Rows added.
    pub added_rows_count: i64,
    /// Rows kept.
    pub existing_rows_count: i64,
    /// Rows removed.
    pub deleted_rows_count: i64,
    /// The partition all its files are in (each manifest holds one partition's files); `None`
    /// when it holds none.
    pub partition: Option<i32>,
}

fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// A map-as-array of `(field id, value)` pairs, or null when empty.
fn id_map(pairs: Vec<(i32, Value)>) -> Value {
    optional((!pairs.is_empty()).then(|| {
        Value::Array(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    Value::Record(vec![("key".into(), Value::Int(k)), ("value".into(), v)])
                })
                .collect(),
        )
    }))
}

fn data_file_value(f: &DataFile) -> Value {
    // Single-value serialization: little-endian longs, timestamps in microseconds.
    let long = |v: i64| Value::Bytes(v.to_le_bytes().to_vec());
    let micros = |ms: i64| long(ms.saturating_mul(1000));
    let mut counted = Vec::new();
    let (mut lower, mut upper) = (Vec::new(), Vec::new());
    if let Some((min, max)) = f.offsets {
        counted.push(field_id::OFFSET);
        lower.push((field_id::OFFSET, long(min)));
        upper.push((field_id::OFFSET, long(max)));
    }
    if let Some((min, max)) = f.timestamps_ms {
        counted.push(field_id::TIMESTAMP);
        lower.push((field_id::TIMESTAMP, micros(min)));
        upper.push((field_id::TIMESTAMP, micros(max)));
    }
    let counts = |value: i64| id_map(counted.iter().map(|id| (*id, Value::Long(value))).collect());
    Value::Record(vec![
        ("content".into(), Value::Int(0)),
        ("file_path".into(), Value::String(f.path.clone())),
        ("file_format".into(), Value::String("PARQUET".into())),
        (
            "partition".into(),
            Value::Record(vec![(
                "partition".into(),
                optional(Some(Value::Int(f.partition))),
            )]),
        ),
        ("record_count".into(), Value::Long(f.record_count)),
        (
            "file_size_in_bytes".into(),
            Value::Long(f.file_size_in_bytes),
        ),
        ("column_sizes".into(), optional(None)),
        ("value_counts".into(), counts(f.record_count)),
        ("null_value_counts".into(), counts(0)),
        ("nan_value_counts".into(), optional(None)),
        ("lower_bounds".into(), id_map(lower)),
        ("upper_bounds".into(), id_map(upper)),
        ("key_metadata".into(), optional(None)),
        ("split_offsets".into(), optional(None)),
        ("equality_ids".into(), optional(None)),
        (
            "sort_order_id".into(),
            optional(Some(Value::Int(metadata::SORT_ORDER_ID))),
        ),
    ])
}

fn entry_value(e: &ManifestEntry) -> Value {
    Value::Record(vec![
        ("status".into(), Value::Int(e.status as i32)),
        (
            "snapshot_id".into(),
            optional(e.snapshot_id.map(Value::Long)),
        ),
        (
            "sequence_number".into(),
            optional(e.sequence_number.map(Value::Long)),
        ),
        (
            "file_sequence_number".into(),
            optional(e.file_sequence_number.map(Value::Long)),
        ),
        ("data_file".into(), data_file_value(&e.file)),
    ])
}

fn codec() -> Codec {
    // Deflate, as Iceberg's Java library writes manifests by default: every reader has it.
    Codec::Deflate(DeflateSettings::default())
}

/// A manifest of `entries` (one partition's files), written by the leader at `leader_epoch`.
pub fn write_manifest(entries: &[ManifestEntry], leader_epoch: i32) -> Vec<u8> {
    let mut writer = Writer::with_codec(&MANIFEST, Vec::new(), codec());
    let schema = serde_json::to_string(&metadata::schema()).expect("JSON");
    let spec = serde_json::to_string(&metadata::partition_fields()).expect("JSON");
    for (key, value) in [
        ("schema", schema),
        ("schema-id", metadata::SCHEMA_ID.to_string()),
        ("partition-spec", spec),
        ("partition-spec-id", metadata::SPEC_ID.to_string()),
        ("format-version", metadata::FORMAT_VERSION.to_string()),
        ("content", "data".to_string()),
        (LEADER_EPOCH_KEY, leader_epoch.to_string()),
    ] {
        writer
            .add_user_metadata(key.to_string(), value)
            .expect("metadata before the first entry");
    }
    for e in entries {
        writer
            .append(entry_value(e))
            .expect("entries match the manifest schema");
    }
    writer.into_inner().expect("writing to memory")
}

/// A manifest list of `manifests`, for snapshot `snapshot_id` (child of `parent_snapshot_id`)
/// at `sequence_number`.
pub fn write_manifest_list(
    manifests: &[ManifestFile],
    snapshot_id: i64,
    parent_snapshot_id: Option<i64>,
    sequence_number: i64,
) -> Vec<u8> {
    let mut writer = Writer::with_codec(&MANIFEST_LIST, Vec::new(), codec());
    let parent = parent_snapshot_id.map_or("null".to_string(), |p| p.to_string());
    for (key, value) in [
        ("snapshot-id", snapshot_id.to_string()),
        ("parent-snapshot-id", parent),
        ("sequence-number", sequence_number.to_string()),
        ("format-version", metadata::FORMAT_VERSION.to_string()),
    ] {
        writer
            .add_user_metadata(key.to_string(), value)
            .expect("metadata before the first entry");
    }
    for m in manifests {
        let bound = |p: Option<i32>| optional(p.map(|p| Value::Bytes(p.to_le_bytes().to_vec())));
        let summary = Value::Record(vec![
            ("contains_null".into(), Value::Boolean(false)),
            ("contains_nan".into(), optional(None)),
            ("lower_bound".into(), bound(m.partition)),
            ("upper_bound".into(), bound(m.partition)),
        ]);
        let value = Value::Record(vec![
            (
                "manifest_path".into(),
                Value::String(m.manifest_path.clone()),
            ),
            ("manifest_length".into(), Value::Long(m.manifest_length)),
            ("partition_spec_id".into(), Value::Int(metadata::SPEC_ID)),
            ("content".into(), Value::Int(0)),
            ("sequence_number".into(), Value::Long(m.sequence_number)),
            (
                "min_sequence_number".into(),
                Value::Long(m.min_sequence_number),
            ),
            ("added_snapshot_id".into(), Value::Long(m.added_snapshot_id)),
            ("added_files_count".into(), Value::Int(m.added_files_count)),
            (
                "existing_files_count".into(),
                Value::Int(m.existing_files_count),
            ),
            (
                "deleted_files_count".into(),
                Value::Int(m.deleted_files_count),
            ),
            ("added_rows_count".into(), Value::Long(m.added_rows_count)),
            (
                "existing_rows_count".into(),
                Value::Long(m.existing_rows_count),
            ),
            (
                "deleted_rows_count".into(),
                Value::Long(m.deleted_rows_count),
            ),
            (
                "partitions".into(),
                optional(Some(Value::Array(vec![summary]))),
            ),
            ("key_metadata".into(), optional(None)),
        ]);
        writer
            .append(value)
            .expect("entries match the manifest list schema");
    }
    writer.into_inner().expect("writing to memory")
}

/// A record's fields by name, for reading files this module wrote (decoded with their own
/// schema, so fields are where the writer put them).
struct Fields<'a> {
    what: &'a str,
    fields: HashMap<&'a str, &'a Value>,
}

impl<'a> Fields<'a> {
    fn of(what: &'a str, value: &'a Value) -> Result<Self> {
        let Value::Record(fields) = value else {
            return Err(corrupt(what, "an entry is not a record"));
        };
        Ok(Self {
            what,
            fields: fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        })
    }

    /// The field's value, unwrapped from an optional's union; `None` when null or absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        match self.fields.get(name)? {
            Value::Null => None,
            Value::Union(_, v) if **v == Value::Null => None,
            Value::Union(_, v) => Some(v),
            v => Some(v),
        }
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.get(name)
            .ok_or_else(|| corrupt(self.what, &format!("{name} is missing")))
    }

    fn long(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Long(v)) => Ok(Some(*v)),
            Some(Value::Int(v)) => Ok(Some(i64::from(*v))),
            Some(_) => Err(corrupt(self.what, &format!("{name} is not a long"))),
        }
    }

    fn required_long(&self, name: &str) -> Result<i64> {
        self.long(name)?
            .ok_or_else(|| corrupt(self.what, &format!("{name} is missing")))
    }

    fn int(&self, name: &str) -> Result<i32> {
        match self.required(name)? {
            Value::Int(v) => Ok(*v),
            _ => Err(corrupt(self.what, &format!("{name} is not an int"))),
        }
    }

    fn string(&self, name: &str) -> Result<&'a str> {
        match self.required(name)? {
            Value::String(v) => Ok(v),
            _ => Err(corrupt(self.what, &format!("{name} is not a string"))),
        }
    }

    /// A map-as-array field of `bytes` values, by key.
    fn byte_map(&self, name: &str) -> Result<HashMap<i32, &'a [u8]>> {
        let Some(value) = self.get(name) else {
            return Ok(HashMap::new());
        };
        let Value::Array(items) = value else {
            return Err(corrupt(self.what, &format!("{name} is not an array")));
        };
        items
            .iter()
            .map(|item| {
                let pair = Fields::of(self.what, item)?;
                match pair.required("value")? {
                    Value::Bytes(b) => Ok((pair.int("key")?, b.as_slice())),
                    _ => Err(corrupt(
                        self.what,
                        &format!("a value of {name} is not bytes"),
                    )),
                }
            })
            .collect()
    }
}

fn corrupt(what: &str, reason: &str) -> Error {
    Error::Corrupt(format!("Iceberg {what}: {reason}"))
}

fn avro_error(what: &str, e: apache_avro::Error) -> Error {
    corrupt(what, &e.to_string())
}

fn le_long(what: &str, bytes: Option<&&[u8]>) -> Result<Option<i64>> {
    bytes
        .map(|b| {
            <[u8; 8]>::try_from(*b)
                .map(i64::from_le_bytes)
                .map_err(|_| corrupt(what, "a bound of a long column is not 8 bytes"))
        })
        .transpose()
}

fn data_file(what: &str, value: &Value) -> Result<DataFile> {
    let f = Fields::of(what, value)?;
    let partition = Fields::of(what, f.required("partition")?)?.int("partition")?;
    let (lower, upper) = (f.byte_map("lower_bounds")?, f.byte_map("upper_bounds")?);
    let bounds = |id: i32| -> Result<Option<(i64, i64)>> {
        Ok(le_long(what, lower.get(&id))?.zip(le_long(what, upper.get(&id))?))
    };
    Ok(DataFile {
        path: f.string("file_path")?.to_string(),
        partition,
        record_count: f.required_long("record_count")?,
        file_size_in_bytes: f.required_long("file_size_in_bytes")?,
        offsets: bounds(field_id::OFFSET)?,
        timestamps_ms: bounds(field_id::TIMESTAMP)?.map(|(a, b)| (a / 1000, b / 1000)),
    })
}

/// A manifest's entries and the leader epoch it was written at (0 when it carries none).
pub fn read_manifest(bytes: &[u8]) -> Result<(Vec<ManifestEntry>, i32)> {
    let what = "manifest";
    let reader = Reader::new(bytes).map_err(|e| avro_error(what, e))?;
    let leader_epoch = match reader.user_metadata().get(LEADER_EPOCH_KEY) {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(what, "the leader epoch is not a number"))?,
    };
    let mut entries = Vec::new();
    for value in reader {
        let value = value.map_err(|e| avro_error(what, e))?;
        let e = Fields::of(what, &value)?;
        let status = match e.int("status")? {
            0 => Status::Existing,
            1 => Status::Added,
            2 => Status::Deleted,
            other => return Err(corrupt(what, &format!("status {other}"))),
        };
        entries.push(ManifestEntry {
            status,
            snapshot_id: e.long("snapshot_id")?,
            sequence_number: e.long("sequence_number")?,
            file_sequence_number: e.long("file_sequence_number")?,
            file: data_file(what, e.required("data_file")?)?,
        });
    }
    Ok((entries, leader_epoch))
}

/// A manifest list's manifests.
pub fn read_manifest_list(bytes: &[u8]) -> Result<Vec<ManifestFile>> {
    let what = "manifest list";
    let reader = Reader::new(bytes).map_err(|e| avro_error(what, e))?;
    let mut manifests = Vec::new();
    for value in reader {
        let value = value.map_err(|e| avro_error(what, e))?;
        let m = Fields::of(what, &value)?;
        let count = |name: &str| m.int(name);
        let partition = match m.get("partitions") {
            Some(Value::Array(summaries)) if summaries.len() == 1 => {
                let summary = Fields::of(what, &summaries[0])?;
                match summary.get("lower_bound") {
                    None => None,
                    Some(Value::Bytes(b)) => Some(
                        <[u8; 4]>::try_from(b.as_slice())
                            .map(i32::from_le_bytes)
                            .map_err(|_| corrupt(what, "a partition bound is not 4 bytes"))?,
                    ),
                    Some(_) => return Err(corrupt(what, "a partition bound is not bytes")),
                }
            }
            _ => return Err(corrupt(what, "a manifest has no partition summary")),
        };
        manifests.push(ManifestFile {
            manifest_path: m.string("manifest_path")?.to_string(),
            manifest_length: m.required_long("manifest_length")?,
            sequence_number: m.required_long("sequence_number")?,
            min_sequence_number: m.required_long("min_sequence_number")?,
            added_snapshot_id: m.required_long("added_snapshot_id")?,
            added_files_count: count("added_files_count")?,
            existing_files_count: count("existing_files_count")?,
            deleted_files_count: count("deleted_files_count")?,
            added_rows_count: m.required_long("added_rows_count")?,
            existing_rows_count: m.required_long("existing_rows_count")?,
            deleted_rows_count: m.required_long("deleted_rows_count")?,
            partition,
        });
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partition: i32, n: i64) -> DataFile {
        DataFile {
            path: format!("s3://b/topic=t/partition={partition}/{n}.parquet"),
            partition,
            record_count: 10,
            file_size_in_bytes: 1234,
            offsets: (n % 2 == 0).then_some((n * 10, n * 10 + 9)),
            timestamps_ms: Some((1_700_000_000_000 + n, 1_700_000_000_999 + n)),
        }
    }

    #[test]
    fn manifests_round_trip() {
        let entries = vec![
            ManifestEntry {
                status: Status::Existing,
                snapshot_id: Some(7),
                sequence_number: Some(1),
                file_sequence_number: Some(1),
                file: file(3, 0),
            },
            ManifestEntry {
                status: Status::Added,
                snapshot_id: Some(8),
                sequence_number: None,
                file_sequence_number: None,
                file: file(3, 1),
            },
            ManifestEntry {
                status: Status::Deleted,
                snapshot_id: Some(8),
                sequence_number: Some(1),
                file_sequence_number: Some(1),
                file: DataFile {
                    record_count: 0,
                    offsets: None,
                    timestamps_ms: None,
                    ..file(3, 2)
                },
            },
        ];
        let bytes = write_manifest(&entries, 4);
        assert_eq!(read_manifest(&bytes).unwrap(), (entries, 4));
        assert_eq!(read_manifest(&write_manifest(&[], 0)).unwrap(), (vec![], 0));
    }

    fn listed(partition: Option<i32>) -> ManifestFile {
        ManifestFile {
            manifest_path: "file:///l/_iceberg/t/metadata/x-m0.avro".into(),
            manifest_length: 900,
            sequence_number: 5,
            min_sequence_number: 2,
            added_snapshot_id: 77,
            added_files_count: 1,
            existing_files_count: 2,
            deleted_files_count: 3,
            added_rows_count: 4,
            existing_rows_count: 5,
            deleted_rows_count: 6,
            partition,
        }
    }

    #[test]
    fn manifest_lists_round_trip() {
        let manifests = vec![listed(Some(0)), listed(Some(-1)), listed(None)];
        let bytes = write_manifest_list(&manifests, 77, Some(76), 5);
        assert_eq!(read_manifest_list(&bytes).unwrap(), manifests);
        assert!(
            read_manifest_list(&write_manifest_list(&[], 1, None, 1))
                .unwrap()
                .is_empty()
        );
    }

    /// Readers resolve fields by id: the schema in each file's header keeps every `field-id`
    /// (and `element-id`) of the spec, and the metadata keys the spec asks for are there.
    #[test]
    fn headers_carry_field_ids_and_the_spec_metadata() {
        let bytes = write_manifest(&[], 2);
        // The header as written (it is not compressed), not only as a reader parses it back.
        let raw = String::from_utf8_lossy(&bytes);
        assert!(
            raw.contains(
                r#""name":"partition","type":["null","int"],"default":null,"field-id":1000"#
            ),
            "{raw}"
        );
        let reader = Reader::new(&bytes[..]).unwrap();
        let metadata = reader.user_metadata();
        for key in [
            "schema",
            "schema-id",
            "partition-spec",
            "partition-spec-id",
            "format-version",
            "content",
        ] {
            assert!(metadata.contains_key(key), "{key}");
        }
        assert_eq!(metadata["format-version"], b"2");
        assert_eq!(metadata["content"], b"data");
        let spec: serde_json::Value = serde_json::from_slice(&metadata["partition-spec"]).unwrap();
        assert_eq!(spec[0]["field-id"], 1000);
        let header = serde_json::to_string(reader.writer_schema()).unwrap();
        for id in [0, 1, 2, 3, 4, 100, 102, 103, 125, 126, 127, 134, 140, 1000] {
            assert!(
                header.contains(&format!("\"field-id\":{id}")),
                "field-id {id}: {header}"
            );
        }
        assert!(header.contains("\"element-id\":133"), "{header}");
        assert!(header.contains("\"logicalType\":\"map\""), "{header}");

        let bytes = write_manifest_list(&[], 1, None, 1);
        let reader = Reader::new(&bytes[..]).unwrap();
        let metadata = reader.user_metadata();
        assert_eq!(metadata["snapshot-id"], b"1");
        assert_eq!(metadata["parent-snapshot-id"], b"null");
        assert_eq!(metadata["sequence-number"], b"1");
        let header = serde_json::to_string(reader.writer_schema()).unwrap();
        for id in [500, 501, 502, 503, 507, 509, 510, 515, 516, 517, 519] {
            assert!(
                header.contains(&format!("\"field-id\":{id}")),
                "field-id {id}: {header}"
            );
        }
        assert!(header.contains("\"element-id\":508"), "{header}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_manifest(b"not avro").is_err());
        assert!(read_manifest_list(b"").is_err());
        // A manifest list is not a manifest, nor the other way round.
        let list = write_manifest_list(&[listed(Some(1))], 1, None, 1);
        let e = read_manifest(&list).unwrap_err().to_string();
        assert!(e.contains("Iceberg manifest: status is missing"), "{e}");
        let manifest = write_manifest(
            &[ManifestEntry {
                status: Status::Added,
                snapshot_id: None,
                sequence_number: None,
                file_sequence_number: None,
                file: file(0, 0),
            }],
            0,
        );
        assert!(read_manifest_list(&manifest).is_err());
        // A truncated file.
        assert!(read_manifest(&manifest[..manifest.len() / 2]).is_err());
    }
}
