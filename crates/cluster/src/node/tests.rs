use std::net::TcpListener;
use std::path::Path;

use super::*;

const STATE_DEADLINE: Duration = Duration::from_secs(10);

fn config(id: i32, dir: &Path, voters: &BTreeMap<i32, SocketAddr>) -> NodeConfig {
    let endpoint = BrokerEndpoint {
        host: "127.0.0.1".into(),
        port: 19_100u16.wrapping_add(id as u16),
        rack: None,
        listeners: Vec::new(),
    };
    let mut config = NodeConfig::new(id, dir.join(format!("meta-{id}")), voters.clone(), endpoint);
    config.heartbeat_interval = Duration::from_millis(100);
    config.session_timeout = Duration::from_secs(3);
    config
}

async fn wait_until<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < STATE_DEADLINE,
            "{what}: not within {STATE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let voters = BTreeMap::from([(1, addr)]);
    let good = config(1, Path::new("/nonexistent"), &voters);
    assert!(good.validate(true).is_ok());
    let observer = config(2, Path::new("/nonexistent"), &voters);
    assert!(observer.validate(false).is_ok());
    let cases = [
        (
            config(1, Path::new("/x"), &voters),
            false,
            "a voter without a listener",
        ),
        (
            config(2, Path::new("/x"), &voters),
            true,
            "an observer with a listener",
        ),
        (config(-1, Path::new("/x"), &voters), false, "a negative id"),
        (
            config(1, Path::new("/x"), &BTreeMap::new()),
            true,
            "no voter",
        ),
        (
            config(1, Path::new("/x"), &BTreeMap::from([(1, addr), (-2, addr)])),
            true,
            "a negative voter id",
        ),
        (
            NodeConfig {
                session_timeout: Duration::from_millis(100),
                ..good.clone()
            },
            true,
            "a session timeout within the heartbeat interval",
        ),
        (
            NodeConfig {
                heartbeat_interval: Duration::ZERO,
                ..good.clone()
            },
            true,
            "no heartbeat interval",
        ),
    ];
    for (config, listener, what) in cases {
        assert!(
            matches!(config.validate(listener), Err(Error::Config(_))),
            "{what}"
        );
    }
}

/// A voter down while the others compact their log past what it has gets the state as a
/// snapshot (in many small chunks here) when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let compaction = Compaction {
        snapshot_every_entries: 5,
        entries_kept: 0,
        snapshot_chunk_bytes: 64,
    };
    let dir = tempfile::tempdir().unwrap();
    let listeners: BTreeMap<i32, TcpListener> = (1..=3)
        .map(|id| (id, TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let voters: BTreeMap<i32, SocketAddr> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let node =
            ClusterNode::start_with(config(id, dir.path(), &voters), Some(listener), compaction);
        nodes.insert(id, node.await.unwrap());
    }
    let controller = wait_until("a controller", || {
        let ids: Vec<Option<i32>> = nodes.values().map(|n| n.controller_id()).collect();
        ids[0].filter(|_| ids.iter().all(|i| *i == ids[0]))
    })
    .await;
    let lagging = *nodes.keys().find(|&&id| id != controller).unwrap();
    wait_until("the lagging voter registered", || {
        let state = nodes[&lagging].state().borrow().clone();
        state.is_active(lagging).then_some(())
    })
    .await;
    let lagging_index = nodes[&lagging].state().borrow().applied_index;
    drop(nodes.remove(&lagging));

    let leader = &nodes[&controller];
    for _ in 0..20 {
        let response = leader
            .submit(Command::AllocateProducerIds { count: 10 }, STATE_DEADLINE)
            .await
            .unwrap();
        assert!(
            matches!(response, Response::ProducerIdBlock { .. }),
            "{response:?}"
        );
    }
    let raft = leader.shared.raft().unwrap().clone();
    let purged = wait_until("the leader's log purged past the lagging voter", || {
        let metrics = raft.metrics().borrow().clone();
        metrics
            .purged
            .filter(|p| p.index > lagging_index + 5)
            .map(|p| p.index)
    })
    .await;

    let listener = wait_until("the port free", || TcpListener::bind(voters[&lagging]).ok()).await;
    let config = config(lagging, dir.path(), &voters);
    let back = ClusterNode::start_with(config, Some(listener), compaction)
        .await
        .unwrap();
    let expected = leader.state().borrow().producer_id_block_end;
    assert!(expected >= 200);
    wait_until("the lagging voter caught up", || {
        (back.state().borrow().producer_id_block_end == expected).then_some(())
    })
    .await;
    let installed = back.shared.raft().unwrap().metrics().borrow().snapshot;
    assert!(
        installed.is_some_and(|s| s.index >= purged),
        "{installed:?} < purged {purged}"
    );
    assert!(
        dir.path()
            .join(format!("meta-{lagging}/snapshot.json"))
            .exists()
    );
}
