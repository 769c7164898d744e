//! Helpers shared by the integration tests. Each test binary uses a
//! different subset of them, and none of them is an API.
#![allow(dead_code, unreachable_pub)]

pub mod upstream;
