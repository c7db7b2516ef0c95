//! What the agent knows about a process: names, cgroup (container, Kubernetes pod) and executable
//! memory mappings, read from `/proc` and cached so that a process that exits before its samples are
//! symbolized is still labelled and symbolized.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One executable mapping of a process (`r-xp` line of `/proc/PID/maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path as the process sees it (inside its mount namespace), or `[vdso]` etc.
    pub path: String,
    /// Device and inode, which tell apart files with the same path in different containers.
    pub dev_inode: (String, u64),
}

impl Mapping {
    /// True for a mapping backed by a file (not `[vdso]`, anonymous JIT memory, ...).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && self.dev_inode.1 != 0
    }

    /// The path by which the agent opens this mapping's file for process `pid`: the plain path when it
    /// is the same file (device and inode) in our mount namespace, so that a binary shared by many
    /// processes is one file to us; `PROC/PID/root/PATH` otherwise (containers); `None` when neither
    /// exists.
    pub fn open_path(&self, proc_root: &Path, pid: u32) -> Option<PathBuf> {
        let plain = PathBuf::from(&self.path);
        if same_file(&plain, &self.dev_inode) {
            return Some(plain);
        }
        let through_proc = proc_root
            .join(pid.to_string())
            .join("root")
            .join(self.path.trim_start_matches('/'));
        through_proc.exists().then_some(through_proc)
    }
}

/// True when `path` in our mount namespace is the file with this device and inode. `/proc/PID/maps`
/// prints the device as `major:minor` in hex.
fn same_file(path: &Path, dev_inode: &(String, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return false;
    };
    if metadata.ino() != dev_inode.1 {
        return false;
    }
    let dev = metadata.dev();
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    let Some((want_major, want_minor)) = dev_inode.0.split_once(':') else {
        return false;
    };
    u32::from_str_radix(want_major, 16).ok() == Some(major)
        && u32::from_str_radix(want_minor, 16).ok() == Some(minor)
}

/// Labels and mappings of one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Target of `/proc/PID/exe` (empty for kernel threads).
    pub executable: String,
    /// The cgroup v2 path (or the first v1 path), e.g. `/kubepods.slice/.../cri-containerd-ID.scope`.
    pub cgroup: String,
    /// Executable mappings, sorted by start address.
    pub mappings: Vec<Mapping>,
    /// False when the process was gone before anything could be read.
    pub known: bool,
}

impl ProcessInfo {
    /// The mapping that holds `address`.
    pub fn mapping_for(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|mapping| mapping.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }
}

/// Reads a process from `root` (normally `/proc`). Returns `known = false` when it has exited.
pub fn read_process(root: &Path, pid: u32) -> ProcessInfo {
    let dir = root.join(pid.to_string());
    let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
        return ProcessInfo::default();
    };
    let executable = std::fs::read_link(dir.join("exe"))
        .map(|path| path.to_string_lossy().trim_end_matches(" (deleted)").to_string())
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .map(|text| parse_cgroup_file(&text))
        .unwrap_or_default();
    let mappings = std::fs::read_to_string(dir.join("maps"))
        .map(|text| parse_maps(&text))
        .unwrap_or_default();
    ProcessInfo {
        comm: comm.trim_end().to_string(),
        executable,
        cgroup,
        mappings,
        known: true,
    }
}

/// Picks the cgroup path from `/proc/PID/cgroup`: the v2 line (`0::/path`), else the first v1 line with
/// a path other than `/`.
pub fn parse_cgroup_file(text: &str) -> String {
    let mut fallback = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            return path.to_string();
        }
        if fallback.is_empty() && path != "/" {
            fallback = path.to_string();
        }
    }
    fallback
}

/// Parses the executable mappings of `/proc/PID/maps`, sorted by start.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_maps_line).collect();
    mappings.sort_by_key(|mapping| mapping.start);
    mappings
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode path
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.trim_end_matches(" (deleted)").to_string(),
        dev_inode: (dev.to_string(), inode.parse().ok()?),
    })
}

/// Container and Kubernetes identity read from a cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// 64-hex-digit container id (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// Kubernetes pod UID (dashes restored), when the path is under `kubepods`.
    pub pod_uid: Option<String>,
    /// QoS class `guaranteed`, `burstable` or `besteffort`, when under `kubepods`.
    pub qos_class: Option<String>,
}

/// Extracts the container id and pod UID from cgroup paths as written by systemd and cgroupfs drivers:
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/cri-containerd-<ID>.scope`,
/// `/kubepods/besteffort/pod<UID>/<ID>`, `/docker/<ID>`, `/system.slice/docker-<ID>.scope`.
pub fn parse_cgroup_identity(path: &str) -> CgroupIdentity {
    let mut identity = CgroupIdentity::default();
    let in_kubepods = path.contains("kubepods");
    for component in path.split('/') {
        let name = component.trim_end_matches(".scope").trim_end_matches(".slice");
        if in_kubepods {
            for qos in ["burstable", "besteffort", "guaranteed"] {
                if name.ends_with(qos) || name.contains(&format!("-{qos}-")) || name == qos {
                    identity.qos_class = Some(qos.to_string());
                }
            }
            if let Some(position) = name.rfind("pod") {
                let uid = &name[position + 3..];
                if uid.len() >= 32 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '_' || c == '-') {
                    identity.pod_uid = Some(uid.replace('_', "-"));
                }
            }
        }
        // The container id is the trailing 64 hex digits of a component (after `docker-`, `cri-containerd-`,
        // `crio-`, `libpod-`, or alone).
        let tail = name.rsplit(['-', ':']).next().unwrap_or(name);
        if tail.len() == 64 && tail.chars().all(|c| c.is_ascii_hexdigit()) {
            identity.container_id = Some(tail.to_string());
        }
    }
    identity
}

/// Kubernetes names of a pod, found by UID under the kubelet's pod directory or given by the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNames {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// Reads the namespace, pod and container names of a process in a Kubernetes pod. Kubernetes puts only
/// the pod UID in cgroup paths, so the names come from inside the container: the namespace from the
/// service account mount (`/var/run/secrets/kubernetes.io/serviceaccount/namespace`), the pod name from
/// `HOSTNAME` (which the kubelet sets to the pod name) and the container name from `CONTAINER_NAME` when
/// the pod spec sets it. Best-effort: what cannot be read stays empty.
pub fn read_pod_names(root: &Path, pid: u32) -> PodNames {
    let mut names = PodNames::default();
    let dir = root.join(pid.to_string());
    if let Ok(namespace) =
        std::fs::read_to_string(dir.join("root/var/run/secrets/kubernetes.io/serviceaccount/namespace"))
    {
        names.namespace = namespace.trim().to_string();
    }
    let Ok(environ) = std::fs::read(dir.join("environ")) else {
        return names;
    };
    for entry in environ.split(|byte| *byte == 0) {
        let text = String::from_utf8_lossy(entry);
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        match key {
            "POD_NAMESPACE" if names.namespace.is_empty() => names.namespace = value.to_string(),
            "POD_NAME" => names.pod = value.to_string(),
            "HOSTNAME" if names.pod.is_empty() => names.pod = value.to_string(),
            "CONTAINER_NAME" => names.container = value.to_string(),
            _ => {}
        }
    }
    names
}

struct CacheEntry {
    info: ProcessInfo,
    read_at: Instant,
    last_seen: Instant,
}

/// Process information cached across cycles. An entry is refreshed when older than `refresh` (maps
/// change as libraries load), kept when the process has exited (so its samples still symbolize), and
/// forgotten `forget_after` after the process was last sampled.
pub struct ProcessCache {
    root: PathBuf,
    entries: HashMap<u32, CacheEntry>,
    refresh: Duration,
    forget_after: Duration,
}

impl ProcessCache {
    /// A cache reading from `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>, refresh: Duration, forget_after: Duration) -> Self {
        ProcessCache {
            root: root.into(),
            entries: HashMap::new(),
            refresh,
            forget_after,
        }
    }

    /// The `/proc` root this cache reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Information on `pid`: fresh from `/proc` when the cached copy is stale and the process still
    /// exists; the cached copy when it has exited; `known = false` when it was never seen alive.
    pub fn get(&mut self, pid: u32) -> &ProcessInfo {
        &self.entry(pid).info
    }

    /// Like [`Self::get`], also returning when the returned copy was read from `/proc`: a caller that
    /// builds something from the mappings (the DWARF unwinder) rebuilds it when this changes.
    pub fn get_stamped(&mut self, pid: u32) -> (&ProcessInfo, Instant) {
        let entry = self.entry(pid);
        (&entry.info, entry.read_at)
    }

    /// The cache entry of `pid`, read or refreshed as [`Self::get`] describes; always present after.
    fn entry(&mut self, pid: u32) -> &CacheEntry {
        let now = Instant::now();
        let stale = self
            .entries
            .get(&pid)
            .is_none_or(|entry| now.duration_since(entry.read_at) >= self.refresh);
        if stale {
            let fresh = read_process(&self.root, pid);
            // A comm/exe change means the pid was reused (or exec'd): take the fresh copy either way,
            // unless the process is gone, where the old copy is the best knowledge there is.
            if fresh.known || !self.entries.contains_key(&pid) {
                self.entries.insert(
                    pid,
                    CacheEntry {
                        info: fresh,
                        read_at: now,
                        last_seen: now,
                    },
                );
            }
        }
        let entry = self.entries.entry(pid).or_insert_with(|| CacheEntry {
            info: ProcessInfo::default(),
            read_at: now,
            last_seen: now,
        });
        entry.last_seen = now;
        entry
    }

    /// Re-reads `pid` from `/proc` when the cached copy is older than `max_age` and the process still
    /// exists (a library was just mapped, or the process exec'd). Returns true when it re-read.
    pub fn refresh_if_older(&mut self, pid: u32, max_age: Duration) -> bool {
        let now = Instant::now();
        let Some(entry) = self.entries.get_mut(&pid) else {
            return false;
        };
        if now.duration_since(entry.read_at) < max_age {
            return false;
        }
        let fresh = read_process(&self.root, pid);
        if !fresh.known {
            return false;
        }
        entry.info = fresh;
        entry.read_at = now;
        true
    }

    /// Reads `pid` now if it is not cached yet, so that a short-lived process is captured early.
    pub fn prefetch(&mut self, pid: u32) {
        if !self.entries.contains_key(&pid) {
            let _ = self.get(pid);
        }
    }

    /// Forgets processes not sampled for `forget_after`.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let forget_after = self.forget_after;
        self.entries
            .retain(|_, entry| now.duration_since(entry.last_seen) < forget_after);
    }

    /// Cached processes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_executable_mappings_sorted() {
        let text = "\
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234 /usr/lib/libc.so.6
55550000-55551000 r--p 00000000 08:01 99 /usr/bin/app
55551000-55553000 r-xp 00001000 08:01 99 /usr/bin/app
7fff0000-7fff1000 r-xp 00000000 00:00 0 [vdso]
7f0000003000-7f0000004000 r-xp 00000000 08:01 77 /tmp/my lib.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path, "/usr/bin/app");
        assert_eq!(maps[0].offset, 0x1000);
        assert_eq!(maps[1].path, "[vdso]");
        assert!(!maps[1].is_file());
        assert_eq!(maps[3].path, "/tmp/my lib.so");
        let info = ProcessInfo {
            mappings: maps,
            known: true,
            ..Default::default()
        };
        assert_eq!(
            info.mapping_for(0x55552000).map(|m| m.path.as_str()),
            Some("/usr/bin/app")
        );
        assert!(info.mapping_for(0x55553000).is_none());
        assert!(info.mapping_for(0x10).is_none());
    }

    #[test]
    fn cgroup_v2_line_wins() {
        assert_eq!(
            parse_cgroup_file("0::/user.slice/session-1.scope\n"),
            "/user.slice/session-1.scope"
        );
        assert_eq!(
            parse_cgroup_file("12:cpu,cpuacct:/docker/abc\n11:memory:/\n"),
            "/docker/abc"
        );
    }

    #[test]
    fn kubernetes_systemd_cgroup_path() {
        let id = "a".repeat(64);
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{id}.scope"
        );
        let identity = parse_cgroup_identity(&path);
        assert_eq!(identity.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            identity.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(identity.qos_class.as_deref(), Some("burstable"));
    }

    #[test]
    fn kubernetes_cgroupfs_and_docker_paths() {
        let id = "0123456789abcdef".repeat(4);
        let identity = parse_cgroup_identity(&format!(
            "/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{id}"
        ));
        assert_eq!(identity.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            identity.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );
        assert_eq!(identity.qos_class.as_deref(), Some("besteffort"));
        let docker = parse_cgroup_identity(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!(docker.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(docker.pod_uid, None);
        assert_eq!(
            parse_cgroup_identity("/user.slice/user-0.slice"),
            CgroupIdentity::default()
        );
    }

    #[test]
    fn cache_keeps_exited_processes() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("42");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("comm"), "worker\n").expect("write");
        std::fs::write(dir.join("maps"), "1000-2000 r-xp 00000000 08:01 5 /bin/w\n").expect("write");
        let mut cache = ProcessCache::new(root.path(), Duration::ZERO, Duration::from_secs(60));
        assert_eq!(cache.get(42).comm, "worker");
        std::fs::remove_dir_all(&dir).expect("rm");
        let info = cache.get(42);
        assert!(info.known);
        assert_eq!(info.comm, "worker");
        assert_eq!(info.mappings.len(), 1);
        assert!(!cache.get(43).known);
    }
}
