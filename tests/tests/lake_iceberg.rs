//! The fresh lake through an Iceberg reader (the `iceberg` crate, not the broker's code): records
//! become visible in the topic's table within `lake.target.lag.ms` as fresh pieces, sealed files
//! replace the pieces, and every offset is in the table exactly once at every snapshot, also
//! across a broker killed with SIGKILL over and over while it commits. A glob over
//! `**/*.parquet` never sees an offset twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use strata_tests::iceberg::{IcebergRow, duplicates, metadata_file, scan};
use strata_tests::{ChildBroker, DEADLINE, TestBroker, free_port, producer, read, test_seed};

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Produces `count` records to each partition (values `p<partition>-<n>` padded to ~200 bytes);
/// returns what was acknowledged, as `(partition, offset) -> value`.
async fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    from: usize,
    count: usize,
) -> BTreeMap<(i32, i64), Vec<u8>> {
    let producer = producer(bootstrap, &[("acks", "all"), ("linger.ms", "5")]);
    let mut acked = BTreeMap::new();
    let mut pending = Vec::new();
    for n in from..from + count {
        for partition in 0..partitions {
            let value = format!("p{partition}-{n}-{}", "x".repeat(190)).into_bytes();
            let delivery = producer
                .send_result(
                    FutureRecord::<(), [u8]>::to(topic)
                        .partition(partition)
                        .payload(&value),
                )
                .unwrap();
            pending.push((delivery, value));
        }
    }
    for (delivery, value) in pending {
        let delivery = delivery.await.unwrap().unwrap();
        acked.insert((delivery.partition, delivery.offset), value);
    }
    acked
}

/// The `(partition, offset)` of every row of the `.parquet` files a glob over the topic's folder
/// sees (fresh pieces end in `.parquet.fresh` and are not globbed), with repeats.
fn globbed_offsets(lake_dir: &Path, topic: &str) -> Vec<(i32, i64)> {
    let mut found = Vec::new();
    let Ok(partitions) = std::fs::read_dir(lake_dir.join(format!("topic={topic}"))) else {
        return found;
    };
    for partition_dir in partitions.filter_map(Result::ok) {
        let name = partition_dir.file_name().to_string_lossy().into_owned();
        let partition: i32 = name.strip_prefix("partition=").unwrap().parse().unwrap();
        for file in std::fs::read_dir(partition_dir.path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            // A file may vanish between listing and reading (deleted after its delay).
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let records = strata_lake::parquet_file::read(bytes.into())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.extend(records.iter().map(|r| (partition, r.offset)));
        }
    }
    found
}

fn assert_glob_exactly_once(lake_dir: &Path, topic: &str) -> usize {
    let offsets = globbed_offsets(lake_dir, topic);
    let mut seen = BTreeSet::new();
    for key in &offsets {
        assert!(
            seen.insert(*key),
            "a glob over **/*.parquet sees {key:?} twice"
        );
    }
    offsets.len()
}

/// Polls the table until `done` holds for its rows, checking at every snapshot read that no
/// offset appears twice (in the table and in a glob). Returns the rows.
async fn wait_for_table(
    lake_dir: &Path,
    topic: &str,
    what: &str,
    done: impl Fn(&[IcebergRow]) -> bool,
) -> Vec<IcebergRow> {
    let start = Instant::now();
    loop {
        if let Some(rows) = scan(lake_dir, topic).await {
            let twice = duplicates(&rows);
            assert!(twice.is_empty(), "offsets twice in one snapshot: {twice:?}");
            assert_glob_exactly_once(lake_dir, topic);
            if done(&rows) {
                return rows;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for the table of {topic} to hold {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn as_map(rows: &[IcebergRow]) -> BTreeMap<(i32, i64), Vec<u8>> {
    rows.iter()
        .map(|r| ((r.partition, r.offset), r.value.clone().unwrap_or_default()))
        .collect()
}

fn fresh_pieces(lake_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut pieces = Vec::new();
    let Ok(partitions) = std::fs::read_dir(lake_dir.join(format!("topic={topic}"))) else {
        return pieces;
    };
    for partition_dir in partitions.filter_map(Result::ok) {
        for file in std::fs::read_dir(partition_dir.path()).unwrap() {
            let path = file.unwrap().path();
            if path.to_string_lossy().ends_with(".parquet.fresh") {
                pieces.push(path);
            }
        }
    }
    pieces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_iceberg_table_within_the_lag_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake_dir = dir.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    let tier = (
        strata_lake::store::file_url(&lake_dir).unwrap(),
        BTreeMap::new(),
    );
    let settings = [
        ("lake.fresh.delete.delay.ms", "500"),
        ("log.retention.check.interval.ms", "500"),
    ];
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier.clone())).await;
    // Default segment settings: nothing seals, only fresh pieces reach the lake.
    create_topic(
        &broker.bootstrap,
        "fresh",
        2,
        &[("lake.target.lag.ms", "2000")],
    )
    .await;
    let produced_at = Instant::now();
    let mut acked = produce(&broker.bootstrap, "fresh", 2, 0, 20).await;
    let rows = wait_for_table(&lake_dir, "fresh", "the first 40 records", |rows| {
        rows.len() == acked.len()
    })
    .await;
    eprintln!(
        "40 records visible through Iceberg {:?} after they were produced (lake.target.lag.ms 2000)",
        produced_at.elapsed()
    );
    assert_eq!(as_map(&rows), acked);
    assert_eq!(
        assert_glob_exactly_once(&lake_dir, "fresh"),
        0,
        "no segment sealed: a glob sees no file yet"
    );
    let first_pieces = fresh_pieces(&lake_dir, "fresh");
    assert!(!first_pieces.is_empty(), "the records are in fresh pieces");

    // Small segments from now on: the segments holding the pieces seal, and their sealed files
    // replace the pieces in one commit each.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("fresh"))
        .set("lake.target.lag.ms", "2000")
        .set("segment.bytes", "8192");
    let altered = admin
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    acked.extend(produce(&broker.bootstrap, "fresh", 2, 20, 100).await);
    let rows = wait_for_table(&lake_dir, "fresh", "all 240 records", |rows| {
        rows.len() == acked.len()
    })
    .await;
    assert_eq!(as_map(&rows), acked);
    // The first pieces were replaced by sealed files, then deleted after the delay.
    let start = Instant::now();
    while first_pieces.iter().any(|p| p.exists()) {
        assert!(
            start.elapsed() < DEADLINE,
            "replaced pieces still there: {first_pieces:?}"
        );
        wait_for_table(&lake_dir, "fresh", "240 records", |rows| rows.len() == 240).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        assert_glob_exactly_once(&lake_dir, "fresh") > 0,
        "sealed files are globbed"
    );
    broker.stop().await;

    // The data folder is lost; the lake is not. The topic comes back from the lake and every
    // record is fetched again, the tail from fresh pieces whose segments no longer exist.
    std::fs::remove_dir_all(&data).unwrap();
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier)).await;
    let mut got = BTreeMap::new();
    for record in read(&broker.bootstrap, "fresh", &[0, 1], Offset::Beginning, 240) {
        let previous = got.insert((record.partition, record.offset), record.value.unwrap());
        assert!(
            previous.is_none(),
            "fetched twice: {:?}",
            (record.partition, record.offset)
        );
    }
    assert_eq!(got, acked);
    // Pieces that local data can never replace are promoted to sealed files: a glob then sees
    // every record, once.
    let start = Instant::now();
    while globbed_offsets(&lake_dir, "fresh").len() < 240 {
        assert!(
            start.elapsed() < DEADLINE,
            "the pieces of a lost data folder were not promoted to sealed files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(assert_glob_exactly_once(&lake_dir, "fresh"), 240);
    let rows = wait_for_table(&lake_dir, "fresh", "240 records", |rows| rows.len() == 240).await;
    assert_eq!(as_map(&rows), acked);

    // Remote retention removes whole files: the table follows, still exactly once.
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("fresh"))
        .set("lake.target.lag.ms", "2000")
        .set("segment.bytes", "8192")
        .set("retention.ms", "1");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let altered = admin
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    wait_for_table(&lake_dir, "fresh", "fewer rows after retention", |rows| {
        rows.len() < 240
    })
    .await;
    broker.stop().await;
}

/// A producer that sends to both partitions of `topic` until `stop`, through broker restarts
/// (an idempotent producer at one address): what was acknowledged.
fn spawn_producer(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<(i32, i64), Vec<u8>>> {
    tokio::spawn(async move {
        let producer = producer(
            &bootstrap,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "120000"),
            ],
        );
        let mut acked = BTreeMap::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut pending = Vec::new();
            for _ in 0..20 {
                let partition = (n % 2) as i32;
                let value = format!("k{n}-{}", "y".repeat(150)).into_bytes();
                n += 1;
                let delivery = producer
                    .send_result(
                        FutureRecord::<(), [u8]>::to(topic)
                            .partition(partition)
                            .payload(&value),
                    )
                    .unwrap();
                pending.push((delivery, value));
            }
            for (delivery, value) in pending {
                if let Ok(Ok(d)) = delivery.await {
                    acked.insert((d.partition, d.offset), value);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

/// The broker is killed with SIGKILL, at seeded moments right after its table commits (so often
/// in the middle of the next upload or commit), while a producer sends; after the last restart
/// the table holds exactly the partition's records, each once, and the glob never saw a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_during_commits_leaves_every_offset_once() {
    let seed = test_seed("iceberg kill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake_dir = dir.path().join("lake");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&lake_dir).unwrap();
    let tier_url = strata_lake::store::file_url(&lake_dir).unwrap();
    let settings = [
        "--tier-url",
        &tier_url,
        "--set",
        "lake.target.lag.ms=200",
        "--set",
        "lake.fresh.delete.delay.ms=300",
        "--set",
        "log.segment.bytes=16384",
        "--set",
        "num.partitions=2",
    ];
    let listen = free_port();
    let mut broker = ChildBroker::start(&binary, &data, listen, &settings);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_producer(broker.bootstrap.clone(), "killed", Arc::clone(&stop));
    let version = |lake_dir: &Path| {
        metadata_file(lake_dir, "killed")
            .and_then(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                name.strip_prefix('v')?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    for round in 0..4 {
        // A seeded number of commits, then the kill: often during the next upload or commit.
        let before = version(&lake_dir);
        let commits = rng.random_range(1..=3);
        let start = Instant::now();
        while version(&lake_dir) < before + commits {
            assert!(
                start.elapsed() < DEADLINE,
                "round {round}: the table did not move on by {commits} commits from v{before}; \
                 the broker's log:\n{}",
                std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..50))).await;
        }
        eprintln!("round {round}: killing after {commits} commits (seed {seed})");
        broker.kill();
        broker = ChildBroker::start(&binary, &data, listen, &settings);
    }
    // A last stretch of records after the last restart, then the producer stops.
    let before = version(&lake_dir);
    let start = Instant::now();
    while version(&lake_dir) < before + 2 {
        assert!(
            start.elapsed() < DEADLINE,
            "the table did not move on after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = sender.await.unwrap();
    assert!(!acked.is_empty());
    // The log's records, as a consumer reads them: the table must hold exactly these.
    let mut log = BTreeMap::new();
    for partition in 0..2 {
        let end = acked
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| offset + 1)
            .max()
            .unwrap_or(0);
        for record in read(
            &broker.bootstrap,
            "killed",
            &[partition],
            Offset::Beginning,
            end as usize,
        ) {
            log.insert((record.partition, record.offset), record.value.unwrap());
        }
    }
    for (key, value) in &acked {
        assert_eq!(
            log.get(key),
            Some(value),
            "acknowledged record {key:?} lost"
        );
    }
    let rows = wait_for_table(&lake_dir, "killed", "every record of the log", |rows| {
        rows.len() >= log.len()
    })
    .await;
    assert_eq!(
        as_map(&rows),
        log,
        "the table holds exactly the log's records"
    );
    let lake = strata_lake::Lake::new(
        strata_lake::store::open(&tier_url, &BTreeMap::new()).expect("the lake opens"),
    );
    for partition in 0..2 {
        let report = lake.verify("killed", partition).await.unwrap();
        assert!(report.is_clean(), "partition {partition}: {report:?}");
    }
    broker.terminate();
}
