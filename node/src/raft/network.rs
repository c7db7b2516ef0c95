//! Raft RPCs between nodes: one gRPC connection per peer node shared by every
//! group, each RPC naming its group; and the server side that hands an incoming
//! RPC to the named group's raft.
//!
//! The [`FaultInjector`] sits on the sending side of every RPC. Production nodes
//! never configure it; in-process tests use it to drop, delay and partition
//! traffic per node, per link or per group, which is where raft's correctness
//! under failure is exercised.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::kiln::v1 as api;
use kiln_proto::kiln::v1::raft_service_client::RaftServiceClient;
use kiln_proto::kiln::v1::raft_service_server::RaftService;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::{Mutex, RwLock};
use tonic::transport::Channel;

use super::{decode, encode, KilnRaft, NodeId, TypeConfig};
use crate::storage::keys::GroupId;

/// Largest raft message (a snapshot chunk or an append batch), bytes.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// Why the fault injector dropped a message.
#[derive(Debug, thiserror::Error)]
#[error("fault injected: {0}")]
pub struct InjectedFault(String);

/// Faults between nodes, for tests. All checks are on the sender.
#[derive(Default)]
pub struct FaultInjector {
    rules: RwLock<FaultRules>,
}

#[derive(Default, Clone)]
struct FaultRules {
    isolated: HashSet<NodeId>,
    cut_links: HashSet<(NodeId, NodeId)>,
    isolated_group_replicas: HashSet<(GroupId, NodeId)>,
    delay: Option<Duration>,
    hung_addresses: HashSet<String>,
}

impl FaultInjector {
    /// Drops every raft message from and to `node`.
    pub fn isolate(&self, node: NodeId) {
        self.rules.write().isolated.insert(node);
    }

    /// Drops raft messages from `from` to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.rules.write().cut_links.insert((from, to));
    }

    /// Drops every message of `group` from and to `node`; other groups still flow.
    pub fn isolate_group_replica(&self, group: GroupId, node: NodeId) {
        self.rules.write().isolated_group_replicas.insert((group, node));
    }

    /// Delays every raft message by `delay`.
    pub fn delay_all(&self, delay: Duration) {
        self.rules.write().delay = Some(delay);
    }

    /// Internal node-to-node requests (group queries, forwarded writes) sent to `address` are never
    /// answered, as by a process that is stopped: the caller waits until its own timeout. Raft
    /// messages are not affected (see [`Self::isolate`]).
    pub fn hang_requests_to(&self, address: &str) {
        self.rules.write().hung_addresses.insert(address.to_string());
    }

    /// True when internal requests to `address` hang (see [`Self::hang_requests_to`]).
    pub fn requests_hang(&self, address: &str) -> bool {
        self.rules.read().hung_addresses.contains(address)
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.rules.write() = FaultRules::default();
    }

    async fn check(&self, group: GroupId, from: NodeId, to: NodeId) -> Result<(), InjectedFault> {
        let rules = self.rules.read().clone();
        if rules.isolated.contains(&from) || rules.isolated.contains(&to) {
            return Err(InjectedFault(format!("node {from} or {to} is isolated")));
        }
        if rules.cut_links.contains(&(from, to)) {
            return Err(InjectedFault(format!("link {from} -> {to} is cut")));
        }
        if rules.isolated_group_replicas.contains(&(group, from))
            || rules.isolated_group_replicas.contains(&(group, to))
        {
            return Err(InjectedFault(format!("group {group} is partitioned")));
        }
        if let Some(delay) = rules.delay {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

/// What each peer said of its disk in its latest raft answer: why it refuses writes (its free space
/// is under its reserve), when it does. Shared by every group of the node.
///
/// Guarantees: [`Self::refusal`] answers only from reports younger than [`DISK_REPORT_MAX_AGE`],
/// so a peer that stopped answering (down, partitioned) holds nothing back: raft's quorum deals
/// with it. Every append answer (heartbeats included) refreshes its sender's report.
#[derive(Default)]
pub struct PeerDiskReports {
    refusals: Mutex<HashMap<NodeId, (String, std::time::Instant)>>,
}

/// How long a peer's report of a full disk holds writes back without being renewed.
pub const DISK_REPORT_MAX_AGE: Duration = Duration::from_secs(10);

impl PeerDiskReports {
    /// Records `peer`'s latest answer: `refusal` is empty when its disk has room.
    pub fn record(&self, peer: NodeId, refusal: &str) {
        let mut refusals = self.refusals.lock();
        if refusal.is_empty() {
            refusals.remove(&peer);
        } else {
            refusals.insert(peer, (refusal.to_string(), std::time::Instant::now()));
        }
    }

    /// Why `peer` refuses writes, if it said so within [`DISK_REPORT_MAX_AGE`].
    pub fn refusal(&self, peer: NodeId) -> Option<String> {
        self.refusal_as_of(peer, std::time::Instant::now())
    }

    fn refusal_as_of(&self, peer: NodeId, now: std::time::Instant) -> Option<String> {
        let refusals = self.refusals.lock();
        let (refusal, at) = refusals.get(&peer)?;
        (now.saturating_duration_since(*at) < DISK_REPORT_MAX_AGE).then(|| refusal.clone())
    }
}

/// Current address of each node, kept from the cluster map. Raft memberships
/// remember the address a node had when it was added; a node restarted on another
/// address is found through this book instead.
pub type AddressBook = Arc<RwLock<HashMap<NodeId, String>>>;

/// One lazily connected gRPC channel per peer address, shared by every group and
/// by the cluster's own node-to-node calls.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerChannels {
    /// The channel to `address` (`host:port`), created on first use. A channel
    /// reconnects by itself after the peer restarts.
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Creates the connections of one group's raft.
pub struct GroupNetworkFactory {
    group: GroupId,
    local: NodeId,
    peers: Arc<PeerChannels>,
    faults: Arc<FaultInjector>,
    addresses: AddressBook,
    disk_reports: Arc<PeerDiskReports>,
}

impl GroupNetworkFactory {
    /// The network of `group` on node `local`.
    pub fn new(
        group: GroupId,
        local: NodeId,
        peers: Arc<PeerChannels>,
        faults: Arc<FaultInjector>,
        addresses: AddressBook,
        disk_reports: Arc<PeerDiskReports>,
    ) -> Self {
        GroupNetworkFactory {
            group,
            local,
            peers,
            faults,
            addresses,
            disk_reports,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupConnection {
        GroupConnection {
            group: self.group,
            local: self.local,
            target,
            address: node.addr.clone(),
            peers: self.peers.clone(),
            faults: self.faults.clone(),
            addresses: self.addresses.clone(),
            disk_reports: self.disk_reports.clone(),
        }
    }
}

/// One group's raft connection to one peer (over the shared peer channel).
pub struct GroupConnection {
    group: GroupId,
    local: NodeId,
    target: NodeId,
    address: String,
    peers: Arc<PeerChannels>,
    faults: Arc<FaultInjector>,
    addresses: AddressBook,
    disk_reports: Arc<PeerDiskReports>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl GroupConnection {
    async fn call<Req, Resp, E>(&self, kind: RaftRpc, request: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: for<'de> serde::Deserialize<'de>,
        E: std::error::Error + for<'de> serde::Deserialize<'de>,
    {
        if let Err(fault) = self.faults.check(self.group, self.local, self.target).await {
            return Err(RPCError::Unreachable(Unreachable::new(&fault)));
        }
        let payload = encode(request).map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let address = self
            .addresses
            .read()
            .get(&self.target)
            .cloned()
            .unwrap_or_else(|| self.address.clone());
        let channel = self
            .peers
            .channel(&address)
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut message = tonic::Request::new(api::RaftMessage {
            group: self.group,
            payload,
            disk_refusal: String::new(),
        });
        message.set_timeout(option.hard_ttl());
        let answer = match kind {
            RaftRpc::Append => client.append_entries(message).await,
            RaftRpc::Vote => client.vote(message).await,
            RaftRpc::Snapshot => client.install_snapshot(message).await,
        };
        let answer = answer.map_err(|status| {
            let error = TransportError(format!("{}: {}", status.code(), status.message()));
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::DeadlineExceeded => {
                    RPCError::Unreachable(Unreachable::new(&error))
                }
                _ => RPCError::Network(NetworkError::new(&error)),
            }
        })?;
        let answer = answer.into_inner();
        if matches!(kind, RaftRpc::Append) {
            self.disk_reports.record(self.target, &answer.disk_refusal);
        }
        let decoded: Result<Resp, E> =
            decode(&answer.payload).map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        decoded.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

#[derive(Clone, Copy)]
enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for GroupConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(RaftRpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(RaftRpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(RaftRpc::Vote, &rpc, &option).await
    }
}

/// Finds the raft of a group hosted on this node.
pub trait RaftRegistry: Send + Sync + 'static {
    /// The group's raft, `None` when this node does not host it.
    fn raft(&self, group: GroupId) -> Option<KilnRaft>;

    /// Why this node refuses writes for want of disk space, `None` when it has room; sent back with
    /// every append answer (see [`PeerDiskReports`]).
    fn disk_refusal(&self) -> Option<String> {
        None
    }
}

/// The `RaftService` server: hands each RPC to its group's raft.
pub struct RaftServer {
    registry: Arc<dyn RaftRegistry>,
}

impl RaftServer {
    /// Serves the groups of `registry`.
    pub fn new(registry: Arc<dyn RaftRegistry>) -> Self {
        RaftServer { registry }
    }

    fn raft(&self, group: GroupId) -> Result<KilnRaft, tonic::Status> {
        self.registry
            .raft(group)
            .ok_or_else(|| tonic::Status::not_found(format!("group {group} is not hosted here")))
    }
}

fn decode_request<T: for<'de> serde::Deserialize<'de>>(
    message: &api::RaftMessage,
) -> Result<T, tonic::Status> {
    decode(&message.payload)
        .map_err(|error| tonic::Status::invalid_argument(format!("undecodable raft message: {error}")))
}

fn encode_answer<T: serde::Serialize>(
    group: GroupId,
    answer: &T,
    disk_refusal: Option<String>,
) -> Result<tonic::Response<api::RaftMessage>, tonic::Status> {
    let payload = encode(answer)
        .map_err(|error| tonic::Status::internal(format!("cannot encode raft answer: {error}")))?;
    Ok(tonic::Response::new(api::RaftMessage {
        group,
        payload,
        disk_refusal: disk_refusal.unwrap_or_default(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<api::RaftMessage>,
    ) -> Result<tonic::Response<api::RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(&message)?;
        let answer = raft.append_entries(rpc).await;
        encode_answer(message.group, &answer, self.registry.disk_refusal())
    }

    async fn vote(
        &self,
        request: tonic::Request<api::RaftMessage>,
    ) -> Result<tonic::Response<api::RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: VoteRequest<NodeId> = decode_request(&message)?;
        let answer = raft.vote(rpc).await;
        encode_answer(message.group, &answer, None)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<api::RaftMessage>,
    ) -> Result<tonic::Response<api::RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(&message)?;
        let answer = raft.install_snapshot(rpc).await;
        encode_answer(message.group, &answer, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_disk_report_holds_until_renewed_cleared_or_stale() {
        let reports = PeerDiskReports::default();
        assert_eq!(reports.refusal(2), None);
        reports.record(2, "data directory /d has 1 MiB free");
        reports.record(3, "");
        assert_eq!(
            reports.refusal(2).as_deref(),
            Some("data directory /d has 1 MiB free")
        );
        assert_eq!(reports.refusal(3), None);
        let later = std::time::Instant::now() + DISK_REPORT_MAX_AGE;
        assert_eq!(
            reports.refusal_as_of(2, later),
            None,
            "a stale report holds nothing back"
        );
        reports.record(2, "");
        assert_eq!(reports.refusal(2), None, "an answer with room clears it");
    }
}
