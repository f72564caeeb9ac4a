//! The one error type of `strata-coordinator`.

use std::path::PathBuf;

use kafka_protocol::ResponseError;

/// Result alias for coordinator operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the group coordinator. The broker maps each variant to one Kafka error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The offsets log failed: a file operation, or a batch the log refused (KAFKA_STORAGE_ERROR).
    #[error("offsets log in {}: {source}", dir.display())]
    Log {
        /// The offsets log's folder.
        dir: PathBuf,
        /// What the log reported.
        source: strata_log::Error,
    },
    /// A batch in the offsets log that cannot be decoded (KAFKA_STORAGE_ERROR).
    #[error("corrupt offsets log in {}: batch at offset {offset}: {reason}", dir.display())]
    Corrupt {
        /// The offsets log's folder.
        dir: PathBuf,
        /// Base offset of the batch.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// The offsets partition the coordinator writes to is no longer led by this broker, or its
    /// replica failed (NOT_COORDINATOR: the client looks the coordinator up again).
    #[error("not the coordinator: {reason}")]
    NotCoordinator {
        /// Why, naming the offsets partition.
        reason: String,
    },
    /// The offsets partition has fewer in-sync replicas than `min.insync.replicas`: nothing was
    /// written (COORDINATOR_NOT_AVAILABLE, retriable).
    #[error("{partition} has {isr} in-sync replicas, min.insync.replicas is {min_insync}")]
    NotEnoughReplicas {
        /// The offsets partition.
        partition: String,
        /// In-sync replicas now.
        isr: usize,
        /// `min.insync.replicas`.
        min_insync: usize,
    },
    /// The in-sync replicas did not confirm a write in time; it may still be committed
    /// (REQUEST_TIMED_OUT, retriable).
    #[error("{partition}: the in-sync replicas did not confirm offset {offset} in time")]
    TimedOut {
        /// The offsets partition.
        partition: String,
        /// The last offset written.
        offset: i64,
    },
    /// A write after [`GroupCoordinator::close`](crate::GroupCoordinator::close) (KAFKA_STORAGE_ERROR).
    #[error("the group coordinator is closed")]
    Closed,
    /// An empty group id (INVALID_GROUP_ID).
    #[error("the group id is empty")]
    InvalidGroupId,
    /// No such group (GROUP_ID_NOT_FOUND).
    #[error("group {group:?} does not exist")]
    GroupNotFound {
        /// The group id.
        group: String,
    },
    /// Only an empty group can be deleted (NON_EMPTY_GROUP).
    #[error("group {group:?} is {state}, not Empty")]
    NonEmptyGroup {
        /// The group id.
        group: String,
        /// The group's state name.
        state: &'static str,
    },
    /// The group's state machine refuses the request with this Kafka error (UNKNOWN_MEMBER_ID,
    /// ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID): the classic group protocol
    /// states its answers in Kafka's codes, as its per-member and per-partition codes do.
    #[error("group {group:?} refused the request: {code}")]
    Refused {
        /// The group id.
        group: String,
        /// The group protocol's answer.
        code: ResponseError,
    },
}
