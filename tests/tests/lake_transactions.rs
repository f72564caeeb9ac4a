//! Transactions and the lake, end to end with librdkafka and an S3 server (s3s-fs over HTTP):
//! transactional producers commit and abort interleaved transactions on a topic whose small
//! segments are offloaded and then deleted locally. The offload waits for an open transaction to
//! be decided; the Parquet files, read with the parquet crate, hold exactly the committed records
//! with their offsets and no control record; consumers of either isolation level read the
//! committed records from the lake, then the local tier, from the beginning and from offsets the
//! lake left out.

use std::path::Path;
use std::time::{Duration, Instant};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strata_lake::{FileEntry, Lake, Manifest};
use strata_tests::{DEADLINE, S3_BUCKET, S3Server, TestBroker};
use tokio::runtime::Handle;

const TIMEOUT: Duration = Duration::from_secs(30);
const SEGMENT_BYTES: usize = 16384;
/// Small segments, deleted locally as soon as the lake holds them; no time-based roll, so the
/// active segment stays local once the producers stop.
const TIERED: &[(&str, &str)] = &[
    ("log.segment.bytes", "16384"),
    ("log.local.retention.ms", "0"),
    ("log.local.retention.bytes", "0"),
    ("log.retention.check.interval.ms", "100"),
];
const TOPIC: &str = "lake-txn";
/// A plain topic whose offloads show that offload passes go on.
const CLOCK: &str = "lake-txn-clock";

/// One record produced: its offset, value, and whether its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    offset: i64,
    value: String,
    committed: bool,
}

async fn create_topics(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics = [TOPIC, CLOCK].map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)));
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// A producer (transactional when `id` is given) whose deliveries a blocking thread waits on.
#[derive(Clone)]
struct Sender {
    producer: FutureProducer,
    runtime: Handle,
}

impl Sender {
    fn new(bootstrap: &str, id: Option<&str>, runtime: Handle) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            // Small batches: segments roll between batches, so many of them fill segments.
            .set("batch.num.messages", "8")
            .set("message.timeout.ms", "30000")
            .set("compression.type", "none");
        if let Some(id) = id {
            // The open transaction of the test must outlive its checks.
            config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", "300000");
        }
        let producer: FutureProducer = config.create().expect("producer");
        if id.is_some() {
            producer.init_transactions(TIMEOUT).expect("init");
        }
        Self { producer, runtime }
    }

    fn send(&self, topic: &str, value: &str) -> DeliveryFuture {
        let mut record = FutureRecord::<(), str>::to(topic)
            .partition(0)
            .payload(value);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
    }

    /// The offset a record was delivered at.
    fn offset(&self, delivery: DeliveryFuture) -> i64 {
        let delivered = self.runtime.block_on(delivery).expect("delivery reported");
        delivered.expect("delivered").offset
    }
}

/// A record sent in a transaction, delivered or not yet known to be.
enum Sent {
    Waiting(DeliveryFuture),
    At(i64),
}

/// One transaction of a [`Sender`]: its records, then its end.
#[derive(Default)]
struct Txn {
    records: Vec<(String, Sent)>,
}

impl Txn {
    fn begin(sender: &Sender) -> Self {
        sender.producer.begin_transaction().expect("begin");
        Self::default()
    }

    fn send(&mut self, sender: &Sender, value: String) {
        let delivery = sender.send(TOPIC, &value);
        self.records.push((value, Sent::Waiting(delivery)));
    }

    /// Where the `i`th record went, once delivered.
    fn offset(&mut self, sender: &Sender, i: usize) -> i64 {
        let sent = &mut self.records[i].1;
        if let Sent::Waiting(_) = sent {
            let Sent::Waiting(delivery) = std::mem::replace(sent, Sent::At(-1)) else {
                unreachable!()
            };
            *sent = Sent::At(sender.offset(delivery));
        }
        match sent {
            Sent::At(offset) => *offset,
            Sent::Waiting(_) => unreachable!(),
        }
    }

    /// Commits or aborts; its records go to `written`. Aborting flushes first (librdkafka
    /// would otherwise drop what is still queued).
    fn end(mut self, sender: &Sender, commit: bool, written: &mut Vec<Written>) {
        let producer = &sender.producer;
        if commit {
            producer.commit_transaction(TIMEOUT).expect("commit");
        } else {
            producer.flush(TIMEOUT).expect("flush");
        }
        for i in 0..self.records.len() {
            let offset = self.offset(sender, i);
            written.push(Written {
                offset,
                value: self.records[i].0.clone(),
                committed: commit,
            });
        }
        if !commit {
            producer.abort_transaction(TIMEOUT).expect("abort");
        }
    }
}

/// A value of about 200 bytes, so that segments of 16 KiB fill quickly.
fn value(tag: &str, i: usize) -> String {
    format!("{tag}-{i}-{}", "x".repeat(180))
}

/// Base offsets of the partition's local segments, in order.
fn local_segments(data: &Path, topic: &str) -> Vec<i64> {
    let dir = data.join("topics").join(format!("{topic}-0"));
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".log")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    bases.sort_unstable();
    bases
}

async fn manifest(lake: &Lake, topic: &str) -> Manifest {
    lake.manifest(topic, 0).await.unwrap_or_default()
}

/// Waits until the lake holds every sealed segment of the topic and local retention deleted
/// them: one local segment left, whose base the manifest continues at. Returns that offset.
async fn wait_caught_up(lake: &Lake, data: &Path, topic: &str) -> i64 {
    let start = Instant::now();
    loop {
        let local = local_segments(data, topic);
        let next = manifest(lake, topic).await.next_offset();
        if let ([active], Some(next)) = (local.as_slice(), next)
            && *active == next
        {
            return next;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{topic}: local segments {local:?}, the lake up to {next:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces two segments' worth of plain records to the clock topic and waits until the lake
/// holds some of them: an offload pass began after the call did.
async fn offload_pass(lake: &Lake, bootstrap: &str) {
    let before = manifest(lake, CLOCK).await.next_offset().unwrap_or(0);
    let bootstrap = bootstrap.to_string();
    let runtime = Handle::current();
    let end = tokio::task::spawn_blocking(move || {
        let plain = Sender::new(&bootstrap, None, runtime);
        let deliveries: Vec<DeliveryFuture> = (0..2 * SEGMENT_BYTES / 200)
            .map(|i| plain.send(CLOCK, &value("tick", i)))
            .collect();
        deliveries
            .into_iter()
            .map(|d| plain.offset(d))
            .max()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(end > before);
    let start = Instant::now();
    while manifest(lake, CLOCK).await.next_offset().unwrap_or(0) <= before {
        assert!(
            start.elapsed() < DEADLINE,
            "the clock topic is not offloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rows of a lake file read with the parquet crate's own row reader: `(offset, value,
/// batch_attributes, producer_id)`.
fn parquet_rows(path: &Path) -> Vec<(i64, String, i16, i64)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let column = |row: &Row, name: &str| -> Field {
        row.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("{} has no {name} column", path.display()))
    };
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let (
                Field::Long(offset),
                Field::Bytes(value),
                Field::Short(attributes),
                Field::Long(pid),
            ) = (
                column(&row, "offset"),
                column(&row, "value"),
                column(&row, "batch_attributes"),
                column(&row, "producer_id"),
            )
            else {
                panic!("unexpected column types in {}: {row}", path.display());
            };
            let value = String::from_utf8(value.data().to_vec()).unwrap();
            (offset, value, attributes, pid)
        })
        .collect()
}

/// Reads the topic with `isolation` from `from` until the record `end`: `(offset, value)`.
fn consume(bootstrap: &str, isolation: &str, from: Offset, end: &str) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "lake-txn-readers")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC, 0, from).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "{isolation} from {from:?}: no {end} after {} records, the last {:?}",
            read.len(),
            read.last()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("consume");
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            let done = value == end;
            read.push((message.offset(), value));
            if done {
                return read;
            }
        }
    }
}

/// Checks that `got` is `want`, naming the first difference (values cut short: they are long).
fn same(got: &[(i64, String)], want: &[(i64, String)], what: &str) {
    let short =
        |r: Option<&(i64, String)>| r.map(|(o, v)| (*o, v.chars().take(24).collect::<String>()));
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} records where {} were expected; the first difference at #{i}: {:?} where {:?} was expected",
            got.len(),
            want.len(),
            short(got.get(i)),
            short(want.get(i))
        );
    }
}

/// `(offset, value)` of the records in `written` that `keep` accepts, by offset.
fn expected(written: &[Written], keep: impl Fn(&Written) -> bool) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = written
        .iter()
        .filter(|w| keep(w))
        .map(|w| (w.offset, w.value.clone()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_holds_committed_records_and_consumers_read_them_across_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let tier = (S3Server::tier_url(), s3.env());
    let data = dir.path().join("data");
    let broker = TestBroker::start_tiered(&data, TIERED, Some(tier.clone())).await;
    let lake = Lake::new(strata_lake::store::open(&tier.0, &tier.1).unwrap());
    create_topics(&broker.bootstrap).await;
    let runtime = Handle::current();

    // Producer b commits a first transaction (a segment or more); then producer a opens one and
    // leaves it open while b and c commit and abort interleaved transactions, and c aborts one
    // large enough to fill segments alone.
    let bootstrap = broker.bootstrap.clone();
    let (a, b, c, open, mut written) = tokio::task::spawn_blocking(move || {
        let a = Sender::new(&bootstrap, Some("lake-txn-a"), runtime.clone());
        let b = Sender::new(&bootstrap, Some("lake-txn-b"), runtime.clone());
        let c = Sender::new(&bootstrap, Some("lake-txn-c"), runtime);
        let mut written = Vec::new();
        let mut first = Txn::begin(&b);
        for i in 0..120 {
            first.send(&b, value("first", i));
        }
        first.end(&b, true, &mut written);
        let mut open = Txn::begin(&a);
        open.send(&a, value("open", 0));
        open.offset(&a, 0);
        for round in 0..8 {
            let (mut tb, mut tc) = (Txn::begin(&b), Txn::begin(&c));
            for i in 0..12 {
                tb.send(&b, value(&format!("r{round}-b"), i));
                tc.send(&c, value(&format!("r{round}-c"), i));
            }
            let (commit_b, commit_c) = (round % 3 != 2, round % 2 == 0);
            if round % 2 == 0 {
                tb.end(&b, commit_b, &mut written);
                tc.end(&c, commit_c, &mut written);
            } else {
                tc.end(&c, commit_c, &mut written);
                tb.end(&b, commit_b, &mut written);
            }
        }
        let mut alone = Txn::begin(&c);
        for i in 0..3 * SEGMENT_BYTES / 200 {
            alone.send(&c, value("alone", i));
        }
        alone.end(&c, false, &mut written);
        (a, b, c, open, written)
    })
    .await
    .unwrap();
    let open_offset = match open.records[0].1 {
        Sent::At(offset) => offset,
        Sent::Waiting(_) => unreachable!("delivered above"),
    };

    // (c) The offload stops at the open transaction: the segments before the one holding its
    // first record go to the lake, that one and the later ones (sealed) stay local, through
    // further offload passes.
    let bases = local_segments(&data, TOPIC);
    let holding = *bases.iter().rev().find(|&&b| b <= open_offset).unwrap();
    assert!(
        holding > 0,
        "the first transaction fills a segment: {bases:?}"
    );
    assert!(
        bases.iter().filter(|&&b| b > open_offset).count() >= 2,
        "segments were sealed after the open transaction: {bases:?}"
    );
    let start = Instant::now();
    while manifest(&lake, TOPIC).await.next_offset() != Some(holding) {
        assert!(
            start.elapsed() < DEADLINE,
            "the lake never reached {holding}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        offload_pass(&lake, &broker.bootstrap).await;
    }
    assert_eq!(
        manifest(&lake, TOPIC).await.next_offset(),
        Some(holding),
        "the offload passed an open transaction"
    );
    assert_eq!(local_segments(&data, TOPIC).first(), Some(&holding));

    // Once it is aborted, everything sealed goes to the lake and leaves the local disk.
    written = tokio::task::spawn_blocking(move || {
        open.end(&a, false, &mut written);
        written
    })
    .await
    .unwrap();
    wait_caught_up(&lake, &data, TOPIC).await;

    // A tail that stays local: c aborts, b commits, ending with `end-<round>`; again (rarely) if
    // a segment the tail rolled took its first record to the lake.
    let mut tail_round = 0;
    let lake_end = loop {
        let (b, c) = (b.clone(), c.clone());
        let tail = tokio::task::spawn_blocking(move || {
            let mut tail = Vec::new();
            // c's records first (delivered before b sends), so that `end` is the last record.
            let mut tc = Txn::begin(&c);
            for i in 0..3 {
                tc.send(&c, format!("tail{tail_round}-aborted-{i}"));
                tc.offset(&c, i);
            }
            let mut tb = Txn::begin(&b);
            for i in 0..3 {
                tb.send(&b, format!("tail{tail_round}-{i}"));
            }
            tb.send(&b, format!("end-{tail_round}"));
            tc.end(&c, false, &mut tail);
            tb.end(&b, true, &mut tail);
            tail
        })
        .await
        .unwrap();
        let first_tail = tail.iter().map(|w| w.offset).min().unwrap();
        written.extend(tail);
        let end = wait_caught_up(&lake, &data, TOPIC).await;
        if end <= first_tail {
            break end;
        }
        tail_round += 1;
        assert!(tail_round < 3, "three tails went to the lake");
    };
    let end_value = format!("end-{tail_round}");

    // (a) The lake files, read with the parquet crate: exactly the committed records below the
    // lake's end, with their offsets; no control record; transactional batches marked so.
    let m = manifest(&lake, TOPIC).await;
    let covered: Vec<(i64, i64)> = m
        .files
        .iter()
        .map(|f| (f.base_offset, f.last_offset))
        .collect();
    assert_eq!(covered.first().map(|c| c.0), Some(0));
    assert!(
        covered.windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "{covered:?}"
    );
    assert_eq!(m.next_offset(), Some(lake_end));
    let root = dir.path().join("s3").join(S3_BUCKET).join("strata");
    let mut rows = Vec::new();
    for f in &m.files {
        let read = parquet_rows(&root.join(&f.path));
        assert_eq!(read.len() as u64, f.rows, "{}", f.path);
        rows.extend(read);
    }
    let in_lake = |w: &Written| w.offset < lake_end;
    let want = expected(&written, |w| w.committed && in_lake(w));
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.0, r.1.clone())).collect();
    same(&got, &want, "the lake's rows");
    assert!(
        rows.iter()
            .all(|r| r.2 & 0x20 == 0 && r.2 & 0x10 != 0 && r.3 >= 0),
        "transactional records of transactional producers, no control record"
    );
    let aborted_in_lake = written
        .iter()
        .filter(|w| !w.committed && in_lake(w))
        .count();
    assert!(aborted_in_lake > 100, "{aborted_in_lake}");
    let empty: Vec<&FileEntry> = m.files.iter().filter(|f| f.rows == 0).collect();
    assert!(
        !empty.is_empty(),
        "the aborted transaction alone fills a segment: {covered:?}"
    );
    assert!(lake.verify(TOPIC, 0).await.unwrap().is_clean());

    // (b) From the beginning, either isolation level: the lake's committed records, then the
    // local tier's (all of it under read_uncommitted); the same from offsets the lake left out:
    // the aborted open record, one inside a file without records, and the last offset of a file
    // with records that ends in a gap (the segment holding the first record of c's lone
    // transaction, or the one before it, ends with an aborted record or a marker).
    let file_end_gap = m
        .files
        .iter()
        .filter(|f| f.rows > 0)
        .map(|f| f.last_offset)
        .find(|&o| !written.iter().any(|w| w.offset == o && w.committed))
        .expect("a file with records ends in a gap");
    let starts = [
        Offset::Beginning,
        Offset::Offset(open_offset),
        Offset::Offset(empty[0].base_offset + 1),
        Offset::Offset(file_end_gap),
    ];
    let bootstrap = broker.bootstrap.clone();
    let written_for_read = written.clone();
    tokio::task::spawn_blocking(move || {
        for from in starts {
            let at = match from {
                Offset::Offset(o) => o,
                _ => 0,
            };
            let committed = consume(&bootstrap, "read_committed", from, &end_value);
            let want = expected(&written_for_read, |w| w.committed && w.offset >= at);
            same(&committed, &want, &format!("read_committed from {from:?}"));
            let uncommitted = consume(&bootstrap, "read_uncommitted", from, &end_value);
            let want = expected(&written_for_read, |w| {
                w.offset >= at && (w.committed || w.offset >= lake_end)
            });
            same(
                &uncommitted,
                &want,
                &format!("read_uncommitted from {from:?}"),
            );
            assert!(
                uncommitted
                    .iter()
                    .any(|(o, v)| *o >= lake_end && v.contains("aborted")),
                "the local tier's aborted records reach read_uncommitted"
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(
        manifest(&lake, TOPIC).await.next_offset(),
        Some(lake_end),
        "nothing moved while reading"
    );
    broker.stop().await;
    s3.stop().await;
}
