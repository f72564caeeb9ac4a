//! The coordinator of a set of groups (a single broker's every group, or in a cluster the groups
//! of one `__consumer_offsets` partition): one lock over the groups' state machines and their
//! committed offsets, each change written to the offsets log before it is answered.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use crate::error::{Error, Result};
use crate::group::{Answer, Group, GroupState, GroupTimeouts, JoinRequest, JoinResult, SyncResult};
use crate::offsets_log::{Durable, LocalOffsetsLog, OffsetsLog};
use crate::store::{BatchKind, CommittedOffset, OffsetStore, StoreKey, StoreState, StoreValue};

/// Group and offset settings, from Kafka's broker settings.
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorConfig {
    /// Session and rebalance timing.
    pub timeouts: GroupTimeouts,
    /// `offsets.retention.minutes`, in ms: offsets of an empty group expire this long after it
    /// emptied (or after the commit, if later).
    pub offsets_retention_ms: i64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
}

/// One group with its offsets.
#[derive(Debug)]
struct Entry {
    group: Group,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

#[derive(Debug)]
struct Inner {
    groups: HashMap<String, Entry>,
    store: Option<OffsetStore>,
    state: StoreState,
    /// Groups whose committed offsets changed since [`GroupCoordinator::take_offset_changes`]
    /// last took them; `None` until [`GroupCoordinator::track_offset_changes`] (nobody asks,
    /// and group ids that come and go would pile up).
    offset_changes: Option<BTreeSet<String>>,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// State name.
    pub state: &'static str,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen assignor.
    pub protocol_name: String,
    /// `(member id, instance id, client id, client host, metadata, assignment)`.
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

/// OffsetFetch's answer: each partition's committed offset (`None`: there is none), or the error
/// it gets (UNSTABLE_OFFSET_COMMIT while a transaction's offset for it is pending and the
/// request requires stable offsets).
pub type PartitionOffsets = Vec<(String, i32, Result<Option<CommittedOffset>, ResponseError>)>;

/// A TxnOffsetCommit as the coordinator takes it: offsets a transactional producer commits in
/// its transaction, in effect once the transaction commits.
#[derive(Debug, Clone)]
pub struct TxnOffsetCommit {
    /// The producer's transactional id.
    pub transactional_id: String,
    /// The producer.
    pub producer_id: i64,
    /// Its epoch: the offsets log refuses an older one than its last (a fenced producer's).
    pub producer_epoch: i16,
    /// The consumer's member id (v3+; empty before).
    pub member_id: String,
    /// The consumer's static membership id (v3+).
    pub group_instance_id: Option<String>,
    /// The consumer's generation (v3+; -1 before).
    pub generation_id: i32,
    /// `(topic, partition, offset)`.
    pub offsets: Vec<(String, i32, CommittedOffset)>,
}

/// A group's committed offsets kept elsewhere, for [`GroupCoordinator::import_offsets`]:
/// `(group, [(topic, partition, offset)])`.
pub type ImportedGroup = (String, Vec<(String, i32, CommittedOffset)>);

/// What a group's record keeps besides its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The generation only: members rejoin after the coordinator restarts (a single broker's
    /// records, as they have always been).
    Generation,
    /// The protocol and the members of each stable generation too (Kafka's group metadata): a
    /// coordinator that takes the groups over (a new leader of their offsets partition) resumes
    /// them without a rebalance.
    Members,
}

/// The coordinator of a set of groups.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    membership: Membership,
    inner: Mutex<Inner>,
}

impl GroupCoordinator {
    /// Opens a single broker's local offsets log under `dir` and restores groups and offsets
    /// from it.
    pub fn open(dir: &Path, config: CoordinatorConfig, now_ms: i64) -> Result<Self> {
        let log = LocalOffsetsLog::open(dir, now_ms)?;
        Self::load(Box::new(log), config, Membership::Generation, now_ms)
    }

    /// Restores groups and offsets by replaying `log`, then writes their changes to it.
    pub fn load(
        log: Box<dyn OffsetsLog>,
        config: CoordinatorConfig,
        membership: Membership,
        now_ms: i64,
    ) -> Result<Self> {
        let (store, state) = OffsetStore::load(log)?;
        let mut groups: HashMap<String, Entry> = HashMap::new();
        for (key, value) in state.iter() {
            match (key, value) {
                (
                    StoreKey::Offset {
                        group,
                        topic,
                        partition,
                    },
                    StoreValue::Offset(o),
                ) => {
                    entry(&mut groups, group, 0, now_ms)
                        .offsets
                        .insert((topic.clone(), *partition), o.clone());
                }
                (StoreKey::Group { group }, StoreValue::Group(g)) => {
                    entry(&mut groups, group, g.generation_id, now_ms).group =
                        Group::restore(group, g, now_ms);
                }
                _ => {}
            }
        }
        // A group with pending transactional offsets only exists too, as Kafka creates it.
        for (_, txn) in state.pending() {
            for key in txn.offsets.keys() {
                entry(&mut groups, key.group(), 0, now_ms);
            }
        }
        Ok(Self {
            config,
            membership,
            inner: Mutex::new(Inner {
                groups,
                store: Some(store),
                state,
                offset_changes: None,
            }),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// JoinGroup.
    pub fn join(&self, group_id: &str, request: JoinRequest, now_ms: i64) -> Answer<JoinResult> {
        if group_id.is_empty() {
            return Answer::Now(JoinResult {
                error: ResponseError::InvalidGroupId.code(),
                generation_id: -1,
                ..JoinResult::default()
            });
        }
        let mut inner = self.lock();
        let (answer, completed) = entry(&mut inner.groups, group_id, 0, now_ms).group.join(
            request,
            self.config.timeouts,
            now_ms,
        );
        if completed.is_some() {
            inner.persist_group(group_id, self.membership, now_ms);
        }
        answer
    }

    /// SyncGroup.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
    ) -> Answer<SyncResult> {
        let mut inner = self.lock();
        let Some(e) = inner.groups.get_mut(group_id) else {
            return Answer::Now(SyncResult {
                error: ResponseError::UnknownMemberId.code(),
                ..SyncResult::default()
            });
        };
        let before = e.group.state;
        let answer = e
            .group
            .sync(member_id, instance, generation_id, assignments, now_ms);
        // The leader's assignment made the generation stable: its members are worth keeping.
        if self.membership == Membership::Members
            && before != GroupState::Stable
            && e.group.state == GroupState::Stable
        {
            inner.persist_group(group_id, self.membership, now_ms);
        }
        answer
    }

    /// Heartbeat: the error code.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> i16 {
        let mut inner = self.lock();
        match inner.groups.get_mut(group_id) {
            Some(e) => e
                .group
                .heartbeat(member_id, instance, generation_id, now_ms),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup: an error code per member, or a group-level error.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now_ms: i64,
    ) -> Result<Vec<i16>> {
        let mut inner = self.lock();
        let Some(e) = inner.groups.get_mut(group_id) else {
            return Err(Error::Refused {
                group: group_id.into(),
                code: ResponseError::UnknownMemberId,
            });
        };
        let (codes, completed) = e.group.leave(members, self.config.timeouts, now_ms);
        if completed.is_some() {
            inner.persist_group(group_id, self.membership, now_ms);
        }
        Ok(codes)
    }

    /// OffsetCommit: checks membership, then stores every offset in one append. Returns an error
    /// code per offset, and when the append is durable (answer the client then).
    pub fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        offsets: Vec<(String, i32, CommittedOffset)>,
        now_ms: i64,
    ) -> Result<(Vec<i16>, Durable)> {
        if group_id.is_empty() {
            return Err(Error::InvalidGroupId);
        }
        let mut inner = self.lock();
        entry(&mut inner.groups, group_id, 0, now_ms)
            .group
            .check_commit(member_id, instance, generation_id)
            .map_err(|code| Error::Refused {
                group: group_id.into(),
                code,
            })?;
        let (codes, accepted) = self.screen(offsets);
        let records = offset_records(group_id, &accepted);
        let durable = inner
            .write(BatchKind::Plain, &records, now_ms)
            .inspect_err(|e| {
                tracing::error!(group = group_id, error = %e, "writing committed offsets");
            })?;
        if !accepted.is_empty() {
            inner.offsets_changed(group_id);
        }
        let entry = inner.groups.get_mut(group_id).expect("created above");
        for (topic, partition, o) in accepted {
            entry.offsets.insert((topic, partition), o);
        }
        Ok((codes, durable))
    }

    /// Checks each offset's metadata size: an error code per offset, and the offsets accepted.
    fn screen(
        &self,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> (Vec<i16>, Vec<(String, i32, CommittedOffset)>) {
        let codes: Vec<i16> = offsets
            .iter()
            .map(|(_, _, o)| {
                if o.metadata.len() > self.config.offset_metadata_max_bytes {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    0
                }
            })
            .collect();
        let accepted = offsets
            .into_iter()
            .zip(&codes)
            .filter(|(_, c)| **c == 0)
            .map(|(o, _)| o)
            .collect();
        (codes, accepted)
    }

    /// TxnOffsetCommit: checks the member as Kafka does for a transactional producer's commit
    /// ([`Group::check_txn_commit`]; a group that does not exist takes generation -1 only), then
    /// writes the offsets in one transactional batch of the producer. They stay pending,
    /// invisible to OffsetFetch, until [`GroupCoordinator::complete_transaction`] commits them.
    /// Returns an error code per offset, and when the batch is durable (answer the client then).
    pub fn commit_transactional(
        &self,
        group_id: &str,
        request: TxnOffsetCommit,
        now_ms: i64,
    ) -> Result<(Vec<i16>, Durable)> {
        if group_id.is_empty() {
            return Err(Error::InvalidGroupId);
        }
        let refused = |code| Error::Refused {
            group: group_id.into(),
            code,
        };
        if request.producer_id < 0 || request.producer_epoch < 0 {
            return Err(refused(ResponseError::InvalidProducerIdMapping));
        }
        let mut inner = self.lock();
        match inner.groups.get(group_id) {
            Some(e) => e
                .group
                .check_txn_commit(
                    &request.member_id,
                    request.group_instance_id.as_deref(),
                    request.generation_id,
                )
                .map_err(refused)?,
            None if request.generation_id >= 0 => {
                return Err(refused(ResponseError::IllegalGeneration));
            }
            None => {}
        }
        let (codes, accepted) = self.screen(request.offsets);
        let records = offset_records(group_id, &accepted);
        let kind = BatchKind::Transactional {
            producer_id: request.producer_id,
            producer_epoch: request.producer_epoch,
        };
        let durable = inner.write(kind, &records, now_ms).inspect_err(|e| {
            tracing::warn!(group = group_id, transactional_id = %request.transactional_id,
                producer_id = request.producer_id, error = %e,
                "writing transactional offsets");
        })?;
        entry(&mut inner.groups, group_id, 0, now_ms);
        Ok((codes, durable))
    }

    /// Ends `producer_id`'s transaction in this coordinator's offsets log (a transaction marker,
    /// as WriteTxnMarkers delivers it): appends the marker (a control batch), then on commit
    /// makes the producer's pending offsets the committed ones, except where a commit written
    /// later holds the partition, and on abort drops them. The marker is written even when the
    /// producer has no pending offset here, as Kafka writes it. The log refuses a marker of an
    /// older producer epoch or coordinator epoch. Resolves the returned future once the marker is
    /// durable.
    pub fn complete_transaction(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        now_ms: i64,
    ) -> Result<Durable> {
        let mut inner = self.lock();
        let Inner {
            groups,
            store,
            state,
            offset_changes,
        } = &mut *inner;
        let store = store.as_mut().ok_or(Error::Closed)?;
        let marker = strata_log::txn::Marker {
            commit,
            coordinator_epoch,
        };
        let position = store
            .append_marker(producer_id, producer_epoch, marker, now_ms)
            .inspect_err(|e| {
                tracing::warn!(producer_id, producer_epoch, commit, error = %e,
                    "writing a transaction marker to the offsets log");
            })?;
        let durable = store.durable(Some(position));
        let committed = state.apply_marker(producer_id, commit);
        tracing::debug!(
            producer_id,
            commit,
            offsets = committed.len(),
            "ended a transaction's offsets"
        );
        for (key, offset) in committed {
            if let StoreKey::Offset {
                group,
                topic,
                partition,
            } = key
            {
                if let Some(changes) = offset_changes.as_mut() {
                    changes.insert(group.clone());
                }
                entry(groups, &group, 0, now_ms)
                    .offsets
                    .insert((topic, partition), offset);
            }
        }
        Ok(durable)
    }

    /// OffsetFetch: committed offsets of the requested partitions, or of every partition with
    /// one. With `require_stable` (v7+), a partition with a pending transactional offset gets
    /// UNSTABLE_OFFSET_COMMIT instead, as in Kafka; without, its last committed offset.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> PartitionOffsets {
        let inner = self.lock();
        let offsets = inner.groups.get(group_id).map(|e| &e.offsets);
        let answer = |topic: &str, partition: i32, found: Option<&CommittedOffset>| {
            if require_stable
                && inner
                    .state
                    .has_pending(&offset_key(group_id, topic, partition))
            {
                Err(ResponseError::UnstableOffsetCommit)
            } else {
                Ok(found.cloned())
            }
        };
        match wanted {
            Some(topics) => topics
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    partitions
                        .into_iter()
                        .map(|p| {
                            let found = offsets.and_then(|o| o.get(&(topic.clone(), p)));
                            (topic.clone(), p, answer(&topic, p, found))
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), o)| (t.clone(), *p, answer(t, *p, Some(o))))
                .collect(),
        }
    }

    /// ListGroups: `(group id, protocol type, state)`.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let inner = self.lock();
        let mut all: Vec<_> = inner
            .groups
            .values()
            .map(|e| {
                (
                    e.group.group_id.clone(),
                    e.group
                        .protocol_type
                        .clone()
                        .unwrap_or_else(|| "consumer".into()),
                    e.group.state.name(),
                )
            })
            .collect();
        all.sort();
        all
    }

    /// DescribeGroups for one group; `None` when it does not exist.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let inner = self.lock();
        let e = inner.groups.get(group_id)?;
        let protocol = e.group.protocol_name.clone().unwrap_or_default();
        Some(GroupDescription {
            state: e.group.state.name(),
            protocol_type: e.group.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            members: e
                .group
                .members
                .values()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        m.group_instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        m.metadata(&protocol),
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }

    /// DeleteGroups: only empty groups; their offsets go too. Resolves the returned future once
    /// the deletion is durable.
    pub fn delete_group(&self, group_id: &str, now_ms: i64) -> Result<Durable> {
        let mut inner = self.lock();
        let Some(e) = inner.groups.get(group_id) else {
            return Err(Error::GroupNotFound {
                group: group_id.into(),
            });
        };
        if e.group.state != GroupState::Empty {
            return Err(Error::NonEmptyGroup {
                group: group_id.into(),
                state: e.group.state.name(),
            });
        }
        let mut records: Vec<_> = e
            .offsets
            .keys()
            .map(|(t, p)| (offset_key(group_id, t, *p), None))
            .collect();
        // Pending transactional offsets go too (a deletion drops them), as in Kafka.
        for key in inner.state.pending_keys(group_id) {
            if !records.iter().any(|(k, _)| *k == key) {
                records.push((key, None));
            }
        }
        records.push((
            StoreKey::Group {
                group: group_id.into(),
            },
            None,
        ));
        let had_offsets = !e.offsets.is_empty();
        let durable = inner.write(BatchKind::Plain, &records, now_ms)?;
        inner.groups.remove(group_id);
        if had_offsets {
            inner.offsets_changed(group_id);
        }
        Ok(durable)
    }

    /// OffsetDelete: removes offsets of partitions of topics the group does not subscribe to, and
    /// any pending transactional offset of them (as Kafka's tombstone drops them). Returns an
    /// error code per partition, and when the removal is durable.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<(Vec<i16>, Durable)> {
        let mut inner = self.lock();
        let Some(e) = inner.groups.get(group_id) else {
            return Err(Error::GroupNotFound {
                group: group_id.into(),
            });
        };
        let subscribed = e.group.subscribed_topics();
        let codes: Vec<i16> = partitions
            .iter()
            .map(|(t, _)| {
                if subscribed.contains(t) {
                    ResponseError::GroupSubscribedToTopic.code()
                } else {
                    0
                }
            })
            .collect();
        let doomed: Vec<(String, i32)> = partitions
            .iter()
            .zip(&codes)
            .filter(|(_, c)| **c == 0)
            .map(|(p, _)| p.clone())
            .collect();
        let records: Vec<_> = doomed
            .iter()
            .map(|(t, p)| (offset_key(group_id, t, *p), None))
            .collect();
        let durable = inner.write(BatchKind::Plain, &records, now_ms)?;
        if !doomed.is_empty() {
            inner.offsets_changed(group_id);
        }
        let e = inner.groups.get_mut(group_id).expect("checked");
        for key in doomed {
            e.offsets.remove(&key);
        }
        Ok((codes, durable))
    }

    /// Timers of every group, and offset expiry of empty groups when `expire_offsets`.
    pub fn tick(&self, now_ms: i64, expire_offsets: bool) {
        let mut inner = self.lock();
        let mut completed = Vec::new();
        for (id, e) in inner.groups.iter_mut() {
            if e.group.tick(self.config.timeouts, now_ms).is_some() {
                completed.push(id.clone());
            }
        }
        for id in completed {
            inner.persist_group(&id, self.membership, now_ms);
        }
        if expire_offsets {
            inner.expire_offsets(self.config.offsets_retention_ms, now_ms);
        }
        let Inner { store, state, .. } = &mut *inner;
        if let Some(store) = store.as_mut()
            && let Err(e) = store.compact_if_needed(state, now_ms)
        {
            tracing::error!(error = %e, "compacting the offsets log");
        }
    }

    /// From now on, remembers which groups' committed offsets change (a commit, a transaction's
    /// commit marker, OffsetDelete, DeleteGroups, expiry, an import), for
    /// [`GroupCoordinator::take_offset_changes`]. The broker copies them to the lake this way.
    pub fn track_offset_changes(&self) {
        let mut inner = self.lock();
        if inner.offset_changes.is_none() {
            inner.offset_changes = Some(BTreeSet::new());
        }
    }

    /// The groups whose committed offsets changed since the last call (since
    /// [`GroupCoordinator::track_offset_changes`] for the first), in order of group id; read
    /// their offsets now with [`GroupCoordinator::fetch_offsets`] (none left: the group is
    /// gone, or its offsets are).
    pub fn take_offset_changes(&self) -> Vec<String> {
        let mut inner = self.lock();
        match inner.offset_changes.as_mut() {
            Some(changes) => std::mem::take(changes).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Every group with committed offsets, with the newest commit timestamp among them.
    pub fn groups_with_offsets(&self) -> Vec<(String, i64)> {
        let inner = self.lock();
        let mut found: Vec<(String, i64)> = inner
            .groups
            .iter()
            .filter_map(|(id, e)| {
                let newest = e.offsets.values().map(|o| o.commit_timestamp_ms).max()?;
                Some((id.clone(), newest))
            })
            .collect();
        found.sort();
        found
    }

    /// Restores committed offsets kept elsewhere (the lake's copy, for a coordinator whose
    /// offsets log is new): `(group, [(topic, partition, offset)])`, each offset as it was
    /// committed (its commit timestamp kept). They are written to the offsets log as commits
    /// are, and their groups exist (empty) from now on. A partition that already has a committed
    /// offset here keeps it: what was committed through this coordinator is newer. Groups with
    /// an empty id are skipped. Returns how many offsets were restored, and when they are
    /// durable.
    pub fn import_offsets(
        &self,
        groups: Vec<ImportedGroup>,
        now_ms: i64,
    ) -> Result<(usize, Durable)> {
        let mut inner = self.lock();
        let mut restored = Vec::new();
        for (group, offsets) in groups {
            if group.is_empty() {
                continue;
            }
            let known = inner.groups.get(&group).map(|e| &e.offsets);
            let fresh: Vec<_> = offsets
                .into_iter()
                .filter(|(t, p, _)| !known.is_some_and(|o| o.contains_key(&(t.clone(), *p))))
                .collect();
            if !fresh.is_empty() {
                restored.push((group, fresh));
            }
        }
        let records: Vec<_> = restored
            .iter()
            .flat_map(|(group, offsets)| offset_records(group, offsets))
            .collect();
        let durable = inner.write(BatchKind::Plain, &records, now_ms)?;
        for (group, offsets) in restored {
            inner.offsets_changed(&group);
            let e = entry(&mut inner.groups, &group, 0, now_ms);
            for (topic, partition, o) in offsets {
                e.offsets.insert((topic, partition), o);
            }
        }
        Ok((records.len(), durable))
    }

    /// Flushes and closes the offsets log.
    pub fn close(&self, now_ms: i64) {
        if let Some(store) = self.lock().store.take()
            && let Err(e) = store.close(now_ms)
        {
            tracing::error!(error = %e, "closing the offsets log");
        }
    }
}

impl Inner {
    /// Notes that `group`'s committed offsets changed, when changes are tracked.
    fn offsets_changed(&mut self, group: &str) {
        if let Some(changes) = self.offset_changes.as_mut()
            && !changes.contains(group)
        {
            changes.insert(group.to_string());
        }
    }

    /// Appends the records as `kind`; the future resolves once they are durable.
    fn write(
        &mut self,
        kind: BatchKind,
        records: &[(StoreKey, Option<StoreValue>)],
        now_ms: i64,
    ) -> Result<Durable> {
        if records.is_empty() {
            return Ok(crate::offsets_log::durable_now());
        }
        let store = self.store.as_mut().ok_or(Error::Closed)?;
        let positions = store.append(kind, records, now_ms)?;
        let durable = store.durable(positions.last().copied());
        for ((key, value), position) in records.iter().zip(positions) {
            self.state.apply(kind, key.clone(), value.clone(), position);
        }
        Ok(durable)
    }

    /// Writes the group's record. Nobody waits for it: a group record lost with its
    /// coordinator costs the members a rejoin, not an offset.
    fn persist_group(&mut self, group_id: &str, membership: Membership, now_ms: i64) {
        let Some(e) = self.groups.get(group_id) else {
            return;
        };
        let record = (
            StoreKey::Group {
                group: group_id.into(),
            },
            Some(StoreValue::Group(
                e.group.record(membership == Membership::Members),
            )),
        );
        if let Err(e) = self.write(BatchKind::Plain, &[record], now_ms) {
            tracing::error!(group = group_id, error = %e, "persisting the group");
        }
    }

    /// Kafka's `offsets.retention.minutes`: an empty group's offsets expire once both the group has
    /// been empty and the offset unchanged for the retention period; a group with neither members
    /// nor offsets is forgotten.
    fn expire_offsets(&mut self, retention_ms: i64, now_ms: i64) {
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for (id, e) in &mut self.groups {
            if e.group.state != GroupState::Empty {
                continue;
            }
            let horizon = now_ms - retention_ms;
            let empty_since = e.group.empty_since_ms;
            let state = &self.state;
            // An offset with a pending transactional one stays until the transaction ends, and
            // so does its group (as in Kafka).
            e.offsets.retain(|(t, p), o| {
                let keep = o.commit_timestamp_ms.max(empty_since) > horizon
                    || state.has_pending(&offset_key(id, t, *p));
                if !keep {
                    records.push((offset_key(id, t, *p), None));
                }
                keep
            });
            if e.offsets.is_empty() && empty_since <= horizon && state.pending_keys(id).is_empty() {
                dead.push(id.clone());
                records.push((StoreKey::Group { group: id.clone() }, None));
            }
        }
        for id in dead {
            self.groups.remove(&id);
        }
        for (key, _) in &records {
            if let StoreKey::Offset { group, .. } = key {
                self.offsets_changed(group);
            }
        }
        if !records.is_empty() {
            tracing::info!(expired = records.len(), "expired offsets and groups");
            if let Err(e) = self.write(BatchKind::Plain, &records, now_ms) {
                tracing::error!(error = %e, "writing expired offsets");
            }
        }
    }
}

fn entry<'a>(
    groups: &'a mut HashMap<String, Entry>,
    group_id: &str,
    generation_id: i32,
    now_ms: i64,
) -> &'a mut Entry {
    groups.entry(group_id.to_string()).or_insert_with(|| Entry {
        group: Group::new(group_id, generation_id, now_ms),
        offsets: BTreeMap::new(),
    })
}

/// The records of committed offsets of `group`.
fn offset_records(
    group: &str,
    offsets: &[(String, i32, CommittedOffset)],
) -> Vec<(StoreKey, Option<StoreValue>)> {
    offsets
        .iter()
        .map(|(topic, partition, o)| {
            (
                offset_key(group, topic, *partition),
                Some(StoreValue::Offset(o.clone())),
            )
        })
        .collect()
}

fn offset_key(group: &str, topic: &str, partition: i32) -> StoreKey {
    StoreKey::Offset {
        group: group.into(),
        topic: topic.into(),
        partition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: CoordinatorConfig = CoordinatorConfig {
        timeouts: GroupTimeouts {
            initial_rebalance_delay_ms: 0,
            min_session_timeout_ms: 1000,
            max_session_timeout_ms: 60_000,
        },
        offsets_retention_ms: 1000,
        offset_metadata_max_bytes: 10,
    };

    fn committed(offset: i64, now_ms: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: now_ms,
        }
    }

    #[test]
    fn offsets_survive_a_reopen_and_expire_for_empty_groups() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let (codes, _) = c
            .commit(
                "g",
                "",
                None,
                -1,
                vec![("t".into(), 0, committed(42, 0))],
                0,
            )
            .unwrap();
        assert_eq!(codes, vec![0]);
        let too_long = CommittedOffset {
            metadata: "x".repeat(11),
            ..committed(1, 0)
        };
        assert_eq!(
            c.commit("g", "", None, -1, vec![("t".into(), 1, too_long)], 0)
                .unwrap()
                .0,
            vec![ResponseError::OffsetMetadataTooLarge.code()]
        );
        drop(c);
        let c = GroupCoordinator::open(dir.path(), CONFIG, 10).unwrap();
        let fetched = c.fetch_offsets("g", Some(vec![("t".into(), vec![0, 1])]), true);
        assert_eq!(fetched[0].2.as_ref().unwrap().as_ref().unwrap().offset, 42);
        assert_eq!(fetched[1].2, Ok(None));
        c.tick(500, true);
        assert_eq!(
            c.fetch_offsets("g", None, false).len(),
            1,
            "not expired yet"
        );
        c.tick(5000, true);
        assert!(c.fetch_offsets("g", None, false).is_empty(), "expired");
        assert!(
            c.list().is_empty(),
            "the empty group without offsets is gone"
        );
    }

    #[test]
    fn deleting_a_group_needs_it_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert!(matches!(
            c.delete_group("nope", 0),
            Err(Error::GroupNotFound { group }) if group == "nope"
        ));
        let _durable = c
            .commit("g", "", None, -1, vec![("t".into(), 0, committed(1, 0))], 0)
            .unwrap();
        let _durable = c.delete_group("g", 0).unwrap();
        drop(c);
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert!(c.fetch_offsets("g", None, false).is_empty());
    }

    /// A member joins "g" and waits in CompletingRebalance for the leader's assignment.
    fn join_member(c: &GroupCoordinator) -> String {
        let join = |member_id: &str| crate::group::tests::request(member_id, None);
        let Answer::Now(first) = c.join("g", join(""), 0) else {
            panic!("the first join is answered with a member id");
        };
        let Answer::Later(mut joined) = c.join("g", join(&first.member_id), 0) else {
            panic!("the second join waits for the rebalance");
        };
        c.tick(0, false);
        assert_eq!(joined.try_recv().unwrap().error, 0);
        first.member_id
    }

    #[test]
    fn refusals_name_the_group_and_writes_after_close_fail() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let member = join_member(&c);
        assert!(matches!(
            c.delete_group("g", 0),
            Err(Error::NonEmptyGroup { group, state: "CompletingRebalance" }) if group == "g"
        ));
        let commit = |generation_id| {
            let offsets = vec![("t".into(), 0, committed(1, 0))];
            c.commit("g", &member, None, generation_id, offsets, 0)
        };
        assert!(matches!(
            commit(7),
            Err(Error::Refused { group, code: ResponseError::IllegalGeneration }) if group == "g"
        ));
        assert!(matches!(
            commit(1),
            Err(Error::Refused {
                code: ResponseError::RebalanceInProgress,
                ..
            })
        ));
        assert!(matches!(
            c.leave("nope", &[(member.clone(), None)], 0),
            Err(Error::Refused { group, code: ResponseError::UnknownMemberId }) if group == "nope"
        ));
        assert!(matches!(
            c.delete_offsets("nope", &[("t".into(), 0)], 0),
            Err(Error::GroupNotFound { group }) if group == "nope"
        ));
        assert!(matches!(
            c.commit("", "", None, -1, vec![("t".into(), 0, committed(1, 0))], 0),
            Err(Error::InvalidGroupId)
        ));
        c.close(0);
        assert!(matches!(
            c.commit("h", "", None, -1, vec![("t".into(), 0, committed(1, 0))], 0),
            Err(Error::Closed)
        ));
        assert!(
            c.fetch_offsets("h", None, false).is_empty(),
            "nothing was stored"
        );
    }

    #[test]
    fn a_coordinator_taking_over_keeps_stable_members_only_when_records_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let open = |membership| {
            let log = LocalOffsetsLog::open(dir.path(), 0).unwrap();
            GroupCoordinator::load(Box::new(log), CONFIG, membership, 0).unwrap()
        };
        let c = open(Membership::Members);
        let member = join_member(&c);
        let assignment = Bytes::from_static(b"t-0");
        let Answer::Later(mut synced) = c.sync(
            "g",
            &member,
            None,
            1,
            vec![(member.clone(), assignment.clone())],
            0,
        ) else {
            panic!("the leader's sync completes the rebalance");
        };
        assert_eq!(synced.try_recv().unwrap().assignment, assignment);
        drop(c); // the coordinator's broker dies

        // A new coordinator resumes the stable group: same member, same generation.
        let c = open(Membership::Members);
        assert_eq!(c.heartbeat("g", &member, None, 1, 5_000), 0);
        let described = c.describe("g").unwrap();
        assert_eq!(described.state, "Stable");
        assert_eq!(described.members[0].0, member);
        assert_eq!(described.members[0].5, assignment);
        let Answer::Now(again) = c.sync("g", &member, None, 1, vec![], 5_000) else {
            panic!("a stable group answers a sync at once");
        };
        assert_eq!(again.assignment, assignment);
        // Its session goes on with the heartbeats the new coordinator gets.
        c.tick(5_000 + 10_000, false);
        assert_eq!(c.describe("g").unwrap().state, "Stable");
        drop(c);

        // A single broker's records keep the generation only: the member must rejoin.
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let _ = c.commit("h", "", None, -1, vec![("t".into(), 0, committed(1, 0))], 0);
        assert_eq!(c.describe("h").unwrap().state, "Empty");
    }

    const PRODUCER: i64 = 9;

    /// A transactional producer's commit of `(partition, offset)` of topic "t", from outside
    /// the group (generation -1), as TxnOffsetCommit before v3 sends it.
    fn txn(producer_epoch: i16, offsets: &[(i32, i64)]) -> TxnOffsetCommit {
        TxnOffsetCommit {
            transactional_id: "tx".into(),
            producer_id: PRODUCER,
            producer_epoch,
            member_id: String::new(),
            group_instance_id: None,
            generation_id: -1,
            offsets: offsets
                .iter()
                .map(|&(p, o)| ("t".to_string(), p, committed(o, 0)))
                .collect(),
        }
    }

    fn commit_txn(c: &GroupCoordinator, producer_epoch: i16, offsets: &[(i32, i64)]) {
        let (codes, _durable) = c
            .commit_transactional("g", txn(producer_epoch, offsets), 0)
            .unwrap();
        assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    }

    fn end_txn(c: &GroupCoordinator, producer_epoch: i16, commit: bool) {
        let _durable = c
            .complete_transaction(PRODUCER, producer_epoch, commit, 0, 0)
            .unwrap();
    }

    /// Group "g"'s committed offset of partition `partition` of "t", or its error.
    fn fetched(
        c: &GroupCoordinator,
        partition: i32,
        require_stable: bool,
    ) -> Result<Option<i64>, ResponseError> {
        let wanted = Some(vec![("t".to_string(), vec![partition])]);
        let found = c.fetch_offsets("g", wanted, require_stable);
        found[0].2.clone().map(|o| o.map(|o| o.offset))
    }

    const UNSTABLE: Result<Option<i64>, ResponseError> = Err(ResponseError::UnstableOffsetCommit);

    #[test]
    fn a_transaction_s_offsets_are_invisible_until_its_commit_marker_and_an_abort_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let _ = c
            .commit("g", "", None, -1, vec![("t".into(), 0, committed(5, 0))], 0)
            .unwrap();
        commit_txn(&c, 0, &[(0, 10), (1, 11)]);
        assert_eq!(
            fetched(&c, 0, false),
            Ok(Some(5)),
            "the last committed offset"
        );
        assert_eq!(fetched(&c, 0, true), UNSTABLE);
        assert_eq!(fetched(&c, 1, false), Ok(None));
        assert_eq!(fetched(&c, 1, true), UNSTABLE);
        // Fetching every offset lists the committed partitions, unstable ones marked so.
        let all = c.fetch_offsets("g", None, true);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].1, all[0].2.clone()),
            (0, Err(ResponseError::UnstableOffsetCommit))
        );

        end_txn(&c, 0, true);
        assert_eq!(fetched(&c, 0, true), Ok(Some(10)));
        assert_eq!(fetched(&c, 1, true), Ok(Some(11)));

        // The producer's next transaction (same epoch, its sequence going on), aborted.
        commit_txn(&c, 0, &[(0, 20)]);
        commit_txn(&c, 0, &[(2, 21)]);
        assert_eq!(fetched(&c, 2, true), UNSTABLE);
        end_txn(&c, 0, false);
        assert_eq!(fetched(&c, 0, true), Ok(Some(10)));
        assert_eq!(fetched(&c, 2, true), Ok(None));

        // Per-partition codes: metadata too long is refused, the rest is written.
        let mut request = txn(0, &[(0, 30), (1, 31)]);
        request.offsets[1].2.metadata = "x".repeat(11);
        let (codes, _) = c.commit_transactional("g", request, 0).unwrap();
        assert_eq!(codes, vec![0, ResponseError::OffsetMetadataTooLarge.code()]);
        assert_eq!(fetched(&c, 0, true), UNSTABLE);
        assert_eq!(fetched(&c, 1, true), Ok(Some(11)));
    }

    #[test]
    fn a_new_coordinator_applies_the_marker_whether_it_came_before_or_after_it_took_over() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        commit_txn(&c, 0, &[(0, 10)]);
        drop(c); // the coordinator fails over between TxnOffsetCommit and the marker

        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert_eq!(
            fetched(&c, 0, true),
            UNSTABLE,
            "still pending after the replay"
        );
        assert_eq!(fetched(&c, 0, false), Ok(None));
        assert_eq!(c.describe("g").unwrap().state, "Empty", "the group exists");
        end_txn(&c, 0, true);
        assert_eq!(fetched(&c, 0, true), Ok(Some(10)));
        // The next transaction ends before the failover: the replay applies its marker.
        commit_txn(&c, 0, &[(0, 20), (1, 21)]);
        end_txn(&c, 0, false);
        commit_txn(&c, 0, &[(1, 31)]);
        end_txn(&c, 0, true);
        drop(c);

        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert_eq!(fetched(&c, 0, true), Ok(Some(10)));
        assert_eq!(fetched(&c, 1, true), Ok(Some(31)));
        // The producer goes on where the log left it (its sequence, after the replay).
        commit_txn(&c, 0, &[(0, 40)]);
        end_txn(&c, 0, true);
        assert_eq!(fetched(&c, 0, true), Ok(Some(40)));
    }

    #[test]
    fn of_a_plain_and_a_transactional_commit_the_one_written_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let plain = |partition, offset| {
            let offsets = vec![("t".into(), partition, committed(offset, 0))];
            let _ = c.commit("g", "", None, -1, offsets, 0).unwrap();
        };
        // Partition 0: the transaction's offset, then a plain commit. Partition 1: the other way.
        commit_txn(&c, 0, &[(0, 10)]);
        plain(0, 20);
        plain(1, 20);
        commit_txn(&c, 0, &[(1, 10)]);
        assert_eq!(fetched(&c, 0, false), Ok(Some(20)));
        end_txn(&c, 0, true);
        assert_eq!(
            fetched(&c, 0, true),
            Ok(Some(20)),
            "the later plain commit stays"
        );
        assert_eq!(
            fetched(&c, 1, true),
            Ok(Some(10)),
            "the later transaction's"
        );
        drop(c);
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert_eq!(
            fetched(&c, 0, true),
            Ok(Some(20)),
            "the replay decides alike"
        );
        assert_eq!(fetched(&c, 1, true), Ok(Some(10)));
    }

    #[test]
    fn transactional_commits_check_the_member_as_kafka_does() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert!(matches!(
            c.commit_transactional("", txn(0, &[(0, 1)]), 0),
            Err(Error::InvalidGroupId)
        ));
        let mut request = txn(0, &[(0, 1)]);
        request.generation_id = 3;
        assert!(matches!(
            c.commit_transactional("nope", request, 0),
            Err(Error::Refused { group, code: ResponseError::IllegalGeneration }) if group == "nope"
        ));
        assert!(
            c.describe("nope").is_none(),
            "a refused commit creates no group"
        );
        let mut request = txn(0, &[(0, 1)]);
        request.producer_id = -1;
        assert!(matches!(
            c.commit_transactional("g", request, 0),
            Err(Error::Refused {
                code: ResponseError::InvalidProducerIdMapping,
                ..
            })
        ));

        let member = join_member(&c); // "g" waits for its leader's assignment, generation 1
        let as_member = |member_id: &str, generation_id| {
            let mut request = txn(0, &[(0, 1)]);
            request.member_id = member_id.into();
            request.generation_id = generation_id;
            c.commit_transactional("g", request, 0)
                .map(|(codes, _)| codes)
        };
        assert!(matches!(
            as_member(&member, 7),
            Err(Error::Refused {
                code: ResponseError::IllegalGeneration,
                ..
            })
        ));
        assert!(matches!(
            as_member("stranger", 1),
            Err(Error::Refused {
                code: ResponseError::UnknownMemberId,
                ..
            })
        ));
        // Unlike OffsetCommit, no REBALANCE_IN_PROGRESS; and a request naming no member (before
        // v3) is taken in any state.
        assert_eq!(as_member(&member, 1).unwrap(), vec![0]);
        assert_eq!(as_member("", -1).unwrap(), vec![0]);
    }

    #[test]
    fn a_fenced_producer_s_offsets_and_markers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        commit_txn(&c, 0, &[(0, 10)]);
        // The transaction coordinator fences the producer: it aborts at the bumped epoch.
        drop(c.complete_transaction(PRODUCER, 1, false, 3, 0).unwrap());
        let zombie = c.commit_transactional("g", txn(0, &[(0, 11)]), 0);
        assert!(matches!(
            zombie,
            Err(Error::Log {
                source: strata_log::Error::InvalidProducerEpoch { .. },
                ..
            })
        ));
        assert!(matches!(
            c.complete_transaction(PRODUCER, 0, true, 3, 0),
            Err(Error::Log {
                source: strata_log::Error::InvalidProducerEpoch { .. },
                ..
            })
        ));
        assert!(matches!(
            c.complete_transaction(PRODUCER, 1, true, 2, 0),
            Err(Error::Log {
                source: strata_log::Error::CoordinatorFenced { .. },
                ..
            })
        ));
        assert_eq!(fetched(&c, 0, true), Ok(None), "nothing of the zombie's");
        // The producer at its new epoch goes on.
        commit_txn(&c, 1, &[(0, 12)]);
        drop(c.complete_transaction(PRODUCER, 1, true, 3, 0).unwrap());
        assert_eq!(fetched(&c, 0, true), Ok(Some(12)));
    }

    #[test]
    fn deleting_offsets_or_the_group_drops_pending_ones_and_expiry_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        commit_txn(&c, 0, &[(0, 10)]);
        let (codes, _) = c.delete_offsets("g", &[("t".into(), 0)], 0).unwrap();
        assert_eq!(codes, vec![0]);
        assert_eq!(fetched(&c, 0, true), Ok(None), "no longer pending");
        end_txn(&c, 0, true);
        assert_eq!(fetched(&c, 0, true), Ok(None), "nothing left to commit");

        commit_txn(&c, 0, &[(1, 5)]);
        let _durable = c.delete_group("g", 0).unwrap();
        end_txn(&c, 0, true);
        assert!(c.describe("g").is_none());
        drop(c);
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        assert!(c.describe("g").is_none(), "the replay agrees");
        assert_eq!(fetched(&c, 0, false), Ok(None));

        // An expired offset with a pending one stays, and so does its group, until the end.
        let offsets = vec![("t".into(), 0, committed(5, 0))];
        let _ = c.commit("g", "", None, -1, offsets, 0).unwrap();
        commit_txn(&c, 0, &[(0, 6)]);
        c.tick(5_000, true);
        assert_eq!(fetched(&c, 0, false), Ok(Some(5)));
        end_txn(&c, 0, false);
        c.tick(10_000, true);
        assert_eq!(
            fetched(&c, 0, false),
            Ok(None),
            "expired once the transaction ended"
        );
        assert!(c.list().is_empty());
    }

    #[test]
    fn a_snapshot_keeps_pending_offsets_for_a_coordinator_taking_over() {
        let log = crate::store::tests::MemoryLog::default();
        let load = || {
            let log = Box::new(log.clone());
            GroupCoordinator::load(log, CONFIG, Membership::Generation, 0).unwrap()
        };
        let c = load();
        commit_txn(&c, 0, &[(0, 10)]);
        for offset in 0..20 {
            let offsets = vec![("t".into(), 1, committed(offset, 0))];
            let _ = c.commit("g", "", None, -1, offsets, 0).unwrap();
        }
        c.tick(0, false); // writes a snapshot, not durable yet
        log.durable_below
            .store(i64::MAX, std::sync::atomic::Ordering::Relaxed);
        c.tick(0, false); // drops what it superseded
        assert!(
            log.log_start_offset() > 0,
            "the transaction's own batch is gone"
        );
        drop(c);

        let c = load();
        assert_eq!(fetched(&c, 0, true), UNSTABLE);
        assert_eq!(fetched(&c, 1, true), Ok(Some(19)));
        end_txn(&c, 0, true);
        assert_eq!(fetched(&c, 0, true), Ok(Some(10)));
        drop(c);
        assert_eq!(fetched(&load(), 0, true), Ok(Some(10)));
    }

    #[test]
    fn offset_changes_are_tracked_once_asked_for_and_name_every_way_offsets_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let commit = |group: &str, partition: i32, offset: i64, now_ms: i64| {
            let offsets = vec![("t".into(), partition, committed(offset, now_ms))];
            drop(c.commit(group, "", None, -1, offsets, now_ms).unwrap());
        };
        commit("before", 0, 1, 0);
        assert!(c.take_offset_changes().is_empty(), "not tracked yet");

        c.track_offset_changes();
        commit("b", 0, 1, 0);
        commit("a", 0, 1, 0);
        commit("a", 1, 2, 0);
        assert_eq!(c.take_offset_changes(), ["a", "b"]);
        assert!(c.take_offset_changes().is_empty(), "taken");

        // A refused commit (metadata too large) changes nothing.
        let big = CommittedOffset {
            metadata: "x".repeat(11),
            ..committed(1, 0)
        };
        drop(
            c.commit("c", "", None, -1, vec![("t".into(), 0, big)], 0)
                .unwrap(),
        );
        assert!(c.take_offset_changes().is_empty());

        // A transaction's offsets change the group at the commit marker, not before.
        commit_txn(&c, 0, &[(5, 50)]);
        assert!(c.take_offset_changes().is_empty());
        end_txn(&c, 0, true);
        assert_eq!(c.take_offset_changes(), ["g"]);

        drop(c.delete_offsets("a", &[("t".into(), 1)], 0).unwrap());
        drop(c.delete_group("b", 0).unwrap());
        assert_eq!(c.take_offset_changes(), ["a", "b"]);
        assert!(c.fetch_offsets("b", None, false).is_empty(), "gone");

        // Expiry (retention 1000 ms for empty groups).
        c.tick(5_000, true);
        assert_eq!(c.take_offset_changes(), ["a", "before", "g"]);
        assert!(c.groups_with_offsets().is_empty());
    }

    #[test]
    fn imported_offsets_are_committed_durably_and_never_replace_newer_commits() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCoordinator::open(dir.path(), CONFIG, 0).unwrap();
        let mine = committed(7, 100);
        drop(
            c.commit("a", "", None, -1, vec![("t".into(), 0, mine.clone())], 100)
                .unwrap(),
        );
        c.track_offset_changes();
        let _ = c.take_offset_changes();
        let lake_offset = CommittedOffset {
            offset: 3,
            leader_epoch: 2,
            metadata: "m".into(),
            commit_timestamp_ms: 50,
        };
        let (restored, _durable) = c
            .import_offsets(
                vec![
                    (
                        "a".into(),
                        vec![
                            ("t".into(), 0, committed(1, 50)),
                            ("t".into(), 1, lake_offset.clone()),
                        ],
                    ),
                    ("b".into(), vec![("u".into(), 0, lake_offset.clone())]),
                    (String::new(), vec![("u".into(), 0, lake_offset.clone())]),
                ],
                200,
            )
            .unwrap();
        assert_eq!(restored, 2, "a-t-0 was committed here: it stays");
        assert_eq!(c.take_offset_changes(), ["a", "b"]);
        assert_eq!(
            c.groups_with_offsets(),
            [("a".into(), 100), ("b".into(), 50)]
        );
        assert_eq!(c.describe("b").unwrap().state, "Empty");
        drop(c);

        // Written to the offsets log: a reopened coordinator has them, as committed.
        let c = GroupCoordinator::open(dir.path(), CONFIG, 300).unwrap();
        let a: Vec<_> = c
            .fetch_offsets("a", None, true)
            .into_iter()
            .map(|(t, p, o)| (t, p, o.unwrap().unwrap()))
            .collect();
        assert_eq!(
            a,
            [("t".into(), 0, mine), ("t".into(), 1, lake_offset.clone())]
        );
        let b = c.fetch_offsets("b", Some(vec![("u".into(), vec![0])]), true);
        assert_eq!(b[0].2, Ok(Some(lake_offset)));
    }
}
