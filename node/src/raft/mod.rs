//! The raft glue: openraft's storage and network traits implemented over the node's
//! one RocksDB and one tonic network layer, for any number of groups.
//!
//! - [`log_store`]: the raft log, vote and log pointers of one group (`raft` column
//!   family, group-prefixed keys). Every append is synced before openraft hears it
//!   is flushed.
//! - [`state_machine`]: applies committed [`Command`]s of one group (profile writes
//!   through the group's writer thread, or cluster-map changes for the metadata
//!   group), recording the applied log id atomically with the data; builds and
//!   installs snapshots of the group's key range.
//! - [`network`]: raft RPCs to other nodes over gRPC, every one naming its group,
//!   one connection per peer node, with a fault injector for tests.
//!
//! Invariant: nothing in this module decides *where* groups live; that is
//! `crate::cluster`'s job. This module only makes one replica of one group work.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::cluster::map::{MetaCommand, MetaResponse};
use crate::ingest::{AcceptedWrite, PreparedWrite};
use crate::storage::writer::{Expiry, RetentionOutcome, WriteOutcome};

/// A node id: unique in a cluster, never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Kiln's raft type configuration, shared by every group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// One raft group's handle.
pub type KilnRaft = openraft::Raft<TypeConfig>;
/// A raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A raft storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Raft metrics of one group.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;

/// What a raft log entry of a group asks its state machine to do.
///
/// Encoded with bincode, which names a variant by its position: new variants go at the end, and no
/// variant is removed or reordered, so that logs written by earlier versions still decode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A write as versions before [`Command::Write`] proposed it, without its acceptance time; it is
    /// applied as a [`Command::Write`] accepted at the applying replica's clock. Only found in logs
    /// written by those versions.
    UnstampedWrite(PreparedWrite),
    /// Change the cluster map (metadata group only).
    Meta(MetaCommand),
    /// Store prepared profiles (data groups only).
    Write(AcceptedWrite),
    /// Drop old data (data groups only). Proposed by the group's leader at each retention pass, so
    /// that every replica drops the same data at the same position in the log.
    Expire(Expiry),
}

impl Command {
    /// What the command is, in words for errors: "write", "expiry", "cluster-map change".
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UnstampedWrite(_) | Command::Write(_) => "write",
            Command::Meta(_) => "cluster-map change",
            Command::Expire(_) => "expiry",
        }
    }

    /// Whether applying the command stores new data (and so needs disk space): writes do; cluster-map
    /// changes are small and expiries free space.
    pub fn adds_data(&self) -> bool {
        matches!(self, Command::UnstampedWrite(_) | Command::Write(_))
    }
}

/// What applying a [`Command`] (or a blank/membership entry) produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Blank and membership entries.
    #[default]
    Empty,
    /// A write was stored (or recognised as a duplicate).
    Written(WriteOutcome),
    /// A cluster-map change's answer.
    Meta(MetaResponse),
    /// What an expiry removed.
    Expired(RetentionOutcome),
}

/// Encodes a value for the raft log or a raft RPC (bincode: compact, and every
/// node of a cluster runs the same types).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command enum as versions before stamped writes and expiries encoded it.
    #[derive(Serialize)]
    enum CommandBeforeStamps {
        Write(PreparedWrite),
    }

    #[test]
    fn log_format_a_write_logged_before_stamps_decodes_as_an_unstamped_write() {
        let write = PreparedWrite {
            idempotency_key: "logged-by-an-earlier-version".into(),
            ..PreparedWrite::default()
        };
        let bytes = encode(&CommandBeforeStamps::Write(write)).expect("encode");
        match decode::<Command>(&bytes).expect("decode") {
            Command::UnstampedWrite(decoded) => {
                assert_eq!(decoded.idempotency_key, "logged-by-an-earlier-version");
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn log_format_stamped_writes_and_expiries_round_trip() {
        let write = Command::Write(AcceptedWrite {
            write: PreparedWrite::default(),
            accepted_unix_ms: 1_764_000_000_000,
        });
        match decode::<Command>(&encode(&write).expect("encode")).expect("decode") {
            Command::Write(accepted) => assert_eq!(accepted.accepted_unix_ms, 1_764_000_000_000),
            other => panic!("decoded as {other:?}"),
        }
        let expiry = Expiry {
            samples_before_unix_ms: 5,
            idempotency_keys_before_unix_ms: 7,
        };
        match decode::<Command>(&encode(&Command::Expire(expiry)).expect("encode")).expect("decode") {
            Command::Expire(decoded) => assert_eq!(decoded, expiry),
            other => panic!("decoded as {other:?}"),
        }
    }
}
