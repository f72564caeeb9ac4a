//! DeleteGroups: empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::{Context, now_ms};
use crate::error::coordinator_error_code;

pub(super) fn handle(ctx: &Context, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = request
        .groups_names
        .into_iter()
        .map(|group_id| {
            let code = ctx
                .coordinator
                .delete_group(&group_id, now_ms())
                .err()
                .map_or(0, |e| coordinator_error_code(&e).code());
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
