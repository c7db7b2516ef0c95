//! The query engine: selection, time-range reads of sample blocks, stack-tree merge,
//! and every answer format.
//!
//! Every method is blocking (RocksDB reads); async callers run them on the blocking
//! pool. Answers are the `kiln.v1` response messages, shared by gRPC and HTTP.
//!
//! A [`QueryEngine`] reads one shard group. Its `*_partial` methods return the group's
//! mergeable part of an answer; [`partial`] finishes any number of parts into the
//! response. The single-group methods (`merge`, `range`, ...) are that same path with
//! one part and complete coverage.

pub mod partial;
pub mod pprof_export;
pub mod select;
pub mod stacks;
pub mod symbolize;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kiln_model::labels::LabelSet;
use kiln_model::profile_type::ProfileType;
use kiln_model::time::now_unix_ms;
use kiln_model::tree::{StackTree, TopEntry, TruncationReport};
use kiln_proto::kiln::v1 as api;
use roaring::RoaringBitmap;

use self::partial::{MergePartial, PartialRecords, RangePartial, SeriesPartial};
use self::stacks::StackSet;
use self::symbolize::SymbolRecords;
use crate::error::NodeError;
use crate::metrics::{Metrics, QueryLabels};
use crate::storage::blocks::{decode_block_header, visit_block};
use crate::storage::keys::{self, GroupId};
use crate::storage::Storage;

/// Dense stack ids below this are accumulated in a vector, above in a map.
const DENSE_ACCUMULATOR_LIMIT: u64 = 1 << 26;

/// Values per dense stack id, accumulated without hashing for the common case.
#[derive(Default)]
struct StackValues {
    dense: Vec<i64>,
    sparse: HashMap<u64, i64>,
}

impl StackValues {
    fn add(&mut self, stack: u64, value: i64) {
        if stack < DENSE_ACCUMULATOR_LIMIT {
            let index = stack as usize;
            if index >= self.dense.len() {
                self.dense.resize((index + 1).next_power_of_two(), 0);
            }
            self.dense[index] = self.dense[index].wrapping_add(value);
        } else {
            let slot = self.sparse.entry(stack).or_default();
            *slot = slot.wrapping_add(value);
        }
    }

    fn into_pairs(self) -> Vec<(u64, i64)> {
        let mut pairs: Vec<(u64, i64)> = self
            .dense
            .into_iter()
            .enumerate()
            .filter(|(_, value)| *value != 0)
            .map(|(stack, value)| (stack as u64, value))
            .collect();
        pairs.extend(self.sparse.into_iter().filter(|(_, value)| *value != 0));
        pairs
    }
}

/// A merge before rendering: values per stack and what was read.
pub struct MergedStacks {
    /// `(dense stack id, value)`.
    pub values: Vec<(u64, i64)>,
    /// Sample blocks (profiles) read.
    pub profiles: u64,
    /// Series that contributed.
    pub series: u64,
}

/// A validated time range, unix ms, both ends inclusive.
#[derive(Debug, Clone, Copy)]
pub struct TimeRange {
    /// Start, unix ms.
    pub start_unix_ms: i64,
    /// End, unix ms.
    pub end_unix_ms: i64,
}

impl TimeRange {
    /// Checks a selection's range; an `end` of 0 means now.
    pub fn from_selection(selection: &api::Selection) -> Result<TimeRange, NodeError> {
        let end_unix_ms = if selection.end_unix_ms == 0 {
            now_unix_ms()
        } else {
            selection.end_unix_ms
        };
        if selection.start_unix_ms > end_unix_ms {
            return Err(NodeError::InvalidArgument(format!(
                "invalid time range: start ({}) is after end ({end_unix_ms})",
                selection.start_unix_ms
            )));
        }
        Ok(TimeRange {
            start_unix_ms: selection.start_unix_ms,
            end_unix_ms,
        })
    }

    fn start_nanos(&self) -> i64 {
        self.start_unix_ms.saturating_mul(1_000_000)
    }

    fn end_nanos_inclusive(&self) -> i64 {
        self.end_unix_ms.saturating_mul(1_000_000).saturating_add(999_999)
    }
}

/// Converts a model profile type to its API form.
pub fn profile_type_info(profile_type: &ProfileType) -> api::ProfileTypeInfo {
    api::ProfileTypeInfo {
        id: profile_type.id(),
        name: profile_type.name.clone(),
        sample_type: profile_type.sample_type.clone(),
        sample_unit: profile_type.sample_unit.clone(),
        period_type: profile_type.period_type.clone(),
        period_unit: profile_type.period_unit.clone(),
        delta: profile_type.delta,
    }
}

fn tree_to_api(tree: &StackTree) -> api::StackTree {
    let order = tree.preorder();
    let mut position = vec![0i32; tree.nodes().len()];
    for (index, node) in order.iter().enumerate() {
        position[*node as usize] = index as i32;
    }
    let nodes = order
        .iter()
        .map(|index| {
            let node = tree.nodes()[*index as usize];
            api::TreeNode {
                frame: node.frame,
                parent: if *index == 0 {
                    -1
                } else {
                    position[node.parent as usize]
                },
                self_: node.self_value,
                total: node.total,
                baseline_self: node.baseline_self,
                baseline_total: node.baseline_total,
            }
        })
        .collect();
    api::StackTree {
        frames: tree.frames().iter().map(frame_to_api).collect(),
        nodes,
    }
}

fn frame_to_api(frame: &kiln_model::tree::Frame) -> api::Frame {
    api::Frame {
        function: frame.function.clone(),
        file: frame.file.clone(),
        binary: frame.binary.clone(),
    }
}

fn top_to_api(tree: &StackTree, rows: &[TopEntry]) -> api::Top {
    api::Top {
        rows: rows
            .iter()
            .map(|row| api::TopRow {
                frame: Some(frame_to_api(&tree.frames()[row.frame as usize])),
                flat: row.flat,
                cum: row.cum,
                baseline_flat: row.baseline_flat,
                baseline_cum: row.baseline_cum,
            })
            .collect(),
    }
}

fn truncation_to_api(report: TruncationReport, rows_removed: u64) -> Option<api::Truncation> {
    if report.nodes_removed == 0 && rows_removed == 0 {
        return None;
    }
    Some(api::Truncation {
        nodes_removed: report.nodes_removed,
        value_removed: report.value_removed,
        rows_removed,
    })
}

fn limit_rows(mut rows: Vec<TopEntry>, limit: u32) -> (Vec<TopEntry>, u64) {
    if limit == 0 || rows.len() <= limit as usize {
        return (rows, 0);
    }
    let removed = (rows.len() - limit as usize) as u64;
    rows.truncate(limit as usize);
    (rows, removed)
}

fn complete_coverage() -> api::Coverage {
    api::Coverage {
        groups_total: 1,
        missing: Vec::new(),
    }
}

fn check_fraction(fraction: f64) -> Result<f64, NodeError> {
    if !(0.0..1.0).contains(&fraction) || fraction.is_nan() {
        return Err(NodeError::InvalidArgument(format!(
            "min_node_fraction must be in [0, 1), got {fraction}"
        )));
    }
    Ok(fraction)
}

/// Renders a folded text as a flame graph SVG with inferno.
pub fn render_svg(folded: &str, title: &str, count_name: &str) -> Result<String, NodeError> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    options.hash = true;
    let mut svg = Vec::new();
    if folded.trim().is_empty() {
        return Ok(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"60\"><text x=\"10\" y=\"30\">{}: no samples</text></svg>",
            title.replace('<', "&lt;").replace('&', "&amp;")
        ));
    }
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .map_err(|error| NodeError::Internal(format!("flame graph rendering failed: {error}")))?;
    String::from_utf8(svg).map_err(|error| NodeError::Internal(format!("flame graph is not UTF-8: {error}")))
}

/// The query engine of one shard group.
#[derive(Clone)]
pub struct QueryEngine {
    storage: Storage,
    group: GroupId,
    metrics: Arc<Metrics>,
}

impl QueryEngine {
    /// An engine reading `group` of `storage`.
    pub fn new(storage: Storage, group: GroupId, metrics: Arc<Metrics>) -> Self {
        QueryEngine {
            storage,
            group,
            metrics,
        }
    }

    fn observe<T>(&self, kind: &str, run: impl FnOnce() -> Result<T, NodeError>) -> Result<T, NodeError> {
        let started = std::time::Instant::now();
        let result = run();
        self.metrics
            .query_seconds
            .get_or_create(&QueryLabels {
                kind: kind.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            self.metrics.count_error(kind, error.grpc_code());
        }
        result
    }

    /// Visits every sample block of `ordinals` in `range`, in (partition, series,
    /// time) order: `visit(ordinal, time_unix_nanos, block bytes)`.
    fn scan_blocks(
        &self,
        ordinals: &RoaringBitmap,
        range: TimeRange,
        mut visit: impl FnMut(u32, i64, &[u8]) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        if ordinals.is_empty() {
            return Ok(());
        }
        let samples_cf = self.storage.cf(keys::CF_SAMPLES)?;
        let mut iterator = self.storage.db().raw_iterator_cf(samples_cf);
        let start_nanos = range.start_nanos();
        let end_nanos = range.end_nanos_inclusive();
        let last_partition = keys::partition_of(end_nanos);
        let mut partition = keys::partition_of(start_nanos);
        while partition <= last_partition {
            // Jump to the next partition that holds data, skipping empty ones.
            iterator.seek(keys::sample_partition_prefix(self.group, partition));
            let Some(found) = iterator.key().and_then(keys::decode_sample_key) else {
                break;
            };
            if found.group != self.group || found.partition_start_ms > last_partition {
                break;
            }
            partition = found.partition_start_ms;
            for ordinal in ordinals {
                iterator.seek(keys::sample_key(self.group, partition, ordinal, start_nanos, 0));
                while iterator.valid() {
                    let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else {
                        break;
                    };
                    let Some(decoded) = keys::decode_sample_key(key) else {
                        return Err(NodeError::Corrupt("sample key of the wrong length".into()));
                    };
                    if decoded.group != self.group
                        || decoded.partition_start_ms != partition
                        || decoded.ordinal != ordinal
                        || decoded.time_unix_nanos > end_nanos
                    {
                        break;
                    }
                    visit(ordinal, decoded.time_unix_nanos, value)?;
                    iterator.next();
                }
            }
            iterator.status()?;
            partition += keys::PARTITION_MILLIS;
        }
        iterator.status()?;
        Ok(())
    }

    /// Values per stack over the selection. Delta types add every profile in the
    /// range; other types (snapshots, cumulative counters) take each series' latest
    /// profile in the range, then add the series.
    pub fn merge_stacks(
        &self,
        profile_type: &ProfileType,
        ordinals: &RoaringBitmap,
        range: TimeRange,
    ) -> Result<MergedStacks, NodeError> {
        let mut accumulated = StackValues::default();
        let mut profiles = 0u64;
        let mut contributing = RoaringBitmap::new();
        if profile_type.delta {
            self.scan_blocks(ordinals, range, |ordinal, _, block| {
                visit_block(block, |stack, value| accumulated.add(stack, value))?;
                profiles += 1;
                contributing.insert(ordinal);
                Ok(())
            })?;
        } else {
            let mut latest: HashMap<u32, (i64, Vec<u8>)> = HashMap::new();
            self.scan_blocks(ordinals, range, |ordinal, time, block| {
                let entry = latest.entry(ordinal).or_insert_with(|| (i64::MIN, Vec::new()));
                if time >= entry.0 {
                    *entry = (time, block.to_vec());
                }
                Ok(())
            })?;
            for (ordinal, (_, block)) in latest {
                visit_block(&block, |stack, value| accumulated.add(stack, value))?;
                profiles += 1;
                contributing.insert(ordinal);
            }
        }
        Ok(MergedStacks {
            values: accumulated.into_pairs(),
            profiles,
            series: contributing.len(),
        })
    }

    /// This group's merge of `selection`: its stacks by location ids with their
    /// summed values and, unless `records` says [`PartialRecords::Omitted`], every
    /// symbol record they need (see [`MergePartial`]). An end of 0 means this node's
    /// now; a coordinator pins it first ([`partial::validate_merge`]).
    pub fn merge_partial(
        &self,
        selection: &api::Selection,
        records: PartialRecords,
    ) -> Result<MergePartial, NodeError> {
        self.observe("merge_partial", || {
            self.merge_partial_unobserved(selection, records)
        })
    }

    fn merge_partial_unobserved(
        &self,
        selection: &api::Selection,
        records_wanted: PartialRecords,
    ) -> Result<MergePartial, NodeError> {
        let checked = partial::check_selection(selection)?;
        let ordinals = select::select_series(&self.storage, self.group, &checked.selector, i64::MIN)?;
        let merged = self.merge_stacks(&checked.profile_type, &ordinals, checked.range)?;
        let stack_ids: Vec<u64> = merged.values.iter().map(|(stack, _)| *stack).collect();
        let location_lists = self.storage.stacks(self.group, &stack_ids)?;
        let stacks = StackSet::from_pairs(
            location_lists
                .iter()
                .zip(&merged.values)
                .map(|(locations, (_, value))| (locations.as_ref(), *value)),
        );
        match records_wanted {
            PartialRecords::Omitted => Ok(MergePartial::without_records(
                checked.profile_type,
                stacks,
                merged.profiles,
                merged.series,
            )),
            PartialRecords::Included => {
                let records = SymbolRecords::load(&self.storage, self.group, stacks.distinct_location_ids())?;
                Ok(MergePartial::new(
                    checked.profile_type,
                    stacks,
                    records,
                    merged.profiles,
                    merged.series,
                ))
            }
        }
    }

    /// Merge: a flame graph tree, top table, pprof, folded text or SVG.
    pub fn merge(&self, request: &api::MergeRequest) -> Result<api::MergeResponse, NodeError> {
        self.observe("merge", || {
            let request = partial::validate_merge(request)?;
            let mut parts = Vec::with_capacity(1);
            if let Some(selection) = &request.selection {
                parts.push(self.merge_partial_unobserved(selection, PartialRecords::Included)?);
            }
            partial::finish_merge(&request, parts, complete_coverage())
        })
    }

    /// Diff: B's values against A's (the baseline) in one tree and one top table.
    pub fn diff(&self, request: &api::DiffRequest) -> Result<api::DiffResponse, NodeError> {
        self.observe("diff", || {
            let request = partial::validate_diff(request)?;
            let (Some(selection_a), Some(selection_b)) = (&request.a, &request.b) else {
                return Err(NodeError::InvalidArgument(
                    "a diff needs selections a and b".into(),
                ));
            };
            let part_a = self.merge_partial_unobserved(selection_a, PartialRecords::Included)?;
            let part_b = self.merge_partial_unobserved(selection_b, PartialRecords::Included)?;
            partial::finish_diff(&request, vec![part_a], vec![part_b], complete_coverage())
        })
    }

    /// This group's range answer: per label key (`sum_by`, or the full labels) and
    /// bucket, the sum (delta types) or the sum over series of each series' latest
    /// value in the bucket (other types). Only buckets holding data are returned.
    pub fn range_partial(&self, request: &api::RangeRequest) -> Result<RangePartial, NodeError> {
        self.observe("range_partial", || self.range_partial_unobserved(request))
    }

    fn range_partial_unobserved(&self, request: &api::RangeRequest) -> Result<RangePartial, NodeError> {
        let selection = request
            .selection
            .as_ref()
            .ok_or_else(|| NodeError::InvalidArgument("selection is required".into()))?;
        let checked = partial::check_selection(selection)?;
        let range = checked.range;
        let step_ms = partial::range_step(request.step_ms, range)?;
        let profile_type = checked.profile_type;
        let ordinals = select::select_series(&self.storage, self.group, &checked.selector, i64::MIN)?;
        // Per series, per bucket: (latest time, value) for snapshots, or the sum.
        let mut per_series: HashMap<u32, BTreeMap<i64, (i64, i64)>> = HashMap::new();
        self.scan_blocks(&ordinals, range, |ordinal, time, block| {
            let (_, total) = decode_block_header(block)?;
            let bucket = partial::range_bucket(range.start_unix_ms, step_ms, time.div_euclid(1_000_000));
            let slot = per_series
                .entry(ordinal)
                .or_default()
                .entry(bucket)
                .or_insert((i64::MIN, 0));
            if profile_type.delta {
                slot.1 = slot.1.wrapping_add(total);
            } else if time >= slot.0 {
                *slot = (time, total);
            }
            Ok(())
        })?;
        let mut keys: BTreeMap<partial::LabelPairs, BTreeMap<i64, i64>> = BTreeMap::new();
        for (ordinal, buckets) in per_series {
            let Some(record) = self.storage.series_by_ordinal(self.group, ordinal)? else {
                continue;
            };
            let key: partial::LabelPairs = if request.sum_by.is_empty() {
                record.labels.pairs().to_vec()
            } else {
                request
                    .sum_by
                    .iter()
                    .map(|name| (name.clone(), record.labels.get(name).unwrap_or("").to_string()))
                    .collect()
            };
            let points = keys.entry(key).or_default();
            for (bucket, (_, value)) in buckets {
                let slot = points.entry(bucket).or_default();
                *slot = slot.wrapping_add(value);
            }
        }
        Ok(RangePartial {
            profile_type,
            step_ms,
            series: keys
                .into_iter()
                .map(|(key, points)| (key, points.into_iter().collect()))
                .collect(),
        })
    }

    /// Range: value per step per series, or summed by labels.
    pub fn range(&self, request: &api::RangeRequest) -> Result<api::RangeResponse, NodeError> {
        self.observe("range", || {
            let request = partial::validate_range(request)?;
            let part = self.range_partial_unobserved(&request)?;
            partial::finish_range(&request, vec![part], complete_coverage())
        })
    }

    /// Series of an optional selection (empty selector: every series), alive at or
    /// after the selection's start when it has one.
    fn optional_selection(&self, selection: Option<&api::Selection>) -> Result<RoaringBitmap, NodeError> {
        match partial::check_optional_selection(selection)? {
            None => select::all_series(&self.storage, self.group),
            Some(checked) => select::select_series(
                &self.storage,
                self.group,
                &checked.selector,
                checked.not_before_unix_ms,
            ),
        }
    }

    /// This group's label names among the selected series (reserved names left out),
    /// sorted, without duplicates.
    pub fn labels_partial(&self, request: &api::LabelsRequest) -> Result<Vec<String>, NodeError> {
        self.observe("labels_partial", || self.labels_partial_unobserved(request))
    }

    fn labels_partial_unobserved(&self, request: &api::LabelsRequest) -> Result<Vec<String>, NodeError> {
        let selected = self.optional_selection(request.selection.as_ref())?;
        // One pass over every posting of the group, in name order.
        let mut names: Vec<String> = Vec::new();
        self.storage
            .scan_postings(&keys::posting_group_prefix(self.group), |name, _, bitmap| {
                let reserved = name.starts_with("__");
                let known = names.last().is_some_and(|last| last == name);
                if !reserved && !known && !bitmap.is_disjoint(&selected) {
                    names.push(name.to_string());
                }
            })?;
        Ok(names)
    }

    /// Label names of the selected series (reserved names left out).
    pub fn labels(&self, request: &api::LabelsRequest) -> Result<api::LabelsResponse, NodeError> {
        self.observe("labels", || {
            partial::validate_labels(request)?;
            let part = self.labels_partial_unobserved(request)?;
            Ok(partial::finish_labels(vec![part], complete_coverage()))
        })
    }

    /// This group's values of one label among the selected series, sorted.
    pub fn label_values_partial(&self, request: &api::LabelValuesRequest) -> Result<Vec<String>, NodeError> {
        self.observe("values_partial", || self.label_values_partial_unobserved(request))
    }

    fn label_values_partial_unobserved(
        &self,
        request: &api::LabelValuesRequest,
    ) -> Result<Vec<String>, NodeError> {
        partial::validate_label_values(request)?;
        let selected = self.optional_selection(request.selection.as_ref())?;
        Ok(self
            .storage
            .posting_values(self.group, &request.name)?
            .into_iter()
            .filter(|(_, bitmap)| !bitmap.is_disjoint(&selected))
            .map(|(value, _)| value)
            .collect())
    }

    /// Values of one label among the selected series.
    pub fn label_values(
        &self,
        request: &api::LabelValuesRequest,
    ) -> Result<api::LabelValuesResponse, NodeError> {
        self.observe("values", || {
            let part = self.label_values_partial_unobserved(request)?;
            Ok(partial::finish_label_values(vec![part], complete_coverage()))
        })
    }

    /// This group's selected series with their profile types and labels.
    pub fn series_partial(&self, request: &api::SeriesRequest) -> Result<SeriesPartial, NodeError> {
        self.observe("series_partial", || self.series_partial_unobserved(request))
    }

    fn series_partial_unobserved(&self, request: &api::SeriesRequest) -> Result<SeriesPartial, NodeError> {
        let selected = self.optional_selection(request.selection.as_ref())?;
        let mut series = Vec::with_capacity(selected.len() as usize);
        for ordinal in &selected {
            let Some(record) = self.storage.series_by_ordinal(self.group, ordinal)? else {
                continue;
            };
            series.push((record.profile_type, record.labels.pairs().to_vec()));
        }
        Ok(SeriesPartial { series })
    }

    /// The selected series with their profile types and labels.
    pub fn series(&self, request: &api::SeriesRequest) -> Result<api::SeriesResponse, NodeError> {
        self.observe("series", || {
            let part = self.series_partial_unobserved(request)?;
            partial::finish_series(vec![part], complete_coverage())
        })
    }

    /// This group's profile types with at least one series (alive since `start`
    /// when given), sorted by id.
    pub fn profile_types_partial(
        &self,
        request: &api::ProfileTypesRequest,
    ) -> Result<Vec<ProfileType>, NodeError> {
        self.observe("types_partial", || self.profile_types_partial_unobserved(request))
    }

    fn profile_types_partial_unobserved(
        &self,
        request: &api::ProfileTypesRequest,
    ) -> Result<Vec<ProfileType>, NodeError> {
        let mut types = Vec::new();
        let alive = match request.start_unix_ms {
            start if start > 0 => Some(select::alive_since(
                &self.storage,
                self.group,
                &select::all_series(&self.storage, self.group)?,
                start,
            )?),
            _ => None,
        };
        for (id, bitmap) in self
            .storage
            .posting_values(self.group, keys::PROFILE_TYPE_POSTING)?
        {
            if alive.as_ref().is_some_and(|alive| bitmap.is_disjoint(alive)) {
                continue;
            }
            types.push(ProfileType::parse(&id).map_err(|error| NodeError::Corrupt(error.to_string()))?);
        }
        Ok(types)
    }

    /// Profile types with at least one series (alive since `start` when given).
    pub fn profile_types(
        &self,
        request: &api::ProfileTypesRequest,
    ) -> Result<api::ProfileTypesResponse, NodeError> {
        self.observe("types", || {
            let part = self.profile_types_partial_unobserved(request)?;
            Ok(partial::finish_profile_types(vec![part], complete_coverage()))
        })
    }
}

/// Converts a label set to API labels.
pub fn labels_to_api(labels: &LabelSet) -> Vec<api::Label> {
    labels
        .pairs()
        .iter()
        .map(|(name, value)| api::Label {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}
