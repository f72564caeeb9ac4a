//! ACLs end to end with librdkafka: `authorizer.enabled=true` on a broker whose clients are
//! `User:ANONYMOUS` (PLAINTEXT). Bindings are written while that principal is a super user, then
//! the broker restarts without super users: the bindings survived, a denied principal gets
//! Kafka's authorization errors and sees no data, Metadata hides what it may not describe, and
//! `strata acl` manages the bindings of a running broker.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use strata::admin::AdminClient;
use strata_broker::security::acl::{
    AclBinding, AclBindingFilter, AclOperation, AclPermission, PatternType, ResourceType,
};
use strata_tests::{DEADLINE, TestBroker, create_topic, producer, run_to_exit};

const ANONYMOUS: &str = "User:ANONYMOUS";

fn settings(super_users: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorizer.enabled", "true".to_string()),
        ("super.users", super_users.to_string()),
        ("auto.create.topics.enable", "false".to_string()),
    ]
}

async fn start(dir: &std::path::Path, super_users: &str) -> TestBroker {
    let owned = settings(super_users);
    let settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestBroker::start_in(dir, &settings).await
}

fn binding(
    (resource_type, pattern_type, name): (ResourceType, PatternType, &str),
    operation: AclOperation,
    permission_type: AclPermission,
) -> AclBinding {
    AclBinding {
        resource_type,
        resource_name: name.to_string(),
        pattern_type,
        principal: ANONYMOUS.to_string(),
        host: "*".to_string(),
        operation,
        permission_type,
    }
}

/// Sends one record and returns the error code it failed with, if any.
async fn send(producer: &FutureProducer, topic: &str) -> Option<RDKafkaErrorCode> {
    let record = FutureRecord::to(topic).key("k").payload("v");
    match producer.send(record, DEADLINE).await {
        Ok(_) => None,
        Err((KafkaError::MessageProduction(code), _)) => Some(code),
        Err((other, _)) => panic!("produce to {topic}: {other}"),
    }
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

/// Polls until `count` records arrived, or until the error `expected` is reported (then no
/// record may have arrived): `Ok(values)` or `Err(code)`.
fn consume(
    consumer: &BaseConsumer,
    count: usize,
    expected: Option<RDKafkaErrorCode>,
) -> Result<Vec<Vec<u8>>, RDKafkaErrorCode> {
    let start = Instant::now();
    let mut values = Vec::new();
    while values.len() < count {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out: {} of {count} records, no {expected:?}",
            values.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => values.push(m.payload().unwrap_or_default().to_vec()),
            Some(Err(KafkaError::MessageConsumption(code))) if Some(code) == expected => {
                assert!(values.is_empty(), "records arrived before {code:?}");
                return Err(code);
            }
            // Other errors (a coordinator not found yet, …) are retried by the client.
            Some(Err(_)) | None => {}
        }
    }
    Ok(values)
}

fn assign(consumer: &BaseConsumer, topic: &str) {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
}

/// A Fetch of partition 0 of `topic` from offset 0, as a consumer (`replica_id` -1) or a
/// follower broker: the partition's error code and the bytes of records answered.
fn fetch(client: &mut AdminClient, topic: &str, replica_id: i32) -> (i16, usize) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let response = client.call(&request, 12).unwrap();
    let partition = &response.responses[0].partitions[0];
    let bytes = partition.records.as_ref().map_or(0, |r| r.len());
    (partition.error_code, bytes)
}

fn listed_topics(bootstrap: &str) -> Vec<String> {
    let metadata = consumer(bootstrap, "readers")
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap();
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    names.sort();
    names
}

/// Everything denied and allowed on one broker: produce, consume, Metadata, groups; DENY over a
/// prefixed ALLOW; bindings across a restart; a super user allowed everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_principal_gets_authorization_errors_and_sees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // While User:ANONYMOUS is a super user: topics, a record in each, and the bindings.
    let broker = start(&data, ANONYMOUS).await;
    let topics = ["granted", "denied", "pub-logs", "pub-secret"];
    for topic in topics {
        create_topic(&broker.bootstrap, topic, 1).await;
    }
    let admin_producer = producer(&broker.bootstrap, &[]);
    for topic in topics {
        assert_eq!(send(&admin_producer, topic).await, None, "{topic}");
    }
    drop(admin_producer);
    use AclOperation::{Read, Write};
    use AclPermission::{Allow, Deny};
    use PatternType::{Literal, Prefixed};
    use ResourceType::{Group, Topic};
    let bindings = [
        binding((Topic, Literal, "granted"), Read, Allow),
        binding((Topic, Literal, "granted"), Write, Allow),
        binding((Topic, Prefixed, "pub-"), Read, Allow),
        binding((Topic, Prefixed, "pub-"), Write, Allow),
        binding((Topic, Literal, "pub-secret"), Read, Deny),
        binding((Group, Literal, "readers"), Read, Allow),
    ];
    let mut admin = AdminClient::connect(&broker.bootstrap).unwrap();
    strata::acl::create(&mut admin, &bindings).unwrap();
    let mut stored = strata::acl::describe(&mut admin, &AclBindingFilter::any()).unwrap();
    stored.sort();
    let mut expected = bindings.to_vec();
    expected.sort();
    assert_eq!(stored, expected);
    drop(admin);
    broker.stop().await;

    // No super user now: the bindings decide.
    let broker = start(&data, "").await;
    let bootstrap = broker.bootstrap.clone();
    // The bindings survived the restart; this principal may not read them (no DESCRIBE on the
    // cluster), and says so with Kafka's error.
    let mut admin = AdminClient::connect(&bootstrap).unwrap();
    let refused = strata::acl::describe(&mut admin, &AclBindingFilter::any()).unwrap_err();
    assert!(
        refused.to_string().contains("Kafka error 31"),
        "{refused:#}"
    );
    drop(admin);

    // Metadata hides the topic it may not describe; READ/WRITE (also by prefix) imply DESCRIBE.
    assert_eq!(
        listed_topics(&bootstrap),
        ["granted", "pub-logs", "pub-secret"]
    );

    // Produce: WRITE needed.
    let producer = producer(&bootstrap, &[]);
    assert_eq!(
        send(&producer, "denied").await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(send(&producer, "granted").await, None);
    assert_eq!(send(&producer, "pub-logs").await, None);

    // Fetch: READ needed, and a DENY wins over the prefixed ALLOW; no record of a denied topic
    // leaves the broker. A follower's fetch needs CLUSTER_ACTION on the cluster.
    let mut client = AdminClient::connect(&bootstrap).unwrap();
    assert_eq!(fetch(&mut client, "denied", -1), (29, 0));
    assert_eq!(fetch(&mut client, "pub-secret", -1), (29, 0));
    let (code, bytes) = fetch(&mut client, "granted", -1);
    assert!(code == 0 && bytes > 0, "{code} {bytes}");
    assert_eq!(fetch(&mut client, "granted", 1), (29, 0));
    drop(client);
    // librdkafka reports it to a subscribed consumer, and reads what it may.
    let reader = consumer(&bootstrap, "readers");
    reader.subscribe(&["denied"]).unwrap();
    assert_eq!(
        consume(&reader, 1, Some(RDKafkaErrorCode::TopicAuthorizationFailed)),
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    let reader = consumer(&bootstrap, "readers");
    assign(&reader, "granted");
    assert_eq!(consume(&reader, 2, None).unwrap().len(), 2);

    // A consumer group needs READ on the group.
    let outsider = consumer(&bootstrap, "outsiders");
    outsider.subscribe(&["granted"]).unwrap();
    assert_eq!(
        consume(
            &outsider,
            1,
            Some(RDKafkaErrorCode::GroupAuthorizationFailed)
        ),
        Err(RDKafkaErrorCode::GroupAuthorizationFailed)
    );
    let member = consumer(&bootstrap, "readers");
    member.subscribe(&["pub-logs"]).unwrap();
    assert_eq!(consume(&member, 2, None).unwrap().len(), 2);
    member
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop((outsider, member, reader, producer));
    broker.stop().await;

    // A super user is allowed everything, DENY bindings included.
    let broker = start(&data, &format!("User:admin;{ANONYMOUS}")).await;
    let reader = consumer(&broker.bootstrap, "anyone");
    assign(&reader, "pub-secret");
    assert_eq!(consume(&reader, 1, None).unwrap().len(), 1);
    assert_eq!(listed_topics(&broker.bootstrap).len(), 4);
    drop(reader);
    broker.stop().await;
}

fn strata(args: &[&str]) -> (bool, String, String) {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let output = run_to_exit(Command::new(binary).args(args));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `strata acl add | list | remove` (the built binary) against a running broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_acl_adds_lists_and_removes_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir.path().join("data"), ANONYMOUS).await;
    let at = broker.bootstrap.clone();
    let (ok, out, err) = strata(&[
        "acl",
        "add",
        "--bootstrap-server",
        &at,
        "--allow-principal",
        "User:alice",
        "--operation",
        "Read",
        "--operation",
        "Describe",
        "--topic",
        "orders",
        "--group",
        "billing",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("added 4 binding(s)"), "{out}");
    let (ok, out, err) = strata(&[
        "acl",
        "add",
        "--bootstrap",
        &at,
        "--deny-principal",
        "User:mallory",
        "--deny-host",
        "10.0.0.9",
        "--topic",
        "ord",
        "--resource-pattern-type",
        "prefixed",
    ]);
    assert!(ok, "{out}{err}");

    // Every binding applying to topic orders: alice's two, mallory's prefix.
    let (ok, out, err) = strata(&[
        "acl",
        "list",
        "--bootstrap",
        &at,
        "--topic",
        "orders",
        "--resource-pattern-type",
        "match",
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().any(|r| r["principal"] == "User:mallory"
        && r["pattern_type"] == "PREFIXED"
        && r["host"] == "10.0.0.9"
        && r["operation"] == "ALL"
        && r["permission_type"] == "DENY"));
    let (ok, out, _) = strata(&[
        "acl",
        "list",
        "--bootstrap",
        &at,
        "--principal",
        "User:alice",
    ]);
    assert!(ok && out.contains("4 binding(s)"), "{out}");
    assert!(out.contains("billing") && !out.contains("mallory"), "{out}");

    // Remove one operation of alice's, then every binding on the group.
    let (ok, out, err) = strata(&[
        "acl",
        "remove",
        "--bootstrap",
        &at,
        "--allow-principal",
        "User:alice",
        "--operation",
        "Describe",
        "--topic",
        "orders",
    ]);
    assert!(ok && out.contains("removed 1 binding(s)"), "{out}{err}");
    let (ok, out, err) = strata(&["acl", "remove", "--bootstrap", &at, "--group", "billing"]);
    assert!(ok && out.contains("removed 2 binding(s)"), "{out}{err}");
    let (ok, out, _) = strata(&["acl", "list", "--bootstrap", &at, "--json"]);
    assert!(ok);
    let left: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 2, "{out}");

    // Bad input is explained, and nothing reaches the broker.
    let (ok, _, err) = strata(&["acl", "add", "--bootstrap", &at, "--topic", "t"]);
    assert!(!ok && err.contains("--allow-principal"), "{err}");
    let (ok, _, err) = strata(&[
        "acl",
        "add",
        "--bootstrap",
        &at,
        "--allow-principal",
        "User:a",
        "--operation",
        "Reed",
        "--topic",
        "t",
    ]);
    assert!(!ok && err.contains("--operation"), "{err}");
    broker.stop().await;

    // Without a super user the same commands are refused with Kafka's error.
    let broker = start(&dir.path().join("data"), "").await;
    let (ok, _, err) = strata(&[
        "acl",
        "add",
        "--bootstrap",
        &broker.bootstrap,
        "--allow-principal",
        "User:ANONYMOUS",
        "--cluster",
    ]);
    assert!(!ok && err.contains("Kafka error 31"), "{err}");
    broker.stop().await;
}

/// A librdkafka config for SCRAM user `user` on the SASL_PLAINTEXT listener at `bootstrap`.
fn scram(bootstrap: &str, user: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", user)
        .set("sasl.password", format!("{user}-secret"))
        .set("message.timeout.ms", "60000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// Authenticated principals over SASL/SCRAM: the admin (a super user) writes the bindings with
/// `strata acl --command-config`; alice may use what a prefix grants her, bob nothing, and the
/// audit log is not needed to see it: every refusal is Kafka's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_get_what_their_bindings_grant() {
    use strata_broker::security::scram::{ITERATIONS_MIN, ScramMechanism};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let users = strata_broker::security::users::OfflineUsers::open(&data).unwrap();
    for user in ["admin", "alice", "bob"] {
        users
            .add(
                ScramMechanism::Sha256,
                user,
                &format!("{user}-secret"),
                ITERATIONS_MIN,
            )
            .unwrap();
    }
    drop(users);
    let config = strata_broker::BrokerConfig::new(
        data.clone(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        [
            ("listeners", "SASL_PLAINTEXT://127.0.0.1:0"),
            (
                "authorizer.class.name",
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            ),
            ("super.users", "User:admin"),
            ("auto.create.topics.enable", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap();
    let broker = strata_broker::start(config).await.expect("broker starts");
    let bootstrap = broker.local_addr().to_string();

    let admin: FutureProducer = scram(&bootstrap, "admin").create().unwrap();
    for topic in ["alice-orders", "shared"] {
        // No auto-creation: the admin creates them.
        let client: rdkafka::admin::AdminClient<_> = scram(&bootstrap, "admin").create().unwrap();
        let created = client
            .create_topics(
                [&rdkafka::admin::NewTopic::new(
                    topic,
                    1,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )],
                &rdkafka::admin::AdminOptions::new(),
            )
            .await
            .unwrap();
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        assert_eq!(send(&admin, topic).await, None, "{topic}");
    }
    let properties = dir.path().join("admin.properties");
    std::fs::write(
        &properties,
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n\
         sasl.username=admin\nsasl.password=admin-secret\n",
    )
    .unwrap();
    let properties = properties.display().to_string();
    for args in [
        &[
            "--allow-principal",
            "User:alice",
            "--operation",
            "Read",
            "--operation",
            "Write",
            "--topic",
            "alice-",
            "--resource-pattern-type",
            "prefixed",
        ][..],
        &[
            "--allow-principal",
            "User:alice",
            "--operation",
            "Read",
            "--group",
            "alice-group",
        ],
        &[
            "--allow-principal",
            "User:*",
            "--operation",
            "Read",
            "--topic",
            "shared",
        ],
        &[
            "--deny-principal",
            "User:bob",
            "--operation",
            "Read",
            "--topic",
            "shared",
        ],
    ] {
        let mut all = vec![
            "acl",
            "add",
            "--bootstrap-server",
            &bootstrap,
            "--command-config",
            &properties,
        ];
        all.extend_from_slice(args);
        let (ok, out, err) = strata(&all);
        assert!(ok, "{all:?}: {out}{err}");
    }

    // Alice: her prefix, and the topic everyone may read.
    let alice: FutureProducer = scram(&bootstrap, "alice").create().unwrap();
    assert_eq!(send(&alice, "alice-orders").await, None);
    // An idempotent producer's InitProducerId: WRITE on some topic is enough (KIP-679).
    let idempotent: FutureProducer = scram(&bootstrap, "alice")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    assert_eq!(send(&idempotent, "alice-orders").await, None);
    drop(idempotent);
    assert_eq!(
        send(&alice, "shared").await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    let reader: BaseConsumer = scram(&bootstrap, "alice")
        .set("group.id", "alice-group")
        .create()
        .unwrap();
    reader.subscribe(&["alice-orders"]).unwrap();
    assert_eq!(consume(&reader, 3, None).unwrap().len(), 3);
    reader
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    let reader: BaseConsumer = scram(&bootstrap, "alice")
        .set("group.id", "alice-group")
        .create()
        .unwrap();
    assign(&reader, "shared");
    assert_eq!(consume(&reader, 1, None).unwrap().len(), 1);

    // Bob: nothing of alice's, and the DENY keeps him from what everyone else may read.
    let bob: FutureProducer = scram(&bootstrap, "bob").create().unwrap();
    assert_eq!(
        send(&bob, "alice-orders").await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    let metadata = scram(&bootstrap, "bob")
        .create::<BaseConsumer>()
        .unwrap()
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap();
    // Everyone's READ on `shared` lets him describe it (a DENY of READ does not deny DESCRIBE).
    let listed: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert_eq!(listed, ["shared"]);
    let bob_properties = dir.path().join("bob.properties");
    std::fs::write(
        &bob_properties,
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n\
         sasl.username=bob\nsasl.password=bob-secret\n",
    )
    .unwrap();
    let security = strata::admin::ClientSecurity::from_file(&bob_properties).unwrap();
    let mut client = AdminClient::connect_with(&bootstrap, &security).unwrap();
    assert_eq!(fetch(&mut client, "shared", -1), (29, 0));
    assert_eq!(fetch(&mut client, "alice-orders", -1), (29, 0));
    drop((admin, alice, bob, reader, client));
    broker.shutdown().await;
}

/// Each refusal is one audit line naming the principal, the client's address, the operation and
/// the resource (`strata serve`, the built binary, logging at INFO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_audited_with_principal_client_and_resource() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let listen = strata_tests::free_port();
    let broker = strata_tests::ChildBroker::start(
        &binary,
        &data,
        listen,
        &["--set", "authorizer.enabled=true"],
    );
    let producer = producer(&broker.bootstrap, &[]);
    assert_eq!(
        send(&producer, "audited-topic").await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    let log = data.with_extension("log");
    let line = strata_tests::wait_for("the audit line", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains("authorization denied") && l.contains("audited-topic"))
            .map(str::to_string)
    });
    for part in [
        "strata::audit",
        "principal=User:ANONYMOUS",
        "client=127.0.0.1:",
        "operation=\"DESCRIBE\"",
        "resource_type=\"TOPIC\"",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    drop(producer);
    broker.terminate();
}
