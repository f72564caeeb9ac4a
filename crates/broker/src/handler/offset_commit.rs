//! OffsetCommit: a group's progress, stored before the answer, which waits until the store is
//! durable (in a cluster: every in-sync replica of the group's offsets partition has it).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use strata_coordinator::Durable;
use strata_coordinator::store::CommittedOffset;

use super::{Context, now_ms};
use crate::error::coordinator_error_code;
use crate::security::acl::{Access, AclOperation};

/// A commit stored and not yet answered.
pub(super) struct Pending {
    response: OffsetCommitResponse,
    /// Resolves once the stored offsets are durable; `None` when nothing was stored.
    durable: Option<Durable>,
}

/// Answers once the offsets are durable; if they cannot be made durable (the coordinator moved,
/// the replicas did not confirm in time), the offsets that were accepted get that error instead.
pub(super) async fn finish(pending: Pending) -> OffsetCommitResponse {
    let Pending {
        mut response,
        durable,
    } = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        tracing::debug!(error = %e, "committed offsets not made durable");
        let code = coordinator_error_code(&e).code();
        for p in response
            .topics
            .iter_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            if p.error_code == 0 {
                p.error_code = code;
            }
        }
    }
    response
}

/// Needs READ on the group (else every partition answers GROUP_AUTHORIZATION_FAILED) and on
/// each topic (TOPIC_AUTHORIZATION_FAILED, not stored).
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: OffsetCommitRequest,
) -> Pending {
    let now = now_ms();
    let group_refused = !access.check_group(AclOperation::Read, &request.group_id);
    // Partitions of unknown topics are answered UNKNOWN_TOPIC_OR_PARTITION and not stored;
    // those of topics the principal may not read TOPIC_AUTHORIZATION_FAILED.
    let mut offsets = Vec::new();
    let mut unknown = Vec::new();
    for topic in request.topics.iter().filter(|_| !group_refused) {
        let readable = access.check_topic(AclOperation::Read, &topic.name);
        for p in &topic.partitions {
            if !readable {
                let code = ResponseError::TopicAuthorizationFailed;
                unknown.push((topic.name.to_string(), p.partition_index, code));
                continue;
            }
            if !ctx.manager.partition_exists(&topic.name, p.partition_index) {
                let code = ResponseError::UnknownTopicOrPartition;
                unknown.push((topic.name.to_string(), p.partition_index, code));
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
    let authorized = if group_refused {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        Ok(())
    };
    let outcome = authorized
        .and_then(|()| ctx.coordinator(&request.group_id))
        .and_then(|coordinator| {
            coordinator
                .commit(
                    &request.group_id,
                    &request.member_id,
                    instance.as_deref(),
                    request.generation_id_or_member_epoch,
                    offsets,
                    now,
                )
                .map_err(|e| coordinator_error_code(&e))
        });
    let (outcome, durable) = match outcome {
        Ok((codes, durable)) => (Ok(codes), Some(durable)),
        Err(code) => (Err(code), None),
    };
    let code_of = |topic: &str, partition: i32| -> i16 {
        if let Some((_, _, code)) = unknown
            .iter()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            return code.code();
        }
        match &outcome {
            Err(code) => code.code(),
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
    Pending {
        response: OffsetCommitResponse::default().with_topics(topics),
        durable,
    }
}
