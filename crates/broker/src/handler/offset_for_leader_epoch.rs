//! OffsetForLeaderEpoch (API 23): where a leader epoch ended in this leader's log, so that a
//! returning replica truncates what the leader never had (KIP-101, KIP-279).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::Context;
use crate::security::acl::{Access, AclOperation, CLUSTER_NAME, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    // Followers (CLUSTER_ACTION on the cluster) ask about any topic; consumers checking for
    // truncation (KIP-320) need DESCRIBE on the topic.
    let any_topic = access.allows(
        AclOperation::ClusterAction,
        ResourceType::Cluster,
        CLUSTER_NAME,
    );
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let refused = !any_topic && !access.check_topic(AclOperation::Describe, &topic.topic);
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    if refused {
                        return EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1)
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    }
                    answer(
                        ctx,
                        &topic.topic,
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    )
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

fn answer(
    ctx: &Context,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> EpochEndOffset {
    let result = EpochEndOffset::default()
        .with_partition(index)
        .with_leader_epoch(-1)
        .with_end_offset(-1);
    let partition = match ctx.manager.leader_partition(topic, index) {
        Ok(p) => p,
        Err(e) => return result.with_error_code(e.code().code()),
    };
    let epoch = partition.leader_epoch();
    if current_leader_epoch >= 0 && current_leader_epoch != epoch {
        let code = if current_leader_epoch < epoch {
            ResponseError::FencedLeaderEpoch
        } else {
            ResponseError::UnknownLeaderEpoch
        };
        return result.with_error_code(code.code());
    }
    match partition.end_offset_for_epoch(leader_epoch) {
        Ok(Some((found, end))) => result.with_leader_epoch(found).with_end_offset(end),
        // Every epoch this log knows is newer: UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
        Ok(None) => result,
        Err(e) => result.with_error_code(e.code().code()),
    }
}
