//! Kiln's protobuf APIs, generated at build time from `proto/**.proto`.
//!
//! - [`kiln::v1`]: Kiln's own ingest and query API (gRPC services and messages).
//! - [`pprof`]: the `perftools.profiles` profile format.

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
