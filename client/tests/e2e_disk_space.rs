//! A node short of disk space, as a real process on a real file system. In its own test binary:
//! it takes gigabytes of the file system that other tests' nodes write to.

mod support;

use std::time::Duration;

use support::{testdata, TestNode};

const DEADLINE: Duration = Duration::from_secs(60);

/// [`support::wait_until`] with this file's deadline.
fn wait_until<T>(what: &str, attempt: impl FnMut() -> Option<T>) -> T {
    support::wait_until(what, DEADLINE, attempt)
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
    // Answered at the first refusal: retrying at once cannot free space.
    assert!(!refusal.contains("gave up after"), "{refusal}");
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

/// A tmpfs mounted for one test, unmounted when dropped (after the node on it is gone).
struct SmallFileSystem {
    directory: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> SmallFileSystem {
        let directory = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(directory.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a {size} tmpfs: {status}");
        SmallFileSystem { directory }
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.directory.path())
            .status();
    }
}

/// The body and status of `GET {url}{path}`.
fn get(runtime: &tokio::runtime::Runtime, url: &str, path: &str) -> (u16, String) {
    runtime.block_on(async {
        let response = reqwest::get(format!("{url}{path}")).await.expect(path);
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    })
}

/// Regression: a node whose disk filled up (here with no reserve, as a follower's still can) had
/// its raft groups stopped by openraft's storage-failure handling, which only a restart recovers,
/// and `/healthz` still said `ok`, so nothing would restart it; writes to the stopped groups were
/// retried for the whole proposal deadline. Now `/healthz` and `/readyz` answer 503 naming the
/// stopped groups, and such a write is refused at once with the reason.
#[test]
fn a_node_whose_raft_groups_stopped_on_a_full_disk_fails_its_health_check() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs (CI runs as root)");
        return;
    }
    let small = SmallFileSystem::mount("24m");
    let data_dir = small.directory.path().join("data");
    std::fs::create_dir(&data_dir).expect("data dir");
    let node = TestNode::start_in(&data_dir, &["--min-free-disk-bytes", "0"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = node.url();
    wait_until("the node is ready", || {
        (get(&runtime, &url, "/readyz") == (200, "ready\n".to_string())).then_some(())
    });
    assert_eq!(get(&runtime, &url, "/healthz"), (200, "ok\n".to_string()));

    // Writes with a new 64 KiB function name each: nothing deduplicates them, and they compress
    // to almost nothing on the wire.
    let filler = "f".repeat(64 << 10);
    let http = reqwest::Client::new();
    let mut stored = 0;
    wait_until("a write fails on the full disk", || {
        let body = support::tiny_pprof(&format!("{stored}_{filler}"), 1, support::now_nanos());
        let status = runtime.block_on(async {
            http.post(format!(
                "{url}/api/v1/ingest?label.service=filler&idempotency_key={stored}"
            ))
            .body(body)
            .send()
            .await
            .expect("ingest")
            .status()
        });
        stored += 1;
        (!status.is_success()).then_some(())
    });
    eprintln!("the first failed write was number {stored}");

    let (status, body) = wait_until("/healthz fails", || {
        let answer = get(&runtime, &url, "/healthz");
        (answer.0 != 200).then_some(answer)
    });
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stopped on this node after a storage failure"),
        "{body}"
    );
    assert!(body.contains("restart the node"), "{body}");
    assert!(body.contains("group"), "{body}");
    let (status, ready) = get(&runtime, &url, "/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("stopped on this node"), "{ready}");
    // A write to a stopped group is refused with the reason, without waiting out the proposal
    // deadline: no other node could take it.
    let (status, answer) = runtime.block_on(async {
        let body = support::tiny_pprof("after", 1, support::now_nanos());
        let response = http
            .post(format!(
                "{url}/api/v1/ingest?label.service=filler&idempotency_key=after"
            ))
            .body(body)
            .send()
            .await
            .expect("ingest");
        (response.status().as_u16(), response.text().await.expect("body"))
    });
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.contains("replica stopped after a storage failure"),
        "{answer}"
    );
    drop(node);
}
