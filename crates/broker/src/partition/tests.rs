use super::*;

#[test]
fn replicas_added_under_the_same_leader_are_followed_and_removed_ones_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let assignment = Assignment {
        leader: 1,
        leader_epoch: 2,
        replicas: vec![1, 2],
        isr: vec![1, 2],
    };
    let p = Partition::open_as(
        "t",
        0,
        dir.path(),
        Default::default(),
        assignment.clone(),
        1,
        0,
    )
    .unwrap();
    assert!(
        p.record_follower_fetch(3, 0, 2, 10).is_err(),
        "not a replica yet"
    );
    // A reassignment adds broker 3 (KIP-455): same leader, same epoch.
    let reassigning = Assignment {
        replicas: vec![2, 3, 1],
        ..assignment.clone()
    };
    assert!(!p.set_assignment(reassigning, 10), "no role change");
    assert_eq!(p.leader_epoch(), 2);
    // Broker 3 has everything (the log is empty): it is proposed for the ISR.
    assert_eq!(
        p.record_follower_fetch(3, 0, 2, 20).unwrap(),
        Some((2, vec![1, 2, 3]))
    );
    // The reassignment completes without moving the leader: broker 2 is no replica anymore.
    let done = Assignment {
        replicas: vec![1, 3],
        isr: vec![1, 3],
        ..assignment
    };
    assert!(!p.set_assignment(done, 30));
    assert!(
        p.record_follower_fetch(2, 0, 2, 40).is_err(),
        "2 was removed"
    );
    assert!(p.record_follower_fetch(3, 0, 2, 40).is_ok());
}
