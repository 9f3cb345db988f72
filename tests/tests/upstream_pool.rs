//! Upstream connections are pooled and kept alive per worker (OpenHIM opens a new one per call), and a
//! pooled connection the upstream has closed never costs the client a failed request.

use std::collections::HashSet;

use mediary_e2e::{
    Answer, Client, Mediary, RawConnection, Upstream, public_channel, public_channel_to_port,
};

#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    let upstream = Upstream::fixed(200, "pooled");
    let mediary = Mediary::with_config(public_channel("pool", "^/", &upstream)).start();
    // A new client connection for every request: the pool, not the client, keeps the upstream alive.
    let client = Client::one_connection_per_request();

    for _ in 0..20 {
        let reply = client.get(mediary.url("/x")).send();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text(), "pooled");
    }

    let peers: HashSet<_> = upstream.requests().iter().map(|seen| seen.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "20 sequential requests through one worker should share one upstream connection: {peers:?}"
    );
}

#[test]
fn an_upstream_that_closes_after_every_answer_loses_no_request() {
    let upstream = Upstream::answering(|_| {
        Answer::status(200)
            .header("connection", "close")
            .body("bye")
    });
    let mediary = Mediary::with_config(public_channel("closing", "^/", &upstream)).start();
    let client = Client::new();

    for _ in 0..30 {
        let reply = client.get(mediary.url("/x")).send();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text(), "bye");
    }
    assert_eq!(upstream.requests().len(), 30);
}

#[test]
fn a_restarted_upstream_is_reached_on_a_new_connection() {
    let first = Upstream::fixed(200, "first");
    let port = first.port();
    let mediary = Mediary::with_config(public_channel("restart", "^/", &first)).start();
    let client = Client::new();
    assert_eq!(client.get(mediary.url("/x")).send().text(), "first");

    // The pooled connection dies with the upstream; the next request must not fail because of it.
    drop(first);
    let second = Upstream::fixed_on_port(port, 200, "second");
    let reply = client.get(mediary.url("/x")).send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.text(), "second");
    assert_eq!(second.requests().len(), 1);
}

#[test]
fn an_http_1_0_upstream_does_not_downgrade_the_clients_connection() {
    // An old upstream (Python's http.server, many legacy HIS systems) answers HTTP/1.0 and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nold",
            );
        }
    });
    let mediary = Mediary::with_config(public_channel_to_port("legacy", "^/", port)).start();

    let mut connection = RawConnection::open(mediary.addr());
    for _ in 0..3 {
        connection.send("GET /x HTTP/1.1\r\nHost: m\r\n\r\n");
        let response = connection.read_response();
        assert_eq!(response.version, "HTTP/1.1");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"old");
    }
}
