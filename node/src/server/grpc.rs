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
    let prepared = blocking(move || crate::ingest::prepare_write(request)).await;
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            state.metrics.count_error("write", error.grpc_code());
            return Err(error);
        }
    };
    let outcome = state.writer.write(prepared).await.inspect_err(|error| {
        state.metrics.count_error("write", error.grpc_code());
    })?;
    state.status.record(writers, kiln_model::time::now_unix_ms());
    Ok(api::WriteResponse {
        duplicate: outcome.duplicate,
        profiles: outcome.profiles,
        samples: outcome.samples,
        series: outcome.series,
        profile_types: outcome.profile_types,
    })
}

async fn answer<Q, R>(
    state: &NodeState,
    request: Request<Q>,
    run: fn(&crate::query::QueryEngine, &Q) -> Result<R, NodeError>,
) -> Result<Response<R>, Status>
where
    Q: Send + 'static,
    R: Send + 'static,
{
    let engine = state.engine.clone();
    let request = request.into_inner();
    let response = blocking(move || run(&engine, &request)).await?;
    Ok(Response::new(response))
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
        answer(&self.state, request, crate::query::QueryEngine::merge).await
    }

    async fn range(
        &self,
        request: Request<api::RangeRequest>,
    ) -> Result<Response<api::RangeResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::range).await
    }

    async fn diff(&self, request: Request<api::DiffRequest>) -> Result<Response<api::DiffResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::diff).await
    }

    async fn labels(
        &self,
        request: Request<api::LabelsRequest>,
    ) -> Result<Response<api::LabelsResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::labels).await
    }

    async fn label_values(
        &self,
        request: Request<api::LabelValuesRequest>,
    ) -> Result<Response<api::LabelValuesResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::label_values).await
    }

    async fn series(
        &self,
        request: Request<api::SeriesRequest>,
    ) -> Result<Response<api::SeriesResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::series).await
    }

    async fn profile_types(
        &self,
        request: Request<api::ProfileTypesRequest>,
    ) -> Result<Response<api::ProfileTypesResponse>, Status> {
        answer(&self.state, request, crate::query::QueryEngine::profile_types).await
    }
}
