//! The embedded backend on redb (being written).

use std::path::Path;

use super::StoreError;

/// The redb-backed store.
#[derive(Debug)]
pub struct EmbeddedStore {}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` (file `mediary.redb`).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let _ = dir;
        Err(StoreError::Backend("not written yet".into()))
    }
}
