//! Turns a `WriteRequest` into a [`PreparedWrite`]: every pprof decoded and validated,
//! every label set checked, every symbol encoded and content-addressed. This is the
//! CPU-heavy part of ingest and runs on the caller's thread (in parallel across
//! requests); the writer thread only assigns ids and commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_model::labels::{series_hash, LabelSet};
use kiln_model::pprof::decode_pprof;
use kiln_model::profile_type::ProfileType;
use kiln_model::time::now_unix_nanos;
use kiln_proto::kiln::v1 as api;

use crate::error::NodeError;
use crate::storage::symbols::{profile_symbols, stack_hash, ContentIdHash, SymbolWrite};

/// Longest idempotency key accepted, bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// One distinct stack of a pprof: content hash and encoded record.
#[derive(Debug, Clone)]
pub struct PreparedStack {
    /// Content hash of the stack record.
    pub hash: u64,
    /// Encoded stack record (location ids, leaf first).
    pub encoded: Vec<u8>,
}

/// One series' samples from one pprof.
#[derive(Debug, Clone)]
pub struct PreparedProfile {
    /// Profile type of this sample column.
    pub profile_type: ProfileType,
    /// Labels.
    pub labels: LabelSet,
    /// Series hash of (type, labels).
    pub series_hash: u64,
    /// Sample time, unix ns.
    pub time_unix_nanos: i64,
    /// Duration covered, ns.
    pub duration_nanos: i64,
    /// The pprof's distinct stacks, shared by its sample types.
    pub stacks: Arc<Vec<PreparedStack>>,
    /// `(index into stacks, value)`, zero values left out.
    pub values: Vec<(u32, i64)>,
}

/// A validated write, ready for the writer thread.
#[derive(Debug, Default)]
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
}

/// Validates and encodes a whole write request. Any invalid part rejects the whole
/// request, so nothing of a bad batch is stored.
pub fn prepare_write(request: api::WriteRequest) -> Result<PreparedWrite, NodeError> {
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
    let mut seen_symbols: HashSet<(u8, u64), ContentIdHash> = HashSet::default();
    for (series_index, series) in request.series.into_iter().enumerate() {
        let labels =
            LabelSet::from_user_pairs(series.labels.into_iter().map(|label| (label.name, label.value)))
                .map_err(|error| NodeError::InvalidArgument(format!("series {series_index}: {error}")))?;
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
            let symbols = profile_symbols(&parsed);
            for write in symbols.writes {
                if seen_symbols.insert((write.kind as u8, write.id)) {
                    prepared.symbols.push(write);
                }
            }
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
                    stacks.push(PreparedStack { hash, encoded });
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
                    profile_type,
                    labels: labels.clone(),
                    time_unix_nanos,
                    duration_nanos: parsed.duration_nanos,
                    stacks: stacks.clone(),
                    values,
                });
            }
            prepared.pprof_count += 1;
        }
    }
    Ok(prepared)
}
