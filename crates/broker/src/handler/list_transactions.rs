//! ListTransactions: the transactional ids this broker coordinates, filtered by state, producer
//! id and (v1) how long their transaction has been open.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::{Context, now_ms, str_bytes};
use crate::security::acl::{Access, AclOperation, ResourceType};

/// Kafka's transaction state names, for the unknown-filter answer.
const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let now = now_ms();
    let unknown = request
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let min_duration = if version >= 1 {
        request.duration_filter
    } else {
        -1
    };
    let mut states: Vec<TransactionState> = ctx
        .txns
        .all()
        .iter()
        .flat_map(|c| c.list())
        .filter(|(_, m)| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == m.state.name())
        })
        .filter(|(_, m)| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(m.producer_id))
        })
        .filter(|(_, m)| min_duration < 0 || (m.start_ms >= 0 && now - m.start_ms >= min_duration))
        // Only the transactional ids the principal may describe are listed.
        .filter(|(id, _)| access.allows(AclOperation::Describe, ResourceType::TransactionalId, id))
        .map(|(id, m)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(str_bytes(m.state.name()))
        })
        .collect();
    states.sort_by(|a, b| a.transactional_id.as_str().cmp(b.transactional_id.as_str()));
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}
