//! The text forms of query answers, as `kiln` prints them.
//!
//! - [`render_top`]: a merge's top table in `go tool pprof -top` form (see [`units`] for the numbers);
//! - [`render_diff_top`]: a diff's top table, A and B side by side with the change;
//! - [`render_tree`] / [`render_diff_tree`]: an indented stack tree;
//! - [`render_range_table`], [`render_series_table`], [`render_types_table`]: aligned tables;
//! - [`coverage_warning`]: the warning printed when an answer is partial.
//!
//! Every function here is pure: it takes the protobuf answer and returns text ending in a newline.

pub mod units;

use std::collections::BTreeMap;

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use kiln_model::json::LabelMap;
use kiln_proto::kiln::v1 as proto;

use crate::time::{format_unix_ms, TimeRange};
use units::{percentage, ValueFormatter};

/// The column header line of a top table, byte for byte what go tool pprof prints.
pub const TOP_COLUMN_HEADER: &str = "      flat  flat%   sum%        cum   cum%";

/// Formats a label set the Prometheus way: `{instance="a:1", job="api"}` (names sorted, values quoted
/// with `\`, `"` and newlines escaped); `{}` when empty.
pub fn format_label_set(labels: &LabelMap) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The warning for an answer that some shard groups did not contribute to, naming each missing group
/// and why; `None` when the answer is complete.
pub fn coverage_warning(coverage: Option<&proto::Coverage>) -> Option<String> {
    let coverage = coverage?;
    if coverage.missing.is_empty() {
        return None;
    }
    let missing: Vec<String> = coverage
        .missing
        .iter()
        .map(|group| {
            if group.reason.is_empty() {
                format!("group {}", group.group_id)
            } else {
                format!("group {} ({})", group.group_id, group.reason)
            }
        })
        .collect();
    let of_total = if coverage.groups_total > 0 {
        format!(" of {}", coverage.groups_total)
    } else {
        String::new()
    };
    Some(format!(
        "warning: partial result: {}{of_total} shard group{} did not answer: {}",
        coverage.missing.len(),
        if coverage.missing.len() == 1 { "" } else { "s" },
        missing.join(", ")
    ))
}

fn sample_unit_of(profile_type: Option<&proto::ProfileTypeInfo>) -> &str {
    match profile_type {
        Some(info) if !info.sample_unit.is_empty() => &info.sample_unit,
        _ => "count",
    }
}

/// Header lines shared by merge reports: profile type, time range, profile and series counts.
fn merge_header_lines(response: &proto::MergeResponse, time_range: Option<TimeRange>) -> Vec<String> {
    let mut lines = Vec::new();
    match response.profile_type.as_ref() {
        Some(info) => {
            lines.push(format!("Type: {}", info.sample_type));
            lines.push(format!("Profile type: {}", info.id));
        }
        None => lines.push("Type: (no data matched)".to_string()),
    }
    if let Some(range) = time_range {
        lines.push(format!(
            "Range: {} to {}",
            format_unix_ms(range.start_unix_ms),
            format_unix_ms(range.end_unix_ms)
        ));
    }
    lines.push(format!(
        "Profiles: {} from {} series",
        response.profiles, response.series
    ));
    lines
}

fn top_rows_of(response: &proto::MergeResponse) -> &[proto::TopRow] {
    match &response.result {
        Some(proto::merge_response::Result::Top(top)) => &top.rows,
        _ => &[],
    }
}

fn function_name(frame: Option<&proto::Frame>) -> &str {
    frame.map_or("", |frame| frame.function.as_str())
}

/// Renders a merge answer that carries a top table the way `go tool pprof -top` does, so that one parser
/// reads both:
///
/// ```text
/// Type: cpu
/// Profile type: process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta
/// Range: 2026-11-25T17:42:00Z to 2026-11-25T18:42:00Z
/// Profiles: 1 from 1 series
/// Showing nodes accounting for 3.44s, 100% of 3.44s total
///       flat  flat%   sum%        cum   cum%
///      1.02s 29.65% 29.65%      1.02s 29.65%  crypto/sha256.block
///          0     0% 29.65%      3.40s 98.84%  main.worker
/// ```
///
/// Rows are `%10s %6s %6s %10s %6s  name` (flat, flat%, running sum of flat%, cum, cum%) in go tool
/// pprof's order (flat descending, then name, then cum descending); values share one unit chosen as go
/// tool pprof chooses it; percentages are of the merge's total. A row limit adds
/// `Showing top N nodes out of M`; tree truncation adds `Dropped N nodes (...)`. go tool pprof's `(inline)`
/// marks have no equivalent: names are bare function names.
pub fn render_top(response: &proto::MergeResponse, time_range: Option<TimeRange>) -> String {
    let mut rows: Vec<&proto::TopRow> = top_rows_of(response).iter().collect();
    rows.sort_by(|left, right| {
        right
            .flat
            .unsigned_abs()
            .cmp(&left.flat.unsigned_abs())
            .then_with(|| function_name(left.frame.as_ref()).cmp(function_name(right.frame.as_ref())))
            .then_with(|| right.cum.unsigned_abs().cmp(&left.cum.unsigned_abs()))
    });
    let total = response.total;
    let sample_unit = sample_unit_of(response.profile_type.as_ref());
    let formatter = ValueFormatter::for_rows(sample_unit, total, rows.iter().map(|row| (row.flat, row.cum)));

    let mut lines = merge_header_lines(response, time_range);
    let flat_sum: i64 = rows.iter().fold(0_i64, |sum, row| sum.saturating_add(row.flat));
    lines.push(format!(
        "Showing nodes accounting for {}, {} of {} total",
        formatter.format(flat_sum),
        percentage(flat_sum, total).trim(),
        formatter.format(total)
    ));
    if let Some(truncation) = response.truncation.as_ref() {
        if truncation.nodes_removed > 0 {
            lines.push(format!(
                "Dropped {} node{} ({} in all)",
                truncation.nodes_removed,
                if truncation.nodes_removed == 1 { "" } else { "s" },
                formatter.format(truncation.value_removed)
            ));
        }
        if truncation.rows_removed > 0 {
            lines.push(format!(
                "Showing top {} nodes out of {}",
                rows.len(),
                rows.len() as u64 + truncation.rows_removed
            ));
        }
    }
    lines.push(TOP_COLUMN_HEADER.to_string());
    let mut running_flat: i64 = 0;
    for row in rows {
        running_flat = running_flat.saturating_add(row.flat);
        lines.push(format!(
            "{:>10} {} {} {:>10} {}  {}",
            formatter.format(row.flat),
            percentage(row.flat, total),
            percentage(running_flat, total),
            formatter.format(row.cum),
            percentage(row.cum, total),
            function_name(row.frame.as_ref())
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

fn signed_percentage_change(before: i64, after: i64) -> String {
    if before == 0 {
        return if after == 0 {
            "0%".to_string()
        } else {
            "new".to_string()
        };
    }
    let change = (after as f64 - before as f64) / (before as f64).abs() * 100.0;
    if change.abs() < 0.005 {
        return "0%".to_string();
    }
    format!("{change:+.2}%")
}

/// Renders a diff answer's top table: for each function its flat and cum in A (baseline) and B, and the
/// change B - A, sorted by the size of the flat change (then cum change, then name):
///
/// ```text
/// Type: cpu
/// Profile type: process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta
/// Total: A 3.44s, B 4.57s, change +1.13s (+32.85%)
///    flat(A)    flat(B)  flat diff     cum(A)     cum(B)   cum diff  name
///      1.02s      1.65s     +0.63s      1.02s      1.65s     +0.63s  crypto/sha256.block
/// ```
pub fn render_diff_top(response: &proto::DiffResponse) -> String {
    let mut rows: Vec<&proto::TopRow> = response
        .top
        .as_ref()
        .map(|top| top.rows.iter().collect())
        .unwrap_or_default();
    rows.sort_by(|left, right| {
        right
            .flat
            .saturating_sub(right.baseline_flat)
            .unsigned_abs()
            .cmp(&left.flat.saturating_sub(left.baseline_flat).unsigned_abs())
            .then_with(|| {
                right
                    .cum
                    .saturating_sub(right.baseline_cum)
                    .unsigned_abs()
                    .cmp(&left.cum.saturating_sub(left.baseline_cum).unsigned_abs())
            })
            .then_with(|| function_name(left.frame.as_ref()).cmp(function_name(right.frame.as_ref())))
    });
    let sample_unit = sample_unit_of(response.profile_type.as_ref());
    let all_values = rows
        .iter()
        .flat_map(|row| [row.flat, row.baseline_flat, row.cum, row.baseline_cum])
        .chain([response.total_a, response.total_b]);
    let formatter = ValueFormatter::for_values(sample_unit, all_values);

    let mut lines = diff_header_lines(response, &formatter);
    lines.push(format!(
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  name",
        "flat(A)", "flat(B)", "flat diff", "cum(A)", "cum(B)", "cum diff"
    ));
    for row in rows {
        lines.push(format!(
            "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            formatter.format(row.baseline_flat),
            formatter.format(row.flat),
            formatter.format_signed(row.flat.saturating_sub(row.baseline_flat)),
            formatter.format(row.baseline_cum),
            formatter.format(row.cum),
            formatter.format_signed(row.cum.saturating_sub(row.baseline_cum)),
            function_name(row.frame.as_ref())
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

fn diff_header_lines(response: &proto::DiffResponse, formatter: &ValueFormatter) -> Vec<String> {
    let mut lines = Vec::new();
    match response.profile_type.as_ref() {
        Some(info) => {
            lines.push(format!("Type: {}", info.sample_type));
            lines.push(format!("Profile type: {}", info.id));
        }
        None => lines.push("Type: (no data matched)".to_string()),
    }
    lines.push(format!(
        "Total: A {}, B {}, change {} ({})",
        formatter.format(response.total_a),
        formatter.format(response.total_b),
        formatter.format_signed(response.total_b.saturating_sub(response.total_a)),
        signed_percentage_change(response.total_a, response.total_b)
    ));
    if let Some(truncation) = response.truncation.as_ref() {
        if truncation.nodes_removed > 0 {
            lines.push(format!(
                "Folded {} small tree node{} ({} in all) into \"other\" nodes",
                truncation.nodes_removed,
                if truncation.nodes_removed == 1 { "" } else { "s" },
                formatter.format(truncation.value_removed)
            ));
        }
        if truncation.rows_removed > 0 {
            let shown = response.top.as_ref().map_or(0, |top| top.rows.len());
            lines.push(format!(
                "Showing top {shown} nodes out of {}",
                shown as u64 + truncation.rows_removed
            ));
        }
    }
    lines
}

/// The nodes of a stack tree in display order (pre-order, children by descending total, then name),
/// each with its depth. Nodes whose parent index is not an earlier node are left out, so a malformed
/// tree cannot loop or panic.
fn tree_display_order(tree: &proto::StackTree) -> Vec<(usize, usize)> {
    let node_count = tree.nodes.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); node_count];
    let mut roots = Vec::new();
    for (index, node) in tree.nodes.iter().enumerate() {
        match usize::try_from(node.parent) {
            Ok(parent) if parent < index => children[parent].push(index),
            Ok(_) => {}
            Err(_) => roots.push(index),
        }
    }
    let frame_name = |index: usize| -> &str {
        let frame_index = tree.nodes[index].frame as usize;
        tree.frames
            .get(frame_index)
            .map_or("", |frame| frame.function.as_str())
    };
    let order_children = |list: &mut Vec<usize>| {
        list.sort_by(|&left, &right| {
            let (left_node, right_node) = (&tree.nodes[left], &tree.nodes[right]);
            right_node
                .total
                .unsigned_abs()
                .max(right_node.baseline_total.unsigned_abs())
                .cmp(
                    &left_node
                        .total
                        .unsigned_abs()
                        .max(left_node.baseline_total.unsigned_abs()),
                )
                .then_with(|| frame_name(left).cmp(frame_name(right)))
        });
    };
    for list in children.iter_mut() {
        order_children(list);
    }
    let mut order = Vec::with_capacity(node_count);
    let mut pending: Vec<(usize, usize)> = roots.into_iter().rev().map(|root| (root, 0)).collect();
    while let Some((index, depth)) = pending.pop() {
        order.push((index, depth));
        for &child in children[index].iter().rev() {
            pending.push((child, depth + 1));
        }
    }
    order
}

fn tree_node_name(tree: &proto::StackTree, node: &proto::TreeNode) -> String {
    if node.parent < 0 {
        return "(all)".to_string();
    }
    match tree.frames.get(node.frame as usize) {
        Some(frame) => frame.function.clone(),
        None => format!("(unknown frame {})", node.frame),
    }
}

/// Renders a merge answer that carries a stack tree, one node per line, children indented by two spaces
/// under their parent and ordered by descending total:
///
/// ```text
/// Type: cpu
/// ...
/// Total: 3.44s
///      total  total%       self  name
///      3.44s    100%          0  (all)
///      3.40s 98.84%          0    main.worker
/// ```
pub fn render_tree(response: &proto::MergeResponse, time_range: Option<TimeRange>) -> String {
    let empty_tree = proto::StackTree::default();
    let tree = match &response.result {
        Some(proto::merge_response::Result::Tree(tree)) => tree,
        _ => &empty_tree,
    };
    let total = response.total;
    let sample_unit = sample_unit_of(response.profile_type.as_ref());
    let formatter = ValueFormatter::for_rows(
        sample_unit,
        total,
        tree.nodes
            .iter()
            .filter(|node| node.parent >= 0)
            .map(|node| (node.self_, node.total)),
    );
    let mut lines = merge_header_lines(response, time_range);
    lines.push(format!("Total: {}", formatter.format(total)));
    if let Some(truncation) = response.truncation.as_ref() {
        if truncation.nodes_removed > 0 {
            lines.push(format!(
                "Folded {} small node{} ({} in all) into \"other\" nodes",
                truncation.nodes_removed,
                if truncation.nodes_removed == 1 { "" } else { "s" },
                formatter.format(truncation.value_removed)
            ));
        }
    }
    lines.push(format!("{:>10} {:>6} {:>10}  name", "total", "total%", "self"));
    for (index, depth) in tree_display_order(tree) {
        let node = &tree.nodes[index];
        lines.push(format!(
            "{:>10} {} {:>10}  {}{}",
            formatter.format(node.total),
            percentage(node.total, total),
            formatter.format(node.self_),
            "  ".repeat(depth),
            tree_node_name(tree, node)
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// Renders a diff answer's tree: each node's total in A and B and the change, indented like
/// [`render_tree`].
pub fn render_diff_tree(response: &proto::DiffResponse) -> String {
    let empty_tree = proto::StackTree::default();
    let tree = response.tree.as_ref().unwrap_or(&empty_tree);
    let sample_unit = sample_unit_of(response.profile_type.as_ref());
    let all_values = tree
        .nodes
        .iter()
        .flat_map(|node| [node.total, node.baseline_total])
        .chain([response.total_a, response.total_b]);
    let formatter = ValueFormatter::for_values(sample_unit, all_values);
    let mut lines = diff_header_lines(response, &formatter);
    lines.push(format!(
        "{:>10} {:>10} {:>10}  name",
        "total(A)", "total(B)", "diff"
    ));
    for (index, depth) in tree_display_order(tree) {
        let node = &tree.nodes[index];
        lines.push(format!(
            "{:>10} {:>10} {:>10}  {}{}",
            formatter.format(node.baseline_total),
            formatter.format(node.total),
            formatter.format_signed(node.total.saturating_sub(node.baseline_total)),
            "  ".repeat(depth),
            tree_node_name(tree, node)
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// A borderless, aligned table whose columns are separated by two spaces and never wrapped.
fn plain_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(header.iter().map(|title| Cell::new(*title)).collect::<Vec<_>>());
    table
}

fn finish_table(mut table: Table, right_aligned_columns: &[usize]) -> String {
    let column_count = table.column_count();
    for (index, column) in table.column_iter_mut().enumerate() {
        let right_padding = if index + 1 == column_count { 0 } else { 2 };
        column.set_padding((0, right_padding));
        if right_aligned_columns.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// Renders a range answer as a table: one row per bucket (its start time, RFC 3339 UTC), one column per
/// series (headed by its label set), values in one unit for the whole table; an empty cell means the
/// series has no point in that bucket.
pub fn render_range_table(response: &proto::RangeResponse) -> String {
    if response.series.is_empty() {
        return "no series matched\n".to_string();
    }
    let sample_unit = sample_unit_of(response.profile_type.as_ref());
    let formatter = ValueFormatter::for_values(
        sample_unit,
        response
            .series
            .iter()
            .flat_map(|series| series.points.iter().map(|point| point.value)),
    );
    let series_names: Vec<String> = response
        .series
        .iter()
        .map(|series| format_label_set(&kiln_model::json::label_map_from_proto(&series.labels)))
        .collect();
    let mut header: Vec<&str> = vec!["TIME"];
    header.extend(series_names.iter().map(String::as_str));
    let mut table = plain_table(&header);

    let mut values_by_time: BTreeMap<i64, Vec<Option<i64>>> = BTreeMap::new();
    for (series_index, series) in response.series.iter().enumerate() {
        for point in &series.points {
            let row = values_by_time
                .entry(point.timestamp_ms)
                .or_insert_with(|| vec![None; response.series.len()]);
            row[series_index] = Some(row[series_index].unwrap_or(0).saturating_add(point.value));
        }
    }
    for (timestamp_ms, values) in values_by_time {
        let mut cells = vec![format_unix_ms(timestamp_ms)];
        cells.extend(
            values
                .iter()
                .map(|value| value.map(|value| formatter.format(value)).unwrap_or_default()),
        );
        table.add_row(cells);
    }
    let right_aligned: Vec<usize> = (1..=response.series.len()).collect();
    let mut text = String::new();
    if let Some(info) = response.profile_type.as_ref() {
        text.push_str(&format!("Profile type: {}\n", info.id));
    }
    if response.step_ms > 0 {
        text.push_str(&format!(
            "Step: {}\n",
            humantime::format_duration(std::time::Duration::from_millis(response.step_ms.unsigned_abs()))
        ));
    }
    text.push_str(&finish_table(table, &right_aligned));
    text
}

/// Renders a series answer as a table of profile type, labels and series hash (16 hex digits).
pub fn render_series_table(response: &proto::SeriesResponse) -> String {
    if response.series.is_empty() {
        return "no series matched\n".to_string();
    }
    let mut table = plain_table(&["PROFILE TYPE", "LABELS", "SERIES HASH"]);
    for series in &response.series {
        table.add_row(vec![
            series
                .profile_type
                .as_ref()
                .map(|info| info.id.clone())
                .unwrap_or_default(),
            format_label_set(&kiln_model::json::label_map_from_proto(&series.labels)),
            kiln_model::json::format_series_hash(series.series_hash),
        ]);
    }
    finish_table(table, &[])
}

/// Renders a profile types answer as a table: id, sample type and unit, period type and unit, and
/// whether the profiles are deltas.
pub fn render_types_table(response: &proto::ProfileTypesResponse) -> String {
    if response.types.is_empty() {
        return "no profile types in this time range\n".to_string();
    }
    let mut table = plain_table(&["PROFILE TYPE", "NAME", "SAMPLE", "PERIOD", "DELTA"]);
    for info in &response.types {
        table.add_row(vec![
            info.id.clone(),
            info.name.clone(),
            format!("{} ({})", info.sample_type, info.sample_unit),
            format!("{} ({})", info.period_type, info.period_unit),
            if info.delta {
                "yes".to_string()
            } else {
                "no".to_string()
            },
        ]);
    }
    finish_table(table, &[])
}

/// Renders a list of names or values, one per line, in the order given.
pub fn render_list(items: &[String]) -> String {
    let mut text = String::new();
    for item in items {
        text.push_str(item);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests;

/// `kiln cluster status`: a nodes table and a groups table.
pub fn render_cluster_status(status: &proto::ClusterStatus) -> String {
    let mut nodes = Table::new();
    nodes
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "NODE",
            "ADDRESS",
            "REGION",
            "ZONE",
            "STATE",
            "REACHABLE",
            "DISK",
            "LEADS",
        ]);
    for node in &status.nodes {
        let leads = status
            .groups
            .iter()
            .filter(|group| group.leader == node.id)
            .count();
        let reachable = if node.reachable {
            "yes".to_string()
        } else if node.last_seen_ms_ago > 0 {
            format!("no (seen {}s ago)", node.last_seen_ms_ago / 1000)
        } else {
            "no".to_string()
        };
        nodes.add_row([
            node.id.to_string(),
            node.address.clone(),
            node.region.clone(),
            node.zone.clone(),
            node.state.clone(),
            reachable,
            // The whole message is in `--output json`; it names the directory and the sizes.
            if node.disk_refusal.is_empty() {
                "ok".to_string()
            } else {
                "under reserve".to_string()
            },
            leads.to_string(),
        ]);
    }
    let mut groups = Table::new();
    groups
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "GROUP",
            "LEADER",
            "TERM",
            "COMMIT",
            "VOTERS",
            "REPLICAS (node:role applied lag)",
        ]);
    for group in &status.groups {
        let name = if group.is_metadata {
            format!("{} (meta)", group.group)
        } else {
            group.group.to_string()
        };
        let leader = if group.leader == 0 {
            "none".to_string()
        } else {
            group.leader.to_string()
        };
        let voters: Vec<String> = group.voters.iter().map(u64::to_string).collect();
        let replicas: Vec<String> = group
            .replicas
            .iter()
            .map(|replica| {
                format!(
                    "{}:{} {} {}",
                    replica.node_id, replica.role, replica.applied_index, replica.lag
                )
            })
            .collect();
        groups.add_row([
            name,
            leader,
            group.term.to_string(),
            group.commit_index.to_string(),
            voters.join(","),
            replicas.join("  "),
        ]);
    }
    let metadata_leader = if status.metadata_leader == 0 {
        "none".to_string()
    } else {
        status.metadata_leader.to_string()
    };
    format!(
        "Metadata leader: {metadata_leader}   map version: {}   replication factor: {}\n\n{nodes}\n\n{groups}\n",
        status.map_version, status.replication_factor
    )
}
