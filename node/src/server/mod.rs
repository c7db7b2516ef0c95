//! One listener for everything: gRPC (HTTP/2) and the HTTP API, UI, `/metrics` and
//! `/healthz` (HTTP/1.1 or 2), routed by path.

pub mod grpc;
pub mod http;
pub mod status;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt;
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
    axum::serve(without_nagle(listener), router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `listener` with TCP_NODELAY set on every connection it accepts.
///
/// Why: axum does not set it (tonic's own server does). Without it, a small response written while
/// an earlier segment is unacknowledged waits for the peer's delayed ACK, up to 40 ms: writes of
/// 2-pprof batches to 8 groups of one node took 10.2 s instead of 3.6 s, and raft RPC answers
/// waited the same way.
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_delayed_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address");
        let mut listener = without_nagle(listener);
        let client = tokio::spawn(tokio::net::TcpStream::connect(address));
        let (accepted, _) = axum::serve::Listener::accept(&mut listener).await;
        assert!(
            accepted.nodelay().expect("read TCP_NODELAY"),
            "Nagle's algorithm is on"
        );
        client.await.expect("client task").expect("connect");
    }
}
