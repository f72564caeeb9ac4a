//! DescribeTransactions: the state of transactional ids this broker coordinates (for
//! `kafka-transactions.sh describe` and admin clients).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let state = TransactionState::default().with_transactional_id(id.clone());
            if !access.check_txn(AclOperation::Describe, &id) {
                return state
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
                    .with_transaction_state(str_bytes(""))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1);
            }
            let found = ctx.txns.of(id.as_str()).map(|c| c.describe(id.as_str()));
            match found {
                Ok(Some(meta)) => {
                    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                    // Only the topics the principal may describe are named (as Kafka).
                    for (topic, p) in &meta.partitions {
                        topics.entry(topic).or_default().push(*p);
                    }
                    topics.retain(|t, _| {
                        access.allows(AclOperation::Describe, ResourceType::Topic, t)
                    });
                    state
                        .with_transaction_state(str_bytes(meta.state.name()))
                        .with_transaction_timeout_ms(meta.timeout_ms)
                        .with_transaction_start_time_ms(meta.start_ms)
                        .with_producer_id(ProducerId(meta.producer_id))
                        .with_producer_epoch(meta.producer_epoch)
                        .with_topics(
                            topics
                                .into_iter()
                                .map(|(t, partitions)| {
                                    TopicData::default()
                                        .with_topic(TopicName(str_bytes(t)))
                                        .with_partitions(partitions)
                                })
                                .collect(),
                        )
                }
                Ok(None) => state
                    .with_error_code(ResponseError::TransactionalIdNotFound.code())
                    .with_transaction_state(str_bytes(""))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
                Err(code) => state
                    .with_error_code(code.code())
                    .with_transaction_state(str_bytes(""))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
