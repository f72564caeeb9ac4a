//! Partition reassignment (KIP-455) and preferred leader election on a three-broker cluster of
//! `strata serve` processes, through the raw Kafka requests the admin tools send
//! (`kafka-reassign-partitions.sh`, `kafka-leader-election.sh`; the rdkafka crate exposes
//! neither).
//!
//! A partition on brokers {1, 2} is reassigned to {2, 3} while an idempotent `acks=all` producer
//! writes to it: the reassignment completes, broker 1 deletes its copy, and every acknowledged
//! record is read back exactly once from each new replica (from broker 3 while broker 2 is down,
//! from broker 2 once it is back). The failover moved leadership off the preferred replica (2);
//! ElectLeaders PREFERRED moves it back.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, ElectLeadersRequest,
    ListPartitionReassignmentsRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, cluster_bootstrap, cluster_members, producer,
    quorum_voters, start_member, wait_for, wait_for_brokers,
};

const TOPIC: &str = "moving";
/// Records written before the reassignment starts; the producer goes on until it completed.
const RECORDS_BEFORE: usize = 300;
/// Kafka error codes the answers are checked for.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const ELECTION_NOT_NEEDED: i16 = 84;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

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
            // The test elects the preferred leader itself.
            "--set",
            "auto.leader.rebalance.enable=false",
        ],
    )
}

/// One request on a fresh connection, decoded; `None` when the broker is unreachable.
fn call<R: Request>(addr: SocketAddr, request: &R, version: i16) -> Option<R::Response> {
    let api_key = ApiKey::try_from(R::KEY).unwrap();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// AlterPartitionReassignments v1 of one partition to `target` (`None` cancels): its error code.
fn reassign(addr: SocketAddr, topic: &str, partition: i32, target: Option<&[i32]>) -> i16 {
    let request = AlterPartitionReassignmentsRequest::default().with_topics(vec![
        ReassignableTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![
                ReassignablePartition::default()
                    .with_partition_index(partition)
                    .with_replicas(target.map(|t| t.iter().map(|&b| BrokerId(b)).collect())),
            ]),
    ]);
    let response = call(addr, &request, 1).expect("an answer");
    assert_eq!(response.error_code, 0);
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.partition_index, partition);
    assert_eq!(
        p.error_code != 0,
        p.error_message.is_some(),
        "an error says why: {p:?}"
    );
    p.error_code
}

/// `(topic, partition, replicas, adding, removing)` of a listed reassignment.
type Listed = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// The reassignments ListPartitionReassignments lists: `(topic, partition, replicas, adding,
/// removing)`.
fn reassignments(addr: SocketAddr) -> Vec<Listed> {
    let response = call(addr, &ListPartitionReassignmentsRequest::default(), 0).expect("an answer");
    assert_eq!(response.error_code, 0);
    let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<_>>();
    response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// ElectLeaders v2 of the given election type for `partitions` (`None`: every partition):
/// `(topic, partition, error code)` of each result.
fn elect(
    addr: SocketAddr,
    election_type: i8,
    partitions: Option<&[(&str, i32)]>,
) -> Vec<(String, i32, i16)> {
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(partitions.map(|ps| {
            ps.iter()
                .map(|(t, p)| {
                    TopicPartitions::default()
                        .with_topic(name(t))
                        .with_partitions(vec![*p])
                })
                .collect()
        }));
    let response = call(addr, &request, 2).expect("an answer");
    assert_eq!(response.error_code, 0);
    response
        .replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(|p| (t.topic.to_string(), p.partition_id, p.error_code))
        })
        .collect()
}

/// `(leader, replicas, isr)` of the partition, as `bootstrap` answers now.
fn partition(bootstrap: &str) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().first()?;
    let p = topic
        .partitions()
        .first()
        .filter(|_| topic.error().is_none())?;
    let sorted = |ids: &[i32]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids
    };
    Some((p.leader(), p.replicas().to_vec(), sorted(p.isr())))
}

/// Reads the partition from its start on `bootstrap` until every value of `acknowledged` was
/// seen; checks that offsets grow and that no value comes twice.
fn read_all(bootstrap: &str, acknowledged: &BTreeSet<usize>, replica: &str) {
    let consumer = strata_tests::consumer(bootstrap);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut seen = BTreeSet::new();
    let mut last_offset = -1;
    let started = Instant::now();
    while !acknowledged.is_subset(&seen) {
        assert!(
            started.elapsed() < DEADLINE,
            "{replica}: read {} values, {} acknowledged ones missing",
            seen.len(),
            acknowledged.difference(&seen).count()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                assert!(m.offset() > last_offset, "{replica}: offsets go back");
                last_offset = m.offset();
                let value: usize = std::str::from_utf8(m.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(seen.insert(value), "{replica}: value {value} twice");
            }
            // A broker that is down is reported while the client finds the leader.
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_under_writes_and_its_preferred_leader_returns() {
    let started = Instant::now();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters));
    }
    let bootstrap = cluster_bootstrap(&members);
    let listeners: Vec<SocketAddr> = members.iter().map(|m| m.listen).collect();
    let addr = |id: i32| listeners[id as usize - 1];
    wait_for_brokers(&bootstrap, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let assigned: &[&[i32]] = &[&[1, 2]];
    let created = admin
        .create_topics(
            &[NewTopic::new(
                TOPIC,
                1,
                TopicReplication::Variable(assigned),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    wait_for("broker 1 leading with both replicas in sync", || {
        (partition(&bootstrap)? == (1, vec![1, 2], vec![1, 2])).then_some(())
    });

    // Refusals, before anything moves.
    assert_eq!(
        reassign(addr(3), TOPIC, 0, None),
        NO_REASSIGNMENT_IN_PROGRESS
    );
    assert_eq!(
        reassign(addr(3), TOPIC, 0, Some(&[2, 9])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(addr(3), TOPIC, 0, Some(&[2, 2])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(addr(3), TOPIC, 0, Some(&[])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(addr(3), "nope", 0, Some(&[2])),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        reassign(addr(3), TOPIC, 1, Some(&[2])),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        elect(addr(2), 0, Some(&[(TOPIC, 0)])),
        vec![(TOPIC.to_string(), 0, ELECTION_NOT_NEEDED)]
    );

    // A producer writes until told to stop; each value is acknowledged or reported.
    let writer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "60000"),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut acknowledged = BTreeSet::new();
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) || next < RECORDS_BEFORE {
                let sends: Vec<_> = (next..next + 20)
                    .map(|i| {
                        let value = i.to_string();
                        let record = FutureRecord::<(), _>::to(TOPIC)
                            .partition(0)
                            .payload(&value);
                        (i, writer.send_result(record).map_err(|(e, _)| e))
                    })
                    .collect();
                next += 20;
                for (i, sent) in sends {
                    match sent {
                        Ok(delivery) => match delivery.await {
                            Ok(Ok(_)) => {
                                acknowledged.insert(i);
                            }
                            other => eprintln!("record {i} not acknowledged: {other:?}"),
                        },
                        Err(e) => eprintln!("record {i} not queued: {e}"),
                    }
                }
            }
            (acknowledged, next)
        }
    });

    wait_for("the first records written", || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .ok()?;
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
            .ok()?;
        (high >= RECORDS_BEFORE as i64 / 2).then_some(())
    });
    assert_eq!(reassign(addr(2), TOPIC, 0, Some(&[2, 3])), 0);
    // While it runs (it may be over already), the partition lists the target, then the replica
    // being removed.
    for listed in reassignments(addr(3)) {
        assert_eq!(
            listed,
            (TOPIC.to_string(), 0, vec![2, 3, 1], vec![3], vec![1])
        );
    }
    wait_for("the reassignment to complete", || {
        (reassignments(addr(1)).is_empty() && partition(&bootstrap)? == (2, vec![2, 3], vec![2, 3]))
            .then_some(())
    });
    assert_eq!(
        reassign(addr(1), TOPIC, 0, None),
        NO_REASSIGNMENT_IN_PROGRESS,
        "completed: nothing to cancel"
    );
    let removed = members[0].dir.join("topics").join(format!("{TOPIC}-0"));
    wait_for("broker 1 to delete its copy", || {
        (!removed.exists()).then_some(())
    });
    assert!(
        members[2]
            .dir
            .join("topics")
            .join(format!("{TOPIC}-0"))
            .is_dir()
    );

    stop.store(true, Ordering::Relaxed);
    let (acknowledged, written) = writing.await.unwrap();
    eprintln!("{} of {written} records acknowledged", acknowledged.len());
    assert!(acknowledged.len() >= RECORDS_BEFORE);
    assert_eq!(acknowledged.len(), written, "every record acknowledged");

    // Broker 3's copy: broker 2 dies, broker 3 leads and serves everything.
    members[1].process.take().unwrap().kill();
    let survivors = format!("{},{}", addr(1), addr(3));
    wait_for("broker 3 leading alone", || {
        (partition(&survivors)? == (3, vec![2, 3], vec![3])).then_some(())
    });
    read_all(&survivors, &acknowledged, "broker 3");

    // Broker 2 returns and catches up; leadership stays with broker 3 until ElectLeaders.
    members[1].process = Some(start(&binary, &members[1], &voters));
    wait_for("broker 2 back in the ISR", || {
        (partition(&bootstrap)? == (3, vec![2, 3], vec![2, 3])).then_some(())
    });
    assert_eq!(
        elect(addr(1), 1, Some(&[(TOPIC, 0)])),
        vec![(TOPIC.to_string(), 0, ELECTION_NOT_NEEDED)],
        "unclean: the partition has a leader"
    );
    assert_eq!(
        elect(addr(1), 0, Some(&[(TOPIC, 0), ("nope", 0)])),
        vec![
            (TOPIC.to_string(), 0, 0),
            ("nope".to_string(), 0, UNKNOWN_TOPIC_OR_PARTITION)
        ]
    );
    wait_for("broker 2 leading again", || {
        (partition(&bootstrap)? == (2, vec![2, 3], vec![2, 3])).then_some(())
    });
    // Every partition asked: those led by their preferred replica, as this one now, are left out.
    let everything = elect(addr(3), 0, None);
    assert!(
        everything
            .iter()
            .all(|(topic, _, code)| topic != TOPIC && *code != ELECTION_NOT_NEEDED),
        "{everything:?}"
    );
    read_all(&addr(2).to_string(), &acknowledged, "broker 2");

    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
    eprintln!("took {:?}", started.elapsed());
}
