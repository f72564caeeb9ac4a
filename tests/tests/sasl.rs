//! SASL end to end with librdkafka: SCRAM-SHA-256 and SCRAM-SHA-512 producers and consumers on a
//! SASL_PLAINTEXT listener; a wrong password refused with Kafka's authentication error; a client
//! that does not authenticate (librdkafka without SASL, raw Kafka requests) closed before any
//! handler sees its requests; KIP-368 re-authentication on one connection while producing; users
//! made offline with `strata users add --data-dir` before the first start, managed online with
//! `--bootstrap-server --command-config`, and kept across a restart.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, RequestHeader, TopicName,
    create_topics_request::CreatableTopic,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_broker::security::scram::{ITERATIONS_MIN, ScramMechanism};
use strata_broker::security::users::OfflineUsers;
use strata_broker::{BrokerConfig, BrokerHandle};
use strata_tests::{ChildBroker, DEADLINE, free_port, wait_for};

const ADMIN_PASSWORD: &str = "admin-secret";

/// Creates users in a stopped broker's folder, as `strata users add --data-dir` does.
fn add_users(data: &Path, users: &[(ScramMechanism, &str, &str)]) {
    let offline = OfflineUsers::open(data).unwrap();
    for (mechanism, user, password) in users {
        offline
            .add(*mechanism, user, password, ITERATIONS_MIN)
            .unwrap();
    }
}

async fn start(data: &Path, settings: &[(&str, &str)]) -> BrokerHandle {
    let mut all: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.entry("listeners".into())
        .or_insert_with(|| "SASL_PLAINTEXT://127.0.0.1:0".into());
    let config = BrokerConfig::new(
        data.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        all,
    )
    .unwrap();
    strata_broker::start(config).await.expect("broker starts")
}

/// A librdkafka config for the SASL_PLAINTEXT listener at `addr`.
fn sasl_client(addr: SocketAddr, mechanism: &str, user: &str, password: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr.to_string())
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("message.timeout.ms", "60000")
        .set("socket.timeout.ms", "10000");
    config
}

/// Records librdkafka's error and log lines.
#[derive(Clone, Default)]
struct Recorder {
    errors: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<(String, String)>>>,
}

impl ClientContext for Recorder {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs
            .lock()
            .unwrap()
            .push((fac.to_string(), message.to_string()));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .lock()
            .unwrap()
            .push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Recorder {}

impl rdkafka::producer::ProducerContext for Recorder {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

async fn produce(config: &ClientConfig, topic: &str, values: &[String]) {
    let producer: FutureProducer = config.clone().set("linger.ms", "5").create().unwrap();
    let sends: Vec<_> = values
        .iter()
        .map(|v| producer.send(FutureRecord::<(), _>::to(topic).payload(v), DEADLINE))
        .collect();
    for send in sends {
        send.await.expect("delivered");
    }
}

fn consume(config: &ClientConfig, topic: &str, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", format!("{topic}-reader"))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let start = Instant::now();
    while read.len() < count {
        assert!(start.elapsed() < DEADLINE, "read {} of {count}", read.len());
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => read.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    read
}

/// The topics the broker at `addr` lists to an authenticated client.
fn topics(config: &ClientConfig) -> Vec<String> {
    let consumer: BaseConsumer = config.create().unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients_produce_and_consume_over_sasl_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_users(
        &data,
        &[
            (ScramMechanism::Sha256, "alice", "alice-secret"),
            (ScramMechanism::Sha512, "bob", "bob-secret"),
        ],
    );
    let broker = start(&data, &[]).await;
    let addr = broker.local_addr();
    for (mechanism, user, password) in [
        ("SCRAM-SHA-256", "alice", "alice-secret"),
        ("SCRAM-SHA-512", "bob", "bob-secret"),
    ] {
        let config = sasl_client(addr, mechanism, user, password);
        let topic = format!("records-{user}");
        let values: Vec<String> = (0..50).map(|i| format!("{user}-{i}")).collect();
        produce(&config, &topic, &values).await;
        assert_eq!(consume(&config, &topic, values.len()), values);
    }
    // Bob has no SCRAM-SHA-256 credential: the other mechanism is not a way in.
    let wrong_mechanism = sasl_client(addr, "SCRAM-SHA-256", "bob", "bob-secret");
    assert!(
        wrong_mechanism
            .create::<BaseConsumer>()
            .unwrap()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err()
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_with_the_authentication_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_users(&data, &[(ScramMechanism::Sha256, "alice", "alice-secret")]);
    let broker = start(&data, &[]).await;
    let recorder = Recorder::default();
    let consumer: BaseConsumer<Recorder> =
        sasl_client(broker.local_addr(), "SCRAM-SHA-256", "alice", "guess")
            .create_with_context(recorder.clone())
            .unwrap();
    assert!(
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err()
    );
    let error = wait_for("librdkafka's authentication error", || {
        // Errors are delivered through the client's queue, polled by fetch_metadata and poll.
        let _ = consumer.poll(Duration::from_millis(50));
        recorder
            .errors
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.contains("Authentication failed"))
            .cloned()
    });
    assert!(
        error.contains(
            "Authentication failed during authentication due to invalid credentials with SASL \
             mechanism SCRAM-SHA-256"
        ),
        "{error}"
    );
    broker.shutdown().await;
}

/// One raw request frame.
fn request(api_key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("raw")))
        .encode(&mut frame, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut frame, version).unwrap();
    let length = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    frame.to_vec()
}

/// Sends `frame` on a new connection and reads until the broker closes it or `wait` passes:
/// the bytes answered, and whether the connection was closed.
fn exchange(addr: SocketAddr, frame: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(frame).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (answer, true),
            Err(_) => return (answer, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_authenticate_reach_no_handler() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_users(&data, &[(ScramMechanism::Sha512, "admin", ADMIN_PASSWORD)]);
    let broker = start(&data, &[]).await;
    let addr = broker.local_addr();
    // A raw CreateTopics: the connection is closed without an answer, and no topic is made.
    let create = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("sneaky")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])
        .with_timeout_ms(5000);
    let (answer, closed) = exchange(addr, &request(ApiKey::CreateTopics, 5, &create), DEADLINE);
    assert!(
        closed && answer.is_empty(),
        "answered {} bytes",
        answer.len()
    );
    // ApiVersions is answered before authentication (clients need it to pick versions).
    let (answer, closed) = exchange(
        addr,
        &request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()),
        Duration::from_millis(500),
    );
    assert!(!closed && answer.len() > 8, "ApiVersions answered");
    // librdkafka without SASL gets no metadata.
    let mut plaintext = ClientConfig::new();
    plaintext
        .set("bootstrap.servers", addr.to_string())
        .set("socket.timeout.ms", "5000");
    let consumer: BaseConsumer = plaintext.create().unwrap();
    assert!(
        consumer
            .fetch_metadata(None, Duration::from_secs(3))
            .is_err()
    );
    let admin = sasl_client(addr, "SCRAM-SHA-512", "admin", ADMIN_PASSWORD);
    assert!(!topics(&admin).contains(&"sneaky".to_string()));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reauthenticate_on_their_connection_while_producing() {
    const SESSION_MS: u64 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_users(&data, &[(ScramMechanism::Sha256, "alice", "alice-secret")]);
    let broker = start(
        &data,
        &[("connections.max.reauth.ms", &SESSION_MS.to_string())],
    )
    .await;
    let recorder = Recorder::default();
    let producer: FutureProducer<Recorder> = sasl_client(
        broker.local_addr(),
        "SCRAM-SHA-256",
        "alice",
        "alice-secret",
    )
    .set("debug", "broker,security")
    .set("linger.ms", "0")
    .set_log_level(RDKafkaLogLevel::Debug)
    .create_with_context(recorder.clone())
    .unwrap();
    let reauthentications = || {
        recorder
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|(fac, message)| fac == "REAUTH" && message.contains("Received REAUTH op"))
            .count()
    };
    // Produces one record at a time until the connection to the broker re-authenticated three
    // times: each delivery must succeed, before, during and after each re-authentication.
    let start = Instant::now();
    let mut sent = 0;
    while reauthentications() < 3 {
        assert!(
            start.elapsed() < DEADLINE,
            "{} re-authentications; librdkafka said:\n{}",
            reauthentications(),
            recorder
                .logs
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(60)
                .map(|(f, m)| format!("{f}: {m}\n"))
                .collect::<String>()
        );
        let value = format!("r{sent}");
        producer
            .send(
                FutureRecord::<(), _>::to("reauth").payload(&value),
                DEADLINE,
            )
            .await
            .expect("delivered across re-authentications");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Re-authentication kept the connection: librdkafka never had to reconnect after an
    // expired session was closed.
    let disconnects: Vec<String> = recorder
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains("Disconnected") || m.contains("Connection closed"))
        .map(|(f, m)| format!("{f}: {m}"))
        .collect();
    assert!(disconnects.is_empty(), "{disconnects:?}");
    let errors = recorder.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    let config = sasl_client(
        broker.local_addr(),
        "SCRAM-SHA-256",
        "alice",
        "alice-secret",
    );
    assert_eq!(consume(&config, "reauth", sent).len(), sent);
    broker.shutdown().await;
}

fn strata() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"))
}

/// Runs `strata ARGS` with `stdin` on its standard input; its output.
fn run_strata(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(strata())
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("strata {args:?} still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout_of(what: &str, output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn serve(data: &Path, listen: SocketAddr) -> ChildBroker {
    let mut command = Command::new(strata());
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("SASL_PLAINTEXT://{listen}"))
        .env_clear()
        .env("STRATA_LOG", "info");
    ChildBroker::spawn(command, listen, &data.with_extension("log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_made_offline_exist_at_first_start_and_users_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let added = run_strata(
        &[
            "users",
            "add",
            "admin",
            "--mechanism",
            "SCRAM-SHA-512",
            "--password-stdin",
            "--data-dir",
            data_arg,
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    stdout_of("users add --data-dir", &added);
    let listed = stdout_of(
        "users list --data-dir",
        &run_strata(&["users", "list", "--data-dir", data_arg], ""),
    );
    assert!(
        listed.contains("admin") && listed.contains("SCRAM-SHA-512 (8192 iterations)"),
        "{listed}"
    );
    assert!(!listed.contains(ADMIN_PASSWORD));

    let listen = free_port();
    let broker = serve(&data, listen);
    let admin = sasl_client(listen, "SCRAM-SHA-512", "admin", ADMIN_PASSWORD);
    produce(&admin, "first", &["hello".to_string()]).await;

    // While the broker runs, the folder is its own: offline changes are refused.
    let refused = run_strata(
        &[
            "users",
            "add",
            "x",
            "--password-stdin",
            "--data-dir",
            data_arg,
        ],
        "pw\n",
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("a broker is running on"), "{message}");

    // Online, authenticated as the admin from a Kafka client properties file.
    let properties = dir.path().join("admin.properties");
    std::fs::write(
        &properties,
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"admin\" password=\"{ADMIN_PASSWORD}\";\n"
        ),
    )
    .unwrap();
    let (bootstrap, properties) = (listen.to_string(), properties.display().to_string());
    let online = |args: &[&str], stdin: &str| {
        let mut all = args.to_vec();
        all.extend([
            "--bootstrap-server",
            &bootstrap,
            "--command-config",
            &properties,
        ]);
        run_strata(&all, stdin)
    };
    stdout_of(
        "users add --bootstrap-server",
        &online(
            &[
                "users",
                "add",
                "app",
                "--password-stdin",
                "--iterations",
                "4096",
            ],
            "app-secret\n",
        ),
    );
    let listed = stdout_of(
        "users list --bootstrap-server",
        &online(&["users", "list", "--json"], ""),
    );
    let users: BTreeMap<String, BTreeMap<String, u32>> = serde_json::from_str(&listed).unwrap();
    assert_eq!(users["admin"]["SCRAM-SHA-512"], 8192);
    assert_eq!(users["app"]["SCRAM-SHA-256"], 4096);
    // Without the properties file the admin commands are refused like any client.
    let anonymous = run_strata(&["users", "list", "--bootstrap-server", &bootstrap], "");
    assert!(!anonymous.status.success());

    assert!(broker.terminate().success());
    let broker = serve(&data, listen);
    let app = sasl_client(listen, "SCRAM-SHA-256", "app", "app-secret");
    produce(&app, "second", &["again".to_string()]).await;
    assert_eq!(consume(&app, "first", 1), vec!["hello".to_string()]);
    stdout_of(
        "users remove --bootstrap-server",
        &online(&["users", "remove", "app"], ""),
    );
    let gone = sasl_client(listen, "SCRAM-SHA-256", "app", "app-secret");
    assert!(
        gone.create::<BaseConsumer>()
            .unwrap()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err()
    );
    drop(broker);
}

/// A CA and a broker certificate for `localhost` / 127.0.0.1, PEM: `(ca, keystore)` where the
/// keystore holds the key and the certificate.
fn certificates() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Strata SASL test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_pem, format!("{}{}", key.serialize_pem(), cert.pem()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_serves_scram_and_plain_and_plain_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_users(&data, &[(ScramMechanism::Sha512, "alice", "alice-secret")]);
    let (ca, keystore) = certificates();
    let keystore_path = dir.path().join("broker.pem");
    std::fs::write(&keystore_path, keystore).unwrap();
    let broker = start(
        &data,
        &[
            (
                "listeners",
                "SASL_SSL://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0",
            ),
            ("ssl.keystore.location", keystore_path.to_str().unwrap()),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512,PLAIN"),
        ],
    )
    .await;
    let tls = broker.listener_addr("SASL_SSL").unwrap();
    let plain = broker.listener_addr("SASL_PLAINTEXT").unwrap();
    let over_tls = |mechanism: &str, password: &str| {
        let mut config = sasl_client(tls, mechanism, "alice", password);
        config
            .set("security.protocol", "sasl_ssl")
            .set("ssl.ca.pem", &ca);
        config
    };
    let scram = over_tls("SCRAM-SHA-512", "alice-secret");
    let values: Vec<String> = (0..20).map(|i| format!("tls-{i}")).collect();
    produce(&scram, "over-tls", &values).await;
    // PLAIN, checked against the SCRAM credential, is offered over TLS.
    assert_eq!(
        consume(&over_tls("PLAIN", "alice-secret"), "over-tls", values.len()),
        values
    );
    let refused = |config: &ClientConfig| {
        config
            .create::<BaseConsumer>()
            .unwrap()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err()
    };
    assert!(refused(&over_tls("PLAIN", "guess")));
    // On the SASL_PLAINTEXT listener PLAIN is not offered (sasl.plain.allow.plaintext=false),
    // SCRAM is.
    assert!(refused(&sasl_client(
        plain,
        "PLAIN",
        "alice",
        "alice-secret"
    )));
    assert!(!refused(&sasl_client(
        plain,
        "SCRAM-SHA-512",
        "alice",
        "alice-secret"
    )));
    // The strata admin commands over SASL_SSL, verifying the broker with the CA (librdkafka's
    // property name) and logging in with SCRAM.
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let properties = dir.path().join("tls.properties");
    std::fs::write(
        &properties,
        format!(
            "security.protocol=SASL_SSL\nssl.ca.location={}\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username=alice\nsasl.password=alice-secret\n",
            ca_path.display()
        ),
    )
    .unwrap();
    let (bootstrap, properties) = (tls.to_string(), properties.display().to_string());
    let admin = |args: &[&str], stdin: &str| {
        let mut all = args.to_vec();
        all.extend([
            "--bootstrap-server",
            &bootstrap,
            "--command-config",
            &properties,
        ]);
        run_strata(&all, stdin)
    };
    stdout_of(
        "users add over SASL_SSL",
        &admin(
            &["users", "add", "carol", "--password-stdin"],
            "carol-secret\n",
        ),
    );
    let listed = stdout_of("users list over SASL_SSL", &admin(&["users", "list"], ""));
    assert!(
        listed.contains("alice") && listed.contains("carol"),
        "{listed}"
    );
    // A CA that did not sign the broker's certificate: the TLS handshake fails.
    let (other_ca, _) = certificates();
    std::fs::write(&ca_path, other_ca).unwrap();
    let untrusted = admin(&["users", "list"], "");
    assert!(!untrusted.status.success());
    broker.shutdown().await;
}

/// The partitions' `(leader, isr)` of `topic`, asked with `config`.
fn partitions(config: &ClientConfig, topic: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    let consumer: BaseConsumer = config.create().ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if found.error().is_some() || found.partitions().is_empty() {
        return None;
    }
    Some(
        found
            .partitions()
            .iter()
            .map(|p| (p.leader(), p.isr().to_vec()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_replicate_over_a_sasl_inter_broker_listener() {
    let dir = tempfile::tempdir().unwrap();
    // Three voters: the quorum keeps a majority when the partition leader is killed.
    let mut members = strata_tests::cluster_members(dir.path(), 3);
    let voters = strata_tests::quorum_voters(&members);
    let broker_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required \
                       username=\"broker\" password=\"broker-secret\";";
    // Only the first broker's folder gets the users before the first start: it imports them into
    // the cluster's metadata, from which the other brokers authenticate (their own inter-broker
    // logins included).
    add_users(
        &members[0].dir,
        &[
            (ScramMechanism::Sha512, "broker", "broker-secret"),
            (ScramMechanism::Sha256, "app", "app-secret"),
        ],
    );
    for member in &mut members {
        let listeners = format!("listeners=SASL_PLAINTEXT://{}", member.listen);
        let jaas =
            format!("listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={broker_jaas}");
        let (id, controller) = (member.id.to_string(), member.controller.to_string());
        // Audit at debug: successful authentications, re-authentications included, are logged.
        let env = BTreeMap::from([(
            "STRATA_LOG".to_string(),
            "info,strata::audit=debug".to_string(),
        )]);
        member.process = Some(ChildBroker::start_with_env(
            &strata(),
            &member.dir,
            member.listen,
            &[
                "--node-id",
                &id,
                "--controller-listen",
                &controller,
                "--controller-quorum",
                &voters,
                "--set",
                &listeners,
                "--set",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                "--set",
                &jaas,
                "--set",
                "offsets.topic.replication.factor=2",
                "--set",
                "replica.lag.time.max.ms=5000",
                // Sessions of 2 s: the brokers' own connections re-authenticate on them.
                "--set",
                "connections.max.reauth.ms=2000",
            ],
            &env,
        ));
    }
    let bootstrap = strata_tests::cluster_bootstrap(&members);
    let app = |bootstrap: &str| {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", "app")
            .set("sasl.password", "app-secret")
            .set("message.timeout.ms", "60000")
            .set("socket.timeout.ms", "10000");
        config
    };
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        app(&bootstrap).create().unwrap();
    // Retried until the users are imported into the cluster's metadata and a controller leads.
    let start = Instant::now();
    loop {
        let topic = rdkafka::admin::NewTopic::new(
            "replicated",
            1,
            rdkafka::admin::TopicReplication::Fixed(2),
        );
        let created = admin
            .create_topics([&topic], &rdkafka::admin::AdminOptions::new())
            .await;
        let done = created.is_ok_and(|results| {
            results.into_iter().all(|r| {
                r.is_ok()
                    || matches!(
                        r,
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                    )
            })
        });
        if done {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the topic was not created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (leader, isr) = wait_for("both replicas in sync", || {
        let states = partitions(&app(&bootstrap), "replicated")?;
        let (leader, isr) = states.into_iter().next()?;
        (leader >= 1 && isr.len() == 2).then_some((leader, isr))
    });
    // A user added through one broker authenticates on another: credentials replicate.
    let properties = dir.path().join("app.properties");
    std::fs::write(
        &properties,
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n\
         sasl.username=app\nsasl.password=app-secret\n",
    )
    .unwrap();
    let first = members[0].listen.to_string();
    stdout_of(
        "users add through the first broker",
        &run_strata(
            &[
                "users",
                "add",
                "late",
                "--mechanism",
                "SCRAM-SHA-512",
                "--password-stdin",
                "--bootstrap-server",
                &first,
                "--command-config",
                properties.to_str().unwrap(),
            ],
            "late-secret\n",
        ),
    );
    let mut late = ClientConfig::new();
    late.set("bootstrap.servers", members[2].listen.to_string())
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "late")
        .set("sasl.password", "late-secret");
    wait_for("the new user to authenticate on the third broker", || {
        partitions(&late, "replicated").map(|_| ())
    });
    // The replica fetchers renew their sessions on their connections: some broker logs a
    // re-authentication of User:broker, and no broker ever closed an expired session.
    let logs = || -> String {
        members
            .iter()
            .map(|m| std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default())
            .collect()
    };
    wait_for("a broker's re-authentication", || {
        logs()
            .lines()
            .any(|l| {
                l.contains("event=\"authenticated\"")
                    && l.contains("principal=User:broker")
                    && l.contains("reauthentication=true")
            })
            .then_some(())
    });
    let expired: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("expired"))
        .map(str::to_string)
        .collect();
    assert!(expired.is_empty(), "{expired:#?}");
    let values: Vec<String> = (0..30).map(|i| format!("replicated-{i}")).collect();
    let mut acks_all = app(&bootstrap);
    acks_all.set("acks", "all");
    produce(&acks_all, "replicated", &values).await;
    // The follower has them only if it fetched them over the SASL listener: with the leader
    // gone, it leads and serves every record.
    let follower_id = *isr.iter().find(|id| **id != leader).unwrap();
    let follower = members.iter().find(|m| m.id == follower_id).unwrap();
    let follower_addr = follower.listen.to_string();
    let follower_log = follower.dir.with_extension("log");
    let leader_member = members.iter_mut().find(|m| m.id == leader).unwrap();
    leader_member.process.take().unwrap().kill();
    let start = Instant::now();
    loop {
        let states = partitions(&app(&follower_addr), "replicated");
        if states.as_ref().is_some_and(|s| s[0].0 == follower_id) {
            break;
        }
        if start.elapsed() > DEADLINE {
            let log = std::fs::read_to_string(&follower_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("the follower did not take over ({states:?}); its log ends:\n{tail:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        consume(&app(&follower_addr), "replicated", values.len()),
        values
    );
}
