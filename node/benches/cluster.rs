//! The cluster benchmark: ingest and merge against real `kiln-node` processes on
//! loopback, as ratios measured in one run.
//!
//! ```text
//! cargo bench -p kiln-node --bench cluster                      # the run of record
//! KILN_BENCH_QUICK=1 cargo bench -p kiln-node --bench cluster   # sanity run
//! ```
//!
//! Three deployments get the same generated fleet (see `support/generator.rs`), one
//! after the other, each on fresh data directories:
//! - **1 node, 1 group**: the core issue's single node (one shard group, so no
//!   fan-out; its writes now also go through a one-voter raft log);
//! - **1 node, 8 groups**: the default single node (8 local groups, local fan-out);
//! - **3 nodes, RF=3, 8 groups**: the cluster, every write on a quorum of synced logs.
//!
//! For each: the profiles are sent by several concurrent clients through the
//! routing client (`kiln_client::RoutingClient`, as the CLI and agent do), and the
//! acknowledged stack-samples per second are measured, after an untimed warm-up of the
//! fleet's first minutes (5 in the full run, 3 in the quick one; `KILN_BENCH_WARMUP_MINUTES`),
//! whose own rate is reported separately. Each deployment then waits until its nodes are idle
//! again (flushes and compactions done) and stays up, idle, while the next ones ingest. Last, the
//! merge of `support::workload::merge_request` is timed through gRPC on all deployments
//! interleaved (one untimed first run each, then rounds that ask each deployment once in a
//! rotating order; the median per deployment). All processes share this machine's cores, so the
//! ratios are what matters. Overrides: `KILN_BENCH_SERIES`, `KILN_BENCH_MINUTES`,
//! `KILN_BENCH_CLIENTS`, `KILN_BENCH_BATCH`, `KILN_BENCH_DIR`, `KILN_BENCH_CLUSTER_GROUPS`
//! (groups of the 3-node deployment), `KILN_BENCH_MERGE_ROUNDS` (timed merge rounds), `KILN_BENCH_ONLY` (only the
//! deployments of that many nodes; the ratios then compare with the first one run). Without `--bench`
//! (as `cargo test --all-targets` runs it) it does a few-second smoke run.

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_client::{ConnectOptions, KilnClient, RoutingClient};
use kiln_proto::kiln::v1 as api;

use support::generator::{generate_profiles, Fleet, FleetSpec};
use support::report::{self, count, millis, rate, Table};
use support::workload::{build_requests, merge_request, Totals};

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

/// A running `kiln-node`.
struct NodeProcess {
    child: Child,
    address: String,
}

impl NodeProcess {
    fn start(binary: &Path, data_dir: &Path, listen: &str, extra: &[String]) -> NodeProcess {
        let mut child = Command::new(binary)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra)
            .env("KILN_LOG", "warn,openraft=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kiln-node");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        let address = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("kiln-node did not start within 120 s");
        NodeProcess { child, address }
    }

    /// User + system CPU seconds the process used so far.
    fn cpu_seconds(&self) -> f64 {
        report::pid_cpu(self.child.id()).seconds
    }
}

/// Waits until the nodes' flushes and compactions of the ingest are done: their CPU over
/// a 500 ms window under 5% of one core, for at most 120 s. So that the merge is timed
/// against the data, not against the background work the ingest left behind (three
/// nodes leave three times as much of it). Returns how long that took.
fn wait_until_idle(processes: &[NodeProcess]) -> Duration {
    const WINDOW: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let cpu = || processes.iter().map(NodeProcess::cpu_seconds).sum::<f64>();
    let mut before = cpu();
    while Instant::now() < deadline {
        std::thread::sleep(WINDOW);
        let now = cpu();
        if now - before < 0.05 * WINDOW.as_secs_f64() {
            return started.elapsed();
        }
        before = now;
    }
    eprintln!("the nodes did not go idle within 120 s; timing the merge anyway");
    started.elapsed()
}

/// Seconds since boot (`/proc/uptime`, CLOCK_BOOTTIME, 10 ms resolution); 0 when unreadable.
fn boot_seconds() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|uptime| uptime.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// Starts `nodes` processes (the first bootstraps, the others join it) with
/// `groups` data groups and waits until every group has `min(3, nodes)` voters,
/// caught up, with leaders spread.
fn start_deployment(binary: &Path, parent: &Path, nodes: usize, groups: u32) -> Vec<NodeProcess> {
    let mut processes: Vec<NodeProcess> = Vec::new();
    for index in 0..nodes {
        // The fleet's samples are stamped from a fixed date in 2025, outside the default
        // retention (7 d): the retention pass that starts with each node would delete
        // whatever of them it found stored, and it runs concurrently with the first writes.
        let mut flags = vec![
            "--groups".to_string(),
            groups.to_string(),
            "--retention".to_string(),
            "36500d".to_string(),
        ];
        if let Some(first) = processes.first() {
            flags.extend(["--join".to_string(), first.address.clone()]);
        }
        let directory = parent.join(format!("node{index}"));
        processes.push(NodeProcess::start(binary, &directory, &free_address(), &flags));
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _inside = runtime.enter();
    let client = KilnClient::connect_lazy(&processes[0].address, ConnectOptions::default()).expect("client");
    let replicas = nodes.min(3);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(status) = runtime.block_on(client.cluster_status()) {
            let data: Vec<&api::GroupStatus> =
                status.groups.iter().filter(|group| !group.is_metadata).collect();
            let replicated = data.len() == groups as usize
                && data.iter().all(|group| {
                    group.leader != 0
                        && group.raft_voters.len() == replicas
                        && group.replicas.iter().all(|replica| replica.lag == 0)
                });
            // Wait for the reconciler to finish spreading leaders (it moves one while
            // a node leads two more groups than another), so that no leadership
            // move, and the election it takes, happens during the measurement.
            let mut leading = vec![0usize; nodes];
            for group in &data {
                if let Some(slot) = (group.leader as usize)
                    .checked_sub(1)
                    .and_then(|index| leading.get_mut(index))
                {
                    *slot += 1;
                }
            }
            let busiest = leading.iter().max().copied().unwrap_or(0);
            let idlest = leading.iter().min().copied().unwrap_or(0);
            let spread = busiest <= idlest + 1;
            if replicated && spread {
                return processes;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the deployment did not settle within 300 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What one deployment's ingest measured.
struct Ingest {
    /// Wall time, acknowledged stack-samples and node CPU of the warm-up (zero when none).
    warm_up_wall: Duration,
    warm_up_samples: u64,
    warm_up_node_cpu_seconds: f64,
    /// The same for the timed part.
    wall: Duration,
    samples: u64,
    /// Profiles acknowledged, warm-up included.
    profiles: u64,
    node_cpu_seconds: f64,
    client_cpu_seconds: f64,
}

/// What the interleaved merges measured on one deployment.
struct Merges {
    first: Duration,
    median: Duration,
    total: i64,
    /// The totals of the timed merges after the first (all equal to `total` unless the
    /// answer changed after the writes were acknowledged).
    later_totals: Vec<i64>,
    /// Every (series labels, 10 s bucket) -> value of the merge's profile type over the
    /// whole fleet: where two deployments differ, this says which profiles.
    points: std::collections::BTreeMap<String, i64>,
    disk_bytes: u64,
}

/// Everything measured on one deployment.
struct Measured {
    ingest: Ingest,
    merges: Merges,
}

/// What every deployment is given.
struct Workload<'a> {
    requests: &'a [api::WriteRequest],
    /// How many of the first `requests` are sent before the timer starts.
    warm_up_requests: usize,
    clients: usize,
}

/// Sends `requests` from `clients` concurrent routing clients (seeded round-robin over
/// `seeds`) and returns each client's acknowledged (profiles, samples).
async fn send_requests(seeds: &[String], clients: usize, requests: &[api::WriteRequest]) -> Vec<(u64, u64)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(requests.to_vec())));
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|index| {
            let queue = queue.clone();
            // Clients spread their seed over the nodes, as agents of a fleet would.
            let seed = seeds[index % seeds.len()].clone();
            tokio::spawn(async move {
                let client = RoutingClient::new(&seed, ConnectOptions::default()).expect("routing client");
                let (mut profiles, mut samples) = (0u64, 0u64);
                loop {
                    let Some(request) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let key = request.idempotency_key.clone();
                    let response = client
                        .write(request)
                        .await
                        .unwrap_or_else(|error| panic!("write {key} failed: {error}"));
                    assert!(!response.duplicate, "write {key} was taken for a duplicate");
                    profiles += response.profiles;
                    samples += response.samples;
                }
                (profiles, samples)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("client task"));
    }
    outcomes
}

/// One value per (series, 10 s bucket) of the merged profile type, over every zone.
fn series_points(
    runtime: &tokio::runtime::Runtime,
    client: &KilnClient,
    merge: &api::MergeRequest,
) -> std::collections::BTreeMap<String, i64> {
    let mut selection = merge.selection.clone().expect("merge selection");
    if let Some(open) = selection.selector.find('{') {
        selection.selector.truncate(open);
    }
    let request = api::RangeRequest {
        selection: Some(selection),
        step_ms: 10_000,
        ..Default::default()
    };
    let response = runtime.block_on(client.range(request)).expect("range");
    let mut points = std::collections::BTreeMap::new();
    for series in response.series {
        let labels: Vec<String> = series
            .labels
            .iter()
            .map(|label| format!("{}={}", label.name, label.value))
            .collect();
        for point in series.points {
            points.insert(
                format!("{} @{}", labels.join(","), point.timestamp_ms),
                point.value,
            );
        }
    }
    points
}

/// One deployment to measure: its name, node count, data groups and `kiln-node` binary.
struct Topology {
    name: String,
    nodes: usize,
    groups: u32,
    binary: PathBuf,
}

fn run_deployment(topology: &Topology, parent: &Path, workload: &Workload) -> Deployment {
    let name = topology.name.as_str();
    let directory = parent.join(name.replace([' ', ',', '[', ']'], "-"));
    let processes = start_deployment(&topology.binary, &directory, topology.nodes, topology.groups);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seeds: Vec<String> = processes.iter().map(|process| process.address.clone()).collect();
    let Workload {
        requests,
        warm_up_requests,
        clients,
    } = *workload;
    // Untimed warm-up: the first requests, sent the same way, so that the timed part
    // measures a deployment that already stores the fleet's symbols and series.
    let (warm_up, timed_requests) = requests.split_at(warm_up_requests.min(requests.len()));
    let warm_up_cpu_before: f64 = processes.iter().map(NodeProcess::cpu_seconds).sum();
    let warm_up_started = Instant::now();
    let warm_up_outcomes = runtime.block_on(send_requests(&seeds, clients, warm_up));
    let warm_up_wall = warm_up_started.elapsed();
    let cpu_before: f64 = processes.iter().map(NodeProcess::cpu_seconds).sum();
    let client_cpu_before = report::process_cpu().seconds;
    let started = Instant::now();
    let timed_from = boot_seconds();
    let outcomes = runtime.block_on(send_requests(&seeds, clients, timed_requests));
    let wall = started.elapsed();
    // For `perf record -k CLOCK_BOOTTIME` then `perf report --time FROM,TO`: the timed
    // part alone.
    eprintln!(
        "{name}: timed part in boot-clock seconds {timed_from:.2},{:.2}",
        boot_seconds()
    );
    let node_cpu_seconds = processes.iter().map(NodeProcess::cpu_seconds).sum::<f64>() - cpu_before;
    let client_cpu_seconds = report::process_cpu().seconds - client_cpu_before;
    let settled_after = wait_until_idle(&processes);
    eprintln!(
        "{name}: nodes idle {} ms after the last acknowledgement",
        settled_after.as_millis()
    );
    let ingest = Ingest {
        warm_up_wall,
        warm_up_samples: warm_up_outcomes.iter().map(|(_, samples)| samples).sum(),
        warm_up_node_cpu_seconds: cpu_before - warm_up_cpu_before,
        wall,
        samples: outcomes.iter().map(|(_, samples)| samples).sum(),
        profiles: outcomes
            .iter()
            .chain(&warm_up_outcomes)
            .map(|(profiles, _)| profiles)
            .sum(),
        node_cpu_seconds,
        client_cpu_seconds,
    };
    Deployment {
        ingest,
        processes,
        directory,
        runtime,
    }
}

/// A deployment whose ingest is done: its nodes stay up until every deployment's merges are timed.
struct Deployment {
    ingest: Ingest,
    processes: Vec<NodeProcess>,
    directory: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// Times `merge` on every deployment, interleaved: one untimed first run each, then `runs` rounds
/// that ask each deployment once, in an order that rotates every round. Why interleaved: the same
/// merge on the same data moved by up to 2x between runs minutes apart on this VM, so timing one
/// deployment after the other measured the VM's drift as much as the fan-out. Also reads each
/// deployment's per-series points and disk bytes. Answers in the order of `deployments`.
fn time_merges(deployments: &[(&str, Deployment)], merge: &api::MergeRequest, runs: usize) -> Vec<Merges> {
    let clients: Vec<KilnClient> = deployments
        .iter()
        .map(|(_, deployment)| {
            let _inside = deployment.runtime.enter();
            KilnClient::connect_lazy(&deployment.processes[0].address, ConnectOptions::default())
                .expect("client")
        })
        .collect();
    let timed = |index: usize| {
        let started = Instant::now();
        let response = deployments[index]
            .1
            .runtime
            .block_on(clients[index].merge(merge.clone()))
            .expect("merge");
        (started.elapsed(), response.total)
    };
    let mut merges: Vec<Merges> = (0..deployments.len())
        .map(|index| {
            let deployment = &deployments[index].1;
            let points = series_points(&deployment.runtime, &clients[index], merge);
            let (first, total) = timed(index);
            Merges {
                first,
                median: Duration::ZERO,
                total,
                later_totals: Vec::new(),
                points,
                disk_bytes: report::dir_bytes(&deployment.directory).unwrap_or(0),
            }
        })
        .collect();
    let mut durations: Vec<Vec<Duration>> = vec![Vec::new(); deployments.len()];
    for round in 0..runs.max(1) {
        for offset in 0..deployments.len() {
            let index = (round + offset) % deployments.len();
            let (took, total) = timed(index);
            durations[index].push(took);
            merges[index].later_totals.push(total);
        }
    }
    for (merges, mut runs) in merges.iter_mut().zip(durations) {
        runs.sort();
        merges.median = runs[runs.len() / 2];
    }
    merges
}

/// The warm-up's own rates, and the whole run's (warm-up and timed part together), so
/// that the cold start the timed table leaves out is still reported.
fn print_warm_up_table(results: &[(&str, Measured)], warm_up_minutes: u64) {
    let warm_up_rate = |measured: &Measured| {
        measured.ingest.warm_up_samples as f64 / measured.ingest.warm_up_wall.as_secs_f64()
    };
    let whole_rate = |measured: &Measured| {
        (measured.ingest.warm_up_samples + measured.ingest.samples) as f64
            / (measured.ingest.warm_up_wall + measured.ingest.wall).as_secs_f64()
    };
    let (warm_up_baseline, whole_baseline) = (warm_up_rate(&results[0].1), whole_rate(&results[0].1));
    let mut table = Table::new(
        &format!("Ingest of the untimed warm-up (first {warm_up_minutes} min) and of the whole run"),
        &[
            "deployment",
            "warm-up wall",
            "warm-up stack-samples/s",
            "warm-up vs 1 node, 1 group",
            "warm-up node CPU s",
            "whole run stack-samples/s",
            "whole run vs 1 node, 1 group",
        ],
    );
    for (name, measured) in results {
        table.row(&[
            name.to_string(),
            millis(measured.ingest.warm_up_wall),
            rate(warm_up_rate(measured)),
            format!("{:.2}", warm_up_rate(measured) / warm_up_baseline),
            format!("{:.1}", measured.ingest.warm_up_node_cpu_seconds),
            rate(whole_rate(measured)),
            format!("{:.2}", whole_rate(measured) / whole_baseline),
        ]);
    }
    table.print();
}

fn main() {
    let bench = std::env::args().any(|argument| argument == "--bench");
    let quick = std::env::var("KILN_BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0");
    let (series, minutes, merge_runs) = match (bench, quick) {
        (false, _) => (6, 2, 1),
        (true, true) => (30, 10, 5),
        (true, false) => (60, 20, 15),
    };
    let spec = FleetSpec {
        seed: 20250602,
        services: 6,
        series: env_number("KILN_BENCH_SERIES").unwrap_or(series),
        zones: 3,
        functions: if bench { 3000 } else { 600 },
        stacks_per_service: if bench { 1500 } else { 150 },
        duration_secs: env_number::<u64>("KILN_BENCH_MINUTES").unwrap_or(minutes) * 60,
        interval_secs: 10,
        start_unix_nanos: 1_748_855_850i64 * 1_000_000_000,
        zipf_exponent: 1.1,
        cores: (0.25, 2.0),
    };
    let clients: usize = env_number("KILN_BENCH_CLIENTS").unwrap_or(4);
    let batch: usize = env_number("KILN_BENCH_BATCH").unwrap_or(8);
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    println!(
        "# Kiln cluster benchmark ({})",
        if bench {
            if quick {
                "quick"
            } else {
                "full"
            }
        } else {
            "smoke"
        }
    );
    println!();
    println!("- machine: {}", report::machine());
    let fleet = Fleet::generate(spec.clone());
    let profiles = generate_profiles(&fleet, threads);
    let (requests, metas) = build_requests(&fleet, profiles, batch);
    let totals = Totals::of(&metas);
    // KILN_BENCH_WARMUP_MINUTES=W sends the first W minutes of the fleet's data untimed. Every tick
    // starts a new request, so a tick is exactly ceil(series / batch) requests.
    // Why a warm-up by default: the first minutes are when each group first stores each service's
    // symbols and stacks, a cost that a long-running deployment pays once (and again per new binary),
    // so the timed part measures the rate a deployment sustains. The warm-up's own rate is printed too.
    let default_warm_up_minutes = match (bench, quick) {
        (false, _) => 0,
        (true, true) => 3,
        (true, false) => 5,
    };
    let warm_up_minutes: u64 = env_number("KILN_BENCH_WARMUP_MINUTES").unwrap_or(default_warm_up_minutes);
    let requests_per_tick = spec.series.div_ceil(batch.max(1));
    let warm_up_ticks = (warm_up_minutes * 60 / spec.interval_secs) as usize;
    let warm_up_requests = (warm_up_ticks * requests_per_tick).min(requests.len());
    println!(
        "- workload: {} series x {} min every {} s = {} pprofs, {} stack-samples, in {} requests of <= {batch}; {clients} concurrent clients",
        spec.series,
        spec.duration_secs / 60,
        spec.interval_secs,
        count(totals.profiles),
        count(totals.samples),
        count(requests.len() as u64)
    );
    if warm_up_requests > 0 {
        println!(
            "- warm-up: the first {warm_up_minutes} min ({} requests) are sent untimed; rates count the rest",
            count(warm_up_requests as u64)
        );
    }
    println!();
    let parent = match std::env::var_os("KILN_BENCH_DIR").map(PathBuf::from) {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let merge = merge_request(&spec);
    // KILN_BENCH_CLUSTER_GROUPS=N gives the 3-node deployment N groups instead of 8 (to see what the
    // per-group costs are).
    let cluster_groups: u32 = env_number("KILN_BENCH_CLUSTER_GROUPS").unwrap_or(8);
    let cluster_name = format!("3 nodes RF=3, {cluster_groups} groups");
    // KILN_BENCH_NODE_BINARIES=A,B runs every deployment with build A, then with build B, so
    // that two builds are compared in one run (this VM drifts between runs).
    let binaries: Vec<(String, PathBuf)> = match std::env::var("KILN_BENCH_NODE_BINARIES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .zip(["A", "B", "C", "D"])
            .map(|(path, tag)| (format!(" [{tag}]"), PathBuf::from(path.trim())))
            .collect(),
        _ => vec![(String::new(), PathBuf::from(env!("CARGO_BIN_EXE_kiln-node")))],
    };
    for (tag, binary) in &binaries {
        println!("- node binary{tag}: {}", binary.display());
    }
    // KILN_BENCH_ONLY=3 runs only the deployments with that many nodes (profiling).
    let only: Option<usize> = env_number("KILN_BENCH_ONLY");
    let topologies: Vec<Topology> = [
        ("1 node, 1 group", 1, 1),
        ("1 node, 8 groups", 1, 8),
        (cluster_name.as_str(), 3, cluster_groups),
    ]
    .into_iter()
    .filter(|(_, nodes, _)| only.is_none_or(|only| only == *nodes))
    .flat_map(|(name, nodes, groups)| {
        binaries.iter().map(move |(tag, binary)| Topology {
            name: format!("{name}{tag}"),
            nodes,
            groups,
            binary: binary.clone(),
        })
    })
    .collect();
    let mut alive: Vec<(&str, Deployment)> = Vec::new();
    for topology in &topologies {
        let name = topology.name.as_str();
        let workload = Workload {
            requests: &requests,
            warm_up_requests,
            clients,
        };
        // The deployments done so far stay up (idle) for the interleaved merges: say what they cost.
        let idle_cpu = || -> f64 {
            alive
                .iter()
                .flat_map(|(_, deployment)| &deployment.processes)
                .map(NodeProcess::cpu_seconds)
                .sum()
        };
        let idle_before = idle_cpu();
        let deployment = run_deployment(topology, parent.path(), &workload);
        if !alive.is_empty() {
            eprintln!(
                "{name}: the idle earlier deployments used {:.2} CPU-s during its ingest",
                idle_cpu() - idle_before
            );
        }
        assert_eq!(
            deployment.ingest.profiles, totals.profiles,
            "{name}: not every profile was acknowledged"
        );
        alive.push((name, deployment));
    }
    let merge_runs: usize = env_number("KILN_BENCH_MERGE_ROUNDS").unwrap_or(merge_runs);
    let merges = time_merges(&alive, &merge, merge_runs);
    let mut results = Vec::new();
    for ((name, deployment), merges) in alive.into_iter().zip(merges) {
        let Deployment {
            ingest,
            processes,
            directory,
            runtime,
        } = deployment;
        drop(processes);
        drop(runtime);
        let _ = std::fs::remove_dir_all(&directory);
        results.push((name, Measured { ingest, merges }));
    }
    let baseline_rate = results[0].1.ingest.samples as f64 / results[0].1.ingest.wall.as_secs_f64();
    let baseline_merge = results[0].1.merges.median.as_secs_f64();
    let mut table = Table::new(
        if warm_up_requests > 0 {
            "Ingest after the warm-up (sustained), and merge, per deployment (same run, same workload)"
        } else {
            "Ingest and merge per deployment (same run, same workload)"
        },
        &[
            "deployment",
            "wall",
            "stack-samples/s",
            "vs 1 node, 1 group",
            "node CPU s",
            "client CPU s",
            "merge first",
            "merge median",
            "merge vs 1 group",
            "disk (all nodes)",
        ],
    );
    for (name, measured) in &results {
        let samples_rate = measured.ingest.samples as f64 / measured.ingest.wall.as_secs_f64();
        table.row(&[
            name.to_string(),
            millis(measured.ingest.wall),
            rate(samples_rate),
            format!("{:.2}", samples_rate / baseline_rate),
            format!("{:.1}", measured.ingest.node_cpu_seconds),
            format!("{:.1}", measured.ingest.client_cpu_seconds),
            millis(measured.merges.first),
            millis(measured.merges.median),
            format!("{:.2}", measured.merges.median.as_secs_f64() / baseline_merge),
            report::bytes(measured.merges.disk_bytes),
        ]);
    }
    table.print();
    if warm_up_requests > 0 {
        print_warm_up_table(&results, warm_up_minutes);
    }
    // Every deployment must answer the same merge, every time.
    for (name, measured) in &results {
        assert!(
            measured
                .merges
                .later_totals
                .iter()
                .all(|total| *total == measured.merges.total),
            "{name}: the first merge after the acknowledged writes answered {}, later ones {:?}",
            measured.merges.total,
            measured.merges.later_totals
        );
    }
    for (name, measured) in &results[1..] {
        let baseline = &results[0].1.merges.points;
        let differing: Vec<String> = baseline
            .iter()
            .filter(|(key, value)| measured.merges.points.get(*key) != Some(value))
            .map(|(key, value)| format!("{key}: {value} vs {:?}", measured.merges.points.get(key)))
            .chain(
                measured
                    .merges
                    .points
                    .keys()
                    .filter(|key| !baseline.contains_key(*key))
                    .map(|key| format!("{key}: only in {name}")),
            )
            .collect();
        for line in differing.iter().take(50) {
            eprintln!("{name} differs from {}: {line}", results[0].0);
        }
        assert_eq!(
            measured.merges.total, results[0].1.merges.total,
            "{name} merged a different total than the single group"
        );
    }
    println!(
        "merge totals agree across deployments: {}",
        results[0].1.merges.total
    );
}
