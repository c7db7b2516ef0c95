//! What the UI's status page shows about this node: its version, uptime and disk use, and the writers
//! (agents, scrapers, CLIs) that pushed profiles recently — `GET /api/v1/status`.
//!
//! Writers are told apart by one label of the series they write, the first present of
//! [`WRITER_LABELS`] (`node`, `instance`, `host`, `hostname`, `pod`, `job`, `service`): an agent labels
//! everything it sends with `node`, a scraper with `instance`/`job`. Series with none of them count as
//! the writer `(unlabelled)`. The tracker is in memory only (it starts empty when the node starts), keeps
//! at most [`MAX_WRITERS`] writers (the least recently seen are forgotten first) and reports those seen
//! within [`WRITER_WINDOW_MS`]. Only acknowledged writes are counted, each once per writer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::Json;
use kiln_proto::kiln::v1 as api;
use parking_lot::Mutex;
use serde::Serialize;

use crate::NodeState;

/// Labels that name a writer, in order of preference.
pub const WRITER_LABELS: &[&str] = &["node", "instance", "host", "hostname", "pod", "job", "service"];
/// Writers remembered at most.
pub const MAX_WRITERS: usize = 1024;
/// How long a writer stays listed after its last write, milliseconds (1 hour).
pub const WRITER_WINDOW_MS: i64 = 3_600_000;
/// Profile types remembered per writer at most.
const MAX_TYPES_PER_WRITER: usize = 32;

/// One writer, as `GET /api/v1/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriterInfo {
    /// The label that identifies it (`node`, `instance`, ...), empty for `(unlabelled)`.
    pub label: String,
    /// That label's value.
    pub value: String,
    /// First acknowledged write since the node started, unix milliseconds.
    pub first_seen_ms: i64,
    /// Latest acknowledged write, unix milliseconds.
    pub last_seen_ms: i64,
    /// Acknowledged write requests that carried series of this writer.
    pub writes: u64,
    /// Raw profiles (pprof payloads) of this writer in those writes.
    pub profiles: u64,
    /// Names of the profiles it wrote (e.g. `process_cpu`, or empty when inferred by the node), sorted.
    pub profile_names: Vec<String>,
}

#[derive(Debug, Clone)]
struct WriterEntry {
    first_seen_ms: i64,
    last_seen_ms: i64,
    writes: u64,
    profiles: u64,
    profile_names: BTreeSet<String>,
}

/// The writers of one request, taken before the request is consumed: `(label, value)` → profile count and
/// profile names.
#[derive(Debug, Default)]
pub struct RequestWriters(HashMap<(String, String), (u64, BTreeSet<String>)>);

impl RequestWriters {
    /// The writers of `request`, by [`WRITER_LABELS`].
    pub fn of(request: &api::WriteRequest) -> Self {
        let mut writers: HashMap<(String, String), (u64, BTreeSet<String>)> = HashMap::new();
        for series in &request.series {
            let key = WRITER_LABELS
                .iter()
                .find_map(|name| {
                    series
                        .labels
                        .iter()
                        .find(|label| label.name == *name && !label.value.is_empty())
                        .map(|label| (label.name.clone(), label.value.clone()))
                })
                .unwrap_or_else(|| (String::new(), "(unlabelled)".to_string()));
            let entry = writers.entry(key).or_default();
            entry.0 += series.profiles.len() as u64;
            for profile in &series.profiles {
                if entry.1.len() < MAX_TYPES_PER_WRITER {
                    entry.1.insert(profile.name.clone());
                }
            }
        }
        RequestWriters(writers)
    }
}

/// The node's status tracker: start time and recent writers. Cheap to update (one short lock per write).
#[derive(Debug)]
pub struct StatusTracker {
    started: Instant,
    started_unix_ms: i64,
    writers: Mutex<HashMap<(String, String), WriterEntry>>,
}

impl Default for StatusTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusTracker {
    /// A tracker whose uptime starts now.
    pub fn new() -> Self {
        StatusTracker {
            started: Instant::now(),
            started_unix_ms: kiln_model::time::now_unix_ms(),
            writers: Mutex::new(HashMap::new()),
        }
    }

    /// Records an acknowledged write of `writers` at `now_ms`.
    pub fn record(&self, writers: RequestWriters, now_ms: i64) {
        let mut known = self.writers.lock();
        for (key, (profiles, names)) in writers.0 {
            let entry = known.entry(key).or_insert_with(|| WriterEntry {
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                writes: 0,
                profiles: 0,
                profile_names: BTreeSet::new(),
            });
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
            entry.writes += 1;
            entry.profiles += profiles;
            for name in names {
                if entry.profile_names.len() < MAX_TYPES_PER_WRITER {
                    entry.profile_names.insert(name);
                }
            }
        }
        if known.len() > MAX_WRITERS {
            let mut by_age: Vec<(i64, (String, String))> = known
                .iter()
                .map(|(key, entry)| (entry.last_seen_ms, key.clone()))
                .collect();
            by_age.sort();
            let excess = known.len() - MAX_WRITERS;
            for (_, key) in by_age.into_iter().take(excess) {
                known.remove(&key);
            }
        }
    }

    /// Writers seen within [`WRITER_WINDOW_MS`] of `now_ms`, most recent first.
    pub fn recent_writers(&self, now_ms: i64) -> Vec<WriterInfo> {
        let known = self.writers.lock();
        let mut writers: Vec<WriterInfo> = known
            .iter()
            .filter(|(_, entry)| now_ms - entry.last_seen_ms <= WRITER_WINDOW_MS)
            .map(|((label, value), entry)| WriterInfo {
                label: label.clone(),
                value: value.clone(),
                first_seen_ms: entry.first_seen_ms,
                last_seen_ms: entry.last_seen_ms,
                writes: entry.writes,
                profiles: entry.profiles,
                profile_names: entry
                    .profile_names
                    .iter()
                    .filter(|name| !name.is_empty())
                    .cloned()
                    .collect(),
            })
            .collect();
        writers.sort_by(|a, b| {
            b.last_seen_ms
                .cmp(&a.last_seen_ms)
                .then_with(|| (&a.label, &a.value).cmp(&(&b.label, &b.value)))
        });
        writers
    }

    /// When the node started, unix milliseconds.
    pub fn started_unix_ms(&self) -> i64 {
        self.started_unix_ms
    }

    /// Seconds since the node started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// The answer of `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The `kiln-node` version.
    pub version: String,
    /// When the node started, unix milliseconds.
    pub started_ms: i64,
    /// Seconds since then.
    pub uptime_seconds: u64,
    /// The node's clock, unix milliseconds (to judge `lastSeenMs`).
    pub now_ms: i64,
    /// The RocksDB directory.
    pub data_dir: String,
    /// Bytes of SST files on disk.
    pub disk_bytes: u64,
    /// Retention, seconds.
    pub retention_seconds: u64,
    /// Whether this binary carries the web UI.
    pub ui_embedded: bool,
    /// Writers seen in the last hour, most recent first.
    pub writers: Vec<WriterInfo>,
    /// Which label names a writer, in order of preference.
    pub writer_labels: Vec<String>,
}

/// `GET /api/v1/status`: this node and its recent writers.
pub async fn status(State(state): State<Arc<NodeState>>) -> Json<NodeStatus> {
    let now_ms = kiln_model::time::now_unix_ms();
    let tracker = &state.status;
    Json(NodeStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: tracker.started_unix_ms(),
        uptime_seconds: tracker.uptime_seconds(),
        now_ms,
        data_dir: state.config.data_dir.display().to_string(),
        disk_bytes: state.storage.disk_bytes(),
        retention_seconds: state.config.retention.as_secs(),
        ui_embedded: super::ui::is_embedded(),
        writers: tracker.recent_writers(now_ms),
        writer_labels: WRITER_LABELS.iter().map(|name| name.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(series: &[(&[(&str, &str)], &str)]) -> api::WriteRequest {
        api::WriteRequest {
            idempotency_key: "k".into(),
            series: series
                .iter()
                .map(|(labels, name)| api::SeriesWrite {
                    labels: labels
                        .iter()
                        .map(|(name, value)| api::Label {
                            name: name.to_string(),
                            value: value.to_string(),
                        })
                        .collect(),
                    profiles: vec![api::RawProfile {
                        name: name.to_string(),
                        ..Default::default()
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn writers_are_keyed_by_the_first_identifying_label() {
        let tracker = StatusTracker::new();
        let write = request(&[
            (&[("job", "api"), ("node", "host-1")], "process_cpu"),
            (&[("job", "api"), ("node", "host-1")], "memory"),
            (&[("instance", "10.0.0.1:6060"), ("job", "api")], ""),
            (&[("env", "dev")], ""),
        ]);
        tracker.record(RequestWriters::of(&write), 1_000);
        tracker.record(
            RequestWriters::of(&request(&[(&[("node", "host-1")], "")])),
            2_000,
        );
        let writers = tracker.recent_writers(2_500);
        assert_eq!(writers.len(), 3);
        assert_eq!(
            (writers[0].label.as_str(), writers[0].value.as_str()),
            ("node", "host-1")
        );
        assert_eq!(writers[0].writes, 2);
        assert_eq!(writers[0].profiles, 3);
        assert_eq!(writers[0].first_seen_ms, 1_000);
        assert_eq!(writers[0].last_seen_ms, 2_000);
        assert_eq!(
            writers[0].profile_names,
            vec!["memory".to_string(), "process_cpu".to_string()]
        );
        assert!(writers.iter().any(|writer| writer.label == "instance"));
        assert!(writers
            .iter()
            .any(|writer| writer.label.is_empty() && writer.value == "(unlabelled)"));
        assert!(tracker.recent_writers(2_000 + WRITER_WINDOW_MS + 1).is_empty());
    }

    #[test]
    fn forgets_the_least_recent_writers_beyond_the_bound() {
        let tracker = StatusTracker::new();
        for index in 0..(MAX_WRITERS as i64 + 10) {
            let value = format!("host-{index}");
            tracker.record(RequestWriters::of(&request(&[(&[("node", &value)], "")])), index);
        }
        let writers = tracker.recent_writers(MAX_WRITERS as i64 + 10);
        assert_eq!(writers.len(), MAX_WRITERS);
        assert!(writers.iter().all(|writer| writer.value != "host-0"));
    }
}
