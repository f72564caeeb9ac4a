//! The replicated cluster metadata and its one state transition, [`ClusterState::apply`].
//!
//! Everything here is pure and deterministic: every node applies the same committed commands in
//! the same order and must reach the same state, so no clock, no randomness and no hash map
//! iteration order is read (maps are `BTreeMap`s). The rules follow Kafka KRaft's controller
//! (`ReplicationControlManager`): leaders come from the ISR, an ISR never holds a fenced broker
//! unless it is the partition's only member (unclean election is disabled), and every leader
//! change bumps the partition's leader epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod reassignment;

/// `leader` of a partition that has no leader (every ISR member is fenced).
pub const NO_LEADER: i32 = -1;

/// Kafka's longest topic name: 249 bytes, so that `<name>-<partition>` folder names stay under
/// the 255-byte file name limit.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Largest producer id block one command may take: Kafka hands out blocks of 1000; this bound
/// only stops a bad request from exhausting the id space at once.
pub const PRODUCER_ID_BLOCK_MAX: i64 = 1_000_000;

/// One advertised listener of a broker: what clients that connected on listener `name` dial.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct ListenerEndpoint {
    /// The listener name (`PLAINTEXT`, `SSL`, `INTERNAL`, …).
    pub name: String,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
}

/// One registered broker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct BrokerInfo {
    /// `node.id`.
    pub id: i32,
    /// The host clients dial.
    pub host: String,
    /// The port clients dial.
    pub port: u16,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Every advertised listener, by name (`host`/`port` above are the inter-broker one's).
    /// Empty for a broker registered before listener names.
    #[serde(default)]
    pub listeners: Vec<ListenerEndpoint>,
    /// A fenced broker missed its session lease (or shut down): it leads nothing and is in no ISR
    /// unless it was a partition's last member.
    pub fenced: bool,
}

/// Leadership and replicas of one partition.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct PartitionState {
    /// The assigned replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// The current leader, [`NO_LEADER`] (-1) when offline.
    pub leader: i32,
    /// Bumped on every leader change (and when the partition goes offline).
    pub leader_epoch: i32,
    /// The in-sync replicas; holds the leader whenever there is one.
    pub isr: Vec<i32>,
    /// Replicas a reassignment in progress adds (KIP-455): they fetch from the leader until they
    /// are in sync. Empty when no reassignment is in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<i32>,
    /// Replicas a reassignment in progress removes once every adding replica is in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<i32>,
}

/// One topic.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct TopicState {
    /// The topic id Kafka clients see.
    pub topic_id: Uuid,
    /// The topic's config overrides.
    pub configs: BTreeMap<String, String>,
    /// The partitions, indexed by partition id.
    pub partitions: Vec<PartitionState>,
}

/// The whole replicated metadata: what every broker learns from the metadata log.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct ClusterState {
    /// The cluster id (22 characters), empty until the first controller sets it.
    pub cluster_id: String,
    /// Every broker ever registered, fenced or not, by id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Every topic by name.
    pub topics: BTreeMap<String, TopicState>,
    /// The first producer id not yet handed out.
    pub producer_id_block_end: i64,
    /// Raft log index of the last applied entry (set by the state machine, not by `apply`).
    pub applied_index: u64,
    /// Security records (SCRAM credentials, ACL bindings, client quotas) by kind, then key: JSON
    /// values that the brokers interpret; the quorum only stores and replicates them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security: BTreeMap<String, BTreeMap<String, String>>,
}

/// One change to the security records: `value` `None` deletes the record.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct SecurityChange {
    /// The kind of record: `scram`, `acl`, `quota`.
    pub kind: String,
    /// The record's key within its kind.
    pub key: String,
    /// The new value, or `None` to delete the record.
    pub value: Option<String>,
}

/// What a [`Command::PutSecurity`] expects a record to be when it applies (compare-and-set): a
/// read-modify-write names the value it read, so that a change made since is not overwritten.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct SecurityExpectation {
    /// The kind of record.
    pub kind: String,
    /// The record's key within its kind.
    pub key: String,
    /// The value expected, or `None` for no record.
    pub value: Option<String>,
}

/// A change to the metadata, committed through Raft.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub enum Command {
    /// Sets the cluster id if none is set yet (the first controller submits it).
    InitCluster {
        /// The new id.
        cluster_id: String,
    },
    /// Adds a broker or updates its endpoint, and unfences it.
    RegisterBroker {
        /// `node.id`.
        id: i32,
        /// The host clients dial.
        host: String,
        /// The port clients dial.
        port: u16,
        /// `broker.rack`.
        rack: Option<String>,
        /// Every advertised listener (absent in commands logged before listener names).
        #[serde(default)]
        listeners: Vec<ListenerEndpoint>,
    },
    /// Fences a broker: its lease expired, or it shut down in a controlled way.
    FenceBroker {
        /// The broker.
        id: i32,
    },
    /// Sets or deletes security records, all of them at once.
    PutSecurity {
        /// The changes, applied in order.
        changes: Vec<SecurityChange>,
        /// The records as the caller read them: when one differs, nothing is applied
        /// ([`RejectKind::SecurityRecordChanged`]). Absent in commands logged before it, and not
        /// written when empty, so that brokers of either version read each other's commands.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        expected: Vec<SecurityExpectation>,
    },
    /// Creates a topic with explicit replica assignments (see [`crate::place`]).
    CreateTopic {
        /// The topic name.
        name: String,
        /// The new topic id.
        topic_id: Uuid,
        /// Config overrides.
        configs: BTreeMap<String, String>,
        /// Replicas of each partition, preferred leader first.
        assignments: Vec<Vec<i32>>,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// The topic name.
        name: String,
    },
    /// Adds partitions to a topic.
    CreatePartitions {
        /// The topic name.
        name: String,
        /// The replicas of each added partition.
        assignments: Vec<Vec<i32>>,
    },
    /// Replaces a topic's config overrides.
    AlterTopicConfigs {
        /// The topic name.
        name: String,
        /// The new overrides (the old ones are dropped).
        configs: BTreeMap<String, String>,
    },
    /// An ISR change asked by the partition leader.
    AlterPartition {
        /// The topic name.
        topic: String,
        /// The partition id.
        partition: i32,
        /// The leader epoch the leader knows; must be the current one.
        leader_epoch: i32,
        /// The new ISR.
        isr: Vec<i32>,
    },
    /// Starts, replaces or cancels the reassignment of a partition (KIP-455); see
    /// [`reassignment`].
    AlterPartitionReassignment {
        /// The topic name.
        topic: String,
        /// The partition id.
        partition: i32,
        /// The target replicas, preferred leader first; `None` cancels the reassignment in
        /// progress.
        target: Option<Vec<i32>>,
        /// Whether the target may hold another number of replicas than the partition has.
        allow_replication_factor_change: bool,
    },
    /// Moves leadership back to the first replica.
    ElectPreferredLeader {
        /// The topic name.
        topic: String,
        /// The partition id.
        partition: i32,
    },
    /// Reserves a block of producer ids.
    AllocateProducerIds {
        /// How many ids.
        count: i64,
    },
}

/// What applying a [`Command`] gave.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub enum Response {
    /// Applied.
    Ok,
    /// `AllocateProducerIds` reserved `[start, start + count)`.
    ProducerIdBlock {
        /// The first id of the block.
        start: i64,
    },
    /// Not applied: the state is unchanged.
    Rejected {
        /// Why, for callers to branch on (the broker maps it to a Kafka error code).
        kind: RejectKind,
        /// The details, for people.
        message: String,
    },
}

/// Why a command was rejected. Each maps to one Kafka error code, named beside it.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectKind {
    /// TOPIC_ALREADY_EXISTS (36).
    TopicAlreadyExists,
    /// UNKNOWN_TOPIC_OR_PARTITION (3): no such topic, or no such partition in it.
    UnknownTopic,
    /// INVALID_TOPIC_EXCEPTION (17): the name is empty, too long, `.`/`..` or has other
    /// characters than `[a-zA-Z0-9._-]`.
    InvalidTopic,
    /// INVALID_REPLICA_ASSIGNMENT (39): empty, duplicate or unknown replicas, replication factors
    /// that differ, or every replica of a partition fenced.
    InvalidReplicaAssignment,
    /// INVALID_PARTITIONS (37): no partition to add.
    InvalidPartitions,
    /// FENCED_LEADER_EPOCH (74): an `AlterPartition` from a stale leader.
    FencedLeaderEpoch,
    /// INVALID_REQUEST (42): any other malformed command (an ISR without the leader, with a fenced
    /// or foreign broker, a bad producer id count, an empty cluster id).
    InvalidRequest,
    /// BROKER_ID_NOT_REGISTERED (102): fencing a broker that never registered.
    UnknownBroker,
    /// ELECTION_NOT_NEEDED (84): the preferred replica already leads.
    ElectionNotNeeded,
    /// PREFERRED_LEADER_NOT_AVAILABLE (80): the preferred replica is fenced or out of the ISR.
    PreferredLeaderNotAvailable,
    /// NO_REASSIGNMENT_IN_PROGRESS (85): cancelling a reassignment where none is in progress.
    NoReassignmentInProgress,
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE (83): no in-sync replica could lead afterwards (a cancelled
    /// reassignment whose only in-sync replicas are the ones being added).
    EligibleLeadersNotAvailable,
    /// INVALID_REPLICATION_FACTOR (38): a reassignment that changes the number of replicas when
    /// the request did not allow it.
    InvalidReplicationFactor,
    /// A `PutSecurity` whose expected record changed since the caller read it: the caller reads
    /// again and retries (INVALID_REQUEST (42) should it ever reach a client).
    SecurityRecordChanged,
}

pub(crate) fn reject(kind: RejectKind, message: impl Into<String>) -> Response {
    Response::Rejected {
        kind,
        message: message.into(),
    }
}

impl Command {
    /// The command's name, for logs and errors (a `CreateTopic` may be megabytes of `Debug`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::InitCluster { .. } => "InitCluster",
            Command::RegisterBroker { .. } => "RegisterBroker",
            Command::FenceBroker { .. } => "FenceBroker",
            Command::CreateTopic { .. } => "CreateTopic",
            Command::DeleteTopic { .. } => "DeleteTopic",
            Command::CreatePartitions { .. } => "CreatePartitions",
            Command::AlterTopicConfigs { .. } => "AlterTopicConfigs",
            Command::AlterPartition { .. } => "AlterPartition",
            Command::AlterPartitionReassignment { .. } => "AlterPartitionReassignment",
            Command::ElectPreferredLeader { .. } => "ElectPreferredLeader",
            Command::AllocateProducerIds { .. } => "AllocateProducerIds",
            Command::PutSecurity { .. } => "PutSecurity",
        }
    }
}

impl ClusterState {
    /// Applies one committed command. Pure and deterministic: every node computes the same
    /// result. A rejected command leaves the state unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::InitCluster { cluster_id } => self.init_cluster(cluster_id),
            Command::RegisterBroker {
                id,
                host,
                port,
                rack,
                listeners,
            } => self.register_broker(*id, host, *port, rack, listeners),
            Command::FenceBroker { id } => self.fence_broker(*id),
            Command::CreateTopic {
                name,
                topic_id,
                configs,
                assignments,
            } => self.create_topic(name, *topic_id, configs, assignments),
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Response::Ok,
                None => reject(RejectKind::UnknownTopic, format!("no topic {name:?}")),
            },
            Command::CreatePartitions { name, assignments } => {
                self.create_partitions(name, assignments)
            }
            Command::AlterTopicConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(topic) => {
                    topic.configs = configs.clone();
                    Response::Ok
                }
                None => reject(RejectKind::UnknownTopic, format!("no topic {name:?}")),
            },
            Command::AlterPartition {
                topic,
                partition,
                leader_epoch,
                isr,
            } => self.alter_partition(topic, *partition, *leader_epoch, isr),
            Command::AlterPartitionReassignment {
                topic,
                partition,
                target,
                allow_replication_factor_change,
            } => self.alter_reassignment(
                topic,
                *partition,
                target.as_deref(),
                *allow_replication_factor_change,
            ),
            Command::ElectPreferredLeader { topic, partition } => {
                self.elect_preferred_leader(topic, *partition)
            }
            Command::AllocateProducerIds { count } => self.allocate_producer_ids(*count),
            Command::PutSecurity { changes, expected } => self.put_security(changes, expected),
        }
    }

    fn put_security(
        &mut self,
        changes: &[SecurityChange],
        expected: &[SecurityExpectation],
    ) -> Response {
        if changes
            .iter()
            .any(|c| c.kind.is_empty() || c.key.is_empty())
        {
            return reject(
                RejectKind::InvalidRequest,
                "a security record needs a kind and a key",
            );
        }
        if let Some(stale) = expected.iter().find(|e| {
            self.security
                .get(&e.kind)
                .and_then(|records| records.get(&e.key))
                != e.value.as_ref()
        }) {
            return reject(
                RejectKind::SecurityRecordChanged,
                format!(
                    "the security record {}/{} changed since it was read",
                    stale.kind, stale.key
                ),
            );
        }
        for change in changes {
            let kind = self.security.entry(change.kind.clone()).or_default();
            match &change.value {
                Some(value) => {
                    kind.insert(change.key.clone(), value.clone());
                }
                None => {
                    kind.remove(&change.key);
                }
            }
            if kind.is_empty() {
                self.security.remove(&change.kind);
            }
        }
        Response::Ok
    }

    /// Whether `id` is a registered, unfenced broker.
    pub fn is_active(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// The partition `partition` of `topic`, if both exist.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionState> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    fn init_cluster(&mut self, cluster_id: &str) -> Response {
        if cluster_id.is_empty() {
            return reject(RejectKind::InvalidRequest, "empty cluster id");
        }
        // A second controller may propose its own id before it saw the first one committed:
        // the first one applied wins and the later ones change nothing.
        if self.cluster_id.is_empty() {
            self.cluster_id = cluster_id.to_owned();
        }
        Response::Ok
    }

    fn register_broker(
        &mut self,
        id: i32,
        host: &str,
        port: u16,
        rack: &Option<String>,
        listeners: &[ListenerEndpoint],
    ) -> Response {
        if id < 0 {
            return reject(RejectKind::InvalidRequest, format!("broker id {id} < 0"));
        }
        if host.is_empty() {
            return reject(
                RejectKind::InvalidRequest,
                format!("broker {id}: empty host"),
            );
        }
        self.brokers.insert(
            id,
            BrokerInfo {
                id,
                host: host.to_owned(),
                port,
                rack: rack.clone(),
                listeners: listeners.to_vec(),
                fenced: false,
            },
        );
        // Offline partitions whose ISR holds a now unfenced broker get it back as leader.
        let brokers = &self.brokers;
        for partition in self
            .topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            if partition.leader == NO_LEADER
                && let Some(leader) = first_eligible(&partition.replicas, &partition.isr, brokers)
            {
                partition.leader = leader;
                partition.leader_epoch += 1;
            }
        }
        Response::Ok
    }

    fn fence_broker(&mut self, id: i32) -> Response {
        let Some(broker) = self.brokers.get_mut(&id) else {
            return reject(
                RejectKind::UnknownBroker,
                format!("broker {id} is not registered"),
            );
        };
        if broker.fenced {
            // Already fenced: its partitions were handled then; doing it again would bump epochs.
            return Response::Ok;
        }
        broker.fenced = true;
        let brokers = &self.brokers;
        for partition in self
            .topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            if !partition.isr.contains(&id) {
                continue;
            }
            if partition.isr.len() == 1 {
                // The last in-sync replica stays in the ISR: only it may lead again (no unclean
                // election), once it is back.
                partition.leader = NO_LEADER;
                partition.leader_epoch += 1;
                continue;
            }
            partition.isr.retain(|&r| r != id);
            if partition.leader == id {
                partition.leader = first_eligible(&partition.replicas, &partition.isr, brokers)
                    .unwrap_or(NO_LEADER);
                partition.leader_epoch += 1;
            }
        }
        Response::Ok
    }

    fn create_topic(
        &mut self,
        name: &str,
        topic_id: Uuid,
        configs: &BTreeMap<String, String>,
        assignments: &[Vec<i32>],
    ) -> Response {
        if let Err(message) = validate_topic_name(name) {
            return reject(RejectKind::InvalidTopic, message);
        }
        if self.topics.contains_key(name) {
            return reject(
                RejectKind::TopicAlreadyExists,
                format!("topic {name:?} exists"),
            );
        }
        if assignments.is_empty() {
            return reject(
                RejectKind::InvalidPartitions,
                format!("topic {name:?}: no partition"),
            );
        }
        let partitions = match self.new_partitions(name, 0, assignments) {
            Ok(partitions) => partitions,
            Err(response) => return response,
        };
        self.topics.insert(
            name.to_owned(),
            TopicState {
                topic_id,
                configs: configs.clone(),
                partitions,
            },
        );
        Response::Ok
    }

    fn create_partitions(&mut self, name: &str, assignments: &[Vec<i32>]) -> Response {
        let Some(topic) = self.topics.get(name) else {
            return reject(RejectKind::UnknownTopic, format!("no topic {name:?}"));
        };
        if assignments.is_empty() {
            return reject(
                RejectKind::InvalidPartitions,
                format!("topic {name:?}: no partition to add"),
            );
        }
        let existing = topic.partitions.len();
        if let Some(rf) = topic
            .partitions
            .first()
            .map(|p| p.original_replicas().len())
            && assignments[0].len() != rf
        {
            return reject(
                RejectKind::InvalidReplicaAssignment,
                format!(
                    "topic {name:?} has replication factor {rf}, not {}",
                    assignments[0].len()
                ),
            );
        }
        let added = match self.new_partitions(name, existing, assignments) {
            Ok(partitions) => partitions,
            Err(response) => return response,
        };
        if let Some(topic) = self.topics.get_mut(name) {
            topic.partitions.extend(added);
        }
        Response::Ok
    }

    /// Validates `assignments` (partitions `first..`) and builds their initial state: the ISR is
    /// the unfenced replicas (all of them in a healthy cluster), the leader the first of those.
    fn new_partitions(
        &self,
        topic: &str,
        first: usize,
        assignments: &[Vec<i32>],
    ) -> Result<Vec<PartitionState>, Response> {
        let rf = assignments[0].len();
        let mut partitions = Vec::with_capacity(assignments.len());
        for (i, replicas) in assignments.iter().enumerate() {
            let index = first + i;
            let invalid = |why: String| {
                reject(
                    RejectKind::InvalidReplicaAssignment,
                    format!("topic {topic:?} partition {index}: {why}"),
                )
            };
            if replicas.is_empty() {
                return Err(invalid("no replica".into()));
            }
            if replicas.len() != rf {
                return Err(invalid(format!(
                    "{} replicas, others have {rf}",
                    replicas.len()
                )));
            }
            if let Some(dup) = first_duplicate(replicas) {
                return Err(invalid(format!("broker {dup} appears twice")));
            }
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(invalid(format!("broker {unknown} is not registered")));
            }
            let isr: Vec<i32> = replicas
                .iter()
                .copied()
                .filter(|&r| self.is_active(r))
                .collect();
            let Some(&leader) = isr.first() else {
                return Err(invalid("every replica is fenced".into()));
            };
            partitions.push(PartitionState {
                replicas: replicas.clone(),
                leader,
                leader_epoch: 0,
                isr,
                adding_replicas: Vec::new(),
                removing_replicas: Vec::new(),
            });
        }
        Ok(partitions)
    }

    fn alter_partition(
        &mut self,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
        isr: &[i32],
    ) -> Response {
        let Some(current) = self.partition(topic, partition) else {
            return reject(
                RejectKind::UnknownTopic,
                format!("no partition {topic}-{partition}"),
            );
        };
        let at = format!("{topic}-{partition}");
        if leader_epoch != current.leader_epoch {
            return reject(
                RejectKind::FencedLeaderEpoch,
                format!(
                    "{at}: leader epoch {leader_epoch}, current is {}",
                    current.leader_epoch
                ),
            );
        }
        if current.leader == NO_LEADER || !isr.contains(&current.leader) {
            return reject(
                RejectKind::InvalidRequest,
                format!("{at}: ISR {isr:?} lacks the leader {}", current.leader),
            );
        }
        if let Some(dup) = first_duplicate(isr) {
            return reject(
                RejectKind::InvalidRequest,
                format!("{at}: broker {dup} twice in ISR"),
            );
        }
        if let Some(foreign) = isr.iter().find(|r| !current.replicas.contains(r)) {
            return reject(
                RejectKind::InvalidRequest,
                format!("{at}: broker {foreign} is not a replica"),
            );
        }
        if let Some(fenced) = isr.iter().find(|&&r| !self.is_active(r)) {
            return reject(
                RejectKind::InvalidRequest,
                format!("{at}: broker {fenced} is fenced"),
            );
        }
        let mut next = current.clone();
        next.isr = isr.to_vec();
        // An ISR that now holds every replica being added completes the reassignment.
        reassignment::complete_if_in_sync(&mut next, &self.brokers);
        if let Some(p) = self.partition_mut(topic, partition) {
            *p = next;
        }
        Response::Ok
    }

    fn elect_preferred_leader(&mut self, topic: &str, partition: i32) -> Response {
        let Some(current) = self.partition(topic, partition) else {
            return reject(
                RejectKind::UnknownTopic,
                format!("no partition {topic}-{partition}"),
            );
        };
        let preferred = current.replicas[0];
        if current.leader == preferred {
            return reject(
                RejectKind::ElectionNotNeeded,
                format!("{topic}-{partition}: broker {preferred} already leads"),
            );
        }
        if !current.isr.contains(&preferred) || !self.is_active(preferred) {
            return reject(
                RejectKind::PreferredLeaderNotAvailable,
                format!("{topic}-{partition}: broker {preferred} is fenced or out of the ISR"),
            );
        }
        if let Some(p) = self.partition_mut(topic, partition) {
            p.leader = preferred;
            p.leader_epoch += 1;
        }
        Response::Ok
    }

    fn allocate_producer_ids(&mut self, count: i64) -> Response {
        if !(1..=PRODUCER_ID_BLOCK_MAX).contains(&count) {
            return reject(
                RejectKind::InvalidRequest,
                format!("producer id count {count} not in 1..={PRODUCER_ID_BLOCK_MAX}"),
            );
        }
        let start = self.producer_id_block_end;
        let Some(end) = start.checked_add(count) else {
            return reject(RejectKind::InvalidRequest, "producer ids exhausted");
        };
        self.producer_id_block_end = end;
        Response::ProducerIdBlock { start }
    }

    pub(crate) fn partition_mut(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Option<&mut PartitionState> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get_mut(topic)?.partitions.get_mut(index)
    }
}

/// The first replica, in replica order, that is in `isr` and unfenced.
pub(crate) fn first_eligible(
    replicas: &[i32],
    isr: &[i32],
    brokers: &BTreeMap<i32, BrokerInfo>,
) -> Option<i32> {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && brokers.get(r).is_some_and(|b| !b.fenced))
}

pub(crate) fn first_duplicate(ids: &[i32]) -> Option<i32> {
    ids.iter()
        .enumerate()
        .find(|(i, id)| ids[..*i].contains(id))
        .map(|(_, id)| *id)
}

/// Kafka's topic name rule.
fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("invalid topic name {name:?}"));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name longer than {TOPIC_NAME_BYTES_MAX} bytes"
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "topic name {name:?} has {c:?}, only [a-zA-Z0-9._-] are allowed"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
