//! Historic reads: offsets below a partition's local log start are served from the lake. The
//! view knows each tiered partition's manifest (kept current by the offload pipeline), finds the
//! file holding an offset, reads its footer once and then only the row groups a consumer needs
//! (ranged GETs), and keeps both in caches shared by every consumer. A load in flight is shared
//! too, so ten consumers replaying the same history read each part of it from object storage
//! once. A consumer reading on through a chunk makes the view fetch the next one ahead of it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use bytes::Bytes;
use strata_lake::reader::{Chunk, OpenFile};
use strata_lake::{FileEntry, Lake, Manifest};
use tokio::sync::OnceCell;

/// Footers kept: they are small, and a footer read is a round trip per file.
const FOOTER_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A byte-bounded LRU cache whose loads are shared: while one caller loads a key, others asking
/// for it wait for that load instead of starting their own.
#[derive(Debug)]
struct SharedCache<K, V> {
    capacity_bytes: usize,
    inner: Mutex<CacheInner<K, V>>,
    /// Loads that ran (misses that went to object storage).
    loads: AtomicU64,
}

#[derive(Debug)]
struct CacheInner<K, V> {
    used_bytes: usize,
    tick: u64,
    ready: HashMap<K, (Arc<V>, usize, u64)>,
    /// Keys by last use, oldest first.
    by_use: BTreeMap<u64, K>,
    loading: HashMap<K, Arc<OnceCell<Arc<V>>>>,
}

impl<K: Clone + Eq + Hash, V> CacheInner<K, V> {
    fn touch(&mut self, key: &K) -> Option<Arc<V>> {
        self.tick += 1;
        let (value, _, used) = self.ready.get_mut(key)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, key.clone());
        Some(Arc::clone(value))
    }

    fn insert(&mut self, capacity: usize, key: K, value: Arc<V>, size: usize) {
        if size > capacity || self.ready.contains_key(&key) {
            return;
        }
        while self.used_bytes + size > capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((_, freed, _)) = self.ready.remove(&oldest) {
                self.used_bytes -= freed;
            }
        }
        self.tick += 1;
        self.used_bytes += size;
        self.by_use.insert(self.tick, key.clone());
        self.ready.insert(key, (value, size, self.tick));
    }
}

impl<K: Clone + Eq + Hash, V> SharedCache<K, V> {
    fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::new(CacheInner {
                used_bytes: 0,
                tick: 0,
                ready: HashMap::new(),
                by_use: BTreeMap::new(),
                loading: HashMap::new(),
            }),
            loads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, CacheInner<K, V>> {
        self.inner.lock()
    }

    /// The cached value, or the one `load` (or a load already in flight) produces.
    async fn get_or_load<E, F, Fut>(
        &self,
        key: &K,
        size: impl Fn(&V) -> usize,
        load: F,
    ) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut inner = self.lock();
            if let Some(found) = inner.touch(key) {
                return Ok(found);
            }
            Arc::clone(inner.loading.entry(key.clone()).or_default())
        };
        let result = cell
            .get_or_try_init(|| async {
                self.loads.fetch_add(1, Ordering::Relaxed);
                load().await.map(Arc::new)
            })
            .await
            .cloned();
        let mut inner = self.lock();
        if inner
            .loading
            .get(key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            inner.loading.remove(key);
            if let Ok(value) = &result {
                let bytes = size(value);
                inner.insert(self.capacity_bytes, key.clone(), Arc::clone(value), bytes);
            }
        }
        result
    }
}

/// The broker's view of the lake for reads.
#[derive(Debug)]
pub(crate) struct LakeView {
    lake: Lake,
    manifests: RwLock<HashMap<(String, i32), Manifest>>,
    footers: SharedCache<String, OpenFile>,
    chunks: SharedCache<(String, usize), Chunk>,
}

impl LakeView {
    pub(crate) fn new(lake: Lake, cache_bytes: usize) -> Self {
        Self {
            lake,
            manifests: RwLock::default(),
            footers: SharedCache::new(FOOTER_CACHE_BYTES),
            chunks: SharedCache::new(cache_bytes),
        }
    }

    pub(crate) fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Records the committed manifest of a partition.
    pub(crate) fn set_manifest(&self, topic: &str, partition: i32, manifest: &Manifest) {
        self.manifests
            .write()
            .insert((topic.to_string(), partition), manifest.clone());
    }

    /// Forgets a partition (its topic was deleted).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.manifests.write().retain(|(t, _), _| t != topic);
    }

    /// The first offset in the lake, if it holds any.
    pub(crate) fn start_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.manifests
            .read()
            .get(&(topic.to_string(), partition))?
            .start_offset()
    }

    /// The last offset in the lake, if it holds any.
    pub(crate) fn last_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.manifests
            .read()
            .get(&(topic.to_string(), partition))?
            .next_offset()
            .map(|n| n - 1)
    }

    /// Manifest entries from the first one `keep` accepts: that one and the one after it.
    fn entries(
        &self,
        topic: &str,
        partition: i32,
        keep: impl Fn(&FileEntry) -> bool,
    ) -> Option<(FileEntry, Option<FileEntry>)> {
        let manifests = self.manifests.read();
        let files = &manifests.get(&(topic.to_string(), partition))?.files;
        let i = files.iter().position(keep)?;
        Some((files[i].clone(), files.get(i + 1).cloned()))
    }

    async fn footer(&self, entry: &FileEntry) -> strata_lake::Result<Arc<OpenFile>> {
        self.footers
            .get_or_load(&entry.path, OpenFile::memory_bytes, || {
                self.lake.open_file(entry)
            })
            .await
    }

    async fn chunk(&self, file: &Arc<OpenFile>, k: usize) -> strata_lake::Result<Arc<Chunk>> {
        self.chunks
            .get_or_load(&(file.entry().path.clone(), k), Chunk::memory_bytes, || {
                self.lake.read_chunk(file, k)
            })
            .await
    }

    /// Loads the chunk after `k` of `file` (or the first of the next file) in the background.
    fn prefetch(self: &Arc<Self>, file: &Arc<OpenFile>, k: usize, next: Option<FileEntry>) {
        let view = Arc::clone(self);
        let file = Arc::clone(file);
        tokio::spawn(async move {
            let result = if k + 1 < file.chunk_count() {
                view.chunk(&file, k + 1).await.map(drop)
            } else if let Some(entry) = next {
                match view.footer(&entry).await {
                    Ok(next_file) => view.chunk(&next_file, 0).await.map(drop),
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "lake prefetch failed");
            }
        });
    }

    /// The first lake record at or after `timestamp_ms`: `(offset, timestamp)`.
    pub(crate) async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> strata_lake::Result<Option<(i64, i64)>> {
        // Earlier files end before the target: the first file reaching it holds the answer.
        let Some((entry, _)) =
            self.entries(topic, partition, |f| f.max_timestamp_ms >= timestamp_ms)
        else {
            return Ok(None);
        };
        let file = self.footer(&entry).await?;
        for k in file.chunks_for_timestamp(timestamp_ms) {
            if let Some(found) = self
                .chunk(&file, k)
                .await?
                .offset_for_timestamp(timestamp_ms)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Batches from the one holding `offset`: at most `max_bytes`, but at least one whole batch.
    /// `Ok(None)` when the lake does not hold the offset.
    pub(crate) async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> strata_lake::Result<Option<Bytes>> {
        let Some((entry, next)) = self.entries(topic, partition, |f| {
            f.base_offset <= offset && offset <= f.last_offset
        }) else {
            return Ok(None);
        };
        let file = self.footer(&entry).await?;
        for k in file.chunks_for(offset) {
            let chunk = self.chunk(&file, k).await?;
            let bytes = chunk.slice_from(offset, max_bytes);
            if !bytes.is_empty() {
                // A consumer reading on will want the next chunk: it loads while this one is
                // served (once; a load in flight or done is shared).
                self.prefetch(&file, k, next);
                return Ok(Some(bytes));
            }
        }
        Err(strata_lake::Error::Corrupt(format!(
            "lake file {} does not hold offset {offset} as its manifest says",
            entry.path
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use strata_lake::LakeRecord;

    fn record(offset: i64, batch_offset: i64) -> LakeRecord {
        LakeRecord {
            offset,
            timestamp_ms: 1000 + offset,
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

    /// A view over an in-memory lake holding `files` files of 30 records in batches of 10.
    async fn view_with(
        files: i64,
        cache_bytes: usize,
    ) -> (Arc<LakeView>, Arc<dyn ObjectStore>, Manifest) {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let lake = Lake::new(Arc::clone(&store));
        let mut manifest = Manifest::default();
        for f in 0..files {
            let records: Vec<LakeRecord> = (f * 30..f * 30 + 30)
                .map(|o| record(o, o - o % 10))
                .collect();
            let segment = strata_lake::segment::encode(&records);
            manifest = lake
                .offload("t", 0, &manifest, Bytes::from(segment.to_vec()), 0)
                .await
                .unwrap();
        }
        let view = Arc::new(LakeView::new(lake, cache_bytes));
        view.set_manifest("t", 0, &manifest);
        (view, store, manifest)
    }

    fn decode(bytes: &Bytes) -> Vec<LakeRecord> {
        strata_lake::segment::decode(bytes).unwrap()
    }

    #[tokio::test]
    async fn reads_start_at_the_batch_and_stop_at_the_budget() {
        let (view, _, _) = view_with(2, 1 << 20).await;
        let one = decode(&view.read("t", 0, 13, 1).await.unwrap().unwrap());
        assert_eq!(
            one.first().map(|r| r.offset),
            Some(10),
            "the whole batch holding 13"
        );
        assert_eq!(one.len(), 10, "one batch when the budget is small");
        let rest = decode(&view.read("t", 0, 13, 1 << 20).await.unwrap().unwrap());
        assert_eq!(
            rest.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (10..30).collect::<Vec<_>>(),
            "up to the end of the file"
        );
        assert_eq!(
            decode(&view.read("t", 0, 30, 1 << 20).await.unwrap().unwrap())[0].offset,
            30
        );
        assert!(view.read("t", 0, 60, 100).await.unwrap().is_none());
        assert_eq!(
            view.offset_for_timestamp("t", 0, 1045).await.unwrap(),
            Some((45, 1045))
        );
        assert_eq!(view.offset_for_timestamp("t", 0, 5000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn consumers_of_the_same_history_share_one_read() {
        let (view, _, _) = view_with(1, 1 << 20).await;
        let reads = (0..10).map(|_| {
            let view = Arc::clone(&view);
            tokio::spawn(async move { view.read("t", 0, 0, 1 << 20).await.unwrap().unwrap() })
        });
        let answers = futures::future::join_all(reads).await;
        assert!(
            answers
                .iter()
                .all(|a| decode(a.as_ref().unwrap()).len() == 30)
        );
        assert_eq!(
            view.footers.loads.load(Ordering::Relaxed),
            1,
            "one footer read"
        );
        assert_eq!(
            view.chunks.loads.load(Ordering::Relaxed),
            1,
            "one chunk read for ten consumers"
        );
    }

    #[tokio::test]
    async fn a_consumer_at_the_end_of_a_file_gets_the_next_one_prefetched() {
        let (view, _, manifest) = view_with(2, 1 << 20).await;
        view.read("t", 0, 25, 1 << 20).await.unwrap().unwrap();
        let next = (manifest.files[1].path.clone(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !view.chunks.lock().ready.contains_key(&next) {
            assert!(
                std::time::Instant::now() < deadline,
                "the next file was not prefetched"
            );
            tokio::task::yield_now().await;
        }
        let loads = view.chunks.loads.load(Ordering::Relaxed);
        view.read("t", 0, 30, 1 << 20).await.unwrap().unwrap();
        assert_eq!(
            view.chunks.loads.load(Ordering::Relaxed),
            loads,
            "served from the prefetch"
        );
    }

    #[tokio::test]
    async fn a_corrupt_lake_file_is_an_error_naming_it_never_wrong_records() {
        // No cache, so every read goes to the store.
        let (view, store, manifest) = view_with(1, 0).await;
        let path = manifest.files[0].path.clone();
        assert_eq!(
            decode(&view.read("t", 0, 1, 1 << 20).await.unwrap().unwrap()).len(),
            30
        );
        let bytes = store
            .get(&object_store::path::Path::from(path.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut damaged = bytes.to_vec();
        // Damage the column data, keep the footer: the read must fail, not serve garbage.
        for b in &mut damaged[4..bytes.len() / 2] {
            *b = !*b;
        }
        store
            .put(
                &object_store::path::Path::from(path.as_str()),
                PutPayload::from(damaged),
            )
            .await
            .unwrap();
        let error = view.read("t", 0, 1, 1 << 20).await.unwrap_err();
        assert!(matches!(error, strata_lake::Error::Corrupt(_)), "{error}");
        assert!(error.to_string().contains(&path), "{error}");
        store
            .delete(&object_store::path::Path::from(path.as_str()))
            .await
            .unwrap();
        let error = view.read("t", 0, 1, 1 << 20).await.unwrap_err().to_string();
        assert!(
            error.contains(&path) && error.contains("missing"),
            "{error}"
        );
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_entry() {
        let cache: SharedCache<&str, ()> = SharedCache::new(1000);
        let mut inner = cache.lock();
        inner.insert(1000, "a", Arc::new(()), 400);
        inner.insert(1000, "b", Arc::new(()), 400);
        assert!(inner.touch(&"a").is_some());
        inner.insert(1000, "c", Arc::new(()), 400);
        assert!(inner.touch(&"b").is_none(), "b was least recently used");
        assert!(inner.touch(&"a").is_some() && inner.touch(&"c").is_some());
        inner.insert(1000, "huge", Arc::new(()), 1001);
        assert!(
            inner.touch(&"huge").is_none(),
            "larger than the cache: not kept"
        );
        assert_eq!(inner.used_bytes, 800);
    }
}
