//! The fresh lake end to end: records reach the lake as fresh pieces (`.parquet.fresh`) within
//! `lake.target.lag.ms` with the default segment settings, a glob over `**/*.parquet` never sees
//! an offset twice, the sealed file replaces the pieces when the segment rolls and the pieces go
//! after `lake.fresh.delete.delay.ms`; a broker whose data folder was lost serves every record
//! once again from the lake, fresh pieces included, and promotes the pieces to sealed files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;
use strata_lake::{Lake, Manifest};
use strata_tests::{DEADLINE, TestBroker, producer, read};

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
        assert_exactly_once(lake, lake_dir, topic, &manifest).await;
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

/// The offsets of every record in a lake file.
async fn offsets_in(lake: &Lake, path: &str) -> Vec<i64> {
    lake.read_file(path)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.offset)
        .collect()
}

/// Every `*.parquet` file under the lake's folder for `topic`, as a glob reader sees them.
fn parquet_files(lake_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let folder = lake_dir.join(format!("topic={topic}")).join("partition=0");
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
async fn assert_exactly_once(lake: &Lake, lake_dir: &Path, topic: &str, manifest: &Manifest) {
    let mut globbed: BTreeMap<i64, PathBuf> = BTreeMap::new();
    for file in parquet_files(lake_dir, topic) {
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
        parquet_files(&lake_dir, TOPIC).is_empty(),
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
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier)).await;
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
        for file in parquet_files(&lake_dir, TOPIC) {
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
