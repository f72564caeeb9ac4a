//! The active controller's duties: broker sessions (heartbeats and leases), registration, the
//! cluster id.
//!
//! The decisions are pure functions of the state and `now` ([`Leases`], [`registration`]); the
//! loop around them runs on every voter and acts only while its Raft node leads. Lease times live
//! in the controller's memory only, as in Kafka: a new controller starts every lease at its
//! election, so a failover never fences a live broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::node::{BrokerEndpoint, Shared};
use crate::raft::Raft;
use crate::state::{ClusterState, Command, Response};
use crate::wire::Reply;

/// Broker sessions as the active controller sees them.
#[derive(Debug)]
pub(crate) struct Leases {
    /// The Raft term this node leads in, `None` when it does not lead.
    term: Option<u64>,
    /// When this node became the controller: the start of every lease.
    since: Instant,
    last_seen: BTreeMap<i32, Instant>,
}

impl Leases {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            term: None,
            since: now,
            last_seen: BTreeMap::new(),
        }
    }

    /// This node leads in `term`: a new term starts every lease afresh at `now`.
    pub(crate) fn lead(&mut self, term: u64, now: Instant) -> bool {
        if self.term == Some(term) {
            return false;
        }
        self.term = Some(term);
        self.since = now;
        self.last_seen.clear();
        true
    }

    /// This node no longer leads.
    pub(crate) fn step_down(&mut self) {
        self.term = None;
    }

    /// A heartbeat from broker `id` at `now`.
    pub(crate) fn heard_from(&mut self, id: i32, now: Instant) {
        self.last_seen.insert(id, now);
    }

    /// Unfenced brokers not heard from for `session_timeout` (counting from the election at most).
    pub(crate) fn expired(
        &self,
        state: &ClusterState,
        now: Instant,
        session_timeout: Duration,
    ) -> Vec<i32> {
        state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| {
                let seen = self
                    .last_seen
                    .get(&b.id)
                    .map_or(self.since, |&t| t.max(self.since));
                now.saturating_duration_since(seen) >= session_timeout
            })
            .map(|b| b.id)
            .collect()
    }
}

/// The `RegisterBroker` a heartbeat calls for: the broker is unknown, fenced, or has moved.
pub(crate) fn registration(
    state: &ClusterState,
    id: i32,
    endpoint: &BrokerEndpoint,
) -> Option<Command> {
    let current = state.brokers.get(&id);
    let up_to_date = current.is_some_and(|b| {
        !b.fenced
            && b.host == endpoint.host
            && b.port == endpoint.port
            && b.rack == endpoint.rack
            && b.listeners == endpoint.listeners
    });
    (!up_to_date).then(|| Command::RegisterBroker {
        id,
        host: endpoint.host.clone(),
        port: endpoint.port,
        rack: endpoint.rack.clone(),
        listeners: endpoint.listeners.clone(),
    })
}

/// A new cluster id as Kafka makes them: a random UUID in URL-safe base64, unpadded (22 chars).
pub(crate) fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (bits >> (18 - 6 * i)) & 0x3f;
            out.push(ALPHABET[index as usize] as char);
        }
    }
    out
}

impl Shared {
    /// The controller side of a broker heartbeat.
    pub(crate) async fn on_heartbeat(&self, id: i32, endpoint: BrokerEndpoint) -> Reply {
        let Some(raft) = self.raft() else {
            return Reply::NotController { leader: None };
        };
        if !leads(raft) {
            return Reply::NotController {
                leader: self.controller_id(),
            };
        }
        self.leases.lock().heard_from(id, Instant::now());
        let state = self.current_state();
        let Some(command) = registration(&state, id, &endpoint) else {
            return Reply::HeartbeatAck;
        };
        tracing::info!(
            node = self.config.node_id,
            broker = id,
            ?endpoint,
            "registering broker"
        );
        match self.submit_local(command).await {
            Ok(_) => Reply::HeartbeatAck,
            Err(crate::Error::NotController { leader }) => Reply::NotController { leader },
            Err(e) => Reply::Failed {
                message: e.to_string(),
            },
        }
    }

    /// Runs the controller duties while this voter leads: the cluster id, then lease expiry.
    pub(crate) async fn controller_loop(self: Arc<Self>) {
        let Some(raft) = self.raft().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (server_state, term) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state, metrics.current_term)
            };
            if server_state != ServerState::Leader {
                self.leases.lock().step_down();
                continue;
            }
            if self.leases.lock().lead(term, Instant::now()) {
                tracing::info!(
                    node = self.config.node_id,
                    term,
                    "became the active controller"
                );
            }
            self.controller_duties().await;
        }
    }

    async fn controller_duties(&self) {
        if self.current_state().cluster_id.is_empty() {
            let cluster_id = new_cluster_id();
            tracing::info!(node = self.config.node_id, %cluster_id, "initialising the cluster id");
            if let Err(e) = self.submit_local(Command::InitCluster { cluster_id }).await {
                tracing::warn!(node = self.config.node_id, error = %e, "cannot set the cluster id");
                return;
            }
        }
        let state = self.current_state();
        let expired =
            self.leases
                .lock()
                .expired(&state, Instant::now(), self.config.session_timeout);
        for id in expired {
            tracing::warn!(
                node = self.config.node_id,
                broker = id,
                "broker session expired, fencing it"
            );
            match self.submit_local(Command::FenceBroker { id }).await {
                Ok((Response::Ok, _)) => {}
                Ok((other, _)) => tracing::warn!(broker = id, ?other, "fencing refused"),
                Err(e) => {
                    tracing::warn!(broker = id, error = %e, "cannot fence");
                    return;
                }
            }
        }
    }
}

/// Whether this Raft node is the leader, as its last metrics say.
pub(crate) fn leads(raft: &Raft) -> bool {
    raft.metrics().borrow().state == ServerState::Leader
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::BrokerInfo;

    fn state_with(brokers: &[(i32, bool)]) -> ClusterState {
        let mut state = ClusterState::default();
        for &(id, fenced) in brokers {
            let info = BrokerInfo {
                id,
                host: "h".into(),
                port: 1,
                rack: None,
                listeners: Vec::new(),
                fenced,
            };
            state.brokers.insert(id, info);
        }
        state
    }

    #[test]
    fn leases_start_at_the_election_and_expire_after_the_session_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(3);
        let state = state_with(&[(1, false), (2, false), (3, true)]);
        let mut leases = Leases::new(t0);
        // Heard before this node led: forgotten at the election.
        leases.heard_from(1, t0);
        assert!(leases.lead(7, t0 + Duration::from_secs(10)));
        assert!(
            !leases.lead(7, t0 + Duration::from_secs(11)),
            "same term, same leases"
        );
        let since = t0 + Duration::from_secs(10);
        assert!(
            leases
                .expired(&state, since + Duration::from_secs(2), timeout)
                .is_empty()
        );
        leases.heard_from(2, since + Duration::from_secs(2));
        // 1 never heard since the election; 3 is fenced already.
        assert_eq!(leases.expired(&state, since + timeout, timeout), vec![1]);
        assert_eq!(
            leases.expired(&state, since + Duration::from_secs(5), timeout),
            vec![1, 2]
        );
        // A new term starts over.
        leases.step_down();
        assert!(leases.lead(9, since + Duration::from_secs(5)));
        assert!(
            leases
                .expired(&state, since + Duration::from_secs(7), timeout)
                .is_empty()
        );
    }

    #[test]
    fn heartbeats_register_unknown_fenced_and_moved_brokers() {
        let endpoint = BrokerEndpoint {
            host: "h".into(),
            port: 1,
            rack: None,
            listeners: Vec::new(),
        };
        let state = state_with(&[(1, false), (2, true)]);
        assert_eq!(registration(&state, 1, &endpoint), None);
        assert!(matches!(
            registration(&state, 2, &endpoint),
            Some(Command::RegisterBroker { id: 2, .. })
        ));
        assert!(matches!(
            registration(&state, 3, &endpoint),
            Some(Command::RegisterBroker { id: 3, .. })
        ));
        let moved = BrokerEndpoint {
            port: 2,
            ..endpoint.clone()
        };
        assert!(matches!(
            registration(&state, 1, &moved),
            Some(Command::RegisterBroker { port: 2, .. })
        ));
        let racked = BrokerEndpoint {
            rack: Some("r".into()),
            ..endpoint
        };
        assert!(registration(&state, 1, &racked).is_some());
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let a = new_cluster_id();
        assert_eq!(a.len(), 22, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
        assert_ne!(a, new_cluster_id());
    }
}
