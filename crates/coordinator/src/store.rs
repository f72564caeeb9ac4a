//! Durable group state: committed offsets and group generations (with their members, where the
//! coordinator keeps them), as records in an offsets log ([`OffsetsLog`]), replayed when the
//! coordinator loads. Like Kafka's `__consumer_offsets`, a key's last record wins and a null value
//! deletes it. The log is compacted by appending the live state anew (a snapshot) and, once the
//! snapshot is durable, dropping what came before it.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::{Deserialize, Serialize};
use strata_log::batch::BatchHeader;

use crate::error::{Error, Result};
use crate::offsets_log::{Durable, LocalOffsetsLog, OffsetsLog, durable_now};

/// Records per batch when writing a snapshot.
const SNAPSHOT_BATCH_RECORDS: usize = 500;
/// Bytes read from the log at a time while replaying it.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

/// A record's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoreKey {
    /// A committed offset.
    Offset {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A group's generation.
    Group {
        /// Group id.
        group: String,
    },
}

impl StoreKey {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            Self::Offset { group, .. } | Self::Group { group } => group,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// Leader epoch of the last consumed record, -1 when unknown.
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
    /// Broker time of the commit.
    pub commit_timestamp_ms: i64,
}

/// A group's persisted state: its generation and, where the coordinator keeps them (a replicated
/// offsets log, so that a new coordinator takes the group over as it was), the protocol and the
/// members of its last stable generation, as Kafka's group metadata records hold them. The
/// optional fields are left out of the record when empty, so a generation-only record reads as
/// it always did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Last generation.
    pub generation_id: i32,
    /// Protocol type of the members ("consumer" for consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_type: Option<String>,
    /// The chosen assignor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,
    /// The leader's member id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The members of a stable generation with their assignments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRecord>,
}

/// A member as a group record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Member id.
    pub member_id: String,
    /// Static membership id (KIP-345).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i64,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i64,
    /// The member's metadata for the chosen assignor.
    #[serde(with = "hex")]
    pub metadata: Bytes,
    /// The member's assignment.
    #[serde(with = "hex")]
    pub assignment: Bytes,
}

/// Bytes as a hex string in the JSON records.
mod hex {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes.iter() {
            text.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("odd number of hex digits"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(D::Error::custom))
            .collect::<Result<Vec<u8>, _>>()
            .map(Bytes::from)
    }
}

/// A record's value; `None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreValue {
    /// For [`StoreKey::Offset`].
    Offset(CommittedOffset),
    /// For [`StoreKey::Group`].
    Group(GroupRecord),
}

/// The state the log holds.
pub type StoreState = BTreeMap<StoreKey, StoreValue>;

/// The offsets log: records of group state over an [`OffsetsLog`].
#[derive(Debug)]
pub struct OffsetStore {
    log: Box<dyn OffsetsLog>,
    /// A snapshot appended and not yet durable: `(its first offset, its last offset)`.
    pending_snapshot: Option<(i64, i64)>,
}

impl OffsetStore {
    /// Opens a single broker's local log in `dir` (recovering it after a crash) and replays it.
    pub fn open(dir: &Path, now_ms: i64) -> Result<(Self, StoreState)> {
        Self::load(Box::new(LocalOffsetsLog::open(dir, now_ms)?))
    }

    /// Replays `log` from its start to its end.
    pub fn load(log: Box<dyn OffsetsLog>) -> Result<(Self, StoreState)> {
        let state = replay(log.as_ref())?;
        Ok((
            Self {
                log,
                pending_snapshot: None,
            },
            state,
        ))
    }

    /// Appends records (a batch per [`SNAPSHOT_BATCH_RECORDS`]); returns the offset of the last
    /// one, `None` when there was nothing to append. They are durable once
    /// [`OffsetStore::durable`] says so.
    pub fn append(
        &mut self,
        records: &[(StoreKey, Option<StoreValue>)],
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let mut last = None;
        for chunk in records.chunks(SNAPSHOT_BATCH_RECORDS) {
            let batch = encode(chunk, now_ms);
            last = Some(self.log.append(&batch, now_ms)?);
        }
        Ok(last)
    }

    /// Resolves once the records up to `last_offset` (from [`OffsetStore::append`]) are durable.
    pub fn durable(&self, last_offset: Option<i64>) -> Durable {
        match last_offset {
            Some(offset) => self.log.durable(offset),
            None => durable_now(),
        }
    }

    /// When the log has grown enough (as its [`OffsetsLog`] judges), appends the live state as a
    /// snapshot; once the snapshot is durable (now, or at a later call), drops everything before
    /// it. A crash in between leaves both copies, which replay to the same state: any part of the
    /// log that starts at or before a whole snapshot replays to the state.
    pub fn compact_if_needed(&mut self, state: &StoreState, now_ms: i64) -> Result<()> {
        if let Some((start, last)) = self.pending_snapshot {
            if self.log.is_durable(last) {
                self.pending_snapshot = None;
                self.log.delete_before(start, now_ms)?;
            }
            return Ok(());
        }
        if !self.log.wants_compaction(state.len()) {
            return Ok(());
        }
        self.log.before_snapshot(now_ms)?;
        let start = self.log.log_end_offset();
        let live: Vec<(StoreKey, Option<StoreValue>)> = state
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        let Some(last) = self.append(&live, now_ms)? else {
            // Nothing is live: everything before is superseded as it stands.
            return self.log.delete_before(start, now_ms);
        };
        tracing::debug!(
            records = live.len(),
            start,
            "wrote a snapshot of the offsets log"
        );
        if self.log.is_durable(last) {
            self.log.delete_before(start, now_ms)
        } else {
            self.pending_snapshot = Some((start, last));
            Ok(())
        }
    }

    /// Flushes and closes the log.
    pub fn close(self, now_ms: i64) -> Result<()> {
        self.log.close(now_ms)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValueJson {
    Offset(CommittedOffset),
    Group(GroupRecord),
}

fn encode(records: &[(StoreKey, Option<StoreValue>)], now_ms: i64) -> BytesMut {
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(Bytes::from(
                serde_json::to_vec(key).expect("keys serialize"),
            )),
            value: value.as_ref().map(|v| {
                let json = match v {
                    StoreValue::Offset(o) => ValueJson::Offset(o.clone()),
                    StoreValue::Group(g) => ValueJson::Group(g.clone()),
                };
                Bytes::from(serde_json::to_vec(&json).expect("values serialize"))
            }),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, encoded.iter(), &options).expect("in-memory encoding");
    buf
}

fn replay(log: &dyn OffsetsLog) -> Result<StoreState> {
    let corrupt = |offset: i64, reason: String| Error::Corrupt {
        dir: log.dir(),
        offset,
        reason,
    };
    let mut state = StoreState::new();
    let mut offset = log.log_start_offset();
    while let Some(mut bytes) = log.read(offset, REPLAY_READ_BYTES)? {
        let before = offset;
        while let Ok(header) = BatchHeader::parse(&bytes) {
            if header.total_bytes() > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(header.total_bytes());
            let set = RecordBatchDecoder::decode(&mut batch)
                .map_err(|e| corrupt(header.base_offset, e.to_string()))?;
            for record in set.records.iter().filter(|r| r.offset >= offset) {
                apply(&mut state, record);
            }
            offset = header.next_offset();
        }
        if offset == before {
            // A read always holds its first batch whole: one that does not parse is damaged.
            return Err(corrupt(offset, "no whole batch at this offset".into()));
        }
    }
    Ok(state)
}

fn apply(state: &mut StoreState, record: &Record) {
    let Some(key) = record
        .key
        .as_ref()
        .and_then(|k| serde_json::from_slice::<StoreKey>(k).ok())
    else {
        tracing::warn!(
            offset = record.offset,
            "skipping an offsets log record with an unreadable key"
        );
        return;
    };
    let value = record
        .value
        .as_ref()
        .and_then(|v| match serde_json::from_slice::<ValueJson>(v) {
            Ok(ValueJson::Offset(o)) if matches!(key, StoreKey::Offset { .. }) => {
                Some(StoreValue::Offset(o))
            }
            Ok(ValueJson::Group(g)) if matches!(key, StoreKey::Group { .. }) => {
                Some(StoreValue::Group(g))
            }
            _ => None,
        });
    match value {
        Some(value) => state.insert(key, value),
        None => state.remove(&key),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_key(group: &str, partition: i32) -> StoreKey {
        StoreKey::Offset {
            group: group.into(),
            topic: "t".into(),
            partition,
        }
    }

    fn committed(offset: i64) -> Option<StoreValue> {
        Some(StoreValue::Offset(CommittedOffset {
            offset,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        }))
    }

    #[test]
    fn last_write_wins_and_tombstones_delete_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, state) = OffsetStore::open(dir.path(), 0).unwrap();
        assert!(state.is_empty());
        store
            .append(
                &[
                    (offset_key("g", 0), committed(5)),
                    (offset_key("g", 1), committed(7)),
                ],
                0,
            )
            .unwrap();
        store
            .append(
                &[
                    (offset_key("g", 0), committed(9)),
                    (offset_key("g", 1), None),
                ],
                0,
            )
            .unwrap();
        drop(store); // a crash: no clean close
        let (store, state) = OffsetStore::open(dir.path(), 0).unwrap();
        assert_eq!(state.get(&offset_key("g", 0)), committed(9).as_ref());
        assert!(!state.contains_key(&offset_key("g", 1)));
        store.close(0).unwrap();
    }

    #[test]
    fn compaction_keeps_the_live_state_and_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = OffsetStore::open(dir.path(), 0).unwrap();
        let mut state = StoreState::new();
        let big = "m".repeat(4000);
        for round in 0..3000i64 {
            let key = offset_key("g", (round % 10) as i32);
            let value = StoreValue::Offset(CommittedOffset {
                offset: round,
                leader_epoch: 0,
                metadata: big.clone(),
                commit_timestamp_ms: round,
            });
            store
                .append(&[(key.clone(), Some(value.clone()))], 0)
                .unwrap();
            state.insert(key, value);
            store.compact_if_needed(&state, 0).unwrap();
        }
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count();
        assert!(segments <= crate::offsets_log::SEGMENTS_BEFORE_COMPACTION);
        drop(store);
        let (_, replayed) = OffsetStore::open(dir.path(), 0).unwrap();
        assert_eq!(replayed, state);
    }

    /// An offsets log in memory whose appends become durable only when the test says so, like a
    /// replicated partition's whose followers have not fetched yet.
    #[derive(Debug, Default)]
    struct MemoryLog {
        batches: Vec<(i64, Bytes)>,
        start: i64,
        end: i64,
        /// Shared with the test, which moves it as replicas would.
        durable_below: std::sync::Arc<std::sync::atomic::AtomicI64>,
    }

    impl OffsetsLog for MemoryLog {
        fn append(&mut self, batch: &[u8], _now_ms: i64) -> Result<i64> {
            let mut batch = batch.to_vec();
            strata_log::batch::set_base_offset(&mut batch, self.end);
            let header = BatchHeader::parse(&batch).unwrap();
            self.batches.push((self.end, Bytes::from(batch)));
            self.end = header.next_offset();
            Ok(header.last_offset())
        }
        fn read(&self, offset: i64, _max_bytes: usize) -> Result<Option<Bytes>> {
            let mut out = BytesMut::new();
            for (base, batch) in &self.batches {
                let next = BatchHeader::parse(batch).unwrap().next_offset();
                if next > offset && next > self.start {
                    out.extend_from_slice(batch);
                }
                assert!(*base < next);
            }
            Ok((!out.is_empty()).then(|| out.freeze()))
        }
        fn log_start_offset(&self) -> i64 {
            self.start
        }
        fn log_end_offset(&self) -> i64 {
            self.end
        }
        fn durable(&self, _last_offset: i64) -> Durable {
            durable_now()
        }
        fn is_durable(&self, last_offset: i64) -> bool {
            last_offset
                < self
                    .durable_below
                    .load(std::sync::atomic::Ordering::Relaxed)
        }
        fn wants_compaction(&self, live_records: usize) -> bool {
            self.end - self.start > 2 * live_records as i64 + 4
        }
        fn before_snapshot(&mut self, _now_ms: i64) -> Result<()> {
            Ok(())
        }
        fn delete_before(&mut self, offset: i64, _now_ms: i64) -> Result<()> {
            let durable = self
                .durable_below
                .load(std::sync::atomic::Ordering::Relaxed);
            assert!(offset <= durable, "only what a durable snapshot superseded");
            self.batches
                .retain(|(_, b)| BatchHeader::parse(b).unwrap().next_offset() > offset);
            self.start = offset;
            Ok(())
        }
        fn dir(&self) -> std::path::PathBuf {
            "memory".into()
        }
        fn close(self: Box<Self>, _now_ms: i64) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_snapshot_supersedes_the_log_only_once_it_is_durable() {
        let log = MemoryLog::default();
        let durable_below = std::sync::Arc::clone(&log.durable_below);
        let (mut store, _) = OffsetStore::load(Box::new(log)).unwrap();
        let mut state = StoreState::new();
        for round in 0..12i64 {
            let key = offset_key("g", (round % 2) as i32);
            let value = committed(round).unwrap();
            store
                .append(&[(key.clone(), Some(value.clone()))], 0)
                .unwrap();
            state.insert(key, value);
        }
        store
            .append(&[(offset_key("gone", 0), committed(1))], 0)
            .unwrap();
        store.append(&[(offset_key("gone", 0), None)], 0).unwrap();
        store.compact_if_needed(&state, 0).unwrap();
        let (start, last) = store.pending_snapshot.expect("a snapshot was written");
        assert_eq!(start, 14, "after the 14 records before it");
        assert_eq!(
            store.log.log_start_offset(),
            0,
            "nothing dropped before it is durable"
        );
        store.compact_if_needed(&state, 0).unwrap();
        assert_eq!(store.log.log_start_offset(), 0, "still not durable");

        // The followers catch up: the next tick drops what the snapshot superseded.
        durable_below.store(last + 1, std::sync::atomic::Ordering::Relaxed);
        store.compact_if_needed(&state, 0).unwrap();
        assert_eq!(store.log.log_start_offset(), start);
        assert!(store.pending_snapshot.is_none());
        let replayed = replay(store.log.as_ref()).unwrap();
        assert_eq!(replayed, state, "the snapshot alone holds the state");
    }

    #[test]
    fn group_records_keep_members_and_read_as_before_without_them() {
        let with_members = GroupRecord {
            generation_id: 4,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: Some("m-1".into()),
            members: vec![MemberRecord {
                member_id: "m-1".into(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                metadata: Bytes::from_static(&[0, 1, 0xfe]),
                assignment: Bytes::new(),
            }],
        };
        let key = StoreKey::Group { group: "g".into() };
        let (mut store, _) = OffsetStore::load(Box::<MemoryLog>::default()).unwrap();
        store
            .append(
                &[(key.clone(), Some(StoreValue::Group(with_members.clone())))],
                0,
            )
            .unwrap();
        let state = replay(store.log.as_ref()).unwrap();
        assert_eq!(state.get(&key), Some(&StoreValue::Group(with_members)));
        // A generation-only record is written exactly as before members were kept.
        let plain = GroupRecord {
            generation_id: 4,
            ..GroupRecord::default()
        };
        assert_eq!(
            serde_json::to_string(&ValueJson::Group(plain)).unwrap(),
            r#"{"generation_id":4}"#
        );
    }
}
