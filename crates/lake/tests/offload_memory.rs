//! The offload's memory bound, measured by the operating system rather than by the conversion's
//! own count: converting and uploading a 64 MiB segment read from a file raises the process's
//! peak resident memory (`VmHWM`) by far less than the segment. Alone in its test binary, so that
//! no other test's memory counts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use strata_lake::lake::ConversionLimits;
use strata_lake::parquet_file::RowGroupLimits;
use strata_lake::segment::{self, SegmentSource};
use strata_lake::{Lake, LakeRecord, Manifest};

const SEGMENT_BYTES: usize = 64 << 20;
const VALUE_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;

/// A segment file read with positioned reads, as the broker reads its sealed segments.
struct SegmentFile {
    file: File,
    len: u64,
}

impl SegmentSource for SegmentFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, position)
    }

    fn name(&self) -> String {
        "00000000000000000000.log".into()
    }
}

/// The process's peak resident memory, in bytes.
fn peak_resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("Linux reports VmHWM");
    let kib: usize = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Writes a segment of incompressible values batch by batch (never whole in memory); returns the
/// record count.
fn write_segment(path: &std::path::Path) -> i64 {
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut written, mut offset) = (0, 0i64);
    while written < SEGMENT_BYTES {
        let batch: Vec<LakeRecord> = (0..RECORDS_PER_BATCH as i64)
            .map(|i| {
                let value: Vec<u8> = (0..VALUE_BYTES / 8)
                    .flat_map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state.to_le_bytes()
                    })
                    .collect();
                LakeRecord {
                    offset: offset + i,
                    timestamp_ms: 1_700_000_000_000 + offset + i,
                    key: Some(Bytes::from(format!("key-{}", offset + i))),
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    batch_offset: offset,
                    batch_attributes: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    sequence: -1,
                    partition_leader_epoch: 0,
                }
            })
            .collect();
        let bytes = segment::encode(&batch);
        file.write_all(&bytes).unwrap();
        written += bytes.len();
        offset += RECORDS_PER_BATCH as i64;
    }
    file.flush().unwrap();
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converting_a_large_segment_holds_a_fraction_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment.log");
    let records = write_segment(&path);
    let file = File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let url = format!("file://{}", dir.path().join("lake").display());
    let limits = ConversionLimits {
        row_group: RowGroupLimits {
            rows: 64 * 1024,
            bytes: 2 << 20,
        },
        part_bytes: 2 << 20,
    };
    let lake =
        Lake::new(strata_lake::store::open(&url, &BTreeMap::new()).unwrap()).with_limits(limits);
    let before = peak_resident_bytes();
    let done = lake
        .offload_segment("t", 0, &Manifest::default(), SegmentFile { file, len }, 0)
        .await
        .unwrap();
    let growth = peak_resident_bytes().saturating_sub(before);
    eprintln!(
        "segment {len} bytes: peak resident memory +{growth} bytes, conversion counted {} bytes",
        done.peak_buffered_bytes
    );
    let entry = &done.manifest.files[0];
    assert_eq!((entry.base_offset, entry.last_offset), (0, records - 1));
    assert_eq!(entry.rows, records as u64);
    assert!(
        entry.size_bytes > (SEGMENT_BYTES as u64) * 9 / 10,
        "incompressible values: the file is about the segment's size, {} bytes",
        entry.size_bytes
    );
    assert!(lake.verify("t", 0).await.unwrap().is_clean());
    // Holding the segment, its records or the file would raise the peak by 64 MiB at least.
    assert!(
        growth < SEGMENT_BYTES / 2,
        "peak resident memory grew by {growth} bytes converting a segment of {len} bytes \
         (the conversion counted {} bytes at most)",
        done.peak_buffered_bytes
    );
    // The stated bound: the read window, about two row groups (the one being encoded, and
    // decoded records waiting for the encoder), three upload parts, and a batch's slack.
    let bound = segment::READ_AHEAD_BYTES
        + 2 * limits.row_group.bytes
        + (1 << 20)
        + 3 * limits.part_bytes
        + (1 << 20);
    assert!(
        done.peak_buffered_bytes < bound,
        "the conversion counted {} bytes, over its bound of {bound}",
        done.peak_buffered_bytes
    );
}
