use super::*;

fn register(id: i32, rack: Option<&str>) -> Command {
    Command::RegisterBroker {
        id,
        host: format!("host{id}"),
        port: 9092,
        rack: rack.map(str::to_owned),
        listeners: Vec::new(),
    }
}

fn create(name: &str, assignments: Vec<Vec<i32>>) -> Command {
    Command::CreateTopic {
        name: name.into(),
        topic_id: Uuid::from_u128(7),
        configs: BTreeMap::new(),
        assignments,
    }
}

fn fence(id: i32) -> Command {
    Command::FenceBroker { id }
}

/// A state with brokers 1..=n registered and unfenced.
fn with_brokers(n: i32) -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=n {
        assert_eq!(state.apply(&register(id, None)), Response::Ok);
    }
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

fn part(state: &ClusterState, topic: &str, partition: i32) -> PartitionState {
    state.partition(topic, partition).unwrap().clone()
}

#[test]
fn init_cluster_sets_the_id_once() {
    let mut state = ClusterState::default();
    applied(
        &mut state,
        Command::InitCluster {
            cluster_id: "first".into(),
        },
    );
    applied(
        &mut state,
        Command::InitCluster {
            cluster_id: "second".into(),
        },
    );
    assert_eq!(state.cluster_id, "first");
    let kind = rejected(
        &mut ClusterState::default(),
        Command::InitCluster {
            cluster_id: String::new(),
        },
    );
    assert_eq!(kind, RejectKind::InvalidRequest);
}

#[test]
fn register_adds_updates_and_validates() {
    let mut state = with_brokers(1);
    assert_eq!(
        state.brokers[&1],
        BrokerInfo {
            id: 1,
            host: "host1".into(),
            port: 9092,
            rack: None,
            listeners: Vec::new(),
            fenced: false
        }
    );
    applied(
        &mut state,
        Command::RegisterBroker {
            id: 1,
            host: "moved".into(),
            port: 1,
            rack: Some("r".into()),
            listeners: Vec::new(),
        },
    );
    assert_eq!(state.brokers[&1].host, "moved");
    assert_eq!(state.brokers[&1].rack.as_deref(), Some("r"));
    let bad_id = Command::RegisterBroker {
        id: -1,
        host: "h".into(),
        port: 1,
        rack: None,
        listeners: Vec::new(),
    };
    assert_eq!(rejected(&mut state, bad_id), RejectKind::InvalidRequest);
    let no_host = Command::RegisterBroker {
        id: 2,
        host: String::new(),
        port: 1,
        rack: None,
        listeners: Vec::new(),
    };
    assert_eq!(rejected(&mut state, no_host), RejectKind::InvalidRequest);
}

#[test]
fn create_topic_leads_with_the_first_replica() {
    let mut state = with_brokers(3);
    applied(
        &mut state,
        create("orders", vec![vec![2, 3, 1], vec![3, 1, 2]]),
    );
    let topic = &state.topics["orders"];
    assert_eq!(topic.topic_id, Uuid::from_u128(7));
    assert_eq!(
        topic.partitions[0],
        PartitionState {
            replicas: vec![2, 3, 1],
            leader: 2,
            leader_epoch: 0,
            isr: vec![2, 3, 1],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    assert_eq!(topic.partitions[1].leader, 3);
}

#[test]
fn create_topic_refusals() {
    let mut state = with_brokers(3);
    applied(&mut state, create("orders", vec![vec![1]]));
    let cases = [
        (
            create("orders", vec![vec![1]]),
            RejectKind::TopicAlreadyExists,
        ),
        (
            create("other", vec![vec![1, 9]]),
            RejectKind::InvalidReplicaAssignment,
        ),
        (
            create("other", vec![vec![1, 1]]),
            RejectKind::InvalidReplicaAssignment,
        ),
        (
            create("other", vec![vec![]]),
            RejectKind::InvalidReplicaAssignment,
        ),
        (
            create("other", vec![vec![1, 2], vec![3]]),
            RejectKind::InvalidReplicaAssignment,
        ),
        (create("other", vec![]), RejectKind::InvalidPartitions),
        (create("", vec![vec![1]]), RejectKind::InvalidTopic),
        (create("..", vec![vec![1]]), RejectKind::InvalidTopic),
        (create("a/b", vec![vec![1]]), RejectKind::InvalidTopic),
        (
            create(&"x".repeat(250), vec![vec![1]]),
            RejectKind::InvalidTopic,
        ),
    ];
    for (cmd, kind) in cases {
        assert_eq!(rejected(&mut state, cmd.clone()), kind, "{cmd:?}");
    }
    applied(&mut state, create(&"x".repeat(249), vec![vec![1]]));
}

#[test]
fn create_topic_leaves_fenced_replicas_out_of_the_isr() {
    let mut state = with_brokers(3);
    applied(&mut state, fence(1));
    applied(&mut state, create("t", vec![vec![1, 2, 3]]));
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![1, 2, 3],
            leader: 2,
            leader_epoch: 0,
            isr: vec![2, 3],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    applied(&mut state, fence(2));
    applied(&mut state, fence(3));
    assert_eq!(
        rejected(&mut state, create("u", vec![vec![1, 2]])),
        RejectKind::InvalidReplicaAssignment
    );
}

#[test]
fn fence_moves_leadership_to_the_next_in_sync_replica() {
    let mut state = with_brokers(3);
    applied(
        &mut state,
        create("t", vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]),
    );
    applied(&mut state, fence(1));
    assert!(state.brokers[&1].fenced);
    // Led by 1: the next replica in replica order leads, epoch bumped.
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![1, 2, 3],
            leader: 2,
            leader_epoch: 1,
            isr: vec![2, 3],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    // Not led by 1: only the ISR shrinks, the leader epoch stays.
    assert_eq!(
        part(&state, "t", 1),
        PartitionState {
            replicas: vec![2, 3, 1],
            leader: 2,
            leader_epoch: 0,
            isr: vec![2, 3],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    assert_eq!(part(&state, "t", 2).isr, vec![3, 2]);
    // Fencing again changes nothing.
    let before = state.clone();
    applied(&mut state, fence(1));
    assert_eq!(state, before);
    assert_eq!(rejected(&mut state, fence(42)), RejectKind::UnknownBroker);
}

#[test]
fn fence_of_the_last_in_sync_replica_takes_the_partition_offline() {
    let mut state = with_brokers(3);
    applied(&mut state, create("t", vec![vec![1, 2]]));
    applied(&mut state, fence(2));
    assert_eq!(part(&state, "t", 0).isr, vec![1]);
    applied(&mut state, fence(1));
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![1, 2],
            leader: NO_LEADER,
            leader_epoch: 1,
            isr: vec![1],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    // 2 comes back, but it is not in the ISR: no unclean election.
    applied(&mut state, register(2, None));
    assert_eq!(part(&state, "t", 0).leader, NO_LEADER);
    // 1, the last in-sync replica, comes back and leads again.
    applied(&mut state, register(1, None));
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![1, 2],
            leader: 1,
            leader_epoch: 2,
            isr: vec![1],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
}

#[test]
fn fence_with_only_fenced_replicas_left_in_the_isr() {
    // ISR [1, 2] where 2 is the leader; both fenced one after the other.
    let mut state = with_brokers(2);
    applied(&mut state, create("t", vec![vec![2, 1]]));
    applied(&mut state, fence(2));
    assert_eq!(part(&state, "t", 0).leader, 1);
    assert_eq!(part(&state, "t", 0).leader_epoch, 1);
    applied(&mut state, fence(1));
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![2, 1],
            leader: NO_LEADER,
            leader_epoch: 2,
            isr: vec![1],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
}

#[test]
fn alter_partition_rules() {
    let mut state = with_brokers(4);
    applied(&mut state, create("t", vec![vec![1, 2, 3]]));
    let alter = |epoch: i32, isr: Vec<i32>| Command::AlterPartition {
        topic: "t".into(),
        partition: 0,
        leader_epoch: epoch,
        isr,
    };
    applied(&mut state, alter(0, vec![1, 2]));
    assert_eq!(part(&state, "t", 0).isr, vec![1, 2]);
    assert_eq!(
        part(&state, "t", 0).leader_epoch,
        0,
        "an ISR change keeps the epoch"
    );
    applied(&mut state, alter(0, vec![1, 2, 3]));
    assert_eq!(
        rejected(&mut state, alter(1, vec![1])),
        RejectKind::FencedLeaderEpoch
    );
    assert_eq!(
        rejected(&mut state, alter(-1, vec![1])),
        RejectKind::FencedLeaderEpoch
    );
    assert_eq!(
        rejected(&mut state, alter(0, vec![2, 3])),
        RejectKind::InvalidRequest
    );
    assert_eq!(
        rejected(&mut state, alter(0, vec![1, 4])),
        RejectKind::InvalidRequest
    );
    assert_eq!(
        rejected(&mut state, alter(0, vec![1, 1])),
        RejectKind::InvalidRequest
    );
    applied(&mut state, fence(3));
    assert_eq!(
        rejected(&mut state, alter(0, vec![1, 3])),
        RejectKind::InvalidRequest
    );
    let unknown = Command::AlterPartition {
        topic: "t".into(),
        partition: 1,
        leader_epoch: 0,
        isr: vec![1],
    };
    assert_eq!(rejected(&mut state, unknown), RejectKind::UnknownTopic);
    let negative = Command::AlterPartition {
        topic: "t".into(),
        partition: -1,
        leader_epoch: 0,
        isr: vec![1],
    };
    assert_eq!(rejected(&mut state, negative), RejectKind::UnknownTopic);
}

#[test]
fn elect_preferred_leader_rules() {
    let mut state = with_brokers(3);
    applied(&mut state, create("t", vec![vec![1, 2, 3]]));
    let elect = || Command::ElectPreferredLeader {
        topic: "t".into(),
        partition: 0,
    };
    assert_eq!(rejected(&mut state, elect()), RejectKind::ElectionNotNeeded);
    applied(&mut state, fence(1));
    assert_eq!(part(&state, "t", 0).leader, 2);
    assert_eq!(
        rejected(&mut state, elect()),
        RejectKind::PreferredLeaderNotAvailable
    );
    // Back, but not in the ISR until the leader adds it.
    applied(&mut state, register(1, None));
    assert_eq!(
        rejected(&mut state, elect()),
        RejectKind::PreferredLeaderNotAvailable
    );
    applied(
        &mut state,
        Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader_epoch: 1,
            isr: vec![2, 3, 1],
        },
    );
    applied(&mut state, elect());
    assert_eq!(
        part(&state, "t", 0),
        PartitionState {
            replicas: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 2,
            isr: vec![2, 3, 1],
            adding_replicas: vec![],
            removing_replicas: vec![]
        }
    );
    let unknown = Command::ElectPreferredLeader {
        topic: "u".into(),
        partition: 0,
    };
    assert_eq!(rejected(&mut state, unknown), RejectKind::UnknownTopic);
}

#[test]
fn delete_alter_configs_and_create_partitions() {
    let mut state = with_brokers(3);
    applied(&mut state, create("t", vec![vec![1, 2]]));
    let configs = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
    applied(
        &mut state,
        Command::AlterTopicConfigs {
            name: "t".into(),
            configs: configs.clone(),
        },
    );
    assert_eq!(state.topics["t"].configs, configs);
    applied(
        &mut state,
        Command::AlterTopicConfigs {
            name: "t".into(),
            configs: BTreeMap::new(),
        },
    );
    assert!(
        state.topics["t"].configs.is_empty(),
        "configs are replaced, not merged"
    );

    applied(
        &mut state,
        Command::CreatePartitions {
            name: "t".into(),
            assignments: vec![vec![3, 1]],
        },
    );
    assert_eq!(part(&state, "t", 1).leader, 3);
    let cases = [
        (
            Command::CreatePartitions {
                name: "t".into(),
                assignments: vec![vec![1]],
            },
            RejectKind::InvalidReplicaAssignment,
        ),
        (
            Command::CreatePartitions {
                name: "t".into(),
                assignments: vec![vec![1, 7]],
            },
            RejectKind::InvalidReplicaAssignment,
        ),
        (
            Command::CreatePartitions {
                name: "t".into(),
                assignments: vec![],
            },
            RejectKind::InvalidPartitions,
        ),
        (
            Command::CreatePartitions {
                name: "u".into(),
                assignments: vec![vec![1, 2]],
            },
            RejectKind::UnknownTopic,
        ),
        (
            Command::AlterTopicConfigs {
                name: "u".into(),
                configs: BTreeMap::new(),
            },
            RejectKind::UnknownTopic,
        ),
        (
            Command::DeleteTopic { name: "u".into() },
            RejectKind::UnknownTopic,
        ),
    ];
    for (cmd, kind) in cases {
        assert_eq!(rejected(&mut state, cmd.clone()), kind, "{cmd:?}");
    }
    applied(&mut state, Command::DeleteTopic { name: "t".into() });
    assert!(state.topics.is_empty());
}

#[test]
fn producer_id_blocks_are_disjoint() {
    let mut state = ClusterState::default();
    assert_eq!(
        state.apply(&Command::AllocateProducerIds { count: 1000 }),
        Response::ProducerIdBlock { start: 0 }
    );
    assert_eq!(
        state.apply(&Command::AllocateProducerIds { count: 10 }),
        Response::ProducerIdBlock { start: 1000 }
    );
    assert_eq!(state.producer_id_block_end, 1010);
    for count in [0, -1, PRODUCER_ID_BLOCK_MAX + 1] {
        assert_eq!(
            rejected(&mut state, Command::AllocateProducerIds { count }),
            RejectKind::InvalidRequest
        );
    }
    state.producer_id_block_end = i64::MAX - 5;
    assert_eq!(
        rejected(&mut state, Command::AllocateProducerIds { count: 10 }),
        RejectKind::InvalidRequest
    );
}

/// A command mix touching every rule, with rejections among them.
fn history() -> Vec<Command> {
    let mut cmds = vec![Command::InitCluster {
        cluster_id: "c".into(),
    }];
    cmds.extend((1..=4).map(|id| register(id, Some(if id % 2 == 0 { "a" } else { "b" }))));
    cmds.extend([
        create("t", vec![vec![1, 2, 3], vec![2, 3, 4], vec![3, 4, 1]]),
        create("t", vec![vec![1]]),
        Command::AllocateProducerIds { count: 1000 },
        fence(2),
        Command::AlterPartition {
            topic: "t".into(),
            partition: 2,
            leader_epoch: 0,
            isr: vec![3, 4],
        },
        register(2, Some("a")),
        Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader_epoch: 0,
            isr: vec![1, 3],
        },
        Command::AlterPartition {
            topic: "t".into(),
            partition: 1,
            leader_epoch: 1,
            isr: vec![3, 4, 2],
        },
        Command::ElectPreferredLeader {
            topic: "t".into(),
            partition: 1,
        },
        Command::CreatePartitions {
            name: "t".into(),
            assignments: vec![vec![4, 1, 2]],
        },
        fence(4),
        fence(3),
        create("u", vec![vec![1]]),
        Command::AlterTopicConfigs {
            name: "u".into(),
            configs: BTreeMap::from([("k".into(), "v".into())]),
        },
        Command::DeleteTopic { name: "u".into() },
        Command::AllocateProducerIds { count: 5 },
    ]);
    cmds
}

#[test]
fn replaying_the_same_commands_gives_the_same_state() {
    let run = |cmds: &[Command]| {
        let mut state = ClusterState::default();
        let responses: Vec<Response> = cmds.iter().map(|c| state.apply(c)).collect();
        (state, responses)
    };
    let cmds = history();
    let (first, first_responses) = run(&cmds);
    // Through the wire format and back, as followers receive them.
    let json = serde_json::to_vec(&cmds).unwrap();
    let decoded: Vec<Command> = serde_json::from_slice(&json).unwrap();
    let (second, second_responses) = run(&decoded);
    assert_eq!(first, second);
    assert_eq!(first_responses, second_responses);
    // The history really exercised the rules.
    assert!(
        first_responses
            .iter()
            .any(|r| matches!(r, Response::Rejected { .. }))
    );
    assert_eq!(first.producer_id_block_end, 1005);
    let p1 = part(&first, "t", 1);
    assert_eq!(
        (p1.leader, p1.leader_epoch, p1.isr.clone()),
        (2, 2, vec![2]),
        "{p1:?}"
    );
    assert_eq!(part(&first, "t", 2).leader, NO_LEADER);
    // And the state round-trips through its snapshot form.
    let snapshot: ClusterState =
        serde_json::from_slice(&serde_json::to_vec(&first).unwrap()).unwrap();
    assert_eq!(snapshot, first);
}

#[test]
fn security_records_are_set_and_deleted_together_and_survive_a_snapshot() {
    let mut state = ClusterState::default();
    let change = |kind: &str, key: &str, value: Option<&str>| SecurityChange {
        kind: kind.into(),
        key: key.into(),
        value: value.map(str::to_owned),
    };
    applied(
        &mut state,
        Command::PutSecurity {
            changes: vec![
                change("scram", "SCRAM-SHA-256/alice", Some("{}")),
                change("acl", "b1", Some("{\"op\":3}")),
            ],
            expected: Vec::new(),
        },
    );
    assert_eq!(state.security["acl"]["b1"], "{\"op\":3}");
    // One bad change refuses them all.
    assert_eq!(
        rejected(
            &mut state,
            Command::PutSecurity {
                changes: vec![change("acl", "b2", Some("{}")), change("", "k", None)],
                expected: Vec::new(),
            },
        ),
        RejectKind::InvalidRequest
    );
    applied(
        &mut state,
        Command::PutSecurity {
            changes: vec![change("acl", "b1", None)],
            expected: Vec::new(),
        },
    );
    assert!(!state.security.contains_key("acl"), "an emptied kind goes");
    let json = serde_json::to_vec(&state).unwrap();
    let back: ClusterState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, state);
    // A snapshot written before security records existed still loads.
    let mut old = serde_json::to_value(ClusterState::default()).unwrap();
    old.as_object_mut().unwrap().remove("security");
    let loaded: ClusterState = serde_json::from_value(old).unwrap();
    assert!(loaded.security.is_empty());
}

#[test]
fn a_security_change_applies_only_to_the_records_its_caller_read() {
    let mut state = ClusterState::default();
    let put = |key: &str, value: &str, expected: Option<&str>| Command::PutSecurity {
        changes: vec![SecurityChange {
            kind: "quota".into(),
            key: key.into(),
            value: Some(value.into()),
        }],
        expected: vec![SecurityExpectation {
            kind: "quota".into(),
            key: key.into(),
            value: expected.map(str::to_owned),
        }],
    };
    // Expected absent, and absent: applied.
    applied(&mut state, put("users/alice", "{\"a\":1}", None));
    // Two read-modify-writes from the same read: the second is refused, the first stays.
    applied(
        &mut state,
        put("users/alice", "{\"a\":1,\"b\":2}", Some("{\"a\":1}")),
    );
    assert_eq!(
        rejected(
            &mut state,
            put("users/alice", "{\"a\":1,\"c\":3}", Some("{\"a\":1}"))
        ),
        RejectKind::SecurityRecordChanged
    );
    // Expected absent, but present.
    assert_eq!(
        rejected(&mut state, put("users/alice", "{}", None)),
        RejectKind::SecurityRecordChanged
    );
    assert_eq!(state.security["quota"]["users/alice"], "{\"a\":1,\"b\":2}");
    // A command logged before expectations existed decodes with none, and one without any is
    // written as before.
    let old = r#"{"PutSecurity":{"changes":[{"kind":"acl","key":"k","value":"v"}]}}"#;
    let command: Command = serde_json::from_str(old).unwrap();
    assert_eq!(
        command,
        Command::PutSecurity {
            changes: vec![SecurityChange {
                kind: "acl".into(),
                key: "k".into(),
                value: Some("v".into()),
            }],
            expected: Vec::new(),
        }
    );
    assert_eq!(serde_json::to_string(&command).unwrap(), old);
}
