//! `--workers N`: N threads named `mediary-w<i>`, each pinned to one core
//! (worker i on the i-th core this process may use, wrapping around), each
//! accepting connections on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mediary_e2e::linux::{ThreadInfo, allowed_cores};
use mediary_e2e::{Client, Mediary, Upstream, public_channel};

/// The child's worker threads by name (`mediary-w0`, ...). A worker's
/// runtime may have helper threads with the same name; they are all listed.
fn workers_of(mediary: &Mediary) -> BTreeMap<String, Vec<ThreadInfo>> {
    let mut workers: BTreeMap<String, Vec<ThreadInfo>> = BTreeMap::new();
    for thread in mediary.threads() {
        if thread.name.starts_with("mediary-w") {
            workers.entry(thread.name.clone()).or_default().push(thread);
        }
    }
    workers
}

fn context_switches(threads: &[ThreadInfo]) -> u64 {
    threads.iter().map(|thread| thread.context_switches).sum()
}

#[test]
fn two_workers_are_pinned_to_one_core_each_and_both_serve() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream))
        .workers(2)
        .start();
    assert_eq!(
        mediary.workers(),
        Some(2),
        "the readiness line says workers=2"
    );

    let cores = allowed_cores();
    let before = workers_of(&mediary);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["mediary-w0", "mediary-w1"],
        "worker threads: {before:#?}"
    );
    for (i, name) in ["mediary-w0", "mediary-w1"].into_iter().enumerate() {
        for thread in &before[name] {
            assert_eq!(
                thread.cpus_allowed,
                [cores[i % cores.len()]],
                "{name} (tid {}) should run on exactly core {} of {cores:?}",
                thread.tid,
                cores[i % cores.len()]
            );
        }
    }

    let client = Client::one_connection_per_request();
    for i in 0..50 {
        let reply = client.get(mediary.url(&format!("/echo/{i}"))).send();
        assert_eq!(reply.status(), 200, "request {i} on its own connection");
    }
    assert_eq!(upstream.requests().len(), 50);

    // Indirect evidence that both workers accepted connections: a worker
    // that served nothing stays asleep in the kernel.
    let after = workers_of(&mediary);
    for name in ["mediary-w0", "mediary-w1"] {
        assert!(
            context_switches(&after[name]) > context_switches(&before[name]),
            "{name} never woke up while 50 connections were served"
        );
    }
}

#[test]
fn cluster_is_an_alias_of_workers() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream))
        .arg("--cluster")
        .arg("2")
        .start();

    assert_eq!(mediary.workers(), Some(2));
    assert_eq!(workers_of(&mediary).len(), 2);
}

#[test]
fn auto_starts_one_worker_per_core() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream))
        .workers("auto")
        .start();

    let cores = allowed_cores();
    assert_eq!(mediary.workers(), Some(cores.len()));
    let workers = workers_of(&mediary);
    assert_eq!(workers.len(), cores.len(), "{workers:#?}");
    assert_eq!(Client::new().get(mediary.url("/echo")).send().status(), 200);
}

#[test]
fn one_worker_serves_slow_requests_concurrently() {
    let upstream = Upstream::slow(Duration::from_secs(1));
    let mediary = Mediary::with_config(public_channel("slow", "^/slow", &upstream))
        .workers(1)
        .start();
    let client = Client::one_connection_per_request();
    let started = Instant::now();

    let in_flight: Vec<_> = (0..10)
        .map(|i| {
            client
                .get(mediary.url(&format!("/slow/{i}")))
                .send_in_background()
        })
        .collect();
    for (i, reply) in in_flight.into_iter().enumerate() {
        let reply = reply.join().expect("the client thread");
        assert_eq!(reply.status(), 200, "request {i}");
    }

    assert!(
        started.elapsed() < Duration::from_secs(6),
        "10 requests of 1 s each took {:?}: they were not served concurrently",
        started.elapsed()
    );
}
