//! [`RawConnection`]: exact bytes over a TCP connection, for requests that a
//! real client would refuse to send (conflicting framing, oversized heads,
//! a head that never ends) and for watching the server close the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long to wait for a response before giving up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain TCP connection to the proxy.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    /// Bytes read but not yet consumed as part of a response.
    unread: Vec<u8>,
    /// Whether the peer closed (FIN or RST) the connection.
    closed: bool,
}

/// A response as read off the wire.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The protocol of the status line, e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "the body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl RawConnection {
    pub fn open(addr: SocketAddr) -> Self {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect {addr}: {error}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawConnection {
            stream,
            unread: Vec::new(),
            closed: false,
        }
    }

    /// Writes `bytes`. A server that answers and hangs up before reading
    /// everything is allowed to: a reset or broken pipe is not a failure here,
    /// the response (if any) is still read by [`RawConnection::read_response`].
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        match self.stream.write_all(bytes.as_ref()) {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                ) => {}
            Err(error) => panic!("write to the proxy: {error}"),
        }
        self
    }

    /// Reads one complete response (skipping `1xx` interim responses).
    pub fn read_response(&mut self) -> RawResponse {
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        let mut response = self.read_final_head(deadline);
        response.body = self.read_body(&response, deadline);
        response
    }

    /// Reads the head of one response (skipping `1xx` interim responses) and nothing of its body:
    /// for answers to HEAD, whose `Content-Length` counts no bytes on the wire.
    pub fn read_head(&mut self) -> RawResponse {
        self.read_final_head(Instant::now() + RESPONSE_TIMEOUT)
    }

    fn read_final_head(&mut self, deadline: Instant) -> RawResponse {
        loop {
            let head_end = loop {
                if let Some(end) = find(&self.unread, b"\r\n\r\n") {
                    break end;
                }
                self.fill(deadline, "a response head");
            };
            let head = String::from_utf8_lossy(&self.unread[..head_end]).into_owned();
            self.unread.drain(..head_end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                .collect();
            let version = status_line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            if (100..200).contains(&status) {
                continue;
            }
            return RawResponse {
                version,
                status,
                headers,
                body: Vec::new(),
            };
        }
    }

    /// Waits (up to `timeout`) for the server to close the connection,
    /// discarding whatever it sends first; returns how long that took, or
    /// `None` if the connection is still open.
    pub fn time_until_closed(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let deadline = started + timeout;
        self.unread.clear();
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set a read timeout");
            let mut buf = [0; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(_) => {}
                Err(error) if is_timeout(&error) => return None,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        Some(started.elapsed())
    }

    /// Whether the server closes the connection within `timeout`.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        self.time_until_closed(timeout).is_some()
    }

    fn read_body(&mut self, response: &RawResponse, deadline: Instant) -> Vec<u8> {
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return self.read_chunked(deadline);
        }
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().expect("a numeric Content-Length");
            while self.unread.len() < length {
                self.fill(deadline, "the response body");
            }
            return self.unread.drain(..length).collect();
        }
        if matches!(response.status, 204 | 304) {
            return Vec::new();
        }
        while !self.closed {
            self.fill_or_close(deadline);
        }
        std::mem::take(&mut self.unread)
    }

    fn read_chunked(&mut self, deadline: Instant) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.unread, b"\r\n") {
                    break end;
                }
                self.fill(deadline, "a chunk size");
            };
            let line = String::from_utf8_lossy(&self.unread[..line_end]).into_owned();
            self.unread.drain(..line_end + 2);
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    if let Some(end) = find(&self.unread, b"\r\n") {
                        let empty = end == 0;
                        self.unread.drain(..end + 2);
                        if empty {
                            return body;
                        }
                    } else {
                        self.fill(deadline, "the end of a chunked body");
                    }
                }
            }
            while self.unread.len() < size + 2 {
                self.fill(deadline, "a chunk");
            }
            body.extend(self.unread.drain(..size));
            self.unread.drain(..2);
        }
    }

    /// Reads more bytes; panics if the connection closes or the deadline passes.
    fn fill(&mut self, deadline: Instant, waiting_for: &str) {
        let before = self.unread.len();
        self.fill_or_close(deadline);
        assert!(
            self.unread.len() > before || !self.closed,
            "the proxy closed the connection while we waited for {waiting_for}; \
             we had {:?}",
            String::from_utf8_lossy(&self.unread)
        );
    }

    fn fill_or_close(&mut self, deadline: Instant) {
        if self.closed {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no response within {RESPONSE_TIMEOUT:?}");
        self.stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        let mut buf = [0; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.unread.extend_from_slice(&buf[..n]),
            Err(error) if is_timeout(&error) => panic!("no response within {RESPONSE_TIMEOUT:?}"),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.closed = true,
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
