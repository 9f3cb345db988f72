//! The embedded backend: everything in one redb file, `mediary.redb` in the data directory, used
//! when no Redis is configured.
//!
//! It owns the file's layout:
//! - `doc_<collection>`: document id → JSON; `meta["generation"]`: the configuration generation,
//!   bumped in the same write transaction as the document change it counts.
//! - `transactions`: id (`u128`, time-ordered) → `[stage u8][status u8][channel len u16 LE]
//!   [channel][record]`. The header lets the writer apply the stage rule and keep the indexes right
//!   without decoding the MessagePack record after it.
//! - `tx_by_channel (channel, id)`, `tx_by_status (status, id)`,
//!   `tx_by_channel_status (channel, status, id)`: key-only indexes. The id is the last element,
//!   so a reversed range scan over one prefix yields newest first and a listing reads only the
//!   records it returns (plus the ones its unindexed filters reject).
//! - `state`: key → JSON for background tasks.
//!
//! redb is synchronous, so every call runs on tokio's blocking pool; the callers' (current-thread)
//! runtimes never wait on the disk.

use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Collection, Culled, Store, StoreError, StoreResult, StoredTx, TxQuery};
use crate::transaction::{RequestRecord, ResponseRecord, Stage, Status, Transaction};

/// The database file inside the data directory.
pub const FILE_NAME: &str = "mediary.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_channels");
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_clients");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_users");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_plugins");

const TRANSACTIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("transactions");
const BY_CHANNEL: TableDefinition<(&str, u128), ()> = TableDefinition::new("tx_by_channel");
const BY_STATUS: TableDefinition<(u8, u128), ()> = TableDefinition::new("tx_by_status");
const BY_CHANNEL_STATUS: TableDefinition<(&str, u8, u128), ()> =
    TableDefinition::new("tx_by_channel_status");

fn documents(collection: Collection) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match collection {
        Collection::Channels => CHANNELS,
        Collection::Clients => CLIENTS,
        Collection::Users => USERS,
        Collection::Plugins => PLUGINS,
    }
}

/// The redb-backed store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Held here (not in the blocking tasks) so that receivers outlive any one write; shared with
    /// the tasks so the new generation is sent even if the caller stops waiting after the commit.
    generation: Arc<watch::Sender<u64>>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` (file `mediary.redb`).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| {
            StoreError::Backend(format!("cannot open the store {}: {e}", path.display()))
        })?;
        // Creating every table once means read transactions never meet a missing one.
        let txn = begin_write(&db)?;
        let (generation, transactions) = {
            for collection in Collection::ALL {
                txn.open_table(documents(collection))
                    .context("creating a document table")?;
            }
            txn.open_table(STATE).context("creating the state table")?;
            Indexes::open(&txn)?;
            let meta = txn.open_table(META).context("creating the meta table")?;
            let generation = meta
                .get(GENERATION)
                .context("reading the generation")?
                .map_or(0, |g| g.value());
            let transactions = txn
                .open_table(TRANSACTIONS)
                .context("creating the transactions table")?
                .len()
                .context("counting transactions")?;
            (generation, transactions)
        };
        txn.commit().context("committing the new tables")?;
        tracing::info!(
            path = %path.display(),
            generation,
            transactions,
            "Opened the embedded store."
        );
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            generation: Arc::new(watch::channel(generation).0),
        })
    }

    /// Runs `work` on the blocking pool with the database.
    async fn run<T, F>(&self, what: &'static str, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("{what}: the blocking task failed: {e}")))?
    }
}

/// Adds what the store was doing to a redb error.
trait Context<T> {
    fn context(self, what: &'static str) -> StoreResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &'static str) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("{what}: {e}")))
    }
}

/// Every write transaction starts here, so the commit policy is set in one place.
///
/// Commits are durable (redb's default, one fsync per commit): the recorder drops its spool once
/// a batch is acknowledged, so an acknowledged batch must survive a crash; it writes whole
/// batches, which spreads that fsync over many records. Quick repair is on: it makes each commit
/// also save the allocator state (a second fsync), which keeps restarting after a crash instant
/// instead of a walk over a file that holds millions of records.
fn begin_write(db: &Database) -> StoreResult<WriteTransaction> {
    let mut txn = db.begin_write().context("beginning a write")?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Sends `next` unless a later generation was sent already (concurrent writes may finish their
/// commits and their sends in different orders).
fn announce(sender: &watch::Sender<u64>, next: u64) {
    sender.send_if_modified(|current| {
        if next > *current {
            *current = next;
            true
        } else {
            false
        }
    });
}

fn bump_generation(txn: &WriteTransaction) -> StoreResult<u64> {
    let mut meta = txn.open_table(META).context("opening the meta table")?;
    let next = meta
        .get(GENERATION)
        .context("reading the generation")?
        .map_or(0, |g| g.value())
        + 1;
    meta.insert(GENERATION, next)
        .context("writing the generation")?;
    Ok(next)
}

// ----- the transaction value -----

const HEADER_LEN: usize = 4;

/// A stored transaction value, read without decoding the record.
struct Header<'a> {
    stage: Stage,
    status: Status,
    channel: &'a str,
    record: &'a [u8],
}

fn corrupt(id: u128, why: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("transaction {}: {why}", Uuid::from_u128(id)))
}

fn read_header(id: u128, value: &[u8]) -> StoreResult<Header<'_>> {
    let Some(&[stage, status, len_lo, len_hi]) = value.first_chunk::<HEADER_LEN>() else {
        return Err(corrupt(id, "the value is shorter than its header"));
    };
    let stage = Stage::from_code(stage).ok_or_else(|| corrupt(id, "unknown stage"))?;
    let status = Status::from_code(status).ok_or_else(|| corrupt(id, "unknown status"))?;
    let end = HEADER_LEN + usize::from(u16::from_le_bytes([len_lo, len_hi]));
    let channel = value
        .get(HEADER_LEN..end)
        .ok_or_else(|| corrupt(id, "the channel id is cut short"))?;
    let channel =
        std::str::from_utf8(channel).map_err(|_| corrupt(id, "the channel id is not UTF-8"))?;
    Ok(Header {
        stage,
        status,
        channel,
        record: value.get(end..).unwrap_or_default(),
    })
}

/// Writes a value into `buf` (cleared first), so a batch reuses one allocation.
fn write_value(
    buf: &mut Vec<u8>,
    stage: Stage,
    status: Status,
    channel: &str,
    record: &[u8],
) -> StoreResult<()> {
    let len = u16::try_from(channel.len()).map_err(|_| {
        StoreError::Backend(format!(
            "a channel id of {} bytes is too long to store",
            channel.len()
        ))
    })?;
    buf.clear();
    buf.reserve(HEADER_LEN + channel.len() + record.len());
    buf.push(stage as u8);
    buf.push(status.code());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(channel.as_bytes());
    buf.extend_from_slice(record);
    Ok(())
}

fn decode(id: u128, record: &[u8]) -> StoreResult<Transaction> {
    Transaction::decode(record).map_err(|e| corrupt(id, e))
}

/// The three index tables of a write transaction.
struct Indexes<'t> {
    by_channel: Table<'t, (&'static str, u128), ()>,
    by_status: Table<'t, (u8, u128), ()>,
    by_channel_status: Table<'t, (&'static str, u8, u128), ()>,
}

impl Indexes<'_> {
    fn open(txn: &WriteTransaction) -> StoreResult<Indexes<'_>> {
        Ok(Indexes {
            by_channel: txn
                .open_table(BY_CHANNEL)
                .context("opening the channel index")?,
            by_status: txn
                .open_table(BY_STATUS)
                .context("opening the status index")?,
            by_channel_status: txn
                .open_table(BY_CHANNEL_STATUS)
                .context("opening the channel-status index")?,
        })
    }

    fn insert(&mut self, id: u128, channel: &str, status: Status) -> StoreResult<()> {
        let code = status.code();
        self.by_channel
            .insert((channel, id), ())
            .context("indexing by channel")?;
        self.by_status
            .insert((code, id), ())
            .context("indexing by status")?;
        self.by_channel_status
            .insert((channel, code, id), ())
            .context("indexing by channel and status")?;
        Ok(())
    }

    fn remove(&mut self, id: u128, channel: &str, status: Status) -> StoreResult<()> {
        let code = status.code();
        self.by_channel
            .remove((channel, id))
            .context("unindexing by channel")?;
        self.by_status
            .remove((code, id))
            .context("unindexing by status")?;
        self.by_channel_status
            .remove((channel, code, id))
            .context("unindexing by channel and status")?;
        Ok(())
    }

    /// Moves a record's entries when its status or channel changed.
    fn update(
        &mut self,
        id: u128,
        (old_channel, old_status): (&str, Status),
        (channel, status): (&str, Status),
    ) -> StoreResult<()> {
        if old_channel == channel && old_status == status {
            return Ok(());
        }
        self.remove(id, old_channel, old_status)?;
        self.insert(id, channel, status)
    }
}

// ----- transactions: the blocking halves -----

fn put_transactions(db: &Database, batch: &[StoredTx]) -> StoreResult<usize> {
    let mut txn = begin_write(db)?;
    // Not durable by itself: the recorder's spool holds these records until `sync` (fsyncing every
    // batch cost more than the proxying it records).
    txn.set_durability(redb::Durability::None)
        .context("choosing the commit durability")?;
    let mut written = 0;
    {
        let mut txs = txn
            .open_table(TRANSACTIONS)
            .context("opening the transactions table")?;
        let mut indexes = Indexes::open(&txn)?;
        let mut value = Vec::with_capacity(4096);
        let mut old_channel = String::new();
        for tx in batch {
            let id = tx.id.as_u128();
            write_value(&mut value, tx.stage, tx.status, &tx.channel_id, &tx.bytes)?;
            let old_status = match txs.get(id).context("reading a transaction")? {
                None => None,
                // A replayed record: writing it again would only copy pages.
                Some(old) if old.value() == value.as_slice() => continue,
                Some(old) => match read_header(id, old.value()) {
                    Ok(h) if h.stage > tx.stage => continue,
                    Ok(h) => {
                        old_channel.clear();
                        old_channel.push_str(h.channel);
                        Some(h.status)
                    }
                    // Refusing the batch would stall the recorder for good; the newer record is
                    // the best repair there is. Its old index entries (unknown) stay behind, which
                    // readers tolerate: they check every candidate's header.
                    Err(error) => {
                        tracing::warn!(%error, "Replacing an unreadable stored transaction.");
                        None
                    }
                },
            };
            txs.insert(id, value.as_slice())
                .context("writing a transaction")?;
            written += 1;
            match old_status {
                Some(old_status) => {
                    indexes.update(id, (&old_channel, old_status), (&tx.channel_id, tx.status))?
                }
                None => indexes.insert(id, &tx.channel_id, tx.status)?,
            }
        }
    }
    txn.commit().context("committing transactions")?;
    Ok(written)
}

/// An empty durable commit: makes every earlier non-durable commit durable.
fn sync(db: &Database) -> StoreResult<()> {
    let txn = begin_write(db)?;
    txn.commit().context("committing to disk")?;
    Ok(())
}

fn get_transaction(db: &Database, id: Uuid) -> StoreResult<Option<Transaction>> {
    let txn = db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    let key = id.as_u128();
    let Some(value) = txs.get(key).context("reading a transaction")? else {
        return Ok(None);
    };
    let header = read_header(key, value.value())?;
    decode(key, header.record).map(Some)
}

fn modify_transaction(
    db: &Database,
    id: Uuid,
    change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
) -> StoreResult<bool> {
    let key = id.as_u128();
    let txn = begin_write(db)?;
    {
        let mut txs = txn
            .open_table(TRANSACTIONS)
            .context("opening the transactions table")?;
        let (stage, old_status, old_channel, mut tx) =
            match txs.get(key).context("reading a transaction")? {
                None => return Ok(false),
                Some(value) => {
                    let header = read_header(key, value.value())?;
                    let tx = decode(key, header.record)?;
                    (header.stage, header.status, header.channel.to_owned(), tx)
                }
            };
        change(&mut tx);
        // The key is the id; a change cannot move the record.
        tx.id = id;
        let mut value = Vec::new();
        write_value(&mut value, stage, tx.status, &tx.channel_id, &tx.encode())?;
        txs.insert(key, value.as_slice())
            .context("writing a transaction")?;
        Indexes::open(&txn)?.update(
            key,
            (&old_channel, old_status),
            (&tx.channel_id, tx.status),
        )?;
    }
    txn.commit().context("committing a changed transaction")?;
    Ok(true)
}

/// Collects one page of a listing from candidates offered newest first.
struct Page<'q> {
    query: &'q TxQuery,
    /// Whether a candidate must be decoded to know if it matches (filters no index answers).
    needs_record: bool,
    skip: usize,
    out: Vec<Transaction>,
}

impl<'q> Page<'q> {
    fn new(query: &'q TxQuery) -> Page<'q> {
        Page {
            query,
            needs_record: query.from.is_some()
                || query.to.is_some()
                || query.response_status.is_some()
                || query.path.is_some(),
            skip: query.offset,
            out: Vec::with_capacity(query.limit.min(1000)),
        }
    }

    fn offer(&mut self, id: u128, value: &[u8]) -> StoreResult<ControlFlow<()>> {
        let header = read_header(id, value)?;
        // The header, not the index the candidate came from, is the truth.
        if self
            .query
            .channel_id
            .as_deref()
            .is_some_and(|c| c != header.channel)
            || (!self.query.statuses.is_empty() && !self.query.statuses.contains(&header.status))
        {
            return Ok(ControlFlow::Continue(()));
        }
        if !self.needs_record && self.skip > 0 {
            self.skip -= 1;
            return Ok(ControlFlow::Continue(()));
        }
        let tx = decode(id, header.record)?;
        if !self.query.matches(&tx) {
            return Ok(ControlFlow::Continue(()));
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(ControlFlow::Continue(()));
        }
        self.out.push(tx);
        Ok(if self.out.len() >= self.query.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    /// Offers the records of `ids` (from an index) until the page is full.
    fn fetch(
        &mut self,
        txs: &ReadOnlyTable<u128, &[u8]>,
        ids: impl Iterator<Item = redb::Result<u128>>,
    ) -> StoreResult<()> {
        for id in ids {
            let id = id.context("scanning an index")?;
            // An index entry without its record is left over from an unreadable value; skip it.
            let Some(value) = txs.get(id).context("reading a transaction")? else {
                continue;
            };
            if self.offer(id, value.value())?.is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// Merges per-status index scans, each newest first, into one newest-first stream of ids.
struct NewestFirst<I> {
    sources: Vec<I>,
    heads: Vec<Option<u128>>,
    primed: bool,
}

impl<I: Iterator<Item = redb::Result<u128>>> NewestFirst<I> {
    fn new(sources: Vec<I>) -> NewestFirst<I> {
        NewestFirst {
            heads: vec![None; sources.len()],
            sources,
            primed: false,
        }
    }

    fn advance(&mut self, source: usize) -> redb::Result<()> {
        self.heads[source] = self.sources[source].next().transpose()?;
        Ok(())
    }
}

impl<I: Iterator<Item = redb::Result<u128>>> Iterator for NewestFirst<I> {
    type Item = redb::Result<u128>;

    fn next(&mut self) -> Option<redb::Result<u128>> {
        if !self.primed {
            self.primed = true;
            for source in 0..self.sources.len() {
                if let Err(e) = self.advance(source) {
                    return Some(Err(e));
                }
            }
        }
        // A handful of sources at most (one per status): a linear pick beats a heap.
        let (source, id) = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, head)| head.map(|id| (i, id)))
            .max_by_key(|&(_, id)| id)?;
        if let Err(e) = self.advance(source) {
            return Some(Err(e));
        }
        Some(Ok(id))
    }
}

fn list_transactions(db: &Database, query: &TxQuery) -> StoreResult<Vec<Transaction>> {
    let (lo, hi) = (query.min_id().as_u128(), query.max_id().as_u128());
    if query.limit == 0 || lo > hi {
        return Ok(Vec::new());
    }
    let txn = db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    let mut page = Page::new(query);
    let mut statuses: Vec<u8> = query.statuses.iter().map(|s| s.code()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    match query.channel_id.as_deref() {
        None if statuses.is_empty() => {
            for entry in txs.range(lo..=hi).context("scanning transactions")?.rev() {
                let (id, value) = entry.context("scanning transactions")?;
                if page.offer(id.value(), value.value())?.is_break() {
                    break;
                }
            }
        }
        Some(channel) if statuses.is_empty() => {
            let index = txn
                .open_table(BY_CHANNEL)
                .context("opening the channel index")?;
            let ids = index
                .range((channel, lo)..=(channel, hi))
                .context("scanning the channel index")?
                .rev()
                .map(|entry| entry.map(|(key, _)| key.value().1));
            page.fetch(&txs, ids)?;
        }
        Some(channel) => {
            let index = txn
                .open_table(BY_CHANNEL_STATUS)
                .context("opening the channel-status index")?;
            let mut sources = Vec::with_capacity(statuses.len());
            for code in statuses {
                let ids = index
                    .range((channel, code, lo)..=(channel, code, hi))
                    .context("scanning the channel-status index")?
                    .rev()
                    .map(|entry| entry.map(|(key, _)| key.value().2));
                sources.push(ids);
            }
            page.fetch(&txs, NewestFirst::new(sources))?;
        }
        None => {
            let index = txn
                .open_table(BY_STATUS)
                .context("opening the status index")?;
            let mut sources = Vec::with_capacity(statuses.len());
            for code in statuses {
                let ids = index
                    .range((code, lo)..=(code, hi))
                    .context("scanning the status index")?
                    .rev()
                    .map(|entry| entry.map(|(key, _)| key.value().1));
                sources.push(ids);
            }
            page.fetch(&txs, NewestFirst::new(sources))?;
        }
    }
    Ok(page.out)
}

fn processing(db: &Database, limit: usize) -> StoreResult<Vec<Uuid>> {
    let txn = db.begin_read().context("beginning a read")?;
    let index = txn
        .open_table(BY_STATUS)
        .context("opening the status index")?;
    let code = Status::Processing.code();
    index
        .range((code, 0)..=(code, u128::MAX))
        .context("scanning the status index")?
        .take(limit)
        .map(|entry| {
            entry
                .map(|(key, _)| Uuid::from_u128(key.value().1))
                .context("scanning the status index")
        })
        .collect()
}

fn newest_transaction(db: &Database) -> StoreResult<Option<Uuid>> {
    let txn = db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    Ok(txs
        .last()
        .context("reading the newest transaction")?
        .map(|(id, _)| Uuid::from_u128(id.value())))
}

fn count_transactions(db: &Database) -> StoreResult<u64> {
    let txn = db.begin_read().context("beginning a read")?;
    txn.open_table(TRANSACTIONS)
        .context("opening the transactions table")?
        .len()
        .context("counting transactions")
}

/// Drops a request's body; whether it had one.
fn strip_request(request: &mut RequestRecord) -> bool {
    request.body_truncated = false;
    request.body.take().is_some()
}

fn strip_response(response: Option<&mut ResponseRecord>) -> bool {
    response.is_some_and(|r| {
        r.body_truncated = false;
        r.body.take().is_some()
    })
}

/// Drops every body a record holds; whether it held any.
fn strip_bodies(tx: &mut Transaction) -> bool {
    // `|` not `||`: every body goes, not just the first one found.
    let mut had = strip_request(&mut tx.request) | strip_response(tx.response.as_mut());
    for exchange in tx.routes.iter_mut().chain(tx.orchestrations.iter_mut()) {
        had |= strip_request(&mut exchange.request) | strip_response(exchange.response.as_mut());
    }
    had
}

fn cull_bodies(
    db: &Database,
    channel: &str,
    after: Uuid,
    before: Uuid,
    limit: usize,
) -> StoreResult<Culled> {
    let (after, before) = (after.as_u128(), before.as_u128());
    if limit == 0 || after >= before {
        return Ok(Culled::default());
    }
    let txn = begin_write(db)?;
    let mut culled = Culled::default();
    {
        let ids: Vec<u128> = {
            let index = txn
                .open_table(BY_CHANNEL)
                .context("opening the channel index")?;
            index
                .range((
                    Bound::Excluded((channel, after)),
                    Bound::Excluded((channel, before)),
                ))
                .context("scanning the channel index")?
                .take(limit)
                .map(|entry| {
                    entry
                        .map(|(key, _)| key.value().1)
                        .context("scanning the channel index")
                })
                .collect::<StoreResult<_>>()?
        };
        let mut txs = txn
            .open_table(TRANSACTIONS)
            .context("opening the transactions table")?;
        let mut value = Vec::new();
        for &id in &ids {
            culled.visited += 1;
            let (stage, status, mut tx) = {
                let Some(stored) = txs.get(id).context("reading a transaction")? else {
                    continue;
                };
                let header = read_header(id, stored.value())?;
                if header.channel != channel {
                    continue;
                }
                (header.stage, header.status, decode(id, header.record)?)
            };
            if !strip_bodies(&mut tx) {
                continue;
            }
            write_value(&mut value, stage, status, channel, &tx.encode())?;
            txs.insert(id, value.as_slice())
                .context("writing a transaction")?;
            culled.changed += 1;
        }
        culled.last = ids.last().copied().map(Uuid::from_u128);
    }
    txn.commit().context("committing culled bodies")?;
    Ok(culled)
}

fn delete_transactions(db: &Database, before: Uuid, limit: usize) -> StoreResult<u64> {
    if limit == 0 {
        return Ok(0);
    }
    let txn = begin_write(db)?;
    let mut deleted = 0;
    {
        let mut txs = txn
            .open_table(TRANSACTIONS)
            .context("opening the transactions table")?;
        let mut victims = Vec::new();
        for entry in txs
            .range(..before.as_u128())
            .context("scanning transactions")?
            .take(limit)
        {
            let (id, value) = entry.context("scanning transactions")?;
            let id = id.value();
            let indexed = match read_header(id, value.value()) {
                Ok(h) => Some((h.channel.to_owned(), h.status)),
                // Deleting is the cure for an unreadable record, not a reason to stop.
                Err(error) => {
                    tracing::warn!(%error, "Deleting an unreadable stored transaction.");
                    None
                }
            };
            victims.push((id, indexed));
        }
        let mut indexes = Indexes::open(&txn)?;
        for (id, indexed) in victims {
            txs.remove(id).context("deleting a transaction")?;
            if let Some((channel, status)) = indexed {
                indexes.remove(id, &channel, status)?;
            }
            deleted += 1;
        }
    }
    txn.commit().context("committing deletions")?;
    Ok(deleted)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", |db| {
            let txn = db.begin_read().context("beginning a read")?;
            txn.open_table(META).context("opening the meta table")?;
            Ok(())
        })
        .await
    }

    // ----- documents -----

    async fn list(&self, collection: Collection) -> StoreResult<Vec<(String, Value)>> {
        self.run("list documents", move |db| {
            let txn = db.begin_read().context("beginning a read")?;
            let table = txn
                .open_table(documents(collection))
                .context("opening a document table")?;
            let mut out = Vec::new();
            for entry in table.iter().context("listing documents")? {
                let (id, doc) = entry.context("listing documents")?;
                let id = id.value();
                let doc = serde_json::from_slice(doc.value()).map_err(|e| {
                    StoreError::Corrupt(format!("{} document {id}: {e}", collection.name()))
                })?;
                out.push((id.to_owned(), doc));
            }
            Ok(out)
        })
        .await
    }

    async fn get(&self, collection: Collection, id: &str) -> StoreResult<Option<Value>> {
        let id = id.to_owned();
        self.run("get a document", move |db| {
            let txn = db.begin_read().context("beginning a read")?;
            let table = txn
                .open_table(documents(collection))
                .context("opening a document table")?;
            let Some(doc) = table.get(id.as_str()).context("reading a document")? else {
                return Ok(None);
            };
            serde_json::from_slice(doc.value()).map(Some).map_err(|e| {
                StoreError::Corrupt(format!("{} document {id}: {e}", collection.name()))
            })
        })
        .await
    }

    async fn put(&self, collection: Collection, id: &str, document: Value) -> StoreResult<()> {
        let id = id.to_owned();
        let bytes = serde_json::to_vec(&document)
            .map_err(|e| StoreError::Backend(format!("encoding a document: {e}")))?;
        let sender = Arc::clone(&self.generation);
        self.run("put a document", move |db| {
            let txn = begin_write(db)?;
            let next = {
                txn.open_table(documents(collection))
                    .context("opening a document table")?
                    .insert(id.as_str(), bytes.as_slice())
                    .context("writing a document")?;
                bump_generation(&txn)?
            };
            txn.commit().context("committing a document")?;
            announce(&sender, next);
            tracing::debug!(collection = collection.name(), %id, generation = next, "Stored a document.");
            Ok(())
        })
        .await
    }

    async fn delete(&self, collection: Collection, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        let sender = Arc::clone(&self.generation);
        self.run("delete a document", move |db| {
            let txn = begin_write(db)?;
            let removed = txn
                .open_table(documents(collection))
                .context("opening a document table")?
                .remove(id.as_str())
                .context("deleting a document")?
                .is_some();
            if !removed {
                return Ok(false);
            }
            let next = bump_generation(&txn)?;
            txn.commit().context("committing a deletion")?;
            announce(&sender, next);
            tracing::debug!(collection = collection.name(), %id, generation = next, "Deleted a document.");
            Ok(true)
        })
        .await
    }

    async fn generation(&self) -> StoreResult<u64> {
        self.run("read the generation", |db| {
            let txn = db.begin_read().context("beginning a read")?;
            let meta = txn.open_table(META).context("opening the meta table")?;
            Ok(meta
                .get(GENERATION)
                .context("reading the generation")?
                .map_or(0, |g| g.value()))
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    // ----- transactions -----

    async fn sync(&self) -> StoreResult<()> {
        self.run("syncing", sync).await
    }

    async fn put_transactions(&self, batch: Vec<StoredTx>) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let written = self
            .run("store transactions", move |db| put_transactions(db, &batch))
            .await?;
        tracing::trace!(written, "Stored a batch of transactions.");
        Ok(())
    }

    async fn transaction(&self, id: Uuid) -> StoreResult<Option<Transaction>> {
        self.run("read a transaction", move |db| get_transaction(db, id))
            .await
    }

    async fn modify_transaction(
        &self,
        id: Uuid,
        change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
    ) -> StoreResult<bool> {
        self.run("modify a transaction", move |db| {
            modify_transaction(db, id, change)
        })
        .await
    }

    async fn list_transactions(&self, query: &TxQuery) -> StoreResult<Vec<Transaction>> {
        let query = query.clone();
        self.run("list transactions", move |db| list_transactions(db, &query))
            .await
    }

    async fn processing(&self, limit: usize) -> StoreResult<Vec<Uuid>> {
        self.run("list processing transactions", move |db| {
            processing(db, limit)
        })
        .await
    }

    async fn newest_transaction(&self) -> StoreResult<Option<Uuid>> {
        self.run("find the newest transaction", newest_transaction)
            .await
    }

    async fn count_transactions(&self) -> StoreResult<u64> {
        self.run("count transactions", count_transactions).await
    }

    async fn cull_bodies(
        &self,
        channel_id: &str,
        after: Uuid,
        before: Uuid,
        limit: usize,
    ) -> StoreResult<Culled> {
        let channel = channel_id.to_owned();
        let culled = self
            .run("cull bodies", move |db| {
                cull_bodies(db, &channel, after, before, limit)
            })
            .await?;
        tracing::debug!(
            channel = channel_id,
            visited = culled.visited,
            changed = culled.changed,
            "Culled transaction bodies."
        );
        Ok(culled)
    }

    async fn delete_transactions(&self, before: Uuid, limit: usize) -> StoreResult<u64> {
        let deleted = self
            .run("delete transactions", move |db| {
                delete_transactions(db, before, limit)
            })
            .await?;
        tracing::debug!(deleted, %before, "Deleted old transactions.");
        Ok(deleted)
    }

    // ----- state -----

    async fn state(&self, key: &str) -> StoreResult<Option<Value>> {
        let key = key.to_owned();
        self.run("read state", move |db| {
            let txn = db.begin_read().context("beginning a read")?;
            let table = txn.open_table(STATE).context("opening the state table")?;
            let Some(value) = table.get(key.as_str()).context("reading state")? else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("state {key}: {e}")))
        })
        .await
    }

    async fn set_state(&self, key: &str, value: Value) -> StoreResult<()> {
        let key = key.to_owned();
        let bytes = serde_json::to_vec(&value)
            .map_err(|e| StoreError::Backend(format!("encoding state: {e}")))?;
        self.run("write state", move |db| {
            let txn = begin_write(db)?;
            txn.open_table(STATE)
                .context("opening the state table")?
                .insert(key.as_str(), bytes.as_slice())
                .context("writing state")?;
            txn.commit().context("committing state")
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::contract::{self, put, record};

    async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (Arc::new(store), dir)
    }

    contract::store_contract_tests!(fresh());

    #[tokio::test]
    async fn a_reopened_store_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not").join("there");
        let records: Vec<Transaction> = (0..10)
            .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
            .collect();
        let processing = record(10, "a", Status::Processing);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert_eq!(store.kind(), "embedded");
            store
                .put(Collection::Channels, "a", json!({"name": "A"}))
                .await
                .unwrap();
            store
                .put(Collection::Users, "u", json!({"email": "u@example.org"}))
                .await
                .unwrap();
            put(&store, Stage::Final, &records).await;
            put(&store, Stage::Begun, std::slice::from_ref(&processing)).await;
            store.set_state("k", json!([1, 2])).await.unwrap();
        }
        assert!(path.join(FILE_NAME).is_file());

        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.generation().await.unwrap(), 2);
        assert_eq!(
            *store.subscribe().borrow(),
            2,
            "subscribers start at the stored generation"
        );
        assert_eq!(
            store.get(Collection::Channels, "a").await.unwrap(),
            Some(json!({"name": "A"}))
        );
        assert_eq!(store.list(Collection::Users).await.unwrap().len(), 1);
        assert_eq!(store.count_transactions().await.unwrap(), 11);
        assert_eq!(
            store.transaction(records[3].id).await.unwrap().as_ref(),
            Some(&records[3])
        );
        assert_eq!(store.processing(10).await.unwrap(), vec![processing.id]);
        let in_b = TxQuery {
            channel_id: Some("b".into()),
            statuses: vec![Status::Successful],
            limit: 100,
            ..TxQuery::default()
        };
        assert_eq!(contract::list_ids(&store, &in_b).await.len(), 5);
        assert_eq!(store.state("k").await.unwrap(), Some(json!([1, 2])));
        // The stage survives too: an earlier one still loses.
        let mut stale = records[0].clone();
        stale.status = Status::Processing;
        put(&store, Stage::Begun, &[stale]).await;
        assert_eq!(
            store.transaction(records[0].id).await.unwrap().as_ref(),
            Some(&records[0])
        );
    }

    #[tokio::test]
    async fn unreadable_records_are_reported_by_id() {
        let (store, _dir) = {
            let dir = tempfile::tempdir().unwrap();
            (EmbeddedStore::open(dir.path()).unwrap(), dir)
        };
        let good = record(1, "a", Status::Successful);
        put(&store, Stage::Final, std::slice::from_ref(&good)).await;
        let bad = contract::id_at(2, 0);
        let txn = store.db.begin_write().unwrap();
        {
            let mut txs = txn.open_table(TRANSACTIONS).unwrap();
            let mut value = Vec::new();
            write_value(
                &mut value,
                Stage::Final,
                Status::Failed,
                "a",
                b"\xc1 not msgpack",
            )
            .unwrap();
            txs.insert(bad.as_u128(), value.as_slice()).unwrap();
            txs.insert(contract::id_at(3, 0).as_u128(), &b"\x09"[..])
                .unwrap();
        }
        txn.commit().unwrap();

        let error = store.transaction(bad).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains(&bad.to_string())),
            "{error}"
        );
        let newest_first = TxQuery {
            limit: 10,
            ..TxQuery::default()
        };
        assert!(matches!(
            store.list_transactions(&newest_first).await,
            Err(StoreError::Corrupt(_))
        ));
        // Writing a record over an unreadable one repairs it (at any stage when even the header
        // is unreadable); deleting removes it.
        let mut repaired = record(2, "a", Status::Successful);
        repaired.id = bad;
        put(&store, Stage::Final, std::slice::from_ref(&repaired)).await;
        assert_eq!(store.transaction(bad).await.unwrap(), Some(repaired));
        let headless = record(3, "b", Status::Processing);
        put(&store, Stage::Begun, std::slice::from_ref(&headless)).await;
        assert_eq!(
            store.transaction(headless.id).await.unwrap(),
            Some(headless)
        );
        assert_eq!(contract::list_ids(&store, &newest_first).await.len(), 3);
        assert_eq!(store.delete_transactions(Uuid::max(), 10).await.unwrap(), 3);
        assert_eq!(store.count_transactions().await.unwrap(), 0);
    }
}
