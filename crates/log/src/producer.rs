//! Idempotent producer state of one partition: the last batches of each producer, so that a retried
//! batch is answered with its original offset instead of being appended twice, and a gap in the
//! sequence is refused. Also the transactions (KIP-98): each producer's open transaction (where
//! it started: the last stable offset is the first of them) and the aborted ones, which
//! `read_committed` consumers skip.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::batch::BatchHeader;
use crate::error::{Error, Result};
use crate::txn::{AbortedTxn, Marker};

/// Batches remembered per producer, as Kafka does (`max.in.flight.requests.per.connection` <= 5).
pub const BATCHES_REMEMBERED: usize = 5;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    /// Sequence of its first record.
    pub first_sequence: i32,
    /// Sequence of its last record.
    pub last_sequence: i32,
    /// Offset given to its first record.
    pub base_offset: i64,
}

/// What the log knows of one producer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// The last batches, oldest first, at most [`BATCHES_REMEMBERED`].
    pub batches: VecDeque<BatchMeta>,
    /// The offset of the first record of its open transaction in this partition, if one is open.
    #[serde(default)]
    pub txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last marker written for it (-1: none).
    #[serde(default = "no_coordinator_epoch")]
    pub coordinator_epoch: i32,
}

fn no_coordinator_epoch() -> i32 {
    -1
}

/// The outcome of checking a batch against the producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data in sequence: append it.
    Append,
    /// A retry of a batch already in the log, at this base offset: do not append.
    Duplicate {
        /// Offset the original batch got.
        base_offset: i64,
    },
}

/// Producer id → state, for one partition, and the aborted transactions still in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Aborted transactions by the offset of their marker (which only grows).
    #[serde(default)]
    aborted: VecDeque<AbortedTxn>,
    /// Open transactions: first offset → producer id (derived from `producers`).
    #[serde(skip)]
    open: BTreeMap<i64, i64>,
    /// Transactions ended lately, `(marker offset, first offset)` by marker: until the high
    /// watermark passes its marker a transaction still holds the last stable offset back (the
    /// marker could be lost with this leader). Not kept across restarts: a restarted replica
    /// starts with everything it has as committed or not by its new high watermark.
    #[serde(skip)]
    ended: VecDeque<(i64, i64)>,
}

impl ProducerStateTable {
    /// Rebuilds what is derived from the producers (after deserialization).
    pub(crate) fn reindex(&mut self) {
        self.open = self
            .producers
            .iter()
            .filter_map(|(&id, e)| e.txn_first_offset.map(|first| (first, id)))
            .collect();
    }

    /// The first offset of the oldest open transaction: the last stable offset cannot pass it.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open.keys().next().copied()
    }

    /// The last stable offset under high watermark `high_watermark`: below the first record of
    /// every transaction that is open, or ended by a marker the high watermark has not passed.
    pub fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        while self
            .ended
            .front()
            .is_some_and(|&(marker, _)| marker < high_watermark)
        {
            self.ended.pop_front();
        }
        let ended = self.ended.iter().map(|&(_, first)| first).min();
        [Some(high_watermark), self.first_unstable_offset(), ended]
            .into_iter()
            .flatten()
            .min()
            .expect("the high watermark is there")
    }

    /// The open transactions, `(first offset, producer id)`, oldest first.
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open.iter().map(|(&first, &id)| (first, id))
    }

    /// The aborted transactions whose records may lie in `[from, upto)`: marker at or after
    /// `from` and first record before `upto`, by marker offset.
    pub fn aborted_between(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(|a| a.first_offset < upto)
            .copied()
            .collect()
    }

    /// Forgets the aborted transactions whose marker is below `log_start_offset` (gone with
    /// their segments).
    pub fn forget_aborted_before(&mut self, log_start_offset: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start_offset)
        {
            self.aborted.pop_front();
        }
    }

    /// Every producer known, with its state.
    pub fn producers(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(&id, e)| (id, e))
    }

    /// Checks a transaction marker for producer `producer_id` before it is appended: a marker
    /// of an older producer epoch (a fenced producer's) or of an older coordinator is refused.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<()> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < entry.epoch {
            return Err(Error::InvalidProducerEpoch {
                producer_id,
                current: entry.epoch,
                received: producer_epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(Error::CoordinatorFenced {
                producer_id,
                current: entry.coordinator_epoch,
                received: coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records an appended marker (a control batch at `batch.base_offset`): the producer's open
    /// transaction ends, and is remembered as aborted if the marker aborts it.
    pub fn record_marker(&mut self, batch: &BatchHeader, marker: Marker) {
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.producer_epoch,
                batches: VecDeque::new(),
                txn_first_offset: None,
                coordinator_epoch: -1,
            });
        if batch.producer_epoch > entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(marker.coordinator_epoch);
        if let Some(first) = entry.txn_first_offset.take() {
            self.open.remove(&first);
            self.ended.push_back((batch.base_offset, first));
            if !marker.commit {
                self.aborted.push_back(AbortedTxn {
                    producer_id: batch.producer_id,
                    first_offset: first,
                    last_offset: batch.base_offset,
                });
            }
        }
    }

    /// Checks an incoming batch. Batches without a producer id always append.
    pub fn check(&self, batch: &BatchHeader) -> Result<SequenceCheck> {
        if !batch.has_producer_id() {
            if batch.is_transactional() {
                return Err(Error::InvalidTxnState {
                    producer_id: batch.producer_id,
                    reason: "a transactional batch without a producer id",
                });
            }
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            // A producer new to this partition starts at sequence 0.
            return expect_sequence(batch, 0);
        };
        if batch.producer_epoch < entry.epoch {
            return Err(Error::InvalidProducerEpoch {
                producer_id: batch.producer_id,
                current: entry.epoch,
                received: batch.producer_epoch,
            });
        }
        if batch.producer_epoch > entry.epoch {
            // A bumped epoch restarts the sequence.
            return expect_sequence(batch, 0);
        }
        if entry.txn_first_offset.is_some() && !batch.is_transactional() {
            return Err(Error::InvalidTxnState {
                producer_id: batch.producer_id,
                reason: "a non-transactional batch while the producer's transaction is open",
            });
        }
        let last_sequence = batch.last_sequence();
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |b| next_sequence(b.last_sequence));
        expect_sequence(batch, expected)
    }

    /// Records a data batch that was appended with its final offsets (markers go through
    /// [`Self::record_marker`]). A transactional batch opens its producer's transaction here
    /// unless one is open.
    pub fn record(&mut self, batch: &BatchHeader) {
        if !batch.has_producer_id() || batch.is_control() {
            return;
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.producer_epoch,
                batches: VecDeque::new(),
                txn_first_offset: None,
                coordinator_epoch: -1,
            });
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        if batch.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(batch.base_offset);
            self.open.insert(batch.base_offset, batch.producer_id);
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset: batch.base_offset,
        });
    }

    /// Number of producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

fn expect_sequence(batch: &BatchHeader, expected: i32) -> Result<SequenceCheck> {
    if batch.base_sequence == expected {
        Ok(SequenceCheck::Append)
    } else {
        Err(Error::OutOfOrderSequence {
            producer_id: batch.producer_id,
            expected,
            received: batch.base_sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: i32,
        base_offset: i64,
    ) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: records,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut table = ProducerStateTable::default();
        let first = batch(7, 0, 0, 3, 100);
        assert_eq!(table.check(&first).unwrap(), SequenceCheck::Append);
        table.record(&first);
        let second = batch(7, 0, 3, 2, 103);
        assert_eq!(table.check(&second).unwrap(), SequenceCheck::Append);
        table.record(&second);
        assert_eq!(
            table.check(&batch(7, 0, 0, 3, -1)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            table.check(&batch(7, 0, 3, 2, -1)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 103 }
        );
    }

    #[test]
    fn gaps_and_old_epochs_are_refused() {
        let mut table = ProducerStateTable::default();
        table.record(&batch(7, 1, 0, 1, 0));
        assert!(matches!(
            table.check(&batch(7, 1, 5, 1, -1)),
            Err(Error::OutOfOrderSequence {
                expected: 1,
                received: 5,
                ..
            })
        ));
        assert!(matches!(
            table.check(&batch(7, 0, 1, 1, -1)),
            Err(Error::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            table.check(&batch(8, 0, 3, 1, -1)),
            Err(Error::OutOfOrderSequence { expected: 0, .. })
        ));
        // A new epoch restarts at 0.
        assert_eq!(
            table.check(&batch(7, 2, 0, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
        assert!(table.check(&batch(7, 2, 1, 1, -1)).is_err());
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            table.record(&batch(1, 0, i, 1, i64::from(i)));
        }
        assert!(
            table.check(&batch(1, 0, 1, 1, -1)).is_err(),
            "too old to be known as a duplicate"
        );
        assert_eq!(
            table.check(&batch(1, 0, 2, 1, -1)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 2 }
        );
        assert_eq!(
            table.check(&batch(1, 0, 7, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn plain_batches_are_not_tracked() {
        let mut table = ProducerStateTable::default();
        let plain = batch(-1, -1, -1, 1, 0);
        assert_eq!(table.check(&plain).unwrap(), SequenceCheck::Append);
        table.record(&plain);
        assert!(table.is_empty());
    }
}
