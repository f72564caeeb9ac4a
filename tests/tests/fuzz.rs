//! Seeded fuzzing of the broker over real sockets (issue 10): mutated and random frames of every
//! supported API and version, and random RecordBatches with valid CRCs. The broker must never
//! panic or hang (every frame gets an answer or a closed connection within the deadline), must
//! never store a batch whose records cannot be read, and afterwards the partition must still be
//! consumable by librdkafka and still offload to the lake.
//!
//! The seed is printed; `STRATA_FUZZ_SEED=N` replays a run, `STRATA_FUZZ_CASES=N` sizes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use rdkafka::Offset;
use strata_tests::{TestBroker, client_batch, default_lake, read, wait_offloaded_to};

/// Panics anywhere in the process (broker tasks included), counted by a panic hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// SplitMix64: a seeded, replayable stream of numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const TOPIC: &str = "fuzzed";

/// Requests of every supported API, as a client would send them, for mutation.
fn seeds() -> Vec<RequestKind> {
    let topic = || TopicName(StrBytes::from_static_str(TOPIC));
    let group = || GroupId(StrBytes::from_static_str("fuzz-group"));
    vec![
        // Produce goes to another topic: only the counted produces below write to TOPIC.
        RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("fuzz-other")))
                .with_partition_data(vec![
                PartitionProduceData::default().with_records(Some(good_batch(3, Compression::Lz4))),
            ]),
        ])),
        RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(10)
                .with_topics(vec![
                    fetch_request::FetchTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![
                            fetch_request::FetchPartition::default()
                                .with_partition_max_bytes(1 << 16),
                        ]),
                ]),
        ),
        RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                    .with_timestamp(-2)]),
        ])),
        RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
        ]))),
        RequestKind::ApiVersions(ApiVersionsRequest::default()),
        RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("fuzz-created")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])),
        RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        RequestKind::InitProducerId(
            InitProducerIdRequest::default().with_producer_id(ProducerId(-1)),
        ),
        RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str(TOPIC)),
        ])),
        RequestKind::AlterConfigs(AlterConfigsRequest::default()),
        RequestKind::CreatePartitions(CreatePartitionsRequest::default()),
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default()),
        RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("fuzz-group")),
        ),
        RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group())
                // Outside the broker's bounds, and mutations cannot hit the one valid value:
                // a join that waits for a rebalance would only slow the run down.
                .with_session_timeout_ms(1)
                .with_protocol_type(StrBytes::from_static_str("consumer")),
        ),
        RequestKind::SyncGroup(SyncGroupRequest::default().with_group_id(group())),
        RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(group())),
        RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(group())),
        RequestKind::OffsetCommit(OffsetCommitRequest::default().with_group_id(group())),
        RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(group())),
        RequestKind::ListGroups(ListGroupsRequest::default()),
        RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
        RequestKind::DeleteGroups(DeleteGroupsRequest::default()),
        RequestKind::OffsetDelete(OffsetDeleteRequest::default().with_group_id(group())),
        // Another topic than the one checked afterwards: its records may go.
        RequestKind::DeleteRecords(
            DeleteRecordsRequest::default()
                .with_timeout_ms(100)
                .with_topics(vec![
                    delete_records_request::DeleteRecordsTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("fuzz-other")))
                        .with_partitions(vec![
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_offset(0),
                        ]),
                ]),
        ),
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
        RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str(
                    "fuzz-txn",
                )))
                .with_v3_and_below_topics(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("fuzz-other")))
                        .with_partitions(vec![0]),
                ]),
        ),
        RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("fuzz-txn")))
                .with_group_id(group()),
        ),
        RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("fuzz-txn"))),
        ),
        // Markers only for the other topic: a stray abort marker is harmless, but the topic
        // checked afterwards keeps exactly its records.
        RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
            write_txn_markers_request::WritableTxnMarker::default().with_topics(vec![
                write_txn_markers_request::WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("fuzz-other")))
                    .with_partition_indexes(vec![0]),
            ]),
        ])),
        RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(
                StrBytes::from_static_str("fuzz-txn"),
            )]),
        ),
        RequestKind::ListTransactions(ListTransactionsRequest::default()),
        RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("fuzz-txn")))
                .with_group_id(group()),
        ),
        RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
            describe_producers_request::TopicRequest::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_indexes(vec![0]),
        ])),
        RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(None)),
        // To this broker (node.id 0) alone: the only target a single broker accepts.
        RequestKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest::default().with_topics(vec![
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                    .with_partitions(vec![
                        alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_replicas(Some(vec![BrokerId(0)])),
                    ]),
            ]),
        ),
        RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default()),
    ]
}

fn api_key(request: &RequestKind) -> ApiKey {
    match request {
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::ListOffsets(_) => ApiKey::ListOffsets,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::ApiVersions(_) => ApiKey::ApiVersions,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        RequestKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        RequestKind::InitProducerId(_) => ApiKey::InitProducerId,
        RequestKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        RequestKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        RequestKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        RequestKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        RequestKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
        RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
        RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::ListGroups(_) => ApiKey::ListGroups,
        RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        RequestKind::OffsetDelete(_) => ApiKey::OffsetDelete,
        RequestKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        RequestKind::DescribeLogDirs(_) => ApiKey::DescribeLogDirs,
        RequestKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        RequestKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        RequestKind::EndTxn(_) => ApiKey::EndTxn,
        RequestKind::WriteTxnMarkers(_) => ApiKey::WriteTxnMarkers,
        RequestKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        RequestKind::ListTransactions(_) => ApiKey::ListTransactions,
        RequestKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        RequestKind::DescribeProducers(_) => ApiKey::DescribeProducers,
        RequestKind::ElectLeaders(_) => ApiKey::ElectLeaders,
        RequestKind::AlterPartitionReassignments(_) => ApiKey::AlterPartitionReassignments,
        RequestKind::ListPartitionReassignments(_) => ApiKey::ListPartitionReassignments,
        other => panic!("no seed for {other:?}"),
    }
}

fn good_batch(records: usize, compression: Compression) -> Bytes {
    client_batch(records, 20, compression)
}

/// A frame: the request header of `key`/`version`, then `body`.
fn frame(key: ApiKey, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    buf.extend_from_slice(body);
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => {
                let n = rng.below(32);
                let extra = rng.bytes(n);
                bytes.extend_from_slice(&extra);
            }
            4 if bytes.len() >= 4 => {
                // A length or count field set to something huge or negative.
                let at = rng.below(bytes.len() - 3);
                let value = [i32::MAX, -2, 0x7fff, 1 << 20][rng.below(4)];
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            _ => {
                let n = 1 + rng.below(8);
                let insert = rng.bytes(n);
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, insert);
            }
        }
    }
    bytes
}

/// A batch with a valid CRC around random or mutated records and random header fields.
fn hostile_batch(rng: &mut Rng) -> Bytes {
    let codec = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ][rng.below(5)];
    let good = good_batch(1 + rng.below(5), codec);
    let mut batch = good.to_vec();
    let records = match rng.below(3) {
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        1 => mutate(rng, batch[61..].to_vec()),
        _ => batch[61..].to_vec(),
    };
    batch.truncate(61);
    batch.extend_from_slice(&records);
    if rng.chance(30) {
        let count = [0, 1, 2, 5, 100, i32::MAX, -1][rng.below(7)];
        batch[57..61].copy_from_slice(&count.to_be_bytes());
    }
    if rng.chance(20) {
        let delta: i32 = [0, 1, 4, -1][rng.below(4)];
        batch[23..27].copy_from_slice(&delta.to_be_bytes());
    }
    if rng.chance(20) {
        let attributes = rng.below(64) as i16;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    }
    if rng.chance(10) {
        let timestamp = [i64::MIN, i64::MAX, -1, 4_102_444_800_000][rng.below(4)];
        batch[27..35].copy_from_slice(&timestamp.to_be_bytes());
    }
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

/// A mutated Fetch that still decodes may ask to be held for days (`max_wait_ms`, with a large
/// `min_bytes`): rightly waited for, so its wait is cut to 100 ms to keep "no answer" meaning a
/// hang.
/// Likewise a Produce with `acks=0` rightly gets no answer at all: it is sent with acks=1.
fn tame(key: ApiKey, version: i16, body: Vec<u8>) -> Vec<u8> {
    let mut buf = Bytes::from(body.clone());
    let mut out = BytesMut::new();
    let encoded = match key {
        ApiKey::Fetch => match FetchRequest::decode(&mut buf, version) {
            Ok(mut fetch) if fetch.max_wait_ms > 100 => {
                fetch.max_wait_ms = 100;
                fetch.encode(&mut out, version)
            }
            _ => return body,
        },
        ApiKey::Produce => match ProduceRequest::decode(&mut buf, version) {
            Ok(mut produce) if produce.acks == 0 => {
                produce.acks = 1;
                produce.encode(&mut out, version)
            }
            _ => return body,
        },
        // It may wait for the lake's commit up to its timeout.
        ApiKey::DeleteRecords => match DeleteRecordsRequest::decode(&mut buf, version) {
            Ok(mut delete) if delete.timeout_ms > 100 => {
                delete.timeout_ms = 100;
                delete.encode(&mut out, version)
            }
            _ => return body,
        },
        _ => return body,
    };
    match encoded {
        Ok(()) => out.to_vec(),
        Err(_) => body,
    }
}

/// [`tame`] for a frame whose header was mutated too: the new header may still name a Produce
/// (now with acks=0, which rightly gets no answer) or a Fetch that decodes.
fn tame_frame(frame: Vec<u8>) -> Vec<u8> {
    let Some(prefix) = frame.get(..4) else {
        return frame;
    };
    let version = i16::from_be_bytes([prefix[2], prefix[3]]);
    let Ok(key) = ApiKey::try_from(i16::from_be_bytes([prefix[0], prefix[1]])) else {
        return frame;
    };
    let mut rest = Bytes::from(frame.clone());
    if RequestHeader::decode(&mut rest, key.request_header_version(version)).is_err() {
        return frame;
    }
    let mut tamed = frame[..frame.len() - rest.len()].to_vec();
    tamed.extend(tame(key, version, rest.to_vec()));
    tamed
}

/// A connection that reconnects after the broker closes it.
struct Peer {
    bootstrap: String,
    stream: Option<TcpStream>,
}

/// What became of one frame.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered(Bytes),
    Closed,
}

impl Peer {
    fn send(&mut self, frame: &[u8]) -> Outcome {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.bootstrap).unwrap();
            // A hang is a failure: no answer and no close within the deadline.
            stream
                .set_read_timeout(Some(strata_tests::DEADLINE))
                .unwrap();
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().unwrap();
        if stream.write_all(frame).is_err() {
            self.stream = None;
            return Outcome::Closed;
        }
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                let prefix = &frame[..frame.len().min(64)];
                panic!(
                    "the broker neither answered nor closed the connection (hang) after {prefix:02x?}"
                )
            }
            Err(_) => {
                self.stream = None;
                return Outcome::Closed;
            }
        }
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        if stream.read_exact(&mut body).is_err() {
            self.stream = None;
            return Outcome::Closed;
        }
        Outcome::Answered(Bytes::from(body))
    }
}

fn produce_frame(version: i16, records: Bytes) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let mut body = BytesMut::new();
    request.encode(&mut body, version).unwrap();
    frame(ApiKey::Produce, version, 1, &body)
}

/// The partition error code and base offset of a one-partition produce answer.
fn produce_answer(version: i16, mut body: Bytes) -> (i16, i64) {
    let _correlation = bytes::Buf::get_i32(&mut body);
    if ApiKey::Produce.response_header_version(version) >= 1 {
        let _tags = bytes::Buf::get_u8(&mut body);
    }
    let response = ProduceResponse::decode(&mut body, version).unwrap();
    let partition = &response.responses[0].partition_responses[0];
    if partition.error_code != 0 && std::env::var("STRATA_FUZZ_VERBOSE").is_ok() {
        println!("produce refused: {:?}", partition.error_message);
    }
    (partition.error_code, partition.base_offset)
}

/// Every batch stored in the partition's segment files, decoded by the lake's reader (the
/// strictest reader there is): none may fail.
fn check_stored_batches(partition_dir: &std::path::Path) -> usize {
    let mut batches = 0;
    let mut logs: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for path in logs {
        let bytes = std::fs::read(&path).unwrap();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let header = strata_log::batch::validate_batch(rest)
                .unwrap_or_else(|e| panic!("{}: stored batch invalid: {e}", path.display()));
            let size = header.total_bytes();
            strata_lake::records::decode_batch(&rest[..size]).unwrap_or_else(|e| {
                panic!(
                    "{}: stored batch at offset {} cannot be read: {e}",
                    path.display(),
                    header.base_offset
                )
            });
            rest = &rest[size..];
            batches += 1;
        }
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_and_batches_never_hurt_the_broker() {
    let seed = std::env::var("STRATA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases: usize = std::env::var("STRATA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    println!("fuzz seed {seed} ({cases} cases): replay with STRATA_FUZZ_SEED={seed}");
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_in(
        dir.path(),
        &[
            ("log.segment.bytes", "4096"),
            ("socket.request.max.bytes", "1048576"),
            ("group.min.session.timeout.ms", "6000"),
            ("group.max.session.timeout.ms", "6000"),
            ("group.initial.rebalance.delay.ms", "0"),
        ],
    )
    .await;
    let bootstrap = broker.bootstrap.clone();
    let partition_dir = dir.path().join("topics").join(format!("{TOPIC}-0"));
    let good_offsets = tokio::task::spawn_blocking(move || {
        let mut rng = Rng(seed);
        let mut peer = Peer {
            bootstrap,
            stream: None,
        };
        // The topic exists before the fuzzing starts, with one good batch at offset 0.
        let create = CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
        let mut body = BytesMut::new();
        create.encode(&mut body, 5).unwrap();
        let created = peer.send(&frame(ApiKey::CreateTopics, 5, 0, &body));
        assert!(matches!(created, Outcome::Answered(_)));
        let first = peer.send(&produce_frame(8, good_batch(2, Compression::None)));
        let Outcome::Answered(body) = first else {
            panic!("the first produce was refused")
        };
        assert_eq!(produce_answer(8, body), (0, 0));
        let mut good_records = 2i64;
        let seeds = seeds();
        let started = Instant::now();
        let (mut answered, mut closed, mut appended) = (0, 0, 0);
        for case in 0..cases {
            let outcome = if rng.chance(50) {
                let version = [3, 5, 8, 9, 11][rng.below(5)];
                let records = if rng.chance(90) {
                    hostile_batch(&mut rng)
                } else {
                    good_batch(1 + rng.below(4), Compression::Zstd)
                };
                let outcome = peer.send(&produce_frame(version, records.clone()));
                if let Outcome::Answered(body) = &outcome {
                    let (code, _) = produce_answer(version, body.clone());
                    if code == 0 {
                        appended += 1;
                        let header = strata_log::batch::BatchHeader::parse(&records).unwrap();
                        good_records += i64::from(header.record_count);
                    }
                }
                outcome
            } else {
                let seed_request = &seeds[rng.below(seeds.len())];
                let key = api_key(seed_request);
                let range = key.valid_versions();
                let version = range.min + rng.below((range.max - range.min + 1) as usize) as i16;
                let mut body = BytesMut::new();
                let body = match seed_request.encode(&mut body, version) {
                    Ok(()) => body.to_vec(),
                    Err(_) => Vec::new(),
                };
                let body = if rng.chance(80) {
                    mutate(&mut rng, body)
                } else {
                    {
                        let n = rng.below(64);
                        rng.bytes(n)
                    }
                };
                let body = tame(key, version, body);
                let mut frame = frame(key, version, case as i32, &body);
                if rng.chance(5) {
                    // A mutated header too: unknown keys, versions, short frames.
                    // The length prefix stays true: a frame the peer has not finished sending
                    // is rightly waited for.
                    let mut body = tame_frame(mutate(&mut rng, frame.split_off(4)));
                    frame = (body.len() as i32).to_be_bytes().to_vec();
                    frame.append(&mut body);
                }
                peer.send(&frame)
            };
            match outcome {
                Outcome::Answered(_) => answered += 1,
                Outcome::Closed => closed += 1,
            }
        }
        println!(
            "fuzz: {cases} cases in {:?}: {answered} answered, {closed} closed connections, \
             {appended} random batches accepted",
            started.elapsed()
        );
        good_records
    })
    .await
    .unwrap();
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "the broker panicked (seed {seed})"
    );

    // Nothing unreadable was stored, and a real client reads every record.
    let batches = check_stored_batches(&partition_dir);
    assert!(batches >= 1);
    let got = read(
        &broker.bootstrap,
        TOPIC,
        &[0],
        Offset::Beginning,
        good_offsets as usize,
    );
    assert_eq!(got.len() as i64, good_offsets, "seed {seed}");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as i64, "seed {seed}: offsets are dense");
    }

    // The partition still offloads: its sealed segments reach the lake.
    let sealed_end = {
        let mut bases: Vec<i64> = std::fs::read_dir(&partition_dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort();
        bases.last().copied().unwrap_or(0)
    };
    wait_offloaded_to(&default_lake(dir.path()), TOPIC, 0, sealed_end).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "seed {seed}");
    broker.stop().await;
}
