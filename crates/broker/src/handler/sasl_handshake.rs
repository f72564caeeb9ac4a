//! SaslHandshake (API 17) reaching the dispatcher: on a listener without SASL (a SASL listener's
//! connections are served by `security::sasl` before dispatch), answered ILLEGAL_SASL_STATE as
//! Kafka does, with no mechanism offered.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::SaslHandshakeResponse;

pub(super) fn handle() -> SaslHandshakeResponse {
    SaslHandshakeResponse::default().with_error_code(ResponseError::IllegalSaslState.code())
}
