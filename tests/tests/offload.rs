//! The offload against a damaged disk and against the clock: a segment whose bytes rotted on disk
//! is reported (status file, `strata lake ls`, also while the lake is unreachable), never deleted
//! and never holds up other partitions; local retention runs as soon as a commit makes segments
//! eligible, not at the next `log.retention.check.interval.ms`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use strata_lake::segment::BatchReader;
use strata_lake::{Lake, OffloadError};
use strata_tests::{TestBroker, Tier, free_port, producer, run_to_exit, wait_for};

/// Small segments that roll quickly and leave the local disk as soon as they are offloaded.
const TIERED: &[(&str, &str)] = &[
    ("log.segment.bytes", "16384"),
    ("log.roll.ms", "500"),
    ("log.local.retention.ms", "0"),
    ("log.local.retention.bytes", "0"),
    ("num.partitions", "2"),
];

/// Produces `count` records of about 200 bytes to one partition; returns the offset after them.
async fn produce(bootstrap: &str, topic: &str, partition: i32, count: usize) -> i64 {
    let producer = producer(bootstrap, &[("compression.type", "none")]);
    let mut last = -1;
    for i in 0..count {
        let value = format!(
            "{{\"partition\":{partition},\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat(160)
        );
        let delivery = producer
            .send(
                FutureRecord::<(), String>::to(topic)
                    .partition(partition)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        last = delivery.offset;
    }
    last + 1
}

fn partition_dir(data: &Path, topic: &str, partition: i32) -> PathBuf {
    data.join("topics").join(format!("{topic}-{partition}"))
}

/// The partition's segment files, in offset order.
fn segments(data: &Path, topic: &str, partition: i32) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(partition_dir(data, topic, partition))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn file_lake(dir: &Path) -> Tier {
    (
        format!("file://{}", dir.join("lake").display()),
        BTreeMap::new(),
    )
}

fn lake_of(tier: &Tier) -> Lake {
    Lake::new(strata_lake::store::open(&tier.0, &tier.1).unwrap())
}

/// Waits until the lake's manifest of the partition continues at `next`.
async fn wait_in_lake(lake: &Lake, topic: &str, partition: i32, next: i64) {
    let start = std::time::Instant::now();
    loop {
        let manifest = lake.manifest(topic, partition).await.unwrap_or_default();
        if manifest.next_offset() == Some(next) {
            return;
        }
        assert!(
            start.elapsed() < strata_tests::DEADLINE,
            "{topic}-{partition}: the lake reached {:?}, not {next}",
            manifest.next_offset()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Flips one byte in the middle of the second batch of a segment file; returns that batch's
/// base offset.
fn flip_a_byte_in_the_second_batch(segment: &Path) -> i64 {
    let mut bytes = std::fs::read(segment).unwrap();
    let (base_offset, position, len) = {
        let mut reader = BatchReader::new(&bytes[..]);
        let first = reader.next_batch().unwrap().unwrap().bytes.len();
        let second = reader.next_batch().unwrap().unwrap();
        (second.header.base_offset, first, second.bytes.len())
    };
    bytes[position + len / 2 + 30] ^= 0x20;
    std::fs::write(segment, bytes).unwrap();
    base_offset
}

/// A `strata lake ls --json` run of the binary on `data` with the tier `tier`.
fn lake_ls_json(data: &Path, tier: &Tier) -> String {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let output = run_to_exit(
        std::process::Command::new(binary)
            .args(["lake", "ls", "--json", "--tier-url", &tier.0, "--data-dir"])
            .arg(data)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_PROFILE")
            .envs(&tier.1),
    );
    assert!(
        output.status.success(),
        "strata lake ls failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Bit rot in a sealed segment of one partition: the other partition is offloaded (and keeps
/// being offloaded), the rotten segment is reported with its file and batch offset and stays on
/// disk with everything after it, and `strata lake ls` shows it, also with the lake unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_is_reported_kept_and_holds_up_no_other_partition() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tier = file_lake(dir.path());
    // First the topic stays local, so that its sealed segments wait on disk for the damage.
    let mut local = TIERED.to_vec();
    local.push(("remote.storage.enable", "false"));
    let broker = TestBroker::start_tiered(&data, &local, Some(tier.clone())).await;
    let rotten_end = produce(&broker.bootstrap, "rot", 0, 400).await;
    let healthy_end = produce(&broker.bootstrap, "rot", 1, 400).await;
    wait_for("both partitions to seal segments", || {
        (segments(&data, "rot", 0).len() >= 4 && segments(&data, "rot", 1).len() >= 4).then_some(())
    });
    broker.stop().await;

    let before = segments(&data, "rot", 0);
    let rotten = before[1].clone();
    let rotten_name = rotten.file_name().unwrap().to_string_lossy().into_owned();
    let rotten_base: i64 = rotten_name.trim_end_matches(".log").parse().unwrap();
    let bad_offset = flip_a_byte_in_the_second_batch(&rotten);

    // Tiered from now on (the broker's default).
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let lake = lake_of(&tier);
    wait_in_lake(&lake, "rot", 1, healthy_end).await;
    // The rotten partition's first segment goes to the lake, and then nothing more.
    wait_in_lake(&lake, "rot", 0, rotten_base).await;
    let shown = wait_for("the corrupt segment to be reported twice", || {
        OffloadError::read(&partition_dir(&data, "rot", 0)).filter(|e| e.failures >= 2)
    });
    let corrupt = shown.corrupt_segment.clone().expect("reported as corrupt");
    assert_eq!(
        (corrupt.segment.as_str(), corrupt.offset),
        (rotten_name.as_str(), bad_offset)
    );
    assert!(
        shown.error.starts_with(&format!(
            "corrupt segment {rotten_name} at offset {bad_offset}: "
        )),
        "{}",
        shown.error
    );
    assert!(shown.error.contains("CRC"), "{}", shown.error);
    assert!(shown.retry_at_ms > shown.since_ms);
    // Local retention (0 ms, 0 bytes) deleted the offloaded first segment only.
    let after = segments(&data, "rot", 0);
    assert!(
        !after.contains(&before[0]),
        "the offloaded segment was deleted"
    );
    assert!(after.contains(&rotten), "the corrupt segment is kept");
    assert!(
        before[2..].iter().all(|s| after.contains(s)),
        "so is everything after it"
    );
    assert_eq!(
        lake.manifest("rot", 0).await.unwrap().next_offset(),
        Some(rotten_base)
    );
    assert!(rotten_end > rotten_base);

    // The healthy partition goes on being offloaded while the other one fails.
    let more_end = {
        let producer = producer(&broker.bootstrap, &[]);
        let mut end = healthy_end;
        for i in 0..100 {
            let value = format!("more {i} {}", "y".repeat(150));
            end = producer
                .send(
                    FutureRecord::<(), String>::to("rot")
                        .partition(1)
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
                .offset
                + 1;
        }
        end
    };
    wait_in_lake(&lake, "rot", 1, more_end).await;
    assert!(OffloadError::read(&partition_dir(&data, "rot", 1)).is_none());
    assert!(segments(&data, "rot", 0).contains(&rotten));

    // `strata lake ls` shows the corrupt segment, with the lake...
    let listing = strata::lake::ls(&lake, &data, Some("rot")).await.unwrap();
    let rotten_listing = listing.iter().find(|l| l.partition == 0).unwrap();
    assert_eq!(
        rotten_listing
            .offload_error
            .as_ref()
            .and_then(|e| e.corrupt_segment.clone()),
        Some(corrupt.clone())
    );
    assert!(rotten_listing.lag_segments >= 2);
    let healthy_listing = listing.iter().find(|l| l.partition == 1).unwrap();
    assert_eq!(healthy_listing.offload_error, None);
    let json = lake_ls_json(&data, &tier);
    assert!(
        json.contains(&format!(
            "corrupt segment {rotten_name} at offset {bad_offset}"
        )),
        "{json}"
    );
    broker.stop().await;

    // ... and from the data folder alone while object storage does not answer.
    let closed = free_port();
    let unreachable: Tier = (
        "s3://lake/strata".into(),
        [
            ("AWS_ACCESS_KEY_ID", "strata-test-access"),
            ("AWS_SECRET_ACCESS_KEY", "strata-test-secret"),
            ("AWS_ENDPOINT_URL", &format!("http://{closed}")),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let json = lake_ls_json(&data, &unreachable);
    assert!(
        json.contains(&format!(
            "corrupt segment {rotten_name} at offset {bad_offset}"
        )),
        "{json}"
    );
    assert!(json.contains("\"lake_error\""), "{json}");
    let listing = strata::lake::ls(&lake_of(&unreachable), &data, None)
        .await
        .unwrap();
    assert_eq!(
        listing.len(),
        1,
        "only the failing partition is known without the lake"
    );
    assert_eq!(listing[0].partition, 0);
    assert!(listing[0].lake_error.is_some());
}

/// With `log.retention.check.interval.ms` at an hour, offloaded segments still leave the local
/// disk within seconds: the commit triggers the partition's retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_retention_runs_when_the_offload_commits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tier = file_lake(dir.path());
    let mut settings = TIERED.to_vec();
    settings.push(("log.retention.check.interval.ms", "3600000"));
    let broker = TestBroker::start_tiered(&data, &settings, Some(tier.clone())).await;
    let end = produce(&broker.bootstrap, "prompt", 0, 400).await;
    // No wait for the segments to roll first: they may be offloaded and deleted before a poll
    // sees them. That every record reaches the lake shows they rolled.
    let lake = lake_of(&tier);
    wait_in_lake(&lake, "prompt", 0, end).await;
    // Every record is in the lake and the last segment rolled: only the empty active one stays.
    wait_for("local retention after the offload", || {
        (segments(&data, "prompt", 0).len() == 1).then_some(())
    });
    let active = &segments(&data, "prompt", 0)[0];
    assert_eq!(
        std::fs::metadata(active).unwrap().len(),
        0,
        "the active segment"
    );
    broker.stop().await;
}

/// A file larger than a part goes to a real S3 protocol server (SigV4, s3s-fs) as a multipart
/// upload of parts at S3's 5 MiB minimum, and reads back record for record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_to_s3() {
    use strata_lake::lake::ConversionLimits;
    use strata_lake::{LakeRecord, Manifest, segment};
    let dir = tempfile::tempdir().unwrap();
    let s3 =
        strata_tests::S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (strata_tests::S3Server::tier_url(), s3.env());
    let part_bytes = 5 << 20;
    let lake = lake_of(&tier).with_limits(ConversionLimits {
        part_bytes,
        ..ConversionLimits::default()
    });
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let records: Vec<LakeRecord> = (0..12 * 1024)
        .map(|i| LakeRecord {
            offset: 1000 + i,
            timestamp_ms: 1_700_000_000_000 + i,
            key: None,
            value: Some(
                (0..128)
                    .flat_map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state.to_le_bytes()
                    })
                    .collect(),
            ),
            headers: Vec::new(),
            batch_offset: 1000 + i - i % 32,
            batch_attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            sequence: -1,
            partition_leader_epoch: 0,
        })
        .collect();
    let bytes = bytes::Bytes::from(segment::encode(&records).to_vec());
    let done = lake
        .offload_segment("big", 0, &Manifest::default(), bytes, 0)
        .await
        .unwrap();
    let entry = &done.manifest.files[0];
    assert!(
        entry.size_bytes > 2 * part_bytes as u64,
        "{} bytes: three parts",
        entry.size_bytes
    );
    assert!(
        done.peak_buffered_bytes < 4 * part_bytes + (8 << 20),
        "{}",
        done.peak_buffered_bytes
    );
    assert!(lake.verify("big", 0).await.unwrap().is_clean());
    assert_eq!(lake.read_file(&entry.path).await.unwrap(), records);
    s3.stop().await;
}
