use super::*;

const GO_EXPECTED_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/pprof/go/expected"
);

fn strip_inline_mark(line: &str) -> &str {
    line.trim_end()
        .trim_end_matches(" (partial-inline)")
        .trim_end_matches(" (inline)")
}

fn merge_response(sample_unit: &str, total: i64, rows: Vec<proto::TopRow>) -> proto::MergeResponse {
    proto::MergeResponse {
        profile_type: Some(proto::ProfileTypeInfo {
            id: format!("test:value:{sample_unit}:value:{sample_unit}"),
            name: "test".into(),
            sample_type: "value".into(),
            sample_unit: sample_unit.into(),
            period_type: "value".into(),
            period_unit: sample_unit.into(),
            delta: false,
        }),
        total,
        profiles: 1,
        series: 1,
        result: Some(proto::merge_response::Result::Top(proto::Top { rows })),
        truncation: None,
        coverage: None,
    }
}

/// A naive `go tool pprof -top` over decoded pprof files: flat to the leaf function, cum once per function
/// per stack, inlined frames expanded. Returns the rows and the total for the sample type named `type_name`,
/// and that type's unit.
fn naive_top(paths: &[std::path::PathBuf], type_name: &str) -> (Vec<proto::TopRow>, i64, String) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut flat: BTreeMap<String, i64> = BTreeMap::new();
    let mut cum: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0_i64;
    let mut unit = String::new();
    for path in paths {
        let bytes = std::fs::read(path).unwrap();
        let profile = crate::input::decode_pprof(&bytes).unwrap();
        let text = |index: i64| profile.string_table[index as usize].clone();
        let value_index = profile
            .sample_type
            .iter()
            .position(|value_type| text(value_type.r#type) == type_name)
            .unwrap();
        unit = text(profile.sample_type[value_index].unit);
        let function_names: BTreeMap<u64, String> = profile
            .function
            .iter()
            .map(|function| (function.id, text(function.name)))
            .collect();
        let locations: BTreeMap<u64, &kiln_proto::pprof::Location> = profile
            .location
            .iter()
            .map(|location| (location.id, location))
            .collect();
        for sample in &profile.sample {
            let value = sample.value[value_index];
            if value == 0 {
                continue; // go tool pprof makes no node for a zero sample
            }
            total += value;
            let names: Vec<&String> = sample
                .location_id
                .iter()
                .flat_map(|id| {
                    locations[id]
                        .line
                        .iter()
                        .map(|line| &function_names[&line.function_id])
                })
                .collect();
            if let Some(leaf) = names.first() {
                *flat.entry((*leaf).clone()).or_default() += value;
            }
            for name in names.iter().collect::<BTreeSet<_>>() {
                *cum.entry((*name).clone()).or_default() += value;
            }
        }
    }
    let rows = cum
        .iter()
        .map(|(name, &cum)| proto::TopRow {
            frame: Some(proto::Frame {
                function: name.clone(),
                ..Default::default()
            }),
            flat: flat.get(name).copied().unwrap_or(0),
            cum,
            ..Default::default()
        })
        .collect();
    (rows, total, unit)
}

/// Kiln's top text, given the flat and cum values of the real Go profiles, prints every row and the
/// `Showing nodes` line exactly as go tool pprof did (inline marks aside).
#[test]
fn top_output_matches_go_tool_pprof_for_every_expected_file() {
    let profile_dir = std::path::Path::new(GO_EXPECTED_DIR)
        .parent()
        .unwrap()
        .to_path_buf();
    let mut checked = 0;
    for entry in std::fs::read_dir(GO_EXPECTED_DIR).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = file_name.strip_suffix(".top.txt") else {
            continue;
        };
        let inputs: Vec<std::path::PathBuf> = match stem {
            "cpu-1-2-3.merged" => ["cpu-1", "cpu-2", "cpu-3"]
                .iter()
                .map(|name| profile_dir.join(format!("{name}.pb.gz")))
                .collect(),
            other => vec![profile_dir.join(format!("{other}.pb.gz"))],
        };
        let expected_text = std::fs::read_to_string(&path).unwrap();
        let type_name = expected_text
            .lines()
            .find_map(|line| line.strip_prefix("Type: "))
            .unwrap();
        let (rows, total, unit) = naive_top(&inputs, type_name);
        let mut response = merge_response(&unit, total, rows);
        if let Some(info) = response.profile_type.as_mut() {
            info.sample_type = type_name.to_string();
        }
        let rendered = render_top(&response, None);

        let expected_lines: Vec<String> = expected_text
            .lines()
            .skip_while(|line| !line.starts_with("Type: "))
            .filter(|line| !line.starts_with("Time: ") && !line.starts_with("Duration: "))
            .map(|line| strip_inline_mark(line).to_string())
            .collect();
        let rendered_lines: Vec<&str> = rendered
            .lines()
            .filter(|line| !line.starts_with("Profile type: ") && !line.starts_with("Profiles: "))
            .collect();
        assert_eq!(rendered_lines, expected_lines, "{file_name}");
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} expected files found");
}

#[test]
fn top_header_names_type_range_and_limit() {
    let mut response = merge_response(
        "nanoseconds",
        100_000_000,
        vec![proto::TopRow {
            frame: Some(proto::Frame {
                function: "main.work".into(),
                ..Default::default()
            }),
            flat: 60_000_000,
            cum: 100_000_000,
            ..Default::default()
        }],
    );
    response.truncation = Some(proto::Truncation {
        nodes_removed: 0,
        value_removed: 0,
        rows_removed: 4,
    });
    let range = TimeRange {
        start_unix_ms: 1_764_092_520_000,
        end_unix_ms: 1_764_096_120_000,
    };
    let text = render_top(&response, Some(range));
    let expected = "Type: value\n\
                    Profile type: test:value:nanoseconds:value:nanoseconds\n\
                    Range: 2025-11-25T17:42:00Z to 2025-11-25T18:42:00Z\n\
                    Profiles: 1 from 1 series\n\
                    Showing nodes accounting for 60ms, 60.00% of 100ms total\n\
                    Showing top 1 nodes out of 5\n      \
                    flat  flat%   sum%        cum   cum%\n      \
                    60ms 60.00% 60.00%      100ms   100%  main.work\n";
    assert_eq!(text, expected);
}

#[test]
fn empty_merge_renders_without_rows() {
    let response = proto::MergeResponse::default();
    let text = render_top(&response, None);
    assert!(text.contains("Type: (no data matched)"), "{text}");
    assert!(
        text.contains("Showing nodes accounting for 0, 0% of 0 total"),
        "{text}"
    );
    assert!(text.ends_with(&format!("{TOP_COLUMN_HEADER}\n")), "{text}");
}

fn small_tree() -> proto::StackTree {
    let frame = |name: &str| proto::Frame {
        function: name.into(),
        ..Default::default()
    };
    let node = |frame: u32, parent: i32, self_: i64, total: i64, baseline_total: i64| proto::TreeNode {
        frame,
        parent,
        self_,
        total,
        baseline_self: 0,
        baseline_total,
    };
    proto::StackTree {
        frames: vec![frame("main"), frame("small"), frame("big")],
        nodes: vec![
            node(0, -1, 0, 100, 50),
            node(0, 0, 0, 100, 50),
            node(1, 1, 10, 10, 20),
            node(2, 1, 90, 90, 30),
            node(7, 99, 1, 1, 0), // parent out of range: left out
        ],
    }
}

#[test]
fn tree_is_indented_and_ordered_by_total() {
    let mut response = merge_response("count", 100, vec![]);
    response.result = Some(proto::merge_response::Result::Tree(small_tree()));
    let text = render_tree(&response, None);
    let body: Vec<&str> = text.lines().skip_while(|line| !line.contains("total%")).collect();
    assert_eq!(
        body,
        vec![
            "     total total%       self  name",
            "       100   100%          0  (all)",
            "       100   100%          0    main",
            "        90 90.00%         90      big",
            "        10 10.00%         10      small",
        ]
    );
}

#[test]
fn diff_outputs_show_a_b_and_change() {
    let response = proto::DiffResponse {
        profile_type: merge_response("count", 0, vec![]).profile_type,
        total_a: 50,
        total_b: 100,
        tree: Some(small_tree()),
        top: Some(proto::Top {
            rows: vec![
                proto::TopRow {
                    frame: Some(proto::Frame {
                        function: "small".into(),
                        ..Default::default()
                    }),
                    flat: 10,
                    cum: 10,
                    baseline_flat: 20,
                    baseline_cum: 20,
                },
                proto::TopRow {
                    frame: Some(proto::Frame {
                        function: "big".into(),
                        ..Default::default()
                    }),
                    flat: 90,
                    cum: 90,
                    baseline_flat: 30,
                    baseline_cum: 30,
                },
            ],
        }),
        truncation: None,
        coverage: None,
    };
    let top = render_diff_top(&response);
    assert!(top.contains("Total: A 50, B 100, change +50 (+100.00%)"), "{top}");
    let rows: Vec<&str> = top
        .lines()
        .skip_while(|line| !line.contains("flat(A)"))
        .skip(1)
        .collect();
    assert_eq!(
        rows,
        vec![
            "        30         90        +60         30         90        +60  big",
            "        20         10        -10         20         10        -10  small",
        ]
    );
    let tree = render_diff_tree(&response);
    assert!(
        tree.contains("        30         90        +60      big\n"),
        "{tree}"
    );
}

#[test]
fn range_table_has_one_column_per_series() {
    let label = |name: &str, value: &str| proto::Label {
        name: name.into(),
        value: value.into(),
    };
    let response = proto::RangeResponse {
        profile_type: merge_response("nanoseconds", 0, vec![]).profile_type,
        step_ms: 60_000,
        series: vec![
            proto::RangeSeries {
                labels: vec![label("job", "api")],
                points: vec![
                    proto::Point {
                        timestamp_ms: 1_764_096_000_000,
                        value: 1_500_000_000,
                    },
                    proto::Point {
                        timestamp_ms: 1_764_096_060_000,
                        value: 20_000_000,
                    },
                ],
            },
            proto::RangeSeries {
                labels: vec![label("job", "db")],
                points: vec![proto::Point {
                    timestamp_ms: 1_764_096_060_000,
                    value: 3_000_000_000,
                }],
            },
        ],
        coverage: None,
    };
    let text = render_range_table(&response);
    let expected = "Profile type: test:value:nanoseconds:value:nanoseconds\n\
                    Step: 1m\n\
                    TIME                  {job=\"api\"}  {job=\"db\"}\n\
                    2025-11-25T18:40:00Z        1.50s\n\
                    2025-11-25T18:41:00Z        0.02s          3s\n";
    assert_eq!(text, expected);
}

#[test]
fn series_and_types_tables_are_aligned() {
    let info = merge_response("bytes", 0, vec![]).profile_type;
    let series = proto::SeriesResponse {
        series: vec![proto::SeriesInfo {
            profile_type: info.clone(),
            labels: vec![proto::Label {
                name: "job".into(),
                value: "a\"b".into(),
            }],
            series_hash: 255,
        }],
        coverage: None,
    };
    assert_eq!(
        render_series_table(&series),
        "PROFILE TYPE                  LABELS        SERIES HASH\n\
         test:value:bytes:value:bytes  {job=\"a\\\"b\"}  00000000000000ff\n"
    );
    let types = proto::ProfileTypesResponse {
        types: info.into_iter().collect(),
        coverage: None,
    };
    let text = render_types_table(&types);
    assert!(text.starts_with("PROFILE TYPE"), "{text}");
    assert!(
        text.contains("test:value:bytes:value:bytes  test  value (bytes)  value (bytes)  no"),
        "{text}"
    );
    assert_eq!(
        render_types_table(&proto::ProfileTypesResponse::default()),
        "no profile types in this time range\n"
    );
}

#[test]
fn coverage_warning_names_missing_groups() {
    assert_eq!(coverage_warning(None), None);
    assert_eq!(
        coverage_warning(Some(&proto::Coverage {
            groups_total: 3,
            missing: vec![]
        })),
        None
    );
    let coverage = proto::Coverage {
        groups_total: 5,
        missing: vec![
            proto::MissingGroup {
                group_id: 3,
                reason: "no quorum".into(),
            },
            proto::MissingGroup {
                group_id: 7,
                reason: String::new(),
            },
        ],
    };
    assert_eq!(
        coverage_warning(Some(&coverage)).unwrap(),
        "warning: partial result: 2 of 5 shard groups did not answer: group 3 (no quorum), group 7"
    );
}

#[test]
fn label_sets_are_prometheus_style() {
    let mut labels = LabelMap::new();
    assert_eq!(format_label_set(&labels), "{}");
    labels.insert("job".into(), "api".into());
    labels.insert("instance".into(), "a\\b\n".into());
    assert_eq!(format_label_set(&labels), "{instance=\"a\\\\b\\n\", job=\"api\"}");
}
