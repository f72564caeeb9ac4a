//! Log behaviour through the public API: append, read, roll, retention, index lookups, recovery.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use strata_log::batch::BatchHeader;
use strata_log::{Error, Log, LogConfig};

/// Encodes one client batch of `count` records with values `value-<first + i>` and timestamps
/// `timestamp_ms + i`.
fn client_batch(first: usize, count: usize, timestamp_ms: i64, value_bytes: usize) -> BytesMut {
    client_batch_with(first, count, timestamp_ms, value_bytes, -1, -1, -1)
}

fn client_batch_with(
    first: usize,
    count: usize,
    timestamp_ms: i64,
    value_bytes: usize,
    producer_id: i64,
    producer_epoch: i16,
    sequence: i32,
) -> BytesMut {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let mut value = format!("value-{}", first + i).into_bytes();
            value.resize(value_bytes.max(value.len()), b'.');
            Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: sequence + i as i32, // the encoder needs offset - sequence constant
                timestamp: timestamp_ms + i as i64,
                key: Some(Bytes::from(format!("key-{}", first + i))),
                value: Some(Bytes::from(value)),
                headers: Default::default(),
                delete_horizon: false,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf
}

/// Reads every record from `from` to the log end, decoding the stored batches.
fn read_all(log: &Log, from: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = from;
    while let Some(slice) = log.read(offset, 64 * 1024).unwrap() {
        let mut bytes = Bytes::from(slice.read().unwrap());
        while bytes.len() >= 61 {
            let header = BatchHeader::parse(&bytes).unwrap();
            if header.total_bytes() > bytes.len() {
                break; // a trailing partial batch, as Kafka allows
            }
            let mut one = bytes.split_to(header.total_bytes());
            let set = RecordBatchDecoder::decode(&mut one).unwrap();
            for r in set.records {
                if r.offset >= offset {
                    out.push((
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    ));
                }
            }
            offset = header.next_offset();
        }
    }
    out
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

#[test]
fn appends_assign_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    let mut next = 0;
    for i in 0..10 {
        let batch = client_batch(next, 3, 1000 + i, 10);
        let info = log.append(&batch, 5, 10).unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset),
            (next as i64, next as i64 + 2)
        );
        assert!(!info.duplicate);
        next += 3;
    }
    assert_eq!(log.log_end_offset(), 30);
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 30);
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert!(value.starts_with(&format!("value-{i}")), "{value}");
    }
    // Reading from the middle of a batch starts at the batch holding the offset.
    assert_eq!(read_all(&log, 4)[0].0, 4);
    assert!(log.read(30, 100).unwrap().is_none());
    assert!(matches!(
        log.read(31, 100),
        Err(Error::OffsetOutOfRange {
            log_end_offset: 30,
            ..
        })
    ));
}

#[test]
fn stored_batches_carry_offsets_and_leader_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    log.append(&client_batch(0, 2, 0, 1), 9, 0).unwrap();
    let stored = log.read(0, 1 << 20).unwrap().unwrap().read().unwrap();
    let header = strata_log::batch::validate_batch(&stored).unwrap();
    assert_eq!((header.base_offset, header.partition_leader_epoch), (0, 9));
}

#[test]
fn log_append_time_batches_are_stored_with_a_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        timestamp_type: strata_log::config::TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config, 0).unwrap();
    log.append(&client_batch(0, 3, 5, 100), 0, 0).unwrap();
    let info = log.append(&client_batch(3, 2, 5, 100), 0, 77_000).unwrap();
    assert_eq!(info.log_append_time_ms, 77_000);
    let stored = log.read(3, 1 << 20).unwrap().unwrap().read().unwrap();
    let header = strata_log::batch::validate_batch(&stored).unwrap();
    assert_eq!((header.base_offset, header.max_timestamp), (3, 77_000));
    assert_ne!(
        header.attributes & strata_log::batch::ATTR_LOG_APPEND_TIME,
        0
    );
    let decoded = RecordBatchDecoder::decode(&mut Bytes::from(stored)).unwrap();
    assert_eq!(decoded.records.len(), 2);
    assert!(
        decoded
            .records
            .iter()
            .all(|r| r.timestamp_type == TimestampType::LogAppend)
    );
}

#[test]
fn rolls_segments_and_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..100 {
        log.append(&client_batch(i * 2, 2, i as i64, 200), 0, 0)
            .unwrap();
    }
    assert!(log.segment_count() > 5, "segments: {}", log.segment_count());
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 200);
    assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    // Every offset can be found through the sparse index.
    for offset in [0, 1, 57, 101, 150, 199] {
        let slice = log.read(offset, 1).unwrap().unwrap();
        let header = BatchHeader::parse(&slice.read().unwrap()).unwrap();
        assert!(header.base_offset <= offset && offset <= header.last_offset());
    }
}

#[test]
fn a_batch_larger_than_max_bytes_is_returned_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    let big = client_batch(0, 1, 0, 10_000);
    log.append(&big, 0, 0).unwrap();
    let slice = log.read(0, 100).unwrap().unwrap();
    assert_eq!(slice.len(), big.len());
}

#[test]
fn time_roll_and_retention_by_time_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 1000,
        retention_ms: 10_000,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config.clone(), 0).unwrap();
    log.append(&client_batch(0, 5, 100, 10), 0, 0).unwrap();
    assert!(!log.maintain(999, true).unwrap().rolled);
    assert!(log.maintain(1000, true).unwrap().rolled);
    log.append(&client_batch(5, 5, 20_000, 10), 0, 1000)
        .unwrap();
    // The first segment's newest record (t=104) is older than 10 s at t=10_105.
    let done = log.maintain(10_105, true).unwrap();
    assert_eq!(done.deleted_segments, 1);
    assert_eq!(log.log_start_offset(), 5);
    assert!(matches!(
        log.read(0, 10),
        Err(Error::OffsetOutOfRange {
            log_start_offset: 5,
            ..
        })
    ));
    assert_eq!(read_all(&log, 5).len(), 5);
    drop(log);
    // The log start offset survives a restart.
    let log = Log::open(dir.path(), config, 20_000).unwrap();
    assert_eq!(log.log_start_offset(), 5);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 8192,
        ..small_segments()
    };
    let mut log = Log::open(dir.path(), config, 0).unwrap();
    for i in 0..100 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    log.maintain(1, true).unwrap();
    assert!(log.size_bytes() <= 8192 + 4096, "size {}", log.size_bytes());
    assert!(log.log_start_offset() > 0);
    assert_eq!(
        read_all(&log, log.log_start_offset()).len() as i64,
        100 - log.log_start_offset()
    );
}

#[test]
fn offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..50 {
        // Batch i holds timestamps 1000*i .. 1000*i + 3.
        log.append(&client_batch(i * 4, 4, 1000 * i as i64, 100), 0, 0)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(1002).unwrap(), Some((6, 1002)));
    assert_eq!(log.offset_for_timestamp(1004).unwrap(), Some((8, 2000)));
    assert_eq!(
        log.offset_for_timestamp(49_003).unwrap(),
        Some((199, 49_003))
    );
    assert_eq!(log.offset_for_timestamp(49_004).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((196, 49_003)));
}

#[test]
fn idempotent_retries_are_not_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    let first = log
        .append(&client_batch_with(0, 3, 0, 1, 42, 0, 0), 0, 0)
        .unwrap();
    let retry = log
        .append(&client_batch_with(0, 3, 0, 1, 42, 0, 0), 0, 0)
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, first.base_offset);
    assert_eq!(log.log_end_offset(), 3);
    let gap = log.append(&client_batch_with(3, 1, 0, 1, 42, 0, 7), 0, 0);
    assert!(matches!(
        gap,
        Err(Error::OutOfOrderSequence {
            expected: 3,
            received: 7,
            ..
        })
    ));
    log.append(&client_batch_with(3, 1, 0, 1, 42, 0, 3), 0, 0)
        .unwrap();
    // The state is rebuilt after a crash (no clean close): the retry is still recognised.
    drop(log);
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(
        log.append(&client_batch_with(3, 1, 0, 1, 42, 0, 3), 0, 0)
            .unwrap()
            .duplicate
    );
    log.append(&client_batch_with(4, 1, 0, 1, 42, 0, 4), 0, 0)
        .unwrap();
    log.close(0).unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(
        log.append(&client_batch_with(4, 1, 0, 1, 42, 0, 4), 0, 0)
            .unwrap()
            .duplicate
    );
}

#[test]
fn a_set_of_two_batches_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    let mut two = client_batch(0, 1, 0, 1);
    two.extend_from_slice(&client_batch(1, 1, 0, 1));
    assert!(matches!(
        log.append(&two, 0, 0),
        Err(Error::InvalidBatch(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn clean_close_and_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..40 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    log.close(0).unwrap();
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(!log.recovery_report().unclean);
    assert_eq!(log.log_end_offset(), 40);
    assert_eq!(read_all(&log, 0).len(), 40);
}

/// The removal of `.clean-shutdown` at an open is not fsynced, so a power loss can bring the
/// marker back after the log was written to: it names the segment and length it vouched for, and
/// a log that no longer matches is recovered (here: a torn batch at the tail is cut).
#[test]
fn a_clean_shutdown_marker_that_no_longer_describes_the_log_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    for i in 0..10 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    log.close(0).unwrap();
    let marker = dir.path().join(".clean-shutdown");
    let vouched = std::fs::read(&marker).unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert!(!log.recovery_report().unclean);
    assert!(!marker.exists());
    for i in 10..15 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    drop(log); // a crash: no close
    // The power loss: the marker is back, and the last batch is torn.
    std::fs::write(&marker, &vouched).unwrap();
    let segment = last_segment(dir.path());
    let length = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(length - 100).unwrap();
    let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert!(
        log.recovery_report().unclean,
        "the stale marker is not trusted"
    );
    assert!(log.recovery_report().truncated_bytes > 0);
    assert_eq!(log.log_end_offset(), 14, "the torn 15th batch is cut");
    assert_eq!(read_all(&log, 0).len(), 14);
    log.close(0).unwrap();

    // An empty marker (written before markers named their segment) is trusted as it was.
    std::fs::write(&marker, b"").unwrap();
    let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    assert!(!log.recovery_report().unclean);
    assert_eq!(log.log_end_offset(), 14);
}

/// Copies a committed fixture folder into a temporary one.
fn fixture(name: &str) -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.path().join(path.file_name().unwrap())).unwrap();
    }
    dst
}

fn segment_file(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Writes the committed fixtures (run with `--ignored` to regenerate them).
#[test]
#[ignore = "regenerates the committed fixtures"]
fn write_fixtures() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let make = |name: &str, edit: &dyn Fn(&Path)| {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = Log::open(&dir, small_segments(), 0).unwrap();
        for i in 0..30 {
            log.append(&client_batch(i * 2, 2, 1000 + i as i64, 100), 0, 0)
                .unwrap();
        }
        drop(log); // no clean close: the fixtures are crashed logs
        edit(&dir);
    };
    // 30 batches of 2 records; the last batch lost its final 10 bytes.
    make("torn-tail", &|dir| {
        let path = last_segment(dir);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
    });
    // A byte of the last batch's value flipped: its CRC fails.
    make("corrupt-crc", &|dir| {
        let path = last_segment(dir);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    });
    // Index files deleted or filled with garbage.
    make("damaged-indexes", &|dir| {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("index") => std::fs::write(&path, b"garbage!garbage").unwrap(),
                Some("timeindex") => std::fs::remove_file(&path).unwrap(),
                _ => {}
            }
        }
    });
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn recovery_cuts_a_torn_tail() {
    let dir = fixture("torn-tail");
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(log.recovery_report().unclean);
    assert!(log.recovery_report().truncated_bytes > 0);
    assert_eq!(log.log_end_offset(), 58, "the torn 30th batch is gone");
    assert_eq!(read_all(&log, 0).len(), 58);
    // New appends continue after the last whole batch.
    assert_eq!(
        log.append(&client_batch(58, 1, 0, 1), 0, 0)
            .unwrap()
            .base_offset,
        58
    );
    assert_eq!(read_all(&log, 0).len(), 59);
}

#[test]
fn recovery_cuts_a_corrupt_batch() {
    let dir = fixture("corrupt-crc");
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 58);
    assert_eq!(read_all(&log, 0).len(), 58);
}

#[test]
fn recovery_rebuilds_damaged_indexes() {
    let dir = fixture("damaged-indexes");
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 60);
    for offset in 0..60 {
        let slice = log.read(offset, 1).unwrap().unwrap();
        let header = BatchHeader::parse(&slice.read().unwrap()).unwrap();
        assert!(header.base_offset <= offset && offset <= header.last_offset());
    }
    // Batch i holds offsets 2i, 2i+1 at 1000+i, 1001+i: offset 19 is the first at 1010.
    assert_eq!(log.offset_for_timestamp(1010).unwrap(), Some((19, 1010)));
    // Reopening after a clean close trusts the rebuilt indexes.
    log.close(0).unwrap();
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(read_all(&log, 0).len(), 60);
}

#[test]
fn reopening_in_a_loop_after_crashes_never_loses_appended_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = 0usize;
    for round in 0..20 {
        let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
        assert_eq!(log.log_end_offset() as usize, expected, "round {round}");
        for _ in 0..7 {
            log.append(&client_batch(expected, 3, 0, 50), 0, 0).unwrap();
            expected += 3;
        }
        if round % 3 == 0 {
            log.close(0).unwrap();
        } else if round % 3 == 1 {
            // A torn write at the end, as a crash mid-write leaves.
            drop(log);
            let last = last_segment(dir.path());
            let mut bytes = std::fs::read(&last).unwrap();
            bytes.extend_from_slice(&client_batch(0, 1, 0, 10)[..30]);
            std::fs::write(&last, bytes).unwrap();
        }
    }
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(read_all(&log, 0).len(), expected);
    assert!(segment_file(dir.path(), 0).exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the batch sizes and segment size, every record reads back at its offset.
    #[test]
    fn any_append_sequence_reads_back(sizes in proptest::collection::vec((1usize..5, 0usize..600), 1..60),
                                      segment_bytes in 500u64..5000) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes, index_interval_bytes: 256, ..LogConfig::default() };
        let mut log = Log::open(dir.path(), config, 0).unwrap();
        let mut next = 0;
        for (count, value_bytes) in &sizes {
            log.append(&client_batch(next, *count, 0, *value_bytes), 0, 0).unwrap();
            next += count;
        }
        let records = read_all(&log, 0);
        prop_assert_eq!(records.len(), next);
        for (i, (offset, value)) in records.iter().enumerate() {
            prop_assert_eq!(*offset, i as i64);
            let prefix = format!("value-{i}");
            prop_assert!(value.starts_with(&prefix));
        }
    }
}

/// Files under `dir` this process holds open, from `/proc/self/fd` (exact for one log's folder
/// even while other tests run: each test has its own folder).
fn open_files_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    let mut open: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect();
    open.sort();
    open
}

#[test]
fn idle_segments_hold_no_file_and_a_read_opens_only_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..60 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    assert!(log.segment_count() > 4, "segments: {}", log.segment_count());
    let open = open_files_under(dir.path());
    assert!(
        open.iter()
            .all(|p| p.extension().is_some_and(|e| e == "log")),
        "index files are never held open: {open:?}"
    );
    log.close(0).unwrap();

    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(
        open_files_under(dir.path()),
        Vec::<PathBuf>::new(),
        "an opened log holds no file"
    );
    let slice = log.read(0, 1).unwrap().unwrap();
    assert_eq!(
        open_files_under(dir.path()),
        vec![segment_file(dir.path(), 0).canonicalize().unwrap()],
        "a read opens its segment only"
    );
    drop(slice);
    // A read at the log end (a long-polling fetch) opens nothing more.
    assert!(log.read(log.log_end_offset(), 1).unwrap().is_none());
    // (At most the one: another test may lower the process-wide cap and evict it meanwhile.)
    assert!(open_files_under(dir.path()).len() <= 1);
    drop(log);
    assert_eq!(
        open_files_under(dir.path()),
        Vec::<PathBuf>::new(),
        "a dropped log leaves its files closed"
    );
}

#[test]
fn open_segment_files_stay_under_the_cap_and_evicted_ones_reopen() {
    // The cap is process-wide: other tests running meanwhile only see their files closed sooner,
    // which they cannot tell apart from a cold cache.
    let cap = 3;
    strata_log::file_cache::set_open_files_max(cap);
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..120 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
        assert!(
            open_files_under(dir.path()).len() <= cap,
            "after append {i}"
        );
    }
    assert!(log.segment_count() > 2 * cap);
    // Reading everything twice walks every segment, reopening the evicted ones.
    for _ in 0..2 {
        let records = read_all(&log, 0);
        assert_eq!(records.len(), 120);
        assert!(open_files_under(dir.path()).len() <= cap);
    }
    // Sealed segments handed to an offloader are opened only when read.
    let sealed = log.sealed_segments_from(0);
    assert!(sealed.len() > cap);
    assert!(open_files_under(dir.path()).len() <= cap);
    for segment in &sealed {
        let bytes = segment.slice.read().unwrap();
        assert_eq!(bytes.len(), segment.slice.len());
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap().base_offset,
            segment.base_offset
        );
    }
    strata_log::file_cache::set_open_files_max(strata_log::file_cache::OPEN_FILES_MAX_DEFAULT);
    // Once the log is closed a sealed segment is not read again (nor another file at its path).
    log.close(0).unwrap();
    assert!(sealed[0].slice.read().is_err());
}

#[test]
fn sealed_and_closed_segments_have_their_index_files_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..40 {
        log.append(&client_batch(i, 1, 1000 + i as i64, 300), 0, 0)
            .unwrap();
    }
    // The flush job fsyncs sealed segments through handles the cache may have closed.
    let job = log.pending_flush().expect("sealed segments to flush");
    job.run().unwrap();
    log.complete_flush(&job).unwrap();
    let index_entries = |base: i64| {
        let bytes = std::fs::read(dir.path().join(format!("{base:020}.index"))).unwrap_or_default();
        let size = std::fs::metadata(segment_file(dir.path(), base))
            .unwrap()
            .len();
        strata_log::index::decode_offset_index(&bytes, size).expect("a valid index")
    };
    let sealed = log.sealed_segments_from(0);
    assert!(sealed.len() >= 2);
    for segment in &sealed {
        let entries = index_entries(segment.base_offset);
        assert!(
            !entries.is_empty(),
            "segment {} sealed with its index",
            segment.base_offset
        );
        // Each entry points at the batch holding its offset.
        let bytes = segment.slice.read().unwrap();
        for e in entries {
            let header = BatchHeader::parse(&bytes[e.position as usize..]).unwrap();
            assert_eq!(
                header.base_offset,
                segment.base_offset + i64::from(e.relative_offset)
            );
        }
    }
    let active_base = sealed.last().unwrap().next_offset;
    log.close(0).unwrap();
    assert!(
        !index_entries(active_base).is_empty(),
        "the active segment's index written at close"
    );
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(!log.recovery_report().unclean);
    assert_eq!(read_all(&log, 0).len(), 40);
    assert_eq!(log.offset_for_timestamp(1025).unwrap(), Some((25, 1025)));
}

#[test]
fn closing_an_idle_log_rewrites_no_state_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..30 {
        log.append(&client_batch(i, 1, 0, 300), 0, 0).unwrap();
    }
    log.close(0).unwrap();
    // Each state file is replaced by a rename: a rewrite shows as a new inode.
    let files = ["recovery-point", "log-start-offset", "producer-state.json"];
    let inodes = || -> Vec<u64> {
        files
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().ino())
            .collect()
    };
    let before = inodes();
    for _ in 0..3 {
        let log = Log::open(dir.path(), small_segments(), 0).unwrap();
        assert!(!log.recovery_report().unclean);
        log.close(0).unwrap();
    }
    assert_eq!(
        inodes(),
        before,
        "an idle open and close rewrote a state file"
    );
    // After an append they move on, and the next open sees the new records and state.
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    log.append(&client_batch(30, 1, 0, 300), 0, 0).unwrap();
    log.close(0).unwrap();
    let after = inodes();
    assert_ne!(after[0], before[0], "recovery point");
    assert_eq!(after[1], before[1], "log start offset did not move");
    assert_ne!(after[2], before[2], "producer state");
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert!(!log.recovery_report().unclean);
    assert_eq!(read_all(&log, 0).len(), 31);
}

/// Everything a leader log holds, as a follower would fetch it.
fn all_bytes(log: &Log) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut offset = log.log_start_offset();
    while let Some(slice) = log.read(offset, 1 << 20).unwrap() {
        let chunk = slice.read().unwrap();
        let mut rest = &chunk[..];
        while rest.len() >= 61 {
            let header = BatchHeader::parse(rest).unwrap();
            if rest.len() < header.total_bytes() {
                break;
            }
            bytes.extend_from_slice(&rest[..header.total_bytes()]);
            offset = header.next_offset();
            rest = &rest[header.total_bytes()..];
        }
    }
    bytes
}

#[test]
fn a_follower_copies_batches_as_they_are_across_rolls_and_leader_epochs() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Log::open(leader_dir.path(), small_segments(), 0).unwrap();
    for i in 0..20 {
        let epoch = if i < 8 { 0 } else { 3 };
        leader
            .append(&client_batch(i * 5, 5, 1_000, 40), epoch, 1_000)
            .unwrap();
    }
    let bytes = all_bytes(&leader);
    let mut follower = Log::open(follower_dir.path(), small_segments(), 0).unwrap();
    // In two fetches, the first cut inside a batch; the second repeats what was appended.
    let cut = bytes.len() / 2 + 7;
    let end = follower.append_replicated(&bytes[..cut], 1_000).unwrap();
    assert!(end > 0 && end < 100);
    assert_eq!(follower.append_replicated(&bytes, 1_000).unwrap(), 100);
    assert_eq!(read_all(&follower, 0), read_all(&leader, 0));
    assert_eq!(all_bytes(&follower), bytes, "byte for byte");
    assert!(follower.segment_count() > 1, "rolled like the leader");
    assert_eq!(follower.end_offset_for_epoch(0).unwrap(), Some((0, 40)));
    assert_eq!(follower.end_offset_for_epoch(2).unwrap(), Some((0, 40)));
    assert_eq!(follower.end_offset_for_epoch(3).unwrap(), Some((3, 100)));
    // A gap is refused.
    let mut other = Log::open(tempfile::tempdir().unwrap().path(), small_segments(), 0).unwrap();
    let second = &bytes[BatchHeader::parse(&bytes).unwrap().total_bytes()..];
    assert!(other.append_replicated(second, 1_000).is_err());
}

#[test]
fn truncation_drops_what_the_leader_lacks_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..20 {
        let epoch = if i < 10 { 1 } else { 2 };
        log.append(&client_batch(i * 5, 5, 1_000, 40), epoch, 1_000)
            .unwrap();
    }
    log.truncate_to(50, 2_000).unwrap();
    assert_eq!(log.log_end_offset(), 50);
    assert_eq!(log.latest_epoch().unwrap(), Some(1));
    assert_eq!(read_all(&log, 0).len(), 50);
    // Appends continue at the cut.
    let info = log
        .append(&client_batch(50, 5, 1_000, 40), 4, 2_000)
        .unwrap();
    assert_eq!(info.base_offset, 50);
    log.truncate_to(52, 2_000).unwrap();
    assert_eq!(log.log_end_offset(), 50, "cut at the batch holding 52");
    log.close(3_000).unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 50);
    assert_eq!(log.end_offset_for_epoch(4).unwrap(), Some((1, 50)));
    // Below the log start: the log restarts empty at the offset.
    log.truncate_to(0, 4_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert!(read_all(&log, 0).is_empty());
}

#[test]
fn a_log_behind_the_leaders_start_restarts_empty_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..10 {
        log.append(&client_batch(i * 5, 5, 1_000, 200), 1, 1_000)
            .unwrap();
    }
    assert!(log.segment_count() > 1);
    log.restart_at(500, 2_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        log.latest_epoch().unwrap(),
        None,
        "the epochs are learnt again"
    );
    assert!(read_all(&log, 500).is_empty());
    // Replicated batches continue there, and it all survives a reopen.
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), small_segments(), 0).unwrap();
    leader.restart_at(500, 2_000).unwrap();
    leader
        .append(&client_batch(0, 5, 1_000, 40), 3, 2_000)
        .unwrap();
    assert_eq!(
        log.append_replicated(&all_bytes(&leader), 2_000).unwrap(),
        505
    );
    assert_eq!(log.end_offset_for_epoch(3).unwrap(), Some((3, 505)));
    log.close(3_000).unwrap();
    let log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 505));
    assert_eq!(read_all(&log, 500).len(), 5);
}

#[test]
fn reads_can_stop_at_a_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    for i in 0..4 {
        log.append(&client_batch(i * 5, 5, 1_000, 10), 0, 1_000)
            .unwrap();
    }
    assert!(log.read_upto(10, 1 << 20, 10).unwrap().is_none());
    let slice = log.read_upto(0, 1 << 20, 10).unwrap().unwrap();
    let bytes = slice.read().unwrap();
    let first = BatchHeader::parse(&bytes).unwrap();
    let second = BatchHeader::parse(&bytes[first.total_bytes()..]).unwrap();
    assert_eq!(bytes.len(), first.total_bytes() + second.total_bytes());
    assert_eq!(second.next_offset(), 10);
}

#[test]
fn a_log_without_its_epoch_checkpoint_learns_the_epochs_from_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    for i in 0..12 {
        let epoch = if i < 6 { 2 } else { 5 };
        log.append(&client_batch(i * 5, 5, 1_000, 200), epoch, 1_000)
            .unwrap();
    }
    log.close(2_000).unwrap();
    std::fs::remove_file(dir.path().join("leader-epoch-checkpoint")).unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.latest_epoch().unwrap(), Some(5));
    assert_eq!(log.end_offset_for_epoch(2).unwrap(), Some((2, 30)));
    assert_eq!(log.end_offset_for_epoch(4).unwrap(), Some((2, 30)));
    assert_eq!(log.end_offset_for_epoch(5).unwrap(), Some((5, 60)));
}

#[test]
fn offload_lag_is_what_the_lake_does_not_hold_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(), 0).unwrap();
    assert_eq!(log.offload_lag(), strata_log::OffloadLag::default());
    for i in 0..40 {
        log.append(&client_batch(i, 1, 0, 300), 0, 100 + i as i64)
            .unwrap();
    }
    let sealed = log.sealed_segments_from(0);
    assert!(sealed.len() >= 3);
    // Nothing offloaded: every byte, since the first segment was created.
    let all = log.offload_lag();
    assert_eq!(all.bytes, log.size_bytes());
    assert_eq!(all.oldest_ms, Some(0));
    // The first two segments in the lake: the rest.
    log.set_offloaded_offset(sealed[2].base_offset);
    let rest = log.offload_lag();
    let offloaded: u64 = sealed[..2].iter().map(|s| s.slice.len() as u64).sum();
    assert_eq!(rest.bytes, log.size_bytes() - offloaded);
    assert!(rest.oldest_ms.unwrap() > 0, "{rest:?}");
    // Everything up to the log end: nothing, whatever the empty active segment.
    log.roll(1_000).unwrap();
    log.set_offloaded_offset(log.log_end_offset());
    assert_eq!(log.offload_lag(), strata_log::OffloadLag::default());
}
