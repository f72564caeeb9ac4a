//! CreateAcls: new ACL bindings, stored together in the security store (replicated in a cluster)
//! and answered once durable. Needs ALTER on the cluster. Creating a binding that exists
//! already succeeds and changes nothing.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Context, str_bytes};
use crate::security::SecurityChange;
use crate::security::acl::{ACL_KIND, Access, AclBinding, AclOperation, Authorizer};

/// The creations to store, each with its outcome so far.
pub(super) struct Pending {
    /// Per creation, in request order: the binding to store, or the error it gets.
    outcomes: Vec<Result<AclBinding, (ResponseError, String)>>,
}

pub(super) fn start(ctx: &Context, access: &Access, request: CreateAclsRequest) -> Pending {
    let refused = super::describe_acls::refusal(ctx, access, "CreateAcls", AclOperation::Alter);
    let outcomes = request
        .creations
        .iter()
        .map(|c| {
            if let Some((code, why)) = &refused {
                return Err((*code, why.clone()));
            }
            AclBinding::from_codes(
                c.resource_type,
                &c.resource_name,
                c.resource_pattern_type,
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
            .map_err(|why| (ResponseError::InvalidRequest, why))
        })
        .collect();
    Pending { outcomes }
}

pub(super) async fn finish(acl: &Authorizer, pending: Pending) -> CreateAclsResponse {
    let changes: Vec<SecurityChange> = pending
        .outcomes
        .iter()
        .flatten()
        .map(|b| SecurityChange {
            kind: ACL_KIND.to_string(),
            key: b.key(),
            value: Some(b.to_json()),
        })
        .collect();
    let stored = if changes.is_empty() {
        Ok(())
    } else {
        acl.store().change(changes).await
    };
    let results = pending
        .outcomes
        .into_iter()
        .map(|outcome| {
            let failure = match (&outcome, &stored) {
                (Err((code, why)), _) => Some((*code, why.clone())),
                (Ok(_), Err(e)) => Some((e.code(), e.to_string())),
                (Ok(binding), Ok(())) => {
                    tracing::info!(target: "strata::audit", acl = %binding, "ACL created");
                    None
                }
            };
            match failure {
                None => AclCreationResult::default(),
                Some((code, why)) => AclCreationResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some::<StrBytes>(str_bytes(why))),
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}
