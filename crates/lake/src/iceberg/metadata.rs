//! Table metadata (`v<N>.metadata.json`, format v2) as serde structs, the table's schema,
//! partition spec, sort order and name mapping, and the pure steps of a commit: adding a
//! snapshot, expiring old ones, trimming the metadata log. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::parquet_file::field_id;

/// Table format version.
pub const FORMAT_VERSION: i32 = 2;
/// The one schema's id.
pub const SCHEMA_ID: i32 = 0;
/// The one partition spec's id.
pub const SPEC_ID: i32 = 0;
/// Field id of the `partition` partition field (partition field ids start at 1000).
pub const PARTITION_FIELD_ID: i32 = 1000;
/// Id of the sort order the files have (by offset).
pub const SORT_ORDER_ID: i32 = 1;
/// Table property: how many earlier `v<N>.metadata.json` the metadata log keeps; older ones
/// are deleted after a commit (Iceberg's `write.metadata.previous-versions-max`, same default).
pub const PREVIOUS_VERSIONS_MAX: usize = 100;

/// The table's schema (id [`SCHEMA_ID`]): the lake's columns with their field ids
/// ([`field_id`]), and `partition`, which no file holds (readers fill it from the identity
/// partition value, the spec's first column projection rule). Timestamps are `timestamptz` (microseconds); the files keep
/// TIMESTAMP(MILLIS) and readers convert. Iceberg has no 16-bit integer: `batch_attributes` and
/// `producer_epoch` are `int`, which readers widen from the files' INT(16).
pub fn schema() -> Value {
    use field_id::*;
    let f = |id: i32, name: &str, required: bool, kind: Value| json!({"id": id, "name": name, "required": required, "type": kind});
    json!({
        "type": "struct",
        "schema-id": SCHEMA_ID,
        "fields": [
            f(OFFSET, "offset", true, json!("long")),
            f(TIMESTAMP, "timestamp", true, json!("timestamptz")),
            f(KEY, "key", false, json!("binary")),
            f(VALUE, "value", false, json!("binary")),
            f(HEADERS, "headers", true, json!({
                "type": "list",
                "element-id": HEADER,
                "element-required": true,
                "element": {
                    "type": "struct",
                    "fields": [
                        f(HEADER_KEY, "key", true, json!("string")),
                        f(HEADER_VALUE, "value", false, json!("binary")),
                    ],
                },
            })),
            f(BATCH_OFFSET, "batch_offset", true, json!("long")),
            f(BATCH_ATTRIBUTES, "batch_attributes", true, json!("int")),
            f(PRODUCER_ID, "producer_id", true, json!("long")),
            f(PRODUCER_EPOCH, "producer_epoch", true, json!("int")),
            f(SEQUENCE, "sequence", true, json!("int")),
            f(PARTITION_LEADER_EPOCH, "partition_leader_epoch", true, json!("int")),
            // Optional, though never null: pyiceberg (0.12) fills a column missing from the files
            // from the identity partition value only when the column is optional.
            f(PARTITION, "partition", false, json!("int")),
        ],
    })
}

/// The partition spec's fields: `identity(partition)`.
pub fn partition_fields() -> Value {
    json!([{
        "name": "partition",
        "transform": "identity",
        "source-id": field_id::PARTITION,
        "field-id": PARTITION_FIELD_ID,
    }])
}

/// The partition spec (id [`SPEC_ID`]).
pub fn partition_spec() -> Value {
    json!({"spec-id": SPEC_ID, "fields": partition_fields()})
}

/// The sort order of every file: by offset, ascending.
pub fn sort_order() -> Value {
    json!({
        "order-id": SORT_ORDER_ID,
        "fields": [{
            "transform": "identity",
            "source-id": field_id::OFFSET,
            "direction": "asc",
            "null-order": "nulls-last",
        }],
    })
}

/// `schema.name-mapping.default`: field ids by column name, for the files written before they
/// carried ids. A list's element is `element` in Iceberg's naming and `item` in Arrow's, which
/// is what the lake's files hold.
pub fn name_mapping() -> Value {
    use field_id::*;
    let m = |id: i32, name: &str| json!({"field-id": id, "names": [name]});
    json!([
        m(OFFSET, "offset"),
        m(TIMESTAMP, "timestamp"),
        m(KEY, "key"),
        m(VALUE, "value"),
        {
            "field-id": HEADERS,
            "names": ["headers"],
            "fields": [{
                "field-id": HEADER,
                "names": ["element", "item"],
                "fields": [m(HEADER_KEY, "key"), m(HEADER_VALUE, "value")],
            }],
        },
        m(BATCH_OFFSET, "batch_offset"),
        m(BATCH_ATTRIBUTES, "batch_attributes"),
        m(PRODUCER_ID, "producer_id"),
        m(PRODUCER_EPOCH, "producer_epoch"),
        m(SEQUENCE, "sequence"),
        m(PARTITION_LEADER_EPOCH, "partition_leader_epoch"),
        m(PARTITION, "partition"),
    ])
}

/// `v<N>.metadata.json`. Fields this crate does not use (statistics, other schemas a tool may
/// have added) are kept as they were read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    /// Always [`FORMAT_VERSION`].
    pub format_version: i32,
    /// The table's UUID, fixed at creation.
    pub table_uuid: String,
    /// The table's location URI.
    pub location: String,
    /// The sequence number of the last snapshot.
    pub last_sequence_number: i64,
    /// When the metadata was written.
    pub last_updated_ms: i64,
    /// The largest field id of the schemas.
    pub last_column_id: i32,
    /// Schemas (one).
    pub schemas: Vec<Value>,
    /// The current schema.
    pub current_schema_id: i32,
    /// Partition specs (one).
    pub partition_specs: Vec<Value>,
    /// The spec new files are written with.
    pub default_spec_id: i32,
    /// The largest partition field id.
    pub last_partition_id: i32,
    /// Table properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The current snapshot; written -1 when there is none, as Iceberg's Java library does.
    #[serde(
        default,
        serialize_with = "snapshot_id_or_minus_one",
        deserialize_with = "minus_one_as_none"
    )]
    pub current_snapshot_id: Option<i64>,
    /// Valid snapshots, oldest first.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// When each snapshot became current.
    #[serde(default)]
    pub snapshot_log: Vec<SnapshotLogEntry>,
    /// The earlier metadata files still kept.
    #[serde(default)]
    pub metadata_log: Vec<MetadataLogEntry>,
    /// Sort orders.
    pub sort_orders: Vec<Value>,
    /// The sort order of new files.
    pub default_sort_order_id: i32,
    /// Named references: `main`.
    #[serde(default)]
    pub refs: BTreeMap<String, SnapshotRef>,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn snapshot_id_or_minus_one<S: Serializer>(id: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(id.unwrap_or(-1))
}

fn minus_one_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.filter(|id| *id != -1))
}

/// A snapshot: the table's files at one commit, through its manifest list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    /// Unique id.
    pub snapshot_id: i64,
    /// The snapshot it was built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<i64>,
    /// Its sequence number.
    pub sequence_number: i64,
    /// When it was committed.
    pub timestamp_ms: i64,
    /// URI of its manifest list.
    pub manifest_list: String,
    /// `operation` and counts.
    pub summary: BTreeMap<String, String>,
    /// The schema it was written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<i32>,
}

/// An entry of the snapshot log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotLogEntry {
    /// The snapshot that became current.
    pub snapshot_id: i64,
    /// When.
    pub timestamp_ms: i64,
}

/// An entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetadataLogEntry {
    /// URI of an earlier metadata file.
    pub metadata_file: String,
    /// When it was written.
    pub timestamp_ms: i64,
}

/// A branch or tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRef {
    /// The snapshot it points at.
    pub snapshot_id: i64,
    /// `branch` or `tag`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Retention settings, kept as read.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl TableMetadata {
    /// A new table at `location` with no snapshot.
    pub fn new(
        location: String,
        table_uuid: String,
        now_ms: i64,
        properties: BTreeMap<String, String>,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            table_uuid,
            location,
            last_sequence_number: 0,
            last_updated_ms: now_ms,
            last_column_id: field_id::LAST,
            schemas: vec![schema()],
            current_schema_id: SCHEMA_ID,
            partition_specs: vec![partition_spec()],
            default_spec_id: SPEC_ID,
            last_partition_id: PARTITION_FIELD_ID,
            properties,
            current_snapshot_id: None,
            snapshots: Vec::new(),
            snapshot_log: Vec::new(),
            metadata_log: Vec::new(),
            sort_orders: vec![sort_order()],
            default_sort_order_id: SORT_ORDER_ID,
            refs: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }

    /// The current snapshot.
    pub fn current_snapshot(&self) -> Option<&Snapshot> {
        let id = self.current_snapshot_id?;
        self.snapshots.iter().find(|s| s.snapshot_id == id)
    }

    /// The next metadata version: `snapshot` becomes current (its parent must be the current
    /// one), and `previous_file` (this version's own file, when it has one) enters the
    /// metadata log.
    pub fn with_snapshot(
        &self,
        snapshot: Snapshot,
        previous_file: Option<String>,
        now_ms: i64,
    ) -> Self {
        assert_eq!(
            snapshot.parent_snapshot_id, self.current_snapshot_id,
            "a snapshot builds on the current one"
        );
        assert!(snapshot.sequence_number > self.last_sequence_number);
        let mut next = self.clone();
        next.last_sequence_number = snapshot.sequence_number;
        next.last_updated_ms = now_ms.max(self.last_updated_ms);
        next.current_snapshot_id = Some(snapshot.snapshot_id);
        next.snapshot_log.push(SnapshotLogEntry {
            snapshot_id: snapshot.snapshot_id,
            timestamp_ms: snapshot.timestamp_ms,
        });
        next.refs.insert(
            "main".into(),
            SnapshotRef {
                snapshot_id: snapshot.snapshot_id,
                kind: "branch".into(),
                other: BTreeMap::new(),
            },
        );
        next.snapshots.push(snapshot);
        if let Some(file) = previous_file {
            next.metadata_log.push(MetadataLogEntry {
                metadata_file: file,
                timestamp_ms: self.last_updated_ms,
            });
        }
        next
    }

    /// Expires snapshots: the oldest ones committed more than `retention_ms` before `now_ms`,
    /// never the current one nor one that a branch or tag other than `main` names. Only a
    /// prefix of the history expires (the first snapshot kept stops it, whatever the clocks of
    /// the brokers that committed the later ones), at most `max` at once. Returns the expired
    /// snapshots; the snapshot log loses their entries.
    pub fn expire_snapshots(
        &mut self,
        now_ms: i64,
        retention_ms: i64,
        max: usize,
    ) -> Vec<Snapshot> {
        let pinned: Vec<i64> = self
            .refs
            .iter()
            .filter(|(name, _)| name.as_str() != "main")
            .map(|(_, r)| r.snapshot_id)
            .chain(self.current_snapshot_id)
            .collect();
        let cutoff = now_ms.saturating_sub(retention_ms.max(0));
        let count = self
            .snapshots
            .iter()
            .take(max)
            .take_while(|s| s.timestamp_ms < cutoff && !pinned.contains(&s.snapshot_id))
            .count();
        let expired: Vec<Snapshot> = self.snapshots.drain(..count).collect();
        let gone = |id: i64| expired.iter().any(|s| s.snapshot_id == id);
        self.snapshot_log.retain(|e| !gone(e.snapshot_id));
        if let Some(first) = self.snapshots.first() {
            self.snapshots[0].parent_snapshot_id = first.parent_snapshot_id.filter(|p| !gone(*p));
        }
        expired
    }

    /// Trims the metadata log to its last `keep` entries; returns the metadata files dropped
    /// from it (to delete).
    pub fn trim_metadata_log(&mut self, keep: usize) -> Vec<String> {
        let drop = self.metadata_log.len().saturating_sub(keep);
        self.metadata_log
            .drain(..drop)
            .map(|e| e.metadata_file)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: i64, parent: Option<i64>, seq: i64, ts: i64) -> Snapshot {
        Snapshot {
            snapshot_id: id,
            parent_snapshot_id: parent,
            sequence_number: seq,
            timestamp_ms: ts,
            manifest_list: format!("file:///t/metadata/snap-{id}.avro"),
            summary: [("operation".to_string(), "append".to_string())].into(),
            schema_id: Some(SCHEMA_ID),
        }
    }

    fn history(timestamps: &[i64]) -> TableMetadata {
        let mut m = TableMetadata::new("file:///t".into(), "u".into(), 0, BTreeMap::new());
        for (i, ts) in timestamps.iter().enumerate() {
            let id = i as i64 + 1;
            let parent = (id > 1).then_some(id - 1);
            m = m.with_snapshot(
                snapshot(id, parent, id, *ts),
                Some(format!("v{id}.metadata.json")),
                *ts,
            );
        }
        m
    }

    #[test]
    fn metadata_round_trips_and_keeps_unknown_fields() {
        let mut m = history(&[10, 20]);
        m.other.insert("statistics".into(), json!([]));
        let text = serde_json::to_string(&m).unwrap();
        let back: TableMetadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        let empty = TableMetadata::new("l".into(), "u".into(), 0, BTreeMap::new());
        let text = serde_json::to_string(&empty).unwrap();
        assert!(text.contains("\"current-snapshot-id\":-1"), "{text}");
        let back: TableMetadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.current_snapshot_id, None);
    }

    #[test]
    fn expiry_takes_an_old_prefix_and_never_the_current_snapshot() {
        let mut m = history(&[100, 200, 150, 400]);
        // 150 is old but follows 200, which is kept: the prefix stops at 200.
        let expired = m.expire_snapshots(1000, 850, usize::MAX);
        assert_eq!(
            expired.iter().map(|s| s.snapshot_id).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(m.snapshots[0].snapshot_id, 2);
        assert_eq!(m.snapshots[0].parent_snapshot_id, None);
        assert_eq!(m.snapshot_log.len(), 3);
        // Everything is old: all but the current one go, at most `max` at once.
        assert_eq!(m.expire_snapshots(10_000, 0, 1).len(), 1);
        assert_eq!(m.expire_snapshots(10_000, 0, usize::MAX).len(), 1);
        assert_eq!(m.snapshots.len(), 1);
        assert_eq!(m.current_snapshot().unwrap().snapshot_id, 4);
        assert!(m.expire_snapshots(10_000, 0, usize::MAX).is_empty());
    }

    #[test]
    fn the_metadata_log_keeps_the_last_versions() {
        let mut m = history(&[1, 2, 3, 4]);
        assert_eq!(m.metadata_log.len(), 4);
        assert_eq!(
            m.trim_metadata_log(2),
            ["v1.metadata.json", "v2.metadata.json"]
        );
        assert_eq!(m.metadata_log[0].metadata_file, "v3.metadata.json");
        assert!(m.trim_metadata_log(2).is_empty());
    }
}
