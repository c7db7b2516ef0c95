//! Retention drops whole expired partitions and the series left without samples,
//! and keeps everything newer.

use std::time::Duration;

use kiln_node::error::NodeError;
use kiln_node::ingest::{prepare_write, OldestKept};
use kiln_node::{LocalGroup, NodeConfig};
use kiln_proto::kiln::v1 as api;
use kiln_proto::pprof as wire;
use prost::Message;

fn profile(time_nanos: i64, value: i64) -> Vec<u8> {
    wire::Profile {
        sample_type: vec![wire::ValueType { r#type: 1, unit: 2 }],
        period_type: Some(wire::ValueType { r#type: 1, unit: 2 }),
        time_nanos,
        sample: vec![wire::Sample {
            location_id: vec![1],
            value: vec![value],
            label: vec![],
        }],
        location: vec![wire::Location {
            id: 1,
            mapping_id: 0,
            address: 1,
            line: vec![wire::Line {
                function_id: 1,
                line: 1,
                column: 0,
            }],
            is_folded: false,
        }],
        function: vec![wire::Function {
            id: 1,
            name: 3,
            system_name: 3,
            filename: 0,
            start_line: 0,
        }],
        string_table: vec!["".into(), "cpu".into(), "nanoseconds".into(), "main".into()],
        ..Default::default()
    }
    .encode_to_vec()
}

fn write(key: &str, job: &str, time_nanos: i64, value: i64) -> api::WriteRequest {
    api::WriteRequest {
        idempotency_key: key.into(),
        series: vec![api::SeriesWrite {
            labels: vec![api::Label {
                name: "job".into(),
                value: job.into(),
            }],
            profiles: vec![api::RawProfile {
                pprof: profile(time_nanos, value),
                name: "process_cpu".into(),
                default_time_unix_nanos: 0,
                delta: None,
            }],
        }],
    }
}

/// A node on a fresh directory (kept alive by the returned guard) with a retention of one hour.
fn open_keeping_one_hour() -> (tempfile::TempDir, std::sync::Arc<LocalGroup>) {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::with_data_dir(directory.path().to_path_buf());
    config.retention = Duration::from_secs(3600);
    let state = LocalGroup::open(config).expect("open");
    (directory, state)
}

#[test]
fn retention_drops_expired_partitions_and_series_and_keeps_the_rest() {
    let (_directory, state) = open_keeping_one_hour();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let now_nanos = kiln_model::time::now_unix_nanos();
    let hour = 3_600_000_000_000i64;
    // Ingest rejects profiles already older than the retention, so the old ones go to the writer
    // directly, as if written before they aged out.
    let written_when_young = |request| prepare_write(request, OldestKept::any_time()).expect("prepare");
    runtime.block_on(async {
        state
            .writer
            .write(written_when_young(write(
                "old-only",
                "old",
                now_nanos - 5 * hour,
                7,
            )))
            .await
            .expect("write");
        state
            .writer
            .write(written_when_young(write(
                "both-old",
                "both",
                now_nanos - 5 * hour,
                11,
            )))
            .await
            .expect("write");
        state
            .write(write("both-new", "both", now_nanos, 13))
            .await
            .expect("write");
        let outcome = state.run_retention().await.expect("retention");
        assert_eq!(outcome.series_expired, 1, "{outcome:?}");
    });
    let merge = |selector: &str| {
        state
            .engine
            .merge(&api::MergeRequest {
                selection: Some(api::Selection {
                    selector: selector.into(),
                    start_unix_ms: 0,
                    end_unix_ms: 0,
                }),
                ..Default::default()
            })
            .expect("merge")
            .total
    };
    assert_eq!(
        merge(r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{job="both"}"#),
        13
    );
    assert_eq!(
        merge(r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{job="old"}"#),
        0
    );
    let values = state
        .engine
        .label_values(&api::LabelValuesRequest {
            selection: None,
            name: "job".into(),
            options: None,
        })
        .expect("values")
        .values;
    assert_eq!(values, vec!["both".to_string()]);
    state.shutdown();
}

/// Regression: a profile already older than the retention was acknowledged, then deleted by the next
/// retention pass (the first one runs at start-up), so the write's success was a lie. It is now
/// rejected, naming the profile, its time and the retention, and nothing of the request is stored.
#[test]
fn ingest_rejects_a_profile_already_older_than_the_retention_and_stores_nothing() {
    let (_directory, state) = open_keeping_one_hour();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let now_nanos = kiln_model::time::now_unix_nanos();
    let hour = 3_600_000_000_000i64;
    runtime.block_on(async {
        let error = state
            .write(write("too-old", "old", now_nanos - 2 * hour, 7))
            .await
            .expect_err("a profile older than the retention is rejected");
        let message = error.to_string();
        assert!(matches!(error, NodeError::InvalidArgument(_)), "{error:?}");
        assert!(
            message.contains("series 0 profile 0") && message.contains("retention of 1h"),
            "the error names the profile and the retention: {message}"
        );
        state
            .write(write("recent", "recent", now_nanos - hour / 2, 5))
            .await
            .expect("a profile inside the retention is stored");
    });
    let series = state
        .engine
        .series(&api::SeriesRequest {
            selection: None,
            options: None,
        })
        .expect("series");
    let jobs: Vec<String> = series
        .series
        .iter()
        .flat_map(|series| series.labels.iter())
        .filter(|label| label.name == "job")
        .map(|label| label.value.clone())
        .collect();
    assert_eq!(
        jobs,
        vec!["recent".to_string()],
        "only the recent profile is stored"
    );
}
