//! Password hashing shared by API users ([`crate::api::auth`]) and proxy clients
//! ([`crate::client`]): argon2id PHC strings, checked on tokio's blocking pool a few at a time, a
//! dummy hash so that an unknown name costs what a wrong password costs, and a short-lived memory of
//! successful checks keyed by a hash of the credentials.
//!
//! Hashing is slow on purpose (~19 MiB and tens of milliseconds with the crate's default
//! parameters), so it never runs on a runtime thread that serves other requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, Semaphore};

/// Most argon2 computations at once. Each holds ~19 MiB; unbounded, a flood of bad credentials would
/// exhaust memory before the CPU.
pub const CONCURRENT_HASHES: usize = 4;

/// Length of a generated password (alphanumeric: ~143 bits).
const GENERATED_PASSWORD_LEN: usize = 24;

/// A password check could not be made (the blocking pool failed, the checker stopped): the host's
/// fault, never the caller's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CheckError(pub String);

/// Runs password hashes on the blocking pool, a few at a time, and keeps the dummy hash.
#[derive(Debug)]
pub struct PasswordChecker {
    /// Checked against when the name is unknown, so that costs the same as a wrong password.
    dummy: OnceCell<String>,
    hashing: Arc<Semaphore>,
}

impl Default for PasswordChecker {
    fn default() -> Self {
        PasswordChecker::new(CONCURRENT_HASHES)
    }
}

impl PasswordChecker {
    /// `concurrency`: most hashes computed at once.
    pub fn new(concurrency: usize) -> PasswordChecker {
        PasswordChecker {
            dummy: OnceCell::new(),
            hashing: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Computes the dummy hash ahead of the first failed check.
    pub async fn prepare(&self) {
        if let Err(error) = self.dummy_hash().await {
            tracing::warn!(%error, "Could not prepare the password checker.");
        }
    }

    /// A PHC string of a random password: what an unknown name is checked against.
    pub async fn dummy_hash(&self) -> Result<String, CheckError> {
        self.dummy
            .get_or_try_init(|| async {
                let password = random_password();
                self.run(move || hash_password(&password)).await
            })
            .await
            .cloned()
    }

    /// Spends what a wrong password costs: `password` checked against the dummy hash.
    pub async fn verify_dummy(&self, password: String) -> Result<(), CheckError> {
        let dummy = self.dummy_hash().await?;
        self.verify(password, dummy).await.map(|_| ())
    }

    /// Whether `password` matches the argon2 PHC string `hash`, computed on the blocking pool. An
    /// unreadable hash matches nothing (and is logged).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, CheckError> {
        self.run(move || Ok(verify_phc(&password, &hash))).await
    }

    /// `password` hashed for storing (argon2id), in a slot of the pool like every check.
    pub async fn hash(&self, password: String) -> Result<String, CheckError> {
        self.run(move || hash_password(&password)).await
    }

    /// Runs `work` (a hash or a check) on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        let _permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| CheckError("The password checker has stopped.".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|error| CheckError(format!("A password check failed: {error}.")))?
    }
}

/// Whether `password` matches the argon2 PHC string `hash`, on the calling thread.
pub fn verify_phc(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(error) => {
            tracing::warn!(%error, "A stored password hash cannot be read; rejecting.");
            false
        }
    }
}

/// An argon2id PHC string for `password`, with a fresh salt and the crate's default parameters.
pub fn hash_password(password: &str) -> Result<String, CheckError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| CheckError(format!("Hashing a password failed: {error}.")))
}

/// A random alphanumeric password from the operating system's generator.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // The largest multiple of the alphabet's size that fits a byte: rejecting bytes at or above it
    // keeps every character equally likely.
    let zone = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < GENERATED_PASSWORD_LEN {
        OsRng.fill_bytes(&mut buf);
        for &b in buf.iter().filter(|&&b| b < zone) {
            if out.len() == GENERATED_PASSWORD_LEN {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    out
}

/// The key a successful check is remembered under: SHA-256 of `name\0secret`, so neither is kept
/// and `a`+`bc` differs from `ab`+`c`.
pub fn credentials_key(name: &str, secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

/// Successful checks remembered until an expiry, keyed by [`credentials_key`], at most `capacity`
/// of them: past it the expired ones go, then all of them (a flood of fresh credentials only costs
/// the next legitimate caller one more hash).
#[derive(Debug)]
pub struct RememberedChecks<T> {
    entries: Mutex<HashMap<[u8; 32], (T, Instant)>>,
    capacity: usize,
}

impl<T: Clone> RememberedChecks<T> {
    pub fn new(capacity: usize) -> Self {
        RememberedChecks {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The remembered value, unless expired (then forgotten).
    pub fn get(&self, key: &[u8; 32]) -> Option<T> {
        let mut entries = self.lock();
        let (value, until) = entries.get(key)?;
        if *until <= Instant::now() {
            entries.remove(key);
            return None;
        }
        Some(value.clone())
    }

    pub fn insert(&self, key: [u8; 32], value: T, until: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let now = Instant::now();
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, until));
    }

    pub fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }

    /// Changes a remembered value in place (when still there).
    pub fn update(&self, key: &[u8; 32], change: impl FnOnce(&mut T)) {
        if let Some((value, _)) = self.lock().get_mut(key) {
            change(value);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (T, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn random_passwords_are_long_and_alphanumeric() {
        let p = random_password();
        assert_eq!(p.len(), GENERATED_PASSWORD_LEN);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, random_password());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_password("secret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_phc("secret", &hash));
        assert!(!verify_phc("wrong", &hash));
        assert!(!verify_phc("secret", "not a phc string"));
    }

    #[test]
    fn credential_keys_separate_name_and_secret() {
        assert_ne!(credentials_key("a", "bc"), credentials_key("ab", "c"));
    }

    #[test]
    fn remembered_checks_expire_and_stay_bounded() {
        let checks = RememberedChecks::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        checks.insert([1; 32], "a", later);
        checks.insert([2; 32], "b", Instant::now());
        assert_eq!(checks.get(&[1; 32]), Some("a"));
        assert_eq!(checks.get(&[2; 32]), None);
        checks.insert([2; 32], "b", later);
        checks.insert([3; 32], "c", later);
        assert!(checks.len() <= 2);
        assert_eq!(checks.get(&[3; 32]), Some("c"));
    }

    #[tokio::test]
    async fn the_checker_verifies_off_the_runtime() {
        let checker = PasswordChecker::new(1);
        let hash = hash_password("pw").unwrap();
        assert!(checker.verify("pw".into(), hash.clone()).await.unwrap());
        assert!(!checker.verify("no".into(), hash).await.unwrap());
        checker.verify_dummy("x".into()).await.unwrap();
    }
}
