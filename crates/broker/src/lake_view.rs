//! Historic reads: offsets below a partition's local log start are served from the lake. The
//! view knows each tiered partition's manifest (kept current by the offload pipeline), finds the
//! file holding an offset, and keeps decoded files in a byte-bounded LRU cache shared by every
//! consumer, so many consumers replaying the same history read it from object storage once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use strata_lake::{Lake, LakeRecord, Manifest, records};

/// Decoded lake files kept for consumers, by estimated memory size.
#[derive(Debug)]
struct FileCache {
    capacity_bytes: usize,
    used_bytes: usize,
    /// Most recently used last.
    order: VecDeque<String>,
    files: HashMap<String, (Arc<Vec<LakeRecord>>, usize)>,
}

impl FileCache {
    fn get(&mut self, path: &str) -> Option<Arc<Vec<LakeRecord>>> {
        let found = self.files.get(path).map(|(f, _)| Arc::clone(f))?;
        self.order.retain(|p| p != path);
        self.order.push_back(path.to_string());
        Some(found)
    }

    fn insert(&mut self, path: &str, file: Arc<Vec<LakeRecord>>) {
        let size: usize = file.iter().map(record_bytes).sum();
        if size > self.capacity_bytes || self.files.contains_key(path) {
            return;
        }
        while self.used_bytes + size > self.capacity_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = self.files.remove(&oldest) {
                self.used_bytes -= freed;
            }
        }
        self.used_bytes += size;
        self.order.push_back(path.to_string());
        self.files.insert(path.to_string(), (file, size));
    }
}

fn record_bytes(r: &LakeRecord) -> usize {
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 32)
        .sum();
    96 + r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len) + headers
}

/// The broker's view of the lake for reads.
#[derive(Debug)]
pub(crate) struct LakeView {
    lake: Lake,
    manifests: RwLock<HashMap<(String, i32), Manifest>>,
    cache: Mutex<FileCache>,
}

impl LakeView {
    pub(crate) fn new(lake: Lake, cache_bytes: usize) -> Self {
        Self {
            lake,
            manifests: RwLock::default(),
            cache: Mutex::new(FileCache {
                capacity_bytes: cache_bytes,
                used_bytes: 0,
                order: VecDeque::new(),
                files: HashMap::new(),
            }),
        }
    }

    pub(crate) fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Records the committed manifest of a partition.
    pub(crate) fn set_manifest(&self, topic: &str, partition: i32, manifest: &Manifest) {
        self.manifests
            .write()
            .expect("manifests lock")
            .insert((topic.to_string(), partition), manifest.clone());
    }

    /// Forgets a partition (its topic was deleted).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.manifests
            .write()
            .expect("manifests lock")
            .retain(|(t, _), _| t != topic);
    }

    /// The first offset in the lake, if it holds any.
    pub(crate) fn start_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.manifests
            .read()
            .expect("manifests lock")
            .get(&(topic.to_string(), partition))?
            .start_offset()
    }

    /// The last offset in the lake, if it holds any.
    pub(crate) fn last_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.manifests
            .read()
            .expect("manifests lock")
            .get(&(topic.to_string(), partition))?
            .next_offset()
            .map(|n| n - 1)
    }

    fn file_for(&self, topic: &str, partition: i32, offset: i64) -> Option<String> {
        let manifests = self.manifests.read().expect("manifests lock");
        let manifest = manifests.get(&(topic.to_string(), partition))?;
        manifest
            .files
            .iter()
            .find(|f| f.base_offset <= offset && offset <= f.last_offset)
            .map(|f| f.path.clone())
    }

    /// The first lake record at or after `timestamp_ms`: `(offset, timestamp)`.
    pub(crate) async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> strata_lake::Result<Option<(i64, i64)>> {
        let path = {
            let manifests = self.manifests.read().expect("manifests lock");
            let Some(manifest) = manifests.get(&(topic.to_string(), partition)) else {
                return Ok(None);
            };
            // Earlier files end before the target: the first file reaching it holds the answer.
            match manifest
                .files
                .iter()
                .find(|f| f.max_timestamp_ms >= timestamp_ms)
            {
                Some(f) => f.path.clone(),
                None => return Ok(None),
            }
        };
        let file = self.file(&path).await?;
        Ok(file
            .iter()
            .find(|r| r.timestamp_ms >= timestamp_ms)
            .map(|r| (r.offset, r.timestamp_ms)))
    }

    async fn file(&self, path: &str) -> strata_lake::Result<Arc<Vec<LakeRecord>>> {
        let cached = self.cache.lock().expect("cache lock").get(path);
        match cached {
            Some(file) => Ok(file),
            None => {
                let file = Arc::new(self.lake.read_file(path).await?);
                self.cache
                    .lock()
                    .expect("cache lock")
                    .insert(path, Arc::clone(&file));
                Ok(file)
            }
        }
    }

    /// Batches from the one holding `offset`: at most `max_bytes`, but at least one whole batch.
    /// `Ok(None)` when the lake does not hold the offset.
    pub(crate) async fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> strata_lake::Result<Option<Bytes>> {
        let Some(path) = self.file_for(topic, partition, offset) else {
            return Ok(None);
        };
        let file = self.file(&path).await?;
        Ok(Some(batches_from(&file, offset, max_bytes)))
    }
}

/// Re-encodes whole original batches from the one holding `offset` until `max_bytes`.
fn batches_from(file: &[LakeRecord], offset: i64, max_bytes: usize) -> Bytes {
    let first = file.partition_point(|r| r.offset < offset);
    let Some(record) = file.get(first) else {
        return Bytes::new();
    };
    // Start at the first record of its batch, as the log does.
    let start = file.partition_point(|r| r.batch_offset < record.batch_offset);
    let mut out = BytesMut::new();
    for batch in file[start..].chunk_by(|a, b| a.batch_offset == b.batch_offset) {
        let encoded = records::encode_batch(batch);
        if !out.is_empty() && out.len() + encoded.len() > max_bytes {
            break;
        }
        out.extend_from_slice(&encoded);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, batch_offset: i64) -> LakeRecord {
        LakeRecord {
            offset,
            timestamp_ms: 0,
            key: None,
            value: Some(Bytes::from(vec![b'v'; 100])),
            headers: Vec::new(),
            batch_offset,
            batch_attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            sequence: -1,
            partition_leader_epoch: 0,
        }
    }

    #[test]
    fn reads_start_at_the_batch_and_stop_at_the_budget() {
        let file: Vec<LakeRecord> = (0..30).map(|o| record(o, o - o % 10)).collect();
        let bytes = batches_from(&file, 13, 1);
        let decoded = strata_lake::segment::decode(&bytes).unwrap();
        assert_eq!(
            decoded.first().map(|r| r.offset),
            Some(10),
            "the whole batch holding 13"
        );
        assert_eq!(decoded.len(), 10, "one batch when the budget is small");
        let all = strata_lake::segment::decode(&batches_from(&file, 0, 1 << 20)).unwrap();
        assert_eq!(all, file);
        assert!(batches_from(&file, 30, 100).is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_lake_file_is_an_error_naming_it_never_wrong_records() {
        use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let lake = Lake::new(Arc::clone(&store));
        let segment = strata_lake::segment::encode(&[record(0, 0), record(1, 0)]);
        let manifest = lake
            .offload(
                "t",
                0,
                &Manifest::default(),
                Bytes::from(segment.to_vec()),
                0,
            )
            .await
            .unwrap();
        let path = manifest.files[0].path.clone();
        let view = LakeView::new(lake, 0);
        view.set_manifest("t", 0, &manifest);
        assert_eq!(
            strata_lake::segment::decode(&view.read("t", 0, 1, 1 << 20).await.unwrap().unwrap())
                .unwrap()
                .len(),
            2
        );
        store
            .put(
                &object_store::path::Path::from(path.as_str()),
                PutPayload::from_static(b"not parquet at all"),
            )
            .await
            .unwrap();
        let error = view.read("t", 0, 1, 1 << 20).await.unwrap_err().to_string();
        assert!(error.contains(&path), "{error}");
        store
            .delete(&object_store::path::Path::from(path.as_str()))
            .await
            .unwrap();
        assert!(
            view.read("t", 0, 1, 1 << 20).await.is_err(),
            "a missing file is an error too"
        );
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_file() {
        let mut cache = FileCache {
            capacity_bytes: 1000,
            used_bytes: 0,
            order: VecDeque::new(),
            files: HashMap::new(),
        };
        let file = || Arc::new(vec![record(0, 0), record(1, 0)]); // ~400 bytes
        cache.insert("a", file());
        cache.insert("b", file());
        assert!(cache.get("a").is_some());
        cache.insert("c", file());
        assert!(cache.get("b").is_none(), "b was least recently used");
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        assert!(cache.used_bytes <= 1000);
    }
}
