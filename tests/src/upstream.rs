//! The [`Upstream`] fixture: a real HTTP/1.1 server (hyper) on an ephemeral
//! port of 127.0.0.1 that records every request it receives and answers
//! through a handler closure.
//!
//! A request is recorded once its whole body has arrived and before the
//! answer is delayed, so a test can wait for "the upstream has the request"
//! and then act while the request is still in flight.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::{AbortHandle, JoinSet};

use tokio_rustls::TlsAcceptor;

use crate::runtime;
use crate::tls::ServerCert;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// The path of the request target, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The address the request came from: one per upstream connection Mediary opened.
    pub peer: SocketAddr,
}

impl Seen {
    /// The value of header `name` when it is present once (or its first
    /// value), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| {
            value
                .to_str()
                .unwrap_or_else(|_| panic!("header {name} is not visible ASCII"))
        })
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().expect("header values are visible ASCII"))
            .collect()
    }

    /// The comma-separated list carried by header `name` across all of its
    /// lines, each item trimmed.
    pub fn header_list(&self, name: &str) -> Vec<String> {
        self.header_values(name)
            .iter()
            .flat_map(|value| value.split(','))
            .map(|item| item.trim().to_owned())
            .collect()
    }
}

/// What the upstream answers to one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// An answer with `status`, no body and no delay.
    pub fn status(status: u16) -> Self {
        Answer {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A recording HTTP server; it stops (and drops its open connections) on drop.
pub struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: AbortHandle,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Answers 200 with the request body, and says what it saw in the
    /// `x-upstream-saw` header (`METHOD path?query`).
    pub fn echo() -> Self {
        Self::answering(echo)
    }

    /// Like [`Upstream::echo`], but only after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self::answering(move |seen| echo(seen).after(delay))
    }

    /// Answers every request with `status` and `body`.
    pub fn fixed(status: u16, body: &'static str) -> Self {
        Self::answering(move |_| Answer::status(status).body(body))
    }

    /// Like [`Upstream::fixed`], on a given port (e.g. to stand in for an upstream that restarted).
    /// Retries the bind for a few seconds while the previous owner lets go of the port.
    pub fn fixed_on_port(port: u16, status: u16, body: &'static str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => panic!("cannot bind an upstream on port {port}: {error}"),
            }
        };
        Self::serving(
            listener,
            Arc::new(move |_: &Seen| Answer::status(status).body(body)),
        )
    }

    /// Answers every request with what `handler` returns.
    pub fn answering(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        Self::serving(listener, Arc::new(handler))
    }

    /// Like [`Upstream::fixed`], over HTTPS with the given certificate.
    pub fn tls(cert: ServerCert, status: u16, body: &'static str) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .expect("a usable server certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        Self::start(
            listener,
            Arc::new(move |_: &Seen| Answer::status(status).body(body)),
            Some(TlsAcceptor::from(Arc::new(config))),
        )
    }

    /// Like [`Upstream::tls`], but the handshake requires a client certificate signed by
    /// `client_ca` (PEM); a client without one is refused.
    pub fn tls_requiring_client_cert(
        cert: ServerCert,
        client_ca: &crate::TestCa,
        status: u16,
        body: &'static str,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.der().clone()).expect("a client CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("a client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain, cert.key)
            .expect("a usable server certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        Self::start(
            listener,
            Arc::new(move |_: &Seen| Answer::status(status).body(body)),
            Some(TlsAcceptor::from(Arc::new(config))),
        )
    }

    fn serving(listener: std::net::TcpListener, handler: Handler) -> Self {
        Self::start(listener, handler, None)
    }

    fn start(listener: std::net::TcpListener, handler: Handler, tls: Option<TlsAcceptor>) -> Self {
        listener
            .set_nonblocking(true)
            .expect("a nonblocking upstream listener");
        let addr = listener.local_addr().expect("the upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = runtime()
            .spawn(serve(listener, handler, Arc::clone(&seen), tls))
            .abort_handle();
        Upstream { addr, seen, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The one request received so far; panics if there were none or several.
    pub fn single_request(&self) -> Seen {
        let mut requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected the upstream to see exactly one request, it saw {requests:#?}"
        );
        requests.remove(0)
    }

    /// Waits (up to `timeout`) until at least `count` requests have arrived.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "the upstream saw {} requests in {timeout:?}, expected {count}",
                requests.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn echo(seen: &Seen) -> Answer {
    let target = match &seen.query {
        Some(query) => format!("{} {}?{query}", seen.method, seen.path),
        None => format!("{} {}", seen.method, seen.path),
    };
    Answer::status(200)
        .header("x-upstream-saw", &target)
        .body(seen.body.clone())
}

/// Accepts until aborted; aborting drops the `JoinSet`, which aborts every
/// connection still open (e.g. one sleeping in a slow answer).
async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls: Option<TlsAcceptor>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio upstream listener");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen);
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        answer(request, peer, Arc::clone(&handler), Arc::clone(&seen))
                    });
                    // A connection error (e.g. the proxy hanging up) is the
                    // proxy's business; the test looks at what was recorded.
                    // Roomier than any proxy limit under test, so that a
                    // 431 or 413 the client gets is the proxy's own.
                    let mut builder = http1::Builder::new();
                    builder.max_headers(1000).max_buf_size(4 * 1024 * 1024);
                    let _ = match tls {
                        None => builder.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => builder.serve_connection(TokioIo::new(stream), service).await,
                            // A refused handshake is what some tests are after.
                            Err(_) => return,
                        },
                    };
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let request = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        peer,
    };
    let answer = handler(&request);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    tokio::time::sleep(answer.delay).await;
    let mut response = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    Ok(response
        .body(Full::new(answer.body))
        .expect("the handler's answer is a valid response"))
}
