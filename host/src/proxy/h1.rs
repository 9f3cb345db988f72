//! The HTTP/1.1 wire format of the upstream side: a request head written out, a response head parsed
//! (by `httparse`), and the response body's framing (RFC 9112 §6) worked out and, when chunked,
//! decoded.
//!
//! Mediary speaks to upstreams in the request's own task (see [`super::upstream`]), so it needs only
//! this much of a client: no task, no channel, no connection state machine. Everything here works on
//! byte buffers and is tested on its own.

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};

/// The largest response head accepted from an upstream, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response head.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The upstream broke the protocol; the text says how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn wire(message: impl Into<String>) -> WireError {
    WireError(message.into())
}

fn head_too_large() -> WireError {
    wire(format!("its response head is over {} KiB", MAX_HEAD / 1024))
}

/// Methods whose requests carry no `Content-Length: 0` when their body is empty (hyper's rule).
fn bodyless_by_default(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

/// Writes the head of a request for `target` (origin form) with a body of `body_len` bytes. The
/// framing is Mediary's own: any `Content-Length` or `Transfer-Encoding` in `headers` is left out and
/// the body's real length is sent instead.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 || !bodyless_by_default(method) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: an answer to HEAD, or a 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another request once this body has been read.
    pub reusable: bool,
}

/// Where one header field lies in a response head: the name's and the value's byte ranges.
#[derive(Clone, Copy, Default)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the response head at the start of `buf`, the answer to a `method` request, skipping (and
/// taking out of `buf`) any informational (1xx) answers before it. Returns `None` while the head is
/// not complete; a complete one is taken out of `buf`, and its header values share its bytes rather
/// than being copied.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, WireError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(head_too_large()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(wire(format!(
                    "its response has over {MAX_HEADERS} header fields"
                )));
            }
            Err(error) => return Err(wire(format!("its response head is malformed: {error}"))),
        };
        if len > MAX_HEAD {
            return Err(head_too_large());
        }
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| wire(format!("its response has an invalid status {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(wire("it switched protocols, which Mediary does not proxy"));
        }
        if status.is_informational() {
            let _ = buf.split_to(len);
            continue;
        }
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Note where each field lies, then take the head out of the buffer and slice it.
        let base = buf.as_ptr() as usize;
        let span = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            (start, start + part.len())
        };
        let mut spans = [Field::default(); MAX_HEADERS];
        let count = response.headers.len();
        for (span_of, field) in spans.iter_mut().zip(response.headers.iter()) {
            *span_of = Field {
                name: span(field.name.as_bytes()),
                value: span(field.value),
            };
        }
        let raw = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for field in &spans[..count] {
            let name_bytes = &raw[field.name.0..field.name.1];
            let name = HeaderName::from_bytes(name_bytes).map_err(|_| {
                wire(format!(
                    "`{}` is not a header name",
                    String::from_utf8_lossy(name_bytes)
                ))
            })?;
            let value = HeaderValue::from_maybe_shared(raw.slice(field.value.0..field.value.1))
                .map_err(|_| wire(format!("the value of `{name}` is not a valid header value")))?;
            headers.append(name, value);
        }
        let (framing, framing_reusable) = framing(method, status, &headers)?;
        let reusable = framing_reusable && keeps_alive(version, &headers);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
        }));
    }
}

/// The body's framing, and whether it leaves the connection reusable.
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(Framing, bool), WireError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length beside it, the message is suspect: read it, then close (§6.3 ¶3).
        let clean = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, clean)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| wire("its response has an invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(wire("its response has conflicting Content-Length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(len) => (Framing::Length(len), true),
        None => (Framing::UntilClose, false),
    })
}

/// Whether the upstream keeps the connection open after this response.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

/// What [`Chunked::decode`] got from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body data.
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body (and its trailer section, which is dropped) is complete.
    End,
}

/// A decoder for a chunked body (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of trailer section seen, bounded like a head.
    trailer_len: usize,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailer,
    Done,
}

impl Chunked {
    /// Takes from the front of `buf` as much as it can: the next piece of data, or the end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "a chunk-size line")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = line
                        .split(|b| *b == b';')
                        .next()
                        .map(<[u8]>::trim_ascii)
                        .filter(|s| !s.is_empty() && s.len() <= 16)
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| wire("its chunked body has an invalid chunk size"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(wire("its chunked body has a chunk without its CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(wire("its chunked body has a chunk without its CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let room = MAX_HEAD.saturating_sub(self.trailer_len);
                    let Some(line) = take_line(buf, room, "its trailer section")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_len += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one CRLF-terminated line (without its CRLF) from the front of `buf`; `None` when the line is
/// not complete yet. A line longer than `max` is an error.
fn take_line(buf: &mut BytesMut, max: usize, what: &str) -> Result<Option<Bytes>, WireError> {
    let Some(end) = buf.iter().take(max + 2).position(|b| *b == b'\n') else {
        if buf.len() > max + 1 {
            return Err(wire(format!("{what} is over {max} bytes")));
        }
        return Ok(None);
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(wire(format!("{what} does not end in CRLF")));
    }
    let line = buf.split_to(end + 1).freeze();
    Ok(Some(line.slice(..end - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: &Method) -> (Result<Option<Head>, WireError>, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        (parse_response(&mut buf, method), buf)
    }

    fn head(raw: &str, method: &Method) -> Head {
        let (parsed, rest) = parse(raw, method);
        let head = parsed.expect("parses").expect("a whole head");
        assert!(rest.is_empty(), "the head was not taken out of the buffer");
        head
    }

    #[test]
    fn request_head_has_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("up:8080"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request(&Method::POST, "/p?q=1", &headers, 3, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "POST /p?q=1 HTTP/1.1\r\nhost: up:8080\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(&Method::GET, "/", &HeaderMap::new(), 0, &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        encode_request(&Method::PUT, "/", &HeaderMap::new(), 0, &mut out);
        assert_eq!(out, b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &get);
        assert_eq!((h.framing, h.reusable), (Framing::Length(5), true));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", &get);
        assert_eq!(h.framing, Framing::Length(5));
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n", &get);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            &get,
        );
        assert_eq!(h.framing, Framing::Empty);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &get,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &get,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &get);
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            &get,
        );
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get);
        assert_eq!((h.version, h.reusable), (Version::HTTP_10, false));
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
            &get,
        );
        assert!(h.reusable);
    }

    #[test]
    fn header_values_come_through_exactly() {
        let h = head(
            "HTTP/1.1 200 OK\r\nX-A: one\r\nx-a:two\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        );
        let a: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["one", "two"]);
        assert_eq!(h.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(h.headers.len(), 4);
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        let get = Method::GET;
        let err = |raw: &str| parse(raw, &get).0.expect_err("refused").0;
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n").contains("conflicting"));
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").contains("invalid"));
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n").contains("invalid"));
        assert!(err("HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("switched"));
        assert!(err("HTTX/1.1 200 OK\r\n\r\n").contains("malformed"));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(err(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("header fields"));
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD));
        assert!(err(&long).contains("KiB"));
        let partial = "HTTP/1.1 200 OK\r\nContent-Le";
        let (parsed, rest) = parse(partial, &get);
        assert!(matches!(parsed, Ok(None)));
        assert_eq!(rest, partial.as_bytes());
        let (parsed, rest) = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", &get);
        assert!(matches!(parsed, Ok(None)));
        assert_eq!(rest, &b"HTTP/1.1 200 OK\r\n"[..]);
    }

    /// Feeds `raw` to a decoder `step` bytes at a time and returns the body.
    fn dechunk(raw: &[u8], step: usize) -> Result<Vec<u8>, WireError> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok(body),
                Decoded::NeedMore => {
                    if fed >= raw.len() {
                        return Err(wire("ran out of input"));
                    }
                    let n = step.min(raw.len() - fed);
                    buf.extend_from_slice(&raw[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let raw = b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for step in [1, 2, 3, 7, raw.len()] {
            assert_eq!(dechunk(raw, step).expect("decodes"), b"hello 0123456789");
        }
        assert_eq!(dechunk(b"0\r\n\r\n", 1).expect("empty"), b"");
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert!(dechunk(b"zz\r\nab\r\n0\r\n\r\n", 4).is_err());
        assert!(dechunk(b"2\r\nabc\r\n0\r\n\r\n", 4).is_err());
        assert!(dechunk(b"2\nab\r\n0\r\n\r\n", 4).is_err());
        assert!(dechunk(b"11111111111111111\r\n", 64).is_err());
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 8));
        assert!(dechunk(long.as_bytes(), 512).is_err());
    }
}
