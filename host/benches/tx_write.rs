//! The transaction-write benchmark: `put_transactions` the way the recorder's drainer calls it, to
//! measure what recording costs per record. The budget: at most ~4 µs of CPU per ~3.3 KB record
//! (≥ 250,000 records/s on one thread).
//!
//! The workload (encoded before the clock starts; each batch's bytes are copied into fresh buffers
//! just before the call, as the drainer copies records out of its read buffer, so they are in the
//! CPU's cache as they would be):
//! - one batch per drain pass, of `BATCH_MIN`..=`BATCH_MAX` new transactions (default 200–400), in
//!   the arbitrary order of the drainer's hash map;
//! - `BEGUN_PERCENT` (default 10) of the transactions arrive in two stages: `Processing` (the
//!   request only) in their batch, then `Final` in the next one, which replaces it; the others
//!   arrive once, `Final`;
//! - ids time-ordered as a proxy serving 20,000 requests/s makes them;
//! - a `sync()` (durable commit) at least every second, as the drainer makes, and one at the end
//!   (inside the timing).
//!
//! Settings (environment):
//! - `RECORDS` (default 300,000): transactions written while timed.
//! - `PRELOAD` (default 100,000): transactions written first, untimed, the same way, so the timed
//!   writes land in a store that is not empty.
//! - `BATCH_MIN`, `BATCH_MAX`, `BEGUN_PERCENT`: as above.
//! - `SYNC_MS` (default 1,000): the longest time between two syncs.
//! - `RATE` (default 0): records per second to write at, as a proxy under that load would hand
//!   them over (a batch once its records have arrived); 0 writes as fast as the store takes them.
//! - `WRITE_DIR`: the store's folder (emptied first); otherwise a temporary directory.
//! - `REDIS_URL`: write to the Redis store there instead (under a prefix of its own, left behind:
//!   use a scratch Redis), and report the Redis server's CPU per record too (`INFO cpu`).
//!
//! It prints records/s, wall and CPU µs per record written (a transaction in two stages is two
//! records), batch latencies and sync times. CPU is from `/proc/*/stat` (10 ms ticks): "store" is
//! every thread but the calling one (the blocking pool's threads, where the store works, with the
//! kernel work they cause: writes, fsyncs), user and system; "process" adds the calling thread
//! (the copy above, the runtime's hand-offs). Nothing else runs while timed.
//!
//! Run: `cargo bench -p mediary --bench tx_write`.
//!
//! To compare with another version of the store (say the committed one), build this benchmark
//! against it in a copy of the tree (`git archive HEAD | tar -x -C /tmp/before`, copy `benches/`
//! and the `[[bench]]` entries over, `CARGO_TARGET_DIR=/tmp/before/target cargo bench -p mediary
//! --bench tx_write --no-run`), then run both binaries alternately, several times: on a shared
//! machine one run's noise is larger than many differences (the kernel's share varies most).

mod common;

// As the `mediary` binary: the store's costs depend on the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use mediary::store::embedded::{EmbeddedStore, FILE_NAME};

/// The record log's folder (`mediary::store::embedded::LOG_DIR`; spelled out so that the benchmark
/// also builds against versions without one).
const LOG_DIR: &str = "records";
use mediary::store::redis::{RedisSettings, RedisTarget};
use mediary::store::{Store, StoredTx};
use mediary::transaction::{Stage, Status};

use common::{begun, cpu_time, disk_use, mix, record, setting};

/// 2025-06-15, as in the listing benchmark; the write benchmark's records come after it.
const START_MS: u64 = 1_750_000_000_000;
/// Transactions per millisecond of simulated traffic (20,000 requests/s).
const PER_MS: u64 = 20;

/// The batches for transactions `from..to`: the drainer's view of the traffic.
fn batches(from: u64, to: u64, min: u64, max: u64, begun_percent: u64) -> Vec<Vec<StoredTx>> {
    let mut out = Vec::new();
    // Second stages owed to the next batch.
    let mut owed: Vec<StoredTx> = Vec::new();
    let mut i = from;
    let mut n = 0u64;
    while i < to || !owed.is_empty() {
        let size = min + mix(n ^ 0x5eed) % (max - min + 1);
        let end = (i + size).min(to);
        let mut batch = std::mem::take(&mut owed);
        for i in i..end {
            let ms = START_MS + i / PER_MS;
            if mix(i ^ 0xbe9) % 100 < begun_percent {
                batch.push(StoredTx::new(&begun(i, ms), Stage::Begun));
                owed.push(StoredTx::new(&record(i, ms), Stage::Final));
            } else {
                batch.push(StoredTx::new(&record(i, ms), Stage::Final));
            }
        }
        // The drainer's batch comes out of a hash map: no particular order.
        let len = batch.len();
        for k in (1..len).rev() {
            batch.swap(k, (mix(n << 20 ^ k as u64) % (k as u64 + 1)) as usize);
        }
        out.push(batch);
        i = end;
        n += 1;
    }
    out
}

/// Encodes the batches for `from..to` on both cores.
fn prepare(from: u64, to: u64, min: u64, max: u64, begun_percent: u64) -> Vec<Vec<StoredTx>> {
    // Split on a batch boundary is not needed: each half stands alone (its last Begun records get
    // their Final stage in an extra batch of that half).
    let mid = from + (to - from) / 2;
    let second = std::thread::spawn(move || batches(mid, to, min, max, begun_percent));
    let mut out = batches(from, mid, min, max, begun_percent);
    out.extend(second.join().expect("the generator thread"));
    out
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

struct Run {
    writes: u64,
    batches: usize,
    wall: Duration,
    /// User and system CPU time of the store: the whole process but the calling thread.
    cpu: Option<(Duration, Duration)>,
    /// Of the whole process.
    process_cpu: Option<(Duration, Duration)>,
    batch_times: Vec<Duration>,
    sync_times: Vec<Duration>,
}

/// Writes `batches` as the drainer does: a call each, a sync at least every second and at the end.
fn write(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn Store>,
    batches: Vec<Vec<StoredTx>>,
    sync_every: Duration,
    rate: u64,
) -> Run {
    let count = batches.len();
    let writes = batches.iter().map(|b| b.len() as u64).sum();
    let mut batch_times = Vec::with_capacity(count);
    let mut sync_times = Vec::new();
    let process_before = cpu_time("self");
    let caller_before = cpu_time("thread-self");
    let started = Instant::now();
    let mut last_sync = started;
    let mut sent = 0u64;
    for batch in batches {
        if rate > 0 {
            // As the drainer: a batch when its records have arrived.
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        sent += batch.len() as u64;
        // The drainer copies each record out of its read buffer just before it hands the batch
        // over, so the bytes are in the CPU's cache; this thread's time is not the store's.
        let batch: Vec<StoredTx> = batch
            .into_iter()
            .map(|tx| StoredTx {
                bytes: Bytes::copy_from_slice(&tx.bytes),
                ..tx
            })
            .collect();
        let t = Instant::now();
        runtime
            .block_on(store.put_transactions(batch))
            .expect("the batch is stored");
        batch_times.push(t.elapsed());
        if last_sync.elapsed() >= sync_every {
            let t = Instant::now();
            runtime.block_on(store.sync()).expect("synced");
            sync_times.push(t.elapsed());
            last_sync = Instant::now();
        }
    }
    let t = Instant::now();
    runtime.block_on(store.sync()).expect("synced");
    sync_times.push(t.elapsed());
    let wall = started.elapsed();
    let delta = |before: Option<(Duration, Duration)>, after: Option<(Duration, Duration)>| {
        before
            .zip(after)
            .map(|((user, sys), (user2, sys2))| (user2 - user, sys2 - sys))
    };
    let process_cpu = delta(process_before, cpu_time("self"));
    let caller = delta(caller_before, cpu_time("thread-self"));
    let cpu = process_cpu
        .zip(caller)
        .map(|((user, sys), (cu, cs))| (user.saturating_sub(cu), sys.saturating_sub(cs)));
    batch_times.sort_unstable();
    sync_times.sort_unstable();
    Run {
        writes,
        batches: count,
        wall,
        cpu,
        process_cpu,
        batch_times,
        sync_times,
    }
}

/// The Redis server's CPU seconds so far (user + system, every thread), from `INFO cpu`.
fn redis_cpu(url: &str) -> f64 {
    let client = redis::Client::open(url).expect("REDIS_URL is a Redis URL");
    let mut con = client.get_connection().expect("Redis answers");
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut con)
        .expect("INFO cpu");
    info.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

fn main() {
    // As the `mediary` binary does (see its `main`).
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let records = setting("RECORDS", 300_000);
    let preload = setting("PRELOAD", 100_000);
    let min = setting("BATCH_MIN", 200).max(1);
    let max = setting("BATCH_MAX", 400).max(min);
    let begun_percent = setting("BEGUN_PERCENT", 10).min(100);
    let sync_every = Duration::from_millis(setting("SYNC_MS", 1000));
    let rate = setting("RATE", 0);
    let (dir, _temp) = match std::env::var_os("WRITE_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let _ = std::fs::remove_file(dir.join(FILE_NAME));
            let _ = std::fs::remove_dir_all(dir.join(LOG_DIR));
            (dir, None)
        }
        None => {
            let temp = tempfile::tempdir().expect("a temporary directory");
            (temp.path().to_owned(), Some(temp))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let redis_url = std::env::var("REDIS_URL").ok();
    let store: Arc<dyn Store> = match &redis_url {
        None => Arc::new(EmbeddedStore::open(&dir).expect("the store opens")),
        Some(url) => runtime
            .block_on(mediary::store::redis::connect(RedisSettings {
                target: RedisTarget::parse(url).expect("REDIS_URL is a Redis URL"),
                prefix: format!("tx-write-bench-{}:", std::process::id()),
                timeout: Duration::from_secs(10),
                poll_interval: Duration::from_secs(1),
            }))
            .expect("Redis answers"),
    };

    let encoding = Instant::now();
    let warm = prepare(0, preload, min, max, begun_percent);
    let timed = prepare(preload, preload + records, min, max, begun_percent);
    let sizes: Vec<usize> = timed.iter().flatten().map(|tx| tx.bytes.len()).collect();
    let final_bytes: Vec<usize> = timed
        .iter()
        .flatten()
        .filter(|tx| tx.status != Status::Processing)
        .map(|tx| tx.bytes.len())
        .collect();
    println!(
        "store: {}; encoded {} + {} transactions in {:.1} s; records {:.0} bytes on average \
         (final stage {:.0})",
        dir.display(),
        preload,
        records,
        encoding.elapsed().as_secs_f64(),
        sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64,
        final_bytes.iter().sum::<usize>() as f64 / final_bytes.len().max(1) as f64,
    );

    if preload > 0 {
        let run = write(&runtime, &store, warm, sync_every, 0);
        println!(
            "preload: {} records in {:.1} s ({:.0} records/s)",
            run.writes,
            run.wall.as_secs_f64(),
            run.writes as f64 / run.wall.as_secs_f64()
        );
    }

    let server_before = redis_url.as_deref().map(redis_cpu);
    let run = write(&runtime, &store, timed, sync_every, rate);
    let server_cpu = redis_url
        .as_deref()
        .zip(server_before)
        .map(|(url, before)| redis_cpu(url) - before);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / run.writes as f64;
    println!();
    println!(
        "timed: {} transactions as {} record writes in {} batches ({min}–{max} transactions, \
         {begun_percent}% in two stages), {} syncs, {}",
        records,
        run.writes,
        run.batches,
        run.sync_times.len(),
        if rate > 0 {
            format!("paced at {rate} records/s")
        } else {
            "as fast as the store takes them".to_owned()
        }
    );
    let cpu = |cpu: Option<(Duration, Duration)>, f: fn(Duration, Duration) -> Duration| {
        cpu.map_or_else(|| "n/a".to_owned(), |(u, s)| format!("{:.2}", per(f(u, s))))
    };
    let in_sync: Duration = run.sync_times.iter().sum();
    println!();
    println!(
        "| records/s | wall µs/record | store CPU µs/record | user | system | process CPU \
         µs/record | batch p50 ms | batch p99 ms | syncs: share of wall | sync p50 ms | sync max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.2} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0}% | {:.1} | {:.1} |",
        run.writes as f64 / run.wall.as_secs_f64(),
        per(run.wall),
        cpu(run.cpu, |u, s| u + s),
        cpu(run.cpu, |u, _| u),
        cpu(run.cpu, |_, s| s),
        cpu(run.process_cpu, |u, s| u + s),
        percentile(&run.batch_times, 0.5),
        percentile(&run.batch_times, 0.99),
        100.0 * in_sync.as_secs_f64() / run.wall.as_secs_f64(),
        percentile(&run.sync_times, 0.5),
        percentile(&run.sync_times, 1.0),
    );
    if let Some(server) = server_cpu {
        println!();
        println!(
            "Redis server CPU: {:.2} µs/record (user + system, from INFO cpu); with this \
             process: {:.2} µs/record",
            server * 1e6 / run.writes as f64,
            server * 1e6 / run.writes as f64
                + run
                    .process_cpu
                    .map_or(0.0, |(u, s)| (u + s).as_secs_f64() * 1e6
                        / run.writes as f64),
        );
    }
    let (size, allocated) = disk_use(&dir);
    let count = runtime
        .block_on(store.count_transactions())
        .expect("a count");
    println!();
    println!(
        "store: {count} transactions; {:.0} MiB of files, {:.0} MiB on disk ({:.2} KiB per \
         transaction)",
        size as f64 / (1024.0 * 1024.0),
        allocated as f64 / (1024.0 * 1024.0),
        allocated as f64 / 1024.0 / count.max(1) as f64
    );
    // One line for scripts.
    println!(
        "RESULT records_per_s={:.0} store_cpu_us_per_record={} process_cpu_us_per_record={} \
         wall_us_per_record={:.2}",
        run.writes as f64 / run.wall.as_secs_f64(),
        cpu(run.cpu, |u, s| u + s),
        cpu(run.process_cpu, |u, s| u + s),
        per(run.wall)
    );
}
