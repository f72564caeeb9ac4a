//! ListOffsets: earliest, latest, max timestamp, or the first offset at or after a timestamp.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::Context;
use crate::partition::Partition;
use crate::security::acl::{Access, AclOperation};

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// Needs DESCRIBE on each topic.
pub(super) async fn handle(
    ctx: &Context,
    access: &Access<'_>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let describable = access.check_topic(AclOperation::Describe, &topic.name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            let answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(wanted.partition_index);
            if !describable {
                let code = ResponseError::TopicAuthorizationFailed.code();
                partitions.push(answer.with_error_code(code));
                continue;
            }
            let partition = match ctx
                .manager
                .leader_partition(&topic.name, wanted.partition_index)
            {
                Ok(partition) => partition,
                Err(e) => {
                    partitions.push(answer.with_error_code(e.code().code()));
                    continue;
                }
            };
            let committed = version >= 2 && request.isolation_level == READ_COMMITTED;
            let answer = match lookup(ctx, &partition, wanted.timestamp, committed).await {
                Ok((offset, timestamp)) => {
                    let mut answer = answer.with_offset(offset).with_timestamp(timestamp);
                    if version >= 4 {
                        answer.leader_epoch = partition.leader_epoch();
                    }
                    answer
                }
                Err(code) => answer.with_error_code(code.code()),
            };
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Kafka's `isolation_level` of a `read_committed` consumer.
const READ_COMMITTED: i8 = 1;

/// `(offset, timestamp)` for a ListOffsets timestamp; `(-1, -1)` when no record qualifies. The
/// latest offset of a `read_committed` consumer (`committed`) is the last stable offset.
async fn lookup(
    ctx: &Context,
    partition: &Partition,
    timestamp: i64,
    committed: bool,
) -> Result<(i64, i64), ResponseError> {
    let local_start = partition.log_start_offset();
    let (topic, index) = (partition.topic(), partition.index());
    let log_start = ctx.lake.log_start_offset(topic, index, local_start);
    Ok(match timestamp {
        LATEST if committed => (partition.last_stable_offset(), -1),
        LATEST => (partition.high_watermark(), -1),
        // The whole log starts in the lake when it holds older offsets; never below the log
        // start DeleteRecords set.
        EARLIEST => (log_start, -1),
        EARLIEST_LOCAL => (local_start, -1),
        LATEST_TIERED => (ctx.lake.last_offset(topic, index).unwrap_or(-1), -1),
        // Only committed records (below the high watermark) are answered, as Kafka does.
        MAX_TIMESTAMP => partition
            .max_timestamp()
            .map_err(|e| e.code())?
            .filter(|&(offset, _)| offset < partition.high_watermark())
            .unwrap_or((-1, -1)),
        // Both tiers: the lake holds the older offsets, so it is searched first.
        t if t >= 0 => {
            let in_lake = ctx.lake.offset_for_timestamp(topic, index, t, log_start).await.map_err(|e| {
                tracing::warn!(topic, partition = index, error = %e, "lake timestamp search failed");
                ResponseError::KafkaStorageError
            })?;
            match in_lake {
                Some(found) => found,
                None => partition
                    .offset_for_timestamp(t)
                    .map_err(|e| e.code())?
                    .filter(|&(offset, _)| offset < partition.high_watermark())
                    .unwrap_or((-1, -1)),
            }
        }
        _ => (-1, -1),
    })
}
