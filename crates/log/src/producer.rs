//! Idempotent producer state of one partition: the last batches of each producer, so that a retried
//! batch is answered with its original offset instead of being appended twice, and a gap in the
//! sequence is refused.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::batch::BatchHeader;
use crate::error::{Error, Result};

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

/// Producer id → state, for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateTable {
    /// Checks an incoming batch. Batches without a producer id always append.
    pub fn check(&self, batch: &BatchHeader) -> Result<SequenceCheck> {
        if !batch.has_producer_id() {
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

    /// Records a batch that was appended with its final offsets.
    pub fn record(&mut self, batch: &BatchHeader) {
        if !batch.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.producer_epoch,
                batches: VecDeque::new(),
            });
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
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
