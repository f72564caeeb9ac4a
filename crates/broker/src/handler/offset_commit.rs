//! OffsetCommit: a group's progress, stored durably before the answer.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use strata_coordinator::store::CommittedOffset;

use super::{Context, now_ms};
use crate::error::coordinator_error_code;

pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let now = now_ms();
    // Partitions of unknown topics are answered UNKNOWN_TOPIC_OR_PARTITION and not stored.
    let mut offsets = Vec::new();
    let mut unknown = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            if !ctx.manager.partition_exists(&topic.name, p.partition_index) {
                unknown.push((topic.name.to_string(), p.partition_index));
                continue;
            }
            let committed = CommittedOffset {
                offset: p.committed_offset,
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                commit_timestamp_ms: now,
            };
            offsets.push((topic.name.to_string(), p.partition_index, committed));
        }
    }
    let keys: Vec<(String, i32)> = offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let outcome = ctx.coordinator.commit(
        &request.group_id,
        &request.member_id,
        instance.as_deref(),
        request.generation_id_or_member_epoch,
        offsets,
        now,
    );
    let code_of = |topic: &str, partition: i32| -> i16 {
        if unknown.iter().any(|(t, p)| t == topic && *p == partition) {
            return ResponseError::UnknownTopicOrPartition.code();
        }
        match &outcome {
            Err(e) => coordinator_error_code(e).code(),
            Ok(codes) => keys
                .iter()
                .position(|(t, p)| t == topic && *p == partition)
                .map_or(0, |i| codes[i]),
        }
    };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code_of(&topic.name, p.partition_index))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
