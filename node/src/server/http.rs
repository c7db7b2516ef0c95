//! The HTTP JSON API (documented in `docs/http-api.md`), `/metrics`, `/healthz` and `/readyz`.
//! Handlers call the same engine methods as gRPC and answer with the JSON shapes of
//! `kiln_model::json`, so the API, the CLI's `--output json` and gRPC agree.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use kiln_model::json;
use kiln_model::time::{now_unix_ms, parse_duration_ms, parse_time};
use kiln_proto::kiln::v1 as api;
use serde::Deserialize;

use crate::error::NodeError;
use crate::storage::keys::GroupId;
use crate::NodeState;

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body =
            serde_json::json!({ "error": self.to_string(), "code": format!("{:?}", self.grpc_code()) });
        (status, Json(body)).into_response()
    }
}

/// The HTTP routes. `max_body_bytes` bounds ingest bodies (413 beyond).
pub fn router(state: Arc<NodeState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/ingest",
            post(ingest).layer(Extension(IngestBodyLimit(max_body_bytes))),
        )
        .route("/api/v1/query/merge", get(merge))
        .route("/api/v1/query/range", get(range))
        .route("/api/v1/query/diff", get(diff))
        .route("/api/v1/labels", get(labels))
        .route("/api/v1/labels/{name}/values", get(label_values))
        .route("/api/v1/series", get(series))
        .route("/api/v1/profile-types", get(profile_types))
        .route("/api/v1/status", get(super::status::status))
        .route("/api/v1/cluster/status", get(cluster_status))
        .merge(super::ui::router())
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Liveness: 200 `ok` unless a raft group of this node stopped while the node runs (openraft stops a
/// group whose storage failed). Such a group stays stopped until the node restarts, so this is the
/// answer that should get the node restarted; a group that is only between leaders does not fail it.
async fn healthz(State(state): State<Arc<NodeState>>) -> Response {
    let health = state.cluster.health();
    let problem = (!health.stopped_groups.is_empty()).then(|| stopped_groups_message(&health.stopped_groups));
    plain_answer(problem, "ok\n")
}

/// Readiness: 200 `ready` once every group this node holds a replica of runs and knows its leader,
/// so that writes and queries sent here can be served; 503 naming the groups otherwise, and while the
/// node shuts down.
async fn readyz(State(state): State<Arc<NodeState>>) -> Response {
    let health = state.cluster.health();
    let problem = if health.stopping {
        Some("not ready: the node is shutting down\n".to_string())
    } else if !health.stopped_groups.is_empty() {
        Some(stopped_groups_message(&health.stopped_groups))
    } else if !health.groups_without_leader.is_empty() {
        Some(format!(
            "not ready: no leader yet for {} (an election is under way)\n",
            group_list(&health.groups_without_leader)
        ))
    } else {
        None
    };
    plain_answer(problem, "ready\n")
}

/// 503 with `problem` as plain text, or 200 with `fine`.
fn plain_answer(problem: Option<String>, fine: &'static str) -> Response {
    match problem {
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
        None => (StatusCode::OK, fine).into_response(),
    }
}

fn stopped_groups_message(groups: &[GroupId]) -> String {
    format!(
        "unhealthy: the raft of {} stopped on this node after a storage failure (a full disk or an I/O \
         error; the node's log says which); restart the node once the cause is fixed\n",
        group_list(groups)
    )
}

/// `group 3` or `groups 1, 4, 7`.
fn group_list(groups: &[GroupId]) -> String {
    let ids: Vec<String> = groups.iter().map(|group| group.to_string()).collect();
    let noun = if ids.len() == 1 { "group" } else { "groups" };
    format!("{noun} {}", ids.join(", "))
}

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    state.metrics.disk_bytes.set(state.storage.disk_bytes() as i64);
    state.cluster.update_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

fn time_parameter(value: Option<&String>, default: &str, name: &str, now: i64) -> Result<i64, NodeError> {
    let text = value.map(String::as_str).unwrap_or(default);
    parse_time(text, now).map_err(|error| NodeError::InvalidArgument(format!("{name}: {error}")))
}

/// `selector`, `from` (default `-1h`), `to` (default `now`) of a query string.
fn selection(
    parameters: &HashMap<String, String>,
    selector_key: &str,
    prefix: &str,
) -> Result<api::Selection, NodeError> {
    let now = now_unix_ms();
    let from_key = format!("{prefix}from");
    let to_key = format!("{prefix}to");
    let from_value = parameters.get(&from_key).or_else(|| parameters.get("from"));
    let to_value = parameters.get(&to_key).or_else(|| parameters.get("to"));
    let start_unix_ms = time_parameter(from_value, "-1h", &from_key, now)?;
    let end_unix_ms = time_parameter(to_value, "now", &to_key, now)?;
    if start_unix_ms > end_unix_ms {
        return Err(NodeError::InvalidArgument(format!(
            "invalid time range: {from_key} ({start_unix_ms}) is after {to_key} ({end_unix_ms})"
        )));
    }
    Ok(api::Selection {
        selector: parameters.get(selector_key).cloned().unwrap_or_default(),
        start_unix_ms,
        end_unix_ms,
    })
}

fn number<T: std::str::FromStr>(
    parameters: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, NodeError> {
    parameters
        .get(key)
        .map(|text| {
            text.parse::<T>()
                .map_err(|_| NodeError::InvalidArgument(format!("{key}: not a number: {text:?}")))
        })
        .transpose()
}

fn options(parameters: &HashMap<String, String>) -> Option<api::QueryOptions> {
    Some(api::QueryOptions {
        allow_partial: parameters
            .get("partial")
            .is_some_and(|value| value == "true" || value == "1"),
    })
}

/// The named ingest parameters; labels come as `label.NAME=VALUE` pairs.
#[derive(Debug, Deserialize)]
struct IngestParameters {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

/// `POST /api/v1/ingest?label.NAME=VALUE&name=&idempotency_key=&time=` with a pprof
/// body (gzipped or not).
async fn ingest(
    State(state): State<Arc<NodeState>>,
    Extension(IngestBodyLimit(limit)): Extension<IngestBodyLimit>,
    Query(parameters): Query<IngestParameters>,
    Query(all): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<json::WriteResult>, NodeError> {
    let body = read_bounded_body(&headers, body, limit).await?;
    let labels: Vec<api::Label> = all
        .iter()
        .filter_map(|(key, value)| {
            key.strip_prefix("label.").map(|name| api::Label {
                name: name.to_string(),
                value: value.clone(),
            })
        })
        .collect();
    let default_time_unix_nanos = match &parameters.time {
        None => 0,
        Some(text) => parse_time(text, now_unix_ms())
            .map_err(|error| NodeError::InvalidArgument(format!("time: {error}")))?
            .saturating_mul(1_000_000),
    };
    let idempotency_key = parameters.idempotency_key.unwrap_or_else(|| {
        // Without a key the body's hash identifies the batch, so a blind retry of
        // the same bytes and labels is still stored once.
        // Hashed in place: the body may be tens of megabytes.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&body);
        for label in &labels {
            for part in [label.name.as_bytes(), label.value.as_bytes()] {
                hasher.update(part);
                hasher.update(&[0]);
            }
        }
        format!("http-{:032x}", hasher.digest128())
    });
    let request = api::WriteRequest {
        idempotency_key,
        series: vec![api::SeriesWrite {
            labels,
            profiles: vec![api::RawProfile {
                pprof: body,
                name: parameters.name.unwrap_or_default(),
                default_time_unix_nanos,
                delta: None,
            }],
        }],
    };
    let response = super::grpc::write(&state, request).await?;
    Ok(Json(json::WriteResult::from(&response)))
}

/// The largest ingest body accepted, bytes (`--max-message-bytes`).
#[derive(Clone, Copy)]
struct IngestBodyLimit(usize);

/// How long, and how many bytes beyond the limit, an over-limit upload is read and discarded before
/// its 413 is sent.
const OVER_LIMIT_DRAIN_TIME: Duration = Duration::from_secs(5);
const OVER_LIMIT_DRAIN_BYTES: u64 = 256 << 20;

/// Reads a request body of at most `limit` bytes; a larger one is `TooLarge` (413).
///
/// Guarantees the client can read that 413 in the common cases, where answering as soon as the limit
/// is passed would not: a server that closes a connection with unread request bytes makes the kernel
/// reset it, and the reset can destroy the answer before the client reads it. So:
/// - a body declared too large (`Content-Length`) by a client waiting for `100 Continue` (curl does
///   for large bodies) is refused without reading it: the client never sends it;
/// - a client already sending has what it sends read and discarded, for at most
///   [`OVER_LIMIT_DRAIN_TIME`] and [`OVER_LIMIT_DRAIN_BYTES`] past the limit, before the answer (what
///   web servers call a lingering close). Beyond those bounds the reset is the client's answer.
async fn read_bounded_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, NodeError> {
    let declared_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let too_large = |declared_bytes: Option<u64>| {
        let size = declared_bytes
            .map(|bytes| format!("{bytes} bytes, "))
            .unwrap_or_default();
        NodeError::TooLarge(format!(
            "the request body is {size}over this node's limit of {limit} bytes (--max-message-bytes)"
        ))
    };
    let mut stream = body.into_data_stream();
    if let Some(declared_bytes) = declared_bytes.filter(|bytes| *bytes > limit as u64) {
        let waits_for_continue = headers
            .get(header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_for_continue {
            drain_over_limit_body(&mut stream).await;
        }
        return Err(too_large(Some(declared_bytes)));
    }
    let mut collected = Vec::with_capacity(declared_bytes.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            NodeError::InvalidArgument(format!("the request body could not be read: {error}"))
        })?;
        if collected.len() + chunk.len() > limit {
            drain_over_limit_body(&mut stream).await;
            return Err(too_large(None));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected)
}

/// Reads and discards the rest of `stream`, within the drain bounds.
async fn drain_over_limit_body(stream: &mut axum::body::BodyDataStream) {
    let drain = async {
        let mut drained_bytes = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            drained_bytes += chunk.len() as u64;
            if drained_bytes > OVER_LIMIT_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(OVER_LIMIT_DRAIN_TIME, drain).await;
}

/// `GET /api/v1/cluster/status`: nodes, groups, replicas and leaders, as probed
/// from this node now.
async fn cluster_status(State(state): State<Arc<NodeState>>) -> Json<json::ClusterStatusResult> {
    let status = state.cluster.status().await;
    Json(json::ClusterStatusResult::from(&status))
}

async fn merge(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Response, NodeError> {
    let format = match parameters.get("format").map(String::as_str).unwrap_or("tree") {
        "tree" => api::MergeFormat::Tree,
        "top" => api::MergeFormat::Top,
        "pprof" => api::MergeFormat::Pprof,
        "folded" => api::MergeFormat::Folded,
        "svg" => api::MergeFormat::Svg,
        other => {
            return Err(NodeError::InvalidArgument(format!(
                "format: unknown {other:?}; use tree, top, pprof, folded or svg"
            )))
        }
    };
    let request = api::MergeRequest {
        selection: Some(selection(&parameters, "selector", "")?),
        format: format as i32,
        options: options(&parameters),
        min_node_fraction: number(&parameters, "min_fraction")?.unwrap_or(0.0),
        top_limit: number(&parameters, "limit")?.unwrap_or(0),
    };
    let response = state.cluster.merge(request).await?;
    Ok(match response.result {
        Some(api::merge_response::Result::Pprof(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile.pb.gz\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Some(api::merge_response::Result::Svg(svg)) => {
            ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
        }
        Some(api::merge_response::Result::Folded(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        _ => Json(json::MergeResult::from(&response)).into_response(),
    })
}

async fn range(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::RangeResult>, NodeError> {
    let step_ms = match parameters.get("step") {
        None => 0,
        Some(text) => {
            parse_duration_ms(text).map_err(|error| NodeError::InvalidArgument(format!("step: {error}")))?
        }
    };
    let sum_by = parameters
        .get("sum_by")
        .map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let request = api::RangeRequest {
        selection: Some(selection(&parameters, "selector", "")?),
        step_ms,
        sum_by,
        options: options(&parameters),
    };
    let response = state.cluster.range(request).await?;
    Ok(Json(json::RangeResult::from(&response)))
}

async fn diff(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::DiffResult>, NodeError> {
    let request = api::DiffRequest {
        a: Some(selection(&parameters, "a", "a_")?),
        b: Some(selection(&parameters, "b", "b_")?),
        options: options(&parameters),
        min_node_fraction: number(&parameters, "min_fraction")?.unwrap_or(0.0),
        top_limit: number(&parameters, "limit")?.unwrap_or(0),
    };
    let response = state.cluster.diff(request).await?;
    Ok(Json(json::DiffResult::from(&response)))
}

/// Label queries take an optional selector and an optional `from`.
fn optional_selection(parameters: &HashMap<String, String>) -> Result<Option<api::Selection>, NodeError> {
    if !parameters.contains_key("selector") && !parameters.contains_key("from") {
        return Ok(None);
    }
    let now = now_unix_ms();
    let start_unix_ms = match parameters.get("from") {
        None => 0,
        Some(_) => time_parameter(parameters.get("from"), "0", "from", now)?,
    };
    Ok(Some(api::Selection {
        selector: parameters.get("selector").cloned().unwrap_or_default(),
        start_unix_ms,
        end_unix_ms: time_parameter(parameters.get("to"), "now", "to", now)?,
    }))
}

async fn labels(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::LabelsResult>, NodeError> {
    let request = api::LabelsRequest {
        selection: optional_selection(&parameters)?,
        options: options(&parameters),
    };
    let response = state.cluster.labels(request).await?;
    Ok(Json(json::LabelsResult::from(&response)))
}

async fn label_values(
    State(state): State<Arc<NodeState>>,
    Path(name): Path<String>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::LabelValuesResult>, NodeError> {
    let request = api::LabelValuesRequest {
        selection: optional_selection(&parameters)?,
        name,
        options: options(&parameters),
    };
    let response = state.cluster.label_values(request).await?;
    Ok(Json(json::LabelValuesResult::from(&response)))
}

async fn series(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::SeriesResult>, NodeError> {
    let request = api::SeriesRequest {
        selection: optional_selection(&parameters)?,
        options: options(&parameters),
    };
    let response = state.cluster.series(request).await?;
    Ok(Json(json::SeriesResult::from(&response)))
}

async fn profile_types(
    State(state): State<Arc<NodeState>>,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Json<json::ProfileTypesResult>, NodeError> {
    let start_unix_ms = match parameters.get("from") {
        None => 0,
        Some(_) => time_parameter(parameters.get("from"), "0", "from", now_unix_ms())?,
    };
    let request = api::ProfileTypesRequest {
        start_unix_ms,
        end_unix_ms: 0,
        options: options(&parameters),
    };
    let response = state.cluster.profile_types(request).await?;
    Ok(Json(json::ProfileTypesResult::from(&response)))
}

/// Fallback for unknown paths.
pub async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such endpoint" })),
    )
}
