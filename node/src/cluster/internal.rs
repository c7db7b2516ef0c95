//! Node-to-node requests carried by `ClusterService.Internal` (bincode). Every
//! node of a cluster runs the same version, as for raft messages.

use std::collections::BTreeMap;

use kiln_model::profile_type::ProfileType;
use serde::{Deserialize, Serialize};

use super::map::ClusterMap;
use crate::error::NodeError;
use crate::query::partial::{MergePartial, PartialRecords, RangePartial, SeriesPartial};
use crate::raft::{Command, CommandResponse, NodeId};
use crate::storage::keys::GroupId;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// The sender's view of the cluster map, when it hosts a metadata replica.
    GetMap,
    /// The state of every replica this node hosts.
    Probe,
    /// Create an (empty) replica of `group` here, so a leader can add it as learner.
    EnsureReplica {
        /// Which group.
        group: GroupId,
    },
    /// To a group's leader: make the voters exactly these nodes (id -> address),
    /// adding learners first and catching them up before the membership change.
    ChangeReplicas {
        /// Which group.
        group: GroupId,
        /// The new voters.
        voters: BTreeMap<NodeId, String>,
    },
    /// Drop this node's replica of `group`: its leader's membership no longer has
    /// it (it missed the final membership entry, or was down when it was removed).
    DropReplica {
        /// Which group.
        group: GroupId,
    },
    /// Start an election for `group` here (moves leadership to this node when its
    /// log is up to date).
    Campaign {
        /// Which group.
        group: GroupId,
    },
    /// Propose a command to `group`'s raft; only its leader accepts.
    Propose {
        /// Which group.
        group: GroupId,
        /// The command.
        command: Command,
    },
    /// Answer a query for `group` after proving leadership (ReadIndex).
    Query {
        /// Which group.
        group: GroupId,
        /// The query.
        query: GroupQuery,
    },
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// `GetMap`.
    Map(ClusterMap),
    /// `Probe`.
    Probe(ProbeReport),
    /// `EnsureReplica`, `ChangeReplicas`, `Campaign`.
    Done,
    /// `Propose`.
    Command(CommandResponse),
    /// `Query`.
    Answer(GroupAnswer),
}

/// Why a request failed.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// This node's replica is not the leader; retry at `leader` when known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's address, when known.
        leader: Option<String>,
    },
    /// This node does not host the group.
    #[error("group not hosted on this node")]
    NotHosted,
    /// The request itself is invalid; retrying elsewhere will not help.
    #[error("{0}")]
    Invalid(String),
    /// The leader refuses the request for now (its disk is under its reserve): retrying at once,
    /// here or elsewhere, will not help; the client may retry later.
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("{0}")]
    Unavailable(String),
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::InvalidArgument(message) => Failure::Invalid(message),
            error @ NodeError::InvalidProfile { .. } => Failure::Invalid(error.to_string()),
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

/// One replica's state, as its node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    /// Which group.
    pub group: GroupId,
    /// leader, follower, learner, candidate or shutdown.
    pub role: String,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Voters of the replica's membership config.
    pub voters: Vec<NodeId>,
    /// Learners of the replica's membership config.
    pub learners: Vec<NodeId>,
    /// Leader only: each follower's matched log index.
    pub matched: Vec<(NodeId, u64)>,
}

/// Everything a node reports to a probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The node's id.
    pub node: NodeId,
    /// Its replicas.
    pub groups: Vec<GroupReport>,
    /// Why its data directory refuses writes (under `--min-free-disk-bytes`), if it does: the
    /// metadata leader places no new replica on it meanwhile.
    pub disk_refusal: Option<String>,
}

/// A query one group answers; the API requests travel prost-encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupQuery {
    /// A merge (or one side of a diff).
    Merge {
        /// `api::Selection`.
        selection: Vec<u8>,
        /// Whether the partial carries its symbol records.
        records: PartialRecords,
    },
    /// `api::RangeRequest`.
    Range(Vec<u8>),
    /// `api::LabelsRequest`.
    Labels(Vec<u8>),
    /// `api::LabelValuesRequest`.
    LabelValues(Vec<u8>),
    /// `api::SeriesRequest`.
    Series(Vec<u8>),
    /// `api::ProfileTypesRequest`.
    ProfileTypes(Vec<u8>),
}

/// One group's partial answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupAnswer {
    /// Merge partial (boxed: by far the largest answer).
    Merge(Box<MergePartial>),
    /// Range partial.
    Range(RangePartial),
    /// Label names.
    Labels(Vec<String>),
    /// Label values.
    LabelValues(Vec<String>),
    /// Series.
    Series(SeriesPartial),
    /// Profile types.
    ProfileTypes(Vec<ProfileType>),
}
