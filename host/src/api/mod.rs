//! The management API: OpenHIM-compatible endpoints for channels, transactions and rerun, plus
//! health probes and metrics, served over HTTP/1.1 on its own listener.
//!
//! A request goes through these steps, in order (`Api::respond`):
//! 1. **route** — the path names an endpoint (`Route`), else 404; the method is one it answers,
//!    else 405 with `Allow`;
//! 2. **authenticate** — every endpoint but `/heartbeat`, `/health/*`, `/authenticate/local` and
//!    `/logout` wants a session cookie ([`session`]) or HTTP Basic credentials of an API user
//!    ([`auth`]), else 401;
//! 3. **authorise** — the user's roles must grant the endpoint's permission ([`roles`], where the
//!    table of endpoints and permissions is), else 403; a state-changing request authenticated by
//!    the cookie alone must show it comes from a script ([`session::check_csrf`]);
//! 4. **read** — query parameters and the JSON body are parsed into typed values once, here, with
//!    every problem reported (413 over `api.max_payload`, 400 for malformed JSON);
//! 5. **act** — the endpoint's handler ([`channels`], [`transactions`], [`health`]).
//!
//! Any failure is an [`ApiError`], turned into a response in one place ([`ApiError::into_response`]).
//!
//! The server runs on a current-thread runtime shared with other background tasks, so nothing here
//! blocks: password hashing goes to the blocking pool, and store calls are async.
//!
//! - [`auth`]: Basic credentials, password hashes, the root user.
//! - [`roles`]: permissions, the built-in roles, and which endpoint wants what.
//! - [`session`]: console login sessions, `/me`, `/logout`, failed-login audit events.
//! - [`users`]: API user documents.
//! - [`channels`]: channel documents (create, read, partial update, delete).
//! - [`transactions`]: listings with OpenHIM's filters and representations, one record, rerun.
//! - [`plugins`]: WebAssembly plugins (upload a version, list, roll back, delete).
//! - [`health`]: `/heartbeat`, `/health/live`, `/health/ready`, `/metrics`.
//! - [`error`]: what can go wrong and the response for it.

pub mod auth;
pub mod channels;
pub mod clients;
pub mod cluster;
pub mod error;
pub mod health;
pub mod plugins;
pub mod roles;
pub mod session;
pub mod transactions;
pub mod users;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::proxy::Proxy;
use crate::proxy::error::Blame;
use auth::Authenticator;
pub use auth::ensure_root_user;
pub use error::ApiError;
use roles::{Permission, Principal, Via};
use session::Sessions;

/// A whole response.
pub type Reply = Response<Full<Bytes>>;

/// What every API request may use.
#[derive(Debug)]
pub struct Api {
    shared: Arc<Shared>,
    /// The proxy of the runtime the API runs on, for reruns.
    proxy: Arc<Proxy>,
    auth: Authenticator,
    /// Console sessions and the failed-login counters.
    sessions: Sessions,
    /// Held while a channel is checked and written, so that two requests cannot both take a name.
    channel_writes: tokio::sync::Mutex<()>,
}

/// Serves the management API on `listener` (bound and non-blocking) until `shutdown` turns true;
/// then stops accepting, lets open requests finish within the drain timeout, and returns.
pub async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "Could not register the API listener; the API is not served.");
            return;
        }
    };
    let drain = shared.config.timeouts.shutdown_drain;
    // With a certificate configured the API speaks HTTPS only (unless `tls.api = false`).
    let tls = shared.tls.clone().filter(|tls| tls.serves_api());
    let api = Arc::new(Api {
        auth: Authenticator::new(Arc::clone(&shared.store)),
        sessions: Sessions::new(Arc::clone(&shared.store), &shared.config.api),
        shared,
        proxy,
        channel_writes: tokio::sync::Mutex::new(()),
    });
    // The dummy hash is made before anyone asks, so that the first unknown user costs what every
    // other failed login does.
    tokio::spawn({
        let api = Arc::clone(&api);
        async move {
            api.auth.prepare().await;
            // The proxy's client checks likewise (the API's runtime is as good as any for it).
            api.shared.client_auth.prepare().await;
        }
    });
    let connections = TaskTracker::new();
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        Some(tls) => {
                            connections.spawn(tls_connection(
                                tls.api_acceptor(),
                                stream,
                                remote,
                                Arc::clone(&api),
                                shutdown.clone(),
                            ));
                        }
                        None => {
                            connections.spawn(connection(
                                stream,
                                remote,
                                Arc::clone(&api),
                                shutdown.clone(),
                            ));
                        }
                    }
                }
                Err(error) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "API accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "API drain timeout reached; closing the remaining connections."
        );
    }
}

/// Serves one HTTPS API connection: the handshake (bounded by `client_header_read`), then as
/// [`connection`].
async fn tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    api: Arc<Api>,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = api.shared.config.timeouts.client_header_read;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => connection(stream, remote, api, shutdown).await,
        Ok(Err(error)) => tracing::debug!(%remote, %error, "API TLS handshake failed."),
        Err(_) => tracing::debug!(%remote, "API TLS handshake not finished in time."),
    }
}

/// Serves one API connection until the client leaves, the connection times out, or shutdown.
async fn connection<S>(
    stream: S,
    remote: SocketAddr,
    api: Arc<Api>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = &api.shared.config;
    let mut builder = http1::Builder::new();
    // hyper's head timer also runs while a keep-alive connection waits for its next request, so it
    // is set to the idle timeout: API clients are few, and a slow head costs little here.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.idle_keep_alive)
        .keep_alive(true)
        .max_buf_size(config.limits.max_request_head.max(8192));
    let service = service_fn(move |request| {
        let api = Arc::clone(&api);
        async move { Ok::<_, Infallible>(api.handle(request, remote).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
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
        tracing::debug!(%remote, %error, "API connection ended with an error.");
    }
}

impl Api {
    /// Answers one request and logs it.
    async fn handle(&self, request: Request<Incoming>, remote: SocketAddr) -> Reply {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // A browser answers `WWW-Authenticate: Basic` with its own password dialog: a console whose
        // session ended, or whose login failed, should show its own page instead.
        let console = request.headers().contains_key(header::COOKIE)
            && !request.headers().contains_key(header::AUTHORIZATION)
            || path.starts_with("/authenticate/");
        let mut user = None;
        let response = match self.respond(request, remote, &mut user).await {
            Ok(response) => response,
            Err(error) => {
                if error.blame() == Blame::Host {
                    tracing::warn!(%method, %path, %error, "API request failed.");
                }
                let mut response = error.into_response();
                if console {
                    response.headers_mut().remove(header::WWW_AUTHENTICATE);
                }
                response
            }
        };
        tracing::debug!(
            %method,
            %path,
            status = response.status().as_u16(),
            user = user.as_deref().unwrap_or("-"),
            %remote,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "API request."
        );
        response
    }

    async fn respond(
        &self,
        request: Request<Incoming>,
        remote: SocketAddr,
        user: &mut Option<String>,
    ) -> Result<Reply, ApiError> {
        let route = Route::parse(request.uri().path()).ok_or(ApiError::NoRoute)?;
        let allow = route.methods();
        if !allow.contains(request.method()) {
            return Err(ApiError::MethodNotAllowed { allow });
        }
        let access = route.access(request.method());
        let principal = match access {
            Access::Public => None,
            _ => {
                let principal = self.principal(request.headers(), remote).await?;
                *user = Some(principal.email.clone());
                if principal.via == Via::Session {
                    session::check_csrf(request.method(), request.headers())?;
                }
                match access {
                    Access::Public | Access::Anyone => {}
                    Access::Needs(permission) => principal.require(permission)?,
                    Access::SelfOr(permission) => {
                        if let Route::User(email) = &route {
                            principal.require_self_or(email, permission)?;
                        }
                    }
                }
                Some(principal)
            }
        };
        // Routes that are not public always have a principal; this one stands in for the others.
        let principal = principal.unwrap_or(Principal {
            email: String::new(),
            roles: roles::Roles::default(),
            via: Via::Basic,
        });
        let bodies = principal.can(Permission::TransactionViewBodyAll);
        let (parts, body) = request.into_parts();
        let params = || query_params(parts.uri.query().unwrap_or(""));
        match (route, parts.method) {
            (Route::Login, _) => {
                let doc = self.read_json(&parts.headers, body).await?;
                session::login(self, &parts.headers, doc, remote).await
            }
            (Route::Logout, _) => session::logout(self, &parts.headers).await,
            (Route::Me, _) => session::me(self, &principal).await,
            (Route::Roles, _) => Ok(json_reply(StatusCode::OK, &roles::list())),
            (Route::Role(name), _) => Ok(json_reply(StatusCode::OK, &roles::get(&name)?)),
            (Route::Users, Method::POST) => {
                let doc = self.read_json(&parts.headers, body).await?;
                users::create(self, doc).await
            }
            (Route::Users, _) => users::list(self).await,
            (Route::User(email), Method::PUT) => {
                let doc = self.read_json(&parts.headers, body).await?;
                users::update(self, &principal, &email, doc).await
            }
            (Route::User(email), Method::DELETE) => users::delete(self, &email).await,
            (Route::User(email), _) => users::get(self, &email).await,
            (Route::Heartbeat, _) => Ok(health::heartbeat(self)),
            (Route::Live, _) => Ok(health::live()),
            (Route::Ready, _) => health::ready(self).await,
            (Route::Metrics, _) => Ok(health::metrics(self).await),
            (Route::Cluster, _) => cluster::list(self).await,
            (Route::Channels, Method::POST) => {
                let doc = self.read_json(&parts.headers, body).await?;
                channels::create(self, doc).await
            }
            (Route::Channels, _) => channels::list(self).await,
            (Route::Channel(key), Method::PUT) => {
                let doc = self.read_json(&parts.headers, body).await?;
                channels::update(self, &key, doc).await
            }
            (Route::Channel(key), Method::DELETE) => channels::delete(self, &key).await,
            (Route::Channel(key), _) => channels::get(self, &key).await,
            (Route::Clients, Method::POST) => {
                let doc = self.read_json(&parts.headers, body).await?;
                clients::create(self, doc).await
            }
            (Route::Clients, _) => clients::list(self).await,
            (Route::Client(key), method) => {
                let by = clients::Key::from_params(&params())?;
                match method {
                    Method::PUT => {
                        let doc = self.read_json(&parts.headers, body).await?;
                        clients::update(self, &key, by, doc).await
                    }
                    Method::DELETE => clients::delete(self, &key, by).await,
                    _ => clients::get(self, &key, by).await,
                }
            }
            (Route::Plugins, _) => plugins::list(self).await,
            (Route::Plugin(name), Method::POST) => {
                let by = user.clone().unwrap_or_default();
                plugins::upload(self, &name, &parts.headers, body, &by).await
            }
            (Route::Plugin(name), Method::DELETE) => plugins::delete(self, &name).await,
            (Route::Plugin(name), _) => plugins::get(self, &name).await,
            (Route::Rollback(name), _) => plugins::rollback(self, &name).await,
            (Route::Transactions, _) => transactions::list(self, &params(), bodies).await,
            (Route::Transaction(id), _) => transactions::get(self, &id, bodies).await,
            (Route::Rerun(id), _) => transactions::rerun(self, &id, bodies).await,
        }
    }

    /// Reads a JSON body: refused when `Content-Length` is over `api.max_payload`, cut off when the
    /// body grows past it, and bounded by the client body timeout.
    async fn read_json(&self, headers: &HeaderMap, body: Incoming) -> Result<Value, ApiError> {
        let bytes = self
            .read_body(headers, body, self.shared.config.api.max_payload)
            .await?;
        parse_json(&bytes)
    }

    /// Reads a whole body of at most `limit` bytes within the client body timeout.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        limit: u64,
    ) -> Result<Bytes, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(ApiError::TooLarge { limit });
        }
        let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        let timeout = self.shared.config.timeouts.client_body_read;
        let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(Err(error)) if error.is::<LengthLimitError>() => {
                return Err(ApiError::TooLarge { limit });
            }
            Ok(Err(error)) => {
                return Err(ApiError::BodyRead(crate::proxy::error::root_cause(
                    error.as_ref(),
                )));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(bytes)
    }
}

/// Parses a request body as JSON; the error says where it went wrong.
fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "The request has no body; send a JSON object.".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|error| ApiError::MalformedJson(error.to_string()))
}

/// `value` as a JSON response with `status`.
pub fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    let bytes = serde_json::to_vec(value).map_or_else(|_| Bytes::new(), Bytes::from);
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An endpoint, with the ids its path carries (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Heartbeat,
    Live,
    Ready,
    Metrics,
    Cluster,
    Channels,
    Channel(String),
    Clients,
    Client(String),
    Plugins,
    Plugin(String),
    Rollback(String),
    Transactions,
    Transaction(String),
    Rerun(String),
    Login,
    Logout,
    Me,
    Users,
    User(String),
    Roles,
    Role(String),
}

/// Who may call an endpoint ([`roles`] has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, without credentials.
    Public,
    /// Any authenticated user, with or without a role.
    Anyone,
    /// A user whose roles grant the permission.
    Needs(Permission),
    /// The user the path names, or one whose roles grant the permission.
    SelfOr(Permission),
}

impl Route {
    /// The endpoint at `path`; a trailing slash is ignored.
    fn parse(path: &str) -> Option<Route> {
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        let id = |s: &str| Some(percent_decode(s)).filter(|id| !id.is_empty());
        Some(match segments.as_slice() {
            ["heartbeat"] => Route::Heartbeat,
            ["health", "live"] => Route::Live,
            ["health", "ready"] => Route::Ready,
            ["metrics"] => Route::Metrics,
            ["cluster"] => Route::Cluster,
            ["channels"] => Route::Channels,
            ["channels", key] => Route::Channel(id(key)?),
            ["clients"] => Route::Clients,
            ["clients", key] => Route::Client(id(key)?),
            ["plugins"] => Route::Plugins,
            ["plugins", name] => Route::Plugin(id(name)?),
            ["plugins", name, "rollback"] => Route::Rollback(id(name)?),
            ["transactions"] => Route::Transactions,
            ["transactions", tx] => Route::Transaction(id(tx)?),
            ["transactions", tx, "rerun"] => Route::Rerun(id(tx)?),
            ["authenticate", "local"] => Route::Login,
            ["logout"] => Route::Logout,
            ["me"] => Route::Me,
            ["users"] => Route::Users,
            ["users", email] => Route::User(id(email)?),
            ["roles"] => Route::Roles,
            ["roles", name] => Route::Role(id(name)?),
            _ => return None,
        })
    }

    /// The methods the endpoint answers.
    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Channels | Route::Clients => &[Method::GET, Method::POST],
            Route::Channel(_) | Route::Client(_) => &[Method::GET, Method::PUT, Method::DELETE],
            Route::Plugin(_) => &[Method::GET, Method::POST, Method::DELETE],
            Route::Users => &[Method::GET, Method::POST],
            Route::User(_) => &[Method::GET, Method::PUT, Method::DELETE],
            Route::Rerun(_) | Route::Rollback(_) | Route::Login => &[Method::POST],
            _ => &[Method::GET],
        }
    }

    /// Who may call the endpoint with `method` (one of [`Route::methods`]).
    fn access(&self, method: &Method) -> Access {
        use Permission::*;
        let read = method == Method::GET || method == Method::HEAD;
        let (view, manage) = match self {
            Route::Heartbeat | Route::Live | Route::Ready | Route::Login | Route::Logout => {
                return Access::Public;
            }
            Route::Me => return Access::Anyone,
            Route::Metrics | Route::Cluster => return Access::Needs(ChannelViewAll),
            Route::Transactions | Route::Transaction(_) => {
                return Access::Needs(TransactionViewAll);
            }
            Route::Rerun(_) => return Access::Needs(TransactionRerunAll),
            Route::Roles | Route::Role(_) => return Access::Needs(UserRoleView),
            Route::User(_) if method == Method::DELETE => return Access::Needs(UserManage),
            Route::User(_) if read => return Access::SelfOr(UserView),
            Route::User(_) => return Access::SelfOr(UserManage),
            Route::Users => (UserView, UserManage),
            Route::Channels | Route::Channel(_) => (ChannelViewAll, ChannelManageAll),
            Route::Clients | Route::Client(_) => (ClientViewAll, ClientManageAll),
            Route::Plugins | Route::Plugin(_) | Route::Rollback(_) => {
                (MediatorViewAll, MediatorManageAll)
            }
        };
        Access::Needs(if read { view } else { manage })
    }
}

/// The `name=value` pairs of a query string, decoded as HTML forms are (`+` is a space).
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&name.replace('+', " ")),
                percent_decode(&value.replace('+', " ")),
            )
        })
        .collect()
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is, and bytes that are
/// not UTF-8 become U+FFFD.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An [`Api`] over a fresh embedded store, for handler tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use http_body_util::BodyExt as _;

    use super::{Api, Reply};
    use crate::Shared;
    use crate::api::auth::Authenticator;
    use crate::config::Config;
    use crate::proxy::Proxy;
    use crate::store::embedded::EmbeddedStore;

    /// Keeps the store's directory alive as long as the API.
    pub struct Fixture {
        pub api: Api,
        _dir: tempfile::TempDir,
    }

    /// An API configured by `toml`, over an empty store.
    pub fn api(toml: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("the store opens"));
        let config = Config::parse(toml).expect("a valid config");
        let shared = Arc::new(Shared::new(config, store, 1).expect("shared state"));
        let proxy = Arc::new(Proxy::new(Arc::clone(&shared), 0, None));
        Fixture {
            api: Api {
                auth: Authenticator::new(Arc::clone(&shared.store)),
                sessions: crate::api::session::Sessions::new(
                    Arc::clone(&shared.store),
                    &shared.config.api,
                ),
                shared,
                proxy,
                channel_writes: tokio::sync::Mutex::new(()),
            },
            _dir: dir,
        }
    }

    /// A reply's status and JSON body.
    pub async fn read(reply: Reply) -> (u16, serde_json::Value) {
        let status = reply.status().as_u16();
        let bytes = reply
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|never| match never {})
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_methods() {
        assert_eq!(Route::parse("/heartbeat"), Some(Route::Heartbeat));
        assert_eq!(Route::parse("/health/ready/"), Some(Route::Ready));
        assert_eq!(Route::parse("/channels/"), Some(Route::Channels));
        assert_eq!(
            Route::parse("/channels/my%20channel"),
            Some(Route::Channel("my channel".into()))
        );
        assert_eq!(
            Route::parse("/transactions/abc/rerun"),
            Some(Route::Rerun("abc".into()))
        );
        for unknown in [
            "",
            "/",
            "/channel",
            "/channels//x",
            "/transactions/a/b",
            "heartbeat",
        ] {
            assert_eq!(Route::parse(unknown), None, "{unknown}");
        }
        // Probes must work without credentials.
        assert_eq!(Route::Live.access(&Method::GET), Access::Public);
        assert_ne!(Route::Metrics.access(&Method::GET), Access::Public);
        assert_eq!(Route::Rerun("x".into()).methods(), [Method::POST]);
        assert_eq!(Route::parse("/authenticate/local"), Some(Route::Login));
        assert_eq!(
            Route::parse("/users/a%40b.org"),
            Some(Route::User("a@b.org".into()))
        );
    }

    #[test]
    fn every_endpoint_has_its_permission() {
        use Permission::*;
        let cases = [
            ("/heartbeat", Method::GET, Access::Public),
            ("/authenticate/local", Method::POST, Access::Public),
            ("/logout", Method::GET, Access::Public),
            ("/me", Method::GET, Access::Anyone),
            ("/channels", Method::GET, Access::Needs(ChannelViewAll)),
            ("/channels", Method::POST, Access::Needs(ChannelManageAll)),
            (
                "/channels/x",
                Method::DELETE,
                Access::Needs(ChannelManageAll),
            ),
            (
                "/transactions/x",
                Method::GET,
                Access::Needs(TransactionViewAll),
            ),
            (
                "/transactions/x/rerun",
                Method::POST,
                Access::Needs(TransactionRerunAll),
            ),
            ("/plugins/p", Method::GET, Access::Needs(MediatorViewAll)),
            ("/plugins/p", Method::POST, Access::Needs(MediatorManageAll)),
            (
                "/plugins/p/rollback",
                Method::POST,
                Access::Needs(MediatorManageAll),
            ),
            ("/metrics", Method::GET, Access::Needs(ChannelViewAll)),
            ("/cluster", Method::GET, Access::Needs(ChannelViewAll)),
            ("/users", Method::GET, Access::Needs(UserView)),
            ("/users", Method::POST, Access::Needs(UserManage)),
            ("/users/a@b", Method::GET, Access::SelfOr(UserView)),
            ("/users/a@b", Method::PUT, Access::SelfOr(UserManage)),
            ("/users/a@b", Method::DELETE, Access::Needs(UserManage)),
            ("/roles/admin", Method::GET, Access::Needs(UserRoleView)),
        ];
        for (path, method, access) in cases {
            let route = Route::parse(path).expect(path);
            assert!(route.methods().contains(&method), "{path} {method}");
            assert_eq!(route.access(&method), access, "{path} {method}");
        }
    }

    #[test]
    fn query_strings_decode_like_forms() {
        let params = query_params(
            "filters=%7B%22status%22%3A%22Failed%22%7D&filterLimit=5&a+b=c+d&flag&&x=%zz",
        );
        assert_eq!(
            params,
            [
                ("filters".into(), r#"{"status":"Failed"}"#.into()),
                ("filterLimit".into(), "5".into()),
                ("a b".into(), "c d".into()),
                ("flag".into(), String::new()),
                ("x".into(), "%zz".into()),
            ]
        );
        assert_eq!(percent_decode("%e2%9c%93%"), "✓%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn json_bodies_say_where_they_break() {
        let error = parse_json(b"{\"name\": \n  oops}").unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("line 2 column"), "{error}");
        assert!(
            parse_json(b"  ")
                .unwrap_err()
                .to_string()
                .contains("no body")
        );
        assert_eq!(parse_json(b"[1]").unwrap(), serde_json::json!([1]));
    }
}
