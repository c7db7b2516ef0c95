//! Property: for random profiles written through the real ingest path into a real
//! RocksDB, the engine's merge equals a naive reference merge of the same samples.

use std::collections::BTreeMap;

use kiln_node::{LocalGroup, NodeConfig};
use kiln_proto::kiln::v1 as api;
use kiln_proto::pprof as wire;
use proptest::prelude::*;
use prost::Message;

/// A random profile: functions by index, locations as 1-2 inlined functions, samples.
#[derive(Debug, Clone)]
struct RandomProfile {
    /// Per location: the functions of its lines, innermost first.
    locations: Vec<Vec<usize>>,
    /// Per sample: location indices leaf first, and a value.
    samples: Vec<(Vec<usize>, i64)>,
    series: usize,
    time_offset_seconds: i64,
}

fn random_profile() -> impl Strategy<Value = RandomProfile> {
    let locations = prop::collection::vec(prop::collection::vec(0usize..8, 1..3), 1..10);
    (locations, 0usize..3, 0i64..3600).prop_flat_map(|(locations, series, time_offset_seconds)| {
        let location_count = locations.len();
        let samples = prop::collection::vec(
            (prop::collection::vec(0..location_count, 0..12), 1i64..1_000_000),
            0..30,
        );
        (Just(locations), samples, Just(series), Just(time_offset_seconds)).prop_map(
            |(locations, samples, series, time_offset_seconds)| RandomProfile {
                locations,
                samples,
                series,
                time_offset_seconds,
            },
        )
    })
}

fn function_name(index: usize) -> String {
    format!("pkg.function_{index}")
}

fn to_pprof(profile: &RandomProfile, base_time_nanos: i64) -> Vec<u8> {
    let mut strings = vec![
        String::new(),
        "cpu".into(),
        "nanoseconds".into(),
        "main.go".into(),
    ];
    let function_base = strings.len() as i64;
    strings.extend((0..8).map(function_name));
    let functions = (0..8u64)
        .map(|index| wire::Function {
            id: index + 1,
            name: function_base + index as i64,
            system_name: function_base + index as i64,
            filename: 3,
            start_line: 1,
        })
        .collect();
    let locations = profile
        .locations
        .iter()
        .enumerate()
        .map(|(index, functions)| wire::Location {
            id: index as u64 + 1,
            mapping_id: 0,
            address: 0x4000 + index as u64,
            line: functions
                .iter()
                .map(|function| wire::Line {
                    function_id: *function as u64 + 1,
                    line: 10,
                    column: 0,
                })
                .collect(),
            is_folded: false,
        })
        .collect();
    let samples = profile
        .samples
        .iter()
        .map(|(stack, value)| wire::Sample {
            location_id: stack.iter().map(|location| *location as u64 + 1).collect(),
            value: vec![*value],
            label: vec![],
        })
        .collect();
    wire::Profile {
        sample_type: vec![wire::ValueType { r#type: 1, unit: 2 }],
        period_type: Some(wire::ValueType { r#type: 1, unit: 2 }),
        time_nanos: base_time_nanos + profile.time_offset_seconds * 1_000_000_000,
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The reference: expand every sample into function names, root first, and add up.
fn naive_merge(profiles: &[RandomProfile]) -> BTreeMap<String, i64> {
    let mut merged = BTreeMap::new();
    for profile in profiles {
        for (stack, value) in &profile.samples {
            if stack.is_empty() {
                continue;
            }
            let mut names = Vec::new();
            for location in stack.iter().rev() {
                for function in profile.locations[*location].iter().rev() {
                    names.push(function_name(*function));
                }
            }
            *merged.entry(names.join(";")).or_insert(0) += value;
        }
    }
    merged
}

fn folded_map(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .map(|line| {
            let (stack, value) = line.rsplit_once(' ').expect("stack value");
            (stack.to_string(), value.parse().expect("integer"))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn storage_merge_equals_naive_reference_merge(profiles in prop::collection::vec(random_profile(), 1..6)) {
        let directory = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        // The profiles are stamped at a fixed date: keep them whatever today's date is.
        let state = LocalGroup::open(NodeConfig::keeping_everything(directory.path().to_path_buf())).expect("open");
        let base_time_nanos = 1_764_000_000_000_000_000i64;
        runtime.block_on(async {
            for (index, profile) in profiles.iter().enumerate() {
                let request = api::WriteRequest {
                    idempotency_key: format!("property-{index}"),
                    series: vec![api::SeriesWrite {
                        labels: vec![api::Label { name: "series".into(), value: profile.series.to_string() }],
                        profiles: vec![api::RawProfile {
                            pprof: to_pprof(profile, base_time_nanos),
                            name: "process_cpu".into(),
                            default_time_unix_nanos: 0,
                            delta: Some(true),
                        }],
                    }],
                };
                state.write(request).await.expect("write");
            }
        });
        let merged = state
            .engine
            .merge(&api::MergeRequest {
                selection: Some(api::Selection {
                    selector: r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{series=~"0|1|2"}"#.into(),
                    start_unix_ms: base_time_nanos / 1_000_000,
                    end_unix_ms: base_time_nanos / 1_000_000 + 3_600_000,
                }),
                format: api::MergeFormat::Folded as i32,
                ..Default::default()
            })
            .expect("merge");
        let Some(api::merge_response::Result::Folded(folded)) = merged.result else {
            panic!("expected folded output");
        };
        let expected = naive_merge(&profiles);
        let expected_total: i64 = profiles.iter().flat_map(|profile| profile.samples.iter().map(|(_, value)| *value)).sum();
        prop_assert_eq!(folded_map(&folded), expected);
        prop_assert_eq!(merged.total, expected_total);
        state.shutdown();
    }
}
