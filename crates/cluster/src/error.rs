//! The one error type of `strata-cluster`.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for cluster operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the metadata quorum.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (and on which file or peer).
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A Raft file under `meta_dir` that cannot be read back: not a torn tail, real damage.
    #[error("corrupt metadata file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A peer could not be connected to (down, or not listening yet).
    #[error("cannot connect to {peer}: {source}")]
    Unreachable {
        /// The peer's address.
        peer: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A peer sent bytes that are not a valid frame or message.
    #[error("protocol error with {peer}: {reason}")]
    Protocol {
        /// The peer's address.
        peer: String,
        /// What is wrong.
        reason: String,
    },
    /// The asked node is not the active controller (`leader`: the one it knows, if any).
    #[error("not the active controller (controller: {leader:?})")]
    NotController {
        /// The active controller as that node knows it.
        leader: Option<i32>,
    },
    /// A deadline passed.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The time allowed.
        after: Duration,
    },
    /// openraft reported an error (a storage fault stops the Raft node).
    #[error("raft: {0}")]
    Raft(String),
    /// The node configuration cannot work.
    #[error("invalid cluster config: {0}")]
    Config(String),
    /// `place` was asked for more replicas than unfenced brokers (or fewer than one).
    #[error("replication factor {replication_factor} with {brokers} unfenced brokers")]
    InvalidReplicationFactor {
        /// The replication factor asked.
        replication_factor: i16,
        /// Unfenced brokers available.
        brokers: usize,
    },
    /// `place` was asked for no partition, or partition ids out of range.
    #[error("invalid partitions: {reason}")]
    InvalidPartitions {
        /// What is wrong.
        reason: String,
    },
    /// The node was shut down.
    #[error("the cluster node is stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
