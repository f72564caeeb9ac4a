//! DescribeProducers: the producers of partitions this broker leads, with their open
//! transactions (for `kafka-transactions.sh describe-producers` and finding hanging
//! transactions).

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::{Context, message};
use crate::security::acl::{Access, AclOperation};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let readable = access.check_topic(AclOperation::Read, &topic.name);
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let answer = PartitionResponse::default().with_partition_index(index);
                    if !readable {
                        let code = kafka_protocol::ResponseError::TopicAuthorizationFailed;
                        return answer.with_error_code(code.code());
                    }
                    let producers = ctx
                        .manager
                        .leader_partition(&topic.name, index)
                        .and_then(|p| p.producers());
                    match producers {
                        Ok(producers) => answer.with_active_producers(
                            producers
                                .into_iter()
                                .map(|p| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(p.producer_id))
                                        .with_producer_epoch(i32::from(p.epoch))
                                        .with_last_sequence(p.last_sequence)
                                        .with_last_timestamp(-1)
                                        .with_coordinator_epoch(p.coordinator_epoch)
                                        .with_current_txn_start_offset(
                                            p.txn_start_offset.unwrap_or(-1),
                                        )
                                })
                                .collect(),
                        ),
                        Err(e) => answer
                            .with_error_code(e.code().code())
                            .with_error_message(message(&e)),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
