//! Everything Mediary persists, behind one trait with interchangeable backends.
//!
//! - **Documents**: channels, clients, users and (later) plugins, as JSON documents keyed by id in a
//!   [`Collection`]. Every write bumps the store's *configuration generation* and notifies
//!   [`Store::subscribe`]rs, which is how a change made through the API reaches every worker.
//! - **Transactions**: records written by the recorder in batches ([`StoredTx`], already encoded),
//!   upserted by id where the later [`Stage`] wins, so a replayed spool writes nothing twice; listed
//!   newest first with the filters of [`TxQuery`].
//! - **State**: small values that background tasks keep between runs (retention watermarks, …).
//! - **Blobs**: content-addressed byte arrays (plugin artifacts, up to tens of MB), keyed by the
//!   SHA-256 of their bytes. Blobs are not configuration: the plugin document that names one is,
//!   and is written after it, so no worker ever sees a document whose blob is missing.
//! - **Plugin key-value**: small values private to one namespace (a channel's plugins), with
//!   optional expiry, written on the request path (a rate limiter increments a counter per
//!   request), so a write must be cheap: backends may make it durable a moment later.
//!
//! [`embedded`] is the redb backend, used when no Redis is configured; [`redis`] is the Redis backend
//! that several instances share (its module documentation lists its keys). Every backend must pass
//! the contract suite in [`contract`].

#[cfg(test)]
pub mod contract;
pub mod embedded;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use regex::Regex;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::transaction::{Stage, Status, Timestamp, Transaction};

/// One instance's heartbeat: who it is and which configuration it has applied. `GET /cluster`
/// lists the live ones, so an operator can see a change reach every instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceBeat {
    /// `server.instance`: the name recorded on its transactions.
    pub instance: String,
    /// A random id of this run of the process, telling a restarted instance (or a second one
    /// wrongly given the same name) from the one before.
    pub run_id: String,
    /// When the process started, milliseconds since the epoch.
    pub started: u64,
    /// When this heartbeat was sent, milliseconds since the epoch.
    pub heartbeat: u64,
    /// The configuration generation its channel table was built from.
    pub generation: u64,
    pub workers: usize,
    /// Mediary's version.
    pub version: String,
    /// The proxy's and the API's listening addresses.
    pub proxy: String,
    pub api: String,
}

/// Opens the store the configuration names: Redis when `store.url` is set, else the embedded store
/// in `store.data_dir`.
pub async fn open(config: &crate::config::StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context as _;
    match &config.redis {
        Some(settings) => {
            let target = settings.target.to_string();
            redis::connect(settings.clone())
                .await
                .with_context(|| format!("connecting to the Redis store at {target}"))
        }
        None => {
            let dir = &config.data_dir;
            let store = embedded::EmbeddedStore::open(dir)
                .with_context(|| format!("opening the store in {}", dir.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// A kind of configuration document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    Channels,
    Clients,
    Users,
    Plugins,
}

impl Collection {
    pub const ALL: [Collection; 4] = [
        Collection::Channels,
        Collection::Clients,
        Collection::Users,
        Collection::Plugins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Collection::Channels => "channels",
            Collection::Clients => "clients",
            Collection::Users => "users",
            Collection::Plugins => "plugins",
        }
    }
}

/// A store operation failed. The store is the host's business: to a client this is a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (Redis down) or refused the operation for now.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The data in the store could not be read (corruption, or written by an incompatible version).
    #[error("the store holds unreadable data: {0}")]
    Corrupt(String),
    /// Anything else the backend reported.
    #[error("store error: {0}")]
    Backend(String),
    /// [`Store::kv_increment`] met a value that is not a decimal integer, or the sum overflowed.
    /// The caller's mistake, not the store's: the host hands it to the plugin as an error value.
    #[error("the value is not a decimal integer")]
    NotAnInteger,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A key-value TTL in whole milliseconds: rounded up, and at least one, so that no TTL means
/// "already expired" or "never" (and every backend counts it alike: it is Redis' `PX` as it is).
pub fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A transaction record ready to store: the encoded record plus what the indexes need, so the
/// writer never decodes what the workers encoded.
#[derive(Debug, Clone)]
pub struct StoredTx {
    pub id: Uuid,
    pub stage: Stage,
    pub status: Status,
    pub channel_id: Arc<str>,
    /// [`Transaction::encode`] of the record.
    pub bytes: Bytes,
}

impl StoredTx {
    pub fn new(tx: &Transaction, stage: Stage) -> StoredTx {
        StoredTx {
            id: tx.id,
            stage,
            status: tx.status,
            channel_id: Arc::from(tx.channel_id.as_str()),
            bytes: Bytes::from(tx.encode()),
        }
    }
}

/// The records of a batch to write: of several records with one id, the one of the latest stage
/// (the last one given of that stage), as the stage rule would leave them; by id.
pub(crate) fn latest_per_id(batch: &[StoredTx]) -> Vec<&StoredTx> {
    let mut sorted: Vec<&StoredTx> = batch.iter().collect();
    // Stable: records of one id and stage keep their order.
    sorted.sort_by_key(|tx| (tx.id, tx.stage));
    let mut out: Vec<&StoredTx> = Vec::with_capacity(sorted.len());
    for tx in sorted {
        match out.last_mut() {
            Some(last) if last.id == tx.id => *last = tx,
            _ => out.push(tx),
        }
    }
    out
}

/// What one [`Store::cull_bodies`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Culled {
    /// Records looked at.
    pub visited: u64,
    /// Records that had bodies and lost them.
    pub changed: u64,
    /// The highest id looked at (`None` when there was nothing left to look at).
    pub last: Option<Uuid>,
}

/// Which response statuses a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    /// Exactly this status.
    Exact(u16),
    /// A class: `Class(5)` is 500–599 (OpenHIM's `"5xx"`).
    Class(u16),
}

impl ResponseStatus {
    pub fn matches(self, status: u16) -> bool {
        match self {
            ResponseStatus::Exact(s) => s == status,
            ResponseStatus::Class(c) => status / 100 == c,
        }
    }
}

/// A transaction listing: filters, a snapshot bound, and a page. Results are newest first (by id,
/// which is time-ordered).
#[derive(Debug, Clone, Default)]
pub struct TxQuery {
    pub channel_id: Option<String>,
    /// Any of these statuses (empty = any).
    pub statuses: Vec<Status>,
    /// `request.timestamp` at or after this time.
    pub from: Option<Timestamp>,
    /// `request.timestamp` at or before this time.
    pub to: Option<Timestamp>,
    pub response_status: Option<ResponseStatus>,
    /// A regex that `request.path` must match (unanchored).
    pub path: Option<Regex>,
    /// Only transactions with an id at or below this one: pins a listing so that later pages do not
    /// shift while new transactions arrive.
    pub snapshot: Option<Uuid>,
    /// Records to skip (page × limit).
    pub offset: usize,
    /// Records to return.
    pub limit: usize,
}

impl TxQuery {
    /// Whether a record passes the filters that no index answers (time, response status, path).
    /// Backends call this on candidates from their index scans, so both apply the same rules.
    pub fn matches(&self, tx: &Transaction) -> bool {
        if let Some(channel) = &self.channel_id
            && &tx.channel_id != channel
        {
            return false;
        }
        if !self.statuses.is_empty() && !self.statuses.contains(&tx.status) {
            return false;
        }
        let at = tx.request.timestamp;
        if self.from.is_some_and(|from| at < from) || self.to.is_some_and(|to| at > to) {
            return false;
        }
        if let Some(want) = self.response_status {
            match &tx.response {
                Some(r) if want.matches(r.status) => {}
                _ => return false,
            }
        }
        if let Some(path) = &self.path
            && !path.is_match(&tx.request.path)
        {
            return false;
        }
        true
    }

    /// The highest id a result may have (snapshot and `to` combined).
    pub fn max_id(&self) -> Uuid {
        let mut max = Uuid::max();
        if let Some(s) = self.snapshot {
            max = max.min(s);
        }
        if let Some(to) = self.to {
            // The last id of that millisecond.
            let last = Uuid::from_u128((u128::from(to.0 + 1) << 80).saturating_sub(1));
            max = max.min(last);
        }
        max
    }

    /// The lowest id a result may have.
    pub fn min_id(&self) -> Uuid {
        self.from.map_or(Uuid::nil(), Timestamp::first_id)
    }
}

/// The persistence interface. Implementations are cheap to share (`Arc<dyn Store>`), safe to call
/// from any thread or runtime, and never block the caller's executor for long (the embedded backend
/// does its disk work on tokio's blocking pool).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// A short name for logs and `/health/ready` (`embedded`, `redis`).
    fn kind(&self) -> &'static str;

    /// Checks that the store answers (for `/health/ready`).
    async fn ping(&self) -> StoreResult<()>;

    // ----- documents -----

    /// Every document of a collection, as `(id, document)`, in id order.
    async fn list(&self, collection: Collection) -> StoreResult<Vec<(String, Value)>>;
    async fn get(&self, collection: Collection, id: &str) -> StoreResult<Option<Value>>;
    /// Creates or replaces a document; bumps the configuration generation.
    async fn put(&self, collection: Collection, id: &str, document: Value) -> StoreResult<()>;
    /// Creates a document only if none has this id (one atomic step, so instances racing to
    /// create the same document leave exactly one); returns whether it did. Bumps the generation
    /// when it did.
    async fn create(&self, collection: Collection, id: &str, document: Value) -> StoreResult<bool>;
    /// Removes a document; `false` if there was none. Bumps the generation when it removed one.
    async fn delete(&self, collection: Collection, id: &str) -> StoreResult<bool>;
    /// The configuration generation: a number that grows with every document write.
    async fn generation(&self) -> StoreResult<u64>;
    /// Wakes on every document write (with the new generation). Changes made elsewhere (another
    /// instance, for shared backends) arrive here too; a receiver may miss intermediate values but
    /// always sees the latest.
    fn subscribe(&self) -> watch::Receiver<u64>;

    // ----- transactions -----

    /// Upserts a batch of records atomically: a record replaces the stored one with the same id only
    /// if its stage is the same or later. Writing the same batch twice changes nothing. The records
    /// are visible to readers when this returns, but only certain to survive a crash after the next
    /// [`Store::sync`]: the recorder keeps them in its spool until then.
    async fn put_transactions(&self, batch: Vec<StoredTx>) -> StoreResult<()>;
    /// Makes every earlier write durable.
    async fn sync(&self) -> StoreResult<()>;
    async fn transaction(&self, id: Uuid) -> StoreResult<Option<Transaction>>;
    /// Applies `change` to a stored record atomically (read, change, write); `false` if there is no
    /// such record. The record's stage is kept.
    // The explicit `for<'a>` matters: `async_trait` would turn an elided `&mut` into one of the
    // method's own lifetimes, and no implementation could then call `change` on a local record.
    async fn modify_transaction(
        &self,
        id: Uuid,
        change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
    ) -> StoreResult<bool>;
    /// A page of records matching `query`, newest first.
    async fn list_transactions(&self, query: &TxQuery) -> StoreResult<Vec<Transaction>>;
    /// Ids of records still `Processing` with ids above `after` (`Uuid::nil()` for all), oldest
    /// first, at most `limit`: pass the last id of one call as `after` of the next to see them all.
    async fn processing(&self, after: Uuid, limit: usize) -> StoreResult<Vec<Uuid>>;
    /// The id of the newest record, if any.
    async fn newest_transaction(&self) -> StoreResult<Option<Uuid>>;
    /// How many records there are.
    async fn count_transactions(&self) -> StoreResult<u64>;
    /// Removes the stored bodies (request, response, routes' and orchestrations') of up to `limit`
    /// records of `channel_id` with ids above `after` and below `before`, oldest first. The retention
    /// job calls it repeatedly, passing the last id of one call as `after` of the next.
    async fn cull_bodies(
        &self,
        channel_id: &str,
        after: Uuid,
        before: Uuid,
        limit: usize,
    ) -> StoreResult<Culled>;
    /// Deletes up to `limit` whole records with ids below `before`; returns how many.
    async fn delete_transactions(&self, before: Uuid, limit: usize) -> StoreResult<u64>;

    // ----- instances -----

    /// Records `beat` as this instance's latest heartbeat (replacing the previous one with the
    /// same `instance` name); it counts as live for `ttl` from now.
    async fn heartbeat(&self, beat: &InstanceBeat, ttl: Duration) -> StoreResult<()>;
    /// The instances with a live heartbeat, by name.
    async fn instances(&self) -> StoreResult<Vec<InstanceBeat>>;
    /// Removes the heartbeat of `instance` if it is still the one of `run_id` (a clean shutdown).
    async fn leave(&self, instance: &str, run_id: &str) -> StoreResult<()>;

    // ----- state -----

    async fn state(&self, key: &str) -> StoreResult<Option<Value>>;
    async fn set_state(&self, key: &str, value: Value) -> StoreResult<()>;

    // ----- blobs -----

    /// Stores `bytes` under `digest`, the lowercase hex SHA-256 of the bytes (the caller checks
    /// it: the store trusts the name). Writing the same digest twice is harmless. Durable when
    /// this returns, because the plugin document written next relies on it. Does not bump the
    /// configuration generation (that document does).
    async fn put_blob(&self, digest: &str, bytes: Bytes) -> StoreResult<()>;
    async fn blob(&self, digest: &str) -> StoreResult<Option<Bytes>>;
    /// Removes a blob; `false` if there was none. Durable when this returns.
    async fn delete_blob(&self, digest: &str) -> StoreResult<bool>;

    // ----- plugin key-value -----
    //
    // Keys live in a namespace (one channel's plugins); namespaces never see each other's keys,
    // whatever bytes their names hold. A key may expire: `ttl` is counted from the call, in whole
    // milliseconds of wall-clock time ([`ttl_millis`]), and an expired key is absent to every
    // method. Writes are visible to every reader when they return, but may become durable up to
    // about a second later: a crash can lose the last second of counters, which costs a rate
    // limiter little, while an fsync per request would cost the proxy a lot.

    /// The live value of `key`, if any.
    async fn kv_get(&self, namespace: &str, key: &str) -> StoreResult<Option<Bytes>>;
    /// Sets `key` to `value`. `ttl`: expires that long from now; `None`: no expiry (and removes an
    /// existing one).
    async fn kv_set(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<()>;
    /// Removes `key`; `false` if it was absent or expired.
    async fn kv_delete(&self, namespace: &str, key: &str) -> StoreResult<bool>;
    /// Adds `delta` to the decimal integer at `key` and returns the sum, like Redis `INCRBY`: the
    /// value is ASCII in canonical form (an optional `-`, then digits without leading zeros; no
    /// `+`, no spaces), and so is the sum stored. A missing or expired key counts as 0 and is
    /// created with `ttl`; an existing key keeps its expiry (`ttl` is ignored), so a counter per
    /// time window expires with its window however often it is incremented.
    ///
    /// [`StoreError::NotAnInteger`] when the value is not a decimal `i64`, and when the sum would
    /// overflow an `i64` (the value is left as it was).
    async fn kv_increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> StoreResult<i64>;
    /// Sets `key` to `value` (with `ttl` as in [`Store::kv_set`]) only if its live value equals
    /// `expected`; `expected: None` means only if it is absent or expired. Returns whether it did;
    /// the comparison and the write are one atomic step.
    async fn kv_compare_and_set(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<Bytes>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<bool>;
}
