//! Sparse offset and time indexes of one segment: pure lookups and their on-disk encoding.
//!
//! The offset index maps a relative offset to the byte position of the batch that starts there, one
//! entry per `index.interval.bytes` of log. The time index maps the largest timestamp seen so far to
//! the relative offset of the batch that carried it, one entry whenever that maximum grows past an
//! interval. Both are kept in memory and written whole to files when the segment is sealed or its
//! log closed (no file handle is held in between), so that a restart need not rescan the segment; a
//! damaged index file is rebuilt from the segment.

/// One offset index entry: `(offset - base_offset, byte position)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// One time index entry: `(max timestamp so far, relative offset of that batch)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp in the segment up to and including this batch.
    pub timestamp_ms: i64,
    /// Offset of the batch, relative to the segment's base offset.
    pub relative_offset: u32,
}

/// Bytes of an encoded offset index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of an encoded time index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// The last entry at or before `relative_offset`, if any: where a scan for that offset starts.
pub fn floor_offset(entries: &[OffsetEntry], relative_offset: u32) -> Option<OffsetEntry> {
    let after = entries.partition_point(|e| e.relative_offset <= relative_offset);
    after.checked_sub(1).map(|i| entries[i])
}

/// The relative offset from which a scan for the first record at or after `timestamp_ms` can start:
/// the batch of the last entry whose max timestamp is below the target (every earlier batch is
/// below it too), or the segment start.
pub fn scan_start_for_timestamp(entries: &[TimeEntry], timestamp_ms: i64) -> u32 {
    let below = entries.partition_point(|e| e.timestamp_ms < timestamp_ms);
    below
        .checked_sub(1)
        .map_or(0, |i| entries[i].relative_offset)
}

/// Encodes an offset index entry.
pub fn encode_offset_entry(e: OffsetEntry) -> [u8; OFFSET_ENTRY_BYTES] {
    let mut out = [0u8; OFFSET_ENTRY_BYTES];
    out[..4].copy_from_slice(&e.relative_offset.to_be_bytes());
    out[4..].copy_from_slice(&e.position.to_be_bytes());
    out
}

/// Encodes a time index entry.
pub fn encode_time_entry(e: TimeEntry) -> [u8; TIME_ENTRY_BYTES] {
    let mut out = [0u8; TIME_ENTRY_BYTES];
    out[..8].copy_from_slice(&e.timestamp_ms.to_be_bytes());
    out[8..].copy_from_slice(&e.relative_offset.to_be_bytes());
    out
}

/// Decodes an offset index file, or `None` when it is damaged: a torn entry, offsets or positions
/// that do not strictly increase, or a position at or past `segment_bytes`.
pub fn decode_offset_index(bytes: &[u8], segment_bytes: u64) -> Option<Vec<OffsetEntry>> {
    if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
        return None;
    }
    let entries: Vec<OffsetEntry> = bytes
        .chunks_exact(OFFSET_ENTRY_BYTES)
        .map(|c| OffsetEntry {
            relative_offset: u32::from_be_bytes(c[..4].try_into().expect("4 bytes")),
            position: u32::from_be_bytes(c[4..].try_into().expect("4 bytes")),
        })
        .collect();
    let increasing = entries
        .windows(2)
        .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
    let in_file = entries
        .iter()
        .all(|e| u64::from(e.position) < segment_bytes);
    (increasing && in_file).then_some(entries)
}

/// Decodes a time index file, or `None` when it is damaged (torn entry, timestamps or offsets that
/// do not strictly increase, or an offset past `max_relative_offset`).
pub fn decode_time_index(bytes: &[u8], max_relative_offset: u32) -> Option<Vec<TimeEntry>> {
    if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
        return None;
    }
    let entries: Vec<TimeEntry> = bytes
        .chunks_exact(TIME_ENTRY_BYTES)
        .map(|c| TimeEntry {
            timestamp_ms: i64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_be_bytes(c[8..].try_into().expect("4 bytes")),
        })
        .collect();
    let increasing = entries.windows(2).all(|w| {
        w[0].timestamp_ms < w[1].timestamp_ms && w[0].relative_offset < w[1].relative_offset
    });
    let in_segment = entries
        .iter()
        .all(|e| e.relative_offset <= max_relative_offset);
    (increasing && in_segment).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn oe(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn floor_finds_the_last_entry_at_or_before() {
        let entries = [oe(0, 0), oe(10, 4096), oe(20, 8192)];
        assert_eq!(floor_offset(&entries, 0), Some(oe(0, 0)));
        assert_eq!(floor_offset(&entries, 15), Some(oe(10, 4096)));
        assert_eq!(floor_offset(&entries, 20), Some(oe(20, 8192)));
        assert_eq!(floor_offset(&entries, 99), Some(oe(20, 8192)));
        assert_eq!(floor_offset(&entries[1..], 5), None);
        assert_eq!(floor_offset(&[], 5), None);
    }

    #[test]
    fn time_scan_starts_before_the_target() {
        let entries = [
            TimeEntry {
                timestamp_ms: 100,
                relative_offset: 0,
            },
            TimeEntry {
                timestamp_ms: 200,
                relative_offset: 5,
            },
            TimeEntry {
                timestamp_ms: 300,
                relative_offset: 9,
            },
        ];
        assert_eq!(scan_start_for_timestamp(&entries, 50), 0);
        assert_eq!(scan_start_for_timestamp(&entries, 100), 0);
        assert_eq!(scan_start_for_timestamp(&entries, 250), 5);
        assert_eq!(scan_start_for_timestamp(&entries, 1000), 9);
    }

    #[test]
    fn damaged_indexes_are_refused() {
        let good: Vec<u8> = [oe(0, 0), oe(3, 100)]
            .into_iter()
            .flat_map(encode_offset_entry)
            .collect();
        assert_eq!(decode_offset_index(&good, 200).unwrap().len(), 2);
        assert!(
            decode_offset_index(&good[..good.len() - 1], 200).is_none(),
            "torn entry"
        );
        assert!(
            decode_offset_index(&good, 100).is_none(),
            "position past the segment"
        );
        let backwards: Vec<u8> = [oe(3, 100), oe(0, 0)]
            .into_iter()
            .flat_map(encode_offset_entry)
            .collect();
        assert!(decode_offset_index(&backwards, 200).is_none());
        let t = encode_time_entry(TimeEntry {
            timestamp_ms: 5,
            relative_offset: 9,
        });
        assert!(decode_time_index(&t, 8).is_none());
        assert_eq!(decode_time_index(&t, 9).unwrap().len(), 1);
    }

    proptest! {
        #[test]
        fn offset_index_round_trips(mut pairs in proptest::collection::btree_set((0u32..1 << 30, 0u32..1 << 30), 0..100)) {
            // Make both columns strictly increasing.
            let mut entries: Vec<OffsetEntry> = Vec::new();
            let mut sorted: Vec<(u32, u32)> = std::mem::take(&mut pairs).into_iter().collect();
            sorted.sort();
            let (mut last_o, mut last_p) = (None, None);
            for (o, p) in sorted {
                if last_o.is_some_and(|l| o <= l) || last_p.is_some_and(|l| p <= l) { continue; }
                entries.push(oe(o, p));
                (last_o, last_p) = (Some(o), Some(p));
            }
            let bytes: Vec<u8> = entries.iter().copied().flat_map(encode_offset_entry).collect();
            prop_assert_eq!(decode_offset_index(&bytes, 1 << 31), Some(entries.clone()));
            for e in &entries {
                prop_assert_eq!(floor_offset(&entries, e.relative_offset), Some(*e));
            }
        }
    }
}
