//! The node's one error type, mapped to gRPC and HTTP status codes here and nowhere
//! else.

/// Everything that can go wrong in the node library.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request is malformed: bad selector, labels, time range, parameters.
    #[error("{0}")]
    InvalidArgument(String),
    /// A profile in a write could not be decoded or validated.
    #[error("profile {index} of series {series}: {source}")]
    InvalidProfile {
        /// Series position in the request.
        series: usize,
        /// Profile position in the series.
        index: usize,
        /// What was wrong.
        source: kiln_model::pprof::PprofError,
    },
    /// The request is larger than the node accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The node is overloaded; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A shard group (or the cluster map) cannot serve the request now: no leader,
    /// unreachable replicas, a query part that timed out. Retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request is refused for a while, not for a moment: a node of the group (its leader, or a
    /// voter that reported it) has less free disk space than its reserve. Clients should not retry at once (see
    /// [`kiln_proto::REFUSED_FOR_NOW_METADATA`]); a spool retries later.
    #[error("{0}")]
    RefusedForNow(String),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<kiln_model::selector::SelectorError> for NodeError {
    fn from(error: kiln_model::selector::SelectorError) -> Self {
        NodeError::InvalidArgument(error.to_string())
    }
}

impl From<kiln_model::labels::LabelError> for NodeError {
    fn from(error: kiln_model::labels::LabelError) -> Self {
        NodeError::InvalidArgument(error.to_string())
    }
}

impl From<kiln_model::profile_type::ProfileTypeError> for NodeError {
    fn from(error: kiln_model::profile_type::ProfileTypeError) -> Self {
        NodeError::InvalidArgument(error.to_string())
    }
}

impl NodeError {
    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            NodeError::InvalidArgument(_) | NodeError::InvalidProfile { .. } => tonic::Code::InvalidArgument,
            NodeError::TooLarge(_) | NodeError::Overloaded(_) => tonic::Code::ResourceExhausted,
            NodeError::ShuttingDown | NodeError::Unavailable(_) | NodeError::RefusedForNow(_) => {
                tonic::Code::Unavailable
            }
            NodeError::Storage(_) | NodeError::Corrupt(_) | NodeError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The HTTP status code for this error.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            NodeError::InvalidArgument(_) | NodeError::InvalidProfile { .. } => http::StatusCode::BAD_REQUEST,
            NodeError::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            NodeError::Overloaded(_) => http::StatusCode::TOO_MANY_REQUESTS,
            NodeError::ShuttingDown | NodeError::Unavailable(_) | NodeError::RefusedForNow(_) => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            NodeError::Storage(_) | NodeError::Corrupt(_) | NodeError::Internal(_) => {
                http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> Self {
        let mut status = tonic::Status::new(error.grpc_code(), error.to_string());
        if matches!(error, NodeError::RefusedForNow(_)) {
            status.metadata_mut().insert(
                kiln_proto::REFUSED_FOR_NOW_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        status
    }
}
