//! DescribeConfigs: a topic's effective configs with their sources, or the broker's settings.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Context, str_bytes};
use crate::config::{ConfigType, TOPIC_CONFIGS};
use crate::manager::Topic;
use crate::security::acl::{Access, AclOperation};

/// Kafka's config resource types.
pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// One described config.
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) source: i8,
    kind: ConfigType,
    read_only: bool,
    /// `(name, value, source)` of the broker setting behind a topic config.
    synonym: Option<(String, String, i8)>,
}

/// The error a config resource gets when the principal may not do `operation`
/// (DESCRIBE_CONFIGS or ALTER_CONFIGS) on it: on the topic, or on the cluster for a broker's
/// settings (Kafka's broker and broker-logger resources).
pub(super) fn configs_refused(
    access: &Access,
    operation: AclOperation,
    resource_type: i8,
    name: &str,
) -> Option<(ResponseError, StrBytes)> {
    let (allowed, code) = match resource_type {
        RESOURCE_TOPIC => (
            access.check_topic(operation, name),
            ResponseError::TopicAuthorizationFailed,
        ),
        _ => (
            access.check_cluster(operation),
            ResponseError::ClusterAuthorizationFailed,
        ),
    };
    (!allowed).then(|| (code, str_bytes(format!("{operation} is needed"))))
}

/// A topic's configs, filtered by `keys` when given.
pub(crate) fn topic_entries(ctx: &Context, topic: &Topic, keys: Option<&[StrBytes]>) -> Vec<Entry> {
    let broker = ctx.manager.config();
    TOPIC_CONFIGS
        .iter()
        .filter(|d| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == d.name)))
        .map(|d| {
            let broker_source = if broker.is_set(d.broker_name) {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            };
            let source = if topic.overrides.contains_key(d.name) {
                SOURCE_TOPIC
            } else {
                broker_source
            };
            Entry {
                name: d.name.to_string(),
                value: topic.config.get(d.name).to_string(),
                source,
                kind: d.kind,
                read_only: false,
                synonym: Some((
                    d.broker_name.to_string(),
                    broker.setting(d.broker_name),
                    broker_source,
                )),
            }
        })
        .collect()
}

fn broker_entries(ctx: &Context, keys: Option<&[StrBytes]>) -> Vec<Entry> {
    ctx.manager
        .config()
        .all_settings()
        .into_iter()
        .filter(|(name, _, _)| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == name)))
        .map(|(name, value, set)| Entry {
            kind: broker_kind(&name),
            name,
            value,
            source: if set {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            },
            read_only: true,
            synonym: None,
        })
        .collect()
}

fn broker_kind(name: &str) -> ConfigType {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.broker_name == name)
        .map(|d| d.kind)
        .unwrap_or(ConfigType::Long(i64::MIN))
}

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let keys = resource.configuration_keys.as_deref();
            if let Some((code, why)) = configs_refused(
                access,
                AclOperation::DescribeConfigs,
                resource.resource_type,
                &resource.resource_name,
            ) {
                return result
                    .with_error_code(code.code())
                    .with_error_message(Some(why));
            }
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => match ctx.manager.topic(&resource.resource_name) {
                    Some(topic) => topic_entries(ctx, &topic, keys),
                    None => {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!("unknown topic {}", resource.resource_name.as_str()))));
                    }
                },
                RESOURCE_BROKER
                    if resource.resource_name.is_empty() || resource.resource_name.as_str() == ctx.node_id().to_string() =>
                {
                    broker_entries(ctx, keys)
                }
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(format!(
                            "config resource type {other} named {:?} is not described by this broker",
                            resource.resource_name.as_str()
                        ))));
                }
            };
            let configs = entries
                .into_iter()
                .map(|e| describe_entry(version, request.include_synonyms, e))
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_entry(version: i16, include_synonyms: bool, e: Entry) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(e.name.clone()))
        .with_value(Some(str_bytes(e.value.clone())))
        .with_read_only(e.read_only)
        .with_config_source(e.source);
    if include_synonyms {
        let mut synonyms = Vec::new();
        if e.source == SOURCE_TOPIC {
            synonyms.push(synonym(&e.name, &e.value, SOURCE_TOPIC));
        }
        if let Some((name, value, source)) = &e.synonym {
            synonyms.push(synonym(name, value, *source));
        }
        result.synonyms = synonyms;
    }
    if version >= 3 {
        result.config_type = e.kind.kafka_code();
    }
    result
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_source(source)
}
