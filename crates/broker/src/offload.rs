//! The offload pipeline: in the background, sealed segments of topics with
//! `remote.storage.enable=true` become Parquet files in the lake (upload first, manifest commit
//! second); only then may local retention delete them. Uploads retry with backoff while object
//! storage is down; produce and fetch never wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use strata_lake::{Lake, Manifest, OffloadError, TopicMetadata};

use crate::lake_view::LakeView;
use uuid::Uuid;

use crate::handler::now_ms;
use crate::manager::{PartitionManager, Topic};
use crate::partition::Partition;

/// How often the pipeline looks for sealed segments.
pub(crate) const OFFLOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Most partitions converted at once: each holds a segment and its Parquet file in memory.
const OFFLOAD_PARALLEL_MAX: usize = 4;
/// Longest wait between retries of a failing partition.
const BACKOFF_MAX_MS: i64 = 30_000;

/// Per-partition pipeline state.
#[derive(Debug, Default)]
struct PartitionState {
    /// The committed manifest, once loaded.
    manifest: Option<Manifest>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    retry_at_ms: i64,
    /// When the current run of failures began.
    failing_since_ms: i64,
    /// Whether the partition's folder may hold an offload error file (unknown at start).
    error_shown: Option<bool>,
}

/// Runs the pipeline until the task is aborted. Partitions are offloaded concurrently, as many at
/// once as the machine has cores (at most [`OFFLOAD_PARALLEL_MAX`]), so conversion to Parquet (a
/// blocking task per segment) uses every core when several partitions have sealed segments.
pub(crate) async fn run(manager: Arc<PartitionManager>, view: Arc<LakeView>) {
    let lake = view.lake().clone();
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(OFFLOAD_PARALLEL_MAX);
    let mut states: HashMap<(Uuid, i32), PartitionState> = HashMap::new();
    let mut described: HashMap<Uuid, (i32, String)> = HashMap::new();
    let mut ticks = tokio::time::interval(OFFLOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut due = Vec::new();
        for topic in manager.topics() {
            if topic.config.get("remote.storage.enable") != "true" {
                continue;
            }
            if let Err(e) = describe_topic(&lake, &view, &topic, &mut described).await {
                tracing::warn!(topic = %topic.name, error = %e, "writing topic metadata to the lake failed; retrying");
                continue;
            }
            let now = now_ms();
            for partition in &topic.partitions {
                let key = (topic.topic_id, partition.index());
                let state = states.remove(&key).unwrap_or_default();
                if now < state.retry_at_ms {
                    states.insert(key, state);
                    continue;
                }
                due.push((key, Arc::clone(&topic), Arc::clone(partition), state));
            }
        }
        let (lake, view) = (&lake, &view);
        let mut finished = stream::iter(due.into_iter().map(
            |(key, topic, partition, mut state)| async move {
                let result = offload_partition(lake, view, &topic, &partition, &mut state).await;
                (key, topic, partition, state, result)
            },
        ))
        .buffer_unordered(parallel);
        while let Some((key, topic, partition, mut state, result)) = finished.next().await {
            match result {
                Ok(()) => state.failures = 0,
                Err(e) => {
                    let now = now_ms();
                    if state.failures == 0 {
                        state.failing_since_ms = now;
                    }
                    state.failures += 1;
                    let backoff = (1000i64 << state.failures.min(5)).min(BACKOFF_MAX_MS);
                    state.retry_at_ms = now + backoff;
                    // The manifest is reloaded on retry: the failed step may have committed.
                    state.manifest = None;
                    tracing::warn!(topic = %topic.name, partition = partition.index(), error = %e,
                        failures = state.failures, retry_in_ms = backoff, "offload failed; local data kept");
                    show_error(&partition, &mut state, e);
                }
            }
            if state.failures == 0 && state.error_shown != Some(false) {
                show_error(&partition, &mut state, String::new());
            }
            states.insert(key, state);
        }
    }
}

/// Writes (or, with no failures, removes) the partition's offload error file, which
/// `strata lake ls` shows.
fn show_error(partition: &Partition, state: &mut PartitionState, error: String) {
    let written = partition.dir().map_err(|e| e.to_string()).and_then(|dir| {
        let result = if state.failures == 0 {
            OffloadError::clear(&dir)
        } else {
            OffloadError {
                failures: state.failures,
                error,
                since_ms: state.failing_since_ms,
                retry_at_ms: state.retry_at_ms,
            }
            .write(&dir)
        };
        result.map_err(|e| e.to_string())
    });
    match written {
        Ok(()) => state.error_shown = Some(state.failures > 0),
        Err(e) => tracing::warn!(topic = partition.topic(), partition = partition.index(),
            error = %e, "recording the offload's state failed"),
    }
}

/// Writes the topic's metadata to the lake when it is new or changed.
async fn describe_topic(
    lake: &Lake,
    view: &LakeView,
    topic: &Topic,
    described: &mut HashMap<Uuid, (i32, String)>,
) -> strata_lake::Result<()> {
    let configs = serde_json::to_string(&topic.overrides).expect("configs serialize");
    let current = (topic.partitions.len() as i32, configs);
    if described.get(&topic.topic_id) == Some(&current) {
        return Ok(());
    }
    // A topic deleted and created again under the same name starts a new history: the lake's
    // copy of the old incarnation goes (Kafka deletes a deleted topic's remote data too).
    if let Some(old) = lake.topic_metadata(&topic.name).await?
        && old.topic_id != topic.topic_id.to_string()
    {
        tracing::info!(topic = %topic.name, old_id = %old.topic_id, "removing the lake data of an older topic of this name");
        for partition in 0..old.partitions {
            lake.delete_partition(&topic.name, partition).await?;
        }
        view.forget_topic(&topic.name);
    }
    lake.put_topic_metadata(&TopicMetadata {
        topic: topic.name.clone(),
        topic_id: topic.topic_id.to_string(),
        partitions: current.0,
        configs: topic.overrides.clone(),
    })
    .await?;
    described.insert(topic.topic_id, current);
    Ok(())
}

async fn offload_partition(
    lake: &Lake,
    view: &LakeView,
    topic: &Topic,
    partition: &Partition,
    state: &mut PartitionState,
) -> Result<(), String> {
    let name = &topic.name;
    let index = partition.index();
    let mut manifest = match state.manifest.take() {
        Some(m) => m,
        None => lake
            .manifest(name, index)
            .await
            .map_err(|e| e.to_string())?,
    };
    let start = partition.log_start_offset();
    let mut next = manifest.next_offset().unwrap_or(start).max(start);
    partition
        .set_offloaded_offset(manifest.next_offset().unwrap_or(-1))
        .map_err(|e| e.to_string())?;
    let segments = partition
        .sealed_segments_from(next)
        .map_err(|e| e.to_string())?;
    let waiting_bytes: usize = segments.iter().map(|s| s.slice.len()).sum();
    if segments.len() > 1 {
        tracing::info!(topic = %name, partition = index, segments = segments.len(), bytes = waiting_bytes, "offload lag");
    }
    for segment in segments {
        let slice = segment.slice.clone();
        let bytes = tokio::task::spawn_blocking(move || slice.read())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let updated = lake
            .offload(name, index, &manifest, Bytes::from(bytes), next)
            .await
            .map_err(|e| e.to_string());
        manifest = updated?;
        view.set_manifest(name, index, &manifest);
        next = segment.next_offset;
        partition
            .set_offloaded_offset(next)
            .map_err(|e| e.to_string())?;
        tracing::debug!(topic = %name, partition = index, next_offset = next, "offloaded segment");
    }
    let config = topic.config.log_config();
    manifest = lake
        .apply_retention(
            name,
            index,
            &manifest,
            now_ms(),
            config.retention_ms,
            config.retention_bytes,
        )
        .await
        .map_err(|e| e.to_string())?;
    view.set_manifest(name, index, &manifest);
    state.manifest = Some(manifest);
    Ok(())
}
