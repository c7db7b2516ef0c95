//! Export of a merge as a pprof that `go tool pprof` reads, with mappings,
//! addresses and inlined lines as they were ingested.

use std::collections::HashMap;
use std::io::Write;

use kiln_model::profile_type::ProfileType;
use kiln_proto::pprof as wire;
use prost::Message;

use super::stacks::StackSet;
use super::symbolize::ResolvedSymbols;
use crate::error::NodeError;

struct StringTable {
    strings: Vec<String>,
    index: HashMap<String, i64>,
}

impl StringTable {
    fn new() -> Self {
        StringTable {
            strings: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn intern(&mut self, text: &str) -> i64 {
        if let Some(index) = self.index.get(text) {
            return *index;
        }
        let index = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.index.insert(text.to_string(), index);
        index
    }
}

/// Builds the gzipped pprof of `stacks`, one sample per stack in the set's order. A
/// location missing from `symbols` is an error.
pub fn export_pprof(
    profile_type: &ProfileType,
    symbols: &ResolvedSymbols,
    stacks: &StackSet,
    start_unix_ms: i64,
    end_unix_ms: i64,
) -> Result<Vec<u8>, NodeError> {
    let mut strings = StringTable::new();
    let mut profile = wire::Profile {
        sample_type: vec![wire::ValueType {
            r#type: strings.intern(&profile_type.sample_type),
            unit: strings.intern(&profile_type.sample_unit),
        }],
        period_type: Some(wire::ValueType {
            r#type: strings.intern(&profile_type.period_type),
            unit: strings.intern(&profile_type.period_unit),
        }),
        time_nanos: start_unix_ms.saturating_mul(1_000_000),
        duration_nanos: end_unix_ms
            .saturating_sub(start_unix_ms)
            .saturating_mul(1_000_000),
        ..wire::Profile::default()
    };
    let mut mapping_ids: HashMap<u64, u64> = HashMap::new();
    let mut function_ids: HashMap<u64, u64> = HashMap::new();
    let mut location_ids: HashMap<u64, u64> = HashMap::new();
    for (stack, value) in stacks.iter() {
        let mut sample_locations = Vec::with_capacity(stack.len());
        for location_key in stack.iter() {
            if let Some(id) = location_ids.get(location_key) {
                sample_locations.push(*id);
                continue;
            }
            let Some(location) = symbols.locations.get(location_key) else {
                return Err(NodeError::Internal(format!(
                    "location {location_key:#x} was not resolved"
                )));
            };
            let mapping_id = match symbols.mappings.get(&location.mapping) {
                None => 0,
                Some(mapping) => {
                    let next = mapping_ids.len() as u64 + 1;
                    let id = *mapping_ids.entry(location.mapping).or_insert(next);
                    if id == next {
                        profile.mapping.push(wire::Mapping {
                            id,
                            memory_start: mapping.memory_start,
                            memory_limit: mapping.memory_limit,
                            file_offset: mapping.file_offset,
                            filename: strings.intern(symbols.string(mapping.filename)),
                            build_id: strings.intern(symbols.string(mapping.build_id)),
                            has_functions: mapping.flags & 1 != 0,
                            has_filenames: mapping.flags & 2 != 0,
                            has_line_numbers: mapping.flags & 4 != 0,
                            has_inline_frames: mapping.flags & 8 != 0,
                        });
                    }
                    id
                }
            };
            let mut lines = Vec::with_capacity(location.lines.len());
            for line in &location.lines {
                let next = function_ids.len() as u64 + 1;
                let function_id = *function_ids.entry(line.function).or_insert(next);
                if function_id == next {
                    let function = symbols.functions.get(&line.function);
                    profile.function.push(wire::Function {
                        id: function_id,
                        name: strings.intern(
                            function
                                .map(|function| symbols.string(function.name))
                                .unwrap_or(""),
                        ),
                        system_name: strings.intern(
                            function
                                .map(|function| symbols.string(function.system_name))
                                .unwrap_or(""),
                        ),
                        filename: strings.intern(
                            function
                                .map(|function| symbols.string(function.filename))
                                .unwrap_or(""),
                        ),
                        start_line: function.map(|function| function.start_line).unwrap_or(0),
                    });
                }
                lines.push(wire::Line {
                    function_id,
                    line: line.line,
                    column: line.column,
                });
            }
            let id = location_ids.len() as u64 + 1;
            location_ids.insert(*location_key, id);
            profile.location.push(wire::Location {
                id,
                mapping_id,
                address: location.address,
                line: lines,
                is_folded: location.is_folded,
            });
            sample_locations.push(id);
        }
        profile.sample.push(wire::Sample {
            location_id: sample_locations,
            value: vec![value],
            label: vec![],
        });
    }
    profile.default_sample_type = profile.sample_type[0].r#type;
    profile.string_table = strings.strings;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(&profile.encode_to_vec())
        .map_err(|error| NodeError::Internal(format!("gzip of the pprof failed: {error}")))?;
    encoder
        .finish()
        .map_err(|error| NodeError::Internal(format!("gzip of the pprof failed: {error}")))
}
