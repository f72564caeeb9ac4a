//! Request dispatch: from a frame to a response, one Kafka API per file under `handler/`.
//!
//! Requests of one connection are handled in arrival order, so a producer's pipelined batches are
//! appended in order. Only a fetch that must wait (long poll) runs apart, as a task whose response
//! is written in its turn; requests behind it are handled meanwhile.

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_client_quotas;
mod alter_configs;
mod alter_partition_reassignments;
mod alter_user_scram_credentials;
mod api_versions;
mod create_acls;
mod create_partitions;
mod create_topics;
mod delete_acls;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_acls;
mod describe_client_quotas;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod describe_producers;
mod describe_transactions;
mod describe_user_scram_credentials;
mod elect_leaders;
mod end_txn;
pub(crate) mod fetch;
mod find_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_partition_reassignments;
mod list_transactions;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sasl_authenticate;
mod sasl_handshake;
mod sync_group;
mod throttle;
mod txn_offset_commit;
mod write_txn_markers;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strata_coordinator::GroupCoordinator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, RequestPrefix};
use crate::manager::PartitionManager;
use crate::outgoing::Outgoing;
use crate::security::acl::AclOperation;
use crate::session::Session;

#[cfg(test)]
pub(crate) use api_versions::SUPPORTED_APIS;

/// What handlers share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) manager: Arc<PartitionManager>,
    /// The group coordinators: one for every group, or in a cluster one per offsets partition
    /// this broker leads.
    pub(crate) groups: Arc<crate::groups::Groups>,
    /// Historic reads from the lake.
    pub(crate) lake: Arc<crate::lake_view::LakeView>,
    /// Host given to clients in Metadata and DescribeCluster.
    pub(crate) advertised_host: String,
    /// Port given to clients.
    pub(crate) advertised_port: i32,
    /// Every listener's advertised `(name, host, port)`: clients are told the endpoints of the
    /// listener they connected on (`advertised_host`/`advertised_port` are the first's).
    pub(crate) advertised_listeners: Vec<(Arc<str>, String, i32)>,
    /// Cancelled when the broker shuts down; waiting fetches answer at once.
    pub(crate) shutdown: CancellationToken,
    /// The transaction coordinators: one for every transaction, or in a cluster one per
    /// `__transaction_state` partition this broker leads.
    pub(crate) txns: Arc<crate::txn::Txns>,
    /// Incremental fetch sessions (KIP-227) of consumers and follower brokers.
    pub(crate) fetch_sessions: crate::fetch_session::FetchSessionCache,
    /// What the request path counts, for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The measured rates of clients with quotas (`security` holds the quotas).
    pub(crate) quotas: Arc<crate::security::quota::Quotas>,
    /// SCRAM credentials, ACL bindings and client quotas.
    pub(crate) security: Arc<crate::security::SecurityStore>,
    /// Decides what each session may do, from the ACL bindings in `security`.
    pub(crate) acl: crate::security::acl::Authorizer,
}

/// A broker as Metadata and DescribeCluster name it: `(id, host, port, rack)`.
pub(crate) type LiveBroker = (i32, String, i32, Option<String>);

impl Context {
    pub(crate) fn node_id(&self) -> i32 {
        self.manager.config().node_id()
    }

    /// The live brokers clients are told of, `(id, host, port, rack)` by id, and the active
    /// controller: this broker alone for a single broker; in a cluster every unfenced broker.
    pub(crate) fn live_brokers(&self, listener: &str) -> (Vec<LiveBroker>, i32) {
        let Some(node) = self.manager.cluster() else {
            let (host, port) = self.own_endpoint(listener);
            let me = (self.node_id(), host, port, None);
            return (vec![me], self.node_id());
        };
        let state = node.state().borrow().clone();
        let brokers = state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| {
                let (host, port) = endpoint_on(b, listener);
                (b.id, host, port, b.rack.clone())
            })
            .collect();
        (brokers, node.controller_id().unwrap_or(-1))
    }

    /// The broker coordinating group `key` as `(id, host, port)`: this one for a single broker;
    /// in a cluster the leader of the group's `__consumer_offsets` partition, or
    /// COORDINATOR_NOT_AVAILABLE while the topic does not exist or that partition has no live
    /// leader.
    pub(crate) fn group_coordinator(
        &self,
        key: &str,
        listener: &str,
    ) -> Result<(i32, String, i32), ResponseError> {
        self.coordinator_by(crate::groups::OFFSETS_TOPIC, key, listener)
    }

    /// The broker coordinating transactional id `key`, as [`Context::group_coordinator`] over
    /// `__transaction_state`.
    pub(crate) fn txn_coordinator(
        &self,
        key: &str,
        listener: &str,
    ) -> Result<(i32, String, i32), ResponseError> {
        self.coordinator_by(crate::txn::TXN_TOPIC, key, listener)
    }

    /// This broker's advertised endpoint on `listener` (the first listener's for a name it
    /// does not have).
    fn own_endpoint(&self, listener: &str) -> (String, i32) {
        self.advertised_listeners
            .iter()
            .find(|(name, _, _)| **name == *listener)
            .map_or_else(
                || (self.advertised_host.clone(), self.advertised_port),
                |(_, host, port)| (host.clone(), *port),
            )
    }

    fn coordinator_by(
        &self,
        internal_topic: &str,
        key: &str,
        listener: &str,
    ) -> Result<(i32, String, i32), ResponseError> {
        let Some(node) = self.manager.cluster() else {
            let (host, port) = self.own_endpoint(listener);
            return Ok((self.node_id(), host, port));
        };
        let state = node.state().borrow().clone();
        let partitions = state
            .topics
            .get(internal_topic)
            .map(|t| &t.partitions)
            .filter(|p| !p.is_empty())
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let index = crate::groups::partition_for(key, partitions.len() as i32);
        let leader = partitions[index as usize].leader;
        let broker = state
            .brokers
            .get(&leader)
            .filter(|b| !b.fenced)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let (host, port) = endpoint_on(broker, listener);
        Ok((broker.id, host, port))
    }

    /// The coordinator of `group` here, or the error its requests get (NOT_COORDINATOR when
    /// another broker coordinates it).
    pub(crate) fn coordinator(&self, group: &str) -> Result<Arc<GroupCoordinator>, ResponseError> {
        self.groups.of(&self.manager, group)
    }
}

/// Where clients of listener `listener` reach `broker`: its endpoint of that name, else its main
/// (inter-broker) one.
fn endpoint_on(broker: &strata_cluster::BrokerInfo, listener: &str) -> (String, i32) {
    let (host, port) = crate::security::client::endpoint_of(broker, listener);
    (host, i32::from(port))
}

/// A response to write, now or when a waiting fetch completes. `Ready(None)` is acks=0.
#[derive(Debug)]
pub(crate) enum Reply {
    Ready(Option<Outgoing>),
    Waiting(JoinHandle<Result<Outgoing, Refusal>>),
}

/// Why a connection must be closed instead of answered.
pub(crate) type Refusal = String;

pub(crate) use crate::clock::now_ms;

/// Runs `work`, which may block on the disk, with this worker thread's other tasks handed to
/// another thread first (`block_in_place`): no hop to another thread and back for the request
/// itself. A runtime with one thread (some unit tests) has nowhere to hand them, and runs it
/// inline.
pub(crate) fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Handles one frame, counting and timing it (metrics): an answer that waits is timed when it is
/// ready.
pub(crate) fn dispatch(
    ctx: &Arc<Context>,
    session: &Session,
    frame: Bytes,
) -> Result<Reply, Refusal> {
    let started = std::time::Instant::now();
    let api_key = frame::parse_prefix(&frame).map(|p| p.api_key);
    let reply = decode_and_route(ctx, session, frame);
    ctx.metrics.requests.finish(api_key, started, reply)
}

/// Decodes a frame and hands it to its API's handler.
fn decode_and_route(ctx: &Arc<Context>, session: &Session, frame: Bytes) -> Result<Reply, Refusal> {
    let Some(prefix) = frame::parse_prefix(&frame) else {
        return Err(format!(
            "request of {} bytes is shorter than a request header",
            frame.len()
        ));
    };
    let Ok(api_key) = ApiKey::try_from(prefix.api_key) else {
        return Err(format!("unknown API key {}", prefix.api_key));
    };
    let Some(range) = api_versions::supported_range(api_key) else {
        return Err(format!(
            "{api_key:?} (key {}) is not supported",
            prefix.api_key
        ));
    };
    if prefix.api_version < range.min || prefix.api_version > range.max {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in the v0 layout so the client can retry at a version we support.
            return Ok(Reply::Ready(Some(
                api_versions::unsupported_version_response(prefix.correlation_id).into(),
            )));
        }
        return Err(format!(
            "{api_key:?} v{} is not supported (supported: v{}..=v{})",
            prefix.api_version, range.min, range.max
        ));
    }
    let frame_bytes = frame.len();
    let mut body = frame;
    let header = RequestHeader::decode(
        &mut body,
        api_key.request_header_version(prefix.api_version),
    )
    .map_err(|e| format!("malformed {api_key:?} request header: {e}"))?;
    let request = RequestKind::decode(api_key, &mut body, prefix.api_version)
        .map_err(|e| format!("malformed {api_key:?} v{} request: {e}", prefix.api_version))?;
    let mut charge = throttle::Charge::open(ctx, session, &header, api_key, frame_bytes);
    let reply = route(ctx, session, prefix, &header, request, &mut charge);
    if let Some(charge) = charge {
        charge.close(None);
    }
    reply
}

/// Runs `finish` as a task whose response is written in its turn.
fn later<F>(api_key: ApiKey, version: i16, correlation_id: i32, finish: F) -> Reply
where
    F: std::future::Future<Output = ResponseKind> + Send + 'static,
{
    Reply::Waiting(tokio::spawn(async move {
        let response = finish.await;
        encode(api_key, version, correlation_id, &response).map(Outgoing::from)
    }))
}

fn route(
    ctx: &Arc<Context>,
    session: &Session,
    prefix: RequestPrefix,
    header: &RequestHeader,
    request: RequestKind,
    charge: &mut Option<throttle::Charge>,
) -> Result<Reply, Refusal> {
    let version = prefix.api_version;
    let correlation_id = header.correlation_id;
    let throttle_ms = charge.as_ref().map_or(0, throttle::Charge::throttle_ms);
    // What the session may do: resolved once per request (see security::acl).
    let access = ctx.acl.access(session);
    let mut response: ResponseKind = match request {
        RequestKind::ApiVersions(_) => api_versions::handle(version).into(),
        RequestKind::Metadata(r) => {
            metadata::handle(ctx, &session.listener, &access, version, r).into()
        }
        RequestKind::Produce(r) => match produce::handle(ctx, &access, version, r) {
            produce::Outcome::Ready(response) => response.with_throttle_time_ms(throttle_ms).into(),
            produce::Outcome::Silent => return Ok(Reply::Ready(None)),
            produce::Outcome::Waiting(pending) => {
                return Ok(later(
                    ApiKey::Produce,
                    version,
                    correlation_id,
                    async move {
                        let response = produce::finish(pending).await;
                        response.with_throttle_time_ms(throttle_ms).into()
                    },
                ));
            }
        },
        RequestKind::Fetch(mut r) => {
            let ctx = Arc::clone(ctx);
            // A follower broker's fetch is no client's: no quota.
            let charge = charge.take().filter(|_| r.replica_id.0 < 0);
            if let Some(max) = charge.as_ref().and_then(throttle::Charge::fetch_bytes_max) {
                r.max_bytes = r.max_bytes.min(max);
            }
            let access = access.into_owned();
            return Ok(Reply::Waiting(tokio::spawn(async move {
                let (mut answer, busy) =
                    throttle::Busy::new(fetch::handle(&ctx, &access, version, r)).await;
                if let Some(mut charge) = charge {
                    answer.throttle_time_ms = charge.fetched(answer.record_bytes());
                    charge.close(Some(busy));
                }
                answer.encode(version, correlation_id)
            })));
        }
        RequestKind::JoinGroup(r) => {
            // The group state changes now, in request order; only the wait runs apart.
            let answer = join_group::start(ctx, (header, session.peer, &access), version, r);
            let ctx = Arc::clone(ctx);
            return Ok(later(
                ApiKey::JoinGroup,
                version,
                correlation_id,
                async move { join_group::finish(ctx, version, answer).await.into() },
            ));
        }
        RequestKind::SyncGroup(r) => {
            let answer = sync_group::start(ctx, &access, version, r);
            let ctx = Arc::clone(ctx);
            return Ok(later(
                ApiKey::SyncGroup,
                version,
                correlation_id,
                async move { sync_group::finish(ctx, version, answer).await.into() },
            ));
        }
        RequestKind::FindCoordinator(r) => {
            find_coordinator::handle(ctx, (&session.listener, &access), version, r).into()
        }
        RequestKind::Heartbeat(r) => heartbeat::handle(ctx, &access, r).into(),
        RequestKind::LeaveGroup(r) => leave_group::handle(ctx, &access, version, r).into(),
        RequestKind::OffsetCommit(r) => {
            // Stored now, in request order; answered once durable (replicated, in a cluster).
            let pending = offset_commit::start(ctx, &access, version, r);
            return Ok(later(
                ApiKey::OffsetCommit,
                version,
                correlation_id,
                async move { offset_commit::finish(pending).await.into() },
            ));
        }
        RequestKind::TxnOffsetCommit(r) => {
            // Written now, in request order; answered once durable, as OffsetCommit.
            let pending = txn_offset_commit::start(ctx, &access, version, r);
            return Ok(later(
                ApiKey::TxnOffsetCommit,
                version,
                correlation_id,
                async move { txn_offset_commit::finish(pending).await.into() },
            ));
        }
        RequestKind::OffsetFetch(r) => offset_fetch::handle(ctx, &access, version, r).into(),
        RequestKind::ListGroups(r) => list_groups::handle(ctx, &access, version, r).into(),
        RequestKind::DescribeGroups(r) => describe_groups::handle(ctx, &access, version, r).into(),
        RequestKind::DeleteGroups(r) => {
            let pending = delete_groups::start(ctx, &access, r);
            return Ok(later(
                ApiKey::DeleteGroups,
                version,
                correlation_id,
                async move { delete_groups::finish(pending).await.into() },
            ));
        }
        RequestKind::OffsetDelete(r) => {
            let pending = offset_delete::start(ctx, &access, r);
            return Ok(later(
                ApiKey::OffsetDelete,
                version,
                correlation_id,
                async move { offset_delete::finish(pending).await.into() },
            ));
        }
        RequestKind::ListOffsets(r) => {
            // A timestamp search may read the lake: it runs apart like a waiting fetch.
            let ctx = Arc::clone(ctx);
            let access = access.into_owned();
            return Ok(later(
                ApiKey::ListOffsets,
                version,
                correlation_id,
                async move { list_offsets::handle(&ctx, &access, version, r).await.into() },
            ));
        }
        RequestKind::CreateTopics(r) => create_topics::handle(ctx, &access, version, r).into(),
        RequestKind::DeleteTopics(r) => delete_topics::handle(ctx, &access, version, r).into(),
        RequestKind::CreatePartitions(r) => create_partitions::handle(ctx, &access, r).into(),
        RequestKind::DescribeConfigs(r) => {
            describe_configs::handle(ctx, &access, version, r).into()
        }
        RequestKind::AlterConfigs(r) => alter_configs::handle(ctx, &access, r).into(),
        RequestKind::IncrementalAlterConfigs(r) => {
            incremental_alter_configs::handle(ctx, &access, r).into()
        }
        RequestKind::DescribeCluster(r) => {
            describe_cluster::handle(ctx, (&session.listener, &access), version, r).into()
        }
        RequestKind::InitProducerId(r) => {
            let pending = init_producer_id::start(ctx, &access, version, r);
            return Ok(later(
                ApiKey::InitProducerId,
                version,
                correlation_id,
                async move { init_producer_id::finish(pending).await.into() },
            ));
        }
        RequestKind::AddPartitionsToTxn(r) => {
            let pending = add_partitions_to_txn::start(ctx, &access, version, r);
            return Ok(later(
                ApiKey::AddPartitionsToTxn,
                version,
                correlation_id,
                async move { add_partitions_to_txn::finish(pending).await.into() },
            ));
        }
        RequestKind::AddOffsetsToTxn(r) => {
            let pending = add_offsets_to_txn::start(ctx, &access, version, r);
            return Ok(later(
                ApiKey::AddOffsetsToTxn,
                version,
                correlation_id,
                async move { add_offsets_to_txn::finish(pending).await.into() },
            ));
        }
        RequestKind::EndTxn(r) => {
            let pending = end_txn::start(ctx, &access, version, r);
            return Ok(later(ApiKey::EndTxn, version, correlation_id, async move {
                end_txn::finish(pending).await.into()
            }));
        }
        RequestKind::WriteTxnMarkers(r) => {
            let ctx = Arc::clone(ctx);
            // Only brokers write markers.
            let authorized = access.check_cluster(AclOperation::ClusterAction);
            return Ok(later(
                ApiKey::WriteTxnMarkers,
                version,
                correlation_id,
                async move { write_txn_markers::handle(ctx, authorized, r).await.into() },
            ));
        }
        RequestKind::DescribeTransactions(r) => {
            describe_transactions::handle(ctx, &access, r).into()
        }
        RequestKind::ListTransactions(r) => {
            list_transactions::handle(ctx, &access, version, r).into()
        }
        RequestKind::DescribeProducers(r) => describe_producers::handle(ctx, &access, r).into(),
        RequestKind::OffsetForLeaderEpoch(r) => {
            offset_for_leader_epoch::handle(ctx, &access, r).into()
        }
        RequestKind::DeleteRecords(r) => {
            // Waits for the lake's commit or the followers: it runs apart.
            let ctx = Arc::clone(ctx);
            let access = access.into_owned();
            return Ok(later(
                ApiKey::DeleteRecords,
                version,
                correlation_id,
                async move { delete_records::handle(&ctx, &access, r).await.into() },
            ));
        }
        RequestKind::DescribeLogDirs(r) => {
            describe_log_dirs::handle(ctx, &access, version, r).into()
        }
        // Committed through the controller: they run apart.
        RequestKind::ElectLeaders(r) => {
            let ctx = Arc::clone(ctx);
            let authorized = access.check_cluster(AclOperation::Alter);
            return Ok(later(
                ApiKey::ElectLeaders,
                version,
                correlation_id,
                async move {
                    elect_leaders::handle(&ctx, authorized, version, r)
                        .await
                        .into()
                },
            ));
        }
        RequestKind::AlterPartitionReassignments(r) => {
            let ctx = Arc::clone(ctx);
            let authorized = access.check_cluster(AclOperation::Alter);
            return Ok(later(
                ApiKey::AlterPartitionReassignments,
                version,
                correlation_id,
                async move {
                    alter_partition_reassignments::handle(&ctx, authorized, version, r)
                        .await
                        .into()
                },
            ));
        }
        RequestKind::DescribeAcls(r) => describe_acls::handle(ctx, &access, r).into(),
        RequestKind::CreateAcls(r) => {
            // Stored through the security store (the quorum, in a cluster): answered apart.
            let pending = create_acls::start(ctx, &access, r);
            let ctx = Arc::clone(ctx);
            return Ok(later(
                ApiKey::CreateAcls,
                version,
                correlation_id,
                async move { create_acls::finish(&ctx.acl, pending).await.into() },
            ));
        }
        RequestKind::DeleteAcls(r) => {
            let pending = delete_acls::start(ctx, &access, r);
            let ctx = Arc::clone(ctx);
            return Ok(later(
                ApiKey::DeleteAcls,
                version,
                correlation_id,
                async move { delete_acls::finish(&ctx.acl, pending).await.into() },
            ));
        }
        RequestKind::ListPartitionReassignments(r) => {
            list_partition_reassignments::handle(ctx, &access, r).into()
        }
        // On a SASL listener these are served before dispatch (security::sasl).
        RequestKind::SaslHandshake(_) => sasl_handshake::handle().into(),
        RequestKind::SaslAuthenticate(_) => sasl_authenticate::handle().into(),
        RequestKind::DescribeUserScramCredentials(r) => {
            describe_user_scram_credentials::handle(ctx, &access, r).into()
        }
        RequestKind::AlterUserScramCredentials(r) => {
            // Stored through the security store (the quorum, in a cluster): answered apart.
            let pending = alter_user_scram_credentials::start(ctx, &access, r);
            return Ok(later(
                ApiKey::AlterUserScramCredentials,
                version,
                correlation_id,
                async move { alter_user_scram_credentials::finish(pending).await.into() },
            ));
        }
        RequestKind::DescribeClientQuotas(r) => {
            describe_client_quotas::handle(ctx, &access, r).into()
        }
        RequestKind::AlterClientQuotas(r) => {
            // Stored through the security store (the quorum, in a cluster): answered apart.
            let ctx = Arc::clone(ctx);
            let authorized = access.check_cluster(AclOperation::AlterConfigs);
            return Ok(later(
                ApiKey::AlterClientQuotas,
                version,
                correlation_id,
                async move {
                    alter_client_quotas::handle(&ctx, authorized, r)
                        .await
                        .into()
                },
            ));
        }
        other => return Err(format!("no handler for {other:?}")),
    };
    throttle::set_throttle(&mut response, throttle_ms);
    let api_key = ApiKey::try_from(prefix.api_key).expect("checked in dispatch");
    encode(api_key, version, correlation_id, &response).map(|b| Reply::Ready(Some(b.into())))
}

/// Encodes a response with its header and length prefix.
pub(crate) fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<BytesMut, Refusal> {
    let mut body = BytesMut::with_capacity(256);
    body.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut body, api_key.response_header_version(version))
        .map_err(|e| format!("encoding the {api_key:?} response header: {e}"))?;
    response
        .encode(&mut body, version)
        .map_err(|e| format!("encoding the {api_key:?} v{version} response: {e}"))?;
    let length = (body.len() - 4) as i32;
    body[..4].copy_from_slice(&length.to_be_bytes());
    Ok(body)
}

/// A string for a response field.
pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// An error message for a response, or `None` for success.
pub(crate) fn message(error: &crate::error::Error) -> Option<StrBytes> {
    Some(str_bytes(error.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::metadata::LocalMetadataStore;
    use std::net::SocketAddr;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    /// An anonymous client on a PLAINTEXT listener.
    pub(crate) fn session() -> Session {
        Session::plaintext(PEER)
    }

    pub(crate) fn context(dir: &std::path::Path) -> Arc<Context> {
        context_with_acl(dir, Default::default())
    }

    /// A context whose authorizer has `acl` as its settings.
    pub(crate) fn context_with_acl(
        dir: &std::path::Path,
        acl: crate::security::acl::AclSettings,
    ) -> Arc<Context> {
        let config = BrokerConfig::for_dir(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
        let coordinator =
            GroupCoordinator::open(&dir.join("offsets"), config.coordinator_config(), 0).unwrap();
        let groups = crate::groups::Groups::single(coordinator, config.coordinator_config());
        let slots = config.max_incremental_fetch_session_cache_slots();
        let manager =
            PartitionManager::open(config, Box::new(LocalMetadataStore::new(dir)), 0).unwrap();
        let manager = Arc::new(manager);
        let groups = Arc::new(groups);
        let txn_log = strata_coordinator::offsets_log::LocalOffsetsLog::open(&dir.join("txn"), 0);
        let txns = crate::txn::Txns::single(
            Box::new(txn_log.unwrap()),
            Arc::clone(&manager),
            Arc::clone(&groups),
        )
        .unwrap();
        let security = Arc::new(crate::security::SecurityStore::local(dir).unwrap());
        Arc::new(Context {
            manager,
            groups,
            txns,
            lake: Arc::new(crate::lake_view::LakeView::new(
                strata_lake::Lake::new(Arc::new(object_store::memory::InMemory::new())),
                1 << 20,
            )),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            advertised_listeners: vec![(Arc::from("PLAINTEXT"), "127.0.0.1".into(), 9092)],
            shutdown: CancellationToken::new(),
            fetch_sessions: crate::fetch_session::FetchSessionCache::new(slots),
            metrics: Default::default(),
            quotas: Arc::new(crate::security::quota::Quotas::new(Default::default())),
            acl: crate::security::acl::Authorizer::new(acl, Arc::clone(&security)),
            security,
        })
    }

    /// Every API at every advertised version answers a default request with a response that
    /// encodes at that version (fields unknown to a version must stay at their defaults).
    #[tokio::test]
    async fn every_advertised_version_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        ctx.manager
            .create_topic("t", 2, 1, Default::default(), false, 0)
            .unwrap();
        for &(key, min, max) in SUPPORTED_APIS {
            for version in min..=max {
                let mut frame = BytesMut::new();
                let header = RequestHeader::default()
                    .with_request_api_key(key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(7);
                header
                    .encode(&mut frame, key.request_header_version(version))
                    .unwrap();
                let request = default_request(key, version);
                request.encode(&mut frame, version).unwrap();
                let reply = dispatch(&ctx, &session(), frame.freeze())
                    .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
                let frame = match reply {
                    Reply::Ready(Some(frame)) => frame,
                    Reply::Ready(None) => continue,
                    Reply::Waiting(task) => task.await.unwrap().unwrap(),
                };
                let mut body = Bytes::from(frame.to_vec().unwrap()).slice(4..);
                let header =
                    ResponseHeader::decode(&mut body, key.response_header_version(version))
                        .unwrap();
                assert_eq!(header.correlation_id, 7);
                ResponseKind::decode(key, &mut body, version)
                    .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            }
        }
    }

    fn default_request(key: ApiKey, version: i16) -> RequestKind {
        use kafka_protocol::messages::*;
        match key {
            ApiKey::ApiVersions => ApiVersionsRequest::default().into(),
            ApiKey::Metadata => MetadataRequest::default().into(),
            ApiKey::Produce => ProduceRequest::default().with_acks(1).into(),
            ApiKey::Fetch => FetchRequest::default().with_max_wait_ms(0).into(),
            ApiKey::ListOffsets => ListOffsetsRequest::default().into(),
            ApiKey::CreateTopics => CreateTopicsRequest::default().into(),
            ApiKey::DeleteTopics => DeleteTopicsRequest::default().into(),
            ApiKey::CreatePartitions => CreatePartitionsRequest::default().into(),
            ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
                .with_resources(vec![
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(str_bytes("t")),
                ])
                .into(),
            ApiKey::AlterConfigs => AlterConfigsRequest::default().into(),
            ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::default().into(),
            ApiKey::DescribeCluster => DescribeClusterRequest::default().into(),
            ApiKey::InitProducerId => InitProducerIdRequest::default().into(),
            ApiKey::FindCoordinator if version >= 4 => FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![str_bytes("g")])
                .into(),
            ApiKey::FindCoordinator => FindCoordinatorRequest::default()
                .with_key(str_bytes("g"))
                .into(),
            ApiKey::JoinGroup => JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::SyncGroup => SyncGroupRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::Heartbeat => HeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::LeaveGroup => LeaveGroupRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::OffsetCommit => OffsetCommitRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::OffsetFetch if version >= 8 => OffsetFetchRequest::default()
                .with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(str_bytes("g"))),
                ])
                .into(),
            ApiKey::OffsetFetch => OffsetFetchRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::ListGroups => ListGroupsRequest::default().into(),
            ApiKey::DescribeGroups => DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(str_bytes("g"))])
                .into(),
            ApiKey::DeleteGroups => DeleteGroupsRequest::default().into(),
            ApiKey::OffsetDelete => OffsetDeleteRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::default().into(),
            ApiKey::TxnOffsetCommit => TxnOffsetCommitRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .into(),
            ApiKey::DeleteRecords => DeleteRecordsRequest::default().into(),
            ApiKey::DescribeLogDirs => DescribeLogDirsRequest::default().into(),
            ApiKey::AddPartitionsToTxn => AddPartitionsToTxnRequest::default().into(),
            ApiKey::AddOffsetsToTxn => AddOffsetsToTxnRequest::default().into(),
            ApiKey::EndTxn => EndTxnRequest::default().into(),
            ApiKey::WriteTxnMarkers => WriteTxnMarkersRequest::default().into(),
            ApiKey::DescribeTransactions => DescribeTransactionsRequest::default().into(),
            ApiKey::ListTransactions => ListTransactionsRequest::default().into(),
            ApiKey::DescribeProducers => DescribeProducersRequest::default().into(),
            ApiKey::ElectLeaders => ElectLeadersRequest::default().into(),
            ApiKey::AlterPartitionReassignments => {
                AlterPartitionReassignmentsRequest::default().into()
            }
            ApiKey::ListPartitionReassignments => {
                ListPartitionReassignmentsRequest::default().into()
            }
            ApiKey::DescribeAcls => DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1)
                .into(),
            ApiKey::CreateAcls => CreateAclsRequest::default().into(),
            ApiKey::DeleteAcls => DeleteAclsRequest::default().into(),
            ApiKey::SaslHandshake => SaslHandshakeRequest::default().into(),
            ApiKey::SaslAuthenticate => SaslAuthenticateRequest::default().into(),
            ApiKey::DescribeUserScramCredentials => {
                DescribeUserScramCredentialsRequest::default().into()
            }
            ApiKey::AlterUserScramCredentials => AlterUserScramCredentialsRequest::default().into(),
            ApiKey::DescribeClientQuotas => DescribeClientQuotasRequest::default().into(),
            ApiKey::AlterClientQuotas => AlterClientQuotasRequest::default().into(),
            other => panic!("add a default request for {other:?}"),
        }
    }

    #[test]
    fn short_unknown_and_unsupported_requests_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let refuse =
            |bytes: &'static [u8]| match dispatch(&ctx, &session(), Bytes::from_static(bytes)) {
                Err(reason) => reason,
                Ok(_) => panic!("accepted {bytes:?}"),
            };
        assert!(refuse(&[0, 1, 0]).contains("shorter than a request header"));
        assert!(refuse(&[0x7f, 0, 0, 0, 0, 0, 0, 1]).contains("unknown API key"));
        assert!(refuse(&[0, 0, 0x7f, 0, 0, 0, 0, 1]).contains("not supported"));
        assert!(refuse(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff]).contains("malformed"));
        // ApiVersions at an unknown version gets an answer, not a closed connection.
        assert!(matches!(
            dispatch(
                &ctx,
                &session(),
                Bytes::from_static(&[0, 18, 0x7f, 0, 0, 0, 0, 1])
            ),
            Ok(Reply::Ready(Some(_)))
        ));
    }
}
