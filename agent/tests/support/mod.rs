//! Test harness for the agent: real `kiln-node` and `kiln-agent` processes on loopback, the real `kiln`
//! CLI, and test programs compiled on the spot. Every wait has a deadline.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A binary built beside `kiln-agent` in the same target directory.
pub fn sibling_binary(name: &str) -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_kiln-agent"));
    let path = agent.with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace --all-targets`)",
        path.display()
    );
    path
}

/// The agent binary.
pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln-agent"))
}

/// True when BPF can be used here (root). The CI runs as root; a developer without root skips the BPF
/// tests with a message instead of failing them.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `condition` every 100 ms until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spawns `command` with piped stdout and returns the child and the first stdout line that starts
/// with `prefix` (its rest), draining stdout on a thread.
fn spawn_and_read(mut command: Command, prefix: &'static str, what: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {what}: {error}"));
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = sender.send(rest.to_string());
            }
        }
    });
    match receiver.recv_timeout(START_DEADLINE) {
        Ok(value) => (child, value),
        Err(_) => {
            let _ = child.kill();
            panic!("{what} did not print {prefix:?} within {START_DEADLINE:?}");
        }
    }
}

/// A running `kiln-node`.
pub struct TestNode {
    child: Option<Child>,
    /// `host:port`.
    pub address: String,
    /// Data directory.
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// A node on a fresh data directory and an ephemeral port.
    pub fn start() -> TestNode {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut node = TestNode::start_in(temp.path(), "127.0.0.1:0");
        node._temp = Some(temp);
        node
    }

    /// A node on `data_dir` listening on `listen`.
    pub fn start_in(data_dir: &Path, listen: &str) -> TestNode {
        let mut command = Command::new(sibling_binary("kiln-node"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .env("KILN_LOG", "warn")
            .stderr(Stdio::inherit());
        let (child, address) = spawn_and_read(command, "listening on ", "kiln-node");
        TestNode {
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts on the same data directory and the same port (the agent keeps its address).
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "kill the node first");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            // The port was just freed; retry briefly if the kernel still holds it.
            let attempt = std::panic::catch_unwind(|| TestNode::start_in(&self.data_dir, &self.address));
            match attempt {
                Ok(mut node) => {
                    self.child = node.child.take();
                    return;
                }
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(200)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }

    /// Runs the `kiln` CLI against this node.
    pub fn kiln(&self, args: &[&str]) -> Output {
        Command::new(sibling_binary("kiln"))
            .args(args)
            .env("KILN_SERVER", format!("http://{}", self.address))
            .stdin(Stdio::null())
            .output()
            .expect("run kiln")
    }

    /// Runs the CLI and returns stdout; panics on failure.
    pub fn kiln_ok(&self, args: &[&str]) -> String {
        let output = self.kiln(args);
        assert!(
            output.status.success(),
            "kiln {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// Folded stacks (`root;...;leaf value`) of a selector over all time, as (stack, value) pairs.
    pub fn folded(&self, selector: &str) -> Vec<(String, i64)> {
        let text = self.kiln_ok(&[
            "query", selector, "--from", "0", "--to", "now", "--output", "folded",
        ]);
        text.lines()
            .filter_map(|line| {
                let (stack, value) = line.rsplit_once(' ')?;
                Some((stack.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// Profile types with data over all time.
    pub fn types(&self) -> String {
        self.kiln_ok(&["types", "--from", "0"])
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `kiln-agent` with captured stderr.
pub struct TestAgent {
    child: Option<Child>,
    /// `host:port` of `/metrics`.
    pub metrics_address: String,
    /// Everything the agent wrote to stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl TestAgent {
    /// Starts `binary` (the agent, or a copy) with `args`, through `wrapper` (e.g. setpriv) when given.
    pub fn start_with(wrapper: &[&str], binary: &Path, args: &[&str]) -> TestAgent {
        let mut command = if let Some((first, rest)) = wrapper.split_first() {
            let mut command = Command::new(first);
            command.args(rest).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("KILN_LOG", "info,kiln_agent=debug")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped());
        let mut child_command = command;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child = child_command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn kiln-agent");
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("metrics listening on ") {
                    let _ = sender.send(rest.to_string());
                }
            }
        });
        let metrics_address = match receiver.recv_timeout(START_DEADLINE) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "kiln-agent did not start; stderr:\n{}",
                    stderr.lock().map(|text| text.clone()).unwrap_or_default()
                );
            }
        };
        TestAgent {
            child: Some(child),
            metrics_address,
            stderr,
        }
    }

    /// Starts the agent binary with `args`.
    pub fn start(args: &[&str]) -> TestAgent {
        TestAgent::start_with(&[], &agent_binary(), args)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_address, "/metrics").unwrap_or_default()
    }

    /// One unlabelled metric's value (`kiln_agent_NAME` or `kiln_agent_NAME_total`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == format!("kiln_agent_{name}") || key == format!("kiln_agent_{name}_total"))
                    .then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM and wait (the agent drains once more and spools it).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "kiln-agent exited with {status}");
                return;
            }
            assert!(
                Instant::now() < end,
                "kiln-agent did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|text| text.clone()).unwrap_or_default()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback (no client library needed for one call).
pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// Compiles a test program from `tests/programs/NAME.c` with clang `-O1 -fno-omit-frame-pointer` into
/// `dir` (clang, not gcc: gcc leaves leaf functions frameless even with that flag).
pub fn compile_program(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let output_path = dir.join(name);
    let output = Command::new("clang")
        .args(["-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&output_path)
        .arg(&source)
        .output()
        .expect("run clang");
    assert!(
        output.status.success(),
        "clang {name}.c failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output_path
}

/// Builds the Go pprof demo from `../shared/testapps/go-pprof-demo` into `dir` (sources copied first: the
/// shared directory is read-only).
pub fn build_go_demo(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testapps/go-pprof-demo");
    assert!(source.is_dir(), "{} is missing", source.display());
    let work = dir.join("go-pprof-demo-src");
    std::fs::create_dir_all(&work).expect("mkdir");
    for file in ["go.mod", "main.go"] {
        std::fs::copy(source.join(file), work.join(file)).expect("copy demo source");
    }
    let binary = dir.join("go-pprof-demo");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&work)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build (Debian package golang-go)");
    assert!(
        output.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("free port")
}

/// Sums folded values by a predicate on the stack.
pub fn sum_where(folded: &[(String, i64)], predicate: impl Fn(&str) -> bool) -> i64 {
    folded
        .iter()
        .filter(|(stack, _)| predicate(stack))
        .map(|(_, value)| value)
        .sum()
}

/// Top function names of a `kiln query --output top` text, flat-ordered.
pub fn top_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_rows = false;
    for line in text.lines() {
        if line.trim_start().starts_with("flat") && line.contains("cum%") {
            in_rows = true;
            continue;
        }
        if in_rows {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 6 {
                names.push(fields[5..].join(" "));
            }
        }
    }
    names
}

/// Counts of profile types per label value from `kiln series --output json`.
pub fn series_types(node: &TestNode, selector: &str) -> BTreeMap<String, usize> {
    let text = node.kiln_ok(&["series", selector, "--from", "0", "--output", "json"]);
    let value: serde_json::Value = serde_json::from_str(&text).expect("series json");
    let mut types = BTreeMap::new();
    let list = value
        .get("series")
        .and_then(|series| series.as_array())
        .cloned()
        .unwrap_or_default();
    for series in list {
        if let Some(profile_type) = series
            .get("profileType")
            .and_then(|info| info.get("id"))
            .and_then(|id| id.as_str())
        {
            *types.entry(profile_type.to_string()).or_insert(0) += 1;
        }
    }
    types
}

/// Agent flags for a CPU profiling test: push to `node`, spool in `spool`, drain every
/// second at 99 Hz (so a few seconds of workload give hundreds of samples).
pub fn profiling_args<'a>(node: &'a TestNode, spool: &'a str) -> Vec<&'a str> {
    vec![
        "--server",
        &node.address,
        "--spool-dir",
        spool,
        "--drain-interval",
        "1s",
        "--frequency-hz",
        "99",
    ]
}

/// Returns the folded stacks of `selector` once everything `agents` sampled before this call is stored,
/// and asserts they hold at least `minimum` samples. Callers stop the workload first.
///
/// Exact, not timed: a cycle that completes after the one in progress at the call drained the BPF maps
/// after the call (so after the workload's last sample); the `cycles` counter moves only once that
/// cycle's batches are in the spool gauges, so a later scrape showing an empty spool means the node
/// acknowledged them, and acknowledged writes are visible to queries.
pub fn settled_folded(
    node: &TestNode,
    selector: &str,
    minimum: i64,
    agents: &[&TestAgent],
) -> Vec<(String, i64)> {
    assert!(!agents.is_empty(), "settled_folded needs the agents that sampled");
    let targets: Vec<f64> = agents.iter().map(|agent| agent.metric("cycles") + 2.0).collect();
    wait_for(
        &format!("a whole drain cycle of every agent after the workload ({selector})"),
        Duration::from_secs(90),
        || {
            agents
                .iter()
                .zip(&targets)
                .all(|(agent, target)| agent.metric("cycles") >= *target)
                .then_some(())
        },
    );
    wait_for(
        &format!("every agent's spool to be pushed ({selector})"),
        Duration::from_secs(90),
        || {
            agents
                .iter()
                .all(|agent| agent.metric("spool_batches") == 0.0)
                .then_some(())
        },
    );
    let folded = node.folded(selector);
    let total: i64 = folded.iter().map(|(_, value)| value).sum();
    assert!(
        total >= minimum,
        "{selector}: {total} samples stored, expected at least {minimum}"
    );
    folded
}
