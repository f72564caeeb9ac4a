//! Fetch: stored batches served as they are, with long polling on `max_wait_ms` / `min_bytes`.
//!
//! Limits (KIP-74): the response stops growing at `max_bytes`, each partition at
//! `partition_max_bytes`, but the first batch of the first partition with data is returned whole
//! even when larger, so a big record never stalls a consumer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use strata_log::batch::{LOG_OVERHEAD, peek_offset_and_size};
use tokio::sync::watch;

use super::Context;
use crate::error::Error;
use crate::partition::Partition;

/// Longest a fetch may wait, whatever the client asks: bounds how long a task is held.
pub(crate) const FETCH_WAIT_MS_MAX: i32 = 30_000;

pub(crate) async fn handle(
    ctx: &Arc<Context>,
    version: i16,
    request: FetchRequest,
) -> FetchResponse {
    // Fetch sessions (KIP-227) are not kept: session id 0 tells the client to send full requests.
    if version >= 7 && request.session_id != 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let wait = Duration::from_millis(request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let partitions = resolve(ctx, &request);
    // Subscribe before the first read so no append between read and wait is missed.
    let mut watchers: Vec<watch::Receiver<i64>> = partitions
        .iter()
        .flatten()
        .flatten()
        .map(|p| p.watch_high_watermark())
        .collect();
    loop {
        let (response, bytes, errors) = read_once(ctx, version, &request, &partitions).await;
        let done = bytes >= request.min_bytes.max(0) as usize
            || errors
            || watchers.is_empty()
            || tokio::time::Instant::now() >= deadline;
        if done {
            return response;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            (result, _, _) = changed => if result.is_err() { return response },
            () = tokio::time::sleep_until(deadline) => {}
            () = ctx.shutdown.cancelled() => return response,
        }
    }
}

/// Each requested partition, `None` when unknown: topics × partitions in request order.
type Resolved = Vec<Vec<Option<Arc<Partition>>>>;

fn resolve(ctx: &Context, request: &FetchRequest) -> Vec<Vec<Option<Arc<Partition>>>> {
    request
        .topics
        .iter()
        .map(|topic| {
            let found = ctx.manager.topic(&topic.topic);
            topic
                .partitions
                .iter()
                .map(|p| {
                    found.as_ref().and_then(|t| {
                        usize::try_from(p.partition)
                            .ok()
                            .and_then(|i| t.partitions.get(i).cloned())
                    })
                })
                .collect()
        })
        .collect()
}

/// One pass over the partitions: the response, the record bytes in it, and whether any partition
/// has an error (which answers at once).
async fn read_once(
    ctx: &Context,
    version: i16,
    request: &FetchRequest,
    partitions: &Resolved,
) -> (FetchResponse, usize, bool) {
    let mut budget = request.max_bytes.max(0) as usize;
    let mut total = 0usize;
    let mut errors = false;
    let mut responses = Vec::with_capacity(request.topics.len());
    for (topic, resolved) in request.topics.iter().zip(partitions) {
        let mut datas = Vec::with_capacity(topic.partitions.len());
        for (wanted, partition) in topic.partitions.iter().zip(resolved) {
            let limit = (wanted.partition_max_bytes.max(0) as usize).min(budget);
            let data = read_partition(
                ctx,
                partition.as_deref(),
                wanted.partition,
                wanted.fetch_offset,
                limit,
                total == 0,
            )
            .await;
            errors |= data.error_code != 0;
            let size = data.records.as_ref().map_or(0, Bytes::len);
            total += size;
            budget = budget.saturating_sub(size);
            datas.push(data);
        }
        let mut response = FetchableTopicResponse::default().with_partitions(datas);
        response.topic = topic.topic.clone();
        if version >= 13 {
            response.topic_id = topic.topic_id;
        }
        responses.push(response);
    }
    (
        FetchResponse::default().with_responses(responses),
        total,
        errors,
    )
}

async fn read_partition(
    ctx: &Context,
    partition: Option<&Partition>,
    index: i32,
    offset: i64,
    limit: usize,
    first: bool,
) -> PartitionData {
    let data = PartitionData::default().with_partition_index(index);
    let Some(partition) = partition else {
        return data.with_error_code(ResponseError::UnknownTopicOrPartition.code());
    };
    let local_start = partition.log_start_offset();
    let log_start = ctx
        .lake
        .start_offset(partition.topic(), index)
        .map_or(local_start, |s| s.min(local_start));
    let data = data
        .with_high_watermark(partition.high_watermark())
        .with_last_stable_offset(partition.high_watermark())
        .with_log_start_offset(log_start);
    if offset == partition.high_watermark() || (limit == 0 && !first) {
        return data.with_records(Some(Bytes::new()));
    }
    if offset < local_start && offset >= log_start {
        return read_lake(ctx, partition, data, offset, limit, first).await;
    }
    match partition.read(offset, limit) {
        Ok(read) => {
            let records = read
                .records
                .map(|r| fit(r, limit, first))
                .unwrap_or_default();
            data.with_high_watermark(read.high_watermark)
                .with_last_stable_offset(read.high_watermark)
                .with_records(Some(records))
        }
        Err(e) => {
            if !matches!(e, Error::Log(strata_log::Error::OffsetOutOfRange { .. })) {
                tracing::warn!(topic = partition.topic(), partition = index, offset, error = %e, "fetch failed");
            }
            data.with_error_code(e.code().code())
        }
    }
}

/// A historic read from the lake. While object storage is unreachable the client gets
/// KAFKA_STORAGE_ERROR, which it retries; a file that is missing or corrupt is named in the log.
async fn read_lake(
    ctx: &Context,
    partition: &Partition,
    data: PartitionData,
    offset: i64,
    limit: usize,
    first: bool,
) -> PartitionData {
    match ctx
        .lake
        .read(partition.topic(), partition.index(), offset, limit)
        .await
    {
        Ok(Some(records)) => data.with_records(Some(fit(records, limit, first))),
        Ok(None) => data.with_error_code(ResponseError::OffsetOutOfRange.code()),
        Err(_)
            if ctx
                .lake
                .start_offset(partition.topic(), partition.index())
                .is_none_or(|start| offset < start) =>
        {
            // Remote retention removed the file while it was read.
            data.with_error_code(ResponseError::OffsetOutOfRange.code())
        }
        Err(e) => {
            tracing::warn!(topic = partition.topic(), partition = partition.index(), offset, error = %e, "lake read failed");
            // Unreachable storage is retriable; a corrupt file is not, and never yields records.
            let code = match e {
                strata_lake::Error::Storage(_) => ResponseError::KafkaStorageError,
                _ => ResponseError::CorruptMessage,
            };
            data.with_error_code(code.code())
        }
    }
}

/// Keeps the stored bytes within `limit`, except the whole first batch of the first partition
/// with data; a later partition whose first batch does not fit returns nothing this time.
fn fit(records: Bytes, limit: usize, first: bool) -> Bytes {
    if records.len() <= limit || first {
        return records;
    }
    let first_batch = match records.get(..LOG_OVERHEAD) {
        Some(prefix) => {
            LOG_OVERHEAD
                + peek_offset_and_size(prefix.try_into().expect("12 bytes"))
                    .1
                    .max(0) as usize
        }
        None => records.len(),
    };
    if first_batch > limit {
        Bytes::new()
    } else {
        records.slice(..limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..12].copy_from_slice(&((len - LOG_OVERHEAD) as i32).to_be_bytes());
        b
    }

    #[test]
    fn the_first_batch_always_fits_later_ones_only_within_the_limit() {
        let two: Vec<u8> = [batch_of(100), batch_of(100)].concat();
        assert_eq!(
            fit(Bytes::from(two.clone()), 50, true).len(),
            200,
            "first partition: whole"
        );
        assert_eq!(
            fit(Bytes::from(two.clone()), 50, false).len(),
            0,
            "first batch too big"
        );
        assert_eq!(
            fit(Bytes::from(two.clone()), 150, false).len(),
            150,
            "partial trailing batch"
        );
        assert_eq!(fit(Bytes::from(two), 500, false).len(), 200);
    }
}
