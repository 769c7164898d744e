//! The load bench's machinery, shared by `benches/load.rs` (the measured
//! run) and `tests/load_smoke.rs` (a few hundred requests under
//! `cargo test`, so this code cannot rot unnoticed).
// Each includer uses only part of it.
#![allow(dead_code, unreachable_pub)]

pub mod floor;
pub mod loadgen;
pub mod procs;
pub mod runner;
pub mod scenarios;
pub mod upstream;
