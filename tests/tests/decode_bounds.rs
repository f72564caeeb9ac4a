//! Counts and lengths a peer declares never size an allocation before the bytes behind them are
//! checked (the vendored `kafka-protocol`'s decoders, see `vendor/kafka-protocol/PATCHED.md`):
//! hostile frames and batches of a few bytes that declare billions of elements decode to errors.
//!
//! Each case runs in a child process (this test binary again) whose address space is limited to
//! [`ADDRESS_SPACE_KIB`] with `ulimit -v`. An allocation sized by a declared count would be
//! gigabytes: it fails there and aborts the child, whatever the machine's overcommit policy, so
//! the test fails rather than passing on a machine that would have lent the memory. Every case
//! also asserts that the reservation its count would ask for does not fit in that space.

use std::mem::size_of;
use std::process::Command;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Address space of a child: the test binary, its threads and a 16 MiB frame fit with room to
/// spare; a reservation sized by a hostile count does not.
const ADDRESS_SPACE_KIB: usize = 1024 * 1024;
const ADDRESS_SPACE_BYTES: usize = ADDRESS_SPACE_KIB * 1024;
/// Names the case a child runs; unset in the parent.
const CHILD_CASE: &str = "STRATA_DECODE_BOUNDS_CASE";
/// This test's name, for the child's filter.
const TEST_NAME: &str = "hostile_counts_decode_to_errors_in_a_small_address_space";
/// Size of the hostile request frames: large enough that reserving one element per byte of them
/// does not fit in the child's address space.
const FRAME_BYTES: usize = 16 * 1024 * 1024;

const CASES: &[&str] = &[
    "batch-none",
    "batch-gzip",
    "batch-snappy",
    "batch-lz4",
    "batch-zstd",
    "record-headers",
    "array-count-max",
    "array-count-bytes-left",
    "compact-array-count-bytes-left",
    "records-length-max",
];

#[test]
fn hostile_counts_decode_to_errors_in_a_small_address_space() {
    if let Ok(case) = std::env::var(CHILD_CASE) {
        let error = run_case(&case);
        println!("case {case}: refused: {error}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for case in CASES {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""
            ))
            .arg(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_CASE, case)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "case {case}: the child failed ({}) within {ADDRESS_SPACE_KIB} KiB of address space\n\
             stdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        // The marker proves the child ran the case rather than filtering every test out.
        assert!(
            stdout.contains(&format!("case {case}: refused: ")),
            "case {case}: the child did not run it\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Decodes the hostile input of `case`, asserting that it is refused; returns the error.
fn run_case(case: &str) -> String {
    let result = match case {
        "batch-none" => decode_batch(huge_count_batch(Compression::None)),
        "batch-gzip" => decode_batch(huge_count_batch(Compression::Gzip)),
        "batch-snappy" => decode_batch(huge_count_batch(Compression::Snappy)),
        "batch-lz4" => decode_batch(huge_count_batch(Compression::Lz4)),
        "batch-zstd" => decode_batch(huge_count_batch(Compression::Zstd)),
        "record-headers" => decode_batch(huge_header_count_batch()),
        "array-count-max" => decode_request(produce_v3_frame(i32::MAX, 16)),
        "array-count-bytes-left" => {
            let left = FRAME_BYTES - 64;
            assert_does_not_fit::<TopicProduceData>(left);
            decode_request(produce_v3_frame(left as i32, left))
        }
        "compact-array-count-bytes-left" => {
            let left = FRAME_BYTES - 64;
            assert_does_not_fit::<TopicProduceData>(left);
            decode_request(produce_v9_frame(left as u32 + 1, left))
        }
        "records-length-max" => {
            assert_does_not_fit::<u8>(i32::MAX as usize);
            decode_request(produce_v3_records_frame(i32::MAX))
        }
        other => panic!("unknown case {other}"),
    };
    match result {
        Ok(()) => panic!("case {case}: hostile input decoded without an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Asserts that reserving `count` elements of `T` would not fit in the child's address space, so
/// that a decoder trusting the count would abort there.
fn assert_does_not_fit<T>(count: usize) {
    assert!(
        count.saturating_mul(size_of::<T>()) > ADDRESS_SPACE_BYTES,
        "{count} x {} bytes fits in the child: the case proves nothing",
        size_of::<T>()
    );
}

fn decode_batch(batch: Bytes) -> anyhow::Result<()> {
    // As the log does (`crates/log/src/segment.rs`) for a batch read from a segment.
    RecordBatchDecoder::decode(&mut batch.clone()).map(drop)
}

fn decode_request(frame: Bytes) -> anyhow::Result<()> {
    // As the broker does (`crates/broker/src/handler.rs`) with a frame's bytes.
    let mut body = frame;
    let api_key = ApiKey::Produce;
    let version = i16::from_be_bytes([body[2], body[3]]);
    RequestHeader::decode(&mut body, api_key.request_header_version(version))?;
    RequestKind::decode(api_key, &mut body, version).map(drop)
}

fn record() -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"key")),
        value: Some(Bytes::from_static(b"value")),
        headers: Default::default(),
    }
}

/// Position of `recordCount` in a RecordBatch v2, and of its CRC and the bytes it covers.
const RECORD_COUNT_AT: usize = 57;
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;

/// A valid batch of one record, compressed with `compression`, whose record count then says
/// 2^31-1 (its CRC recomputed, so only the count is wrong).
fn huge_count_batch(compression: Compression) -> Bytes {
    assert_does_not_fit::<Record>(i32::MAX as usize);
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, &[record()], &options).unwrap();
    let mut batch = buf.to_vec();
    batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    with_crc(batch)
}

/// An uncompressed batch of one record that declares 2^31-1 headers and holds none.
fn huge_header_count_batch() -> Bytes {
    let mut body = BytesMut::new();
    body.put_i8(0); // attributes
    put_varint(&mut body, 0); // timestamp delta
    put_varint(&mut body, 0); // offset delta
    put_varint(&mut body, -1); // key: null
    put_varint(&mut body, -1); // value: null
    put_varint(&mut body, i32::MAX); // header count
    let mut records = BytesMut::new();
    put_varint(&mut records, body.len() as i32);
    records.put_slice(&body);

    let mut batch = BytesMut::new();
    batch.put_i64(0); // base offset
    batch.put_i32((RECORD_COUNT_AT + 4 - 12 + records.len()) as i32); // batch length
    batch.put_i32(0); // partition leader epoch
    batch.put_i8(2); // magic
    batch.put_u32(0); // CRC, set below
    batch.put_i16(0); // attributes
    batch.put_i32(0); // last offset delta
    batch.put_i64(0); // base timestamp
    batch.put_i64(0); // max timestamp
    batch.put_i64(-1); // producer id
    batch.put_i16(-1); // producer epoch
    batch.put_i32(-1); // base sequence
    batch.put_i32(1); // record count
    assert_eq!(batch.len(), RECORD_COUNT_AT + 4);
    batch.put_slice(&records);
    with_crc(batch.to_vec())
}

fn with_crc(mut batch: Vec<u8>) -> Bytes {
    let crc = crc32c(&batch[CRC_FROM..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

/// CRC-32C (Castagnoli), bit by bit: the batches here are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn put_unsigned_varint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_varint(buf: &mut BytesMut, value: i32) {
    put_unsigned_varint(buf, ((value << 1) ^ (value >> 31)) as u32);
}

fn header(version: i16) -> BytesMut {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("hostile")))
        .encode(&mut buf, ApiKey::Produce.request_header_version(version))
        .unwrap();
    buf
}

/// A Produce v3 request whose `topic_data` array declares `count` topics and is followed by
/// `filler` bytes of 0xff (a topic name of length -1: no topic decodes from them).
fn produce_v3_frame(count: i32, filler: usize) -> Bytes {
    let mut buf = header(3);
    buf.put_i16(-1); // transactional id: null
    buf.put_i16(1); // acks
    buf.put_i32(1_000); // timeout
    buf.put_i32(count);
    buf.put_bytes(0xff, filler);
    buf.freeze()
}

/// A Produce v3 request for one partition whose records declare `length` bytes and hold three.
fn produce_v3_records_frame(length: i32) -> Bytes {
    let mut buf = header(3);
    buf.put_i16(-1); // transactional id: null
    buf.put_i16(1); // acks
    buf.put_i32(1_000); // timeout
    buf.put_i32(1); // one topic
    buf.put_i16(1); // its name: "t"
    buf.put_u8(b't');
    buf.put_i32(1); // one partition
    buf.put_i32(0); // its index
    buf.put_i32(length); // its records
    buf.put_slice(b"abc");
    buf.freeze()
}

/// A Produce v9 (flexible) request whose compact `topic_data` array declares `count_plus_one - 1`
/// topics, followed by `filler` bytes of 0xff (a varint that never ends: no topic decodes).
fn produce_v9_frame(count_plus_one: u32, filler: usize) -> Bytes {
    let mut buf = header(9);
    buf.put_u8(0); // transactional id: null (compact)
    buf.put_i16(1); // acks
    buf.put_i32(1_000); // timeout
    put_unsigned_varint(&mut buf, count_plus_one);
    buf.put_bytes(0xff, filler);
    buf.freeze()
}
