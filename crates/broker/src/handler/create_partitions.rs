//! CreatePartitions: raise a topic's partition count.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{Context, message, now_ms, str_bytes};
use crate::security::acl::{Access, AclOperation};

/// Needs ALTER on each topic.
pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let node = ctx.node_id();
    let results = request
        .topics
        .into_iter()
        .map(|topic| {
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            if !access.check_topic(AclOperation::Alter, &topic.name) {
                return result
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes(
                        "CreatePartitions needs ALTER on the topic",
                    )));
            }
            let foreign = topic
                .assignments
                .iter()
                .flatten()
                .any(|a| a.broker_ids.iter().any(|b| b.0 != node));
            if foreign {
                return result
                    .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                    .with_error_message(Some(str_bytes(format!(
                        "assignments may only name broker {node}"
                    ))));
            }
            match ctx.manager.create_partitions(
                &topic.name,
                topic.count,
                request.validate_only,
                now_ms(),
            ) {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(e.code().code())
                    .with_error_message(message(&e)),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
