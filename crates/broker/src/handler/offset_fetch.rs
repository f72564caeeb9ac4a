//! OffsetFetch: committed offsets of one group (v1-v7) or of several (v8+), from the group's
//! coordinator (NOT_COORDINATOR and the like when it is not this broker). With `require_stable`
//! (v7+), a partition whose transaction's offset is pending gets UNSTABLE_OFFSET_COMMIT.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_coordinator::PartitionOffsets;

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation, ResourceType};

/// Needs DESCRIBE on each group and on each topic: a topic asked for by name that may not be
/// described answers TOPIC_AUTHORIZATION_FAILED, and is left out of an "every topic" answer.
pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let require_stable = version >= 7 && request.require_stable;
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                if !access.check_group(AclOperation::Describe, &g.group_id) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(ResponseError::GroupAuthorizationFailed.code());
                }
                let every_topic = wanted.is_none();
                let found = match ctx.coordinator(&g.group_id) {
                    Ok(coordinator) => describable(
                        access,
                        every_topic,
                        coordinator.fetch_offsets(&g.group_id, wanted, require_stable),
                    ),
                    Err(code) => {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(code.code());
                    }
                };
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(grouped(found, |name, partitions| {
                        OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(p, offset, epoch, metadata, error)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(metadata))
                                            .with_error_code(error)
                                    })
                                    .collect(),
                            )
                    }))
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    if !access.check_group(AclOperation::Describe, &request.group_id) {
        return refused(version, ResponseError::GroupAuthorizationFailed, wanted);
    }
    let coordinator = match ctx.coordinator(&request.group_id) {
        Ok(coordinator) => coordinator,
        Err(code) => return refused(version, code, wanted),
    };
    let every_topic = wanted.is_none();
    let found = describable(
        access,
        every_topic,
        coordinator.fetch_offsets(&request.group_id, wanted, require_stable),
    );
    let topics = grouped(found, |name, partitions| {
        OffsetFetchResponseTopic::default()
            .with_name(name)
            .with_partitions(
                partitions
                    .into_iter()
                    .map(|(p, offset, epoch, metadata, error)| {
                        let mut partition = OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_metadata(Some(metadata))
                            .with_error_code(error);
                        if version >= 5 {
                            partition.committed_leader_epoch = epoch;
                        }
                        partition
                    })
                    .collect(),
            )
    });
    OffsetFetchResponse::default().with_topics(topics)
}

/// The answer when this broker does not coordinate the group: the group-level error from v2,
/// and each requested partition's error for v1, which has no group-level one.
fn refused(
    version: i16,
    code: ResponseError,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> OffsetFetchResponse {
    if version >= 2 {
        return OffsetFetchResponse::default().with_error_code(code.code());
    }
    let topics = wanted
        .unwrap_or_default()
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(-1)
                                .with_metadata(Some(str_bytes("")))
                                .with_error_code(code.code())
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// The offsets of topics the principal may describe: others answer TOPIC_AUTHORIZATION_FAILED
/// when asked for by name, and are left out of an answer about every topic.
fn describable(access: &Access, every_topic: bool, found: PartitionOffsets) -> PartitionOffsets {
    if access.is_unrestricted() {
        return found;
    }
    // Rows come grouped by topic: one check (and at most one audit line) per topic.
    let mut last: Option<(String, bool)> = None;
    found
        .into_iter()
        .filter_map(|(topic, partition, offset)| {
            let allowed = match &last {
                Some((name, allowed)) if *name == topic => *allowed,
                _ => {
                    let allowed = if every_topic {
                        access.allows(AclOperation::Describe, ResourceType::Topic, &topic)
                    } else {
                        access.check_topic(AclOperation::Describe, &topic)
                    };
                    last = Some((topic.clone(), allowed));
                    allowed
                }
            };
            match (allowed, every_topic) {
                (true, _) => Some((topic, partition, offset)),
                (false, true) => None,
                (false, false) => Some((
                    topic,
                    partition,
                    Err(ResponseError::TopicAuthorizationFailed),
                )),
            }
        })
        .collect()
}

/// `(partition, committed offset, leader epoch, metadata, error code)`.
type Row = (i32, i64, i32, StrBytes, i16);

/// Groups partitions by topic, in first-seen order; a missing offset is -1 with empty metadata,
/// as is one answered with an error.
fn grouped<T>(found: PartitionOffsets, make: impl Fn(TopicName, Vec<Row>) -> T) -> Vec<T> {
    let mut topics: Vec<(String, Vec<Row>)> = Vec::new();
    for (topic, partition, found) in found {
        let (offset, error) = match found {
            Ok(offset) => (offset, 0),
            Err(code) => (None, code.code()),
        };
        let entry = (
            partition,
            offset.as_ref().map_or(-1, |o| o.offset),
            offset.as_ref().map_or(-1, |o| o.leader_epoch),
            str_bytes(offset.map(|o| o.metadata).unwrap_or_default()),
            error,
        );
        match topics.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push(entry),
            None => topics.push((topic, vec![entry])),
        }
    }
    topics
        .into_iter()
        .map(|(t, ps)| make(TopicName(str_bytes(t)), ps))
        .collect()
}
