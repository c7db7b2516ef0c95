//! Decoding and validating pprof (`perftools.profiles.Profile`).
//!
//! [`decode_pprof`] turns bytes (gzipped or not) into a [`ParsedProfile`]: every id
//! resolved to a dense index and every string resolved, so that nothing downstream
//! can meet a dangling reference. A profile that fails validation is rejected whole.

use std::collections::HashMap;
use std::io::Read;

use kiln_proto::pprof as wire;
use prost::Message;

use crate::profile_type::ProfileType;

/// Largest decompressed pprof accepted, in bytes (a gzip bomb stops here).
pub const MAX_DECOMPRESSED_PPROF_BYTES: u64 = 256 * 1024 * 1024;

/// Why a pprof was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// The gzip stream is corrupt or truncated.
    #[error("corrupt or truncated gzip: {0}")]
    Gzip(std::io::Error),
    /// Decompressed size over [`MAX_DECOMPRESSED_PPROF_BYTES`].
    #[error("pprof decompresses to more than {MAX_DECOMPRESSED_PPROF_BYTES} bytes")]
    TooLarge,
    /// Not a valid protobuf `Profile`.
    #[error("not a pprof profile: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The profile is structurally valid protobuf but refers to things that do not exist.
    #[error("invalid pprof: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> PprofError {
    PprofError::Invalid(message.into())
}

/// A binary or library a location belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MappingRecord {
    /// Start of the mapped range.
    pub memory_start: u64,
    /// End of the mapped range.
    pub memory_limit: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Path of the binary.
    pub filename: String,
    /// Build id, may be empty.
    pub build_id: String,
    /// pprof's has_functions.
    pub has_functions: bool,
    /// pprof's has_filenames.
    pub has_filenames: bool,
    /// pprof's has_line_numbers.
    pub has_line_numbers: bool,
    /// pprof's has_inline_frames.
    pub has_inline_frames: bool,
}

/// A function.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FunctionRecord {
    /// Human-readable (demangled) name.
    pub name: String,
    /// Name as in the binary (mangled).
    pub system_name: String,
    /// Source file.
    pub filename: String,
    /// First line of the function.
    pub start_line: i64,
}

/// One source line of a location; index into [`ParsedProfile::functions`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineRecord {
    /// Index into the profile's functions.
    pub function: u32,
    /// Line number, 0 when unknown.
    pub line: i64,
    /// Column, 0 when unknown.
    pub column: i64,
}

/// A program counter: mapping, address, and its lines, innermost (inlined) first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocationRecord {
    /// Index into [`ParsedProfile::mappings`], when the location has one.
    pub mapping: Option<u32>,
    /// Instruction address.
    pub address: u64,
    /// Lines, the last one is the caller of the others (pprof's order).
    pub lines: Vec<LineRecord>,
    /// pprof's is_folded.
    pub is_folded: bool,
}

/// One sample: a stack of location indices, leaf first, and a value per sample type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRecord {
    /// Indices into [`ParsedProfile::locations`], leaf first.
    pub locations: Vec<u32>,
    /// One value per [`ParsedProfile::sample_types`] entry.
    pub values: Vec<i64>,
}

/// A validated pprof with dense indices instead of ids.
#[derive(Debug, Clone, Default)]
pub struct ParsedProfile {
    /// `(type, unit)` per value column.
    pub sample_types: Vec<(String, String)>,
    /// `(type, unit)` of the period.
    pub period_type: (String, String),
    /// Sampling period.
    pub period: i64,
    /// Collection time, 0 when absent.
    pub time_nanos: i64,
    /// Duration covered, 0 when absent.
    pub duration_nanos: i64,
    /// Index into `sample_types` of the type pprof shows by default.
    pub default_sample_type: usize,
    /// Mappings.
    pub mappings: Vec<MappingRecord>,
    /// Functions.
    pub functions: Vec<FunctionRecord>,
    /// Locations.
    pub locations: Vec<LocationRecord>,
    /// Samples.
    pub samples: Vec<SampleRecord>,
}

/// Gunzips when the bytes start with the gzip magic, bounded by
/// [`MAX_DECOMPRESSED_PPROF_BYTES`].
pub fn maybe_gunzip(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, PprofError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut decompressed = Vec::with_capacity(bytes.len() * 4);
    let read = decoder
        .take(MAX_DECOMPRESSED_PPROF_BYTES + 1)
        .read_to_end(&mut decompressed)
        .map_err(PprofError::Gzip)?;
    if read as u64 > MAX_DECOMPRESSED_PPROF_BYTES {
        return Err(PprofError::TooLarge);
    }
    Ok(std::borrow::Cow::Owned(decompressed))
}

/// Decodes and validates a pprof (gzipped or not).
pub fn decode_pprof(bytes: &[u8]) -> Result<ParsedProfile, PprofError> {
    let raw = maybe_gunzip(bytes)?;
    let profile = wire::Profile::decode(raw.as_ref())?;
    validate_and_index(profile)
}

fn string_at(strings: &[String], index: i64, what: &str) -> Result<String, PprofError> {
    usize::try_from(index)
        .ok()
        .and_then(|index| strings.get(index))
        .cloned()
        .ok_or_else(|| {
            invalid(format!(
                "{what} refers to string {index}, but the string table has {}",
                strings.len()
            ))
        })
}

/// Position of each pprof id in its table. Producers such as Go's runtime number ids
/// 1..=n, so a vector indexed by id is the common case; sparse ids fall back to a map.
enum IdIndex {
    Dense(Vec<u32>),
    Sparse(HashMap<u64, u32>),
}

impl IdIndex {
    const ABSENT: u32 = u32::MAX;

    fn get(&self, id: &u64) -> Option<&u32> {
        match self {
            IdIndex::Dense(positions) => positions
                .get(*id as usize)
                .filter(|position| **position != Self::ABSENT),
            IdIndex::Sparse(positions) => positions.get(id),
        }
    }
}

fn index_by_id(ids: impl ExactSizeIterator<Item = u64> + Clone, what: &str) -> Result<IdIndex, PprofError> {
    let count = ids.len();
    let largest = ids.clone().max().unwrap_or(0);
    if largest <= (count as u64).saturating_mul(4).max(64) {
        let mut positions = vec![IdIndex::ABSENT; largest as usize + 1];
        for (index, id) in ids.enumerate() {
            if id == 0 {
                return Err(invalid(format!("{what} has id 0, which pprof reserves")));
            }
            if positions[id as usize] != IdIndex::ABSENT {
                return Err(invalid(format!("{what} id {id} appears twice")));
            }
            positions[id as usize] = index as u32;
        }
        return Ok(IdIndex::Dense(positions));
    }
    let mut by_id = HashMap::with_capacity(count);
    for (index, id) in ids.enumerate() {
        if id == 0 {
            return Err(invalid(format!("{what} has id 0, which pprof reserves")));
        }
        if by_id.insert(id, index as u32).is_some() {
            return Err(invalid(format!("{what} id {id} appears twice")));
        }
    }
    Ok(IdIndex::Sparse(by_id))
}

/// Validates a decoded wire profile and resolves every reference.
pub fn validate_and_index(profile: wire::Profile) -> Result<ParsedProfile, PprofError> {
    let strings = &profile.string_table;
    if strings.first().is_some_and(|first| !first.is_empty()) {
        return Err(invalid("string_table[0] must be the empty string"));
    }
    if profile.sample_type.is_empty() {
        return Err(invalid("the profile has no sample types"));
    }
    let mut sample_types = Vec::with_capacity(profile.sample_type.len());
    for value_type in &profile.sample_type {
        let type_name = string_at(strings, value_type.r#type, "sample_type")?;
        let unit = string_at(strings, value_type.unit, "sample_type unit")?;
        if type_name.is_empty() {
            return Err(invalid("a sample type has an empty name"));
        }
        sample_types.push((
            type_name,
            if unit.is_empty() {
                "count".to_string()
            } else {
                unit
            },
        ));
    }
    let period_type = match &profile.period_type {
        Some(value_type) => (
            string_at(strings, value_type.r#type, "period_type")?,
            string_at(strings, value_type.unit, "period_type unit")?,
        ),
        None => (String::new(), String::new()),
    };
    let default_sample_type = if profile.default_sample_type == 0 {
        sample_types.len() - 1
    } else {
        let wanted = string_at(strings, profile.default_sample_type, "default_sample_type")?;
        sample_types
            .iter()
            .position(|(type_name, _)| *type_name == wanted)
            .unwrap_or(sample_types.len() - 1)
    };

    let mapping_index = index_by_id(profile.mapping.iter().map(|mapping| mapping.id), "mapping")?;
    let mut mappings = Vec::with_capacity(profile.mapping.len());
    for mapping in &profile.mapping {
        mappings.push(MappingRecord {
            memory_start: mapping.memory_start,
            memory_limit: mapping.memory_limit,
            file_offset: mapping.file_offset,
            filename: string_at(strings, mapping.filename, "mapping filename")?,
            build_id: string_at(strings, mapping.build_id, "mapping build_id")?,
            has_functions: mapping.has_functions,
            has_filenames: mapping.has_filenames,
            has_line_numbers: mapping.has_line_numbers,
            has_inline_frames: mapping.has_inline_frames,
        });
    }

    let function_index = index_by_id(profile.function.iter().map(|function| function.id), "function")?;
    let mut functions = Vec::with_capacity(profile.function.len());
    for function in &profile.function {
        functions.push(FunctionRecord {
            name: string_at(strings, function.name, "function name")?,
            system_name: string_at(strings, function.system_name, "function system_name")?,
            filename: string_at(strings, function.filename, "function filename")?,
            start_line: function.start_line,
        });
    }

    let location_index = index_by_id(profile.location.iter().map(|location| location.id), "location")?;
    let mut locations = Vec::with_capacity(profile.location.len());
    for location in &profile.location {
        let mapping = match location.mapping_id {
            0 => None,
            id => Some(*mapping_index.get(&id).ok_or_else(|| {
                invalid(format!(
                    "location {} refers to mapping {id}, which does not exist",
                    location.id
                ))
            })?),
        };
        let mut lines = Vec::with_capacity(location.line.len());
        for line in &location.line {
            let function = *function_index.get(&line.function_id).ok_or_else(|| {
                invalid(format!(
                    "location {} refers to function {}, which does not exist",
                    location.id, line.function_id
                ))
            })?;
            lines.push(LineRecord {
                function,
                line: line.line,
                column: line.column,
            });
        }
        locations.push(LocationRecord {
            mapping,
            address: location.address,
            lines,
            is_folded: location.is_folded,
        });
    }

    let mut samples = Vec::with_capacity(profile.sample.len());
    for (sample_number, sample) in profile.sample.iter().enumerate() {
        if sample.value.len() != sample_types.len() {
            return Err(invalid(format!(
                "sample {sample_number} has {} values for {} sample types",
                sample.value.len(),
                sample_types.len()
            )));
        }
        let mut stack = Vec::with_capacity(sample.location_id.len());
        for location_id in &sample.location_id {
            stack.push(*location_index.get(location_id).ok_or_else(|| {
                invalid(format!(
                    "sample {sample_number} refers to location {location_id}, which does not exist"
                ))
            })?);
        }
        samples.push(SampleRecord {
            locations: stack,
            values: sample.value.clone(),
        });
    }

    Ok(ParsedProfile {
        sample_types,
        period_type,
        period: profile.period,
        time_nanos: profile.time_nanos,
        duration_nanos: profile.duration_nanos,
        default_sample_type,
        mappings,
        functions,
        locations,
        samples,
    })
}

impl ParsedProfile {
    /// The profile name to use when the writer gave none: `process_cpu` for CPU
    /// profiles, `memory` for heap/allocs, `goroutine`, `contentions` for mutex and
    /// block profiles (which pprof cannot tell apart), else the first sample type.
    pub fn inferred_name(&self) -> String {
        let period_type = self.period_type.0.as_str();
        let first_type = self
            .sample_types
            .first()
            .map(|(type_name, _)| type_name.as_str())
            .unwrap_or("unknown");
        match period_type {
            "cpu" => "process_cpu".into(),
            "space" => "memory".into(),
            "contentions" => "contentions".into(),
            _ if first_type == "goroutine" || first_type == "goroutines" => "goroutine".into(),
            _ => first_type.to_string(),
        }
    }

    /// Whether values are deltas over the profile's duration (CPU profiles are;
    /// heap snapshots and cumulative counters are not), when the writer did not say.
    pub fn inferred_delta(&self) -> bool {
        self.period_type.0 == "cpu" || (self.duration_nanos > 0 && self.period_type.0 != "space")
    }

    /// One profile type per sample type, in sample-type order.
    pub fn profile_types(&self, name: &str, delta: bool) -> Vec<ProfileType> {
        let (period_type, period_unit) = if self.period_type.0.is_empty() {
            self.sample_types.first().cloned().unwrap_or_default()
        } else {
            let unit = if self.period_type.1.is_empty() {
                "count".to_string()
            } else {
                self.period_type.1.clone()
            };
            (self.period_type.0.clone(), unit)
        };
        self.sample_types
            .iter()
            .map(|(sample_type, sample_unit)| ProfileType {
                name: name.to_string(),
                sample_type: sample_type.clone(),
                sample_unit: sample_unit.clone(),
                period_type: period_type.clone(),
                period_unit: period_unit.clone(),
                delta,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> wire::Profile {
        wire::Profile {
            sample_type: vec![wire::ValueType { r#type: 1, unit: 2 }],
            sample: vec![wire::Sample {
                location_id: vec![1],
                value: vec![5],
                label: vec![],
            }],
            location: vec![wire::Location {
                id: 1,
                mapping_id: 0,
                address: 0x10,
                line: vec![wire::Line {
                    function_id: 1,
                    line: 3,
                    column: 0,
                }],
                is_folded: false,
            }],
            function: vec![wire::Function {
                id: 1,
                name: 3,
                system_name: 3,
                filename: 0,
                start_line: 0,
            }],
            string_table: vec!["".into(), "samples".into(), "count".into(), "main".into()],
            ..Default::default()
        }
    }

    #[test]
    fn minimal_profile_is_accepted() {
        let parsed = validate_and_index(minimal()).unwrap();
        assert_eq!(parsed.samples[0].locations, vec![0]);
        assert_eq!(parsed.functions[0].name, "main");
    }

    #[test]
    fn dangling_ids_are_rejected() {
        let mut bad_location = minimal();
        bad_location.sample[0].location_id = vec![7];
        assert!(matches!(
            validate_and_index(bad_location),
            Err(PprofError::Invalid(_))
        ));
        let mut bad_function = minimal();
        bad_function.location[0].line[0].function_id = 9;
        assert!(matches!(
            validate_and_index(bad_function),
            Err(PprofError::Invalid(_))
        ));
        let mut bad_string = minimal();
        bad_string.function[0].name = 99;
        assert!(matches!(
            validate_and_index(bad_string),
            Err(PprofError::Invalid(_))
        ));
        let mut bad_values = minimal();
        bad_values.sample[0].value = vec![1, 2];
        assert!(matches!(
            validate_and_index(bad_values),
            Err(PprofError::Invalid(_))
        ));
    }

    #[test]
    fn sparse_and_duplicate_ids_are_handled() {
        let mut sparse = minimal();
        sparse.location[0].id = 1 << 40;
        sparse.sample[0].location_id = vec![1 << 40];
        assert_eq!(validate_and_index(sparse).unwrap().samples[0].locations, vec![0]);
        let mut duplicate = minimal();
        duplicate.function.push(duplicate.function[0]);
        assert!(matches!(
            validate_and_index(duplicate),
            Err(PprofError::Invalid(_))
        ));
        let mut zero = minimal();
        zero.location[0].id = 0;
        assert!(matches!(validate_and_index(zero), Err(PprofError::Invalid(_))));
    }

    #[test]
    fn truncated_gzip_is_rejected() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&minimal().encode_to_vec()).unwrap();
        let gzipped = encoder.finish().unwrap();
        assert!(decode_pprof(&gzipped).is_ok());
        assert!(matches!(
            decode_pprof(&gzipped[..gzipped.len() / 2]),
            Err(PprofError::Gzip(_))
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(decode_pprof(b"\xff\xff\xff\xff garbage").is_err());
    }
}
