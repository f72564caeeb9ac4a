//! The fresh lake end to end: records reach the lake as fresh pieces (`.parquet.fresh`) within
//! `lake.target.lag.ms` with the default segment settings, a glob over `**/*.parquet` never sees
//! an offset twice, the sealed file replaces the pieces when the segment rolls and the pieces go
//! after `lake.fresh.delete.delay.ms`; a broker whose data folder was lost serves every record
//! once again from the lake, fresh pieces included, and promotes the pieces to sealed files; in
//! a cluster, leaders killed while their pieces are live leave an exactly-once lake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;
use strata_lake::{Lake, Manifest};
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, DURABLE_WRITER, TestBroker, cluster_bootstrap,
    cluster_members, partition_states, producer, quorum_voters, read, start_member, wait_for,
    wait_for_brokers,
};

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

async fn create_topic(bootstrap: &str, name: &str, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(bootstrap)
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

fn value_of(topic: &str, i: i64) -> String {
    format!(
        "{{\"topic\":\"{topic}\",\"n\":{i},\"pad\":\"{}\"}}",
        "x".repeat(160)
    )
}

/// Produces records `from..from + count` (values [`value_of`]) to partition 0, in order.
async fn produce(bootstrap: &str, topic: &str, from: i64, count: i64) {
    let producer = producer(
        bootstrap,
        &[("compression.type", "none"), ("enable.idempotence", "true")],
    );
    for i in from..from + count {
        let value = value_of(topic, i);
        let delivery = producer
            .send(
                FutureRecord::<(), String>::to(topic)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(delivery.offset, i, "offsets follow the records");
    }
}

/// Polls the partition's manifest until `done` accepts it, checking [`assert_exactly_once`] on
/// every manifest and lake folder seen meanwhile; fails after the deadline.
async fn wait_manifest(
    lake: &Lake,
    lake_dir: &Path,
    topic: &str,
    what: &str,
    done: impl Fn(&Manifest) -> bool,
) -> Manifest {
    let start = Instant::now();
    loop {
        let manifest = lake.manifest(topic, 0).await.unwrap();
        assert_exactly_once(lake, lake_dir, (topic, 0), &manifest).await;
        if done(&manifest) {
            return manifest;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {manifest:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a partition's manifest until `done` accepts it; fails after the deadline.
async fn poll_manifest(
    lake: &Lake,
    (topic, partition): (&str, i32),
    what: &str,
    done: impl Fn(&Manifest) -> bool,
) -> Manifest {
    let start = Instant::now();
    loop {
        let manifest = lake.manifest(topic, partition).await.unwrap();
        if done(&manifest) {
            return manifest;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {manifest:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The offsets of every record in a lake file.
async fn offsets_in(lake: &Lake, path: &str) -> Vec<i64> {
    lake.read_file(path)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.offset)
        .collect()
}

/// Every `*.parquet` file under the lake's folder for a partition, as a glob reader sees them.
fn parquet_files(lake_dir: &Path, (topic, partition): (&str, i32)) -> Vec<PathBuf> {
    let folder = lake_dir
        .join(format!("topic={topic}"))
        .join(format!("partition={partition}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A glob over `**/*.parquet` sees no offset twice (nor any fresh piece), and the manifest's
/// live files hold each offset from the first to the last once, each within its entry's range.
async fn assert_exactly_once(
    lake: &Lake,
    lake_dir: &Path,
    partition: (&str, i32),
    manifest: &Manifest,
) {
    let mut globbed: BTreeMap<i64, PathBuf> = BTreeMap::new();
    for file in parquet_files(lake_dir, partition) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // Deleted since the listing (a retired file).
        };
        for record in strata_lake::parquet_file::read(bytes.into()).unwrap() {
            if let Some(other) = globbed.insert(record.offset, file.clone()) {
                panic!(
                    "offset {} in both {} and {}",
                    record.offset,
                    other.display(),
                    file.display()
                );
            }
        }
    }
    let mut expected = manifest.files.first().map_or(0, |f| f.base_offset);
    for f in &manifest.files {
        assert_eq!(f.base_offset, expected, "contiguous: {manifest:#?}");
        assert_eq!(f.fresh, f.path.ends_with(".parquet.fresh"), "{}", f.path);
        let offsets = offsets_in(lake, &f.path).await;
        let wanted: Vec<i64> = (f.base_offset..=f.last_offset).collect();
        assert_eq!(offsets, wanted, "{} holds its offsets once", f.path);
        expected = f.last_offset + 1;
    }
    let pieces = manifest.fresh_pieces().len();
    assert!(
        manifest.files[..manifest.files.len() - pieces]
            .iter()
            .all(|f| !f.fresh),
        "sealed files first: {manifest:#?}"
    );
}

/// Every record `0..count` exactly once, in order, with its value.
fn assert_read_all(bootstrap: &str, topic: &str, count: i64) {
    let records = read(bootstrap, topic, &[0], Offset::Beginning, count as usize);
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..count).collect::<Vec<_>>());
    for r in &records {
        assert_eq!(
            r.value.as_deref(),
            Some(value_of(topic, r.offset).as_bytes())
        );
    }
}

fn file_lake(dir: &Path) -> Lake {
    let url = strata_lake::store::file_url(dir).unwrap();
    Lake::new(strata_lake::store::open(&url, &BTreeMap::new()).unwrap())
}

/// Default segments (1 GiB, 7 days): without fresh pieces nothing would reach the lake for a
/// week. With a target lag of 2 s the records are in the lake a few seconds after they were
/// produced, never much before the lag, and once the segment rolls its sealed file replaces the
/// pieces, which are deleted after the delete delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_lake_within_the_target_lag_and_sealed_files_replace_the_pieces() {
    const TOPIC: &str = "fresh";
    const LAG_MS: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let tier = (
        strata_lake::store::file_url(&lake_dir).unwrap(),
        BTreeMap::new(),
    );
    let broker = TestBroker::start_tiered(&dir.path().join("data"), &[], Some(tier)).await;
    let lake = file_lake(&lake_dir);
    let configs = [
        ("lake.target.lag.ms", "2000"),
        ("lake.fresh.delete.delay.ms", "1000"),
    ];
    create_topic(&broker.bootstrap, TOPIC, &configs).await;
    let described = admin(&broker.bootstrap)
        .describe_configs([&ResourceSpecifier::Topic(TOPIC)], &AdminOptions::new())
        .await
        .unwrap();
    let described = described[0].as_ref().unwrap();
    for (name, value) in configs {
        assert_eq!(described.get(name).unwrap().value.as_deref(), Some(value));
    }

    produce(&broker.bootstrap, TOPIC, 0, 50).await;
    let produced = Instant::now();
    let first = wait_manifest(&lake, &lake_dir, TOPIC, "a fresh piece", |m| {
        m.next_offset() == Some(50)
    })
    .await;
    let visible = produced.elapsed();
    // The oldest record was produced at most a moment before `produced`; passes run each second.
    assert!(
        visible >= Duration::from_millis(LAG_MS - 1000),
        "a piece {visible:?} after the records: before the target lag"
    );
    assert!(
        visible <= Duration::from_millis(LAG_MS + 6000),
        "the records reached the lake {visible:?} after they were produced"
    );
    assert!(
        first.files.iter().all(|f| f.fresh),
        "no segment rolled: {first:#?}"
    );
    assert!(
        parquet_files(&lake_dir, (TOPIC, 0)).is_empty(),
        "globs see no piece"
    );
    assert!(lake.verify(TOPIC, 0).await.unwrap().is_clean());

    produce(&broker.bootstrap, TOPIC, 50, 50).await;
    let pieces = wait_manifest(&lake, &lake_dir, TOPIC, "a second piece", |m| {
        m.next_offset() == Some(100)
    })
    .await;
    assert!(pieces.files.iter().all(|f| f.fresh) && pieces.files.len() >= 2);

    // Small segments from now on: the next record rolls the segment holding 0..=99.
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(TOPIC)).set("segment.bytes", "1024");
    for (name, value) in configs {
        alter = alter.set(name, value);
    }
    let altered = admin(&broker.bootstrap)
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    produce(&broker.bootstrap, TOPIC, 100, 50).await;
    let replaced = wait_manifest(&lake, &lake_dir, TOPIC, "the sealed file", |m| {
        m.sealed_files().last().is_some_and(|f| f.last_offset >= 99)
    })
    .await;
    assert_eq!(replaced.files[0].base_offset, 0);
    assert!(!replaced.files[0].fresh);
    for piece in &pieces.files {
        assert!(!replaced.files.contains(piece), "{} replaced", piece.path);
    }
    // The pieces' objects go after the delete delay; the glob never sees an offset twice.
    let piece_paths: Vec<String> = pieces.files.iter().map(|f| f.path.clone()).collect();
    let objects_gone = |m: &Manifest| {
        !piece_paths.iter().any(|p| m.names(p))
            && piece_paths.iter().all(|p| !lake_dir.join(p).exists())
    };
    wait_manifest(&lake, &lake_dir, TOPIC, "the pieces deleted", objects_gone).await;
    wait_manifest(&lake, &lake_dir, TOPIC, "every record in the lake", |m| {
        m.next_offset() == Some(150)
    })
    .await;
    assert!(lake.verify(TOPIC, 0).await.unwrap().is_clean());
    assert_read_all(&broker.bootstrap, TOPIC, 150);
    broker.stop().await;
}

/// A broker whose data folder is lost starts again from the lake after its last offset,
/// fresh pieces included. Those pieces lie below its local log start: it serves them to
/// consumers as they are, and promotes them to sealed files (a copy), which the test holds up
/// for a while by putting a folder where the sealed file goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_pieces_serve_history_after_the_data_folder_is_lost_and_are_promoted() {
    const TOPIC: &str = "restored";
    const COUNT: i64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let data = dir.path().join("data");
    let tier = (
        strata_lake::store::file_url(&lake_dir).unwrap(),
        BTreeMap::new(),
    );
    let settings = [("log.retention.check.interval.ms", "100")];
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier.clone())).await;
    let lake = file_lake(&lake_dir);
    let configs = [
        ("segment.bytes", "4096"),
        ("local.retention.ms", "0"),
        ("lake.target.lag.ms", "500"),
        ("lake.fresh.delete.delay.ms", "1000"),
    ];
    create_topic(&broker.bootstrap, TOPIC, &configs).await;
    produce(&broker.bootstrap, TOPIC, 0, COUNT).await;
    let before = wait_manifest(&lake, &lake_dir, TOPIC, "sealed files and a piece", |m| {
        m.next_offset() == Some(COUNT)
            && !m.fresh_pieces().is_empty()
            && !m.sealed_files().is_empty()
    })
    .await;
    assert_read_all(&broker.bootstrap, TOPIC, COUNT);
    broker.stop().await;

    // The data folder is lost. A folder where each piece's sealed file would go makes the
    // promotion fail until it is removed.
    std::fs::remove_dir_all(&data).unwrap();
    let blocks: Vec<PathBuf> = before
        .fresh_pieces()
        .iter()
        .map(|p| lake_dir.join(p.path.trim_end_matches(".fresh")))
        .collect();
    for block in &blocks {
        std::fs::create_dir_all(block).unwrap();
    }
    // And a piece uploaded just before the broker stopped, never committed.
    let orphan = lake_dir
        .join(format!("topic={TOPIC}"))
        .join("partition=0")
        .join(format!("{COUNT:020}-{:020}.parquet.fresh", COUNT + 9));
    std::fs::write(&orphan, b"a piece its broker never committed").unwrap();
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier)).await;
    wait_for("the orphan piece removed at the claim", || {
        (!orphan.exists()).then_some(())
    });
    // From the lake: sealed files, then the pieces (the local log starts after them).
    assert_read_all(&broker.bootstrap, TOPIC, COUNT);
    let during = lake.manifest(TOPIC, 0).await.unwrap();
    assert_eq!(
        during.fresh_pieces(),
        before.fresh_pieces(),
        "the pieces served the read"
    );
    for block in &blocks {
        std::fs::remove_dir(block).unwrap();
    }
    let promoted = wait_manifest(&lake, &lake_dir, TOPIC, "the pieces promoted", |m| {
        m.fresh_pieces().is_empty() && m.retired.is_empty()
    })
    .await;
    assert_eq!(promoted.next_offset(), Some(COUNT));
    for piece in before.fresh_pieces() {
        assert!(
            !lake_dir.join(&piece.path).exists(),
            "{} deleted",
            piece.path
        );
    }
    let globbed: usize = {
        let mut n = 0;
        for file in parquet_files(&lake_dir, (TOPIC, 0)) {
            n += strata_lake::parquet_file::read(std::fs::read(file).unwrap().into())
                .unwrap()
                .len();
        }
        n
    };
    assert_eq!(globbed as i64, COUNT, "the glob sees every record once");
    assert!(lake.verify(TOPIC, 0).await.unwrap().is_clean());
    assert_read_all(&broker.bootstrap, TOPIC, COUNT);
    broker.stop().await;
}

/// `strata serve` as a cluster member: replicated topics, segments that roll inside a few
/// seconds, fresh pieces every half second, local segments gone once sealed files hold them.
fn start_member_of(
    binary: &Path,
    member: &ClusterMember,
    voters: &str,
    tier_url: &str,
) -> ChildBroker {
    let mut args = vec!["--tier-url", tier_url];
    for setting in [
        "broker.session.timeout.ms=2000",
        "replica.lag.time.max.ms=4000",
        "min.insync.replicas=2",
        "default.replication.factor=3",
        "log.segment.bytes=131072",
        "log.local.retention.ms=0",
        "log.retention.check.interval.ms=1000",
        "lake.target.lag.ms=500",
        "lake.fresh.delete.delay.ms=1000",
    ] {
        args.extend(["--set", setting]);
    }
    start_member(binary, member, voters, &args)
}

/// Sends records `(partition, n)` with values [`value_of`] to both partitions of `topic`, in
/// windows, until `stop` is set; returns each acknowledged `(partition, offset, value)`.
async fn write_until(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<(i32, i64, String)> {
    let writer = producer(&bootstrap, DURABLE_WRITER);
    let mut out = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    while !stop.load(Ordering::Relaxed) && out.len() < 100_000 {
        pace.tick().await;
        let sends: Vec<_> = (out.len()..out.len() + 20)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let value = value_of(topic, i as i64);
                    let record = FutureRecord::<(), String>::to(topic)
                        .partition(i as i32 % 2)
                        .payload(&value);
                    match writer.send(record, Duration::from_secs(0)).await {
                        Ok(d) => (d.partition, d.offset, value),
                        Err((e, _)) => panic!("record {i} not acknowledged: {e}"),
                    }
                })
            })
            .collect();
        for send in sends {
            out.push(send.await.unwrap());
        }
    }
    out
}

/// Leaders killed while fresh pieces are live: the new leader claims the partition, removes the
/// pieces its predecessor left uncommitted, replaces (or, where its own segments rolled
/// elsewhere, promotes) its predecessor's pieces; every offset ends in exactly one live file, a
/// glob sees each once, every replica keeps the segments the sealed files do not hold yet, and
/// a consumer reads every acknowledged record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_pieces_stay_exact_across_leader_kills() {
    const TOPIC: &str = "fresh-failover";
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let lake_dir = root.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    let tier_url = strata_lake::store::file_url(&lake_dir).unwrap();
    let lake = file_lake(&lake_dir);
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start_member_of(&binary, member, &voters, &tier_url));
    }
    let bootstrap = cluster_bootstrap(&members);
    wait_for_brokers(&bootstrap, 3);
    let created = admin(&bootstrap)
        .create_topics(
            &[NewTopic::new(TOPIC, 2, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let all_in_sync = || {
        partition_states(&bootstrap, TOPIC, 2)?
            .iter()
            .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
            .then_some(())
    };
    wait_for(
        "both partitions led with three in-sync replicas",
        all_in_sync,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(bootstrap.clone(), TOPIC, Arc::clone(&stop)));

    for partition in [0, 1] {
        // The leader has live pieces (and an upload it never committed) when it dies.
        let manifest = poll_manifest(&lake, (TOPIC, partition), "live pieces", |m| {
            !m.fresh_pieces().is_empty()
        })
        .await;
        let next = manifest.next_offset().unwrap();
        let tag = match manifest.leader_epoch {
            0 => String::new(),
            epoch => format!("-e{epoch}"),
        };
        let planted = lake_dir
            .join(format!("topic={TOPIC}"))
            .join(format!("partition={partition}"))
            .join(format!(
                "{next:020}-{:020}{tag}.parquet.fresh",
                next + 1_000_000
            ));
        std::fs::write(&planted, b"a piece its leader never committed").unwrap();
        let leader = wait_for("the leader", || {
            partition_states(&bootstrap, TOPIC, 2).map(|s| s[partition as usize].0)
        });
        let member = members.iter_mut().find(|m| m.id == leader).unwrap();
        member.process.take().unwrap().kill();
        let claimed = poll_manifest(&lake, (TOPIC, partition), "a new leader's claim", |m| {
            m.leader_epoch > manifest.leader_epoch
        })
        .await;
        assert!(
            claimed.files.starts_with(manifest.sealed_files()),
            "the claim keeps what was committed"
        );
        wait_for("the new leader's sweep", || {
            (!planted.exists()).then_some(())
        });
        member.process = Some(start_member_of(&binary, member, &voters, &tier_url));
        wait_for("the broker back in every ISR", all_in_sync);
    }
    // A little more after the faults, then the lake catches up within the lag.
    let before = lake.manifest(TOPIC, 0).await.unwrap().next_offset();
    poll_manifest(&lake, (TOPIC, 0), "a piece after the faults", |m| {
        m.next_offset() > before
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    for partition in [0, 1] {
        let count = written.iter().filter(|w| w.0 == partition).count() as i64;
        strata_tests::wait_offloaded_to(&lake, TOPIC, partition, count).await;
        let manifest = lake.manifest(TOPIC, partition).await.unwrap();
        assert_eq!(manifest.next_offset(), Some(count), "{manifest:#?}");
        assert_exactly_once(&lake, &lake_dir, (TOPIC, partition), &manifest).await;
        let sealed_next = manifest.sealed_next_offset().unwrap();
        for member in &members {
            let dir = member
                .dir
                .join("topics")
                .join(format!("{TOPIC}-{partition}"));
            let first = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse::<i64>().ok()
                })
                .min()
                .unwrap();
            assert!(
                first <= sealed_next,
                "broker {} deleted {TOPIC}-{partition} up to {first}; sealed files hold up to \
                 {sealed_next}",
                member.id
            );
        }
    }
    // Every acknowledged record once, from the lake below the local logs.
    let got = read(&bootstrap, TOPIC, &[0, 1], Offset::Beginning, written.len());
    let mut got: Vec<(i32, i64, String)> = got
        .into_iter()
        .map(|r| {
            let value = String::from_utf8(r.value.unwrap()).unwrap();
            (r.partition, r.offset, value)
        })
        .collect();
    let mut written = written;
    got.sort();
    written.sort();
    assert_eq!(got, written);
    for member in &mut members {
        if let Some(process) = member.process.take() {
            process.terminate();
        }
    }
}
