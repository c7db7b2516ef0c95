//! Kiln's protobuf APIs, generated at build time from `proto/**.proto`.
//!
//! - [`kiln::v1`]: Kiln's own ingest and query API (gRPC services and messages).
//! - [`pprof`]: the `perftools.profiles` profile format.

/// gRPC metadata a node adds to an `UNAVAILABLE` status when it refuses a request for a while (a
/// node of the group, leader or follower, whose disk is under its reserve): retrying at once cannot help, so clients give up
/// at the first answer and leave later retries to their caller (the agent's spool, a user).
pub const REFUSED_FOR_NOW_METADATA: &str = "kiln-refused-for-now";

/// Kiln's own API.
pub mod kiln {
    /// Version 1 of the API; fields are only ever added.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("kiln.v1");
    }
}

/// The pprof profile format (`perftools.profiles`).
#[allow(clippy::all, missing_docs)]
pub mod pprof {
    tonic::include_proto!("perftools.profiles");
}
