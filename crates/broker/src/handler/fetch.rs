//! Fetch: stored batches served as they are, with long polling on `max_wait_ms` / `min_bytes`.
//!
//! Limits (KIP-74): the response stops growing at `max_bytes`, each partition at
//! `partition_max_bytes`, but the first batch of the first partition with data is returned whole
//! even when larger, so a big record never stalls a consumer.
//!
//! Records are not copied into the answer: local ones are ranges of segment files that the
//! connection sends with `sendfile(2)`, lake ones are slices of cached chunks. The answer is
//! encoded here around them ([`Answer::encode`]); everything but the records is encoded with
//! `kafka-protocol`, and a unit test checks the frame against its encoding byte for byte.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, ProducerId, ResponseHeader, TopicName};
use kafka_protocol::protocol::Encodable;
use strata_log::FileSlice;
use strata_log::batch::{LOG_OVERHEAD, peek_offset_and_size};
use tokio::sync::watch;

use super::{Context, Refusal, now_ms};
use crate::error::Error;
use crate::fetch_session::SessionAnswer;
use crate::outgoing::{FrameBuilder, Outgoing};
use crate::partition::Partition;
use crate::security::acl::{Access, AclOperation};

/// Longest a fetch may wait, whatever the client asks: bounds how long a task is held.
pub(crate) const FETCH_WAIT_MS_MAX: i32 = 30_000;

/// A partition's records in an answer.
#[derive(Debug, Clone)]
pub(crate) enum Records {
    /// From the lake's read cache.
    Bytes(Bytes),
    /// A range of a local segment.
    File(FileSlice),
}

impl Records {
    fn len(&self) -> usize {
        match self {
            Records::Bytes(b) => b.len(),
            Records::File(f) => f.len(),
        }
    }
}

/// A fetch answer: a FetchResponse whose records are held apart, to be written without copies.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    error_code: i16,
    /// The fetch session the answer belongs to (KIP-227), 0 for none.
    session_id: i32,
    topics: Vec<TopicAnswer>,
    /// How long the client is throttled for its quotas (KIP-219), set by the dispatcher.
    pub(crate) throttle_time_ms: i32,
}

#[derive(Debug)]
struct TopicAnswer {
    topic: TopicName,
    topic_id: uuid::Uuid,
    /// Each partition's fields (`records` left unset) and its records.
    partitions: Vec<(PartitionData, Records)>,
}

impl Answer {
    fn error(error: ResponseError) -> Self {
        Self {
            error_code: error.code(),
            session_id: 0,
            topics: Vec::new(),
            throttle_time_ms: 0,
        }
    }

    fn with_session_id(mut self, session_id: i32) -> Self {
        self.session_id = session_id;
        self
    }

    /// Record bytes in the answer.
    pub(crate) fn record_bytes(&self) -> usize {
        self.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|(_, r)| r.len())
            .sum()
    }

    /// The response frame at `version`, in the layout of kafka-protocol's `FetchResponse`.
    pub(crate) fn encode(&self, version: i16, correlation_id: i32) -> Result<Outgoing, Refusal> {
        self.encode_frame(version, correlation_id)
            .map_err(|e| format!("encoding the Fetch v{version} response: {e}"))
    }

    fn encode_frame(&self, version: i16, correlation_id: i32) -> anyhow::Result<Outgoing> {
        let flexible = version >= 12;
        let mut frame = FrameBuilder::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(frame.buf(), ApiKey::Fetch.response_header_version(version))?;
        let buf = frame.buf();
        if version >= 1 {
            buf.put_i32(self.throttle_time_ms);
        }
        if version >= 7 {
            buf.put_i16(self.error_code);
            buf.put_i32(self.session_id);
        }
        put_len(buf, self.topics.len(), flexible)?;
        for topic in &self.topics {
            let buf = frame.buf();
            if version >= 13 {
                buf.put_slice(topic.topic_id.as_bytes());
            } else {
                let name = topic.topic.as_bytes();
                if flexible {
                    put_uvarint(buf, u32::try_from(name.len() + 1)?);
                } else {
                    buf.put_i16(i16::try_from(name.len())?);
                }
                buf.put_slice(name);
            }
            put_len(buf, topic.partitions.len(), flexible)?;
            for (data, records) in &topic.partitions {
                encode_partition(&mut frame, data, records, version)?;
            }
            if flexible {
                frame.buf().put_u8(0); // the topic's tagged fields
            }
        }
        if flexible {
            frame.buf().put_u8(0); // the response's tagged fields
        }
        frame.finish().map_err(anyhow::Error::msg)
    }
}

/// One partition: its fields encoded by kafka-protocol with empty records, whose encoding (and,
/// from v12, the empty tagged fields after it) is then replaced by the real length and the
/// records themselves.
fn encode_partition(
    frame: &mut FrameBuilder,
    data: &PartitionData,
    records: &Records,
    version: i16,
) -> anyhow::Result<()> {
    let flexible = version >= 12;
    let buf = frame.buf();
    let mut fields = data.clone();
    fields.records = Some(Bytes::new());
    fields.encode(buf, version)?;
    // Empty records: i32 length 0; flexible: varint length+1 = 1, then no tagged fields.
    let tail: &[u8] = if flexible { &[1, 0] } else { &[0, 0, 0, 0] };
    anyhow::ensure!(
        buf.ends_with(tail),
        "partition {} has fields after its records",
        data.partition_index
    );
    buf.truncate(buf.len() - tail.len());
    let len = records.len();
    put_len(buf, len, flexible)?;
    match records {
        Records::Bytes(bytes) => frame.push_bytes(bytes.clone()),
        Records::File(slice) => frame.push_file(slice.clone()),
    }
    if flexible {
        frame.buf().put_u8(0);
    }
    Ok(())
}

/// An array's or a byte string's length: i32, or from v12 an unsigned varint of length + 1.
fn put_len(buf: &mut BytesMut, len: usize, flexible: bool) -> anyhow::Result<()> {
    if flexible {
        put_uvarint(buf, u32::try_from(len + 1)?);
    } else {
        buf.put_i32(i32::try_from(len)?);
    }
    Ok(())
}

/// An unsigned varint (LEB128), as the flexible versions encode lengths.
fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

impl SessionAnswer for Answer {
    fn retain_partitions(
        &mut self,
        keep: &mut dyn FnMut(&TopicName, uuid::Uuid, &PartitionData, usize) -> bool,
    ) {
        for topic in &mut self.topics {
            let (name, id) = (&topic.topic, topic.topic_id);
            topic
                .partitions
                .retain(|(data, records)| keep(name, id, data, records.len()));
        }
        self.topics.retain(|t| !t.partitions.is_empty());
    }
}

/// A fetch within its session (KIP-227): an incremental one reads every partition of the
/// session and answers those with news.
pub(crate) async fn handle(
    ctx: &Arc<Context>,
    access: &Access<'_>,
    version: i16,
    mut request: FetchRequest,
) -> Answer {
    let consumer = request.replica_id.0 < 0;
    let session = match ctx.fetch_sessions.open(version, &mut request, now_ms()) {
        Ok(session) => session,
        Err(code) => return Answer::error(code),
    };
    let mut answer = fetch(ctx, access, version, request).await;
    match ctx.fetch_sessions.finish(session, &mut answer, now_ms()) {
        Ok(id) => answer.session_id = id,
        Err((code, id)) => answer = Answer::error(code).with_session_id(id),
    }
    if consumer {
        // Once per topic of the answer (metrics); a follower's replication is not counted.
        for topic in &answer.topics {
            let bytes = topic.partitions.iter().map(|(_, r)| r.len() as u64).sum();
            ctx.metrics.topics.bytes_out(&topic.topic, bytes);
        }
    }
    answer
}

async fn fetch(
    ctx: &Arc<Context>,
    access: &Access<'_>,
    version: i16,
    mut request: FetchRequest,
) -> Answer {
    let wait = Duration::from_millis(request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let (partitions, refused) = resolve(ctx, access, version, &mut request);
    // A follower broker (replica id set) reads up to the log end, and its fetch offsets tell this
    // leader how far it is.
    let replica = (request.replica_id.0 >= 0).then_some(request.replica_id.0);
    // Subscribe before the first read so no append between read and wait is missed.
    let mut watchers: Vec<watch::Receiver<i64>> = partitions
        .iter()
        .flatten()
        .flatten()
        .map(|p| match replica {
            Some(_) => p.watch_log_end_offset(),
            None => p.watch_high_watermark(),
        })
        .collect();
    loop {
        if let Some(replica) = replica {
            note_follower(ctx, replica, &request, &partitions);
        }
        let (answer, errors) =
            read_once(ctx, version, &request, (&partitions, &refused), replica).await;
        let done = answer.record_bytes() >= request.min_bytes.max(0) as usize
            || errors
            || watchers.is_empty()
            || tokio::time::Instant::now() >= deadline;
        if done {
            return answer;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            (result, _, _) = changed => if result.is_err() { return answer },
            () = tokio::time::sleep_until(deadline) => {}
            () = ctx.shutdown.cancelled() => return answer,
        }
    }
}

/// Each requested partition, `None` when unknown: topics × partitions in request order.
type Resolved = Vec<Vec<Option<Arc<Partition>>>>;

/// Records a follower's fetch offsets with the partitions this broker leads; an ISR expansion a
/// partition proposes goes to the controller.
fn note_follower(ctx: &Context, replica: i32, request: &FetchRequest, partitions: &Resolved) {
    let now = now_ms();
    for (topic, resolved) in request.topics.iter().zip(partitions) {
        for (wanted, partition) in topic.partitions.iter().zip(resolved) {
            let Some(partition) = partition else { continue };
            partition.record_follower_log_start(replica, wanted.log_start_offset);
            if let Ok(Some((epoch, isr))) = partition.record_follower_fetch(
                replica,
                wanted.fetch_offset,
                wanted.current_leader_epoch,
                now,
            ) {
                ctx.manager.propose_isr(partition, epoch, isr);
            }
        }
    }
}

/// From v13 topics are named by id: their names are filled in here. A topic the fetcher may
/// not read (READ for consumers; CLUSTER_ACTION on the cluster for a follower broker) resolves
/// to no partition and is marked refused.
fn resolve(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: &mut FetchRequest,
) -> (Resolved, Vec<bool>) {
    let follower_refused =
        request.replica_id.0 >= 0 && !access.check_cluster(AclOperation::ClusterAction);
    let mut refused = Vec::with_capacity(request.topics.len());
    let resolved = request
        .topics
        .iter_mut()
        .map(|topic| {
            let found = if version >= 13 {
                let found = ctx.manager.topic_by_id(topic.topic_id);
                if let Some(t) = &found {
                    topic.topic = TopicName(super::str_bytes(t.name.clone()));
                }
                found
            } else {
                ctx.manager.topic(&topic.topic)
            };
            let denied = follower_refused
                || (request.replica_id.0 < 0
                    && !(version >= 13 && topic.topic.is_empty())
                    && !access.check_topic(AclOperation::Read, &topic.topic));
            refused.push(denied);
            let found = found.filter(|_| !denied);
            topic
                .partitions
                .iter()
                .map(|p| found.as_ref().and_then(|t| t.partition(p.partition)))
                .collect()
        })
        .collect();
    (resolved, refused)
}

/// One pass over the partitions: the answer, and whether any partition has an error (which
/// answers at once).
async fn read_once(
    ctx: &Context,
    version: i16,
    request: &FetchRequest,
    (partitions, refused): (&Resolved, &[bool]),
    replica: Option<i32>,
) -> (Answer, bool) {
    let mut budget = request.max_bytes.max(0) as usize;
    let mut total = 0usize;
    let reader = match replica {
        Some(_) => Reader::Replica,
        None if request.isolation_level == READ_COMMITTED => Reader::Committed,
        None => Reader::Uncommitted,
    };
    let mut errors = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for ((topic, resolved), &refused) in request.topics.iter().zip(partitions).zip(refused) {
        let mut datas = Vec::with_capacity(topic.partitions.len());
        for (wanted, partition) in topic.partitions.iter().zip(resolved) {
            if refused {
                let data = PartitionData::default()
                    .with_partition_index(wanted.partition)
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                errors = true;
                datas.push((data, NO_RECORDS));
                continue;
            }
            let limit = (wanted.partition_max_bytes.max(0) as usize).min(budget);
            let (data, records) = read_partition(
                ctx,
                (partition.as_deref(), &topic.topic),
                (wanted.partition, wanted.current_leader_epoch),
                wanted.fetch_offset,
                limit,
                total == 0,
                reader,
            )
            .await;
            errors |= data.error_code != 0;
            total += records.len();
            budget = budget.saturating_sub(records.len());
            datas.push((data, records));
        }
        topics.push(topic_answer(version, topic, datas));
    }
    let answer = Answer {
        error_code: 0,
        session_id: 0,
        topics,
        throttle_time_ms: 0,
    };
    (answer, errors)
}

fn topic_answer(
    version: i16,
    topic: &FetchTopic,
    mut partitions: Vec<(PartitionData, Records)>,
) -> TopicAnswer {
    if version >= 13 && topic.topic.is_empty() {
        // No topic has this id (names are filled in by `resolve`).
        for (data, _) in &mut partitions {
            data.error_code = ResponseError::UnknownTopicId.code();
        }
    }
    TopicAnswer {
        topic: topic.topic.clone(),
        topic_id: if version >= 13 {
            topic.topic_id
        } else {
            uuid::Uuid::nil()
        },
        partitions,
    }
}

const NO_RECORDS: Records = Records::Bytes(Bytes::new());

/// Kafka's `isolation_level` of a `read_committed` consumer.
const READ_COMMITTED: i8 = 1;

/// Who reads, and so how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// A follower broker: to the log end.
    Replica,
    /// A `read_uncommitted` consumer: below the high watermark.
    Uncommitted,
    /// A `read_committed` consumer: below the last stable offset, told the aborted
    /// transactions to drop.
    Committed,
}

async fn read_partition(
    ctx: &Context,
    (partition, topic): (Option<&Partition>, &str),
    (index, current_leader_epoch): (i32, i32),
    offset: i64,
    limit: usize,
    first: bool,
    reader: Reader,
) -> (PartitionData, Records) {
    let replica = reader == Reader::Replica;
    let data = PartitionData::default().with_partition_index(index);
    let Some(partition) = partition else {
        let code = if ctx
            .manager
            .topic(topic)
            .is_some_and(|t| (0..t.partition_count).contains(&index))
        {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        return (data.with_error_code(code.code()), NO_RECORDS);
    };
    if !partition.is_leader() {
        let data = data.with_error_code(ResponseError::NotLeaderOrFollower.code());
        return (data, NO_RECORDS);
    }
    if current_leader_epoch >= 0 && current_leader_epoch != partition.leader_epoch() {
        let code = if current_leader_epoch < partition.leader_epoch() {
            ResponseError::FencedLeaderEpoch
        } else {
            ResponseError::UnknownLeaderEpoch
        };
        return (data.with_error_code(code.code()), NO_RECORDS);
    }
    let local_start = partition.log_start_offset();
    // A follower copies the local log only: it restarts at the leader's local start.
    let log_start = if replica {
        local_start
    } else {
        ctx.lake
            .log_start_offset(partition.topic(), index, local_start)
    };
    let last_stable = partition.last_stable_offset();
    let readable_end = match reader {
        Reader::Replica => partition.log_end_offset(),
        Reader::Uncommitted => partition.high_watermark(),
        Reader::Committed => last_stable,
    };
    let data = data
        .with_high_watermark(partition.high_watermark())
        .with_last_stable_offset(last_stable)
        .with_log_start_offset(log_start);
    if offset == readable_end || (limit == 0 && !first) {
        return (data, NO_RECORDS);
    }
    if !replica && offset < log_start {
        // Below the log start (retention, DeleteRecords): the consumer resets its position.
        let data = data.with_error_code(ResponseError::OffsetOutOfRange.code());
        return (data, NO_RECORDS);
    }
    if !replica && offset < local_start && offset >= log_start {
        return read_lake(ctx, partition, data, offset, limit, first).await;
    }
    if !replica && offset > readable_end && offset <= partition.log_end_offset() {
        // Committed on this leader but not yet everywhere: nothing to give yet.
        return (data, NO_RECORDS);
    }
    let read = match reader {
        Reader::Committed => partition
            .read_committed(offset, limit)
            .map(|(read, aborted)| (read, Some(aborted))),
        _ => partition.read_as(offset, limit, replica).map(|r| (r, None)),
    };
    match read {
        Ok((read, aborted)) => {
            // The slice holds at most `limit` bytes unless its first batch alone is larger.
            let records = match read.records {
                Some(slice) if slice.len() <= limit || first => Records::File(slice),
                _ => NO_RECORDS,
            };
            let aborted = aborted.map(|list| {
                list.into_iter()
                    .map(|a| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(a.producer_id))
                            .with_first_offset(a.first_offset)
                    })
                    .collect()
            });
            let data = data
                .with_high_watermark(read.high_watermark)
                .with_last_stable_offset(read.last_stable_offset)
                .with_aborted_transactions(aborted);
            (data, records)
        }
        Err(e) => {
            if !matches!(e, Error::Log(strata_log::Error::OffsetOutOfRange { .. })) {
                tracing::warn!(topic = partition.topic(), partition = index, offset, error = %e, "fetch failed");
            }
            (data.with_error_code(e.code().code()), NO_RECORDS)
        }
    }
}

/// A historic read from the lake. While object storage is unreachable the client gets
/// KAFKA_STORAGE_ERROR, which it retries; a file that is missing or corrupt is named in the log.
async fn read_lake(
    ctx: &Context,
    partition: &Partition,
    data: PartitionData,
    offset: i64,
    limit: usize,
    first: bool,
) -> (PartitionData, Records) {
    // KIP-956: past `remote.log.manager.fetch.max.bytes.per.second` the partition gets no
    // records this time, and no error, as in Kafka; the consumer fetches again.
    if ctx.lake.fetch_limit().exceeded() {
        return (data, NO_RECORDS);
    }
    let code = match ctx
        .lake
        .read(partition.topic(), partition.index(), offset, limit)
        .await
    {
        Ok(Some(records)) => {
            let records = fit(records, limit, first);
            ctx.lake.fetch_limit().take(records.len() as u64);
            return (data, Records::Bytes(records));
        }
        Ok(None) => ResponseError::OffsetOutOfRange,
        Err(_)
            if ctx
                .lake
                .start_offset(partition.topic(), partition.index())
                .is_none_or(|start| offset < start) =>
        {
            // Remote retention removed the file while it was read.
            ResponseError::OffsetOutOfRange
        }
        Err(e) => {
            tracing::warn!(topic = partition.topic(), partition = partition.index(), offset, error = %e, "lake read failed");
            // Unreachable storage is retriable; a corrupt file is not, and never yields records.
            match e {
                strata_lake::Error::Storage(_) => ResponseError::KafkaStorageError,
                _ => ResponseError::CorruptMessage,
            }
        }
    };
    (data.with_error_code(code.code()), NO_RECORDS)
}

/// Keeps the stored bytes within `limit`, except the whole first batch of the first partition
/// with data; a later partition whose first batch does not fit returns nothing this time.
fn fit(records: Bytes, limit: usize, first: bool) -> Bytes {
    if records.len() <= limit || first {
        return records;
    }
    let first_batch = match records.get(..LOG_OVERHEAD) {
        Some(prefix) => {
            LOG_OVERHEAD
                + peek_offset_and_size(prefix.try_into().expect("12 bytes"))
                    .1
                    .max(0) as usize
        }
        None => records.len(),
    };
    if first_batch > limit {
        Bytes::new()
    } else {
        records.slice(..limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..12].copy_from_slice(&((len - LOG_OVERHEAD) as i32).to_be_bytes());
        b
    }

    #[test]
    fn the_first_batch_always_fits_later_ones_only_within_the_limit() {
        let two: Vec<u8> = [batch_of(100), batch_of(100)].concat();
        assert_eq!(
            fit(Bytes::from(two.clone()), 50, true).len(),
            200,
            "first partition: whole"
        );
        assert_eq!(
            fit(Bytes::from(two.clone()), 50, false).len(),
            0,
            "first batch too big"
        );
        assert_eq!(
            fit(Bytes::from(two.clone()), 150, false).len(),
            150,
            "partial trailing batch"
        );
        assert_eq!(fit(Bytes::from(two), 500, false).len(), 200);
    }

    /// A segment range holding one batch of `values`.
    fn stored(dir: &std::path::Path, values: &[&[u8]]) -> FileSlice {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch where sequences are not consecutive.
                sequence: i as i32 - 1,
                timestamp: 1_000,
                key: None,
                value: Some(Bytes::copy_from_slice(v)),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut batch = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
        let mut log = strata_log::Log::open(dir, Default::default(), 1_000).unwrap();
        log.append(&batch, 0, 1_000).unwrap();
        log.read(0, 1 << 20).unwrap().unwrap()
    }

    /// The frame written around the records equals kafka-protocol's encoding of the same
    /// response with the records in it, at every version the broker may answer.
    #[test]
    fn answers_encode_exactly_as_kafka_protocol_would() {
        use kafka_protocol::messages::FetchResponse;
        use kafka_protocol::messages::fetch_response::{
            AbortedTransaction, FetchableTopicResponse,
        };
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 70_000];
        let file = stored(dir.path(), &[b"first", &big, b"third"]);
        let lake = Bytes::from(vec![3u8; 9_000]);
        let small = Bytes::from_static(b"tiny records");
        let partition = |i: i32| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(1_000 + i64::from(i))
                .with_last_stable_offset(900)
                .with_log_start_offset(i64::from(i))
        };
        let aborted = vec![
            AbortedTransaction::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(5))
                .with_first_offset(6),
        ];
        let topics = || {
            vec![
                (
                    "orders",
                    uuid::Uuid::from_u128(1),
                    vec![
                        (partition(0), Records::File(file.clone())),
                        (partition(1), Records::Bytes(lake.clone())),
                        (partition(2).with_error_code(1), NO_RECORDS),
                    ],
                ),
                ("empty", uuid::Uuid::from_u128(2), vec![]),
                (
                    "t",
                    uuid::Uuid::from_u128(3),
                    vec![(
                        partition(3).with_aborted_transactions(Some(aborted.clone())),
                        Records::Bytes(small.clone()),
                    )],
                ),
            ]
        };
        let stored = file.read().unwrap();
        for version in 4..=15 {
            let session_id = if version >= 7 { 77 } else { 0 };
            let answer = Answer {
                error_code: 0,
                session_id,
                throttle_time_ms: 0,
                topics: topics()
                    .into_iter()
                    .map(|(name, id, partitions)| TopicAnswer {
                        topic: TopicName(name.into()),
                        topic_id: if version >= 13 { id } else { uuid::Uuid::nil() },
                        partitions,
                    })
                    .collect(),
            };
            let expected = FetchResponse::default()
                .with_session_id(session_id)
                .with_responses(
                    topics()
                        .into_iter()
                        .map(|(name, id, partitions)| {
                            let mut t = FetchableTopicResponse::default().with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(data, records)| {
                                        let bytes = match records {
                                            Records::Bytes(b) => b,
                                            Records::File(_) => Bytes::from(stored.clone()),
                                        };
                                        data.with_records(Some(bytes))
                                    })
                                    .collect(),
                            );
                            if version >= 13 {
                                t.topic_id = id;
                            } else {
                                t.topic = TopicName(name.into());
                            }
                            t
                        })
                        .collect(),
                );
            let expected = crate::handler::encode(
                ApiKey::Fetch,
                version,
                42,
                &kafka_protocol::messages::ResponseKind::Fetch(expected),
            )
            .unwrap();
            let frame = answer.encode(version, 42).unwrap().to_vec().unwrap();
            assert_eq!(frame, &expected[..], "Fetch v{version}");
            let error = Answer::error(ResponseError::FetchSessionIdNotFound);
            let expected = FetchResponse::default()
                .with_error_code(ResponseError::FetchSessionIdNotFound.code());
            let expected = crate::handler::encode(
                ApiKey::Fetch,
                version,
                9,
                &kafka_protocol::messages::ResponseKind::Fetch(expected),
            )
            .unwrap();
            assert_eq!(
                error.encode(version, 9).unwrap().to_vec().unwrap(),
                &expected[..],
                "Fetch v{version} error"
            );
        }
    }
}
