//! A node short of disk space, as a real process on a real file system. In its own test binary:
//! it takes gigabytes of the file system that other tests' nodes write to.

mod support;

use std::time::{Duration, Instant};

use support::{testdata, TestNode};

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `attempt` until it returns `Some`, or panics naming `what` at the deadline.
fn wait_until<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Regression: with its disk full, a node's raft log appends failed, and openraft stops a group
/// whose storage fails: every group of the node stopped, writes failed and so did queries (no
/// leader could prove it was current), until a restart. Now writes are refused while free space is
/// under `--min-free-disk-bytes`, with a message that says so; queries keep working; and writes
/// resume by themselves once space is freed.
#[test]
fn a_node_short_of_disk_space_refuses_writes_answers_queries_and_resumes_when_space_is_freed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let data_dir = directory.path().join("data");
    std::fs::create_dir(&data_dir).expect("data dir");
    let statistics = rustix::fs::statvfs(directory.path()).expect("statvfs");
    let available = statistics.f_bavail * statistics.f_frsize;
    let ballast_bytes: u64 = 2 << 30;
    assert!(
        available > ballast_bytes + (1 << 30),
        "the test needs 3 GiB free beside its temp dir, has {available} bytes"
    );
    // 1 GiB under what is free now: room for what the node writes meanwhile, and the ballast
    // takes the free space 1 GiB under the reserve.
    let reserve = available - (1 << 30);
    let node = TestNode::start_in(&data_dir, &["--min-free-disk-bytes", &reserve.to_string()]);
    let cpu = testdata().join("pprof/go/cpu.pb.gz");
    let cpu = cpu.to_str().expect("utf-8");
    node.kiln_ok(&["ingest", cpu, "--label", "phase=before"]);

    let ballast_path = directory.path().join("ballast");
    let ballast = std::fs::File::create(&ballast_path).expect("ballast file");
    rustix::fs::fallocate(&ballast, rustix::fs::FallocateFlags::empty(), 0, ballast_bytes)
        .expect("allocate the ballast");
    // The node measures its free space twice a second, so the first probes may still be stored.
    wait_until("the node refuses writes", || {
        let output = node.kiln(&["ingest", cpu, "--label", "phase=probe"]);
        (!output.status.success()).then_some(())
    });
    let refused = node.kiln(&["ingest", cpu, "--label", "phase=during"]);
    assert!(
        !refused.status.success(),
        "a write under the reserve was accepted"
    );
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(refusal.contains("--min-free-disk-bytes"), "{refusal}");
    assert!(refusal.contains("writes are refused"), "{refusal}");
    // In a cluster the refusal may come from another node, the group's leader: it names itself.
    assert!(refusal.contains("node 1's data directory"), "{refusal}");
    node.wait_for_metric("kiln_writes_refused_for_disk_total", 1.0);
    // Reads need no space: the query is answered while writes are refused.
    let series = node.kiln_ok(&["series", "--from", "0"]);
    assert!(series.contains("phase=\"before\""), "{series}");
    let top = node.kiln_ok(&["query", "cpu", "--from", "0"]);
    assert!(top.contains("Total") || top.contains("flat"), "{top}");

    drop(ballast);
    std::fs::remove_file(&ballast_path).expect("remove the ballast");
    wait_until("the node accepts writes again", || {
        node.kiln(&["ingest", cpu, "--label", "phase=after"])
            .status
            .success()
            .then_some(())
    });
    let series = node.kiln_ok(&["series", "--from", "0"]);
    assert!(series.contains("phase=\"after\""), "{series}");
    assert!(!series.contains("phase=\"during\""), "{series}");
}
