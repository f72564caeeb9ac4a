//! One consumer group under Kafka's classic group protocol: a state machine driven by requests and
//! by `now`, with no I/O. Waiting JoinGroup and SyncGroup requests are answered through channels.
//!
//! States: `Empty` → `PreparingRebalance` (members rejoin) → `CompletingRebalance` (the leader
//! computes the assignment) → `Stable`; any join, leave or expired session starts a new rebalance.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use crate::store::{GroupRecord, MemberRecord};

/// Group states, named as Kafka names them in DescribeGroups and ListGroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may remain).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignment.
    Stable,
}

impl GroupState {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// What a JoinGroup request gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResult {
    /// Error code, 0 for success.
    pub error: i16,
    /// Generation the member joined.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen assignor.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's id (new ones are assigned here).
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: ResponseError, member_id: &str) -> Self {
        Self {
            error: error.code(),
            generation_id: -1,
            member_id: member_id.to_string(),
            ..Self::default()
        }
    }
}

/// What a SyncGroup request gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResult {
    /// Error code, 0 for success.
    pub error: i16,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen assignor.
    pub protocol_name: Option<String>,
    /// The member's assignment.
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ResponseError) -> Self {
        Self {
            error: error.code(),
            ..Self::default()
        }
    }
}

/// An answer now, or later through the receiver.
#[derive(Debug)]
pub enum Answer<T> {
    /// Answered at once.
    Now(T),
    /// Answered when the rebalance step completes.
    Later(oneshot::Receiver<T>),
}

/// A JoinGroup request, as the group sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Member id, empty on the first join.
    pub member_id: String,
    /// Static membership id (KIP-345).
    pub group_instance_id: Option<String>,
    /// Client id from the request header.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type, "consumer" for consumers.
    pub protocol_type: String,
    /// Assignors in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether the client sends the member id round trip of KIP-394 (JoinGroup v4+).
    pub requires_known_member_id: bool,
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    /// Assignors and metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Assignment from the last SyncGroup.
    pub assignment: Bytes,
    last_heartbeat_ms: i64,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// Timing settings of groups (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, Copy)]
pub struct GroupTimeouts {
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
}

/// A consumer group.
#[derive(Debug)]
pub struct Group {
    /// Group id.
    pub group_id: String,
    /// Current state.
    pub state: GroupState,
    /// Current generation.
    pub generation_id: i32,
    /// Protocol type of the members.
    pub protocol_type: Option<String>,
    /// Chosen assignor.
    pub protocol_name: Option<String>,
    /// Leader's member id.
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out by MEMBER_ID_REQUIRED, awaiting the rejoin, with when.
    pending_member_ids: HashMap<String, i64>,
    /// Static instance id → member id.
    static_members: HashMap<String, String>,
    rebalance_deadline_ms: i64,
    initial_delay_until_ms: i64,
    /// Since when the group has had no member (for offset expiry).
    pub empty_since_ms: i64,
    next_member_number: u64,
}

impl Group {
    /// A new empty group.
    pub fn new(group_id: &str, generation_id: i32, now_ms: i64) -> Self {
        Self {
            group_id: group_id.to_string(),
            state: GroupState::Empty,
            generation_id,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending_member_ids: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay_until_ms: 0,
            empty_since_ms: now_ms,
            next_member_number: 0,
        }
    }

    /// A group as its record left it: a stable generation's members come back with their
    /// assignments and fresh sessions (a coordinator taking over counts their session timeouts
    /// from now, as Kafka does); a record without members is an empty group at its generation.
    pub fn restore(group_id: &str, record: &GroupRecord, now_ms: i64) -> Self {
        let mut group = Self::new(group_id, record.generation_id, now_ms);
        let (Some(protocol), Some(leader)) = (&record.protocol_name, &record.leader) else {
            return group;
        };
        if !record.members.iter().any(|m| m.member_id == *leader) {
            return group;
        }
        for m in &record.members {
            if let Some(instance) = &m.group_instance_id {
                group
                    .static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            group.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: vec![(protocol.clone(), m.metadata.clone())],
                    assignment: m.assignment.clone(),
                    last_heartbeat_ms: now_ms,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        group.state = GroupState::Stable;
        group.protocol_type = record.protocol_type.clone();
        group.protocol_name = Some(protocol.clone());
        group.leader = Some(leader.clone());
        group
    }

    /// The group's record: its generation, and with `members` (and only when stable) its
    /// protocol and members with their assignments.
    pub fn record(&self, members: bool) -> GroupRecord {
        let mut record = GroupRecord {
            generation_id: self.generation_id,
            ..GroupRecord::default()
        };
        if !members || self.state != GroupState::Stable {
            return record;
        }
        let protocol = self.protocol_name.clone().unwrap_or_default();
        record.protocol_type = self.protocol_type.clone();
        record.leader = self.leader.clone();
        record.members = self
            .members
            .values()
            .map(|m| MemberRecord {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                metadata: m.metadata(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect();
        record.protocol_name = Some(protocol);
        record
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member_number += 1;
        let unique = uuid::Uuid::new_v4().simple().to_string();
        format!("{client_id}-{}-{}", self.next_member_number, &unique[..12])
    }

    /// Handles a JoinGroup request. `Some(generation)` in the second value when a rebalance
    /// completed (so the caller persists the generation).
    pub fn join(
        &mut self,
        request: JoinRequest,
        timeouts: GroupTimeouts,
        now_ms: i64,
    ) -> (Answer<JoinResult>, Option<i32>) {
        if let Err(error) = self.check_join(&request, timeouts) {
            return (
                Answer::Now(JoinResult::error(error, &request.member_id)),
                None,
            );
        }
        let member_id = if request.member_id.is_empty() {
            if let Some(instance) = &request.group_instance_id {
                match self.static_members.get(instance).cloned() {
                    Some(old) => {
                        let new_id = self.replace_static_member(&old, &request.client_id);
                        if let Some(result) =
                            self.static_rejoin_without_rebalance(&new_id, &request, now_ms)
                        {
                            return (Answer::Now(result), None);
                        }
                        new_id
                    }
                    None => self.new_member_id(&request.client_id),
                }
            } else if request.requires_known_member_id {
                // KIP-394: hand out an id and have the client join again with it.
                let id = self.new_member_id(&request.client_id);
                self.pending_member_ids.insert(id.clone(), now_ms);
                return (
                    Answer::Now(JoinResult::error(ResponseError::MemberIdRequired, &id)),
                    None,
                );
            } else {
                self.new_member_id(&request.client_id)
            }
        } else if self.pending_member_ids.remove(&request.member_id).is_some()
            || self.members.contains_key(&request.member_id)
        {
            if let Some(instance) = &request.group_instance_id
                && self
                    .static_members
                    .get(instance)
                    .is_some_and(|m| *m != request.member_id)
            {
                return (
                    Answer::Now(JoinResult::error(
                        ResponseError::FencedInstanceId,
                        &request.member_id,
                    )),
                    None,
                );
            }
            request.member_id.clone()
        } else {
            return (
                Answer::Now(JoinResult::error(
                    ResponseError::UnknownMemberId,
                    &request.member_id,
                )),
                None,
            );
        };
        let (sender, receiver) = oneshot::channel();
        self.upsert_member(&member_id, request, now_ms, sender);
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(timeouts, now_ms);
        }
        let completed = self.try_complete_join(now_ms);
        (Answer::Later(receiver), completed)
    }

    fn check_join(
        &self,
        request: &JoinRequest,
        timeouts: GroupTimeouts,
    ) -> Result<(), ResponseError> {
        if request.session_timeout_ms < timeouts.min_session_timeout_ms
            || request.session_timeout_ms > timeouts.max_session_timeout_ms
        {
            return Err(ResponseError::InvalidSessionTimeout);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        if self.members.is_empty() {
            return Ok(());
        }
        let same_type = self
            .protocol_type
            .as_deref()
            .is_none_or(|t| t == request.protocol_type);
        let others = self
            .members
            .values()
            .filter(|m| m.member_id != request.member_id);
        let mut common: Vec<&str> = request.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for member in others {
            common.retain(|n| member.protocols.iter().any(|(p, _)| p == n));
        }
        if !same_type || common.is_empty() {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        Ok(())
    }

    /// A static member rejoining without its member id: it gets a new id, the old one is fenced.
    fn replace_static_member(&mut self, old_id: &str, client_id: &str) -> String {
        let new_id = self.new_member_id(client_id);
        if let Some(mut member) = self.members.remove(old_id) {
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinResult::error(ResponseError::FencedInstanceId, old_id));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult::error(ResponseError::FencedInstanceId));
            }
            member.member_id = new_id.clone();
            if self.leader.as_deref() == Some(old_id) {
                self.leader = Some(new_id.clone());
            }
            if let Some(instance) = &member.group_instance_id {
                self.static_members.insert(instance.clone(), new_id.clone());
            }
            self.members.insert(new_id.clone(), member);
        }
        new_id
    }

    /// KIP-345: a static follower that restarts with unchanged subscriptions keeps its assignment
    /// without a rebalance; it gets the current generation and syncs to its old assignment.
    fn static_rejoin_without_rebalance(
        &mut self,
        member_id: &str,
        request: &JoinRequest,
        now_ms: i64,
    ) -> Option<JoinResult> {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let member = self.members.get_mut(member_id)?;
        if self.state != GroupState::Stable || is_leader || member.protocols != request.protocols {
            return None;
        }
        member.last_heartbeat_ms = now_ms;
        member.session_timeout_ms = i64::from(request.session_timeout_ms);
        member.client_host = request.client_host.clone();
        Some(JoinResult {
            error: 0,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        })
    }

    fn upsert_member(
        &mut self,
        member_id: &str,
        request: JoinRequest,
        now_ms: i64,
        waiter: oneshot::Sender<JoinResult>,
    ) {
        if let Some(instance) = &request.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.to_string());
        }
        let member = self
            .members
            .entry(member_id.to_string())
            .or_insert_with(|| Member {
                member_id: member_id.to_string(),
                group_instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: 0,
                rebalance_timeout_ms: 0,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                join_waiter: None,
                sync_waiter: None,
            });
        member.session_timeout_ms = i64::from(request.session_timeout_ms);
        member.rebalance_timeout_ms =
            i64::from(request.rebalance_timeout_ms.max(request.session_timeout_ms));
        member.protocols = request.protocols;
        member.last_heartbeat_ms = now_ms;
        if let Some(previous) = member.join_waiter.replace(waiter) {
            let _ = previous.send(JoinResult::error(
                ResponseError::RebalanceInProgress,
                member_id,
            ));
        }
        if self.protocol_type.is_none() {
            self.protocol_type = Some(request.protocol_type);
        }
    }

    fn prepare_rebalance(&mut self, timeouts: GroupTimeouts, now_ms: i64) {
        for member in self.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
        let rebalance_timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        let initial = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline_ms = now_ms + rebalance_timeout_ms;
        self.initial_delay_until_ms = if initial {
            now_ms
                + timeouts
                    .initial_rebalance_delay_ms
                    .min(rebalance_timeout_ms)
        } else {
            now_ms
        };
    }

    /// Completes the join phase when every member has rejoined (after the initial delay) or the
    /// rebalance timeout passed. Returns the new generation when it completed.
    pub fn try_complete_join(&mut self, now_ms: i64) -> Option<i32> {
        if self.state != GroupState::PreparingRebalance {
            return None;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        if !(all_joined && now_ms >= self.initial_delay_until_ms)
            && now_ms < self.rebalance_deadline_ms
        {
            return None;
        }
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation_id += 1;
        if self.members.is_empty() {
            self.become_empty(now_ms);
            return Some(self.generation_id);
        }
        self.protocol_name = Some(self.vote());
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                (
                    m.member_id.clone(),
                    m.group_instance_id.clone(),
                    m.metadata(&protocol),
                )
            })
            .collect();
        let leader = self.leader.clone().unwrap_or_default();
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            member.last_heartbeat_ms = now_ms;
            let result = JoinResult {
                error: 0,
                generation_id: self.generation_id,
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                leader: leader.clone(),
                member_id: member.member_id.clone(),
                members: if member.member_id == leader {
                    everyone.clone()
                } else {
                    Vec::new()
                },
            };
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(result);
            }
        }
        Some(self.generation_id)
    }

    /// The assignor every member supports that most members prefer (Kafka's vote).
    fn vote(&self) -> String {
        let members: Vec<&Member> = self.members.values().collect();
        let candidates: Vec<&str> = members[0]
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect();
        let mut votes: Vec<(usize, &str)> = candidates
            .iter()
            .map(|c| {
                let count = members
                    .iter()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .find(|(p, _)| candidates.contains(&p.as_str()))
                            .is_some_and(|(p, _)| p == c)
                    })
                    .count();
                (count, *c)
            })
            .collect();
        // Most votes; ties go to the first member's preference (a stable order).
        votes.sort_by_key(|v| std::cmp::Reverse(v.0));
        votes
            .first()
            .map(|(_, n)| n.to_string())
            .unwrap_or_default()
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(mut member) = self.members.remove(member_id) {
            if let Some(instance) = &member.group_instance_id {
                self.static_members.remove(instance);
            }
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinResult::error(ResponseError::UnknownMemberId, member_id));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    fn become_empty(&mut self, now_ms: i64) {
        self.state = GroupState::Empty;
        self.protocol_name = None;
        self.protocol_type = None;
        self.leader = None;
        self.empty_since_ms = now_ms;
    }

    fn check_member(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ResponseError> {
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if let Some(instance) = instance
            && self
                .static_members
                .get(instance)
                .is_some_and(|m| m != member_id)
        {
            return Err(ResponseError::FencedInstanceId);
        }
        if generation_id != self.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Handles a SyncGroup request.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
    ) -> Answer<SyncResult> {
        if let Err(error) = self.check_member(member_id, instance, generation_id) {
            return Answer::Now(SyncResult::error(error));
        }
        self.touch(member_id, now_ms);
        match self.state {
            GroupState::Empty | GroupState::PreparingRebalance => {
                Answer::Now(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => Answer::Now(self.sync_result(member_id)),
            GroupState::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                self.members
                    .get_mut(member_id)
                    .expect("checked")
                    .sync_waiter = Some(sender);
                if self.leader.as_deref() == Some(member_id) {
                    let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment =
                            assignments.remove(&member.member_id).unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let result = self.sync_result(&id);
                        if let Some(waiter) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            let _ = waiter.send(result);
                        }
                    }
                }
                Answer::Later(receiver)
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    fn touch(&mut self, member_id: &str, now_ms: i64) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_heartbeat_ms = now_ms;
        }
    }

    /// Handles a Heartbeat request: the error code.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> i16 {
        if let Err(error) = self.check_member(member_id, instance, generation_id) {
            return error.code();
        }
        self.touch(member_id, now_ms);
        if self.state == GroupState::PreparingRebalance {
            return ResponseError::RebalanceInProgress.code();
        }
        0
    }

    /// Removes members that leave (by member id, or by instance id for static members). Returns
    /// the error code for each.
    pub fn leave(
        &mut self,
        members: &[(String, Option<String>)],
        timeouts: GroupTimeouts,
        now_ms: i64,
    ) -> (Vec<i16>, Option<i32>) {
        let mut codes = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance) in members {
            let id = match instance {
                Some(instance) => match self.static_members.get(instance) {
                    Some(known) if member_id.is_empty() || known == member_id => known.clone(),
                    Some(_) => {
                        codes.push(ResponseError::FencedInstanceId.code());
                        continue;
                    }
                    None => {
                        codes.push(ResponseError::UnknownMemberId.code());
                        continue;
                    }
                },
                None => member_id.clone(),
            };
            if self.members.contains_key(&id) {
                self.remove_member(&id);
                removed = true;
                codes.push(0);
            } else if self.pending_member_ids.remove(&id).is_some() {
                codes.push(0);
            } else {
                codes.push(ResponseError::UnknownMemberId.code());
            }
        }
        let completed = if removed {
            self.after_departure(timeouts, now_ms)
        } else {
            None
        };
        (codes, completed)
    }

    fn after_departure(&mut self, timeouts: GroupTimeouts, now_ms: i64) -> Option<i32> {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.generation_id += 1;
                    self.become_empty(now_ms);
                    return Some(self.generation_id);
                }
                self.prepare_rebalance(timeouts, now_ms);
                self.try_complete_join(now_ms)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now_ms),
            GroupState::Empty => None,
        }
    }

    /// Timers: expired sessions leave, stale pending member ids are forgotten, a rebalance past
    /// its deadline completes. Returns a new generation when a rebalance completed.
    pub fn tick(&mut self, timeouts: GroupTimeouts, now_ms: i64) -> Option<i32> {
        let session_max = i64::from(timeouts.max_session_timeout_ms);
        self.pending_member_ids
            .retain(|_, since| now_ms - *since < session_max);
        let expired: Vec<String> = self
            .members
            .values()
            // A member waiting in JoinGroup is bounded by the rebalance timeout instead.
            .filter(|m| {
                m.join_waiter.is_none() && now_ms - m.last_heartbeat_ms > m.session_timeout_ms
            })
            .map(|m| m.member_id.clone())
            .collect();
        let mut completed = None;
        if !expired.is_empty() {
            for id in &expired {
                tracing::info!(group = %self.group_id, member = %id, "member session expired");
                self.remove_member(id);
            }
            completed = self.after_departure(timeouts, now_ms);
        }
        completed.or_else(|| self.try_complete_join(now_ms))
    }

    /// Whether an offset commit from this member and generation is allowed.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ResponseError> {
        if generation_id < 0 && member_id.is_empty() {
            // A commit from outside the group (assign() consumers, admin tools): only while empty.
            return if self.state == GroupState::Empty {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_member(member_id, instance, generation_id)?;
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Checks the member of a TxnOffsetCommit as Kafka does. A request that names no member
    /// (generation -1, no member id, no instance id: versions before 3 carry none) is accepted
    /// in any state, as is one at generation -1 while the group is empty; otherwise the member
    /// must be the group's at its generation. Unlike OffsetCommit, a rebalance does not refuse it.
    pub fn check_txn_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ResponseError> {
        if generation_id < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if generation_id >= 0 || !member_id.is_empty() || instance.is_some() {
            return self.check_member(member_id, instance, generation_id);
        }
        Ok(())
    }

    /// Topics the members subscribed to, when they use the consumer protocol.
    pub fn subscribed_topics(&self) -> Vec<String> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let Some(protocol) = &self.protocol_name else {
            return Vec::new();
        };
        let mut topics = Vec::new();
        for member in self.members.values() {
            let mut metadata = member.metadata(protocol);
            if metadata.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([metadata[0], metadata[1]]);
            let _ = bytes::Buf::get_i16(&mut metadata);
            if let Ok(subscription) =
                ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3))
            {
                topics.extend(subscription.topics.iter().map(|t| t.to_string()));
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TIMEOUTS: GroupTimeouts = GroupTimeouts {
        initial_rebalance_delay_ms: 0,
        min_session_timeout_ms: 1000,
        max_session_timeout_ms: 60_000,
    };

    /// A consumer's join, as the coordinator's tests send it too.
    pub(crate) fn request(member_id: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            group_instance_id: instance.map(str::to_string),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            requires_known_member_id: true,
        }
    }

    fn now<T>(answer: Answer<T>) -> T {
        match answer {
            Answer::Now(v) => v,
            Answer::Later(_) => panic!("expected an answer now"),
        }
    }

    fn later<T>(answer: Answer<T>) -> oneshot::Receiver<T> {
        match answer {
            Answer::Later(r) => r,
            Answer::Now(_) => panic!("expected to wait"),
        }
    }

    /// First join: MEMBER_ID_REQUIRED, then join with the id and become leader of generation 1.
    fn join_one(group: &mut Group, t: i64) -> String {
        let first = now(group.join(request("", None), TIMEOUTS, t).0);
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        let mut rx = later(group.join(request(&first.member_id, None), TIMEOUTS, t).0);
        group.tick(TIMEOUTS, t);
        let joined = rx.try_recv().unwrap();
        assert_eq!(joined.error, 0);
        first.member_id
    }

    #[test]
    fn a_single_member_joins_syncs_and_heartbeats() {
        let mut group = Group::new("g", 0, 0);
        let id = join_one(&mut group, 0);
        assert_eq!(group.generation_id, 1);
        assert_eq!(group.state, GroupState::CompletingRebalance);
        let mut rx = later(group.sync(
            &id,
            None,
            1,
            vec![(id.clone(), Bytes::from_static(b"a"))],
            0,
        ));
        assert_eq!(rx.try_recv().unwrap().assignment, Bytes::from_static(b"a"));
        assert_eq!(group.state, GroupState::Stable);
        assert_eq!(group.heartbeat(&id, None, 1, 1), 0);
        assert_eq!(
            group.heartbeat(&id, None, 0, 1),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(
            group.heartbeat("nobody", None, 1, 1),
            ResponseError::UnknownMemberId.code()
        );
    }

    #[test]
    fn a_second_member_triggers_a_rebalance_and_the_leader_sees_both() {
        let mut group = Group::new("g", 0, 0);
        let a = join_one(&mut group, 0);
        later(group.sync(&a, None, 1, vec![], 0));
        let b_id = now(group.join(request("", None), TIMEOUTS, 1).0).member_id;
        let mut b = later(group.join(request(&b_id, None), TIMEOUTS, 1).0);
        assert_eq!(
            group.heartbeat(&a, None, 1, 1),
            ResponseError::RebalanceInProgress.code()
        );
        let mut a_rx = later(group.join(request(&a, None), TIMEOUTS, 2).0);
        let a_joined = a_rx.try_recv().unwrap();
        let b_joined = b.try_recv().unwrap();
        assert_eq!(a_joined.generation_id, 2);
        assert_eq!(a_joined.leader, a, "the leader stays");
        assert_eq!(a_joined.members.len(), 2);
        assert!(b_joined.members.is_empty());
    }

    #[test]
    fn expired_sessions_leave_and_the_group_empties() {
        let mut group = Group::new("g", 0, 0);
        let id = join_one(&mut group, 0);
        later(group.sync(&id, None, 1, vec![], 0));
        assert_eq!(group.tick(TIMEOUTS, 10_001), Some(2));
        assert_eq!(group.state, GroupState::Empty);
        assert!(group.members.is_empty());
        assert!(
            group.check_commit("", None, -1).is_ok(),
            "an empty group takes outside commits"
        );
    }

    #[test]
    fn static_members_rejoin_without_losing_their_assignment() {
        // The initial rebalance delay lets both members join the first generation.
        let delayed = GroupTimeouts {
            initial_rebalance_delay_ms: 100,
            ..TIMEOUTS
        };
        let mut group = Group::new("g", 0, 0);
        let mut rx1 = later(group.join(request("", Some("i1")), delayed, 0).0);
        let mut rx2 = later(group.join(request("", Some("i2")), delayed, 0).0);
        assert!(rx1.try_recv().is_err(), "still in the initial delay");
        group.tick(delayed, 100);
        let (first, second) = (rx1.try_recv().unwrap(), rx2.try_recv().unwrap());
        let follower = if first.leader == first.member_id {
            second
        } else {
            first
        };
        let leader = follower.leader.clone();
        let assignments = vec![(follower.member_id.clone(), Bytes::from_static(b"p1"))];
        later(group.sync(&leader, None, 1, assignments, 0));
        assert_eq!(group.state, GroupState::Stable);
        // The follower restarts: a join without member id, same instance id, no rebalance.
        let rejoined = now(group.join(request("", Some("i2")), TIMEOUTS, 100).0);
        assert_eq!((rejoined.error, rejoined.generation_id), (0, 1));
        assert_eq!(group.state, GroupState::Stable);
        let synced = now(group.sync(&rejoined.member_id, Some("i2"), 1, vec![], 100));
        assert_eq!(synced.assignment, Bytes::from_static(b"p1"));
        assert_eq!(
            group.heartbeat(&follower.member_id, Some("i2"), 1, 100),
            ResponseError::UnknownMemberId.code(),
            "the old id is fenced"
        );
    }

    #[test]
    fn leaving_hands_over_and_unknown_members_are_refused() {
        let mut group = Group::new("g", 0, 0);
        let a = join_one(&mut group, 0);
        later(group.sync(&a, None, 1, vec![], 0));
        let (codes, completed) =
            group.leave(&[(a.clone(), None), ("ghost".into(), None)], TIMEOUTS, 5);
        assert_eq!(codes, vec![0, ResponseError::UnknownMemberId.code()]);
        assert_eq!(completed, Some(2));
        assert_eq!(group.state, GroupState::Empty);
        let unknown = now(group.join(request("made-up", None), TIMEOUTS, 6).0);
        assert_eq!(unknown.error, ResponseError::UnknownMemberId.code());
    }
}
