//! Committed offsets of consumer groups in the lake, so that a broker that lost its data folder
//! (or a cluster rebuilt from the lake) resumes consumers where they were.
//!
//! One JSON object per group: `_strata/groups/<group id, percent-encoded>.json`. The group id is
//! percent-encoded byte by byte over its UTF-8, every byte but ASCII letters, digits, `-`, `.`
//! and `_` as `%XX` (upper-case hex), so any group id is one object name, and two ids never share
//! one. The object holds the group id, each committed offset (topic, partition, offset, leader
//! epoch, metadata, commit timestamp) and when the broker wrote it:
//!
//! ```json
//! {
//!   "version": 1,
//!   "group": "billing",
//!   "written_at_ms": 1700000000000,
//!   "offsets": [
//!     {"topic": "orders", "partition": 0, "offset": 42, "leader_epoch": 3, "metadata": "",
//!      "commit_timestamp_ms": 1699999990000}
//!   ]
//! }
//! ```
//!
//! The group's coordinator writes the object whole (a PUT replaces it atomically) and deletes
//! it when the group is gone; what each offset means is the broker's business. A reader trusts
//! nothing: [`decode`] checks the version, that the object's group is the one its name encodes,
//! and that no partition appears twice.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The folder of the group objects under the tier URL.
pub const GROUPS_FOLDER: &str = "_strata/groups";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest group object read: 100 000 partitions with 4 KiB of metadata each (Kafka's
/// `offset.metadata.max.bytes` default is 4096) stay below it; a larger object is not one we
/// wrote, and reading it would hold that much memory.
pub const GROUP_OBJECT_BYTES_MAX: usize = 512 * 1024 * 1024;

/// One committed offset of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset to consume.
    pub offset: i64,
    /// Leader epoch of the last consumed record, -1 when unknown.
    pub leader_epoch: i32,
    /// The client's metadata.
    pub metadata: String,
    /// Broker time of the commit.
    pub commit_timestamp_ms: i64,
}

/// What the lake keeps of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Group id.
    pub group: String,
    /// Broker time this object was written.
    pub written_at_ms: i64,
    /// Committed offsets, by topic and partition.
    pub offsets: Vec<GroupOffset>,
}

impl GroupOffsets {
    /// The object for `group`'s `offsets` written at `written_at_ms`, offsets sorted by topic and
    /// partition.
    pub fn new(group: &str, written_at_ms: i64, mut offsets: Vec<GroupOffset>) -> Self {
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Self {
            version: FORMAT_VERSION,
            group: group.to_string(),
            written_at_ms,
            offsets,
        }
    }
}

/// A group object found by [`GroupFiles::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id, decoded from the object's name.
    pub group: String,
    /// When object storage last wrote the object (its clock, not the broker's).
    pub last_modified_ms: i64,
    /// Size in bytes.
    pub size: u64,
}

/// The name (without the folder) of `group`'s object: the id percent-encoded, then `.json`.
pub fn object_name(group: &str) -> String {
    let mut name = String::with_capacity(group.len() + 5);
    for byte in group.bytes() {
        if is_unreserved(byte) {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name.push_str(".json");
    name
}

/// The group id an object name stands for; `None` for a name [`object_name`] does not write
/// (another suffix, a bad escape, a character that should have been escaped, bytes that are not
/// UTF-8).
pub fn group_of(name: &str) -> Option<String> {
    let encoded = name.strip_suffix(".json")?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail.get(..2)?;
            // Upper-case only, as written: one name per group.
            if !hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
            {
                return None;
            }
            let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if is_unreserved(byte) {
                return None;
            }
            bytes.push(byte);
            rest = &tail[2..];
        } else if is_unreserved(first) {
            bytes.push(first);
            rest = tail;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_')
}

/// The path of `group`'s object.
pub fn object_path(group: &str) -> Path {
    // `parse`, not `from`: `from` would escape the name's `%` again.
    Path::parse(format!("{GROUPS_FOLDER}/{}", object_name(group)))
        .expect("an encoded group id is a valid path segment")
}

/// `offsets` as the object's bytes.
pub fn encode(offsets: &GroupOffsets) -> Vec<u8> {
    serde_json::to_vec_pretty(offsets).expect("group offsets serialize")
}

/// Reads the object of `group` (the group its name encodes): refuses another version, another
/// group id, and a partition listed twice.
pub fn decode(group: &str, bytes: &[u8]) -> Result<GroupOffsets> {
    let corrupt =
        |why: String| Error::Corrupt(format!("the lake's object of group {group:?}: {why}"));
    let parsed: GroupOffsets =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("does not parse: {e}")))?;
    if parsed.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this broker reads version {FORMAT_VERSION})",
            parsed.version
        )));
    }
    if parsed.group != group {
        return Err(corrupt(format!("it holds group {:?}", parsed.group)));
    }
    let mut seen = BTreeSet::new();
    for o in &parsed.offsets {
        if !seen.insert((o.topic.as_str(), o.partition)) {
            return Err(corrupt(format!(
                "partition {}-{} is listed twice",
                o.topic, o.partition
            )));
        }
        if o.partition < 0 {
            return Err(corrupt(format!(
                "partition {}-{} is negative",
                o.topic, o.partition
            )));
        }
    }
    Ok(parsed)
}

fn storage(e: object_store::Error) -> Error {
    // object_store errors name the path.
    Error::Storage(e.to_string())
}

/// The group objects of one lake.
#[derive(Debug, Clone)]
pub struct GroupFiles {
    store: Arc<dyn ObjectStore>,
}

impl GroupFiles {
    /// The group objects in `store` (the lake's object store).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Writes (or replaces) the object of `offsets.group`.
    pub async fn put(&self, offsets: &GroupOffsets) -> Result<()> {
        assert_eq!(
            offsets.version, FORMAT_VERSION,
            "written as this crate reads"
        );
        self.store
            .put(
                &object_path(&offsets.group),
                PutPayload::from(encode(offsets)),
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// The object of `group`, if there is one.
    pub async fn get(&self, group: &str) -> Result<Option<GroupOffsets>> {
        let found = match self.store.get(&object_path(group)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let size = usize::try_from(found.meta.size).unwrap_or(usize::MAX);
        if size > GROUP_OBJECT_BYTES_MAX {
            return Err(Error::Corrupt(format!(
                "the lake's object of group {group:?} holds {size} bytes, more than the \
                 {GROUP_OBJECT_BYTES_MAX} a group object may"
            )));
        }
        let bytes: Bytes = found.bytes().await.map_err(storage)?;
        decode(group, &bytes).map(Some)
    }

    /// Deletes the object of `group`; an object already gone is no error.
    pub async fn delete(&self, group: &str) -> Result<()> {
        match self.store.delete(&object_path(group)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// Every group object, by group id. Objects whose names [`object_name`] does not write are
    /// left out (a tool's stray file is not a group).
    pub async fn list(&self) -> Result<Vec<ListedGroup>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from(GROUPS_FOLDER)))
            .try_collect()
            .await
            .map_err(storage)?;
        let mut groups: Vec<ListedGroup> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let Some(group) = group_of(name) else {
                    tracing::debug!(path = %meta.location, "not a group object; left alone");
                    return None;
                };
                Some(ListedGroup {
                    group,
                    last_modified_ms: meta.last_modified.timestamp_millis(),
                    size: meta.size,
                })
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offset(topic: &str, partition: i32, offset: i64) -> GroupOffset {
        GroupOffset {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1_000 + offset,
        }
    }

    #[test]
    fn names_escape_everything_but_unreserved_characters() {
        assert_eq!(object_name("billing-v2.x_y"), "billing-v2.x_y.json");
        assert_eq!(object_name("a/b c%"), "a%2Fb%20c%25.json");
        assert_eq!(object_name("é"), "%C3%A9.json");
        assert_eq!(object_name(".."), "...json");
        assert_eq!(group_of("a%2Fb%20c%25.json").as_deref(), Some("a/b c%"));
        assert_eq!(group_of("...json").as_deref(), Some(".."));
        assert_eq!(
            object_path("a/b").as_ref(),
            "_strata/groups/a%2Fb.json",
            "one segment, escaped once"
        );
        // Names this module does not write.
        for name in [
            "g.txt",
            "g",
            "a%2fb.json",
            "a%2.json",
            "a%zz.json",
            "%61.json",
            "a b.json",
            "%FF.json",
        ] {
            assert_eq!(group_of(name), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn every_group_id_has_one_name_and_comes_back(group in any::<String>()) {
            let name = object_name(&group);
            prop_assert_eq!(group_of(&name), Some(group.clone()));
            let path = format!("{GROUPS_FOLDER}/{name}");
            prop_assert!(Path::parse(path).is_ok());
        }

        #[test]
        fn objects_round_trip(
            group in "[a-z]{1,8}",
            offsets in proptest::collection::btree_map(
                ("[a-z.]{1,6}", 0..50i32),
                (any::<i64>(), any::<i32>(), any::<String>(), any::<i64>()),
                0..20,
            ),
            written_at_ms in any::<i64>(),
        ) {
            let offsets = offsets
                .into_iter()
                .map(|((topic, partition), (offset, leader_epoch, metadata, ts))| GroupOffset {
                    topic,
                    partition,
                    offset,
                    leader_epoch,
                    metadata,
                    commit_timestamp_ms: ts,
                })
                .collect();
            let object = GroupOffsets::new(&group, written_at_ms, offsets);
            prop_assert_eq!(decode(&group, &encode(&object)).unwrap(), object);
        }
    }

    #[test]
    fn the_format_is_the_documented_one() {
        let object = GroupOffsets::new("billing", 1_700, vec![offset("orders", 0, 42)]);
        let json: serde_json::Value = serde_json::from_slice(&encode(&object)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1,
                "group": "billing",
                "written_at_ms": 1_700,
                "offsets": [{
                    "topic": "orders", "partition": 0, "offset": 42, "leader_epoch": 3,
                    "metadata": "m", "commit_timestamp_ms": 1_042
                }]
            })
        );
    }

    #[test]
    fn offsets_are_sorted_and_bad_objects_are_refused_with_the_reason() {
        let object = GroupOffsets::new(
            "g",
            5,
            vec![offset("b", 0, 1), offset("a", 1, 2), offset("a", 0, 3)],
        );
        let order: Vec<_> = object
            .offsets
            .iter()
            .map(|o| (o.topic.as_str(), o.partition))
            .collect();
        assert_eq!(order, [("a", 0), ("a", 1), ("b", 0)]);
        let bytes = encode(&object);

        let refused = |group: &str, bytes: &[u8]| decode(group, bytes).unwrap_err().to_string();
        assert!(refused("other", &bytes).contains("holds group \"g\""));
        assert!(refused("g", b"{").contains("does not parse"));
        let mut newer = object.clone();
        newer.version = 2;
        assert!(refused("g", &encode(&newer)).contains("format version 2"));
        let mut twice = object.clone();
        twice.offsets.push(offset("a", 0, 9));
        assert!(refused("g", &encode(&twice)).contains("a-0 is listed twice"));
        let mut negative = object;
        negative.offsets[0].partition = -1;
        assert!(refused("g", &encode(&negative)).contains("negative"));
    }

    #[tokio::test]
    async fn objects_are_written_listed_read_and_deleted_in_a_folder_lake() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::store::file_url(dir.path()).unwrap();
        let store = crate::store::open(&url, &Default::default()).unwrap();
        let files = GroupFiles::new(store);
        assert!(files.list().await.unwrap().is_empty());
        assert_eq!(files.get("a/b").await.unwrap(), None);

        let odd = "a/b %é~";
        let first = GroupOffsets::new(odd, 10, vec![offset("t", 0, 1)]);
        files.put(&first).await.unwrap();
        let plain = GroupOffsets::new("plain", 11, vec![offset("t", 1, 2)]);
        files.put(&plain).await.unwrap();
        // A stray file is not a group.
        std::fs::write(dir.path().join(GROUPS_FOLDER).join("notes.txt"), "x").unwrap();
        assert!(
            dir.path()
                .join(GROUPS_FOLDER)
                .join("a%2Fb%20%25%C3%A9%7E.json")
                .exists(),
            "one file, named as documented"
        );

        let listed: Vec<_> = files
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.group)
            .collect();
        assert_eq!(listed, [odd, "plain"]);
        assert_eq!(files.get(odd).await.unwrap(), Some(first));

        let second = GroupOffsets::new(odd, 20, vec![offset("t", 0, 5), offset("u", 0, 6)]);
        files.put(&second).await.unwrap();
        assert_eq!(files.get(odd).await.unwrap(), Some(second));

        files.delete(odd).await.unwrap();
        files.delete(odd).await.unwrap();
        assert_eq!(files.get(odd).await.unwrap(), None);
        assert_eq!(files.list().await.unwrap().len(), 1);

        // An object that is not what its name says is refused, naming the group.
        std::fs::write(
            dir.path().join(GROUPS_FOLDER).join("other.json"),
            encode(&plain),
        )
        .unwrap();
        let e = files.get("other").await.unwrap_err().to_string();
        assert!(
            e.contains("\"other\"") && e.contains("holds group \"plain\""),
            "{e}"
        );
    }
}
