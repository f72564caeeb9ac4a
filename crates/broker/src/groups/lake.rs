//! Committed offsets in the lake: each group coordinator copies the committed offsets of its
//! groups to the lake's group objects (`_strata/groups/<group>.json`, see
//! [`strata_lake::groups`]), and a coordinator whose offsets log is new imports them before it
//! serves, so that consumers resume where they were after a data folder is lost.
//!
//! Writing: a background task per coordinator ([`follow`]) takes the groups whose offsets
//! changed ([`GroupCoordinator::take_offset_changes`]) once a second and writes each one's
//! object whole, at most once per `lake.target.lag.ms` per group (the freshness of records in
//! the lake); a group whose offsets are all gone has its object deleted at once. Requests never
//! wait for it. A failed write is logged and the group stays pending, retried with backoff, so
//! the lake's copy is never silently left behind. When a writer starts (a broker starting, a new
//! leader of an offsets partition), it lists the lake's objects and writes at once every group of
//! its own whose object is missing or older than the group's newest commit: the commits of the
//! last target lag before the previous writer stopped.
//!
//! Importing: the offsets log is new (it never held a record: a fresh data folder, or in a
//! cluster the leader of an offsets partition whose log is empty), so the coordinator reads the
//! objects of the groups that map to it and writes their offsets to its log as commits
//! ([`GroupCoordinator::import_offsets`]) before it serves. If object storage does not answer
//! within [`IMPORT_TIMEOUT`] the coordinator serves without them, with an error in the log; the
//! objects stay in the lake (a writer deletes an object only for a group it saw go).
//!
//! In a cluster a writer stops as soon as its coordinator no longer leads the group's offsets
//! partition, and checks before every write batch. A deposed leader's write racing the new
//! leader's can leave an older copy until the group's next change; the new leader's start-up
//! writes (above) make that window small.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use strata_coordinator::GroupCoordinator;
use strata_coordinator::store::CommittedOffset;
use strata_lake::groups::{GroupFiles, GroupOffset, GroupOffsets};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// How often a writer looks for changed groups.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Objects written or deleted at once by one writer.
const WRITES_PARALLEL_MAX: usize = 8;
/// Objects one writer writes or deletes per pass, so that a pass (and the offsets it holds in
/// memory) stays bounded however many groups changed; the others wait for the next pass.
const WRITES_PER_PASS_MAX: usize = 1_000;
/// Objects read at once by an import.
const READS_PARALLEL_MAX: usize = 8;
/// First and longest waits before retrying after a failed write.
const BACKOFF_MIN_MS: i64 = 1_000;
const BACKOFF_MAX_MS: i64 = 30_000;
/// How far ahead of the broker's clock object storage's may run (an object's last-modified
/// time is storage's): a group committed up to this long before its object was written is
/// written again when a writer starts. Writing one object twice costs a PUT; missing a commit
/// costs consumers a replay after a lost disk.
const STORAGE_CLOCK_AHEAD_MS: i64 = 5 * 60_000;
/// How long a coordinator whose offsets log is new waits for object storage before it serves
/// without the lake's offsets (as start-up waits for the lake's topics).
pub(crate) const IMPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between import attempts while object storage fails.
const IMPORT_RETRY: Duration = Duration::from_secs(1);

/// The lake's group objects, and how often one group's may be written.
#[derive(Debug, Clone)]
pub(crate) struct GroupLake {
    files: GroupFiles,
    /// `lake.target.lag.ms`: the shortest time between two writes of one group's object.
    target_lag_ms: i64,
}

impl GroupLake {
    /// The group objects of `files`, each written at most once per `target_lag_ms`.
    pub(crate) fn new(files: GroupFiles, target_lag_ms: i64) -> Self {
        Self {
            files,
            target_lag_ms,
        }
    }
}

/// What a writer does with a group whose offsets changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Write its object.
    Put,
    /// Delete its object: it has no committed offset left.
    Delete,
    /// Its object was written less than the target lag ago: later.
    Wait,
}

/// What to do with a changed group that has committed offsets or not (`has_offsets`), whose
/// object this writer last wrote at `put_at_ms`.
fn action(has_offsets: bool, put_at_ms: Option<i64>, now_ms: i64, target_lag_ms: i64) -> Action {
    if !has_offsets {
        return Action::Delete;
    }
    match put_at_ms {
        Some(at) if now_ms - at < target_lag_ms => Action::Wait,
        _ => Action::Put,
    }
}

/// The groups a starting writer writes at once: of `groups` (each with its newest commit
/// timestamp), those with no object in `objects` (group → last modified), or whose object was
/// written before their newest commit (allowing for [`STORAGE_CLOCK_AHEAD_MS`]).
fn stale_at_start(groups: &[(String, i64)], objects: &HashMap<String, i64>) -> Vec<String> {
    groups
        .iter()
        .filter(|(group, newest_commit_ms)| match objects.get(group) {
            None => true,
            Some(modified_ms) => *newest_commit_ms >= modified_ms - STORAGE_CLOCK_AHEAD_MS,
        })
        .map(|(group, _)| group.clone())
        .collect()
}

/// The wait before the next attempt after `failures` failed passes in a row.
fn backoff_ms(failures: u32) -> i64 {
    BACKOFF_MIN_MS
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX_MS)
}

/// The committed offsets of `group` in the lake's form.
fn committed_offsets(coordinator: &GroupCoordinator, group: &str) -> Vec<GroupOffset> {
    coordinator
        .fetch_offsets(group, None, false)
        .into_iter()
        .filter_map(|(topic, partition, found)| {
            let o = found.ok()??;
            Some(GroupOffset {
                topic,
                partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata,
                commit_timestamp_ms: o.commit_timestamp_ms,
            })
        })
        .collect()
}

/// A write of one group's object.
enum Job {
    Put(GroupOffsets),
    Delete(String),
}

/// One coordinator's copy to the lake.
struct Writer {
    coordinator: Arc<GroupCoordinator>,
    lake: Arc<GroupLake>,
    /// Whether the start-up listing was done.
    started: bool,
    /// Groups changed and not written yet.
    pending: BTreeSet<String>,
    /// When each group's object was last written, for those written less than the target lag
    /// ago.
    put_at_ms: HashMap<String, i64>,
    /// Failed passes in a row, and when to try again.
    failures: u32,
    retry_at_ms: i64,
}

impl Writer {
    fn new(coordinator: Arc<GroupCoordinator>, lake: Arc<GroupLake>) -> Self {
        coordinator.track_offset_changes();
        Self {
            coordinator,
            lake,
            started: false,
            pending: BTreeSet::new(),
            put_at_ms: HashMap::new(),
            failures: 0,
            retry_at_ms: 0,
        }
    }

    /// Lists the lake's objects and marks the groups of this coordinator whose object is missing
    /// or stale ([`stale_at_start`]).
    async fn start(&mut self, maps_here: &(dyn Fn(&str) -> bool + Send + Sync)) -> bool {
        let listed = match self.lake.files.list().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "listing the lake's group offsets failed; retrying");
                return false;
            }
        };
        let objects: HashMap<String, i64> = listed
            .into_iter()
            .filter(|l| maps_here(&l.group))
            .map(|l| (l.group, l.last_modified_ms))
            .collect();
        let stale = stale_at_start(&self.coordinator.groups_with_offsets(), &objects);
        if !stale.is_empty() {
            tracing::info!(
                groups = stale.len(),
                "writing group offsets the lake has not caught up with"
            );
        }
        self.pending.extend(stale);
        self.started = true;
        true
    }

    /// One pass: the groups changed since the last pass join the pending ones, and those due
    /// are written while `current()` holds.
    async fn pass(
        &mut self,
        now_ms: i64,
        maps_here: &(dyn Fn(&str) -> bool + Send + Sync),
        current: &(dyn Fn() -> bool + Send + Sync),
    ) {
        self.pending.extend(self.coordinator.take_offset_changes());
        if now_ms < self.retry_at_ms {
            return;
        }
        if !self.started && !self.start(maps_here).await {
            self.failed(now_ms);
            return;
        }
        let lag_ms = self.lake.target_lag_ms;
        self.put_at_ms.retain(|_, at| now_ms - *at < lag_ms);
        let jobs: Vec<Job> = self
            .pending
            .iter()
            .filter_map(|group| {
                let offsets = committed_offsets(&self.coordinator, group);
                let put_at = self.put_at_ms.get(group).copied();
                match action(!offsets.is_empty(), put_at, now_ms, lag_ms) {
                    Action::Put => Some(Job::Put(GroupOffsets::new(group, now_ms, offsets))),
                    Action::Delete => Some(Job::Delete(group.clone())),
                    Action::Wait => None,
                }
            })
            .take(WRITES_PER_PASS_MAX)
            .collect();
        if jobs.is_empty() || !current() {
            return;
        }
        let files = &self.lake.files;
        let done: Vec<(String, bool, Result<(), strata_lake::Error>)> = stream::iter(jobs)
            .map(|job| async move {
                match job {
                    Job::Put(object) => {
                        let result = files.put(&object).await;
                        (object.group, true, result)
                    }
                    Job::Delete(group) => {
                        let result = files.delete(&group).await;
                        (group, false, result)
                    }
                }
            })
            .buffer_unordered(WRITES_PARALLEL_MAX)
            .collect()
            .await;
        let mut failed = 0;
        for (group, put, result) in done {
            match result {
                Ok(()) => {
                    self.pending.remove(&group);
                    if put {
                        self.put_at_ms.insert(group, now_ms);
                    }
                }
                Err(e) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(group = %group, error = %e, pending = self.pending.len(),
                            "writing group offsets to the lake failed; retrying");
                    }
                }
            }
        }
        if failed > 0 {
            self.failed(now_ms);
        } else if self.failures > 0 {
            tracing::info!(
                after_failures = self.failures,
                "group offsets reach the lake again"
            );
            self.failures = 0;
        }
    }

    fn failed(&mut self, now_ms: i64) {
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = now_ms + backoff_ms(self.failures);
    }
}

/// Copies the committed offsets of `coordinator`'s groups to the lake until `shutdown`, or until
/// `current()` says it no longer serves (a cluster's deposed leader). `maps_here` picks the
/// lake's objects of its groups (all of them for a single broker).
pub(crate) async fn follow(
    coordinator: Arc<GroupCoordinator>,
    lake: Arc<GroupLake>,
    maps_here: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    current: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut writer = Writer::new(coordinator, lake);
    let mut ticks = tokio::time::interval(PASS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if !current() {
            return;
        }
        writer
            .pass(now_ms(), maps_here.as_ref(), current.as_ref())
            .await;
    }
}

/// Reads the lake's objects of the groups `maps_here` picks. An object that does not parse is
/// skipped with an error in the log (its group starts over); a storage failure fails the read.
async fn read_objects(
    files: &GroupFiles,
    maps_here: &(dyn Fn(&str) -> bool + Send + Sync),
) -> strata_lake::Result<Vec<GroupOffsets>> {
    let wanted: Vec<String> = files
        .list()
        .await?
        .into_iter()
        .map(|l| l.group)
        .filter(|g| maps_here(g))
        .collect();
    let read: Vec<_> = stream::iter(wanted)
        .map(|group| async move {
            let found = files.get(&group).await;
            (group, found)
        })
        .buffer_unordered(READS_PARALLEL_MAX)
        .collect()
        .await;
    let mut objects = Vec::with_capacity(read.len());
    for (group, found) in read {
        match found {
            Ok(Some(object)) => objects.push(object),
            // Deleted since the listing.
            Ok(None) => {}
            Err(e @ strata_lake::Error::Corrupt(_)) => {
                tracing::error!(group = %group, error = %e,
                    "skipping a group whose offsets in the lake cannot be read");
            }
            Err(e) => return Err(e),
        }
    }
    objects.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(objects)
}

/// Imports into `coordinator`, whose offsets log is new, the lake's offsets of the groups
/// `maps_here` picks, retrying while object storage fails for up to [`IMPORT_TIMEOUT`]. Runs on
/// a blocking thread of `runtime` (a coordinator loads there) and returns once the offsets are
/// in its log.
pub(crate) fn import(
    runtime: &tokio::runtime::Handle,
    lake: &GroupLake,
    coordinator: &GroupCoordinator,
    maps_here: &(dyn Fn(&str) -> bool + Send + Sync),
) {
    let read = runtime.block_on(async {
        tokio::time::timeout(IMPORT_TIMEOUT, async {
            loop {
                match read_objects(&lake.files, maps_here).await {
                    Ok(objects) => return objects,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading group offsets from the lake failed; retrying");
                        tokio::time::sleep(IMPORT_RETRY).await;
                    }
                }
            }
        })
        .await
    });
    let Ok(objects) = read else {
        tracing::error!(
            timeout_s = IMPORT_TIMEOUT.as_secs(),
            "object storage did not answer: serving groups without the lake's committed \
             offsets (they stay in the lake)"
        );
        return;
    };
    if objects.is_empty() {
        return;
    }
    let groups = objects.len();
    let offsets = objects
        .into_iter()
        .map(|object| {
            let offsets = object
                .offsets
                .into_iter()
                .map(|o| {
                    let committed = CommittedOffset {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata,
                        commit_timestamp_ms: o.commit_timestamp_ms,
                    };
                    (o.topic, o.partition, committed)
                })
                .collect();
            (object.group, offsets)
        })
        .collect();
    // Not waited for: in a cluster, a leader that fails before its followers have these records
    // leaves an empty log to the next leader, which imports them again.
    match coordinator.import_offsets(offsets, now_ms()) {
        Ok((restored, _durable)) => {
            tracing::info!(
                groups,
                offsets = restored,
                "restored committed offsets from the lake"
            );
        }
        Err(e) => {
            tracing::error!(error = %e,
                "writing the lake's committed offsets to the offsets log failed; serving without them (they stay in the lake)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_written_at_most_once_per_target_lag_and_deleted_at_once() {
        assert_eq!(action(true, None, 1_000, 60_000), Action::Put);
        assert_eq!(action(true, Some(1_000), 60_999, 60_000), Action::Wait);
        assert_eq!(action(true, Some(1_000), 61_000, 60_000), Action::Put);
        assert_eq!(action(false, Some(1_000), 1_001, 60_000), Action::Delete);
        assert_eq!(action(false, None, 0, 60_000), Action::Delete);
    }

    #[test]
    fn a_starting_writer_writes_groups_missing_from_the_lake_or_behind_it() {
        let groups = [
            ("missing".to_string(), 10_000_000),
            ("current".to_string(), 10_000_000),
            ("behind".to_string(), 10_000_000),
            ("storage-clock-ahead".to_string(), 10_000_000),
        ];
        let objects: HashMap<String, i64> = [
            ("current", 10_000_000 + STORAGE_CLOCK_AHEAD_MS + 1),
            ("behind", 9_000_000),
            ("storage-clock-ahead", 10_000_000 + STORAGE_CLOCK_AHEAD_MS),
            ("gone", 1),
        ]
        .into_iter()
        .map(|(g, at)| (g.to_string(), at))
        .collect();
        assert_eq!(
            stale_at_start(&groups, &objects),
            ["missing", "behind", "storage-clock-ahead"]
        );
    }

    #[test]
    fn failures_back_off_up_to_a_limit() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(6), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }

    fn coordinator(dir: &std::path::Path) -> Arc<GroupCoordinator> {
        let config =
            crate::config::BrokerConfig::for_dir(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
                .coordinator_config();
        Arc::new(GroupCoordinator::open(&dir.join("offsets"), config, now_ms()).unwrap())
    }

    fn commit(c: &GroupCoordinator, group: &str, partition: i32, offset: i64) {
        commit_at(c, group, partition, offset, now_ms());
    }

    fn commit_at(c: &GroupCoordinator, group: &str, partition: i32, offset: i64, at_ms: i64) {
        let committed = CommittedOffset {
            offset,
            leader_epoch: 2,
            metadata: "m".into(),
            commit_timestamp_ms: at_ms,
        };
        let offsets = vec![("orders".into(), partition, committed)];
        let (codes, _) = c.commit(group, "", None, -1, offsets, now_ms()).unwrap();
        assert_eq!(codes, [0]);
    }

    fn lake(dir: &std::path::Path, target_lag_ms: i64) -> Arc<GroupLake> {
        let url = strata_lake::store::file_url(&dir.join("lake")).unwrap();
        let store = strata_lake::store::open(&url, &Default::default()).unwrap();
        Arc::new(GroupLake::new(GroupFiles::new(store), target_lag_ms))
    }

    fn offsets_of(object: &GroupOffsets) -> Vec<(i32, i64)> {
        object
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect()
    }

    #[tokio::test]
    async fn a_writer_copies_changes_within_the_lag_deletes_gone_groups_and_retries_failures() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        commit(&c, "before", 0, 5);
        let lake = lake(dir.path(), 60_000);
        let mut writer = Writer::new(Arc::clone(&c), Arc::clone(&lake));
        let all = |_: &str| true;
        let yes = || true;
        let t0 = now_ms();
        // Start-up: a group the lake does not have is written at once.
        writer.pass(t0, &all, &yes).await;
        let before = lake.files.get("before").await.unwrap().unwrap();
        assert_eq!(offsets_of(&before), [(0, 5)]);
        assert_eq!(before.offsets[0].leader_epoch, 2);
        assert_eq!(before.written_at_ms, t0);

        // A change within the lag waits; after it, the object holds the last commit.
        commit(&c, "before", 0, 6);
        commit(&c, "g", 1, 10);
        writer.pass(t0 + 1_000, &all, &yes).await;
        assert_eq!(
            offsets_of(&lake.files.get("before").await.unwrap().unwrap()),
            [(0, 5)],
            "written less than the lag ago"
        );
        assert_eq!(
            offsets_of(&lake.files.get("g").await.unwrap().unwrap()),
            [(1, 10)],
            "never written: at once"
        );
        commit(&c, "before", 0, 7);
        writer.pass(t0 + 59_999, &all, &yes).await;
        assert_eq!(writer.pending.len(), 1);
        writer.pass(t0 + 60_000, &all, &yes).await;
        assert_eq!(
            offsets_of(&lake.files.get("before").await.unwrap().unwrap()),
            [(0, 7)]
        );
        assert!(writer.pending.is_empty());

        // A deleted group's object goes at the next pass, even within the lag.
        drop(c.delete_group("g", now_ms()).unwrap());
        writer.pass(t0 + 61_000, &all, &yes).await;
        assert_eq!(lake.files.get("g").await.unwrap(), None);

        // A coordinator that no longer serves writes nothing.
        commit(&c, "h", 0, 1);
        writer.pass(t0 + 200_000, &all, &|| false).await;
        assert_eq!(lake.files.get("h").await.unwrap(), None);
        assert!(writer.pending.contains("h"), "still pending");

        // Object storage failing: the group stays pending, retried after a backoff.
        let lake_dir = dir.path().join("lake");
        let groups_dir = lake_dir.join(strata_lake::groups::GROUPS_FOLDER);
        std::fs::remove_dir_all(&groups_dir).unwrap();
        std::fs::write(&groups_dir, "not a folder").unwrap();
        writer.pass(t0 + 300_000, &all, &yes).await;
        assert_eq!(writer.failures, 1);
        assert!(writer.pending.contains("h"));
        std::fs::remove_file(&groups_dir).unwrap();
        writer.pass(t0 + 300_500, &all, &yes).await;
        assert!(writer.pending.contains("h"), "backing off");
        writer.pass(t0 + 301_000, &all, &yes).await;
        assert_eq!(writer.failures, 0);
        assert!(writer.pending.is_empty());
        assert_eq!(
            offsets_of(&lake.files.get("h").await.unwrap().unwrap()),
            [(0, 1)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_offsets_log_imports_the_groups_that_map_to_it_and_a_new_writer_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path(), 60_000);
        let source = coordinator(&dir.path().join("source"));
        // Committed well before the objects are written.
        let long_ago = now_ms() - 2 * STORAGE_CLOCK_AHEAD_MS;
        commit_at(&source, "mine", 0, 11, long_ago);
        commit_at(&source, "mine", 1, 12, long_ago);
        commit_at(&source, "theirs", 0, 13, long_ago);
        let mut writer = Writer::new(Arc::clone(&source), Arc::clone(&lake));
        writer.pass(now_ms(), &|_| true, &|| true).await;
        // An object that does not parse is skipped, the others imported.
        let bad = dir
            .path()
            .join("lake")
            .join(strata_lake::groups::GROUPS_FOLDER)
            .join("bad.json");
        std::fs::write(bad, "{").unwrap();

        let target = coordinator(&dir.path().join("target"));
        let (runtime, imported_lake, imported) = (
            tokio::runtime::Handle::current(),
            Arc::clone(&lake),
            Arc::clone(&target),
        );
        tokio::task::spawn_blocking(move || {
            import(&runtime, &imported_lake, &imported, &|g| g != "theirs");
        })
        .await
        .unwrap();
        let mine = target.fetch_offsets("mine", None, true);
        let mine: Vec<_> = mine
            .into_iter()
            .map(|(_, p, o)| (p, o.unwrap().unwrap().offset))
            .collect();
        assert_eq!(mine, [(0, 11), (1, 12)]);
        assert!(target.fetch_offsets("theirs", None, true).is_empty());

        // The lake has them already: a writer starting on the target writes nothing, until a
        // group commits after its object was written.
        let mut writer = Writer::new(Arc::clone(&target), Arc::clone(&lake));
        assert!(writer.start(&|_| true).await);
        assert!(writer.pending.is_empty(), "{:?}", writer.pending);
        commit(&target, "mine", 0, 20);
        let mut writer = Writer::new(Arc::clone(&target), Arc::clone(&lake));
        assert!(writer.start(&|_| true).await);
        assert_eq!(writer.pending.iter().collect::<Vec<_>>(), ["mine"]);
    }
}
