//! End to end against real Go profiles: a real node, the real CLI, and `go tool
//! pprof`'s own numbers as the reference.

mod support;

use support::{assert_tops_agree, parse_top, testdata, TestNode};

/// `(file stem, --name to give, expected top file)`; mutex and block profiles
/// cannot be told apart from their content, so they are named explicitly.
const PROFILES: &[(&str, Option<&str>, Option<&str>)] = &[
    ("cpu", None, Some("cpu")),
    ("cpu-1", None, None),
    ("cpu-2", None, None),
    ("cpu-3", None, None),
    ("heap", None, Some("heap")),
    ("allocs", None, Some("allocs")),
    ("goroutine", None, Some("goroutine")),
    ("mutex", Some("mutex"), Some("mutex")),
    ("block", Some("block"), Some("block")),
    ("threadcreate", None, None),
];

fn ingest_all(node: &TestNode) {
    let directory = testdata().join("pprof/go");
    for (stem, name, _) in PROFILES {
        let path = directory.join(format!("{stem}.pb.gz"));
        let label = format!("file={stem}");
        let mut args = vec![
            "ingest",
            path.to_str().expect("utf-8 path"),
            "--label",
            &label,
            "--label",
            "service=demo",
        ];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        node.kiln_ok(&args);
    }
}

/// The profile type id of the series of `file=stem` whose sample type is `sample_type`.
fn type_of(node: &TestNode, stem: &str, sample_type: &str) -> String {
    let output = node.kiln_ok(&[
        "series",
        &format!("{{file=\"{stem}\"}}"),
        "--from",
        "0",
        "--output",
        "json",
    ]);
    let parsed: serde_json::Value = serde_json::from_str(&output).expect("series json");
    let series = parsed["series"].as_array().expect("series array");
    let found = series
        .iter()
        .filter_map(|entry| entry["profileType"].as_object())
        .find(|profile_type| profile_type["sampleType"] == sample_type)
        .unwrap_or_else(|| panic!("no series of file={stem} has sample type {sample_type}: {output}"));
    found["id"].as_str().expect("id").to_string()
}

fn expected_type(expected: &str) -> String {
    expected
        .lines()
        .find_map(|line| line.strip_prefix("Type: "))
        .expect("Type: line")
        .trim()
        .to_string()
}

#[test]
fn top_of_every_go_profile_matches_go_tool_pprof() {
    let node = TestNode::start();
    ingest_all(&node);
    let expected_directory = testdata().join("pprof/go/expected");
    for (stem, _, expected_file) in PROFILES {
        let Some(expected_file) = expected_file else {
            continue;
        };
        let expected_text =
            std::fs::read_to_string(expected_directory.join(format!("{expected_file}.top.txt")))
                .expect("expected top");
        let profile_type = type_of(&node, stem, &expected_type(&expected_text));
        let selector = format!("{profile_type}{{file=\"{stem}\"}}");
        let ours = node.kiln_ok(&[
            "query", &selector, "--from", "0", "--to", "now", "--output", "top",
        ]);
        assert_tops_agree(&parse_top(&expected_text), &parse_top(&ours), stem);
    }
}

#[test]
fn merge_of_three_cpu_profiles_matches_go_tool_pprof() {
    let node = TestNode::start();
    ingest_all(&node);
    let expected_text =
        std::fs::read_to_string(testdata().join("pprof/go/expected/cpu-1-2-3.merged.top.txt"))
            .expect("expected");
    let ours = node.kiln_ok(&[
        "query",
        r#"cpu{file=~"cpu-[123]"}"#,
        "--from",
        "0",
        "--to",
        "now",
        "--output",
        "top",
    ]);
    assert_tops_agree(&parse_top(&expected_text), &parse_top(&ours), "cpu-1-2-3");
}

#[test]
fn exported_pprof_reads_back_in_go_tool_pprof_with_the_same_numbers() {
    let node = TestNode::start();
    ingest_all(&node);
    let directory = tempfile::tempdir().expect("temp dir");
    let exported = directory.path().join("merged.pb.gz");
    let selector = r#"cpu{file=~"cpu-[123]"}"#;
    let ours = node.kiln_ok(&["query", selector, "--from", "0", "--to", "now", "--output", "top"]);
    node.kiln_ok(&[
        "query",
        selector,
        "--from",
        "0",
        "--to",
        "now",
        "--output",
        "pprof",
        "-o",
        exported.to_str().expect("utf-8 path"),
    ]);
    let go = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-nodecount=1000000",
            "-nodefraction=0",
            "-edgefraction=0",
        ])
        .arg(&exported)
        .env("HOME", directory.path())
        .env("PPROF_TMPDIR", directory.path())
        .output()
        .expect("`go` must be installed (Debian's golang-go); the test command installs it");
    assert!(
        go.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&go.stderr)
    );
    let theirs = String::from_utf8(go.stdout).expect("utf-8");
    assert_tops_agree(&parse_top(&theirs), &parse_top(&ours), "exported pprof");
}
