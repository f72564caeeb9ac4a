//! Metrics end to end: a broker with `metrics.listen` on port 0 and an S3 lake (s3s-fs), real
//! clients (librdkafka) producing, committing and consuming, and `/metrics` fetched over a real
//! socket and parsed by a Prometheus text parser: request counters and latencies per API, bytes
//! per topic, partitions, group lag, the lake's uploads, offload lag going to zero, remote reads
//! and the read cache, the process's memory and files; `/health` and `/ready`. Then a cluster of
//! three `strata serve` processes: not ready until it has a quorum, ready after; a killed broker
//! shows as ISR shrinks, under-replicated and offline partitions on the others, and its return as
//! ISR expansions.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_broker::BrokerConfig;
use strata_tests::{
    ChildBroker, ClusterMember, S3Server, cluster_bootstrap, cluster_members, free_port,
    quorum_voters, read, start_member, wait_for, wait_for_brokers,
};

const TOPIC: &str = "metered";
const GROUP: &str = "metered-readers";
const RECORDS: usize = 400;
const COMMITTED: i64 = 150;

/// Small segments that roll quickly and leave the local disk once offloaded, so that the first
/// offsets are then read from the lake.
const SETTINGS: &[(&str, &str)] = &[
    ("metrics.listen", "127.0.0.1:0"),
    ("log.segment.bytes", "16384"),
    ("log.roll.ms", "500"),
    ("log.local.retention.ms", "0"),
    ("log.local.retention.bytes", "0"),
    ("num.partitions", "1"),
];

/// One HTTP/1.1 request over a fresh connection: `(status, body)`.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    try_http(addr, method, path).unwrap_or_else(|e| panic!("{method} {path} at {addr}: {e}"))
}

/// [`http`], or the error connecting or reading (a broker not listening yet).
fn try_http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    if path == "/metrics" && status == 200 {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
    }
    Ok((status, body.to_string()))
}

/// `/metrics`, parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.as_bytes().lines()).expect("Prometheus text format")
}

/// The value of the sample `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{metric} is a summary"),
        })
}

fn must(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, metric, labels).unwrap_or_else(|| panic!("no {metric}{labels:?} in the scrape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap()).await;
    let settings = SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut config = BrokerConfig::new(
        dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Some(S3Server::tier_url()),
        settings,
    )
    .unwrap();
    config.tier_env = s3.env();
    let broker = strata_broker::start(config).await.unwrap();
    let bootstrap = broker.local_addr().to_string();
    let metrics = broker.metrics_addr().expect("metrics.listen is set");
    assert_ne!(metrics.port(), 0);

    let probes = tokio::task::spawn_blocking(move || {
        (
            http(metrics, "GET", "/health"),
            http(metrics, "GET", "/ready"),
            http(metrics, "GET", "/nothing-here").0,
            http(metrics, "POST", "/metrics").0,
        )
    })
    .await
    .unwrap();
    assert_eq!(probes.0, (200, "ok\n".to_string()));
    assert_eq!(probes.1, (200, "ready\n".to_string()));
    assert_eq!((probes.2, probes.3), (404, 405));

    // Produce: records of about 200 bytes, uncompressed.
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("compression.type", "none")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut payload_bytes = 0;
    let mut end = 0;
    for i in 0..RECORDS {
        let value = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(180));
        payload_bytes += value.len();
        let delivered = producer
            .send(
                FutureRecord::<(), String>::to(TOPIC)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        end = delivered.offset + 1;
    }
    assert_eq!(end, RECORDS as i64);

    let bootstrap_for_clients = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let bootstrap = bootstrap_for_clients;
        // A group commits an offset behind the end: its lag is the rest.
        let group: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut committed = TopicPartitionList::new();
        committed
            .add_partition_offset(TOPIC, 0, Offset::Offset(COMMITTED))
            .unwrap();
        group.commit(&committed, CommitMode::Sync).unwrap();

        // The lake: everything goes up, the lag goes to zero, the local segments go.
        let lake_done = wait_for("the offload lag to reach zero", || {
            let scrape = scrape(metrics);
            let lag = value(
                &scrape,
                "strata_lake_offload_lag_bytes",
                &[("topic", TOPIC), ("partition", "0")],
            )?;
            (lag == 0.0).then_some(scrape)
        });
        assert_eq!(
            must(
                &lake_done,
                "strata_lake_offload_lag_seconds",
                &[("topic", TOPIC), ("partition", "0")]
            ),
            0.0
        );
        assert!(must(&lake_done, "strata_lake_uploads_total", &[]) >= 2.0);
        assert!(must(&lake_done, "strata_lake_uploaded_bytes_total", &[]) > 0.0);
        assert!(
            must(&lake_done, "strata_lake_offloaded_segment_bytes_total", &[])
                >= payload_bytes as f64
        );

        // A consumer reads everything from the start: the first offsets come from the lake.
        let consumed = read(&bootstrap, TOPIC, &[0], Offset::Beginning, RECORDS);
        assert_eq!(consumed.len(), RECORDS);
        assert_eq!(consumed[0].offset, 0);
        wait_for("every request to be timed", || {
            let scrape = scrape(metrics);
            let fetches = must(&scrape, "strata_requests_total", &[("api", "Fetch")]);
            let timed = must(
                &scrape,
                "strata_request_duration_seconds_count",
                &[("api", "Fetch")],
            );
            // The consumer is gone: no fetch is waiting any more.
            (fetches == timed).then_some(())
        });
        scrape(metrics)
    })
    .await
    .map(|last| check(&last, payload_bytes, end))
    .unwrap();

    broker.shutdown().await;
    s3.stop().await;
}

/// What the last scrape must show.
fn check(scrape: &Scrape, payload_bytes: usize, end: i64) {
    // Requests per API, each timed once.
    for api in [
        "Produce",
        "Fetch",
        "Metadata",
        "ApiVersions",
        "OffsetCommit",
    ] {
        let requests = must(scrape, "strata_requests_total", &[("api", api)]);
        assert!(requests >= 1.0, "{api}: {requests}");
        let timed = must(
            scrape,
            "strata_request_duration_seconds_count",
            &[("api", api)],
        );
        assert_eq!(timed, requests, "{api}");
        assert_eq!(
            must(scrape, "strata_request_errors_total", &[("api", api)]),
            0.0,
            "{api}"
        );
        let sum = must(
            scrape,
            "strata_request_duration_seconds_sum",
            &[("api", api)],
        );
        assert!(sum > 0.0, "{api}: {sum}");
    }
    // Bytes per topic: the batches hold the payloads plus their headers.
    let bytes_in = must(scrape, "strata_topic_bytes_in_total", &[("topic", TOPIC)]);
    assert!(
        bytes_in >= payload_bytes as f64 && bytes_in < 2.0 * payload_bytes as f64,
        "{bytes_in} bytes in for {payload_bytes} bytes of payloads"
    );
    let bytes_out = must(scrape, "strata_topic_bytes_out_total", &[("topic", TOPIC)]);
    assert!(bytes_out >= payload_bytes as f64, "{bytes_out} bytes out");
    // Partitions: the topic's and the internal ones, all led here and in sync.
    let partitions = must(scrape, "strata_partitions", &[]);
    assert!(partitions >= 1.0);
    assert_eq!(must(scrape, "strata_leader_partitions", &[]), partitions);
    assert_eq!(must(scrape, "strata_under_replicated_partitions", &[]), 0.0);
    assert_eq!(must(scrape, "strata_offline_partitions", &[]), 0.0);
    // Group lag: the high watermark less the committed offset.
    assert_eq!(
        must(
            scrape,
            "strata_consumer_group_lag",
            &[("group", GROUP), ("topic", TOPIC), ("partition", "0")]
        ),
        (end - COMMITTED) as f64
    );
    // Remote reads: served from the lake, loaded into the read cache.
    assert!(must(scrape, "strata_lake_read_bytes_total", &[]) > 0.0);
    let misses = must(
        scrape,
        "strata_lake_read_cache_misses_total",
        &[("cache", "row_groups")],
    );
    assert!(misses >= 1.0);
    assert!(
        value(
            scrape,
            "strata_lake_read_cache_hits_total",
            &[("cache", "row_groups")]
        )
        .is_some()
    );
    assert!(
        must(
            scrape,
            "strata_lake_remote_read_duration_seconds_count",
            &[]
        ) >= misses
    );
    assert_eq!(must(scrape, "strata_lake_upload_failures_total", &[]), 0.0);
    // The process.
    assert!(must(scrape, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(must(scrape, "process_open_fds", &[]) >= 3.0);
    assert!(must(scrape, "process_max_fds", &[]) >= must(scrape, "process_open_fds", &[]));
    assert!(scrape.docs.contains_key("strata_requests_total"));
}

/// A cluster member with its metrics listener.
fn start(binary: &Path, member: &ClusterMember, voters: &str, metrics: SocketAddr) -> ChildBroker {
    let metrics = metrics.to_string();
    let lake = format!("file://{}", member.dir.join("lake").display());
    start_member(
        binary,
        member,
        voters,
        &[
            "--metrics-listen",
            &metrics,
            "--tier-url",
            &lake,
            "--set",
            "broker.session.timeout.ms=2000",
        ],
    )
}

/// The sum of `metric` over the brokers at `addrs`; `None` while one of them does not answer
/// (a broker starting binds its metrics listener just after its Kafka listener).
fn cluster_sum(addrs: &[SocketAddr], metric: &str) -> Option<f64> {
    let mut sum = 0.0;
    for &addr in addrs {
        let (status, body) = try_http(addr, "GET", "/metrics").ok()?;
        assert_eq!(status, 200, "{body}");
        let scrape = Scrape::parse(body.as_bytes().lines()).expect("Prometheus text format");
        sum += value(&scrape, metric, &[]).unwrap_or(0.0);
    }
    Some(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_reports_readiness_lost_replicas_and_isr_changes() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    let metrics: Vec<SocketAddr> = members.iter().map(|_| free_port()).collect();

    // Alone, the first voter has no quorum: live, not ready, and it says why.
    members[0].process = Some(start(&binary, &members[0], &voters, metrics[0]));
    let (status, body) = wait_for("the first broker's metrics listener", || {
        try_http(metrics[0], "GET", "/ready").ok()
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    assert_eq!(
        http(metrics[0], "GET", "/health"),
        (200, "ok\n".to_string())
    );

    for (member, &addr) in members.iter_mut().zip(&metrics).skip(1) {
        member.process = Some(start(&binary, member, &voters, addr));
    }
    let everyone = cluster_bootstrap(&members);
    tokio::task::spawn_blocking({
        let metrics = metrics.clone();
        move || {
            for &addr in &metrics {
                wait_for("every broker ready", || {
                    (try_http(addr, "GET", "/ready").ok()?.0 == 200).then_some(())
                });
            }
            wait_for_brokers(&everyone, 3);
        }
    })
    .await
    .unwrap();

    // Three replicas of each partition of one topic, one of each of another.
    let bootstrap = cluster_bootstrap(&members);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
    let created = admin
        .create_topics(
            &[
                rdkafka::admin::NewTopic::new(
                    "replicated",
                    3,
                    rdkafka::admin::TopicReplication::Fixed(3),
                ),
                rdkafka::admin::NewTopic::new(
                    "single",
                    3,
                    rdkafka::admin::TopicReplication::Fixed(1),
                ),
            ],
            &rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let victim = members.iter_mut().find(|m| m.id == 3).unwrap();
    let survivors = metrics[..2].to_vec();
    let all = metrics.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("all 6 partitions led, none under-replicated", || {
            let led = cluster_sum(&all, "strata_leader_partitions")?;
            let under = cluster_sum(&all, "strata_under_replicated_partitions")?;
            // The internal topics' partitions count too.
            (led >= 6.0 && under == 0.0).then_some(())
        });
        assert_eq!(cluster_sum(&all, "strata_offline_partitions"), Some(0.0));
    })
    .await
    .unwrap();

    // SIGKILL broker 3: the controller fences it, it leaves every ISR.
    victim.process.take().unwrap().kill();
    let watched = survivors.clone();
    let (shrinks, expands) = tokio::task::spawn_blocking(move || {
        wait_for("the lost broker's partitions reported", || {
            let shrinks = cluster_sum(&watched, "strata_isr_shrinks_total")?;
            let under = cluster_sum(&watched, "strata_under_replicated_partitions")?;
            let offline = cluster_sum(&watched, "strata_offline_partitions")?;
            // Every replicated partition is led by a survivor with two in sync; the single
            // replica on broker 3 has no leader.
            (shrinks >= 1.0 && under >= 3.0 && offline >= 1.0).then_some(())
        });
        (
            cluster_sum(&watched, "strata_isr_shrinks_total").unwrap(),
            cluster_sum(&watched, "strata_isr_expands_total").unwrap(),
        )
    })
    .await
    .unwrap();

    // Back: it catches up and the leaders put it back in sync.
    let victim = members.iter_mut().find(|m| m.id == 3).unwrap();
    victim.process = Some(start(&binary, victim, &voters, metrics[2]));
    let all = metrics.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the returned broker back in every ISR", || {
            let under = cluster_sum(&all, "strata_under_replicated_partitions")?;
            let offline = cluster_sum(&all, "strata_offline_partitions")?;
            let ready = try_http(all[2], "GET", "/ready").ok()?.0 == 200;
            (under == 0.0 && offline == 0.0 && ready).then_some(())
        });
        assert!(cluster_sum(&all, "strata_isr_expands_total").unwrap() > expands);
        assert!(cluster_sum(&all, "strata_isr_shrinks_total").unwrap() >= shrinks);
    })
    .await
    .unwrap();
    for member in &mut members {
        if let Some(process) = member.process.take() {
            process.kill();
        }
    }
}
