//! Where a group's replicas should live: a pure function of the current voters,
//! the nodes that may hold replicas, and how loaded each node is.
//!
//! Rules, in priority order:
//! 1. replicas sit on distinct eligible nodes, `target` of them (never more than
//!    there are eligible nodes);
//! 2. current voters that are still eligible stay (moving data costs a snapshot);
//! 3. new replicas go where they add a region, then a zone, the group does not
//!    have yet, and among those to the node holding the fewest replicas, lowest id
//!    on ties (deterministic);
//! 4. when there are too many, the ineligible go first, then the ones on the most
//!    loaded nodes in the most crowded zone;
//! 5. when the group is complete but an eligible node outside it holds at least two
//!    replicas fewer than the most loaded member, one replica moves there (one per
//!    call, so that a new node fills up group by group, never all at once).
//!
//! A node that does not take new replicas (its disk is under its reserve) keeps the
//! replicas it holds but gets none it does not hold, by rules 3 and 5 alike; a group
//! that could only be completed on such a node stays short instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::NodeId;

/// A node that may hold replicas, with its topology labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub id: NodeId,
    /// Region label.
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// Whether the node may be given a replica it does not hold yet. False while its disk is
    /// under its reserve: a new replica would fill it (a snapshot, then every append) until
    /// openraft stopped that replica.
    pub takes_new_replicas: bool,
}

/// The voters a group should have. `load` counts the replicas each node holds now.
pub fn desired_replicas(
    current: &BTreeSet<NodeId>,
    eligible: &[Candidate],
    target: usize,
    load: &BTreeMap<NodeId, usize>,
) -> BTreeSet<NodeId> {
    let placeable = eligible
        .iter()
        .filter(|candidate| candidate.takes_new_replicas || current.contains(&candidate.id))
        .count();
    let target = target.min(placeable);
    let by_id: BTreeMap<NodeId, &Candidate> = eligible.iter().map(|node| (node.id, node)).collect();
    let mut chosen: Vec<&Candidate> = current.iter().filter_map(|id| by_id.get(id).copied()).collect();
    // Too many eligible voters: drop from the most crowded zone, most loaded node.
    while chosen.len() > target {
        let crowd =
            |candidate: &Candidate| chosen.iter().filter(|other| other.zone == candidate.zone).count();
        let Some(position) = (0..chosen.len()).max_by_key(|index| {
            let candidate = chosen[*index];
            (
                crowd(candidate),
                load.get(&candidate.id).copied().unwrap_or(0),
                candidate.id,
            )
        }) else {
            break;
        };
        chosen.remove(position);
    }
    while chosen.len() < target {
        let regions: BTreeSet<&str> = chosen.iter().map(|node| node.region.as_str()).collect();
        let zones: BTreeSet<(&str, &str)> = chosen
            .iter()
            .map(|node| (node.region.as_str(), node.zone.as_str()))
            .collect();
        let next = eligible
            .iter()
            .filter(|candidate| candidate.takes_new_replicas)
            .filter(|candidate| !chosen.iter().any(|node| node.id == candidate.id))
            .min_by_key(|candidate| {
                (
                    regions.contains(candidate.region.as_str()),
                    zones.contains(&(candidate.region.as_str(), candidate.zone.as_str())),
                    load.get(&candidate.id).copied().unwrap_or(0),
                    candidate.id,
                )
            });
        match next {
            Some(candidate) => chosen.push(candidate),
            None => break,
        }
    }
    if chosen.len() == target {
        let load_of = |candidate: &Candidate| load.get(&candidate.id).copied().unwrap_or(0);
        let busiest = (0..chosen.len()).max_by_key(|index| (load_of(chosen[*index]), chosen[*index].id));
        let idlest = eligible
            .iter()
            .filter(|candidate| candidate.takes_new_replicas)
            .filter(|candidate| !chosen.iter().any(|node| node.id == candidate.id))
            .min_by_key(|candidate| (load_of(candidate), candidate.id));
        if let (Some(busiest), Some(idlest)) = (busiest, idlest) {
            if load_of(idlest) + 1 < load_of(chosen[busiest]) {
                chosen[busiest] = idlest;
            }
        }
    }
    let desired: BTreeSet<NodeId> = chosen.iter().map(|node| node.id).collect();
    debug_assert_eq!(desired.len(), target, "replicas are on distinct nodes");
    desired
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(id: NodeId, zone: &str) -> Candidate {
        Candidate {
            id,
            region: "r".into(),
            zone: zone.into(),
            takes_new_replicas: true,
        }
    }

    fn short_of_disk(id: NodeId, zone: &str) -> Candidate {
        Candidate {
            takes_new_replicas: false,
            ..node(id, zone)
        }
    }

    #[test]
    fn a_node_short_of_disk_keeps_its_replicas_and_gets_no_new_one() {
        // Node 4 is the idlest and in a new zone, the first choice for a replacement or a move.
        let eligible = [
            node(1, "a"),
            node(2, "b"),
            node(3, "c"),
            short_of_disk(4, "d"),
            node(5, "a"),
        ];
        let load: BTreeMap<NodeId, usize> = [(1, 4), (2, 4), (3, 4), (4, 0), (5, 4)].into();
        assert_eq!(
            desired_replicas(&[1, 2].into(), &eligible, 3, &load),
            [1, 2, 3].into(),
            "a replacement goes elsewhere"
        );
        assert_eq!(
            desired_replicas(&[1, 2, 3].into(), &eligible, 3, &load),
            [1, 2, 3].into(),
            "no replica moves to it for balance"
        );
        assert_eq!(
            desired_replicas(&[1, 2, 4].into(), &eligible, 3, &load),
            [1, 2, 4].into(),
            "the replica it holds stays"
        );
        // Only it could complete the group: the group stays short.
        let few = [node(1, "a"), node(2, "b"), short_of_disk(4, "d")];
        assert_eq!(
            desired_replicas(&[1, 2].into(), &few, 3, &BTreeMap::new()),
            [1, 2].into()
        );
    }

    #[test]
    fn keeps_current_voters_when_nothing_changed() {
        let eligible = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "a")];
        let current: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(
            desired_replicas(&current, &eligible, 3, &BTreeMap::new()),
            current
        );
    }

    #[test]
    fn replaces_an_ineligible_voter_with_a_node_in_a_new_zone() {
        let eligible = [node(1, "a"), node(2, "b"), node(4, "a"), node(5, "c")];
        let current: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(
            desired_replicas(&current, &eligible, 3, &BTreeMap::new()),
            [1, 2, 5].into()
        );
    }

    #[test]
    fn prefers_the_least_loaded_node() {
        let eligible = [node(1, "a"), node(2, "a"), node(3, "a"), node(4, "a")];
        let load: BTreeMap<NodeId, usize> = [(1, 9), (2, 9), (3, 9), (4, 0)].into();
        assert_eq!(
            desired_replicas(&[1, 2].into(), &eligible, 3, &load),
            [1, 2, 4].into()
        );
    }

    #[test]
    fn moves_one_replica_to_an_idle_node() {
        let eligible = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")];
        let load: BTreeMap<NodeId, usize> = [(1, 4), (2, 4), (3, 4), (4, 0)].into();
        let desired = desired_replicas(&[1, 2, 3].into(), &eligible, 3, &load);
        assert_eq!(desired.len(), 3);
        assert!(desired.contains(&4));
        assert_eq!(desired.intersection(&[1, 2, 3].into()).count(), 2);
        // Balanced enough: nothing moves.
        let even: BTreeMap<NodeId, usize> = [(1, 3), (2, 3), (3, 3), (4, 3)].into();
        assert_eq!(
            desired_replicas(&[1, 2, 3].into(), &eligible, 3, &even),
            [1, 2, 3].into()
        );
    }

    #[test]
    fn caps_the_replica_count_at_the_eligible_node_count() {
        let eligible = [node(1, "a"), node(2, "b")];
        assert_eq!(
            desired_replicas(&[1].into(), &eligible, 3, &BTreeMap::new()),
            [1, 2].into()
        );
    }

    proptest! {
        #[test]
        fn always_distinct_eligible_and_sized(
            current in proptest::collection::btree_set(1u64..10, 0..6),
            nodes in proptest::collection::vec((0u8..3, proptest::bool::weighted(0.8)), 1..9),
            target in 1usize..6,
        ) {
            let eligible: Vec<Candidate> = nodes
                .iter()
                .enumerate()
                .map(|(index, (zone, takes_new_replicas))| Candidate {
                    takes_new_replicas: *takes_new_replicas,
                    ..node(index as NodeId + 1, &zone.to_string())
                })
                .collect();
            let desired = desired_replicas(&current, &eligible, target, &BTreeMap::new());
            let placeable = eligible
                .iter()
                .filter(|node| node.takes_new_replicas || current.contains(&node.id))
                .count();
            prop_assert_eq!(desired.len(), target.min(placeable));
            for id in &desired {
                let Some(candidate) = eligible.iter().find(|node| node.id == *id) else {
                    return Err(TestCaseError::fail(format!("{id} is not eligible")));
                };
                prop_assert!(
                    candidate.takes_new_replicas || current.contains(id),
                    "a new replica on node {} which takes none",
                    id
                );
            }
            // Still-eligible current voters are kept when the target allows it,
            // except at most one moved for balance.
            let kept = current.iter().filter(|id| eligible.iter().any(|node| node.id == **id)).count();
            if kept <= target {
                let dropped = current
                    .iter()
                    .filter(|id| eligible.iter().any(|node| node.id == **id))
                    .filter(|id| !desired.contains(id))
                    .count();
                prop_assert!(dropped <= 1);
            }
        }

        #[test]
        fn spreads_over_zones_when_it_can(target in 1usize..4) {
            let eligible = [node(1, "a"), node(2, "a"), node(3, "b"), node(4, "b"), node(5, "c")];
            let desired = desired_replicas(&BTreeSet::new(), &eligible, target, &BTreeMap::new());
            let zones: BTreeSet<String> = desired
                .iter()
                .map(|id| eligible.iter().find(|node| node.id == *id).unwrap().zone.clone())
                .collect();
            prop_assert_eq!(zones.len(), target);
        }
    }
}
