//! The offload pipeline: in the background, sealed segments of topics with
//! `remote.storage.enable=true` become Parquet files in the lake (upload first, manifest commit
//! second); only then may local retention delete them, and it runs for the partition right after
//! the commit. Uploads retry with backoff while object storage is down; produce and fetch never
//! wait for it.
//!
//! A segment whose bytes on disk are corrupt (bit rot) cannot be converted: it is reported (a
//! warning per attempt, and `offload-error.json` for `strata lake ls`) and retried with backoff,
//! never skipped, so the partition's later segments wait and nothing of it is deleted locally.
//! Other partitions go on.
//!
//! In a cluster only a partition's leader writes it to the lake, and the lake enforces it: a new
//! leader first claims the partition (commits the manifest at its leader epoch, fencing every
//! earlier leader's commits) and removes what earlier leaders uploaded without committing; every
//! commit is made at the epoch the leadership was claimed at, after checking that this broker
//! still leads at that epoch, and is conditional on the manifest it was built on. Only records
//! below the high watermark are offloaded: every in-sync replica has them, so a failover never
//! loses what the lake holds. Followers read the manifests of the partitions they follow now and
//! then, so that their local retention deletes what the lake holds, and only that.
//!
//! The lake holds committed records only: a segment goes once every transaction with records
//! in it is decided (it lies below the last stable offset), and its control batches and the
//! batches of its aborted transactions (which the partition's log knows) are left out of the
//! file, whose manifest entry still covers the segment's offsets.
//!
//! The lake is kept fresh: once the oldest record below the last stable offset that no lake file
//! holds has waited `lake.target.lag.ms` (as this leader saw it), the leader uploads the records
//! not in the lake, up to the last stable offset or the end of the local segment holding the
//! first of them, as a *fresh piece* (`.parquet.fresh`), without rolling the segment. When the
//! segment seals, its sealed file replaces its pieces in one manifest commit. Local retention
//! only ever deletes what sealed files hold (the offloaded offset is the manifest's sealed next
//! offset, on leaders and followers alike): the sealed upload needs the segment. A piece that
//! local data cannot replace (below the local log start, or cut from segments that rolled
//! elsewhere on an earlier leader) is promoted: copied to a sealed name. Replaced pieces, and
//! files retention or DeleteRecords remove, stay in object storage for
//! `lake.fresh.delete.delay.ms` (running queries and Iceberg snapshots still read them), then
//! the leader deletes them.
//!
//! DeleteRecords on a tiered partition moves the local log start at once and leaves the lake to
//! this pipeline, the manifests' only writer: the leader commits the new log start to the
//! manifest (the files entirely below it are deleted, a file holding it stays and is filtered on
//! read) at its next pass, which the request wakes. A replica whose manifest holds a later log
//! start than its local log (a new leader, a follower) moves its local log start there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use strata_lake::iceberg::{IcebergTable, PartitionFiles};
use strata_lake::status::CorruptSegment;
use strata_lake::{FileEntry, Lake, Manifest, ManifestVersion, OffloadError, TopicMetadata};

use crate::lake_view::LakeView;
use uuid::Uuid;

use crate::clock::now_ms;
use crate::manager::{PartitionManager, Topic};
use crate::partition::Partition;

/// How often the pipeline looks for sealed segments.
pub(crate) const OFFLOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Most partitions converted at once. Each conversion holds about a row group and three upload
/// parts (see [`Lake::offload_segment`]), whatever the segment's size.
const OFFLOAD_PARALLEL_MAX: usize = 4;
/// Longest wait between retries of a failing partition.
const BACKOFF_MAX_MS: i64 = 30_000;
/// How often a follower reads the manifest of a partition it follows (a conditional read, no
/// transfer while it is unchanged): its local retention waits at most this much longer than the
/// leader's for what the lake holds.
const FOLLOWER_REFRESH_MS: i64 = 10_000;
/// Most followed partitions whose manifest is read per pass: with thousands of partitions the
/// reads spread out over passes instead of coming in bursts.
const FOLLOWER_REFRESHES_PER_PASS_MAX: usize = 64;
/// How often a leader looks again for uploads earlier leaders left uncommitted (after its claim,
/// which looks first): a deposed leader that was paused may finish an upload late.
const ORPHAN_SWEEP_INTERVAL_MS: i64 = 60_000;
/// Most sealed uploads and piece promotions of one partition in one pass: a partition far
/// behind goes on at the next pass (a second later) instead of holding its slot for hours.
const SEALED_STEPS_PER_PASS_MAX: usize = 64;

/// Why one partition's offload stopped.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The lake: object storage, a manifest, or a segment that cannot be converted.
    #[error(transparent)]
    Lake(#[from] strata_lake::Error),
    /// The partition: closed, or its log failed.
    #[error(transparent)]
    Partition(#[from] crate::error::Error),
    /// Opening a segment to read it.
    #[error(transparent)]
    Log(#[from] strata_log::Error),
    /// This broker stopped leading the partition during the pass: its upload was discarded, not
    /// committed; the next leader offloads those records. Not a failure.
    #[error("no longer the partition's leader")]
    Deposed,
}

/// What the pipeline does for a partition this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// This broker leads it: offload its sealed segments.
    Offload,
    /// This broker follows it: learn what the lake holds of it.
    Follow,
}

/// Per-partition pipeline state.
#[derive(Debug, Default)]
struct PartitionState {
    /// The committed manifest, once loaded.
    manifest: Option<Manifest>,
    /// The leader epoch this broker claimed the partition at in the lake (`None`: not claimed
    /// since it last became leader).
    claimed_epoch: Option<i32>,
    /// When uploads of earlier leaders were last looked for.
    swept_at_ms: i64,
    /// As follower: the version of the manifest last read, and when to read it again.
    followed_version: Option<ManifestVersion>,
    refresh_at_ms: i64,
    /// Consecutive failures, for the backoff.
    failures: u32,
    retry_at_ms: i64,
    /// When the current run of failures began.
    failing_since_ms: i64,
    /// Whether the partition's folder may hold an offload error file (unknown at start).
    error_shown: Option<bool>,
    /// As leader: when this broker first saw records below the last stable offset that no lake
    /// file holds (`None`: every such record is in the lake), for `lake.target.lag.ms`.
    pending_since_ms: Option<i64>,
    /// As leader: the claimed epoch and the live files last committed to the topic's Iceberg
    /// table (`None`: not yet since the claim, or the commit failed).
    in_table: Option<(i32, Vec<FileEntry>)>,
}

/// A partition whose live files the topic's Iceberg table does not hold yet: its index, the
/// epoch it was claimed at, and its manifest.
type Changed = (i32, i32, Manifest);

/// The Iceberg tables of the lake's topics (`<tier-url>/_iceberg/<topic>`), each derived from
/// its partitions' manifests: after a pass, the leader commits the partitions whose live files
/// changed as one snapshot per topic.
pub(crate) struct Tables {
    store: Arc<dyn ObjectStore>,
    tier_url: String,
    open: HashMap<String, IcebergTable>,
}

impl Tables {
    /// The tables of the lake in `store`, opened from `tier_url`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, tier_url: &str) -> Self {
        Self {
            store,
            tier_url: tier_url.to_string(),
            open: HashMap::new(),
        }
    }

    fn table(&mut self, topic: &str) -> strata_lake::Result<&IcebergTable> {
        if !self.open.contains_key(topic) {
            let table = IcebergTable::open(Arc::clone(&self.store), &self.tier_url, topic)?;
            self.open.insert(topic.to_string(), table);
        }
        Ok(&self.open[topic])
    }

    /// Deletes the table of an older topic of this name (its files are gone from the lake).
    async fn drop_table(&mut self, topic: &str) -> strata_lake::Result<()> {
        self.open.remove(topic);
        let prefix = object_store::path::Path::from(format!(
            "{}/{topic}/",
            strata_lake::iceberg::TABLES_FOLDER
        ));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .map_ok(|o| o.location)
            .try_collect()
            .await
            .map_err(|e| strata_lake::Error::Storage(e.to_string()))?;
        for object in objects {
            match self.store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(strata_lake::Error::Storage(e.to_string())),
            }
        }
        Ok(())
    }

    /// Commits the live files of `changed` partitions (`(partition, claimed epoch, manifest)`)
    /// of `topic` as one snapshot; returns whether the table holds them now. A failure is
    /// logged and left to the next pass, which finds the same partitions changed.
    async fn commit(
        &mut self,
        topic: &Topic,
        changed: &[Changed],
        metrics: &crate::metrics::LakeMetrics,
    ) -> bool {
        let retention_ms = topic.config.lake_snapshot_retention_ms();
        let table = match self.table(&topic.name) {
            Ok(table) => table,
            Err(e) => {
                tracing::warn!(topic = %topic.name, error = %e, "the topic has no Iceberg table");
                return false;
            }
        };
        let partitions: Vec<PartitionFiles<'_>> = changed
            .iter()
            .map(|(partition, epoch, manifest)| PartitionFiles {
                partition: *partition,
                leader_epoch: *epoch,
                files: &manifest.files,
            })
            .collect();
        match table.commit(&partitions, now_ms(), retention_ms).await {
            Ok(snapshot) => {
                if let Some(snapshot) = snapshot {
                    metrics
                        .table_commits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(topic = %topic.name, snapshot, partitions = changed.len(),
                        "committed a snapshot of the topic's Iceberg table");
                }
                true
            }
            Err(e @ strata_lake::Error::FencedLeaderEpoch { .. }) => {
                tracing::info!(topic = %topic.name, error = %e,
                    "a later leader wrote a partition of the Iceberg table; this broker leaves it");
                false
            }
            Err(e) => {
                metrics
                    .table_commit_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(topic = %topic.name, error = %e,
                    "committing to the topic's Iceberg table failed; retrying at the next pass");
                false
            }
        }
    }
}

/// Runs the pipeline until the task is aborted. Partitions are offloaded concurrently, as many at
/// once as the machine has cores (at most [`OFFLOAD_PARALLEL_MAX`]), so conversion to Parquet (a
/// blocking task per segment) uses every core when several partitions have sealed segments.
pub(crate) async fn run(manager: Arc<PartitionManager>, view: Arc<LakeView>, mut tables: Tables) {
    let lake = view.lake().clone();
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(OFFLOAD_PARALLEL_MAX);
    let mut states: HashMap<(Uuid, i32), PartitionState> = HashMap::new();
    let mut described: HashMap<Uuid, (i32, String)> = HashMap::new();
    let mut ticks = tokio::time::interval(OFFLOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = view.log_start_wanted() => {}
        }
        let mut due = Vec::new();
        let mut refreshes = 0;
        for topic in manager.topics() {
            if topic.config.get("remote.storage.enable") != "true" {
                continue;
            }
            if let Err(e) = describe_topic(&lake, &view, &topic, &mut described, &mut tables).await
            {
                tracing::warn!(topic = %topic.name, error = %e, "writing topic metadata to the lake failed; retrying");
                continue;
            }
            let now = now_ms();
            for partition in &topic.partitions {
                let key = (topic.topic_id, partition.index());
                let mut state = states.remove(&key).unwrap_or_default();
                // Only a partition's leader writes it to the lake: one writer per partition.
                let job = if partition.is_leader() {
                    (now >= state.retry_at_ms).then_some(Job::Offload)
                } else {
                    state.claimed_epoch = None;
                    state.pending_since_ms = None;
                    let refresh =
                        now >= state.refresh_at_ms && refreshes < FOLLOWER_REFRESHES_PER_PASS_MAX;
                    refreshes += usize::from(refresh);
                    refresh.then_some(Job::Follow)
                };
                match job {
                    Some(job) => {
                        due.push((key, Arc::clone(&topic), Arc::clone(partition), state, job))
                    }
                    None => {
                        states.insert(key, state);
                    }
                }
            }
        }
        let (lake, view) = (&lake, &view);
        let mut finished = stream::iter(due.into_iter().map(
            |(key, topic, partition, mut state, job)| async move {
                let result = match job {
                    Job::Offload => {
                        offload_partition(lake, view, &topic, &partition, &mut state).await
                    }
                    Job::Follow => {
                        follow_partition(lake, view, &topic, &partition, &mut state).await
                    }
                };
                (key, topic, partition, state, job, result)
            },
        ))
        .buffer_unordered(parallel);
        // Per topic: the partitions whose live files the Iceberg table does not hold yet.
        let mut changed: HashMap<Uuid, (Arc<Topic>, Vec<Changed>)> = HashMap::new();
        while let Some((key, topic, partition, mut state, job, result)) = finished.next().await {
            if result.is_ok()
                && job == Job::Offload
                && let (Some(manifest), Some(epoch)) = (&state.manifest, state.claimed_epoch)
                && state
                    .in_table
                    .as_ref()
                    .is_none_or(|(e, files)| *e != epoch || *files != manifest.files)
            {
                changed
                    .entry(topic.topic_id)
                    .or_insert_with(|| (Arc::clone(&topic), Vec::new()))
                    .1
                    .push((partition.index(), epoch, manifest.clone()));
            }
            if state.claimed_epoch.is_none() {
                state.in_table = None;
            }
            match result {
                Ok(()) => state.failures = 0,
                Err(e) if job == Job::Follow => {
                    // Not an offload failure: the follower reads again at its next refresh.
                    tracing::warn!(topic = %topic.name, partition = partition.index(), error = %e,
                        "reading the lake's manifest of a followed partition failed; local data kept");
                }
                Err(Failure::Lake(e @ strata_lake::Error::FencedLeaderEpoch { .. })) => {
                    // Deposed: a later leader owns the partition in the lake. Not a failure.
                    tracing::info!(topic = %topic.name, partition = partition.index(), error = %e,
                        "a later leader has claimed the partition in the lake; this broker stops offloading it");
                    state.failures = 0;
                    state.claimed_epoch = None;
                    state.manifest = None;
                }
                Err(Failure::Deposed) => {
                    state.failures = 0;
                    state.claimed_epoch = None;
                    state.manifest = None;
                }
                Err(e) => {
                    view.metrics()
                        .upload_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    record_failure(&topic, &partition, &mut state, &e)
                }
            }
            if state.failures == 0 && state.error_shown != Some(false) {
                show_error(&partition, &mut state, None);
            }
            states.insert(key, state);
        }
        for (topic_id, (topic, partitions)) in changed {
            if !tables.commit(&topic, &partitions, view.metrics()).await {
                continue;
            }
            for (index, epoch, manifest) in partitions {
                if let Some(state) = states.get_mut(&(topic_id, index)) {
                    state.in_table = Some((epoch, manifest.files));
                }
            }
        }
    }
}

/// Backs the partition off, logs the failure (once per attempt, so once per backoff) and shows it
/// to `strata lake ls`.
fn record_failure(topic: &Topic, partition: &Partition, state: &mut PartitionState, e: &Failure) {
    let now = now_ms();
    if state.failures == 0 {
        state.failing_since_ms = now;
    }
    state.failures += 1;
    let backoff = (1000i64 << state.failures.min(5)).min(BACKOFF_MAX_MS);
    state.retry_at_ms = now + backoff;
    // The manifest is reloaded, and the partition claimed again, on retry: the failed step may
    // have committed, or another writer may have.
    state.manifest = None;
    state.claimed_epoch = None;
    let corrupt = match e {
        Failure::Lake(strata_lake::Error::CorruptSegment {
            segment,
            offset,
            position,
            ..
        }) => {
            tracing::warn!(topic = %topic.name, partition = partition.index(), segment = %segment,
                offset, position, error = %e, failures = state.failures, retry_in_ms = backoff,
                "a segment cannot be offloaded: its bytes on disk are corrupt; it and the partition's later segments are kept locally");
            Some(CorruptSegment {
                segment: segment.clone(),
                offset: *offset,
                position: *position,
            })
        }
        _ => {
            tracing::warn!(topic = %topic.name, partition = partition.index(), error = %e,
                failures = state.failures, retry_in_ms = backoff, "offload failed; local data kept");
            None
        }
    };
    show_error(partition, state, Some((e.to_string(), corrupt)));
}

/// Writes (or, with no failures, removes) the partition's offload error file, which
/// `strata lake ls` shows.
fn show_error(
    partition: &Partition,
    state: &mut PartitionState,
    error: Option<(String, Option<CorruptSegment>)>,
) {
    let written = partition.dir().map_err(|e| e.to_string()).and_then(|dir| {
        let result = match error {
            None => OffloadError::clear(&dir),
            Some((error, corrupt_segment)) => OffloadError {
                failures: state.failures,
                error,
                since_ms: state.failing_since_ms,
                retry_at_ms: state.retry_at_ms,
                corrupt_segment,
            }
            .write(&dir),
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
    tables: &mut Tables,
) -> strata_lake::Result<()> {
    let configs = serde_json::to_string(&topic.overrides).expect("configs serialize");
    let current = (topic.partition_count, configs);
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
        tables.drop_table(&topic.name).await?;
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

/// One leader's pass over one partition: what each step needs.
struct Pass<'a> {
    lake: &'a Lake,
    view: &'a LakeView,
    name: &'a str,
    partition: &'a Arc<Partition>,
    /// The epoch this broker claimed the partition at in the lake.
    epoch: i32,
}

impl Pass<'_> {
    /// Commits an uploaded file (see [`Lake::commit_file`]) and shows the new manifest to the
    /// read path, unless this broker no longer leads at the pass's epoch: the upload is then
    /// discarded, and [`Failure::Deposed`] ends the pass.
    async fn commit(&self, manifest: &Manifest, entry: FileEntry) -> Result<Manifest, Failure> {
        let index = self.partition.index();
        if self.partition.leading_epoch() != Some(self.epoch) {
            tracing::info!(topic = %self.name, partition = index, epoch = self.epoch,
                "no longer the leader: the upload is discarded, not committed");
            self.lake.discard_upload(self.name, index, &entry).await?;
            return Err(Failure::Deposed);
        }
        let committed = self
            .lake
            .commit_file(self.name, index, manifest, entry, self.epoch, now_ms())
            .await?;
        self.view.set_manifest(self.name, index, &committed);
        Ok(committed)
    }

    /// Promotes the first fresh piece (see [`Lake::promote_piece`]), as [`Pass::commit`] does.
    async fn promote(&self, manifest: &Manifest) -> Result<Manifest, Failure> {
        let index = self.partition.index();
        if self.partition.leading_epoch() != Some(self.epoch) {
            return Err(Failure::Deposed);
        }
        let promoted = self
            .lake
            .promote_piece(self.name, index, manifest, self.epoch, now_ms())
            .await?;
        tracing::info!(topic = %self.name, partition = index,
            piece = ?manifest.fresh_pieces().first().map(|p| &p.path),
            "promoted a fresh piece that local data cannot replace to a sealed file");
        self.view.set_manifest(self.name, index, &promoted);
        Ok(promoted)
    }
}

/// Offloads the partition as its leader: sealed segments past the manifest's sealed files and
/// below the last stable offset, one at a time, each committed before the next, with local
/// retention after each commit; then a fresh piece if one is due; then remote retention and
/// the deletion of retired files. A new leadership first claims the partition in the lake.
async fn offload_partition(
    lake: &Lake,
    view: &LakeView,
    topic: &Topic,
    partition: &Arc<Partition>,
    state: &mut PartitionState,
) -> Result<(), Failure> {
    let name = &topic.name;
    let index = partition.index();
    // Read with the role: the epoch of this broker's leadership, never a successor's.
    let Some(epoch) = partition.leading_epoch() else {
        return Ok(());
    };
    let mut manifest = match state.manifest.take() {
        Some(m) if state.claimed_epoch == Some(epoch) => m,
        _ => claim(lake, name, index, epoch, state).await?,
    };
    view.set_manifest(name, index, &manifest);
    let now = now_ms();
    // At every claim (a crashed broker's pieces are left at its own epoch, single brokers
    // included), and now and then once earlier leaders exist.
    let swept_ago_ms = now.saturating_sub(state.swept_at_ms);
    if state.swept_at_ms == i64::MIN || (epoch > 0 && swept_ago_ms >= ORPHAN_SWEEP_INTERVAL_MS) {
        let removed = lake.remove_orphans(name, index, &manifest).await?;
        if !removed.is_empty() {
            tracing::info!(topic = %name, partition = index, files = ?removed,
                "removed uploads that were never committed (earlier leaders', or pieces of a crash)");
        }
        state.swept_at_ms = now;
    }
    let delete_delay_ms = topic.config.lake_fresh_delete_delay_ms();
    // Read before the log start DeleteRecords asked for (which it records before moving the
    // local start): a start moved by DeleteRecords is then in the manifest before it is used.
    let start = partition.log_start_offset();
    manifest = commit_log_start(lake, view, name, index, &manifest, epoch, delete_delay_ms).await?;
    follow_lake_log_start(partition, manifest.log_start_offset).await;
    partition.set_offloaded_offset(manifest.sealed_next_offset().unwrap_or(-1))?;
    let pass = Pass {
        lake,
        view,
        name,
        partition,
        epoch,
    };
    manifest = offload_sealed(&pass, manifest, start).await?;
    let target_lag_ms = topic.config.lake_target_lag_ms();
    manifest = offload_fresh(&pass, manifest, start, state, target_lag_ms).await?;
    let config = topic.config.log_config();
    manifest = lake
        .apply_retention(
            name,
            index,
            &manifest,
            epoch,
            now_ms(),
            config.retention_ms,
            config.retention_bytes,
        )
        .await?;
    manifest = lake
        .delete_retired(name, index, &manifest, epoch, now_ms(), delete_delay_ms)
        .await?;
    view.set_manifest(name, index, &manifest);
    state.manifest = Some(manifest);
    Ok(())
}

/// Uploads the sealed segments below the last stable offset that sealed files do not hold yet,
/// each as a sealed file replacing the fresh pieces it covers, and promotes the pieces local data
/// cannot replace: those below the local log start `start`, and those a segment ends inside
/// (cut on a leader whose segments rolled elsewhere). Local retention runs after each commit.
async fn offload_sealed(
    pass: &Pass<'_>,
    mut manifest: Manifest,
    start: i64,
) -> Result<Manifest, Failure> {
    let (name, partition) = (pass.name, pass.partition);
    let index = partition.index();
    let mut next = manifest
        .sealed_next_offset()
        .unwrap_or(start)
        .max(start)
        .max(manifest.log_start_offset);
    // Only what every in-sync replica has (any later leader holds the same records), and only
    // decided transactions: below the last stable offset.
    let last_stable = partition.last_stable_offset();
    let waiting: Vec<_> = partition
        .sealed_segments_from(next)?
        .into_iter()
        .take_while(|s| s.next_offset <= last_stable)
        .collect();
    if waiting.len() > 1 {
        let bytes: usize = waiting.iter().map(|s| s.slice.len()).sum();
        tracing::info!(topic = %name, partition = index, segments = waiting.len(), bytes, "offload lag");
    }
    for _ in 0..SEALED_STEPS_PER_PASS_MAX {
        let segment = partition.sealed_segments_from(next)?.into_iter().next();
        let segment_end = segment.as_ref().map(|s| s.next_offset);
        let step = sealed_step(manifest.fresh_pieces(), start, segment_end, last_stable);
        let segment = match (step, segment) {
            (SealedStep::Promote, _) => {
                manifest = pass.promote(&manifest).await?;
                next = next.max(manifest.sealed_next_offset().unwrap_or(next));
                continue;
            }
            (SealedStep::Upload, Some(segment)) => segment,
            (SealedStep::Upload | SealedStep::Stop, _) => break,
        };
        // KIP-956: `remote.log.manager.copy.max.bytes.per.second`, broker-wide.
        pass.view
            .copy_limit()
            .acquire(segment.slice.len() as u64)
            .await;
        let file = segment.slice.open()?;
        // The lake holds committed records only: the segment's aborted transactions stay out.
        let aborted = partition.aborted_between(next, segment.next_offset)?;
        let uploaded = pass
            .lake
            .upload_segment(name, index, &manifest, file, &aborted, next, pass.epoch)
            .await?;
        if let Some(uploaded) = uploaded {
            let entry = uploaded.entry.clone();
            manifest = pass.commit(&manifest, uploaded.entry).await?;
            pass.view.metrics().uploaded(&entry);
            tracing::debug!(topic = %name, partition = index, next_offset = segment.next_offset,
                peak_buffered_bytes = uploaded.peak_buffered_bytes, "offloaded segment");
        }
        next = segment.next_offset;
        partition.set_offloaded_offset(next)?;
        apply_local_retention(partition).await;
    }
    Ok(manifest)
}

/// The next step of the sealed uploads (see [`sealed_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SealedStep {
    /// Promote the first fresh piece: local data cannot replace it.
    Promote,
    /// Upload the first sealed segment past the sealed files.
    Upload,
    /// Nothing more to do this pass.
    Stop,
}

/// What the sealed uploads do next, given the live fresh `pieces`, the local log start, the end
/// (next offset) of the first local sealed segment past the sealed files (`None`: none) and the
/// last stable offset. A piece below the local log start is promoted (no local segment can
/// replace it), and so is every piece up to one the segment ends inside (cut by a leader whose
/// segments rolled elsewhere: the segment's file would end inside it), one at a time; a segment
/// that lies below the last stable offset is uploaded.
fn sealed_step(
    pieces: &[FileEntry],
    local_start: i64,
    segment_end: Option<i64>,
    last_stable: i64,
) -> SealedStep {
    if pieces.first().is_some_and(|p| p.base_offset < local_start) {
        return SealedStep::Promote;
    }
    let Some(end) = segment_end.filter(|&end| end <= last_stable) else {
        return SealedStep::Stop;
    };
    if pieces
        .iter()
        .any(|p| p.base_offset < end && p.last_offset >= end)
    {
        SealedStep::Promote
    } else {
        SealedStep::Upload
    }
}

/// Uploads the records below the last stable offset that no lake file holds as one fresh piece
/// once the oldest of them has waited `target_lag_ms` (see [`fresh_piece_due`]): from the
/// manifest's next offset to the last stable offset or the end of the local segment holding
/// that offset, whichever comes first. No segment is rolled for it.
async fn offload_fresh(
    pass: &Pass<'_>,
    manifest: Manifest,
    start: i64,
    state: &mut PartitionState,
    target_lag_ms: i64,
) -> Result<Manifest, Failure> {
    let (name, partition) = (pass.name, pass.partition);
    let index = partition.index();
    let from = manifest
        .next_offset()
        .unwrap_or(start)
        .max(start)
        .max(manifest.log_start_offset);
    let last_stable = partition.last_stable_offset();
    if !fresh_piece_due(
        &mut state.pending_since_ms,
        from,
        last_stable,
        now_ms(),
        target_lag_ms,
    ) {
        return Ok(manifest);
    }
    let sealed = partition.sealed_segments_from(from)?;
    if sealed.first().is_some_and(|s| s.next_offset <= last_stable) {
        // A sealed segment the sealed uploads have not reached yet (the pass stopped at its
        // limit): it goes up whole at the next pass, not as a piece first.
        return Ok(manifest);
    }
    // What a read_committed fetch from `from` is served: the batches of one segment below the
    // last stable offset, and the aborted transactions among them.
    let cut_at_ms = now_ms();
    let (read, aborted) = partition.read_committed(from, usize::MAX)?;
    let Some(range) = read.records else {
        return Ok(manifest);
    };
    pass.view.copy_limit().acquire(range.len() as u64).await;
    let uploaded = pass
        .lake
        .upload_piece(name, index, &manifest, range, &aborted, from, pass.epoch)
        .await?;
    let Some(uploaded) = uploaded else {
        return Ok(manifest);
    };
    let covered_to = uploaded.entry.last_offset + 1;
    let entry = uploaded.entry.clone();
    let manifest = pass.commit(&manifest, uploaded.entry).await?;
    pass.view.metrics().uploaded_piece(&entry);
    tracing::debug!(topic = %name, partition = index, from, next_offset = covered_to,
        "offloaded a fresh piece");
    // Cut at a segment's end, the records after it have waited as long: the next piece is due
    // at once. Cut at the last stable offset, the records after it came in after the cut: their
    // wait started then, not when this pass ends (the upload took a while), so the next piece
    // comes a target lag after the cut, and no record waits the upload twice.
    if covered_to >= read.last_stable_offset {
        state.pending_since_ms = Some(cut_at_ms);
    }
    Ok(manifest)
}

/// Whether a fresh piece is due at `now_ms`: records lie between `covered_to` (the first offset
/// no lake file holds) and `stable_to` (the last stable offset), and this broker first saw such
/// records `target_lag_ms` ago or more. Keeps `pending_since_ms`, the wall time records were
/// first seen pending (`None` once none are). A negative `target_lag_ms` (-1) turns fresh
/// pieces off: only sealed files reach the lake.
fn fresh_piece_due(
    pending_since_ms: &mut Option<i64>,
    covered_to: i64,
    stable_to: i64,
    now_ms: i64,
    target_lag_ms: i64,
) -> bool {
    if stable_to <= covered_to || target_lag_ms < 0 {
        *pending_since_ms = None;
        return false;
    }
    let since = *pending_since_ms.get_or_insert(now_ms);
    now_ms.saturating_sub(since) >= target_lag_ms
}

/// Commits the log start offset DeleteRecords asked for (if the manifest does not hold it yet):
/// the files entirely below it are removed from the manifest and retired (deleted at once with
/// a delete delay of 0). A file committed below the manifest's log start (an upload that raced
/// the request) goes the same way.
async fn commit_log_start(
    lake: &Lake,
    view: &LakeView,
    name: &str,
    index: i32,
    manifest: &Manifest,
    epoch: i32,
    delete_delay_ms: i64,
) -> Result<Manifest, Failure> {
    let wanted = view.wanted_log_start(name, index);
    let mut committed = lake
        .delete_records_before(name, index, manifest, wanted.unwrap_or(0), epoch, now_ms())
        .await?;
    if committed != *manifest {
        let removed = manifest.files.len() - committed.files.len();
        tracing::info!(topic = %name, partition = index, log_start_offset = committed.log_start_offset,
            removed_files = removed, "the lake's log start moved (DeleteRecords)");
        // Before the request is answered (it waits for the manifest the view shows).
        committed = lake
            .delete_retired(name, index, &committed, epoch, now_ms(), delete_delay_ms)
            .await?;
    }
    if committed != *manifest || wanted.is_some() {
        view.set_manifest(name, index, &committed);
    }
    Ok(committed)
}

/// Moves this replica's local log start up to the one the lake's manifest holds (set by
/// DeleteRecords, maybe on an earlier leader), deleting the local segments below it.
async fn follow_lake_log_start(partition: &Arc<Partition>, log_start_offset: i64) {
    if log_start_offset <= partition.log_start_offset() {
        return;
    }
    let moving = Arc::clone(partition);
    let moved =
        tokio::task::spawn_blocking(move || moving.delete_records_before(log_start_offset)).await;
    match moved {
        Ok(Ok(())) => {
            tracing::info!(
                topic = partition.topic(),
                partition = partition.index(),
                log_start_offset = partition.log_start_offset(),
                "the local log start follows the lake's"
            )
        }
        Ok(Err(crate::error::Error::NotLeader(_))) => {}
        Ok(Err(e)) => tracing::error!(topic = partition.topic(), partition = partition.index(),
            error = %e, "moving the local log start to the lake's failed"),
        Err(e) => tracing::error!(error = %e, "moving the local log start to the lake's panicked"),
    }
}

/// Claims the partition in the lake for this broker's leadership at `epoch` (see
/// [`Lake::claim`]); the uploads earlier leaders left are looked for right after.
async fn claim(
    lake: &Lake,
    name: &str,
    index: i32,
    epoch: i32,
    state: &mut PartitionState,
) -> Result<Manifest, Failure> {
    let manifest = lake.claim(name, index, epoch).await?;
    if epoch > 0 {
        tracing::info!(topic = %name, partition = index, epoch, next_offset = ?manifest.next_offset(),
            "claimed the partition in the lake: earlier leaders can no longer commit");
    }
    state.claimed_epoch = Some(epoch);
    // Looked for right away.
    state.swept_at_ms = i64::MIN;
    Ok(manifest)
}

/// As follower: learns what the lake holds of the partition (a conditional read of its
/// manifest), so that local retention deletes the segments the lake holds, and only those, and
/// so that the read path knows the lake's offsets should this broker become the leader.
async fn follow_partition(
    lake: &Lake,
    view: &LakeView,
    topic: &Topic,
    partition: &Arc<Partition>,
    state: &mut PartitionState,
) -> Result<(), Failure> {
    let (name, index) = (&topic.name, partition.index());
    state.refresh_at_ms = now_ms() + FOLLOWER_REFRESH_MS;
    let changed = lake
        .manifest_since(name, index, state.followed_version.as_ref())
        .await?;
    let Some((manifest, version)) = changed else {
        return Ok(());
    };
    state.followed_version = version;
    view.set_manifest(name, index, &manifest);
    follow_lake_log_start(partition, manifest.log_start_offset).await;
    if let Some(next) = manifest.sealed_next_offset() {
        // Sealed files hold every offset below `next`: records below some leader's high
        // watermark, the same on every replica. Not the fresh pieces' offsets: should this
        // replica lead, its sealed upload needs the segments holding them.
        partition.set_offloaded_offset(next)?;
        tracing::debug!(topic = %name, partition = index, next_offset = next, "the lake holds the followed partition up to here");
        apply_local_retention(partition).await;
    }
    Ok(())
}

/// Local retention of one partition, right after a commit made segments eligible: disk is freed
/// then, not at the next `log.retention.check.interval.ms`.
async fn apply_local_retention(partition: &Arc<Partition>) {
    let partition = Arc::clone(partition);
    let done = tokio::task::spawn_blocking(move || {
        let done = partition.maintain(now_ms(), true);
        (partition, done)
    })
    .await;
    match done {
        Ok((partition, Ok(done))) if done.deleted_segments > 0 => {
            tracing::info!(
                topic = partition.topic(),
                partition = partition.index(),
                deleted = done.deleted_segments,
                log_start_offset = partition.log_start_offset(),
                "retention deleted offloaded segments"
            )
        }
        Ok((_, Ok(_) | Err(crate::error::Error::NotLeader(_)))) => {}
        Ok((partition, Err(e))) => {
            tracing::error!(topic = partition.topic(), partition = partition.index(), error = %e,
                "local retention after offload failed")
        }
        Err(e) => tracing::error!(error = %e, "local retention after offload panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::{SealedStep, fresh_piece_due, sealed_step};
    use strata_lake::FileEntry;

    fn piece(base: i64, last: i64) -> FileEntry {
        FileEntry {
            path: format!("t/{base}-{last}.parquet.fresh"),
            base_offset: base,
            last_offset: last,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: 1,
            size_bytes: 1,
            source_bytes: 1,
            fresh: true,
        }
    }

    #[test]
    fn pieces_local_segments_cannot_replace_are_promoted_and_sealed_segments_uploaded() {
        use SealedStep::{Promote, Stop, Upload};
        let pieces = [piece(100, 149), piece(150, 199), piece(200, 249)];
        // Cut from this leader's segment [100, 200): its file replaces the first two.
        assert_eq!(sealed_step(&pieces, 0, Some(200), 300), Upload);
        assert_eq!(sealed_step(&pieces, 0, Some(250), 300), Upload);
        // Not below the last stable offset yet, or no sealed segment: wait.
        assert_eq!(sealed_step(&pieces, 0, Some(200), 199), Stop);
        assert_eq!(sealed_step(&pieces, 0, None, 300), Stop);
        // The local segment ends inside a piece (rolled elsewhere): promote up to it.
        assert_eq!(sealed_step(&pieces, 0, Some(180), 300), Promote);
        assert_eq!(sealed_step(&pieces[1..], 0, Some(180), 300), Promote);
        // Then the next segment, [180, 260), from the promoted file's end: over the last piece.
        assert_eq!(sealed_step(&pieces[2..], 0, Some(260), 300), Upload);
        // Below the local log start (a data folder restored from the lake): promote, whatever
        // the segments.
        assert_eq!(sealed_step(&pieces, 250, None, 300), Promote);
        assert_eq!(sealed_step(&pieces, 101, Some(200), 300), Promote);
        assert_eq!(sealed_step(&pieces, 100, Some(200), 300), Upload);
        // No piece: sealed segments as before.
        assert_eq!(sealed_step(&[], 500, Some(600), 600), Upload);
        assert_eq!(sealed_step(&[], 500, Some(600), 599), Stop);
    }

    /// Records wait from the pass that first saw them; a piece is due once they waited the
    /// target lag, and a partition the lake holds up to its last stable offset waits for nothing.
    #[test]
    fn a_fresh_piece_is_due_once_the_oldest_pending_record_waited_the_target_lag() {
        let mut since = None;
        assert!(!fresh_piece_due(&mut since, 10, 10, 1_000, 2_000));
        assert_eq!(since, None, "nothing pending");
        assert!(!fresh_piece_due(&mut since, 10, 15, 1_000, 2_000));
        assert_eq!(since, Some(1_000), "first seen");
        assert!(!fresh_piece_due(&mut since, 10, 40, 2_999, 2_000));
        assert_eq!(since, Some(1_000), "later records do not restart the wait");
        assert!(fresh_piece_due(&mut since, 10, 40, 3_000, 2_000));
        // A commit covered them: the next records start their own wait.
        assert!(!fresh_piece_due(&mut since, 40, 40, 3_500, 2_000));
        assert_eq!(since, None);
        assert!(!fresh_piece_due(&mut since, 40, 41, 4_000, 2_000));
        assert!(fresh_piece_due(&mut since, 40, 41, 6_000, 2_000));
        // A lag of 0: due at every pass with records pending.
        let mut since = None;
        assert!(fresh_piece_due(&mut since, 0, 1, 5, 0));
        // -1: never, however long records wait.
        let mut since = None;
        assert!(!fresh_piece_due(&mut since, 0, 1, 5, -1));
        assert!(!fresh_piece_due(&mut since, 0, 1, i64::MAX, -1));
    }
}
