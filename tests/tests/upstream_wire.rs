//! How Mediary reads what an upstream sends, byte for byte: every way HTTP/1.1 delimits a response
//! body, informational answers before the final one, and upstreams that break the protocol. The
//! upstream here is a plain TCP server replaying scripted bytes, split into pieces that arrive apart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mediary_e2e::{Client, Mediary, RawConnection, public_channel_to_port};

/// What the scripted upstream sends for one request: pieces written 20 ms apart, then whether it
/// closes the connection.
struct Script {
    pieces: Vec<&'static [u8]>,
    close: bool,
}

fn keep(pieces: Vec<&'static [u8]>) -> Script {
    Script {
        pieces,
        close: false,
    }
}

fn then_close(pieces: Vec<&'static [u8]>) -> Script {
    Script {
        pieces,
        close: true,
    }
}

/// A TCP server answering the n-th request it gets (over all connections) with `script(n)`. It
/// notes each request's peer address, to tell which requests shared a connection.
struct Scripted {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Scripted {
    fn start(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let seen = Arc::clone(&peers);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
                std::thread::spawn(move || serve(stream, &*script, &seen));
            }
        });
        Scripted { port, peers }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("lock").clone()
    }

    fn mediary(&self) -> Mediary {
        Mediary::with_config(public_channel_to_port("wire", "^/", self.port)).start()
    }
}

fn serve(mut stream: TcpStream, script: &dyn Fn(usize) -> Script, seen: &Mutex<Vec<SocketAddr>>) {
    let peer = stream.peer_addr().expect("peer");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        head.clear();
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let index = {
            let mut seen = seen.lock().expect("lock");
            seen.push(peer);
            seen.len() - 1
        };
        let Script { pieces, close } = script(index);
        for piece in pieces {
            if stream.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if close {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

#[test]
fn a_chunked_body_arrives_whole_however_it_is_split_and_the_connection_is_reused() {
    let upstream = Scripted::start(|_| {
        keep(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhel",
            b"lo\r\n7;ext=\"x\"\r\n, world\r\n",
            b"0\r\nx-trailer: t\r\n",
            b"\r\n",
        ])
    });
    let mediary = upstream.mediary();
    let client = Client::new();
    for _ in 0..3 {
        let reply = client.get(mediary.url("/c")).send();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text(), "hello, world");
    }
    let peers = upstream.peers();
    assert_eq!(peers.len(), 3);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "the three requests should share one upstream connection: {peers:?}"
    );
}

#[test]
fn a_body_delimited_by_the_upstream_closing_arrives_whole() {
    let upstream = Scripted::start(|_| {
        then_close(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ",
            b"the end",
        ])
    });
    let mediary = upstream.mediary();
    let client = Client::new();
    for _ in 0..2 {
        let reply = client.get(mediary.url("/e")).send();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text(), "until the end");
    }
}

#[test]
fn informational_answers_before_the_final_one_are_skipped() {
    let upstream = Scripted::start(|_| {
        keep(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        ])
    });
    let mediary = upstream.mediary();
    let reply = Client::new().get(mediary.url("/i")).send();
    assert_eq!(reply.status(), 201);
    assert_eq!(reply.text(), "done");
}

#[test]
fn an_upstream_that_breaks_the_protocol_gives_502_and_the_next_request_a_new_connection() {
    let upstream = Scripted::start(|n| match n {
        0 => keep(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
        1 => keep(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd"]),
        2 => keep(vec![b"I am not HTTP\r\n\r\n"]),
        3 => then_close(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]),
        4 => keep(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"zz\r\n",
        ]),
        _ => keep(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"]),
    });
    let mediary = upstream.mediary();
    let client = Client::new();
    assert_eq!(client.get(mediary.url("/b")).send().text(), "ok");
    for (what, detail) in [
        ("conflicting lengths", "Content-Length"),
        ("not HTTP", "malformed"),
        ("a short body", "closed the connection"),
    ] {
        let reply = client.get(mediary.url("/b")).send();
        assert_eq!(reply.status(), 502, "{what}: {}", reply.text());
        let error = reply.json_error("upstream");
        assert!(
            error.to_string().contains(detail),
            "{what}: the error should say `{detail}`: {error}"
        );
    }
    // A chunked body is streamed: its head is already out when the bad chunk arrives, so the client's
    // connection is cut rather than its response completed.
    let mut raw = RawConnection::open(mediary.addr());
    raw.send("GET /b HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(raw.read_head().status, 200);
    assert!(
        raw.closes_within(Duration::from_secs(10)),
        "a broken chunked body should end the client's connection"
    );
    let reply = client.get(mediary.url("/b")).send();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "after");
}

#[test]
fn bytes_past_the_end_of_a_body_retire_the_connection() {
    // The upstream sends more than its Content-Length: the answer is right, but the connection is out
    // of step, so the next request goes on a new one.
    let upstream = Scripted::start(|n| match n {
        0 => keep(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nonetrailing junk",
        ]),
        _ => keep(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"]),
    });
    let mediary = upstream.mediary();
    let client = Client::new();
    assert_eq!(client.get(mediary.url("/j")).send().text(), "one");
    assert_eq!(client.get(mediary.url("/j")).send().text(), "two");
    let peers = upstream.peers();
    assert_eq!(peers.len(), 2);
    assert_ne!(
        peers[0], peers[1],
        "the connection with stray bytes was reused"
    );
}
