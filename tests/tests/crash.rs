//! Mediary under load: killed with SIGKILL it loses no transaction whose response was complete, and
//! the next start marks what was in flight as interrupted; reconfigured through the API it fails no
//! request.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use mediary_e2e::{
    Answer, Client, Load, Mediary, Upstream, eventually, extra_route, public_channel,
};
use serde_json::{Value, json};

/// How long the slow requests' upstream takes to answer: far longer than the load runs, so that some
/// are always in flight when the process dies (nothing waits for them).
const SLOW: Duration = Duration::from_secs(10);

/// How long a slow secondary route takes to answer.
const SLOW_SECONDARY: Duration = Duration::from_secs(3);

/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_millis(1500);

/// The time the brief promises for a channel change to reach every worker.
const RELOAD: Duration = Duration::from_secs(1);

/// The path of request `n` of load thread `thread`: threads 0–3 send fast requests only, threads
/// 4–7 make every fourth one slow.
fn crash_path(thread: usize, n: usize) -> String {
    let kind = if thread >= 4 && n % 4 == 3 {
        "slow"
    } else {
        "fast"
    };
    format!("/crash/{kind}/{thread}-{n}")
}

fn crash_body(thread: usize, n: usize) -> String {
    format!("payload {thread}-{n}")
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let upstream = Upstream::answering(|seen| {
        let answer = Answer::status(200).body(seen.body.clone());
        if seen.path.starts_with("/crash/slow/") {
            answer.after(SLOW)
        } else {
            answer
        }
    });
    let mut mediary = Mediary::with_config(public_channel("crash", "^/crash/", &upstream))
        .workers(2)
        .start();
    let base = mediary.url("");

    let started = Instant::now();
    let load = Load::start(8, move |client, thread, n| {
        client
            .post(format!("{base}{}", crash_path(thread, n)))
            .body(crash_body(thread, n))
    });
    eventually(
        Duration::from_secs(20),
        "the load has run and slow requests are upstream",
        || {
            let slow = upstream
                .requests()
                .iter()
                .filter(|s| s.path.starts_with("/crash/slow/"))
                .count();
            (started.elapsed() >= LOAD && slow >= 4).then_some(())
        },
    );
    load.halt();
    let killed = mediary.kill();
    let outcomes = load.join();
    assert_eq!(killed.signal(), Some(libc::SIGKILL), "{killed}");

    // What the clients saw: the transaction id of each complete response, and what got none.
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut unanswered: HashSet<String> = HashSet::new();
    for outcome in &outcomes {
        let path = crash_path(outcome.thread, outcome.n);
        match &outcome.reply {
            Ok(reply) => {
                assert_eq!(reply.status(), 200, "{path}: {}", reply.text());
                assert_eq!(reply.text(), crash_body(outcome.thread, outcome.n));
                acknowledged.insert(path, reply.transaction_id());
            }
            Err(_) => {
                unanswered.insert(path);
            }
        }
    }
    assert!(
        acknowledged.len() >= 20,
        "only {} requests completed",
        acknowledged.len()
    );
    let upstream_saw: Vec<String> = upstream.requests().into_iter().map(|s| s.path).collect();
    println!(
        "{} requests: {} answered, {} not; the upstream saw {}",
        outcomes.len(),
        acknowledged.len(),
        unanswered.len(),
        upstream_saw.len()
    );

    let mediary = mediary.restart();
    let api = mediary.api();
    let logs = mediary.logs();
    let replay = logs
        .lines()
        .find(|line| line.contains("Replayed the spool of the previous run."))
        .unwrap_or_else(|| panic!("the start after the crash replays the spool:\n{logs}"));
    let interrupted_logged: usize = log_field(replay, "interrupted")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interrupted= count in: {replay}"));

    // Every acknowledged transaction is there, by id, finished.
    for (path, id) in &acknowledged {
        let record = api
            .try_transaction(id)
            .unwrap_or_else(|| panic!("{path} was answered as transaction {id}, which is lost"));
        assert_eq!(record["request"]["path"], path.as_str());
        assert_eq!(record["status"], "Successful", "{path}: {record:#}");
    }

    // The whole listing: no record twice, none still Processing.
    api.wait_for_transactions("", 1, Duration::from_secs(10));
    let records = api.all_transactions("");
    let mut ids = HashSet::new();
    let mut by_path: HashMap<String, &Value> = HashMap::new();
    for record in &records {
        let id = record["_id"].as_str().expect("an id");
        assert!(ids.insert(id.to_owned()), "{id} is listed twice");
        let path = record["request"]["path"].as_str().expect("a path");
        assert!(
            by_path.insert(path.to_owned(), record).is_none(),
            "two records for {path}"
        );
        assert_ne!(record["status"], "Processing", "{record:#}");
    }
    for id in acknowledged.values() {
        assert!(ids.contains(id), "{id} is not listed");
    }

    // Whatever went upstream was recorded first, and whatever was in flight is now interrupted.
    let interrupted = |record: &Value| {
        record["status"] == "Failed"
            && record["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("interrupted"))
    };
    for path in &upstream_saw {
        assert!(
            by_path.contains_key(path),
            "the upstream saw {path}, which has no record"
        );
    }
    for (path, record) in &by_path {
        if unanswered.contains(path) && path.contains("/slow/") {
            // Its upstream was still asleep when the process died.
            assert!(interrupted(record), "{record:#}");
        } else if unanswered.contains(path) {
            // Its record may have been finished before the kill cut the response short.
            assert!(
                interrupted(record) || record["status"] == "Successful",
                "{record:#}"
            );
        } else {
            assert!(
                acknowledged.contains_key(path),
                "a record for {path}, never sent"
            );
        }
    }
    let interrupted_count = records.iter().filter(|r| interrupted(r)).count();
    println!(
        "{} records, {interrupted_count} interrupted; {replay}",
        records.len()
    );
    assert!(
        interrupted_count >= 4,
        "the slow requests in flight are interrupted"
    );
    assert_eq!(interrupted_count, interrupted_logged, "{replay}");
}

/// The value of `name=value` in a log line.
fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
}

#[test]
fn a_channel_changed_under_load_fails_no_request() {
    let a = Upstream::fixed(200, "A");
    let b = Upstream::fixed(200, "B");
    let mediary = Mediary::with_config(public_channel("x", "^/x", &a))
        .workers(2)
        .start();
    let api = mediary.api();
    let url = mediary.url("/x/item");
    let load = Load::start(4, move |client, thread, n| {
        client.post(url.clone()).body(format!("{thread}-{n}"))
    });
    a.wait_for_requests(20, Duration::from_secs(10));

    let channel = api.channel("x");
    let mut routes = channel["routes"].clone();
    routes[0]["port"] = json!(b.port());
    let path = format!("/channels/{}", channel["_id"].as_str().expect("an id"));
    let reply = api.put(&path, &json!({ "routes": routes })).send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    let changed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "B has served for a while past the promised time",
        || (changed.elapsed() >= RELOAD * 2 && b.requests().len() >= 20).then_some(()),
    );
    let outcomes = load.stop();

    let mut late = 0;
    for outcome in &outcomes {
        let reply = outcome.reply.as_ref().unwrap_or_else(|error| {
            panic!("request {}-{} failed: {error}", outcome.thread, outcome.n)
        });
        assert_eq!(reply.status(), 200, "{}", reply.text());
        if outcome.sent >= changed + RELOAD {
            late += 1;
            assert_eq!(
                reply.text(),
                "B",
                "a request sent {:?} after the change",
                outcome.sent - changed
            );
        }
    }
    println!("{} requests, {late} sent after the change", outcomes.len());
    assert!(late >= 10, "only {late} requests after the change");
    assert!(
        outcomes
            .iter()
            .any(|o| o.reply.as_ref().is_ok_and(|r| r.text() == "A"))
    );
}

/// A channel whose primary answers at once and whose secondary route takes [`SLOW_SECONDARY`].
fn slow_secondary() -> (Mediary, Upstream, Upstream) {
    let primary = Upstream::fixed(200, "primary");
    let secondary = Upstream::slow(SLOW_SECONDARY);
    let config =
        public_channel("mirror", "^/mirror", &primary) + &extra_route("copy", &secondary, "");
    let mediary = Mediary::with_config(config).start();
    (mediary, primary, secondary)
}

#[test]
fn kill_9_while_a_secondary_runs_completes_the_record_with_errors() {
    let (mut mediary, _primary, secondary) = slow_secondary();
    let reply = Client::new()
        .post(mediary.url("/mirror"))
        .body("copy")
        .send();
    assert_eq!(reply.text(), "primary");
    let id = reply.transaction_id();
    secondary.wait_for_requests(1, Duration::from_secs(10));
    // Answered, but still Processing: OpenHIM's status waits for every route.
    let api = mediary.api();
    let responded = eventually(
        Duration::from_secs(10),
        "the responded stage is stored",
        || api.try_transaction(&id),
    );
    assert_eq!(responded["status"], "Processing", "{responded:#}");
    assert_eq!(responded["response"]["status"], 200);

    mediary.kill();
    let mediary = mediary.restart();

    let record = mediary.api().transaction(&id);
    // The secondary never answered: it counts as failed (500), as a route that errs does.
    assert_eq!(record["status"], "Completed with error(s)", "{record:#}");
    let routes = record["routes"].as_array().expect("routes is a list");
    assert_eq!(
        routes.len(),
        1,
        "the unfinished route is recorded: {record:#}"
    );
    assert_eq!(routes[0]["name"], "copy");
    assert!(
        routes[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("interrupted")),
        "{record:#}"
    );
}

#[test]
fn a_graceful_stop_while_a_secondary_runs_leaves_no_record_processing() {
    let (mut mediary, _primary, secondary) = slow_secondary();
    let reply = Client::new()
        .post(mediary.url("/mirror"))
        .body("copy")
        .send();
    let id = reply.transaction_id();
    secondary.wait_for_requests(1, Duration::from_secs(10));

    mediary.stop();
    let mediary = mediary.restart();

    // Whatever the stop did with the secondary, it settled the record itself: the next start has
    // nothing to replay or mark.
    let logs = mediary.logs();
    assert!(
        !logs.contains("Replayed the spool"),
        "a graceful stop leaves nothing to replay:\n{logs}"
    );
    let record = mediary.api().transaction(&id);
    let routes = record["routes"].as_array().expect("routes is a list");
    assert_eq!(routes.len(), 1, "the secondary is recorded: {record:#}");
    match record["status"].as_str() {
        // The stop waited for the secondary.
        Some("Successful") => assert_eq!(routes[0]["response"]["status"], 200),
        // Or it gave up on it, and said so.
        Some("Completed with error(s)") => assert!(
            routes[0]["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{record:#}"
        ),
        other => panic!("{other:?}: {record:#}"),
    }
}
