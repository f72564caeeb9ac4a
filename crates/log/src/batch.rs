//! RecordBatch v2 (magic 2) headers: parsing, validation and the in-place rewrites a broker makes.
//!
//! Everything here works on byte slices and does no I/O. A batch is stored exactly as the producer
//! sent it, except for the fields outside the CRC (`baseOffset`, `partitionLeaderEpoch`) and, for
//! `LogAppendTime` topics, `maxTimestamp` and `attributes`, after which the CRC is recomputed.

use std::fmt;

/// Size of the fixed RecordBatch v2 header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batchLength` ends: `baseOffset` (8) + `batchLength` (4).
pub const LOG_OVERHEAD: usize = 12;
/// The only record format Strata stores.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered part starts (the `attributes` field).
const CRC_START: usize = 21;

const OFF_BASE_OFFSET: usize = 0;
const OFF_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORD_COUNT: usize = 57;

/// Attribute bits 0-2: the compression codec.
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: the timestamps are LogAppendTime.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit 5: a control batch (transaction markers).
pub const ATTR_CONTROL: i16 = 0x20;

/// The fixed header of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch of the partition when the batch was appended.
    pub partition_leader_epoch: i32,
    /// Format version, always 2 once validated.
    pub magic: i8,
    /// CRC-32C over `attributes` to the end of the batch.
    pub crc: u32,
    /// Codec, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 when none.
    pub producer_id: i64,
    /// Idempotent producer epoch, -1 when none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 when none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `bytes`. Checks only that the bytes are there.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        }
        Ok(Self {
            base_offset: get_i64(bytes, OFF_BASE_OFFSET),
            batch_length: get_i32(bytes, OFF_LENGTH),
            partition_leader_epoch: get_i32(bytes, OFF_LEADER_EPOCH),
            magic: bytes[OFF_MAGIC] as i8,
            crc: get_i32(bytes, OFF_CRC) as u32,
            attributes: get_i16(bytes, OFF_ATTRIBUTES),
            last_offset_delta: get_i32(bytes, OFF_LAST_OFFSET_DELTA),
            base_timestamp: get_i64(bytes, OFF_BASE_TIMESTAMP),
            max_timestamp: get_i64(bytes, OFF_MAX_TIMESTAMP),
            producer_id: get_i64(bytes, OFF_PRODUCER_ID),
            producer_epoch: get_i16(bytes, OFF_PRODUCER_EPOCH),
            base_sequence: get_i32(bytes, OFF_BASE_SEQUENCE),
            record_count: get_i32(bytes, OFF_RECORD_COUNT),
        })
    }

    /// Total size of the batch on disk and on the wire.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset just past the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Sequence of the last record (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }

    /// The compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }

    /// Whether the batch is a control batch.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Whether the batch is transactional.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the producer is idempotent (has a producer id).
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// Why a batch was refused. Each maps to one Kafka error code in the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length needs (CORRUPT_MESSAGE).
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A magic other than 2 (UNSUPPORTED_FOR_MESSAGE_FORMAT).
    UnsupportedMagic(i8),
    /// The stored CRC does not match the content (CORRUPT_MESSAGE).
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A length, count or delta that cannot be right (CORRUPT_MESSAGE).
    InvalidField(&'static str),
    /// A batch over `max.message.bytes` (MESSAGE_TOO_LARGE).
    TooLarge {
        /// Size of the batch.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A record set with no batch in it (INVALID_RECORD).
    Empty,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "truncated record batch: needs {needed} bytes, has {available}"
                )
            }
            Self::UnsupportedMagic(m) => {
                write!(f, "record batch magic {m} is not supported (only 2)")
            }
            Self::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::InvalidField(what) => write!(f, "invalid record batch: {what}"),
            Self::TooLarge { size, max } => {
                write!(
                    f,
                    "record batch of {size} bytes exceeds max.message.bytes {max}"
                )
            }
            Self::Empty => write!(f, "the record set holds no record batch"),
        }
    }
}

impl std::error::Error for BatchError {}

/// Validates one whole batch at the start of `bytes` and returns its header.
///
/// Checks the magic, the length, the CRC-32C and the counts. Does not decompress records.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    if (header.batch_length as i64) < (HEADER_BYTES - LOG_OVERHEAD) as i64 {
        return Err(BatchError::InvalidField(
            "batchLength is smaller than the header",
        ));
    }
    let total = header.total_bytes();
    if bytes.len() < total {
        return Err(BatchError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    if header.record_count < 0 || header.last_offset_delta < 0 {
        return Err(BatchError::InvalidField(
            "negative recordCount or lastOffsetDelta",
        ));
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..total]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Validates a produced record set: one or more whole batches, each within `max_batch_bytes`,
/// each with `lastOffsetDelta == recordCount - 1` and at least one record.
pub fn validate_produce(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let header = validate_batch(rest)?;
        let size = header.total_bytes();
        if size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: max_batch_bytes,
            });
        }
        if header.record_count < 1 {
            return Err(BatchError::InvalidField("a produced batch has no record"));
        }
        if header.last_offset_delta != header.record_count - 1 {
            return Err(BatchError::InvalidField(
                "lastOffsetDelta is not recordCount - 1",
            ));
        }
        headers.push(header);
        rest = &rest[size..];
    }
    Ok(headers)
}

/// Sets `baseOffset` in place. The field is outside the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets `partitionLeaderEpoch` in place. The field is outside the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `timestamp_ms` as its max timestamp and recomputes the CRC,
/// as a broker does for topics with `message.timestamp.type=LogAppendTime`. The batch is given as
/// its header, changed in place, and the records after it, unchanged: a produced batch is never
/// copied to be stored.
pub fn set_log_append_time(head: &mut [u8; HEADER_BYTES], records: &[u8], timestamp_ms: i64) {
    let attributes = get_i16(head, OFF_ATTRIBUTES) | ATTR_LOG_APPEND_TIME;
    head[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    head[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[CRC_START..]), records);
    head[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Sets the codec bits of a whole batch whose records part already holds records in that codec,
/// and recomputes `batchLength` and the CRC.
pub fn set_compression(batch: &mut [u8], codec: i16) {
    let attributes = (get_i16(batch, OFF_ATTRIBUTES) & !ATTR_COMPRESSION_MASK) | codec;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    let length = (batch.len() - LOG_OVERHEAD) as i32;
    batch[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Reads `baseOffset` and `batchLength` from the first [`LOG_OVERHEAD`] bytes of a batch.
pub fn peek_offset_and_size(prefix: &[u8; LOG_OVERHEAD]) -> (i64, i32) {
    (
        get_i64(prefix, OFF_BASE_OFFSET),
        get_i32(prefix, OFF_LENGTH),
    )
}

fn get_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn get_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    /// Encodes one batch of `values` with the kafka-protocol crate (as a client would).
    pub(crate) fn encode_batch(
        values: &[&[u8]],
        timestamp_ms: i64,
        compression: Compression,
    ) -> BytesMut {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: timestamp_ms + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::copy_from_slice(v)),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf
    }

    #[test]
    fn validates_and_reads_a_client_batch() {
        let batch = encode_batch(&[b"a", b"bb", b"ccc"], 1_000, Compression::None);
        let headers = validate_produce(&batch, 1 << 20).unwrap();
        assert_eq!(headers.len(), 1);
        let h = headers[0];
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.total_bytes(), batch.len());
    }

    #[test]
    fn rewrites_outside_the_crc_keep_the_batch_valid() {
        let mut batch = encode_batch(&[b"x"], 5, Compression::None);
        set_base_offset(&mut batch, 42);
        set_partition_leader_epoch(&mut batch, 7);
        let h = validate_batch(&batch).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 7));
    }

    #[test]
    fn log_append_time_recomputes_the_crc() {
        let batch = encode_batch(&[b"x", b"y"], 5, Compression::None);
        let mut head: [u8; HEADER_BYTES] = batch[..HEADER_BYTES].try_into().unwrap();
        set_log_append_time(&mut head, &batch[HEADER_BYTES..], 99_999);
        let batch = [&head[..], &batch[HEADER_BYTES..]].concat();
        let h = validate_batch(&batch).unwrap();
        assert_eq!(h.max_timestamp, 99_999);
        assert_ne!(h.attributes & ATTR_LOG_APPEND_TIME, 0);
    }

    #[test]
    fn refuses_bad_crc_magic_size_and_truncation() {
        let batch = encode_batch(&[b"hello"], 5, Compression::None);
        let mut bad_crc = batch.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            validate_batch(&bad_crc),
            Err(BatchError::CrcMismatch { .. })
        ));

        let mut bad_magic = batch.clone();
        bad_magic[OFF_MAGIC] = 1;
        assert_eq!(
            validate_batch(&bad_magic),
            Err(BatchError::UnsupportedMagic(1))
        );

        assert!(matches!(
            validate_batch(&batch[..batch.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_produce(&batch, 10),
            Err(BatchError::TooLarge { max: 10, .. })
        ));
        assert_eq!(validate_produce(&[], 10), Err(BatchError::Empty));

        let mut short_len = batch.clone();
        short_len[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(
            validate_batch(&short_len),
            Err(BatchError::InvalidField(_))
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut batch = encode_batch(&[b"a", b"b"], 0, Compression::None);
        batch[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.last_sequence(), 0);
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate_produce(&bytes, 1 << 20);
        }

        #[test]
        fn encoded_batches_validate(values in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..20), ts in 0i64..1 << 40) {
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            for compression in [Compression::None, Compression::Gzip, Compression::Snappy,
                                Compression::Lz4, Compression::Zstd] {
                let batch = encode_batch(&refs, ts, compression);
                let headers = validate_produce(&batch, 1 << 20).unwrap();
                prop_assert_eq!(headers[0].record_count as usize, values.len());
                prop_assert_eq!(headers[0].compression(), compression as i16);
            }
        }
    }
}
