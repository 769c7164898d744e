//! The load bench's machinery, shared by `benches/load.rs` (the measured
//! run) and `tests/it/load_smoke.rs` (a few hundred requests under
//! `cargo test`, so this code cannot rot unnoticed).

pub mod cluster;
pub mod floor;
pub mod headline;
pub mod loadgen;
pub mod options;
pub mod procs;
pub mod redis_info;
pub mod runner;
pub mod scenarios;
pub mod servers;
pub mod upstream;
pub mod verdicts;
