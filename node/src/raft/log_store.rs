//! The raft log of one group in the `raft` column family.
//!
//! Correctness contract (openraft's, kept here):
//! - entries are consecutive: `truncate` and `purge` delete whole suffixes and
//!   prefixes, never a hole;
//! - I/O is serialized: every mutation of a group's log goes through `&mut self`
//!   and finishes (synced) before the next one starts;
//! - `append` writes with a synced WAL and only then reports the entries flushed,
//!   so an acknowledged entry survives kill -9 and power loss;
//! - the vote is synced before `save_vote` returns.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes);
// the helpers here return it as is rather than converting at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{WriteBatch, WriteOptions};

use super::{decode, encode, Entry, NodeId, StorageError, TypeConfig};
use crate::storage::keys::{self, GroupId};
use crate::storage::Storage;

/// The raft log, vote and log pointers of one group. Cheap to clone; clones share
/// the database (openraft reads logs from clones while the original appends).
#[derive(Clone)]
pub struct LogStore {
    storage: Storage,
    group: GroupId,
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn read_error(error: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(error.to_string())).into()
}

fn write_error(error: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(error.to_string())).into()
}

/// Runs RocksDB work off the async threads (synced writes block for an fsync).
async fn off_thread<T: Send + 'static>(
    run: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(run).await.map_err(write_error)?
}

impl LogStore {
    /// The log of `group` in `storage`.
    pub fn new(storage: Storage, group: GroupId) -> LogStore {
        LogStore { storage, group }
    }

    fn get_value<T: for<'de> serde::Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.storage.get(keys::CF_RAFT, key).map_err(read_error)? else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(read_error)
    }

    /// Commits `batch` with a synced WAL.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.storage.db().write_opt(batch, &synced()).map_err(write_error)
    }

    fn put_synced<T: serde::Serialize>(&self, key: Vec<u8>, value: &T) -> Result<(), StorageError> {
        self.put_with(key, value, &synced())
    }

    fn put_with<T: serde::Serialize>(
        &self,
        key: Vec<u8>,
        value: &T,
        options: &WriteOptions,
    ) -> Result<(), StorageError> {
        let cf = self.storage.cf(keys::CF_RAFT).map_err(write_error)?;
        let bytes = encode(value).map_err(write_error)?;
        self.storage
            .db()
            .put_cf_opt(cf, key, bytes, options)
            .map_err(write_error)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let cf = self.storage.cf(keys::CF_RAFT).map_err(read_error)?;
        let mut iterator = self.storage.db().raw_iterator_cf(cf);
        iterator.seek_for_prev(keys::raft_entry_key(self.group, u64::MAX));
        let Some(key) = iterator.key() else {
            iterator.status().map_err(read_error)?;
            return Ok(None);
        };
        if keys::decode_raft_entry_key(self.group, key).is_none() {
            return Ok(None);
        }
        let entry: Entry = decode(iterator.value().unwrap_or_default()).map_err(read_error)?;
        Ok(Some(entry.log_id))
    }

    fn read_range(&self, start: u64, end_exclusive: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let cf = self.storage.cf(keys::CF_RAFT).map_err(read_error)?;
        let mut iterator = self.storage.db().raw_iterator_cf(cf);
        iterator.seek(keys::raft_entry_key(self.group, start));
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            let Some(index) = keys::decode_raft_entry_key(self.group, key) else {
                break;
            };
            if end_exclusive.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry = decode(value).map_err(read_error)?;
            debug_assert_eq!(
                entry.log_id.index, index,
                "a log entry is stored under its own index"
            );
            entries.push(entry);
            iterator.next();
        }
        iterator.status().map_err(read_error)?;
        Ok(entries)
    }

    /// Deletes entries with `from <= index < to` (`to = None`: to the end).
    fn delete_entries(&self, batch: &mut WriteBatch, from: u64, to: Option<u64>) -> Result<(), StorageError> {
        let cf = self.storage.cf(keys::CF_RAFT).map_err(write_error)?;
        let start = keys::raft_entry_key(self.group, from);
        match to {
            Some(to) => batch.delete_range_cf(cf, start, keys::raft_entry_key(self.group, to)),
            None => {
                // DeleteRange's end is exclusive; the last possible index goes separately.
                batch.delete_range_cf(cf, start, keys::raft_entry_key(self.group, u64::MAX));
                batch.delete_cf(cf, keys::raft_entry_key(self.group, u64::MAX));
            }
        }
        Ok(())
    }

    /// Removes the whole log and vote of the group (when this node stops hosting it).
    pub fn destroy(&self) -> Result<(), StorageError> {
        let cf = self.storage.cf(keys::CF_RAFT).map_err(write_error)?;
        let mut batch = WriteBatch::default();
        match keys::group_end(self.group) {
            Some(end) => batch.delete_range_cf(cf, keys::group_start(self.group), end),
            None => return Err(write_error("the node-local group has no raft log")),
        }
        self.write_synced(batch)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(end) => end.checked_add(1),
            Bound::Excluded(end) => Some(*end),
            Bound::Unbounded => None,
        };
        let store = self.clone();
        off_thread(move || store.read_range(start, end_exclusive)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let store = self.clone();
        off_thread(move || {
            let last_purged_log_id: Option<LogId<NodeId>> =
                store.get_value(&keys::raft_purged_key(store.group))?;
            let last_log_id = store.last_entry_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let store = self.clone();
        let vote = *vote;
        off_thread(move || {
            store
                .put_synced(keys::raft_vote_key(store.group), &vote)
                .map_err(|error| StorageIOError::write_vote(AnyError::error(error.to_string())).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let store = self.clone();
        off_thread(move || store.get_value(&keys::raft_vote_key(store.group))).await
    }

    /// Not fsynced: the pointer only lets a restarted replica re-apply committed
    /// entries before it hears from a leader, so losing its latest value costs
    /// nothing but that head start. It cannot claim more than was durable either:
    /// it is written after the entries it names were synced, and the node's one WAL
    /// loses only a suffix in a crash, so a surviving pointer implies the writes
    /// before it survived. (It was synced once: one extra fsync per commit advance
    /// on every replica, awaited by openraft's core loop.)
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        let store = self.clone();
        off_thread(move || {
            store.put_with(
                keys::raft_committed_key(store.group),
                &committed,
                &WriteOptions::default(),
            )
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let store = self.clone();
        off_thread(move || {
            Ok(store
                .get_value::<Option<LogId<NodeId>>>(&keys::raft_committed_key(store.group))?
                .flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = self.clone();
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((
                keys::raft_entry_key(self.group, entry.log_id.index),
                encode(&entry).map_err(write_error)?,
            ));
        }
        let result = off_thread(move || {
            let cf = store.storage.cf(keys::CF_RAFT).map_err(write_error)?;
            let mut batch = WriteBatch::default();
            for (key, value) in encoded {
                batch.put_cf(cf, key, value);
            }
            store.write_synced(batch)
        })
        .await;
        // The entries are readable and durable now (or the append failed): tell
        // openraft either way, then report the failure to the caller too.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let store = self.clone();
        off_thread(move || {
            let mut batch = WriteBatch::default();
            store.delete_entries(&mut batch, log_id.index, None)?;
            store.write_synced(batch)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let store = self.clone();
        off_thread(move || {
            // State machine applies are not fsynced (the log is their durability):
            // make them durable before the log entries they came from go away.
            store.storage.db().flush_wal(true).map_err(write_error)?;
            // The purged pointer first, in the same batch: a crash never leaves the log
            // shorter than the pointer says.
            let cf = store.storage.cf(keys::CF_RAFT).map_err(write_error)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf,
                keys::raft_purged_key(store.group),
                encode(&log_id).map_err(write_error)?,
            );
            store.delete_entries(&mut batch, 0, log_id.index.checked_add(1))?;
            store.write_synced(batch)
        })
        .await
    }
}
