//! OffsetDelete: drops a group's offsets for partitions of topics it does not subscribe to,
//! answered once the removal is durable.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::error::coordinator_error_code;
use crate::security::acl::{Access, AclOperation};

/// A removal made and not yet answered.
pub(super) struct Pending {
    response: OffsetDeleteResponse,
    durable: Option<Durable>,
}

/// Answers once the removal is durable; if it cannot be, the group-level error says why.
pub(super) async fn finish(pending: Pending) -> OffsetDeleteResponse {
    let Pending { response, durable } = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        return OffsetDeleteResponse::default().with_error_code(coordinator_error_code(&e).code());
    }
    response
}

/// Needs DELETE on the group, and READ on each topic (TOPIC_AUTHORIZATION_FAILED for the
/// partitions of the others, which keep their offsets).
pub(super) fn start(ctx: &Context, access: &Access, request: OffsetDeleteRequest) -> Pending {
    if !access.check_group(AclOperation::Delete, &request.group_id) {
        return Pending {
            response: OffsetDeleteResponse::default()
                .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
            durable: None,
        };
    }
    let readable: Vec<bool> = request
        .topics
        .iter()
        .map(|t| access.check_topic(AclOperation::Read, &t.name))
        .collect();
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, readable)| **readable)
        .flat_map(|(t, _)| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let outcome = ctx.coordinator(&request.group_id).and_then(|coordinator| {
        coordinator
            .delete_offsets(&request.group_id, &partitions, now_ms())
            .map_err(|e| coordinator_error_code(&e))
    });
    let (codes, durable) = match outcome {
        Ok(done) => done,
        Err(code) => {
            return Pending {
                response: OffsetDeleteResponse::default().with_error_code(code.code()),
                durable: None,
            };
        }
    };
    let mut codes = codes.into_iter();
    let topics = request
        .topics
        .into_iter()
        .zip(readable)
        .map(|(t, readable)| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if readable {
                        codes.next().unwrap_or_default()
                    } else {
                        ResponseError::TopicAuthorizationFailed.code()
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    Pending {
        response: OffsetDeleteResponse::default().with_topics(topics),
        durable: Some(durable),
    }
}
