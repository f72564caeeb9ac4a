//! The controller protocol between nodes: frames of a big-endian `u32` length and a JSON message,
//! one request and its reply at a time on a connection.
//!
//! Parsing works on bytes and does no I/O; `read_frame`/`write_frame` are the socket edge. A peer's
//! length is checked against [`FRAME_BYTES_MAX`] before anything is allocated.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::node::BrokerEndpoint;
use crate::raft::{NodeId, TypeConfig};
use crate::state::{ClusterState, Command, Response};

/// Largest frame either way: a snapshot chunk is 1 MiB (at most 4 MiB as a JSON byte array) and
/// a full `ClusterState` of a large cluster some megabytes; past this a peer is broken or hostile.
pub(crate) const FRAME_BYTES_MAX: usize = 64 << 20;

/// A request to a node.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Request {
    /// Raft log replication and leader heartbeats (voters only).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election (voters only).
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot chunk (voters only).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a command: only the Raft leader does, others answer `NotController`.
    Submit(Command),
    /// A broker is alive and reachable at `endpoint` (to the controller).
    Heartbeat {
        /// The broker's node id.
        id: i32,
        /// Where clients dial it.
        endpoint: BrokerEndpoint,
    },
    /// The state, if newer than `applied_index` (observers pull it).
    FetchState {
        /// The caller's applied index.
        applied_index: u64,
    },
}

/// The reply to a [`Request`].
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Reply {
    /// To `AppendEntries`.
    AppendEntries(std::result::Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(std::result::Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(
        std::result::Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        >,
    ),
    /// `Submit` committed and applied at log index `index` on the controller.
    Submitted {
        /// The apply result.
        response: Response,
        /// The entry's log index.
        index: u64,
    },
    /// This node is not the controller; `leader` is the one it knows.
    NotController {
        /// The active controller, if known.
        leader: Option<i32>,
    },
    /// `Heartbeat` recorded by the controller.
    HeartbeatAck,
    /// To `FetchState`.
    State {
        /// The active controller as this node knows it.
        controller: Option<i32>,
        /// The state, `None` when it is not newer than the caller's.
        state: Option<Box<ClusterState>>,
    },
    /// The request could not be served (a Raft RPC sent to a node outside the quorum, a stopped
    /// Raft node).
    Failed {
        /// Why.
        message: String,
    },
}

/// Encodes `message` as one frame.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    let mut frame = vec![0; 4];
    serde_json::to_writer(&mut frame, message)
        .map_err(|e| Error::Raft(format!("encode frame: {e}")))?;
    let len = frame.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(Error::Protocol {
            peer: "local".into(),
            reason: format!("frame of {len} bytes, at most {FRAME_BYTES_MAX}"),
        });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// The payload length a frame header announces, if within bounds.
pub(crate) fn payload_len(header: [u8; 4], peer: &str) -> Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(Error::Protocol {
            peer: peer.into(),
            reason: format!("frame of {len} bytes, at most {FRAME_BYTES_MAX}"),
        });
    }
    Ok(len)
}

/// Decodes one frame's payload.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8], peer: &str) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| Error::Protocol {
        peer: peer.into(),
        reason: format!("undecodable message: {e}"),
    })
}

/// Reads one frame; `None` on a clean end of stream before it.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
    peer: &str,
) -> Result<Option<T>> {
    let mut header = [0; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io(format!("read from {peer}"), e)),
    }
    let len = payload_len(header, peer)?;
    let mut payload = vec![0; len];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|e| Error::io(format!("read a {len}-byte frame from {peer}"), e))?;
    decode(&payload, peer).map(Some)
}

/// Writes one frame.
pub(crate) async fn write_frame<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &T,
    peer: &str,
) -> Result<()> {
    let frame = encode(message)?;
    writer
        .write_all(&frame)
        .await
        .map_err(|e| Error::io(format!("write to {peer}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs, snapshots and heartbeats written before listener names still decode: no
    /// listeners, the broker's host and port serve every listener.
    #[test]
    fn brokers_registered_before_listener_names_still_decode() {
        let command: crate::Command = serde_json::from_str(
            r#"{"RegisterBroker":{"id":1,"host":"h","port":9092,"rack":null}}"#,
        )
        .unwrap();
        assert!(matches!(
            command,
            crate::Command::RegisterBroker { ref listeners, .. } if listeners.is_empty()
        ));
        let info: crate::BrokerInfo =
            serde_json::from_str(r#"{"id":1,"host":"h","port":9092,"rack":null,"fenced":false}"#)
                .unwrap();
        assert!(info.listeners.is_empty());
        let endpoint: BrokerEndpoint =
            serde_json::from_str(r#"{"host":"h","port":9092,"rack":null}"#).unwrap();
        assert!(endpoint.listeners.is_empty());
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let request = Request::Heartbeat {
            id: 3,
            endpoint: BrokerEndpoint {
                host: "h".into(),
                port: 9092,
                rack: Some("r".into()),
                listeners: Vec::new(),
            },
        };
        let mut bytes = encode(&request).unwrap();
        bytes.extend(encode(&Request::Submit(Command::FenceBroker { id: 3 })).unwrap());
        let mut reader = bytes.as_slice();
        let first: Request = read_frame(&mut reader, "p").await.unwrap().unwrap();
        assert!(matches!(first, Request::Heartbeat { id: 3, endpoint } if endpoint.port == 9092));
        let second: Request = read_frame(&mut reader, "p").await.unwrap().unwrap();
        assert!(matches!(
            second,
            Request::Submit(Command::FenceBroker { id: 3 })
        ));
        assert!(
            read_frame::<Request>(&mut reader, "p")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        // Oversized length: refused before allocating.
        let mut huge = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
        huge.extend([0; 16]);
        let error = read_frame::<Request>(&mut huge.as_slice(), "p")
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Protocol { .. }), "{error}");
        // Garbage payload.
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend(b"{x]");
        let error = read_frame::<Request>(&mut garbage.as_slice(), "p")
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Protocol { .. }), "{error}");
        // Valid JSON, not a request.
        let frame = encode(&Reply::HeartbeatAck).unwrap();
        let error = read_frame::<Request>(&mut frame.as_slice(), "p")
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Protocol { .. }), "{error}");
        // Cut inside the payload or the header.
        let frame = encode(&Request::FetchState { applied_index: 1 }).unwrap();
        let error = read_frame::<Request>(&mut &frame[..frame.len() - 1], "p")
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error}");
        assert!(
            read_frame::<Request>(&mut &frame[..2], "p")
                .await
                .unwrap()
                .is_none()
        );
    }
}
