//! ListGroups: every group, optionally filtered by state (v4+) or type (v5+).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{Context, str_bytes};

pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let groups = ctx
        .coordinator
        .list()
        .into_iter()
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
    ListGroupsResponse::default().with_groups(groups)
}
