//! The transaction-listing benchmark: fills an embedded store with realistic records, then times
//! `list_transactions` for the shapes of query the API makes. The target: with 1,000,000 records,
//! the newest 20 of a channel with a status filter in at most 20 ms at p99.
//!
//! Settings (environment):
//! - `RECORDS` (default 1,000,000): how many records the store holds.
//! - `QUERIES` (default 2,000): timed queries per shape; 0 only fills the store (and reports its
//!   size).
//! - `HOT_PATH` (default 20,000): records then written as the recorder writes them (each record
//!   twice: begun, then final), to time the write path on a full store; 0 to skip.
//! - `LISTING_DIR`: keep the store there (and reuse it when it already holds `RECORDS`);
//!   otherwise a temporary directory. A Mediary whose `[store] data_dir` is that folder serves the
//!   records (`bench/listing.sh` does that); their channels are `common::channel_id`s.
//!
//! Run: `cargo bench -p mediary --bench tx_listing`.

mod common;

// As the `mediary` binary: the store's costs depend on the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regex::Regex;

use mediary::store::embedded::EmbeddedStore;
use mediary::store::{ResponseStatus, Store, StoredTx, TxQuery};
use mediary::transaction::{Stage, Status, Timestamp, Transaction};

use common::{CHANNELS, channel_id, disk_use, mix, setting};

const BATCH: usize = 1000;
const PAGE: usize = 20;
/// Records are spread over 30 days before this time (2025-06-15), one id per millisecond at most.
const END_MS: u64 = 1_750_000_000_000;
const SPAN_MS: u64 = 30 * 24 * 3600 * 1000;

struct Shape {
    step_ms: u64,
    start_ms: u64,
}

impl Shape {
    fn new(records: u64) -> Shape {
        let step_ms = (SPAN_MS / records.max(1)).max(1);
        Shape {
            step_ms,
            start_ms: END_MS - step_ms * records,
        }
    }

    fn ms(&self, i: u64) -> u64 {
        self.start_ms + i * self.step_ms
    }
}

/// Record `i` of a store shaped by `shape`.
fn record(shape: &Shape, i: u64) -> Transaction {
    common::record(i, shape.ms(i))
}

/// Encodes records `from..to` in batches on a thread of its own, so the writer only writes.
fn generate(shape: Arc<Shape>, from: u64, to: u64, stage: Stage) -> mpsc::Receiver<Vec<StoredTx>> {
    let (tx, rx) = mpsc::sync_channel(8);
    std::thread::spawn(move || {
        let mut i = from;
        while i < to {
            let end = (i + BATCH as u64).min(to);
            let batch = (i..end)
                .map(|i| StoredTx::new(&record(&shape, i), stage))
                .collect();
            if tx.send(batch).is_err() {
                return;
            }
            i = end;
        }
    });
    rx
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

fn main() {
    // As the `mediary` binary does (see its `main`).
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let records = setting("RECORDS", 1_000_000);
    let queries = setting("QUERIES", 2_000) as usize;
    let hot_path = setting("HOT_PATH", 20_000);
    let (dir, _temp) = match std::env::var_os("LISTING_DIR") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let temp = tempfile::tempdir().expect("a temporary directory");
            (temp.path().to_owned(), Some(temp))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).expect("the store opens"));
    let shape = Arc::new(Shape::new(records));

    // ----- populate -----
    let held = runtime.block_on(store.count_transactions()).expect("count");
    println!("store: {} (holds {held} records)", dir.display());
    if held < records {
        let started = Instant::now();
        let mut done = held;
        let mut last_report = Instant::now();
        let mut last_sync = Instant::now();
        for batch in generate(Arc::clone(&shape), held, records, Stage::Final) {
            done += batch.len() as u64;
            runtime
                .block_on(store.put_transactions(batch))
                .expect("the batch is stored");
            // As the recorder: batches are durable once synced, at least every second.
            if last_sync.elapsed() > Duration::from_secs(1) {
                runtime.block_on(store.sync()).expect("synced");
                last_sync = Instant::now();
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "  {done} records, {:.0} records/s so far",
                    (done - held) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        runtime.block_on(store.sync()).expect("synced");
        let took = started.elapsed();
        println!(
            "populated {} records in {:.1} s: {:.0} records/s (batches of {BATCH}, one commit each)",
            records - held,
            took.as_secs_f64(),
            (records - held) as f64 / took.as_secs_f64()
        );
    }
    let count = runtime.block_on(store.count_transactions()).expect("count");
    let sample: Vec<usize> = (0..1000)
        .map(|i| record(&shape, i).encode().len())
        .collect();
    println!(
        "encoded record: {:.0} bytes on average",
        sample.iter().sum::<usize>() as f64 / sample.len() as f64
    );
    let (size, on_disk) = disk_use(&dir);
    println!(
        "records: {count}; files: {:.0} MiB, {:.0} MiB on disk ({:.2} KiB per record)",
        mib(size),
        mib(on_disk),
        on_disk as f64 / 1024.0 / count.max(1) as f64
    );
    if queries == 0 {
        return;
    }

    // ----- list -----
    let newest = runtime
        .block_on(store.newest_transaction())
        .expect("newest")
        .expect("a record");
    let mut rng = Rng(42);
    let channel = |rng: &mut Rng| Some(channel_id(rng.below(CHANNELS)));
    let hour = 3600 * 1000;
    let window = |rng: &mut Rng| {
        let from = shape.start_ms + rng.below(SPAN_MS.min(records * shape.step_ms) - hour);
        (Some(Timestamp(from)), Some(Timestamp(from + hour)))
    };
    type MakeQuery<'a> = Box<dyn Fn(&mut Rng) -> TxQuery + 'a>;
    let base = TxQuery {
        snapshot: Some(newest),
        limit: PAGE,
        ..TxQuery::default()
    };
    let shapes: Vec<(&str, MakeQuery)> = vec![
        (
            "channel + Failed (the target)",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                statuses: vec![Status::Failed],
                ..base.clone()
            }),
        ),
        (
            "channel + Successful",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                statuses: vec![Status::Successful],
                ..base.clone()
            }),
        ),
        (
            "channel + Failed or Completed",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                statuses: vec![Status::Failed, Status::Completed],
                ..base.clone()
            }),
        ),
        (
            "channel + Successful, page 11 (offset 200)",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                statuses: vec![Status::Successful],
                offset: 200,
                ..base.clone()
            }),
        ),
        (
            "channel only",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                ..base.clone()
            }),
        ),
        (
            "status Failed only",
            Box::new(|_| TxQuery {
                statuses: vec![Status::Failed],
                ..base.clone()
            }),
        ),
        ("no filter", Box::new(|_| base.clone())),
        (
            "time range (1 h)",
            Box::new(|rng| {
                let (from, to) = window(rng);
                TxQuery {
                    from,
                    to,
                    ..base.clone()
                }
            }),
        ),
        (
            "channel + time range (1 h)",
            Box::new(|rng| {
                let (from, to) = window(rng);
                TxQuery {
                    channel_id: channel(rng),
                    from,
                    to,
                    ..base.clone()
                }
            }),
        ),
        (
            "channel + response 5xx (unindexed)",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                response_status: Some(ResponseStatus::Class(5)),
                ..base.clone()
            }),
        ),
        (
            "channel + path regex (unindexed)",
            Box::new(|rng| TxQuery {
                channel_id: channel(rng),
                path: Some(Regex::new("^/fhir/Encounter/").expect("a regex")),
                ..base.clone()
            }),
        ),
    ];

    println!();
    println!("{queries} queries per shape (after 20 untimed), newest {PAGE}, store of {count}:");
    println!();
    println!("| query | p50 ms | p95 ms | p99 ms | max ms | rows |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, make) in &shapes {
        let mut times = Vec::with_capacity(queries);
        let mut rows = 0;
        for n in 0..queries + 20 {
            let query = make(&mut rng);
            let started = Instant::now();
            let page = runtime
                .block_on(store.list_transactions(&query))
                .expect("a listing");
            let took = started.elapsed();
            assert!(page.windows(2).all(|w| w[0].id > w[1].id));
            assert!(page.iter().all(|tx| query.matches(tx)));
            if n >= 20 {
                times.push(took);
                rows += page.len();
            }
        }
        times.sort_unstable();
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
            rows as f64 / queries as f64
        );
    }

    // ----- the recorder's write pattern on a full store -----
    if hot_path > 0 {
        let from = count.max(records);
        let hot = Arc::new(Shape {
            step_ms: 1,
            start_ms: END_MS + 1,
        });
        let begun: Vec<Vec<StoredTx>> =
            generate(Arc::clone(&hot), from, from + hot_path, Stage::Begun)
                .into_iter()
                .collect();
        let last: Vec<Vec<StoredTx>> = generate(hot, from, from + hot_path, Stage::Final)
            .into_iter()
            .collect();
        let started = Instant::now();
        for (begun, last) in begun.into_iter().zip(last) {
            runtime
                .block_on(store.put_transactions(begun))
                .expect("stored");
            runtime
                .block_on(store.put_transactions(last))
                .expect("stored");
        }
        let took = started.elapsed();
        println!();
        println!(
            "write path: {hot_path} records, each begun then final, batches of {BATCH}: {:.1} s, \
             {:.0} records/s ({:.0} writes/s), {:.1} ms per batch commit",
            took.as_secs_f64(),
            hot_path as f64 / took.as_secs_f64(),
            2.0 * hot_path as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / (2.0 * hot_path as f64 / BATCH as f64)
        );
    }
}
