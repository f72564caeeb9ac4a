//! `strata lake ls` and `strata lake verify`: what the lake holds, and whether its manifests and
//! objects agree. They read the tier URL directly (and the local data folder for the offload lag
//! and errors). `ls` still answers from the data folder alone when object storage does not.

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use strata_lake::{FileEntry, Lake, OffloadError};

/// How long `strata lake ls` waits for one answer of object storage (which retries failed
/// requests for minutes on its own) before listing from the data folder alone.
pub const LAKE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition in `strata lake ls`.
#[derive(Debug, Serialize)]
pub struct PartitionListing {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Files in offset order.
    pub files: Vec<FileEntry>,
    /// Sealed local segments not yet in the lake.
    pub lag_segments: usize,
    /// Their bytes.
    pub lag_bytes: u64,
    /// Why the broker's offload of this partition is failing, when it is.
    pub offload_error: Option<OffloadError>,
    /// Why the lake could not be read, when it could not: then `files` is empty and the lag
    /// counts every sealed local segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lake_error: Option<String>,
}

/// `strata lake ls`: every partition of the lake with its files, local lag and offload error,
/// and the local partitions whose offload fails before their first file. When object storage
/// fails or does not answer within [`LAKE_CALL_TIMEOUT`], the partitions whose offload is failing
/// are listed from the data folder alone (a warning on stderr says why).
pub async fn ls(
    lake: &Lake,
    data_dir: &Path,
    topic: Option<&str>,
) -> Result<Vec<PartitionListing>> {
    let topics = data_dir.join("topics");
    let (mut out, lake_error) = match from_lake(lake, &topics, topic).await {
        Ok(out) => (out, None),
        Err(e) => {
            let reason = format!("{e:#}");
            eprintln!(
                "warning: the lake cannot be read ({reason}); listing the failing offloads of {} alone",
                data_dir.display()
            );
            (Vec::new(), Some(reason))
        }
    };
    add_local_failures(&mut out, &topics, topic, lake_error.as_deref());
    Ok(out)
}

/// One call to object storage, given up after [`LAKE_CALL_TIMEOUT`].
async fn call<T>(what: &str, f: impl Future<Output = strata_lake::Result<T>>) -> Result<T> {
    tokio::time::timeout(LAKE_CALL_TIMEOUT, f)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {LAKE_CALL_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| what.to_string())
}

/// The lake's partitions with their manifests and the local lag.
async fn from_lake(
    lake: &Lake,
    topics: &Path,
    topic: Option<&str>,
) -> Result<Vec<PartitionListing>> {
    let mut out = Vec::new();
    for (t, p) in call("listing the manifests", lake.partitions()).await? {
        if topic.is_some_and(|wanted| wanted != t) {
            continue;
        }
        let manifest = call(
            &format!("reading the manifest of {t}-{p}"),
            lake.manifest(&t, p),
        )
        .await?;
        let next = manifest.next_offset().unwrap_or(0);
        let dir = topics.join(format!("{t}-{p}"));
        let (lag_segments, lag_bytes) = local_lag(&dir, next);
        out.push(PartitionListing {
            topic: t,
            partition: p,
            files: manifest.files,
            lag_segments,
            lag_bytes,
            offload_error: OffloadError::read(&dir),
            lake_error: None,
        });
    }
    Ok(out)
}

/// Adds the local partitions with an offload error that `out` lacks: those whose offload fails
/// before their first file is in the lake, or all of them when the lake could not be read
/// (`lake_error`).
fn add_local_failures(
    out: &mut Vec<PartitionListing>,
    topics: &Path,
    topic: Option<&str>,
    lake_error: Option<&str>,
) {
    for (t, p, dir) in local_partitions(topics) {
        if topic.is_some_and(|wanted| wanted != t)
            || out.iter().any(|l| l.topic == t && l.partition == p)
        {
            continue;
        }
        if let Some(error) = OffloadError::read(&dir) {
            let (lag_segments, lag_bytes) = local_lag(&dir, 0);
            out.push(PartitionListing {
                topic: t,
                partition: p,
                files: Vec::new(),
                lag_segments,
                lag_bytes,
                offload_error: Some(error),
                lake_error: lake_error.map(str::to_string),
            });
        }
    }
}

/// The partition folders of the local data folder: `(topic, partition, folder)`.
fn local_partitions(topics: &Path) -> Vec<(String, i32, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(topics) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (topic, partition) = name.rsplit_once('-')?;
            Some((topic.to_string(), partition.parse().ok()?, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Sealed segment files (every `.log` but the newest) that hold offsets at or after `next`.
fn local_lag(dir: &Path, next: i64) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut segments: Vec<(i64, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.metadata().ok()?.len()))
        })
        .collect();
    segments.sort_unstable();
    // A sealed segment is waiting if the one after it (sealed or active) starts past `next`.
    let bases: Vec<i64> = segments.iter().map(|s| s.0).collect();
    segments.pop(); // the active segment is not offloaded until it is sealed
    let waiting: Vec<&(i64, u64)> = segments
        .iter()
        .enumerate()
        .filter(|(i, _)| bases[i + 1] > next)
        .map(|(_, s)| s)
        .collect();
    (waiting.len(), waiting.iter().map(|s| s.1).sum())
}

/// One partition in `strata lake verify`.
#[derive(Debug, Serialize)]
pub struct PartitionCheck {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// What was found.
    pub report: strata_lake::VerifyReport,
}

/// `strata lake verify`: every partition with a manifest or data objects.
pub async fn verify(lake: &Lake) -> Result<Vec<PartitionCheck>> {
    let partitions = lake.all_partitions().await?;
    let progress = std::io::stderr().is_terminal();
    let mut out = Vec::new();
    for (i, (topic, partition)) in partitions.iter().enumerate() {
        if progress {
            eprint!(
                "\rverifying {}/{} {topic}-{partition}\x1b[K",
                i + 1,
                partitions.len()
            );
        }
        let report = lake.verify(topic, *partition).await?;
        out.push(PartitionCheck {
            topic: topic.clone(),
            partition: *partition,
            report,
        });
    }
    if progress {
        eprintln!("\rverified {} partitions\x1b[K", partitions.len());
    }
    Ok(out)
}

/// Milliseconds since the epoch as RFC 3339 text.
pub fn time_text(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        Err(_) => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_sealed_segments_past_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        for (base, size) in [(0, 10), (100, 20), (200, 30), (300, 5)] {
            std::fs::write(dir.path().join(format!("{base:020}.log")), vec![0u8; size]).unwrap();
        }
        assert_eq!(local_lag(dir.path(), 0), (3, 60));
        assert_eq!(local_lag(dir.path(), 150), (2, 50));
        assert_eq!(
            local_lag(dir.path(), 300),
            (0, 0),
            "the active segment does not count"
        );
        assert_eq!(local_lag(&dir.path().join("missing"), 0), (0, 0));
    }

    #[test]
    fn partition_folders_are_named_topic_dash_partition() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["my-topic-3", "t-0", "not_a_partition", "t-x"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let found: Vec<(String, i32)> = local_partitions(dir.path())
            .into_iter()
            .map(|(t, p, _)| (t, p))
            .collect();
        assert_eq!(found, [("my-topic".into(), 3), ("t".into(), 0)]);
        assert!(local_partitions(&dir.path().join("missing")).is_empty());
    }
}
