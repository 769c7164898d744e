//! PLACEHOLDER — the store helper replaces this file.
/// The Redis store.
#[derive(Debug)]
pub struct RedisStore;
