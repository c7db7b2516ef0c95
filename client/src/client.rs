//! [`KilnClient`]: a gRPC client for one Kiln node.
//!
//! Writes are retried on transient failures (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, and `RESOURCE_EXHAUSTED`,
//! which is how a node pushes back under load) with exponential backoff and jitter. A retried write
//! carries the same idempotency key as the first attempt, so the node stores it at most once. Queries,
//! which change nothing, are retried the same way with a shorter policy.

use std::future::Future;
use std::time::Duration;

use kiln_proto::kiln::v1 as proto;
use kiln_proto::kiln::v1::cluster_service_client::ClusterServiceClient;
use kiln_proto::kiln::v1::ingest_service_client::IngestServiceClient;
use kiln_proto::kiln::v1::query_service_client::QueryServiceClient;
use rand::Rng;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// Response compressions the client accepts, most preferred first (the server
/// picks the first it supports). zstd first: the node compresses every response in
/// the client's preferred encoding, and with gzip first, compressing a merged tree
/// took about a quarter of the node's CPU during merges (BENCHMARKS.md, "Cluster").
pub const RESPONSE_ENCODINGS: [CompressionEncoding; 2] =
    [CompressionEncoding::Zstd, CompressionEncoding::Gzip];

/// The address the CLI talks to when neither `--server` nor `KILN_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The largest gRPC message the client sends or accepts (a merged pprof or SVG can be large).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Makes a fresh idempotency key: 128 random bits as 32 lowercase hex digits. Two calls return the same
/// key with probability 2^-128, i.e. never.
pub fn new_idempotency_key() -> String {
    let random_bits: u128 = rand::rng().random();
    format!("{random_bits:032x}")
}

/// How a call is retried: up to `max_attempts` attempts in all; before attempt `n + 1` the client sleeps
/// a random time between half and all of `initial_backoff * multiplier^(n - 1)`, capped at `max_backoff`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry. 0 is treated as 1.
    pub max_attempts: u32,
    /// The backoff before the first retry.
    pub initial_backoff: Duration,
    /// The backoff never grows past this.
    pub max_backoff: Duration,
    /// Growth factor of the backoff per retry (values below 1 are treated as 1).
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The policy for writes: 8 attempts, 100 ms doubling up to 5 s (about 15 s of patience in all).
    pub fn for_writes() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }

    /// The policy for queries: 3 attempts, 100 ms doubling (fails fast when the node is down).
    pub fn for_queries() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }

    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::for_queries()
        }
    }

    /// The backoff ceiling before retry number `retry_number` (1 for the first retry), without jitter.
    pub fn backoff_ceiling(&self, retry_number: u32) -> Duration {
        let exponent = i32::try_from(retry_number.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let ceiling_secs = self.initial_backoff.as_secs_f64() * factor;
        let max_secs = self.max_backoff.as_secs_f64();
        if !ceiling_secs.is_finite() || ceiling_secs >= max_secs {
            return self.max_backoff;
        }
        Duration::from_secs_f64(ceiling_secs)
    }

    /// The jittered sleep before retry number `retry_number`: uniform in `[ceiling / 2, ceiling]`.
    pub fn backoff_with_jitter(&self, retry_number: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry_number);
        let half = ceiling / 2;
        let jitter_range_nanos = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter_nanos = rand::rng().random_range(0..=jitter_range_nanos);
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// True for the gRPC codes a call is retried on: the node (or the path to it) is temporarily unable to
/// answer, and the same request may succeed later.
pub fn is_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
    )
}

/// True when the node refused the request for a while rather than for a moment (it says so with
/// [`kiln_proto::REFUSED_FOR_NOW_METADATA`]; a group with a node short of disk space does): retrying
/// at once cannot help, so the client answers at the first refusal.
pub fn is_refused_for_now(status: &tonic::Status) -> bool {
    status
        .metadata()
        .contains_key(kiln_proto::REFUSED_FOR_NOW_METADATA)
}

/// How a [`KilnClient`] connects and how patient it is.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit for establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Limit for one attempt of a write; an attempt that takes longer fails with `DEADLINE_EXCEEDED`
    /// (and is retried).
    pub write_timeout: Duration,
    /// Limit for one attempt of a query.
    pub query_timeout: Duration,
    /// Retries of writes.
    pub write_retry: RetryPolicy,
    /// Retries of queries.
    pub query_retry: RetryPolicy,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(60),
            query_timeout: Duration::from_secs(120),
            write_retry: RetryPolicy::for_writes(),
            query_retry: RetryPolicy::for_queries(),
        }
    }
}

/// Turns `host:port` or `http://host:port` into the `http://host:port` URI the client dials. Kiln nodes
/// speak plaintext HTTP/2, so `https://` is refused with a clear error rather than failing later.
pub fn normalize_server_address(address: &str) -> Result<String, ClientError> {
    let trimmed = address.trim();
    let invalid = |reason: &str| ClientError::InvalidServerAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.starts_with("https://") {
        return Err(invalid(
            "TLS is not supported; Kiln nodes serve plaintext HTTP/2, use http://",
        ));
    }
    let authority = match trimmed.strip_prefix("http://") {
        Some(rest) => rest,
        None if trimmed.contains("://") => return Err(invalid("only http:// addresses are supported")),
        None => trimmed,
    };
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    let uri = format!("http://{authority}");
    let parsed: http_uri::Uri = uri
        .parse()
        .map_err(|error: http_uri::uri::InvalidUri| invalid(&error.to_string()))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if parsed
        .path_and_query()
        .is_some_and(|path| path.as_str() != "/" && !path.as_str().is_empty())
    {
        return Err(invalid("a path is not allowed; give only host:port"));
    }
    Ok(uri)
}

/// A client for one Kiln node (ingest and query services on one port). Cheap to clone: clones share the
/// HTTP/2 connection. Every method takes `&self` and may be called concurrently.
#[derive(Debug, Clone)]
pub struct KilnClient {
    address: String,
    ingest: IngestServiceClient<Channel>,
    query: QueryServiceClient<Channel>,
    cluster: ClusterServiceClient<Channel>,
    options: ConnectOptions,
}

// The `http` crate is re-exported by tonic; naming it here avoids a direct dependency.
use tonic::codegen::http as http_uri;

impl KilnClient {
    /// Connects now, with default options; fails with [`ClientError::Connect`] when the node cannot be
    /// reached, so that a wrong address is reported before any work is done.
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        Self::connect_with(address, ConnectOptions::default()).await
    }

    /// Connects now, with the given options.
    pub async fn connect_with(address: &str, options: ConnectOptions) -> Result<Self, ClientError> {
        let (uri, endpoint) = Self::endpoint(address, &options)?;
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
            address: uri.clone(),
            source,
        })?;
        Ok(Self::from_channel(uri, channel, options))
    }

    /// Prepares a client without connecting: the connection is made on the first call and remade after
    /// failures, and an unreachable node shows up as a retryable `UNAVAILABLE` on each call. Fails only for
    /// a malformed address.
    pub fn connect_lazy(address: &str, options: ConnectOptions) -> Result<Self, ClientError> {
        let (uri, endpoint) = Self::endpoint(address, &options)?;
        let channel = endpoint.connect_lazy();
        Ok(Self::from_channel(uri, channel, options))
    }

    fn endpoint(address: &str, options: &ConnectOptions) -> Result<(String, Endpoint), ClientError> {
        let uri = normalize_server_address(address)?;
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|error| ClientError::InvalidServerAddress {
                address: address.to_string(),
                reason: error.to_string(),
            })?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        Ok((uri, endpoint))
    }

    fn from_channel(address: String, channel: Channel, options: ConnectOptions) -> Self {
        let mut ingest = IngestServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cluster = ClusterServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut query = QueryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        for encoding in RESPONSE_ENCODINGS {
            ingest = ingest.accept_compressed(encoding);
            query = query.accept_compressed(encoding);
        }
        KilnClient {
            address,
            ingest,
            query,
            cluster,
            options,
        }
    }

    /// The normalised `http://host:port` address this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one batch. Fills in a fresh idempotency key when the request has none; every retry sends the
    /// very same request, key included, so the batch is stored at most once even when an acknowledgement
    /// was lost. Returns the node's acknowledgement (`duplicate = true` when an earlier attempt, or an
    /// earlier run, had already stored this key).
    pub async fn write(&self, mut request: proto::WriteRequest) -> Result<proto::WriteResponse, ClientError> {
        if request.idempotency_key.is_empty() {
            request.idempotency_key = new_idempotency_key();
        }
        if request.series.iter().all(|series| series.profiles.is_empty()) {
            return Err(ClientError::InvalidRequest(
                "a write needs at least one profile".to_string(),
            ));
        }
        let client = self.ingest.clone();
        call_with_retry(
            "write",
            &self.address,
            &self.options.write_retry,
            self.options.write_timeout,
            request,
            |request| {
                let mut client = client.clone();
                async move { client.write(request).await }
            },
        )
        .await
    }

    /// The cluster's nodes, groups, replicas, leaders and log positions, as probed by this node.
    pub async fn cluster_status(&self) -> Result<proto::ClusterStatus, ClientError> {
        let client = self.cluster.clone();
        self.query_call("cluster status", proto::ClusterStatusRequest {}, move |request| {
            let mut client = client.clone();
            async move { client.status(request).await }
        })
        .await
    }

    /// The routing table: slot -> group and group -> leader address.
    pub async fn routing_table(&self) -> Result<proto::RoutingTable, ClientError> {
        let client = self.cluster.clone();
        self.query_call("routing table", proto::RoutingRequest {}, move |request| {
            let mut client = client.clone();
            async move { client.routing(request).await }
        })
        .await
    }

    /// Asks the cluster to move every replica off `node_id` and then remove it.
    pub async fn remove_node(&self, node_id: u64) -> Result<proto::RemoveNodeResponse, ClientError> {
        let client = self.cluster.clone();
        call_with_retry(
            "remove node",
            &self.address,
            &self.options.write_retry,
            self.options.write_timeout,
            proto::RemoveNodeRequest { node_id },
            move |request| {
                let mut client = client.clone();
                async move { client.remove_node(request).await }
            },
        )
        .await
    }

    /// Runs a merge query (tree, top, pprof, folded or SVG, as `request.format` says).
    pub async fn merge(&self, request: proto::MergeRequest) -> Result<proto::MergeResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("merge query", request, move |request| {
            let mut client = client.clone();
            async move { client.merge(request).await }
        })
        .await
    }

    /// Runs a range query (value per step per series).
    pub async fn range(&self, request: proto::RangeRequest) -> Result<proto::RangeResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("range query", request, move |request| {
            let mut client = client.clone();
            async move { client.range(request).await }
        })
        .await
    }

    /// Runs a diff query (selection B against baseline A).
    pub async fn diff(&self, request: proto::DiffRequest) -> Result<proto::DiffResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("diff query", request, move |request| {
            let mut client = client.clone();
            async move { client.diff(request).await }
        })
        .await
    }

    /// Lists label names.
    pub async fn labels(&self, request: proto::LabelsRequest) -> Result<proto::LabelsResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("labels query", request, move |request| {
            let mut client = client.clone();
            async move { client.labels(request).await }
        })
        .await
    }

    /// Lists the values of one label.
    pub async fn label_values(
        &self,
        request: proto::LabelValuesRequest,
    ) -> Result<proto::LabelValuesResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("label values query", request, move |request| {
            let mut client = client.clone();
            async move { client.label_values(request).await }
        })
        .await
    }

    /// Lists series.
    pub async fn series(&self, request: proto::SeriesRequest) -> Result<proto::SeriesResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("series query", request, move |request| {
            let mut client = client.clone();
            async move { client.series(request).await }
        })
        .await
    }

    /// Lists the profile types that have data in a time range.
    pub async fn profile_types(
        &self,
        request: proto::ProfileTypesRequest,
    ) -> Result<proto::ProfileTypesResponse, ClientError> {
        let client = self.query.clone();
        self.query_call("profile types query", request, move |request| {
            let mut client = client.clone();
            async move { client.profile_types(request).await }
        })
        .await
    }

    async fn query_call<Req, Resp, Call, CallFuture>(
        &self,
        operation: &'static str,
        request: Req,
        call: Call,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        Call: FnMut(tonic::Request<Req>) -> CallFuture,
        CallFuture: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        call_with_retry(
            operation,
            &self.address,
            &self.options.query_retry,
            self.options.query_timeout,
            request,
            call,
        )
        .await
    }
}

/// Calls `call` until it succeeds, fails with a non-retryable code, or `policy` runs out of attempts.
/// Each attempt gets the same request and is cut off after `attempt_timeout` with `DEADLINE_EXCEEDED`.
async fn call_with_retry<Req, Resp, Call, CallFuture>(
    operation: &'static str,
    server: &str,
    policy: &RetryPolicy,
    attempt_timeout: Duration,
    request: Req,
    mut call: Call,
) -> Result<Resp, ClientError>
where
    Req: Clone,
    Call: FnMut(tonic::Request<Req>) -> CallFuture,
    CallFuture: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt: u32 = 1;
    loop {
        let outcome =
            match tokio::time::timeout(attempt_timeout, call(tonic::Request::new(request.clone()))).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {}",
                    humantime::format_duration(attempt_timeout)
                ))),
            };
        let status = match outcome {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        if !is_retryable(status.code()) || is_refused_for_now(&status) || attempt >= max_attempts {
            return Err(ClientError::Rpc {
                operation,
                server: server.to_string(),
                attempts: attempt,
                status,
            });
        }
        tokio::time::sleep(policy.backoff_with_jitter(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn idempotency_keys_are_32_hex_digits_and_distinct() {
        let first = new_idempotency_key();
        let second = new_idempotency_key();
        assert_eq!(first.len(), 32);
        assert!(first
            .bytes()
            .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase()));
        assert_ne!(first, second);
    }

    #[test]
    fn server_addresses_are_normalised() {
        assert_eq!(
            normalize_server_address("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            normalize_server_address("http://localhost:7070/").unwrap(),
            "http://localhost:7070"
        );
        assert_eq!(
            normalize_server_address(" node-1:7070 ").unwrap(),
            "http://node-1:7070"
        );
        assert_eq!(
            normalize_server_address("[::1]:7070").unwrap(),
            "http://[::1]:7070"
        );
        for bad in [
            "",
            "https://a:7070",
            "ftp://a:1",
            "http://",
            "a b:7070",
            "http://a:1/api",
        ] {
            assert!(normalize_server_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let policy = RetryPolicy::for_writes();
        assert_eq!(policy.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.backoff_ceiling(4), Duration::from_millis(800));
        assert_eq!(policy.backoff_ceiling(10), Duration::from_secs(5));
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(5));
        for retry_number in 1..12 {
            let ceiling = policy.backoff_ceiling(retry_number);
            let sleep = policy.backoff_with_jitter(retry_number);
            assert!(
                sleep >= ceiling / 2 && sleep <= ceiling,
                "{sleep:?} outside [{ceiling:?}/2, {ceiling:?}]"
            );
        }
    }

    fn fast_policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            multiplier: 2.0,
        }
    }

    #[tokio::test]
    async fn retries_unavailable_with_the_same_request_then_succeeds() {
        let attempts = Arc::new(AtomicU32::new(0));
        let seen_keys = Arc::new(std::sync::Mutex::new(Vec::new()));
        let request = proto::WriteRequest {
            idempotency_key: "k1".into(),
            series: vec![],
        };
        let result = call_with_retry(
            "write",
            "",
            &fast_policy(5),
            Duration::from_secs(5),
            request,
            |request| {
                let attempts = attempts.clone();
                let seen_keys = seen_keys.clone();
                async move {
                    if let Ok(mut keys) = seen_keys.lock() {
                        keys.push(request.get_ref().idempotency_key.clone());
                    }
                    if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(tonic::Status::unavailable("node restarting"));
                    }
                    Ok(tonic::Response::new(proto::WriteResponse {
                        profiles: 1,
                        ..Default::default()
                    }))
                }
            },
        )
        .await;
        assert_eq!(result.unwrap().profiles, 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(*seen_keys.lock().unwrap(), vec!["k1", "k1", "k1"]);
    }

    /// Runs a write under a 5-attempt policy against a node that answers every attempt with
    /// `status`; returns how many attempts were made and the error.
    async fn attempts_against(status: tonic::Status) -> (u32, ClientError) {
        let attempts = Arc::new(AtomicU32::new(0));
        let result: Result<proto::WriteResponse, _> = call_with_retry(
            "write",
            "",
            &fast_policy(5),
            Duration::from_secs(5),
            (),
            |_request| {
                let attempts = attempts.clone();
                let status = status.clone();
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    Err(status)
                }
            },
        )
        .await;
        (attempts.load(Ordering::SeqCst), result.unwrap_err())
    }

    #[tokio::test]
    async fn does_not_retry_invalid_argument() {
        let (attempts, error) =
            attempts_against(tonic::Status::invalid_argument("bad label name \"1x\"")).await;
        assert_eq!(attempts, 1);
        assert_eq!(error.grpc_code(), Some(tonic::Code::InvalidArgument));
        assert!(error.to_string().contains("bad label name"), "{error}");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_turns_slow_attempts_into_deadline_exceeded() {
        let attempts = Arc::new(AtomicU32::new(0));
        let result: Result<proto::WriteResponse, _> = call_with_retry(
            "write",
            "",
            &fast_policy(3),
            Duration::from_millis(20),
            (),
            |_request| {
                let attempts = attempts.clone();
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(tonic::Response::new(proto::WriteResponse::default()))
                }
            },
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(error.grpc_code(), Some(tonic::Code::DeadlineExceeded));
        assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
    }

    /// Regression: a leader short of disk space refuses writes with `UNAVAILABLE`, and the client
    /// retried it 8 times (about 18 s for `kiln ingest`) although the answer could not change.
    #[tokio::test]
    async fn a_refusal_for_now_is_not_retried() {
        let mut status = tonic::Status::unavailable("node 1's data directory has 1 GiB free");
        status.metadata_mut().insert(
            kiln_proto::REFUSED_FOR_NOW_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let (attempts, error) = attempts_against(status).await;
        assert_eq!(attempts, 1);
        assert!(error.is_refused_for_now());
        assert_eq!(error.grpc_code(), Some(tonic::Code::Unavailable));
        assert!(!error.to_string().contains("gave up after"), "{error}");
    }

    #[tokio::test]
    async fn unreachable_node_fails_with_unavailable() {
        // Port 9 on loopback: nothing listens there, so the connection is refused at once.
        let options = ConnectOptions {
            query_retry: fast_policy(2),
            connect_timeout: Duration::from_secs(2),
            ..ConnectOptions::default()
        };
        let client = KilnClient::connect_lazy("127.0.0.1:9", options).unwrap();
        let error = client.labels(proto::LabelsRequest::default()).await.unwrap_err();
        assert_eq!(error.grpc_code(), Some(tonic::Code::Unavailable), "{error}");
        let text = error.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(
            text.contains("is a Kiln node listening at http://127.0.0.1:9?"),
            "{text}"
        );
        let text = error.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(
            text.contains("is a Kiln node listening at http://127.0.0.1:9?"),
            "{text}"
        );
        assert!(KilnClient::connect("127.0.0.1:9").await.is_err());
    }

    fn fast_options() -> ConnectOptions {
        ConnectOptions {
            write_retry: fast_policy(5),
            query_retry: fast_policy(2),
            ..ConnectOptions::default()
        }
    }

    fn one_profile_write(key: &str) -> proto::WriteRequest {
        proto::WriteRequest {
            idempotency_key: key.to_string(),
            series: vec![proto::SeriesWrite {
                labels: vec![proto::Label {
                    name: "job".into(),
                    value: "api".into(),
                }],
                profiles: vec![proto::RawProfile {
                    pprof: vec![1, 2, 3],
                    ..Default::default()
                }],
            }],
        }
    }

    #[tokio::test]
    async fn write_retries_against_a_real_server_reuse_one_fresh_key() {
        let node = crate::fake_node::FakeNode::start().await;
        node.state().write_failures_left = 2;
        let client = KilnClient::connect_with(&node.address.to_string(), fast_options())
            .await
            .unwrap();
        let response = client.write(one_profile_write("")).await.unwrap();
        assert!(!response.duplicate);
        assert_eq!(response.profiles, 1);
        let state = node.state();
        let keys: Vec<&str> = state
            .write_attempts
            .iter()
            .map(|attempt| attempt.idempotency_key.as_str())
            .collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].len(), 32);
        assert!(keys.iter().all(|key| *key == keys[0]), "{keys:?}");
        assert_eq!(state.stored_keys.len(), 1);
    }

    #[tokio::test]
    async fn a_resent_batch_is_acknowledged_as_duplicate() {
        let node = crate::fake_node::FakeNode::start().await;
        let client = KilnClient::connect_with(&node.address.to_string(), fast_options())
            .await
            .unwrap();
        assert!(!client.write(one_profile_write("same")).await.unwrap().duplicate);
        assert!(client.write(one_profile_write("same")).await.unwrap().duplicate);
        assert_eq!(node.state().stored_keys.len(), 1);
    }

    #[tokio::test]
    async fn query_errors_carry_the_server_message() {
        let node = crate::fake_node::FakeNode::start().await;
        let client = KilnClient::connect_with(&format!("http://{}", node.address), fast_options())
            .await
            .unwrap();
        let request = proto::MergeRequest {
            selection: Some(proto::Selection {
                selector: "bad{".into(),
                start_unix_ms: 0,
                end_unix_ms: 1,
            }),
            ..Default::default()
        };
        let error = client.merge(request).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "merge query: invalid selector at position 4: unexpected end (gRPC status InvalidArgument)"
        );
        let ok = client
            .merge(proto::MergeRequest {
                selection: Some(proto::Selection {
                    selector: "cpu{}".into(),
                    start_unix_ms: 0,
                    end_unix_ms: 1,
                }),
                format: proto::MergeFormat::Top as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(ok.result, Some(proto::merge_response::Result::Top(_))));
    }

    #[tokio::test]
    async fn empty_write_is_rejected_before_sending() {
        let client = KilnClient::connect_lazy("127.0.0.1:9", ConnectOptions::default()).unwrap();
        let error = client.write(proto::WriteRequest::default()).await.unwrap_err();
        assert!(matches!(error, ClientError::InvalidRequest(_)), "{error}");
    }
}
