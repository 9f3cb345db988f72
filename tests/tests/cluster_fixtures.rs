//! The fixtures of the cluster tests, tested on their own: a Redis that survives kill -9 with its
//! AOF and stalls under SIGSTOP, a Sentinel that fails over to the replica, and an HAProxy that
//! takes turns and drops a dead server from rotation. No Mediary here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mediary_e2e::redis::Resp;
use mediary_e2e::{Backend, Balancer, Client, Redis, Sentinel, Upstream, eventually};

#[test]
fn a_durable_redis_keeps_its_writes_across_kill_9_and_restart() {
    let mut redis = Redis::durable();
    let port = redis.port();
    assert_eq!(redis.command(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    assert_eq!(redis.command(&["INCR", "n"]), Resp::Integer(1));

    redis.kill9();
    assert!(
        redis.try_command(&["PING"]).is_err(),
        "killed, yet it answers"
    );
    redis.restart();

    assert_eq!(redis.port(), port);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(redis.command(&["GET", "k"]).text(), Some("v"));
    assert_eq!(redis.command(&["INCR", "n"]), Resp::Integer(2));
    assert_eq!(redis.keys("*").len(), 2);
}

#[test]
fn a_paused_redis_answers_nothing_until_resumed() {
    let mut redis = Redis::start();
    redis.pause();
    let started = Instant::now();
    let stalled = redis.try_command_within(&["PING"], Duration::from_millis(300));
    assert!(stalled.is_err(), "paused, yet it answered: {stalled:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    redis.resume();
    assert_eq!(redis.command(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn the_sentinel_fails_over_to_the_replica() {
    let primary = Redis::start();
    let replica = Redis::replica_of(&primary);
    let sentinel = Sentinel::monitoring(&primary);
    assert_eq!(sentinel.primary_port(), Some(primary.port()));
    assert_eq!(
        sentinel.url(),
        format!("redis+sentinel://127.0.0.1:{}/mymaster/0", sentinel.port())
    );
    primary.command(&["SET", "k", "before"]);
    assert_eq!(primary.command(&["WAIT", "1", "2000"]), Resp::Integer(1));
    assert_eq!(replica.command(&["GET", "k"]).text(), Some("before"));

    let started = Instant::now();
    sentinel.failover();
    sentinel.wait_for_primary(replica.port(), Duration::from_secs(20));
    let promoted = started.elapsed();
    assert_eq!(replica.role().as_deref(), Some("master"));
    eventually(
        Duration::from_secs(20),
        "the old primary follows the new one",
        || (primary.role().as_deref() == Some("slave")).then_some(()),
    );
    let demoted = started.elapsed();
    println!("failover: promoted after {promoted:?}, old primary demoted after {demoted:?}");

    assert_eq!(replica.command(&["GET", "k"]).text(), Some("before"));
    replica.command(&["SET", "k", "after"]);
    match primary.try_command(&["SET", "k", "stale"]) {
        Ok(Resp::Error(error)) => assert!(error.starts_with("READONLY"), "{error}"),
        other => panic!("a write to the demoted primary: {other:?}"),
    }
}

#[test]
fn haproxy_takes_turns_and_drops_a_dead_server() {
    let a = Upstream::fixed(200, "a");
    let b = Upstream::fixed(200, "b");
    let c = Upstream::fixed(200, "c");
    let balancer = Balancer::round_robin(&[
        Backend::new("a", a.addr()),
        Backend::new("b", b.addr()),
        Backend::new("c", c.addr()),
    ]);
    balancer.wait_for_up(&["a", "b", "c"], Duration::from_secs(5));

    // One keep-alive client: HAProxy balances each request, not each connection.
    let client = Client::new();
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..9 {
        let reply = client.get(balancer.url("/turns")).send();
        assert_eq!(reply.status(), 200);
        *answered.entry(reply.text()).or_default() += 1;
    }
    assert_eq!(
        answered,
        BTreeMap::from([("a".into(), 3), ("b".into(), 3), ("c".into(), 3)]),
        "{}",
        balancer.config()
    );

    drop(b);
    let killed = Instant::now();
    balancer.wait_for_up(&["a", "c"], Duration::from_secs(5));
    println!("b left rotation after {:?}", killed.elapsed());
    for _ in 0..6 {
        let reply = client.get(balancer.url("/turns")).send();
        assert_eq!(reply.status(), 200);
        assert_ne!(reply.text(), "b");
    }
}

#[test]
fn haproxy_sends_a_refused_request_to_another_server() {
    let a = Upstream::fixed(200, "a");
    let b = Upstream::fixed(200, "b");
    let balancer =
        Balancer::round_robin(&[Backend::new("a", a.addr()), Backend::new("b", b.addr())]);
    balancer.wait_for_up(&["a", "b"], Duration::from_secs(5));
    drop(b);
    // Before the health checks notice: every request is still answered, by a.
    let client = Client::new();
    for _ in 0..4 {
        let reply = client.get(balancer.url("/")).send();
        assert_eq!((reply.status(), reply.text().as_str()), (200, "a"));
    }
}
