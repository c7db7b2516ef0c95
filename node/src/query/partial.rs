//! Partial answers of one shard group, and the coordinator's finish of any number of
//! them into the `kiln.v1` response.
//!
//! A group answers a query with a self-contained, serde-serializable partial (bincode
//! carries it between nodes): plain Rust types, symbol records as they are stored.
//! Symbol ids (locations, functions, mappings, strings) are content-addressed and so
//! equal across groups for equal content; dense stack ids are group-local and never
//! leave the group — a merge partial names each stack by its location ids. Finishing
//! is therefore a union of symbol records by id plus a sum of the values of equal
//! stacks, series keys and buckets; it sorts before it builds, so the answer does not
//! depend on which group answered first. Truncation and `top_limit` apply once, in the
//! finish.
//!
//! The coordinator validates with `validate_*` before fanning out, sends the request
//! returned by `validate_merge`/`validate_diff`/`validate_range` (an end of 0, "now",
//! pinned to one instant) to every group, and passes that same request to `finish_*`.
//! The single-group methods of [`QueryEngine`](super::QueryEngine) run the same path
//! with one partial.

use std::collections::BTreeMap;

use kiln_model::labels::LabelSet;
use kiln_model::profile_type::ProfileType;
use kiln_model::selector::{parse_selector, Selector};
use kiln_model::tree::TruncationReport;
use kiln_proto::kiln::v1 as api;
use serde::{Deserialize, Serialize};

use super::stacks::{merge_ascending_runs, StackSet};
use super::symbolize::{ResolvedSymbols, SymbolRecords};
use super::{
    check_fraction, limit_rows, pprof_export, profile_type_info, render_svg, top_to_api, tree_to_api,
    truncation_to_api, TimeRange,
};
use crate::error::NodeError;

/// Serde for `(id, record bytes)` lists as byte strings: bincode then copies each
/// record whole instead of visiting it byte by byte (partials carry megabytes).
mod byte_records {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(records: &[(u64, Vec<u8>)], serializer: S) -> Result<S::Ok, S::Error> {
        let borrowed: Vec<(u64, &Bytes)> = records
            .iter()
            .map(|(id, bytes)| (*id, Bytes::new(bytes)))
            .collect();
        borrowed.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(u64, Vec<u8>)>, D::Error> {
        let owned: Vec<(u64, ByteBuf)> = Vec::deserialize(deserializer)?;
        Ok(owned
            .into_iter()
            .map(|(id, bytes)| (id, bytes.into_vec()))
            .collect())
    }
}

/// Whether a group's merge partial carries the symbol records its stacks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartialRecords {
    /// Every record the stacks need: the partial is self-contained.
    Included,
    /// None: the asker holds a replica of the group and reads them there (once for
    /// all such groups, instead of once per group; see
    /// [`SymbolRecords::load_available`]), asking again with `Included` for a group
    /// whose replica misses one.
    Omitted,
}

/// One group's merge of a selection, before rendering.
///
/// With [`PartialRecords::Included`], self-contained: every location a stack names
/// is in `locations`, with the functions, mappings and strings it refers to. Each
/// list is sorted by its key without duplicates; stacks have non-zero values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePartial {
    /// The selector's profile type.
    pub profile_type: ProfileType,
    /// The stacks, by location content ids leaf first, with their values.
    pub stacks: StackSet,
    /// Location content id -> encoded `StoredLocation`.
    #[serde(with = "byte_records")]
    pub locations: Vec<(u64, Vec<u8>)>,
    /// Function content id -> encoded `StoredFunction`.
    #[serde(with = "byte_records")]
    pub functions: Vec<(u64, Vec<u8>)>,
    /// Mapping content id -> encoded `StoredMapping`.
    #[serde(with = "byte_records")]
    pub mappings: Vec<(u64, Vec<u8>)>,
    /// String content id -> text.
    pub strings: Vec<(u64, String)>,
    /// Sample blocks (profiles) the group read.
    pub profiles: u64,
    /// Series of the group that contributed.
    pub series: u64,
    /// Whether the record lists are filled.
    pub records: PartialRecords,
    /// With [`PartialRecords::Omitted`]: every location id the stacks name, ascending,
    /// each once, so that the asker need not gather them from the stacks (work that
    /// each group does in parallel instead). Empty otherwise.
    pub location_ids: Vec<u64>,
}

impl MergePartial {
    /// A partial of `profile_type` holding `stacks` and the records describing them.
    pub fn new(
        profile_type: ProfileType,
        stacks: StackSet,
        records: SymbolRecords,
        profiles: u64,
        series: u64,
    ) -> MergePartial {
        MergePartial {
            profile_type,
            stacks,
            locations: records.locations,
            functions: records.functions,
            mappings: records.mappings,
            strings: records.strings,
            profiles,
            series,
            records: PartialRecords::Included,
            location_ids: Vec::new(),
        }
    }

    /// A partial of `profile_type` holding `stacks` without their records
    /// ([`PartialRecords::Omitted`]), listing the location ids they name.
    pub fn without_records(
        profile_type: ProfileType,
        stacks: StackSet,
        profiles: u64,
        series: u64,
    ) -> MergePartial {
        let location_ids = stacks.distinct_location_ids();
        MergePartial {
            records: PartialRecords::Omitted,
            location_ids,
            ..MergePartial::new(profile_type, stacks, SymbolRecords::default(), profiles, series)
        }
    }

    /// Fills in records read by the asker for a partial with
    /// [`PartialRecords::Omitted`]; the records may describe other partials' stacks too.
    pub fn attach_records(&mut self, records: SymbolRecords) {
        self.locations = records.locations;
        self.functions = records.functions;
        self.mappings = records.mappings;
        self.strings = records.strings;
        self.records = PartialRecords::Included;
        self.location_ids = Vec::new();
    }
}

/// Labels as `(name, value)` pairs: a range key (the `sum_by` names in request order
/// with their values, or a series' full labels) or a series' labels, sorted by name.
pub type LabelPairs = Vec<(String, String)>;

/// Range points: `(bucket start in unix ms, value)`, buckets ascending.
pub type RangePoints = Vec<(i64, i64)>;

/// One group's range answer: per label key (the `sum_by` values, or the full labels)
/// the `(bucket start ms, value)` points of its series, keys and buckets ascending.
///
/// A series lives in exactly one group and "latest per series per bucket" (non-delta
/// types) is taken within the series, so summing equal keys across groups is exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangePartial {
    /// The selector's profile type.
    pub profile_type: ProfileType,
    /// The step the group bucketed by (equal in every group of a pinned request).
    pub step_ms: i64,
    /// `(label key, points)`.
    pub series: Vec<(LabelPairs, RangePoints)>,
}

/// One group's selected series: `(profile type, labels sorted by name)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPartial {
    /// The series, in no particular order.
    pub series: Vec<(ProfileType, LabelPairs)>,
}

/// A selection that names a profile type, with its range checked.
pub(super) struct CheckedSelection {
    pub(super) selector: Selector,
    pub(super) profile_type: ProfileType,
    pub(super) range: TimeRange,
}

/// Parses and checks a selection that must name a profile type.
pub(super) fn check_selection(selection: &api::Selection) -> Result<CheckedSelection, NodeError> {
    let range = TimeRange::from_selection(selection)?;
    let selector = parse_selector(&selection.selector)?;
    let profile_type = selector.require_profile_type()?.clone();
    Ok(CheckedSelection {
        selector,
        profile_type,
        range,
    })
}

/// The optional selection of the metadata queries: `None` means every series.
pub(super) struct OptionalSelection {
    pub(super) selector: Selector,
    /// Only series whose newest sample is at or after this (`i64::MIN`: no filter).
    pub(super) not_before_unix_ms: i64,
}

/// Parses and checks the optional selection of labels, values and series queries; an
/// empty selector selects every series (of the time filter).
pub(super) fn check_optional_selection(
    selection: Option<&api::Selection>,
) -> Result<Option<OptionalSelection>, NodeError> {
    let Some(selection) = selection else {
        return Ok(None);
    };
    if selection.end_unix_ms != 0 {
        TimeRange::from_selection(selection)?;
    }
    let selector = if selection.selector.trim().is_empty() {
        Selector {
            profile_type: None,
            matchers: Vec::new(),
        }
    } else {
        parse_selector(&selection.selector)?
    };
    let not_before_unix_ms = if selection.start_unix_ms > 0 {
        selection.start_unix_ms
    } else {
        i64::MIN
    };
    Ok(Some(OptionalSelection {
        selector,
        not_before_unix_ms,
    }))
}

fn required_selection(selection: Option<&api::Selection>) -> Result<&api::Selection, NodeError> {
    selection.ok_or_else(|| NodeError::InvalidArgument("selection is required".into()))
}

fn merge_format(format: i32) -> Result<api::MergeFormat, NodeError> {
    api::MergeFormat::try_from(format)
        .map_err(|_| NodeError::InvalidArgument(format!("unknown merge format {format}")))
}

fn diff_selections(request: &api::DiffRequest) -> Result<(&api::Selection, &api::Selection), NodeError> {
    match (&request.a, &request.b) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(NodeError::InvalidArgument(
            "a diff needs selections a and b".into(),
        )),
    }
}

/// Checks a diff and returns the profile types of A and B.
fn check_diff(request: &api::DiffRequest) -> Result<(CheckedSelection, CheckedSelection, f64), NodeError> {
    let (selection_a, selection_b) = diff_selections(request)?;
    let min_fraction = check_fraction(request.min_node_fraction)?;
    let a = check_selection(selection_a)?;
    let b = check_selection(selection_b)?;
    if a.profile_type.sample_unit != b.profile_type.sample_unit {
        return Err(NodeError::InvalidArgument(format!(
            "cannot diff {} against {}: the units differ",
            b.profile_type.id(),
            a.profile_type.id()
        )));
    }
    Ok((a, b, min_fraction))
}

/// The step of a range query over `range`: the requested one, or about 100 buckets
/// (at least one second) when 0. A negative step is an invalid argument.
pub(super) fn range_step(step_ms: i64, range: TimeRange) -> Result<i64, NodeError> {
    if step_ms < 0 {
        return Err(NodeError::InvalidArgument("step_ms must not be negative".into()));
    }
    if step_ms > 0 {
        return Ok(step_ms);
    }
    let span = range.end_unix_ms.saturating_sub(range.start_unix_ms);
    Ok((span / 100).max(1000))
}

/// The start of the bucket of `time_ms`: `start + k * step` with the largest `k` not
/// past `time_ms` (computed without overflow; the result lies between the two).
pub(super) fn range_bucket(start_unix_ms: i64, step_ms: i64, time_ms: i64) -> i64 {
    let start = i128::from(start_unix_ms);
    let step = i128::from(step_ms.max(1));
    let bucket = start + (i128::from(time_ms) - start).div_euclid(step) * step;
    i64::try_from(bucket).unwrap_or(start_unix_ms)
}

/// Checks a selection that names a profile type (selector syntax, time range) and
/// returns it with an end of 0 ("now") pinned to the current time, so that every group
/// and the finish use the same range. Errors are `InvalidArgument`.
pub fn validate_selection(selection: &api::Selection) -> Result<api::Selection, NodeError> {
    let checked = check_selection(selection)?;
    Ok(api::Selection {
        selector: selection.selector.clone(),
        start_unix_ms: checked.range.start_unix_ms,
        end_unix_ms: checked.range.end_unix_ms,
    })
}

/// Checks a merge request (selection, format, `min_node_fraction`) and returns it with
/// its end pinned (see [`validate_selection`]): fan that copy out and finish with it.
pub fn validate_merge(request: &api::MergeRequest) -> Result<api::MergeRequest, NodeError> {
    let selection = validate_selection(required_selection(request.selection.as_ref())?)?;
    check_fraction(request.min_node_fraction)?;
    merge_format(request.format)?;
    Ok(api::MergeRequest {
        selection: Some(selection),
        ..request.clone()
    })
}

/// Checks a diff request (both selections, equal units, `min_node_fraction`) and
/// returns it with both ends pinned (see [`validate_selection`]).
pub fn validate_diff(request: &api::DiffRequest) -> Result<api::DiffRequest, NodeError> {
    check_diff(request)?;
    let (selection_a, selection_b) = diff_selections(request)?;
    Ok(api::DiffRequest {
        a: Some(validate_selection(selection_a)?),
        b: Some(validate_selection(selection_b)?),
        ..request.clone()
    })
}

/// Checks a range request (selection, step) and returns it with its end pinned (see
/// [`validate_selection`]), so that every group buckets by the same step.
pub fn validate_range(request: &api::RangeRequest) -> Result<api::RangeRequest, NodeError> {
    let selection = validate_selection(required_selection(request.selection.as_ref())?)?;
    let range = TimeRange::from_selection(&selection)?;
    range_step(request.step_ms, range)?;
    Ok(api::RangeRequest {
        selection: Some(selection),
        ..request.clone()
    })
}

/// Checks a label names request (its optional selection).
pub fn validate_labels(request: &api::LabelsRequest) -> Result<(), NodeError> {
    check_optional_selection(request.selection.as_ref()).map(|_| ())
}

/// Checks a label values request (the label name and the optional selection).
pub fn validate_label_values(request: &api::LabelValuesRequest) -> Result<(), NodeError> {
    if !kiln_model::labels::is_valid_label_name(&request.name) {
        return Err(NodeError::InvalidArgument(format!(
            "invalid label name {:?}",
            request.name
        )));
    }
    check_optional_selection(request.selection.as_ref()).map(|_| ())
}

/// Checks a series request (its optional selection).
pub fn validate_series(request: &api::SeriesRequest) -> Result<(), NodeError> {
    check_optional_selection(request.selection.as_ref()).map(|_| ())
}

/// Checks a profile types request; every such request is valid.
pub fn validate_profile_types(_request: &api::ProfileTypesRequest) -> Result<(), NodeError> {
    Ok(())
}

/// The union of content-addressed records by id, sorted by id, from lists that are
/// each sorted by id without duplicates. The same id with different content means
/// corrupt data (an error, whatever the order), as does a list out of order.
fn union_records<T: PartialEq>(
    kind: &str,
    mut lists: Vec<Vec<(u64, T)>>,
) -> Result<Vec<(u64, T)>, NodeError> {
    for list in &lists {
        if list.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(NodeError::Corrupt(format!(
                "a group's {kind} records are not in ascending order"
            )));
        }
    }
    if lists.len() == 1 {
        return Ok(lists.pop().unwrap_or_default());
    }
    let mut union: Vec<(u64, T)> = Vec::with_capacity(lists.iter().map(Vec::len).max().unwrap_or(0));
    let mut conflict = None;
    merge_ascending_runs(
        lists.into_iter().map(Vec::into_iter).collect(),
        |(id, _)| *id,
        |(id, record)| match union.last() {
            Some((last, kept)) if *last == id => {
                if *kept != record {
                    conflict = Some(id);
                }
            }
            _ => union.push((id, record)),
        },
    );
    if let Some(id) = conflict {
        return Err(NodeError::Corrupt(format!(
            "{kind} {id:#x} has different content in different groups"
        )));
    }
    Ok(union)
}

/// Every partial of one selection combined: canonical stacks and decoded symbols.
struct Combined {
    stacks: StackSet,
    symbols: ResolvedSymbols,
    profiles: u64,
    series: u64,
}

fn combine(profile_type: &ProfileType, parts: Vec<MergePartial>) -> Result<Combined, NodeError> {
    let mut stacks = Vec::with_capacity(parts.len());
    let (mut locations, mut functions, mut mappings, mut strings) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut profiles, mut series) = (0u64, 0u64);
    for part in parts {
        if part.profile_type != *profile_type {
            return Err(NodeError::Internal(format!(
                "a group answered for {} but the query is for {}",
                part.profile_type.id(),
                profile_type.id()
            )));
        }
        if part.records == PartialRecords::Omitted {
            return Err(NodeError::Internal(
                "a merge partial without its symbol records reached the combine".into(),
            ));
        }
        part.stacks
            .check()
            .map_err(|problem| NodeError::Corrupt(format!("a group's merge partial: {problem}")))?;
        stacks.push(part.stacks);
        locations.push(part.locations);
        functions.push(part.functions);
        mappings.push(part.mappings);
        strings.push(part.strings);
        profiles = profiles.saturating_add(part.profiles);
        series = series.saturating_add(part.series);
    }
    let records = SymbolRecords {
        locations: union_records("location", locations)?,
        functions: union_records("function", functions)?,
        mappings: union_records("mapping", mappings)?,
        strings: union_records("string", strings)?,
    };
    Ok(Combined {
        stacks: StackSet::merge(stacks),
        symbols: ResolvedSymbols::decode(records)?,
        profiles,
        series,
    })
}

/// Finishes a merge from the partials of every group that answered (any number, any
/// order) into the requested format, exactly as one group holding all their data
/// would answer: truncation (`min_node_fraction`) and `top_limit` apply once, here.
/// `request` should be the one [`validate_merge`] returned; `coverage` goes into the
/// response as is. A partial of another profile type is an internal error.
pub fn finish_merge(
    request: &api::MergeRequest,
    parts: Vec<MergePartial>,
    coverage: api::Coverage,
) -> Result<api::MergeResponse, NodeError> {
    let selection = check_selection(required_selection(request.selection.as_ref())?)?;
    let min_fraction = check_fraction(request.min_node_fraction)?;
    let format = merge_format(request.format)?;
    let profile_type = selection.profile_type;
    let combined = combine(&profile_type, parts)?;
    let tree = combined.symbols.build_location_tree(&combined.stacks);
    let total = tree.total();
    let mut truncation = None;
    let result = match format {
        api::MergeFormat::Unspecified | api::MergeFormat::Tree => {
            let (truncated, report) = tree.into_truncated(min_fraction);
            truncation = truncation_to_api(report, 0);
            api::merge_response::Result::Tree(tree_to_api(&truncated))
        }
        api::MergeFormat::Top => {
            let (rows, rows_removed) = limit_rows(tree.top(), request.top_limit);
            truncation = truncation_to_api(TruncationReport::default(), rows_removed);
            api::merge_response::Result::Top(top_to_api(&tree, &rows))
        }
        api::MergeFormat::Folded => {
            let (truncated, report) = tree.into_truncated(min_fraction);
            truncation = truncation_to_api(report, 0);
            api::merge_response::Result::Folded(truncated.folded())
        }
        api::MergeFormat::Svg => {
            let (truncated, report) = tree.into_truncated(min_fraction);
            truncation = truncation_to_api(report, 0);
            let svg = render_svg(&truncated.folded(), &profile_type.id(), &profile_type.sample_unit)?;
            api::merge_response::Result::Svg(svg)
        }
        api::MergeFormat::Pprof => api::merge_response::Result::Pprof(pprof_export::export_pprof(
            &profile_type,
            &combined.symbols,
            &combined.stacks,
            selection.range.start_unix_ms,
            selection.range.end_unix_ms,
        )?),
    };
    Ok(api::MergeResponse {
        profile_type: Some(profile_type_info(&profile_type)),
        total,
        profiles: combined.profiles,
        series: combined.series,
        result: Some(result),
        truncation,
        coverage: Some(coverage),
    })
}

/// Finishes a diff from the merge partials of selection A (the baseline) and of B,
/// from every group that answered: one tree and one top table of B with A in the
/// baseline slots, truncated and limited once. `request` should be the one
/// [`validate_diff`] returned.
pub fn finish_diff(
    request: &api::DiffRequest,
    parts_a: Vec<MergePartial>,
    parts_b: Vec<MergePartial>,
    coverage: api::Coverage,
) -> Result<api::DiffResponse, NodeError> {
    let (a, b, min_fraction) = check_diff(request)?;
    let combined_a = combine(&a.profile_type, parts_a)?;
    let combined_b = combine(&b.profile_type, parts_b)?;
    let tree_a = combined_a.symbols.build_location_tree(&combined_a.stacks);
    let mut tree = combined_b.symbols.build_location_tree(&combined_b.stacks);
    tree.merge_as_baseline(&tree_a);
    let (rows, rows_removed) = limit_rows(tree.top(), request.top_limit);
    let top = top_to_api(&tree, &rows);
    let (total_a, total_b) = (tree.baseline_total(), tree.total());
    let (truncated, report) = tree.into_truncated(min_fraction);
    Ok(api::DiffResponse {
        profile_type: Some(profile_type_info(&b.profile_type)),
        total_a,
        total_b,
        tree: Some(tree_to_api(&truncated)),
        top: Some(top),
        truncation: truncation_to_api(report, rows_removed),
        coverage: Some(coverage),
    })
}

/// Finishes a range query: the points of equal label keys and buckets summed across
/// groups, keys and buckets ascending. `request` should be the one [`validate_range`]
/// returned; a partial bucketed by another step, or of another profile type, is an
/// internal error (the request was not pinned).
pub fn finish_range(
    request: &api::RangeRequest,
    parts: Vec<RangePartial>,
    coverage: api::Coverage,
) -> Result<api::RangeResponse, NodeError> {
    let selection = check_selection(required_selection(request.selection.as_ref())?)?;
    let step_ms = range_step(request.step_ms, selection.range)?;
    let mut keys: BTreeMap<LabelPairs, BTreeMap<i64, i64>> = BTreeMap::new();
    for part in parts {
        if part.profile_type != selection.profile_type || part.step_ms != step_ms {
            return Err(NodeError::Internal(format!(
                "a group answered for {} with step {} ms, but the query is for {} with step {step_ms} ms",
                part.profile_type.id(),
                part.step_ms,
                selection.profile_type.id()
            )));
        }
        for (key, points) in part.series {
            let buckets = keys.entry(key).or_default();
            for (bucket, value) in points {
                let slot = buckets.entry(bucket).or_default();
                *slot = slot.wrapping_add(value);
            }
        }
    }
    let series = keys
        .into_iter()
        .map(|(labels, points)| api::RangeSeries {
            labels: labels
                .into_iter()
                .map(|(name, value)| api::Label { name, value })
                .collect(),
            points: points
                .into_iter()
                .map(|(timestamp_ms, value)| api::Point { timestamp_ms, value })
                .collect(),
        })
        .collect();
    Ok(api::RangeResponse {
        profile_type: Some(profile_type_info(&selection.profile_type)),
        step_ms,
        series,
        coverage: Some(coverage),
    })
}

fn sorted_union(parts: Vec<Vec<String>>) -> Vec<String> {
    let mut all: Vec<String> = parts.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Finishes a label names query: the union of every group's names, sorted, without
/// duplicates.
pub fn finish_labels(parts: Vec<Vec<String>>, coverage: api::Coverage) -> api::LabelsResponse {
    api::LabelsResponse {
        names: sorted_union(parts),
        coverage: Some(coverage),
    }
}

/// Finishes a label values query: the union of every group's values, sorted, without
/// duplicates.
pub fn finish_label_values(parts: Vec<Vec<String>>, coverage: api::Coverage) -> api::LabelValuesResponse {
    api::LabelValuesResponse {
        values: sorted_union(parts),
        coverage: Some(coverage),
    }
}

/// Finishes a series query: every group's series, sorted by profile type id then
/// labels, a series listed by several groups listed once. Labels that are not a valid
/// stored label set are corrupt data.
pub fn finish_series(
    parts: Vec<SeriesPartial>,
    coverage: api::Coverage,
) -> Result<api::SeriesResponse, NodeError> {
    let mut all: Vec<(String, ProfileType, LabelPairs)> = parts
        .into_iter()
        .flat_map(|part| part.series)
        .map(|(profile_type, labels)| (profile_type.id(), profile_type, labels))
        .collect();
    all.sort_unstable_by(|left, right| (&left.0, &left.2).cmp(&(&right.0, &right.2)));
    all.dedup_by(|later, kept| later.0 == kept.0 && later.2 == kept.2);
    let mut series = Vec::with_capacity(all.len());
    for (_, profile_type, labels) in all {
        let label_set = LabelSet::from_stored_pairs(labels)
            .map_err(|error| NodeError::Corrupt(format!("series labels: {error}")))?;
        series.push(api::SeriesInfo {
            series_hash: kiln_model::labels::series_hash(&profile_type, &label_set),
            profile_type: Some(profile_type_info(&profile_type)),
            labels: super::labels_to_api(&label_set),
        });
    }
    Ok(api::SeriesResponse {
        series,
        coverage: Some(coverage),
    })
}

/// Finishes a profile types query: the union of every group's types, sorted by id,
/// without duplicates.
pub fn finish_profile_types(
    parts: Vec<Vec<ProfileType>>,
    coverage: api::Coverage,
) -> api::ProfileTypesResponse {
    let mut all: Vec<(String, ProfileType)> = parts
        .into_iter()
        .flatten()
        .map(|profile_type| (profile_type.id(), profile_type))
        .collect();
    all.sort_unstable_by(|left, right| left.0.cmp(&right.0));
    all.dedup_by(|later, kept| later.0 == kept.0);
    api::ProfileTypesResponse {
        types: all
            .iter()
            .map(|(_, profile_type)| profile_type_info(profile_type))
            .collect(),
        coverage: Some(coverage),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::storage::keys::SymbolKind;
    use crate::storage::symbols::{content_id, StoredFunction, StoredLine, StoredLocation, StoredMapping};

    const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta";

    fn cpu() -> ProfileType {
        ProfileType::parse(CPU).expect("cpu type parses")
    }

    fn complete(groups_total: u32) -> api::Coverage {
        api::Coverage {
            groups_total,
            missing: Vec::new(),
        }
    }

    /// Every record of a small program, content-addressed as storage does it, and
    /// each location's frame names (root first) for the naive reference.
    struct Universe {
        locations: BTreeMap<u64, Vec<u8>>,
        functions: BTreeMap<u64, Vec<u8>>,
        mappings: BTreeMap<u64, Vec<u8>>,
        strings: BTreeMap<u64, String>,
        /// Location ids by index.
        location_ids: Vec<u64>,
        /// Frame function names of each location index, outermost first.
        location_names: Vec<Vec<String>>,
    }

    impl Universe {
        fn new() -> Universe {
            let mut universe = Universe {
                locations: BTreeMap::new(),
                functions: BTreeMap::new(),
                mappings: BTreeMap::new(),
                strings: BTreeMap::new(),
                location_ids: Vec::new(),
                location_names: Vec::new(),
            };
            // (name, file): two functions share a name in different files.
            let functions: Vec<u64> = [
                ("main", "main.go"),
                ("serve", "server.go"),
                ("parse", "parse.go"),
                ("parse", "legacy/parse.go"),
                ("hash", "hash.go"),
                ("alloc", "runtime.go"),
            ]
            .iter()
            .map(|(name, file)| {
                let function = StoredFunction {
                    name: universe.string(name),
                    system_name: universe.string(name),
                    filename: universe.string(file),
                    start_line: 1,
                };
                universe.record(SymbolKind::Function, function.encode())
            })
            .collect();
            let mappings: Vec<u64> = ["/bin/app", "/lib/libc.so"]
                .iter()
                .map(|file| {
                    let mapping = StoredMapping {
                        memory_start: 0x1000,
                        memory_limit: 0x9000,
                        file_offset: 0,
                        filename: universe.string(file),
                        build_id: universe.string("build-1"),
                        flags: 0b1111,
                    };
                    universe.record(SymbolKind::Mapping, mapping.encode())
                })
                .collect();
            let names = ["main", "serve", "parse", "parse", "hash", "alloc"];
            // (mapping index or none, address, function indices innermost first)
            let locations: [(Option<usize>, u64, &[usize]); 8] = [
                (Some(0), 0x1100, &[0]),
                (Some(0), 0x1200, &[1]),
                (Some(0), 0x1300, &[2]),
                (Some(0), 0x1400, &[3]),
                (Some(0), 0x1500, &[4, 2]), // hash inlined into parse
                (Some(1), 0x8100, &[5]),
                (None, 0x1600, &[1]),
                (Some(1), 0x8200, &[]), // unsymbolized
            ];
            for (mapping, address, lines) in locations {
                let location = StoredLocation {
                    mapping: mapping.map(|index| mappings[index]).unwrap_or(0),
                    address,
                    is_folded: false,
                    lines: lines
                        .iter()
                        .map(|function| StoredLine {
                            function: functions[*function],
                            line: 10,
                            column: 0,
                        })
                        .collect(),
                };
                let id = universe.record(SymbolKind::Location, location.encode());
                universe.location_ids.push(id);
                universe.location_names.push(if lines.is_empty() {
                    vec![format!("{address:#x}")]
                } else {
                    lines
                        .iter()
                        .rev()
                        .map(|function| names[*function].to_string())
                        .collect()
                });
            }
            universe
        }

        fn string(&mut self, text: &str) -> u64 {
            let id = content_id(SymbolKind::String, text.as_bytes());
            self.strings.insert(id, text.to_string());
            id
        }

        fn record(&mut self, kind: SymbolKind, encoded: Vec<u8>) -> u64 {
            let id = content_id(kind, &encoded);
            match kind {
                SymbolKind::Function => self.functions.insert(id, encoded),
                SymbolKind::Mapping => self.mappings.insert(id, encoded),
                _ => self.locations.insert(id, encoded),
            };
            id
        }

        /// Stacks of location indices as stacks of location ids.
        fn stacks(&self, stacks: &[(Vec<usize>, i64)]) -> Vec<(Vec<u64>, i64)> {
            stacks
                .iter()
                .map(|(locations, value)| {
                    (
                        locations.iter().map(|index| self.location_ids[*index]).collect(),
                        *value,
                    )
                })
                .collect()
        }

        /// The records reachable from `stacks`, plus every string (so that groups
        /// overlap in more than the records they need).
        fn records(&self, stacks: &[(Vec<u64>, i64)]) -> SymbolRecords {
            let mut locations = BTreeMap::new();
            let mut functions = BTreeMap::new();
            let mut mappings = BTreeMap::new();
            for id in stacks.iter().flat_map(|(locations, _)| locations.iter()) {
                let bytes = &self.locations[id];
                locations.insert(*id, bytes.clone());
                let location = StoredLocation::decode(bytes).expect("fixture decodes");
                for line in &location.lines {
                    functions.insert(line.function, self.functions[&line.function].clone());
                }
                if location.mapping != 0 {
                    mappings.insert(location.mapping, self.mappings[&location.mapping].clone());
                }
            }
            SymbolRecords {
                locations: locations.into_iter().collect(),
                functions: functions.into_iter().collect(),
                mappings: mappings.into_iter().collect(),
                strings: self.strings.clone().into_iter().collect(),
            }
        }

        fn partial(&self, stacks: &[(Vec<usize>, i64)], profiles: u64, series: u64) -> MergePartial {
            let stacks = self.stacks(stacks);
            let records = self.records(&stacks);
            MergePartial::new(cpu(), StackSet::from_pairs(stacks), records, profiles, series)
        }

        /// Folded text computed directly from the stacks.
        fn naive_folded(&self, stacks: &[(Vec<usize>, i64)]) -> BTreeMap<String, i64> {
            let mut folded = BTreeMap::new();
            for (locations, value) in stacks {
                if locations.is_empty() {
                    continue;
                }
                let names: Vec<String> = locations
                    .iter()
                    .rev()
                    .flat_map(|index| self.location_names[*index].iter().cloned())
                    .collect();
                *folded.entry(names.join(";")).or_insert(0) += value;
            }
            folded
        }
    }

    fn folded_map(text: &str) -> BTreeMap<String, i64> {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let (stack, value) = line.rsplit_once(' ').expect("folded line has a value");
            *map.entry(stack.to_string()).or_insert(0) += value.parse::<i64>().expect("value parses");
        }
        map
    }

    fn merge_request(format: api::MergeFormat, min_node_fraction: f64, top_limit: u32) -> api::MergeRequest {
        api::MergeRequest {
            selection: Some(api::Selection {
                selector: format!("{CPU}{{}}"),
                start_unix_ms: 1_000,
                end_unix_ms: 2_000,
            }),
            format: format as i32,
            options: None,
            min_node_fraction,
            top_limit,
        }
    }

    const FORMATS: [api::MergeFormat; 5] = [
        api::MergeFormat::Tree,
        api::MergeFormat::Top,
        api::MergeFormat::Folded,
        api::MergeFormat::Svg,
        api::MergeFormat::Pprof,
    ];

    /// Stacks `(location indices leaf first, value, group, split)`, and the number of
    /// groups; a stack with `split` also puts part of its value in the next group.
    type Spread = (Vec<(Vec<usize>, i64, usize, bool)>, usize);

    fn spread() -> impl Strategy<Value = Spread> {
        (
            prop::collection::vec(
                (
                    prop::collection::vec(0usize..8, 0..6),
                    1i64..10_000,
                    0usize..3,
                    any::<bool>(),
                ),
                0..25,
            ),
            1usize..=3,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Splitting stacks over 1-3 groups (with overlapping symbols and values of one
        /// stack split between groups) and finishing gives exactly the answer of one
        /// partial holding everything, in every format and in any group order, and
        /// that answer is the naive sum of the stacks.
        #[test]
        fn split_partials_finish_like_one_partial(
            (stacks, groups) in spread(),
            fraction in prop::sample::select(vec![0.0, 0.05, 0.2, 0.5]),
            top_limit in 0u32..4,
        ) {
            let universe = Universe::new();
            let whole_stacks: Vec<(Vec<usize>, i64)> =
                stacks.iter().map(|(locations, value, _, _)| (locations.clone(), *value)).collect();
            let mut per_group: Vec<Vec<(Vec<usize>, i64)>> = vec![Vec::new(); groups];
            for (locations, value, group, split) in &stacks {
                let group = group % groups;
                if *split {
                    let half = value / 2;
                    per_group[group].push((locations.clone(), value - half));
                    per_group[(group + 1) % groups].push((locations.clone(), half));
                } else {
                    per_group[group].push((locations.clone(), *value));
                }
            }
            let parts: Vec<MergePartial> = per_group
                .iter()
                .enumerate()
                .map(|(index, stacks)| universe.partial(stacks, index as u64 + 1, 1))
                .collect();
            let profiles = (1..=groups as u64).sum();
            let whole = universe.partial(&whole_stacks, profiles, groups as u64);
            let mut reversed = parts.clone();
            reversed.reverse();
            for format in FORMATS {
                let request = merge_request(format, fraction, top_limit);
                let expected = finish_merge(&request, vec![whole.clone()], complete(1)).expect("whole");
                let split = finish_merge(&request, parts.clone(), complete(1)).expect("split");
                let backwards = finish_merge(&request, reversed.clone(), complete(1)).expect("reversed");
                prop_assert_eq!(&split, &expected, "format {:?}", format);
                prop_assert_eq!(&backwards, &expected, "format {:?}", format);
                prop_assert_eq!(expected.total, whole_stacks.iter().map(|(_, value)| value).sum::<i64>());
                prop_assert_eq!(expected.profiles, profiles);
                if format == api::MergeFormat::Folded && fraction == 0.0 {
                    let Some(api::merge_response::Result::Folded(text)) = &expected.result else {
                        panic!("expected folded text");
                    };
                    prop_assert_eq!(folded_map(text), universe.naive_folded(&whole_stacks));
                }
            }
            let diff = api::DiffRequest {
                a: merge_request(api::MergeFormat::Tree, 0.0, 0).selection,
                b: merge_request(api::MergeFormat::Tree, 0.0, 0).selection,
                options: None,
                min_node_fraction: fraction,
                top_limit,
            };
            let expected = finish_diff(&diff, vec![whole.clone()], parts.clone(), complete(1)).expect("diff");
            let split = finish_diff(&diff, reversed.clone(), vec![whole.clone()], complete(1)).expect("diff");
            prop_assert_eq!(expected.total_a, expected.total_b);
            prop_assert_eq!(split, expected);
        }
    }

    #[test]
    fn truncation_applies_once_to_the_combined_tree() {
        let universe = Universe::new();
        // Alone, the first group's main;parse;hash path (`hash` inlined into `parse`) is
        // 30% of its tree; combined it is under 10% and cut, two nodes.
        let parts = vec![
            universe.partial(&[(vec![4, 0], 30), (vec![1, 0], 70)], 1, 1),
            universe.partial(&[(vec![1, 0], 1_000)], 1, 1),
        ];
        let request = merge_request(api::MergeFormat::Folded, 0.1, 0);
        let answer = finish_merge(&request, parts, complete(2)).expect("finish");
        let Some(api::merge_response::Result::Folded(text)) = &answer.result else {
            panic!("expected folded text");
        };
        assert_eq!(text, "main;(other) 30\nmain;serve 1070\n");
        let truncation = answer.truncation.expect("truncation reported");
        assert_eq!((truncation.nodes_removed, truncation.value_removed), (2, 30));
        assert_eq!(answer.coverage, Some(complete(2)));
    }

    #[test]
    fn merge_of_no_partials_is_an_empty_answer() {
        let answer = finish_merge(
            &merge_request(api::MergeFormat::Top, 0.0, 0),
            Vec::new(),
            complete(3),
        )
        .expect("finish");
        assert_eq!((answer.total, answer.profiles, answer.series), (0, 0, 0));
        assert_eq!(
            answer.result,
            Some(api::merge_response::Result::Top(api::Top { rows: Vec::new() }))
        );
    }

    #[test]
    fn conflicting_symbol_records_are_corrupt_whatever_the_order() {
        let universe = Universe::new();
        let good = universe.partial(&[(vec![0], 5)], 1, 1);
        let mut bad = good.clone();
        bad.locations[0].1.push(0);
        let request = merge_request(api::MergeFormat::Tree, 0.0, 0);
        for parts in [vec![good.clone(), bad.clone()], vec![bad, good]] {
            assert!(matches!(
                finish_merge(&request, parts, complete(2)),
                Err(NodeError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn partial_of_another_profile_type_is_rejected() {
        let universe = Universe::new();
        let mut part = universe.partial(&[(vec![0], 5)], 1, 1);
        part.profile_type = ProfileType::parse("heap").expect("alias parses");
        let request = merge_request(api::MergeFormat::Tree, 0.0, 0);
        assert!(matches!(
            finish_merge(&request, vec![part], complete(1)),
            Err(NodeError::Internal(_))
        ));
    }

    #[test]
    fn a_partial_without_records_lists_each_location_once_ascending() {
        let stacks = StackSet::from_pairs([(vec![9u64, 3, 5], 1), (vec![5, 3], 2), (vec![7, 9], 4)]);
        let partial = MergePartial::without_records(cpu(), stacks, 3, 1);
        assert_eq!(partial.records, PartialRecords::Omitted);
        assert_eq!(partial.location_ids, vec![3, 5, 7, 9]);
    }

    #[test]
    fn partials_survive_bincode() {
        let universe = Universe::new();
        let merge = universe.partial(&[(vec![4, 1, 0], 5), (vec![7], 2)], 2, 1);
        let bytes = bincode::serialize(&merge).expect("serialize");
        assert_eq!(
            bincode::deserialize::<MergePartial>(&bytes).expect("deserialize"),
            merge
        );
        let range = RangePartial {
            profile_type: cpu(),
            step_ms: 10,
            series: vec![(vec![("pod".into(), "a".into())], vec![(0, 1), (10, 2)])],
        };
        let bytes = bincode::serialize(&range).expect("serialize");
        assert_eq!(
            bincode::deserialize::<RangePartial>(&bytes).expect("deserialize"),
            range
        );
        let series = SeriesPartial {
            series: vec![(cpu(), vec![("pod".into(), "a".into())])],
        };
        let bytes = bincode::serialize(&series).expect("serialize");
        assert_eq!(
            bincode::deserialize::<SeriesPartial>(&bytes).expect("deserialize"),
            series
        );
    }

    fn range_request(sum_by: &[&str]) -> api::RangeRequest {
        api::RangeRequest {
            selection: merge_request(api::MergeFormat::Tree, 0.0, 0).selection,
            step_ms: 100,
            sum_by: sum_by.iter().map(|name| name.to_string()).collect(),
            options: None,
        }
    }

    fn key(value: &str) -> LabelPairs {
        vec![("pod".to_string(), value.to_string())]
    }

    #[test]
    fn range_partials_sum_per_key_and_bucket_in_any_order() {
        let part = |series: Vec<(LabelPairs, RangePoints)>| RangePartial {
            profile_type: cpu(),
            step_ms: 100,
            series,
        };
        let parts = vec![
            part(vec![
                (key("a"), vec![(1_000, 1), (1_100, 2)]),
                (key("b"), vec![(1_000, 5)]),
            ]),
            part(vec![(key("a"), vec![(1_100, 10), (1_200, 20)])]),
            part(vec![(key("c"), vec![(1_900, 7)]), (key("b"), vec![(1_000, 5)])]),
        ];
        let request = range_request(&["pod"]);
        let answer = finish_range(&request, parts.clone(), complete(3)).expect("finish");
        let mut reversed = parts;
        reversed.reverse();
        assert_eq!(
            finish_range(&request, reversed, complete(3)).expect("finish"),
            answer
        );
        let points = |labels: &str| -> Vec<(i64, i64)> {
            answer
                .series
                .iter()
                .find(|series| series.labels[0].value == labels)
                .map(|series| {
                    series
                        .points
                        .iter()
                        .map(|point| (point.timestamp_ms, point.value))
                        .collect()
                })
                .unwrap_or_default()
        };
        let keys: Vec<&str> = answer
            .series
            .iter()
            .map(|series| series.labels[0].value.as_str())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(points("a"), [(1_000, 1), (1_100, 12), (1_200, 20)]);
        assert_eq!(points("b"), [(1_000, 10)]);
        assert_eq!(points("c"), [(1_900, 7)]);
        assert_eq!(answer.step_ms, 100);
        assert_eq!(answer.coverage, Some(complete(3)));
    }

    #[test]
    fn range_partial_with_another_step_is_rejected() {
        let part = RangePartial {
            profile_type: cpu(),
            step_ms: 50,
            series: Vec::new(),
        };
        assert!(matches!(
            finish_range(&range_request(&[]), vec![part], complete(1)),
            Err(NodeError::Internal(_))
        ));
    }

    #[test]
    fn range_buckets_never_overflow() {
        assert_eq!(range_bucket(1_000, 100, 1_250), 1_200);
        assert_eq!(range_bucket(1_000, 100, 1_000), 1_000);
        assert_eq!(
            range_bucket(i64::MIN, 1_000, i64::MAX),
            range_bucket(i64::MIN, 1_000, i64::MAX)
        );
        assert!(range_bucket(i64::MIN, 1_000, 5_000) <= 5_000);
        let range = TimeRange {
            start_unix_ms: i64::MIN,
            end_unix_ms: i64::MAX,
        };
        assert!(range_step(0, range).expect("step") >= 1_000);
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn labels_and_values_are_a_sorted_union_without_duplicates() {
        let parts = vec![
            strings(&["pod", "job", "zone"]),
            Vec::new(),
            strings(&["job", "Region", "pod"]),
        ];
        let labels = finish_labels(parts.clone(), complete(3));
        assert_eq!(labels.names, strings(&["Region", "job", "pod", "zone"]));
        assert_eq!(labels.coverage, Some(complete(3)));
        let values = finish_label_values(parts.into_iter().rev().collect(), complete(3));
        assert_eq!(values.values, labels.names);
    }

    #[test]
    fn profile_types_are_a_sorted_union_by_id() {
        let heap = ProfileType::parse("heap").expect("heap");
        let parts = vec![vec![heap.clone(), cpu()], vec![cpu()], vec![heap]];
        let answer = finish_profile_types(parts, complete(3));
        let ids: Vec<&str> = answer.types.iter().map(|info| info.id.as_str()).collect();
        assert_eq!(ids, ["memory:inuse_space:bytes:space:bytes", CPU]);
    }

    #[test]
    fn series_are_sorted_deduplicated_and_hashed() {
        let labels = |pod: &str| vec![("pod".to_string(), pod.to_string())];
        let heap = ProfileType::parse("heap").expect("heap");
        let parts = vec![
            SeriesPartial {
                series: vec![(cpu(), labels("b")), (heap.clone(), labels("a"))],
            },
            SeriesPartial {
                series: vec![(cpu(), labels("a")), (cpu(), labels("b"))],
            },
        ];
        let answer = finish_series(parts, complete(2)).expect("finish");
        let listed: Vec<(String, String)> = answer
            .series
            .iter()
            .map(|info| {
                (
                    info.profile_type
                        .as_ref()
                        .map(|t| t.id.clone())
                        .unwrap_or_default(),
                    info.labels[0].value.clone(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                (
                    "memory:inuse_space:bytes:space:bytes".to_string(),
                    "a".to_string()
                ),
                (CPU.to_string(), "a".to_string()),
                (CPU.to_string(), "b".to_string()),
            ]
        );
        let label_set = LabelSet::from_stored_pairs(labels("a")).expect("labels");
        assert_eq!(
            answer.series[1].series_hash,
            kiln_model::labels::series_hash(&cpu(), &label_set)
        );
    }

    #[test]
    fn bad_requests_are_rejected_before_fan_out() {
        let invalid = |result: Result<(), NodeError>| matches!(result, Err(NodeError::InvalidArgument(_)));
        let merge = |selector: &str, start: i64, end: i64, fraction: f64, format: i32| api::MergeRequest {
            selection: Some(api::Selection {
                selector: selector.to_string(),
                start_unix_ms: start,
                end_unix_ms: end,
            }),
            format,
            min_node_fraction: fraction,
            ..Default::default()
        };
        let ok = format!("{CPU}{{pod=\"a\"}}");
        assert!(validate_merge(&merge(&ok, 1, 2, 0.0, 0)).is_ok());
        assert!(invalid(
            validate_merge(&merge("{pod=\"a\"}", 1, 2, 0.0, 0)).map(|_| ())
        ));
        assert!(invalid(
            validate_merge(&merge("cpu{pod=", 1, 2, 0.0, 0)).map(|_| ())
        ));
        assert!(invalid(validate_merge(&merge(&ok, 3, 2, 0.0, 0)).map(|_| ())));
        assert!(invalid(validate_merge(&merge(&ok, 1, 2, 1.0, 0)).map(|_| ())));
        assert!(invalid(
            validate_merge(&merge(&ok, 1, 2, f64::NAN, 0)).map(|_| ())
        ));
        assert!(invalid(validate_merge(&merge(&ok, 1, 2, 0.0, 99)).map(|_| ())));
        assert!(invalid(validate_merge(&api::MergeRequest::default()).map(|_| ())));
        let selection = |selector: &str| {
            Some(api::Selection {
                selector: selector.to_string(),
                start_unix_ms: 1,
                end_unix_ms: 2,
            })
        };
        let diff = api::DiffRequest {
            a: selection("heap"),
            b: selection("cpu"),
            ..Default::default()
        };
        assert!(invalid(validate_diff(&diff).map(|_| ())));
        assert!(invalid(
            validate_diff(&api::DiffRequest {
                a: selection("cpu"),
                ..Default::default()
            })
            .map(|_| ())
        ));
        let mut range = range_request(&[]);
        range.step_ms = -1;
        assert!(invalid(validate_range(&range).map(|_| ())));
        assert!(invalid(validate_label_values(&api::LabelValuesRequest {
            name: "0bad".into(),
            ..Default::default()
        })));
        assert!(invalid(validate_labels(&api::LabelsRequest {
            selection: selection("cpu{pod=~\"(\"}"),
            options: None,
        })));
        assert!(validate_series(&api::SeriesRequest::default()).is_ok());
    }

    #[test]
    fn validation_pins_now_so_groups_agree() {
        let request = api::RangeRequest {
            selection: Some(api::Selection {
                selector: "cpu".into(),
                start_unix_ms: 0,
                end_unix_ms: 0,
            }),
            ..Default::default()
        };
        let pinned = validate_range(&request).expect("valid");
        let end = pinned
            .selection
            .as_ref()
            .map(|selection| selection.end_unix_ms)
            .unwrap_or(0);
        assert!(end > 0);
        assert_eq!(validate_range(&pinned).expect("still valid"), pinned);
    }
}
