//! Transactions in the log (KIP-98): the control batches that end a transaction (commit and abort
//! markers, written by the transaction coordinator) and the aborted transactions a
//! `read_committed` consumer must skip.
//!
//! A marker is a control batch (attributes transactional | control) of one record whose key is
//! Kafka's `EndTransactionMarker` key (`version: i16 = 0, type: i16`, 0 abort and 1 commit) and
//! whose value is `version: i16 = 0, coordinator_epoch: i32`, all big-endian.

use serde::{Deserialize, Serialize};

use crate::batch::{self, ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchError, BatchHeader, HEADER_BYTES};
use crate::record;

/// Control record type of an abort marker.
pub const CONTROL_ABORT: i16 = 0;
/// Control record type of a commit marker.
pub const CONTROL_COMMIT: i16 = 1;

/// What a transaction marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Commit (true) or abort (false).
    pub commit: bool,
    /// The epoch of the transaction coordinator that wrote it.
    pub coordinator_epoch: i32,
}

/// An aborted transaction of one producer in one partition: its records lie between
/// `first_offset` and `last_offset` (the abort marker's offset). Fetch answers carry these so a
/// `read_committed` consumer drops the producer's records in that range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Offset of the transaction's first record in this partition.
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// Encodes a marker batch (base offset 0; the log assigns the real one).
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp_ms: i64,
) -> Vec<u8> {
    let kind = if marker.commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());

    // One record: attributes, timestamp delta 0, offset delta 0, key, value, no headers.
    let mut body = vec![0u8];
    put_varint(&mut body, 0);
    put_varint(&mut body, 0);
    put_varint(&mut body, key.len() as i64);
    body.extend_from_slice(&key);
    put_varint(&mut body, value.len() as i64);
    body.extend_from_slice(&value);
    put_varint(&mut body, 0);
    let mut records = Vec::with_capacity(body.len() + 2);
    put_varint(&mut records, body.len() as i64);
    records.extend_from_slice(&body);

    let mut out = Vec::with_capacity(HEADER_BYTES + records.len());
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = (HEADER_BYTES - batch::LOG_OVERHEAD + records.len()) as i32;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.push(batch::MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    out.extend_from_slice(&(ATTR_TRANSACTIONAL | ATTR_CONTROL).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&producer_epoch.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&1i32.to_be_bytes()); // record count
    out.extend_from_slice(&records);
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Reads the marker of a control batch (`batch` is the whole batch). Control batches are never
/// compressed. Kafka's other control type (leader change, KRaft only) is not a marker: `None`.
pub fn parse_marker(batch: &[u8]) -> Result<Option<Marker>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if !header.is_control() {
        return Err(BatchError::InvalidField("not a control batch"));
    }
    if header.compression() != record::codec::NONE {
        return Err(BatchError::InvalidField("a control batch is compressed"));
    }
    let end = header.total_bytes().min(batch.len());
    let body = batch.get(HEADER_BYTES..end).unwrap_or_default();
    let first = record::records(body, header.record_count)
        .next()
        .ok_or(BatchError::InvalidField("a control batch without a record"))?
        .map_err(|_| BatchError::InvalidField("a control batch whose record cannot be read"))?;
    let key = first
        .key
        .ok_or(BatchError::InvalidField("a control record without a key"))?;
    let Some(kind) = key.get(2..4) else {
        return Err(BatchError::InvalidField(
            "a control record key is too short",
        ));
    };
    let kind = i16::from_be_bytes([kind[0], kind[1]]);
    if kind != CONTROL_ABORT && kind != CONTROL_COMMIT {
        return Ok(None);
    }
    let coordinator_epoch = first
        .value
        .and_then(|v| v.get(2..6))
        .map_or(-1, |e| i32::from_be_bytes([e[0], e[1], e[2], e[3]]));
    Ok(Some(Marker {
        commit: kind == CONTROL_COMMIT,
        coordinator_epoch,
    }))
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn a_marker_is_a_valid_control_batch_that_kafka_protocol_reads() {
        for commit in [true, false] {
            let marker = Marker {
                commit,
                coordinator_epoch: 7,
            };
            let bytes = marker_batch(42, 3, marker, 1_000);
            let header = batch::validate_batch(&bytes).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!(header.record_count, 1);
            assert_eq!(parse_marker(&bytes).unwrap(), Some(marker));

            let mut buf = Bytes::from(bytes);
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            let record = &set.records[0];
            assert!(record.control && record.transactional);
            let key = record.key.as_ref().unwrap();
            assert_eq!(&key[..], &[0, 0, 0, u8::from(commit)]);
        }
    }

    /// A transactional batch of `count` records of producer 7 at `epoch` from `sequence`.
    fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, count: usize) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: true,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: sequence + i as i32,
                timestamp: 1_000,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn commit(epoch: i32) -> Marker {
        Marker {
            commit: true,
            coordinator_epoch: epoch,
        }
    }

    fn abort(epoch: i32) -> Marker {
        Marker {
            commit: false,
            coordinator_epoch: epoch,
        }
    }

    #[test]
    fn open_transactions_hold_the_stable_offset_and_aborts_are_remembered_across_a_restart() {
        use crate::{Log, LogConfig};
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
        log.append(&txn_batch(7, 0, 0, 2), 0, 1).unwrap(); // 0..=1
        log.append(&txn_batch(8, 0, 0, 1), 0, 1).unwrap(); // 2
        assert_eq!(log.first_unstable_offset(), Some(0));
        log.append_marker(7, 0, abort(1), 0, 2).unwrap(); // 3
        assert_eq!(log.first_unstable_offset(), Some(2));
        log.append_marker(8, 0, commit(1), 0, 2).unwrap(); // 4
        assert_eq!(log.first_unstable_offset(), None);
        let aborted = AbortedTxn {
            producer_id: 7,
            first_offset: 0,
            last_offset: 3,
        };
        assert_eq!(log.aborted_between(0, 5), vec![aborted]);
        assert_eq!(log.aborted_between(4, 5), vec![], "marker before the range");
        // An open transaction again, then a crash (no clean close): both come back.
        log.append(&txn_batch(7, 0, 2, 1), 0, 3).unwrap(); // 5
        drop(log);
        let log = Log::open(dir.path(), LogConfig::default(), 4).unwrap();
        assert_eq!(log.first_unstable_offset(), Some(5));
        assert_eq!(log.aborted_between(0, 6), vec![aborted]);
        // And after a clean close (from the snapshot).
        log.close(5).unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default(), 6).unwrap();
        assert_eq!(log.first_unstable_offset(), Some(5));
        assert_eq!(log.aborted_between(0, 6), vec![aborted]);
        // A marker of an older coordinator or producer epoch is refused; a newer one fences.
        assert!(matches!(
            log.append_marker(7, 0, commit(0), 0, 7),
            Err(crate::Error::CoordinatorFenced { .. })
        ));
        log.append_marker(7, 1, abort(2), 0, 7).unwrap();
        assert!(matches!(
            log.append(&txn_batch(7, 0, 3, 1), 0, 8),
            Err(crate::Error::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            log.append_marker(7, 0, abort(2), 0, 7),
            Err(crate::Error::InvalidProducerEpoch { .. })
        ));
        assert_eq!(log.first_unstable_offset(), None);
        assert_eq!(log.aborted_between(0, 100).len(), 2);
    }

    #[test]
    fn clients_cannot_write_markers_nor_mix_plain_batches_into_a_transaction() {
        use crate::{Log, LogConfig};
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
        let marker = marker_batch(7, 0, commit(0), 0);
        assert!(matches!(
            log.append(&marker, 0, 1),
            Err(crate::Error::Unsupported(_))
        ));
        log.append(&txn_batch(7, 0, 0, 1), 0, 1).unwrap();
        let mut plain = txn_batch(7, 0, 1, 1);
        // Clear the transactional bit (and fix the CRC).
        plain[22] &= !0x10;
        let crc = crc32c::crc32c(&plain[21..]);
        plain[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            log.append(&plain, 0, 1),
            Err(crate::Error::InvalidTxnState { .. })
        ));
    }

    #[test]
    fn a_follower_learns_transactions_from_replicated_batches() {
        use crate::{Log, LogConfig};
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = Log::open(leader_dir.path(), LogConfig::default(), 0).unwrap();
        leader.append(&txn_batch(7, 0, 0, 2), 0, 1).unwrap();
        leader.append_marker(7, 0, abort(0), 0, 2).unwrap();
        leader.append(&txn_batch(9, 0, 0, 1), 0, 1).unwrap();
        let bytes = leader.read(0, 1 << 20).unwrap().unwrap().read().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = Log::open(follower_dir.path(), LogConfig::default(), 0).unwrap();
        follower.append_replicated(&bytes, 3).unwrap();
        assert_eq!(follower.first_unstable_offset(), Some(3));
        assert_eq!(follower.aborted_between(0, 4), leader.aborted_between(0, 4));
        assert_eq!(follower.aborted_between(0, 4).len(), 1);
    }

    #[test]
    fn a_data_batch_is_not_a_marker() {
        let data =
            batch::tests::encode_batch(&[b"x"], 0, kafka_protocol::records::Compression::None);
        assert!(parse_marker(&data).is_err());
    }
}
