//! AddOffsetsToTxn: a transactional producer will commit a group's offsets in its transaction
//! (`send_offsets_to_transaction`): the group's `__consumer_offsets` partition joins the
//! transaction, so its marker makes the offsets visible at commit or drops them at abort.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::groups::{OFFSETS_TOPIC, partition_for};
use crate::security::acl::{Access, AclOperation};
use crate::txn::coordinator::Claim;

/// An answer, and what must be durable before it is sent.
pub(super) type Pending = (AddOffsetsToTxnResponse, Option<Durable>);

/// Needs WRITE on the transactional id and READ on the group.
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> Pending {
    let response = AddOffsetsToTxnResponse::default();
    let group = request.group_id.as_str();
    let refused = if !access.check_txn(AclOperation::Write, &request.transactional_id) {
        Some(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !access.check_group(AclOperation::Read, group) {
        Some(ResponseError::GroupAuthorizationFailed)
    } else {
        None
    };
    if let Some(code) = refused {
        return (response.with_error_code(code.code()), None);
    }
    // A single broker keeps every group in one offsets log.
    let offsets_partition = if ctx.manager.cluster().is_some() {
        match ctx.manager.topic(OFFSETS_TOPIC) {
            Some(t) if t.partition_count > 0 => partition_for(group, t.partition_count),
            _ => {
                let code = ResponseError::CoordinatorNotAvailable.code();
                return (response.with_error_code(code), None);
            }
        }
    } else {
        0
    };
    let claim = Claim {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        fenced: super::add_partitions_to_txn::fenced_code(version),
    };
    let id = request.transactional_id.as_str();
    let added = ctx.txns.of(id).and_then(|c| {
        c.add_partitions(
            id,
            claim,
            &[(OFFSETS_TOPIC.to_string(), offsets_partition)],
            now_ms(),
        )
    });
    match added {
        Ok(durable) => (response, durable),
        Err(code) => (response.with_error_code(code.code()), None),
    }
}

/// Answers once the change is durable.
pub(super) async fn finish(pending: Pending) -> AddOffsetsToTxnResponse {
    let (response, durable) = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        let code = crate::txn::coordinator::write_error_code(&e).code();
        return response.with_error_code(code);
    }
    response
}
