//! openraft's type configuration for Strata's metadata quorum, its timing, and the mapping
//! between Kafka's `i32` node ids and openraft's `u64` ones.

use std::io::Cursor;
use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};

use crate::error::{Error, Result};
use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// The Raft types: the log carries [`Command`]s, applying one gives a [`Response`].
    pub(crate) TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node handle.
pub(crate) type Raft = openraft::Raft<TypeConfig>;
/// openraft's id of a node.
pub(crate) type NodeId = u64;
/// A log id.
pub(crate) type LogId = openraft::LogId<NodeId>;
/// A log entry.
pub(crate) type Entry = openraft::Entry<TypeConfig>;
/// The storage error openraft expects.
pub(crate) type StorageError = openraft::StorageError<NodeId>;
/// The snapshot metadata.
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// The membership as the state machine stores it.
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

/// Leader heartbeats: well under the election timeout, so one lost heartbeat starts no election.
const HEARTBEAT_MS: u64 = 100;
/// Election timeout range: a follower that hears nothing for this long (randomised in the range,
/// so candidates rarely collide) stands for election. Voters refuse a candidate until they have
/// heard nothing from the leader for `ELECTION_TIMEOUT_MS_MAX` (openraft's leader lease), so the
/// first candidacy often fails and the second wins: a killed controller is replaced in 1-2 s.
const ELECTION_TIMEOUT_MS_MIN: u64 = 500;
const ELECTION_TIMEOUT_MS_MAX: u64 = 1000;
/// A snapshot (the whole `ClusterState` as JSON) every 1000 entries; the log keeps the 1000
/// entries before it so a briefly absent follower catches up from the log, not a snapshot.
const SNAPSHOT_EVERY_ENTRIES: u64 = 1000;
/// Snapshot chunk: its JSON (a byte array costs up to 4 bytes per byte) stays far below the
/// 64 MiB frame bound.
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// Time for one snapshot chunk to be received and installed, on a loaded machine.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 3000;

/// When the log is compacted into a snapshot, and how the snapshot travels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compaction {
    /// A snapshot every this many applied entries.
    pub(crate) snapshot_every_entries: u64,
    /// Entries kept in the log before the snapshot.
    pub(crate) entries_kept: u64,
    /// Bytes of snapshot data per `InstallSnapshot` request.
    pub(crate) snapshot_chunk_bytes: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES,
            entries_kept: SNAPSHOT_EVERY_ENTRIES,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// The openraft config of every voter.
pub(crate) fn raft_config(compaction: Compaction) -> Result<Arc<Config>> {
    let config = Config {
        cluster_name: "strata-metadata".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS_MIN,
        election_timeout_max: ELECTION_TIMEOUT_MS_MAX,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(compaction.snapshot_every_entries),
        max_in_snapshot_log_to_keep: compaction.entries_kept,
        snapshot_max_chunk_size: compaction.snapshot_chunk_bytes,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| Error::Raft(e.to_string()))
}

/// openraft's id of a Kafka node id (node ids are checked to be >= 0 at start).
pub(crate) fn raft_id(id: i32) -> NodeId {
    u64::try_from(id).expect("node ids are >= 0")
}

/// The Kafka node id of an openraft id (every id in the membership came from an `i32`).
pub(crate) fn kafka_id(id: NodeId) -> Option<i32> {
    i32::try_from(id).ok()
}
