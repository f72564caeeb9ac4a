//! The log start offset moved by DeleteRecords (`Log::delete_segments_before`): whole segments
//! below it go, the one holding it stays, it never moves back or past the log end, reads below it
//! are out of range, and it survives clean and unclean reopens.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use strata_log::batch::BatchHeader;
use strata_log::{Error, Log, LogConfig};

/// One client batch holding one record of about 300 bytes, valued `value-<n>`.
fn batch(n: usize) -> BytesMut {
    let mut value = format!("value-{n}").into_bytes();
    value.resize(300, b'.');
    let record = Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_000 + n as i64,
        key: None,
        value: Some(Bytes::from(value)),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, [record].iter(), &options).unwrap();
    buf
}

/// Segments of about a dozen records, kept by time and size.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        retention_ms: -1,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

/// A log of `count` one-record batches in small segments.
fn filled(dir: &Path, count: usize) -> Log {
    let mut log = Log::open(dir, config(), 0).unwrap();
    for n in 0..count {
        log.append(&batch(n), 0, 0).unwrap();
    }
    log
}

/// The base offsets of the segment files in `dir`.
fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// The offsets of the records read from `from` to the log end.
fn offsets_from(log: &Log, from: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut offset = from;
    while let Some(slice) = log.read(offset, 64 * 1024).unwrap() {
        let mut bytes = Bytes::from(slice.read().unwrap());
        while !bytes.is_empty() {
            let header = BatchHeader::parse(&bytes).unwrap();
            let mut one = bytes.split_to(header.total_bytes());
            for r in RecordBatchDecoder::decode(&mut one).unwrap().records {
                // A batch is served whole: clients skip what lies below their fetch offset.
                if r.offset >= from {
                    out.push(r.offset);
                }
            }
            offset = header.next_offset();
        }
    }
    out
}

#[test]
fn whole_segments_below_the_new_start_go_and_the_one_holding_it_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 100);
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 5, "small segments: {bases:?}");
    let start = bases[2] + 3;
    assert!(start < bases[3], "inside the third segment");

    assert_eq!(log.delete_segments_before(start).unwrap(), 2);
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(segment_bases(dir.path()), bases[2..].to_vec());
    assert!(matches!(
        log.read(start - 1, 1024),
        Err(Error::OffsetOutOfRange { log_start_offset, .. }) if log_start_offset == start
    ));
    assert_eq!(offsets_from(&log, start), (start..100).collect::<Vec<_>>());

    // Never backwards: an older offset changes nothing.
    assert_eq!(log.delete_segments_before(bases[1]).unwrap(), 0);
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(segment_bases(dir.path()), bases[2..].to_vec());
}

#[test]
fn the_log_start_survives_clean_and_unclean_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 60);
    let start = segment_bases(dir.path())[1] + 2;
    log.delete_segments_before(start).unwrap();
    let stored = std::fs::read_to_string(dir.path().join("log-start-offset")).unwrap();
    assert_eq!(stored.trim(), start.to_string(), "on disk before any close");

    // A crash: no clean close.
    drop(log);
    let log = Log::open(dir.path(), config(), 10).unwrap();
    assert!(log.recovery_report().unclean);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, 60));
    assert_eq!(offsets_from(&log, start), (start..60).collect::<Vec<_>>());

    log.close(20).unwrap();
    let mut log = Log::open(dir.path(), config(), 30).unwrap();
    assert!(!log.recovery_report().unclean);
    assert_eq!(log.log_start_offset(), start);
    log.append(&batch(60), 0, 40).unwrap();
    assert_eq!(offsets_from(&log, start), (start..61).collect::<Vec<_>>());
}

#[test]
fn the_start_stops_at_the_log_end_and_the_segment_sealed_below_it_goes_at_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 30);
    let bases = segment_bases(dir.path());
    // Past the log end: everything goes but the active segment, which is never deleted.
    log.delete_segments_before(1_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (30, 30));
    assert_eq!(segment_bases(dir.path()), vec![*bases.last().unwrap()]);
    assert!(log.read(30, 1024).unwrap().is_none(), "nothing to read");

    // The active segment, all below the start, is sealed by a roll and goes at the next
    // retention pass although time and size would keep it.
    log.append(&batch(30), 0, 50).unwrap();
    log.delete_segments_before(31).unwrap();
    log.roll(60).unwrap();
    assert_eq!(log.maintain(70, false).unwrap().deleted_segments, 0);
    assert_eq!(log.maintain(70, true).unwrap().deleted_segments, 1);
    assert_eq!(segment_bases(dir.path()), vec![31]);
    assert_eq!(log.log_start_offset(), 31);
    log.append(&batch(31), 0, 80).unwrap();
    assert_eq!(offsets_from(&log, 31), vec![31]);
}
