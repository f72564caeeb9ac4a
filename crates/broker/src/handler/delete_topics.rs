//! DeleteTopics: by name (v1+) or by topic id (v6+).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use super::{Context, message, now_ms, str_bytes};
use crate::security::acl::{Access, AclOperation, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let responses = wanted
        .into_iter()
        .map(|(name, topic_id)| {
            let by_id = name.is_none();
            let name = name.or_else(|| {
                ctx.manager
                    .topic_by_id(topic_id)
                    .map(|t| TopicName(str_bytes(t.name.clone())))
            });
            let mut result = DeletableTopicResult::default().with_name(name.clone());
            if version >= 6 {
                result.topic_id = topic_id;
            }
            let Some(name) = name else {
                return result.with_error_code(ResponseError::UnknownTopicId.code());
            };
            if !access.check_topic(AclOperation::Delete, &name) {
                // Asked by id: the name is not told to a principal that may not describe the
                // topic (as Kafka; the id itself is not secret).
                if by_id && !access.allows(AclOperation::Describe, ResourceType::Topic, &name) {
                    result.name = None;
                }
                return result.with_error_code(ResponseError::TopicAuthorizationFailed.code());
            }
            match ctx.manager.delete_topic(&name, now_ms()) {
                Ok(id) => {
                    if version >= 6 {
                        result.topic_id = id;
                    }
                    result
                }
                Err(e) => {
                    let mut result = result.with_error_code(e.code().code());
                    if version >= 5 {
                        result.error_message = message(&e);
                    }
                    result
                }
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
