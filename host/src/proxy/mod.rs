//! The data path: a client request is matched to a channel, admitted, read, sent to the channel's
//! primary route, and the upstream's answer streamed back.
//!
//! Phases of one request, in order ([`Proxy::handle`]):
//! 1. **frame** — refuse ambiguous framing (`Content-Length` with `Transfer-Encoding`);
//! 2. **match** — the first enabled channel, by priority, whose pattern and method match;
//! 3. **admit** — public channels admit everyone; private ones nobody until client authentication lands;
//! 4. **read** — the body, up to the channel's limit and within the body timeout;
//! 5. **route** — to the primary route (secondaries get a copy, their answers are not awaited);
//! 6. **respond** — the upstream's status, headers (hop-by-hop removed) and streamed body.
//!
//! Any failure is a [`ProxyError`], turned into a response in one place.

pub mod body;
pub mod conn;
pub mod error;
pub mod headers;
pub mod rerun;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use uuid::Uuid;

use crate::Shared;
use crate::channel::{AuthType, Channel, PathRewrite, Route};
use body::ProxyBody;
use conn::ConnState;
use error::{ProxyError, root_cause};
use headers::{X_MEDIARY_TRANSACTION_ID, X_OPENHIM_TRANSACTIONID};
use upstream::{Lease, PoolSettings, UpstreamError, Upstreams};

/// One worker's proxy: the shared state plus this worker's own upstream connection pool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    /// Which worker this is, for logs.
    worker: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, worker: usize) -> Self {
        let config = &shared.config;
        let upstreams = Upstreams::new(
            PoolSettings {
                connect_timeout: config.timeouts.upstream_connect,
                max_idle_per_host: config.upstream.max_idle_per_host,
                idle_timeout: config.upstream.pool_idle_timeout,
            },
            Arc::clone(&shared.upstream_tls),
        );
        Proxy {
            shared,
            upstreams,
            worker,
        }
    }

    /// This worker's upstream connections (for the periodic sweep of idle ones).
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// Serves one request. Never fails: every error becomes a response here.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        remote: SocketAddr,
        conn: &Arc<ConnState>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let inspect = request.headers().contains_key(header::TRANSFER_ENCODING);
        let (guard, raw_head) = conn.begin_request(inspect);
        let id = Uuid::now_v7();
        let mut id_buf = Uuid::encode_buffer();
        let id_str: &str = id.hyphenated().encode_lower(&mut id_buf);
        let id_header = HeaderValue::from_str(id_str).unwrap_or(HeaderValue::from_static(""));

        let ambiguous =
            raw_head.is_some_and(|raw| conn::has_conflicting_framing(&raw, request.method()));
        let result = if ambiguous {
            Err(ProxyError::AmbiguousFraming)
        } else {
            self.forward(request, remote, &id_header).await
        };
        let mut response = match result {
            Ok((response, lease, idle)) => {
                response.map(|body| ProxyBody::upstream(body, lease, idle, guard))
            }
            Err(error) => {
                log_failure(&error, id_str, self.worker);
                error
                    .into_response(id_str)
                    .map(|body| ProxyBody::full(body, guard))
            }
        };
        let headers = response.headers_mut();
        headers.insert(X_MEDIARY_TRANSACTION_ID.clone(), id_header.clone());
        headers.insert(X_OPENHIM_TRANSACTIONID.clone(), id_header);
        Ok(response)
    }

    /// Phases 2–6. Returns the upstream response, the lease of its connection and the inactivity
    /// timeout for its body.
    async fn forward(
        &self,
        request: Request<Incoming>,
        remote: SocketAddr,
        id: &HeaderValue,
    ) -> Result<(Response<Incoming>, Lease, Duration), ProxyError> {
        let channel = self.match_channel(request.method(), request.uri().path())?;
        if channel.auth_type == AuthType::Private {
            return Err(ProxyError::Unauthorized {
                channel: channel.name.clone(),
            });
        }
        let (mut parts, body) = request.into_parts();
        let body = self.read_body(&channel, &parts.headers, body).await?;

        headers::for_upstream(&mut parts.headers, headers::canonical_ip(remote.ip()));
        parts
            .headers
            .insert(X_MEDIARY_TRANSACTION_ID.clone(), id.clone());
        parts
            .headers
            .insert(X_OPENHIM_TRANSACTIONID.clone(), id.clone());
        let timeout = channel
            .timeout
            .unwrap_or(self.shared.config.timeouts.upstream_response);

        for route in channel.secondaries() {
            let request =
                upstream_request(route, &parts, parts.headers.clone(), body.clone(), &channel)?;
            let upstreams = Arc::clone(&self.upstreams);
            let (channel, route) = (Arc::clone(&channel), route.clone());
            tokio::spawn(async move {
                let exchange = async {
                    let (response, lease) = upstreams.send(&route, request).await?;
                    let status = response.status();
                    // Read it to the end so the connection can serve again.
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| UpstreamError::Exchange(root_cause(&e)))?;
                    lease.release();
                    Ok::<_, UpstreamError>(status)
                };
                let (channel, route) = (&channel.name, &route.name);
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(Ok(status)) => {
                        tracing::debug!(%channel, %route, %status, "Secondary route answered.");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%channel, %route, %error, "Secondary route failed.");
                    }
                    Err(_) => {
                        tracing::warn!(%channel, %route, ?timeout, "Secondary route timed out.");
                    }
                }
            });
        }

        let route = channel.primary();
        let headers = std::mem::take(&mut parts.headers);
        let request = upstream_request(route, &parts, headers, body, &channel)?;
        let sent = tokio::time::timeout(timeout, self.upstreams.send(route, request)).await;
        let (response, lease) = match sent {
            Ok(Ok(exchange)) => exchange,
            Ok(Err(error)) => {
                let (channel, route) = (channel.name.clone(), route.name.clone());
                return Err(match error {
                    UpstreamError::Connect(cause) => ProxyError::UpstreamUnreachable {
                        channel,
                        route,
                        cause,
                    },
                    UpstreamError::Exchange(cause) => ProxyError::UpstreamFailed {
                        channel,
                        route,
                        cause,
                    },
                });
            }
            Err(_) => {
                return Err(ProxyError::UpstreamTimeout {
                    channel: channel.name.clone(),
                    route: route.name.clone(),
                    after: timeout,
                });
            }
        };
        Ok((client_response(response, &parts.method), lease, timeout))
    }

    fn match_channel(&self, method: &Method, path: &str) -> Result<Arc<Channel>, ProxyError> {
        let table = self.shared.channels.load();
        table
            .find(method, path)
            .cloned()
            .ok_or(ProxyError::NoChannel)
    }

    /// Reads the whole body, refusing it as soon as it is known to be over the limit: at once when
    /// `Content-Length` says so, otherwise when the limit is crossed (nothing past it is buffered).
    async fn read_body(
        &self,
        channel: &Channel,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, ProxyError> {
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        let limit = channel
            .max_body_size
            .unwrap_or(self.shared.config.limits.max_request_body);
        let too_large = || ProxyError::BodyTooLarge {
            channel: channel.name.clone(),
            limit,
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        let read_timeout = self.shared.config.timeouts.client_body_read;
        match tokio::time::timeout(read_timeout, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large()),
            Ok(Err(error)) => Err(ProxyError::BodyRead {
                channel: channel.name.clone(),
                cause: root_cause(error.as_ref()),
            }),
            Err(_) => Err(ProxyError::BodyTimeout {
                channel: channel.name.clone(),
            }),
        }
    }
}

/// Builds the request for one route from the client's request parts and its (already cleaned)
/// headers. The URI is in origin form (path and query); the connection already knows the host.
fn upstream_request(
    route: &Route,
    parts: &http::request::Parts,
    mut headers: http::HeaderMap,
    body: Bytes,
    channel: &Channel,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let path_and_query = match (&route.rewrite, parts.uri.path_and_query()) {
        (PathRewrite::Keep, Some(original)) => original.clone(),
        _ => {
            let path = route.rewrite.apply(parts.uri.path());
            let target = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            PathAndQuery::try_from(target).map_err(|e| ProxyError::Internal {
                channel: channel.name.clone(),
                cause: format!("route `{}` gives an invalid path: {e}", route.name),
            })?
        }
    };
    headers::route_auth(
        &mut headers,
        route.forward_auth_header,
        route.basic_auth.as_ref(),
    );
    headers.insert(header::HOST, route.host_header.clone());
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = Uri::from(path_and_query);
    *request.headers_mut() = headers;
    Ok(request)
}

/// Turns the upstream's response into the client's: hop-by-hop and framing headers removed (hyper
/// recomputes framing from the body), except the `Content-Length` of bodiless answers to HEAD and 304,
/// which describes the resource rather than the message. The HTTP version is the client's connection's
/// business, not the upstream's: an HTTP/1.0 upstream must not turn the client's answer into HTTP/1.0.
fn client_response(response: Response<Incoming>, method: &Method) -> Response<Incoming> {
    let (mut parts, body) = response.into_parts();
    parts.version = http::Version::HTTP_11;
    let keep_length = (*method == Method::HEAD || parts.status == http::StatusCode::NOT_MODIFIED)
        .then(|| parts.headers.get(header::CONTENT_LENGTH).cloned())
        .flatten()
        .filter(|v| v.to_str().is_ok_and(|s| s.parse::<u64>().is_ok()));
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(length) = keep_length {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    Response::from_parts(parts, body)
}

fn log_failure(error: &ProxyError, transaction: &str, worker: usize) {
    match error.blame() {
        error::Blame::Client => {
            tracing::debug!(worker, transaction, %error, "Request refused.");
        }
        error::Blame::Upstream | error::Blame::Host => {
            tracing::warn!(worker, transaction, %error, "Request failed.");
        }
    }
}
