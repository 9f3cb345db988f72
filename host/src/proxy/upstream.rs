//! Connections to upstream services: one keep-alive pool per worker.
//!
//! Each worker owns its pool, so checking a connection out never contends with another thread. A
//! connection is leased for one exchange and comes back when the response body has been read to its
//! end; one whose body was abandoned is closed instead, since its stream position is unknown. A request
//! that a pooled connection could not even start sending (the upstream had closed it) is retried once
//! on another connection: it never reached the upstream, so this is safe for every method.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

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

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Idle {
    /// Still open, and not idle for longer than `timeout`.
    fn usable(&self, timeout: Duration) -> bool {
        !self.sender.is_closed() && self.since.elapsed() < timeout
    }
}

/// A connection lent for one exchange. Give it back with [`Lease::release`] once the response body
/// has been read to its end; dropping it instead closes the connection.
pub struct Lease {
    sender: SendRequest<Full<Bytes>>,
    key: PoolKey,
    pool: Arc<Upstreams>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Lease {
    /// Returns the connection to the pool for the next exchange.
    pub fn release(self) {
        let Lease { sender, key, pool } = self;
        pool.put(key, sender);
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
    /// response with the lease of the connection it came on.
    pub async fn send(
        self: &Arc<Self>,
        route: &Route,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let key = PoolKey::of(route);
        // At most one retry on a fresh connection after a pooled one turned out to be closed.
        loop {
            let (mut sender, pooled) = match self.checkout(&key) {
                Some(sender) => (sender, true),
                // Boxed: connecting (with TLS) is a large future, and keeping it inline would make
                // every request's future, which hyper moves into place, that much larger.
                None => (Box::pin(self.connect(route)).await?, false),
            };
            if sender.ready().await.is_err() {
                if pooled {
                    continue;
                }
                return Err(UpstreamError::Connect(
                    "the upstream closed the new connection".into(),
                ));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        key,
                        pool: Arc::clone(self),
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Never written: the pooled connection had been closed. Safe to send elsewhere.
                    Some(unsent) if pooled => request = unsent,
                    _ => {
                        let cause = error.into_error();
                        return Err(UpstreamError::Exchange(super::error::root_cause(&cause)));
                    }
                },
            }
        }
    }

    fn checkout(&self, key: &PoolKey) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.usable(self.settings.idle_timeout) {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, key: PoolKey, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() >= self.settings.max_idle_per_host {
            // Keep the most recently used; the oldest goes.
            list.remove(0);
        }
        list.push(Idle {
            sender,
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
            list.retain(|e| e.usable(timeout));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Opens a new connection (TCP, then TLS for secured routes) within the connect timeout and starts
    /// the task that drives it.
    async fn connect(&self, route: &Route) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
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
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(super::error::root_cause(&e)))?;
        let authority = Arc::clone(&route.authority);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %authority, %error, "Upstream connection ended with an error.");
            }
        });
        Ok(sender)
    }
}
