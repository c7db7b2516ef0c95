//! Every RocksDB key Kiln writes, encoded in this one place.
//!
//! Layout rule: every key starts with the shard group id (u32, big-endian), then a
//! one-byte tag, then big-endian ids, so that a group's data is one contiguous key
//! range, ids sort numerically, and time-partitioned sample keys sort by time.
//! Column families separate data with different access patterns and options.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `meta` | group, `o` | next series ordinal (u32 BE) |
//! | `meta` | group, `k` | next stack id (u64 BE) |
//! | `meta` | group, `q` | next write sequence (u64 BE) |
//! | `meta` | group, `i`, idempotency key | time the batch was stored (unix ms, i64 BE) |
//! | `series` | group, `h`, series hash | series record |
//! | `series` | group, `o`, ordinal | series hash (u64 BE) |
//! | `series` | group, `l`, ordinal | last sample time (unix ms, i64 BE) |
//! | `postings` | group, name, 0x00, value | roaring bitmap of ordinals (merge operator) |
//! | `symbols` | group, `s`/`f`/`m`/`l`, content id | string / function / mapping / location |
//! | `symbols` | group, `h`, stack hash | dense stack id (u64 BE) |
//! | `symbols` | group, `k`, stack id | stack record (location ids, leaf first) |
//! | `samples` | group, partition start (unix ms), ordinal, time (unix ns), sequence | sample block |
//! | `meta` | group, `a` | raft state machine: last applied log id + membership |
//! | `meta` | group, `c` | metadata group only: the cluster map |
//! | `raft` | group, `e`, log index | raft log entry |
//! | `raft` | group, `v` | raft vote |
//! | `raft` | group, `m` | last committed log id |
//! | `raft` | group, `p` | last purged log id |
//! | `meta` | [`NODE_LOCAL_GROUP`], `n` | this node's id and bootstrap record |
//! | `meta` | [`NODE_LOCAL_GROUP`], `g`, group | a group this node hosts a replica of |
//!
//! A group's replicated state is exactly its key range in `meta`, `series`,
//! `postings`, `symbols` and `samples` ([`REPLICATED_COLUMN_FAMILIES`]); raft
//! snapshots copy that range, and the raft log in `raft` is never part of it.

/// A shard group id. A single node keeps everything in group 0.
pub type GroupId = u32;

/// The column families, in the order they are opened.
pub const COLUMN_FAMILIES: [&str; 6] = [CF_META, CF_SERIES, CF_POSTINGS, CF_SYMBOLS, CF_SAMPLES, CF_RAFT];
/// The column families that hold a group's replicated state machine.
pub const REPLICATED_COLUMN_FAMILIES: [&str; 5] = [CF_META, CF_SERIES, CF_POSTINGS, CF_SYMBOLS, CF_SAMPLES];
/// Raft logs, votes and log pointers of every group.
pub const CF_RAFT: &str = "raft";
/// Records of this node alone (its id, the groups it hosts), never replicated.
pub const NODE_LOCAL_GROUP: GroupId = GroupId::MAX;
/// Counters and idempotency keys.
pub const CF_META: &str = "meta";
/// Series registry.
pub const CF_SERIES: &str = "series";
/// Label postings (roaring bitmaps, merge operator).
pub const CF_POSTINGS: &str = "postings";
/// Content-addressed symbols and stacks.
pub const CF_SYMBOLS: &str = "symbols";
/// Time-partitioned sample blocks.
pub const CF_SAMPLES: &str = "samples";

/// Reserved posting name that indexes the profile type id of each series.
pub const PROFILE_TYPE_POSTING: &str = "__type__";

const TAG_NEXT_ORDINAL: u8 = b'o';
const TAG_NEXT_STACK_ID: u8 = b'k';
const TAG_NEXT_SEQUENCE: u8 = b'q';
const TAG_IDEMPOTENCY: u8 = b'i';
const TAG_SERIES_BY_HASH: u8 = b'h';
const TAG_SERIES_BY_ORDINAL: u8 = b'o';
const TAG_SERIES_LAST_SEEN: u8 = b'l';
const TAG_APPLIED_STATE: u8 = b'a';
const TAG_CLUSTER_MAP: u8 = b'c';
const TAG_RAFT_ENTRY: u8 = b'e';
const TAG_RAFT_VOTE: u8 = b'v';
const TAG_RAFT_COMMITTED: u8 = b'm';
const TAG_RAFT_PURGED: u8 = b'p';
const TAG_NODE_IDENTITY: u8 = b'n';
const TAG_HOSTED_GROUP: u8 = b'g';

/// Kinds of content-addressed symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum SymbolKind {
    /// A string (function names, file names).
    String = b's',
    /// A function record.
    Function = b'f',
    /// A mapping record.
    Mapping = b'm',
    /// A location record.
    Location = b'l',
    /// Stack hash -> dense stack id.
    StackByHash = b'h',
    /// Dense stack id -> stack record.
    Stack = b'k',
}

fn with_group(group: GroupId, tag: u8, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + capacity);
    key.extend_from_slice(&group.to_be_bytes());
    key.push(tag);
    key
}

/// The first key of a group in any column family.
pub fn group_start(group: GroupId) -> Vec<u8> {
    group.to_be_bytes().to_vec()
}

/// The first key after a group in any column family (for `DeleteRange` and range
/// iteration); `None` for the last group id, whose range runs to the end.
pub fn group_end(group: GroupId) -> Option<Vec<u8>> {
    group.checked_add(1).map(|next| next.to_be_bytes().to_vec())
}

/// `meta`: the raft state machine's last applied log id and membership.
pub fn applied_state_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_APPLIED_STATE, 0)
}

/// `meta`: the cluster map (metadata group only).
pub fn cluster_map_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_CLUSTER_MAP, 0)
}

/// `raft`: a log entry.
pub fn raft_entry_key(group: GroupId, index: u64) -> Vec<u8> {
    let mut key = with_group(group, TAG_RAFT_ENTRY, 8);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The log index of a `raft` entry key of `group`, `None` for any other key.
pub fn decode_raft_entry_key(group: GroupId, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(&with_group(group, TAG_RAFT_ENTRY, 0)[..])?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// `raft`: the vote.
pub fn raft_vote_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_RAFT_VOTE, 0)
}

/// `raft`: the last committed log id.
pub fn raft_committed_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_RAFT_COMMITTED, 0)
}

/// `raft`: the last purged log id.
pub fn raft_purged_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_RAFT_PURGED, 0)
}

/// `meta`: this node's identity record.
pub fn node_identity_key() -> Vec<u8> {
    with_group(NODE_LOCAL_GROUP, TAG_NODE_IDENTITY, 0)
}

/// `meta`: marks `group` as hosted on this node.
pub fn hosted_group_key(group: GroupId) -> Vec<u8> {
    let mut key = with_group(NODE_LOCAL_GROUP, TAG_HOSTED_GROUP, 4);
    key.extend_from_slice(&group.to_be_bytes());
    key
}

/// `meta`: prefix of every hosted-group marker.
pub fn hosted_group_prefix() -> Vec<u8> {
    with_group(NODE_LOCAL_GROUP, TAG_HOSTED_GROUP, 0)
}

/// The group of a hosted-group marker key.
pub fn decode_hosted_group_key(key: &[u8]) -> Option<GroupId> {
    let rest = key.strip_prefix(&hosted_group_prefix()[..])?;
    Some(GroupId::from_be_bytes(rest.try_into().ok()?))
}

/// `meta`: the next free series ordinal.
pub fn next_ordinal_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_NEXT_ORDINAL, 0)
}

/// `meta`: the next free dense stack id.
pub fn next_stack_id_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_NEXT_STACK_ID, 0)
}

/// `meta`: the next write sequence number.
pub fn next_sequence_key(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_NEXT_SEQUENCE, 0)
}

/// `meta`: an idempotency key that was stored.
pub fn idempotency_key(group: GroupId, key: &str) -> Vec<u8> {
    let mut encoded = with_group(group, TAG_IDEMPOTENCY, key.len());
    encoded.extend_from_slice(key.as_bytes());
    encoded
}

/// `meta`: prefix of every idempotency key of a group.
pub fn idempotency_prefix(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_IDEMPOTENCY, 0)
}

/// `series`: series hash -> series record.
pub fn series_by_hash_key(group: GroupId, series_hash: u64) -> Vec<u8> {
    let mut key = with_group(group, TAG_SERIES_BY_HASH, 8);
    key.extend_from_slice(&series_hash.to_be_bytes());
    key
}

/// `series`: ordinal -> series hash.
pub fn series_by_ordinal_key(group: GroupId, ordinal: u32) -> Vec<u8> {
    let mut key = with_group(group, TAG_SERIES_BY_ORDINAL, 4);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key
}

/// `series`: ordinal -> last sample time.
pub fn series_last_seen_key(group: GroupId, ordinal: u32) -> Vec<u8> {
    let mut key = with_group(group, TAG_SERIES_LAST_SEEN, 4);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key
}

/// `series`: prefix of every last-seen key of a group.
pub fn series_last_seen_prefix(group: GroupId) -> Vec<u8> {
    with_group(group, TAG_SERIES_LAST_SEEN, 0)
}

/// Decodes the ordinal of a [`series_last_seen_key`].
pub fn decode_series_last_seen_key(key: &[u8]) -> Option<u32> {
    let ordinal = key.get(5..9)?;
    Some(u32::from_be_bytes(ordinal.try_into().ok()?))
}

/// `postings`: `name=value`. Names cannot contain 0x00 (label name rules), so the
/// separator keeps `a=bc` and `ab=c` apart and all values of a name contiguous.
pub fn posting_key(group: GroupId, name: &str, value: &str) -> Vec<u8> {
    let mut key = posting_name_prefix(group, name);
    key.extend_from_slice(value.as_bytes());
    key
}

/// `postings`: prefix of every value of `name`.
pub fn posting_name_prefix(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(6 + name.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// `postings`: prefix of the whole group.
pub fn posting_group_prefix(group: GroupId) -> Vec<u8> {
    group.to_be_bytes().to_vec()
}

/// Splits a posting key into `(name, value)`.
pub fn decode_posting_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = key.get(4..)?;
    let separator = rest.iter().position(|byte| *byte == 0)?;
    let name = std::str::from_utf8(&rest[..separator]).ok()?;
    let value = std::str::from_utf8(&rest[separator + 1..]).ok()?;
    Some((name, value))
}

/// `symbols`: a content-addressed symbol or a stack.
pub fn symbol_key(group: GroupId, kind: SymbolKind, id: u64) -> Vec<u8> {
    let mut key = with_group(group, kind as u8, 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Width of a sample time partition.
pub const PARTITION_MILLIS: i64 = 60 * 60 * 1000;

/// Start (unix ms) of the partition holding `time_unix_nanos`.
pub fn partition_of(time_unix_nanos: i64) -> i64 {
    let millis = time_unix_nanos.div_euclid(1_000_000);
    millis - millis.rem_euclid(PARTITION_MILLIS)
}

/// Maps signed times onto unsigned big-endian order (sign bit flipped).
fn ordered_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered_i64(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `samples`: one sample block.
pub fn sample_key(
    group: GroupId,
    partition_start_ms: i64,
    ordinal: u32,
    time_unix_nanos: i64,
    sequence: u64,
) -> Vec<u8> {
    let mut key = sample_series_prefix(group, partition_start_ms, ordinal);
    key.extend_from_slice(&ordered_i64(time_unix_nanos));
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// `samples`: prefix of one series in one partition.
pub fn sample_series_prefix(group: GroupId, partition_start_ms: i64, ordinal: u32) -> Vec<u8> {
    let mut key = sample_partition_prefix(group, partition_start_ms);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key
}

/// `samples`: prefix of one partition of a group.
pub fn sample_partition_prefix(group: GroupId, partition_start_ms: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 8 + 4 + 16);
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(&ordered_i64(partition_start_ms));
    key
}

/// The parts of a sample key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleKey {
    /// Shard group.
    pub group: GroupId,
    /// Partition start, unix ms.
    pub partition_start_ms: i64,
    /// Series ordinal.
    pub ordinal: u32,
    /// Sample time, unix ns.
    pub time_unix_nanos: i64,
    /// Write sequence, unique per group.
    pub sequence: u64,
}

/// Decodes a [`sample_key`].
pub fn decode_sample_key(key: &[u8]) -> Option<SampleKey> {
    if key.len() != 32 {
        return None;
    }
    Some(SampleKey {
        group: u32::from_be_bytes(key[0..4].try_into().ok()?),
        partition_start_ms: from_ordered_i64(key[4..12].try_into().ok()?),
        ordinal: u32::from_be_bytes(key[12..16].try_into().ok()?),
        time_unix_nanos: from_ordered_i64(key[16..24].try_into().ok()?),
        sequence: u64::from_be_bytes(key[24..32].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn posting_keys_round_trip_and_keep_names_apart() {
        let key = posting_key(3, "job", "api=1");
        assert_eq!(decode_posting_key(&key), Some(("job", "api=1")));
        assert!(!posting_key(0, "ab", "c").starts_with(&posting_name_prefix(0, "a")));
        assert!(posting_key(0, "a", "bc").starts_with(&posting_name_prefix(0, "a")));
    }

    #[test]
    fn partition_of_handles_negative_times() {
        assert_eq!(partition_of(0), 0);
        assert_eq!(partition_of(-1), -PARTITION_MILLIS);
        assert_eq!(partition_of(PARTITION_MILLIS * 1_000_000 + 5), PARTITION_MILLIS);
    }

    proptest! {
        #[test]
        fn sample_keys_round_trip(group: u32, partition: i64, ordinal: u32, time: i64, sequence: u64) {
            let key = sample_key(group, partition, ordinal, time, sequence);
            let decoded = decode_sample_key(&key).unwrap();
            prop_assert_eq!(decoded, SampleKey { group, partition_start_ms: partition, ordinal, time_unix_nanos: time, sequence });
        }

        #[test]
        fn sample_keys_sort_by_group_partition_series_time(
            a in (0u32..3, -5i64..5, 0u32..3, any::<i64>(), any::<u64>()),
            b in (0u32..3, -5i64..5, 0u32..3, any::<i64>(), any::<u64>()),
        ) {
            let key_a = sample_key(a.0, a.1, a.2, a.3, a.4);
            let key_b = sample_key(b.0, b.1, b.2, b.3, b.4);
            prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
        }

        #[test]
        fn raft_entry_keys_round_trip_and_sort_by_index(group in 0u32..u32::MAX, a: u64, b: u64) {
            let key_a = raft_entry_key(group, a);
            prop_assert_eq!(decode_raft_entry_key(group, &key_a), Some(a));
            prop_assert_eq!(decode_raft_entry_key(group.wrapping_add(1), &key_a), None);
            prop_assert_eq!(key_a.cmp(&raft_entry_key(group, b)), a.cmp(&b));
        }

        #[test]
        fn every_key_of_a_group_lies_in_its_range(group in 0u32..u32::MAX - 1, ordinal: u32, id: u64) {
            let start = group_start(group);
            let end = group_end(group).unwrap();
            for key in [
                applied_state_key(group),
                cluster_map_key(group),
                raft_entry_key(group, id),
                raft_vote_key(group),
                series_by_ordinal_key(group, ordinal),
                symbol_key(group, SymbolKind::Location, id),
                posting_key(group, "job", "api"),
                idempotency_key(group, "k"),
            ] {
                prop_assert!(key >= start && key < end);
            }
        }

        #[test]
        fn hosted_group_keys_round_trip(group: u32) {
            prop_assert_eq!(decode_hosted_group_key(&hosted_group_key(group)), Some(group));
        }

        #[test]
        fn symbol_keys_sort_by_id(a: u64, b: u64) {
            let key_a = symbol_key(1, SymbolKind::Stack, a);
            let key_b = symbol_key(1, SymbolKind::Stack, b);
            prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
        }
    }
}
