//! SyncGroup: the leader hands out assignments; every member waits for its own.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use strata_coordinator::group::{Answer, SyncResult};

use super::{Context, now_ms, str_bytes};
use crate::security::acl::{Access, AclOperation};

pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: SyncGroupRequest,
) -> Answer<SyncResult> {
    if !access.check_group(AclOperation::Read, &request.group_id) {
        return Answer::Now(SyncResult {
            error: ResponseError::GroupAuthorizationFailed.code(),
            ..SyncResult::default()
        });
    }
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let coordinator = match ctx.coordinator(&request.group_id) {
        Ok(coordinator) => coordinator,
        Err(code) => {
            return Answer::Now(SyncResult {
                error: code.code(),
                ..SyncResult::default()
            });
        }
    };
    let answer = coordinator.sync(
        &request.group_id,
        &request.member_id,
        instance.as_deref(),
        request.generation_id,
        assignments,
        now_ms(),
    );
    // v5: the client states the protocol it joined with; a mismatch is an inconsistent group.
    if version >= 5
        && let Answer::Now(result) = &answer
        && result.error == 0
        && (request
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t.as_str()) != result.protocol_type.as_deref())
            || request
                .protocol_name
                .as_ref()
                .is_some_and(|n| Some(n.as_str()) != result.protocol_name.as_deref()))
    {
        return Answer::Now(SyncResult {
            error: ResponseError::InconsistentGroupProtocol.code(),
            ..SyncResult::default()
        });
    }
    answer
}

pub(super) async fn finish(
    ctx: Arc<Context>,
    version: i16,
    answer: Answer<SyncResult>,
) -> SyncGroupResponse {
    let result = match answer {
        Answer::Now(result) => result,
        Answer::Later(receiver) => tokio::select! {
            result = receiver => result.unwrap_or_else(|_| not_coordinator()),
            () = ctx.shutdown.cancelled() => not_coordinator(),
        },
    };
    let mut response = SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_assignment(result.assignment);
    if version >= 5 {
        response.protocol_type = result.protocol_type.map(str_bytes);
        response.protocol_name = result.protocol_name.map(str_bytes);
    }
    response
}

fn not_coordinator() -> SyncResult {
    SyncResult {
        error: ResponseError::NotCoordinator.code(),
        ..SyncResult::default()
    }
}
