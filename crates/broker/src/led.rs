//! The coordinators of the partitions of an internal topic this broker leads: in a cluster, the
//! group coordinators (`__consumer_offsets`, [`crate::groups`]) and the transaction coordinators
//! (`__transaction_state`, [`crate::txn`]) each serve the keys of one partition, loaded from that
//! partition's log when this broker starts leading it (or leads it at a new epoch) and dropped
//! when it stops; a request for a key of a partition led elsewhere gets NOT_COORDINATOR.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::groups::ReplicatedOffsets;
use crate::manager::PartitionManager;
use crate::partition::Partition;

/// Pause between checks of who leads what when no change is announced.
const RECHECK: Duration = Duration::from_secs(1);

/// A partition this broker leads, and its coordinator's progress.
#[derive(Debug)]
enum Slot<C> {
    /// Replaying the partition's log.
    Loading { epoch: i32 },
    /// Serving its keys.
    Ready {
        epoch: i32,
        partition: Arc<Partition>,
        coordinator: Arc<C>,
    },
    /// The log could not be replayed at this epoch (logged); tried again at the next one.
    Failed { epoch: i32 },
}

impl<C> Slot<C> {
    fn epoch(&self) -> i32 {
        match self {
            Self::Loading { epoch } | Self::Ready { epoch, .. } | Self::Failed { epoch } => *epoch,
        }
    }
}

/// The coordinators of the partitions of `topic` led here, by partition index.
#[derive(Debug)]
pub(crate) struct Led<C> {
    topic: &'static str,
    slots: RwLock<BTreeMap<i32, Slot<C>>>,
}

impl<C: Send + Sync + 'static> Led<C> {
    /// None yet, for the internal topic `topic`.
    pub(crate) fn new(topic: &'static str) -> Self {
        Self {
            topic,
            slots: RwLock::default(),
        }
    }

    /// The coordinator of `key` (its partition by Kafka's hash), or the error its requests get:
    /// COORDINATOR_NOT_AVAILABLE while the topic does not exist or the partition could not be
    /// loaded, COORDINATOR_LOAD_IN_PROGRESS while it loads, NOT_COORDINATOR when another broker
    /// leads it.
    pub(crate) fn of(
        &self,
        manager: &PartitionManager,
        key: &str,
    ) -> Result<Arc<C>, ResponseError> {
        let Some(topic) = manager.topic(self.topic) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        if topic.partition_count <= 0 {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        self.at(
            manager,
            crate::groups::partition_for(key, topic.partition_count),
        )
    }

    /// The coordinator of partition `index` (see [`Led::of`]).
    pub(crate) fn at(
        &self,
        manager: &PartitionManager,
        index: i32,
    ) -> Result<Arc<C>, ResponseError> {
        if manager.topic(self.topic).is_none() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        match self.slots.read().get(&index) {
            Some(Slot::Ready {
                epoch,
                partition,
                coordinator,
            }) if partition.is_leader() && partition.leader_epoch() == *epoch => {
                Ok(Arc::clone(coordinator))
            }
            Some(Slot::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(Slot::Failed { .. }) => Err(ResponseError::CoordinatorNotAvailable),
            Some(Slot::Ready { .. }) | None => Err(ResponseError::NotCoordinator),
        }
    }

    /// Every coordinator serving here, and whether another is still loading.
    pub(crate) fn all(&self) -> (Vec<Arc<C>>, bool) {
        let slots = self.slots.read();
        let ready = slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready { coordinator, .. } => Some(Arc::clone(coordinator)),
                _ => None,
            })
            .collect();
        let loading = slots.values().any(|s| matches!(s, Slot::Loading { .. }));
        (ready, loading)
    }

    /// Whether `coordinator` still serves partition `index` here.
    pub(crate) fn is_current(&self, index: i32, coordinator: &Arc<C>) -> bool {
        matches!(
            self.slots.read().get(&index),
            Some(Slot::Ready { coordinator: c, partition, epoch })
                if Arc::ptr_eq(c, coordinator)
                    && partition.is_leader()
                    && partition.leader_epoch() == *epoch
        )
    }

    /// Drops every coordinator.
    pub(crate) fn clear(&self) {
        self.slots.write().clear();
    }
}

/// Loads a coordinator from the log of a partition it starts leading: `(index, epoch, log)` to
/// the coordinator and what to do once it serves (run by [`Ready`]). Runs on the blocking pool.
pub(crate) type Load<C, A> =
    Arc<dyn Fn(i32, i32, ReplicatedOffsets) -> strata_coordinator::Result<(C, A)> + Send + Sync>;
/// Called once a loaded coordinator serves, with what its load returned.
pub(crate) type Ready<C, A> = Arc<dyn Fn(Arc<C>, A) + Send + Sync>;

/// Follows the partitions of `led`'s topic this broker leads until `shutdown`: a coordinator is
/// loaded (`load`) for each one it starts leading, or leads at a new epoch, and dropped for each
/// one it stops leading (a request still holding it gets NOT_COORDINATOR from its log, which
/// refuses writes at a lost epoch).
pub(crate) async fn follow<C: Send + Sync + 'static, A: Send + 'static>(
    led: Arc<Led<C>>,
    manager: Arc<PartitionManager>,
    shutdown: CancellationToken,
    load: Load<C, A>,
    ready: Ready<C, A>,
) {
    let mut roles = manager.watch_roles();
    loop {
        roles.borrow_and_update();
        reconcile(&led, &manager, &load, &ready);
        tokio::select! {
            changed = roles.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RECHECK) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Makes the coordinators match the leadership of the topic's partitions now.
fn reconcile<C: Send + Sync + 'static, A: Send + 'static>(
    led: &Arc<Led<C>>,
    manager: &PartitionManager,
    load: &Load<C, A>,
    ready: &Ready<C, A>,
) {
    let topic = manager.topic(led.topic);
    let leading: BTreeMap<i32, Arc<Partition>> = topic
        .as_ref()
        .map(|topic| {
            topic
                .partitions
                .iter()
                .filter(|p| p.is_leader())
                .map(|p| (p.index(), Arc::clone(p)))
                .collect()
        })
        .unwrap_or_default();
    let min_insync = topic.map_or(1, |t| t.config.min_insync_replicas());
    let mut slots = led.slots.write();
    slots.retain(|index, slot| {
        let keep = leading
            .get(index)
            .is_some_and(|p| p.leader_epoch() == slot.epoch());
        if !keep {
            tracing::info!(
                topic = led.topic,
                partition = index,
                epoch = slot.epoch(),
                "no longer coordinating the keys of this partition"
            );
        }
        keep
    });
    for (index, partition) in leading {
        if slots.contains_key(&index) {
            continue;
        }
        let epoch = partition.leader_epoch();
        slots.insert(index, Slot::Loading { epoch });
        tokio::spawn(load_one(
            Arc::clone(led),
            partition,
            epoch,
            min_insync,
            Arc::clone(load),
            Arc::clone(ready),
        ));
    }
}

/// Replays a partition's log into a coordinator, which serves unless leadership moved on
/// meanwhile.
async fn load_one<C: Send + Sync + 'static, A: Send + 'static>(
    led: Arc<Led<C>>,
    partition: Arc<Partition>,
    epoch: i32,
    min_insync: usize,
    load: Load<C, A>,
    ready: Ready<C, A>,
) {
    let index = partition.index();
    let log = ReplicatedOffsets::new(Arc::clone(&partition), epoch, min_insync);
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || load(index, epoch, log)).await;
    let serving = {
        let mut slots = led.slots.write();
        let current = matches!(slots.get(&index), Some(Slot::Loading { epoch: e }) if *e == epoch);
        match loaded {
            Ok(Ok((coordinator, then))) if current => {
                tracing::info!(
                    topic = led.topic,
                    partition = index,
                    epoch,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "coordinating the keys of this partition"
                );
                let coordinator = Arc::new(coordinator);
                slots.insert(
                    index,
                    Slot::Ready {
                        epoch,
                        partition,
                        coordinator: Arc::clone(&coordinator),
                    },
                );
                Some((coordinator, then))
            }
            Ok(Ok(_superseded)) => None,
            Ok(Err(e)) => {
                tracing::error!(topic = led.topic, partition = index, epoch, error = %e,
                    "loading this partition's coordinator failed");
                if current {
                    slots.insert(index, Slot::Failed { epoch });
                }
                None
            }
            Err(e) => {
                tracing::error!(topic = led.topic, partition = index, epoch, error = %e,
                    "loading this partition's coordinator panicked");
                if current {
                    slots.insert(index, Slot::Failed { epoch });
                }
                None
            }
        }
    };
    if let Some((coordinator, then)) = serving {
        ready(coordinator, then);
    }
}
