//! Recording transactions: each worker's write-ahead [`spool`], and the drainer that moves spooled
//! records into the store.
//!
//! The data path never waits for the store. A worker writes each record stage to its own spool file
//! (see [`spool::Spool`]); the drainer, on its own thread, every `flush_interval` fdatasyncs the
//! spools that grew (the group commit) and every `drain_interval` reads what is new, keeps only the
//! latest stage of each transaction, and writes the batch to the store in one call. A segment file is
//! deleted once every record in it is in the store. If the store fails, the batch is kept and retried;
//! the spool keeps growing on disk meanwhile and nothing is lost.
//!
//! At start, before any worker serves, [`recover`] replays every spool file left by the previous run
//! into the store and then marks the transactions that were still in flight as interrupted.

pub mod spool;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::Shared;
use crate::store::{Store, StoredTx};
use crate::transaction::Timestamp;
use spool::{FrameRead, Spool, frame_to_stored, next_frame, parse_segment_name, segment_name};

/// How many records the drainer holds in memory at most; past it, it leaves the rest in the spool
/// files until the store has taken what it holds.
const MAX_PENDING: usize = 50_000;

/// The store is made durable at least this often while records arrive (its batch writes are not
/// durable by themselves; the spool covers them until then).
const STORE_SYNC: Duration = Duration::from_secs(1);

/// Records per store call when replaying.
const REPLAY_BATCH: usize = 2_000;

/// A transaction created this long before a drain pass began is in the spool file by then: the time
/// from taking its id to the flusher's write is a few scheduler turns of its worker.
const SPOOL_LAG: Duration = Duration::from_millis(50);

/// The folder of the spool files inside the data directory.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovery {
    pub files: usize,
    pub records: usize,
    pub interrupted: usize,
}

/// Replays every spool file in `dir` into the store (then deletes the files), and marks every record
/// of this `instance` still in flight as interrupted. Run it before any worker starts.
pub async fn recover(dir: &Path, store: &dyn Store, instance: &str) -> anyhow::Result<Recovery> {
    let mut report = Recovery::default();
    let mut files: Vec<(usize, u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((worker, seq)) = name.to_str().and_then(parse_segment_name) {
            files.push((worker, seq, entry.path()));
        }
    }
    files.sort();
    let mut pending: HashMap<Uuid, StoredTx> = HashMap::new();
    for (_, _, path) in &files {
        let bytes = Bytes::from(std::fs::read(path)?);
        let mut at = 0;
        loop {
            match next_frame(&bytes[at..]) {
                FrameRead::Frame(n) => {
                    match frame_to_stored(&bytes.slice(at..at + n)) {
                        Ok(stored) => {
                            report.records += 1;
                            keep_latest(&mut pending, stored);
                        }
                        Err(reason) => {
                            tracing::warn!(file = %path.display(), offset = at, %reason, "Skipping an unreadable spool record.");
                        }
                    }
                    at += n;
                }
                FrameRead::Incomplete if at == bytes.len() => break,
                FrameRead::Incomplete | FrameRead::Corrupt(_) => {
                    // What a crash leaves: a frame cut short by the end of a write. Its response
                    // never completed (completion waits for the write), so nothing acknowledged is lost.
                    tracing::warn!(file = %path.display(), offset = at, dropped = bytes.len() - at, "The spool ends in a torn record; dropping it.");
                    break;
                }
            }
        }
        if pending.len() >= REPLAY_BATCH {
            store
                .put_transactions(pending.drain().map(|(_, v)| v).collect())
                .await?;
        }
    }
    if !pending.is_empty() {
        store
            .put_transactions(pending.drain().map(|(_, v)| v).collect())
            .await?;
    }
    for (_, _, path) in &files {
        std::fs::remove_file(path)?;
    }
    report.files = files.len();
    report.interrupted = mark_interrupted(store, instance).await?;
    Ok(report)
}

/// Marks every record of `instance` still `Processing` as interrupted; returns how many.
async fn mark_interrupted(store: &dyn Store, instance: &str) -> anyhow::Result<usize> {
    let mut marked = 0;
    let mut after = Uuid::nil();
    loop {
        // Other instances' records (a shared store) are passed over, so page through them all.
        let ids = store.processing(after, 1_000).await?;
        let Some(last) = ids.last() else {
            return Ok(marked);
        };
        after = *last;
        let mut changed = 0;
        for id in &ids {
            let instance = instance.to_owned();
            let mine = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = Arc::clone(&mine);
            store
                .modify_transaction(
                    *id,
                    Box::new(move |tx| {
                        if tx.instance == instance {
                            tx.mark_interrupted();
                            flag.store(true, Ordering::Relaxed);
                        }
                    }),
                )
                .await?;
            if mine.load(Ordering::Relaxed) {
                changed += 1;
            }
        }
        marked += changed;
        if ids.len() < 1_000 {
            return Ok(marked);
        }
    }
}

fn keep_latest(pending: &mut HashMap<Uuid, StoredTx>, stored: StoredTx) {
    match pending.get(&stored.id) {
        Some(held) if held.stage > stored.stage => {}
        _ => {
            pending.insert(stored.id, stored);
        }
    }
}

/// Where the drainer is in one spool.
#[derive(Debug)]
struct Reader {
    spool: Arc<Spool>,
    segment: u64,
    file: Option<File>,
    offset: u64,
    /// Bytes read but not yet taken as whole frames (kept allocated between passes).
    carry: Vec<u8>,
    /// Length of the current segment at the last fdatasync.
    synced: (u64, u64),
    /// Segments read to their end whose records are not all in the store yet.
    finished: Vec<u64>,
}

impl Reader {
    fn new(spool: Arc<Spool>) -> Reader {
        let segment = spool.current_segment();
        Reader {
            spool,
            segment,
            file: None,
            offset: 0,
            carry: Vec::new(),
            synced: (segment, 0),
            finished: Vec::new(),
        }
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.spool
            .dir()
            .join(segment_name(self.spool.worker(), segment))
    }

    /// fdatasyncs the segment being written if it grew since the last time.
    fn sync(&mut self) {
        let now = (self.spool.current_segment(), self.spool.current_len());
        if now == self.synced || now.1 == 0 {
            return;
        }
        match File::open(self.path(now.0)).and_then(|f| f.sync_data()) {
            Ok(()) => self.synced = now,
            Err(error) => {
                tracing::warn!(worker = self.spool.worker(), %error, "Syncing a spool segment failed.")
            }
        }
    }

    /// Reads the new whole frames into `pending`, moving on to later segments when one is finished.
    ///
    /// The read buffer is kept between passes (a fresh one each time would make the allocator fetch
    /// and zero new pages for every pass); each record is copied out of it into its own allocation,
    /// which is what the store keeps until its write.
    fn read_new(&mut self, pending: &mut HashMap<Uuid, StoredTx>) -> io::Result<()> {
        loop {
            if pending.len() >= MAX_PENDING {
                return Ok(());
            }
            let closed = self.spool.current_segment() > self.segment;
            if self.file.is_none() {
                let mut file = File::open(self.path(self.segment))?;
                file.seek(SeekFrom::Start(self.offset))?;
                self.file = Some(file);
            }
            if let Some(file) = &mut self.file {
                let read = file.read_to_end(&mut self.carry)?;
                self.offset += read as u64;
            }
            let mut at = 0;
            while at < self.carry.len() {
                match next_frame(&self.carry[at..]) {
                    FrameRead::Frame(n) => {
                        let frame = Bytes::copy_from_slice(&self.carry[at..at + n]);
                        match frame_to_stored(&frame) {
                            Ok(stored) => keep_latest(pending, stored),
                            Err(reason) => {
                                tracing::warn!(worker = self.spool.worker(), %reason, "Skipping an unreadable spool record.")
                            }
                        }
                        at += n;
                    }
                    FrameRead::Incomplete => break,
                    FrameRead::Corrupt(reason) if closed => {
                        tracing::error!(worker = self.spool.worker(), segment = self.segment, %reason, "A spool segment is damaged; skipping its rest.");
                        at = self.carry.len();
                    }
                    // Possibly a write in progress seen half-way; look again next pass.
                    FrameRead::Corrupt(_) => break,
                }
            }
            self.carry.drain(..at);
            if !closed {
                return Ok(());
            }
            // The segment was closed before this read began, so it has been read to its end.
            if !self.carry.is_empty() {
                tracing::error!(
                    worker = self.spool.worker(),
                    segment = self.segment,
                    bytes = self.carry.len(),
                    "A closed spool segment ends in an incomplete record; dropping it."
                );
                self.carry.clear();
            }
            self.finished.push(self.segment);
            self.segment += 1;
            self.file = None;
            self.offset = 0;
        }
    }

    /// Deletes the segments whose records are all in the store now.
    fn delete_finished(&mut self) {
        for segment in self.finished.drain(..) {
            let path = self
                .spool
                .dir()
                .join(segment_name(self.spool.worker(), segment));
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "Could not delete a drained spool segment.");
            }
        }
    }
}

/// The drainer: starts its thread, which runs until `stop` is set and everything spooled is stored.
pub fn start_drainer(
    spools: Vec<Arc<Spool>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("mediary-recorder".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "Could not start the recorder's runtime.");
                    return;
                }
            };
            runtime.block_on(drain(spools, shared, stop));
        })
}

async fn drain(spools: Vec<Arc<Spool>>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let recording = shared.config.recording.clone();
    let mut readers: Vec<Reader> = spools.into_iter().map(Reader::new).collect();
    let mut pending: HashMap<Uuid, StoredTx> = HashMap::new();
    let mut last_drain = Instant::now();
    let mut last_sync = Instant::now();
    // Records written to the store since its last sync: their spool segments must stay.
    let mut unsynced = false;
    let mut failures: u32 = 0;
    shared
        .recorded_until
        .store(Timestamp::now().0, Ordering::Release);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(recording.flush_interval) => false,
            _ = stop.wait_for(|s| *s) => true,
        } || *stop.borrow();
        if !recording.fsync_before_respond {
            for reader in &mut readers {
                reader.sync();
            }
        }
        let backoff = recording.drain_interval * 2u32.pow(failures.min(8));
        if !stopping && last_drain.elapsed() < backoff {
            continue;
        }
        last_drain = Instant::now();
        let began = Timestamp::now();
        for reader in &mut readers {
            if let Err(error) = reader.read_new(&mut pending) {
                tracing::error!(worker = reader.spool.worker(), %error, "Reading the transaction spool failed.");
            }
        }
        if !pending.is_empty() {
            let batch: Vec<StoredTx> = pending.values().cloned().collect();
            let count = batch.len() as u64;
            match shared.store.put_transactions(batch).await {
                Ok(()) => {
                    failures = 0;
                    unsynced = true;
                    pending.clear();
                    shared
                        .metrics
                        .records_stored
                        .fetch_add(count, Ordering::Relaxed);
                }
                Err(error) => {
                    failures += 1;
                    shared.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, held = pending.len(), "Writing transactions to the store failed; they stay spooled and will be retried.");
                }
            }
        }
        let finished = readers.iter().any(|r| !r.finished.is_empty());
        if pending.is_empty()
            && unsynced
            && (stopping || finished || last_sync.elapsed() >= STORE_SYNC)
        {
            match shared.store.sync().await {
                Ok(()) => {
                    unsynced = false;
                    last_sync = Instant::now();
                }
                Err(error) => {
                    shared.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "Syncing the store failed; the spool keeps its records.");
                }
            }
        }
        if pending.is_empty() {
            if !unsynced {
                for reader in &mut readers {
                    reader.delete_finished();
                }
            }
            let until = began.0.saturating_sub(SPOOL_LAG.as_millis() as u64);
            shared.recorded_until.store(until, Ordering::Release);
        }
        if stopping && failures > 3 {
            tracing::error!(
                held = pending.len(),
                "The store keeps failing; leaving the rest in the spool for the next start."
            );
            return;
        }
        if stopping && pending.is_empty() && !unsynced {
            // One more pass picks up what the workers wrote while this one ran.
            let mut rest = HashMap::new();
            for reader in &mut readers {
                let _ = reader.read_new(&mut rest);
            }
            if rest.is_empty() {
                break;
            }
            pending = rest;
        }
    }
    // Every worker has stopped and everything they wrote is in the store: the spool is empty.
    for reader in &mut readers {
        reader.file = None;
        reader.finished.push(reader.segment);
        reader.delete_finished();
    }
    tracing::debug!("Recorder stopped; every spooled record is in the store.");
}

/// Ensures the spool folder exists and returns it.
pub fn prepare(data_dir: &Path) -> io::Result<PathBuf> {
    let dir = spool_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
