//! The Kiln client library: everything the `kiln` command-line tool does, usable from Rust.
//!
//! - [`client`]: [`KilnClient`], a gRPC client for one Kiln node with retried, idempotent writes;
//! - [`routing`]: [`RoutingClient`], writes split by shard group and sent to each group's leader;
//! - [`input`]: reading profile files (pprof, folded stacks, speedscope JSON) into pprof bytes;
//! - [`ingest`]: grouping converted files into write batches, each with its own idempotency key;
//! - [`time`]: parsing `now`, `-15m`, RFC 3339 and unix-millisecond times into a query range
//!   (re-exported from [`kiln_model::time`], which the node's HTTP API shares);
//! - [`render`]: the text forms of query answers (`go tool pprof -top` style tables, trees, tables).
//!
//! The JSON forms of answers live in [`kiln_model::json`], shared with the node's HTTP API.

pub mod client;
pub mod error;
pub mod ingest;
pub mod input;
pub mod render;
pub mod routing;

#[cfg(test)]
mod fake_node;

pub use client::{new_idempotency_key, ConnectOptions, KilnClient, RetryPolicy};
pub use error::ClientError;
pub use input::{InputError, InputFormat, LoadedProfile};
pub use kiln_model::time;
pub use kiln_model::time::{TimeError, TimeRange};
pub use routing::RoutingClient;
