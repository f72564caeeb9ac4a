//! InitProducerId: producer ids and epochs for idempotent producers, and for transactional
//! producers through their transaction coordinator (which fences older instances of the same
//! `transactional.id`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::security::acl::{Access, AclOperation, ResourceType};
use crate::txn::coordinator::{Claim, InitOutcome};

/// An answer, and what must be durable before it is sent.
pub(super) type Pending = (InitProducerIdResponse, Option<Durable>);

/// A transactional producer needs WRITE on its transactional id; an idempotent one
/// IDEMPOTENT_WRITE on the cluster, or WRITE on some topic (KIP-679, as Kafka 3.x).
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: InitProducerIdRequest,
) -> Pending {
    let response = InitProducerIdResponse::default();
    if let Some(id) = request
        .transactional_id
        .as_ref()
        .filter(|id| !id.is_empty())
    {
        if !access.check_txn(AclOperation::Write, id) {
            let code = ResponseError::TransactionalIdAuthorizationFailed.code();
            return (response.with_error_code(code), None);
        }
        return transactional(ctx, version, id.as_str(), &request);
    }
    if !access.allows_any(AclOperation::Write, ResourceType::Topic)
        && !access.check_cluster(AclOperation::IdempotentWrite)
    {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        return (response.with_error_code(code), None);
    }
    // KIP-360: an idempotent producer may ask to bump its epoch after an error.
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        let response = response
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
        return (response, None);
    }
    match ctx.manager.next_producer_id() {
        Ok(id) => (
            response
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            None,
        ),
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id");
            (response.with_error_code(e.code().code()), None)
        }
    }
}

fn transactional(
    ctx: &Context,
    version: i16,
    transactional_id: &str,
    request: &InitProducerIdRequest,
) -> Pending {
    let failed = |code: ResponseError| {
        let response = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_error_code(code.code());
        (response, None)
    };
    let coordinator = match ctx.txns.of(transactional_id) {
        Ok(c) => c,
        Err(code) => return failed(code),
    };
    let claim = (request.producer_id.0 >= 0).then_some(Claim {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        fenced: if version >= 4 {
            ResponseError::ProducerFenced
        } else {
            ResponseError::InvalidProducerEpoch
        },
    });
    let allocate = || ctx.manager.next_producer_id().map_err(|e| e.code());
    match coordinator.init_producer_id(
        transactional_id,
        request.transaction_timeout_ms,
        claim,
        allocate,
        now_ms(),
    ) {
        Ok(InitOutcome::Ready {
            producer_id,
            producer_epoch,
            durable,
        }) => {
            let response = InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(producer_epoch);
            (response, durable)
        }
        Ok(InitOutcome::Aborting(done, durable)) => {
            tracing::info!(
                transactional_id,
                producer_id = done.producer_id,
                "a new producer instance: aborting the open transaction of the previous one"
            );
            ctx.txns.complete_once(coordinator, done, durable);
            failed(ResponseError::ConcurrentTransactions)
        }
        Err(code) => failed(code),
    }
}

/// Answers once the new producer state is durable; otherwise with the error the client retries.
pub(super) async fn finish(pending: Pending) -> InitProducerIdResponse {
    let (response, durable) = pending;
    match durable {
        Some(durable) => match durable.await {
            Ok(()) => response,
            Err(e) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_error_code(crate::txn::coordinator::write_error_code(&e).code()),
        },
        None => response,
    }
}
