//! The metadata quorum end to end: voters on loopback in one process, real sockets and real
//! files, every wait on a condition with a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_cluster::{
    BrokerEndpoint, ClusterNode, ClusterState, Command, NodeConfig, RejectKind, Response, place,
};
use uuid::Uuid;

const HEARTBEAT: Duration = Duration::from_millis(100);
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// Generous bounds for a loaded 2-core machine; the tests wait for conditions, not for these.
const ELECTION_DEADLINE: Duration = Duration::from_secs(10);
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
const STATE_DEADLINE: Duration = Duration::from_secs(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(id: i32, dir: &Path, voters: &BTreeMap<i32, SocketAddr>) -> NodeConfig {
    let endpoint = BrokerEndpoint {
        host: "127.0.0.1".into(),
        port: 19_000 + id as u16,
        rack: Some(format!("rack-{}", id % 2)),
        listeners: Vec::new(),
    };
    let mut config = NodeConfig::new(id, dir.join(format!("meta-{id}")), voters.clone(), endpoint);
    config.heartbeat_interval = HEARTBEAT;
    config.session_timeout = SESSION_TIMEOUT;
    config
}

/// Binds `count` controller listeners on port 0: the voters' addresses.
fn listeners(count: i32) -> (BTreeMap<i32, TcpListener>, BTreeMap<i32, SocketAddr>) {
    let listeners: BTreeMap<i32, TcpListener> = (1..=count)
        .map(|id| (id, TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let voters = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap()))
        .collect();
    (listeners, voters)
}

async fn start_voters(
    dir: &Path,
    count: i32,
) -> (BTreeMap<i32, Arc<ClusterNode>>, BTreeMap<i32, SocketAddr>) {
    let (listeners, voters) = listeners(count);
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let node = ClusterNode::start(config(id, dir, &voters), Some(listener))
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    (nodes, voters)
}

/// Polls `condition` every 20 ms until it gives a value; panics with `what` after `deadline`.
async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node`'s state satisfies `condition`.
async fn wait_state(
    node: &ClusterNode,
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let mut state = node.state();
    let found = match tokio::time::timeout(deadline, state.wait_for(|s| condition(s))).await {
        Ok(Ok(found)) => Some(found.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "node {}: {what}: not within {deadline:?}; state: {:#?}",
            node.node_id(),
            *state.borrow()
        )
    })
}

/// The controller every node in `nodes` agrees on.
async fn agreed_controller<'a>(nodes: impl Iterator<Item = &'a Arc<ClusterNode>> + Clone) -> i32 {
    agreed_controller_but(nodes, None).await
}

/// The controller every node in `nodes` agrees on, once it is not `old`.
async fn agreed_controller_but<'a>(
    nodes: impl Iterator<Item = &'a Arc<ClusterNode>> + Clone,
    old: Option<i32>,
) -> i32 {
    wait_until("an agreed controller", ELECTION_DEADLINE, || {
        let ids: BTreeSet<Option<i32>> = nodes.clone().map(|n| n.controller_id()).collect();
        match ids.into_iter().collect::<Vec<_>>()[..] {
            [Some(id)] if Some(id) != old => Some(id),
            _ => None,
        }
    })
    .await
}

fn registered_and_unfenced(state: &ClusterState, ids: &[i32]) -> bool {
    ids.iter()
        .all(|id| state.brokers.get(id).is_some_and(|b| !b.fenced))
}

fn create_topic(name: &str, assignments: Vec<Vec<i32>>) -> Command {
    Command::CreateTopic {
        name: name.into(),
        topic_id: Uuid::new_v4(),
        configs: BTreeMap::new(),
        assignments,
    }
}

/// Tests 2, 4 and 5 of the brief: election, registration, forwarded submits, producer id blocks,
/// an observer, controlled shutdowns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_and_an_observer() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (voters, addrs) = start_voters(dir.path(), 3).await;
    let observer = ClusterNode::start(config(4, dir.path(), &addrs), None)
        .await
        .unwrap();
    let everyone: Vec<&Arc<ClusterNode>> = voters.values().chain([&observer]).collect();

    let controller = agreed_controller(everyone.iter().copied()).await;
    for node in &everyone {
        let state = wait_state(node, "brokers 1-4 registered", STATE_DEADLINE, |s| {
            registered_and_unfenced(s, &[1, 2, 3, 4]) && !s.cluster_id.is_empty()
        })
        .await;
        assert_eq!(state.cluster_id.len(), 22, "{}", state.cluster_id);
        assert_eq!(state.brokers[&4].port, 19_004);
        assert_eq!(state.brokers[&4].rack.as_deref(), Some("rack-0"));
    }

    // CreateTopic through a voter that is not the controller: forwarded, and readable at once.
    let follower = voters.values().find(|n| n.node_id() != controller).unwrap();
    let brokers = follower.state().borrow().brokers.clone();
    let assignments = place(&brokers, "orders", 0, 6, 3).unwrap();
    let response = follower
        .submit(create_topic("orders", assignments.clone()), SUBMIT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::Ok);
    let topic = follower.state().borrow().topics["orders"].clone();
    assert_eq!(topic.partitions.len(), 6);
    for (partition, replicas) in topic.partitions.iter().zip(&assignments) {
        assert_eq!(&partition.replicas, replicas);
        assert_eq!(partition.leader, replicas[0]);
        assert_eq!(partition.isr, *replicas);
    }
    for node in &everyone {
        wait_state(node, "topic orders", STATE_DEADLINE, |s| {
            s.topics.get("orders") == Some(&topic)
        })
        .await;
    }
    // A second create is refused, here through the observer.
    let again = observer
        .submit(create_topic("orders", vec![vec![1]]), SUBMIT_TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            Response::Rejected {
                kind: RejectKind::TopicAlreadyExists,
                ..
            }
        ),
        "{again:?}"
    );

    // Producer id blocks from every node, concurrently: disjoint.
    let blocks = futures_blocks(&everyone).await;
    let mut sorted = blocks.clone();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        assert!(pair[0] + 1000 <= pair[1], "overlapping blocks {blocks:?}");
    }

    // Controlled shutdown of the observer, then of a follower voter: fenced at once, not after
    // the session timeout.
    for node in [&observer, follower] {
        let id = node.node_id();
        let started = Instant::now();
        node.shutdown().await;
        // Committed before shutdown returned: the node applied it, the controller too.
        assert!(
            node.state().borrow().brokers[&id].fenced,
            "node {id} not fenced"
        );
        assert!(
            voters[&controller].state().borrow().brokers[&id].fenced,
            "node {id} not fenced"
        );
        assert!(
            started.elapsed() < SESSION_TIMEOUT,
            "fenced after {:?}",
            started.elapsed()
        );
        let after = node
            .submit(Command::AllocateProducerIds { count: 1 }, SUBMIT_TIMEOUT)
            .await;
        assert!(
            matches!(after, Err(strata_cluster::Error::Stopped)),
            "{after:?}"
        );
    }
    // Two voters of three still commit.
    let controller_node = &voters[&controller];
    let response = controller_node
        .submit(
            Command::DeleteTopic {
                name: "orders".into(),
            },
            SUBMIT_TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(response, Response::Ok);
    // The others stay registered.
    let state = controller_node.state().borrow().clone();
    let live: Vec<i32> = state
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.id)
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
}

/// One `AllocateProducerIds { count: 1000 }` from each node at once; the block starts.
async fn futures_blocks(nodes: &[&Arc<ClusterNode>]) -> Vec<i64> {
    let mut tasks = Vec::new();
    for node in nodes {
        let node = Arc::clone(node);
        tasks.push(tokio::spawn(async move {
            node.submit(Command::AllocateProducerIds { count: 1000 }, SUBMIT_TIMEOUT)
                .await
        }));
    }
    let mut starts = Vec::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Response::ProducerIdBlock { start } => starts.push(start),
            other => panic!("{other:?}"),
        }
    }
    starts
}

/// Binds `addr` again once the stopped node's listener is gone.
async fn rebind(addr: SocketAddr) -> TcpListener {
    wait_until(
        "the stopped node's port free",
        Duration::from_secs(10),
        || TcpListener::bind(addr).ok(),
    )
    .await
}

fn meta_dir(dir: &Path, id: i32) -> PathBuf {
    dir.join(format!("meta-{id}"))
}

/// Test 3 of the brief: the controller dies without a controlled shutdown, comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_failover_fencing_and_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut voters, addrs) = start_voters(dir.path(), 3).await;
    let old = agreed_controller(voters.values()).await;
    for node in voters.values() {
        wait_state(node, "brokers 1-3 registered", STATE_DEADLINE, |s| {
            registered_and_unfenced(s, &[1, 2, 3])
        })
        .await;
    }
    let others: Vec<i32> = addrs.keys().copied().filter(|&id| id != old).collect();
    let (a, b) = (others[0], others[1]);
    // The controller leads partition 0; partition 1 is led by another broker.
    let assignments = vec![vec![old, a, b], vec![a, b, old]];
    let response = voters[&a]
        .submit(create_topic("t", assignments), SUBMIT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::Ok);
    let before = voters[&old].state().borrow().clone();
    assert_eq!(before.topics["t"].partitions[0].leader, old);

    // Stop the controller as a crash would: no FenceBroker.
    let killed = voters.remove(&old).unwrap();
    assert!(meta_dir(dir.path(), old).join("raft-log").exists());
    drop(killed);

    let killed_at = Instant::now();
    let new = agreed_controller_but(voters.values(), Some(old)).await;
    let elected_after = killed_at.elapsed();
    assert!(
        elected_after < Duration::from_secs(5),
        "new controller after {elected_after:?}"
    );
    for node in voters.values() {
        let state = wait_state(
            node,
            "the stopped broker fenced",
            STATE_DEADLINE + SESSION_TIMEOUT,
            |s| s.brokers[&old].fenced,
        )
        .await;
        let p0 = &state.topics["t"].partitions[0];
        assert_eq!((p0.leader, p0.leader_epoch), (a, 1), "{p0:?}");
        assert_eq!(p0.isr, vec![a, b]);
        let p1 = &state.topics["t"].partitions[1];
        assert_eq!((p1.leader, p1.leader_epoch), (a, 0), "{p1:?}");
        assert_eq!(p1.isr, vec![a, b]);
    }

    // Restart it on the same meta_dir and port.
    let listener = rebind(addrs[&old]).await;
    let restarted = ClusterNode::start(config(old, dir.path(), &addrs), Some(listener))
        .await
        .unwrap();
    // Its own log brings back what it had applied, before it hears from anyone.
    assert!(
        restarted.state().borrow().topics.contains_key("t"),
        "log not recovered"
    );
    voters.insert(old, restarted);
    for node in voters.values() {
        wait_state(node, "the restarted broker unfenced", STATE_DEADLINE, |s| {
            !s.brokers[&old].fenced
        })
        .await;
    }
    let same = wait_until("the same state everywhere", STATE_DEADLINE, || {
        let states: Vec<ClusterState> = voters
            .values()
            .map(|n| n.state().borrow().as_ref().clone())
            .collect();
        states
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| states[0].clone())
    })
    .await;
    assert_eq!(same.cluster_id, before.cluster_id);
    assert_eq!(same.topics["t"].topic_id, before.topics["t"].topic_id);

    // A controlled shutdown of the controller: fenced before it stops, and another voter takes
    // over.
    let leaving = voters.remove(&new).unwrap();
    leaving.shutdown().await;
    assert!(leaving.state().borrow().brokers[&new].fenced);
    let successor = agreed_controller_but(voters.values(), Some(new)).await;
    for node in voters.values() {
        let state = wait_state(
            node,
            "the shut-down controller fenced",
            STATE_DEADLINE,
            |s| s.brokers[&new].fenced,
        )
        .await;
        assert!(!state.brokers[&successor].fenced);
    }
}

/// Reads one reply frame's JSON, `None` when the node closed the connection instead.
fn read_reply(stream: &mut std::net::TcpStream) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut header = [0; 4];
    stream.read_exact(&mut header).ok()?;
    let mut payload = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(serde_json::from_slice(&payload).unwrap())
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Bytes that are not the controller protocol close that connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_controller_port_closes_only_that_connection() {
    use std::io::Write;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (voters, addrs) = start_voters(dir.path(), 1).await;
    let node = &voters[&1];
    wait_state(node, "registered", STATE_DEADLINE, |s| {
        registered_and_unfenced(s, &[1])
    })
    .await;
    let addr = addrs[&1];
    let garbage: Vec<Vec<u8>> = vec![
        u32::MAX.to_be_bytes().to_vec(),
        frame(b"{not json"),
        frame(b"{\"NoSuchRequest\":{}}"),
        frame(b"{\"Submit\":{\"CreateTopic\":{\"name\":1}}}"),
        frame(&[0xff; 64]),
    ];
    for bytes in garbage {
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(STATE_DEADLINE)).unwrap();
            stream.write_all(&bytes).unwrap();
            read_reply(&mut stream)
        })
        .await
        .unwrap();
        assert_eq!(answer, None, "a reply to garbage");
    }
    // A well-formed request on a new connection is still served.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(STATE_DEADLINE)).unwrap();
        stream
            .write_all(&frame(br#"{"FetchState":{"applied_index":0}}"#))
            .unwrap();
        read_reply(&mut stream)
    })
    .await
    .unwrap()
    .expect("a reply");
    assert_eq!(answer["State"]["controller"], 1, "{answer}");
    let response = node
        .submit(Command::AllocateProducerIds { count: 1 }, SUBMIT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::ProducerIdBlock { start: 0 });
}
