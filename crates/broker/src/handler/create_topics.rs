//! CreateTopics: new topics with partition counts and config overrides.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{Context, message, now_ms, str_bytes};
use crate::error::{Error, Result};
use crate::security::acl::{Access, AclOperation, CLUSTER_NAME, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    // CREATE on the cluster creates any topic; else CREATE on each topic is needed.
    let any_topic = access.allows(AclOperation::Create, ResourceType::Cluster, CLUSTER_NAME);
    let mut seen = HashSet::new();
    let duplicates: HashSet<_> = request
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.clone()))
        .map(|t| t.name.clone())
        .collect();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.clone();
            let result = CreatableTopicResult::default().with_name(topic.name.clone());
            let outcome = if duplicates.contains(&topic.name) {
                Err(Error::InvalidRequest {
                    code: ResponseError::InvalidRequest,
                    message: format!(
                        "topic {} appears more than once in the request",
                        topic.name.as_str()
                    ),
                })
            } else if !any_topic && !access.check_topic(AclOperation::Create, &topic.name) {
                Err(Error::InvalidRequest {
                    code: ResponseError::TopicAuthorizationFailed,
                    message: "CreateTopics needs CREATE on the cluster or the topic".to_string(),
                })
            } else {
                create(ctx, topic, request.validate_only)
            };
            match outcome {
                Ok(created) => {
                    let mut result = result;
                    if version >= 5 {
                        result.num_partitions = created.partitions;
                        result.replication_factor = created.replication_factor;
                        // The configs only with DESCRIBE_CONFIGS on the topic (as Kafka).
                        if access.allows(AclOperation::DescribeConfigs, ResourceType::Topic, &name)
                        {
                            result.configs = Some(created.configs);
                        } else {
                            result.topic_config_error_code =
                                ResponseError::TopicAuthorizationFailed.code();
                        }
                    }
                    if version >= 7 {
                        result.topic_id = created.topic_id;
                    }
                    result
                }
                Err(e) => {
                    let mut result = result.with_error_code(e.code().code());
                    if version >= 1 {
                        result.error_message = message(&e);
                    }
                    result
                }
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

struct Created {
    partitions: i32,
    replication_factor: i16,
    topic_id: uuid::Uuid,
    configs: Vec<CreatableTopicConfigs>,
}

fn create(ctx: &Context, topic: CreatableTopic, validate_only: bool) -> Result<Created> {
    let overrides: BTreeMap<String, String> = topic
        .configs
        .iter()
        .filter_map(|c| {
            c.value
                .as_ref()
                .map(|v| (c.name.to_string(), v.to_string()))
        })
        .collect();
    let created = if topic.assignments.is_empty() {
        ctx.manager.create_topic(
            &topic.name,
            topic.num_partitions,
            topic.replication_factor,
            overrides,
            validate_only,
            now_ms(),
        )?
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(Error::InvalidRequest {
                code: ResponseError::InvalidRequest,
                message: "give either replica assignments or a partition count and replication \
                          factor (-1), not both"
                    .to_string(),
            });
        }
        let mut assignments = topic.assignments.clone();
        assignments.sort_by_key(|a| a.partition_index);
        if assignments
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition_index != i as i32)
        {
            return Err(Error::InvalidRequest {
                code: ResponseError::InvalidReplicaAssignment,
                message: "replica assignments must cover partitions 0..n, each once".to_string(),
            });
        }
        let replicas = assignments
            .iter()
            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
            .collect();
        ctx.manager.create_topic_assigned(
            &topic.name,
            replicas,
            overrides,
            validate_only,
            now_ms(),
        )?
    };
    let configs = super::describe_configs::topic_entries(ctx, &created, None)
        .into_iter()
        .map(|e| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(e.name))
                .with_value(Some(str_bytes(e.value)))
                .with_config_source(e.source)
        })
        .collect();
    let replication_factor = ctx
        .manager
        .cluster()
        .and_then(|n| {
            n.state()
                .borrow()
                .topics
                .get(topic.name.as_str())
                .and_then(|t| t.partitions.first().map(|p| p.replicas.len() as i16))
        })
        .unwrap_or(1);
    Ok(Created {
        partitions: created.partition_count,
        replication_factor,
        topic_id: created.topic_id,
        configs,
    })
}
