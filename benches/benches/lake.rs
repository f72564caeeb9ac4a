//! Criterion benches of the lake's conversions: a segment to Parquet and Parquet back to batches,
//! for JSON-like and random values. Also prints the lake's size as a fraction of the raw segment
//! and of the segment compressed whole with zstd.
//!
//! Run with `cargo bench -p strata-benches --bench lake`.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::Compression;
use strata_benches::client_batch;
use strata_lake::{parquet_file, segment};

/// A segment of `batches` producer batches of 16 records of 1 KiB values, with offsets assigned.
fn segment_bytes(batches: usize, random: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for b in 0..batches {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut records = segment::decode(&client_batch(16, 1024, Compression::Lz4)).unwrap();
        for r in &mut records {
            let value: Vec<u8> = if random {
                (0..1024).map(|_| next() as u8).collect()
            } else {
                // JSON events with varying ids, names and numbers, about 1 KiB.
                let mut text = String::from("[");
                while text.len() < 1000 {
                    let n = next();
                    let event = ["click", "view", "purchase", "scroll"][(n % 4) as usize];
                    text.push_str(&format!(
                        "{{\"user\":{},\"event\":\"{event}\",\"page\":\"/p/{}\",\"ms\":{}}},",
                        n % 100_000,
                        (n >> 20) % 5000,
                        (n >> 40) % 10_000
                    ));
                }
                text.push(']');
                text.into_bytes()
            };
            r.value = Some(Bytes::from(value));
        }
        let mut batch = segment::encode(&records);
        strata_log::batch::set_base_offset(&mut batch, (b * 16) as i64);
        out.extend_from_slice(&batch);
    }
    out.to_vec()
}

fn conversion(c: &mut Criterion) {
    for (name, random) in [("json-like", false), ("random", true)] {
        let seg = segment_bytes(512, random);
        let records = segment::decode(&seg).unwrap();
        let raw_bytes: usize = records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()) + 16)
            .sum();
        let parquet = parquet_file::write(&records).unwrap();
        let zstd_whole = zstd::encode_all(&segment::encode(&records)[..], 3).unwrap();
        eprintln!(
            "{name}: {} records, uncompressed segment {} B, parquet {} B ({:.3} of uncompressed), segment zstd-3 whole {} B (parquet/zstd = {:.2})",
            records.len(),
            segment::encode(&records).len(),
            parquet.len(),
            parquet.len() as f64 / segment::encode(&records).len() as f64,
            zstd_whole.len(),
            parquet.len() as f64 / zstd_whole.len() as f64
        );
        let mut group = c.benchmark_group(format!("lake/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(raw_bytes as u64));
        group.bench_function("segment to parquet", |b| {
            b.iter(|| parquet_file::write(&segment::decode(&seg).unwrap()).unwrap())
        });
        let file = Bytes::from(parquet.clone());
        group.bench_function("parquet to batches", |b| {
            b.iter(|| segment::encode(&parquet_file::read(file.clone()).unwrap()))
        });
        group.finish();
    }
}

// The macro generates an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, conversion);
}
criterion_main!(group::benches);
