//! The lake tier end to end: offload to a real S3 protocol server (s3s-fs, SigV4) and to file://,
//! every column read back, an object storage outage, a broker killed mid-offload.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use strata_lake::{Lake, LakeRecord, OffloadError};
use strata_tests::{ChildBroker, S3Server, TestBroker, Tier, free_port, producer, read, wait_for};

/// Small segments that roll quickly and leave the local disk once offloaded.
const TIERED: &[(&str, &str)] = &[
    ("log.segment.bytes", "16384"),
    ("log.roll.ms", "500"),
    ("log.local.retention.ms", "0"),
    ("log.retention.check.interval.ms", "100"),
];

/// What was produced for one offset: key, value, headers.
type Produced = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

async fn produce_varied(
    bootstrap: &str,
    topic: &str,
    codec: &str,
    from: usize,
    count: usize,
) -> Vec<Produced> {
    let producer = producer(
        bootstrap,
        &[("compression.type", codec), ("enable.idempotence", "true")],
    );
    let mut sent = Vec::new();
    for i in from..from + count {
        let key = (i % 5 != 0).then(|| format!("key-{i}").into_bytes());
        let value = (i % 7 != 0)
            .then(|| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)).into_bytes());
        let headers = vec![
            ("h".to_string(), Some(i.to_string().into_bytes())),
            ("h".to_string(), None),
        ];
        let mut owned = OwnedHeaders::new();
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic).headers(owned);
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
        assert_eq!(delivery.offset, i as i64);
        sent.push((key, value, headers));
    }
    sent
}

fn lake_of(tier: &Tier) -> Lake {
    Lake::new(strata_lake::store::open(&tier.0, &tier.1).unwrap())
}

/// Waits until the lake holds offsets `0..count` of the partition and returns every row.
async fn wait_offloaded(lake: &Lake, topic: &str, count: i64) -> Vec<LakeRecord> {
    let start = std::time::Instant::now();
    loop {
        let manifest = lake.manifest(topic, 0).await.unwrap_or_default();
        if manifest.next_offset() == Some(count) {
            let mut rows = Vec::new();
            for f in &manifest.files {
                rows.extend(lake.read_file(&f.path).await.unwrap());
            }
            return rows;
        }
        assert!(
            start.elapsed() < strata_tests::DEADLINE,
            "{topic}: lake reached {:?} of {count}",
            manifest.next_offset()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn local_segments(data: &Path, topic: &str) -> usize {
    std::fs::read_dir(data.join("topics").join(format!("{topic}-0")))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        })
        .unwrap_or(0)
}

async fn every_codec_offloads_with_every_column(tier: Tier, data: &Path) {
    let broker = TestBroker::start_tiered(data, TIERED, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("lake-{codec}");
        let sent = produce_varied(&broker.bootstrap, &topic, codec, 0, 300).await;
        let rows = wait_offloaded(&lake, &topic, 300).await;
        assert_eq!(rows.len(), 300, "{codec}: every offset exactly once");
        for (i, (row, (key, value, headers))) in rows.iter().zip(&sent).enumerate() {
            assert_eq!(row.offset, i as i64, "{codec}");
            assert_eq!(row.key.as_deref(), key.as_deref(), "{codec} key {i}");
            assert_eq!(row.value.as_deref(), value.as_deref(), "{codec} value {i}");
            let got: Vec<(String, Option<Vec<u8>>)> = row
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|b| b.to_vec())))
                .collect();
            assert_eq!(&got, headers, "{codec} headers {i}");
            assert!(row.timestamp_ms > 1_700_000_000_000, "{codec} timestamp");
            assert!(
                row.producer_id >= 0,
                "{codec}: the idempotent producer's id is kept"
            );
        }
        // Local segments go once offloaded: only the active one stays.
        wait_for("local retention after offload", || {
            (local_segments(data, &topic) == 1).then_some(())
        });
        assert!(lake.verify(&topic, 0).await.unwrap().is_clean());
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_to_s3_in_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    every_codec_offloads_with_every_column(tier.clone(), &dir.path().join("data")).await;
    // The objects really are in the S3 server's folder, under the documented layout.
    let objects = dir
        .path()
        .join("s3")
        .join(strata_tests::S3_BUCKET)
        .join("strata")
        .join("topic=lake-zstd")
        .join("partition=0");
    assert!(std::fs::read_dir(objects).unwrap().count() > 0);
    // The topic's Iceberg table is committed over S3 too (conditional creates of its metadata),
    // naming the files by their s3:// URIs.
    let store = strata_lake::store::open(&tier.0, &tier.1).unwrap();
    let table = strata_lake::iceberg::IcebergTable::open(store, &tier.0, "lake-zstd").unwrap();
    let start = std::time::Instant::now();
    loop {
        let snapshot = table.current_files().await.unwrap();
        let files = snapshot.as_ref().and_then(|s| s.partitions.get(&0));
        if files.is_some_and(|f| f.iter().map(|f| f.record_count).sum::<u64>() == 300) {
            let files = files.unwrap();
            assert!(
                files
                    .iter()
                    .all(|f| f.uri.starts_with("s3://lake/strata/topic=lake-zstd/")),
                "{files:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < strata_tests::DEADLINE,
            "the Iceberg table of lake-zstd holds {snapshot:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_to_a_local_folder_in_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let tier = (
        format!("file://{}", dir.path().join("lake").display()),
        BTreeMap::new(),
    );
    every_codec_offloads_with_every_column(tier, &dir.path().join("data")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_outage_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    produce_varied(&broker.bootstrap, "outage", "lz4", 0, 200).await;
    wait_offloaded(&lake, "outage", 200).await;

    let (root, addr) = s3.stop().await;
    produce_varied(&broker.bootstrap, "outage", "lz4", 200, 300).await;
    wait_for("segments to roll during the outage", || {
        (local_segments(&data, "outage") >= 3).then_some(())
    });
    // The hot tier keeps serving, and nothing written during the outage was deleted locally.
    let got = read(&broker.bootstrap, "outage", &[0], Offset::Offset(200), 300);
    assert_eq!(got.first().map(|r| r.offset), Some(200));
    // The failing offload is recorded beside the partition, for `strata lake ls`.
    let partition_dir = data.join("topics").join("outage-0");
    let shown = wait_for("the failing offload to be recorded", || {
        OffloadError::read(&partition_dir)
    });
    assert!(
        shown.failures >= 1 && !shown.error.is_empty() && shown.retry_at_ms > shown.since_ms,
        "{shown:?}"
    );

    let s3 = S3Server::start(&root, addr).await;
    let rows = wait_offloaded(&lake, "outage", 500).await;
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..500).collect::<Vec<_>>());
    assert!(lake.verify("outage", 0).await.unwrap().is_clean());
    wait_for("the offload error to be cleared", || {
        OffloadError::read(&partition_dir).is_none().then_some(())
    });
    let listing = strata::lake::ls(&lake, &data, Some("outage"))
        .await
        .unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].offload_error, None);
    broker.stop().await;
    s3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_offload_leaves_an_exactly_once_lake() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut args: Vec<String> = vec!["--tier-url".into(), tier.0.clone()];
    for (k, v) in TIERED {
        args.push("--set".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = ChildBroker::start_with_env(&binary, &data, free_port(), &args, &tier.1);
    let total = 3000;
    produce_varied(&broker.bootstrap, "killed", "zstd", 0, total).await;
    let lake = lake_of(&tier);
    // Kill as soon as offloading has begun, while files are still being uploaded.
    let start = std::time::Instant::now();
    while lake
        .manifest("killed", 0)
        .await
        .unwrap_or_default()
        .files
        .is_empty()
    {
        assert!(
            start.elapsed() < strata_tests::DEADLINE,
            "offload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill();
    let broker = ChildBroker::start_with_env(&binary, &data, free_port(), &args, &tier.1);
    let rows = wait_offloaded(&lake, "killed", total as i64).await;
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..total as i64).collect::<Vec<_>>(),
        "every offset exactly once"
    );
    assert!(
        lake.verify("killed", 0).await.unwrap().is_clean(),
        "no gap, no overlap, no orphan"
    );
    // `strata lake verify` agrees.
    let output = std::process::Command::new(&binary)
        .args(["lake", "verify", "--tier-url", &tier.0, "--data-dir"])
        .arg(&data)
        .envs(&tier.1)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    drop(broker);
    s3.stop().await;
}

/// Without `AWS_ACCESS_KEY_ID`, credentials come from the standard AWS chain: here a profile file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_aws_profile_chain() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            strata_tests::S3_ACCESS_KEY,
            strata_tests::S3_SECRET_KEY
        ),
    )
    .unwrap();
    let mut env = s3.env();
    env.remove("AWS_ACCESS_KEY_ID");
    env.remove("AWS_SECRET_ACCESS_KEY");
    let run = |credentials_file: &Path| {
        std::process::Command::new(&binary)
            .args([
                "lake",
                "verify",
                "--tier-url",
                &S3Server::tier_url(),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_SHARED_CREDENTIALS_FILE", credentials_file)
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(&env)
            .output()
            .unwrap()
    };
    let ok = run(&credentials);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // With wrong credentials the server refuses the signature: the keys really come from the file.
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong-secret\n",
    )
    .unwrap();
    let refused = run(&credentials);
    assert!(!refused.status.success());
    s3.stop().await;
}

/// The same checks against a real MinIO in Docker (testcontainers). Ignored by default; when it
/// runs, it needs `STRATA_TEST_MINIO=1` (the opt-in to start a container) and a Docker engine that
/// answers `docker info`, and fails without either: it never passes without having run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker: STRATA_TEST_MINIO=1 cargo test --workspace --test lake -- --ignored"]
async fn offload_to_real_minio_when_docker_is_there() {
    use testcontainers_modules::minio::MinIO;
    use testcontainers_modules::testcontainers::ImageExt;
    use testcontainers_modules::testcontainers::core::ExecCommand;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    assert_eq!(
        std::env::var("STRATA_TEST_MINIO").as_deref(),
        Ok("1"),
        "this test starts MinIO in Docker: run it as \
         STRATA_TEST_MINIO=1 cargo test --workspace --test lake -- --ignored"
    );
    let docker = std::process::Command::new("docker").arg("info").output();
    match docker {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "STRATA_TEST_MINIO=1 but no Docker engine answers `docker info` ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("STRATA_TEST_MINIO=1 but `docker info` cannot run: {e}"),
    }
    let minio = MinIO::default()
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let port = minio.get_host_port_ipv4(9000).await.unwrap();
    for command in [
        vec![
            "mc",
            "alias",
            "set",
            "local",
            "http://localhost:9000",
            "minioadmin",
            "minioadmin",
        ],
        vec!["mc", "mb", "local/strata"],
    ] {
        minio.exec(ExecCommand::new(command)).await.unwrap();
    }
    let env: BTreeMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", "minioadmin".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "minioadmin".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    every_codec_offloads_with_every_column(
        ("s3://strata/lake".into(), env),
        &dir.path().join("data"),
    )
    .await;
}

/// Offsets below the local log start are served from the lake: a consumer reading from the
/// beginning gets every record with every field, then moves on to local records without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_offloaded_history_from_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    let mut sent = produce_varied(&broker.bootstrap, "history", "gzip", 0, 300).await;
    wait_offloaded(&lake, "history", 300).await;
    wait_for("local segments to go", || {
        (local_segments(&data, "history") == 1).then_some(())
    });
    sent.extend(produce_varied(&broker.bootstrap, "history", "snappy", 300, 50).await);

    let consumer = strata_tests::consumer(&broker.bootstrap);
    let (low, high) = consumer
        .fetch_watermarks("history", 0, Duration::from_secs(30))
        .unwrap();
    assert_eq!((low, high), (0, 350), "the log starts in the lake");
    let got = read(&broker.bootstrap, "history", &[0], Offset::Beginning, 350);
    for (i, (record, (key, value, headers))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(record.offset, i as i64);
        assert_eq!(&record.key, key, "key {i}");
        assert_eq!(&record.value, value, "value {i}");
        assert_eq!(&record.headers, headers, "headers {i}");
        assert!(record.timestamp_ms.is_some_and(|t| t > 1_700_000_000_000));
    }
    // Seeking by timestamp searches the lake too: the first record at or after the target.
    for probe in [0usize, 57, 150, 299, 320] {
        let target = got[probe].timestamp_ms.unwrap();
        let expected = got
            .iter()
            .position(|r| r.timestamp_ms.unwrap() >= target)
            .unwrap() as i64;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("history", 0, Offset::Offset(target))
            .unwrap();
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            found.find_partition("history", 0).unwrap().offset(),
            Offset::Offset(expected),
            "probe {probe}"
        );
    }
    broker.stop().await;
    s3.stop().await;
}

/// A broker that lost a partition folder, then its whole data folder, recovers from the lake:
/// topics come back, history is served from the lake, new records continue at the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_folder_is_recovered_from_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    let mut sent = produce_varied(&broker.bootstrap, "recover", "zstd", 0, 200).await;
    wait_offloaded(&lake, "recover", 200).await;
    broker.stop().await;

    // One partition folder lost.
    std::fs::remove_dir_all(data.join("topics").join("recover-0")).unwrap();
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    sent.extend(produce_varied(&broker.bootstrap, "recover", "zstd", 200, 20).await);
    wait_offloaded(&lake, "recover", 220).await;
    broker.stop().await;

    // The whole data folder lost.
    std::fs::remove_dir_all(&data).unwrap();
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    sent.extend(produce_varied(&broker.bootstrap, "recover", "zstd", 220, 10).await);
    let got = read(&broker.bootstrap, "recover", &[0], Offset::Beginning, 230);
    for (i, (record, (key, value, _))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(record.offset, i as i64);
        assert_eq!((&record.key, &record.value), (key, value), "record {i}");
    }
    broker.stop().await;
    s3.stop().await;
}

/// Object storage stops during a replay from the lake: the consumer gets retriable errors, hot
/// partitions keep working, and the replay completes once storage is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_survives_an_object_storage_outage() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    // No read cache: every historic read goes to object storage.
    let mut settings = TIERED.to_vec();
    settings.push(("lake.read.cache.bytes", "0"));
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    let sent = produce_varied(&broker.bootstrap, "replay", "lz4", 0, 300).await;
    wait_offloaded(&lake, "replay", 300).await;
    wait_for("local segments to go", || {
        (local_segments(&data, "replay") == 1).then_some(())
    });

    let (root, addr) = s3.stop().await;
    let bootstrap = broker.bootstrap.clone();
    let replay = tokio::task::spawn_blocking(move || {
        read(&bootstrap, "replay", &[0], Offset::Beginning, 300)
    });
    // Hot data is served meanwhile.
    produce_varied(&broker.bootstrap, "hot", "none", 0, 5).await;
    assert_eq!(
        read(&broker.bootstrap, "hot", &[0], Offset::Beginning, 5).len(),
        5
    );
    let s3 = S3Server::start(&root, addr).await;
    let got = replay.await.unwrap();
    for (i, (record, (_, value, _))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(record.offset, i as i64);
        assert_eq!(&record.value, value);
    }
    broker.stop().await;
    s3.stop().await;
}

/// `remote.storage.enable=false` keeps a topic out of the lake, and its local data under
/// `retention.*` (unlimited here), while other topics are offloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_storage_can_be_turned_off_per_topic() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let dir = tempfile::tempdir().unwrap();
    let tier = (
        format!("file://{}", dir.path().join("lake").display()),
        BTreeMap::new(),
    );
    let data = dir.path().join("data");
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let topic = NewTopic::new("a-untiered", 1, TopicReplication::Fixed(1))
        .set("remote.storage.enable", "false");
    assert!(
        admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .unwrap()[0]
            .is_ok()
    );
    produce_varied(&broker.bootstrap, "a-untiered", "none", 0, 200).await;
    wait_for("the untiered topic to roll", || {
        (local_segments(&data, "a-untiered") >= 3).then_some(())
    });
    // A tiered topic sealed later is offloaded in a pass that also visited the untiered one.
    produce_varied(&broker.bootstrap, "b-tiered", "none", 0, 200).await;
    let lake = lake_of(&tier);
    wait_offloaded(&lake, "b-tiered", 200).await;
    assert!(
        lake.manifest("a-untiered", 0)
            .await
            .unwrap()
            .files
            .is_empty()
    );
    assert!(local_segments(&data, "a-untiered") >= 3, "local data kept");
    assert_eq!(
        read(
            &broker.bootstrap,
            "a-untiered",
            &[0],
            Offset::Beginning,
            200
        )
        .len(),
        200
    );
    broker.stop().await;
}
