//! Graceful shutdown: on SIGTERM Mediary stops accepting, lets the requests
//! in flight finish, and exits 0. And it never starts on a port already served.

use std::time::{Duration, Instant};

use std::net::TcpStream;

use mediary_e2e::{Client, Mediary, Upstream, public_channel, unused_port};

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let upstream = Upstream::slow(Duration::from_millis(1500));
    let mut mediary = Mediary::with_config(public_channel("slow", "^/slow", &upstream)).start();

    let in_flight = Client::new()
        .post(mediary.url("/slow"))
        .body("still here")
        .send_in_background();
    upstream.wait_for_requests(1, Duration::from_secs(10));
    mediary.sigterm();

    let reply = in_flight.join().expect("the client thread finished");
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "still here");
    let status = mediary.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit status: {status}");
}

#[test]
fn sigterm_closes_the_listener_while_requests_drain() {
    let upstream = Upstream::slow(Duration::from_secs(2));
    let mut mediary = Mediary::with_config(public_channel("slow", "^/slow", &upstream)).start();
    let in_flight = Client::new().get(mediary.url("/slow")).send_in_background();
    upstream.wait_for_requests(1, Duration::from_secs(10));

    mediary.sigterm();

    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(mediary.addr()).is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !in_flight.is_finished(),
        "the listener closed only once the request in flight was over"
    );
    assert_eq!(in_flight.join().expect("the client thread").status(), 200);
    assert_eq!(mediary.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn sigterm_with_only_idle_connections_exits_0_promptly() {
    let upstream = Upstream::echo();
    let mut mediary = Mediary::with_config(format!(
        "[timeouts]\nshutdown_drain = \"20s\"\n{}",
        public_channel("echo", "^/echo", &upstream)
    ))
    .start();
    // Leaves a kept-alive, idle connection in the client's pool.
    let client = Client::new();
    assert_eq!(client.get(mediary.url("/echo")).send().status(), 200);

    let signalled = Instant::now();
    mediary.sigterm();
    let status = mediary.wait_exit(Duration::from_secs(30));

    assert_eq!(status.code(), Some(0), "exit status: {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?} to exit: an idle connection is not a request in flight",
        signalled.elapsed()
    );
    drop(client);
}

#[test]
fn a_second_mediary_on_a_port_in_use_refuses_to_start() {
    // SO_REUSEPORT would let a second instance quietly share the port and half the traffic.
    let upstream = Upstream::fixed(200, "first");
    let port = unused_port();
    let config = format!(
        "[server]\nbind = \"127.0.0.1\"\nhttp_port = {port}\napi_port = 0\nworkers = 2\n{}",
        public_channel("one", "^/", &upstream)
    );
    let first = Mediary::with_config(config.clone()).start();
    assert_eq!(first.addr().port(), port);

    let second = Mediary::with_config(config).run_until_exit();

    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        second.stderr
    );
    assert_eq!(
        Client::new().get(first.url("/")).send().text(),
        "first",
        "the first instance still serves"
    );
}
