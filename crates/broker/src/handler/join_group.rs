//! JoinGroup: membership and the join phase of a rebalance; waits until the phase completes.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, RequestHeader};
use strata_coordinator::group::{Answer, JoinRequest, JoinResult};

use super::{Context, now_ms, str_bytes};
use crate::security::acl::{Access, AclOperation};

pub(super) fn start(
    ctx: &Context,
    (header, peer, access): (&RequestHeader, SocketAddr, &Access),
    version: i16,
    request: JoinGroupRequest,
) -> Answer<JoinResult> {
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        requires_known_member_id: version >= 4,
    };
    let authorized = if access.check_group(AclOperation::Read, &request.group_id) {
        Ok(())
    } else {
        Err(ResponseError::GroupAuthorizationFailed)
    };
    match authorized.and_then(|()| ctx.coordinator(&request.group_id)) {
        Ok(coordinator) => coordinator.join(&request.group_id, join, now_ms()),
        Err(code) => Answer::Now(JoinResult {
            error: code.code(),
            generation_id: -1,
            member_id: join.member_id,
            ..JoinResult::default()
        }),
    }
}

/// Waits for the join phase to complete (or the broker to stop).
pub(super) async fn finish(
    ctx: Arc<Context>,
    version: i16,
    answer: Answer<JoinResult>,
) -> JoinGroupResponse {
    let result = match answer {
        Answer::Now(result) => result,
        Answer::Later(receiver) => tokio::select! {
            result = receiver => result.unwrap_or_else(|_| not_coordinator()),
            () = ctx.shutdown.cancelled() => not_coordinator(),
        },
    };
    response(version, result)
}

fn not_coordinator() -> JoinResult {
    JoinResult {
        error: ResponseError::NotCoordinator.code(),
        generation_id: -1,
        ..JoinResult::default()
    }
}

fn response(version: i16, result: JoinResult) -> JoinGroupResponse {
    let members = result
        .members
        .into_iter()
        .map(|(member_id, instance, metadata)| {
            let mut member = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(member_id))
                .with_metadata(metadata);
            if version >= 5 {
                member.group_instance_id = instance.map(str_bytes);
            }
            member
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation_id)
        .with_leader(str_bytes(result.leader))
        .with_member_id(str_bytes(result.member_id))
        .with_members(members);
    let name = result.protocol_name.map(str_bytes);
    if version >= 7 {
        response.protocol_type = result.protocol_type.map(str_bytes);
        response.protocol_name = name;
    } else {
        // Before v7 the name is a non-null string.
        response.protocol_name = Some(name.unwrap_or_default());
    }
    response
}
