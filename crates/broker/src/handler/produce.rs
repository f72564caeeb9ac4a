//! Produce: validate each partition's batch, append it, answer with its base offset.
//!
//! Appends happen in request order, on the connection's turn. With `acks=all` on a replicated
//! partition the answer then waits (apart, like a long-polling fetch) until the in-sync replicas
//! have the batch: the high watermark passed it. A leader with fewer in-sync replicas than
//! `min.insync.replicas` appends nothing and answers NOT_ENOUGH_REPLICAS.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use strata_log::batch::BatchHeader;

use super::{Context, message, now_ms, off_the_workers, str_bytes};
use crate::error::Error;
use crate::manager::validate_topic_name;
use crate::partition::{CommitWait, Partition};
use crate::security::acl::{Access, AclOperation};

/// A produce answered once the in-sync replicas have every batch it appended.
pub(super) struct Pending {
    response: ProduceResponse,
    version: i16,
    waits: Vec<Wait>,
    timeout: Duration,
}

/// A batch an `acks=all` answer waits for.
struct Wait {
    /// Where its answer is: topic index and partition index within it.
    at: (usize, usize),
    partition: Arc<Partition>,
    last_offset: i64,
    leader_epoch: i32,
    min_insync: usize,
}

/// What a produce request gets.
pub(super) enum Outcome {
    /// acks=0: no response at all.
    Silent,
    /// Answered now.
    Ready(ProduceResponse),
    /// Answered when the in-sync replicas have the batches ([`finish`]).
    Waiting(Pending),
}

/// Handles a produce request: WRITE on each topic, and on the transactional id of a
/// transactional producer (else every partition is refused, as Kafka does).
pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: ProduceRequest,
) -> Outcome {
    let acks_valid = matches!(request.acks, -1..=1);
    let acks_all = request.acks == -1;
    // Transactional batches need WRITE on the request's transactional id: without one they
    // are refused too (Kafka's `hasTransactionalRecords` check), else a topic writer could open
    // a transaction no coordinator knows of and hold the last stable offset back for ever.
    let txn_refused = match request.transactional_id.as_deref() {
        Some(id) => !access.check_txn(AclOperation::Write, id),
        None => !access.is_unrestricted() && has_transactional_records(&request),
    };
    let mut waits = Vec::new();
    let responses = request
        .topic_data
        .into_iter()
        .enumerate()
        .map(|(t, topic)| {
            let name = topic.name.clone();
            // Counted once per topic, not per partition (metrics).
            let mut bytes_in = 0u64;
            let refused = if txn_refused {
                Some(ResponseError::TransactionalIdAuthorizationFailed)
            } else if !access.check_topic(AclOperation::Write, &name) {
                Some(ResponseError::TopicAuthorizationFailed)
            } else {
                None
            };
            let partition_responses = topic
                .partition_data
                .into_iter()
                .enumerate()
                .map(|(p, data)| {
                    let answer = PartitionProduceResponse::default().with_index(data.index);
                    if !acks_valid {
                        return answer.with_error_code(ResponseError::InvalidRequiredAcks.code());
                    }
                    if let Some(code) = refused {
                        return answer.with_error_code(code.code());
                    }
                    let (answer, wait) = produce_partition(
                        ctx,
                        version,
                        &name,
                        data.index,
                        data.records.as_deref(),
                        acks_all,
                        answer,
                    );
                    if answer.error_code == 0 {
                        bytes_in += data.records.as_ref().map_or(0, |r| r.len() as u64);
                    }
                    if let Some(mut wait) = wait {
                        wait.at = (t, p);
                        waits.push(wait);
                    }
                    answer
                })
                .collect();
            ctx.metrics.topics.bytes_in(&name, bytes_in);
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    let mut response = ProduceResponse::default().with_responses(responses);
    if version >= 10 {
        point_at_new_leaders(ctx, &mut response);
    }
    if request.acks == 0 {
        Outcome::Silent
    } else if waits.is_empty() {
        Outcome::Ready(response)
    } else {
        Outcome::Waiting(Pending {
            response,
            version,
            waits,
            timeout: Duration::from_millis(request.timeout_ms.max(0) as u64),
        })
    }
}

/// Whether a batch of the request is transactional: every batch's header is looked at (a
/// truncated rest is left to the append's validation).
fn has_transactional_records(request: &ProduceRequest) -> bool {
    request
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .filter_map(|p| p.records.as_deref())
        .any(|records| {
            let mut rest = records;
            while let Ok(header) = BatchHeader::parse(rest) {
                if header.is_transactional() {
                    return true;
                }
                match rest.get(header.total_bytes()..) {
                    Some(next) => rest = next,
                    None => break,
                }
            }
            false
        })
}

/// KIP-951: a partition answered NOT_LEADER_OR_FOLLOWER names its current leader and epoch, and
/// the response carries that broker's endpoint, so the client retries there without a metadata
/// round trip.
fn point_at_new_leaders(ctx: &Context, response: &mut ProduceResponse) {
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::produce_response::{LeaderIdAndEpoch, NodeEndpoint};
    let Some(node) = ctx.manager.cluster() else {
        return;
    };
    let state = node.state().borrow().clone();
    let mut endpoints = std::collections::BTreeSet::new();
    for topic in &mut response.responses {
        for answer in &mut topic.partition_responses {
            if answer.error_code != ResponseError::NotLeaderOrFollower.code() {
                continue;
            }
            if let Some(p) = state.partition(topic.name.as_str(), answer.index)
                && p.leader >= 0
            {
                answer.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(p.leader))
                    .with_leader_epoch(p.leader_epoch);
                endpoints.insert(p.leader);
            }
        }
    }
    response.node_endpoints = endpoints
        .into_iter()
        .filter_map(|id| state.brokers.get(&id))
        .map(|b| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
}

/// Waits until the in-sync replicas have every batch, then answers: a batch whose leader was
/// deposed first gets NOT_LEADER_OR_FOLLOWER, one whose wait timed out REQUEST_TIMED_OUT (the
/// client retries both; an idempotent producer's retry is deduplicated).
pub(super) async fn finish(pending: Pending) -> ProduceResponse {
    let Pending {
        mut response,
        version,
        waits,
        timeout,
    } = pending;
    let deadline = tokio::time::Instant::now() + timeout;
    for wait in waits {
        let Wait {
            at: (t, p),
            partition,
            last_offset,
            leader_epoch,
            min_insync,
        } = wait;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let code = match partition
            .wait_committed(last_offset, leader_epoch, left)
            .await
        {
            // Kafka's check after the append: the ISR that has it may have shrunk meanwhile.
            CommitWait::Committed if partition.assignment().isr.len() < min_insync => {
                ResponseError::NotEnoughReplicasAfterAppend
            }
            CommitWait::Committed => continue,
            CommitWait::NotLeader => ResponseError::NotLeaderOrFollower,
            CommitWait::TimedOut => ResponseError::RequestTimedOut,
        };
        let answer = &mut response.responses[t].partition_responses[p];
        answer.error_code = code.code();
        answer.base_offset = -1;
        if version >= 8 {
            answer.error_message = Some(str_bytes(format!(
                "{}-{}: the in-sync replicas did not confirm offset {last_offset}",
                partition.topic(),
                partition.index()
            )));
        }
    }
    response
}

/// The partition's answer, and what an `acks=all` answer must wait for.
type Produced = (PartitionProduceResponse, Option<Wait>);

fn produce_partition(
    ctx: &Context,
    version: i16,
    topic: &str,
    index: i32,
    records: Option<&[u8]>,
    acks_all: bool,
    answer: PartitionProduceResponse,
) -> Produced {
    let mut wait = None;
    let result = validate_topic_name(topic).and_then(|()| {
        let partition = ctx.manager.leader_partition(topic, index)?;
        let records = records.unwrap_or_default();
        let now = now_ms();
        let replicated = partition.assignment().replicas.len() > 1;
        let min_insync = ctx
            .manager
            .topic(topic)
            .map_or(1, |t| t.config.min_insync_replicas());
        if acks_all && replicated {
            let isr = partition.assignment().isr.len();
            if isr < min_insync {
                return Err(Error::NotEnoughReplicas(format!(
                    "{topic}-{index} has {isr} in-sync replicas, min.insync.replicas is {min_insync}"
                )));
            }
        }
        // Page-cache writes stay on this thread; a roll or an fsync leaves the async workers.
        let (info, epoch) = if partition.append_would_block(records.len(), now) {
            off_the_workers(|| partition.append_at_epoch(records, now))?
        } else {
            partition.append_at_epoch(records, now)?
        };
        if acks_all && replicated {
            wait = Some(Wait {
                at: (0, 0),
                partition: Arc::clone(&partition),
                last_offset: info.last_offset,
                leader_epoch: epoch,
                min_insync,
            });
        }
        Ok((info, partition.log_start_offset()))
    });
    let answer = match result {
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
            wait = None;
            answer
        }
    };
    (answer, wait)
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
