//! The per-partition manifest: which Parquet files hold which offsets. A file counts only once the
//! manifest naming it is committed, and the manifest is written only after the file is durable, so
//! a crash at any point leaves no gap and no duplicate a reader would count. Pure data and checks.
//!
//! One writer per partition: the manifest keeps the leader epoch of the last leader that committed
//! it, and a commit at a lower epoch is refused ([`decide_commit`]), so a deposed leader (paused,
//! then resumed) can never commit over its successor.
//!
//! The manifest also keeps the partition's log start offset when DeleteRecords moved it
//! ([`Manifest::with_log_start`]): files entirely below it are removed, a file holding it stays
//! and its rows below it count as deleted.
//!
//! Two kinds of file hold offsets: *sealed* files (a whole local segment, or what of it the lake
//! did not hold yet) and *fresh pieces* (the records of a partition below its last stable offset
//! that no file holds, uploaded once they are older than the target lag, named `.parquet.fresh`).
//! `files` keeps both, contiguous: sealed files first, fresh pieces only after the last sealed
//! one. A sealed file replaces the pieces it covers in the same commit
//! ([`Manifest::with_sealed_file`]), so every offset is in exactly one live entry at every
//! moment. Replaced pieces, and files removed by retention or DeleteRecords, go to `retired`
//! ([`RetiredFile`]): their objects are deleted only after a delay, so that a reader that listed
//! them (an Iceberg snapshot, a running query) can still open them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Object path under the tier root.
    pub path: String,
    /// First offset in the file.
    pub base_offset: i64,
    /// Last offset in the file.
    pub last_offset: i64,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// Rows (records).
    pub rows: u64,
    /// Size of the Parquet object.
    pub size_bytes: u64,
    /// Size of the segment bytes it came from.
    pub source_bytes: u64,
    /// A fresh piece (`.parquet.fresh`): records of the active part of the log, to be replaced
    /// by a sealed file. Absent (false) for sealed files, as in manifests written before pieces.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fresh: bool,
}

/// A file no longer live: its object stays until the delete delay has passed since it was
/// retired (see [`Manifest::due_for_deletion`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredFile {
    /// Object path under the tier root.
    pub path: String,
    /// When it left `files` (ms since the epoch).
    pub retired_at_ms: i64,
}

/// A partition's manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Files in offset order, contiguous.
    pub files: Vec<FileEntry>,
    /// The leader epoch of the partition leader that last committed the manifest: 0 for a single
    /// broker, and for manifests written before epochs were kept (the field is then absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leader_epoch: i32,
    /// The partition's log start offset as DeleteRecords last moved it: no offset below it is
    /// readable, whatever the files hold (the first file may start below it). 0 when it was
    /// never moved (the field is then absent).
    #[serde(default, skip_serializing_if = "is_zero_offset")]
    pub log_start_offset: i64,
    /// Files that left `files` and whose objects are not deleted yet (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredFile>,
}

fn is_false(fresh: &bool) -> bool {
    !*fresh
}

fn is_zero(epoch: &i32) -> bool {
    *epoch == 0
}

fn is_zero_offset(offset: &i64) -> bool {
    *offset == 0
}

/// What a commit does, given the manifest stored now (see [`decide_commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    /// Write the new manifest (conditionally on the stored version).
    Write,
    /// The stored manifest already is the new one (a retry after an unacknowledged commit).
    AlreadyCommitted,
    /// A later leader committed: refused.
    Fenced {
        /// The stored manifest's epoch.
        stored_epoch: i32,
    },
    /// Another writer committed since `base` was read: refused, read again.
    Conflict,
}

/// Whether `updated`, built on `base` by a writer at `updated.leader_epoch`, may replace the
/// `stored` manifest. A lower epoch than the stored one is always refused, whatever the contents.
pub fn decide_commit(stored: &Manifest, base: &Manifest, updated: &Manifest) -> CommitDecision {
    if stored.leader_epoch > updated.leader_epoch {
        CommitDecision::Fenced {
            stored_epoch: stored.leader_epoch,
        }
    } else if stored == updated {
        CommitDecision::AlreadyCommitted
    } else if stored != base {
        CommitDecision::Conflict
    } else {
        CommitDecision::Write
    }
}

impl Manifest {
    /// The offset after the last offloaded one, `None` when nothing was offloaded.
    pub fn next_offset(&self) -> Option<i64> {
        self.files.last().map(|f| f.last_offset + 1)
    }

    /// The first offloaded offset still in the lake and readable: the first file's, or the log
    /// start offset when that file holds it.
    pub fn start_offset(&self) -> Option<i64> {
        self.files
            .first()
            .map(|f| f.base_offset.max(self.log_start_offset))
    }

    /// Where a partition without local data continues: after the last offloaded offset, and
    /// never below the log start offset (DeleteRecords may have removed every file). `None` when
    /// the lake knows nothing of the partition.
    pub fn resume_offset(&self) -> Option<i64> {
        let next = self.next_offset().unwrap_or(0).max(self.log_start_offset);
        (next > 0).then_some(next)
    }

    /// DeleteRecords: the manifest with its log start offset moved up to `offset` (never back)
    /// and without the files entirely below it, and the files removed. A file holding the new
    /// start stays until retention removes it; its rows below the start are not readable.
    pub fn with_log_start(&self, offset: i64) -> (Self, Vec<FileEntry>) {
        let log_start_offset = self.log_start_offset.max(offset);
        let drop = self
            .files
            .iter()
            .take_while(|f| f.last_offset < log_start_offset)
            .count();
        (
            Self {
                files: self.files[drop..].to_vec(),
                log_start_offset,
                ..self.clone()
            },
            self.files[..drop].to_vec(),
        )
    }

    /// The offset after the last sealed file: where the next sealed upload starts, and below
    /// which local retention may delete (a fresh piece is replaced from the local segment it
    /// came from, which must stay until then). With no sealed file, the first fresh piece's
    /// first offset; `None` when the manifest has no file.
    pub fn sealed_next_offset(&self) -> Option<i64> {
        match self.sealed_files().last() {
            Some(f) => Some(f.last_offset + 1),
            None => self.files.first().map(|f| f.base_offset),
        }
    }

    /// The sealed files: every file up to the last one that is not a fresh piece.
    pub fn sealed_files(&self) -> &[FileEntry] {
        &self.files[..self.first_piece_index()]
    }

    /// The fresh pieces: the files after the last sealed one, in offset order.
    pub fn fresh_pieces(&self) -> &[FileEntry] {
        &self.files[self.first_piece_index()..]
    }

    fn first_piece_index(&self) -> usize {
        self.files
            .iter()
            .rposition(|f| !f.fresh)
            .map_or(0, |i| i + 1)
    }

    /// The manifest with `entry` appended: a fresh piece, or a sealed file while no piece is
    /// live (a sealed file replaces pieces with [`Manifest::with_sealed_file`]). An entry
    /// identical to the last one (a retry after a crash between commit and acknowledgement)
    /// changes nothing; anything else that does not continue the manifest exactly is refused.
    pub fn with_file(&self, entry: FileEntry) -> Result<Self> {
        if self.files.last() == Some(&entry) {
            return Ok(self.clone());
        }
        if !entry.fresh && !self.fresh_pieces().is_empty() {
            return Err(Error::Corrupt(format!(
                "sealed file {} would follow a fresh piece: it must replace them",
                entry.path
            )));
        }
        if let Some(next) = self.next_offset()
            && entry.base_offset != next
        {
            return Err(Error::Corrupt(format!(
                "file {} starts at offset {} but the manifest continues at {next}",
                entry.path, entry.base_offset
            )));
        }
        if entry.last_offset < entry.base_offset {
            return Err(Error::Corrupt(format!(
                "file {} ends before it starts",
                entry.path
            )));
        }
        let mut files = self.files.clone();
        files.push(entry);
        Ok(Self {
            files,
            ..self.clone()
        })
    }

    /// The manifest with the sealed file `entry` after the last sealed one, in place of the
    /// fresh pieces it covers, which are retired at `now_ms` (their objects are deleted later,
    /// see [`Manifest::due_for_deletion`]): one commit, so every offset stays in exactly one
    /// live entry. The file starts at [`Manifest::sealed_next_offset`] and must end where a piece
    /// ends (or after the last one); a file ending inside a piece is refused (the pipeline
    /// promotes such pieces instead). The same file again (a retry) changes nothing.
    pub fn with_sealed_file(&self, entry: FileEntry, now_ms: i64) -> Result<Self> {
        if entry.fresh {
            return Err(Error::Corrupt(format!(
                "{} is a fresh piece, not a sealed file",
                entry.path
            )));
        }
        if self.sealed_files().contains(&entry) {
            return Ok(self.clone());
        }
        if entry.last_offset < entry.base_offset {
            return Err(Error::Corrupt(format!(
                "file {} ends before it starts",
                entry.path
            )));
        }
        if let Some(next) = self.sealed_next_offset()
            && entry.base_offset != next
        {
            return Err(Error::Corrupt(format!(
                "sealed file {} starts at offset {} but the sealed files continue at {next}",
                entry.path, entry.base_offset
            )));
        }
        let pieces = self.fresh_pieces();
        let covered = pieces
            .iter()
            .take_while(|p| p.last_offset <= entry.last_offset)
            .count();
        let rest = &pieces[covered..];
        if let Some(piece) = rest.first()
            && piece.base_offset != entry.last_offset + 1
        {
            return Err(Error::Corrupt(format!(
                "sealed file {} ends at offset {} inside fresh piece {} ({}..={})",
                entry.path, entry.last_offset, piece.path, piece.base_offset, piece.last_offset
            )));
        }
        let mut files = self.sealed_files().to_vec();
        files.push(entry);
        files.extend_from_slice(rest);
        Ok(Self {
            files,
            ..self.clone()
        }
        .with_retired(&pieces[..covered], now_ms))
    }

    /// The manifest with `removed` (files no longer in `files`: replaced, or dropped by retention
    /// or DeleteRecords) retired at `now_ms`. A path already retired keeps its time; a path still
    /// live is not retired.
    pub fn with_retired(&self, removed: &[FileEntry], now_ms: i64) -> Self {
        let mut retired = self.retired.clone();
        for f in removed {
            let live = self.files.iter().any(|l| l.path == f.path);
            if !live && !retired.iter().any(|r| r.path == f.path) {
                retired.push(RetiredFile {
                    path: f.path.clone(),
                    retired_at_ms: now_ms,
                });
            }
        }
        Self {
            retired,
            ..self.clone()
        }
    }

    /// The retired objects whose delete delay has passed at `now_ms`: retired at least
    /// `delete_delay_ms` ago. A path the live files name again is never deleted.
    pub fn due_for_deletion(&self, now_ms: i64, delete_delay_ms: i64) -> Vec<String> {
        self.retired
            .iter()
            .filter(|r| now_ms.saturating_sub(r.retired_at_ms) >= delete_delay_ms)
            .filter(|r| !self.files.iter().any(|f| f.path == r.path))
            .map(|r| r.path.clone())
            .collect()
    }

    /// The manifest without the retired entries of `deleted` (their objects are gone), nor those
    /// whose path is live again.
    pub fn without_retired(&self, deleted: &[String]) -> Self {
        Self {
            retired: self
                .retired
                .iter()
                .filter(|r| {
                    !deleted.contains(&r.path) && !self.files.iter().any(|f| f.path == r.path)
                })
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// The same files, committed by the leader at `leader_epoch`.
    pub fn at_epoch(&self, leader_epoch: i32) -> Self {
        Self {
            leader_epoch,
            ..self.clone()
        }
    }

    /// Whether an entry, live or retired, names the object at `path`.
    pub fn names(&self, path: &str) -> bool {
        self.files.iter().any(|f| f.path == path) || self.retired.iter().any(|r| r.path == path)
    }

    /// Remote retention: the manifest without the oldest files whose newest record is older than
    /// `retention_ms`, or that keep the lake above `retention_bytes` (-1 disables either), and the
    /// files removed. The newest file is always kept.
    pub fn after_retention(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> (Self, Vec<FileEntry>) {
        let mut total: u64 = self.files.iter().map(|f| f.size_bytes).sum();
        let mut drop = 0;
        for f in self.files.iter().take(self.files.len().saturating_sub(1)) {
            let expired =
                retention_ms >= 0 && now_ms.saturating_sub(f.max_timestamp_ms) > retention_ms;
            let oversize = retention_bytes >= 0
                && total.saturating_sub(f.size_bytes) >= retention_bytes as u64;
            if !(expired || oversize) {
                break;
            }
            total -= f.size_bytes;
            drop += 1;
        }
        let removed = self.files[..drop].to_vec();
        (
            Self {
                files: self.files[drop..].to_vec(),
                ..self.clone()
            },
            removed,
        )
    }
}

/// What `verify` found for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Missing offset ranges between consecutive files `(first missing, last missing)`.
    pub gaps: Vec<(i64, i64)>,
    /// Files whose offsets overlap the previous file.
    pub overlaps: Vec<String>,
    /// Objects under the partition that no manifest entry names.
    pub orphans: Vec<String>,
    /// Manifest entries whose object is missing or has another size.
    pub missing: Vec<String>,
    /// Sealed files after a fresh piece (pieces only ever follow the last sealed file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub misplaced: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty()
            && self.overlaps.is_empty()
            && self.orphans.is_empty()
            && self.missing.is_empty()
            && self.misplaced.is_empty()
    }
}

/// Checks a manifest against the `(path, size)` objects listed under its partition. Live files
/// (sealed files and fresh pieces alike) must be contiguous and present; retired objects may be
/// present or already deleted, and are not orphans.
pub fn verify(manifest: &Manifest, objects: &[(String, u64)]) -> VerifyReport {
    let mut report = VerifyReport::default();
    for pair in manifest.files.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.base_offset > prev.last_offset + 1 {
            report
                .gaps
                .push((prev.last_offset + 1, next.base_offset - 1));
        } else if next.base_offset <= prev.last_offset {
            report.overlaps.push(next.path.clone());
        }
        if prev.fresh && !next.fresh {
            report.misplaced.push(next.path.clone());
        }
    }
    for f in &manifest.files {
        if !objects
            .iter()
            .any(|(p, size)| *p == f.path && *size == f.size_bytes)
        {
            report.missing.push(f.path.clone());
        }
    }
    for (path, _) in objects {
        if !manifest.names(path) {
            report.orphans.push(path.clone());
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: i64, last: i64, max_ts: i64, size: u64) -> FileEntry {
        FileEntry {
            path: format!("p/{base}.parquet"),
            base_offset: base,
            last_offset: last,
            min_timestamp_ms: 0,
            max_timestamp_ms: max_ts,
            rows: (last - base + 1) as u64,
            size_bytes: size,
            source_bytes: size * 3,
            fresh: false,
        }
    }

    #[test]
    fn files_must_continue_the_manifest_and_retries_are_idempotent() {
        let m = Manifest::default().with_file(entry(10, 19, 0, 5)).unwrap();
        assert_eq!(m.next_offset(), Some(20));
        assert_eq!(
            m.with_file(entry(10, 19, 0, 5)).unwrap(),
            m,
            "the same file again"
        );
        assert!(m.with_file(entry(21, 30, 0, 5)).is_err(), "a gap");
        assert!(m.with_file(entry(15, 30, 0, 5)).is_err(), "an overlap");
        assert_eq!(m.with_file(entry(20, 29, 0, 5)).unwrap().files.len(), 2);
    }

    #[test]
    fn remote_retention_keeps_the_newest_file() {
        let m = Manifest {
            files: vec![
                entry(0, 9, 100, 10),
                entry(10, 19, 200, 10),
                entry(20, 29, 300, 10),
            ],
            leader_epoch: 4,
            ..Manifest::default()
        };
        let (kept, removed) = m.after_retention(1000, 850, -1);
        assert_eq!((kept.files.len(), removed.len()), (2, 1));
        let (kept, _) = m.after_retention(1_000_000, 1, -1);
        assert_eq!(kept.files.len(), 1);
        let (kept, _) = m.after_retention(0, -1, 20);
        assert_eq!(kept.start_offset(), Some(10));
        assert_eq!(kept.leader_epoch, 4, "retention keeps the writer's epoch");
        assert_eq!(m.after_retention(i64::MAX, -1, -1).1.len(), 0);
    }

    #[test]
    fn the_log_start_removes_the_files_below_it_and_never_moves_back() {
        let m = Manifest {
            files: vec![entry(0, 9, 0, 5), entry(10, 19, 0, 5), entry(20, 29, 0, 5)],
            leader_epoch: 2,
            ..Manifest::default()
        };
        let (kept, removed) = m.with_log_start(15);
        assert_eq!(removed, m.files[..1].to_vec(), "entirely below 15");
        assert_eq!(
            kept.files,
            m.files[1..].to_vec(),
            "10..=19 holds 15: it stays"
        );
        assert_eq!((kept.log_start_offset, kept.leader_epoch), (15, 2));
        assert_eq!(
            kept.start_offset(),
            Some(15),
            "not 10: its rows below 15 are gone"
        );
        assert_eq!(kept.next_offset(), Some(30));
        let (same, none) = kept.with_log_start(3);
        assert_eq!((same, none), (kept.clone(), vec![]), "never backwards");
        // Files keep continuing the manifest, and retention keeps the log start.
        let grown = kept.with_file(entry(30, 39, 0, 5)).unwrap();
        assert_eq!(grown.log_start_offset, 15);
        assert_eq!(grown.after_retention(0, -1, 5).0.log_start_offset, 15);
        assert_eq!(grown.at_epoch(3).log_start_offset, 15);
        // Past every file: the lake is empty, the partition continues at the log start.
        let (empty, removed) = grown.with_log_start(50);
        assert_eq!((empty.files.len(), removed.len()), (0, 3));
        assert_eq!(empty.start_offset(), None);
        assert_eq!(
            (empty.next_offset(), empty.resume_offset()),
            (None, Some(50))
        );
        assert_eq!(grown.resume_offset(), Some(40));
        assert_eq!(Manifest::default().resume_offset(), None);
        // Written only when moved; read back as written.
        let text = serde_json::to_string(&grown).unwrap();
        assert!(text.contains("\"log_start_offset\":15"), "{text}");
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), grown);
        assert!(
            !serde_json::to_string(&m)
                .unwrap()
                .contains("log_start_offset")
        );
    }

    #[test]
    fn verify_finds_gaps_overlaps_orphans_and_missing_objects() {
        let m = Manifest {
            files: vec![
                entry(0, 9, 0, 10),
                entry(12, 19, 0, 10),
                entry(15, 25, 0, 10),
            ],
            ..Manifest::default()
        };
        let objects = vec![
            ("p/0.parquet".to_string(), 10),
            ("p/12.parquet".to_string(), 11),
            ("p/15.parquet".to_string(), 10),
            ("p/stray.parquet".to_string(), 1),
        ];
        let report = verify(&m, &objects);
        assert_eq!(report.gaps, vec![(10, 11)]);
        assert_eq!(report.overlaps, vec!["p/15.parquet".to_string()]);
        assert_eq!(report.missing, vec!["p/12.parquet".to_string()]);
        assert_eq!(report.orphans, vec!["p/stray.parquet".to_string()]);
        assert!(!report.is_clean());
        let clean = Manifest {
            files: vec![entry(0, 9, 0, 10)],
            ..Manifest::default()
        };
        assert!(verify(&clean, &[("p/0.parquet".into(), 10)]).is_clean());
    }

    #[test]
    fn a_commit_below_the_stored_epoch_is_refused_whatever_it_holds() {
        let base = Manifest::default().with_file(entry(0, 9, 0, 5)).unwrap();
        let stored = base.at_epoch(3);
        // A deposed leader at epoch 2 continuing the very manifest stored now: refused.
        let late = stored.with_file(entry(10, 19, 0, 5)).unwrap().at_epoch(2);
        assert_eq!(
            decide_commit(&stored, &stored, &late),
            CommitDecision::Fenced { stored_epoch: 3 }
        );
        // Even a commit that changes nothing.
        assert_eq!(
            decide_commit(&stored, &stored, &stored.at_epoch(2)),
            CommitDecision::Fenced { stored_epoch: 3 }
        );
        // The leader at the stored epoch, or a later one, goes on.
        let next = stored.with_file(entry(10, 19, 0, 5)).unwrap();
        assert_eq!(
            decide_commit(&stored, &stored, &next),
            CommitDecision::Write
        );
        assert_eq!(
            decide_commit(&stored, &stored, &next.at_epoch(4)),
            CommitDecision::Write
        );
        // Built on a manifest that is no longer the stored one: another writer went first.
        assert_eq!(
            decide_commit(
                &next,
                &stored,
                &stored.with_file(entry(10, 14, 0, 5)).unwrap()
            ),
            CommitDecision::Conflict
        );
        // The same commit again (its acknowledgement was lost) changes nothing.
        assert_eq!(
            decide_commit(&next, &stored, &next),
            CommitDecision::AlreadyCommitted
        );
    }

    #[test]
    fn manifests_without_an_epoch_load_at_epoch_zero_and_epoch_zero_is_not_written() {
        let old = r#"{"files":[{"path":"p/0.parquet","base_offset":0,"last_offset":9,
            "min_timestamp_ms":0,"max_timestamp_ms":0,"rows":10,"size_bytes":5,"source_bytes":15}]}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.leader_epoch, m.next_offset()), (0, Some(10)));
        let written = serde_json::to_string(&m).unwrap();
        assert!(!written.contains("leader_epoch"), "{written}");
        let at_7: Manifest =
            serde_json::from_str(&serde_json::to_string(&m.at_epoch(7)).unwrap()).unwrap();
        assert_eq!(at_7, m.at_epoch(7));
        assert_eq!(at_7.with_file(entry(10, 19, 0, 5)).unwrap().leader_epoch, 7);
    }
    fn piece(base: i64, last: i64) -> FileEntry {
        FileEntry {
            path: format!("p/{base}-{last}.parquet.fresh"),
            fresh: true,
            ..entry(base, last, 0, 5)
        }
    }

    /// Every offset from the first file's to the last file's is in exactly one live entry,
    /// sealed files come first, and nothing retired is live.
    fn assert_exactly_once(m: &Manifest) {
        for pair in m.files.windows(2) {
            assert_eq!(pair[1].base_offset, pair[0].last_offset + 1, "{m:?}");
            assert!(
                !pair[0].fresh || pair[1].fresh,
                "a piece before a sealed file"
            );
        }
        for r in &m.retired {
            assert!(
                !m.files.iter().any(|f| f.path == r.path),
                "{} live and retired",
                r.path
            );
        }
        assert_eq!(
            m.sealed_files().len() + m.fresh_pieces().len(),
            m.files.len()
        );
    }

    #[test]
    fn a_sealed_file_replaces_the_pieces_it_covers_in_one_step() {
        let m = Manifest::default()
            .with_file(entry(0, 9, 0, 5))
            .and_then(|m| m.with_file(piece(10, 14)))
            .and_then(|m| m.with_file(piece(15, 19)))
            .and_then(|m| m.with_file(piece(20, 24)))
            .unwrap();
        assert_exactly_once(&m);
        assert_eq!(
            (m.sealed_next_offset(), m.next_offset()),
            (Some(10), Some(25))
        );
        assert_eq!(m.fresh_pieces().len(), 3);
        assert!(
            m.with_file(entry(25, 29, 0, 5)).is_err(),
            "sealed after pieces"
        );
        assert!(m.with_file(piece(26, 29)).is_err(), "a gap");
        // Ends inside the piece 15..=19, starts elsewhere than after the sealed files, or is a
        // piece itself: refused.
        assert!(m.with_sealed_file(entry(10, 17, 0, 5), 7).is_err());
        assert!(m.with_sealed_file(entry(11, 19, 0, 5), 7).is_err());
        assert!(m.with_sealed_file(piece(10, 19), 7).is_err());
        let sealed = m.with_sealed_file(entry(10, 19, 0, 5), 7).unwrap();
        assert_exactly_once(&sealed);
        assert_eq!(
            sealed
                .files
                .iter()
                .map(|f| (f.base_offset, f.fresh))
                .collect::<Vec<_>>(),
            vec![(0, false), (10, false), (20, true)]
        );
        assert_eq!(
            sealed.retired,
            vec![
                RetiredFile {
                    path: "p/10-14.parquet.fresh".into(),
                    retired_at_ms: 7
                },
                RetiredFile {
                    path: "p/15-19.parquet.fresh".into(),
                    retired_at_ms: 7
                },
            ]
        );
        assert!(
            sealed.names("p/10-14.parquet.fresh"),
            "a retired object is still named"
        );
        assert_eq!(sealed.sealed_next_offset(), Some(20));
        // The same file again (a retry): nothing changes, the retirement time neither.
        assert_eq!(
            sealed.with_sealed_file(entry(10, 19, 0, 5), 9).unwrap(),
            sealed
        );
        // Past the last piece: covers it and goes on.
        let all = sealed.with_sealed_file(entry(20, 40, 0, 5), 8).unwrap();
        assert_exactly_once(&all);
        assert!(all.fresh_pieces().is_empty());
        assert_eq!((all.next_offset(), all.retired.len()), (Some(41), 3));
        // With no sealed file, the first piece is where sealed files start.
        let only_pieces = Manifest::default().with_file(piece(5, 9)).unwrap();
        assert_eq!(only_pieces.sealed_next_offset(), Some(5));
        assert!(only_pieces.with_sealed_file(entry(0, 9, 0, 5), 1).is_err());
        assert_eq!(Manifest::default().sealed_next_offset(), None);
    }

    /// Pieces cut at random points inside segments, segments sealed at random, a piece now and
    /// then promoted: after every step each offset is in exactly one live entry.
    #[test]
    fn every_offset_stays_in_exactly_one_live_entry() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as i64
        };
        for _ in 0..50 {
            let mut m = Manifest::default();
            // Segments: [segment_base, segment_end), the records so far end at `end`.
            let (mut segment_base, mut end) = (0i64, 0i64);
            for step in 0..200 {
                match random(4) {
                    // Records arrive.
                    0 => end += 1 + random(20),
                    // A piece up to the end, or up to the active segment's start when a sealed
                    // segment has offsets no file holds.
                    1 => {
                        let next = m.next_offset().unwrap_or(0);
                        let upto = if next < segment_base {
                            segment_base
                        } else {
                            end
                        };
                        if upto > next {
                            m = m.with_file(piece(next, upto - 1)).unwrap();
                        }
                    }
                    // The active segment seals; its file (from what promoted pieces left of
                    // it) replaces its pieces.
                    2 if end > segment_base => {
                        let from = m.sealed_next_offset().unwrap_or(0);
                        if end > from {
                            m = m
                                .with_sealed_file(entry(from, end - 1, 0, 5), step)
                                .unwrap();
                        }
                        segment_base = end;
                    }
                    // The first piece promoted (same offsets, sealed name).
                    _ => {
                        if let Some(p) = m.fresh_pieces().first().cloned() {
                            let promoted = FileEntry {
                                path: p.path.replace(".fresh", ""),
                                fresh: false,
                                ..p
                            };
                            m = m.with_sealed_file(promoted, step).unwrap();
                        }
                    }
                }
                assert_exactly_once(&m);
                assert_eq!(m.files.first().map_or(0, |f| f.base_offset), 0);
            }
        }
    }

    #[test]
    fn retired_files_are_due_after_the_delay_and_leave_once_deleted() {
        let m = Manifest::default()
            .with_file(entry(0, 9, 0, 5))
            .unwrap()
            .with_retired(&[piece(0, 4), piece(5, 9)], 1000)
            .with_retired(&[entry(0, 9, 0, 5)], 1000);
        assert_eq!(m.retired.len(), 2, "a live file is not retired");
        let later = m.with_retired(&[piece(20, 29)], 5000);
        assert_eq!(
            later.with_retired(&[piece(20, 29)], 9000),
            later,
            "keeps its time"
        );
        assert!(later.due_for_deletion(1999, 1000).is_empty());
        assert_eq!(
            later.due_for_deletion(2000, 1000),
            vec![
                "p/0-4.parquet.fresh".to_string(),
                "p/5-9.parquet.fresh".to_string()
            ]
        );
        assert_eq!(later.due_for_deletion(6000, 1000).len(), 3);
        assert_eq!(later.due_for_deletion(1000, 0).len(), 2, "no delay");
        let deleted = later.without_retired(&later.due_for_deletion(2000, 1000));
        assert_eq!(deleted.retired.len(), 1);
        assert_eq!(deleted.files, later.files);
        // Retention and DeleteRecords hand their removed files to the same list.
        let (kept, removed) = later.with_log_start(10);
        let kept = kept.with_retired(&removed, 6000);
        assert!(kept.files.is_empty() && kept.names("p/0.parquet"));
    }

    #[test]
    fn fresh_flags_and_retired_lists_are_written_only_when_present() {
        let sealed = Manifest::default().with_file(entry(0, 9, 0, 5)).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(
            !text.contains("fresh") && !text.contains("retired"),
            "{text}"
        );
        let m = sealed
            .with_file(piece(10, 19))
            .unwrap()
            .with_retired(&[piece(0, 9)], 3);
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.contains("\"fresh\":true") && text.contains("\"retired_at_ms\":3"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }

    #[test]
    fn verify_knows_fresh_pieces_and_retired_objects() {
        let m = Manifest::default()
            .with_file(entry(0, 9, 0, 10))
            .and_then(|m| m.with_file(piece(10, 14)))
            .unwrap()
            .with_retired(&[piece(0, 4), piece(5, 9)], 0);
        let objects = vec![
            ("p/0.parquet".to_string(), 10),
            ("p/10-14.parquet.fresh".to_string(), 5),
            // Retired, not deleted yet (the other one is already gone): not an orphan.
            ("p/0-4.parquet.fresh".to_string(), 5),
            // A piece uploaded and never committed.
            ("p/15-19.parquet.fresh".to_string(), 5),
        ];
        let report = verify(&m, &objects);
        assert_eq!(report.orphans, vec!["p/15-19.parquet.fresh".to_string()]);
        assert!(
            report.missing.is_empty() && report.gaps.is_empty(),
            "{report:?}"
        );
        assert!(verify(&m, &objects[..3]).is_clean());
        let misplaced = Manifest {
            files: vec![piece(0, 9), entry(10, 19, 0, 10)],
            ..Manifest::default()
        };
        assert_eq!(
            verify(&misplaced, &[]).misplaced,
            vec!["p/10.parquet".to_string()]
        );
    }
}
