//! `kiln-node`: one storage node of Kiln.
//!
//! Layering (each layer only uses the ones below it):
//! 1. [`storage`]: RocksDB, keys, records, the writer thread;
//! 2. [`ingest`] (write preparation) and [`query`] (the query engine);
//! 3. [`server`]: gRPC and HTTP, the only place that knows about the wire.
//!
//! [`error::NodeError`] is the one error type; it maps to gRPC and HTTP statuses in
//! `error.rs` only.

pub mod error;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod server;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::storage::keys::GroupId;
use crate::storage::writer::Writer;
use crate::storage::{Storage, StorageOptions};

/// The single node keeps all data in this group; the cluster adds more.
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
}

/// Everything the servers share.
pub struct NodeState {
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
    /// Uptime and recent writers, for the status page.
    pub status: server::status::StatusTracker,
}

impl NodeState {
    /// Opens storage and starts the writer.
    pub fn open(config: NodeConfig) -> Result<Arc<NodeState>, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|error| {
            NodeError::InvalidArgument(format!(
                "cannot create data dir {}: {error}",
                config.data_dir.display()
            ))
        })?;
        let metrics = Arc::new(Metrics::new());
        let storage = Storage::open(&config.data_dir, config.storage.clone())?;
        let writer = Writer::start(
            storage.clone(),
            LOCAL_GROUP,
            config.write_queue_depth,
            metrics.clone(),
        )?;
        let engine = QueryEngine::new(storage.clone(), LOCAL_GROUP, metrics.clone());
        Ok(Arc::new(NodeState {
            storage,
            writer,
            engine,
            metrics,
            config,
            status: server::status::StatusTracker::new(),
        }))
    }

    /// Runs one retention pass now.
    pub async fn run_retention(&self) -> Result<storage::writer::RetentionOutcome, NodeError> {
        let cutoff = kiln_model::time::now_unix_ms() - self.config.retention.as_millis() as i64;
        self.writer.retention(cutoff).await
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
                    Ok(outcome) => tracing::info!(?outcome, "retention pass"),
                    Err(NodeError::ShuttingDown) => return,
                    Err(error) => tracing::error!(%error, "retention pass failed"),
                }
            }
        })
    }

    /// Stops the writer after committing everything queued, and flushes.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}
