//! A seeded fault schedule against a three-broker cluster under load: for about forty seconds an
//! idempotent `acks=all` producer writes while random brokers are killed (SIGKILL) and restarted,
//! paused (SIGSTOP, later SIGCONT) or restarted in a controlled way (SIGTERM), one at a time.
//! The checker then reads every partition: each acknowledged record exactly once, in send order
//! within its partition.
//!
//! The schedule comes from a printed seed: `STRATA_TEST_SEED=<seed>` replays it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, cluster_bootstrap, cluster_members, producer,
    quorum_voters, start_member, wait_for, wait_for_brokers,
};

const TOPIC: &str = "faults";
const PARTITIONS: i32 = 4;
/// How long faults are injected.
const SCHEDULE: Duration = Duration::from_secs(40);
/// Records in flight at once.
const WINDOW: usize = 32;

/// A small deterministic generator (xorshift64*), so the schedule replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn start(binary: &Path, member: &ClusterMember, voters: &str, tier_url: &str) -> ChildBroker {
    start_member(
        binary,
        member,
        voters,
        &[
            "--tier-url",
            tier_url,
            "--set",
            "broker.session.timeout.ms=2000",
            "--set",
            "replica.lag.time.max.ms=3000",
            "--set",
            "min.insync.replicas=2",
            "--set",
            "leader.imbalance.check.interval.seconds=5",
        ],
    )
}

fn signal(process: &ChildBroker, name: &str) {
    let status = Command::new("kill")
        .args([name, &process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name}");
}

/// Every partition led, with `isr` in-sync replicas at least.
fn all_led(bootstrap: &str, isr: usize) -> Option<()> {
    strata_tests::partition_states(bootstrap, TOPIC, PARTITIONS)?
        .iter()
        .all(|(leader, in_sync)| *leader > 0 && in_sync.len() >= isr)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_fault_schedule_loses_and_duplicates_nothing_acknowledged() {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fault schedule seed: {seed} (replay with STRATA_TEST_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let lake = root.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let tier_url = format!("file://{}", lake.display());
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters, &tier_url));
    }
    let bootstrap = cluster_bootstrap(&members);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    wait_for_brokers(&bootstrap, 3);
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for("every partition with three in-sync replicas", || {
        all_led(&bootstrap, 3)
    });

    // The load: values 0, 1, 2, … sent with up to WINDOW in flight; acknowledged ones recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (bootstrap, stop) = (bootstrap.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let producer = producer(
                &bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("message.timeout.ms", "120000"),
                    ("linger.ms", "2"),
                ],
            );
            let mut acknowledged: Vec<(i32, u64)> = Vec::new();
            let mut in_flight = std::collections::VecDeque::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) || !in_flight.is_empty() {
                if !stop.load(Ordering::Relaxed) && in_flight.len() < WINDOW {
                    let value = next.to_string();
                    let key = format!("key-{}", next % 64);
                    let delivery = producer
                        .send_result(FutureRecord::to(TOPIC).key(&key).payload(&value))
                        .unwrap();
                    in_flight.push_back((next, delivery));
                    next += 1;
                    continue;
                }
                let (value, delivery) = in_flight.pop_front().unwrap();
                match delivery.await.unwrap() {
                    Ok(delivered) => acknowledged.push((delivered.partition, value)),
                    Err((e, _)) => panic!("record {value} not acknowledged: {e}"),
                }
            }
            acknowledged
        })
    };

    // The schedule: one fault at a time, each healed before the next.
    let started = Instant::now();
    let mut faults = 0;
    while started.elapsed() < SCHEDULE {
        tokio::time::sleep(rng.millis(1_000, 3_000)).await;
        let victim = rng.below(3) as usize;
        let member = &mut members[victim];
        let action = rng.below(3);
        let outage = rng.millis(1_000, 4_000);
        faults += 1;
        match action {
            0 => {
                eprintln!(
                    "[{:?}] SIGKILL broker {} for {outage:?}",
                    started.elapsed(),
                    member.id
                );
                member.process.take().unwrap().kill();
                tokio::time::sleep(outage).await;
                member.process = Some(start(&binary, member, &voters, &tier_url));
            }
            1 => {
                eprintln!(
                    "[{:?}] SIGSTOP broker {} for {outage:?}",
                    started.elapsed(),
                    member.id
                );
                let process = member.process.as_ref().unwrap();
                signal(process, "-STOP");
                tokio::time::sleep(outage).await;
                signal(process, "-CONT");
            }
            _ => {
                eprintln!(
                    "[{:?}] SIGTERM broker {} and restart",
                    started.elapsed(),
                    member.id
                );
                let status = member.process.take().unwrap().terminate();
                assert!(status.success(), "a controlled shutdown exits cleanly");
                member.process = Some(start(&binary, member, &voters, &tier_url));
            }
        }
        // Healed: every replica back in sync before the next fault, so that one fault never
        // meets another (min.insync.replicas=2 of 3).
        let heal = Instant::now();
        while all_led(&bootstrap, 3).is_none() {
            assert!(
                heal.elapsed() < DEADLINE,
                "the cluster did not heal (seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.unwrap();
    eprintln!(
        "{faults} faults, {} records acknowledged (seed {seed})",
        acknowledged.len()
    );
    assert!(faults > 0 && !acknowledged.is_empty());

    // The checker.
    let consumer = strata_tests::consumer(&bootstrap);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut read: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let reading = Instant::now();
    while read.values().map(Vec::len).sum::<usize>() < acknowledged.len() {
        assert!(
            reading.elapsed() < DEADLINE,
            "read {} of {} acknowledged records (seed {seed})",
            read.values().map(Vec::len).sum::<usize>(),
            acknowledged.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let value = std::str::from_utf8(m.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            read.entry(m.partition()).or_default().push(value);
        }
    }
    let mut expected: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for (partition, value) in &acknowledged {
        expected.entry(*partition).or_default().push(*value);
    }
    for values in expected.values_mut() {
        values.sort_unstable();
    }
    assert_eq!(
        read, expected,
        "each partition holds its acknowledged records once, in send order (seed {seed})"
    );
    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
}
