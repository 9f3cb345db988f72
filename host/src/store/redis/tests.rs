//! The contract suite against a real Redis (`MEDIARY_TEST_REDIS`, default
//! `redis://127.0.0.1:6379/0`), each test under a prefix of its own that is deleted afterwards; and
//! what only a shared store does: two stores of one prefix, prefixes kept apart, and outages of a
//! `redis-server` started (and stopped, killed, restarted) by the test itself.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::store::contract::{self, id_at, put, record};
use crate::store::{Collection, InstanceBeat, Store, StoreError, StoredTx, TxQuery};
use crate::transaction::{Stage, Status};

fn redis_url() -> String {
    std::env::var("MEDIARY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn settings(url: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        target: RedisTarget::parse(url).unwrap(),
        prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
    }
}

fn unique_prefix() -> String {
    format!("mediary-test:{}:", Uuid::new_v4().simple())
}

/// Deletes every key of its prefix when dropped.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<Vec<u8>>)>(&mut con)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(keys).query::<i64>(&mut con);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

async fn fresh_redis() -> (Arc<dyn Store>, Cleanup) {
    let (url, prefix) = (redis_url(), unique_prefix());
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let store = connect(settings(&url, &prefix)).await.unwrap();
    (store, cleanup)
}

contract::store_contract_tests!(fresh_redis());

/// A plain connection, for what the store would not do (or to look behind its back).
fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn beat(instance: &str) -> InstanceBeat {
    InstanceBeat {
        instance: instance.into(),
        run_id: "run".into(),
        started: 1,
        heartbeat: 2,
        generation: 0,
        workers: 1,
        version: "0".into(),
        proxy: "127.0.0.1:1".into(),
        api: "127.0.0.1:2".into(),
    }
}

async fn changed_within(rx: &mut tokio::sync::watch::Receiver<u64>, within: Duration) -> u64 {
    tokio::time::timeout(within, rx.changed())
        .await
        .expect("a change arrives in time")
        .unwrap();
    *rx.borrow_and_update()
}

#[tokio::test]
async fn a_write_reaches_every_store_of_the_prefix() {
    let (a, cleanup) = fresh_redis().await;
    let b = connect(settings(&cleanup.url, &cleanup.prefix))
        .await
        .unwrap();
    let mut changes = b.subscribe();
    changes.borrow_and_update();

    a.put(Collection::Channels, "x", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(
        changed_within(&mut changes, Duration::from_secs(1)).await,
        1
    );
    assert_eq!(
        b.get(Collection::Channels, "x").await.unwrap(),
        Some(json!({"n": 1}))
    );

    // A change whose message is lost (here: never published) arrives by the poller.
    let bumped: u64 = redis::cmd("INCR")
        .arg(format!("{}generation", cleanup.prefix))
        .query(&mut raw(&cleanup.url))
        .unwrap();
    assert_eq!(bumped, 2);
    assert_eq!(
        changed_within(&mut changes, Duration::from_secs(1)).await,
        2
    );
    let mut a_changes = a.subscribe();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), a_changes.wait_for(|g| *g == 2))
            .await
            .map(|g| g.map(|g| *g).ok()),
        Ok(Some(2)),
        "the writer's own subscribers see it too"
    );

    // Records, key-value entries and heartbeats are shared too.
    put(&*a, Stage::Final, &[record(1, "c", Status::Successful)]).await;
    assert_eq!(b.count_transactions().await.unwrap(), 1);
    assert_eq!(a.kv_increment("ns", "k", 2, None).await.unwrap(), 2);
    assert_eq!(b.kv_increment("ns", "k", 3, None).await.unwrap(), 5);
    a.heartbeat(&beat("one"), Duration::from_secs(60))
        .await
        .unwrap();
    b.heartbeat(&beat("two"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(a.instances().await.unwrap().len(), 2);
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let (a, _cleanup_a) = fresh_redis().await;
    let (b, _cleanup_b) = fresh_redis().await;
    a.put(Collection::Channels, "x", json!({})).await.unwrap();
    put(&*a, Stage::Final, &[record(1, "c", Status::Processing)]).await;
    a.kv_set("ns", "k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    a.set_state("s", json!(1)).await.unwrap();
    a.put_blob("abc", Bytes::from_static(b"blob"))
        .await
        .unwrap();
    a.heartbeat(&beat("one"), Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(b.generation().await.unwrap(), 0);
    assert!(b.list(Collection::Channels).await.unwrap().is_empty());
    assert_eq!(b.count_transactions().await.unwrap(), 0);
    assert!(b.processing(Uuid::nil(), 10).await.unwrap().is_empty());
    assert!(
        b.list_transactions(&TxQuery {
            limit: 10,
            ..TxQuery::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(b.kv_get("ns", "k").await.unwrap(), None);
    assert_eq!(b.state("s").await.unwrap(), None);
    assert_eq!(b.blob("abc").await.unwrap(), None);
    assert!(b.instances().await.unwrap().is_empty());
    assert_eq!(a.count_transactions().await.unwrap(), 1);
}

/// A port nothing listens on (now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn connecting_to_nothing_fails_in_time_saying_where() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let error = connect(RedisSettings {
        timeout,
        ..settings(&url, "x:")
    })
    .await
    .unwrap_err();
    assert!(started.elapsed() < timeout + Duration::from_millis(300));
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("refused"),
        "{message}"
    );

    // A password in the URL stays out of the message.
    let url = format!("redis://user:hunter2@127.0.0.1:{port}/0");
    let error = connect(settings(&url, "x:")).await.unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

/// A `redis-server` of the test's own, on a free port, without persistence; killed when dropped.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut server = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.run();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it answers.
    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (up to `within`) until the store answers again; how long that took.
async fn answers_again(store: &dyn Store, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if store.ping().await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the store did not answer again within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn outages_are_reported_in_time_and_survived() {
    let mut server = OwnRedis::start();
    let timeout = Duration::from_millis(500);
    let store = connect(RedisSettings {
        timeout,
        ..settings(&server.url(), "outage:")
    })
    .await
    .unwrap();
    store
        .put(Collection::Channels, "x", json!({"kept": true}))
        .await
        .unwrap();
    let tx = record(1, "c", Status::Processing);
    put(&*store, Stage::Begun, std::slice::from_ref(&tx)).await;

    // A stopped server accepts connections and answers nothing.
    server.signal("STOP");
    let allowed = timeout + Duration::from_millis(500);
    macro_rules! unavailable {
        ($call:expr) => {{
            let started = Instant::now();
            let result = $call.await.map(|_| ());
            let took = started.elapsed();
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "{}: {result:?}",
                stringify!($call)
            );
            assert!(took <= allowed, "{}: took {took:?}", stringify!($call));
        }};
    }
    let b = || Bytes::from_static(b"v");
    unavailable!(store.ping());
    unavailable!(store.get(Collection::Channels, "x"));
    unavailable!(store.list(Collection::Channels));
    unavailable!(store.put(Collection::Channels, "y", json!({})));
    unavailable!(store.delete(Collection::Channels, "x"));
    unavailable!(store.generation());
    unavailable!(store.put_transactions(vec![StoredTx::new(&tx, Stage::Final)]));
    unavailable!(store.sync());
    unavailable!(store.transaction(tx.id));
    unavailable!(store.modify_transaction(tx.id, Box::new(|tx| tx.worker = 1)));
    unavailable!(store.list_transactions(&TxQuery {
        limit: 10,
        ..TxQuery::default()
    }));
    unavailable!(store.processing(Uuid::nil(), 10));
    unavailable!(store.newest_transaction());
    unavailable!(store.count_transactions());
    unavailable!(store.cull_bodies("c", Uuid::nil(), Uuid::max(), 10));
    unavailable!(store.delete_transactions(Uuid::max(), 10));
    unavailable!(store.heartbeat(&beat("one"), Duration::from_secs(1)));
    unavailable!(store.instances());
    unavailable!(store.leave("one", "run"));
    unavailable!(store.state("s"));
    unavailable!(store.set_state("s", json!(1)));
    unavailable!(store.put_blob("d", b()));
    unavailable!(store.blob("d"));
    unavailable!(store.delete_blob("d"));
    unavailable!(store.kv_get("n", "k"));
    unavailable!(store.kv_set("n", "k", b(), None));
    unavailable!(store.kv_delete("n", "k"));
    unavailable!(store.kv_increment("n", "k", 1, None));
    unavailable!(store.kv_compare_and_set("n", "k", None, b(), None));

    // Resumed, it is used again without a new store.
    server.signal("CONT");
    answers_again(&*store, Duration::from_secs(8)).await;
    assert_eq!(
        store.get(Collection::Channels, "x").await.unwrap(),
        Some(json!({"kept": true}))
    );
    assert!(
        store
            .modify_transaction(tx.id, Box::new(|tx| tx.worker = 3))
            .await
            .unwrap()
    );
    assert_eq!(store.transaction(tx.id).await.unwrap().unwrap().worker, 3);

    // Killed and started again (empty: it keeps nothing), it is found again.
    server.kill();
    unavailable!(store.ping());
    unavailable!(store.kv_get("n", "k"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.run();
    answers_again(&*store, Duration::from_secs(8)).await;
    store
        .put(Collection::Channels, "z", json!({"after": true}))
        .await
        .unwrap();
    assert_eq!(
        store.get(Collection::Channels, "z").await.unwrap(),
        Some(json!({"after": true}))
    );
    put(&*store, Stage::Final, std::slice::from_ref(&tx)).await;
    assert_eq!(store.count_transactions().await.unwrap(), 1);
}

/// `INFO commandstats`: calls of `command` so far.
fn calls(con: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let line = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_batch_of_a_thousand_records_is_one_round_trip() {
    let server = OwnRedis::start();
    let store = connect(RedisSettings {
        poll_interval: Duration::from_secs(3600),
        ..settings(&server.url(), "batch:")
    })
    .await
    .unwrap();
    // The script is loaded by the first call.
    put(&*store, Stage::Begun, &[record(0, "c", Status::Processing)]).await;
    let mut con = raw(&server.url());
    let (eval, exec, hset, zadd) = (
        calls(&mut con, "eval"),
        calls(&mut con, "exec"),
        calls(&mut con, "hset"),
        calls(&mut con, "zadd"),
    );
    let records: Vec<_> = (1..=1000)
        .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
        .collect();
    put(&*store, Stage::Final, &records).await;
    assert_eq!(calls(&mut con, "exec"), exec + 1, "one transaction");
    assert_eq!(calls(&mut con, "eval"), eval + 2, "deciding, restoring");
    // Inside it, a few commands for the whole batch, not several per record: one HSET of the
    // entries, one of their heads, and one ZADD per index (everything; the status; channels a and
    // b; each with the status).
    assert_eq!(
        calls(&mut con, "hset"),
        hset + 2,
        "every record in one HSET"
    );
    assert_eq!(calls(&mut con, "zadd"), zadd + 6, "one ZADD per index");
    assert_eq!(store.count_transactions().await.unwrap(), 1001);

    // The same batch again changes no head and no index.
    put(&*store, Stage::Final, &records).await;
    assert_eq!(calls(&mut con, "hset"), hset + 3, "the entries, unchanged");
    assert_eq!(calls(&mut con, "zadd"), zadd + 6);
}

#[tokio::test]
async fn a_backlog_larger_than_a_script_is_written_whole() {
    let (store, _cleanup) = fresh_redis().await;
    let records: Vec<_> = (0..4500)
        .map(|i| record(i, "a", Status::Successful))
        .collect();
    put(&*store, Stage::Final, &records).await;
    assert_eq!(store.count_transactions().await.unwrap(), 4500);
    assert_eq!(
        store.newest_transaction().await.unwrap(),
        Some(records[4499].id)
    );
    assert_eq!(
        store
            .delete_transactions(id_at(4000, 0), 10_000)
            .await
            .unwrap(),
        4000
    );
    assert_eq!(store.count_transactions().await.unwrap(), 500);
}

#[tokio::test]
async fn a_change_waits_for_another_change_of_the_record() {
    let (store, cleanup) = fresh_redis().await;
    let tx = record(1, "a", Status::Processing);
    put(&*store, Stage::Begun, std::slice::from_ref(&tx)).await;
    // Another caller's change holds the lock for a moment.
    let lock = format!("{}tx:lock:{}", cleanup.prefix, model::hex(tx.id));
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone")
        .arg("PX")
        .arg(300)
        .query(&mut raw(&cleanup.url))
        .unwrap();
    let started = Instant::now();
    assert!(
        store
            .modify_transaction(tx.id, Box::new(|tx| tx.child_ids.push(Uuid::nil())))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        store.transaction(tx.id).await.unwrap().unwrap().child_ids,
        vec![Uuid::nil()]
    );
    // Concurrent changes of one record all land.
    let mut changes = Vec::new();
    for i in 0..8u128 {
        let store = Arc::clone(&store);
        changes.push(tokio::spawn(async move {
            store
                .modify_transaction(
                    tx.id,
                    Box::new(move |tx| tx.child_ids.push(Uuid::from_u128(i + 1))),
                )
                .await
                .unwrap()
        }));
    }
    for change in changes {
        assert!(change.await.unwrap());
    }
    assert_eq!(
        store
            .transaction(tx.id)
            .await
            .unwrap()
            .unwrap()
            .child_ids
            .len(),
        9
    );
}

#[tokio::test]
async fn unreadable_entries_are_errors_not_panics() {
    let (store, cleanup) = fresh_redis().await;
    let id = id_at(1, 0);
    let _: () = redis::cmd("HSET")
        .arg(format!("{}tx", cleanup.prefix))
        .arg(model::hex(id))
        .arg(&b"\x02\x02\x00\x01cgarbage"[..])
        .query(&mut raw(&cleanup.url))
        .unwrap();
    let error = store.transaction(id).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    assert!(error.to_string().contains(&id.to_string()), "{error}");
    // A wrong type under a key is reported, not a crash.
    let _: () = redis::cmd("SET")
        .arg(format!("{}doc:channels", cleanup.prefix))
        .arg("x")
        .query(&mut raw(&cleanup.url))
        .unwrap();
    let error = store.list(Collection::Channels).await.unwrap_err();
    assert!(matches!(error, StoreError::Backend(_)), "{error}");
    // And the store goes on working.
    store.ping().await.unwrap();
    // A record written over the unreadable one replaces it.
    put(&*store, Stage::Final, &[record(1, "c", Status::Processing)]).await;
    assert_eq!(
        store.transaction(id).await.unwrap().unwrap().channel_id,
        "c"
    );
}

/// A Sentinel of the test's own, watching `primary` as service `mymaster`.
struct OwnSentinel {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl OwnSentinel {
    fn start(primary: &OwnRedis) -> OwnSentinel {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                dir.path().display(),
                primary.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        let sentinel = OwnSentinel {
            port,
            _dir: dir,
            child,
        };
        sentinel.until("it names the primary", |con| {
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query::<Option<(String, u16)>>(con)
                .ok()
                .flatten()
                .is_some()
        });
        sentinel
    }

    /// Waits (up to 20 s) until `check` holds on a connection to the Sentinel.
    fn until(&self, what: &str, mut check: impl FnMut(&mut redis::Connection) -> bool) {
        let started = Instant::now();
        loop {
            let connection = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)));
            if let Ok(mut con) = connection
                && check(&mut con)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the Sentinel: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sentinel_finds_the_primary_and_follows_a_failover() {
    let primary = OwnRedis::start();
    let mut replica = OwnRedis {
        port: free_port(),
        dir: tempfile::tempdir().unwrap(),
        child: None,
    };
    replica.run();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query(&mut raw(&replica.url()))
        .unwrap();
    let sentinel = OwnSentinel::start(&primary);
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let store = connect(RedisSettings {
        timeout: Duration::from_millis(500),
        ..settings(&url, "sentinel:")
    })
    .await
    .unwrap();
    store
        .put(Collection::Channels, "x", json!({}))
        .await
        .unwrap();
    let mut changes = store.subscribe();
    changes.borrow_and_update();

    // Once the replica has the data (and the Sentinel knows the replica), fail over to it.
    let started = Instant::now();
    while redis::cmd("HGET")
        .arg("sentinel:doc:channels")
        .arg("x")
        .query::<Option<String>>(&mut raw(&replica.url()))
        .unwrap()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replica_port = replica.port;
    sentinel.until("it fails over", |con| {
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("mymaster")
            .query::<()>(con)
            .is_ok()
    });
    sentinel.until("it names the replica", |con| {
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query::<Option<(String, u16)>>(con)
            .ok()
            .flatten()
            .is_some_and(|(_, port)| port == replica_port)
    });

    // Until the Sentinel has demoted the old primary, it still takes writes (which its demotion
    // then loses: Sentinel's own window, which no client closes).
    let started = Instant::now();
    while redis::cmd("ROLE")
        .query::<Vec<redis::Value>>(&mut raw(&primary.url()))
        .unwrap()
        .first()
        != Some(&redis::Value::BulkString(b"slave".to_vec()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the old primary was not demoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The old primary, demoted, refuses writes (READONLY): the store asks the Sentinel again and
    // writes to the new one, by itself.
    let started = Instant::now();
    loop {
        match store.put(Collection::Channels, "y", json!({})).await {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("{other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the store did not follow the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_new_primary: Option<String> = redis::cmd("HGET")
        .arg("sentinel:doc:channels")
        .arg("y")
        .query(&mut raw(&replica.url()))
        .unwrap();
    assert_eq!(on_new_primary.as_deref(), Some("{}"));
    assert_eq!(store.list(Collection::Channels).await.unwrap().len(), 2);
    // Change notifications follow too.
    let generation = store.generation().await.unwrap();
    let seen = tokio::time::timeout(
        Duration::from_secs(1),
        changes.wait_for(|g| *g == generation),
    )
    .await
    .map(|g| g.is_ok());
    assert_eq!(seen, Ok(true), "the subscriber saw the write");
}

/// `rediss://`: needs a TLS Redis whose certificate the system trusts (`SSL_CERT_FILE` names
/// extra roots), so it runs only when `MEDIARY_TEST_REDISS` names one.
#[tokio::test]
#[ignore = "set MEDIARY_TEST_REDISS to a rediss:// URL (and SSL_CERT_FILE to its CA) to run"]
async fn tls() {
    let url = std::env::var("MEDIARY_TEST_REDISS").expect("MEDIARY_TEST_REDISS");
    let prefix = unique_prefix();
    let store = connect(settings(&url, &prefix)).await.unwrap();
    store
        .kv_set("n", "k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert_eq!(
        store.kv_get("n", "k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    let mut changes = store.subscribe();
    changes.borrow_and_update();
    store
        .put(Collection::Channels, "x", json!({}))
        .await
        .unwrap();
    assert_eq!(
        changed_within(&mut changes, Duration::from_secs(1)).await,
        1
    );
    assert!(store.kv_delete("n", "k").await.unwrap());
    assert!(store.delete(Collection::Channels, "x").await.unwrap());
}
