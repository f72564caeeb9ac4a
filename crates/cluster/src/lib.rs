//! # strata-cluster
//!
//! The metadata quorum of a Strata cluster, in Kafka KRaft's shape: the brokers named in
//! `controller.quorum.voters` run a Raft group (the `openraft` crate, 0.9) whose log holds the
//! cluster metadata: brokers and their sessions, topics and configs, replica assignments, and per
//! partition the leader, leader epoch and ISR. The Raft leader is the active controller: it turns
//! broker heartbeats into registrations and missed heartbeats into fencing, and commits every
//! change; every broker applies the committed log and reads the result from
//! [`ClusterNode::state`]. Brokers outside the quorum (observers) pull the state from the voters.
//!
//! ## Layout
//! - [`state`]: [`ClusterState`], the [`Command`]s that change it and the pure, deterministic
//!   [`ClusterState::apply`] (KRaft's leader and ISR rules).
//! - [`placement`]: [`place`], rack-aware replica placement, pure.
//! - `node`: [`ClusterNode`] and [`NodeConfig`]: start, state, submit (forwarded to the active
//!   controller), the broker heartbeat, observers' state pulls, controlled shutdown.
//! - `controller`: the active controller's duties: broker leases, registration, the cluster id.
//! - `raft`: openraft's type configuration and timing (a dead controller is replaced in 1-2 s).
//! - `storage`: Raft storage under `meta_dir`: the log journal and vote (`storage/log.rs`), the
//!   state machine and its snapshot (`storage/state_machine.rs`), all fsynced before openraft is
//!   answered.
//! - `wire`: the controller protocol: length-prefixed JSON frames, bounded to 64 MiB.
//! - `network`: outgoing calls over pooled connections, and openraft's `RaftNetwork` on them.
//! - `server`: a voter's controller listener.
//!
//! Both are plain TCP, or mutual TLS with a [`QuorumTls`] in the [`NodeConfig`].
//! - [`error`]: the error type.
//!
//! ## Example
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use strata_cluster::{BrokerEndpoint, ClusterNode, Command, NodeConfig, Response};
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), strata_cluster::Error> {
//! // A quorum of one voter: bind the controller listener first, then name it as the voter.
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let voters = BTreeMap::from([(1, listener.local_addr().unwrap())]);
//! let dir = tempfile::tempdir().unwrap();
//! let endpoint = BrokerEndpoint { host: "localhost".into(), port: 9092, rack: None, listeners: vec![] };
//! let mut config = NodeConfig::new(1, dir.path().into(), voters, endpoint);
//! config.heartbeat_interval = Duration::from_millis(100);
//! let node = ClusterNode::start(config, Some(listener)).await?;
//! let response = node.submit(Command::AllocateProducerIds { count: 1000 }, Duration::from_secs(10)).await?;
//! assert!(matches!(response, Response::ProducerIdBlock { .. }));
//! // submit returns once this node applied the command.
//! assert!(node.state().borrow().producer_id_block_end >= 1000);
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod controller;
pub mod error;
mod network;
mod node;
pub mod placement;
mod raft;
mod server;
pub mod state;
mod storage;
mod wire;

pub use crate::error::{Error, Result};
pub use crate::node::{
    BrokerEndpoint, ClusterNode, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_SESSION_TIMEOUT, NodeConfig,
    QuorumTls, QuorumTlsConfigs,
};
pub use crate::placement::place;
pub use crate::state::{
    BrokerInfo, ClusterState, Command, ListenerEndpoint, NO_LEADER, PartitionState, RejectKind,
    Response, SecurityChange, SecurityExpectation, TopicState,
};
