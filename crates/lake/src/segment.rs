//! Whole segments: the stored batches of a sealed segment to records, and records back to batches
//! (one per original batch) for serving them to consumers again.

use bytes::BytesMut;
use strata_log::batch::BatchHeader;

use crate::error::{Error, Result};
use crate::records::{self, LakeRecord};

/// Every record of a segment's bytes (whole, valid batches back to back), in offset order.
pub fn decode(segment: &[u8]) -> Result<Vec<LakeRecord>> {
    let mut out = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let size = header.total_bytes();
        if size > rest.len() {
            return Err(Error::Corrupt(format!(
                "segment ends inside the batch at offset {}",
                header.base_offset
            )));
        }
        out.extend(records::decode_batch(&rest[..size])?);
        rest = &rest[size..];
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
}
