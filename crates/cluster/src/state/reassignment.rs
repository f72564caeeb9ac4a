//! Partition reassignment, as Kafka's KIP-455 and KRaft's `PartitionReassignmentReplicas`.
//!
//! A reassignment moves a partition from its replicas to a target list in three committed steps,
//! so that no acknowledged record is ever held by fewer replicas than before:
//! 1. **Start** ([`crate::Command::AlterPartitionReassignment`] with a target): the replicas become the
//!    target followed by the replicas being removed (`replicas = target ++ removing`), with
//!    `adding_replicas = target - original` and `removing_replicas = original - target`. The
//!    leader and the ISR stay; the brokers being added open the partition and fetch from the
//!    leader like any follower.
//! 2. **Catch up**: each adding replica joins the ISR the usual way (the leader proposes it with
//!    an `AlterPartition` once it has caught up). The apply of the `AlterPartition` that puts the
//!    last adding replica into the ISR completes the reassignment ([`complete_if_in_sync`]): the
//!    replicas become the target, the removed ones leave the ISR, and if the leader is removed the
//!    first in-sync target replica leads (leader epoch + 1). Brokers that are no longer replicas
//!    close and delete their copy. As in Kafka, a kept replica that is out of sync does not hold
//!    the completion up: only the adding ones must be in sync.
//! 3. **Cancel** (a `None` target): back to the original replicas, the adding ones out of the ISR;
//!    a leader that was being added hands over to the first in-sync original replica (epoch + 1).
//!
//! A new target while a reassignment is in progress first cancels it, then starts the new one
//! from the original replicas. A target that only reorders the replicas (nothing added or removed)
//! applies at once. Like Kafka, a cancel keeps the original replicas but not their order: they
//! are listed as during the reassignment (the kept ones in target order, then the removed ones).

use std::collections::BTreeMap;

use super::{
    BrokerInfo, ClusterState, NO_LEADER, PartitionState, RejectKind, Response, first_duplicate,
    first_eligible, reject,
};

impl PartitionState {
    /// Whether a reassignment is in progress.
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas before the reassignment in progress (all replicas when none is).
    pub fn original_replicas(&self) -> Vec<i32> {
        without(&self.replicas, &self.adding_replicas)
    }

    /// The replicas the reassignment in progress moves to (all replicas when none is).
    pub fn target_replicas(&self) -> Vec<i32> {
        without(&self.replicas, &self.removing_replicas)
    }
}

impl ClusterState {
    /// Applies [`crate::Command::AlterPartitionReassignment`].
    pub(super) fn alter_reassignment(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
        allow_replication_factor_change: bool,
    ) -> Response {
        let Some(current) = self.partition(topic, partition) else {
            return reject(
                RejectKind::UnknownTopic,
                format!("no partition {topic}-{partition}"),
            );
        };
        let at = format!("{topic}-{partition}");
        let next = match target {
            None if !current.is_reassigning() => {
                return reject(
                    RejectKind::NoReassignmentInProgress,
                    format!("{at}: no reassignment is in progress"),
                );
            }
            None => revert(current, &self.brokers, &at),
            Some(target) => self.validate_target(&at, target).and_then(|()| {
                let base = if current.is_reassigning() {
                    revert(current, &self.brokers, &at)?
                } else {
                    current.clone()
                };
                if !allow_replication_factor_change && target.len() != base.replicas.len() {
                    return Err(reject(
                        RejectKind::InvalidReplicationFactor,
                        format!(
                            "{at}: {} target replicas for {} replicas, and the request does not \
                             allow a replication factor change",
                            target.len(),
                            base.replicas.len()
                        ),
                    ));
                }
                Ok(start(base, target, &self.brokers))
            }),
        };
        match next {
            Ok(next) => {
                if let Some(p) = self.partition_mut(topic, partition) {
                    *p = next;
                }
                Response::Ok
            }
            Err(refused) => refused,
        }
    }

    /// A target must name distinct, registered, unfenced brokers (Kafka's manual assignment rule).
    fn validate_target(&self, at: &str, target: &[i32]) -> Result<(), Response> {
        let invalid = |why: String| {
            Err(reject(
                RejectKind::InvalidReplicaAssignment,
                format!("{at}: {why}"),
            ))
        };
        if target.is_empty() {
            return invalid("the target names no replica".into());
        }
        if let Some(dup) = first_duplicate(target) {
            return invalid(format!("broker {dup} appears twice in the target"));
        }
        if let Some(unknown) = target.iter().find(|r| !self.brokers.contains_key(r)) {
            return invalid(format!("broker {unknown} is not registered"));
        }
        if let Some(fenced) = target.iter().find(|&&r| !self.is_active(r)) {
            return invalid(format!("broker {fenced} is fenced"));
        }
        Ok(())
    }
}

/// Starts moving `base` (no reassignment in progress) to `target`; completes at once when
/// nothing must catch up.
fn start(
    base: PartitionState,
    target: &[i32],
    brokers: &BTreeMap<i32, BrokerInfo>,
) -> PartitionState {
    assert!(
        !base.is_reassigning(),
        "a reassignment starts from its original replicas"
    );
    let adding = without(target, &base.replicas);
    let removing = without(&base.replicas, target);
    let mut replicas = target.to_vec();
    replicas.extend(&removing);
    let mut next = PartitionState {
        replicas,
        adding_replicas: adding,
        removing_replicas: removing,
        ..base
    };
    complete_if_in_sync(&mut next, brokers);
    next
}

/// The partition back on its original replicas; refused when none of them is in sync.
fn revert(
    current: &PartitionState,
    brokers: &BTreeMap<i32, BrokerInfo>,
    at: &str,
) -> Result<PartitionState, Response> {
    let isr = without(&current.isr, &current.adding_replicas);
    if isr.is_empty() {
        return Err(reject(
            RejectKind::EligibleLeadersNotAvailable,
            format!(
                "{at}: every in-sync replica ({:?}) is one being added; cancelling would leave \
                 none (unclean leader election is disabled)",
                current.isr
            ),
        ));
    }
    let mut next = PartitionState {
        replicas: current.original_replicas(),
        leader: current.leader,
        leader_epoch: current.leader_epoch,
        isr,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    };
    lead_from_replicas(&mut next, brokers);
    Ok(next)
}

/// Completes the reassignment in progress of `p` once every adding replica is in the ISR and an
/// in-sync replica stays: the replicas become the target, the removed ones leave the ISR, and a
/// removed leader hands over to the first in-sync target replica (leader epoch + 1). Returns
/// whether it completed.
pub(crate) fn complete_if_in_sync(
    p: &mut PartitionState,
    brokers: &BTreeMap<i32, BrokerInfo>,
) -> bool {
    if !p.is_reassigning() || !p.adding_replicas.iter().all(|r| p.isr.contains(r)) {
        return false;
    }
    let isr = without(&p.isr, &p.removing_replicas);
    if isr.is_empty() {
        // Only replicas being removed are in sync: wait for a target replica to catch up.
        return false;
    }
    p.replicas = p.target_replicas();
    p.isr = isr;
    p.adding_replicas.clear();
    p.removing_replicas.clear();
    lead_from_replicas(p, brokers);
    true
}

/// A leader that is no longer a replica (or none) is replaced by the first eligible replica, or
/// none; a change bumps the leader epoch.
fn lead_from_replicas(p: &mut PartitionState, brokers: &BTreeMap<i32, BrokerInfo>) {
    if p.leader != NO_LEADER && p.replicas.contains(&p.leader) {
        return;
    }
    let leader = first_eligible(&p.replicas, &p.isr, brokers).unwrap_or(NO_LEADER);
    if leader != p.leader {
        p.leader = leader;
        p.leader_epoch += 1;
    }
}

/// `ids` without the members of `removed`, in order.
fn without(ids: &[i32], removed: &[i32]) -> Vec<i32> {
    ids.iter()
        .copied()
        .filter(|id| !removed.contains(id))
        .collect()
}

#[cfg(test)]
mod tests;
