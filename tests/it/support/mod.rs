//! Shared helpers of the integration tests: real servers on loopback, never
//! mocks. Each test binary uses only some of them.
// Test helpers are `pub` for every test binary, and each binary uses only some.
#![allow(dead_code, unreachable_pub)]

pub mod binary;
pub mod collector;
pub mod django;
pub mod gen_route;
pub mod identity_server;
pub mod instant;
pub mod preset;
pub mod proxy;
pub mod raw_http;
pub mod redis;
pub mod reserve;
pub mod upstream;

/// One test per store: `memory` on the memory store and `redis` on a
/// `redis-server` of its own, for each `name(store) { body }`. The calling
/// module has `StoreChoice` and `RedisServer` in scope.
macro_rules! on_both_stores {
    ($($name:ident($store:ident) $body:block)*) => {$(
        mod $name {
            use super::*;

            async fn run($store: StoreChoice) $body

            #[tokio::test]
            async fn memory() {
                run(StoreChoice::Memory).await;
            }

            #[tokio::test]
            async fn redis() {
                let server = RedisServer::start();
                run(StoreChoice::Redis(server.url())).await;
            }
        }
    )*};
}
pub(crate) use on_both_stores;
