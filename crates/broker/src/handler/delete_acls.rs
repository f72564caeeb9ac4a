//! DeleteAcls: the ACL bindings matching each filter, deleted together from the security store
//! (replicated in a cluster) and answered once durable, with the bindings each filter deleted.
//! Needs ALTER on the cluster.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

use super::{Context, str_bytes};
use crate::security::SecurityChange;
use crate::security::acl::{
    ACL_KIND, Access, AclBinding, AclBindingFilter, AclOperation, Authorizer,
};

/// The deletions to store: per filter, the bindings it matched or the error it gets.
pub(super) struct Pending {
    outcomes: Vec<Result<Vec<AclBinding>, (ResponseError, String)>>,
}

pub(super) fn start(ctx: &Context, access: &Access, request: DeleteAclsRequest) -> Pending {
    let refused = super::describe_acls::refusal(ctx, access, "DeleteAcls", AclOperation::Alter);
    let index = ctx.acl.index();
    let outcomes = request
        .filters
        .iter()
        .map(|f| {
            if let Some((code, why)) = &refused {
                return Err((*code, why.clone()));
            }
            let filter = AclBindingFilter::from_codes(
                f.resource_type_filter,
                f.resource_name_filter.as_deref(),
                f.pattern_type_filter,
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
            .map_err(|why| (ResponseError::InvalidRequest, why))?;
            Ok(index
                .bindings()
                .iter()
                .filter(|b| filter.matches(b))
                .cloned()
                .collect())
        })
        .collect();
    Pending { outcomes }
}

pub(super) async fn finish(acl: &Authorizer, pending: Pending) -> DeleteAclsResponse {
    let mut changes: Vec<SecurityChange> = pending
        .outcomes
        .iter()
        .flatten()
        .flatten()
        .map(|b| SecurityChange {
            kind: ACL_KIND.to_string(),
            key: b.key(),
            value: None,
        })
        .collect();
    // Two filters may match one binding: it is deleted once.
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    changes.dedup_by(|a, b| a.key == b.key);
    let stored = if changes.is_empty() {
        Ok(())
    } else {
        acl.store().change(changes).await
    };
    let results = pending
        .outcomes
        .into_iter()
        .map(|outcome| match (outcome, &stored) {
            (Err((code, why)), _) => DeleteAclsFilterResult::default()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(why))),
            (Ok(_), Err(e)) => DeleteAclsFilterResult::default()
                .with_error_code(e.code().code())
                .with_error_message(Some(str_bytes(e.to_string()))),
            (Ok(bindings), Ok(())) => {
                let matching = bindings
                    .into_iter()
                    .map(|b| {
                        tracing::info!(target: "strata::audit", acl = %b, "ACL deleted");
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type.code())
                            .with_resource_name(str_bytes(b.resource_name))
                            .with_pattern_type(b.pattern_type.code())
                            .with_principal(str_bytes(b.principal))
                            .with_host(str_bytes(b.host))
                            .with_operation(b.operation.code())
                            .with_permission_type(b.permission_type.code())
                    })
                    .collect();
                DeleteAclsFilterResult::default().with_matching_acls(matching)
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
