//! The lake across failovers: three `strata serve` processes share one lake (a `file://` folder),
//! segments are small so that leaders offload all the time, and the leader of a partition is
//! killed with SIGKILL while the cluster writes and offloads, twice, then paused with SIGSTOP
//! until a new leader claimed the partition in the lake and resumed (its commits are then
//! refused); each time beside an upload it left uncommitted (as a leader killed between its upload
//! and its manifest commit leaves one), which the new leader's claim removes.
//!
//! Afterwards `strata lake verify` is clean; the lake holds every offset of every partition in
//! exactly one file, with the records that were acknowledged; every replica, followers included,
//! deleted its offloaded segments and nothing the lake lacks; and a consumer reads every
//! acknowledged record back exactly once, the history below the brokers' local logs from the lake.
//!
//! Which partitions' leaders are faulted, and when, comes from a printed seed (`STRATA_TEST_SEED`
//! replays it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use strata_lake::Lake;
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, DURABLE_WRITER, cluster_bootstrap, cluster_members,
    producer, quorum_voters, run_to_exit, start_member, test_seed, wait_for, wait_for_brokers,
};

const TOPIC: &str = "lake-failover";
const PARTITIONS: i32 = 3;
/// What happens to a partition's leader in each round, one round after the other (the broker is
/// back in every ISR before the next round).
const FAULTS: [Fault; 3] = [Fault::Kill, Fault::Kill, Fault::Pause];
/// Sends awaited together, one window per interval: about 1000 records of 230 bytes a second,
/// which seals a 16 KiB segment of every partition about every 200 ms while leaders are killed.
const WINDOW: usize = 50;
const WINDOW_INTERVAL: Duration = Duration::from_millis(50);
/// Records acknowledged between two faults, at least (plus up to as many again, by the seed).
const RECORDS_BETWEEN_FAULTS: usize = 500;
/// Most records written, whatever happens.
const RECORDS_MAX: usize = 60_000;

/// A fault of a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a restart once another broker leads.
    Kill,
    /// SIGSTOP, then SIGCONT once another broker claimed the partition in the lake: the deposed
    /// leader resumes believing it leads, and its commits must be refused.
    Pause,
}

/// The next number of a xorshift sequence (deterministic from the seed).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn start(binary: &Path, member: &ClusterMember, voters: &str, tier_url: &str) -> ChildBroker {
    let mut args = vec!["--tier-url", tier_url];
    for setting in [
        "broker.session.timeout.ms=2000",
        "replica.lag.time.max.ms=4000",
        "min.insync.replicas=2",
        "default.replication.factor=3",
        // Small segments that roll quickly and leave local disks once the lake has them.
        "log.segment.bytes=16384",
        "log.roll.ms=1000",
        "log.local.retention.ms=0",
        "log.local.retention.bytes=0",
        "log.retention.check.interval.ms=1000",
    ] {
        args.extend(["--set", setting]);
    }
    start_member(binary, member, voters, &args)
}

/// `(leader, isr)` of every partition of the topic, as the cluster answers now.
fn partition_states(bootstrap: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    strata_tests::partition_states(bootstrap, TOPIC, PARTITIONS)
}

fn all_in_sync(bootstrap: &str) -> Option<()> {
    partition_states(bootstrap)?
        .iter()
        .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
        .then_some(())
}

/// The high watermark of a partition, as `bootstrap` answers.
fn high_watermark(bootstrap: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    consumer
        .fetch_watermarks(TOPIC, partition, Duration::from_secs(5))
        .ok()
        .map(|(_, high)| high)
}

/// Base offsets of a replica's local segments, in order.
fn local_segments(data: &Path, partition: i32) -> Vec<i64> {
    let dir = data.join("topics").join(format!("{TOPIC}-{partition}"));
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
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

/// The record number a value carries (`<number>-<padding>`).
fn record_number(value: &[u8]) -> usize {
    let text = std::str::from_utf8(value).unwrap();
    text.split('-').next().unwrap().parse().unwrap()
}

/// Writes an object where the leader at `epoch` would upload offsets from `next` on, as a leader
/// killed between its upload and its commit leaves it (its last offset lies beyond anything this
/// test writes, so it never names a real file). Returns its path under the lake folder.
fn plant_uncommitted_upload(lake_dir: &Path, partition: i32, next: i64, epoch: i32) -> PathBuf {
    let tag = if epoch == 0 {
        String::new()
    } else {
        format!("-e{epoch}")
    };
    let path = lake_dir
        .join(format!("topic={TOPIC}"))
        .join(format!("partition={partition}"))
        .join(format!("{next:020}-{:020}{tag}.parquet", next + 1_000_000));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"an upload its leader never committed").unwrap();
    path
}

/// Sends numbered records with an idempotent `acks=all` producer, a window of `WINDOW` every
/// `WINDOW_INTERVAL`, until `stop` is set; returns `(number, partition, offset)` of each, all
/// acknowledged.
async fn write_until(
    bootstrap: String,
    acknowledged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<(usize, i32, i64)> {
    let writer = producer(&bootstrap, DURABLE_WRITER);
    let mut out = Vec::new();
    let mut pace = tokio::time::interval(WINDOW_INTERVAL);
    while !stop.load(Ordering::Relaxed) && out.len() < RECORDS_MAX {
        pace.tick().await;
        let sends: Vec<_> = (out.len()..out.len() + WINDOW)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let key = format!("key-{}", i % 30);
                    let value = format!("{i:06}-{}", "x".repeat(200));
                    let delivery = writer
                        .send(
                            FutureRecord::to(TOPIC).key(&key).payload(&value),
                            Duration::from_secs(0),
                        )
                        .await;
                    match delivery {
                        Ok(d) => (i, d.partition, d.offset),
                        Err((e, _)) => panic!("record {i} not acknowledged: {e}"),
                    }
                })
            })
            .collect();
        for send in sends {
            out.push(send.await.unwrap());
            acknowledged.fetch_add(1, Ordering::Relaxed);
        }
    }
    out
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Each time the writer has come a seeded way further, faults the leader of a seeded partition
/// (see [`FAULTS`]) beside an upload it left uncommitted; waits for a new leader to claim the
/// partition in the lake (which removes that upload), then brings the broker back into every ISR.
#[allow(clippy::too_many_arguments)] // The cluster, its lake, and the schedule's inputs.
fn fault_leaders(
    binary: &Path,
    members: &mut [ClusterMember],
    voters: &str,
    tier_url: &str,
    lake: &Lake,
    lake_dir: &Path,
    acknowledged: &AtomicUsize,
    seed: u64,
) {
    let test_started = Instant::now();
    let bootstrap = cluster_bootstrap(members);
    let runtime = tokio::runtime::Handle::current();
    let mut random = seed | 1;
    for (round, fault) in FAULTS.into_iter().enumerate() {
        let fault_after = acknowledged.load(Ordering::Relaxed)
            + RECORDS_BETWEEN_FAULTS
            + next_random(&mut random) as usize % RECORDS_BETWEEN_FAULTS;
        let partition = (next_random(&mut random) % PARTITIONS as u64) as i32;
        wait_for("the writer to reach the fault point", || {
            (acknowledged.load(Ordering::Relaxed) >= fault_after).then_some(())
        });
        // Offloads are under way: the lake holds some of the partition already.
        let manifest = wait_for("the partition's first offloads", || {
            let manifest = runtime.block_on(lake.manifest(TOPIC, partition)).ok()?;
            manifest.next_offset().is_some().then_some(manifest)
        });
        let leader = partition_states(&bootstrap).expect("metadata")[partition as usize].0;
        let planted = plant_uncommitted_upload(
            lake_dir,
            partition,
            manifest.next_offset().unwrap(),
            manifest.leader_epoch,
        );
        eprintln!(
            "round {round}: {fault:?} broker {leader}, leader of {TOPIC}-{partition} at lake \
             epoch {}, after {} acknowledged records ({:?} in)",
            manifest.leader_epoch,
            acknowledged.load(Ordering::Relaxed),
            test_started.elapsed()
        );
        let member = members.iter_mut().find(|m| m.id == leader).unwrap();
        match fault {
            Fault::Kill => member.process.take().unwrap().kill(),
            Fault::Pause => signal(member.process.as_ref().unwrap().pid(), "STOP"),
        }
        let started = Instant::now();
        wait_for("a new leader to claim the partition in the lake", || {
            let claimed = runtime.block_on(lake.manifest(TOPIC, partition)).ok()?;
            (claimed.leader_epoch > manifest.leader_epoch).then_some(())
        });
        wait_for("the claim to remove the deposed leader's upload", || {
            (!planted.exists()).then_some(())
        });
        eprintln!(
            "round {round}: claimed and cleaned {:?} after the fault",
            started.elapsed()
        );
        let member = members.iter_mut().find(|m| m.id == leader).unwrap();
        match fault {
            Fault::Kill => member.process = Some(start(binary, member, voters, tier_url)),
            Fault::Pause => signal(member.process.as_ref().unwrap().pid(), "CONT"),
        }
        wait_for("the broker back in every ISR", || all_in_sync(&bootstrap));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_stays_exact_across_leader_kills_and_pauses() {
    let started = Instant::now();
    let seed = test_seed("cluster lake fault");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let lake_dir = root.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    let tier_url = strata_lake::store::file_url(&lake_dir).unwrap();
    let lake = Lake::new(strata_lake::store::open(&tier_url, &BTreeMap::new()).unwrap());
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters, &tier_url));
    }
    let bootstrap = cluster_bootstrap(&members);
    wait_for_brokers(&bootstrap, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for("every partition led with three in-sync replicas", || {
        all_in_sync(&bootstrap)
    });

    // Write while leaders are killed and paused, and a while after.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        bootstrap.clone(),
        Arc::clone(&acknowledged),
        Arc::clone(&stop),
    ));
    let members = {
        let (binary, voters, tier_url, lake, lake_dir, acknowledged) = (
            binary.clone(),
            voters.clone(),
            tier_url.clone(),
            lake.clone(),
            lake_dir.clone(),
            Arc::clone(&acknowledged),
        );
        tokio::task::spawn_blocking(move || {
            fault_leaders(
                &binary,
                &mut members,
                &voters,
                &tier_url,
                &lake,
                &lake_dir,
                &acknowledged,
                seed,
            );
            members
        })
        .await
        .unwrap()
    };
    let after_faults = acknowledged.load(Ordering::Relaxed) + RECORDS_BETWEEN_FAULTS;
    wait_for("records written after the last fault", || {
        (acknowledged.load(Ordering::Relaxed) >= after_faults).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let records = written.len();
    eprintln!(
        "{records} records written and acknowledged: {:?}",
        started.elapsed()
    );

    // Everything acknowledged reaches the lake; every replica deletes what the lake holds, and
    // never more.
    let mut ends = HashMap::new();
    for p in 0..PARTITIONS {
        let end = wait_for("the high watermark", || high_watermark(&bootstrap, p));
        assert_eq!(
            end,
            written.iter().filter(|w| w.1 == p).count() as i64,
            "{TOPIC}-{p}: one offset per acknowledged record (seed {seed})"
        );
        strata_tests::wait_offloaded_to(&lake, TOPIC, p, end).await;
        ends.insert(p, end);
    }
    for member in &members {
        for p in 0..PARTITIONS {
            let lake_next = lake.manifest(TOPIC, p).await.unwrap().next_offset();
            wait_for("every replica to delete its offloaded segments", || {
                let first = *local_segments(&member.dir, p).first()?;
                assert!(
                    lake_next.is_some_and(|next| first <= next),
                    "broker {} deleted {TOPIC}-{p} up to {first}, the lake holds up to \
                     {lake_next:?} (seed {seed})",
                    member.id
                );
                (first > 0).then_some(())
            });
        }
    }

    eprintln!(
        "offloaded and deleted locally everywhere: {:?}",
        started.elapsed()
    );

    // `strata lake verify` finds nothing wrong.
    let verify_dir = root.path().join("verify");
    let output = run_to_exit(
        std::process::Command::new(&binary)
            .args(["lake", "verify", "--tier-url", &tier_url, "--data-dir"])
            .arg(&verify_dir)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_PROFILE"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("0 with problems"),
        "strata lake verify (seed {seed}):\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Every offset in exactly one file, holding the acknowledged record written there.
    let mut in_lake: HashMap<(i32, i64), usize> = HashMap::new();
    for p in 0..PARTITIONS {
        let manifest = lake.manifest(TOPIC, p).await.unwrap();
        assert_eq!(
            manifest.start_offset(),
            Some(0),
            "{TOPIC}-{p} (seed {seed})"
        );
        let mut offsets = Vec::new();
        for file in &manifest.files {
            for record in lake.read_file(&file.path).await.unwrap() {
                offsets.push(record.offset);
                in_lake.insert((p, record.offset), record_number(&record.value.unwrap()));
            }
        }
        assert_eq!(
            offsets,
            (0..ends[&p]).collect::<Vec<_>>(),
            "{TOPIC}-{p}: every offset once, in order (seed {seed})"
        );
    }
    for (number, partition, offset) in &written {
        assert_eq!(
            in_lake.get(&(*partition, *offset)),
            Some(number),
            "record {number} acknowledged at {TOPIC}-{partition}@{offset} (seed {seed})"
        );
    }

    // A consumer reads every acknowledged record back, from the lake below the local logs.
    let consumer = strata_tests::consumer(&bootstrap);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut consumed: HashMap<(i32, i64), usize> = HashMap::new();
    let reading = Instant::now();
    while consumed.len() < records {
        assert!(
            reading.elapsed() < DEADLINE,
            "read {} of {records} records (seed {seed})",
            consumed.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let number = record_number(m.payload().unwrap());
                let before = consumed.insert((m.partition(), m.offset()), number);
                assert!(before.is_none(), "offset read twice (seed {seed})");
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    assert_eq!(
        consumed, in_lake,
        "consumers read what the lake holds (seed {seed})"
    );
    eprintln!(
        "the lake across {} leader faults: {:?}",
        FAULTS.len(),
        started.elapsed()
    );
}
