//! The BPF side of the CPU profiler: loads `bpf/profiler.bpf.c` (compiled by `build.rs`, embedded in the
//! binary), attaches it to one software cpu-clock perf event per online CPU, and drains the in-kernel
//! counts.
//!
//! Drain protocol (see ARCHITECTURE.md, "Agent"): samples go to generation `g` of two (counts, stacks)
//! map pairs. [`Sampler::drain`] flips the generation, waits until no program that may have read `g` is
//! still running (per-CPU in-flight sequence numbers), then reads and empties generation `g`, which no
//! program writes any more. So every sample lands in exactly one drain.
//!
//! DWARF mode (`SamplerOptions::stack_copy_bytes > 0`): a sample with a user stack goes to the
//! `stack_events` ring buffer instead of the counts map (registers, the top of the user stack, the
//! frame-pointer and kernel stack ids of its generation). [`Sampler::poll_events`] consumes the ring
//! continuously; [`Sampler::drain`] consumes it until every event of the old generation has been seen
//! (the program counts them per generation), then returns that generation's stack maps so the events
//! can be resolved before the maps are emptied.

mod map_ops;

use std::collections::{HashMap as StdHashMap, HashSet};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf, StackTraceMap};
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

/// Upper bound of the user stack bytes the BPF program copies per sample (`MAX_STACK_COPY` in C).
pub const MAX_STACK_COPY_BYTES: u32 = 32768;

/// Size of `struct stack_event`'s header (everything before the stack bytes).
const STACK_EVENT_HEADER_SIZE: usize = 48;

/// `STACK_EVENT_COPY_FULL`: the copy stopped at the configured size; the stack may go on beyond it.
const STACK_EVENT_COPY_FULL: u32 = 1;

/// A drain reads only the stacks its samples and stack events name, and sweeps the whole stack map
/// (one more call per stack) when something may have left a stack nobody names, and at least this
/// often, as a safety net.
const SWEEP_EVERY_DRAINS: u64 = 32;

/// Entries of the program's `stats` array (`STAT_COUNT` in C).
const STAT_COUNT: usize = 11;

/// Index of `STAT_LOST` (the counts map was full) in the `stats` array.
const STAT_LOST: usize = 5;

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

impl SampleKey {
    /// Reads a key as the kernel stores it (`struct sample_key`, native order); `None` when
    /// `bytes` is too short.
    fn from_bytes(bytes: &[u8]) -> Option<SampleKey> {
        Some(SampleKey {
            tgid: map_ops::u32_at(bytes, 0)?,
            user_stack_id: map_ops::u32_at(bytes, 4)? as i32,
            kernel_stack_id: map_ops::u32_at(bytes, 8)? as i32,
        })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    generation: u32,
    stack_copy_bytes: u32,
}

// SAFETY: plain-old-data, `repr(C)`, two u32s, no padding.
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
    /// DWARF mode: samples that found the ring buffer full and went to the counts map (FP stacks).
    pub ring_full: u64,
    /// DWARF mode: samples without readable user registers or stack, counted with FP stacks instead.
    pub copy_failed: u64,
    /// DWARF mode: stack copies that hit the configured size (deeper stacks are cut there).
    pub copy_full: u64,
    /// DWARF mode: samples sent to the ring buffer.
    pub events: u64,
}

/// One DWARF-mode sample as read from the ring buffer: the user registers at the sample, the copied top
/// of the user stack, and the frame-pointer and kernel stack ids in the stack map of `generation`.
#[derive(Debug, Clone, Copy)]
pub struct StackEvent<'a> {
    /// Process id.
    pub pid: u32,
    /// The generation (0 or 1) whose stack map holds the ids.
    pub generation: u32,
    /// Frame-pointer user stack id (the fallback), or a negative marker.
    pub user_stack_id: i32,
    /// Kernel stack id, or a negative marker.
    pub kernel_stack_id: i32,
    /// User instruction pointer.
    pub ip: u64,
    /// User stack pointer; `stack[0]` is the byte at this address.
    pub sp: u64,
    /// User frame pointer register (rbp).
    pub bp: u64,
    /// The stack bytes from `sp` upwards.
    pub stack: &'a [u8],
    /// True when the copy stopped at the configured size (not at the end of the stack's memory).
    pub copy_full: bool,
}

impl<'a> StackEvent<'a> {
    /// Parses a ring buffer record; `None` when it is shorter than its header says (never expected:
    /// the layout is shared with the C program).
    pub fn parse(record: &'a [u8]) -> Option<StackEvent<'a>> {
        let u32_at = |offset: usize| map_ops::u32_at(record, offset);
        let u64_at = |offset: usize| map_ops::u64_at(record, offset);
        let stack_len = u32_at(40)? as usize;
        let stack = record.get(STACK_EVENT_HEADER_SIZE..STACK_EVENT_HEADER_SIZE.checked_add(stack_len)?)?;
        Some(StackEvent {
            pid: u32_at(0)?,
            generation: u32_at(4)? & 1,
            user_stack_id: u32_at(8)? as i32,
            kernel_stack_id: u32_at(12)? as i32,
            ip: u64_at(16)?,
            sp: u64_at(24)?,
            bp: u64_at(32)?,
            stack,
            copy_full: u32_at(44)? & STACK_EVENT_COPY_FULL != 0,
        })
    }
}

/// What one drain returns: the counted samples of the old generation and every stack of its stack map
/// (by id), for resolving the stack ids of that generation's stack events.
#[derive(Debug, Default)]
pub struct Drained {
    /// The generation that was drained (0 or 1).
    pub generation: u32,
    /// Samples from the counts map (frame-pointer stacks), resolved.
    pub samples: Vec<RawSample>,
    /// Every stack that the generation's counted samples and stack events name, by id, leaf first
    /// (the generation's stack map is empty afterwards, but for stacks of lost samples, which a
    /// later drain sweeps).
    pub stacks: StdHashMap<i32, Vec<u64>>,
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
    /// Which unwinder produced `user_stack`.
    pub unwinder: Unwinder,
    /// How the user stack ended (DWARF unwinding marks truncation and JIT code).
    pub user_stack_end: StackEnd,
}

/// The unwinder that produced a user stack; the `unwinder` label of the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unwinder {
    /// The kernel's frame-pointer walk (`bpf_get_stackid`).
    FramePointer,
    /// User-space .eh_frame / .debug_frame unwinding of the copied stack.
    Dwarf,
}

impl Unwinder {
    /// The label value: `fp` or `dwarf`.
    pub fn label(self) -> &'static str {
        match self {
            Unwinder::FramePointer => "fp",
            Unwinder::Dwarf => "dwarf",
        }
    }
}

/// How a user stack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum StackEnd {
    /// At its root, or where the unwinder could go no further (no marker).
    #[default]
    Complete,
    /// Cut at the depth limit or at the end of the copied stack: a `[truncated]` frame follows.
    Truncated,
    /// The last frame is in JIT code (executable memory without a file): it is shown as `[jit]`.
    Jit,
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
    /// User stack bytes copied per sample for DWARF unwinding (at most [`MAX_STACK_COPY_BYTES`]);
    /// 0 keeps frame-pointer stacks only (no ring buffer traffic).
    pub stack_copy_bytes: u32,
    /// Size of the stack event ring buffer in bytes (rounded up to a power of two, at least 64 KiB);
    /// `None` sizes it for this host ([`auto_ring_buffer_bytes`]).
    pub ring_buffer_bytes: Option<u32>,
}

/// Smallest and largest ring [`auto_ring_buffer_bytes`] chooses.
const AUTO_RING_MIN_BYTES: u64 = 256 * 1024;
const AUTO_RING_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The stack event ring's size when the configuration does not give one: about a second of events
/// from every online CPU at the sampling frequency, as a power of two from 256 KiB to 4 MiB. The
/// profiler thread empties the ring every 50 ms, but a cycle that parses a large symbol file keeps
/// it busy for a few hundred; a full ring sends samples to their frame-pointer stacks (counted).
/// Why not always the largest: the kernel maps the ring's data pages twice, so a 4 MiB ring is 8 MB
/// of the agent's RSS, where 2 CPUs at 19 Hz with 16 KiB copies send about 0.6 MB a second.
pub fn auto_ring_buffer_bytes(online_cpus: usize, frequency_hz: u64, stack_copy_bytes: u32) -> u32 {
    // Each record: the event header, the copied stack, and the ring's own 8-byte record header.
    let event_bytes = u64::from(stack_copy_bytes) + STACK_EVENT_HEADER_SIZE as u64 + 8;
    let per_second = (online_cpus as u64)
        .saturating_mul(frequency_hz)
        .saturating_mul(event_bytes);
    let bytes = per_second
        .clamp(AUTO_RING_MIN_BYTES, AUTO_RING_MAX_BYTES)
        .next_power_of_two();
    debug_assert!(bytes <= AUTO_RING_MAX_BYTES);
    bytes as u32
}

/// The loaded, attached sampler. Dropping it detaches the programs and frees the maps.
pub struct Sampler {
    _ebpf: Ebpf,
    counts: [HashMap<MapData, SampleKey, u64>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    control: Array<MapData, Control>,
    inflight: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    /// The stack event ring, mapped in DWARF mode only: frame-pointer mode never writes to it, and its
    /// data pages, mapped twice, counted 8 MB of the agent's RSS for a 4 MiB ring.
    events: Option<RingBuf<MapData>>,
    events_sent: PerCpuArray<MapData, u64>,
    /// Stack events consumed per generation since loading (compared with the program's `events_sent`).
    events_consumed: [u64; 2],
    stack_copy_bytes: u32,
    generation: u32,
    cpus: usize,
    /// The same maps for the calls aya lacks (batches, lookup-and-delete); they borrow the
    /// descriptors of the aya maps above, which live exactly as long.
    raw: RawMaps,
    /// Stack ids named by the stack events handed out per generation since its last drain.
    event_stack_ids: [HashSet<u32>; 2],
    /// Drains that must still sweep their whole stack map (see [`SWEEP_EVERY_DRAINS`]).
    sweeps_owed: u32,
    /// The program's lost-sample count at the last drain (a lost count leaves its stacks behind).
    lost_at_last_drain: u64,
    drains: u64,
}

/// The sampler's maps as [`map_ops::RawMap`]s, and which of the calls aya lacks the kernel has.
struct RawMaps {
    counts: [map_ops::RawMap; 2],
    stacks: [map_ops::RawMap; 2],
    stats: map_ops::RawMap,
    /// `BPF_MAP_LOOKUP[_AND_DELETE]_BATCH` on the counts maps.
    counts_batch: bool,
    /// `BPF_MAP_LOOKUP_BATCH` on the stats array.
    stats_batch: bool,
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on the stack maps.
    take_stack_in_one_call: bool,
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
        let possible =
            aya::util::nr_cpus().map_err(|(what, error)| unavailable(format!("{what}: {error}")))?;
        // The DWARF path exists for x86-64 only (the C program compiles it out elsewhere).
        let stack_copy_bytes = if cfg!(target_arch = "x86_64") {
            options.stack_copy_bytes.min(MAX_STACK_COPY_BYTES)
        } else {
            0
        };
        let online =
            aya::util::online_cpus().map_err(|(what, error)| unavailable(format!("{what}: {error}")))?;
        let ring_buffer_bytes = if stack_copy_bytes > 0 {
            options
                .ring_buffer_bytes
                .unwrap_or_else(|| {
                    auto_ring_buffer_bytes(online.len(), options.frequency_hz.max(1), stack_copy_bytes)
                })
                .max(64 * 1024)
                .next_power_of_two()
        } else {
            // The smallest ring the kernel accepts (a power of two, whole pages): the map must exist,
            // the program refers to it.
            page_bytes()
        };
        let mut ebpf = EbpfLoader::new()
            .set_max_entries("counts0", max_keys)
            .set_max_entries("counts1", max_keys)
            .set_max_entries("stacks0", max_stacks)
            .set_max_entries("stacks1", max_stacks)
            .set_max_entries("scratch", if stack_copy_bytes > 0 { possible as u32 } else { 1 })
            .set_max_entries("stack_events", ring_buffer_bytes)
            .load(PROFILER_OBJECT)
            .map_err(unavailable)?;
        let program: &mut PerfEvent = ebpf
            .program_mut("kiln_cpu_sample")
            .ok_or_else(|| unavailable("program kiln_cpu_sample missing from the object"))?
            .try_into()
            .map_err(unavailable)?;
        program.load().map_err(unavailable)?;
        for cpu in &online {
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
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| unavailable(format!("map {name} missing from the object")))
        };
        let mut take_described = |name: &'static str| -> Result<(Map, map_ops::RawMap), BpfError> {
            let map = take(name)?;
            let raw = map_ops::RawMap::describe(name, &map, possible).map_err(unavailable)?;
            Ok((map, raw))
        };
        let (counts0, counts0_raw) = take_described("counts0")?;
        let (counts1, counts1_raw) = take_described("counts1")?;
        let (stacks0, stacks0_raw) = take_described("stacks0")?;
        let (stacks1, stacks1_raw) = take_described("stacks1")?;
        let (stats, stats_raw) = take_described("stats")?;
        let counts0 = HashMap::try_from(counts0).map_err(unavailable)?;
        let counts1 = HashMap::try_from(counts1).map_err(unavailable)?;
        let stacks0 = StackTraceMap::try_from(stacks0).map_err(unavailable)?;
        let stacks1 = StackTraceMap::try_from(stacks1).map_err(unavailable)?;
        let stats = PerCpuArray::try_from(stats).map_err(unavailable)?;
        // Generation 0 is live: probe on generation 1's maps, which nothing writes yet.
        let raw = RawMaps {
            counts_batch: counts1_raw.probe_batch().map_err(unavailable)?,
            stats_batch: stats_raw.probe_batch().map_err(unavailable)?,
            take_stack_in_one_call: stacks1_raw.probe_take_stack().map_err(unavailable)?,
            counts: [counts0_raw, counts1_raw],
            stacks: [stacks0_raw, stacks1_raw],
            stats: stats_raw,
        };
        tracing::debug!(
            counts_batch = raw.counts_batch,
            stats_batch = raw.stats_batch,
            take_stack_in_one_call = raw.take_stack_in_one_call,
            "BPF map operations the kernel has"
        );
        let mut control = Array::try_from(take("control")?).map_err(unavailable)?;
        let inflight = PerCpuArray::try_from(take("inflight")?).map_err(unavailable)?;
        let events = if stack_copy_bytes > 0 {
            Some(RingBuf::try_from(take("stack_events")?).map_err(unavailable)?)
        } else {
            None
        };
        let events_sent = PerCpuArray::try_from(take("events_sent")?).map_err(unavailable)?;
        // Turn DWARF mode on last: until now the program ran with stack_copy_bytes = 0 (counts only).
        control
            .set(
                0,
                Control {
                    generation: 0,
                    stack_copy_bytes,
                },
                0,
            )
            .map_err(unavailable)?;
        Ok(Sampler {
            _ebpf: ebpf,
            counts: [counts0, counts1],
            stacks: [stacks0, stacks1],
            control,
            inflight,
            stats,
            events,
            events_sent,
            events_consumed: [0, 0],
            stack_copy_bytes,
            generation: 0,
            cpus: possible,
            raw,
            event_stack_ids: [HashSet::new(), HashSet::new()],
            sweeps_owed: 0,
            lost_at_last_drain: 0,
            drains: 0,
        })
    }

    /// True when samples with a user stack go to the ring buffer for DWARF unwinding.
    pub fn dwarf_mode(&self) -> bool {
        self.stack_copy_bytes > 0
    }

    /// Hands every stack event committed so far to `on_event`, in ring order, and consumes it. Each
    /// event is handed over exactly once (the ring's consumer position moves past it).
    pub fn poll_events(&mut self, on_event: &mut dyn FnMut(&StackEvent<'_>)) -> usize {
        let mut handled = 0;
        let Some(events) = self.events.as_mut() else {
            return 0;
        };
        while let Some(record) = events.next() {
            handled += 1;
            match StackEvent::parse(&record) {
                Some(event) => {
                    self.events_consumed[event.generation as usize] += 1;
                    self.event_stack_ids[event.generation as usize]
                        .extend(stored_stack_ids(event.user_stack_id, event.kernel_stack_id));
                    on_event(&event);
                }
                None => {
                    tracing::warn!(len = record.len(), "malformed stack event skipped");
                    // Its stacks are named by nobody now: the next drains of both generations
                    // sweep.
                    self.sweeps_owed = 2;
                }
            }
        }
        handled
    }

    fn events_sent(&self, generation: u32) -> Result<u64, BpfError> {
        let values = self
            .events_sent
            .get(&generation, 0)
            .map_err(|error| BpfError::Map {
                map: "events_sent",
                detail: error.to_string(),
            })?;
        Ok(values.iter().sum())
    }

    /// The counters kept by the program, summed over CPUs.
    pub fn stats(&self) -> Result<BpfStats, BpfError> {
        let totals = self.stat_totals()?;
        let read = |index: usize| totals.get(index).copied().unwrap_or(0);
        Ok(BpfStats {
            samples: read(0),
            idle: read(1),
            user_collisions: read(2),
            kernel_collisions: read(3),
            stack_map_full: read(4),
            lost: read(5),
            nested: read(6),
            ring_full: read(7),
            copy_failed: read(8),
            copy_full: read(9),
            events: read(10),
        })
    }

    /// Every counter of the `stats` array (indices of `enum stat` in C), summed over CPUs: one batch
    /// call where the kernel has it.
    fn stat_totals(&self) -> Result<Vec<u64>, BpfError> {
        let map_error = |error: &dyn std::fmt::Display| BpfError::Map {
            map: "stats",
            detail: error.to_string(),
        };
        let mut totals = vec![0u64; STAT_COUNT];
        if self.raw.stats_batch {
            self.raw
                .stats
                .for_each(false, &mut |key, per_cpu_values| {
                    let Some(index) = map_ops::u32_at(key, 0) else {
                        return;
                    };
                    if let Some(total) = totals.get_mut(index as usize) {
                        // One 8-byte slot per possible CPU.
                        *total = per_cpu_values
                            .chunks_exact(8)
                            .filter_map(|slot| map_ops::u64_at(slot, 0))
                            .sum();
                    }
                })
                .map_err(|error| map_error(&error))?;
            return Ok(totals);
        }
        for (index, total) in totals.iter_mut().enumerate() {
            let values = self
                .stats
                .get(&(index as u32), 0)
                .map_err(|error| map_error(&error))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    fn inflight_sequences(&self) -> Result<Vec<u64>, BpfError> {
        let values = self.inflight.get(&0, 0).map_err(|error| BpfError::Map {
            map: "inflight",
            detail: error.to_string(),
        })?;
        Ok(values.iter().copied().collect())
    }

    /// Switches new samples to the other generation and returns every counted sample of the old one,
    /// emptying it. Stack events of the old generation still in the ring buffer are handed to
    /// `on_event` first (all of them: the program's per-generation count is final after quiescence),
    /// and the stacks they name come back in [`Drained::stacks`] so that those events can be
    /// resolved. Samples taken while this runs go to the new generation and come out of the next drain.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(&StackEvent<'_>)) -> Result<Drained, BpfError> {
        let old = self.generation & 1;
        let new = old ^ 1;
        let lost_before_flip = self.lost_count()?;
        // Snapshot the in-flight sequences *after* the flip: a program that read the old generation
        // had already made its sequence odd (full barrier in the program), so it shows odd here.
        let stack_copy_bytes = self.stack_copy_bytes;
        self.control
            .set(
                0,
                Control {
                    generation: new,
                    stack_copy_bytes,
                },
                0,
            )
            .map_err(|error| BpfError::Map {
                map: "control",
                detail: error.to_string(),
            })?;
        self.generation = new;
        let quiet = self.wait_for_quiescence()?;
        let arrived = self.consume_generation(old, on_event)?;
        if lost_before_flip != self.lost_at_last_drain || !quiet || !arrived {
            // A lost sample leaves its stacks in the map of the generation it was taken in: this
            // one, or the other when it came between the last drain's read and its flip. A late
            // program or event may name a stack this drain does not know of.
            self.sweeps_owed = 2;
        }
        self.lost_at_last_drain = lost_before_flip;
        self.drains += 1;
        let sweep = self.sweeps_owed > 0 || self.drains.is_multiple_of(SWEEP_EVERY_DRAINS);
        self.sweeps_owed = self.sweeps_owed.saturating_sub(1);

        let entries = self.take_counts(old)?;
        // The stacks to read and delete: those the counts and the stack events name. Every stored
        // stack is named by one of them unless its sample was lost (then `sweep`).
        let mut ids = std::mem::take(&mut self.event_stack_ids[old as usize]);
        for (key, _) in &entries {
            ids.extend(stored_stack_ids(key.user_stack_id, key.kernel_stack_id));
        }
        if sweep {
            ids.extend(self.stacks[old as usize].stack_ids().filter_map(Result::ok));
        }
        let stacks = self.take_stacks(old, ids);

        let samples = entries
            .into_iter()
            .map(|(key, count)| RawSample {
                pid: key.tgid,
                user_stack: resolve_stack(&stacks, key.user_stack_id),
                kernel_stack: resolve_stack(&stacks, key.kernel_stack_id),
                user_stack_lost: stack_lost(key.user_stack_id),
                kernel_stack_lost: stack_lost(key.kernel_stack_id),
                count,
                unwinder: Unwinder::FramePointer,
                user_stack_end: StackEnd::Complete,
            })
            .collect();
        Ok(Drained {
            generation: old,
            samples,
            stacks,
        })
    }

    /// The program's count of samples lost because the counts map was full.
    fn lost_count(&self) -> Result<u64, BpfError> {
        Ok(self.stat_totals()?.get(STAT_LOST).copied().unwrap_or(0))
    }

    /// Reads and empties the counts map of `generation`, which no program writes any more: one
    /// batch call per [`map_ops::RawMap::for_each`] batch where the kernel has it.
    fn take_counts(&mut self, generation: u32) -> Result<Vec<(SampleKey, u64)>, BpfError> {
        let map_error = |error: &dyn std::fmt::Display| BpfError::Map {
            map: "counts",
            detail: error.to_string(),
        };
        let mut entries = Vec::new();
        if self.raw.counts_batch {
            self.raw.counts[generation as usize]
                .for_each(true, &mut |key, value| {
                    if let (Some(key), Some(count)) = (SampleKey::from_bytes(key), map_ops::u64_at(value, 0))
                    {
                        entries.push((key, count));
                    }
                })
                .map_err(|error| map_error(&error))?;
            return Ok(entries);
        }
        let map = &mut self.counts[generation as usize];
        for item in map.iter() {
            // A key deleted under the iterator would restart it; nobody deletes here, but be safe.
            entries.push(item.map_err(|error| map_error(&error))?);
        }
        for (key, _) in &entries {
            // Ignore "not found": the only writer of this generation has finished, so it cannot race.
            let _ = map.remove(key);
        }
        Ok(entries)
    }

    /// Reads and deletes the stacks `ids` of `generation`'s stack map, leaf first. A stack that
    /// cannot be read is left out (its samples keep their count, without frames) and logged.
    fn take_stacks(&self, generation: u32, ids: HashSet<u32>) -> StdHashMap<i32, Vec<u64>> {
        let map = self.raw.stacks[generation as usize];
        let mut value = vec![0u8; map.value_bytes()];
        let mut stacks = StdHashMap::with_capacity(ids.len());
        for id in ids {
            match map.take_stack(id, &mut value, self.raw.take_stack_in_one_call) {
                Ok(true) => {
                    let frames = value
                        .chunks_exact(8)
                        .map_while(|slot| map_ops::u64_at(slot, 0).filter(|ip| *ip != 0))
                        .collect();
                    stacks.insert(id as i32, frames);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, id, map = map.name(), "cannot read a stack; its samples lose their frames")
                }
            }
        }
        stacks
    }

    /// Consumes the ring buffer until every event the program sent for `generation` has been handed
    /// out. Called after quiescence, when that count is final. A program of the new generation can hold
    /// an earlier ring position for a moment (the consumer stops at an uncommitted record), hence the
    /// loop; it is bounded like the quiescence wait. `Ok(false)` when events were still missing at
    /// the deadline.
    fn consume_generation(
        &mut self,
        generation: u32,
        on_event: &mut dyn FnMut(&StackEvent<'_>),
    ) -> Result<bool, BpfError> {
        if self.events.is_none() {
            // Frame-pointer mode: the program sends no events.
            return Ok(true);
        }
        let arrived = poll_until_deadline(|| {
            self.poll_events(on_event);
            Ok(self.events_consumed[generation as usize] >= self.events_sent(generation)?)
        })?;
        if !arrived {
            tracing::warn!(
                generation,
                sent = self.events_sent(generation)?,
                consumed = self.events_consumed[generation as usize],
                "stack events of the drained generation did not arrive within {QUIESCE_DEADLINE:?}"
            );
            // The counts stay cumulative, so a late event is still counted once when it arrives; it is
            // then attributed to the next cycle of its generation (bound only hit if a CPU went offline
            // mid-program).
        }
        Ok(arrived)
    }

    /// The processes sampled so far in the current generation, read without changing anything, so that
    /// their `/proc` information can be captured before they exit. Concurrent inserts may be missed.
    pub fn peek_pids(&self) -> HashSet<u32> {
        let generation = (self.generation & 1) as usize;
        if !self.raw.counts_batch {
            let map = &self.counts[generation];
            return map.keys().filter_map(Result::ok).map(|key| key.tgid).collect();
        }
        let mut pids = HashSet::new();
        let peeked = self.raw.counts[generation].for_each(false, &mut |key, _| {
            if let Some(tgid) = map_ops::u32_at(key, 0) {
                pids.insert(tgid);
            }
        });
        if let Err(error) = peeked {
            // A peek only prefetches; the drain reads the map again.
            tracing::debug!(%error, "peeking at the counts map failed");
        }
        pids
    }

    /// Waits until no program that may have read the old generation is running. `Ok(false)` when
    /// one was still running at the deadline (the drain goes on).
    fn wait_for_quiescence(&self) -> Result<bool, BpfError> {
        let snapshot = self.inflight_sequences()?;
        let busy: Vec<usize> = (0..snapshot.len().min(self.cpus))
            .filter(|cpu| snapshot[*cpu] & 1 == 1)
            .collect();
        if busy.is_empty() {
            return Ok(true);
        }
        let finished = poll_until_deadline(|| {
            let now = self.inflight_sequences()?;
            Ok(busy.iter().all(|cpu| now.get(*cpu) != snapshot.get(*cpu)))
        })?;
        if !finished {
            tracing::warn!(
                ?busy,
                "a BPF program did not finish within {QUIESCE_DEADLINE:?}; draining anyway"
            );
        }
        Ok(finished)
    }
}

/// The memory page size, bytes (4096 when the system cannot say).
fn page_bytes() -> u32 {
    // SAFETY: sysconf only reads a system constant.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(bytes)
        .ok()
        .filter(|bytes| bytes.is_power_of_two())
        .unwrap_or(4096)
}

/// Calls `done` every 200 µs until it answers true (returns true) or [`QUIESCE_DEADLINE`] has passed
/// (returns false): the drain's waits for BPF programs, which run for microseconds.
fn poll_until_deadline(mut done: impl FnMut() -> Result<bool, BpfError>) -> Result<bool, BpfError> {
    let deadline = Instant::now() + QUIESCE_DEADLINE;
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The frames of stack `id` in a drained stack map; empty for markers and unknown ids.
pub fn resolve_stack(stacks: &StdHashMap<i32, Vec<u64>>, id: i32) -> Vec<u64> {
    stacks.get(&id).cloned().unwrap_or_default()
}

/// The ids among a sample's user and kernel stack ids that name a stored stack (the negative
/// markers name none).
fn stored_stack_ids(user_stack_id: i32, kernel_stack_id: i32) -> impl Iterator<Item = u32> {
    [user_stack_id, kernel_stack_id]
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
}

/// True for the marker ids that mean "the stack was lost" (collision, map full).
pub fn stack_lost(id: i32) -> bool {
    id == STACK_ID_COLLISION || id == STACK_ID_MAP_FULL
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of this process' mappings of BPF maps (`anon_inode:bpf-map` in smaps).
    fn bpf_map_resident_kib() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut in_bpf_map = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                in_bpf_map = line.ends_with("anon_inode:bpf-map");
            } else if in_bpf_map && first == "Rss:" {
                kib += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        kib
    }

    /// True (after saying so) when this test cannot load BPF: it needs root.
    fn skipped_without_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return false;
        }
        eprintln!("skipped: loading BPF needs root");
        true
    }

    fn frame_pointer_sampler(max_keys: u32) -> Sampler {
        Sampler::start(SamplerOptions {
            frequency_hz: 999,
            max_keys,
            max_stacks: 4096,
            stack_copy_bytes: 0,
            ring_buffer_bytes: None,
        })
        .expect("BPF loads as root")
    }

    /// Makes the sampler use aya's one-key-at-a-time calls, as on a kernel without batches.
    fn use_one_key_calls(sampler: &mut Sampler) {
        sampler.raw.counts_batch = false;
        sampler.raw.stats_batch = false;
        sampler.raw.take_stack_in_one_call = false;
    }

    /// Keys left in the counts map and stacks left in the stack map of `generation`.
    fn left_in_generation(sampler: &Sampler, generation: u32) -> (usize, usize) {
        let keys = sampler.counts[generation as usize].keys().count();
        let stacks = sampler.stacks[generation as usize].stack_ids().count();
        (keys, stacks)
    }

    fn burn_cpu_for(duration: Duration) {
        let until = Instant::now() + duration;
        let mut value = 1u64;
        while Instant::now() < until {
            for _ in 0..10_000 {
                value = std::hint::black_box(value.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }

    /// Drains while this process burns CPU, and checks that every drain empties its generation,
    /// that each sample comes out of exactly one drain, and that a peek sees this process.
    fn check_drains_count_every_sample_once(sampler: &mut Sampler) {
        let mut drained_total: u64 = sampler
            .drain(&mut |_| {})
            .expect("first drain")
            .samples
            .iter()
            .map(|sample| sample.count)
            .sum();
        for _ in 0..4 {
            // Burn until a sample of this process is in the live generation, as a peek sees it
            // (on a loaded machine this thread may get little CPU).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !sampler.peek_pids().contains(&std::process::id()) {
                assert!(
                    Instant::now() < deadline,
                    "no peek named this process while it burned CPU"
                );
                burn_cpu_for(Duration::from_millis(20));
            }
            let before_drain = sampler.stats().expect("stats");
            let drained = sampler.drain(&mut |_| {}).expect("drain");
            let after_drain = sampler.stats().expect("stats");
            drained_total += drained.samples.iter().map(|sample| sample.count).sum::<u64>();
            assert_eq!(after_drain.lost, 0, "the counts map has room for this test");
            // Everything counted before the flip is drained; nothing after it is.
            assert!(
                drained_total >= before_drain.samples && drained_total <= after_drain.samples,
                "drained {drained_total}, samples counted {} before the drain and {} after",
                before_drain.samples,
                after_drain.samples
            );
            assert_eq!(left_in_generation(sampler, drained.generation), (0, 0));
            let own_samples = drained
                .samples
                .iter()
                .filter(|sample| sample.pid == std::process::id() && !sample.user_stack.is_empty());
            assert!(
                own_samples.count() > 0,
                "the drain holds the samples the peek saw, with their user stacks"
            );
        }
    }

    #[test]
    fn drain_counts_every_sample_once_and_empties_its_generation() {
        if skipped_without_root() {
            return;
        }
        let mut sampler = frame_pointer_sampler(4096);
        eprintln!(
            "kernel map operations: counts batch {}, stats batch {}, stack lookup-and-delete {}",
            sampler.raw.counts_batch, sampler.raw.stats_batch, sampler.raw.take_stack_in_one_call
        );
        // Batched map operations are in every kernel since 5.6; CI's is far newer, so the batch path
        // must be the one under test here.
        assert!(sampler.raw.counts_batch && sampler.raw.stats_batch);
        check_drains_count_every_sample_once(&mut sampler);
    }

    #[test]
    fn drain_counts_every_sample_once_with_one_key_calls() {
        if skipped_without_root() {
            return;
        }
        let mut sampler = frame_pointer_sampler(4096);
        use_one_key_calls(&mut sampler);
        check_drains_count_every_sample_once(&mut sampler);
    }

    /// A sample lost to a full counts map leaves its stacks in the stack map, named by no key: a
    /// drain that read only the named stacks would leave them there for good, each one a future
    /// collision for another stack.
    #[test]
    fn drain_sweeps_the_stacks_of_samples_lost_to_a_full_counts_map() {
        if skipped_without_root() {
            return;
        }
        // 64 keys (the least the sampler accepts) fill up with 64 processes.
        let mut sampler = frame_pointer_sampler(64);
        sampler.drain(&mut |_| {}).expect("first drain");
        let deadline = Instant::now() + Duration::from_secs(60);
        while sampler.stats().expect("stats").lost == 0 {
            assert!(Instant::now() < deadline, "no sample was lost with 64 keys");
            let children: Vec<std::process::Child> = (0..100)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
                        .spawn()
                        .expect("sh runs")
                })
                .collect();
            for mut child in children {
                child.wait().expect("sh exits");
            }
        }
        // Losses have stopped (nothing else on a test machine makes 64 keys in a few ms). The next
        // drains sweep: each generation must come out with no stack left.
        let mut generations_checked = 0;
        for _ in 0..3 {
            let drained = sampler.drain(&mut |_| {}).expect("drain");
            let (_, stacks_left) = left_in_generation(&sampler, drained.generation);
            // A loss after this drain's flip would leave stacks for a later drain: skip that one.
            if sampler.stats().expect("stats").lost == sampler.lost_at_last_drain {
                assert_eq!(stacks_left, 0, "stacks left in generation {}", drained.generation);
                generations_checked += 1;
            }
        }
        assert!(generations_checked >= 2, "samples kept being lost");
    }

    #[test]
    fn the_ring_holds_about_a_second_of_events_between_256_kib_and_4_mib() {
        const KIB: u32 = 1024;
        // 2 CPUs x 19 Hz x (16 KiB + headers) = 0.62 MB a second.
        assert_eq!(auto_ring_buffer_bytes(2, 19, 16 * KIB), 1024 * KIB);
        assert_eq!(auto_ring_buffer_bytes(2, 99, 16 * KIB), 4096 * KIB);
        assert_eq!(auto_ring_buffer_bytes(1, 1, 1024), 256 * KIB);
        assert_eq!(auto_ring_buffer_bytes(512, 999, 32 * KIB), 4096 * KIB);
    }

    /// Regression: in frame-pointer mode the stack event ring, which only DWARF mode writes, was
    /// created at its full 4 MiB and mapped, and its data pages, mapped twice, counted 8 MB of RSS.
    #[test]
    fn frame_pointer_mode_maps_no_ring_buffer() {
        if skipped_without_root() {
            return;
        }
        let options = |stack_copy_bytes| SamplerOptions {
            frequency_hz: 19,
            max_keys: 1024,
            max_stacks: 1024,
            stack_copy_bytes,
            ring_buffer_bytes: Some(4 * 1024 * 1024),
        };
        let mut sampler = Sampler::start(options(0)).expect("BPF loads as root");
        assert!(!sampler.dwarf_mode());
        assert!(bpf_map_resident_kib() < 1024, "{} KiB", bpf_map_resident_kib());
        sampler.drain(&mut |_| {}).expect("a frame-pointer drain");
        drop(sampler);

        // DWARF mode still maps its ring (the test's control: the measure sees a mapped ring).
        let sampler = Sampler::start(options(4096)).expect("BPF loads as root");
        assert!(sampler.dwarf_mode());
        assert!(bpf_map_resident_kib() >= 4096, "{} KiB", bpf_map_resident_kib());
    }
}
