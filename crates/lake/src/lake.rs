//! The lake in object storage: where files and manifests live, offloading a segment (convert,
//! upload, then commit the manifest), remote retention, listing and verification.
//!
//! Layout under the tier URL:
//! - `topic=<topic>/partition=<n>/<first offset>-<last offset>.parquet`: record data (Hive style);
//! - `_strata/manifests/topic=<topic>/partition=<n>.json`: the partition's manifest;
//! - `_strata/topics/<topic>.json`: what is needed to recreate the topic.
//!
//! File names derive from the offsets they hold, so an upload repeated after a crash overwrites
//! the same object instead of leaving a duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest, VerifyReport};
use crate::{parquet_file, segment};

/// Files larger than this go up in a multipart upload.
pub const MULTIPART_THRESHOLD_BYTES: usize = 16 * 1024 * 1024;
/// Part size of multipart uploads.
const PART_BYTES: usize = 8 * 1024 * 1024;

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

/// The lake of one tier URL.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
}

/// Path of a partition's data folder.
pub fn partition_prefix(topic: &str, partition: i32) -> String {
    format!("topic={topic}/partition={partition}")
}

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
        Self { store }
    }

    /// The partition's manifest (empty when nothing was offloaded).
    pub async fn manifest(&self, topic: &str, partition: i32) -> Result<Manifest> {
        match self.store.get(&manifest_path(topic, partition)).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(storage)?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Corrupt(format!(
                        "manifest of {topic}-{partition} does not parse: {e}"
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Manifest::default()),
            Err(e) => Err(storage(e)),
        }
    }

    async fn put_manifest(&self, topic: &str, partition: i32, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
        self.store
            .put(&manifest_path(topic, partition), PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        Ok(())
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
            match self.store.delete(&Path::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage(e)),
            }
        }
        Ok(())
    }

    /// Offloads the records of `segment_bytes` from `from_offset` on: converts them to Parquet,
    /// uploads the file, then commits the manifest naming it. Returns the new manifest, or the
    /// old one when there was nothing to offload.
    pub async fn offload(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment_bytes: Bytes,
        from_offset: i64,
    ) -> Result<Manifest> {
        let source_bytes = segment_bytes.len() as u64;
        let converted = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut records = segment::decode(&segment_bytes)?;
            records.retain(|r| r.offset >= from_offset);
            let file = if records.is_empty() {
                Vec::new()
            } else {
                parquet_file::write(&records)?
            };
            Ok((records, file))
        })
        .await
        .map_err(|e| Error::Corrupt(format!("conversion task failed: {e}")))??;
        let (records, file) = converted;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(manifest.clone());
        };
        let path = format!(
            "{}/{:020}-{:020}.parquet",
            partition_prefix(topic, partition),
            first.offset,
            last.offset
        );
        let entry = FileEntry {
            path: path.clone(),
            base_offset: first.offset,
            last_offset: last.offset,
            min_timestamp_ms: records.iter().map(|r| r.timestamp_ms).min().unwrap_or(-1),
            max_timestamp_ms: records.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1),
            rows: records.len() as u64,
            size_bytes: file.len() as u64,
            source_bytes,
        };
        let updated = manifest.with_file(entry)?;
        self.upload(&Path::from(path), file).await?;
        self.put_manifest(topic, partition, &updated).await?;
        Ok(updated)
    }

    async fn upload(&self, path: &Path, file: Vec<u8>) -> Result<()> {
        if file.len() <= MULTIPART_THRESHOLD_BYTES {
            self.store
                .put(path, PutPayload::from(file))
                .await
                .map_err(storage)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(path).await.map_err(storage)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        writer.write(&file);
        writer.finish().await.map_err(storage)?;
        Ok(())
    }

    /// Applies remote retention: the manifest loses the expired files first, then their objects
    /// are deleted. Returns the new manifest.
    pub async fn apply_retention(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<Manifest> {
        let (kept, removed) = manifest.after_retention(now_ms, retention_ms, retention_bytes);
        if removed.is_empty() {
            return Ok(kept);
        }
        self.put_manifest(topic, partition, &kept).await?;
        for f in removed {
            match self.store.delete(&Path::from(f.path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage(e)),
            }
        }
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
            .apply_retention("t", 0, &m, i64::MAX, 0, -1)
            .await
            .unwrap();
        assert_eq!(kept.files.len(), 1);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
    }
}
