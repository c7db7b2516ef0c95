//! Turns a `WriteRequest` into a [`PreparedWrite`]: every pprof decoded and validated,
//! every label set checked, every symbol encoded and content-addressed. This is the
//! CPU-heavy part of ingest and runs on the caller's thread (in parallel across
//! requests); the writer thread only assigns ids and commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_model::labels::{routing_hash, series_hash, LabelSet};
use kiln_model::pprof::decode_pprof;
use kiln_model::profile_type::ProfileType;
use kiln_model::time::{format_unix_ms, now_unix_nanos};
use kiln_proto::kiln::v1 as api;

use crate::error::NodeError;
use crate::storage::committed::CommittedContent;
use crate::storage::symbols::{profile_symbols, stack_hash, ContentIdHash, SymbolWrite};

/// Longest idempotency key accepted, bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// One distinct stack of a pprof: content hash and encoded record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PreparedStack {
    /// Content hash of the stack record.
    pub hash: u64,
    /// Encoded stack record (location ids, leaf first); `None` once
    /// [`PreparedWrite::strip_committed`] found the group already stores it.
    #[serde(with = "serde_bytes")]
    pub encoded: Option<Vec<u8>>,
}

/// The distinct stacks of one pprof, shared by the profiles of its sample types.
type SharedStacks = Arc<Vec<PreparedStack>>;

/// One series' samples from one pprof.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PreparedProfile {
    /// Profile type of this sample column.
    pub profile_type: ProfileType,
    /// Labels.
    pub labels: LabelSet,
    /// Series hash of (type, labels).
    pub series_hash: u64,
    /// Routing hash of the labels: picks the hash slot, hence the shard group.
    pub routing_hash: u64,
    /// Sample time, unix ns.
    pub time_unix_nanos: i64,
    /// Duration covered, ns.
    pub duration_nanos: i64,
    /// The pprof's distinct stacks, shared by its sample types.
    pub stacks: Arc<Vec<PreparedStack>>,
    /// `(index into stacks, value)`, zero values left out.
    pub values: Vec<(u32, i64)>,
    /// Which pprof of the request this came from (index into
    /// [`PreparedWrite::pprof_symbols`]).
    pub pprof: u32,
    /// Identity of the pprof payload for deduplication: a hash of the batch's
    /// idempotency key, the labels, the profile name and options and the payload
    /// bytes. The same payload sent again under the same key (a retry, by any path,
    /// whole or split) has the same `dedup_key`, so each group stores it once.
    pub dedup_key: String,
}

/// A validated write, ready for the writer thread. Serializable because it is what
/// a data group's raft log carries: the leader's node decodes and validates once,
/// every replica applies the same prepared records.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct PreparedWrite {
    /// Idempotency key.
    pub idempotency_key: String,
    /// Per series and sample type.
    pub profiles: Vec<PreparedProfile>,
    /// Symbols, deduplicated across the request.
    pub symbols: Vec<SymbolWrite>,
    /// Number of pprof payloads.
    pub pprof_count: u64,
    /// Number of (stack, value) samples stored, over all sample types.
    pub sample_count: u64,
    /// Per pprof of the request, the indices into `symbols` it needs; used to split
    /// a write by shard group without copying unrelated symbols.
    pub pprof_symbols: Vec<Vec<u32>>,
}

/// A prepared write as its group's raft log holds it: stamped with the time the node that proposed it
/// accepted it. Why the stamp travels in the entry: every replica records it with the write's
/// idempotency keys, and an [`Expiry`](crate::storage::writer::Expiry) forgets keys by it, so that
/// every replica remembers and forgets the same keys at the same log position whatever its own clock
/// says (a retry is then a duplicate on every replica or on none).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct AcceptedWrite {
    /// What to store.
    pub write: PreparedWrite,
    /// When it was accepted, in Unix milliseconds of the proposing node's clock.
    pub accepted_unix_ms: i64,
}

impl PreparedWrite {
    /// Splits the write by the group of each profile's routing hash (its labels). Each part keeps
    /// the idempotency key (groups deduplicate independently, so a retry after a
    /// partial failure stores only the missing parts) and exactly the symbols its
    /// profiles reference. Parts are returned in group order.
    pub fn split_by_group<G: Ord + Copy>(
        self,
        mut group_of: impl FnMut(u64) -> G,
    ) -> Vec<(G, PreparedWrite)> {
        let mut parts: std::collections::BTreeMap<G, PreparedWrite> = std::collections::BTreeMap::new();
        let mut pprofs_of_part: std::collections::BTreeMap<G, Vec<u32>> = std::collections::BTreeMap::new();
        for profile in self.profiles {
            let group = group_of(profile.routing_hash);
            let part = parts.entry(group).or_insert_with(|| PreparedWrite {
                idempotency_key: self.idempotency_key.clone(),
                ..PreparedWrite::default()
            });
            part.sample_count += profile.values.len() as u64;
            let pprofs = pprofs_of_part.entry(group).or_default();
            if !pprofs.contains(&profile.pprof) {
                pprofs.push(profile.pprof);
            }
            part.profiles.push(profile);
        }
        let mut split = Vec::with_capacity(parts.len());
        for (group, mut part) in parts {
            let pprofs = pprofs_of_part.remove(&group).unwrap_or_default();
            part.pprof_count = pprofs.len() as u64;
            let mut symbol_indices: Vec<u32> = pprofs
                .iter()
                .filter_map(|pprof| self.pprof_symbols.get(*pprof as usize))
                .flatten()
                .copied()
                .collect();
            symbol_indices.sort_unstable();
            symbol_indices.dedup();
            part.symbols = symbol_indices
                .into_iter()
                .filter_map(|index| self.symbols.get(index as usize).cloned())
                .collect();
            split.push((group, part));
        }
        split
    }
}

/// What [`PreparedWrite::strip_committed`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stripped {
    /// Stack records left out (their hashes stay).
    pub stacks: u64,
    /// Symbol records left out.
    pub symbols: u64,
}

impl PreparedWrite {
    /// Leaves out the stack and symbol records that `committed` proves the target
    /// group already stores, so that the raft entry carries only new content. Only
    /// valid for a write proposed to the group `committed` describes (see
    /// [`CommittedContent`] for the argument); hashes and ids stay, so applying the
    /// stripped write stores exactly what applying the whole one would.
    pub fn strip_committed(&mut self, committed: &CommittedContent) -> Stripped {
        let mut stripped = Stripped::default();
        committed.with_sets(|stored_stacks, stored_symbols| {
            let symbol_count = self.symbols.len();
            self.symbols
                .retain(|symbol| !stored_symbols.contains(&(symbol.kind as u8, symbol.id)));
            stripped.symbols = (symbol_count - self.symbols.len()) as u64;
            // Indices into `symbols` no longer hold; they only serve splitting, which
            // happens before stripping.
            self.pprof_symbols.clear();
            // Profiles of one pprof share their stack list; strip each list once.
            // (original list, its stripped copy)
            let mut replaced: Vec<(SharedStacks, SharedStacks)> = Vec::new();
            for profile in &mut self.profiles {
                if let Some((_, stripped_list)) = replaced
                    .iter()
                    .find(|(original, _)| Arc::ptr_eq(original, &profile.stacks))
                {
                    profile.stacks = stripped_list.clone();
                    continue;
                }
                if !profile
                    .stacks
                    .iter()
                    .any(|stack| stack.encoded.is_some() && stored_stacks.contains(&stack.hash))
                {
                    continue;
                }
                let list: Vec<PreparedStack> = profile
                    .stacks
                    .iter()
                    .map(|stack| {
                        if stack.encoded.is_some() && stored_stacks.contains(&stack.hash) {
                            stripped.stacks += 1;
                            PreparedStack {
                                hash: stack.hash,
                                encoded: None,
                            }
                        } else {
                            stack.clone()
                        }
                    })
                    .collect();
                let list = Arc::new(list);
                let original = std::mem::replace(&mut profile.stacks, list.clone());
                replaced.push((original, list));
            }
        });
        stripped
    }
}

/// The deduplication identity of one raw profile of a batch (see
/// [`PreparedProfile::dedup_key`]): 128-bit XXH3, hex, with every part length-
/// prefixed so that no two different inputs encode the same.
fn payload_dedup_key(idempotency_key: &str, labels: &LabelSet, raw: &api::RawProfile) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(idempotency_key.as_bytes());
    for (name, value) in labels.pairs() {
        part(name.as_bytes());
        part(value.as_bytes());
    }
    part(raw.name.as_bytes());
    part(&raw.default_time_unix_nanos.to_le_bytes());
    part(&[match raw.delta {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }]);
    part(&raw.pprof);
    format!("{:032x}", hasher.digest128())
}

/// The oldest profile time a node still accepts: that of a profile written exactly its retention ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestKept {
    /// Profiles stamped before this are rejected.
    pub unix_nanos: i64,
    /// The retention it was computed from, for the error message.
    pub retention: Duration,
}

impl OldestKept {
    /// The limit for a node that keeps `retention` of samples, as of now.
    pub fn now(retention: Duration) -> OldestKept {
        let retention_nanos = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        OldestKept {
            unix_nanos: now_unix_nanos().saturating_sub(retention_nanos),
            retention,
        }
    }

    /// No limit: every time is accepted (benchmarks of the encoding alone).
    pub fn any_time() -> OldestKept {
        OldestKept {
            unix_nanos: i64::MIN,
            retention: Duration::MAX,
        }
    }
}

/// Validates and encodes a whole write request. Any invalid part rejects the whole
/// request, so nothing of a bad batch is stored.
///
/// A profile stamped before `oldest_kept` is invalid: the next retention pass would delete it, so
/// acknowledging it would be a promise the node does not keep (it used to be acknowledged and then
/// silently deleted, possibly within a second).
pub fn prepare_write(
    request: api::WriteRequest,
    oldest_kept: OldestKept,
) -> Result<PreparedWrite, NodeError> {
    let idempotency_key = request.idempotency_key;
    if idempotency_key.is_empty() {
        return Err(NodeError::InvalidArgument("idempotency_key is required".into()));
    }
    if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(NodeError::InvalidArgument(format!(
            "idempotency_key is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES} are allowed",
            idempotency_key.len()
        )));
    }
    let received_at = now_unix_nanos();
    let mut prepared = PreparedWrite {
        idempotency_key,
        ..PreparedWrite::default()
    };
    let mut symbol_index: HashMap<(u8, u64), u32, ContentIdHash> = HashMap::default();
    for (series_index, series) in request.series.into_iter().enumerate() {
        let labels =
            LabelSet::from_user_pairs(series.labels.into_iter().map(|label| (label.name, label.value)))
                .map_err(|error| NodeError::InvalidArgument(format!("series {series_index}: {error}")))?;
        let routing_hash = routing_hash(&labels);
        for (profile_index, raw) in series.profiles.into_iter().enumerate() {
            let parsed = decode_pprof(&raw.pprof).map_err(|source| NodeError::InvalidProfile {
                series: series_index,
                index: profile_index,
                source,
            })?;
            let name = if raw.name.is_empty() {
                parsed.inferred_name()
            } else {
                raw.name.clone()
            };
            if name.contains(':') || name.contains('{') || name.trim().is_empty() {
                return Err(NodeError::InvalidArgument(format!(
                    "series {series_index} profile {profile_index}: invalid profile name {name:?}"
                )));
            }
            let delta = raw.delta.unwrap_or_else(|| parsed.inferred_delta());
            let time_unix_nanos = match (parsed.time_nanos, raw.default_time_unix_nanos) {
                (time, _) if time != 0 => time,
                (0, fallback) if fallback != 0 => fallback,
                _ => received_at,
            };
            if time_unix_nanos < oldest_kept.unix_nanos {
                return Err(NodeError::InvalidArgument(format!(
                    "series {series_index} profile {profile_index}: its time {} is older than this node's \
                     retention of {}; it would be deleted at the next retention pass (start the node with \
                     a longer --retention to keep older profiles)",
                    format_unix_ms(time_unix_nanos.div_euclid(1_000_000)),
                    humantime::format_duration(oldest_kept.retention),
                )));
            }
            let symbols = profile_symbols(&parsed);
            let mut used_symbols = Vec::with_capacity(symbols.writes.len());
            for write in symbols.writes {
                let next = prepared.symbols.len() as u32;
                let index = *symbol_index.entry((write.kind as u8, write.id)).or_insert(next);
                if index == next {
                    prepared.symbols.push(write);
                }
                used_symbols.push(index);
            }
            let pprof = prepared.pprof_symbols.len() as u32;
            let dedup_key = payload_dedup_key(&prepared.idempotency_key, &labels, &raw);
            prepared.pprof_symbols.push(used_symbols);
            // Aggregate samples by stack: pprof may repeat a stack (with other sample labels).
            let mut stack_index: HashMap<u64, u32, ContentIdHash> = HashMap::default();
            let mut stacks: Vec<PreparedStack> = Vec::new();
            let mut values_by_stack: Vec<Vec<i64>> = Vec::new();
            let value_columns = parsed.sample_types.len();
            for sample in &parsed.samples {
                let location_ids: Vec<u64> = sample
                    .locations
                    .iter()
                    .map(|index| symbols.location_ids[*index as usize])
                    .collect();
                let (hash, encoded) = stack_hash(&location_ids);
                let index = *stack_index.entry(hash).or_insert_with(|| {
                    stacks.push(PreparedStack {
                        hash,
                        encoded: Some(encoded),
                    });
                    values_by_stack.push(vec![0; value_columns]);
                    (stacks.len() - 1) as u32
                });
                for (column, value) in sample.values.iter().enumerate() {
                    let slot = &mut values_by_stack[index as usize][column];
                    *slot = slot.wrapping_add(*value);
                }
            }
            let stacks = Arc::new(stacks);
            for (column, profile_type) in parsed.profile_types(&name, delta).into_iter().enumerate() {
                let values: Vec<(u32, i64)> = values_by_stack
                    .iter()
                    .enumerate()
                    .filter(|(_, values)| values[column] != 0)
                    .map(|(index, values)| (index as u32, values[column]))
                    .collect();
                prepared.sample_count += values.len() as u64;
                prepared.profiles.push(PreparedProfile {
                    series_hash: series_hash(&profile_type, &labels),
                    routing_hash,
                    profile_type,
                    labels: labels.clone(),
                    time_unix_nanos,
                    duration_nanos: parsed.duration_nanos,
                    stacks: stacks.clone(),
                    values,
                    pprof,
                    dedup_key: dedup_key.clone(),
                });
            }
            prepared.pprof_count += 1;
        }
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a stack record must survive the raft log's encoding whole; a
    /// lost record reads as "stripped" and the apply finds no content.
    #[test]
    fn prepared_stack_round_trips_through_the_raft_encoding() {
        for encoded in [Some(vec![1u8, 2, 3]), Some(Vec::new()), None] {
            let stack = PreparedStack {
                hash: 7,
                encoded: encoded.clone(),
            };
            let bytes = crate::raft::encode(&stack).expect("encode");
            let decoded: PreparedStack = crate::raft::decode(&bytes).expect("decode");
            assert_eq!(decoded.encoded, encoded);
        }
    }
}
