//! Outgoing calls: a pool of connections to the voters, and openraft's `RaftNetwork` over it.
//! With [`crate::QuorumTls`] every connection is TLS, this node presenting its certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::raft::{NodeId, TypeConfig};
use crate::wire::{Reply, Request, read_frame, write_frame};

/// Idle connections kept per peer: replication, votes, heartbeats and a few concurrent submits.
const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// A connection to a voter: plain TCP or TLS.
pub(crate) trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}

type Stream = Box<dyn PeerStream>;

/// Connections to peers, reused between calls.
#[derive(Default)]
pub(crate) struct Peers {
    idle: Mutex<HashMap<SocketAddr, Vec<Stream>>>,
    /// The TLS configs when the quorum's connections are TLS.
    tls: Option<crate::QuorumTls>,
}

impl Peers {
    /// Peers reached over TLS with `tls`, or plain TCP.
    pub(crate) fn new(tls: Option<crate::QuorumTls>) -> Self {
        Self {
            idle: Mutex::default(),
            tls,
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Stream> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Unreachable {
                peer: addr.to_string(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io(format!("set TCP_NODELAY to {addr}"), e))?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(stream));
        };
        // Voters are named by address in controller.quorum.voters: their certificates carry it.
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls.0.client())
            .connect(name, stream)
            .await
            .map_err(|e| Error::io(format!("TLS handshake with {addr}"), e))?;
        Ok(Box::new(stream))
    }

    /// Sends `request` to `addr` and reads its reply, all within `timeout`. A pooled connection
    /// the peer closed meanwhile (it restarted) is retried once on a new one.
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply> {
        let attempt = async {
            let pooled = self.idle.lock().get_mut(&addr).and_then(Vec::pop);
            if let Some(stream) = pooled {
                match self.exchange(addr, stream, request).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "pooled connection failed, reconnecting")
                    }
                }
            }
            let stream = self.connect(addr).await?;
            self.exchange(addr, stream, request).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("call to {addr}"),
                after: timeout,
            })?
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        mut stream: Stream,
        request: &Request,
    ) -> Result<Reply> {
        let peer = addr.to_string();
        write_frame(&mut stream, request, &peer).await?;
        let reply = read_frame(&mut stream, &peer).await?.ok_or_else(|| {
            Error::io(
                format!("read from {peer}"),
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
            )
        })?;
        // Only a connection that finished its exchange goes back: a cancelled call drops its
        // stream, so no reply is ever read by the wrong request.
        let mut idle = self.idle.lock();
        let conns = idle.entry(addr).or_default();
        if conns.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
            conns.push(stream);
        }
        Ok(reply)
    }
}

/// openraft's network: one [`Connection`] per target, over the shared [`Peers`].
pub(crate) struct Network {
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Connection {
            peers: Arc::clone(&self.peers),
            target,
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("bad address {:?}: {e}", node.addr)),
        }
    }
}

/// The Raft RPCs to one voter.
pub(crate) struct Connection {
    peers: Arc<Peers>,
    target: NodeId,
    addr: std::result::Result<SocketAddr, String>,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> std::result::Result<Reply, RpcError<E>> {
        let addr = match &self.addr {
            Ok(addr) => *addr,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Error::Config(
                    message.clone(),
                ))));
            }
        };
        match self.peers.call(addr, &request, option.hard_ttl()).await {
            Ok(Reply::Failed { message }) => {
                Err(RPCError::Network(NetworkError::new(&Error::Raft(message))))
            }
            Ok(reply) => Ok(reply),
            // Refused or timed out connecting: openraft backs off before trying again.
            Err(e @ Error::Unreachable { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> RpcError<E> {
        let error = Error::Protocol {
            peer: format!("{:?}", self.addr),
            reason: format!("unexpected reply {reply:?}"),
        };
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(Ok(response)) => Ok(response),
            Reply::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(Ok(response)) => Ok(response),
            Reply::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RpcError> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(Ok(response)) => Ok(response),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }
}
