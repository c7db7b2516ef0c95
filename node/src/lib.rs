//! `kiln-node`: one storage node of Kiln.
//!
//! Layering (each layer only uses the ones below it):
//! 1. [`storage`]: RocksDB, keys, records, the writer thread;
//! 2. [`ingest`] (write preparation) and [`query`] (the query engine of one group);
//! 3. [`raft`]: one replica of one group (openraft storage and network);
//! 4. [`cluster`]: which groups live where, routed writes, fanned-out queries;
//! 5. [`server`]: gRPC and HTTP, the only place that knows about the wire.
//!
//! [`error::NodeError`] is the one error type; it maps to gRPC and HTTP statuses in
//! `error.rs` only.

pub mod cluster;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod raft;
pub mod server;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::storage::keys::GroupId;
use crate::storage::writer::{Expiry, Writer};
use crate::storage::{Storage, StorageOptions};

/// The group [`LocalGroup`] keeps its data in (tests and benchmarks of the storage
/// engine alone). Cluster data groups are numbered from 1; see `cluster::map`.
pub const LOCAL_GROUP: GroupId = 0;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where RocksDB lives.
    pub data_dir: PathBuf,
    /// How long samples are kept.
    pub retention: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Writes waiting for a commit before new ones are pushed back.
    pub write_queue_depth: usize,
    /// Largest gRPC message / HTTP body.
    pub max_message_bytes: usize,
    /// Storage tuning.
    pub storage: StorageOptions,
}

impl NodeConfig {
    /// Defaults for a data directory: 7 days retention, hourly passes.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        NodeConfig {
            data_dir,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(3600),
            write_queue_depth: 1024,
            max_message_bytes: server::DEFAULT_MAX_MESSAGE_BYTES,
            storage: StorageOptions::default(),
        }
    }

    /// [`Self::with_data_dir`] with a retention of 100 years: for profiles stamped at fixed
    /// dates in the past (test data, generated fleets), which the default retention would
    /// refuse at ingest and expire.
    pub fn keeping_everything(data_dir: PathBuf) -> Self {
        NodeConfig {
            retention: Duration::from_secs(100 * 365 * 24 * 3600),
            ..NodeConfig::with_data_dir(data_dir)
        }
    }
}

fn open_storage(config: &NodeConfig) -> Result<Storage, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        NodeError::InvalidArgument(format!(
            "cannot create data dir {}: {error}",
            config.data_dir.display()
        ))
    })?;
    Storage::open(&config.data_dir, config.storage.clone())
}

/// Everything the servers share: storage, this node's part of the cluster (every
/// write and query goes through it), metrics, configuration.
pub struct NodeState {
    /// The database.
    pub storage: Storage,
    /// Groups hosted here, routing, fan-out.
    pub cluster: Arc<Cluster>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: NodeConfig,
    /// Uptime and recent writers, for the status page.
    pub status: server::status::StatusTracker,
}

impl NodeState {
    /// Opens storage and starts (bootstraps, joins or rejoins) this node's part
    /// of the cluster.
    pub async fn open(
        config: NodeConfig,
        cluster_config: ClusterConfig,
    ) -> Result<Arc<NodeState>, NodeError> {
        let metrics = Arc::new(Metrics::new());
        let storage = open_storage(&config)?;
        let cluster = Cluster::start(
            cluster_config,
            storage.clone(),
            metrics.clone(),
            config.data_dir.clone(),
            config.write_queue_depth,
            config.retention,
        )
        .await?;
        cluster.spawn_background();
        Ok(Arc::new(NodeState {
            storage,
            cluster,
            metrics,
            config,
            status: server::status::StatusTracker::new(),
        }))
    }

    /// Runs one retention pass now: every data group this node leads expires what is older than
    /// the retention (see [`cluster::Cluster::run_retention`]). Returns those groups.
    pub async fn run_retention(&self) -> Result<Vec<GroupId>, NodeError> {
        let expiry = Expiry::at(kiln_model::time::now_unix_ms(), self.config.retention);
        self.cluster.run_retention(expiry).await
    }

    /// Runs retention every `retention_interval` until the state is dropped by all
    /// other owners.
    pub fn spawn_retention(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.config.retention_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(state) = weak.upgrade() else {
                    return;
                };
                match state.run_retention().await {
                    Ok(_) => {
                        state.metrics.retention_passes.inc();
                        tracing::info!("retention pass done");
                    }
                    Err(NodeError::ShuttingDown) => return,
                    Err(error) => tracing::error!(%error, "retention pass failed"),
                }
                // A pass expires only the groups led here. A group still electing its leader (every
                // group at start-up) was skipped by everyone: pass again soon, not an interval later.
                if state.cluster.some_data_group_without_leader() {
                    ticker.reset_after(interval.min(RETENTION_RETRY_WHILE_ELECTING));
                }
            }
        })
    }

    /// Stops every group (raft and writer); committed data is durable already.
    pub async fn shutdown(&self) {
        self.cluster.shutdown().await;
        if let Err(error) = self.storage.flush() {
            tracing::error!(%error, "flushing at shutdown failed");
        }
    }
}

/// How soon a retention pass runs again when a local data group had no leader at the last one.
const RETENTION_RETRY_WHILE_ELECTING: Duration = Duration::from_secs(2);

/// One group's storage engine without raft: the writer thread and query engine
/// over group [`LOCAL_GROUP`]. For tests and benchmarks of storage and queries.
pub struct LocalGroup {
    /// The database.
    pub storage: Storage,
    /// The writer thread.
    pub writer: Writer,
    /// The query engine.
    pub engine: QueryEngine,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: NodeConfig,
}

impl LocalGroup {
    /// Opens storage and starts the writer.
    pub fn open(config: NodeConfig) -> Result<Arc<LocalGroup>, NodeError> {
        let metrics = Arc::new(Metrics::new());
        let storage = open_storage(&config)?;
        let writer = Writer::start(
            storage.clone(),
            LOCAL_GROUP,
            config.write_queue_depth,
            metrics.clone(),
        )?;
        let engine = QueryEngine::new(storage.clone(), LOCAL_GROUP, metrics.clone());
        Ok(Arc::new(LocalGroup {
            storage,
            writer,
            engine,
            metrics,
            config,
        }))
    }

    /// Validates, encodes and stores a write request; answers once it is durable.
    pub async fn write(
        &self,
        request: kiln_proto::kiln::v1::WriteRequest,
    ) -> Result<kiln_proto::kiln::v1::WriteResponse, NodeError> {
        let oldest_kept = ingest::OldestKept::now(self.config.retention);
        let prepared = tokio::task::spawn_blocking(move || ingest::prepare_write(request, oldest_kept))
            .await
            .map_err(|error| NodeError::Internal(format!("prepare failed: {error}")))??;
        let outcome = self.writer.write(prepared).await?;
        self.metrics
            .count_write(outcome.duplicate, outcome.profiles, outcome.samples);
        Ok(kiln_proto::kiln::v1::WriteResponse {
            duplicate: outcome.duplicate,
            profiles: outcome.profiles,
            samples: outcome.samples,
            series: outcome.series,
            profile_types: outcome.profile_types,
        })
    }

    /// Runs one retention pass now.
    pub async fn run_retention(&self) -> Result<storage::writer::RetentionOutcome, NodeError> {
        let expiry = Expiry::at(kiln_model::time::now_unix_ms(), self.config.retention);
        self.writer.retention(expiry, Vec::new()).await
    }

    /// Stops the writer after committing everything queued, and flushes.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}
