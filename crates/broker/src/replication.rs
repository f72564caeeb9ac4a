//! Replication in a cluster (Kafka's ISR protocol), driven by the committed metadata:
//! - the metadata watcher applies every committed change to the local replicas
//!   ([`PartitionManager::apply_cluster_state`]) and keeps one fetcher per leader broker;
//! - a fetcher copies what its leader has: first, for a replica whose leader or epoch changed,
//!   OffsetForLeaderEpoch and a truncation of what the leader never had; then Fetch requests with
//!   this broker's id as `replica_id`, whose offsets tell the leader how far this replica is, in
//!   an incremental fetch session (KIP-227): after the first, a fetch names only the partitions
//!   whose offsets moved and its answer only the partitions with news;
//! - ISR changes proposed by the partitions this broker leads (a follower caught up, or one behind
//!   for `replica.lag.time.max.ms`) are committed through the controller (AlterPartition);
//! - a follower follows its leader's log start offset, which the fetch answers carry (moved by
//!   DeleteRecords, retention, or a snapshot of an offsets partition), and reports its own in its
//!   fetches (the leader answers DeleteRecords once every in-sync replica has moved).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use strata_cluster::{ClusterNode, ClusterState, Command, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::fetch_session::FetchSessionHandler;
use crate::handler::str_bytes;
use crate::manager::PartitionManager;
use crate::partition::Partition;

/// An ISR change a leader proposes.
#[derive(Debug, Clone)]
pub struct IsrChange {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The leader epoch it was proposed under.
    pub leader_epoch: i32,
    /// The proposed in-sync replicas.
    pub isr: Vec<i32>,
}

/// Fetch v11: replica id in the body, current leader epochs, log start offsets.
const FETCH_VERSION: i16 = 11;
/// OffsetForLeaderEpoch v3: the first with `replica_id`.
const EPOCH_VERSION: i16 = 3;
/// How long a follower's fetch waits at the leader for new data (`replica.fetch.wait.max.ms`).
const FETCH_WAIT_MS: i32 = 500;
/// Bytes per partition and per fetch (`replica.fetch.max.bytes`, `replica.fetch.response.max.bytes`).
const FETCH_PARTITION_BYTES: i32 = 1 << 20;
const FETCH_RESPONSE_BYTES: i32 = 16 << 20;
/// Largest answer a follower reads from a leader.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Pause after a failed round, so a down leader is not dialled in a tight loop.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Runs replication until `shutdown`.
pub(crate) async fn run(
    manager: Arc<PartitionManager>,
    node: Arc<ClusterNode>,
    isr_changes: mpsc::UnboundedReceiver<IsrChange>,
    shutdown: CancellationToken,
) {
    let submitter = tokio::spawn(submit_isr_changes(
        Arc::clone(&manager),
        Arc::clone(&node),
        isr_changes,
        shutdown.clone(),
    ));
    let shrinker = tokio::spawn(shrink_isrs(Arc::clone(&manager), shutdown.clone()));
    let rebalancer = tokio::spawn(rebalance_leaders(
        Arc::clone(&manager),
        Arc::clone(&node),
        shutdown.clone(),
    ));
    let mut fetchers: HashMap<i32, JoinHandle<()>> = HashMap::new();
    let mut state = node.state();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let current: Arc<ClusterState> = state.borrow_and_update().clone();
        // A replica whose leader or epoch changed marks itself for truncation, whichever
        // caller applied the change.
        manager.apply_cluster_state(&current, now_ms());
        let me = manager.config().node_id();
        let leaders: HashSet<i32> = manager
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.assignment().leader)
            .filter(|&l| l >= 0 && l != me)
            .collect();
        fetchers.retain(|_, task| !task.is_finished());
        for leader in leaders {
            fetchers.entry(leader).or_insert_with(|| {
                tokio::spawn(fetch_from(
                    Arc::clone(&manager),
                    Arc::clone(&node),
                    leader,
                    shutdown.clone(),
                ))
            });
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
    }
    for (_, task) in fetchers {
        task.abort();
    }
    submitter.abort();
    shrinker.abort();
    rebalancer.abort();
}

/// Commits the ISR changes leaders propose; a refused or failed one is forgotten by its
/// partition, which proposes again when it still applies.
async fn submit_isr_changes(
    manager: Arc<PartitionManager>,
    node: Arc<ClusterNode>,
    mut changes: mpsc::UnboundedReceiver<IsrChange>,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => match change { Some(c) => c, None => return },
            () = shutdown.cancelled() => return,
        };
        tracing::info!(topic = %change.topic, partition = change.partition,
            epoch = change.leader_epoch, isr = ?change.isr, "proposing an ISR change");
        let command = Command::AlterPartition {
            topic: change.topic.clone(),
            partition: change.partition,
            leader_epoch: change.leader_epoch,
            isr: change.isr.clone(),
        };
        let outcome = node.submit(command, Duration::from_secs(5)).await;
        let accepted = matches!(outcome, Ok(Response::Ok));
        if !accepted {
            tracing::info!(topic = %change.topic, partition = change.partition, outcome = ?outcome,
                "ISR change not committed");
        }
        if let Some(partition) = manager.partition(&change.topic, change.partition) {
            if accepted {
                let state = node.state().borrow().clone();
                manager.apply_cluster_state(&state, now_ms());
            } else {
                partition.clear_pending_isr();
            }
        }
    }
}

/// Proposes removing followers that have not caught up for `replica.lag.time.max.ms`.
async fn shrink_isrs(manager: Arc<PartitionManager>, shutdown: CancellationToken) {
    let lag_ms = manager.config().replica_lag_time_max_ms();
    let period = Duration::from_millis((lag_ms / 4).clamp(50, 5_000) as u64);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = now_ms();
        for topic in manager.topics() {
            for partition in &topic.partitions {
                if let Some((epoch, isr)) = partition.isr_shrink_proposal(now, lag_ms) {
                    manager.propose_isr(partition, epoch, isr);
                }
            }
        }
    }
}

/// On the active controller, with `auto.leader.rebalance.enable`: every
/// `leader.imbalance.check.interval.seconds`, leadership goes back to each partition's preferred
/// replica (the first) when it is alive and in sync, so a broker that returned leads again.
async fn rebalance_leaders(
    manager: Arc<PartitionManager>,
    node: Arc<ClusterNode>,
    shutdown: CancellationToken,
) {
    let config = manager.config();
    if !config.auto_leader_rebalance() {
        return;
    }
    let me = config.node_id();
    let mut tick = tokio::time::interval(config.leader_imbalance_check_interval());
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if node.controller_id() != Some(me) {
            continue;
        }
        let state = node.state().borrow().clone();
        for (topic, t) in &state.topics {
            for (index, p) in t.partitions.iter().enumerate() {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                if p.leader == preferred
                    || !p.isr.contains(&preferred)
                    || !state.is_active(preferred)
                {
                    continue;
                }
                let command = Command::ElectPreferredLeader {
                    topic: topic.clone(),
                    partition: index as i32,
                };
                match node.submit(command, Duration::from_secs(5)).await {
                    Ok(Response::Ok) => {
                        tracing::info!(
                            topic,
                            partition = index,
                            leader = preferred,
                            "preferred leader elected"
                        )
                    }
                    outcome => {
                        tracing::debug!(
                            topic,
                            partition = index,
                            ?outcome,
                            "preferred leader not elected"
                        )
                    }
                }
            }
        }
    }
}

/// The replicas this broker follows from `leader`.
fn followed_from(manager: &PartitionManager, leader: i32) -> Vec<Arc<Partition>> {
    manager
        .topics()
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.assignment().leader == leader && !p.is_leader())
        .cloned()
        .collect()
}

/// Copies what `leader` has into the replicas this broker follows from it, until none is left.
async fn fetch_from(
    manager: Arc<PartitionManager>,
    node: Arc<ClusterNode>,
    leader: i32,
    shutdown: CancellationToken,
) {
    let me = manager.config().node_id();
    let mut peer: Option<Peer> = None;
    // One fetch session (KIP-227) per connection: a full fetch, then only what changed.
    let mut session = FetchSessionHandler::default();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let partitions = followed_from(&manager, leader);
        if partitions.is_empty() {
            return;
        }
        if peer.is_none() {
            let broker = node.state().borrow().brokers.get(&leader).cloned();
            let Some(broker) = broker else {
                pause(&shutdown).await;
                continue;
            };
            let connect = Peer::connect(manager.config(), &broker);
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(p)) => peer = Some(p),
                Ok(Err(e)) => {
                    tracing::debug!(leader, error = %e, "connecting to the leader");
                    pause(&shutdown).await;
                    continue;
                }
                Err(_) => {
                    pause(&shutdown).await;
                    continue;
                }
            }
        }
        let client = peer.as_mut().expect("connected above");
        let round = tokio::select! {
            round = replicate_once(client, &mut session, me, &partitions) => round,
            () = shutdown.cancelled() => return,
        };
        match round {
            Ok(true) => {}
            Ok(false) => pause(&shutdown).await,
            Err(e) => {
                tracing::debug!(leader, error = %e, "replication round failed; reconnecting");
                peer = None;
                session.lost();
                pause(&shutdown).await;
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(RETRY_BACKOFF) => {}
        () = shutdown.cancelled() => {}
    }
}

/// One round: truncations first, then one fetch. `Ok(false)` when nothing moved and the leader
/// refused something (the metadata has not caught up yet): the caller pauses rather than ask
/// again at once.
async fn replicate_once(
    peer: &mut Peer,
    session: &mut FetchSessionHandler,
    me: i32,
    partitions: &[Arc<Partition>],
) -> anyhow::Result<bool> {
    let to_truncate: Vec<&Arc<Partition>> =
        partitions.iter().filter(|p| p.take_truncation()).collect();
    if !to_truncate.is_empty()
        && let Err(e) = truncate(peer, me, &to_truncate).await
    {
        for p in &to_truncate {
            p.mark_truncation();
        }
        return Err(e);
    }
    let fetched: Vec<&Arc<Partition>> = partitions
        .iter()
        .filter(|p| !p.needs_truncation())
        .collect();
    if fetched.is_empty() {
        return Ok(false);
    }
    let mut by_topic: BTreeMap<&str, Vec<&Arc<Partition>>> = BTreeMap::new();
    for p in &fetched {
        by_topic.entry(p.topic()).or_default().push(p);
    }
    let topics = by_topic
        .iter()
        .map(|(topic, parts)| {
            FetchTopic::default()
                .with_topic(TopicName(str_bytes(*topic)))
                .with_partitions(
                    parts
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p.index())
                                .with_current_leader_epoch(p.leader_epoch())
                                .with_fetch_offset(p.log_end_offset())
                                .with_log_start_offset(p.log_start_offset())
                                .with_partition_max_bytes(FETCH_PARTITION_BYTES)
                        })
                        .collect(),
                )
        })
        .collect();
    let mut request = FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_RESPONSE_BYTES);
    session.prepare(&mut request, topics);
    let response: FetchResponse = peer
        .call(
            ApiKey::Fetch,
            FETCH_VERSION,
            &request,
            Duration::from_secs(10),
        )
        .await?;
    if !session.answered(response.error_code, response.session_id) {
        if is_session_error(response.error_code) {
            // Evicted, or a resend: the next fetch is full and starts a new session.
            return Ok(true);
        }
        anyhow::bail!("fetch refused with error {}", response.error_code);
    }
    let mut progressed = false;
    let mut refused = false;
    let now = now_ms();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(partition) = fetched
                .iter()
                .find(|p| p.topic() == topic.topic.as_str() && p.index() == data.partition_index)
            else {
                continue;
            };
            match ResponseError::try_from_code(data.error_code) {
                None => {
                    let records = data.records.unwrap_or_default();
                    let appended = crate::handler::off_the_workers(|| {
                        partition.append_replicated(&records, data.high_watermark, now)
                    });
                    match appended {
                        Ok(_) => {
                            progressed |= !records.is_empty();
                            crate::groups::follow_log_start(partition, data.log_start_offset);
                            follow_log_start(partition, data.log_start_offset);
                        }
                        Err(e) => {
                            tracing::warn!(topic = partition.topic(), partition = partition.index(),
                                error = %e, "appending replicated batches failed; truncating anew");
                            partition.mark_truncation();
                            refused = true;
                        }
                    }
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    progressed = true;
                    if partition.log_end_offset() < data.log_start_offset {
                        // The leader's log starts later (its older segments are in the lake):
                        // this replica restarts there.
                        partition.restart_at(data.log_start_offset, now)?;
                    } else {
                        partition.mark_truncation();
                    }
                }
                Some(code) => {
                    refused = true;
                    tracing::debug!(
                        topic = partition.topic(),
                        partition = partition.index(),
                        ?code,
                        "the leader refused a replica fetch"
                    );
                }
            }
        }
    }
    Ok(progressed || !refused)
}

/// A follower follows its leader's log start, up to its own high watermark: what lies below it
/// is gone on the leader. Not a tiered partition's: its leader's local log starts later than the
/// partition (older offsets are in the lake), so its followers keep their own local retention
/// and learn the log start DeleteRecords set from the lake's manifest (see `offload`).
fn follow_log_start(partition: &Partition, leader_log_start_offset: i64) {
    if leader_log_start_offset <= partition.log_start_offset()
        || partition.is_tiered().unwrap_or(true)
    {
        return;
    }
    let moved = crate::handler::off_the_workers(|| {
        partition.delete_records_before(leader_log_start_offset)
    });
    if let Err(e) = moved {
        tracing::warn!(topic = partition.topic(), partition = partition.index(), error = %e,
            "following the leader's log start");
    }
}

/// Errors that end a fetch session but not the connection.
fn is_session_error(error_code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(error_code),
        Some(
            ResponseError::FetchSessionIdNotFound
                | ResponseError::InvalidFetchSessionEpoch
                | ResponseError::FetchSessionTopicIdError
        )
    )
}

/// Asks the leader where each replica's last epoch ended and truncates what the leader lacks.
async fn truncate(peer: &mut Peer, me: i32, partitions: &[&Arc<Partition>]) -> anyhow::Result<()> {
    let mut asked = Vec::new();
    for p in partitions {
        // An empty log has nothing to truncate.
        if let Some(epoch) = p.latest_epoch()? {
            asked.push((*p, epoch));
        }
    }
    if asked.is_empty() {
        return Ok(());
    }
    let mut by_topic: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for (p, epoch) in &asked {
        by_topic.entry(p.topic()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(p.index())
                .with_current_leader_epoch(p.leader_epoch())
                .with_leader_epoch(*epoch),
        );
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(me))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(TopicName(str_bytes(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response: OffsetForLeaderEpochResponse = peer
        .call(
            ApiKey::OffsetForLeaderEpoch,
            EPOCH_VERSION,
            &request,
            Duration::from_secs(10),
        )
        .await?;
    let now = now_ms();
    let mut answered = vec![false; asked.len()];
    for topic in response.topics {
        for answer in topic.partitions {
            let Some(at) = asked.iter().position(|(p, _)| {
                p.topic() == topic.topic.as_str() && p.index() == answer.partition
            }) else {
                continue;
            };
            answered[at] = true;
            let (partition, asked_epoch) = &asked[at];
            if answer.error_code != 0 {
                // Only this partition waits (its metadata may lag); the others go on.
                tracing::debug!(
                    topic = partition.topic(),
                    partition = partition.index(),
                    code = answer.error_code,
                    "OffsetForLeaderEpoch refused"
                );
                partition.mark_truncation();
                continue;
            }
            let end = partition.log_end_offset();
            let target = if answer.leader_epoch < 0 {
                // The leader knows no epoch this old: keep only what was committed.
                partition.high_watermark()
            } else if answer.leader_epoch < *asked_epoch {
                // The leader never wrote under our last epoch: cut where both logs agree.
                let ours = partition
                    .end_offset_for_epoch(answer.leader_epoch)?
                    .map_or(end, |(_, o)| o);
                answer.end_offset.min(ours)
            } else {
                answer.end_offset
            };
            if target < end {
                tracing::info!(
                    topic = partition.topic(),
                    partition = partition.index(),
                    from = end,
                    to = target,
                    "truncating what the new leader does not have"
                );
                partition.truncate_to(target, now)?;
            }
        }
    }
    // A partition the answer left out asks again next round.
    for ((partition, _), answered) in asked.iter().zip(answered) {
        if !answered {
            partition.mark_truncation();
        }
    }
    Ok(())
}

/// A connection to another broker's Kafka listener (its `inter.broker.listener.name` one, TLS
/// when that listener is).
pub(crate) struct Peer {
    stream: crate::security::client::BoxedStream,
    correlation_id: i32,
    /// On a SASL listener: renewed on the connection before it ends (KIP-368).
    sasl: Option<crate::security::sasl::ClientSession>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub(crate) async fn connect(
        config: &crate::config::BrokerConfig,
        broker: &strata_cluster::BrokerInfo,
    ) -> std::io::Result<Self> {
        let (stream, sasl) = crate::security::client::connect_broker(config, broker).await?;
        Ok(Self {
            stream,
            correlation_id: 0,
            sasl,
        })
    }

    /// Sends one request and reads its answer.
    pub(crate) async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        if let Some(sasl) = &mut self.sasl {
            let renew = sasl.renew_if_due(&mut self.stream, std::time::Instant::now());
            tokio::time::timeout(timeout, renew)
                .await
                .map_err(|_| anyhow::anyhow!("SASL re-authentication timed out"))??;
        }
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(str_bytes("strata-replica")));
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header.encode(&mut frame, key.request_header_version(version))?;
        request.encode(&mut frame, version)?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&frame).await?;
            let length = self.stream.read_u32().await? as usize;
            if length > RESPONSE_BYTES_MAX {
                anyhow::bail!("an answer of {length} bytes is larger than {RESPONSE_BYTES_MAX}");
            }
            let mut body = vec![0u8; length];
            self.stream.read_exact(&mut body).await?;
            Ok(bytes::Bytes::from(body))
        };
        let mut body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{key:?} timed out"))??;
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            anyhow::bail!(
                "answer to request {} while waiting for {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = Resp::decode(&mut body, version)?;
        if body.has_remaining() {
            tracing::debug!(?key, left = body.remaining(), "bytes left after an answer");
        }
        Ok(response)
    }
}
