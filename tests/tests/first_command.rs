//! The README's first commands, run as a new user runs them: `strata serve` with no flag from an
//! empty working directory (the README's `cargo run --release -p strata -- serve`; the binary here
//! is `strata-under-test`, which runs exactly `strata`'s entry point), then `strata groups list`
//! and `strata lake ls` with no flag in the same folder. The only setting is the port, through
//! `STRATA_LISTEN`, so that tests can run side by side; nothing else of the test's environment
//! reaches the commands.
//!
//! A second `strata serve` in that folder is refused: one broker per data folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_tests::{ChildBroker, DEADLINE, free_port, producer, run_to_exit};

const TOPIC: &str = "first";
const GROUP: &str = "first-steps";
const RECORDS: usize = 20;

/// `strata ARGS` run in `folder` with `STRATA_LISTEN` as its whole environment.
fn strata(binary: &Path, folder: &Path, listen: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .current_dir(folder)
        .env_clear()
        .env("STRATA_LISTEN", listen.to_string());
    command
}

fn assert_success(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Reads every record of the topic as the group, and commits the group's offset.
fn consume_and_commit(bootstrap: &str) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let start = Instant::now();
    while read.len() < RECORDS {
        assert!(start.elapsed() < DEADLINE, "read {} records", read.len());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => read.push((
                m.offset(),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            )),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_serve_with_no_flag_works_from_an_empty_folder() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("fresh");
    std::fs::create_dir(&folder).unwrap();
    let listen = free_port();
    let broker = ChildBroker::spawn(
        strata(&binary, &folder, listen, &["serve"]),
        listen,
        &dir.path().join("serve.log"),
    );

    let producer = producer(&broker.bootstrap, &[]);
    for i in 0..RECORDS {
        let value = format!("record-{i}");
        producer
            .send(
                FutureRecord::to(TOPIC).key("k").payload(&value),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    let bootstrap = broker.bootstrap.clone();
    let read = tokio::task::spawn_blocking(move || consume_and_commit(&bootstrap))
        .await
        .unwrap();
    let expected: Vec<(i64, String)> = (0..RECORDS)
        .map(|i| (i as i64, format!("record-{i}")))
        .collect();
    assert_eq!(read, expected);

    // The data is in ./strata-data of the working directory, locked by the running broker.
    let data = folder.join("strata-data");
    assert!(data.join("topics").join(format!("{TOPIC}-0")).is_dir());
    assert_eq!(
        std::fs::read_to_string(data.join(".lock")).unwrap(),
        format!("{}\n", broker.pid())
    );

    let (binary2, folder2) = (binary.clone(), folder.clone());
    let (groups, lake, second) = tokio::task::spawn_blocking(move || {
        let groups = run_to_exit(&mut strata(&binary2, &folder2, listen, &["groups", "list"]));
        // Read-only: works beside the running broker.
        let lake = run_to_exit(&mut strata(&binary2, &folder2, listen, &["lake", "ls"]));
        // Another port, so that the folder's lock is what refuses it, not a bound port.
        let second = run_to_exit(&mut strata(&binary2, &folder2, free_port(), &["serve"]));
        (groups, lake, second)
    })
    .await
    .unwrap();
    let groups = assert_success("strata groups list", &groups);
    assert!(
        groups.lines().any(|line| line.starts_with(GROUP)),
        "{groups}"
    );
    let lake = assert_success("strata lake ls", &lake);
    assert!(lake.contains("TOPIC"), "{lake}");
    assert!(data.join("lake").is_dir());
    let entries: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "only strata-data in the working directory"
    );

    assert!(!second.status.success(), "a second broker started");
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains(&data.display().to_string())
            && message.contains(&format!("pid {}", broker.pid())),
        "{message}"
    );

    let status = broker.terminate();
    assert!(status.success(), "strata serve exited with {status}");
    let lake = run_to_exit(&mut strata(&binary, &folder, listen, &["lake", "ls"]));
    assert_success("strata lake ls after the broker stopped", &lake);
}
