//! [`ClusterNode`]: one broker's membership in the cluster. A voter runs a Raft node, serves the
//! controller protocol and, while it leads, the controller duties; every node heartbeats for its
//! broker, and a node outside the quorum (an observer) pulls the state from the voters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::controller::{Leases, leads};
use crate::error::{Error, Result};
use crate::network::{Network, Peers};
use crate::raft::{Compaction, Raft, kafka_id, raft_config, raft_id};
use crate::state::{ClusterState, Command, Response};
use crate::storage::{LogStore, StateMachine, blocking};
use crate::wire::{Reply, Request};

/// `heartbeat_interval` default: Kafka's `broker.heartbeat.interval.ms` is 2 s; ours is shorter
/// because observers also pull the metadata at this pace.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// `session_timeout` default: Kafka's `broker.session.timeout.ms`.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(9);
/// Retry pause bounds of [`ClusterNode::submit`] while the controller moves.
const SUBMIT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const SUBMIT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest wait for the controller to fence this node at a controlled shutdown.
const SHUTDOWN_FENCE_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// What clients dial to reach a broker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct BrokerEndpoint {
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Every advertised listener (`host`/`port` above are the inter-broker one's).
    #[serde(default)]
    pub listeners: Vec<crate::state::ListenerEndpoint>,
}

/// Where the TLS configs of the metadata quorum come from (`controller.listener.names` naming an
/// SSL listener): mutual TLS, each side presenting its certificate and verifying the other's.
/// Asked at every new connection, so that renewed certificates are used without a restart.
pub trait QuorumTlsConfigs: Send + Sync {
    /// What a voter's controller listener accepts with; it must require client certificates.
    fn server(&self) -> Arc<rustls::ServerConfig>;
    /// What this node connects to the voters with (its certificate, the trusted CAs).
    fn client(&self) -> Arc<rustls::ClientConfig>;
    /// Whether a peer whose certificate chain (leaf first) the truststore verified may use the
    /// quorum: its commands rewrite the whole metadata, credentials and ACLs included. `Err`
    /// names why not; the connection is then closed before any request is read. Every verified
    /// peer by default.
    fn admit(
        &self,
        peer_certificates: &[rustls_pki_types::CertificateDer<'_>],
    ) -> Result<(), String> {
        let _ = peer_certificates;
        Ok(())
    }
}

/// TLS for every connection of the metadata quorum.
#[derive(Clone)]
pub struct QuorumTls(pub Arc<dyn QuorumTlsConfigs>);

impl QuorumTls {
    /// The same configs for every connection.
    pub fn fixed(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Self {
        struct Fixed(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);
        impl QuorumTlsConfigs for Fixed {
            fn server(&self) -> Arc<rustls::ServerConfig> {
                Arc::clone(&self.0)
            }
            fn client(&self) -> Arc<rustls::ClientConfig> {
                Arc::clone(&self.1)
            }
        }
        Self(Arc::new(Fixed(server, client)))
    }
}

impl std::fmt::Debug for QuorumTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuorumTls")
    }
}

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `node.id` (>= 0).
    pub node_id: i32,
    /// Raft files live here (vote, log, snapshot); only voters use it.
    pub meta_dir: PathBuf,
    /// `controller.quorum.voters`: the voters' controller addresses by node id.
    pub voters: BTreeMap<i32, SocketAddr>,
    /// What clients dial to reach this broker.
    pub broker: BrokerEndpoint,
    /// How often this broker heartbeats to the controller (and an observer pulls the state).
    pub heartbeat_interval: Duration,
    /// `broker.session.timeout.ms`: a broker not heard from for this long is fenced.
    pub session_timeout: Duration,
    /// TLS for the quorum's connections; `None`: plain TCP.
    pub tls: Option<QuorumTls>,
}

impl NodeConfig {
    /// A config with the default heartbeat interval and session timeout.
    pub fn new(
        node_id: i32,
        meta_dir: PathBuf,
        voters: BTreeMap<i32, SocketAddr>,
        broker: BrokerEndpoint,
    ) -> Self {
        Self {
            node_id,
            meta_dir,
            voters,
            broker,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            tls: None,
        }
    }

    fn validate(&self, has_listener: bool) -> Result<()> {
        let invalid = |why: String| Err(Error::Config(why));
        if self.node_id < 0 {
            return invalid(format!("node.id {} < 0", self.node_id));
        }
        if self.voters.is_empty() {
            return invalid("controller.quorum.voters is empty".into());
        }
        if let Some(id) = self.voters.keys().find(|&&id| id < 0) {
            return invalid(format!("voter id {id} < 0"));
        }
        let is_voter = self.voters.contains_key(&self.node_id);
        if is_voter != has_listener {
            return invalid(format!(
                "node {} is {}a voter but has {}controller listener",
                self.node_id,
                if is_voter { "" } else { "not " },
                if has_listener { "a " } else { "no " },
            ));
        }
        if self.heartbeat_interval.is_zero() || self.session_timeout <= self.heartbeat_interval {
            return invalid(format!(
                "heartbeat interval {:?} must be > 0 and below the session timeout {:?}",
                self.heartbeat_interval, self.session_timeout
            ));
        }
        Ok(())
    }
}

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    raft: Option<Raft>,
    state: Arc<watch::Sender<Arc<ClusterState>>>,
    pub(crate) peers: Arc<Peers>,
    /// An observer's last known controller (-1: unknown). Voters ask their Raft node.
    controller_hint: AtomicI32,
    /// Which voter an observer asks next when it knows no controller.
    next_voter: AtomicUsize,
    pub(crate) leases: Mutex<Leases>,
    stopped: AtomicBool,
}

impl Shared {
    pub(crate) fn raft(&self) -> Option<&Raft> {
        self.raft.as_ref()
    }

    pub(crate) fn current_state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    pub(crate) fn controller_id(&self) -> Option<i32> {
        match &self.raft {
            Some(raft) => raft.metrics().borrow().current_leader.and_then(kafka_id),
            None => Some(self.controller_hint.load(Ordering::Relaxed)).filter(|&id| id >= 0),
        }
    }

    fn note_controller(&self, leader: Option<i32>) {
        if self.raft.is_none() {
            self.controller_hint
                .store(leader.unwrap_or(-1), Ordering::Relaxed);
        }
    }

    /// The voter to ask: the controller if known, else (observers) the voters in turn.
    fn target(&self) -> Option<(i32, SocketAddr)> {
        let voters = &self.config.voters;
        if let Some(id) = self.controller_id() {
            return voters.get(&id).map(|addr| (id, *addr));
        }
        if self.raft.is_some() {
            // A voter without a leader waits for the election rather than asking around.
            return None;
        }
        let n = self.next_voter.fetch_add(1, Ordering::Relaxed) % voters.len();
        voters.iter().nth(n).map(|(id, addr)| (*id, *addr))
    }

    /// Commits `command` through this node's Raft node, which must lead. Never forwards (a
    /// forwarded submit must not bounce on).
    pub(crate) async fn submit_local(&self, command: Command) -> Result<(Response, u64)> {
        let Some(raft) = &self.raft else {
            return Err(Error::NotController { leader: None });
        };
        // Bounded by the session timeout: a leader cut off from its quorum never commits, and
        // steps down only once it hears of a newer term.
        let timeout = self.config.session_timeout;
        let name = command.name();
        let written = tokio::time::timeout(timeout, raft.client_write(command))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("local commit of {name}"),
                after: timeout,
            })?;
        match written {
            Ok(written) => Ok((written.data, written.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Error::NotController {
                    leader: forward.leader_id.and_then(kafka_id),
                })
            }
            // The Raft node stopped (shutdown or a storage fault): this node cannot commit any more.
            Err(RaftError::Fatal(fatal)) => {
                tracing::warn!(node = self.config.node_id, error = %fatal, "raft node stopped");
                Err(Error::Stopped)
            }
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// One attempt: commits here if this voter leads, else through the controller. Returns the
    /// response, the log index, and the node that answered (`None`: this one).
    async fn submit_once(
        &self,
        command: &Command,
        timeout: Duration,
    ) -> Result<(Response, u64, Option<i32>)> {
        let target = if self.raft.is_some() {
            match self.submit_local(command.clone()).await {
                Ok((response, index)) => return Ok((response, index, None)),
                Err(Error::NotController {
                    leader: Some(leader),
                }) if leader != self.config.node_id => {
                    self.config.voters.get(&leader).map(|addr| (leader, *addr))
                }
                Err(e) => return Err(e),
            }
        } else {
            self.target()
        };
        let Some((id, addr)) = target else {
            return Err(Error::NotController { leader: None });
        };
        match self
            .peers
            .call(addr, &Request::Submit(command.clone()), timeout)
            .await?
        {
            Reply::Submitted { response, index } => {
                self.note_controller(Some(id));
                Ok((response, index, Some(id)))
            }
            Reply::NotController { leader } => {
                self.note_controller(leader);
                Err(Error::NotController { leader })
            }
            Reply::Failed { message } => Err(Error::Raft(message)),
            other => Err(Error::Protocol {
                peer: addr.to_string(),
                reason: format!("unexpected reply to a submit: {other:?}"),
            }),
        }
    }

    pub(crate) async fn submit(&self, command: Command, timeout: Duration) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        let mut backoff = SUBMIT_BACKOFF_MIN;
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                return Err(Error::Stopped);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining, self.submit_once(&command, remaining)).await;
            let error = match attempt {
                Ok(Ok((response, index, from))) => {
                    self.wait_applied(index, from, deadline).await?;
                    return Ok(response);
                }
                // The controller moved or is being elected, or a peer is down or slow: another
                // attempt may find the new one.
                Ok(Err(
                    e @ (Error::NotController { .. }
                    | Error::Unreachable { .. }
                    | Error::Io { .. }
                    | Error::Timeout { .. }
                    | Error::Protocol { .. }
                    | Error::Raft(_)),
                )) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            };
            tracing::debug!(node = self.config.node_id, error = %error, "submit retries");
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(SUBMIT_BACKOFF_MAX);
        }
        Err(Error::Timeout {
            what: format!("commit of {}", command.name()),
            after: timeout,
        })
    }

    /// Waits until this node's state has applied log index `index`. An observer pulls it from
    /// `from`, the controller that committed it (and so has applied it).
    async fn wait_applied(&self, index: u64, from: Option<i32>, deadline: Instant) -> Result<()> {
        let timed_out = || Error::Timeout {
            what: format!("apply of log index {index} on node {}", self.config.node_id),
            after: deadline.saturating_duration_since(Instant::now()),
        };
        let from_addr = from.and_then(|id| self.config.voters.get(&id).copied());
        match (&self.raft, from_addr) {
            (None, Some(addr)) => loop {
                if self.current_state().applied_index >= index {
                    return Ok(());
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(timed_out());
                }
                let _ = self.fetch_state(addr, remaining).await;
                if self.current_state().applied_index < index {
                    // `from` lost its leadership and lags, or is unreachable: ask again shortly.
                    tokio::time::sleep(SUBMIT_BACKOFF_MIN.min(remaining)).await;
                }
            },
            _ => {
                let mut state = self.state.subscribe();
                tokio::time::timeout_at(deadline, state.wait_for(|s| s.applied_index >= index))
                    .await
                    .map_err(|_| timed_out())?
                    .map(|_| ())
                    .map_err(|_| Error::Stopped)
            }
        }
    }

    /// Pulls the state from the voter at `addr` and publishes it if newer.
    async fn fetch_state(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let applied_index = self.current_state().applied_index;
        match self
            .peers
            .call(addr, &Request::FetchState { applied_index }, timeout)
            .await?
        {
            Reply::State { controller, state } => {
                self.note_controller(controller);
                if let Some(state) = state {
                    self.state.send_if_modified(|current| {
                        let newer = state.applied_index > current.applied_index;
                        if newer {
                            *current = Arc::new(*state);
                        }
                        newer
                    });
                }
                Ok(())
            }
            other => Err(Error::Protocol {
                peer: addr.to_string(),
                reason: format!("unexpected reply to a state fetch: {other:?}"),
            }),
        }
    }

    /// The reply to a `FetchState`.
    pub(crate) fn state_reply(&self, applied_index: u64) -> Reply {
        let state = self.current_state();
        Reply::State {
            controller: self.controller_id(),
            state: (state.applied_index > applied_index).then(|| Box::new(state.as_ref().clone())),
        }
    }

    /// This broker's heartbeat; an observer also pulls the state. Runs every heartbeat interval.
    async fn member_loop(self: Arc<Self>) {
        let interval = self.config.heartbeat_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // An answer later than two intervals is as good as lost: the next tick asks again.
        let rpc_timeout = interval * 2;
        loop {
            tick.tick().await;
            if let Err(e) = self.heartbeat(rpc_timeout).await {
                tracing::debug!(node = self.config.node_id, error = %e, "heartbeat failed");
            }
            if self.raft.is_none()
                && let Some((_, addr)) = self.target()
                && let Err(e) = self.fetch_state(addr, rpc_timeout).await
            {
                tracing::debug!(node = self.config.node_id, error = %e, "state fetch failed");
                self.note_controller(None);
            }
        }
    }

    async fn heartbeat(&self, timeout: Duration) -> Result<()> {
        let id = self.config.node_id;
        let endpoint = self.config.broker.clone();
        let reply = if self.raft.as_ref().is_some_and(leads) {
            self.on_heartbeat(id, endpoint).await
        } else {
            let Some((target, addr)) = self.target() else {
                return Ok(());
            };
            let reply = self
                .peers
                .call(addr, &Request::Heartbeat { id, endpoint }, timeout)
                .await?;
            if matches!(reply, Reply::HeartbeatAck) {
                self.note_controller(Some(target));
            }
            reply
        };
        match reply {
            Reply::HeartbeatAck => Ok(()),
            Reply::NotController { leader } => {
                self.note_controller(leader);
                Err(Error::NotController { leader })
            }
            Reply::Failed { message } => Err(Error::Raft(message)),
            other => Err(Error::Protocol {
                peer: "controller".into(),
                reason: format!("unexpected reply to a heartbeat: {other:?}"),
            }),
        }
    }
}

/// A broker's membership in the cluster; see the crate docs.
pub struct ClusterNode {
    shared: Arc<Shared>,
    /// The member loop (heartbeats), stopped first at a controlled shutdown.
    member: Mutex<Option<JoinHandle<()>>>,
    /// The controller loop and the server.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ClusterNode {
    /// Starts the node. A voter serves Raft and controller RPCs on `controller_listener`
    /// (Some for voters: a bound std listener, so tests can bind port 0 first; None for brokers
    /// outside the quorum, which only send RPCs to the voters).
    pub async fn start(
        config: NodeConfig,
        controller_listener: Option<std::net::TcpListener>,
    ) -> Result<Arc<Self>> {
        Self::start_with(config, controller_listener, Compaction::default()).await
    }

    /// [`Self::start`] with a log compaction policy (tests compact early to exercise snapshots).
    pub(crate) async fn start_with(
        config: NodeConfig,
        controller_listener: Option<std::net::TcpListener>,
        compaction: Compaction,
    ) -> Result<Arc<Self>> {
        config.validate(controller_listener.is_some())?;
        let (state, _) = watch::channel(Arc::new(ClusterState::default()));
        let state = Arc::new(state);
        let peers = Arc::new(Peers::new(config.tls.clone()));
        let raft = match &controller_listener {
            Some(_) => {
                let raft = start_raft(&config, compaction, Arc::clone(&state), Arc::clone(&peers));
                Some(raft.await?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            config,
            raft,
            state,
            peers,
            controller_hint: AtomicI32::new(-1),
            next_voter: AtomicUsize::new(0),
            leases: Mutex::new(Leases::new(Instant::now())),
            stopped: AtomicBool::new(false),
        });
        let mut tasks = Vec::new();
        if let Some(listener) = controller_listener {
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| Error::io("controller listener", e))?;
            initialize(&shared).await?;
            tasks.push(tokio::spawn(crate::server::serve(
                listener,
                Arc::clone(&shared),
            )));
            tasks.push(tokio::spawn(Arc::clone(&shared).controller_loop()));
        }
        let member = tokio::spawn(Arc::clone(&shared).member_loop());
        Ok(Arc::new(Self {
            shared,
            member: Mutex::new(Some(member)),
            tasks: Mutex::new(tasks),
        }))
    }

    /// The last applied metadata; changes whenever a committed entry is applied (observers: pulled).
    ///
    /// A voter starts with what its own log and snapshot hold; an observer starts empty
    /// (`applied_index` 0) until its first pull, one heartbeat interval at most once a voter answers.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.state.subscribe()
    }

    /// The active controller (Raft leader) if known.
    pub fn controller_id(&self) -> Option<i32> {
        self.shared.controller_id()
    }

    /// This node's id.
    pub fn node_id(&self) -> i32 {
        self.shared.config.node_id
    }

    /// Commits `cmd` through the active controller (forwarding over RPC when this node is not it),
    /// retrying leader changes until `timeout` has passed; returns the apply Response once this
    /// node's state() has applied it too (so the caller reads its own write).
    ///
    /// A retry after a lost answer may commit the command twice (the second application then
    /// usually gets a `Rejected`, e.g. `TopicAlreadyExists`), as with any Raft client.
    pub async fn submit(&self, cmd: Command, timeout: Duration) -> Result<Response> {
        self.shared.submit(cmd, timeout).await
    }

    /// Controlled shutdown: FenceBroker{self} committed (leadership moves away), then stops.
    ///
    /// Heartbeats stop first, so the controller does not register the broker again; a voter that
    /// leads stops its Raft node after the fence commits, and the other voters elect a new
    /// controller within an election timeout (openraft 0.9 has no leadership transfer).
    pub async fn shutdown(&self) {
        if let Some(member) = self.member.lock().take() {
            member.abort();
        }
        let id = self.shared.config.node_id;
        let timeout = self
            .shared
            .config
            .session_timeout
            .min(SHUTDOWN_FENCE_TIMEOUT_MAX);
        match self
            .shared
            .submit(Command::FenceBroker { id }, timeout)
            .await
        {
            Ok(response) => {
                tracing::info!(node = id, ?response, "fenced for a controlled shutdown")
            }
            Err(e) => {
                tracing::warn!(node = id, error = %e, "controlled shutdown could not fence this broker")
            }
        }
        self.shared.stopped.store(true, Ordering::Relaxed);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        if let Some(raft) = &self.shared.raft
            && let Err(e) = raft.shutdown().await
        {
            tracing::warn!(node = id, error = %e, "raft shutdown");
        }
    }
}

impl Drop for ClusterNode {
    /// Stops every task without fencing, as a crash would (minus the process exit).
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        if let Some(member) = self.member.get_mut().take() {
            member.abort();
        }
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
        if let Some(raft) = self.shared.raft.clone()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

async fn start_raft(
    config: &NodeConfig,
    compaction: Compaction,
    state: Arc<watch::Sender<Arc<ClusterState>>>,
    peers: Arc<Peers>,
) -> Result<Raft> {
    let dir = config.meta_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let (log, state_machine) =
        blocking(move || Ok((LogStore::open(&dir)?, StateMachine::open(&dir, state)?))).await?;
    Raft::new(
        raft_id(config.node_id),
        raft_config(compaction)?,
        Network { peers },
        log,
        state_machine,
    )
    .await
    .map_err(|e| Error::Raft(format!("start: {e}")))
}

/// A voter with empty storage proposes the configured voters as the first membership. Every
/// voter may; the same membership from several is safe, and one already initialised refuses.
async fn initialize(shared: &Shared) -> Result<()> {
    let Some(raft) = shared.raft() else {
        return Ok(());
    };
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = shared
        .config
        .voters
        .iter()
        .map(|(id, addr)| (raft_id(*id), BasicNode::new(addr.to_string())))
        .collect();
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Raft(format!("initialize: {e}"))),
    }
}

#[cfg(test)]
mod tests;
