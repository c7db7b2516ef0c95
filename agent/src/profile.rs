//! Builds one pprof profile per series per cycle: sample types `samples:count` and `cpu:nanoseconds`,
//! period type `cpu:nanoseconds`, with mappings, locations (inlined frames as extra lines, innermost
//! first) and functions deduplicated as pprof expects.

use std::collections::HashMap;
use std::io::Write;

use kiln_proto::pprof as wire;
use prost::Message;

use crate::symbolize::Frames;

/// A mapping as it goes into the profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MappingKey {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// File path (or `[kernel.kallsyms]`).
    pub file: String,
    /// Hex build id, may be empty.
    pub build_id: String,
}

/// One frame of a stack before interning: the address, its mapping (if any) and its symbolized frames.
#[derive(Debug, Clone)]
pub struct StackFrame {
    /// Instruction address (the return address for non-leaf frames, as pprof expects).
    pub address: u64,
    /// Where the address lives.
    pub mapping: Option<MappingKey>,
    /// Symbolized frames, innermost first.
    pub frames: Frames,
}

/// Accumulates samples of one series. `Default` is [`ProfileBuilder::new`] (string 0 is `""`).
#[derive(Debug)]
pub struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<wire::Function>,
    function_ids: HashMap<(String, String), u64>,
    mappings: Vec<wire::Mapping>,
    mapping_ids: HashMap<MappingKey, u64>,
    locations: Vec<wire::Location>,
    location_ids: HashMap<(u64, u64, Frames), u64>,
    samples: HashMap<Vec<u64>, i64>,
}

impl ProfileBuilder {
    /// An empty profile.
    pub fn new() -> Self {
        let mut builder = ProfileBuilder {
            strings: Vec::new(),
            string_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            samples: HashMap::new(),
        };
        builder.string(""); // pprof: string 0 is ""
        builder
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(id) = self.string_ids.get(text) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(id) = self.function_ids.get(&key) {
            return *id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = self.string(name);
        let file_id = self.string(file);
        self.functions.push(wire::Function {
            id,
            name: name_id,
            system_name: name_id,
            filename: file_id,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn mapping(&mut self, key: &MappingKey) -> u64 {
        if let Some(id) = self.mapping_ids.get(key) {
            return *id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&key.file);
        let build_id = self.string(&key.build_id);
        self.mappings.push(wire::Mapping {
            id,
            memory_start: key.start,
            memory_limit: key.limit,
            file_offset: key.offset,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mapping_ids.insert(key.clone(), id);
        id
    }

    fn location(&mut self, frame: &StackFrame) -> u64 {
        let mapping_id = frame.mapping.as_ref().map(|key| self.mapping(key)).unwrap_or(0);
        // Addresses outside a mapping (markers) are told apart by their frames, not their address.
        let key = (mapping_id, frame.address, frame.frames.clone());
        if let Some(id) = self.location_ids.get(&key) {
            return *id;
        }
        let id = self.locations.len() as u64 + 1;
        let lines = frame
            .frames
            .iter()
            .map(|symbol| wire::Line {
                function_id: self.function(&symbol.function, &symbol.file),
                line: i64::from(symbol.line),
                column: 0,
            })
            .collect();
        self.locations.push(wire::Location {
            id,
            mapping_id,
            address: frame.address,
            line: lines,
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }

    /// Adds `count` samples of a stack given leaf first.
    pub fn add(&mut self, stack: &[StackFrame], count: u64) {
        let ids: Vec<u64> = stack.iter().map(|frame| self.location(frame)).collect();
        *self.samples.entry(ids).or_insert(0) += i64::try_from(count).unwrap_or(i64::MAX);
    }

    /// Total samples added.
    pub fn total_samples(&self) -> i64 {
        self.samples.values().sum()
    }

    /// Distinct stacks.
    pub fn distinct_stacks(&self) -> usize {
        self.samples.len()
    }

    /// The finished profile: each sample has values `[count, count * period_nanos]`.
    pub fn finish(mut self, time_nanos: i64, duration_nanos: i64, period_nanos: i64) -> wire::Profile {
        let samples_type = wire::ValueType {
            r#type: self.string("samples"),
            unit: self.string("count"),
        };
        let cpu_type = wire::ValueType {
            r#type: self.string("cpu"),
            unit: self.string("nanoseconds"),
        };
        let mut samples: Vec<(Vec<u64>, i64)> = self.samples.into_iter().collect();
        samples.sort(); // deterministic output
        wire::Profile {
            sample_type: vec![samples_type, cpu_type],
            sample: samples
                .into_iter()
                .map(|(location_id, count)| wire::Sample {
                    location_id,
                    value: vec![count, count.saturating_mul(period_nanos)],
                    label: vec![],
                })
                .collect(),
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.strings,
            time_nanos,
            duration_nanos,
            period_type: Some(cpu_type),
            period: period_nanos,
            ..Default::default()
        }
    }
}

impl Default for ProfileBuilder {
    fn default() -> Self {
        ProfileBuilder::new()
    }
}

/// Encodes and gzips a profile (the node accepts both; gzip keeps the spool and the wire small).
pub fn encode_gzipped(profile: &wire::Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 3), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&raw);
    encoder.finish().unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::Frame;
    use std::sync::Arc;

    fn frames(names: &[&str]) -> Frames {
        Arc::new(
            names
                .iter()
                .map(|name| Frame {
                    function: name.to_string(),
                    file: "f.c".to_string(),
                    line: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn default_builder_starts_with_the_empty_string() {
        let profile = ProfileBuilder::default().finish(0, 0, 1);
        assert_eq!(profile.string_table.first().map(String::as_str), Some(""));
    }

    #[test]
    fn profile_dedups_and_keeps_inlined_lines() {
        let mapping = MappingKey {
            start: 0x1000,
            limit: 0x2000,
            offset: 0,
            file: "/bin/app".into(),
            build_id: "abcd".into(),
        };
        let leaf = StackFrame {
            address: 0x1100,
            mapping: Some(mapping.clone()),
            frames: frames(&["inlined_leaf", "inner"]),
        };
        let root = StackFrame {
            address: 0x1200,
            mapping: Some(mapping),
            frames: frames(&["main"]),
        };
        let mut builder = ProfileBuilder::new();
        builder.add(&[leaf.clone(), root.clone()], 3);
        builder.add(&[leaf, root], 2);
        assert_eq!(builder.total_samples(), 5);
        let profile = builder.finish(1, 10, 52_631_578);
        assert_eq!(profile.sample.len(), 1);
        assert_eq!(profile.sample[0].value, vec![5, 5 * 52_631_578]);
        assert_eq!(profile.mapping.len(), 1);
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.location[0].line.len(), 2);
        assert_eq!(profile.function.len(), 3);
        assert_eq!(profile.string_table[0], "");
        // It is a valid pprof for the node's decoder.
        let bytes = encode_gzipped(&profile);
        kiln_model::pprof::decode_pprof(&bytes).expect("decodes");
    }
}
