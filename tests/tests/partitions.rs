//! Partitions are cheap in file handles: a `strata serve` whose open-files limit is 1024 (set by
//! util-linux's `prlimit` before the broker starts, soft and hard alike) creates a topic of 1,000
//! partitions, three times more than three open files per partition would allow, takes a record
//! in every partition and serves them all back, before and after a restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;
use strata_tests::{ChildBroker, free_port, producer, read};

const TOPIC: &str = "wide";
const PARTITIONS: i32 = 1000;
/// The broker's open-files limit, soft and hard.
const NOFILE: usize = 1024;

/// `strata serve` on `data` under `prlimit --nofile=1024:1024`.
fn serve_limited(binary: &Path, data: &Path) -> ChildBroker {
    let found = Command::new("prlimit").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs util-linux's `prlimit` (apt-get install util-linux)"
    );
    let listen = free_port();
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(binary)
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(listen.to_string())
        .env("STRATA_LOG", "info");
    let broker = ChildBroker::spawn(command, listen, &data.with_extension("log"));
    // prlimit runs the broker in its own process: the limit is the broker's.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(NOFILE.to_string().as_str()),
        "{line}"
    );
    broker
}

/// Files under `dir` the process `pid` holds open.
fn open_files_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

fn read_back(bootstrap: &str) -> BTreeSet<(i32, i64, Vec<u8>)> {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    read(
        bootstrap,
        TOPIC,
        &partitions,
        Offset::Beginning,
        PARTITIONS as usize,
    )
    .into_iter()
    .map(|r| (r.partition, r.offset, r.value.unwrap()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partitions_within_1024_open_files() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let broker = serve_limited(&binary, &data);

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            [&NewTopic::new(
                TOPIC,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer = producer(&broker.bootstrap, &[("acks", "all")]);
    let deliveries: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let value = format!("record of partition {p}");
            let record = FutureRecord::<(), _>::to(TOPIC)
                .partition(p)
                .payload(&value);
            producer.send_result(record).unwrap()
        })
        .collect();
    for (p, delivery) in (0..PARTITIONS).zip(deliveries) {
        let delivered = delivery.await.unwrap().unwrap();
        assert_eq!((delivered.partition, delivered.offset), (p, 0));
    }
    let expected: BTreeSet<(i32, i64, Vec<u8>)> = (0..PARTITIONS)
        .map(|p| (p, 0, format!("record of partition {p}").into_bytes()))
        .collect();
    assert_eq!(read_back(&broker.bootstrap), expected);
    // The segment file cache takes at most half the limit, whatever the partition count.
    let open = open_files_under(broker.pid(), &data);
    assert!(open.len() <= NOFILE / 2, "{} files open", open.len());
    assert_no_exhaustion(&data);

    // A clean restart opens every partition and holds none of their files.
    assert!(broker.terminate().success());
    let broker = serve_limited(&binary, &data);
    // Start-up housekeeping (recovery checks, the first offload pass) opens files for a moment;
    // once it is done, idle partitions hold none.
    strata_tests::wait_for("idle partitions to hold no file", || {
        let open = open_files_under(broker.pid(), &data.join("topics"));
        open.is_empty().then_some(())
    });
    assert_eq!(read_back(&broker.bootstrap), expected);
    assert_no_exhaustion(&data);
}

/// The broker's log (the current run's) shows no exhausted open-files limit.
fn assert_no_exhaustion(data: &Path) {
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
}
