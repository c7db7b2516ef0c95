//! The CPU profiling loop: every drain interval, drain the BPF counts, label each process, symbolize its
//! stacks and build one pprof per series, then spool the batch. Runs on its own thread: BPF map syscalls
//! and symbolization are blocking work.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kiln_proto::kiln::v1::{Label, RawProfile, SeriesWrite, WriteRequest};

use crate::bpf::{BpfStats, RawSample, Sampler};
use crate::metrics::Metrics;
use crate::process::{parse_cgroup_identity, read_pod_names, ProcessCache, ProcessInfo};
use crate::profile::{encode_gzipped, MappingKey, ProfileBuilder, StackFrame};
use crate::push::Outbox;
use crate::relabel::{self, Labels, Rule};
use crate::shutdown::Shutdown;
use crate::symbolize::{Frame, Frames, Symbolizer};

/// A write request is cut before its profiles pass this size (under the node's 4 MiB default message).
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// How often, between drains, the pids sampled so far are read from `/proc` (to catch short-lived ones).
const PEEK_INTERVAL: Duration = Duration::from_secs(1);

/// Where kernel addresses live in the profile.
fn kernel_mapping() -> MappingKey {
    MappingKey {
        start: 0xffff_8000_0000_0000,
        limit: u64::MAX,
        offset: 0,
        file: "[kernel.kallsyms]".to_string(),
        build_id: String::new(),
    }
}

/// What the loop needs besides the sampler.
pub struct CpuProfiler {
    /// Pending batches go here.
    pub outbox: Outbox,
    /// Counters.
    pub metrics: Metrics,
    /// The `node` label.
    pub node_name: String,
    /// Static labels.
    pub static_labels: BTreeMap<String, String>,
    /// Relabel rules.
    pub rules: Vec<Rule>,
    /// Add the `pid` label.
    pub pid_label: bool,
    /// Samples per second per CPU (for the nanoseconds value).
    pub frequency_hz: u64,
    /// Time between drains.
    pub drain_interval: Duration,
    /// `/proc`.
    pub proc_root: PathBuf,
}

/// Labels of one process before relabeling.
pub fn process_labels(
    info: &ProcessInfo,
    pid: u32,
    proc_root: &std::path::Path,
    node_name: &str,
    static_labels: &BTreeMap<String, String>,
    pid_label: bool,
) -> Labels {
    let mut labels: Labels = static_labels.clone();
    let mut set = |name: &str, value: &str| {
        if !value.is_empty() {
            labels.insert(name.to_string(), value.to_string());
        }
    };
    set("node", node_name);
    if !info.known {
        set("comm", "[exited]");
    }
    set("comm", &info.comm);
    set("executable", info.executable.rsplit('/').next().unwrap_or(""));
    set("cgroup", &info.cgroup);
    let identity = parse_cgroup_identity(&info.cgroup);
    if let Some(container_id) = &identity.container_id {
        set("container_id", container_id);
    }
    if let Some(pod_uid) = &identity.pod_uid {
        set("pod_uid", pod_uid);
        let names = read_pod_names(proc_root, pid);
        set("namespace", &names.namespace);
        set("pod", &names.pod);
        set("container", &names.container);
    }
    if pid_label {
        set("pid", &pid.to_string());
    }
    labels
}

fn marker(text: &str) -> Frames {
    Arc::new(vec![Frame {
        function: text.to_string(),
        file: String::new(),
        line: 0,
    }])
}

/// Everything built in one cycle.
#[derive(Default)]
pub struct CycleOutput {
    /// Series → profile.
    pub series: BTreeMap<Labels, ProfileBuilder>,
    /// Distinct keys drained.
    pub keys: usize,
}

impl CpuProfiler {
    /// Turns drained samples into profiles. Never fails: a process whose information or symbols cannot
    /// be read gets unknown frames; a panic inside symbolization of one process is contained to it.
    pub fn build_cycle(
        &self,
        samples: Vec<RawSample>,
        processes: &mut ProcessCache,
        symbolizer: &mut Symbolizer,
        labels_cache: &mut HashMap<u32, Option<Labels>>,
    ) -> CycleOutput {
        let mut output = CycleOutput {
            keys: samples.len(),
            ..Default::default()
        };
        let mut by_pid: BTreeMap<u32, Vec<RawSample>> = BTreeMap::new();
        for sample in samples {
            by_pid.entry(sample.pid).or_default().push(sample);
        }
        for (pid, samples) in by_pid {
            let info = processes.get(pid).clone();
            let labels = labels_cache
                .entry(pid)
                .or_insert_with(|| {
                    relabel::apply(
                        &self.rules,
                        process_labels(
                            &info,
                            pid,
                            &self.proc_root,
                            &self.node_name,
                            &self.static_labels,
                            self.pid_label,
                        ),
                    )
                })
                .clone();
            let Some(labels) = labels else {
                continue; // dropped by relabeling
            };
            let proc_root = self.proc_root.clone();
            let stacks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                samples
                    .iter()
                    .map(|sample| self.stack(symbolizer, &proc_root, pid, &info, sample))
                    .collect::<Vec<_>>()
            }));
            let builder = output.series.entry(labels).or_default();
            match stacks {
                Ok(stacks) => {
                    for (stack, sample) in stacks.iter().zip(&samples) {
                        builder.add(stack, sample.count);
                    }
                }
                Err(_) => {
                    tracing::error!(
                        pid,
                        "symbolization panicked; the process' samples get unknown frames"
                    );
                    self.metrics.symbolization_failures.inc();
                    let unknown = [StackFrame {
                        address: 0,
                        mapping: None,
                        frames: marker("[symbolization failed]"),
                    }];
                    for sample in &samples {
                        builder.add(&unknown, sample.count);
                    }
                }
            }
        }
        output
    }

    fn stack(
        &self,
        symbolizer: &mut Symbolizer,
        proc_root: &std::path::Path,
        pid: u32,
        info: &ProcessInfo,
        sample: &RawSample,
    ) -> Vec<StackFrame> {
        let mut stack = Vec::with_capacity(sample.kernel_stack.len() + sample.user_stack.len() + 1);
        if sample.kernel_stack_lost {
            stack.push(StackFrame {
                address: 0,
                mapping: None,
                frames: marker("[kernel stack lost: stack map collision or full]"),
            });
        }
        if !sample.kernel_stack.is_empty() {
            let kernel = kernel_mapping();
            let frames = symbolizer.kernel_frames(&sample.kernel_stack);
            for (address, frames) in sample.kernel_stack.iter().zip(frames) {
                stack.push(StackFrame {
                    address: *address,
                    mapping: Some(kernel.clone()),
                    frames,
                });
            }
        }
        if sample.user_stack_lost {
            stack.push(StackFrame {
                address: 0,
                mapping: None,
                frames: marker("[user stack lost: stack map collision or full]"),
            });
        }
        if !sample.user_stack.is_empty() {
            // A frame-pointer walk through code built without frame pointers yields garbage after the
            // first bad frame; an address outside every mapping marks that point: keep one unknown frame
            // for it and drop the rest. (A process we know nothing about keeps only that one frame.)
            let mapped = if info.known {
                sample
                    .user_stack
                    .iter()
                    .position(|address| info.mapping_for(*address).is_none())
                    .map_or(sample.user_stack.len(), |first_unmapped| first_unmapped + 1)
            } else {
                1
            };
            let user_stack = &sample.user_stack[..mapped.min(sample.user_stack.len())];
            let frames = symbolizer.user_frames(proc_root, pid, info, user_stack);
            for (address, frames) in user_stack.iter().zip(frames) {
                let mapping = info.mapping_for(*address).map(|mapping| MappingKey {
                    start: mapping.start,
                    limit: mapping.end,
                    offset: mapping.offset,
                    file: mapping.path.clone(),
                    build_id: symbolizer.build_id(mapping),
                });
                stack.push(StackFrame {
                    address: *address,
                    mapping,
                    frames,
                });
            }
        }
        stack
    }

    /// Cuts the cycle's profiles into write requests of bounded size.
    pub fn requests(&self, output: CycleOutput, start: SystemTime, end: SystemTime) -> Vec<WriteRequest> {
        let time_nanos = nanos_since_epoch(start);
        let duration_nanos = end.duration_since(start).unwrap_or_default().as_nanos() as i64;
        let period = 1_000_000_000 / self.frequency_hz.max(1) as i64;
        let mut requests = Vec::new();
        let mut current = WriteRequest::default();
        let mut current_bytes = 0;
        for (labels, builder) in output.series {
            let profile = builder.finish(time_nanos, duration_nanos, period);
            let pprof = encode_gzipped(&profile);
            self.metrics.profiles.inc();
            if current_bytes + pprof.len() > MAX_REQUEST_BYTES && !current.series.is_empty() {
                requests.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += pprof.len();
            current.series.push(SeriesWrite {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect(),
                profiles: vec![RawProfile {
                    pprof,
                    name: "process_cpu".to_string(),
                    default_time_unix_nanos: 0,
                    delta: Some(true),
                }],
            });
        }
        if !current.series.is_empty() {
            requests.push(current);
        }
        requests
    }

    /// Runs until `shutdown`: peeks at new pids every second, drains every interval, and on shutdown
    /// drains once more so the last partial interval is sent too.
    pub fn run(self, mut sampler: Sampler, runtime: tokio::runtime::Handle, shutdown: Shutdown) {
        let mut processes =
            ProcessCache::new(&self.proc_root, Duration::from_secs(30), Duration::from_secs(600));
        let mut symbolizer = Symbolizer::new(200_000);
        let mut previous_stats = BpfStats::default();
        let mut cycle_start = SystemTime::now();
        let mut next_drain = Instant::now() + self.drain_interval;
        loop {
            let stopping = loop {
                if shutdown.is_triggered() {
                    break true;
                }
                let now = Instant::now();
                if now >= next_drain {
                    break false;
                }
                std::thread::sleep(
                    PEEK_INTERVAL
                        .min(next_drain - now)
                        .min(Duration::from_millis(250)),
                );
                if Instant::now() + PEEK_INTERVAL >= next_drain {
                    continue;
                }
                for pid in sampler.peek_pids() {
                    processes.prefetch(pid);
                }
            };
            next_drain += self.drain_interval;
            if next_drain < Instant::now() {
                next_drain = Instant::now() + self.drain_interval;
            }
            let cycle_end = SystemTime::now();
            match sampler.drain() {
                Ok(samples) => {
                    self.update_stats(&sampler, &mut previous_stats);
                    let failures_before = symbolizer.stats().failures;
                    // Labels depend on /proc and are recomputed every cycle (pid reuse, exec).
                    let mut labels_cache = HashMap::new();
                    let output =
                        self.build_cycle(samples, &mut processes, &mut symbolizer, &mut labels_cache);
                    self.metrics.stacks.inc_by(output.keys as u64);
                    self.metrics
                        .symbolization_failures
                        .inc_by(symbolizer.stats().failures - failures_before);
                    let requests = self.requests(output, cycle_start, cycle_end);
                    for request in requests {
                        if let Err(error) = runtime.block_on(self.outbox.send(request)) {
                            tracing::error!(%error, "cannot spool a CPU profile batch");
                            self.metrics.cycle_errors.inc();
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "draining the BPF maps failed");
                    self.metrics.cycle_errors.inc();
                }
            }
            cycle_start = cycle_end;
            processes.expire();
            // Parsed DWARF and mapped files are the bulk of the memory: release them after every cycle;
            // the result caches keep the answers, so only new addresses pay for re-parsing.
            symbolizer.release_parsed_files();
            if stopping {
                return;
            }
        }
    }

    fn update_stats(&self, sampler: &Sampler, previous: &mut BpfStats) {
        let Ok(now) = sampler.stats() else {
            return;
        };
        let delta = |now: u64, before: u64| now.saturating_sub(before);
        self.metrics.samples.inc_by(delta(now.samples, previous.samples));
        self.metrics.idle_samples.inc_by(delta(now.idle, previous.idle));
        self.metrics.lost_samples.inc_by(delta(now.lost, previous.lost));
        Metrics::kind(&self.metrics.stack_errors, "user_collision")
            .inc_by(delta(now.user_collisions, previous.user_collisions));
        Metrics::kind(&self.metrics.stack_errors, "kernel_collision")
            .inc_by(delta(now.kernel_collisions, previous.kernel_collisions));
        Metrics::kind(&self.metrics.stack_errors, "stack_map_full")
            .inc_by(delta(now.stack_map_full, previous.stack_map_full));
        if now.nested > previous.nested {
            tracing::warn!(
                count = now.nested - previous.nested,
                "BPF program nesting observed"
            );
        }
        *previous = now;
    }
}

fn nanos_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|duration| duration.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Mapping;

    #[test]
    fn process_labels_from_cgroup_and_config() {
        let id = "b".repeat(64);
        let info = ProcessInfo {
            comm: "api".into(),
            executable: "/usr/local/bin/api-server".into(),
            cgroup: format!("/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/{id}"),
            mappings: vec![],
            known: true,
        };
        let mut statics = BTreeMap::new();
        statics.insert("region".to_string(), "eu".to_string());
        let labels = process_labels(
            &info,
            7,
            std::path::Path::new("/nonexistent"),
            "host1",
            &statics,
            false,
        );
        assert_eq!(labels.get("node").map(String::as_str), Some("host1"));
        assert_eq!(labels.get("executable").map(String::as_str), Some("api-server"));
        assert_eq!(labels.get("comm").map(String::as_str), Some("api"));
        assert_eq!(labels.get("container_id"), Some(&id));
        assert_eq!(
            labels.get("pod_uid").map(String::as_str),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(labels.get("region").map(String::as_str), Some("eu"));
        assert!(!labels.contains_key("pid"));
        let with_pid = process_labels(
            &info,
            7,
            std::path::Path::new("/nonexistent"),
            "h",
            &statics,
            true,
        );
        assert_eq!(with_pid.get("pid").map(String::as_str), Some("7"));
    }

    fn profiler(dir: &std::path::Path) -> CpuProfiler {
        let metrics = Metrics::new();
        CpuProfiler {
            outbox: Outbox::new(
                crate::spool::Spool::open(dir, 1 << 20).expect("spool"),
                metrics.clone(),
            ),
            metrics,
            node_name: "n".into(),
            static_labels: BTreeMap::new(),
            rules: vec![],
            pid_label: false,
            frequency_hz: 19,
            drain_interval: Duration::from_secs(10),
            proc_root: PathBuf::from("/proc"),
        }
    }

    #[test]
    fn exited_process_still_profiles_with_unknown_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profiler = profiler(dir.path());
        // A pid that cannot exist (above pid_max) and a stack in no mapping.
        let samples = vec![RawSample {
            pid: u32::MAX - 1,
            user_stack: vec![0x1234, 0x5678],
            kernel_stack: vec![],
            user_stack_lost: false,
            kernel_stack_lost: true,
            count: 3,
        }];
        let mut processes = ProcessCache::new("/proc", Duration::ZERO, Duration::from_secs(60));
        let mut symbolizer = Symbolizer::new(1024);
        let output = profiler.build_cycle(samples, &mut processes, &mut symbolizer, &mut HashMap::new());
        assert_eq!(output.series.len(), 1);
        let (labels, builder) = output.series.into_iter().next().expect("one series");
        assert_eq!(labels.get("comm").map(String::as_str), Some("[exited]"));
        assert_eq!(builder.total_samples(), 3);
        let profile = builder.finish(0, 1, 1);
        let names: Vec<&str> = profile
            .function
            .iter()
            .map(|f| profile.string_table[f.name as usize].as_str())
            .collect();
        assert!(names.contains(&"[exited process]"), "{names:?}");
        assert!(
            names.iter().any(|name| name.starts_with("[kernel stack lost")),
            "{names:?}"
        );
    }

    #[test]
    fn garbage_frames_after_an_unmapped_address_are_cut() {
        // Regression: a frame-pointer walk through frameless code went on through garbage, giving
        // thousands of distinct `[unknown]` frames; the stack now ends at the first unmapped address.
        let dir = tempfile::tempdir().expect("tempdir");
        let profiler = profiler(dir.path());
        let pid = std::process::id();
        let address = garbage_frames_after_an_unmapped_address_are_cut as fn() as usize as u64;
        let samples = vec![RawSample {
            pid,
            user_stack: vec![address, 0x10, address, 0x20],
            kernel_stack: vec![],
            user_stack_lost: false,
            kernel_stack_lost: false,
            count: 1,
        }];
        let mut processes = ProcessCache::new("/proc", Duration::ZERO, Duration::from_secs(60));
        let mut symbolizer = Symbolizer::new(1024);
        let output = profiler.build_cycle(samples, &mut processes, &mut symbolizer, &mut HashMap::new());
        let (_, builder) = output.series.into_iter().next().expect("one series");
        let profile = builder.finish(0, 1, 1);
        assert_eq!(
            profile.sample[0].location_id.len(),
            2,
            "leaf, then one unknown frame"
        );
        let last = &profile.location[(profile.sample[0].location_id[1] - 1) as usize];
        let function = &profile.function[(last.line[0].function_id - 1) as usize];
        assert_eq!(profile.string_table[function.name as usize], "[unknown]");
    }

    #[test]
    fn own_process_symbolizes_and_requests_are_valid_pprof() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profiler = profiler(dir.path());
        let pid = std::process::id();
        let address = own_process_symbolizes_and_requests_are_valid_pprof as fn() as usize as u64;
        let samples = vec![RawSample {
            pid,
            user_stack: vec![address],
            kernel_stack: vec![],
            user_stack_lost: false,
            kernel_stack_lost: false,
            count: 2,
        }];
        let mut processes = ProcessCache::new("/proc", Duration::ZERO, Duration::from_secs(60));
        let mut symbolizer = Symbolizer::new(1024);
        let output = profiler.build_cycle(samples, &mut processes, &mut symbolizer, &mut HashMap::new());
        let start = SystemTime::now() - Duration::from_secs(10);
        let requests = profiler.requests(output, start, SystemTime::now());
        assert_eq!(requests.len(), 1);
        let pprof = &requests[0].series[0].profiles[0].pprof;
        let parsed = kiln_model::pprof::decode_pprof(pprof).expect("valid pprof");
        assert_eq!(parsed.profile_types("process_cpu", true).len(), 2);
        let mapping: Vec<Mapping> = processes.get(pid).mappings.clone();
        assert!(!mapping.is_empty());
    }
}
