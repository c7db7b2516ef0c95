//! Support code of the fleet benchmark: the fleet generator and reporting helpers.

pub mod generator;
pub mod report;
