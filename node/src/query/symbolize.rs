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
    /// Dense stack id -> location ids, leaf first (filled by [`Self::load`] only).
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

/// The encoded symbol records reachable from a set of locations, exactly as stored
/// (content-addressed, so equal across groups), each list sorted by id without
/// duplicates. Every function and mapping a listed location refers to, and every
/// string those refer to, is listed too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolRecords {
    /// Encoded [`StoredLocation`]s by content id.
    pub locations: Vec<(u64, Vec<u8>)>,
    /// Encoded [`StoredFunction`]s by content id.
    pub functions: Vec<(u64, Vec<u8>)>,
    /// Encoded [`StoredMapping`]s by content id.
    pub mappings: Vec<(u64, Vec<u8>)>,
    /// Strings by content id.
    pub strings: Vec<(u64, String)>,
}

fn sorted_unique(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl SymbolRecords {
    /// Loads, with batched reads, every record reachable from `location_ids` (in any
    /// order, duplicates allowed). A referenced record that is not stored, or one that
    /// does not decode, is an error.
    pub fn load(
        storage: &Storage,
        group: GroupId,
        location_ids: Vec<u64>,
    ) -> Result<SymbolRecords, NodeError> {
        let location_ids = sorted_unique(location_ids);
        let mut function_ids = Vec::new();
        let mut mapping_ids = Vec::new();
        let mut locations = Vec::with_capacity(location_ids.len());
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
            locations.push((*id, bytes));
        }
        let function_ids = sorted_unique(function_ids);
        let mapping_ids = sorted_unique(mapping_ids);
        let mut string_ids = Vec::new();
        let mut functions = Vec::with_capacity(function_ids.len());
        for (id, bytes) in
            function_ids
                .iter()
                .zip(storage.symbols(group, SymbolKind::Function, &function_ids)?)
        {
            let function = StoredFunction::decode(&bytes)?;
            string_ids.extend([function.name, function.system_name, function.filename]);
            functions.push((*id, bytes));
        }
        let mut mappings = Vec::with_capacity(mapping_ids.len());
        for (id, bytes) in
            mapping_ids
                .iter()
                .zip(storage.symbols(group, SymbolKind::Mapping, &mapping_ids)?)
        {
            let mapping = StoredMapping::decode(&bytes)?;
            string_ids.extend([mapping.filename, mapping.build_id]);
            mappings.push((*id, bytes));
        }
        let string_ids = sorted_unique(string_ids);
        let mut strings = Vec::with_capacity(string_ids.len());
        for (id, bytes) in string_ids
            .iter()
            .zip(storage.symbols(group, SymbolKind::String, &string_ids)?)
        {
            let text = String::from_utf8(bytes)
                .map_err(|error| NodeError::Corrupt(format!("string {id:#x}: {error}")))?;
            strings.push((*id, text));
        }
        Ok(SymbolRecords {
            locations,
            functions,
            mappings,
            strings,
        })
    }
}

impl ResolvedSymbols {
    /// Loads the stacks `stack_ids` (dense ids of `group`) and every record reachable
    /// from them, with batched reads.
    pub fn load(storage: &Storage, group: GroupId, stack_ids: &[u64]) -> Result<ResolvedSymbols, NodeError> {
        let stacks = storage.stacks(group, stack_ids)?;
        let location_ids: Vec<u64> = stacks
            .iter()
            .flat_map(|locations| locations.iter().copied())
            .collect();
        let records = SymbolRecords::load(storage, group, location_ids)?;
        let mut resolved = ResolvedSymbols::decode(records)?;
        resolved.stacks = stack_ids.iter().copied().zip(stacks).collect();
        Ok(resolved)
    }

    /// Decodes encoded records (no dense stacks: use
    /// [`Self::build_location_tree`]). A record that does not decode is an error.
    pub fn decode(records: SymbolRecords) -> Result<ResolvedSymbols, NodeError> {
        let mut resolved = ResolvedSymbols::default();
        for (id, bytes) in &records.locations {
            resolved.locations.insert(*id, StoredLocation::decode(bytes)?);
        }
        for (id, bytes) in &records.functions {
            resolved.functions.insert(*id, StoredFunction::decode(bytes)?);
        }
        for (id, bytes) in &records.mappings {
            resolved.mappings.insert(*id, StoredMapping::decode(bytes)?);
        }
        resolved.strings = records.strings.into_iter().collect();
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

    /// Builds the stack tree of `(dense stack id, value)` pairs; stacks not loaded
    /// by [`Self::load`] are skipped.
    pub fn build_tree(&self, values: &[(u64, i64)]) -> StackTree {
        self.tree_of(values.iter().filter_map(|(stack_id, value)| {
            self.stacks
                .get(stack_id)
                .map(|locations| (locations.as_ref(), *value))
        }))
    }

    /// Builds the stack tree of `(location ids leaf first, value)` pairs. Frames are
    /// interned in the order of `stacks`, so equal inputs give equal trees.
    pub fn build_location_tree(&self, stacks: &[(Vec<u64>, i64)]) -> StackTree {
        self.tree_of(
            stacks
                .iter()
                .map(|(locations, value)| (locations.as_slice(), *value)),
        )
    }

    fn tree_of<'a>(&self, stacks: impl Iterator<Item = (&'a [u64], i64)>) -> StackTree {
        let mut tree = StackTree::new();
        let mut frames_of_location: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut path: Vec<u32> = Vec::with_capacity(64);
        for (locations, value) in stacks {
            path.clear();
            for location_id in locations.iter().rev() {
                let frames = frames_of_location.entry(*location_id).or_insert_with(|| {
                    self.location_frames(*location_id)
                        .iter()
                        .map(|frame| tree.intern_frame(frame))
                        .collect()
                });
                path.extend_from_slice(frames);
            }
            tree.add_stack(&path, value);
        }
        tree
    }
}
