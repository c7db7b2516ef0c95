//! The agent's configuration: a TOML file (every field optional), overridden by flags and `KILN_*`
//! environment variables in `main.rs`. Documented in docs/agent.md; example in agent/kiln-agent.example.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::relabel::RuleConfig;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The node to push to (`host:port` or `http://host:port`).
    pub server: String,
    /// Address of the `/metrics` endpoint; empty disables it.
    pub metrics_listen: String,
    /// Value of the `node` label; default: the host name.
    pub node_name: Option<String>,
    /// Labels added to every series (region, zone, env, ...).
    pub labels: BTreeMap<String, String>,
    /// Applied to every series' labels, in order, after the static labels.
    pub relabel_configs: Vec<RuleConfig>,
    /// The eBPF CPU profiler.
    pub profiler: ProfilerConfig,
    /// The on-disk spool.
    pub spool: SpoolConfig,
    /// pprof endpoints to scrape.
    pub scrape_configs: Vec<ScrapeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "http://127.0.0.1:7070".to_string(),
            metrics_listen: "127.0.0.1:7071".to_string(),
            node_name: None,
            labels: BTreeMap::new(),
            relabel_configs: Vec::new(),
            profiler: ProfilerConfig::default(),
            spool: SpoolConfig::default(),
            scrape_configs: Vec::new(),
        }
    }
}

/// `[profiler]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilerConfig {
    /// Run the eBPF profiler at all.
    pub enabled: bool,
    /// Samples per second per CPU.
    pub frequency_hz: u64,
    /// How often the in-kernel counts are drained into profiles.
    #[serde(with = "duration_text")]
    pub drain_interval: Duration,
    /// Add a `pid` label (off by default: one series per process is high cardinality).
    pub pid_label: bool,
    /// Entries of each in-kernel counts map.
    pub max_keys: u32,
    /// Entries of each in-kernel stack map.
    pub max_stacks: u32,
    /// Where process information is read (tests point this elsewhere).
    pub proc_root: PathBuf,
    /// User stack unwinder: `dwarf` (.eh_frame/.debug_frame, frame pointers as the fallback) or `fp`
    /// (the kernel's frame-pointer walk only).
    pub unwinder: UnwinderMode,
    /// Bytes of user stack the BPF program copies per sample for DWARF unwinding (1024..=32768).
    pub stack_copy_bytes: u32,
    /// Size of the ring buffer carrying DWARF-mode samples to user space (power of two, >= 64 KiB);
    /// unset: about a second of samples on this host (`bpf::auto_ring_buffer_bytes`).
    pub ring_buffer_bytes: Option<u32>,
    /// Budget for unwind tables kept in memory; least recently used files are dropped beyond it.
    pub unwind_table_max_bytes: u64,
    /// Budget for symbol files kept parsed across cycles (files with new addresses cycle after cycle);
    /// 0 parses every file again in each cycle that needs it.
    pub symbol_files_max_bytes: u64,
}

/// Which unwinder produces user stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnwinderMode {
    /// DWARF unwinding of a copy of the user stack, falling back to frame pointers per sample.
    #[default]
    Dwarf,
    /// Frame pointers only (no stack copies, counts aggregated in the kernel).
    Fp,
}

impl std::str::FromStr for UnwinderMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "dwarf" => Ok(UnwinderMode::Dwarf),
            "fp" => Ok(UnwinderMode::Fp),
            other => Err(format!("unknown unwinder {other:?}: expected dwarf or fp")),
        }
    }
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        ProfilerConfig {
            enabled: true,
            frequency_hz: 19,
            drain_interval: Duration::from_secs(10),
            pid_label: false,
            max_keys: 16384,
            max_stacks: 16384,
            proc_root: PathBuf::from("/proc"),
            unwinder: UnwinderMode::Dwarf,
            stack_copy_bytes: 16384,
            ring_buffer_bytes: None,
            unwind_table_max_bytes: crate::unwind::DEFAULT_MAX_TABLE_BYTES as u64,
            symbol_files_max_bytes: crate::symbolize::DEFAULT_KEPT_FILES_MAX_BYTES,
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of pending batches.
    pub dir: PathBuf,
    /// Bound on the spool's bytes; beyond it the oldest batches are dropped (and counted).
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/kiln-agent/spool"),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A pprof profile kind a Go `net/http/pprof` server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// `/debug/pprof/profile?seconds=N`, a delta over N seconds.
    Cpu,
    /// `/debug/pprof/heap`, in-use memory (the `inuse_*` sample types).
    Heap,
    /// `/debug/pprof/allocs`, allocations since start (the `alloc_*` sample types).
    Allocs,
    /// `/debug/pprof/goroutine`.
    Goroutine,
    /// `/debug/pprof/mutex`.
    Mutex,
    /// `/debug/pprof/block`.
    Block,
}

impl ProfileKind {
    /// Every kind.
    pub const ALL: [ProfileKind; 6] = [
        ProfileKind::Cpu,
        ProfileKind::Heap,
        ProfileKind::Allocs,
        ProfileKind::Goroutine,
        ProfileKind::Mutex,
        ProfileKind::Block,
    ];

    /// Lowercase name as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::Heap => "heap",
            ProfileKind::Allocs => "allocs",
            ProfileKind::Goroutine => "goroutine",
            ProfileKind::Mutex => "mutex",
            ProfileKind::Block => "block",
        }
    }

    /// The path Go's net/http/pprof serves it at.
    pub fn default_path(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "/debug/pprof/profile",
            ProfileKind::Heap => "/debug/pprof/heap",
            ProfileKind::Allocs => "/debug/pprof/allocs",
            ProfileKind::Goroutine => "/debug/pprof/goroutine",
            ProfileKind::Mutex => "/debug/pprof/mutex",
            ProfileKind::Block => "/debug/pprof/block",
        }
    }

    /// The profile name sent with it (the first part of the profile type). Mutex and block profiles
    /// cannot be told apart from their content, so the name says which is which.
    pub fn profile_name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "process_cpu",
            ProfileKind::Heap | ProfileKind::Allocs => "memory",
            ProfileKind::Goroutine => "goroutine",
            ProfileKind::Mutex => "mutex",
            ProfileKind::Block => "block",
        }
    }
}

/// `[[scrape_configs]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// The `job` label.
    pub job_name: String,
    /// `host:port` of each target; each gets an `instance` label.
    pub targets: Vec<String>,
    /// Extra labels of this job's series.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How often each profile is fetched; also the CPU profile's `seconds`.
    #[serde(default = "default_scrape_interval", with = "duration_text")]
    pub interval: Duration,
    /// Limit per request (the CPU profile's request gets its duration on top).
    #[serde(default, with = "duration_text::option")]
    pub timeout: Option<Duration>,
    /// Which profiles; default all six.
    #[serde(default = "all_kinds")]
    pub profiles: Vec<ProfileKind>,
    /// Path per profile kind, overriding the net/http/pprof default.
    #[serde(default)]
    pub paths: BTreeMap<ProfileKind, String>,
    /// `http` (default) or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
}

fn default_scrape_interval() -> Duration {
    Duration::from_secs(10)
}
fn all_kinds() -> Vec<ProfileKind> {
    ProfileKind::ALL.to_vec()
}
fn default_scheme() -> String {
    "http".to_string()
}

impl ScrapeConfig {
    /// The request timeout of non-CPU profiles (default: the interval, at most 30 s).
    pub fn timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| self.interval.min(Duration::from_secs(30)))
    }

    /// The path of `kind`.
    pub fn path(&self, kind: ProfileKind) -> &str {
        self.paths
            .get(&kind)
            .map(String::as_str)
            .unwrap_or(kind.default_path())
    }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(config)
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let profiler = &self.profiler;
        if profiler.frequency_hz == 0 || profiler.frequency_hz > 1000 {
            return Err(ConfigError::Invalid(format!(
                "profiler.frequency_hz must be in 1..=1000, got {}",
                profiler.frequency_hz
            )));
        }
        if profiler.drain_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "profiler.drain_interval must be at least 100ms".into(),
            ));
        }
        if !(1024..=crate::bpf::MAX_STACK_COPY_BYTES).contains(&profiler.stack_copy_bytes) {
            return Err(ConfigError::Invalid(format!(
                "profiler.stack_copy_bytes must be in 1024..={}, got {}",
                crate::bpf::MAX_STACK_COPY_BYTES,
                profiler.stack_copy_bytes
            )));
        }
        if let Some(bytes) = profiler
            .ring_buffer_bytes
            .filter(|bytes| *bytes < 64 * 1024 || !bytes.is_power_of_two())
        {
            return Err(ConfigError::Invalid(format!(
                "profiler.ring_buffer_bytes must be a power of two of at least 65536, got {}",
                bytes
            )));
        }
        for name in self.labels.keys() {
            if !kiln_model::labels::is_valid_label_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "label name {name:?} is not a valid label name"
                )));
            }
        }
        for scrape in &self.scrape_configs {
            if scrape.interval < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(format!(
                    "scrape job {}: interval must be at least 1s",
                    scrape.job_name
                )));
            }
            if scrape.scheme != "http" {
                return Err(ConfigError::Invalid(format!(
                    "scrape job {}: only the http scheme is supported",
                    scrape.job_name
                )));
            }
        }
        crate::relabel::compile(&self.relabel_configs)
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kiln-agent.example.toml");
        let config = Config::load(&path).expect("example config");
        config.validate().expect("valid");
        assert_eq!(config.profiler.frequency_hz, 19);
        assert_eq!(config.scrape_configs[0].interval, Duration::from_secs(10));
        assert_eq!(
            config.scrape_configs[0].path(ProfileKind::Cpu),
            "/debug/pprof/profile"
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config: Config = toml::from_str("").expect("parse");
        assert_eq!(config, Config::default());
        config.validate().expect("valid");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("sever = 'x'").is_err());
        let bad: Config = toml::from_str("[profiler]\nfrequency_hz = 0").expect("parse");
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<Config>("[profiler]\ndrain_interval = 'soon'").is_err());
        let scrape: Config = toml::from_str(
            "[[scrape_configs]]\njob_name='go'\ntargets=['a:1']\nprofiles=['cpu','heap']\ntimeout='3s'\n[scrape_configs.paths]\nheap='/x/heap'\n",
        )
        .expect("parse");
        assert_eq!(scrape.scrape_configs[0].path(ProfileKind::Heap), "/x/heap");
        assert_eq!(scrape.scrape_configs[0].timeout(), Duration::from_secs(3));
        assert_eq!(scrape.scrape_configs[0].profiles.len(), 2);
    }
}
