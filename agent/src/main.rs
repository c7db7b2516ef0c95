//! `kiln-agent`: the host agent. See docs/agent.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_agent::bpf::{Sampler, SamplerOptions};
use kiln_agent::config::{Config, UnwinderMode};
use kiln_agent::cpu::CpuProfiler;
use kiln_agent::health::{catch_panic, spawn_reporting_panics, Health};
use kiln_agent::metrics::Metrics;
use kiln_agent::push::{KilnSink, Outbox};
use kiln_agent::spool::Spool;
use kiln_agent::{relabel, scrape, shutdown};

/// Kiln's host agent: profiles every process on the host with eBPF, scrapes pprof endpoints, and pushes
/// both to Kiln. Flags and KILN_* variables override the config file.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version)]
struct Args {
    /// TOML config file (see docs/agent.md).
    #[arg(long, short = 'c', env = "KILN_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Node to push to, `host:port` or `http://host:port`.
    #[arg(long, env = "KILN_SERVER")]
    server: Option<String>,
    /// `/metrics` listen address (`host:port`; empty disables it).
    #[arg(long, env = "KILN_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The `node` label (default: the host name).
    #[arg(long, env = "KILN_NODE_NAME")]
    node_name: Option<String>,
    /// A label for every series, NAME=VALUE; repeat for more.
    #[arg(long = "label", short = 'l', env = "KILN_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Samples per second per CPU.
    #[arg(long, env = "KILN_FREQUENCY_HZ")]
    frequency_hz: Option<u64>,
    /// Time between drains, e.g. `10s`.
    #[arg(long, env = "KILN_DRAIN_INTERVAL", value_parser = humantime::parse_duration)]
    drain_interval: Option<Duration>,
    /// Add a `pid` label to CPU profiles.
    #[arg(long, env = "KILN_PID_LABEL")]
    pid_label: Option<bool>,
    /// User stack unwinder: `dwarf` (.eh_frame, frame pointers as fallback) or `fp`.
    #[arg(long, env = "KILN_UNWINDER")]
    unwinder: Option<kiln_agent::config::UnwinderMode>,
    /// User stack bytes copied per sample for DWARF unwinding (1024..=32768).
    #[arg(long, env = "KILN_STACK_COPY_BYTES")]
    stack_copy_bytes: Option<u32>,
    /// Disable the eBPF profiler (scrape only).
    #[arg(long, env = "KILN_NO_PROFILER")]
    no_profiler: bool,
    /// Spool directory.
    #[arg(long, env = "KILN_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Spool bound in bytes.
    #[arg(long, env = "KILN_SPOOL_MAX_BYTES")]
    spool_max_bytes: Option<u64>,
    /// `text` or `json` logs (level via KILN_LOG, e.g. `info,kiln_agent=debug`).
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn merged_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(server) = &args.server {
        config.server = server.clone();
    }
    if let Some(listen) = &args.metrics_listen {
        config.metrics_listen = listen.clone();
    }
    if let Some(name) = &args.node_name {
        config.node_name = Some(name.clone());
    }
    for pair in &args.labels {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--label {pair:?}: expected NAME=VALUE"))?;
        config
            .labels
            .insert(name.trim().to_string(), value.trim().to_string());
    }
    if let Some(frequency) = args.frequency_hz {
        config.profiler.frequency_hz = frequency;
    }
    if let Some(interval) = args.drain_interval {
        config.profiler.drain_interval = interval;
    }
    if let Some(pid_label) = args.pid_label {
        config.profiler.pid_label = pid_label;
    }
    if let Some(unwinder) = args.unwinder {
        config.profiler.unwinder = unwinder;
    }
    if let Some(bytes) = args.stack_copy_bytes {
        config.profiler.stack_copy_bytes = bytes;
    }
    if args.no_profiler {
        config.profiler.enabled = false;
    }
    if let Some(dir) = &args.spool_dir {
        config.spool.dir = dir.clone();
    }
    if let Some(max_bytes) = args.spool_max_bytes {
        config.spool.max_bytes = max_bytes;
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve_metrics(
    listen: &str,
    metrics: Metrics,
    health: Health,
    shutdown: shutdown::Shutdown,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for /metrics"))?;
    let address = listener.local_addr()?;
    // Tests (and humans) read the bound address from stdout.
    println!("metrics listening on {address}");
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let health = health.clone();
                async move { health.answer() }
            }),
        );
    Ok(Some(tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "metrics server failed");
        }
    })))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let config = merged_config(&args)?;
    if args.check_config {
        println!("configuration ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let health = Health::default();
    let (trigger, shutdown) = shutdown::channel();
    let rules = relabel::compile(&config.relabel_configs)?;
    let node_name = match &config.node_name {
        Some(name) => name.clone(),
        None => hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_string()),
    };
    let spool = Spool::open(&config.spool.dir, config.spool.max_bytes)
        .with_context(|| format!("cannot open the spool at {}", config.spool.dir.display()))?;
    if !spool.is_empty() {
        tracing::info!(
            batches = spool.len(),
            bytes = spool.bytes(),
            "replaying batches spooled by an earlier run"
        );
    }
    let outbox = Outbox::new(spool, metrics.clone());
    let sink = KilnSink::new(&config.server)?;
    // The pusher stops last, after the producers' final batches are spooled, so that it can try them.
    let (push_trigger, push_shutdown) = shutdown::channel();
    let pusher = spawn_reporting_panics(
        "the pusher".to_string(),
        health.clone(),
        outbox.clone().run_pusher(
            sink,
            async move { push_shutdown.wait().await },
            Duration::from_secs(5),
        ),
    );
    let metrics_server = serve_metrics(
        &config.metrics_listen,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    // The eBPF profiler, on its own thread. Failing to load it is reported and the rest keeps running.
    let mut profiler_thread = None;
    if config.profiler.enabled {
        let options = SamplerOptions {
            frequency_hz: config.profiler.frequency_hz,
            max_keys: config.profiler.max_keys,
            max_stacks: config.profiler.max_stacks,
            stack_copy_bytes: match config.profiler.unwinder {
                UnwinderMode::Dwarf => config.profiler.stack_copy_bytes,
                UnwinderMode::Fp => 0,
            },
            ring_buffer_bytes: config.profiler.ring_buffer_bytes,
        };
        match Sampler::start(options) {
            Ok(sampler) => {
                metrics.bpf_running.set(1);
                tracing::info!(
                    frequency_hz = config.profiler.frequency_hz,
                    drain_interval = %humantime::format_duration(config.profiler.drain_interval),
                    unwinder = if sampler.dwarf_mode() { "dwarf" } else { "fp" },
                    "eBPF CPU profiler running"
                );
                let profiler = CpuProfiler {
                    outbox: outbox.clone(),
                    metrics: metrics.clone(),
                    node_name: node_name.clone(),
                    static_labels: config.labels.clone(),
                    rules: rules.clone(),
                    pid_label: config.profiler.pid_label,
                    frequency_hz: config.profiler.frequency_hz,
                    drain_interval: config.profiler.drain_interval,
                    proc_root: config.profiler.proc_root.clone(),
                    unwind_table_max_bytes: usize::try_from(config.profiler.unwind_table_max_bytes)
                        .unwrap_or(usize::MAX),
                    symbol_files_max_bytes: config.profiler.symbol_files_max_bytes,
                };
                let handle = tokio::runtime::Handle::current();
                let shutdown = shutdown.clone();
                let health = health.clone();
                let profiler_metrics = metrics.clone();
                profiler_thread = Some(
                    std::thread::Builder::new()
                        .name("cpu-profiler".to_string())
                        .spawn(move || {
                            if let Err(message) = catch_panic(|| profiler.run(sampler, handle, shutdown)) {
                                profiler_metrics.bpf_running.set(0);
                                health.report_stopped(format!("the CPU profiler stopped: {message}"));
                            }
                        })
                        .context("cannot start the profiler thread")?,
                );
            }
            Err(error) => {
                // One clear line naming what is missing; scraping goes on.
                tracing::error!("{error}; CPU profiling is disabled, pprof scraping continues");
                eprintln!("kiln-agent: {error}; CPU profiling is disabled, pprof scraping continues");
            }
        }
    }

    let static_labels: BTreeMap<String, String> = config.labels.clone();
    let targets = scrape::targets(&config.scrape_configs, &static_labels, &rules);
    let client = reqwest::Client::builder()
        .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")?;
    let mut scrapers = Vec::new();
    for target in targets {
        tracing::info!(url = %target.url(), "scraping");
        scrapers.push(spawn_reporting_panics(
            format!("the scraper of {}", target.url()),
            health.clone(),
            scrape::run_loop(
                client.clone(),
                target,
                outbox.clone(),
                metrics.clone(),
                shutdown.clone(),
            ),
        ));
    }

    wait_for_signal().await;
    tracing::info!("stopping: flushing the last interval");
    trigger.trigger();
    if let Some(thread) = profiler_thread {
        // The profiler drains once more and spools it; join on the blocking pool.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    for scraper in scrapers {
        let _ = scraper.await;
    }
    push_trigger.trigger();
    let _ = pusher.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    Ok(())
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
