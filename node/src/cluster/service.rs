//! The `ClusterService` gRPC API: join, status, routing, remove-node, and the
//! internal node-to-node requests.

use std::sync::Arc;

use kiln_proto::kiln::v1 as api;
use kiln_proto::kiln::v1::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use super::internal::{self, Failure};
use super::map::{MetaCommand, MetaResponse, NodeState};
use super::Cluster;
use crate::error::NodeError;
use crate::raft::{decode, encode};

/// Serves `ClusterService` for one node.
#[derive(Clone)]
pub struct ClusterApi {
    cluster: Arc<Cluster>,
}

impl ClusterApi {
    /// Wraps the node's cluster.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterApi { cluster }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn join(&self, request: Request<api::JoinRequest>) -> Result<Response<api::JoinResponse>, Status> {
        let request = request.into_inner();
        if request.address.trim().is_empty() {
            return Err(NodeError::InvalidArgument("a joining node must give its address".into()).into());
        }
        let answer = self
            .cluster
            .meta_write(MetaCommand::AddNode {
                address: request.address,
                region: request.region,
                zone: request.zone,
            })
            .await?;
        match answer {
            MetaResponse::NodeId(node_id) => Ok(Response::new(api::JoinResponse { node_id })),
            MetaResponse::Rejected(reason) => Err(NodeError::InvalidArgument(reason).into()),
            MetaResponse::Done => Err(NodeError::Internal("join answered without an id".into()).into()),
        }
    }

    async fn status(
        &self,
        _request: Request<api::ClusterStatusRequest>,
    ) -> Result<Response<api::ClusterStatus>, Status> {
        Ok(Response::new(self.cluster.status().await))
    }

    async fn routing(
        &self,
        _request: Request<api::RoutingRequest>,
    ) -> Result<Response<api::RoutingTable>, Status> {
        Ok(Response::new(self.cluster.routing().await))
    }

    async fn remove_node(
        &self,
        request: Request<api::RemoveNodeRequest>,
    ) -> Result<Response<api::RemoveNodeResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let view = self.cluster.view();
        let Some(node) = view.nodes.get(&node_id) else {
            return Err(NodeError::InvalidArgument(format!("no node {node_id} in the cluster")).into());
        };
        if node.state == NodeState::Removed {
            return Ok(Response::new(api::RemoveNodeResponse {
                state: NodeState::Removed.to_string(),
            }));
        }
        let others = view.up_nodes().filter(|other| other.id != node_id).count();
        if others == 0 {
            return Err(NodeError::InvalidArgument(format!(
                "node {node_id} is the last node up; removing it would lose the data"
            ))
            .into());
        }
        match self
            .cluster
            .meta_write(MetaCommand::SetNodeState {
                id: node_id,
                state: NodeState::Leaving,
            })
            .await?
        {
            MetaResponse::Rejected(reason) => Err(NodeError::InvalidArgument(reason).into()),
            _ => Ok(Response::new(api::RemoveNodeResponse {
                state: NodeState::Leaving.to_string(),
            })),
        }
    }

    async fn internal(
        &self,
        request: Request<api::InternalRequest>,
    ) -> Result<Response<api::InternalResponse>, Status> {
        let request: internal::Request = decode(&request.into_inner().payload)
            .map_err(|error| Status::invalid_argument(format!("undecodable internal request: {error}")))?;
        let answer: Result<internal::Response, Failure> = self.cluster.handle_internal(request).await;
        let payload = encode(&answer).map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(api::InternalResponse { payload }))
    }
}
