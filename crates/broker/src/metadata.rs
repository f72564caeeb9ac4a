//! Cluster metadata (topics, their ids, partition counts and configs, the producer id block) behind
//! one trait, so that a single broker keeps it in a local file and a cluster can later keep it in a
//! coordination service.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// One topic as the metadata store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Stable topic id (KIP-516).
    pub topic_id: Uuid,
    /// Number of partitions.
    pub partitions: i32,
    /// Topic config overrides by Kafka name.
    pub configs: BTreeMap<String, String>,
}

/// Everything the metadata store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// Cluster id shown to clients.
    pub cluster_id: String,
    /// Producer ids below this were handed out (or reserved) already.
    pub producer_id_block_end: i64,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
}

impl ClusterMetadata {
    fn new() -> Self {
        Self {
            cluster_id: Uuid::new_v4().simple().to_string()[..22].to_string(),
            producer_id_block_end: 0,
            topics: BTreeMap::new(),
        }
    }
}

/// Durable storage of [`ClusterMetadata`].
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Loads the metadata, creating it on first use.
    fn load(&self) -> Result<ClusterMetadata>;
    /// Replaces the stored metadata durably before returning.
    fn store(&self, metadata: &ClusterMetadata) -> Result<()>;
}

/// Metadata in one JSON file, replaced atomically (write, fsync, rename).
#[derive(Debug)]
pub struct LocalMetadataStore {
    path: PathBuf,
}

impl LocalMetadataStore {
    /// A store at `<data_dir>/meta/cluster.json`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            path: data_dir.join("meta").join("cluster.json"),
        }
    }
}

impl MetadataStore for LocalMetadataStore {
    fn load(&self) -> Result<ClusterMetadata> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Metadata(format!("{} does not parse: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let metadata = ClusterMetadata::new();
                self.store(&metadata)?;
                Ok(metadata)
            }
            Err(e) => Err(Error::Metadata(format!("{}: {e}", self.path.display()))),
        }
    }

    fn store(&self, metadata: &ClusterMetadata) -> Result<()> {
        let dir = self.path.parent().expect("the path has a folder");
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Metadata(format!("{}: {e}", dir.display())))?;
        let bytes = serde_json::to_vec_pretty(metadata).expect("metadata serializes");
        strata_log::log::write_atomic(&self.path, &bytes)
            .map_err(|e| Error::Metadata(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance suite every [`MetadataStore`] must pass.
    pub(crate) fn conformance(store: &dyn MetadataStore) {
        let mut first = store.load().unwrap();
        assert_eq!(
            store.load().unwrap(),
            first,
            "a second load sees the same cluster"
        );
        first.topics.insert(
            "orders".into(),
            TopicRecord {
                topic_id: Uuid::new_v4(),
                partitions: 3,
                configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            },
        );
        first.producer_id_block_end = 1000;
        store.store(&first).unwrap();
        assert_eq!(store.load().unwrap(), first);
        first.topics.clear();
        store.store(&first).unwrap();
        assert!(store.load().unwrap().topics.is_empty());
    }

    #[test]
    fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&LocalMetadataStore::new(dir.path()));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalMetadataStore::new(dir.path());
        store.load().unwrap();
        std::fs::write(dir.path().join("meta/cluster.json"), b"{not json").unwrap();
        assert!(
            store
                .load()
                .unwrap_err()
                .to_string()
                .contains("does not parse")
        );
    }
}
