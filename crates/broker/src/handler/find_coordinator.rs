//! FindCoordinator (single key before v4, batched from v4): a single broker coordinates every
//! group and transaction; in a cluster a group's coordinator is the leader of its
//! `__consumer_offsets` partition, a transactional id's the leader of its `__transaction_state`
//! partition (COORDINATOR_NOT_AVAILABLE while there is none).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation};

/// Kafka's coordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// `(node id, host, port)` of the coordinator, or the error and its message.
type Found = Result<(i32, String, i32), (i16, StrBytes)>;

/// Needs DESCRIBE on the group or the transactional id.
fn find(ctx: &Context, (listener, access): (&str, &Access), key_type: i8, key: &StrBytes) -> Found {
    let denied = match key_type {
        KEY_TYPE_TRANSACTION if !access.check_txn(AclOperation::Describe, key) => {
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        }
        KEY_TYPE_GROUP if !access.check_group(AclOperation::Describe, key) => {
            Some(ResponseError::GroupAuthorizationFailed)
        }
        _ => None,
    };
    if let Some(code) = denied {
        return Err((
            code.code(),
            str_bytes(format!("not authorized for {:?}", key.as_str())),
        ));
    }
    if key_type == KEY_TYPE_TRANSACTION {
        return ctx.txn_coordinator(key, listener).map_err(|code| {
            (
                code.code(),
                str_bytes(format!(
                    "no coordinator for transactional id {:?} yet",
                    key.as_str()
                )),
            )
        });
    }
    if key_type != KEY_TYPE_GROUP {
        tracing::debug!(key = %key.as_str(), key_type, "no coordinator for this key type");
        return Err((
            ResponseError::InvalidRequest.code(),
            str_bytes(format!(
                "key type {key_type} is not supported: only consumer groups (0) and transactions (1)"
            )),
        ));
    }
    ctx.group_coordinator(key, listener).map_err(|code| {
        (
            code.code(),
            str_bytes(format!("no coordinator for group {:?} yet", key.as_str())),
        )
    })
}

pub(super) fn handle(
    ctx: &Context,
    (listener, access): (&str, &Access),
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let coordinator = Coordinator::default().with_key(key.clone());
                match find(ctx, (listener, access), request.key_type, key) {
                    Ok((id, host, port)) => coordinator
                        .with_node_id(BrokerId(id))
                        .with_host(str_bytes(host))
                        .with_port(port),
                    Err((code, message)) => coordinator
                        .with_node_id(BrokerId(-1))
                        .with_host(str_bytes(""))
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(Some(message)),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match find(ctx, (listener, access), request.key_type, &request.key) {
        Ok((id, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(id))
            .with_host(str_bytes(host))
            .with_port(port),
        Err((code, message)) => {
            let mut response = FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1);
            if version >= 1 {
                response.error_message = Some(message);
            }
            response
        }
    }
}
