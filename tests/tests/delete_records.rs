//! DeleteRecords end to end with librdkafka's AdminClient, across both tiers: the answer's low
//! watermark, ListOffsets, consumers from the beginning and from below the new start, the lake
//! files below it gone from object storage, a restart and a lost data folder; in a cluster, the
//! followers' log starts. DescribeLogDirs over a raw socket (librdkafka does not expose it).

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_lake::Lake;
use strata_tests::{
    DEADLINE, S3Server, TestBroker, Tier, call, cluster_bootstrap, cluster_members, producer,
    quorum_voters, read, start_member, wait_for, wait_for_brokers,
};

/// Small segments, sealed by size only (the tail stays local: no fresh piece within the test),
/// deleted locally once offloaded; lake files DeleteRecords removes are deleted at once.
const TIERED: &[(&str, &str)] = &[
    ("log.segment.bytes", "16384"),
    ("log.local.retention.ms", "0"),
    ("log.retention.check.interval.ms", "100"),
    ("lake.target.lag.ms", "3600000"),
    ("lake.fresh.delete.delay.ms", "0"),
];

/// Produces records `from..from + count` (values `record-<n>` padded to about 200 bytes) to
/// partition 0 of `topic`, checking each lands at offset `n`.
async fn produce(bootstrap: &str, topic: &str, from: i64, count: i64) {
    let producer = producer(bootstrap, &[("linger.ms", "0")]);
    for n in from..from + count {
        let value = value_of(n);
        let delivery = producer
            .send(
                FutureRecord::<(), String>::to(topic)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(delivery.offset, n);
    }
}

fn value_of(n: i64) -> String {
    format!("record-{n}-{}", "x".repeat(180))
}

fn lake_of(tier: &Tier) -> Lake {
    Lake::new(strata_lake::store::open(&tier.0, &tier.1).unwrap())
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

/// DeleteRecords of partition 0 of `topic` before `offset`: the low watermark, or the error.
async fn delete_records(bootstrap: &str, topic: &str, offset: Offset) -> Result<i64, KafkaError> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition_offset(topic, 0, offset).unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let answer = admin(bootstrap)
        .delete_records(&wanted, &options)
        .await
        .unwrap();
    let partition = answer.find_partition(topic, 0).expect("answered");
    partition.error()?;
    match partition.offset() {
        Offset::Offset(low_watermark) => Ok(low_watermark),
        other => panic!("low watermark {other:?}"),
    }
}

/// `(earliest, latest)` of partition 0 (ListOffsets).
fn watermarks(bootstrap: &str, topic: &str) -> (i64, i64) {
    strata_tests::consumer(bootstrap)
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .unwrap()
}

/// The offset ListOffsets answers for timestamp `timestamp_ms`.
fn offset_for_time(bootstrap: &str, topic: &str, timestamp_ms: i64) -> Offset {
    let mut wanted = TopicPartitionList::new();
    wanted
        .add_partition_offset(topic, 0, Offset::Offset(timestamp_ms))
        .unwrap();
    let found = strata_tests::consumer(bootstrap)
        .offsets_for_times(wanted, Duration::from_secs(30))
        .unwrap();
    found.find_partition(topic, 0).unwrap().offset()
}

/// Reads partition 0 from `from` to `end` and checks it holds exactly records `from..end`.
fn check_read_from(bootstrap: &str, topic: &str, from: i64, end: i64) {
    let got = read(
        bootstrap,
        topic,
        &[0],
        Offset::Beginning,
        (end - from) as usize,
    );
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (from..end).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.value.as_deref(), Some(value_of(r.offset).as_bytes()));
    }
}

/// The first record a consumer with `auto.offset.reset=earliest` gets when it starts at `at`.
fn first_read_at(bootstrap: &str, topic: &str, at: i64) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-tests-reset")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(at))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    wait_for("a record after the offset reset", || {
        match consumer.poll(Duration::from_millis(200))? {
            Ok(m) => Some(m.offset()),
            Err(e) => panic!("consume error: {e}"),
        }
    })
}

fn local_segments(data: &Path, topic: &str) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(data.join("topics").join(format!("{topic}-0")))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    bases.sort_unstable();
    bases
}

/// The paths of the partition's objects in the lake.
async fn objects(lake: &Lake, topic: &str) -> BTreeSet<String> {
    lake.objects(topic, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start_across_the_lake_and_the_local_log() {
    const TOPIC: &str = "trimmed";
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let lake = lake_of(&tier);
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    produce(&broker.bootstrap, TOPIC, 0, 300).await;
    // The sealed segments go to the lake and leave the disk; the active one stays.
    let (manifest, local_start) = wait_for("the sealed segments in the lake only", || {
        let segments = local_segments(&data, TOPIC);
        let manifest = futures_block(lake.manifest(TOPIC, 0)).ok()?;
        (segments.len() == 1 && manifest.next_offset() == Some(segments[0]))
            .then_some((manifest, segments[0]))
    });
    assert!(manifest.files.len() >= 3, "{:?}", manifest.files);
    assert!(local_start < 300, "a local tail");
    let (below, holding) = (&manifest.files[0], &manifest.files[1]);
    let start = holding.base_offset + (holding.last_offset - holding.base_offset) / 2;
    assert!(holding.base_offset < start && start < holding.last_offset);
    let bootstrap = broker.bootstrap.clone();

    // Beyond the high watermark: refused, nothing moves.
    let refused = delete_records(&bootstrap, TOPIC, Offset::Offset(301)).await;
    assert_eq!(
        refused,
        Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OffsetOutOfRange))
    );
    assert_eq!(watermarks(&bootstrap, TOPIC), (0, 300));

    // Inside the second lake file.
    assert_eq!(
        delete_records(&bootstrap, TOPIC, Offset::Offset(start)).await,
        Ok(start)
    );
    assert_eq!(watermarks(&bootstrap, TOPIC), (start, 300));
    let committed = lake.manifest(TOPIC, 0).await.unwrap();
    assert_eq!(committed.log_start_offset, start, "answered once committed");
    assert_eq!(
        committed.files[0], *holding,
        "the file holding the start stays"
    );
    let stored = objects(&lake, TOPIC).await;
    assert!(!stored.contains(&below.path), "the file below is deleted");
    assert!(stored.contains(&holding.path));
    assert!(lake.verify(TOPIC, 0).await.unwrap().is_clean());
    // From the beginning: the lake from the new start, then the local tail.
    check_read_from(&bootstrap, TOPIC, start, 300);
    // Below the start: OFFSET_OUT_OF_RANGE, and the consumer resets to the start.
    assert_eq!(first_read_at(&bootstrap, TOPIC, start - 5), start);
    assert_eq!(first_read_at(&bootstrap, TOPIC, 0), start);
    // A timestamp search skips the deleted records.
    assert_eq!(offset_for_time(&bootstrap, TOPIC, 0), Offset::Offset(start));
    // An older offset moves nothing back.
    assert_eq!(
        delete_records(&bootstrap, TOPIC, Offset::Offset(3)).await,
        Ok(start)
    );

    // A restart keeps it.
    broker.restart().await;
    assert_eq!(watermarks(&broker.bootstrap, TOPIC), (start, 300));
    check_read_from(&broker.bootstrap, TOPIC, start, 300);
    broker.stop().await;

    // So does the lake when the data folder is lost: the local tail is gone with it.
    std::fs::remove_dir_all(&data).unwrap();
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let bootstrap = broker.bootstrap.clone();
    assert_eq!(watermarks(&bootstrap, TOPIC), (start, local_start));
    check_read_from(&bootstrap, TOPIC, start, local_start);

    // Up to the high watermark (-1): every lake file goes, new records continue after it.
    assert_eq!(
        delete_records(&bootstrap, TOPIC, Offset::End).await,
        Ok(local_start)
    );
    assert_eq!(watermarks(&bootstrap, TOPIC), (local_start, local_start));
    assert!(objects(&lake, TOPIC).await.is_empty());
    let emptied = lake.manifest(TOPIC, 0).await.unwrap();
    assert_eq!(
        (emptied.files.len(), emptied.log_start_offset),
        (0, local_start)
    );
    produce(&bootstrap, TOPIC, local_start, 3).await;
    check_read_from(&bootstrap, TOPIC, local_start, local_start + 3);
    broker.stop().await;
    s3.stop().await;
}

/// Runs a future to completion from a synchronous poll (the lake client is async).
fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_dirs_names_the_data_folder_and_each_replicas_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = TestBroker::start_in(&data, &[("num.partitions", "2")]).await;
    produce(&broker.bootstrap, "sized", 0, 20).await;
    let on_disk: u64 = std::fs::read_dir(data.join("topics").join("sized-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk > 20 * 180);
    let data = std::path::absolute(&data).unwrap();
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&bootstrap).unwrap();
        for version in 1..=4 {
            let every_topic = DescribeLogDirsRequest::default().with_topics(None);
            let all = call(&mut stream, &every_topic, version);
            check_all(&all, version, &data, on_disk);
        }
        // An empty list asks for no topic (null asks for all).
        let none = call(&mut stream, &DescribeLogDirsRequest::default(), 4);
        assert!(none.results[0].topics.is_empty(), "{none:?}");
        // Only what is asked for: partition 1 of "sized", nothing of an unknown topic.
        let wanted = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("sized")))
                .with_partitions(vec![1, 7]),
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("missing")))
                .with_partitions(vec![0]),
        ]));
        let some: DescribeLogDirsResponse = call(&mut stream, &wanted, 4);
        let topics = &some.results[0].topics;
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].name.as_str(), "sized");
        let partitions: Vec<(i32, i64)> = topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.partition_size))
            .collect();
        assert_eq!(partitions, vec![(1, 0)]);
    })
    .await
    .unwrap();
    broker.stop().await;
}

fn check_all(answer: &DescribeLogDirsResponse, version: i16, data: &Path, on_disk: u64) {
    assert_eq!(answer.error_code, 0);
    let [result] = &answer.results[..] else {
        panic!("one log dir: {answer:?}")
    };
    assert_eq!(result.error_code, 0);
    assert_eq!(result.log_dir.as_str(), data.display().to_string());
    let topic = result
        .topics
        .iter()
        .find(|t| t.name.as_str() == "sized")
        .expect("the topic is listed");
    let mut partitions: Vec<(i32, i64, i64, bool)> = topic
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                p.partition_size,
                p.offset_lag,
                p.is_future_key,
            )
        })
        .collect();
    partitions.sort();
    assert_eq!(
        partitions,
        vec![(0, on_disk as i64, 0, false), (1, 0, 0, false)],
        "v{version}"
    );
    if version >= 4 {
        assert!(result.total_bytes > 0, "v{version}");
        assert!((0..=result.total_bytes).contains(&result.usable_bytes));
    }
}

/// In a cluster the followers follow the leader's log start: DeleteRecords is answered once
/// every in-sync replica moved it, and a new leader serves from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_follow_the_leaders_log_start() {
    const TOPIC: &str = "trimmed-replicated";
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let tier_url = format!("file://{}", root.path().join("lake").display());
    std::fs::create_dir_all(root.path().join("lake")).unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start_member(
            &binary,
            member,
            &voters,
            &[
                "--tier-url",
                &tier_url,
                "--set",
                "broker.session.timeout.ms=2000",
            ],
        ));
    }
    let bootstrap = cluster_bootstrap(&members);
    wait_for_brokers(&bootstrap, 3);
    let created = admin(&bootstrap)
        .create_topics(
            &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))
                .set("remote.storage.enable", "false")
                .set("segment.bytes", "4096")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for("three in-sync replicas", || {
        let states = strata_tests::partition_states(&bootstrap, TOPIC, 1)?;
        (states[0].0 > 0 && states[0].1.len() == 3).then_some(())
    });
    let writer = producer(&bootstrap, &[("acks", "all"), ("linger.ms", "0")]);
    for n in 0..200 {
        let value = value_of(n);
        writer
            .send(
                FutureRecord::<(), String>::to(TOPIC)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let start = 150;
    assert_eq!(
        delete_records(&bootstrap, TOPIC, Offset::Offset(start)).await,
        Ok(start)
    );
    // Answered once every in-sync replica moved: each one's log start is on its disk already,
    // and no segment entirely below it is left.
    for member in &members {
        let folder = member.dir.join("topics").join(format!("{TOPIC}-0"));
        let stored = std::fs::read_to_string(folder.join("log-start-offset")).unwrap();
        assert_eq!(stored.trim(), start.to_string(), "broker {}", member.id);
        let segments = local_segments(&member.dir, TOPIC);
        assert!(
            segments.len() >= 2 && segments[0] <= start && segments[1] > start,
            "broker {}: {segments:?}",
            member.id
        );
    }
    // The leader dies: the new one serves from the same start.
    let leader = strata_tests::partition_states(&bootstrap, TOPIC, 1).unwrap()[0].0;
    let member = members.iter_mut().find(|m| m.id == leader).unwrap();
    member.process.take().unwrap().kill();
    wait_for("a new leader", || {
        let states = strata_tests::partition_states(&bootstrap, TOPIC, 1)?;
        (states[0].0 > 0 && states[0].0 != leader).then_some(())
    });
    // Clients of the brokers left (one that dials the dead one gets transport errors).
    let alive = members
        .iter()
        .filter(|m| m.process.is_some())
        .map(|m| m.listen.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let consumer = strata_tests::consumer(&alive);
    let found = wait_for("the new leader's watermarks", || {
        consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
            .ok()
    });
    assert_eq!(found, (start, 200));
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut offsets = Vec::new();
    let started = std::time::Instant::now();
    while offsets.len() < (200 - start) as usize {
        assert!(started.elapsed() < DEADLINE, "read {offsets:?}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                assert_eq!(m.payload(), Some(value_of(m.offset()).as_bytes()));
                offsets.push(m.offset());
            }
            // The client may still report the broker that died.
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    assert_eq!(offsets, (start..200).collect::<Vec<_>>());
    let started = std::time::Instant::now();
    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
    assert!(started.elapsed() < DEADLINE);
}
