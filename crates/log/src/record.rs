//! The records inside a RecordBatch v2: bounded decompression, the one record parser of the
//! workspace, and the checks Kafka's LogValidator makes before a batch is appended.
//!
//! Everything here works on byte slices and does no I/O. A produced batch is walked record by
//! record (decompressed first when it carries a codec) so that nothing whose records cannot be
//! read is ever stored: a consumer or the lake would otherwise stall on it for ever.
//!
//! Record layout (zig-zag varints): `length, attributes i8, timestampDelta varlong, offsetDelta,
//! keyLength, key, valueLength, value, headerCount, [headerKeyLength, headerKey,
//! headerValueLength, headerValue]…`; a length of -1 is null.

use std::io::Read;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::batch::{BatchHeader, HEADER_BYTES};
use crate::config::TimestampType;

/// The most bytes one compressed batch may decompress to. A produced batch is at most
/// `max.message.bytes` (1 MiB by default) compressed; real data compresses 3–20×, so 64 MiB leaves
/// room for very compressible data while a decompression bomb stops here.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;
/// The largest zstd window accepted: 2^26 bytes, the output bound. Producers size the window to
/// their input (or use 2^21–2^23 when streaming), so a larger one only serves to exhaust memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 26;
/// Decompression buffers lent out at once: with [`DECOMPRESSED_BATCH_BYTES_MAX`] and the zstd
/// window this bounds what validation of compressed batches can hold to about 512 MiB, whatever
/// peers send; further appends of compressed batches wait for a buffer.
const SCRATCH_BUFFERS_MAX: usize = 4;
/// Capacity a returned buffer keeps, so steady traffic reuses it without reallocating while one
/// bomb-sized batch does not pin 64 MiB for ever.
const SCRATCH_RETAIN_BYTES: usize = 8 << 20;

/// The codec ids of the batch attributes.
pub mod codec {
    /// No compression.
    pub const NONE: i16 = 0;
    /// gzip.
    pub const GZIP: i16 = 1;
    /// snappy (xerial framing, or raw).
    pub const SNAPPY: i16 = 2;
    /// LZ4 frame.
    pub const LZ4: i16 = 3;
    /// zstd.
    pub const ZSTD: i16 = 4;
}

/// Why the records of a batch were refused. The broker maps the kind to a Kafka error code and
/// `index` to the record errors of Produce v8+ (KIP-467).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// What is wrong.
    pub kind: RecordErrorKind,
    /// The record (0-based, in the batch) it concerns, when one record is to blame.
    pub index: Option<usize>,
    /// A message naming the problem.
    pub message: String,
}

/// The kinds of [`RecordError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// The records cannot be read or disagree with the header (INVALID_RECORD).
    Invalid,
    /// A timestamp outside `message.timestamp.{before,after}.max.ms` (INVALID_TIMESTAMP).
    Timestamp,
}

impl RecordError {
    fn invalid(index: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            kind: RecordErrorKind::Invalid,
            index,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "record {i}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for RecordError {}

/// Decompresses `input` (the records part of a batch with codec `codec`) into `out`, refusing
/// to produce more than `limit` bytes. `out` is cleared first; its capacity is reused.
pub fn decompress_into(
    codec: i16,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), RecordError> {
    out.clear();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        RecordError::invalid(None, format!("{what} decompression failed: {e}"))
    };
    match codec {
        codec::NONE => {
            if input.len() > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(input);
            Ok(())
        }
        codec::GZIP => read_bounded(flate2::read::MultiGzDecoder::new(input), out, limit)
            .map_err(|e| e.unwrap_or_else(|e| fail("gzip", &e))),
        codec::SNAPPY => snappy_into(input, out, limit),
        codec::LZ4 => {
            // lz4_flex takes a frame cut short for a whole one; clients (liblz4) refuse it, and
            // bytes after the last frame: check the framing first.
            lz4_frames_whole(input).map_err(|e| fail("lz4", &e))?;
            read_bounded(lz4_flex::frame::FrameDecoder::new(input), out, limit)
                .map_err(|e| e.unwrap_or_else(|e| fail("lz4", &e)))
        }
        codec::ZSTD => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| fail("zstd", &e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| fail("zstd", &e))?;
            read_bounded(decoder, out, limit).map_err(|e| e.unwrap_or_else(|e| fail("zstd", &e)))
        }
        other => Err(RecordError::invalid(
            None,
            format!("unknown compression codec {other}"),
        )),
    }
}

fn too_large(limit: usize) -> RecordError {
    RecordError::invalid(
        None,
        format!("the records decompress to more than {limit} bytes"),
    )
}

/// Reads everything from `reader` into `out`, at most `limit` bytes: `Err(Ok(_))` when the bound
/// is passed, `Err(Err(_))` when the codec fails (the caller names the codec).
fn read_bounded(
    reader: impl Read,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), Result<RecordError, std::io::Error>> {
    let mut bounded = reader.take(limit as u64 + 1);
    bounded.read_to_end(out).map_err(Err)?;
    if out.len() > limit {
        return Err(Ok(too_large(limit)));
    }
    Ok(())
}

/// Kafka's snappy: the xerial framing (a 16-byte header, then blocks of `u32 length, raw snappy
/// block`) or, like the Java client, one raw snappy block when the header is absent.
fn snappy_into(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), RecordError> {
    const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
    const XERIAL_HEADER_BYTES: usize = 16;
    let block = |raw: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let fail = |e: snap::Error| {
            RecordError::invalid(None, format!("snappy decompression failed: {e}"))
        };
        let len = snap::raw::decompress_len(raw).map_err(fail)?;
        if len > limit - out.len() {
            return Err(too_large(limit));
        }
        let start = out.len();
        out.resize(start + len, 0);
        let written = snap::raw::Decoder::new()
            .decompress(raw, &mut out[start..])
            .map_err(fail)?;
        out.truncate(start + written);
        Ok(())
    };
    if !input.starts_with(XERIAL_MAGIC) {
        return block(input, out);
    }
    let mut rest = input.get(XERIAL_HEADER_BYTES..).unwrap_or_default();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(RecordError::invalid(None, "truncated snappy block length"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(RecordError::invalid(
                None,
                "snappy block longer than the batch",
            ));
        }
        block(&tail[..len], out)?;
        rest = &tail[len..];
    }
    Ok(())
}

/// One record, borrowed from the (decompressed) records bytes of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Record attributes (unused by Kafka today).
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` when null (a tombstone).
    pub value: Option<&'a [u8]>,
    header_count: usize,
    header_bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The headers in order, duplicates kept: `(key, value)`.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            buf: self.header_bytes,
            remaining: self.header_count,
        }
    }

    /// How many headers the record has.
    pub fn header_count(&self) -> usize {
        self.header_count
    }
}

/// The headers of a [`RecordView`]; already checked when the record was parsed.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    buf: &'a [u8],
    remaining: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut cursor = Cursor { buf: self.buf };
        let key = cursor.nullable_bytes().ok()??;
        let value = cursor.nullable_bytes().ok()?;
        self.buf = cursor.buf;
        Some((key, value))
    }
}

/// Walks the records of one batch: `records` is the batch's records part (decompressed), `count`
/// its declared `recordCount`. Each item is a record or the reason the rest cannot be read; after
/// `count` records, bytes left over are an error too.
pub fn records(records: &[u8], count: i32) -> RecordIter<'_> {
    RecordIter {
        cursor: Cursor { buf: records },
        declared: count.max(0) as usize,
        index: 0,
        done: false,
    }
}

/// See [`records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    cursor: Cursor<'a>,
    declared: usize,
    index: usize,
    done: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.declared {
            self.done = true;
            if self.cursor.buf.is_empty() {
                return None;
            }
            return Some(Err(RecordError::invalid(
                None,
                format!(
                    "{} bytes follow the {} records the batch declares",
                    self.cursor.buf.len(),
                    self.declared
                ),
            )));
        }
        let index = self.index;
        self.index += 1;
        let result = self.cursor.record().map_err(|why| {
            let message = if self.cursor.buf.is_empty() && why == ENDS_EARLY {
                format!(
                    "the batch declares {} records but holds {index}",
                    self.declared
                )
            } else {
                why.to_string()
            };
            RecordError::invalid(Some(index), message)
        });
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

const ENDS_EARLY: &str = "the records end before the record does";

/// A forward reader of varints and length-prefixed bytes.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn record(&mut self) -> Result<RecordView<'a>, &'static str> {
        if self.buf.is_empty() {
            return Err(ENDS_EARLY);
        }
        let length = self.varint()?;
        let length = usize::try_from(length).map_err(|_| "negative record length")?;
        if length > self.buf.len() {
            return Err("record length runs past the end of the batch");
        }
        let (body, rest) = self.buf.split_at(length);
        self.buf = rest;
        let mut r = Cursor { buf: body };
        let attributes = r.byte()? as i8;
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = r.nullable_bytes()?;
        let value = r.nullable_bytes()?;
        let header_count = r.varint()?;
        let header_count = usize::try_from(header_count).map_err(|_| "negative header count")?;
        // Each header takes at least two bytes: a count past that is a lie, not a reason to loop.
        if header_count > r.buf.len() / 2 {
            return Err("header count larger than the record");
        }
        let header_bytes = r.buf;
        for _ in 0..header_count {
            if r.nullable_bytes()?.is_none() {
                return Err("null header key");
            }
            r.nullable_bytes()?;
        }
        if !r.buf.is_empty() {
            return Err("bytes left over inside the record");
        }
        Ok(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            header_count,
            header_bytes,
        })
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.buf.split_first().ok_or("record truncated")?;
        self.buf = rest;
        Ok(b)
    }

    /// A zig-zag varint of up to 10 bytes.
    fn varlong(&mut self) -> Result<i64, &'static str> {
        let mut raw: u64 = 0;
        for (i, &byte) in self.buf.iter().take(10).enumerate() {
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(if self.buf.len() < 10 {
            "record truncated inside a varint"
        } else {
            "varint longer than 10 bytes"
        })
    }

    fn varint(&mut self) -> Result<i32, &'static str> {
        i32::try_from(self.varlong()?).map_err(|_| "varint out of the 32-bit range")
    }

    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err("negative length other than -1")
            };
        }
        let len = len as usize;
        if len > self.buf.len() {
            return Err("a key, value or header runs past the end of its record");
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(Some(bytes))
    }
}

/// What a produced batch's records must satisfy, from the topic's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRules {
    /// `message.timestamp.type`: CreateTime timestamps are checked against the bounds below.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: how far in the past a CreateTime timestamp may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a CreateTime timestamp may be.
    pub timestamp_after_max_ms: i64,
}

/// Checks every record of one produced batch (whole, CRC already checked): the records parse,
/// their count is `recordCount`, offset deltas run 0..n-1, header keys are present, and CreateTime
/// timestamps lie within the rules' bounds of `now_ms`. A compressed batch is decompressed into
/// `scratch` (at most [`DECOMPRESSED_BATCH_BYTES_MAX`]); on success `scratch` holds its records.
pub fn validate_records(
    header: &BatchHeader,
    batch: &[u8],
    rules: &RecordRules,
    now_ms: i64,
    scratch: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let body = &batch[HEADER_BYTES..header.total_bytes()];
    let body = if header.compression() == codec::NONE {
        body
    } else {
        decompress_into(
            header.compression(),
            body,
            scratch,
            DECOMPRESSED_BATCH_BYTES_MAX,
        )?;
        scratch.as_slice()
    };
    let check_time = rules.timestamp_type == TimestampType::CreateTime;
    for (index, record) in records(body, header.record_count).enumerate() {
        let record = record?;
        if record.offset_delta as i64 != index as i64 {
            return Err(RecordError::invalid(
                Some(index),
                format!(
                    "offset delta {} where {index} was expected",
                    record.offset_delta
                ),
            ));
        }
        if check_time {
            // The lake stores base + delta: a sum past i64 is no timestamp at all.
            let timestamp = header
                .base_timestamp
                .checked_add(record.timestamp_delta)
                .ok_or_else(|| {
                    format!(
                        "base timestamp {} plus delta {} overflows",
                        header.base_timestamp, record.timestamp_delta
                    )
                });
            timestamp
                .and_then(|t| check_timestamp(t, rules, now_ms))
                .map_err(|message| RecordError {
                    kind: RecordErrorKind::Timestamp,
                    index: Some(index),
                    message,
                })?;
        }
    }
    Ok(())
}

/// Checks that `input` is one or more whole LZ4 frames and nothing else: each frame's header,
/// its blocks up to the end mark, and its content checksum when the frame has one (the checksums
/// themselves are checked by the decoder).
fn lz4_frames_whole(input: &[u8]) -> Result<(), String> {
    const MAGIC: u32 = 0x184D_2204;
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<usize, String> {
        let start = *at;
        *at = at
            .checked_add(n)
            .filter(|&end| end <= input.len())
            .ok_or_else(|| format!("frame cut short at byte {start} of {}", input.len()))?;
        Ok(start)
    };
    if input.is_empty() {
        return Err("no frame".to_string());
    }
    while at < input.len() {
        let magic = take(&mut at, 4)?;
        if u32::from_le_bytes(input[magic..magic + 4].try_into().expect("4 bytes")) != MAGIC {
            return Err(format!("no LZ4 frame magic at byte {magic}"));
        }
        let flg = input[take(&mut at, 2)?];
        let block_checksums = flg & 0x10 != 0;
        let content_size = flg & 0x08 != 0;
        let content_checksum = flg & 0x04 != 0;
        let dict_id = flg & 0x01 != 0;
        take(
            &mut at,
            usize::from(content_size) * 8 + usize::from(dict_id) * 4 + 1,
        )?;
        loop {
            let size_at = take(&mut at, 4)?;
            let size = u32::from_le_bytes(input[size_at..size_at + 4].try_into().expect("4 bytes"))
                & 0x7FFF_FFFF;
            if size == 0 {
                break;
            }
            take(&mut at, size as usize + usize::from(block_checksums) * 4)?;
        }
        if content_checksum {
            take(&mut at, 4)?;
        }
    }
    Ok(())
}

/// KIP-937: a CreateTime timestamp at most `before` ms in the past and `after` ms in the future.
fn check_timestamp(timestamp: i64, rules: &RecordRules, now_ms: i64) -> Result<(), String> {
    if now_ms.saturating_sub(timestamp) > rules.timestamp_before_max_ms {
        return Err(format!(
            "timestamp {timestamp} is more than message.timestamp.before.max.ms={} before the broker's time {now_ms}",
            rules.timestamp_before_max_ms
        ));
    }
    if timestamp.saturating_sub(now_ms) > rules.timestamp_after_max_ms {
        return Err(format!(
            "timestamp {timestamp} is more than message.timestamp.after.max.ms={} after the broker's time {now_ms}",
            rules.timestamp_after_max_ms
        ));
    }
    Ok(())
}

/// Re-encodes a batch's records with codec `target` at `levels`, as a broker does for a topic
/// whose `compression.type` is not `producer`. `records` are the batch's records, uncompressed
/// (its records part, or what [`validate_records`] left in its scratch buffer). Everything else
/// in the header is kept; the length and CRC are recomputed.
pub fn recompress(
    batch: &[u8],
    records: &[u8],
    target: i16,
    levels: crate::config::CompressionLevels,
) -> Result<Vec<u8>, RecordError> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len() / 2);
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    let done: std::io::Result<()> = match target {
        codec::NONE => {
            out.extend_from_slice(records);
            Ok(())
        }
        codec::GZIP => {
            let level = u32::try_from(levels.gzip)
                .map_or_else(|_| flate2::Compression::default(), flate2::Compression::new);
            let mut encoder = flate2::write::GzEncoder::new(&mut out, level);
            encoder
                .write_all(records)
                .and_then(|()| encoder.finish().map(drop))
        }
        codec::SNAPPY => {
            // Kafka's (xerial) framing, as the Java client writes it; snappy has no levels.
            use bytes::BufMut;
            use kafka_protocol::compression::{Compressor, Snappy};
            let mut framed = bytes::BytesMut::new();
            Snappy::compress(&mut framed, |tmp: &mut bytes::BytesMut| {
                tmp.put_slice(records);
                Ok(())
            })
            .map_err(std::io::Error::other)
            .map(|()| out.extend_from_slice(&framed))
        }
        codec::LZ4 => lz4::EncoderBuilder::new()
            .level(u32::try_from(levels.lz4).unwrap_or(1))
            .block_mode(lz4::BlockMode::Independent)
            .build(&mut out)
            .and_then(|mut encoder| {
                encoder.write_all(records)?;
                encoder.finish().1
            }),
        codec::ZSTD => zstd::stream::Encoder::new(&mut out, levels.zstd).and_then(|mut encoder| {
            // The levels above 19 ask for windows past what readers (this broker's included)
            // take: the window stays within the batch, which is at most 64 MiB.
            encoder.set_pledged_src_size(Some(records.len() as u64))?;
            encoder.window_log(ZSTD_WINDOW_LOG_MAX)?;
            encoder.write_all(records)?;
            encoder.finish().map(drop)
        }),
        other => {
            return Err(RecordError::invalid(
                None,
                format!("unknown compression codec {other}"),
            ));
        }
    };
    done.map_err(|e| RecordError::invalid(None, format!("recompression failed: {e}")))?;
    crate::batch::set_compression(&mut out, target);
    Ok(out)
}

/// A decompression buffer lent by the process-wide pool; given back when dropped.
#[derive(Debug)]
pub struct Scratch {
    buf: Vec<u8>,
}

struct Pool {
    /// Buffers lent out, and the ones waiting to be lent again.
    state: Mutex<(usize, Vec<Vec<u8>>)>,
    returned: Condvar,
}

static POOL: Pool = Pool {
    state: Mutex::new((0, Vec::new())),
    returned: Condvar::new(),
};

impl Scratch {
    /// Borrows a buffer, waiting while [`SCRATCH_BUFFERS_MAX`] are lent out. Call it from a
    /// thread that may block (the appends of the broker run on blocking threads).
    pub fn take() -> Self {
        let mut state = POOL.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.0 >= SCRATCH_BUFFERS_MAX {
            state = POOL
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.0 += 1;
        let buf = state.1.pop().unwrap_or_default();
        Self { buf }
    }

    /// The buffer.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.shrink_to(SCRATCH_RETAIN_BYTES);
        let mut state = POOL.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= 1;
        state.1.push(buf);
        drop(state);
        POOL.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encode_batch;
    use crate::batch::validate_batch;
    use kafka_protocol::records::Compression;
    use proptest::prelude::*;

    const RULES: RecordRules = RecordRules {
        timestamp_type: TimestampType::CreateTime,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: 3_600_000,
    };

    fn check(batch: &[u8], now_ms: i64) -> Result<(), RecordError> {
        let header = validate_batch(batch).unwrap();
        validate_records(&header, batch, &RULES, now_ms, &mut Vec::new())
    }

    /// Rewrites the records part of an uncompressed batch and fixes length and CRC, as a hostile
    /// client with a correct CRC would.
    pub(crate) fn with_records(batch: &[u8], records: &[u8], count: i32) -> Vec<u8> {
        let mut out = batch[..HEADER_BYTES].to_vec();
        out.extend_from_slice(records);
        let len = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        out[57..61].copy_from_slice(&count.to_be_bytes());
        out[23..27].copy_from_slice(&(count - 1).max(0).to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn client_batches_pass_in_every_codec() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = encode_batch(&[b"a", b"bb", b""], 1_000, compression);
            check(&batch, 2_000).unwrap();
            let header = validate_batch(&batch).unwrap();
            let mut scratch = Vec::new();
            validate_records(&header, &batch, &RULES, 2_000, &mut scratch).unwrap();
            if compression != Compression::None {
                let values: Vec<_> = records(&scratch, 3)
                    .map(|r| r.unwrap().value.unwrap().to_vec())
                    .collect();
                assert_eq!(values, [b"a".to_vec(), b"bb".to_vec(), Vec::new()]);
            }
        }
    }

    #[test]
    fn lz4_frames_cut_short_or_followed_by_bytes_are_refused() {
        let batch = encode_batch(&[b"a", b"bb", b"ccc"], 1_000, Compression::Lz4);
        check(&batch, 2_000).unwrap();
        let frame = batch[HEADER_BYTES..].to_vec();
        assert!(lz4_frames_whole(&frame).is_ok());
        let mut trailing = frame.clone();
        trailing.extend_from_slice(&[0xbd, 0x39, 0x0c]);
        assert!(lz4_frames_whole(&trailing).is_err());
        let mut recompressed = batch[..HEADER_BYTES].to_vec();
        recompressed.extend_from_slice(&trailing);
        let fixed = |mut b: Vec<u8>| {
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        assert!(
            check(&fixed(recompressed), 2_000).is_err(),
            "trailing bytes"
        );
        let mut cut = batch[..HEADER_BYTES].to_vec();
        cut.extend_from_slice(&frame[..frame.len() - 8]);
        assert!(check(&fixed(cut), 2_000).is_err(), "no end mark");
    }

    #[test]
    fn forty_bytes_of_0x7f_are_refused() {
        let batch = encode_batch(&[b"x"], 1_000, Compression::None);
        let hostile = with_records(&batch, &[0x7f; 40], 1);
        validate_batch(&hostile).unwrap();
        let e = check(&hostile, 2_000).unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::Invalid);
        assert_eq!(e.index, Some(0));
    }

    #[test]
    fn counts_and_deltas_must_match() {
        let batch = encode_batch(&[b"a", b"b"], 1_000, Compression::None);
        let records_part = batch[HEADER_BYTES..].to_vec();
        let more = with_records(&batch, &records_part, 3);
        assert!(
            check(&more, 2_000)
                .unwrap_err()
                .message
                .contains("declares 3")
        );
        let fewer = with_records(&batch, &records_part, 1);
        assert!(check(&fewer, 2_000).unwrap_err().message.contains("follow"));
        // Swap the two records: deltas 1, 0.
        let first_len = records_part[0] as usize / 2 + 1;
        let swapped = [&records_part[first_len..], &records_part[..first_len]].concat();
        let e = check(&with_records(&batch, &swapped, 2), 2_000).unwrap_err();
        assert!(e.message.contains("offset delta 1"), "{e}");
    }

    #[test]
    fn timestamps_outside_the_bounds_are_refused() {
        let batch = encode_batch(&[b"a"], 10_000_000, Compression::None);
        check(&batch, 10_000_000).unwrap();
        let e = check(&batch, 10_000_000 - 3_600_001).unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::Timestamp);
        let past = RecordRules {
            timestamp_before_max_ms: 1_000,
            ..RULES
        };
        let header = validate_batch(&batch).unwrap();
        let e = validate_records(&header, &batch, &past, 10_002_000, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("before.max.ms"));
        let log_append = RecordRules {
            timestamp_type: TimestampType::LogAppendTime,
            ..past
        };
        validate_records(&header, &batch, &log_append, 10_002_000, &mut Vec::new()).unwrap();
    }

    #[test]
    fn decompression_bombs_stop_at_the_bound() {
        let zeros = vec![0u8; 4 << 20];
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = encode_batch(&[&zeros], 1_000, compression);
            let header = validate_batch(&batch).unwrap();
            let body = &batch[HEADER_BYTES..];
            let mut out = Vec::new();
            let e = decompress_into(header.compression(), body, &mut out, 1 << 20).unwrap_err();
            assert!(
                e.message.contains("more than 1048576"),
                "{compression:?}: {e}"
            );
            assert!(out.len() <= (1 << 20) + 1, "{compression:?}");
            decompress_into(header.compression(), body, &mut out, 8 << 20).unwrap();
        }
    }

    #[test]
    fn recompression_keeps_the_records() {
        use crate::config::CompressionLevels;
        let lowest = CompressionLevels {
            gzip: 1,
            lz4: 1,
            zstd: -131_072,
        };
        let highest = CompressionLevels {
            gzip: 9,
            lz4: 17,
            zstd: 22,
        };
        for (from, to, levels) in [
            (Compression::None, codec::ZSTD, CompressionLevels::default()),
            (Compression::Lz4, codec::GZIP, CompressionLevels::default()),
            (
                Compression::Snappy,
                codec::NONE,
                CompressionLevels::default(),
            ),
            (Compression::Zstd, codec::LZ4, CompressionLevels::default()),
            (
                Compression::Gzip,
                codec::SNAPPY,
                CompressionLevels::default(),
            ),
            (Compression::None, codec::GZIP, lowest),
            (Compression::None, codec::LZ4, lowest),
            (Compression::None, codec::ZSTD, lowest),
            (Compression::Snappy, codec::GZIP, highest),
            (Compression::Snappy, codec::LZ4, highest),
            (Compression::Snappy, codec::ZSTD, highest),
        ] {
            let batch = encode_batch(&[b"one", b"two"], 1_000, from);
            let header = validate_batch(&batch).unwrap();
            let mut scratch = Vec::new();
            validate_records(&header, &batch, &RULES, 2_000, &mut scratch).unwrap();
            let records_part = if from == Compression::None {
                &batch[HEADER_BYTES..]
            } else {
                &scratch[..]
            };
            let converted = recompress(&batch, records_part, to, levels).unwrap();
            let new_header = validate_batch(&converted).unwrap();
            assert_eq!(new_header.compression(), to);
            assert_eq!(new_header.total_bytes(), converted.len());
            assert_eq!(new_header.record_count, 2);
            let mut again = Vec::new();
            validate_records(&new_header, &converted, &RULES, 2_000, &mut again).unwrap();
            let body = if to == codec::NONE {
                &converted[HEADER_BYTES..]
            } else {
                &again[..]
            };
            let values: Vec<_> = records(body, 2)
                .map(|r| r.unwrap().value.unwrap().to_vec())
                .collect();
            assert_eq!(values, [b"one".to_vec(), b"two".to_vec()]);
        }
    }

    /// The levels are used: the fastest and the strongest of each codec give other bytes, and
    /// both decode to the records.
    #[test]
    fn recompression_levels_take_effect() {
        use crate::config::CompressionLevels;
        let text: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                format!(
                    "{{\"user\":{i},\"event\":\"click\",\"page\":\"/p/{}\"}}",
                    i % 7
                )
                .into_bytes()
            })
            .collect();
        let values: Vec<&[u8]> = text.iter().map(Vec::as_slice).collect();
        let batch = encode_batch(&values, 1_000, Compression::None);
        let records_part = &batch[HEADER_BYTES..];
        for (target, fast, strong) in [
            (codec::GZIP, (1, 9, 3), (9, 9, 3)),
            (codec::LZ4, (-1, 1, 3), (-1, 12, 3)),
            (codec::ZSTD, (-1, 9, 1), (-1, 9, 19)),
        ] {
            let levels = |(gzip, lz4, zstd)| CompressionLevels { gzip, lz4, zstd };
            let a = recompress(&batch, records_part, target, levels(fast)).unwrap();
            let b = recompress(&batch, records_part, target, levels(strong)).unwrap();
            assert_ne!(a, b, "codec {target}: the level changes nothing");
            for converted in [a, b] {
                let header = validate_batch(&converted).unwrap();
                let mut plain = Vec::new();
                validate_records(&header, &converted, &RULES, 2_000, &mut plain).unwrap();
                assert_eq!(plain, records_part, "codec {target}");
            }
        }
    }

    #[test]
    fn scratch_buffers_are_lent_and_returned() {
        let mut a = Scratch::take();
        a.buf().extend_from_slice(&[1; 100]);
        drop(a);
        let mut b = Scratch::take();
        assert!(b.buf().is_empty());
    }

    proptest! {
        #[test]
        fn garbage_records_never_panic(records_part in proptest::collection::vec(any::<u8>(), 0..300), count in 0i32..50) {
            let batch = encode_batch(&[b"x"], 1_000, Compression::None);
            let hostile = with_records(&batch, &records_part, count);
            let _ = check(&hostile, 2_000);
        }

        #[test]
        fn garbage_compressed_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), codec in 1i16..5) {
            let _ = decompress_into(codec, &body, &mut Vec::new(), 1 << 16);
        }

        #[test]
        fn encoded_batches_walk(values in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..20)) {
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let batch = encode_batch(&refs, 1_000, Compression::None);
            check(&batch, 2_000).unwrap();
            let walked: Vec<_> = records(&batch[HEADER_BYTES..], values.len() as i32)
                .map(|r| r.unwrap().value.unwrap().to_vec()).collect();
            prop_assert_eq!(walked, values);
        }
    }
}
