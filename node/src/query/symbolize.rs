//! Resolving dense stack ids into frames (and into pprof records for export).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_model::tree::{Frame, FramePaths, StackTree};

use super::stacks::{merge_ascending_runs, StackSet};
use crate::error::NodeError;
use crate::storage::keys::{GroupId, SymbolKind};
use crate::storage::symbols::{ContentIdHash, StoredFunction, StoredLocation, StoredMapping};
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

/// A symbol record that a stack or another record refers to and that the group asked
/// for does not hold (see [`SymbolRecords::load_available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingSymbol {
    /// The group that was asked.
    pub group: GroupId,
    /// The record's kind.
    pub kind: SymbolKind,
    /// The record's content id.
    pub id: u64,
}

impl std::fmt::Display for MissingSymbol {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "symbol {:?} {:#x} is referenced but not stored in group {}",
            self.kind, self.id, self.group
        )
    }
}

/// `(content id, group that holds it)`, sorted by id, each id once (the first group
/// that named it).
fn unique_ids_with_group(mut wanted: Vec<(u64, GroupId)>) -> Vec<(u64, GroupId)> {
    wanted.sort_by_key(|(id, _)| *id);
    wanted.dedup_by_key(|(id, _)| *id);
    wanted
}

/// Why [`SymbolRecords::load_available`] stopped early.
enum LoadStop {
    /// A referenced record is not stored (reported to the caller, not an error).
    Missing(MissingSymbol),
    /// Reading or decoding failed.
    Failed(NodeError),
}

impl From<NodeError> for LoadStop {
    fn from(error: NodeError) -> Self {
        LoadStop::Failed(error)
    }
}

/// The records of `kind` for `wanted` (sorted, unique ids), read from the group named
/// with each id, in `wanted`'s order; the first missing one is reported.
fn read_records(
    storage: &Storage,
    kind: SymbolKind,
    wanted: &[(u64, GroupId)],
) -> Result<Vec<Vec<u8>>, LoadStop> {
    let mut records: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
    let mut positions_by_group: std::collections::BTreeMap<GroupId, Vec<usize>> = Default::default();
    for (position, (_, group)) in wanted.iter().enumerate() {
        positions_by_group.entry(*group).or_default().push(position);
    }
    for (group, positions) in positions_by_group {
        let ids: Vec<u64> = positions.iter().map(|index| wanted[*index].0).collect();
        for (position, record) in positions
            .into_iter()
            .zip(storage.symbols_available(group, kind, &ids)?)
        {
            records[position] = record;
        }
    }
    let mut found = Vec::with_capacity(records.len());
    for ((id, group), record) in wanted.iter().zip(records) {
        match record {
            Some(bytes) => found.push(bytes),
            None => {
                return Err(LoadStop::Missing(MissingSymbol {
                    group: *group,
                    kind,
                    id: *id,
                }))
            }
        }
    }
    Ok(found)
}

impl SymbolRecords {
    /// Loads, with batched reads, every record reachable from `location_ids` (in any
    /// order, duplicates allowed) of `group`. A referenced record that is not stored,
    /// or one that does not decode, is an error.
    pub fn load(
        storage: &Storage,
        group: GroupId,
        mut location_ids: Vec<u64>,
    ) -> Result<SymbolRecords, NodeError> {
        location_ids.sort_unstable();
        location_ids.dedup();
        Self::load_available(storage, vec![(group, location_ids)])?
            .map_err(|missing| NodeError::Corrupt(missing.to_string()))
    }

    /// Loads every record reachable from the locations of `wanted`: per group, the
    /// location ids its stacks name (ascending, each once). Each record is read from a
    /// group that refers to it (content-addressed, so a record that several groups
    /// hold is read once). A record that is not stored is reported as
    /// [`MissingSymbol`], so that a reader of a replica that may lag can ask the
    /// group's leader instead; one that does not decode is an error.
    pub fn load_available(
        storage: &Storage,
        wanted: Vec<(GroupId, Vec<u64>)>,
    ) -> Result<Result<SymbolRecords, MissingSymbol>, NodeError> {
        match Self::load_or_stop(storage, wanted) {
            Ok(records) => Ok(Ok(records)),
            Err(LoadStop::Missing(missing)) => Ok(Err(missing)),
            Err(LoadStop::Failed(error)) => Err(error),
        }
    }

    fn load_or_stop(storage: &Storage, wanted: Vec<(GroupId, Vec<u64>)>) -> Result<SymbolRecords, LoadStop> {
        // The lists may come from peers, and the merge below needs them ascending.
        if let Some((group, _)) = wanted
            .iter()
            .find(|(_, ids)| ids.windows(2).any(|pair| pair[0] >= pair[1]))
        {
            return Err(NodeError::Corrupt(format!("group {group}'s location ids are not ascending")).into());
        }
        let mut location_ids: Vec<(u64, GroupId)> =
            Vec::with_capacity(wanted.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0));
        merge_ascending_runs(
            wanted
                .iter()
                .map(|(group, ids)| ids.iter().map(move |id| (*id, *group)))
                .collect(),
            |(id, _)| *id,
            |(id, group)| {
                if location_ids.last().is_none_or(|(last, _)| *last != id) {
                    location_ids.push((id, group));
                }
            },
        );
        let stored_locations = read_records(storage, SymbolKind::Location, &location_ids)?;
        let mut function_ids = Vec::new();
        let mut mapping_ids = Vec::new();
        let mut locations = Vec::with_capacity(location_ids.len());
        for ((id, group), bytes) in location_ids.iter().zip(stored_locations) {
            let location = StoredLocation::decode(&bytes)?;
            function_ids.extend(location.lines.iter().map(|line| (line.function, *group)));
            if location.mapping != 0 {
                mapping_ids.push((location.mapping, *group));
            }
            locations.push((*id, bytes));
        }
        let function_ids = unique_ids_with_group(function_ids);
        let mapping_ids = unique_ids_with_group(mapping_ids);
        let stored_functions = read_records(storage, SymbolKind::Function, &function_ids)?;
        let mut string_ids = Vec::new();
        let mut functions = Vec::with_capacity(function_ids.len());
        for ((id, group), bytes) in function_ids.iter().zip(stored_functions) {
            let function = StoredFunction::decode(&bytes)?;
            string_ids
                .extend([function.name, function.system_name, function.filename].map(|id| (id, *group)));
            functions.push((*id, bytes));
        }
        let stored_mappings = read_records(storage, SymbolKind::Mapping, &mapping_ids)?;
        let mut mappings = Vec::with_capacity(mapping_ids.len());
        for ((id, group), bytes) in mapping_ids.iter().zip(stored_mappings) {
            let mapping = StoredMapping::decode(&bytes)?;
            string_ids.extend([mapping.filename, mapping.build_id].map(|id| (id, *group)));
            mappings.push((*id, bytes));
        }
        let string_ids = unique_ids_with_group(string_ids);
        let stored_strings = read_records(storage, SymbolKind::String, &string_ids)?;
        let mut strings = Vec::with_capacity(string_ids.len());
        for ((id, _), bytes) in string_ids.iter().zip(stored_strings) {
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

    /// Builds the stack tree of `stacks`. Frames are interned in the set's order, so
    /// equal sets give equal trees.
    pub fn build_location_tree(&self, stacks: &StackSet) -> StackTree {
        self.tree_of(stacks.iter())
    }

    fn tree_of<'a>(&self, stacks: impl Iterator<Item = (&'a [u64], i64)>) -> StackTree {
        let mut tree = StackTree::new();
        // Location ids are content hashes: no need to hash them again.
        let mut frames_of_location: HashMap<u64, Vec<u32>, ContentIdHash> = HashMap::default();
        let mut paths = FramePaths::default();
        for (locations, value) in stacks {
            for location_id in locations.iter().rev() {
                let frames = frames_of_location.entry(*location_id).or_insert_with(|| {
                    self.location_frames(*location_id)
                        .iter()
                        .map(|frame| tree.intern_frame(frame))
                        .collect()
                });
                paths.extend_path(frames);
            }
            paths.end_path(value);
        }
        tree.add_paths(&paths);
        tree
    }
}
