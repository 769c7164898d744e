//! PLACEHOLDER — the store helper replaces this file.
/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore;
impl MemoryStore {
    /// placeholder
    pub fn new(_max_users: usize) -> Self {
        MemoryStore
    }
}
#[async_trait::async_trait]
impl super::QuotaStore for MemoryStore {
    async fn reserve(
        &self,
        r: &super::ReserveRequest,
    ) -> Result<super::Admission, super::StoreError> {
        Ok(super::Admission::Reserved {
            reservation: super::Reservation {
                id: super::Reservation::new_id(),
                user: r.user.clone(),
                windows: r.windows.clone(),
                expires_at: r.now,
            },
            counts: super::PeriodCounts::default(),
        })
    }
    async fn settle(
        &self,
        _: &super::Reservation,
        _: u64,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), super::StoreError> {
        Ok(())
    }
    async fn extend(
        &self,
        _: &super::Reservation,
        _: chrono::DateTime<chrono::Utc>,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), super::StoreError> {
        Ok(())
    }
    async fn usage(
        &self,
        _: &str,
        _: &crate::periods::PeriodWindows,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<[super::PeriodUsage; 3], super::StoreError> {
        Ok(Default::default())
    }
    async fn adjust(
        &self,
        _: &str,
        _: &crate::periods::PeriodWindow,
        _: i64,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, super::StoreError> {
        Ok(0)
    }
    async fn ping(&self) -> Result<(), super::StoreError> {
        Ok(())
    }
}
