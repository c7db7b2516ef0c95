//! The `kiln-node` binary: flags, config file and `KILN_*` environment, logging,
//! serving, and a graceful shutdown that loses nothing acknowledged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_node::{NodeConfig, NodeState};
use tracing_subscriber::EnvFilter;

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
    /// Write requests queued before new ones get RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "KILN_WRITE_QUEUE_DEPTH", default_value_t = 1024)]
    write_queue_depth: usize,
    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
    let state = NodeState::open(config).with_context(|| format!("opening {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local_address = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to learn an ephemeral port.
    tracing::info!(address = %local_address, data_dir = %args.data_dir.display(), "kiln-node listening");
    println!("listening on {local_address}");
    let retention = state.spawn_retention();
    kiln_node::server::serve(state.clone(), listener, args.max_message_bytes, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("shutting down: committing queued writes");
    retention.abort();
    let writer_state = state.clone();
    tokio::task::spawn_blocking(move || writer_state.shutdown())
        .await
        .context("stopping the writer")?;
    tracing::info!("stopped");
    Ok(())
}
