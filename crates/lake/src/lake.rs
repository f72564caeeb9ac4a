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
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest, VerifyReport};
use crate::parquet_file::{self, FileSummary, FileWriter, RowGroupLimits};
use crate::segment::{self, BatchReader, SegmentSource};

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
    limits: ConversionLimits,
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

    /// Offloads the records of a sealed segment from `from_offset` on: converts them to Parquet
    /// and uploads the file as it is produced, then commits the manifest naming it.
    ///
    /// Memory is bounded, whatever the segment's size: the read window (1 MiB, or the largest
    /// batch), one batch's decoded records, one row group as the encoder holds it (compressed;
    /// the row group ends at the first batch boundary past [`RowGroupLimits`]) with at most
    /// 1 MiB of decoded records waiting for it, and three upload parts (the one being filled,
    /// one queued, one being uploaded). With the defaults about 16 + 3 × 8 MiB.
    ///
    /// The file's name and manifest entry come from the segment's batch headers (read first,
    /// which checks the framing of the whole segment before anything is uploaded) and from what
    /// the conversion counted; a segment whose records disagree with its headers fails with
    /// [`Error::CorruptSegment`] and nothing is committed.
    pub async fn offload_segment(
        &self,
        topic: &str,
        partition: i32,
        manifest: &Manifest,
        segment: impl SegmentSource + Send + 'static,
        from_offset: i64,
    ) -> Result<Offloaded> {
        let (source_bytes, segment_name) = (segment.len(), segment.name());
        let scanned = tokio::task::spawn_blocking(move || {
            let mut reader = BatchReader::new(segment);
            segment::span(&mut reader, from_offset).map(|span| (reader, span))
        })
        .await
        .map_err(|e| Error::Corrupt(format!("segment scan task failed: {e}")))?;
        let (reader, Some((first, last))) = scanned? else {
            return Ok(Offloaded {
                manifest: manifest.clone(),
                peak_buffered_bytes: 0,
            });
        };
        let path = format!(
            "{}/{first:020}-{last:020}.parquet",
            partition_prefix(topic, partition)
        );
        let (summary, size_bytes, peak_buffered_bytes) = self
            .convert_and_upload(&Path::from(path.as_str()), reader, from_offset)
            .await?;
        if (summary.first_offset, summary.last_offset) != (first, last) {
            // The file is uploaded but not committed: the next attempt overwrites it.
            return Err(Error::CorruptSegment {
                segment: segment_name,
                offset: summary.first_offset,
                position: 0,
                reason: format!(
                    "records hold offsets {}..={} where the batch headers say {first}..={last}",
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
        };
        let updated = manifest.with_file(entry)?;
        self.put_manifest(topic, partition, &updated).await?;
        Ok(Offloaded {
            manifest: updated,
            peak_buffered_bytes,
        })
    }

    /// Converts the records of `reader` from `from_offset` on and uploads the file to `path` as it
    /// is produced. Returns what the file holds, its size, and the most bytes held at once.
    async fn convert_and_upload<S: SegmentSource + Send + 'static>(
        &self,
        path: &Path,
        reader: BatchReader<S>,
        from_offset: i64,
    ) -> Result<(FileSummary, u64, usize)> {
        let (sink, parts) = PartSink::new(self.limits.part_bytes);
        let in_flight = Arc::clone(&sink.in_flight);
        let limits = self.limits.row_group;
        let conversion =
            tokio::task::spawn_blocking(move || convert(reader, from_offset, sink, limits));
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

/// Converts the records of `reader` from `from_offset` on into a lake file written into `sink`,
/// batch by batch. Returns what the file holds and the most bytes held at once.
fn convert<S: SegmentSource>(
    mut reader: BatchReader<S>,
    from_offset: i64,
    sink: PartSink,
    limits: RowGroupLimits,
) -> Result<(FileSummary, usize)> {
    let mut writer = FileWriter::new(sink, limits)?;
    let mut peak = 0;
    while let Some(batch) = reader.next_batch()? {
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
            .apply_retention("t", 0, &m, i64::MAX, 0, -1)
            .await
            .unwrap();
        assert_eq!(kept.files.len(), 1);
        assert!(lake.verify("t", 0).await.unwrap().is_clean());
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
}
