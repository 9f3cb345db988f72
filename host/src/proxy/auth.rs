//! Phase 3 of a request, **admit**: who the client is (authentication) and whether the matched
//! channel serves it (authorisation), as OpenHIM decides both.
//!
//! Authentication tries, in OpenHIM's order, each mechanism `[auth]` enables: JWT
//! (`Authorization: Bearer`, verified by the [`BearerVerifier`] installed with
//! [`ClientAuth::set_bearer_verifier`]), custom token (`Authorization: Custom <token>`), basic
//! (`clientID:password`), then a verified client certificate ([`PeerIdentity`], put in the request's
//! extensions by the TLS listener). The first that identifies a client wins. A failure is not an
//! error, as in OpenHIM: the request goes on anonymous, and authorisation decides. Every failure is
//! an audit event (`target: "mediary::audit"`) and is counted in `mediary_auth_failures_total`.
//!
//! Authorisation: the client's address must be in the channel's `whitelist` (when it has one), and
//! the channel must be public or `allow` one of the client's roles or its clientID. Otherwise 401,
//! with `WWW-Authenticate: Basic` when basic authentication is enabled. Only the matched channel
//! decides: a lower-priority channel is never tried instead.
//!
//! Passwords are checked with [`crate::password`]: argon2 on the blocking pool, a bounded number at
//! once, and an unknown clientID checked against a dummy hash so that it costs what a wrong
//! password costs. A success is remembered for `auth.cache_ttl`, keyed by SHA-256 of the
//! credentials, for as long as the client's stored password is the one it was checked against, so
//! a keep-alive client pays argon2 once. A password imported from OpenHIM (salted SHA or bcrypt) is
//! re-hashed to argon2id after its first successful check.
//!
//! **Backoff.** After `auth.backoff_after` failures within `auth.backoff_window` from one clientID,
//! or from one address (an IPv6 address counts as its /64, which one host usually owns whole),
//! further attempts with credentials on a private channel are answered **429** with `Retry-After`,
//! unchecked, for
//! `auth.backoff_initial`, doubling with each further failure up to `auth.backoff_max`. 429 rather
//! than 401: a 401 tells a legitimate client its credentials are wrong, which they may not be; 429
//! says what is happening and when to come back, and costs no argon2. It reveals nothing about
//! whether a clientID exists, since unknown ones back off alike. A check remembered as successful
//! is honoured even while backing off, so that an attacker hammering a clientID cannot lock out its
//! owner's open connections. A public channel serves anyone, so there credentials are checked
//! only to identify the client: their failures feed no backoff (they may be meant for the
//! upstream), and while backing off they are not checked at all.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

use crate::channel::{AuthType, Channel};
use crate::client::{Client, ClientDirectory, StoredPassword, token_hash};
use crate::config::auth::{Auth, CertLookup};
use crate::config::fields::FieldErrors;
use crate::metrics::AuthMetrics;
use crate::password::{PasswordChecker, RememberedChecks, credentials_key, hash_password};
use crate::store::{Collection, Store};
use crate::tls::PeerIdentity;

/// Verifies a bearer token (a JWT) and says whose it is. Implemented by the JWT module; until one
/// is installed, `Authorization: Bearer` authenticates nobody.
pub trait BearerVerifier: Send + Sync + fmt::Debug {
    /// The token's verified subject (a clientID), or why the token is refused (for the audit log;
    /// never containing the token).
    fn verify(&self, token: &str) -> Result<String, String>;
}

/// A way of authenticating, as named in metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Jwt,
    CustomToken,
    Basic,
    MutualTls,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Jwt => "jwt",
            Mechanism::CustomToken => "custom-token",
            Mechanism::Basic => "basic",
            Mechanism::MutualTls => "mutual-tls",
        }
    }
}

/// Who the request comes from, as far as authentication could tell.
#[derive(Debug, Clone)]
pub enum Identity {
    Client(Arc<Client>, Mechanism),
    Anonymous,
}

/// A request refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The channel does not admit the client: 401 (with a challenge when basic is enabled).
    Unauthorized,
    /// The clientID or address is backing off: 429 with `Retry-After`.
    Backoff(Duration),
}

/// A remembered successful password check.
#[derive(Debug, Clone)]
struct Remembered {
    client_id: String,
    /// [`StoredPassword::version`] of the password it was checked against.
    version: [u8; 32],
}

/// Authenticates proxy clients; one per process, shared by every worker.
pub struct ClientAuth {
    config: Auth,
    checker: Arc<PasswordChecker>,
    remembered: RememberedChecks<Remembered>,
    backoff: Backoff,
    bearer: OnceLock<Arc<dyn BearerVerifier>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where re-hashed passwords are written.
    store: Arc<dyn Store>,
    /// `WWW-Authenticate` on a 401, when basic authentication is enabled.
    challenge: Option<HeaderValue>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The fields of one audit event.
struct Audit<'a> {
    mechanism: &'static str,
    client_id: Option<&'a str>,
    ip: IpAddr,
    channel: &'a str,
    reason: &'static str,
}

impl ClientAuth {
    pub fn new(
        config: Auth,
        store: Arc<dyn Store>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> ClientAuth {
        let challenge = config
            .basic
            .then(|| HeaderValue::from_str(&format!("Basic realm=\"{}\"", config.realm)).ok())
            .flatten();
        ClientAuth {
            checker: Arc::new(PasswordChecker::new(config.concurrent_hashes)),
            remembered: RememberedChecks::new(config.cache_capacity),
            backoff: Backoff::new(&config),
            bearer: OnceLock::new(),
            metrics,
            store,
            challenge,
            config,
        }
    }

    /// Installs the JWT verifier (once; later calls are ignored and say so).
    pub fn set_bearer_verifier(&self, verifier: Arc<dyn BearerVerifier>) -> bool {
        self.bearer.set(verifier).is_ok()
    }

    /// Computes the dummy hash ahead of the first unknown clientID.
    pub async fn prepare(&self) {
        self.checker.prepare().await;
    }

    /// The `WWW-Authenticate` value of a 401 (`None` when basic authentication is disabled).
    pub fn challenge(&self) -> Option<&HeaderValue> {
        self.challenge.as_ref()
    }

    fn metrics(&self) -> &AuthMetrics {
        &self.metrics.auth
    }

    /// Authenticates, then authorises, a request matched to `channel`.
    pub async fn admit(
        &self,
        clients: &ClientDirectory,
        channel: &Channel,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        ip: IpAddr,
    ) -> Result<Identity, Refusal> {
        let lenient = channel.auth_type == AuthType::Public;
        let identity = self
            .identify(clients, &channel.name, headers, peer, ip, lenient)
            .await?;
        let client = match &identity {
            Identity::Client(client, _) => Some(client.as_ref()),
            Identity::Anonymous => None,
        };
        if let Err(reason) = authorise(channel, client, ip) {
            self.metrics().failure("none", reason);
            tracing::warn!(
                target: "mediary::audit",
                outcome = "denied",
                client_id = client.map(|c| c.client_id.as_str()),
                client_ip = %ip,
                channel = %channel.name,
                reason,
                "The channel refused the client."
            );
            return Err(Refusal::Unauthorized);
        }
        Ok(identity)
    }

    /// Who the request comes from, for a private channel. `Err` only when backing off.
    pub async fn authenticate(
        &self,
        clients: &ClientDirectory,
        channel: &str,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        ip: IpAddr,
    ) -> Result<Identity, Refusal> {
        self.identify(clients, channel, headers, peer, ip, false)
            .await
    }

    /// Who the request comes from. `lenient` for a public channel, which serves the request
    /// whoever sent it: credentials there may well be meant for the upstream (a route with
    /// `forwardAuthHeader`), so failing them neither feeds backoff nor, while backing off, gets a
    /// 429; they are just not checked then.
    async fn identify(
        &self,
        clients: &ClientDirectory,
        channel: &str,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        ip: IpAddr,
        lenient: bool,
    ) -> Result<Identity, Refusal> {
        if let Some((scheme, value)) = authorization(headers) {
            let found = if scheme.eq_ignore_ascii_case("bearer") && self.config.jwt {
                self.bearer(clients, channel, value, ip)
            } else if scheme.eq_ignore_ascii_case("custom") && self.config.custom_token {
                self.custom_token(clients, channel, value, ip, lenient)?
            } else if scheme.eq_ignore_ascii_case("basic") && self.config.basic {
                self.basic(clients, channel, value, ip, lenient).await?
            } else {
                None
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        if self.config.mutual_tls
            && let Some(peer) = peer
        {
            let client = match self.config.mutual_tls_lookup {
                CertLookup::Strict => {
                    clients.by_certificate(&peer.fingerprint_sha256, &peer.fingerprint_sha1)
                }
                // OpenHIM's in-chain looks for the certificate itself first, then walks up.
                CertLookup::InChain => clients
                    .by_certificate(&peer.fingerprint_sha256, &peer.fingerprint_sha1)
                    .or_else(|| clients.by_issuer(&peer.issuers_sha256, &peer.issuers_sha1)),
            };
            match client {
                Some(client) => {
                    return Ok(Identity::Client(Arc::clone(client), Mechanism::MutualTls));
                }
                None => self.failed(Audit {
                    mechanism: Mechanism::MutualTls.name(),
                    client_id: None,
                    ip,
                    channel,
                    reason: "unknown-certificate",
                }),
            }
        }
        Ok(Identity::Anonymous)
    }

    fn bearer(
        &self,
        clients: &ClientDirectory,
        channel: &str,
        token: &str,
        ip: IpAddr,
    ) -> Option<Identity> {
        let verifier = self.bearer.get()?;
        let (client_id, reason) = match verifier.verify(token) {
            Ok(subject) => match clients.by_client_id(&subject) {
                Some(client) => {
                    return Some(Identity::Client(Arc::clone(client), Mechanism::Jwt));
                }
                None => (Some(subject), "unknown-client"),
            },
            Err(why) => {
                tracing::debug!(client_ip = %ip, %why, "Bearer token refused.");
                (None, "invalid-token")
            }
        };
        self.failed(Audit {
            mechanism: Mechanism::Jwt.name(),
            client_id: client_id.as_deref(),
            ip,
            channel,
            reason,
        });
        None
    }

    fn custom_token(
        &self,
        clients: &ClientDirectory,
        channel: &str,
        token: &str,
        ip: IpAddr,
        lenient: bool,
    ) -> Result<Option<Identity>, Refusal> {
        let hash = token_hash(token.trim());
        if let Some(client) = clients.by_token_hash(&hash) {
            return Ok(Some(Identity::Client(
                Arc::clone(client),
                Mechanism::CustomToken,
            )));
        }
        // Checked after the lookup: a valid token costs nothing to check, so backing off would
        // only lock its owner out.
        if self.backing_off(None, ip, Mechanism::CustomToken, channel, lenient)? {
            return Ok(None);
        }
        self.failed(Audit {
            mechanism: Mechanism::CustomToken.name(),
            client_id: None,
            ip,
            channel,
            reason: "unknown-token",
        });
        if !lenient {
            self.backoff.failed(None, ip);
        }
        Ok(None)
    }

    async fn basic(
        &self,
        clients: &ClientDirectory,
        channel: &str,
        encoded: &str,
        ip: IpAddr,
        lenient: bool,
    ) -> Result<Option<Identity>, Refusal> {
        let Some((client_id, password)) = decode_basic(encoded) else {
            self.failed(Audit {
                mechanism: Mechanism::Basic.name(),
                client_id: None,
                ip,
                channel,
                reason: "malformed",
            });
            return Ok(None);
        };
        let key = credentials_key(&client_id, &password);
        let client = clients.by_client_id(&client_id);
        // A remembered success, for the password still stored.
        if let Some(remembered) = self.remembered.get(&key) {
            let current = client.and_then(|c| c.password.as_ref().map(StoredPassword::version));
            match client {
                Some(client)
                    if remembered.client_id == client_id && current == Some(remembered.version) =>
                {
                    return Ok(Some(Identity::Client(Arc::clone(client), Mechanism::Basic)));
                }
                _ => self.remembered.remove(&key),
            }
        }
        if self.backing_off(Some(&client_id), ip, Mechanism::Basic, channel, lenient)? {
            return Ok(None);
        }
        let stored = client.and_then(|c| c.password.clone());
        let verified = match &stored {
            Some(stored) => {
                let (stored, password) = (stored.clone(), password.clone());
                self.checker.run(move || Ok(stored.verify(&password))).await
            }
            // Unknown client, or one without a password: spend what a wrong password costs.
            None => self
                .checker
                .verify_dummy(password.clone())
                .await
                .map(|_| false),
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(error) => {
                tracing::error!(%error, "A client's password could not be checked; treating it as wrong.");
                false
            }
        };
        match (client, stored, verified) {
            (Some(client), Some(stored), true) => {
                self.backoff.succeeded(&client_id);
                self.remembered.insert(
                    key,
                    Remembered {
                        client_id,
                        version: stored.version(),
                    },
                    Instant::now() + self.config.cache_ttl,
                );
                if stored.needs_rehash() {
                    self.rehash(Arc::clone(client), stored, password);
                }
                Ok(Some(Identity::Client(Arc::clone(client), Mechanism::Basic)))
            }
            (client, _, _) => {
                self.failed(Audit {
                    mechanism: Mechanism::Basic.name(),
                    client_id: Some(&client_id),
                    ip,
                    channel,
                    reason: if client.is_some() {
                        "wrong-password"
                    } else {
                        "unknown-client"
                    },
                });
                if !lenient {
                    self.backoff.failed(Some(&client_id), ip);
                }
                Ok(None)
            }
        }
    }

    /// Whether `client_id` or `ip` is backing off: `Err` (429) on a private channel; `Ok(true)`
    /// on a public one, where the attempt is then not checked (and the request goes on anonymous).
    fn backing_off(
        &self,
        client_id: Option<&str>,
        ip: IpAddr,
        mechanism: Mechanism,
        channel: &str,
        lenient: bool,
    ) -> Result<bool, Refusal> {
        let Some(wait) = self.backoff.blocked(client_id, ip) else {
            return Ok(false);
        };
        self.metrics()
            .backoff
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            target: "mediary::audit",
            outcome = "backoff",
            mechanism = mechanism.name(),
            client_id,
            client_ip = %ip,
            channel,
            reason = "too-many-failures",
            retry_after_ms = wait.as_millis() as u64,
            "Authentication refused unchecked after repeated failures."
        );
        if lenient {
            Ok(true)
        } else {
            Err(Refusal::Backoff(wait))
        }
    }

    fn failed(&self, audit: Audit<'_>) {
        self.metrics().failure(audit.mechanism, audit.reason);
        tracing::warn!(
            target: "mediary::audit",
            outcome = "failure",
            mechanism = audit.mechanism,
            client_id = audit.client_id,
            client_ip = %audit.ip,
            channel = audit.channel,
            reason = audit.reason,
            "Client authentication failed."
        );
    }

    /// Replaces an imported password hash by an argon2id one, in the background: the request that
    /// proved the password does not wait. The write happens only if the stored password is still
    /// the one just checked, so a change made meanwhile is never overwritten.
    fn rehash(&self, client: Arc<Client>, checked: StoredPassword, password: String) {
        let store = Arc::clone(&self.store);
        let checker = Arc::clone(&self.checker);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let result = async {
                let phc = checker
                    .run(move || hash_password(&password))
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(document) = store
                    .get(Collection::Clients, &client.id)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(false);
                };
                let mut errors = FieldErrors::default();
                let Some(mut stored) = Client::parse(String::new(), &document, &mut errors) else {
                    return Err("the stored client no longer parses".to_owned());
                };
                if stored.password.as_ref() != Some(&checked) {
                    return Ok(false);
                }
                stored.id = client.id.clone();
                stored.password = Some(StoredPassword::Argon2(phc));
                let mut updated = stored.document();
                if let (Value::Object(new), Value::Object(old)) = (&mut updated, &document) {
                    // Keep what this version does not model (`__v`), as it was.
                    for (k, v) in old {
                        if !new.contains_key(k) && !k.starts_with("password") {
                            new.insert(k.clone(), v.clone());
                        }
                    }
                }
                store
                    .put(Collection::Clients, &client.id, updated)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(true)
            }
            .await;
            match result {
                Ok(true) => {
                    tracing::info!(client_id = %client.client_id, "Re-hashed an imported client password with argon2id.");
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(client_id = %client.client_id, %error, "Could not re-hash an imported client password; it is tried again at the next login.");
                }
            }
        });
    }
}

/// Whether `channel` serves `client` from `ip`; the error is the reason, for the audit log.
pub fn authorise(
    channel: &Channel,
    client: Option<&Client>,
    ip: IpAddr,
) -> Result<(), &'static str> {
    if !channel.whitelist.is_empty() && !channel.whitelist.iter().any(|r| r.contains(ip)) {
        return Err("not-whitelisted");
    }
    if channel.auth_type == AuthType::Public {
        return Ok(());
    }
    let Some(client) = client else {
        return Err("unauthenticated");
    };
    let allowed = channel
        .allow
        .iter()
        .any(|a| *a == client.client_id || client.roles.iter().any(|r| r == a));
    if allowed { Ok(()) } else { Err("not-allowed") }
}

/// The `Authorization` header's scheme and the rest.
fn authorization(headers: &HeaderMap) -> Option<(&str, &str)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    Some(value.split_once(' ').unwrap_or((value, "")))
}

/// Standard base64, padded or not: clients differ.
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `clientID` and password of Basic credentials (a password may contain `:`, a clientID not).
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = BASE64_LENIENT.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, password) = text.split_once(':')?;
    (!id.is_empty()).then(|| (id.to_owned(), password.to_owned()))
}

/// One clientID's or address's recent failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts by clientID and by address, bounded.
#[derive(Debug)]
struct Backoff {
    by_client: Mutex<HashMap<String, Failures>>,
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
    after: u32,
    window: Duration,
    initial: Duration,
    max: Duration,
    capacity: usize,
}

impl Backoff {
    fn new(config: &Auth) -> Backoff {
        Backoff {
            by_client: Mutex::default(),
            by_ip: Mutex::default(),
            after: config.backoff_after,
            window: config.backoff_window,
            initial: config.backoff_initial,
            max: config.backoff_max,
            capacity: config.backoff_capacity,
        }
    }

    /// How long attempts for `client_id` or from `ip` are still refused.
    fn blocked(&self, client_id: Option<&str>, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let remaining = |f: Option<&Failures>| {
            f.and_then(|f| f.blocked_until)
                .and_then(|until| until.checked_duration_since(now))
                .filter(|d| !d.is_zero())
        };
        let by_ip = remaining(lock(&self.by_ip).get(&backoff_ip(ip)));
        let by_client = client_id.and_then(|id| remaining(lock(&self.by_client).get(id)));
        by_ip.max(by_client)
    }

    fn failed(&self, client_id: Option<&str>, ip: IpAddr) {
        let now = Instant::now();
        self.count(&mut lock(&self.by_ip), backoff_ip(ip), now);
        if let Some(id) = client_id {
            // Bounded: a clientID is at most 128 characters by the time it is stored, but anything
            // can be claimed; long claims are cut, which only merges attackers' counts.
            let id: String = id.chars().take(128).collect();
            self.count(&mut lock(&self.by_client), id, now);
        }
    }

    fn succeeded(&self, client_id: &str) {
        lock(&self.by_client).remove(client_id);
    }

    fn count<K: std::hash::Hash + Eq>(
        &self,
        table: &mut HashMap<K, Failures>,
        key: K,
        now: Instant,
    ) {
        if table.len() >= self.capacity && !table.contains_key(&key) {
            // Forget what no longer matters; if that is not enough, what is not blocking now.
            let window = self.window;
            table.retain(|_, f| {
                now.duration_since(f.last) < window || f.blocked_until.is_some_and(|u| u > now)
            });
            if table.len() >= self.capacity {
                table.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
            }
            if table.len() >= self.capacity {
                table.clear();
            }
        }
        let entry = table.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(entry.last) > self.window {
            entry.count = 0;
            entry.blocked_until = None;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if entry.count >= self.after {
            let doublings = (entry.count - self.after).min(32);
            let wait = self
                .initial
                .checked_mul(1u32 << doublings.min(31))
                .unwrap_or(self.max)
                .min(self.max);
            entry.blocked_until = Some(now + wait);
        }
    }
}

/// The address failures are counted under: IPv6 by its /64.
fn backoff_ip(ip: IpAddr) -> IpAddr {
    match crate::proxy::headers::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channel(extra: Value) -> Channel {
        let mut doc = json!({"name": "c", "urlPattern": "^/", "methods": ["GET"],
            "routes": [{"name": "r", "host": "127.0.0.1", "port": 9, "primary": true}]});
        doc.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut errors = FieldErrors::default();
        Channel::parse(String::new(), &doc, &mut errors).expect("valid channel")
    }

    fn client(id: &str, roles: &[&str], password: Option<&str>) -> Client {
        let mut doc =
            json!({"_id": format!("id-{id}"), "clientID": id, "name": id, "roles": roles});
        if let Some(p) = password {
            doc["passwordHash"] = json!(hash_password(p).unwrap());
        }
        let mut errors = FieldErrors::default();
        Client::parse(String::new(), &doc, &mut errors).expect("valid client")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn authorisation_follows_openhim() {
        let a = client("a", &["fhir"], None);
        let b = client("b", &["other"], None);
        let private = channel(json!({"authType": "private", "allow": ["fhir", "b-not"]}));
        assert_eq!(authorise(&private, Some(&a), ip("1.2.3.4")), Ok(()));
        assert_eq!(
            authorise(&private, Some(&b), ip("1.2.3.4")),
            Err("not-allowed")
        );
        assert_eq!(
            authorise(&private, None, ip("1.2.3.4")),
            Err("unauthenticated")
        );
        let by_id = channel(json!({"authType": "private", "allow": ["b"]}));
        assert_eq!(authorise(&by_id, Some(&b), ip("1.2.3.4")), Ok(()));
        let public = channel(json!({"authType": "public", "whitelist": ["10.0.0.0/8"]}));
        assert_eq!(authorise(&public, None, ip("10.9.9.9")), Ok(()));
        assert_eq!(
            authorise(&public, Some(&a), ip("11.0.0.1")),
            Err("not-whitelisted")
        );
        let both = channel(json!({"authType": "private", "allow": ["fhir"], "whitelist": ["::1"]}));
        assert_eq!(authorise(&both, Some(&a), ip("::1")), Ok(()));
        assert_eq!(
            authorise(&both, Some(&a), ip("127.0.0.1")),
            Err("not-whitelisted")
        );
    }

    #[test]
    fn basic_credentials_decode() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_basic(&enc("c:pa:ss")),
            Some(("c".to_owned(), "pa:ss".to_owned()))
        );
        assert_eq!(decode_basic(&enc(":x")), None);
        assert_eq!(decode_basic(&enc("nocolon")), None);
        assert_eq!(decode_basic("!!!"), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let config = Auth {
            backoff_after: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            backoff_capacity: 4,
            ..Auth::default()
        };
        let b = Backoff::new(&config);
        let here = ip("10.0.0.1");
        for _ in 0..2 {
            b.failed(Some("c"), here);
        }
        assert!(b.blocked(Some("c"), here).is_none());
        b.failed(Some("c"), here);
        let first = b
            .blocked(Some("c"), ip("10.0.0.2"))
            .expect("the clientID backs off");
        assert!(first <= Duration::from_secs(1));
        assert!(b.blocked(Some("d"), here).is_some(), "so does the address");
        assert!(b.blocked(Some("d"), ip("10.0.0.2")).is_none());
        for _ in 0..5 {
            b.failed(Some("c"), here);
        }
        let capped = b.blocked(Some("c"), here).unwrap();
        assert!(capped > Duration::from_secs(3) && capped <= Duration::from_secs(4));
        b.succeeded("c");
        assert!(b.blocked(Some("c"), ip("10.0.0.2")).is_none());
        for i in 0..100u8 {
            b.failed(Some(&format!("x{i}")), IpAddr::from([10, 1, 0, i]));
        }
        assert!(lock(&b.by_client).len() <= 4 && lock(&b.by_ip).len() <= 4);
        // One IPv6 host's /64 counts as one address.
        assert_eq!(
            backoff_ip(ip("2001:db8::1")),
            backoff_ip(ip("2001:db8::ffff"))
        );
    }

    fn auth(config: Auth) -> (ClientAuth, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        std::mem::forget(dir);
        (
            ClientAuth::new(config, Arc::clone(&store), Arc::default()),
            store,
        )
    }

    fn basic_headers(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn basic_authenticates_remembers_and_backs_off() {
        let (auth, _store) = auth(Auth {
            backoff_after: 2,
            ..Auth::default()
        });
        let dir = ClientDirectory::new([client("a", &["r"], Some("pw"))]);
        let here = ip("10.0.0.1");
        let ok = auth
            .authenticate(&dir, "c", &basic_headers("a:pw"), None, here)
            .await
            .unwrap();
        assert!(matches!(ok, Identity::Client(c, Mechanism::Basic) if c.client_id == "a"));
        assert_eq!(auth.remembered.len(), 1);
        let wrong = auth
            .authenticate(&dir, "c", &basic_headers("a:nope"), None, here)
            .await
            .unwrap();
        assert!(matches!(wrong, Identity::Anonymous));
        let unknown = auth
            .authenticate(&dir, "c", &basic_headers("zz:pw"), None, here)
            .await
            .unwrap();
        assert!(matches!(unknown, Identity::Anonymous));
        assert_eq!(auth.metrics.auth.failures("basic", "wrong-password"), 1);
        assert_eq!(auth.metrics.auth.failures("basic", "unknown-client"), 1);
        // Two failures from this address: it backs off, but the remembered success still counts.
        let refused = auth
            .authenticate(&dir, "c", &basic_headers("a:nope"), None, here)
            .await;
        assert!(matches!(refused, Err(Refusal::Backoff(_))), "{refused:?}");
        assert!(
            auth.authenticate(&dir, "c", &basic_headers("a:pw"), None, here)
                .await
                .is_ok()
        );
        // A changed password ends the remembered check.
        let changed = ClientDirectory::new([client("a", &["r"], Some("pw2"))]);
        let stale = auth
            .authenticate(&changed, "c", &basic_headers("a:pw"), None, ip("10.0.0.9"))
            .await
            .unwrap();
        assert!(matches!(stale, Identity::Anonymous));
    }

    #[tokio::test]
    async fn public_channels_do_not_back_off() {
        let (auth, _store) = auth(Auth {
            backoff_after: 1,
            ..Auth::default()
        });
        let dir = ClientDirectory::new([client("a", &["r"], Some("pw"))]);
        let open = channel(json!({"authType": "public"}));
        let here = ip("10.0.0.1");
        for _ in 0..3 {
            let served = auth
                .admit(&dir, &open, &basic_headers("a:upstream-secret"), None, here)
                .await;
            assert!(matches!(served, Ok(Identity::Anonymous)), "{served:?}");
        }
        let private = channel(json!({"authType": "private", "allow": ["r"]}));
        let ok = auth
            .admit(&dir, &private, &basic_headers("a:pw"), None, here)
            .await;
        assert!(matches!(ok, Ok(Identity::Client(..))), "{ok:?}");
    }

    #[tokio::test]
    async fn imported_passwords_are_rehashed() {
        use sha2::{Digest as _, Sha512};
        let (auth, store) = auth(Auth::default());
        let salt = "salt-1";
        let hash = hex::encode(Sha512::digest(format!("pw{salt}").as_bytes()));
        let doc = json!({"_id": "id-1", "clientID": "old", "name": "Old", "roles": [],
            "passwordAlgorithm": "sha512", "passwordHash": hash, "passwordSalt": salt, "__v": 0});
        store.put(Collection::Clients, "id-1", doc).await.unwrap();
        let dir = ClientDirectory::load(&*store).await.unwrap();
        let ok = auth
            .authenticate(&dir, "c", &basic_headers("old:pw"), None, ip("10.0.0.1"))
            .await
            .unwrap();
        assert!(matches!(ok, Identity::Client(..)));
        let mut stored = Value::Null;
        for _ in 0..200 {
            stored = store
                .get(Collection::Clients, "id-1")
                .await
                .unwrap()
                .unwrap();
            if stored["passwordAlgorithm"] == "argon2id" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stored["passwordAlgorithm"], "argon2id", "{stored}");
        assert!(stored.get("passwordSalt").is_none());
        assert_eq!(stored["__v"], 0);
        let dir = ClientDirectory::load(&*store).await.unwrap();
        let again = auth
            .authenticate(&dir, "c", &basic_headers("old:pw"), None, ip("10.0.0.1"))
            .await
            .unwrap();
        assert!(matches!(again, Identity::Client(..)));
    }

    #[derive(Debug)]
    struct Fixed;
    impl BearerVerifier for Fixed {
        fn verify(&self, token: &str) -> Result<String, String> {
            token
                .strip_prefix("good-")
                .map(str::to_owned)
                .ok_or_else(|| "bad".to_owned())
        }
    }

    #[tokio::test]
    async fn tokens_certificates_and_bearers() {
        let (auth, _) = auth(Auth {
            custom_token: true,
            jwt: true,
            ..Auth::default()
        });
        let mut doc = json!({"clientID": "t", "name": "T", "roles": [],
            "customTokenHash": hex::encode(token_hash("tok")),
            "certFingerprint": hex::encode([7u8; 32])});
        doc["_id"] = json!("x");
        let mut errors = FieldErrors::default();
        let dir = ClientDirectory::new([Client::parse(String::new(), &doc, &mut errors).unwrap()]);
        let here = ip("10.0.0.1");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let found = auth
            .authenticate(&dir, "c", &with("Custom tok"), None, here)
            .await
            .unwrap();
        assert!(matches!(found, Identity::Client(_, Mechanism::CustomToken)));
        let wrong = auth
            .authenticate(&dir, "c", &with("Custom nope"), None, here)
            .await
            .unwrap();
        assert!(matches!(wrong, Identity::Anonymous));
        // No verifier yet: a bearer token authenticates nobody.
        let bearer = auth
            .authenticate(&dir, "c", &with("Bearer good-t"), None, here)
            .await
            .unwrap();
        assert!(matches!(bearer, Identity::Anonymous));
        assert!(auth.set_bearer_verifier(Arc::new(Fixed)));
        let bearer = auth
            .authenticate(&dir, "c", &with("Bearer good-t"), None, here)
            .await
            .unwrap();
        assert!(matches!(bearer, Identity::Client(_, Mechanism::Jwt)));
        let peer = PeerIdentity {
            fingerprint_sha256: [7; 32],
            fingerprint_sha1: [0; 20],
            issuers_sha256: vec![],
            issuers_sha1: vec![],
        };
        let cert = auth
            .authenticate(&dir, "c", &HeaderMap::new(), Some(&peer), here)
            .await
            .unwrap();
        assert!(matches!(cert, Identity::Client(_, Mechanism::MutualTls)));
        // A failed header mechanism still lets the certificate speak.
        let both = auth
            .authenticate(&dir, "c", &with("Custom nope"), Some(&peer), here)
            .await
            .unwrap();
        assert!(matches!(both, Identity::Client(_, Mechanism::MutualTls)));
        let stranger = PeerIdentity {
            fingerprint_sha256: [8; 32],
            ..peer
        };
        let none = auth
            .authenticate(&dir, "c", &HeaderMap::new(), Some(&stranger), here)
            .await
            .unwrap();
        assert!(matches!(none, Identity::Anonymous));
    }
}
