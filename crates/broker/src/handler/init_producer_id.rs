//! InitProducerId: producer ids and epochs for idempotent producers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Context;

pub(super) fn handle(ctx: &Context, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.is_empty())
    {
        tracing::warn!(
            "refusing InitProducerId for a transactional producer: transactions are not supported yet"
        );
        return response.with_error_code(ResponseError::InvalidRequest.code());
    }
    // KIP-360: an idempotent producer may ask to bump its epoch after an error.
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        return response
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    match ctx.manager.next_producer_id() {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id");
            response.with_error_code(e.code().code())
        }
    }
}
