//! The data path: a client request is matched to a channel, admitted, read, recorded, sent to the
//! channel's primary route, and the upstream's answer streamed back.
//!
//! Phases of one request, in order ([`Proxy::handle`]):
//! 1. **frame** — refuse ambiguous framing (`Content-Length` with `Transfer-Encoding`);
//! 2. **match** — the first enabled channel, by priority, whose pattern and method match;
//! 3. **admit** — who the client is and whether the channel serves it (see [`auth`]): 401 (or 429
//!    when backing off) otherwise, decided by the matched channel alone;
//! 4. **read** — the body, up to the channel's limit and within the body timeout;
//! 5. **record** — the transaction gets its id and its `Begun` stage is in the spool file before
//!    anything goes upstream (see [`record`]);
//! 6. **route** — to the primary route (secondaries get a copy; their answers complete the record);
//! 7. **respond** — the upstream's status, headers (hop-by-hop removed) and streamed body; the record's
//!    last stage is in the spool file before the client gets the last byte.
//!
//! Any failure is a [`ProxyError`], turned into a response in one place. Requests refused before a
//! channel admits them (phases 1–3) are not transactions, as in OpenHIM.

pub mod auth;
pub mod body;
pub mod conn;
pub mod error;
pub mod h1;
pub mod headers;
mod plugin;
pub mod record;
pub mod rerun;
pub mod upstream;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::Shared;
use crate::channel::{AuthType, Channel, PathRewrite, Route};
use crate::metrics::WorkerMetrics;
use crate::plugin::output as plugin_output;
use crate::recorder::spool::Spool;
use crate::transaction::{ErrorDetails, Timestamp};
use body::ProxyBody;
use conn::{ConnState, RequestGuard};
use error::{ProxyError, root_cause};
use headers::{X_MEDIARY_TRANSACTION_ID, X_OPENHIM_TRANSACTIONID};
use record::{RequestFacts, TxRecording, answer_record, route_exchange};
use upstream::{PoolSettings, UpstreamError, Upstreams};

/// One worker's proxy: the shared state plus this worker's own upstream connection pool and spool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    /// Where this worker's transaction records go; `None` when recording is off.
    spool: Option<Arc<Spool>>,
    metrics: Arc<WorkerMetrics>,
    /// Secondary-route calls still running after their client was answered; a graceful stop waits
    /// for them (within the drain timeout) so their results are recorded.
    background: TaskTracker,
    /// Which worker this is, for logs and records.
    worker: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// A request that has been matched, admitted and read: everything routing needs.
struct Admitted {
    channel: Arc<Channel>,
    parts: http::request::Parts,
    body: Bytes,
    client_ip: IpAddr,
    /// The authenticated client's clientID (sent upstream as `X-OpenHIM-ClientID`, recorded).
    client_id: Option<String>,
    parent: Option<Uuid>,
    /// When the request began, for its record; `None` when recording is off (no clock read).
    started: Option<Instant>,
}

/// The primary's answer, as it goes back to the client.
enum Answer {
    /// Streamed: the response (whose body holds its connection) and the inactivity timeout for its
    /// body.
    Streamed(Response<upstream::Body>, Duration),
    /// Read whole first: a small body of a recorded transaction (see [`BUFFERED_BODY`]).
    Buffered(Response<Bytes>),
}

/// A recorded response whose body is at most this long (by its `Content-Length`) is read whole
/// before the client gets anything. Its record is then written before the head goes out, and hyper
/// sends head and body in one write; streamed, the head would go out alone while the last frame waits
/// for the record, costing a second write and a second TCP segment per response.
const BUFFERED_BODY: u64 = 256 * 1024;

/// What routing produced: the upstream's response (to stream back) or a failure (to answer with),
/// and the transaction's record when recording is on.
struct Routed {
    id: HeaderValue,
    outcome: Result<Answer, (ProxyError, Option<Route>)>,
    recording: Option<Arc<TxRecording>>,
    /// The route that answered (`None` when nothing was sent upstream).
    route: Option<Route>,
    /// The upstream's own status, when a plugin transformed its answer into another.
    upstream_status: Option<http::StatusCode>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, worker: usize, spool: Option<Arc<Spool>>) -> Self {
        let config = &shared.config;
        let upstreams = Upstreams::new(
            PoolSettings {
                connect_timeout: config.timeouts.upstream_connect,
                max_idle_per_host: config.upstream.max_idle_per_host,
                idle_timeout: config.upstream.pool_idle_timeout,
            },
            Arc::clone(&shared.upstream_tls),
        );
        let metrics = shared.metrics.worker(worker);
        Proxy {
            shared,
            upstreams,
            spool,
            metrics,
            background: TaskTracker::new(),
            worker,
        }
    }

    /// This worker's upstream connections (for the periodic sweep of idle ones).
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The secondary-route calls still running.
    pub fn background(&self) -> &TaskTracker {
        &self.background
    }

    /// This worker's counters.
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
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
        self.metrics
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ambiguous =
            raw_head.is_some_and(|raw| conn::has_conflicting_framing(&raw, request.method()));
        let admitted = if ambiguous {
            Err(ProxyError::AmbiguousFraming)
        } else {
            self.admit(request, remote).await
        };
        let routed = match admitted {
            Ok(admitted) => self.route(admitted).await,
            Err(error) => Routed {
                id: new_id().1,
                outcome: Err((error, None)),
                recording: None,
                route: None,
                upstream_status: None,
            },
        };
        Ok(self.respond(routed, Some(guard)).await)
    }

    /// Phases 2–4: the channel, admission, and the body.
    async fn admit(
        &self,
        request: Request<Incoming>,
        remote: SocketAddr,
    ) -> Result<Admitted, ProxyError> {
        let started = self.spool.is_some().then(Instant::now);
        let channel = self.match_channel(request.method(), request.uri().path())?;
        let client_ip = headers::canonical_ip(remote.ip());
        let client_id = self.authenticate(&channel, &request, client_ip).await?;
        channel
            .metrics
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut parts, body) = request.into_parts();
        // Replaced, or removed for an anonymous request: a client must not name itself.
        headers::set_client_id(&mut parts.headers, client_id.as_deref());
        let body = self.read_body(&channel, &parts.headers, body).await?;
        Ok(Admitted {
            channel,
            parts,
            body,
            client_ip,
            client_id,
            parent: None,
            started,
        })
    }

    /// Phase 3: the clientID of the request's client, if any, when the channel serves it.
    async fn authenticate(
        &self,
        channel: &Channel,
        request: &Request<Incoming>,
        client_ip: IpAddr,
    ) -> Result<Option<String>, ProxyError> {
        let auth = &self.shared.client_auth;
        let headers = request.headers();
        let peer = request
            .extensions()
            .get::<Arc<crate::tls::PeerIdentity>>()
            .cloned();
        // A public channel with no whitelist serves anyone: a request without credentials there
        // needs no look-up at all (an open channel costs nothing).
        if channel.auth_type == AuthType::Public
            && channel.whitelist.is_empty()
            && peer.is_none()
            && !headers.contains_key(header::AUTHORIZATION)
        {
            return Ok(None);
        }
        // An `Arc`, not a guard: a password check may take a while.
        let clients = self.shared.clients.load_full();
        match auth
            .admit(&clients, channel, headers, peer.as_deref(), client_ip)
            .await
        {
            Ok(auth::Identity::Client(client, _)) => Ok(Some(client.client_id.clone())),
            Ok(auth::Identity::Anonymous) => Ok(None),
            Err(auth::Refusal::Unauthorized) => Err(ProxyError::Unauthorized {
                channel: channel.name.clone(),
                challenge: auth.challenge().cloned(),
            }),
            Err(auth::Refusal::Backoff(retry_after)) => Err(ProxyError::AuthBackoff {
                channel: channel.name.clone(),
                retry_after,
            }),
        }
    }

    /// Phases 5 and 6: records the request, then sends it to every route. Also used by rerun.
    async fn route(&self, admitted: Admitted) -> Routed {
        let Admitted {
            channel,
            mut parts,
            body,
            client_ip,
            client_id,
            parent,
            started,
        } = admitted;
        let (id, id_header) = new_id();
        let secondaries: Vec<&Route> = channel.secondaries().collect();
        let mut recording = None;
        if let Some(spool) = &self.spool {
            let facts = RequestFacts {
                id,
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
                body: &body,
                client_ip,
                client_id: client_id.as_deref(),
                parent,
                started: started.unwrap_or_else(Instant::now),
            };
            let config = &self.shared.config;
            let begun = TxRecording::begin(
                spool,
                &channel,
                facts,
                self.worker,
                &config.server.instance,
                config.recording.max_bodies_size,
                secondaries.len(),
            );
            let written = match begun {
                Ok((rec, seq)) => {
                    recording = Some(rec);
                    spool.written(seq).await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                return Routed {
                    id: id_header,
                    outcome: Err((
                        ProxyError::RecordingUnavailable {
                            channel: channel.name.clone(),
                            cause: error.to_string(),
                        },
                        None,
                    )),
                    recording: None,
                    route: None,
                    upstream_status: None,
                };
            }
        }

        // Phase 5½: the channel's plugin decides where the request goes, or answers it.
        let mut body = body;
        let mut target = plugin::Target::ChannelRoutes;
        let mut turn = None;
        let mut rewritten = false;
        let consulted = self
            .consult_plugin(&channel, &parts, &body, id, recording.as_ref())
            .await;
        match consulted {
            Ok(None) => {}
            Ok(Some((plugin::Decision::Respond(response), _))) => {
                cancel_secondaries(recording.as_ref());
                return Routed {
                    id: id_header,
                    outcome: Ok(Answer::Buffered(response)),
                    recording,
                    route: None,
                    upstream_status: None,
                };
            }
            Ok(Some((
                plugin::Decision::Forward {
                    target: to,
                    rewrite,
                },
                plugin_turn,
            ))) => {
                if let Some(rewrite) = rewrite {
                    apply_rewrite(&mut parts, &mut body, *rewrite);
                    rewritten = true;
                }
                target = to;
                turn = plugin_turn;
            }
            Err(error) => {
                cancel_secondaries(recording.as_ref());
                return Routed {
                    id: id_header,
                    outcome: Err((error, None)),
                    recording,
                    route: None,
                    upstream_status: None,
                };
            }
        }

        headers::for_upstream(&mut parts.headers, client_ip);
        parts
            .headers
            .insert(X_MEDIARY_TRANSACTION_ID.clone(), id_header.clone());
        parts
            .headers
            .insert(X_OPENHIM_TRANSACTIONID.clone(), id_header.clone());
        let timeout = self.timeout(&channel);

        let route = match target {
            plugin::Target::ChannelRoutes => {
                for (index, route) in secondaries.into_iter().enumerate() {
                    self.spawn_secondary(
                        &channel,
                        (index, route),
                        &parts,
                        &body,
                        timeout,
                        recording.clone(),
                    );
                }
                channel.primary().clone()
            }
            plugin::Target::Route(route) => {
                cancel_secondaries(recording.as_ref());
                route
            }
            plugin::Target::Url(route, path) => {
                cancel_secondaries(recording.as_ref());
                parts.uri = Uri::from(path);
                rewritten = true;
                route
            }
        };
        if let (Some(recording), true) = (&recording, rewritten) {
            recording.sent_upstream(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or(""),
            );
        }
        let headers = std::mem::take(&mut parts.headers);
        let outcome = match upstream_request(&route, &parts, headers, body, &channel) {
            Ok(request) => self.send_primary(&channel, &route, request, timeout).await,
            Err(error) => Err(error),
        };
        let mut upstream_status = None;
        let outcome = match outcome {
            Ok(response) => {
                upstream_status = Some(response.status());
                let response = client_response(response, &parts.method);
                match turn.as_mut().filter(|t| t.transforms()) {
                    Some(turn) => {
                        let limit = self.body_limit(&channel);
                        match read_limited(response, timeout, &channel, &route, limit).await {
                            Ok(response) => self
                                .transform(&channel, turn, response, recording.as_ref())
                                .await
                                .map(Answer::Buffered),
                            Err(error) => Err(error),
                        }
                    }
                    None => {
                        let small = response
                            .body()
                            .size_hint()
                            .exact()
                            .is_some_and(|n| n > 0 && n <= BUFFERED_BODY);
                        if recording.is_some() && small {
                            read_whole(response, timeout, &channel, &route).await
                        } else {
                            Ok(Answer::Streamed(response, timeout))
                        }
                    }
                }
            }
            Err(error) => Err(error),
        };
        Routed {
            id: id_header,
            outcome: outcome.map_err(|error| (error, Some(route.clone()))),
            recording,
            route: Some(route),
            upstream_status,
        }
    }

    /// The channel's body limit (`maxBodySize`, else `limits.max_request_body`): for the client's
    /// request, for what a plugin returns, and for an upstream answer handed to a plugin.
    fn body_limit(&self, channel: &Channel) -> u64 {
        channel
            .max_body_size
            .unwrap_or(self.shared.config.limits.max_request_body)
    }

    /// The channel's upstream timeout (`timeout`, else `timeouts.upstream_response`).
    fn timeout(&self, channel: &Channel) -> Duration {
        channel
            .timeout
            .unwrap_or(self.shared.config.timeouts.upstream_response)
    }

    async fn send_primary(
        &self,
        channel: &Channel,
        route: &Route,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<upstream::Body>, ProxyError> {
        let sent = tokio::time::timeout(timeout, self.upstreams.send(route, request)).await;
        let (channel, route) = (channel.name.clone(), route.name.clone());
        match sent {
            Ok(Ok(exchange)) => Ok(exchange),
            Ok(Err(UpstreamError::Connect(cause))) => Err(ProxyError::UpstreamUnreachable {
                channel,
                route,
                cause,
            }),
            Ok(Err(UpstreamError::Exchange(cause))) => Err(ProxyError::UpstreamFailed {
                channel,
                route,
                cause,
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                channel,
                route,
                after: timeout,
            }),
        }
    }

    /// Sends a copy of the request to a secondary route; its answer is recorded, never awaited.
    fn spawn_secondary(
        &self,
        channel: &Arc<Channel>,
        (index, route): (usize, &Route),
        parts: &http::request::Parts,
        body: &Bytes,
        timeout: Duration,
        recording: Option<Arc<TxRecording>>,
    ) {
        let mut exchange = route_exchange(
            route,
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            Timestamp::now(),
        );
        let request = upstream_request(route, parts, parts.headers.clone(), body.clone(), channel);
        let upstreams = Arc::clone(&self.upstreams);
        let (channel, route) = (Arc::clone(channel), route.clone());
        self.background.spawn(async move {
            let exchange_result = async {
                let request = request.map_err(|e| e.to_string())?;
                let response = upstreams
                    .send(&route, request)
                    .await
                    .map_err(|e| e.to_string())?;
                let (parts, body) = response.into_parts();
                // Read to its end, which also lets the connection serve again.
                let body = body
                    .collect()
                    .await
                    .map_err(|e| UpstreamError::Exchange(root_cause(&e)).to_string())?
                    .to_bytes();
                Ok::<_, String>((parts, body))
            };
            let names = (&channel.name, &route.name);
            let result = match tokio::time::timeout(timeout, exchange_result).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "The upstream did not answer within {} ms.",
                    timeout.as_millis()
                )),
            };
            match result {
                Ok((parts, body)) => {
                    tracing::debug!(channel = %names.0, route = %names.1, status = %parts.status, "Secondary route answered.");
                    exchange.response = Some(answer_record(recording.as_ref(), &parts, &body));
                }
                Err(error) => {
                    tracing::warn!(channel = %names.0, route = %names.1, %error, "Secondary route failed.");
                    exchange.error = Some(ErrorDetails::new(error));
                }
            }
            if let Some(recording) = recording {
                recording.secondary_done(index, exchange);
            }
        });
    }

    /// Phase 7: the client's response, with the record's last stage spooled first where the body is
    /// already known; a streamed body spools it before its last byte (see [`body`]).
    async fn respond(&self, routed: Routed, guard: Option<RequestGuard>) -> Response<ProxyBody> {
        let Routed {
            id,
            outcome,
            recording,
            route: answered,
            upstream_status,
        } = routed;
        let mut response = match outcome {
            Ok(Answer::Buffered(response)) => {
                let (parts, body) = response.into_parts();
                if let Some(rec) = &recording {
                    let upstream = upstream_status.unwrap_or(parts.status);
                    rec.primary_head(answered.as_ref(), upstream, parts.status, &parts.headers);
                    if let Some(seq) = rec.primary_done(body.clone(), false, None) {
                        let _ = rec.spool().written(seq).await;
                    }
                }
                Response::from_parts(parts, ProxyBody::full(body, guard))
            }
            Ok(Answer::Streamed(response, idle)) => {
                let (parts, body) = response.into_parts();
                let recording = match recording {
                    Some(rec) => {
                        rec.primary_head(
                            answered.as_ref(),
                            parts.status,
                            parts.status,
                            &parts.headers,
                        );
                        if body.is_end_stream() {
                            if let Some(seq) = rec.primary_done(Bytes::new(), false, None) {
                                let _ = rec.spool().written(seq).await;
                            }
                            None
                        } else {
                            Some(rec)
                        }
                    }
                    None => None,
                };
                Response::from_parts(parts, ProxyBody::upstream(body, idle, guard, recording))
            }
            Err((error, route)) => {
                let id_str = id.to_str().unwrap_or("");
                log_failure(&error, id_str, self.worker);
                let message = error.to_string();
                let response = error.into_response(id_str);
                if let Some(rec) = &recording
                    && let Some(seq) = rec.primary_failed(
                        route.as_ref(),
                        response.status(),
                        response.body(),
                        message,
                    )
                {
                    let _ = rec.spool().written(seq).await;
                }
                response.map(|body| ProxyBody::full(body, guard))
            }
        };
        let headers = response.headers_mut();
        headers.insert(X_MEDIARY_TRANSACTION_ID.clone(), id.clone());
        headers.insert(X_OPENHIM_TRANSACTIONID.clone(), id);
        response
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
        let limit = self.body_limit(channel);
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

/// Reads a small upstream body whole (within the inactivity timeout, as a streamed one would be),
/// giving the connection back to the pool. A body that fails is the upstream's failure, and since the
/// client has seen nothing yet it gets a proper error response.
async fn read_whole(
    response: Response<upstream::Body>,
    idle: Duration,
    channel: &Channel,
    route: &Route,
) -> Result<Answer, ProxyError> {
    let (parts, body) = response.into_parts();
    let failed = |cause: String| ProxyError::UpstreamFailed {
        channel: channel.name.clone(),
        route: route.name.clone(),
        cause,
    };
    match tokio::time::timeout(idle, body.collect()).await {
        Ok(Ok(collected)) => Ok(Answer::Buffered(Response::from_parts(
            parts,
            collected.to_bytes(),
        ))),
        Ok(Err(error)) => Err(failed(root_cause(&error))),
        Err(_) => Err(failed(format!(
            "the response body did not arrive within {} ms",
            idle.as_millis()
        ))),
    }
}

/// A new transaction id and its header form.
fn new_id() -> (Uuid, HeaderValue) {
    let id = Uuid::now_v7();
    let mut buf = Uuid::encode_buffer();
    let text: &str = id.hyphenated().encode_lower(&mut buf);
    (
        id,
        HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("")),
    )
}

/// Builds the request for one route from the client's request parts and its (already cleaned)
/// headers. The URI is in origin form (path and query); the connection already knows the host.
fn upstream_request(
    route: &Route,
    parts: &http::request::Parts,
    mut headers: http::HeaderMap,
    body: Bytes,
    channel: &Channel,
) -> Result<Request<Bytes>, ProxyError> {
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
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = Uri::from(path_and_query);
    *request.headers_mut() = headers;
    Ok(request)
}

/// Turns the upstream's response into the client's: hop-by-hop and framing headers removed (hyper
/// recomputes framing from the body), except the `Content-Length` of bodiless answers to HEAD and 304,
/// which describes the resource rather than the message. The HTTP version is the client's connection's
/// business, not the upstream's: an HTTP/1.0 upstream must not turn the client's answer into HTTP/1.0.
fn client_response(
    response: Response<upstream::Body>,
    method: &Method,
) -> Response<upstream::Body> {
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
        error::Blame::Upstream | error::Blame::Plugin | error::Blame::Host => {
            tracing::warn!(worker, transaction, %error, "Request failed.");
        }
    }
}

/// The channel's secondary routes are not called when a plugin answers, refuses or fails the request,
/// or sends it to one route: their pre-filled entries leave the record.
fn cancel_secondaries(recording: Option<&Arc<TxRecording>>) {
    if let Some(recording) = recording {
        recording.no_secondaries();
    }
}

/// Applies a plugin's (checked) rewrite to the request.
fn apply_rewrite(
    parts: &mut http::request::Parts,
    body: &mut Bytes,
    rewrite: plugin_output::Rewritten,
) {
    if let Some(method) = rewrite.method {
        parts.method = method;
    }
    if rewrite.path.is_some() || rewrite.query.is_some() {
        let path = rewrite.path.as_deref().unwrap_or(parts.uri.path());
        let query = rewrite.query.as_deref().or(parts.uri.query()).unwrap_or("");
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        if let Ok(path_and_query) = PathAndQuery::try_from(target) {
            parts.uri = Uri::from(path_and_query);
        }
    }
    if let Some(headers) = rewrite.headers {
        parts.headers = headers;
    }
    if let Some(new_body) = rewrite.body {
        *body = new_body;
    }
}

/// Reads an upstream body whole for a transforming plugin, refusing one over `limit` bytes.
async fn read_limited(
    response: Response<upstream::Body>,
    idle: Duration,
    channel: &Channel,
    route: &Route,
    limit: u64,
) -> Result<Response<Bytes>, ProxyError> {
    let (parts, body) = response.into_parts();
    let failed = |cause: String| ProxyError::UpstreamFailed {
        channel: channel.name.clone(),
        route: route.name.clone(),
        cause,
    };
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(idle, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Response::from_parts(parts, collected.to_bytes())),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(failed(format!(
            "its response body is over {limit} bytes, too large to pass to the channel's plugin"
        ))),
        Ok(Err(error)) => Err(failed(root_cause(error.as_ref()))),
        Err(_) => Err(failed(format!(
            "the response body did not arrive within {} ms",
            idle.as_millis()
        ))),
    }
}
