//! Metadata: brokers, topics and partitions, auto-creating requested topics when allowed. In a
//! cluster the internal `__consumer_offsets` and `__transaction_state` are listed only when asked
//! for by name, marked internal, and never auto-created by a request (the brokers create them).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{Context, now_ms, str_bytes};
use crate::manager::Topic;
use crate::security::acl::{Access, AclOperation, CLUSTER_NAME, ResourceType};

/// `topic_authorized_operations` when not requested (Kafka's INT32_MIN sentinel).
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub(super) fn handle(
    ctx: &Context,
    listener: &str,
    access: &Access,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let operations = Operations {
        topics: version >= 8 && request.include_topic_authorized_operations,
        cluster: (8..=10).contains(&version) && request.include_cluster_authorized_operations,
    };
    let (live, controller) = ctx.live_brokers(listener);
    let brokers = live
        .into_iter()
        .map(|(id, host, port, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(port)
                .with_rack(rack.map(str_bytes))
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_controller_id(BrokerId(controller));
    if version >= 2 {
        response.cluster_id = Some(str_bytes(ctx.manager.cluster_id()));
    }
    // v0: an empty list means every topic; v1+: null means every topic, empty means none.
    let requested = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => topics,
        _ => {
            response.topics = ctx
                .manager
                .topics()
                .iter()
                .filter(|t| !is_internal(ctx, &t.name))
                // Topics the principal may not describe are left out, silently (as Kafka).
                .filter(|t| access.allows(AclOperation::Describe, ResourceType::Topic, &t.name))
                .map(|t| describe_topic(ctx, version, t))
                .collect();
            return operations.fill(access, response);
        }
    };
    let auto_create = version < 4 || request.allow_auto_topic_creation;
    response.topics = requested
        .into_iter()
        .map(|wanted| {
            let topic = match (&wanted.name, version >= 10) {
                (Some(name), _) if !access.check_topic(AclOperation::Describe, name) => {
                    Err(ResponseError::TopicAuthorizationFailed)
                }
                (Some(name), _) => lookup(ctx, access, name, auto_create),
                (None, true) => ctx
                    .manager
                    .topic_by_id(wanted.topic_id)
                    .ok_or(ResponseError::UnknownTopicId)
                    .and_then(|t| {
                        if access.check_topic(AclOperation::Describe, &t.name) {
                            Ok(t)
                        } else {
                            Err(ResponseError::TopicAuthorizationFailed)
                        }
                    }),
                (None, false) => Err(ResponseError::InvalidRequest),
            };
            match topic {
                Ok(topic) => describe_topic(ctx, version, &topic),
                Err(code) => MetadataResponseTopic::default()
                    .with_error_code(code.code())
                    .with_name(wanted.name)
                    .with_topic_id(if version >= 10 {
                        wanted.topic_id
                    } else {
                        Default::default()
                    })
                    .with_topic_authorized_operations(if version >= 8 {
                        OPERATIONS_OMITTED
                    } else {
                        i32::MIN
                    }),
            }
        })
        .collect();
    operations.fill(access, response)
}

/// Which authorized-operations bit sets the request asked for (KIP-430).
struct Operations {
    topics: bool,
    cluster: bool,
}

impl Operations {
    /// Fills in the bit sets asked for: the operations the principal may do on each topic
    /// described, and on the cluster.
    fn fill(&self, access: &Access, mut response: MetadataResponse) -> MetadataResponse {
        if self.topics {
            for topic in response.topics.iter_mut().filter(|t| t.error_code == 0) {
                if let Some(name) = &topic.name {
                    topic.topic_authorized_operations =
                        access.authorized_operations(ResourceType::Topic, name);
                }
            }
        }
        if self.cluster {
            response.cluster_authorized_operations =
                access.authorized_operations(ResourceType::Cluster, CLUSTER_NAME);
        }
        response
    }
}

/// Whether `name` is one of the cluster's internal topics (`__consumer_offsets`,
/// `__transaction_state`).
fn is_internal(ctx: &Context, name: &str) -> bool {
    ctx.manager.cluster().is_some()
        && (name == crate::groups::OFFSETS_TOPIC || name == crate::txn::TXN_TOPIC)
}

/// A requested topic; auto-created when allowed, which needs CREATE on the cluster or the
/// topic (TOPIC_AUTHORIZATION_FAILED otherwise, as Kafka).
fn lookup(
    ctx: &Context,
    access: &Access,
    name: &TopicName,
    auto_create: bool,
) -> Result<Arc<Topic>, ResponseError> {
    let auto_create = auto_create && !is_internal(ctx, name);
    if auto_create
        && !access.is_unrestricted()
        && ctx.manager.config().auto_create_topics()
        && ctx.manager.topic(name).is_none()
        && !access.allows(AclOperation::Create, ResourceType::Cluster, CLUSTER_NAME)
        && !access.check_topic(AclOperation::Create, name)
    {
        return Err(ResponseError::TopicAuthorizationFailed);
    }
    let found = if auto_create {
        ctx.manager.topic_or_auto_create(name, now_ms())
    } else {
        Ok(ctx.manager.topic(name))
    };
    match found {
        Ok(Some(topic)) => Ok(topic),
        Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
        Err(e) => {
            tracing::debug!(topic = %name.as_str(), error = %e, "metadata lookup failed");
            Err(e.code())
        }
    }
}

fn describe_topic(ctx: &Context, version: i16, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(ctx.node_id());
    let cluster_state = ctx.manager.cluster().map(|n| n.state().borrow().clone());
    let replicated = cluster_state
        .as_ref()
        .and_then(|state| state.topics.get(&topic.name))
        .filter(|t| t.topic_id == topic.topic_id);
    let partitions = if let Some(replicated) = replicated {
        let ids = |ids: &[i32]| ids.iter().map(|&i| BrokerId(i)).collect::<Vec<_>>();
        replicated
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let mut partition = MetadataResponsePartition::default()
                    .with_partition_index(index as i32)
                    .with_leader_id(BrokerId(p.leader))
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr));
                if p.leader < 0 {
                    partition.error_code = ResponseError::LeaderNotAvailable.code();
                }
                if version >= 7 {
                    partition.leader_epoch = p.leader_epoch;
                }
                if version >= 5 {
                    partition.offline_replicas = cluster_state
                        .as_ref()
                        .map(|s| {
                            p.replicas
                                .iter()
                                .filter(|r| s.brokers.get(r).is_none_or(|b| b.fenced))
                                .map(|&r| BrokerId(r))
                                .collect()
                        })
                        .unwrap_or_default();
                }
                partition
            })
            .collect()
    } else {
        topic
            .partitions
            .iter()
            .map(|p| {
                let mut partition = MetadataResponsePartition::default()
                    .with_partition_index(p.index())
                    .with_leader_id(node)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node]);
                if version >= 7 {
                    partition.leader_epoch = p.leader_epoch();
                }
                partition
            })
            .collect()
    };
    let mut described = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_partitions(partitions);
    if version >= 1 {
        described.is_internal = is_internal(ctx, &topic.name);
    }
    if version >= 10 {
        described.topic_id = topic.topic_id;
    }
    described
}
