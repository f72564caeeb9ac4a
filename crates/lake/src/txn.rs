//! Transactions in the lake: it holds committed records only. A segment's control batches
//! (transaction markers) and the batches of its aborted transactions are left out of the
//! Parquet file; the file's manifest entry still covers the segment's whole offset range, so the
//! offsets they held show as gaps, as after compaction.
//!
//! A batch is dropped when it is a control batch, or when it is transactional and an aborted
//! transaction of its producer covers its base offset (`first_offset <= base <= last_offset`,
//! the last offset being the abort marker's). A transaction's batches all lie in that range, and
//! a producer has one transaction at a time, so the whole batch goes or stays.
//!
//! The offload decides batch by batch from the headers alone, before decoding anything: a
//! dropped batch costs no decompression, and a segment without aborted transactions costs a
//! check of its attributes per batch.

use std::collections::HashMap;

use strata_log::batch::BatchHeader;
use strata_log::txn::AbortedTxn;

/// Decides, batch by batch in offset order, which batches of a segment hold committed records.
#[derive(Debug, Default, Clone)]
pub struct CommittedFilter {
    /// Aborted transactions not yet begun, by first offset, the earliest last (popped first).
    pending: Vec<AbortedTxn>,
    /// Producer id → last offset (abort marker) of its aborted transaction begun at or before
    /// the current batch.
    active: HashMap<i64, i64>,
    /// Offset of the last batch asked about: batches come in offset order.
    last_base_offset: Option<i64>,
}

impl CommittedFilter {
    /// A filter that drops the batches of `aborted` (the aborted transactions whose records may
    /// lie in the segment, in any order) and every control batch.
    pub fn new(aborted: &[AbortedTxn]) -> Self {
        let mut pending = aborted.to_vec();
        pending.sort_unstable_by_key(|a| std::cmp::Reverse(a.first_offset));
        Self {
            pending,
            active: HashMap::new(),
            last_base_offset: None,
        }
    }

    /// Whether the batch of `header` holds committed records, and so goes to the lake. Batches
    /// must come in offset order (a segment's order).
    pub fn keeps(&mut self, header: &BatchHeader) -> bool {
        let base = header.base_offset;
        assert!(
            self.last_base_offset.is_none_or(|last| last < base),
            "batches in offset order"
        );
        self.last_base_offset = Some(base);
        if header.is_control() {
            return false;
        }
        if !header.is_transactional() {
            return true;
        }
        // A producer's transactions follow one another: one begun later replaces its earlier one.
        while self.pending.last().is_some_and(|a| a.first_offset <= base) {
            let begun = self.pending.pop().expect("checked");
            self.active.insert(begun.producer_id, begun.last_offset);
        }
        self.active
            .get(&header.producer_id)
            .is_none_or(|&marker| marker < base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_log::batch::{ATTR_CONTROL, ATTR_TRANSACTIONAL};

    fn header(base_offset: i64, records: i32, producer_id: i64, attributes: i16) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            record_count: records,
        }
    }

    const TXN: i16 = ATTR_TRANSACTIONAL;
    const MARKER: i16 = ATTR_TRANSACTIONAL | ATTR_CONTROL;

    fn aborted(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
        }
    }

    /// The offsets of the batches kept.
    fn kept(filter: &mut CommittedFilter, batches: &[BatchHeader]) -> Vec<i64> {
        batches
            .iter()
            .filter(|h| filter.keeps(h))
            .map(|h| h.base_offset)
            .collect()
    }

    #[test]
    fn aborted_batches_of_one_producer_go_and_another_producers_interleaved_ones_stay() {
        // Producer 1 aborts 0..=6 (marker at 6), producer 2 commits 2..=7 (marker at 7) in
        // between, then producer 1 commits 8..=9 (marker at 10).
        let batches = [
            header(0, 2, 1, TXN),
            header(2, 1, 2, TXN),
            header(3, 2, 1, TXN),
            header(5, 1, 2, TXN),
            header(6, 1, 1, MARKER),
            header(7, 1, 2, MARKER),
            header(8, 2, 1, TXN),
            header(10, 1, 1, MARKER),
            header(11, 3, -1, 0),
        ];
        let mut filter = CommittedFilter::new(&[aborted(1, 0, 6)]);
        assert_eq!(kept(&mut filter, &batches), vec![2, 5, 8, 11]);
    }

    #[test]
    fn control_batches_go_even_without_aborted_transactions() {
        let batches = [
            header(0, 5, 3, TXN),
            header(5, 1, 3, MARKER),
            header(6, 5, -1, 0),
            header(11, 1, 4, MARKER),
        ];
        assert_eq!(kept(&mut CommittedFilter::new(&[]), &batches), vec![0, 6]);
    }

    #[test]
    fn a_segment_of_aborted_transactions_keeps_nothing() {
        // Two producers abort, one twice; the list comes in marker order, not first offset.
        let batches = [
            header(0, 3, 1, TXN),
            header(3, 3, 2, TXN),
            header(6, 1, 1, MARKER),
            header(7, 2, 1, TXN),
            header(9, 1, 2, MARKER),
            header(10, 1, 1, MARKER),
        ];
        let list = [aborted(1, 0, 6), aborted(2, 3, 9), aborted(1, 7, 10)];
        assert!(kept(&mut CommittedFilter::new(&list), &batches).is_empty());
        let mut reversed = list;
        reversed.reverse();
        assert!(kept(&mut CommittedFilter::new(&reversed), &batches).is_empty());
    }

    #[test]
    fn a_producers_committed_transaction_after_its_aborted_one_stays() {
        // Producer 1 aborts 0..=2 then commits 3..=5; a non-transactional batch of the same id
        // (an idempotent producer, in a range it never aborted) stays.
        let batches = [
            header(0, 2, 1, TXN),
            header(2, 1, 1, MARKER),
            header(3, 2, 1, TXN),
            header(5, 1, 1, MARKER),
            header(6, 2, 1, 0),
        ];
        let mut filter = CommittedFilter::new(&[aborted(1, 0, 2)]);
        assert_eq!(kept(&mut filter, &batches), vec![3, 6]);
    }

    #[test]
    fn an_aborted_transaction_begun_before_the_segment_still_drops_its_batches() {
        // The segment starts at 100, inside producer 7's transaction begun at 40.
        let batches = [
            header(100, 4, 7, TXN),
            header(104, 4, 8, TXN),
            header(108, 1, 7, MARKER),
            header(109, 1, 7, TXN),
        ];
        let mut filter = CommittedFilter::new(&[aborted(7, 40, 108)]);
        assert_eq!(kept(&mut filter, &batches), vec![104, 109]);
    }
}
