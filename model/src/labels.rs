//! Label sets and the series hash.
//!
//! A **series** is a profile type plus a label set. Its **series hash** is the 64-bit
//! XXH3 (seed 0) of a canonical, length-prefixed encoding of the profile type id and
//! the labels sorted by name. Every agent, client and node of every version computes
//! the same value; [`tests::series_hash_test_vectors`] pins it. Changing
//! [`series_hash`] is a breaking change of the storage format.
//!
//! The **routing hash** ([`routing_hash`]) is the same kind of hash over the label
//! set alone. It picks a series' hash slot, and so its shard group: every profile
//! type of one label set (the CPU samples and CPU time of one pprof, the heap and
//! goroutine profiles of one process) lives in one group, where they share symbols
//! and stacks, and a client routes a pprof without decoding it. Changing it is a
//! breaking change of routing; [`tests::routing_hash_test_vectors`] pins it.

use std::fmt;

use crate::profile_type::ProfileType;

/// Why a label or label set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The name is empty or has characters outside `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidName(String),
    /// Names starting with `__` belong to Kiln.
    #[error("label name {0:?} is reserved: names starting with \"__\" belong to Kiln")]
    ReservedName(String),
    /// The same name appears twice with different values.
    #[error("label {0:?} appears more than once")]
    DuplicateName(String),
    /// A `k=v` text had no `=`.
    #[error("invalid label {0:?}: expected name=value")]
    MissingEquals(String),
    /// Values are bounded so that one label cannot bloat the index.
    #[error("label {name:?} has a value of {length} bytes; at most {max} are allowed")]
    ValueTooLong {
        /// The label's name.
        name: String,
        /// The value's length in bytes.
        length: usize,
        /// The limit.
        max: usize,
    },
}

/// Longest label value accepted, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;

/// True when `name` is a valid Prometheus label name.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut characters = name.chars();
    let Some(first) = characters.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// A validated label set: names valid and unique, sorted by name, no empty values
/// (as in Prometheus, an empty value is the same as no label).
///
/// The serde form is for Kiln's own records (raft log entries) only: deserializing
/// does not validate, so it must never read user input.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LabelSet {
    pairs: Vec<(String, String)>,
}

impl LabelSet {
    /// Validates user-supplied labels. Reserved (`__`) names are rejected.
    pub fn from_user_pairs<I, N, V>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        Self::build(pairs, false)
    }

    /// Rebuilds a label set that Kiln itself stored; reserved names are allowed.
    pub fn from_stored_pairs<I, N, V>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        Self::build(pairs, true)
    }

    fn build<I, N, V>(pairs: I, allow_reserved: bool) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut sorted: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let name = name.into();
            let value = value.into();
            if !is_valid_label_name(&name) {
                return Err(LabelError::InvalidName(name));
            }
            if !allow_reserved && name.starts_with("__") {
                return Err(LabelError::ReservedName(name));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(LabelError::ValueTooLong {
                    name,
                    length: value.len(),
                    max: MAX_LABEL_VALUE_BYTES,
                });
            }
            if value.is_empty() {
                continue;
            }
            sorted.push((name, value));
        }
        sorted.sort();
        for window in sorted.windows(2) {
            if window[0].0 == window[1].0 {
                return Err(LabelError::DuplicateName(window[0].0.clone()));
            }
        }
        Ok(LabelSet { pairs: sorted })
    }

    /// Parses `name=value` (the CLI's `--label` form).
    pub fn parse_pair(text: &str) -> Result<(String, String), LabelError> {
        let Some((name, value)) = text.split_once('=') else {
            return Err(LabelError::MissingEquals(text.to_string()));
        };
        Ok((name.trim().to_string(), value.to_string()))
    }

    /// The labels, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The value of `name`, or `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(candidate, _)| candidate.as_str().cmp(name))
            .ok()
            .map(|index| self.pairs[index].1.as_str())
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("{")?;
        for (index, (name, value)) in self.pairs.iter().enumerate() {
            if index > 0 {
                formatter.write_str(", ")?;
            }
            write!(formatter, "{name}={value:?}")?;
        }
        formatter.write_str("}")
    }
}

fn push_length_prefixed(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buffer.extend_from_slice(bytes);
}

/// The canonical encoding hashed by [`series_hash`]: `"kiln.series.v1"`, then the
/// profile type id, the label count and each name and value, every string prefixed by
/// its length as a little-endian u32, labels in name order.
pub fn canonical_series_encoding(profile_type: &ProfileType, labels: &LabelSet) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(64 + labels.len() * 32);
    push_length_prefixed(&mut buffer, b"kiln.series.v1");
    push_length_prefixed(&mut buffer, profile_type.id().as_bytes());
    buffer.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (name, value) in labels.pairs() {
        push_length_prefixed(&mut buffer, name.as_bytes());
        push_length_prefixed(&mut buffer, value.as_bytes());
    }
    buffer
}

/// The stable 64-bit series hash: XXH3-64 (seed 0) of [`canonical_series_encoding`].
pub fn series_hash(profile_type: &ProfileType, labels: &LabelSet) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&canonical_series_encoding(profile_type, labels))
}

/// The stable 64-bit routing hash of a label set: XXH3-64 (seed 0) of
/// `"kiln.routing.v1"`, the label count and each name and value, every string
/// prefixed by its length as a little-endian u32, labels in name order.
pub fn routing_hash(labels: &LabelSet) -> u64 {
    let mut buffer = Vec::with_capacity(32 + labels.len() * 32);
    push_length_prefixed(&mut buffer, b"kiln.routing.v1");
    buffer.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (name, value) in labels.pairs() {
        push_length_prefixed(&mut buffer, name.as_bytes());
        push_length_prefixed(&mut buffer, value.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_hash_test_vectors() {
        // Pinned forever: clients and nodes of every version must route alike.
        assert_eq!(routing_hash(&LabelSet::default()), PINNED_ROUTING_EMPTY);
        let labels = LabelSet::from_user_pairs([("job", "api"), ("instance", "host-1:8080")]).unwrap();
        assert_eq!(routing_hash(&labels), PINNED_ROUTING_JOB_INSTANCE);
        let reordered = LabelSet::from_user_pairs([("instance", "host-1:8080"), ("job", "api")]).unwrap();
        assert_eq!(routing_hash(&reordered), PINNED_ROUTING_JOB_INSTANCE);
    }

    // Also computed independently (Python `xxhash.xxh3_64` over the documented encoding).
    const PINNED_ROUTING_EMPTY: u64 = 11_281_293_646_861_506_156;
    const PINNED_ROUTING_JOB_INSTANCE: u64 = 0x70db_625c_0cb5_0c39;

    fn cpu() -> ProfileType {
        ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta").unwrap()
    }

    #[test]
    fn series_hash_test_vectors() {
        // Pinned forever: agents, clients and nodes of every version must agree.
        let empty = LabelSet::default();
        assert_eq!(series_hash(&cpu(), &empty), PINNED_EMPTY);
        let labels = LabelSet::from_user_pairs([("job", "api"), ("instance", "host-1:8080")]).unwrap();
        assert_eq!(series_hash(&cpu(), &labels), PINNED_JOB_INSTANCE);
    }

    const PINNED_EMPTY: u64 = 12_199_729_124_543_982_557;
    const PINNED_JOB_INSTANCE: u64 = 0x44f8_cb0e_a4e8_0e7b;

    #[test]
    fn series_hash_ignores_input_order() {
        let forward = LabelSet::from_user_pairs([("a", "1"), ("b", "2")]).unwrap();
        let backward = LabelSet::from_user_pairs([("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(series_hash(&cpu(), &forward), series_hash(&cpu(), &backward));
    }

    #[test]
    fn series_hash_separates_boundaries() {
        let joined = LabelSet::from_user_pairs([("a", "bc")]).unwrap();
        let split = LabelSet::from_user_pairs([("ab", "c")]).unwrap();
        assert_ne!(series_hash(&cpu(), &joined), series_hash(&cpu(), &split));
    }

    #[test]
    fn label_validation_rejects_bad_names() {
        assert!(matches!(
            LabelSet::from_user_pairs([("1a", "x")]),
            Err(LabelError::InvalidName(_))
        ));
        assert!(matches!(
            LabelSet::from_user_pairs([("", "x")]),
            Err(LabelError::InvalidName(_))
        ));
        assert!(matches!(
            LabelSet::from_user_pairs([("a-b", "x")]),
            Err(LabelError::InvalidName(_))
        ));
        assert!(matches!(
            LabelSet::from_user_pairs([("__x", "x")]),
            Err(LabelError::ReservedName(_))
        ));
        assert!(matches!(
            LabelSet::from_user_pairs([("a", "x"), ("a", "y")]),
            Err(LabelError::DuplicateName(_))
        ));
        assert_eq!(LabelSet::from_user_pairs([("a", "")]).unwrap().len(), 0);
    }
}
