//! LeaveGroup: one member (v0-v2) or a batch of members by id or instance id (v3+).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{Context, now_ms};
use crate::error::coordinator_error_code;
use crate::security::acl::{Access, AclOperation};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    if !access.check_group(AclOperation::Read, &request.group_id) {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let coordinator = match ctx.coordinator(&request.group_id) {
        Ok(coordinator) => coordinator,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code.code()),
    };
    match coordinator.leave(&request.group_id, &members, now_ms()) {
        Err(e) => LeaveGroupResponse::default().with_error_code(coordinator_error_code(&e).code()),
        Ok(codes) if version >= 3 => {
            let responses = request
                .members
                .into_iter()
                .zip(codes)
                .map(|(m, code)| {
                    MemberResponse::default()
                        .with_member_id(m.member_id)
                        .with_group_instance_id(m.group_instance_id)
                        .with_error_code(code)
                })
                .collect();
            LeaveGroupResponse::default().with_members(responses)
        }
        Ok(codes) => LeaveGroupResponse::default()
            .with_error_code(codes.first().copied().unwrap_or_default()),
    }
}
