//! Produce: validate each partition's batch, append it, answer with its base offset.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{Context, message, now_ms, off_the_workers, str_bytes};
use crate::error::Error;
use crate::manager::validate_topic_name;

/// Handles a produce request; `None` for acks=0, which gets no response at all.
pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let acks_valid = matches!(request.acks, -1..=1);
    let responses = request
        .topic_data
        .into_iter()
        .map(|topic| {
            let name = topic.name.clone();
            let partition_responses = topic
                .partition_data
                .into_iter()
                .map(|data| {
                    let answer = PartitionProduceResponse::default().with_index(data.index);
                    if !acks_valid {
                        return answer.with_error_code(ResponseError::InvalidRequiredAcks.code());
                    }
                    produce_partition(
                        ctx,
                        version,
                        &name,
                        data.index,
                        data.records.as_deref(),
                        answer,
                    )
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    (request.acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}

fn produce_partition(
    ctx: &Context,
    version: i16,
    topic: &str,
    index: i32,
    records: Option<&[u8]>,
    answer: PartitionProduceResponse,
) -> PartitionProduceResponse {
    let result = validate_topic_name(topic).and_then(|()| {
        let partition = ctx
            .manager
            .partition(topic, index)
            .ok_or_else(|| Error::UnknownTopic(format!("{topic}-{index}")))?;
        let records = records.unwrap_or_default();
        let now = now_ms();
        // Page-cache writes stay on this thread; a roll or an fsync leaves the async workers.
        let info = if partition.append_would_block(records.len(), now) {
            off_the_workers(|| partition.append(records, now))?
        } else {
            partition.append(records, now)?
        };
        Ok((info, partition.log_start_offset()))
    });
    match result {
        Ok((info, log_start_offset)) => {
            let mut answer = answer
                .with_base_offset(info.base_offset)
                .with_log_append_time_ms(info.log_append_time_ms);
            if version >= 5 {
                answer.log_start_offset = log_start_offset;
            }
            answer
        }
        Err(e) => {
            tracing::debug!(topic, partition = index, error = %e, "produce refused");
            let mut answer = answer.with_error_code(e.code().code()).with_base_offset(-1);
            if version >= 8 {
                answer.error_message = message(&e).or_else(|| Some(str_bytes("")));
                answer.record_errors = record_errors(&e);
            }
            answer
        }
    }
}

/// KIP-467: the record a refused batch was refused for, so the client can name it.
fn record_errors(error: &Error) -> Vec<BatchIndexAndErrorMessage> {
    let Error::Log(strata_log::Error::InvalidRecords(e)) = error else {
        return Vec::new();
    };
    let Some(index) = e.index else {
        return Vec::new();
    };
    vec![
        BatchIndexAndErrorMessage::default()
            .with_batch_index(index as i32)
            .with_batch_index_error_message(Some(str_bytes(e.message.clone()))),
    ]
}
