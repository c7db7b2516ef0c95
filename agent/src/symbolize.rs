//! Address → function/file/line, with blazesym: kernel addresses through kallsyms, user addresses through
//! the ELF symbols and DWARF of the mapped file (demangled, inlined frames kept).
//!
//! Results are cached across cycles, keyed by the file's build id (or path, device and inode when it has
//! none) and file offset, so a binary shared by many processes, or seen again next cycle, is symbolized
//! once. Every failure is local: an address that cannot be symbolized becomes an unknown frame and is
//! counted, never an error for the cycle.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::MaybeDefault;

use crate::process::{Mapping, ProcessInfo};

/// One function frame. A location with inlined calls has several, innermost first (pprof's order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, or `[unknown]`-style marker.
    pub function: String,
    /// Source file, when DWARF has it.
    pub file: String,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// The frames of one address, innermost (inlined) first; never empty.
pub type Frames = Arc<Vec<Frame>>;

/// How a file is identified in the caches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Hex build id, empty when the file has none.
    pub build_id: String,
    /// Path inside the process' mount namespace.
    pub path: String,
    /// Device and inode.
    pub dev_inode: (String, u64),
}

/// Counters of the symbolizer's work.
#[derive(Debug, Clone, Copy, Default)]
pub struct SymbolizeStats {
    /// Addresses that could not be symbolized (unknown frames produced).
    pub failures: u64,
    /// Addresses answered from the cache.
    pub cache_hits: u64,
    /// Addresses sent to blazesym.
    pub cache_misses: u64,
    /// Times /proc/kallsyms was parsed (once, then every `KERNEL_SYMBOLS_MAX_AGE` or after an address
    /// it did not name, at most every `KERNEL_SYMBOLS_MIN_AGE_FOR_RETRY`).
    pub kernel_symbol_reads: u64,
    /// Times blazesym parsed a user-space file (each file once per cycle with new addresses in it,
    /// unless it is kept across cycles).
    pub files_parsed: u64,
    /// Estimated memory of the parsed files kept across cycles (see `KeptFiles`), bytes.
    pub kept_file_bytes: u64,
}

/// How long a parsed kallsyms is used before it is read again (modules loaded since then are not in it).
const KERNEL_SYMBOLS_MAX_AGE: Duration = Duration::from_secs(600);
/// A kernel address that kallsyms did not name triggers a re-read, at most this often.
const KERNEL_SYMBOLS_MIN_AGE_FOR_RETRY: Duration = Duration::from_secs(60);

/// Default budget for parsed files kept across cycles, bytes (`profiler.symbol_files_max_bytes`).
pub const DEFAULT_KEPT_FILES_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A file with new addresses in two cycles this close is kept parsed (when the budget allows).
const RECURRENCE_CYCLES: u64 = 6;
/// A kept file without new addresses for this many cycles is dropped.
const KEPT_FILE_IDLE_CYCLES: u64 = 30;
/// A file parsed for the first time that cannot be read as ELF is guessed to take this many times
/// its size (compressed DWARF inflates); ELF files are guessed from their headers (`first_parse_guess`).
const UNKNOWN_FILE_FACTOR: u64 = 4;
/// Most files whose last parse size is remembered.
const MAX_ESTIMATES: usize = 4096;
/// Smallest memory estimate of a kept file: its estimate is a change of the process' RSS, which the
/// allocator can hide by reusing freed memory.
const MIN_KEPT_FILE_ESTIMATE: u64 = 1024 * 1024;

/// Parsed files kept across cycles, each in its own blazesym instance so that it can be dropped
/// alone.
///
/// Why: everything parsed is released after each cycle to bound memory, so a file that keeps showing
/// new addresses was parsed again every cycle. For files whose DWARF is compressed (Debian's separate
/// debug files such as libc's, Go binaries) inflating it again was half the agent's CPU on a busy host.
/// A file whose misses recur within `RECURRENCE_CYCLES` is kept, up to a memory budget; the estimate
/// of a file is how much the process' resident memory grew while it was last parsed (at least
/// `MIN_KEPT_FILE_ESTIMATE`). Least recently used files make room, idle ones are dropped.
///
/// The budget covers the kept files *and* the file being parsed for one cycle only: before such a
/// parse, kept files are dropped until its estimate fits too (a file never parsed before is guessed,
/// see `first_parse_guess`). Otherwise kept files would add to the peak that a large
/// file parsed every cycle makes anyway (a Go service whose compressed DWARF exceeds the budget: 62-67
/// MB peak RSS with kept files, against 47-51 MB without them, on this machine).
struct KeptFiles {
    files: HashMap<FileKey, KeptFile>,
    /// How much memory each recently parsed file took when it was last parsed.
    estimates: HashMap<FileKey, u64>,
    /// The cycle in which each file not kept last had misses.
    last_miss: HashMap<FileKey, u64>,
    cycle: u64,
    bytes: u64,
    max_bytes: u64,
}

struct KeptFile {
    blaze: Blaze,
    /// The path it was opened by: another path (another mount namespace) is parsed separately.
    open_path: PathBuf,
    bytes: u64,
    last_used: u64,
}

impl KeptFiles {
    fn new(max_bytes: u64) -> KeptFiles {
        KeptFiles {
            files: HashMap::new(),
            estimates: HashMap::new(),
            last_miss: HashMap::new(),
            cycle: 0,
            bytes: 0,
            max_bytes,
        }
    }

    fn remove(&mut self, key: &FileKey) {
        if let Some(file) = self.files.remove(key) {
            self.bytes -= file.bytes;
        }
    }

    /// The kept parse of `key` as opened by `open_path`, marked used in this cycle. A parse kept under
    /// another path (the file seen through another mount namespace) is dropped: that path may be gone.
    fn lookup(&mut self, key: &FileKey, open_path: &std::path::Path) -> Option<&Blaze> {
        if self
            .files
            .get(key)
            .is_some_and(|file| file.open_path != open_path)
        {
            self.remove(key);
        }
        let cycle = self.cycle;
        let file = self.files.get_mut(key)?;
        file.last_used = cycle;
        Some(&file.blaze)
    }

    /// True when `key`'s misses recur, so that parsing it into a kept instance is worthwhile.
    fn recurs(&mut self, key: &FileKey) -> bool {
        let recurs = self
            .last_miss
            .get(key)
            .is_some_and(|cycle| self.cycle - cycle <= RECURRENCE_CYCLES);
        self.last_miss.insert(key.clone(), self.cycle);
        recurs && self.max_bytes > 0
    }

    /// Keeps a just-parsed file of estimated size `bytes` when it fits the budget after dropping less
    /// recently used files.
    fn keep(&mut self, key: FileKey, open_path: PathBuf, blaze: Blaze, bytes: u64) {
        let bytes = bytes.max(MIN_KEPT_FILE_ESTIMATE);
        if bytes > self.max_bytes {
            return;
        }
        self.make_room(bytes);
        self.last_miss.remove(&key);
        self.bytes += bytes;
        let last_used = self.cycle;
        self.files.insert(
            key,
            KeptFile {
                blaze,
                open_path,
                bytes,
                last_used,
            },
        );
    }

    /// Records how much parsing `key` took.
    fn record_estimate(&mut self, key: &FileKey, bytes: u64) {
        if self.estimates.len() >= MAX_ESTIMATES {
            self.estimates.clear();
        }
        self.estimates
            .insert(key.clone(), bytes.max(MIN_KEPT_FILE_ESTIMATE));
    }

    /// What parsing `key` is expected to take: its last parse's size, else `first_guess()` (see
    /// [`first_parse_guess`]).
    fn expected_bytes(&self, key: &FileKey, first_guess: impl FnOnce() -> u64) -> u64 {
        self.estimates.get(key).copied().unwrap_or_else(first_guess)
    }

    /// Drops least recently used kept files until `bytes` more fit in the budget (or none is left).
    /// A dropped file counts as having had misses in this cycle, so that its next miss keeps it again
    /// at once rather than after one more parse: it was kept because its misses recur.
    fn make_room(&mut self, bytes: u64) {
        while self.bytes.saturating_add(bytes) > self.max_bytes {
            let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, file)| file.last_used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            self.remove(&oldest);
            self.last_miss.insert(oldest, self.cycle);
        }
    }

    /// Starts the next cycle: drops files idle for `KEPT_FILE_IDLE_CYCLES` and forgets old misses.
    fn end_cycle(&mut self) {
        self.cycle += 1;
        let cycle = self.cycle;
        let idle: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(_, file)| cycle - file.last_used > KEPT_FILE_IDLE_CYCLES)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            self.remove(&key);
        }
        self.last_miss
            .retain(|_, last| cycle - *last <= RECURRENCE_CYCLES);
    }
}

/// What the first parse of the file at `path` (`file_bytes` long, build id `build_id` in hex) is
/// guessed to take, from its section headers (see [`ElfParseBytes`]): its symbol tables and, when its
/// DWARF is read, its DWARF sections, or when it has none, its separate debug file found by build id.
/// A file that cannot be read as ELF is guessed at `UNKNOWN_FILE_FACTOR` times its size.
///
/// Why not simply a multiple of the file's size: the guess makes room in the kept-file budget, and
/// a guess far above the parse dropped kept files for nothing, so that libc's compressed debug file,
/// the costliest parse on a Debian host, was inflated again at its next miss. Four times the size
/// was 36 MB for a stripped 9 MB `perf` whose parse took 82 kB, and 62 MB for the agent's own binary
/// (1.1 MB); both exceed the whole 16 MiB budget, so every new program emptied it.
fn first_parse_guess(path: &std::path::Path, build_id: &str, file_bytes: u64, with_dwarf: bool) -> u64 {
    let Some(own) = ElfParseBytes::read(path) else {
        return if with_dwarf {
            file_bytes.saturating_mul(UNKNOWN_FILE_FACTOR)
        } else {
            MIN_KEPT_FILE_ESTIMATE
        };
    };
    let mut guess = own.symbol_tables;
    if with_dwarf {
        guess = guess
            .saturating_add(own.dwarf_mapped)
            .saturating_add(own.dwarf_inflated);
        if own.dwarf_mapped == 0 {
            if let Some((_, debug)) = separate_debug_file(&DEBUG_DIRS, build_id) {
                // blazesym checks the debug link's CRC over the whole debug file, so all of it becomes
                // resident, besides the sections it inflates.
                guess = guess
                    .saturating_add(debug.file_bytes)
                    .saturating_add(debug.dwarf_inflated);
            }
        }
    }
    guess.max(MIN_KEPT_FILE_ESTIMATE)
}

/// Directories searched for separate debug files by build id (blazesym's defaults).
const DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// The separate debug file, in one of `debug_dirs`, of the file with hex build id `build_id`, as
/// distributions install it (`DIR/.build-id/XX/REST.debug`), with its sizes.
fn separate_debug_file(debug_dirs: &[&str], build_id: &str) -> Option<(PathBuf, ElfParseBytes)> {
    // blazesym skips build ids under 8 bytes as bogus too.
    if build_id.len() < 16 || !build_id.is_ascii() {
        return None;
    }
    let (first, rest) = build_id.split_at(2);
    debug_dirs.iter().find_map(|dir| {
        let path = PathBuf::from(format!("{dir}/.build-id/{first}/{rest}.debug"));
        let sizes = ElfParseBytes::read(&path)?;
        Some((path, sizes))
    })
}

/// The sizes, from an ELF file's section headers only, that parsing it for symbols costs in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfParseBytes {
    /// The whole file.
    file_bytes: u64,
    /// `.symtab` and `.dynsym`: mapped and read whole (sorted by address). Their string tables are
    /// not counted: only the names of the symbols found are read (for a release kiln-node, 1.5 MB of
    /// `.symtab` and 5.4 MB of `.strtab`, the parse grew the resident memory by 1.6 MB).
    symbol_tables: u64,
    /// DWARF sections (`.debug_*`, `.zdebug_*`) as stored in the file, compressed or not: mapped.
    dwarf_mapped: u64,
    /// The inflated size of the compressed DWARF sections: allocated.
    dwarf_inflated: u64,
}

impl ElfParseBytes {
    /// `None` when `path` cannot be read as ELF.
    fn read(path: &std::path::Path) -> Option<ElfParseBytes> {
        use object::{Object, ObjectSection};
        let file = std::fs::File::open(path).ok()?;
        let file_bytes = file.metadata().ok()?.len();
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let mut sizes = ElfParseBytes {
            file_bytes,
            symbol_tables: 0,
            dwarf_mapped: 0,
            dwarf_inflated: 0,
        };
        for section in elf.sections() {
            let Ok(name) = section.name() else {
                continue;
            };
            if matches!(name, ".symtab" | ".dynsym") {
                sizes.symbol_tables = sizes.symbol_tables.saturating_add(section.size());
                continue;
            }
            if !(name.starts_with(".debug_") || name.starts_with(".zdebug_")) {
                continue;
            }
            let Ok(range) = section.compressed_file_range() else {
                continue;
            };
            sizes.dwarf_mapped = sizes.dwarf_mapped.saturating_add(range.compressed_size);
            if range.format != object::CompressionFormat::None {
                sizes.dwarf_inflated = sizes.dwarf_inflated.saturating_add(range.uncompressed_size);
            }
        }
        Some(sizes)
    }
}

/// Resident memory of this process, bytes (0 when /proc cannot say).
fn resident_bytes() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let page_bytes = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page_bytes))
}

/// Caching symbolizer. Not `Sync`: one per profiling loop.
pub struct Symbolizer {
    blaze: Blaze,
    kept: KeptFiles,
    /// Kept across cycles, unlike `blaze`: parsing /proc/kallsyms (over 100,000 lines formatted by the
    /// kernel on every read) was a third of the agent's CPU when it was re-read every cycle, and the
    /// parsed table is the same size as the one a cycle would parse anyway.
    kernel_blaze: Option<(Blaze, Instant)>,
    kernel_source: Source<'static>,
    user: HashMap<(FileKey, u64), Frames>,
    kernel: HashMap<u64, Frames>,
    files: HashMap<(String, (String, u64)), Option<FileKey>>,
    stats: SymbolizeStats,
    max_entries: usize,
    max_dwarf_file_bytes: u64,
}

/// Files larger than this are symbolized from their ELF symbol table only (see `user_frames`).
pub const DEFAULT_MAX_DWARF_FILE_BYTES: u64 = 128 * 1024 * 1024;

fn unknown(label: &str) -> Frames {
    Arc::new(vec![Frame {
        function: label.to_string(),
        file: String::new(),
        line: 0,
    }])
}

fn blaze() -> Blaze {
    Blaze::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

impl Symbolizer {
    /// A symbolizer whose result caches hold at most `max_entries` addresses each (then they are
    /// cleared: simpler than LRU and bounded; a cleared cache refills from blazesym's parsed files).
    pub fn new(max_entries: usize) -> Self {
        let kernel = Kernel {
            kallsyms: MaybeDefault::Default,
            // kallsyms alone: a vmlinux with debug info is rarely installed, and searching for it costs.
            vmlinux: MaybeDefault::None,
            ..Default::default()
        };
        Symbolizer {
            blaze: blaze(),
            kept: KeptFiles::new(DEFAULT_KEPT_FILES_MAX_BYTES),
            kernel_blaze: None,
            kernel_source: Source::Kernel(kernel),
            user: HashMap::new(),
            kernel: HashMap::new(),
            files: HashMap::new(),
            stats: SymbolizeStats::default(),
            max_entries: max_entries.max(1024),
            max_dwarf_file_bytes: DEFAULT_MAX_DWARF_FILE_BYTES,
        }
    }

    /// Files larger than `bytes` are symbolized from ELF symbols only (no DWARF lines or inlined frames).
    pub fn set_max_dwarf_file_bytes(&mut self, bytes: u64) {
        self.max_dwarf_file_bytes = bytes;
    }

    /// Parsed files kept across cycles take at most about `bytes` (0: none are kept).
    pub fn set_kept_files_max_bytes(&mut self, bytes: u64) {
        self.kept = KeptFiles::new(bytes);
    }

    /// Work counters since creation.
    pub fn stats(&self) -> SymbolizeStats {
        SymbolizeStats {
            kept_file_bytes: self.kept.bytes,
            ..self.stats
        }
    }

    /// Ends a profiling cycle: releases the files parsed for this cycle only, and drops kept files
    /// that had no new addresses for a while.
    pub fn end_cycle(&mut self) {
        self.release_parsed_files();
        self.kept.end_cycle();
    }

    /// Drops blazesym's parsed user-space files (their memory maps and parsed symbols/DWARF) while
    /// keeping the result caches, the parsed kallsyms and the files kept across cycles; called after
    /// each file of [`Self::prefetch_user`] and between cycles to bound memory.
    pub fn release_parsed_files(&mut self) {
        self.blaze = blaze();
    }

    /// Makes sure there is a kernel symbolizer younger than `max_age`: a new one parses kallsyms on its
    /// first lookup.
    fn ensure_kernel_symbolizer(&mut self, max_age: Duration) {
        let stale = self
            .kernel_blaze
            .as_ref()
            .is_none_or(|(_, read_at)| read_at.elapsed() >= max_age);
        if stale {
            self.stats.kernel_symbol_reads += 1;
            self.kernel_blaze = Some((blaze(), Instant::now()));
        }
    }

    /// The frames of kernel addresses (`None` where kallsyms names nothing).
    fn lookup_kernel(&self, addresses: &[u64]) -> Result<Vec<Option<Frames>>, blazesym::Error> {
        let Some((kernel, _)) = &self.kernel_blaze else {
            return Ok(vec![None; addresses.len()]);
        };
        kernel
            .symbolize(&self.kernel_source, Input::AbsAddr(addresses))
            .map(|results| results.iter().map(convert).collect())
    }

    /// Symbolizes kernel addresses; `addresses[i]` is a return address for `i > 0` (leaf first) and is
    /// looked up one byte earlier so that the call site, not the next statement, is named.
    pub fn kernel_frames(&mut self, addresses: &[u64]) -> Vec<Frames> {
        let lookups: Vec<u64> = lookup_addresses(addresses);
        let missing: Vec<u64> = lookups
            .iter()
            .copied()
            .filter(|address| !self.kernel.contains_key(address))
            .collect();
        self.stats.cache_hits += (lookups.len() - missing.len()) as u64;
        if !missing.is_empty() {
            self.stats.cache_misses += missing.len() as u64;
            if self.kernel.len() + missing.len() > self.max_entries {
                self.kernel.clear();
            }
            self.ensure_kernel_symbolizer(KERNEL_SYMBOLS_MAX_AGE);
            let mut result = self.lookup_kernel(&missing);
            let unnamed = result
                .as_ref()
                .map_or(true, |frames| frames.iter().any(Option::is_none));
            if unnamed {
                // Perhaps a module loaded since kallsyms was read: read it again, but not for every
                // address it cannot name.
                let retry = self
                    .kernel_blaze
                    .as_ref()
                    .is_some_and(|(_, read_at)| read_at.elapsed() >= KERNEL_SYMBOLS_MIN_AGE_FOR_RETRY);
                if retry {
                    self.ensure_kernel_symbolizer(Duration::ZERO);
                    result = self.lookup_kernel(&missing);
                }
            }
            match result {
                Ok(found) => {
                    for (address, frames) in missing.iter().zip(found) {
                        let frames = frames.unwrap_or_else(|| {
                            self.stats.failures += 1;
                            unknown("[unknown kernel]")
                        });
                        self.kernel.insert(*address, frames);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "kernel symbolization failed");
                    self.stats.failures += missing.len() as u64;
                    for address in &missing {
                        self.kernel.insert(*address, unknown("[unknown kernel]"));
                    }
                }
            }
        }
        lookups
            .iter()
            .map(|address| {
                self.kernel
                    .get(address)
                    .cloned()
                    .unwrap_or_else(|| unknown("[unknown kernel]"))
            })
            .collect()
    }

    /// Symbolizes user addresses of `process` (leaf first, like [`Self::kernel_frames`]). Addresses
    /// outside any file mapping, and files that cannot be read, give unknown frames naming the mapping.
    pub fn user_frames(
        &mut self,
        proc_root: &std::path::Path,
        pid: u32,
        process: &ProcessInfo,
        addresses: &[u64],
    ) -> Vec<Frames> {
        let lookups = lookup_addresses(addresses);
        let mut out: Vec<Option<Frames>> = vec![None; lookups.len()];
        // Group the misses by file so blazesym gets one batch per file.
        let mut misses: HashMap<FileKey, (PathBuf, Vec<(usize, u64)>)> = HashMap::new();
        for (index, address) in lookups.iter().enumerate() {
            let (key, file_offset, mapping) = match self.lookup_user(proc_root, pid, process, *address) {
                UserLookup::Cached(frames) => {
                    self.stats.cache_hits += 1;
                    out[index] = Some(frames);
                    continue;
                }
                UserLookup::Unknown(label) => {
                    self.stats.failures += 1;
                    out[index] = Some(unknown(&label));
                    continue;
                }
                UserLookup::Miss {
                    key,
                    file_offset,
                    mapping,
                } => (key, file_offset, mapping),
            };
            let Some(file_misses) = file_misses(&mut misses, key, mapping, proc_root, pid) else {
                self.stats.failures += 1;
                out[index] = Some(unknown(&unopenable(mapping)));
                continue;
            };
            file_misses.push((index, file_offset));
        }
        let total_misses: usize = misses.values().map(|(_, list)| list.len()).sum();
        if self.user.len() + total_misses > self.max_entries {
            self.user.clear();
        }
        for (key, (open_path, list)) in misses {
            let offsets: Vec<u64> = list.iter().map(|(_, offset)| *offset).collect();
            let frames = self.symbolize_file(&key, &open_path, &offsets);
            for ((index, _), frames) in list.into_iter().zip(frames) {
                out[index] = Some(frames);
            }
        }
        out.into_iter()
            .map(|frames| frames.unwrap_or_else(|| unknown("[unknown]")))
            .collect()
    }

    /// Symbolizes every user address of `stacks` that is not cached yet, one file at a time, and
    /// drops blazesym's state (its memory map of the file and the parsed symbols and DWARF) after each
    /// file. Afterwards [`Self::user_frames`] answers these stacks from the cache.
    ///
    /// Why: blazesym keeps every file it has opened mapped and parsed until it is dropped. Symbolizing
    /// stack by stack therefore holds all files of a cycle at once (the pages of `.debug_info`,
    /// `.debug_line`, ... that were read count in the agent's RSS), which with deep DWARF-unwound
    /// stacks spanning many large binaries made the first cycle's peak RSS twice the steady state.
    /// One file at a time bounds that part of the peak by the largest single file. Each file is parsed
    /// once per call, as before (blazesym was already released after every cycle).
    ///
    /// At most the cache's capacity of addresses is prefetched; the rest are symbolized later by
    /// [`Self::user_frames`] as usual. Stacks are `(pid, process, addresses leaf first)`.
    pub fn prefetch_user<'a>(
        &mut self,
        proc_root: &std::path::Path,
        stacks: impl IntoIterator<Item = (u32, &'a ProcessInfo, &'a [u64])>,
    ) {
        let mut misses: HashMap<FileKey, (PathBuf, std::collections::BTreeSet<u64>)> = HashMap::new();
        let mut total = 0usize;
        'stacks: for (pid, process, addresses) in stacks {
            for address in lookup_addresses(addresses) {
                // Unknown addresses and cache hits are left to `user_frames`, which counts them.
                let UserLookup::Miss {
                    key,
                    file_offset,
                    mapping,
                } = self.lookup_user(proc_root, pid, process, address)
                else {
                    continue;
                };
                let Some(offsets) = file_misses(&mut misses, key, mapping, proc_root, pid) else {
                    continue;
                };
                if offsets.insert(file_offset) {
                    total += 1;
                    if total >= self.max_entries {
                        break 'stacks;
                    }
                }
            }
        }
        if misses.is_empty() {
            return;
        }
        if self.user.len() + total > self.max_entries {
            self.user.clear();
        }
        for (key, (open_path, offsets)) in misses {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            self.symbolize_file(&key, &open_path, &offsets);
            // Unmap and free this file before the next one is opened: the point of this function.
            self.release_parsed_files();
        }
    }

    /// Where the frames of user address `address` of `process` come from (see [`UserLookup`]).
    fn lookup_user<'m>(
        &mut self,
        proc_root: &std::path::Path,
        pid: u32,
        process: &'m ProcessInfo,
        address: u64,
    ) -> UserLookup<'m> {
        let Some(mapping) = process.mapping_for(address) else {
            return UserLookup::Unknown(Cow::Borrowed(if process.known {
                "[unknown]"
            } else {
                "[exited process]"
            }));
        };
        if !mapping.is_file() {
            return UserLookup::Unknown(if mapping.path.is_empty() {
                Cow::Borrowed("[anonymous]")
            } else {
                Cow::Borrowed(mapping.path.as_str())
            });
        }
        let file_offset = address - mapping.start + mapping.offset;
        let Some(key) = self.file_key(proc_root, pid, mapping) else {
            return UserLookup::Unknown(Cow::Owned(unopenable(mapping)));
        };
        if let Some(frames) = self.user.get(&(key.clone(), file_offset)) {
            return UserLookup::Cached(frames.clone());
        }
        UserLookup::Miss {
            key,
            file_offset,
            mapping,
        }
    }

    /// Symbolizes `offsets` of one file through blazesym and caches the results (unknown frames for
    /// what cannot be symbolized); returns them in the order of `offsets`.
    fn symbolize_file(&mut self, key: &FileKey, open_path: &std::path::Path, offsets: &[u64]) -> Vec<Frames> {
        self.stats.cache_misses += offsets.len() as u64;
        let mut elf = Elf::new(open_path);
        // DWARF of a huge binary (a debug build of a large Rust program) costs hundreds of MB to
        // parse; such files get ELF symbols only (function names, no lines or inlined frames).
        let file_bytes = std::fs::metadata(open_path).map_or(0, |meta| meta.len());
        let with_dwarf = file_bytes <= self.max_dwarf_file_bytes;
        elf.debug_syms = with_dwarf;
        let source = Source::Elf(elf);
        let converted =
            |results: Result<Vec<blazesym::symbolize::Symbolized<'_>>, blazesym::Error>| match results {
                Ok(results) => results.iter().map(convert).collect::<Vec<_>>(),
                Err(error) => {
                    tracing::debug!(%error, path = %key.path, "user symbolization failed");
                    vec![None; offsets.len()]
                }
            };
        let results = if let Some(kept) = self.kept.lookup(key, open_path) {
            converted(kept.symbolize(&source, Input::FileOffset(offsets)))
        } else {
            self.stats.files_parsed += 1;
            let expected = self.kept.expected_bytes(key, || {
                first_parse_guess(open_path, &key.build_id, file_bytes, with_dwarf)
            });
            self.kept.make_room(expected);
            // A file whose misses recur is parsed into an instance of its own, to be kept; the others
            // share the instance released after each file and cycle.
            let own = self.kept.recurs(key).then(blaze);
            let parser = own.as_ref().unwrap_or(&self.blaze);
            let before = resident_bytes();
            let parsed = parser.symbolize(&source, Input::FileOffset(offsets));
            let grown = resident_bytes().saturating_sub(before);
            tracing::debug!(
                path = %key.path,
                offsets = offsets.len(),
                grown_bytes = grown,
                kept = own.is_some(),
                "parsed a symbol file"
            );
            let parsed_ok = parsed.is_ok();
            let results = converted(parsed);
            self.kept.record_estimate(key, grown);
            if let Some(own) = own.filter(|_| parsed_ok) {
                self.kept.keep(key.clone(), open_path.to_path_buf(), own, grown);
            }
            results
        };
        offsets
            .iter()
            .zip(results.into_iter().chain(std::iter::repeat(None)))
            .map(|(offset, result)| {
                let frames = result.unwrap_or_else(|| {
                    self.stats.failures += 1;
                    unknown(&format!("[{}+{offset:#x}]", basename(&key.path)))
                });
                self.user.insert((key.clone(), *offset), frames.clone());
                frames
            })
            .collect()
    }

    /// The cache key of a mapped file and the path to open it by: the plain path when it is the same
    /// file in our mount namespace (so blazesym parses a binary shared by many processes once),
    /// `/proc/PID/root/PATH` otherwise (containers).
    fn file_key(&mut self, proc_root: &std::path::Path, pid: u32, mapping: &Mapping) -> Option<FileKey> {
        let cache_key = (mapping.path.clone(), mapping.dev_inode.clone());
        if let Some(known) = self.files.get(&cache_key) {
            // No file system access for a known file: cached addresses of a binary that was deleted
            // or of a process that exited still resolve, and a hit costs no stat.
            return known.clone();
        }
        let open_path = mapping.open_path(proc_root, pid)?;
        let build_id = match blazesym::helper::read_elf_build_id(&open_path) {
            Ok(Some(id)) => id.iter().map(|byte| format!("{byte:02x}")).collect(),
            Ok(None) => String::new(),
            Err(_) => {
                self.files.insert(cache_key, None);
                return None;
            }
        };
        let key = FileKey {
            build_id,
            path: mapping.path.clone(),
            dev_inode: mapping.dev_inode.clone(),
        };
        if self.files.len() > self.max_entries {
            self.files.clear();
        }
        self.files.insert(cache_key, Some(key.clone()));
        Some(key)
    }

    /// The build id (hex) of a mapping's file, when known.
    pub fn build_id(&self, mapping: &Mapping) -> String {
        self.files
            .get(&(mapping.path.clone(), mapping.dev_inode.clone()))
            .and_then(|key| key.as_ref().map(|key| key.build_id.clone()))
            .unwrap_or_default()
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Where the frames of one user address come from.
enum UserLookup<'m> {
    /// The result cache has them.
    Cached(Frames),
    /// Not cached: `file_offset` is to be symbolized in the file of `mapping` (cache key `key`).
    Miss {
        key: FileKey,
        file_offset: u64,
        mapping: &'m Mapping,
    },
    /// Cannot be symbolized: an unknown frame with this label stands for it.
    Unknown(Cow<'m, str>),
}

/// The label of the unknown frame of an address whose mapped file cannot be opened.
fn unopenable(mapping: &Mapping) -> String {
    format!("[{}]", basename(&mapping.path))
}

/// The addresses to symbolize in `key`'s file, grouped per file so that blazesym gets one batch per
/// file; the path to open it by is found when the file first shows up. `None` when it cannot be opened.
fn file_misses<'a, T: Default>(
    misses: &'a mut HashMap<FileKey, (PathBuf, T)>,
    key: FileKey,
    mapping: &Mapping,
    proc_root: &std::path::Path,
    pid: u32,
) -> Option<&'a mut T> {
    match misses.entry(key) {
        Entry::Occupied(entry) => Some(&mut entry.into_mut().1),
        Entry::Vacant(entry) => {
            let open_path = mapping.open_path(proc_root, pid)?;
            Some(&mut entry.insert((open_path, T::default())).1)
        }
    }
}

/// Leaf first: the leaf is the interrupted instruction, every other frame a return address, looked up
/// one byte earlier (inside the call instruction).
pub fn lookup_addresses(addresses: &[u64]) -> Vec<u64> {
    addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            if index == 0 {
                *address
            } else {
                address.saturating_sub(1)
            }
        })
        .collect()
}

fn convert(result: &Symbolized<'_>) -> Option<Frames> {
    let Symbolized::Sym(sym) = result else {
        return None;
    };
    // blazesym gives every level its own location: the symbol's code info is the line in the outer
    // function (the call site of the first inlined function), each inlined function's the line inside
    // it. Levels come outermost first; pprof wants the innermost first.
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    let frame = |name: &str, code: Option<&blazesym::symbolize::CodeInfo<'_>>| Frame {
        function: name.to_string(),
        file: code.map(code_path).unwrap_or_default(),
        line: code.and_then(|code| code.line).unwrap_or(0),
    };
    for inlined in sym.inlined.iter().rev() {
        frames.push(frame(&inlined.name, inlined.code_info.as_ref()));
    }
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    Some(Arc::new(frames))
}

fn code_path(code: &blazesym::symbolize::CodeInfo<'_>) -> String {
    match &code.dir {
        Some(dir) => dir.join(&*code.file).to_string_lossy().into_owned(),
        None => code.file.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_addresses_are_looked_up_one_byte_early() {
        assert_eq!(lookup_addresses(&[100, 200, 300]), vec![100, 199, 299]);
        assert_eq!(lookup_addresses(&[]), Vec::<u64>::new());
    }

    #[test]
    fn own_function_symbolizes_with_line() {
        // Symbolize a function of this test binary through its own mappings.
        let pid = std::process::id();
        let process = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let address = own_function_symbolizes_with_line as fn() as usize as u64;
        let mut symbolizer = Symbolizer::new(4096);
        // The debug test binary can be larger than the default DWARF limit.
        symbolizer.set_max_dwarf_file_bytes(u64::MAX);
        let frames = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &[address]);
        let innermost = &frames[0][0];
        assert!(
            innermost.function.contains("own_function_symbolizes_with_line"),
            "got {frames:?}"
        );
        assert!(innermost.file.ends_with("symbolize.rs"), "got {frames:?}");
        // Second time: from the cache.
        let hits = symbolizer.stats().cache_hits;
        let _ = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &[address]);
        assert_eq!(symbolizer.stats().cache_hits, hits + 1);
    }

    #[test]
    fn prefetched_addresses_are_answered_from_the_cache() {
        let pid = std::process::id();
        let process = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let addresses = [
            prefetched_addresses_are_answered_from_the_cache as fn() as usize as u64,
            // A return address elsewhere in the same file: looked up one byte early, like the stacks.
            own_function_symbolizes_with_line as fn() as usize as u64 + 1,
        ];
        let mut symbolizer = Symbolizer::new(4096);
        symbolizer.set_max_dwarf_file_bytes(u64::MAX);
        symbolizer.prefetch_user(std::path::Path::new("/proc"), [(pid, &process, &addresses[..])]);
        let after_prefetch = symbolizer.stats();
        assert_eq!(after_prefetch.cache_misses, 2);
        let frames = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &addresses);
        let stats = symbolizer.stats();
        assert_eq!(
            stats.cache_misses, after_prefetch.cache_misses,
            "no blazesym call after prefetching"
        );
        assert_eq!(stats.cache_hits, after_prefetch.cache_hits + 2);
        assert!(
            frames[0][0]
                .function
                .contains("prefetched_addresses_are_answered_from_the_cache"),
            "got {frames:?}"
        );
        assert!(
            frames[1][0]
                .function
                .contains("own_function_symbolizes_with_line"),
            "got {frames:?}"
        );
    }

    #[test]
    fn files_over_the_dwarf_limit_still_get_function_names() {
        let pid = std::process::id();
        let process = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let address = files_over_the_dwarf_limit_still_get_function_names as fn() as usize as u64;
        let mut symbolizer = Symbolizer::new(4096);
        symbolizer.set_max_dwarf_file_bytes(0);
        let frames = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &[address]);
        assert!(
            frames[0][0]
                .function
                .contains("files_over_the_dwarf_limit_still_get_function_names"),
            "got {frames:?}"
        );
    }

    #[test]
    fn cached_addresses_of_a_deleted_file_still_symbolize() {
        // A copy of this test binary stands for a program whose file was deleted (upgraded, or a
        // temporary build) after its addresses were first symbolized: later cycles answer from the
        // cache instead of giving up because the file can no longer be opened.
        use std::os::unix::fs::MetadataExt;
        let pid = std::process::id();
        let own = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let address = cached_addresses_of_a_deleted_file_still_symbolize as fn() as usize as u64;
        let own_mapping = own.mapping_for(address).expect("own code is mapped").clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("deleted-program");
        std::fs::copy(&own_mapping.path, &copy).expect("copy the test binary");
        let metadata = std::fs::metadata(&copy).expect("stat the copy");
        let dev = metadata.dev();
        let mapping = Mapping {
            path: copy.to_str().expect("utf-8 path").to_string(),
            dev_inode: (
                format!("{:x}:{:x}", libc::major(dev), libc::minor(dev)),
                metadata.ino(),
            ),
            ..own_mapping
        };
        let process = ProcessInfo {
            mappings: vec![mapping],
            known: true,
            ..Default::default()
        };
        let mut symbolizer = Symbolizer::new(4096);
        symbolizer.set_max_dwarf_file_bytes(0); // ELF symbols: enough, and fast
        let first = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &[address]);
        let name = "cached_addresses_of_a_deleted_file_still_symbolize";
        assert!(first[0][0].function.contains(name), "got {first:?}");
        std::fs::remove_file(&copy).expect("delete the copy");
        let again = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &process, &[address]);
        assert!(again[0][0].function.contains(name), "got {again:?}");
        assert_eq!(symbolizer.stats().failures, 0);
    }

    /// Symbolizes a new address of this test binary in each of `cycles` cycles; returns the stats.
    fn symbolize_a_new_address_every_cycle(kept_files_max_bytes: u64, cycles: u64) -> SymbolizeStats {
        let pid = std::process::id();
        let own = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let address = symbolize_a_new_address_every_cycle as fn(u64, u64) -> SymbolizeStats as usize as u64;
        let mut symbolizer = Symbolizer::new(4096);
        symbolizer.set_max_dwarf_file_bytes(0); // ELF symbols: enough, and fast
        symbolizer.set_kept_files_max_bytes(kept_files_max_bytes);
        for cycle in 0..cycles {
            let frames = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &own, &[address + cycle]);
            assert!(
                frames[0][0]
                    .function
                    .contains("symbolize_a_new_address_every_cycle"),
                "got {frames:?}"
            );
            symbolizer.end_cycle();
        }
        symbolizer.stats()
    }

    #[test]
    fn a_file_with_new_addresses_every_cycle_is_not_parsed_every_cycle() {
        // The first cycle parses it for that cycle only; the second sees the misses recur and keeps
        // it; later cycles use the kept parse.
        let stats = symbolize_a_new_address_every_cycle(1 << 30, 5);
        assert_eq!(stats.files_parsed, 2, "{stats:?}");
        assert!(stats.kept_file_bytes >= MIN_KEPT_FILE_ESTIMATE, "{stats:?}");
    }

    #[test]
    fn files_over_the_kept_budget_are_parsed_every_cycle() {
        let stats = symbolize_a_new_address_every_cycle(MIN_KEPT_FILE_ESTIMATE / 2, 4);
        assert_eq!(stats.files_parsed, 4, "{stats:?}");
        assert_eq!(stats.kept_file_bytes, 0);
        let stats = symbolize_a_new_address_every_cycle(0, 3);
        assert_eq!(stats.files_parsed, 3, "{stats:?}");
    }

    /// The key of a made-up file called `name` (for `KeptFiles`, which never opens it).
    fn key(name: &str) -> FileKey {
        FileKey {
            build_id: String::new(),
            path: name.to_string(),
            dev_inode: ("0:0".to_string(), 0),
        }
    }

    #[test]
    fn kept_files_are_dropped_when_idle_and_least_recently_used_first() {
        let mut kept = KeptFiles::new(3 * MIN_KEPT_FILE_ESTIMATE);
        kept.keep(key("a"), PathBuf::from("a"), blaze(), 0);
        kept.end_cycle();
        kept.keep(key("b"), PathBuf::from("b"), blaze(), MIN_KEPT_FILE_ESTIMATE);
        // "c" needs two estimates of room: "a", the least recently used, goes.
        kept.keep(key("c"), PathBuf::from("c"), blaze(), 2 * MIN_KEPT_FILE_ESTIMATE);
        assert!(!kept.files.contains_key(&key("a")));
        assert!(kept.files.contains_key(&key("b")) && kept.files.contains_key(&key("c")));
        assert_eq!(kept.bytes, 3 * MIN_KEPT_FILE_ESTIMATE);
        for _ in 0..=KEPT_FILE_IDLE_CYCLES {
            kept.end_cycle();
        }
        assert!(kept.files.is_empty());
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn a_file_parsed_for_one_cycle_first_makes_room_among_kept_files() {
        // The budget bounds kept files plus the file parsed for one cycle: otherwise kept files add
        // to the peak that a large file parsed every cycle makes anyway.
        let mut kept = KeptFiles::new(3 * MIN_KEPT_FILE_ESTIMATE);
        kept.keep(key("a"), PathBuf::from("a"), blaze(), MIN_KEPT_FILE_ESTIMATE);
        kept.end_cycle();
        kept.keep(key("b"), PathBuf::from("b"), blaze(), MIN_KEPT_FILE_ESTIMATE);
        kept.record_estimate(&key("big"), 2 * MIN_KEPT_FILE_ESTIMATE);
        let expected = kept.expected_bytes(&key("big"), || 1);
        assert_eq!(
            expected,
            2 * MIN_KEPT_FILE_ESTIMATE,
            "the last parse's size, not the file's"
        );
        kept.make_room(expected);
        assert!(!kept.files.contains_key(&key("a")) && kept.files.contains_key(&key("b")));
        assert_eq!(kept.bytes, MIN_KEPT_FILE_ESTIMATE);
        // Never parsed: guessed.
        assert_eq!(kept.expected_bytes(&key("new"), || 1000), 1000);
    }

    /// Regression: the first parse of a file over the DWARF limit (ELF symbols only) was guessed at
    /// four times the file's size, as if its DWARF were compressed; for a large binary that exceeded
    /// the whole budget, so every kept file was dropped to make room for a parse that took little.
    #[test]
    fn a_first_parse_with_elf_symbols_only_keeps_the_kept_files() {
        let pid = std::process::id();
        let own = crate::process::read_process(std::path::Path::new("/proc"), pid);
        let address = a_first_parse_with_elf_symbols_only_keeps_the_kept_files as fn() as usize as u64;
        let own_path = own.mapping_for(address).expect("own code is mapped").path.clone();
        let own_bytes = std::fs::metadata(&own_path).expect("stat own binary").len();
        let budget = DEFAULT_KEPT_FILES_MAX_BYTES;
        assert!(
            own_bytes * UNKNOWN_FILE_FACTOR > budget,
            "the test binary ({own_bytes} bytes) is too small to show the difference"
        );
        let guess = first_parse_guess(std::path::Path::new(&own_path), "", own_bytes, false);
        assert!(guess < own_bytes, "{guess} against a {own_bytes}-byte file");

        let mut symbolizer = Symbolizer::new(4096);
        symbolizer.set_max_dwarf_file_bytes(0);
        symbolizer.set_kept_files_max_bytes(budget);
        symbolizer.kept.keep(
            key("kept"),
            PathBuf::from("kept"),
            blaze(),
            MIN_KEPT_FILE_ESTIMATE,
        );
        let frames = symbolizer.user_frames(std::path::Path::new("/proc"), pid, &own, &[address]);
        assert!(
            frames[0][0]
                .function
                .contains("a_first_parse_with_elf_symbols_only_keeps_the_kept_files"),
            "got {frames:?}"
        );
        assert_eq!(symbolizer.stats().files_parsed, 1);
        assert!(symbolizer.kept.files.contains_key(&key("kept")));
    }

    /// Writes an x86-64 ELF file to `path`: `text_bytes` of code, one symbol, and a `.debug_info`
    /// section that says it inflates to `inflated_debug_bytes` when that is not 0 (the compressed
    /// payload itself is not valid zlib: only the section headers are read). Returns its size.
    fn write_elf(path: &std::path::Path, text_bytes: usize, inflated_debug_bytes: u64) -> u64 {
        use object::write::{Object as WriteObject, Symbol, SymbolSection};
        use object::{Architecture, BinaryFormat, Endianness, SectionFlags, SectionKind, SymbolFlags};
        let mut elf = WriteObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = elf.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
        elf.append_section_data(text, &vec![0x90; text_bytes], 16);
        elf.add_symbol(Symbol {
            name: b"spin".to_vec(),
            value: 0,
            size: 16,
            kind: object::SymbolKind::Text,
            scope: object::SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        if inflated_debug_bytes > 0 {
            let debug = elf.add_section(Vec::new(), b".debug_info".to_vec(), SectionKind::Debug);
            // Elf64_Chdr: type (1 = zlib), reserved, uncompressed size, alignment; then the payload.
            let mut data = Vec::new();
            data.extend_from_slice(&1u32.to_le_bytes());
            data.extend_from_slice(&0u32.to_le_bytes());
            data.extend_from_slice(&inflated_debug_bytes.to_le_bytes());
            data.extend_from_slice(&1u64.to_le_bytes());
            data.extend_from_slice(&[0; 64]);
            elf.append_section_data(debug, &data, 1);
            elf.section_mut(debug).flags = SectionFlags::Elf {
                sh_flags: u64::from(object::elf::SHF_COMPRESSED),
            };
        }
        let bytes = elf.write().expect("an ELF file can be written");
        std::fs::write(path, &bytes).expect("write the ELF file");
        bytes.len() as u64
    }

    /// Regression: a program without DWARF (a stripped `perf`, 9 MB) was guessed at four times its
    /// size, 36 MB, more than the whole budget: its first parse dropped every kept file, libc's
    /// compressed debug file among them, which was then inflated again. It is now guessed from its
    /// section headers.
    #[test]
    fn a_first_parse_of_a_program_without_dwarf_is_guessed_from_its_symbol_tables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let program = dir.path().join("stripped");
        let file_bytes = write_elf(&program, 8 << 20, 0);
        assert!(file_bytes * UNKNOWN_FILE_FACTOR > DEFAULT_KEPT_FILES_MAX_BYTES);
        assert_eq!(
            first_parse_guess(&program, "", file_bytes, true),
            MIN_KEPT_FILE_ESTIMATE
        );
    }

    #[test]
    fn a_first_parse_with_compressed_dwarf_is_guessed_at_its_inflated_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let program = dir.path().join("with-dwarf");
        let inflated = 40 << 20;
        let file_bytes = write_elf(&program, 4096, inflated);
        let sizes = ElfParseBytes::read(&program).expect("an ELF file");
        assert_eq!(sizes.dwarf_inflated, inflated);
        assert!(sizes.dwarf_mapped > 0 && sizes.dwarf_mapped < 1024, "{sizes:?}");
        assert!(sizes.symbol_tables > 0, "{sizes:?}");
        let guess = first_parse_guess(&program, "", file_bytes, true);
        assert_eq!(
            guess,
            sizes.symbol_tables + sizes.dwarf_mapped + inflated,
            "{sizes:?}"
        );
        // Over the DWARF limit only the symbol tables are read.
        assert_eq!(
            first_parse_guess(&program, "", file_bytes, false),
            MIN_KEPT_FILE_ESTIMATE
        );
    }

    #[test]
    fn a_separate_debug_file_is_found_by_build_id_and_counted_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let build_id = "93ac61ec5a8eb1396f9fbd350e3169a558528a40";
        let debug_dir = dir.path().join(".build-id/93");
        std::fs::create_dir_all(&debug_dir).expect("mkdir");
        let debug_path = debug_dir.join("ac61ec5a8eb1396f9fbd350e3169a558528a40.debug");
        let inflated = 12 << 20;
        write_elf(&debug_path, 256 << 10, inflated);
        let dirs = ["/nonexistent", dir.path().to_str().expect("utf-8 temp dir")];
        let (found, sizes) = separate_debug_file(&dirs, build_id).expect("found by build id");
        assert_eq!(found, debug_path);
        assert_eq!(sizes.dwarf_inflated, inflated);
        assert!(
            separate_debug_file(&dirs, "93ac").is_none(),
            "too short a build id"
        );
        assert!(separate_debug_file(&dirs, &build_id.replace("93", "94")).is_none());
    }

    /// A kept file dropped to make room has recurring misses by definition: its next miss keeps it
    /// again instead of parsing it once more for one cycle first.
    #[test]
    fn a_kept_file_dropped_to_make_room_is_kept_again_at_its_next_miss() {
        let mut kept = KeptFiles::new(2 * MIN_KEPT_FILE_ESTIMATE);
        kept.keep(
            key("libc"),
            PathBuf::from("libc"),
            blaze(),
            2 * MIN_KEPT_FILE_ESTIMATE,
        );
        kept.end_cycle();
        kept.make_room(MIN_KEPT_FILE_ESTIMATE);
        assert!(!kept.files.contains_key(&key("libc")));
        kept.end_cycle();
        assert!(kept.recurs(&key("libc")));
        // A file never seen before does not recur.
        assert!(!kept.recurs(&key("new")));
    }

    #[test]
    fn kallsyms_is_read_once_not_every_cycle() {
        // A kernel text address: from kallsyms as root; without root kallsyms shows zeros, and any
        // address exercises the same path (unnamed, and too soon to read kallsyms again).
        let schedule = std::fs::read_to_string("/proc/kallsyms").ok().and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let (_, name) = (fields.next()?, fields.next()?);
                (name == "schedule" && address != 0).then_some(address)
            })
        });
        let address = schedule.unwrap_or(0xffff_ffff_8100_0000);
        let mut symbolizer = Symbolizer::new(4096);
        let first = symbolizer.kernel_frames(&[address + 4]);
        if schedule.is_some() {
            assert_eq!(first[0][0].function, "schedule", "got {first:?}");
        }
        // The next cycles: parsed user files are dropped, new kernel addresses come in.
        for cycle in 1..4u64 {
            symbolizer.release_parsed_files();
            let frames = symbolizer.kernel_frames(&[address + 4 + cycle]);
            if schedule.is_some() {
                assert_eq!(frames[0][0].function, "schedule", "got {frames:?}");
            }
        }
        assert_eq!(symbolizer.stats().cache_misses, 4);
        assert_eq!(symbolizer.stats().kernel_symbol_reads, 1);
    }

    #[test]
    fn unmapped_address_is_unknown_not_an_error() {
        let process = ProcessInfo::default();
        let mut symbolizer = Symbolizer::new(4096);
        let frames = symbolizer.user_frames(std::path::Path::new("/proc"), 1, &process, &[0x10, 0x20]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0][0].function, "[exited process]");
        assert_eq!(symbolizer.stats().failures, 2);
    }
}
