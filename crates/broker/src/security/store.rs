//! Security records (SCRAM credentials, ACL bindings, client quotas) as a durable key-value
//! store: kind → key → JSON value. A single broker keeps them in `<data>/meta/security.json`,
//! replaced atomically; a cluster keeps them in the replicated metadata (`PutSecurity`), so every
//! broker sees the same records and they survive restarts. Readers cache what they compile from
//! the records by [`SecurityRecords::generation`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use strata_cluster::ClusterNode;

use crate::error::{Error, Result};

pub use strata_cluster::{SecurityChange, SecurityExpectation};

/// How long a change waits for the metadata quorum.
const CLUSTER_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every security record, and a generation that changes whenever the records may have changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SecurityRecords {
    /// Changes whenever the records may have changed (never goes back within one process).
    pub generation: u64,
    /// Records by kind, then key.
    pub kinds: BTreeMap<String, BTreeMap<String, String>>,
}

impl SecurityRecords {
    /// The records of one kind (empty when there are none).
    pub fn kind(&self, kind: &str) -> impl Iterator<Item = (&String, &String)> {
        self.kinds.get(kind).into_iter().flatten()
    }

    /// One record.
    pub fn get(&self, kind: &str, key: &str) -> Option<&String> {
        self.kinds.get(kind)?.get(key)
    }
}

/// Checks that every record is as `expected` ([`Error::SecurityConflict`] naming the first that
/// is not).
fn check_expected(
    kinds: &BTreeMap<String, BTreeMap<String, String>>,
    expected: &[SecurityExpectation],
) -> Result<()> {
    match expected
        .iter()
        .find(|e| kinds.get(&e.kind).and_then(|r| r.get(&e.key)) != e.value.as_ref())
    {
        Some(stale) => Err(Error::SecurityConflict(format!(
            "the security record {}/{} changed since it was read",
            stale.kind, stale.key
        ))),
        None => Ok(()),
    }
}

/// Applies `changes` in order to `kinds`.
fn apply(kinds: &mut BTreeMap<String, BTreeMap<String, String>>, changes: &[SecurityChange]) {
    for change in changes {
        let records = kinds.entry(change.kind.clone()).or_default();
        match &change.value {
            Some(value) => {
                records.insert(change.key.clone(), value.clone());
            }
            None => {
                records.remove(&change.key);
            }
        }
        if records.is_empty() {
            kinds.remove(&change.kind);
        }
    }
}

fn check(changes: &[SecurityChange]) -> Result<()> {
    match changes
        .iter()
        .find(|c| c.kind.is_empty() || c.key.is_empty())
    {
        Some(change) => Err(Error::InvalidConfig(format!(
            "a security record needs a kind and a key: {change:?}"
        ))),
        None => Ok(()),
    }
}

/// The records in one JSON file, `<data>/meta/security.json`, replaced atomically (write, fsync,
/// rename). Used by a single broker, and offline by `strata users` on a stopped broker's folder.
#[derive(Debug)]
pub struct LocalSecurityStore {
    path: PathBuf,
}

impl LocalSecurityStore {
    /// The store of the data folder `data_dir` (the file need not exist yet).
    pub fn open(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("meta").join("security.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record (none when the file does not exist).
    pub fn load(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Metadata(format!("{} does not parse: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::Metadata(format!("{}: {e}", self.path.display()))),
        }
    }

    /// Applies `changes` all at once, durably, and returns the records after them.
    pub fn apply(
        &self,
        changes: &[SecurityChange],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        self.apply_if(&[], changes)
    }

    /// As [`Self::apply`], when every record is as `expected` (else
    /// [`Error::SecurityConflict`], nothing written). Callers serialise their changes: the file
    /// is read, checked and replaced without a lock of its own.
    pub fn apply_if(
        &self,
        expected: &[SecurityExpectation],
        changes: &[SecurityChange],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        check(changes)?;
        let mut kinds = self.load()?;
        check_expected(&kinds, expected)?;
        apply(&mut kinds, changes);
        self.store(&kinds)?;
        Ok(kinds)
    }

    fn store(&self, kinds: &BTreeMap<String, BTreeMap<String, String>>) -> Result<()> {
        let dir = self.path.parent().expect("the path has a folder");
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))?;
        let bytes = serde_json::to_vec_pretty(kinds).expect("records serialize");
        strata_log::log::write_atomic(&self.path, &bytes)
            .map_err(|e| Error::Metadata(e.to_string()))?;
        // It holds the SCRAM keys: readable by the broker's user only, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Metadata(format!("{}: {e}", self.path.display())))
    }
}

enum Backend {
    Local {
        file: LocalSecurityStore,
        /// The records as last written: every request reads them, so this lock is only ever
        /// held for a pointer swap, never across the file's write and fsync.
        current: Mutex<Arc<SecurityRecords>>,
        /// Serialises changes (held across the write).
        writing: Mutex<()>,
    },
    Cluster {
        node: Arc<ClusterNode>,
        /// The applied index of the last metadata state seen, and its records.
        cached: Mutex<(u64, Arc<SecurityRecords>)>,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local { file, .. } => write!(f, "Local({})", file.path.display()),
            Backend::Cluster { .. } => f.write_str("Cluster"),
        }
    }
}

/// The broker's security records: see the module documentation.
#[derive(Debug)]
pub struct SecurityStore {
    backend: Backend,
}

/// Generations of local stores: distinct across stores so that a cache keyed by generation never
/// confuses two of them.
static LOCAL_GENERATION: AtomicU64 = AtomicU64::new(1);

impl SecurityStore {
    /// A single broker's store in its data folder.
    pub fn local(data_dir: &Path) -> Result<Self> {
        let file = LocalSecurityStore::open(data_dir);
        let kinds = file.load()?;
        let records = SecurityRecords {
            generation: LOCAL_GENERATION.fetch_add(1, Ordering::Relaxed),
            kinds,
        };
        Ok(Self {
            backend: Backend::Local {
                file,
                current: Mutex::new(Arc::new(records)),
                writing: Mutex::new(()),
            },
        })
    }

    /// A cluster broker's store: the replicated metadata.
    pub fn cluster(node: Arc<ClusterNode>) -> Self {
        Self {
            backend: Backend::Cluster {
                node,
                cached: Mutex::new((
                    u64::MAX,
                    Arc::new(SecurityRecords {
                        generation: LOCAL_GENERATION.fetch_add(1, Ordering::Relaxed) << 32,
                        kinds: BTreeMap::new(),
                    }),
                )),
            },
        }
    }

    /// Every record now. Cheap: a pointer copy unless the records changed.
    pub fn records(&self) -> Arc<SecurityRecords> {
        match &self.backend {
            Backend::Local { current, .. } => Arc::clone(&current.lock()),
            Backend::Cluster { node, cached } => {
                let state = Arc::clone(&node.state().borrow());
                let mut cached = cached.lock();
                let (seen_index, records) = &mut *cached;
                if *seen_index != state.applied_index {
                    *seen_index = state.applied_index;
                    // Most metadata changes are not security ones: the generation (and what
                    // readers compiled from it) stays until the records differ.
                    if records.kinds != state.security {
                        *records = Arc::new(SecurityRecords {
                            generation: records.generation + 1,
                            kinds: state.security.clone(),
                        });
                    }
                }
                Arc::clone(records)
            }
        }
    }

    /// Applies `changes` all at once; durable (written, or committed by the quorum) when it
    /// returns.
    pub async fn change(&self, changes: Vec<SecurityChange>) -> Result<()> {
        self.change_if(Vec::new(), changes).await
    }

    /// Compare-and-set: applies `changes` as [`Self::change`] does, only if every record is as
    /// `expected` (the values the caller read them at) when they apply; otherwise
    /// [`Error::SecurityConflict`] and nothing changes, and the caller reads again. A
    /// read-modify-write of a record so cannot lose a change made since its read.
    pub async fn change_if(
        &self,
        expected: Vec<SecurityExpectation>,
        changes: Vec<SecurityChange>,
    ) -> Result<()> {
        check(&changes)?;
        match &self.backend {
            Backend::Local {
                file,
                current,
                writing,
            } => crate::handler::off_the_workers(|| {
                // Checked under the change lock, against the file: no change between.
                let _writing = writing.lock();
                let kinds = file.apply_if(&expected, &changes)?;
                *current.lock() = Arc::new(SecurityRecords {
                    generation: LOCAL_GENERATION.fetch_add(1, Ordering::Relaxed),
                    kinds,
                });
                Ok(())
            }),
            Backend::Cluster { node, .. } => {
                let response = node
                    .submit(
                        strata_cluster::Command::PutSecurity { changes, expected },
                        CLUSTER_CHANGE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| Error::Cluster(e.to_string()))?;
                match response {
                    strata_cluster::Response::Rejected {
                        kind: strata_cluster::RejectKind::SecurityRecordChanged,
                        message,
                    } => Err(Error::SecurityConflict(message)),
                    strata_cluster::Response::Rejected { message, .. } => {
                        Err(Error::Cluster(message))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// At a cluster broker's start: the records of a local file written offline (`strata users
    /// add --data-dir` before the first start) that the cluster does not have yet are committed,
    /// then the file is renamed `security.json.imported` so that a record removed later is not
    /// imported again. A single broker reads the file itself and has nothing to import.
    pub async fn import_local(&self, data_dir: &Path) -> Result<()> {
        let Backend::Cluster { node, .. } = &self.backend else {
            return Ok(());
        };
        let file = LocalSecurityStore::open(data_dir);
        let local = file.load()?;
        if local.is_empty() {
            return Ok(());
        }
        let present = node.state().borrow().security.clone();
        let changes: Vec<SecurityChange> = local
            .into_iter()
            .flat_map(|(kind, records)| {
                records.into_iter().map(move |(key, value)| SecurityChange {
                    kind: kind.clone(),
                    key,
                    value: Some(value),
                })
            })
            .filter(|c| present.get(&c.kind).is_none_or(|r| !r.contains_key(&c.key)))
            .collect();
        let count = changes.len();
        if !changes.is_empty() {
            self.change(changes).await?;
        }
        let imported = file.path().with_extension("json.imported");
        std::fs::rename(file.path(), &imported)
            .map_err(|e| Error::Metadata(format!("renaming {}: {e}", file.path().display())))?;
        tracing::info!(
            records = count,
            file = %imported.display(),
            "imported the security records written offline into the cluster metadata"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kind: &str, key: &str, value: &str) -> SecurityChange {
        SecurityChange {
            kind: kind.into(),
            key: key.into(),
            value: Some(value.into()),
        }
    }

    #[tokio::test]
    async fn local_records_are_durable_atomic_and_change_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecurityStore::local(dir.path()).unwrap();
        let empty = store.records();
        assert!(empty.kinds.is_empty());
        store
            .change(vec![put("acl", "a", "1"), put("scram", "u", "2")])
            .await
            .unwrap();
        let after = store.records();
        assert_ne!(after.generation, empty.generation);
        assert_eq!(after.get("acl", "a").map(String::as_str), Some("1"));
        // A change that is refused leaves everything as it was.
        assert!(
            store
                .change(vec![put("acl", "b", "3"), put("", "x", "y")])
                .await
                .is_err()
        );
        assert_eq!(store.records(), after);
        store
            .change(vec![SecurityChange {
                kind: "acl".into(),
                key: "a".into(),
                value: None,
            }])
            .await
            .unwrap();
        // Reopened from the file: what was written, the emptied kind gone.
        let reopened = SecurityStore::local(dir.path()).unwrap().records();
        assert_eq!(reopened.kinds.len(), 1);
        assert_eq!(reopened.get("scram", "u").map(String::as_str), Some("2"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("meta/security.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the SCRAM keys are the owner's only");
        assert_eq!(reopened.kind("acl").count(), 0);
    }

    /// Requests read the records while a change is being written (the file read, written and
    /// fsynced): a slow disk holds up the change, not every request. The file is made a FIFO
    /// so that the change stays inside its read of it until the test lets it go on.
    #[cfg(target_os = "linux")]
    #[test]
    fn records_are_read_while_a_change_is_being_written() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_NONBLOCK: i32 = 0o4000;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SecurityStore::local(dir.path()).unwrap());
        let path = dir.path().join("meta/security.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let changing = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(store.change(vec![put("acl", "a", "1")]))
            })
        };
        // Opening the FIFO's write end succeeds once the change is reading it; no byte is
        // written yet, so the change waits inside its read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut fifo = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(&path)
            {
                Ok(fifo) => break fifo,
                Err(_) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("the change never read the file: {e}"),
            }
        };
        let (sent, read) = std::sync::mpsc::channel();
        let reader = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || sent.send(store.records().generation).unwrap())
        };
        let read_meanwhile = read.recv_timeout(std::time::Duration::from_secs(5));
        fifo.write_all(b"{}").unwrap();
        drop(fifo);
        changing.join().unwrap().unwrap();
        reader.join().unwrap();
        assert!(
            read_meanwhile.is_ok(),
            "records() waited for the change's write"
        );
        assert_eq!(
            store.records().get("acl", "a").map(String::as_str),
            Some("1")
        );
    }

    #[tokio::test]
    async fn a_conditional_change_applies_only_to_the_records_its_caller_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecurityStore::local(dir.path()).unwrap();
        let expect = |key: &str, value: Option<&str>| SecurityExpectation {
            kind: "quota".into(),
            key: key.into(),
            value: value.map(str::to_owned),
        };
        store
            .change_if(vec![expect("u", None)], vec![put("quota", "u", "a")])
            .await
            .unwrap();
        // Two read-modify-writes from the same read: the second is refused, the first stays.
        store
            .change_if(vec![expect("u", Some("a"))], vec![put("quota", "u", "ab")])
            .await
            .unwrap();
        let before = store.records();
        for stale in [expect("u", Some("a")), expect("u", None)] {
            let err = store
                .change_if(
                    vec![stale],
                    vec![put("quota", "u", "ac"), put("acl", "x", "1")],
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::SecurityConflict(_)), "{err}");
            assert!(err.to_string().contains("quota/u"), "{err}");
        }
        assert_eq!(store.records(), before);
        let reopened = SecurityStore::local(dir.path()).unwrap().records();
        assert_eq!(reopened.get("quota", "u").map(String::as_str), Some("ab"));
        assert_eq!(reopened.get("acl", "x"), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        std::fs::write(dir.path().join("meta/security.json"), b"{oops").unwrap();
        let err = SecurityStore::local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not parse"), "{err}");
    }
}
