//! The leader epoch cache of a partition: the first offset written under each leader epoch, kept
//! in `leader-epoch-checkpoint` as Kafka keeps it (a version line, a count line, then one
//! `epoch start_offset` line per epoch).
//!
//! A replica that returns after a leader change asks the new leader where its last epoch ended
//! (OffsetForLeaderEpoch) and truncates what the new leader never had, instead of trusting its
//! high watermark (KIP-101, KIP-279).

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::log::write_atomic;

const FILE: &str = "leader-epoch-checkpoint";
const VERSION: &str = "0";

/// `(epoch, start_offset)` entries with both strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    /// Loads the checkpoint in `dir`; a missing or unreadable file is an empty cache (the entries
    /// are then learnt again from the batches appended).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "unreadable leader epoch checkpoint; starting empty");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).at(&path),
        };
        Ok(Self { path, entries })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The latest epoch, if any batch was written under one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(epoch, _)| epoch)
    }

    /// Records that `epoch` starts at `start_offset`, when it is newer than the latest one.
    /// Written durably before returning: a new epoch is rare (a leader change).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<()> {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| epoch <= latest) {
            return Ok(());
        }
        // An earlier epoch that wrote nothing starts where this one does: it is replaced.
        self.entries.retain(|&(_, start)| start < start_offset);
        self.entries.push((epoch, start_offset));
        self.store()
    }

    /// Where `epoch` ended, as OffsetForLeaderEpoch answers: the largest epoch at or below the one
    /// asked, and the start offset of the epoch after it (`log_end_offset` when it is the latest).
    /// `None` when every known epoch is newer (the caller answers UNDEFINED_EPOCH).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|&(e, _)| e <= epoch);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1].0;
        let end = self
            .entries
            .get(i)
            .map_or(log_end_offset, |&(_, start)| start);
        Some((found, end))
    }

    /// Forgets epochs that start at or after `offset` (the log was truncated there).
    pub fn truncate_from(&mut self, offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < offset);
        if self.entries.len() != before {
            self.store()?;
        }
        Ok(())
    }

    fn store(&self) -> Result<()> {
        let mut text = format!("{VERSION}\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        write_atomic(&self.path, text.as_bytes())
    }
}

fn parse(text: &str) -> Option<Vec<(i32, i64)>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let entries: Vec<(i32, i64)> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    let increasing = entries
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
    (entries.len() == count && increasing).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kafka_semantics_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(cache.end_offset_for(0, 0), None);
        cache.assign(0, 0).unwrap();
        cache.assign(0, 5).unwrap(); // not newer: ignored
        cache.assign(2, 10).unwrap();
        cache.assign(5, 30).unwrap();
        assert_eq!(cache.end_offset_for(0, 40), Some((0, 10)));
        assert_eq!(
            cache.end_offset_for(1, 40),
            Some((0, 10)),
            "epoch 1 never wrote"
        );
        assert_eq!(cache.end_offset_for(2, 40), Some((2, 30)));
        assert_eq!(cache.end_offset_for(7, 40), Some((5, 40)));
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded, cache);
        cache.truncate_from(30).unwrap();
        assert_eq!(cache.latest_epoch(), Some(2));
        assert_eq!(
            LeaderEpochCache::load(dir.path()).unwrap().entries(),
            &[(0, 0), (2, 10)]
        );
    }

    #[test]
    fn a_damaged_checkpoint_loads_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "0\n3\n1 0\n").unwrap();
        assert!(
            LeaderEpochCache::load(dir.path())
                .unwrap()
                .entries()
                .is_empty()
        );
    }
}
