//! The query engine: selection, time-range reads of sample blocks, stack-tree merge,
//! and every answer format.
//!
//! Every method is blocking (RocksDB reads); async callers run them on the blocking
//! pool. Answers are the `kiln.v1` response messages, shared by gRPC and HTTP.

pub mod pprof_export;
pub mod select;
pub mod symbolize;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kiln_model::labels::LabelSet;
use kiln_model::profile_type::ProfileType;
use kiln_model::selector::{parse_selector, Selector};
use kiln_model::time::now_unix_ms;
use kiln_model::tree::{StackTree, TopEntry, TruncationReport};
use kiln_proto::kiln::v1 as api;
use roaring::RoaringBitmap;

use self::symbolize::ResolvedSymbols;
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

fn complete_coverage() -> Option<api::Coverage> {
    Some(api::Coverage {
        groups_total: 1,
        missing: Vec::new(),
    })
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

    fn parse(&self, text: &str) -> Result<Selector, NodeError> {
        Ok(parse_selector(text)?)
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

    fn merged_tree(
        &self,
        selection: &api::Selection,
    ) -> Result<(ProfileType, MergedStacks, ResolvedSymbols, StackTree, TimeRange), NodeError> {
        let range = TimeRange::from_selection(selection)?;
        let selector = self.parse(&selection.selector)?;
        let profile_type = selector.require_profile_type().map_err(NodeError::from)?.clone();
        let ordinals = select::select_series(&self.storage, self.group, &selector, i64::MIN)?;
        let merged = self.merge_stacks(&profile_type, &ordinals, range)?;
        let stack_ids: Vec<u64> = merged.values.iter().map(|(stack, _)| *stack).collect();
        let symbols = ResolvedSymbols::load(&self.storage, self.group, &stack_ids)?;
        let tree = symbols.build_tree(&merged.values);
        Ok((profile_type, merged, symbols, tree, range))
    }

    /// Merge: a flame graph tree, top table, pprof, folded text or SVG.
    pub fn merge(&self, request: &api::MergeRequest) -> Result<api::MergeResponse, NodeError> {
        self.observe("merge", || {
            let selection = request
                .selection
                .as_ref()
                .ok_or_else(|| NodeError::InvalidArgument("selection is required".into()))?;
            let min_fraction = check_fraction(request.min_node_fraction)?;
            let format = api::MergeFormat::try_from(request.format).map_err(|_| {
                NodeError::InvalidArgument(format!("unknown merge format {}", request.format))
            })?;
            let (profile_type, merged, symbols, tree, range) = self.merged_tree(selection)?;
            let mut truncation = None;
            let result = match format {
                api::MergeFormat::Unspecified | api::MergeFormat::Tree => {
                    let (truncated, report) = tree.truncated(min_fraction);
                    truncation = truncation_to_api(report, 0);
                    api::merge_response::Result::Tree(tree_to_api(&truncated))
                }
                api::MergeFormat::Top => {
                    let (rows, rows_removed) = limit_rows(tree.top(), request.top_limit);
                    truncation = truncation_to_api(TruncationReport::default(), rows_removed);
                    api::merge_response::Result::Top(top_to_api(&tree, &rows))
                }
                api::MergeFormat::Folded => {
                    let (truncated, report) = tree.truncated(min_fraction);
                    truncation = truncation_to_api(report, 0);
                    api::merge_response::Result::Folded(truncated.folded())
                }
                api::MergeFormat::Svg => {
                    let (truncated, report) = tree.truncated(min_fraction);
                    truncation = truncation_to_api(report, 0);
                    let svg = render_svg(&truncated.folded(), &profile_type.id(), &profile_type.sample_unit)?;
                    api::merge_response::Result::Svg(svg)
                }
                api::MergeFormat::Pprof => api::merge_response::Result::Pprof(pprof_export::export_pprof(
                    &profile_type,
                    &symbols,
                    &merged.values,
                    range.start_unix_ms,
                    range.end_unix_ms,
                )?),
            };
            Ok(api::MergeResponse {
                profile_type: Some(profile_type_info(&profile_type)),
                total: tree.total(),
                profiles: merged.profiles,
                series: merged.series,
                result: Some(result),
                truncation,
                coverage: complete_coverage(),
            })
        })
    }

    /// Diff: B's values against A's (the baseline) in one tree and one top table.
    pub fn diff(&self, request: &api::DiffRequest) -> Result<api::DiffResponse, NodeError> {
        self.observe("diff", || {
            let (Some(selection_a), Some(selection_b)) = (&request.a, &request.b) else {
                return Err(NodeError::InvalidArgument(
                    "a diff needs selections a and b".into(),
                ));
            };
            let min_fraction = check_fraction(request.min_node_fraction)?;
            let (type_a, _, _, tree_a, _) = self.merged_tree(selection_a)?;
            let (type_b, _, _, mut tree, _) = self.merged_tree(selection_b)?;
            if type_a.sample_unit != type_b.sample_unit {
                return Err(NodeError::InvalidArgument(format!(
                    "cannot diff {} against {}: the units differ",
                    type_b.id(),
                    type_a.id()
                )));
            }
            tree.merge_as_baseline(&tree_a);
            let (rows, rows_removed) = limit_rows(tree.top(), request.top_limit);
            let top = top_to_api(&tree, &rows);
            let (truncated, report) = tree.truncated(min_fraction);
            Ok(api::DiffResponse {
                profile_type: Some(profile_type_info(&type_b)),
                total_a: tree.baseline_total(),
                total_b: tree.total(),
                tree: Some(tree_to_api(&truncated)),
                top: Some(top),
                truncation: truncation_to_api(report, rows_removed),
                coverage: complete_coverage(),
            })
        })
    }

    /// Range: value per step per series, or summed by labels.
    pub fn range(&self, request: &api::RangeRequest) -> Result<api::RangeResponse, NodeError> {
        self.observe("range", || {
            let selection = request
                .selection
                .as_ref()
                .ok_or_else(|| NodeError::InvalidArgument("selection is required".into()))?;
            let range = TimeRange::from_selection(selection)?;
            if request.step_ms < 0 {
                return Err(NodeError::InvalidArgument("step_ms must not be negative".into()));
            }
            let span = range.end_unix_ms - range.start_unix_ms;
            let step_ms = if request.step_ms == 0 {
                (span / 100).max(1000)
            } else {
                request.step_ms
            };
            // Only buckets holding data are returned, so the answer is bounded by the
            // data read, whatever the step.
            let selector = self.parse(&selection.selector)?;
            let profile_type = selector.require_profile_type().map_err(NodeError::from)?.clone();
            let ordinals = select::select_series(&self.storage, self.group, &selector, i64::MIN)?;
            // Per series, per bucket: (latest time, value) for snapshots, or the sum.
            let mut per_series: HashMap<u32, BTreeMap<i64, (i64, i64)>> = HashMap::new();
            self.scan_blocks(&ordinals, range, |ordinal, time, block| {
                let (_, total) = decode_block_header(block)?;
                let time_ms = time.div_euclid(1_000_000);
                let bucket =
                    range.start_unix_ms + (time_ms - range.start_unix_ms).div_euclid(step_ms) * step_ms;
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
            let mut groups: BTreeMap<Vec<(String, String)>, BTreeMap<i64, i64>> = BTreeMap::new();
            for (ordinal, buckets) in per_series {
                let Some(record) = self.storage.series_by_ordinal(self.group, ordinal)? else {
                    continue;
                };
                let key: Vec<(String, String)> = if request.sum_by.is_empty() {
                    record.labels.pairs().to_vec()
                } else {
                    request
                        .sum_by
                        .iter()
                        .map(|name| (name.clone(), record.labels.get(name).unwrap_or("").to_string()))
                        .collect()
                };
                let group = groups.entry(key).or_default();
                for (bucket, (_, value)) in buckets {
                    *group.entry(bucket).or_default() += value;
                }
            }
            let series = groups
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
                profile_type: Some(profile_type_info(&profile_type)),
                step_ms,
                series,
                coverage: complete_coverage(),
            })
        })
    }

    /// Series of an optional selection (empty selector: every series), alive at or
    /// after the selection's start when it has one.
    fn optional_selection(&self, selection: Option<&api::Selection>) -> Result<RoaringBitmap, NodeError> {
        let Some(selection) = selection else {
            return select::all_series(&self.storage, self.group);
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
            self.parse(&selection.selector)?
        };
        let not_before = if selection.start_unix_ms > 0 {
            selection.start_unix_ms
        } else {
            i64::MIN
        };
        select::select_series(&self.storage, self.group, &selector, not_before)
    }

    /// Label names of the selected series (reserved names left out).
    pub fn labels(&self, request: &api::LabelsRequest) -> Result<api::LabelsResponse, NodeError> {
        self.observe("labels", || {
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
            Ok(api::LabelsResponse {
                names,
                coverage: complete_coverage(),
            })
        })
    }

    /// Values of one label among the selected series.
    pub fn label_values(
        &self,
        request: &api::LabelValuesRequest,
    ) -> Result<api::LabelValuesResponse, NodeError> {
        self.observe("values", || {
            if !kiln_model::labels::is_valid_label_name(&request.name) {
                return Err(NodeError::InvalidArgument(format!(
                    "invalid label name {:?}",
                    request.name
                )));
            }
            let selected = self.optional_selection(request.selection.as_ref())?;
            let values = self
                .storage
                .posting_values(self.group, &request.name)?
                .into_iter()
                .filter(|(_, bitmap)| !bitmap.is_disjoint(&selected))
                .map(|(value, _)| value)
                .collect();
            Ok(api::LabelValuesResponse {
                values,
                coverage: complete_coverage(),
            })
        })
    }

    /// The selected series with their profile types and labels.
    pub fn series(&self, request: &api::SeriesRequest) -> Result<api::SeriesResponse, NodeError> {
        self.observe("series", || {
            let selected = self.optional_selection(request.selection.as_ref())?;
            let mut series = Vec::with_capacity(selected.len() as usize);
            for ordinal in &selected {
                let Some(record) = self.storage.series_by_ordinal(self.group, ordinal)? else {
                    continue;
                };
                series.push(api::SeriesInfo {
                    series_hash: kiln_model::labels::series_hash(&record.profile_type, &record.labels),
                    profile_type: Some(profile_type_info(&record.profile_type)),
                    labels: labels_to_api(&record.labels),
                });
            }
            series.sort_by(|left, right| {
                let key = |info: &api::SeriesInfo| {
                    (
                        info.profile_type
                            .as_ref()
                            .map(|profile_type| profile_type.id.clone()),
                        info.labels
                            .iter()
                            .map(|label| (label.name.clone(), label.value.clone()))
                            .collect::<Vec<_>>(),
                    )
                };
                key(left).cmp(&key(right))
            });
            Ok(api::SeriesResponse {
                series,
                coverage: complete_coverage(),
            })
        })
    }

    /// Profile types with at least one series (alive since `start` when given).
    pub fn profile_types(
        &self,
        request: &api::ProfileTypesRequest,
    ) -> Result<api::ProfileTypesResponse, NodeError> {
        self.observe("types", || {
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
                let profile_type =
                    ProfileType::parse(&id).map_err(|error| NodeError::Corrupt(error.to_string()))?;
                types.push(profile_type_info(&profile_type));
            }
            Ok(api::ProfileTypesResponse {
                types,
                coverage: complete_coverage(),
            })
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
