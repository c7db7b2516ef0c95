//! DWARF unwinding of user stacks without frame pointers: the BPF program copies the user registers
//! (rip, rsp, rbp) and the top of the user stack; this module walks that copy with the mapped files'
//! `.eh_frame` (through `.eh_frame_hdr`), or `.debug_frame` when a file has no `.eh_frame`, using the
//! framehop crate.
//!
//! - Unwind tables are read once per file (device and inode; files with the same build id share one
//!   copy) and kept within a byte budget: the least recently used files are dropped first.
//! - Each process gets a framehop unwinder listing its executable mappings, rebuilt when the process
//!   cache re-reads its `/proc/PID/maps` (libraries mapped, exec).
//! - Code without unwind tables is walked with frame pointers (framehop's fallback rule), so stacks that
//!   mix both kinds of code stay whole.
//! - The walk stops cleanly, with a marker, at JIT code (executable memory without a file: no tables to
//!   read), at the depth limit and where the copy of the stack ends before the stack does.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

use crate::bpf::StackEnd;
use crate::process::{Mapping, ProcessInfo};

/// Most user frames a DWARF walk produces (the same limit as the kernel's frame-pointer walk); a
/// deeper stack ends with a `[truncated]` marker.
pub const MAX_USER_FRAMES: usize = 127;

/// Default budget for unwind tables kept in memory.
pub const DEFAULT_MAX_TABLE_BYTES: usize = 32 * 1024 * 1024;

/// ELF `PF_X`: the segment is executable.
const PF_X: u32 = 1;

/// Why a file's unwind tables could not be read. Local to that file: its frames fall back to frame
/// pointers.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an ELF object this module understands.
    #[error("cannot parse {path} as ELF: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
}

/// Immutable section bytes shared by every process that maps the file.
#[derive(Clone, Debug, Default)]
pub struct SectionBytes(Arc<[u8]>);

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// One `PT_LOAD` segment: where a file range goes in the file's own address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LoadSegment {
    file_offset: u64,
    file_size: u64,
    address: u64,
    executable: bool,
}

/// The unwind tables of one ELF file and what is needed to place them in a process.
#[derive(Debug)]
pub struct ModuleTables {
    sections: ExplicitModuleSectionInfo<SectionBytes>,
    loads: Vec<LoadSegment>,
    build_id: Vec<u8>,
    bytes: usize,
}

impl ModuleTables {
    /// Bytes of section data held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when the file has `.eh_frame` or `.debug_frame` (else its code unwinds with frame pointers).
    pub fn has_tables(&self) -> bool {
        self.sections.eh_frame.is_some() || self.sections.debug_frame.is_some()
    }

    /// The address (in the process) where the file's address 0 lies, for the executable mapping
    /// `mapping`: the mapping's start minus the file address of its first byte.
    fn base_address(&self, mapping: &Mapping) -> u64 {
        let page_start = |offset: u64| offset & !0xfff;
        let segment = self
            .loads
            .iter()
            .find(|load| {
                load.executable
                    && page_start(load.file_offset) <= mapping.offset
                    && mapping.offset < load.file_offset + load.file_size.max(1)
            })
            .or_else(|| self.loads.iter().find(|load| load.executable));
        match segment {
            Some(load) => {
                let address_of_mapping_start = load
                    .address
                    .wrapping_add(mapping.offset)
                    .wrapping_sub(load.file_offset);
                mapping.start.wrapping_sub(address_of_mapping_start)
            }
            // No program headers (never for a mapped executable file): assume offsets are addresses.
            None => mapping.start.wrapping_sub(mapping.offset),
        }
    }
}

/// The address range and the (decompressed) contents of section `name`, `None` when it is absent, empty
/// or unreadable. Decompressing matters for `.debug_frame`: Go binaries, which have no `.eh_frame`,
/// carry it zlib-compressed (`SHF_COMPRESSED`), and so does anything linked with `-gz`.
fn section_bytes<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    name: &str,
) -> Option<(Range<u64>, SectionBytes)> {
    let section = file.section_by_name(name)?;
    let data = section.uncompressed_data().ok()?;
    if data.is_empty() {
        return None;
    }
    let start = section.address();
    Some((
        start..start + section.size(),
        SectionBytes(Arc::from(data.as_ref())),
    ))
}

/// Reads the unwind tables of the ELF image in `data` (a file, or our own copy of the vDSO).
fn parse_tables<'data, R: object::ReadRef<'data>>(data: R, path: &Path) -> Result<ModuleTables, UnwindError> {
    let file = object::File::parse(data).map_err(|error| UnwindError::Parse {
        path: path.to_path_buf(),
        detail: error.to_string(),
    })?;
    let mut bytes = 0;
    let mut section = |name: &str| -> Option<(Range<u64>, SectionBytes)> {
        let (range, data) = section_bytes(&file, name)?;
        bytes += data.0.len();
        Some((range, data))
    };
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = if eh_frame.is_some() {
        section(".eh_frame_hdr")
    } else {
        None
    };
    // framehop reads .debug_frame only when there is no .eh_frame: load it only then.
    let debug_frame = if eh_frame.is_none() {
        section(".debug_frame")
    } else {
        None
    };
    let range = |name: &str| {
        file.section_by_name(name)
            .map(|section| section.address()..section.address() + section.size())
    };
    let sections = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: range(".text"),
        got_svma: range(".got"),
        eh_frame_svma: eh_frame.as_ref().map(|(range, _)| range.clone()),
        eh_frame: eh_frame.map(|(_, data)| data),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(|(range, _)| range.clone()),
        eh_frame_hdr: eh_frame_hdr.map(|(_, data)| data),
        debug_frame: debug_frame.map(|(_, data)| data),
        ..Default::default()
    };
    let loads = file
        .segments()
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            let executable = match segment.flags() {
                SegmentFlags::Elf { p_flags } => p_flags & PF_X != 0,
                _ => true,
            };
            LoadSegment {
                file_offset,
                file_size,
                address: segment.address(),
                executable,
            }
        })
        .collect();
    let build_id = file
        .build_id()
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(ModuleTables {
        sections,
        loads,
        build_id,
        bytes,
    })
}

/// Reads the unwind tables of the ELF file at `path`, reading only the headers and the unwind sections
/// (never the whole file, never a memory map that a truncated file could turn into SIGBUS).
pub fn read_module_tables(path: &Path) -> Result<ModuleTables, UnwindError> {
    let file = std::fs::File::open(path).map_err(|source| UnwindError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cache = object::ReadCache::new(file);
    parse_tables(&cache, path)
}

/// The vDSO's unwind tables, read from this process' own vDSO: the kernel maps the same image into
/// every 64-bit process, and it is not a file that could be opened.
fn read_own_vdso_tables() -> Option<ModuleTables> {
    // SAFETY: getauxval has no preconditions; it returns 0 when the entry is absent.
    let start = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if start == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mapping = crate::process::parse_maps(&maps)
        .into_iter()
        .find(|mapping| mapping.path == "[vdso]" && mapping.start == start)?;
    let length = usize::try_from(mapping.end - mapping.start).ok()?;
    // SAFETY: [start, end) is our own vDSO mapping (readable and executable, mapped by the kernel for
    // the whole life of the process, never unmapped); it is copied out at once.
    let image: Vec<u8> = unsafe { std::slice::from_raw_parts(start as *const u8, length) }.to_vec();
    parse_tables(image.as_slice(), Path::new("[vdso]")).ok()
}

/// The result of unwinding one stack: addresses leaf first (the interrupted instruction, then return
/// addresses) and how the walk ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnwoundStack {
    /// Leaf first; never empty.
    pub frames: Vec<u64>,
    /// Whether the stack is whole, cut (`[truncated]`) or ends in JIT code (`[jit]`).
    pub end: StackEnd,
}

/// What the BPF program captured for one sample.
#[derive(Debug, Clone, Copy)]
pub struct CapturedStack<'a> {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer: `stack[0]` is the byte at this address.
    pub sp: u64,
    /// Frame pointer register.
    pub bp: u64,
    /// The copied stack.
    pub stack: &'a [u8],
    /// The copy stopped at its size limit: reading past it means the stack was cut, not that it ended.
    pub copy_full: bool,
}

/// Counters of the unwinder's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Stacks unwound.
    pub stacks: u64,
    /// Stacks that ended with `[truncated]`.
    pub truncated: u64,
    /// Stacks that ended in JIT code.
    pub jit: u64,
    /// Files whose unwind tables were read.
    pub tables_loaded: u64,
    /// Files whose tables could not be read (their code unwinds with frame pointers).
    pub table_failures: u64,
    /// Files dropped to stay within the byte budget.
    pub tables_evicted: u64,
    /// Nanoseconds spent unwinding (excluding reading tables), for the per-sample cost.
    pub unwind_nanos: u64,
}

struct TableEntry {
    tables: Option<Arc<ModuleTables>>,
    last_used: u64,
}

struct ProcessUnwinder {
    unwinder: UnwinderX86_64<SectionBytes>,
    built_from: Instant,
    last_used: u64,
}

/// The DWARF unwinder of the agent: unwind tables by file, one framehop unwinder per process.
/// Not `Sync`: one per profiling loop.
pub struct DwarfUnwinder {
    tables: HashMap<(String, u64), TableEntry>,
    by_build_id: HashMap<Vec<u8>, Arc<ModuleTables>>,
    processes: HashMap<u32, ProcessUnwinder>,
    cache: CacheX86_64,
    vdso: Option<Arc<ModuleTables>>,
    table_bytes: usize,
    max_table_bytes: usize,
    clock: u64,
    stats: UnwindStats,
}

/// How an address relates to a process' executable mappings.
enum AddressKind {
    /// In a mapped file or the vDSO: unwind tables may exist.
    Code,
    /// Executable memory without a file: JIT compilers' code.
    Jit,
    /// In no executable mapping.
    Unmapped,
}

fn classify(process: &ProcessInfo, address: u64) -> AddressKind {
    match process.mapping_for(address) {
        Some(mapping) if mapping.is_file() || mapping.path == "[vdso]" => AddressKind::Code,
        Some(_) => AddressKind::Jit,
        None => AddressKind::Unmapped,
    }
}

impl DwarfUnwinder {
    /// An unwinder keeping at most about `max_table_bytes` of unwind tables (the least recently used
    /// files are dropped beyond it; tables still used by a process' unwinder live until it is rebuilt).
    pub fn new(max_table_bytes: usize) -> DwarfUnwinder {
        DwarfUnwinder {
            tables: HashMap::new(),
            by_build_id: HashMap::new(),
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
            vdso: read_own_vdso_tables().map(Arc::new),
            table_bytes: 0,
            max_table_bytes,
            clock: 0,
            stats: UnwindStats::default(),
        }
    }

    /// Work counters since creation.
    pub fn stats(&self) -> UnwindStats {
        self.stats
    }

    /// Bytes of unwind tables currently cached.
    pub fn table_bytes(&self) -> usize {
        self.table_bytes
    }

    /// Files whose tables are cached (including files that have none).
    pub fn cached_files(&self) -> usize {
        self.tables.len()
    }

    /// Marks the end of a profiling cycle: processes not sampled during the last two cycles lose their
    /// unwinder (rebuilt from the cached tables if they come back).
    pub fn end_cycle(&mut self) {
        self.clock += 1;
        let clock = self.clock;
        self.processes
            .retain(|_, process| clock.saturating_sub(process.last_used) <= 2);
    }

    /// Loads the tables of `mapping` (of process `pid`) into the cache if they are not there yet, and
    /// returns them; `None` when the file cannot be read.
    pub fn tables_for(&mut self, proc_root: &Path, pid: u32, mapping: &Mapping) -> Option<Arc<ModuleTables>> {
        if mapping.path == "[vdso]" {
            return self.vdso.clone();
        }
        let key = (mapping.dev_inode.0.clone(), mapping.dev_inode.1);
        let clock = self.clock;
        if let Some(entry) = self.tables.get_mut(&key) {
            entry.last_used = clock;
            return entry.tables.clone();
        }
        let path = mapping.open_path(proc_root, pid)?;
        let tables = match read_module_tables(&path) {
            Ok(tables) => {
                self.stats.tables_loaded += 1;
                // The same build in another container (another inode) shares one copy.
                let shared = if tables.build_id.is_empty() {
                    None
                } else {
                    self.by_build_id.get(&tables.build_id).cloned()
                };
                match shared {
                    Some(shared) => Some(shared),
                    None => {
                        let tables = Arc::new(tables);
                        self.table_bytes += tables.bytes;
                        if !tables.build_id.is_empty() {
                            self.by_build_id.insert(tables.build_id.clone(), tables.clone());
                        }
                        Some(tables)
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "no unwind tables; frames in this file unwind with frame pointers");
                self.stats.table_failures += 1;
                None
            }
        };
        self.tables.insert(
            key,
            TableEntry {
                tables: tables.clone(),
                last_used: clock,
            },
        );
        self.evict_over_budget();
        tables
    }

    /// Drops the least recently used files' tables until the cache is within its byte budget.
    fn evict_over_budget(&mut self) {
        if self.table_bytes <= self.max_table_bytes {
            return;
        }
        let mut by_age: Vec<((String, u64), u64)> = self
            .tables
            .iter()
            .map(|(key, entry)| (key.clone(), entry.last_used))
            .collect();
        by_age.sort_by_key(|(_, last_used)| *last_used);
        for (key, _) in by_age {
            if self.table_bytes <= self.max_table_bytes {
                break;
            }
            let Some(entry) = self.tables.remove(&key) else {
                continue;
            };
            self.stats.tables_evicted += 1;
            if let Some(tables) = entry.tables {
                // Bytes are accounted once per build id (shared copies are not double counted).
                let still_shared = self.tables.values().any(|other| {
                    other
                        .tables
                        .as_ref()
                        .is_some_and(|other| Arc::ptr_eq(other, &tables))
                });
                if !still_shared {
                    self.table_bytes = self.table_bytes.saturating_sub(tables.bytes);
                    self.by_build_id.remove(&tables.build_id);
                }
            }
        }
        // Process unwinders hold Arcs to evicted tables: rebuild them lazily so the memory goes.
        self.processes.clear();
    }

    /// Builds process `pid`'s unwinder from `process`' mappings unless the one it has was built from
    /// the same read of `/proc` (`read_at`).
    fn ensure_process_unwinder(
        &mut self,
        proc_root: &Path,
        pid: u32,
        process: &ProcessInfo,
        read_at: Instant,
    ) {
        let fresh = self
            .processes
            .get(&pid)
            .is_some_and(|existing| existing.built_from == read_at);
        if fresh {
            return;
        }
        let mut unwinder = UnwinderX86_64::new();
        for mapping in &process.mappings {
            if !(mapping.is_file() || mapping.path == "[vdso]") {
                continue;
            }
            let Some(tables) = self.tables_for(proc_root, pid, mapping) else {
                continue;
            };
            let base = tables.base_address(mapping);
            unwinder.add_module(Module::new(
                mapping.path.clone(),
                mapping.start..mapping.end,
                base,
                tables.sections.clone(),
            ));
        }
        self.processes.insert(
            pid,
            ProcessUnwinder {
                unwinder,
                built_from: read_at,
                last_used: self.clock,
            },
        );
    }

    /// Unwinds one captured stack of process `pid`, whose mappings are `process` (read from `/proc` at
    /// `read_at`). Never fails: the result has at least the leaf, and says how the walk ended.
    pub fn unwind(
        &mut self,
        proc_root: &Path,
        pid: u32,
        process: &ProcessInfo,
        read_at: Instant,
        captured: &CapturedStack<'_>,
    ) -> UnwoundStack {
        // Build (or find) the process' unwinder first: reading tables is not unwinding time.
        self.ensure_process_unwinder(proc_root, pid, process, read_at);
        let started = Instant::now();
        let Some(entry) = self.processes.get_mut(&pid) else {
            // Just ensured above; a leaf-only stack is the answer that can never be wrong.
            return UnwoundStack {
                frames: vec![captured.ip],
                end: StackEnd::Complete,
            };
        };
        entry.last_used = self.clock;
        let result = walk(&entry.unwinder, &mut self.cache, process, captured);
        self.stats.stacks += 1;
        match result.end {
            StackEnd::Truncated => self.stats.truncated += 1,
            StackEnd::Jit => self.stats.jit += 1,
            StackEnd::Complete => {}
        }
        self.stats.unwind_nanos += started.elapsed().as_nanos() as u64;
        result
    }
}

/// The walk itself: framehop one frame at a time, with our own stopping rules around it.
fn walk(
    unwinder: &UnwinderX86_64<SectionBytes>,
    cache: &mut CacheX86_64,
    process: &ProcessInfo,
    captured: &CapturedStack<'_>,
) -> UnwoundStack {
    let stack = captured.stack;
    let sp = captured.sp;
    let mut read_past_copy = false;
    let mut read_stack = |address: u64| -> Result<u64, ()> {
        let offset = address.checked_sub(sp).ok_or(())?;
        let offset = usize::try_from(offset).map_err(|_| ())?;
        let Some(bytes) = offset.checked_add(8).and_then(|end| stack.get(offset..end)) else {
            if offset >= stack.len() {
                read_past_copy = true;
            }
            return Err(());
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    };
    let mut frames = vec![captured.ip];
    let mut regs = UnwindRegsX86_64::new(captured.ip, captured.sp, captured.bp);
    let mut address = FrameAddress::from_instruction_pointer(captured.ip);
    let end = loop {
        match classify(process, address.address_for_lookup()) {
            AddressKind::Jit => break StackEnd::Jit,
            // Only the leaf can be unmapped here (return addresses are checked below): the process
            // mapped new code since its maps were read. Nothing to unwind with.
            AddressKind::Unmapped => break StackEnd::Complete,
            AddressKind::Code => {}
        }
        match unwinder.unwind_frame(address, &mut regs, cache, &mut read_stack) {
            Ok(Some(return_address)) => {
                // A return address outside every mapping is garbage (a frame-pointer guess through code
                // without frame pointers or tables): the walk ends before it.
                if matches!(
                    classify(process, return_address.saturating_sub(1)),
                    AddressKind::Unmapped
                ) {
                    break StackEnd::Complete;
                }
                if frames.len() >= MAX_USER_FRAMES {
                    break StackEnd::Truncated;
                }
                frames.push(return_address);
                match FrameAddress::from_return_address(return_address) {
                    Some(next) => address = next,
                    None => break StackEnd::Complete,
                }
            }
            Ok(None) => break StackEnd::Complete,
            Err(framehop::Error::CouldNotReadStack(_)) if read_past_copy && captured.copy_full => {
                break StackEnd::Truncated
            }
            Err(_) => break StackEnd::Complete,
        }
    };
    UnwoundStack { frames, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::parse_maps;

    /// What `tests/programs/chain_capture.c` writes: registers, its own maps, the stack copy.
    struct Capture {
        ip: u64,
        sp: u64,
        bp: u64,
        maps: String,
        stack: Vec<u8>,
        pid: u32,
    }

    /// Builds the chain test program (PIE executable + shared library, -O2 -fomit-frame-pointer) and
    /// runs it in capture mode: at depth 5 it writes its registers, maps and stack to a file.
    fn capture(dir: &Path) -> Capture {
        let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
        let library = dir.join("libkilnchain.so");
        let executable = dir.join("dwarfchain");
        let status = std::process::Command::new("clang")
            .args(["-O2", "-fomit-frame-pointer", "-fPIC", "-shared", "-o"])
            .arg(&library)
            .arg(programs.join("dwarfchain_lib.c"))
            .status()
            .expect("run clang (Debian package clang)");
        assert!(status.success(), "building the library failed");
        let status = std::process::Command::new("clang")
            .args(["-O2", "-fomit-frame-pointer", "-fPIE", "-pie", "-o"])
            .arg(&executable)
            .arg(programs.join("dwarfchain.c"))
            .arg(format!("-L{}", dir.display()))
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .arg("-lkilnchain")
            .status()
            .expect("run clang");
        assert!(status.success(), "building the executable failed");
        let output = dir.join("capture.bin");
        let child = std::process::Command::new(&executable)
            .arg("capture")
            .arg(&output)
            .status()
            .expect("run dwarfchain");
        assert!(child.success(), "dwarfchain capture failed");
        let bytes = std::fs::read(&output).expect("read capture");
        let word =
            |index: usize| u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes"));
        let (pid, ip, sp, bp, maps_len, stack_len) = (word(0), word(1), word(2), word(3), word(4), word(5));
        let maps_start = 48;
        let maps_end = maps_start + maps_len as usize;
        let maps = String::from_utf8(bytes[maps_start..maps_end].to_vec()).expect("utf-8 maps");
        let stack = bytes[maps_end..maps_end + stack_len as usize].to_vec();
        Capture {
            ip,
            sp,
            bp,
            maps,
            stack,
            pid: pid as u32,
        }
    }

    fn process(maps: &str) -> ProcessInfo {
        ProcessInfo {
            comm: "dwarfchain".into(),
            mappings: parse_maps(maps),
            known: true,
            ..Default::default()
        }
    }

    fn names(capture: &Capture, info: &ProcessInfo, frames: &[u64]) -> Vec<String> {
        let mut symbolizer = crate::symbolize::Symbolizer::new(1024);
        symbolizer
            .user_frames(Path::new("/proc"), capture.pid, info, frames)
            .iter()
            .map(|frames| {
                frames
                    .last()
                    .map(|frame| frame.function.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn unwind(capture: &Capture, info: &ProcessInfo, stack: &[u8], copy_full: bool) -> UnwoundStack {
        let mut unwinder = DwarfUnwinder::new(DEFAULT_MAX_TABLE_BYTES);
        unwinder.unwind(
            Path::new("/proc"),
            capture.pid,
            info,
            Instant::now(),
            &CapturedStack {
                ip: capture.ip,
                sp: capture.sp,
                bp: capture.bp,
                stack,
                copy_full,
            },
        )
    }

    #[test]
    fn compressed_debug_frame_is_read_decompressed() {
        // A library whose .debug_frame is zlib-compressed (as Go binaries ship theirs), and the same
        // library with its debug sections decompressed by objcopy: the unwinder must see the same bytes.
        let dir = tempfile::tempdir().expect("tempdir");
        let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
        let compressed = dir.path().join("libcompressed.so");
        let status = std::process::Command::new("clang")
            .args([
                "-O2",
                "-g",
                "-gz=zlib",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
            ])
            .args(["-fPIC", "-shared", "-o"])
            .arg(&compressed)
            .arg(programs.join("dwarfchain_lib.c"))
            .status()
            .expect("run clang (Debian package clang)");
        assert!(status.success(), "building the library failed");
        let plain = dir.path().join("libplain.so");
        let status = std::process::Command::new("objcopy")
            .arg("--decompress-debug-sections")
            .arg(&compressed)
            .arg(&plain)
            .status()
            .expect("run objcopy (Debian package binutils)");
        assert!(status.success(), "objcopy failed");
        let read = |path: &Path| {
            let bytes = std::fs::read(path).expect("read library");
            let file = object::File::parse(bytes.as_slice()).expect("parse library");
            let is_compressed = file
                .section_by_name(".debug_frame")
                .and_then(|section| section.compressed_file_range().ok())
                .is_some_and(|range| range.format != object::CompressionFormat::None);
            let (_, data) = section_bytes(&file, ".debug_frame").expect(".debug_frame present");
            (is_compressed, data.0.to_vec())
        };
        let (was_compressed, from_compressed) = read(&compressed);
        let (plain_compressed, from_plain) = read(&plain);
        assert!(
            was_compressed && !plain_compressed,
            "the test files are not what they should be"
        );
        assert_eq!(from_compressed, from_plain);
        // A .debug_frame CIE: 32-bit length, then the CIE id 0xffffffff.
        assert_eq!(&from_plain[4..8], &[0xff; 4]);
    }

    #[test]
    fn omit_frame_pointer_chain_unwinds_to_main_through_the_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capture = capture(dir.path());
        let info = process(&capture.maps);
        let unwound = unwind(&capture, &info, &capture.stack, false);
        let names = names(&capture, &info, &unwound.frames);
        let chain = [
            "chain_five",
            "chain_four",
            "chain_three",
            "chain_two",
            "chain_one",
            "main",
        ];
        let start = names.iter().position(|name| name == "chain_five");
        let found: Vec<&str> = start
            .map(|start| {
                names[start..]
                    .iter()
                    .take(chain.len())
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(found, chain, "whole stack: {names:?}");
        assert!(
            names.iter().any(|name| name.contains("__libc_start")),
            "the walk reaches libc's entry: {names:?}"
        );
        assert_eq!(unwound.end, StackEnd::Complete, "{names:?}");
    }

    #[test]
    fn a_short_copy_marks_the_stack_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capture = capture(dir.path());
        let info = process(&capture.maps);
        let whole = unwind(&capture, &info, &capture.stack, false);
        // Cut the copy inside the chain: the walk must stop early and, as the copy was "full", mark it.
        let cut = &capture.stack[..capture.stack.len().min(96)];
        let truncated = unwind(&capture, &info, cut, true);
        assert!(
            truncated.frames.len() < whole.frames.len(),
            "{truncated:?} vs {whole:?}"
        );
        assert_eq!(truncated.end, StackEnd::Truncated);
        // The same cut where the stack really ended (copy not full) is not marked.
        let ended = unwind(&capture, &info, cut, false);
        assert_eq!(ended.end, StackEnd::Complete);
    }

    #[test]
    fn code_without_a_file_stops_the_walk_as_jit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capture = capture(dir.path());
        let mut info = process(&capture.maps);
        // Pretend the shared library's code is anonymous executable memory (what a JIT maps).
        for mapping in &mut info.mappings {
            if mapping.path.ends_with("libkilnchain.so") {
                mapping.path = String::new();
                mapping.dev_inode = ("00:00".into(), 0);
            }
        }
        let unwound = unwind(&capture, &info, &capture.stack, false);
        assert_eq!(unwound.end, StackEnd::Jit);
        // The leaf (chain_five) is in the library: the walk stops at once.
        assert_eq!(unwound.frames, vec![capture.ip]);
    }

    #[test]
    fn tables_are_shared_and_bounded() {
        // Two binaries of the system, loaded under a budget smaller than both: the cache evicts.
        let mut unwinder = DwarfUnwinder::new(1);
        let own = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let mappings: Vec<Mapping> = parse_maps(&own).into_iter().filter(Mapping::is_file).collect();
        assert!(mappings.len() >= 2, "{mappings:?}");
        let pid = std::process::id();
        let mut loaded = 0;
        for mapping in &mappings {
            if let Some(tables) = unwinder.tables_for(Path::new("/proc"), pid, mapping) {
                assert!(tables.has_tables(), "{} has no .eh_frame", mapping.path);
                loaded += 1;
            }
        }
        assert!(loaded >= 2);
        assert!(unwinder.stats().tables_evicted >= 1, "{:?}", unwinder.stats());
        assert!(unwinder.cached_files() < mappings.len());
    }
}
