//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on a topic's overrides.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter_configs::static_broker_settings;
use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC, configs_refused};
use super::{Context, message};
use crate::error::{Error, Result};
use crate::manager::Topic;
use crate::security::acl::{Access, AclOperation};

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let response = AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            if let Some((code, why)) = configs_refused(
                access,
                AclOperation::AlterConfigs,
                resource.resource_type,
                &resource.resource_name,
            ) {
                return response
                    .with_error_code(code.code())
                    .with_error_message(Some(why));
            }
            let result = match resource.resource_type {
                RESOURCE_TOPIC => match ctx.manager.topic(&resource.resource_name) {
                    Some(topic) => apply(&topic, &resource.configs).and_then(|overrides| {
                        ctx.manager.set_topic_overrides(
                            &topic.name,
                            overrides,
                            request.validate_only,
                        )
                    }),
                    None => Err(Error::UnknownTopic(resource.resource_name.to_string())),
                },
                // No broker setting is ever set dynamically, so deleting dynamic ones deletes
                // nothing: success, as Kafka answers for an unset one. `kafka-reassign-partitions.sh`
                // clears its replication throttles this way after every reassignment.
                RESOURCE_BROKER
                    if resource
                        .configs
                        .iter()
                        .all(|op| op.config_operation == OP_DELETE) =>
                {
                    Ok(())
                }
                RESOURCE_BROKER => Err(static_broker_settings()),
                other => Err(Error::InvalidRequest {
                    code: ResponseError::InvalidRequest,
                    message: format!("config resource type {other} cannot be altered"),
                }),
            };
            match result {
                Ok(()) => response,
                Err(e) => response
                    .with_error_code(e.code().code())
                    .with_error_message(message(&e)),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The overrides after applying `ops` to the topic's current ones.
fn apply(topic: &Topic, ops: &[AlterableConfig]) -> Result<BTreeMap<String, String>> {
    let mut seen = HashSet::new();
    let mut overrides = topic.overrides.clone();
    for op in ops {
        let name = op.name.to_string();
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("config {name} appears more than once")));
        }
        let value = op.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        match op.config_operation {
            OP_SET => {
                overrides.insert(name, value);
            }
            OP_DELETE => {
                overrides.remove(&name);
            }
            OP_APPEND | OP_SUBTRACT => {
                if name != "cleanup.policy" {
                    return Err(Error::InvalidConfig(format!(
                        "{name} is not a list: APPEND and SUBTRACT do not apply"
                    )));
                }
                let mut items: Vec<String> = topic
                    .config
                    .get(&name)
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if op.config_operation == OP_APPEND && !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    } else if op.config_operation == OP_SUBTRACT {
                        items.retain(|i| i != item);
                    }
                }
                overrides.insert(name, items.join(","));
            }
            other => return Err(invalid(format!("unknown config operation {other}"))),
        }
    }
    Ok(overrides)
}

fn invalid(message: String) -> Error {
    Error::InvalidRequest {
        code: ResponseError::InvalidRequest,
        message,
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;

    use super::*;
    use crate::handler::str_bytes;

    fn broker_ops(ops: &[(&str, i8)]) -> IncrementalAlterConfigsRequest {
        let configs = ops
            .iter()
            .map(|(name, op)| {
                AlterableConfig::default()
                    .with_name(str_bytes(*name))
                    .with_config_operation(*op)
                    .with_value(None)
            })
            .collect();
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_BROKER)
                .with_resource_name(str_bytes("0"))
                .with_configs(configs),
        ])
    }

    #[test]
    fn deleting_dynamic_broker_settings_deletes_nothing_and_setting_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::handler::tests::context(dir.path());
        let session = crate::handler::tests::session();
        let access = ctx.acl.access(&session);
        let throttles = broker_ops(&[
            ("leader.replication.throttled.rate", OP_DELETE),
            ("follower.replication.throttled.rate", OP_DELETE),
        ]);
        assert_eq!(handle(&ctx, &access, throttles).responses[0].error_code, 0);
        let set = broker_ops(&[("leader.replication.throttled.rate", OP_SET)]);
        assert_eq!(
            handle(&ctx, &access, set).responses[0].error_code,
            ResponseError::InvalidRequest.code()
        );
    }
}
