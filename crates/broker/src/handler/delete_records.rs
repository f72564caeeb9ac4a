//! DeleteRecords (KIP-107): moves partitions' log start offsets, so that no record below the new
//! start is served again, from either tier.
//!
//! On the partition leader only, as Kafka does:
//! 1. the offset (-1: the high watermark) must lie within `[0, high watermark]`;
//! 2. the local log start moves there, durably, and the whole local segments below it go;
//! 3. a tiered partition's manifest records the new start and loses the lake files entirely
//!    below it (committed by the offload pipeline, the manifests' single writer, which the
//!    request wakes); a file holding the start stays and is filtered on read;
//! 4. a replicated partition's followers follow the leader's log start (the Fetch answers carry
//!    it) and report theirs in their fetches.
//!
//! The answer waits, at most `timeout_ms`, for the lake's commit (tiered) or until every in-sync
//! replica has moved (Kafka's low watermark); past it the partition answers REQUEST_TIMED_OUT,
//! the local move made and kept.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use tokio::time::Instant;

use super::{Context, off_the_workers};
use crate::partition::Partition;
use crate::security::acl::{Access, AclOperation};

/// The offset meaning "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;
/// Longest an answer waits, whatever the client asks: bounds how long a task is held.
const TIMEOUT_MS_MAX: i32 = 60_000;
/// How often a replicated partition's low watermark is looked at while waiting: followers
/// report their log starts with their fetches, which no watch announces.
const LOW_WATERMARK_POLL: Duration = Duration::from_millis(20);
/// Kafka's internal topics, whose records DeleteRecords refuses to delete.
const INTERNAL_TOPICS: &[&str] = &[crate::groups::OFFSETS_TOPIC, "__transaction_state"];

/// A partition whose log start moved here, waiting for the lake or the followers.
struct Moved {
    partition: Arc<Partition>,
    offset: i64,
    tiered: bool,
}

/// Needs DELETE on each topic.
pub(super) async fn handle(
    ctx: &Context,
    access: &Access<'_>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let timeout_ms = request.timeout_ms.clamp(0, TIMEOUT_MS_MAX);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
    // Every partition moves first; then the answer waits for all of them at once.
    let moved: Vec<Vec<Result<Moved, ResponseError>>> = request
        .topics
        .iter()
        .map(|topic| {
            let deletable = access.check_topic(AclOperation::Delete, &topic.name);
            topic
                .partitions
                .iter()
                .map(|p| match deletable {
                    false => Err(ResponseError::TopicAuthorizationFailed),
                    true => move_log_start(ctx, &topic.name, p.partition_index, p.offset),
                })
                .collect()
        })
        .collect();
    let mut topics = Vec::with_capacity(request.topics.len());
    for (topic, results) in request.topics.into_iter().zip(moved) {
        let mut partitions = Vec::with_capacity(results.len());
        for (wanted, result) in topic.partitions.iter().zip(results) {
            let answer = DeleteRecordsPartitionResult::default()
                .with_partition_index(wanted.partition_index);
            let outcome = match result {
                Ok(moved) => settle(ctx, &moved, deadline).await,
                Err(code) => Err(code),
            };
            partitions.push(match outcome {
                Ok(low_watermark) => answer.with_low_watermark(low_watermark),
                Err(code) => answer.with_low_watermark(-1).with_error_code(code.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Checks the request for one partition and moves its local log start (durably).
fn move_log_start(
    ctx: &Context,
    topic: &str,
    index: i32,
    offset: i64,
) -> Result<Moved, ResponseError> {
    if INTERNAL_TOPICS.contains(&topic) {
        return Err(ResponseError::InvalidTopicException);
    }
    let partition = ctx
        .manager
        .leader_partition(topic, index)
        .map_err(|e| e.code())?;
    let high_watermark = partition.high_watermark();
    let offset = if offset == HIGH_WATERMARK {
        high_watermark
    } else {
        offset
    };
    if !(0..=high_watermark).contains(&offset) {
        return Err(ResponseError::OffsetOutOfRange);
    }
    let tiered = partition.is_tiered().map_err(|e| e.code())?;
    let current = ctx
        .lake
        .log_start_offset(topic, index, partition.log_start_offset());
    if offset <= current {
        // Never backwards; the answer still waits until the replicas or the lake have it.
        return Ok(Moved {
            partition,
            offset,
            tiered,
        });
    }
    if tiered {
        // Recorded before the local start moves (see `LakeView::request_log_start`).
        ctx.lake.request_log_start(topic, index, offset);
    }
    off_the_workers(|| partition.delete_records_before(offset)).map_err(|e| {
        tracing::warn!(topic, partition = index, offset, error = %e, "DeleteRecords failed");
        e.code()
    })?;
    tracing::info!(
        topic,
        partition = index,
        offset,
        "DeleteRecords moved the log start"
    );
    Ok(Moved {
        partition,
        offset,
        tiered,
    })
}

/// Waits until the move is complete: in the lake's manifest (tiered) or on every in-sync
/// replica. Returns the partition's log start as consumers now see it.
async fn settle(ctx: &Context, moved: &Moved, deadline: Instant) -> Result<i64, ResponseError> {
    let Moved {
        partition,
        offset,
        tiered,
    } = moved;
    let (topic, index) = (partition.topic(), partition.index());
    let done = if *tiered {
        ctx.lake
            .wait_log_start(topic, index, *offset, deadline)
            .await
    } else {
        wait_low_watermark(partition, *offset, deadline).await?
    };
    if !done {
        return Err(ResponseError::RequestTimedOut);
    }
    Ok(ctx
        .lake
        .log_start_offset(topic, index, partition.log_start_offset()))
}

/// Waits until every in-sync replica's log start reached `offset` (Kafka's low watermark);
/// `Ok(false)` at the deadline.
async fn wait_low_watermark(
    partition: &Partition,
    offset: i64,
    deadline: Instant,
) -> Result<bool, ResponseError> {
    loop {
        if !partition.is_leader() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if partition.low_watermark() >= offset {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(LOW_WATERMARK_POLL.min(deadline - Instant::now())).await;
    }
}
