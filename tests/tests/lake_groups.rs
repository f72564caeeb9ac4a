//! Consumer group offsets in the lake: a group's committed offsets reach its object in
//! `_strata/groups/` within `lake.target.lag.ms` (and no more often), a deleted group's object
//! goes, and a broker that lost its data folder (the lake kept) restores them before serving:
//! consumers resume where they were. A cluster rebuilt on its lake restores them in the
//! coordinator of each group's `__consumer_offsets` partition.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use strata_lake::groups::{GroupFiles, GroupOffsets};
use strata_tests::{
    ClusterMember, DEADLINE, TestBroker, Tier, cluster_bootstrap, cluster_members, create_topic,
    producer, quorum_voters, start_member, wait_for, wait_offloaded_to,
};

/// The lake's target lag (group objects written at most once per lag), small segments that
/// reach the lake quickly, rebalances without delay.
const SETTINGS: &[(&str, &str)] = &[
    ("lake.target.lag.ms", "1500"),
    ("log.segment.bytes", "16384"),
    ("log.roll.ms", "500"),
    ("group.initial.rebalance.delay.ms", "0"),
];
const TOPIC: &str = "orders";
const RECORDS_PER_PARTITION: i64 = 30;
/// A group id that is not a plain object name.
const GROUP: &str = "billing/eu 1";

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // A committed offset must be found: no silent reset to either end.
        .set("auto.offset.reset", "error")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap()
}

/// Commits `offsets` (partition → (offset, metadata)) of [`TOPIC`] for `group` from outside
/// the group's membership (an assign()ed consumer), synchronously.
fn commit(bootstrap: &str, group: &str, offsets: &[(i32, i64, &str)]) {
    let consumer = group_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for (partition, offset, metadata) in offsets {
        tpl.add_partition_offset(TOPIC, *partition, Offset::Offset(*offset))
            .unwrap();
        tpl.find_partition(TOPIC, *partition)
            .unwrap()
            .set_metadata(*metadata);
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The group's committed offsets as the broker answers them: partition → (offset, metadata).
fn committed(bootstrap: &str, group: &str) -> BTreeMap<i32, (Offset, String)> {
    try_committed(bootstrap, group).expect("the group's committed offsets")
}

/// As [`committed`]; `None` when the client gives up (a coordinator still loading).
fn try_committed(bootstrap: &str, group: &str) -> Option<BTreeMap<i32, (Offset, String)>> {
    let consumer = group_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    tpl.add_partition(TOPIC, 1);
    let found = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .ok()?;
    Some(
        found
            .elements()
            .iter()
            .map(|e| (e.partition(), (e.offset(), e.metadata().to_string())))
            .collect(),
    )
}

/// The lake's object of `group`, once `done` holds for it (`None`: until it is gone).
async fn wait_object(
    files: &GroupFiles,
    group: &str,
    what: &str,
    done: impl Fn(Option<&GroupOffsets>) -> bool,
) -> Option<GroupOffsets> {
    let start = Instant::now();
    loop {
        let found = files.get(group).await.unwrap();
        if done(found.as_ref()) {
            return found;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offsets_of(object: Option<&GroupOffsets>) -> Vec<(i32, i64, String)> {
    object
        .map(|o| {
            o.offsets
                .iter()
                .map(|o| (o.partition, o.offset, o.metadata.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn produce(bootstrap: &str) {
    let producer = producer(bootstrap, &[]);
    for i in 0..RECORDS_PER_PARTITION {
        for partition in 0..2 {
            let value = format!("{partition}-{i}");
            producer
                .send(
                    FutureRecord::to(TOPIC)
                        .partition(partition)
                        .key(&value)
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
    }
}

fn tier_outside(data_parent: &Path) -> Tier {
    let url = strata_lake::store::file_url(&data_parent.join("lake")).unwrap();
    (url, BTreeMap::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_restored_from_the_lake_after_the_data_folder_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tier = tier_outside(dir.path());
    let store = strata_lake::store::open(&tier.0, &tier.1).unwrap();
    let files = GroupFiles::new(store.clone());
    let lake = strata_lake::Lake::new(store);
    let broker = TestBroker::start_tiered(&data, SETTINGS, Some(tier.clone())).await;
    let bootstrap = broker.bootstrap.clone();
    create_topic(&bootstrap, TOPIC, 2).await;
    produce(&bootstrap).await;

    // A commit reaches the lake within the lag.
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        commit(&b, GROUP, &[(0, 10, "first"), (1, 4, "")]);
        commit(&b, "doomed", &[(0, 1, "")]);
    })
    .await
    .unwrap();
    let first = wait_object(&files, GROUP, "the group's first commit", |o| {
        offsets_of(o) == [(0, 10, "first".into()), (1, 4, String::new())]
    })
    .await
    .unwrap();
    assert_eq!(first.group, GROUP);
    assert!(
        dir.path()
            .join("lake/_strata/groups/billing%2Feu%201.json")
            .exists(),
        "named by the percent-encoded group id"
    );

    // The next commit comes within the lag: its object is written once the lag has passed
    // since the last write, not before.
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || commit(&b, GROUP, &[(0, 12, "second"), (1, 5, "")]))
        .await
        .unwrap();
    let second = wait_object(&files, GROUP, "the group's second commit", |o| {
        offsets_of(o) == [(0, 12, "second".into()), (1, 5, String::new())]
    })
    .await
    .unwrap();
    assert!(
        second.written_at_ms - first.written_at_ms >= 1_500,
        "written {} ms apart, within lake.target.lag.ms",
        second.written_at_ms - first.written_at_ms
    );

    // A deleted group's object goes.
    wait_object(&files, "doomed", "the doomed group's commit", |o| {
        o.is_some()
    })
    .await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let deleted = admin
        .delete_groups(&["doomed"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    wait_object(&files, "doomed", "the deleted group's object to go", |o| {
        o.is_none()
    })
    .await;

    // The records reach the lake too (the topic comes back from it).
    for partition in 0..2 {
        wait_offloaded_to(&lake, TOPIC, partition, RECORDS_PER_PARTITION).await;
    }
    broker.stop().await;

    // The data folder is lost; the lake is kept.
    std::fs::remove_dir_all(&data).unwrap();
    let broker = TestBroker::start_tiered(&data, SETTINGS, Some(tier.clone())).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let found = committed(&bootstrap, GROUP);
        assert_eq!(
            found,
            BTreeMap::from([
                (0, (Offset::Offset(12), "second".to_string())),
                (1, (Offset::Offset(5), String::new())),
            ])
        );
        let doomed = committed(&bootstrap, "doomed");
        assert!(
            doomed.values().all(|(o, _)| *o == Offset::Invalid),
            "a deleted group stays deleted: {doomed:?}"
        );

        // A member of the group resumes at its committed offsets.
        let consumer = group_consumer(&bootstrap, GROUP);
        consumer.subscribe(&[TOPIC]).unwrap();
        let mut first_seen: BTreeMap<i32, i64> = BTreeMap::new();
        let start = Instant::now();
        while first_seen.len() < 2 {
            assert!(
                start.elapsed() < DEADLINE,
                "resumed partitions: {first_seen:?}"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    first_seen.entry(m.partition()).or_insert(m.offset());
                }
                Some(Err(e)) => panic!("consumer error: {e}"),
                None => {}
            }
        }
        assert_eq!(first_seen, BTreeMap::from([(0, 12), (1, 5)]));
    })
    .await
    .unwrap();

    // The restored offsets are in the new offsets log: they survive another restart.
    let mut broker = broker;
    broker.restart().await;
    let bootstrap = broker.bootstrap.clone();
    let found = tokio::task::spawn_blocking(move || committed(&bootstrap, GROUP))
        .await
        .unwrap();
    let partitions: BTreeSet<i32> = found
        .iter()
        .filter(|(_, (o, _))| matches!(o, Offset::Offset(_)))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(partitions, BTreeSet::from([0, 1]), "{found:?}");
    broker.stop().await;
}

/// A three-broker cluster and its lake: groups of several `__consumer_offsets` partitions (so
/// several coordinators) commit; every broker loses its data folder; a new cluster on the same
/// lake restores each group's offsets in the coordinator of its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rebuilt_on_its_lake_restores_every_group_s_offsets() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let tier = tier_outside(root.path());
    let files = GroupFiles::new(strata_lake::store::open(&tier.0, &tier.1).unwrap());
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    let extra = [
        "--tier-url",
        &tier.0,
        "--set",
        "lake.target.lag.ms=1000",
        "--set",
        "broker.session.timeout.ms=2000",
        "--set",
        "default.replication.factor=3",
    ];
    let start_all = |members: &mut Vec<ClusterMember>| {
        for member in members.iter_mut() {
            member.process = Some(start_member(&binary, member, &voters, &extra));
        }
    };
    start_all(&mut members);
    let bootstrap = cluster_bootstrap(&members);
    let offsets_led = |bootstrap: &str| {
        wait_for("__consumer_offsets led with three in-sync replicas", || {
            strata_tests::partition_states(bootstrap, "__consumer_offsets", 10)?
                .iter()
                .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
                .then_some(())
        });
    };
    offsets_led(&bootstrap);
    create_topic_replicated(&bootstrap).await;

    // Eight groups: with ten offsets partitions over three brokers, several coordinators.
    let groups: Vec<String> = (0..8).map(|i| format!("cluster-group-{i}")).collect();
    let b = bootstrap.clone();
    let committing = groups.clone();
    tokio::task::spawn_blocking(move || {
        for (i, group) in committing.iter().enumerate() {
            let i = i as i64;
            commit(&b, group, &[(0, 10 + i, "c"), (1, 20 + i, "")]);
        }
    })
    .await
    .unwrap();
    for (i, group) in groups.iter().enumerate() {
        let i = i as i64;
        let expected = [(0, 10 + i, "c".to_string()), (1, 20 + i, String::new())];
        wait_object(&files, group, "a group's offsets in the lake", |o| {
            offsets_of(o) == expected
        })
        .await;
    }

    // Every broker and its data folder lost; a new cluster on the lake.
    for member in &mut members {
        member.process.take().unwrap().kill();
        std::fs::remove_dir_all(&member.dir).unwrap();
    }
    start_all(&mut members);
    offsets_led(&bootstrap);
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        for (i, group) in groups.iter().enumerate() {
            let i = i as i64;
            let found = wait_for("the group's restored offsets", || {
                let found = try_committed(&b, group)?;
                found
                    .values()
                    .all(|(o, _)| matches!(o, Offset::Offset(_)))
                    .then_some(found)
            });
            assert_eq!(
                found,
                BTreeMap::from([
                    (0, (Offset::Offset(10 + i), "c".to_string())),
                    (1, (Offset::Offset(20 + i), String::new())),
                ]),
                "{group}"
            );
        }
    })
    .await
    .unwrap();
    for member in &mut members {
        member.process.take().unwrap().kill();
    }
}

async fn create_topic_replicated(bootstrap: &str) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 2, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}
