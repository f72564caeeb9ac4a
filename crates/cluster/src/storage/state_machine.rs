//! The state machine: openraft's `RaftStateMachine` over [`ClusterState`], in memory, with the
//! last snapshot on disk.
//!
//! `apply` does not write: the state is rebuilt at start from `snapshot.json` plus the committed
//! log entries after it, which openraft re-applies (see `save_committed` in the log store).
//! Every applied batch is published on a `watch` channel, which is what [`crate::ClusterNode::state`]
//! hands out.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Durability, blocking, read_optional, replace_file, storage_error};
use crate::error::{Error, Result};
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{ClusterState, Response};

const SNAPSHOT_FILE: &str = "snapshot.json";

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    state: ClusterState,
}

/// The applied state.
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// The last snapshot: its metadata and the `ClusterState` JSON sent to followers.
#[derive(Clone)]
struct Current {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Inner {
    dir: PathBuf,
    applied: Mutex<Applied>,
    /// Held across the file write, so a slow older snapshot never overwrites a newer one.
    snapshot: tokio::sync::Mutex<Option<Current>>,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
    snapshot_seq: AtomicU64,
}

/// The state machine of one voter. Clones share it (the clone is the snapshot builder).
#[derive(Clone)]
pub(crate) struct StateMachine {
    inner: Arc<Inner>,
}

impl StateMachine {
    /// Opens the state machine under `dir` from its last snapshot, and publishes that state.
    pub(crate) fn open(
        dir: &Path,
        published: Arc<watch::Sender<Arc<ClusterState>>>,
    ) -> Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let (applied, current) = match read_optional(&path)? {
            None => (
                Applied {
                    last_applied: None,
                    membership: StoredMembership::default(),
                    state: ClusterState::default(),
                },
                None,
            ),
            Some(bytes) => {
                let file: SnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let data = encode_state(&file.state)?;
                let applied = Applied {
                    last_applied: file.meta.last_log_id,
                    membership: file.meta.last_membership.clone(),
                    state: file.state,
                };
                (
                    applied,
                    Some(Current {
                        meta: file.meta,
                        data,
                    }),
                )
            }
        };
        published.send_replace(Arc::new(applied.state.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                applied: Mutex::new(applied),
                snapshot: tokio::sync::Mutex::new(current),
                published,
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Makes `current` the last snapshot, on disk first, unless a newer one is already there.
    async fn save_snapshot(&self, current: Current, state: &ClusterState) -> Result<()> {
        let mut guard = self.inner.snapshot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > current.meta.last_log_id)
        {
            return Ok(());
        }
        let file = SnapshotFile {
            meta: current.meta.clone(),
            state: state.clone(),
        };
        let bytes =
            serde_json::to_vec(&file).map_err(|e| Error::Raft(format!("encode snapshot: {e}")))?;
        let path = self.inner.dir.join(SNAPSHOT_FILE);
        blocking(move || replace_file(&path, &bytes, Durability::Synced)).await?;
        *guard = Some(current);
        Ok(())
    }
}

fn encode_state(state: &ClusterState) -> Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(|e| Error::Raft(format!("encode cluster state: {e}")))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<TypeConfig>, StorageError> {
        let (last_applied, membership, state) = {
            let applied = self.inner.applied.lock();
            (
                applied.last_applied,
                applied.membership.clone(),
                applied.state.clone(),
            )
        };
        let subject = || ErrorSubject::Snapshot(None);
        let data =
            encode_state(&state).map_err(|e| storage_error(subject(), ErrorVerb::Write, &e))?;
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id, log_id.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let current = Current {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.save_snapshot(current, &state)
            .await
            .map_err(|e| storage_error(subject(), ErrorVerb::Write, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.inner.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.inner.applied.lock();
        let mut responses = Vec::new();
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Ok,
                EntryPayload::Normal(command) => applied.state.apply(command),
                EntryPayload::Membership(membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::Ok
                }
            };
            applied.last_applied = Some(entry.log_id);
            applied.state.applied_index = entry.log_id.index;
            responses.push(response);
        }
        self.inner
            .published
            .send_replace(Arc::new(applied.state.clone()));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let data = snapshot.into_inner();
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let mut state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            let error = Error::Corrupt {
                path: PathBuf::from("<received snapshot>"),
                reason: e.to_string(),
            };
            storage_error(subject(), ErrorVerb::Read, &error)
        })?;
        state.applied_index = meta.last_log_id.map_or(0, |l| l.index);
        let current = Current {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(current, &state)
            .await
            .map_err(|e| storage_error(subject(), ErrorVerb::Write, &e))?;
        let mut applied = self.inner.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.state = state;
        self.inner
            .published
            .send_replace(Arc::new(applied.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.inner.snapshot.lock().await.clone();
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(Cursor::new(c.data)),
        }))
    }
}
