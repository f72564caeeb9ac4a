//! A three-broker cluster of `strata serve` processes on loopback: replication factor 3,
//! `min.insync.replicas=2`, an idempotent `acks=all` producer, and the leader of a partition
//! killed with SIGKILL while it writes. Every acknowledged record is read back exactly once and in
//! order per partition, and the killed broker comes back, catches up and rejoins the ISR.
//!
//! Which broker is killed, and when, comes from a printed seed (`STRATA_TEST_SEED` replays it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, cluster_bootstrap, cluster_members, producer,
    quorum_voters, start_member, test_seed, wait_for, wait_for_brokers,
};

const TOPIC: &str = "replicated";
const PARTITIONS: i32 = 3;
const RECORDS: usize = 1500;

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
            "replica.lag.time.max.ms=4000",
            "--set",
            "min.insync.replicas=2",
            "--set",
            "default.replication.factor=3",
            // Authorization on, every client (and broker) a super user: the ACL bindings are
            // replicated metadata.
            "--set",
            "authorizer.enabled=true",
            "--set",
            "super.users=User:ANONYMOUS",
        ],
    )
}

/// Reads the whole topic from `bootstrap` and checks that it holds records 0..RECORDS exactly
/// once, in order within each partition.
fn check_exactly_once(bootstrap: &str, seed: u64) {
    let consumer = strata_tests::consumer(bootstrap);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut consumed: Vec<(i32, i64, usize)> = Vec::with_capacity(RECORDS);
    let started = Instant::now();
    while consumed.len() < RECORDS {
        assert!(
            started.elapsed() < DEADLINE,
            "read {} of {RECORDS} records (seed {seed})",
            consumed.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => consumed.push((
                m.partition(),
                m.offset(),
                std::str::from_utf8(m.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap(),
            )),
            // A broker that is down is reported while the client finds the new leaders.
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    for p in 0..PARTITIONS {
        let in_partition: Vec<(i64, usize)> = consumed
            .iter()
            .filter(|c| c.0 == p)
            .map(|c| (c.1, c.2))
            .collect();
        assert!(
            in_partition
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "partition {p} out of order (seed {seed})"
        );
    }
    let mut values: Vec<usize> = consumed.iter().map(|c| c.2).collect();
    values.sort_unstable();
    let expected: Vec<usize> = (0..RECORDS).collect();
    assert_eq!(values, expected, "every record exactly once (seed {seed})");
}

/// The high watermark of a partition, as `bootstrap` answers.
fn log_end(bootstrap: &str, partition: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

/// `(leader, isr)` of every partition of the topic, as the cluster answers now.
fn partition_states(bootstrap: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    strata_tests::partition_states(bootstrap, TOPIC, PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_loses_no_acknowledged_record() {
    let seed = test_seed("cluster fault");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let tier_url = format!("file://{}", root.path().join("lake").display());
    std::fs::create_dir_all(root.path().join("lake")).unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters, &tier_url));
    }
    let bootstrap = cluster_bootstrap(&members);

    // Every broker registered, then the topic with three replicas per partition.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    wait_for_brokers(&bootstrap, 3);
    // An ACL binding created through one broker is decided by every broker (replicated).
    let binding = strata_broker::security::acl::AclBinding {
        resource_type: strata_broker::security::acl::ResourceType::Topic,
        resource_name: "audited".into(),
        pattern_type: strata_broker::security::acl::PatternType::Prefixed,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: strata_broker::security::acl::AclOperation::Read,
        permission_type: strata_broker::security::acl::AclPermission::Allow,
    };
    let mut first = strata::admin::AdminClient::connect(&members[0].listen.to_string()).unwrap();
    strata::acl::create(&mut first, std::slice::from_ref(&binding)).unwrap();
    for member in &members[1..] {
        wait_for("the ACL binding on every broker", || {
            let mut client =
                strata::admin::AdminClient::connect(&member.listen.to_string()).ok()?;
            let any = strata_broker::security::acl::AclBindingFilter::any();
            let listed = strata::acl::describe(&mut client, &any).ok()?;
            (listed == [binding.clone()]).then_some(())
        });
    }
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // Explicit replica assignments are kept as given, preferred leader first.
    let assigned: &[&[i32]] = &[&[2, 3, 1], &[3, 1, 2]];
    let created = admin
        .create_topics(
            &[NewTopic::new(
                "assigned",
                2,
                TopicReplication::Variable(assigned),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for("the assigned topic led by its preferred replicas", || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .ok()?;
        let metadata = consumer
            .fetch_metadata(Some("assigned"), Duration::from_secs(5))
            .ok()?;
        let topic = metadata.topics().first()?;
        let mut found: Vec<(i32, i32, Vec<i32>)> = topic
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader(), p.replicas().to_vec()))
            .collect();
        found.sort();
        (found == vec![(0, 2, vec![2, 3, 1]), (1, 3, vec![3, 1, 2])]).then_some(())
    });
    wait_for("every partition led with three in-sync replicas", || {
        partition_states(&bootstrap)?
            .iter()
            .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
            .then_some(())
    });

    // Write continuously; kill the leader of a partition picked by the seed part way.
    let writer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "90000"),
        ],
    );
    let victim_partition = (seed % PARTITIONS as u64) as i32;
    let kill_at = RECORDS / 4 + (seed / 7 % (RECORDS as u64 / 2)) as usize;
    let mut acknowledged = 0usize;
    let mut killed = None;
    for i in 0..RECORDS {
        if i == kill_at {
            // Each send was awaited: everything before the kill is acknowledged.
            let states = partition_states(&bootstrap).expect("metadata");
            let leader = states[victim_partition as usize].0;
            let member = members.iter_mut().find(|m| m.id == leader).unwrap();
            eprintln!(
                "killing broker {leader}, leader of {TOPIC}-{victim_partition}, after {i} records"
            );
            member.process.take().unwrap().kill();
            killed = Some(leader);
        }
        let key = format!("key-{}", i % 30);
        let value = i.to_string();
        let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
        writer
            .send(record, Duration::from_secs(0))
            .await
            .unwrap_or_else(|(e, _)| panic!("record {i} not acknowledged: {e}"));
        acknowledged += 1;
    }
    let killed = killed.expect("a broker was killed");
    assert_eq!(acknowledged, RECORDS);

    // Every acknowledged record is there with the killed broker still down.
    check_exactly_once(&bootstrap, seed);

    // The killed broker returns, catches up and rejoins every ISR.
    let member = members.iter_mut().find(|m| m.id == killed).unwrap();
    member.process = Some(start(&binary, member, &voters, &tier_url));
    wait_for("the returned broker back in every ISR", || {
        partition_states(&bootstrap)?
            .iter()
            .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
            .then_some(())
    });

    // Two of three down (the metadata quorum with them): the leader of partition 0 is left. An
    // acks=all write to it is never acknowledged and never readable: the followers it counts as
    // in sync are gone and no ISR change can be committed without a quorum.
    let survivor = partition_states(&bootstrap).expect("metadata")[0].0;
    for member in members.iter_mut().filter(|m| m.id != survivor) {
        member.process.take().unwrap().kill();
    }
    let alone = members
        .iter()
        .find(|m| m.id == survivor)
        .unwrap()
        .listen
        .to_string();
    let end_before = log_end(&alone, 0);
    let strict = producer(
        &alone,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "3000"),
        ],
    );
    let refused = strict
        .send(
            FutureRecord::to(TOPIC)
                .partition(0)
                .key("key-0")
                .payload("refused"),
            Duration::from_secs(0),
        )
        .await;
    assert!(
        refused.is_err(),
        "acknowledged with two of three brokers down: {refused:?}"
    );
    assert_eq!(log_end(&alone, 0), end_before, "nothing readable");

    // One broker back: acks=all is served again.
    let returning = members.iter_mut().find(|m| m.id != survivor).unwrap();
    returning.process = Some(start(&binary, returning, &voters, &tier_url));
    let again = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "60000"),
        ],
    );
    again
        .send(
            FutureRecord::to(TOPIC)
                .partition(0)
                .key("key-0")
                .payload("served"),
            Duration::from_secs(0),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("acks=all after a broker returned: {e}"));
    let started = Instant::now();
    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
    assert!(started.elapsed() < DEADLINE);
}
