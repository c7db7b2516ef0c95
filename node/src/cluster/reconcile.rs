//! Background loops of a node.
//!
//! - **map refresh** (every node): keeps the node's view of the cluster map fresh,
//!   from its own metadata replica or from one that has it.
//! - **reconciler** (the metadata leader only): probes every node, marks health,
//!   moves replicas so each group has the placement's voters (one membership step
//!   per group at a time, learners caught up first), records the result in the
//!   map, finishes node removals and spreads leaders.
//! - **janitor** (every node): drops replicas of groups whose committed membership
//!   and map no longer include this node.
//! - **disk watch** (every node): measures the data directory's free space, which
//!   decides whether this node's leaders accept writes (`storage::disk`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::internal::{Request, Response};
use super::map::{MetaCommand, NodeState, METADATA_GROUP};
use super::placement::{desired_replicas, Candidate};
use super::{Cluster, NodeHealth};
use crate::raft::NodeId;
use crate::storage::disk::DISK_REFRESH_INTERVAL;
use crate::storage::keys::GroupId;

/// The metadata group's voters: up to this many nodes.
const METADATA_REPLICAS: usize = 5;
/// Groups whose replicas move at once (each may send a snapshot).
const MOVES_PER_PASS: usize = 2;
/// A replica younger than this is never dropped by the janitor (it may be a
/// learner that has not received its membership yet).
pub(crate) const JANITOR_GRACE: Duration = Duration::from_secs(30);

/// A ticker for a background loop: a slow round delays the next tick instead of bunching ticks.
fn delayed_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The cluster a background loop works for, unless it was dropped or is stopping: the loop ends then.
fn still_running(cluster: &std::sync::Weak<Cluster>) -> Option<Arc<Cluster>> {
    let cluster = cluster.upgrade()?;
    (!cluster.is_stopping()).then_some(cluster)
}

impl Cluster {
    /// Starts the background loops; they end when the node stops.
    pub fn spawn_background(self: &Arc<Self>) {
        self.spawn_disk_watch();
        let cluster = Arc::downgrade(self);
        let interval = self.config.reconcile_interval;
        tokio::spawn(async move {
            let mut ticker = delayed_ticker(interval);
            let mut moves: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                ticker.tick().await;
                let Some(cluster) = still_running(&cluster) else {
                    return;
                };
                cluster.refresh_map().await;
                cluster.update_metrics();
                cluster.publish_address().await;
                cluster.janitor().await;
                if moves.as_ref().is_none_or(|task| task.is_finished()) {
                    let worker = cluster.clone();
                    moves = Some(tokio::spawn(async move { worker.reconcile().await }));
                }
            }
        });
    }

    /// Measures the data directory's free space every [`DISK_REFRESH_INTERVAL`], off the async
    /// workers, so that writes refused under the reserve resume once space is freed.
    fn spawn_disk_watch(self: &Arc<Self>) {
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = delayed_ticker(DISK_REFRESH_INTERVAL);
            loop {
                ticker.tick().await;
                let Some(cluster) = still_running(&cluster) else {
                    return;
                };
                let storage = cluster.storage.clone();
                match tokio::task::spawn_blocking(move || storage.disk().refresh()).await {
                    Ok(Ok(available)) => {
                        cluster
                            .metrics
                            .disk_free_bytes
                            .set(available.min(i64::MAX as u64) as i64);
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "cannot measure the free disk space"),
                    Err(_) => return,
                }
            }
        });
    }

    async fn refresh_map(&self) {
        if self.replica(METADATA_GROUP).is_some() {
            let applied = self.applied_map.read().clone();
            if applied.is_bootstrapped() {
                self.update_view(&applied);
                return;
            }
        }
        let mut addresses: Vec<String> = Vec::new();
        {
            let view = self.view.read();
            if let Some(info) = view.groups.get(&METADATA_GROUP) {
                addresses.extend(
                    info.replicas
                        .iter()
                        .filter_map(|node| view.address_of(*node).map(str::to_string)),
                );
            }
        }
        if let Some(join) = &self.config.join {
            addresses.push(join.clone());
        }
        for address in addresses {
            if address == self.config.advertise_address {
                continue;
            }
            if let Ok(Response::Map(map)) = self
                .call(&address, &Request::GetMap, Duration::from_secs(2))
                .await
            {
                if map.is_bootstrapped() {
                    self.update_view(&map);
                    return;
                }
            }
        }
    }

    /// A node restarted on another address records the new one in the map, which
    /// every node's raft network then uses.
    async fn publish_address(&self) {
        let recorded = {
            let view = self.view.read();
            view.address_of(self.node_id).map(str::to_string)
        };
        let Some(recorded) = recorded else {
            return;
        };
        if recorded == self.config.advertise_address {
            return;
        }
        tracing::info!(old = %recorded, new = %self.config.advertise_address, "recording this node's new address");
        let _ = self
            .meta_write(MetaCommand::SetNodeAddress {
                id: self.node_id,
                address: self.config.advertise_address.clone(),
            })
            .await;
    }

    fn is_metadata_leader(&self) -> bool {
        self.replica(METADATA_GROUP)
            .is_some_and(|replica| replica.raft.metrics().borrow().state == openraft::ServerState::Leader)
    }

    async fn reconcile(self: Arc<Self>) {
        if !self.is_metadata_leader() {
            *self.leader_since.lock() = None;
            return;
        }
        let leader_since = *self.leader_since.lock().get_or_insert_with(Instant::now);
        let map = self.applied_map.read().clone();
        if !map.is_bootstrapped() {
            return;
        }
        let probes = self.probe_all().await;
        let now = Instant::now();
        let mut alive: BTreeSet<NodeId> = BTreeSet::new();
        {
            let mut health = self.health.lock();
            for (node, answer) in &probes {
                let entry = health.entry(*node).or_insert(NodeHealth {
                    last_seen: None,
                    report: None,
                });
                if let Ok(report) = answer {
                    entry.last_seen = Some(now);
                    entry.report = Some(report.clone());
                }
                let recently_seen = match entry.last_seen {
                    Some(seen) => now.duration_since(seen) < self.config.dead_node_timeout,
                    // Never seen since this node became leader: give it the same grace.
                    None => now.duration_since(leader_since) < self.config.dead_node_timeout,
                };
                if recently_seen {
                    alive.insert(*node);
                }
            }
        }
        self.metrics.cluster_nodes_alive.set(alive.len() as i64);
        // Current voters and leader of every group, from the probes.
        let mut voters_of: BTreeMap<GroupId, (NodeId, BTreeSet<NodeId>)> = BTreeMap::new();
        for (node, answer) in &probes {
            if let Ok(report) = answer {
                for group in &report.groups {
                    if group.role == "leader" {
                        voters_of.insert(group.group, (*node, group.voters.iter().copied().collect()));
                    }
                }
            }
        }
        // Replicas their group's leader no longer counts as members (they missed
        // the last membership entry, or their node was down through it) go away.
        let mut members_of: BTreeMap<GroupId, BTreeSet<NodeId>> = BTreeMap::new();
        for report in probes.values().flatten() {
            for group in report.groups.iter().filter(|group| group.role == "leader") {
                let members = group
                    .voters
                    .iter()
                    .chain(group.learners.iter())
                    .copied()
                    .collect();
                members_of.insert(group.group, members);
            }
        }
        for (node, answer) in &probes {
            let Ok(report) = answer else {
                continue;
            };
            for group in &report.groups {
                let stale = members_of
                    .get(&group.group)
                    .is_some_and(|members| !members.contains(node));
                if !stale || group.role == "leader" {
                    continue;
                }
                let Some(address) = map.address_of(*node) else {
                    continue;
                };
                let request = Request::DropReplica { group: group.group };
                let answer = if *node == self.node_id {
                    self.handle_internal(request).await
                } else {
                    self.call(address, &request, Duration::from_secs(10)).await
                };
                if answer.is_ok() {
                    tracing::info!(group = group.group, node, "dropped a stale replica");
                }
            }
        }
        // Eligible: up, and reachable within the dead-node timeout. A node that is
        // merely slow to answer one probe keeps its replicas. One whose last report says its
        // disk is under its reserve gets no new replica.
        let short_of_disk: BTreeSet<NodeId> = {
            let health = self.health.lock();
            alive
                .iter()
                .filter(|node| {
                    health
                        .get(node)
                        .and_then(|entry| entry.report.as_ref())
                        .is_some_and(|report| report.disk_refusal.is_some())
                })
                .copied()
                .collect()
        };
        if !short_of_disk.is_empty() {
            tracing::debug!(
                ?short_of_disk,
                "nodes under their disk reserve get no new replica"
            );
        }
        let eligible: Vec<Candidate> = map
            .up_nodes()
            .filter(|node| alive.contains(&node.id))
            .map(|node| Candidate {
                id: node.id,
                region: node.region.clone(),
                zone: node.zone.clone(),
                takes_new_replicas: !short_of_disk.contains(&node.id),
            })
            .collect();
        if eligible.is_empty() {
            return;
        }
        // Data replicas per node; the metadata group has its own target.
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (group, (_, voters)) in &voters_of {
            if *group == METADATA_GROUP {
                continue;
            }
            for voter in voters {
                *load.entry(*voter).or_default() += 1;
            }
        }
        let mut moves = 0;
        let mut stable = true;
        for (group, info) in &map.groups {
            let Some((leader, current)) = voters_of.get(group).cloned() else {
                stable = false;
                continue;
            };
            let target = if *group == METADATA_GROUP {
                METADATA_REPLICAS
            } else {
                self.config.replication_factor
            }
            .max(1);
            let desired = desired_replicas(&current, &eligible, target, &load);
            if desired.is_empty() || desired == current {
                if info.replicas != current {
                    let _ = self
                        .meta_write(MetaCommand::SetGroupReplicas {
                            group: *group,
                            replicas: current.clone(),
                        })
                        .await;
                }
                continue;
            }
            stable = false;
            if moves >= MOVES_PER_PASS {
                continue;
            }
            moves += 1;
            let voters: BTreeMap<NodeId, String> = desired
                .iter()
                .filter_map(|node| map.address_of(*node).map(|address| (*node, address.to_string())))
                .collect();
            let Some(leader_address) = map.address_of(leader).map(str::to_string) else {
                continue;
            };
            if !desired.contains(&leader) {
                // Hand leadership to a voter that stays before removing the
                // leader: a leader that removes itself leaves the group without
                // one until an election timeout passes.
                let heir = desired
                    .intersection(&current)
                    .find(|node| alive.contains(node))
                    .and_then(|node| map.address_of(*node).map(|address| (*node, address.to_string())));
                if let Some((heir, address)) = heir {
                    tracing::info!(
                        group,
                        from = leader,
                        to = heir,
                        "moving leadership off a leaving replica"
                    );
                    let _ = self
                        .call(
                            &address,
                            &Request::Campaign { group: *group },
                            Duration::from_secs(5),
                        )
                        .await;
                    continue;
                }
            }
            tracing::info!(group, ?current, ?desired, "moving replicas");
            let request = Request::ChangeReplicas {
                group: *group,
                voters,
            };
            let answer = if leader == self.node_id {
                self.handle_internal(request).await
            } else {
                self.call(&leader_address, &request, Duration::from_secs(180))
                    .await
            };
            match answer {
                Ok(_) => {
                    let _ = self
                        .meta_write(MetaCommand::SetGroupReplicas {
                            group: *group,
                            replicas: desired.clone(),
                        })
                        .await;
                    if *group == METADATA_GROUP {
                        continue;
                    }
                    for node in desired.difference(&current) {
                        *load.entry(*node).or_default() += 1;
                    }
                    for node in current.difference(&desired) {
                        if let Some(count) = load.get_mut(node) {
                            *count = count.saturating_sub(1);
                        }
                    }
                }
                Err(failure) => tracing::warn!(group, %failure, "replica move failed; will retry"),
            }
        }
        // A leaving node that holds no voter anywhere is removed.
        for node in map.nodes.values().filter(|node| node.state == NodeState::Leaving) {
            let holds = voters_of.values().any(|(_, voters)| voters.contains(&node.id))
                || map.groups.values().any(|info| info.replicas.contains(&node.id));
            if !holds && stable {
                let _ = self
                    .meta_write(MetaCommand::SetNodeState {
                        id: node.id,
                        state: NodeState::Removed,
                    })
                    .await;
            }
        }
        if stable {
            self.spread_leaders(&voters_of, &alive, &map).await;
        }
    }

    /// Moves one leadership from the node leading the most data groups to a voter
    /// leading the fewest, when they differ by more than one.
    async fn spread_leaders(
        &self,
        voters_of: &BTreeMap<GroupId, (NodeId, BTreeSet<NodeId>)>,
        alive: &BTreeSet<NodeId>,
        map: &super::map::ClusterMap,
    ) {
        let mut leading: BTreeMap<NodeId, Vec<GroupId>> = BTreeMap::new();
        for node in map.up_nodes().filter(|node| alive.contains(&node.id)) {
            leading.insert(node.id, Vec::new());
        }
        for (group, (leader, _)) in voters_of.iter().filter(|(group, _)| **group != METADATA_GROUP) {
            leading.entry(*leader).or_default().push(*group);
        }
        let Some((busiest, groups)) = leading.iter().max_by_key(|(node, groups)| (groups.len(), **node))
        else {
            return;
        };
        for group in groups {
            let Some((_, voters)) = voters_of.get(group) else {
                continue;
            };
            let idle = voters
                .iter()
                .filter(|voter| *voter != busiest && alive.contains(voter))
                .min_by_key(|voter| (leading.get(voter).map(Vec::len).unwrap_or(0), **voter));
            let Some(idle) = idle else {
                continue;
            };
            if leading.get(idle).map(Vec::len).unwrap_or(0) + 1 >= groups.len() {
                continue;
            }
            let Some(address) = map.address_of(*idle) else {
                continue;
            };
            tracing::info!(group, from = busiest, to = idle, "moving leadership");
            let _ = self
                .call(
                    address,
                    &Request::Campaign { group: *group },
                    Duration::from_secs(5),
                )
                .await;
            return;
        }
    }

    async fn janitor(&self) {
        let view = self.view();
        if !view.is_bootstrapped() {
            return;
        }
        for replica in self.replicas() {
            if replica.created.elapsed() < JANITOR_GRACE {
                continue;
            }
            let in_map = view
                .groups
                .get(&replica.group)
                .is_some_and(|info| info.replicas.contains(&self.node_id));
            if in_map {
                continue;
            }
            let metrics = replica.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let initialized = metrics.membership_config.log_id().is_some();
            let member = membership.voter_ids().any(|node| node == self.node_id)
                || membership.learner_ids().any(|node| node == self.node_id);
            if initialized && !member {
                if let Err(error) = self.drop_replica(replica.group).await {
                    tracing::warn!(group = replica.group, %error, "dropping a replica failed");
                }
            }
        }
    }
}
