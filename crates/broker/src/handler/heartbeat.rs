//! Heartbeat: keeps a member's session alive and tells it about rebalances.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{Context, now_ms};
use crate::security::acl::{Access, AclOperation};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    if !access.check_group(AclOperation::Read, &request.group_id) {
        return HeartbeatResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let coordinator = match ctx.coordinator(&request.group_id) {
        Ok(coordinator) => coordinator,
        Err(code) => return HeartbeatResponse::default().with_error_code(code.code()),
    };
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let code = coordinator.heartbeat(
        &request.group_id,
        &request.member_id,
        instance.as_deref(),
        request.generation_id,
        now_ms(),
    );
    HeartbeatResponse::default().with_error_code(code)
}
