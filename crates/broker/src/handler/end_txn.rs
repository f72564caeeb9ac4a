//! EndTxn: a transactional producer commits or aborts. The decision is answered once durable;
//! the markers are written to the transaction's partitions after (see [`crate::txn`]).

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};
use strata_coordinator::Durable;

use super::{Context, now_ms};
use crate::txn::coordinator::Claim;

/// An answer, and what must be durable before it is sent.
pub(super) type Pending = (EndTxnResponse, Option<Durable>);

pub(super) fn start(ctx: &Context, version: i16, request: EndTxnRequest) -> Pending {
    let response = EndTxnResponse::default();
    let id = request.transactional_id.as_str();
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
            if let Some(done) = done {
                let txns = std::sync::Arc::clone(&ctx.txns);
                // The markers go out once the decision is durable: a decision that is lost
                // with its coordinator was never answered, and the next one aborts it.
                match durable {
                    Some(durable) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        tokio::spawn(async move {
                            let result = durable.await;
                            let ok = result.is_ok();
                            let _ = tx.send(result);
                            if ok {
                                txns.complete(coordinator, done);
                            }
                        });
                        let waited: Durable = Box::pin(async move {
                            rx.await.unwrap_or_else(|_| {
                                Err(strata_coordinator::Error::NotCoordinator {
                                    reason: "the transaction log write was dropped".into(),
                                })
                            })
                        });
                        return (response, Some(waited));
                    }
                    None => txns.complete(coordinator, done),
                }
            }
            (response, durable)
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
