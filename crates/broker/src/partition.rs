//! One partition this broker leads: its log behind a lock, and its offsets readable without it.
//!
//! The high watermark is the log end offset: with a single replica every appended record is
//! committed. Replication will move it to the in-sync replicas' minimum; readers already use it.

use parking_lot::{Mutex, MutexGuard};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use strata_log::{AppendInfo, FileSlice, Log, LogConfig, Maintenance, SealedSegment};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// A partition led by this broker.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: i32,
    leader_epoch: i32,
    /// `None` once closed (shutdown or topic deletion).
    log: Mutex<Option<Log>>,
    /// The high watermark; long-polling fetches wait for it to move.
    high_watermark: watch::Sender<i64>,
    log_start_offset: AtomicI64,
}

/// What a read found.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The range of a segment holding the stored batches, `None` at the high watermark. Fetch
    /// answers send it from the page cache without reading it.
    pub records: Option<FileSlice>,
    /// Offset after the last committed record.
    pub high_watermark: i64,
    /// First readable offset.
    pub log_start_offset: i64,
}

impl Partition {
    /// Opens (recovering if needed) the partition's log in `dir`.
    pub fn open(
        topic: &str,
        index: i32,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Self> {
        let log = Log::open(dir, config, now_ms)?;
        let report = log.recovery_report();
        if report.truncated_bytes > 0 || report.dropped_segments > 0 {
            tracing::warn!(
                topic,
                partition = index,
                truncated_bytes = report.truncated_bytes,
                dropped_segments = report.dropped_segments,
                "recovered partition after an unclean shutdown"
            );
        }
        Ok(Self {
            topic: topic.to_string(),
            index,
            leader_epoch: 0,
            high_watermark: watch::Sender::new(log.log_end_offset()),
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log: Mutex::new(Some(log)),
        })
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition index.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// Offset after the last committed record.
    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// First readable offset.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// A receiver that changes when the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> Result<T>) -> Result<T> {
        let mut guard: MutexGuard<'_, Option<Log>> = self.log.lock();
        match guard.as_mut() {
            Some(log) => f(log),
            None => Err(Error::NotLeader(format!(
                "{}-{} is closed",
                self.topic, self.index
            ))),
        }
    }

    /// The partition's folder.
    pub fn dir(&self) -> Result<std::path::PathBuf> {
        self.with_log(|log| Ok(log.dir().to_path_buf()))
    }

    /// Whether an append of `batch_bytes` now would roll or fsync (see
    /// [`Log::append_would_block`]); a closed partition answers `false` (its append fails fast).
    pub fn append_would_block(&self, batch_bytes: usize, now_ms: i64) -> bool {
        self.with_log(|log| Ok(log.append_would_block(batch_bytes, now_ms)))
            .unwrap_or(false)
    }

    /// Appends one produced batch and moves the high watermark.
    pub fn append(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo> {
        let (info, end) = self.with_log(|log| {
            let info = log.append(records, self.leader_epoch, now_ms)?;
            Ok((info, log.log_end_offset()))
        })?;
        self.high_watermark.send_if_modified(|hw| {
            let moved = *hw != end;
            *hw = end;
            moved
        });
        Ok(info)
    }

    /// Locates stored batches from `offset`: at most `max_bytes`, but the whole first batch. The
    /// file is read (or sent) after the lock is released, so appends are not held up by reads.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        let (records, log_start_offset): (Option<FileSlice>, i64) =
            self.with_log(|log| Ok((log.read(offset, max_bytes)?, log.log_start_offset())))?;
        Ok(ReadResult {
            records,
            high_watermark: self.high_watermark(),
            log_start_offset,
        })
    }

    /// The first record at or after `timestamp_ms`: `(offset, timestamp)`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        self.with_log(|log| Ok(log.offset_for_timestamp(timestamp_ms)?))
    }

    /// The batch with the largest timestamp: `(offset, timestamp)`.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        self.with_log(|log| Ok(log.max_timestamp()))
    }

    /// Sealed segments holding offsets at or after `offset`, for offloading.
    pub fn sealed_segments_from(&self, offset: i64) -> Result<Vec<SealedSegment>> {
        self.with_log(|log| Ok(log.sealed_segments_from(offset)))
    }

    /// Records that offsets below `offset` are durable in the lake, so local retention may delete
    /// the segments holding them.
    pub fn set_offloaded_offset(&self, offset: i64) -> Result<()> {
        self.with_log(|log| {
            log.set_offloaded_offset(offset);
            Ok(())
        })
    }

    /// Applies new log settings.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        self.with_log(|log| {
            log.set_config(config);
            Ok(())
        })
    }

    /// Roll and flush work, and retention when `retention`; sealed segments are fsynced without holding the lock.
    pub fn maintain(&self, now_ms: i64, retention: bool) -> Result<Maintenance> {
        let (done, job) = self.with_log(|log| {
            let done = log.maintain(now_ms, retention)?;
            self.log_start_offset
                .store(log.log_start_offset(), Ordering::Release);
            Ok((done, log.pending_flush()))
        })?;
        if let Some(job) = job {
            job.run()?;
            self.with_log(|log| Ok(log.complete_flush(&job)?))?;
        }
        Ok(done)
    }

    /// Flushes and closes the log cleanly; later calls get NOT_LEADER_OR_FOLLOWER.
    pub fn close(&self, now_ms: i64) -> Result<()> {
        let log = self.log.lock().take();
        match log {
            Some(log) => Ok(log.close(now_ms)?),
            None => Ok(()),
        }
    }
}
