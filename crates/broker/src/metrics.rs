//! Prometheus metrics: what the broker counts as it works, and what it computes when scraped.
//!
//! Two kinds, kept apart so that the request path stays cheap:
//! - **Counted on the way** (atomics, no lock, no allocation): requests, errors and latency per
//!   API in an array indexed by API key ([`Requests`]); bytes in and out per topic, one lookup per
//!   topic of a request ([`Topics`]); ISR shrinks and expands; the lake's uploads, reads and
//!   cache ([`LakeMetrics`], owned by the lake view and the offload pipeline).
//! - **Computed at scrape** ([`render`]): partitions, leaders, under-replicated and offline
//!   partitions from the partition manager and the cluster metadata; consumer-group lag from the
//!   committed offsets and the high watermarks; offload lag from each tiered log against what
//!   the lake holds; the process's memory and open files from `/proc/self`.
//!
//! The text is Prometheus's exposition format 0.0.4, written by the `prometheus-client` crate's
//! encoder; `metrics/http.rs` serves it with `/health` and `/ready` on `metrics.listen`.

mod http;
mod process;

pub(crate) use http::serve;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::handler::{Context, Refusal, Reply};

/// Upper bounds of the latency buckets, in seconds: from half a millisecond (a produce to the
/// page cache) to ten seconds (a long-polling fetch waits up to `fetch.max.wait.ms`, an
/// `acks=all` produce up to its timeout; a ranged GET of a row group takes tens of milliseconds
/// on S3, more under load or on retries).
const LATENCY_BOUNDS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in nanoseconds, compared on the hot path without floating point.
const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Buckets of a histogram: one per bound, and `+Inf`.
const BUCKETS: usize = LATENCY_BOUNDS_NANOS.len() + 1;
/// API keys counted: Kafka's keys are below this (they go up to about 90); a larger one is not a
/// supported API and is refused before it is counted.
const API_KEYS_MAX: usize = 128;

/// A latency histogram over [`LATENCY_BOUNDS_SECONDS`], updated with atomics only: one
/// `fetch_add` for the bucket and one for the sum (prometheus-client's histogram takes a mutex
/// per observation). Its counters are inline, beside the ones they are updated with.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// `(sum in seconds, count, buckets as (upper bound, observations))` for the encoder, which
    /// adds the buckets up and writes `+Inf` itself.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count = counts.iter().sum();
        let buckets = LATENCY_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        let (sum, count, buckets) = self.snapshot();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Requests of one API, on cache lines of its own: APIs served at once (Produce and Fetch) do not
/// contend for a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ApiStats {
    /// Requests answered or refused.
    requests: AtomicU64,
    /// Requests that got no answer: refused (malformed, unsupported), or whose handling failed;
    /// the connection is closed.
    errors: AtomicU64,
    /// From the frame's arrival at the dispatcher until its answer is ready to be written.
    latency: Histogram,
}

/// Request counters and latencies per API, indexed by API key: a request finds its counters
/// without a lookup, a lock or an allocation.
#[derive(Debug)]
pub(crate) struct Requests {
    apis: Box<[ApiStats]>,
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            apis: (0..API_KEYS_MAX).map(|_| ApiStats::default()).collect(),
        }
    }
}

impl Requests {
    fn stats(&self, api_key: i16) -> Option<&ApiStats> {
        usize::try_from(api_key).ok().and_then(|k| self.apis.get(k))
    }

    /// Counts a request of `api_key` that arrived at `started`: an answer ready now is timed
    /// now; one that waits (a long-polling fetch, an `acks=all` produce, a join) is timed when
    /// its task finishes, by a task that waits for it. A refusal counts as an error.
    pub(crate) fn finish(
        self: &Arc<Self>,
        api_key: Option<i16>,
        started: Instant,
        reply: Result<Reply, Refusal>,
    ) -> Result<Reply, Refusal> {
        let Some((key, stats)) = api_key.and_then(|k| Some((k, self.stats(k)?))) else {
            return reply;
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match reply {
            Ok(Reply::Waiting(task)) => {
                let requests = Arc::clone(self);
                Ok(Reply::Waiting(tokio::spawn(async move {
                    let outcome = task.await;
                    let stats = requests.stats(key).expect("counted above");
                    stats.latency.observe(started.elapsed());
                    match outcome {
                        Ok(Ok(frame)) => Ok(frame),
                        Ok(Err(refusal)) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            Err(refusal)
                        }
                        Err(e) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            if e.is_panic() {
                                std::panic::resume_unwind(e.into_panic());
                            }
                            Err(format!("the request's task was cancelled: {e}"))
                        }
                    }
                })))
            }
            other => {
                stats.latency.observe(started.elapsed());
                if other.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                other
            }
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let counted: Vec<(String, &ApiStats)> = self
            .apis
            .iter()
            .enumerate()
            .filter(|(_, s)| s.requests.load(Ordering::Relaxed) > 0)
            .map(|(key, s)| (api_name(key), s))
            .collect();
        let mut requests = encoder.encode_descriptor(
            "strata_requests",
            "Kafka requests handled, by API.",
            None,
            MetricType::Counter,
        )?;
        for (api, stats) in &counted {
            let labels = [("api", api.as_str())];
            ConstCounter::new(stats.requests.load(Ordering::Relaxed))
                .encode(requests.encode_family(&labels)?)?;
        }
        let mut errors = encoder.encode_descriptor(
            "strata_request_errors",
            "Kafka requests that got no answer (malformed, unsupported, or whose handling failed: \
             the connection is closed), by API.",
            None,
            MetricType::Counter,
        )?;
        for (api, stats) in &counted {
            let labels = [("api", api.as_str())];
            ConstCounter::new(stats.errors.load(Ordering::Relaxed))
                .encode(errors.encode_family(&labels)?)?;
        }
        let mut latency = encoder.encode_descriptor(
            "strata_request_duration_seconds",
            "Time from a request's arrival at the dispatcher until its answer is ready to be \
             written (long-polling fetches included), by API.",
            None,
            MetricType::Histogram,
        )?;
        for (api, stats) in &counted {
            let labels = [("api", api.as_str())];
            stats.latency.encode(&mut latency.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Kafka's name of an API key (`Produce`, `Fetch`, …), or the number.
fn api_name(key: usize) -> String {
    i16::try_from(key)
        .ok()
        .and_then(|k| kafka_protocol::messages::ApiKey::try_from(k).ok())
        .map_or_else(|| key.to_string(), |k| format!("{k:?}"))
}

/// Bytes of one topic.
#[derive(Debug, Default)]
struct TopicIo {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// One of a topic's counters.
type TopicField = fn(&TopicIo) -> &AtomicU64;

/// Bytes in and out per topic. A request looks its topic up once per topic (a read lock and a
/// hash of the name), never per partition or record; a topic's first bytes insert it.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    topics: RwLock<HashMap<Box<str>, TopicIo>>,
}

impl Topics {
    fn add(&self, topic: &str, bytes: u64, field: TopicField) {
        if bytes == 0 {
            return;
        }
        if let Some(io) = self.topics.read().get(topic) {
            field(io).fetch_add(bytes, Ordering::Relaxed);
            return;
        }
        let mut topics = self.topics.write();
        let io = topics.entry(topic.into()).or_default();
        field(io).fetch_add(bytes, Ordering::Relaxed);
    }

    /// Record bytes a produce request appended to `topic`.
    pub(crate) fn bytes_in(&self, topic: &str, bytes: u64) {
        self.add(topic, bytes, |io| &io.bytes_in);
    }

    /// Record bytes a consumer's fetch answer carries from `topic`.
    pub(crate) fn bytes_out(&self, topic: &str, bytes: u64) {
        self.add(topic, bytes, |io| &io.bytes_out);
    }

    /// Forgets the topics `exists` does not know (deleted): the map holds only live topics.
    fn retain(&self, exists: impl Fn(&str) -> bool) {
        if self.topics.read().keys().all(|t| exists(t)) {
            return;
        }
        self.topics.write().retain(|t, _| exists(t));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let topics = self.topics.read();
        let mut sorted: Vec<(&str, &TopicIo)> = topics.iter().map(|(t, io)| (&**t, io)).collect();
        sorted.sort_by_key(|(t, _)| *t);
        let columns: [(&str, &str, TopicField); 2] = [
            (
                "strata_topic_bytes_in",
                "Record bytes appended by produce requests, by topic.",
                |io| &io.bytes_in,
            ),
            (
                "strata_topic_bytes_out",
                "Record bytes sent to consumers in fetch answers (follower brokers' fetches not \
                 counted), by topic.",
                |io| &io.bytes_out,
            ),
        ];
        for (name, help, field) in columns {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (topic, io) in &sorted {
                let labels = [("topic", *topic)];
                ConstCounter::new(field(io).load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What the lake's read path and the offload pipeline count.
#[derive(Debug, Default)]
pub(crate) struct LakeMetrics {
    /// Segments uploaded and committed to a manifest.
    pub(crate) uploads: AtomicU64,
    /// Offload attempts that failed (each is retried with backoff).
    pub(crate) upload_failures: AtomicU64,
    /// Bytes of the Parquet objects uploaded and committed.
    pub(crate) uploaded_bytes: AtomicU64,
    /// Bytes of the local segments they came from.
    pub(crate) offloaded_segment_bytes: AtomicU64,
    /// Record bytes served to fetches from the lake.
    pub(crate) read_bytes: AtomicU64,
    /// Fresh pieces uploaded and committed, and their bytes.
    pub(crate) fresh_pieces: AtomicU64,
    pub(crate) fresh_piece_bytes: AtomicU64,
    /// Snapshots committed to the topics' Iceberg tables, and commits that failed (retried at
    /// the next pass).
    pub(crate) table_commits: AtomicU64,
    pub(crate) table_commit_failures: AtomicU64,
    /// Reads from object storage (file footers and row groups) the read path made.
    pub(crate) remote_read_seconds: Histogram,
}

impl LakeMetrics {
    /// Counts a segment uploaded and committed.
    pub(crate) fn uploaded(&self, entry: &strata_lake::FileEntry) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.uploaded_bytes
            .fetch_add(entry.size_bytes, Ordering::Relaxed);
        self.offloaded_segment_bytes
            .fetch_add(entry.source_bytes, Ordering::Relaxed);
    }

    /// Counts a fresh piece uploaded and committed.
    pub(crate) fn uploaded_piece(&self, entry: &strata_lake::FileEntry) {
        self.fresh_pieces.fetch_add(1, Ordering::Relaxed);
        self.fresh_piece_bytes
            .fetch_add(entry.size_bytes, Ordering::Relaxed);
    }

    /// Runs a read from object storage, timing it.
    pub(crate) async fn timed<T>(&self, read: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = read.await;
        self.remote_read_seconds.observe(started.elapsed());
        out
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "strata_lake_uploads",
                "Segments offloaded: uploaded as Parquet and committed to the partition's manifest.",
                &self.uploads,
            ),
            (
                "strata_lake_upload_failures",
                "Offload attempts that failed (object storage unreachable, a corrupt segment, …); \
                 each is retried with backoff.",
                &self.upload_failures,
            ),
            (
                "strata_lake_uploaded_bytes",
                "Bytes of the Parquet objects offloaded and committed.",
                &self.uploaded_bytes,
            ),
            (
                "strata_lake_offloaded_segment_bytes",
                "Bytes of the local segments offloaded (before conversion to Parquet).",
                &self.offloaded_segment_bytes,
            ),
            (
                "strata_lake_fresh_pieces",
                "Fresh pieces (records of unsealed segments, after lake.target.lag.ms) uploaded \
                 and committed.",
                &self.fresh_pieces,
            ),
            (
                "strata_lake_fresh_piece_bytes",
                "Bytes of the fresh pieces uploaded and committed.",
                &self.fresh_piece_bytes,
            ),
            (
                "strata_lake_table_commits",
                "Snapshots committed to the topics' Iceberg tables.",
                &self.table_commits,
            ),
            (
                "strata_lake_table_commit_failures",
                "Commits to a topic's Iceberg table that failed (retried at the next pass).",
                &self.table_commit_failures,
            ),
            (
                "strata_lake_read_bytes",
                "Record bytes served to fetches from the lake (reads below the local log start).",
                &self.read_bytes,
            ),
        ];
        for (name, help, value) in counters {
            counter(encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        let mut latency = encoder.encode_descriptor(
            "strata_lake_remote_read_duration_seconds",
            "Time of each read from object storage by the lake read path (a file footer or a row \
             group; reads answered by the read cache are not counted).",
            None,
            MetricType::Histogram,
        )?;
        self.remote_read_seconds.encode(&mut latency)
    }
}

/// What the request path counts, shared by the handlers and the scrape.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Per API.
    pub(crate) requests: Arc<Requests>,
    /// Per topic.
    pub(crate) topics: Topics,
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Hits and misses of the lake's read caches.
fn encode_lake_caches(
    counts: &[(&'static str, u64, u64)],
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    let mut hits = encoder.encode_descriptor(
        "strata_lake_read_cache_hits",
        "Lake reads answered without a read from object storage (cached, or brought by another \
         reader's load in flight), by cache: file footers or row groups.",
        None,
        MetricType::Counter,
    )?;
    for (cache, lookups, loads) in counts {
        ConstCounter::new(lookups.saturating_sub(*loads))
            .encode(hits.encode_family(&[("cache", *cache)])?)?;
    }
    let mut misses = encoder.encode_descriptor(
        "strata_lake_read_cache_misses",
        "Lake reads that went to object storage, by cache: file footers or row groups.",
        None,
        MetricType::Counter,
    )?;
    for (cache, _, loads) in counts {
        ConstCounter::new(*loads).encode(misses.encode_family(&[("cache", *cache)])?)?;
    }
    Ok(())
}

/// The scrape: every metric of one broker.
#[derive(Debug)]
struct Scrape(Arc<Context>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let ctx = &self.0;
        let metrics = &ctx.metrics;
        gauge(
            &mut encoder,
            "strata_build_info",
            concat!(
                "Always 1; the broker's version is ",
                env!("CARGO_PKG_VERSION"),
                "."
            ),
            1,
        )?;
        metrics.requests.encode(&mut encoder)?;
        metrics
            .topics
            .retain(|topic| ctx.manager.topic(topic).is_some());
        metrics.topics.encode(&mut encoder)?;
        state::encode_partitions(ctx, &mut encoder)?;
        let (shrinks, expands) = ctx.manager.isr_changes();
        counter(
            &mut encoder,
            "strata_isr_shrinks",
            "ISR shrinks of partitions this broker leads (its own proposals and the controller's, \
             e.g. when it fences a broker), as committed.",
            shrinks,
        )?;
        counter(
            &mut encoder,
            "strata_isr_expands",
            "ISR expansions of partitions this broker leads, as committed.",
            expands,
        )?;
        state::encode_group_lag(ctx, &mut encoder)?;
        state::encode_offload_lag(ctx, &mut encoder)?;
        ctx.lake.metrics().encode(&mut encoder)?;
        encode_lake_caches(&ctx.lake.cache_counts(), &mut encoder)?;
        process::encode(&mut encoder)
    }
}

/// The metrics of the broker serving `ctx`, in Prometheus's text format 0.0.4.
pub(crate) fn render(ctx: &Arc<Context>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(Arc::clone(ctx))));
    let mut text = String::with_capacity(64 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether the broker serves, and if not why: a single broker serves once started; a cluster's
/// broker once it is registered and unfenced in the metadata it has applied (so that metadata is
/// at least as recent as its own registration) and knows the active controller.
pub(crate) fn readiness(ctx: &Context) -> Result<(), String> {
    if ctx.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    let Some(node) = ctx.manager.cluster() else {
        return Ok(());
    };
    let me = ctx.node_id();
    let state = node.state().borrow().clone();
    match state.brokers.get(&me) {
        None => {
            return Err(format!(
                "broker {me} is not registered in the applied metadata yet (applied index {})",
                state.applied_index
            ));
        }
        Some(b) if b.fenced => {
            return Err(format!(
                "broker {me} is fenced in the applied metadata (applied index {})",
                state.applied_index
            ));
        }
        Some(_) => {}
    }
    if node.controller_id().is_none() {
        return Err("no active controller is known".into());
    }
    Ok(())
}

/// Gauges computed from the broker's state at scrape.
mod state {
    use super::*;

    /// Partitions, leaders, under-replicated, under-min-ISR and offline partitions.
    pub(super) fn encode_partitions(ctx: &Context, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let me = ctx.node_id();
        let (mut replicas, mut leaders, mut under_replicated, mut under_min_isr) = (0, 0, 0, 0);
        for topic in ctx.manager.topics() {
            let min_insync = topic.config.min_insync_replicas();
            for partition in &topic.partitions {
                replicas += 1;
                let assignment = partition.assignment();
                if assignment.leader != me {
                    continue;
                }
                leaders += 1;
                under_replicated += i64::from(assignment.isr.len() < assignment.replicas.len());
                under_min_isr += i64::from(assignment.isr.len() < min_insync);
            }
        }
        gauge(
            encoder,
            "strata_partitions",
            "Partition replicas on this broker.",
            replicas,
        )?;
        gauge(
            encoder,
            "strata_leader_partitions",
            "Partitions this broker leads.",
            leaders,
        )?;
        gauge(
            encoder,
            "strata_under_replicated_partitions",
            "Partitions this broker leads whose ISR is smaller than their replica set.",
            under_replicated,
        )?;
        gauge(
            encoder,
            "strata_under_min_isr_partitions",
            "Partitions this broker leads whose ISR is below min.insync.replicas (acks=all \
             produce is refused).",
            under_min_isr,
        )?;
        gauge(
            encoder,
            "strata_offline_partitions",
            "Partitions without a live leader, counted by the active controller only (0 on \
             the other brokers, and on a single broker, whose partitions it leads itself).",
            offline_partitions(ctx),
        )
    }

    fn offline_partitions(ctx: &Context) -> i64 {
        let Some(node) = ctx.manager.cluster() else {
            return 0;
        };
        if node.controller_id() != Some(ctx.node_id()) {
            return 0;
        }
        let state = node.state().borrow().clone();
        let live = |id: i32| state.brokers.get(&id).is_some_and(|b| !b.fenced);
        state
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.leader < 0 || !live(p.leader))
            .count() as i64
    }

    /// Lag of every group this broker coordinates, per partition it holds a replica of: the
    /// high watermark less the committed offset.
    pub(super) fn encode_group_lag(ctx: &Context, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut rows = Vec::new();
        for coordinator in ctx.groups.all().0 {
            for (group, _, _) in coordinator.list() {
                for (topic, index, committed) in coordinator.fetch_offsets(&group, None, false) {
                    let Ok(Some(committed)) = committed else {
                        continue;
                    };
                    let Some(partition) = ctx.manager.partition(&topic, index) else {
                        continue;
                    };
                    let lag = (partition.high_watermark() - committed.offset).max(0);
                    rows.push((group.clone(), topic, index, lag));
                }
            }
        }
        rows.sort();
        let mut family = encoder.encode_descriptor(
            "strata_consumer_group_lag",
            "Records between a group's committed offset and the partition's high watermark, for \
             the groups this broker coordinates and the partitions it holds a replica of.",
            None,
            MetricType::Gauge,
        )?;
        for (group, topic, index, lag) in &rows {
            let labels = (
                [("group", group.as_str()), ("topic", topic.as_str())],
                [("partition", *index)],
            );
            ConstGauge::new(*lag).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Offload lag of the tiered partitions this broker leads (their leader offloads them).
    pub(super) fn encode_offload_lag(
        ctx: &Context,
        encoder: &mut DescriptorEncoder,
    ) -> fmt::Result {
        let now = crate::clock::now_ms();
        let mut rows = Vec::new();
        for topic in ctx.manager.topics() {
            if topic.config.get("remote.storage.enable") != "true" {
                continue;
            }
            for partition in topic.partitions.iter().filter(|p| p.is_leader()) {
                let Ok(lag) = partition.offload_lag() else {
                    continue;
                };
                let seconds = lag
                    .oldest_ms
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
                rows.push((topic.name.clone(), partition.index(), lag.bytes, seconds));
            }
        }
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut bytes = encoder.encode_descriptor(
            "strata_lake_offload_lag_bytes",
            "Bytes of a tiered partition's local log not yet in the lake (sealed segments \
             waiting for upload and the active segment), for the partitions this broker leads.",
            None,
            MetricType::Gauge,
        )?;
        for (topic, index, lag, _) in &rows {
            let labels = ([("topic", topic.as_str())], [("partition", *index)]);
            ConstGauge::new(*lag as i64).encode(bytes.encode_family(&labels)?)?;
        }
        let mut seconds = encoder.encode_descriptor(
            "strata_lake_offload_lag_seconds",
            "How long the oldest local segment not yet in the lake has existed (0 when the lake \
             holds the whole log), for the tiered partitions this broker leads.",
            None,
            MetricType::Gauge,
        )?;
        for (topic, index, _, lag) in &rows {
            let labels = ([("topic", topic.as_str())], [("partition", *index)]);
            ConstGauge::new(*lag).encode(seconds.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_each_observation_in_its_bucket_and_sums_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 60.0036).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.len(), LATENCY_BOUNDS_SECONDS.len() + 1);
        assert_eq!(buckets[0], (0.0005, 2), "at the bound counts in the bucket");
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets.last().copied(), Some((f64::INFINITY, 1)));
        for (seconds, nanos) in LATENCY_BOUNDS_SECONDS.iter().zip(LATENCY_BOUNDS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn topics_count_bytes_and_forget_deleted_ones() {
        let topics = Topics::default();
        topics.bytes_in("a", 10);
        topics.bytes_in("a", 5);
        topics.bytes_out("a", 7);
        topics.bytes_out("b", 0);
        topics.bytes_out("c", 3);
        let read = |t: &str| {
            topics.topics.read().get(t).map(|io| {
                (
                    io.bytes_in.load(Ordering::Relaxed),
                    io.bytes_out.load(Ordering::Relaxed),
                )
            })
        };
        assert_eq!(read("a"), Some((15, 7)));
        assert_eq!(read("b"), None, "no bytes, no entry");
        topics.retain(|t| t == "a");
        assert_eq!(read("c"), None);
        assert_eq!(read("a"), Some((15, 7)));
    }

    #[test]
    fn api_names_are_kafkas() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1), "Fetch");
        assert_eq!(api_name(127), "127");
    }

    #[tokio::test]
    async fn requests_are_counted_when_answered_refused_or_done_waiting() {
        let requests = Arc::new(Requests::default());
        let started = Instant::now();
        let ready = requests.finish(Some(3), started, Ok(Reply::Ready(None)));
        assert!(matches!(ready, Ok(Reply::Ready(None))));
        let refused = requests.finish(Some(3), started, Err("malformed".into()));
        assert_eq!(refused.unwrap_err(), "malformed");
        assert!(requests.finish(None, started, Err("short".into())).is_err());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
            Err::<crate::outgoing::Outgoing, _>("failed late".to_string())
        });
        let waiting = requests.finish(Some(1), started, Ok(Reply::Waiting(task)));
        let stats = |k: i16| {
            let s = requests.stats(k).unwrap();
            (
                s.requests.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                s.latency.count(),
            )
        };
        assert_eq!(stats(3), (2, 1, 2));
        assert_eq!(stats(1), (1, 0, 0), "timed when it finishes");
        tx.send(()).unwrap();
        let Ok(Reply::Waiting(task)) = waiting else {
            panic!("still waiting")
        };
        assert_eq!(task.await.unwrap().unwrap_err(), "failed late");
        assert_eq!(stats(1), (1, 1, 1));
    }

    #[test]
    fn a_scrape_counts_this_broker_s_partitions_and_readiness_follows_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::handler::tests::context(dir.path());
        ctx.manager
            .create_topic("t", 3, 1, Default::default(), false, 0)
            .unwrap();
        ctx.metrics.topics.bytes_in("t", 5);
        ctx.metrics.topics.bytes_in("gone", 5);
        let text = render(&ctx);
        for line in [
            "strata_partitions 3",
            "strata_leader_partitions 3",
            "strata_under_replicated_partitions 0",
            "strata_offline_partitions 0",
            "strata_topic_bytes_in_total{topic=\"t\"} 5",
            "strata_lake_offload_lag_bytes{topic=\"t\",partition=\"2\"} 0",
            "strata_lake_offload_lag_seconds{topic=\"t\",partition=\"0\"} 0.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert!(!text.contains("gone"), "a deleted topic is forgotten");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        assert_eq!(readiness(&ctx), Ok(()));
        ctx.shutdown.cancel();
        assert_eq!(readiness(&ctx), Err("shutting down".to_string()));
    }

    #[test]
    fn the_text_is_prometheus_0_0_4() {
        let requests = Requests::default();
        let stats = requests.stats(0).unwrap();
        stats.requests.fetch_add(2, Ordering::Relaxed);
        stats.latency.observe(Duration::from_millis(2));
        let topics = Topics::default();
        topics.bytes_in("t\"x", 9);
        #[derive(Debug)]
        struct Both(Requests, Topics);
        impl Collector for Both {
            fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
                self.0.encode(&mut encoder)?;
                self.1.encode(&mut encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Both(requests, topics)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE strata_requests_total counter",
            "strata_requests_total{api=\"Produce\"} 2",
            "strata_request_errors_total{api=\"Produce\"} 0",
            "# TYPE strata_request_duration_seconds histogram",
            "strata_request_duration_seconds_bucket{api=\"Produce\",le=\"0.001\"} 0",
            "strata_request_duration_seconds_bucket{api=\"Produce\",le=\"0.0025\"} 1",
            "strata_request_duration_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 1",
            "strata_request_duration_seconds_count{api=\"Produce\"} 1",
            "strata_topic_bytes_in_total{topic=\"t\\\"x\"} 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "not OpenMetrics");
    }
}
