//! Support code of the benchmarks: the fleet generator, the workload built from it,
//! and reporting helpers.

// Each benchmark uses a different part of the support code.
#![allow(dead_code)]

pub mod generator;
pub mod report;
pub mod workload;
