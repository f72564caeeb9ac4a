//! The log of one partition: an ordered run of segments, the last one active.
//!
//! Files in the partition folder besides the segments:
//! - `log-start-offset`: the first offset still readable, moved forward by retention;
//! - `recovery-point`: every offset below it was fsynced, so recovery checks only what follows;
//! - `producer-state.json`: a snapshot of the idempotent producer state at an offset;
//! - `leader-epoch-checkpoint`: the first offset of each leader epoch ([`crate::epochs`]);
//! - `.clean-shutdown`: present only after a clean close, so a crash is noticed at the next open;
//!   it names the active segment and its length then, so that a marker whose removal at the next
//!   open a power loss undid is not trusted once the log has changed since.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::config::{LogConfig, TimestampType};
use crate::epochs::LeaderEpochCache;
use crate::error::{Error, IoContext, Result};
use crate::policy;
use crate::producer::{ProducerStateTable, SequenceCheck};
use crate::record;
use crate::segment::{FileSlice, OpenMode, Segment, SegmentContent, SegmentFiles};
use crate::txn::Marker;

const LOG_START_OFFSET_FILE: &str = "log-start-offset";
const RECOVERY_POINT_FILE: &str = "recovery-point";
const PRODUCER_STATE_FILE: &str = "producer-state.json";
const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The broker timestamp given to the batch, or -1 when the producer's timestamps are kept.
    pub log_append_time_ms: i64,
    /// The batch was a retry of one already in the log and was not appended again.
    pub duplicate: bool,
}

/// What an open found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run did not close the log cleanly.
    pub unclean: bool,
    /// Bytes of torn or corrupt tail cut off.
    pub truncated_bytes: u64,
    /// Segments dropped because they followed a corrupt one.
    pub dropped_segments: usize,
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The active segment was sealed because of `segment.ms`.
    pub rolled: bool,
    /// Segments removed by retention.
    pub deleted_segments: usize,
    /// The log was flushed because of `flush.messages` / `flush.ms`.
    pub flushed: bool,
}

/// Sealed segments to fsync outside the log's lock; see [`Log::pending_flush`].
#[derive(Debug)]
pub struct FlushJob {
    files: Vec<SegmentFiles>,
    recovery_point: i64,
}

impl FlushJob {
    /// Forces the files to stable storage, through their cached handles or fresh ones (see
    /// [`crate::file_cache`]). Safe to run without holding the log.
    pub fn run(&self) -> Result<()> {
        for files in &self.files {
            files.sync()?;
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ProducerSnapshot {
    offset: i64,
    producers: ProducerStateTable,
}

/// The log of one partition.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Base offset → segment; never empty, the last one is active.
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    recovery_point: i64,
    unflushed_messages: i64,
    last_flush_ms: i64,
    producers: ProducerStateTable,
    recovery: RecoveryReport,
    /// Offsets below this are durable in the lake (tiered logs delete only those); -1 = none.
    offloaded_offset: i64,
    /// What the small state files hold, so that none is rewritten (and fsynced) unchanged.
    on_disk: StateFiles,
    /// The first offset of each leader epoch.
    epochs: LeaderEpochCache,
}

/// The values the partition folder's state files hold (`None`: missing, unreadable, or a snapshot
/// that was not used). A close of an idle log then forces nothing to disk: with twenty thousand
/// partitions, four fsyncs each took minutes.
#[derive(Debug, Default)]
struct StateFiles {
    recovery_point: Option<i64>,
    log_start_offset: Option<i64>,
    /// The offset of the producer state snapshot. The table changes only with appends, which move
    /// the log end, so a snapshot at the log end is current.
    producer_snapshot: Option<i64>,
}

/// What of a tiered log the lake does not hold yet ([`Log::offload_lag`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadLag {
    /// Bytes of the segments holding offsets the lake does not.
    pub bytes: u64,
    /// When the first of them was created (ms since the epoch), `None` when there is none.
    pub oldest_ms: Option<i64>,
}

/// A sealed segment, for offloading.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    /// First offset.
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    /// Its whole content, opened only when read.
    pub slice: SegmentContent,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering after an unclean shutdown: every segment
    /// past the recovery point is checked batch by batch and cut at the first torn or corrupt one.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let clean_marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let unclean = match std::fs::read_to_string(&clean_marker) {
            Ok(text) => {
                std::fs::remove_file(&clean_marker).at(&clean_marker)?;
                !clean_marker_matches(dir, &text)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).at(&clean_marker),
        };
        let stored_recovery_point = read_i64(&dir.join(RECOVERY_POINT_FILE))?;
        let recovery_point = stored_recovery_point.unwrap_or(0);
        let stored_start = read_i64(&dir.join(LOG_START_OFFSET_FILE))?;
        let mut recovery = RecoveryReport {
            unclean,
            ..RecoveryReport::default()
        };
        let segments = open_segments(dir, &config, unclean, recovery_point, now_ms, &mut recovery)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset: 0,
            recovery_point,
            unflushed_messages: 0,
            last_flush_ms: now_ms,
            producers: ProducerStateTable::default(),
            recovery,
            offloaded_offset: -1,
            on_disk: StateFiles {
                recovery_point: stored_recovery_point,
                log_start_offset: stored_start,
                producer_snapshot: None,
            },
            epochs: LeaderEpochCache::load(dir)?,
        };
        if log.segments.is_empty() {
            let base = stored_start.unwrap_or(0).max(0);
            let segment = Segment::create(dir, base, log.config.index_interval_bytes, now_ms)?;
            log.segments.insert(base, segment);
        }
        let first_base = *log.segments.keys().next().expect("a log has a segment");
        log.log_start_offset = stored_start
            .unwrap_or(first_base)
            .clamp(first_base, log.log_end_offset());
        log.recovery_point = log.recovery_point.min(log.log_end_offset());
        // Recovery may have cut batches whose epochs were recorded.
        let end = log.log_end_offset();
        log.epochs.truncate_from(end)?;
        log.load_producer_state()?;
        // An opened partition holds no file: the first append or read opens what it needs.
        for segment in log.segments.values() {
            segment.release();
        }
        Ok(log)
    }

    fn load_producer_state(&mut self) -> Result<()> {
        let path = self.dir.join(PRODUCER_STATE_FILE);
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ProducerSnapshot>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).at(&path),
        };
        let first_base = *self.segments.keys().next().expect("a log has a segment");
        let (mut table, from) = match snapshot {
            Some(s) if s.offset >= first_base && s.offset <= self.log_end_offset() => {
                self.on_disk.producer_snapshot = Some(s.offset);
                (s.producers, s.offset)
            }
            _ => (ProducerStateTable::default(), first_base),
        };
        table.reindex();
        for segment in self.segments.values().filter(|s| s.next_offset > from) {
            for (header, marker) in segment.headers_and_markers_from(from)? {
                match marker {
                    Some(marker) => table.record_marker(&header, marker),
                    None => table.record(&header),
                }
            }
        }
        table.forget_aborted_before(self.log_start_offset);
        self.producers = table;
        Ok(())
    }

    /// What the open found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The first readable offset.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size_bytes).sum()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The current settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings; they apply from the next append or maintenance pass.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log has a segment")
    }

    /// Whether appending a batch of `batch_bytes` now would do more than write to the page
    /// cache: roll the active segment (new files; the sealed one's indexes written), or fsync
    /// (`flush.messages` / `flush.ms` set). The broker moves only such appends off its async
    /// threads: a hop to another thread for every append costs more tail latency than a
    /// page-cache write (docs/performance.md).
    pub fn append_would_block(&self, batch_bytes: usize, now_ms: i64) -> bool {
        self.config.flush_messages != i64::MAX
            || self.config.flush_ms != i64::MAX
            || policy::should_roll(
                &self.active().stat(),
                batch_bytes as u64,
                self.log_end_offset(),
                now_ms,
                &self.config,
            )
    }

    /// Validates and appends one produced record set (exactly one RecordBatch v2, as Kafka requires
    /// of produce requests v3+), assigning its offsets and leader epoch. A retry of a batch of an
    /// idempotent producer already in the log returns the original offsets without appending.
    /// Every record is checked first ([`record::validate_records`]): a batch whose records cannot
    /// be read or break the topic's rules is refused whole and nothing of it is stored.
    /// Only the batch's header is rewritten (offsets, leader epoch, LogAppendTime and its CRC), in
    /// a copy of its own: the records are written from the request's buffer, unless the topic's
    /// `compression.type` asks for another codec, when the batch is re-encoded first.
    pub fn append(&mut self, records: &[u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo> {
        let headers = batch::validate_produce(records, self.config.max_message_bytes)?;
        let [header] = headers[..] else {
            return Err(BatchError::InvalidField(
                "a produce request holds exactly one batch per partition",
            )
            .into());
        };
        if header.is_control() {
            return Err(Error::Unsupported(
                "a producer may not write control batches: transaction markers come from the transaction coordinator",
            ));
        }
        // Every record is read before anything is stored (Kafka's LogValidator): a batch whose
        // records cannot be parsed would stall its consumers and its offload for ever.
        let mut scratch = (header.compression() != record::codec::NONE).then(record::Scratch::take);
        let mut no_scratch = Vec::new();
        let decompressed = scratch.as_mut().map_or(&mut no_scratch, |s| s.buf());
        record::validate_records(
            &header,
            records,
            &self.config.record_rules(),
            now_ms,
            decompressed,
        )?;
        if let SequenceCheck::Duplicate { base_offset } = self.producers.check(&header)? {
            return Ok(AppendInfo {
                base_offset,
                last_offset: base_offset + i64::from(header.last_offset_delta),
                log_append_time_ms: -1,
                duplicate: true,
            });
        }
        let recompressed = match self.config.compression.codec() {
            Some(target) if target != header.compression() => {
                let plain = if header.compression() == record::codec::NONE {
                    &records[HEADER_BYTES..header.total_bytes()]
                } else {
                    decompressed.as_slice()
                };
                Some(record::recompress(
                    &records[..header.total_bytes()],
                    plain,
                    target,
                    self.config.compression_levels,
                )?)
            }
            _ => None,
        };
        drop(scratch);
        // Kafka checks the batch it stores: a recompressed batch may have grown past the limit.
        if let Some(converted) = &recompressed
            && converted.len() > self.config.max_message_bytes
        {
            return Err(BatchError::TooLarge {
                size: converted.len(),
                max: self.config.max_message_bytes,
            }
            .into());
        }
        let (records, header) = match &recompressed {
            Some(converted) => (converted.as_slice(), BatchHeader::parse(converted)?),
            None => (records, header),
        };
        let base_offset = self.log_end_offset();
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        let total = header.total_bytes();
        let (head, body) = records[..total].split_at(HEADER_BYTES);
        let mut head: [u8; HEADER_BYTES] = head.try_into().expect("a validated batch");
        batch::set_base_offset(&mut head, base_offset);
        batch::set_partition_leader_epoch(&mut head, leader_epoch);
        let log_append_time_ms = match self.config.timestamp_type {
            TimestampType::LogAppendTime => {
                batch::set_log_append_time(&mut head, body, now_ms);
                now_ms
            }
            TimestampType::CreateTime => -1,
        };
        let stored = BatchHeader::parse(&head)?;
        self.epochs.assign(leader_epoch, base_offset)?;
        if policy::should_roll(
            &self.active().stat(),
            records.len() as u64,
            last_offset,
            now_ms,
            &self.config,
        ) {
            self.roll(now_ms)?;
        }
        self.active_mut().append(&head, body, &stored)?;
        self.producers.record(&stored);
        self.unflushed_messages += i64::from(stored.record_count);
        if policy::should_flush(
            self.unflushed_messages,
            self.last_flush_ms,
            now_ms,
            &self.config,
        ) {
            self.flush(now_ms)?;
        }
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms,
            duplicate: false,
        })
    }

    /// Appends a transaction marker (KIP-98) for `producer_id` as the partition leader at
    /// `leader_epoch`: the producer's open transaction here ends, committed or aborted. A marker
    /// of an older producer epoch or transaction coordinator epoch is refused.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        self.producers
            .check_marker(producer_id, producer_epoch, marker.coordinator_epoch)?;
        let mut bytes = crate::txn::marker_batch(producer_id, producer_epoch, marker, now_ms);
        let base_offset = self.log_end_offset();
        batch::set_base_offset(&mut bytes, base_offset);
        batch::set_partition_leader_epoch(&mut bytes, leader_epoch);
        let header = BatchHeader::parse(&bytes)?;
        self.epochs.assign(leader_epoch, base_offset)?;
        if policy::should_roll(
            &self.active().stat(),
            bytes.len() as u64,
            base_offset,
            now_ms,
            &self.config,
        ) {
            self.roll(now_ms)?;
        }
        let (head, body) = bytes.split_at(HEADER_BYTES);
        let head: &[u8; HEADER_BYTES] = head.try_into().expect("a marker batch");
        self.active_mut().append(head, body, &header)?;
        self.producers.record_marker(&header, marker);
        self.unflushed_messages += 1;
        if policy::should_flush(
            self.unflushed_messages,
            self.last_flush_ms,
            now_ms,
            &self.config,
        ) {
            self.flush(now_ms)?;
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: base_offset,
            log_append_time_ms: -1,
            duplicate: false,
        })
    }

    /// The first offset of the oldest open transaction, if any: the last stable offset is the
    /// smaller of it and the high watermark.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.producers.first_unstable_offset()
    }

    /// The last stable offset under `high_watermark` (see
    /// [`ProducerStateTable::last_stable_offset`]): `read_committed` consumers read below it.
    pub fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        self.producers.last_stable_offset(high_watermark)
    }

    /// The aborted transactions whose records may lie in `[from, upto)` (see
    /// [`ProducerStateTable::aborted_between`]).
    pub fn aborted_between(&self, from: i64, upto: i64) -> Vec<crate::txn::AbortedTxn> {
        self.producers.aborted_between(from, upto)
    }

    /// The producer state: idempotent producers and transactions.
    pub fn producer_state(&self) -> &ProducerStateTable {
        &self.producers
    }

    /// Appends batches copied from the partition leader, as they are: their offsets, leader
    /// epochs and timestamps were assigned there (and their records validated there). Each batch
    /// must continue the log: one that starts below the log end was appended already and is
    /// skipped; a gap is an error. A torn last batch (a fetch answer cut at its size limit) is
    /// left for the next fetch. Returns the new log end offset.
    pub fn append_replicated(&mut self, batches: &[u8], now_ms: i64) -> Result<i64> {
        let mut rest = batches;
        while rest.len() >= batch::LOG_OVERHEAD {
            let prefix: &[u8; batch::LOG_OVERHEAD] = rest[..batch::LOG_OVERHEAD]
                .try_into()
                .expect("length checked");
            let (_, size) = batch::peek_offset_and_size(prefix);
            let total = batch::LOG_OVERHEAD + usize::try_from(size).unwrap_or(0);
            if size <= 0 || rest.len() < total {
                break;
            }
            let header = batch::validate_batch(&rest[..total])?;
            let (bytes, tail) = rest.split_at(total);
            rest = tail;
            let end = self.log_end_offset();
            if header.next_offset() <= end {
                continue;
            }
            if header.base_offset != end {
                return Err(BatchError::InvalidField(
                    "a replicated batch does not continue the log (offset gap or overlap)",
                )
                .into());
            }
            self.epochs
                .assign(header.partition_leader_epoch, header.base_offset)?;
            if policy::should_roll(
                &self.active().stat(),
                bytes.len() as u64,
                header.last_offset(),
                now_ms,
                &self.config,
            ) {
                self.roll(now_ms)?;
            }
            let (head, body) = bytes.split_at(HEADER_BYTES);
            let head: &[u8; HEADER_BYTES] = head.try_into().expect("a validated batch");
            self.active_mut().append(head, body, &header)?;
            let marker = header
                .is_control()
                .then(|| crate::txn::parse_marker(bytes).ok().flatten())
                .flatten();
            match marker {
                Some(marker) => self.producers.record_marker(&header, marker),
                None => self.producers.record(&header),
            }
            self.unflushed_messages += i64::from(header.record_count);
        }
        if policy::should_flush(
            self.unflushed_messages,
            self.last_flush_ms,
            now_ms,
            &self.config,
        ) {
            self.flush(now_ms)?;
        }
        Ok(self.log_end_offset())
    }

    /// Removes every batch at or after `offset` (a replica dropping what the partition leader does
    /// not have). Segments past it are deleted, the one holding it is cut, the leader epoch cache
    /// and the idempotent producer state follow. Truncating below the log start empties the log
    /// and restarts it at `offset`.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        tracing::info!(dir = %self.dir.display(), offset, log_end_offset = self.log_end_offset(),
            "truncating the log");
        let restart = offset <= self.log_start_offset;
        let doomed: Vec<i64> = self
            .segments
            .keys()
            .copied()
            .filter(|&base| base >= offset || (restart && base <= offset))
            .collect();
        for base in doomed {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete()?;
            }
        }
        if self.segments.is_empty() {
            let base = if restart { offset.max(0) } else { offset };
            let segment =
                Segment::create(&self.dir, base, self.config.index_interval_bytes, now_ms)?;
            self.segments.insert(base, segment);
        } else {
            self.active_mut().truncate_to(offset)?;
        }
        if restart {
            self.log_start_offset = offset.max(0);
            self.store_log_start_offset()?;
        }
        self.recovery_point = self.recovery_point.min(self.log_end_offset());
        self.store_recovery_point()?;
        self.epochs.truncate_from(offset)?;
        self.rebuild_producer_state()
    }

    /// Deletes every segment and starts the log again, empty, at `offset`: a follower whose log
    /// ends before the leader's log start (the leader's older segments went to the lake) continues
    /// at the leader's start (Kafka's `truncateFullyAndStartAt`). The leader epoch cache and the
    /// producer state start empty; they are learnt again from the batches replicated.
    pub fn restart_at(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        tracing::info!(dir = %self.dir.display(), offset, log_end_offset = self.log_end_offset(),
            "restarting the log empty");
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for base in bases {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete()?;
            }
        }
        let offset = offset.max(0);
        let segment = Segment::create(&self.dir, offset, self.config.index_interval_bytes, now_ms)?;
        self.segments.insert(offset, segment);
        self.log_start_offset = offset;
        self.store_log_start_offset()?;
        self.recovery_point = offset;
        self.store_recovery_point()?;
        self.epochs.truncate_from(i64::MIN)?;
        self.rebuild_producer_state()
    }

    /// Drops the producer state snapshot (it may hold producers of removed batches) and rebuilds
    /// the state from the batches kept.
    fn rebuild_producer_state(&mut self) -> Result<()> {
        let snapshot = self.dir.join(PRODUCER_STATE_FILE);
        match std::fs::remove_file(&snapshot) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&snapshot),
            _ => {}
        }
        self.on_disk.producer_snapshot = None;
        self.load_producer_state()
    }

    /// Where leader epoch `epoch` ended in this log (OffsetForLeaderEpoch): the largest epoch at
    /// or below it and the first offset after it. `None` when the log knows no such epoch.
    pub fn end_offset_for_epoch(&mut self, epoch: i32) -> Result<Option<(i32, i64)>> {
        self.ensure_epochs()?;
        Ok(self.epochs.end_offset_for(epoch, self.log_end_offset()))
    }

    /// The leader epoch of the last batch written, if any.
    pub fn latest_epoch(&mut self) -> Result<Option<i32>> {
        self.ensure_epochs()?;
        Ok(self.epochs.latest_epoch())
    }

    /// A log with batches but no epoch cache (written before the cache existed, or its
    /// checkpoint lost) learns its epochs from the batch headers, once.
    fn ensure_epochs(&mut self) -> Result<()> {
        if self.epochs.latest_epoch().is_some() || self.log_end_offset() <= self.log_start_offset {
            return Ok(());
        }
        let start = self.log_start_offset;
        let mut headers = Vec::new();
        for segment in self.segments.values().filter(|s| s.next_offset > start) {
            headers.extend(segment.headers_from(start.max(segment.base_offset))?);
        }
        for header in headers {
            self.epochs
                .assign(header.partition_leader_epoch, header.base_offset)?;
        }
        Ok(())
    }

    /// Seals the active segment (its indexes are written out; the flush job forces them to stable
    /// storage with the segment) and starts a new one at the log end offset.
    pub fn roll(&mut self, now_ms: i64) -> Result<()> {
        let base = self.log_end_offset();
        if self.active().size_bytes == 0 {
            return Ok(());
        }
        self.active_mut().write_indexes(false)?;
        self.write_producer_snapshot()?;
        let segment = Segment::create(&self.dir, base, self.config.index_interval_bytes, now_ms)?;
        self.segments.insert(base, segment);
        tracing::debug!(dir = %self.dir.display(), base_offset = base, "rolled segment");
        Ok(())
    }

    /// Stored bytes from the batch holding `offset`: at most `max_bytes`, but always the whole first
    /// batch. `None` at the log end. The slice is read outside any lock with [`FileSlice::read`].
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Option<FileSlice>> {
        self.read_upto(offset, max_bytes, i64::MAX)
    }

    /// As [`Log::read`], leaving out the batches from `upto` on (a batch boundary: consumers read
    /// below the high watermark only, followers up to the log end).
    pub fn read_upto(&self, offset: i64, max_bytes: usize, upto: i64) -> Result<Option<FileSlice>> {
        let log_end_offset = self.log_end_offset();
        if offset < self.log_start_offset || offset > log_end_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        for segment in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .map(|(_, s)| s)
            .chain(self.segments.range(offset + 1..).map(|(_, s)| s))
        {
            if let Some(slice) = segment.slice_from(offset, max_bytes, upto)? {
                return Ok(Some(slice));
            }
        }
        Ok(None)
    }

    /// The first record with a timestamp at or after `timestamp_ms`: `(offset, timestamp)`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        for segment in self.segments.values() {
            if let Some((offset, timestamp)) = segment.find_timestamp(timestamp_ms)?
                && offset >= self.log_start_offset
            {
                return Ok(Some((offset, timestamp)));
            }
        }
        Ok(None)
    }

    /// The batch with the largest timestamp: `(offset, timestamp)`, as ListOffsets `MAX_TIMESTAMP`.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.segments
            .values()
            .filter(|s| s.max_timestamp_ms >= 0)
            .max_by_key(|s| s.max_timestamp_ms)
            .map(|s| (s.offset_of_max_timestamp, s.max_timestamp_ms))
    }

    /// Periodic work: roll on `segment.ms`, flush on `flush.ms` and, when `retention`, delete
    /// segments under `retention.ms`/`retention.bytes`.
    pub fn maintain(&mut self, now_ms: i64, retention: bool) -> Result<Maintenance> {
        let mut done = Maintenance::default();
        if policy::is_due_for_time_roll(&self.active().stat(), now_ms, &self.config) {
            self.roll(now_ms)?;
            done.rolled = true;
        }
        let sealed: Vec<_> = self.segments.values().map(Segment::stat).collect();
        let sealed = &sealed[..sealed.len() - 1];
        let count = if retention {
            policy::segments_to_delete(
                sealed,
                self.size_bytes(),
                now_ms,
                self.offloaded_offset,
                &self.config,
            )
            .max(policy::segments_below_log_start(
                sealed,
                self.log_start_offset,
            ))
        } else {
            0
        };
        if count > 0 {
            self.delete_oldest_segments(count)?;
            done.deleted_segments = count;
        }
        if policy::should_flush(
            self.unflushed_messages,
            self.last_flush_ms,
            now_ms,
            &self.config,
        ) {
            self.flush(now_ms)?;
            done.flushed = true;
        }
        Ok(done)
    }

    /// Deletes the whole sealed segments that end at or before `offset` and moves the log start
    /// offset up to `offset`, never back and never past the log end (DeleteRecords, a follower
    /// following its leader's log start, what a compacted snapshot superseded). Returns how many.
    /// Durable on return: the `log-start-offset` file and the folder holding it are fsynced, so
    /// the records below cannot come back after a crash.
    pub fn delete_segments_before(&mut self, offset: i64) -> Result<usize> {
        let active_base = self.active().base_offset;
        let count = self
            .segments
            .values()
            .take_while(|s| s.base_offset < active_base && s.next_offset <= offset)
            .count();
        if count > 0 {
            self.delete_oldest_segments(count)?;
        }
        let clamped = offset.clamp(self.log_start_offset, self.log_end_offset());
        let moved = clamped > self.log_start_offset;
        if moved {
            self.log_start_offset = clamped;
            self.store_log_start_offset()?;
        }
        if moved || count > 0 {
            // The rename of `log-start-offset` and the removals are entries of the folder.
            sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    fn delete_oldest_segments(&mut self, count: usize) -> Result<()> {
        assert!(
            count < self.segments.len(),
            "the active segment is never deleted"
        );
        for _ in 0..count {
            let (_, segment) = self.segments.pop_first().expect("counted above");
            tracing::info!(dir = %self.dir.display(), base_offset = segment.base_offset,
                next_offset = segment.next_offset, "retention deleted segment");
            segment.delete()?;
        }
        let first_base = *self.segments.keys().next().expect("a log has a segment");
        self.log_start_offset = self.log_start_offset.max(first_base);
        self.store_log_start_offset()
    }

    /// Writes `log-start-offset` (durably) unless it holds the value already.
    fn store_log_start_offset(&mut self) -> Result<()> {
        self.producers.forget_aborted_before(self.log_start_offset);
        if self.on_disk.log_start_offset == Some(self.log_start_offset) {
            return Ok(());
        }
        self.on_disk.log_start_offset = None;
        write_atomic(
            &self.dir.join(LOG_START_OFFSET_FILE),
            self.log_start_offset.to_string().as_bytes(),
        )?;
        self.on_disk.log_start_offset = Some(self.log_start_offset);
        Ok(())
    }

    /// Writes `recovery-point` (durably) unless it holds the value already.
    fn store_recovery_point(&mut self) -> Result<()> {
        if self.on_disk.recovery_point == Some(self.recovery_point) {
            return Ok(());
        }
        self.on_disk.recovery_point = None;
        write_atomic(
            &self.dir.join(RECOVERY_POINT_FILE),
            self.recovery_point.to_string().as_bytes(),
        )?;
        self.on_disk.recovery_point = Some(self.recovery_point);
        Ok(())
    }

    /// Records that every offset below `offset` is durable in the lake.
    pub fn set_offloaded_offset(&mut self, offset: i64) {
        self.offloaded_offset = self.offloaded_offset.max(offset);
    }

    /// What of this log the lake does not hold yet (offsets from the offloaded offset on): its
    /// bytes, and when the first segment holding such offsets was created.
    pub fn offload_lag(&self) -> OffloadLag {
        let mut lag = OffloadLag::default();
        for segment in self.segments.values() {
            if segment.next_offset > self.offloaded_offset && segment.size_bytes > 0 {
                lag.bytes += segment.size_bytes;
                lag.oldest_ms.get_or_insert(segment.created_ms);
            }
        }
        lag
    }

    /// Sealed segments (never the active one) holding offsets at or after `offset`, in order.
    pub fn sealed_segments_from(&self, offset: i64) -> Vec<SealedSegment> {
        let active_base = self.active().base_offset;
        self.segments
            .values()
            .filter(|s| s.base_offset < active_base && s.next_offset > offset && s.size_bytes > 0)
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                slice: s.content(),
            })
            .collect()
    }

    /// Sealed segments written since the last fsync, to be flushed without holding the log (a
    /// sealed segment is never written again). Finish with [`Log::complete_flush`].
    pub fn pending_flush(&self) -> Option<FlushJob> {
        let active_base = self.active().base_offset;
        if self.recovery_point >= active_base {
            return None;
        }
        let files = self
            .segments
            .values()
            .filter(|s| s.base_offset < active_base && s.next_offset > self.recovery_point)
            .map(|s| s.files(true))
            .collect();
        Some(FlushJob {
            files,
            recovery_point: active_base,
        })
    }

    /// Records that a [`FlushJob`] ran: recovery after a crash starts from its end.
    pub fn complete_flush(&mut self, job: &FlushJob) -> Result<()> {
        if job.recovery_point > self.recovery_point {
            self.recovery_point = job.recovery_point;
            self.store_recovery_point()?;
        }
        Ok(())
    }

    /// Forces every segment to stable storage and advances the recovery point to the log end.
    pub fn flush(&mut self, now_ms: i64) -> Result<()> {
        let active_base = self.active().base_offset;
        for segment in self
            .segments
            .values()
            .filter(|s| s.next_offset > self.recovery_point)
        {
            segment.files(segment.base_offset < active_base).sync()?;
        }
        self.recovery_point = self.log_end_offset();
        self.unflushed_messages = 0;
        self.last_flush_ms = now_ms;
        self.store_recovery_point()
    }

    /// Writes the producer state snapshot at the log end (durably) unless the one on disk is there.
    fn write_producer_snapshot(&mut self) -> Result<()> {
        let offset = self.log_end_offset();
        if self.on_disk.producer_snapshot == Some(offset) {
            return Ok(());
        }
        let snapshot = ProducerSnapshot {
            offset,
            producers: self.producers.clone(),
        };
        let bytes = serde_json::to_vec(&snapshot).expect("producer state serializes");
        self.on_disk.producer_snapshot = None;
        write_atomic(&self.dir.join(PRODUCER_STATE_FILE), &bytes)?;
        self.on_disk.producer_snapshot = Some(offset);
        Ok(())
    }

    /// Flushes everything and marks the shutdown clean, so the next open skips recovery and trusts
    /// the index files (the active segment's are written and forced to stable storage here). State
    /// files that already hold their values are not rewritten: closing an idle log forces nothing
    /// to disk.
    pub fn close(mut self, now_ms: i64) -> Result<()> {
        self.active_mut().write_indexes(true)?;
        self.flush(now_ms)?;
        self.write_producer_snapshot()?;
        self.store_log_start_offset()?;
        // Not fsynced: everything it vouches for is durable before it is created, and if it is lost
        // the next open only recovers when it need not (the safe way round). Its removal at the
        // next open is not fsynced either (one folder fsync per partition would slow the start of
        // many partitions): what it names is checked instead.
        let active = self.active().base_offset;
        let path = crate::segment::segment_path(&self.dir, active, "log");
        let length = std::fs::metadata(&path).at(&path)?.len();
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        std::fs::write(&marker, format!("{active} {length}\n")).at(&marker)?;
        Ok(())
    }

    /// The partition folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn open_segments(
    dir: &Path,
    config: &LogConfig,
    unclean: bool,
    recovery_point: i64,
    now_ms: i64,
    report: &mut RecoveryReport,
) -> Result<BTreeMap<i64, Segment>> {
    let bases = list_segment_bases(dir)?;
    let mut segments = BTreeMap::new();
    for (i, &base) in bases.iter().enumerate() {
        let segment_end = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        let mode = if unclean && segment_end > recovery_point {
            OpenMode::Recover
        } else {
            OpenMode::Trusted
        };
        let (segment, cut) = Segment::open(dir, base, mode, config.index_interval_bytes, now_ms)?;
        segments.insert(base, segment);
        if cut > 0 {
            tracing::warn!(dir = %dir.display(), base_offset = base, cut_bytes = cut, "cut torn or corrupt tail");
            report.truncated_bytes += cut;
            // What follows a corrupt batch cannot be trusted to be contiguous: drop it.
            for &later in &bases[i + 1..] {
                let (later_segment, _) = Segment::open(
                    dir,
                    later,
                    OpenMode::Trusted,
                    config.index_interval_bytes,
                    now_ms,
                )?;
                later_segment.delete()?;
                report.dropped_segments += 1;
            }
            break;
        }
    }
    // An empty non-first segment left by a roll just before a crash is harmless; keep it active.
    Ok(segments)
}

/// Whether a clean-shutdown marker's text still describes the log: its last segment is the one
/// it names, with the length it names. A marker written before markers named anything (empty) is
/// trusted, as it was then.
fn clean_marker_matches(dir: &Path, text: &str) -> Result<bool> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(true);
    }
    let named = text
        .split_once(' ')
        .and_then(|(base, length)| Some((base.parse::<i64>().ok()?, length.parse::<u64>().ok()?)));
    let Some((base, length)) = named else {
        tracing::warn!(dir = %dir.display(), marker = text, "unreadable clean-shutdown marker: recovering");
        return Ok(false);
    };
    let last = list_segment_bases(dir)?.last().copied();
    let path = crate::segment::segment_path(dir, base, "log");
    let actual = match std::fs::metadata(&path) {
        Ok(metadata) => Some(metadata.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).at(&path),
    };
    let matches = last == Some(base) && actual == Some(length);
    if !matches {
        tracing::warn!(dir = %dir.display(), marker = text, last_segment = ?last, length = ?actual,
            "the clean-shutdown marker does not describe the log (written to after it, then a \
             power loss?): recovering");
    }
    Ok(matches)
}

fn list_segment_bases(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".log") {
            match stem.parse::<i64>() {
                Ok(base) if base >= 0 => bases.push(base),
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a file that is not a segment")
                }
            }
        } else if name.ends_with(".tmp") {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn read_i64(path: &Path) -> Result<Option<i64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(path),
    }
}

/// Forces a folder's entries (files created, renamed or removed in it) to stable storage.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces a small file atomically and durably: write a temporary file, fsync it, rename it over
/// the target, fsync the folder (so that the rename, not only the new bytes, survives a power
/// loss).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).at(&tmp)?;
        std::io::Write::write_all(&mut file, bytes).at(&tmp)?;
        file.sync_data().at(&tmp)?;
    }
    std::fs::rename(&tmp, path).at(path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}
