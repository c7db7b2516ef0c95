//! Prometheus metrics of the node, exposed at `/metrics` in the text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set of per-query-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// merge, range, diff, labels, values, series, types.
    pub kind: String,
}

/// Label set of request error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// write or a query kind.
    pub operation: String,
    /// gRPC code name.
    pub code: String,
}

/// Label set of per-group metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Shard group id (0 is the metadata group).
    pub group: u32,
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Seconds from proposing a command to its group until it was applied.
    pub raft_commit_seconds: Family<GroupLabels, Histogram>,
    /// Leader changes seen by this node's replica of each group.
    pub raft_leader_changes: Family<GroupLabels, Counter>,
    /// 1 when this node's replica leads the group.
    pub raft_is_leader: Family<GroupLabels, Gauge>,
    /// Log entries this node's replica has not applied yet.
    pub raft_apply_lag: Family<GroupLabels, Gauge>,
    /// Raft snapshots built on this node.
    pub snapshot_builds: Counter,
    /// Raft snapshots installed on this node.
    pub snapshot_installs: Counter,
    /// Learners this node (as a group leader) caught up before adding them as voters.
    pub learners_caught_up: Counter,
    /// Nodes the metadata leader saw alive at its last pass.
    pub cluster_nodes_alive: Gauge,
    /// Groups that could not answer a fanned-out query.
    pub fanout_missing_groups: Counter,
    /// Merge partials asked again with their symbol records because this node's own
    /// replica of the group did not hold them all (it lagged).
    pub fanout_record_refetches: Counter,
    /// Stacks left out of raft proposals because the group already stores them.
    pub proposal_stacks_stripped: Counter,
    /// Symbols left out of raft proposals because the group already stores them.
    pub proposal_symbols_stripped: Counter,
    /// Applied samples whose stack was neither stored nor carried by the entry (a
    /// broken stripping invariant; the sample is kept under an empty stack). Must
    /// stay 0.
    pub stack_content_missing: Counter,
    /// Profiles (pprof payloads) stored.
    pub ingested_profiles: Counter,
    /// Stack samples stored (over all sample types).
    pub ingested_samples: Counter,
    /// Write requests that were duplicates of an earlier idempotency key.
    pub duplicate_writes: Counter,
    /// Write requests rejected because the writer queue was full.
    pub rejected_overload: Counter,
    /// Seconds per synced group commit.
    pub commit_seconds: Histogram,
    /// Write requests per group commit.
    pub commit_batch_size: Histogram,
    /// Seconds per query, by kind.
    pub query_seconds: Family<QueryLabels, Histogram>,
    /// Failed requests, by operation and code.
    pub request_errors: Family<ErrorLabels, Counter>,
    /// Series created.
    pub series_created: Counter,
    /// Series removed by retention.
    pub series_expired: Counter,
    /// Retention passes finished over every replica of this node (the first runs at start-up).
    pub retention_passes: Counter,
    /// Bytes of live SST files.
    pub disk_bytes: Gauge,
    /// Bytes free on the data directory's file system, as last measured.
    pub disk_free_bytes: Gauge,
    /// Write proposals this node refused as a leader because its own data directory's free space, or
    /// that of another voter of the group (as that voter last reported it), was under the reserve.
    pub writes_refused_for_disk: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let ingested_profiles = Counter::default();
        registry.register(
            "ingested_profiles",
            "pprof payloads stored",
            ingested_profiles.clone(),
        );
        let ingested_samples = Counter::default();
        registry.register(
            "ingested_samples",
            "stack samples stored, over all sample types",
            ingested_samples.clone(),
        );
        let duplicate_writes = Counter::default();
        registry.register(
            "duplicate_writes",
            "writes whose idempotency key was already stored",
            duplicate_writes.clone(),
        );
        let rejected_overload = Counter::default();
        registry.register(
            "rejected_overload",
            "writes rejected because the writer queue was full",
            rejected_overload.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "commit_seconds",
            "seconds per synced group commit",
            commit_seconds.clone(),
        );
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "commit_batch_size",
            "write requests per group commit",
            commit_batch_size.clone(),
        );
        let query_seconds = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("query_seconds", "seconds per query", query_seconds.clone());
        let request_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("request_errors", "failed requests", request_errors.clone());
        let series_created = Counter::default();
        registry.register("series_created", "series created", series_created.clone());
        let series_expired = Counter::default();
        registry.register(
            "series_expired",
            "series removed by retention",
            series_expired.clone(),
        );
        let retention_passes = Counter::default();
        registry.register(
            "retention_passes",
            "retention passes finished over every replica of this node",
            retention_passes.clone(),
        );
        let disk_bytes = Gauge::default();
        registry.register("disk_bytes", "bytes of live SST files", disk_bytes.clone());
        let disk_free_bytes = Gauge::default();
        registry.register(
            "disk_free_bytes",
            "bytes free on the data directory's file system, as last measured",
            disk_free_bytes.clone(),
        );
        let writes_refused_for_disk = Counter::default();
        registry.register(
            "writes_refused_for_disk",
            "write proposals refused because free disk space on this node or on another replica of the group was under --min-free-disk-bytes",
            writes_refused_for_disk.clone(),
        );
        let raft_commit_seconds = Family::<GroupLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "raft_commit_seconds",
            "seconds from proposal to applied, per group",
            raft_commit_seconds.clone(),
        );
        let raft_leader_changes = Family::<GroupLabels, Counter>::default();
        registry.register(
            "raft_leader_changes",
            "leader changes seen per group",
            raft_leader_changes.clone(),
        );
        let raft_is_leader = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "raft_is_leader",
            "1 when this node leads the group",
            raft_is_leader.clone(),
        );
        let raft_apply_lag = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "raft_apply_lag",
            "log entries not applied yet, per group",
            raft_apply_lag.clone(),
        );
        let snapshot_builds = Counter::default();
        registry.register(
            "raft_snapshot_builds",
            "raft snapshots built",
            snapshot_builds.clone(),
        );
        let snapshot_installs = Counter::default();
        registry.register(
            "raft_snapshot_installs",
            "raft snapshots installed",
            snapshot_installs.clone(),
        );
        let learners_caught_up = Counter::default();
        registry.register(
            "raft_learners_caught_up",
            "learners caught up (by snapshot when the log was purged) before a membership change",
            learners_caught_up.clone(),
        );
        let cluster_nodes_alive = Gauge::default();
        registry.register(
            "cluster_nodes_alive",
            "nodes the metadata leader saw alive",
            cluster_nodes_alive.clone(),
        );
        let fanout_missing_groups = Counter::default();
        registry.register(
            "fanout_missing_groups",
            "groups that could not answer a fanned-out query",
            fanout_missing_groups.clone(),
        );
        let fanout_record_refetches = Counter::default();
        registry.register(
            "fanout_record_refetches",
            "merge partials asked again with their symbol records because this node's replica lagged",
            fanout_record_refetches.clone(),
        );
        let proposal_stacks_stripped = Counter::default();
        registry.register(
            "proposal_stacks_stripped",
            "stacks left out of raft proposals because the group already stores them",
            proposal_stacks_stripped.clone(),
        );
        let proposal_symbols_stripped = Counter::default();
        registry.register(
            "proposal_symbols_stripped",
            "symbols left out of raft proposals because the group already stores them",
            proposal_symbols_stripped.clone(),
        );
        let stack_content_missing = Counter::default();
        registry.register(
            "stack_content_missing",
            "applied stacks that were neither stored nor carried by the entry (must stay 0)",
            stack_content_missing.clone(),
        );
        Metrics {
            registry,
            raft_commit_seconds,
            raft_leader_changes,
            raft_is_leader,
            raft_apply_lag,
            snapshot_builds,
            snapshot_installs,
            learners_caught_up,
            cluster_nodes_alive,
            fanout_missing_groups,
            fanout_record_refetches,
            proposal_stacks_stripped,
            proposal_symbols_stripped,
            stack_content_missing,
            ingested_profiles,
            ingested_samples,
            duplicate_writes,
            rejected_overload,
            commit_seconds,
            commit_batch_size,
            query_seconds,
            request_errors,
            series_created,
            series_expired,
            retention_passes,
            disk_bytes,
            disk_free_bytes,
            writes_refused_for_disk,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts an acknowledged write request once, where it was received.
    pub fn count_write(&self, duplicate: bool, profiles: u64, samples: u64) {
        if duplicate {
            self.duplicate_writes.inc();
        } else {
            self.ingested_profiles.inc_by(profiles);
            self.ingested_samples.inc_by(samples);
        }
    }

    /// Counts a failed request.
    pub fn count_error(&self, operation: &str, code: tonic::Code) {
        self.request_errors
            .get_or_create(&ErrorLabels {
                operation: operation.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }
}
