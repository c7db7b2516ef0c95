//! `kiln`: ingest profiles into a Kiln node and query them.
//!
//! Every command talks gRPC to one node (`--server`, `KILN_SERVER`, default `http://127.0.0.1:7070`).
//! Failures print `error: ...` (with the server's own message) on stderr and exit with status 1; usage
//! errors exit with status 2. See docs/cli.md for every command and the JSON shapes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_client::client::{ConnectOptions, KilnClient, DEFAULT_SERVER};
use kiln_client::ingest::{parse_label_argument, Batch, BatchLimits, Batcher, IngestSummary};
use kiln_client::input::{expand_input_paths, load_profile_file};
use kiln_client::render;
use kiln_client::time::{now_unix_ms, parse_duration_ms, parse_time, parse_time_range, TimeRange};
use kiln_client::RoutingClient;
use kiln_model::json;
use kiln_proto::kiln::v1 as proto;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Ingest profiles into Kiln and query them: flame graphs, top tables, time series, diffs.",
    after_help = "Times (--from, --to, --time) accept `now`, `-15m`/`-1h`/`-7d`, RFC 3339 and unix milliseconds."
)]
struct Cli {
    /// The Kiln node to talk to: `http://host:port` or `host:port`.
    #[arg(long, global = true, env = "KILN_SERVER", default_value = DEFAULT_SERVER)]
    server: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send profile files (pprof .pb/.pb.gz, folded stacks, speedscope JSON) to the node.
    Ingest(IngestArgs),
    /// Merge every profile matching a selector over a time range: top, tree, folded, SVG, pprof or JSON.
    Query(QueryArgs),
    /// Value per time step per series (or summed by labels).
    Range(RangeArgs),
    /// Compare selection B against baseline selection A.
    Diff(DiffArgs),
    /// List label names (of the series matching SELECTOR, if given).
    Labels(LabelsArgs),
    /// List the values of label NAME (among series matching SELECTOR, if given).
    Values(ValuesArgs),
    /// List series (profile type + labels + series hash).
    Series(SeriesArgs),
    /// List the profile types that have data in the time range.
    Types(TypesArgs),
    /// Cluster operations: status, remove-node.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes (region, zone, state), groups with replicas, leader, commit and apply index, lag.
    Status(ClusterStatusArgs),
    /// Move every replica off a node, then remove it from the cluster.
    RemoveNode(RemoveNodeArgs),
}

#[derive(Debug, Args)]
struct ClusterStatusArgs {
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
}

#[derive(Debug, Args)]
struct RemoveNodeArgs {
    /// The node's id (see `kiln cluster status`).
    node_id: u64,
    /// Wait until the node holds no replica and is removed.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, Args)]
struct TimeArgs {
    /// Start of the time range (inclusive).
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    from: String,
    /// End of the time range (inclusive).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
}

impl TimeArgs {
    fn parse(&self, now: i64) -> Result<TimeRange> {
        Ok(parse_time_range(&self.from, &self.to, now)?)
    }
}

#[derive(Debug, Args)]
struct PartialArgs {
    /// Accept an answer that misses unreachable shard groups (a warning names them) instead of failing.
    #[arg(long)]
    partial: bool,
}

impl PartialArgs {
    fn options(&self) -> Option<proto::QueryOptions> {
        Some(proto::QueryOptions {
            allow_partial: self.partial,
        })
    }
}

#[derive(Debug, Args)]
struct OutputFileArgs {
    /// Write the output to FILE instead of stdout.
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    output_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Profile files, or directories to search for them (by extension).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A label for every profile sent, as name=value; repeat for more labels.
    #[arg(long = "label", short = 'l', value_name = "NAME=VALUE")]
    labels: Vec<String>,
    /// Profile name (first part of the profile type, e.g. process_cpu); inferred by the node when absent.
    #[arg(long)]
    name: Option<String>,
    /// Timestamp for files that carry none (folded, speedscope, pprof without time_nanos).
    #[arg(long, allow_hyphen_values = true)]
    time: Option<String>,
    /// At most this many files per write batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Start a new batch before one grows past this many bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    batch_bytes: usize,
    /// Skip files that cannot be read or converted (with a warning) instead of stopping.
    #[arg(long)]
    keep_going: bool,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = SummaryOutput::Text)]
    output: SummaryOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SummaryOutput {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueryOutput {
    /// go tool pprof -top style table.
    Top,
    /// Folded stacks, `root;...;leaf value` per line.
    Folded,
    /// Flame graph SVG.
    Svg,
    /// Gzipped pprof (binary; use -o FILE or a pipe).
    Pprof,
    /// The merge tree as JSON (see docs/cli.md).
    Json,
    /// Indented stack tree.
    Tree,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// `<profile type>{matchers}`, e.g. `process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{job="api"}`.
    selector: String,
    #[command(flatten)]
    time: TimeArgs,
    /// Output form.
    #[arg(long, value_enum, default_value_t = QueryOutput::Top)]
    output: QueryOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    /// Top: at most N rows (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Tree and SVG: fold nodes below this fraction of the total into "other" (0: keep all).
    #[arg(long, default_value_t = 0.0)]
    min_fraction: f64,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TableOutput {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct RangeArgs {
    /// `<profile type>{matchers}`.
    selector: String,
    #[command(flatten)]
    time: TimeArgs,
    /// Bucket width, e.g. 10s, 1m, 1h (default: the node picks about 100 buckets).
    #[arg(long)]
    step: Option<String>,
    /// Sum series that share these label values (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "LABEL,...")]
    sum_by: Vec<String>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiffOutput {
    Top,
    Tree,
    Json,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The baseline selection A.
    selector_a: String,
    /// The selection B compared against A.
    selector_b: String,
    /// Start of A's time range.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    from: String,
    /// End of A's time range.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
    /// Start of B's time range (default: same as A).
    #[arg(long, allow_hyphen_values = true)]
    b_from: Option<String>,
    /// End of B's time range (default: same as A).
    #[arg(long, allow_hyphen_values = true)]
    b_to: Option<String>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = DiffOutput::Top)]
    output: DiffOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    /// Top: at most N rows (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Tree: fold nodes below this fraction of the total into "other" (0: keep all).
    #[arg(long, default_value_t = 0.0)]
    min_fraction: f64,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Args)]
struct LabelsArgs {
    /// Only labels of series matching this selector.
    selector: Option<String>,
    #[command(flatten)]
    time: TimeArgs,
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Args)]
struct ValuesArgs {
    /// The label name.
    name: String,
    /// Only values among series matching this selector.
    selector: Option<String>,
    #[command(flatten)]
    time: TimeArgs,
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Args)]
struct SeriesArgs {
    /// Only series matching this selector.
    selector: Option<String>,
    #[command(flatten)]
    time: TimeArgs,
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    #[command(flatten)]
    partial: PartialArgs,
}

#[derive(Debug, Args)]
struct TypesArgs {
    #[command(flatten)]
    time: TimeArgs,
    /// Output form.
    #[arg(long, value_enum, default_value_t = TableOutput::Table)]
    output: TableOutput,
    #[command(flatten)]
    output_file: OutputFileArgs,
    #[command(flatten)]
    partial: PartialArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let client = KilnClient::connect_lazy(&cli.server, ConnectOptions::default())?;
    match cli.command {
        Command::Ingest(args) => {
            let routing = RoutingClient::new(&cli.server, ConnectOptions::default())?;
            run_ingest(&routing, args).await
        }
        Command::Cluster(ClusterCommand::Status(args)) => run_cluster_status(&client, args).await,
        Command::Cluster(ClusterCommand::RemoveNode(args)) => run_remove_node(&client, args).await,
        Command::Query(args) => run_query(&client, args).await,
        Command::Range(args) => run_range(&client, args).await,
        Command::Diff(args) => run_diff(&client, args).await,
        Command::Labels(args) => run_labels(&client, args).await,
        Command::Values(args) => run_values(&client, args).await,
        Command::Series(args) => run_series(&client, args).await,
        Command::Types(args) => run_types(&client, args).await,
    }
}

/// Writes `bytes` to `output_file`, or to stdout. A closed pipe on stdout (`kiln ... | head`) ends the
/// output quietly rather than as an error.
fn write_output(bytes: &[u8], output_file: Option<&Path>) -> Result<()> {
    if let Some(path) = output_file {
        return std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()));
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(bytes).and_then(|()| stdout.flush());
    match written {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(error).context("cannot write to stdout"),
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).context("cannot encode JSON")?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn warn_if_partial(coverage: Option<&proto::Coverage>) {
    if let Some(warning) = render::coverage_warning(coverage) {
        eprintln!("{warning}");
    }
}

fn check_min_fraction(min_fraction: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&min_fraction) {
        bail!("--min-fraction must be between 0 and 1, got {min_fraction}");
    }
    Ok(())
}

fn selection(selector: &str, range: TimeRange) -> proto::Selection {
    proto::Selection {
        selector: selector.to_string(),
        start_unix_ms: range.start_unix_ms,
        end_unix_ms: range.end_unix_ms,
    }
}

fn progress_bar(file_count: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let progress = ProgressBar::with_draw_target(Some(file_count as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files  {wide_msg}")
    {
        progress.set_style(style);
    }
    progress
}

async fn run_cluster_status(client: &KilnClient, args: ClusterStatusArgs) -> Result<()> {
    let status = client.cluster_status().await?;
    let bytes = match args.output {
        TableOutput::Json => json_bytes(&kiln_model::json::ClusterStatusResult::from(&status))?,
        TableOutput::Table => render::render_cluster_status(&status).into_bytes(),
    };
    write_output(&bytes, None)
}

async fn run_remove_node(client: &KilnClient, args: RemoveNodeArgs) -> Result<()> {
    let answer = client.remove_node(args.node_id).await?;
    eprintln!("node {} is {}", args.node_id, answer.state);
    if !args.wait || answer.state == "removed" {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + args.timeout;
    loop {
        let status = client.cluster_status().await?;
        let state = status
            .nodes
            .iter()
            .find(|node| node.id == args.node_id)
            .map(|node| node.state.clone())
            .unwrap_or_default();
        if state == "removed" {
            eprintln!("node {} is removed", args.node_id);
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "node {} is still {state} after {}",
                args.node_id,
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn send_batch(
    client: &RoutingClient,
    batch: Batch,
    summary: &mut IngestSummary,
    progress: &ProgressBar,
) -> Result<()> {
    let profile_count = batch.sources.len();
    progress.set_message(format!("sending a batch of {profile_count} profiles"));
    let sources = batch.describe_sources();
    match client.write(batch.request).await {
        Ok(response) => {
            summary.add_response(&response);
            Ok(())
        }
        Err(error) => {
            progress.abandon();
            if summary.batches > 0 {
                eprintln!("before the failure: {}", summary.describe());
            }
            // The node names a bad profile by its place in the request ("series 0 profile 1").
            Err(anyhow::Error::from(error).context(format!("the batch of {sources} was refused")))
        }
    }
}

async fn run_ingest(client: &RoutingClient, args: IngestArgs) -> Result<()> {
    let labels = args
        .labels
        .iter()
        .map(|argument| parse_label_argument(argument))
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    let default_time_unix_nanos = match &args.time {
        None => 0,
        Some(time) => parse_time(time, now_unix_ms())?
            .checked_mul(1_000_000)
            .with_context(|| format!("--time {time:?} is out of range"))?,
    };
    let files = expand_input_paths(&args.files)?;
    if files.is_empty() {
        bail!("no profile files found in the given paths");
    }
    let progress = progress_bar(files.len());
    let limits = BatchLimits {
        max_profiles: args.batch as usize,
        max_bytes: args.batch_bytes,
    };
    let mut batcher = Batcher::new(labels, limits);
    let mut summary = IngestSummary::default();
    for path in &files {
        progress.set_message(path.display().to_string());
        let loaded = match load_profile_file(path) {
            Ok(loaded) => loaded,
            Err(error) if args.keep_going => {
                progress.suspend(|| eprintln!("warning: skipping {:#}", anyhow::Error::from(error)));
                summary.skipped_files += 1;
                progress.inc(1);
                continue;
            }
            Err(error) => {
                progress.abandon();
                return Err(error.into());
            }
        };
        summary.files += 1;
        let raw_profile = proto::RawProfile {
            pprof: loaded.pprof,
            name: args.name.clone().unwrap_or_default(),
            default_time_unix_nanos,
            delta: None,
        };
        for batch in batcher.push(raw_profile, path.display().to_string()) {
            send_batch(client, batch, &mut summary, &progress).await?;
        }
        progress.inc(1);
    }
    if let Some(batch) = batcher.finish() {
        send_batch(client, batch, &mut summary, &progress).await?;
    }
    progress.finish_and_clear();
    if summary.files == 0 {
        bail!("none of the {} file(s) could be read", files.len());
    }
    let bytes = match args.output {
        SummaryOutput::Text => format!("{}\n", summary.describe()).into_bytes(),
        SummaryOutput::Json => json_bytes(&summary)?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

fn merge_result_name(result: Option<&proto::merge_response::Result>) -> &'static str {
    match result {
        None => "no result",
        Some(proto::merge_response::Result::Tree(_)) => "a tree",
        Some(proto::merge_response::Result::Top(_)) => "a top table",
        Some(proto::merge_response::Result::Pprof(_)) => "a pprof",
        Some(proto::merge_response::Result::Folded(_)) => "folded text",
        Some(proto::merge_response::Result::Svg(_)) => "an SVG",
    }
}

async fn run_query(client: &KilnClient, args: QueryArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    check_min_fraction(args.min_fraction)?;
    let output_file = args.output_file.output_file.as_deref();
    if args.output == QueryOutput::Pprof && output_file.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary pprof to the terminal; use -o FILE or redirect stdout");
    }
    let format = match args.output {
        QueryOutput::Top => proto::MergeFormat::Top,
        QueryOutput::Folded => proto::MergeFormat::Folded,
        QueryOutput::Svg => proto::MergeFormat::Svg,
        QueryOutput::Pprof => proto::MergeFormat::Pprof,
        QueryOutput::Json | QueryOutput::Tree => proto::MergeFormat::Tree,
    };
    let request = proto::MergeRequest {
        selection: Some(selection(&args.selector, range)),
        format: format as i32,
        options: args.partial.options(),
        min_node_fraction: args.min_fraction,
        top_limit: args.limit,
    };
    let response = client.merge(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let unexpected = |wanted: &str| {
        anyhow::anyhow!(
            "the node answered with {} instead of {wanted}",
            merge_result_name(response.result.as_ref())
        )
    };
    let bytes: Vec<u8> = match args.output {
        QueryOutput::Top => render::render_top(&response, Some(range)).into_bytes(),
        QueryOutput::Tree => render::render_tree(&response, Some(range)).into_bytes(),
        QueryOutput::Json => json_bytes(&json::MergeResult::from(&response))?,
        QueryOutput::Folded => match &response.result {
            Some(proto::merge_response::Result::Folded(text)) => text.clone().into_bytes(),
            None => Vec::new(),
            Some(_) => return Err(unexpected("folded text")),
        },
        QueryOutput::Svg => match &response.result {
            Some(proto::merge_response::Result::Svg(svg)) => svg.clone().into_bytes(),
            Some(_) | None => return Err(unexpected("an SVG")),
        },
        QueryOutput::Pprof => match &response.result {
            Some(proto::merge_response::Result::Pprof(bytes)) => bytes.clone(),
            Some(_) | None => return Err(unexpected("a pprof")),
        },
    };
    write_output(&bytes, output_file)
}

async fn run_range(client: &KilnClient, args: RangeArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    let step_ms = match &args.step {
        Some(step) => parse_duration_ms(step)?,
        None => 0,
    };
    let sum_by: Vec<String> = args
        .sum_by
        .iter()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    let request = proto::RangeRequest {
        selection: Some(selection(&args.selector, range)),
        step_ms,
        sum_by,
        options: args.partial.options(),
    };
    let response = client.range(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        TableOutput::Table => render::render_range_table(&response).into_bytes(),
        TableOutput::Json => json_bytes(&json::RangeResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

async fn run_diff(client: &KilnClient, args: DiffArgs) -> Result<()> {
    let now = now_unix_ms();
    check_min_fraction(args.min_fraction)?;
    let range_a = parse_time_range(&args.from, &args.to, now).context("time range of A")?;
    let b_from = args.b_from.as_deref().unwrap_or(&args.from);
    let b_to = args.b_to.as_deref().unwrap_or(&args.to);
    let range_b = parse_time_range(b_from, b_to, now).context("time range of B")?;
    let request = proto::DiffRequest {
        a: Some(selection(&args.selector_a, range_a)),
        b: Some(selection(&args.selector_b, range_b)),
        options: args.partial.options(),
        min_node_fraction: args.min_fraction,
        top_limit: args.limit,
    };
    let response = client.diff(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        DiffOutput::Top => render::render_diff_top(&response).into_bytes(),
        DiffOutput::Tree => render::render_diff_tree(&response).into_bytes(),
        DiffOutput::Json => json_bytes(&json::DiffResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

async fn run_labels(client: &KilnClient, args: LabelsArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    let request = proto::LabelsRequest {
        selection: Some(selection(args.selector.as_deref().unwrap_or_default(), range)),
        options: args.partial.options(),
    };
    let response = client.labels(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        TableOutput::Table => render::render_list(&response.names).into_bytes(),
        TableOutput::Json => json_bytes(&json::LabelsResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

async fn run_values(client: &KilnClient, args: ValuesArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    let request = proto::LabelValuesRequest {
        selection: Some(selection(args.selector.as_deref().unwrap_or_default(), range)),
        name: args.name.clone(),
        options: args.partial.options(),
    };
    let response = client.label_values(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        TableOutput::Table => render::render_list(&response.values).into_bytes(),
        TableOutput::Json => json_bytes(&json::LabelValuesResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

async fn run_series(client: &KilnClient, args: SeriesArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    let request = proto::SeriesRequest {
        selection: Some(selection(args.selector.as_deref().unwrap_or_default(), range)),
        options: args.partial.options(),
    };
    let response = client.series(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        TableOutput::Table => render::render_series_table(&response).into_bytes(),
        TableOutput::Json => json_bytes(&json::SeriesResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

async fn run_types(client: &KilnClient, args: TypesArgs) -> Result<()> {
    let range = args.time.parse(now_unix_ms())?;
    let request = proto::ProfileTypesRequest {
        start_unix_ms: range.start_unix_ms,
        end_unix_ms: range.end_unix_ms,
        options: args.partial.options(),
    };
    let response = client.profile_types(request).await?;
    warn_if_partial(response.coverage.as_ref());
    let bytes = match args.output {
        TableOutput::Table => render::render_types_table(&response).into_bytes(),
        TableOutput::Json => json_bytes(&json::ProfileTypesResult::from(&response))?,
    };
    write_output(&bytes, args.output_file.output_file.as_deref())
}

#[cfg(test)]
#[path = "fake_node.rs"]
mod fake_node;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

    /// Runs one `kiln` command line against `node` with `-o FILE` appended and returns FILE's content.
    async fn run_to_file(node: &fake_node::FakeNode, arguments: &[&str]) -> Result<Vec<u8>> {
        let directory = tempfile::tempdir()?;
        let output_path = directory.path().join("out");
        let server = format!("http://{}", node.address);
        let mut command_line = vec!["kiln", "--server", server.as_str()];
        command_line.extend_from_slice(arguments);
        let output_text = output_path.to_string_lossy().to_string();
        command_line.extend_from_slice(&["-o", output_text.as_str()]);
        run(Cli::try_parse_from(command_line)?).await?;
        Ok(std::fs::read(&output_path)?)
    }

    fn json_of(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[tokio::test]
    async fn query_outputs_reach_the_file_in_every_form() {
        let node = fake_node::FakeNode::start().await;
        let top = run_to_file(
            &node,
            &["query", "cpu{job=\"api\"}", "--from", "-15m", "--limit", "5"],
        )
        .await
        .unwrap();
        let top = String::from_utf8(top).unwrap();
        assert!(
            top.contains("Showing nodes accounting for 30ms, 100% of 30ms total"),
            "{top}"
        );
        assert!(
            top.contains("      20ms 66.67% 66.67%       20ms 66.67%  work"),
            "{top}"
        );
        {
            let state = node.state();
            let request = &state.merges[0];
            assert_eq!(request.format, proto::MergeFormat::Top as i32);
            assert_eq!(request.top_limit, 5);
            let selection = request.selection.as_ref().unwrap();
            assert_eq!(selection.selector, "cpu{job=\"api\"}");
            assert_eq!(selection.end_unix_ms - selection.start_unix_ms, 15 * 60_000);
        }
        let json = json_of(
            &run_to_file(&node, &["query", "cpu{}", "--output", "json"])
                .await
                .unwrap(),
        );
        assert_eq!(json["format"], "tree");
        assert_eq!(json["tree"]["nodes"][2]["self"], 20_000_000);
        let folded = run_to_file(&node, &["query", "cpu{}", "--output", "folded"])
            .await
            .unwrap();
        assert_eq!(folded, b"main 10000000\nmain;work 20000000\n");
        let svg = run_to_file(&node, &["query", "cpu{}", "--output", "svg"])
            .await
            .unwrap();
        assert!(svg.starts_with(b"<svg"));
        let pprof = run_to_file(&node, &["query", "cpu{}", "--output", "pprof"])
            .await
            .unwrap();
        assert_eq!(pprof, vec![0x1f, 0x8b, 1, 2, 3]);
        let tree = String::from_utf8(
            run_to_file(
                &node,
                &["query", "cpu{}", "--output", "tree", "--min-fraction", "0.01"],
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert!(tree.contains("      20ms 66.67%       20ms      work"), "{tree}");
        assert_eq!(node.state().merges.last().unwrap().min_node_fraction, 0.01);
    }

    #[tokio::test]
    async fn bad_input_fails_before_sending_or_with_the_server_message() {
        let node = fake_node::FakeNode::start().await;
        let error = run_to_file(&node, &["query", "cpu{}", "--from", "now", "--to", "-1h"])
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("is after to"), "{error:#}");
        let error = run_to_file(&node, &["query", "cpu{}", "--from", "yesterday"])
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("invalid time \"yesterday\""),
            "{error:#}"
        );
        let error = run_to_file(&node, &["query", "cpu{}", "--min-fraction", "2"])
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("--min-fraction"), "{error:#}");
        assert!(node.state().merges.is_empty());
        let error = run_to_file(&node, &["query", "bad{"]).await.unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "merge query: invalid selector at position 4: unexpected end (gRPC status InvalidArgument)"
        );
        let error = run_to_file(&node, &["ingest", "/nonexistent/profile.pb.gz"])
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot read /nonexistent/profile.pb.gz"),
            "{error:#}"
        );
        let error = run_to_file(&node, &["ingest", "x.pb", "--label", "novalue"])
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("name=value"), "{error:#}");
    }

    #[tokio::test]
    async fn ingest_sends_labelled_batches_and_retries_with_the_same_key() {
        let node = fake_node::FakeNode::start().await;
        node.state().write_failures_left = 1;
        let folded = format!("{TESTDATA}/folded/python-pyspy.folded");
        let speedscope = format!("{TESTDATA}/speedscope/python-pyspy.speedscope.json");
        let pprof_dir = format!("{TESTDATA}/pprof/go");
        let summary = run_to_file(
            &node,
            &[
                "ingest",
                &folded,
                &speedscope,
                &pprof_dir,
                "--label",
                "job=demo",
                "--label",
                "env=test",
                "--batch",
                "4",
                "--time",
                "1764096120000",
                "--output",
                "json",
            ],
        )
        .await
        .unwrap();
        let summary = json_of(&summary);
        let file_count = 2 + std::fs::read_dir(&pprof_dir)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".pb.gz")
            })
            .count() as u64;
        assert_eq!(summary["files"], file_count);
        assert_eq!(summary["profiles"], file_count);
        assert_eq!(summary["batches"], file_count.div_ceil(4));
        assert_eq!(summary["duplicateBatches"], 0);

        let state = node.state();
        assert_eq!(state.write_attempts.len() as u64, file_count.div_ceil(4) + 1);
        assert_eq!(
            state.write_attempts[0].idempotency_key,
            state.write_attempts[1].idempotency_key
        );
        assert_eq!(state.stored_keys.len() as u64, file_count.div_ceil(4));
        let first_series = &state.write_attempts[1].series[0];
        let labels: Vec<(&str, &str)> = first_series
            .labels
            .iter()
            .map(|label| (label.name.as_str(), label.value.as_str()))
            .collect();
        assert_eq!(labels, vec![("job", "demo"), ("env", "test")]);
        assert_eq!(
            first_series.profiles[0].default_time_unix_nanos,
            1_764_096_120_000_000_000
        );
        let original_cpu = std::fs::read(format!("{pprof_dir}/allocs.pb.gz")).unwrap();
        let sent: Vec<&Vec<u8>> = state
            .write_attempts
            .iter()
            .skip(1)
            .flat_map(|attempt| attempt.series[0].profiles.iter().map(|profile| &profile.pprof))
            .collect();
        assert!(
            sent.contains(&&original_cpu),
            "pprof files must be sent byte for byte"
        );
    }

    #[tokio::test]
    async fn range_diff_and_metadata_commands() {
        let node = fake_node::FakeNode::start().await;
        let range = json_of(
            &run_to_file(
                &node,
                &[
                    "range", "cpu{}", "--step", "1m", "--sum-by", "job", "--output", "json",
                ],
            )
            .await
            .unwrap(),
        );
        assert_eq!(range["stepMs"], 60_000);
        assert_eq!(range["series"][0]["labels"]["job"], "api");
        {
            let state = node.state();
            assert_eq!(state.ranges[0].step_ms, 60_000);
            assert_eq!(state.ranges[0].sum_by, vec!["job"]);
        }
        let table = String::from_utf8(run_to_file(&node, &["range", "cpu{}"]).await.unwrap()).unwrap();
        assert!(table.contains("{job=\"api\"}"), "{table}");

        let diff = String::from_utf8(
            run_to_file(
                &node,
                &[
                    "diff",
                    "cpu{v=\"1\"}",
                    "cpu{v=\"2\"}",
                    "--from",
                    "-2h",
                    "--to",
                    "-1h",
                ],
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert!(
            diff.contains("Total: A 15ms, B 30ms, change +15ms (+100.00%)"),
            "{diff}"
        );
        {
            let state = node.state();
            let request = &state.diffs[0];
            assert_eq!(request.a.as_ref().unwrap().selector, "cpu{v=\"1\"}");
            assert_eq!(request.b.as_ref().unwrap().selector, "cpu{v=\"2\"}");
            assert_eq!(
                request.a.as_ref().unwrap().start_unix_ms,
                request.b.as_ref().unwrap().start_unix_ms
            );
        }
        let diff_json = json_of(
            &run_to_file(&node, &["diff", "a{}", "b{}", "--output", "json"])
                .await
                .unwrap(),
        );
        assert_eq!(diff_json["totalA"], 15_000_000);
        assert_eq!(diff_json["top"]["rows"][1]["baselineFlat"], 5_000_000);

        let labels = run_to_file(&node, &["labels"]).await.unwrap();
        assert_eq!(labels, b"instance\njob\n");
        let values = json_of(
            &run_to_file(&node, &["values", "job", "cpu{}", "--output", "json"])
                .await
                .unwrap(),
        );
        assert_eq!(values["values"], serde_json::json!(["api", "db"]));
        let series = String::from_utf8(run_to_file(&node, &["series", "cpu{}"]).await.unwrap()).unwrap();
        assert!(series.contains("0123456789abcdef"), "{series}");
        let types = json_of(
            &run_to_file(&node, &["types", "--from", "-7d", "--output", "json"])
                .await
                .unwrap(),
        );
        assert_eq!(
            types["types"][0]["id"],
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta"
        );
        let state = node.state();
        let last = state.metadata_selections.last().unwrap().as_ref().unwrap();
        assert_eq!(last.end_unix_ms - last.start_unix_ms, 7 * 86_400_000);
    }

    #[tokio::test]
    async fn partial_flag_is_sent() {
        let node = fake_node::FakeNode::start().await;
        node.state().coverage = Some(proto::Coverage {
            groups_total: 3,
            missing: vec![proto::MissingGroup {
                group_id: 2,
                reason: "no quorum".into(),
            }],
        });
        let json = json_of(
            &run_to_file(&node, &["query", "cpu{}", "--partial", "--output", "json"])
                .await
                .unwrap(),
        );
        assert_eq!(json["coverage"]["missing"][0]["groupId"], 2);
        assert!(node.state().merges[0].options.as_ref().unwrap().allow_partial);
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn relative_times_parse_as_values_not_flags() {
        let cli = Cli::try_parse_from([
            "kiln", "query", "cpu{}", "--from", "-15m", "--to", "now", "--output", "json",
        ])
        .unwrap();
        let Command::Query(args) = cli.command else {
            panic!("not a query")
        };
        assert_eq!(args.time.from, "-15m");
        assert_eq!(args.output, QueryOutput::Json);

        let cli =
            Cli::try_parse_from(["kiln", "diff", "a{}", "b{}", "--b-from", "-2h", "--b-to", "-1h"]).unwrap();
        let Command::Diff(args) = cli.command else {
            panic!("not a diff")
        };
        assert_eq!(args.b_from.as_deref(), Some("-2h"));

        let cli = Cli::try_parse_from(["kiln", "range", "cpu{}", "--sum-by", "job,instance"]).unwrap();
        let Command::Range(args) = cli.command else {
            panic!("not a range")
        };
        assert_eq!(args.sum_by, vec!["job", "instance"]);
    }

    #[test]
    fn ingest_takes_repeated_labels() {
        let cli = Cli::try_parse_from([
            "kiln",
            "--server",
            "node:7070",
            "ingest",
            "a.pb.gz",
            "b.folded",
            "--label",
            "job=api",
            "-l",
            "env=dev",
            "--time",
            "-5m",
        ])
        .unwrap();
        assert_eq!(cli.server, "node:7070");
        let Command::Ingest(args) = cli.command else {
            panic!("not an ingest")
        };
        assert_eq!(args.labels, vec!["job=api", "env=dev"]);
        assert_eq!(args.files.len(), 2);
        assert_eq!(args.time.as_deref(), Some("-5m"));
    }
}
