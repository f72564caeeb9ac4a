//! Durable group state: committed offsets and group generations (with their members, where the
//! coordinator keeps them), as records in an offsets log ([`OffsetsLog`]), replayed when the
//! coordinator loads. Like Kafka's `__consumer_offsets`, a key's last record wins and a null value
//! deletes it. The log is compacted by appending the live state anew (a snapshot) and, once the
//! snapshot is durable, dropping what came before it.
//!
//! Transactional offset commits (KIP-98's TxnOffsetCommit) are transactional batches of their
//! producer: their offsets stay pending, invisible as committed offsets, until a control batch
//! (the transaction marker) of that producer commits them or aborts them. A committed
//! transaction's offset replaces a partition's committed offset only if it was written after it
//! (Kafka keeps the most recent of a plain and a transactional commit), so every offset carries
//! its position: the log offset of the record that first wrote it. A snapshot restates each
//! offset with its position (and each pending offset in a transactional batch of its producer
//! again), so a snapshot, whole or cut short by a failure, changes no outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::{Deserialize, Serialize};
use strata_log::batch::BatchHeader;
use strata_log::txn::Marker;

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

/// Whose records a batch of the offsets log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// The coordinator's own records, in effect once written.
    Plain,
    /// Offsets a transactional producer commits in its transaction (TxnOffsetCommit): pending
    /// until its producer's commit marker, dropped at its abort marker.
    Transactional {
        /// The producer.
        producer_id: i64,
        /// Its epoch.
        producer_epoch: i16,
    },
}

/// A live record's value, and the log offset of the record that first wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecord {
    /// The value.
    pub value: StoreValue,
    /// Where it was first written (snapshots restate it with this position).
    pub position: i64,
}

/// The offsets one producer's open transaction committed: pending until its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTxn {
    /// The producer epoch of its last batch.
    pub producer_epoch: i16,
    /// Offsets by key (each a [`StoreKey::Offset`]), with the position of each.
    pub offsets: BTreeMap<StoreKey, (CommittedOffset, i64)>,
}

/// The state the log holds: live records, and the offsets of open transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreState {
    live: BTreeMap<StoreKey, LiveRecord>,
    pending: BTreeMap<i64, PendingTxn>,
    /// The producers with a pending offset for each key: derived from `pending`, for lookups.
    open: BTreeMap<StoreKey, BTreeSet<i64>>,
}

impl StoreState {
    /// The live value of `key`.
    pub fn get(&self, key: &StoreKey) -> Option<&StoreValue> {
        self.live.get(key).map(|r| &r.value)
    }

    /// Every live record, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&StoreKey, &StoreValue)> {
        self.live.iter().map(|(k, r)| (k, &r.value))
    }

    /// The open transactions with pending offsets, by producer id.
    pub fn pending(&self) -> impl Iterator<Item = (i64, &PendingTxn)> {
        self.pending.iter().map(|(id, txn)| (*id, txn))
    }

    /// Whether an open transaction has a pending offset for `key`.
    pub fn has_pending(&self, key: &StoreKey) -> bool {
        self.open.contains_key(key)
    }

    /// The partitions of `group` with a pending offset, as their keys.
    pub fn pending_keys(&self, group: &str) -> Vec<StoreKey> {
        let from = StoreKey::Offset {
            group: group.to_string(),
            topic: String::new(),
            partition: i32::MIN,
        };
        self.open
            .range(from..)
            .map(|(k, _)| k)
            .take_while(|k| matches!(k, StoreKey::Offset { group: g, .. } if g == group))
            .cloned()
            .collect()
    }

    /// Records a snapshot of this state holds: live ones and pending offsets.
    pub fn records(&self) -> usize {
        self.live.len()
            + self
                .pending
                .values()
                .map(|t| t.offsets.len())
                .sum::<usize>()
    }

    /// Whether the state holds nothing.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.pending.is_empty()
    }

    /// Applies one record at `position`. A plain record sets or (with no value) deletes its key;
    /// a transactional one adds a pending offset of its producer. A deletion drops the pending
    /// offsets of the key too, whoever's (as Kafka's group coordinator replays a tombstone).
    pub fn apply(
        &mut self,
        kind: BatchKind,
        key: StoreKey,
        value: Option<StoreValue>,
        position: i64,
    ) {
        match (kind, value) {
            (_, None) => {
                self.live.remove(&key);
                self.forget_pending(&key);
            }
            (BatchKind::Plain, Some(value)) => {
                self.live.insert(key, LiveRecord { value, position });
            }
            (
                BatchKind::Transactional {
                    producer_id,
                    producer_epoch,
                },
                Some(StoreValue::Offset(offset)),
            ) if matches!(key, StoreKey::Offset { .. }) => {
                let txn = self
                    .pending
                    .entry(producer_id)
                    .or_insert_with(|| PendingTxn {
                        producer_epoch,
                        offsets: BTreeMap::new(),
                    });
                txn.producer_epoch = producer_epoch;
                self.open
                    .entry(key.clone())
                    .or_default()
                    .insert(producer_id);
                txn.offsets.insert(key, (offset, position));
            }
            (BatchKind::Transactional { producer_id, .. }, Some(_)) => {
                tracing::warn!(
                    producer_id,
                    position,
                    "skipping a transactional offsets log record that is not an offset"
                );
            }
        }
    }

    /// Applies the marker that ends `producer_id`'s transaction: on commit, each of its pending
    /// offsets becomes the committed one unless a later record committed the partition; on
    /// abort they are dropped. Returns the offsets that became committed.
    pub fn apply_marker(
        &mut self,
        producer_id: i64,
        commit: bool,
    ) -> Vec<(StoreKey, CommittedOffset)> {
        let Some(txn) = self.pending.remove(&producer_id) else {
            return Vec::new();
        };
        let mut committed = Vec::new();
        for (key, (offset, position)) in txn.offsets {
            if let Some(producers) = self.open.get_mut(&key) {
                producers.remove(&producer_id);
                if producers.is_empty() {
                    self.open.remove(&key);
                }
            }
            if !commit {
                continue;
            }
            if self.live.get(&key).is_some_and(|r| r.position > position) {
                continue;
            }
            let value = StoreValue::Offset(offset.clone());
            self.live
                .insert(key.clone(), LiveRecord { value, position });
            committed.push((key, offset));
        }
        committed
    }

    /// Drops every pending offset of `key`.
    fn forget_pending(&mut self, key: &StoreKey) {
        for producer_id in self.open.remove(key).unwrap_or_default() {
            if let Some(txn) = self.pending.get_mut(&producer_id) {
                txn.offsets.remove(key);
                if txn.offsets.is_empty() {
                    self.pending.remove(&producer_id);
                }
            }
        }
    }
}

/// A record to write: its key, its value (`None` deletes the key), and the position it restates
/// (a snapshot's) or `None` for a new one, whose position is its own offset.
type Entry<'a> = (&'a StoreKey, Option<&'a StoreValue>, Option<i64>);

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

    /// Appends records as `kind` (a batch per [`SNAPSHOT_BATCH_RECORDS`]); returns the offset
    /// of each, its position. They are durable once [`OffsetStore::durable`] says so.
    pub fn append(
        &mut self,
        kind: BatchKind,
        records: &[(StoreKey, Option<StoreValue>)],
        now_ms: i64,
    ) -> Result<Vec<i64>> {
        let entries: Vec<Entry<'_>> = records.iter().map(|(k, v)| (k, v.as_ref(), None)).collect();
        self.append_entries(kind, &entries, now_ms)
    }

    fn append_entries(
        &mut self,
        kind: BatchKind,
        entries: &[Entry<'_>],
        now_ms: i64,
    ) -> Result<Vec<i64>> {
        let mut positions = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(SNAPSHOT_BATCH_RECORDS) {
            // A transactional batch carries its producer's sequence, as the log expects it.
            let base_sequence = match kind {
                BatchKind::Plain => -1,
                BatchKind::Transactional {
                    producer_id,
                    producer_epoch,
                } => self.log.next_sequence(producer_id, producer_epoch),
            };
            let batch = encode(kind, base_sequence, chunk, now_ms);
            let last = self.log.append(&batch, now_ms)?;
            let first = last - (chunk.len() as i64 - 1);
            positions.extend(first..=last);
        }
        Ok(positions)
    }

    /// Appends the marker that ends `producer_id`'s transaction; returns its offset.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<i64> {
        self.log
            .append_marker(producer_id, producer_epoch, marker, now_ms)
    }

    /// Resolves once the records up to `last_offset` (from [`OffsetStore::append`]) are durable.
    pub fn durable(&self, last_offset: Option<i64>) -> Durable {
        match last_offset {
            Some(offset) => self.log.durable(offset),
            None => durable_now(),
        }
    }

    /// When the log has grown enough (as its [`OffsetsLog`] judges), appends the live state as a
    /// snapshot (each open transaction's pending offsets in transactional batches of its
    /// producer); once the snapshot is durable (now, or at a later call), drops everything before
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
        if !self.log.wants_compaction(state.records()) {
            return Ok(());
        }
        self.log.before_snapshot(now_ms)?;
        let start = self.log.log_end_offset();
        let Some(last) = self.write_snapshot(state, now_ms)? else {
            // Nothing is live: everything before is superseded as it stands.
            return self.log.delete_before(start, now_ms);
        };
        tracing::debug!(
            records = state.records(),
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

    /// Appends every record of `state` again, each with its position; returns the last offset
    /// written, `None` when there was nothing. Positions keep the snapshot's records ordered as
    /// the originals were, whatever the order they are written in.
    fn write_snapshot(&mut self, state: &StoreState, now_ms: i64) -> Result<Option<i64>> {
        let mut last = None;
        let live: Vec<Entry<'_>> = state
            .live
            .iter()
            .map(|(k, r)| (k, Some(&r.value), Some(r.position)))
            .collect();
        if let Some(&offset) = self.append_entries(BatchKind::Plain, &live, now_ms)?.last() {
            last = Some(offset);
        }
        for (producer_id, txn) in state.pending() {
            let values: Vec<(&StoreKey, StoreValue, i64)> = txn
                .offsets
                .iter()
                .map(|(k, (o, position))| (k, StoreValue::Offset(o.clone()), *position))
                .collect();
            let entries: Vec<Entry<'_>> = values
                .iter()
                .map(|(k, v, position)| (*k, Some(v), Some(*position)))
                .collect();
            let kind = BatchKind::Transactional {
                producer_id,
                producer_epoch: txn.producer_epoch,
            };
            if let Some(&offset) = self.append_entries(kind, &entries, now_ms)?.last() {
                last = Some(offset);
            }
        }
        Ok(last)
    }

    /// Flushes and closes the log.
    pub fn close(self, now_ms: i64) -> Result<()> {
        self.log.close(now_ms)
    }
}

/// A record's value as JSON. An offset restated by a snapshot names the position it was first
/// written at.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValueJson {
    Offset {
        #[serde(flatten)]
        offset: CommittedOffset,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written_at: Option<i64>,
    },
    Group(GroupRecord),
}

fn encode(kind: BatchKind, base_sequence: i32, entries: &[Entry<'_>], now_ms: i64) -> BytesMut {
    let (transactional, producer_id, producer_epoch) = match kind {
        BatchKind::Plain => (false, -1, -1),
        BatchKind::Transactional {
            producer_id,
            producer_epoch,
        } => (true, producer_id, producer_epoch),
    };
    let encoded: Vec<Record> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, value, written_at))| Record {
            transactional,
            control: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp: now_ms,
            key: Some(Bytes::from(
                serde_json::to_vec(key).expect("keys serialize"),
            )),
            value: value.map(|v| {
                let json = match v {
                    StoreValue::Offset(o) => ValueJson::Offset {
                        offset: o.clone(),
                        written_at: *written_at,
                    },
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
    let mut state = StoreState::default();
    let mut offset = log.log_start_offset();
    while let Some(mut bytes) = log.read(offset, REPLAY_READ_BYTES)? {
        let before = offset;
        while let Ok(header) = BatchHeader::parse(&bytes) {
            if header.total_bytes() > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(header.total_bytes());
            if header.is_control() {
                // A marker below the log start belongs to a transaction whose records are gone.
                if header.base_offset >= offset {
                    let marker = strata_log::txn::parse_marker(&batch)
                        .map_err(|e| corrupt(header.base_offset, e.to_string()))?;
                    if let Some(marker) = marker {
                        state.apply_marker(header.producer_id, marker.commit);
                    }
                }
            } else {
                let kind = if header.is_transactional() {
                    BatchKind::Transactional {
                        producer_id: header.producer_id,
                        producer_epoch: header.producer_epoch,
                    }
                } else {
                    BatchKind::Plain
                };
                let set = RecordBatchDecoder::decode(&mut batch)
                    .map_err(|e| corrupt(header.base_offset, e.to_string()))?;
                for record in set.records.iter().filter(|r| r.offset >= offset) {
                    apply(&mut state, kind, record);
                }
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

fn apply(state: &mut StoreState, kind: BatchKind, record: &Record) {
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
    let mut position = record.offset;
    let value = record
        .value
        .as_ref()
        .and_then(|v| match serde_json::from_slice::<ValueJson>(v) {
            Ok(ValueJson::Offset { offset, written_at })
                if matches!(key, StoreKey::Offset { .. }) =>
            {
                position = written_at.unwrap_or(record.offset);
                Some(StoreValue::Offset(offset))
            }
            Ok(ValueJson::Group(g)) if matches!(key, StoreKey::Group { .. }) => {
                Some(StoreValue::Group(g))
            }
            _ => None,
        });
    state.apply(kind, key, value, position);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use strata_log::producer::{ProducerStateTable, SequenceCheck};

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

    fn offset_of(state: &StoreState, key: &StoreKey) -> Option<i64> {
        match state.get(key) {
            Some(StoreValue::Offset(o)) => Some(o.offset),
            _ => None,
        }
    }

    const TXN: BatchKind = BatchKind::Transactional {
        producer_id: 7,
        producer_epoch: 0,
    };

    fn marker(commit: bool) -> Marker {
        Marker {
            commit,
            coordinator_epoch: 0,
        }
    }

    /// Appends `records` as `kind` to `store` and applies them to `state`, as the coordinator
    /// does.
    fn write(
        store: &mut OffsetStore,
        state: &mut StoreState,
        kind: BatchKind,
        records: &[(StoreKey, Option<StoreValue>)],
    ) {
        let positions = store.append(kind, records, 0).unwrap();
        for ((key, value), position) in records.iter().zip(positions) {
            state.apply(kind, key.clone(), value.clone(), position);
        }
    }

    fn end(store: &mut OffsetStore, state: &mut StoreState, commit: bool) {
        store.append_marker(7, 0, marker(commit), 0).unwrap();
        state.apply_marker(7, commit);
    }

    #[test]
    fn last_write_wins_and_tombstones_delete_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, state) = OffsetStore::open(dir.path(), 0).unwrap();
        assert!(state.is_empty());
        store
            .append(
                BatchKind::Plain,
                &[
                    (offset_key("g", 0), committed(5)),
                    (offset_key("g", 1), committed(7)),
                ],
                0,
            )
            .unwrap();
        store
            .append(
                BatchKind::Plain,
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
        assert!(state.get(&offset_key("g", 1)).is_none());
        store.close(0).unwrap();
    }

    #[test]
    fn compaction_keeps_the_live_state_and_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = OffsetStore::open(dir.path(), 0).unwrap();
        let mut state = StoreState::default();
        let big = "m".repeat(4000);
        for round in 0..3000i64 {
            let key = offset_key("g", (round % 10) as i32);
            let value = StoreValue::Offset(CommittedOffset {
                offset: round,
                leader_epoch: 0,
                metadata: big.clone(),
                commit_timestamp_ms: round,
            });
            write(
                &mut store,
                &mut state,
                BatchKind::Plain,
                &[(key, Some(value))],
            );
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

    /// What a [`MemoryLog`] holds; its clones share it, as a reopened log shares its files.
    #[derive(Debug, Default)]
    struct MemoryLogInner {
        batches: Vec<(i64, Bytes)>,
        start: i64,
        end: i64,
        /// The producer state, checked and kept as a real log does.
        producers: ProducerStateTable,
    }

    /// An offsets log in memory whose appends become durable only when the test says so, like a
    /// replicated partition's whose followers have not fetched yet. It checks producers'
    /// batches and markers as a log does.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct MemoryLog {
        inner: Arc<parking_lot::Mutex<MemoryLogInner>>,
        /// Shared with the test, which moves it as replicas would.
        pub(crate) durable_below: Arc<AtomicI64>,
    }

    impl MemoryLog {
        /// A log whose every append is durable at once.
        pub(crate) fn durable() -> Self {
            let log = Self::default();
            log.durable_below.store(i64::MAX, Ordering::Relaxed);
            log
        }

        fn push(&self, mut batch: Vec<u8>) -> BatchHeader {
            let mut inner = self.inner.lock();
            strata_log::batch::set_base_offset(&mut batch, inner.end);
            let header = BatchHeader::parse(&batch).unwrap();
            let end = inner.end;
            inner.batches.push((end, Bytes::from(batch)));
            inner.end = header.next_offset();
            header
        }
    }

    fn log_error(source: strata_log::Error) -> Error {
        Error::Log {
            dir: "memory".into(),
            source,
        }
    }

    impl OffsetsLog for MemoryLog {
        fn append(&mut self, batch: &[u8], _now_ms: i64) -> Result<i64> {
            let header = BatchHeader::parse(batch).unwrap();
            let check = self.inner.lock().producers.check(&header);
            assert_eq!(check.map_err(log_error)?, SequenceCheck::Append);
            let header = self.push(batch.to_vec());
            self.inner.lock().producers.record(&header);
            Ok(header.last_offset())
        }
        fn append_marker(
            &mut self,
            producer_id: i64,
            producer_epoch: i16,
            marker: Marker,
            now_ms: i64,
        ) -> Result<i64> {
            let check = self.inner.lock().producers.check_marker(
                producer_id,
                producer_epoch,
                marker.coordinator_epoch,
            );
            check.map_err(log_error)?;
            let batch = strata_log::txn::marker_batch(producer_id, producer_epoch, marker, now_ms);
            let header = self.push(batch);
            self.inner.lock().producers.record_marker(&header, marker);
            Ok(header.base_offset)
        }
        fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32 {
            let inner = self.inner.lock();
            let known = inner
                .producers
                .producers()
                .find(|(id, _)| *id == producer_id)
                .map(|(_, e)| (e.epoch, e.batches.back().map_or(-1, |b| b.last_sequence)));
            crate::offsets_log::next_sequence(known, producer_epoch)
        }
        fn read(&self, offset: i64, _max_bytes: usize) -> Result<Option<Bytes>> {
            let inner = self.inner.lock();
            let mut out = BytesMut::new();
            for (base, batch) in &inner.batches {
                let next = BatchHeader::parse(batch).unwrap().next_offset();
                if next > offset && next > inner.start {
                    out.extend_from_slice(batch);
                }
                assert!(*base < next);
            }
            Ok((!out.is_empty()).then(|| out.freeze()))
        }
        fn log_start_offset(&self) -> i64 {
            self.inner.lock().start
        }
        fn log_end_offset(&self) -> i64 {
            self.inner.lock().end
        }
        fn durable(&self, _last_offset: i64) -> Durable {
            durable_now()
        }
        fn is_durable(&self, last_offset: i64) -> bool {
            last_offset < self.durable_below.load(Ordering::Relaxed)
        }
        fn wants_compaction(&self, live_records: usize) -> bool {
            let inner = self.inner.lock();
            inner.end - inner.start > 2 * live_records as i64 + 4
        }
        fn before_snapshot(&mut self, _now_ms: i64) -> Result<()> {
            Ok(())
        }
        fn delete_before(&mut self, offset: i64, _now_ms: i64) -> Result<()> {
            let durable = self.durable_below.load(Ordering::Relaxed);
            assert!(offset <= durable, "only what a durable snapshot superseded");
            let mut inner = self.inner.lock();
            inner
                .batches
                .retain(|(_, b)| BatchHeader::parse(b).unwrap().next_offset() > offset);
            inner.start = offset;
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
        let durable_below = Arc::clone(&log.durable_below);
        let (mut store, _) = OffsetStore::load(Box::new(log)).unwrap();
        let mut state = StoreState::default();
        for round in 0..12i64 {
            let key = offset_key("g", (round % 2) as i32);
            write(
                &mut store,
                &mut state,
                BatchKind::Plain,
                &[(key, committed(round))],
            );
        }
        let gone = [(offset_key("gone", 0), committed(1))];
        write(&mut store, &mut state, BatchKind::Plain, &gone);
        let tombstone = [(offset_key("gone", 0), None)];
        write(&mut store, &mut state, BatchKind::Plain, &tombstone);
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
        durable_below.store(last + 1, Ordering::Relaxed);
        store.compact_if_needed(&state, 0).unwrap();
        assert_eq!(store.log.log_start_offset(), start);
        assert!(store.pending_snapshot.is_none());
        let replayed = replay(store.log.as_ref()).unwrap();
        assert_eq!(replayed, state, "the snapshot alone holds the state");
    }

    #[test]
    fn a_transaction_s_offsets_wait_for_its_marker_and_the_later_commit_wins() {
        let log = MemoryLog::durable();
        let (mut store, mut state) = OffsetStore::load(Box::new(log.clone())).unwrap();
        // Partition 0: committed, then the transaction's (later) offset. Partition 1: the
        // transaction's offset, then a plain commit written after it.
        write(
            &mut store,
            &mut state,
            BatchKind::Plain,
            &[(offset_key("g", 0), committed(5))],
        );
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 0), committed(10))],
        );
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 1), committed(11))],
        );
        write(
            &mut store,
            &mut state,
            BatchKind::Plain,
            &[(offset_key("g", 1), committed(20))],
        );
        assert_eq!(
            offset_of(&state, &offset_key("g", 0)),
            Some(5),
            "pending: not committed"
        );
        assert!(state.has_pending(&offset_key("g", 0)));
        assert_eq!(
            state.pending_keys("g"),
            vec![offset_key("g", 0), offset_key("g", 1)]
        );
        assert!(state.pending_keys("h").is_empty());
        assert_eq!(
            replay(&log).unwrap(),
            state,
            "replay agrees before the marker"
        );

        end(&mut store, &mut state, true);
        assert_eq!(
            offset_of(&state, &offset_key("g", 0)),
            Some(10),
            "the transaction's"
        );
        assert_eq!(
            offset_of(&state, &offset_key("g", 1)),
            Some(20),
            "the later plain commit"
        );
        assert!(!state.has_pending(&offset_key("g", 0)));
        assert_eq!(state.pending().count(), 0);
        assert_eq!(
            replay(&log).unwrap(),
            state,
            "replay agrees after the marker"
        );

        // The next transaction of the same producer (its sequence goes on), aborted.
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 0), committed(30))],
        );
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 2), committed(31))],
        );
        end(&mut store, &mut state, false);
        assert_eq!(offset_of(&state, &offset_key("g", 0)), Some(10));
        assert_eq!(offset_of(&state, &offset_key("g", 2)), None);
        assert_eq!(replay(&log).unwrap(), state);
    }

    #[test]
    fn a_deletion_drops_pending_offsets_of_its_key() {
        let log = MemoryLog::durable();
        let (mut store, mut state) = OffsetStore::load(Box::new(log.clone())).unwrap();
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 0), committed(10))],
        );
        write(
            &mut store,
            &mut state,
            BatchKind::Plain,
            &[(offset_key("g", 0), None)],
        );
        assert!(!state.has_pending(&offset_key("g", 0)));
        end(&mut store, &mut state, true);
        assert_eq!(
            offset_of(&state, &offset_key("g", 0)),
            None,
            "nothing to commit"
        );
        assert_eq!(replay(&log).unwrap(), state);
    }

    #[test]
    fn a_snapshot_keeps_pending_offsets_and_their_order_even_cut_short() {
        let log = MemoryLog::default();
        let durable_below = Arc::clone(&log.durable_below);
        let (mut store, mut state) = OffsetStore::load(Box::new(log.clone())).unwrap();
        write(
            &mut store,
            &mut state,
            BatchKind::Plain,
            &[(offset_key("g", 0), committed(5))],
        );
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 0), committed(10))],
        );
        write(
            &mut store,
            &mut state,
            TXN,
            &[(offset_key("g", 1), committed(11))],
        );
        write(
            &mut store,
            &mut state,
            BatchKind::Plain,
            &[(offset_key("g", 1), committed(20))],
        );
        for round in 0..10 {
            let records = [(offset_key("other", 0), committed(round))];
            write(&mut store, &mut state, BatchKind::Plain, &records);
        }

        // A snapshot cut short after its plain records (its producer's batch never written):
        // the restated offsets keep their positions, so the marker decides as before.
        let cut = log.clone();
        let (mut cut_store, _) = OffsetStore::load(Box::new(cut.clone())).unwrap();
        let live: Vec<Entry<'_>> = state
            .live
            .iter()
            .map(|(k, r)| (k, Some(&r.value), Some(r.position)))
            .collect();
        cut_store
            .append_entries(BatchKind::Plain, &live, 0)
            .unwrap();
        let mut cut_state = replay(&cut).unwrap();
        assert_eq!(
            cut_state, state,
            "a partial snapshot replays to the same state"
        );

        // A whole snapshot, made durable: the log holds the snapshot alone.
        store.compact_if_needed(&state, 0).unwrap();
        let (start, last) = store.pending_snapshot.expect("a snapshot was written");
        durable_below.store(last + 1, Ordering::Relaxed);
        store.compact_if_needed(&state, 0).unwrap();
        assert_eq!(log.log_start_offset(), start);
        let replayed = replay(&log).unwrap();
        assert_eq!(replayed, state, "pending offsets survive the snapshot");
        assert!(replayed.has_pending(&offset_key("g", 0)));

        // The marker after the snapshot: the transaction's offset wins on partition 0 only.
        end(&mut store, &mut state, true);
        let replayed = replay(&log).unwrap();
        assert_eq!(replayed, state);
        assert_eq!(offset_of(&replayed, &offset_key("g", 0)), Some(10));
        assert_eq!(offset_of(&replayed, &offset_key("g", 1)), Some(20));
        cut_store.append_marker(7, 0, marker(true), 0).unwrap();
        cut_state.apply_marker(7, true);
        assert_eq!(offset_of(&cut_state, &offset_key("g", 0)), Some(10));
        assert_eq!(offset_of(&cut_state, &offset_key("g", 1)), Some(20));
        assert_eq!(replay(&cut).unwrap(), cut_state);
    }

    #[test]
    fn a_marker_without_pending_offsets_is_harmless_and_a_zombie_s_writes_are_refused() {
        let log = MemoryLog::durable();
        let (mut store, mut state) = OffsetStore::load(Box::new(log.clone())).unwrap();
        // A marker for a producer without pending offsets is written and changes nothing.
        end(&mut store, &mut state, true);
        assert!(replay(&log).unwrap().is_empty());
        // A zombie's marker (an older producer epoch) is refused by the log.
        let bumped = BatchKind::Transactional {
            producer_id: 7,
            producer_epoch: 1,
        };
        write(
            &mut store,
            &mut state,
            bumped,
            &[(offset_key("g", 0), committed(1))],
        );
        assert!(matches!(
            store.append_marker(7, 0, marker(true), 0),
            Err(Error::Log {
                source: strata_log::Error::InvalidProducerEpoch { .. },
                ..
            })
        ));
        assert!(matches!(
            store.append(TXN, &[(offset_key("g", 0), committed(2))], 0),
            Err(Error::Log {
                source: strata_log::Error::InvalidProducerEpoch { .. },
                ..
            })
        ));
        assert_eq!(replay(&log).unwrap(), state);
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
                BatchKind::Plain,
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
        // So is an offset a commit writes (a snapshot's restatement names its position).
        let offset = CommittedOffset {
            offset: 3,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 9,
        };
        let json = |written_at| {
            serde_json::to_string(&ValueJson::Offset {
                offset: offset.clone(),
                written_at,
            })
            .unwrap()
        };
        assert_eq!(
            json(None),
            r#"{"offset":3,"leader_epoch":-1,"metadata":"","commit_timestamp_ms":9}"#
        );
        assert!(json(Some(12)).ends_with(r#","written_at":12}"#));
    }
}
