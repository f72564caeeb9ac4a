//! ListGroups: every group this broker coordinates (in a cluster, those of the offsets
//! partitions it leads; clients ask every broker), optionally filtered by state (v4+) or type
//! (v5+). COORDINATOR_LOAD_IN_PROGRESS while a partition's groups are still loading.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation, CLUSTER_NAME, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    // DESCRIBE on the cluster lists every group; else those the principal may describe.
    let every_group = access.allows(AclOperation::Describe, ResourceType::Cluster, CLUSTER_NAME);
    let (coordinators, loading) = ctx.groups.all();
    let mut listed: Vec<_> = coordinators.iter().flat_map(|c| c.list()).collect();
    listed.sort();
    let groups = listed
        .into_iter()
        .filter(|(id, _, _)| {
            every_group || access.allows(AclOperation::Describe, ResourceType::Group, id)
        })
        .filter(|(_, _, state)| {
            request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state))
        })
        .filter(|_| {
            request.types_filter.is_empty()
                || request
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case("classic"))
        })
        .map(|(id, protocol_type, state)| {
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(protocol_type));
            if version >= 4 {
                group.group_state = str_bytes(state);
            }
            if version >= 5 {
                group.group_type = str_bytes("classic");
            }
            group
        })
        .collect();
    let response = ListGroupsResponse::default().with_groups(groups);
    if loading {
        return response.with_error_code(ResponseError::CoordinatorLoadInProgress.code());
    }
    response
}
