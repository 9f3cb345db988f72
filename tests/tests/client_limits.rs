//! How the proxy protects itself from clients: ambiguous framing, oversized
//! heads and bodies, and clients that never finish their head. These send
//! exact bytes over TCP, since a well-behaved client would refuse to.

use std::time::Duration;

use mediary_e2e::{
    Client, Mediary, RawConnection, Upstream, public_channel, public_channel_with_keys,
};

fn echo_mediary(upstream: &Upstream, extra_config: &str) -> Mediary {
    Mediary::with_config(format!(
        "{extra_config}\n{}",
        public_channel("echo", "^/echo", upstream)
    ))
    .start()
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_closes_the_connection() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "");
    let mut connection = RawConnection::open(mediary.addr());

    connection.send(
        "POST /echo HTTP/1.1\r\n\
         Host: mediary\r\n\
         Content-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\
         \r\n\
         5\r\nhello\r\n0\r\n\r\n",
    );

    let response = connection.read_response();
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["blame"], "client");
    assert!(
        connection.closes_within(Duration::from_secs(10)),
        "the connection stayed open after a request smuggling attempt"
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn a_head_over_64_kib_is_431() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "");
    let header = |size: usize| format!("X-Big: {}\r\n", "a".repeat(size));

    let mut large = RawConnection::open(mediary.addr());
    large.send(format!(
        "GET /echo HTTP/1.1\r\nHost: m\r\n{}\r\n",
        header(60 * 1024)
    ));
    assert_eq!(large.read_response().status, 200, "a 60 KiB header is fine");

    let mut huge = RawConnection::open(mediary.addr());
    huge.send(format!(
        "GET /echo HTTP/1.1\r\nHost: m\r\n{}\r\n",
        header(70 * 1024)
    ));
    assert_eq!(huge.read_response().status, 431);
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the 60 KiB request went upstream"
    );
}

#[test]
fn more_than_100_headers_is_431() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "");
    // A request with `count` header lines, Host included.
    let request = |count: usize| -> String {
        let others: String = (1..count)
            .map(|i| format!("X-Header-{i}: {i}\r\n"))
            .collect();
        format!("GET /echo HTTP/1.1\r\nHost: m\r\n{others}\r\n")
    };

    let mut hundred = RawConnection::open(mediary.addr());
    hundred.send(request(100));
    assert_eq!(hundred.read_response().status, 200, "100 headers are fine");

    let mut hundred_and_one = RawConnection::open(mediary.addr());
    hundred_and_one.send(request(101));
    assert_eq!(hundred_and_one.read_response().status, 431);
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the request with 100 headers went upstream"
    );
}

#[test]
fn a_content_length_over_the_limit_is_413_before_the_body_is_sent() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "[limits]\nmax_request_body = \"1MiB\"");

    let at_limit = Client::new()
        .post(mediary.url("/echo"))
        .body(vec![b'x'; 1024 * 1024])
        .send();
    assert_eq!(
        at_limit.status(),
        200,
        "a body of exactly the limit is fine"
    );

    let mut connection = RawConnection::open(mediary.addr());
    // Only the head: the answer must not wait for a body that never comes.
    connection.send(format!(
        "POST /echo HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024 + 1
    ));
    let response = connection.read_response();
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["blame"], "client");
    assert_eq!(response.json()["channel"], "echo");
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the body at the limit went upstream"
    );
}

#[test]
fn a_chunked_body_over_the_channels_max_body_size_is_413() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_keys(
        "echo",
        "^/echo",
        &upstream,
        "maxBodySize = 1024",
    ))
    .start();
    let chunked = |chunks: usize, size: usize| -> String {
        let chunk = format!("{size:x}\r\n{}\r\n", "c".repeat(size));
        format!(
            "POST /echo HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(chunks)
        )
    };

    let mut small = RawConnection::open(mediary.addr());
    small.send(chunked(3, 300));
    let reply = small.read_response();
    assert_eq!(reply.status, 200, "900 bytes fit in 1024");
    assert_eq!(reply.body, vec![b'c'; 900]);
    assert_eq!(upstream.single_request().body, vec![b'c'; 900]);

    let mut large = RawConnection::open(mediary.addr());
    large.send(chunked(4, 1000));
    let response = large.read_response();
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["blame"], "client");
    assert_eq!(response.json()["channel"], "echo");
}

#[test]
fn a_client_that_stalls_in_its_head_is_disconnected() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "[timeouts]\nclient_header_read = \"1s\"");
    let mut connection = RawConnection::open(mediary.addr());

    connection.send("GET /ec");

    let closed_after = connection
        .time_until_closed(Duration::from_secs(15))
        .expect("the connection is closed within 15 s (client_header_read = 1s)");
    assert!(
        closed_after >= Duration::from_millis(500),
        "closed after {closed_after:?}, well before client_header_read = 1s"
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn a_client_that_stalls_in_its_body_gets_408() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "[timeouts]\nclient_body_read = \"1s\"");
    let mut connection = RawConnection::open(mediary.addr());
    let started = std::time::Instant::now();

    connection.send("POST /echo HTTP/1.1\r\nHost: m\r\nContent-Length: 10\r\n\r\nabc");

    let response = connection.read_response();
    assert_eq!(response.status, 408);
    assert_eq!(response.json()["blame"], "client");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered after {:?}, well before client_body_read = 1s",
        started.elapsed()
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let upstream = Upstream::echo();
    let mediary = echo_mediary(&upstream, "[timeouts]\nidle_keep_alive = \"1s\"");
    let mut connection = RawConnection::open(mediary.addr());

    connection.send("GET /echo HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(connection.read_response().status, 200);

    // Generous for a noisy machine, but tight enough to tell idle_keep_alive (1 s) from
    // client_header_read (10 s).
    let closed_after = connection
        .time_until_closed(Duration::from_secs(6))
        .expect("the idle connection is closed within 6 s (idle_keep_alive = 1s)");
    assert!(
        closed_after >= Duration::from_millis(500),
        "closed after {closed_after:?}, well before idle_keep_alive = 1s"
    );
}

#[test]
fn an_idle_connection_outlives_the_head_timeout() {
    // The head timeout runs from a head's first byte, not from the end of the last response: an idle
    // keep-alive connection is governed by idle_keep_alive alone.
    let upstream = Upstream::echo();
    let mediary = echo_mediary(
        &upstream,
        "[timeouts]\nclient_header_read = \"1s\"\nidle_keep_alive = \"30s\"",
    );
    let mut connection = RawConnection::open(mediary.addr());

    connection.send("GET /echo HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(connection.read_response().status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    connection.send("GET /echo HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(connection.read_response().status, 200);
}
