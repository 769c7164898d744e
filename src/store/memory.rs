//! PLACEHOLDER — the store helper replaces this file.
/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore;
