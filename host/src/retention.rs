//! The retention job: removes bodies past their channel's `maxBodyAgeDays`, and whole records past
//! `retention.max_age`.
//!
//! It works in small batches so that it never holds the store for long, and remembers per channel how
//! far body culling got (store state `retention.culled.<channel id>`), so each run only looks at
//! records it has not seen. Instances sharing a store take turns: one runs it per interval (a lease
//! in the store's key-value space).

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
/// The key-value namespace of the host's own leases (plugin namespaces are channel ids, which
/// never contain a space).
const LEASE_NAMESPACE: &str = "mediary leases";

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
        // Instances sharing a store take turns: the first to reach its interval takes a lease
        // for most of one, and the others skip theirs meanwhile.
        let lease = shared
            .store
            .kv_compare_and_set(
                LEASE_NAMESPACE,
                "retention",
                None,
                bytes::Bytes::from(shared.run_id.clone()),
                Some(interval.mul_f64(0.9)),
            )
            .await;
        match lease {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("Another instance ran retention in this interval; skipping.");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot take the retention lease; trying next interval.");
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{BASE_MS, put, record};
    use crate::store::embedded::EmbeddedStore;
    use crate::transaction::{Stage, Status, Transaction};

    const DAY: u64 = 86_400_000;

    /// A record of `channel` made `days` after `BASE_MS` (plus `ms`, to tell records apart), with a
    /// request and a response body.
    fn at(days: u64, ms: u64, channel: &str) -> Transaction {
        let tx = record(days * DAY + ms, channel, Status::Successful);
        assert!(tx.request.body.is_some() && tx.response.as_ref().unwrap().body.is_some());
        tx
    }

    fn without_bodies(tx: &Transaction) -> Transaction {
        let mut tx = tx.clone();
        tx.request.body = None;
        if let Some(response) = &mut tx.response {
            response.body = None;
        }
        tx
    }

    async fn stored(store: &dyn Store, tx: &Transaction) -> Option<Transaction> {
        store.transaction(tx.id).await.unwrap()
    }

    async fn watermark(store: &dyn Store, channel: &str) -> Option<String> {
        store
            .state(&format!("retention.culled.{channel}"))
            .await
            .unwrap()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    #[tokio::test]
    async fn bodies_then_records_go_as_they_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // Channel a keeps bodies 30 days; channel b has no limit.
        let a: Vec<Transaction> = [0, 10, 25, 35, 45].map(|d| at(d, 0, "a")).into();
        let b: Vec<Transaction> = [0, 10, 25, 35, 45].map(|d| at(d, 1, "b")).into();
        put(&store, Stage::Final, &a).await;
        put(&store, Stage::Final, &b).await;
        let channels = [("a".to_owned(), 30)];

        // Day 50: a's records of days 0 and 10 are past 30 days.
        let now = Timestamp(BASE_MS + 50 * DAY);
        let swept = sweep(&store, &channels, None, now).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                culled: 2,
                deleted: 0
            }
        );
        for (i, tx) in a.iter().enumerate() {
            let expected = if i < 2 {
                without_bodies(tx)
            } else {
                tx.clone()
            };
            assert_eq!(stored(&store, tx).await, Some(expected), "a[{i}]");
        }
        for (i, tx) in b.iter().enumerate() {
            assert_eq!(
                stored(&store, tx).await.as_ref(),
                Some(tx),
                "b[{i}] untouched"
            );
        }
        assert_eq!(watermark(&store, "a").await, Some(a[1].id.to_string()));
        assert_eq!(watermark(&store, "b").await, None);

        // The same day again: nothing new to do.
        let again = sweep(&store, &channels, None, now).await.unwrap();
        assert_eq!(again, Swept::default());

        // A record that arrives late, older than the watermark, is not looked at again: each run
        // continues from where the last one stopped.
        let late = at(5, 0, "a");
        put(&store, Stage::Final, std::slice::from_ref(&late)).await;
        // Day 70: a's records of days 25 and 35 are past 30 days now.
        let now = Timestamp(BASE_MS + 70 * DAY);
        let swept = sweep(&store, &channels, None, now).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                culled: 2,
                deleted: 0
            }
        );
        assert_eq!(stored(&store, &a[2]).await, Some(without_bodies(&a[2])));
        assert_eq!(stored(&store, &a[3]).await, Some(without_bodies(&a[3])));
        assert_eq!(stored(&store, &a[4]).await.as_ref(), Some(&a[4]));
        assert_eq!(stored(&store, &late).await.as_ref(), Some(&late));
        assert_eq!(watermark(&store, "a").await, Some(a[3].id.to_string()));

        // Whole records older than 55 days go, whatever their channel: days 0, 5 and 10.
        let max_age = Some(Duration::from_millis(55 * DAY));
        let swept = sweep(&store, &channels, max_age, now).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                culled: 0,
                deleted: 5
            }
        );
        for tx in [&a[0], &a[1], &late, &b[0], &b[1]] {
            assert_eq!(stored(&store, tx).await, None, "{}", tx.request.path);
        }
        assert_eq!(store.count_transactions().await.unwrap(), 6);
        for tx in &b[2..] {
            assert_eq!(
                stored(&store, tx).await.as_ref(),
                Some(tx),
                "b keeps its bodies"
            );
        }
        assert_eq!(
            sweep(&store, &channels, max_age, now).await.unwrap(),
            Swept::default()
        );
    }
}
