//! The one error type of `strata-broker`, and the single place where errors become Kafka codes.

use kafka_protocol::ResponseError;

/// Result alias for broker operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local log failed or refused a batch.
    #[error(transparent)]
    Log(#[from] strata_log::Error),
    /// The group coordinator refused a request or its offsets log failed.
    #[error(transparent)]
    Coordinator(#[from] strata_coordinator::Error),
    /// A broker setting or topic config is unknown or invalid (INVALID_CONFIG).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A topic name Kafka would refuse (INVALID_TOPIC_EXCEPTION).
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The topic exists already (TOPIC_ALREADY_EXISTS).
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No such topic or partition (UNKNOWN_TOPIC_OR_PARTITION).
    #[error("unknown topic or partition {0}")]
    UnknownTopic(String),
    /// The partition is not (or no longer) served here (NOT_LEADER_OR_FOLLOWER, retriable).
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// A request carried a leader epoch older than the partition's (FENCED_LEADER_EPOCH).
    #[error("fenced leader epoch: {0}")]
    FencedLeaderEpoch(String),
    /// Fewer in-sync replicas than `min.insync.replicas` for an `acks=all` produce
    /// (NOT_ENOUGH_REPLICAS; nothing was appended).
    #[error("not enough in-sync replicas: {0}")]
    NotEnoughReplicas(String),
    /// The cluster's metadata quorum failed or has no controller (retriable).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A partition count or replication factor that cannot be served (INVALID_PARTITIONS,
    /// INVALID_REPLICATION_FACTOR).
    #[error("{message}")]
    InvalidRequest {
        /// The Kafka error to answer with.
        code: ResponseError,
        /// What is wrong.
        message: String,
    },
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Metadata(String),
    /// A conditional change of the security records found a record other than the caller read
    /// (another change came first): the caller reads again and retries (REQUEST_TIMED_OUT,
    /// retriable, should it reach a client).
    #[error("security records changed concurrently: {0}")]
    SecurityConflict(String),
    /// Another broker holds the data folder's lock (`<data_dir>/.lock`): one broker per folder.
    #[error(
        "data folder {} is in use by another broker (pid {}; lock file {}/.lock)",
        path.display(),
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        path.display()
    )]
    DataDirInUse {
        /// The data folder.
        path: std::path::PathBuf,
        /// The holder's pid as it wrote it into the lock file, when it has.
        pid: Option<u32>,
    },
    /// A socket or file failed.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Error {
    /// The Kafka error code a client gets for this error.
    pub fn code(&self) -> ResponseError {
        match self {
            Self::Log(e) => log_error_code(e),
            Self::Coordinator(e) => coordinator_error_code(e),
            Self::InvalidConfig(_) => ResponseError::InvalidConfig,
            Self::InvalidTopic { .. } => ResponseError::InvalidTopicException,
            Self::TopicExists(_) => ResponseError::TopicAlreadyExists,
            Self::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
            Self::NotLeader(_) => ResponseError::NotLeaderOrFollower,
            Self::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
            Self::NotEnoughReplicas(_) => ResponseError::NotEnoughReplicas,
            Self::Cluster(_) | Self::SecurityConflict(_) => ResponseError::RequestTimedOut,
            Self::InvalidRequest { code, .. } => *code,
            Self::Metadata(_) | Self::Io { .. } | Self::DataDirInUse { .. } => {
                ResponseError::KafkaStorageError
            }
        }
    }
}

/// The Kafka error code of a log error.
pub fn log_error_code(error: &strata_log::Error) -> ResponseError {
    use strata_log::batch::BatchError;
    match error {
        strata_log::Error::InvalidBatch(BatchError::TooLarge { .. }) => {
            ResponseError::MessageTooLarge
        }
        strata_log::Error::InvalidBatch(BatchError::UnsupportedMagic(_)) => {
            ResponseError::UnsupportedForMessageFormat
        }
        strata_log::Error::InvalidBatch(BatchError::Empty) => ResponseError::InvalidRecord,
        strata_log::Error::InvalidBatch(BatchError::InvalidField(_)) => {
            ResponseError::InvalidRecord
        }
        strata_log::Error::InvalidBatch(_) => ResponseError::CorruptMessage,
        strata_log::Error::InvalidRecords(e) => match e.kind {
            strata_log::record::RecordErrorKind::Invalid => ResponseError::InvalidRecord,
            strata_log::record::RecordErrorKind::Timestamp => ResponseError::InvalidTimestamp,
        },
        strata_log::Error::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        strata_log::Error::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        strata_log::Error::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        strata_log::Error::Unsupported(_) => ResponseError::InvalidRecord,
        strata_log::Error::InvalidTxnState { .. } => ResponseError::InvalidTxnState,
        strata_log::Error::CoordinatorFenced { .. } => ResponseError::TransactionCoordinatorFenced,
        _ => ResponseError::KafkaStorageError,
    }
}

/// The Kafka error code of a group coordinator error.
pub fn coordinator_error_code(error: &strata_coordinator::Error) -> ResponseError {
    use strata_coordinator::Error as E;
    match error {
        E::InvalidGroupId => ResponseError::InvalidGroupId,
        E::GroupNotFound { .. } => ResponseError::GroupIdNotFound,
        E::NonEmptyGroup { .. } => ResponseError::NonEmptyGroup,
        E::Refused { code, .. } => *code,
        // The offsets partition moved or failed: the client finds the coordinator again.
        E::NotCoordinator { .. } => ResponseError::NotCoordinator,
        // As Kafka maps a failed write to its offsets topic (NOT_ENOUGH_REPLICAS,
        // REQUEST_TIMED_OUT): retriable, the client retries the commit.
        E::NotEnoughReplicas { .. } | E::TimedOut { .. } => ResponseError::CoordinatorNotAvailable,
        // The offsets log failed, is corrupt, or was closed at shutdown: the commit or deletion
        // was not stored.
        _ => ResponseError::KafkaStorageError,
    }
}
