//! Content-addressed symbol records: strings, functions, mappings, locations, stacks.
//!
//! A symbol's id is the XXH3-64 of its encoding, seeded by its kind, so equal symbols
//! from any profile, agent or replica get the same id and are stored once. Records
//! refer to each other by id. Stacks additionally get a dense per-group id (assigned
//! in write order) because sample blocks store many stack ids and small dense numbers
//! compress far better than hashes.

use kiln_model::pprof::{FunctionRecord, LocationRecord, MappingRecord, ParsedProfile};

use super::codec::{put_signed, put_varint, Reader};
use super::keys::SymbolKind;
use crate::error::NodeError;

/// Content id of an encoded symbol. Never 0 (0 means "none" in records).
pub fn content_id(kind: SymbolKind, encoded: &[u8]) -> u64 {
    match xxhash_rust::xxh3::xxh3_64_with_seed(encoded, kind as u64) {
        0 => 1,
        id => id,
    }
}

/// A hasher for keys that are already uniformly distributed 64-bit content hashes
/// (symbol ids, stack hashes, series hashes): hashing them again with SipHash only
/// costs time. Other integers are folded in so that `(kind, id)` tuples work too.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentIdHasher {
    state: u64,
}

impl std::hash::Hasher for ContentIdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u8(*byte);
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.state = self.state.rotate_left(8) ^ u64::from(value);
    }

    fn write_u64(&mut self, value: u64) {
        self.state = self.state.rotate_left(8) ^ value;
    }
}

/// Builds [`ContentIdHasher`]s; use only for maps keyed by content hashes.
pub type ContentIdHash = std::hash::BuildHasherDefault<ContentIdHasher>;

/// A function as stored: strings by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFunction {
    /// Id of the name string.
    pub name: u64,
    /// Id of the system name string.
    pub system_name: u64,
    /// Id of the file name string.
    pub filename: u64,
    /// First line.
    pub start_line: i64,
}

/// A mapping as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMapping {
    /// Start address.
    pub memory_start: u64,
    /// End address.
    pub memory_limit: u64,
    /// File offset.
    pub file_offset: u64,
    /// Id of the file name string.
    pub filename: u64,
    /// Id of the build id string.
    pub build_id: u64,
    /// has_functions, has_filenames, has_line_numbers, has_inline_frames as bits 0-3.
    pub flags: u8,
}

/// A location line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// Function id.
    pub function: u64,
    /// Line.
    pub line: i64,
    /// Column.
    pub column: i64,
}

/// A location as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLocation {
    /// Mapping id, 0 for none.
    pub mapping: u64,
    /// Address.
    pub address: u64,
    /// Folded flag.
    pub is_folded: bool,
    /// Lines, innermost first.
    pub lines: Vec<StoredLine>,
}

fn put_id(buffer: &mut Vec<u8>, id: u64) {
    buffer.extend_from_slice(&id.to_be_bytes());
}

impl StoredFunction {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(32);
        put_id(&mut buffer, self.name);
        put_id(&mut buffer, self.system_name);
        put_id(&mut buffer, self.filename);
        put_signed(&mut buffer, self.start_line);
        buffer
    }

    /// Decodes a record written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        let mut reader = Reader::new(bytes, "function record");
        Ok(StoredFunction {
            name: reader.fixed_u64()?,
            system_name: reader.fixed_u64()?,
            filename: reader.fixed_u64()?,
            start_line: reader.signed()?,
        })
    }
}

impl StoredMapping {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(48);
        put_varint(&mut buffer, self.memory_start);
        put_varint(&mut buffer, self.memory_limit);
        put_varint(&mut buffer, self.file_offset);
        put_id(&mut buffer, self.filename);
        put_id(&mut buffer, self.build_id);
        buffer.push(self.flags);
        buffer
    }

    /// Decodes a record written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        let mut reader = Reader::new(bytes, "mapping record");
        Ok(StoredMapping {
            memory_start: reader.varint()?,
            memory_limit: reader.varint()?,
            file_offset: reader.varint()?,
            filename: reader.fixed_u64()?,
            build_id: reader.fixed_u64()?,
            flags: reader.byte()?,
        })
    }
}

impl StoredLocation {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(24 + self.lines.len() * 12);
        put_id(&mut buffer, self.mapping);
        put_varint(&mut buffer, self.address);
        buffer.push(u8::from(self.is_folded));
        put_varint(&mut buffer, self.lines.len() as u64);
        for line in &self.lines {
            put_id(&mut buffer, line.function);
            put_signed(&mut buffer, line.line);
            put_signed(&mut buffer, line.column);
        }
        buffer
    }

    /// Decodes a record written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        let mut reader = Reader::new(bytes, "location record");
        let mapping = reader.fixed_u64()?;
        let address = reader.varint()?;
        let is_folded = reader.byte()? != 0;
        let count = reader.count()?;
        let mut lines = Vec::with_capacity(count);
        for _ in 0..count {
            lines.push(StoredLine {
                function: reader.fixed_u64()?,
                line: reader.signed()?,
                column: reader.signed()?,
            });
        }
        Ok(StoredLocation {
            mapping,
            address,
            is_folded,
            lines,
        })
    }
}

/// Encodes a stack record: location ids, leaf first.
pub fn encode_stack(location_ids: &[u64]) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(2 + location_ids.len() * 8);
    put_varint(&mut buffer, location_ids.len() as u64);
    for id in location_ids {
        put_id(&mut buffer, *id);
    }
    buffer
}

/// Decodes a stack record.
pub fn decode_stack(bytes: &[u8]) -> Result<Vec<u64>, NodeError> {
    let mut reader = Reader::new(bytes, "stack record");
    let count = reader.count()?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(reader.fixed_u64()?);
    }
    Ok(ids)
}

/// One symbol ready to be written: kind, content id, encoded record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SymbolWrite {
    /// Kind.
    pub kind: SymbolKind,
    /// Content id.
    pub id: u64,
    /// Encoded record.
    #[serde(with = "serde_bytes")]
    pub encoded: Vec<u8>,
}

/// Symbols of one parsed pprof, with the content id of each of its locations.
#[derive(Debug, Default)]
pub struct ProfileSymbols {
    /// Every string, function, mapping and location, deduplicated within the profile.
    pub writes: Vec<SymbolWrite>,
    /// Content id of each location of the profile, by location index.
    pub location_ids: Vec<u64>,
}

/// String ids already emitted for one profile.
type StringIds = std::collections::HashSet<u64, ContentIdHash>;

fn string_write(writes: &mut Vec<SymbolWrite>, seen: &mut StringIds, text: &str) -> u64 {
    let id = content_id(SymbolKind::String, text.as_bytes());
    if seen.insert(id) {
        writes.push(SymbolWrite {
            kind: SymbolKind::String,
            id,
            encoded: text.as_bytes().to_vec(),
        });
    }
    id
}

fn function_write(writes: &mut Vec<SymbolWrite>, seen: &mut StringIds, function: &FunctionRecord) -> u64 {
    let stored = StoredFunction {
        name: string_write(writes, seen, &function.name),
        system_name: string_write(writes, seen, &function.system_name),
        filename: string_write(writes, seen, &function.filename),
        start_line: function.start_line,
    };
    let encoded = stored.encode();
    let id = content_id(SymbolKind::Function, &encoded);
    writes.push(SymbolWrite {
        kind: SymbolKind::Function,
        id,
        encoded,
    });
    id
}

fn mapping_write(writes: &mut Vec<SymbolWrite>, seen: &mut StringIds, mapping: &MappingRecord) -> u64 {
    let flags = u8::from(mapping.has_functions)
        | (u8::from(mapping.has_filenames) << 1)
        | (u8::from(mapping.has_line_numbers) << 2)
        | (u8::from(mapping.has_inline_frames) << 3);
    let stored = StoredMapping {
        memory_start: mapping.memory_start,
        memory_limit: mapping.memory_limit,
        file_offset: mapping.file_offset,
        filename: string_write(writes, seen, &mapping.filename),
        build_id: string_write(writes, seen, &mapping.build_id),
        flags,
    };
    let encoded = stored.encode();
    let id = content_id(SymbolKind::Mapping, &encoded);
    writes.push(SymbolWrite {
        kind: SymbolKind::Mapping,
        id,
        encoded,
    });
    id
}

fn location_write(location: &LocationRecord, mapping_ids: &[u64], function_ids: &[u64]) -> SymbolWrite {
    let stored = StoredLocation {
        mapping: location
            .mapping
            .map(|index| mapping_ids[index as usize])
            .unwrap_or(0),
        address: location.address,
        is_folded: location.is_folded,
        lines: location
            .lines
            .iter()
            .map(|line| StoredLine {
                function: function_ids[line.function as usize],
                line: line.line,
                column: line.column,
            })
            .collect(),
    };
    let encoded = stored.encode();
    let id = content_id(SymbolKind::Location, &encoded);
    SymbolWrite {
        kind: SymbolKind::Location,
        id,
        encoded,
    }
}

/// Encodes every symbol of a validated profile.
pub fn profile_symbols(profile: &ParsedProfile) -> ProfileSymbols {
    let mut writes = Vec::new();
    let mut seen_strings = StringIds::default();
    let function_ids: Vec<u64> = profile
        .functions
        .iter()
        .map(|function| function_write(&mut writes, &mut seen_strings, function))
        .collect();
    let mapping_ids: Vec<u64> = profile
        .mappings
        .iter()
        .map(|mapping| mapping_write(&mut writes, &mut seen_strings, mapping))
        .collect();
    let mut location_ids = Vec::with_capacity(profile.locations.len());
    for location in &profile.locations {
        let write = location_write(location, &mapping_ids, &function_ids);
        location_ids.push(write.id);
        writes.push(write);
    }
    ProfileSymbols { writes, location_ids }
}

/// The content hash of a stack (its encoded record).
pub fn stack_hash(location_ids: &[u64]) -> (u64, Vec<u8>) {
    let encoded = encode_stack(location_ids);
    (content_id(SymbolKind::Stack, &encoded), encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let location = StoredLocation {
            mapping: 7,
            address: 0xdead,
            is_folded: true,
            lines: vec![
                StoredLine {
                    function: 1,
                    line: -3,
                    column: 9,
                },
                StoredLine {
                    function: 2,
                    line: 4,
                    column: 0,
                },
            ],
        };
        assert_eq!(StoredLocation::decode(&location.encode()).unwrap(), location);
        let function = StoredFunction {
            name: 1,
            system_name: 2,
            filename: 3,
            start_line: 44,
        };
        assert_eq!(StoredFunction::decode(&function.encode()).unwrap(), function);
        let mapping = StoredMapping {
            memory_start: 1,
            memory_limit: 2,
            file_offset: 3,
            filename: 4,
            build_id: 5,
            flags: 9,
        };
        assert_eq!(StoredMapping::decode(&mapping.encode()).unwrap(), mapping);
        assert_eq!(decode_stack(&encode_stack(&[3, 1, 2])).unwrap(), vec![3, 1, 2]);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(StoredLocation::decode(&[1, 2, 3]).is_err());
        assert!(decode_stack(&[200]).is_err());
    }
}
