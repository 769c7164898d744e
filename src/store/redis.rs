//! PLACEHOLDER — the store helper replaces this file.
/// The Redis store.
#[derive(Debug)]
pub struct RedisStore;
impl RedisStore {
    /// placeholder
    pub async fn connect(
        _u: &str,
        _p: &str,
        _t: std::time::Duration,
    ) -> Result<super::MemoryStore, super::StoreError> {
        Err(super::StoreError::Unavailable("placeholder".into()))
    }
}
