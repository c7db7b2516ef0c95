//! The fleet benchmark of a Kiln node: ingest throughput with the synced WAL, merge
//! latency, and bytes on disk against gzipped pprof.
//!
//! ```text
//! cargo bench -p kiln-node --bench fleet                      # full run (minutes)
//! KILN_BENCH_QUICK=1 cargo bench -p kiln-node --bench fleet   # sanity run (< 1 min)
//! ```
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it does a tiny smoke
//! run in a few seconds. Optional overrides: `KILN_BENCH_SERIES`, `KILN_BENCH_MINUTES`,
//! `KILN_BENCH_WRITERS`, `KILN_BENCH_BATCH`, `KILN_BENCH_SEED`, `KILN_BENCH_STACKS` (unique
//! stacks per service), `KILN_BENCH_ZIPF` (popularity exponent), `KILN_BENCH_DIR` (where
//! the temporary data directory is made; it must be a real disk for fsync to mean
//! anything), `KILN_BENCH_PPROF_DIR` (adds a table timing `prepare_write` on the real
//! `.pb.gz` files of a directory). The results and their analysis are in
//! `BENCHMARKS.md` at the repository root.
//!
//! Phases, in order:
//! 1. generate the fleet (see `support/generator.rs`); not timed as ingest;
//! 2. ingest every profile through `kiln_node::server::grpc::write` (the gRPC
//!    handler's own path: pprof decode and validation on the blocking pool, then the
//!    writer thread's group commit with a synced WAL) from several concurrent
//!    writer tasks, each sending a few profiles per `WriteRequest`;
//! 3. flush, measure SST bytes; reopen the node (empty caches) and time merges of
//!    one zone (a third of the series) over the whole simulated range;
//! 4. compact fully, measure again, time the merges again;
//! 5. time the ingest and merge phases one by one, single-threaded, to see what
//!    dominates;
//! 6. check that every profile was acknowledged and that the merges' totals and
//!    counts equal what was generated (a failed check exits non-zero).

mod support;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_node::storage::keys;
use kiln_node::{LocalGroup, NodeConfig, LOCAL_GROUP};
use kiln_proto::kiln::v1 as api;
use prost::Message;

use support::generator::{generate_profiles, Fleet, FleetSpec};
use support::report::{self, bytes, count, millis, percentile, rate, Table};
use support::workload::{build_requests, merge_request, ProfileMeta, Totals};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The benchmark of record.
    Full,
    /// A sanity run in well under a minute.
    Quick,
    /// A few seconds, for `cargo test`.
    Smoke,
}

/// Everything a run needs to know.
struct Settings {
    mode: Mode,
    spec: FleetSpec,
    writers: usize,
    batch: usize,
    merge_runs: usize,
    phase_profiles: usize,
    data_parent: Option<PathBuf>,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

impl Settings {
    fn from_env() -> Settings {
        let bench = std::env::args().any(|argument| argument == "--bench");
        let quick = std::env::var("KILN_BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0");
        let mode = match (bench, quick) {
            (false, _) => Mode::Smoke,
            (true, true) => Mode::Quick,
            (true, false) => Mode::Full,
        };
        // 2025-06-02T09:17:30Z: not aligned to the hour, so "1 h" spans two partitions
        // as a "last hour" query does.
        let start_unix_nanos = 1_748_855_850i64 * 1_000_000_000;
        let (series, minutes, functions, stacks_per_service, merge_runs, phase_profiles) = match mode {
            Mode::Full => (300, 60, 3000, 1500, 10, 3000),
            Mode::Quick => (60, 15, 3000, 1500, 5, 600),
            Mode::Smoke => (6, 2, 600, 150, 2, 12),
        };
        let spec = FleetSpec {
            seed: env_number("KILN_BENCH_SEED").unwrap_or(20250602),
            services: 6,
            series: env_number("KILN_BENCH_SERIES").unwrap_or(series),
            zones: 3,
            functions,
            stacks_per_service: env_number("KILN_BENCH_STACKS").unwrap_or(stacks_per_service),
            duration_secs: env_number::<u64>("KILN_BENCH_MINUTES").unwrap_or(minutes) * 60,
            interval_secs: 10,
            start_unix_nanos,
            zipf_exponent: env_number("KILN_BENCH_ZIPF").unwrap_or(1.1),
            cores: (0.25, 2.0),
        };
        Settings {
            mode,
            spec,
            writers: env_number("KILN_BENCH_WRITERS").unwrap_or(4),
            batch: env_number("KILN_BENCH_BATCH").unwrap_or(8),
            merge_runs,
            phase_profiles,
            data_parent: std::env::var_os("KILN_BENCH_DIR").map(PathBuf::from),
        }
    }
}

/// What the ingest phase measured.
struct IngestResult {
    wall: Duration,
    latencies: Vec<Duration>,
    acknowledged_profiles: u64,
    acknowledged_samples: u64,
    cpu_groups: Vec<(&'static str, f64)>,
    process_cpu_seconds: f64,
    machine_cpu_seconds: f64,
    commits: f64,
    commit_seconds: f64,
    requests_per_commit: f64,
}

/// Sends every request through the gRPC handler's write path from `writers`
/// concurrent tasks.
fn ingest(state: &Arc<LocalGroup>, requests: Vec<api::WriteRequest>, writers: usize) -> IngestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let queue = Arc::new(Mutex::new(VecDeque::from(requests)));
    let threads_before = report::thread_cpu();
    let process_before = report::process_cpu();
    let machine_before = report::machine_busy_cpu();
    let metrics_before = state.metrics.render();
    let started = Instant::now();
    let outcomes: Vec<(Vec<Duration>, u64, u64)> = runtime.block_on(async {
        let tasks: Vec<_> = (0..writers.max(1))
            .map(|_| {
                let state = state.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let (mut profiles, mut samples) = (0u64, 0u64);
                    loop {
                        let Some(request) = queue.lock().expect("request queue lock").pop_front() else {
                            break;
                        };
                        let key = request.idempotency_key.clone();
                        let sent = Instant::now();
                        let response = state
                            .write(request)
                            .await
                            .unwrap_or_else(|error| panic!("write {key} failed: {error}"));
                        latencies.push(sent.elapsed());
                        assert!(!response.duplicate, "write {key} was taken for a duplicate");
                        profiles += response.profiles;
                        samples += response.samples;
                    }
                    (latencies, profiles, samples)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("a writer task panicked"));
        }
        outcomes
    });
    let wall = started.elapsed();
    let threads_after = report::thread_cpu();
    let process_cpu_seconds = report::process_cpu().seconds - process_before.seconds;
    let machine_cpu_seconds = report::machine_busy_cpu().seconds - machine_before.seconds;
    let metrics_after = state.metrics.render();
    drop(runtime);
    let delta = |name: &str| {
        report::metric(&metrics_after, name).unwrap_or(0.0)
            - report::metric(&metrics_before, name).unwrap_or(0.0)
    };
    let commits = delta("kiln_commit_seconds_count");
    IngestResult {
        wall,
        latencies: outcomes
            .iter()
            .flat_map(|(latencies, _, _)| latencies.iter().copied())
            .collect(),
        acknowledged_profiles: outcomes.iter().map(|(_, profiles, _)| profiles).sum(),
        acknowledged_samples: outcomes.iter().map(|(_, _, samples)| samples).sum(),
        cpu_groups: report::cpu_by_group(&threads_before, &threads_after),
        process_cpu_seconds,
        machine_cpu_seconds,
        commits,
        commit_seconds: delta("kiln_commit_seconds_sum"),
        requests_per_commit: if commits > 0.0 {
            delta("kiln_commit_batch_size_sum") / commits
        } else {
            0.0
        },
    }
}

/// SST bytes per column family, and their sum.
fn sst_bytes(state: &LocalGroup) -> Vec<(&'static str, u64)> {
    keys::COLUMN_FAMILIES
        .iter()
        .map(|name| {
            let handle = state.storage.cf(name).expect("column family exists");
            let size = state
                .storage
                .db()
                .property_int_value_cf(handle, "rocksdb.total-sst-files-size")
                .expect("SST size property")
                .unwrap_or(0);
            (*name, size)
        })
        .collect()
}

/// What a series of merges measured.
struct MergeResult {
    first: Duration,
    runs: Vec<Duration>,
    response: api::MergeResponse,
}

fn time_merges(state: &LocalGroup, request: &api::MergeRequest, runs: usize) -> MergeResult {
    let started = Instant::now();
    let response = state.engine.merge(request).expect("merge failed");
    let first = started.elapsed();
    let runs = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let answer = state.engine.merge(request).expect("merge failed");
            std::hint::black_box(answer);
            started.elapsed()
        })
        .collect();
    MergeResult {
        first,
        runs,
        response,
    }
}

/// Checks a merge answer against what the generator put in; returns problems.
fn check_merge(response: &api::MergeResponse, expected: &Totals, expected_series: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let expected_total = expected.ticks as i64 * support::generator::PERIOD_NANOS;
    if response.total != expected_total {
        problems.push(format!(
            "merge total {} != generated {expected_total}",
            response.total
        ));
    }
    if response.profiles != expected.profiles {
        problems.push(format!(
            "merge read {} profiles, {} were generated",
            response.profiles, expected.profiles
        ));
    }
    if response.series != expected_series {
        problems.push(format!(
            "merge saw {} series, {expected_series} were generated",
            response.series
        ));
    }
    problems
}

fn tree_nodes(response: &api::MergeResponse) -> usize {
    match &response.result {
        Some(api::merge_response::Result::Tree(tree)) => tree.nodes.len(),
        _ => 0,
    }
}

fn per_second(amount: f64, elapsed: Duration) -> f64 {
    amount / elapsed.as_secs_f64().max(1e-9)
}

/// Times the CPU-heavy steps of ingest one by one, single-threaded.
fn ingest_phases(sample: &[api::WriteRequest], samples_in_sample: u64) -> Table {
    let payloads: Vec<&[u8]> = sample
        .iter()
        .flat_map(|request| request.series.iter())
        .flat_map(|series| series.profiles.iter())
        .map(|raw| raw.pprof.as_slice())
        .collect();
    let profiles = payloads.len() as f64;
    let mut table = Table::new(
        &format!("Ingest steps, single-threaded, over {} profiles", payloads.len()),
        &[
            "step (cumulative)",
            "µs per profile",
            "profiles/s on 1 core",
            "pprof samples/s on 1 core",
        ],
    );
    let mut add = |step: &str, elapsed: Duration| {
        table.row(&[
            step.to_string(),
            format!("{:.0}", elapsed.as_secs_f64() * 1e6 / profiles),
            rate(per_second(profiles, elapsed)),
            rate(per_second(samples_in_sample as f64, elapsed)),
        ]);
    };
    let started = Instant::now();
    for payload in &payloads {
        let raw = kiln_model::pprof::maybe_gunzip(payload).expect("gunzip");
        std::hint::black_box(raw);
    }
    add("gunzip", started.elapsed());
    let started = Instant::now();
    for payload in &payloads {
        let raw = kiln_model::pprof::maybe_gunzip(payload).expect("gunzip");
        let decoded = kiln_proto::pprof::Profile::decode(raw.as_ref()).expect("protobuf decode");
        std::hint::black_box(decoded);
    }
    add("+ protobuf decode (prost)", started.elapsed());
    let started = Instant::now();
    for payload in &payloads {
        std::hint::black_box(kiln_model::pprof::decode_pprof(payload).expect("decode_pprof"));
    }
    add("+ validate and index (decode_pprof)", started.elapsed());
    let requests: Vec<api::WriteRequest> = sample.to_vec();
    let started = Instant::now();
    for request in requests {
        std::hint::black_box(
            kiln_node::ingest::prepare_write(request, kiln_node::ingest::OldestKept::any_time())
                .expect("prepare_write"),
        );
    }
    add("+ symbols, hashes, stacks (prepare_write)", started.elapsed());
    table
}

/// Times the steps of the merge one by one (warm caches).
fn merge_phases(state: &LocalGroup, request: &api::MergeRequest, whole: Duration) -> Table {
    let selection = request.selection.as_ref().expect("the merge has a selection");
    let mut table = Table::new("Merge steps (warm, one run each)", &["step", "time"]);
    let started = Instant::now();
    let selector = kiln_model::selector::parse_selector(&selection.selector).expect("selector parses");
    let profile_type = selector
        .require_profile_type()
        .expect("selector names a type")
        .clone();
    let ordinals = kiln_node::query::select::select_series(&state.storage, LOCAL_GROUP, &selector, i64::MIN)
        .expect("select");
    let select = started.elapsed();
    let started = Instant::now();
    let range = kiln_node::query::TimeRange::from_selection(selection).expect("valid range");
    let merged = state
        .engine
        .merge_stacks(&profile_type, &ordinals, range)
        .expect("merge_stacks");
    let scan = started.elapsed();
    let started = Instant::now();
    let stack_ids: Vec<u64> = merged.values.iter().map(|(stack, _)| *stack).collect();
    let symbols = kiln_node::query::symbolize::ResolvedSymbols::load(&state.storage, LOCAL_GROUP, &stack_ids)
        .expect("symbols load");
    let load = started.elapsed();
    let started = Instant::now();
    let tree = symbols.build_tree(&merged.values);
    let build = started.elapsed();
    std::hint::black_box(tree);
    let accounted = select + scan + load + build;
    table.row(&["select series (postings)".to_string(), millis(select)]);
    table.row(&[
        format!(
            "read + decode {} sample blocks, sum {} stacks",
            count(merged.profiles),
            count(merged.values.len() as u64)
        ),
        millis(scan),
    ]);
    table.row(&[
        "load stack, location, function, string symbols".to_string(),
        millis(load),
    ]);
    table.row(&["build the stack tree".to_string(), millis(build)]);
    table.row(&[
        "rest: tree → API message (median merge − the above)".to_string(),
        millis(whole.saturating_sub(accounted)),
    ]);
    table
}

/// Mean make-up of the pprofs of a spread of requests: how much of a profile is
/// its samples and how much its symbol tables.
fn composition(requests: &[api::WriteRequest]) -> String {
    let step = (requests.len() / 40).max(1);
    let (
        mut profiles,
        mut locations,
        mut functions,
        mut strings,
        mut string_bytes,
        mut sample_bytes,
        mut total_bytes,
    ) = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    for request in requests.iter().step_by(step) {
        for raw in request.series.iter().flat_map(|series| series.profiles.iter()) {
            let bytes = kiln_model::pprof::maybe_gunzip(&raw.pprof).expect("gunzip");
            let profile = kiln_proto::pprof::Profile::decode(bytes.as_ref()).expect("protobuf decode");
            profiles += 1;
            locations += profile.location.len();
            functions += profile.function.len();
            strings += profile.string_table.len();
            string_bytes += profile.string_table.iter().map(String::len).sum::<usize>();
            sample_bytes += profile
                .sample
                .iter()
                .map(|sample| sample.encoded_len() + 2)
                .sum::<usize>();
            total_bytes += bytes.len();
        }
    }
    let profiles = profiles.max(1);
    format!(
        "{} locations, {} functions, {} strings ({} of text); samples are {:.0}% of the raw bytes",
        locations / profiles,
        functions / profiles,
        strings / profiles,
        report::bytes((string_bytes / profiles) as u64),
        100.0 * sample_bytes as f64 / total_bytes.max(1) as f64
    )
}

/// Times `prepare_write` (the CPU part of ingest), single-threaded, on real pprof
/// files of a directory, for comparison with the generated ones.
fn real_profiles(directory: &std::path::Path) -> Table {
    let mut table = Table::new(
        &format!(
            "Reference: prepare_write on the pprof files of {}, single-threaded",
            directory.display()
        ),
        &[
            "file",
            "gzipped",
            "pprof samples",
            "µs per profile",
            "pprof samples/s on 1 core",
        ],
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("read KILN_BENCH_PPROF_DIR")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).expect("read a pprof file");
        let Ok(parsed) = kiln_model::pprof::decode_pprof(&bytes) else {
            continue;
        };
        let request = api::WriteRequest {
            idempotency_key: "reference".into(),
            series: vec![api::SeriesWrite {
                labels: vec![api::Label {
                    name: "service".into(),
                    value: "reference".into(),
                }],
                profiles: vec![api::RawProfile {
                    pprof: bytes.clone(),
                    ..Default::default()
                }],
            }],
        };
        // Enough rounds for about half a second.
        let mut rounds = 0u32;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            std::hint::black_box(
                kiln_node::ingest::prepare_write(request.clone(), kiln_node::ingest::OldestKept::any_time())
                    .expect("prepare_write"),
            );
            rounds += 1;
        }
        let each = started.elapsed() / rounds.max(1);
        table.row(&[
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            report::bytes(bytes.len() as u64),
            parsed.samples.len().to_string(),
            format!("{:.0}", each.as_secs_f64() * 1e6),
            rate(per_second(parsed.samples.len() as f64, each)),
        ]);
    }
    table
}

fn main() {
    let settings = Settings::from_env();
    let spec = settings.spec.clone();
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    println!("# Kiln fleet benchmark ({:?} mode)", settings.mode);
    println!();
    println!("- machine: {}", report::machine());

    // 1. Generate.
    let started = Instant::now();
    let fleet = Fleet::generate(spec.clone());
    let profiles = generate_profiles(&fleet, threads);
    let generation = started.elapsed();
    let depths: Vec<(usize, usize)> = fleet
        .services
        .iter()
        .flat_map(|service| service.stack_depths())
        .collect();
    let stacks = depths.len();
    let mean_frames = depths.iter().map(|(frames, _)| *frames).sum::<usize>() as f64 / stacks.max(1) as f64;
    let mean_lines = depths.iter().map(|(_, lines)| *lines).sum::<usize>() as f64 / stacks.max(1) as f64;
    let min_depth = depths.iter().map(|(frames, _)| *frames).min().unwrap_or(0);
    let max_depth = depths.iter().map(|(frames, _)| *frames).max().unwrap_or(0);
    let locations: usize = fleet
        .services
        .iter()
        .map(|service| service.location_count())
        .sum();
    let (requests, metas) = build_requests(&fleet, profiles, settings.batch);
    let all = Totals::of(&metas);
    let per_profile_samples: Vec<u32> = metas.iter().map(|meta| meta.samples).collect();
    let min_samples = per_profile_samples.iter().min().copied().unwrap_or(0);
    let max_samples = per_profile_samples.iter().max().copied().unwrap_or(0);
    let profiles_count = all.profiles.max(1) as f64;

    let mut fleet_table = Table::new("Fleet (generated, seed-deterministic)", &["", "value"]);
    fleet_table.row(&["seed".to_string(), spec.seed.to_string()]);
    fleet_table.row(&[
        "series".to_string(),
        format!(
            "{} ({} services, {} zones; labels namespace, service, instance, zone, region)",
            spec.series, spec.services, spec.zones
        ),
    ]);
    let services: Vec<String> = fleet
        .services
        .iter()
        .map(|service| {
            let lang = match service.lang {
                support::generator::Lang::Go => "Go",
                support::generator::Lang::Cpp => "C++",
            };
            format!("{} ({lang}, {} stacks)", service.name, service.stack_count())
        })
        .collect();
    fleet_table.row(&["services".to_string(), services.join(", ")]);
    fleet_table.row(&[
        "simulated time".to_string(),
        format!(
            "{} min, one CPU profile per series every {} s",
            spec.duration_secs / 60,
            spec.interval_secs
        ),
    ]);
    fleet_table.row(&["functions".to_string(), count(fleet.function_count() as u64)]);
    fleet_table.row(&[
        "unique stacks".to_string(),
        format!(
            "{} (depth {min_depth}-{max_depth}, mean {mean_frames:.1} locations, \
             {mean_lines:.1} lines with inlined frames)",
            count(stacks as u64)
        ),
    ]);
    fleet_table.row(&["distinct locations".to_string(), count(locations as u64)]);
    fleet_table.row(&[
        "stack popularity".to_string(),
        format!("Zipf, exponent {}", spec.zipf_exponent),
    ]);
    fleet_table.row(&["profiles".to_string(), count(all.profiles)]);
    fleet_table.row(&[
        "pprof samples per profile".to_string(),
        format!(
            "mean {:.0} (min {min_samples}, max {max_samples}); CPU ticks per profile mean {:.0}",
            all.samples as f64 / profiles_count,
            all.ticks as f64 / profiles_count
        ),
    ]);
    fleet_table.row(&[
        "mean depth of a sample".to_string(),
        format!("{:.1} locations", all.frames as f64 / all.samples.max(1) as f64),
    ]);
    fleet_table.row(&[
        "pprof size per profile".to_string(),
        format!(
            "{} raw, {} gzipped (level 1, as Go's BestSpeed)",
            bytes(all.raw_bytes / all.profiles.max(1)),
            bytes(all.gzipped_bytes / all.profiles.max(1))
        ),
    ]);
    fleet_table.row(&[
        "pprof composition per profile (mean)".to_string(),
        composition(&requests),
    ]);
    fleet_table.row(&["total gzipped pprof".to_string(), bytes(all.gzipped_bytes)]);
    fleet_table.row(&[
        "generation time".to_string(),
        format!(
            "{:.1} s on {threads} threads (not part of any measurement)",
            generation.as_secs_f64()
        ),
    ]);
    fleet_table.print();

    // 2. Ingest.
    let parent = settings.data_parent.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).expect("create the data directory's parent");
    let directory = tempfile::Builder::new()
        .prefix("kiln-fleet-")
        .tempdir_in(&parent)
        .expect("create a temporary data directory");
    let data_dir = directory.path().to_path_buf();
    println!();
    println!(
        "- data directory: {} on {}",
        data_dir.display(),
        report::filesystem_of(&data_dir)
    );
    let state = LocalGroup::open(NodeConfig::keeping_everything(data_dir.clone())).expect("open the node");
    let phase_sample: Vec<api::WriteRequest> = {
        let mut taken = Vec::new();
        let mut taken_profiles = 0;
        let step = (requests.len() * settings.batch / settings.phase_profiles.max(1)).max(1);
        for request in requests.iter().step_by(step) {
            if taken_profiles >= settings.phase_profiles {
                break;
            }
            taken_profiles += request.series.len();
            taken.push(request.clone());
        }
        taken
    };
    let request_count = requests.len();
    let ingested = ingest(&state, requests, settings.writers);
    let wall = ingested.wall;
    let mut ingest_table =
        Table::new(
            &format!(
            "Ingest: {} writer tasks, {} profiles per WriteRequest, {} requests, WAL synced per group commit",
            settings.writers, settings.batch, count(request_count as u64)
        ),
            &["metric", "value"],
        );
    ingest_table.row(&["wall time".to_string(), format!("{:.2} s", wall.as_secs_f64())]);
    ingest_table.row(&[
        "profiles/s".to_string(),
        rate(per_second(all.profiles as f64, wall)),
    ]);
    ingest_table.row(&[
        "**stack-samples/s** (pprof `Sample` messages = distinct stacks per profile)".to_string(),
        rate(per_second(all.samples as f64, wall)),
    ]);
    ingest_table.row(&[
        "stored (stack, value) pairs/s, both sample types (node's own count)".to_string(),
        rate(per_second(ingested.acknowledged_samples as f64, wall)),
    ]);
    ingest_table.row(&[
        "CPU ticks/s (sum of samples/count)".to_string(),
        rate(per_second(all.ticks as f64, wall)),
    ]);
    ingest_table.row(&[
        "gzipped pprof MiB/s".to_string(),
        format!(
            "{:.1}",
            per_second(all.gzipped_bytes as f64 / (1 << 20) as f64, wall)
        ),
    ]);
    ingest_table.row(&[
        "WriteRequest latency p50 / p99".to_string(),
        format!(
            "{} / {}",
            millis(percentile(&ingested.latencies, 50.0)),
            millis(percentile(&ingested.latencies, 99.0))
        ),
    ]);
    ingest_table.row(&[
        "group commits; requests per commit; mean commit time".to_string(),
        format!(
            "{}; {:.1}; {}",
            count(ingested.commits as u64),
            ingested.requests_per_commit,
            millis(Duration::from_secs_f64(
                ingested.commit_seconds / ingested.commits.max(1.0)
            ))
        ),
    ]);
    ingest_table.row(&[
        "writer thread busy (commit time / wall)".to_string(),
        format!("{:.0}%", 100.0 * ingested.commit_seconds / wall.as_secs_f64()),
    ]);
    ingest_table.row(&[
        "process CPU (of 2 cores = 200%)".to_string(),
        format!(
            "{:.0}%",
            100.0 * ingested.process_cpu_seconds / wall.as_secs_f64()
        ),
    ]);
    ingest_table.row(&[
        "other processes' CPU meanwhile (noise; should be ~0%)".to_string(),
        format!(
            "{:.0}%",
            100.0 * (ingested.machine_cpu_seconds - ingested.process_cpu_seconds).max(0.0)
                / wall.as_secs_f64()
        ),
    ]);
    for (group, seconds) in &ingested.cpu_groups {
        ingest_table.row(&[
            format!("CPU: {group}"),
            format!(
                "{seconds:.1} s ({:.0}%)",
                100.0 * seconds / ingested.process_cpu_seconds.max(1e-9)
            ),
        ]);
    }
    ingest_table.print();
    let mut problems = Vec::new();
    if ingested.acknowledged_profiles != all.profiles {
        problems.push(format!(
            "{} profiles acknowledged, {} sent",
            ingested.acknowledged_profiles, all.profiles
        ));
    }

    // 3. Disk after flush; merges on a reopened node.
    state.storage.flush().expect("flush");
    let flushed = sst_bytes(&state);
    let flushed_total: u64 = flushed.iter().map(|(_, size)| size).sum();
    let flushed_dir = report::dir_bytes(&data_dir).expect("size of the data directory");
    state.shutdown();
    drop(state);
    let started = Instant::now();
    let state = LocalGroup::open(NodeConfig::keeping_everything(data_dir.clone())).expect("reopen the node");
    let reopen = started.elapsed();

    let request = merge_request(&spec);
    let zone_metas: Vec<ProfileMeta> = metas
        .iter()
        .filter(|meta| fleet.series[meta.series as usize].zone == 0)
        .copied()
        .collect();
    let zone = Totals::of(&zone_metas);
    let zone_series = fleet.series.iter().filter(|series| series.zone == 0).count() as u64;
    let before_compaction = time_merges(&state, &request, settings.merge_runs);
    problems.extend(check_merge(&before_compaction.response, &zone, zone_series));

    // 4. Full compaction.
    let started = Instant::now();
    let mut options = rocksdb::CompactOptions::default();
    options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for name in keys::COLUMN_FAMILIES {
        let handle = state.storage.cf(name).expect("column family exists");
        state
            .storage
            .db()
            .compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &options);
    }
    let compaction = started.elapsed();
    let compacted = sst_bytes(&state);
    let compacted_total: u64 = compacted.iter().map(|(_, size)| size).sum();
    let compacted_dir = report::dir_bytes(&data_dir).expect("size of the data directory");
    let after_compaction = time_merges(&state, &request, settings.merge_runs);
    problems.extend(check_merge(&after_compaction.response, &zone, zone_series));

    let selection = request.selection.as_ref().expect("the merge has a selection");
    let mut merge_table = Table::new(
        &format!(
            "Merge: `{}` over {} min ({} series, {} profiles, {} pprof samples) → full stack tree",
            selection.selector,
            spec.duration_secs / 60,
            zone_series,
            count(zone.profiles),
            count(zone.samples)
        ),
        &["", "first run (cold-ish)", "median", "p90", "runs"],
    );
    for (label, result) in [
        (
            "after flush, node reopened (empty block and symbol caches; OS page cache warm)",
            &before_compaction,
        ),
        ("after full compaction", &after_compaction),
    ] {
        merge_table.row(&[
            label.to_string(),
            millis(result.first),
            millis(percentile(&result.runs, 50.0)),
            millis(percentile(&result.runs, 90.0)),
            result.runs.len().to_string(),
        ]);
    }
    merge_table.row(&[
        format!(
            "answer: total {} ns of CPU, {} tree nodes, {} encoded",
            count(before_compaction.response.total as u64),
            count(tree_nodes(&before_compaction.response) as u64),
            bytes(before_compaction.response.encoded_len() as u64)
        ),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    merge_table.print();
    println!("\n(node reopen took {})", millis(reopen));

    let mut disk_table = Table::new(
        &format!(
            "Disk: {} profiles, {} pprof samples, {} gzipped pprof",
            count(all.profiles),
            count(all.samples),
            bytes(all.gzipped_bytes)
        ),
        &["", "after flush", "after full compaction"],
    );
    for ((name, flushed_size), (_, compacted_size)) in flushed.iter().zip(&compacted) {
        disk_table.row(&[
            format!("SST bytes, column family `{name}`"),
            bytes(*flushed_size),
            bytes(*compacted_size),
        ]);
    }
    disk_table.row(&[
        "**SST bytes, total**".to_string(),
        bytes(flushed_total),
        bytes(compacted_total),
    ]);
    disk_table.row(&[
        "whole data directory (SST + WAL + MANIFEST + logs)".to_string(),
        bytes(flushed_dir),
        bytes(compacted_dir),
    ]);
    disk_table.row(&[
        "SST bytes per pprof sample".to_string(),
        format!("{:.2}", flushed_total as f64 / all.samples.max(1) as f64),
        format!("{:.2}", compacted_total as f64 / all.samples.max(1) as f64),
    ]);
    disk_table.row(&[
        "gzipped pprof bytes per pprof sample".to_string(),
        format!("{:.2}", all.gzipped_bytes as f64 / all.samples.max(1) as f64),
        format!("{:.2}", all.gzipped_bytes as f64 / all.samples.max(1) as f64),
    ]);
    disk_table.row(&[
        "**SST / gzipped pprof**".to_string(),
        format!(
            "{:.1}%",
            100.0 * flushed_total as f64 / all.gzipped_bytes.max(1) as f64
        ),
        format!(
            "{:.1}%",
            100.0 * compacted_total as f64 / all.gzipped_bytes.max(1) as f64
        ),
    ]);
    disk_table.row(&[
        "full compaction time".to_string(),
        String::new(),
        millis(compaction),
    ]);
    disk_table.print();

    // 5. Where the time goes.
    let phase_samples: u64 = {
        let mut total = 0u64;
        for request in &phase_sample {
            for series in &request.series {
                for raw in &series.profiles {
                    let decoded = kiln_model::pprof::decode_pprof(&raw.pprof).expect("decode_pprof");
                    total += decoded.samples.len() as u64;
                }
            }
        }
        total
    };
    ingest_phases(&phase_sample, phase_samples).print();
    merge_phases(&state, &request, percentile(&after_compaction.runs, 50.0)).print();
    if let Some(directory) = std::env::var_os("KILN_BENCH_PPROF_DIR") {
        real_profiles(&PathBuf::from(directory)).print();
    }

    // Targets.
    let ingest_rate = per_second(all.samples as f64, wall);
    let merge_median = percentile(&before_compaction.runs, 50.0);
    let ratio = compacted_total.max(flushed_total) as f64 / all.gzipped_bytes.max(1) as f64;
    let mut targets = Table::new("Targets (issue 2)", &["target", "measured", "met"]);
    let verdict = |met: bool| if met { "yes" } else { "**no**" }.to_string();
    targets.row(&[
        "ingest ≥ 250,000 stack-samples/s".to_string(),
        format!("{} pprof samples/s", rate(ingest_rate)),
        verdict(ingest_rate >= 250_000.0),
    ]);
    targets.row(&[
        format!(
            "merge of {} min × {} series < 1 s",
            spec.duration_secs / 60,
            zone_series
        ),
        format!(
            "median {} (first {})",
            millis(merge_median),
            millis(before_compaction.first)
        ),
        verdict(merge_median < Duration::from_secs(1) && before_compaction.first < Duration::from_secs(1)),
    ]);
    targets.row(&[
        "disk ≤ 25% of gzipped pprof".to_string(),
        format!(
            "{:.1}% after flush, {:.1}% compacted",
            100.0 * flushed_total as f64 / all.gzipped_bytes.max(1) as f64,
            100.0 * compacted_total as f64 / all.gzipped_bytes.max(1) as f64
        ),
        verdict(ratio <= 0.25),
    ]);
    targets.print();
    match settings.mode {
        Mode::Full => {}
        Mode::Quick => println!(
            "\n(Quick mode: a smaller fleet than the targets are defined for; run without KILN_BENCH_QUICK for the numbers of record.)"
        ),
        Mode::Smoke => println!(
            "\n(Smoke mode, as `cargo test` runs it: a tiny fleet; `cargo bench -p kiln-node --bench fleet` gives the numbers of record.)"
        ),
    }

    state.shutdown();
    drop(state);
    // Remove the data directory before a failed check exits without running destructors.
    drop(directory);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("CHECK FAILED: {problem}");
        }
        std::process::exit(1);
    }
    println!("\nchecks: every profile acknowledged; merge totals, profile and series counts equal the generated ones.");
}
