//! The retention job: removes bodies past their channel's `maxBodyAgeDays`, and whole records past
//! `retention.max_age`.
//!
//! It works in small batches so that it never holds the store for long, and remembers per channel how
//! far body culling got (store state `retention.culled.<channel id>`), so each run only looks at
//! records it has not seen.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::Shared;
use crate::store::{Store, StoreResult};
use crate::transaction::Timestamp;

/// Records per store call.
const BATCH: usize = 1_000;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Records whose bodies were removed.
    pub culled: u64,
    /// Whole records deleted.
    pub deleted: u64,
}

/// One pass of the job as of `now`: for each `(channel id, maxBodyAgeDays)`, bodies older than that
/// are removed; with `max_age`, older records are deleted.
pub async fn sweep(
    store: &dyn Store,
    channels: &[(String, u32)],
    max_age: Option<Duration>,
    now: Timestamp,
) -> StoreResult<Swept> {
    let mut swept = Swept::default();
    for (channel, days) in channels {
        let age = u64::from(*days) * 86_400_000;
        let before = Timestamp(now.0.saturating_sub(age)).first_id();
        let key = format!("retention.culled.{channel}");
        let mut after = store
            .state(&key)
            .await?
            .and_then(|v| v.as_str().and_then(|s| s.parse::<Uuid>().ok()))
            .unwrap_or(Uuid::nil());
        loop {
            let culled = store.cull_bodies(channel, after, before, BATCH).await?;
            swept.culled += culled.changed;
            let Some(last) = culled.last else { break };
            after = last;
            store
                .set_state(&key, serde_json::Value::String(after.to_string()))
                .await?;
            if culled.visited < BATCH as u64 {
                break;
            }
        }
    }
    if let Some(max_age) = max_age {
        let age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let before = Timestamp(now.0.saturating_sub(age)).first_id();
        loop {
            let deleted = store.delete_transactions(before, BATCH).await?;
            swept.deleted += deleted;
            if deleted < BATCH as u64 {
                break;
            }
        }
    }
    Ok(swept)
}

/// Runs [`sweep`] every `retention.interval` (the first time shortly after start) until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.retention.interval;
    let mut next = Duration::from_secs(5).min(interval);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(next) => {}
        }
        next = interval;
        let table = shared.channels.load();
        let channels: Vec<(String, u32)> = table
            .iter()
            .filter_map(|c| c.max_body_age_days.map(|d| (c.id.to_string(), d)))
            .collect();
        let max_age = shared.config.retention.max_age;
        if channels.is_empty() && max_age.is_none() {
            continue;
        }
        match sweep(&*shared.store, &channels, max_age, Timestamp::now()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    culled = swept.culled,
                    deleted = swept.deleted,
                    "Retention removed old data."
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "The retention job failed; it will try again."),
        }
    }
}
