//! The errors of [`KilnClient`](crate::KilnClient).

/// Why a call to a Kiln node failed. Every variant carries what a person needs to act on it: the address,
/// the operation and the server's own message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address could not be turned into an `http://host:port` URI.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidServerAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Connecting eagerly (see [`KilnClient::connect`](crate::KilnClient::connect)) failed.
    #[error("cannot connect to {address}")]
    Connect {
        /// The normalised address.
        address: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server answered with a gRPC error, or the call could not reach it, after every allowed attempt.
    #[error("{operation}: {}", describe_status(status, *attempts, server))]
    Rpc {
        /// What was being done, e.g. `write` or `merge query`.
        operation: &'static str,
        /// The node's address.
        server: String,
        /// How many attempts were made (more than one only for retryable codes).
        attempts: u32,
        /// The last status received.
        status: tonic::Status,
    },

    /// The request was rejected before sending because it cannot be valid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The gRPC code of an [`ClientError::Rpc`] error; `None` for errors that happened before any call.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// Whether the node refused the request for a while (see [`crate::client::is_refused_for_now`]).
    pub fn is_refused_for_now(&self) -> bool {
        matches!(self, ClientError::Rpc { status, .. } if crate::client::is_refused_for_now(status))
    }
}

fn describe_status(status: &tonic::Status, attempts: u32, server: &str) -> String {
    let mut message = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    // Transport failures keep their cause (e.g. "Connection refused") in the source chain.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    let mut description = format!("{message} (gRPC status {:?})", status.code());
    // The hint is for failures to reach a node (they carry the transport error as their source),
    // not for a node that answered it cannot take the request now and said why.
    let unreachable = std::error::Error::source(status).is_some() || status.message().is_empty();
    if status.code() == tonic::Code::Unavailable && unreachable && !server.is_empty() {
        description.push_str(&format!("; is a Kiln node listening at {server}?"));
    }
    if attempts > 1 {
        description.push_str(&format!("; gave up after {attempts} attempts"));
    }
    description
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_names_operation_message_and_code() {
        let error = ClientError::Rpc {
            operation: "merge query",
            server: "http://127.0.0.1:7070".into(),
            attempts: 1,
            status: tonic::Status::invalid_argument("bad selector at position 4"),
        };
        assert_eq!(
            error.to_string(),
            "merge query: bad selector at position 4 (gRPC status InvalidArgument)"
        );
        assert_eq!(error.grpc_code(), Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn retried_rpc_error_says_how_often_and_falls_back_to_code_description() {
        let error = ClientError::Rpc {
            operation: "write",
            server: "http://node:7070".into(),
            attempts: 5,
            status: tonic::Status::unavailable(""),
        };
        let text = error.to_string();
        assert!(text.starts_with("write: "), "{text}");
        let expected_end =
            "(gRPC status Unavailable); is a Kiln node listening at http://node:7070?; gave up after 5 attempts";
        assert!(text.ends_with(expected_end), "{text}");
    }

    /// Regression: a node refusing writes for want of disk space was reported with "is a Kiln node
    /// listening at ...?", which sent the user looking for a network problem.
    #[test]
    fn an_unavailable_answer_from_a_node_does_not_ask_whether_a_node_is_listening() {
        let error = ClientError::Rpc {
            operation: "write",
            server: "http://node:7070".into(),
            attempts: 3,
            status: tonic::Status::unavailable("writes are refused until space is freed"),
        };
        let text = error.to_string();
        assert!(!text.contains("listening"), "{text}");
        assert!(text.ends_with("gave up after 3 attempts"), "{text}");
    }
}
