//! One listener for everything: gRPC (HTTP/2) and the HTTP API, UI, `/metrics` and
//! `/healthz` (HTTP/1.1 or 2), routed by path.

pub mod grpc;
pub mod http;
pub mod status;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use kiln_proto::kiln::v1::cluster_service_server::ClusterServiceServer;
use kiln_proto::kiln::v1::ingest_service_server::IngestServiceServer;
use kiln_proto::kiln::v1::query_service_server::QueryServiceServer;
use kiln_proto::kiln::v1::raft_service_server::RaftServiceServer;
use tonic::codec::CompressionEncoding;

use crate::cluster::service::ClusterApi;
use crate::raft::network::RaftServer;
use crate::NodeState;

/// Largest gRPC message or HTTP body accepted, bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves on `listener` until `shutdown` completes, then stops accepting and lets
/// requests in flight finish.
pub async fn serve(
    state: Arc<NodeState>,
    listener: tokio::net::TcpListener,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let api = grpc::GrpcApi::new(state.clone());
    let ingest = IngestServiceServer::new(api.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    let query = QueryServiceServer::new(api)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    let raft = RaftServiceServer::new(RaftServer::new(state.cluster.clone()))
        .max_decoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES);
    let cluster = ClusterServiceServer::new(ClusterApi::new(state.cluster.clone()))
        .max_decoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(crate::raft::network::MAX_RAFT_MESSAGE_BYTES);
    let grpc_routes = tonic::service::Routes::new(ingest)
        .add_service(query)
        .add_service(raft)
        .add_service(cluster)
        .into_axum_router();
    let router = grpc_routes
        .merge(http::router(state, max_message_bytes))
        .fallback(http::not_found);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
