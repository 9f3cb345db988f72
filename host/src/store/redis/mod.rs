//! The Redis backend: the store several instances share.
//!
//! # Layout
//!
//! - [`target`]: `store.url` parsed (a server, or Sentinels and a service).
//! - `link`: the store's thread and runtime, the shared connection and its replacement when it
//!   breaks, Sentinel discovery, `sync`, the change listener and poller.
//! - `model`: key names, the transaction entry format, the Lua scripts, reading replies.
//! - `store`: [`RedisStore`], the [`Store`] methods.
//!
//! # Data model
//!
//! Every key starts with `store.prefix` (`P`, default `mediary:`), so deployments sharing one Redis
//! database never see each other's data. Ids of transactions are written as 32 lowercase hex
//! digits (`H`): their lexicographic order is their numeric order, which for UUIDv7 is time order.
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `P doc:<collection>` | hash | document id → JSON (`channels`, `clients`, `users`, `plugins`) |
//! | `P generation` | string | the configuration generation (absent: 0) |
//! | `P changes` | pub/sub channel | the new generation, published by every document write |
//! | `P tx` | hash | `H` → the transaction's entry (below) |
//! | `P tx:head` | hash | `H` → the head of the entry (its first four bytes and channel id): what the indexes follow, read by batch writes instead of the entries |
//! | `P tx:keep` | hash | empty between commands: a batch write parks here, inside its `MULTI`, the entries it must not replace |
//! | `P tx:all` | sorted set | every `H` (score 0: ordered by member) |
//! | `P tx:s:<status code>` | sorted set | `H` of each record with that status (`tx:s:0` is `Processing`) |
//! | `P tx:c:<channel id>` | sorted set | `H` of each record of that channel |
//! | `P tx:cs:<status code>:<channel id>` | sorted set | `H` of each record of that channel and status |
//! | `P tx:lock:H` | string, expiring | a random token: a `modify_transaction` holds this record |
//! | `P state` | hash | state key → JSON |
//! | `P blob:<sha-256 hex>` | string | the blob's bytes |
//! | `P kv:<namespace length>:<namespace>:<key>` | string, may expire (`PX`) | a plugin key-value entry |
//! | `P instances` | hash | instance name → `<expires, ms since the epoch by Redis' clock> <heartbeat JSON>` |
//! | `P sync` | string | written before `WAITAOF` (see `sync`); its value means nothing |
//!
//! A transaction's entry is `[stage u8][status code u8][channel id length u16, big-endian]
//! [channel id][record]`, the record being [`crate::transaction::Transaction::encode`]. Every change
//! to an entry and its index entries is one Lua script, so the indexes always agree with the
//! entries: a listing answers its channel and status filters from the one index (or, for several
//! statuses, the indexes merged in id order) that holds exactly the records asked for, bounded by
//! the query's ids (`ZREVRANGEBYLEX`), and decodes only what it returns or must check against the
//! filters no index answers.
//!
//! Every document write (a script) writes, increments `P generation` and publishes the new value on
//! `P changes`. A store's [`Store::subscribe`] hears its own writes at once, other instances' by
//! pub/sub, and reads the generation every `store.poll_interval` besides, since a message
//! published while the listener reconnects is lost. (A generation that goes back, after Redis lost
//! its data, is not announced until it passes the last one seen.)
//!
//! Plugin key-value entries are Redis strings and use Redis' own expiry; `kv_increment` is
//! `INCRBY` (whose idea of an integer is the trait's), wrapped in a script that gives a new key its
//! TTL.
//!
//! # Durability
//!
//! Redis acknowledges a write before it reaches the disk. `sync` (the recorder's, and every
//! document and blob write) waits with `WAITAOF 1 0` until Redis has fsynced its append-only file
//! up to the writes acknowledged so far, on Redis 7.2 and later with `appendonly yes`; on earlier
//! versions it can only check that Redis is there. At connect the store warns when Redis' settings
//! (`appendonly`, `appendfsync`) would lose acknowledged writes in a crash.
//!
//! # Limits
//!
//! A `put_transactions` batch is one script (one round trip, atomic) up to 2,000 records or 8 MiB;
//! a larger one (a backlog replayed after an outage) is written as several scripts in turn, each
//! atomic, so readers may see part of it before the call returns, and a failure may leave part of
//! it written. Writing the same batch again (the recorder retries a failed batch) completes it.
//! The scripts name index keys that they compute (a channel's), so the prefix's keys must be on
//! one server: Redis Cluster is not supported.

mod link;
mod model;
mod store;
pub mod target;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use store::RedisStore;
pub use target::RedisTarget;

use super::{Store, StoreResult};

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

/// Connects to Redis (following Sentinel to the primary when the target says so). Fails within
/// `settings.timeout`, saying where and why, when Redis cannot be reached.
pub async fn connect(settings: RedisSettings) -> StoreResult<Arc<dyn Store>> {
    Ok(Arc::new(RedisStore::connect(settings).await?))
}
