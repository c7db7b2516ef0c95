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

use std::collections::{HashMap as StdHashMap, HashSet};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap};
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
        let u32_at = |offset: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(
                record.get(offset..offset + 4)?.try_into().ok()?,
            ))
        };
        let u64_at = |offset: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(
                record.get(offset..offset + 8)?.try_into().ok()?,
            ))
        };
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
    /// Every stack of the generation's stack map, leaf first.
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
    /// Size of the stack event ring buffer in bytes (rounded up to a power of two, at least 64 KiB).
    pub ring_buffer_bytes: u32,
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
        let ring_buffer_bytes = if stack_copy_bytes > 0 {
            options.ring_buffer_bytes.max(64 * 1024).next_power_of_two()
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
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| unavailable(format!("map {name} missing from the object")))
        };
        let counts0 = HashMap::try_from(take("counts0")?).map_err(unavailable)?;
        let counts1 = HashMap::try_from(take("counts1")?).map_err(unavailable)?;
        let stacks0 = StackTraceMap::try_from(take("stacks0")?).map_err(unavailable)?;
        let stacks1 = StackTraceMap::try_from(take("stacks1")?).map_err(unavailable)?;
        let mut control = Array::try_from(take("control")?).map_err(unavailable)?;
        let inflight = PerCpuArray::try_from(take("inflight")?).map_err(unavailable)?;
        let stats = PerCpuArray::try_from(take("stats")?).map_err(unavailable)?;
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
                    on_event(&event);
                }
                None => tracing::warn!(len = record.len(), "malformed stack event skipped"),
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
            ring_full: read(7)?,
            copy_failed: read(8)?,
            copy_full: read(9)?,
            events: read(10)?,
        })
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
    /// and the old stack map comes back whole in [`Drained::stacks`] so that those events can be
    /// resolved. Samples taken while this runs go to the new generation and come out of the next drain.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(&StackEvent<'_>)) -> Result<Drained, BpfError> {
        let old = self.generation & 1;
        let new = old ^ 1;
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
        self.wait_for_quiescence()?;
        self.consume_generation(old, on_event)?;

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
        // Read the whole stack map (counted samples and stack events both refer to it), then empty it,
        // including stacks whose count update failed (map full).
        let ids: Vec<u32> = stack_map.stack_ids().filter_map(Result::ok).collect();
        let mut stacks: StdHashMap<i32, Vec<u64>> = StdHashMap::with_capacity(ids.len());
        for id in &ids {
            if let Ok(trace) = stack_map.get(id, 0) {
                stacks.insert(*id as i32, trace.frames().iter().map(|frame| frame.ip).collect());
            }
        }
        for id in ids {
            let _ = stack_map.remove(&id);
        }

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

    /// Consumes the ring buffer until every event the program sent for `generation` has been handed
    /// out. Called after quiescence, when that count is final. A program of the new generation can hold
    /// an earlier ring position for a moment (the consumer stops at an uncommitted record), hence the
    /// loop; it is bounded like the quiescence wait.
    fn consume_generation(
        &mut self,
        generation: u32,
        on_event: &mut dyn FnMut(&StackEvent<'_>),
    ) -> Result<(), BpfError> {
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
        Ok(())
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
        Ok(())
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

    /// Regression: in frame-pointer mode the stack event ring, which only DWARF mode writes, was
    /// created at its full 4 MiB and mapped, and its data pages, mapped twice, counted 8 MB of RSS.
    #[test]
    fn frame_pointer_mode_maps_no_ring_buffer() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF needs root");
            return;
        }
        let options = |stack_copy_bytes| SamplerOptions {
            frequency_hz: 19,
            max_keys: 1024,
            max_stacks: 1024,
            stack_copy_bytes,
            ring_buffer_bytes: 4 * 1024 * 1024,
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
