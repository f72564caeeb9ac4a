//! DescribeGroups: state, protocol and members with their assignments, for the groups this
//! broker coordinates (NOT_COORDINATOR and the like for the others).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let described = DescribedGroup::default().with_group_id(group_id.clone());
            if !access.check_group(AclOperation::Describe, &group_id) {
                return described.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            let coordinator = match ctx.coordinator(&group_id) {
                Ok(coordinator) => coordinator,
                Err(code) => return described.with_error_code(code.code()),
            };
            let Some(d) = coordinator.describe(&group_id) else {
                // Kafka describes an unknown group as Dead with no members.
                return described.with_group_state(str_bytes("Dead"));
            };
            if group_id.is_empty() {
                return described.with_error_code(ResponseError::InvalidGroupId.code());
            }
            let members = d
                .members
                .into_iter()
                .map(
                    |(member_id, instance, client_id, client_host, metadata, assignment)| {
                        let mut member = DescribedGroupMember::default()
                            .with_member_id(str_bytes(member_id))
                            .with_client_id(str_bytes(client_id))
                            .with_client_host(str_bytes(client_host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment);
                        if version >= 4 {
                            member.group_instance_id = instance.map(str_bytes);
                        }
                        member
                    },
                )
                .collect();
            let described = if version >= 3 && request.include_authorized_operations {
                let bits = access.authorized_operations(ResourceType::Group, &group_id);
                described.with_authorized_operations(bits)
            } else {
                described
            };
            described
                .with_group_state(str_bytes(d.state))
                .with_protocol_type(str_bytes(d.protocol_type))
                .with_protocol_data(str_bytes(d.protocol_name))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
