//! The one error type of `strata-log`.

use std::path::PathBuf;

use crate::batch::BatchError;

/// Result alias for log operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the local log. The broker maps each variant to one Kafka error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed (KAFKA_STORAGE_ERROR).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A produced batch was refused.
    #[error(transparent)]
    InvalidBatch(#[from] BatchError),
    /// A produced batch whose records cannot be read or break a rule (INVALID_RECORD,
    /// INVALID_TIMESTAMP).
    #[error("invalid records: {0}")]
    InvalidRecords(#[from] crate::record::RecordError),
    /// A read outside `[log_start_offset, log_end_offset]` (OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset of the log.
        log_start_offset: i64,
        /// Offset the next record will get.
        log_end_offset: i64,
    },
    /// An idempotent producer skipped sequences (OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id}: expected sequence {expected}, got {received}")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// The sequence the log expected next.
        expected: i32,
        /// The sequence the batch starts with.
        received: i32,
    },
    /// A batch from an older epoch of an idempotent producer (INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id}: epoch {received} is older than the current {current}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// The epoch the log knows.
        current: i16,
        /// The epoch of the batch.
        received: i16,
    },
    /// A batch the log does not take, e.g. a control batch from a client (INVALID_RECORD).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A batch that breaks the producer's transaction state (INVALID_TXN_STATE), e.g. a
    /// non-transactional batch while its transaction is open.
    #[error("producer {producer_id}: {reason}")]
    InvalidTxnState {
        /// The producer.
        producer_id: i64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A transaction marker from an older transaction coordinator
    /// (TRANSACTION_COORDINATOR_FENCED).
    #[error(
        "producer {producer_id}: marker from coordinator epoch {received}, older than {current}"
    )]
    CoordinatorFenced {
        /// The producer.
        producer_id: i64,
        /// The coordinator epoch of the last marker.
        current: i32,
        /// The coordinator epoch of this marker.
        received: i32,
    },
    /// A log file whose content cannot be right and cannot be repaired.
    #[error("corrupt log file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    /// Wraps the error with the path it concerns.
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
