//! DeleteGroups: empty groups and their committed offsets, answered once the deletion is durable.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::error::coordinator_error_code;
use crate::security::acl::{Access, AclOperation};

/// Deletions made and not yet answered: each group with its code, or its deletion to wait for.
pub(super) struct Pending(Vec<(GroupId, Result<Durable, i16>)>);

/// Needs DELETE on each group.
pub(super) fn start(ctx: &Context, access: &Access, request: DeleteGroupsRequest) -> Pending {
    let deletions = request
        .groups_names
        .into_iter()
        .map(|group_id| {
            if !access.check_group(AclOperation::Delete, &group_id) {
                return (
                    group_id,
                    Err(ResponseError::GroupAuthorizationFailed.code()),
                );
            }
            let outcome = ctx.coordinator(&group_id).and_then(|coordinator| {
                coordinator
                    .delete_group(&group_id, now_ms())
                    .map_err(|e| coordinator_error_code(&e))
            });
            (group_id, outcome.map_err(|code| code.code()))
        })
        .collect();
    Pending(deletions)
}

pub(super) async fn finish(pending: Pending) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(pending.0.len());
    for (group_id, outcome) in pending.0 {
        let code = match outcome {
            Ok(durable) => durable
                .await
                .err()
                .map_or(0, |e| coordinator_error_code(&e).code()),
            Err(code) => code,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
