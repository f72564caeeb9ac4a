//! TxnOffsetCommit (API 28): the offsets a transactional producer commits in its transaction
//! (`sendOffsetsToTransaction`), sent to the group's coordinator. They are written to the offsets
//! log as a transactional batch of the producer and stay pending (OffsetFetch answers the last
//! committed offset, or UNSTABLE_OFFSET_COMMIT when it requires stable offsets) until the
//! transaction's marker commits or aborts them. Answered once the batch is durable, with a code
//! per partition.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use strata_coordinator::store::CommittedOffset;
use strata_coordinator::{Durable, TxnOffsetCommit};

use super::{Context, now_ms};
use crate::groups::txn_error_code;
use crate::security::acl::{Access, AclOperation};

/// A commit written and not yet answered.
pub(super) struct Pending {
    response: TxnOffsetCommitResponse,
    /// Resolves once the written offsets are durable; `None` when nothing was written.
    durable: Option<Durable>,
}

/// Answers once the offsets are durable; if they cannot be made durable (the coordinator moved,
/// the replicas did not confirm in time), the offsets that were accepted get that error instead.
pub(super) async fn finish(pending: Pending) -> TxnOffsetCommitResponse {
    let Pending {
        mut response,
        durable,
    } = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        tracing::debug!(error = %e, "transactional offsets not made durable");
        let code = txn_error_code(&e).code();
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

/// Needs WRITE on the transactional id and READ on the group (else every partition gets that
/// error) and READ on each topic (TOPIC_AUTHORIZATION_FAILED, not written).
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> Pending {
    let now = now_ms();
    let refused = if !access.check_txn(AclOperation::Write, &request.transactional_id) {
        Err(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !access.check_group(AclOperation::Read, &request.group_id) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        Ok(())
    };
    // Partitions of unknown topics are answered UNKNOWN_TOPIC_OR_PARTITION and not written;
    // those of topics the principal may not read TOPIC_AUTHORIZATION_FAILED.
    let mut offsets = Vec::new();
    let mut unknown = Vec::new();
    for topic in request.topics.iter().filter(|_| refused.is_ok()) {
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
                leader_epoch: if version >= 2 {
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
    let commit = TxnOffsetCommit {
        transactional_id: request.transactional_id.to_string(),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        generation_id: request.generation_id,
        offsets,
    };
    let outcome = refused
        .and_then(|()| ctx.coordinator(&request.group_id))
        .and_then(|coordinator| {
            coordinator
                .commit_transactional(&request.group_id, commit, now)
                .map_err(|e| txn_error_code(&e))
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
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code_of(&topic.name, p.partition_index))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    Pending {
        response: TxnOffsetCommitResponse::default().with_topics(topics),
        durable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, ProducerId, TopicName, TransactionalId};

    use crate::handler::str_bytes;
    use crate::handler::tests::context;

    fn request(partitions: &[(&str, i32, i64)]) -> TxnOffsetCommitRequest {
        let topics = partitions
            .iter()
            .map(|&(topic, partition, offset)| {
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes(topic)))
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset),
                    ])
            })
            .collect();
        TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(str_bytes("tx")))
            .with_group_id(GroupId(str_bytes("g")))
            .with_producer_id(ProducerId(4))
            .with_producer_epoch(0)
            .with_topics(topics)
    }

    fn codes(response: &TxnOffsetCommitResponse) -> Vec<i16> {
        response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    #[tokio::test]
    async fn offsets_stay_pending_until_the_marker_and_unknown_topics_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let session = crate::handler::tests::session();
        let access = ctx.acl.access(&session);
        ctx.manager
            .create_topic("t", 1, 1, Default::default(), false, 0)
            .unwrap();
        let pending = start(&ctx, &access, 3, request(&[("t", 0, 42), ("nope", 0, 1)]));
        let response = finish(pending).await;
        assert_eq!(
            codes(&response),
            vec![0, ResponseError::UnknownTopicOrPartition.code()]
        );
        let coordinator = ctx.coordinator("g").unwrap();
        let wanted = || Some(vec![("t".to_string(), vec![0])]);
        let found = coordinator.fetch_offsets("g", wanted(), true);
        assert_eq!(found[0].2, Err(ResponseError::UnstableOffsetCommit));
        assert_eq!(
            coordinator.fetch_offsets("g", wanted(), false)[0].2,
            Ok(None)
        );

        let durable = ctx
            .groups
            .complete_transaction(&ctx.manager, 0, 4, 0, true, 0)
            .unwrap();
        durable.await.unwrap();
        let found = coordinator.fetch_offsets("g", wanted(), true);
        assert_eq!(found[0].2.as_ref().unwrap().as_ref().unwrap().offset, 42);

        // A zombie (the producer's epoch was bumped by an abort) is fenced.
        let abort = ctx
            .groups
            .complete_transaction(&ctx.manager, 0, 4, 1, false, 0)
            .unwrap();
        abort.await.unwrap();
        let response = finish(start(&ctx, &access, 3, request(&[("t", 0, 43)]))).await;
        assert_eq!(
            codes(&response),
            vec![ResponseError::InvalidProducerEpoch.code()]
        );
        assert!(matches!(
            ctx.groups
                .complete_transaction(&ctx.manager, 0, 4, 0, true, 0),
            Err(ResponseError::InvalidProducerEpoch)
        ));
    }
}
