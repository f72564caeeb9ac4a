//! `strata cluster status`: the brokers, the active controller, the cluster id, the partitions
//! that are under-replicated or offline and the reassignments in progress, over the Kafka protocol
//! (Metadata v12 for every topic, DescribeCluster v0 for the controller,
//! ListPartitionReassignments v0), as one broker of the cluster sees them.
//!
//! [`ClusterStatus::from_responses`] and [`ClusterStatus::render`] are pure: the network stays in
//! [`status`].

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, MetadataRequest, MetadataResponse,
};
use serde::Serialize;

use crate::admin::AdminClient;
use crate::groups::{or_dash, table};

/// Metadata v12: racks, leader epochs, offline replicas, topic ids; the newest Strata serves.
const METADATA_VERSION: i16 = 12;
/// DescribeCluster v0: cluster id, controller and brokers (v1 only adds the endpoint type).
const DESCRIBE_CLUSTER_VERSION: i16 = 0;
/// ListPartitionReassignments v0, the only version.
const LIST_REASSIGNMENTS_VERSION: i16 = 0;

/// What `strata cluster status` reports (and prints as JSON with `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The broker that answered, as given to `--bootstrap`.
    pub asked: String,
    /// The cluster id.
    pub cluster_id: String,
    /// The active controller, `None` when the broker knows none (no quorum, or an election).
    pub controller_id: Option<i32>,
    /// The live brokers, by id.
    pub brokers: Vec<BrokerRow>,
    /// Brokers named as a replica of some partition but not live (stopped, crashed, or cut off
    /// from the controller for longer than `broker.session.timeout.ms`, so fenced), by id.
    pub missing_brokers: Vec<i32>,
    /// Topics described.
    pub topic_count: usize,
    /// Partitions described, over every topic.
    pub partition_count: usize,
    /// Partitions with a leader and fewer in-sync replicas than replicas.
    pub under_replicated: Vec<PartitionRow>,
    /// Partitions without a leader: neither readable nor writable until one returns.
    pub offline: Vec<PartitionRow>,
    /// Topics the broker could not describe (their partitions are counted nowhere).
    pub unreadable_topics: Vec<TopicError>,
    /// Partition reassignments in progress (KIP-455), by topic and partition.
    pub reassigning: Vec<ReassignmentRow>,
}

/// One partition reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReassignmentRow {
    /// Topic.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Every replica meanwhile: the target, then the replicas being removed.
    pub replicas: Vec<i32>,
    /// Replicas catching up, to be added.
    pub adding_replicas: Vec<i32>,
    /// Replicas removed once every adding one is in sync.
    pub removing_replicas: Vec<i32>,
}

/// One live broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerRow {
    /// `node.id`.
    pub id: i32,
    /// The host clients dial.
    pub host: String,
    /// The port clients dial.
    pub port: i32,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Whether it is the active controller.
    pub controller: bool,
}

/// One partition that needs attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    /// Topic.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The leader, `None` when offline.
    pub leader: Option<i32>,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// Every replica, preferred leader first.
    pub replicas: Vec<i32>,
    /// The in-sync replicas.
    pub isr: Vec<i32>,
    /// Replicas the broker reports offline.
    pub offline_replicas: Vec<i32>,
}

/// A topic Metadata answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicError {
    /// Topic name (empty when the broker sent none).
    pub topic: String,
    /// Kafka error code.
    pub error_code: i16,
    /// Its name.
    pub error: String,
}

impl ClusterStatus {
    /// Whether every partition described has a leader and every topic could be described: the
    /// exit status of `strata cluster status` is 0 exactly then.
    pub fn every_partition_led(&self) -> bool {
        self.offline.is_empty() && self.unreadable_topics.is_empty()
    }

    /// The status from a Metadata response for every topic and a DescribeCluster response.
    pub fn from_responses(
        asked: &str,
        metadata: &MetadataResponse,
        cluster: &DescribeClusterResponse,
    ) -> Self {
        let controller_id = (cluster.controller_id.0 >= 0).then_some(cluster.controller_id.0);
        let mut brokers: Vec<BrokerRow> = metadata
            .brokers
            .iter()
            .map(|b| BrokerRow {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(ToString::to_string),
                controller: Some(b.node_id.0) == controller_id,
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let live: BTreeSet<i32> = brokers.iter().map(|b| b.id).collect();
        let mut missing = BTreeSet::new();
        let mut under_replicated = Vec::new();
        let mut offline = Vec::new();
        let mut unreadable_topics = Vec::new();
        let mut partition_count = 0;
        for topic in &metadata.topics {
            let name = topic
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.to_string());
            if let Some(error) = ResponseError::try_from_code(topic.error_code) {
                unreadable_topics.push(TopicError {
                    topic: name,
                    error_code: topic.error_code,
                    error: error.to_string(),
                });
                continue;
            }
            partition_count += topic.partitions.len();
            for p in &topic.partitions {
                let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<i32>>();
                let row = PartitionRow {
                    topic: name.clone(),
                    partition: p.partition_index,
                    leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                    leader_epoch: p.leader_epoch,
                    replicas: ids(&p.replica_nodes),
                    isr: ids(&p.isr_nodes),
                    offline_replicas: ids(&p.offline_replicas),
                };
                missing.extend(row.replicas.iter().filter(|r| !live.contains(r)));
                if row.leader.is_none() {
                    offline.push(row);
                } else if row.isr.len() < row.replicas.len() {
                    under_replicated.push(row);
                }
            }
        }
        for rows in [&mut under_replicated, &mut offline] {
            rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        }
        unreadable_topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Self {
            asked: asked.to_string(),
            cluster_id: cluster.cluster_id.to_string(),
            controller_id,
            brokers,
            missing_brokers: missing.into_iter().collect(),
            topic_count: metadata.topics.len(),
            partition_count,
            under_replicated,
            offline,
            unreadable_topics,
            reassigning: Vec::new(),
        }
    }

    /// Adds the reassignments in progress a ListPartitionReassignments response lists.
    pub fn with_reassignments(mut self, response: &ListPartitionReassignmentsResponse) -> Self {
        let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<i32>>();
        self.reassigning = response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| ReassignmentRow {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    replicas: ids(&p.replicas),
                    adding_replicas: ids(&p.adding_replicas),
                    removing_replicas: ids(&p.removing_replicas),
                })
            })
            .collect();
        self.reassigning
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self
    }

    /// The text `strata cluster status` prints: the cluster, a table of brokers (the missing ones
    /// last), then the partitions that need attention.
    pub fn render(&self) -> String {
        let controller = self
            .controller_id
            .map_or_else(|| "none known".to_string(), |id| id.to_string());
        let mut out = format!(
            "cluster id  {}\ncontroller  {controller}\nasked       {}\n\n",
            if self.cluster_id.is_empty() {
                "-"
            } else {
                &self.cluster_id
            },
            self.asked
        );
        let mut rows: Vec<Vec<String>> = self
            .brokers
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    format!("{}:{}", b.host, b.port),
                    or_dash(b.rack.clone()),
                    if b.controller {
                        "live, controller"
                    } else {
                        "live"
                    }
                    .to_string(),
                ]
            })
            .collect();
        rows.extend(
            self.missing_brokers
                .iter()
                .map(|id| vec![id.to_string(), "-".into(), "-".into(), "missing".into()]),
        );
        out.push_str(&table(&["BROKER", "HOST:PORT", "RACK", "STATUS"], &rows));
        out.push_str(&format!(
            "\n\n{} topic(s), {} partition(s): {} under-replicated, {} offline",
            self.topic_count,
            self.partition_count,
            self.under_replicated.len(),
            self.offline.len()
        ));
        if !self.reassigning.is_empty() {
            out.push_str(&format!(", {} reassigning", self.reassigning.len()));
        }
        for (title, partitions) in [
            ("UNDER-REPLICATED", &self.under_replicated),
            ("OFFLINE", &self.offline),
        ] {
            if !partitions.is_empty() {
                out.push_str(&format!("\n\n{title}\n{}", partition_table(partitions)));
            }
        }
        if !self.reassigning.is_empty() {
            out.push_str(&format!(
                "\n\nREASSIGNING\n{}",
                reassignment_table(&self.reassigning)
            ));
        }
        if !self.unreadable_topics.is_empty() {
            out.push('\n');
        }
        for t in &self.unreadable_topics {
            out.push_str(&format!(
                "\ntopic {:?} could not be described: {} (Kafka error {})",
                t.topic, t.error, t.error_code
            ));
        }
        out
    }
}

fn partition_table(partitions: &[PartitionRow]) -> String {
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                or_dash(p.leader),
                p.leader_epoch.to_string(),
                list(&p.replicas),
                list(&p.isr),
                list(&p.offline_replicas),
            ]
        })
        .collect();
    table(
        &[
            "TOPIC",
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "ISR",
            "OFFLINE-REPLICAS",
        ],
        &rows,
    )
}

fn reassignment_table(rows: &[ReassignmentRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partition.to_string(),
                list(&r.replicas),
                list(&r.adding_replicas),
                list(&r.removing_replicas),
            ]
        })
        .collect();
    table(
        &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
        &rows,
    )
}

/// Broker ids separated by commas, `-` for none.
fn list(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Asks the first broker of `bootstrap` (`HOST:PORT`, or several separated by commas, tried in
/// turn) that answers.
pub fn status(bootstrap: &str) -> Result<ClusterStatus> {
    status_with(bootstrap, &crate::admin::ClientSecurity::default())
}

/// As [`status`], connecting as `security` says (TLS, SASL).
pub fn status_with(
    bootstrap: &str,
    security: &crate::admin::ClientSecurity,
) -> Result<ClusterStatus> {
    let addresses: Vec<&str> = bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if addresses.is_empty() {
        bail!("--bootstrap {bootstrap:?}: no HOST:PORT");
    }
    let mut failures = BTreeMap::new();
    for address in addresses {
        match ask(address, security) {
            Ok(status) => return Ok(status),
            Err(e) => {
                tracing::debug!(broker = address, error = %format!("{e:#}"), "no status");
                failures.insert(address, format!("{e:#}"));
            }
        }
    }
    let reasons: Vec<String> = failures
        .into_iter()
        .map(|(address, e)| format!("{address}: {e}"))
        .collect();
    bail!("no broker answered ({})", reasons.join("; "))
}

fn ask(address: &str, security: &crate::admin::ClientSecurity) -> Result<ClusterStatus> {
    let mut client = AdminClient::connect_with(address, security)?;
    let metadata = client.call(
        &MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false),
        METADATA_VERSION,
    )?;
    let cluster = client.call(&DescribeClusterRequest::default(), DESCRIBE_CLUSTER_VERSION)?;
    if let Some(error) = ResponseError::try_from_code(cluster.error_code) {
        let detail = cluster
            .error_message
            .as_ref()
            .map_or_else(String::new, |m| format!(": {}", m.as_str()));
        bail!(
            "describing the cluster: {error} (Kafka error {}){detail}",
            cluster.error_code
        );
    }
    let status = ClusterStatus::from_responses(address, &metadata, &cluster);
    let reassignments = client.call(
        &ListPartitionReassignmentsRequest::default(),
        LIST_REASSIGNMENTS_VERSION,
    )?;
    if let Some(error) = ResponseError::try_from_code(reassignments.error_code) {
        bail!(
            "listing reassignments: {error} (Kafka error {})",
            reassignments.error_code
        );
    }
    Ok(status.with_reassignments(&reassignments))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn broker(id: i32, rack: Option<&str>) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str("10.0.0.1"))
            .with_port(9000 + id)
            .with_rack(rack.map(|r| StrBytes::from_string(r.to_string())))
    }

    fn partition(
        index: i32,
        leader: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> MetadataResponsePartition {
        let ids = |ids: &[i32]| ids.iter().map(|&i| BrokerId(i)).collect::<Vec<_>>();
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(4)
            .with_replica_nodes(ids(replicas))
            .with_isr_nodes(ids(isr))
    }

    fn topic(name: &str, partitions: Vec<MetadataResponsePartition>) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
            .with_partitions(partitions)
    }

    fn cluster(controller: i32) -> DescribeClusterResponse {
        DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_static_str("c-1"))
            .with_controller_id(BrokerId(controller))
    }

    #[test]
    fn a_healthy_cluster_has_nothing_to_report() {
        let metadata = MetadataResponse::default()
            .with_brokers(vec![broker(2, Some("b")), broker(1, Some("a"))])
            .with_topics(vec![topic(
                "t",
                vec![
                    partition(0, 1, &[1, 2], &[1, 2]),
                    partition(1, 2, &[2, 1], &[2, 1]),
                ],
            )]);
        let status = ClusterStatus::from_responses("h:1", &metadata, &cluster(2));
        assert!(status.every_partition_led());
        assert_eq!(status.controller_id, Some(2));
        assert_eq!(
            status
                .brokers
                .iter()
                .map(|b| (b.id, b.controller))
                .collect::<Vec<_>>(),
            vec![(1, false), (2, true)]
        );
        assert!(status.missing_brokers.is_empty() && status.under_replicated.is_empty());
        assert_eq!((status.topic_count, status.partition_count), (1, 2));
        let text = status.render();
        assert!(text.contains("controller  2"), "{text}");
        assert!(
            text.contains("2       10.0.0.1:9002  b     live, controller"),
            "{text}"
        );
        assert!(text.contains("0 under-replicated, 0 offline"), "{text}");
        assert!(!text.contains("UNDER-REPLICATED"), "{text}");
    }

    #[test]
    fn a_lost_broker_is_missing_and_its_partitions_under_replicated_or_offline() {
        let metadata = MetadataResponse::default()
            .with_brokers(vec![broker(1, None), broker(2, None)])
            .with_topics(vec![
                topic(
                    "rf3",
                    vec![
                        partition(1, 2, &[3, 2, 1], &[2, 1]),
                        partition(0, 1, &[1, 2, 3], &[1, 2]),
                        partition(2, 2, &[2, 3, 1], &[2, 3, 1]),
                    ],
                ),
                topic("rf1", vec![partition(0, -1, &[3], &[3])]),
                MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("gone"))))
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            ]);
        let status = ClusterStatus::from_responses("h:1", &metadata, &cluster(-1));
        assert!(!status.every_partition_led());
        assert_eq!(status.controller_id, None);
        assert_eq!(status.missing_brokers, vec![3]);
        let under: Vec<(&str, i32)> = status
            .under_replicated
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect();
        assert_eq!(under, vec![("rf3", 0), ("rf3", 1)]);
        assert_eq!(status.offline.len(), 1);
        assert_eq!(status.offline[0].leader, None);
        assert_eq!(status.unreadable_topics[0].topic, "gone");
        assert_eq!((status.topic_count, status.partition_count), (3, 4));
        let text = status.render();
        assert!(text.contains("controller  none known"), "{text}");
        assert!(
            text.contains("\n3       -              -     missing"),
            "{text}"
        );
        assert!(text.contains("2 under-replicated, 1 offline"), "{text}");
        assert!(text.contains("OFFLINE\nTOPIC"), "{text}");
        assert!(
            text.contains("rf1    0          -       4      3         3"),
            "{text}"
        );
        assert!(
            text.contains("-\n\ntopic \"gone\" could not be described"),
            "{text}"
        );
        // The JSON carries the same facts.
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["missing_brokers"], serde_json::json!([3]));
        assert_eq!(json["offline"][0]["leader"], serde_json::Value::Null);
        assert_eq!(
            json["under_replicated"][1]["isr"],
            serde_json::json!([2, 1])
        );
    }

    #[test]
    fn reassignments_in_progress_are_listed() {
        use kafka_protocol::messages::list_partition_reassignments_response::{
            OngoingPartitionReassignment, OngoingTopicReassignment,
        };
        let metadata = MetadataResponse::default()
            .with_brokers(vec![broker(1, None), broker(2, None), broker(3, None)])
            .with_topics(vec![topic(
                "orders",
                vec![
                    partition(0, 1, &[1, 2], &[1, 2]),
                    partition(1, 1, &[2, 3, 1], &[1, 2]),
                ],
            )]);
        let status = ClusterStatus::from_responses("h:1", &metadata, &cluster(1));
        assert!(!status.render().contains("reassigning"));
        let ids = |ids: &[i32]| ids.iter().map(|&i| BrokerId(i)).collect::<Vec<_>>();
        let listed = ListPartitionReassignmentsResponse::default().with_topics(vec![
            OngoingTopicReassignment::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    OngoingPartitionReassignment::default()
                        .with_partition_index(1)
                        .with_replicas(ids(&[2, 3, 1]))
                        .with_adding_replicas(ids(&[3]))
                        .with_removing_replicas(ids(&[1])),
                ]),
        ]);
        let status = status.with_reassignments(&listed);
        assert!(status.every_partition_led());
        let text = status.render();
        assert!(
            text.contains("1 under-replicated, 0 offline, 1 reassigning"),
            "{text}"
        );
        assert!(text.contains("REASSIGNING\nTOPIC"), "{text}");
        assert!(
            text.contains("orders  1          2,3,1     3       1"),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["reassigning"][0]["adding_replicas"],
            serde_json::json!([3])
        );
    }

    #[test]
    fn an_empty_bootstrap_is_an_error() {
        let e = status(" , ").unwrap_err().to_string();
        assert!(e.contains("no HOST:PORT"), "{e}");
    }
}
