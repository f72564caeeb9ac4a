//! ElectLeaders (API 43), as `kafka-leader-election.sh` sends it.
//!
//! - PREFERRED (election type 0, and every v0 request): leadership moves to the partition's first
//!   replica when it is alive and in the ISR, committed through the controller
//!   (`Command::ElectPreferredLeader`, the same command the automatic leader rebalance uses);
//!   ELECTION_NOT_NEEDED when it leads already, PREFERRED_LEADER_NOT_AVAILABLE when it cannot.
//! - UNCLEAN (1): refused, as `unclean.leader.election.enable` only accepts `false`. A partition
//!   with a leader needs no election (ELECTION_NOT_NEEDED); an offline one has no in-sync replica
//!   alive (one that returns leads again at once, see `ClusterState::apply`), so
//!   ELIGIBLE_LEADERS_NOT_AVAILABLE.
//!
//! Without a partition list every partition is tried, and, as Kafka does, those that needed no
//! election are left out of the answer. A single broker leads every partition: nothing to elect.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use strata_cluster::{ClusterState, Command, NO_LEADER};
use tokio::time::Instant;

use super::{Context, str_bytes};

/// Election types of the request.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// Bounds the request's `timeout_ms`: a client's wish, not a reason to hold a request forever.
const TIMEOUT_MS_MAX: i32 = 5 * 60 * 1000;

/// One partition's outcome: elected, or why not.
type Outcome = Result<(), (ResponseError, String)>;

/// Needs ALTER on the cluster (`authorized`, checked before the request runs apart).
pub(super) async fn handle(
    ctx: &Context,
    authorized: bool,
    version: i16,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    if !authorized {
        return refused(version, &request);
    }
    let election_type = request.election_type;
    let all = request.topic_partitions.is_none();
    let wanted: Vec<(String, i32)> = match &request.topic_partitions {
        Some(topics) => topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|&p| (t.topic.to_string(), p)))
            .collect(),
        None => every_partition(ctx),
    };
    let deadline =
        Instant::now() + Duration::from_millis(request.timeout_ms.clamp(0, TIMEOUT_MS_MAX) as u64);
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    for (topic, partition) in wanted {
        let outcome = if election_type != PREFERRED && election_type != UNCLEAN {
            Err((
                ResponseError::InvalidRequest,
                format!("election type {election_type} is neither 0 (preferred) nor 1 (unclean)"),
            ))
        } else {
            elect(ctx, &topic, partition, election_type, deadline).await
        };
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_message(None);
        let result = match outcome {
            Ok(()) => result,
            Err((ResponseError::ElectionNotNeeded, _)) if all => continue,
            Err((error, text)) => result
                .with_error_code(error.code())
                .with_error_message(Some(str_bytes(text))),
        };
        match results.iter_mut().find(|r| r.topic.as_str() == topic) {
            Some(r) => r.partition_result.push(result),
            None => results.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(topic)))
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// The answer without ALTER on the cluster: CLUSTER_AUTHORIZATION_FAILED for the request (v1+)
/// and for each partition asked for.
fn refused(version: i16, request: &ElectLeadersRequest) -> ElectLeadersResponse {
    let code = ResponseError::ClusterAuthorizationFailed.code();
    let results = request
        .topic_partitions
        .iter()
        .flatten()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|&p| {
                    PartitionResult::default()
                        .with_partition_id(p)
                        .with_error_code(code)
                        .with_error_message(None)
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(t.topic.clone())
                .with_partition_result(partitions)
        })
        .collect();
    let mut response = ElectLeadersResponse::default().with_replica_election_results(results);
    if version >= 1 {
        response.error_code = code;
    }
    response
}

/// Every partition of every topic, by topic name then index.
fn every_partition(ctx: &Context) -> Vec<(String, i32)> {
    match ctx.manager.cluster() {
        Some(node) => {
            let state = node.state().borrow().clone();
            state
                .topics
                .iter()
                .flat_map(|(name, t)| (0..t.partitions.len() as i32).map(|p| (name.clone(), p)))
                .collect()
        }
        None => ctx
            .manager
            .topics()
            .iter()
            .flat_map(|t| (0..t.partition_count).map(|p| (t.name.clone(), p)))
            .collect(),
    }
}

async fn elect(
    ctx: &Context,
    topic: &str,
    partition: i32,
    election_type: i8,
    deadline: Instant,
) -> Outcome {
    let Some(node) = ctx.manager.cluster() else {
        return if ctx.manager.partition_exists(topic, partition) {
            Err((
                ResponseError::ElectionNotNeeded,
                format!("a single broker leads {topic}-{partition}"),
            ))
        } else {
            unknown(topic, partition)
        };
    };
    let state = node.state().borrow().clone();
    if let Some(outcome) = decide(&state, topic, partition, election_type) {
        return outcome;
    }
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        return Err((
            ResponseError::RequestTimedOut,
            "the request's timeout passed before this partition's turn".into(),
        ));
    };
    let command = Command::ElectPreferredLeader {
        topic: topic.to_string(),
        partition,
    };
    match ctx.manager.commit(command, left).await {
        Ok(_) => Ok(()),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// The outcome known from the metadata alone, `None` when a preferred election must be
/// committed (the controller decides again on its own, newer state).
fn decide(state: &ClusterState, topic: &str, partition: i32, election_type: i8) -> Option<Outcome> {
    let Some(p) = state.partition(topic, partition) else {
        return Some(unknown(topic, partition));
    };
    let at = format!("{topic}-{partition}");
    if election_type == UNCLEAN {
        return Some(if p.leader != NO_LEADER {
            Err((
                ResponseError::ElectionNotNeeded,
                format!("{at} has a leader, broker {}", p.leader),
            ))
        } else {
            Err((
                ResponseError::EligibleLeadersNotAvailable,
                format!(
                    "{at} has no live in-sync replica (ISR {:?}), and unclean leader election is \
                     disabled (unclean.leader.election.enable=false): it stays offline until one \
                     of them returns",
                    p.isr
                ),
            ))
        });
    }
    let preferred = *p.replicas.first()?;
    if p.leader == preferred {
        return Some(Err((
            ResponseError::ElectionNotNeeded,
            format!("broker {preferred} already leads {at}"),
        )));
    }
    None
}

fn unknown(topic: &str, partition: i32) -> Outcome {
    Err((
        ResponseError::UnknownTopicOrPartition,
        format!("no partition {topic}-{partition}"),
    ))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;

    use super::*;

    /// `(topic, partition, error code)` of each result.
    fn codes(response: &ElectLeadersResponse) -> Vec<(String, i32, i16)> {
        response
            .replica_election_results
            .iter()
            .flat_map(|t| {
                t.partition_result
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_id, p.error_code))
            })
            .collect()
    }

    fn asked(topic: &str, partitions: &[i32]) -> TopicPartitions {
        TopicPartitions::default()
            .with_topic(TopicName(str_bytes(topic)))
            .with_partitions(partitions.to_vec())
    }

    #[tokio::test]
    async fn a_single_broker_leads_every_partition_already() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::handler::tests::context(dir.path());
        ctx.manager
            .create_topic("t", 2, 1, Default::default(), false, 0)
            .unwrap();
        let every = handle(
            &ctx,
            true,
            2,
            ElectLeadersRequest::default().with_topic_partitions(None),
        )
        .await;
        assert_eq!(codes(&every), vec![], "elections not needed are left out");
        let named = ElectLeadersRequest::default()
            .with_topic_partitions(Some(vec![asked("t", &[0, 1, 5]), asked("nope", &[0])]));
        let not_needed = ResponseError::ElectionNotNeeded.code();
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(
            codes(&handle(&ctx, true, 2, named.clone()).await),
            vec![
                ("t".into(), 0, not_needed),
                ("t".into(), 1, not_needed),
                ("t".into(), 5, unknown),
                ("nope".into(), 0, unknown),
            ]
        );
        let unclean = handle(&ctx, true, 2, named.clone().with_election_type(UNCLEAN)).await;
        assert_eq!(codes(&unclean)[0], ("t".into(), 0, not_needed));
        let bad = handle(&ctx, true, 2, named.with_election_type(7)).await;
        let result = &bad.replica_election_results[0].partition_result[0];
        assert_eq!(result.error_code, ResponseError::InvalidRequest.code());
        assert!(
            result
                .error_message
                .as_ref()
                .unwrap()
                .contains("election type 7")
        );
    }
}
