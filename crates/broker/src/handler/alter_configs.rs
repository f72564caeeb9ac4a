//! AlterConfigs (the legacy form): replaces every override of a topic with the given set.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC, configs_refused};
use super::{Context, message};
use crate::error::Error;
use crate::security::acl::{Access, AclOperation};

/// Needs ALTER_CONFIGS on the topic (the cluster for broker settings).
pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
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
            let overrides: BTreeMap<String, String> = resource
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect();
            let result = match resource.resource_type {
                RESOURCE_TOPIC => ctx.manager.set_topic_overrides(
                    &resource.resource_name,
                    overrides,
                    request.validate_only,
                ),
                RESOURCE_BROKER => Err(static_broker_settings()),
                other => Err(Error::InvalidRequest {
                    code: kafka_protocol::ResponseError::InvalidRequest,
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
    AlterConfigsResponse::default().with_responses(responses)
}

/// The error for altering broker settings, which are read at start-up only.
pub(super) fn static_broker_settings() -> Error {
    Error::InvalidRequest {
        code: kafka_protocol::ResponseError::InvalidRequest,
        message:
            "broker settings are static: set them in strata.toml or STRATA_* variables and restart"
                .into(),
    }
}
