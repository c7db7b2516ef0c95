//! Resolving dense stack ids into frames (and into pprof records for export).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_model::tree::{Frame, StackTree};

use crate::error::NodeError;
use crate::storage::keys::{GroupId, SymbolKind};
use crate::storage::symbols::{StoredFunction, StoredLocation, StoredMapping};
use crate::storage::Storage;

/// Every record needed to describe a set of stacks, decoded once per query.
#[derive(Default)]
pub struct ResolvedSymbols {
    /// Dense stack id -> location ids, leaf first.
    pub stacks: HashMap<u64, Arc<[u64]>>,
    /// Location records by id.
    pub locations: HashMap<u64, StoredLocation>,
    /// Function records by id.
    pub functions: HashMap<u64, StoredFunction>,
    /// Mapping records by id.
    pub mappings: HashMap<u64, StoredMapping>,
    /// Strings by id.
    pub strings: HashMap<u64, String>,
}

impl ResolvedSymbols {
    /// Loads every record reachable from `stack_ids` with batched reads.
    pub fn load(storage: &Storage, group: GroupId, stack_ids: &[u64]) -> Result<ResolvedSymbols, NodeError> {
        let mut resolved = ResolvedSymbols::default();
        let stacks = storage.stacks(group, stack_ids)?;
        let mut location_ids: Vec<u64> = Vec::new();
        for (stack_id, locations) in stack_ids.iter().zip(stacks) {
            location_ids.extend(locations.iter().copied());
            resolved.stacks.insert(*stack_id, locations);
        }
        location_ids.sort_unstable();
        location_ids.dedup();
        let mut function_ids = Vec::new();
        let mut mapping_ids = Vec::new();
        for (id, bytes) in
            location_ids
                .iter()
                .zip(storage.symbols(group, SymbolKind::Location, &location_ids)?)
        {
            let location = StoredLocation::decode(&bytes)?;
            function_ids.extend(location.lines.iter().map(|line| line.function));
            if location.mapping != 0 {
                mapping_ids.push(location.mapping);
            }
            resolved.locations.insert(*id, location);
        }
        function_ids.sort_unstable();
        function_ids.dedup();
        mapping_ids.sort_unstable();
        mapping_ids.dedup();
        let mut string_ids = Vec::new();
        for (id, bytes) in
            function_ids
                .iter()
                .zip(storage.symbols(group, SymbolKind::Function, &function_ids)?)
        {
            let function = StoredFunction::decode(&bytes)?;
            string_ids.extend([function.name, function.system_name, function.filename]);
            resolved.functions.insert(*id, function);
        }
        for (id, bytes) in
            mapping_ids
                .iter()
                .zip(storage.symbols(group, SymbolKind::Mapping, &mapping_ids)?)
        {
            let mapping = StoredMapping::decode(&bytes)?;
            string_ids.extend([mapping.filename, mapping.build_id]);
            resolved.mappings.insert(*id, mapping);
        }
        string_ids.sort_unstable();
        string_ids.dedup();
        for (id, bytes) in string_ids
            .iter()
            .zip(storage.symbols(group, SymbolKind::String, &string_ids)?)
        {
            let text = String::from_utf8(bytes)
                .map_err(|error| NodeError::Corrupt(format!("string {id:#x}: {error}")))?;
            resolved.strings.insert(*id, text);
        }
        Ok(resolved)
    }

    /// The string of an id ("" when unknown, which `load` makes impossible).
    pub fn string(&self, id: u64) -> &str {
        self.strings.get(&id).map(String::as_str).unwrap_or("")
    }

    /// Frames of one location, outermost (caller) first: pprof lists a location's
    /// inlined lines innermost first.
    fn location_frames(&self, location_id: u64) -> Vec<Frame> {
        let Some(location) = self.locations.get(&location_id) else {
            return vec![Frame::named(format!("unknown location {location_id:#x}"))];
        };
        let binary = self
            .mappings
            .get(&location.mapping)
            .map(|mapping| self.string(mapping.filename))
            .unwrap_or("");
        if location.lines.is_empty() {
            return vec![Frame {
                function: format!("{:#x}", location.address),
                file: String::new(),
                binary: binary.into(),
            }];
        }
        location
            .lines
            .iter()
            .rev()
            .map(|line| {
                let function = self.functions.get(&line.function);
                Frame {
                    function: function
                        .map(|function| self.string(function.name))
                        .unwrap_or("")
                        .to_string(),
                    file: function
                        .map(|function| self.string(function.filename))
                        .unwrap_or("")
                        .to_string(),
                    binary: binary.to_string(),
                }
            })
            .collect()
    }

    /// Builds the stack tree of `(stack id, value)` pairs.
    pub fn build_tree(&self, values: &[(u64, i64)]) -> StackTree {
        let mut tree = StackTree::new();
        let mut frames_of_location: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut path: Vec<u32> = Vec::with_capacity(64);
        for (stack_id, value) in values {
            path.clear();
            let Some(locations) = self.stacks.get(stack_id) else {
                continue;
            };
            for location_id in locations.iter().rev() {
                let frames = frames_of_location.entry(*location_id).or_insert_with(|| {
                    self.location_frames(*location_id)
                        .iter()
                        .map(|frame| tree.intern_frame(frame))
                        .collect()
                });
                path.extend_from_slice(frames);
            }
            tree.add_stack(&path, *value);
        }
        tree
    }
}
