//! [`RedisStore`]: the [`Store`] methods as commands and scripts on the shared connection.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::{ScriptInvocation, Value};
use serde_json::Value as Json;
use tokio::sync::watch;
use uuid::Uuid;

use super::RedisSettings;
use super::link::{self, Link, Thread};
use super::model::{self, Keys, bound, hex};
use crate::store::{
    Collection, Culled, InstanceBeat, Store, StoreError, StoreResult, StoredTx, TxQuery, ttl_millis,
};
use crate::transaction::{Status, Transaction};

/// The most records one `put_transactions` script writes: a batch larger than this (or than
/// [`PUT_CHUNK_BYTES`]) goes in several scripts, one after the other, so that no script holds
/// Redis (every other client waits while a script runs) or outlasts the timeout. The recorder's
/// batches fit in one; a backlog replayed after an outage does not.
const PUT_CHUNK_RECORDS: usize = 2_000;
const PUT_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Records deleted by one script.
const DELETE_CHUNK: usize = 1_000;
/// Records read, culled and written back per round trip.
const CULL_CHUNK: usize = 200;
/// Candidates read per round trip by a listing whose filters no index answers.
const LIST_CHUNK_MIN: usize = 64;
const LIST_CHUNK_MAX: usize = 512;
/// A count past any real one, small enough for Redis (`LIMIT` takes a signed 64-bit integer) and
/// for Lua (whose numbers are doubles).
const UNLIMITED: usize = 1 << 53;
/// The longest heartbeat TTL stored (Lua's numbers would lose a larger expiry's digits).
const MAX_BEAT_TTL_MS: u64 = 10 * 365 * 24 * 3_600_000;

/// The Redis-backed store: every instance of a deployment shares one.
pub struct RedisStore {
    link: Arc<Link>,
    keys: Keys,
    /// What `subscribe` hands out; fed by this store's own writes, the pub/sub listener and the
    /// poller (only ever increased).
    generation: Arc<watch::Sender<u64>>,
    /// The thread every command and background task runs on. Last, so that it stops (ending
    /// the tasks) once the rest is gone.
    thread: Thread,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("link", &self.link)
            .field("prefix", &self.keys.prefix())
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl RedisStore {
    /// Runs one of the document scripts (KEYS: the collection's hash, the generation; ARGV: the id,
    /// the JSON when there is one, the changes channel), which returns the new generation, or 0
    /// when it changed nothing; announces and syncs a change. Returns whether there was one.
    async fn write_document(
        &self,
        what: &str,
        script: &'static redis::Script,
        collection: Collection,
        id: &str,
        json: Option<Vec<u8>>,
    ) -> StoreResult<bool> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.document(collection))
            .key(self.keys.generation())
            .arg(id);
        if let Some(json) = json {
            invocation.arg(json);
        }
        invocation.arg(self.keys.changes());
        let generation = model::int(self.script(what, invocation).await?, what)?;
        let Ok(generation @ 1..) = u64::try_from(generation) else {
            return Ok(false);
        };
        link::announce(&self.generation, generation);
        tracing::debug!(collection = collection.name(), %id, generation, "{what}: done.");
        self.sync().await?;
        Ok(true)
    }

    /// Connects (within `settings.timeout`, or fails saying where and why), warns if Redis would
    /// lose acknowledged writes in a crash, and starts the background tasks.
    pub async fn connect(settings: RedisSettings) -> StoreResult<RedisStore> {
        // redis-rs' TLS takes the process's default rustls provider; an error means that one is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let RedisSettings {
            target,
            prefix,
            timeout,
            poll_interval,
        } = settings;
        let thread = Thread::start()?;
        let opened = {
            let target = target.clone();
            thread
                .handle()
                .spawn(async move { link::open(&target, timeout, None).await })
                .await
                .map_err(|e| StoreError::Backend(format!("connecting to Redis: {e}")))?
        };
        let con = opened.map_err(|why| {
            StoreError::Unavailable(format!("cannot connect to Redis at {target}: {why}"))
        })?;
        let link = Arc::new(Link::new(
            target.clone(),
            timeout,
            thread.handle().clone(),
            con,
        ));
        thread.handle().spawn(Arc::clone(&link).reconnect());
        link::check_persistence(&link).await;
        let keys = Keys::new(&prefix);
        let store = RedisStore {
            link: Arc::clone(&link),
            keys,
            generation: Arc::new(watch::channel(0).0),
            thread,
        };
        let generation = store.generation().await?;
        link::announce(&store.generation, generation);
        let handle = store.thread.handle();
        handle.spawn(link::listen(
            Arc::clone(&link),
            store.keys.changes(),
            store.keys.generation(),
            Arc::clone(&store.generation),
        ));
        if matches!(target, super::RedisTarget::Sentinel { .. }) {
            handle.spawn(link::follow_primary(Arc::clone(&link), poll_interval));
        }
        handle.spawn(link::poll(
            link,
            store.keys.generation(),
            Arc::clone(&store.generation),
            poll_interval,
        ));
        tracing::info!(%target, prefix = %prefix, generation, "Connected to the Redis store.");
        Ok(store)
    }

    async fn query(&self, what: &str, command: redis::Cmd) -> StoreResult<Value> {
        self.link
            .call(what, move |mut con| async move {
                command.query_async::<Value>(&mut con).await
            })
            .await
    }

    async fn script(
        &self,
        what: &str,
        invocation: ScriptInvocation<'static>,
    ) -> StoreResult<Value> {
        self.link
            .call(what, move |mut con| async move {
                invocation.invoke_async::<Value>(&mut con).await
            })
            .await
    }

    /// `put_transactions` for one chunk of records: decide from the stored heads, write every
    /// entry, put back those a later stage keeps (see [`model::DECIDE_TRANSACTIONS`]), as one
    /// `MULTI`/`EXEC`. Returns how many records took the chunk's entry.
    async fn put_chunk(&self, chunk: Vec<(String, Vec<u8>)>) -> StoreResult<i64> {
        const WHAT: &str = "storing transactions";
        let (tx, keep) = (self.keys.tx(), self.keys.tx_keep());
        let mut decide = redis::cmd("EVAL");
        decide
            .arg(model::DECIDE_TRANSACTIONS.as_str())
            .arg(2)
            .arg(&tx)
            .arg(&keep)
            .arg(self.keys.prefix());
        let mut write = redis::cmd("HSET");
        write.arg(&tx);
        for (id, entry) in &chunk {
            decide.arg(id).arg(model::entry_head(entry));
            write.arg(id).arg(entry.as_slice());
        }
        let mut restore = redis::cmd("EVAL");
        restore.arg(model::RESTORE_KEPT).arg(2).arg(&tx).arg(&keep);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(decide)
            .add_command(write)
            .ignore()
            .add_command(restore)
            .ignore();
        let replies: Vec<Value> = self
            .link
            .call(WHAT, move |mut con| async move {
                pipe.query_async::<Vec<Value>>(&mut con).await
            })
            .await?;
        match replies.into_iter().next() {
            Some(taken) => model::int(taken, WHAT),
            None => Err(StoreError::Corrupt(format!(
                "{WHAT}: Redis answered EXEC with nothing"
            ))),
        }
    }

    /// Writes culled entries (id, entry read, entry without bodies), reading again and culling
    /// again those that changed meanwhile or are locked by a change; how many it wrote.
    async fn write_culled(
        &self,
        channel: &str,
        mut writes: Vec<(Uuid, Vec<u8>, Vec<u8>)>,
    ) -> StoreResult<u64> {
        const WHAT: &str = "writing culled transactions";
        let deadline = Instant::now() + self.link.timeout();
        let mut written = 0u64;
        loop {
            if writes.is_empty() {
                return Ok(written);
            }
            let mut invocation = model::WRITE_CULLED.prepare_invoke();
            invocation.key(self.keys.tx()).arg(self.keys.prefix());
            for (id, old, new) in &writes {
                invocation
                    .arg(hex(*id))
                    .arg(old.as_slice())
                    .arg(new.as_slice());
            }
            let busy = model::array(self.script(WHAT, invocation).await?, WHAT)?;
            written += (writes.len() - busy.len().min(writes.len())) as u64;
            if busy.is_empty() {
                return Ok(written);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "{WHAT}: {} records stayed locked by changes or kept changing",
                    busy.len()
                )));
            }
            self.link.pause(Duration::from_millis(10)).await;
            let mut ids = Vec::with_capacity(busy.len());
            for id in busy {
                let id =
                    model::bulk(id, WHAT)?.ok_or_else(|| model::unexpected(WHAT, &Value::Nil))?;
                ids.push(model::parse_hex(&id)?);
            }
            let mut again = redis::cmd("HMGET");
            again.arg(self.keys.tx());
            for id in &ids {
                again.arg(hex(*id));
            }
            let entries = model::array(self.query(WHAT, again).await?, WHAT)?;
            writes = Vec::new();
            for (id, entry) in ids.into_iter().zip(entries) {
                // Deleted meanwhile, or moved to another channel: no longer this cull's business.
                let Some(entry) = model::bulk(entry, WHAT)? else {
                    continue;
                };
                let head = model::read_entry(id, &entry)?;
                if head.channel != channel.as_bytes() {
                    continue;
                }
                if let Some(new) = without_bodies(id, &entry)? {
                    writes.push((id, entry, new));
                }
            }
        }
    }
}

fn decode(id: Uuid, entry: &[u8]) -> StoreResult<Transaction> {
    let entry = model::read_entry(id, entry)?;
    Transaction::decode(entry.record)
        .map_err(|e| StoreError::Corrupt(format!("transaction {id}: {e}")))
}

/// `entry` without its record's bodies (stage, status and channel kept), if it had any.
fn without_bodies(id: Uuid, entry: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    let head = model::read_entry(id, entry)?;
    let mut tx = decode(id, entry)?;
    if !tx.strip_bodies() {
        return Ok(None);
    }
    let channel = std::str::from_utf8(head.channel).map_err(|_| {
        StoreError::Corrupt(format!("transaction {id}: its channel id is not UTF-8"))
    })?;
    model::encode_entry(head.stage, head.status, channel, &tx.encode()).map(Some)
}

fn json(what: &str, bytes: &[u8]) -> StoreResult<Json> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

/// A `PX` argument for a script: the TTL in milliseconds, or empty for none.
fn px(ttl: Option<Duration>) -> String {
    ttl.map_or_else(String::new, |ttl| ttl_millis(ttl).to_string())
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.query("pinging", redis::cmd("PING")).await.map(|_| ())
    }

    // ----- documents -----

    async fn list(&self, collection: Collection) -> StoreResult<Vec<(String, Json)>> {
        let what = format!("listing {}", collection.name());
        let mut command = redis::cmd("HGETALL");
        command.arg(self.keys.document(collection));
        let items = model::array(self.query(&what, command).await?, &what)?;
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(id), Some(doc)) = (items.next(), items.next()) {
            let id = model::bulk(id, &what)?.unwrap_or_default();
            let id = String::from_utf8(id).map_err(|e| {
                StoreError::Corrupt(format!("{what}: a document id is not UTF-8: {e}"))
            })?;
            let doc = model::bulk(doc, &what)?.unwrap_or_default();
            let doc = json(&format!("{} document {id}", collection.name()), &doc)?;
            out.push((id, doc));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn get(&self, collection: Collection, id: &str) -> StoreResult<Option<Json>> {
        let what = format!("reading {} document {id}", collection.name());
        let mut command = redis::cmd("HGET");
        command.arg(self.keys.document(collection)).arg(id);
        match model::bulk(self.query(&what, command).await?, &what)? {
            Some(doc) => json(&what, &doc).map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, collection: Collection, id: &str, document: Json) -> StoreResult<()> {
        let what = format!("storing {} document {id}", collection.name());
        let bytes = to_json("a document", &document)?;
        self.write_document(&what, &model::PUT_DOCUMENT, collection, id, Some(bytes))
            .await
            .map(drop)
    }

    async fn create(&self, collection: Collection, id: &str, document: Json) -> StoreResult<bool> {
        let what = format!("creating {} document {id}", collection.name());
        let bytes = to_json("a document", &document)?;
        self.write_document(&what, &model::CREATE_DOCUMENT, collection, id, Some(bytes))
            .await
    }

    async fn delete(&self, collection: Collection, id: &str) -> StoreResult<bool> {
        let what = format!("deleting {} document {id}", collection.name());
        self.write_document(&what, &model::DELETE_DOCUMENT, collection, id, None)
            .await
    }

    async fn generation(&self) -> StoreResult<u64> {
        let mut command = redis::cmd("GET");
        command.arg(self.keys.generation());
        model::counter(
            self.query("reading the generation", command).await?,
            "the generation",
        )
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    // ----- transactions -----

    async fn put_transactions(&self, batch: Vec<StoredTx>) -> StoreResult<()> {
        let mut chunk: Vec<(String, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let mut written = 0i64;
        for tx in crate::store::latest_per_id(&batch) {
            let entry = model::encode_entry(tx.stage as u8, tx.status, &tx.channel_id, &tx.bytes)?;
            bytes += entry.len();
            chunk.push((hex(tx.id), entry));
            if chunk.len() >= PUT_CHUNK_RECORDS || bytes >= PUT_CHUNK_BYTES {
                written += self.put_chunk(std::mem::take(&mut chunk)).await?;
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            written += self.put_chunk(chunk).await?;
        }
        tracing::trace!(
            records = batch.len(),
            written,
            "Stored a batch of transactions."
        );
        Ok(())
    }

    async fn sync(&self) -> StoreResult<()> {
        self.link.sync(self.keys.sync_marker()).await
    }

    async fn transaction(&self, id: Uuid) -> StoreResult<Option<Transaction>> {
        let what = format!("reading transaction {id}");
        let mut command = redis::cmd("HGET");
        command.arg(self.keys.tx()).arg(hex(id));
        match model::bulk(self.query(&what, command).await?, &what)? {
            Some(entry) => decode(id, &entry).map(Some),
            None => Ok(None),
        }
    }

    /// A change holds the record's lock (a key with a random token and an expiry) from its read to
    /// its write, so that changes and culls of one record take turns. `change` can run only once,
    /// so a write that finds the record replaced meanwhile cannot apply it again; only
    /// `put_transactions` (a later or the same stage: the whole record) or `delete_transactions`
    /// can have done that under the lock, and either leaves what doing this change just before it
    /// would have left. So that counts as done.
    async fn modify_transaction(
        &self,
        id: Uuid,
        change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
    ) -> StoreResult<bool> {
        let what = format!("changing transaction {id}");
        let field = hex(id);
        let lock = self.keys.tx_lock(&field);
        let token = Uuid::new_v4().simple().to_string();
        let deadline = Instant::now() + self.link.timeout();
        // Long enough for the read, the change and the write, each within the timeout.
        let lock_ms = ttl_millis(self.link.timeout() * 3);
        let mut wait = Duration::from_millis(2);
        let old = loop {
            let mut invocation = model::LOCK_AND_READ.prepare_invoke();
            invocation
                .key(self.keys.tx())
                .key(&lock)
                .arg(&field)
                .arg(&token)
                .arg(lock_ms);
            let reply = model::array(self.script(&what, invocation).await?, &what)?;
            let mut reply = reply.into_iter();
            let code = reply.next().map(|v| model::int(v, &what)).transpose()?;
            match code {
                Some(0) => return Ok(false),
                Some(1) => {
                    let entry = reply
                        .next()
                        .map(|v| model::bulk(v, &what))
                        .transpose()?
                        .flatten();
                    break entry.ok_or_else(|| model::unexpected(&what, &Value::Nil))?;
                }
                Some(2) if Instant::now() < deadline => {
                    self.link.pause(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                Some(2) => {
                    return Err(StoreError::Unavailable(format!(
                        "{what}: another change of it has held it for {}",
                        humantime::format_duration(self.link.timeout())
                    )));
                }
                _ => return Err(model::unexpected(&what, &Value::Nil)),
            }
        };
        let new = (|| {
            let head = model::read_entry(id, &old)?;
            let mut tx = decode(id, &old)?;
            change(&mut tx);
            // The key is the id: a change cannot move the record.
            tx.id = id;
            model::encode_entry(head.stage, tx.status, &tx.channel_id, &tx.encode())
        })();
        let new = match new {
            Ok(new) => new,
            Err(error) => {
                let mut invocation = model::UNLOCK.prepare_invoke();
                invocation.key(&lock).arg(&token);
                if let Err(unlock) = self.script(&what, invocation).await {
                    tracing::debug!(%id, error = %unlock, "Could not unlock a transaction; its lock expires.");
                }
                return Err(error);
            }
        };
        let mut invocation = model::WRITE_AND_UNLOCK.prepare_invoke();
        invocation
            .key(self.keys.tx())
            .key(&lock)
            .arg(self.keys.prefix())
            .arg(&field)
            .arg(&token)
            .arg(old)
            .arg(new);
        match model::int(self.script(&what, invocation).await?, &what)? {
            1 => Ok(true),
            0 => {
                tracing::debug!(%id, "A transaction was replaced or deleted while it was being changed; the change counts as made before.");
                Ok(true)
            }
            2 => Err(StoreError::Unavailable(format!(
                "{what}: the change took longer than its lock lasts ({lock_ms} ms), and was not written"
            ))),
            other => Err(StoreError::Corrupt(format!(
                "{what}: Redis answered {other}"
            ))),
        }
    }

    async fn list_transactions(&self, query: &TxQuery) -> StoreResult<Vec<Transaction>> {
        const WHAT: &str = "listing transactions";
        let (lo, hi) = (query.min_id(), query.max_id());
        let (offset, limit) = (query.offset.min(UNLIMITED), query.limit.min(UNLIMITED));
        if limit == 0 || lo > hi {
            return Ok(Vec::new());
        }
        let mut statuses = query.statuses.clone();
        statuses.sort_by_key(|s| s.code());
        statuses.dedup();
        // Each index holds exactly the records of its channel and status.
        let indexes: Vec<String> = match (&query.channel_id, statuses.is_empty()) {
            (None, true) => vec![self.keys.tx_all()],
            (Some(channel), true) => self.keys.tx_channel(channel),
            (None, false) => statuses.iter().map(|&s| self.keys.tx_status(s)).collect(),
            (Some(channel), false) => statuses
                .iter()
                .map(|&s| self.keys.tx_channel_status(channel, s))
                .collect(),
        };
        let page = |from: &str, skip: usize, count: usize| {
            let mut invocation = model::PAGE.prepare_invoke();
            invocation.key(self.keys.tx());
            for index in &indexes {
                invocation.key(index);
            }
            invocation
                .arg(from)
                .arg(bound(true, lo))
                .arg(skip)
                .arg(count);
            invocation
        };
        // The time bounds are the ids' bounds, but a record's request time may differ from its
        // id's by a little, so they are checked on the record too (as the embedded store does).
        let filtered = query.from.is_some()
            || query.to.is_some()
            || query.response_status.is_some()
            || query.path.is_some();
        if !filtered {
            let found = self
                .script(WHAT, page(&bound(true, hi), offset, limit))
                .await?;
            return model::pairs(found, WHAT)?
                .iter()
                .map(|(id, entry)| decode(*id, entry))
                .collect();
        }
        // Newest first, a chunk at a time, until the page is full.
        let chunk = (offset + limit).clamp(LIST_CHUNK_MIN, LIST_CHUNK_MAX);
        let mut from = bound(true, hi);
        let mut skip = offset;
        let mut out = Vec::new();
        loop {
            let found = model::pairs(self.script(WHAT, page(&from, 0, chunk)).await?, WHAT)?;
            let complete = found.len() < chunk;
            for (id, entry) in found {
                from = bound(false, id);
                let tx = decode(id, &entry)?;
                if !query.matches(&tx) {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(tx);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            if complete {
                return Ok(out);
            }
        }
    }

    async fn processing(&self, after: Uuid, limit: usize) -> StoreResult<Vec<Uuid>> {
        const WHAT: &str = "listing transactions in flight";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut command = redis::cmd("ZRANGEBYLEX");
        command
            .arg(self.keys.tx_status(Status::Processing))
            .arg(bound(false, after))
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.min(UNLIMITED));
        let ids = model::array(self.query(WHAT, command).await?, WHAT)?;
        ids.into_iter()
            .map(|id| {
                let id =
                    model::bulk(id, WHAT)?.ok_or_else(|| model::unexpected(WHAT, &Value::Nil))?;
                model::parse_hex(&id)
            })
            .collect()
    }

    async fn newest_transaction(&self) -> StoreResult<Option<Uuid>> {
        const WHAT: &str = "finding the newest transaction";
        let mut command = redis::cmd("ZREVRANGEBYLEX");
        command
            .arg(self.keys.tx_all())
            .arg("+")
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        let ids = model::array(self.query(WHAT, command).await?, WHAT)?;
        match ids.into_iter().next() {
            None => Ok(None),
            Some(id) => {
                let id =
                    model::bulk(id, WHAT)?.ok_or_else(|| model::unexpected(WHAT, &Value::Nil))?;
                model::parse_hex(&id).map(Some)
            }
        }
    }

    async fn count_transactions(&self) -> StoreResult<u64> {
        const WHAT: &str = "counting transactions";
        let mut command = redis::cmd("ZCARD");
        command.arg(self.keys.tx_all());
        let count = model::int(self.query(WHAT, command).await?, WHAT)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn cull_bodies(
        &self,
        channel_id: &str,
        after: Uuid,
        before: Uuid,
        limit: usize,
    ) -> StoreResult<Culled> {
        const WHAT: &str = "culling transaction bodies";
        let mut culled = Culled::default();
        if limit == 0 || after >= before {
            return Ok(culled);
        }
        let indexes = self.keys.tx_channel(channel_id);
        let upper = bound(false, before);
        let mut from = bound(false, after);
        let mut left = limit;
        while left > 0 {
            let count = left.min(CULL_CHUNK);
            let mut invocation = model::RANGE.prepare_invoke();
            invocation.key(self.keys.tx());
            for index in &indexes {
                invocation.key(index);
            }
            invocation.arg(&from).arg(&upper).arg(count);
            let found = model::pairs(self.script(WHAT, invocation).await?, WHAT)?;
            let Some(&(last, _)) = found.last() else {
                break;
            };
            culled.visited += found.len() as u64;
            culled.last = Some(last);
            from = bound(false, last);
            left -= found.len().min(left);
            let complete = found.len() < count;
            let mut writes = Vec::new();
            for (id, entry) in found {
                if let Some(new) = without_bodies(id, &entry)? {
                    writes.push((id, entry, new));
                }
            }
            culled.changed += self.write_culled(channel_id, writes).await?;
            if complete {
                break;
            }
        }
        tracing::debug!(
            channel = channel_id,
            visited = culled.visited,
            changed = culled.changed,
            "Culled transaction bodies."
        );
        Ok(culled)
    }

    async fn delete_transactions(&self, before: Uuid, limit: usize) -> StoreResult<u64> {
        const WHAT: &str = "deleting transactions";
        let mut deleted = 0usize;
        while deleted < limit {
            let count = (limit - deleted).min(DELETE_CHUNK);
            let mut invocation = model::DELETE_TRANSACTIONS.prepare_invoke();
            invocation
                .key(self.keys.tx())
                .arg(self.keys.prefix())
                .arg(bound(false, before))
                .arg(count);
            let gone = model::int(self.script(WHAT, invocation).await?, WHAT)?;
            let gone = usize::try_from(gone).unwrap_or(0);
            deleted += gone;
            if gone < count {
                break;
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, %before, "Deleted old transactions.");
        }
        Ok(deleted as u64)
    }

    // ----- instances -----

    async fn heartbeat(&self, beat: &InstanceBeat, ttl: Duration) -> StoreResult<()> {
        const WHAT: &str = "storing a heartbeat";
        let json = to_json("a heartbeat", beat)?;
        let mut invocation = model::HEARTBEAT.prepare_invoke();
        invocation
            .key(self.keys.instances())
            .arg(&beat.instance)
            .arg(ttl_millis(ttl).min(MAX_BEAT_TTL_MS))
            .arg(json);
        self.script(WHAT, invocation).await.map(|_| ())
    }

    async fn instances(&self) -> StoreResult<Vec<InstanceBeat>> {
        const WHAT: &str = "listing instances";
        let mut invocation = model::INSTANCES.prepare_invoke();
        invocation.key(self.keys.instances());
        let beats = model::array(self.script(WHAT, invocation).await?, WHAT)?;
        let mut live = Vec::with_capacity(beats.len());
        for beat in beats {
            let beat = model::bulk(beat, WHAT)?.unwrap_or_default();
            let beat: InstanceBeat = serde_json::from_slice(&beat)
                .map_err(|e| StoreError::Corrupt(format!("{WHAT}: a heartbeat: {e}")))?;
            live.push(beat);
        }
        live.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(live)
    }

    async fn leave(&self, instance: &str, run_id: &str) -> StoreResult<()> {
        let mut invocation = model::LEAVE.prepare_invoke();
        invocation
            .key(self.keys.instances())
            .arg(instance)
            .arg(run_id);
        self.script("removing a heartbeat", invocation)
            .await
            .map(|_| ())
    }

    // ----- state -----

    async fn state(&self, key: &str) -> StoreResult<Option<Json>> {
        let what = format!("reading state {key}");
        let mut command = redis::cmd("HGET");
        command.arg(self.keys.state()).arg(key);
        match model::bulk(self.query(&what, command).await?, &what)? {
            Some(value) => json(&what, &value).map(Some),
            None => Ok(None),
        }
    }

    async fn set_state(&self, key: &str, value: Json) -> StoreResult<()> {
        let what = format!("writing state {key}");
        let mut command = redis::cmd("HSET");
        command
            .arg(self.keys.state())
            .arg(key)
            .arg(to_json("state", &value)?);
        self.query(&what, command).await.map(|_| ())
    }

    // ----- blobs -----

    async fn put_blob(&self, digest: &str, bytes: Bytes) -> StoreResult<()> {
        let what = format!("storing blob {digest}");
        let len = bytes.len();
        let mut command = redis::cmd("SET");
        command.arg(self.keys.blob(digest)).arg(&bytes[..]);
        self.query(&what, command).await?;
        self.sync().await?;
        tracing::debug!(digest, bytes = len, "Stored a blob.");
        Ok(())
    }

    async fn blob(&self, digest: &str) -> StoreResult<Option<Bytes>> {
        let what = format!("reading blob {digest}");
        let mut command = redis::cmd("GET");
        command.arg(self.keys.blob(digest));
        Ok(model::bulk(self.query(&what, command).await?, &what)?.map(Bytes::from))
    }

    async fn delete_blob(&self, digest: &str) -> StoreResult<bool> {
        let what = format!("deleting blob {digest}");
        let mut command = redis::cmd("DEL");
        command.arg(self.keys.blob(digest));
        let removed = model::int(self.query(&what, command).await?, &what)? > 0;
        if removed {
            self.sync().await?;
            tracing::debug!(digest, "Deleted a blob.");
        }
        Ok(removed)
    }

    // ----- plugin key-value -----

    async fn kv_get(&self, namespace: &str, key: &str) -> StoreResult<Option<Bytes>> {
        const WHAT: &str = "reading a key-value entry";
        let mut command = redis::cmd("GET");
        command.arg(self.keys.kv(namespace, key));
        Ok(model::bulk(self.query(WHAT, command).await?, WHAT)?.map(Bytes::from))
    }

    async fn kv_set(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<()> {
        let mut command = redis::cmd("SET");
        command.arg(self.keys.kv(namespace, key)).arg(&value[..]);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl_millis(ttl));
        }
        self.query("writing a key-value entry", command)
            .await
            .map(|_| ())
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> StoreResult<bool> {
        const WHAT: &str = "deleting a key-value entry";
        let mut command = redis::cmd("DEL");
        command.arg(self.keys.kv(namespace, key));
        Ok(model::int(self.query(WHAT, command).await?, WHAT)? > 0)
    }

    async fn kv_increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> StoreResult<i64> {
        const WHAT: &str = "incrementing a key-value entry";
        let mut invocation = model::KV_INCREMENT.prepare_invoke();
        invocation
            .key(self.keys.kv(namespace, key))
            .arg(delta.to_string())
            .arg(px(ttl));
        let Some(sum) = model::bulk(self.script(WHAT, invocation).await?, WHAT)? else {
            return Err(StoreError::NotAnInteger);
        };
        std::str::from_utf8(&sum)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{WHAT}: Redis answered {:?}",
                    String::from_utf8_lossy(&sum)
                ))
            })
    }

    async fn kv_compare_and_set(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<Bytes>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        const WHAT: &str = "compare-and-set of a key-value entry";
        let mut invocation = model::KV_COMPARE_AND_SET.prepare_invoke();
        invocation
            .key(self.keys.kv(namespace, key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.as_deref().unwrap_or_default())
            .arg(&value[..])
            .arg(px(ttl));
        Ok(model::int(self.script(WHAT, invocation).await?, WHAT)? == 1)
    }
}
