//! A consumer that speaks Fetch itself, over one TCP connection to the leader of a topic's
//! partitions, with or without an incremental fetch session (KIP-227). librdkafka sends every
//! partition in every fetch (it has no sessions), as Kafka's Java consumer does only when the
//! broker gives it no session: this fetcher shows what a broker spends on a consumer of many
//! partitions either way.
//!
//! With sessions it behaves as Kafka's `FetchSessionHandler`: a full fetch first (session id 0,
//! epoch 0); once the broker answers with a session id, each fetch names only the partitions
//! whose offset moved, at the next epoch; a session error starts over with a full fetch. Without,
//! every fetch is full and sessionless (epoch -1).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest,
    MetadataRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

/// Called with each new record: partition, offset, value.
pub type OnRecord<'a> = dyn FnMut(i32, i64, &[u8]) -> Result<()> + 'a;

/// Largest answer read: a fetch's `max_bytes` plus room for its fields.
const RESPONSE_BYTES_MAX: usize = 128 << 20;

/// What a fetch asks for, as librdkafka's settings in `loadgen consume` name them.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    /// Keep an incremental fetch session (KIP-227).
    pub sessions: bool,
    /// `fetch.wait.max.ms`.
    pub max_wait_ms: i32,
    /// `fetch.min.bytes`.
    pub min_bytes: i32,
    /// `fetch.max.bytes`.
    pub max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
}

/// What the fetcher sent and received, for reports.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FetchStats {
    /// Fetch requests sent.
    pub fetches: u64,
    /// Of those, incremental ones (in a session).
    pub incremental: u64,
    /// Bytes of Fetch requests sent.
    pub request_bytes: u64,
    /// Bytes of Fetch answers received.
    pub response_bytes: u64,
    /// Session errors answered (each followed by a full fetch).
    pub session_errors: u64,
}

/// A consumer of every partition of one topic, from its earliest offsets.
pub struct Fetcher {
    stream: TcpStream,
    correlation_id: i32,
    version: i16,
    topic: TopicName,
    topic_id: uuid::Uuid,
    /// Next offset to read, by partition.
    next: Vec<(i32, i64)>,
    settings: FetchSettings,
    session_id: i32,
    /// The next fetch's epoch: 0 for a full fetch that asks for a session.
    epoch: i32,
    /// The offsets the session holds, as last sent.
    in_session: HashMap<i32, i64>,
    stats: FetchStats,
}

impl Fetcher {
    /// Connects to the leader of `topic`'s `partitions` partitions (all must share one) and
    /// looks up their earliest offsets.
    pub fn connect(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        settings: FetchSettings,
    ) -> Result<Self> {
        let mut stream = dial(bootstrap)?;
        let mut correlation_id = 0;
        let versions = call(
            &mut stream,
            &mut correlation_id,
            &ApiVersionsRequest::default(),
            3,
        )?;
        let fetch_max = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Fetch as i16)
            .map(|k| k.max_version)
            .context("the broker does not serve Fetch")?;
        let metadata = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_string())),
            ))]));
        let metadata = call(&mut stream, &mut correlation_id, &metadata, 12)?;
        let described = metadata.topics.first().context("no topic in the answer")?;
        ensure!(
            described.error_code == 0,
            "metadata of {topic}: error {}",
            described.error_code
        );
        let mut leaders: Vec<i32> = described.partitions.iter().map(|p| p.leader_id.0).collect();
        leaders.sort_unstable();
        leaders.dedup();
        let [leader] = leaders[..] else {
            bail!("the fetcher reads from one broker, and {topic} has leaders {leaders:?}");
        };
        let broker = metadata
            .brokers
            .iter()
            .find(|b| b.node_id.0 == leader)
            .context("the leader is not among the brokers")?;
        let leader_addr = format!("{}:{}", broker.host.as_str(), broker.port);
        let mut fetcher = Self {
            stream: dial(&leader_addr)?,
            correlation_id: 0,
            version: fetch_max.min(13),
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            topic_id: described.topic_id,
            next: Vec::new(),
            settings,
            session_id: 0,
            epoch: 0,
            in_session: HashMap::new(),
            stats: FetchStats::default(),
        };
        fetcher.next = fetcher.earliest(partitions)?;
        Ok(fetcher)
    }

    fn earliest(&mut self, partitions: i32) -> Result<Vec<(i32, i64)>> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(self.topic.clone())
                    .with_partitions(
                        (0..partitions)
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(-2)
                            })
                            .collect(),
                    ),
            ]);
        let answer = call(&mut self.stream, &mut self.correlation_id, &request, 5)?;
        let mut next = Vec::with_capacity(partitions as usize);
        for p in answer.topics.iter().flat_map(|t| &t.partitions) {
            ensure!(
                p.error_code == 0,
                "earliest offset of partition {}: error {}",
                p.partition_index,
                p.error_code
            );
            next.push((p.partition_index, p.offset));
        }
        next.sort_unstable();
        ensure!(
            next.len() == partitions as usize,
            "earliest offsets of {} partitions",
            next.len()
        );
        Ok(next)
    }

    /// What the fetcher sent and received so far.
    pub fn stats(&self) -> FetchStats {
        self.stats
    }

    /// One fetch: calls `on_record(partition, offset, value)` for each new record, in offset
    /// order per partition, and returns how many there were.
    pub fn fetch(&mut self, on_record: &mut OnRecord<'_>) -> Result<u64> {
        let request = self.request();
        let (response, sent, received) = exchange::<FetchRequest>(
            &mut self.stream,
            &mut self.correlation_id,
            &request,
            self.version,
        )?;
        self.stats.fetches += 1;
        self.stats.incremental += u64::from(request.session_epoch > 0);
        self.stats.request_bytes += sent as u64;
        self.stats.response_bytes += received as u64;
        if !self.answered(&response)? {
            return Ok(0);
        }
        let mut records = 0;
        for topic in &response.responses {
            for data in &topic.partitions {
                if let Some(code) = ResponseError::try_from_code(data.error_code) {
                    bail!("partition {}: {code:?}", data.partition_index);
                }
                records += self.deliver(data.partition_index, data.records.clone(), on_record)?;
            }
        }
        Ok(records)
    }

    /// The next request: every partition (full), or those whose offset moved (incremental).
    fn request(&mut self) -> FetchRequest {
        let incremental = self.settings.sessions && self.epoch > 0;
        let wanted: Vec<FetchPartition> = self
            .next
            .iter()
            .filter(|(p, offset)| !incremental || self.in_session.get(p) != Some(offset))
            .map(|&(p, offset)| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(offset)
                    .with_current_leader_epoch(-1)
                    .with_partition_max_bytes(self.settings.partition_max_bytes)
            })
            .collect();
        if self.settings.sessions {
            self.in_session = self.next.iter().copied().collect();
        }
        let topics = if wanted.is_empty() {
            Vec::new()
        } else {
            vec![
                FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_topic_id(self.topic_id)
                    .with_partitions(wanted),
            ]
        };
        let (session_id, epoch) = match self.settings.sessions {
            true => (self.session_id, self.epoch),
            false => (0, -1),
        };
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.settings.max_wait_ms)
            .with_min_bytes(self.settings.min_bytes)
            .with_max_bytes(self.settings.max_bytes)
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(topics)
            .with_forgotten_topics_data(Vec::<ForgottenTopic>::new())
    }

    /// Follows the session through an answer; false when it was a session error.
    fn answered(&mut self, response: &FetchResponse) -> Result<bool> {
        let session_error = matches!(
            ResponseError::try_from_code(response.error_code),
            Some(
                ResponseError::FetchSessionIdNotFound
                    | ResponseError::InvalidFetchSessionEpoch
                    | ResponseError::FetchSessionTopicIdError
            )
        );
        if session_error {
            self.stats.session_errors += 1;
            self.epoch = 0;
            return Ok(false);
        }
        ensure!(
            response.error_code == 0,
            "fetch error {}",
            response.error_code
        );
        if !self.settings.sessions {
            return Ok(true);
        }
        if self.epoch == 0 {
            self.session_id = response.session_id;
            self.epoch = i32::from(response.session_id != 0);
        } else {
            self.epoch = if self.epoch == i32::MAX {
                1
            } else {
                self.epoch + 1
            };
        }
        Ok(true)
    }

    fn deliver(
        &mut self,
        partition: i32,
        records: Option<Bytes>,
        on_record: &mut OnRecord<'_>,
    ) -> Result<u64> {
        let Some(mut bytes) = records else {
            return Ok(0);
        };
        let at = self
            .next
            .binary_search_by_key(&partition, |(p, _)| *p)
            .map_err(|_| anyhow::anyhow!("an answer for partition {partition}, not asked"))?;
        let mut delivered = 0;
        while bytes.remaining() >= 61 {
            // A trailing partial batch (cut at the size limit) is read again next time.
            let size = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
            if bytes.remaining() < 12 + size {
                break;
            }
            let set = RecordBatchDecoder::decode(&mut bytes).context("decoding a batch")?;
            for record in set.records {
                if record.offset < self.next[at].1 {
                    continue;
                }
                on_record(
                    partition,
                    record.offset,
                    record.value.as_deref().unwrap_or_default(),
                )?;
                self.next[at].1 = record.offset + 1;
                delivered += 1;
            }
        }
        Ok(delivered)
    }
}

fn dial(addr: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

fn call<R: Request>(
    stream: &mut TcpStream,
    correlation_id: &mut i32,
    request: &R,
    version: i16,
) -> Result<R::Response> {
    exchange(stream, correlation_id, request, version).map(|(r, _, _)| r)
}

/// Sends a request and reads its answer: the answer, bytes sent and bytes received.
fn exchange<R: Request>(
    stream: &mut TcpStream,
    correlation_id: &mut i32,
    request: &R,
    version: i16,
) -> Result<(R::Response, usize, usize)> {
    let api_key = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown API key"))?;
    *correlation_id += 1;
    let mut buf = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(*correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("loadgen-fetcher")))
        .encode(&mut buf, api_key.request_header_version(version))?;
    request.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    ensure!(len <= RESPONSE_BYTES_MAX, "an answer of {len} bytes");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let mut body = Bytes::from(body);
    ensure!(body.remaining() >= 4, "an answer shorter than its header");
    let correlation = body.get_i32();
    ensure!(
        correlation == *correlation_id,
        "answer {correlation} to request {correlation_id}"
    );
    if api_key.response_header_version(version) >= 1 {
        // No tagged fields are sent in response headers here.
        body.advance(1);
    }
    let response = R::Response::decode(&mut body, version)?;
    Ok((response, buf.len(), len + 4))
}
