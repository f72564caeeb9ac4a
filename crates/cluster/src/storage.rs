//! Raft storage under `meta_dir`, durable before openraft is answered.
//!
//! - `raft-log`: the log, an append-only file of checksummed records (appends, truncations,
//!   purges), fsynced per write and rewritten when purged records dominate it.
//! - `vote.json`: the vote, replaced atomically (write, fsync, rename, fsync the folder): a vote
//!   that is lost after it was granted could grant a second one in the same term.
//! - `committed.json`: the last committed log id, replaced atomically but not fsynced: it only
//!   lets a restart re-apply committed entries early, and an older value is still committed.
//! - `snapshot.json`: the last snapshot, its metadata and the whole [`ClusterState`] as JSON,
//!   replaced atomically. The state machine lives in memory and is rebuilt from it at start.
//!
//! [`ClusterState`]: crate::ClusterState

pub(crate) mod log;
pub(crate) mod state_machine;

use std::fs::File;
use std::io::Write;
use std::path::Path;

pub(crate) use self::log::LogStore;
pub(crate) use self::state_machine::StateMachine;
use crate::error::{Error, Result};

/// How hard [`replace_file`] works to make the new content durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// fsync the file before the rename and the folder after it: the new content survives a crash.
    Synced,
    /// Rename only: a crash may bring back the old content (never a torn one).
    Buffered,
}

/// Replaces `path` by `bytes` atomically: a temporary file renamed over it.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let at = |what: &str, p: &Path| format!("{what} {}", p.display());
    {
        let mut file = File::create(&tmp).map_err(|e| Error::io(at("create", &tmp), e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io(at("write", &tmp), e))?;
        if durability == Durability::Synced {
            file.sync_all()
                .map_err(|e| Error::io(at("fsync", &tmp), e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(at("rename to", path), e))?;
    if durability == Durability::Synced {
        sync_dir(path)?;
    }
    Ok(())
}

/// fsyncs the folder holding `path`, so a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync folder {}", dir.display()), e))
}

/// Reads a whole small file, `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Runs blocking file work off the async threads (fsync takes milliseconds).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Raft(format!("storage task failed: {e}")))?
}

/// An openraft storage error carrying ours.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<crate::raft::NodeId>,
    verb: openraft::ErrorVerb,
    error: &Error,
) -> crate::raft::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(error)).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use tempfile::TempDir;
    use tokio::sync::watch;

    use super::*;
    use crate::raft::{Entry, LogId, StorageError, TypeConfig};
    use crate::state::{ClusterState, Command, Response};

    fn open(dir: &Path) -> (LogStore, StateMachine, watch::Receiver<Arc<ClusterState>>) {
        let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
        let log = LogStore::open(dir).unwrap();
        let sm = StateMachine::open(dir, Arc::new(tx)).unwrap();
        (log, sm, rx)
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(
            &self,
        ) -> std::result::Result<(TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let (log, sm, _) = open(dir.path());
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn command(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[tokio::test]
    async fn the_state_comes_back_from_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut sm, rx) = open(dir.path());
        let entries = vec![
            command(
                1,
                Command::InitCluster {
                    cluster_id: "c".into(),
                },
            ),
            command(2, Command::AllocateProducerIds { count: 10 }),
        ];
        let responses = sm.apply(entries).await.unwrap();
        assert_eq!(responses[1], Response::ProducerIdBlock { start: 0 });
        assert_eq!(rx.borrow().applied_index, 2, "apply publishes");
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(2));
        let expected = rx.borrow().as_ref().clone();
        drop(sm);

        let (mut log, mut sm, rx) = open(dir.path());
        assert_eq!(
            *rx.borrow().as_ref(),
            expected,
            "open publishes the snapshot's state"
        );
        let (last_applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(last_applied.map(|l| l.index), Some(2));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        let state: ClusterState = serde_json::from_slice(current.snapshot.get_ref()).unwrap();
        assert_eq!(state.cluster_id, "c");
        assert!(log.get_log_state().await.unwrap().last_log_id.is_none());
    }
}
