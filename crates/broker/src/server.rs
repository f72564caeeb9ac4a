//! The TCP server: accepts connections, reads frames, hands them to the dispatcher in order and
//! writes responses in request order; runs log maintenance; shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use strata_coordinator::offsets_log::LocalOffsetsLog;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::config::BrokerConfig;
use crate::dir_lock::DataDirLock;
use crate::error::{Error, Result};
use crate::frame;
use crate::groups::Groups;
use crate::handler::{self, Context, Reply};
use crate::manager::PartitionManager;
use crate::metadata::LocalMetadataStore;
use crate::security::SecurityStore;
use crate::security::sasl::{Gate, SaslConnection};
use crate::security::tls::TlsServer;
use crate::session::Session;
use crate::txn::Txns;

pub(crate) mod limits;
mod listeners;

/// Connections served at once by default (`max.connections`); more wait in the kernel's accept
/// queue.
pub const CONNECTIONS_MAX: usize = 4096;
/// Responses queued per connection before the broker stops reading its requests (pipelining
/// depth; clients use 5 by default).
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
/// How often roll and flush decisions run.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often group timers (sessions, rebalance deadlines) are checked.
const GROUP_TICK_INTERVAL: Duration = Duration::from_millis(50);
/// How long shutdown waits for connections to finish their in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest frame read from a SASL client that has not authenticated yet (Kafka's
/// `sasl.server.max.receive.size` default): its requests are ApiVersions and SASL tokens, all
/// small. Without it a stranger could declare `socket.request.max.bytes` and, sending nothing
/// more, hold that much of `queued.max.request.bytes`, which every connection waits on.
const SASL_UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 512 * 1024;
/// How long a client of a SASL listener has to authenticate after connecting: a connection
/// that never does must not keep one of the [`CONNECTIONS_MAX`] slots forever. Clients
/// authenticate at once (librdkafka and the Java client right after ApiVersions). Short in unit
/// tests, so that the test of it is quick.
const SASL_AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 30 });

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Every listener's name and bound address, in the order of `listeners`.
    listeners: Vec<(Arc<str>, SocketAddr)>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl BrokerHandle {
    /// The address the broker listens on (its first listener's).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of listener `name` (`PLAINTEXT`, `SSL`, …, as in `listeners`).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, addr)| *addr)
    }

    /// The address `/metrics`, `/health` and `/ready` are served on (`metrics.listen`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, answers in-flight requests, closes every log cleanly.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A token that shuts the broker down when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the broker has shut down.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Locks the data folder (one broker per folder: [`Error::DataDirInUse`] when another holds it),
/// opens it (recovering logs after a crash), binds the listener and starts serving. The lock is
/// released when the broker has stopped and closed its logs.
pub async fn start(config: BrokerConfig) -> Result<BrokerHandle> {
    let data_dir = config.data_dir.clone();
    // Before anything in the folder is opened, the lake's default folder included.
    let dir_lock = DataDirLock::acquire(&data_dir)?;
    let store = strata_lake::store::open(&config.tier_url, &config.tier_env)
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let group_lake = Arc::new(crate::groups::GroupLake::new(
        strata_lake::groups::GroupFiles::new(Arc::clone(&store)),
        config.lake_target_lag_ms(),
    ));
    let tables = crate::offload::Tables::new(Arc::clone(&store), &config.tier_url);
    let lake = Arc::new(
        crate::lake_view::LakeView::new(
            strata_lake::Lake::new(store),
            config.lake_read_cache_bytes(),
        )
        .with_limits(
            config.remote_copy_max_bytes_per_second(),
            config.remote_fetch_max_bytes_per_second(),
        ),
    );
    let fetch_session_slots = config.max_incremental_fetch_session_cache_slots();
    let quota_windows = {
        let (samples, window_ms) = config.quota_windows();
        crate::security::quota::Windows { samples, window_ms }
    };
    let acl_settings = config.acl_settings()?;
    // SASL settings that would authenticate no one stop the start, naming the setting.
    crate::security::sasl::check_config(&config).map_err(Error::InvalidConfig)?;
    let per_ip = Arc::new(config.connections_per_ip()?);
    // Before the partitions open: their segment files are cached within the limit found here.
    crate::open_files::fit_to_limit();
    let bound = listeners::bind(&config).await?;
    let local_addr = bound[0].local_addr;
    let (advertised_host, advertised_port) = bound[0].advertised.clone();
    let advertised_listeners: Vec<(Arc<str>, String, i32)> = bound
        .iter()
        .map(|b| {
            let (host, port) = b.advertised.clone();
            (Arc::clone(b.listener.name()), host, port)
        })
        .collect();
    let quorum_tls = quorum_tls(&config)?;
    let metrics_listener = bind_metrics(&config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let shutdown = CancellationToken::new();
    let mut replication = None;
    let (manager, groups) = if config.is_clustered() {
        let tls = quorum_tls.as_ref().map(|(tls, _)| tls.clone());
        let (node, isr_tx, isr_rx) =
            start_cluster_node(&config, &advertised_listeners, tls).await?;
        // Group state lives in the replicated __consumer_offsets (crate::groups).
        let groups = Groups::cluster(config.coordinator_config());
        let manager = {
            let node = Arc::clone(&node);
            tokio::task::spawn_blocking(move || {
                PartitionManager::open_cluster(config, node, isr_tx, now_ms())
            })
            .await
            .map_err(|e| Error::Metadata(format!("opening the data folder panicked: {e}")))??
        };
        replication = Some((node, isr_rx));
        (manager, groups)
    } else {
        let lake_state = read_lake_state(&lake).await;
        let (group_lake, runtime) = (Arc::clone(&group_lake), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let offsets_dir = data_dir.join("internal").join("__consumer_offsets-0");
            let coordinator = crate::groups::open_single(
                &offsets_dir,
                config.coordinator_config(),
                &group_lake,
                &runtime,
            )?;
            let groups = Groups::single(coordinator, config.coordinator_config());
            let store = Box::new(LocalMetadataStore::new(&data_dir));
            let manager = PartitionManager::open_with_lake(config, store, &lake_state, now_ms())?;
            Ok((manager, groups))
        })
        .await
        .map_err(|e| Error::Metadata(format!("opening the data folder panicked: {e}")))??
    };
    let manager = Arc::new(manager);
    let groups = Arc::new(groups);
    let security = Arc::new(match manager.cluster() {
        Some(node) => SecurityStore::cluster(Arc::clone(node)),
        None => SecurityStore::local(&manager.config().data_dir)?,
    });
    let txns = if manager.cluster().is_some() {
        Txns::cluster(Arc::clone(&manager), Arc::clone(&groups))
    } else {
        let txn_dir = manager
            .config()
            .data_dir
            .join("internal")
            .join("__transaction_state-0");
        let (m, g) = (Arc::clone(&manager), Arc::clone(&groups));
        tokio::task::spawn_blocking(move || -> Result<_> {
            let log = LocalOffsetsLog::open(&txn_dir, now_ms())?;
            Ok(Txns::single(Box::new(log), m, g)?)
        })
        .await
        .map_err(|e| Error::Metadata(format!("opening the transaction log panicked: {e}")))??
    };
    let mut background = Vec::new();
    let tls_servers: Vec<_> = bound
        .iter()
        .filter_map(|b| b.tls.clone())
        .chain(quorum_tls.map(|(_, server)| server))
        .collect();
    background.push(tokio::spawn(crate::security::tls::watch(
        tls_servers,
        shutdown.clone(),
    )));
    background.push(tokio::spawn(crate::txn::tick(
        Arc::clone(&txns),
        shutdown.clone(),
    )));
    background.push(tokio::spawn(crate::groups::copy_single_to_lake(
        Arc::clone(&groups),
        Arc::clone(&group_lake),
        shutdown.clone(),
    )));
    if let Some((node, isr_rx)) = replication {
        background.push(tokio::spawn(import_security_records(
            Arc::clone(&security),
            manager.config().data_dir.clone(),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::replication::run(
            Arc::clone(&manager),
            node,
            isr_rx,
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::groups::run(
            Arc::clone(&groups),
            Arc::clone(&manager),
            Arc::clone(&group_lake),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::groups::ensure_topic(
            Arc::clone(&manager),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::txn::run(
            Arc::clone(&txns),
            shutdown.clone(),
        )));
        let (partitions, rf) = (
            manager.config().transaction_state_num_partitions(),
            manager.config().transaction_state_replication_factor(),
        );
        background.push(tokio::spawn(crate::groups::ensure_internal_topic(
            Arc::clone(&manager),
            shutdown.clone(),
            crate::txn::TXN_TOPIC,
            partitions,
            rf,
        )));
    }
    let ctx = Arc::new(Context {
        manager,
        groups,
        txns,
        lake,
        advertised_host,
        advertised_port,
        advertised_listeners,
        shutdown: shutdown.clone(),
        fetch_sessions: crate::fetch_session::FetchSessionCache::new(fetch_session_slots),
        metrics,
        quotas: Arc::new(crate::security::quota::Quotas::new(quota_windows)),
        acl: crate::security::acl::Authorizer::new(acl_settings, Arc::clone(&security)),
        security,
    });
    let listener_addrs = bound
        .iter()
        .map(|b| (Arc::clone(b.listener.name()), b.local_addr))
        .collect();
    let metrics_addr = match metrics_listener {
        Some((listener, addr)) => {
            tokio::spawn(crate::metrics::serve(listener, Arc::clone(&ctx)));
            tracing::info!(%addr, "serving /metrics, /health and /ready");
            Some(addr)
        }
        None => None,
    };
    let task = tokio::spawn(run(ctx, bound, per_ip, dir_lock, background, tables));
    Ok(BrokerHandle {
        local_addr,
        metrics_addr,
        listeners: listener_addrs,
        shutdown,
        task,
    })
}

/// Binds `metrics.listen`, when it is set: the listener and its bound address.
async fn bind_metrics(
    config: &BrokerConfig,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>> {
    let Some(addr) = config.metrics_listen()? else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("binding the metrics listener {addr}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: "reading the metrics listener's address".into(),
        source,
    })?;
    Ok(Some((listener, bound)))
}

/// The channel on which leaders propose ISR changes.
type IsrChannel = (
    tokio::sync::mpsc::UnboundedSender<crate::replication::IsrChange>,
    tokio::sync::mpsc::UnboundedReceiver<crate::replication::IsrChange>,
);

/// Joins the metadata quorum (`controller.quorum.voters`), serving it on `controller.listen`
/// when this broker is a voter.
async fn start_cluster_node(
    config: &BrokerConfig,
    advertised: &[(Arc<str>, String, i32)],
    tls: Option<strata_cluster::QuorumTls>,
) -> Result<(
    Arc<strata_cluster::ClusterNode>,
    tokio::sync::mpsc::UnboundedSender<crate::replication::IsrChange>,
    tokio::sync::mpsc::UnboundedReceiver<crate::replication::IsrChange>,
)> {
    let voters = config.quorum_voters()?;
    let node_id = config.node_id();
    let controller_listen = config.controller_listen()?;
    let listener = match (voters.get(&node_id), controller_listen) {
        (Some(_), None) => {
            return Err(Error::InvalidConfig(format!(
                "node {node_id} is a voter in controller.quorum.voters: give it --controller-listen"
            )));
        }
        (Some(_), Some(addr)) => {
            Some(
                std::net::TcpListener::bind(addr).map_err(|source| Error::Io {
                    what: format!("binding the controller listener {addr}"),
                    source,
                })?,
            )
        }
        (None, _) => None,
    };
    let node_config = strata_cluster::NodeConfig {
        node_id,
        meta_dir: config.data_dir.join("meta").join("raft"),
        voters,
        broker: broker_endpoint(config, advertised)?,
        heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms() as u64),
        session_timeout: Duration::from_millis(config.session_timeout_ms() as u64),
        tls,
    };
    let node = strata_cluster::ClusterNode::start(node_config, listener)
        .await
        .map_err(|e| Error::Cluster(format!("starting the metadata quorum: {e}")))?;
    let (tx, rx): IsrChannel = tokio::sync::mpsc::unbounded_channel();
    Ok((node, tx, rx))
}

/// In a cluster: commits the security records written offline into the data folder (`strata
/// users add --data-dir`) once the metadata quorum answers, retrying until then.
async fn import_security_records(
    security: Arc<SecurityStore>,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        match security.import_local(&data_dir).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "importing the offline security records; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// What this broker registers: its inter-broker listener's advertised endpoint as the main one,
/// and every listener's by name (Metadata answers each client with its listener's endpoints).
fn broker_endpoint(
    config: &BrokerConfig,
    advertised: &[(Arc<str>, String, i32)],
) -> Result<strata_cluster::BrokerEndpoint> {
    let inter_broker = config.listeners()?.inter_broker;
    let listeners: Vec<strata_cluster::ListenerEndpoint> = advertised
        .iter()
        .map(|(name, host, port)| strata_cluster::ListenerEndpoint {
            name: name.to_string(),
            host: host.clone(),
            port: u16::try_from(*port).unwrap_or(0),
        })
        .collect();
    let main = listeners
        .iter()
        .find(|l| *l.name == *inter_broker)
        .unwrap_or(&listeners[0])
        .clone();
    Ok(strata_cluster::BrokerEndpoint {
        host: main.host,
        port: main.port,
        rack: config.rack(),
        listeners,
    })
}

/// The quorum's TLS and the server side [`crate::security::tls::watch`] checks for renewals.
type QuorumTlsFiles = (strata_cluster::QuorumTls, Arc<TlsServer>);

/// TLS for the metadata quorum when `controller.listener.names` names an SSL listener: the
/// keystore and truststore of that name (`listener.name.<name>.ssl.*`, else `ssl.*`), client
/// certificates required; with the server side to watch for renewed certificates.
fn quorum_tls(config: &BrokerConfig) -> Result<Option<QuorumTlsFiles>> {
    let Some((name, protocol)) = config.listeners()?.controller else {
        return Ok(None);
    };
    if !protocol.is_tls() {
        return Ok(None);
    }
    let settings = config.tls_settings(&name)?;
    let acls = config.acl_settings()?;
    let admitted = acls.enabled.then_some(acls.super_users);
    let (files, server) = crate::security::tls::QuorumFiles::load(settings, admitted)
        .map_err(Error::InvalidConfig)?;
    Ok(Some((strata_cluster::QuorumTls(Arc::new(files)), server)))
}

/// How long start-up waits for object storage before going on without the lake's state.
const LAKE_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads the lake's topics and manifests (and hands the manifests to the read path), so that a
/// broker that lost its data folder recovers its topics and continues their offsets.
async fn read_lake_state(view: &crate::lake_view::LakeView) -> crate::manager::LakeState {
    let lake = view.lake();
    let read = async {
        let topics = lake.topics().await?;
        let mut next_offsets = std::collections::HashMap::new();
        for (topic, partition) in lake.partitions().await? {
            let manifest = lake.manifest(&topic, partition).await?;
            view.set_manifest(&topic, partition, &manifest);
            if let Some(next) = manifest.resume_offset() {
                next_offsets.insert((topic, partition), next);
            }
        }
        Ok::<_, strata_lake::Error>(crate::manager::LakeState {
            topics,
            next_offsets,
        })
    };
    match tokio::time::timeout(LAKE_STARTUP_TIMEOUT, read).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the lake at start-up; starting from the local data only");
            crate::manager::LakeState::default()
        }
        Err(_) => {
            tracing::warn!(
                "object storage did not answer at start-up; starting from the local data only"
            );
            crate::manager::LakeState::default()
        }
    }
}

/// What a listener bound at `bound` tells clients: its advertised address (checked when the
/// settings were read), else the bound one.
fn advertised_endpoint(advertised: Option<&(String, u16)>, bound: SocketAddr) -> (String, i32) {
    let Some((host, port)) = advertised else {
        if bound.ip().is_unspecified() {
            tracing::warn!(%bound, "listening on all interfaces without --advertised: clients are told 127.0.0.1");
            return ("127.0.0.1".into(), i32::from(bound.port()));
        }
        return (bound.ip().to_string(), i32::from(bound.port()));
    };
    (host.clone(), i32::from(*port))
}

/// Serves until shutdown; `background` are the cluster's tasks (replication, the group
/// coordinators' leadership), stopped before the logs close.
async fn run(
    ctx: Arc<Context>,
    bound: Vec<listeners::Bound>,
    per_ip: Arc<limits::PerIp>,
    dir_lock: DataDirLock,
    background: Vec<JoinHandle<()>>,
    tables: crate::offload::Tables,
) {
    let tracker = TaskTracker::new();
    let maintenance = tokio::spawn(maintain(Arc::clone(&ctx)));
    let group_timers = tokio::spawn(tick_groups(Arc::clone(&ctx)));
    let offloader = tokio::spawn(crate::offload::run(
        Arc::clone(&ctx.manager),
        Arc::clone(&ctx.lake),
        tables,
    ));
    let permits = Arc::new(Semaphore::new(ctx.manager.config().max_connections()));
    let budget = frame::RequestBudget::new(ctx.manager.config().queued_max_request_bytes());
    // One accept loop per listener, all drawing on the one budget of connections.
    futures::future::join_all(
        bound
            .into_iter()
            .map(|b| accept(&ctx, b, &tracker, &permits, &per_ip, &budget)),
    )
    .await;
    // Controlled shutdown: leadership moves to the other in-sync replicas before the logs close.
    if let Some(node) = ctx.manager.cluster() {
        node.shutdown().await;
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after the shutdown grace period; closing logs anyway"
        );
    }
    maintenance.abort();
    group_timers.abort();
    for task in background {
        task.abort();
    }
    // An upload cut short here is redone at the next start: nothing is committed half-way.
    offloader.abort();
    let (manager, groups, txns) = (
        Arc::clone(&ctx.manager),
        Arc::clone(&ctx.groups),
        Arc::clone(&ctx.txns),
    );
    let _ = tokio::task::spawn_blocking(move || {
        txns.close(now_ms());
        groups.close(now_ms());
        manager.close(now_ms());
    })
    .await;
    drop(dir_lock);
    tracing::info!("broker stopped; logs closed cleanly");
}

/// Accepts on one listener until shutdown; each connection is served in its own task, TLS
/// handshake included.
async fn accept(
    ctx: &Arc<Context>,
    bound: listeners::Bound,
    tracker: &TaskTracker,
    permits: &Arc<Semaphore>,
    per_ip: &Arc<limits::PerIp>,
    budget: &frame::RequestBudget,
) {
    let bound = Arc::new(bound);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(permits).acquire_owned() => permit.expect("never closed"),
            () = ctx.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = bound.socket.accept() => accepted,
            () = ctx.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match per_ip.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(limit) => {
                        // As Kafka: the new connection is closed at once, the others go on.
                        tracing::warn!(%peer, listener = %bound.listener.name(), limit,
                            "refused a connection: its address has max.connections.per.ip open");
                        continue;
                    }
                };
                let (ctx, budget, bound) = (Arc::clone(ctx), budget.clone(), Arc::clone(&bound));
                tracker.spawn(async move {
                    if let Some((connection, session)) = bound.open(stream, peer).await {
                        drop(bound);
                        serve_connection(ctx, connection, session, budget).await;
                    }
                    drop(slot);
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, listener = %bound.listener.name(), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn maintain(ctx: Arc<Context>) {
    let retention_interval_ms = ctx.manager.config().retention_check_interval_ms();
    let mut last_retention_ms = now_ms();
    let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = now_ms();
        let retention = now - last_retention_ms >= retention_interval_ms;
        if retention {
            last_retention_ms = now;
        }
        let manager = Arc::clone(&ctx.manager);
        let _ = tokio::task::spawn_blocking(move || manager.maintain(now, retention)).await;
    }
}

async fn tick_groups(ctx: Arc<Context>) {
    let expiry_interval_ms = ctx.manager.config().offsets_retention_check_interval_ms();
    let mut last_expiry_ms = now_ms();
    let mut ticks = tokio::time::interval(GROUP_TICK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = now_ms();
        let expire = now - last_expiry_ms >= expiry_interval_ms;
        if expire {
            last_expiry_ms = now;
        }
        ctx.groups.tick(now, expire);
    }
}

/// A queued response (ready bytes, or a waiting fetch) and its request's share of the
/// `queued.max.request.bytes` budget, given back once the response is written.
type Pending = (Reply, frame::Admission);

/// APIs whose handlers write files (appends with the fsyncs and rolls they trigger, metadata
/// stores, partition folders): they run outside tokio's async scheduling so that a slow disk
/// never stalls the tasks of every other connection. The connection waits for each in turn, so
/// its requests still take effect in arrival order.
/// Produce is not among them: it moves only the appends that roll or fsync
/// (`handler/produce.rs`).
const BLOCKING_APIS: &[ApiKey] = &[
    ApiKey::OffsetCommit,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::LeaveGroup,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::InitProducerId,
    ApiKey::AlterConfigs,
    ApiKey::CreatePartitions,
    ApiKey::DeleteGroups,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::OffsetDelete,
];

fn writes_files(frame: &[u8]) -> bool {
    frame::parse_prefix(frame)
        .and_then(|p| ApiKey::try_from(p.api_key).ok())
        .is_some_and(|key| BLOCKING_APIS.contains(&key))
}

/// Handles one frame; when its API writes files, off tokio's async scheduling
/// ([`handler::off_the_workers`]). A panic in a handler is contained: that connection is closed,
/// every other goes on (locks do not poison).
fn handle_frame(
    ctx: &Arc<Context>,
    session: &Session,
    frame: bytes::Bytes,
) -> Result<Reply, handler::Refusal> {
    if writes_files(&frame) {
        handler::off_the_workers(|| handler::dispatch(ctx, session, frame))
    } else {
        handler::dispatch(ctx, session, frame)
    }
}

async fn serve_connection(
    ctx: Arc<Context>,
    connection: listeners::Connection,
    mut session: Session,
    budget: frame::RequestBudget,
) {
    let peer = session.peer;
    // On a SASL listener nothing but ApiVersions and the SASL exchange reaches the dispatcher
    // before the client authenticated (security::sasl).
    let mut sasl = SaslConnection::for_session(ctx.manager.config(), &session);
    let (mut reader, mut writer) = connection.split();
    let (queue, mut replies) = mpsc::channel::<Pending>(IN_FLIGHT_PER_CONNECTION_MAX);
    let idle = ctx.manager.config().connections_max_idle();
    let activity = Arc::new(limits::Activity::new());
    let written = Arc::clone(&activity);
    let write_task = tokio::spawn(async move {
        while let Some((reply, _admission)) = replies.recv().await {
            let frame = match reply {
                Reply::Ready(frame) => frame,
                Reply::Waiting(task) => match task.await {
                    Ok(Ok(frame)) => Some(frame),
                    Ok(Err(problem)) => {
                        tracing::error!(%peer, problem, "closing connection");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "a fetch task failed; closing connection");
                        break;
                    }
                },
            };
            if let Some(frame) = frame
                && let Err(e) = writer.write(&frame).await
            {
                tracing::debug!(%peer, error = %e, "closing connection");
                break;
            }
            // Counted by `enqueue`; done once written (or when there was nothing to write).
            written.end();
        }
        writer.shutdown().await;
    });
    let max_bytes = ctx.manager.config().socket_request_max_bytes();
    let authentication_deadline = tokio::time::Instant::now() + SASL_AUTHENTICATION_TIMEOUT;
    // One watch for the connection's life (not a timer per request): it wakes at most once per
    // idle period, and completes only when the connection is to close.
    let idle_watch = idle_for(&activity, idle);
    tokio::pin!(idle_watch);
    loop {
        // KIP-219: a muted connection is not read, so that its next request holds none of the
        // broker-wide `queued.max.request.bytes` while it waits (a byte-rate mute can be long).
        if !session.mute.remaining().is_zero() {
            tokio::select! {
                () = session.mute.wait() => {}
                () = ctx.shutdown.cancelled() => break,
            }
            activity.touch();
        }
        let authenticated = sasl.as_ref().is_none_or(SaslConnection::is_authenticated);
        let frame_bytes_max = if authenticated {
            max_bytes
        } else {
            max_bytes.min(SASL_UNAUTHENTICATED_FRAME_BYTES_MAX)
        };
        let frame = tokio::select! {
            frame = frame::read_admitted_frame(&mut reader, frame_bytes_max, &budget) => frame,
            () = ctx.shutdown.cancelled() => break,
            // Completes only when the connection is to close: a read it cancels is lost with it.
            () = &mut idle_watch => {
                tracing::debug!(%peer, listener = %session.listener,
                    "closing connection: idle for connections.max.idle.ms");
                break;
            }
            () = tokio::time::sleep_until(authentication_deadline), if !authenticated => {
                tracing::info!(
                    target: crate::security::sasl::AUDIT_TARGET,
                    %peer,
                    listener = %session.listener,
                    "closing connection: no SASL authentication within {SASL_AUTHENTICATION_TIMEOUT:?}"
                );
                break;
            }
        };
        activity.touch();
        let (frame, admission) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, problem = %e, "closing connection");
                break;
            }
        };
        // KIP-219: after a throttled answer the connection's next request waits out the mute,
        // whether or not the client honoured `throttle_time_ms` (checked again here: an answer
        // made apart, a fetch, may have set the mute while this request was read).
        if !session.mute.remaining().is_zero() {
            tokio::select! {
                () = session.mute.wait() => {}
                () = ctx.shutdown.cancelled() => break,
            }
        }
        if let Some(sasl) = sasl.as_mut() {
            match sasl.gate(&ctx.security, &mut session, &frame, now_ms()) {
                Gate::Dispatch => {}
                gate => {
                    let delay = gate
                        .is_failed_authentication()
                        .then(|| sasl.failed_authentication_delay());
                    let (answer, close) = gate.split();
                    // Until the client authenticated, waiting for room in the queue (a client
                    // that does not read its answers) ends at the deadline too.
                    let deadline = (!authenticated).then_some(authentication_deadline);
                    if let Some(answer) = answer
                        && !enqueue(
                            &queue,
                            &activity,
                            (Reply::Ready(Some(answer.into())), admission),
                            deadline,
                        )
                        .await
                    {
                        break;
                    }
                    if let Some(why) = close {
                        // As Kafka (`connection.failed.authentication.delay.ms`), a failed
                        // authentication is closed a while after its answer, to slow password
                        // guessing. The answer is written meanwhile; only this connection's task
                        // waits, on a timer (no worker thread, no other connection).
                        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                () = ctx.shutdown.cancelled() => {}
                            }
                        }
                        tracing::info!(%peer, listener = %session.listener, why, "closing connection");
                        break;
                    }
                    continue;
                }
            }
        }
        let reply = match handle_frame(&ctx, &session, frame) {
            Ok(reply) => reply,
            Err(problem) => {
                tracing::warn!(%peer, problem, "closing connection");
                break;
            }
        };
        let deadline = (!authenticated).then_some(authentication_deadline);
        if !enqueue(&queue, &activity, (reply, admission), deadline).await {
            break;
        }
    }
    drop(queue);
    if sasl.as_ref().is_none_or(SaslConnection::is_authenticated) {
        let _ = write_task.await;
        return;
    }
    // A client that never authenticated gets its last answers (a refusal) written until the
    // deadline, a second at least; one that does not read them does not keep its slot.
    let abort = write_task.abort_handle();
    let until = authentication_deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
    if tokio::time::timeout_at(until, write_task).await.is_err() {
        abort.abort();
    }
}

/// Completes when the connection has been idle for `connections.max.idle.ms`; never without it.
async fn idle_for(activity: &limits::Activity, idle: Option<Duration>) {
    match idle {
        Some(idle) => activity.idle_for(idle).await,
        None => std::future::pending().await,
    }
}

/// Queues `pending` for the writer (counted in `activity` until written); `false` when the
/// connection is to close: the writer is gone, or `deadline` (a SASL client's, before it
/// authenticated) passed while the queue was full.
async fn enqueue(
    queue: &mpsc::Sender<Pending>,
    activity: &limits::Activity,
    pending: Pending,
    deadline: Option<tokio::time::Instant>,
) -> bool {
    activity.begin();
    match deadline {
        None => queue.send(pending).await.is_ok(),
        Some(at) => tokio::select! {
            sent = queue.send(pending) => sent.is_ok(),
            () = tokio::time::sleep_until(at) => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_broker_on_one_data_folder_is_refused_until_the_first_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = || BrokerConfig::for_dir(dir.path().into(), "127.0.0.1:0".parse().unwrap());
        let first = start(config()).await.unwrap();
        let err = start(config()).await.unwrap_err();
        match &err {
            Error::DataDirInUse { path, pid } => {
                assert_eq!(path, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected DataDirInUse, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        first.shutdown().await;
        let again = start(config()).await.unwrap();
        again.shutdown().await;
    }

    /// A broker with one SASL_PLAINTEXT listener.
    async fn sasl_broker(dir: &std::path::Path) -> BrokerHandle {
        sasl_broker_with(dir, &[]).await
    }

    /// A broker with one SASL_PLAINTEXT listener and these settings.
    async fn sasl_broker_with(dir: &std::path::Path, settings: &[(&str, &str)]) -> BrokerHandle {
        let mut config = BrokerConfig::for_dir(dir.into(), "127.0.0.1:0".parse().unwrap());
        config
            .set("listeners", "SASL_PLAINTEXT://127.0.0.1:0")
            .unwrap();
        for (name, value) in settings {
            config.set(name, value).unwrap();
        }
        start(config).await.unwrap()
    }

    /// A request frame, its length first.
    fn request_frame(
        api_key: ApiKey,
        version: i16,
        body: impl kafka_protocol::protocol::Encodable,
    ) -> bytes::BytesMut {
        use kafka_protocol::messages::RequestHeader;
        use kafka_protocol::protocol::Encodable as _;
        let mut request = bytes::BytesMut::from(&[0u8; 4][..]);
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .encode(&mut request, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut request, version).unwrap();
        let length = i32::try_from(request.len() - 4).unwrap();
        request[..4].copy_from_slice(&length.to_be_bytes());
        request
    }

    /// Sends a request and reads its answer's body.
    async fn exchange<R: kafka_protocol::protocol::Decodable>(
        stream: &mut tokio::net::TcpStream,
        api_key: ApiKey,
        version: i16,
        body: impl kafka_protocol::protocol::Encodable,
    ) -> R {
        use kafka_protocol::messages::ResponseHeader;
        use kafka_protocol::protocol::Decodable as _;
        use tokio::io::AsyncWriteExt as _;
        stream
            .write_all(&request_frame(api_key, version, body))
            .await
            .unwrap();
        let mut frame = frame::read_frame(stream, 1 << 20).await.unwrap().unwrap();
        ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
        R::decode(&mut frame, version).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_authentication_is_closed_after_the_delay_and_delays_no_one_else() {
        use kafka_protocol::messages::{
            ApiVersionsRequest, ApiVersionsResponse, SaslAuthenticateRequest,
            SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
        };
        use kafka_protocol::protocol::StrBytes;
        let dir = tempfile::tempdir().unwrap();
        let delay = Duration::from_millis(3000);
        let broker = sasl_broker_with(
            dir.path(),
            &[
                ("sasl.enabled.mechanisms", "PLAIN"),
                ("sasl.plain.allow.plaintext", "true"),
                ("connection.failed.authentication.delay.ms", "3000"),
            ],
        )
        .await;
        let mut guesser = tokio::net::TcpStream::connect(broker.local_addr())
            .await
            .unwrap();
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let answer: SaslHandshakeResponse =
            exchange(&mut guesser, ApiKey::SaslHandshake, 1, handshake).await;
        assert_eq!(answer.error_code, 0);
        let sent = tokio::time::Instant::now();
        let guess = SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::from_static(b"\0nobody\0guess"));
        let answer: SaslAuthenticateResponse =
            exchange(&mut guesser, ApiKey::SaslAuthenticate, 0, guess).await;
        assert_eq!(
            answer.error_code,
            kafka_protocol::ResponseError::SaslAuthenticationFailed.code(),
            "the failure is answered at once"
        );
        // Meanwhile another connection is served, and the guesser's is still open.
        let mut other = tokio::net::TcpStream::connect(broker.local_addr())
            .await
            .unwrap();
        let versions: ApiVersionsResponse = exchange(
            &mut other,
            ApiKey::ApiVersions,
            0,
            ApiVersionsRequest::default(),
        )
        .await;
        assert_eq!(versions.error_code, 0);
        assert!(
            sent.elapsed() < delay,
            "another connection waited out the delay"
        );
        assert!(
            !closed_within(&mut guesser, Duration::from_millis(100)).await,
            "the connection closed before connection.failed.authentication.delay.ms"
        );
        assert!(
            closed_within(&mut guesser, delay * 4).await,
            "the connection stays open after the delay"
        );
        assert!(sent.elapsed() >= delay, "closed after {:?}", sent.elapsed());
        broker.shutdown().await;
    }

    /// Reads until the broker closes the connection; `false` when it is still open after
    /// `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 256];
        let read_to_end = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read_to_end).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unauthenticated_sasl_client_cannot_announce_a_large_frame() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let broker = sasl_broker(dir.path()).await;
        let mut stream = tokio::net::TcpStream::connect(broker.local_addr())
            .await
            .unwrap();
        // A length far above Kafka's sasl.server.max.receive.size, and no body: the broker
        // refuses it at once instead of waiting for (and reserving) the bytes.
        let length = i32::try_from(SASL_UNAUTHENTICATED_FRAME_BYTES_MAX + 1).unwrap();
        stream.write_all(&length.to_be_bytes()).await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(1)).await,
            "the connection stays open, waiting for the frame"
        );
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unauthenticated_client_that_reads_no_answers_is_closed_at_the_deadline() {
        use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader};
        use kafka_protocol::protocol::Encodable as _;
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let broker = sasl_broker(dir.path()).await;
        let mut stream = tokio::net::TcpStream::connect(broker.local_addr())
            .await
            .unwrap();
        let mut request = bytes::BytesMut::from(&[0u8; 4][..]);
        RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(0)
            .encode(&mut request, ApiKey::ApiVersions.request_header_version(0))
            .unwrap();
        ApiVersionsRequest::default()
            .encode(&mut request, 0)
            .unwrap();
        let length = i32::try_from(request.len() - 4).unwrap();
        request[..4].copy_from_slice(&length.to_be_bytes());
        let batch = request.repeat(1024);
        // ApiVersions is allowed before authentication; its answers are never read, so the
        // broker's writer stalls, then its reader on the full queue, then this writer. The
        // broker must still drop the connection at the deadline: this side's write then fails.
        let flood = async {
            loop {
                if stream.write_all(&batch).await.is_err() {
                    return;
                }
            }
        };
        assert!(
            tokio::time::timeout(SASL_AUTHENTICATION_TIMEOUT * 5, flood)
                .await
                .is_ok(),
            "a client that reads nothing keeps its connection past the deadline"
        );
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sasl_client_that_never_authenticates_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = sasl_broker(dir.path()).await;
        let mut stream = tokio::net::TcpStream::connect(broker.local_addr())
            .await
            .unwrap();
        assert!(
            closed_within(&mut stream, SASL_AUTHENTICATION_TIMEOUT * 3).await,
            "a silent connection keeps its slot"
        );
        broker.shutdown().await;
    }

    /// A broker with one PLAINTEXT listener and these settings.
    async fn plain_broker_with(dir: &std::path::Path, settings: &[(&str, &str)]) -> BrokerHandle {
        let mut config = BrokerConfig::for_dir(dir.into(), "127.0.0.1:0".parse().unwrap());
        for (name, value) in settings {
            config.set(name, value).unwrap();
        }
        start(config).await.unwrap()
    }

    async fn api_versions(stream: &mut tokio::net::TcpStream) -> i16 {
        use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
        let answer: ApiVersionsResponse = exchange(
            stream,
            ApiKey::ApiVersions,
            0,
            ApiVersionsRequest::default(),
        )
        .await;
        answer.error_code
    }

    /// ApiVersions' error code, or `None` when the broker closed the connection instead.
    async fn try_api_versions(stream: &mut tokio::net::TcpStream) -> Option<i16> {
        use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
        use kafka_protocol::protocol::Decodable as _;
        use tokio::io::AsyncWriteExt as _;
        let request = request_frame(ApiKey::ApiVersions, 0, ApiVersionsRequest::default());
        stream.write_all(&request).await.ok()?;
        let mut frame = frame::read_frame(stream, 1 << 20).await.ok()??;
        ResponseHeader::decode(&mut frame, 0).unwrap();
        Some(
            ApiVersionsResponse::decode(&mut frame, 0)
                .unwrap()
                .error_code,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_is_closed_but_not_one_waiting_for_its_answer() {
        use kafka_protocol::messages::{
            CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, TopicName,
            create_topics_request::CreatableTopic,
            fetch_request::{FetchPartition, FetchTopic},
        };
        let idle = Duration::from_millis(1000);
        let dir = tempfile::tempdir().unwrap();
        let broker = plain_broker_with(dir.path(), &[("connections.max.idle.ms", "1000")]).await;
        let connect = || tokio::net::TcpStream::connect(broker.local_addr());

        let mut quiet = connect().await.unwrap();
        // Before the request: the broker's last activity on the connection comes after it.
        let since = tokio::time::Instant::now();
        assert_eq!(api_versions(&mut quiet).await, 0);
        assert!(
            closed_within(&mut quiet, Duration::from_secs(60)).await,
            "an idle connection stays open"
        );
        // Activity is kept in whole milliseconds.
        assert!(since.elapsed() >= idle - Duration::from_millis(2));

        // A long-poll fetch waits three times the idle time for records that never come: its
        // connection is not idle meanwhile, and gets its (empty) answer.
        let mut polling = connect().await.unwrap();
        let topic = TopicName(crate::handler::str_bytes("idle"));
        let created: CreateTopicsResponse = exchange(
            &mut polling,
            ApiKey::CreateTopics,
            4,
            CreateTopicsRequest::default()
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic.clone())
                        .with_num_partitions(1)
                        .with_replication_factor(1),
                ])
                .with_timeout_ms(30_000),
        )
        .await;
        assert_eq!(created.topics[0].error_code, 0);
        let wait = idle * 3;
        let asked = tokio::time::Instant::now();
        let fetched: FetchResponse = exchange(
            &mut polling,
            ApiKey::Fetch,
            4,
            FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(i32::try_from(wait.as_millis()).unwrap())
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(topic)
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
        )
        .await;
        assert!(asked.elapsed() >= wait - Duration::from_millis(50));
        assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
        assert_eq!(
            api_versions(&mut polling).await,
            0,
            "still open after its answer"
        );
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_max_connections_per_ip_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let broker = plain_broker_with(dir.path(), &[("max.connections.per.ip", "2")]).await;
        let connect = || tokio::net::TcpStream::connect(broker.local_addr());
        let mut first = connect().await.unwrap();
        let mut second = connect().await.unwrap();
        assert_eq!(api_versions(&mut first).await, 0);
        assert_eq!(api_versions(&mut second).await, 0);
        let mut third = connect().await.unwrap();
        assert!(
            closed_within(&mut third, Duration::from_secs(60)).await,
            "a third connection from 127.0.0.1 is served"
        );
        assert_eq!(api_versions(&mut first).await, 0, "the others go on");
        drop(first);
        // The slot is given back once the broker has seen the connection end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut again = connect().await.unwrap();
            if try_api_versions(&mut again).await == Some(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the closed connection's slot was not given back"
            );
        }
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn bad_connection_limits_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::for_dir(dir.path().into(), "127.0.0.1:0".parse().unwrap());
        config
            .set("max.connections.per.ip.overrides", "127.0.0.1")
            .unwrap();
        let err = start(config).await.unwrap_err().to_string();
        assert!(err.contains("max.connections.per.ip.overrides"), "{err}");
    }
}
