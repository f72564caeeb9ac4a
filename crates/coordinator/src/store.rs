//! Durable group state: committed offsets and group generations, as records in an internal log
//! (`<data>/internal/__consumer_offsets-0`, a `strata-log` log like any partition), replayed at
//! start. Like Kafka's `__consumer_offsets`, a key's last record wins and a null value deletes it.
//! The log is compacted by writing the live state anew and dropping the segments before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::{Deserialize, Serialize};
use strata_log::batch::BatchHeader;
use strata_log::{Log, LogConfig};

use crate::error::{Error, Result};

/// Segment size of the offsets log: small, so compaction keeps it small.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Compact once this many segments exist (the live state is rewritten into a fresh one).
const SEGMENTS_BEFORE_COMPACTION: usize = 3;
/// Records per batch when writing a snapshot.
const SNAPSHOT_BATCH_RECORDS: usize = 500;

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

/// A group's persisted generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Last generation.
    pub generation_id: i32,
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

/// The offsets log.
#[derive(Debug)]
pub struct OffsetStore {
    dir: PathBuf,
    log: Log,
}

impl OffsetStore {
    /// Opens the log in `dir` (recovering it after a crash) and replays it.
    pub fn open(dir: &Path, now_ms: i64) -> Result<(Self, StoreState)> {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            retention_ms: -1,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config, now_ms).map_err(log_error(dir))?;
        let state = replay(dir, &log)?;
        let dir = dir.to_path_buf();
        Ok((Self { dir, log }, state))
    }

    /// Appends records durably in the page cache (as produce does): they survive a process crash.
    pub fn append(
        &mut self,
        records: &[(StoreKey, Option<StoreValue>)],
        now_ms: i64,
    ) -> Result<()> {
        for chunk in records.chunks(SNAPSHOT_BATCH_RECORDS) {
            let batch = encode(chunk, now_ms);
            self.log
                .append(&batch, 0, now_ms)
                .map_err(log_error(&self.dir))?;
        }
        Ok(())
    }

    /// When the log has grown to several segments, writes the live state into a fresh segment and
    /// deletes everything before it. A crash in between leaves both copies, which replay to the
    /// same state.
    pub fn compact_if_needed(&mut self, state: &StoreState, now_ms: i64) -> Result<()> {
        if self.log.segment_count() < SEGMENTS_BEFORE_COMPACTION {
            return Ok(());
        }
        let dir = self.dir.clone();
        let log_error = log_error(&dir);
        self.log.roll(now_ms).map_err(&log_error)?;
        let start = self.log.log_end_offset();
        let live: Vec<(StoreKey, Option<StoreValue>)> = state
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        self.append(&live, now_ms)?;
        self.log.flush(now_ms).map_err(&log_error)?;
        let deleted = self.log.delete_segments_before(start).map_err(&log_error)?;
        tracing::debug!(
            records = live.len(),
            deleted_segments = deleted,
            "compacted the offsets log"
        );
        Ok(())
    }

    /// Flushes and closes the log.
    pub fn close(self, now_ms: i64) -> Result<()> {
        self.log.close(now_ms).map_err(log_error(&self.dir))
    }
}

/// Wraps a log error with the offsets log's folder.
fn log_error(dir: &Path) -> impl Fn(strata_log::Error) -> Error + '_ {
    move |source| Error::Log {
        dir: dir.to_path_buf(),
        source,
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

fn replay(dir: &Path, log: &Log) -> Result<StoreState> {
    let mut state = StoreState::new();
    let mut offset = log.log_start_offset();
    while let Some(slice) = log.read(offset, 1024 * 1024).map_err(log_error(dir))? {
        let mut bytes = Bytes::from(slice.read().map_err(log_error(dir))?);
        while let Ok(header) = BatchHeader::parse(&bytes) {
            if header.total_bytes() > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(header.total_bytes());
            let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| Error::Corrupt {
                dir: dir.to_path_buf(),
                offset: header.base_offset,
                reason: e.to_string(),
            })?;
            for record in set.records.iter().filter(|r| r.offset >= offset) {
                apply(&mut state, record);
            }
            offset = header.next_offset();
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
        assert!(store.log.segment_count() <= SEGMENTS_BEFORE_COMPACTION);
        drop(store);
        let (_, replayed) = OffsetStore::open(dir.path(), 0).unwrap();
        assert_eq!(replayed, state);
    }
}
