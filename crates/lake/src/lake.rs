//! The lake in object storage: where files and manifests live, offloading a segment (convert,
//! upload, then commit the manifest), remote retention, listing and verification.
//!
//! Layout under the tier URL:
//! - `topic=<topic>/partition=<n>/<first offset>-<last offset>.parquet`: record data (Hive style),
//!   uploaded by a single broker or by a partition leader at leader epoch 0;
//!   `<first offset>-<last offset>-e<epoch>.parquet` when uploaded by the leader at a later epoch;
//! - the same names with `.parquet.fresh`: fresh pieces, the records of the active part of the
//!   log (see [`crate::manifest`]), which `**/*.parquet` globs do not see;
//! - `_strata/manifests/topic=<topic>/partition=<n>.json`: the partition's manifest;
//! - `_strata/topics/<topic>.json`: what is needed to recreate the topic.
//!
//! File names derive from the offsets they hold and the uploader's epoch, so an upload repeated
//! after a crash overwrites the same object instead of leaving a duplicate, and two leaders never
//! write the same object.
//!
//! One writer per partition: every manifest commit is made at the committing leader's epoch
//! (stored in the manifest) and is conditional on the version of the manifest it was built on
//! (`PutMode::Update` with the e-tag read, `PutMode::Create` for the first), so two writers racing
//! cannot both succeed and a commit below the stored epoch is refused
//! ([`Error::FencedLeaderEpoch`]). A new leader first [`Lake::claim`]s the partition (commits the
//! manifest at its epoch, which fences every earlier leader), then removes the uploads earlier
//! leaders left uncommitted ([`Lake::remove_orphans`]): those can never be committed any more.
//!
//! The lake holds committed records only: a segment's control batches and the batches of its
//! aborted transactions are left out as it is converted ([`crate::txn`]), while its file's
//! manifest entry covers the segment's whole offset range.
//!
//! Fresh pieces are uploaded from a byte range of a local segment ([`Lake::upload_piece`]) and
//! committed after the last file ([`Lake::commit_file`]); a sealed file committed later replaces
//! the pieces it covers in the same manifest write. A piece that local data can no longer replace
//! is promoted: copied to the sealed name and committed the same way ([`Lake::promote_piece`]).
//! Replaced pieces, and files retention or DeleteRecords remove, are *retired*: the manifest
//! names them until their delete delay has passed, then [`Lake::delete_retired`] deletes their
//! objects and drops them from the manifest (in that order: a crash in between deletes again).
//!
//! Offloading streams: a blocking task reads the segment batch by batch, encodes row group by row
//! group and hands the file out in parts that the async side uploads as they come (one PUT when
//! the whole file fits in a part), so memory stays bounded whatever the segment's size (see
//! [`Lake::offload_segment`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    GetOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::manifest::{CommitDecision, FileEntry, Manifest, VerifyReport, decide_commit};
use crate::parquet_file::{self, FileSummary, FileWriter, RowGroupLimits};
use crate::segment::{self, BatchReader, SegmentSource};
use crate::txn::CommittedFilter;
use strata_log::txn::AbortedTxn;

/// Part size of multipart uploads (S3 wants at least 5 MiB but for the last part). A file that
/// fits in one part goes up in a single PUT.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts handed from the conversion to the upload and not yet taken: with the part being
/// uploaded and the one being filled, three parts per conversion at most.
const PARTS_QUEUED_MAX: usize = 1;

/// How much of a conversion may be in memory: a row group and a few upload parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionLimits {
    /// Where row groups end.
    pub row_group: RowGroupLimits,
    /// Size of multipart upload parts.
    pub part_bytes: usize,
}

impl Default for ConversionLimits {
    /// [`RowGroupLimits::default`] and [`PART_BYTES`].
    fn default() -> Self {
        Self {
            row_group: RowGroupLimits::default(),
            part_bytes: PART_BYTES,
        }
    }
}

/// What an offload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offloaded {
    /// The manifest now committed (the old one when there was nothing to offload).
    pub manifest: Manifest,
    /// The most bytes the conversion held at once, by its own count: the read window, decoded
    /// records, the encoder's row group, and upload parts not yet uploaded.
    pub peak_buffered_bytes: usize,
}

/// A file uploaded and not committed yet (see [`Lake::upload_segment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The manifest entry naming it.
    pub entry: FileEntry,
    /// The most bytes the conversion held at once (see [`Offloaded`]).
    pub peak_buffered_bytes: usize,
}

/// The version of a manifest as read (its e-tag), for [`Lake::manifest_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestVersion(UpdateVersion);

/// What the lake keeps of a topic so that a broker can recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    /// Topic name.
    pub topic: String,
    /// Topic id (UUID text).
    pub topic_id: String,
    /// Partition count.
    pub partitions: i32,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// What an upload is: the partition, the uploader's epoch and the kind of file.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    topic: &'a str,
    partition: i32,
    leader_epoch: i32,
    fresh: bool,
}

/// The lake of one tier URL.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    limits: ConversionLimits,
}

/// Path of a partition's data folder.
pub fn partition_prefix(topic: &str, partition: i32) -> String {
    format!("topic={topic}/partition={partition}")
}

/// The object a leader at `leader_epoch` uploads offsets `first..=last` of a partition to.
fn file_path(topic: &str, partition: i32, first: i64, last: i64, leader_epoch: i32) -> String {
    let prefix = partition_prefix(topic, partition);
    if leader_epoch == 0 {
        format!("{prefix}/{first:020}-{last:020}.parquet")
    } else {
        format!("{prefix}/{first:020}-{last:020}-e{leader_epoch}.parquet")
    }
}

/// Suffix of fresh pieces after the sealed file name: not `.parquet`, so that globs over
/// `**/*.parquet` see sealed files only.
const FRESH_SUFFIX: &str = ".fresh";

/// The object a leader at `leader_epoch` uploads offsets `first..=last` of a partition to as a
/// fresh piece (`fresh`) or a sealed file.
fn upload_path(
    topic: &str,
    partition: i32,
    (first, last): (i64, i64),
    leader_epoch: i32,
    fresh: bool,
) -> String {
    let path = file_path(topic, partition, first, last, leader_epoch);
    if fresh { path + FRESH_SUFFIX } else { path }
}

/// What a data file's name says: the leader epoch it was uploaded at, and whether it is a fresh
/// piece; `None` for a name this crate does not write.
fn upload_name(path: &str) -> Option<(i32, bool)> {
    let file = path.rsplit('/').next()?;
    let (file, fresh) = match file.strip_suffix(FRESH_SUFFIX) {
        Some(sealed_name) => (sealed_name, true),
        None => (file, false),
    };
    let name = file.strip_suffix(".parquet")?;
    let mut parts = name.split('-');
    let offsets = [parts.next()?, parts.next()?];
    if !offsets
        .iter()
        .all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let epoch = match parts.next() {
        None => 0,
        Some(tag) => tag.strip_prefix('e')?.parse().ok().filter(|e| *e > 0)?,
    };
    parts.next().is_none().then_some((epoch, fresh))
}

/// Objects of a partition (`(path, size)`) that no commit can ever name, given `manifest` (a
/// committed manifest) and that no leader is uploading for it now (the caller is its leader,
/// between uploads): not named by it (live or retired), and uploaded at an epoch below the one
/// it was committed at (commits below that epoch are refused: left behind by deposed or crashed
/// leaders), or fresh pieces at that epoch too (a piece is named after offsets that move on, so
/// a retry after a crash or a failed commit uploads another name instead of overwriting).
pub fn superseded_uploads(manifest: &Manifest, objects: &[(String, u64)]) -> Vec<String> {
    objects
        .iter()
        .filter(|(path, _)| {
            !manifest.names(path)
                && upload_name(path).is_some_and(|(epoch, fresh)| {
                    epoch < manifest.leader_epoch || (fresh && epoch == manifest.leader_epoch)
                })
        })
        .map(|(path, _)| path.clone())
        .collect()
}

/// The wall clock in ms since the epoch, for the single-broker conveniences that take no `now`.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Claims that lose to an earlier leader's commit before giving up (each loss means that leader
/// committed again; it stops once it sees the claim).
const CLAIM_ATTEMPTS_MAX: u32 = 5;

/// Warned once per process: the store cannot put conditionally (see [`Lake::commit`]).
static UNCONDITIONAL_COMMITS_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn manifest_path(topic: &str, partition: i32) -> Path {
    Path::from(format!(
        "_strata/manifests/topic={topic}/partition={partition}.json"
    ))
}

fn storage(e: object_store::Error) -> Error {
    // object_store errors name the path.
    Error::Storage(e.to_string())
}

impl Lake {
    /// A lake over an object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            limits: ConversionLimits::default(),
        }
    }

    /// The same lake with other conversion limits (tests use small ones).
    pub fn with_limits(mut self, limits: ConversionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The partition's manifest (empty when nothing was offloaded).
    pub async fn manifest(&self, topic: &str, partition: i32) -> Result<Manifest> {
        Ok(self.read_manifest(topic, partition).await?.0)
    }

    /// The partition's manifest and the version it was read at (`None` when there is none).
    async fn read_manifest(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(Manifest, Option<UpdateVersion>)> {
        self.manifest_since(topic, partition, None)
            .await?
            .map(|(manifest, version)| (manifest, version.map(|v| v.0)))
            .ok_or_else(|| {
                Error::Storage(format!(
                    "the manifest of {topic}-{partition}: an unconditional read answered \"not modified\""
                ))
            })
    }

    /// The partition's manifest if its version is not `known` any more (`None` when it is):
    /// a conditional read, which costs no transfer while nothing changed. Pass the version
    /// returned by the previous call. A missing manifest reads as the empty one, without version.
    pub async fn manifest_since(
        &self,
        topic: &str,
        partition: i32,
        known: Option<&ManifestVersion>,
    ) -> Result<Option<(Manifest, Option<ManifestVersion>)>> {
        let options = GetOptions {
            if_none_match: known.and_then(|v| v.0.e_tag.clone()),
            ..GetOptions::default()
        };
        match self
            .store
            .get_opts(&manifest_path(topic, partition), options)
            .await
        {
            Ok(found) => {
                let version = ManifestVersion(UpdateVersion {
                    e_tag: found.meta.e_tag.clone(),
                    version: found.meta.version.clone(),
                });
                let bytes = found.bytes().await.map_err(storage)?;
                let manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Corrupt(format!(
                        "manifest of {topic}-{partition} does not parse: {e}"
                    ))
                })?;
                Ok(Some((manifest, Some(version))))
            }
            Err(object_store::Error::NotModified { .. }) => Ok(None),
            Err(object_store::Error::NotFound { .. }) => Ok(Some((Manifest::default(), None))),
            Err(e) => Err(storage(e)),
        }
    }

    /// Commits `updated` (made by the leader at `updated.leader_epoch`) as the partition's
    /// manifest in place of `base`, the manifest it was built on. Refused with
    /// [`Error::FencedLeaderEpoch`] when the stored manifest was committed at a later epoch, and
    /// with [`Error::ManifestConflict`] when it is no longer `base` (another writer committed);
    /// the write itself is conditional on the version read, so of two writers racing one fails.
    /// A store without conditional puts (S3 with `aws_conditional_put=disabled`) gets a plain put
    /// after the same checks, with a warning.
    pub async fn commit(
        &self,
        topic: &str,
        partition: i32,
        base: &Manifest,
        updated: &Manifest,
    ) -> Result<()> {
        let (stored, version) = self.read_manifest(topic, partition).await?;
        match decide_commit(&stored, base, updated) {
            CommitDecision::Write => {}
            CommitDecision::AlreadyCommitted => return Ok(()),
            CommitDecision::Fenced { stored_epoch } => {
                return Err(Error::FencedLeaderEpoch {
                    topic: topic.to_string(),
                    partition,
                    leader_epoch: updated.leader_epoch,
                    stored_epoch,
                });
            }
            CommitDecision::Conflict => {
                return Err(Error::ManifestConflict {
                    topic: topic.to_string(),
                    partition,
                });
            }
        }
        let path = manifest_path(topic, partition);
        let bytes = Bytes::from(serde_json::to_vec_pretty(updated).expect("manifests serialize"));
        let mode = match version {
            None => PutMode::Create,
            Some(v) if v.e_tag.is_some() || v.version.is_some() => PutMode::Update(v),
            // The store names no version: nothing to condition on.
            Some(_) => return self.put_unconditionally(&path, bytes, "no e-tag").await,
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes.clone()), mode.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(Error::ManifestConflict {
                topic: topic.to_string(),
                partition,
            }),
            Err(object_store::Error::NotImplemented { operation, .. }) => {
                self.put_unconditionally(&path, bytes, &operation).await
            }
            Err(e) => Err(storage(e)),
        }
    }

    async fn put_unconditionally(&self, path: &Path, bytes: Bytes, why: &str) -> Result<()> {
        if !UNCONDITIONAL_COMMITS_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %self.store, reason = why,
                "the object store cannot put conditionally: manifest commits are fenced by the \
                 leader epoch stored in the manifest, but two writers racing could both commit");
        }
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Makes the leader at `leader_epoch` the partition's only writer: commits the manifest at
    /// that epoch unless it already is (one write per leadership; none for a single broker,
    /// always at epoch 0), after which every earlier leader's commit is refused. Returns the
    /// manifest now committed. [`Error::FencedLeaderEpoch`] when a later leader claimed it.
    pub async fn claim(&self, topic: &str, partition: i32, leader_epoch: i32) -> Result<Manifest> {
        let mut attempts = 0;
        loop {
            let (stored, _) = self.read_manifest(topic, partition).await?;
            if stored.leader_epoch == leader_epoch {
                return Ok(stored);
            }
            let claimed = stored.at_epoch(leader_epoch);
            attempts += 1;
            match self.commit(topic, partition, &stored, &claimed).await {
                Ok(()) => return Ok(claimed),
                // An earlier leader committed in between: read its manifest and claim that.
                Err(Error::ManifestConflict { .. }) if attempts < CLAIM_ATTEMPTS_MAX => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the partition's uploads that no commit can name any more (see
    /// [`superseded_uploads`]), given its committed `manifest`; returns their paths. Only the
    /// partition's leader calls it, between its own uploads (a piece it is uploading would be
    /// taken for an orphan).
    pub async fn remove_orphans(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
    ) -> Result<Vec<String>> {
        let orphans = superseded_uploads(manifest, &self.objects(topic, partition).await?);
        for path in &orphans {
            self.delete_object(path).await?;
        }
        Ok(orphans)
    }

    /// Deletes an upload this writer will not commit (it stopped leading), unless the manifest
    /// names it.
    pub async fn discard_upload(
        &self,
        topic: &str,
        partition: i32,
        entry: &FileEntry,
    ) -> Result<()> {
        if self.manifest(topic, partition).await?.names(&entry.path) {
            return Ok(());
        }
        self.delete_object(&entry.path).await
    }

    async fn delete_object(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// Records the topic's metadata in the lake.
    pub async fn put_topic_metadata(&self, metadata: &TopicMetadata) -> Result<()> {
        let path = Path::from(format!("_strata/topics/{}.json", metadata.topic));
        let bytes = serde_json::to_vec_pretty(metadata).expect("metadata serializes");
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// The topic's metadata in the lake, if any.
    pub async fn topic_metadata(&self, topic: &str) -> Result<Option<TopicMetadata>> {
        let path = Path::from(format!("_strata/topics/{topic}.json"));
        match self.store.get(&path).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(storage)?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    Error::Corrupt(format!("metadata of topic {topic} does not parse: {e}"))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    /// Every topic recorded in the lake.
    pub async fn topics(&self) -> Result<Vec<TopicMetadata>> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from("_strata/topics")))
            .try_collect()
            .await
            .map_err(storage)?;
        let mut out = Vec::new();
        for o in listed {
            let bytes = self
                .store
                .get(&o.location)
                .await
                .map_err(storage)?
                .bytes()
                .await
                .map_err(storage)?;
            let metadata: TopicMetadata = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{} does not parse: {e}", o.location)))?;
            out.push(metadata);
        }
        Ok(out)
    }

    /// Deletes a partition from the lake: its manifest first, then its files.
    pub async fn delete_partition(&self, topic: &str, partition: i32) -> Result<()> {
        match self.store.delete(&manifest_path(topic, partition)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage(e)),
        }
        for (path, _) in self.objects(topic, partition).await? {
            self.delete_object(&path).await?;
        }
        Ok(())
    }

    /// Offloads the records of `segment_bytes` from `from_offset` on: [`Lake::offload_segment`]
    /// of bytes in memory. Returns the new manifest, or the old one when there was nothing to
    /// offload.
    pub async fn offload(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment_bytes: Bytes,
        from_offset: i64,
    ) -> Result<Manifest> {
        let done = self
            .offload_segment(topic, partition, manifest, segment_bytes, from_offset)
            .await?;
        Ok(done.manifest)
    }

    /// Offloads the records of a sealed segment holding no aborted transaction (its control
    /// batches are still left out) from `from_offset` on as a single broker (leader epoch 0):
    /// [`Lake::offload_segment_at`].
    pub async fn offload_segment(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment: impl SegmentSource + Send + 'static,
        from_offset: i64,
    ) -> Result<Offloaded> {
        self.offload_segment_at(topic, partition, manifest, segment, &[], from_offset, 0)
            .await
    }

    /// Offloads the committed records of a sealed segment from `from_offset` on as the partition
    /// leader at `leader_epoch`: [`Lake::upload_segment`] (which leaves out the batches of
    /// `aborted` and control batches), then [`Lake::commit_file`].
    #[allow(clippy::too_many_arguments)] // As upload_segment.
    pub async fn offload_segment_at(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment: impl SegmentSource + Send + 'static,
        aborted: &[AbortedTxn],
        from_offset: i64,
        leader_epoch: i32,
    ) -> Result<Offloaded> {
        let uploaded = self
            .upload_segment(
                topic,
                partition,
                manifest,
                segment,
                aborted,
                from_offset,
                leader_epoch,
            )
            .await?;
        let Some(uploaded) = uploaded else {
            return Ok(Offloaded {
                manifest: manifest.clone(),
                peak_buffered_bytes: 0,
            });
        };
        let manifest = self
            .commit_file(
                topic,
                partition,
                manifest,
                uploaded.entry,
                leader_epoch,
                wall_clock_ms(),
            )
            .await?;
        Ok(Offloaded {
            manifest,
            peak_buffered_bytes: uploaded.peak_buffered_bytes,
        })
    }

    /// Converts the records of a sealed segment from `from_offset` on to Parquet and uploads the
    /// file as it is produced, named for the leader at `leader_epoch`; nothing is committed
    /// (`None` when there was nothing to offload). `manifest` is the one the file will continue:
    /// it starts at the manifest's [`Manifest::sealed_next_offset`] (replacing the fresh pieces
    /// it covers when committed).
    ///
    /// Memory is bounded, whatever the segment's size: the read window (1 MiB, or the largest
    /// batch), one batch's decoded records, one row group as the encoder holds it (compressed;
    /// the row group ends at the first batch boundary past [`RowGroupLimits`]) with at most
    /// 1 MiB of decoded records waiting for it, and three upload parts (the one being filled,
    /// one queued, one being uploaded). With the defaults about 16 + 3 × 8 MiB.
    ///
    /// Only committed records go to the file (see [`crate::txn`]): control batches are left out,
    /// and so are the batches of `aborted`, the aborted transactions whose records may lie in
    /// the segment (the partition's log knows them). The caller offloads only decided
    /// transactions: segments below the last stable offset.
    ///
    /// The file's name and manifest entry come from the segment's batch headers (read first,
    /// which checks the framing of the whole segment before anything is uploaded): the entry
    /// covers every offset of the segment from `from_offset` on, those of the records left out
    /// too, so the manifest continues after the segment however few rows the file holds (none
    /// when every batch was left out: the file is then an empty one with the lake's schema). Its
    /// rows and timestamps are what the conversion counted; a record outside its batch's offsets
    /// fails with [`Error::CorruptSegment`].
    #[allow(clippy::too_many_arguments)] // The partition, its manifest, the segment and its txns.
    pub async fn upload_segment(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment: impl SegmentSource + Send + 'static,
        aborted: &[AbortedTxn],
        from_offset: i64,
        leader_epoch: i32,
    ) -> Result<Option<Uploaded>> {
        let target = Target {
            topic,
            partition,
            leader_epoch,
            fresh: false,
        };
        self.upload_range(target, manifest, segment, aborted, from_offset)
            .await
    }

    /// As [`Lake::upload_segment`], for a fresh piece: `range` is a byte range of a local
    /// segment, the active one included, from the batch holding `from_offset` (the manifest's
    /// [`Manifest::next_offset`]) up to a batch boundary below the last stable offset (what a
    /// fetch below the last stable offset is served: `read_committed`). The piece is named
    /// `….parquet.fresh` and its entry is marked fresh; commit it with [`Lake::commit_file`].
    #[allow(clippy::too_many_arguments)] // As upload_segment.
    pub async fn upload_piece(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        range: impl SegmentSource + Send + 'static,
        aborted: &[AbortedTxn],
        from_offset: i64,
        leader_epoch: i32,
    ) -> Result<Option<Uploaded>> {
        let target = Target {
            topic,
            partition,
            leader_epoch,
            fresh: true,
        };
        self.upload_range(target, manifest, range, aborted, from_offset)
            .await
    }

    /// Converts and uploads the records of `source` from `from_offset` on as a sealed file or a
    /// fresh piece (see [`Lake::upload_segment`]).
    async fn upload_range(
        &self,
        target: Target<'_>,
        manifest: &Manifest,
        source: impl SegmentSource + Send + 'static,
        aborted: &[AbortedTxn],
        from_offset: i64,
    ) -> Result<Option<Uploaded>> {
        let Target {
            topic,
            partition,
            leader_epoch,
            fresh,
        } = target;
        let (source_bytes, segment_name) = (source.len(), source.name());
        let scanned = tokio::task::spawn_blocking(move || {
            let mut reader = BatchReader::new(source);
            segment::span(&mut reader, from_offset).map(|span| (reader, span))
        })
        .await
        .map_err(|e| Error::Corrupt(format!("segment scan task failed: {e}")))?;
        let (reader, Some((first, last))) = scanned? else {
            return Ok(None);
        };
        // A sealed file continues the sealed files (over the pieces), a piece every file. The
        // file continued may be the last one itself: a retry of its upload.
        let (continues, previous) = if fresh {
            (manifest.next_offset(), manifest.files.last())
        } else {
            (
                manifest.sealed_next_offset(),
                manifest.sealed_files().last(),
            )
        };
        if let Some(next) = continues
            && first != next
            && previous.is_none_or(|f| f.base_offset != first)
        {
            // Checked before the upload too: a file that cannot be committed is not uploaded.
            return Err(Error::Corrupt(format!(
                "{topic}-{partition}: the segment's records start at offset {first} but the \
                 manifest continues at {next}"
            )));
        }
        let path = upload_path(topic, partition, (first, last), leader_epoch, fresh);
        let filter = CommittedFilter::new(aborted);
        let (summary, size_bytes, peak_buffered_bytes) = self
            .convert_and_upload(&Path::from(path.as_str()), reader, filter, from_offset)
            .await?;
        if summary.rows > 0 && (summary.first_offset < first || summary.last_offset > last) {
            // Each record was checked against its batch, and each batch against the span: a
            // broken invariant unless the segment changed between the two reads. The file is
            // uploaded but not committed: the next attempt overwrites it.
            return Err(Error::CorruptSegment {
                segment: segment_name,
                offset: summary.first_offset,
                position: 0,
                reason: format!(
                    "records hold offsets {}..={} outside the batch headers' {first}..={last}",
                    summary.first_offset, summary.last_offset
                ),
            });
        }
        let entry = FileEntry {
            path,
            base_offset: first,
            last_offset: last,
            min_timestamp_ms: summary.min_timestamp_ms,
            max_timestamp_ms: summary.max_timestamp_ms,
            rows: summary.rows,
            size_bytes,
            source_bytes,
            fresh,
        };
        Ok(Some(Uploaded {
            entry,
            peak_buffered_bytes,
        }))
    }

    /// Commits an uploaded file: the manifest is `manifest` (the one it was built on) with
    /// `entry`, committed at `leader_epoch` (see [`Lake::commit`]): a fresh piece is appended
    /// ([`Manifest::with_file`]); a sealed file follows the sealed files in place of the pieces
    /// it covers, which are retired at `now_ms` ([`Manifest::with_sealed_file`]). Returns the
    /// new manifest. A refused commit ([`Error::FencedLeaderEpoch`]) deletes the upload, which no
    /// commit can name any more.
    pub async fn commit_file(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        entry: FileEntry,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Manifest> {
        let updated = if entry.fresh {
            manifest.with_file(entry.clone())?
        } else {
            manifest.with_sealed_file(entry.clone(), now_ms)?
        }
        .at_epoch(leader_epoch);
        match self.commit(topic, partition, manifest, &updated).await {
            Ok(()) => Ok(updated),
            Err(fenced @ Error::FencedLeaderEpoch { .. }) => {
                if let Err(e) = self.discard_upload(topic, partition, &entry).await {
                    tracing::warn!(topic, partition, path = %entry.path, error = %e,
                        "deleting an upload a later leader superseded failed; it will remove it");
                }
                Err(fenced)
            }
            Err(e) => Err(e),
        }
    }

    /// Promotes the partition's first fresh piece to a sealed file, for a piece that local data
    /// can no longer replace (its offsets are below the local log start, or the local segment
    /// holding them ends inside it): its object is copied to the sealed name of its offsets at
    /// `leader_epoch`, then committed in its place as a sealed upload is (see
    /// [`Lake::commit_file`]; the piece is retired at `now_ms`). Returns the new manifest, the
    /// same one when there is no piece.
    pub async fn promote_piece(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Manifest> {
        let Some(piece) = manifest.fresh_pieces().first() else {
            return Ok(manifest.clone());
        };
        let path = upload_path(
            topic,
            partition,
            (piece.base_offset, piece.last_offset),
            leader_epoch,
            false,
        );
        self.store
            .copy(&Path::from(piece.path.as_str()), &Path::from(path.as_str()))
            .await
            .map_err(storage)?;
        let entry = FileEntry {
            path,
            fresh: false,
            ..piece.clone()
        };
        self.commit_file(topic, partition, manifest, entry, leader_epoch, now_ms)
            .await
    }

    /// Deletes the retired objects of `manifest` whose delete delay has passed at `now_ms`
    /// ([`Manifest::due_for_deletion`]), then commits the manifest without them at
    /// `leader_epoch`. Returns the new manifest (the same one when nothing was due).
    pub async fn delete_retired(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        leader_epoch: i32,
        now_ms: i64,
        delete_delay_ms: i64,
    ) -> Result<Manifest> {
        let due = manifest.due_for_deletion(now_ms, delete_delay_ms);
        let updated = manifest.without_retired(&due).at_epoch(leader_epoch);
        if updated == *manifest {
            return Ok(updated);
        }
        for path in &due {
            self.delete_object(path).await?;
        }
        self.commit(topic, partition, manifest, &updated).await?;
        Ok(updated)
    }

    /// Converts the records of `reader` from `from_offset` on and uploads the file to `path` as it
    /// is produced. Returns what the file holds, its size, and the most bytes held at once.
    async fn convert_and_upload<S: SegmentSource + Send + 'static>(
        &self,
        path: &Path,
        reader: BatchReader<S>,
        filter: CommittedFilter,
        from_offset: i64,
    ) -> Result<(FileSummary, u64, usize)> {
        let (sink, parts) = PartSink::new(self.limits.part_bytes);
        let in_flight = Arc::clone(&sink.in_flight);
        let limits = self.limits.row_group;
        let conversion =
            tokio::task::spawn_blocking(move || convert(reader, filter, from_offset, sink, limits));
        let (uploaded, converted) = tokio::join!(self.upload(path, parts, &in_flight), conversion);
        let converted =
            converted.map_err(|e| Error::Corrupt(format!("conversion task failed: {e}")))?;
        match uploaded {
            // Storage failed: the conversion stopped because its parts had nowhere to go.
            Err(e) => Err(e),
            // The conversion stopped: nothing was completed under the file's name.
            Ok(None) => Err(converted.err().unwrap_or_else(|| {
                Error::Corrupt("the conversion ended without its last part".into())
            })),
            Ok(Some(size)) => converted.map(|(summary, peak)| (summary, size, peak)),
        }
    }

    /// Uploads the parts of one file as they come: one PUT when the first part is also the last,
    /// a multipart upload otherwise. Returns the file's size, or `None` when the parts stopped
    /// before the last one (the conversion failed; the multipart upload is aborted).
    async fn upload(
        &self,
        path: &Path,
        mut parts: mpsc::Receiver<Part>,
        in_flight: &AtomicUsize,
    ) -> Result<Option<u64>> {
        let first = match parts.recv().await {
            None => return Ok(None),
            Some(Part::Last(bytes)) => {
                let size = bytes.len();
                self.store
                    .put(path, PutPayload::from(bytes))
                    .await
                    .map_err(storage)?;
                in_flight.fetch_sub(size, Ordering::Relaxed);
                return Ok(Some(size as u64));
            }
            Some(Part::More(bytes)) => bytes,
        };
        let mut upload = self.store.put_multipart(path).await.map_err(storage)?;
        let result = upload_parts(upload.as_mut(), first, &mut parts, in_flight).await;
        if !matches!(result, Ok(Some(_))) {
            // Best effort: S3 would keep the parts until a lifecycle rule removes them.
            let _ = upload.abort().await;
        }
        result
    }

    /// Applies remote retention as the leader at `leader_epoch`: the manifest loses the expired
    /// files (a commit, see [`Lake::commit`]), which are retired at `now_ms`: their objects go
    /// after the delete delay ([`Lake::delete_retired`]). Returns the new manifest.
    #[allow(clippy::too_many_arguments)] // The partition, its manifest, the clock and two limits.
    pub async fn apply_retention(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        leader_epoch: i32,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<Manifest> {
        let (kept, removed) = manifest.after_retention(now_ms, retention_ms, retention_bytes);
        if removed.is_empty() {
            return Ok(kept);
        }
        let kept = kept.with_retired(&removed, now_ms).at_epoch(leader_epoch);
        self.commit(topic, partition, manifest, &kept).await?;
        Ok(kept)
    }

    /// DeleteRecords as the leader at `leader_epoch`: the manifest records the new log start
    /// offset and loses the files entirely below it (a commit, see [`Lake::commit`]), which are
    /// retired at `now_ms` (deleted after the delay, [`Lake::delete_retired`]). A file holding
    /// the new start stays (see [`Manifest::with_log_start`]). Returns the new manifest.
    pub async fn delete_records_before(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        offset: i64,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Manifest> {
        let (kept, removed) = manifest.with_log_start(offset);
        if kept == *manifest {
            return Ok(kept);
        }
        let kept = kept.with_retired(&removed, now_ms).at_epoch(leader_epoch);
        self.commit(topic, partition, manifest, &kept).await?;
        Ok(kept)
    }

    /// Every `(topic, partition)` with a manifest.
    pub async fn partitions(&self) -> Result<Vec<(String, i32)>> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from("_strata/manifests")))
            .try_collect()
            .await
            .map_err(storage)?;
        let mut out: Vec<(String, i32)> = listed
            .iter()
            .filter_map(|o| {
                let s = o.location.as_ref();
                let rest = s.strip_prefix("_strata/manifests/topic=")?;
                let (topic, file) = rest.split_once("/partition=")?;
                let partition = file.strip_suffix(".json")?.parse().ok()?;
                Some((topic.to_string(), partition))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every `(topic, partition)` with a manifest or with data objects (orphans included).
    pub async fn all_partitions(&self) -> Result<Vec<(String, i32)>> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self.store.list(None).try_collect().await.map_err(storage)?;
        let mut out = self.partitions().await?;
        for o in &listed {
            let s = o.location.as_ref();
            let Some(rest) = s.strip_prefix("topic=") else {
                continue;
            };
            let Some((topic, rest)) = rest.split_once("/partition=") else {
                continue;
            };
            let Some((partition, _)) = rest.split_once('/') else {
                continue;
            };
            if let Ok(partition) = partition.parse() {
                out.push((topic.to_string(), partition));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The objects under a partition's data folder: `(path, size)`.
    pub async fn objects(&self, topic: &str, partition: i32) -> Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let prefix = Path::from(partition_prefix(topic, partition));
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(storage)?;
        let mut out: Vec<(String, u64)> = listed
            .into_iter()
            .map(|o| (o.location.to_string(), o.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Checks one partition's manifest against its objects.
    pub async fn verify(&self, topic: &str, partition: i32) -> Result<VerifyReport> {
        let manifest = self.manifest(topic, partition).await?;
        let objects = self.objects(topic, partition).await?;
        Ok(crate::manifest::verify(&manifest, &objects))
    }

    /// Opens a data file for ranged reads: its footer only.
    pub async fn open_file(&self, entry: &FileEntry) -> Result<crate::reader::OpenFile> {
        crate::reader::open(&self.store, entry).await
    }

    /// Reads chunk `k` of an opened file: only the row groups it needs.
    pub async fn read_chunk(
        &self,
        file: &Arc<crate::reader::OpenFile>,
        k: usize,
    ) -> Result<crate::reader::Chunk> {
        crate::reader::read_chunk(&self.store, file, k).await
    }

    /// Reads a whole data file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<crate::LakeRecord>> {
        let bytes = self
            .store
            .get(&Path::from(path))
            .await
            .map_err(storage)?
            .bytes()
            .await
            .map_err(storage)?;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            parquet_file::read(bytes).map_err(|e| Error::Corrupt(format!("lake file {path}: {e}")))
        })
        .await
        .map_err(|e| Error::Corrupt(format!("decoding task failed: {e}")))?
    }
}

/// One piece of a file on its way to object storage.
#[derive(Debug)]
enum Part {
    /// A full part; more follow.
    More(Bytes),
    /// The rest of the file.
    Last(Bytes),
}

/// Uploads `first` and the parts after it, one at a time, and completes the upload.
async fn upload_parts(
    upload: &mut dyn MultipartUpload,
    first: Bytes,
    parts: &mut mpsc::Receiver<Part>,
    in_flight: &AtomicUsize,
) -> Result<Option<u64>> {
    let mut size = 0u64;
    let mut next = Some(Part::More(first));
    loop {
        let (bytes, last) = match next {
            None => return Ok(None),
            Some(Part::More(bytes)) => (bytes, false),
            Some(Part::Last(bytes)) => (bytes, true),
        };
        let len = bytes.len();
        if len > 0 {
            upload
                .put_part(PutPayload::from(bytes))
                .await
                .map_err(storage)?;
        }
        in_flight.fetch_sub(len, Ordering::Relaxed);
        size += len as u64;
        if last {
            upload.complete().await.map_err(storage)?;
            return Ok(Some(size));
        }
        next = parts.recv().await;
    }
}

/// Where the Parquet writer's bytes go: cut into parts of `part_bytes`, queued for the upload.
/// Writing blocks while [`PARTS_QUEUED_MAX`] parts wait, and fails once the upload has stopped.
struct PartSink {
    buffer: Vec<u8>,
    part_bytes: usize,
    parts: mpsc::Sender<Part>,
    /// Bytes handed to the upload and not uploaded yet.
    in_flight: Arc<AtomicUsize>,
}

impl PartSink {
    fn new(part_bytes: usize) -> (Self, mpsc::Receiver<Part>) {
        let (parts, receiver) = mpsc::channel(PARTS_QUEUED_MAX);
        let sink = Self {
            buffer: Vec::new(),
            part_bytes: part_bytes.max(1),
            parts,
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        (sink, receiver)
    }

    fn send(&mut self, part: Part, len: usize) -> std::io::Result<()> {
        self.in_flight.fetch_add(len, Ordering::Relaxed);
        self.parts.blocking_send(part).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the upload stopped before the file was written",
            )
        })
    }

    /// Bytes held here or on their way up.
    fn buffered_bytes(&self) -> usize {
        self.buffer.capacity() + self.in_flight.load(Ordering::Relaxed)
    }

    /// Sends the rest of the file as its last part.
    fn finish(mut self) -> std::io::Result<()> {
        let rest = std::mem::take(&mut self.buffer);
        let len = rest.len();
        self.send(Part::Last(Bytes::from(rest)), len)
    }
}

impl Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(self.part_bytes);
        }
        let room = self.part_bytes - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == self.part_bytes {
            let part = std::mem::take(&mut self.buffer);
            self.send(Part::More(Bytes::from(part)), self.part_bytes)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Converts the committed records of `reader` (the batches `filter` keeps) from `from_offset` on
/// into a lake file written into `sink`, batch by batch. Returns what the file holds and the most
/// bytes held at once.
fn convert<S: SegmentSource>(
    mut reader: BatchReader<S>,
    mut filter: CommittedFilter,
    from_offset: i64,
    sink: PartSink,
    limits: RowGroupLimits,
) -> Result<(FileSummary, usize)> {
    let mut writer = FileWriter::new(sink, limits)?;
    let mut peak = 0;
    while let Some(batch) = reader.next_batch()? {
        // Decided from the header: a batch left out is never decompressed.
        if !filter.keeps(&batch.header) {
            continue;
        }
        let records = batch.decode(from_offset)?;
        let decoded: usize = records.iter().map(record_bytes).sum();
        let held = reader.buffered_bytes() + decoded;
        // Before (the row group at its largest) and after (it may have gone to the sink).
        peak = peak.max(held + writer.buffered_bytes() + writer.sink().buffered_bytes());
        writer.write_batch(records)?;
        peak = peak.max(held + writer.buffered_bytes() + writer.sink().buffered_bytes());
    }
    drop(reader);
    let (sink, summary) = writer.finish()?;
    peak = peak.max(sink.buffered_bytes());
    sink.finish().map_err(|e| Error::Storage(e.to_string()))?;
    Ok((summary, peak))
}

/// Bytes of a decoded record: its payload, headers and the record itself.
fn record_bytes(r: &crate::LakeRecord) -> usize {
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
        .sum();
    r.key.as_ref().map_or(0, Bytes::len)
        + r.value.as_ref().map_or(0, Bytes::len)
        + headers
        + std::mem::size_of::<crate::LakeRecord>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::LakeRecord;

    fn segment_of(base: i64, count: i64) -> (Bytes, Vec<LakeRecord>) {
        let records: Vec<LakeRecord> = (0..count)
            .map(|i| LakeRecord {
                offset: base + i,
                timestamp_ms: 1000 + i,
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Vec::new(),
                batch_offset: base + i - i % 5,
                batch_attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                sequence: -1,
                partition_leader_epoch: 0,
            })
            .collect();
        (Bytes::from(segment::encode(&records).to_vec()), records)
    }

    #[tokio::test]
    async fn offload_commits_files_in_order_and_verifies_clean() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap());
        let (first, first_records) = segment_of(0, 20);
        let m = lake
            .offload("t", 0, &Manifest::default(), first, 0)
            .await
            .unwrap();
        let (second, _) = segment_of(20, 10);
        let m = lake.offload("t", 0, &m, second.clone(), 0).await.unwrap();
        assert_eq!(m.next_offset(), Some(30));
        // A repeated upload (as after a crash before the local bookkeeping) changes nothing.
        assert_eq!(lake.offload("t", 0, &m, second, 0).await.unwrap(), m);
        assert_eq!(lake.manifest("t", 0).await.unwrap(), m);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        assert_eq!(
            lake.read_file(&m.files[0].path).await.unwrap(),
            first_records
        );
        assert_eq!(lake.partitions().await.unwrap(), vec![("t".to_string(), 0)]);
        // Retention drops the oldest file, manifest first.
        let kept = lake
            .apply_retention("t", 0, &m, 0, i64::MAX, 0, -1)
            .await
            .unwrap();
        assert_eq!(kept.files.len(), 1);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }

    #[tokio::test]
    async fn delete_records_removes_the_files_below_and_keeps_the_one_holding_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap());
        let mut m = lake.claim("t", 0, 2).await.unwrap();
        for base in [0, 20, 40] {
            let (segment, _) = segment_of(base, 20);
            m = lake
                .offload_segment_at("t", 0, &m, segment, &[], base, 2)
                .await
                .unwrap()
                .manifest;
        }
        let before = lake.objects("t", 0).await.unwrap();
        assert_eq!(before.len(), 3);
        // A deposed leader cannot move the start.
        let fenced = lake.delete_records_before("t", 0, &m, 25, 1, 0).await;
        assert!(
            matches!(fenced, Err(Error::FencedLeaderEpoch { .. })),
            "{fenced:?}"
        );
        let moved = lake
            .delete_records_before("t", 0, &m, 25, 2, 1000)
            .await
            .unwrap();
        assert_eq!(lake.manifest("t", 0).await.unwrap(), moved);
        assert_eq!(
            (moved.log_start_offset, moved.start_offset()),
            (25, Some(25))
        );
        // The file below is retired, its object kept until the delete delay has passed.
        assert_eq!(moved.retired.len(), 1);
        assert_eq!(lake.objects("t", 0).await.unwrap(), before);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        let early = lake.delete_retired("t", 0, &moved, 2, 1999, 1000).await;
        assert_eq!(early.unwrap(), moved, "not yet");
        let moved = lake
            .delete_retired("t", 0, &moved, 2, 2000, 1000)
            .await
            .unwrap();
        assert!(moved.retired.is_empty());
        assert_eq!(lake.manifest("t", 0).await.unwrap(), moved);
        let after: Vec<String> = lake
            .objects("t", 0)
            .await
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(after, vec![before[1].0.clone(), before[2].0.clone()]);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // Again at the same offset: nothing to commit.
        assert_eq!(
            lake.delete_records_before("t", 0, &moved, 25, 2, 3000)
                .await
                .unwrap(),
            moved
        );
        // Offloading goes on after the start; a restarted broker continues after the lake.
        let (segment, _) = segment_of(60, 10);
        let m = lake
            .offload_segment_at("t", 0, &moved, segment, &[], 60, 2)
            .await
            .unwrap()
            .manifest;
        assert_eq!((m.log_start_offset, m.next_offset()), (25, Some(70)));
        let gone = lake
            .delete_records_before("t", 0, &m, 70, 2, 4000)
            .await
            .unwrap();
        let gone = lake
            .delete_retired("t", 0, &gone, 2, 4000, 0)
            .await
            .unwrap();
        assert!(gone.files.is_empty() && gone.retired.is_empty());
        assert_eq!(gone.resume_offset(), Some(70));
        assert!(lake.objects("t", 0).await.unwrap().is_empty());
    }

    /// Records of `batches` batches of `per_batch` records with `value_bytes` of pseudo-random
    /// (incompressible) values each, from offset `base`.
    fn random_records(
        base: i64,
        batches: i64,
        per_batch: i64,
        value_bytes: usize,
    ) -> Vec<LakeRecord> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..batches * per_batch)
            .map(|i| LakeRecord {
                offset: base + i,
                timestamp_ms: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some((0..value_bytes).map(|_| next() as u8).collect()),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
                batch_offset: base + i - i % per_batch,
                batch_attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                sequence: -1,
                partition_leader_epoch: 0,
            })
            .collect()
    }

    fn small_limits() -> ConversionLimits {
        ConversionLimits {
            row_group: RowGroupLimits {
                rows: 1000,
                bytes: 256 * 1024,
            },
            part_bytes: 128 * 1024,
        }
    }

    /// A segment 24 times the row-group budget converts and uploads in parts with at most a
    /// few row groups' and parts' worth in memory, and reads back record for record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conversion_memory_is_bounded_by_the_limits_not_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let limits = small_limits();
        let lake =
            Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap()).with_limits(limits);
        let records = random_records(100, 384, 16, 1024);
        let bytes = Bytes::from(segment::encode(&records).to_vec());
        assert!(bytes.len() > 24 * limits.row_group.bytes, "{}", bytes.len());
        let done = lake
            .offload_segment("t", 0, &Manifest::default(), bytes.clone(), 0)
            .await
            .unwrap();
        // Read window (1 MiB), a row group (256 KiB, plus a batch), decoded records waiting for
        // the encoder (1 MiB), three parts (3 × 128 KiB): about 3 MiB, against a 6.5 MB segment.
        let bound = segment::READ_AHEAD_BYTES
            + 2 * limits.row_group.bytes
            + parquet_file::ENCODE_CHUNK_BYTES
            + 3 * limits.part_bytes
            + 64 * 1024;
        assert!(done.peak_buffered_bytes > 0);
        assert!(
            done.peak_buffered_bytes < bound && done.peak_buffered_bytes < bytes.len() / 2,
            "peak {} bytes for a segment of {} (bound {bound})",
            done.peak_buffered_bytes,
            bytes.len()
        );
        let entry = &done.manifest.files[0];
        assert_eq!(
            (entry.base_offset, entry.last_offset),
            (100, 100 + 384 * 16 - 1)
        );
        assert_eq!(entry.rows, 384 * 16);
        assert_eq!(entry.source_bytes, bytes.len() as u64);
        assert_eq!(
            (entry.min_timestamp_ms, entry.max_timestamp_ms),
            (1_700_000_000_000, 1_700_000_000_000 + 384 * 16 - 1)
        );
        assert!(
            entry.size_bytes > 10 * limits.part_bytes as u64,
            "many parts"
        );
        assert!(
            lake.verify("t", 0).await.unwrap().is_clean(),
            "the size is the object's"
        );
        assert_eq!(lake.read_file(&entry.path).await.unwrap(), records);
        // Row groups end at batch boundaries once past the limit.
        let file = std::fs::read(dir.path().join(&entry.path)).unwrap();
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(Bytes::from(file)).unwrap();
        let groups = parquet::file::reader::FileReader::metadata(&reader)
            .row_groups()
            .to_vec();
        assert!(groups.len() >= 20, "{} row groups", groups.len());
        for g in &groups[..groups.len() - 1] {
            assert_eq!(g.num_rows() % 16, 0, "a row group ends at a batch boundary");
        }
    }

    /// A flipped byte inside a batch is a corrupt segment naming the batch; nothing is committed
    /// or left under a file name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_batch_fails_the_offload_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap())
            .with_limits(small_limits());
        let records = random_records(0, 100, 16, 1024);
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for batch in records.chunks(16) {
            starts.push(bytes.len());
            bytes.extend_from_slice(&segment::encode(batch));
        }
        bytes[starts[60] + 500] ^= 0x10;
        let e = lake
            .offload_segment("t", 0, &Manifest::default(), Bytes::from(bytes), 0)
            .await
            .unwrap_err();
        match &e {
            Error::CorruptSegment {
                offset,
                position,
                reason,
                ..
            } => {
                assert_eq!((*offset, *position), (60 * 16, starts[60] as u64));
                assert!(reason.contains("CRC"), "{reason}");
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string()
                .starts_with("corrupt segment (in memory) at offset 960: "),
            "{e}"
        );
        assert_eq!(lake.manifest("t", 0).await.unwrap(), Manifest::default());
        assert_eq!(lake.objects("t", 0).await.unwrap(), Vec::new());
    }

    /// Records that cannot be parsed under a valid CRC are found while converting: the multipart
    /// upload begun is aborted and nothing is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unparseable_records_abort_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap())
            .with_limits(small_limits());
        let mut bytes = segment::encode(&random_records(0, 100, 16, 1024));
        // The last batch: one record of 40 bytes of 0x7f, with a valid CRC.
        let mut bad = segment::encode(&random_records(1600, 1, 1, 40)).to_vec();
        let header = strata_log::batch::HEADER_BYTES;
        for b in &mut bad[header..] {
            *b = 0x7f;
        }
        let crc = crc32c::crc32c(&bad[21..]);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(&bad);
        let e = lake
            .offload_segment("t", 0, &Manifest::default(), bytes.freeze(), 0)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::CorruptSegment { offset: 1600, .. }),
            "{e}"
        );
        assert_eq!(lake.manifest("t", 0).await.unwrap(), Manifest::default());
        assert_eq!(lake.objects("t", 0).await.unwrap(), Vec::new());
    }

    /// What a segment of transactions holds, batch by batch.
    enum Written {
        /// A batch of `records` records of a producer (-1: none), transactional or not.
        Data {
            producer_id: i64,
            records: i64,
            transactional: bool,
        },
        /// A producer's marker.
        Marker { producer_id: i64, commit: bool },
    }

    /// A segment of `written` from offset `base`: its bytes, the records a read_committed
    /// consumer would get, and its aborted transactions (as the log records them).
    fn txn_segment(base: i64, written: &[Written]) -> (Bytes, Vec<LakeRecord>, Vec<AbortedTxn>) {
        use strata_log::batch::ATTR_TRANSACTIONAL;
        let (mut bytes, mut committed, mut aborted) = (Vec::new(), Vec::new(), Vec::new());
        let mut open: BTreeMap<i64, (i64, Vec<LakeRecord>)> = BTreeMap::new();
        let mut offset = base;
        for w in written {
            match *w {
                Written::Data {
                    producer_id,
                    records,
                    transactional,
                } => {
                    let batch: Vec<LakeRecord> = (offset..offset + records)
                        .map(|o| LakeRecord {
                            offset: o,
                            timestamp_ms: 5000 + o,
                            key: Some(Bytes::from(format!("k{o}"))),
                            value: Some(Bytes::from(format!("p{producer_id}-{o}"))),
                            headers: vec![("h".into(), None)],
                            batch_offset: offset,
                            batch_attributes: if transactional { ATTR_TRANSACTIONAL } else { 0 },
                            producer_id,
                            producer_epoch: if producer_id < 0 { -1 } else { 2 },
                            sequence: if producer_id < 0 { -1 } else { o as i32 },
                            partition_leader_epoch: 1,
                        })
                        .collect();
                    bytes.extend_from_slice(&segment::encode(&batch));
                    if transactional {
                        let (_, pending) = open.entry(producer_id).or_insert((offset, Vec::new()));
                        pending.extend(batch);
                    } else {
                        committed.extend(batch);
                    }
                    offset += records;
                }
                Written::Marker {
                    producer_id,
                    commit,
                } => {
                    let marker = strata_log::txn::Marker {
                        commit,
                        coordinator_epoch: 0,
                    };
                    let mut batch = strata_log::txn::marker_batch(producer_id, 2, marker, 9000);
                    batch[..8].copy_from_slice(&offset.to_be_bytes());
                    bytes.extend_from_slice(&batch);
                    let (first_offset, pending) = open.remove(&producer_id).unwrap();
                    if commit {
                        committed.extend(pending);
                    } else {
                        aborted.push(AbortedTxn {
                            producer_id,
                            first_offset,
                            last_offset: offset,
                        });
                    }
                    offset += 1;
                }
            }
        }
        assert!(open.is_empty(), "every transaction is decided");
        committed.sort_by_key(|r| r.offset);
        (Bytes::from(bytes), committed, aborted)
    }

    /// The lake holds committed records only, with their offsets: no control record, no record
    /// of an aborted transaction, another producer's interleaved committed records kept. Each
    /// file's entry still covers its whole segment (it ends with a marker), so the manifest
    /// continues after it; a segment of nothing but aborted transactions becomes an empty file
    /// that the manifest still counts; and every offset of it reads through the Kafka protocol.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_committed_records_reach_the_lake_and_files_cover_their_segments() {
        use Written::{Data, Marker};
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path()).with_limits(small_limits());
        let txn = |producer_id, records| Data {
            producer_id,
            records,
            transactional: true,
        };
        let plain = |records| Data {
            producer_id: -1,
            records,
            transactional: false,
        };
        let end = |producer_id, commit| Marker {
            producer_id,
            commit,
        };
        // Producer 1 aborts around producer 2's commit; both interleave with plain records;
        // producer 1 then commits; the segment ends with markers.
        let (first, committed, aborted) = txn_segment(
            0,
            &[
                txn(1, 3),
                txn(2, 2),
                plain(4),
                txn(1, 2),
                txn(2, 3),
                end(1, false),
                txn(1, 2),
                end(2, true),
                plain(1),
                end(1, true),
            ],
        );
        assert_eq!(aborted.len(), 1);
        let m = lake
            .offload_segment_at("t", 0, &Manifest::default(), first, &aborted, 0, 0)
            .await
            .unwrap()
            .manifest;
        let entry = m.files[0].clone();
        assert_eq!((entry.base_offset, entry.last_offset), (0, 19));
        assert_eq!(m.next_offset(), Some(20), "the markers count");
        assert_eq!(entry.rows, committed.len() as u64);
        assert_eq!(
            (entry.min_timestamp_ms, entry.max_timestamp_ms),
            (5003, 5018),
            "the records' timestamps, not the markers'"
        );
        let rows = lake.read_file(&entry.path).await.unwrap();
        assert_eq!(rows, committed);
        let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 4, 5, 6, 7, 8, 11, 12, 13, 15, 16, 18]);
        assert!(rows.iter().all(|r| r.batch_attributes & 0x20 == 0));

        // Every batch aborted: an empty file with the schema, counted by the manifest.
        let (second, none, aborted) = txn_segment(
            20,
            &[
                txn(3, 4),
                txn(4, 2),
                end(4, false),
                txn(3, 1),
                end(3, false),
            ],
        );
        assert!(none.is_empty());
        let m = lake
            .offload_segment_at("t", 0, &m, second, &aborted, 20, 0)
            .await
            .unwrap()
            .manifest;
        let empty = m.files[1].clone();
        assert_eq!(
            (empty.base_offset, empty.last_offset, empty.rows),
            (20, 28, 0)
        );
        assert_eq!((empty.min_timestamp_ms, empty.max_timestamp_ms), (-1, -1));
        assert!(lake.read_file(&empty.path).await.unwrap().is_empty());
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // A committed transaction whose marker ends the file.
        let (third, _, none) = txn_segment(29, &[txn(5, 2), end(5, true)]);
        let m = lake
            .offload_segment_at("t", 0, &m, third, &none, 29, 0)
            .await
            .unwrap()
            .manifest;
        assert_eq!((m.files[2].rows, m.next_offset()), (2, Some(32)));

        // Read as a consumer would, through ranged reads: from every offset, exactly the
        // committed records from there on, and out of the lake at its end.
        let files = [entry, empty, m.files[2].clone()];
        let all: Vec<i64> = offsets.iter().copied().chain([29, 30]).collect();
        for start in 0..32 {
            let (mut at, mut taken) = (start, Vec::new());
            while at < 32 {
                let entry = files.iter().find(|f| f.last_offset >= at).unwrap();
                let file = Arc::new(lake.open_file(entry).await.unwrap());
                let k = file.chunks_for(at).start;
                let chunk = lake.read_chunk(&file, k).await.unwrap();
                let bytes = chunk.slice_from(at, 1);
                let mut reader = BatchReader::new(&bytes[..]);
                let mut next = at;
                while let Some(batch) = reader.next_batch().unwrap() {
                    taken.extend(batch.decode(at).unwrap().iter().map(|r| r.offset));
                    next = batch.header.next_offset();
                }
                assert!(next > at, "a fetch at {at} moves on");
                at = next;
            }
            let expected: Vec<i64> = all.iter().copied().filter(|&o| o >= start).collect();
            assert_eq!(taken, expected, "from {start}");
        }
    }

    /// The conversion leaves out what it drops without decoding it, and checks what it keeps:
    /// a record outside its batch's offsets fails the offload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_outside_its_batch_fails_the_offload() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (bytes, _) = segment_of(0, 10);
        let mut bytes = bytes.to_vec();
        // The second batch (offsets 5..=9) claims to end at offset 7; CRC made valid again.
        let second = bytes.len() / 2;
        let header = strata_log::batch::BatchHeader::parse(&bytes[second..]).unwrap();
        assert_eq!(header.base_offset, 5);
        bytes[second + 23..second + 27].copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[second + 21..]);
        bytes[second + 17..second + 21].copy_from_slice(&crc.to_be_bytes());
        let e = lake
            .offload("t", 0, &Manifest::default(), Bytes::from(bytes), 0)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::CorruptSegment { offset: 5, reason, .. }
                if reason.contains("outside its batch's offsets 5..=7")),
            "{e}"
        );
        assert_eq!(lake.manifest("t", 0).await.unwrap(), Manifest::default());
    }

    /// Records below `from_offset` are left out, the file named after what remains.
    #[tokio::test]
    async fn offload_from_an_offset_inside_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap());
        let (bytes, records) = segment_of(0, 20);
        let m = lake
            .offload("t", 0, &Manifest::default(), bytes.clone(), 7)
            .await
            .unwrap();
        assert_eq!((m.files[0].base_offset, m.files[0].last_offset), (7, 19));
        assert!(
            m.files[0]
                .path
                .ends_with("00000000000000000007-00000000000000000019.parquet")
        );
        assert_eq!(
            lake.read_file(&m.files[0].path).await.unwrap(),
            records[7..]
        );
        // Nothing at or past `from_offset`: nothing to do.
        let same = lake.offload("t", 0, &m, bytes, 20).await.unwrap();
        assert_eq!(same, m);
    }

    fn file_lake(dir: &std::path::Path) -> Lake {
        let url = crate::store::file_url(dir).unwrap();
        Lake::new(crate::store::open(&url, &BTreeMap::new()).unwrap())
    }

    fn memory_lake() -> Lake {
        Lake::new(Arc::new(object_store::memory::InMemory::new()))
    }

    #[test]
    fn upload_names_carry_the_epoch_and_read_back() {
        let zero = file_path("t", 1, 0, 9, 0);
        assert_eq!(
            zero,
            "topic=t/partition=1/00000000000000000000-00000000000000000009.parquet"
        );
        assert_eq!(upload_name(&zero), Some((0, false)));
        let seven = file_path("t", 1, 10, 19, 7);
        assert!(seven.ends_with("-e7.parquet"), "{seven}");
        assert_eq!(upload_name(&seven), Some((7, false)));
        for other in [
            "topic=t/partition=1/notes.txt",
            "topic=t/partition=1/1-2-3.parquet",
            "topic=t/partition=1/1-2-e.parquet",
            "topic=t/partition=1/1-2-e0.parquet",
            "topic=t/partition=1/1-x.parquet",
            "topic=t/partition=1/-2.parquet",
        ] {
            assert_eq!(upload_name(other), None, "{other}");
        }
    }

    #[test]
    fn only_uploads_below_the_committed_epoch_are_superseded() {
        let committed = |path: &str| FileEntry {
            path: path.into(),
            base_offset: 0,
            last_offset: 9,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            rows: 10,
            size_bytes: 1,
            source_bytes: 1,
            fresh: false,
        };
        let manifest = Manifest {
            files: vec![committed(&file_path("t", 0, 0, 9, 0))],
            leader_epoch: 3,
            ..Manifest::default()
        };
        let objects: Vec<(String, u64)> = [
            file_path("t", 0, 0, 9, 0),   // committed
            file_path("t", 0, 10, 14, 0), // left by the leader at epoch 0
            file_path("t", 0, 10, 19, 2), // left by the leader at epoch 2
            file_path("t", 0, 10, 17, 3), // the current leader's, not committed yet
            file_path("t", 0, 10, 17, 4), // a later leader's
            "topic=t/partition=0/unknown.bin".to_string(),
        ]
        .into_iter()
        .map(|p| (p, 1))
        .collect();
        assert_eq!(
            superseded_uploads(&manifest, &objects),
            vec![objects[1].0.clone(), objects[2].0.clone()]
        );
        assert!(superseded_uploads(&manifest.at_epoch(0), &objects).is_empty());
    }

    /// A deposed leader's commit is refused once its successor claimed the partition, its upload
    /// is deleted, and the successor's claim removed what the deposed leader left before.
    #[tokio::test]
    async fn a_commit_below_the_claimed_epoch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (first, _) = segment_of(0, 10);
        let at_1 = lake.claim("t", 0, 1).await.unwrap();
        assert_eq!(at_1.leader_epoch, 1);
        let at_1 = lake
            .offload_segment_at("t", 0, &at_1, first, &[], 0, 1)
            .await
            .unwrap()
            .manifest;
        assert_eq!((at_1.leader_epoch, at_1.next_offset()), (1, Some(10)));
        // Leader 1 uploads the next segment twice over (say, a retry), then is deposed.
        let (second, _) = segment_of(10, 10);
        let left = lake
            .upload_segment("t", 0, &at_1, second.clone(), &[], 0, 1)
            .await
            .unwrap()
            .unwrap();
        let at_2 = lake.claim("t", 0, 2).await.unwrap();
        assert_eq!(at_2, at_1.at_epoch(2));
        assert_eq!(
            lake.remove_orphans("t", 0, &at_2).await.unwrap(),
            vec![left.entry.path.clone()]
        );
        let late = lake
            .upload_segment("t", 0, &at_1, second.clone(), &[], 0, 1)
            .await
            .unwrap()
            .unwrap();
        let refused = lake
            .commit_file("t", 0, &at_1, late.entry.clone(), 1, 0)
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                Error::FencedLeaderEpoch {
                    leader_epoch: 1,
                    stored_epoch: 2,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("t-0"), "{refused}");
        assert_eq!(
            lake.manifest("t", 0).await.unwrap(),
            at_2,
            "nothing committed"
        );
        assert!(
            lake.verify("t", 0).await.unwrap().is_clean(),
            "its upload is gone"
        );
        // Claims at the old epoch are refused too; the new leader goes on.
        assert!(matches!(
            lake.claim("t", 0, 1).await,
            Err(Error::FencedLeaderEpoch { .. })
        ));
        let at_2 = lake
            .offload_segment_at("t", 0, &at_2, second, &[], 0, 2)
            .await
            .unwrap()
            .manifest;
        assert_eq!((at_2.leader_epoch, at_2.next_offset()), (2, Some(20)));
        assert!(at_2.files[1].path.ends_with("-e2.parquet"));
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // Remote retention by the deposed leader: refused, and no file deleted.
        assert!(matches!(
            lake.apply_retention("t", 0, &at_2, 1, i64::MAX, 0, 0).await,
            Err(Error::FencedLeaderEpoch { .. })
        ));
        assert_eq!(lake.manifest("t", 0).await.unwrap(), at_2);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        let kept = lake
            .apply_retention("t", 0, &at_2, 2, i64::MAX, 0, 0)
            .await
            .unwrap();
        assert_eq!((kept.files.len(), kept.leader_epoch), (1, 2));
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }

    /// Two writers commit different files on the same manifest at the same moment: exactly one
    /// succeeds, on the local folder store (a file lock) and in memory (the store's own check).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_writers_racing_on_one_manifest_exactly_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        for lake in [file_lake(dir.path()), memory_lake()] {
            for round in 0..10i64 {
                let base = lake.manifest("t", 0).await.unwrap();
                let next = base.next_offset().unwrap_or(0);
                let writers = (1..=8i64).map(|w| {
                    let (lake, base) = (lake.clone(), base.clone());
                    tokio::spawn(async move {
                        let entry = FileEntry {
                            path: format!("topic=t/partition=0/{round}-{w}.parquet"),
                            base_offset: next,
                            last_offset: next + w,
                            min_timestamp_ms: 0,
                            max_timestamp_ms: 0,
                            rows: 1,
                            size_bytes: 1,
                            source_bytes: 1,
                            fresh: false,
                        };
                        let updated = base.with_file(entry).unwrap();
                        lake.commit("t", 0, &base, &updated).await.map(|()| updated)
                    })
                });
                let results = futures::future::join_all(writers).await;
                let won: Vec<Manifest> = results
                    .into_iter()
                    .filter_map(|r| match r.unwrap() {
                        Ok(m) => Some(m),
                        Err(Error::ManifestConflict { .. }) => None,
                        Err(e) => panic!("{e}"),
                    })
                    .collect();
                assert_eq!(won.len(), 1, "round {round} of {}", lake.store);
                assert_eq!(lake.manifest("t", 0).await.unwrap(), won[0]);
            }
        }
    }

    /// The conditional put itself: of two updates from the same read, the second fails, even with
    /// no check before it; a create over an existing manifest fails too.
    #[tokio::test]
    async fn a_conditional_put_from_a_stale_read_loses() {
        let dir = tempfile::tempdir().unwrap();
        for lake in [file_lake(dir.path()), memory_lake()] {
            let path = manifest_path("t", 9);
            let put = |bytes: &'static [u8], mode: PutMode| {
                let (store, path) = (Arc::clone(&lake.store), path.clone());
                async move {
                    store
                        .put_opts(&path, PutPayload::from_static(bytes), mode.into())
                        .await
                }
            };
            put(br#"{"files":[]}"#, PutMode::Create).await.unwrap();
            assert!(matches!(
                put(br#"{"files":[]}"#, PutMode::Create).await,
                Err(object_store::Error::AlreadyExists { .. })
            ));
            let (_, read) = lake.read_manifest("t", 9).await.unwrap();
            let read = read.unwrap();
            put(br#"{"files":[]}"#, PutMode::Update(read.clone()))
                .await
                .unwrap();
            assert!(
                matches!(
                    put(br#"{"files":[],"leader_epoch":1}"#, PutMode::Update(read)).await,
                    Err(object_store::Error::Precondition { .. })
                ),
                "{}",
                lake.store
            );
            assert_eq!(lake.manifest("t", 9).await.unwrap(), Manifest::default());
            lake.delete_partition("t", 9).await.unwrap();
            let missing = UpdateVersion {
                e_tag: Some("x".into()),
                version: None,
            };
            assert!(matches!(
                put(b"{}", PutMode::Update(missing)).await,
                Err(object_store::Error::Precondition { .. })
            ));
        }
    }

    /// A follower's conditional read: nothing while the manifest is unchanged, the new one after a
    /// commit; no manifest reads as empty. Lock files never show as lake data.
    #[tokio::test]
    async fn manifests_are_read_again_only_when_they_changed() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (empty, none) = lake.manifest_since("t", 0, None).await.unwrap().unwrap();
        assert_eq!((empty, none), (Manifest::default(), None));
        let (bytes, _) = segment_of(0, 10);
        let m = lake
            .offload("t", 0, &Manifest::default(), bytes, 0)
            .await
            .unwrap();
        let (read, version) = lake.manifest_since("t", 0, None).await.unwrap().unwrap();
        assert_eq!(read, m);
        assert_eq!(
            lake.manifest_since("t", 0, version.as_ref()).await.unwrap(),
            None
        );
        let claimed = lake.claim("t", 0, 3).await.unwrap();
        let (read, _) = lake
            .manifest_since("t", 0, version.as_ref())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, claimed);
        assert_eq!(lake.partitions().await.unwrap(), vec![("t".to_string(), 0)]);
        assert_eq!(
            lake.all_partitions().await.unwrap(),
            vec![("t".to_string(), 0)]
        );
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }

    /// A lake written before epochs were kept (no `leader_epoch` in its manifests) loads, a single
    /// broker goes on writing it exactly as before, and a cluster leader can claim it.
    #[tokio::test]
    async fn manifests_without_an_epoch_still_load_and_continue() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (bytes, _) = segment_of(0, 10);
        let m = lake
            .offload("t", 0, &Manifest::default(), bytes, 0)
            .await
            .unwrap();
        let stored = std::fs::read_to_string(
            dir.path()
                .join("_strata/manifests/topic=t/partition=0.json"),
        )
        .unwrap();
        assert!(!stored.contains("leader_epoch"), "{stored}");
        let (bytes, _) = segment_of(10, 10);
        let m = lake.offload("t", 0, &m, bytes, 0).await.unwrap();
        assert_eq!((m.leader_epoch, m.next_offset()), (0, Some(20)));
        assert_eq!(
            lake.claim("t", 0, 0).await.unwrap(),
            m,
            "no write at epoch 0"
        );
        assert_eq!(lake.claim("t", 0, 5).await.unwrap().files, m.files);
    }
    /// The bytes of a segment's records `from..upto` (whole batches of 5): what a fetch-style
    /// range of the active segment holds.
    fn range_of(records: &[LakeRecord], from: i64, upto: i64) -> Bytes {
        let base = records[0].offset;
        let part = &records[(from - base) as usize..(upto - base) as usize];
        Bytes::from(segment::encode(part).to_vec())
    }

    /// Uploads `records`' offsets `from..upto` as a fresh piece on `m` at `epoch` (not
    /// committed): its entry.
    async fn piece_of(
        lake: &Lake,
        m: &Manifest,
        records: &[LakeRecord],
        (from, upto): (i64, i64),
        epoch: i32,
    ) -> FileEntry {
        lake.upload_piece("t", 0, m, range_of(records, from, upto), &[], from, epoch)
            .await
            .unwrap()
            .unwrap()
            .entry
    }

    /// The paths `**/*.parquet` sees: sealed files only.
    fn parquet_objects(objects: &[(String, u64)]) -> Vec<String> {
        objects
            .iter()
            .filter(|(p, _)| p.ends_with(".parquet"))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Pieces of the active segment, then its sealed file replacing them in one commit: every
    /// offset in exactly one live entry throughout, globs never see a piece, and the pieces'
    /// objects go only once the delete delay has passed.
    #[tokio::test]
    async fn a_sealed_file_replaces_its_pieces_which_are_deleted_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (whole, records) = segment_of(0, 30);
        let mut m = lake.claim("t", 0, 0).await.unwrap();
        for (from, upto) in [(0, 10), (10, 20)] {
            let piece = piece_of(&lake, &m, &records, (from, upto), 0).await;
            assert!(piece.fresh);
            assert!(
                piece
                    .path
                    .ends_with(&format!("{:020}-{:020}.parquet.fresh", from, upto - 1)),
                "{}",
                piece.path
            );
            m = lake.commit_file("t", 0, &m, piece, 0, 100).await.unwrap();
            assert_eq!(lake.manifest("t", 0).await.unwrap(), m);
        }
        assert_eq!(
            (m.sealed_next_offset(), m.next_offset()),
            (Some(0), Some(20))
        );
        assert_eq!(
            lake.read_file(&m.files[1].path).await.unwrap(),
            records[10..20]
        );
        let objects = lake.objects("t", 0).await.unwrap();
        assert!(parquet_objects(&objects).is_empty(), "{objects:?}");
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // A sealed upload that ended inside a piece would be refused at its commit.
        let short = lake
            .upload_segment("t", 0, &m, range_of(&records, 0, 15), &[], 0, 0)
            .await
            .unwrap()
            .unwrap();
        let refused = lake
            .commit_file("t", 0, &m, short.entry.clone(), 0, 200)
            .await;
        assert!(matches!(refused, Err(Error::Corrupt(_))), "{refused:?}");
        lake.delete_object(&short.entry.path).await.unwrap();
        // The segment seals: its file starts at the sealed files' end, over the pieces.
        let sealed = lake
            .upload_segment("t", 0, &m, whole, &[], 0, 0)
            .await
            .unwrap()
            .unwrap();
        let m = lake
            .commit_file("t", 0, &m, sealed.entry, 0, 1_000)
            .await
            .unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(
            (
                m.files[0].base_offset,
                m.files[0].last_offset,
                m.files[0].fresh
            ),
            (0, 29, false)
        );
        assert_eq!(m.retired.len(), 2);
        assert!(m.retired.iter().all(|r| r.retired_at_ms == 1_000));
        let objects = lake.objects("t", 0).await.unwrap();
        assert_eq!(objects.len(), 3, "the pieces stay for the delay");
        assert_eq!(parquet_objects(&objects), vec![m.files[0].path.clone()]);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        assert_eq!(lake.read_file(&m.files[0].path).await.unwrap(), records);
        // Not before the delay; then objects first, the manifest after.
        let same = lake
            .delete_retired("t", 0, &m, 0, 1_999, 1_000)
            .await
            .unwrap();
        assert_eq!(same, m);
        assert_eq!(lake.objects("t", 0).await.unwrap().len(), 3);
        let m = lake
            .delete_retired("t", 0, &m, 0, 2_000, 1_000)
            .await
            .unwrap();
        assert!(m.retired.is_empty());
        assert_eq!(lake.manifest("t", 0).await.unwrap(), m);
        assert_eq!(lake.objects("t", 0).await.unwrap().len(), 1);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }

    /// A piece uploaded and never committed (a crash, a failed commit) is removed by the sweep
    /// at the leader's claim, at epoch 0 too; committed and retired pieces stay.
    #[tokio::test]
    async fn orphan_pieces_are_removed_at_claim() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (_, records) = segment_of(0, 30);
        let m = lake.claim("t", 0, 0).await.unwrap();
        let first = piece_of(&lake, &m, &records, (0, 10), 0).await;
        let m = lake.commit_file("t", 0, &m, first, 0, 0).await.unwrap();
        let m = m.with_retired(
            &[FileEntry {
                path: upload_path("t", 0, (90, 99), 0, true),
                ..m.files[0].clone()
            }],
            0,
        );
        lake.commit("t", 0, &lake.manifest("t", 0).await.unwrap(), &m)
            .await
            .unwrap();
        lake.store
            .put(
                &Path::from(upload_path("t", 0, (90, 99), 0, true)),
                PutPayload::from_static(b"retired"),
            )
            .await
            .unwrap();
        // Uploaded, then the broker crashed before the commit.
        let lost = piece_of(&lake, &m, &records, (10, 20), 0).await;
        assert_eq!(lake.objects("t", 0).await.unwrap().len(), 3);
        let claimed = lake.claim("t", 0, 0).await.unwrap();
        assert_eq!(
            lake.remove_orphans("t", 0, &claimed).await.unwrap(),
            vec![lost.path.clone()]
        );
        assert_eq!(lake.objects("t", 0).await.unwrap().len(), 2);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // The next piece continues the manifest as if nothing was uploaded.
        let next = piece_of(&lake, &claimed, &records, (10, 25), 0).await;
        let m = lake
            .commit_file("t", 0, &claimed, next, 0, 0)
            .await
            .unwrap();
        assert_eq!(m.next_offset(), Some(25));
    }

    /// A piece local data cannot replace is copied to its sealed name and committed in its place.
    #[tokio::test]
    async fn a_promoted_piece_becomes_a_sealed_file_of_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let lake = file_lake(dir.path());
        let (_, records) = segment_of(0, 30);
        let mut m = lake.claim("t", 0, 3).await.unwrap();
        for (from, upto) in [(0, 10), (10, 30)] {
            let piece = piece_of(&lake, &m, &records, (from, upto), 3).await;
            m = lake.commit_file("t", 0, &m, piece, 3, 0).await.unwrap();
        }
        let pieces = m.files.clone();
        // A later leader promotes the first piece.
        let m = lake.claim("t", 0, 4).await.unwrap();
        let promoted = lake.promote_piece("t", 0, &m, 4, 50).await.unwrap();
        assert_eq!(lake.manifest("t", 0).await.unwrap(), promoted);
        let sealed = &promoted.files[0];
        assert_eq!(
            sealed.path,
            "topic=t/partition=0/00000000000000000000-00000000000000000009-e4.parquet"
        );
        assert_eq!(
            FileEntry {
                path: pieces[0].path.clone(),
                fresh: true,
                ..sealed.clone()
            },
            pieces[0],
            "the same offsets, rows, timestamps and size"
        );
        assert_eq!(promoted.files[1], pieces[1], "still a piece");
        assert_eq!(promoted.sealed_next_offset(), Some(10));
        assert!(promoted.names(&pieces[0].path) && promoted.retired.len() == 1);
        assert_eq!(lake.read_file(&sealed.path).await.unwrap(), records[..10]);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // Then the second; nothing is left to promote.
        let promoted = lake.promote_piece("t", 0, &promoted, 4, 60).await.unwrap();
        assert!(promoted.fresh_pieces().is_empty());
        assert_eq!(promoted.next_offset(), Some(30));
        assert_eq!(
            lake.promote_piece("t", 0, &promoted, 4, 70).await.unwrap(),
            promoted
        );
        let objects = lake.objects("t", 0).await.unwrap();
        assert_eq!(parquet_objects(&objects).len(), 2);
        let promoted = lake
            .delete_retired("t", 0, &promoted, 4, 70, 0)
            .await
            .unwrap();
        assert_eq!(lake.objects("t", 0).await.unwrap().len(), 2);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
        // Remote retention retires what it removes too.
        let kept = lake
            .apply_retention("t", 0, &promoted, 4, i64::MAX, 0, -1)
            .await
            .unwrap();
        assert_eq!((kept.files.len(), kept.retired.len()), (1, 1));
        assert_eq!(kept.retired[0].retired_at_ms, i64::MAX);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }

    #[test]
    fn piece_names_read_back_with_their_epoch() {
        let piece = upload_path("t", 1, (0, 9), 0, true);
        assert!(
            piece.ends_with("-00000000000000000009.parquet.fresh"),
            "{piece}"
        );
        assert_eq!(upload_name(&piece), Some((0, true)));
        assert_eq!(
            upload_name(&upload_path("t", 1, (0, 9), 6, true)),
            Some((6, true))
        );
        assert_eq!(
            upload_name(&upload_path("t", 1, (0, 9), 6, false)),
            Some((6, false))
        );
        assert_eq!(upload_name("topic=t/partition=1/1-2.fresh"), None);
        assert_eq!(
            upload_name("topic=t/partition=1/1-2.parquet.fresh.fresh"),
            None
        );
        // At the committed epoch, uncommitted pieces are orphans; sealed uploads are not (a
        // retry overwrites them); a later leader's are not either.
        let manifest = Manifest::default().at_epoch(3);
        let objects: Vec<(String, u64)> = [
            upload_path("t", 0, (0, 9), 2, true),
            upload_path("t", 0, (0, 9), 3, true),
            upload_path("t", 0, (0, 9), 3, false),
            upload_path("t", 0, (0, 9), 4, true),
        ]
        .into_iter()
        .map(|p| (p, 1))
        .collect();
        assert_eq!(
            superseded_uploads(&manifest, &objects),
            vec![objects[0].0.clone(), objects[1].0.clone()]
        );
    }
}
