//! Whole segments: the stored batches of a sealed segment read one at a time through a bounded
//! window (for offloading), decoded to records, and records back to batches (one per original
//! batch) for serving them to consumers again.

use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};
use strata_log::FileSlice;
use strata_log::batch::{BatchHeader, HEADER_BYTES};

use crate::error::{Error, Result};
use crate::records::{self, LakeRecord};

/// Bytes read from a segment at once: large enough that a segment of small batches costs few
/// reads, small beside a row group.
pub const READ_AHEAD_BYTES: usize = 1024 * 1024;
/// The largest batch a segment may hold. A produced batch is at most `max.message.bytes` (1 MiB by
/// default), and a compressed one larger than this could not be decompressed within the log's
/// bound either; a length field past it is taken for corruption instead of sizing an allocation.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Where a segment's bytes come from: positioned reads, so that reading keeps no cursor in a file
/// the log shares.
pub trait SegmentSource {
    /// Bytes in the segment.
    fn len(&self) -> u64;
    /// Whether the segment is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `position`.
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()>;
    /// The segment's name in errors: its file name.
    fn name(&self) -> String;
}

impl SegmentSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        let start = usize::try_from(position).map_err(std::io::Error::other)?;
        let bytes = self
            .get(start..start + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn name(&self) -> String {
        "(in memory)".into()
    }
}

impl SegmentSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        (&self[..]).read_at(buf, position)
    }

    fn name(&self) -> String {
        "(in memory)".into()
    }
}

impl SegmentSource for FileSlice {
    fn len(&self) -> u64 {
        FileSlice::len(self) as u64
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.file().read_exact_at(buf, self.position() + position)
    }

    fn name(&self) -> String {
        self.path().file_name().map_or_else(
            || self.path().display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// A segment's batches one at a time, each whole and in a window of [`READ_AHEAD_BYTES`] that
/// grows to the largest batch (at most [`BATCH_BYTES_MAX`]). Checks the framing: every batch
/// ends inside the segment, the last one at its end, and offsets only grow. Batch contents (CRC,
/// records) are checked when they are decoded.
#[derive(Debug)]
pub struct BatchReader<S> {
    source: S,
    /// The source's name, for errors.
    name: String,
    len: u64,
    /// Where the next batch starts.
    position: u64,
    /// Bytes of the segment from `window_start` on.
    window: Vec<u8>,
    window_start: u64,
    /// The offset after the previous batch.
    next_offset: Option<i64>,
}

impl<S: SegmentSource> BatchReader<S> {
    /// A reader at the start of `source`.
    pub fn new(source: S) -> Self {
        Self {
            len: source.len(),
            name: source.name(),
            source,
            position: 0,
            window: Vec::new(),
            window_start: 0,
            next_offset: None,
        }
    }

    /// The source's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory the reader holds: its window.
    pub fn buffered_bytes(&self) -> usize {
        self.window.capacity()
    }

    /// Starts over from the first batch.
    pub fn rewind(&mut self) {
        self.position = 0;
        self.next_offset = None;
    }

    /// The next whole batch, `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>> {
        let Some((header, total)) = self.next_header()? else {
            return Ok(None);
        };
        let start = self.fill(total)?;
        let position = self.position;
        self.position += total as u64;
        Ok(Some(Batch {
            header,
            bytes: &self.window[start..start + total],
            segment: &self.name,
            position,
        }))
    }

    fn corrupt(&self, offset: i64, reason: String) -> Error {
        corrupt(&self.name, offset, self.position, reason)
    }

    /// Reads and checks the header at the current position: `(header, batch bytes)`.
    fn next_header(&mut self) -> Result<Option<(BatchHeader, usize)>> {
        let remaining = self.len - self.position;
        if remaining == 0 {
            return Ok(None);
        }
        let expected = self.next_offset.unwrap_or(-1);
        if remaining < HEADER_BYTES as u64 {
            return Err(self.corrupt(
                expected,
                format!("the segment ends {remaining} bytes into a batch header"),
            ));
        }
        let start = self.fill(HEADER_BYTES)?;
        let header = BatchHeader::parse(&self.window[start..start + HEADER_BYTES])
            .map_err(|e| self.corrupt(expected, e.to_string()))?;
        let offset = header.base_offset;
        let total = header.total_bytes();
        if total < HEADER_BYTES {
            return Err(self.corrupt(
                offset,
                format!("batch length {total} is below the header's"),
            ));
        }
        if total as u64 > remaining {
            return Err(self.corrupt(
                offset,
                format!(
                    "a batch of {total} bytes runs past the segment's end ({remaining} bytes left)"
                ),
            ));
        }
        if total > BATCH_BYTES_MAX {
            return Err(self.corrupt(
                offset,
                format!(
                    "a batch of {total} bytes is over the {BATCH_BYTES_MAX} bytes a batch may hold"
                ),
            ));
        }
        if self.next_offset.is_some_and(|next| offset < next) || header.last_offset_delta < 0 {
            return Err(self.corrupt(
                offset,
                format!("the batch's offsets do not follow the previous batch's (next offset {expected})"),
            ));
        }
        self.next_offset = Some(header.next_offset());
        Ok(Some((header, total)))
    }

    /// Makes the window hold `n` bytes from the current position (which the caller checked are in
    /// the segment); returns where they start in it.
    fn fill(&mut self, n: usize) -> Result<usize> {
        let window_end = self.window_start + self.window.len() as u64;
        if self.position >= self.window_start && self.position + n as u64 <= window_end {
            return Ok((self.position - self.window_start) as usize);
        }
        let remaining = self.len - self.position;
        let read = (n.max(READ_AHEAD_BYTES) as u64).min(remaining) as usize;
        if self.window.capacity() > 2 * read {
            // A large batch is behind: do not keep its room for the rest of the segment.
            self.window = Vec::new();
        }
        self.window.clear();
        self.window.reserve_exact(read);
        self.window.resize(read, 0);
        self.window_start = self.position;
        if let Err(e) = self.source.read_at(&mut self.window, self.position) {
            self.window.clear();
            let offset = self.next_offset.unwrap_or(-1);
            return Err(self.corrupt(offset, format!("reading {read} bytes failed: {e}")));
        }
        Ok(0)
    }
}

/// The offsets a conversion of a segment from `from_offset` on will hold: `(first, last)`, from
/// the batch headers. Reads the whole segment once, checking its framing and every batch's CRC,
/// so that bit rot is found before any conversion or upload starts; records are checked when
/// they are decoded. `None` when no batch reaches `from_offset`. Leaves the reader at the start.
pub fn span<S: SegmentSource>(
    reader: &mut BatchReader<S>,
    from_offset: i64,
) -> Result<Option<(i64, i64)>> {
    let mut span = None;
    while let Some(batch) = reader.next_batch()? {
        batch.check()?;
        let header = batch.header;
        if header.record_count == 0 || header.last_offset() < from_offset {
            continue;
        }
        let first = span.map_or(header.base_offset.max(from_offset), |(first, _)| first);
        span = Some((first, header.last_offset()));
    }
    reader.rewind();
    Ok(span)
}

fn corrupt(segment: &str, offset: i64, position: u64, reason: String) -> Error {
    Error::CorruptSegment {
        segment: segment.to_string(),
        offset,
        position,
        reason,
    }
}

/// One whole batch of a segment, as [`BatchReader::next_batch`] returns it.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Its header (framing checked, CRC not yet).
    pub header: BatchHeader,
    /// Its bytes, header included.
    pub bytes: &'a [u8],
    segment: &'a str,
    position: u64,
}

impl Batch<'_> {
    /// Checks the batch's magic, counts and CRC.
    pub fn check(&self) -> Result<()> {
        strata_log::batch::validate_batch(self.bytes).map_err(|e| {
            corrupt(
                self.segment,
                self.header.base_offset,
                self.position,
                e.to_string(),
            )
        })?;
        Ok(())
    }

    /// The batch's records from `from_offset` on. Whatever is wrong with it (CRC, codec, records,
    /// a record outside the header's offsets) is an [`Error::CorruptSegment`] naming the segment,
    /// the batch's offset and position.
    pub fn decode(&self, from_offset: i64) -> Result<Vec<LakeRecord>> {
        let base_offset = self.header.base_offset;
        let mut records = records::decode_batch(self.bytes).map_err(|e| {
            let reason = match e {
                Error::Corrupt(reason) => reason,
                other => other.to_string(),
            };
            let prefix = format!("batch at offset {base_offset}: ");
            let reason = reason
                .strip_prefix(&prefix)
                .map_or(reason.clone(), str::to_string);
            corrupt(self.segment, base_offset, self.position, reason)
        })?;
        // The manifest entry's offsets come from the headers: a record outside its batch's
        // offsets would lie outside its file's.
        let last_offset = self.header.last_offset();
        if let Some(r) = records
            .iter()
            .find(|r| r.offset < base_offset || r.offset > last_offset)
        {
            let reason = format!(
                "record at offset {} lies outside its batch's offsets {base_offset}..={last_offset}",
                r.offset
            );
            return Err(corrupt(self.segment, base_offset, self.position, reason));
        }
        records.retain(|r| r.offset >= from_offset);
        Ok(records)
    }
}

/// Every record of a segment's bytes (whole, valid batches back to back), in offset order.
pub fn decode(segment: &[u8]) -> Result<Vec<LakeRecord>> {
    let mut reader = BatchReader::new(segment);
    let mut out = Vec::new();
    while let Some(batch) = reader.next_batch()? {
        out.extend(batch.decode(i64::MIN)?);
    }
    Ok(out)
}

/// Re-creates one batch per original batch (records grouped by `batch_offset`).
pub fn encode(records: &[LakeRecord]) -> BytesMut {
    let mut out = BytesMut::new();
    for batch in records.chunk_by(|a, b| a.batch_offset == b.batch_offset) {
        records::encode_batch_into(batch, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::arb_records;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn segments_round_trip_through_records(a in arb_records(), b in arb_records()) {
            // Two batches back to back, the second after the first.
            let shift = a.last().unwrap().offset + 1 - b[0].batch_offset;
            let b: Vec<LakeRecord> = b.into_iter().map(|mut r| { r.offset += shift; r.batch_offset += shift; r }).collect();
            let all: Vec<LakeRecord> = a.iter().chain(&b).cloned().collect();
            let bytes = encode(&all);
            prop_assert_eq!(decode(&bytes).unwrap(), all);
        }
    }

    /// `count` batches of one record with a value of `value_bytes`, back to back from offset 0.
    fn batches(count: i64, value_bytes: usize) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut starts) = (Vec::new(), Vec::new());
        for offset in 0..count {
            starts.push(bytes.len());
            let record = LakeRecord {
                offset,
                timestamp_ms: offset,
                key: None,
                value: Some(Bytes::from(vec![offset as u8; value_bytes])),
                headers: Vec::new(),
                batch_offset: offset,
                batch_attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                sequence: -1,
                partition_leader_epoch: 0,
            };
            bytes.extend_from_slice(&encode(&[record]));
        }
        (bytes, starts)
    }

    fn corruption(result: Result<Option<(i64, i64)>>) -> (i64, u64, String) {
        match result {
            Err(Error::CorruptSegment {
                offset,
                position,
                reason,
                ..
            }) => (offset, position, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_are_read_through_a_window_smaller_than_the_segment() {
        // Small batches across many windows, and batches larger than a window.
        for value_bytes in [100, READ_AHEAD_BYTES + 5000] {
            let count = (3 * READ_AHEAD_BYTES / value_bytes).max(3) as i64;
            let (bytes, _) = batches(count, value_bytes);
            let mut reader = BatchReader::new(&bytes[..]);
            assert_eq!(span(&mut reader, 0).unwrap(), Some((0, count - 1)));
            assert_eq!(
                span(&mut reader, count - 1).unwrap(),
                Some((count - 1, count - 1))
            );
            assert_eq!(span(&mut reader, count).unwrap(), None);
            let mut offsets = Vec::new();
            while let Some(batch) = reader.next_batch().unwrap() {
                offsets.extend(batch.decode(1).unwrap().iter().map(|r| r.offset));
                assert!(reader.buffered_bytes() <= value_bytes.max(READ_AHEAD_BYTES) + 200);
            }
            assert_eq!(offsets, (1..count).collect::<Vec<_>>());
        }
    }

    #[test]
    fn framing_errors_name_the_batch_and_its_position() {
        let (bytes, starts) = batches(10, 100);
        // Cut inside the last batch, then inside a header.
        let (offset, position, reason) =
            corruption(span(&mut BatchReader::new(&bytes[..bytes.len() - 1]), 0));
        assert_eq!((offset, position), (9, starts[9] as u64));
        assert!(reason.contains("runs past the segment's end"), "{reason}");
        let (offset, position, reason) =
            corruption(span(&mut BatchReader::new(&bytes[..starts[9] + 30]), 0));
        assert_eq!((offset, position), (9, starts[9] as u64));
        assert!(reason.contains("into a batch header"), "{reason}");
        // A flipped bit in a length: the batch runs into the next one, whose CRC is wrong.
        let mut flipped = bytes.clone();
        flipped[starts[4] + 11] ^= 0x01;
        let (offset, _, reason) = corruption(span(&mut BatchReader::new(&flipped[..]), 0));
        assert_eq!(offset, 4);
        assert!(
            reason.contains("CRC") || reason.contains("past"),
            "{reason}"
        );
        // A base offset going backwards (not covered by the CRC).
        let mut backwards = bytes.clone();
        backwards[starts[6]..starts[6] + 8].copy_from_slice(&2i64.to_be_bytes());
        let (offset, position, reason) = corruption(span(&mut BatchReader::new(&backwards[..]), 0));
        assert_eq!((offset, position), (2, starts[6] as u64));
        assert!(reason.contains("do not follow"), "{reason}");
        // A length past the largest batch is not allocated.
        let mut huge = bytes;
        huge[starts[0] + 8..starts[0] + 12].copy_from_slice(&(i32::MAX).to_be_bytes());
        let (offset, position, reason) = corruption(span(&mut BatchReader::new(&huge[..]), 0));
        assert_eq!((offset, position), (0, 0));
        assert!(reason.contains("past the segment's end"), "{reason}");
    }

    proptest! {
        #[test]
        fn garbage_segments_are_errors_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut reader = BatchReader::new(&bytes[..]);
            if span(&mut reader, 0).is_ok() {
                while let Some(batch) = reader.next_batch().unwrap() {
                    let _ = batch.decode(0);
                }
            }
        }
    }
}
