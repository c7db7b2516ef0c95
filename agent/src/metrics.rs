//! The agent's own metrics, served at `/metrics` in the Prometheus text format.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of counters split by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// Label of scrape counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeLabel {
    /// Scrape job.
    pub job: String,
    /// Profile kind (cpu, heap, ...).
    pub profile: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Label of the per-unwinder sample counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnwinderLabel {
    /// `dwarf` or `fp`.
    pub unwinder: String,
}

/// Every metric the agent exports. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    /// Samples recorded by the BPF program (charged to a process).
    pub samples: Counter,
    /// Samples of idle CPUs (not recorded).
    pub idle_samples: Counter,
    /// Distinct (process, user stack, kernel stack) keys drained.
    pub stacks: Counter,
    /// Stack-map errors: `user_collision`, `kernel_collision`, `stack_map_full`.
    pub stack_errors: Family<KindLabel, Counter>,
    /// Samples lost in the kernel (counts map full).
    pub lost_samples: Counter,
    /// Addresses that could not be symbolized.
    pub symbolization_failures: Counter,
    /// Times a user-space file was parsed for symbols (once per cycle that needs it, unless kept).
    pub symbol_files_parsed: Counter,
    /// Estimated memory of the symbol files kept parsed across cycles.
    pub symbol_files_kept_bytes: Gauge<u64, AtomicU64>,
    /// Profiles built by the CPU profiler.
    pub profiles: Counter,
    /// Drain cycles that failed.
    pub cycle_errors: Counter,
    /// Drain cycles completed: counted after the cycle's batches were handed to the spool (or failed),
    /// so a count seen on `/metrics` means those batches are already in the spool gauges.
    pub cycles: Counter,
    /// Seconds per successful push of one batch.
    pub push_duration: Histogram,
    /// Failed push attempts, by kind (`unavailable`, `rejected`).
    pub push_errors: Family<KindLabel, Counter>,
    /// Batches acknowledged by the node.
    pub batches_pushed: Counter,
    /// Bytes in the spool.
    pub spool_bytes: Gauge<u64, AtomicU64>,
    /// Batches in the spool.
    pub spool_batches: Gauge<u64, AtomicU64>,
    /// Batches dropped, by reason (`spool_full`, `rejected`, `corrupt`).
    pub dropped_batches: Family<KindLabel, Counter>,
    /// Scrapes by job, profile and result.
    pub scrapes: Family<ScrapeLabel, Counter>,
    /// 1 when the BPF profiler runs.
    pub bpf_running: Gauge,
    /// Samples by the unwinder that produced their user stack (`dwarf`, `fp`).
    pub user_stacks: Family<UnwinderLabel, Counter>,
    /// DWARF-mode samples that got their frame-pointer stack instead, by reason (`fewer_frames`,
    /// `ring_full`, `copy_failed`).
    pub dwarf_fallbacks: Family<KindLabel, Counter>,
    /// Stack copies that hit the configured size.
    pub stack_copy_full: Counter,
    /// Stacks unwound with DWARF in user space.
    pub dwarf_unwound: Counter,
    /// Nanoseconds spent in DWARF unwinding (per-sample cost = this / `dwarf_unwound`).
    pub dwarf_unwind_nanoseconds: Counter,
    /// DWARF stacks ending with a marker, by kind (`truncated`, `jit`).
    pub dwarf_stack_ends: Family<KindLabel, Counter>,
    /// Bytes of unwind tables cached.
    pub unwind_table_bytes: Gauge<u64, AtomicU64>,
    /// Files in the unwind table cache.
    pub unwind_table_files: Gauge<u64, AtomicU64>,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Creates and registers every metric under the `kiln_agent` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln_agent");
        let samples = Counter::default();
        registry.register("samples", "CPU samples charged to a process", samples.clone());
        let idle_samples = Counter::default();
        registry.register(
            "idle_samples",
            "CPU samples of idle CPUs (not recorded)",
            idle_samples.clone(),
        );
        let stacks = Counter::default();
        registry.register(
            "stacks",
            "Distinct (process, user stack, kernel stack) keys drained",
            stacks.clone(),
        );
        let stack_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "stack_errors",
            "bpf_get_stackid failures: user_collision, kernel_collision, stack_map_full",
            stack_errors.clone(),
        );
        let lost_samples = Counter::default();
        registry.register(
            "lost_samples",
            "Samples lost in the kernel (counts map full)",
            lost_samples.clone(),
        );
        let symbolization_failures = Counter::default();
        registry.register(
            "symbolization_failures",
            "Addresses that could not be symbolized",
            symbolization_failures.clone(),
        );
        let symbol_files_parsed = Counter::default();
        registry.register(
            "symbol_files_parsed",
            "User-space files parsed for symbols (once per cycle that needs one, unless it is kept)",
            symbol_files_parsed.clone(),
        );
        let symbol_files_kept_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "symbol_files_kept_bytes",
            "Estimated memory of the symbol files kept parsed across cycles",
            symbol_files_kept_bytes.clone(),
        );
        let profiles = Counter::default();
        registry.register(
            "profiles",
            "CPU profiles built (one per series per cycle)",
            profiles.clone(),
        );
        let cycle_errors = Counter::default();
        registry.register(
            "cycle_errors",
            "Profiling cycles that failed",
            cycle_errors.clone(),
        );
        let cycles = Counter::default();
        registry.register(
            "cycles",
            "Profiling cycles completed (drained, built and spooled)",
            cycles.clone(),
        );
        let push_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "push_duration_seconds",
            "Time to push one batch",
            push_duration.clone(),
        );
        let push_errors = Family::<KindLabel, Counter>::default();
        registry.register("push_errors", "Failed pushes by kind", push_errors.clone());
        let batches_pushed = Counter::default();
        registry.register(
            "batches_pushed",
            "Batches acknowledged by the node",
            batches_pushed.clone(),
        );
        let spool_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "spool_bytes",
            "Bytes of batches waiting in the spool",
            spool_bytes.clone(),
        );
        let spool_batches = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "spool_batches",
            "Batches waiting in the spool",
            spool_batches.clone(),
        );
        let dropped_batches = Family::<KindLabel, Counter>::default();
        registry.register(
            "dropped_batches",
            "Batches dropped: spool_full, rejected (by the node), corrupt (spool file)",
            dropped_batches.clone(),
        );
        let scrapes = Family::<ScrapeLabel, Counter>::default();
        registry.register(
            "scrapes",
            "pprof scrapes by job, profile and result",
            scrapes.clone(),
        );
        let bpf_running = Gauge::default();
        registry.register(
            "bpf_running",
            "1 when the eBPF CPU profiler is running",
            bpf_running.clone(),
        );
        let user_stacks = Family::<UnwinderLabel, Counter>::default();
        registry.register(
            "user_stacks",
            "CPU samples by the unwinder that produced the user stack: dwarf, fp",
            user_stacks.clone(),
        );
        let dwarf_fallbacks = Family::<KindLabel, Counter>::default();
        registry.register(
            "dwarf_fallbacks",
            "DWARF-mode samples given their frame-pointer stack: fewer_frames, ring_full, copy_failed",
            dwarf_fallbacks.clone(),
        );
        let stack_copy_full = Counter::default();
        registry.register(
            "stack_copy_full",
            "User stack copies that hit the configured size (deeper stacks are cut and marked)",
            stack_copy_full.clone(),
        );
        let dwarf_unwound = Counter::default();
        registry.register(
            "dwarf_unwound",
            "Stacks unwound with .eh_frame/.debug_frame in user space",
            dwarf_unwound.clone(),
        );
        let dwarf_unwind_nanoseconds = Counter::default();
        registry.register(
            "dwarf_unwind_nanoseconds",
            "Time spent unwinding stacks in user space",
            dwarf_unwind_nanoseconds.clone(),
        );
        let dwarf_stack_ends = Family::<KindLabel, Counter>::default();
        registry.register(
            "dwarf_stack_ends",
            "DWARF stacks ending with a marker frame: truncated, jit",
            dwarf_stack_ends.clone(),
        );
        let unwind_table_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "unwind_table_bytes",
            "Bytes of unwind tables held in memory",
            unwind_table_bytes.clone(),
        );
        let unwind_table_files = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "unwind_table_files",
            "Files in the unwind table cache",
            unwind_table_files.clone(),
        );
        Metrics {
            user_stacks,
            dwarf_fallbacks,
            stack_copy_full,
            dwarf_unwound,
            dwarf_unwind_nanoseconds,
            dwarf_stack_ends,
            unwind_table_bytes,
            unwind_table_files,
            samples,
            idle_samples,
            stacks,
            stack_errors,
            lost_samples,
            symbolization_failures,
            symbol_files_parsed,
            symbol_files_kept_bytes,
            profiles,
            cycle_errors,
            cycles,
            push_duration,
            push_errors,
            batches_pushed,
            spool_bytes,
            spool_batches,
            dropped_batches,
            scrapes,
            bpf_running,
            registry: Arc::new(registry),
        }
    }

    /// The counter of samples whose user stack came from `unwinder`.
    pub fn unwinder_samples(&self, unwinder: crate::bpf::Unwinder) -> Counter {
        self.user_stacks
            .get_or_create(&UnwinderLabel {
                unwinder: unwinder.label().to_string(),
            })
            .clone()
    }

    /// Shorthand for a counter of a [`KindLabel`] family.
    pub fn kind(family: &Family<KindLabel, Counter>, kind: &str) -> Counter {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .clone()
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
