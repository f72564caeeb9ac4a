//! `loadgen`: drives any Kafka-compatible broker through librdkafka (the `rdkafka` crate) and
//! reports throughput and latency percentiles, after verifying what it read.
//!
//! ```console
//! $ cargo run -p strata-benches --release --bin loadgen -- produce --brokers 127.0.0.1:9092 \
//!       --topic bench --partitions 6 --count 1000000 --size 1024 --acks 1
//! $ cargo run -p strata-benches --release --bin loadgen -- consume --brokers 127.0.0.1:9092 \
//!       --topic bench --partitions 6 --count 1000000 --consumers 3
//! $ cargo run -p strata-benches --release --bin loadgen -- e2e --brokers 127.0.0.1:9092 \
//!       --topic e2e --partitions 6 --count 300000 --rate-mb 50
//! ```
//!
//! Every value carries its sequence number, its partition, its send time and a payload cut from a
//! fixed pool, so a consumer checks each record (count, order per partition, content) and a fast
//! wrong answer never counts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Load generator for Kafka-compatible brokers")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Produce `count` records and report throughput and acknowledgement latency.
    Produce(Common),
    /// Read `count` records from the start of the topic (with `consumers` independent readers)
    /// and verify them. Rates count from the first record; the wait for it is reported apart.
    Consume(Common),
    /// Produce at `rate-mb` while a consumer reads: end-to-end latency (of the records sent
    /// once the consumer's first fetch came back).
    E2e(Common),
    /// Produce one record at a time to partition 0 (acks=all) for `seconds` and report every gap
    /// between consecutive acknowledgements longer than `threshold-ms`: with a leader killed
    /// meanwhile, each kill shows as one gap, its failover time.
    Gaps(GapsArgs),
    /// Print one partition's leader and in-sync replicas as JSON (for scripts).
    Describe(DescribeArgs),
    /// Produce `count` records at `rate-mb` while reading the topic's Iceberg table in the lake
    /// (`tier-url`): freshness, the time from each record's send (its CreateTime) to the first
    /// snapshot that holds it, as percentiles; the fresh pieces, sealed files and snapshots it took.
    Freshness(FreshnessArgs),
}

#[derive(Args, Debug, Clone)]
struct FreshnessArgs {
    #[command(flatten)]
    common: Common,
    /// The broker's tier URL (`file:///…`, or `s3://bucket/prefix` with `AWS_*` variables).
    #[arg(long)]
    tier_url: String,
    /// How often the table's current snapshot is read.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct DescribeArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic.
    #[arg(long)]
    topic: String,
    /// Partition.
    #[arg(long, default_value_t = 0)]
    partition: i32,
}

fn describe(args: &DescribeArgs) -> Result<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == args.topic)
        .context("no such topic")?;
    let partition = topic
        .partitions()
        .iter()
        .find(|p| p.id() == args.partition)
        .context("no such partition")?;
    Ok(serde_json::json!({
        "leader": partition.leader(),
        "replicas": partition.replicas(),
        "isr": partition.isr(),
        "brokers": metadata.brokers().len(),
    }))
}

#[derive(Args, Debug, Clone)]
struct GapsArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic (must exist).
    #[arg(long, default_value = "gaps")]
    topic: String,
    /// How long to produce.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Pause between a record's acknowledgement and the next send.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Gaps at least this long are reported.
    #[arg(long, default_value_t = 500)]
    threshold_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic (created with `partitions` partitions when missing).
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Partitions; records go round-robin, record `n` to partition `n % partitions`.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Records to produce or to read.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Value size in bytes (at least 24).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Producer acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// Compression codec.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
    /// Producer linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u32,
    /// Values are JSON-like text (compressible) instead of random bytes.
    #[arg(long)]
    text: bool,
    /// Independent consumers reading the whole history at once (consume mode).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Produce rate in MB/s (e2e mode).
    #[arg(long, default_value_t = 50.0)]
    rate_mb: f64,
    /// Consumers' `fetch.max.bytes`: most bytes one fetch answer carries.
    #[arg(long, default_value_t = 52_428_800)]
    fetch_max_bytes: i32,
    /// Consumers' `max.partition.fetch.bytes`: most bytes per partition in one answer.
    #[arg(long, default_value_t = 10_485_760)]
    partition_fetch_bytes: i32,
    /// Produce mode: pace the producer to this many MB/s (as e2e's producer), instead of as fast
    /// as it goes.
    #[arg(long)]
    pace_mb: Option<f64>,
    /// Produce as an idempotent producer (`enable.idempotence=true`, which needs acks=all).
    #[arg(long)]
    idempotent: bool,
    /// Produce transactionally (a `transactional.id`, idempotent, acks=all), committing a
    /// transaction every this many records.
    #[arg(long)]
    transaction_records: Option<u64>,
    /// Replication factor when the topic is created.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Topic settings when the topic is created, `key=value` (repeatable).
    #[arg(long = "topic-config", value_parser = parse_setting)]
    topic_configs: Vec<(String, String)>,
    /// Extra client settings, `key=value`, for producers and consumers alike.
    #[arg(short = 'X', value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Consumer (consume and e2e modes): librdkafka, or loadgen's own fetcher sending full
    /// fetches (`full`) or keeping an incremental fetch session (`session`, KIP-227).
    #[arg(long, value_enum, default_value_t = Client::Librdkafka)]
    client: Client,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Librdkafka,
    Full,
    Session,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// Bytes of a value before its payload: sequence (8), partition (4), CRC-32C of the payload (4),
/// send time (8, µs since the epoch).
const HEADER: usize = 24;
/// The pool payloads are cut from.
const POOL_BYTES: usize = 64 << 20;
/// Distinct payloads: record `seq` carries slice `seq % SLICES` of the pool.
const SLICES: usize = 16_369;
/// Bytes between the starts of consecutive slices (more than a 1 KiB record, so neighbours in a
/// batch share no bytes and random values stay incompressible).
const SLICE_STRIDE: usize = 4_099;
const _: () = assert!(SLICES * SLICE_STRIDE <= POOL_BYTES);

/// Values: a header and a slice of a fixed pool chosen by the sequence number.
struct Payloads {
    pool: Vec<u8>,
    size: usize,
    /// CRC-32C of each slice, computed once: the producer's per-record cost stays small, so the
    /// load generator measures the broker rather than itself.
    crcs: Vec<std::sync::OnceLock<u32>>,
}

impl Payloads {
    fn new(size: usize, text: bool) -> Self {
        let mut pool = Vec::with_capacity(POOL_BYTES + size);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut n = 0u64;
        while pool.len() < POOL_BYTES + size {
            if text {
                n += 1;
                pool.extend_from_slice(
                    format!(
                        "{{\"user\":{},\"event\":\"view\",\"page\":\"/item/{}\"}}",
                        n % 9973,
                        n % 131
                    )
                    .as_bytes(),
                );
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pool.extend_from_slice(&x.to_le_bytes());
            }
        }
        let crcs = (0..SLICES).map(|_| std::sync::OnceLock::new()).collect();
        Self { pool, size, crcs }
    }

    fn slice(&self, seq: u64) -> (&[u8], u32) {
        let len = self.size - HEADER;
        let index = (seq % SLICES as u64) as usize;
        let start = index * SLICE_STRIDE;
        let payload = &self.pool[start..start + len];
        let crc = *self.crcs[index].get_or_init(|| crc32c::crc32c(payload));
        (payload, crc)
    }

    fn value(&self, seq: u64, partition: i32, buf: &mut Vec<u8>) {
        let (payload, crc) = self.slice(seq);
        buf.clear();
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(partition as u32).to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&now_micros().to_le_bytes());
        buf.extend_from_slice(payload);
    }

    /// The sequence number and send time of a value, after checking its content against the
    /// CRC-32C it carries.
    fn check(&self, value: &[u8], partition: i32) -> Result<(u64, u64)> {
        ensure!(
            value.len() == self.size,
            "a value of {} bytes, not {}",
            value.len(),
            self.size
        );
        let seq = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
        let sent_to = u32::from_le_bytes(value[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(value[12..16].try_into().expect("4 bytes"));
        let sent = u64::from_le_bytes(value[16..24].try_into().expect("8 bytes"));
        ensure!(
            sent_to == partition as u32,
            "record {seq} was sent to partition {sent_to} but read from {partition}"
        );
        ensure!(
            crc32c::crc32c(&value[HEADER..]) == crc && self.slice(seq).1 == crc,
            "record {seq} has wrong content"
        );
        Ok((seq, sent))
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
        })
    }
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    topic: String,
    partitions: i32,
    record_bytes: usize,
    compression: &'static str,
    acks: String,
    records: u64,
    seconds: f64,
    records_per_s: f64,
    mb_per_s: f64,
    produce_latency: Option<Latency>,
    end_to_end_latency: Option<Latency>,
    consumers: Vec<ConsumerReport>,
}

#[derive(Debug, Serialize)]
struct ConsumerReport {
    records: u64,
    /// From subscription to the last record.
    seconds: f64,
    /// From the first record to the last.
    mb_per_s: f64,
    first_record_ms: f64,
    verified: bool,
    /// Fetches of loadgen's own fetcher (`--client full|session`).
    #[serde(skip_serializing_if = "Option::is_none")]
    fetches: Option<strata_benches::fetcher::FetchStats>,
}

fn client_config(c: &Common) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &c.brokers);
    for (k, v) in &c.settings {
        config.set(k, v);
    }
    config
}

fn create_topic(c: &Common) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(c).create()?;
    let mut topic = NewTopic::new(
        &c.topic,
        c.partitions,
        TopicReplication::Fixed(c.replication_factor),
    );
    for (k, v) in &c.topic_configs {
        topic = topic.set(k, v);
    }
    let results = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

struct Acks {
    latency: Mutex<Histogram<u64>>,
    failed: AtomicBool,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(_) => {
                let micros = sent.elapsed().as_micros().max(1) as u64;
                let _ = self.latency.lock().expect("histogram").record(micros);
            }
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until every record sent has its delivery report. The crate's `commit_transaction`
/// flushes first, and its flush polls in steps of 100 ms that always last their whole step: a
/// commit would cost 100 ms whatever the broker does.
fn drain(producer: &BaseProducer<Acks>, deadline: Instant) -> Result<()> {
    // One flush call without waiting sends what lingers at once (as librdkafka's own commit
    // does); it reports a timeout while records are in flight, which is expected here.
    let _ = producer.flush(Duration::ZERO);
    while producer.in_flight_count() > 0 {
        ensure!(
            Instant::now() < deadline,
            "timed out waiting for acknowledgements"
        );
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// Produces `count` records, paced to `rate` bytes/s when given. Returns seconds and latencies.
fn produce(c: &Common, payloads: &Payloads, rate: Option<f64>) -> Result<(f64, Histogram<u64>)> {
    let acks = Acks {
        latency: Mutex::new(histogram()),
        failed: AtomicBool::new(false),
    };
    let mut config = client_config(c);
    config
        .set("acks", &c.acks)
        .set("compression.type", c.compression.name())
        .set("linger.ms", c.linger_ms.to_string())
        .set("batch.size", c.batch_size.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "enable.idempotence",
            (c.idempotent || c.transaction_records.is_some()).to_string(),
        );
    if c.transaction_records.is_some() {
        config
            .set("transactional.id", format!("loadgen-{}", now_micros()))
            .set("acks", "all");
    }
    let producer: BaseProducer<Acks> = config.create_with_context(acks)?;
    let deadline = Instant::now() + Duration::from_secs(c.timeout_s);
    if c.transaction_records.is_some() {
        producer
            .init_transactions(Duration::from_secs(30))
            .context("init_transactions")?;
        producer.begin_transaction()?;
    }
    let start = Instant::now();
    let mut value = Vec::with_capacity(c.size);
    for seq in 0..c.count {
        if let Some(every) = c.transaction_records
            && seq > 0
            && seq % every == 0
        {
            drain(&producer, deadline)?;
            producer
                .commit_transaction(deadline.saturating_duration_since(Instant::now()))
                .context("committing a transaction")?;
            producer.begin_transaction()?;
        }
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64((seq * c.size as u64) as f64 / rate);
            while Instant::now() < due {
                producer.poll(
                    due.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(1)),
                );
            }
        }
        let partition = (seq % c.partitions as u64) as i32;
        payloads.value(seq, partition, &mut value);
        let mut record = BaseRecord::with_opaque_to(&c.topic, Box::new(Instant::now()))
            .partition(partition)
            .payload(&value[..]);
        loop {
            match producer.send::<(), [u8]>(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    ensure!(Instant::now() < deadline, "timed out producing");
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
                Err((e, _)) => bail!("send failed: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    if c.transaction_records.is_some() {
        drain(&producer, deadline)?;
        producer
            .commit_transaction(deadline.saturating_duration_since(Instant::now()))
            .context("committing the last transaction")?;
    }
    producer
        .flush(deadline.saturating_duration_since(Instant::now()))
        .context("flushing the producer")?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        !producer.context().failed.load(Ordering::Relaxed),
        "some records were not acknowledged"
    );
    let latency = producer
        .context()
        .latency
        .lock()
        .expect("histogram")
        .clone();
    Ok((seconds, latency))
}

/// Reads `count` records from the start of every partition, checking each. With `latency`,
/// records the end-to-end latency of each.
fn consume(
    c: &Common,
    payloads: &Payloads,
    latency: Option<&Mutex<Histogram<u64>>>,
) -> Result<ConsumerReport> {
    if c.client != Client::Librdkafka {
        return consume_fetching(c, payloads, latency);
    }
    let consumer: BaseConsumer = client_config(c)
        .set("group.id", format!("loadgen-{}", now_micros()))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", c.fetch_max_bytes.to_string())
        .set(
            "max.partition.fetch.bytes",
            c.partition_fetch_bytes.to_string(),
        )
        .set("queued.max.messages.kbytes", "262144")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..c.partitions {
        assignment.add_partition_offset(&c.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(c.timeout_s);
    let start = Instant::now();
    let mut first = None;
    let mut warm: Option<u64> = None;
    let mut next: HashMap<i32, u64> = HashMap::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < c.count {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            ensure!(
                Instant::now() < deadline,
                "timed out after {records} of {} records",
                c.count
            );
            continue;
        };
        let message = message.context("consuming")?;
        first.get_or_insert_with(Instant::now);
        let partition = message.partition();
        let value = message.payload().unwrap_or_default();
        let (seq, sent) = payloads.check(value, partition)?;
        let expected = next.entry(partition).or_insert(partition as u64);
        ensure!(
            seq == *expected,
            "partition {partition}: record {seq} where {expected} was due (lost, duplicated or reordered)"
        );
        *expected += c.partitions as u64;
        if let Some(h) = latency {
            // Records sent before the consumer's first fetch came back measure the client's
            // start-up (group and offset lookups), not the broker: they are left out.
            let now = now_micros();
            let ready = *warm.get_or_insert(now);
            if sent >= ready {
                let _ = h
                    .lock()
                    .expect("histogram")
                    .record(now.saturating_sub(sent).max(1));
            }
        }
        records += 1;
        bytes += value.len() as u64;
        if records % 4096 == 0 {
            ensure!(
                Instant::now() < deadline,
                "timed out after {records} of {} records",
                c.count
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // The rate counts from the first record: client start-up is `first_record_ms`.
    let first = first.unwrap_or(start);
    let reading = first.elapsed().as_secs_f64();
    Ok(ConsumerReport {
        records,
        seconds,
        mb_per_s: bytes as f64 / reading / 1e6,
        first_record_ms: (first - start).as_secs_f64() * 1000.0,
        verified: true,
        fetches: None,
    })
}

/// [`consume`] with loadgen's own fetcher, with the same settings and the same checks.
fn consume_fetching(
    c: &Common,
    payloads: &Payloads,
    latency: Option<&Mutex<Histogram<u64>>>,
) -> Result<ConsumerReport> {
    use strata_benches::fetcher::{FetchSettings, Fetcher};
    let settings = FetchSettings {
        sessions: c.client == Client::Session,
        max_wait_ms: 100,
        min_bytes: 1,
        max_bytes: c.fetch_max_bytes,
        partition_max_bytes: c.partition_fetch_bytes,
    };
    let deadline = Instant::now() + Duration::from_secs(c.timeout_s);
    let start = Instant::now();
    let mut fetcher = Fetcher::connect(&c.brokers, &c.topic, c.partitions, settings)?;
    let mut first = None;
    let mut next: HashMap<i32, u64> = HashMap::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    // As with librdkafka: records sent before the first one came back measure start-up.
    let mut warm: Option<u64> = None;
    while records < c.count {
        ensure!(
            Instant::now() < deadline,
            "timed out after {records} of {} records",
            c.count
        );
        fetcher.fetch(&mut |partition, _offset, value| {
            first.get_or_insert_with(Instant::now);
            let (seq, sent) = payloads.check(value, partition)?;
            let expected = next.entry(partition).or_insert(partition as u64);
            ensure!(
                seq == *expected,
                "partition {partition}: record {seq} where {expected} was due (lost, duplicated or reordered)"
            );
            *expected += c.partitions as u64;
            if let Some(h) = latency {
                let now = now_micros();
                if sent >= *warm.get_or_insert(now) {
                    let _ = h.lock().expect("histogram").record(now.saturating_sub(sent).max(1));
                }
            }
            records += 1;
            bytes += value.len() as u64;
            Ok(())
        })?;
    }
    ensure!(
        records == c.count,
        "{records} records where {} were due",
        c.count
    );
    let seconds = start.elapsed().as_secs_f64();
    let first = first.unwrap_or(start);
    Ok(ConsumerReport {
        records,
        seconds,
        mb_per_s: bytes as f64 / first.elapsed().as_secs_f64() / 1e6,
        first_record_ms: (first - start).as_secs_f64() * 1000.0,
        verified: true,
        fetches: Some(fetcher.stats()),
    })
}

/// What `gaps` found.
#[derive(Serialize, Debug)]
struct GapsReport {
    acknowledged: u64,
    seconds: f64,
    /// Gaps between consecutive acknowledgements above the threshold, in order.
    gaps_ms: Vec<f64>,
}

fn gaps(args: &GapsArgs) -> Result<GapsReport> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "120000")
        .create()?;
    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    let mut previous_ack = Instant::now();
    let mut report = GapsReport {
        acknowledged: 0,
        seconds: 0.0,
        gaps_ms: Vec::new(),
    };
    while start.elapsed() < Duration::from_secs(args.seconds) {
        std::thread::sleep(interval);
        let value = report.acknowledged.to_string();
        let record = FutureRecord::to(&args.topic)
            .partition(0)
            .key("gap")
            .payload(&value);
        futures::executor::block_on(producer.send(record, Duration::from_secs(0)))
            .map_err(|(e, _)| anyhow::anyhow!("record {value} not acknowledged: {e}"))?;
        let now = Instant::now();
        // The pause before the send is ours, not the cluster's.
        let gap = now.duration_since(previous_ack).saturating_sub(interval);
        if gap >= Duration::from_millis(args.threshold_ms) {
            report.gaps_ms.push(gap.as_secs_f64() * 1000.0);
        }
        previous_ack = now;
        report.acknowledged += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn run(mode: &Mode) -> Result<Report> {
    let (name, c) = match mode {
        Mode::Produce(c) => ("produce", c),
        Mode::Consume(c) => ("consume", c),
        Mode::E2e(c) => ("e2e", c),
        Mode::Gaps(_) | Mode::Describe(_) | Mode::Freshness(_) => {
            bail!("{mode:?} has its own report")
        }
    };
    ensure!(c.size >= HEADER, "--size must be at least {HEADER} bytes");
    ensure!(c.partitions > 0, "--partitions must be positive");
    let payloads = Payloads::new(c.size, c.text);
    let mut report = Report {
        mode: name,
        topic: c.topic.clone(),
        partitions: c.partitions,
        record_bytes: c.size,
        compression: c.compression.name(),
        acks: c.acks.clone(),
        records: c.count,
        seconds: 0.0,
        records_per_s: 0.0,
        mb_per_s: 0.0,
        produce_latency: None,
        end_to_end_latency: None,
        consumers: Vec::new(),
    };
    match mode {
        Mode::Gaps(_) | Mode::Describe(_) | Mode::Freshness(_) => {
            unreachable!("returned above")
        }
        Mode::Produce(_) => {
            create_topic(c)?;
            let (seconds, latency) = produce(c, &payloads, c.pace_mb.map(|mb| mb * 1e6))?;
            report.seconds = seconds;
            report.produce_latency = Latency::of(&latency);
        }
        Mode::Consume(_) => {
            let start = Instant::now();
            let results: Vec<Result<ConsumerReport>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..c.consumers.max(1))
                    .map(|_| s.spawn(|| consume(c, &payloads, None)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a consumer panicked")))
                    })
                    .collect()
            });
            report.records = c.count * c.consumers.max(1) as u64;
            report.consumers = results.into_iter().collect::<Result<_>>()?;
            // Reading time: from the earliest first record to the last record of all.
            let first = report
                .consumers
                .iter()
                .map(|r| r.first_record_ms / 1000.0)
                .fold(f64::INFINITY, f64::min);
            report.seconds = start.elapsed().as_secs_f64() - first;
        }
        Mode::E2e(_) => {
            create_topic(c)?;
            let e2e = Mutex::new(histogram());
            let start = Instant::now();
            let (produced, consumed) = std::thread::scope(|s| {
                let reader = s.spawn(|| consume(c, &payloads, Some(&e2e)));
                let produced = produce(c, &payloads, Some(c.rate_mb * 1e6));
                let consumed = reader
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the consumer panicked")));
                (produced, consumed)
            });
            let (_, latency) = produced?;
            report.consumers.push(consumed?);
            report.seconds = start.elapsed().as_secs_f64();
            report.produce_latency = Latency::of(&latency);
            report.end_to_end_latency = Latency::of(&e2e.lock().expect("histogram"));
        }
    }
    report.records_per_s = report.records as f64 / report.seconds;
    report.mb_per_s = report.records_per_s * c.size as f64 / 1e6;
    Ok(report)
}

fn print_table(r: &Report) {
    println!(
        "{} {} ({} partitions, {} B records, {}, acks={})",
        r.mode, r.topic, r.partitions, r.record_bytes, r.compression, r.acks
    );
    println!(
        "  {} records in {:.2} s: {:.0} records/s, {:.1} MB/s",
        r.records, r.seconds, r.records_per_s, r.mb_per_s
    );
    for (what, l) in [
        ("produce", &r.produce_latency),
        ("end-to-end", &r.end_to_end_latency),
    ] {
        if let Some(l) = l {
            println!(
                "  {what} latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
    }
    for (i, c) in r.consumers.iter().enumerate() {
        println!(
            "  consumer {i}: {} records verified in {:.2} s, {:.1} MB/s, first record after {:.1} ms",
            c.records, c.seconds, c.mb_per_s, c.first_record_ms
        );
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.mode {
        Mode::Gaps(args) => {
            println!("{}", serde_json::to_string(&gaps(args)?)?);
            return Ok(());
        }
        Mode::Describe(args) => {
            println!("{}", describe(args)?);
            return Ok(());
        }
        Mode::Freshness(args) => {
            let report = freshness::run(args)?;
            if args.common.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                freshness::print(&report);
            }
            return Ok(());
        }
        _ => {}
    }
    let json = match &cli.mode {
        Mode::Produce(c) | Mode::Consume(c) | Mode::E2e(c) => c.json,
        Mode::Gaps(_) | Mode::Describe(_) | Mode::Freshness(_) => true,
    };
    let report = run(&cli.mode)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

mod freshness {
    //! `loadgen freshness`: produce at a rate while reading the topic's Iceberg table. A
    //! record's freshness runs from its CreateTime (stamped by librdkafka when it is sent) to the
    //! first read of a snapshot that holds it.

    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::atomic::AtomicU64;

    use std::sync::Arc;

    use arrow_array::{Int64Array, TimestampMillisecondArray};
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt};
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use strata_lake::iceberg::IcebergTable;

    use super::*;

    #[derive(Debug, Serialize)]
    pub(super) struct FreshnessReport {
        mode: &'static str,
        topic: String,
        partitions: i32,
        record_bytes: usize,
        records: u64,
        /// The producer's target rate.
        rate_mb: f64,
        /// The rate it reached.
        produced_mb_per_s: f64,
        produce_latency: Option<Latency>,
        /// From each record's send to the first snapshot read that holds it.
        freshness: Option<Latency>,
        /// From the first send to the last record seen in the table.
        seconds: f64,
        /// Commits (metadata versions) during the run.
        snapshots: u64,
        /// Distinct data files the table named during the run, by kind.
        fresh_pieces: u64,
        sealed_files: u64,
        /// The same per partition and hour of the run.
        fresh_pieces_per_partition_hour: f64,
        sealed_files_per_partition_hour: f64,
        snapshots_per_hour: f64,
    }

    /// `(offset, timestamp ms)` of every row of a lake file: only those two columns are read, so
    /// that watching the table costs little next to the broker it measures.
    async fn read_times(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Vec<(i64, i64)>> {
        let bytes = store.get(&ObjectPath::from(path)).await?.bytes().await?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1]);
        let mut out = Vec::new();
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let offsets = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .context("an offset column")?;
            let timestamps = batch
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .context("a timestamp column")?;
            out.extend((0..batch.num_rows()).map(|i| (offsets.value(i), timestamps.value(i))));
        }
        Ok(out)
    }

    /// `(first, last)` offsets from a lake file name (`<first>-<last>[-eN].parquet[.fresh]`).
    fn offsets_of(path: &str) -> Option<(i64, i64)> {
        let name = path.rsplit('/').next()?;
        let mut parts = name.split(['-', '.']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    struct Watch {
        /// Next offset not yet seen, per partition.
        next: HashMap<i32, i64>,
        files: HashSet<String>,
        fresh_pieces: u64,
        sealed_files: u64,
        versions: Option<(u64, u64)>,
        seen: u64,
        freshness: Histogram<u64>,
    }

    impl Watch {
        /// Reads the current snapshot; each record not seen before is timed against `now`, the
        /// moment the snapshot was read.
        async fn poll(&mut self, table: &IcebergTable, store: &Arc<dyn ObjectStore>) -> Result<()> {
            let Some(snapshot) = table.current_files().await? else {
                return Ok(());
            };
            let now = now_micros();
            let first = self.versions.map_or(snapshot.version, |v| v.0);
            self.versions = Some((first, snapshot.version));
            for (partition, files) in &snapshot.partitions {
                for file in files {
                    if !self.files.insert(file.path.clone()) {
                        continue;
                    }
                    if file.path.ends_with(".fresh") {
                        self.fresh_pieces += 1;
                    } else {
                        self.sealed_files += 1;
                    }
                    let next = self.next.entry(*partition).or_insert(0);
                    // A sealed file replacing pieces already read holds nothing new.
                    if offsets_of(&file.path).is_some_and(|(_, last)| last < *next) {
                        continue;
                    }
                    for (offset, timestamp_ms) in read_times(store, &file.path)
                        .await
                        .with_context(|| format!("reading {}", file.path))?
                    {
                        if offset < *next {
                            continue;
                        }
                        // CreateTime: librdkafka stamps a record when it is sent.
                        let sent = u64::try_from(timestamp_ms).unwrap_or(0) * 1000;
                        self.freshness.record(now.saturating_sub(sent).max(1))?;
                        self.seen += 1;
                        *next = offset + 1;
                    }
                }
            }
            Ok(())
        }
    }

    pub(super) fn run(args: &FreshnessArgs) -> Result<FreshnessReport> {
        let c = &args.common;
        ensure!(c.size >= HEADER, "--size must be at least {HEADER} bytes");
        ensure!(c.partitions > 0, "--partitions must be positive");
        let payloads = Payloads::new(c.size, c.text);
        create_topic(c)?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let store = strata_lake::store::open(&args.tier_url, &env)?;
        let table = IcebergTable::open(Arc::clone(&store), &args.tier_url, &c.topic)?;
        let produced_done = AtomicU64::new(0);
        let start = Instant::now();
        let (produced, watched) = std::thread::scope(|s| {
            let watcher = s.spawn(|| -> Result<(Watch, f64)> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut watch = Watch {
                    next: HashMap::new(),
                    files: HashSet::new(),
                    fresh_pieces: 0,
                    sealed_files: 0,
                    versions: None,
                    seen: 0,
                    freshness: histogram(),
                };
                runtime.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(c.timeout_s);
                    while watch.seen < c.count {
                        ensure!(
                            Instant::now() < deadline,
                            "{} of {} records in the table after {} s",
                            watch.seen,
                            c.count,
                            c.timeout_s
                        );
                        ensure!(
                            produced_done.load(Ordering::Relaxed) != 2,
                            "the producer failed"
                        );
                        watch.poll(&table, &store).await?;
                        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
                    }
                    Ok(())
                })?;
                Ok((watch, start.elapsed().as_secs_f64()))
            });
            let produced = produce(c, &payloads, Some(c.rate_mb * 1e6));
            produced_done.store(if produced.is_ok() { 1 } else { 2 }, Ordering::Relaxed);
            let watched = watcher
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the watcher panicked")));
            (produced, watched)
        });
        let (produce_seconds, latency) = produced?;
        let (watch, seconds) = watched?;
        let hours = seconds / 3600.0;
        let per_partition_hour = |n: u64| n as f64 / f64::from(c.partitions) / hours;
        let snapshots = watch.versions.map_or(0, |(first, last)| last - first);
        Ok(FreshnessReport {
            mode: "freshness",
            topic: c.topic.clone(),
            partitions: c.partitions,
            record_bytes: c.size,
            records: c.count,
            rate_mb: c.rate_mb,
            produced_mb_per_s: (c.count * c.size as u64) as f64 / produce_seconds / 1e6,
            produce_latency: Latency::of(&latency),
            freshness: Latency::of(&watch.freshness),
            seconds,
            snapshots,
            fresh_pieces: watch.fresh_pieces,
            sealed_files: watch.sealed_files,
            fresh_pieces_per_partition_hour: per_partition_hour(watch.fresh_pieces),
            sealed_files_per_partition_hour: per_partition_hour(watch.sealed_files),
            snapshots_per_hour: snapshots as f64 / hours,
        })
    }

    pub(super) fn print(r: &FreshnessReport) {
        println!(
            "freshness {} ({} partitions, {} B records, {} records at {} MB/s: {:.1} MB/s reached)",
            r.topic, r.partitions, r.record_bytes, r.records, r.rate_mb, r.produced_mb_per_s
        );
        if let Some(f) = &r.freshness {
            println!(
                "  send to visible in the table: p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms, max {:.0} ms",
                f.p50_ms, f.p99_ms, f.p999_ms, f.max_ms
            );
        }
        println!(
            "  {} snapshots, {} fresh pieces, {} sealed files in {:.0} s: {:.1} pieces and {:.1} sealed files per partition per hour",
            r.snapshots,
            r.fresh_pieces,
            r.sealed_files,
            r.seconds,
            r.fresh_pieces_per_partition_hour,
            r.sealed_files_per_partition_hour
        );
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn offsets_come_from_lake_file_names() {
            assert_eq!(
                super::offsets_of(
                    "topic=t/partition=0/00000000000000000010-00000000000000000019.parquet.fresh"
                ),
                Some((10, 19))
            );
            assert_eq!(
                super::offsets_of("00000000000000000000-00000000000000000009-e3.parquet"),
                Some((0, 9))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check_their_own_content() {
        for text in [false, true] {
            let p = Payloads::new(100, text);
            let mut v = Vec::new();
            p.value(12345, 3, &mut v);
            assert_eq!(v.len(), 100);
            assert_eq!(p.check(&v, 3).unwrap().0, 12345);
            assert!(p.check(&v, 2).is_err(), "wrong partition");
            let mut damaged = v.clone();
            damaged[99] ^= 1;
            assert!(p.check(&damaged, 3).is_err(), "wrong content");
            assert!(p.check(&v[..99], 3).is_err(), "wrong size");
        }
    }
}
