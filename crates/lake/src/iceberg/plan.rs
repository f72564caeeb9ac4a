//! What a commit writes, decided from the current snapshot's manifests and the files the
//! partitions' Strata manifests name: which partitions changed, their new manifests' entries
//! (added, kept, removed), the manifests kept as they are, and the snapshot's summary. No I/O.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

use super::avro::{DataFile, ManifestEntry, ManifestFile, Status};

/// A manifest of the current snapshot, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentManifest {
    /// Its manifest list entry.
    pub file: ManifestFile,
    /// Its entries, with inherited snapshot ids and sequence numbers filled in
    /// ([`inherit`]).
    pub entries: Vec<ManifestEntry>,
    /// The leader epoch it was written at.
    pub leader_epoch: i32,
}

/// The files one partition should have, from its Strata manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The partition.
    pub partition: i32,
    /// The leader epoch of the partition's leader (the one committing).
    pub leader_epoch: i32,
    /// Its live files, in offset order.
    pub files: Vec<DataFile>,
}

/// A manifest to write (none when it has no entry: the partition has no file left and had none
/// to remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewManifest {
    /// The partition of its files.
    pub partition: i32,
    /// The epoch of the leader writing it.
    pub leader_epoch: i32,
    /// Its entries: the live files (added and existing) and the files this snapshot removes.
    pub entries: Vec<ManifestEntry>,
}

/// What a commit writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New manifests, one per changed partition.
    pub changed: Vec<NewManifest>,
    /// Manifests of the current snapshot kept as they are.
    pub kept: Vec<ManifestFile>,
    /// The snapshot's summary (`operation` and counts).
    pub summary: BTreeMap<String, String>,
}

/// The entries of a manifest as a reader sees them: an added entry without snapshot id or
/// sequence numbers inherits those of the manifest (the snapshot that added it).
pub fn inherit(entries: Vec<ManifestEntry>, manifest: &ManifestFile) -> Vec<ManifestEntry> {
    entries
        .into_iter()
        .map(|mut e| {
            e.snapshot_id = e.snapshot_id.or(Some(manifest.added_snapshot_id));
            if e.status == Status::Added {
                e.sequence_number = e.sequence_number.or(Some(manifest.sequence_number));
                e.file_sequence_number = e.file_sequence_number.or(Some(manifest.sequence_number));
            }
            e
        })
        .collect()
}

/// The counts of a new manifest's list entry.
pub fn manifest_file(
    manifest: &NewManifest,
    manifest_path: String,
    manifest_length: i64,
    snapshot_id: i64,
    sequence_number: i64,
) -> ManifestFile {
    let count = |status: Status| {
        let of = manifest.entries.iter().filter(|e| e.status == status);
        let files = of.clone().count();
        let rows = of.map(|e| e.file.record_count).sum();
        (i32::try_from(files).unwrap_or(i32::MAX), rows)
    };
    let (added_files_count, added_rows_count) = count(Status::Added);
    let (existing_files_count, existing_rows_count) = count(Status::Existing);
    let (deleted_files_count, deleted_rows_count) = count(Status::Deleted);
    let min_sequence_number = manifest
        .entries
        .iter()
        .filter(|e| e.status != Status::Deleted)
        .map(|e| e.sequence_number.unwrap_or(sequence_number))
        .min()
        .unwrap_or(sequence_number);
    ManifestFile {
        manifest_path,
        manifest_length,
        sequence_number,
        min_sequence_number,
        added_snapshot_id: snapshot_id,
        added_files_count,
        existing_files_count,
        deleted_files_count,
        added_rows_count,
        existing_rows_count,
        deleted_rows_count,
        partition: Some(manifest.partition),
    }
}

fn is_live(e: &ManifestEntry) -> bool {
    e.status != Status::Deleted
}

/// What identifies a file's content: the same object with the same rows and size.
fn identity(f: &DataFile) -> (&str, i64, i64) {
    (&f.path, f.record_count, f.file_size_in_bytes)
}

/// Decides the commit of `desired` (each partition at most once) over `current` (the current
/// snapshot's manifests) as snapshot `snapshot_id`. `None` when every partition already has
/// exactly its files, written at its leader's epoch: nothing to write. Refused with
/// [`Error::FencedLeaderEpoch`] when a partition's manifest was written by a later leader.
/// `previous_summary` is the current snapshot's, whose totals the new summary continues.
pub fn plan<M: Borrow<CurrentManifest>>(
    topic: &str,
    current: &[M],
    desired: &[Desired],
    snapshot_id: i64,
    previous_summary: Option<&BTreeMap<String, String>>,
) -> Result<Option<Plan>> {
    let mut by_partition: BTreeMap<Option<i32>, Vec<&CurrentManifest>> = BTreeMap::new();
    for m in current {
        let m = m.borrow();
        by_partition.entry(m.file.partition).or_default().push(m);
    }
    let mut seen = BTreeSet::new();
    let mut changed = Vec::new();
    for d in desired {
        assert!(
            seen.insert(d.partition),
            "partition {} given twice",
            d.partition
        );
        let manifests = by_partition
            .get(&Some(d.partition))
            .map_or(&[][..], Vec::as_slice);
        let stored_epoch = manifests.iter().map(|m| m.leader_epoch).max();
        if let Some(stored_epoch) = stored_epoch
            && stored_epoch > d.leader_epoch
        {
            return Err(Error::FencedLeaderEpoch {
                topic: topic.to_string(),
                partition: d.partition,
                leader_epoch: d.leader_epoch,
                stored_epoch,
            });
        }
        let live: Vec<&ManifestEntry> = manifests
            .iter()
            .flat_map(|m| m.entries.iter().filter(|e| is_live(e)))
            .collect();
        let mut before: Vec<_> = live.iter().map(|e| identity(&e.file)).collect();
        let mut after: Vec<_> = d.files.iter().map(identity).collect();
        before.sort_unstable();
        after.sort_unstable();
        // A new leader's first commit records its epoch even when the files are the same, so
        // that its predecessor, deposed, can no longer commit the partition.
        let new_leader = stored_epoch.is_some_and(|e| e < d.leader_epoch);
        if before != after || new_leader {
            changed.push(rewrite(d, &live, snapshot_id));
        }
    }
    if changed.is_empty() {
        return Ok(None);
    }
    // Manifests of the partitions not rewritten stay, but those without a live file (left by
    // a snapshot that removed a partition's last files) go.
    let kept = current
        .iter()
        .map(Borrow::borrow)
        .filter(|m| !m.file.partition.is_some_and(|p| seen.contains(&p)))
        .filter(|m| m.file.added_files_count + m.file.existing_files_count > 0)
        .map(|m| m.file.clone())
        .collect();
    let summary = summary(&changed, previous_summary);
    Ok(Some(Plan {
        changed,
        kept,
        summary,
    }))
}

/// A partition's new manifest: its files in order, each existing (with the snapshot and
/// sequence numbers it was added with) or added, then the live files it no longer has, removed.
fn rewrite(d: &Desired, live: &[&ManifestEntry], snapshot_id: i64) -> NewManifest {
    let mut entries: Vec<ManifestEntry> = d
        .files
        .iter()
        .map(
            |f| match live.iter().find(|e| identity(&e.file) == identity(f)) {
                Some(e) => ManifestEntry {
                    status: Status::Existing,
                    file: f.clone(),
                    ..(*e).clone()
                },
                None => ManifestEntry {
                    status: Status::Added,
                    snapshot_id: Some(snapshot_id),
                    sequence_number: None,
                    file_sequence_number: None,
                    file: f.clone(),
                },
            },
        )
        .collect();
    entries.extend(
        live.iter()
            .filter(|e| !d.files.iter().any(|f| identity(f) == identity(&e.file)))
            .map(|e| ManifestEntry {
                status: Status::Deleted,
                snapshot_id: Some(snapshot_id),
                ..(*e).clone()
            }),
    );
    NewManifest {
        partition: d.partition,
        leader_epoch: d.leader_epoch,
        entries,
    }
}

/// The offsets a lake file covers, read from its name (`<first>-<last>[-e<epoch>].parquet`,
/// `.parquet.fresh` for a fresh piece: docs/lake-format.md); `None` for another name.
fn name_range(path: &str) -> Option<(i64, i64)> {
    let name = path.rsplit('/').next()?;
    let stem = name
        .strip_suffix(".parquet.fresh")
        .or_else(|| name.strip_suffix(".parquet"))?;
    let mut parts = stem.split('-');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// Whether a manifest only rewrites its files: the offsets of the files it removes are covered
/// by the files it adds, which hold no more rows. As an offset's record never changes, the
/// added files then hold exactly the removed files' records (fresh pieces replaced by the
/// sealed file of their segment, with no later records yet).
fn only_rewrites(m: &NewManifest) -> bool {
    let of = |status: Status| m.entries.iter().filter(move |e| e.status == status);
    let rows = |status: Status| of(status).map(|e| e.file.record_count).sum::<i64>();
    let Some(mut added) = of(Status::Added)
        .map(|e| name_range(&e.file.path))
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    added.sort_unstable();
    let covered = |(first, last): (i64, i64)| {
        let mut next = first;
        for (a, b) in &added {
            if *a <= next && *b >= next {
                next = b.saturating_add(1);
            }
        }
        next > last
    };
    rows(Status::Added) == rows(Status::Deleted)
        && of(Status::Deleted).all(|e| name_range(&e.file.path).is_some_and(covered))
}

/// The snapshot summary: `operation` (`append` when files were only added, `delete` when only
/// removed, `replace` when the files were rewritten with the same records ([`only_rewrites`]),
/// `overwrite` otherwise), the counts of this commit, and the table's totals carried on from
/// `previous`.
fn summary(
    changed: &[NewManifest],
    previous: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let entries = || changed.iter().flat_map(|m| m.entries.iter());
    let sum = |status: Status| {
        entries().filter(|e| e.status == status).fold(
            (0i64, 0i64, 0i64),
            |(files, rows, bytes), e| {
                (
                    files + 1,
                    rows + e.file.record_count,
                    bytes + e.file.file_size_in_bytes,
                )
            },
        )
    };
    let (added_files, added_rows, added_bytes) = sum(Status::Added);
    let (deleted_files, deleted_rows, deleted_bytes) = sum(Status::Deleted);
    let operation = match (added_files > 0, deleted_files > 0) {
        (true, false) => "append",
        (false, true) => "delete",
        _ if changed.iter().all(only_rewrites) => "replace",
        _ => "overwrite",
    };
    let total = |key: &str, delta: i64| {
        let before = previous
            .and_then(|p| p.get(key))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        (key.to_string(), (before + delta).max(0).to_string())
    };
    let mut summary: BTreeMap<String, String> = [
        ("operation", operation.to_string()),
        ("added-data-files", added_files.to_string()),
        ("deleted-data-files", deleted_files.to_string()),
        ("added-records", added_rows.to_string()),
        ("deleted-records", deleted_rows.to_string()),
        ("added-files-size", added_bytes.to_string()),
        ("removed-files-size", deleted_bytes.to_string()),
        ("changed-partition-count", changed.len().to_string()),
        ("total-delete-files", "0".to_string()),
        ("total-position-deletes", "0".to_string()),
        ("total-equality-deletes", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    summary.extend([
        total("total-data-files", added_files - deleted_files),
        total("total-records", added_rows - deleted_rows),
        total("total-files-size", added_bytes - deleted_bytes),
    ]);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No manifest: an empty table.
    const NONE: &[CurrentManifest] = &[];

    fn file(partition: i32, first: i64, last: i64) -> DataFile {
        DataFile {
            path: format!("file:///l/topic=t/partition={partition}/{first:020}-{last:020}.parquet"),
            partition,
            record_count: last - first + 1,
            file_size_in_bytes: 100 * (last - first + 1),
            offsets: Some((first, last)),
            timestamps_ms: Some((first, last)),
        }
    }

    fn desired(partition: i32, files: Vec<DataFile>) -> Desired {
        Desired {
            partition,
            leader_epoch: 0,
            files,
        }
    }

    /// What a reader of the plan's snapshot sees: the manifests as written and read back.
    fn apply(current: &[CurrentManifest], plan: &Plan, id: i64, seq: i64) -> Vec<CurrentManifest> {
        let mut next: Vec<CurrentManifest> = current
            .iter()
            .filter(|m| plan.kept.contains(&m.file))
            .cloned()
            .collect();
        for m in &plan.changed {
            let file = manifest_file(m, format!("m{id}-{}", m.partition), 1, id, seq);
            next.push(CurrentManifest {
                entries: inherit(m.entries.clone(), &file),
                file,
                leader_epoch: m.leader_epoch,
            });
        }
        next
    }

    fn live_paths(current: &[CurrentManifest]) -> Vec<String> {
        let mut paths: Vec<String> = current
            .iter()
            .flat_map(|m| m.entries.iter().filter(|e| is_live(e)))
            .map(|e| e.file.path.clone())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn appends_then_replaces_then_nothing() {
        let a = file(0, 0, 9);
        let plan1 = plan("t", NONE, &[desired(0, vec![a.clone()])], 1, None)
            .unwrap()
            .unwrap();
        assert_eq!(plan1.summary["operation"], "append");
        assert_eq!(plan1.summary["total-records"], "10");
        let s1 = apply(&[], &plan1, 1, 1);
        assert_eq!(s1[0].entries[0].sequence_number, Some(1));

        // The same files again: nothing to write.
        assert_eq!(
            plan("t", &s1, &[desired(0, vec![a.clone()])], 2, None).unwrap(),
            None
        );

        // Two fresh pieces, then the sealed file holding exactly their rows replaces them.
        let (p1, p2) = (file(0, 10, 14), file(0, 15, 19));
        let plan2 = plan(
            "t",
            &s1,
            &[desired(0, vec![a.clone(), p1.clone(), p2.clone()])],
            2,
            Some(&plan1.summary),
        )
        .unwrap()
        .unwrap();
        let s2 = apply(&s1, &plan2, 2, 2);
        let entries = &s2[0].entries;
        assert_eq!(entries[0].status, Status::Existing);
        assert_eq!(
            (entries[0].snapshot_id, entries[0].sequence_number),
            (Some(1), Some(1))
        );
        assert_eq!(s2[0].file.min_sequence_number, 1);
        let sealed = file(0, 10, 19);
        let plan3 = plan(
            "t",
            &s2,
            &[desired(0, vec![a.clone(), sealed.clone()])],
            3,
            Some(&plan2.summary),
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan3.summary["operation"], "replace");
        assert_eq!(plan3.summary["total-records"], "20");
        assert_eq!(plan3.summary["total-data-files"], "2");
        let s3 = apply(&s2, &plan3, 3, 3);
        assert_eq!(live_paths(&s3), [a.path.clone(), sealed.path.clone()]);
        let deleted: Vec<_> = s3[0]
            .entries
            .iter()
            .filter(|e| e.status == Status::Deleted)
            .collect();
        assert_eq!(deleted.len(), 2);
        // A removed file keeps the sequence number it was added at, and names the snapshot
        // that removed it.
        assert_eq!(
            (deleted[0].snapshot_id, deleted[0].sequence_number),
            (Some(3), Some(2))
        );

        // Retention removes the first file and a new one comes: an overwrite.
        let next = file(0, 20, 29);
        let plan4 = plan(
            "t",
            &s3,
            &[desired(0, vec![sealed, next])],
            4,
            Some(&plan3.summary),
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan4.summary["operation"], "overwrite");
        assert_eq!(plan4.summary["total-records"], "20");
    }

    #[test]
    fn a_replace_holds_the_same_records() {
        let piece = |first: i64, last: i64| DataFile {
            path: format!("s3://b/topic=t/partition=0/{first:020}-{last:020}-e2.parquet.fresh"),
            ..file(0, first, last)
        };
        let manifest = |added: Vec<DataFile>, deleted: Vec<DataFile>| NewManifest {
            partition: 0,
            leader_epoch: 0,
            entries: added
                .into_iter()
                .map(|f| (Status::Added, f))
                .chain(deleted.into_iter().map(|f| (Status::Deleted, f)))
                .map(|(status, file)| ManifestEntry {
                    status,
                    snapshot_id: Some(1),
                    sequence_number: None,
                    file_sequence_number: None,
                    file,
                })
                .collect(),
        };
        let pieces = vec![piece(10, 14), piece(15, 19)];
        assert!(only_rewrites(&manifest(
            vec![file(0, 10, 19)],
            pieces.clone()
        )));
        // More records than the pieces held.
        assert!(!only_rewrites(&manifest(
            vec![file(0, 10, 24)],
            pieces.clone()
        )));
        // As many rows, but a removed offset no added file covers.
        let short = DataFile {
            record_count: 10,
            ..file(0, 10, 18)
        };
        assert!(!only_rewrites(&manifest(vec![short], pieces.clone())));
        // A file of another name: not known to hold the same offsets.
        let other = DataFile {
            path: "s3://b/elsewhere/x.parquet".into(),
            ..file(0, 10, 19)
        };
        assert!(!only_rewrites(&manifest(vec![other], pieces)));
        assert_eq!(
            name_range("a/00000000000000000007-00000000000000000009.parquet"),
            Some((7, 9))
        );
        assert_eq!(name_range("a/7-9-e3.parquet.fresh"), Some((7, 9)));
        assert_eq!(name_range("a/7-9.json"), None);
    }

    #[test]
    fn other_partitions_keep_their_manifests_and_empty_ones_go() {
        let (a, b) = (file(0, 0, 9), file(1, 0, 4));
        let plan1 = plan(
            "t",
            NONE,
            &[desired(0, vec![a.clone()]), desired(1, vec![b.clone()])],
            1,
            None,
        )
        .unwrap()
        .unwrap();
        let s1 = apply(&[], &plan1, 1, 1);
        assert_eq!(s1.len(), 2);
        // Partition 1 loses its only file (DeleteRecords): its manifest holds the removal.
        let plan2 = plan("t", &s1, &[desired(1, vec![])], 2, Some(&plan1.summary))
            .unwrap()
            .unwrap();
        assert_eq!(plan2.summary["operation"], "delete");
        assert_eq!(plan2.kept.len(), 1);
        let s2 = apply(&s1, &plan2, 2, 2);
        assert_eq!(live_paths(&s2), std::slice::from_ref(&a.path));
        // The next commit drops the manifest without live files.
        let a2 = file(0, 10, 19);
        let plan3 = plan(
            "t",
            &s2,
            &[desired(0, vec![a.clone(), a2.clone()])],
            3,
            None,
        )
        .unwrap()
        .unwrap();
        assert!(plan3.kept.is_empty());
        assert_eq!(live_paths(&apply(&s2, &plan3, 3, 3)), [a.path, a2.path]);
        // An empty partition that was never in the table changes nothing.
        assert_eq!(
            plan("t", &s2, &[desired(5, vec![])], 4, None).unwrap(),
            None
        );
    }

    #[test]
    fn a_later_leaders_manifest_fences_an_earlier_leader() {
        let d = Desired {
            leader_epoch: 3,
            ..desired(0, vec![file(0, 0, 9)])
        };
        let s1 = apply(&[], &plan("t", NONE, &[d], 1, None).unwrap().unwrap(), 1, 1);
        let stale = Desired {
            leader_epoch: 2,
            ..desired(0, vec![file(0, 0, 19)])
        };
        let err = plan("t", &s1, &[stale], 2, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FencedLeaderEpoch {
                    stored_epoch: 3,
                    leader_epoch: 2,
                    ..
                }
            ),
            "{err}"
        );
        // Another partition's leader is not fenced by it.
        assert!(
            plan("t", &s1, &[desired(1, vec![file(1, 0, 0)])], 2, None)
                .unwrap()
                .is_some()
        );
    }
}
