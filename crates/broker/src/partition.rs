//! One partition replica on this broker: its log behind a lock, its offsets readable without it,
//! and its role (Kafka's ISR protocol).
//!
//! As leader it appends produced batches, tracks each follower's log end offset from the offsets
//! the follower fetches at, and moves the high watermark to the minimum over the in-sync
//! replicas; it proposes ISR changes (a follower caught up, or one lagging longer than
//! `replica.lag.time.max.ms`) for the controller to commit. As follower it appends the batches it
//! fetched from the leader as they are, and takes the leader's high watermark. A single broker is
//! the leader of every partition with itself as the only in-sync replica: the high watermark is
//! then the log end offset after each append, as before replication.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

use strata_log::{AppendInfo, FileSlice, Log, LogConfig, Maintenance, SealedSegment};
use tokio::sync::watch;

use crate::error::{Error, Result};

mod log_start;

/// Who leads a partition and who is in sync, as the metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The leader's broker id, -1 when offline.
    pub leader: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// Every replica, preferred leader first.
    pub replicas: Vec<i32>,
    /// The in-sync replicas.
    pub isr: Vec<i32>,
}

impl Assignment {
    /// A single broker's partition: it alone leads and is in sync.
    pub fn solo(node_id: i32) -> Self {
        Self {
            leader: node_id,
            leader_epoch: 0,
            replicas: vec![node_id],
            isr: vec![node_id],
        }
    }
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct FollowerState {
    /// The offset it last fetched at (-1: not since this leadership began).
    log_end_offset: i64,
    /// When it last had everything the leader had (Kafka's lastCaughtUpTimeMs).
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's log end offset at that fetch.
    leader_end_at_last_fetch: i64,
    /// The log start offset it last reported (-1: not since this leadership began).
    log_start_offset: i64,
}

impl FollowerState {
    /// A follower not heard from since this leadership began (or since it was added).
    fn unknown(now_ms: i64) -> Self {
        Self {
            log_end_offset: -1,
            last_caught_up_ms: now_ms,
            last_fetch_ms: now_ms,
            leader_end_at_last_fetch: -1,
            log_start_offset: -1,
        }
    }
}

#[derive(Debug)]
struct Role {
    assignment: Assignment,
    followers: HashMap<i32, FollowerState>,
    /// An ISR this leader proposed and the controller has not committed yet.
    pending_isr: Option<Vec<i32>>,
    /// This replica's log end offset when it became leader: a follower joins the ISR only once
    /// it has everything up to here (Kafka's leaderEpochStartOffset), whatever the high watermark.
    leader_start_offset: i64,
}

/// A partition replica on this broker.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: i32,
    node_id: i32,
    leader_epoch: AtomicI32,
    role: Mutex<Role>,
    /// `None` once closed (shutdown or topic deletion).
    log: Mutex<Option<Log>>,
    /// The high watermark; long-polling fetches wait for it to move.
    high_watermark: watch::Sender<i64>,
    /// The log end offset; followers' long-polling fetches wait for it to move.
    log_end_offset: watch::Sender<i64>,
    log_start_offset: AtomicI64,
    /// A follower that must ask its leader where to truncate (OffsetForLeaderEpoch) before it
    /// fetches: set when it opens as a follower and whenever its leader or epoch changes.
    needs_truncation: AtomicBool,
}

/// Why an `acks=all` produce could not be answered with success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitWait {
    /// The in-sync replicas have it.
    Committed,
    /// This broker stopped leading (or the epoch changed) before it was committed.
    NotLeader,
    /// The timeout passed first.
    TimedOut,
}

/// A producer of a partition, as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// The sequence of its last record here, -1 when none.
    pub last_sequence: i32,
    /// The first offset of its open transaction here.
    pub txn_start_offset: Option<i64>,
    /// The coordinator epoch of its last marker here, -1 when none.
    pub coordinator_epoch: i32,
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
    /// Offset below which every transaction is decided (the high watermark when none is open).
    pub last_stable_offset: i64,
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
        Self::open_as(topic, index, dir, config, Assignment::solo(0), 0, now_ms)
    }

    /// Opens the partition's log in `dir` as replica `node_id` with the role `assignment` gives.
    pub fn open_as(
        topic: &str,
        index: i32,
        dir: &Path,
        config: LogConfig,
        assignment: Assignment,
        node_id: i32,
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
        // A replica of a replicated partition starts with what it knows is committed: nothing
        // beyond its log start until the leader says otherwise. A single broker's log is all
        // committed.
        let solo = assignment.replicas.len() <= 1;
        let high_watermark = if solo {
            log.log_end_offset()
        } else {
            log.log_start_offset()
        };
        let partition = Self {
            topic: topic.to_string(),
            index,
            node_id,
            leader_epoch: AtomicI32::new(assignment.leader_epoch),
            role: Mutex::new(Role {
                assignment: Assignment {
                    leader: -2,
                    ..assignment.clone()
                },
                followers: HashMap::new(),
                pending_isr: None,
                leader_start_offset: 0,
            }),
            high_watermark: watch::Sender::new(high_watermark),
            log_end_offset: watch::Sender::new(log.log_end_offset()),
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log: Mutex::new(Some(log)),
            needs_truncation: AtomicBool::new(false),
        };
        partition.set_assignment(assignment, now_ms);
        Ok(partition)
    }

    /// Applies the metadata's view of the partition: a new leader epoch makes this replica the
    /// leader (followers start unknown, and in sync until `replica.lag.time.max.ms` says
    /// otherwise) or a follower; the same epoch with another ISR is a committed ISR change.
    /// Returns whether the role or epoch changed (a follower then truncates and fetches anew).
    pub fn set_assignment(&self, assignment: Assignment, now_ms: i64) -> bool {
        let mut role = self.role.lock();
        let changed = role.assignment.leader != assignment.leader
            || role.assignment.leader_epoch != assignment.leader_epoch;
        if changed {
            role.followers = assignment
                .replicas
                .iter()
                .filter(|&&r| r != self.node_id)
                .map(|&r| (r, FollowerState::unknown(now_ms)))
                .collect();
            role.pending_isr = None;
            role.leader_start_offset = self.log_end_offset();
            self.leader_epoch
                .store(assignment.leader_epoch, Ordering::Release);
            if assignment.leader != self.node_id {
                self.needs_truncation.store(true, Ordering::Release);
            }
        } else if role.assignment.replicas != assignment.replicas {
            // A reassignment added or removed replicas under the same leader and epoch (KIP-455):
            // the new ones are followed from now on, the removed ones forgotten.
            role.followers
                .retain(|r, _| assignment.replicas.contains(r));
            for &r in &assignment.replicas {
                if r != self.node_id {
                    role.followers
                        .entry(r)
                        .or_insert_with(|| FollowerState::unknown(now_ms));
                }
            }
        }
        if role.pending_isr.as_ref() == Some(&assignment.isr) {
            role.pending_isr = None;
        }
        role.assignment = assignment;
        drop(role);
        if self.is_leader() {
            self.advance_high_watermark();
        }
        changed
    }

    /// Takes the mark that this follower must truncate before fetching (see
    /// [`Partition::set_assignment`]); `true` once per mark.
    pub fn take_truncation(&self) -> bool {
        self.needs_truncation.swap(false, Ordering::AcqRel)
    }

    /// Marks this follower to ask its leader where to truncate before its next fetch.
    pub fn mark_truncation(&self) {
        self.needs_truncation.store(true, Ordering::Release);
    }

    /// Whether this follower waits for a truncation.
    pub fn needs_truncation(&self) -> bool {
        self.needs_truncation.load(Ordering::Acquire)
    }

    /// The metadata's view of the partition as applied here.
    pub fn assignment(&self) -> Assignment {
        self.role.lock().assignment.clone()
    }

    /// Whether this broker leads the partition.
    pub fn is_leader(&self) -> bool {
        self.role.lock().assignment.leader == self.node_id
    }

    /// The leader epoch if this broker leads the partition, read together with the role: never a
    /// later leader's epoch beside this broker's old role (the lake's writer uses it to fence).
    pub fn leading_epoch(&self) -> Option<i32> {
        let role = self.role.lock();
        (role.assignment.leader == self.node_id).then_some(role.assignment.leader_epoch)
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
        self.leader_epoch.load(Ordering::Acquire)
    }

    /// The offset the next record will get here.
    pub fn log_end_offset(&self) -> i64 {
        *self.log_end_offset.borrow()
    }

    /// A receiver that changes when the log end offset moves.
    pub fn watch_log_end_offset(&self) -> watch::Receiver<i64> {
        self.log_end_offset.subscribe()
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

    fn not_leader(&self) -> Error {
        Error::NotLeader(format!(
            "this broker does not lead {}-{}",
            self.topic, self.index
        ))
    }

    /// The in-sync replicas as the leader counts them: the committed ISR, and a follower whose
    /// addition is proposed (it only lowers the high watermark, so counting it is safe).
    pub fn isr(&self) -> Vec<i32> {
        let role = self.role.lock();
        let mut isr = role.assignment.isr.clone();
        for r in role.pending_isr.iter().flatten() {
            if !isr.contains(r) {
                isr.push(*r);
            }
        }
        isr
    }

    /// Appends one produced batch (this broker must lead) and moves the high watermark as far as
    /// the in-sync replicas allow.
    pub fn append(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo> {
        self.append_at_epoch(records, now_ms).map(|(info, _)| info)
    }

    /// As [`Partition::append`], with the leader epoch the batch was stamped with. The role is
    /// held across the append (lock order: role, then log), so a batch never carries an epoch
    /// this broker did not lead at.
    pub fn append_at_epoch(&self, records: &[u8], now_ms: i64) -> Result<(AppendInfo, i32)> {
        let role = self.role.lock();
        if role.assignment.leader != self.node_id {
            return Err(self.not_leader());
        }
        let epoch = role.assignment.leader_epoch;
        let (info, end) = self.with_log(|log| {
            let info = log.append(records, epoch, now_ms)?;
            Ok((info, log.log_end_offset()))
        })?;
        self.log_end_offset.send_replace(end);
        drop(role);
        self.advance_high_watermark();
        Ok((info, epoch))
    }

    /// Appends a transaction marker for `producer_id` (this broker must lead), with the leader
    /// epoch it was stamped with; the high watermark moves as for any append.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: strata_log::txn::Marker,
        now_ms: i64,
    ) -> Result<(AppendInfo, i32)> {
        let role = self.role.lock();
        if role.assignment.leader != self.node_id {
            return Err(self.not_leader());
        }
        let epoch = role.assignment.leader_epoch;
        let (info, end) = self.with_log(|log| {
            let info = log.append_marker(producer_id, producer_epoch, marker, epoch, now_ms)?;
            Ok((info, log.log_end_offset()))
        })?;
        self.log_end_offset.send_replace(end);
        drop(role);
        self.advance_high_watermark();
        Ok((info, epoch))
    }

    /// The last stable offset: `read_committed` consumers read below it (the high watermark,
    /// held back by the first record of the oldest transaction not yet decided everywhere).
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.with_log(|log| Ok(log.last_stable_offset(hw)))
            .unwrap_or(hw)
    }

    /// As [`Partition::read`] for a `read_committed` consumer: below the last stable offset, with
    /// the aborted transactions whose records the slice may hold.
    pub fn read_committed(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(ReadResult, Vec<strata_log::txn::AbortedTxn>)> {
        let high_watermark = self.high_watermark();
        let (records, log_start_offset, last_stable_offset, aborted) = self.with_log(|log| {
            let lso = log.last_stable_offset(high_watermark);
            Ok((
                log.read_upto(offset, max_bytes, lso)?,
                log.log_start_offset(),
                lso,
                log.aborted_between(offset, lso),
            ))
        })?;
        let read = ReadResult {
            records,
            high_watermark,
            log_start_offset,
            last_stable_offset,
        };
        Ok((read, aborted))
    }

    /// The producers of this partition and their open transactions, for DescribeProducers.
    pub fn producers(&self) -> Result<Vec<ProducerInfo>> {
        self.with_log(|log| {
            Ok(log
                .producer_state()
                .producers()
                .map(|(id, e)| ProducerInfo {
                    producer_id: id,
                    epoch: e.epoch,
                    last_sequence: e.batches.back().map_or(-1, |b| b.last_sequence),
                    txn_start_offset: e.txn_first_offset,
                    coordinator_epoch: e.coordinator_epoch,
                })
                .collect())
        })
    }

    /// Appends batches fetched from the leader, as they are, and takes the leader's high
    /// watermark (bounded by what this replica has). Returns the new log end offset.
    pub fn append_replicated(
        &self,
        batches: &[u8],
        leader_high_watermark: i64,
        now_ms: i64,
    ) -> Result<i64> {
        let end = self.with_log(|log| Ok(log.append_replicated(batches, now_ms)?))?;
        self.log_end_offset.send_replace(end);
        let hw = leader_high_watermark.min(end);
        self.high_watermark.send_if_modified(|current| {
            let moved = *current != hw;
            *current = hw;
            moved
        });
        Ok(end)
    }

    /// Drops every batch at or after `offset` (a follower removing what the leader lacks).
    pub fn truncate_to(&self, offset: i64, now_ms: i64) -> Result<()> {
        let (end, start) = self.with_log(|log| {
            log.truncate_to(offset, now_ms)?;
            Ok((log.log_end_offset(), log.log_start_offset()))
        })?;
        self.log_start_offset.store(start, Ordering::Release);
        self.log_end_offset.send_replace(end);
        self.high_watermark.send_if_modified(|hw| {
            let moved = *hw > end;
            *hw = (*hw).min(end);
            moved
        });
        Ok(())
    }

    /// Moves the log start offset up to `offset`, at most to the high watermark, and deletes the
    /// whole segments below it (Kafka's DeleteRecords). The leader of a `__consumer_offsets`
    /// partition calls it once a snapshot of its state is committed; its followers follow.
    pub fn delete_records_before(&self, offset: i64) -> Result<()> {
        let upto = offset.min(self.high_watermark());
        let start = self.with_log(|log| {
            log.delete_segments_before(upto)?;
            Ok(log.log_start_offset())
        })?;
        self.log_start_offset.store(start, Ordering::Release);
        Ok(())
    }

    /// Empties this replica's log and starts it again at `offset` (a follower whose log ends
    /// before the leader's log start: the leader's older segments are in the lake).
    pub fn restart_at(&self, offset: i64, now_ms: i64) -> Result<()> {
        self.with_log(|log| Ok(log.restart_at(offset, now_ms)?))?;
        self.log_start_offset
            .store(offset.max(0), Ordering::Release);
        self.log_end_offset.send_replace(offset.max(0));
        self.high_watermark.send_replace(offset.max(0));
        Ok(())
    }

    /// Where leader epoch `epoch` ended in this replica's log (OffsetForLeaderEpoch).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Result<Option<(i32, i64)>> {
        self.with_log(|log| Ok(log.end_offset_for_epoch(epoch)?))
    }

    /// The leader epoch of the last batch this replica holds.
    pub fn latest_epoch(&self) -> Result<Option<i32>> {
        self.with_log(|log| Ok(log.latest_epoch()?))
    }

    /// Moves the high watermark (leader only) to the smallest log end offset over the in-sync
    /// replicas, never backwards.
    fn advance_high_watermark(&self) {
        let end = self.log_end_offset();
        let candidate = {
            let role = self.role.lock();
            let isr = role
                .assignment
                .isr
                .iter()
                .chain(role.pending_isr.iter().flatten());
            isr.filter(|&&r| r != self.node_id)
                .map(|r| role.followers.get(r).map_or(-1, |f| f.log_end_offset))
                .fold(end, i64::min)
        };
        self.high_watermark.send_if_modified(|hw| {
            let moved = candidate > *hw;
            if moved {
                *hw = candidate;
            }
            moved
        });
    }

    /// Notes a follower's fetch at `fetch_offset` (its log end offset): the high watermark may
    /// move, and a follower out of the ISR that caught up is proposed for it (returned: the new
    /// ISR, for the controller to commit). Refused unless this broker leads at `epoch` (or the
    /// follower sent no epoch, -1).
    pub fn record_follower_fetch(
        &self,
        replica: i32,
        fetch_offset: i64,
        epoch: i32,
        now_ms: i64,
    ) -> Result<Option<(i32, Vec<i32>)>> {
        let end = self.log_end_offset();
        let hw = self.high_watermark();
        if fetch_offset > end {
            // Past this leader's log: the follower has what the leader lacks and must truncate
            // (the fetch answers OFFSET_OUT_OF_RANGE); nothing about it is recorded.
            return Ok(None);
        }
        let proposal = {
            let mut role = self.role.lock();
            if role.assignment.leader != self.node_id {
                return Err(self.not_leader());
            }
            if epoch >= 0 && epoch != role.assignment.leader_epoch {
                return Err(Error::FencedLeaderEpoch(format!(
                    "{}-{}: fetch at epoch {epoch}, the leader is at epoch {}",
                    self.topic, self.index, role.assignment.leader_epoch
                )));
            }
            let Some(state) = role.followers.get_mut(&replica) else {
                return Err(Error::NotLeader(format!(
                    "broker {replica} is not a replica of {}-{}",
                    self.topic, self.index
                )));
            };
            if fetch_offset >= end {
                state.last_caught_up_ms = now_ms;
            } else if fetch_offset >= state.leader_end_at_last_fetch {
                state.last_caught_up_ms = state.last_caught_up_ms.max(state.last_fetch_ms);
            }
            state.log_end_offset = fetch_offset.min(end);
            state.last_fetch_ms = now_ms;
            state.leader_end_at_last_fetch = end;
            let in_sync = role.assignment.isr.contains(&replica)
                || role
                    .pending_isr
                    .as_ref()
                    .is_some_and(|p| p.contains(&replica));
            let caught_up = fetch_offset >= hw.max(role.leader_start_offset);
            if !in_sync && role.pending_isr.is_none() && caught_up {
                let mut isr = role.assignment.isr.clone();
                isr.push(replica);
                role.pending_isr = Some(isr.clone());
                Some((role.assignment.leader_epoch, isr))
            } else {
                None
            }
        };
        self.advance_high_watermark();
        Ok(proposal)
    }

    /// The ISR without the followers that have not caught up for `lag_ms` (leader only), when
    /// that differs from the committed one and no change is pending.
    pub fn isr_shrink_proposal(&self, now_ms: i64, lag_ms: i64) -> Option<(i32, Vec<i32>)> {
        let mut role = self.role.lock();
        if role.assignment.leader != self.node_id || role.pending_isr.is_some() {
            return None;
        }
        let isr: Vec<i32> = role
            .assignment
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == self.node_id
                    || role
                        .followers
                        .get(r)
                        .is_some_and(|f| now_ms - f.last_caught_up_ms <= lag_ms)
            })
            .collect();
        if isr == role.assignment.isr {
            return None;
        }
        role.pending_isr = Some(isr.clone());
        Some((role.assignment.leader_epoch, isr))
    }

    /// Forgets a proposed ISR the controller refused or never answered, so it is proposed again.
    pub fn clear_pending_isr(&self) {
        self.role.lock().pending_isr = None;
        self.advance_high_watermark();
    }

    /// Waits until the high watermark passes `last_offset` (`acks=all`), this broker stops leading
    /// at `epoch`, or `timeout` passes.
    pub async fn wait_committed(
        &self,
        last_offset: i64,
        epoch: i32,
        timeout: std::time::Duration,
    ) -> CommitWait {
        let mut hw = self.high_watermark.subscribe();
        let wait = async {
            loop {
                if *hw.borrow_and_update() > last_offset {
                    return CommitWait::Committed;
                }
                if !self.is_leader() || self.leader_epoch() != epoch {
                    return CommitWait::NotLeader;
                }
                // Leadership changes do not move the watermark: look again now and then.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(100), hw.changed()).await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(CommitWait::TimedOut)
    }

    /// Locates stored batches from `offset`: at most `max_bytes`, but the whole first batch. The
    /// file is read (or sent) after the lock is released, so appends are not held up by reads.
    /// Consumers read below the high watermark; a follower (`replica`) up to the log end.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_as(offset, max_bytes, false)
    }

    /// As [`Partition::read`]; `replica` reads up to the log end instead of the high watermark.
    pub fn read_as(&self, offset: i64, max_bytes: usize, replica: bool) -> Result<ReadResult> {
        let high_watermark = self.high_watermark();
        let upto = if replica { i64::MAX } else { high_watermark };
        let (records, log_start_offset, last_stable_offset) = self.with_log(|log| {
            Ok((
                log.read_upto(offset, max_bytes, upto)?,
                log.log_start_offset(),
                log.last_stable_offset(high_watermark),
            ))
        })?;
        Ok(ReadResult {
            records,
            high_watermark,
            log_start_offset,
            last_stable_offset,
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

    /// The aborted transactions whose records may lie in `[from, upto)` (see
    /// [`strata_log::Log::aborted_between`]): what the offload leaves out of a segment.
    pub fn aborted_between(
        &self,
        from: i64,
        upto: i64,
    ) -> Result<Vec<strata_log::txn::AbortedTxn>> {
        self.with_log(|log| Ok(log.aborted_between(from, upto)))
    }

    /// Sealed segments holding offsets at or after `offset`, for offloading.
    pub fn sealed_segments_from(&self, offset: i64) -> Result<Vec<SealedSegment>> {
        self.with_log(|log| Ok(log.sealed_segments_from(offset)))
    }

    /// What of this replica's log the lake does not hold yet (see [`strata_log::Log::offload_lag`]).
    pub fn offload_lag(&self) -> Result<strata_log::OffloadLag> {
        self.with_log(|log| Ok(log.offload_lag()))
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

#[cfg(test)]
mod tests;
