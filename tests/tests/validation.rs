//! What a produced batch must satisfy, seen from real clients (librdkafka): the topic's
//! `compression.type` recompresses what is stored, CreateTime timestamps outside
//! `message.timestamp.{before,after}.max.ms` are refused, and Kafka's deprecated or no-op topic
//! configs are accepted while unknown names stay refused.

use std::path::Path;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use strata_tests::{TestBroker, producer, read};

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

async fn create_topic(
    bootstrap: &str,
    name: &str,
    configs: &[(&str, &str)],
) -> Result<(), RDKafkaErrorCode> {
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(bootstrap)
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    results[0].clone().map(|_| ()).map_err(|(_, code)| code)
}

/// The codec ids of every batch stored in the partition's segments.
fn stored_codecs(data: &Path, topic: &str) -> Vec<i16> {
    let dir = data.join("topics").join(format!("{topic}-0"));
    let mut codecs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let header = strata_log::batch::validate_batch(rest).unwrap();
            codecs.push(header.compression());
            rest = &rest[header.total_bytes()..];
        }
    }
    codecs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_type_recompresses_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    // (topic config, producer codec, stored codec id, the recompression level: KIP-390)
    let cases = [
        ("zstd", "lz4", 4, None),
        ("uncompressed", "gzip", 0, None),
        ("gzip", "none", 1, None),
        ("producer", "snappy", 2, None),
        ("gzip", "snappy", 1, Some(("compression.gzip.level", "9"))),
        ("lz4", "zstd", 3, Some(("compression.lz4.level", "12"))),
        ("zstd", "none", 4, Some(("compression.zstd.level", "22"))),
    ];
    for (case, (topic_codec, producer_codec, stored, level)) in cases.into_iter().enumerate() {
        let topic = format!("stored-{topic_codec}-{case}");
        let mut configs = vec![("compression.type", topic_codec)];
        configs.extend(level);
        create_topic(&broker.bootstrap, &topic, &configs)
            .await
            .unwrap();
        let producer = producer(&broker.bootstrap, &[("compression.type", producer_codec)]);
        for i in 0..50 {
            let value = format!("value {i} {}", "z".repeat(i));
            producer
                .send(
                    FutureRecord::to(&topic).key("k").payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
        let got = read(&broker.bootstrap, &topic, &[0], Offset::Beginning, 50);
        for (i, record) in got.iter().enumerate() {
            let want = format!("value {i} {}", "z".repeat(i));
            assert_eq!(record.value.as_deref(), Some(want.as_bytes()), "{topic}");
            assert_eq!(record.offset, i as i64);
        }
        let codecs = stored_codecs(dir.path(), &topic);
        if topic_codec == "producer" {
            // librdkafka sends a batch uncompressed when compressing would not shrink it: both
            // are kept as sent.
            assert!(codecs.contains(&stored), "{topic}: {codecs:?}");
            assert!(
                codecs.iter().all(|&c| c == stored || c == 0),
                "{topic}: {codecs:?}"
            );
        } else {
            assert!(!codecs.is_empty());
            assert!(
                codecs.iter().all(|&c| c == stored),
                "{topic}: stored codecs {codecs:?}, expected {stored}"
            );
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_out_of_bounds_are_refused_with_invalid_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(
        &broker.bootstrap,
        "times",
        &[("message.timestamp.before.max.ms", "86400000")],
    )
    .await
    .unwrap();
    let producer = producer(&broker.bootstrap, &[("message.timeout.ms", "10000")]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let send = |timestamp: i64| {
        producer.send(
            FutureRecord::to("times")
                .key("k")
                .payload("v")
                .timestamp(timestamp),
            Duration::from_secs(30),
        )
    };
    // Two hours ahead: past the default message.timestamp.after.max.ms of one hour.
    let future = send(now + 2 * 3_600_000).await.unwrap_err().0;
    assert_eq!(
        future,
        KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTimestamp)
    );
    // Two days back: past the topic's one day.
    let past = send(now - 2 * 86_400_000).await.unwrap_err().0;
    assert_eq!(
        past,
        KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTimestamp)
    );
    // Within both bounds: stored, and nothing of the refused ones.
    let ok = send(now - 1_000).await.unwrap();
    assert_eq!(ok.offset, 0);
    let got = read(&broker.bootstrap, "times", &[0], Offset::Beginning, 1);
    assert_eq!(got[0].timestamp_ms, Some(now - 1_000));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_topic_configs_are_accepted_and_unknown_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(
        &broker.bootstrap,
        "legacy",
        &[
            ("message.format.version", "3.0-IV1"),
            ("message.downconversion.enable", "false"),
            ("segment.index.bytes", "10485760"),
            ("compression.type", "lz4"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        create_topic(&broker.bootstrap, "typo", &[("retention.msec", "1")]).await,
        Err(RDKafkaErrorCode::InvalidConfig)
    );
    assert_eq!(
        create_topic(
            &broker.bootstrap,
            "bad-codec",
            &[("compression.type", "brotli")]
        )
        .await,
        Err(RDKafkaErrorCode::InvalidConfig)
    );
    for level in [
        ("compression.gzip.level", "0"),
        ("compression.gzip.level", "10"),
        ("compression.lz4.level", "18"),
        ("compression.zstd.level", "23"),
    ] {
        assert_eq!(
            create_topic(&broker.bootstrap, "bad-level", &[level]).await,
            Err(RDKafkaErrorCode::InvalidConfig),
            "{level:?}"
        );
    }
    broker.stop().await;
}
