//! The cluster map: what the metadata group replicates.
//!
//! Nodes (id, address, region, zone, state), hash slots -> groups, and groups ->
//! replicas. Every change is a [`MetaCommand`] applied in log order by every replica
//! of the metadata group, so [`ClusterMap::apply`] must be deterministic: no clocks,
//! no randomness, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;
use crate::storage::keys::GroupId;

/// Number of hash slots. Fixed for the life of a cluster: a series' slot never
/// changes, only the group a slot maps to.
pub const SLOT_COUNT: u32 = 4096;

/// The metadata group's id. Data groups are numbered from 1.
pub const METADATA_GROUP: GroupId = 0;

/// The hash slot of a series: the top 12 bits of its routing hash (the hash of its
/// label set, `kiln_model::labels::routing_hash`).
pub fn slot_of(routing_hash: u64) -> u32 {
    let slot = (routing_hash >> (64 - SLOT_COUNT.trailing_zeros())) as u32;
    debug_assert!(slot < SLOT_COUNT);
    slot
}

/// Life cycle of a node in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Serving; may hold replicas.
    Up,
    /// `remove-node` was asked: replicas move away, then it becomes `Removed`.
    Leaving,
    /// Holds no replica and is out of the cluster. Its id is never reused.
    Removed,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            NodeState::Up => "up",
            NodeState::Leaving => "leaving",
            NodeState::Removed => "removed",
        })
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// `host:port` of its gRPC endpoint.
    pub address: String,
    /// Region label ("" when not set).
    pub region: String,
    /// Zone label ("" when not set).
    pub zone: String,
    /// Life cycle state.
    pub state: NodeState,
}

/// One shard group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The voters of the group's raft membership, as last recorded by the
    /// reconciler after a completed membership change.
    pub replicas: BTreeSet<NodeId>,
}

/// The whole cluster map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Bumped by every applied change.
    pub version: u64,
    /// Every node that ever joined, removed ones included (ids are never reused).
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Slot -> group, `SLOT_COUNT` entries once bootstrapped.
    pub slots: Vec<GroupId>,
    /// Groups, the metadata group included.
    pub groups: BTreeMap<GroupId, GroupInfo>,
    /// The id the next joining node gets.
    pub next_node_id: NodeId,
}

/// A change to the cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// First entry of a new cluster: the first node, and `data_groups` groups with
    /// slots spread evenly over them, all on the first node.
    Bootstrap {
        /// The first node (its id is 1).
        first_node: NodeInfo,
        /// Number of data groups.
        data_groups: u32,
    },
    /// A node joins. Joining again with the same address returns the same id.
    AddNode {
        /// gRPC address.
        address: String,
        /// Region label.
        region: String,
        /// Zone label.
        zone: String,
    },
    /// A node's state changes (`remove-node`, end of a removal).
    SetNodeState {
        /// Which node.
        id: NodeId,
        /// New state.
        state: NodeState,
    },
    /// A node's address changed (it restarted on another port).
    SetNodeAddress {
        /// Which node.
        id: NodeId,
        /// New address.
        address: String,
    },
    /// Records a group's voters after a completed membership change.
    SetGroupReplicas {
        /// Which group.
        group: GroupId,
        /// Its voters.
        replicas: BTreeSet<NodeId>,
    },
}

/// The answer to a [`MetaCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied.
    Done,
    /// `AddNode`: the node's id.
    NodeId(NodeId),
    /// Not applied, and why (the map is unchanged).
    Rejected(String),
}

impl ClusterMap {
    /// Whether `Bootstrap` has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The group a series belongs to, by its routing hash.
    pub fn group_of(&self, routing_hash: u64) -> Option<GroupId> {
        self.slots.get(slot_of(routing_hash) as usize).copied()
    }

    /// Data groups, in id order.
    pub fn data_groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups
            .keys()
            .copied()
            .filter(|group| *group != METADATA_GROUP)
    }

    /// Nodes that may hold replicas.
    pub fn up_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|node| node.state == NodeState::Up)
    }

    /// A node's address.
    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|info| info.address.as_str())
    }

    /// Applies one command. Deterministic; a rejected command leaves the map as it was.
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        let response = match command {
            MetaCommand::Bootstrap {
                first_node,
                data_groups,
            } => {
                if self.is_bootstrapped() {
                    return MetaResponse::Rejected("the cluster is already bootstrapped".into());
                }
                if *data_groups == 0 {
                    return MetaResponse::Rejected("a cluster needs at least one data group".into());
                }
                let first = first_node.id;
                self.nodes.insert(first, first_node.clone());
                self.next_node_id = first + 1;
                let only_first: BTreeSet<NodeId> = [first].into();
                self.groups.insert(
                    METADATA_GROUP,
                    GroupInfo {
                        replicas: only_first.clone(),
                    },
                );
                for group in 1..=*data_groups {
                    self.groups.insert(
                        group,
                        GroupInfo {
                            replicas: only_first.clone(),
                        },
                    );
                }
                self.slots = (0..SLOT_COUNT).map(|slot| 1 + slot % data_groups).collect();
                MetaResponse::Done
            }
            MetaCommand::AddNode {
                address,
                region,
                zone,
            } => {
                if let Some(existing) = self
                    .nodes
                    .values()
                    .find(|node| &node.address == address && node.state != NodeState::Removed)
                {
                    return MetaResponse::NodeId(existing.id);
                }
                let id = self.next_node_id.max(1);
                self.next_node_id = id + 1;
                self.nodes.insert(
                    id,
                    NodeInfo {
                        id,
                        address: address.clone(),
                        region: region.clone(),
                        zone: zone.clone(),
                        state: NodeState::Up,
                    },
                );
                MetaResponse::NodeId(id)
            }
            MetaCommand::SetNodeState { id, state } => {
                let Some(node) = self.nodes.get_mut(id) else {
                    return MetaResponse::Rejected(format!("no node {id}"));
                };
                if node.state == NodeState::Removed && *state != NodeState::Removed {
                    return MetaResponse::Rejected(format!("node {id} was removed; it cannot come back"));
                }
                node.state = *state;
                MetaResponse::Done
            }
            MetaCommand::SetNodeAddress { id, address } => {
                let Some(node) = self.nodes.get_mut(id) else {
                    return MetaResponse::Rejected(format!("no node {id}"));
                };
                node.address = address.clone();
                MetaResponse::Done
            }
            MetaCommand::SetGroupReplicas { group, replicas } => {
                let Some(info) = self.groups.get_mut(group) else {
                    return MetaResponse::Rejected(format!("no group {group}"));
                };
                info.replicas = replicas.clone();
                MetaResponse::Done
            }
        };
        self.version += 1;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, address: &str) -> NodeInfo {
        NodeInfo {
            id,
            address: address.into(),
            region: String::new(),
            zone: String::new(),
            state: NodeState::Up,
        }
    }

    #[test]
    fn bootstrap_spreads_slots_evenly_over_data_groups() {
        let mut map = ClusterMap::default();
        let answer = map.apply(&MetaCommand::Bootstrap {
            first_node: node(1, "a:1"),
            data_groups: 8,
        });
        assert_eq!(answer, MetaResponse::Done);
        assert_eq!(map.slots.len(), SLOT_COUNT as usize);
        for group in 1..=8 {
            let owned = map.slots.iter().filter(|owner| **owner == group).count();
            assert_eq!(owned, SLOT_COUNT as usize / 8);
        }
        assert_eq!(map.data_groups().count(), 8);
        assert!(matches!(
            map.apply(&MetaCommand::Bootstrap {
                first_node: node(1, "a:1"),
                data_groups: 8
            }),
            MetaResponse::Rejected(_)
        ));
    }

    #[test]
    fn add_node_is_idempotent_by_address_and_never_reuses_ids() {
        let mut map = ClusterMap::default();
        map.apply(&MetaCommand::Bootstrap {
            first_node: node(1, "a:1"),
            data_groups: 2,
        });
        let add = |map: &mut ClusterMap, address: &str| {
            map.apply(&MetaCommand::AddNode {
                address: address.into(),
                region: String::new(),
                zone: String::new(),
            })
        };
        assert_eq!(add(&mut map, "b:1"), MetaResponse::NodeId(2));
        assert_eq!(add(&mut map, "b:1"), MetaResponse::NodeId(2));
        map.apply(&MetaCommand::SetNodeState {
            id: 2,
            state: NodeState::Removed,
        });
        assert_eq!(add(&mut map, "b:1"), MetaResponse::NodeId(3));
    }

    #[test]
    fn slots_cover_the_whole_hash_space() {
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(u64::MAX), SLOT_COUNT - 1);
    }
}
