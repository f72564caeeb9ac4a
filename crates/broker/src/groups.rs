//! Which group coordinator serves a group, and where its state is kept.
//!
//! A single broker coordinates every group, with its state in a local log
//! (`<data>/internal/__consumer_offsets-0`). In a cluster, group state lives in the internal
//! replicated topic `__consumer_offsets` (`offsets.topic.num.partitions`,
//! `offsets.topic.replication.factor`), as in Kafka: group `g` belongs to partition
//! `abs(javaStringHashCode(g)) % partitions`, and the leader of that partition is its
//! coordinator. This module
//! - creates the topic through the controller once enough brokers are live ([`ensure_topic`]);
//! - keeps one [`GroupCoordinator`] per offsets partition this broker leads, loaded from the
//!   partition's log when it becomes leader and dropped when it stops leading ([`run`]);
//! - writes coordinator records through the replicated partition ([`ReplicatedOffsets`]): appended
//!   by the leader, copied by its followers like any partition, a commit answered once the
//!   in-sync replicas have it (`acks=all`);
//! - compacts each partition by snapshot: the leader appends its live state, and once that is
//!   committed moves the log start up to it; followers follow the leader's log start
//!   ([`follow_log_start`]);
//! - copies every coordinator's committed offsets to the lake, and imports them into a
//!   coordinator whose offsets log is new ([`lake`]).

mod lake;

pub(crate) use lake::GroupLake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use strata_coordinator::offsets_log::{Durable, LocalOffsetsLog, OffsetsLog};
use strata_coordinator::{CoordinatorConfig, GroupCoordinator, Membership};
use strata_log::txn::Marker;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::error::Error;
use crate::led::Led;
use crate::manager::PartitionManager;
use crate::partition::{CommitWait, Partition};

/// The internal topic holding group state in a cluster.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How long a commit waits for the in-sync replicas (Kafka's `offsets.commit.timeout.ms`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a broker waits for `offsets.topic.replication.factor` live brokers before it creates
/// the offsets topic with as many replicas as there are live brokers.
const CREATE_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts to create the offsets topic, and between checks of who leads what
/// when no change is announced.
const RECHECK: Duration = Duration::from_secs(1);
/// A partition is compacted once it holds more than this many records and twice its live ones:
/// a snapshot then costs at most half of what it frees.
const COMPACT_RECORDS_MIN: i64 = 100_000;

/// The topic configs of `__consumer_offsets`: kept whole by time and size (snapshots compact it),
/// never offloaded to the lake, in small segments so that a snapshot frees space soon.
const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("remote.storage.enable", "false"),
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("segment.bytes", "8388608"),
];

/// The offsets partition of group `group`: Kafka's `Utils.abs(groupId.hashCode()) % partitions`,
/// with Java's `String.hashCode` over UTF-16 code units, so that a client computing it (or a
/// Kafka tool reading the topic) agrees.
pub(crate) fn partition_for(group: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has partitions");
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: MIN_VALUE maps to 0.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// The group coordinators of this broker.
#[derive(Debug)]
pub(crate) struct Groups {
    /// A single broker's coordinator of every group; `None` in a cluster.
    single: Option<Arc<GroupCoordinator>>,
    config: CoordinatorConfig,
    /// In a cluster: the coordinators of the offsets partitions this broker leads.
    led: Arc<Led<GroupCoordinator>>,
}

impl Groups {
    /// A single broker's: one coordinator for every group.
    pub(crate) fn single(coordinator: GroupCoordinator, config: CoordinatorConfig) -> Self {
        Self {
            single: Some(Arc::new(coordinator)),
            config,
            led: Arc::new(Led::new(OFFSETS_TOPIC)),
        }
    }

    /// A clustered broker's: coordinators come and go with the leadership of the offsets
    /// partitions ([`run`]).
    pub(crate) fn cluster(config: CoordinatorConfig) -> Self {
        Self {
            single: None,
            config,
            led: Arc::new(Led::new(OFFSETS_TOPIC)),
        }
    }

    /// The coordinator of `group` on this broker, or the error a group request gets:
    /// COORDINATOR_NOT_AVAILABLE while the offsets topic does not exist or its partition could
    /// not be loaded, COORDINATOR_LOAD_IN_PROGRESS while it loads, NOT_COORDINATOR when another
    /// broker leads the group's partition.
    pub(crate) fn of(
        &self,
        manager: &PartitionManager,
        group: &str,
    ) -> Result<Arc<GroupCoordinator>, ResponseError> {
        if let Some(single) = &self.single {
            return Ok(Arc::clone(single));
        }
        self.led.of(manager, group)
    }

    /// Ends `producer_id`'s transaction in the group coordinator of offsets partition
    /// `offsets_partition` (a transaction marker for a `__consumer_offsets` partition): the
    /// marker is written to that partition's log and the producer's pending offsets there are
    /// committed or dropped ([`GroupCoordinator::complete_transaction`]). A single broker's one
    /// coordinator serves every offsets partition. In a cluster: NOT_COORDINATOR unless this
    /// broker leads the partition with its coordinator loaded, COORDINATOR_LOAD_IN_PROGRESS while
    /// it loads, COORDINATOR_NOT_AVAILABLE when it failed to load or the topic does not exist
    /// (all retriable). A marker the log refuses gets the log's code (INVALID_PRODUCER_EPOCH,
    /// TRANSACTION_COORDINATOR_FENCED). The returned future resolves once the marker is durable
    /// (on the in-sync replicas, in a cluster).
    pub(crate) fn complete_transaction(
        &self,
        manager: &PartitionManager,
        offsets_partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<Durable, ResponseError> {
        let coordinator = self.of_partition(manager, offsets_partition)?;
        coordinator
            .complete_transaction(
                producer_id,
                producer_epoch,
                commit,
                coordinator_epoch,
                now_ms(),
            )
            .map_err(|e| txn_error_code(&e))
    }

    /// The coordinator of offsets partition `index` on this broker (see [`Groups::of`]).
    fn of_partition(
        &self,
        manager: &PartitionManager,
        index: i32,
    ) -> Result<Arc<GroupCoordinator>, ResponseError> {
        if let Some(single) = &self.single {
            return Ok(Arc::clone(single));
        }
        self.led.at(manager, index)
    }

    /// Every coordinator serving here, and whether another is still loading.
    pub(crate) fn all(&self) -> (Vec<Arc<GroupCoordinator>>, bool) {
        if let Some(single) = &self.single {
            return (vec![Arc::clone(single)], false);
        }
        self.led.all()
    }

    /// Group timers, offset expiry (when `expire_offsets`) and compaction of every coordinator.
    pub(crate) fn tick(&self, now_ms: i64, expire_offsets: bool) {
        for coordinator in self.all().0 {
            coordinator.tick(now_ms, expire_offsets);
        }
    }

    /// Closes every coordinator (a single broker's flushes and closes its log).
    pub(crate) fn close(&self, now_ms: i64) {
        for coordinator in self.all().0 {
            coordinator.close(now_ms);
        }
        self.led.clear();
    }
}

/// The Kafka error code of a transactional write to an offsets log (a TxnOffsetCommit's offsets
/// or a marker): a producer the log refuses gets the log's code (INVALID_PRODUCER_EPOCH for a
/// fenced producer, TRANSACTION_COORDINATOR_FENCED, INVALID_TXN_STATE, OUT_OF_ORDER_SEQUENCE),
/// other errors the group coordinator's.
pub(crate) fn txn_error_code(error: &strata_coordinator::Error) -> ResponseError {
    use strata_log::Error as L;
    match error {
        strata_coordinator::Error::Log {
            source:
                source @ (L::InvalidProducerEpoch { .. }
                | L::CoordinatorFenced { .. }
                | L::InvalidTxnState { .. }
                | L::OutOfOrderSequence { .. }),
            ..
        } => crate::error::log_error_code(source),
        other => crate::error::coordinator_error_code(other),
    }
}

/// Opens a single broker's coordinator of every group over its local offsets log in `dir`; a
/// new log (a fresh data folder) first gets the lake's committed offsets of every group
/// ([`lake::import`]). Runs on a blocking thread of `runtime`.
pub(crate) fn open_single(
    dir: &std::path::Path,
    config: CoordinatorConfig,
    group_lake: &GroupLake,
    runtime: &tokio::runtime::Handle,
) -> strata_coordinator::Result<GroupCoordinator> {
    let now = now_ms();
    let log = LocalOffsetsLog::open(dir, now)?;
    let new_log = log.log_end_offset() == 0;
    let coordinator = GroupCoordinator::load(Box::new(log), config, Membership::Generation, now)?;
    if new_log {
        lake::import(runtime, group_lake, &coordinator, &|_| true);
    }
    Ok(coordinator)
}

/// A single broker's copy of its committed offsets to the lake ([`lake::follow`]), until
/// `shutdown`. In a cluster each coordinator's copy starts with it ([`run`]).
pub(crate) async fn copy_single_to_lake(
    groups: Arc<Groups>,
    group_lake: Arc<GroupLake>,
    shutdown: CancellationToken,
) {
    let Some(single) = groups.single.clone() else {
        return;
    };
    lake::follow(
        single,
        group_lake,
        Arc::new(|_| true),
        Arc::new(|| true),
        shutdown,
    )
    .await;
}

/// Follows the offsets partitions this broker leads until `shutdown` ([`crate::led::follow`]):
/// a coordinator is loaded for each one it starts leading (or leads at a new epoch) and dropped
/// for each one it stops leading; its waiting JoinGroup and SyncGroup requests then get
/// NOT_COORDINATOR. A coordinator whose partition's log is empty first imports the lake's
/// offsets of its groups; each one serving copies its groups' offsets to the lake
/// ([`lake::follow`]) while it leads.
pub(crate) async fn run(
    groups: Arc<Groups>,
    manager: Arc<PartitionManager>,
    group_lake: Arc<GroupLake>,
    shutdown: CancellationToken,
) {
    let config = groups.config;
    let runtime = tokio::runtime::Handle::current();
    let (load_manager, load_lake) = (Arc::clone(&manager), Arc::clone(&group_lake));
    let load: crate::led::Load<GroupCoordinator, i32> = Arc::new(move |index, _, log| {
        let new_log = log.log_end_offset() == 0;
        let coordinator =
            GroupCoordinator::load(Box::new(log), config, Membership::Members, now_ms())?;
        let partitions = load_manager
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.partition_count);
        if new_log && partitions > 0 {
            let maps_here = move |group: &str| partition_for(group, partitions) == index;
            lake::import(&runtime, &load_lake, &coordinator, &maps_here);
        }
        Ok((coordinator, index))
    });
    let (led, ready_manager, ready_shutdown) = (
        Arc::clone(&groups.led),
        Arc::clone(&manager),
        shutdown.clone(),
    );
    let ready: crate::led::Ready<GroupCoordinator, i32> = Arc::new(move |coordinator, index| {
        let partitions = ready_manager
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.partition_count);
        if partitions <= 0 {
            return;
        }
        let (led, watched) = (Arc::clone(&led), Arc::clone(&coordinator));
        tokio::spawn(lake::follow(
            coordinator,
            Arc::clone(&group_lake),
            Arc::new(move |group| partition_for(group, partitions) == index),
            Arc::new(move || led.is_current(index, &watched)),
            ready_shutdown.clone(),
        ));
    });
    crate::led::follow(Arc::clone(&groups.led), manager, shutdown, load, ready).await;
}

/// Creates `__consumer_offsets` through the controller unless it exists: as soon as
/// `offsets.topic.replication.factor` brokers are live, or after [`CREATE_WAIT`] with as many
/// replicas as there are live brokers then (a smaller cluster). Every broker tries; the first
/// one wins and the others find the topic (or get TOPIC_ALREADY_EXISTS).
pub(crate) async fn ensure_topic(manager: Arc<PartitionManager>, shutdown: CancellationToken) {
    let wanted_rf = manager.config().offsets_topic_replication_factor();
    let partitions = manager.config().offsets_topic_num_partitions();
    ensure_internal_topic(manager, shutdown, OFFSETS_TOPIC, partitions, wanted_rf).await;
}

/// Creates the internal topic `topic` (`__consumer_offsets`, `__transaction_state`) as
/// [`ensure_topic`] does, with `partitions` partitions of `wanted_rf` replicas.
pub(crate) async fn ensure_internal_topic(
    manager: Arc<PartitionManager>,
    shutdown: CancellationToken,
    topic: &'static str,
    partitions: i32,
    wanted_rf: i16,
) {
    let Some(node) = manager.cluster().cloned() else {
        return;
    };
    let started = tokio::time::Instant::now();
    let mut state = node.state();
    loop {
        let current = state.borrow_and_update().clone();
        if current.topics.contains_key(topic) {
            return;
        }
        let live = current.brokers.values().filter(|b| !b.fenced).count();
        let live = i16::try_from(live).unwrap_or(i16::MAX);
        let waited = started.elapsed() >= CREATE_WAIT;
        if live > 0 && node.controller_id().is_some() && (live >= wanted_rf || waited) {
            let rf = wanted_rf.min(live);
            let configs = TOPIC_CONFIGS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let creator = Arc::clone(&manager);
            let created = tokio::task::spawn_blocking(move || {
                creator.create_topic(topic, partitions, rf, configs, false, now_ms())
            })
            .await;
            match created {
                Ok(Ok(_)) => {
                    if rf < wanted_rf {
                        tracing::warn!(
                            partitions,
                            replication_factor = rf,
                            wanted = wanted_rf,
                            "created {topic} with fewer replicas than its replication factor setting: only {live} brokers are live"
                        );
                    } else {
                        tracing::info!(partitions, replication_factor = rf, "created {topic}");
                    }
                    return;
                }
                Ok(Err(Error::TopicExists(_))) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "creating {topic} failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating {topic} panicked; retrying")
                }
            }
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RECHECK) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// A follower of an offsets partition follows its leader's log start (moved by a committed
/// snapshot), up to its own high watermark: what is below it was superseded. Other topics'
/// follower logs are left to their own retention and the lake.
pub(crate) fn follow_log_start(partition: &Partition, leader_log_start_offset: i64) {
    let internal = [OFFSETS_TOPIC, crate::txn::TXN_TOPIC].contains(&partition.topic());
    if !internal || leader_log_start_offset <= partition.log_start_offset() {
        return;
    }
    if let Err(e) = partition.delete_records_before(leader_log_start_offset) {
        tracing::warn!(partition = partition.index(), error = %e,
            "following the leader's log start of an offsets partition");
    }
}

/// A coordinator's records in this broker's replica of an offsets partition, which it leads at
/// `epoch`: appends go in as the leader's, and are durable once the high watermark passes them.
#[derive(Debug)]
pub(crate) struct ReplicatedOffsets {
    partition: Arc<Partition>,
    epoch: i32,
    min_insync: usize,
    name: String,
}

impl ReplicatedOffsets {
    pub(crate) fn new(partition: Arc<Partition>, epoch: i32, min_insync: usize) -> Self {
        let name = format!("{}-{}", partition.topic(), partition.index());
        Self {
            partition,
            epoch,
            min_insync,
            name,
        }
    }

    /// Refuses unless this broker still leads the partition at the coordinator's epoch.
    fn check_leader(&self) -> strata_coordinator::Result<()> {
        if self.partition.is_leader() && self.partition.leader_epoch() == self.epoch {
            return Ok(());
        }
        Err(strata_coordinator::Error::NotCoordinator {
            reason: format!(
                "this broker no longer leads {} at epoch {}",
                self.name, self.epoch
            ),
        })
    }

    /// Refuses unless this broker leads the partition at the coordinator's epoch with enough
    /// in-sync replicas (`min.insync.replicas`, as Kafka writes its offsets with acks=all).
    fn check_writable(&self) -> strata_coordinator::Result<()> {
        self.check_leader()?;
        let assignment = self.partition.assignment();
        if assignment.replicas.len() > 1 && assignment.isr.len() < self.min_insync {
            return Err(strata_coordinator::Error::NotEnoughReplicas {
                partition: self.name.clone(),
                isr: assignment.isr.len(),
                min_insync: self.min_insync,
            });
        }
        Ok(())
    }

    fn error(&self, error: Error) -> strata_coordinator::Error {
        match error {
            Error::Log(source) => strata_coordinator::Error::Log {
                dir: self.dir(),
                source,
            },
            other => strata_coordinator::Error::NotCoordinator {
                reason: format!("{}: {other}", self.name),
            },
        }
    }
}

impl OffsetsLog for ReplicatedOffsets {
    fn append(&mut self, batch: &[u8], now_ms: i64) -> strata_coordinator::Result<i64> {
        self.check_writable()?;
        let info = self
            .partition
            .append(batch, now_ms)
            .map_err(|e| self.error(e))?;
        Ok(info.last_offset)
    }

    fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> strata_coordinator::Result<i64> {
        self.check_writable()?;
        let (info, _) = self
            .partition
            .append_marker(producer_id, producer_epoch, marker, now_ms)
            .map_err(|e| self.error(e))?;
        Ok(info.last_offset)
    }

    fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32 {
        // What the replica's log expects; if it cannot say, the append reports why.
        let known = self.partition.producers().ok().and_then(|producers| {
            producers
                .into_iter()
                .find(|p| p.producer_id == producer_id)
                .map(|p| (p.epoch, p.last_sequence))
        });
        strata_coordinator::offsets_log::next_sequence(known, producer_epoch)
    }

    fn read(&self, offset: i64, max_bytes: usize) -> strata_coordinator::Result<Option<Bytes>> {
        // To the log end: a new leader's log is the partition's, committed or about to be.
        let read = self
            .partition
            .read_as(offset, max_bytes, true)
            .map_err(|e| self.error(e))?;
        match read.records {
            Some(slice) => Ok(Some(Bytes::from(
                slice.read().map_err(|e| self.error(Error::Log(e)))?,
            ))),
            None => Ok(None),
        }
    }

    fn log_start_offset(&self) -> i64 {
        self.partition.log_start_offset()
    }

    fn log_end_offset(&self) -> i64 {
        self.partition.log_end_offset()
    }

    fn durable(&self, last_offset: i64) -> Durable {
        let (partition, epoch, name) = (Arc::clone(&self.partition), self.epoch, self.name.clone());
        Box::pin(async move {
            match partition
                .wait_committed(last_offset, epoch, COMMIT_TIMEOUT)
                .await
            {
                CommitWait::Committed => Ok(()),
                CommitWait::NotLeader => Err(strata_coordinator::Error::NotCoordinator {
                    reason: format!(
                        "{name}: leadership moved before offset {last_offset} was committed"
                    ),
                }),
                CommitWait::TimedOut => Err(strata_coordinator::Error::TimedOut {
                    partition: name,
                    offset: last_offset,
                }),
            }
        })
    }

    fn is_durable(&self, last_offset: i64) -> bool {
        self.check_leader().is_ok() && self.partition.high_watermark() > last_offset
    }

    fn wants_compaction(&self, live_records: usize) -> bool {
        let held = self.log_end_offset() - self.log_start_offset();
        let live = i64::try_from(live_records).unwrap_or(i64::MAX);
        held > COMPACT_RECORDS_MIN.max(live.saturating_mul(2))
    }

    fn before_snapshot(&mut self, _now_ms: i64) -> strata_coordinator::Result<()> {
        self.check_leader()
    }

    fn delete_before(&mut self, offset: i64, _now_ms: i64) -> strata_coordinator::Result<()> {
        self.check_leader()?;
        self.partition
            .delete_records_before(offset)
            .map_err(|e| self.error(e))?;
        tracing::info!(
            partition = %self.name,
            log_start_offset = self.partition.log_start_offset(),
            "compacted an offsets partition"
        );
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        self.partition
            .dir()
            .unwrap_or_else(|_| PathBuf::from(&self.name))
    }

    fn close(self: Box<Self>, _now_ms: i64) -> strata_coordinator::Result<()> {
        // The partition belongs to the manager, which closes it.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Assignment;
    use strata_coordinator::store::CommittedOffset;

    #[test]
    fn groups_map_to_partitions_as_kafka_maps_them() {
        // Java: "hello".hashCode() == 99162322; "polygenelubricants".hashCode() ==
        // Integer.MIN_VALUE, which Kafka's Utils.abs maps to 0; hashes run over UTF-16 units.
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("é", 1000), 233);
        assert_eq!(partition_for("\u{1F600}", 10_000_000), 1_772_899);
        // Negative hashes ("billing" is -109829509, "my-group" -1906497762): the absolute value.
        assert_eq!(partition_for("billing", 50), 9);
        assert_eq!(partition_for("my-group", 50), 12);
    }

    fn offsets_partition(dir: &std::path::Path, isr: Vec<i32>) -> Arc<Partition> {
        let assignment = Assignment {
            leader: 1,
            leader_epoch: 3,
            replicas: vec![1, 2],
            isr,
        };
        let config = strata_log::LogConfig::default();
        Arc::new(Partition::open_as(OFFSETS_TOPIC, 0, dir, config, assignment, 1, 0).unwrap())
    }

    fn coordinator_config() -> CoordinatorConfig {
        let dir = std::path::PathBuf::from("/unused");
        crate::config::BrokerConfig::for_dir(dir, "127.0.0.1:0".parse().unwrap())
            .coordinator_config()
    }

    fn commit(coordinator: &GroupCoordinator, offset: i64) -> strata_coordinator::Result<Durable> {
        let committed = CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        };
        let offsets = vec![("orders".to_string(), 0, committed)];
        let (codes, durable) = coordinator.commit("g", "", None, -1, offsets, 0)?;
        assert_eq!(codes, vec![0]);
        Ok(durable)
    }

    #[tokio::test]
    async fn a_commit_is_durable_once_the_in_sync_replicas_have_it_and_a_new_leader_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let partition = offsets_partition(dir.path(), vec![1, 2]);
        let log = ReplicatedOffsets::new(Arc::clone(&partition), 3, 2);
        let c = GroupCoordinator::load(Box::new(log), coordinator_config(), Membership::Members, 0)
            .unwrap();
        let mut durable = commit(&c, 42).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut durable).await;
        assert!(waited.is_err(), "not durable before the follower has it");
        // The follower fetches from the log end: it has everything.
        let end = partition.log_end_offset();
        partition.record_follower_fetch(2, end, 3, 0).unwrap();
        durable.await.unwrap();

        // Another coordinator over the same replica (a new leader) finds the offset.
        let log = ReplicatedOffsets::new(Arc::clone(&partition), 3, 2);
        let again =
            GroupCoordinator::load(Box::new(log), coordinator_config(), Membership::Members, 0)
                .unwrap();
        let found = again.fetch_offsets("g", None, false);
        assert_eq!(
            found[0].2.as_ref().unwrap().as_ref().map(|o| o.offset),
            Some(42)
        );
    }

    #[tokio::test]
    async fn a_deposed_or_under_replicated_coordinator_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let partition = offsets_partition(dir.path(), vec![1, 2]);
        let log = ReplicatedOffsets::new(Arc::clone(&partition), 3, 2);
        let c = GroupCoordinator::load(Box::new(log), coordinator_config(), Membership::Members, 0)
            .unwrap();
        let pending = commit(&c, 1).unwrap();
        // Broker 2 takes over before the commit is replicated.
        partition.set_assignment(
            Assignment {
                leader: 2,
                leader_epoch: 4,
                replicas: vec![1, 2],
                isr: vec![1, 2],
            },
            0,
        );
        assert!(matches!(
            pending.await,
            Err(strata_coordinator::Error::NotCoordinator { .. })
        ));
        assert!(matches!(
            commit(&c, 2),
            Err(strata_coordinator::Error::NotCoordinator { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let partition = offsets_partition(dir.path(), vec![1]);
        let log = ReplicatedOffsets::new(Arc::clone(&partition), 3, 2);
        let c = GroupCoordinator::load(Box::new(log), coordinator_config(), Membership::Members, 0)
            .unwrap();
        assert!(matches!(
            commit(&c, 1),
            Err(strata_coordinator::Error::NotEnoughReplicas {
                isr: 1,
                min_insync: 2,
                ..
            })
        ));
        assert_eq!(partition.log_end_offset(), 0, "nothing written");
    }

    #[tokio::test]
    async fn transactional_offsets_and_their_marker_are_replicated_and_replayed_by_a_new_leader() {
        let dir = tempfile::tempdir().unwrap();
        let partition = offsets_partition(dir.path(), vec![1, 2]);
        let load = || {
            let log = ReplicatedOffsets::new(Arc::clone(&partition), 3, 2);
            GroupCoordinator::load(Box::new(log), coordinator_config(), Membership::Members, 0)
                .unwrap()
        };
        let c = load();
        let txn = |offset| strata_coordinator::TxnOffsetCommit {
            transactional_id: "tx".into(),
            producer_id: 11,
            producer_epoch: 0,
            member_id: String::new(),
            group_instance_id: None,
            generation_id: -1,
            offsets: vec![(
                "orders".to_string(),
                0,
                CommittedOffset {
                    offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: 0,
                },
            )],
        };
        // Two commits in one transaction: the partition's producer state takes both batches.
        let (codes, mut first) = c.commit_transactional("g", txn(42), 0).unwrap();
        assert_eq!(codes, vec![0]);
        let (_, second) = c.commit_transactional("g", txn(43), 0).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut first).await;
        assert!(waited.is_err(), "not durable before the follower has it");
        let caught_up = |partition: &Partition| {
            let end = partition.log_end_offset();
            partition.record_follower_fetch(2, end, 3, 0).unwrap();
        };
        caught_up(&partition);
        first.await.unwrap();
        second.await.unwrap();
        let producer = |partition: &Partition| {
            let producers = partition.producers().unwrap();
            producers.into_iter().find(|p| p.producer_id == 11).unwrap()
        };
        assert!(
            producer(&partition).txn_start_offset.is_some(),
            "its transaction is open"
        );

        // A new leader replays the pending offsets, and the marker reaches it.
        drop(c);
        let c = load();
        let pending = c.fetch_offsets("g", None, false);
        assert!(pending.is_empty(), "nothing committed yet");
        let marker = c.complete_transaction(11, 0, true, 5, 0).unwrap();
        caught_up(&partition);
        marker.await.unwrap();
        assert!(
            producer(&partition).txn_start_offset.is_none(),
            "the marker ended it"
        );
        let found = load().fetch_offsets("g", None, true);
        assert_eq!(
            found[0].2.as_ref().unwrap().as_ref().map(|o| o.offset),
            Some(43)
        );

        // A marker of an older coordinator is refused with the log's code; a deposed coordinator
        // answers NOT_COORDINATOR.
        let stale = c.complete_transaction(11, 0, false, 4, 0).map(drop);
        assert_eq!(
            stale.map_err(|e| txn_error_code(&e)),
            Err(ResponseError::TransactionCoordinatorFenced)
        );
        partition.set_assignment(
            Assignment {
                leader: 2,
                leader_epoch: 4,
                replicas: vec![1, 2],
                isr: vec![1, 2],
            },
            0,
        );
        let deposed = c.complete_transaction(11, 0, false, 5, 0).map(drop);
        assert_eq!(
            deposed.map_err(|e| txn_error_code(&e)),
            Err(ResponseError::NotCoordinator)
        );
    }

    #[tokio::test]
    async fn a_committed_snapshot_moves_the_log_start_on_leader_and_follower() {
        let dir = tempfile::tempdir().unwrap();
        let leader = offsets_partition(dir.path(), vec![1, 2]);
        let c = GroupCoordinator::load(
            Box::new(ReplicatedOffsets::new(Arc::clone(&leader), 3, 1)),
            coordinator_config(),
            Membership::Members,
            0,
        )
        .unwrap();
        for offset in 0..5 {
            drop(commit(&c, offset).unwrap());
        }
        let everything = leader.read_as(0, 1 << 20, true).unwrap().records.unwrap();
        let everything = everything.read().unwrap();
        // Say a snapshot starts at offset 3: until it is committed the log start stays.
        let mut log = ReplicatedOffsets::new(Arc::clone(&leader), 3, 1);
        log.delete_before(3, 0).unwrap();
        assert_eq!(leader.log_start_offset(), 0);
        leader.record_follower_fetch(2, 5, 3, 0).unwrap();
        log.delete_before(3, 0).unwrap();
        assert_eq!(leader.log_start_offset(), 3);
        assert!(leader.read_as(0, 1 << 20, true).is_err(), "gone below it");

        // A follower with the same records follows the leader's log start, up to its own high
        // watermark; other topics' followers do not.
        let follower_dir = tempfile::tempdir().unwrap();
        let assignment = Assignment {
            leader: 1,
            leader_epoch: 3,
            replicas: vec![1, 2],
            isr: vec![1, 2],
        };
        let config = strata_log::LogConfig::default();
        let follower = Partition::open_as(
            OFFSETS_TOPIC,
            0,
            follower_dir.path(),
            config,
            assignment,
            2,
            0,
        )
        .unwrap();
        follower.append_replicated(&everything, 2, 0).unwrap();
        follow_log_start(&follower, 3);
        assert_eq!(
            follower.log_start_offset(),
            2,
            "bounded by its high watermark"
        );
        follower.append_replicated(&[], 5, 0).unwrap();
        follow_log_start(&follower, 3);
        assert_eq!(follower.log_start_offset(), 3);
    }
}
