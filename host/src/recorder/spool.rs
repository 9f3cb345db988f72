//! One worker's write-ahead spool: an append-only sequence of segment files holding transaction
//! records, written before the responses they describe complete.
//!
//! Appending encodes a record into an in-memory buffer and wakes the spool's flusher task, which runs
//! after the other tasks that are ready on the worker's runtime and writes everything buffered with one
//! `write` call: a busy worker pays one system call for many records (group write). A request that
//! needs its record on file (before going upstream, before its response completes) awaits
//! [`Spool::written`]. Once in the kernel's page cache a record survives the process being killed;
//! surviving a power loss takes an fdatasync, which the drainer does every `flush_interval` or, with
//! `fsync_before_respond`, the flusher does before it reports the write.
//!
//! File format, per frame: `len: u32 LE`, `crc32: u32 LE` (of the payload), payload:
//! `stage: u8, status: u8, id: [u8; 16], channel_len: u16 LE, channel id, record` (MessagePack).
//! A torn tail (short frame or bad checksum) ends a segment when it is read back.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::store::StoredTx;
use crate::transaction::{Stage, Status, Transaction};

/// Bytes before the payload: length and checksum.
const FRAME_HEAD: usize = 8;
/// Fixed part of the payload before the channel id.
const PAYLOAD_HEAD: usize = 1 + 1 + 16 + 2;

/// The file name of segment `seq` of spool `worker`.
pub fn segment_name(worker: usize, seq: u64) -> String {
    format!("w{worker:03}-{seq:010}.spool")
}

/// Parses a segment file name back into `(worker, seq)`.
pub fn parse_segment_name(name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix('w')?.strip_suffix(".spool")?;
    let (worker, seq) = rest.split_once('-')?;
    Some((worker.parse().ok()?, seq.parse().ok()?))
}

/// One worker's spool.
#[derive(Debug)]
pub struct Spool {
    worker: usize,
    dir: PathBuf,
    segment_size: u64,
    fsync_before_respond: bool,
    inner: Mutex<Inner>,
    /// Wakes the flusher.
    kick: Notify,
    /// The sequence number of the last record written to the file.
    written: watch::Sender<u64>,
    /// The segment being written; the drainer may delete any lower one it has fully stored.
    current_segment: AtomicU64,
    /// Bytes written to the current segment (for the drainer's fdatasync bookkeeping).
    current_len: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Encoded frames not yet written.
    buf: Vec<u8>,
    /// The sequence number of the last record appended.
    appended: u64,
    file: File,
    segment_len: u64,
    /// The flusher has been woken and has not yet taken the buffer.
    kicked: bool,
    /// The last write failed: records cannot be made durable.
    failed: Option<String>,
}

/// The spool could not write a record: the disk is full or gone. The proxy refuses requests rather
/// than serve them unrecorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the transaction spool cannot be written: {0}")]
pub struct SpoolError(pub String);

impl Spool {
    /// Starts spool `worker` in `dir` at segment `first_seq`.
    pub fn create(
        dir: &Path,
        worker: usize,
        first_seq: u64,
        segment_size: u64,
        fsync_before_respond: bool,
    ) -> io::Result<Arc<Spool>> {
        let file = open_segment(dir, worker, first_seq)?;
        let (written, _) = watch::channel(0);
        Ok(Arc::new(Spool {
            worker,
            dir: dir.to_owned(),
            segment_size,
            fsync_before_respond,
            inner: Mutex::new(Inner {
                buf: Vec::with_capacity(64 * 1024),
                appended: 0,
                file,
                segment_len: 0,
                kicked: false,
                failed: None,
            }),
            kick: Notify::new(),
            written,
            current_segment: AtomicU64::new(first_seq),
            current_len: AtomicU64::new(0),
        }))
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment currently being written.
    pub fn current_segment(&self) -> u64 {
        self.current_segment.load(Ordering::Acquire)
    }

    /// Bytes in the current segment so far.
    pub fn current_len(&self) -> u64 {
        self.current_len.load(Ordering::Acquire)
    }

    /// Encodes `tx` at `stage` into the buffer and returns its sequence number; the record reaches
    /// the file shortly, without waiting (see [`Spool::written`] to wait).
    pub fn append(&self, tx: &Transaction, stage: Stage) -> Result<u64, SpoolError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &inner.failed {
            return Err(SpoolError(reason.clone()));
        }
        encode_frame(&mut inner.buf, tx, stage);
        inner.appended += 1;
        let seq = inner.appended;
        if !inner.kicked {
            inner.kicked = true;
            self.kick.notify_one();
        }
        Ok(seq)
    }

    /// Resolves once record `seq` is in the file (and on disk, with `fsync_before_respond`).
    pub async fn written(&self, seq: u64) -> Result<(), SpoolError> {
        let mut rx = self.written.subscribe();
        if rx.wait_for(|w| *w >= seq).await.is_err() {
            return Err(SpoolError("the spool has stopped".into()));
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &inner.failed {
            Some(reason) => Err(SpoolError(reason.clone())),
            None => Ok(()),
        }
    }

    /// Appends and waits until the record is in the file.
    pub async fn append_and_wait(&self, tx: &Transaction, stage: Stage) -> Result<(), SpoolError> {
        let seq = self.append(tx, stage)?;
        self.written(seq).await
    }

    /// The flusher: run it as a task on the worker's runtime. Returns when `stop` fires, after a
    /// last flush.
    pub async fn run_flusher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let stopping = tokio::select! {
                _ = self.kick.notified() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            self.flush(&mut spare).await;
            if stopping {
                // Requests that were still running when the worker stopped may append later; keep
                // flushing what they write until the spool itself is dropped.
                loop {
                    self.kick.notified().await;
                    self.flush(&mut spare).await;
                }
            }
        }
    }

    async fn flush(&self, spare: &mut Vec<u8>) {
        let Some((upto, rotate)) = self.write_buffered(spare) else {
            return;
        };
        if self.fsync_before_respond {
            let file = {
                let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner.file.try_clone()
            };
            let synced = match file {
                Ok(file) => tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e))),
                Err(error) => Err(error),
            };
            if let Err(error) = synced {
                tracing::error!(worker = self.worker, %error, "Syncing the transaction spool failed.");
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner.failed = Some(error.to_string());
            }
        }
        if rotate {
            self.rotate();
        }
        self.written.send_replace(upto);
    }

    /// Writes whatever is buffered now, synchronously: for the end of a worker, when its runtime is
    /// about to stop and the flusher task will not run again.
    pub fn flush_now(&self) {
        let mut spare = Vec::new();
        if let Some((upto, _)) = self.write_buffered(&mut spare) {
            self.written.send_replace(upto);
        }
    }

    /// Writes the buffer to the segment; returns the last sequence number written and whether the
    /// segment is full. `None` when there was nothing to write.
    fn write_buffered(&self, spare: &mut Vec<u8>) -> Option<(u64, bool)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.kicked = false;
        if inner.buf.is_empty() {
            return None;
        }
        std::mem::swap(&mut inner.buf, spare);
        if let Err(error) = inner.file.write_all(spare) {
            tracing::error!(worker = self.worker, %error, "Writing the transaction spool failed.");
            inner.failed = Some(error.to_string());
        }
        inner.segment_len += spare.len() as u64;
        self.current_len.store(inner.segment_len, Ordering::Release);
        spare.clear();
        Some((inner.appended, inner.segment_len >= self.segment_size))
    }

    /// Closes the current segment and starts the next one.
    fn rotate(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.current_segment() + 1;
        match open_segment(&self.dir, self.worker, next) {
            Ok(file) => {
                // The closed segment must be complete on disk before the drainer treats it as done.
                if let Err(error) = inner.file.sync_data() {
                    tracing::warn!(worker = self.worker, %error, "Syncing a spool segment failed.");
                }
                inner.file = file;
                inner.segment_len = 0;
                self.current_len.store(0, Ordering::Release);
                self.current_segment.store(next, Ordering::Release);
            }
            Err(error) => {
                // Keep writing to the current segment; it only grows past its size.
                tracing::warn!(worker = self.worker, %error, "Could not start a new spool segment.");
            }
        }
    }
}

fn open_segment(dir: &Path, worker: usize, seq: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(segment_name(worker, seq)))
}

/// Appends one frame for `tx` at `stage` to `buf`, encoding the record in place.
pub fn encode_frame(buf: &mut Vec<u8>, tx: &Transaction, stage: Stage) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEAD]);
    buf.push(stage as u8);
    buf.push(tx.status.code());
    buf.extend_from_slice(tx.id.as_bytes());
    let channel = tx.channel_id.as_bytes();
    let channel = &channel[..channel.len().min(usize::from(u16::MAX))];
    buf.extend_from_slice(&(channel.len() as u16).to_le_bytes());
    buf.extend_from_slice(channel);
    // Writing plain data into a Vec cannot fail.
    let _ = rmp_serde::encode::write_named(buf, tx);
    let payload = &buf[start + FRAME_HEAD..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The result of reading frames from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead {
    /// A whole, intact frame of this many bytes.
    Frame(usize),
    /// Not enough bytes yet (a frame being written, or the end).
    Incomplete,
    /// The bytes are not a frame (a torn write after a crash, or damage).
    Corrupt(String),
}

/// Looks at the frame at the start of `bytes`.
pub fn next_frame(bytes: &[u8]) -> FrameRead {
    if bytes.len() < FRAME_HEAD {
        return FrameRead::Incomplete;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len < PAYLOAD_HEAD {
        return FrameRead::Corrupt(format!("frame length {len} is too short"));
    }
    if bytes.len() < FRAME_HEAD + len {
        return FrameRead::Incomplete;
    }
    let payload = &bytes[FRAME_HEAD..FRAME_HEAD + len];
    if crc32fast::hash(payload) != crc {
        return FrameRead::Corrupt("checksum mismatch".into());
    }
    FrameRead::Frame(FRAME_HEAD + len)
}

/// Turns an intact frame (as found by [`next_frame`]) into what the store takes, without decoding
/// the record.
pub fn frame_to_stored(frame: &Bytes) -> Result<StoredTx, String> {
    let payload = frame.slice(FRAME_HEAD..);
    let stage = Stage::from_code(payload[0]).ok_or("unknown stage")?;
    let status = Status::from_code(payload[1]).ok_or("unknown status")?;
    let id = Uuid::from_slice(&payload[2..18]).map_err(|e| e.to_string())?;
    let channel_len = usize::from(u16::from_le_bytes([payload[18], payload[19]]));
    let channel_end = PAYLOAD_HEAD + channel_len;
    if payload.len() < channel_end {
        return Err("channel id runs past the frame".into());
    }
    let channel = std::str::from_utf8(&payload[PAYLOAD_HEAD..channel_end])
        .map_err(|_| "channel id is not UTF-8")?;
    Ok(StoredTx {
        id,
        stage,
        status,
        channel_id: Arc::from(channel),
        bytes: payload.slice(channel_end..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::{RequestRecord, Timestamp};

    fn tx(path: &str) -> Transaction {
        let id = Uuid::now_v7();
        Transaction {
            id,
            channel_id: "chan-1".into(),
            channel_name: "one".into(),
            client_id: None,
            client_ip: "127.0.0.1".into(),
            request: RequestRecord {
                path: path.into(),
                method: "GET".into(),
                timestamp: Timestamp::of_id(id),
                ..Default::default()
            },
            response: None,
            routes: vec![],
            orchestrations: vec![],
            properties: Default::default(),
            error: None,
            status: Status::Processing,
            can_rerun: true,
            was_rerun: false,
            parent_id: None,
            child_ids: vec![],
            worker: 0,
            instance: "t".into(),
            duration_ms: None,
            plugin: None,
            plugin_log: Vec::new(),
        }
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_found() {
        let a = tx("/a");
        let b = tx("/b");
        let mut buf = Vec::new();
        encode_frame(&mut buf, &a, Stage::Begun);
        encode_frame(&mut buf, &b, Stage::Final);
        let FrameRead::Frame(n) = next_frame(&buf) else {
            panic!("first frame")
        };
        let first = frame_to_stored(&Bytes::copy_from_slice(&buf[..n])).unwrap();
        assert_eq!(
            (first.id, first.stage, &*first.channel_id),
            (a.id, Stage::Begun, "chan-1")
        );
        assert_eq!(Transaction::decode(&first.bytes).unwrap(), a);
        let rest = &buf[n..];
        let FrameRead::Frame(m) = next_frame(rest) else {
            panic!("second frame")
        };
        assert_eq!(m, rest.len());
        assert_eq!(next_frame(&rest[..m - 1]), FrameRead::Incomplete);
        let mut damaged = rest.to_vec();
        damaged[m - 1] ^= 0xff;
        assert!(matches!(next_frame(&damaged), FrameRead::Corrupt(_)));
    }

    #[test]
    fn segment_names_parse_back() {
        assert_eq!(parse_segment_name(&segment_name(3, 42)), Some((3, 42)));
        assert_eq!(parse_segment_name("other.txt"), None);
    }

    #[tokio::test]
    async fn appended_records_reach_the_file_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path(), 0, 0, 1 << 20, false).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let flusher = tokio::spawn(Arc::clone(&spool).run_flusher(stop));
        let first = spool.append(&tx("/1"), Stage::Begun).unwrap();
        let second = spool.append(&tx("/2"), Stage::Final).unwrap();
        spool.written(second).await.unwrap();
        assert!(first < second);
        let bytes = std::fs::read(dir.path().join(segment_name(0, 0))).unwrap();
        let FrameRead::Frame(n) = next_frame(&bytes) else {
            panic!()
        };
        assert!(matches!(next_frame(&bytes[n..]), FrameRead::Frame(_)));
        let _ = stop_tx.send(true);
        flusher.abort();
    }
}
