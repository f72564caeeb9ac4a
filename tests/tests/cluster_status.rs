//! `strata cluster status` against three `strata serve` processes on loopback (each a voter of the
//! metadata quorum, each in its own rack): the brokers, the controller and the cluster id of a
//! healthy cluster; then, after one broker is killed with SIGKILL and the controller fenced it,
//! that broker as missing, the partitions it replicated as under-replicated and the one it alone
//! held as offline (exit status 2); then, once it is back, a clean report again (exit status 0).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use strata_tests::{
    ChildBroker, ClusterMember, cluster_bootstrap, cluster_members, quorum_voters, run_to_exit,
    start_member, wait_for, wait_for_brokers,
};

/// Three replicas per partition: one lost broker leaves every partition led, with two in sync.
const REPLICATED: &str = "replicated";
/// One replica per partition, one partition per broker: a lost broker takes one offline.
const SINGLE: &str = "single";
const PARTITIONS: i32 = 3;
/// The broker killed. The status is asked of it first, then of broker 1: a dead broker in the
/// bootstrap list is skipped.
const VICTIM: i32 = 3;

fn start(binary: &Path, member: &ClusterMember, voters: &str, tier_url: &str) -> ChildBroker {
    let id = member.id.to_string();
    let rack = format!("rack-{id}");
    start_member(
        binary,
        member,
        voters,
        &[
            "--rack",
            &rack,
            "--tier-url",
            tier_url,
            "--set",
            "broker.session.timeout.ms=2000",
        ],
    )
}

/// Runs `strata cluster status` with `extra` arguments: `(exit status, standard output)`.
fn cluster_status(binary: &Path, bootstrap: &str, extra: &[&str]) -> (Option<i32>, String) {
    let output = run_to_exit(
        Command::new(binary)
            .args(["cluster", "status", "--bootstrap", bootstrap])
            .args(extra)
            .env_remove("STRATA_BOOTSTRAP")
            .env("STRATA_LOG", "warn"),
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    if output.status.code() == Some(1) {
        eprintln!(
            "strata cluster status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (output.status.code(), stdout)
}

/// `strata cluster status --json`, parsed: `(exit status, the object)`; `None` when the command
/// failed (no broker answered).
fn status_json(binary: &Path, bootstrap: &str) -> Option<(i32, Value)> {
    let (code, stdout) = cluster_status(binary, bootstrap, &["--json"]);
    match code {
        Some(code @ (0 | 2)) => {
            let json = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
            Some((code, json))
        }
        _ => None,
    }
}

/// The ids in a JSON array of numbers.
fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_i64().expect("an id"))
        .collect()
}

/// `(topic, partition)` of every row of a JSON partition list.
fn partitions_of(rows: &Value) -> Vec<(String, i64)> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().expect("a topic").to_string(),
                p["partition"].as_i64().expect("a partition"),
            )
        })
        .collect()
}

/// The line of the broker table about broker `id`, split into its cells.
fn broker_line(text: &str, id: i32) -> Vec<String> {
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().is_some_and(|c| *c == id.to_string()))
        .unwrap_or_else(|| panic!("no line for broker {id}:\n{text}"))
}

/// `(partition, replicas, isr)` of one partition.
type PartitionReplicas = (i32, Vec<i32>, Vec<i32>);

/// Every partition of `topic`, as rdkafka sees the cluster.
fn replicas(bootstrap: &str, topic: &str) -> Option<Vec<PartitionReplicas>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().len() != PARTITIONS as usize {
        return None;
    }
    let mut out: Vec<_> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.replicas().to_vec(), p.isr().to_vec()))
        .collect();
    out.sort();
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_brokers_controller_and_a_lost_broker_s_partitions() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let help = run_to_exit(Command::new(&binary).args(["cluster", "status", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains("0 when every partition has a leader") && help.contains("2 when some"),
        "--help names the exit statuses:\n{help}"
    );

    let root = tempfile::tempdir().unwrap();
    let tier_url = format!("file://{}", root.path().join("lake").display());
    std::fs::create_dir_all(root.path().join("lake")).unwrap();
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    for member in &mut members {
        member.process = Some(start(&binary, member, &voters, &tier_url));
    }
    let listen = |id: i32| members[(id - 1) as usize].listen.to_string();
    let (first, victim) = (listen(1), listen(VICTIM));
    let everyone = cluster_bootstrap(&members);

    // Every broker registered, then the two topics, placed by the controller.
    wait_for_brokers(&everyone, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &everyone)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[
                NewTopic::new(REPLICATED, PARTITIONS, TopicReplication::Fixed(3)),
                NewTopic::new(SINGLE, PARTITIONS, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let whole = || {
        replicas(&first, REPLICATED)?
            .iter()
            .all(|(_, replicas, isr)| replicas.len() == 3 && isr.len() == 3)
            .then_some(())
    };
    wait_for("the replicated topic with three in-sync replicas", whole);
    let single = wait_for("the single-replica topic", || replicas(&first, SINGLE));
    let alone_on_victim: Vec<(String, i64)> = single
        .iter()
        .filter(|(_, replicas, _)| replicas == &[VICTIM])
        .map(|(p, _, _)| (SINGLE.to_string(), i64::from(*p)))
        .collect();
    assert_eq!(
        alone_on_victim.len(),
        1,
        "one partition per broker: {single:?}"
    );
    let cluster_id = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &first)
            .create()
            .unwrap();
        consumer
            .client()
            .fetch_cluster_id(Duration::from_secs(10))
            .expect("a cluster id")
    };

    // Healthy: three live brokers with their racks, one controller, nothing to report.
    let (code, json) = status_json(&binary, &first).expect("the status of a healthy cluster");
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["asked"], first.as_str());
    assert_eq!(json["cluster_id"], cluster_id.as_str());
    let brokers = json["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 3, "{json:#}");
    for (broker, member) in brokers.iter().zip(&members) {
        assert_eq!(broker["id"], member.id);
        assert_eq!(broker["host"], "127.0.0.1");
        assert_eq!(broker["port"], member.listen.port());
        assert_eq!(broker["rack"], format!("rack-{}", member.id).as_str());
    }
    let controller = json["controller_id"].as_i64().expect("a controller");
    let marked: Vec<&Value> = brokers.iter().filter(|b| b["controller"] == true).collect();
    assert_eq!(marked.len(), 1, "{json:#}");
    assert_eq!(marked[0]["id"], controller);
    assert_eq!(ids(&json["missing_brokers"]), Vec::<i64>::new());
    assert_eq!(json["topic_count"], 2);
    assert_eq!(json["partition_count"], 2 * PARTITIONS);
    assert_eq!(partitions_of(&json["under_replicated"]), vec![]);
    assert_eq!(partitions_of(&json["offline"]), vec![]);

    let (code, text) = cluster_status(&binary, &first, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("cluster id  {cluster_id}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("controller  {controller}")),
        "{text}"
    );
    for member in &members {
        let cells = broker_line(&text, member.id);
        assert_eq!(cells[1], member.listen.to_string(), "{text}");
        assert_eq!(cells[2], format!("rack-{}", member.id), "{text}");
        let expected = if i64::from(member.id) == controller {
            "live, controller"
        } else {
            "live"
        };
        assert_eq!(cells[3..].join(" "), expected, "{text}");
    }
    assert!(
        text.contains("2 topic(s), 6 partition(s): 0 under-replicated, 0 offline"),
        "{text}"
    );

    // SIGKILL one broker: once the controller fenced it (broker.session.timeout.ms), it is
    // missing, every partition of the replicated topic is led elsewhere with two in sync, and
    // its single-replica partition is offline.
    let bootstrap = format!("{victim},{first}");
    members[(VICTIM - 1) as usize]
        .process
        .take()
        .unwrap()
        .kill();
    let (code, json) = wait_for("the killed broker fenced", || {
        status_json(&binary, &bootstrap).filter(|(_, json)| {
            json["missing_brokers"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        })
    });
    assert_eq!(code, 2, "an offline partition: {json:#}");
    assert_eq!(json["asked"], first.as_str(), "the dead broker was skipped");
    assert_eq!(ids(&json["missing_brokers"]), vec![i64::from(VICTIM)]);
    let live: Vec<i64> = json["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(live, vec![1, 2]);
    let controller = json["controller_id"].as_i64().expect("a controller");
    assert!([1, 2].contains(&controller), "{json:#}");
    let expected: Vec<(String, i64)> = (0..PARTITIONS)
        .map(|p| (REPLICATED.to_string(), i64::from(p)))
        .collect();
    assert_eq!(partitions_of(&json["under_replicated"]), expected);
    for p in json["under_replicated"].as_array().unwrap() {
        let leader = p["leader"].as_i64().expect("a leader");
        assert_ne!(leader, i64::from(VICTIM), "{p}");
        assert_eq!(ids(&p["replicas"]).len(), 3, "{p}");
        let isr = ids(&p["isr"]);
        assert_eq!(isr.len(), 2, "{p}");
        assert!(!isr.contains(&i64::from(VICTIM)), "{p}");
        assert_eq!(ids(&p["offline_replicas"]), vec![i64::from(VICTIM)], "{p}");
    }
    assert_eq!(partitions_of(&json["offline"]), alone_on_victim);
    assert_eq!(json["offline"][0]["leader"], Value::Null);

    let (code, text) = cluster_status(&binary, &bootstrap, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        broker_line(&text, VICTIM)[1..],
        ["-", "-", "missing"],
        "{text}"
    );
    assert!(
        text.contains("2 topic(s), 6 partition(s): 3 under-replicated, 1 offline"),
        "{text}"
    );
    assert!(
        text.contains("\nUNDER-REPLICATED\n") && text.contains("\nOFFLINE\n"),
        "{text}"
    );

    // Back: it registers, leads its single-replica partition again and rejoins every ISR.
    let member = &mut members[(VICTIM - 1) as usize];
    member.process = Some(start(&binary, member, &voters, &tier_url));
    let (_, json) = wait_for("a clean status once the broker is back", || {
        status_json(&binary, &bootstrap).filter(|(code, json)| {
            *code == 0
                && json["brokers"].as_array().is_some_and(|b| b.len() == 3)
                && json["under_replicated"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
        })
    });
    assert_eq!(ids(&json["missing_brokers"]), Vec::<i64>::new());
    assert_eq!(partitions_of(&json["offline"]), vec![]);
    wait_for("rdkafka to see every ISR whole too", whole);

    for member in members {
        if let Some(process) = member.process {
            assert!(process.terminate().success(), "a clean exit");
        }
    }
}
