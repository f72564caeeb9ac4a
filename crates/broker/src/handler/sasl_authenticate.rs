//! SaslAuthenticate (API 36) reaching the dispatcher: on a listener without SASL (a SASL
//! listener's connections are served by `security::sasl` before dispatch), answered
//! ILLEGAL_SASL_STATE as Kafka does.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::SaslAuthenticateResponse;

use super::str_bytes;

pub(super) fn handle() -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::IllegalSaslState.code())
        .with_error_message(Some(str_bytes(
            "SASL authentication is not enabled on this listener",
        )))
}
