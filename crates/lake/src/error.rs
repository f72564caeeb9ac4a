//! The one error type of `strata-lake`.

/// Result alias for lake operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the lake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A batch or a lake file whose content cannot be right.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A stored batch failed validation.
    #[error(transparent)]
    Batch(#[from] strata_log::batch::BatchError),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A local segment that cannot be converted: a batch whose CRC does not match, whose records
    /// cannot be parsed, or that breaks the segment's framing (bit rot, a torn write). Retrying
    /// does not help until the file changes; the segment stays on local disk.
    #[error("corrupt segment {segment} at offset {offset}: {reason} (byte {position} of the file)")]
    CorruptSegment {
        /// The segment's file name.
        segment: String,
        /// Base offset of the batch (of the next expected one when its header cannot be read).
        offset: i64,
        /// Where the batch starts in the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A manifest commit refused because a later partition leader has committed the manifest:
    /// the writer was deposed, and nothing was committed.
    #[error(
        "{topic}-{partition}: the lake's manifest was committed at leader epoch {stored_epoch}; \
         a commit at epoch {leader_epoch} is refused (a later leader owns the partition)"
    )]
    FencedLeaderEpoch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The epoch of the refused commit.
        leader_epoch: i32,
        /// The epoch the stored manifest was committed at.
        stored_epoch: i32,
    },
    /// The manifest changed between the read a commit was built on and the commit (another writer
    /// committed first); nothing was committed. Read the manifest again and retry.
    #[error(
        "{topic}-{partition}: the lake's manifest changed since it was read (another writer \
         committed); nothing was committed"
    )]
    ManifestConflict {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Object storage failed or is unreachable (retriable).
    #[error("object storage: {0}")]
    Storage(String),
    /// A tier URL or setting is wrong.
    #[error("lake configuration: {0}")]
    Config(String),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}
