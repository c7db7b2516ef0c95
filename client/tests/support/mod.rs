//! Test harness: real `kiln-node` processes on ephemeral loopback ports, the real
//! `kiln` CLI, and parsers for `go tool pprof -top` text.
#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `attempt` every 200 ms until it returns `Some`, which it returns, or panics naming `what`
/// once `deadline` has passed.
pub fn wait_until<T>(what: &str, deadline: Duration, mut attempt: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shared test data directory (`../shared/testdata` beside the repository).
pub fn testdata() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    assert!(path.is_dir(), "shared test data not found at {}", path.display());
    path
}

/// The `kiln-node` binary, built beside `kiln` in the same target directory.
pub fn node_binary() -> PathBuf {
    let kiln = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let node = kiln.with_file_name("kiln-node");
    assert!(
        node.is_file(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`)",
        node.display()
    );
    node
}

/// A `kiln-node` process that reported its address and node id.
pub struct Started {
    /// The process.
    pub child: Child,
    /// `host:port` it listens on.
    pub address: String,
    /// The node id it printed.
    pub node_id: u64,
}

/// Starts `kiln-node` on `data_dir`, listening on `listen`, with `extra` flags and
/// `KILN_LOG=log`, and waits (up to [`START_DEADLINE`]) until it prints its address
/// and node id.
pub fn spawn_node(data_dir: &Path, listen: &str, extra: &[String], log: &str) -> Started {
    // The shared test profiles keep the time they were recorded at, which falls outside the
    // default retention (7 d) a week later; a retention pass (the first runs at start-up,
    // concurrently with the first writes) would then delete them whenever it happened to run.
    let retention: &[&str] = if extra.iter().any(|flag| flag == "--retention") {
        &[]
    } else {
        &["--retention", "36500d"]
    };
    let mut child = Command::new(node_binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen])
        .args(retention)
        .args(extra)
        .env("KILN_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kiln-node");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut address = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(listening) = line.strip_prefix("listening on ") {
                address = Some(listening.to_string());
            } else if let (Some(id), Some(address)) = (line.strip_prefix("node id "), address.take()) {
                let _ = sender.send((address, id.trim().parse::<u64>().unwrap_or(0)));
            }
        }
    });
    match receiver.recv_timeout(START_DEADLINE) {
        Ok((address, node_id)) => Started {
            child,
            address,
            node_id,
        },
        Err(_) => {
            let _ = child.kill();
            panic!("kiln-node did not report its address and id within {START_DEADLINE:?}");
        }
    }
}

/// A running `kiln-node` with its own data directory.
pub struct TestNode {
    child: Option<Child>,
    /// `host:port` it listens on.
    pub address: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Starts a node on a fresh temporary data directory.
    pub fn start() -> TestNode {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut node = TestNode::start_in(temp.path(), &[]);
        node._temp = Some(temp);
        node
    }

    /// Starts a node on `data_dir` with extra flags.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> TestNode {
        let extra: Vec<String> = extra.iter().map(|flag| flag.to_string()).collect();
        let Started { child, address, .. } = spawn_node(data_dir, "127.0.0.1:0", &extra, "warn");
        TestNode {
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
        }
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                assert!(exit.success(), "kiln-node exited with {exit} after SIGTERM");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kiln-node did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts on the same data directory (after `stop` or `kill9`).
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Restarts on the same data directory with extra flags (after `stop` or `kill9`).
    pub fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "stop or kill the node first");
        let restarted = TestNode::start_in(&self.data_dir, extra);
        self.address = restarted.address.clone();
        self.child = restarted.into_child();
    }

    fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }

    /// Runs the `kiln` CLI against this node.
    pub fn kiln(&self, args: &[&str]) -> Output {
        run_kiln(&self.address, args)
    }

    /// Everything a user sees of the stored data: every series, and the CPU top over
    /// all time (with a fixed end, so that the printed range is the same each time).
    pub fn snapshot(&self) -> (String, String) {
        let series = self.kiln_ok(&["series", "--from", "0", "--output", "json"]);
        let top = self.kiln_ok(&[
            "query",
            "cpu",
            "--from",
            "0",
            "--to",
            "2100-01-01T00:00:00Z",
            "--output",
            "top",
        ]);
        (series, top)
    }

    /// Waits (up to [`START_DEADLINE`]) until the node's `/metrics` shows `name` at `at_least` or more.
    pub fn wait_for_metric(&self, name: &str, at_least: f64) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let deadline = std::time::Instant::now() + START_DEADLINE;
        let mut last = 0.0;
        while std::time::Instant::now() < deadline {
            last = metric(&runtime, &self.address, name);
            if last >= at_least {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("metric {name} did not reach {at_least} within {START_DEADLINE:?} (last: {last})");
    }

    /// Runs the CLI and returns stdout, failing the test on a non-zero exit.
    pub fn kiln_ok(&self, args: &[&str]) -> String {
        run_kiln_ok(&self.address, args)
    }
}

/// Runs the `kiln` CLI against the node at `address` (`host:port`).
pub fn run_kiln(address: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_SERVER", format!("http://{address}"))
        .stdin(Stdio::null())
        .output()
        .expect("run kiln")
}

/// Runs the CLI against `address` and returns stdout, failing the test on a
/// non-zero exit.
pub fn run_kiln_ok(address: &str, args: &[&str]) -> String {
    let output = run_kiln(address, args);
    assert!(
        output.status.success(),
        "kiln {args:?} against {address} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One parsed `-top` table: function name -> (flat, cum) in base units, with the
/// absolute tolerance that the printed precision allows.
#[derive(Debug, Default)]
pub struct TopTable {
    /// By function name (`(inline)` marks removed; rows of one name added).
    pub rows: BTreeMap<String, TopValues>,
    /// The total from the "of X total" header, base units.
    pub total: Option<(f64, f64)>,
}

/// Flat and cum of one function, each with its print tolerance.
#[derive(Debug, Default, Clone, Copy)]
pub struct TopValues {
    /// Flat value.
    pub flat: f64,
    /// Cum value.
    pub cum: f64,
    /// Largest rounding error in flat.
    pub flat_tolerance: f64,
    /// Largest rounding error in cum.
    pub cum_tolerance: f64,
}

/// Parses a pprof-printed quantity (`1.02s`, `10ms`, `512.17kB`, `7`) into base units
/// (ns, bytes, count) and the half-unit of its last printed digit.
pub fn parse_quantity(text: &str) -> Option<(f64, f64)> {
    let split =
        text.find(|character: char| !(character.is_ascii_digit() || character == '.' || character == '-'))?;
    let (number, unit) = if split == 0 {
        return None;
    } else {
        text.split_at(split)
    };
    quantity(number, unit)
}

fn quantity(number: &str, unit: &str) -> Option<(f64, f64)> {
    let value: f64 = number.parse().ok()?;
    let multiplier = match unit {
        "" => 1.0,
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "mins" => 60e9,
        "hrs" => 3600e9,
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    let decimals = number
        .split_once('.')
        .map(|(_, fraction)| fraction.len())
        .unwrap_or(0);
    // pprof prints two decimals and drops ".00": an integer print may hide up to 0.005.
    let half_digit = if decimals == 0 && unit.is_empty() {
        0.0
    } else {
        0.5 * 10f64.powi(-(decimals.max(2) as i32))
    };
    Some((value * multiplier, half_digit * multiplier))
}

fn parse_plain_quantity(text: &str) -> Option<(f64, f64)> {
    if text.chars().all(|character| character.is_ascii_digit()) {
        return quantity(text, "");
    }
    parse_quantity(text)
}

/// Parses `go tool pprof -top` (or `kiln query --output top`) text.
pub fn parse_top(text: &str) -> TopTable {
    let mut table = TopTable::default();
    let mut in_rows = false;
    for line in text.lines() {
        if line.contains("Showing nodes accounting for") {
            if let Some((_, rest)) = line.split_once(" of ") {
                if let Some(total_text) = rest.split_whitespace().next() {
                    table.total = parse_plain_quantity(total_text.trim_end_matches(','));
                }
            }
        }
        if line.trim_start().starts_with("flat") && line.contains("cum%") {
            in_rows = true;
            continue;
        }
        if !in_rows || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            continue;
        }
        let (Some(flat), Some(cum)) = (parse_plain_quantity(fields[0]), parse_plain_quantity(fields[3]))
        else {
            continue;
        };
        let mut name = fields[5..].join(" ");
        for mark in [" (inline)", " (partial-inline)"] {
            if let Some(stripped) = name.strip_suffix(mark) {
                name = stripped.to_string();
            }
        }
        let entry = table.rows.entry(name).or_default();
        entry.flat += flat.0;
        entry.cum += cum.0;
        entry.flat_tolerance += flat.1;
        entry.cum_tolerance += cum.1;
    }
    table
}

/// Asserts that two top tables agree on every function to their printed precision.
pub fn assert_tops_agree(expected: &TopTable, actual: &TopTable, context: &str) {
    assert!(
        !expected.rows.is_empty(),
        "{context}: the expected table has no rows"
    );
    let mut mismatches = Vec::new();
    for (name, want) in &expected.rows {
        let Some(got) = actual.rows.get(name) else {
            mismatches.push(format!("{name}: missing"));
            continue;
        };
        let flat_ok = (want.flat - got.flat).abs() <= want.flat_tolerance + got.flat_tolerance + 1e-9;
        let cum_ok = (want.cum - got.cum).abs() <= want.cum_tolerance + got.cum_tolerance + 1e-9;
        if !flat_ok || !cum_ok {
            mismatches.push(format!(
                "{name}: expected flat {} cum {}, got flat {} cum {}",
                want.flat, want.cum, got.flat, got.cum
            ));
        }
    }
    for name in actual.rows.keys() {
        if !expected.rows.contains_key(name) {
            mismatches.push(format!("{name}: not in the expected table"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{context}: {} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// A tiny valid pprof (gzipped): stack `main -> work -> leaf_<tag>` with `value`
/// samples, stamped `time_nanos`.
pub fn tiny_pprof(tag: &str, value: i64, time_nanos: i64) -> Vec<u8> {
    use kiln_proto::pprof as wire;
    use prost::Message;
    use std::io::Write;
    let strings: Vec<String> = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        &format!("leaf_{tag}"),
    ]
    .iter()
    .map(|text| text.to_string())
    .collect();
    let function = |id: u64, name: i64| wire::Function {
        id,
        name,
        system_name: name,
        filename: 0,
        start_line: 0,
    };
    let location = |id: u64, function_id: u64| wire::Location {
        id,
        mapping_id: 0,
        address: 0x1000 * id,
        line: vec![wire::Line {
            function_id,
            line: 1,
            column: 0,
        }],
        is_folded: false,
    };
    let profile = wire::Profile {
        sample_type: vec![wire::ValueType { r#type: 1, unit: 2 }],
        period_type: Some(wire::ValueType { r#type: 3, unit: 4 }),
        period: 10_000_000,
        time_nanos,
        sample: vec![wire::Sample {
            location_id: vec![3, 2, 1],
            value: vec![value],
            label: vec![],
        }],
        location: vec![location(1, 1), location(2, 2), location(3, 3)],
        function: vec![function(1, 5), function(2, 6), function(3, 7)],
        string_table: strings,
        ..Default::default()
    };
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&profile.encode_to_vec()).expect("gzip");
    encoder.finish().expect("gzip")
}

/// The value of metric `name` on the node at `address` (`/metrics`), 0 when it is not there.
pub fn metric(runtime: &tokio::runtime::Runtime, address: &str, name: &str) -> f64 {
    let text = runtime.block_on(async {
        reqwest::get(format!("http://{address}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    });
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Unix time now in nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// A gRPC write of one series with one profile.
pub fn write_request(
    key: &str,
    labels: &[(&str, &str)],
    pprof: Vec<u8>,
) -> kiln_proto::kiln::v1::WriteRequest {
    use kiln_proto::kiln::v1 as api;
    api::WriteRequest {
        idempotency_key: key.to_string(),
        series: vec![api::SeriesWrite {
            labels: labels
                .iter()
                .map(|(name, value)| api::Label {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            profiles: vec![api::RawProfile {
                pprof,
                name: String::new(),
                default_time_unix_nanos: 0,
                delta: None,
            }],
        }],
    }
}
