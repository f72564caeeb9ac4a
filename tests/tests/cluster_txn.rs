//! Exactly-once on a three-broker cluster of `strata serve` processes: a consume-transform-produce
//! loop (librdkafka, `send_offsets_to_transaction`, read_committed) keeps going while brokers are
//! killed with SIGKILL in the middle of its transactions: the transaction coordinator, a leader
//! of an output partition, the group's coordinator. In the end the output holds every input
//! record transformed exactly once, and the group's offsets are at the end of the input.
//!
//! Which broker dies when comes from a printed seed: `STRATA_TEST_SEED=<seed>` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_tests::{
    ChildBroker, ClusterMember, DEADLINE, cluster_bootstrap, cluster_members, partition_states,
    quorum_voters, start_member, test_seed, wait_for, wait_for_brokers,
};

const INPUT: &str = "in";
const OUTPUT: &str = "out";
const PARTITIONS: i32 = 2;
const RECORDS: usize = 60;
const PER_TRANSACTION: usize = 6;
const TXN_ID: &str = "transformer";
const GROUP: &str = "transformer-group";
/// `transaction.state.log.num.partitions` and `offsets.topic.num.partitions` of this cluster.
const INTERNAL_PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(30);

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
            "--set",
            "transaction.state.log.num.partitions=3",
            "--set",
            "offsets.topic.num.partitions=3",
        ],
    )
}

/// Kafka's partition of a key in an internal topic: `abs(key.hashCode()) % partitions`.
fn internal_partition(key: &str) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    (if hash == i32::MIN { 0 } else { hash.abs() }) % INTERNAL_PARTITIONS
}

/// Waits until every partition of `topic` has a leader and all three replicas in sync.
fn wait_in_sync(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i32, Vec<i32>)> {
    wait_for(&format!("{topic} fully in sync"), || {
        let states = partition_states(bootstrap, topic, partitions)?;
        states
            .iter()
            .all(|(leader, isr)| *leader >= 0 && isr.len() == 3)
            .then_some(states)
    })
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[INPUT]).unwrap();
    consumer
}

fn producer(bootstrap: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", TXN_ID)
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "30000")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let started = Instant::now();
    loop {
        match producer.init_transactions(TIMEOUT) {
            Ok(()) => return producer,
            Err(e) if started.elapsed() < DEADLINE => {
                eprintln!("init_transactions: {e}; retrying");
            }
            Err(e) => panic!("init_transactions: {e}"),
        }
    }
}

/// One transaction of the loop: reads up to [`PER_TRANSACTION`] records, writes them
/// transformed, commits the group's offsets with them. `before_commit` runs between the writes
/// and the commit (where the test kills a broker). Returns the input values committed, or the
/// error that ended the transaction.
fn one_transaction(
    consumer: &BaseConsumer,
    producer: &BaseProducer,
    before_commit: &mut dyn FnMut(),
) -> Result<Vec<String>, KafkaError> {
    producer.begin_transaction()?;
    let mut batch = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let started = Instant::now();
    while batch.len() < PER_TRANSACTION && started.elapsed() < Duration::from_secs(5) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            // A killed broker shows as transport errors; the client reconnects by itself.
            let Ok(m) = m.inspect_err(|e| eprintln!("poll: {e}")) else {
                continue;
            };
            let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            next.insert(m.partition(), m.offset() + 1);
            batch.push((m.partition(), value));
        }
    }
    for (p, value) in &batch {
        let out = format!("x{value}");
        let mut record = BaseRecord::to(OUTPUT).partition(*p).key(&out).payload(&out);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    producer.flush(TIMEOUT)?;
    before_commit();
    if !next.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets
                .add_partition_offset(INPUT, *p, Offset::Offset(*o))
                .unwrap();
        }
        let metadata = consumer.group_metadata().expect("group metadata");
        producer.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)?;
    }
    let started = Instant::now();
    loop {
        match producer.commit_transaction(TIMEOUT) {
            Ok(()) => return Ok(batch.into_iter().map(|(_, v)| v).collect()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && started.elapsed() < DEADLINE => {
                eprintln!("commit: {e}; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn consume_transform_produce_survives_killed_coordinators_and_leaders() {
    let seed = test_seed("cluster_txn");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for m in &mut members {
        m.process = Some(start(&binary, m, &voters));
    }
    let bootstrap = cluster_bootstrap(&members);
    wait_for_brokers(&bootstrap, 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        for topic in [INPUT, OUTPUT] {
            let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(3));
            let results = admin
                .create_topics([&new], &AdminOptions::new())
                .await
                .unwrap();
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
    });
    wait_in_sync(&bootstrap, INPUT, PARTITIONS);
    wait_in_sync(&bootstrap, OUTPUT, PARTITIONS);

    let plain: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..RECORDS {
        let value = format!("{i}");
        plain
            .send(
                BaseRecord::to(INPUT)
                    .partition((i % 2) as i32)
                    .key(&value)
                    .payload(&value),
            )
            .unwrap();
    }
    plain.flush(TIMEOUT).unwrap();
    drop(plain);

    // Two kills, each in the middle of a transaction chosen by the seed, each of a broker chosen
    // by the seed among the transaction coordinator, a leader of the output, and the group
    // coordinator.
    let mut rng = seed;
    let mut next_random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let kill_at: BTreeSet<usize> = [1 + next_random(3) as usize, 5 + next_random(3) as usize]
        .into_iter()
        .collect();
    let victims: Vec<u64> = (0..2).map(|_| next_random(3)).collect();
    eprintln!(
        "killing in transactions {kill_at:?}, victims (0 txn coordinator, 1 output leader, 2 group coordinator) {victims:?}"
    );

    let mut consumer = consumer(&bootstrap);
    let mut producer = producer(&bootstrap);
    let mut killed: Option<usize> = None;
    let mut kills = 0;
    let started = Instant::now();
    let mut transaction = 0;
    // Until a transaction finds nothing more to read and the group's offsets are at the end of
    // the input (a commit whose answer was lost may have committed more than the loop saw).
    loop {
        assert!(
            started.elapsed() < 4 * DEADLINE,
            "seed {seed}: the loop did not get through the input"
        );
        let mut before_commit = || {
            if !kill_at.contains(&transaction) || kills >= victims.len() {
                return;
            }
            // The previous victim is back and in sync before the next goes.
            if let Some(index) = killed.take() {
                members[index].process = Some(start(&binary, &members[index], &voters));
                wait_for_brokers(&bootstrap, 3);
                for (topic, partitions) in [
                    (INPUT, PARTITIONS),
                    (OUTPUT, PARTITIONS),
                    ("__transaction_state", INTERNAL_PARTITIONS),
                    ("__consumer_offsets", INTERNAL_PARTITIONS),
                ] {
                    wait_in_sync(&bootstrap, topic, partitions);
                }
            }
            let (topic, partition) = match victims[kills] {
                0 => ("__transaction_state", internal_partition(TXN_ID)),
                1 => (OUTPUT, 0),
                _ => ("__consumer_offsets", internal_partition(GROUP)),
            };
            let count = if topic == OUTPUT {
                PARTITIONS
            } else {
                INTERNAL_PARTITIONS
            };
            let states = partition_states(&bootstrap, topic, count).expect("partition states");
            let leader = states[partition as usize].0;
            let index = members.iter().position(|m| m.id == leader).unwrap();
            eprintln!(
                "transaction {transaction}: killing broker {leader}, leader of {topic}-{partition}"
            );
            members[index].process.take().unwrap().kill();
            killed = Some(index);
            kills += 1;
        };
        match one_transaction(&consumer, &producer, &mut before_commit) {
            Ok(values) if values.is_empty() && kills == victims.len() => {
                let at_end = consumer.committed(TIMEOUT).is_ok_and(|c| {
                    (0..PARTITIONS).all(|p| {
                        c.find_partition(INPUT, p)
                            .is_some_and(|e| e.offset() == Offset::Offset((RECORDS / 2) as i64))
                    })
                });
                if at_end {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("transaction {transaction} failed: {e}");
                let abortable = matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort());
                let aborted = abortable && producer.abort_transaction(TIMEOUT).is_ok();
                if !aborted {
                    // Fatal (fenced) or the abort failed: a new instance takes over.
                    drop(producer);
                    producer = self::producer(&bootstrap);
                }
                // Back to the committed offsets: a new member of the group resumes from them.
                drop(consumer);
                consumer = self::consumer(&bootstrap);
            }
        }
        transaction += 1;
    }
    drop(producer);
    drop(consumer);

    // The output, read_committed: every input exactly once.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "verifier")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(OUTPUT, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&assignment).unwrap();
    let mut values: Vec<String> = Vec::new();
    let started = Instant::now();
    while values.len() < RECORDS {
        assert!(
            started.elapsed() < DEADLINE,
            "read {} of {RECORDS}",
            values.len()
        );
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            let Ok(m) = m.inspect_err(|e| eprintln!("verifier poll: {e}")) else {
                continue;
            };
            values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    // Nothing more arrives: the high watermark (last stable offset) is where the reads ended.
    for p in 0..PARTITIONS {
        let (_, end) = reader.fetch_watermarks(OUTPUT, p, TIMEOUT).unwrap();
        let position = reader.position().unwrap();
        let at = position
            .find_partition(OUTPUT, p)
            .map(|e| e.offset())
            .unwrap();
        if let Offset::Offset(at) = at {
            assert!(at <= end, "partition {p}: read to {at} past {end}");
        }
    }
    let distinct: BTreeSet<&String> = values.iter().collect();
    let want: Vec<String> = (0..RECORDS).map(|i| format!("x{i}")).collect();
    assert_eq!(
        distinct,
        want.iter().collect(),
        "seed {seed}: every input transformed"
    );
    assert_eq!(values.len(), RECORDS, "seed {seed}: nothing twice");
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        wanted.add_partition(INPUT, p);
    }
    let offsets = group.committed_offsets(wanted, TIMEOUT).unwrap();
    for e in offsets.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset((RECORDS / 2) as i64),
            "seed {seed}: the group's offsets are at the end of the input"
        );
    }
}
