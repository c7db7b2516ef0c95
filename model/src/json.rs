//! The stable JSON shapes of Kiln's query answers.
//!
//! These structs are what the node's HTTP API returns and what `kiln ... --output json` prints. They are a
//! public contract: fields are only ever added, never renamed, re-typed or removed.
//!
//! Conventions, for every struct of this module:
//! - field names are camelCase (`profileType`, `sampleUnit`, `timestampMs`);
//! - enums are lowercase strings (`"tree"`, `"top"`);
//! - 64-bit integer values (totals, sample values, timestamps) are plain JSON numbers, never strings;
//!   the one exception is the series hash, an identifier rather than a value, written as 16 lowercase hex
//!   digits so that JavaScript consumers do not lose its low bits;
//! - binary payloads (the gzipped pprof of a merge) are standard base64 with padding;
//! - label sets are JSON objects `{"name": "value"}` with names in sorted order.
//!
//! Each struct converts from its protobuf counterpart with `From<&proto>`; the conversion never fails and
//! never loses information that the JSON shape has a place for.

use std::collections::BTreeMap;

use kiln_proto::kiln::v1 as proto;
use serde::{Deserialize, Serialize};

/// A label set as a JSON object, names sorted. When a protobuf label list repeats a name (which valid
/// Kiln data never does), the last value wins.
pub type LabelMap = BTreeMap<String, String>;

/// Converts a protobuf label list into a [`LabelMap`]; names stay unique and sorted.
pub fn label_map_from_proto(labels: &[proto::Label]) -> LabelMap {
    labels
        .iter()
        .map(|label| (label.name.clone(), label.value.clone()))
        .collect()
}

fn is_false(value: &bool) -> bool {
    !*value
}

// ---------------------------------------------------------------- shared pieces

/// The profile type of an answer: `name:sample_type:sample_unit:period_type:period_unit[:delta]`, whole
/// (`id`) and in parts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileTypeInfo {
    /// The canonical id, e.g. `process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta`.
    pub id: String,
    /// The profile name, e.g. `process_cpu` or `memory`.
    pub name: String,
    /// What a sample value measures, e.g. `cpu` or `inuse_space`.
    pub sample_type: String,
    /// The unit of sample values, e.g. `nanoseconds`, `bytes` or `count`.
    pub sample_unit: String,
    /// What the sampling period measures, e.g. `cpu` or `space`.
    pub period_type: String,
    /// The unit of the sampling period.
    pub period_unit: String,
    /// True for delta profiles (each profile covers its own interval), false for cumulative ones.
    pub delta: bool,
}

impl From<&proto::ProfileTypeInfo> for ProfileTypeInfo {
    fn from(info: &proto::ProfileTypeInfo) -> Self {
        ProfileTypeInfo {
            id: info.id.clone(),
            name: info.name.clone(),
            sample_type: info.sample_type.clone(),
            sample_unit: info.sample_unit.clone(),
            period_type: info.period_type.clone(),
            period_unit: info.period_unit.clone(),
            delta: info.delta,
        }
    }
}

/// One shard group that did not contribute to an answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MissingGroup {
    /// The shard group's id.
    pub group_id: u64,
    /// Why it did not answer, in words.
    pub reason: String,
}

impl From<&proto::MissingGroup> for MissingGroup {
    fn from(missing: &proto::MissingGroup) -> Self {
        MissingGroup {
            group_id: missing.group_id,
            reason: missing.reason.clone(),
        }
    }
}

/// Which parts of the data answered. An empty `missing` list means the answer is complete; a non-empty one
/// only ever appears when the caller asked for partial results.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// How many shard groups the query was sent to (0 from a single node that does not count groups).
    pub groups_total: u32,
    /// The groups that did not answer.
    pub missing: Vec<MissingGroup>,
}

impl Coverage {
    /// True when no shard group is missing from the answer.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

impl From<&proto::Coverage> for Coverage {
    fn from(coverage: &proto::Coverage) -> Self {
        Coverage {
            groups_total: coverage.groups_total,
            missing: coverage.missing.iter().map(MissingGroup::from).collect(),
        }
    }
}

fn coverage_from_option(coverage: Option<&proto::Coverage>) -> Coverage {
    coverage.map(Coverage::from).unwrap_or_default()
}

/// What truncation cut from an answer, so that nothing is silently left out. All zero means nothing was cut.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Truncation {
    /// Tree nodes folded into their parent's "other" node.
    pub nodes_removed: u64,
    /// The total value of what was folded away.
    pub value_removed: i64,
    /// Top rows left out by the row limit.
    pub rows_removed: u64,
}

impl From<&proto::Truncation> for Truncation {
    fn from(truncation: &proto::Truncation) -> Self {
        Truncation {
            nodes_removed: truncation.nodes_removed,
            value_removed: truncation.value_removed,
            rows_removed: truncation.rows_removed,
        }
    }
}

fn truncation_from_option(truncation: Option<&proto::Truncation>) -> Truncation {
    truncation.map(Truncation::from).unwrap_or_default()
}

// ---------------------------------------------------------------- stack trees and top tables

/// A function in a binary: one frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    /// The function name (demangled), always present.
    pub function: String,
    /// The source file; absent when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// The mapping file (executable or shared library); absent when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub binary: String,
}

impl From<&proto::Frame> for Frame {
    fn from(frame: &proto::Frame) -> Self {
        Frame {
            function: frame.function.clone(),
            file: frame.file.clone(),
            binary: frame.binary.clone(),
        }
    }
}

/// One node of a [`StackTree`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeNode {
    /// Index into the tree's `frames`; absent on the root, which stands for all stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    /// Index of the parent node in the tree's `nodes`, always smaller than this node's own index; absent
    /// on the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// The value of stacks that end exactly here (this frame is the leaf).
    #[serde(rename = "self")]
    pub self_value: i64,
    /// The value of every stack that passes through this node, itself included.
    pub total: i64,
    /// Diff trees only: `self` of the same node in the baseline selection (A).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_self: Option<i64>,
    /// Diff trees only: `total` of the same node in the baseline selection (A).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_total: Option<i64>,
}

/// A merged stack tree, root first, nodes in pre-order: node 0 is the root (the sum of all stacks) and
/// every other node names its parent, which comes before it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackTree {
    /// The distinct frames, referenced by index from `nodes`.
    pub frames: Vec<Frame>,
    /// The nodes in pre-order.
    pub nodes: Vec<TreeNode>,
}

impl StackTree {
    /// Converts a protobuf tree, keeping the baseline values of each node: use it for diff trees.
    pub fn from_diff_proto(tree: &proto::StackTree) -> Self {
        Self::convert(tree, true)
    }

    fn convert(tree: &proto::StackTree, with_baseline: bool) -> Self {
        let frames = tree.frames.iter().map(Frame::from).collect();
        let nodes = tree
            .nodes
            .iter()
            .map(|node| {
                let parent = u32::try_from(node.parent).ok();
                TreeNode {
                    // The root (no parent) has no frame, whatever the protobuf field holds.
                    frame: parent.map(|_| node.frame),
                    parent,
                    self_value: node.self_,
                    total: node.total,
                    baseline_self: with_baseline.then_some(node.baseline_self),
                    baseline_total: with_baseline.then_some(node.baseline_total),
                }
            })
            .collect();
        StackTree { frames, nodes }
    }
}

impl From<&proto::StackTree> for StackTree {
    /// Converts a merge tree; baseline values are left out (see [`StackTree::from_diff_proto`]).
    fn from(tree: &proto::StackTree) -> Self {
        Self::convert(tree, false)
    }
}

/// One row of a top table, with `go tool pprof -top` semantics: `flat` is the value of stacks whose leaf
/// is this function, `cum` the value of stacks that contain it, each stack counted once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    /// The function.
    pub frame: Frame,
    /// Flat value.
    pub flat: i64,
    /// Cumulative value.
    pub cum: i64,
    /// Diff only: the baseline selection's (A) flat value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_flat: Option<i64>,
    /// Diff only: the baseline selection's (A) cumulative value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_cum: Option<i64>,
}

/// A top table, rows in the order the server ranked them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Top {
    /// The rows.
    pub rows: Vec<TopRow>,
}

impl Top {
    /// Converts a protobuf top table, keeping the baseline values of each row: use it for diffs.
    pub fn from_diff_proto(top: &proto::Top) -> Self {
        Self::convert(top, true)
    }

    fn convert(top: &proto::Top, with_baseline: bool) -> Self {
        let rows = top
            .rows
            .iter()
            .map(|row| TopRow {
                frame: row.frame.as_ref().map(Frame::from).unwrap_or_default(),
                flat: row.flat,
                cum: row.cum,
                baseline_flat: with_baseline.then_some(row.baseline_flat),
                baseline_cum: with_baseline.then_some(row.baseline_cum),
            })
            .collect();
        Top { rows }
    }
}

impl From<&proto::Top> for Top {
    /// Converts a merge top table; baseline values are left out (see [`Top::from_diff_proto`]).
    fn from(top: &proto::Top) -> Self {
        Self::convert(top, false)
    }
}

// ---------------------------------------------------------------- merge

/// Which form a merge answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeFormat {
    /// A stack tree, in the `tree` field.
    Tree,
    /// A top table, in the `top` field.
    Top,
    /// A gzipped pprof, base64 in the `pprof` field.
    Pprof,
    /// Folded stacks text, in the `folded` field.
    Folded,
    /// A flame graph SVG, in the `svg` field.
    Svg,
}

/// The answer to a merge query: every matching profile over the time range merged into one.
///
/// Exactly one of `tree`, `top`, `pprof`, `folded`, `svg` is present, the one `format` names; when the
/// server sent no result at all, `format` and all five are absent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeResult {
    /// The profile type merged; absent when nothing matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<ProfileTypeInfo>,
    /// The sum of every sample value merged, before any truncation.
    pub total: i64,
    /// How many stored profiles were merged.
    pub profiles: u64,
    /// How many series contributed.
    pub series: u64,
    /// Which result field is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<MergeFormat>,
    /// The stack tree, when `format` is `tree`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<StackTree>,
    /// The top table, when `format` is `top`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Top>,
    /// The gzipped pprof bytes (base64 in JSON), when `format` is `pprof`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_option")]
    pub pprof: Option<Vec<u8>>,
    /// Folded stacks (`root;...;leaf value` per line), when `format` is `folded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<String>,
    /// The flame graph SVG document, when `format` is `svg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    /// What truncation cut.
    pub truncation: Truncation,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::MergeResponse> for MergeResult {
    fn from(response: &proto::MergeResponse) -> Self {
        use proto::merge_response::Result as ProtoResult;
        let mut result = MergeResult {
            profile_type: response.profile_type.as_ref().map(ProfileTypeInfo::from),
            total: response.total,
            profiles: response.profiles,
            series: response.series,
            truncation: truncation_from_option(response.truncation.as_ref()),
            coverage: coverage_from_option(response.coverage.as_ref()),
            ..MergeResult::default()
        };
        match &response.result {
            None => {}
            Some(ProtoResult::Tree(tree)) => {
                result.format = Some(MergeFormat::Tree);
                result.tree = Some(StackTree::from(tree));
            }
            Some(ProtoResult::Top(top)) => {
                result.format = Some(MergeFormat::Top);
                result.top = Some(Top::from(top));
            }
            Some(ProtoResult::Pprof(bytes)) => {
                result.format = Some(MergeFormat::Pprof);
                result.pprof = Some(bytes.clone());
            }
            Some(ProtoResult::Folded(text)) => {
                result.format = Some(MergeFormat::Folded);
                result.folded = Some(text.clone());
            }
            Some(ProtoResult::Svg(svg)) => {
                result.format = Some(MergeFormat::Svg);
                result.svg = Some(svg.clone());
            }
        }
        result
    }
}

// ---------------------------------------------------------------- range

/// One bucket of a range series.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the bucket, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sum of sample values in the bucket.
    pub value: i64,
}

impl From<&proto::Point> for Point {
    fn from(point: &proto::Point) -> Self {
        Point {
            timestamp_ms: point.timestamp_ms,
            value: point.value,
        }
    }
}

/// One line of a range answer: a series (or a sum of series sharing the `sumBy` labels) over time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeSeries {
    /// The series' labels, or only the `sumBy` labels when summed.
    pub labels: LabelMap,
    /// The buckets, in time order.
    pub points: Vec<Point>,
}

impl From<&proto::RangeSeries> for RangeSeries {
    fn from(series: &proto::RangeSeries) -> Self {
        RangeSeries {
            labels: label_map_from_proto(&series.labels),
            points: series.points.iter().map(Point::from).collect(),
        }
    }
}

/// The answer to a range query: value per step per series.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeResult {
    /// The profile type; absent when nothing matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<ProfileTypeInfo>,
    /// The bucket width in milliseconds.
    pub step_ms: i64,
    /// One entry per series or per `sumBy` group.
    pub series: Vec<RangeSeries>,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::RangeResponse> for RangeResult {
    fn from(response: &proto::RangeResponse) -> Self {
        RangeResult {
            profile_type: response.profile_type.as_ref().map(ProfileTypeInfo::from),
            step_ms: response.step_ms,
            series: response.series.iter().map(RangeSeries::from).collect(),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

// ---------------------------------------------------------------- diff

/// The answer to a diff query: selection B compared against the baseline selection A. Node and row
/// values are B's; `baselineSelf`/`baselineTotal`/`baselineFlat`/`baselineCum` are A's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffResult {
    /// The profile type compared; absent when nothing matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<ProfileTypeInfo>,
    /// The total of the baseline selection A.
    pub total_a: i64,
    /// The total of the comparison selection B.
    pub total_b: i64,
    /// The diff tree, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<StackTree>,
    /// The diff top table, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Top>,
    /// What truncation cut.
    pub truncation: Truncation,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::DiffResponse> for DiffResult {
    fn from(response: &proto::DiffResponse) -> Self {
        DiffResult {
            profile_type: response.profile_type.as_ref().map(ProfileTypeInfo::from),
            total_a: response.total_a,
            total_b: response.total_b,
            tree: response.tree.as_ref().map(StackTree::from_diff_proto),
            top: response.top.as_ref().map(Top::from_diff_proto),
            truncation: truncation_from_option(response.truncation.as_ref()),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

// ---------------------------------------------------------------- metadata

/// The answer to a label names query, names sorted as the server sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelsResult {
    /// The label names.
    pub names: Vec<String>,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::LabelsResponse> for LabelsResult {
    fn from(response: &proto::LabelsResponse) -> Self {
        LabelsResult {
            names: response.names.clone(),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

/// The answer to a label values query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelValuesResult {
    /// The values of the label.
    pub values: Vec<String>,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::LabelValuesResponse> for LabelValuesResult {
    fn from(response: &proto::LabelValuesResponse) -> Self {
        LabelValuesResult {
            values: response.values.clone(),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

/// One series: a profile type and a label set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesEntry {
    /// The series' profile type; absent only if the server left it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<ProfileTypeInfo>,
    /// The series' labels.
    pub labels: LabelMap,
    /// The series hash as exactly 16 lowercase hex digits.
    pub series_hash: String,
}

/// Formats a series hash the way [`SeriesEntry::series_hash`] carries it: 16 lowercase hex digits.
pub fn format_series_hash(series_hash: u64) -> String {
    format!("{series_hash:016x}")
}

impl From<&proto::SeriesInfo> for SeriesEntry {
    fn from(series: &proto::SeriesInfo) -> Self {
        SeriesEntry {
            profile_type: series.profile_type.as_ref().map(ProfileTypeInfo::from),
            labels: label_map_from_proto(&series.labels),
            series_hash: format_series_hash(series.series_hash),
        }
    }
}

/// The answer to a series query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesResult {
    /// The matching series.
    pub series: Vec<SeriesEntry>,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::SeriesResponse> for SeriesResult {
    fn from(response: &proto::SeriesResponse) -> Self {
        SeriesResult {
            series: response.series.iter().map(SeriesEntry::from).collect(),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

/// The answer to a profile types query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileTypesResult {
    /// The profile types that have data in the time range.
    pub types: Vec<ProfileTypeInfo>,
    /// Which shard groups answered.
    pub coverage: Coverage,
}

impl From<&proto::ProfileTypesResponse> for ProfileTypesResult {
    fn from(response: &proto::ProfileTypesResponse) -> Self {
        ProfileTypesResult {
            types: response.types.iter().map(ProfileTypeInfo::from).collect(),
            coverage: coverage_from_option(response.coverage.as_ref()),
        }
    }
}

// ---------------------------------------------------------------- ingest

/// The answer to a write (one ingested batch).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// True when the batch's idempotency key had already been stored: nothing was stored twice.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
    /// Profiles stored (one per sample type of each pprof).
    pub profiles: u64,
    /// Samples (stack + value) stored.
    pub samples: u64,
    /// Distinct series written.
    pub series: u64,
    /// Canonical ids of the profile types written.
    pub profile_types: Vec<String>,
}

impl From<&proto::WriteResponse> for WriteResult {
    fn from(response: &proto::WriteResponse) -> Self {
        WriteResult {
            duplicate: response.duplicate,
            profiles: response.profiles,
            samples: response.samples,
            series: response.series,
            profile_types: response.profile_types.clone(),
        }
    }
}

// ---------------------------------------------------------------- base64

/// Standard base64 (RFC 4648, with padding) for the binary fields of these shapes.
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes bytes as standard base64 with `=` padding.
    pub fn encode(bytes: &[u8]) -> String {
        let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let first = chunk[0];
            let second = chunk.get(1).copied().unwrap_or(0);
            let third = chunk.get(2).copied().unwrap_or(0);
            let group = (u32::from(first) << 16) | (u32::from(second) << 8) | u32::from(third);
            let symbol = |shift: u32| char::from(ALPHABET[((group >> shift) & 0x3f) as usize]);
            encoded.push(symbol(18));
            encoded.push(symbol(12));
            encoded.push(if chunk.len() > 1 { symbol(6) } else { '=' });
            encoded.push(if chunk.len() > 2 { symbol(0) } else { '=' });
        }
        encoded
    }

    fn symbol_value(symbol: u8) -> Option<u32> {
        let value = match symbol {
            b'A'..=b'Z' => symbol - b'A',
            b'a'..=b'z' => symbol - b'a' + 26,
            b'0'..=b'9' => symbol - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }

    /// Decodes standard base64 with `=` padding; returns a description of the first problem otherwise.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let symbols = text.as_bytes();
        if !symbols.len().is_multiple_of(4) {
            return Err(format!("base64 length {} is not a multiple of 4", symbols.len()));
        }
        let mut decoded = Vec::with_capacity(symbols.len() / 4 * 3);
        let group_count = symbols.len() / 4;
        for (group_index, group) in symbols.chunks(4).enumerate() {
            let is_last_group = group_index + 1 == group_count;
            let padding = group.iter().rev().take_while(|&&symbol| symbol == b'=').count();
            if padding > 2 || (padding > 0 && !is_last_group) {
                return Err(format!("misplaced base64 padding in group {group_index}"));
            }
            let mut bits: u32 = 0;
            for (position, &symbol) in group.iter().enumerate() {
                let value = if position >= 4 - padding {
                    0
                } else {
                    symbol_value(symbol)
                        .ok_or_else(|| format!("invalid base64 symbol {:?}", char::from(symbol)))?
                };
                bits = (bits << 6) | value;
            }
            let group_bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            decoded.extend_from_slice(&group_bytes[..3 - padding]);
        }
        Ok(decoded)
    }
}

mod base64_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&super::base64::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        match text {
            None => Ok(None),
            Some(text) => super::base64::decode(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cpu_type() -> proto::ProfileTypeInfo {
        proto::ProfileTypeInfo {
            id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta".into(),
            name: "process_cpu".into(),
            sample_type: "cpu".into(),
            sample_unit: "nanoseconds".into(),
            period_type: "cpu".into(),
            period_unit: "nanoseconds".into(),
            delta: true,
        }
    }

    fn small_tree() -> proto::StackTree {
        proto::StackTree {
            frames: vec![
                proto::Frame {
                    function: "main".into(),
                    file: "main.go".into(),
                    binary: "app".into(),
                },
                proto::Frame {
                    function: "work".into(),
                    file: String::new(),
                    binary: String::new(),
                },
            ],
            nodes: vec![
                proto::TreeNode {
                    frame: 0,
                    parent: -1,
                    self_: 0,
                    total: 30,
                    ..Default::default()
                },
                proto::TreeNode {
                    frame: 0,
                    parent: 0,
                    self_: 10,
                    total: 30,
                    ..Default::default()
                },
                proto::TreeNode {
                    frame: 1,
                    parent: 1,
                    self_: 20,
                    total: 20,
                    baseline_self: 5,
                    baseline_total: 5,
                },
            ],
        }
    }

    #[test]
    fn merge_tree_converts_with_camel_case_and_lowercase_format() {
        let response = proto::MergeResponse {
            profile_type: Some(cpu_type()),
            total: 30,
            profiles: 2,
            series: 1,
            result: Some(proto::merge_response::Result::Tree(small_tree())),
            truncation: Some(proto::Truncation {
                nodes_removed: 1,
                value_removed: 3,
                rows_removed: 0,
            }),
            coverage: None,
        };
        let value = serde_json::to_value(MergeResult::from(&response)).unwrap();
        assert_eq!(value["format"], json!("tree"));
        assert_eq!(value["profileType"]["sampleUnit"], json!("nanoseconds"));
        assert_eq!(value["profileType"]["delta"], json!(true));
        assert_eq!(value["total"], json!(30));
        assert_eq!(
            value["truncation"],
            json!({"nodesRemoved": 1, "valueRemoved": 3, "rowsRemoved": 0})
        );
        assert_eq!(value["coverage"], json!({"groupsTotal": 0, "missing": []}));
        assert_eq!(
            value["tree"]["frames"][0],
            json!({"function": "main", "file": "main.go", "binary": "app"})
        );
        assert_eq!(value["tree"]["frames"][1], json!({"function": "work"}));
        assert_eq!(value["tree"]["nodes"][0], json!({"self": 0, "total": 30}));
        assert_eq!(
            value["tree"]["nodes"][2],
            json!({"frame": 1, "parent": 1, "self": 20, "total": 20})
        );
        assert!(value.get("top").is_none());
        assert!(value.get("pprof").is_none());
    }

    #[test]
    fn diff_keeps_baseline_values_and_merge_does_not() {
        let top = proto::Top {
            rows: vec![proto::TopRow {
                frame: Some(proto::Frame {
                    function: "work".into(),
                    ..Default::default()
                }),
                flat: 20,
                cum: 25,
                baseline_flat: 5,
                baseline_cum: 7,
            }],
        };
        let diff = proto::DiffResponse {
            profile_type: Some(cpu_type()),
            total_a: 10,
            total_b: 30,
            tree: Some(small_tree()),
            top: Some(top.clone()),
            truncation: None,
            coverage: None,
        };
        let value = serde_json::to_value(DiffResult::from(&diff)).unwrap();
        assert_eq!(value["totalA"], json!(10));
        assert_eq!(value["totalB"], json!(30));
        assert_eq!(value["tree"]["nodes"][2]["baselineSelf"], json!(5));
        assert_eq!(value["tree"]["nodes"][2]["baselineTotal"], json!(5));
        assert_eq!(
            value["top"]["rows"][0],
            json!({"frame": {"function": "work"}, "flat": 20, "cum": 25, "baselineFlat": 5, "baselineCum": 7})
        );
        let merge_top = serde_json::to_value(Top::from(&top)).unwrap();
        assert_eq!(
            merge_top["rows"][0],
            json!({"frame": {"function": "work"}, "flat": 20, "cum": 25})
        );
    }

    #[test]
    fn large_int64_values_are_json_numbers() {
        let response = proto::MergeResponse {
            total: i64::MAX,
            ..Default::default()
        };
        let text = serde_json::to_string(&MergeResult::from(&response)).unwrap();
        assert!(text.contains("\"total\":9223372036854775807"), "{text}");
        let parsed: MergeResult = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.total, i64::MAX);
        assert_eq!(parsed.format, None);
    }

    #[test]
    fn pprof_bytes_are_base64_and_round_trip() {
        let bytes = vec![0x1f, 0x8b, 0x08, 0x00, 0xff, 0x10, 0x7e];
        let response = proto::MergeResponse {
            result: Some(proto::merge_response::Result::Pprof(bytes.clone())),
            ..Default::default()
        };
        let result = MergeResult::from(&response);
        let value = serde_json::to_value(&result).unwrap();
        assert_eq!(value["format"], json!("pprof"));
        assert_eq!(value["pprof"], json!("H4sIAP8Qfg=="));
        let parsed: MergeResult = serde_json::from_value(value).unwrap();
        assert_eq!(parsed, result);
        assert_eq!(parsed.pprof, Some(bytes));
    }

    #[test]
    fn base64_matches_rfc4648_vectors_and_rejects_garbage() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64::encode(plain.as_bytes()), encoded);
            assert_eq!(base64::decode(encoded).unwrap(), plain.as_bytes());
        }
        assert!(base64::decode("Zm9").is_err());
        assert!(base64::decode("Zm=v").is_err());
        assert!(base64::decode("Zg==Zm9v").is_err());
        assert!(base64::decode("Z!9v").is_err());
        let all_bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(base64::decode(&base64::encode(&all_bytes)).unwrap(), all_bytes);
    }

    #[test]
    fn every_merge_format_sets_its_field() {
        use proto::merge_response::Result as R;
        let cases = [
            (R::Top(proto::Top::default()), "top"),
            (R::Folded("a;b 1\n".into()), "folded"),
            (R::Svg("<svg/>".into()), "svg"),
        ];
        for (proto_result, name) in cases {
            let response = proto::MergeResponse {
                result: Some(proto_result),
                ..Default::default()
            };
            let value = serde_json::to_value(MergeResult::from(&response)).unwrap();
            assert_eq!(value["format"], json!(name));
            assert!(value.get(name).is_some(), "{name} field missing in {value}");
        }
    }

    #[test]
    fn range_labels_become_a_sorted_object() {
        let response = proto::RangeResponse {
            profile_type: Some(cpu_type()),
            step_ms: 60_000,
            series: vec![proto::RangeSeries {
                labels: vec![
                    proto::Label {
                        name: "job".into(),
                        value: "api".into(),
                    },
                    proto::Label {
                        name: "instance".into(),
                        value: "a:1".into(),
                    },
                ],
                points: vec![proto::Point {
                    timestamp_ms: 1_700_000_000_000,
                    value: 42,
                }],
            }],
            coverage: Some(proto::Coverage {
                groups_total: 3,
                missing: vec![proto::MissingGroup {
                    group_id: 2,
                    reason: "no quorum".into(),
                }],
            }),
        };
        let result = RangeResult::from(&response);
        assert!(!result.coverage.is_complete());
        let text = serde_json::to_string(&result).unwrap();
        assert!(
            text.contains(r#""labels":{"instance":"a:1","job":"api"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""points":[{"timestampMs":1700000000000,"value":42}]"#),
            "{text}"
        );
        assert!(
            text.contains(r#""missing":[{"groupId":2,"reason":"no quorum"}]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<RangeResult>(&text).unwrap(), result);
    }

    #[test]
    fn metadata_answers_convert() {
        let labels = LabelsResult::from(&proto::LabelsResponse {
            names: vec!["job".into()],
            coverage: None,
        });
        assert_eq!(serde_json::to_value(&labels).unwrap()["names"], json!(["job"]));
        let values = LabelValuesResult::from(&proto::LabelValuesResponse {
            values: vec!["api".into()],
            coverage: None,
        });
        assert_eq!(serde_json::to_value(&values).unwrap()["values"], json!(["api"]));
        let series = SeriesResult::from(&proto::SeriesResponse {
            series: vec![proto::SeriesInfo {
                profile_type: Some(cpu_type()),
                labels: vec![proto::Label {
                    name: "job".into(),
                    value: "api".into(),
                }],
                series_hash: 0xdead_beef,
            }],
            coverage: None,
        });
        let series_value = serde_json::to_value(&series).unwrap();
        assert_eq!(series_value["series"][0]["seriesHash"], json!("00000000deadbeef"));
        assert_eq!(series_value["series"][0]["labels"], json!({"job": "api"}));
        assert_eq!(
            series_value["series"][0]["profileType"]["name"],
            json!("process_cpu")
        );
        let types = ProfileTypesResult::from(&proto::ProfileTypesResponse {
            types: vec![cpu_type()],
            coverage: None,
        });
        assert_eq!(
            serde_json::to_value(&types).unwrap()["types"][0]["periodUnit"],
            json!("nanoseconds")
        );
    }

    #[test]
    fn write_result_converts_and_hides_false_duplicate() {
        let response = proto::WriteResponse {
            duplicate: false,
            profiles: 4,
            samples: 100,
            series: 4,
            profile_types: vec!["memory:inuse_space:bytes:space:bytes".into()],
        };
        let value = serde_json::to_value(WriteResult::from(&response)).unwrap();
        assert_eq!(
            value,
            json!({"profiles": 4, "samples": 100, "series": 4,
                   "profileTypes": ["memory:inuse_space:bytes:space:bytes"]})
        );
        let duplicate = WriteResult::from(&proto::WriteResponse {
            duplicate: true,
            ..response
        });
        assert_eq!(
            serde_json::to_value(&duplicate).unwrap()["duplicate"],
            json!(true)
        );
        let parsed: WriteResult = serde_json::from_value(value).unwrap();
        assert!(!parsed.duplicate);
    }
}

/// One node in a cluster status answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// gRPC address.
    pub address: String,
    /// Region label.
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// up, leaving or removed.
    pub state: String,
    /// Answered the probe of the node that built this status.
    pub reachable: bool,
    /// Milliseconds since it last answered (0 when reachable).
    pub last_seen_ms_ago: u64,
    /// Why its data directory refuses writes (free space under its reserve); `null` when it has
    /// room. Such a node is given no new replica.
    pub disk_refusal: Option<String>,
}

/// One replica in a cluster status answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReplica {
    /// Node holding it.
    pub node_id: u64,
    /// leader, follower, learner, candidate.
    pub role: String,
    /// Last log index.
    pub last_log_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Entries behind the leader's log.
    pub lag: u64,
}

/// One group in a cluster status answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGroup {
    /// Group id (0 is the metadata group).
    pub group: u32,
    /// Whether it is the metadata group.
    pub is_metadata: bool,
    /// Leader node id (0: none known).
    pub leader: u64,
    /// Leader's term.
    pub term: u64,
    /// Leader's applied (committed and applied) index.
    pub commit_index: u64,
    /// Voters recorded in the cluster map.
    pub voters: Vec<u64>,
    /// Voters of the leader's current raft configuration (the union of both
    /// halves while a membership change is in flight).
    pub raft_voters: Vec<u64>,
    /// Replicas that answered.
    pub replicas: Vec<ClusterReplica>,
}

/// The answer to a cluster status request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatusResult {
    /// Leader of the metadata group (0: none known).
    pub metadata_leader: u64,
    /// Version of the cluster map.
    pub map_version: u64,
    /// Replicas per data group the cluster aims for.
    pub replication_factor: u32,
    /// Nodes.
    pub nodes: Vec<ClusterNode>,
    /// Groups.
    pub groups: Vec<ClusterGroup>,
}

impl From<&proto::ClusterStatus> for ClusterStatusResult {
    fn from(status: &proto::ClusterStatus) -> Self {
        ClusterStatusResult {
            metadata_leader: status.metadata_leader,
            map_version: status.map_version,
            replication_factor: status.replication_factor,
            nodes: status
                .nodes
                .iter()
                .map(|node| ClusterNode {
                    id: node.id,
                    address: node.address.clone(),
                    region: node.region.clone(),
                    zone: node.zone.clone(),
                    state: node.state.clone(),
                    reachable: node.reachable,
                    last_seen_ms_ago: node.last_seen_ms_ago,
                    disk_refusal: (!node.disk_refusal.is_empty()).then(|| node.disk_refusal.clone()),
                })
                .collect(),
            groups: status
                .groups
                .iter()
                .map(|group| ClusterGroup {
                    group: group.group,
                    is_metadata: group.is_metadata,
                    leader: group.leader,
                    term: group.term,
                    commit_index: group.commit_index,
                    voters: group.voters.clone(),
                    raft_voters: group.raft_voters.clone(),
                    replicas: group
                        .replicas
                        .iter()
                        .map(|replica| ClusterReplica {
                            node_id: replica.node_id,
                            role: replica.role.clone(),
                            last_log_index: replica.last_log_index,
                            applied_index: replica.applied_index,
                            lag: replica.lag,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
