//! The storage engine: one RocksDB per node, column families per kind of data, all
//! keys from [`keys`].
//!
//! Writes go through the single [`writer::Writer`] thread, which assigns ordinals and
//! dense stack ids and commits group-committed `WriteBatch`es with a synced WAL; the
//! batch is the unit of atomicity, so a write is stored whole or not at all. Reads
//! use the [`Storage`] handle directly from any thread.

pub mod blocks;
pub mod codec;
pub mod committed;
pub mod disk;
pub mod keys;
pub mod postings;
pub mod symbols;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kiln_model::labels::LabelSet;
use kiln_model::profile_type::ProfileType;
use parking_lot::Mutex;
use roaring::RoaringBitmap;
use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

use self::codec::{put_varint, Reader};
use self::keys::{GroupId, SymbolKind};
use crate::error::NodeError;

/// A series as stored in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRecord {
    /// Dense per-group ordinal used in bitmaps and sample keys.
    pub ordinal: u32,
    /// Profile type.
    pub profile_type: ProfileType,
    /// Labels (user labels only; the type is separate).
    pub labels: LabelSet,
}

fn put_string(buffer: &mut Vec<u8>, text: &str) {
    put_varint(buffer, text.len() as u64);
    buffer.extend_from_slice(text.as_bytes());
}

fn read_string(reader: &mut Reader<'_>) -> Result<String, NodeError> {
    let length = reader.count()?;
    String::from_utf8(reader.take(length)?.to_vec()).map_err(|error| NodeError::Corrupt(error.to_string()))
}

impl SeriesRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(64);
        buffer.extend_from_slice(&self.ordinal.to_be_bytes());
        put_string(&mut buffer, &self.profile_type.id());
        put_varint(&mut buffer, self.labels.len() as u64);
        for (name, value) in self.labels.pairs() {
            put_string(&mut buffer, name);
            put_string(&mut buffer, value);
        }
        buffer
    }

    /// Decodes a record written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        let mut reader = Reader::new(bytes, "series record");
        let ordinal_bytes = reader.take(4)?;
        let ordinal = u32::from_be_bytes([
            ordinal_bytes[0],
            ordinal_bytes[1],
            ordinal_bytes[2],
            ordinal_bytes[3],
        ]);
        let type_id = read_string(&mut reader)?;
        let profile_type = ProfileType::parse(&type_id)
            .map_err(|error| NodeError::Corrupt(format!("series record: {error}")))?;
        let count = reader.count()?;
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((read_string(&mut reader)?, read_string(&mut reader)?));
        }
        let labels = LabelSet::from_stored_pairs(pairs)
            .map_err(|error| NodeError::Corrupt(format!("series record: {error}")))?;
        Ok(SeriesRecord {
            ordinal,
            profile_type,
            labels,
        })
    }
}

/// Tuning knobs of the storage engine.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// RocksDB block cache, bytes.
    pub block_cache_bytes: usize,
    /// Entries kept in each in-memory symbol cache before it is cleared.
    pub symbol_cache_entries: usize,
    /// Writes are refused while less than this is free on the data directory's file system
    /// (see [`disk::DiskReserve`]).
    pub disk_reserve_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            block_cache_bytes: 256 << 20,
            symbol_cache_entries: 1 << 20,
            disk_reserve_bytes: disk::DEFAULT_DISK_RESERVE_BYTES,
        }
    }
}

/// A bounded cache of immutable values (content-addressed symbols never change, so
/// entries never go stale). Cleared whole when full: simple, and misses only cost a
/// RocksDB read.
pub struct ImmutableCache<K, V> {
    entries: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> ImmutableCache<K, V> {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        ImmutableCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The cached value of each key, in order, under one lock.
    ///
    /// Why one lock: a merge looks up thousands of stacks, and the groups of a fan-out look
    /// theirs up at the same time; a lock per key made them wait on each other.
    pub fn get_many(&self, keys: impl IntoIterator<Item = K>) -> Vec<Option<V>> {
        let entries = self.entries.lock();
        keys.into_iter().map(|key| entries.get(&key).cloned()).collect()
    }

    /// Caches a value.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// Drops every entry whose key matches `stale`.
    pub fn forget(&self, stale: impl Fn(&K) -> bool) {
        self.entries.lock().retain(|key, _| !stale(key));
    }
}

/// Decoded stack records by (group, dense stack id).
pub type StackCache = ImmutableCache<(GroupId, u64), Arc<[u64]>>;

/// Encoded symbol records by (kind, content id), shared by every group.
pub type SymbolCache = ImmutableCache<(u8, u64), Arc<[u8]>>;

/// The node's storage: a RocksDB handle plus read caches. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    /// Decoded stack records ((group, dense stack id) -> location ids). Dense ids
    /// are per group, so the group is part of the key; a group whose data is
    /// replaced (raft snapshot) or dropped is forgotten with [`Storage::forget_group`].
    pub stack_cache: Arc<StackCache>,
    /// Encoded symbol records by (kind, content id). No group in the key: a content
    /// id is the hash of the record, so every group that stores it stores the same
    /// bytes, and a fanned-out query resolves a symbol its groups share once, not
    /// once per group. Never stale, so never forgotten.
    symbol_cache: Arc<SymbolCache>,
    /// Free space on the data directory's file system, against the reserve writes must leave.
    disk: Arc<disk::DiskReserve>,
    options: StorageOptions,
}

fn column_family_options(name: &str, cache: &rocksdb::Cache) -> Options {
    let mut options = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    match name {
        keys::CF_POSTINGS => {
            options.set_merge_operator(
                postings::MERGE_OPERATOR_NAME,
                postings::full_merge,
                postings::partial_merge,
            );
            options.set_compression_type(DBCompressionType::Lz4);
        }
        keys::CF_SAMPLES => {
            table.set_block_size(64 << 10);
            options.set_compression_type(DBCompressionType::Zstd);
            options.set_bottommost_compression_type(DBCompressionType::Zstd);
        }
        keys::CF_SYMBOLS => {
            table.set_block_size(16 << 10);
            options.set_compression_type(DBCompressionType::Zstd);
        }
        // Raft entries are written once, read back while replicating and applying,
        // and deleted after the next snapshot: compressing them costs CPU on every
        // flush and compaction and saves disk only until the purge.
        keys::CF_RAFT => options.set_compression_type(DBCompressionType::None),
        _ => options.set_compression_type(DBCompressionType::Lz4),
    }
    options.set_block_based_table_factory(&table);
    options
}

impl Storage {
    /// Opens (creating if needed) the database under `path`.
    pub fn open(path: &Path, storage_options: StorageOptions) -> Result<Storage, NodeError> {
        let cache = rocksdb::Cache::new_lru_cache(storage_options.block_cache_bytes);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_keep_log_file_num(5);
        // A WAL file is kept until every column family's memtable holding data from
        // it is flushed; rarely written families (`meta`) would otherwise keep
        // gigabytes of WAL alive. Past this size RocksDB flushes those families.
        // Small on purpose: it also bounds how much recent data sits in memtables,
        // where fanned-out merges read it markedly slower than from SST blocks
        // (BENCHMARKS.md, "Cluster": 1.54x the one-group merge at 256 MiB, 1.08x at
        // 16 MiB, same quick run otherwise).
        options.set_max_total_wal_size(32 << 20);
        let descriptors = keys::COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, column_family_options(name, &cache)));
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        Ok(Storage {
            db: Arc::new(db),
            stack_cache: Arc::new(ImmutableCache::new(storage_options.symbol_cache_entries)),
            symbol_cache: Arc::new(ImmutableCache::new(storage_options.symbol_cache_entries)),
            disk: Arc::new(disk::DiskReserve::new(path, storage_options.disk_reserve_bytes)),
            options: storage_options,
        })
    }

    /// The options this storage was opened with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// Free space on the data directory's file system, against the reserve writes must leave.
    pub fn disk(&self) -> &disk::DiskReserve {
        &self.disk
    }

    /// The RocksDB handle.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A column family handle. The families are created at open, so a missing one
    /// is a bug.
    pub fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, NodeError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| NodeError::Internal(format!("column family {name} is missing")))
    }

    /// Reads one key.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    /// Reads many keys of one column family at once.
    pub fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, NodeError> {
        let handle = self.cf(cf)?;
        self.db
            .batched_multi_get_cf(handle, keys.iter(), false)
            .into_iter()
            .map(|result| {
                result
                    .map(|value| value.map(|slice| slice.to_vec()))
                    .map_err(NodeError::from)
            })
            .collect()
    }

    /// Every `(key, value)` with the given prefix, in key order, passed to `visit`
    /// until it returns false.
    pub fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, NodeError>,
    ) -> Result<(), NodeError> {
        self.scan_range(cf, prefix, None, |key, value| {
            if !key.starts_with(prefix) {
                return Ok(false);
            }
            visit(key, value)
        })
    }

    /// Every `(key, value)` from `start` (inclusive) to `end` (exclusive, or the end
    /// of the column family), passed to `visit` until it returns false.
    pub fn scan_range(
        &self,
        cf: &str,
        start: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, NodeError>,
    ) -> Result<(), NodeError> {
        let mut read_options = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            read_options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iterator = self.db.raw_iterator_cf_opt(self.cf(cf)?, read_options);
        iterator.seek(start);
        while iterator.valid() {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else {
                break;
            };
            if !visit(key, value)? {
                return Ok(());
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(())
    }

    /// The posting bitmap of `name=value` (empty when absent).
    pub fn posting(&self, group: GroupId, name: &str, value: &str) -> Result<RoaringBitmap, NodeError> {
        match self.get(keys::CF_POSTINGS, &keys::posting_key(group, name, value))? {
            None => Ok(RoaringBitmap::new()),
            Some(bytes) => postings::decode_posting(&bytes)
                .ok_or_else(|| NodeError::Corrupt(format!("posting {name}={value} is not a bitmap"))),
        }
    }

    /// Every non-empty posting under `prefix` (see [`keys::posting_name_prefix`] and
    /// [`keys::posting_group_prefix`]), in key order: `visit(name, value, bitmap)`.
    pub fn scan_postings(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&str, &str, RoaringBitmap),
    ) -> Result<(), NodeError> {
        self.scan_prefix(keys::CF_POSTINGS, prefix, |key, value| {
            let Some((name, label_value)) = keys::decode_posting_key(key) else {
                return Err(NodeError::Corrupt("posting key is not name\\0value".into()));
            };
            let bitmap = postings::decode_posting(value)
                .ok_or_else(|| NodeError::Corrupt(format!("posting {name}={label_value} is not a bitmap")))?;
            if !bitmap.is_empty() {
                visit(name, label_value, bitmap);
            }
            Ok(true)
        })
    }

    /// Every value of label `name` with its bitmap.
    pub fn posting_values(
        &self,
        group: GroupId,
        name: &str,
    ) -> Result<Vec<(String, RoaringBitmap)>, NodeError> {
        let mut values = Vec::new();
        self.scan_postings(&keys::posting_name_prefix(group, name), |_, value, bitmap| {
            values.push((value.to_string(), bitmap));
        })?;
        Ok(values)
    }

    /// The series record of an ordinal, if the series exists.
    pub fn series_by_ordinal(&self, group: GroupId, ordinal: u32) -> Result<Option<SeriesRecord>, NodeError> {
        let Some(hash) = self.get(keys::CF_SERIES, &keys::series_by_ordinal_key(group, ordinal))? else {
            return Ok(None);
        };
        let hash = u64::from_be_bytes(
            hash.as_slice()
                .try_into()
                .map_err(|_| NodeError::Corrupt("series hash is not 8 bytes".into()))?,
        );
        let Some(record) = self.get(keys::CF_SERIES, &keys::series_by_hash_key(group, hash))? else {
            return Ok(None);
        };
        SeriesRecord::decode(&record).map(Some)
    }

    /// Last sample time (unix ms) of a series, if known.
    pub fn series_last_seen(&self, group: GroupId, ordinal: u32) -> Result<Option<i64>, NodeError> {
        let Some(bytes) = self.get(keys::CF_SERIES, &keys::series_last_seen_key(group, ordinal))? else {
            return Ok(None);
        };
        let array: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::Corrupt("last-seen time is not 8 bytes".into()))?;
        Ok(Some(i64::from_be_bytes(array)))
    }

    /// Forgets every cached record of `group` (its data was replaced or deleted).
    pub fn forget_group(&self, group: GroupId) {
        self.stack_cache
            .forget(|(cached_group, _)| *cached_group == group);
    }

    /// Location ids of dense stacks, through the stack cache.
    pub fn stacks(&self, group: GroupId, stack_ids: &[u64]) -> Result<Vec<Arc<[u64]>>, NodeError> {
        let mut result: Vec<Option<Arc<[u64]>>> =
            self.stack_cache.get_many(stack_ids.iter().map(|id| (group, *id)));
        let missing: Vec<usize> = (0..stack_ids.len())
            .filter(|index| result[*index].is_none())
            .collect();
        let missing_keys: Vec<Vec<u8>> = missing
            .iter()
            .map(|index| keys::symbol_key(group, SymbolKind::Stack, stack_ids[*index]))
            .collect();
        let values = self.multi_get(keys::CF_SYMBOLS, &missing_keys)?;
        for (index, value) in missing.into_iter().zip(values) {
            let Some(bytes) = value else {
                return Err(NodeError::Corrupt(format!(
                    "stack {} is referenced but not stored",
                    stack_ids[index]
                )));
            };
            let locations: Arc<[u64]> = symbols::decode_stack(&bytes)?.into();
            self.stack_cache
                .insert((group, stack_ids[index]), locations.clone());
            result[index] = Some(locations);
        }
        Ok(result.into_iter().flatten().collect())
    }

    /// Raw symbol records of one kind stored in `group`, by content id; `None` for an
    /// id the group does not hold (yet: a follower that has not applied the write, or
    /// no longer: retention). Content-addressed, so a record cached from any group is
    /// the one `group` would return.
    pub fn symbols_available(
        &self,
        group: GroupId,
        kind: SymbolKind,
        ids: &[u64],
    ) -> Result<Vec<Option<Vec<u8>>>, NodeError> {
        let mut result: Vec<Option<Vec<u8>>> = self
            .symbol_cache
            .get_many(ids.iter().map(|id| (kind as u8, *id)))
            .into_iter()
            .map(|cached| cached.map(|bytes| bytes.to_vec()))
            .collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|index| result[*index].is_none()).collect();
        if missing.is_empty() {
            return Ok(result);
        }
        let symbol_keys: Vec<Vec<u8>> = missing
            .iter()
            .map(|index| keys::symbol_key(group, kind, ids[*index]))
            .collect();
        let values = self.multi_get(keys::CF_SYMBOLS, &symbol_keys)?;
        for (index, value) in missing.into_iter().zip(values) {
            if let Some(bytes) = value {
                self.symbol_cache
                    .insert((kind as u8, ids[index]), Arc::from(bytes.as_slice()));
                result[index] = Some(bytes);
            }
        }
        Ok(result)
    }

    /// Flushes memtables (used at shutdown so the next start replays little WAL).
    pub fn flush(&self) -> Result<(), NodeError> {
        for name in keys::COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name)?)?;
        }
        Ok(())
    }

    /// Bytes of live SST files plus WAL, for metrics and benchmarks.
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0u64;
        for name in keys::COLUMN_FAMILIES {
            if let Ok(handle) = self.cf(name) {
                if let Ok(Some(bytes)) = self
                    .db
                    .property_int_value_cf(handle, "rocksdb.total-sst-files-size")
                {
                    total += bytes;
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_cache_answers_each_key_in_order_and_clears_when_full() {
        let cache: ImmutableCache<u64, &str> = ImmutableCache::new(2);
        cache.insert(1, "one");
        cache.insert(2, "two");
        assert_eq!(cache.get_many([2, 3, 1]), vec![Some("two"), None, Some("one")]);
        cache.insert(3, "three");
        assert_eq!(cache.get_many([1, 2, 3]), vec![None, None, Some("three")]);
    }

    #[test]
    fn series_records_round_trip() {
        let record = SeriesRecord {
            ordinal: 42,
            profile_type: ProfileType::parse("cpu").unwrap(),
            labels: LabelSet::from_user_pairs([("job", "api"), ("zone", "a")]).unwrap(),
        };
        assert_eq!(SeriesRecord::decode(&record.encode()).unwrap(), record);
        assert!(SeriesRecord::decode(&record.encode()[..7]).is_err());
    }
}
