//! A deterministic generator of realistic CPU-profile fleets.
//!
//! The model, from the bottom up:
//! - a **function universe** of a few thousand functions in Go (runtime, standard
//!   library and third-party modules, per-service application code) and C++ (libc,
//!   libstdc++, third-party libraries, per-service application code), with
//!   realistic names, files, start lines and mangled system names;
//! - **binaries** (mappings): one per service (Go binaries link their runtime and
//!   libraries statically, so each Go service has its own copy of them at its own
//!   addresses), plus libc and libstdc++ shared by the C++ services. Every function
//!   has a few call sites (distinct PCs); some sites carry inlined frames;
//! - per service, a **pool of unique stacks** of depth 10-60 grown from a handful of
//!   root chains (HTTP/gRPC handlers, workers, GC, scheduler, thread pools) by
//!   walking a layered call graph, new stacks branching off existing ones so that
//!   stacks share prefixes as they do in real flame graphs;
//! - **series**: instances of the services with `namespace`, `service`, `instance`,
//!   `zone` and `region` labels, each burning a fixed share of CPU;
//! - one **profile** per series every interval: the instance's CPU ticks at 100 Hz,
//!   each tick's stack drawn from the service's pool by Zipf popularity, identical
//!   stacks aggregated into one pprof sample as Go's profiler does, encoded as Go's
//!   `runtime/pprof` writes a CPU profile (`samples/count` and `cpu/nanoseconds`,
//!   period 10 ms, locations and functions numbered in first-use order, only the
//!   symbols the profile uses) and gzipped at level 1 (Go's `gzip.BestSpeed`).
//!
//! Everything derives from one seed; the output does not depend on the number of
//! threads used to generate it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use kiln_proto::pprof as pb;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};

/// Sampling period of Go's CPU profiler (100 Hz), in nanoseconds.
pub const PERIOD_NANOS: i64 = 10_000_000;

/// What fleet to generate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of services (distinct binaries); two of every six are C++.
    pub services: usize,
    /// Number of series (service instances).
    pub series: usize,
    /// Number of availability zones; series are spread round-robin over them.
    pub zones: usize,
    /// Size of the function universe.
    pub functions: usize,
    /// Unique stacks per service.
    pub stacks_per_service: usize,
    /// Simulated time covered, in seconds.
    pub duration_secs: u64,
    /// One profile per series every this many seconds.
    pub interval_secs: u64,
    /// Start of the simulated time, unix ns.
    pub start_unix_nanos: i64,
    /// Zipf exponent of stack popularity.
    pub zipf_exponent: f64,
    /// Range of CPU cores an instance burns (log-uniform); 1 core = 100 ticks/s.
    pub cores: (f64, f64),
}

impl FleetSpec {
    /// Profiles per series.
    pub fn profiles_per_series(&self) -> usize {
        (self.duration_secs / self.interval_secs) as usize
    }

    /// Name of zone `index`.
    pub fn zone_name(index: usize) -> String {
        format!("eu-west-1{}", (b'a' + (index % 26) as u8) as char)
    }
}

/// Language of a service, which decides its libraries and naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A statically linked Go binary.
    Go,
    /// A C++ binary linked against libc and libstdc++.
    Cpp,
}

/// A family of functions, which decides names, callees and the binary they live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    GoRuntime,
    GoLibrary,
    Libc,
    LibStdCxx,
    CxxLibrary,
    App(usize),
}

/// One call site (a distinct PC) of a function.
#[derive(Debug, Clone)]
struct Site {
    /// Offset from the function's entry.
    offset: u64,
    /// Source line of the call (or of the sampled instruction).
    line: i64,
    /// Frames inlined at this PC, innermost first: `(function, line)`.
    inlined: Vec<(u32, i64)>,
}

/// A function of the universe.
#[derive(Debug, Clone)]
struct FunctionDef {
    name: String,
    system_name: String,
    filename: String,
    start_line: i64,
    family: Family,
    size: u64,
    sites: Vec<Site>,
    /// Callees in the same layer.
    same: Vec<u32>,
    /// Callees in lower layers (libraries, runtime, libc).
    down: Vec<u32>,
}

/// A mapping (binary or shared library) as pprof describes it.
#[derive(Debug, Clone)]
struct MappingDef {
    memory_start: u64,
    memory_limit: u64,
    file_offset: u64,
    filename: String,
    build_id: String,
    /// Whether any location of the fleet points into it.
    has_code: bool,
}

/// A location of one service: a PC in a mapping with its (inlined) lines.
#[derive(Debug, Clone)]
struct LocationDef {
    /// Index into the service's mappings.
    mapping: usize,
    address: u64,
    /// `(function, line)`, innermost first.
    lines: Vec<(u32, i64)>,
}

/// A service: its binaries, locations and pool of unique stacks.
#[derive(Debug, Clone)]
pub struct Service {
    /// Service name, also the binary name.
    pub name: String,
    /// Team namespace.
    pub namespace: String,
    /// Language.
    pub lang: Lang,
    mappings: Vec<MappingDef>,
    locations: Vec<LocationDef>,
    /// Unique stacks, leaf first, as indices into `locations`.
    stacks: Vec<Box<[u32]>>,
}

impl Service {
    /// Number of unique stacks in the pool.
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Number of distinct locations the pool uses.
    pub fn location_count(&self) -> usize {
        self.locations.len()
    }

    /// `(frames, lines)` of every stack: pprof locations, and source lines with
    /// inlined frames expanded.
    pub fn stack_depths(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.stacks.iter().map(|stack| {
            let lines = stack
                .iter()
                .map(|location| self.locations[*location as usize].lines.len())
                .sum();
            (stack.len(), lines)
        })
    }
}

/// One instance: a service, its labels and its CPU usage.
#[derive(Debug, Clone)]
pub struct SeriesDef {
    /// Index into [`Fleet::services`].
    pub service: usize,
    /// Zone index.
    pub zone: usize,
    /// Labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Mean CPU ticks per profile.
    pub ticks_per_profile: f64,
    /// Offset of this instance's profiles within the interval, ns.
    pub phase_nanos: i64,
}

/// The generated universe: functions, services with their stack pools, series.
pub struct Fleet {
    /// The spec it was generated from.
    pub spec: FleetSpec,
    functions: Vec<FunctionDef>,
    /// Services.
    pub services: Vec<Service>,
    /// Series.
    pub series: Vec<SeriesDef>,
}

/// One generated profile, gzipped, with what it holds.
#[derive(Debug, Clone)]
pub struct GeneratedProfile {
    /// Index into [`Fleet::series`].
    pub series: u32,
    /// Index of the interval (0-based).
    pub tick: u32,
    /// The gzipped pprof, as Go's runtime sends it.
    pub gzipped: Vec<u8>,
    /// Size of the pprof before gzip.
    pub raw_bytes: u32,
    /// pprof `Sample` messages (distinct stacks).
    pub samples: u32,
    /// CPU ticks (sum of the `samples/count` column).
    pub ticks: u32,
    /// Sum of the stacks' depths in locations over the samples.
    pub frames: u64,
}

// ------------------------------------------------------------------ names

const NOUNS: &[&str] = &[
    "account",
    "order",
    "cart",
    "item",
    "user",
    "session",
    "token",
    "cache",
    "index",
    "shard",
    "query",
    "plan",
    "batch",
    "record",
    "event",
    "stream",
    "buffer",
    "frame",
    "block",
    "page",
    "segment",
    "ledger",
    "price",
    "quote",
    "stock",
    "route",
    "request",
    "response",
    "header",
    "cookie",
    "policy",
    "rule",
    "metric",
    "span",
    "trace",
    "tenant",
    "region",
    "bucket",
    "object",
    "blob",
    "chunk",
    "manifest",
    "schema",
    "column",
    "row",
    "cursor",
    "lease",
    "lock",
    "queue",
    "topic",
    "partition",
    "offset",
    "snapshot",
    "replica",
    "peer",
    "node",
    "ranking",
    "feature",
    "model",
    "score",
    "vector",
    "embedding",
    "filter",
    "bloom",
    "codec",
    "payload",
    "invoice",
    "payment",
    "refund",
    "customer",
    "catalog",
    "listing",
    "review",
    "coupon",
    "shipment",
    "warehouse",
];

const VERBS: &[&str] = &[
    "get",
    "put",
    "load",
    "store",
    "fetch",
    "parse",
    "encode",
    "decode",
    "marshal",
    "unmarshal",
    "validate",
    "apply",
    "merge",
    "split",
    "compact",
    "flush",
    "sync",
    "scan",
    "seek",
    "lookup",
    "resolve",
    "compute",
    "render",
    "serialize",
    "hash",
    "sign",
    "verify",
    "compress",
    "decompress",
    "dispatch",
    "handle",
    "process",
    "enqueue",
    "dequeue",
    "acquire",
    "release",
    "refresh",
    "evict",
    "insert",
    "update",
    "delete",
    "list",
    "build",
    "score",
    "rank",
    "match",
    "route",
    "retry",
    "emit",
    "record",
    "collect",
    "aggregate",
    "normalize",
];

const GO_STD_PACKAGES: &[&str] = &[
    "net/http",
    "net",
    "bufio",
    "io",
    "bytes",
    "strings",
    "strconv",
    "encoding/json",
    "encoding/binary",
    "compress/gzip",
    "compress/flate",
    "crypto/tls",
    "crypto/aes",
    "crypto/sha256",
    "crypto/internal/nistec",
    "sync",
    "syscall",
    "internal/poll",
    "os",
    "time",
    "sort",
    "fmt",
    "reflect",
    "context",
    "regexp",
    "math/big",
    "hash/crc32",
    "encoding/base64",
    "unicode/utf8",
    "log/slog",
];

const GO_MODULES: &[&str] = &[
    "google.golang.org/grpc",
    "google.golang.org/grpc/internal/transport",
    "google.golang.org/protobuf/internal/impl",
    "google.golang.org/protobuf/proto",
    "github.com/prometheus/client_golang/prometheus",
    "go.uber.org/zap",
    "go.uber.org/zap/zapcore",
    "github.com/jackc/pgx/v5/pgconn",
    "github.com/redis/go-redis/v9",
    "github.com/klauspost/compress/zstd",
    "golang.org/x/net/http2",
    "github.com/golang/snappy",
];

const GO_RUNTIME_NAMED: &[&str] = &[
    "runtime.goexit",
    "runtime.mstart",
    "runtime.mstart0",
    "runtime.mstart1",
    "runtime.main",
    "runtime.schedule",
    "runtime.findRunnable",
    "runtime.gcBgMarkWorker",
    "runtime.systemstack",
    "runtime.gcDrain",
    "runtime.mallocgc",
    "runtime.newobject",
    "runtime.makeslice",
    "runtime.growslice",
    "runtime.memmove",
    "runtime.memclrNoHeapPointers",
    "runtime.scanobject",
    "runtime.findObject",
    "runtime.greyobject",
    "runtime.mcall",
    "runtime.park_m",
    "runtime.futex",
    "runtime.futexsleep",
    "runtime.notesleep",
    "runtime.stopm",
    "runtime.netpoll",
    "runtime.epollwait",
    "runtime.nanotime1",
    "runtime.mapaccess1_faststr",
    "runtime.mapassign_faststr",
    "runtime.mapaccess2",
    "runtime.heapBitsSetType",
    "runtime.(*mcache).nextFree",
    "runtime.(*mcache).refill",
    "runtime.(*mcentral).cacheSpan",
    "runtime.(*mheap).alloc",
    "runtime.lock2",
    "runtime.unlock2",
    "runtime.chansend",
    "runtime.chanrecv",
    "runtime.selectgo",
    "runtime.gopark",
    "runtime.goready",
    "runtime.runqgrab",
    "runtime.stealWork",
    "runtime.casgstatus",
    "runtime.(*gcWork).tryGet",
    "runtime.wbBufFlush1",
    "runtime.bulkBarrierPreWrite",
    "runtime.typedmemmove",
    "runtime.concatstrings",
    "runtime.slicebytetostring",
    "runtime.convTstring",
    "runtime.assertE2I2",
    "runtime.memequal",
    "runtime.cmpstring",
    "runtime.procyield",
    "runtime.usleep",
    "runtime.sysmon",
    "runtime.retake",
    "runtime.madvise",
    "runtime.sweepone",
    "runtime.(*sweepLocked).sweep",
    "runtime.bgsweep",
    "runtime.gcMarkDone",
    "runtime.markroot",
    "runtime.scanstack",
    "runtime.scanframeworker",
    "runtime.(*unwinder).next",
    "runtime.pcvalue",
    "runtime.step",
    "runtime.findfunc",
    "runtime.funcspdelta",
];

const LIBC_NAMED: &[&str] = &[
    "__GI___clone3",
    "start_thread",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "__memmove_avx_unaligned_erms",
    "__memset_avx2_unaligned_erms",
    "__memcmp_avx2_movbe",
    "__strlen_avx2",
    "malloc",
    "free",
    "_int_malloc",
    "_int_free",
    "malloc_consolidate",
    "sysmalloc",
    "__libc_recv",
    "__libc_send",
    "__GI___writev",
    "__libc_read",
    "__libc_write",
    "epoll_wait",
    "__GI___poll",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "__lll_lock_wait",
    "___pthread_cond_wait",
    "__futex_abstimed_wait_common",
    "__GI___clock_gettime",
    "__nanosleep",
    "__sched_yield",
    "__GI_memcpy",
];

const LIBSTDCXX_NAMED: &[&str] = &[
    "execute_native_thread_routine",
    "operator new(unsigned long)",
    "operator delete(void*, unsigned long)",
    "std::_Rb_tree_increment(std::_Rb_tree_node_base const*)",
    "std::_Rb_tree_insert_and_rebalance(bool, std::_Rb_tree_node_base*, std::_Rb_tree_node_base*, std::_Rb_tree_node_base&)",
    "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::_M_mutate(unsigned long, unsigned long, char const*, unsigned long)",
    "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::_M_append(char const*, unsigned long)",
    "std::__detail::_Prime_rehash_policy::_M_need_rehash(unsigned long, unsigned long, unsigned long) const",
    "std::condition_variable::wait(std::unique_lock<std::mutex>&)",
    "std::ostream::write(char const*, long)",
    "std::locale::locale()",
    "std::_Hash_bytes(void const*, unsigned long, unsigned long)",
];

const CXX_NAMESPACES: &[&str] = &[
    "absl",
    "absl::container_internal",
    "absl::strings_internal",
    "google::protobuf",
    "google::protobuf::internal",
    "grpc_core",
    "grpc_core::chttp2",
    "folly",
    "folly::io",
    "boost::asio::detail",
    "rocksdb",
    "tcmalloc::tcmalloc_internal",
    "re2",
    "snappy",
    "fmt::v10::detail",
];

const CXX_ARGS: &[(&str, &str)] = &[
    ("", "v"),
    ("unsigned long", "m"),
    ("int", "i"),
    (
        "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> > const&",
        "RKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
    ),
    ("absl::string_view", "N4absl11string_viewE"),
    ("void*", "Pv"),
    ("long, long", "ll"),
    ("char const*, unsigned long", "PKcm"),
    ("bool", "b"),
];

fn capitalize(word: &str) -> String {
    let mut characters = word.chars();
    match characters.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + characters.as_str(),
        None => String::new(),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A random word of a word list.
fn word(rng: &mut StdRng, words: &[&'static str]) -> &'static str {
    words[rng.random_range(0..words.len())]
}

fn camel(rng: &mut StdRng) -> String {
    format!("{}{}", pick(rng, VERBS), capitalize(word(rng, NOUNS)))
}

fn hex_id(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// An Itanium-ABI-like mangled name for `a::b::C::method(args)`.
fn mangle(components: &[&str], args_code: &str) -> String {
    let mut mangled = String::from("_ZN");
    for component in components {
        mangled.push_str(&format!("{}{component}", component.len()));
    }
    mangled.push('E');
    mangled.push_str(args_code);
    mangled
}

/// A Go function name and its file: `pkg.Func`, `pkg.(*Type).Method` or a closure.
fn go_name(rng: &mut StdRng, package: &str, file_root: &str) -> (String, String) {
    let short = package.rsplit('/').next().unwrap_or(package);
    let type_name = capitalize(word(rng, NOUNS));
    let name = match rng.random_range(0..10) {
        0..=3 => format!("{package}.(*{type_name}).{}", capitalize(&camel(rng))),
        4..=5 => format!("{package}.{type_name}.{}", capitalize(&camel(rng))),
        6..=7 => format!("{package}.{}", camel(rng)),
        _ => format!(
            "{package}.(*{type_name}).{}.func{}",
            capitalize(&camel(rng)),
            rng.random_range(1..4)
        ),
    };
    let file = format!(
        "{file_root}/{package}/{}_{}.go",
        short.replace('.', "_"),
        pick(rng, NOUNS)
    );
    (name, file)
}

/// A C++ function: demangled name, mangled name, file.
fn cxx_name(rng: &mut StdRng, namespace: &str, file_root: &str) -> (String, String, String) {
    let class = format!("{}{}", capitalize(word(rng, NOUNS)), capitalize(word(rng, NOUNS)));
    let method = capitalize(&camel(rng));
    let (args, code) = *pick(rng, CXX_ARGS);
    let name = format!("{namespace}::{class}::{method}({args})");
    let mut components: Vec<&str> = namespace.split("::").collect();
    components.push(&class);
    components.push(&method);
    let system_name = mangle(&components, code);
    let file = format!(
        "{file_root}/{}/{}.cc",
        namespace.replace("::", "/"),
        class.to_lowercase()
    );
    (name, system_name, file)
}

/// Service templates: name, namespace, language. Cycled when more are asked for.
const SERVICE_TEMPLATES: &[(&str, &str, Lang)] = &[
    ("checkout", "shop", Lang::Go),
    ("search", "discovery", Lang::Go),
    ("ranker", "discovery", Lang::Cpp),
    ("inventory", "shop", Lang::Go),
    ("api-gateway", "edge", Lang::Go),
    ("blobstore", "storage", Lang::Cpp),
];

// ------------------------------------------------------------------ universe

/// Which function of which family anchors the root chains.
struct Anchors {
    go_runtime: HashMap<&'static str, u32>,
    libc: HashMap<&'static str, u32>,
    libstdcxx: HashMap<&'static str, u32>,
}

struct Universe {
    functions: Vec<FunctionDef>,
    by_family: HashMap<Family, Vec<u32>>,
    anchors: Anchors,
}

/// Functions being added to the universe, names kept unique.
#[derive(Default)]
struct UniverseBuilder {
    functions: Vec<FunctionDef>,
    by_family: HashMap<Family, Vec<u32>>,
    names: HashSet<String>,
}

impl UniverseBuilder {
    /// Adds a function unless its name is taken; returns its index.
    fn add(&mut self, function: FunctionDef) -> Option<u32> {
        if !self.names.insert(function.name.clone()) {
            return None;
        }
        let index = self.functions.len() as u32;
        self.by_family.entry(function.family).or_default().push(index);
        self.functions.push(function);
        Some(index)
    }

    fn count(&self, family: Family) -> usize {
        self.by_family.get(&family).map_or(0, Vec::len)
    }
}

fn new_function(
    rng: &mut StdRng,
    family: Family,
    name: String,
    system_name: String,
    filename: String,
) -> FunctionDef {
    let size = 32u64 << rng.random_range(1..8);
    FunctionDef {
        name,
        system_name,
        filename,
        start_line: rng.random_range(12..2400),
        family,
        size,
        sites: Vec::new(),
        same: Vec::new(),
        down: Vec::new(),
    }
}

fn build_universe(spec: &FleetSpec, rng: &mut StdRng) -> Universe {
    let languages: Vec<Lang> = (0..spec.services)
        .map(|index| SERVICE_TEMPLATES[index % SERVICE_TEMPLATES.len()].2)
        .collect();
    let total = spec.functions.max(400);
    // Shares of the shared families; the rest is split between the services.
    let quotas = [
        (Family::GoRuntime, total * 12 / 100),
        (Family::GoLibrary, total * 18 / 100),
        (Family::Libc, total * 3 / 100),
        (Family::LibStdCxx, total * 5 / 100),
        (Family::CxxLibrary, total * 12 / 100),
    ];
    let shared: usize = quotas.iter().map(|(_, quota)| quota).sum();
    let per_service = ((total - shared) / spec.services.max(1)).max(20);

    let mut builder = UniverseBuilder::default();
    let mut anchors = Anchors {
        go_runtime: HashMap::new(),
        libc: HashMap::new(),
        libstdcxx: HashMap::new(),
    };
    let go_root = "/usr/lib/go-1.22/src";
    let go_mod = "/root/go/pkg/mod";

    for (family, quota) in quotas {
        let named: &[&'static str] = match family {
            Family::GoRuntime => GO_RUNTIME_NAMED,
            Family::Libc => LIBC_NAMED,
            Family::LibStdCxx => LIBSTDCXX_NAMED,
            _ => &[],
        };
        for name in named {
            let (system_name, filename) = match family {
                Family::GoRuntime => (
                    name.to_string(),
                    format!(
                        "{go_root}/runtime/{}.go",
                        pick(
                            rng,
                            &[
                                "proc",
                                "malloc",
                                "mgcmark",
                                "mbitmap",
                                "map_faststr",
                                "lock_futex",
                                "netpoll_epoll",
                                "chan",
                                "select",
                                "traceback",
                                "symtab"
                            ]
                        )
                    ),
                ),
                Family::Libc => (
                    name.to_string(),
                    format!(
                        "./{}",
                        pick(
                            rng,
                            &[
                                "malloc/malloc.c",
                                "nptl/pthread_create.c",
                                "string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S",
                                "sysdeps/unix/sysv/linux/recv.c",
                                "nptl/futex-internal.c",
                                "csu/libc-start.c",
                                "nptl/pthread_mutex_lock.c"
                            ]
                        )
                    ),
                ),
                _ => {
                    let components: Vec<&str> = name.split('(').next().unwrap_or(name).split("::").collect();
                    (
                        mangle(&components, "v"),
                        format!(
                            "/build/gcc-13/libstdc++-v3/src/c++11/{}.cc",
                            pick(
                                rng,
                                &[
                                    "thread",
                                    "string-inst",
                                    "tree",
                                    "hashtable_c++0x",
                                    "condition_variable",
                                    "ostream-inst",
                                    "locale"
                                ]
                            )
                        ),
                    )
                }
            };
            let function = new_function(rng, family, name.to_string(), system_name, filename);
            if let Some(index) = builder.add(function) {
                match family {
                    Family::GoRuntime => anchors.go_runtime.insert(*name, index),
                    Family::Libc => anchors.libc.insert(*name, index),
                    _ => anchors.libstdcxx.insert(*name, index),
                };
            }
        }
        let mut attempts = 0;
        while builder.count(family) < quota && attempts < quota * 20 {
            attempts += 1;
            let function = match family {
                Family::GoRuntime => {
                    let name = format!("runtime.{}", camel(rng));
                    let file = format!("{go_root}/runtime/{}.go", pick(rng, NOUNS));
                    new_function(rng, family, name.clone(), name, file)
                }
                Family::GoLibrary => {
                    let (name, file) = if rng.random_bool(0.6) {
                        let package = *pick(rng, GO_STD_PACKAGES);
                        go_name(rng, package, go_root)
                    } else {
                        let module = *pick(rng, GO_MODULES);
                        let root = format!(
                            "{go_mod}/v1.{}.{}",
                            rng.random_range(2..60),
                            rng.random_range(0..9)
                        );
                        go_name(rng, module, &root)
                    };
                    new_function(rng, family, name.clone(), name, file)
                }
                Family::Libc => {
                    let name = format!("__{}_{}", pick(rng, VERBS), pick(rng, NOUNS));
                    new_function(
                        rng,
                        family,
                        name.clone(),
                        name,
                        "./misc/syscall-template.S".to_string(),
                    )
                }
                Family::LibStdCxx => {
                    let (name, system_name, file) =
                        cxx_name(rng, "std::__detail", "/build/gcc-13/libstdc++-v3/include");
                    new_function(rng, family, name, system_name, file)
                }
                Family::CxxLibrary => {
                    let namespace = *pick(rng, CXX_NAMESPACES);
                    let (name, system_name, file) = cxx_name(rng, namespace, "/src/third_party");
                    new_function(rng, family, name, system_name, file)
                }
                Family::App(_) => unreachable!("application functions are generated per service"),
            };
            builder.add(function);
        }
    }
    for (service, lang) in languages.iter().enumerate() {
        let (name, _, _) = SERVICE_TEMPLATES[service % SERVICE_TEMPLATES.len()];
        let family = Family::App(service);
        let packages: Vec<String> = (0..12)
            .map(|_| {
                format!(
                    "{}{}",
                    pick(rng, NOUNS),
                    pick(rng, &["", "s", "store", "svc", "util"])
                )
            })
            .collect();
        let mut attempts = 0;
        while builder.count(family) < per_service && attempts < per_service * 20 {
            attempts += 1;
            let package = pick(rng, &packages).clone();
            let function = match lang {
                Lang::Go => {
                    let module = format!(
                        "github.com/acme/{name}{}",
                        if service >= SERVICE_TEMPLATES.len() {
                            format!("{service}")
                        } else {
                            String::new()
                        }
                    );
                    let (name, file) = go_name(rng, &format!("{module}/internal/{package}"), "/build");
                    new_function(rng, family, name.clone(), name, file)
                }
                Lang::Cpp => {
                    let namespace = format!("acme::{}::{package}", name.replace('-', "_"));
                    let (name, system_name, file) = cxx_name(rng, &namespace, &format!("/src/{name}"));
                    new_function(rng, family, name, system_name, file)
                }
            };
            builder.add(function);
        }
    }

    // Call sites, inlining and callees.
    let UniverseBuilder {
        mut functions,
        by_family,
        ..
    } = builder;
    let family_of: Vec<Family> = functions.iter().map(|function| function.family).collect();
    for index in 0..functions.len() {
        let family = family_of[index];
        let (same_family, down_families): (Family, Vec<Family>) = match family {
            Family::GoRuntime => (Family::GoRuntime, vec![]),
            Family::GoLibrary => (Family::GoLibrary, vec![Family::GoRuntime]),
            Family::Libc => (Family::Libc, vec![]),
            Family::LibStdCxx => (Family::LibStdCxx, vec![Family::Libc]),
            Family::CxxLibrary => (Family::CxxLibrary, vec![Family::LibStdCxx, Family::Libc]),
            Family::App(service) => match languages[service] {
                Lang::Go => (family, vec![Family::GoLibrary, Family::GoRuntime]),
                Lang::Cpp => (family, vec![Family::CxxLibrary, Family::LibStdCxx, Family::Libc]),
            },
        };
        let same_pool = &by_family[&same_family];
        let same: Vec<u32> = (0..rng.random_range(2..7))
            .map(|_| *pick(rng, same_pool))
            .collect();
        let mut down = Vec::new();
        for down_family in &down_families {
            let pool = &by_family[down_family];
            for _ in 0..rng.random_range(1..4) {
                down.push(*pick(rng, pool));
            }
        }
        let site_count = 1 + (functions[index].size.ilog2() as usize).saturating_sub(5).min(7);
        let size = functions[index].size;
        let start_line = functions[index].start_line;
        let mut sites = Vec::with_capacity(site_count);
        for _ in 0..site_count {
            let mut inlined = Vec::new();
            // Go and C++ compilers inline small callees; ~15% of PCs carry inlined frames.
            if rng.random_bool(0.15) {
                for _ in 0..rng.random_range(1..3) {
                    let callee = *pick(rng, same_pool);
                    inlined.push((
                        callee,
                        functions[callee as usize].start_line + rng.random_range(1..12),
                    ));
                }
            }
            sites.push(Site {
                offset: rng.random_range(4..size.max(8)),
                line: start_line + rng.random_range(1..160),
                inlined,
            });
        }
        let function = &mut functions[index];
        function.same = same;
        function.down = down;
        function.sites = sites;
    }
    Universe {
        functions,
        by_family,
        anchors,
    }
}

// ------------------------------------------------------------------ services

/// Where functions live in one service's address space.
struct AddressSpace {
    /// Mapping index (into the service's mappings) and entry address, per function.
    placed: HashMap<u32, (usize, u64)>,
}

/// Lays out the functions of `families` in a mapping starting at `start`; returns
/// the end address.
fn place(
    universe: &Universe,
    families: &[Family],
    mapping: usize,
    start: u64,
    space: &mut AddressSpace,
) -> u64 {
    let mut address = start + 0x1000;
    for family in families {
        for function in universe.by_family.get(family).into_iter().flatten() {
            space.placed.insert(*function, (mapping, address));
            address += universe.functions[*function as usize].size;
            address = (address + 15) & !15;
        }
    }
    address
}

fn build_service(
    spec: &FleetSpec,
    universe: &Universe,
    index: usize,
    shared_ids: &[String; 2],
    rng: &mut StdRng,
) -> Service {
    let (template, namespace, lang) = SERVICE_TEMPLATES[index % SERVICE_TEMPLATES.len()];
    let name = if index < SERVICE_TEMPLATES.len() {
        template.to_string()
    } else {
        format!("{template}-{index}")
    };
    let app = Family::App(index);
    let mut space = AddressSpace {
        placed: HashMap::new(),
    };
    let mut mappings = Vec::new();
    match lang {
        Lang::Go => {
            // A non-PIE Go binary: runtime, libraries and application code in one text segment.
            let end = place(
                universe,
                &[Family::GoRuntime, Family::GoLibrary, app],
                0,
                0x400000,
                &mut space,
            );
            mappings.push(MappingDef {
                memory_start: 0x400000,
                memory_limit: (end + 0xfff) & !0xfff,
                file_offset: 0,
                filename: format!("/usr/local/bin/{name}"),
                build_id: hex_id(rng, 20),
                has_code: true,
            });
            mappings.push(MappingDef {
                memory_start: 0x7ffc_5a3f_0000,
                memory_limit: 0x7ffc_5a3f_2000,
                file_offset: 0,
                filename: "[vdso]".to_string(),
                build_id: String::new(),
                has_code: false,
            });
        }
        Lang::Cpp => {
            let base = 0x55d4_c0a0_0000u64 + (index as u64) * 0x1000_0000;
            let end = place(universe, &[app, Family::CxxLibrary], 0, base, &mut space);
            mappings.push(MappingDef {
                memory_start: base,
                memory_limit: (end + 0xfff) & !0xfff,
                file_offset: 0x1000,
                filename: format!("/opt/acme/{name}/bin/{name}"),
                build_id: hex_id(rng, 20),
                has_code: true,
            });
            let libstdcxx = 0x7f3a_12a0_0000u64;
            let end = place(universe, &[Family::LibStdCxx], 1, libstdcxx, &mut space);
            mappings.push(MappingDef {
                memory_start: libstdcxx,
                memory_limit: (end + 0xfff) & !0xfff,
                file_offset: 0x9a000,
                filename: "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.32".to_string(),
                build_id: shared_ids[0].clone(),
                has_code: true,
            });
            let libc = 0x7f3a_1280_0000u64;
            let end = place(universe, &[Family::Libc], 2, libc, &mut space);
            mappings.push(MappingDef {
                memory_start: libc,
                memory_limit: (end + 0xfff) & !0xfff,
                file_offset: 0x28000,
                filename: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                build_id: shared_ids[1].clone(),
                has_code: true,
            });
            for (filename, start) in [
                ("/usr/lib/x86_64-linux-gnu/libm.so.6", 0x7f3a_1270_0000u64),
                ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", 0x7f3a_12c0_0000),
                ("[vdso]", 0x7ffc_5a3f_0000),
            ] {
                mappings.push(MappingDef {
                    memory_start: start,
                    memory_limit: start + 0x2_0000,
                    file_offset: 0,
                    filename: filename.to_string(),
                    build_id: if filename.starts_with('[') {
                        String::new()
                    } else {
                        hex_id(rng, 20)
                    },
                    has_code: false,
                });
            }
        }
    }

    let apps = &universe.by_family[&app];
    let runtime = |name: &str| universe.anchors.go_runtime[name];
    let libc = |name: &str| universe.anchors.libc[name];
    let libraries: &[u32] = match lang {
        Lang::Go => &universe.by_family[&Family::GoLibrary],
        Lang::Cpp => &universe.by_family[&Family::CxxLibrary],
    };
    // Root chains with their weights: where the threads/goroutines of the process start.
    let mut roots: Vec<(Vec<u32>, u32)> = Vec::new();
    match lang {
        Lang::Go => {
            for _ in 0..4 {
                roots.push((
                    vec![
                        runtime("runtime.goexit"),
                        *pick(rng, libraries),
                        *pick(rng, libraries),
                        *pick(rng, apps),
                    ],
                    15,
                ));
            }
            for _ in 0..2 {
                roots.push((vec![runtime("runtime.goexit"), *pick(rng, apps)], 8));
            }
            roots.push((
                vec![
                    runtime("runtime.goexit"),
                    runtime("runtime.gcBgMarkWorker"),
                    runtime("runtime.systemstack"),
                    runtime("runtime.gcDrain"),
                ],
                12,
            ));
            roots.push((
                vec![
                    runtime("runtime.mstart"),
                    runtime("runtime.mstart0"),
                    runtime("runtime.mstart1"),
                    runtime("runtime.schedule"),
                    runtime("runtime.findRunnable"),
                ],
                4,
            ));
            roots.push((vec![runtime("runtime.main"), *pick(rng, apps)], 2));
        }
        Lang::Cpp => {
            let thread_start = universe.anchors.libstdcxx["execute_native_thread_routine"];
            for _ in 0..4 {
                roots.push((
                    vec![
                        libc("__GI___clone3"),
                        libc("start_thread"),
                        thread_start,
                        *pick(rng, libraries),
                        *pick(rng, apps),
                    ],
                    18,
                ));
            }
            for _ in 0..2 {
                roots.push((
                    vec![
                        libc("__GI___clone3"),
                        libc("start_thread"),
                        *pick(rng, libraries),
                        *pick(rng, libraries),
                        *pick(rng, apps),
                    ],
                    10,
                ));
            }
            roots.push((
                vec![
                    libc("__libc_start_main_impl"),
                    libc("__libc_start_call_main"),
                    *pick(rng, apps),
                ],
                3,
            ));
        }
    }
    let root_weight: u32 = roots.iter().map(|(_, weight)| weight).sum();
    let depth_distribution = Normal::<f64>::new(26.0, 10.0).expect("valid normal parameters");

    let mut locations: Vec<LocationDef> = Vec::new();
    let mut location_index: HashMap<(u32, usize), u32> = HashMap::new();
    let mut chains: Vec<Vec<u32>> = Vec::new();
    let mut stacks: Vec<Box<[u32]>> = Vec::new();
    let mut seen: HashSet<Box<[u32]>> = HashSet::new();
    let mut attempts = 0usize;
    while stacks.len() < spec.stacks_per_service && attempts < spec.stacks_per_service * 50 {
        attempts += 1;
        let mut chain: Vec<u32> = if !chains.is_empty() && rng.random_bool(0.8) {
            let parent = &chains[rng.random_range(0..chains.len())];
            let cut = rng.random_range(parent.len().min(3)..parent.len());
            parent[..cut].to_vec()
        } else {
            let mut draw = rng.random_range(0..root_weight);
            let mut chosen = &roots[0].0;
            for (chain, weight) in &roots {
                if draw < *weight {
                    chosen = chain;
                    break;
                }
                draw -= weight;
            }
            chosen.clone()
        };
        let mut depth = depth_distribution.sample(rng).round().clamp(10.0, 60.0) as usize;
        if depth <= chain.len() {
            depth = (chain.len() + rng.random_range(1..4)).min(60);
        }
        chain.truncate(depth - 1);
        while chain.len() < depth {
            let function = &universe.functions[*chain.last().expect("chains start non-empty") as usize];
            let remaining = depth - chain.len();
            let down_probability = match remaining {
                0..=2 => 0.6,
                3..=6 => 0.25,
                _ => 0.06,
            };
            let next = if !function.down.is_empty()
                && (function.same.is_empty() || rng.random_bool(down_probability))
            {
                *pick(rng, &function.down)
            } else {
                *pick(rng, &function.same)
            };
            chain.push(next);
        }
        // Frames to locations: a caller's PC is the call site of its callee; the
        // leaf's PC is wherever the sample landed.
        let mut stack: Vec<u32> = Vec::with_capacity(chain.len());
        for (position, function) in chain.iter().enumerate().rev() {
            let sites = universe.functions[*function as usize].sites.len();
            let site = match chain.get(position + 1) {
                Some(callee) => (callee.wrapping_mul(2_654_435_761) as usize ^ *function as usize) % sites,
                None => rng.random_range(0..sites),
            };
            let location = match location_index.entry((*function, site)) {
                Entry::Occupied(entry) => *entry.get(),
                Entry::Vacant(entry) => {
                    let definition = &universe.functions[*function as usize];
                    let (mapping, entry_address) = space.placed[function];
                    let site_def = &definition.sites[site];
                    let mut lines = site_def.inlined.clone();
                    lines.push((*function, site_def.line));
                    locations.push(LocationDef {
                        mapping,
                        address: entry_address + site_def.offset,
                        lines,
                    });
                    *entry.insert((locations.len() - 1) as u32)
                }
            };
            stack.push(location);
        }
        let stack: Box<[u32]> = stack.into();
        if seen.insert(stack.clone()) {
            chains.push(chain);
            stacks.push(stack);
        }
    }
    Service {
        name,
        namespace: namespace.to_string(),
        lang,
        mappings,
        locations,
        stacks,
    }
}

/// A Kubernetes-like pod name.
fn pod_name(rng: &mut StdRng, service: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut suffix = |length: usize| -> String {
        (0..length)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let replica_set = suffix(10);
    let pod = suffix(5);
    format!("{service}-{replica_set}-{pod}")
}

impl Fleet {
    /// Generates the universe, the services' stack pools and the series.
    pub fn generate(spec: FleetSpec) -> Fleet {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let universe = build_universe(&spec, &mut rng);
        let shared_ids = [hex_id(&mut rng, 20), hex_id(&mut rng, 20)];
        let services: Vec<Service> = (0..spec.services)
            .map(|index| build_service(&spec, &universe, index, &shared_ids, &mut rng))
            .collect();
        let (low, high) = spec.cores;
        let series = (0..spec.series)
            .map(|index| {
                let zone = index % spec.zones;
                let service = (index / spec.zones) % spec.services;
                let instance = pod_name(&mut rng, &services[service].name);
                let cores = (low.ln() + rng.random::<f64>() * (high.ln() - low.ln())).exp();
                // Away from the interval's edges, so jitter never moves a profile out of its interval.
                let phase_nanos =
                    rng.random_range(50_000_000..spec.interval_secs as i64 * 1_000_000_000 - 50_000_000);
                let mut labels = vec![
                    ("instance".to_string(), instance),
                    ("namespace".to_string(), services[service].namespace.clone()),
                    ("region".to_string(), "eu-west-1".to_string()),
                    ("service".to_string(), services[service].name.clone()),
                    ("zone".to_string(), FleetSpec::zone_name(zone)),
                ];
                labels.sort();
                SeriesDef {
                    service,
                    zone,
                    labels,
                    ticks_per_profile: cores * 1e9 / PERIOD_NANOS as f64 * spec.interval_secs as f64,
                    phase_nanos,
                }
            })
            .collect();
        Fleet {
            spec,
            functions: universe.functions,
            services,
            series,
        }
    }

    /// Number of functions in the universe.
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// Every profile of series `index`, in time order. Deterministic per series.
    pub fn series_profiles(&self, index: usize) -> Vec<GeneratedProfile> {
        let series = &self.series[index];
        let service = &self.services[series.service];
        let mut rng =
            StdRng::seed_from_u64(self.spec.seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(index as u64 + 1));
        let zipf =
            Zipf::new(service.stacks.len() as f64, self.spec.zipf_exponent).expect("valid zipf parameters");
        let interval_nanos = self.spec.interval_secs as i64 * 1_000_000_000;
        let mut profiles = Vec::with_capacity(self.spec.profiles_per_series());
        for tick in 0..self.spec.profiles_per_series() {
            let ticks = (series.ticks_per_profile * rng.random_range(0.85..1.15))
                .round()
                .max(1.0) as u32;
            // Ticks in arrival order; identical stacks aggregate into one sample.
            let mut counts: Vec<(u32, u32)> = Vec::new();
            let mut position: HashMap<u32, usize> = HashMap::new();
            for _ in 0..ticks {
                let stack = (zipf.sample(&mut rng) as u32).saturating_sub(1);
                match position.entry(stack) {
                    Entry::Occupied(entry) => counts[*entry.get()].1 += 1,
                    Entry::Vacant(entry) => {
                        entry.insert(counts.len());
                        counts.push((stack, 1));
                    }
                }
            }
            // Collection starts on the instance's phase, with scheduling jitter;
            // Go's duration is the measured wall time of the window.
            let time_nanos = self.spec.start_unix_nanos
                + tick as i64 * interval_nanos
                + series.phase_nanos
                + rng.random_range(-20_000_000..20_000_000);
            let duration_nanos = interval_nanos + rng.random_range(0..3_000_000);
            let profile = self.pprof(service, &counts, time_nanos, duration_nanos);
            let raw = profile.encode_to_vec();
            let mut encoder = GzEncoder::new(Vec::with_capacity(raw.len() / 2), Compression::fast());
            encoder.write_all(&raw).expect("writing to a Vec cannot fail");
            let gzipped = encoder.finish().expect("writing to a Vec cannot fail");
            let frames = counts
                .iter()
                .map(|(stack, _)| service.stacks[*stack as usize].len() as u64)
                .sum();
            profiles.push(GeneratedProfile {
                series: index as u32,
                tick: tick as u32,
                gzipped,
                raw_bytes: raw.len() as u32,
                samples: counts.len() as u32,
                ticks,
                frames,
            });
        }
        profiles
    }

    /// Builds a pprof the way Go's `runtime/pprof` does for a CPU profile.
    fn pprof(
        &self,
        service: &Service,
        counts: &[(u32, u32)],
        time_nanos: i64,
        duration_nanos: i64,
    ) -> pb::Profile {
        let mut strings = StringTable::default();
        let samples_type = pb::ValueType {
            r#type: strings.id("samples"),
            unit: strings.id("count"),
        };
        let cpu_type = pb::ValueType {
            r#type: strings.id("cpu"),
            unit: strings.id("nanoseconds"),
        };
        let mut location_ids: HashMap<u32, u64> = HashMap::new();
        let mut function_ids: HashMap<u32, u64> = HashMap::new();
        let mut locations = Vec::new();
        let mut functions = Vec::new();
        let mut samples = Vec::with_capacity(counts.len());
        for (stack, count) in counts {
            let mut location_id = Vec::with_capacity(service.stacks[*stack as usize].len());
            for location in service.stacks[*stack as usize].iter() {
                let next_id = location_ids.len() as u64 + 1;
                let id = *location_ids.entry(*location).or_insert_with(|| {
                    let definition = &service.locations[*location as usize];
                    let line = definition
                        .lines
                        .iter()
                        .map(|(function, line)| {
                            let next_function = function_ids.len() as u64 + 1;
                            let function_id = *function_ids.entry(*function).or_insert_with(|| {
                                let function_def = &self.functions[*function as usize];
                                functions.push(pb::Function {
                                    id: next_function,
                                    name: strings.id(&function_def.name),
                                    system_name: strings.id(&function_def.system_name),
                                    filename: strings.id(&function_def.filename),
                                    start_line: function_def.start_line,
                                });
                                next_function
                            });
                            pb::Line {
                                function_id,
                                line: *line,
                                column: 0,
                            }
                        })
                        .collect();
                    locations.push(pb::Location {
                        id: next_id,
                        mapping_id: definition.mapping as u64 + 1,
                        address: definition.address,
                        line,
                        is_folded: false,
                    });
                    next_id
                });
                location_id.push(id);
            }
            samples.push(pb::Sample {
                location_id,
                value: vec![i64::from(*count), i64::from(*count) * PERIOD_NANOS],
                label: Vec::new(),
            });
        }
        let mapping = service
            .mappings
            .iter()
            .enumerate()
            .map(|(index, mapping)| pb::Mapping {
                id: index as u64 + 1,
                memory_start: mapping.memory_start,
                memory_limit: mapping.memory_limit,
                file_offset: mapping.file_offset,
                filename: strings.id(&mapping.filename),
                build_id: strings.id(&mapping.build_id),
                has_functions: mapping.has_code,
                has_filenames: mapping.has_code,
                has_line_numbers: mapping.has_code,
                has_inline_frames: mapping.has_code,
            })
            .collect();
        pb::Profile {
            sample_type: vec![samples_type, cpu_type],
            sample: samples,
            mapping,
            location: locations,
            function: functions,
            period_type: Some(pb::ValueType {
                r#type: strings.id("cpu"),
                unit: strings.id("nanoseconds"),
            }),
            period: PERIOD_NANOS,
            time_nanos,
            duration_nanos,
            string_table: strings.strings,
            ..pb::Profile::default()
        }
    }
}

/// pprof's string table: index 0 is the empty string, others in first-use order.
struct StringTable {
    strings: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for StringTable {
    fn default() -> Self {
        StringTable {
            strings: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl StringTable {
    fn id(&mut self, text: &str) -> i64 {
        if let Some(id) = self.index.get(text) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.index.insert(text.to_string(), id);
        id
    }
}

/// Generates every profile of the fleet on `threads` threads, ordered by
/// (tick, series). The result does not depend on `threads`.
pub fn generate_profiles(fleet: &Fleet, threads: usize) -> Vec<GeneratedProfile> {
    let threads = threads.max(1);
    let mut per_thread: Vec<Vec<GeneratedProfile>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut profiles = Vec::new();
                    for series in (thread..fleet.series.len()).step_by(threads) {
                        profiles.extend(fleet.series_profiles(series));
                    }
                    profiles
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a generator thread panicked"))
            .collect()
    });
    let mut all: Vec<GeneratedProfile> = per_thread.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|profile| (profile.tick, profile.series));
    all
}
