//! Records of RecordBatch v2 batches, both directions, without losing anything a consumer sees:
//! duplicate and ordered headers, null keys and values, timestamp types, producer fields.
//!
//! Decoding decompresses the batch (any codec) and parses the records; encoding writes an
//! uncompressed batch with a fresh CRC. Pure functions over bytes.

use bytes::{BufMut, Bytes, BytesMut};
use strata_log::batch::{
    self, ATTR_COMPRESSION_MASK, ATTR_LOG_APPEND_TIME, BatchHeader, HEADER_BYTES,
};
use strata_log::record;

use crate::error::{Error, Result};

/// One record with what is needed to serve it again inside an equivalent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeRecord {
    /// Offset.
    pub offset: i64,
    /// Timestamp in ms (the batch's LogAppendTime when that is the timestamp type).
    pub timestamp_ms: i64,
    /// Key, `None` for a null key.
    pub key: Option<Bytes>,
    /// Value, `None` for a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order, duplicates kept.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Base offset of the batch the record came in.
    pub batch_offset: i64,
    /// Batch attributes without the compression bits (timestamp type, transactional, control).
    pub batch_attributes: i16,
    /// Producer id of the batch, -1 when none.
    pub producer_id: i64,
    /// Producer epoch of the batch, -1 when none.
    pub producer_epoch: i16,
    /// Sequence of the record, -1 when none.
    pub sequence: i32,
    /// Leader epoch stamped on the batch.
    pub partition_leader_epoch: i32,
}

/// Decodes every record of one whole, valid batch. Compressed records are decompressed with the
/// log's bound ([`record::DECOMPRESSED_BATCH_BYTES_MAX`]) and parsed by the log's record parser,
/// the same code that checked them when they were produced.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<LakeRecord>> {
    let header = batch::validate_batch(bytes)?;
    let corrupt =
        |what: String| Error::Corrupt(format!("batch at offset {}: {what}", header.base_offset));
    let raw = &bytes[HEADER_BYTES..header.total_bytes()];
    let body = if header.compression() == record::codec::NONE {
        Bytes::copy_from_slice(raw)
    } else {
        let mut out = Vec::new();
        record::decompress_into(
            header.compression(),
            raw,
            &mut out,
            record::DECOMPRESSED_BATCH_BYTES_MAX,
        )
        .map_err(|e| corrupt(e.to_string()))?;
        Bytes::from(out)
    };
    let count = usize::try_from(header.record_count)
        .map_err(|_| corrupt("negative record count".into()))?;
    let mut out = Vec::with_capacity(count.min(body.len()));
    for view in record::records(&body, header.record_count) {
        let view = view.map_err(|e| corrupt(e.to_string()))?;
        out.push(lake_record(&header, &body, &view));
    }
    Ok(out)
}

/// One record as a lake row; keys, values and header values share `body`'s buffer.
fn lake_record(header: &BatchHeader, body: &Bytes, view: &record::RecordView<'_>) -> LakeRecord {
    let shared = |slice: Option<&[u8]>| slice.map(|s| body.slice_ref(s));
    let headers = view
        .headers()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), shared(v)))
        .collect();
    let log_append_time = header.attributes & ATTR_LOG_APPEND_TIME != 0;
    LakeRecord {
        offset: header.base_offset + i64::from(view.offset_delta),
        timestamp_ms: if log_append_time {
            header.max_timestamp
        } else {
            // Wrapping as Java's long does; produce refuses such batches, older logs may hold them.
            header.base_timestamp.wrapping_add(view.timestamp_delta)
        },
        key: shared(view.key),
        value: shared(view.value),
        headers,
        batch_offset: header.base_offset,
        batch_attributes: header.attributes & !ATTR_COMPRESSION_MASK,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        sequence: if header.base_sequence < 0 {
            -1
        } else {
            header.base_sequence.wrapping_add(view.offset_delta)
        },
        partition_leader_epoch: header.partition_leader_epoch,
    }
}

/// Encodes records of one batch (same `batch_offset`, in offset order) as an uncompressed
/// RecordBatch v2 with a valid CRC.
pub fn encode_batch(records: &[LakeRecord]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_batch_into(records, &mut out);
    out
}

/// [`encode_batch`] appending to `out`: each record is written once, in place.
pub fn encode_batch_into(records: &[LakeRecord], out: &mut BytesMut) {
    let last = records.last().expect("a batch has a record");
    encode_batch_covering_into(records, last.offset, out);
}

/// The most offsets one batch spans: its `lastOffsetDelta` is an i32.
pub const BATCH_SPAN_MAX: i64 = i32::MAX as i64 + 1;

/// [`encode_batch_into`] for a batch that covers offsets up to `last_offset`, at or after its
/// last record's: its `lastOffsetDelta` says so, as for a batch whose last records compaction
/// removed, so that a consumer's next fetch starts after `last_offset` (librdkafka and the Java
/// client continue at the batch's last offset + 1, KAFKA-5443). The lake serves a file's last
/// batch so when the file's last offsets held no committed record.
pub fn encode_batch_covering_into(records: &[LakeRecord], last_offset: i64, out: &mut BytesMut) {
    let first = records.first().expect("a batch has a record");
    let base_offset = first.batch_offset;
    let last_offset_delta = last_offset - base_offset;
    assert!(
        records.last().is_some_and(|r| r.offset <= last_offset)
            && (0..BATCH_SPAN_MAX).contains(&last_offset_delta),
        "a batch covers its records, within {BATCH_SPAN_MAX} offsets"
    );
    let log_append_time = first.batch_attributes & ATTR_LOG_APPEND_TIME != 0;
    let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1);
    let base_timestamp = if log_append_time {
        max_timestamp
    } else {
        first.timestamp_ms
    };
    let timestamp_delta = |r: &LakeRecord| {
        if log_append_time {
            0
        } else {
            r.timestamp_ms.wrapping_sub(base_timestamp)
        }
    };
    let record_len = |r: &LakeRecord| {
        let headers: usize = r
            .headers
            .iter()
            .map(|(k, v)| nullable_len(Some(k.as_bytes())) + nullable_len(v.as_deref()))
            .sum();
        1 + varlong_len(timestamp_delta(r))
            + varlong_len(r.offset - base_offset)
            + nullable_len(r.key.as_deref())
            + nullable_len(r.value.as_deref())
            + varlong_len(r.headers.len() as i64)
            + headers
    };
    let body_len: usize = records
        .iter()
        .map(|r| {
            let len = record_len(r);
            varlong_len(len as i64) + len
        })
        .sum();
    let start = out.len();
    out.reserve(HEADER_BYTES + body_len);
    out.put_i64(base_offset);
    out.put_i32((HEADER_BYTES - batch::LOG_OVERHEAD + body_len) as i32);
    out.put_i32(first.partition_leader_epoch);
    out.put_i8(batch::MAGIC_V2);
    out.put_u32(0); // CRC, below
    out.put_i16(first.batch_attributes & !ATTR_COMPRESSION_MASK);
    out.put_i32(last_offset_delta as i32);
    out.put_i64(base_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(first.producer_id);
    out.put_i16(first.producer_epoch);
    out.put_i32(first.sequence);
    out.put_i32(records.len() as i32);
    for r in records {
        put_varint(out, record_len(r) as i32);
        out.put_i8(0);
        put_varlong(out, timestamp_delta(r));
        put_varint(out, (r.offset - base_offset) as i32);
        put_nullable(out, r.key.as_deref());
        put_nullable(out, r.value.as_deref());
        put_varint(out, r.headers.len() as i32);
        for (k, v) in &r.headers {
            put_nullable(out, Some(k.as_bytes()));
            put_nullable(out, v.as_deref());
        }
    }
    debug_assert_eq!(out.len() - start, HEADER_BYTES + body_len);
    let crc = crc32c::crc32c(&out[start + 21..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// Appends batches of no record covering offsets `base_offset..=last_offset` (one per
/// [`BATCH_SPAN_MAX`] offsets): what Kafka's log cleaner leaves of a batch whose records it all
/// removed. A consumer takes no record from them and continues after `last_offset`. The lake
/// serves them for a file that holds no record (its segment held only aborted transactions and
/// markers). No producer, no timestamp, no leader epoch (-1 each).
pub fn encode_empty_batches_into(base_offset: i64, last_offset: i64, out: &mut BytesMut) {
    assert!(
        base_offset <= last_offset,
        "an empty batch covers an offset"
    );
    let mut base = base_offset;
    while base <= last_offset {
        let last = last_offset.min(base + (BATCH_SPAN_MAX - 1));
        let start = out.len();
        out.reserve(HEADER_BYTES);
        out.put_i64(base);
        out.put_i32((HEADER_BYTES - batch::LOG_OVERHEAD) as i32);
        out.put_i32(-1); // partition leader epoch
        out.put_i8(batch::MAGIC_V2);
        out.put_u32(0); // CRC, below
        out.put_i16(0); // attributes
        out.put_i32((last - base) as i32);
        out.put_i64(-1); // base timestamp
        out.put_i64(-1); // max timestamp
        out.put_i64(-1); // producer id
        out.put_i16(-1); // producer epoch
        out.put_i32(-1); // base sequence
        out.put_i32(0); // record count
        let crc = crc32c::crc32c(&out[start + 21..]);
        out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
        base = last + 1;
    }
}

/// Bytes of a zig-zag varint.
fn varlong_len(v: i64) -> usize {
    let raw = ((v << 1) ^ (v >> 63)) as u64;
    (64 - raw.leading_zeros() as usize).div_ceil(7).max(1)
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => 1,
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_varlong(out: &mut BytesMut, v: i64) {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    while raw >= 0x80 {
        out.put_u8((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.put_u8(raw as u8);
}

fn put_varint(out: &mut BytesMut, v: i32) {
    put_varlong(out, i64::from(v));
}

fn put_nullable(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.put_slice(b);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    pub(crate) fn arb_records() -> impl Strategy<Value = Vec<LakeRecord>> {
        let one = (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(
                (
                    "[a-z]{0,3}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                ),
                0..4,
            ),
            -1000i64..1000,
        );
        (
            proptest::collection::vec(one, 1..30),
            0i64..1 << 40,
            0i64..1 << 40,
            any::<bool>(),
        )
            .prop_map(|(rows, base_offset, base_ts, log_append)| {
                rows.into_iter()
                    .enumerate()
                    .map(|(i, (key, value, headers, ts))| LakeRecord {
                        offset: base_offset + i as i64,
                        timestamp_ms: if log_append { base_ts } else { base_ts + ts },
                        key: key.map(Bytes::from),
                        value: value.map(Bytes::from),
                        headers: headers
                            .into_iter()
                            .map(|(k, v)| (k, v.map(Bytes::from)))
                            .collect(),
                        batch_offset: base_offset,
                        batch_attributes: if log_append { ATTR_LOG_APPEND_TIME } else { 0 },
                        producer_id: 7,
                        producer_epoch: 1,
                        sequence: 100 + i as i32,
                        partition_leader_epoch: 3,
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(records in arb_records()) {
            let batch = encode_batch(&records);
            strata_log::batch::validate_batch(&batch).unwrap();
            prop_assert_eq!(decode_batch(&batch).unwrap(), records);
        }

        #[test]
        fn client_batches_in_every_codec_decode(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20)) {
            for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
                let records: Vec<Record> = values.iter().enumerate().map(|(i, v)| Record {
                    transactional: false, control: false, partition_leader_epoch: 0, producer_id: -1, producer_epoch: -1,
                    timestamp_type: TimestampType::Creation, offset: i as i64, sequence: i as i32 - 1,
                    timestamp: 1000 + i as i64, key: None, value: Some(Bytes::from(v.clone())),
                    headers: [(kafka_protocol::protocol::StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")))].into_iter().collect(),
                    delete_horizon: false,
                }).collect();
                let mut buf = BytesMut::new();
                RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression }).unwrap();
                let decoded = decode_batch(&buf).unwrap();
                prop_assert_eq!(decoded.len(), values.len());
                for (i, r) in decoded.iter().enumerate() {
                    prop_assert_eq!(r.offset, i as i64);
                    prop_assert_eq!(r.timestamp_ms, 1000 + i as i64);
                    prop_assert_eq!(r.value.as_deref(), Some(values[i].as_slice()));
                    prop_assert_eq!(&r.headers, &vec![("h".to_string(), Some(Bytes::from_static(b"x")))]);
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_batch(&bytes);
        }

        /// A batch covering offsets past its last record says so in its header and decodes to
        /// the same records.
        #[test]
        fn a_covering_batch_keeps_its_records(records in arb_records(), past in 0i64..1 << 20) {
            let last = records.last().unwrap().offset + past;
            let mut batch = BytesMut::new();
            encode_batch_covering_into(&records, last, &mut batch);
            let header = strata_log::batch::validate_batch(&batch).unwrap();
            prop_assert_eq!(header.last_offset(), last);
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(decode_batch(&batch).unwrap(), records);
        }
    }

    #[test]
    fn empty_batches_cover_their_offsets_and_hold_no_record() {
        let mut out = BytesMut::new();
        encode_empty_batches_into(10, 10, &mut out);
        encode_empty_batches_into(11, 11 + 2 * BATCH_SPAN_MAX, &mut out);
        let segment = crate::segment::decode(&out).unwrap();
        assert!(segment.is_empty());
        let mut reader = crate::segment::BatchReader::new(&out[..]);
        let mut spans = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            batch.check().unwrap();
            spans.push((batch.header.base_offset, batch.header.last_offset()));
            assert_eq!(batch.header.record_count, 0);
        }
        let after = 11 + BATCH_SPAN_MAX;
        assert_eq!(
            spans,
            vec![
                (10, 10),
                (11, after - 1),
                (after, after + BATCH_SPAN_MAX - 1),
                (after + BATCH_SPAN_MAX, 11 + 2 * BATCH_SPAN_MAX)
            ]
        );
        // kafka-protocol's decoder (a client's view) reads them as batches of no record.
        let mut bytes = bytes::Bytes::from(out.to_vec());
        let decoded = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        assert_eq!(decoded.len(), 4);
        assert!(decoded.iter().all(|set| set.records.is_empty()));
    }
}
