//! ListPartitionReassignments (API 46, KIP-455), as `kafka-reassign-partitions.sh --verify` and
//! `--list` send it: the partitions with a reassignment in progress, each with its replicas (the
//! target followed by the replicas being removed), the replicas being added and those being
//! removed. Partitions named in the request without a reassignment in progress, or unknown, are
//! left out, as Kafka does. A single broker never has one.

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use strata_cluster::{ClusterState, TopicState};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    if !access.check_cluster(AclOperation::Describe) {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(kafka_protocol::ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(None);
    }
    let Some(node) = ctx.manager.cluster() else {
        return ListPartitionReassignmentsResponse::default().with_error_message(None);
    };
    let state = node.state().borrow().clone();
    ListPartitionReassignmentsResponse::default()
        .with_error_message(None)
        .with_topics(ongoing(&state, &request))
}

/// The reassignments in progress that `request` asks for, by topic name then partition.
fn ongoing(
    state: &ClusterState,
    request: &ListPartitionReassignmentsRequest,
) -> Vec<OngoingTopicReassignment> {
    let mut wanted: Vec<(&str, &TopicState, Option<&[i32]>)> = match &request.topics {
        None => state
            .topics
            .iter()
            .map(|(name, t)| (name.as_str(), t, None))
            .collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|w| {
                let (name, t) = state.topics.get_key_value(w.name.as_str())?;
                Some((name.as_str(), t, Some(w.partition_indexes.as_slice())))
            })
            .collect(),
    };
    wanted.sort_by_key(|(name, _, _)| *name);
    wanted.dedup_by_key(|(name, _, _)| *name);
    let ids = |ids: &[i32]| ids.iter().map(|&i| BrokerId(i)).collect::<Vec<_>>();
    wanted
        .into_iter()
        .filter_map(|(name, topic, only)| {
            let partitions: Vec<OngoingPartitionReassignment> = topic
                .partitions
                .iter()
                .enumerate()
                .filter(|(index, p)| {
                    p.is_reassigning() && only.is_none_or(|o| o.contains(&(*index as i32)))
                })
                .map(|(index, p)| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(index as i32)
                        .with_replicas(ids(&p.replicas))
                        .with_adding_replicas(ids(&p.adding_replicas))
                        .with_removing_replicas(ids(&p.removing_replicas))
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(partitions)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    use strata_cluster::{Command, Response};

    use super::*;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let mut apply = |cmd: Command| assert_eq!(state.apply(&cmd), Response::Ok, "{cmd:?}");
        for id in 1..=3 {
            apply(Command::RegisterBroker {
                id,
                host: "h".into(),
                port: 1,
                rack: None,
                listeners: Vec::new(),
            });
        }
        for name in ["a", "b"] {
            apply(Command::CreateTopic {
                name: name.into(),
                topic_id: uuid::Uuid::new_v4(),
                configs: BTreeMap::new(),
                assignments: vec![vec![1, 2], vec![1, 2], vec![2, 1]],
            });
        }
        for (topic, partition) in [("b", 2), ("a", 1)] {
            apply(Command::AlterPartitionReassignment {
                topic: topic.into(),
                partition,
                target: Some(vec![3, 2]),
                allow_replication_factor_change: false,
            });
        }
        state
    }

    /// `(topic, partition, replicas, adding, removing)` of a listed reassignment.
    type Listed = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

    /// `(topic, partition, replicas, adding, removing)` of each listed reassignment.
    fn listed(topics: Option<Vec<ListPartitionReassignmentsTopics>>) -> Vec<Listed> {
        let request = ListPartitionReassignmentsRequest::default().with_topics(topics);
        let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<_>>();
        ongoing(&state(), &request)
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.to_string(),
                        p.partition_index,
                        ids(&p.replicas),
                        ids(&p.adding_replicas),
                        ids(&p.removing_replicas),
                    )
                })
            })
            .collect()
    }

    fn topic(name: &str, partitions: &[i32]) -> ListPartitionReassignmentsTopics {
        ListPartitionReassignmentsTopics::default()
            .with_name(TopicName(str_bytes(name)))
            .with_partition_indexes(partitions.to_vec())
    }

    #[test]
    fn lists_reassignments_in_progress_only() {
        let every = listed(None);
        assert_eq!(
            every,
            vec![
                ("a".into(), 1, vec![3, 2, 1], vec![3], vec![1]),
                ("b".into(), 2, vec![3, 2, 1], vec![3], vec![1]),
            ]
        );
        // Named partitions without one, unknown ones and unknown topics are left out.
        let some = listed(Some(vec![
            topic("b", &[0, 2, 9]),
            topic("nope", &[0]),
            topic("a", &[0]),
        ]));
        assert_eq!(some, vec![("b".into(), 2, vec![3, 2, 1], vec![3], vec![1])]);
    }
}
