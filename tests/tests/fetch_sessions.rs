//! Fetch sessions (KIP-227) and topic ids (Fetch v13) end to end: librdkafka (which fetches by
//! topic id from v13, without sessions) reading every record of a topic of many partitions, and a
//! fetcher speaking the protocol over a socket through a session's life: a full fetch, incremental
//! fetches that carry only news, the long poll waking on a partition the request did not name,
//! forgotten partitions, the session errors, and a cache without room.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
    ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use rdkafka::Offset;
use rdkafka::producer::FutureRecord;
use strata_tests::{TestBroker, client_batch, create_topic, producer, read};

/// librdkafka fetches at v13 (topic ids, no session) once the broker offers it: every record of
/// 120 partitions comes back exactly once, in order, with its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_every_record_of_many_partitions_by_topic_id() {
    const PARTITIONS: i32 = 120;
    const PER_PARTITION: i64 = 15;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "many", PARTITIONS).await;
    let producer = producer(&broker.bootstrap, &[]);
    let sends: Vec<_> = (0..PER_PARTITION)
        .flat_map(|i| (0..PARTITIONS).map(move |p| (p, i)))
        .map(|(p, i)| {
            let value = format!("p{p}-{i}");
            producer
                .send_result(
                    FutureRecord::<(), _>::to("many")
                        .partition(p)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
        })
        .collect();
    for send in sends {
        send.unwrap().await.unwrap().unwrap();
    }
    let bootstrap = broker.bootstrap.clone();
    let (fetch_max, topic_id) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&bootstrap);
        let versions = call(&mut s, &ApiVersionsRequest::default(), 3);
        let fetch = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Fetch as i16)
            .map(|k| k.max_version);
        (fetch, topic_id(&mut s, "many"))
    })
    .await
    .unwrap();
    assert_eq!(fetch_max, Some(13));
    assert!(!topic_id.is_nil(), "Metadata names the topic's id");
    let all: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = read(
        &broker.bootstrap,
        "many",
        &all,
        Offset::Beginning,
        (PARTITIONS as i64 * PER_PARTITION) as usize,
    );
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for c in consumed {
        let value = String::from_utf8(c.value.unwrap()).unwrap();
        by_partition
            .entry(c.partition)
            .or_default()
            .push((c.offset, value));
    }
    assert_eq!(by_partition.len(), PARTITIONS as usize);
    for (p, got) in by_partition {
        let expected: Vec<(i64, String)> = (0..PER_PARTITION)
            .map(|i| (i, format!("p{p}-{i}")))
            .collect();
        assert_eq!(got, expected, "partition {p}");
    }
    broker.stop().await;
}

/// A fetcher's session from start to end, over Fetch v13 (topics by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_only_news_and_waits_on_all_its_partitions() {
    const PARTITIONS: i32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "s", PARTITIONS).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let mut fetcher = connect(&bootstrap);
        let mut writer = connect(&bootstrap);
        let id = topic_id(&mut fetcher, "s");
        for p in 0..PARTITIONS {
            produce(&mut writer, "s", p, 1);
        }
        let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        // Full fetch, epoch 0: a session, and every partition with its record.
        let full = call(&mut fetcher, &fetch(0, 0, id, &all, 0), 13);
        assert_eq!(full.error_code, 0);
        let session = full.session_id;
        assert_ne!(session, 0, "a session was created");
        let got = answered(&full);
        assert_eq!(got.len(), PARTITIONS as usize);
        assert!(
            got.iter().all(|&(_, records, hw)| records == 1 && hw == 1),
            "{got:?}"
        );
        // Epoch 1 moves every offset past the record: nothing is news.
        let moved: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 1)).collect();
        let r = call(&mut fetcher, &fetch(session, 1, id, &moved, 0), 13);
        assert_eq!((r.error_code, r.session_id), (0, session));
        assert!(answered(&r).is_empty(), "{:?}", answered(&r));
        // Epoch 2 names no partition and waits: a record on partition 5 wakes it.
        send(
            &mut fetcher,
            &fetch(session, 2, id, &[], 1).with_max_wait_ms(20_000),
            13,
        );
        let started = Instant::now();
        produce(&mut writer, "s", 5, 2);
        let r: FetchResponse = receive(&mut fetcher, ApiKey::Fetch, 13);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "woken by the record"
        );
        assert_eq!(answered(&r), [(5, 2, 3)]);
        // Epoch 3 forgets partition 6 and moves 5 on; records land on 6 and 7: only 7 is news.
        produce(&mut writer, "s", 6, 1);
        produce(&mut writer, "s", 7, 1);
        let mut forget = fetch(session, 3, id, &[(5, 3)], 0);
        forget.forgotten_topics_data = vec![
            ForgottenTopic::default()
                .with_topic_id(id)
                .with_partitions(vec![6]),
        ];
        let r = call(&mut fetcher, &forget, 13);
        assert_eq!(answered(&r), [(7, 1, 2)]);
        // The same epoch again, an unknown session, and names in a session of ids are refused.
        let again = call(&mut fetcher, &fetch(session, 3, id, &[], 0), 13);
        assert_eq!(
            code(again.error_code),
            Some(ResponseError::InvalidFetchSessionEpoch)
        );
        let unknown = call(&mut fetcher, &fetch(session ^ 1, 4, id, &[], 0), 13);
        assert_eq!(
            code(unknown.error_code),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        let by_name = call(&mut fetcher, &fetch(session, 4, id, &[], 0), 12);
        assert_eq!(
            code(by_name.error_code),
            Some(ResponseError::FetchSessionTopicIdError)
        );
        // The refusals moved nothing: epoch 4 goes on and sees partition 7's record again.
        let r = call(&mut fetcher, &fetch(session, 4, id, &[], 0), 13);
        assert_eq!(answered(&r), [(7, 1, 2)], "7 was never moved on");
        // Epoch -1 closes the session and is answered in full, without a session.
        let closing = call(&mut fetcher, &fetch(session, -1, id, &moved, 0), 13);
        assert_eq!(closing.session_id, 0);
        assert_eq!(answered(&closing).len(), PARTITIONS as usize);
        let closed = call(&mut fetcher, &fetch(session, 5, id, &[], 0), 13);
        assert_eq!(
            code(closed.error_code),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        // A topic id nobody has: UNKNOWN_TOPIC_ID for its partitions.
        let nobody = uuid::Uuid::from_u128(42);
        let r = call(&mut fetcher, &fetch(0, -1, nobody, &[(0, 0)], 0), 13);
        let errors: Vec<i16> = r.responses[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(errors, [ResponseError::UnknownTopicId.code()]);
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// With one slot, a second consumer's full fetch gets no session (the first is recent and as
/// big) and goes on with full fetches; with none, nobody gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_answers_without_a_session() {
    for (slots, second_gets_one) in [("1", false), ("0", false), ("2", true)] {
        let dir = tempfile::tempdir().unwrap();
        let settings = [("max.incremental.fetch.session.cache.slots", slots)];
        let broker = TestBroker::start_in(dir.path(), &settings).await;
        create_topic(&broker.bootstrap, "c", 2).await;
        let bootstrap = broker.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = connect(&bootstrap);
            let id = topic_id(&mut s, "c");
            let first = call(&mut s, &fetch(0, 0, id, &[(0, 0), (1, 0)], 0), 13);
            assert_eq!(first.session_id != 0, slots != "0", "slots {slots}");
            let second = call(&mut s, &fetch(0, 0, id, &[(0, 0), (1, 0)], 0), 13);
            assert_eq!(second.session_id != 0, second_gets_one, "slots {slots}");
            assert_eq!(answered(&second).len(), 2, "answered in full all the same");
        })
        .await
        .unwrap();
        broker.stop().await;
    }
}

fn connect(bootstrap: &str) -> TcpStream {
    let s = TcpStream::connect(bootstrap).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    s
}

/// A Fetch of `partitions` (`(index, fetch offset)`) of topic `id` in session `session` at
/// `epoch`, not waiting unless `min_bytes` and a wait are set.
fn fetch(
    session: i32,
    epoch: i32,
    id: uuid::Uuid,
    partitions: &[(i32, i64)],
    min_bytes: i32,
) -> FetchRequest {
    let topics = if partitions.is_empty() {
        vec![]
    } else {
        vec![
            FetchTopic::default()
                .with_topic_id(id)
                .with_topic(TopicName(StrBytes::from_static_str("s")))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(p, offset)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                ),
        ]
    };
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(min_bytes)
        .with_session_id(session)
        .with_session_epoch(epoch)
        .with_topics(topics)
}

/// `(partition, records, high watermark)` of every partition in an answer.
fn answered(response: &FetchResponse) -> Vec<(i32, usize, i64)> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p: &PartitionData| {
            assert_eq!(p.error_code, 0, "partition {}", p.partition_index);
            let mut bytes = p.records.clone().unwrap_or_default();
            let mut records = 0;
            while bytes.has_remaining() {
                records += RecordBatchDecoder::decode(&mut bytes)
                    .unwrap()
                    .records
                    .len();
            }
            (p.partition_index, records, p.high_watermark)
        })
        .collect()
}

fn code(error_code: i16) -> Option<ResponseError> {
    ResponseError::try_from_code(error_code)
}

/// The id Metadata v12 gives `topic`.
fn topic_id(s: &mut TcpStream, topic: &str) -> uuid::Uuid {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]));
    call(s, &request, 12).topics[0].topic_id
}

/// Appends `records` records to `partition` (acks=1).
fn produce(s: &mut TcpStream, topic: &str, partition: i32, records: usize) {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(client_batch(records, 10, Compression::None))),
                ]),
        ]);
    let response = call(s, &request, 9);
    let code = response.responses[0].partition_responses[0].error_code;
    assert_eq!(code, 0, "produce to {topic}-{partition}");
}

fn call<R: Request>(s: &mut TcpStream, request: &R, version: i16) -> R::Response {
    send(s, request, version);
    receive::<R::Response>(s, ApiKey::try_from(R::KEY).unwrap(), version)
}

fn send<R: Request>(s: &mut TcpStream, request: &R, version: i16) {
    let api_key = ApiKey::try_from(R::KEY).unwrap();
    let mut buf = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).unwrap();
}

fn receive<T: Decodable>(s: &mut TcpStream, api_key: ApiKey, version: i16) -> T {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    let _correlation = body.get_i32();
    if api_key.response_header_version(version) >= 1 {
        body.get_u8();
    }
    T::decode(&mut body, version).unwrap()
}
