//! Several Mediary instances sharing one Redis store: behind HAProxy they serve as one (channels,
//! plugins, plugin key-value, transactions), an instance killed under load loses only what it had
//! in flight, and Redis killed, stalled or failed over mid-load costs no acknowledged record.
//!
//! Every test starts its own `redis-server` (and Sentinel, HAProxy) on free ports of 127.0.0.1
//! and gives its instances a key prefix of its own. The tests take turns ([`serial`]): each runs
//! up to seven processes and measures latencies on a 2-core machine.
//!
//! The ledger: load threads send uniquely-identifiable requests (`/ledger/<thread>-<n>`) and
//! remember how each ended; once the instances have drained their spools, every request that got
//! a 2xx must have exactly one transaction record (counted by path through the API), and no path
//! more than one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mediary_e2e::api::plugin_channel_json;
use mediary_e2e::plugins::{GUARD, TEST_TAG_A, TEST_TAG_B};
use mediary_e2e::{
    Answer, Api, Backend, Balancer, Client, Load, Mediary, Outcome, Redis, Reply, Sentinel,
    Upstream, channel_json, eventually, filters, unused_port,
};
use serde_json::{Value, json};

/// The instances' names, in the order they are started.
const NAMES: [&str; 3] = ["m1", "m2", "m3"];

/// How long a change made through one instance's API may take to apply on every instance. The
/// promise is about a second (pub/sub, and a poll every 500 ms); the measured time is printed.
const APPLY: Duration = Duration::from_secs(3);

/// How long a record may take to reach the store once Redis answers.
const DRAIN: Duration = Duration::from_secs(60);

/// `store.timeout` of the stalled-Redis test, and how much longer than it a request may take.
const STALL_TIMEOUT: &str = "1s";
const STALL_BOUND: Duration = Duration::from_millis(2500);

/// The cluster tests take turns; see the module documentation.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- fixtures -----

/// Where the instances keep their shared state.
struct Store {
    url: String,
    /// This test's own key prefix.
    prefix: String,
    /// `store.timeout`.
    timeout: &'static str,
}

impl Store {
    fn new(url: String, test: &str) -> Store {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .subsec_nanos();
        Store {
            url,
            prefix: format!("e2e-{test}-{}-{nanos}:", std::process::id()),
            timeout: "2s",
        }
    }

    fn timeout(mut self, timeout: &'static str) -> Store {
        self.timeout = timeout;
        self
    }
}

/// The config of instance `name`: fixed ports (so a restart keeps them and the balancer finds it
/// again), its own data directory (beside its config file: its spool), the shared store.
fn instance_config(name: &str, store: &Store) -> String {
    format!(
        r#"[server]
bind = "127.0.0.1"
http_port = {http}
api_port = {api}
instance = "{name}"

[store]
data_dir = "data"
url = "{url}"
prefix = "{prefix}"
timeout = "{timeout}"
poll_interval = "500ms"

[cluster]
heartbeat_interval = "1s"
instance_ttl = "5s"
"#,
        http = unused_port(),
        api = unused_port(),
        url = store.url,
        prefix = store.prefix,
        timeout = store.timeout,
    )
}

/// Starts instances `names` on `store`, two workers each, all at once (as an orchestrator would).
fn start_instances(names: &[&str], store: &Store) -> Vec<Mediary> {
    let launches: Vec<_> = names
        .iter()
        .map(|name| {
            let config = instance_config(name, store);
            std::thread::spawn(move || Mediary::with_config(config).workers(2).start())
        })
        .collect();
    launches
        .into_iter()
        .map(|launch| launch.join().expect("an instance started"))
        .collect()
}

/// HAProxy in front of `instances` (named as [`NAMES`]), checking each on `/health/ready`.
fn balancer_for(instances: &[Mediary]) -> Balancer {
    let backends: Vec<Backend> = instances
        .iter()
        .zip(NAMES)
        .map(|(m, name)| Backend::new(name, m.addr()).health(m.api_addr(), "/health/ready"))
        .collect();
    let balancer = Balancer::round_robin(&backends);
    balancer.wait_for_up(&NAMES[..instances.len()], Duration::from_secs(10));
    balancer
}

/// `GET /cluster` of one instance.
fn cluster_view(instance: &Mediary) -> Value {
    let reply = instance.api().get("/cluster").send();
    assert_eq!(reply.status(), 200, "GET /cluster: {}", reply.text());
    reply.json()
}

/// Waits until every instance's `GET /cluster` lists exactly `names`, all on the same
/// generation, converged, each marking itself; returns that view of the first instance.
fn wait_converged(instances: &[Mediary], names: &[&str]) -> Value {
    let mut expected: Vec<&str> = names.to_vec();
    expected.sort_unstable();
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(15);
    'poll: loop {
        assert!(
            Instant::now() < deadline,
            "the instances did not converge; last view: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut first = None;
        for (instance, own) in instances.iter().zip(names) {
            let view = cluster_view(instance);
            last = view.clone();
            let listed = view["instances"].as_array().cloned().unwrap_or_default();
            let mut listed_names: Vec<&str> = listed
                .iter()
                .filter_map(|i| i["instance"].as_str())
                .collect();
            listed_names.sort_unstable();
            let selves: Vec<&str> = listed
                .iter()
                .filter(|i| i["self"] == true)
                .filter_map(|i| i["instance"].as_str())
                .collect();
            let settled = view["store"] == "redis"
                && view["converged"] == true
                && listed_names == expected
                && selves == [*own]
                && listed
                    .iter()
                    .all(|i| i["current"] == true && i["generation"] == view["generation"]);
            if !settled {
                continue 'poll;
            }
            first.get_or_insert(view);
        }
        return first.expect("at least one instance");
    }
}

/// Waits until `url` answers 200, polling; returns how long that took.
fn wait_served(client: &Client, url: &str) -> Duration {
    let started = Instant::now();
    eventually(APPLY, &format!("{url} is served"), || {
        client
            .get(url)
            .try_send()
            .ok()
            .filter(|reply| reply.status() == 200)
    });
    started.elapsed()
}

/// Waits until each instance serves the ledger channel, with a path of its own
/// (`/ledger/warm-up-<n>`), so every path is still sent once.
fn warm_up(client: &Client, instances: &[Mediary]) {
    for (n, instance) in instances.iter().enumerate() {
        wait_served(client, &instance.url(&format!("/ledger/warm-up-{n}")));
    }
}

/// `GET /health/ready` of one instance: status, body, and how long it took.
fn readiness(instance: &Mediary) -> (u16, Value, Duration) {
    let started = Instant::now();
    let reply = Client::new().get(instance.api_url("/health/ready")).send();
    let elapsed = started.elapsed();
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status(), body, elapsed)
}

/// The tag a test-tag plugin put on a response.
fn tag(reply: &Reply) -> &str {
    reply.header("x-plugin-tag").unwrap_or("(none)")
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit")
}

/// The guard's windows are fixed minutes of the wall clock: waits until the current one has at
/// least 10 s left.
fn clear_of_a_window_boundary() {
    let into_window = now_ms() % 60_000;
    if into_window > 50_000 {
        std::thread::sleep(Duration::from_millis(60_500 - into_window));
    }
}

// ----- the ledger -----

/// The path of request `n` of load thread `thread`.
fn ledger_path(prefix: &str, thread: usize, n: usize) -> String {
    format!("{prefix}/{thread}-{n}")
}

/// What the load's clients saw.
#[derive(Debug, Default)]
struct Ledger {
    /// Path of every request answered 2xx, and the transaction id its response named.
    answered: BTreeMap<String, String>,
    /// Path of every other request, and how it ended.
    failed: BTreeMap<String, String>,
}

impl Ledger {
    fn of(outcomes: &[Outcome], path: impl Fn(&Outcome) -> String) -> Ledger {
        let mut ledger = Ledger::default();
        for outcome in outcomes {
            let path = path(outcome);
            match &outcome.reply {
                Ok(reply) if (200..300).contains(&reply.status()) => {
                    ledger.answered.insert(path, reply.transaction_id());
                }
                Ok(reply) => {
                    ledger.failed.insert(
                        path,
                        format!("{} {}", reply.status(), reply.text().trim_end()),
                    );
                }
                Err(error) => {
                    ledger.failed.insert(path, error.clone());
                }
            }
        }
        ledger
    }
}

/// Every record whose path matches `pattern`, by path (summary representation: no bodies).
fn records_by_path(api: &Api, pattern: &str) -> HashMap<String, Vec<Value>> {
    let query = format!(
        "{}&filterRepresentation=",
        filters(&json!({ "request.path": pattern }))
    );
    let mut by_path: HashMap<String, Vec<Value>> = HashMap::new();
    for record in api.all_transactions(&query) {
        let path = record["request"]["path"]
            .as_str()
            .expect("a record has a path")
            .to_owned();
        by_path.entry(path).or_default().push(record);
    }
    by_path
}

/// Polls the records matching `pattern` until each of `paths` has one that is no longer
/// `Processing`; returns them all, by path. Panics after `timeout`, naming a few missing paths.
fn wait_for_records<'a>(
    api: &Api,
    pattern: &str,
    paths: impl IntoIterator<Item = &'a String> + Clone,
    timeout: Duration,
) -> HashMap<String, Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = records_by_path(api, pattern);
        let missing: Vec<&String> = paths
            .clone()
            .into_iter()
            .filter(|path| {
                !records
                    .get(*path)
                    .is_some_and(|r| r.iter().any(|r| r["status"] != "Processing"))
            })
            .collect();
        if missing.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} answered requests still have no settled record after {timeout:?}, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The paths recorded more than once.
fn duplicates(records: &HashMap<String, Vec<Value>>) -> Vec<(&String, Vec<&Value>)> {
    records
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(path, r)| (path, r.iter().map(|r| &r["_id"]).collect()))
        .collect()
}

/// Checks that each answered request has exactly one record, the one its response named.
fn assert_recorded_once(ledger: &Ledger, records: &HashMap<String, Vec<Value>>) {
    let duplicated = duplicates(records);
    assert!(
        duplicated.is_empty(),
        "{} paths are recorded more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    for (path, id) in &ledger.answered {
        let record = &records.get(path).unwrap_or_else(|| panic!("{path}: lost"))[0];
        assert_eq!(record["_id"], id.as_str(), "{path}: {record:#}");
    }
}

// ----- three instances behind HAProxy -----

#[test]
fn three_instances_behind_haproxy_serve_and_record_as_one() {
    let _serial = serial();
    let redis = Redis::start();
    let store = Store::new(redis.url(), "three");
    let instances = start_instances(&NAMES, &store);
    let balancer = balancer_for(&instances);
    let apis: Vec<Api> = instances.iter().map(Mediary::api).collect();
    let view = wait_converged(&instances, &NAMES);
    println!("GET /cluster: {view:#}");

    // A channel created through m1 is served by every instance, each on its own port.
    let upstream = Upstream::echo();
    let channel = apis[0].create_channel(&channel_json("shared", "^/shared/", upstream.port()));
    let client = Client::new();
    for (instance, name) in instances.iter().zip(NAMES) {
        let took = wait_served(&client, &instance.url("/shared/probe"));
        println!("{name} serves the new channel {took:?} after its creation");
    }
    let generation = view["generation"].as_u64().expect("a generation");
    let view = wait_converged(&instances, &NAMES);
    assert!(
        view["generation"].as_u64() > Some(generation),
        "the channel moved the generation on: {view:#}"
    );

    // Through the balancer, every instance answers in turn.
    let mut served_by: BTreeMap<String, String> = BTreeMap::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..30 {
        let path = format!("/shared/rr/{n}");
        let reply = client.post(balancer.url(&path)).body(path.clone()).send();
        assert_eq!(reply.status(), 200, "{path}: {}", reply.text());
        assert_eq!(reply.text(), path);
        ids.insert(path, reply.transaction_id());
    }
    for (path, id) in &ids {
        let record = apis[0].settled_transaction(id, Duration::from_secs(10));
        assert_eq!(record["request"]["path"], path.as_str());
        assert_eq!(record["channelID"], channel["_id"]);
        let instance = record["instance"].as_str().expect("an instance").to_owned();
        served_by.insert(path.clone(), instance);
    }
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in served_by.values() {
        *per_instance.entry(instance).or_default() += 1;
    }
    println!("30 requests through haproxy, served: {per_instance:?}");
    assert_eq!(
        per_instance.keys().copied().collect::<Vec<_>>(),
        NAMES,
        "every instance serves through the balancer"
    );

    // A record made by m2 is found, filtered and rerun through m3 (and m1).
    let (path, id) = served_by
        .iter()
        .find(|(_, instance)| *instance == "m2")
        .map(|(path, _)| (path.clone(), ids[path].clone()))
        .expect("m2 served some");
    let on_m3 = apis[2].transaction(&id);
    assert_eq!(on_m3["instance"], "m2");
    assert_eq!(on_m3, apis[0].transaction(&id));
    let exact = format!("^{path}$");
    let filtered = apis[2].wait_for_transactions(
        &filters(&json!({"request.path": exact, "status": "Successful"})),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(filtered.ids(), std::slice::from_ref(&id));
    let by_channel = apis[2].wait_for_transactions(
        &format!(
            "{}&filterLimit=100",
            filters(&json!({"channelID": channel["_id"], "request.path": "^/shared/rr/"}))
        ),
        30,
        Duration::from_secs(10),
    );
    assert_eq!(by_channel.records.len(), 30);

    let rerun = apis[2].rerun(&id);
    assert_eq!(rerun.status(), 201, "{}", rerun.text());
    let child = rerun.json();
    assert_eq!(child["parentID"], id.as_str(), "{child:#}");
    assert_eq!(child["instance"], "m3", "a rerun runs where it is asked");
    assert_eq!(child["request"]["path"], path.as_str());
    let child_id = child["_id"].as_str().expect("an id").to_owned();
    eventually(
        Duration::from_secs(10),
        "m1 sees the rerun on the parent",
        || {
            let parent = apis[0].transaction(&id);
            let children = parent["childIDs"].as_array().cloned().unwrap_or_default();
            children.contains(&json!(child_id)).then_some(())
        },
    );
    assert_eq!(
        apis[0]
            .settled_transaction(&child_id, Duration::from_secs(10))
            .get("parentID"),
        Some(&json!(id))
    );
    let upstream_saw = upstream
        .requests()
        .iter()
        .filter(|seen| seen.path == path)
        .count();
    assert_eq!(upstream_saw, 2, "the request and its rerun");
}

#[test]
fn a_plugin_uploaded_on_one_instance_is_hot_reloaded_on_all() {
    let _serial = serial();
    let redis = Redis::start();
    let store = Store::new(redis.url(), "plugins");
    let instances = start_instances(&NAMES, &store);
    let balancer = balancer_for(&instances);
    let apis: Vec<Api> = instances.iter().map(Mediary::api).collect();
    let upstream = Upstream::echo();

    let first = apis[0].install_plugin("tag", TEST_TAG_A);
    assert_eq!(first["version"], 1, "{first}");
    apis[1].create_channel(&plugin_channel_json(
        "tagged",
        "^/tagged",
        upstream.port(),
        json!({"name": "tag"}),
    ));
    let client = Client::new();
    for instance in &instances {
        eventually(APPLY, "every instance runs version 1", || {
            let reply = client.get(instance.url("/tagged")).try_send().ok()?;
            (reply.status() == 200 && tag(&reply) == "a").then_some(())
        });
    }

    // Version 2, uploaded through m3: every instance switches to it.
    let uploaded = apis[2].install_plugin("tag", TEST_TAG_B);
    assert_eq!(uploaded["version"], 2, "{uploaded}");
    let uploaded_at = Instant::now();
    let mut switched = Vec::new();
    for (instance, name) in instances.iter().zip(NAMES) {
        eventually(APPLY, &format!("{name} runs version 2"), || {
            let reply = client.get(instance.url("/tagged")).try_send().ok()?;
            (reply.status() == 200 && tag(&reply) == "b").then_some(())
        });
        switched.push((name, uploaded_at.elapsed()));
    }
    println!("version 2 answers on each instance after: {switched:?}");

    let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for n in 0..12 {
        let reply = client.get(balancer.url(&format!("/tagged/{n}"))).send();
        assert_eq!(
            (reply.status(), tag(&reply)),
            (200, "b"),
            "{}",
            reply.text()
        );
        let record = apis[n % 3].settled_transaction(&reply.transaction_id(), DRAIN);
        versions
            .entry(record["instance"].as_str().expect("an instance").to_owned())
            .or_default()
            .insert(record["plugin"]["version"].as_u64().expect("a version"));
    }
    assert_eq!(
        versions,
        NAMES
            .iter()
            .map(|name| (name.to_string(), BTreeSet::from([2])))
            .collect(),
        "every instance served through the balancer, with version 2"
    );
    let plugin = apis[0].plugin("tag");
    assert_eq!(plugin["current"], 2, "{plugin:#}");
}

#[test]
fn a_guard_rate_limit_counts_across_the_cluster() {
    const LIMIT: usize = 10;
    let _serial = serial();
    let redis = Redis::start();
    let store = Store::new(redis.url(), "guard");
    let instances = start_instances(&NAMES, &store);
    let balancer = balancer_for(&instances);
    let api = instances[0].api();
    let upstream = Upstream::echo();

    api.install_plugin("guard", GUARD);
    api.create_channel(&plugin_channel_json(
        "guarded",
        "^/patients",
        upstream.port(),
        json!({
            "name": "guard",
            "config": {
                "rateLimit": {"requests": LIMIT, "windowMs": 60000},
                "clientHeader": "x-client-id",
            },
        }),
    ));
    let client = Client::new();
    for instance in &instances {
        // Each warm-up request counts for a client of its own.
        let url = instance.url("/patients?identifier=warm-up");
        eventually(APPLY, "every instance serves the guarded channel", || {
            let reply = client
                .get(url.clone())
                .header("x-client-id", &format!("warm-up-{}", instance.pid()))
                .try_send()
                .ok()?;
            (reply.status() == 200).then_some(())
        });
    }

    clear_of_a_window_boundary();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut served: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for n in 0..3 * LIMIT {
        let reply = client
            .get(balancer.url(&format!("/patients?identifier=p-{n}")))
            .header("x-client-id", "shared-client")
            .send();
        *statuses.entry(reply.status()).or_default() += 1;
        let record = api.settled_transaction(&reply.transaction_id(), DRAIN);
        let instance = record["instance"].as_str().expect("an instance").to_owned();
        *served.entry((reply.status(), instance)).or_default() += 1;
    }
    println!(
        "{} requests: {statuses:?}; by instance: {served:?}",
        3 * LIMIT
    );
    assert_eq!(
        statuses,
        BTreeMap::from([(200, LIMIT), (429, 2 * LIMIT)]),
        "the limit is {LIMIT} for the whole cluster, not per instance"
    );
    let instances_that_refused: BTreeSet<&str> = served
        .keys()
        .filter(|(status, _)| *status == 429)
        .map(|(_, instance)| instance.as_str())
        .collect();
    assert_eq!(
        instances_that_refused.into_iter().collect::<Vec<_>>(),
        NAMES,
        "every instance enforces the shared count"
    );
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|seen| seen.header("x-client-id") == Some("shared-client"))
            .count(),
        LIMIT
    );
}

/// How long the slow requests of the kill test take upstream: long enough that some are in flight
/// on the killed instance, short enough that the load stops soon after.
const SLOW: Duration = Duration::from_secs(4);

#[test]
fn an_instance_killed_under_load_loses_only_its_requests_in_flight() {
    const THREADS: usize = 6;
    let _serial = serial();
    let redis = Redis::start();
    let store = Store::new(redis.url(), "kill");
    let mut instances = start_instances(&NAMES, &store);
    let balancer = balancer_for(&instances);
    let api = instances[0].api();
    let upstream = Upstream::answering(|seen| {
        let answer = Answer::status(200).body(seen.body.clone());
        if seen.path.starts_with("/ledger/slow/") {
            answer.after(SLOW)
        } else {
            answer
        }
    });
    api.create_channel(&channel_json("ledger", "^/ledger/", upstream.port()));
    let client = Client::new();
    warm_up(&client, &instances);

    // Threads 3-5 make every other request slow, so each instance has some in flight at any time.
    let path = |thread: usize, n: usize| {
        let kind = if thread >= 3 && n % 2 == 1 {
            "slow"
        } else {
            "fast"
        };
        ledger_path(&format!("/ledger/{kind}"), thread, n)
    };
    let base = balancer.url("");
    let load = Load::start(THREADS, move |client, thread, n| {
        client
            .post(format!("{base}{}", path(thread, n)))
            .body(path(thread, n))
    });
    // Kill m3 once it has slow requests in flight.
    let in_flight = eventually(
        Duration::from_secs(20),
        "m3 has slow requests in flight",
        || {
            let query = format!(
                "{}&filterLimit=100",
                filters(&json!({"status": "Processing", "request.path": "^/ledger/slow/"}))
            );
            let paths: Vec<String> = api
                .transactions(&query)
                .records
                .iter()
                .filter(|r| r["instance"] == "m3")
                .filter_map(|r| r["request"]["path"].as_str().map(str::to_owned))
                .collect();
            (!paths.is_empty()).then_some(paths)
        },
    );
    let mut victim = instances.pop().expect("three instances");
    let killed_at = Instant::now();
    victim.kill();
    let gone_at = Instant::now();
    balancer.wait_for_up(&NAMES[..2], Duration::from_secs(5));
    println!("m3 left rotation {:?} after the kill", killed_at.elapsed());
    std::thread::sleep(Duration::from_secs(1));

    // Restarted at once, under load (same name, ports and spool), m3 waits out the heartbeat of
    // its killed run, marks what that run had in flight as interrupted, and rejoins the rotation.
    let restarting = Instant::now();
    let victim = victim.restart();
    println!(
        "m3 restarted in {:?}, {:?} after the kill",
        restarting.elapsed(),
        killed_at.elapsed()
    );
    let logs = victim.logs();
    assert!(
        logs.contains("waiting for it to lapse"),
        "m3 restarted within instance_ttl of its last heartbeat waits for it to lapse:\n{logs}"
    );
    let replay = logs
        .lines()
        .find(|line| line.contains("Replayed the spool"))
        .map(str::to_owned);
    println!("m3 after the restart: {replay:?}");
    instances.push(victim);
    balancer.wait_for_up(&NAMES, Duration::from_secs(10));
    let back_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.stop();

    let ledger = Ledger::of(&outcomes, |o| path(o.thread, o.n));
    println!(
        "{} requests: {} answered, {} not: {:?}",
        outcomes.len(),
        ledger.answered.len(),
        ledger.failed.len(),
        ledger.failed
    );
    // Only requests in flight when m3 died (at most one per thread) may have failed: sent before
    // the process was gone, still open when the kill began.
    println!("the kill took {:?}", gone_at - killed_at);
    for outcome in &outcomes {
        if outcome.reply.as_ref().is_ok_and(|r| r.status() == 200) {
            continue;
        }
        assert!(
            outcome.sent < gone_at && outcome.done >= killed_at,
            "{} failed, yet it was not in flight at the kill (sent {:?} after m3 was gone)",
            path(outcome.thread, outcome.n),
            outcome.sent.saturating_duration_since(gone_at)
        );
    }
    assert!(ledger.failed.len() <= THREADS, "{:?}", ledger.failed);
    // The slow requests seen in flight on m3 just before the kill were cut off by it.
    let cut_off: Vec<&String> = in_flight
        .iter()
        .filter(|path| ledger.failed.contains_key(*path))
        .collect();
    assert!(
        !cut_off.is_empty(),
        "none of {in_flight:?}, in flight on m3 just before the kill, failed"
    );
    wait_converged(&instances, &NAMES);

    let records = wait_for_records(&api, "^/ledger/", ledger.answered.keys(), DRAIN);
    assert_recorded_once(&ledger, &records);
    let interrupted = |record: &Value| {
        record["status"] == "Failed"
            && record["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("interrupted"))
    };
    for path in ledger.answered.keys() {
        assert_ne!(records[path][0]["status"], "Failed", "{path}");
    }
    for path in ledger.failed.keys() {
        // A request cut off before m3 recorded it has no record; one recorded is settled.
        if let Some(record) = records.get(path).map(|r| &r[0]) {
            assert_eq!(record["instance"], "m3", "{record:#}");
            assert!(
                interrupted(record) || record["status"] == "Successful",
                "{record:#}"
            );
        }
    }
    for path in cut_off {
        let record = &records[path][0];
        assert!(interrupted(record), "{path}: {record:#}");
    }
    let processing: Vec<&String> = records
        .iter()
        .filter(|(_, r)| r[0]["status"] == "Processing")
        .map(|(path, _)| path)
        .collect();
    assert!(processing.is_empty(), "still Processing: {processing:?}");
    let served_again = outcomes
        .iter()
        .filter(|o| o.sent > back_at)
        .filter_map(|o| records.get(&path(o.thread, o.n)))
        .filter(|r| r[0]["instance"] == "m3")
        .count();
    println!("m3 served {served_again} requests once back in rotation");
    assert!(served_again > 0, "the restarted m3 serves again");
}

// ----- Redis down, stalled, failed over -----

#[test]
fn redis_killed_mid_load_loses_no_acknowledged_record() {
    const THREADS: usize = 4;
    let _serial = serial();
    let mut redis = Redis::durable();
    let store = Store::new(redis.url(), "redis-kill");
    let instances = start_instances(&NAMES[..2], &store);
    let apis: Vec<Api> = instances.iter().map(Mediary::api).collect();
    let upstream = Upstream::echo();
    apis[0].create_channel(&channel_json("ledger", "^/ledger/", upstream.port()));
    let client = Client::new();
    warm_up(&client, &instances);

    let bases: Vec<String> = instances.iter().map(|m| m.url("")).collect();
    let load = Load::start(THREADS, move |client, thread, n| {
        let path = ledger_path("/ledger", thread, n);
        client
            .post(format!("{}{path}", bases[thread % 2]))
            .body(path)
    });
    std::thread::sleep(Duration::from_millis(1500));
    redis.kill9();
    let killed_at = Instant::now();

    // While Redis is down: both instances say degraded, and refuse a config write.
    for (instance, name) in instances.iter().zip(NAMES) {
        let (status, body, _) = eventually(
            Duration::from_secs(5),
            &format!("{name} says it is degraded"),
            || Some(readiness(instance)).filter(|(_, body, _)| body["status"] == "degraded"),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["store"], "redis", "{body}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );
        println!(
            "{name} degraded {:?} after the kill: {body}",
            killed_at.elapsed()
        );
    }
    let refused = apis[1]
        .post(
            "/channels",
            &channel_json("written-while-down", "^/never", upstream.port()),
        )
        .send();
    assert_eq!(refused.status(), 503, "{}", refused.text());
    println!(
        "a config write while Redis is down: 503 in {:?}",
        refused.elapsed
    );

    std::thread::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed()));
    redis.restart();
    let back_at = Instant::now();
    println!("redis was down for {:?}", back_at - killed_at);
    for (instance, name) in instances.iter().zip(NAMES) {
        eventually(
            Duration::from_secs(10),
            &format!("{name} is ready again"),
            || (readiness(instance).1["status"] == "ready").then_some(()),
        );
    }
    println!("both ready {:?} after the restart", back_at.elapsed());
    std::thread::sleep(Duration::from_millis(1500));
    let outcomes = load.stop();

    let path = |o: &Outcome| ledger_path("/ledger", o.thread, o.n);
    let ledger = Ledger::of(&outcomes, path);
    let during = outcomes
        .iter()
        .filter(|o| o.sent >= killed_at && o.done <= back_at)
        .count();
    println!(
        "{} requests ({during} while Redis was down): {} answered, {} not",
        outcomes.len(),
        ledger.answered.len(),
        ledger.failed.len()
    );
    assert!(
        ledger.failed.is_empty(),
        "requests are served while Redis is down: {:?}",
        ledger.failed
    );
    assert!(during > 0, "no request was served while Redis was down");

    let drain_started = Instant::now();
    let records = wait_for_records(&apis[1], "^/ledger/", ledger.answered.keys(), DRAIN);
    println!(
        "{} records drained {:?} after the load",
        records.len(),
        drain_started.elapsed()
    );
    assert_recorded_once(&ledger, &records);
    let unexpected: Vec<&String> = records
        .keys()
        .filter(|path| !ledger.answered.contains_key(*path) && !path.starts_with("/ledger/warm-up"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "records never answered: {unexpected:?}"
    );
    let lost_write = apis[0].get("/channels/written-while-down").send();
    assert_eq!(
        lost_write.status(),
        404,
        "a write refused with 503 is not applied later: {}",
        lost_write.text()
    );
}

#[test]
fn a_stalled_redis_holds_no_request_past_the_store_timeout() {
    const THREADS: usize = 3;
    let _serial = serial();
    let mut redis = Redis::start();
    let store = Store::new(redis.url(), "redis-stall").timeout(STALL_TIMEOUT);
    let instances = start_instances(&NAMES[..1], &store);
    let instance = &instances[0];
    let api = instance.api();
    let upstream = Upstream::echo();
    api.install_plugin("guard", GUARD);
    let guard = |limit: usize| {
        json!({
            "name": "guard",
            "config": {
                "rateLimit": {"requests": limit, "windowMs": 60000},
                "clientHeader": "x-client-id",
            },
        })
    };
    api.create_channel(&plugin_channel_json(
        "guarded",
        "^/ledger/",
        upstream.port(),
        guard(1_000_000),
    ));
    api.create_channel(&plugin_channel_json(
        "strict",
        "^/strict",
        upstream.port(),
        guard(2),
    ));
    let client = Client::new();
    wait_served(&client, &instance.url("/ledger/warm-up?identifier=p"));

    let base = instance.url("");
    let load = Load::start(THREADS, move |client, thread, n| {
        let path = ledger_path("/ledger", thread, n);
        client
            .get(format!("{base}{path}?identifier=p"))
            .header("x-client-id", "busy")
    });
    std::thread::sleep(Duration::from_millis(500));
    redis.pause();
    let paused_at = Instant::now();

    std::thread::sleep(Duration::from_millis(200));
    let (status, body, took) = readiness(instance);
    println!("/health/ready while Redis is stalled: {status} {body} in {took:?}");
    assert!(took < STALL_BOUND, "/health/ready took {took:?}");
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("degraded")),
        "{body}"
    );
    let write = api
        .post(
            "/channels",
            &channel_json("written-while-stalled", "^/never", upstream.port()),
        )
        .send();
    println!(
        "a config write while Redis is stalled: {} in {:?}",
        write.status(),
        write.elapsed
    );
    assert_eq!(write.status(), 503, "{}", write.text());
    assert!(
        write.elapsed < STALL_BOUND,
        "the write took {:?}",
        write.elapsed
    );

    std::thread::sleep(Duration::from_secs(3).saturating_sub(paused_at.elapsed()));
    redis.resume();
    let resumed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = load.stop();

    let stalled: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.done > paused_at && o.sent < resumed_at)
        .collect();
    let slowest = stalled
        .iter()
        .map(|o| o.done - o.sent)
        .max()
        .unwrap_or_default();
    println!(
        "{} requests, {} while Redis was stalled, the slowest of those took {slowest:?}",
        outcomes.len(),
        stalled.len()
    );
    assert!(stalled.len() >= THREADS, "too few requests while stalled");
    for outcome in &outcomes {
        let path = ledger_path("/ledger", outcome.thread, outcome.n);
        let took = outcome.done - outcome.sent;
        let reply = outcome
            .reply
            .as_ref()
            .unwrap_or_else(|error| panic!("{path} failed after {took:?}: {error}"));
        assert_eq!(
            reply.status(),
            200,
            "{path}: the guard fails open: {}",
            reply.text()
        );
        assert!(took < STALL_BOUND, "{path} took {took:?}");
    }

    // Everything works again: readiness, config writes, the guard's counts.
    eventually(Duration::from_secs(10), "ready again", || {
        (readiness(instance).1["status"] == "ready").then_some(())
    });
    let (_, after) = write_channel_until_accepted(&api, "after-stall", upstream.port());
    println!(
        "a config write succeeds {:?} after the resume",
        resumed_at.elapsed()
    );
    wait_served(&client, &instance.url(&after));
    clear_of_a_window_boundary();
    let strict: Vec<u16> = (0..3)
        .map(|n| {
            client
                .get(instance.url(&format!("/strict?identifier=p-{n}")))
                .header("x-client-id", "after")
                .send()
                .status()
        })
        .collect();
    assert_eq!(strict, [200, 200, 429], "the guard counts again");

    let ledger = Ledger::of(&outcomes, |o| ledger_path("/ledger", o.thread, o.n));
    let records = wait_for_records(&api, "^/ledger/", ledger.answered.keys(), DRAIN);
    assert_recorded_once(&ledger, &records);
    assert_eq!(
        api.get("/channels/written-while-stalled").send().status(),
        404
    );
}

/// How long, once the Sentinel names a new primary, the instances may take to follow it: the
/// Sentinel announces the switch at once (`+switch-master`), and a store timeout or poll is at
/// most 2 s.
const FOLLOW: Duration = Duration::from_secs(2);

/// How the primary goes away in a failover test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// `SENTINEL FAILOVER mymaster`: the replica is promoted while the old primary still runs,
    /// until the Sentinel turns it into a replica of the new one.
    Commanded,
    /// kill -9 of the primary: the Sentinel sees it down after a second and promotes the replica.
    PrimaryKilled,
}

#[test]
#[ignore = "known gap: after a commanded failover (SENTINEL FAILOVER), a few hundred records \
            answered after the old primary was demoted are still lost; Mediary follows the new \
            primary within poll_interval and the config write holds, but this is not yet \
            understood. Run with --ignored to see it."]
fn a_sentinel_failover_under_load_duplicates_nothing_and_stores_what_follows() {
    sentinel_failover_under_load(Failover::Commanded);
}

#[test]
fn the_primary_killed_under_load_fails_over_through_the_sentinel() {
    sentinel_failover_under_load(Failover::PrimaryKilled);
}

fn sentinel_failover_under_load(how: Failover) {
    const THREADS: usize = 4;
    let _serial = serial();
    let mut primary = Redis::start();
    let replica = Redis::replica_of(&primary);
    let sentinel = Sentinel::monitoring(&primary);
    let store = Store::new(sentinel.url(), "sentinel");
    let prefix = store.prefix.clone();
    let instances = start_instances(&NAMES[..2], &store);
    let apis: Vec<Api> = instances.iter().map(Mediary::api).collect();
    let upstream = Upstream::echo();
    apis[0].create_channel(&channel_json("ledger", "^/ledger/", upstream.port()));
    let client = Client::new();
    warm_up(&client, &instances);

    let bases: Vec<String> = instances.iter().map(|m| m.url("")).collect();
    let load = Load::start(THREADS, move |client, thread, n| {
        let path = ledger_path("/ledger", thread, n);
        client
            .post(format!("{}{path}", bases[thread % 2]))
            .body(path)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let failover_at = Instant::now();
    match how {
        Failover::Commanded => sentinel.failover(),
        Failover::PrimaryKilled => primary.kill9(),
    }
    sentinel.wait_for_primary(replica.port(), Duration::from_secs(30));
    let promoted_at = Instant::now();

    // A config write once Mediary has had time to follow (it asks the Sentinels every
    // `poll_interval`) goes to the new primary. One made in the moments after the promotion may
    // still reach the old primary, which accepts writes until the Sentinel turns it into a
    // replica and then loses them: Redis' documented limit of a failover.
    std::thread::sleep(FOLLOW.saturating_sub(promoted_at.elapsed()));
    let (written, path_written) =
        write_channel_until_accepted(&apis[0], "after-failover", upstream.port());
    let write_took = promoted_at.elapsed();
    println!(
        "{how:?}: replica promoted {:?} after the failover began; a config write accepted \
         {write_took:?} after the promotion",
        promoted_at - failover_at,
    );
    // What is wrong, reported together at the end (a lost write does not hide lost records).
    let mut problems: Vec<String> = Vec::new();
    // The failover is complete once the old primary can take no more writes: at once when it
    // was killed, when the Sentinel turns it into a replica when it was not.
    let done_at = match how {
        Failover::PrimaryKilled => promoted_at,
        Failover::Commanded => {
            eventually(
                Duration::from_secs(30),
                "the old primary follows the new one",
                || (primary.role().as_deref() == Some("slave")).then_some(()),
            );
            Instant::now()
        }
    };
    println!(
        "{how:?}: failover complete (the old primary gone or a replica) {:?} after it began",
        done_at - failover_at
    );
    assert_eq!(replica.role().as_deref(), Some("master"));
    for api in &apis {
        // The first call after the Sentinel closed the old primary's connections may answer 503.
        let reply = eventually(
            Duration::from_secs(5),
            "the API reads the store again",
            || {
                let reply = api.get(&format!("/channels/{written}")).send();
                (reply.status() != 503).then_some(reply)
            },
        );
        if reply.status() != 200 {
            problems.push(format!(
                "channel {written}, accepted (201) {write_took:?} after the promotion, is lost once \
                 the failover is complete: GET /channels/{written} answers {} {}",
                reply.status(),
                reply.text()
            ));
            break;
        }
    }
    if problems.is_empty() {
        wait_served(&client, &instances[1].url(&path_written));
    }
    assert!(
        !replica.keys(&format!("{prefix}*")).is_empty(),
        "the new primary holds the cluster's keys"
    );
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();

    let path = |o: &Outcome| ledger_path("/ledger", o.thread, o.n);
    let ledger = Ledger::of(&outcomes, path);
    println!(
        "{} requests: {} answered, {} not",
        outcomes.len(),
        ledger.answered.len(),
        ledger.failed.len()
    );
    assert!(
        ledger.failed.is_empty(),
        "requests are served through the failover: {:?}",
        ledger.failed
    );

    // Every request answered once the Sentinel has named the new primary (and a moment to follow
    // it) is recorded; those of the window before may be lost with writes the old primary had not
    // replicated (Redis' asynchronous replication).
    let settled_at = promoted_at + FOLLOW;
    let after: Vec<String> = outcomes
        .iter()
        .filter(|o| o.done > settled_at)
        .map(path)
        .collect();
    assert!(!after.is_empty(), "no request after the failover");
    let records = eventually_all_or(&apis[1], &ledger, Duration::from_secs(15));
    let duplicated = duplicates(&records);
    assert!(
        duplicated.is_empty(),
        "{} paths are recorded more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lost: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in &outcomes {
        let phase = if outcome.done < failover_at {
            "1 before the failover"
        } else if outcome.done < promoted_at {
            "2 until the promotion"
        } else if outcome.done < settled_at {
            "3 the promotion + FOLLOW"
        } else if outcome.done < done_at {
            "4 the old primary still a primary"
        } else {
            "5 the old primary gone or a replica"
        };
        *answered.entry(phase).or_default() += 1;
        if !records.contains_key(&path(outcome)) {
            *lost.entry(phase).or_default() += 1;
        }
    }
    eprintln!("{how:?}: requests answered, by phase: {answered:?}");
    eprintln!("{how:?}: records lost, by phase: {lost:?}");
    for (path, id) in &ledger.answered {
        if let Some(record) = records.get(path) {
            assert_eq!(record[0]["_id"], id.as_str(), "{path}");
        }
    }
    let lost_after: Vec<&String> = after.iter().filter(|p| !records.contains_key(*p)).collect();
    if !lost_after.is_empty() {
        problems.push(format!(
            "{} of the {} requests answered more than {FOLLOW:?} after the Sentinel named the new \
             primary have no record (e.g. {:?}); lost by phase: {lost:?}",
            lost_after.len(),
            after.len(),
            &lost_after[..lost_after.len().min(3)]
        ));
    }
    assert!(problems.is_empty(), "{how:?}:\n{}", problems.join("\n"));
}

/// Creates a channel through `api`, trying again (with a new name and path each time, in case a
/// refused attempt was applied after all) until one is accepted within 10 s; returns the name and
/// the path of the accepted one.
fn write_channel_until_accepted(api: &Api, name: &str, port: u16) -> (String, String) {
    let mut attempt = 0;
    eventually(
        Duration::from_secs(10),
        "a config write is accepted",
        || {
            attempt += 1;
            let (name, path) = (format!("{name}-{attempt}"), format!("/{name}-{attempt}"));
            let reply = api
                .post(
                    "/channels",
                    &channel_json(&name, &format!("^{path}$"), port),
                )
                .send();
            if reply.status() == 201 {
                return Some((name, path));
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        },
    )
}

/// The records of `ledger`'s answered requests, once all are there or `patience` has passed.
fn eventually_all_or(
    api: &Api,
    ledger: &Ledger,
    patience: Duration,
) -> HashMap<String, Vec<Value>> {
    let deadline = Instant::now() + patience;
    loop {
        let records = records_by_path(api, "^/ledger/");
        let complete = ledger
            .answered
            .keys()
            .all(|path| records.contains_key(path));
        if complete || Instant::now() >= deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
