//! # strata-log
//!
//! The local log of Strata: each partition is a folder of segments holding RecordBatch v2 bytes
//! exactly as they are served to consumers, with sparse offset and time indexes. Pure storage: no
//! sockets and no object store.
//!
//! ## Layout
//! - [`batch`]: RecordBatch v2 header parsing, validation (magic, sizes, CRC-32C) and the in-place
//!   rewrites a broker makes (base offset, leader epoch, LogAppendTime).
//! - [`record`]: the records inside a batch: bounded decompression, the record parser, and the
//!   checks made before a produced batch is stored (Kafka's LogValidator).
//! - [`index`]: sparse offset and time index lookups and their file encoding.
//! - `segment`: one segment file with its indexes; scanning, recovery and reads.
//! - [`file_cache`]: the process-wide, bounded set of open segment files (idle segments hold none).
//! - [`log`]: a partition's run of segments: append, read, roll, retention, flush, recovery.
//! - [`policy`]: roll, retention and flush decisions as pure functions of state and `now`.
//! - [`epochs`]: the leader epoch cache (`leader-epoch-checkpoint`), for replica truncation.
//! - [`producer`]: idempotent producer state (duplicate and sequence-gap detection) and open and
//!   aborted transactions.
//! - [`txn`]: transaction markers (control batches) and aborted transactions.
//! - [`config`]: per-log settings with Kafka's names and defaults.
//!
//! ## Example
//! ```no_run
//! use strata_log::{Log, LogConfig};
//! # fn batch_from_a_client() -> Vec<u8> { unimplemented!() }
//! let dir = std::path::Path::new("/tmp/strata-example/orders-0");
//! let mut log = Log::open(dir, LogConfig::default(), 0)?;
//! let mut batch = batch_from_a_client();
//! let info = log.append(&batch, 0, 1_000)?;
//! let slice = log.read(info.base_offset, 1 << 20)?.expect("just appended");
//! assert_eq!(slice.read()?, batch);
//! log.close(2_000)?;
//! # Ok::<(), strata_log::Error>(())
//! ```

pub mod batch;
pub mod config;
pub mod epochs;
pub mod error;
pub mod file_cache;
pub mod index;
pub mod log;
pub mod policy;
pub mod producer;
pub mod record;
mod segment;
pub mod txn;

pub use crate::config::{CompressionLevels, CompressionType, LogConfig, TimestampType};
pub use crate::error::{Error, Result};
pub use crate::log::{
    AppendInfo, FlushJob, Log, Maintenance, OffloadLag, RecoveryReport, SealedSegment,
};
pub use crate::segment::{FileSlice, SegmentContent};
