//! A voter's controller listener: accepts connections, reads requests, dispatches them to the
//! Raft node or the controller, writes the replies. With [`crate::QuorumTls`] each connection
//! starts with a TLS handshake in which the peer must present a certificate the truststore
//! verifies (mutual TLS), and which [`crate::QuorumTlsConfigs::admit`] admits.

use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::error::Error;
use crate::node::Shared;
use crate::wire::{Reply, Request, read_frame, write_frame};

/// Open connections at most: each peer keeps a few (replication, votes, heartbeats, submits), and
/// every broker of a large cluster one or two; past this a connection is refused at once.
const CONNECTIONS_MAX: usize = 1024;
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the listener until the task is aborted (which drops every connection with it).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= CONNECTIONS_MAX {
                        tracing::warn!(%peer, "too many controller connections, refusing one");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    connections.spawn(accept(stream, peer.to_string(), Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: pause instead of spinning.
                    tracing::warn!(error = %e, "controller listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection, after the TLS handshake when the quorum is TLS.
async fn accept(stream: TcpStream, peer: String, shared: Arc<Shared>) {
    let Some(tls) = shared.config.tls.clone() else {
        return connection(stream, peer, shared).await;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(tls.0.server()).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => {
            let certificates = stream.get_ref().1.peer_certificates().unwrap_or_default();
            match tls.0.admit(certificates) {
                Ok(()) => connection(stream, peer, shared).await,
                Err(why) => tracing::warn!(target: "strata::audit", %peer, reason = %why,
                    "controller connection refused"),
            }
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "controller TLS handshake failed"),
        Err(_) => tracing::warn!(%peer, "controller TLS handshake timed out"),
    }
}

async fn connection(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: String,
    shared: Arc<Shared>,
) {
    loop {
        let request = match read_frame::<Request>(&mut stream, &peer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                // A peer's bad bytes end its connection, nothing else.
                tracing::debug!(%peer, error = %e, "controller connection closed");
                return;
            }
        };
        let reply = dispatch(&shared, request).await;
        if let Err(e) = write_frame(&mut stream, &reply, &peer).await {
            tracing::debug!(%peer, error = %e, "controller connection closed");
            return;
        }
    }
}

async fn dispatch(shared: &Shared, request: Request) -> Reply {
    let raft = shared.raft();
    match (request, raft) {
        (Request::AppendEntries(rpc), Some(raft)) => {
            Reply::AppendEntries(raft.append_entries(rpc).await)
        }
        (Request::Vote(rpc), Some(raft)) => Reply::Vote(raft.vote(rpc).await),
        (Request::InstallSnapshot(rpc), Some(raft)) => {
            Reply::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        (Request::Submit(command), _) => match shared.submit_local(command).await {
            Ok((response, index)) => Reply::Submitted { response, index },
            Err(Error::NotController { leader }) => Reply::NotController { leader },
            Err(e) => Reply::Failed {
                message: e.to_string(),
            },
        },
        (Request::Heartbeat { id, endpoint }, _) => shared.on_heartbeat(id, endpoint).await,
        (Request::FetchState { applied_index }, _) => shared.state_reply(applied_index),
        (_, None) => Reply::Failed {
            message: format!("node {} is not a voter", shared.config.node_id),
        },
    }
}
