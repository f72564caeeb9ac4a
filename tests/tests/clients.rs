//! Real clients (librdkafka through the `rdkafka` crate) against an in-process broker.

use std::time::Duration;

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use strata_tests::{TestBroker, consumer, producer, read};

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(bootstrap)
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Keys, headers, null keys and values survive the round trip in every codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_keys_values_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let producer = producer(&broker.bootstrap, &[("compression.type", codec)]);
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let key = (i % 7 != 0).then(|| format!("key-{i}").into_bytes());
            let value =
                (i % 11 != 0).then(|| format!("value-{i}-{}", "x".repeat(i as usize)).into_bytes());
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "h1",
                    value: Some(&i.to_be_bytes()[..]),
                })
                .insert(Header {
                    key: "h1",
                    value: Some(b"dup".as_slice()),
                })
                .insert(Header {
                    key: "empty",
                    value: None::<&[u8]>,
                });
            let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(v) = &value {
                record = record.payload(v);
            }
            let delivery = producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!((delivery.partition, delivery.offset), (0, i64::from(i)));
            sent.push((key, value));
        }
        let got = read(&broker.bootstrap, &topic, &[0], Offset::Beginning, 200);
        for (i, (record, (key, value))) in got.iter().zip(&sent).enumerate() {
            assert_eq!(record.offset, i as i64, "{codec}");
            assert_eq!(&record.key, key, "{codec} key {i}");
            assert_eq!(&record.value, value, "{codec} value {i}");
            let expected_headers = vec![
                ("h1".to_string(), Some((i as u32).to_be_bytes().to_vec())),
                ("h1".to_string(), Some(b"dup".to_vec())),
                ("empty".to_string(), None),
            ];
            assert_eq!(record.headers, expected_headers, "{codec} headers {i}");
        }
    }
    broker.stop().await;
}

/// Records spread over partitions by key are all read back, each partition in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "multi", 6, &[]).await;
    let producer = producer(&broker.bootstrap, &[("compression.type", "lz4")]);
    for i in 0..600 {
        let key = format!("k{}", i % 50);
        let value = format!("{i}");
        producer
            .send(
                FutureRecord::to("multi").key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let got = read(
        &broker.bootstrap,
        "multi",
        &[0, 1, 2, 3, 4, 5],
        Offset::Beginning,
        600,
    );
    let mut partitions_used = std::collections::BTreeSet::new();
    for p in 0..6 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p} in order"
        );
        if !offsets.is_empty() {
            partitions_used.insert(p);
        }
    }
    assert!(partitions_used.len() > 1, "keys spread over partitions");
    let mut values: Vec<i32> = got
        .iter()
        .map(|r| {
            String::from_utf8(r.value.clone().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..600).collect::<Vec<_>>());
    broker.stop().await;
}

/// ListOffsets by timestamp finds the first record at or after it; earliest and latest work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    let producer = producer(&broker.bootstrap, &[]);
    for i in 0..100i64 {
        let value = format!("{i}");
        let record: FutureRecord<'_, (), String> = FutureRecord::to("times")
            .payload(&value)
            .timestamp(1_000_000 + i * 10);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let consumer = consumer(&broker.bootstrap);
    let offset_at = |timestamp: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(timestamp))
            .unwrap();
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .unwrap();
        found.find_partition("times", 0).unwrap().offset()
    };
    assert_eq!(offset_at(0), Offset::Offset(0));
    assert_eq!(offset_at(1_000_000 + 425), Offset::Offset(43));
    assert_eq!(offset_at(1_000_000 + 430), Offset::Offset(43));
    assert_eq!(offset_at(1_000_000 + 990), Offset::Offset(99));
    assert_eq!(offset_at(1_000_000 + 991), Offset::End);
    let (low, high) = consumer
        .fetch_watermarks("times", 0, Duration::from_secs(30))
        .unwrap();
    assert_eq!((low, high), (0, 100));
    let got = read(&broker.bootstrap, "times", &[0], Offset::Offset(43), 1);
    assert_eq!(got[0].timestamp_ms, Some(1_000_430));
    broker.stop().await;
}

/// Topics, configs and records are kept across a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(
        &broker.bootstrap,
        "kept",
        3,
        &[("retention.ms", "86400000")],
    )
    .await;
    let before = producer(&broker.bootstrap, &[]);
    for i in 0..90 {
        let value = format!("v{i}");
        before
            .send(
                FutureRecord::to("kept")
                    .key(&value)
                    .payload(&value)
                    .partition(i % 3),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    drop(before);
    broker.restart().await;
    let got = read(&broker.bootstrap, "kept", &[0, 1, 2], Offset::Beginning, 90);
    assert_eq!(got.len(), 90);
    let after = producer(&broker.bootstrap, &[]);
    let delivery = after
        .send(
            FutureRecord::to("kept")
                .key("k")
                .payload("after")
                .partition(0),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        delivery.offset, 30,
        "new records continue after the old ones"
    );
    let admin = admin(&broker.bootstrap);
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic("kept")], &AdminOptions::new())
        .await
        .unwrap();
    let resource = configs[0].as_ref().unwrap();
    let retention = resource.get("retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("86400000"));
    assert!(!retention.is_default);
    broker.stop().await;
}

/// The idempotent producer: no duplicates, contiguous offsets, even with retries in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    let producer = producer(
        &broker.bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "1"),
            ("batch.num.messages", "10"),
        ],
    );
    let futures: Vec<_> = (0..1000)
        .map(|i| {
            let value = format!("{i}");
            producer
                .send_result(FutureRecord::<(), String>::to("idem").payload(&value))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        let delivery = f.await.unwrap().unwrap();
        assert_eq!(delivery.offset, i as i64, "order and offsets are kept");
    }
    let got = read(&broker.bootstrap, "idem", &[0], Offset::Beginning, 1000);
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(values, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
    broker.stop().await;
}

/// Admin APIs through librdkafka: create, configs, partitions, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[("auto.create.topics.enable", "false")]).await;
    let admin = admin(&broker.bootstrap);
    create_topic(&broker.bootstrap, "adm", 2, &[("segment.bytes", "1048576")]).await;
    let again = admin
        .create_topics(
            [&NewTopic::new("adm", 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
    );
    let bad =
        admin
            .create_topics(
                [&NewTopic::new("bad", 1, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "compact")],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    assert_eq!(
        bad[0].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::InvalidConfig
    );

    let alter = AlterConfig::new(ResourceSpecifier::Topic("adm")).set("retention.bytes", "5000000");
    let altered = admin
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic("adm")], &AdminOptions::new())
        .await
        .unwrap();
    let resource = configs[0].as_ref().unwrap();
    assert_eq!(
        resource.get("retention.bytes").unwrap().value.as_deref(),
        Some("5000000")
    );
    // Legacy AlterConfigs replaces the whole set: the segment.bytes override is gone.
    assert_eq!(
        resource.get("segment.bytes").unwrap().value.as_deref(),
        Some("1073741824")
    );

    let grown = admin
        .create_partitions([&NewPartitions::new("adm", 4)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let metadata = consumer(&broker.bootstrap)
        .fetch_metadata(Some("adm"), Duration::from_secs(30))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 4);

    let deleted = admin
        .delete_topics(&["adm"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let metadata = consumer(&broker.bootstrap)
        .fetch_metadata(Some("adm"), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        metadata.topics()[0].error(),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    );
    broker.stop().await;
}
