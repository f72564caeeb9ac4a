//! Hostile bytes over raw TCP: each gets its Kafka error code or a closed connection, and the
//! broker keeps serving healthy clients afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, ProduceRequest, ProduceResponse,
    RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use rdkafka::Offset;
use rdkafka::producer::FutureRecord;
use strata_tests::{TestBroker, client_batch, default_lake, producer, read, wait_offloaded_to};

fn connect(bootstrap: &str) -> TcpStream {
    let stream = TcpStream::connect(bootstrap).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Whether the broker closed the connection (reads end) rather than answering.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn request<R: Encodable>(api_key: ApiKey, version: i16, body: &R) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(77)
        .with_client_id(Some(StrBytes::from_static_str("hostile")))
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    frame(&buf)
}

fn response(stream: &mut TcpStream, api_key: ApiKey, version: i16) -> Bytes {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    let header_version = api_key.response_header_version(version);
    assert_eq!(body.get_i32(), 77, "correlation id");
    if header_version >= 1 {
        assert_eq!(body.get_u8(), 0, "no tagged fields");
    }
    body
}

fn batch(value_bytes: usize) -> BytesMut {
    BytesMut::from(client_batch(1, value_bytes, Compression::None))
}

fn produce(stream: &mut TcpStream, topic: &str, records: Bytes) -> i16 {
    let request_body = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    stream
        .write_all(&request(ApiKey::Produce, 8, &request_body))
        .unwrap();
    let mut body = response(stream, ApiKey::Produce, 8);
    let decoded = ProduceResponse::decode(&mut body, 8).unwrap();
    decoded.responses[0].partition_responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(
        dir.path(),
        &[
            ("socket.request.max.bytes", "1048576"),
            ("message.max.bytes", "10000"),
        ],
    )
    .await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || hostile(&bootstrap))
        .await
        .unwrap();

    // A healthy client round trip afterwards.
    let producer = producer(&broker.bootstrap, &[]);
    let delivery = producer
        .send(
            FutureRecord::to("healthy")
                .key("k")
                .payload("still serving"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(delivery.offset, 0);
    let got = read(&broker.bootstrap, "healthy", &[0], Offset::Beginning, 1);
    assert_eq!(got[0].value.as_deref(), Some(b"still serving".as_slice()));
    broker.stop().await;
}

fn hostile(bootstrap: &str) {
    // A frame over socket.request.max.bytes: closed before the body is read.
    let mut s = connect(bootstrap);
    s.write_all(&(2 * 1024 * 1024i32).to_be_bytes()).unwrap();
    assert!(closed(&mut s), "oversized frame");

    // A negative length.
    let mut s = connect(bootstrap);
    s.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(closed(&mut s), "negative length");

    // A frame too short for a header, and garbage.
    let mut s = connect(bootstrap);
    s.write_all(&frame(&[1, 2, 3])).unwrap();
    assert!(closed(&mut s), "short frame");

    // An unknown API key.
    let mut s = connect(bootstrap);
    s.write_all(&frame(&[0x03, 0xe7, 0, 0, 0, 0, 0, 77, 0, 0]))
        .unwrap();
    assert!(closed(&mut s), "unknown api key");

    // A malformed body: Metadata v1 claiming 2^31-1 topics in a tiny frame must not allocate them.
    let mut s = connect(bootstrap);
    let mut body = vec![0, 3, 0, 1, 0, 0, 0, 77, 0, 0];
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    s.write_all(&frame(&body)).unwrap();
    assert!(closed(&mut s), "huge array count");

    // A frame cut short by the peer.
    let mut s = connect(bootstrap);
    s.write_all(&[0, 0, 0, 100, 0, 18]).unwrap();
    drop(s);

    // ApiVersions at an unknown version: UNSUPPORTED_VERSION (35) in the v0 layout.
    let mut s = connect(bootstrap);
    s.write_all(&frame(&[0, 18, 0, 99, 0, 0, 0, 77])).unwrap();
    let mut body = response(&mut s, ApiKey::ApiVersions, 0);
    assert_eq!(body.get_i16(), 35);

    let mut s = connect(bootstrap);
    assert_eq!(create_topic(&mut s, "hostile").0, 0);
    let (code, message) = create_topic(&mut s, "no spaces allowed");
    assert_eq!(code, 17, "INVALID_TOPIC_EXCEPTION");
    assert!(message.contains("no spaces allowed"), "{message}");

    // Produce: a batch with a bad CRC, a batch over max.message.bytes, garbage records, an invalid
    // topic name. Each gets its code on a connection that stays open.
    let mut bad_crc = batch(10);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert_eq!(
        produce(&mut s, "hostile", bad_crc.freeze()),
        2,
        "CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce(&mut s, "hostile", batch(20_000).freeze()),
        10,
        "MESSAGE_TOO_LARGE"
    );
    assert_eq!(
        produce(&mut s, "hostile", Bytes::from_static(&[1, 2, 3, 4, 5])),
        2,
        "CORRUPT_MESSAGE for garbage"
    );
    assert_eq!(
        produce(&mut s, "bad/topic", batch(10).freeze()),
        17,
        "INVALID_TOPIC_EXCEPTION"
    );
    assert_eq!(
        produce(&mut s, "hostile", batch(10).freeze()),
        0,
        "a good batch still appends"
    );
}

fn create_topic(s: &mut TcpStream, name: &str) -> (i16, String) {
    create_topic_with(s, name, 1)
}

/// The batch of the integrity issue: a valid CRC around one record of 40 bytes of `0x7f`, with a
/// good batch for a second partition in the same request.
fn poisoned(good: &BytesMut) -> Bytes {
    let mut out = good[..61].to_vec();
    out.extend_from_slice(&[0x7f; 40]);
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[57..61].copy_from_slice(&1i32.to_be_bytes());
    out[23..27].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// Produce v`version` of `records` to partition 0 and a good batch to partition 1 of `topic`:
/// both partition answers.
fn produce_two(
    stream: &mut TcpStream,
    version: i16,
    topic: &str,
    records: Bytes,
) -> Vec<kafka_protocol::messages::produce_response::PartitionProduceResponse> {
    let request_body = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(batch(10).freeze())),
                ]),
        ]);
    stream
        .write_all(&request(ApiKey::Produce, version, &request_body))
        .unwrap();
    let mut body = response(stream, ApiKey::Produce, version);
    let mut decoded = ProduceResponse::decode(&mut body, version).unwrap();
    decoded.responses.remove(0).partition_responses
}

/// Issue 10: a batch whose CRC is right but whose records are garbage is refused whole with
/// INVALID_RECORD and a record error; nothing of it is stored, the other partition of the same
/// request appends, the connection stays open, a consumer of the partition reads the good records
/// from offset 0 and the partition's segments still reach the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_records_with_a_valid_crc_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(
        dir.path(),
        &[("log.segment.bytes", "300"), ("num.partitions", "2")],
    )
    .await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = connect(&bootstrap);
        assert_eq!(create_topic_with(&mut s, "poison", 2).0, 0);
        for version in [3, 8] {
            let answers = produce_two(&mut s, version, "poison", poisoned(&batch(10)));
            assert_eq!(answers[0].error_code, 87, "INVALID_RECORD at v{version}");
            assert_eq!(answers[0].base_offset, -1);
            assert_eq!(answers[1].error_code, 0, "the other partition appends");
            if version >= 8 {
                let message = answers[0].error_message.as_deref().unwrap_or_default();
                assert!(message.contains("record 0"), "{message}");
                assert_eq!(answers[0].record_errors.len(), 1);
                assert_eq!(answers[0].record_errors[0].batch_index, 0);
            }
        }
        // The same connection goes on: good batches land at offsets 0, 1, 2…
        for i in 0..8 {
            let answers = produce_two(&mut s, 8, "poison", batch(100).freeze());
            assert_eq!(answers[0].error_code, 0);
            assert_eq!(
                answers[0].base_offset, i,
                "nothing of the refused batch was stored"
            );
        }
    })
    .await
    .unwrap();

    let got = read(&broker.bootstrap, "poison", &[0], Offset::Beginning, 8);
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
    assert!(
        got.iter()
            .all(|r| r.value.as_deref() == Some(&[b'v'; 100][..]))
    );

    // Sealed segments of the partition convert and reach the lake.
    wait_offloaded_to(&default_lake(dir.path()), "poison", 0, 4).await;
    broker.stop().await;
}

fn create_topic_with(s: &mut TcpStream, name: &str, partitions: i32) -> (i16, String) {
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    s.write_all(&request(ApiKey::CreateTopics, 5, &create))
        .unwrap();
    let mut body = response(s, ApiKey::CreateTopics, 5);
    let decoded = CreateTopicsResponse::decode(&mut body, 5).unwrap();
    let message = decoded.topics[0]
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    (decoded.topics[0].error_code, message)
}
