//! The `kiln-node` binary: flags, config file and `KILN_*` environment, logging,
//! serving, and a graceful shutdown that loses nothing acknowledged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_node::cluster::ClusterConfig;
use kiln_node::{NodeConfig, NodeState};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: under glibc the same merge of the same data took up to
/// 60% longer in some node processes than in others (the tree build and its rendering, which
/// allocate most), which made the fan-out merge's latency a matter of luck; with jemalloc the
/// spread mostly went (BENCHMARKS.md, "Cluster", sixth session).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer that may live in a `static` (jemalloc only reads it).
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` C string literal, which is never written.
unsafe impl Sync for MallocConf {}

/// jemalloc's options, read by jemalloc itself (under its `_rjem_` symbol prefix) before `main`; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them.
/// - `oversize_threshold:0`: otherwise allocations over 8 MiB come from an arena that hands their pages
///   back to the kernel as soon as they are freed. A merge's largest buffers (the tree's nodes, the
///   answer message) are that big, so every merge faulted them in again: 1,600–4,200 minor faults per
///   tree build, in steady state.
/// - `background_thread:true`, `dirty_decay_ms:30000`: freed pages are kept for reuse for about 30 s
///   (instead of 10 s) and returned to the kernel by jemalloc's own threads, not inside a query's frees.
///   The cost is that an idle node's RSS shrinks more slowly after a burst.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: MallocConf =
    MallocConf(c"oversize_threshold:0,background_thread:true,dirty_decay_ms:30000".as_ptr());

/// A Kiln storage node: ingests profiles and answers queries on one port (gRPC,
/// HTTP JSON API, /metrics, /healthz).
#[derive(Debug, Parser)]
#[command(name = "kiln-node", version)]
struct Args {
    /// Directory of the node's RocksDB.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    data_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// How long samples are kept (humantime, e.g. 7d, 12h).
    #[arg(long, env = "KILN_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// How often retention runs.
    #[arg(long, env = "KILN_RETENTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    retention_interval: Duration,
    /// Largest gRPC message / HTTP body, bytes.
    #[arg(long, env = "KILN_MAX_MESSAGE_BYTES", default_value_t = kiln_node::server::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Writes are refused (UNAVAILABLE / 503) while less than this many bytes are free on the data
    /// directory's file system; queries, retention and cluster changes go on.
    #[arg(long, env = "KILN_MIN_FREE_DISK_BYTES", default_value_t = kiln_node::storage::disk::DEFAULT_DISK_RESERVE_BYTES)]
    min_free_disk_bytes: u64,
    /// Write requests queued before new ones get RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "KILN_WRITE_QUEUE_DEPTH", default_value_t = 1024)]
    write_queue_depth: usize,
    /// Address other nodes and clients reach this node at (default: the bound
    /// listen address).
    #[arg(long, env = "KILN_ADVERTISE")]
    advertise: Option<String>,
    /// Join the cluster of the node at this address (first start only; a
    /// restarted node rejoins its groups by itself). Without it, the first start
    /// bootstraps a new cluster.
    #[arg(long, env = "KILN_JOIN")]
    join: Option<String>,
    /// Region label of this node (placement spreads replicas over regions).
    #[arg(long, env = "KILN_REGION", default_value = "")]
    region: String,
    /// Zone label of this node (placement spreads replicas over zones).
    #[arg(long, env = "KILN_ZONE", default_value = "")]
    zone: String,
    /// Replicas per shard group (capped by the number of nodes).
    #[arg(long, env = "KILN_REPLICATION_FACTOR", default_value_t = 3)]
    replication_factor: usize,
    /// Shard groups created when a new cluster is bootstrapped.
    #[arg(long, env = "KILN_GROUPS", default_value_t = 8)]
    groups: u32,
    /// A node unreachable this long has its replicas re-created elsewhere.
    #[arg(long, env = "KILN_DEAD_NODE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    dead_node_timeout: Duration,
    /// Raft heartbeat interval; openraft also uses it as the timeout of one
    /// AppendEntries round trip.
    #[arg(long, env = "KILN_RAFT_HEARTBEAT", default_value = "300ms", value_parser = humantime::parse_duration)]
    raft_heartbeat: Duration,
    /// Raft election timeout (lower bound; the upper bound is twice it).
    #[arg(long, env = "KILN_RAFT_ELECTION_TIMEOUT", default_value = "1500ms", value_parser = humantime::parse_duration)]
    raft_election_timeout: Duration,
    /// Raft log entries after which a group snapshots and purges its log.
    #[arg(long, env = "KILN_SNAPSHOT_AFTER_LOGS", default_value_t = 5_000)]
    snapshot_after_logs: u64,
    /// How long one shard group may take to answer its part of a query.
    #[arg(long, env = "KILN_GROUP_QUERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    group_query_timeout: Duration,
    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let mut config = NodeConfig::with_data_dir(args.data_dir.clone());
    config.retention = args.retention;
    config.retention_interval = args.retention_interval;
    config.max_message_bytes = args.max_message_bytes;
    config.write_queue_depth = args.write_queue_depth;
    config.storage.disk_reserve_bytes = args.min_free_disk_bytes;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local_address = listener.local_addr().context("reading the bound address")?;
    let mut cluster = ClusterConfig::new(
        args.advertise
            .clone()
            .unwrap_or_else(|| local_address.to_string()),
    );
    cluster.join = args.join.clone();
    cluster.region = args.region.clone();
    cluster.zone = args.zone.clone();
    cluster.replication_factor = args.replication_factor.max(1);
    cluster.data_groups = args.groups.max(1);
    cluster.dead_node_timeout = args.dead_node_timeout;
    cluster.heartbeat_interval = args.raft_heartbeat;
    cluster.election_timeout = args.raft_election_timeout;
    cluster.snapshot_after_logs = args.snapshot_after_logs.max(1);
    cluster.group_query_timeout = args.group_query_timeout;
    // The listener is bound first so that the advertised address is known; the
    // servers start once the node has its id and groups.
    let state = NodeState::open(config, cluster)
        .await
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    // Tests and scripts read this line to learn an ephemeral port.
    tracing::info!(
        address = %local_address,
        node = state.cluster.node_id(),
        data_dir = %args.data_dir.display(),
        "kiln-node listening"
    );
    println!("listening on {local_address}");
    println!("node id {}", state.cluster.node_id());
    let retention = state.spawn_retention();
    kiln_node::server::serve(state.clone(), listener, args.max_message_bytes, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("shutting down: stopping raft groups and writers");
    retention.abort();
    state.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
