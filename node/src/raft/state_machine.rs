//! The state machine of one group, and its snapshots.
//!
//! A group's state is its key range in the replicated column families. Applying
//! entries writes the data and the new applied log id (with the membership) in one
//! synced `WriteBatch`, so after a crash the applied pointer never runs ahead of, or
//! behind, the data it describes.
//!
//! Snapshots are a streamed copy of that key range taken from a RocksDB snapshot
//! (a consistent point in time, applied pointer included), zstd-compressed. openraft
//! sends them in chunks; installing one replaces the group's range in one atomic
//! batch. The last snapshot is kept in a file so a restarted node can still serve it
//! to a lagging replica after its log was purged.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes);
// the helpers here return it as is rather than converting at every call.
#![allow(clippy::result_large_err)]

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{decode, encode, Command, CommandResponse, Entry, NodeId, StorageError, TypeConfig};
use crate::cluster::map::{ClusterMap, MetaResponse};
use crate::ingest::AcceptedWrite;
use crate::metrics::Metrics;
use crate::storage::keys::{self, GroupId};
use crate::storage::writer::{RetentionOutcome, Writer};
use crate::storage::Storage;
use kiln_model::time::now_unix_ms;

/// First bytes of a snapshot stream (format version 1).
const SNAPSHOT_MAGIC: &[u8; 8] = b"KILNSNP1";

/// The applied pointer stored with the data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// Last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last applied membership.
    pub membership: StoredMembership<NodeId, BasicNode>,
}

/// What a group's entries act on.
#[derive(Clone)]
pub enum MachineKind {
    /// A data group: profile writes go through its writer thread.
    Data {
        /// The group's writer.
        writer: Arc<Writer>,
    },
    /// The metadata group: the cluster map, shared with the rest of the node.
    Meta {
        /// The applied map.
        map: Arc<RwLock<ClusterMap>>,
        /// Told the map version after every change.
        changed: watch::Sender<u64>,
    },
}

/// One group's state machine. Cheap to clone (the snapshot builder is a clone).
#[derive(Clone)]
pub struct GroupStateMachine {
    storage: Storage,
    group: GroupId,
    kind: MachineKind,
    snapshot_dir: PathBuf,
    metrics: Arc<Metrics>,
}

fn sm_read_error(error: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(error.to_string())).into()
}

fn sm_write_error(error: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(error.to_string())).into()
}

fn snapshot_error(error: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(error.to_string())).into()
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

async fn off_thread<T: Send + 'static>(
    run: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(run).await.map_err(sm_write_error)?
}

/// A snapshot file: its metadata and the compressed stream.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

impl GroupStateMachine {
    /// The state machine of `group`; snapshots are kept under `snapshot_dir`.
    pub fn new(
        storage: Storage,
        group: GroupId,
        kind: MachineKind,
        snapshot_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> GroupStateMachine {
        GroupStateMachine {
            storage,
            group,
            kind,
            snapshot_dir,
            metrics,
        }
    }

    /// Reads the applied pointer of `group` from `storage`.
    pub fn read_applied_state(storage: &Storage, group: GroupId) -> Result<AppliedState, StorageError> {
        match storage
            .get(keys::CF_META, &keys::applied_state_key(group))
            .map_err(sm_read_error)?
        {
            None => Ok(AppliedState::default()),
            Some(bytes) => decode(&bytes).map_err(sm_read_error),
        }
    }

    /// The `meta` record of `applied`, to commit atomically with what applying it wrote.
    fn applied_put(&self, applied: &AppliedState) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
        Ok((
            keys::applied_state_key(self.group),
            encode(applied).map_err(sm_write_error)?,
        ))
    }

    /// Reads the stored cluster map of the metadata group (empty when none).
    pub fn read_cluster_map(storage: &Storage, group: GroupId) -> Result<ClusterMap, StorageError> {
        match storage
            .get(keys::CF_META, &keys::cluster_map_key(group))
            .map_err(sm_read_error)?
        {
            None => Ok(ClusterMap::default()),
            Some(bytes) => decode(&bytes).map_err(sm_read_error),
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(format!("group-{}.snapshot", self.group))
    }

    /// Deletes the group's state, log excluded, and its snapshot file (when this
    /// node stops hosting the group).
    pub fn destroy(&self) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.stage_clear(&mut batch)?;
        self.storage
            .db()
            .write_opt(batch, &synced())
            .map_err(sm_write_error)?;
        self.storage.forget_group(self.group);
        match std::fs::remove_file(self.snapshot_path()) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(sm_write_error(error)),
        }
    }

    fn stage_clear(&self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let Some(end) = keys::group_end(self.group) else {
            return Err(sm_write_error("the node-local group is not a raft group"));
        };
        for name in keys::REPLICATED_COLUMN_FAMILIES {
            let cf = self.storage.cf(name).map_err(sm_write_error)?;
            batch.delete_range_cf(cf, keys::group_start(self.group), end.clone());
        }
        Ok(())
    }

    /// Streams the group's key range at one consistent point: returns the applied
    /// state at that point and the compressed stream.
    fn dump(&self) -> Result<(AppliedState, Vec<u8>), StorageError> {
        let db = self.storage.db();
        let snapshot = db.snapshot();
        let applied: AppliedState = {
            let meta = self.storage.cf(keys::CF_META).map_err(snapshot_error)?;
            match snapshot
                .get_cf(meta, keys::applied_state_key(self.group))
                .map_err(snapshot_error)?
            {
                None => AppliedState::default(),
                Some(bytes) => decode(&bytes).map_err(snapshot_error)?,
            }
        };
        let mut encoder = zstd::Encoder::new(Vec::new(), 3).map_err(snapshot_error)?;
        encoder.write_all(SNAPSHOT_MAGIC).map_err(snapshot_error)?;
        let start = keys::group_start(self.group);
        let end = keys::group_end(self.group).ok_or_else(|| snapshot_error("no range for the node group"))?;
        for (index, name) in keys::REPLICATED_COLUMN_FAMILIES.iter().enumerate() {
            let cf = self.storage.cf(name).map_err(snapshot_error)?;
            let mut options = rocksdb::ReadOptions::default();
            options.set_snapshot(&snapshot);
            options.set_iterate_upper_bound(end.clone());
            options.fill_cache(false);
            let mut iterator = db.raw_iterator_cf_opt(cf, options);
            iterator.seek(&start);
            while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                encoder.write_all(&[index as u8]).map_err(snapshot_error)?;
                encoder
                    .write_all(&(key.len() as u32).to_be_bytes())
                    .map_err(snapshot_error)?;
                encoder.write_all(key).map_err(snapshot_error)?;
                encoder
                    .write_all(&(value.len() as u32).to_be_bytes())
                    .map_err(snapshot_error)?;
                encoder.write_all(value).map_err(snapshot_error)?;
                iterator.next();
            }
            iterator.status().map_err(snapshot_error)?;
        }
        let data = encoder.finish().map_err(snapshot_error)?;
        Ok((applied, data))
    }

    /// Replaces the group's key range with a snapshot stream, atomically.
    fn load(&self, data: &[u8]) -> Result<(), StorageError> {
        let mut decoder = zstd::Decoder::new(data).map_err(snapshot_error)?;
        let mut magic = [0u8; 8];
        decoder.read_exact(&mut magic).map_err(snapshot_error)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(snapshot_error("not a Kiln snapshot (bad magic)"));
        }
        let mut batch = WriteBatch::default();
        self.stage_clear(&mut batch)?;
        let start = keys::group_start(self.group);
        let handles = keys::REPLICATED_COLUMN_FAMILIES
            .iter()
            .map(|name| self.storage.cf(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(snapshot_error)?;
        loop {
            let mut tag = [0u8; 1];
            if decoder.read(&mut tag).map_err(snapshot_error)? == 0 {
                break;
            }
            let cf = handles
                .get(tag[0] as usize)
                .ok_or_else(|| snapshot_error(format!("unknown column family {} in snapshot", tag[0])))?;
            let key = read_chunk(&mut decoder)?;
            let value = read_chunk(&mut decoder)?;
            // A snapshot of another group would overwrite foreign data: refuse it.
            if !key.starts_with(&start) {
                return Err(snapshot_error("snapshot holds a key of another group"));
            }
            batch.put_cf(*cf, key, value);
        }
        self.storage
            .db()
            .write_opt(batch, &synced())
            .map_err(snapshot_error)
    }

    fn save_snapshot_file(&self, stored: &StoredSnapshot) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.snapshot_dir).map_err(snapshot_error)?;
        let path = self.snapshot_path();
        let temporary = path.with_extension("tmp");
        let bytes = encode(stored).map_err(snapshot_error)?;
        let mut file = std::fs::File::create(&temporary).map_err(snapshot_error)?;
        file.write_all(&bytes).map_err(snapshot_error)?;
        file.sync_all().map_err(snapshot_error)?;
        std::fs::rename(&temporary, &path).map_err(snapshot_error)?;
        Ok(())
    }

    fn read_snapshot_file(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match std::fs::read(self.snapshot_path()) {
            Ok(bytes) => decode(&bytes).map(Some).map_err(sm_read_error),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(sm_read_error(error)),
        }
    }

    async fn after_replace(&self) -> Result<(), StorageError> {
        match &self.kind {
            MachineKind::Data { writer } => writer.reload().await.map_err(sm_write_error),
            MachineKind::Meta { map, changed } => {
                let storage = self.storage.clone();
                let group = self.group;
                let loaded = off_thread(move || Self::read_cluster_map(&storage, group)).await?;
                let version = loaded.version;
                *map.write() = loaded;
                changed.send_replace(version);
                Ok(())
            }
        }
    }
}

fn read_chunk(reader: &mut impl Read) -> Result<Vec<u8>, StorageError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).map_err(snapshot_error)?;
    let mut chunk = vec![0u8; u32::from_be_bytes(length) as usize];
    reader.read_exact(&mut chunk).map_err(snapshot_error)?;
    Ok(chunk)
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let machine = self.clone();
        let started = std::time::Instant::now();
        let stored = off_thread(move || {
            let (applied, data) = machine.dump()?;
            let snapshot_id = match applied.last_applied {
                Some(log_id) => format!("{}-{}-{}", machine.group, log_id.leader_id.term, log_id.index),
                None => format!("{}-empty", machine.group),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership,
                    snapshot_id,
                },
                data,
            };
            machine.save_snapshot_file(&stored)?;
            Ok(stored)
        })
        .await?;
        self.metrics.snapshot_builds.inc();
        tracing::info!(
            group = self.group,
            bytes = stored.data.len(),
            seconds = started.elapsed().as_secs_f64(),
            "built raft snapshot"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotBuilder = GroupStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let storage = self.storage.clone();
        let group = self.group;
        let applied = off_thread(move || Self::read_applied_state(&storage, group)).await?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let storage = self.storage.clone();
        let group = self.group;
        let mut applied = off_thread(move || Self::read_applied_state(&storage, group)).await?;
        // Which response slot each entry fills, in entry order.
        enum Slot {
            Empty,
            Write,
            Meta(MetaResponse),
            Expired(RetentionOutcome),
        }
        let not_for_metadata = || {
            Slot::Meta(MetaResponse::Rejected(
                "the metadata group stores no profiles".into(),
            ))
        };
        let mut slots = Vec::new();
        let mut writes = Vec::new();
        let mut outcomes = Vec::new();
        let mut map_after: Option<ClusterMap> = None;
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => slots.push(Slot::Empty),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    slots.push(Slot::Empty);
                }
                EntryPayload::Normal(Command::Write(write)) => match &self.kind {
                    MachineKind::Data { .. } => {
                        writes.push(write);
                        slots.push(Slot::Write);
                    }
                    MachineKind::Meta { .. } => slots.push(not_for_metadata()),
                },
                EntryPayload::Normal(Command::UnstampedWrite(write)) => match &self.kind {
                    MachineKind::Data { .. } => {
                        writes.push(AcceptedWrite {
                            write,
                            accepted_unix_ms: now_unix_ms(),
                        });
                        slots.push(Slot::Write);
                    }
                    MachineKind::Meta { .. } => slots.push(not_for_metadata()),
                },
                EntryPayload::Normal(Command::Expire(expiry)) => match &self.kind {
                    MachineKind::Data { writer } => {
                        // In log order: the writes before the expiry commit first, with the
                        // applied log id of the entry before it; then the expiry, with its own
                        // (which also covers blank and membership entries before it).
                        let before = std::mem::take(&mut writes);
                        if !before.is_empty() {
                            let applied_put = self.applied_put(&applied)?;
                            outcomes.extend(
                                writer
                                    .apply(before, vec![applied_put])
                                    .await
                                    .map_err(sm_write_error)?,
                            );
                        }
                        applied.last_applied = Some(entry.log_id);
                        let applied_put = self.applied_put(&applied)?;
                        let outcome = writer
                            .retention(expiry, vec![applied_put])
                            .await
                            .map_err(sm_write_error)?;
                        slots.push(Slot::Expired(outcome));
                    }
                    MachineKind::Meta { .. } => slots.push(not_for_metadata()),
                },
                EntryPayload::Normal(Command::Meta(command)) => match &self.kind {
                    MachineKind::Meta { map, .. } => {
                        let next = map_after.get_or_insert_with(|| map.read().clone());
                        slots.push(Slot::Meta(next.apply(&command)));
                    }
                    MachineKind::Data { .. } => slots.push(Slot::Meta(MetaResponse::Rejected(
                        "data groups do not hold the cluster map".into(),
                    ))),
                },
            }
            applied.last_applied = Some(entry.log_id);
        }
        let mut meta_puts = vec![self.applied_put(&applied)?];
        match &self.kind {
            MachineKind::Data { writer } => {
                outcomes.extend(writer.apply(writes, meta_puts).await.map_err(sm_write_error)?);
            }
            MachineKind::Meta { map, changed } => {
                if let Some(next) = &map_after {
                    meta_puts.push((
                        keys::cluster_map_key(self.group),
                        encode(next).map_err(sm_write_error)?,
                    ));
                }
                let storage = self.storage.clone();
                off_thread(move || {
                    let meta = storage.cf(keys::CF_META).map_err(sm_write_error)?;
                    let mut batch = WriteBatch::default();
                    for (key, value) in meta_puts {
                        batch.put_cf(meta, key, value);
                    }
                    storage.db().write_opt(batch, &synced()).map_err(sm_write_error)
                })
                .await?;
                if let Some(next) = map_after {
                    let version = next.version;
                    *map.write() = next;
                    changed.send_replace(version);
                }
            }
        }
        let mut outcomes = outcomes.into_iter();
        let mut responses = Vec::with_capacity(slots.len());
        for slot in slots {
            responses.push(match slot {
                Slot::Empty => CommandResponse::Empty,
                Slot::Meta(answer) => CommandResponse::Meta(answer),
                Slot::Expired(outcome) => CommandResponse::Expired(outcome),
                Slot::Write => CommandResponse::Written(
                    outcomes
                        .next()
                        .ok_or_else(|| sm_write_error("the writer answered fewer outcomes than writes"))?,
                ),
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let machine = self.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        off_thread(move || {
            machine.load(&stored.data)?;
            machine.storage.forget_group(machine.group);
            machine.save_snapshot_file(&stored)
        })
        .await?;
        self.metrics.snapshot_installs.inc();
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, "installed raft snapshot");
        self.after_replace().await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let machine = self.clone();
        let stored = off_thread(move || machine.read_snapshot_file()).await?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
