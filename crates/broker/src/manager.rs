//! The partition manager: topics and their partitions, created, altered and deleted through the
//! metadata store, plus producer id allocation and periodic log maintenance.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use uuid::Uuid;

use crate::config::{self, BrokerConfig, TopicConfig};
use crate::error::{Error, Result};
use crate::metadata::{ClusterMetadata, MetadataStore, TopicRecord};
use crate::partition::Partition;

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_MAX_BYTES: usize = 249;
/// Most partitions one topic may have: each is a folder, and creating it writes a few files
/// (no file stays open: see `strata_log::file_cache`).
pub const PARTITIONS_MAX: i32 = 10_000;
/// Producer ids reserved in the metadata store at a time, so that not every InitProducerId writes.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// A topic and its partitions. Replaced as a whole when partitions or configs change.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// Stable topic id.
    pub topic_id: Uuid,
    /// The partitions with a replica on this broker, by index (a single broker: all of them).
    pub partitions: Vec<Arc<Partition>>,
    /// The topic's partition count across the cluster.
    pub partition_count: i32,
    /// Config overrides as set by clients.
    pub overrides: BTreeMap<String, String>,
    /// Effective config.
    pub config: TopicConfig,
}

impl Topic {
    /// The replica of partition `index` on this broker, if it has one.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let at = usize::try_from(index).ok()?;
        match self.partitions.get(at) {
            Some(p) if p.index() == index => Some(Arc::clone(p)),
            _ => self
                .partitions
                .binary_search_by_key(&index, |p| p.index())
                .ok()
                .map(|i| Arc::clone(&self.partitions[i])),
        }
    }
}

/// What the lake holds, read at start-up for recovery.
#[derive(Debug, Clone, Default)]
pub struct LakeState {
    /// Topics recorded in the lake.
    pub topics: Vec<strata_lake::TopicMetadata>,
    /// `(topic, partition)` → offset after the last one in the lake (never below the log start
    /// DeleteRecords set, see [`strata_lake::Manifest::resume_offset`]).
    pub next_offsets: HashMap<(String, i32), i64>,
}

/// Checks a topic name as Kafka does.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "'.' and '..' are not allowed"
    } else if name.len() > TOPIC_NAME_MAX_BYTES {
        "longer than 249 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        "only ASCII letters, digits, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTopic {
        name: name.chars().take(300).collect(),
        reason,
    })
}

#[derive(Debug)]
struct ProducerIds {
    next: i64,
    block_end: i64,
}

/// The cluster node a clustered broker's metadata comes from.
struct Cluster(Arc<strata_cluster::ClusterNode>);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.0.node_id())
            .field("controller", &self.0.controller_id())
            .finish()
    }
}

/// Owns every partition of the broker.
#[derive(Debug)]
pub struct PartitionManager {
    config: BrokerConfig,
    store: Box<dyn MetadataStore>,
    /// The stored metadata; its lock also serialises admin operations.
    metadata: Mutex<ClusterMetadata>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    producer_ids: Mutex<ProducerIds>,
    /// The cluster this broker belongs to; `None` for a single broker with local metadata.
    cluster: Option<Cluster>,
    /// ISR changes proposed by the partitions this broker leads, for the controller.
    isr_changes: Option<tokio::sync::mpsc::UnboundedSender<crate::replication::IsrChange>>,
    /// Serialises [`PartitionManager::apply_cluster_state`] (two callers must never open one
    /// partition twice) and holds the Raft index applied last, so an older state read by a slow
    /// caller never rolls a replica's epoch back.
    applied: Mutex<u64>,
    /// Counts the applied metadata changes that moved a replica's role or epoch, or removed a
    /// topic (the group coordinators follow the offsets partitions this broker leads).
    roles: tokio::sync::watch::Sender<u64>,
    /// Committed ISR changes of the partitions this broker leads, as applied here (metrics):
    /// shrinks and expands.
    isr_shrinks: std::sync::atomic::AtomicU64,
    isr_expands: std::sync::atomic::AtomicU64,
}

impl PartitionManager {
    /// Loads the metadata and opens every partition, recovering logs after a crash.
    pub fn open(config: BrokerConfig, store: Box<dyn MetadataStore>, now_ms: i64) -> Result<Self> {
        Self::open_with_lake(config, store, &LakeState::default(), now_ms)
    }

    /// As [`PartitionManager::open`], first restoring from the lake what the data folder lost:
    /// topics the lake knows and the metadata does not, and the start offset of partition folders
    /// that are missing (new records continue after the lake's last offset).
    pub fn open_with_lake(
        config: BrokerConfig,
        store: Box<dyn MetadataStore>,
        lake: &LakeState,
        now_ms: i64,
    ) -> Result<Self> {
        let mut metadata = store.load()?;
        let mut restored = false;
        for t in &lake.topics {
            if metadata.topics.contains_key(&t.topic) || validate_topic_name(&t.topic).is_err() {
                continue;
            }
            let Ok(topic_id) = t.topic_id.parse() else {
                continue;
            };
            tracing::info!(topic = %t.topic, partitions = t.partitions, "restoring topic from the lake");
            metadata.topics.insert(
                t.topic.clone(),
                TopicRecord {
                    topic_id,
                    partitions: t.partitions,
                    configs: t.configs.clone(),
                },
            );
            restored = true;
        }
        if restored {
            store.store(&metadata)?;
        }
        for ((topic, partition), next_offset) in &lake.next_offsets {
            let dir = partition_dir(&config, topic, *partition);
            if metadata.topics.contains_key(topic) && !dir.exists() && *next_offset > 0 {
                tracing::info!(
                    topic,
                    partition,
                    next_offset,
                    "partition folder missing: continuing after the lake"
                );
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    what: dir.display().to_string(),
                    source,
                })?;
                strata_log::log::write_atomic(
                    &dir.join("log-start-offset"),
                    next_offset.to_string().as_bytes(),
                )?;
            }
        }
        let mut topics = HashMap::new();
        for (name, record) in &metadata.topics {
            let (topic, folders) = open_topic(&config, name, record, 0, now_ms)?;
            folders.keep();
            topics.insert(name.clone(), Arc::new(topic));
        }
        crate::open_files::warn_if_partitions_exceed(
            topics.values().map(|t| t.partitions.len()).sum(),
        );
        let producer_ids = ProducerIds {
            next: metadata.producer_id_block_end,
            block_end: metadata.producer_id_block_end,
        };
        Ok(Self {
            config,
            store,
            metadata: Mutex::new(metadata),
            topics: RwLock::new(topics),
            producer_ids: Mutex::new(producer_ids),
            cluster: None,
            isr_changes: None,
            applied: Mutex::new(0),
            roles: tokio::sync::watch::Sender::new(0),
            isr_shrinks: Default::default(),
            isr_expands: Default::default(),
        })
    }

    /// A manager whose metadata is the cluster's: topics and partition roles follow the
    /// committed metadata ([`PartitionManager::apply_cluster_state`]), admin operations are
    /// committed through the controller. The local metadata file is not used.
    pub fn open_cluster(
        config: BrokerConfig,
        node: Arc<strata_cluster::ClusterNode>,
        isr_changes: tokio::sync::mpsc::UnboundedSender<crate::replication::IsrChange>,
        now_ms: i64,
    ) -> Result<Self> {
        let metadata = ClusterMetadata {
            cluster_id: String::new(),
            producer_id_block_end: 0,
            topics: BTreeMap::new(),
        };
        let manager = Self {
            store: Box::new(crate::metadata::LocalMetadataStore::new(&config.data_dir)),
            config,
            metadata: Mutex::new(metadata),
            topics: RwLock::new(HashMap::new()),
            producer_ids: Mutex::new(ProducerIds {
                next: 0,
                block_end: 0,
            }),
            cluster: Some(Cluster(Arc::clone(&node))),
            isr_changes: Some(isr_changes),
            applied: Mutex::new(0),
            roles: tokio::sync::watch::Sender::new(0),
            isr_shrinks: Default::default(),
            isr_expands: Default::default(),
        };
        let state = node.state().borrow().clone();
        manager.apply_cluster_state(&state, now_ms);
        Ok(manager)
    }

    /// The cluster node, when this broker is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<strata_cluster::ClusterNode>> {
        self.cluster.as_ref().map(|c| &c.0)
    }

    /// A receiver that changes whenever applied metadata moved a replica's role or epoch here.
    pub fn watch_roles(&self) -> tokio::sync::watch::Receiver<u64> {
        self.roles.subscribe()
    }

    /// Committed ISR changes of the partitions this broker leads, as applied here:
    /// `(shrinks, expands)`. A leader's own proposals count, and so do the controller's (a fenced
    /// broker leaves every ISR); a change of leader or epoch does not.
    pub fn isr_changes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.isr_shrinks.load(Relaxed),
            self.isr_expands.load(Relaxed),
        )
    }

    fn count_isr_change(
        &self,
        before: &crate::partition::Assignment,
        after: &crate::partition::Assignment,
    ) {
        let me = self.config.node_id();
        let same_leadership =
            before.leader == me && after.leader == me && before.leader_epoch == after.leader_epoch;
        if !same_leadership {
            return;
        }
        let counter = match after.isr.len().cmp(&before.isr.len()) {
            std::cmp::Ordering::Less => &self.isr_shrinks,
            std::cmp::Ordering::Greater => &self.isr_expands,
            std::cmp::Ordering::Equal => return,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hands an ISR change a leader proposed to the controller.
    pub fn propose_isr(&self, partition: &Partition, leader_epoch: i32, isr: Vec<i32>) {
        if let Some(tx) = &self.isr_changes {
            let _ = tx.send(crate::replication::IsrChange {
                topic: partition.topic().to_string(),
                partition: partition.index(),
                leader_epoch,
                isr,
            });
        }
    }

    /// Makes the local replicas follow the committed cluster metadata: opens the partitions
    /// assigned to this broker, sets each one's leader, epoch and ISR, applies topic configs, and
    /// closes and removes what was deleted. Returns the partitions whose leader or epoch changed.
    pub fn apply_cluster_state(
        &self,
        state: &strata_cluster::ClusterState,
        now_ms: i64,
    ) -> Vec<Arc<Partition>> {
        let mut applied = self.applied.lock();
        if state.applied_index < *applied {
            return Vec::new();
        }
        *applied = state.applied_index;
        let me = self.config.node_id();
        let mut changed = Vec::new();
        {
            let mut metadata = self.metadata.lock();
            metadata.cluster_id = state.cluster_id.clone();
        }
        let mut updated = HashMap::new();
        // Replicas hosted here that a reassignment moved to other brokers, with their last role.
        let mut moved_away = Vec::new();
        for (name, wanted) in &state.topics {
            let current = self.topic(name).filter(|t| t.topic_id == wanted.topic_id);
            let config = self.config.topic_config(&wanted.configs);
            let configs_changed = current
                .as_ref()
                .is_some_and(|t| t.overrides != wanted.configs);
            let mut partitions = Vec::new();
            for (index, p) in wanted.partitions.iter().enumerate() {
                let index = index as i32;
                let assignment = crate::partition::Assignment {
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                };
                if !p.replicas.contains(&me) {
                    if let Some(gone) = current.as_ref().and_then(|t| t.partition(index)) {
                        moved_away.push((gone, assignment));
                    }
                    continue;
                }
                if let Some(existing) = current.as_ref().and_then(|t| t.partition(index)) {
                    if configs_changed && let Err(e) = existing.set_config(config.log_config()) {
                        tracing::warn!(topic = name, partition = index, error = %e, "applying topic configs");
                    }
                    self.count_isr_change(&existing.assignment(), &assignment);
                    if existing.set_assignment(assignment, now_ms) {
                        changed.push(Arc::clone(&existing));
                    }
                    partitions.push(existing);
                    continue;
                }
                let dir = partition_dir(&self.config, name, index);
                match Partition::open_as(
                    name,
                    index,
                    &dir,
                    config.log_config(),
                    assignment,
                    me,
                    now_ms,
                ) {
                    Ok(partition) => {
                        let partition = Arc::new(partition);
                        changed.push(Arc::clone(&partition));
                        partitions.push(partition);
                    }
                    Err(e) => {
                        tracing::error!(topic = name, partition = index, error = %e, "opening a replica failed")
                    }
                }
            }
            updated.insert(
                name.clone(),
                Arc::new(Topic {
                    name: name.clone(),
                    topic_id: wanted.topic_id,
                    partitions,
                    partition_count: wanted.partitions.len() as i32,
                    overrides: wanted.configs.clone(),
                    config,
                }),
            );
        }
        let removed: Vec<Arc<Topic>> = {
            let mut topics = self.topics.write();
            let removed = topics
                .iter()
                .filter(|(name, t)| {
                    updated
                        .get(*name)
                        .is_none_or(|new| new.topic_id != t.topic_id)
                })
                .map(|(_, t)| Arc::clone(t))
                .collect();
            *topics = updated;
            removed
        };
        let removed_any = !removed.is_empty();
        for topic in removed {
            for partition in &topic.partitions {
                if let Err(e) = partition.close(now_ms) {
                    tracing::warn!(topic = %topic.name, partition = partition.index(), error = %e, "closing a deleted partition");
                }
                let dir = partition_dir(&self.config, &topic.name, partition.index());
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted partition's folder");
                }
            }
            tracing::info!(topic = %topic.name, "deleted topic");
        }
        let moved_any = !moved_away.is_empty();
        for (partition, assignment) in moved_away {
            self.remove_moved_replica(&partition, assignment, now_ms);
        }
        if !changed.is_empty() || removed_any || moved_any {
            self.roles.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Closes and deletes the local copy of a replica a reassignment moved to other brokers
    /// (KIP-455). It takes its last role first, so that requests waiting on it as leader (an
    /// `acks=all` produce) answer NOT_LEADER_OR_FOLLOWER and clients go to the new leader.
    fn remove_moved_replica(
        &self,
        partition: &Partition,
        assignment: crate::partition::Assignment,
        now_ms: i64,
    ) {
        let (topic, index) = (partition.topic(), partition.index());
        partition.set_assignment(assignment, now_ms);
        if let Err(e) = partition.close(now_ms) {
            tracing::warn!(topic, partition = index, error = %e, "closing a replica moved away");
        }
        let dir = partition_dir(&self.config, topic, index);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a moved replica's folder");
        }
        tracing::info!(
            topic,
            partition = index,
            "replica reassigned to other brokers: local copy removed"
        );
    }

    /// The replica of a partition that this broker leads: NOT_LEADER_OR_FOLLOWER when another
    /// broker leads it, UNKNOWN_TOPIC_OR_PARTITION when it does not exist.
    pub fn leader_partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>> {
        let Some(found) = self.topic(topic) else {
            return Err(Error::UnknownTopic(format!("{topic}-{index}")));
        };
        if index < 0 || index >= found.partition_count {
            return Err(Error::UnknownTopic(format!("{topic}-{index}")));
        }
        match found.partition(index) {
            Some(p) if p.is_leader() => Ok(p),
            _ => Err(Error::NotLeader(format!(
                "broker {} does not lead {topic}-{index}",
                self.config.node_id()
            ))),
        }
    }

    /// Commits a metadata command through the controller and applies the result here.
    fn submit(&self, command: strata_cluster::Command) -> Result<strata_cluster::Response> {
        let node = self.cluster().expect("cluster mode");
        let handle = tokio::runtime::Handle::current();
        let response = crate::handler::off_the_workers(|| {
            handle.block_on(node.submit(command, CLUSTER_SUBMIT_TIMEOUT))
        })
        .map_err(|e| Error::Cluster(e.to_string()))?;
        let state = node.state().borrow().clone();
        self.apply_cluster_state(&state, crate::clock::now_ms());
        match response {
            strata_cluster::Response::Rejected { kind, message } => Err(rejected(kind, message)),
            other => Ok(other),
        }
    }

    /// As the private `submit`, without blocking a worker thread: for admin requests that run
    /// apart (ElectLeaders, AlterPartitionReassignments). A refused command is an error carrying
    /// its Kafka code.
    pub async fn commit(
        &self,
        command: strata_cluster::Command,
        timeout: std::time::Duration,
    ) -> Result<strata_cluster::Response> {
        let Some(node) = self.cluster() else {
            return Err(Error::Cluster("not part of a cluster".to_string()));
        };
        let response = node
            .submit(command, timeout)
            .await
            .map_err(|e| Error::Cluster(e.to_string()))?;
        let state = node.state().borrow().clone();
        crate::handler::off_the_workers(|| {
            self.apply_cluster_state(&state, crate::clock::now_ms())
        });
        match response {
            strata_cluster::Response::Rejected { kind, message } => Err(rejected(kind, message)),
            other => Ok(other),
        }
    }

    /// Creates a topic with the replicas CreateTopics named explicitly: `assignments[i]` holds
    /// partition `i`'s brokers, preferred leader first. A single broker accepts only itself.
    pub fn create_topic_assigned(
        &self,
        name: &str,
        assignments: Vec<Vec<i32>>,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<Arc<Topic>> {
        use kafka_protocol::ResponseError as E;
        let invalid = |message: String| Error::InvalidRequest {
            code: E::InvalidReplicaAssignment,
            message,
        };
        let Some(node) = self.cluster() else {
            let me = self.config.node_id();
            if assignments.iter().any(|a| a != &[me]) {
                return Err(invalid(format!(
                    "replica assignments may only name broker {me}, once"
                )));
            }
            return self.create_topic(
                name,
                assignments.len() as i32,
                -1,
                overrides,
                validate_only,
                now_ms,
            );
        };
        validate_topic_name(name)?;
        check_partition_count(assignments.len() as i32)?;
        config::validate_topic_overrides(&overrides)?;
        let state = node.state().borrow().clone();
        let rf = assignments.first().map_or(0, Vec::len);
        for (i, replicas) in assignments.iter().enumerate() {
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if replicas.is_empty() || distinct.len() != replicas.len() || replicas.len() != rf {
                return Err(invalid(format!(
                    "partition {i}: {replicas:?} must name {rf} distinct brokers, as every partition"
                )));
            }
            if let Some(unknown) = replicas.iter().find(|b| !state.brokers.contains_key(b)) {
                return Err(invalid(format!(
                    "partition {i}: broker {unknown} is not registered"
                )));
            }
        }
        if state.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        self.cluster_submit_topic(name, assignments, overrides, validate_only)
    }

    fn cluster_create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        let node = self.cluster().expect("cluster mode");
        let replication_factor = if replication_factor == -1 {
            self.config.default_replication_factor()
        } else {
            replication_factor
        };
        let state = node.state().borrow().clone();
        if state.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        let assignments =
            strata_cluster::place(&state.brokers, name, 0, partitions, replication_factor)
                .map_err(|e| Error::InvalidRequest {
                    code: kafka_protocol::ResponseError::InvalidReplicationFactor,
                    message: e.to_string(),
                })?;
        self.cluster_submit_topic(name, assignments, overrides, validate_only)
    }

    fn cluster_submit_topic(
        &self,
        name: &str,
        assignments: Vec<Vec<i32>>,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        let partitions = assignments.len() as i32;
        let topic_id = Uuid::new_v4();
        if validate_only {
            let record = TopicRecord {
                topic_id,
                partitions,
                configs: overrides,
            };
            return Ok(Arc::new(topic_without_partitions(
                &self.config,
                name,
                &record,
            )));
        }
        self.submit(strata_cluster::Command::CreateTopic {
            name: name.to_string(),
            topic_id,
            configs: overrides,
            assignments,
        })?;
        self.topic(name)
            .ok_or_else(|| Error::Cluster(format!("topic {name} was created but is not applied")))
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> String {
        self.metadata.lock().cluster_id.clone()
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// A topic by id.
    pub fn topic_by_id(&self, topic_id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .values()
            .find(|t| t.topic_id == topic_id)
            .cloned()
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.topics.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether the topic has partition `index` (hosted here or not).
    pub fn partition_exists(&self, topic: &str, index: i32) -> bool {
        self.topic(topic)
            .is_some_and(|t| (0..t.partition_count).contains(&index))
    }

    /// A partition by topic and index.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.topic(topic)?.partition(index)
    }

    /// The topic, created with the broker defaults if it does not exist and
    /// `auto.create.topics.enable` is on.
    pub fn topic_or_auto_create(&self, name: &str, now_ms: i64) -> Result<Option<Arc<Topic>>> {
        if let Some(topic) = self.topic(name) {
            return Ok(Some(topic));
        }
        if !self.config.auto_create_topics() {
            return Ok(None);
        }
        validate_topic_name(name)?;
        match self.create_topic(name, -1, -1, BTreeMap::new(), false, now_ms) {
            Ok(topic) => {
                tracing::info!(
                    topic = name,
                    partitions = topic.partitions.len(),
                    "auto-created topic"
                );
                Ok(Some(topic))
            }
            Err(Error::TopicExists(_)) => Ok(self.topic(name)),
            Err(e) => Err(e),
        }
    }

    /// Creates a topic. `partitions` -1 means `num.partitions`; `replication_factor` must be -1 or 1.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        let partitions = if partitions == -1 {
            self.config.num_partitions()
        } else {
            partitions
        };
        check_partition_count(partitions)?;
        if self.cluster.is_none() && replication_factor != -1 && replication_factor != 1 {
            return Err(Error::InvalidRequest {
                code: kafka_protocol::ResponseError::InvalidReplicationFactor,
                message: format!(
                    "replication factor {replication_factor} is larger than the 1 available broker"
                ),
            });
        }
        config::validate_topic_overrides(&overrides)?;
        if self.cluster.is_some() {
            return self.cluster_create_topic(
                name,
                partitions,
                replication_factor,
                overrides,
                validate_only,
            );
        }
        let mut metadata = self.metadata.lock();
        if metadata.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        let record = TopicRecord {
            topic_id: Uuid::new_v4(),
            partitions,
            configs: overrides,
        };
        if validate_only {
            return Ok(Arc::new(topic_without_partitions(
                &self.config,
                name,
                &record,
            )));
        }
        // All or nothing: until the metadata records the topic, a failure (a partition that
        // cannot be opened, the store) drops the new partitions and removes their folders.
        let (topic, folders) = open_topic(&self.config, name, &record, 0, now_ms)?;
        let mut updated = metadata.clone();
        updated.topics.insert(name.to_string(), record);
        self.store.store(&updated)?;
        folders.keep();
        *metadata = updated;
        let topic = Arc::new(topic);
        self.topics
            .write()
            .insert(name.to_string(), Arc::clone(&topic));
        self.warn_if_partitions_exceed();
        Ok(topic)
    }

    fn warn_if_partitions_exceed(&self) {
        let partitions = self.topics().iter().map(|t| t.partitions.len()).sum();
        crate::open_files::warn_if_partitions_exceed(partitions);
    }

    /// Deletes a topic: forgotten by the metadata store first, then its partitions closed and their
    /// folders removed. Returns its id.
    pub fn delete_topic(&self, name: &str, now_ms: i64) -> Result<Uuid> {
        if self.cluster.is_some() {
            let topic = self
                .topic(name)
                .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
            self.submit(strata_cluster::Command::DeleteTopic {
                name: name.to_string(),
            })?;
            return Ok(topic.topic_id);
        }
        let mut metadata = self.metadata.lock();
        let Some(record) = metadata.topics.get(name).cloned() else {
            return Err(Error::UnknownTopic(name.to_string()));
        };
        let mut updated = metadata.clone();
        updated.topics.remove(name);
        self.store.store(&updated)?;
        *metadata = updated;
        let topic = self.topics.write().remove(name);
        for partition in topic.iter().flat_map(|t| t.partitions.iter()) {
            if let Err(e) = partition.close(now_ms) {
                tracing::warn!(topic = name, partition = partition.index(), error = %e, "closing a deleted partition");
            }
            let dir = partition_dir(&self.config, name, partition.index());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted partition's folder");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(record.topic_id)
    }

    /// Raises a topic's partition count to `count`.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<()> {
        if let Some(node) = self.cluster() {
            let state = node.state().borrow().clone();
            let Some(topic) = state.topics.get(name) else {
                return Err(Error::UnknownTopic(name.to_string()));
            };
            let current = topic.partitions.len() as i32;
            if count <= current {
                return Err(Error::InvalidRequest {
                    code: kafka_protocol::ResponseError::InvalidPartitions,
                    message: format!(
                        "topic {name} has {current} partitions; the new count {count} must be larger"
                    ),
                });
            }
            check_partition_count(count)?;
            let rf = topic
                .partitions
                .first()
                .map_or(1, |p| p.replicas.len() as i16);
            let assignments =
                strata_cluster::place(&state.brokers, name, current, count - current, rf).map_err(
                    |e| Error::InvalidRequest {
                        code: kafka_protocol::ResponseError::InvalidReplicationFactor,
                        message: e.to_string(),
                    },
                )?;
            if validate_only {
                return Ok(());
            }
            self.submit(strata_cluster::Command::CreatePartitions {
                name: name.to_string(),
                assignments,
            })?;
            return Ok(());
        }
        let mut metadata = self.metadata.lock();
        let Some(record) = metadata.topics.get(name).cloned() else {
            return Err(Error::UnknownTopic(name.to_string()));
        };
        if count <= record.partitions {
            return Err(Error::InvalidRequest {
                code: kafka_protocol::ResponseError::InvalidPartitions,
                message: format!(
                    "topic {name} has {} partitions; the new count {count} must be larger",
                    record.partitions
                ),
            });
        }
        check_partition_count(count)?;
        if validate_only {
            return Ok(());
        }
        let current = self
            .topic(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        let new_record = TopicRecord {
            partitions: count,
            ..record
        };
        // All or nothing, as in `create_topic`.
        let (added, folders) =
            open_topic(&self.config, name, &new_record, record.partitions, now_ms)?;
        let mut updated = metadata.clone();
        updated.topics.insert(name.to_string(), new_record);
        self.store.store(&updated)?;
        folders.keep();
        *metadata = updated;
        let partitions = current
            .partitions
            .iter()
            .cloned()
            .chain(added.partitions)
            .collect();
        self.replace_topic(&current, partitions, current.overrides.clone());
        self.warn_if_partitions_exceed();
        Ok(())
    }

    /// Replaces a topic's config overrides (AlterConfigs semantics; the incremental form computes
    /// the full set first) and applies them to its partitions.
    pub fn set_topic_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<()> {
        config::validate_topic_overrides(&overrides)?;
        if self.cluster.is_some() {
            if self.topic(name).is_none() {
                return Err(Error::UnknownTopic(name.to_string()));
            }
            if validate_only {
                return Ok(());
            }
            self.submit(strata_cluster::Command::AlterTopicConfigs {
                name: name.to_string(),
                configs: overrides,
            })?;
            return Ok(());
        }
        let mut metadata = self.metadata.lock();
        let Some(record) = metadata.topics.get(name).cloned() else {
            return Err(Error::UnknownTopic(name.to_string()));
        };
        if validate_only {
            return Ok(());
        }
        let current = self
            .topic(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        let mut updated = metadata.clone();
        updated.topics.insert(
            name.to_string(),
            TopicRecord {
                configs: overrides.clone(),
                ..record
            },
        );
        self.store.store(&updated)?;
        *metadata = updated;
        let topic = self.replace_topic(&current, current.partitions.clone(), overrides);
        for partition in &topic.partitions {
            partition.set_config(topic.config.log_config())?;
        }
        Ok(())
    }

    fn replace_topic(
        &self,
        current: &Topic,
        partitions: Vec<Arc<Partition>>,
        overrides: BTreeMap<String, String>,
    ) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            name: current.name.clone(),
            topic_id: current.topic_id,
            partition_count: partitions.len() as i32,
            partitions,
            config: self.config.topic_config(&overrides),
            overrides,
        });
        self.topics
            .write()
            .insert(current.name.clone(), Arc::clone(&topic));
        topic
    }

    /// A new producer id, never handed out before (ids are reserved in blocks in the store).
    pub fn next_producer_id(&self) -> Result<i64> {
        if self.cluster.is_some() {
            loop {
                {
                    let mut ids = self.producer_ids.lock();
                    if ids.next < ids.block_end {
                        let id = ids.next;
                        ids.next += 1;
                        return Ok(id);
                    }
                }
                // No lock is held while the controller commits: other requests wanting an id
                // must not block worker threads meanwhile.
                let start = match self.submit(strata_cluster::Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })? {
                    strata_cluster::Response::ProducerIdBlock { start } => start,
                    other => {
                        return Err(Error::Cluster(format!(
                            "unexpected answer to a producer id allocation: {other:?}"
                        )));
                    }
                };
                let mut ids = self.producer_ids.lock();
                if ids.next >= ids.block_end {
                    ids.next = start;
                    ids.block_end = start + PRODUCER_ID_BLOCK;
                }
            }
        }
        let mut ids = self.producer_ids.lock();
        if ids.next >= ids.block_end {
            let mut metadata = self.metadata.lock();
            let mut updated = metadata.clone();
            updated.producer_id_block_end = ids.next + PRODUCER_ID_BLOCK;
            self.store.store(&updated)?;
            *metadata = updated;
            ids.block_end = ids.next + PRODUCER_ID_BLOCK;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Runs roll, flush and (when `retention`) retention on every partition.
    pub fn maintain(&self, now_ms: i64, retention: bool) {
        for topic in self.topics() {
            for partition in &topic.partitions {
                match partition.maintain(now_ms, retention) {
                    Ok(done) if done.deleted_segments > 0 => tracing::info!(topic = %topic.name,
                        partition = partition.index(), deleted = done.deleted_segments,
                        log_start_offset = partition.log_start_offset(), "retention deleted segments"),
                    Ok(_) | Err(Error::NotLeader(_)) => {}
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = partition.index(), error = %e,
                        "log maintenance failed")
                    }
                }
            }
        }
    }

    /// Closes every partition cleanly, [`CLOSE_THREADS`] at a time.
    pub fn close(&self, now_ms: i64) {
        let partitions: Vec<Arc<Partition>> = self
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let close_some = || {
            while let Some(partition) =
                partitions.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            {
                if let Err(e) = partition.close(now_ms) {
                    tracing::error!(topic = partition.topic(), partition = partition.index(), error = %e, "closing partition");
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..CLOSE_THREADS.min(partitions.len()) {
                scope.spawn(close_some);
            }
            close_some();
        });
    }
}

/// How long an admin operation waits for the controller to commit it.
const CLUSTER_SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The broker error for a command the controller refused.
fn rejected(kind: strata_cluster::RejectKind, message: String) -> Error {
    use strata_cluster::RejectKind as K;
    match kind {
        K::TopicAlreadyExists => Error::TopicExists(message),
        K::UnknownTopic => Error::UnknownTopic(message),
        K::FencedLeaderEpoch => Error::FencedLeaderEpoch(message),
        kind => {
            use kafka_protocol::ResponseError as E;
            let code = match kind {
                K::InvalidTopic => E::InvalidTopicException,
                K::InvalidReplicaAssignment => E::InvalidReplicaAssignment,
                K::InvalidPartitions => E::InvalidPartitions,
                K::UnknownBroker => E::BrokerIdNotRegistered,
                K::ElectionNotNeeded => E::ElectionNotNeeded,
                K::PreferredLeaderNotAvailable => E::PreferredLeaderNotAvailable,
                K::NoReassignmentInProgress => E::NoReassignmentInProgress,
                K::EligibleLeadersNotAvailable => E::EligibleLeadersNotAvailable,
                K::InvalidReplicationFactor => E::InvalidReplicationFactor,
                _ => E::InvalidRequest,
            };
            Error::InvalidRequest { code, message }
        }
    }
}

/// Partitions closed at once at shutdown. A close waits on the disk (each written partition
/// fsyncs its segment and state files), not on the CPU, and a disk serves concurrent fsyncs far
/// faster than one at a time: on the development machine 16 at once took a sixth of the time.
const CLOSE_THREADS: usize = 16;

fn check_partition_count(count: i32) -> Result<()> {
    if (1..=PARTITIONS_MAX).contains(&count) {
        return Ok(());
    }
    Err(Error::InvalidRequest {
        code: kafka_protocol::ResponseError::InvalidPartitions,
        message: format!("partition count {count} is outside 1..={PARTITIONS_MAX}"),
    })
}

/// The folder of one partition: `<data_dir>/topics/<topic>-<index>`, as Kafka names log folders.
pub fn partition_dir(config: &BrokerConfig, topic: &str, index: i32) -> PathBuf {
    config
        .data_dir
        .join("topics")
        .join(format!("{topic}-{index}"))
}

fn topic_without_partitions(config: &BrokerConfig, name: &str, record: &TopicRecord) -> Topic {
    Topic {
        name: name.to_string(),
        topic_id: record.topic_id,
        partitions: Vec::new(),
        partition_count: record.partitions,
        config: config.topic_config(&record.configs),
        overrides: record.configs.clone(),
    }
}

/// Opens partitions `first..record.partitions` of a topic, beside the folders this made. When one
/// partition fails, the ones opened are dropped and the folders made removed before the error is
/// returned; on success the caller keeps the folders ([`NewFolders::keep`]) once the topic is
/// recorded, or lets them be removed.
fn open_topic(
    config: &BrokerConfig,
    name: &str,
    record: &TopicRecord,
    first: i32,
    now_ms: i64,
) -> Result<(Topic, NewFolders)> {
    let mut folders = NewFolders(Vec::new());
    let mut topic = topic_without_partitions(config, name, record);
    let log_config = topic.config.log_config();
    for index in first..record.partitions {
        let dir = partition_dir(config, name, index);
        if matches!(std::fs::symlink_metadata(&dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            folders.0.push(dir.clone());
        }
        match Partition::open(name, index, &dir, log_config.clone(), now_ms) {
            Ok(partition) => topic.partitions.push(Arc::new(partition)),
            Err(e) => {
                tracing::warn!(topic = name, partition = index, error = %e,
                    folders = folders.0.len(), "opening a new partition failed; removing the folders made");
                return Err(e);
            }
        }
    }
    Ok((topic, folders))
}

/// Partition folders made by a topic creation still in progress: removed when dropped, unless
/// [`NewFolders::keep`] was called. A folder that existed before the creation is never listed, so
/// a failure leaves it as it was.
#[derive(Debug)]
#[must_use = "the folders are removed when this is dropped"]
struct NewFolders(Vec<PathBuf>);

impl NewFolders {
    /// The creation is recorded: the folders stay.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for NewFolders {
    fn drop(&mut self) {
        for dir in self.0.drain(..) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing the folder of a partition not created");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::LocalMetadataStore;

    fn manager(dir: &std::path::Path) -> PartitionManager {
        let config = BrokerConfig::for_dir(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
        PartitionManager::open(config, Box::new(LocalMetadataStore::new(dir)), 0).unwrap()
    }

    #[test]
    fn topics_survive_a_restart_with_their_ids_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let overrides = BTreeMap::from([("retention.ms".to_string(), "1234".to_string())]);
        let created = m.create_topic("orders", 3, 1, overrides, false, 0).unwrap();
        m.create_partitions("orders", 5, false, 0).unwrap();
        m.close(0);
        drop(m);
        let m = manager(dir.path());
        let topic = m.topic("orders").unwrap();
        assert_eq!(topic.topic_id, created.topic_id);
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(topic.config.log_config().retention_ms, 1234);
    }

    #[test]
    fn admin_errors_carry_kafka_codes() {
        use kafka_protocol::ResponseError as E;
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        m.create_topic("t", 1, -1, BTreeMap::new(), false, 0)
            .unwrap();
        fn code<T: std::fmt::Debug>(r: Result<T>) -> E {
            r.unwrap_err().code()
        }
        assert_eq!(
            code(m.create_topic("t", 1, -1, BTreeMap::new(), false, 0)),
            E::TopicAlreadyExists
        );
        assert_eq!(
            code(m.create_topic("bad/name", 1, -1, BTreeMap::new(), false, 0)),
            E::InvalidTopicException
        );
        assert_eq!(
            code(m.create_topic("t2", 0, -1, BTreeMap::new(), false, 0)),
            E::InvalidPartitions
        );
        assert_eq!(
            code(m.create_topic("t2", 1, 3, BTreeMap::new(), false, 0)),
            E::InvalidReplicationFactor
        );
        assert_eq!(
            code(m.create_partitions("t", 1, false, 0)),
            E::InvalidPartitions
        );
        assert_eq!(code(m.delete_topic("nope", 0)), E::UnknownTopicOrPartition);
        assert!(
            m.create_topic("t2", 1, -1, BTreeMap::new(), true, 0)
                .is_ok()
        );
        assert!(m.topic("t2").is_none(), "validate_only creates nothing");
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let first: Vec<i64> = (0..3).map(|_| m.next_producer_id().unwrap()).collect();
        drop(m);
        let m = manager(dir.path());
        let next = m.next_producer_id().unwrap();
        assert!(first.iter().all(|&id| id < next));
    }

    #[test]
    fn deleting_a_topic_removes_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        m.create_topic("gone", 2, -1, BTreeMap::new(), false, 0)
            .unwrap();
        assert!(partition_dir(m.config(), "gone", 1).exists());
        m.delete_topic("gone", 0).unwrap();
        assert!(!partition_dir(m.config(), "gone", 0).exists());
        assert!(m.topic("gone").is_none());
    }

    /// The partition folders of `topic` under the data folder, by index.
    fn folders(dir: &std::path::Path, topic: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("topics"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.strip_prefix(topic)
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_creation_leaves_no_folder_and_no_topic() {
        use kafka_protocol::ResponseError as E;
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        // A file where partition 3's folder should be: partitions 0 to 2 open, then 3 fails.
        let in_the_way = partition_dir(m.config(), "t", 3);
        std::fs::create_dir_all(in_the_way.parent().unwrap()).unwrap();
        std::fs::write(&in_the_way, b"not a folder").unwrap();
        let err = m
            .create_topic("t", 6, -1, BTreeMap::new(), false, 0)
            .unwrap_err();
        assert_eq!(err.code(), E::KafkaStorageError, "{err}");
        assert_eq!(
            folders(dir.path(), "t"),
            ["t-3"],
            "only what was there before"
        );
        assert!(in_the_way.is_file(), "left as it was");
        assert!(m.topic("t").is_none());
        drop(m);
        let m = manager(dir.path());
        assert!(m.topic("t").is_none(), "not recorded in the metadata");
        // Once the path is usable the same creation succeeds.
        std::fs::remove_file(&in_the_way).unwrap();
        m.create_topic("t", 6, -1, BTreeMap::new(), false, 0)
            .unwrap();
        assert_eq!(folders(dir.path(), "t").len(), 6);
    }

    #[test]
    fn a_failed_partition_increase_leaves_the_topic_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        m.create_topic("t", 2, -1, BTreeMap::new(), false, 0)
            .unwrap();
        std::fs::write(partition_dir(m.config(), "t", 4), b"not a folder").unwrap();
        assert!(m.create_partitions("t", 6, false, 0).is_err());
        assert_eq!(folders(dir.path(), "t"), ["t-0", "t-1", "t-4"]);
        assert_eq!(m.topic("t").unwrap().partitions.len(), 2);
        drop(m);
        assert_eq!(manager(dir.path()).topic("t").unwrap().partitions.len(), 2);
    }

    /// A metadata store that refuses to store while `fail` is set.
    #[derive(Debug)]
    struct FailingStore {
        inner: LocalMetadataStore,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl MetadataStore for FailingStore {
        fn load(&self) -> Result<ClusterMetadata> {
            self.inner.load()
        }
        fn store(&self, metadata: &ClusterMetadata) -> Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Metadata("the store is down".to_string()));
            }
            self.inner.store(metadata)
        }
    }

    #[test]
    fn a_creation_the_store_refuses_leaves_no_folder() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = FailingStore {
            inner: LocalMetadataStore::new(dir.path()),
            fail: Arc::clone(&fail),
        };
        let config =
            BrokerConfig::for_dir(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
        let m = PartitionManager::open(config, Box::new(store), 0).unwrap();
        m.create_topic("kept", 2, -1, BTreeMap::new(), false, 0)
            .unwrap();
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            m.create_topic("t", 3, -1, BTreeMap::new(), false, 0)
                .is_err()
        );
        assert!(m.create_partitions("kept", 4, false, 0).is_err());
        assert_eq!(folders(dir.path(), "t"), Vec::<String>::new());
        assert_eq!(folders(dir.path(), "kept"), ["kept-0", "kept-1"]);
        assert!(m.topic("t").is_none());
        assert_eq!(m.topic("kept").unwrap().partitions.len(), 2);
    }
}
