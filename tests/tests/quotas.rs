//! Client quotas end to end: AlterClientQuotas and DescribeClientQuotas over a raw socket
//! (librdkafka has no client-quota API), a librdkafka producer held to its `producer_byte_rate`
//! and told so by `throttle_time_ms`, a consumer held to its `consumer_byte_rate`, quotas kept
//! across a restart; a replay from the lake held to
//! `remote.log.manager.fetch.max.bytes.per.second` and the offload to
//! `remote.log.manager.copy.max.bytes.per.second` (KIP-956).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ApiKey, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_tests::{
    DEADLINE, TestBroker, call_as, create_topic, default_lake, wait_for, wait_offloaded_to,
};

/// Two windows of one second: Kafka's sampled rate lets a client send `(windows − 1)` windows
/// of quota at once after an idle spell (with the default 11, ten seconds' worth), so a 10 s
/// measurement is within 10% of the quota with two windows only (see `security/quota.rs`).
const QUOTA_WINDOWS: &[(&str, &str)] = &[
    ("quota.window.num", "2"),
    ("quota.window.size.seconds", "1"),
];

/// An entity as `(entity type, name)`, `None` naming the default entity.
type Entity<'a> = &'a [(&'a str, Option<&'a str>)];

/// One AlterClientQuotas entry: `ops` as `(key, Some(value))` to set, `(key, None)` to remove.
fn entry(entity: Entity, ops: &[(&str, Option<f64>)]) -> EntryData {
    EntryData::default()
        .with_entity(
            entity
                .iter()
                .map(|(kind, name)| {
                    EntityData::default()
                        .with_entity_type(StrBytes::from_string(kind.to_string()))
                        .with_entity_name(name.map(|n| StrBytes::from_string(n.to_string())))
                })
                .collect(),
        )
        .with_ops(
            ops.iter()
                .map(|(key, value)| {
                    OpData::default()
                        .with_key(StrBytes::from_string(key.to_string()))
                        .with_value(value.unwrap_or_default())
                        .with_remove(value.is_none())
                })
                .collect(),
        )
}

/// AlterClientQuotas at `version`: each entry's error code.
fn alter(bootstrap: &str, entries: Vec<EntryData>, validate_only: bool, version: i16) -> Vec<i16> {
    let mut stream = TcpStream::connect(bootstrap).unwrap();
    let request = AlterClientQuotasRequest::default()
        .with_entries(entries)
        .with_validate_only(validate_only);
    let response: AlterClientQuotasResponse =
        call_as(&mut stream, "quota-admin", &request, version);
    response.entries.iter().map(|e| e.error_code).collect()
}

/// An entity and its quotas as DescribeClientQuotas gives them, sorted.
type Described = Vec<(Vec<(String, Option<String>)>, Vec<(String, f64)>)>;

/// DescribeClientQuotas of every entity with a user or client id part matching `components`.
fn describe(bootstrap: &str, components: Vec<ComponentData>, strict: bool) -> Described {
    let mut stream = TcpStream::connect(bootstrap).unwrap();
    let request = DescribeClientQuotasRequest::default()
        .with_components(components)
        .with_strict(strict);
    let response: DescribeClientQuotasResponse = call_as(&mut stream, "quota-admin", &request, 1);
    assert_eq!(response.error_code, 0, "{:?}", response.error_message);
    let mut described: Described = response
        .entries
        .unwrap()
        .into_iter()
        .map(|e| {
            let entity = e
                .entity
                .into_iter()
                .map(|d| {
                    (
                        d.entity_type.to_string(),
                        d.entity_name.map(|n| n.to_string()),
                    )
                })
                .collect();
            let values = e
                .values
                .into_iter()
                .map(|v| (v.key.to_string(), v.value))
                .collect();
            (entity, values)
        })
        .collect();
    described.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    described
}

fn component(kind: &str, match_type: i8, name: Option<&str>) -> ComponentData {
    ComponentData::default()
        .with_entity_type(StrBytes::from_string(kind.to_string()))
        .with_match_type(match_type)
        .with_match(name.map(|n| StrBytes::from_string(n.to_string())))
}

fn entity(parts: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    parts
        .iter()
        .map(|(k, n)| (k.to_string(), n.map(String::from)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_altered_described_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_in(dir.path(), &[]).await;
    let bootstrap = broker.bootstrap.clone();
    let invalid = 42; // INVALID_REQUEST
    let codes = tokio::task::spawn_blocking(move || {
        // validate_only stores nothing.
        let checked = alter(
            &bootstrap,
            vec![entry(
                &[("user", Some("alice"))],
                &[("producer_byte_rate", Some(1024.0))],
            )],
            true,
            0,
        );
        assert_eq!(checked, vec![0]);
        assert!(describe(&bootstrap, vec![], false).is_empty());
        alter(
            &bootstrap,
            vec![
                entry(
                    &[("user", Some("alice")), ("client-id", Some("app"))],
                    &[
                        ("producer_byte_rate", Some(1024.0)),
                        ("request_percentage", Some(50.5)),
                    ],
                ),
                entry(&[("user", None)], &[("consumer_byte_rate", Some(4096.0))]),
                entry(
                    &[("client-id", Some("app"))],
                    &[("consumer_byte_rate", Some(2048.0))],
                ),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate_typo", Some(1.0))],
                ),
                entry(
                    &[("ip", Some("127.0.0.1"))],
                    &[("connection_creation_rate", Some(1.0))],
                ),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate", Some(-1.0))],
                ),
            ],
            false,
            1,
        )
    })
    .await
    .unwrap();
    assert_eq!(codes, vec![0, 0, 0, invalid, invalid, invalid]);
    let app_quota = (
        entity(&[("client-id", Some("app"))]),
        vec![("consumer_byte_rate".to_string(), 2048.0)],
    );
    let alice_app_quota = (
        entity(&[("user", Some("alice")), ("client-id", Some("app"))]),
        vec![
            ("producer_byte_rate".to_string(), 1024.0),
            ("request_percentage".to_string(), 50.5),
        ],
    );
    let default_user_quota = (
        entity(&[("user", None)]),
        vec![("consumer_byte_rate".to_string(), 4096.0)],
    );
    let sorted = |mut d: Described| {
        d.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        d
    };
    let expected = sorted(vec![
        app_quota.clone(),
        alice_app_quota.clone(),
        default_user_quota.clone(),
    ]);
    let check = |bootstrap: String| {
        let (expected, default_user_quota, app_quota) = (
            expected.clone(),
            default_user_quota.clone(),
            app_quota.clone(),
        );
        tokio::task::spawn_blocking(move || {
            assert_eq!(describe(&bootstrap, vec![], false), expected);
            // Users only, the default user only, client ids exactly "app" (strict: no user).
            let users = describe(&bootstrap, vec![component("user", 2, None)], false);
            assert_eq!(users.len(), 2, "{users:?}");
            let default = describe(&bootstrap, vec![component("user", 1, None)], true);
            assert_eq!(default, vec![default_user_quota]);
            let app = describe(
                &bootstrap,
                vec![component("client-id", 0, Some("app"))],
                true,
            );
            assert_eq!(app, vec![app_quota]);
        })
    };
    check(broker.bootstrap.clone()).await.unwrap();
    broker.restart().await;
    check(broker.bootstrap.clone()).await.unwrap();
    // Removing the last key removes the entity.
    let bootstrap = broker.bootstrap.clone();
    let left = tokio::task::spawn_blocking(move || {
        let codes = alter(
            &bootstrap,
            vec![entry(
                &[("client-id", Some("app"))],
                &[("consumer_byte_rate", None)],
            )],
            false,
            1,
        );
        assert_eq!(codes, vec![0]);
        describe(&bootstrap, vec![], false)
    })
    .await
    .unwrap();
    assert_eq!(left, sorted(vec![alice_app_quota, default_user_quota]));
    broker.stop().await;
}

/// The largest `throttle_time_ms` librdkafka saw in a broker's answers.
#[derive(Clone, Default)]
struct ThrottleSeen(Arc<AtomicI64>);

impl ClientContext for ThrottleSeen {
    fn stats(&self, statistics: Statistics) {
        for broker in statistics.brokers.values() {
            if let Some(throttle) = &broker.throttle {
                self.0.fetch_max(throttle.max, Ordering::Relaxed);
            }
        }
    }
}

/// Bytes a second over the acknowledgements at `[from, to)` after `start`.
fn rate_between(acks: &[(Instant, usize)], start: Instant, from: Duration, to: Duration) -> f64 {
    let bytes: usize = acks
        .iter()
        .filter(|(at, _)| (start + from..start + to).contains(at))
        .map(|(_, b)| b)
        .sum();
    bytes as f64 / (to - from).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_is_held_to_its_byte_rate_and_told_it_is_throttled() {
    const QUOTA: f64 = 256.0 * 1024.0;
    const VALUE_BYTES: usize = 1024;
    const IN_FLIGHT_MAX: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), QUOTA_WINDOWS).await;
    let bootstrap = broker.bootstrap.clone();
    create_topic(&bootstrap, "throttled", 1).await;
    let b = bootstrap.clone();
    let codes = tokio::task::spawn_blocking(move || {
        alter(
            &b,
            vec![entry(
                &[("client-id", Some("quota-producer"))],
                &[("producer_byte_rate", Some(QUOTA))],
            )],
            false,
            1,
        )
    })
    .await
    .unwrap();
    assert_eq!(codes, vec![0]);
    let seen = ThrottleSeen::default();
    let producer: FutureProducer<ThrottleSeen> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("client.id", "quota-producer")
        .set("linger.ms", "20")
        // Requests well under a window's quota (see the module doc of security/quota.rs).
        .set("batch.size", "16384")
        .set("compression.type", "none")
        .set("message.timeout.ms", "120000")
        .set("statistics.interval.ms", "500")
        .create_with_context(seen.clone())
        .unwrap();
    // A producer with far more to send than its quota: 12 s of producing, measured over the
    // last 10 s.
    let value = vec![b'q'; VALUE_BYTES];
    let start = Instant::now();
    let mut in_flight = VecDeque::new();
    let mut acks = Vec::new();
    while start.elapsed() < Duration::from_secs(12) {
        if in_flight.len() >= IN_FLIGHT_MAX {
            let delivery: rdkafka::producer::DeliveryFuture = in_flight.pop_front().unwrap();
            delivery.await.unwrap().unwrap();
            acks.push((Instant::now(), VALUE_BYTES));
            continue;
        }
        let record = FutureRecord::<(), [u8]>::to("throttled")
            .partition(0)
            .payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back(delivery),
            Err((e, _)) => panic!("enqueueing: {e}"),
        }
    }
    let rate = rate_between(
        &acks,
        start,
        Duration::from_secs(2),
        Duration::from_secs(12),
    );
    assert!(
        (QUOTA * 0.9..=QUOTA * 1.1).contains(&rate),
        "acknowledged {rate:.0} B/s against a quota of {QUOTA} B/s"
    );
    wait_for("librdkafka to report a throttle", || {
        (seen.0.load(Ordering::Relaxed) > 0).then_some(())
    });
    // Another client id has no quota: it is not slowed.
    let free: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("client.id", "unlimited")
        .set("compression.type", "none")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for _ in 0..2048 {
        let record = FutureRecord::<(), [u8]>::to("throttled")
            .partition(0)
            .payload(&value);
        deliveries.push(free.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    let free_rate = 2048.0 * VALUE_BYTES as f64 / started.elapsed().as_secs_f64();
    assert!(
        free_rate > 2.0 * QUOTA,
        "an unthrottled client got {free_rate:.0} B/s"
    );
    drop(in_flight);
    broker.stop().await;
}

/// A consumer reading `count` records of `topic` partition 0 from the beginning with
/// `client.id` set; returns the instants records arrived and their value bytes.
fn consume(bootstrap: &str, topic: &str, client_id: &str, count: usize) -> Vec<(Instant, usize)> {
    let consumer: BaseConsumer<DefaultConsumerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "quota-tests")
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("max.partition.fetch.bytes", "65536")
        .set("fetch.max.bytes", "65536")
        .set("message.max.bytes", "65536")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let start = Instant::now();
    let mut arrived = Vec::with_capacity(count);
    while arrived.len() < count {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "read {} of {count}",
            arrived.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            arrived.push((Instant::now(), message.payload().map_or(0, <[u8]>::len)));
        }
    }
    arrived
}

async fn produce(bootstrap: &str, topic: &str, count: usize, value_bytes: usize) {
    // Batches of 16 KiB: a fetch answer holds at least one whole batch.
    let producer = strata_tests::producer(
        bootstrap,
        &[("compression.type", "none"), ("batch.size", "16384")],
    );
    let value = vec![b'r'; value_bytes];
    let mut deliveries = Vec::with_capacity(count);
    for _ in 0..count {
        let record = FutureRecord::<(), [u8]>::to(topic)
            .partition(0)
            .payload(&value);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_held_to_its_fetch_byte_rate() {
    const QUOTA: f64 = 256.0 * 1024.0;
    const RECORDS: usize = 3584; // 3.5 MiB: 14 s of quota
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), QUOTA_WINDOWS).await;
    let bootstrap = broker.bootstrap.clone();
    create_topic(&bootstrap, "fetched", 1).await;
    produce(&bootstrap, "fetched", RECORDS, 1024).await;
    let b = bootstrap.clone();
    let arrived = tokio::task::spawn_blocking(move || {
        let codes = alter(
            &b,
            vec![entry(
                &[("user", None), ("client-id", Some("quota-consumer"))],
                &[("consumer_byte_rate", Some(QUOTA))],
            )],
            false,
            1,
        );
        assert_eq!(codes, vec![0]);
        consume(&b, "fetched", "quota-consumer", RECORDS)
    })
    .await
    .unwrap();
    let start = arrived[0].0;
    let took = arrived.last().unwrap().0 - start;
    assert!(
        took >= Duration::from_secs(12),
        "consumed {RECORDS} KiB in {took:?}, faster than the quota allows"
    );
    let rate = rate_between(
        &arrived,
        start,
        Duration::from_secs(2),
        Duration::from_secs(12),
    );
    assert!(
        (QUOTA * 0.9..=QUOTA * 1.1).contains(&rate),
        "consumed {rate:.0} B/s against a quota of {QUOTA} B/s"
    );
    broker.stop().await;
}

/// The base offsets of a partition's local segment files.
fn local_segments(dir: &Path, topic: &str) -> Vec<i64> {
    let folder = dir.join("topics").join(format!("{topic}-0"));
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_lake_is_held_to_the_remote_fetch_limit() {
    const LIMIT: f64 = 512.0 * 1024.0;
    const RECORDS: usize = 3072;
    const VALUE_BYTES: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        ("log.segment.bytes", "262144"),
        ("log.roll.ms", "500"),
        ("log.local.retention.ms", "0"),
        ("log.local.retention.bytes", "0"),
        ("log.retention.check.interval.ms", "100"),
        ("remote.log.manager.fetch.max.bytes.per.second", "524288"),
    ];
    let broker = TestBroker::start_in(dir.path(), &settings).await;
    let bootstrap = broker.bootstrap.clone();
    create_topic(&bootstrap, "replayed", 1).await;
    produce(&bootstrap, "replayed", RECORDS, VALUE_BYTES).await;
    // Every record in the lake, none left on the local disk.
    wait_offloaded_to(&default_lake(dir.path()), "replayed", 0, RECORDS as i64).await;
    let d = dir.path().to_path_buf();
    wait_for("the local segments to be deleted", || {
        local_segments(&d, "replayed")
            .iter()
            .all(|&base| base >= RECORDS as i64)
            .then_some(())
    });
    let b = bootstrap.clone();
    let (arrived, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let arrived = consume(&b, "replayed", "replayer", RECORDS);
        (arrived, started.elapsed())
    })
    .await
    .unwrap();
    let bytes: usize = arrived.iter().map(|(_, b)| b).sum();
    // The bucket holds one second of the limit, and the last read may overdraw it by one
    // fetch (64 KiB): anything faster means the limit was not applied.
    let floor = (bytes as f64 - LIMIT - 65536.0) / LIMIT;
    assert!(
        elapsed.as_secs_f64() >= floor,
        "replayed {bytes} bytes from the lake in {elapsed:?}, under the {floor:.1} s the limit allows"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloading_is_held_to_the_remote_copy_limit() {
    const LIMIT: f64 = 256.0 * 1024.0;
    const RECORDS: usize = 2048;
    const SEGMENT_BYTES: f64 = 262_144.0;
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        ("log.segment.bytes", "262144"),
        ("log.roll.ms", "500"),
        ("remote.log.manager.copy.max.bytes.per.second", "262144"),
    ];
    let broker = TestBroker::start_in(dir.path(), &settings).await;
    let bootstrap = broker.bootstrap.clone();
    create_topic(&bootstrap, "offloaded", 1).await;
    let started = Instant::now();
    produce(&bootstrap, "offloaded", RECORDS, 1024).await;
    wait_offloaded_to(&default_lake(dir.path()), "offloaded", 0, RECORDS as i64).await;
    let elapsed = started.elapsed();
    // The segments hold at least the values; the bucket starts with one second of the limit
    // and the last segment may overdraw it.
    let bytes = (RECORDS * 1024) as f64;
    let floor = (bytes - LIMIT - SEGMENT_BYTES) / LIMIT;
    assert!(
        elapsed.as_secs_f64() >= floor,
        "offloaded {bytes} bytes in {elapsed:?}, under the {floor:.1} s the limit allows"
    );
    broker.stop().await;
}

/// A Produce v9 frame from `client_id` of `bytes` bytes of records to `t`-0 (not a valid batch:
/// the quota charges the request's bytes whatever its answer).
fn produce_frame(client_id: &str, bytes: usize) -> Vec<u8> {
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(kafka_protocol::messages::TopicName(
                    StrBytes::from_static_str("t"),
                ))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(vec![0u8; bytes]))),
                ]),
        ]);
    let mut buf = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
        .encode(&mut buf, ApiKey::Produce.request_header_version(9))
        .unwrap();
    request.encode(&mut buf, 9).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// The `throttle_time_ms` of the Produce v9 answer read from `stream`.
fn produce_throttle(stream: &mut TcpStream) -> i32 {
    use kafka_protocol::messages::ProduceResponse;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    assert_eq!(body.get_i32(), 7, "correlation id");
    body.get_u8(); // no tagged fields
    ProduceResponse::decode(&mut body, 9)
        .unwrap()
        .throttle_time_ms
}

/// A connection muted for its quota (KIP-219) reads no further request until the mute ends, so
/// its next request holds none of the broker-wide `queued.max.request.bytes`: another client's
/// request is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_connection_holds_no_request_budget() {
    const REQUEST_BYTES: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = QUOTA_WINDOWS.to_vec();
    settings.push(("queued.max.request.bytes", "65536"));
    let broker = TestBroker::start_in(dir.path(), &settings).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let codes = alter(
            &bootstrap,
            vec![entry(
                &[("client-id", Some("hog"))],
                &[("producer_byte_rate", Some(1000.0))],
            )],
            false,
            1,
        );
        assert_eq!(codes, vec![0]);
        let mut hog = TcpStream::connect(&bootstrap).unwrap();
        hog.write_all(&produce_frame("hog", REQUEST_BYTES)).unwrap();
        let throttle = produce_throttle(&mut hog);
        assert!(throttle > 20_000, "a throttle of {throttle} ms");
        // The muted connection's next request, sent at once: it waits in the socket.
        hog.write_all(&produce_frame("hog", REQUEST_BYTES)).unwrap();
        // Another client's requests of the same size fit only if the hog's holds no budget
        // (several in turn: the hog's reader, were it reading, would take the budget between
        // two of them and keep it for the whole mute).
        let mut other = TcpStream::connect(&bootstrap).unwrap();
        other
            .set_read_timeout(Some(DEADLINE.min(Duration::from_secs(15))))
            .unwrap();
        for _ in 0..3 {
            let started = Instant::now();
            other
                .write_all(&produce_frame("other", REQUEST_BYTES))
                .unwrap();
            assert_eq!(produce_throttle(&mut other), 0);
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "answered after {:?}",
                started.elapsed()
            );
        }
    })
    .await
    .unwrap();
    broker.stop().await;
}
