//! EndTxn: a transactional producer commits or aborts. The decision is made durable, then the
//! markers are written to the transaction's partitions (see [`crate::txn`]); the answer waits for
//! them up to [`COMPLETION_WAIT`].

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::security::acl::{Access, AclOperation};
use crate::txn::coordinator::Claim;

/// How long an EndTxn answer waits for the transaction's markers once its decision is durable.
const COMPLETION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An answer, and what must be durable before it is sent.
pub(super) type Pending = (EndTxnResponse, Option<Durable>);

/// Needs WRITE on the transactional id.
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: EndTxnRequest,
) -> Pending {
    let response = EndTxnResponse::default();
    let id = request.transactional_id.as_str();
    if !access.check_txn(AclOperation::Write, id) {
        let code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return (response.with_error_code(code), None);
    }
    let claim = Claim {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        fenced: super::add_partitions_to_txn::fenced_code(version),
    };
    let coordinator = match ctx.txns.of(id) {
        Ok(c) => c,
        Err(code) => return (response.with_error_code(code.code()), None),
    };
    match coordinator.end(id, claim, request.committed, now_ms()) {
        Ok((durable, done)) => {
            let txns = std::sync::Arc::clone(&ctx.txns);
            let settled: Durable = Box::pin(async move {
                // The markers go out once the decision is durable: a decision lost with its
                // coordinator was never answered, and the next coordinator aborts it.
                if let Some(durable) = durable {
                    durable.await?;
                }
                if let Some(done) = done {
                    // Answered once the markers are written (usually within milliseconds), so
                    // that the producer's next transaction does not find this one still ending
                    // (CONCURRENT_TRANSACTIONS, which clients retry only after their backoff);
                    // a slow partition only delays the answer up to COMPLETION_WAIT.
                    let completed = txns.complete(coordinator, done);
                    let _ = tokio::time::timeout(COMPLETION_WAIT, completed).await;
                }
                Ok(())
            });
            (response, Some(settled))
        }
        Err(code) => (response.with_error_code(code.code()), None),
    }
}

/// Answers once the decision is durable.
pub(super) async fn finish(pending: Pending) -> EndTxnResponse {
    let (response, durable) = pending;
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        let code = crate::txn::coordinator::write_error_code(&e).code();
        return response.with_error_code(code);
    }
    response
}
