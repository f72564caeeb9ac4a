//! Group coordinator failover on a three-broker cluster of `strata serve` processes: group state
//! lives in the replicated `__consumer_offsets`, the group's coordinator is the leader of its
//! partition, and killing that broker with SIGKILL loses neither the committed offsets nor the
//! group. A member that keeps running stays in its generation with the new coordinator, and a new
//! consumer of the group resumes where the commits left off.
//!
//! The group's name (and so which partition and broker coordinate it) comes from a printed seed:
//! `STRATA_TEST_SEED=<seed>` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest,
    RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, cluster_bootstrap, cluster_members, producer,
    quorum_voters, start_member, test_seed, wait_for,
};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;
const RECORDS_PER_PARTITION: i64 = 40;
const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// `offsets.topic.num.partitions`, the default.
const OFFSETS_PARTITIONS: i32 = 10;

fn start(binary: &Path, member: &ClusterMember, voters: &str) -> ChildBroker {
    start_member(
        binary,
        member,
        voters,
        &[
            "--set",
            "broker.session.timeout.ms=2000",
            "--set",
            "replica.lag.time.max.ms=4000",
            "--set",
            "min.insync.replicas=2",
            "--set",
            "default.replication.factor=3",
            "--set",
            "group.initial.rebalance.delay.ms=0",
        ],
    )
}

/// Kafka's partition of a group in `__consumer_offsets`: `abs(groupId.hashCode()) % partitions`.
fn offsets_partition(group: &str) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    (if hash == i32::MIN { 0 } else { hash.abs() }) % OFFSETS_PARTITIONS
}

/// `(leader, isr)` of every `__consumer_offsets` partition (asked for by name), once all exist.
fn offsets_topic(bootstrap: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    strata_tests::partition_states(bootstrap, OFFSETS_TOPIC, OFFSETS_PARTITIONS)
}

/// One request on a fresh connection, decoded.
fn call<R: Request>(addr: SocketAddr, request: &R, version: i16) -> Option<R::Response> {
    let api_key = ApiKey::try_from(R::KEY).unwrap();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    let mut body = Bytes::from(body);
    let _correlation = body.get_i32();
    if api_key.response_header_version(version) >= 1 {
        body.get_u8();
    }
    Some(R::Response::decode(&mut body, version).unwrap())
}

/// The coordinator FindCoordinator (v4) names for `group`, asked of `addr`.
fn find_coordinator(addr: SocketAddr, group: &str) -> Option<i32> {
    let request = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![StrBytes::from_string(group.to_string())]);
    let response = call(addr, &request, 4)?;
    let found = response.coordinators.first()?;
    (found.error_code == 0).then_some(found.node_id.0)
}

/// `(state, member ids)` of `group` as DescribeGroups on `addr` answers, if it coordinates it.
fn describe(addr: SocketAddr, group: &str) -> Option<(String, BTreeSet<String>)> {
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let response = call(addr, &request, 5)?;
    let described = response.groups.first()?;
    (described.error_code == 0).then(|| {
        (
            described.group_state.to_string(),
            described
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect(),
        )
    })
}

/// Whether ListGroups on `addr` lists `group`.
fn lists(addr: SocketAddr, group: &str) -> bool {
    call(addr, &ListGroupsRequest::default(), 4)
        .is_some_and(|r| r.error_code == 0 && r.groups.iter().any(|g| g.group_id.as_str() == group))
}

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "30000")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// Polls until the consumer holds every partition of the topic.
fn wait_assigned(consumer: &BaseConsumer) {
    let started = Instant::now();
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned == PARTITIONS as usize {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "no assignment");
    }
}

/// Commits `offsets` (partition → next offset) synchronously, retrying while the coordinator
/// moves; returns once one attempt succeeded.
fn commit(consumer: &BaseConsumer, offsets: &BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for (p, o) in offsets {
        list.add_partition_offset(TOPIC, *p, Offset::Offset(*o))
            .unwrap();
    }
    wait_for("a commit", || {
        let _ = consumer.poll(Duration::from_millis(50));
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => Some(()),
            Err(e) => {
                eprintln!("commit: {e}");
                None
            }
        }
    });
}

/// What `committed()` returns for the topic's partitions.
fn committed(consumer: &BaseConsumer) -> Option<BTreeMap<i32, i64>> {
    let list = consumer.committed(Duration::from_secs(10)).ok()?;
    list.elements_for_topic(TOPIC)
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_and_the_group_survive_killing_the_coordinator() {
    let seed = test_seed("cluster groups");
    let group = format!("resume-{}", seed % 10_000);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters));
    }
    let bootstrap = cluster_bootstrap(&members);
    let started = Instant::now();

    // The brokers create __consumer_offsets themselves: three replicas per partition once the
    // three are live, hidden from the topic list.
    wait_for("__consumer_offsets led with three in-sync replicas", || {
        offsets_topic(&bootstrap)?
            .iter()
            .all(|(leader, isr)| *leader > 0 && isr.len() == 3)
            .then_some(())
    });
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let listed = client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    assert!(
        listed.topics().iter().all(|t| t.name() != OFFSETS_TOPIC),
        "the internal topic is listed only when asked for by name"
    );

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
    let writer = producer(&bootstrap, &[("acks", "all")]);
    for p in 0..PARTITIONS {
        for i in 0..RECORDS_PER_PARTITION {
            let value = format!("{p}-{i}");
            writer
                .send(
                    FutureRecord::<(), _>::to(TOPIC)
                        .partition(p)
                        .payload(&value),
                    Duration::from_secs(0),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("record {p}-{i} not acknowledged: {e}"));
        }
    }

    // The group's coordinator: the leader of its offsets partition, as FindCoordinator says.
    let partition = offsets_partition(&group);
    let coordinator = offsets_topic(&bootstrap).expect("metadata")[partition as usize].0;
    for m in &members {
        assert_eq!(
            find_coordinator(m.listen, &group),
            Some(coordinator),
            "broker {} names the leader of {OFFSETS_TOPIC}-{partition} (seed {seed})",
            m.id
        );
    }
    eprintln!("group {group}: {OFFSETS_TOPIC}-{partition}, coordinator broker {coordinator}");

    // A member joins, and commits (acks=all on the offsets partition).
    let first = group_consumer(&bootstrap, &group);
    first.subscribe(&[TOPIC]).unwrap();
    wait_assigned(&first);
    let before: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 5 + i64::from(p) * 7)).collect();
    commit(&first, &before);
    assert_eq!(committed(&first), Some(before.clone()));
    let old_address = members.iter().find(|m| m.id == coordinator).unwrap().listen;
    let (state, member_ids) = describe(old_address, &group).expect("described");
    assert_eq!(state, "Stable");
    assert_eq!(member_ids.len(), 1);

    // SIGKILL the coordinator.
    let victim = members.iter_mut().find(|m| m.id == coordinator).unwrap();
    victim.process.take().unwrap().kill();
    let killed_at = Instant::now();
    let survivors: Vec<SocketAddr> = members
        .iter()
        .filter(|m| m.process.is_some())
        .map(|m| m.listen)
        .collect();
    let survivor_bootstrap = survivors
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");

    // Another broker leads the partition and coordinates the group; it took the group over as
    // it was: the same member, stable, no rebalance.
    let (new_coordinator, new_address) = wait_for("a new coordinator", || {
        let id = find_coordinator(survivors[0], &group).filter(|id| *id != coordinator)?;
        let address = members.iter().find(|m| m.id == id)?.listen;
        let (state, ids) = describe(address, &group)?;
        (state == "Stable" && ids == member_ids).then_some((id, address))
    });
    eprintln!(
        "broker {new_coordinator} coordinates {group} {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(
        find_coordinator(survivors[1], &group),
        Some(new_coordinator),
        "every live broker names it"
    );
    // ListGroups answers COORDINATOR_LOAD_IN_PROGRESS while another partition the new
    // coordinator took over still loads (an empty one looks for its groups in the lake).
    wait_for("the group listed by the new coordinator", || {
        lists(new_address, &group).then_some(())
    });

    // The running member commits on with the new coordinator, in its generation.
    let after: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, 11 + i64::from(p) * 9))
        .collect();
    commit(&first, &after);
    assert_eq!(committed(&first), Some(after.clone()));
    assert_eq!(
        describe(new_address, &group).map(|d| d.1),
        Some(member_ids.clone()),
        "no rebalance: the member kept its id"
    );
    drop(first);

    // A new consumer of the group resumes from the committed offsets.
    let second = group_consumer(&survivor_bootstrap, &group);
    second.subscribe(&[TOPIC]).unwrap();
    wait_assigned(&second);
    assert_eq!(committed(&second), Some(after.clone()));
    let mut first_seen: BTreeMap<i32, i64> = BTreeMap::new();
    wait_for("a record from every partition", || {
        if let Some(Ok(m)) = second.poll(Duration::from_millis(100)) {
            first_seen.entry(m.partition()).or_insert(m.offset());
        }
        (first_seen.len() == PARTITIONS as usize).then_some(())
    });
    assert_eq!(
        first_seen, after,
        "consumption resumes at the committed offsets"
    );
    let (state, ids) = describe(new_address, &group).expect("described by the new coordinator");
    assert_eq!(state, "Stable");
    assert_eq!(ids.len(), 1);
    assert!(
        ids.is_disjoint(&member_ids),
        "the new consumer, not the old one"
    );
    assert!(lists(new_address, &group));
    drop(second);

    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
    eprintln!("done in {} ms", started.elapsed().as_millis());
    assert!(started.elapsed() < Duration::from_secs(90));
}
