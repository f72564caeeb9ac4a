//! TLS end to end: librdkafka over SSL listeners (`security.protocol=ssl`), with certificates
//! made in the test (rcgen): produce and consume, a plaintext client refused on the SSL
//! listener, mutual TLS with `ssl.client.auth=required`, certificates reloaded without a
//! restart, and PLAINTEXT and SSL listeners side by side each advertising its own endpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata_broker::{BrokerConfig, BrokerHandle};
use strata_tests::{DEADLINE, wait_for};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with subject `CN=<cn>,O=Strata`.
    fn issue(&self, cn: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Strata");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes `text` to `path` atomically (write, then rename), as a certificate manager does.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes the broker's keystore (key and chain in one PEM file) and truststore; returns their
/// paths.
fn write_stores(dir: &Path, leaf: &Leaf, trusted: &Ca) -> (String, String) {
    let keystore = dir.join("broker.pem");
    let truststore = dir.join("ca.pem");
    write_atomically(&keystore, &format!("{}{}", leaf.key, leaf.cert));
    write_atomically(&truststore, &trusted.pem);
    (
        keystore.display().to_string(),
        truststore.display().to_string(),
    )
}

async fn start(dir: &Path, settings: &[(&str, &str)]) -> BrokerHandle {
    let settings: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = BrokerConfig::new(
        dir.join("data"),
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        settings,
    )
    .unwrap();
    strata_broker::start(config).await.expect("broker starts")
}

/// A librdkafka config for the SSL listener at `addr`, trusting `ca` and presenting `leaf`.
fn ssl_client(addr: SocketAddr, ca: &Ca, leaf: Option<&Leaf>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr.to_string())
        .set("security.protocol", "ssl")
        .set("ssl.ca.pem", &ca.pem)
        .set("message.timeout.ms", "60000")
        .set("socket.timeout.ms", "10000");
    if let Some(leaf) = leaf {
        config
            .set("ssl.certificate.pem", &leaf.cert)
            .set("ssl.key.pem", &leaf.key);
    }
    config
}

/// The brokers' `(id, host, port)` the bootstrap broker of `config` answers in Metadata, or the
/// error.
fn metadata(config: &ClientConfig) -> Result<Vec<(i32, String, i32)>, String> {
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect())
}

async fn produce(config: &ClientConfig, topic: &str, values: &[Vec<u8>]) {
    let producer: FutureProducer = config.clone().set("linger.ms", "5").create().unwrap();
    let keys: Vec<String> = (0..values.len()).map(|i| format!("key-{i}")).collect();
    let sends: Vec<_> = values
        .iter()
        .zip(&keys)
        .map(|(v, key)| {
            let record = FutureRecord::to(topic).key(key).payload(v).partition(0);
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for send in sends {
        send.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn consume(config: &ClientConfig, topic: &str, count: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "tls-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::with_capacity(count);
    let start = Instant::now();
    while out.len() < count {
        assert!(start.elapsed() < DEADLINE, "read {} of {count}", out.len());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    out
}

/// Joins `group` on `topic`, reads `count` records, commits them and reads the committed offset
/// back from the coordinator.
fn commit_in_a_group(config: &ClientConfig, group: &str, topic: &str, count: usize) -> i64 {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut last = None;
    let mut read = 0;
    let start = Instant::now();
    while read < count {
        assert!(
            start.elapsed() < DEADLINE,
            "read {read} of {count} in a group"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                read += 1;
                last = Some(m.offset());
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(last.unwrap() + 1))
        .unwrap();
    consumer
        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    let committed = consumer.committed(Duration::from_secs(10)).unwrap();
    match committed.find_partition(topic, 0).unwrap().offset() {
        Offset::Offset(offset) => offset,
        other => panic!("committed {other:?}"),
    }
}

/// The content type of a TLS alert record: what a TLS server answers plaintext bytes with.
const TLS_ALERT: u8 = 0x15;

/// Sends an ApiVersions request in plain bytes to `addr` and returns what comes back before the
/// connection closes (or 5 s pass).
fn plaintext_api_versions(addr: SocketAddr) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // ApiVersions v0: api key 18, version 0, correlation id 7, client id "t".
    let body: &[u8] = &[0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b't'];
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssl_and_plaintext_listeners_serve_side_by_side_each_with_its_own_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Strata test CA");
    let (keystore, _) = write_stores(dir.path(), &ca.issue("broker"), &ca);
    let broker = start(
        dir.path(),
        &[
            ("listeners", "SSL://127.0.0.1:0,PLAINTEXT://127.0.0.1:0"),
            ("ssl.keystore.location", &keystore),
            ("group.initial.rebalance.delay.ms", "0"),
        ],
    )
    .await;
    let ssl = broker.listener_addr("SSL").unwrap();
    let plain = broker.listener_addr("PLAINTEXT").unwrap();
    assert_eq!(broker.local_addr(), ssl, "local_addr is the first listener");
    assert_ne!(ssl, plain);

    let over_ssl = ssl_client(ssl, &ca, None);
    let brokers = wait_for("metadata over SSL", || metadata(&over_ssl).ok());
    assert_eq!(
        brokers,
        [(0, "127.0.0.1".to_string(), i32::from(ssl.port()))]
    );
    let mut over_plain = ClientConfig::new();
    over_plain.set("bootstrap.servers", plain.to_string());
    assert_eq!(
        metadata(&over_plain).unwrap(),
        [(0, "127.0.0.1".to_string(), i32::from(plain.port()))]
    );

    // Values past the 256 KiB a TLS connection reads from a segment at once.
    let values: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            (0..8192u32)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect()
        })
        .collect();
    strata_tests::create_topic(&plain.to_string(), "secured", 1).await;
    produce(&over_ssl, "secured", &values).await;
    assert!(consume(&over_ssl, "secured", values.len()) == values);
    assert!(
        consume(&over_plain, "secured", values.len()) == values,
        "the same records over PLAINTEXT (sendfile)"
    );
    // Group members reach their coordinator at the endpoint FindCoordinator gives for their
    // listener (PLAINTEXT is not the first listener: its members would get SSL's otherwise).
    assert_eq!(commit_in_a_group(&over_ssl, "tls-group", "secured", 10), 10);
    assert_eq!(
        commit_in_a_group(&over_plain, "plain-group", "secured", 20),
        20
    );

    let answer = plaintext_api_versions(ssl);
    assert_eq!(
        answer.first(),
        Some(&TLS_ALERT),
        "a plaintext request on the SSL listener gets a TLS alert, no Kafka answer: {answer:?}"
    );
    let answer = plaintext_api_versions(plain);
    assert_eq!(answer[4..8], [0, 0, 0, 7], "PLAINTEXT still answers");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_client_certificates_refuse_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Strata test CA");
    let (keystore, truststore) = write_stores(dir.path(), &ca.issue("broker"), &ca);
    let broker = start(
        dir.path(),
        &[
            ("listeners", "SSL://127.0.0.1:0"),
            ("ssl.keystore.location", &keystore),
            ("ssl.truststore.location", &truststore),
            ("ssl.client.auth", "required"),
        ],
    )
    .await;
    let addr = broker.listener_addr("SSL").unwrap();
    let client = ca.issue("client");
    let with_cert = ssl_client(addr, &ca, Some(&client));
    wait_for("metadata with a client certificate", || {
        metadata(&with_cert).ok()
    });
    produce(&with_cert, "mtls", &[b"one".to_vec(), b"two".to_vec()]).await;
    assert_eq!(
        consume(&with_cert, "mtls", 2),
        [b"one".to_vec(), b"two".to_vec()]
    );

    let without = metadata(&ssl_client(addr, &ca, None));
    assert!(without.is_err(), "no certificate, yet {without:?}");
    let stranger = Ca::new("Another CA").issue("client");
    let untrusted = metadata(&ssl_client(addr, &ca, Some(&stranger)));
    assert!(
        untrusted.is_err(),
        "a certificate of another CA, yet {untrusted:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewritten_certificates_are_used_by_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("Old CA");
    let (keystore, _) = write_stores(dir.path(), &old_ca.issue("broker"), &old_ca);
    let broker = start(
        dir.path(),
        &[
            ("listeners", "SSL://127.0.0.1:0"),
            ("ssl.keystore.location", &keystore),
        ],
    )
    .await;
    let addr = broker.listener_addr("SSL").unwrap();
    wait_for("metadata trusting the old CA", || {
        metadata(&ssl_client(addr, &old_ca, None)).ok()
    });
    let new_ca = Ca::new("New CA");
    assert!(
        metadata(&ssl_client(addr, &new_ca, None)).is_err(),
        "the new CA signed nothing yet"
    );

    // (A file that does not load keeps the old certificates: the unit tests of tls.rs.)
    write_stores(dir.path(), &new_ca.issue("broker"), &new_ca);
    wait_for("a client trusting only the new CA to connect", || {
        metadata(&ssl_client(addr, &new_ca, None)).ok()
    });
    assert!(
        metadata(&ssl_client(addr, &old_ca, None)).is_err(),
        "new connections get the new certificate"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = |settings: &[(&str, &str)]| {
        BrokerConfig::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().unwrap(),
            None,
            None,
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let err = config(&[("listeners", "INTERNAL://127.0.0.1:0")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listener.security.protocol.map"), "{err}");
    let no_keystore = config(&[("listeners", "SSL://127.0.0.1:0")]).unwrap();
    let err = strata_broker::start(no_keystore)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ssl.keystore"), "{err}");
}

/// A three-broker cluster whose brokers replicate over an SSL inter-broker listener
/// (`ssl.client.auth=required` on it) and whose metadata quorum is mutual TLS
/// (`controller.listener.names=CONTROLLER`, `CONTROLLER:SSL`); clients use PLAINTEXT and are
/// told the PLAINTEXT endpoints. The authorizer is on with the brokers' certificates as super
/// users: the quorum admits them, and refuses a certificate of the same CA that is not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_and_keeps_its_quorum_over_mutual_tls() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use strata_tests::{cluster_bootstrap, cluster_members, quorum_voters, start_member};

    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::new("Cluster CA");
    let truststore = root.path().join("ca.pem");
    write_atomically(&truststore, &ca.pem);
    let mut members = cluster_members(root.path(), 3);
    let voters = quorum_voters(&members);
    let mut internal = BTreeMap::new();
    let super_users = members
        .iter()
        .map(|m| format!("User:CN=broker-{},O=Strata", m.id))
        .collect::<Vec<_>>()
        .join(";");
    for member in &mut members {
        let leaf = ca.issue(&format!("broker-{}", member.id));
        let keystore = root.path().join(format!("broker-{}.pem", member.id));
        write_atomically(&keystore, &format!("{}{}", leaf.key, leaf.cert));
        let internal_addr = strata_tests::free_port();
        internal.insert(member.id, internal_addr);
        let settings = [
            format!(
                "listeners=PLAINTEXT://{},INTERNAL://{internal_addr}",
                member.listen
            ),
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:SSL,CONTROLLER:SSL".into(),
            "inter.broker.listener.name=INTERNAL".into(),
            "controller.listener.names=CONTROLLER".into(),
            format!("ssl.keystore.location={}", keystore.display()),
            format!("ssl.truststore.location={}", truststore.display()),
            "listener.name.internal.ssl.client.auth=required".into(),
            "authorizer.enabled=true".into(),
            format!("super.users={super_users}"),
            // PLAINTEXT clients (User:ANONYMOUS) may do what no binding restricts.
            "allow.everyone.if.no.acl.found=true".into(),
            "broker.session.timeout.ms=2000".into(),
            "offsets.topic.replication.factor=3".into(),
        ];
        let mut args: Vec<&str> = Vec::new();
        for setting in &settings {
            args.extend(["--set", setting]);
        }
        member.process = Some(start_member(&binary, member, &voters, &args));
    }
    let bootstrap = cluster_bootstrap(&members);
    strata_tests::wait_for_brokers(&bootstrap, 3);
    let mut plain = ClientConfig::new();
    plain.set("bootstrap.servers", &bootstrap);
    let mut brokers = metadata(&plain).unwrap();
    brokers.sort();
    let expected: Vec<(i32, String, i32)> = members
        .iter()
        .map(|m| (m.id, "127.0.0.1".to_string(), i32::from(m.listen.port())))
        .collect();
    assert_eq!(
        brokers, expected,
        "PLAINTEXT clients get PLAINTEXT endpoints"
    );

    let admin: AdminClient<DefaultClientContext> = plain.create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new("replicated", 1, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let values: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000]).collect();
    let mut acks_all = plain.clone();
    acks_all.set("acks", "all");
    produce(&acks_all, "replicated", &values).await;
    // Followers fetch over INTERNAL (TLS, client certificates required): all three in sync.
    wait_for("three in-sync replicas replicated over TLS", || {
        let states = strata_tests::partition_states(&bootstrap, "replicated", 1)?;
        (states[0].1.len() == 3).then_some(())
    });
    assert!(consume(&plain, "replicated", values.len()) == values);

    // The controller listeners speak TLS only, and admit super users only: a certificate the
    // truststore verifies but whose subject is not in super.users is closed after the handshake.
    let answer = plaintext_api_versions(members[0].controller);
    assert_eq!(answer.first(), Some(&TLS_ALERT), "{answer:?}");
    let outsider = ca.issue("outsider");
    let outsider_keystore = root.path().join("outsider.pem");
    write_atomically(
        &outsider_keystore,
        &format!("{}{}", outsider.key, outsider.cert),
    );
    assert_quorum_closes(members[0].controller, &truststore, &outsider_keystore);
    // The INTERNAL listener refuses a client without a certificate.
    let internal_addr = internal[&1];
    assert!(metadata(&ssl_client(internal_addr, &ca, None)).is_err());
    let client = ca.issue("client");
    let mut brokers =
        metadata(&ssl_client(internal_addr, &ca, Some(&client))).expect("with a certificate");
    brokers.sort();
    let expected: Vec<(i32, String, i32)> = members
        .iter()
        .map(|m| {
            (
                m.id,
                "127.0.0.1".to_string(),
                i32::from(internal[&m.id].port()),
            )
        })
        .collect();
    assert_eq!(
        brokers, expected,
        "INTERNAL clients get every broker's INTERNAL endpoint"
    );
}

/// Connects to a voter's controller listener with mutual TLS (the keystore's certificate) and
/// asserts that the handshake succeeds and the voter then closes the connection without an answer
/// (a certificate the voter did not verify would get a TLS alert instead).
fn assert_quorum_closes(controller: SocketAddr, truststore: &Path, keystore: &Path) {
    let properties = [
        ("ssl.truststore.location", truststore.display().to_string()),
        ("ssl.keystore.location", keystore.display().to_string()),
    ];
    let config = strata_broker::security::tls::client_config_from_properties(|name| {
        properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(controller.ip().into());
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let socket = std::net::TcpStream::connect(controller).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("the TLS handshake succeeds");
    }
    let mut byte = [0u8; 1];
    match tls.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the quorum answered a certificate outside super.users"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "the voter closes the connection (not an alert, not left open): {e}"
        ),
    }
}
