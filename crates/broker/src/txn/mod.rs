//! Transactions (KIP-98): which transaction coordinator serves a transactional id, where its
//! state is kept, and the markers that end a transaction in every partition it wrote to.
//!
//! A single broker coordinates every transaction, with its state in a local log
//! (`<data>/internal/__transaction_state-0`). In a cluster, transaction state lives in the
//! internal replicated topic `__transaction_state` (`transaction.state.log.num.partitions`,
//! `transaction.state.log.replication.factor`), as in Kafka: id `t` belongs to partition
//! `abs(javaStringHashCode(t)) % partitions`, whose leader is its coordinator, loaded from the
//! partition's log when the broker starts leading it (as the group coordinators are, see
//! [`crate::groups`]). A new coordinator completes the transactions its predecessor had decided.
//!
//! Ending a transaction: EndTxn records the decision (PrepareCommit / PrepareAbort) and is
//! answered once that is durable; the markers are then written to every partition of the
//! transaction by its leader (this broker's directly, other brokers' with WriteTxnMarkers), each
//! with `acks=all`, retried until written; then the transaction is complete.

pub(crate) mod coordinator;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use parking_lot::Mutex;
use strata_log::txn::Marker;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::groups::{Groups, OFFSETS_TOPIC};
use crate::led::Led;
use crate::manager::PartitionManager;
use crate::partition::CommitWait;
use crate::replication::Peer;
use coordinator::{Completion, TxnConfig, TxnCoordinator};

/// The internal topic holding transaction state in a cluster.
pub(crate) const TXN_TOPIC: &str = "__transaction_state";
/// How long a marker waits for the in-sync replicas of its partition.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts to write the markers a transaction still lacks.
const MARKER_RETRY: Duration = Duration::from_millis(200);

/// The transaction coordinators of this broker, and the marker writer they share.
#[derive(Debug)]
pub(crate) struct Txns {
    /// A single broker's coordinator of every transaction; `None` in a cluster.
    single: Option<Arc<TxnCoordinator>>,
    config: TxnConfig,
    /// In a cluster: the coordinators of the `__transaction_state` partitions this broker
    /// leads.
    led: Arc<Led<TxnCoordinator>>,
    manager: Arc<PartitionManager>,
    groups: Arc<Groups>,
    /// Connections to other brokers, for WriteTxnMarkers.
    peers: Mutex<HashMap<i32, Arc<tokio::sync::Mutex<Option<MarkerPeer>>>>>,
}

/// A connection to another broker for WriteTxnMarkers, and when it was last used.
type MarkerPeer = (Peer, tokio::time::Instant);

impl Txns {
    /// A single broker's: one coordinator over its local log; the transactions it had decided
    /// are completed.
    pub(crate) fn single(
        log: Box<dyn strata_coordinator::offsets_log::OffsetsLog>,
        manager: Arc<PartitionManager>,
        groups: Arc<Groups>,
    ) -> strata_coordinator::Result<Arc<Self>> {
        let config = txn_config(&manager);
        let (coordinator, pending) = TxnCoordinator::load(log, 0, 0, config)?;
        let coordinator = Arc::new(coordinator);
        let txns = Arc::new(Self {
            single: Some(Arc::clone(&coordinator)),
            config,
            led: Arc::new(Led::new(TXN_TOPIC)),
            manager,
            groups,
            peers: Mutex::default(),
        });
        for done in pending {
            drop(txns.complete(Arc::clone(&coordinator), done));
        }
        Ok(txns)
    }

    /// A clustered broker's: coordinators come and go with the leadership of the
    /// `__transaction_state` partitions ([`run`]).
    pub(crate) fn cluster(manager: Arc<PartitionManager>, groups: Arc<Groups>) -> Arc<Self> {
        Arc::new(Self {
            single: None,
            config: txn_config(&manager),
            led: Arc::new(Led::new(TXN_TOPIC)),
            manager,
            groups,
            peers: Mutex::default(),
        })
    }

    /// The coordinator of `transactional_id` on this broker, or the error its requests get
    /// (as for groups: COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR).
    pub(crate) fn of(&self, transactional_id: &str) -> Result<Arc<TxnCoordinator>, ResponseError> {
        if let Some(single) = &self.single {
            return Ok(Arc::clone(single));
        }
        self.led.of(&self.manager, transactional_id)
    }

    /// Every coordinator serving here.
    pub(crate) fn all(&self) -> Vec<Arc<TxnCoordinator>> {
        if let Some(single) = &self.single {
            return vec![Arc::clone(single)];
        }
        self.led.all().0
    }

    /// Closes every coordinator's log (a single broker's is its own; in a cluster the
    /// partitions belong to the manager, which closes them).
    pub(crate) fn close(&self, now_ms: i64) {
        if let Some(single) = &self.single {
            single.close(now_ms);
        }
        self.led.clear();
    }

    /// Whether `coordinator` still serves its partition here.
    fn is_current(&self, coordinator: &Arc<TxnCoordinator>) -> bool {
        if let Some(single) = &self.single {
            return Arc::ptr_eq(single, coordinator);
        }
        self.led.is_current(coordinator.partition, coordinator)
    }

    /// [`Txns::complete`] once the decision is durable (a decision lost with its coordinator
    /// is not acted on: the next coordinator finds the transaction open and decides again).
    pub(crate) fn complete_once(
        self: &Arc<Self>,
        coordinator: Arc<TxnCoordinator>,
        done: Completion,
        durable: strata_coordinator::Durable,
    ) {
        let txns = Arc::clone(self);
        tokio::spawn(async move {
            match durable.await {
                Ok(()) => drop(txns.complete(coordinator, done)),
                Err(e) => tracing::warn!(transactional_id = %done.transactional_id, error = %e,
                    "the decision to end a transaction was not made durable"),
            }
        });
    }

    /// Writes the markers of a decided transaction in the background, retrying until every
    /// partition has its marker (or this coordinator stops serving), then completes it.
    /// The receiver hears `true` once the transaction is complete.
    pub(crate) fn complete(
        self: &Arc<Self>,
        coordinator: Arc<TxnCoordinator>,
        done: Completion,
    ) -> tokio::sync::oneshot::Receiver<bool> {
        let txns = Arc::clone(self);
        let (completed, receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut remaining = done.partitions.clone();
            loop {
                if !txns.is_current(&coordinator) {
                    tracing::info!(transactional_id = %done.transactional_id,
                        "no longer coordinating this transaction; its next coordinator completes it");
                    return;
                }
                remaining = txns.write_markers(&coordinator, &done, remaining).await;
                if remaining.is_empty() {
                    break;
                }
                tokio::time::sleep(MARKER_RETRY).await;
            }
            let finished = coordinator.finish(&done, now_ms());
            let result = match finished {
                Ok(durable) => durable.await.map_err(|e| e.to_string()),
                Err(code) => Err(format!("{code:?}")),
            };
            match result {
                Ok(()) => {
                    tracing::debug!(transactional_id = %done.transactional_id,
                        commit = done.commit, "transaction complete");
                    let _ = completed.send(true);
                }
                Err(e) => tracing::warn!(transactional_id = %done.transactional_id, error = %e,
                    "recording a complete transaction failed; its next coordinator completes it"),
            }
        });
        receiver
    }

    /// One attempt at the markers of `done` for `partitions`: those still to write.
    async fn write_markers(
        &self,
        coordinator: &TxnCoordinator,
        done: &Completion,
        partitions: Vec<(String, i32)>,
    ) -> Vec<(String, i32)> {
        let me = self.manager.config().node_id();
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for (topic, index) in partitions {
            match self.leader_of(&topic, index) {
                Some(leader) => by_leader.entry(leader).or_default().push((topic, index)),
                None => {
                    // Deleted meanwhile: nothing to end there, as Kafka drops such markers.
                    tracing::info!(topic, partition = index, transactional_id = %done.transactional_id,
                        "no marker for a partition that no longer exists");
                }
            }
        }
        let marker = Marker {
            commit: done.commit,
            coordinator_epoch: coordinator.coordinator_epoch,
        };
        // Every partition at once: the local markers are appended one after the other and
        // their replication awaited together; each other leader gets one request, all at once.
        let mut local = Vec::new();
        let mut remote = Vec::new();
        let mut remaining = Vec::new();
        for (leader, partitions) in by_leader {
            if leader == me || self.single.is_some() {
                local.extend(partitions);
            } else if leader < 0 {
                remaining.extend(partitions);
            } else {
                remote.push(self.write_remote(leader, done, marker, partitions));
            }
        }
        let local_writes = local.into_iter().map(|(topic, index)| async move {
            let written = self
                .write_local(&topic, index, done.producer_id, done.producer_epoch, marker)
                .await;
            match written {
                Ok(()) => None,
                Err(code) if keep_trying(code) => Some((topic, index)),
                Err(code) => {
                    tracing::warn!(topic, partition = index, error = ?code,
                        transactional_id = %done.transactional_id, "a marker was refused; dropping it");
                    None
                }
            }
        });
        let (local, remote) = futures::future::join(
            futures::future::join_all(local_writes),
            futures::future::join_all(remote),
        )
        .await;
        remaining.extend(local.into_iter().flatten());
        remaining.extend(remote.into_iter().flatten());
        remaining
    }

    /// The broker leading `topic`-`index`: -1 while it has none, `None` when it does not exist.
    fn leader_of(&self, topic: &str, index: i32) -> Option<i32> {
        let me = self.manager.config().node_id();
        let Some(node) = self.manager.cluster() else {
            if topic == OFFSETS_TOPIC {
                return Some(me);
            }
            let found = self.manager.topic(topic)?;
            return found.partition(index).is_some().then_some(me);
        };
        let state = node.state().borrow().clone();
        let partition = state.topics.get(topic)?.partitions.get(index as usize)?;
        let live = state
            .brokers
            .get(&partition.leader)
            .is_some_and(|b| !b.fenced);
        Some(if live { partition.leader } else { -1 })
    }

    /// Writes a marker into a partition this broker leads, and waits for its in-sync replicas
    /// (markers are written with `acks=all`). Markers for `__consumer_offsets` go through the
    /// group coordinator, which makes the transaction's offsets visible or drops them.
    pub(crate) async fn write_local(
        &self,
        topic: &str,
        index: i32,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
    ) -> Result<(), ResponseError> {
        if topic == OFFSETS_TOPIC {
            // The marker is appended (and may fsync) on this thread: handed off the workers.
            let durable = crate::handler::off_the_workers(|| {
                self.groups.complete_transaction(
                    &self.manager,
                    index,
                    producer_id,
                    producer_epoch,
                    marker.commit,
                    marker.coordinator_epoch,
                )
            })?;
            return durable.await.map_err(|e| crate::groups::txn_error_code(&e));
        }
        let partition = self
            .manager
            .leader_partition(topic, index)
            .map_err(|e| e.code())?;
        let (info, epoch) = crate::handler::off_the_workers(|| {
            partition.append_marker(producer_id, producer_epoch, marker, now_ms())
        })
        .map_err(|e| e.code())?;
        match partition
            .wait_committed(info.last_offset, epoch, MARKER_TIMEOUT)
            .await
        {
            CommitWait::Committed => Ok(()),
            CommitWait::NotLeader => Err(ResponseError::NotLeaderOrFollower),
            CommitWait::TimedOut => Err(ResponseError::RequestTimedOut),
        }
    }

    /// Sends the markers for `partitions` to their leader `leader`: those still to write.
    async fn write_remote(
        &self,
        leader: i32,
        done: &Completion,
        marker: Marker,
        partitions: Vec<(String, i32)>,
    ) -> Vec<(String, i32)> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, index) in &partitions {
            topics.entry(topic).or_default().push(*index);
        }
        let request = WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(done.producer_id))
                .with_producer_epoch(done.producer_epoch)
                .with_transaction_result(marker.commit)
                .with_coordinator_epoch(marker.coordinator_epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(topic, indexes)| {
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(crate::handler::str_bytes(topic)))
                                .with_partition_indexes(indexes)
                        })
                        .collect(),
                ),
        ]);
        let response = match self.call(leader, &request).await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(leader, error = %e, "sending transaction markers");
                return partitions;
            }
        };
        let mut remaining = Vec::new();
        for result in response.markers {
            for topic in result.topics {
                for p in topic.partitions {
                    if p.error_code == 0 {
                        continue;
                    }
                    let code = ResponseError::try_from_code(p.error_code);
                    if code.is_some_and(|c| !keep_trying(c)) {
                        tracing::warn!(topic = %topic.name.as_str(), partition = p.partition_index,
                            error = ?code, "a marker was refused; dropping it");
                    } else {
                        remaining.push((topic.name.to_string(), p.partition_index));
                    }
                }
            }
        }
        remaining
    }

    async fn call(
        &self,
        broker: i32,
        request: &WriteTxnMarkersRequest,
    ) -> anyhow::Result<WriteTxnMarkersResponse> {
        let slot = Arc::clone(self.peers.lock().entry(broker).or_default());
        let mut peer = slot.lock().await;
        // A connection unused for half of `connections.max.idle.ms` may be closed by the peer
        // any moment (markers are sent rarely): a new one is opened instead of failing a send.
        let stale = |used: tokio::time::Instant| {
            self.manager
                .config()
                .connections_max_idle()
                .is_some_and(|idle| used.elapsed() >= idle / 2)
        };
        if peer.as_ref().is_some_and(|(_, used)| stale(*used)) {
            *peer = None;
        }
        if peer.is_none() {
            let node = self
                .manager
                .cluster()
                .ok_or_else(|| anyhow::anyhow!("not in a cluster"))?;
            let info = node.state().borrow().brokers.get(&broker).cloned();
            let info = info.ok_or_else(|| anyhow::anyhow!("broker {broker} is unknown"))?;
            let connect = Peer::connect(self.manager.config(), &info);
            let connected = tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .map_err(|_| anyhow::anyhow!("connecting to broker {broker} timed out"))??;
            *peer = Some((connected, tokio::time::Instant::now()));
        }
        let (connection, used) = peer.as_mut().expect("connected above");
        *used = tokio::time::Instant::now();
        let answer = connection
            .call(
                ApiKey::WriteTxnMarkers,
                1,
                request,
                MARKER_TIMEOUT + Duration::from_secs(5),
            )
            .await;
        if answer.is_err() {
            *peer = None;
        }
        answer
    }
}

/// Whether a marker refused with `code` should be sent again: not when the producer or this
/// coordinator was fenced there (a newer decision supersedes this one).
fn keep_trying(code: ResponseError) -> bool {
    !matches!(
        code,
        ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::TransactionCoordinatorFenced
            | ResponseError::UnknownTopicOrPartition
    )
}

fn txn_config(manager: &PartitionManager) -> TxnConfig {
    TxnConfig {
        max_timeout_ms: manager.config().transaction_max_timeout_ms(),
        id_expiration_ms: manager.config().transactional_id_expiration_ms(),
    }
}

/// Aborts timed-out transactions and forgets expired ids, every
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms`, until `shutdown`.
pub(crate) async fn tick(txns: Arc<Txns>, shutdown: CancellationToken) {
    let interval = txns
        .manager
        .config()
        .transaction_timeout_check_interval_ms();
    let mut ticks = tokio::time::interval(Duration::from_millis(interval.max(1) as u64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for coordinator in txns.all() {
            let ticked = Arc::clone(&coordinator);
            let aborts = tokio::task::spawn_blocking(move || ticked.tick(now_ms()))
                .await
                .unwrap_or_default();
            for done in aborts {
                drop(txns.complete(Arc::clone(&coordinator), done));
            }
        }
    }
}

/// Follows the `__transaction_state` partitions this broker leads until `shutdown`
/// ([`crate::led::follow`]): a coordinator is loaded for each one it starts leading, completing
/// the transactions its predecessor had decided, and dropped for each one it stops leading.
pub(crate) async fn run(txns: Arc<Txns>, shutdown: CancellationToken) {
    let config = txns.config;
    let load: crate::led::Load<TxnCoordinator, Vec<Completion>> =
        Arc::new(move |index, epoch, log| {
            TxnCoordinator::load(Box::new(log), index, epoch, config)
        });
    let completer = Arc::clone(&txns);
    let ready: crate::led::Ready<TxnCoordinator, Vec<Completion>> =
        Arc::new(move |coordinator, pending| {
            for done in pending {
                drop(completer.complete(Arc::clone(&coordinator), done));
            }
        });
    let (led, manager) = (Arc::clone(&txns.led), Arc::clone(&txns.manager));
    crate::led::follow(led, manager, shutdown, load, ready).await;
}
