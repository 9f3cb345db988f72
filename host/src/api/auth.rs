//! Who may use the management API: API users (documents in [`Collection::Users`], keyed by lowercased
//! email) proving themselves with HTTP Basic, as OpenHIM's mediator libraries do on every call.
//!
//! Passwords are stored as argon2id PHC strings, checked with [`crate::password`] (shared with proxy
//! clients): on tokio's blocking pool, a few at a time, never on the runtime the API shares with
//! other tasks. An unknown user costs the same as a wrong password: the password is checked against
//! a dummy hash instead. A successful check is remembered for a minute, keyed by SHA-256 of
//! `email\0password`, so that a script making many calls pays argon2 once; after any document write
//! the user's stored hash is read again (cheap) before a remembered check counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::error::ApiError;
use crate::Shared;
use crate::password::{CheckError, PasswordChecker, RememberedChecks, credentials_key};
pub use crate::password::{hash_password, random_password};
use crate::store::{Collection, Store};

/// The environment variable that sets the root user's first password.
pub const ROOT_PASSWORD_ENV: &str = "MEDIARY_ROOT_PASSWORD";

/// How long a successful check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// Most remembered checks; past it the expired ones go, then all of them.
const CACHE_CAPACITY: usize = 1024;

const UNAUTHENTICATED: &str =
    "Authentication required: send the email and password of an API user with HTTP Basic.";
const REJECTED: &str = "The email or password is not correct.";

/// Credentials from an `Authorization: Basic …` header.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Lowercased, as user ids are.
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the `Authorization` header. Each way it can be wrong gets its own sentence, none of
    /// which depends on what is stored.
    pub fn from_headers(headers: &HeaderMap) -> Result<Credentials, ApiError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("The Authorization header is not ASCII."))?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(ApiError::Unauthorized(
                "Only HTTP Basic authentication is supported.",
            ));
        }
        let malformed = || {
            ApiError::Unauthorized(
                "The Basic credentials are not base64 of `email:password` in UTF-8.",
            )
        };
        let decoded = BASE64_LENIENT
            .decode(token.trim())
            .map_err(|_| malformed())?;
        let text = String::from_utf8(decoded).map_err(|_| malformed())?;
        // A password may contain `:`; an email may not.
        let (email, password) = text.split_once(':').ok_or_else(malformed)?;
        if email.is_empty() {
            return Err(malformed());
        }
        Ok(Credentials {
            email: email.to_lowercase(),
            password: password.to_owned(),
        })
    }

    fn cache_key(&self) -> [u8; 32] {
        credentials_key(&self.email, &self.password)
    }
}

/// Standard base64, padded or not: clients differ.
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A remembered successful check.
#[derive(Debug, Clone)]
struct Remembered {
    email: String,
    /// The stored hash the password was checked against: if the user's document changes, this tells
    /// whether the password did.
    password_hash: String,
    /// The configuration generation at which the hash was last read.
    generation: u64,
}

/// Checks API credentials; one per API server.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    generation: watch::Receiver<u64>,
    remembered: RememberedChecks<Remembered>,
    /// Hashes on the blocking pool; checks unknown users against a dummy hash.
    checker: PasswordChecker,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Authenticator {
        Authenticator {
            generation: store.subscribe(),
            store,
            remembered: RememberedChecks::new(CACHE_CAPACITY),
            checker: PasswordChecker::default(),
        }
    }

    /// Computes the dummy hash ahead of the first failed login.
    pub async fn prepare(&self) {
        self.checker.prepare().await;
    }

    /// `password` hashed for storing, bounded like the checks (each argon2 run holds ~19 MiB).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.checker.hash(password).await.map_err(internal)
    }

    /// The email of the user the request authenticates as.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        self.check(Credentials::from_headers(headers)?).await
    }

    /// The email of the user whose credentials these are (from Basic or from a console login);
    /// 401 otherwise, after the same work whether the user exists or not.
    pub async fn check(&self, credentials: Credentials) -> Result<String, ApiError> {
        let key = credentials.cache_key();
        // Read before the store, so that a write racing with this check leaves the entry marked as
        // older than the write, and it is looked at again next time.
        let generation = *self.generation.borrow();
        if let Some(email) = self.recall(&key, generation).await? {
            return Ok(email);
        }
        let stored = self.password_hash(&credentials.email).await?;
        let Some(stored) = stored else {
            self.checker
                .verify_dummy(credentials.password)
                .await
                .map_err(internal)?;
            return Err(ApiError::Unauthorized(REJECTED));
        };
        if !self
            .checker
            .verify(credentials.password.clone(), stored.clone())
            .await
            .map_err(internal)?
        {
            return Err(ApiError::Unauthorized(REJECTED));
        }
        self.remembered.insert(
            key,
            Remembered {
                email: credentials.email.clone(),
                password_hash: stored,
                generation,
            },
            Instant::now() + CACHE_TTL,
        );
        Ok(credentials.email)
    }

    /// A remembered check that still holds: not expired, and the user's stored hash unchanged if
    /// documents were written since.
    async fn recall(&self, key: &[u8; 32], generation: u64) -> Result<Option<String>, ApiError> {
        let Some(entry) = self.remembered.get(key) else {
            return Ok(None);
        };
        if entry.generation == generation {
            return Ok(Some(entry.email));
        }
        let current = self.password_hash(&entry.email).await?;
        if current.as_deref() == Some(entry.password_hash.as_str()) {
            self.remembered
                .update(key, |e| e.generation = e.generation.max(generation));
            Ok(Some(entry.email))
        } else {
            self.remembered.remove(key);
            Ok(None)
        }
    }

    /// The stored password hash of user `email`; `None` if there is no such user or it has no
    /// password (a user that cannot log in with Basic).
    async fn password_hash(&self, email: &str) -> Result<Option<String>, ApiError> {
        let user = self.store.get(Collection::Users, email).await?;
        Ok(user
            .as_ref()
            .and_then(|u| u.get("passwordHash"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
}

/// A password check that could not be made is the host's failure.
fn internal(error: CheckError) -> ApiError {
    ApiError::Internal(error.to_string())
}

/// Creates the root user (`api.root_email`, group `admin`) unless a user with that email exists. Its
/// password is `MEDIARY_ROOT_PASSWORD`, else `api.root_password`, else a random one logged once. An
/// existing user is never changed, so a restart cannot reset a password.
pub async fn ensure_root_user(shared: &Shared) -> anyhow::Result<()> {
    let email = shared.config.api.root_email.clone();
    let id = email.to_lowercase();
    if shared.store.get(Collection::Users, &id).await?.is_some() {
        return Ok(());
    }
    let from_env = std::env::var(ROOT_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    // The same rule as `api.root_password` in the config file.
    if from_env.as_ref().is_some_and(|p| p.chars().count() < 8) {
        anyhow::bail!("{ROOT_PASSWORD_ENV} must be at least 8 characters");
    }
    let (password, generated) = match from_env.or_else(|| shared.config.api.root_password.clone()) {
        Some(password) => (password, false),
        None => (random_password(), true),
    };
    let hash = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&password)).await??
    };
    let user = json!({
        "email": email,
        "firstname": "Super",
        "surname": "User",
        "groups": ["admin"],
        "passwordHash": hash,
    });
    // Instances sharing a store may start together: one creates the user, the others find it.
    if !shared.store.create(Collection::Users, &id, user).await? {
        return Ok(());
    }
    if generated {
        tracing::warn!(
            %email,
            %password,
            "Created the root user with a generated password. It is shown only this once: \
             keep it, or set MEDIARY_ROOT_PASSWORD before the first start."
        );
    } else {
        tracing::info!(%email, "Created the root user.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(value).unwrap(),
        );
        map
    }

    fn basic(raw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn basic_credentials_parse() {
        let c = Credentials::from_headers(&headers(&basic("Root@OpenHIM.org:pa:ss"))).unwrap();
        assert_eq!(c.email, "root@openhim.org");
        assert_eq!(c.password, "pa:ss");
        let lower = headers(&basic("a@b:").replacen("Basic", "basic", 1));
        assert_eq!(Credentials::from_headers(&lower).unwrap().password, "");
        let unpadded = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode("a@b:xy")
        );
        assert_eq!(
            Credentials::from_headers(&headers(&unpadded))
                .unwrap()
                .password,
            "xy"
        );
    }

    #[test]
    fn bad_basic_headers_are_401() {
        for bad in [
            "Bearer abc".to_owned(),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            basic("no-colon"),
            basic(":password"),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x'])
            ),
        ] {
            let error = Credentials::from_headers(&headers(&bad)).unwrap_err();
            assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED, "{bad}");
        }
        let missing = Credentials::from_headers(&HeaderMap::new()).unwrap_err();
        assert!(missing.to_string().contains("HTTP Basic"));
    }

    #[test]
    fn cache_keys_separate_email_and_password() {
        let a = Credentials {
            email: "a".into(),
            password: "bc".into(),
        };
        let b = Credentials {
            email: "ab".into(),
            password: "c".into(),
        };
        assert_ne!(a.cache_key(), b.cache_key());
        assert!(!format!("{a:?}").contains("bc"));
    }

    async fn root_api(password: &str) -> crate::api::testing::Fixture {
        let f = crate::api::testing::api(&format!(
            "[api]\nroot_email = \"Root@Example.org\"\nroot_password = \"{password}\"\n"
        ));
        ensure_root_user(&f.api.shared)
            .await
            .expect("the root user is created");
        f
    }

    /// The password the root user was created with: the environment's when set.
    fn expected_root_password(configured: &str) -> String {
        std::env::var(ROOT_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| configured.to_owned())
    }

    #[tokio::test]
    async fn the_root_user_is_created_once() {
        let f = root_api("first-password").await;
        let store = &f.api.shared.store;
        let user = store
            .get(Collection::Users, "root@example.org")
            .await
            .unwrap()
            .expect("a root user");
        assert_eq!(user["email"], "root@example.org");
        assert_eq!(user["groups"], json!(["admin"]));
        assert!(
            user["passwordHash"]
                .as_str()
                .unwrap()
                .starts_with("$argon2id$")
        );
        // Never reset: a second start with another password changes nothing.
        ensure_root_user(&f.api.shared).await.unwrap();
        let again = store
            .get(Collection::Users, "root@example.org")
            .await
            .unwrap();
        assert_eq!(again, Some(user));
    }

    #[tokio::test]
    async fn users_authenticate_and_strangers_do_not() {
        let f = root_api("first-password").await;
        let auth = &f.api.auth;
        let password = expected_root_password("first-password");
        let ok = auth
            .authenticate(&headers(&basic(&format!("ROOT@example.org:{password}"))))
            .await;
        assert_eq!(ok.unwrap(), "root@example.org");
        for wrong in ["root@example.org:nope", "nobody@example.org:first-password"] {
            let error = auth
                .authenticate(&headers(&basic(wrong)))
                .await
                .unwrap_err();
            assert_eq!(error.to_string(), REJECTED, "{wrong}");
        }
    }

    #[tokio::test]
    async fn remembered_checks_end_when_the_password_changes() {
        let f = root_api("first-password").await;
        let auth = &f.api.auth;
        let store = &f.api.shared.store;
        let old = headers(&basic(&format!(
            "root@example.org:{}",
            expected_root_password("first-password")
        )));
        auth.authenticate(&old).await.unwrap();
        assert_eq!(auth.remembered.len(), 1);

        // Another document changes: the remembered check still holds.
        store
            .put(Collection::Channels, "x", json!({"name": "x"}))
            .await
            .unwrap();
        auth.authenticate(&old).await.unwrap();
        assert_eq!(auth.remembered.len(), 1);

        let mut user = store
            .get(Collection::Users, "root@example.org")
            .await
            .unwrap()
            .unwrap();
        user["passwordHash"] = json!(hash_password("second-password").unwrap());
        store
            .put(Collection::Users, "root@example.org", user)
            .await
            .unwrap();
        assert!(auth.authenticate(&old).await.is_err());
        assert!(auth.remembered.is_empty());
        let new = headers(&basic("root@example.org:second-password"));
        assert_eq!(auth.authenticate(&new).await.unwrap(), "root@example.org");
    }
}
