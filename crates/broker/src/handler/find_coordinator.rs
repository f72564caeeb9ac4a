//! FindCoordinator (single key before v4, batched from v4): a single broker coordinates every
//! group; in a cluster each group has one live broker chosen by a hash of its id.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Context, str_bytes};

/// Kafka's coordinator key types.
const KEY_TYPE_GROUP: i8 = 0;

pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let unsupported = request.key_type != KEY_TYPE_GROUP;
    let error = |key: &StrBytes| {
        (unsupported).then(|| {
            tracing::debug!(key = %key.as_str(), key_type = request.key_type, "no coordinator for this key type");
            (
                ResponseError::InvalidRequest.code(),
                str_bytes(format!("key type {} is not supported: only consumer groups (0)", request.key_type)),
            )
        })
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (id, host, port) = ctx.group_coordinator(key);
                let coordinator = Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(host))
                    .with_port(port);
                match error(key) {
                    Some((code, message)) => coordinator
                        .with_node_id(BrokerId(-1))
                        .with_host(str_bytes(""))
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(Some(message)),
                    None => coordinator,
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (id, host, port) = ctx.group_coordinator(&request.key);
    let response = FindCoordinatorResponse::default()
        .with_node_id(BrokerId(id))
        .with_host(str_bytes(host))
        .with_port(port);
    match error(&request.key) {
        Some((code, message)) => {
            let mut response = response
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1);
            if version >= 1 {
                response.error_message = Some(message);
            }
            response
        }
        None => response,
    }
}
