//! The embedded backend, used when no Redis is configured: a redb file, `mediary.redb`, and the
//! transaction records' log, `records/`, both in the data directory.
//!
//! # Layout
//!
//! `mediary.redb`:
//! - `doc_<collection>`: document id → JSON; `meta["generation"]`: the configuration generation,
//!   bumped in the same write transaction as the document change it counts.
//! - `transactions`: id (`u128`, time-ordered) → an 18-byte entry: `[stage u8][status u8]
//!   [channel number u32][segment u32][offset u32][length u32]` (little-endian). The entry is what
//!   the writer needs for the stage rule and the indexes, and what a listing needs to filter by
//!   channel and status, without reading the record; the last three fields say where the record
//!   (the encoded [`Transaction`]) is in the log.
//! - `tx_channels`: channel id → its number (given on first use, never taken back).
//! - `tx_postings`: `[channel number u32][status u8][id u128]` (big-endian) → ids (16 bytes each,
//!   big-endian, ascending): the ids given that channel and status since the durable commit
//!   before (up to 1,024 per posting), keyed by the largest. Until their durable commit (`sync`,
//!   at least every second while the recorder writes) they are kept in memory, where readers see
//!   them too: writing them with each batch would copy a page per channel and status every time.
//!   Channel number `u32::MAX` stands for every channel (listings by status alone). A listing
//!   merges postings newest first, opening a posting only when its largest id is the next
//!   candidate. Postings are never rewritten: a record that changes channel or status is posted
//!   again and its old posting goes stale; readers check every candidate against its entry (the
//!   entry is the truth), and postings whose largest id is older than the oldest record are
//!   deleted with it.
//! - `tx_processing`: id → channel number, for the records whose status is `Processing`, exactly
//!   (that status is transient, so postings of it would be mostly stale).
//! - `tx_segments`: segment number → live records and live bytes in that log segment.
//! - `meta["tx_layout"]`: the version of this transaction layout; `state`: key → JSON.
//! - `blobs`: digest → bytes.
//! - `kv`: `[namespace length u32][namespace][key]` (big-endian) → `[expires u64][value]`
//!   (little-endian; expires: milliseconds since the epoch, 0 for never). The length keeps the
//!   pairs apart: namespace `a` with key `b:c` is not namespace `a:b` with key `c`.
//! - `kv_expiry`: `[expires u64][kv key]` (big-endian) → `()` for every entry that expires:
//!   the entries to purge, soonest first.
//!
//! `records/NNNNNNNNNN.log`: the log segments, appended to and never modified. A segment is
//! started when the current one passes [`SEGMENT_BYTES`], and deleted once no entry points into it
//! (the records were replaced, culled or deleted).
//!
//! # Why a log beside the database
//!
//! Recording must cost the proxy little: at 20,000 requests/s the whole budget is ~4–5 µs per
//! transaction, and a record is ~3.3 KB. As a redb value, a record (or a batch of records packed
//! into one value) costs a fresh page buffer that is zero-filled, a copy, a checksum, and a write
//! of that page from a cold cache at the next durable commit: ~5 µs per record before any index,
//! and one B-tree insert per record and index costs ~1.5 µs more each (`benches/tx_write.rs`).
//! Appending the batch's records to a file with one `writev` copies each record once, from the
//! recorder's buffers into the page cache; postings per channel and status replace per-record
//! index keys. What is left per record is one small redb insert (the entry) and the kernel's copy:
//! ~3 µs of CPU (before: ~16–20 µs).
//!
//! # Durability
//!
//! `put_transactions` appends to the log and commits without fsync. Every durable commit (`sync`,
//! and every other write) first writes the postings kept in memory and fdatasyncs the log segments
//! written since the last one (and the folder when a segment was created), so a durable entry
//! never points at bytes that a crash can lose, nor lacks its postings. Closing the store syncs it
//! too (redb makes pending commits durable when it closes). After a crash redb returns to its last
//! durable commit; log bytes written after it are garbage that nothing points to, and go when
//! their segment goes. A segment that no entry uses is deleted after the durable commit that made
//! it so; at open, such segments left by a crash are deleted too. Readers take the map of open
//! segment files before their read transaction, so a segment deleted meanwhile stays readable for
//! them. A backup must copy both `mediary.redb` and `records/`, the store stopped.
//!
//! Plugin key-value writes commit without fsync too: one per request would cost the proxy more
//! than the plugin's work. Unlike the recorder, nothing calls `sync` for them, so each marks the
//! store dirty ([`Pending`]) and a thread of the store's own makes a durable commit
//! [`FLUSH_AFTER`] later, unless another durable commit (the recorder's `sync`, a document write)
//! came first and covered them. A crash loses at most about that much of them. Blobs, written
//! rarely and relied on by the plugin document written next, commit durably.
//!
//! # Space
//!
//! A replaced, culled or deleted record's bytes stay in its segment until the whole segment is
//! unused. For the recorder's pattern (one record in ten written twice, `Processing` then final;
//! records deleted oldest first) that is a few percent. Culling the bodies of some channels but
//! not others frees nothing while the kept channels' records share the segments; there is no
//! compaction yet (`tx_segments` counts the live bytes it would need to choose segments).
//!
//! Expired key-value entries read as absent, but a read cannot delete them; every key-value write
//! deletes up to [`KV_PURGE`] of them, soonest expired first, and writing or deleting an expired
//! key replaces it. A rate limiter makes a key per window and client; the purge outpaces that,
//! so expired entries do not pile up.
//!
//! redb is synchronous, so every call runs on tokio's blocking pool; the callers' (current-thread)
//! runtimes never wait on the disk.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{IoSlice, Write as _};
use std::ops::{Bound, ControlFlow};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    AccessGuard, Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition, WriteTransaction,
};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    Collection, Culled, InstanceBeat, Store, StoreError, StoreResult, StoredTx, TxQuery, ttl_millis,
};
use crate::transaction::{Stage, Status, Timestamp, Transaction};

/// The database file inside the data directory.
pub const FILE_NAME: &str = "mediary.redb";
/// The folder of the record log inside the data directory.
pub const LOG_DIR: &str = "records";
/// A log segment is closed (and a new one started) once it holds this many bytes. Space comes back
/// a segment at a time, when nothing in it is alive.
pub const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// How long after a key-value write the store makes it durable, unless something else did first:
/// long enough that a busy rate limiter costs one durable commit a second, not one per request.
pub const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// The most expired key-value entries one write deletes: more than a write creates, so they never
/// pile up, and few enough that no write waits long for it.
const KV_PURGE: usize = 16;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
/// The transaction layout this code reads and writes (see the module documentation).
const TX_LAYOUT: &str = "tx_layout";
const TX_LAYOUT_VERSION: u64 = 2;
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const KV_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("kv_expiry");

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_channels");
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_clients");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_users");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_plugins");

const TRANSACTIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("transactions");
const CHANNEL_NUMBERS: TableDefinition<&str, u32> = TableDefinition::new("tx_channels");
const POSTINGS: TableDefinition<&[u8; 21], &[u8]> = TableDefinition::new("tx_postings");
const PROCESSING: TableDefinition<u128, u32> = TableDefinition::new("tx_processing");
/// Segment number → (live records, live bytes).
const SEGMENTS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("tx_segments");

/// The channel number of the postings that hold every channel's records.
const ANY_CHANNEL: u32 = u32::MAX;

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
    inner: Arc<Inner>,
    path: PathBuf,
    /// Held here (not in the blocking tasks) so that receivers outlive any one write; shared with
    /// the tasks so the new generation is sent even if the caller stops waiting after the commit.
    generation: Arc<watch::Sender<u64>>,
    /// The thread that makes key-value writes durable (see [`Pending`]); stopped and joined when
    /// the store is dropped, so that the last sync happens as the store closes, not after.
    flusher: Option<JoinHandle<()>>,
    /// Heartbeats, kept in memory: only this process uses an embedded store, so its cluster is
    /// itself, and a heartbeat from before a restart means nothing.
    beats: Mutex<HashMap<String, (InstanceBeat, std::time::Instant)>>,
}

/// What the blocking halves share.
struct Inner {
    db: Database,
    /// The log's writing end. Every write transaction that appends to the log or commits durably
    /// holds it from its start to its commit (redb has one writer at a time anyway), so a durable
    /// commit can sync the log first. Key-value writes do neither, and do not take it.
    log: Mutex<Log>,
    /// Every segment file, open for reading; replaced (not changed) when a segment comes or goes.
    segments: ArcSwap<Segments>,
    /// Postings not in `tx_postings` yet: written by the next durable commit (see
    /// [`Inner::commit_durable`]). Readers merge them with the table's.
    recent: Mutex<Recent>,
    /// Whether key-value writes wait for a durable commit; shared with the flusher thread.
    pending: Arc<Pending>,
}

type Segments = HashMap<u32, Arc<File>>;

/// Ids to post, by channel number and status code.
type Recent = BTreeMap<(u32, u8), Vec<u128>>;

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` (file `mediary.redb`, folder `records/`).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, SEGMENT_BYTES, FLUSH_AFTER)
    }

    fn open_with(
        dir: &Path,
        segment_bytes: u64,
        flush_after: Duration,
    ) -> Result<EmbeddedStore, StoreError> {
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
        let (generation, transactions, live) = {
            for collection in Collection::ALL {
                txn.open_table(documents(collection))
                    .context("creating a document table")?;
            }
            txn.open_table(STATE).context("creating the state table")?;
            txn.open_table(BLOBS).context("creating the blob table")?;
            KvTables::open(&txn)?;
            let tables = TxTables::open(&txn)?;
            let mut meta = txn.open_table(META).context("creating the meta table")?;
            let generation = meta
                .get(GENERATION)
                .context("reading the generation")?
                .map_or(0, |g| g.value());
            let transactions = tables.txs.len().context("counting transactions")?;
            let layout = meta
                .get(TX_LAYOUT)
                .context("reading the transaction layout")?
                .map(|v| v.value());
            match layout {
                Some(TX_LAYOUT_VERSION) => {}
                // Only the first development versions wrote transactions without this mark (each
                // record a redb value); their files are not worth a conversion.
                None if transactions > 0 => {
                    return Err(StoreError::Corrupt(format!(
                        "{} holds {transactions} transactions in the layout of an earlier \
                         development version of Mediary, which this version cannot read; move \
                         the file away to start afresh",
                        path.display()
                    )));
                }
                None => {
                    meta.insert(TX_LAYOUT, TX_LAYOUT_VERSION)
                        .context("writing the transaction layout")?;
                }
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "{} holds transactions in layout {other}, which this version of Mediary \
                         does not know (it knows {TX_LAYOUT_VERSION}): it was written by a newer \
                         version",
                        path.display()
                    )));
                }
            }
            (generation, transactions, tables.live_segments()?)
        };
        txn.commit().context("committing the new tables")?;
        let (log, segments) = Log::open(&dir.join(LOG_DIR), &live, segment_bytes)?;
        tracing::info!(
            path = %path.display(),
            generation,
            transactions,
            segments = segments.len(),
            "Opened the embedded store."
        );
        let pending = Arc::new(Pending::default());
        let inner = Arc::new(Inner {
            db,
            log: Mutex::new(log),
            segments: ArcSwap::from_pointee(segments),
            recent: Mutex::new(Recent::new()),
            pending: Arc::clone(&pending),
        });
        let flusher = {
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("store-flush".into())
                .spawn(move || flush(&inner, &pending, flush_after))
                .map_err(|e| StoreError::Backend(format!("cannot start the flush thread: {e}")))?
        };
        Ok(EmbeddedStore {
            inner,
            path,
            generation: Arc::new(watch::channel(generation).0),
            flusher: Some(flusher),
            beats: Mutex::default(),
        })
    }

    /// Runs `work` on the blocking pool.
    async fn run<T, F>(&self, what: &'static str, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("{what}: the blocking task failed: {e}")))?
    }
}

/// Adds what the store was doing to an error.
trait Context<T> {
    fn context(self, what: &'static str) -> StoreResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &'static str) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("{what}: {e}")))
    }
}

/// Every durable write transaction starts here, so the commit policy is set in one place.
///
/// Commits are durable (redb's default, one fsync per commit), except the recorder's batches (see
/// [`put_transactions`]), which [`sync`] makes durable later. Quick repair is on: it makes each
/// durable commit also save the allocator state (a second fsync), which keeps restarting after a
/// crash instant instead of a walk over a file that holds millions of entries.
fn begin_write(db: &Database) -> StoreResult<WriteTransaction> {
    let mut txn = db.begin_write().context("beginning a write")?;
    txn.set_quick_repair(true);
    Ok(txn)
}

impl Inner {
    /// The log's writing end; held for a whole write transaction.
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic half-way through an append leaves at worst garbage after the last good record,
        // which nothing points to.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A durable write: starts a transaction with the log held.
    fn begin_durable(&self) -> StoreResult<(MutexGuard<'_, Log>, WriteTransaction)> {
        let log = self.log();
        let txn = begin_write(&self.db)?;
        Ok((log, txn))
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        // Postings are only ever added whole, so a panic cannot leave one half-written.
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits a durable write (its transaction must have no transaction table open), after
    /// adding the recent postings to it and syncing the log: the commit makes every earlier
    /// `put_transactions` durable too, whose entries must not point at bytes a crash can lose, and
    /// whose postings must be in the table by then.
    fn commit_durable(
        &self,
        log: &mut Log,
        txn: WriteTransaction,
        what: &'static str,
    ) -> StoreResult<()> {
        let mut recent = self.recent();
        if !recent.is_empty() {
            let mut postings = txn.open_table(POSTINGS).context("opening the postings")?;
            let mut value = Vec::new();
            for (&(channel, code), ids) in recent.iter() {
                write_posting(&mut postings, channel, code, ids.clone(), &mut value)?;
            }
        }
        log.sync(&self.segments.load())?;
        // Cleared inside the transaction: a key-value write marks the store inside its own, so
        // none can slip between the clearing and the commit.
        let pending = self.pending.take();
        if let Err(error) = txn.commit() {
            if pending {
                self.pending.mark();
            }
            return Err(error).context(what);
        }
        recent.clear();
        Ok(())
    }
}

impl Drop for EmbeddedStore {
    /// Stops the flusher before `Inner` goes, so that `Inner`'s last sync runs here, and the file
    /// is closed (and may be opened again) when the store is dropped.
    fn drop(&mut self) {
        self.inner.pending.close();
        if let Some(flusher) = self.flusher.take()
            && flusher.join().is_err()
        {
            tracing::error!("The store's flush thread panicked.");
        }
    }
}

/// Whether non-durable writes that nobody else will sync (key-value writes; the recorder syncs its
/// own) wait for a durable commit, and how the flusher thread learns of it.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<PendingState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct PendingState {
    /// A key-value write committed (or is about to) since the last durable commit.
    dirty: bool,
    /// The store is being dropped: the flusher stops (the drop syncs).
    closing: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // Two booleans, each set whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a non-durable commit; called inside its write transaction.
    fn mark(&self) {
        let mut state = self.lock();
        if !state.dirty {
            state.dirty = true;
            self.wake.notify_one();
        }
    }

    /// Clears the mark for a durable commit about to be made; whether it was set.
    fn take(&self) -> bool {
        std::mem::take(&mut self.lock().dirty)
    }

    fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }
}

/// The flusher thread: a durable commit `after` the first key-value write that no durable commit
/// has covered yet. Holds the store only while it syncs, so that dropping the store closes it.
fn flush(inner: &Weak<Inner>, pending: &Pending, after: Duration) {
    loop {
        {
            let state = pending.lock();
            let state = pending
                .wake
                .wait_while(state, |s| !s.dirty && !s.closing)
                .unwrap_or_else(PoisonError::into_inner);
            // Writes gather for a while: one durable commit per `after`, however many writes.
            let (state, _) = pending
                .wake
                .wait_timeout_while(state, after, |s| !s.closing)
                .unwrap_or_else(PoisonError::into_inner);
            if state.closing {
                return;
            }
            if !state.dirty {
                // Another durable commit covered them.
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // On failure the mark stays, and the next round tries again.
        if let Err(error) = sync(&inner) {
            tracing::warn!(%error, "Could not make key-value writes durable; retrying.");
        }
    }
}

impl Drop for Inner {
    /// Closing the database makes its pending non-durable commits durable (redb does that on
    /// close), so the log and the recent postings they rely on must be on disk first: a last sync.
    fn drop(&mut self) {
        if let Err(error) = sync(self) {
            tracing::error!(%error, "Could not sync the store as it closed.");
        }
    }
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

// ----- the record log -----

/// The name of segment `n`.
fn segment_name(n: u32) -> String {
    format!("{n:010}.log")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// The writing end of the record log.
struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    /// The segment being appended to, its file (append mode) and length.
    current: u32,
    file: File,
    len: u64,
    /// Segments written since the last sync; whether the folder changed since.
    unsynced: BTreeSet<u32>,
    dir_unsynced: bool,
}

impl Log {
    /// Opens the log in `dir`: deletes the segments no entry uses (`live` are those used), except
    /// the last one, which is appended to.
    fn open(dir: &Path, live: &BTreeSet<u32>, segment_bytes: u64) -> StoreResult<(Log, Segments)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error("cannot create the record log folder", dir, e))?;
        let mut found = BTreeSet::new();
        for entry in
            std::fs::read_dir(dir).map_err(|e| io_error("cannot list the record log", dir, e))?
        {
            let entry = entry.map_err(|e| io_error("cannot list the record log", dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
                found.insert(n);
            }
        }
        // The last segment, or one past the last one entries use if its file is gone: a number
        // entries use must never name new bytes.
        let current = match (found.last().copied(), live.last().copied()) {
            (found, Some(used)) if found.is_none_or(|f| f < used) => used + 1,
            (found, _) => found.unwrap_or(0),
        };
        let mut dir_unsynced = !found.contains(&current);
        for &n in found
            .iter()
            .filter(|&&n| n != current && !live.contains(&n))
        {
            // Left by a crash between the commit that emptied it and its deletion.
            let path = dir.join(segment_name(n));
            std::fs::remove_file(&path)
                .map_err(|e| io_error("cannot delete the unused record segment", &path, e))?;
            dir_unsynced = true;
            tracing::info!(segment = n, "Deleted a record segment that nothing uses.");
        }
        for n in live.iter().filter(|n| !found.contains(n)) {
            tracing::error!(
                segment = n,
                "A record segment is missing: its transactions cannot be read."
            );
        }
        let path = dir.join(segment_name(current));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("cannot open the record segment", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error("cannot read the length of", &path, e))?
            .len();
        let mut segments = Segments::new();
        for n in found
            .into_iter()
            .filter(|n| *n == current || live.contains(n))
            .chain([current])
        {
            let path = dir.join(segment_name(n));
            let reader = File::open(&path)
                .map_err(|e| io_error("cannot open the record segment", &path, e))?;
            segments.insert(n, Arc::new(reader));
        }
        let log = Log {
            dir: dir.to_owned(),
            segment_bytes,
            current,
            file,
            len,
            unsynced: BTreeSet::new(),
            dir_unsynced,
        };
        Ok((log, segments))
    }

    /// Where `total` bytes appended next will start: the current segment, or a new one when they
    /// would take the current one past its size.
    fn reserve(&mut self, segments: &ArcSwap<Segments>, total: u64) -> StoreResult<(u32, u32)> {
        if self.len > 0 && self.len + total > self.segment_bytes.min(u64::from(u32::MAX)) {
            self.start_segment(segments)?;
        }
        if self.len + total > u64::from(u32::MAX) {
            return Err(StoreError::Backend(format!(
                "{total} bytes of records are more than one log segment holds"
            )));
        }
        let start = u32::try_from(self.len).unwrap_or(u32::MAX);
        Ok((self.current, start))
    }

    fn start_segment(&mut self, segments: &ArcSwap<Segments>) -> StoreResult<()> {
        let next = self.current + 1;
        let path = self.dir.join(segment_name(next));
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("cannot create the record segment", &path, e))?;
        let reader =
            File::open(&path).map_err(|e| io_error("cannot open the record segment", &path, e))?;
        let mut map = Segments::clone(&segments.load());
        map.insert(next, Arc::new(reader));
        segments.store(Arc::new(map));
        self.current = next;
        self.file = file;
        self.len = 0;
        self.dir_unsynced = true;
        tracing::debug!(segment = next, "Started a record segment.");
        Ok(())
    }

    /// Appends `records` to the current segment, where [`Log::reserve`] said.
    fn append(&mut self, records: &[&[u8]]) -> StoreResult<()> {
        let mut slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        let mut rest = &mut slices[..];
        let total: usize = records.iter().map(|r| r.len()).sum();
        while !rest.is_empty() {
            // Linux takes at most 1024 slices per call.
            let upto = rest.len().min(1024);
            match self.file.write_vectored(&rest[..upto]) {
                Ok(0) => {
                    return Err(self.failed_append(std::io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed_append(e)),
            }
        }
        self.len += total as u64;
        self.unsynced.insert(self.current);
        Ok(())
    }

    /// After a failed append: part of it may be in the file, so the length is taken from there
    /// (what was written is garbage nothing will point to).
    fn failed_append(&mut self, e: std::io::Error) -> StoreError {
        if let Ok(meta) = self.file.metadata() {
            self.len = meta.len();
        }
        self.unsynced.insert(self.current);
        io_error(
            "cannot append to the record segment",
            &self.dir.join(segment_name(self.current)),
            e,
        )
    }

    /// Makes everything appended so far durable.
    fn sync(&mut self, segments: &Segments) -> StoreResult<()> {
        for &n in &self.unsynced {
            if let Some(file) = segments.get(&n) {
                file.sync_data().map_err(|e| {
                    io_error(
                        "cannot sync the record segment",
                        &self.dir.join(segment_name(n)),
                        e,
                    )
                })?;
            }
        }
        self.unsynced.clear();
        if self.dir_unsynced {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("cannot sync the record log folder", &self.dir, e))?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Deletes the segments not in `live` (as of a durable commit just made), except the current.
    fn collect(&mut self, segments: &ArcSwap<Segments>, live: &BTreeSet<u32>) {
        let map = segments.load();
        let dead: Vec<u32> = map
            .keys()
            .copied()
            .filter(|n| *n != self.current && !live.contains(n))
            .collect();
        if dead.is_empty() {
            return;
        }
        let mut kept = Segments::clone(&map);
        for n in &dead {
            kept.remove(n);
        }
        // Readers that took the old map keep their open files: a deleted file stays readable
        // through them.
        segments.store(Arc::new(kept));
        for n in dead {
            let path = self.dir.join(segment_name(n));
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(segment = n, "Deleted a record segment."),
                Err(error) => {
                    tracing::warn!(
                        file = %path.display(),
                        %error,
                        "Could not delete an unused record segment."
                    )
                }
            }
            self.unsynced.remove(&n);
            self.dir_unsynced = true;
        }
    }
}

/// Reads records from the log for one operation.
struct Records<'i> {
    inner: &'i Inner,
    /// Taken before the read transaction: every segment it can point into is here, or was created
    /// after (and is in the current map).
    segments: Arc<Segments>,
    buf: Vec<u8>,
}

impl<'i> Records<'i> {
    fn new(inner: &'i Inner) -> Records<'i> {
        Records {
            inner,
            segments: inner.segments.load_full(),
            buf: Vec::new(),
        }
    }

    fn bytes(&mut self, id: u128, at: Location) -> StoreResult<&[u8]> {
        if !self.segments.contains_key(&at.segment) {
            self.segments = self.inner.segments.load_full();
        }
        let Some(file) = self.segments.get(&at.segment) else {
            return Err(corrupt(
                id,
                format!("its record segment {} is missing", at.segment),
            ));
        };
        self.buf.clear();
        self.buf.resize(at.len as usize, 0);
        file.read_exact_at(&mut self.buf, u64::from(at.offset))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => corrupt(
                    id,
                    format!("its record lies past the end of segment {}", at.segment),
                ),
                _ => StoreError::Backend(format!(
                    "reading transaction {} from segment {}: {e}",
                    Uuid::from_u128(id),
                    at.segment
                )),
            })?;
        Ok(&self.buf)
    }

    fn decode(&mut self, id: u128, at: Location) -> StoreResult<Transaction> {
        decode(id, self.bytes(id, at)?)
    }
}

// ----- entries and keys -----

/// Where a record is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: u32,
    offset: u32,
    len: u32,
}

/// An entry's length: stage, status, channel number, location.
const ENTRY_LEN: usize = 2 + 4 + 4 + 4 + 4;

/// A transaction's entry, read without touching its record.
#[derive(Debug, Clone, Copy)]
struct Entry {
    stage: Stage,
    status: Status,
    /// The channel's number (`tx_channels`).
    channel: u32,
    at: Location,
}

fn corrupt(id: u128, why: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("transaction {}: {why}", Uuid::from_u128(id)))
}

impl Entry {
    fn read(id: u128, value: &[u8]) -> StoreResult<Entry> {
        let Some(bytes) = value.first_chunk::<ENTRY_LEN>() else {
            return Err(corrupt(id, "its entry is shorter than it should be"));
        };
        let [
            stage,
            status,
            c0,
            c1,
            c2,
            c3,
            s0,
            s1,
            s2,
            s3,
            o0,
            o1,
            o2,
            o3,
            l0,
            l1,
            l2,
            l3,
        ] = *bytes;
        Ok(Entry {
            stage: Stage::from_code(stage).ok_or_else(|| corrupt(id, "unknown stage"))?,
            status: Status::from_code(status).ok_or_else(|| corrupt(id, "unknown status"))?,
            channel: u32::from_le_bytes([c0, c1, c2, c3]),
            at: Location {
                segment: u32::from_le_bytes([s0, s1, s2, s3]),
                offset: u32::from_le_bytes([o0, o1, o2, o3]),
                len: u32::from_le_bytes([l0, l1, l2, l3]),
            },
        })
    }

    fn bytes(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = self.stage as u8;
        out[1] = self.status.code();
        out[2..6].copy_from_slice(&self.channel.to_le_bytes());
        out[6..10].copy_from_slice(&self.at.segment.to_le_bytes());
        out[10..14].copy_from_slice(&self.at.offset.to_le_bytes());
        out[14..18].copy_from_slice(&self.at.len.to_le_bytes());
        out
    }
}

/// A `tx_postings` key: channel number, status code, the posting's largest id (big-endian, so byte
/// order is this order).
fn posting_key(channel: u32, code: u8, id: u128) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[..4].copy_from_slice(&channel.to_be_bytes());
    key[4] = code;
    key[5..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The id at the end of a posting key.
fn id_of(key: &[u8; 21]) -> u128 {
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[5..]);
    u128::from_be_bytes(id)
}

/// The ids of a posting, ascending.
fn posting_ids(value: &[u8]) -> StoreResult<impl DoubleEndedIterator<Item = u128> + '_> {
    if !value.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt(format!(
            "a transaction posting of {} bytes is not a list of ids",
            value.len()
        )));
    }
    Ok(value.chunks_exact(16).map(|id| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(id);
        u128::from_be_bytes(bytes)
    }))
}

fn decode(id: u128, record: &[u8]) -> StoreResult<Transaction> {
    Transaction::decode(record).map_err(|e| corrupt(id, e))
}

const PROCESSING_CODE: u8 = 0;

/// The status codes that have postings (all but `Processing`).
fn posted_codes() -> impl Iterator<Item = u8> {
    Status::ALL
        .into_iter()
        .map(Status::code)
        .filter(|&c| c != PROCESSING_CODE)
}

// ----- writing -----

/// The transaction tables of a write transaction, and the changes it gathers to write at the end.
struct TxTables<'t> {
    txs: Table<'t, u128, &'static [u8]>,
    channels: Table<'t, &'static str, u32>,
    postings: Table<'t, &'static [u8; 21], &'static [u8]>,
    processing: Table<'t, u128, u32>,
    segments: Table<'t, u32, (u64, u64)>,
    /// Channel numbers this write transaction has looked up already.
    known: HashMap<Box<str>, u32>,
    /// Ids to post, by channel number and status code.
    posts: BTreeMap<(u32, u8), Vec<u128>>,
    /// Records and bytes added to and released from each segment.
    added: BTreeMap<u32, (u64, u64)>,
    released: BTreeMap<u32, (u64, u64)>,
}

impl TxTables<'_> {
    fn open(txn: &WriteTransaction) -> StoreResult<TxTables<'_>> {
        Ok(TxTables {
            txs: txn
                .open_table(TRANSACTIONS)
                .context("opening the transactions table")?,
            channels: txn
                .open_table(CHANNEL_NUMBERS)
                .context("opening the channel numbers")?,
            postings: txn.open_table(POSTINGS).context("opening the postings")?,
            processing: txn
                .open_table(PROCESSING)
                .context("opening the processing table")?,
            segments: txn
                .open_table(SEGMENTS)
                .context("opening the segment table")?,
            known: HashMap::new(),
            posts: BTreeMap::new(),
            added: BTreeMap::new(),
            released: BTreeMap::new(),
        })
    }

    /// The number of `channel`, given one if it has none yet.
    fn channel_number(&mut self, channel: &str) -> StoreResult<u32> {
        if let Some(&number) = self.known.get(channel) {
            return Ok(number);
        }
        let stored = self
            .channels
            .get(channel)
            .context("reading a channel number")?
            .map(|n| n.value());
        let number = match stored {
            Some(number) => number,
            None => {
                // Numbers are never taken back, so the count is the next one.
                let count = self.channels.len().context("counting channel numbers")?;
                let number = u32::try_from(count)
                    .ok()
                    .filter(|&n| n != ANY_CHANNEL)
                    .ok_or_else(|| StoreError::Backend("too many channels".into()))?;
                self.channels
                    .insert(channel, number)
                    .context("numbering a channel")?;
                number
            }
        };
        self.known.insert(channel.into(), number);
        Ok(number)
    }

    /// The entry of `id`, if there is one.
    fn entry(&self, id: u128) -> StoreResult<Option<Entry>> {
        match self.txs.get(id).context("reading a transaction")? {
            Some(value) => Entry::read(id, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `new` as the entry of `id` (which had `old`): the entry, the segment counts, and what
    /// the indexes need.
    fn write(&mut self, id: u128, old: Option<&Entry>, new: &Entry) -> StoreResult<()> {
        self.txs
            .insert(id, &new.bytes()[..])
            .context("writing a transaction")?;
        let added = self.added.entry(new.at.segment).or_default();
        added.0 += 1;
        added.1 += u64::from(new.at.len);
        if let Some(old) = old {
            self.release(old.at);
        }
        let was_processing = old.is_some_and(|o| o.status == Status::Processing);
        if new.status == Status::Processing {
            if !was_processing || old.is_some_and(|o| o.channel != new.channel) {
                self.processing
                    .insert(id, new.channel)
                    .context("noting a transaction in flight")?;
            }
            return Ok(());
        }
        if was_processing {
            self.processing
                .remove(id)
                .context("noting a transaction done")?;
        }
        let status_changed = old.is_none_or(|o| o.status != new.status);
        let code = new.status.code();
        if status_changed || old.is_some_and(|o| o.channel != new.channel) {
            self.posts.entry((new.channel, code)).or_default().push(id);
        }
        if status_changed {
            self.posts.entry((ANY_CHANNEL, code)).or_default().push(id);
        }
        Ok(())
    }

    /// Removes the entry of `id`.
    fn delete(&mut self, id: u128, old: Option<&Entry>) -> StoreResult<()> {
        self.txs.remove(id).context("deleting a transaction")?;
        match old {
            Some(old) => {
                self.release(old.at);
                if old.status == Status::Processing {
                    self.processing
                        .remove(id)
                        .context("noting a transaction gone")?;
                }
            }
            // Whatever it was, it is not in flight any more.
            None => {
                self.processing
                    .remove(id)
                    .context("noting a transaction gone")?;
            }
        }
        Ok(())
    }

    fn release(&mut self, at: Location) {
        let released = self.released.entry(at.segment).or_default();
        released.0 += 1;
        released.1 += u64::from(at.len);
    }

    /// Writes the segment counts gathered, and hands the postings to `recent` (where readers see
    /// them at once, and the next durable commit writes them): postings of every write would
    /// cost a page copy per channel and status each time.
    fn finish(&mut self, recent: &Mutex<Recent>) -> StoreResult<()> {
        if !self.posts.is_empty() {
            let mut recent = recent.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, ids) in std::mem::take(&mut self.posts) {
                recent.entry(key).or_default().extend(ids);
            }
        }
        let touched: BTreeSet<u32> = self
            .added
            .keys()
            .chain(self.released.keys())
            .copied()
            .collect();
        for segment in touched {
            let (records, bytes) = self
                .segments
                .get(segment)
                .context("reading a segment's count")?
                .map_or((0, 0), |v| v.value());
            let (add_records, add_bytes) = self.added.get(&segment).copied().unwrap_or_default();
            let (gone_records, gone_bytes) =
                self.released.get(&segment).copied().unwrap_or_default();
            let records = records + add_records;
            if gone_records > records {
                // Losing some space beats deleting records that may still be there.
                tracing::warn!(
                    segment,
                    records,
                    gone_records,
                    "A record segment's count is wrong; keeping the segment."
                );
                continue;
            }
            if records == gone_records {
                self.segments
                    .remove(segment)
                    .context("forgetting a segment")?;
            } else {
                let bytes = (bytes + add_bytes).saturating_sub(gone_bytes);
                self.segments
                    .insert(segment, (records - gone_records, bytes))
                    .context("counting a segment")?;
            }
        }
        self.added.clear();
        self.released.clear();
        Ok(())
    }

    /// The segments some entry points into.
    fn live_segments(&self) -> StoreResult<BTreeSet<u32>> {
        self.segments
            .iter()
            .context("listing segments")?
            .map(|entry| entry.map(|(n, _)| n.value()).context("listing segments"))
            .collect()
    }

    /// Deletes the postings that can only hold deleted records: those whose largest id is below
    /// the oldest record's (all of them when there is none).
    fn prune_postings(&mut self) -> StoreResult<()> {
        let oldest = self
            .txs
            .first()
            .context("finding the oldest transaction")?
            .map(|(id, _)| id.value());
        if oldest == Some(0) {
            return Ok(());
        }
        let below = oldest.map_or(u128::MAX, |o| o - 1);
        let mut channels: Vec<u32> = self
            .channels
            .iter()
            .context("listing channel numbers")?
            .map(|entry| {
                entry
                    .map(|(_, n)| n.value())
                    .context("listing channel numbers")
            })
            .collect::<StoreResult<_>>()?;
        channels.push(ANY_CHANNEL);
        let mut dead: Vec<[u8; 21]> = Vec::new();
        for channel in channels {
            for code in posted_codes() {
                let (from, to) = (
                    posting_key(channel, code, 0),
                    posting_key(channel, code, below),
                );
                for entry in self
                    .postings
                    .range::<&[u8; 21]>(&from..=&to)
                    .context("finding old postings")?
                {
                    let (key, _) = entry.context("finding old postings")?;
                    dead.push(*key.value());
                }
            }
        }
        for key in &dead {
            self.postings.remove(key).context("deleting a posting")?;
        }
        Ok(())
    }
}

/// The most ids in one posting (16 KB): a listing reads a whole posting to take its newest ids.
const POSTING_IDS: usize = 1024;

/// Writes the postings of `ids` for one channel and status, up to [`POSTING_IDS`] in each (each
/// joined with the one already under its key, which only happens when an id is posted twice for
/// one channel and status).
fn write_posting(
    postings: &mut Table<'_, &'static [u8; 21], &'static [u8]>,
    channel: u32,
    code: u8,
    mut ids: Vec<u128>,
    value: &mut Vec<u8>,
) -> StoreResult<()> {
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(POSTING_IDS) {
        let Some(&largest) = chunk.last() else {
            continue;
        };
        let key = posting_key(channel, code, largest);
        value.clear();
        for id in chunk {
            value.extend_from_slice(&id.to_be_bytes());
        }
        let earlier = postings
            .insert(&key, value.as_slice())
            .context("writing a posting")?
            .map(|old| old.value().to_vec());
        if let Some(earlier) = earlier {
            let mut joined: Vec<u128> = posting_ids(&earlier)?
                .chain(chunk.iter().copied())
                .collect();
            joined.sort_unstable();
            joined.dedup();
            value.clear();
            for id in &joined {
                value.extend_from_slice(&id.to_be_bytes());
            }
            postings
                .insert(&key, value.as_slice())
                .context("writing a posting")?;
        }
    }
    Ok(())
}

/// What a batch record finds stored under its id.
enum Existing {
    None,
    /// A later stage, or the very same record: nothing to write.
    Keep,
    /// An earlier or the same stage: replace it.
    Replace(Entry),
}

fn existing(
    tables: &TxTables<'_>,
    records: &mut Records<'_>,
    tx: &StoredTx,
    new: &Entry,
) -> StoreResult<Existing> {
    let id = tx.id.as_u128();
    let old = match tables.entry(id) {
        Ok(Some(entry)) => entry,
        Ok(None) => return Ok(Existing::None),
        Err(error @ StoreError::Corrupt(_)) => {
            // Refusing the batch would stall the recorder for good; the newer record is the best
            // repair there is (what the unreadable entry was posted under stays stale, and is
            // skipped: readers check every candidate's entry).
            tracing::warn!(%error, "Replacing an unreadable stored transaction.");
            return Ok(Existing::None);
        }
        Err(error) => return Err(error),
    };
    if old.stage > new.stage {
        return Ok(Existing::Keep);
    }
    // A replayed record: writing it again would only copy bytes.
    if old.stage == new.stage
        && old.status == new.status
        && old.channel == new.channel
        && old.at.len == new.at.len
        && records
            .bytes(id, old.at)
            .is_ok_and(|stored| stored == &tx.bytes[..])
    {
        return Ok(Existing::Keep);
    }
    Ok(Existing::Replace(old))
}

fn record_len(bytes: &[u8]) -> StoreResult<u32> {
    u32::try_from(bytes.len())
        .map_err(|_| StoreError::Backend(format!("a record of {} bytes", bytes.len())))
}

// ----- transactions: the blocking halves -----

fn put_transactions(inner: &Inner, batch: &[StoredTx]) -> StoreResult<usize> {
    let batch = super::latest_per_id(batch);
    let mut log = inner.log();
    let mut records = Records::new(inner);
    let mut txn = inner.db.begin_write().context("beginning a write")?;
    // Not durable by itself: the recorder's spool holds these records until `sync` (fsyncing every
    // batch cost more than the proxying it records). No quick repair either: it only acts on
    // durable commits, where `sync` asks for it.
    txn.set_durability(redb::Durability::None)
        .context("choosing the commit durability")?;
    let written = {
        let mut tables = TxTables::open(&txn)?;
        // Ids above the newest stored one are new: no need to look them up. In the recorder's
        // batches most are (ids are time-ordered, and the batch is sorted).
        let newest = tables
            .txs
            .last()
            .context("finding the newest transaction")?
            .map(|(id, _)| id.value());
        let mut accepted: Vec<(&StoredTx, Entry, Option<Entry>)> = Vec::with_capacity(batch.len());
        let mut total = 0u64;
        for tx in batch {
            let id = tx.id.as_u128();
            let entry = Entry {
                stage: tx.stage,
                status: tx.status,
                channel: tables.channel_number(&tx.channel_id)?,
                at: Location {
                    segment: 0,
                    offset: 0,
                    len: record_len(&tx.bytes)?,
                },
            };
            let old = match newest {
                Some(newest) if id <= newest => {
                    match existing(&tables, &mut records, tx, &entry)? {
                        Existing::Keep => continue,
                        Existing::Replace(old) => Some(old),
                        Existing::None => None,
                    }
                }
                _ => None,
            };
            total += u64::from(entry.at.len);
            accepted.push((tx, entry, old));
        }
        if accepted.is_empty() {
            // A replay: nothing to write (the transaction is dropped unwritten).
            return Ok(0);
        }
        let (segment, mut offset) = log.reserve(&inner.segments, total)?;
        let mut bytes: Vec<&[u8]> = Vec::with_capacity(accepted.len());
        for (tx, entry, old) in &mut accepted {
            entry.at.segment = segment;
            entry.at.offset = offset;
            offset += entry.at.len;
            tables.write(tx.id.as_u128(), old.as_ref(), entry)?;
            bytes.push(&tx.bytes);
        }
        tables.finish(&inner.recent)?;
        // Last, so that a failure before leaves nothing in the log; a failure after leaves bytes
        // nothing points to (the transaction is not committed).
        log.append(&bytes)?;
        accepted.len()
    };
    txn.commit().context("committing transactions")?;
    Ok(written)
}

/// Makes every earlier write durable: the log synced, then an empty durable commit; then deletes
/// the segments nothing uses any more.
fn sync(inner: &Inner) -> StoreResult<()> {
    let (mut log, txn) = inner.begin_durable()?;
    let live = TxTables::open(&txn)?.live_segments()?;
    inner.commit_durable(&mut log, txn, "committing to disk")?;
    log.collect(&inner.segments, &live);
    Ok(())
}

fn get_transaction(inner: &Inner, id: Uuid) -> StoreResult<Option<Transaction>> {
    let mut records = Records::new(inner);
    let txn = inner.db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    let key = id.as_u128();
    let Some(value) = txs.get(key).context("reading a transaction")? else {
        return Ok(None);
    };
    let entry = Entry::read(key, value.value())?;
    records.decode(key, entry.at).map(Some)
}

fn modify_transaction(
    inner: &Inner,
    id: Uuid,
    change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
) -> StoreResult<bool> {
    let key = id.as_u128();
    let (mut log, txn) = inner.begin_durable()?;
    let mut records = Records::new(inner);
    {
        let mut tables = TxTables::open(&txn)?;
        let Some(old) = tables.entry(key)? else {
            return Ok(false);
        };
        let mut tx = records.decode(key, old.at)?;
        change(&mut tx);
        // The key is the id; a change cannot move the record.
        tx.id = id;
        let bytes = tx.encode();
        let len = record_len(&bytes)?;
        let (segment, offset) = log.reserve(&inner.segments, u64::from(len))?;
        let new = Entry {
            stage: old.stage,
            status: tx.status,
            channel: tables.channel_number(&tx.channel_id)?,
            at: Location {
                segment,
                offset,
                len,
            },
        };
        tables.write(key, Some(&old), &new)?;
        tables.finish(&inner.recent)?;
        log.append(&[&bytes])?;
    }
    inner.commit_durable(&mut log, txn, "committing a changed transaction")?;
    Ok(true)
}

/// Collects one page of a listing from candidates offered newest first.
struct Page<'q, 'i> {
    query: &'q TxQuery,
    /// The number of the query's channel.
    channel: Option<u32>,
    /// Whether a candidate must be decoded to know if it matches (filters no index answers).
    needs_record: bool,
    skip: usize,
    out: Vec<Transaction>,
    records: Records<'i>,
}

impl<'q, 'i> Page<'q, 'i> {
    fn new(query: &'q TxQuery, channel: Option<u32>, records: Records<'i>) -> Page<'q, 'i> {
        Page {
            query,
            channel,
            needs_record: query.from.is_some()
                || query.to.is_some()
                || query.response_status.is_some()
                || query.path.is_some(),
            skip: query.offset,
            out: Vec::with_capacity(query.limit.min(1000)),
            records,
        }
    }

    fn offer(&mut self, id: u128, value: &[u8]) -> StoreResult<ControlFlow<()>> {
        let entry = Entry::read(id, value)?;
        // The entry, not the posting the candidate came from, is the truth.
        if self.channel.is_some_and(|c| c != entry.channel)
            || (!self.query.statuses.is_empty() && !self.query.statuses.contains(&entry.status))
        {
            return Ok(ControlFlow::Continue(()));
        }
        if !self.needs_record && self.skip > 0 {
            self.skip -= 1;
            return Ok(ControlFlow::Continue(()));
        }
        let tx = self.records.decode(id, entry.at)?;
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

    /// Offers the records of `ids` until the page is full.
    fn fetch(
        &mut self,
        txs: &ReadOnlyTable<u128, &[u8]>,
        ids: impl Iterator<Item = StoreResult<u128>>,
    ) -> StoreResult<()> {
        for id in ids {
            let id = id?;
            // A posting of a deleted record; skip it.
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

/// The postings of one channel (or every channel) and status, largest id first.
struct PostingScan {
    range: std::iter::Rev<redb::Range<'static, &'static [u8; 21], &'static [u8]>>,
    /// The next posting: its largest id and its value.
    next: Option<(u128, AccessGuard<'static, &'static [u8]>)>,
}

impl PostingScan {
    fn new(
        postings: &ReadOnlyTable<&'static [u8; 21], &'static [u8]>,
        channel: u32,
        code: u8,
        lo: u128,
    ) -> StoreResult<PostingScan> {
        // Postings whose largest id is below `lo` hold nothing at or above it.
        let (from, to) = (
            posting_key(channel, code, lo),
            posting_key(channel, code, u128::MAX),
        );
        let mut scan = PostingScan {
            range: postings
                .range::<&[u8; 21]>(&from..=&to)
                .context("scanning postings")?
                .rev(),
            next: None,
        };
        scan.advance()?;
        Ok(scan)
    }

    fn advance(&mut self) -> StoreResult<()> {
        self.next = match self.range.next() {
            None => None,
            Some(entry) => {
                let (key, value) = entry.context("scanning postings")?;
                Some((id_of(key.value()), value))
            }
        };
        Ok(())
    }
}

/// Where candidates come from once found.
enum Cursor {
    /// A posting's ids in the listing's range, ascending (taken from the end).
    Ids(Vec<u128>),
    /// The records in flight, newest first (of one channel, if given).
    Processing {
        range: Box<std::iter::Rev<redb::Range<'static, u128, u32>>>,
        channel: Option<u32>,
    },
}

impl Cursor {
    fn next(&mut self) -> StoreResult<Option<u128>> {
        match self {
            Cursor::Ids(ids) => Ok(ids.pop()),
            Cursor::Processing { range, channel } => {
                for entry in range.by_ref() {
                    let (id, of) = entry.context("scanning the processing table")?;
                    if channel.is_none_or(|c| c == of.value()) {
                        return Ok(Some(id.value()));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Candidate ids for a listing by channel or status, newest first and each once: postings merged
/// as they are needed. A posting holds no id above its largest, so an id is only given once every
/// posting whose largest id is at or above it has been opened.
struct Candidates {
    scans: Vec<PostingScan>,
    cursors: Vec<Cursor>,
    /// The next id of each open cursor.
    heads: BinaryHeap<(u128, usize)>,
    lo: u128,
    hi: u128,
    last: Option<u128>,
}

impl Candidates {
    fn new(lo: u128, hi: u128) -> Candidates {
        Candidates {
            scans: Vec::new(),
            cursors: Vec::new(),
            heads: BinaryHeap::new(),
            lo,
            hi,
            last: None,
        }
    }

    fn add_cursor(&mut self, mut cursor: Cursor) -> StoreResult<()> {
        if let Some(id) = cursor.next()? {
            self.heads.push((id, self.cursors.len()));
            self.cursors.push(cursor);
        }
        Ok(())
    }

    /// Opens the next posting of scan `i`.
    fn open(&mut self, i: usize) -> StoreResult<()> {
        let Some((_, value)) = self.scans[i].next.take() else {
            return Ok(());
        };
        self.scans[i].advance()?;
        let ids: Vec<u128> = posting_ids(value.value())?
            .filter(|id| (self.lo..=self.hi).contains(id))
            .collect();
        if !ids.is_empty() {
            self.add_cursor(Cursor::Ids(ids))?;
        }
        Ok(())
    }

    fn next_id(&mut self) -> StoreResult<Option<u128>> {
        loop {
            let head = self.heads.peek().map(|&(id, _)| id);
            let unopened = self
                .scans
                .iter()
                .enumerate()
                .filter_map(|(i, scan)| scan.next.as_ref().map(|(largest, _)| (i, *largest)))
                .max_by_key(|&(_, largest)| largest);
            if let Some((i, largest)) = unopened
                && head.is_none_or(|head| largest >= head)
            {
                self.open(i)?;
                continue;
            }
            let Some((id, cursor)) = self.heads.pop() else {
                return Ok(None);
            };
            if let Some(next) = self.cursors[cursor].next()? {
                self.heads.push((next, cursor));
            }
            // A record posted twice (it left a status and came back).
            if self.last == Some(id) {
                continue;
            }
            self.last = Some(id);
            return Ok(Some(id));
        }
    }
}

impl Iterator for Candidates {
    type Item = StoreResult<u128>;

    fn next(&mut self) -> Option<StoreResult<u128>> {
        self.next_id().transpose()
    }
}

fn list_transactions(inner: &Inner, query: &TxQuery) -> StoreResult<Vec<Transaction>> {
    let (lo, hi) = (query.min_id().as_u128(), query.max_id().as_u128());
    if query.limit == 0 || lo > hi {
        return Ok(Vec::new());
    }
    // A channel's number never changes once given, so an earlier read may look it up.
    let channel = match query.channel_id.as_deref() {
        None => None,
        Some(channel) => {
            let txn = inner.db.begin_read().context("beginning a read")?;
            let numbers = txn
                .open_table(CHANNEL_NUMBERS)
                .context("opening the channel numbers")?;
            match numbers.get(channel).context("reading a channel number")? {
                Some(number) => Some(number.value()),
                // No record ever had this channel.
                None => return Ok(Vec::new()),
            }
        }
    };
    let mut codes: Vec<u8> = query.statuses.iter().map(|s| s.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    if channel.is_some() && codes.is_empty() {
        codes = Status::ALL.into_iter().map(Status::code).collect();
    }
    // The recent postings before the read transaction: a posting the durable commit moves to
    // the table meanwhile is then seen twice (and given once), never missed.
    let mut recent: Vec<u128> = Vec::new();
    if !codes.is_empty() {
        let posted = inner.recent();
        for &code in codes.iter().filter(|&&c| c != PROCESSING_CODE) {
            if let Some(ids) = posted.get(&(channel.unwrap_or(ANY_CHANNEL), code)) {
                recent.extend(ids.iter().filter(|id| (lo..=hi).contains(*id)));
            }
        }
    }
    recent.sort_unstable();
    let records = Records::new(inner);
    let txn = inner.db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    let mut page = Page::new(query, channel, records);
    if channel.is_none() && codes.is_empty() {
        for entry in txs.range(lo..=hi).context("scanning transactions")?.rev() {
            let (id, value) = entry.context("scanning transactions")?;
            if page.offer(id.value(), value.value())?.is_break() {
                break;
            }
        }
        return Ok(page.out);
    }
    let postings = txn.open_table(POSTINGS).context("opening the postings")?;
    let mut candidates = Candidates::new(lo, hi);
    candidates.add_cursor(Cursor::Ids(recent))?;
    for code in codes {
        if code == PROCESSING_CODE {
            let processing = txn
                .open_table(PROCESSING)
                .context("opening the processing table")?;
            let range = Box::new(
                processing
                    .range(lo..=hi)
                    .context("scanning the processing table")?
                    .rev(),
            );
            candidates.add_cursor(Cursor::Processing { range, channel })?;
        } else {
            let scan = PostingScan::new(&postings, channel.unwrap_or(ANY_CHANNEL), code, lo)?;
            candidates.scans.push(scan);
        }
    }
    page.fetch(&txs, candidates)?;
    Ok(page.out)
}

fn processing(inner: &Inner, after: Uuid, limit: usize) -> StoreResult<Vec<Uuid>> {
    let txn = inner.db.begin_read().context("beginning a read")?;
    let table = txn
        .open_table(PROCESSING)
        .context("opening the processing table")?;
    let Some(from) = after.as_u128().checked_add(1) else {
        return Ok(Vec::new());
    };
    table
        .range(from..)
        .context("scanning the processing table")?
        .take(limit)
        .map(|entry| {
            entry
                .map(|(id, _)| Uuid::from_u128(id.value()))
                .context("scanning the processing table")
        })
        .collect()
}

fn newest_transaction(inner: &Inner) -> StoreResult<Option<Uuid>> {
    let txn = inner.db.begin_read().context("beginning a read")?;
    let txs = txn
        .open_table(TRANSACTIONS)
        .context("opening the transactions table")?;
    Ok(txs
        .last()
        .context("reading the newest transaction")?
        .map(|(id, _)| Uuid::from_u128(id.value())))
}

fn count_transactions(inner: &Inner) -> StoreResult<u64> {
    let txn = inner.db.begin_read().context("beginning a read")?;
    txn.open_table(TRANSACTIONS)
        .context("opening the transactions table")?
        .len()
        .context("counting transactions")
}

fn cull_bodies(
    inner: &Inner,
    channel: &str,
    after: Uuid,
    before: Uuid,
    limit: usize,
) -> StoreResult<Culled> {
    let (after, before) = (after.as_u128(), before.as_u128());
    if limit == 0 || after >= before {
        return Ok(Culled::default());
    }
    let (mut log, txn) = inner.begin_durable()?;
    let mut records = Records::new(inner);
    let mut culled = Culled::default();
    let live = {
        let mut tables = TxTables::open(&txn)?;
        let Some(number) = tables
            .channels
            .get(channel)
            .context("reading a channel number")?
            .map(|n| n.value())
        else {
            // No record ever had this channel.
            return Ok(culled);
        };
        // The channel's records in the range, oldest first, from the entries (small: a scan is
        // cheap, and culling runs in the background).
        let mut found: Vec<(u128, Entry)> = Vec::new();
        for entry in tables
            .txs
            .range((Bound::Excluded(after), Bound::Excluded(before)))
            .context("scanning transactions")?
        {
            let (id, value) = entry.context("scanning transactions")?;
            let entry = Entry::read(id.value(), value.value())?;
            if entry.channel == number {
                found.push((id.value(), entry));
                if found.len() >= limit {
                    break;
                }
            }
        }
        let mut changed: Vec<(u128, Entry, Vec<u8>)> = Vec::new();
        for &(id, old) in &found {
            culled.visited += 1;
            let mut tx = records.decode(id, old.at)?;
            if tx.strip_bodies() {
                changed.push((id, old, tx.encode()));
            }
        }
        if !changed.is_empty() {
            let mut total = 0u64;
            for (_, _, bytes) in &changed {
                total += u64::from(record_len(bytes)?);
            }
            let (segment, mut offset) = log.reserve(&inner.segments, total)?;
            for (id, old, bytes) in &changed {
                let len = record_len(bytes)?;
                let new = Entry {
                    at: Location {
                        segment,
                        offset,
                        len,
                    },
                    ..*old
                };
                offset += len;
                tables.write(*id, Some(old), &new)?;
            }
            tables.finish(&inner.recent)?;
            let bytes: Vec<&[u8]> = changed.iter().map(|(_, _, b)| b.as_slice()).collect();
            log.append(&bytes)?;
        }
        culled.changed = changed.len() as u64;
        culled.last = found.last().map(|&(id, _)| Uuid::from_u128(id));
        tables.live_segments()?
    };
    inner.commit_durable(&mut log, txn, "committing culled bodies")?;
    log.collect(&inner.segments, &live);
    Ok(culled)
}

fn delete_transactions(inner: &Inner, before: Uuid, limit: usize) -> StoreResult<u64> {
    if limit == 0 {
        return Ok(0);
    }
    let (mut log, txn) = inner.begin_durable()?;
    let (deleted, live) = {
        let mut tables = TxTables::open(&txn)?;
        let mut victims = Vec::new();
        for entry in tables
            .txs
            .range(..before.as_u128())
            .context("scanning transactions")?
            .take(limit)
        {
            let (id, value) = entry.context("scanning transactions")?;
            let id = id.value();
            let entry = match Entry::read(id, value.value()) {
                Ok(entry) => Some(entry),
                // Deleting is the cure for an unreadable entry, not a reason to stop (its record,
                // unknown, keeps its segment's count from reaching zero).
                Err(error) => {
                    tracing::warn!(%error, "Deleting an unreadable stored transaction.");
                    None
                }
            };
            victims.push((id, entry));
        }
        for (id, entry) in &victims {
            tables.delete(*id, entry.as_ref())?;
        }
        tables.finish(&inner.recent)?;
        if !victims.is_empty() {
            tables.prune_postings()?;
        }
        (victims.len() as u64, tables.live_segments()?)
    };
    inner.commit_durable(&mut log, txn, "committing deletions")?;
    log.collect(&inner.segments, &live);
    Ok(deleted)
}

// ----- plugin key-value -----

/// A `kv` key: the namespace's length, the namespace, the key.
fn kv_key(namespace: &str, key: &str) -> StoreResult<Vec<u8>> {
    let len = u32::try_from(namespace.len())
        .map_err(|_| StoreError::Backend("a key-value namespace over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(4 + namespace.len() + key.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out.extend_from_slice(key.as_bytes());
    Ok(out)
}

/// A `kv_expiry` key.
fn kv_expiry_key(expires: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// A `kv` value split into when it expires (0: never) and the value proper.
fn kv_entry(stored: &[u8]) -> StoreResult<(u64, &[u8])> {
    match stored.split_first_chunk::<8>() {
        Some((expires, value)) => Ok((u64::from_le_bytes(*expires), value)),
        None => Err(StoreError::Corrupt(format!(
            "a key-value entry of {} bytes, shorter than its expiry",
            stored.len()
        ))),
    }
}

fn kv_live(expires: u64, now: u64) -> bool {
    expires == 0 || now < expires
}

/// When a value written at `now` with `ttl` expires (0: never).
fn kv_expires(now: u64, ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| now.saturating_add(ttl_millis(ttl)))
}

/// The integer in `value` if it is one in canonical decimal form, as Redis' `INCRBY` reads them:
/// an optional `-`, then digits without a leading zero (`0` alone is fine, `-0` is not).
fn parse_integer(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    match digits {
        [b'0'] if digits.len() == value.len() => return Some(0),
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    // Out of range is `None` too.
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The key-value tables of one write transaction, and its time.
struct KvTables<'t> {
    values: Table<'t, &'static [u8], &'static [u8]>,
    expiry: Table<'t, &'static [u8], ()>,
    /// Milliseconds since the epoch, once for the whole write.
    now: u64,
    /// Whether anything was written: a write that changed nothing is not committed.
    changed: bool,
    buf: Vec<u8>,
}

/// What a key holds, as one write sees it.
struct Held<T> {
    /// When the stored entry expires, live or not: replacing it must remove its `kv_expiry` key.
    stored: Option<u64>,
    /// What was read from the value, if it is live.
    live: Option<T>,
}

impl KvTables<'_> {
    fn open(txn: &WriteTransaction) -> StoreResult<KvTables<'_>> {
        Ok(KvTables {
            values: txn.open_table(KV).context("opening the key-value table")?,
            expiry: txn
                .open_table(KV_EXPIRY)
                .context("opening the key-value expiry table")?,
            now: Timestamp::now().0,
            changed: false,
            buf: Vec::new(),
        })
    }

    /// What `key` holds, with `read` applied to its value if it is live.
    fn held<T>(&self, key: &[u8], read: impl FnOnce(&[u8]) -> T) -> StoreResult<Held<T>> {
        let Some(stored) = self.values.get(key).context("reading a key-value entry")? else {
            return Ok(Held {
                stored: None,
                live: None,
            });
        };
        let (expires, value) = kv_entry(stored.value())?;
        Ok(Held {
            stored: Some(expires),
            live: kv_live(expires, self.now).then(|| read(value)),
        })
    }

    /// When what `key` holds expires, for writes that replace or delete it whatever it is: an
    /// unreadable entry counts as one that never expires (it has no `kv_expiry` key), so that
    /// writing over it or deleting it repairs it.
    fn stored(&self, key: &[u8]) -> StoreResult<Option<u64>> {
        let Some(stored) = self.values.get(key).context("reading a key-value entry")? else {
            return Ok(None);
        };
        Ok(Some(kv_entry(stored.value()).map_or_else(
            |error| {
                tracing::warn!(%error, "Replacing an unreadable key-value entry.");
                0
            },
            |(expires, _)| expires,
        )))
    }

    /// Stores `value` under `key`, which held an entry expiring at `stored`.
    fn put(
        &mut self,
        key: &[u8],
        stored: Option<u64>,
        expires: u64,
        value: &[u8],
    ) -> StoreResult<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&expires.to_le_bytes());
        self.buf.extend_from_slice(value);
        self.values
            .insert(key, self.buf.as_slice())
            .context("writing a key-value entry")?;
        if stored != Some(expires) {
            if let Some(old) = stored.filter(|&e| e != 0) {
                self.expiry
                    .remove(kv_expiry_key(old, key).as_slice())
                    .context("writing a key-value expiry")?;
            }
            if expires != 0 {
                self.expiry
                    .insert(kv_expiry_key(expires, key).as_slice(), ())
                    .context("writing a key-value expiry")?;
            }
        }
        self.changed = true;
        Ok(())
    }

    /// Removes `key`, whose entry expires at `stored`.
    fn remove(&mut self, key: &[u8], stored: u64) -> StoreResult<()> {
        self.values
            .remove(key)
            .context("deleting a key-value entry")?;
        if stored != 0 {
            self.expiry
                .remove(kv_expiry_key(stored, key).as_slice())
                .context("deleting a key-value expiry")?;
        }
        self.changed = true;
        Ok(())
    }

    /// Deletes up to [`KV_PURGE`] expired entries, soonest expired first.
    fn purge(&mut self) -> StoreResult<()> {
        // Every `kv_expiry` key below this one expired at or before now.
        let bound = self.now.saturating_add(1).to_be_bytes();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        for entry in self
            .expiry
            .range::<&[u8]>(..&bound[..])
            .context("finding expired key-value entries")?
            .take(KV_PURGE)
        {
            let (key, _) = entry.context("finding expired key-value entries")?;
            expired.push(key.value().to_vec());
        }
        for index_key in expired {
            self.expiry
                .remove(index_key.as_slice())
                .context("deleting a key-value expiry")?;
            let Some((expires, key)) = index_key.split_first_chunk::<8>() else {
                continue;
            };
            let expires = u64::from_be_bytes(*expires);
            // The index follows the entries exactly; should an entry disagree, it keeps its value
            // (an unreadable one goes: it expired, as far as anything can tell).
            let goes = match self.values.get(key).context("reading a key-value entry")? {
                Some(stored) => kv_entry(stored.value()).map_or(true, |(e, _)| e == expires),
                None => false,
            };
            if goes {
                self.values
                    .remove(key)
                    .context("deleting an expired key-value entry")?;
            }
            self.changed = true;
        }
        Ok(())
    }
}

/// One key-value write: `write`, then a bounded purge, in a transaction committed without fsync
/// (the flusher makes it durable, see [`Pending`]), or dropped when nothing changed.
fn kv_write<T>(
    inner: &Inner,
    what: &'static str,
    write: impl FnOnce(&mut KvTables<'_>) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut txn = inner.db.begin_write().context("beginning a write")?;
    txn.set_durability(redb::Durability::None)
        .context("choosing the commit durability")?;
    let (out, changed) = {
        let mut tables = KvTables::open(&txn)?;
        let out = write(&mut tables)?;
        tables.purge()?;
        (out, tables.changed)
    };
    if changed {
        inner.pending.mark();
        txn.commit().context(what)?;
    } else {
        txn.abort().context(what)?;
    }
    Ok(out)
}

fn kv_get(inner: &Inner, key: &[u8]) -> StoreResult<Option<Bytes>> {
    let txn = inner.db.begin_read().context("beginning a read")?;
    let table = txn.open_table(KV).context("opening the key-value table")?;
    let Some(stored) = table.get(key).context("reading a key-value entry")? else {
        return Ok(None);
    };
    let (expires, value) = kv_entry(stored.value())?;
    Ok(kv_live(expires, Timestamp::now().0).then(|| Bytes::copy_from_slice(value)))
}

fn kv_increment(
    tables: &mut KvTables<'_>,
    key: &[u8],
    delta: i64,
    ttl: Option<Duration>,
) -> StoreResult<i64> {
    let held = tables.held(key, parse_integer)?;
    let (current, expires) = match held.live {
        Some(Some(n)) => (n, held.stored.unwrap_or(0)),
        Some(None) => return Err(StoreError::NotAnInteger),
        None => (0, kv_expires(tables.now, ttl)),
    };
    let sum = current.checked_add(delta).ok_or(StoreError::NotAnInteger)?;
    tables.put(key, held.stored, expires, sum.to_string().as_bytes())?;
    Ok(sum)
}

fn kv_compare_and_set(
    tables: &mut KvTables<'_>,
    key: &[u8],
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> StoreResult<bool> {
    let held = tables.held(key, |current| Some(current) == expected)?;
    // Absent or expired matches `None` only.
    if !held.live.unwrap_or(expected.is_none()) {
        return Ok(false);
    }
    let expires = kv_expires(tables.now, ttl);
    tables.put(key, held.stored, expires, value)?;
    Ok(true)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
            txn.open_table(META).context("opening the meta table")?;
            Ok(())
        })
        .await
    }

    // ----- documents -----

    async fn list(&self, collection: Collection) -> StoreResult<Vec<(String, Value)>> {
        self.run("list documents", move |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
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
        self.run("get a document", move |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
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
        self.run("put a document", move |inner| {
            let (mut log, txn) = inner.begin_durable()?;
            let next = {
                txn.open_table(documents(collection))
                    .context("opening a document table")?
                    .insert(id.as_str(), bytes.as_slice())
                    .context("writing a document")?;
                bump_generation(&txn)?
            };
            inner.commit_durable(&mut log, txn, "committing a document")?;
            announce(&sender, next);
            tracing::debug!(collection = collection.name(), %id, generation = next, "Stored a document.");
            Ok(())
        })
        .await
    }

    async fn create(&self, collection: Collection, id: &str, document: Value) -> StoreResult<bool> {
        let id = id.to_owned();
        let bytes = serde_json::to_vec(&document)
            .map_err(|e| StoreError::Backend(format!("encoding a document: {e}")))?;
        let sender = Arc::clone(&self.generation);
        self.run("create a document", move |inner| {
            let (mut log, txn) = inner.begin_durable()?;
            let next = {
                let mut table = txn
                    .open_table(documents(collection))
                    .context("opening a document table")?;
                if table
                    .get(id.as_str())
                    .context("reading a document")?
                    .is_some()
                {
                    return Ok(false);
                }
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .context("writing a document")?;
                drop(table);
                bump_generation(&txn)?
            };
            inner.commit_durable(&mut log, txn, "committing a document")?;
            announce(&sender, next);
            tracing::debug!(collection = collection.name(), %id, generation = next, "Created a document.");
            Ok(true)
        })
        .await
    }

    async fn delete(&self, collection: Collection, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        let sender = Arc::clone(&self.generation);
        self.run("delete a document", move |inner| {
            let (mut log, txn) = inner.begin_durable()?;
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
            inner.commit_durable(&mut log, txn, "committing a deletion")?;
            announce(&sender, next);
            tracing::debug!(collection = collection.name(), %id, generation = next, "Deleted a document.");
            Ok(true)
        })
        .await
    }

    async fn generation(&self) -> StoreResult<u64> {
        self.run("read the generation", |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
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
            .run("store transactions", move |inner| {
                put_transactions(inner, &batch)
            })
            .await?;
        tracing::trace!(written, "Stored a batch of transactions.");
        Ok(())
    }

    async fn transaction(&self, id: Uuid) -> StoreResult<Option<Transaction>> {
        self.run("read a transaction", move |inner| {
            get_transaction(inner, id)
        })
        .await
    }

    async fn modify_transaction(
        &self,
        id: Uuid,
        change: Box<dyn for<'a> FnOnce(&'a mut Transaction) + Send>,
    ) -> StoreResult<bool> {
        self.run("modify a transaction", move |inner| {
            modify_transaction(inner, id, change)
        })
        .await
    }

    async fn list_transactions(&self, query: &TxQuery) -> StoreResult<Vec<Transaction>> {
        let query = query.clone();
        self.run("list transactions", move |inner| {
            list_transactions(inner, &query)
        })
        .await
    }

    async fn processing(&self, after: Uuid, limit: usize) -> StoreResult<Vec<Uuid>> {
        self.run("list processing transactions", move |inner| {
            processing(inner, after, limit)
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
            .run("cull bodies", move |inner| {
                cull_bodies(inner, &channel, after, before, limit)
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
            .run("delete transactions", move |inner| {
                delete_transactions(inner, before, limit)
            })
            .await?;
        tracing::debug!(deleted, %before, "Deleted old transactions.");
        Ok(deleted)
    }

    // ----- state -----

    async fn state(&self, key: &str) -> StoreResult<Option<Value>> {
        let key = key.to_owned();
        self.run("read state", move |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
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
        self.run("write state", move |inner| {
            let (mut log, txn) = inner.begin_durable()?;
            txn.open_table(STATE)
                .context("opening the state table")?
                .insert(key.as_str(), bytes.as_slice())
                .context("writing state")?;
            inner.commit_durable(&mut log, txn, "committing state")
        })
        .await
    }

    // ----- blobs -----

    async fn put_blob(&self, digest: &str, bytes: Bytes) -> StoreResult<()> {
        let len = bytes.len();
        let name = digest.to_owned();
        self.run("store a blob", move |inner| {
            let (mut log, txn) = inner.begin_durable()?;
            txn.open_table(BLOBS)
                .context("opening the blob table")?
                .insert(name.as_str(), &bytes[..])
                .context("writing a blob")?;
            inner.commit_durable(&mut log, txn, "committing a blob")
        })
        .await?;
        tracing::debug!(digest, bytes = len, "Stored a blob.");
        Ok(())
    }

    async fn blob(&self, digest: &str) -> StoreResult<Option<Bytes>> {
        let name = digest.to_owned();
        self.run("read a blob", move |inner| {
            let txn = inner.db.begin_read().context("beginning a read")?;
            let table = txn.open_table(BLOBS).context("opening the blob table")?;
            Ok(table
                .get(name.as_str())
                .context("reading a blob")?
                .map(|bytes| Bytes::copy_from_slice(bytes.value())))
        })
        .await
    }

    async fn delete_blob(&self, digest: &str) -> StoreResult<bool> {
        let name = digest.to_owned();
        let removed = self
            .run("delete a blob", move |inner| {
                let (mut log, txn) = inner.begin_durable()?;
                let removed = txn
                    .open_table(BLOBS)
                    .context("opening the blob table")?
                    .remove(name.as_str())
                    .context("deleting a blob")?
                    .is_some();
                if removed {
                    inner.commit_durable(&mut log, txn, "committing a blob deletion")?;
                }
                Ok(removed)
            })
            .await?;
        if removed {
            tracing::debug!(digest, "Deleted a blob.");
        }
        Ok(removed)
    }

    // ----- plugin key-value -----

    async fn kv_get(&self, namespace: &str, key: &str) -> StoreResult<Option<Bytes>> {
        let key = kv_key(namespace, key)?;
        self.run("read a key-value entry", move |inner| kv_get(inner, &key))
            .await
    }

    async fn kv_set(
        &self,
        namespace: &str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<()> {
        let key = kv_key(namespace, key)?;
        self.run("write a key-value entry", move |inner| {
            kv_write(inner, "committing a key-value entry", |tables| {
                let stored = tables.stored(&key)?;
                let expires = kv_expires(tables.now, ttl);
                tables.put(&key, stored, expires, &value)
            })
        })
        .await
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> StoreResult<bool> {
        let key = kv_key(namespace, key)?;
        self.run("delete a key-value entry", move |inner| {
            kv_write(inner, "committing a key-value deletion", |tables| {
                let Some(expires) = tables.stored(&key)? else {
                    return Ok(false);
                };
                // An expired entry goes too, but was not there to delete.
                tables.remove(&key, expires)?;
                Ok(kv_live(expires, tables.now))
            })
        })
        .await
    }

    async fn kv_increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> StoreResult<i64> {
        let key = kv_key(namespace, key)?;
        self.run("increment a key-value entry", move |inner| {
            kv_write(inner, "committing a key-value increment", |tables| {
                kv_increment(tables, &key, delta, ttl)
            })
        })
        .await
    }

    async fn kv_compare_and_set(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<Bytes>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        let key = kv_key(namespace, key)?;
        self.run("compare and set a key-value entry", move |inner| {
            kv_write(inner, "committing a key-value entry", |tables| {
                kv_compare_and_set(tables, &key, expected.as_deref(), &value, ttl)
            })
        })
        .await
    }

    // ----- instances -----

    async fn heartbeat(&self, beat: &InstanceBeat, ttl: Duration) -> StoreResult<()> {
        let until = std::time::Instant::now() + ttl;
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(beat.instance.clone(), (beat.clone(), until));
        Ok(())
    }

    async fn instances(&self) -> StoreResult<Vec<InstanceBeat>> {
        let now = std::time::Instant::now();
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.retain(|_, (_, until)| *until > now);
        let mut live: Vec<InstanceBeat> = beats.values().map(|(b, _)| b.clone()).collect();
        live.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(live)
    }

    async fn leave(&self, instance: &str, run_id: &str) -> StoreResult<()> {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        if beats.get(instance).is_some_and(|(b, _)| b.run_id == run_id) {
            beats.remove(instance);
        }
        Ok(())
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

    /// Segments of a few records each, so that tests see segments come and go.
    async fn small_segments() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(dir.path(), 4096, FLUSH_AFTER).unwrap();
        (Arc::new(store), dir)
    }

    contract::store_contract_tests!(fresh());

    mod with_small_segments {
        use super::*;

        contract::store_contract_tests!(small_segments());
    }

    #[test]
    fn the_processing_code_is_processings() {
        assert_eq!(Status::Processing.code(), PROCESSING_CODE);
        assert_eq!(posted_codes().count(), Status::ALL.len() - 1);
    }

    /// Checks the bookkeeping against the entries: segment counts, the processing table, postings
    /// for every record, records inside their segment files. Returns the number of segment files.
    fn check(store: &EmbeddedStore) -> usize {
        let inner = &store.inner;
        let txn = inner.db.begin_read().unwrap();
        let txs = txn.open_table(TRANSACTIONS).unwrap();
        let mut counted: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut in_flight: BTreeMap<u128, u32> = BTreeMap::new();
        let mut posted_needed: BTreeSet<(u32, u8, u128)> = BTreeSet::new();
        let segments = inner.segments.load_full();
        for entry in txs.iter().unwrap() {
            let (id, value) = entry.unwrap();
            let (id, entry) = (id.value(), Entry::read(id.value(), value.value()).unwrap());
            let count = counted.entry(entry.at.segment).or_default();
            count.0 += 1;
            count.1 += u64::from(entry.at.len);
            let file = segments
                .get(&entry.at.segment)
                .expect("the segment is open");
            assert!(
                file.metadata().unwrap().len() >= u64::from(entry.at.offset + entry.at.len),
                "the record is inside its segment"
            );
            if entry.status == Status::Processing {
                in_flight.insert(id, entry.channel);
            } else {
                posted_needed.insert((entry.channel, entry.status.code(), id));
                posted_needed.insert((ANY_CHANNEL, entry.status.code(), id));
            }
        }
        let table: BTreeMap<u32, (u64, u64)> = txn
            .open_table(SEGMENTS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(table, counted, "segment counts match the entries");
        let processing: BTreeMap<u128, u32> = txn
            .open_table(PROCESSING)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(processing, in_flight, "the processing table is exact");
        let mut posted: BTreeSet<(u32, u8, u128)> = BTreeSet::new();
        for entry in txn.open_table(POSTINGS).unwrap().iter().unwrap() {
            let (key, value) = entry.unwrap();
            let key = key.value();
            let channel = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
            let ids: Vec<u128> = posting_ids(value.value()).unwrap().collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending");
            assert_eq!(ids.last(), Some(&id_of(key)), "keyed by the largest");
            for id in ids {
                posted.insert((channel, key[4], id));
            }
        }
        for (&(channel, code), ids) in inner.recent().iter() {
            for &id in ids {
                posted.insert((channel, code, id));
            }
        }
        let missing: Vec<_> = posted_needed.difference(&posted).collect();
        assert!(missing.is_empty(), "every record is posted: {missing:?}");
        std::fs::read_dir(store.path.parent().unwrap().join(LOG_DIR))
            .unwrap()
            .count()
    }

    fn current_segment_len(store: &EmbeddedStore) -> u64 {
        store.inner.log().len
    }

    #[tokio::test]
    async fn segments_are_counted_and_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(dir.path(), 8192, FLUSH_AFTER).unwrap();
        let finals: Vec<Transaction> = (0..40)
            .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
            .collect();
        let begun: Vec<Transaction> = finals[..20]
            .iter()
            .map(|tx| Transaction {
                status: Status::Processing,
                response: None,
                ..tx.clone()
            })
            .collect();

        put(&store, Stage::Begun, &begun).await;
        assert_eq!(check(&store), 1);
        put(&store, Stage::Final, &finals).await;
        check(&store);
        // A replayed batch writes nothing.
        let len = current_segment_len(&store);
        put(&store, Stage::Final, &finals).await;
        put(&store, Stage::Begun, &begun).await;
        assert_eq!(current_segment_len(&store), len, "a replay appends nothing");
        check(&store);

        // Batches of ~20 KB in segments of 8 KB: one segment per batch.
        for n in 0..10u64 {
            let batch: Vec<Transaction> = (0..40)
                .map(|i| {
                    record(
                        1000 + n * 100 + i,
                        ["c", "d"][i as usize % 2],
                        Status::Failed,
                    )
                })
                .collect();
            put(&store, Stage::Final, &batch).await;
        }
        store.sync().await.unwrap();
        let files = check(&store);
        assert!(files >= 10, "{files} segments");

        // A change and a cull write records of their own; the old ones count down their segments.
        store
            .modify_transaction(finals[5].id, Box::new(|tx| tx.worker = 5))
            .await
            .unwrap();
        check(&store);
        let culled = store
            .cull_bodies("a", Uuid::nil(), Uuid::max(), 100)
            .await
            .unwrap();
        assert_eq!(culled.changed, 20);
        check(&store);

        // Deleting everything, in steps, deletes every segment but the one being written.
        assert_eq!(
            store.delete_transactions(finals[10].id, 100).await.unwrap(),
            10
        );
        check(&store);
        assert_eq!(
            store.delete_transactions(Uuid::max(), 1000).await.unwrap(),
            430
        );
        assert_eq!(check(&store), 1, "only the current segment is left");
        {
            let txn = store.inner.db.begin_read().unwrap();
            assert!(txn.open_table(POSTINGS).unwrap().is_empty().unwrap());
            assert!(txn.open_table(SEGMENTS).unwrap().is_empty().unwrap());
        }

        // A segment left behind (a crash between the commit that emptied it and its deletion) is
        // deleted when the store opens; the store goes on appending to its last segment.
        let current = store.inner.log().current;
        drop(store);
        let stale = dir.path().join(LOG_DIR).join(segment_name(0));
        std::fs::write(&stale, b"left over").unwrap();
        let store = EmbeddedStore::open_with(dir.path(), 8192, FLUSH_AFTER).unwrap();
        assert!(!stale.exists());
        assert_eq!(store.inner.log().current, current);
        put(&store, Stage::Final, &finals[..3]).await;
        assert_eq!(
            store.transaction(finals[2].id).await.unwrap().as_ref(),
            Some(&finals[2])
        );
        check(&store);
    }

    #[tokio::test]
    async fn large_postings_are_split() {
        let (store, _dir) = {
            let dir = tempfile::tempdir().unwrap();
            (EmbeddedStore::open(dir.path()).unwrap(), dir)
        };
        let records: Vec<Transaction> = (0..2500)
            .map(|i| record(i, "a", Status::Successful))
            .collect();
        put(&store, Stage::Final, &records).await;
        store.sync().await.unwrap();
        check(&store);
        {
            let txn = store.inner.db.begin_read().unwrap();
            let postings = txn.open_table(POSTINGS).unwrap();
            // Channel a and every channel, 1024 + 1024 + 452 ids each.
            assert_eq!(postings.len().unwrap(), 6);
            for entry in postings.iter().unwrap() {
                assert!(entry.unwrap().1.value().len() <= POSTING_IDS * 16);
            }
        }
        for (offset, limit) in [(0, 2500), (1020, 10), (1470, 60), (2495, 10)] {
            let q = TxQuery {
                channel_id: Some("a".into()),
                statuses: vec![Status::Successful],
                offset,
                limit,
                ..TxQuery::default()
            };
            let want: Vec<Uuid> = records
                .iter()
                .rev()
                .skip(offset)
                .take(limit)
                .map(|tx| tx.id)
                .collect();
            assert_eq!(contract::list_ids(&store, &q).await, want);
        }
    }

    #[tokio::test]
    async fn a_lost_segment_is_reported_and_its_number_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<Transaction> = (0..3).map(|i| record(i, "a", Status::Failed)).collect();
        let last = {
            let store = EmbeddedStore::open_with(dir.path(), 256, FLUSH_AFTER).unwrap();
            for tx in &first {
                put(&store, Stage::Final, std::slice::from_ref(tx)).await;
            }
            store.inner.log().current
        };
        assert!(last >= 2);
        std::fs::remove_file(dir.path().join(LOG_DIR).join(segment_name(last))).unwrap();

        let store = EmbeddedStore::open_with(dir.path(), 256, FLUSH_AFTER).unwrap();
        assert_eq!(store.inner.log().current, last + 1);
        let lost = store.transaction(first[2].id).await.unwrap_err();
        assert!(matches!(lost, StoreError::Corrupt(_)), "{lost}");
        assert_eq!(
            store.transaction(first[0].id).await.unwrap().as_ref(),
            Some(&first[0])
        );
        let later = record(10, "a", Status::Failed);
        put(&store, Stage::Final, std::slice::from_ref(&later)).await;
        assert_eq!(store.transaction(later.id).await.unwrap(), Some(later));
    }

    #[tokio::test]
    async fn a_store_closed_without_a_sync_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Transaction> = (0..10)
            .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Failed))
            .collect();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            put(&store, Stage::Final, &records).await;
            assert!(!store.inner.recent().is_empty(), "postings wait for a sync");
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let failed_in_a = TxQuery {
            channel_id: Some("a".into()),
            statuses: vec![Status::Failed],
            limit: 100,
            ..TxQuery::default()
        };
        assert_eq!(contract::list_ids(&store, &failed_in_a).await.len(), 5);
        check(&store);
        let txn = store.inner.db.begin_read().unwrap();
        assert!(!txn.open_table(POSTINGS).unwrap().is_empty().unwrap());
    }

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
        assert!(path.join(LOG_DIR).join(segment_name(0)).is_file());

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
        assert_eq!(
            store.processing(Uuid::nil(), 10).await.unwrap(),
            vec![processing.id]
        );
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
        check(&store);
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
        {
            // A readable entry whose record is not MessagePack, and an entry cut short.
            let inner = &store.inner;
            let mut log = inner.log();
            let txn = inner.db.begin_write().unwrap();
            let garbage = b"\xc1 not msgpack";
            let (segment, offset) = log.reserve(&inner.segments, garbage.len() as u64).unwrap();
            {
                let mut tables = TxTables::open(&txn).unwrap();
                let entry = Entry {
                    stage: Stage::Final,
                    status: Status::Failed,
                    channel: tables.channel_number("a").unwrap(),
                    at: Location {
                        segment,
                        offset,
                        len: garbage.len() as u32,
                    },
                };
                tables.write(bad.as_u128(), None, &entry).unwrap();
                tables.finish(&inner.recent).unwrap();
                tables
                    .txs
                    .insert(contract::id_at(3, 0).as_u128(), &b"\x09"[..])
                    .unwrap();
            }
            log.append(&[garbage]).unwrap();
            txn.commit().unwrap();
        }

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
        // Writing a record over an unreadable one repairs it (at any stage when even the entry
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
        check(&store);
        assert_eq!(store.delete_transactions(Uuid::max(), 10).await.unwrap(), 3);
        assert_eq!(store.count_transactions().await.unwrap(), 0);
        check(&store);
    }

    #[tokio::test]
    async fn a_file_of_the_first_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What the first development versions wrote: transactions, and no layout mark.
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TRANSACTIONS)
                .unwrap()
                .insert(1, &b"\x02\x02\x01\x00a\x80"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let error = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("earlier development version")),
            "{error}"
        );

        // An empty store of that age just gets the mark.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TRANSACTIONS).unwrap();
            txn.commit().unwrap();
        }
        drop(EmbeddedStore::open(dir.path()).unwrap());
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.count_transactions().await.unwrap(), 0);
    }

    // ----- plugin key-value -----

    /// The key-value tables, checked against each other: every entry that expires has its
    /// `kv_expiry` key, and no other key is there. Returns the number of entries.
    fn check_kv(store: &EmbeddedStore) -> usize {
        let txn = store.inner.db.begin_read().unwrap();
        let values = txn.open_table(KV).unwrap();
        let mut want: BTreeSet<Vec<u8>> = BTreeSet::new();
        for entry in values.iter().unwrap() {
            let (key, value) = entry.unwrap();
            let (expires, _) = kv_entry(value.value()).unwrap();
            if expires != 0 {
                want.insert(kv_expiry_key(expires, key.value()));
            }
        }
        let got: BTreeSet<Vec<u8>> = txn
            .open_table(KV_EXPIRY)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_vec())
            .collect();
        assert_eq!(got, want, "the expiry index follows the entries");
        values.len().unwrap() as usize
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        for (text, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-", None),
            ("-0", None),
            ("00", None),
            ("+1", None),
            ("", None),
        ] {
            assert_eq!(parse_integer(text.as_bytes()), want, "{text:?}");
        }
    }

    #[tokio::test]
    async fn expired_key_value_entries_are_purged_by_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // A rate limiter's windows: a key each, expiring soon; and some that stay.
        for window in 0..100 {
            store
                .kv_increment(
                    "limiter",
                    &format!("client:{window}"),
                    1,
                    Some(Duration::from_millis(300)),
                )
                .await
                .unwrap();
        }
        for key in ["a", "b"] {
            store
                .kv_set(
                    "kept",
                    key,
                    Bytes::from_static(b"v"),
                    Some(Duration::from_secs(600)),
                )
                .await
                .unwrap();
        }
        store
            .kv_set("kept", "c", Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        assert!(check_kv(&store) > 100);
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Reads leave them; every write takes up to `KV_PURGE`, even one that changes nothing.
        assert_eq!(store.kv_get("limiter", "client:0").await.unwrap(), None);
        assert!(check_kv(&store) > 100);
        assert!(!store.kv_delete("other", "nothing").await.unwrap());
        assert_eq!(check_kv(&store), 103 - KV_PURGE);
        for _ in 0..100 / KV_PURGE {
            store
                .kv_increment("limiter", "now", 1, Some(Duration::from_secs(600)))
                .await
                .unwrap();
        }
        assert_eq!(check_kv(&store), 4, "only the live entries are left");
        assert_eq!(
            store.kv_get("kept", "a").await.unwrap(),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            store.kv_get("kept", "c").await.unwrap(),
            Some(Bytes::from_static(b"v"))
        );
    }

    /// Waits until no key-value write waits for a durable commit.
    async fn flushed(store: &EmbeddedStore) {
        for _ in 0..500 {
            if !store.inner.pending.lock().dirty {
                // The mark is cleared before the commit; the log is held until after it.
                drop(store.inner.log());
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the key-value writes were not made durable");
    }

    /// Copies the store's files as they are on disk (a crash would leave them so).
    fn copy_files(from: &Path, to: &Path) {
        std::fs::copy(from.join(FILE_NAME), to.join(FILE_NAME)).unwrap();
        std::fs::create_dir_all(to.join(LOG_DIR)).unwrap();
        for entry in std::fs::read_dir(from.join(LOG_DIR)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(LOG_DIR).join(entry.file_name())).unwrap();
        }
    }

    #[tokio::test]
    async fn key_value_writes_become_durable_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open_with(dir.path(), SEGMENT_BYTES, Duration::from_millis(50)).unwrap();
        store
            .kv_set("ns", "k", Bytes::from_static(b"\0\xff"), None)
            .await
            .unwrap();
        assert_eq!(
            store
                .kv_increment("ns", "n", 7, Some(Duration::from_secs(600)))
                .await
                .unwrap(),
            7
        );
        assert!(store.inner.pending.lock().dirty, "not durable yet");
        flushed(&store).await;

        // The files as a crash would leave them now, the store still open.
        let copy = tempfile::tempdir().unwrap();
        copy_files(dir.path(), copy.path());
        let crashed = EmbeddedStore::open(copy.path()).unwrap();
        assert_eq!(
            crashed.kv_get("ns", "k").await.unwrap(),
            Some(Bytes::from_static(b"\0\xff"))
        );
        assert_eq!(crashed.kv_increment("ns", "n", 1, None).await.unwrap(), 8);
        check_kv(&crashed);

        // Another durable commit covers them too, and the flusher has nothing left to do.
        store
            .kv_set("ns", "k", Bytes::from_static(b"2"), None)
            .await
            .unwrap();
        store.sync().await.unwrap();
        assert!(!store.inner.pending.lock().dirty);
    }

    #[tokio::test]
    async fn key_value_entries_survive_a_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Closed long before the flusher would commit.
            let store =
                EmbeddedStore::open_with(dir.path(), SEGMENT_BYTES, Duration::from_secs(3600))
                    .unwrap();
            store
                .kv_set("ns", "k", Bytes::from_static(b"v"), None)
                .await
                .unwrap();
            store
                .kv_increment("ns", "n", 3, Some(Duration::from_secs(600)))
                .await
                .unwrap();
            store
                .kv_set(
                    "ns",
                    "gone",
                    Bytes::from_static(b"v"),
                    Some(Duration::from_millis(1)),
                )
                .await
                .unwrap();
            store
                .put_blob("d", Bytes::from_static(b"blob"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.kv_get("ns", "k").await.unwrap(),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(store.kv_increment("ns", "n", 1, None).await.unwrap(), 4);
        assert_eq!(store.kv_get("ns", "gone").await.unwrap(), None);
        assert_eq!(
            store.blob("d").await.unwrap(),
            Some(Bytes::from_static(b"blob"))
        );
        check_kv(&store);
    }

    /// What a `kv_increment` costs, one after another on one key (the rate limiter's pattern):
    /// `cargo test -p mediary --release --lib kv_increment_cost -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement, not a test"]
    async fn kv_increment_cost() {
        let (store, _dir) = fresh().await;
        const N: i64 = 10_000;
        let ttl = Some(Duration::from_secs(60));
        let start = std::time::Instant::now();
        for _ in 0..N {
            store
                .kv_increment("limiter", "client:window", 1, ttl)
                .await
                .unwrap();
        }
        let elapsed = start.elapsed();
        assert_eq!(
            store.kv_get("limiter", "client:window").await.unwrap(),
            Some(Bytes::from(N.to_string()))
        );
        println!(
            "kv_increment: {N} calls in {elapsed:?}, {:.1} µs each",
            elapsed.as_secs_f64() * 1e6 / N as f64
        );
    }
}
