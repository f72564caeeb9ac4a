//! Replica placement for new topics and partitions: pure, so the controller and tests compute
//! the same assignment from the same brokers.
//!
//! Kafka's shape (`StripedReplicaPlacer` / the rack-aware `AdminUtils` assignment): the unfenced
//! brokers in a rack-alternated order (one broker of each rack in turn), partition `p` led by the
//! broker at `(start + p) mod n`, its followers taken from the brokers after the leader at a shift
//! that changes every `n` partitions, skipping brokers whose rack already holds a replica of the
//! partition until every rack holds one. `start` and the shift come from a hash of the topic name,
//! so topics created on the same brokers do not all put their first leader on the same broker.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::state::BrokerInfo;

/// Replicas of `count` new partitions, partitions `first..first + count` of `topic`, each of
/// `rf` distinct unfenced brokers (on distinct racks where the racks allow), preferred leader
/// first.
pub fn place(
    brokers: &BTreeMap<i32, BrokerInfo>,
    topic: &str,
    first: i32,
    count: i32,
    rf: i16,
) -> Result<Vec<Vec<i32>>> {
    if count <= 0 || first < 0 || first.checked_add(count).is_none() {
        return Err(Error::InvalidPartitions {
            reason: format!("cannot place {count} partitions from partition {first}"),
        });
    }
    let ring = rack_alternated(brokers);
    let n = ring.len();
    let replication_factor = usize::try_from(rf).unwrap_or(0);
    if replication_factor == 0 || replication_factor > n {
        return Err(Error::InvalidReplicationFactor {
            replication_factor: rf,
            brokers: n,
        });
    }
    let racks: BTreeSet<&str> = ring.iter().map(|b| rack_of(b)).collect();
    let hash = crc32c::crc32c(topic.as_bytes()) as usize;
    let start = hash % n;
    let shift_start = (hash / n) % n;
    let assignments = (first..first + count)
        .map(|partition| {
            let p = partition as usize;
            let leader = (start + p) % n;
            // Followers: the other brokers in ring order from the leader, rotated by a shift that
            // changes once per round of n partitions (so followers of one leader vary).
            let shift = if n > 1 {
                (shift_start + p / n) % (n - 1)
            } else {
                0
            };
            let followers: Vec<&BrokerInfo> = (0..n.saturating_sub(1))
                .map(|j| ring[(leader + 1 + (shift + j) % (n - 1)) % n])
                .collect();
            pick_replicas(ring[leader], &followers, replication_factor, racks.len())
        })
        .collect();
    Ok(assignments)
}

/// The leader, then followers in candidate order, preferring a rack not yet used until every
/// rack holds a replica.
fn pick_replicas(
    leader: &BrokerInfo,
    candidates: &[&BrokerInfo],
    rf: usize,
    rack_count: usize,
) -> Vec<i32> {
    let mut replicas = vec![leader.id];
    let mut racks_used = BTreeSet::from([rack_of(leader)]);
    while replicas.len() < rf {
        let all_racks_used = racks_used.len() >= rack_count;
        let next = candidates.iter().find(|b| {
            !replicas.contains(&b.id) && (all_racks_used || !racks_used.contains(rack_of(b)))
        });
        // Some rack is unused and has a broker, none of which is chosen yet; or every rack is
        // used and fewer than rf <= n brokers are chosen: a candidate always exists.
        let next = next.expect("rf <= brokers leaves a candidate");
        racks_used.insert(rack_of(next));
        replicas.push(next.id);
    }
    replicas
}

/// Brokers without a rack share one unnamed rack.
fn rack_of(broker: &BrokerInfo) -> &str {
    broker.rack.as_deref().unwrap_or("")
}

/// Unfenced brokers, one of each rack in turn (racks by name, brokers by id within a rack):
/// with racks a: [1, 2], b: [3], c: [4, 5] it is [1, 3, 4, 2, 5]. Without racks: by id.
fn rack_alternated(brokers: &BTreeMap<i32, BrokerInfo>) -> Vec<&BrokerInfo> {
    let mut by_rack: BTreeMap<&str, Vec<&BrokerInfo>> = BTreeMap::new();
    for broker in brokers.values().filter(|b| !b.fenced) {
        by_rack.entry(rack_of(broker)).or_default().push(broker);
    }
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|i| {
            by_rack
                .values()
                .filter_map(move |rack| rack.get(i).copied())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn brokers(racks: &[(i32, Option<&str>)]) -> BTreeMap<i32, BrokerInfo> {
        racks
            .iter()
            .map(|&(id, rack)| {
                let info = BrokerInfo {
                    id,
                    host: "h".into(),
                    port: 1,
                    rack: rack.map(str::to_owned),
                    listeners: Vec::new(),
                    fenced: false,
                };
                (id, info)
            })
            .collect()
    }

    fn distinct(replicas: &[i32]) -> bool {
        replicas.iter().collect::<BTreeSet<_>>().len() == replicas.len()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        let all = brokers(&[(1, None), (2, None), (3, None), (4, None)]);
        let placed = place(&all, "orders", 0, 12, 3).unwrap();
        assert_eq!(placed.len(), 12);
        let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
        let mut replicas_per_broker: BTreeMap<i32, usize> = BTreeMap::new();
        for replicas in &placed {
            assert_eq!(replicas.len(), 3);
            assert!(distinct(replicas), "{replicas:?}");
            *leaders.entry(replicas[0]).or_default() += 1;
            for r in replicas {
                *replicas_per_broker.entry(*r).or_default() += 1;
            }
        }
        assert_eq!(
            leaders.values().copied().collect::<Vec<_>>(),
            vec![3; 4],
            "{leaders:?}"
        );
        assert_eq!(
            replicas_per_broker.values().copied().collect::<Vec<_>>(),
            vec![9; 4]
        );
        // Deterministic, and the same whether placed at once or partition by partition.
        assert_eq!(place(&all, "orders", 0, 12, 3).unwrap(), placed);
        let one_by_one: Vec<Vec<i32>> = (0..12)
            .map(|p| place(&all, "orders", p, 1, 3).unwrap().remove(0))
            .collect();
        assert_eq!(one_by_one, placed);
    }

    #[test]
    fn racks_are_spread() {
        let all = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
            (5, Some("c")),
            (6, Some("c")),
        ]);
        for topic in ["t", "orders", "payments"] {
            for replicas in place(&all, topic, 0, 24, 3).unwrap() {
                let racks: BTreeSet<_> = replicas.iter().map(|r| all[r].rack.clone()).collect();
                assert_eq!(racks.len(), 3, "{topic}: {replicas:?}");
                assert!(distinct(&replicas));
            }
        }
        // Two racks, rf 3: both racks used, the third replica anywhere else.
        let two = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
        ]);
        for replicas in place(&two, "t", 0, 8, 3).unwrap() {
            let racks: BTreeSet<_> = replicas.iter().map(|r| two[r].rack.clone()).collect();
            assert_eq!(racks.len(), 2, "{replicas:?}");
            assert!(distinct(&replicas));
        }
    }

    #[test]
    fn fenced_brokers_get_nothing() {
        let mut all = brokers(&[(1, None), (2, None), (3, None)]);
        all.get_mut(&2).unwrap().fenced = true;
        for replicas in place(&all, "t", 0, 6, 2).unwrap() {
            assert!(!replicas.contains(&2), "{replicas:?}");
        }
        assert!(matches!(
            place(&all, "t", 0, 1, 3),
            Err(Error::InvalidReplicationFactor {
                replication_factor: 3,
                brokers: 2
            })
        ));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let all = brokers(&[(1, None), (2, None)]);
        assert!(matches!(
            place(&all, "t", 0, 1, 3),
            Err(Error::InvalidReplicationFactor { .. })
        ));
        assert!(matches!(
            place(&all, "t", 0, 1, 0),
            Err(Error::InvalidReplicationFactor { .. })
        ));
        assert!(matches!(
            place(&all, "t", 0, 1, -1),
            Err(Error::InvalidReplicationFactor { .. })
        ));
        assert!(matches!(
            place(&all, "t", 0, 0, 1),
            Err(Error::InvalidPartitions { .. })
        ));
        assert!(matches!(
            place(&all, "t", -1, 1, 1),
            Err(Error::InvalidPartitions { .. })
        ));
        assert!(matches!(
            place(&all, "t", i32::MAX, 1, 1),
            Err(Error::InvalidPartitions { .. })
        ));
        assert!(matches!(
            place(&BTreeMap::new(), "t", 0, 1, 1),
            Err(Error::InvalidReplicationFactor { .. })
        ));
        assert_eq!(place(&all, "t", 0, 1, 2).unwrap()[0].len(), 2);
    }
}
