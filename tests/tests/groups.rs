//! Consumer groups with librdkafka: partition sharing, hand-over, committed offsets across restarts
//! and SIGKILL, independent groups, auto.offset.reset, and the coordinator's error codes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use strata_tests::{ChildBroker, DEADLINE, TestBroker, call, create_topic, free_port, producer};

const GROUP_SETTINGS: &[(&str, &str)] = &[("group.initial.rebalance.delay.ms", "0")];

async fn produce(bootstrap: &str, topic: &str, count: usize) {
    let producer = producer(bootstrap, &[]);
    for i in 0..count {
        let value = format!("{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&value).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
}

fn group_consumer(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().unwrap()
}

fn assigned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Polls every consumer until `done` holds for their assignments, failing after the deadline.
fn poll_until(consumers: &[&BaseConsumer], what: &str, done: impl Fn(&[BTreeSet<i32>]) -> bool) {
    let start = Instant::now();
    loop {
        for c in consumers {
            if let Some(Err(e)) = c.poll(Duration::from_millis(50)) {
                panic!("consumer error: {e}");
            }
        }
        let assignments: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        if done(&assignments) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {assignments:?}"
        );
    }
}

fn shares_all(assignments: &[BTreeSet<i32>], partitions: i32) -> bool {
    let total: usize = assignments.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = assignments.iter().flatten().copied().collect();
    assignments.iter().all(|a| !a.is_empty())
        && total == partitions as usize
        && union == (0..partitions).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_hand_them_over_when_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), GROUP_SETTINGS).await;
    create_topic(&broker.bootstrap, "shared", 6).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let consumers: Vec<BaseConsumer> = (0..3)
            .map(|_| group_consumer(&bootstrap, "sharers", &[]))
            .collect();
        for c in &consumers {
            c.subscribe(&["shared"]).unwrap();
        }
        let all: Vec<&BaseConsumer> = consumers.iter().collect();
        poll_until(&all, "three members to share six partitions", |a| {
            shares_all(a, 6)
        });
        // One member leaves (LeaveGroup on close): the other two take its partitions.
        let mut consumers = consumers;
        let leaving = consumers.pop().unwrap();
        drop(leaving);
        let rest: Vec<&BaseConsumer> = consumers.iter().collect();
        poll_until(&rest, "two members to own all six partitions", |a| {
            shares_all(a, 6)
        });
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// Consumes `count` records as group `group`, commits what it read, and returns the committed
/// offsets by partition.
fn consume_and_commit(
    bootstrap: &str,
    group: &str,
    topic: &str,
    count: usize,
) -> BTreeMap<i32, i64> {
    let consumer = group_consumer(bootstrap, group, &[]);
    consumer.subscribe(&[topic]).unwrap();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut read = 0;
    let start = Instant::now();
    while read < count {
        assert!(start.elapsed() < DEADLINE, "read {read} of {count}");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            next.insert(m.partition(), m.offset() + 1);
            read += 1;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    next
}

/// Reads as group `group` until every partition reaches `ends`; returns the offsets read.
/// `from` is where each partition is expected to start (the committed offset), so partitions with
/// nothing left to read count as done.
fn resume(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    from: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, Vec<i64>> {
    let consumer = group_consumer(bootstrap, group, &[]);
    consumer.subscribe(&[topic]).unwrap();
    let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let start = Instant::now();
    let done = |seen: &BTreeMap<i32, Vec<i64>>| {
        ends.iter().all(|(p, end)| {
            seen.get(p).and_then(|v| v.last()) == Some(&(end - 1))
                || from.get(p).copied().unwrap_or(0) == *end
        })
    };
    while !done(&seen) {
        assert!(start.elapsed() < DEADLINE, "resumed reading: {seen:?}");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            seen.entry(m.partition()).or_default().push(m.offset());
        }
    }
    seen
}

fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer = strata_tests::consumer(bootstrap);
    (0..partitions)
        .map(|p| {
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(30))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}

fn assert_resumed_exactly(
    committed: &BTreeMap<i32, i64>,
    seen: &BTreeMap<i32, Vec<i64>>,
    ends: &BTreeMap<i32, i64>,
) {
    for (p, end) in ends {
        let from = committed.get(p).copied().unwrap_or(0);
        let expected: Vec<i64> = (from..*end).collect();
        assert_eq!(
            seen.get(p).cloned().unwrap_or_default(),
            expected,
            "partition {p} resumes at {from}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart_and_other_groups_read_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_in(dir.path(), GROUP_SETTINGS).await;
    create_topic(&broker.bootstrap, "resume", 2).await;
    produce(&broker.bootstrap, "resume", 100).await;
    let bootstrap = broker.bootstrap.clone();
    let committed =
        tokio::task::spawn_blocking(move || consume_and_commit(&bootstrap, "g1", "resume", 60))
            .await
            .unwrap();
    broker.restart().await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let ends = end_offsets(&bootstrap, "resume", 2);
        let seen = resume(&bootstrap, "g1", "resume", &ends, &committed);
        assert_resumed_exactly(&committed, &seen, &ends);
        // A second group reads everything from the start.
        let seen = resume(&bootstrap, "g2", "resume", &ends, &BTreeMap::new());
        assert_resumed_exactly(&BTreeMap::new(), &seen, &ends);
    })
    .await
    .unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_sigkill() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let settings = [
        "--set",
        "group.initial.rebalance.delay.ms=0",
        "--set",
        "num.partitions=3",
    ];
    let broker = ChildBroker::start(&binary, &data, free_port(), &settings);
    produce(&broker.bootstrap, "killed", 90).await;
    let bootstrap = broker.bootstrap.clone();
    let committed =
        tokio::task::spawn_blocking(move || consume_and_commit(&bootstrap, "gk", "killed", 50))
            .await
            .unwrap();
    broker.kill();
    let broker = ChildBroker::start(&binary, &data, free_port(), &settings);
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let ends = end_offsets(&bootstrap, "killed", 3);
        let seen = resume(&bootstrap, "gk", "killed", &ends, &committed);
        assert_resumed_exactly(&committed, &seen, &ends);
    })
    .await
    .unwrap();

    // The admin command sees the group's committed offsets and lag.
    let output = std::process::Command::new(&binary)
        .args([
            "groups",
            "describe",
            "gk",
            "--json",
            "--bootstrap",
            &broker.bootstrap,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("\"committed_offset\"") && text.contains("\"lag\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_offset_reset_latest_sees_only_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), GROUP_SETTINGS).await;
    create_topic(&broker.bootstrap, "fresh", 1).await;
    produce(&broker.bootstrap, "fresh", 20).await;
    // Keep producing one record at a time until the consumer sees one: it must be a new one.
    let consumer = {
        let bootstrap = broker.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = group_consumer(&bootstrap, "latest", &[("auto.offset.reset", "latest")]);
            consumer.subscribe(&["fresh"]).unwrap();
            poll_until(&[&consumer], "the assignment", |a| a[0].len() == 1);
            consumer
        })
        .await
        .unwrap()
    };
    let producer = producer(&broker.bootstrap, &[]);
    let start = Instant::now();
    let first = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the consumer never saw a new record"
        );
        producer
            .send(
                FutureRecord::to("fresh").key("k").payload("new"),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            break m.unwrap().offset();
        }
    };
    assert!(
        first >= 20,
        "auto.offset.reset=latest skipped the 20 old records, got offset {first}"
    );
    broker.stop().await;
}

/// Raw protocol: a stale generation gets ILLEGAL_GENERATION, an unknown member UNKNOWN_MEMBER_ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_generations_and_unknown_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), GROUP_SETTINGS).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&bootstrap).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let group = GroupId(StrBytes::from_static_str("raw"));
        let join = |member: &str| {
            JoinGroupRequest::default()
                .with_group_id(group.clone())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(StrBytes::from_string(member.to_string()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"\0\0")),
                ])
        };
        let first: JoinGroupResponse = call(&mut s, &join(""), 5);
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        let joined: JoinGroupResponse = call(&mut s, &join(&first.member_id), 5);
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        let member = joined.member_id.clone();
        let synced: SyncGroupResponse = call(
            &mut s,
            &SyncGroupRequest::default()
                .with_group_id(group.clone())
                .with_generation_id(1)
                .with_member_id(member.clone()),
            3,
        );
        assert_eq!(synced.error_code, 0);
        let heartbeat = |generation: i32, member: &StrBytes| {
            HeartbeatRequest::default()
                .with_group_id(group.clone())
                .with_generation_id(generation)
                .with_member_id(member.clone())
        };
        let ok: HeartbeatResponse = call(&mut s, &heartbeat(1, &member), 3);
        assert_eq!(ok.error_code, 0);
        let stale: HeartbeatResponse = call(&mut s, &heartbeat(0, &member), 3);
        assert_eq!(stale.error_code, 22, "ILLEGAL_GENERATION");
        let unknown: HeartbeatResponse = call(
            &mut s,
            &heartbeat(1, &StrBytes::from_static_str("nobody")),
            3,
        );
        assert_eq!(unknown.error_code, 25, "UNKNOWN_MEMBER_ID");
        let rejoin_unknown: JoinGroupResponse = call(&mut s, &join("made-up-member"), 5);
        assert_eq!(rejoin_unknown.error_code, 25, "UNKNOWN_MEMBER_ID");
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// Raw protocol: the codes of commits, leaves and deletions the coordinator refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commits_leaves_and_deletions_get_kafka_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), GROUP_SETTINGS).await;
    create_topic(&broker.bootstrap, "refusals", 1).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&bootstrap).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let group = |name: &'static str| GroupId(StrBytes::from_static_str(name));
        let delete = |s: &mut TcpStream, name: &'static str| -> i16 {
            let request = DeleteGroupsRequest::default().with_groups_names(vec![group(name)]);
            let response: DeleteGroupsResponse = call(s, &request, 2);
            response.results[0].error_code
        };
        assert_eq!(delete(&mut s, "nope"), 69, "GROUP_ID_NOT_FOUND");
        let leave_unknown: LeaveGroupResponse = call(
            &mut s,
            &LeaveGroupRequest::default()
                .with_group_id(group("nope"))
                .with_members(vec![
                    MemberIdentity::default().with_member_id(StrBytes::from_static_str("m")),
                ]),
            3,
        );
        assert_eq!(leave_unknown.error_code, 25, "UNKNOWN_MEMBER_ID");
        let offset_delete: OffsetDeleteResponse = call(
            &mut s,
            &OffsetDeleteRequest::default()
                .with_group_id(group("nope"))
                .with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("refusals")))
                        .with_partitions(vec![
                            OffsetDeleteRequestPartition::default().with_partition_index(0),
                        ]),
                ]),
            0,
        );
        assert_eq!(offset_delete.error_code, 69, "GROUP_ID_NOT_FOUND");

        // A member joins "busy" and is waiting for its assignment.
        let join = |member: &StrBytes| {
            JoinGroupRequest::default()
                .with_group_id(group("busy"))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(member.clone())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"\0\0")),
                ])
        };
        let first: JoinGroupResponse = call(&mut s, &join(&StrBytes::default()), 5);
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        let joined: JoinGroupResponse = call(&mut s, &join(&first.member_id), 5);
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!(delete(&mut s, "busy"), 68, "NON_EMPTY_GROUP");
        let commit = |s: &mut TcpStream, name: &'static str, generation_id: i32| -> i16 {
            let request = OffsetCommitRequest::default()
                .with_group_id(group(name))
                .with_generation_id_or_member_epoch(generation_id)
                .with_member_id(joined.member_id.clone())
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("refusals")))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1),
                        ]),
                ]);
            let response: OffsetCommitResponse = call(s, &request, 8);
            response.topics[0].partitions[0].error_code
        };
        assert_eq!(commit(&mut s, "busy", 7), 22, "ILLEGAL_GENERATION");
        assert_eq!(commit(&mut s, "busy", 1), 27, "REBALANCE_IN_PROGRESS");
        assert_eq!(commit(&mut s, "", 1), 24, "INVALID_GROUP_ID");

        let left: LeaveGroupResponse = call(
            &mut s,
            &LeaveGroupRequest::default()
                .with_group_id(group("busy"))
                .with_members(vec![
                    MemberIdentity::default().with_member_id(joined.member_id.clone()),
                ]),
            3,
        );
        assert_eq!(
            (left.error_code, left.members[0].error_code),
            (0, 0),
            "{left:?}"
        );
        assert_eq!(delete(&mut s, "busy"), 0, "an empty group is deleted");
        assert_eq!(
            delete(&mut s, "busy"),
            69,
            "GROUP_ID_NOT_FOUND once deleted"
        );
    })
    .await
    .unwrap();
    broker.stop().await;
}
