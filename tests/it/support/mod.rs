//! Shared helpers of the integration tests: real servers on loopback, never
//! mocks. Each test binary uses only some of them.
// Test helpers are `pub` for every test binary, and each binary uses only some.
#![allow(dead_code, unreachable_pub)]

pub mod binary;
pub mod collector;
pub mod django;
pub mod gen_route;
pub mod identity_server;
pub mod proxy;
pub mod raw_http;
pub mod redis;
pub mod upstream;
