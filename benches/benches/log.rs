//! Criterion benches of the local log's hot paths: batch validation, append and read.
//!
//! Run with `cargo bench -p strata-benches --bench log`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::Compression;
use strata_benches::client_batch;
use strata_log::{Log, LogConfig, batch, record};

/// Records per batch and bytes per value: 16 x 1 KiB, a typical producer batch.
const RECORDS: usize = 16;
const VALUE_BYTES: usize = 1024;
/// The broker's clock in the benches: the batches' own timestamps, so that the timestamp checks
/// of the append pass as they do for a live producer.
const BATCH_TIME_MS: i64 = 1_700_000_000_000;

fn validation(c: &mut Criterion) {
    let one = client_batch(RECORDS, VALUE_BYTES, Compression::None);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("validate_produce (CRC-32C)", |b| {
        b.iter(|| batch::validate_produce(&one, 1 << 20).unwrap())
    });
    group.finish();
    // Every record walked, as on produce; lz4 decompressed into a reused buffer first.
    let rules = LogConfig::default().record_rules();
    let mut group = c.benchmark_group("record");
    // 16 x 1 KiB, and 1,024 x 1 KiB (the 1 MB batches librdkafka sends at full rate).
    for (name, records, compression) in [
        ("16 none", RECORDS, Compression::None),
        ("16 lz4", RECORDS, Compression::Lz4),
        ("1024 lz4", 1024, Compression::Lz4),
        ("1024 zstd", 1024, Compression::Zstd),
    ] {
        let batch_bytes = client_batch(records, VALUE_BYTES, compression);
        let header = batch::validate_batch(&batch_bytes).unwrap();
        let mut scratch = Vec::new();
        group.throughput(Throughput::Bytes((records * VALUE_BYTES) as u64));
        group.bench_function(format!("validate_records {name}"), |b| {
            b.iter(|| {
                record::validate_records(&header, &batch_bytes, &rules, BATCH_TIME_MS, &mut scratch)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let one = client_batch(RECORDS, VALUE_BYTES, Compression::None);
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 256 * 1024 * 1024,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config, 0).unwrap();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("append 16 x 1 KiB batch", |b| {
        b.iter_batched_ref(
            || one.clone(),
            |batch| log.append(batch, 0, BATCH_TIME_MS).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let one = client_batch(RECORDS, VALUE_BYTES, Compression::None);
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
    let batches = 4096;
    for _ in 0..batches {
        log.append(&one.clone(), 0, BATCH_TIME_MS).unwrap();
    }
    let end = log.log_end_offset();
    let fetch_bytes = 1024 * 1024;
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(fetch_bytes as u64));
    let mut offset = 0;
    group.bench_function("read 1 MiB from the page cache", |b| {
        b.iter(|| {
            let slice = log.read(offset, fetch_bytes).unwrap().unwrap();
            let bytes = slice.read().unwrap();
            offset = (offset + (bytes.len() / one.len() * RECORDS) as i64) % (end - RECORDS as i64);
            bytes
        })
    });
    group.finish();
}

// The macro generates an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, validation, append, read);
}
criterion_main!(group::benches);
