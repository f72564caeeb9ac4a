//! Historic reads: offsets below a partition's local log start are served from the lake. The
//! view knows each tiered partition's manifest (kept current by the offload pipeline), finds the
//! file holding an offset, reads its footer once and then only the row groups a consumer needs
//! (ranged GETs), and keeps both in caches shared by every consumer. A load in flight is shared
//! too, so ten consumers replaying the same history read each part of it from object storage
//! once. A consumer reading on through a chunk makes the view fetch the next one ahead of it.
//!
//! The view also carries DeleteRecords to the lake: the log start offsets asked for wait here
//! until the offload pipeline, the manifests' only writer, commits them
//! ([`LakeView::request_log_start`], [`LakeView::wait_log_start`]), and a partition's log start
//! across both tiers is read here ([`LakeView::log_start_offset`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use bytes::Bytes;
use strata_lake::reader::{Chunk, OpenFile};
use strata_lake::{FileEntry, Lake, Manifest};
use tokio::sync::{Notify, OnceCell, watch};

use crate::security::quota::RateLimiter;

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
    /// Values asked for: the hits are those that ran no load.
    lookups: AtomicU64,
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
            lookups: AtomicU64::new(0),
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
        self.lookups.fetch_add(1, Ordering::Relaxed);
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
    /// Log start offsets DeleteRecords asked for that the partition's manifest does not hold
    /// yet; the offload pipeline commits them.
    wanted_log_starts: Mutex<HashMap<(String, i32), i64>>,
    /// Wakes the offload pipeline before its next pass: a log start waits for its commit.
    offload_wake: Notify,
    /// Counts the manifests recorded, for those waiting on a commit.
    manifest_changes: watch::Sender<u64>,
    /// Reads and uploads, for the metrics.
    metrics: crate::metrics::LakeMetrics,
    /// `remote.log.manager.copy.max.bytes.per.second` (KIP-956): segment bytes offloaded.
    copy_limit: RateLimiter,
    /// `remote.log.manager.fetch.max.bytes.per.second` (KIP-956): bytes served from the lake.
    fetch_limit: RateLimiter,
}

impl LakeView {
    pub(crate) fn new(lake: Lake, cache_bytes: usize) -> Self {
        Self {
            lake,
            manifests: RwLock::default(),
            footers: SharedCache::new(FOOTER_CACHE_BYTES),
            chunks: SharedCache::new(cache_bytes),
            wanted_log_starts: Mutex::default(),
            offload_wake: Notify::new(),
            manifest_changes: watch::Sender::new(0),
            metrics: crate::metrics::LakeMetrics::default(),
            copy_limit: RateLimiter::unlimited(),
            fetch_limit: RateLimiter::unlimited(),
        }
    }

    /// Limits the bytes offloaded and the bytes read from the lake per second, broker-wide
    /// (Kafka's `Long.MAX_VALUE` is no limit), so that neither a backlog of uploads nor a
    /// replay from the lake takes the whole uplink.
    pub(crate) fn with_limits(
        mut self,
        copy_bytes_per_second: i64,
        fetch_bytes_per_second: i64,
    ) -> Self {
        self.copy_limit = RateLimiter::new(copy_bytes_per_second);
        self.fetch_limit = RateLimiter::new(fetch_bytes_per_second);
        self
    }

    /// The limit on bytes offloaded per second.
    pub(crate) fn copy_limit(&self) -> &RateLimiter {
        &self.copy_limit
    }

    /// The limit on bytes read from the lake per second.
    pub(crate) fn fetch_limit(&self) -> &RateLimiter {
        &self.fetch_limit
    }

    /// What the read path and the offload pipeline counted.
    pub(crate) fn metrics(&self) -> &crate::metrics::LakeMetrics {
        &self.metrics
    }

    /// `(cache, lookups, loads)` of the footer and row-group caches: a lookup that ran no load
    /// was a hit (the value was cached, or another reader's load in flight brought it).
    pub(crate) fn cache_counts(&self) -> [(&'static str, u64, u64); 2] {
        let counts = |lookups: &AtomicU64, loads: &AtomicU64| {
            (
                lookups.load(Ordering::Relaxed),
                loads.load(Ordering::Relaxed),
            )
        };
        let (footer_lookups, footer_loads) = counts(&self.footers.lookups, &self.footers.loads);
        let (chunk_lookups, chunk_loads) = counts(&self.chunks.lookups, &self.chunks.loads);
        [
            ("footers", footer_lookups, footer_loads),
            ("row_groups", chunk_lookups, chunk_loads),
        ]
    }

    pub(crate) fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Records the committed manifest of a partition.
    pub(crate) fn set_manifest(&self, topic: &str, partition: i32, manifest: &Manifest) {
        let key = (topic.to_string(), partition);
        {
            let mut wanted = self.wanted_log_starts.lock();
            if wanted
                .get(&key)
                .is_some_and(|&w| w <= manifest.log_start_offset)
            {
                wanted.remove(&key);
            }
        }
        self.manifests.write().insert(key, manifest.clone());
        self.manifest_changes
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets a partition (its topic was deleted).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.manifests.write().retain(|(t, _), _| t != topic);
        self.wanted_log_starts.lock().retain(|(t, _), _| t != topic);
    }

    /// The partition's log start offset across both tiers, given its local one: the lake's start
    /// when it holds older offsets, and never below the log start DeleteRecords set (which a
    /// leader's local log may not have reached yet after a failover).
    pub(crate) fn log_start_offset(&self, topic: &str, partition: i32, local_start: i64) -> i64 {
        let manifests = self.manifests.read();
        let Some(manifest) = manifests.get(&(topic.to_string(), partition)) else {
            return local_start;
        };
        manifest
            .start_offset()
            .map_or(local_start, |s| s.min(local_start))
            .max(manifest.log_start_offset)
    }

    /// DeleteRecords moved a tiered partition's log start to `offset` (locally): the offload
    /// pipeline is woken to commit it to the manifest (the files below it go).
    /// Called before the local log start moves, so that a pass that sees the moved start also
    /// sees this.
    pub(crate) fn request_log_start(&self, topic: &str, partition: i32, offset: i64) {
        let mut wanted = self.wanted_log_starts.lock();
        let entry = wanted
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *entry = (*entry).max(offset);
        drop(wanted);
        self.offload_wake.notify_one();
    }

    /// The log start offset DeleteRecords asked for and the manifest does not hold yet.
    pub(crate) fn wanted_log_start(&self, topic: &str, partition: i32) -> Option<i64> {
        self.wanted_log_starts
            .lock()
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// Resolves when a log start was asked for (or at once if one was asked for since the last
    /// wait): the offload pipeline's wake-up.
    pub(crate) async fn log_start_wanted(&self) {
        self.offload_wake.notified().await;
    }

    /// Whether the lake is done with a log start of `offset`: the partition's manifest is known
    /// and either records it or holds no offset below it.
    fn holds_log_start(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.manifests
            .read()
            .get(&(topic.to_string(), partition))
            .is_some_and(|m| {
                m.log_start_offset >= offset
                    || m.files.first().is_none_or(|f| f.base_offset >= offset)
            })
    }

    /// Waits until the lake is done with a log start of `offset` (see
    /// [`LakeView::request_log_start`]) or `deadline` passes; returns whether it is.
    pub(crate) async fn wait_log_start(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let mut changes = self.manifest_changes.subscribe();
        loop {
            if self.holds_log_start(topic, partition, offset) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.holds_log_start(topic, partition, offset),
            }
        }
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
                self.metrics.timed(self.lake.open_file(entry))
            })
            .await
    }

    async fn chunk(&self, file: &Arc<OpenFile>, k: usize) -> strata_lake::Result<Arc<Chunk>> {
        self.chunks
            .get_or_load(&(file.entry().path.clone(), k), Chunk::memory_bytes, || {
                self.metrics.timed(self.lake.read_chunk(file, k))
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

    /// The first lake record at or after `timestamp_ms` and at or after `from_offset` (the
    /// log start): `(offset, timestamp)`.
    pub(crate) async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
        from_offset: i64,
    ) -> strata_lake::Result<Option<(i64, i64)>> {
        // Earlier files end before the target: the first file reaching it holds the answer,
        // unless its records that reach it lie below `from_offset`; then the next file does.
        let mut after = i64::MIN;
        while let Some((entry, _)) = self.entries(topic, partition, |f| {
            f.max_timestamp_ms >= timestamp_ms
                && f.last_offset >= from_offset
                && f.base_offset > after
        }) {
            let file = self.footer(&entry).await?;
            let first = file
                .chunks_for_timestamp(timestamp_ms)
                .start
                .max(file.chunks_for(from_offset).start);
            for k in first..file.chunk_count() {
                if let Some(found) = self
                    .chunk(&file, k)
                    .await?
                    .offset_for_timestamp(timestamp_ms, from_offset)?
                {
                    return Ok(Some(found));
                }
            }
            after = entry.base_offset;
        }
        Ok(None)
    }

    /// Batches from the one holding `offset`: at most `max_bytes`, but at least one whole batch.
    /// An offset the lake left out (a marker's, an aborted record's) answers with the next batch
    /// of its file, or with one whose header covers it (see [`strata_lake::reader`]), so that a
    /// consumer always moves on. `Ok(None)` when the lake does not hold the offset.
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
                self.metrics
                    .read_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
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
            view.offset_for_timestamp("t", 0, 1045, 0).await.unwrap(),
            Some((45, 1045))
        );
        assert_eq!(
            view.offset_for_timestamp("t", 0, 5000, 0).await.unwrap(),
            None
        );
    }

    /// A segment of `records` batches of 10 (transactional of producer 7 when `txn`) from
    /// `base`, ended by producer 7's marker (`commit`).
    fn segment_with_marker(base: i64, records: i64, txn: bool, commit: bool) -> Bytes {
        let attributes = if txn {
            strata_log::batch::ATTR_TRANSACTIONAL
        } else {
            0
        };
        let records: Vec<LakeRecord> = (base..base + records)
            .map(|o| LakeRecord {
                batch_attributes: attributes,
                producer_id: 7,
                producer_epoch: 0,
                ..record(o, o - (o - base) % 10)
            })
            .collect();
        let mut bytes = strata_lake::segment::encode(&records).to_vec();
        let end = base + records.len() as i64;
        let marker = strata_log::txn::Marker {
            commit,
            coordinator_epoch: 0,
        };
        let mut marker = strata_log::txn::marker_batch(7, 0, marker, 5000);
        marker[..8].copy_from_slice(&end.to_be_bytes());
        bytes.extend_from_slice(&marker);
        Bytes::from(bytes)
    }

    /// Files with gaps where the lake left out markers and an aborted transaction: one ending
    /// in a marker, one holding nothing (an aborted transaction), one after. A consumer fetching
    /// at any offset gets the records at or after it and a last batch that moves it on, never
    /// nothing, and reads the committed records from there to the lake's end.
    #[tokio::test]
    async fn reads_cross_the_gaps_of_markers_and_aborted_transactions() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let lake = Lake::new(Arc::clone(&store));
        let segments = [
            (0, segment_with_marker(0, 30, false, true), vec![]),
            (
                31,
                segment_with_marker(31, 12, true, false),
                vec![strata_log::txn::AbortedTxn {
                    producer_id: 7,
                    first_offset: 31,
                    last_offset: 43,
                }],
            ),
            (44, segment_with_marker(44, 20, true, true), vec![]),
        ];
        let mut manifest = Manifest::default();
        for (base, bytes, aborted) in segments {
            manifest = lake
                .offload_segment_at("t", 0, &manifest, bytes, &aborted, base, 0)
                .await
                .unwrap()
                .manifest;
        }
        let spans: Vec<(i64, i64, u64)> = manifest
            .files
            .iter()
            .map(|f| (f.base_offset, f.last_offset, f.rows))
            .collect();
        assert_eq!(spans, vec![(0, 30, 30), (31, 43, 0), (44, 64, 20)]);
        let view = Arc::new(LakeView::new(lake, 1 << 20));
        view.set_manifest("t", 0, &manifest);
        let committed: Vec<i64> = (0..30).chain(44..64).collect();
        for budget in [1, 1 << 20] {
            for start in 0..=64 {
                let (mut at, mut taken) = (start, Vec::new());
                while at <= 64 {
                    let bytes = view.read("t", 0, at, budget).await.unwrap().unwrap();
                    let mut reader = strata_lake::segment::BatchReader::new(&bytes[..]);
                    let mut next = at;
                    while let Some(batch) = reader.next_batch().unwrap() {
                        taken.extend(batch.decode(at).unwrap().iter().map(|r| r.offset));
                        next = batch.header.next_offset();
                    }
                    assert!(next > at, "a fetch at {at} moves the consumer on");
                    at = next;
                }
                assert_eq!(at, 65);
                let expected: Vec<i64> =
                    committed.iter().copied().filter(|&o| o >= start).collect();
                assert_eq!(taken, expected, "from {start}, budget {budget}");
            }
        }
        assert!(view.read("t", 0, 65, 1 << 20).await.unwrap().is_none());
        assert_eq!(view.last_offset("t", 0), Some(64));
        // Timestamp searches skip the empty file.
        assert_eq!(
            view.offset_for_timestamp("t", 0, 1031, 0).await.unwrap(),
            Some((44, 1044))
        );
    }

    #[tokio::test]
    async fn the_log_start_counts_across_tiers_and_timestamp_searches_skip_what_is_below() {
        let (view, _, manifest) = view_with(3, 1 << 20).await;
        let (moved, removed) = manifest.with_log_start(45);
        assert_eq!((removed.len(), moved.files[0].base_offset), (1, 30));
        view.set_manifest("t", 0, &moved);
        assert_eq!(view.log_start_offset("t", 0, 90), 45, "in the lake");
        assert_eq!(view.log_start_offset("t", 0, 40), 45, "not the local start");
        assert_eq!(view.log_start_offset("t", 0, 95), 45);
        assert_eq!(view.log_start_offset("other", 0, 7), 7, "no manifest");
        // Offset 0 has timestamp 1000: the first record at or after it is now the log start.
        assert_eq!(
            view.offset_for_timestamp("t", 0, 1000, 45).await.unwrap(),
            Some((45, 1045))
        );
        assert_eq!(
            view.offset_for_timestamp("t", 0, 1052, 45).await.unwrap(),
            Some((52, 1052))
        );
        // A file entirely below the start is skipped for the next one.
        assert_eq!(
            view.offset_for_timestamp("t", 0, 1000, 60).await.unwrap(),
            Some((60, 1060))
        );
    }

    #[tokio::test]
    async fn a_wanted_log_start_wakes_the_pipeline_and_its_commit_ends_the_wait() {
        let (view, _, manifest) = view_with(2, 1 << 20).await;
        view.request_log_start("t", 0, 40);
        view.request_log_start("t", 0, 35);
        assert_eq!(view.wanted_log_start("t", 0), Some(40), "never back");
        tokio::time::timeout(std::time::Duration::from_secs(5), view.log_start_wanted())
            .await
            .expect("the pipeline is woken");
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        assert!(
            !view.wait_log_start("t", 0, 40, soon).await,
            "not committed"
        );
        let waiting = {
            let view = Arc::clone(&view);
            let later = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            tokio::spawn(async move { view.wait_log_start("t", 0, 40, later).await })
        };
        view.set_manifest("t", 0, &manifest.with_log_start(40).0);
        assert!(waiting.await.unwrap(), "committed");
        assert_eq!(view.wanted_log_start("t", 0), None);
        // Nothing in the lake below the start: nothing to wait for.
        let soon = tokio::time::Instant::now();
        assert!(view.wait_log_start("t", 0, 10, soon).await);
        assert!(
            !view.wait_log_start("unknown", 0, 10, soon).await,
            "no manifest yet"
        );
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
