//! Each tiered topic as an Iceberg table (format v2) over the lake's own Parquet files,
//! referenced in place: sealed files and fresh pieces alike, with no copy. Engines open it by
//! path, with no catalog server:
//!
//! ```text
//! <tier-url>/_iceberg/<topic>/metadata/
//!   v<N>.metadata.json           table metadata, version N (written with a conditional put)
//!   version-hint.text            N, the latest version (best effort: readers may also list)
//!   snap-<snapshot id>-<uuid>.avro   a snapshot's manifest list
//!   <uuid>-m0.avro               a manifest: one partition's files
//! ```
//!
//! The Strata manifests stay the source of truth: the table is derived from them. A commit
//! ([`IcebergTable::commit`]) takes some partitions' live files and makes them the current
//! snapshot's files of those partitions, writing one manifest per changed partition (the
//! manifests of the other partitions are carried over) and the next `v<N+1>.metadata.json`
//! with `PutMode::Create`, so of two brokers committing at once (each partition has its own
//! leader) one wins and the other reads the new version and tries again. A commit that would
//! change nothing writes nothing, so the pipeline can call it after every manifest commit and
//! at claim time: a crash between the two commits is repaired by the next call.
//!
//! Schema, partition spec (`identity(partition)`, the Kafka partition, which no file holds:
//! readers fill the column from the partition value) and name mapping: [`metadata`]. Each
//! manifest records the leader epoch that wrote it, and a commit from an earlier leader of that
//! partition is refused, as manifest commits are. Snapshots older than the retention expire
//! with the commit that finds them old (never the current one), and the manifest lists,
//! manifests and metadata files only they used are deleted after it.

pub mod avro;
pub mod metadata;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::error::{Error, Result};
use crate::manifest::FileEntry;

use self::avro::{DataFile, ManifestFile};
use self::metadata::{PREVIOUS_VERSIONS_MAX, Snapshot, TableMetadata};
use self::plan::{CurrentManifest, Desired};

/// Folder of the tables under the tier root.
pub const TABLES_FOLDER: &str = "_iceberg";
/// Commits that lose the race for the next version to another writer before giving up. Each
/// loss means another partition's leader committed; the pipeline calls again at its next pass.
const COMMIT_ATTEMPTS_MAX: u32 = 8;
/// Snapshots one commit expires at most (each costs a read of its manifest list); the rest
/// expire with the next commits.
const EXPIRED_PER_COMMIT_MAX: usize = 64;
/// Versions probed one by one past the version hint before listing the folder instead.
const PROBES_MAX: u64 = 16;

/// Warned once per process: the store cannot put conditionally.
static UNCONDITIONAL_WARNED: AtomicBool = AtomicBool::new(false);

/// One partition's live files, as its Strata manifest names them, committed by its leader.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFiles<'a> {
    /// The partition.
    pub partition: i32,
    /// The committing leader's epoch (0 for a single broker): a commit below the epoch that
    /// wrote the partition's current manifest is refused.
    pub leader_epoch: i32,
    /// The manifest's live files (`Manifest::files`), in offset order.
    pub files: &'a [FileEntry],
}

impl<'a> PartitionFiles<'a> {
    /// The live files of `manifest`, the partition's Strata manifest as its leader committed it
    /// (at the manifest's leader epoch).
    pub fn of(partition: i32, manifest: &'a crate::Manifest) -> Self {
        Self {
            partition,
            leader_epoch: manifest.leader_epoch,
            files: &manifest.files,
        }
    }
}

/// A data file of the current snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    /// Path under the tier root (as manifests name files), or the absolute URI when the file is
    /// not under this table's tier root.
    pub path: String,
    /// Absolute URI, as Iceberg readers open it.
    pub uri: String,
    /// Rows.
    pub record_count: u64,
    /// Bytes of the object.
    pub size_bytes: u64,
}

/// The current snapshot of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSnapshot {
    /// The metadata version (`v<N>.metadata.json`).
    pub version: u64,
    /// URI of that metadata file: what `iceberg_scan` or pyiceberg's `StaticTable` open.
    pub metadata_file: String,
    /// Snapshot id.
    pub snapshot_id: i64,
    /// Its sequence number.
    pub sequence_number: i64,
    /// When it was committed.
    pub timestamp_ms: i64,
    /// Live files per partition, in offset order.
    pub partitions: BTreeMap<i32, Vec<TableFile>>,
}

/// A topic's Iceberg table.
#[derive(Debug)]
pub struct IcebergTable {
    store: Arc<dyn ObjectStore>,
    topic: String,
    /// Absolute URI of the tier root, without a trailing slash.
    root: String,
    /// The table's location URI.
    location: String,
    /// Object path of the metadata folder.
    metadata_folder: String,
    /// What was last read or written, reused while it is current. The lock also serializes
    /// this process's commits to the table.
    cache: tokio::sync::Mutex<Cache>,
}

/// Objects are immutable but for the version hint, so what was read stays true; only whether
/// it is the latest needs checking.
#[derive(Debug, Default)]
struct Cache {
    /// The latest metadata version known and its content.
    latest: Option<(u64, Arc<TableMetadata>)>,
    /// Manifests of the current snapshot, read, by URI.
    manifests: HashMap<String, Arc<CurrentManifest>>,
    /// The current snapshot's manifest list, read: (URI, entries).
    list: Option<(String, Arc<Vec<ManifestFile>>)>,
}

fn storage(e: object_store::Error) -> Error {
    Error::Storage(e.to_string())
}

/// The absolute URI of the tier root: `file:///abs/path` for a local folder (not
/// percent-encoded: Iceberg readers take the path as it is), `s3://bucket/prefix` otherwise.
pub fn root_uri(tier_url: &str) -> Result<String> {
    if let Some(folder) = crate::store::local_folder(tier_url)? {
        let path = folder.to_str().ok_or_else(|| {
            Error::Config(format!("tier folder {} is not UTF-8", folder.display()))
        })?;
        return Ok(format!("file://{}", path.trim_end_matches('/')));
    }
    Ok(tier_url.trim_end_matches('/').to_string())
}

/// A new snapshot id: random, positive.
fn new_snapshot_id() -> i64 {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    ((high >> 1) as i64).max(1)
}

impl IcebergTable {
    /// The table of `topic` in the lake `store` whose tier URL is `tier_url` (the URL `store`
    /// was opened from: data files are named by absolute URIs under it). No I/O.
    pub fn open(store: Arc<dyn ObjectStore>, tier_url: &str, topic: &str) -> Result<Self> {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || !topic.chars().all(legal) {
            return Err(Error::Config(format!(
                "topic {topic:?} cannot name an Iceberg table (Kafka topic names are \
                 [a-zA-Z0-9._-]+)"
            )));
        }
        let root = root_uri(tier_url)?;
        Ok(Self {
            store,
            location: format!("{root}/{TABLES_FOLDER}/{topic}"),
            metadata_folder: format!("{TABLES_FOLDER}/{topic}/metadata"),
            topic: topic.to_string(),
            root,
            cache: tokio::sync::Mutex::default(),
        })
    }

    /// The table's location URI (`<tier-url>/_iceberg/<topic>`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The URI of a metadata file.
    fn metadata_uri(&self, name: &str) -> String {
        format!("{}/metadata/{name}", self.location)
    }

    fn metadata_path(&self, name: &str) -> Path {
        Path::from(format!("{}/{name}", self.metadata_folder))
    }

    /// The object of a metadata file named by URI (by the name after `/metadata/`, so a table
    /// whose tier moved still finds its files); `None` for a URI that names no metadata file
    /// of a table.
    fn metadata_object(&self, uri: &str) -> Option<Path> {
        let (folder, name) = uri.rsplit_once('/')?;
        let ours = name.ends_with(".avro") || name.ends_with(".metadata.json");
        (folder.ends_with("/metadata") && ours && !name.is_empty())
            .then(|| self.metadata_path(name))
    }

    fn version_name(version: u64) -> String {
        format!("v{version}.metadata.json")
    }

    /// The data file of a manifest entry.
    fn data_file(&self, partition: i32, f: &FileEntry) -> DataFile {
        let has_rows = f.rows > 0;
        // Offsets are exact bounds only when every offset of the range holds a row: ranges
        // also cover transaction markers and aborted records, which the file does not hold.
        let dense = u64::try_from(f.last_offset - f.base_offset + 1).is_ok_and(|n| n == f.rows);
        DataFile {
            path: format!("{}/{}", self.root, f.path),
            partition,
            record_count: i64::try_from(f.rows).unwrap_or(i64::MAX),
            file_size_in_bytes: i64::try_from(f.size_bytes).unwrap_or(i64::MAX),
            offsets: (has_rows && dense).then_some((f.base_offset, f.last_offset)),
            timestamps_ms: has_rows.then_some((f.min_timestamp_ms, f.max_timestamp_ms)),
        }
    }

    /// Makes `partitions`' files the current snapshot's files of those partitions (the other
    /// partitions keep theirs), as one snapshot committed at `now_ms`. Returns the new
    /// snapshot's id, or `None` when the table already had exactly these files (nothing is
    /// written). Snapshots committed more than `snapshot_retention_ms` ago expire with it.
    ///
    /// Errors: [`Error::FencedLeaderEpoch`] when a later leader of one of the partitions wrote
    /// its files (nothing is committed); [`Error::Storage`] when the store fails or other
    /// writers won the race for the next version several times in a row (retry later).
    pub async fn commit(
        &self,
        partitions: &[PartitionFiles<'_>],
        now_ms: i64,
        snapshot_retention_ms: i64,
    ) -> Result<Option<i64>> {
        let desired: Vec<Desired> = partitions
            .iter()
            .map(|p| Desired {
                partition: p.partition,
                leader_epoch: p.leader_epoch,
                files: p
                    .files
                    .iter()
                    .map(|f| self.data_file(p.partition, f))
                    .collect(),
            })
            .collect();
        let mut cache = self.cache.lock().await;
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let latest = self.latest(&mut cache).await?;
            let current = self.current_manifests(&mut cache, latest.as_ref()).await?;
            match self
                .try_commit(latest, &current, &desired, now_ms, snapshot_retention_ms)
                .await?
            {
                Attempt::Unchanged => return Ok(None),
                Attempt::Committed(snapshot_id, version, metadata) => {
                    cache.latest = Some((version, metadata));
                    return Ok(Some(snapshot_id));
                }
                Attempt::Lost => cache.latest = None,
            }
        }
        Err(Error::Storage(format!(
            "Iceberg table {}: {COMMIT_ATTEMPTS_MAX} commits in a row lost the race for the \
             next metadata version to other writers",
            self.topic
        )))
    }

    /// One attempt of [`Self::commit`] on the version read.
    async fn try_commit(
        &self,
        latest: Option<(u64, Arc<TableMetadata>)>,
        current: &[Arc<CurrentManifest>],
        desired: &[Desired],
        now_ms: i64,
        retention_ms: i64,
    ) -> Result<Attempt> {
        let parent = latest.as_ref().and_then(|(_, m)| m.current_snapshot());
        let snapshot_id = new_snapshot_id();
        let previous_summary = parent.map(|s| &s.summary);
        let Some(plan) = plan::plan(&self.topic, current, desired, snapshot_id, previous_summary)?
        else {
            return Ok(Attempt::Unchanged);
        };
        let (version, base) = match &latest {
            Some((v, m)) => (*v, TableMetadata::clone(m)),
            None => (0, self.new_metadata(now_ms)),
        };
        let sequence_number = base.last_sequence_number + 1;
        let mut written = Vec::new();
        let result = self
            .write_snapshot_files(&plan, snapshot_id, sequence_number, parent, &mut written)
            .await;
        let (manifest_list, list) = match result {
            Ok(done) => done,
            Err(e) => {
                self.delete_quietly(written).await;
                return Err(e);
            }
        };
        let snapshot = Snapshot {
            snapshot_id,
            parent_snapshot_id: parent.map(|s| s.snapshot_id),
            sequence_number,
            timestamp_ms: now_ms,
            manifest_list,
            summary: plan.summary,
            schema_id: Some(metadata::SCHEMA_ID),
        };
        let (next, garbage) = self
            .next_metadata(&base, version, snapshot, &list, now_ms, retention_ms)
            .await;
        match self.put_version(version + 1, &next).await {
            Ok(()) => {}
            Err(PutError::Exists) => {
                self.delete_quietly(written).await;
                return Ok(Attempt::Lost);
            }
            Err(PutError::Other(e)) => {
                self.delete_quietly(written).await;
                return Err(e);
            }
        }
        self.after_commit(version + 1, garbage).await;
        Ok(Attempt::Committed(snapshot_id, version + 1, Arc::new(next)))
    }

    /// The metadata of the version after `version` (`base`): `snapshot` current, the snapshots
    /// past the retention expired, the metadata log trimmed. Returns it and the objects that only
    /// what it drops used (to delete once it is committed). `list` is `snapshot`'s manifests.
    async fn next_metadata(
        &self,
        base: &TableMetadata,
        version: u64,
        snapshot: Snapshot,
        list: &[ManifestFile],
        now_ms: i64,
        retention_ms: i64,
    ) -> (TableMetadata, Vec<Path>) {
        let previous_file = (version > 0).then(|| self.metadata_uri(&Self::version_name(version)));
        let mut next = base.with_snapshot(snapshot.clone(), previous_file.clone(), now_ms);
        let mut garbage = Vec::new();
        let expired = next.expire_snapshots(now_ms, retention_ms, EXPIRED_PER_COMMIT_MAX);
        if !expired.is_empty() {
            match self.files_of_expired(&expired, &next, list).await {
                Ok(files) => garbage = files,
                Err(e) => {
                    // Expire them with a later commit, when their files can be told.
                    tracing::warn!(topic = %self.topic, error = %e,
                        "Iceberg snapshots not expired: a manifest list could not be read");
                    next = base.with_snapshot(snapshot, previous_file, now_ms);
                }
            }
        }
        garbage.extend(
            next.trim_metadata_log(PREVIOUS_VERSIONS_MAX)
                .iter()
                .filter_map(|uri| self.metadata_object(uri)),
        );
        (next, garbage)
    }

    /// A new table's metadata, with no snapshot.
    fn new_metadata(&self, now_ms: i64) -> TableMetadata {
        let mapping = serde_json::to_string(&metadata::name_mapping()).expect("JSON");
        let properties = [
            ("schema.name-mapping.default", mapping),
            ("write.metadata.delete-after-commit.enabled", "true".into()),
            (
                "write.metadata.previous-versions-max",
                PREVIOUS_VERSIONS_MAX.to_string(),
            ),
            ("write.parquet.compression-codec", "zstd".into()),
            ("strata.topic", self.topic.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        TableMetadata::new(
            self.location.clone(),
            uuid::Uuid::new_v4().to_string(),
            now_ms,
            properties,
        )
    }

    /// Writes the changed partitions' manifests and the snapshot's manifest list (pushing each
    /// object's path to `written` as it goes); returns the list's URI and entries.
    async fn write_snapshot_files(
        &self,
        plan: &plan::Plan,
        snapshot_id: i64,
        sequence_number: i64,
        parent: Option<&Snapshot>,
        written: &mut Vec<Path>,
    ) -> Result<(String, Vec<ManifestFile>)> {
        let mut list = plan.kept.clone();
        for m in plan.changed.iter().filter(|m| !m.entries.is_empty()) {
            let bytes = avro::write_manifest(&m.entries, m.leader_epoch);
            let name = format!("{}-m0.avro", uuid::Uuid::new_v4());
            let length = bytes.len() as i64;
            self.put(&name, bytes, written).await?;
            list.push(plan::manifest_file(
                m,
                self.metadata_uri(&name),
                length,
                snapshot_id,
                sequence_number,
            ));
        }
        list.sort_by_key(|m| m.partition);
        let bytes = avro::write_manifest_list(
            &list,
            snapshot_id,
            parent.map(|s| s.snapshot_id),
            sequence_number,
        );
        let name = format!("snap-{snapshot_id}-{}.avro", uuid::Uuid::new_v4());
        self.put(&name, bytes, written).await?;
        Ok((self.metadata_uri(&name), list))
    }

    async fn put(&self, name: &str, bytes: Vec<u8>, written: &mut Vec<Path>) -> Result<()> {
        let path = self.metadata_path(name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        written.push(path);
        Ok(())
    }

    /// The objects only `expired` snapshots used: their manifest lists, and the manifests they
    /// name that the oldest snapshot kept does not. History is linear and a manifest, once
    /// dropped, never comes back, so a manifest that a kept snapshot names is named by the
    /// oldest kept one.
    async fn files_of_expired(
        &self,
        expired: &[Snapshot],
        next: &TableMetadata,
        current_list: &[ManifestFile],
    ) -> Result<Vec<Path>> {
        let oldest_kept = next
            .snapshots
            .first()
            .expect("the current snapshot is kept");
        let kept: Vec<String> = if next.current_snapshot_id == Some(oldest_kept.snapshot_id) {
            current_list
                .iter()
                .map(|m| m.manifest_path.clone())
                .collect()
        } else {
            self.read_list(&oldest_kept.manifest_list)
                .await?
                .into_iter()
                .map(|m| m.manifest_path)
                .collect()
        };
        let mut garbage = Vec::new();
        for s in expired {
            for m in self.read_list(&s.manifest_list).await? {
                if !kept.contains(&m.manifest_path) {
                    garbage.extend(self.metadata_object(&m.manifest_path));
                }
            }
            garbage.extend(self.metadata_object(&s.manifest_list));
        }
        garbage.sort();
        garbage.dedup();
        Ok(garbage)
    }

    async fn read_list(&self, uri: &str) -> Result<Vec<ManifestFile>> {
        avro::read_manifest_list(&self.read_metadata_file(uri).await?)
    }

    async fn read_metadata_file(&self, uri: &str) -> Result<Bytes> {
        let path = self.metadata_object(uri).ok_or_else(|| {
            Error::Corrupt(format!(
                "Iceberg table {}: {uri} is not a metadata file of a table",
                self.topic
            ))
        })?;
        self.store
            .get(&path)
            .await
            .map_err(storage)?
            .bytes()
            .await
            .map_err(storage)
    }

    /// `v<version>.metadata.json`, created only if absent.
    async fn put_version(&self, version: u64, metadata: &TableMetadata) -> Result<(), PutError> {
        let path = self.metadata_path(&Self::version_name(version));
        // Compact: the file grows with every snapshot kept, and is written at every commit.
        let bytes = Bytes::from(serde_json::to_vec(metadata).expect("JSON"));
        let put = self
            .store
            .put_opts(
                &path,
                PutPayload::from(bytes.clone()),
                PutMode::Create.into(),
            )
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(PutError::Exists),
            Err(object_store::Error::NotImplemented { .. }) => {
                if !UNCONDITIONAL_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(store = %self.store,
                        "the object store cannot put conditionally: Iceberg commits of two \
                         brokers racing could lose one (the next commit of its partition \
                         repairs it)");
                }
                let exists = self.store.head(&path).await;
                if exists.is_ok() {
                    return Err(PutError::Exists);
                }
                self.store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| PutError::Other(storage(e)))
            }
            Err(e) => Err(PutError::Other(storage(e))),
        }
    }

    /// After a commit of `version`: the version hint, and the objects that are no longer needed
    /// (both best effort: a reader probes past the hint, and a failed delete leaves an object
    /// no snapshot names).
    async fn after_commit(&self, version: u64, garbage: Vec<Path>) {
        let hint = self.metadata_path("version-hint.text");
        if let Err(e) = self
            .store
            .put(&hint, PutPayload::from(version.to_string().into_bytes()))
            .await
        {
            tracing::warn!(topic = %self.topic, error = %e, "Iceberg version hint not written");
        }
        // In order, oldest metadata versions first, stopping at the first failure: the
        // versions left always form one range up to the latest, which finding the latest
        // relies on.
        for path in garbage {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(topic = %self.topic, %path, error = %e,
                        "an expired Iceberg metadata file was not deleted");
                    break;
                }
            }
        }
    }

    async fn delete_quietly(&self, paths: Vec<Path>) {
        for path in paths {
            if let Err(e) = self.store.delete(&path).await {
                tracing::debug!(%path, error = %e, "an uncommitted Iceberg file was not deleted");
            }
        }
    }

    async fn exists(&self, version: u64) -> Result<bool> {
        match self
            .store
            .head(&self.metadata_path(&Self::version_name(version)))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage(e)),
        }
    }

    async fn read_hint(&self) -> Result<Option<u64>> {
        match self
            .store
            .get(&self.metadata_path("version-hint.text"))
            .await
        {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(storage)?;
                Ok(std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.trim().parse().ok()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    /// The latest version by listing the metadata folder.
    async fn list_latest(&self) -> Result<Option<u64>> {
        let prefix = Path::from(self.metadata_folder.as_str());
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(storage)?;
        Ok(objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_prefix('v')?
                    .strip_suffix(".metadata.json")?
                    .parse()
                    .ok()
            })
            .max())
    }

    /// The latest metadata version and its content (`None` before the first commit): from the
    /// version known or the hint, whichever is later, probing the next versions; by listing
    /// when that version is gone.
    async fn latest(&self, cache: &mut Cache) -> Result<Option<(u64, Arc<TableMetadata>)>> {
        let known = cache.latest.as_ref().map(|(v, _)| *v);
        let start = known.max(self.read_hint().await?);
        let mut found = None;
        if let Some(mut v) = start
            && self.exists(v).await?
        {
            let mut probes = 0;
            while probes < PROBES_MAX && self.exists(v + 1).await? {
                (v, probes) = (v + 1, probes + 1);
            }
            found = (probes < PROBES_MAX).then_some(v);
        }
        let version = match found {
            Some(v) => Some(v),
            None => self.list_latest().await?,
        };
        let Some(version) = version else {
            cache.latest = None;
            return Ok(None);
        };
        if let Some((v, m)) = &cache.latest
            && *v == version
        {
            return Ok(Some((version, Arc::clone(m))));
        }
        let uri = self.metadata_uri(&Self::version_name(version));
        let bytes = self.read_metadata_file(&uri).await?;
        let metadata: TableMetadata = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Corrupt(format!("Iceberg table metadata {uri} does not parse: {e}"))
        })?;
        let latest = (version, Arc::new(metadata));
        cache.latest = Some(latest.clone());
        Ok(Some(latest))
    }

    /// The manifests of the current snapshot of `latest`, read (from the cache when known).
    async fn current_manifests(
        &self,
        cache: &mut Cache,
        latest: Option<&(u64, Arc<TableMetadata>)>,
    ) -> Result<Vec<Arc<CurrentManifest>>> {
        let Some(snapshot) = latest.and_then(|(_, m)| m.current_snapshot()) else {
            return Ok(Vec::new());
        };
        let list = match &cache.list {
            Some((uri, list)) if *uri == snapshot.manifest_list => Arc::clone(list),
            _ => Arc::new(self.read_list(&snapshot.manifest_list).await?),
        };
        let mut manifests = HashMap::new();
        let mut current = Vec::new();
        for file in list.iter() {
            let read = match cache.manifests.get(&file.manifest_path) {
                Some(m) if m.file == *file => Arc::clone(m),
                _ => {
                    let bytes = self.read_metadata_file(&file.manifest_path).await?;
                    let (entries, leader_epoch) = avro::read_manifest(&bytes)?;
                    Arc::new(CurrentManifest {
                        entries: plan::inherit(entries, file),
                        file: file.clone(),
                        leader_epoch,
                    })
                }
            };
            manifests.insert(file.manifest_path.clone(), Arc::clone(&read));
            current.push(read);
        }
        cache.manifests = manifests;
        cache.list = Some((snapshot.manifest_list.clone(), list));
        Ok(current)
    }

    /// The current snapshot's files per partition (`None` before the first commit): what an
    /// Iceberg reader of the table reads now.
    pub async fn current_files(&self) -> Result<Option<TableSnapshot>> {
        let mut cache = self.cache.lock().await;
        let Some(latest) = self.latest(&mut cache).await? else {
            return Ok(None);
        };
        let Some(snapshot) = latest.1.current_snapshot().cloned() else {
            return Ok(None);
        };
        let current = self.current_manifests(&mut cache, Some(&latest)).await?;
        let mut partitions: BTreeMap<i32, Vec<TableFile>> = BTreeMap::new();
        let prefix = format!("{}/", self.root);
        for m in &current {
            for e in m
                .entries
                .iter()
                .filter(|e| e.status != avro::Status::Deleted)
            {
                let f = &e.file;
                partitions.entry(f.partition).or_default().push(TableFile {
                    path: f.path.strip_prefix(&prefix).unwrap_or(&f.path).to_string(),
                    uri: f.path.clone(),
                    record_count: u64::try_from(f.record_count).unwrap_or(0),
                    size_bytes: u64::try_from(f.file_size_in_bytes).unwrap_or(0),
                });
            }
        }
        Ok(Some(TableSnapshot {
            version: latest.0,
            metadata_file: self.metadata_uri(&Self::version_name(latest.0)),
            snapshot_id: snapshot.snapshot_id,
            sequence_number: snapshot.sequence_number,
            timestamp_ms: snapshot.timestamp_ms,
            partitions,
        }))
    }
}

/// How one commit attempt ended.
enum Attempt {
    /// The table already had the files.
    Unchanged,
    /// Committed: the snapshot id, the metadata version and its content.
    Committed(i64, u64, Arc<TableMetadata>),
    /// Another writer created the version first.
    Lost,
}

/// Why a metadata version was not created.
enum PutError {
    /// It exists: another writer created it.
    Exists,
    /// The store failed.
    Other(Error),
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow_array_58::cast::AsArray;
    use arrow_array_58::types::Int64Type;
    use arrow_array_58::{Array, RecordBatch};
    use iceberg::TableIdent;
    use iceberg::io::FileIO;
    use iceberg::scan::FileScanTask;
    use iceberg::spec::{Literal, PrimitiveLiteral};
    use iceberg::table::StaticTable;

    use super::*;
    use crate::records::LakeRecord;

    const DAY_MS: i64 = 86_400_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        folder: std::path::PathBuf,
        store: Arc<dyn ObjectStore>,
        url: String,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("lake");
            let url = crate::store::file_url(&folder).unwrap();
            let store = crate::store::open(&url, &BTreeMap::new()).unwrap();
            Self {
                _dir: dir,
                folder,
                store,
                url,
            }
        }

        fn table(&self) -> IcebergTable {
            IcebergTable::open(Arc::clone(&self.store), &self.url, "t").unwrap()
        }

        /// Writes a lake file of `partition` holding offsets `first..=last` (every third one
        /// left out when `gaps`, as aborted records are), with field ids unless `old`.
        async fn file(&self, partition: i32, first: i64, last: i64, kind: Kind) -> FileEntry {
            let records: Vec<LakeRecord> = (first..=last)
                .filter(|o| kind != Kind::Gaps || o % 3 != 0)
                .map(|offset| LakeRecord {
                    offset,
                    timestamp_ms: 1_700_000_000_000 + offset,
                    key: Some(Bytes::from(format!("k{offset}"))),
                    value: Some(Bytes::from(format!("p{partition}-{offset}"))),
                    headers: vec![("h".into(), Some(Bytes::from_static(b"1")))],
                    batch_offset: offset,
                    batch_attributes: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    sequence: -1,
                    partition_leader_epoch: 0,
                })
                .collect();
            let bytes = match kind {
                Kind::Old => crate::parquet_file::write_without_field_ids(&records),
                _ => crate::parquet_file::write(&records).unwrap(),
            };
            let fresh = kind == Kind::Fresh;
            let suffix = if fresh { ".parquet.fresh" } else { ".parquet" };
            let path = format!("topic=t/partition={partition}/{first:020}-{last:020}{suffix}");
            let size_bytes = bytes.len() as u64;
            self.store
                .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                .await
                .unwrap();
            // The entry as a manifest stores it (JSON), `fresh` included.
            serde_json::from_value(serde_json::json!({
                "path": path,
                "base_offset": first,
                "last_offset": last,
                "min_timestamp_ms": records.first().map_or(-1, |r| r.timestamp_ms),
                "max_timestamp_ms": records.last().map_or(-1, |r| r.timestamp_ms),
                "rows": records.len(),
                "size_bytes": size_bytes,
                "source_bytes": size_bytes,
                "fresh": fresh,
            }))
            .unwrap()
        }

        /// Objects of the table's metadata folder, by name.
        async fn metadata_objects(&self) -> BTreeSet<String> {
            let prefix = Path::from("_iceberg/t/metadata");
            let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.unwrap();
            listed
                .iter()
                .map(|o| o.location.filename().unwrap().to_string())
                .collect()
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Sealed,
        Fresh,
        /// Written before files carried field ids.
        Old,
        /// Offsets missing as aborted transactions leave them.
        Gaps,
    }

    fn at(partition: i32, files: &[FileEntry]) -> PartitionFiles<'_> {
        PartitionFiles {
            partition,
            leader_epoch: 0,
            files,
        }
    }

    /// Every row of the table's current snapshot as the `iceberg` crate (an independent
    /// reader) scans it from `metadata_file`: (partition, offset, value, header count), sorted.
    ///
    /// Two gaps of the crate (0.10.1) shape this: it refuses Parquet TIMESTAMP(MILLIS) columns
    /// ("Unsupported Arrow data type: Timestamp(ms, \"UTC\")"), which the lake's files hold (the
    /// spec's Parquet type of `timestamptz` is TIMESTAMP(MICROS)), so `timestamp` is not
    /// selected; and its scans do not fill identity partition columns from the partition value
    /// yet (its main branch does), so the partition is the one the crate's planning gives each
    /// file, from the manifests, and each file is read as a task of its own.
    async fn scan(metadata_file: &str) -> Vec<(i32, i64, String, usize)> {
        scan_columns(metadata_file, &ALL_BUT_TIMESTAMP).await
    }

    /// Every column that the `iceberg` crate reads from the lake's files (see [`scan`]).
    const ALL_BUT_TIMESTAMP: [&str; 10] = [
        "offset",
        "key",
        "value",
        "headers",
        "batch_offset",
        "batch_attributes",
        "producer_id",
        "producer_epoch",
        "sequence",
        "partition_leader_epoch",
    ];

    /// [`scan`] of some columns (`offset` and `value` among them); the header count is 0 when
    /// `headers` is not selected.
    async fn scan_columns(metadata_file: &str, columns: &[&str]) -> Vec<(i32, i64, String, usize)> {
        let ident = TableIdent::from_strs(["strata", "t"]).unwrap();
        let table = StaticTable::from_metadata_file(metadata_file, ident, FileIO::new_with_fs())
            .await
            .unwrap();
        let scan = table
            .scan()
            .select(columns.iter().copied())
            .build()
            .unwrap();
        let tasks: Vec<FileScanTask> = scan
            .plan_files()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for task in tasks {
            let partition = match task.partition.as_ref().map(|p| &p[0]) {
                Some(Some(Literal::Primitive(PrimitiveLiteral::Int(p)))) => *p,
                other => panic!("{}: partition {other:?}", task.data_file_path),
            };
            let tasks = Box::pin(futures::stream::iter([Ok(task)]));
            let stream = table.reader_builder().build().read(tasks).unwrap().stream();
            let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
            for b in &batches {
                assert_eq!(b.num_columns(), columns.len());
                let offset = b
                    .column_by_name("offset")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                let value = b.column_by_name("value").unwrap();
                let value = value
                    .as_binary_opt::<i64>()
                    .unwrap_or_else(|| panic!("value is {}", value.data_type()));
                let headers = b.column_by_name("headers").map(|h| h.as_list::<i32>());
                for i in 0..b.num_rows() {
                    rows.push((
                        partition,
                        offset.value(i),
                        String::from_utf8(value.value(i).to_vec()).unwrap(),
                        headers.map_or(0, |h| h.value(i).len()),
                    ));
                }
            }
        }
        rows.sort();
        rows
    }

    /// The rows a reader should see: each offset of `ranges` once, but those `gaps` leaves out.
    fn expected(
        ranges: &[(i32, i64, i64)],
        gaps: Option<(i32, i64, i64)>,
    ) -> Vec<(i32, i64, String, usize)> {
        let mut rows: Vec<_> = ranges
            .iter()
            .flat_map(|(p, first, last)| (*first..=*last).map(move |o| (*p, o)))
            .filter(|(p, o)| {
                !gaps.is_some_and(|(gp, gf, gl)| gp == *p && (gf..=gl).contains(o) && o % 3 == 0)
            })
            .map(|(p, o)| (p, o, format!("p{p}-{o}"), 1))
            .collect();
        rows.sort();
        rows
    }

    async fn current(table: &IcebergTable) -> TableSnapshot {
        table.current_files().await.unwrap().unwrap()
    }

    /// Appends, fresh pieces replaced by a sealed file, retention, two partitions and a file
    /// with transaction gaps: after each commit the `iceberg` crate reads every offset exactly
    /// once, in the partition the manifests give its file.
    #[tokio::test]
    async fn commits_read_back_by_the_iceberg_crate() {
        let fx = Fixture::new();
        let table = fx.table();
        let now = 1_800_000_000_000;
        assert_eq!(table.current_files().await.unwrap(), None);
        let a = fx.file(0, 0, 9, Kind::Sealed).await;
        let old = fx.file(1, 0, 4, Kind::Sealed).await;
        let first = table
            .commit(
                &[
                    at(0, std::slice::from_ref(&a)),
                    at(1, std::slice::from_ref(&old)),
                ],
                now,
                DAY_MS,
            )
            .await
            .unwrap();
        assert!(first.is_some());
        let s1 = current(&table).await;
        assert_eq!(s1.version, 1);
        assert_eq!(s1.partitions[&0][0].path, a.path);
        assert_eq!(
            s1.partitions[&0][0].uri,
            format!("file://{}/{}", fx.folder.display(), a.path)
        );
        assert_eq!(
            (
                s1.partitions[&1][0].record_count,
                s1.partitions[&1][0].size_bytes
            ),
            (5, old.size_bytes)
        );
        assert_eq!(
            scan(&s1.metadata_file).await,
            expected(&[(0, 0, 9), (1, 0, 4)], None)
        );

        // The same files again, from this table or another one over the same lake: nothing.
        assert_eq!(
            table
                .commit(&[at(0, std::slice::from_ref(&a))], now + 1, DAY_MS)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            fx.table()
                .commit(
                    &[
                        at(1, std::slice::from_ref(&old)),
                        at(0, std::slice::from_ref(&a))
                    ],
                    now + 1,
                    DAY_MS
                )
                .await
                .unwrap(),
            None
        );
        assert_eq!(current(&table).await.version, 1);

        // Two fresh pieces.
        let (p1, p2) = (
            fx.file(0, 10, 14, Kind::Fresh).await,
            fx.file(0, 15, 19, Kind::Fresh).await,
        );
        let pieces = [a.clone(), p1.clone(), p2.clone()];
        table
            .commit(&[at(0, &pieces)], now + 2, DAY_MS)
            .await
            .unwrap()
            .unwrap();
        let s2 = current(&table).await;
        assert_eq!(s2.version, 2);
        assert_eq!(s2.partitions[&0].len(), 3);
        assert!(s2.partitions[&0][1].uri.ends_with(".parquet.fresh"));
        assert_eq!(
            scan(&s2.metadata_file).await,
            expected(&[(0, 0, 19), (1, 0, 4)], None)
        );
        // The earlier snapshot still reads as it was.
        assert_eq!(
            scan(&s1.metadata_file).await,
            expected(&[(0, 0, 9), (1, 0, 4)], None)
        );

        // The sealed file of their segment replaces the pieces, in one snapshot.
        let sealed = fx.file(0, 10, 19, Kind::Sealed).await;
        table
            .commit(&[at(0, &[a.clone(), sealed.clone()])], now + 3, DAY_MS)
            .await
            .unwrap()
            .unwrap();
        let s3 = current(&table).await;
        assert_eq!(
            scan(&s3.metadata_file).await,
            expected(&[(0, 0, 19), (1, 0, 4)], None)
        );

        // Retention removes the first file of partition 0, which gets a file with transaction
        // gaps, and partition 1 gets a new file.
        let gaps = fx.file(0, 20, 29, Kind::Gaps).await;
        let b = fx.file(1, 5, 9, Kind::Sealed).await;
        table
            .commit(
                &[
                    at(0, &[sealed.clone(), gaps.clone()]),
                    at(1, &[old.clone(), b.clone()]),
                ],
                now + 4,
                DAY_MS,
            )
            .await
            .unwrap()
            .unwrap();
        let s4 = current(&table).await;
        assert_eq!(
            scan(&s4.metadata_file).await,
            expected(&[(0, 10, 29), (1, 0, 9)], Some((0, 20, 29)))
        );
        let paths: Vec<&str> = s4
            .partitions
            .values()
            .flatten()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, [&sealed.path, &gaps.path, &old.path, &b.path]);

        // The summary tells what each snapshot did.
        let text = std::fs::read_to_string(fx.folder.join("_iceberg/t/metadata/v4.metadata.json"))
            .unwrap();
        let metadata: TableMetadata = serde_json::from_str(&text).unwrap();
        let operations: Vec<&str> = metadata
            .snapshots
            .iter()
            .map(|s| s.summary["operation"].as_str())
            .collect();
        assert_eq!(operations, ["append", "append", "replace", "overwrite"]);
        assert_eq!(
            metadata.current_snapshot().unwrap().summary["total-data-files"],
            "4"
        );
        assert_eq!(
            std::fs::read_to_string(fx.folder.join("_iceberg/t/metadata/version-hint.text"))
                .unwrap(),
            "4"
        );
    }

    /// Files written before they carried field ids are read through the table's name mapping.
    #[tokio::test]
    async fn files_without_field_ids_are_read_by_name() {
        let fx = Fixture::new();
        let table = fx.table();
        let (old, new) = (
            fx.file(0, 0, 4, Kind::Old).await,
            fx.file(0, 5, 9, Kind::Sealed).await,
        );
        table
            .commit(&[at(0, &[old, new])], 0, DAY_MS)
            .await
            .unwrap()
            .unwrap();
        let metadata = current(&table).await.metadata_file;
        // The `iceberg` crate (0.10.1) maps top-level columns by name only, not the fields of
        // `headers` (Java's and pyiceberg's readers map nested fields too): not selected here.
        let columns: Vec<&str> = ALL_BUT_TIMESTAMP
            .into_iter()
            .filter(|c| *c != "headers")
            .collect();
        let rows = scan_columns(&metadata, &columns).await;
        let expected: Vec<_> = expected(&[(0, 0, 9)], None)
            .into_iter()
            .map(|(p, o, v, _)| (p, o, v, 0))
            .collect();
        assert_eq!(rows, expected);
    }

    /// Snapshots older than the retention expire with a later commit, and exactly the objects
    /// no kept snapshot or metadata version uses are deleted: what is left in the folder is
    /// what the kept history names.
    #[tokio::test]
    async fn expiry_deletes_what_only_expired_snapshots_used() {
        let fx = Fixture::new();
        let table = fx.table();
        let minute = 60_000;
        let retention = 10 * minute;
        let stable = fx.file(1, 0, 0, Kind::Sealed).await;
        let mut files = Vec::new();
        let commits = metadata::PREVIOUS_VERSIONS_MAX as i64 + 20;
        for i in 0..commits {
            files.push(fx.file(0, i, i, Kind::Sealed).await);
            // Retention of the lake: partition 0 keeps its last 5 files.
            let live = &files[files.len().saturating_sub(5)..];
            let mut partitions = vec![at(0, live)];
            if i == 0 {
                partitions.push(at(1, std::slice::from_ref(&stable)));
            }
            table
                .commit(&partitions, i * minute, retention)
                .await
                .unwrap()
                .unwrap();
        }
        let last = current(&table).await;
        assert_eq!(last.version, commits as u64);
        let text = std::fs::read_to_string(
            fx.folder
                .join(format!("_iceberg/t/metadata/v{commits}.metadata.json")),
        )
        .unwrap();
        let metadata: TableMetadata = serde_json::from_str(&text).unwrap();
        // Committed at minute commits - 1: the snapshots of the last 10 minutes and the one at
        // exactly the cutoff stay.
        assert_eq!(metadata.snapshots.len(), 11);
        assert_eq!(metadata.snapshot_log.len(), 11);
        assert_eq!(metadata.metadata_log.len(), metadata::PREVIOUS_VERSIONS_MAX);

        let mut named = BTreeSet::from([
            "version-hint.text".to_string(),
            format!("v{commits}.metadata.json"),
        ]);
        for e in &metadata.metadata_log {
            named.insert(e.metadata_file.rsplit('/').next().unwrap().to_string());
        }
        for s in &metadata.snapshots {
            named.insert(s.manifest_list.rsplit('/').next().unwrap().to_string());
            for m in table.read_list(&s.manifest_list).await.unwrap() {
                named.insert(m.manifest_path.rsplit('/').next().unwrap().to_string());
            }
        }
        assert_eq!(fx.metadata_objects().await, named);
        // Partition 1's manifest, written by the first commit, is still used and still there.
        let expected_rows: Vec<(i32, i64)> = (commits - 5..commits)
            .map(|o| (0, o))
            .chain([(1, 0)])
            .collect();
        let rows: Vec<(i32, i64)> = scan(&last.metadata_file)
            .await
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(rows, expected_rows);
    }

    /// Two brokers committing different partitions of the same table at once: every commit
    /// lands as its own version, none lost, and the last snapshot has both partitions' files.
    #[tokio::test]
    async fn racing_writers_each_land() {
        let fx = Fixture::new();
        let (one, two) = (fx.table(), fx.table());
        let mut files: [Vec<FileEntry>; 2] = Default::default();
        let rounds = 8;
        for i in 0..rounds {
            files[0].push(fx.file(0, i, i, Kind::Sealed).await);
            files[1].push(fx.file(1, i, i, Kind::Sealed).await);
            let (zero, first) = ([at(0, &files[0])], [at(1, &files[1])]);
            let (a, b) = tokio::join!(one.commit(&zero, i, DAY_MS), two.commit(&first, i, DAY_MS));
            assert!(a.unwrap().is_some() && b.unwrap().is_some());
        }
        let last = current(&one).await;
        assert_eq!(last.version, 2 * rounds as u64);
        let versions: BTreeSet<String> = fx
            .metadata_objects()
            .await
            .into_iter()
            .filter(|n| n.ends_with(".metadata.json"))
            .collect();
        assert_eq!(versions.len(), 2 * rounds as usize);
        let rows: Vec<(i32, i64)> = scan(&last.metadata_file)
            .await
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect();
        let expected: Vec<(i32, i64)> = (0..2)
            .flat_map(|p| (0..rounds).map(move |o| (p, o)))
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(current(&two).await, last);
    }

    /// A deposed leader's commit of its partition is refused; another partition's is not.
    #[tokio::test]
    async fn an_earlier_leader_is_fenced() {
        let fx = Fixture::new();
        let table = fx.table();
        let (a, b) = (
            fx.file(0, 0, 9, Kind::Sealed).await,
            fx.file(0, 10, 19, Kind::Sealed).await,
        );
        let manifest = |leader_epoch: i32, files: &[FileEntry]| crate::Manifest {
            files: files.to_vec(),
            leader_epoch,
            ..crate::Manifest::default()
        };
        let commit = |m: crate::Manifest, now_ms: i64| {
            let table = fx.table();
            async move {
                table
                    .commit(&[PartitionFiles::of(0, &m)], now_ms, DAY_MS)
                    .await
            }
        };
        table
            .commit(
                &[PartitionFiles::of(
                    0,
                    &manifest(3, std::slice::from_ref(&a)),
                )],
                0,
                DAY_MS,
            )
            .await
            .unwrap()
            .unwrap();
        let more = [a.clone(), b.clone()];
        let err = commit(manifest(2, &more), 1).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::FencedLeaderEpoch {
                    partition: 0,
                    leader_epoch: 2,
                    stored_epoch: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(current(&table).await.version, 1);
        commit(manifest(4, &more), 2).await.unwrap().unwrap();
        assert_eq!(current(&table).await.partitions[&0].len(), 2);
        // A new leader's claim with the same files records its epoch (one commit), and its
        // predecessor can commit no more.
        assert!(commit(manifest(5, &more), 3).await.unwrap().is_some());
        assert_eq!(commit(manifest(5, &more), 4).await.unwrap(), None);
        assert!(
            commit(manifest(4, std::slice::from_ref(&b)), 5)
                .await
                .is_err()
        );
        assert_eq!(current(&table).await.version, 3);
        // Another partition is not fenced by partition 0's leader.
        let other = PartitionFiles {
            partition: 1,
            leader_epoch: 0,
            files: &[],
        };
        assert_eq!(table.commit(&[other], 6, DAY_MS).await.unwrap(), None);
    }

    #[test]
    fn tables_are_named_by_absolute_uris() {
        assert_eq!(
            root_uri("s3://bucket/some/prefix/").unwrap(),
            "s3://bucket/some/prefix"
        );
        assert_eq!(root_uri("file:///var/lake").unwrap(), "file:///var/lake");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            root_uri("file:lake").unwrap(),
            format!("file://{}/lake", cwd.display())
        );
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let table = IcebergTable::open(Arc::clone(&store), "s3://b/p", "clicks").unwrap();
        assert_eq!(table.location(), "s3://b/p/_iceberg/clicks");
        assert!(IcebergTable::open(Arc::clone(&store), "s3://b/p", "a/b").is_err());
        assert!(IcebergTable::open(store, "s3://b/p", "").is_err());
    }
}
