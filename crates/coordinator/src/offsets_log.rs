//! Where the offsets log's record batches are kept: the [`OffsetsLog`] trait, and
//! [`LocalOffsetsLog`], a single broker's local `strata-log` log. In a cluster the broker
//! implements the trait over its replicated partition of `__consumer_offsets`.
//!
//! The trait is small on purpose: append a batch, read batches back, say when an append is
//! durable, and drop what a snapshot superseded. What a record means stays in [`crate::store`].

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use strata_log::txn::Marker;
use strata_log::{Log, LogConfig};

use crate::error::{Error, Result};

/// Resolves once an append is as durable as its log makes it (see [`OffsetsLog::durable`]).
pub type Durable = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// A [`Durable`] that is resolved already.
pub fn durable_now() -> Durable {
    Box::pin(std::future::ready(Ok(())))
}

/// The storage of the offsets log: record batches (magic 2) at consecutive offsets.
pub trait OffsetsLog: Send + Debug {
    /// Appends one record batch; returns the offset of its last record. A transactional batch
    /// (a TxnOffsetCommit's) carries its producer's id, epoch and next sequence
    /// ([`OffsetsLog::next_sequence`]), and is checked as the log checks a producer's.
    fn append(&mut self, batch: &[u8], now_ms: i64) -> Result<i64>;

    /// Appends the transaction marker that ends `producer_id`'s transaction (a control batch);
    /// returns its offset. The log refuses a marker of an older producer or coordinator epoch.
    fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<i64>;

    /// The base sequence the log expects of `producer_id`'s next batch at `producer_epoch` (see
    /// [`next_sequence`]).
    fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32;

    /// Whole stored batches from the one holding `offset`, about `max_bytes` of them (at least
    /// one); `None` at the log end.
    fn read(&self, offset: i64, max_bytes: usize) -> Result<Option<Bytes>>;

    /// The first offset still stored.
    fn log_start_offset(&self) -> i64;

    /// The offset the next record will get.
    fn log_end_offset(&self) -> i64;

    /// Resolves once the records up to `last_offset` are durable: at once for a local log (in the
    /// page cache, as produce with acks=1: they survive a process crash); for a replicated
    /// partition once every in-sync replica has them (its high watermark passed them), as Kafka
    /// writes offsets with acks=all.
    fn durable(&self, last_offset: i64) -> Durable;

    /// Whether the records up to `last_offset` are durable now (see [`OffsetsLog::durable`]).
    fn is_durable(&self, last_offset: i64) -> bool;

    /// Whether the log has grown enough to be rewritten as a snapshot of its `live_records`.
    fn wants_compaction(&self, live_records: usize) -> bool;

    /// Called before a snapshot is appended (a local log rolls, so that what the snapshot
    /// supersedes fills whole segments and goes with them).
    fn before_snapshot(&mut self, now_ms: i64) -> Result<()>;

    /// Drops the records before `offset`, where a durable snapshot of the whole state starts.
    fn delete_before(&mut self, offset: i64, now_ms: i64) -> Result<()>;

    /// The folder holding the log, for error messages.
    fn dir(&self) -> PathBuf;

    /// Flushes and closes what this log owns.
    fn close(self: Box<Self>, now_ms: i64) -> Result<()>;
}

/// The base sequence a log expects of a producer's next batch at `producer_epoch`, from what the
/// log knows of the producer: `(its epoch, the last sequence of its last batch or -1)`. The
/// sequence goes on from the last batch within an epoch and starts at 0 in a new one (or for a
/// producer the log does not know); a batch of an older epoch is refused whatever its sequence.
pub fn next_sequence(known: Option<(i16, i32)>, producer_epoch: i16) -> i32 {
    match known {
        Some((epoch, last)) if epoch == producer_epoch && last >= 0 => {
            last.checked_add(1).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Segment size of a single broker's offsets log: small, so compaction keeps it small.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Compact once this many segments exist (the live state is rewritten into a fresh one).
pub(crate) const SEGMENTS_BEFORE_COMPACTION: usize = 3;

/// A single broker's offsets log: a local `strata-log` log
/// (`<data>/internal/__consumer_offsets-0`).
#[derive(Debug)]
pub struct LocalOffsetsLog {
    dir: PathBuf,
    log: Log,
}

impl LocalOffsetsLog {
    /// Opens the log in `dir`, recovering it after a crash.
    pub fn open(dir: &Path, now_ms: i64) -> Result<Self> {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            retention_ms: -1,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config, now_ms).map_err(log_error(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            log,
        })
    }

    /// Segments of the log.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }
}

impl OffsetsLog for LocalOffsetsLog {
    fn append(&mut self, batch: &[u8], now_ms: i64) -> Result<i64> {
        let info = self
            .log
            .append(batch, 0, now_ms)
            .map_err(log_error(&self.dir))?;
        Ok(info.last_offset)
    }

    fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<i64> {
        let info = self
            .log
            .append_marker(producer_id, producer_epoch, marker, 0, now_ms)
            .map_err(log_error(&self.dir))?;
        Ok(info.last_offset)
    }

    fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32 {
        let known = self
            .log
            .producer_state()
            .producers()
            .find(|(id, _)| *id == producer_id)
            .map(|(_, e)| (e.epoch, e.batches.back().map_or(-1, |b| b.last_sequence)));
        next_sequence(known, producer_epoch)
    }

    fn read(&self, offset: i64, max_bytes: usize) -> Result<Option<Bytes>> {
        let Some(slice) = self
            .log
            .read(offset, max_bytes)
            .map_err(log_error(&self.dir))?
        else {
            return Ok(None);
        };
        Ok(Some(Bytes::from(
            slice.read().map_err(log_error(&self.dir))?,
        )))
    }

    fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    fn durable(&self, _last_offset: i64) -> Durable {
        durable_now()
    }

    fn is_durable(&self, _last_offset: i64) -> bool {
        true
    }

    fn wants_compaction(&self, _live_records: usize) -> bool {
        self.log.segment_count() >= SEGMENTS_BEFORE_COMPACTION
    }

    fn before_snapshot(&mut self, now_ms: i64) -> Result<()> {
        self.log.roll(now_ms).map_err(log_error(&self.dir))
    }

    fn delete_before(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        // The snapshot reaches the disk before what it supersedes leaves it.
        self.log.flush(now_ms).map_err(log_error(&self.dir))?;
        let deleted = self
            .log
            .delete_segments_before(offset)
            .map_err(log_error(&self.dir))?;
        tracing::debug!(deleted_segments = deleted, "compacted the offsets log");
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn close(self: Box<Self>, now_ms: i64) -> Result<()> {
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
