//! Kiln's data model, shared by every node, agent and client of every version.
//!
//! - [`labels`]: label sets with Prometheus naming rules and the **series hash**;
//! - [`profile_type`]: `name:sample_type:sample_unit:period_type:period_unit[:delta]` and aliases;
//! - [`selector`]: `<profile type>{matchers}` with Prometheus matcher semantics;
//! - [`pprof`]: decoding and validating pprof into normalised profiles (one per sample type);
//! - [`tree`]: the associative, commutative stack-tree merge, top tables, folded text and pprof export;
//! - [`json`]: the stable JSON shapes of query answers (HTTP API and `kiln --output json`).
//!
//! Nothing in this crate does I/O.

pub mod json;
pub mod labels;
pub mod pprof;
pub mod profile_type;
pub mod selector;
pub mod time;
pub mod tree;
