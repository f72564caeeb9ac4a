//! Support for Strata's end-to-end tests: brokers started in-process or as child processes on
//! loopback port 0 with temporary data folders, real Kafka clients (the `rdkafka` crate, i.e.
//! librdkafka), and waiting on conditions with deadlines instead of sleeping.

pub mod iceberg;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use strata_broker::{BrokerConfig, BrokerHandle};

/// How long any wait in a test may take before it fails: generous, for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `condition` until it returns `Some`, failing the test after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The access key the test S3 server checks (SigV4).
pub const S3_ACCESS_KEY: &str = "strata-test-access";
/// The secret key the test S3 server checks.
pub const S3_SECRET_KEY: &str = "strata-test-secret-key-0123456789";
/// The bucket the tests use.
pub const S3_BUCKET: &str = "lake";

/// An S3 protocol server (`s3s-fs`) on loopback, checking SigV4 signatures, storing objects in a
/// folder. It can be stopped and started again on the same address to simulate an outage.
pub struct S3Server {
    root: PathBuf,
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Starts a server storing into `root` (the bucket is created) on `addr` (port 0 for any).
    pub async fn start(root: &Path, addr: SocketAddr) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("the S3 address is free");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                connections.spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self {
            root: root.to_path_buf(),
            addr,
            task,
        }
    }

    /// Stops the server and drops every open connection (the JoinSet aborts them).
    pub async fn stop(self) -> (PathBuf, SocketAddr) {
        self.task.abort();
        let _ = self.task.await;
        (self.root, self.addr)
    }

    /// The tier URL of the test bucket.
    pub fn tier_url() -> String {
        format!("s3://{S3_BUCKET}/strata")
    }

    /// The `AWS_*` environment pointing a client at this server.
    pub fn env(&self) -> BTreeMap<String, String> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Where a broker's lake lives: `(tier URL, AWS environment)`.
pub type Tier = (String, BTreeMap<String, String>);

/// A broker running inside the test process.
pub struct TestBroker {
    dir: PathBuf,
    settings: BTreeMap<String, String>,
    tier: Option<Tier>,
    handle: Option<BrokerHandle>,
    /// `host:port` for clients.
    pub bootstrap: String,
}

impl TestBroker {
    /// Starts a broker on a fresh folder under `dir` with broker `settings` (Kafka names).
    pub async fn start_in(dir: &Path, settings: &[(&str, &str)]) -> Self {
        Self::start_tiered(dir, settings, None).await
    }

    /// Starts a broker whose lake is `tier` (the default `file://<dir>/lake` when `None`).
    pub async fn start_tiered(dir: &Path, settings: &[(&str, &str)], tier: Option<Tier>) -> Self {
        let settings: BTreeMap<String, String> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut broker = Self {
            dir: dir.to_path_buf(),
            settings,
            tier,
            handle: None,
            bootstrap: String::new(),
        };
        broker.boot().await;
        broker
    }

    async fn boot(&mut self) {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tier_url = self.tier.as_ref().map(|t| t.0.clone());
        let mut config = BrokerConfig::new(
            self.dir.clone(),
            listen,
            None,
            tier_url,
            self.settings.clone(),
        )
        .unwrap();
        config.tier_env = self.tier.as_ref().map(|t| t.1.clone()).unwrap_or_default();
        let handle = strata_broker::start(config).await.expect("broker starts");
        self.bootstrap = handle.local_addr().to_string();
        self.handle = Some(handle);
    }

    /// Shuts the broker down cleanly and starts it again on the same folder (new port).
    pub async fn restart(&mut self) {
        self.handle.take().expect("running").shutdown().await;
        self.boot().await;
    }

    /// Shuts the broker down cleanly.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

/// A `strata serve` child process.
pub struct ChildBroker {
    child: Child,
    /// `host:port` for clients.
    pub bootstrap: String,
}

impl ChildBroker {
    /// Starts `strata serve` on `data_dir` at `listen` (use [`free_port`]) and waits until it
    /// accepts connections.
    pub fn start(binary: &Path, data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with_env(binary, data_dir, listen, extra, &BTreeMap::new())
    }

    /// As [`ChildBroker::start`], with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        extra: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra)
            .env("STRATA_LOG", "info")
            .envs(env);
        Self::spawn(command, listen, &data_dir.with_extension("log"))
    }

    /// Runs `command` (a `strata serve` set up by the caller: arguments, environment, working
    /// directory) with its standard error into `log`, and waits until it accepts connections on
    /// `listen`. Fails the test, with the log, if the process exits first.
    pub fn spawn(mut command: Command, listen: SocketAddr, log: &Path) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("strata starts");
        wait_for("the broker to accept connections", || {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("strata serve exited with {status} before accepting connections:\n{log}");
            }
            TcpStream::connect(listen).ok()
        });
        Self {
            child,
            bootstrap: listen.to_string(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_for("the broker to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end with its output captured, failing the test (after killing it) if it
/// is still running at the deadline.
pub fn run_to_exit(command: &mut Command) -> std::process::Output {
    use std::io::Read as _;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // Drained while it runs, so that a full pipe cannot stall it.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() >= DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap().unwrap_or_default();
            panic!(
                "{command:?} still running after {DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap().unwrap(),
        stderr: stderr.join().unwrap().unwrap(),
    }
}

/// A loopback address with a free port, for child processes, which must be told their port
/// before they start (in-process brokers bind port 0).
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), so that no
/// `bind(0)` and no outgoing connection (a broker retrying its peers burns through ephemeral
/// ports quickly) can take it between this check and the child's bind; ports are handed out in
/// turn from an offset drawn from the process id, so parallel tests and test processes do not
/// pick the same one.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

/// Creates topic `name` with `partitions` partitions of one replica, failing the test otherwise.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
    let results = admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                name,
                partitions,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// A producer with the given extra settings.
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// Settings of a producer that writes through failovers and restarts: idempotent, acks=all,
/// uncompressed, 90 s for each record (for [`producer`]).
pub const DURABLE_WRITER: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("message.timeout.ms", "90000"),
    ("compression.type", "none"),
];

/// A consumer for assign-and-read (it commits nothing; the group id is only required by the
/// client library).
pub fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// Reads `count` records from the given partitions starting at `from`, failing after the deadline.
pub fn read(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    from: Offset,
    count: usize,
) -> Vec<Consumed> {
    let consumer = consumer(bootstrap);
    let mut assignment = TopicPartitionList::new();
    for &p in partitions {
        assignment.add_partition_offset(topic, p, from).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::with_capacity(count);
    let start = Instant::now();
    while out.len() < count {
        assert!(
            start.elapsed() < DEADLINE,
            "read {} of {count} records from {topic}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    out
}

/// One RecordBatch v2 as a producer sends it: `records` records keyed `key-<i>` with values of
/// `value_bytes` bytes `v`, one header `h=x`, CreateTime timestamps from 1000 ms.
pub fn client_batch(
    records: usize,
    value_bytes: usize,
    compression: kafka_protocol::records::Compression,
) -> bytes::Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let all: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps one batch while offset - sequence stays constant.
            sequence: i as i32 - 1,
            timestamp: 1_000 + i as i64,
            key: Some(bytes::Bytes::from(format!("key-{i}"))),
            value: Some(bytes::Bytes::from(vec![b'v'; value_bytes])),
            headers: [(
                kafka_protocol::protocol::StrBytes::from_static_str("h"),
                Some(bytes::Bytes::from_static(b"x")),
            )]
            .into_iter()
            .collect(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, all.iter(), &options).expect("encodable records");
    buf.freeze()
}

/// The default lake of a broker started on `dir` (`file://<dir>/lake`).
pub fn default_lake(dir: &Path) -> strata_lake::Lake {
    let url = strata_lake::store::file_url(&dir.join("lake")).expect("an absolute folder");
    strata_lake::Lake::new(
        strata_lake::store::open(&url, &BTreeMap::new()).expect("the lake opens"),
    )
}

/// Waits until the lake holds a partition's offsets below `offset` at least; returns where its
/// manifest ends.
pub async fn wait_offloaded_to(
    lake: &strata_lake::Lake,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i64 {
    let start = Instant::now();
    loop {
        let manifest = lake.manifest(topic, partition).await.unwrap_or_default();
        match manifest.next_offset() {
            Some(next) if next >= offset => return next,
            reached => assert!(
                start.elapsed() < DEADLINE,
                "{topic}-{partition}: the lake reached {reached:?}, not {offset}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One broker of a cluster that a test starts as separate processes: its ports, its folder, and
/// its process while it runs.
pub struct ClusterMember {
    /// `node.id` (1, 2, …).
    pub id: i32,
    /// The Kafka listener.
    pub listen: SocketAddr,
    /// The controller listener (every member is a voter).
    pub controller: SocketAddr,
    /// The data folder.
    pub dir: PathBuf,
    /// The running process, `None` while stopped.
    pub process: Option<ChildBroker>,
}

/// `count` members with ids 1..=count, each a voter, their folders under `root`; none started.
pub fn cluster_members(root: &Path, count: i32) -> Vec<ClusterMember> {
    (1..=count)
        .map(|id| ClusterMember {
            id,
            listen: free_port(),
            controller: free_port(),
            dir: root.join(format!("broker-{id}")),
            process: None,
        })
        .collect()
}

/// `controller.quorum.voters` of `members`: `id@host:port,…`.
pub fn quorum_voters(members: &[ClusterMember]) -> String {
    members
        .iter()
        .map(|m| format!("{}@{}", m.id, m.controller))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every member's Kafka listener, comma-separated, for clients.
pub fn cluster_bootstrap(members: &[ClusterMember]) -> String {
    members
        .iter()
        .map(|m| m.listen.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `strata serve` as `member` of the quorum `voters` (`--node-id`, `--controller-listen`,
/// `--controller-quorum`), with `extra` arguments after them.
pub fn start_member(
    binary: &Path,
    member: &ClusterMember,
    voters: &str,
    extra: &[&str],
) -> ChildBroker {
    let id = member.id.to_string();
    let controller = member.controller.to_string();
    let mut args = vec![
        "--node-id",
        &id,
        "--controller-listen",
        &controller,
        "--controller-quorum",
        voters,
    ];
    args.extend_from_slice(extra);
    ChildBroker::start_with_env(binary, &member.dir, member.listen, &args, &BTreeMap::new())
}

/// The seed of a seeded fault test: `STRATA_TEST_SEED` when set (to replay a run), else the
/// clock. Printed, so that a failure names the seed that replays it.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{what} seed: {seed} (replay with STRATA_TEST_SEED={seed})");
    seed
}

/// Waits until Metadata from `bootstrap` lists `count` live brokers.
pub fn wait_for_brokers(bootstrap: &str, count: usize) {
    wait_for(&format!("{count} live brokers"), || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .ok()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        (metadata.brokers().len() == count).then_some(())
    });
}

/// `(leader, isr)` of each partition of `topic` by index, as `bootstrap` answers now; `None`
/// until the topic exists without error with all `partitions` partitions.
pub fn partition_states(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Option<Vec<(i32, Vec<i32>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if found.error().is_some() || found.partitions().len() != partitions as usize {
        return None;
    }
    let mut states: Vec<_> = found
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader(), p.isr().to_vec()))
        .collect();
    states.sort();
    Some(states.into_iter().map(|(_, l, isr)| (l, isr)).collect())
}

/// Sends one raw Kafka request on `stream` as client `client_id` and reads its response: for the
/// APIs and fields librdkafka does not expose.
pub fn call_as<R: kafka_protocol::protocol::Request>(
    stream: &mut TcpStream,
    client_id: &'static str,
    request: &R,
    version: i16,
) -> R::Response {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::{ApiKey, RequestHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};
    const CORRELATION_ID: i32 = 7;
    let api_key = ApiKey::try_from(R::KEY).unwrap();
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(CORRELATION_ID)
        .with_client_id(Some(StrBytes::from_static_str(client_id)))
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    assert_eq!(body.get_i32(), CORRELATION_ID, "correlation id");
    if api_key.response_header_version(version) >= 1 {
        body.get_u8(); // no tagged fields
    }
    R::Response::decode(&mut body, version).unwrap()
}

/// [`call_as`] as client `strata-tests`.
pub fn call<R: kafka_protocol::protocol::Request>(
    stream: &mut TcpStream,
    request: &R,
    version: i16,
) -> R::Response {
    call_as(stream, "strata-tests", request, version)
}
