//! Transactions with librdkafka on a single broker: interleaved commits and aborts across
//! partitions read with read_committed and read_uncommitted, the last stable offset, zombie
//! fencing, a consume-transform-produce loop with `send_offsets_to_transaction`, timeouts, and
//! all of it across a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strata_tests::{DEADLINE, TestBroker, create_topic, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional(bootstrap: &str, id: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: BaseProducer = config.create().expect("producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, value: &str) {
    let mut record = BaseRecord::to(topic)
        .partition(partition)
        .key(value)
        .payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(_), back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
}

fn reader(bootstrap: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "txn-readers")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Reads `topic`'s partitions from the start until every partition has shown a record whose
/// value starts with `end`; returns the values read, in order per partition.
fn read_until_end(
    bootstrap: &str,
    isolation: &str,
    topic: &str,
    partitions: i32,
    end: &str,
) -> BTreeMap<i32, Vec<String>> {
    let consumer = reader(bootstrap, isolation);
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut ended = BTreeSet::new();
    let started = Instant::now();
    while ended.len() < partitions as usize {
        assert!(
            started.elapsed() < DEADLINE,
            "{isolation}: only {ended:?} ended; read {seen:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("consume");
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            if value.starts_with(end) {
                ended.insert(message.partition());
            }
            seen.entry(message.partition()).or_default().push(value);
        }
    }
    seen
}

/// Two transactional producers interleave transactions over three partitions, committing some
/// and aborting others; read_committed sees exactly the committed records, read_uncommitted sees
/// every record; both again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_commits_and_aborts_read_committed_and_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "txn", 3).await;
    let bootstrap = broker.bootstrap.clone();
    let (committed, all) = tokio::task::spawn_blocking(move || {
        let a = transactional(&bootstrap, "producer-a", &[]);
        let b = transactional(&bootstrap, "producer-b", &[]);
        let mut committed: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let mut all: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for round in 0..12 {
            a.begin_transaction().unwrap();
            b.begin_transaction().unwrap();
            let mut pending: [Vec<(i32, String)>; 2] = Default::default();
            for i in 0..9 {
                for (n, producer) in [&a, &b].into_iter().enumerate() {
                    let partition = (i + n as i32 + round) % 3;
                    let value = format!("r{round}-p{n}-{i}");
                    send(producer, "txn", partition, &value);
                    pending[n].push((partition, value));
                }
            }
            // a commits two rounds out of three, b every other round; in alternating order.
            let commit_a = round % 3 != 2;
            let commit_b = round % 2 == 0;
            let order: [(usize, &BaseProducer, bool); 2] = if round % 2 == 0 {
                [(0, &a, commit_a), (1, &b, commit_b)]
            } else {
                [(1, &b, commit_b), (0, &a, commit_a)]
            };
            for (n, producer, commit) in order {
                if commit {
                    producer.commit_transaction(TIMEOUT).unwrap();
                } else {
                    producer.flush(TIMEOUT).unwrap();
                    producer.abort_transaction(TIMEOUT).unwrap();
                }
                for (p, v) in &pending[n] {
                    all.entry(*p).or_default().push(v.clone());
                    if commit {
                        committed.entry(*p).or_default().push(v.clone());
                    }
                }
            }
        }
        a.begin_transaction().unwrap();
        for p in 0..3 {
            let value = format!("end-{p}");
            send(&a, "txn", p, &value);
            committed.entry(p).or_default().push(value.clone());
            all.entry(p).or_default().push(value);
        }
        a.commit_transaction(TIMEOUT).unwrap();
        (committed, all)
    })
    .await
    .unwrap();

    for round in 0..2 {
        let bootstrap = broker.bootstrap.clone();
        let (c, a) = (committed.clone(), all.clone());
        tokio::task::spawn_blocking(move || {
            // Records of the two producers interleave within a partition: compare each
            // partition's records sorted (every one exactly once), and each producer's order.
            let check = |isolation: &str, want: &BTreeMap<i32, Vec<String>>| {
                let read = read_until_end(&bootstrap, isolation, "txn", 3, "end-");
                for p in 0..3 {
                    let (mut got, mut wanted) = (read[&p].clone(), want[&p].clone());
                    for producer in ["-p0-", "-p1-"] {
                        let order = |v: &[String]| -> Vec<String> {
                            v.iter().filter(|x| x.contains(producer)).cloned().collect()
                        };
                        assert_eq!(order(&got), order(&wanted), "{isolation} {p} {producer}");
                    }
                    got.sort();
                    wanted.sort();
                    assert_eq!(got, wanted, "{isolation} partition {p} (round {round})");
                }
            };
            check("read_committed", &c);
            check("read_uncommitted", &a);
        })
        .await
        .unwrap();
        // The aborted transactions are known after a restart too.
        broker.restart().await;
    }
    broker.stop().await;
}

/// An open transaction holds the last stable offset back: a read_committed consumer's latest
/// offset stays below it until the commit, and it reads nothing of it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holds_the_last_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "lso", 1).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let plain: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        plain
            .send(
                BaseRecord::to("lso")
                    .partition(0)
                    .key("a")
                    .payload("before"),
            )
            .unwrap();
        plain.flush(TIMEOUT).unwrap();
        let txn = transactional(&bootstrap, "lso-producer", &[]);
        txn.begin_transaction().unwrap();
        for i in 0..5 {
            send(&txn, "lso", 0, &format!("open-{i}"));
        }
        txn.flush(TIMEOUT).unwrap();
        plain
            .send(BaseRecord::to("lso").partition(0).key("a").payload("after"))
            .unwrap();
        plain.flush(TIMEOUT).unwrap();

        let committed = reader(&bootstrap, "read_committed");
        let uncommitted = reader(&bootstrap, "read_uncommitted");
        let (_, hw) = uncommitted.fetch_watermarks("lso", 0, TIMEOUT).unwrap();
        let (_, lso) = committed.fetch_watermarks("lso", 0, TIMEOUT).unwrap();
        assert_eq!(hw, 7);
        assert_eq!(lso, 1, "the open transaction starts at offset 1");

        txn.commit_transaction(TIMEOUT).unwrap();
        // The marker is at offset 7; every transaction is decided.
        wait_for("the last stable offset to pass the marker", || {
            let (_, lso) = committed.fetch_watermarks("lso", 0, TIMEOUT).unwrap();
            (lso == 8).then_some(())
        });
        let read = read_until_end(&bootstrap, "read_committed", "lso", 1, "after");
        let want: Vec<String> = ["before"]
            .into_iter()
            .map(String::from)
            .chain((0..5).map(|i| format!("open-{i}")))
            .chain(["after".to_string()])
            .collect();
        assert_eq!(read[&0], want);
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// A second instance with the same transactional id fences the first: the first's open
/// transaction is aborted and its commit fails; the second's records are the only ones read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_producer_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(dir.path(), &[]).await;
    create_topic(&broker.bootstrap, "zombie", 1).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let zombie = transactional(&bootstrap, "same-id", &[]);
        zombie.begin_transaction().unwrap();
        send(&zombie, "zombie", 0, "from-the-zombie");
        zombie.flush(TIMEOUT).unwrap();

        let fresh = transactional(&bootstrap, "same-id", &[]);
        fresh.begin_transaction().unwrap();
        send(&fresh, "zombie", 0, "from-the-new-instance");
        fresh.commit_transaction(TIMEOUT).unwrap();

        let error = zombie
            .commit_transaction(TIMEOUT)
            .expect_err("the zombie's commit must fail");
        let fenced = match &error {
            KafkaError::Transaction(e) => e.is_fatal() || e.txn_requires_abort(),
            _ => false,
        };
        assert!(fenced, "unexpected error: {error:?}");

        let read = read_until_end(&bootstrap, "read_committed", "zombie", 1, "from-the-new");
        assert_eq!(read[&0], vec!["from-the-new-instance".to_string()]);
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// A transaction left open past `transaction.timeout.ms` is aborted by the coordinator: the last
/// stable offset moves on, read_committed never sees it, the producer is fenced (as in Kafka),
/// and a new instance with the same id works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_past_its_timeout_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "200",
    )];
    let broker = TestBroker::start_in(dir.path(), &settings).await;
    create_topic(&broker.bootstrap, "hung", 1).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let producer = transactional(
            &bootstrap,
            "hung-producer",
            &[
                ("transaction.timeout.ms", "2000"),
                ("message.timeout.ms", "2000"),
            ],
        );
        producer.begin_transaction().unwrap();
        send(&producer, "hung", 0, "never-committed");
        producer.flush(TIMEOUT).unwrap();
        let committed = reader(&bootstrap, "read_committed");
        let (_, lso) = committed.fetch_watermarks("hung", 0, TIMEOUT).unwrap();
        assert_eq!(lso, 0);
        // The abort marker follows the record: the last stable offset passes both.
        wait_for("the coordinator to abort the hung transaction", || {
            let (_, lso) = committed.fetch_watermarks("hung", 0, TIMEOUT).unwrap();
            (lso == 2).then_some(())
        });
        // As with Kafka, the producer was fenced by the abort (its epoch was bumped): its
        // commit fails for good, and a new instance takes over the transactional id.
        match producer.commit_transaction(TIMEOUT) {
            Err(KafkaError::Transaction(e)) => assert!(e.is_fatal(), "{e:?}"),
            other => panic!("the commit of a timed-out transaction: {other:?}"),
        }
        drop(producer);
        let producer = transactional(&bootstrap, "hung-producer", &[]);
        producer.begin_transaction().unwrap();
        send(&producer, "hung", 0, "committed-after");
        producer.commit_transaction(TIMEOUT).unwrap();
        let read = read_until_end(&bootstrap, "read_committed", "hung", 1, "committed-after");
        assert_eq!(read[&0], vec!["committed-after".to_string()]);
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// Consume-transform-produce: records of `in` are read by a group, transformed into `out` and
/// the group's offsets committed in the same transaction. An aborted round leaves neither
/// output nor offsets; the committed rounds leave both, exactly once, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_commits_offsets_with_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("group.initial.rebalance.delay.ms", "0")];
    let mut broker = TestBroker::start_in(dir.path(), &settings).await;
    create_topic(&broker.bootstrap, "in", 2).await;
    create_topic(&broker.bootstrap, "out", 2).await;
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let plain: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        for i in 0..40 {
            let value = format!("{i}");
            plain
                .send(
                    BaseRecord::to("in")
                        .partition(i % 2)
                        .key(&value)
                        .payload(&value),
                )
                .unwrap();
        }
        plain.flush(TIMEOUT).unwrap();

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "transformer")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&["in"]).unwrap();
        let producer = transactional(&bootstrap, "transformer-1", &[]);
        let mut processed = 0;
        let mut round = 0;
        let started = Instant::now();
        while processed < 40 {
            assert!(started.elapsed() < DEADLINE, "processed {processed} of 40");
            producer.begin_transaction().unwrap();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut batch = Vec::new();
            while batch.len() < 10 && started.elapsed() < DEADLINE {
                if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                    let m = m.unwrap();
                    let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                    next.insert(m.partition(), m.offset() + 1);
                    batch.push((m.partition(), value));
                }
            }
            for (p, value) in &batch {
                send(&producer, "out", *p, &format!("x{value}"));
            }
            let mut offsets = TopicPartitionList::new();
            for (p, o) in &next {
                offsets
                    .add_partition_offset("in", *p, Offset::Offset(*o))
                    .unwrap();
            }
            let metadata = consumer.group_metadata().unwrap();
            producer
                .send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
                .unwrap();
            if round == 1 {
                // Abort one round: its output is dropped, its offsets not committed, and the
                // consumer goes back to the committed offsets to process it again.
                producer.flush(TIMEOUT).unwrap();
                producer.abort_transaction(TIMEOUT).unwrap();
                let committed = consumer.committed(TIMEOUT).unwrap();
                for element in committed.elements() {
                    consumer
                        .seek(
                            element.topic(),
                            element.partition(),
                            match element.offset() {
                                Offset::Offset(o) => Offset::Offset(o),
                                _ => Offset::Beginning,
                            },
                            TIMEOUT,
                        )
                        .unwrap();
                }
            } else {
                producer.commit_transaction(TIMEOUT).unwrap();
                processed += batch.len();
            }
            round += 1;
        }
        let committed = consumer.committed(TIMEOUT).unwrap();
        let offsets: BTreeMap<i32, Offset> = committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(
            offsets,
            [(0, Offset::Offset(20)), (1, Offset::Offset(20))]
                .into_iter()
                .collect()
        );
    })
    .await
    .unwrap();

    for round in 0..2 {
        let bootstrap = broker.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = reader(&bootstrap, "read_committed");
            let mut assignment = TopicPartitionList::new();
            for p in 0..2 {
                assignment
                    .add_partition_offset("out", p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&assignment).unwrap();
            let mut values = Vec::new();
            let started = Instant::now();
            while values.len() < 40 {
                assert!(started.elapsed() < DEADLINE, "read {} of 40", values.len());
                if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                    let m = m.unwrap();
                    values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
                }
            }
            let distinct: BTreeSet<String> = values.iter().cloned().collect();
            let want: BTreeSet<String> = (0..40).map(|i| format!("x{i}")).collect();
            assert_eq!(distinct, want, "round {round}");
            assert_eq!(values.len(), 40, "nothing twice (round {round})");
            // And the group resumes where the transactions left it.
            let group: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "transformer")
                .create()
                .unwrap();
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition("in", 0);
            wanted.add_partition("in", 1);
            let committed = group.committed_offsets(wanted, TIMEOUT).unwrap();
            for e in committed.elements() {
                assert_eq!(e.offset(), Offset::Offset(20), "round {round}");
            }
        })
        .await
        .unwrap();
        broker.restart().await;
    }
    broker.stop().await;
}
