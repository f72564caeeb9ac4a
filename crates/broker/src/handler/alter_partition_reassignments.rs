//! AlterPartitionReassignments (API 45, KIP-455), as `kafka-reassign-partitions.sh --execute`
//! and `--cancel` send it: each partition's target replicas (or `null` to cancel the
//! reassignment in progress) committed through the controller. The reassignment itself moves on
//! without the client: the brokers added fetch the partition, and the ISR change that brings the
//! last of them in sync completes it (`strata_cluster::state::reassignment`).
//!
//! A single broker holds every replica: the only target it accepts is itself, which moves
//! nothing.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};
use strata_cluster::Command;
use tokio::time::Instant;

use super::{Context, str_bytes};

/// Bounds the request's `timeout_ms`: a client's wish, not a reason to hold a request forever.
const TIMEOUT_MS_MAX: i32 = 5 * 60 * 1000;

pub(super) async fn handle(
    ctx: &Context,
    authorized: bool,
    version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    if !authorized {
        // ALTER on the cluster, checked before the request runs apart.
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("reassignments need ALTER on the cluster")));
    }
    // v0 has no such field: any replica count was allowed.
    let allow_replication_factor_change = version == 0 || request.allow_replication_factor_change;
    let deadline =
        Instant::now() + Duration::from_millis(request.timeout_ms.clamp(0, TIMEOUT_MS_MAX) as u64);
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let target: Option<Vec<i32>> = p.replicas.map(|r| r.iter().map(|b| b.0).collect());
            let result = ReassignablePartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_error_message(None);
            let outcome = if ctx.manager.cluster().is_some() {
                let command = Command::AlterPartitionReassignment {
                    topic: topic.name.to_string(),
                    partition: p.partition_index,
                    target,
                    allow_replication_factor_change,
                };
                alter(ctx, command, deadline).await
            } else {
                alter_single(ctx, &topic.name, p.partition_index, target.as_deref())
            };
            partitions.push(match outcome {
                Ok(()) => result,
                Err((error, text)) => result
                    .with_error_code(error.code())
                    .with_error_message(Some(str_bytes(text))),
            });
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    let mut response = AlterPartitionReassignmentsResponse::default()
        .with_error_message(None)
        .with_responses(responses);
    if version >= 1 {
        response.allow_replication_factor_change = allow_replication_factor_change;
    }
    response
}

async fn alter(
    ctx: &Context,
    command: Command,
    deadline: Instant,
) -> Result<(), (ResponseError, String)> {
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        return Err((
            ResponseError::RequestTimedOut,
            "the request's timeout passed before this partition's turn".into(),
        ));
    };
    match ctx.manager.commit(command, left).await {
        Ok(_) => Ok(()),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// A single broker: the partition must exist, and the target can only be this broker.
fn alter_single(
    ctx: &Context,
    topic: &str,
    partition: i32,
    target: Option<&[i32]>,
) -> Result<(), (ResponseError, String)> {
    let at = format!("{topic}-{partition}");
    if !ctx.manager.partition_exists(topic, partition) {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("no partition {at}"),
        ));
    }
    let me = ctx.node_id();
    match target {
        None => Err((
            ResponseError::NoReassignmentInProgress,
            format!("{at}: no reassignment is in progress"),
        )),
        Some(target) if target == [me] => Ok(()),
        Some(target) => Err((
            ResponseError::InvalidReplicaAssignment,
            format!(
                "{at}: target {target:?}, but a single broker holds every replica: only [{me}] \
                 is possible"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };

    use super::*;

    #[tokio::test]
    async fn a_single_broker_can_only_keep_its_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::handler::tests::context(dir.path());
        ctx.manager
            .create_topic("t", 1, 1, Default::default(), false, 0)
            .unwrap();
        let me = ctx.node_id();
        let partition = |index: i32, target: Option<Vec<i32>>| {
            ReassignablePartition::default()
                .with_partition_index(index)
                .with_replicas(target.map(|t| t.into_iter().map(BrokerId).collect()))
        };
        let topic = |name: &str, partitions| {
            ReassignableTopic::default()
                .with_name(str_bytes(name).into())
                .with_partitions(partitions)
        };
        let request = AlterPartitionReassignmentsRequest::default().with_topics(vec![
            topic(
                "t",
                vec![
                    partition(0, Some(vec![me])),
                    partition(0, Some(vec![me + 1])),
                    partition(0, Some(vec![])),
                    partition(0, None),
                    partition(3, Some(vec![me])),
                ],
            ),
            topic("nope", vec![partition(0, Some(vec![me]))]),
        ]);
        let response = handle(&ctx, true, 1, request).await;
        assert!(response.allow_replication_factor_change);
        let codes: Vec<Vec<i16>> = response
            .responses
            .iter()
            .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
            .collect();
        use ResponseError as E;
        assert_eq!(
            codes,
            vec![
                vec![
                    0,
                    E::InvalidReplicaAssignment.code(),
                    E::InvalidReplicaAssignment.code(),
                    E::NoReassignmentInProgress.code(),
                    E::UnknownTopicOrPartition.code(),
                ],
                vec![E::UnknownTopicOrPartition.code()],
            ]
        );
        assert!(response.responses[0].partitions[0].error_message.is_none());
    }
}
