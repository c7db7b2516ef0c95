//! The `kiln.v1` gRPC services. Blocking work (decoding, RocksDB) runs on the
//! blocking pool; errors become statuses through `NodeError`'s one mapping.

use std::sync::Arc;

use kiln_proto::kiln::v1 as api;
use kiln_proto::kiln::v1::ingest_service_server::IngestService;
use kiln_proto::kiln::v1::query_service_server::QueryService;
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::NodeState;

/// Implements both gRPC services over the shared node state.
#[derive(Clone)]
pub struct GrpcApi {
    state: Arc<NodeState>,
}

impl GrpcApi {
    /// Wraps the node state.
    pub fn new(state: Arc<NodeState>) -> Self {
        GrpcApi { state }
    }
}

/// Runs a blocking closure on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    run: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|error| NodeError::Internal(format!("blocking task failed: {error}")))?
}

/// Stores a write request: validate and encode on the blocking pool, then commit.
pub async fn write(state: &NodeState, request: api::WriteRequest) -> Result<api::WriteResponse, NodeError> {
    let writers = super::status::RequestWriters::of(&request);
    let response = state.cluster.write(request).await.inspect_err(|error| {
        state.metrics.count_error("write", error.grpc_code());
    })?;
    state.status.record(writers, kiln_model::time::now_unix_ms());
    Ok(response)
}

impl GrpcApi {
    async fn observe<R>(
        &self,
        operation: &str,
        answer: impl std::future::Future<Output = Result<R, NodeError>>,
    ) -> Result<Response<R>, Status> {
        match answer.await {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                self.state.metrics.count_error(operation, error.grpc_code());
                Err(error.into())
            }
        }
    }
}

#[tonic::async_trait]
impl IngestService for GrpcApi {
    async fn write(
        &self,
        request: Request<api::WriteRequest>,
    ) -> Result<Response<api::WriteResponse>, Status> {
        Ok(Response::new(write(&self.state, request.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl QueryService for GrpcApi {
    async fn merge(
        &self,
        request: Request<api::MergeRequest>,
    ) -> Result<Response<api::MergeResponse>, Status> {
        self.observe("merge", self.state.cluster.merge(request.into_inner()))
            .await
    }

    async fn range(
        &self,
        request: Request<api::RangeRequest>,
    ) -> Result<Response<api::RangeResponse>, Status> {
        self.observe("range", self.state.cluster.range(request.into_inner()))
            .await
    }

    async fn diff(&self, request: Request<api::DiffRequest>) -> Result<Response<api::DiffResponse>, Status> {
        self.observe("diff", self.state.cluster.diff(request.into_inner()))
            .await
    }

    async fn labels(
        &self,
        request: Request<api::LabelsRequest>,
    ) -> Result<Response<api::LabelsResponse>, Status> {
        self.observe("labels", self.state.cluster.labels(request.into_inner()))
            .await
    }

    async fn label_values(
        &self,
        request: Request<api::LabelValuesRequest>,
    ) -> Result<Response<api::LabelValuesResponse>, Status> {
        self.observe(
            "label_values",
            self.state.cluster.label_values(request.into_inner()),
        )
        .await
    }

    async fn series(
        &self,
        request: Request<api::SeriesRequest>,
    ) -> Result<Response<api::SeriesResponse>, Status> {
        self.observe("series", self.state.cluster.series(request.into_inner()))
            .await
    }

    async fn profile_types(
        &self,
        request: Request<api::ProfileTypesRequest>,
    ) -> Result<Response<api::ProfileTypesResponse>, Status> {
        self.observe(
            "profile_types",
            self.state.cluster.profile_types(request.into_inner()),
        )
        .await
    }
}
