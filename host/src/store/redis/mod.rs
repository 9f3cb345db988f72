//! The Redis backend: the store several instances share.
//!
//! (Being built: see the issue. Until then `connect` reports that it is missing.)

pub mod target;

use std::sync::Arc;
use std::time::Duration;

pub use target::RedisTarget;

use super::{Store, StoreError, StoreResult};

/// `[store]` settings of the Redis backend (`store.url` set).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `store.url`.
    pub target: RedisTarget,
    /// `store.prefix`: every key Mediary writes starts with it, so several deployments can share one
    /// Redis (and one database).
    pub prefix: String,
    /// `store.timeout`: connecting, and every command, give up after this long.
    pub timeout: Duration,
    /// `store.poll_interval`: how often the configuration generation is read even without a change
    /// notification (pub/sub messages can be missed).
    pub poll_interval: Duration,
}

/// Connects to Redis (following Sentinel to the primary when the target says so).
pub async fn connect(settings: RedisSettings) -> StoreResult<Arc<dyn Store>> {
    Err(StoreError::Unavailable(format!(
        "the Redis backend is not built yet ({})",
        settings.target
    )))
}
