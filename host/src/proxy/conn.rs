//! One client connection: hyper's HTTP/1.1 server plus the timeouts hyper does not keep for us.
//!
//! hyper's own header timer runs from the moment it starts waiting for a head, so it would also cut
//! idle keep-alive connections; Mediary wants "a head must arrive within 10 s of its first byte" and
//! "an idle connection lives 60 s". The socket is wrapped in [`Watched`], which notes when bytes arrive
//! while no request is in flight and enforces both deadlines itself, lazily: when a read would block it
//! compares the clock with the deadline and arms one timer per connection, which is only moved when it
//! fires early. A busy connection pays no timer work per request.
//!
//! The same wrapper keeps a copy of the bytes of each request head (bounded by the head limit): hyper
//! silently drops `Content-Length` when `Transfer-Encoding` is present, and Mediary refuses such a
//! request outright (RFC 9112 §6.1), so it needs to see what the client really sent.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Method;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::Proxy;
use crate::tls::{PeerIdentity, TlsServer};

/// The per-connection limits, copied from the config once per worker.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_head: usize,
    pub max_headers: usize,
}

/// What the socket wrapper and the request handler share about one connection.
#[derive(Debug)]
pub struct ConnState {
    started: Instant,
    /// Requests whose response has not been fully written yet.
    inflight: AtomicU32,
    /// Nanoseconds since `started` (plus one, so 0 means "none") when the first byte of the next head
    /// arrived.
    head_since: AtomicU64,
    /// Nanoseconds since `started` of the last read or finished response.
    last_activity: AtomicU64,
    /// The bytes read while waiting for a head, up to `max_head`.
    head_bytes: Mutex<Vec<u8>>,
    max_head: usize,
}

impl ConnState {
    fn new(max_head: usize) -> Self {
        ConnState {
            started: Instant::now(),
            inflight: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            head_bytes: Mutex::new(Vec::new()),
            max_head,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return;
        }
        if self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now + 1, Ordering::Relaxed);
        }
        if let Ok(mut head) = self.head_bytes.lock() {
            let room = self.max_head.saturating_sub(head.len());
            head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Marks a request as started. When `inspect` is set, returns the raw bytes its head came in.
    pub fn begin_request(self: &Arc<Self>, inspect: bool) -> (RequestGuard, Option<Vec<u8>>) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        let raw = self.head_bytes.lock().ok().map(|mut head| {
            let raw = inspect.then(|| head.clone());
            head.clear();
            raw
        });
        (RequestGuard(Arc::clone(self)), raw.flatten())
    }

    /// When the connection must next be closed if nothing happens, and why; `None` while a request is
    /// in flight (request-level timeouts govern then).
    fn deadline(&self, settings: &ConnSettings) -> Option<(Instant, Expiry)> {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let at = |ns: u64, after: Duration| self.started + Duration::from_nanos(ns) + after;
        Some(match self.head_since.load(Ordering::Relaxed) {
            0 => (
                at(self.last_activity.load(Ordering::Relaxed), settings.idle),
                Expiry::Idle,
            ),
            since => (at(since - 1, settings.header_read), Expiry::Head),
        })
    }
}

/// Counts a connection in its worker's open-connections gauge for as long as it lives.
struct OpenConnection(Arc<crate::metrics::WorkerMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<crate::metrics::WorkerMetrics>) -> Self {
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by a request until its response has been written; then the connection counts as idle again.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.0;
        state.last_activity.store(state.now(), Ordering::Relaxed);
        state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No request for `idle_keep_alive`.
    Idle,
    /// A head started but did not finish within `client_header_read`.
    Head,
}

impl Expiry {
    /// The read error that ends the connection.
    fn timed_out<T>(self) -> Poll<io::Result<T>> {
        let what = match self {
            Expiry::Idle => "idle keep-alive connection timed out",
            Expiry::Head => "request head not received in time",
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
    }
}

/// A socket that reports what it reads to the connection's [`ConnState`] and closes the connection
/// when it stays idle, or a head stays incomplete, for too long.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    settings: Arc<ConnSettings>,
    /// Armed at or before the current deadline; allocated on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    /// Called when a read would block: fails the read once the connection's deadline has passed,
    /// otherwise makes sure the timer will wake the task by then.
    ///
    /// While a request is in flight there is no deadline, but the timer is kept armed at most one idle
    /// period ahead: the end of a response wakes nobody, so it is this timer that brings the task back
    /// to set the idle deadline, which always lies after it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let now = Instant::now();
        let (wake_at, expiry) = match self.state.deadline(&self.settings) {
            Some((deadline, expiry)) => (deadline, Some(expiry)),
            None => (now + self.settings.idle, None),
        };
        if let Some(expiry) = expiry
            && wake_at <= now
        {
            return expiry.timed_out();
        }
        let wake_at = tokio::time::Instant::from_std(wake_at);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at)));
        // A timer set earlier than needed is left alone and moved when it fires; one set too late
        // (a head started) or already spent is moved now.
        if timer.deadline() > wake_at || timer.is_elapsed() {
            timer.as_mut().reset(wake_at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            if let Some(expiry) = expiry
                && wake_at <= tokio::time::Instant::now()
            {
                return expiry.timed_out();
            }
            timer.as_mut().reset(wake_at);
            let _ = timer.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    self.state.on_read(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.poll_deadline(cx),
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one client connection until the client leaves, a timeout fires, or shutdown completes.
pub async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    shutdown: watch::Receiver<bool>,
) {
    serve_io(stream, remote, proxy, settings, shutdown, None).await;
}

/// Serves one HTTPS client connection: the TLS handshake (bounded by `client_header_read`), then
/// the same as [`serve`], with the client certificate's [`PeerIdentity`], if any, attached to
/// every request of the connection as an `Arc<PeerIdentity>` extension.
pub async fn serve_tls(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Arc<TlsServer>,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.proxy_acceptor();
    let stream =
        match tokio::time::timeout(settings.header_read, acceptor.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                proxy
                    .metrics()
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, %error, "TLS handshake failed.");
                return;
            }
            Err(_) => {
                proxy
                    .metrics()
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "TLS handshake not finished in time.");
                return;
            }
        };
    let peer = acceptor.identity(stream.get_ref().1).map(Arc::new);
    serve_io(stream, remote, proxy, settings, shutdown, peer).await;
}

async fn serve_io<S>(
    stream: S,
    remote: SocketAddr,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    mut shutdown: watch::Receiver<bool>,
    peer: Option<Arc<PeerIdentity>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(settings.max_head));
    let open = OpenConnection::new(Arc::clone(proxy.metrics()));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(settings.max_head);
    // hyper keeps up to 100 headers on the stack; only a different limit costs a heap allocation.
    if settings.max_headers != 100 {
        builder.max_headers(settings.max_headers);
    }
    let io = TokioIo::new(Watched {
        inner: stream,
        state: Arc::clone(&state),
        settings,
        timer: None,
    });
    let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        let proxy = Arc::clone(&proxy);
        let state = Arc::clone(&state);
        if let Some(peer) = &peer {
            request.extensions_mut().insert(Arc::clone(peer));
        }
        async move { proxy.handle(request, remote, &state).await }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // Resolves when shutdown is asked for (or its sender is gone, which means the same).
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "Client connection ended with an error.");
    }
    drop(open);
}

/// Whether the raw bytes of a request head carry both `Content-Length` and `Transfer-Encoding`.
///
/// `raw` starts at a request line, or holds the end of an earlier message before it; every line that
/// starts with `method` is tried as the start of the head.
pub fn has_conflicting_framing(raw: &[u8], method: &Method) -> bool {
    let prefix = method.as_str().as_bytes();
    let starts = std::iter::once(0).chain(
        raw.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1),
    );
    starts.filter(|&s| raw[s..].starts_with(prefix)).any(|s| {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        if request.parse(&raw[s..]).is_err() {
            return false;
        }
        let has = |name: &str| {
            request
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name))
        };
        has("content-length") && has("transfer-encoding")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_content_length_beside_transfer_encoding() {
        let both = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has_conflicting_framing(both, &Method::POST));
        let te_only = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab";
        assert!(!has_conflicting_framing(te_only, &Method::POST));
        let after_body =
            b"tail of a body\r\nPOST /y HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n";
        assert!(has_conflicting_framing(after_body, &Method::POST));
    }
}
