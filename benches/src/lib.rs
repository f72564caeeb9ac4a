//! Shared helpers of Strata's benches: client-shaped record batches, and a fetcher with
//! incremental fetch sessions for `loadgen` ([`fetcher`]).

pub mod fetcher;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The text JSON-like values repeat.
const JSON_LIKE: &[u8] = br#"{"user":42,"event":"click","page":"/home"}"#;

/// One RecordBatch v2 of `records` records with `value_bytes`-byte values, as a producer sends it.
pub fn client_batch(records: usize, value_bytes: usize, compression: Compression) -> BytesMut {
    let all: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps one batch while offset - sequence stays constant.
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(
                JSON_LIKE
                    .iter()
                    .cycle()
                    .skip(i)
                    .take(value_bytes)
                    .copied()
                    .collect::<Vec<u8>>(),
            )),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        all.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf
}
