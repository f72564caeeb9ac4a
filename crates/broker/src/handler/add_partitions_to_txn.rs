//! AddPartitionsToTxn (v0–v3, the client's form): the partitions a transactional producer is
//! about to write to join its transaction, so the coordinator writes their markers at its end.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::security::acl::{Access, AclOperation};
use crate::txn::coordinator::Claim;

/// An answer, and what must be durable before it is sent.
pub(super) type Pending = (AddPartitionsToTxnResponse, Option<Durable>);

/// The code of a stale producer epoch at `version` (PRODUCER_FENCED from v2, as Kafka).
pub(super) fn fenced_code(version: i16) -> ResponseError {
    if version >= 2 {
        ResponseError::ProducerFenced
    } else {
        ResponseError::InvalidProducerEpoch
    }
}

/// Needs WRITE on the transactional id and on each topic: nothing is added when a partition is
/// refused (TOPIC_AUTHORIZATION_FAILED; the others OPERATION_NOT_ATTEMPTED, as Kafka).
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> Pending {
    let txn_refused =
        !access.check_txn(AclOperation::Write, &request.v3_and_below_transactional_id);
    let wanted: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.to_string(), p)))
        .collect();
    let writable: Vec<bool> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            let writable = txn_refused || access.check_topic(AclOperation::Write, &t.name);
            t.partitions.iter().map(move |_| writable)
        })
        .collect();
    // Per partition: the error that keeps the whole request from being attempted.
    let unknown: Vec<Option<ResponseError>> = wanted
        .iter()
        .zip(&writable)
        .map(|((topic, p), &writable)| {
            if !writable {
                Some(ResponseError::TopicAuthorizationFailed)
            } else if !ctx.manager.partition_exists(topic, *p) {
                Some(ResponseError::UnknownTopicOrPartition)
            } else {
                None
            }
        })
        .collect();
    let outcome = if txn_refused {
        Err(Some(ResponseError::TransactionalIdAuthorizationFailed))
    } else if unknown.iter().any(Option::is_some) {
        // Nothing is added when a partition is unknown; the others are not attempted.
        Err(None)
    } else {
        let claim = Claim {
            producer_id: request.v3_and_below_producer_id.0,
            producer_epoch: request.v3_and_below_producer_epoch,
            fenced: fenced_code(version),
        };
        let id = request.v3_and_below_transactional_id.as_str();
        ctx.txns
            .of(id)
            .and_then(|c| c.add_partitions(id, claim, &wanted, now_ms()))
            .map_err(Some)
    };
    let code_of = |i: usize| match &outcome {
        Ok(_) => 0,
        Err(Some(code)) => code.code(),
        Err(None) if unknown[i].is_some() => unknown[i].map_or(0, |c| c.code()),
        Err(None) => ResponseError::OperationNotAttempted.code(),
    };
    let mut i = 0;
    let results = request
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|&p| {
                    let code = code_of(i);
                    i += 1;
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(partitions)
        })
        .collect();
    let response =
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    (response, outcome.ok().flatten())
}

/// Answers once the added partitions are durable; otherwise every partition gets the error.
pub(super) async fn finish(pending: Pending) -> AddPartitionsToTxnResponse {
    let (mut response, durable) = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        let code = crate::txn::coordinator::write_error_code(&e).code();
        for p in response
            .results_by_topic_v3_and_below
            .iter_mut()
            .flat_map(|t| t.results_by_partition.iter_mut())
        {
            p.partition_error_code = code;
        }
    }
    response
}
