//! The BPF side of the CPU profiler: loads `bpf/profiler.bpf.c` (compiled by `build.rs`, embedded in the
//! binary), attaches it to one software cpu-clock perf event per online CPU, and drains the in-kernel
//! counts.
//!
//! Drain protocol (see ARCHITECTURE.md, "Agent"): samples go to generation `g` of two (counts, stacks)
//! map pairs. [`Sampler::drain`] flips the generation, waits until no program that may have read `g` is
//! still running (per-CPU in-flight sequence numbers), then reads and empties generation `g`, which no
//! program writes any more. So every sample lands in exactly one drain.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, StackTraceMap};
use aya::programs::perf_event::{perf_sw_ids, PerfEventScope, PerfTypeId, SamplePolicy};
use aya::programs::PerfEvent;
use aya::{Ebpf, EbpfLoader, Pod};

/// The compiled BPF object, embedded at build time.
static PROFILER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler.bpf.o"));

/// Stack id the BPF program stores when the stack map bucket held another stack (`-EEXIST`).
pub const STACK_ID_COLLISION: i32 = -2;
/// Stack id the BPF program stores when the stack map was full (`-ENOMEM`).
pub const STACK_ID_MAP_FULL: i32 = -3;

/// How long a drain waits for a program still running on the old generation before giving up (a BPF
/// program runs for microseconds; this bound is only hit if a CPU went offline mid-sample).
const QUIESCE_DEADLINE: Duration = Duration::from_millis(200);

/// Why the sampler could not start. The message names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// Loading or attaching failed; `diagnosis` says the likely cause (privileges, BTF, perf_event_paranoid).
    #[error("cannot load the BPF CPU profiler: {diagnosis} ({detail})")]
    Unavailable {
        /// What is missing, in words a user can act on.
        diagnosis: String,
        /// The underlying error.
        detail: String,
    },
    /// A map operation failed during a drain.
    #[error("BPF map {map}: {detail}")]
    Map {
        /// Which map.
        map: &'static str,
        /// The underlying error.
        detail: String,
    },
}

/// The key of the in-kernel counts map; layout shared with `struct sample_key` in the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (tgid) of the sampled task.
    pub tgid: u32,
    /// User stack id, or a negative marker.
    pub user_stack_id: i32,
    /// Kernel stack id, or a negative marker.
    pub kernel_stack_id: i32,
}

// SAFETY: plain-old-data, `repr(C)`, no padding (three 4-byte fields), any bit pattern is valid.
unsafe impl Pod for SampleKey {}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    generation: u32,
}

// SAFETY: plain-old-data, `repr(C)`, a single u32.
unsafe impl Pod for Control {}

/// Counters kept by the BPF program, summed over CPUs, since it was loaded. Indices match `enum stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfStats {
    /// Samples charged to a process.
    pub samples: u64,
    /// Samples of the idle task (not recorded).
    pub idle: u64,
    /// `bpf_get_stackid` collisions for user stacks.
    pub user_collisions: u64,
    /// `bpf_get_stackid` collisions for kernel stacks.
    pub kernel_collisions: u64,
    /// Stack map full.
    pub stack_map_full: u64,
    /// Samples lost because the counts map was full.
    pub lost: u64,
    /// Programs that found the in-flight sequence odd on entry (expected 0).
    pub nested: u64,
}

/// One drained (process, user stack, kernel stack) with its sample count. Stacks are leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// Process id.
    pub pid: u32,
    /// User instruction pointers, leaf first; empty when there is none.
    pub user_stack: Vec<u64>,
    /// Kernel instruction pointers, leaf first; empty when there is none.
    pub kernel_stack: Vec<u64>,
    /// Set when the user stack was lost to a stack map collision or a full stack map.
    pub user_stack_lost: bool,
    /// Set when the kernel stack was lost to a stack map collision or a full stack map.
    pub kernel_stack_lost: bool,
    /// Samples.
    pub count: u64,
}

/// Sizes of the in-kernel maps.
#[derive(Debug, Clone, Copy)]
pub struct SamplerOptions {
    /// Samples per second per CPU.
    pub frequency_hz: u64,
    /// Entries of each counts map (distinct (pid, stack, stack) keys per drain interval).
    pub max_keys: u32,
    /// Entries of each stack map.
    pub max_stacks: u32,
}

/// The loaded, attached sampler. Dropping it detaches the programs and frees the maps.
pub struct Sampler {
    _ebpf: Ebpf,
    counts: [HashMap<MapData, SampleKey, u64>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    control: Array<MapData, Control>,
    inflight: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    generation: u32,
    cpus: usize,
}

fn unavailable(detail: impl std::fmt::Display) -> BpfError {
    BpfError::Unavailable {
        diagnosis: diagnose(),
        detail: detail.to_string(),
    }
}

/// Names the likely reason BPF cannot be used here: not root, missing capabilities, no kernel BTF,
/// perf events locked down.
pub fn diagnose() -> String {
    let mut reasons = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let capabilities = effective_capabilities();
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |cap: u32| capabilities.is_some_and(|bits| bits & (1u64 << cap) != 0);
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        let user = if euid == 0 {
            "root".to_string()
        } else {
            format!("uid {euid}, not root")
        };
        reasons.push(format!(
            "running as {user} without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN (start kiln-agent as root)"
        ));
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        reasons.push("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing)".to_string());
    }
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid") {
        if let Ok(level) = text.trim().parse::<i32>() {
            if level > 2 && !has(CAP_SYS_ADMIN) && !has(CAP_PERFMON) {
                reasons.push(format!(
                    "perf events are locked down (kernel.perf_event_paranoid = {level})"
                ));
            }
        }
    }
    if reasons.is_empty() {
        "the kernel refused the program or a perf event".to_string()
    } else {
        reasons.join("; ")
    }
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

impl Sampler {
    /// Loads the program and attaches it to every online CPU. On failure nothing stays attached and the
    /// error says what is missing.
    pub fn start(options: SamplerOptions) -> Result<Sampler, BpfError> {
        let max_keys = options.max_keys.max(64);
        let max_stacks = options.max_stacks.max(64);
        let mut ebpf = EbpfLoader::new()
            .set_max_entries("counts0", max_keys)
            .set_max_entries("counts1", max_keys)
            .set_max_entries("stacks0", max_stacks)
            .set_max_entries("stacks1", max_stacks)
            .load(PROFILER_OBJECT)
            .map_err(unavailable)?;
        let program: &mut PerfEvent = ebpf
            .program_mut("kiln_cpu_sample")
            .ok_or_else(|| unavailable("program kiln_cpu_sample missing from the object"))?
            .try_into()
            .map_err(unavailable)?;
        program.load().map_err(unavailable)?;
        let cpus =
            aya::util::online_cpus().map_err(|(what, error)| unavailable(format!("{what}: {error}")))?;
        for cpu in &cpus {
            program
                .attach(
                    PerfTypeId::Software,
                    perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK as u64,
                    PerfEventScope::AllProcessesOneCpu { cpu: *cpu },
                    SamplePolicy::Frequency(options.frequency_hz.max(1)),
                    false,
                )
                .map_err(|error| unavailable(format!("perf_event_open on CPU {cpu}: {error}")))?;
        }
        let possible =
            aya::util::nr_cpus().map_err(|(what, error)| unavailable(format!("{what}: {error}")))?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| unavailable(format!("map {name} missing from the object")))
        };
        let counts0 = HashMap::try_from(take("counts0")?).map_err(unavailable)?;
        let counts1 = HashMap::try_from(take("counts1")?).map_err(unavailable)?;
        let stacks0 = StackTraceMap::try_from(take("stacks0")?).map_err(unavailable)?;
        let stacks1 = StackTraceMap::try_from(take("stacks1")?).map_err(unavailable)?;
        let control = Array::try_from(take("control")?).map_err(unavailable)?;
        let inflight = PerCpuArray::try_from(take("inflight")?).map_err(unavailable)?;
        let stats = PerCpuArray::try_from(take("stats")?).map_err(unavailable)?;
        Ok(Sampler {
            _ebpf: ebpf,
            counts: [counts0, counts1],
            stacks: [stacks0, stacks1],
            control,
            inflight,
            stats,
            generation: 0,
            cpus: possible,
        })
    }

    /// The counters kept by the program, summed over CPUs.
    pub fn stats(&self) -> Result<BpfStats, BpfError> {
        let read = |index: u32| -> Result<u64, BpfError> {
            let values = self.stats.get(&index, 0).map_err(|error| BpfError::Map {
                map: "stats",
                detail: error.to_string(),
            })?;
            Ok(values.iter().sum())
        };
        Ok(BpfStats {
            samples: read(0)?,
            idle: read(1)?,
            user_collisions: read(2)?,
            kernel_collisions: read(3)?,
            stack_map_full: read(4)?,
            lost: read(5)?,
            nested: read(6)?,
        })
    }

    fn inflight_sequences(&self) -> Result<Vec<u64>, BpfError> {
        let values = self.inflight.get(&0, 0).map_err(|error| BpfError::Map {
            map: "inflight",
            detail: error.to_string(),
        })?;
        Ok(values.iter().copied().collect())
    }

    /// Switches new samples to the other generation and returns every sample of the old one, emptying
    /// it. Samples taken while this runs go to the new generation and come out of the next drain.
    pub fn drain(&mut self) -> Result<Vec<RawSample>, BpfError> {
        let old = self.generation & 1;
        let new = old ^ 1;
        // Snapshot the in-flight sequences *after* the flip: a program that read the old generation
        // had already made its sequence odd (full barrier in the program), so it shows odd here.
        self.control
            .set(0, Control { generation: new }, 0)
            .map_err(|error| BpfError::Map {
                map: "control",
                detail: error.to_string(),
            })?;
        self.generation = new;
        self.wait_for_quiescence()?;

        let map = &mut self.counts[old as usize];
        let mut entries = Vec::new();
        for item in map.iter() {
            match item {
                Ok(entry) => entries.push(entry),
                // A key deleted under the iterator would restart it; nobody deletes here, but be safe.
                Err(error) => {
                    return Err(BpfError::Map {
                        map: "counts",
                        detail: error.to_string(),
                    })
                }
            }
        }
        for (key, _) in &entries {
            // Ignore "not found": the only writer of this generation has finished, so it cannot race.
            let _ = map.remove(key);
        }

        let stack_map = &mut self.stacks[old as usize];
        let mut stacks: StdHashMap<i32, Vec<u64>> = StdHashMap::new();
        let wanted: HashSet<i32> = entries
            .iter()
            .flat_map(|(key, _)| [key.user_stack_id, key.kernel_stack_id])
            .filter(|id| *id >= 0)
            .collect();
        for id in &wanted {
            let frames = match stack_map.get(&(*id as u32), 0) {
                Ok(trace) => trace.frames().iter().map(|frame| frame.ip).collect(),
                Err(_) => Vec::new(),
            };
            stacks.insert(*id, frames);
        }
        // Empty the whole stack map, including stacks whose count update failed (map full).
        let ids: Vec<u32> = stack_map.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stack_map.remove(&id);
        }

        let stack = |id: i32| stacks.get(&id).cloned().unwrap_or_default();
        let lost = |id: i32| id == STACK_ID_COLLISION || id == STACK_ID_MAP_FULL;
        Ok(entries
            .into_iter()
            .map(|(key, count)| RawSample {
                pid: key.tgid,
                user_stack: stack(key.user_stack_id),
                kernel_stack: stack(key.kernel_stack_id),
                user_stack_lost: lost(key.user_stack_id),
                kernel_stack_lost: lost(key.kernel_stack_id),
                count,
            })
            .collect())
    }

    /// The processes sampled so far in the current generation, read without changing anything, so that
    /// their `/proc` information can be captured before they exit. Concurrent inserts may be missed.
    pub fn peek_pids(&self) -> HashSet<u32> {
        let map = &self.counts[(self.generation & 1) as usize];
        map.keys().filter_map(Result::ok).map(|key| key.tgid).collect()
    }

    fn wait_for_quiescence(&self) -> Result<(), BpfError> {
        let snapshot = self.inflight_sequences()?;
        let busy: Vec<usize> = (0..snapshot.len().min(self.cpus))
            .filter(|cpu| snapshot[*cpu] & 1 == 1)
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + QUIESCE_DEADLINE;
        loop {
            let now = self.inflight_sequences()?;
            if busy.iter().all(|cpu| now.get(*cpu) != snapshot.get(*cpu)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    ?busy,
                    "a BPF program did not finish within {QUIESCE_DEADLINE:?}; draining anyway"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
