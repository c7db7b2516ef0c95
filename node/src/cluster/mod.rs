//! The cluster: which groups this node hosts, how commands reach a group's
//! leader, and the loops that keep replicas where the placement wants them.
//!
//! - [`map`]: the cluster map the metadata group replicates;
//! - [`placement`]: where a group's replicas should be (pure);
//! - [`internal`]: node-to-node requests;
//! - [`reconcile`]: the metadata leader's loop (probes, replica moves, leader
//!   spreading, removals) and every node's janitor;
//! - [`fanout`]: queries sent to every group and merged;
//! - [`service`]: the `ClusterService` gRPC API.
//!
//! Invariants:
//! - a write is acknowledged only after every group it touches committed its part
//!   through raft (quorum, synced logs) and applied it;
//! - a query answer is built only from replicas that proved leadership (ReadIndex)
//!   after the query arrived; a group that cannot answer fails the query unless
//!   the caller allowed partial answers, and then it is named in `Coverage`.

pub mod fanout;
pub mod internal;
pub mod map;
pub mod placement;
pub mod reconcile;
pub mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::kiln::v1 as api;
use kiln_proto::kiln::v1::cluster_service_client::ClusterServiceClient;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::internal::{Failure, GroupReport, ProbeReport, Request, Response};
use self::map::{ClusterMap, MetaCommand, MetaResponse, NodeInfo, NodeState, METADATA_GROUP};
use crate::error::NodeError;
use crate::ingest::{prepare_write, AcceptedWrite, OldestKept};
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::raft::log_store::LogStore;
use crate::raft::network::{
    AddressBook, FaultInjector, GroupNetworkFactory, PeerChannels, PeerDiskReports, RaftRegistry,
};
use crate::raft::state_machine::{GroupStateMachine, MachineKind};
use crate::raft::{decode, encode, Command, CommandResponse, KilnRaft, NodeId};
use crate::storage::keys::{self, GroupId};
use crate::storage::writer::{Expiry, WriteOutcome, Writer};
use crate::storage::Storage;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `host:port` other nodes and clients reach this node at.
    pub advertise_address: String,
    /// Address of any node of an existing cluster to join; `None` bootstraps a new
    /// cluster on first start. Ignored once the node has an id.
    pub join: Option<String>,
    /// Region label.
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// Replicas per data group (capped by the number of nodes).
    pub replication_factor: usize,
    /// Data groups created at bootstrap.
    pub data_groups: u32,
    /// A node unreachable this long loses its replicas to other nodes.
    pub dead_node_timeout: Duration,
    /// Raft heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Raft election timeout (lower bound; the upper is twice it).
    pub election_timeout: Duration,
    /// Log entries since the last snapshot that trigger a new one.
    pub snapshot_after_logs: u64,
    /// How often the reconciler and janitor run.
    pub reconcile_interval: Duration,
    /// How long one group may take to answer a query.
    pub group_query_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults for a node reachable at `advertise_address`.
    pub fn new(advertise_address: String) -> ClusterConfig {
        ClusterConfig {
            advertise_address,
            join: None,
            region: String::new(),
            zone: String::new(),
            replication_factor: 3,
            data_groups: 8,
            dead_node_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(300),
            election_timeout: Duration::from_millis(1500),
            snapshot_after_logs: 5_000,
            reconcile_interval: Duration::from_millis(1000),
            group_query_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct NodeIdentity {
    id: NodeId,
    bootstrapper: bool,
}

/// One replica of one group on this node.
pub struct GroupReplica {
    /// Which group.
    pub group: GroupId,
    /// Its raft.
    pub raft: KilnRaft,
    /// Reads of the group's data (data groups only).
    pub engine: Option<QueryEngine>,
    writer: Option<Arc<Writer>>,
    log: LogStore,
    machine: GroupStateMachine,
    created: Instant,
}

/// This node's own view of its replicas, for `/healthz` (liveness) and `/readyz` (readiness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The node is shutting down; nothing else is reported then.
    pub stopping: bool,
    /// Groups whose raft on this node stopped while the node runs (a storage failure); they stay
    /// stopped until the node restarts.
    pub stopped_groups: Vec<GroupId>,
    /// Running groups that know no leader yet (start-up, or an election under way).
    pub groups_without_leader: Vec<GroupId>,
}

impl GroupReplica {
    /// Whether this replica's raft stopped while the node runs: openraft stops a group whose storage
    /// failed (a full disk, an I/O error), and only a restart of the node brings it back.
    pub fn stopped(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Shutdown
    }

    /// The voters of this replica's group, as its raft's current membership has them.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}

/// Why a write cannot go through `node`'s replica of `group` (see [`GroupReplica::stopped`]).
fn stopped_replica_message(group: GroupId, node: NodeId) -> String {
    format!(
        "group {group}: node {node}'s replica stopped after a storage failure (a full disk or an I/O \
         error; that node's log says which); restart that node once the cause is fixed"
    )
}

/// Health of a node as the metadata leader sees it.
#[derive(Debug, Clone)]
struct NodeHealth {
    last_seen: Option<Instant>,
    report: Option<ProbeReport>,
}

/// This node's part of the cluster.
pub struct Cluster {
    node_id: NodeId,
    config: ClusterConfig,
    storage: Storage,
    metrics: Arc<Metrics>,
    data_dir: PathBuf,
    write_queue_depth: usize,
    /// How long samples are kept: writes of older profiles are rejected.
    retention: Duration,
    /// Shared peer connections (raft and internal calls).
    pub peers: Arc<PeerChannels>,
    /// Test-only network faults (empty in production).
    pub faults: Arc<FaultInjector>,
    replicas: RwLock<BTreeMap<GroupId, Arc<GroupReplica>>>,
    /// The map as applied by this node's metadata replica (if any).
    applied_map: Arc<RwLock<ClusterMap>>,
    applied_changed: watch::Sender<u64>,
    /// The freshest map this node knows (applied here or fetched).
    view: RwLock<ClusterMap>,
    /// Current address of every node, for the raft network.
    addresses: AddressBook,
    /// Which peers said, in their latest append answers, that they refuse writes for want of disk.
    peer_disk_reports: Arc<PeerDiskReports>,
    /// The leader each local replica saw at the last metrics update, to count
    /// leader changes.
    seen_leaders: Mutex<HashMap<GroupId, Option<NodeId>>>,
    /// Last known leader per group.
    leader_hints: RwLock<HashMap<GroupId, NodeId>>,
    health: Mutex<BTreeMap<NodeId, NodeHealth>>,
    leader_since: Mutex<Option<Instant>>,
    open_lock: tokio::sync::Mutex<()>,
    stopping: watch::Sender<bool>,
}

/// How long [`Cluster::propose`] tries before it fails.
const PROPOSAL_DEADLINE: Duration = Duration::from_secs(15);

fn unavailable(message: impl Into<String>) -> NodeError {
    NodeError::Unavailable(message.into())
}

impl Cluster {
    /// Starts this node's part of the cluster: bootstraps a new cluster, joins one,
    /// or reopens the groups hosted before a restart.
    pub async fn start(
        config: ClusterConfig,
        storage: Storage,
        metrics: Arc<Metrics>,
        data_dir: PathBuf,
        write_queue_depth: usize,
        retention: Duration,
    ) -> Result<Arc<Cluster>, NodeError> {
        let identity = match storage.get(keys::CF_META, &keys::node_identity_key())? {
            Some(bytes) => Some(
                decode::<NodeIdentity>(&bytes)
                    .map_err(|error| NodeError::Corrupt(format!("node identity: {error}")))?,
            ),
            None => None,
        };
        let peers = Arc::new(PeerChannels::default());
        let identity = match identity {
            Some(identity) => identity,
            None => {
                let identity = match &config.join {
                    None => NodeIdentity {
                        id: 1,
                        bootstrapper: true,
                    },
                    Some(join) => NodeIdentity {
                        id: join_cluster(&peers, join, &config).await?,
                        bootstrapper: false,
                    },
                };
                let bytes = encode(&identity).map_err(|error| NodeError::Internal(error.to_string()))?;
                let mut options = rocksdb::WriteOptions::default();
                options.set_sync(true);
                storage.db().put_cf_opt(
                    storage.cf(keys::CF_META)?,
                    keys::node_identity_key(),
                    bytes,
                    &options,
                )?;
                identity
            }
        };
        let applied = GroupStateMachine::read_cluster_map(&storage, METADATA_GROUP)
            .map_err(|error| NodeError::Internal(error.to_string()))?;
        let known_addresses: HashMap<NodeId, String> = applied
            .nodes
            .values()
            .map(|node| (node.id, node.address.clone()))
            .collect();
        let (applied_changed, _) = watch::channel(applied.version);
        let (stopping, _) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            node_id: identity.id,
            config,
            storage,
            metrics,
            data_dir,
            write_queue_depth,
            retention,
            peers,
            faults: Arc::new(FaultInjector::default()),
            replicas: RwLock::new(BTreeMap::new()),
            view: RwLock::new(applied.clone()),
            applied_map: Arc::new(RwLock::new(applied)),
            applied_changed,
            addresses: Arc::new(RwLock::new(known_addresses)),
            peer_disk_reports: Arc::new(PeerDiskReports::default()),
            seen_leaders: Mutex::new(HashMap::new()),
            leader_hints: RwLock::new(HashMap::new()),
            health: Mutex::new(BTreeMap::new()),
            leader_since: Mutex::new(None),
            open_lock: tokio::sync::Mutex::new(()),
            stopping,
        });
        // Reopen every group hosted before a restart.
        let mut hosted = Vec::new();
        cluster
            .storage
            .scan_prefix(keys::CF_META, &keys::hosted_group_prefix(), |key, _| {
                if let Some(group) = keys::decode_hosted_group_key(key) {
                    hosted.push(group);
                }
                Ok(true)
            })?;
        for group in hosted {
            cluster.ensure_replica(group).await?;
        }
        if identity.bootstrapper {
            cluster.bootstrap().await?;
        }
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The freshest cluster map this node knows.
    pub fn view(&self) -> ClusterMap {
        self.view.read().clone()
    }

    fn update_view(&self, map: &ClusterMap) {
        let mut view = self.view.write();
        if map.version > view.version || !view.is_bootstrapped() {
            *view = map.clone();
            let mut addresses = self.addresses.write();
            for node in map.nodes.values() {
                addresses.insert(node.id, node.address.clone());
            }
        }
    }

    /// This node's replica of `group`.
    pub fn replica(&self, group: GroupId) -> Option<Arc<GroupReplica>> {
        self.replicas.read().get(&group).cloned()
    }

    /// Every replica on this node.
    pub fn replicas(&self) -> Vec<Arc<GroupReplica>> {
        self.replicas.read().values().cloned().collect()
    }

    fn raft_config(&self) -> Result<Arc<openraft::Config>, NodeError> {
        let election = self.config.election_timeout.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "kiln".into(),
            heartbeat_interval: self.config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.config.snapshot_after_logs),
            max_in_snapshot_log_to_keep: 0,
            snapshot_max_chunk_size: 4 << 20,
            install_snapshot_timeout: 30_000,
            // openraft bounds an AppendEntries by the heartbeat interval: keep each
            // one small enough to be sent and synced well within it.
            max_payload_entries: 16,
            ..openraft::Config::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|error| NodeError::InvalidArgument(format!("raft configuration: {error}")))
    }

    /// Opens (creating when new) this node's replica of `group`.
    pub async fn ensure_replica(&self, group: GroupId) -> Result<Arc<GroupReplica>, NodeError> {
        let _guard = self.open_lock.lock().await;
        if let Some(replica) = self.replica(group) {
            return Ok(replica);
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.storage.db().put_cf_opt(
            self.storage.cf(keys::CF_META)?,
            keys::hosted_group_key(group),
            [],
            &options,
        )?;
        let (kind, writer, engine) = if group == METADATA_GROUP {
            let kind = MachineKind::Meta {
                map: self.applied_map.clone(),
                changed: self.applied_changed.clone(),
            };
            (kind, None, None)
        } else {
            let writer = Arc::new(Writer::start_log_backed(
                self.storage.clone(),
                group,
                self.write_queue_depth,
                self.metrics.clone(),
            )?);
            let engine = QueryEngine::new(self.storage.clone(), group, self.metrics.clone());
            (
                MachineKind::Data {
                    writer: writer.clone(),
                },
                Some(writer),
                Some(engine),
            )
        };
        let log = LogStore::new(self.storage.clone(), group);
        let machine = GroupStateMachine::new(
            self.storage.clone(),
            group,
            kind,
            self.data_dir.join("snapshots"),
            self.metrics.clone(),
        );
        let network = GroupNetworkFactory::new(
            group,
            self.node_id,
            self.peers.clone(),
            self.faults.clone(),
            self.addresses.clone(),
            self.peer_disk_reports.clone(),
        );
        let raft = KilnRaft::new(
            self.node_id,
            self.raft_config()?,
            network,
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|error| NodeError::Internal(format!("cannot start raft for group {group}: {error}")))?;
        let replica = Arc::new(GroupReplica {
            group,
            raft,
            engine,
            writer,
            log,
            machine,
            created: Instant::now(),
        });
        self.replicas.write().insert(group, replica.clone());
        tracing::info!(group, node = self.node_id, "opened replica");
        Ok(replica)
    }

    /// Stops this node's replica of `group` and deletes its log and data.
    pub async fn drop_replica(&self, group: GroupId) -> Result<(), NodeError> {
        let _guard = self.open_lock.lock().await;
        let Some(replica) = self.replicas.write().remove(&group) else {
            return Ok(());
        };
        if let Err(error) = replica.raft.shutdown().await {
            tracing::warn!(group, %error, "raft shutdown failed");
        }
        if let Some(writer) = &replica.writer {
            let writer = writer.clone();
            tokio::task::spawn_blocking(move || writer.shutdown())
                .await
                .map_err(|error| NodeError::Internal(error.to_string()))?;
        }
        let log = replica.log.clone();
        let machine = replica.machine.clone();
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
            log.destroy()
                .map_err(|error| NodeError::Internal(error.to_string()))?;
            machine
                .destroy()
                .map_err(|error| NodeError::Internal(error.to_string()))?;
            let mut options = rocksdb::WriteOptions::default();
            options.set_sync(true);
            storage.db().delete_cf_opt(
                storage.cf(keys::CF_META)?,
                keys::hosted_group_key(group),
                &options,
            )?;
            Ok(())
        })
        .await
        .map_err(|error| NodeError::Internal(error.to_string()))??;
        tracing::info!(group, node = self.node_id, "dropped replica");
        Ok(())
    }

    async fn bootstrap(&self) -> Result<(), NodeError> {
        let address = self.config.advertise_address.clone();
        let members: BTreeMap<NodeId, BasicNode> = [(self.node_id, BasicNode::new(address.clone()))].into();
        let meta = self.ensure_replica(METADATA_GROUP).await?;
        let fresh = !meta
            .raft
            .is_initialized()
            .await
            .map_err(|error| NodeError::Internal(error.to_string()))?;
        if fresh {
            meta.raft.initialize(members.clone()).await.map_err(|error| {
                NodeError::Internal(format!("cannot initialize the metadata group: {error}"))
            })?;
        }
        if self.applied_map.read().is_bootstrapped() {
            return Ok(());
        }
        for group in 1..=self.config.data_groups {
            let replica = self.ensure_replica(group).await?;
            if !replica
                .raft
                .is_initialized()
                .await
                .map_err(|error| NodeError::Internal(error.to_string()))?
            {
                replica.raft.initialize(members.clone()).await.map_err(|error| {
                    NodeError::Internal(format!("cannot initialize group {group}: {error}"))
                })?;
            }
        }
        let answer = self
            .propose(
                METADATA_GROUP,
                Command::Meta(MetaCommand::Bootstrap {
                    first_node: NodeInfo {
                        id: self.node_id,
                        address,
                        region: self.config.region.clone(),
                        zone: self.config.zone.clone(),
                        state: NodeState::Up,
                    },
                    data_groups: self.config.data_groups,
                }),
            )
            .await?;
        if let CommandResponse::Meta(MetaResponse::Rejected(reason)) = answer {
            tracing::info!(%reason, "bootstrap skipped");
        }
        let applied = self.applied_map.read().clone();
        self.update_view(&applied);
        Ok(())
    }

    /// Sends an internal request to the node at `address`.
    pub async fn call(
        &self,
        address: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        if self.faults.requests_hang(address) {
            tokio::time::sleep(timeout).await;
            return Err(Failure::Unavailable(format!(
                "{address} did not answer within {timeout:?}"
            )));
        }
        let channel = self
            .peers
            .channel(address)
            .map_err(|error| Failure::Unavailable(format!("{address}: {error}")))?;
        let mut client = ClusterServiceClient::new(channel)
            .max_decoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES);
        let payload = encode(request).map_err(|error| Failure::Unavailable(error.to_string()))?;
        let mut message = tonic::Request::new(api::InternalRequest { payload });
        message.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, client.internal(message))
            .await
            .map_err(|_| Failure::Unavailable(format!("{address} did not answer within {timeout:?}")))?
            .map_err(|status| Failure::Unavailable(format!("{address}: {}", status.message())))?;
        decode::<Result<Response, Failure>>(&answer.into_inner().payload)
            .map_err(|error| Failure::Unavailable(format!("{address}: undecodable answer: {error}")))?
    }

    /// Where to send a request for `group`: the known leader, else its replicas.
    fn candidates_for(&self, group: GroupId) -> Vec<String> {
        let view = self.view.read();
        let mut addresses = Vec::new();
        if let Some(leader) = self.leader_hints.read().get(&group) {
            if let Some(address) = view.address_of(*leader) {
                addresses.push(address.to_string());
            }
        }
        if let Some(info) = view.groups.get(&group) {
            for replica in &info.replicas {
                if let Some(address) = view.address_of(*replica) {
                    if !addresses.iter().any(|known| known == address) {
                        addresses.push(address.to_string());
                    }
                }
            }
        }
        addresses
    }

    /// The last leader of `group` a replica named to this node.
    fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        self.leader_hints.read().get(&group).copied()
    }

    fn note_leader(&self, group: GroupId, leader: Option<NodeId>) {
        if let Some(leader) = leader {
            self.leader_hints.write().insert(group, leader);
        }
    }

    /// Proposes `command` to `group` here, if this node's replica leads it.
    pub async fn propose_local(&self, group: GroupId, command: Command) -> Result<CommandResponse, Failure> {
        let Some(replica) = self.replica(group) else {
            return Err(Failure::NotHosted);
        };
        // openraft would only log and return its stored fatal error; other replicas may still lead.
        if replica.stopped() {
            return Err(Failure::Unavailable(stopped_replica_message(group, self.node_id)));
        }
        // Checked where the entry would be appended: only a leader appends a proposal. Expiries and
        // cluster changes pass, since they free space or are small.
        if command.adds_data() {
            self.admit_data_write(group, &replica)?;
        }
        let started = Instant::now();
        match replica.raft.client_write(command).await {
            Ok(response) => {
                self.metrics
                    .raft_commit_seconds
                    .get_or_create(&crate::metrics::GroupLabels { group })
                    .observe(started.elapsed().as_secs_f64());
                Ok(response.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                self.note_leader(group, forward.leader_id);
                Err(Failure::NotLeader {
                    leader: forward.leader_node.map(|node| node.addr),
                })
            }
            Err(error) => Err(Failure::Unavailable(format!("group {group}: {error}"))),
        }
    }

    /// Whether a proposal that adds data may be appended to `group`, led here: this node's free disk
    /// space and that of every other voter of the group, as they last reported it, must be over
    /// their reserves. Why the voters too: a follower whose disk fills stops its replica (openraft
    /// stops a group whose storage fails), and with one such stop the group runs without a spare
    /// and nothing moves the replica away, since its node is up.
    fn admit_data_write(&self, group: GroupId, replica: &GroupReplica) -> Result<(), Failure> {
        let refused = |node: NodeId, message: String| {
            self.metrics.writes_refused_for_disk.inc();
            Failure::Refused(format!("group {group}: node {node}'s {message}"))
        };
        self.storage
            .disk()
            .admit_write()
            .map_err(|message| refused(self.node_id, message))?;
        for voter in replica.voter_ids() {
            if voter == self.node_id {
                continue;
            }
            if let Some(message) = self.peer_disk_reports.refusal(voter) {
                return Err(refused(voter, message));
            }
        }
        Ok(())
    }

    /// [`Self::propose_local`], given up at `deadline`. Why: a leader cut off from its group does
    /// not learn that it was replaced until the partition heals, and its proposal waits that long.
    /// A proposal given up may still commit later; writes carry idempotency keys for that.
    async fn propose_local_until(
        &self,
        group: GroupId,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResponse, Failure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.propose_local(group, command)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Unavailable(format!(
                "group {group}: not committed in time through this node's replica"
            ))),
        }
    }

    /// Proposes `command` to `group`'s leader, wherever it is; retries through
    /// elections and stale routing until the deadline (15 s), which also bounds each attempt.
    pub async fn propose(&self, group: GroupId, command: Command) -> Result<CommandResponse, NodeError> {
        let deadline = Instant::now() + PROPOSAL_DEADLINE;
        let mut redirect: Option<String> = None;
        let mut last_failure = String::from("no replica known");
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            attempt += 1;
            let local_replica = self.replica(group);
            let local_replica_running = local_replica.as_ref().is_some_and(|replica| !replica.stopped());
            if local_replica.is_some()
                && !local_replica_running
                && self
                    .candidates_for(group)
                    .iter()
                    .all(|address| *address == self.config.advertise_address)
            {
                // Nothing else can take it (a single node): waiting out the deadline cannot help.
                return Err(unavailable(stopped_replica_message(group, self.node_id)));
            }
            let result = match redirect.take() {
                None if local_replica_running => {
                    self.propose_local_until(group, command.clone(), deadline).await
                }
                target => {
                    let addresses = match target {
                        Some(address) => vec![address],
                        None => self.candidates_for(group),
                    };
                    let mut result = Err(Failure::Unavailable(format!(
                        "group {group}: no replica address known"
                    )));
                    for address in addresses {
                        if address == self.config.advertise_address {
                            result = self.propose_local_until(group, command.clone(), deadline).await;
                        } else {
                            let request = Request::Propose {
                                group,
                                command: command.clone(),
                            };
                            let remaining = deadline.saturating_duration_since(Instant::now());
                            let timeout = remaining.clamp(Duration::from_millis(1), Duration::from_secs(10));
                            result = match self.call(&address, &request, timeout).await {
                                Ok(Response::Command(answer)) => Ok(answer),
                                Ok(other) => {
                                    Err(Failure::Unavailable(format!("unexpected answer {other:?}")))
                                }
                                Err(failure) => Err(failure),
                            };
                        }
                        if !matches!(result, Err(Failure::NotHosted) | Err(Failure::Unavailable(_))) {
                            break;
                        }
                    }
                    result
                }
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(Failure::Invalid(message)) => return Err(NodeError::InvalidArgument(message)),
                Err(Failure::Refused(message)) => return Err(NodeError::RefusedForNow(message)),
                Err(Failure::NotLeader {
                    leader: Some(address),
                }) => {
                    last_failure = format!("redirected to {address}");
                    redirect = Some(address);
                    continue;
                }
                Err(failure) => last_failure = failure.to_string(),
            }
            // No leader yet (election) or unreachable: back off a little.
            let pause = Duration::from_millis((50 * u64::from(attempt)).min(500));
            tokio::time::sleep(pause).await;
        }
        Err(unavailable(format!(
            "group {group} did not accept the {} in time: {last_failure}",
            command.kind()
        )))
    }

    /// Stores a write request: validated and encoded once here, split by group,
    /// each part committed through its group's raft. Acknowledged when every part is.
    /// A profile older than the retention rejects the request (see [`prepare_write`]).
    pub async fn write(&self, request: api::WriteRequest) -> Result<api::WriteResponse, NodeError> {
        let oldest_kept = OldestKept::now(self.retention);
        let prepared = tokio::task::spawn_blocking(move || prepare_write(request, oldest_kept))
            .await
            .map_err(|error| NodeError::Internal(format!("prepare failed: {error}")))??;
        let view = self.view();
        if !view.is_bootstrapped() {
            return Err(unavailable("the cluster map is not known yet; retry shortly"));
        }
        let pprof_count = prepared.pprof_count;
        let accepted_unix_ms = kiln_model::time::now_unix_ms();
        let mut parts = prepared.split_by_group(|hash| view.group_of(hash).unwrap_or(1));
        for (group, part) in &mut parts {
            let Some(committed) = self
                .replica(*group)
                .and_then(|replica| replica.writer.as_ref().map(|writer| writer.committed_content()))
            else {
                continue;
            };
            let stripped = part.strip_committed(&committed);
            self.metrics.proposal_stacks_stripped.inc_by(stripped.stacks);
            self.metrics.proposal_symbols_stripped.inc_by(stripped.symbols);
        }
        let proposals = parts.into_iter().map(|(group, part)| async move {
            let accepted = AcceptedWrite {
                write: part,
                accepted_unix_ms,
            };
            match self.propose(group, Command::Write(accepted)).await? {
                CommandResponse::Written(outcome) => Ok(outcome),
                other => Err(NodeError::Internal(format!(
                    "group {group} answered {other:?} to a write"
                ))),
            }
        });
        let outcomes: Vec<WriteOutcome> = futures::future::try_join_all(proposals).await?;
        let duplicate = !outcomes.is_empty() && outcomes.iter().all(|outcome| outcome.duplicate);
        let samples: u64 = outcomes.iter().map(|outcome| outcome.samples).sum();
        self.metrics.count_write(duplicate, pprof_count, samples);
        let mut profile_types: Vec<String> = outcomes
            .iter()
            .flat_map(|outcome| outcome.profile_types.iter().cloned())
            .collect();
        profile_types.sort();
        profile_types.dedup();
        Ok(api::WriteResponse {
            duplicate,
            profiles: if duplicate { 0 } else { pprof_count },
            samples,
            series: outcomes.iter().map(|outcome| outcome.series).sum(),
            profile_types,
        })
    }

    /// Asks the metadata group to apply `command`.
    pub async fn meta_write(&self, command: MetaCommand) -> Result<MetaResponse, NodeError> {
        match self.propose(METADATA_GROUP, Command::Meta(command)).await? {
            CommandResponse::Meta(answer) => Ok(answer),
            other => Err(NodeError::Internal(format!("metadata group answered {other:?}"))),
        }
    }

    /// Refreshes the per-group raft metrics of this node's replicas: leadership,
    /// apply lag, and leader changes (counted when the leader a replica knows differs
    /// from the one seen at the previous update; updates run every reconcile tick
    /// and at every `/metrics` scrape).
    pub fn update_metrics(&self) {
        let mut seen = self.seen_leaders.lock();
        for replica in self.replicas() {
            let metrics = replica.raft.metrics().borrow().clone();
            let labels = crate::metrics::GroupLabels { group: replica.group };
            let leading = metrics.state == ServerState::Leader;
            self.metrics
                .raft_is_leader
                .get_or_create(&labels)
                .set(i64::from(leading));
            let applied = metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0);
            let lag = metrics.last_log_index.unwrap_or(0).saturating_sub(applied);
            self.metrics.raft_apply_lag.get_or_create(&labels).set(lag as i64);
            let previous = seen.insert(replica.group, metrics.current_leader);
            if previous.is_some_and(|previous| previous != metrics.current_leader)
                && metrics.current_leader.is_some()
            {
                self.metrics.raft_leader_changes.get_or_create(&labels).inc();
            }
        }
    }

    /// The state of every replica on this node.
    pub fn probe_report(&self) -> ProbeReport {
        let groups = self
            .replicas()
            .into_iter()
            .map(|replica| {
                let metrics = replica.raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                GroupReport {
                    group: replica.group,
                    role: match metrics.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Learner => "learner",
                        ServerState::Candidate => "candidate",
                        ServerState::Shutdown => "shutdown",
                    }
                    .to_string(),
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    applied_index: metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0),
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                    matched: metrics
                        .replication
                        .as_ref()
                        .map(|replication| {
                            replication
                                .iter()
                                .map(|(node, matched)| {
                                    (*node, matched.map(|log_id| log_id.index).unwrap_or(0))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        ProbeReport {
            node: self.node_id,
            groups,
            disk_refusal: self.disk_refusal(),
        }
    }

    /// Probes every node of the map at once; unreachable ones map to an error.
    pub async fn probe_all(&self) -> BTreeMap<NodeId, Result<ProbeReport, Failure>> {
        let view = self.view();
        let probes = view
            .nodes
            .values()
            .filter(|node| node.state != NodeState::Removed)
            .map(|node| async move {
                let answer = if node.id == self.node_id {
                    Ok(self.probe_report())
                } else {
                    match self
                        .call(&node.address, &Request::Probe, Duration::from_millis(1500))
                        .await
                    {
                        Ok(Response::Probe(report)) => Ok(report),
                        Ok(other) => Err(Failure::Unavailable(format!("unexpected answer {other:?}"))),
                        Err(failure) => Err(failure),
                    }
                };
                (node.id, answer)
            });
        let answers = futures::future::join_all(probes).await;
        for (_, answer) in &answers {
            if let Ok(report) = answer {
                for group in &report.groups {
                    if group.role == "leader" {
                        self.note_leader(group.group, Some(report.node));
                    }
                }
            }
        }
        answers.into_iter().collect()
    }

    /// The cluster's status, as probed from this node now.
    pub async fn status(&self) -> api::ClusterStatus {
        let view = self.view();
        let probes = self.probe_all().await;
        let health = self.health.lock().clone();
        let mut nodes = Vec::new();
        for node in view.nodes.values() {
            let reachable = matches!(probes.get(&node.id), Some(Ok(_)));
            let last_seen_ms_ago = if reachable {
                0
            } else {
                health
                    .get(&node.id)
                    .and_then(|health| health.last_seen)
                    .map(|seen| seen.elapsed().as_millis() as u64)
                    .unwrap_or(0)
            };
            nodes.push(api::NodeStatus {
                id: node.id,
                address: node.address.clone(),
                region: node.region.clone(),
                zone: node.zone.clone(),
                state: node.state.to_string(),
                reachable,
                last_seen_ms_ago,
                // Its answer to this probe; when it did not answer, its last one to the reconciler.
                disk_refusal: match probes.get(&node.id) {
                    Some(Ok(report)) => report.disk_refusal.clone(),
                    _ => health
                        .get(&node.id)
                        .and_then(|health| health.report.as_ref())
                        .and_then(|report| report.disk_refusal.clone()),
                }
                .unwrap_or_default(),
            });
        }
        let mut by_group: BTreeMap<GroupId, Vec<(NodeId, GroupReport)>> = BTreeMap::new();
        for (node, answer) in &probes {
            if let Ok(report) = answer {
                for group in &report.groups {
                    by_group
                        .entry(group.group)
                        .or_default()
                        .push((*node, group.clone()));
                }
            }
        }
        let mut metadata_leader = 0;
        let mut groups = Vec::new();
        for (group, info) in &view.groups {
            let reports = by_group.remove(group).unwrap_or_default();
            let leader_report = reports.iter().find(|(_, report)| report.role == "leader");
            let leader = leader_report.map(|(node, _)| *node).unwrap_or(0);
            if *group == METADATA_GROUP {
                metadata_leader = leader;
            }
            let leader_last = leader_report
                .map(|(_, report)| report.last_log_index)
                .unwrap_or(0);
            let commit_index = leader_report.map(|(_, report)| report.applied_index).unwrap_or(0);
            let replicas = reports
                .iter()
                .map(|(node, report)| api::ReplicaStatus {
                    node_id: *node,
                    role: report.role.clone(),
                    last_log_index: report.last_log_index,
                    applied_index: report.applied_index,
                    lag: leader_last.saturating_sub(report.applied_index),
                })
                .collect();
            groups.push(api::GroupStatus {
                group: *group,
                leader,
                term: leader_report.map(|(_, report)| report.term).unwrap_or(0),
                commit_index,
                replicas,
                voters: info.replicas.iter().copied().collect(),
                is_metadata: *group == METADATA_GROUP,
                raft_voters: leader_report
                    .map(|(_, report)| report.voters.clone())
                    .unwrap_or_default(),
            });
        }
        api::ClusterStatus {
            metadata_leader,
            map_version: view.version,
            nodes,
            groups,
            replication_factor: self.config.replication_factor as u32,
        }
    }

    /// Slot -> group and group -> leader, for routing clients.
    pub async fn routing(&self) -> api::RoutingTable {
        let view = self.view();
        let _ = self.probe_all().await;
        let hints = self.leader_hints.read().clone();
        let groups = view
            .data_groups()
            .map(|group| api::GroupRoute {
                group,
                leader_address: hints
                    .get(&group)
                    .and_then(|leader| view.address_of(*leader))
                    .unwrap_or("")
                    .to_string(),
                replica_addresses: view
                    .groups
                    .get(&group)
                    .map(|info| {
                        info.replicas
                            .iter()
                            .filter_map(|node| view.address_of(*node).map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        api::RoutingTable {
            map_version: view.version,
            slots: view.slots.clone(),
            groups,
        }
    }

    /// Whether this node is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Stops every raft and writer; committed data is durable already.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let replicas: Vec<Arc<GroupReplica>> = std::mem::take(&mut *self.replicas.write())
            .into_values()
            .collect();
        for replica in replicas {
            if let Err(error) = replica.raft.shutdown().await {
                tracing::warn!(group = replica.group, %error, "raft shutdown failed");
            }
            if let Some(writer) = replica.writer.clone() {
                let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
            }
        }
    }

    /// The state of this node's replicas as `/healthz` and `/readyz` report it. A replica whose raft
    /// stopped while the node runs (openraft stops a group whose storage failed: a full disk, an I/O
    /// error) stays stopped until the node restarts, so it is reported apart from groups that are
    /// only between leaders.
    pub fn health(&self) -> Health {
        let stopping = self.is_stopping();
        let mut health = Health {
            stopping,
            stopped_groups: Vec::new(),
            groups_without_leader: Vec::new(),
        };
        if stopping {
            return health;
        }
        for replica in self.replicas() {
            if replica.stopped() {
                health.stopped_groups.push(replica.group);
            } else if replica.raft.metrics().borrow().current_leader.is_none() {
                health.groups_without_leader.push(replica.group);
            }
        }
        health
    }

    /// Whether a data group hosted here knows no leader (an election is under way).
    pub fn some_data_group_without_leader(&self) -> bool {
        self.replicas().iter().any(|replica| {
            replica.writer.is_some() && replica.raft.metrics().borrow().current_leader.is_none()
        })
    }

    /// Retention pass: proposes `expiry` to every data group this node leads, so that each group's
    /// replicas drop the same data at the same log position. Groups led elsewhere are left to their
    /// leader's own pass. Returns the groups it expired; fails naming every group it could not
    /// expire (after trying all of them), which the next pass tries again.
    ///
    /// Why through the log and not on each replica by itself: replicas that expired at their own
    /// times held different data between passes, and a leader change could bring expired data back;
    /// and idempotency keys forgotten by one replica but not another made a late retry a duplicate
    /// on some replicas and new data on others.
    ///
    /// Each proposal is bounded by [`Self::propose`]'s deadline: a leader cut off from its group
    /// does not know it was replaced, and an unbounded proposal would hold up the other groups'
    /// expiry and every later pass of this node.
    pub async fn run_retention(&self, expiry: Expiry) -> Result<Vec<GroupId>, NodeError> {
        let mut expired = Vec::new();
        let mut failures = Vec::new();
        for replica in self.replicas() {
            let group = replica.group;
            let leads = replica.raft.metrics().borrow().state == ServerState::Leader;
            if replica.writer.is_none() || !leads {
                continue;
            }
            match self.propose(group, Command::Expire(expiry)).await {
                Ok(CommandResponse::Expired(outcome)) => {
                    tracing::debug!(group, ?outcome, "expired");
                    expired.push(group);
                }
                Ok(other) => failures.push(format!("group {group} answered {other:?}")),
                Err(NodeError::ShuttingDown) => return Err(NodeError::ShuttingDown),
                Err(error) => failures.push(error.to_string()),
            }
        }
        if failures.is_empty() {
            return Ok(expired);
        }
        Err(unavailable(format!(
            "retention pass: {} (the next pass tries again)",
            failures.join("; ")
        )))
    }

    /// Handles an internal request from another node.
    pub async fn handle_internal(&self, request: Request) -> Result<Response, Failure> {
        match request {
            Request::GetMap => {
                if self.replica(METADATA_GROUP).is_none() {
                    return Err(Failure::NotHosted);
                }
                Ok(Response::Map(self.applied_map.read().clone()))
            }
            Request::Probe => Ok(Response::Probe(self.probe_report())),
            Request::EnsureReplica { group } => {
                self.ensure_replica(group).await?;
                Ok(Response::Done)
            }
            Request::ChangeReplicas { group, voters } => {
                self.change_replicas(group, voters).await?;
                Ok(Response::Done)
            }
            Request::DropReplica { group } => {
                let replica = self.replica(group).ok_or(Failure::NotHosted)?;
                let leading = replica.raft.metrics().borrow().state == ServerState::Leader;
                // A replica created moments ago may be a learner whose membership
                // entry is on its way; a leader is never stale by definition here.
                if leading || replica.created.elapsed() < reconcile::JANITOR_GRACE {
                    return Err(Failure::Unavailable(format!(
                        "replica of group {group} is not stale"
                    )));
                }
                self.drop_replica(group).await?;
                Ok(Response::Done)
            }
            Request::Campaign { group } => {
                let replica = self.replica(group).ok_or(Failure::NotHosted)?;
                replica
                    .raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|error| Failure::Unavailable(error.to_string()))?;
                Ok(Response::Done)
            }
            Request::Propose { group, command } => {
                Ok(Response::Command(self.propose_local(group, command).await?))
            }
            Request::Query { group, query } => Ok(Response::Answer(self.answer_local(group, query).await?)),
        }
    }

    /// On a group's leader: makes `voters` the group's voters. New nodes get a
    /// replica, are added as learners and caught up (by snapshot when the log was
    /// purged) before the joint-consensus membership change, so the group never
    /// has fewer up-to-date voters than a quorum.
    async fn change_replicas(&self, group: GroupId, voters: BTreeMap<NodeId, String>) -> Result<(), Failure> {
        let replica = self.replica(group).ok_or(Failure::NotHosted)?;
        let metrics = replica.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            let leader = metrics
                .current_leader
                .and_then(|leader| self.view.read().address_of(leader).map(str::to_string));
            return Err(Failure::NotLeader { leader });
        }
        let current: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let wanted: BTreeSet<NodeId> = voters.keys().copied().collect();
        if current == wanted {
            return Ok(());
        }
        let new_nodes: Vec<(NodeId, String)> = voters
            .iter()
            .filter(|(node, _)| !current.contains(node))
            .map(|(node, address)| (*node, address.clone()))
            .collect();
        if !new_nodes.is_empty() {
            // Snapshot and purge first: the new replicas then catch up from a
            // snapshot of the data rather than by replaying the whole log.
            self.snapshot_and_purge(&replica).await;
        }
        for (node, address) in new_nodes {
            if node != self.node_id {
                match self
                    .call(
                        &address,
                        &Request::EnsureReplica { group },
                        Duration::from_secs(10),
                    )
                    .await?
                {
                    Response::Done => {}
                    other => return Err(Failure::Unavailable(format!("unexpected answer {other:?}"))),
                }
            }
            let added = tokio::time::timeout(
                Duration::from_secs(120),
                replica.raft.add_learner(node, BasicNode::new(address), true),
            )
            .await
            .map_err(|_| Failure::Unavailable(format!("learner {node} of group {group} did not catch up")))?;
            added.map_err(|error| Failure::Unavailable(format!("add learner {node}: {error}")))?;
            self.metrics.learners_caught_up.inc();
        }
        replica
            .raft
            .change_membership(wanted, false)
            .await
            .map_err(|error| Failure::Unavailable(format!("membership change of group {group}: {error}")))?;
        tracing::info!(group, voters = ?voters.keys().collect::<Vec<_>>(), "membership changed");
        Ok(())
    }

    async fn snapshot_and_purge(&self, replica: &GroupReplica) {
        let applied = replica
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index);
        let Some(applied) = applied else {
            return;
        };
        if replica.raft.trigger().snapshot().await.is_err() {
            return;
        }
        let built = replica
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |metrics| metrics.snapshot.is_some_and(|log_id| log_id.index >= applied),
                "snapshot built",
            )
            .await;
        if built.is_ok() {
            let _ = replica.raft.trigger().purge_log(applied).await;
        }
    }

    /// Answers a query for `group` from this node's replica after ReadIndex.
    async fn answer_local(
        &self,
        group: GroupId,
        query: internal::GroupQuery,
    ) -> Result<internal::GroupAnswer, Failure> {
        let replica = self.replica(group).ok_or(Failure::NotHosted)?;
        let engine = replica.engine.clone().ok_or(Failure::NotHosted)?;
        if let Err(error) = replica.raft.ensure_linearizable().await {
            if let RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(forward)) = &error
            {
                self.note_leader(group, forward.leader_id);
                return Err(Failure::NotLeader {
                    leader: forward.leader_node.as_ref().map(|node| node.addr.clone()),
                });
            }
            return Err(Failure::Unavailable(format!(
                "group {group} cannot prove it is current: {error}"
            )));
        }
        tokio::task::spawn_blocking(move || fanout::run_group_query(&engine, query))
            .await
            .map_err(|error| Failure::Unavailable(error.to_string()))?
            .map_err(Failure::from)
    }
}

impl RaftRegistry for Cluster {
    fn raft(&self, group: GroupId) -> Option<KilnRaft> {
        self.replica(group).map(|replica| replica.raft.clone())
    }

    fn disk_refusal(&self) -> Option<String> {
        self.storage.disk().admit_write().err()
    }
}

/// Asks the cluster at `join` for a node id, retrying until it answers.
async fn join_cluster(peers: &PeerChannels, join: &str, config: &ClusterConfig) -> Result<NodeId, NodeError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let channel = peers
            .channel(join)
            .map_err(|error| NodeError::InvalidArgument(format!("--join {join}: {error}")))?;
        let mut client = ClusterServiceClient::new(channel);
        let request = api::JoinRequest {
            address: config.advertise_address.clone(),
            region: config.region.clone(),
            zone: config.zone.clone(),
        };
        match client.join(request).await {
            Ok(answer) => {
                let id = answer.into_inner().node_id;
                tracing::info!(id, join, "joined the cluster");
                return Ok(id);
            }
            Err(status) => last_error = status.message().to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(unavailable(format!(
        "could not join the cluster at {join}: {last_error}"
    )))
}
