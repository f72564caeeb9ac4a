//! DescribeAcls: the ACL bindings matching a filter, grouped by resource pattern. Needs DESCRIBE
//! on the cluster.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclBindingFilter, AclOperation};

/// Why an ACL API (`api`, which needs `operation` on the cluster) is refused to `access`, if it
/// is: SECURITY_DISABLED on a broker without an authorizer (as Kafka), else
/// CLUSTER_AUTHORIZATION_FAILED without the operation.
pub(super) fn refusal(
    ctx: &Context,
    access: &Access,
    api: &str,
    operation: AclOperation,
) -> Option<(ResponseError, String)> {
    if !ctx.acl.enabled() {
        Some((
            ResponseError::SecurityDisabled,
            "no authorizer is configured (authorizer.enabled=false)".to_string(),
        ))
    } else if !access.check_cluster(operation) {
        Some((
            ResponseError::ClusterAuthorizationFailed,
            format!("{api} needs {} on the cluster", operation.name()),
        ))
    } else {
        None
    }
}

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let refuse = |code: ResponseError, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(message)))
    };
    if let Some((code, message)) = refusal(ctx, access, "DescribeAcls", AclOperation::Describe) {
        return refuse(code, message);
    }
    let filter = match AclBindingFilter::from_codes(
        request.resource_type_filter,
        request.resource_name_filter.as_deref(),
        request.pattern_type_filter,
        request.principal_filter.as_deref(),
        request.host_filter.as_deref(),
        request.operation,
        request.permission_type,
    ) {
        Ok(filter) => filter,
        Err(why) => return refuse(ResponseError::InvalidRequest, why),
    };
    let index = ctx.acl.index();
    let mut resources: BTreeMap<_, Vec<AclDescription>> = BTreeMap::new();
    for binding in index.bindings().iter().filter(|b| filter.matches(b)) {
        resources
            .entry((
                binding.resource_type,
                binding.pattern_type,
                binding.resource_name.as_str(),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(binding.principal.as_str()))
                    .with_host(str_bytes(binding.host.as_str()))
                    .with_operation(binding.operation.code())
                    .with_permission_type(binding.permission_type.code()),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((resource_type, pattern_type, name), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type.code())
                .with_pattern_type(pattern_type.code())
                .with_resource_name(str_bytes(name))
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}
