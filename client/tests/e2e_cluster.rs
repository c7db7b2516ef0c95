//! Multi-process cluster tests: real `kiln-node` processes on loopback, real
//! faults (kill -9, SIGSTOP), real clients. Every wait has a deadline.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_client::{ConnectOptions, KilnClient, RoutingClient};
use kiln_proto::kiln::v1 as api;
use support::cluster::TestCluster;
use support::{metric, testdata, tiny_pprof, wait_until, write_request};

fn now_nanos() -> i64 {
    kiln_model::time::now_unix_nanos()
}

/// Acknowledged write tags, shared with the writer tasks.
type Acknowledged = Arc<Mutex<Vec<String>>>;

/// Writers that each send one tiny profile per write (a unique leaf function with
/// value 1) through a routing client, until `stop`.
fn spawn_writers(
    runtime: &tokio::runtime::Runtime,
    seed: &str,
    count: usize,
    acknowledged: &Acknowledged,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|writer| {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let seed = seed.to_string();
            runtime.spawn(async move {
                let client = RoutingClient::new(&seed, ConnectOptions::default()).expect("routing client");
                for round in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let tag = format!("w{writer}_{round}");
                    let request = write_request(
                        &format!("chaos-{tag}"),
                        &[("service", "chaos"), ("writer", &writer.to_string())],
                        tiny_pprof(&tag, 1, now_nanos()),
                    );
                    // A write that fails may or may not be stored; only an
                    // acknowledgement is a promise.
                    if client.write(request).await.is_ok() {
                        acknowledged.lock().expect("lock").push(tag);
                    }
                }
            })
        })
        .collect()
}

fn wait_for_acks(acknowledged: &Acknowledged, at_least: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let count = acknowledged.lock().expect("lock").len();
        if count >= at_least {
            return;
        }
        assert!(
            Instant::now() < until,
            "only {count} of {at_least} writes acknowledged within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `leaf_<tag>` -> flat value of every stored chaos write, as `address` answers.
fn stored_leaves(runtime: &tokio::runtime::Runtime, address: &str) -> BTreeMap<String, i64> {
    runtime.block_on(async {
        let client = KilnClient::connect(address).await.expect("connect");
        let response = client
            .merge(api::MergeRequest {
                selection: Some(api::Selection {
                    selector: "samples{service=\"chaos\"}".into(),
                    start_unix_ms: 0,
                    end_unix_ms: 4_102_444_800_000,
                }),
                format: api::MergeFormat::Top as i32,
                ..Default::default()
            })
            .await
            .expect("merge");
        let Some(api::merge_response::Result::Top(top)) = response.result else {
            panic!("no top table in {response:?}");
        };
        top.rows
            .into_iter()
            .filter_map(|row| {
                let name = row.frame?.function;
                name.strip_prefix("leaf_").map(|tag| (tag.to_string(), row.flat))
            })
            .collect()
    })
}

/// Every acknowledged write is stored, and no write is stored twice, on every node.
fn assert_exactly_once(runtime: &tokio::runtime::Runtime, cluster: &TestCluster, acknowledged: &[String]) {
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        let stored = stored_leaves(runtime, &node.address);
        for tag in acknowledged {
            assert_eq!(
                stored.get(tag),
                Some(&1),
                "node {}: acknowledged write {tag} lost or doubled",
                node.id
            );
        }
        for (tag, value) in &stored {
            assert_eq!(*value, 1, "node {}: write {tag} stored {value} times", node.id);
        }
    }
}

fn stop_writers(
    runtime: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<()>>,
) {
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        runtime.block_on(writer).expect("writer task");
    }
}

#[test]
fn kill9_of_a_group_leader_loses_no_acknowledged_write_and_doubles_none() {
    let mut cluster = TestCluster::start(3, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let victim = cluster.index_of(cluster.leader_of(1));
    let seed = (victim + 1) % cluster.nodes.len();
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&runtime, &cluster.nodes[seed].address, 4, &acknowledged, &stop);
    wait_for_acks(&acknowledged, 40, Duration::from_secs(60));
    cluster.nodes[victim].kill9();
    let before_restart = acknowledged.lock().expect("lock").len();
    // The surviving quorum keeps accepting writes, group 1 included (new leader).
    wait_for_acks(&acknowledged, before_restart + 60, Duration::from_secs(120));
    cluster.nodes[victim].restart();
    let after_restart = acknowledged.lock().expect("lock").len();
    wait_for_acks(&acknowledged, after_restart + 40, Duration::from_secs(120));
    stop_writers(&runtime, &stop, writers);
    cluster.wait_replicated(3, Duration::from_secs(180));
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert_exactly_once(&runtime, &cluster, &acknowledged);
}

/// A follower under its disk reserve appends whatever its leader sends until its disk is full, and
/// then openraft stops its replica. So a leader refuses writes while a voter of its group reports
/// its disk under the reserve (in its raft answers), naming that node, and accepts them again once
/// that node has stopped reporting: here, once it is dead and its last report is stale. The
/// cluster status says which node is short, and placement gives it no new replica.
#[test]
fn a_follower_under_its_disk_reserve_holds_back_writes_until_it_is_gone() {
    let mut cluster = TestCluster::start(3, &[]);
    // Restarted with a reserve no disk meets, as if its disk had filled: it rejoins its groups
    // (which hold a replica on every node) from its data directory, under its reserve.
    let short = 2;
    let short_id = cluster.nodes[short].id;
    cluster.nodes[short].stop();
    cluster.nodes[short].restart_with(&["--min-free-disk-bytes", "999999999999999"]);
    let status = cluster.wait_until(
        "the status to name the short node",
        Duration::from_secs(60),
        |status| {
            status
                .nodes
                .iter()
                .any(|node| node.id == short_id && node.disk_refusal.is_some())
        },
    );
    let other_refusals = status
        .nodes
        .iter()
        .filter(|node| node.id != short_id && node.disk_refusal.is_some())
        .count();
    assert_eq!(other_refusals, 0, "{status:#?}");
    let table = cluster.nodes[0].kiln_ok(&["cluster", "status"]);
    assert!(table.contains("under reserve"), "{table}");
    let cpu = testdata().join("pprof/go/cpu.pb.gz");
    let cpu = cpu.to_str().expect("utf-8");

    // Through a node with room: every group has a replica on the short node, so every write is
    // refused by its group's leader, wherever that is.
    // Reports arrive with the first heartbeat answers after an election.
    let refusal = wait_until(
        &format!("a write is refused for node {short_id}'s disk"),
        Duration::from_secs(60),
        || {
            let output = cluster.nodes[0].kiln(&["ingest", cpu, "--label", "phase=probe"]);
            (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).to_string())
        },
    );
    assert!(
        refusal.contains(&format!("node {short_id}'s data directory")),
        "{refusal}"
    );
    assert!(refusal.contains("--min-free-disk-bytes"), "{refusal}");
    // Refused for now, not failed: the CLI does not retry what a retry cannot fix.
    assert!(!refusal.contains("gave up after"), "{refusal}");
    let refused = cluster.nodes[1].kiln(&["ingest", cpu, "--label", "phase=refused"]);
    assert!(
        !refused.status.success(),
        "a write was accepted while node {short_id} is short"
    );

    // The short node dies: the other two are a quorum of every group, and the dead node's last
    // report goes stale, so writes are accepted again.
    cluster.nodes[short].kill9();
    wait_until(
        &format!("writes are accepted after node {short_id} died"),
        Duration::from_secs(90),
        || {
            let output = cluster.nodes[0].kiln(&["ingest", cpu, "--label", "phase=after"]);
            if !output.status.success() {
                eprintln!("still refused: {}", String::from_utf8_lossy(&output.stderr));
            }
            output.status.success().then_some(())
        },
    );
    let series = cluster.nodes[1].kiln_ok(&["series", "--from", "0"]);
    assert!(series.contains("phase=\"after\""), "{series}");
    assert!(
        !series.contains("phase=\"refused\""),
        "a refused write was stored: {series}"
    );
}

#[test]
fn sigstopped_leader_loses_nothing_and_acknowledges_nothing_stale() {
    let cluster = TestCluster::start(3, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let victim_id = cluster.leader_of(1);
    let victim = cluster.index_of(victim_id);
    let seed = (victim + 1) % cluster.nodes.len();
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&runtime, &cluster.nodes[seed].address, 4, &acknowledged, &stop);
    wait_for_acks(&acknowledged, 40, Duration::from_secs(60));
    cluster.nodes[victim].signal("STOP");
    // Longer than the election timeout: group 1 elects another leader.
    cluster.wait_until("a new leader of group 1", Duration::from_secs(60), |status| {
        status
            .groups
            .iter()
            .any(|group| group.group == 1 && group.leader != 0 && group.leader != victim_id)
    });
    let paused = acknowledged.lock().expect("lock").len();
    wait_for_acks(&acknowledged, paused + 60, Duration::from_secs(120));
    cluster.nodes[victim].signal("CONT");
    let resumed = acknowledged.lock().expect("lock").len();
    wait_for_acks(&acknowledged, resumed + 40, Duration::from_secs(120));
    stop_writers(&runtime, &stop, writers);
    cluster.wait_replicated(3, Duration::from_secs(180));
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert_exactly_once(&runtime, &cluster, &acknowledged);
}

/// What a user sees of the Go profiles, asked of one node.
fn view_of(node: &support::cluster::ClusterNode) -> Vec<String> {
    let far = ["--from", "0", "--to", "2100-01-01T00:00:00Z"];
    let mut answers = Vec::new();
    for selector in [
        "cpu{service=\"go\"}",
        "heap{service=\"go\"}",
        "goroutine{service=\"go\"}",
    ] {
        let mut args = vec!["query", selector, "--output", "top"];
        args.extend(far);
        answers.push(node.kiln_ok(&args));
    }
    let mut args = vec!["series", "--output", "json"];
    args.extend(far);
    answers.push(node.kiln_ok(&args));
    answers.push(node.kiln_ok(&["labels", "--from", "0"]));
    answers.push(node.kiln_ok(&["values", "file", "--from", "0"]));
    answers.push(node.kiln_ok(&["types", "--from", "0"]));
    answers
}

#[test]
fn joined_node_gets_replicas_by_snapshot_and_removed_node_is_replaced_first() {
    let mut cluster = TestCluster::start(3, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let go = testdata().join("pprof/go");
    let files: Vec<String> = ["cpu.pb.gz", "heap.pb.gz", "goroutine.pb.gz", "cpu-1.pb.gz"]
        .iter()
        .map(|file| go.join(file).display().to_string())
        .collect();
    let mut ingest = vec!["ingest", "--label", "service=go"];
    ingest.extend(files.iter().map(String::as_str));
    cluster.nodes[0].kiln_ok(&ingest);
    let before = view_of(&cluster.nodes[0]);
    for node in &cluster.nodes[1..] {
        assert_eq!(view_of(node), before, "node {} answers differently", node.id);
    }

    // A fourth node joins: replicas move to it, every group keeps 3.
    let fourth = cluster.add_node();
    let fourth_id = cluster.nodes[fourth].id;
    cluster.wait_until("replicas on the new node", Duration::from_secs(240), |status| {
        let data_groups: Vec<_> = status.groups.iter().filter(|group| !group.is_metadata).collect();
        let on_new = data_groups
            .iter()
            .filter(|group| group.voters.contains(&fourth_id))
            .count();
        on_new >= 1 && data_groups.iter().all(|group| group.voters.len() == 3)
    });
    cluster.wait_replicated(3, Duration::from_secs(240));
    assert!(
        metric(
            &runtime,
            &cluster.nodes[fourth].address,
            "kiln_raft_snapshot_installs_total"
        ) >= 1.0,
        "the new node caught up without installing a snapshot"
    );
    for node in &cluster.nodes {
        assert_eq!(
            view_of(node),
            before,
            "node {} answers differently after the join",
            node.id
        );
    }

    // Remove node 2: its replicas are re-created elsewhere before it leaves a group.
    let leaving = 1;
    let leaving_id = cluster.nodes[leaving].id;
    let watcher_stop = Arc::new(AtomicBool::new(false));
    // (fewest live voters seen in any data group, the status where that was seen)
    let fewest_live_voters = Arc::new(Mutex::new((usize::MAX, String::new())));
    let watcher = {
        let stop = watcher_stop.clone();
        let fewest = fewest_live_voters.clone();
        let address = cluster.nodes[0].address.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                    .args(["--server", &address, "cluster", "status", "--output", "json"])
                    .output()
                    .expect("kiln");
                let Ok(status) =
                    serde_json::from_slice::<kiln_model::json::ClusterStatusResult>(&output.stdout)
                else {
                    continue;
                };
                // Only statuses in which every node answered say who is live.
                if status
                    .nodes
                    .iter()
                    .any(|node| node.state != "removed" && !node.reachable)
                {
                    continue;
                }
                // A group between leaders (an election) has no configuration to
                // judge; the next poll sees the new leader's.
                for group in status
                    .groups
                    .iter()
                    .filter(|group| !group.is_metadata && group.leader != 0)
                {
                    // A voter of the leader's configuration whose replica exists and
                    // answered (a replica just promoted may still call itself a
                    // learner until it applies the new configuration), bounded by the
                    // configuration's size: the old replica must not leave before the
                    // new one is in.
                    let live = group
                        .replicas
                        .iter()
                        .filter(|replica| {
                            group.raft_voters.contains(&replica.node_id) && replica.role != "candidate"
                        })
                        .count()
                        .min(group.raft_voters.len());
                    let mut fewest = fewest.lock().expect("lock");
                    if live < fewest.0 {
                        *fewest = (live, format!("{status:#?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    cluster.nodes[0].kiln_ok(&[
        "cluster",
        "remove-node",
        &leaving_id.to_string(),
        "--wait",
        "--timeout",
        "5m",
    ]);
    watcher_stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let status = cluster.wait_replicated(3, Duration::from_secs(240));
    let (fewest, seen_in) = fewest_live_voters.lock().expect("lock").clone();
    assert!(
        fewest >= 3,
        "a group dropped to {fewest} live voters during the removal: {seen_in}"
    );
    assert!(status
        .groups
        .iter()
        .all(|group| !group.voters.contains(&leaving_id)));
    assert_eq!(
        status
            .nodes
            .iter()
            .find(|node| node.id == leaving_id)
            .map(|node| node.state.as_str()),
        Some("removed")
    );
    cluster.nodes[leaving].stop();
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        assert_eq!(
            view_of(node),
            before,
            "node {} answers differently after the removal",
            node.id
        );
    }
}
