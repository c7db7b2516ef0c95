//! The CPU profiling loop: every drain interval, drain the BPF counts, label each process, symbolize its
//! stacks and build one pprof per series, then spool the batch. Runs on its own thread: BPF map syscalls
//! and symbolization are blocking work.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kiln_proto::kiln::v1::{Label, RawProfile, SeriesWrite, WriteRequest};

use crate::bpf::{resolve_stack, stack_lost, BpfStats, RawSample, Sampler, StackEnd, StackEvent, Unwinder};
use crate::metrics::Metrics;
use crate::process::{parse_cgroup_identity, read_pod_names, ProcessCache, ProcessInfo};
use crate::profile::{encode_gzipped, MappingKey, ProfileBuilder, StackFrame};
use crate::push::Outbox;
use crate::relabel::{self, Labels, Rule};
use crate::shutdown::Shutdown;
use crate::symbolize::{Frame, Frames, Symbolizer};
use crate::unwind::{CapturedStack, DwarfUnwinder, UnwoundStack};

/// A write request is cut before its profiles pass this size (under the node's 4 MiB default message).
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// How often, between drains, the pids sampled so far are read from `/proc` (to catch short-lived ones).
const PEEK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the stack event ring buffer is consumed (and its stacks unwound) between drains. The ring
/// holds seconds of samples at this host's rate; consuming often keeps it far from full and keeps only
/// unwound (small, aggregated) stacks in memory, never the copied stack bytes.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A process' maps are re-read (at most this often) when a sample's instruction pointer is in none of
/// its known mappings: it mapped a library or exec'd since they were read.
const MAPS_REFRESH_ON_MISS: Duration = Duration::from_secs(1);

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
    /// Budget for DWARF unwind tables in memory.
    pub unwind_table_max_bytes: usize,
    /// Budget for symbol files kept parsed across cycles.
    pub symbol_files_max_bytes: u64,
}

/// A DWARF-mode sample after unwinding, before its stack ids are resolved at the drain. Identical ones
/// are aggregated, so memory grows with distinct stacks, not with samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingSample {
    /// Process id.
    pub pid: u32,
    /// The frame-pointer stack id (fallback) in the generation's stack map.
    pub user_stack_id: i32,
    /// The kernel stack id in the generation's stack map.
    pub kernel_stack_id: i32,
    /// The DWARF walk.
    pub unwound: UnwoundStack,
}

/// DWARF-mode samples waiting for their generation's drain, per generation.
pub type PendingSamples = [HashMap<PendingSample, u64>; 2];

/// Unwinds one stack event of the ring buffer and adds it to its generation's pending samples.
/// `proc_root` is the `/proc` the process cache reads.
pub fn handle_stack_event(
    event: &StackEvent<'_>,
    proc_root: &Path,
    processes: &mut ProcessCache,
    unwinder: &mut DwarfUnwinder,
    pending: &mut PendingSamples,
) {
    let known_leaf = {
        let info = processes.get(event.pid);
        !info.known || info.mapping_for(event.ip).is_some()
    };
    if !known_leaf {
        processes.refresh_if_older(event.pid, MAPS_REFRESH_ON_MISS);
    }
    let (info, read_at) = processes.get_stamped(event.pid);
    let unwound = unwinder.unwind(
        proc_root,
        event.pid,
        info,
        read_at,
        &CapturedStack {
            ip: event.ip,
            sp: event.sp,
            bp: event.bp,
            stack: event.stack,
            copy_full: event.copy_full,
        },
    );
    let key = PendingSample {
        pid: event.pid,
        user_stack_id: event.user_stack_id,
        kernel_stack_id: event.kernel_stack_id,
        unwound,
    };
    *pending[(event.generation & 1) as usize].entry(key).or_insert(0) += 1;
}

/// How many leading addresses of a frame-pointer stack are worth keeping: up to and including the first
/// address outside every mapping (a frame-pointer walk through code without frame pointers goes on
/// through garbage after it). A process we know nothing about keeps only its leaf.
pub fn usable_frame_pointer_frames(info: &ProcessInfo, user_stack: &[u64]) -> usize {
    if !info.known {
        return user_stack.len().min(1);
    }
    user_stack
        .iter()
        .position(|address| info.mapping_for(*address).is_none())
        .map_or(user_stack.len(), |first_unmapped| first_unmapped + 1)
}

/// Turns the pending DWARF samples of a drained generation into samples, resolving their stack ids
/// against that generation's stack map. Each keeps the DWARF stack unless the frame-pointer stack of
/// the same sample is deeper (then it is labelled `fp`, and `on_fallback` gets its sample count).
pub fn resolve_pending(
    pending: HashMap<PendingSample, u64>,
    stacks: &HashMap<i32, Vec<u64>>,
    processes: &mut ProcessCache,
    mut on_fallback: impl FnMut(u64),
) -> Vec<RawSample> {
    pending
        .into_iter()
        .map(|(sample, count)| {
            let frame_pointer_stack = resolve_stack(stacks, sample.user_stack_id);
            let info = processes.get(sample.pid);
            let usable = usable_frame_pointer_frames(info, &frame_pointer_stack);
            let (user_stack, unwinder, user_stack_end, user_stack_lost) =
                if sample.unwound.frames.len() < usable {
                    on_fallback(count);
                    (
                        frame_pointer_stack,
                        Unwinder::FramePointer,
                        StackEnd::Complete,
                        stack_lost(sample.user_stack_id),
                    )
                } else {
                    (sample.unwound.frames, Unwinder::Dwarf, sample.unwound.end, false)
                };
            RawSample {
                pid: sample.pid,
                user_stack,
                kernel_stack: resolve_stack(stacks, sample.kernel_stack_id),
                user_stack_lost,
                kernel_stack_lost: stack_lost(sample.kernel_stack_id),
                count,
                unwinder,
                user_stack_end,
            }
        })
        .collect()
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
        labels_cache: &mut HashMap<(u32, Unwinder), Option<Labels>>,
    ) -> CycleOutput {
        let mut output = CycleOutput {
            keys: samples.len(),
            ..Default::default()
        };
        // One series per process and unwinder: the `unwinder` label says which one made the stacks.
        let mut by_pid: BTreeMap<(u32, Unwinder), Vec<RawSample>> = BTreeMap::new();
        for sample in samples {
            self.metrics
                .unwinder_samples(sample.unwinder)
                .inc_by(sample.count);
            by_pid
                .entry((sample.pid, sample.unwinder))
                .or_default()
                .push(sample);
        }
        let infos: HashMap<u32, ProcessInfo> = by_pid
            .keys()
            .map(|(pid, _)| (*pid, processes.get(*pid).clone()))
            .collect();
        // Symbolize the cycle's user addresses file by file first (see `Symbolizer::prefetch_user`: it
        // bounds the memory blazesym holds to one file); the stacks below are then answered from the
        // cache. A panic here loses nothing: the per-process path below symbolizes what is missing and
        // contains its own panics.
        let prefetch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let stacks = by_pid.iter().flat_map(|((pid, _), samples)| {
                let info = &infos[pid];
                samples.iter().map(move |sample| {
                    let usable = usable_frame_pointer_frames(info, &sample.user_stack);
                    (
                        *pid,
                        info,
                        &sample.user_stack[..usable.min(sample.user_stack.len())],
                    )
                })
            });
            symbolizer.prefetch_user(&self.proc_root, stacks);
        }));
        if prefetch.is_err() {
            tracing::error!("symbolization panicked while prefetching a cycle's addresses");
            symbolizer.release_parsed_files();
        }
        for ((pid, unwinder), samples) in by_pid {
            let info = &infos[&pid];
            let labels = labels_cache
                .entry((pid, unwinder))
                .or_insert_with(|| {
                    let mut labels = process_labels(
                        info,
                        pid,
                        &self.proc_root,
                        &self.node_name,
                        &self.static_labels,
                        self.pid_label,
                    );
                    labels.insert("unwinder".to_string(), unwinder.label().to_string());
                    relabel::apply(&self.rules, labels)
                })
                .clone();
            let Some(labels) = labels else {
                continue; // dropped by relabeling
            };
            let proc_root = self.proc_root.clone();
            let stacks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                samples
                    .iter()
                    .map(|sample| self.stack(symbolizer, &proc_root, pid, info, sample))
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
            // for it and drop the rest. (A DWARF walk never goes past such an address.)
            let mapped = usable_frame_pointer_frames(info, &sample.user_stack);
            let user_stack = &sample.user_stack[..mapped.min(sample.user_stack.len())];
            let mut frames = symbolizer.user_frames(proc_root, pid, info, user_stack);
            // The DWARF walk stopped at JIT code: its last frame is in memory without a file or tables.
            if sample.user_stack_end == StackEnd::Jit {
                if let Some(last) = frames.last_mut() {
                    *last = marker("[jit]");
                }
            }
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
            // Cut at the depth limit or the end of the stack copy: say so at the root end.
            if sample.user_stack_end == StackEnd::Truncated {
                stack.push(StackFrame {
                    address: 0,
                    mapping: None,
                    frames: marker("[truncated]"),
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
        symbolizer.set_kept_files_max_bytes(self.symbol_files_max_bytes);
        let mut unwinder = DwarfUnwinder::new(self.unwind_table_max_bytes);
        let mut pending: PendingSamples = Default::default();
        let mut previous_stats = BpfStats::default();
        let mut previous_unwind = unwinder.stats();
        let mut cycle_start = SystemTime::now();
        let mut next_drain = Instant::now() + self.drain_interval;
        let mut next_peek = Instant::now() + PEEK_INTERVAL;
        let dwarf = sampler.dwarf_mode();
        // Shutdown unparks this thread, which otherwise sleeps until its next deadline: every wake-up
        // is CPU that a profiler at 19 Hz cannot spare. (Not a tokio timer: each of its expiries
        // wakes a runtime worker as well as this thread.)
        let profiler_thread = std::thread::current();
        let unpark_on_shutdown = {
            let shutdown = shutdown.clone();
            runtime.spawn(async move {
                shutdown.wait().await;
                profiler_thread.unpark();
            })
        };
        loop {
            let stopping = loop {
                if shutdown.is_triggered() {
                    break true;
                }
                let now = Instant::now();
                if now >= next_drain {
                    break false;
                }
                let mut wait = (next_drain - now).min(next_peek.saturating_duration_since(now));
                if dwarf {
                    wait = wait.min(EVENT_POLL_INTERVAL);
                }
                // An unpark that came before this call makes it return at once: no lost wake-up.
                std::thread::park_timeout(wait);
                if dwarf {
                    sampler.poll_events(&mut |event| {
                        handle_stack_event(
                            event,
                            &self.proc_root,
                            &mut processes,
                            &mut unwinder,
                            &mut pending,
                        )
                    });
                }
                let now = Instant::now();
                if now < next_peek {
                    continue;
                }
                next_peek = now + PEEK_INTERVAL;
                if now + PEEK_INTERVAL >= next_drain {
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
            let drained = sampler.drain(&mut |event| {
                handle_stack_event(
                    event,
                    &self.proc_root,
                    &mut processes,
                    &mut unwinder,
                    &mut pending,
                )
            });
            match drained {
                Ok(drained) => {
                    self.update_stats(&sampler, &mut previous_stats);
                    let mut samples = drained.samples;
                    let generation_pending = std::mem::take(&mut pending[drained.generation as usize]);
                    let fallbacks = Metrics::kind(&self.metrics.dwarf_fallbacks, "fewer_frames");
                    samples.extend(resolve_pending(
                        generation_pending,
                        &drained.stacks,
                        &mut processes,
                        |count| {
                            fallbacks.inc_by(count);
                        },
                    ));
                    self.update_unwind_stats(&unwinder, &mut previous_unwind);
                    let symbolize_before = symbolizer.stats();
                    // Labels depend on /proc and are recomputed every cycle (pid reuse, exec).
                    let mut labels_cache = HashMap::new();
                    let output =
                        self.build_cycle(samples, &mut processes, &mut symbolizer, &mut labels_cache);
                    self.metrics.stacks.inc_by(output.keys as u64);
                    let symbolize_after = symbolizer.stats();
                    self.metrics
                        .symbolization_failures
                        .inc_by(symbolize_after.failures - symbolize_before.failures);
                    self.metrics
                        .symbol_files_parsed
                        .inc_by(symbolize_after.files_parsed - symbolize_before.files_parsed);
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
            self.metrics.cycles.inc();
            unwinder.end_cycle();
            cycle_start = cycle_end;
            processes.expire();
            // Parsed DWARF and mapped files are the bulk of the memory: release them after every cycle
            // (but the few files kept within their budget); the result caches keep the answers, so only
            // new addresses pay for re-parsing.
            symbolizer.end_cycle();
            self.metrics
                .symbol_files_kept_bytes
                .set(symbolizer.stats().kept_file_bytes);
            if stopping {
                unpark_on_shutdown.abort();
                return;
            }
        }
    }

    fn update_unwind_stats(&self, unwinder: &DwarfUnwinder, previous: &mut crate::unwind::UnwindStats) {
        let now = unwinder.stats();
        let delta = |now: u64, before: u64| now.saturating_sub(before);
        self.metrics
            .dwarf_unwound
            .inc_by(delta(now.stacks, previous.stacks));
        self.metrics
            .dwarf_unwind_nanoseconds
            .inc_by(delta(now.unwind_nanos, previous.unwind_nanos));
        Metrics::kind(&self.metrics.dwarf_stack_ends, "truncated")
            .inc_by(delta(now.truncated, previous.truncated));
        Metrics::kind(&self.metrics.dwarf_stack_ends, "jit").inc_by(delta(now.jit, previous.jit));
        self.metrics.unwind_table_bytes.set(unwinder.table_bytes() as u64);
        self.metrics
            .unwind_table_files
            .set(unwinder.cached_files() as u64);
        *previous = now;
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
        Metrics::kind(&self.metrics.dwarf_fallbacks, "ring_full")
            .inc_by(delta(now.ring_full, previous.ring_full));
        Metrics::kind(&self.metrics.dwarf_fallbacks, "copy_failed")
            .inc_by(delta(now.copy_failed, previous.copy_failed));
        self.metrics
            .stack_copy_full
            .inc_by(delta(now.copy_full, previous.copy_full));
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
            unwind_table_max_bytes: crate::unwind::DEFAULT_MAX_TABLE_BYTES,
            symbol_files_max_bytes: crate::symbolize::DEFAULT_KEPT_FILES_MAX_BYTES,
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
            unwinder: Unwinder::FramePointer,
            user_stack_end: StackEnd::Complete,
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
            unwinder: Unwinder::FramePointer,
            user_stack_end: StackEnd::Complete,
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
            unwinder: Unwinder::FramePointer,
            user_stack_end: StackEnd::Complete,
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

    fn function_names(builder: ProfileBuilder) -> Vec<Vec<String>> {
        let profile = builder.finish(0, 1, 1);
        profile
            .sample
            .iter()
            .map(|sample| {
                sample
                    .location_id
                    .iter()
                    .map(|id| {
                        let location = &profile.location[(*id - 1) as usize];
                        let function = &profile.function[(location.line[0].function_id - 1) as usize];
                        profile.string_table[function.name as usize].clone()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn dwarf_stacks_get_their_label_and_markers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profiler = profiler(dir.path());
        let pid = std::process::id();
        let address = dwarf_stacks_get_their_label_and_markers as fn() as usize as u64;
        let sample = |end: StackEnd, unwinder: Unwinder| RawSample {
            pid,
            user_stack: vec![address, address + 1],
            kernel_stack: vec![],
            user_stack_lost: false,
            kernel_stack_lost: false,
            count: 1,
            unwinder,
            user_stack_end: end,
        };
        let samples = vec![
            sample(StackEnd::Truncated, Unwinder::Dwarf),
            sample(StackEnd::Jit, Unwinder::Dwarf),
            sample(StackEnd::Complete, Unwinder::FramePointer),
        ];
        let mut processes = ProcessCache::new("/proc", Duration::ZERO, Duration::from_secs(60));
        let mut symbolizer = Symbolizer::new(1024);
        let output = profiler.build_cycle(samples, &mut processes, &mut symbolizer, &mut HashMap::new());
        assert_eq!(output.series.len(), 2, "one series per unwinder");
        for (labels, builder) in output.series {
            let stacks = function_names(builder);
            match labels.get("unwinder").map(String::as_str) {
                Some("dwarf") => {
                    assert_eq!(stacks.len(), 2);
                    assert!(
                        stacks
                            .iter()
                            .any(|stack| stack.last().map(String::as_str) == Some("[truncated]")),
                        "{stacks:?}"
                    );
                    // The JIT frame replaces the last (root-most) frame of the walk.
                    assert!(
                        stacks.iter().any(|stack| stack.len() == 2 && stack[1] == "[jit]"),
                        "{stacks:?}"
                    );
                }
                Some("fp") => {
                    assert_eq!(stacks.len(), 1);
                    assert!(!stacks[0].iter().any(|name| name.starts_with('[')), "{stacks:?}");
                }
                other => panic!("unexpected unwinder label {other:?}"),
            }
        }
    }

    #[test]
    fn dwarf_walks_shallower_than_frame_pointers_fall_back() {
        let pid = std::process::id();
        let address = dwarf_walks_shallower_than_frame_pointers_fall_back as fn() as usize as u64;
        let mut stacks = HashMap::new();
        stacks.insert(5, vec![address, address + 1, address + 2]);
        stacks.insert(6, vec![address]);
        stacks.insert(7, vec![0xffff_ffff_8100_0000]);
        let pending_sample = |user_stack_id: i32, frames: Vec<u64>| PendingSample {
            pid,
            user_stack_id,
            kernel_stack_id: 7,
            unwound: UnwoundStack {
                frames,
                end: StackEnd::Complete,
            },
        };
        let mut pending = HashMap::new();
        // Shallower than its frame-pointer stack (3 frames): falls back.
        pending.insert(pending_sample(5, vec![address]), 4);
        // Deeper than its frame-pointer stack (1 frame): stays DWARF.
        pending.insert(pending_sample(6, vec![address, address + 1]), 2);
        let mut processes = ProcessCache::new("/proc", Duration::ZERO, Duration::from_secs(60));
        let mut fallbacks = 0;
        let mut samples = resolve_pending(pending, &stacks, &mut processes, |count| {
            fallbacks += count;
        });
        samples.sort_by_key(|sample| sample.count);
        assert_eq!(fallbacks, 4);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].unwinder, Unwinder::Dwarf);
        assert_eq!(samples[0].user_stack, vec![address, address + 1]);
        assert_eq!(samples[1].unwinder, Unwinder::FramePointer);
        assert_eq!(samples[1].user_stack.len(), 3);
        assert_eq!(samples[1].kernel_stack, vec![0xffff_ffff_8100_0000]);
    }
}
