//! Folded and speedscope input, and every output format, through a real node.

mod support;

use std::collections::BTreeMap;

use support::{testdata, TestNode};

/// Folded text aggregated into stack -> value (equal stacks added up).
fn folded_map(text: &str) -> BTreeMap<String, i64> {
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let (stack, value) = line.rsplit_once(' ').expect("`stack value` line");
        *map.entry(stack.to_string()).or_insert(0) += value.trim().parse::<i64>().expect("integer value");
    }
    map
}

fn query(node: &TestNode, selector: &str, output: &str) -> String {
    node.kiln_ok(&[
        "query", selector, "--from", "0", "--to", "now", "--output", output,
    ])
}

#[test]
fn folded_file_gives_back_the_same_stacks_and_totals() {
    let node = TestNode::start();
    let path = testdata().join("folded/python-pyspy.folded");
    node.kiln_ok(&["ingest", path.to_str().expect("utf-8"), "--label", "file=folded"]);
    let mut original = folded_map(&std::fs::read_to_string(&path).expect("folded file"));
    let original_total: i64 = original.values().sum();
    // py-spy writes one sample with an empty stack (" 1"): it counts in the total,
    // but a folded line needs at least one frame, so it has no line of its own.
    original.remove("");
    let returned = folded_map(&query(&node, r#"samples{file="folded"}"#, "folded"));
    assert_eq!(returned, original);
    let merged: serde_json::Value =
        serde_json::from_str(&query(&node, r#"samples{file="folded"}"#, "json")).expect("merge json");
    assert_eq!(merged["total"].as_i64(), Some(original_total));
}

#[test]
fn speedscope_file_gives_back_the_same_stacks_and_totals() {
    let node = TestNode::start();
    let path = testdata().join("speedscope/python-pyspy.speedscope.json");
    node.kiln_ok(&[
        "ingest",
        path.to_str().expect("utf-8"),
        "--label",
        "file=speedscope",
    ]);
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("speedscope file")).expect("json");
    let frames = document["shared"]["frames"].as_array().expect("frames");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut expected_nanoseconds = 0f64;
    for profile in document["profiles"].as_array().expect("profiles") {
        let weights = profile["weights"].as_array().expect("weights");
        for (sample, weight) in profile["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .zip(weights)
        {
            let names: Vec<&str> = sample
                .as_array()
                .expect("frame list")
                .iter()
                .map(|index| {
                    frames[index.as_u64().expect("index") as usize]["name"]
                        .as_str()
                        .expect("name")
                })
                .collect();
            *expected.entry(names.join(";")).or_insert(0) += 1;
            expected_nanoseconds += weight.as_f64().expect("weight") * 1e9;
        }
    }
    // Samples with an empty stack have no folded line; speedscope files have none.
    assert_eq!(
        folded_map(&query(&node, r#"samples{file="speedscope"}"#, "folded")),
        expected
    );
    let merged: serde_json::Value =
        serde_json::from_str(&query(&node, r#"cpu{file="speedscope"}"#, "json")).expect("merge json");
    let total = merged["total"].as_f64().expect("total");
    // Each weight is rounded to whole nanoseconds on conversion.
    assert!(
        (total - expected_nanoseconds).abs() <= expected.values().sum::<i64>() as f64,
        "{total} vs {expected_nanoseconds}"
    );
}

#[test]
fn svg_tree_and_json_outputs_describe_the_same_merge() {
    let node = TestNode::start();
    let path = testdata().join("pprof/go/cpu.pb.gz");
    node.kiln_ok(&["ingest", path.to_str().expect("utf-8"), "--label", "file=cpu"]);
    let svg = query(&node, r#"cpu{file="cpu"}"#, "svg");
    assert!(
        svg.contains("<svg") && svg.contains("crypto/sha256.block"),
        "not a flame graph: {}",
        &svg[..200.min(svg.len())]
    );
    let tree = query(&node, r#"cpu{file="cpu"}"#, "tree");
    assert!(tree.contains("main.generateReport"), "{tree}");
    let json: serde_json::Value =
        serde_json::from_str(&query(&node, r#"cpu{file="cpu"}"#, "json")).expect("json");
    assert_eq!(json["total"], 3_440_000_000i64);
    let nodes = json["tree"]["nodes"].as_array().expect("tree nodes");
    assert_eq!(nodes[0]["total"], 3_440_000_000i64);
}

#[test]
fn http_api_answers_the_same_as_grpc() {
    let node = TestNode::start();
    let body = std::fs::read(testdata().join("pprof/go/cpu.pb.gz")).expect("profile");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let written: serde_json::Value = client
            .post(format!(
                "{}/api/v1/ingest?label.file=cpu&label.service=web",
                node.url()
            ))
            .body(body)
            .send()
            .await
            .expect("ingest")
            .json()
            .await
            .expect("json");
        assert_eq!(written["profiles"], 1);
        let merged: serde_json::Value = client
            .get(format!("{}/api/v1/query/merge", node.url()))
            .query(&[
                ("selector", r#"cpu{service="web"}"#),
                ("from", "0"),
                ("format", "top"),
            ])
            .send()
            .await
            .expect("merge")
            .json()
            .await
            .expect("json");
        assert_eq!(merged["total"], 3_440_000_000i64);
        assert_eq!(
            merged["top"]["rows"][0]["frame"]["function"],
            "crypto/sha256.block"
        );
        let values: serde_json::Value = client
            .get(format!("{}/api/v1/labels/service/values", node.url()))
            .send()
            .await
            .expect("values")
            .json()
            .await
            .expect("json");
        assert_eq!(values["values"], serde_json::json!(["web"]));
        let metrics = client
            .get(format!("{}/metrics", node.url()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(metrics.contains("kiln_ingested_profiles_total 1"), "{metrics}");
        let health = client
            .get(format!("{}/healthz", node.url()))
            .send()
            .await
            .expect("healthz");
        assert!(health.status().is_success());
    });
    let grpc_top = node.kiln_ok(&["query", r#"cpu{service="web"}"#, "--from", "0", "--output", "top"]);
    assert!(grpc_top.contains("crypto/sha256.block"));
}

/// Regression: the client listed gzip first, so the node gzipped every merged tree
/// (about a quarter of its CPU during merges). The client's preference must reach
/// the node and come back as a zstd-compressed response.
#[test]
fn responses_come_back_zstd_compressed_as_the_client_prefers() {
    use kiln_proto::kiln::v1 as api;
    use kiln_proto::kiln::v1::query_service_client::QueryServiceClient;

    let node = TestNode::start();
    let path = testdata().join("pprof/go/cpu.pb.gz");
    node.kiln_ok(&[
        "ingest",
        path.to_str().expect("utf-8"),
        "--label",
        "file=compression",
    ]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let encoding = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.address))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = QueryServiceClient::new(channel);
        for encoding in kiln_client::client::RESPONSE_ENCODINGS {
            client = client.accept_compressed(encoding);
        }
        let response = client
            .merge(api::MergeRequest {
                selection: Some(api::Selection {
                    selector: r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{file="compression"}"#
                        .into(),
                    start_unix_ms: 0,
                    end_unix_ms: 0,
                }),
                format: api::MergeFormat::Tree as i32,
                ..Default::default()
            })
            .await
            .expect("merge");
        assert!(
            response.get_ref().total > 0,
            "the merge found the ingested profile"
        );
        response
            .metadata()
            .get("grpc-encoding")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    });
    assert_eq!(encoding.as_deref(), Some("zstd"));
}
