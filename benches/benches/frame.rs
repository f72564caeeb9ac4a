//! Criterion bench of request decoding: a Produce request frame (header and body, as the broker
//! reads it off the socket) decoded with `kafka-protocol`.
//!
//! Run with `cargo bench -p strata-benches --bench frame`.

use bytes::{Buf, Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use strata_benches::client_batch;

/// Partitions in the request, each with one 16 x 1 KiB batch: what librdkafka sends with 6
/// partitions and a full linger.
const PARTITIONS: i32 = 6;

fn produce_frame(version: i16) -> Bytes {
    let records = client_batch(16, 1024, Compression::None).freeze();
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("bench")))
        .with_partition_data(
            (0..PARTITIONS)
                .map(|p| {
                    PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(records.clone()))
                })
                .collect(),
        );
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic]);
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bench")))
        .encode(&mut frame, ApiKey::Produce.request_header_version(version))
        .unwrap();
    request.encode(&mut frame, version).unwrap();
    frame.freeze()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for version in [9, 11] {
        let frame = produce_frame(version);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("decode Produce v{version} (6 x 16 KiB)"), |b| {
            b.iter(|| {
                let mut buf = frame.clone();
                let header = RequestHeader::decode(
                    &mut buf,
                    ApiKey::Produce.request_header_version(version),
                )
                .unwrap();
                let request = ProduceRequest::decode(&mut buf, header.request_api_version).unwrap();
                assert!(!buf.has_remaining());
                request
            })
        });
    }
    group.finish();
}

// The macro generates an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, decode);
}
criterion_main!(group::benches);
