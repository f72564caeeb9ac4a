use std::collections::BTreeMap;

use uuid::Uuid;

use crate::state::{ClusterState, Command, NO_LEADER, PartitionState, RejectKind, Response};

/// Brokers 1..=n registered, and topic `t` with one partition per assignment.
fn cluster(n: i32, assignments: Vec<Vec<i32>>) -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=n {
        applied(
            &mut state,
            Command::RegisterBroker {
                id,
                host: format!("host{id}"),
                port: 9092,
                rack: None,
                listeners: Vec::new(),
            },
        );
    }
    applied(
        &mut state,
        Command::CreateTopic {
            name: "t".into(),
            topic_id: Uuid::from_u128(1),
            configs: BTreeMap::new(),
            assignments,
        },
    );
    state
}

fn applied(state: &mut ClusterState, cmd: Command) {
    assert_eq!(state.apply(&cmd), Response::Ok, "{cmd:?}");
}

fn rejected(state: &mut ClusterState, cmd: Command) -> RejectKind {
    let before = state.clone();
    match state.apply(&cmd) {
        Response::Rejected { kind, message } => {
            assert!(!message.is_empty());
            assert_eq!(*state, before, "a rejected {cmd:?} changed the state");
            kind
        }
        other => panic!("{cmd:?} gave {other:?}"),
    }
}

fn reassign(partition: i32, target: &[i32]) -> Command {
    Command::AlterPartitionReassignment {
        topic: "t".into(),
        partition,
        target: Some(target.to_vec()),
        allow_replication_factor_change: true,
    }
}

fn cancel(partition: i32) -> Command {
    Command::AlterPartitionReassignment {
        topic: "t".into(),
        partition,
        target: None,
        allow_replication_factor_change: true,
    }
}

/// The leader of partition 0 changes its ISR at the current epoch.
fn set_isr(state: &mut ClusterState, isr: &[i32]) {
    let cmd = Command::AlterPartition {
        topic: "t".into(),
        partition: 0,
        leader_epoch: part(state).leader_epoch,
        isr: isr.to_vec(),
    };
    applied(state, cmd);
}

fn part(state: &ClusterState) -> PartitionState {
    state.partition("t", 0).unwrap().clone()
}

/// `(replicas, adding, removing, leader, epoch, isr)`.
type Shape = (Vec<i32>, Vec<i32>, Vec<i32>, i32, i32, Vec<i32>);

fn shape(state: &ClusterState) -> Shape {
    let p = part(state);
    (
        p.replicas,
        p.adding_replicas,
        p.removing_replicas,
        p.leader,
        p.leader_epoch,
        p.isr,
    )
}

#[test]
fn a_new_replica_catches_up_then_the_removed_leader_hands_over() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 3]));
    // The target first, then the replica being removed; leader and ISR unchanged.
    assert_eq!(
        shape(&state),
        (vec![2, 3, 1], vec![3], vec![1], 1, 0, vec![1, 2])
    );
    let p = part(&state);
    assert!(p.is_reassigning());
    assert_eq!(p.original_replicas(), vec![2, 1]);
    assert_eq!(p.target_replicas(), vec![2, 3]);
    // The leader counts broker 3 in sync once it caught up: the reassignment completes.
    set_isr(&mut state, &[1, 2, 3]);
    assert_eq!(
        shape(&state),
        (vec![2, 3], vec![], vec![], 2, 1, vec![2, 3])
    );
    assert!(!part(&state).is_reassigning());
}

#[test]
fn a_kept_leader_keeps_its_epoch() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[1, 3]));
    assert_eq!(
        shape(&state),
        (vec![1, 3, 2], vec![3], vec![2], 1, 0, vec![1, 2])
    );
    set_isr(&mut state, &[1, 2, 3]);
    assert_eq!(
        shape(&state),
        (vec![1, 3], vec![], vec![], 1, 0, vec![1, 3])
    );
}

#[test]
fn completion_waits_for_every_adding_replica() {
    let mut state = cluster(4, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[3, 4]));
    set_isr(&mut state, &[1, 2, 3]);
    assert_eq!(
        shape(&state),
        (
            vec![3, 4, 1, 2],
            vec![3, 4],
            vec![1, 2],
            1,
            0,
            vec![1, 2, 3]
        )
    );
    // A shrink meanwhile changes nothing of the reassignment.
    set_isr(&mut state, &[1, 3]);
    assert!(part(&state).is_reassigning());
    set_isr(&mut state, &[1, 3, 4]);
    assert_eq!(
        shape(&state),
        (vec![3, 4], vec![], vec![], 3, 1, vec![3, 4])
    );
}

#[test]
fn a_kept_replica_out_of_sync_does_not_hold_the_completion_up() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    set_isr(&mut state, &[1]);
    applied(&mut state, reassign(0, &[2, 3]));
    set_isr(&mut state, &[1, 3]);
    assert_eq!(shape(&state), (vec![2, 3], vec![], vec![], 3, 1, vec![3]));
}

#[test]
fn reorders_and_removals_apply_at_once() {
    let mut state = cluster(3, vec![vec![1, 2], vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 1]));
    assert_eq!(
        shape(&state),
        (vec![2, 1], vec![], vec![], 1, 0, vec![1, 2])
    );
    // Dropping the leader from three replicas: the others are in sync already.
    let mut state = cluster(3, vec![vec![1, 2, 3]]);
    applied(&mut state, reassign(0, &[3, 2]));
    assert_eq!(
        shape(&state),
        (vec![3, 2], vec![], vec![], 3, 1, vec![2, 3])
    );
}

#[test]
fn cancel_goes_back_to_the_original_replicas() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 3]));
    applied(&mut state, cancel(0));
    // The original replicas, listed as during the reassignment (Kafka keeps the same order).
    assert_eq!(
        shape(&state),
        (vec![2, 1], vec![], vec![], 1, 0, vec![1, 2])
    );
    assert_eq!(
        rejected(&mut state, cancel(0)),
        RejectKind::NoReassignmentInProgress
    );
}

#[test]
fn cancel_moves_leadership_off_an_adding_replica() {
    let mut state = cluster(4, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[3, 4]));
    set_isr(&mut state, &[1, 2, 3]);
    // Broker 1 dies: the first in-sync replica in replica order leads, a target one.
    applied(&mut state, Command::FenceBroker { id: 1 });
    assert_eq!(
        shape(&state),
        (vec![3, 4, 1, 2], vec![3, 4], vec![1, 2], 3, 1, vec![2, 3])
    );
    applied(&mut state, cancel(0));
    assert_eq!(shape(&state), (vec![1, 2], vec![], vec![], 2, 2, vec![2]));
}

#[test]
fn cancel_refused_when_only_adding_replicas_are_in_sync() {
    let mut state = cluster(3, vec![vec![1]]);
    applied(&mut state, reassign(0, &[2, 3]));
    set_isr(&mut state, &[1, 2]);
    applied(&mut state, Command::FenceBroker { id: 1 });
    assert_eq!(
        shape(&state),
        (vec![2, 3, 1], vec![2, 3], vec![1], 2, 1, vec![2])
    );
    assert_eq!(
        rejected(&mut state, cancel(0)),
        RejectKind::EligibleLeadersNotAvailable
    );
    // A new target is refused alike: it would start from the original replicas.
    assert_eq!(
        rejected(&mut state, reassign(0, &[2])),
        RejectKind::EligibleLeadersNotAvailable
    );
}

#[test]
fn a_new_target_replaces_the_one_in_progress() {
    let mut state = cluster(4, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 3]));
    applied(&mut state, reassign(0, &[2, 4]));
    assert_eq!(
        shape(&state),
        (vec![2, 4, 1], vec![4], vec![1], 1, 0, vec![1, 2])
    );
    set_isr(&mut state, &[1, 2, 4]);
    assert_eq!(
        shape(&state),
        (vec![2, 4], vec![], vec![], 2, 1, vec![2, 4])
    );
}

#[test]
fn refusals() {
    let mut state = cluster(4, vec![vec![1, 2]]);
    applied(&mut state, Command::FenceBroker { id: 4 });
    let unknown_topic = Command::AlterPartitionReassignment {
        topic: "nope".into(),
        partition: 0,
        target: Some(vec![1]),
        allow_replication_factor_change: true,
    };
    let fixed_factor = Command::AlterPartitionReassignment {
        topic: "t".into(),
        partition: 0,
        target: Some(vec![1, 2, 3]),
        allow_replication_factor_change: false,
    };
    let cases = [
        (unknown_topic, RejectKind::UnknownTopic),
        (reassign(1, &[1]), RejectKind::UnknownTopic),
        (reassign(-1, &[1]), RejectKind::UnknownTopic),
        (reassign(0, &[]), RejectKind::InvalidReplicaAssignment),
        (reassign(0, &[2, 2]), RejectKind::InvalidReplicaAssignment),
        (reassign(0, &[1, 9]), RejectKind::InvalidReplicaAssignment),
        (reassign(0, &[1, 4]), RejectKind::InvalidReplicaAssignment),
        (fixed_factor, RejectKind::InvalidReplicationFactor),
        (cancel(0), RejectKind::NoReassignmentInProgress),
    ];
    for (cmd, kind) in cases {
        assert_eq!(rejected(&mut state, cmd.clone()), kind, "{cmd:?}");
    }
    // The same number of replicas needs no permission.
    applied(
        &mut state,
        Command::AlterPartitionReassignment {
            topic: "t".into(),
            partition: 0,
            target: Some(vec![2, 3]),
            allow_replication_factor_change: false,
        },
    );
}

#[test]
fn added_partitions_keep_the_original_replication_factor() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 3]));
    applied(
        &mut state,
        Command::CreatePartitions {
            name: "t".into(),
            assignments: vec![vec![3, 1]],
        },
    );
    assert_eq!(state.topics["t"].partitions.len(), 2);
}

#[test]
fn reassignments_replay_and_old_snapshots_read() {
    let mut state = cluster(3, vec![vec![1, 2]]);
    applied(&mut state, reassign(0, &[2, 3]));
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.contains("\"adding_replicas\":[3]"), "{json}");
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // A partition written before reassignments existed has neither field.
    let old = r#"{"replicas":[1,2],"leader":1,"leader_epoch":3,"isr":[1,2]}"#;
    let p: PartitionState = serde_json::from_str(old).unwrap();
    assert!(!p.is_reassigning());
    assert_eq!(p.leader, 1);
    // And a partition without a reassignment writes them not.
    applied(&mut state, cancel(0));
    let json = serde_json::to_string(&part(&state)).unwrap();
    assert!(!json.contains("adding_replicas"), "{json}");
    assert_ne!(part(&state).leader, NO_LEADER);
}
