//! Who is calling the management API: a session cookie from the console login
//! (`POST /authenticate/local`, OpenHIM's), or HTTP Basic on every call; `GET /me` and
//! `GET /logout`; and the audit events and counters of failed logins.
//!
//! **Sessions** live in the store's key-value space (namespace [`NAMESPACE`], each key the hex
//! SHA-256 of a session id, expiring after `api.session_ttl`), so every instance sharing the store
//! accepts a cookie another one issued, and a leaked store does not leak usable ids. The id is 256
//! random bits. A session also ends when the user is deleted or its password changes: it remembers a
//! digest of the password hash it was opened with.
//!
//! **The cookie** is `mediary.sid`: `HttpOnly` (scripts cannot read it), `Path=/`,
//! `Max-Age` = the session lifetime, `Secure` unless `api.session_cookie_secure = false` (for an API
//! reached over plain HTTP), and `SameSite=Strict`. OpenHIM sets `SameSite=None` because its console
//! may be served from another site than the API; Mediary keeps the stricter setting, which stops a
//! browser from sending the cookie with any request another site starts: serve the console from the
//! API's own site (same scheme and registrable domain), or use Basic.
//!
//! **CSRF**: besides `SameSite=Strict`, a request that changes something (any method but `GET` and
//! `HEAD`) and is authenticated by the cookie alone, and the login itself, must carry
//! `Content-Type: application/json` or an `X-Requested-With` header. An HTML form can send neither,
//! and a script on another site cannot without a CORS preflight, which the API never approves.
//! Requests with Basic credentials are not affected (the caller chose to send them).
//!
//! **Failures** (a wrong password or unknown user, with Basic or at the login) are audit events on
//! the `tracing` target `mediary::audit` (user and remote address; never a password), and are
//! counted in `/metrics` as `mediary_api_auth_failures_total{method}`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::auth::Credentials;
use super::error::ApiError;
use super::roles::{Principal, Roles, Via};
use super::{Api, Reply, json_reply, users};
use crate::config::fields::{FieldErrors, Fields};
use crate::store::{Collection, Store};
use crate::transaction::Timestamp;

/// The key-value namespace of sessions. Plugin namespaces are channel ids (UUIDs), so no channel's
/// plugin can read or write it.
pub const NAMESPACE: &str = "mediary:api-sessions";

/// The session cookie's name.
pub const COOKIE: &str = "mediary.sid";

/// The `tracing` target of audit events.
pub const AUDIT: &str = "mediary::audit";

/// Random bytes in a session id.
const ID_BYTES: usize = 32;

const SESSION_ENDED: &str =
    "The session has expired or ended: log in again (POST /authenticate/local) or use HTTP Basic.";
const LOGIN_REJECTED: &str = "The email or password is not correct.";

/// How a login was attempted, for the failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    Basic,
    Local,
}

/// Console sessions and authentication counters; one per API server.
#[derive(Debug)]
pub struct Sessions {
    store: Arc<dyn Store>,
    ttl: Duration,
    secure: bool,
    /// Failed Basic checks and failed console logins, since start.
    failures_basic: AtomicU64,
    failures_local: AtomicU64,
}

/// What the store keeps for a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stored {
    email: String,
    /// [`password_digest`] of the user's hash at login.
    password: String,
    /// When the session began, milliseconds since the epoch.
    created: u64,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, config: &crate::config::Api) -> Sessions {
        Sessions {
            store,
            ttl: config.session_ttl,
            secure: config.session_cookie_secure,
            failures_basic: AtomicU64::new(0),
            failures_local: AtomicU64::new(0),
        }
    }

    /// Opens a session for `email` (whose stored password hash is `hash`); returns its id.
    async fn open(&self, email: &str, hash: &str) -> Result<String, ApiError> {
        let id = new_id();
        let stored = Stored {
            email: email.to_owned(),
            password: password_digest(hash),
            created: Timestamp::now().0,
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|error| ApiError::Internal(format!("Encoding a session failed: {error}.")))?;
        self.store
            .kv_set(NAMESPACE, &key(&id), Bytes::from(bytes), Some(self.ttl))
            .await?;
        Ok(id)
    }

    /// The live session with id `id`, if any.
    async fn find(&self, id: &str) -> Result<Option<Stored>, ApiError> {
        let Some(bytes) = self.store.kv_get(NAMESPACE, &key(id)).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(stored) => Ok(Some(stored)),
            Err(error) => {
                tracing::warn!(%error, "A stored session cannot be read; treating it as ended.");
                Ok(None)
            }
        }
    }

    async fn close(&self, id: &str) -> Result<(), ApiError> {
        self.store.kv_delete(NAMESPACE, &key(id)).await?;
        Ok(())
    }

    /// `Set-Cookie` for a new session.
    fn cookie(&self, id: &str) -> HeaderValue {
        self.cookie_value(id, self.ttl.as_secs())
    }

    /// `Set-Cookie` that makes the browser forget the session.
    fn removal(&self) -> HeaderValue {
        self.cookie_value("", 0)
    }

    fn cookie_value(&self, id: &str, max_age: u64) -> HeaderValue {
        let mut value =
            format!("{COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict");
        if self.secure {
            value.push_str("; Secure");
        }
        // Ids are base64url, so the value is always a valid header.
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
    }

    /// Counts and audits a failed login of `email` from `remote`.
    pub fn failed(&self, method: LoginMethod, email: &str, remote: SocketAddr) {
        let (counter, name) = match method {
            LoginMethod::Basic => (&self.failures_basic, "basic"),
            LoginMethod::Local => (&self.failures_local, "local"),
        };
        counter.fetch_add(1, Relaxed);
        tracing::warn!(
            target: AUDIT,
            event = "api-login-failure",
            method = name,
            user = %email,
            %remote,
            "An API login failed."
        );
    }

    /// Appends this instance's authentication counters to `/metrics` text.
    pub fn render_metrics(&self, out: &mut String) {
        let name = "mediary_api_auth_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed management API logins (wrong password or unknown user), by method: \
             basic (HTTP Basic) or local (POST /authenticate/local)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(
            out,
            "{name}{{method=\"basic\"}} {}",
            self.failures_basic.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{method=\"local\"}} {}",
            self.failures_local.load(Relaxed)
        );
    }
}

/// A fresh session id: 256 bits from the operating system, base64url without padding.
fn new_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key of session `id`: only its digest is stored.
fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A digest of a password hash, to tell whether the password changed since a session began.
fn password_digest(hash: &str) -> String {
    hex::encode(&Sha256::digest(hash.as_bytes())[..16])
}

/// The value of the session cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Refuses a state-changing request authenticated by the cookie alone unless it shows it came from
/// a script of the API's own site (see the module documentation).
pub fn check_csrf(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json || headers.contains_key("x-requested-with") {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        reason: "A request that changes something with a session cookie must send \
                 `Content-Type: application/json` or an `X-Requested-With` header (a guard \
                 against cross-site request forgery)."
            .into(),
        permission: None,
    })
}

impl Api {
    /// Who the request is from: a live session cookie, else HTTP Basic. 401 when neither works.
    pub(super) async fn principal(
        &self,
        headers: &HeaderMap,
        remote: SocketAddr,
    ) -> Result<Principal, ApiError> {
        let cookie = session_cookie(headers);
        if let Some(id) = cookie
            && let Some(principal) = self.session_principal(id).await?
        {
            return Ok(principal);
        }
        if cookie.is_some() && !headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::Unauthorized(SESSION_ENDED));
        }
        let credentials = Credentials::from_headers(headers)?;
        let email = credentials.email.clone();
        let email = match self.auth.check(credentials).await {
            Ok(email) => email,
            Err(error @ ApiError::Unauthorized(_)) => {
                self.sessions.failed(LoginMethod::Basic, &email, remote);
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        // The user was just found; if it is deleted in between, its roles are none.
        let user = self.shared.store.get(Collection::Users, &email).await?;
        Ok(Principal {
            roles: Roles::from_groups(user.as_ref().and_then(|u| u.get("groups"))),
            email,
            via: Via::Basic,
        })
    }

    /// The principal of live session `id`, when its user still exists with the same password.
    async fn session_principal(&self, id: &str) -> Result<Option<Principal>, ApiError> {
        let Some(stored) = self.sessions.find(id).await? else {
            return Ok(None);
        };
        let user = self
            .shared
            .store
            .get(Collection::Users, &stored.email)
            .await?;
        let Some(user) = user else {
            return Ok(None);
        };
        let hash = user.get("passwordHash").and_then(Value::as_str);
        if hash.map(password_digest).as_deref() != Some(stored.password.as_str()) {
            return Ok(None);
        }
        Ok(Some(Principal {
            roles: Roles::from_groups(user.get("groups")),
            email: stored.email,
            via: Via::Session,
        }))
    }
}

/// `POST /authenticate/local` `{"username": <email>, "password": …}`: 200 with the user (no secrets)
/// and a session cookie; 401 for a wrong password or an unknown user, after the same work.
pub async fn login(
    api: &Api,
    headers: &HeaderMap,
    body: Value,
    remote: SocketAddr,
) -> Result<Reply, ApiError> {
    check_csrf(&Method::POST, headers)?;
    let mut errors = FieldErrors::default();
    let mut f = Fields::new("", &body, &mut errors);
    let username: Option<String> = f.required("username");
    let password: Option<String> = f.required("password");
    f.finish();
    let (Some(username), Some(password), true) = (username, password, errors.is_empty()) else {
        return Err(ApiError::Invalid {
            what: "login",
            errors: errors.0,
        });
    };
    let credentials = Credentials {
        email: username.to_lowercase(),
        password,
    };
    let email = match api.auth.check(credentials).await {
        Ok(email) => email,
        Err(ApiError::Unauthorized(_)) => {
            api.sessions
                .failed(LoginMethod::Local, &username.to_lowercase(), remote);
            return Err(ApiError::Unauthorized(LOGIN_REJECTED));
        }
        Err(error) => return Err(error),
    };
    let user = api
        .shared
        .store
        .get(Collection::Users, &email)
        .await?
        .ok_or(ApiError::Unauthorized(LOGIN_REJECTED))?;
    let hash = user
        .get("passwordHash")
        .and_then(Value::as_str)
        .unwrap_or("");
    let id = api.sessions.open(&email, hash).await?;
    tracing::info!(
        target: AUDIT,
        event = "api-login",
        method = "local",
        user = %email,
        %remote,
        "An API user logged in."
    );
    let mut reply = json_reply(StatusCode::OK, &users::shown(user));
    reply
        .headers_mut()
        .insert(header::SET_COOKIE, api.sessions.cookie(&id));
    Ok(reply)
}

/// `GET /logout`: ends the request's session, if any, and clears the cookie. Always 200, so that a
/// console can log out of a session that already expired.
pub async fn logout(api: &Api, headers: &HeaderMap) -> Result<Reply, ApiError> {
    if let Some(id) = session_cookie(headers) {
        api.sessions.close(id).await?;
    }
    let mut reply = json_reply(StatusCode::OK, &json!({"message": "Logged out."}));
    reply
        .headers_mut()
        .insert(header::SET_COOKIE, api.sessions.removal());
    Ok(reply)
}

/// `GET /me`: the authenticated user (no secrets).
pub async fn me(api: &Api, principal: &Principal) -> Result<Reply, ApiError> {
    let user = api
        .shared
        .store
        .get(Collection::Users, &principal.email)
        .await?
        .ok_or(ApiError::Unauthorized(SESSION_ENDED))?;
    Ok(json_reply(StatusCode::OK, &users::shown(user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_random_and_only_their_digest_is_stored() {
        let id = new_id();
        assert_eq!(id.len(), 43);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(id, new_id());
        assert_eq!(key(&id).len(), 64);
        assert!(!key(&id).contains(&id));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(session_cookie(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=y;  mediary.sid=abc ; z=1"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        let mut empty = HeaderMap::new();
        empty.insert(header::COOKIE, HeaderValue::from_static("mediary.sid="));
        assert_eq!(session_cookie(&empty), None);
    }

    #[test]
    fn state_changes_by_cookie_need_a_script_header() {
        let mut headers = HeaderMap::new();
        assert!(check_csrf(&Method::GET, &headers).is_ok());
        let error = check_csrf(&Method::POST, &headers).unwrap_err();
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(check_csrf(&Method::DELETE, &headers).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(check_csrf(&Method::PUT, &headers).is_ok());
        let mut xhr = HeaderMap::new();
        xhr.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(check_csrf(&Method::POST, &xhr).is_ok());
    }

    #[tokio::test]
    async fn cookies_carry_the_configured_attributes() {
        let f = crate::api::testing::api("[api]\nsession_ttl = \"30m\"\n");
        let cookie = f.api.sessions.cookie("abc");
        assert_eq!(
            cookie,
            "mediary.sid=abc; Path=/; Max-Age=1800; HttpOnly; SameSite=Strict; Secure"
        );
        let plain = crate::api::testing::api("[api]\nsession_cookie_secure = false\n");
        assert_eq!(
            plain.api.sessions.removal(),
            "mediary.sid=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }

    #[tokio::test]
    async fn sessions_end_when_the_password_changes() {
        let f = crate::api::testing::api("");
        let store = &f.api.shared.store;
        store
            .put(
                Collection::Users,
                "a@example.org",
                json!({"email": "a@example.org", "groups": ["operator"], "passwordHash": "h1"}),
            )
            .await
            .unwrap();
        let id = f.api.sessions.open("a@example.org", "h1").await.unwrap();
        let principal = f
            .api
            .session_principal(&id)
            .await
            .unwrap()
            .expect("a session");
        assert_eq!(principal.email, "a@example.org");
        assert_eq!(principal.via, Via::Session);
        assert!(f.api.session_principal("forged").await.unwrap().is_none());
        store
            .put(
                Collection::Users,
                "a@example.org",
                json!({"email": "a@example.org", "passwordHash": "h2"}),
            )
            .await
            .unwrap();
        assert!(f.api.session_principal(&id).await.unwrap().is_none());
        f.api.sessions.close(&id).await.unwrap();
        assert!(f.api.sessions.find(&id).await.unwrap().is_none());
    }
}
