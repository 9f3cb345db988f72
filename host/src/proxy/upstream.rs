//! Connections to upstream services: one keep-alive pool per worker, used from the request's own task.
//!
//! Each worker owns its pool, so checking a connection out never contends with another thread. The
//! request's task writes the request on the checked-out socket and reads the answer from it (the wire
//! format is in [`super::h1`]); there is no task per connection and no channel between tasks, which
//! on a keep-alive proxy was most of the upstream side's cost per request. The response [`Body`] owns
//! the connection while it is read and puts it back in the pool when the body ends; a body that is
//! dropped early closes its connection, since its stream position is unknown.
//!
//! A pooled connection is checked before use: if anything arrived on it while it sat idle (the
//! upstream closed it, or sent bytes nobody asked for) it is dropped. A request that a pooled
//! connection could not even start sending is retried once on another connection: it never reached
//! the upstream, so this is safe for every method.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Frame, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

use super::h1::{self, Chunked, Decoded, Framing};
use crate::channel::Route;

/// Which pooled connections can serve a route: same scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    secured: bool,
    authority: Arc<str>,
}

impl PoolKey {
    pub fn of(route: &Route) -> Self {
        PoolKey {
            secured: route.secured,
            authority: Arc::clone(&route.authority),
        }
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: refused, unreachable, name not found, TLS failure, or too slow.
    #[error("{0}")]
    Connect(String),
    /// The connection was made but the exchange failed (reset, malformed response).
    #[error("{0}")]
    Exchange(String),
}

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

/// One worker's upstream connections.
pub struct Upstreams {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    settings: PoolSettings,
    tls: TlsConnector,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

type Io = Either<TcpStream, TlsStream<TcpStream>>;

/// One open connection to an upstream, with what has been read from it but not used yet.
struct Conn {
    io: Io,
    buf: BytesMut,
    /// The head of the request being sent; kept for the next one.
    out: Vec<u8>,
}

/// How much room a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// How much room a read asks for at most (a body this much or more still to come).
const READ_MAX: usize = 64 * 1024;

impl Conn {
    fn new(io: Io) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::new(),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Either::Left(tcp) => tcp,
            Either::Right(tls) => tls.get_ref().0,
        }
    }

    /// Whether an idle connection can still be used: nothing arrived on it since its last answer.
    /// Costs no system call unless the socket became readable while it sat idle.
    fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) => {}
        }
        // Readable: a close, stray bytes, or (over TLS) only a session ticket, which leaves no data.
        poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.buf).is_pending()
    }

    /// Writes a request (its head as [`h1::encode_request`] makes it, then its body). On failure, says
    /// whether nothing at all was written.
    async fn write(
        &mut self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<(), (io::Error, bool)> {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        self.out.clear();
        h1::encode_request(
            &parts.method,
            target,
            &parts.headers,
            body.len(),
            &mut self.out,
        );
        let total = self.out.len() + body.len();
        let mut request = self.out.as_slice().chain(body);
        if let Err(error) = self.io.write_all_buf(&mut request).await {
            return Err((error, request.remaining() == total));
        }
        self.io.flush().await.map_err(|error| (error, false))
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.clamp(READ_CHUNK, READ_MAX));
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Reads the final response head to a `method` request, skipping informational ones.
    async fn read_head(&mut self, method: &Method) -> Result<h1::Head, String> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = h1::parse_response(&mut self.buf, method).map_err(|e| e.0)?
            {
                return Ok(head);
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx, READ_CHUNK)).await;
            match read {
                Ok(0) if self.buf.is_empty() => {
                    return Err("the upstream closed the connection without answering".into());
                }
                Ok(0) => {
                    return Err("the upstream closed the connection in its response head".into());
                }
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Idle {
    /// Still open, and not idle for longer than `timeout`.
    fn usable(&mut self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && self.conn.still_open()
    }
}

impl Upstreams {
    pub fn new(settings: PoolSettings, tls: Arc<rustls::ClientConfig>) -> Arc<Self> {
        Arc::new(Upstreams {
            idle: Mutex::new(HashMap::new()),
            settings,
            tls: TlsConnector::from(tls),
        })
    }

    /// Sends `request` to `route` (the request's URI is only its path and query) and returns the
    /// response once its head has arrived. Its body owns the connection until it has been read.
    pub async fn send(
        self: &Arc<Self>,
        route: &Route,
        request: Request<Bytes>,
    ) -> Result<Response<Body>, UpstreamError> {
        let key = PoolKey::of(route);
        let (parts, body) = request.into_parts();
        // At most one retry on a fresh connection after a pooled one turned out to be closed.
        let mut conn = loop {
            let (mut conn, pooled) = match self.checkout(&key) {
                Some(conn) => (conn, true),
                // Boxed: connecting (with TLS) is a large future, and keeping it inline would make
                // every request's future, which hyper moves into place, that much larger.
                None => (Box::pin(self.connect(route)).await?, false),
            };
            match conn.write(&parts, &body).await {
                Ok(()) => break conn,
                // Never written: the pooled connection had been closed. Safe to send elsewhere.
                Err((_, true)) if pooled => {}
                Err((error, _)) => return Err(UpstreamError::Exchange(error.to_string())),
            }
        };
        let head = conn
            .read_head(&parts.method)
            .await
            .map_err(UpstreamError::Exchange)?;
        let body = Body::new(conn, head.framing, head.reusable, (Arc::clone(self), key));
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    fn checkout(&self, key: &PoolKey) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(mut entry) = list.pop() {
            if entry.usable(self.settings.idle_timeout) {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put(&self, key: PoolKey, conn: Box<Conn>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() >= self.settings.max_idle_per_host {
            // Keep the most recently used; the oldest goes.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than the idle timeout, or already closed by the upstream.
    pub fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let timeout = self.settings.idle_timeout;
        for list in idle.values_mut() {
            list.retain_mut(|e| e.usable(timeout));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Opens a new connection (TCP, then TLS for secured routes) within the connect timeout.
    async fn connect(&self, route: &Route) -> Result<Box<Conn>, UpstreamError> {
        let timeout = self.settings.connect_timeout;
        let connecting = async {
            let tcp = TcpStream::connect((route.host.as_str(), route.port))
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            if !route.secured {
                return Ok(Either::Left(tcp));
            }
            let name = ServerName::try_from(route.host.clone()).map_err(|e| {
                UpstreamError::Connect(format!("`{}` is not a TLS server name: {e}", route.host))
            })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Connect(format!("TLS handshake failed: {e}")))?;
            Ok(Either::Right(tls))
        };
        let io = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!("no connection within {} ms", timeout.as_millis()))
            })??;
        Ok(Conn::new(io))
    }
}

/// An upstream's response body, read from its connection as it is polled. When it has been read to
/// its end the connection goes back to the pool (if the upstream keeps it open); dropped before that,
/// it closes the connection.
pub struct Body {
    conn: Option<Box<Conn>>,
    state: BodyState,
    reusable: bool,
    /// The pool the connection goes back to, and under which key.
    home: (Arc<Upstreams>, PoolKey),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum BodyState {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// The upstream's body broke off or broke the protocol.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

impl Body {
    fn new(
        conn: Box<Conn>,
        framing: Framing,
        reusable: bool,
        home: (Arc<Upstreams>, PoolKey),
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut body = Body {
            conn: Some(conn),
            state,
            reusable,
            home,
        };
        if matches!(body.state, BodyState::Done) {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it can carry another exchange.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            // Bytes past the end of the body: the upstream is out of step; do not reuse.
            && conn.buf.is_empty()
        {
            let (pool, key) = &self.home;
            pool.put(key.clone(), conn);
        }
    }

    fn fail(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        Poll::Ready(Some(Err(BodyError(message))))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut this.state {
                // `finish` and `fail` take the connection, so a finished body never gets here.
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*left).unwrap_or(usize::MAX)
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => READ_CHUNK,
                    Err(error) => return this.fail(error.0),
                },
                BodyState::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    READ_CHUNK
                }
            };
            match ready!(conn.poll_fill(cx, want)) {
                // Framed by the close: never reusable (see `h1::Framing::UntilClose`).
                Ok(0) if matches!(this.state, BodyState::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(
                        "the upstream closed the connection before its response body was complete"
                            .into(),
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    return this.fail(format!("reading the response body failed: {error}"));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
