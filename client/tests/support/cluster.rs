//! Multi-process cluster harness: real `kiln-node` processes on loopback, each
//! with its own data directory and a fixed port (so that a restarted node comes
//! back at the same address), driven with the real `kiln` CLI and gRPC clients.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use kiln_model::json::ClusterStatusResult;

use super::{run_kiln, run_kiln_ok, spawn_node};

/// Raft and failure-detection timings short enough for tests, long enough for a
/// loaded 2-core machine.
pub const FAST_FLAGS: &[&str] = &[
    "--raft-heartbeat",
    "200ms",
    "--raft-election-timeout",
    "1s",
    "--dead-node-timeout",
    "20s",
    "--groups",
    "4",
];

/// A free loopback port (bound, then released for the node to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// One node process of a [`TestCluster`].
pub struct ClusterNode {
    /// The node id it reported.
    pub id: u64,
    /// `127.0.0.1:port`.
    pub address: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    flags: Vec<String>,
    child: Option<Child>,
    _temp: tempfile::TempDir,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let started = spawn_node(&self.data_dir, &self.address, &self.flags, "warn,openraft=error");
        self.id = started.node_id;
        self.child = Some(started.child);
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("TERM");
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                assert!(exit.success(), "kiln-node exited with {exit} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "kiln-node did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same data directory and address.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.spawn();
    }

    /// [`Self::restart`] with `more` flags after the node's own (a later flag wins).
    pub fn restart_with(&mut self, more: &[&str]) {
        self.flags.extend(more.iter().map(|flag| flag.to_string()));
        self.restart();
    }

    /// Runs the `kiln` CLI against this node.
    pub fn kiln(&self, args: &[&str]) -> Output {
        run_kiln(&self.address, args)
    }

    /// Runs the CLI and returns stdout, failing the test on a non-zero exit.
    pub fn kiln_ok(&self, args: &[&str]) -> String {
        run_kiln_ok(&self.address, args)
    }

    /// `kiln cluster status` as seen from this node, `None` when it cannot answer.
    pub fn status(&self) -> Option<ClusterStatusResult> {
        let output = self.kiln(&["cluster", "status", "--output", "json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped (SIGSTOP) process must be continued to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// Several node processes forming one cluster.
pub struct TestCluster {
    /// The nodes, in start order (index 0 bootstrapped the cluster).
    pub nodes: Vec<ClusterNode>,
    extra: Vec<String>,
}

impl TestCluster {
    /// Starts `count` nodes (the first bootstraps, the others join it) with
    /// [`FAST_FLAGS`] plus `extra`, and waits until every group has
    /// `min(3, count)` voters and a leader.
    pub fn start(count: usize, extra: &[&str]) -> TestCluster {
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            extra: extra.iter().map(|flag| flag.to_string()).collect(),
        };
        for _ in 0..count {
            cluster.add_node();
        }
        cluster.wait_replicated(count.min(3), Duration::from_secs(180));
        cluster
    }

    /// Starts one more node, joining the first; returns its index.
    pub fn add_node(&mut self) -> usize {
        let temp = tempfile::tempdir().expect("temp dir");
        let index = self.nodes.len();
        let mut flags: Vec<String> = FAST_FLAGS.iter().map(|flag| flag.to_string()).collect();
        flags.extend(self.extra.iter().cloned());
        flags.extend(["--zone".to_string(), format!("zone-{index}")]);
        if let Some(first) = self.nodes.first() {
            flags.extend(["--join".to_string(), first.address.clone()]);
        }
        let mut node = ClusterNode {
            id: 0,
            address: format!("127.0.0.1:{}", free_port()),
            data_dir: temp.path().join("data"),
            flags,
            child: None,
            _temp: temp,
        };
        node.spawn();
        self.nodes.push(node);
        index
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|node| node.id == id)
            .unwrap_or_else(|| panic!("no node with id {id}"))
    }

    /// Status from the first running node that answers.
    pub fn status(&self) -> Option<ClusterStatusResult> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .find_map(ClusterNode::status)
    }

    /// Waits until `condition` holds on a fresh status, failing after `deadline`.
    pub fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        mut condition: impl FnMut(&ClusterStatusResult) -> bool,
    ) -> ClusterStatusResult {
        let until = Instant::now() + deadline;
        let mut last = None;
        loop {
            if let Some(status) = self.status() {
                if condition(&status) {
                    return status;
                }
                last = Some(status);
            }
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {what}; last status: {last:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until every group has exactly `replicas` voters (recorded and live),
    /// a leader, and every live replica is caught up.
    pub fn wait_replicated(&self, replicas: usize, deadline: Duration) -> ClusterStatusResult {
        self.wait_until(&format!("{replicas} replicas per group"), deadline, |status| {
            !status.groups.is_empty()
                && status.groups.iter().all(|group| {
                    let voters_live = group
                        .replicas
                        .iter()
                        .filter(|replica| replica.role == "leader" || replica.role == "follower")
                        .count();
                    let expected = if group.is_metadata {
                        status
                            .nodes
                            .iter()
                            .filter(|node| node.state == "up")
                            .count()
                            .min(5)
                    } else {
                        replicas
                    };
                    group.leader != 0
                        && group.voters.len() == expected
                        && voters_live == expected
                        && group.replicas.iter().all(|replica| replica.lag == 0)
                })
        })
    }

    /// The leader of data group `group`, waiting for one.
    pub fn leader_of(&self, group: u32) -> u64 {
        let status = self.wait_until(
            &format!("a leader of group {group}"),
            Duration::from_secs(60),
            |status| {
                status
                    .groups
                    .iter()
                    .any(|candidate| candidate.group == group && candidate.leader != 0)
            },
        );
        status
            .groups
            .iter()
            .find(|candidate| candidate.group == group)
            .map(|candidate| candidate.leader)
            .unwrap_or(0)
    }
}
