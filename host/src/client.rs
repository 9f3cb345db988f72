//! Clients: who may call channels, in OpenHIM's model and names (`clientID`, `name`, `roles`,
//! `organization`, `contactPerson`, `contactPersonEmail`, `certFingerprint`, `customTokenID`), and
//! the in-memory directory that the proxy looks them up in.
//!
//! Clients are JSON documents in [`Collection::Clients`], keyed by their `_id`. The stored document
//! holds secrets only in forms that cannot be turned back into them:
//! - the password as an argon2id PHC string (`passwordAlgorithm: "argon2id"`), or as imported from
//!   OpenHIM until its first successful use re-hashes it: `sha512`/`sha256`/`sha1` with a hex
//!   `passwordHash` of `password + passwordSalt`, or a bcrypt `passwordHash` (`$2a$`, `$2b$`, `$2y$`);
//! - the custom token as its SHA-256 (`customTokenHash`, hex): a token is a high-entropy bearer
//!   secret, so a fast hash suffices and lets the directory find a client by it.
//!
//! [`ClientInput`] turns what the API receives (plaintext `password` and `customTokenID`, or an
//! OpenHIM import) into that document; [`Client::parse`] reads a stored document into typed values;
//! [`Client::public`] is what the API shows (never a secret: `passwordSet`, `customTokenSet`
//! instead). The proxy never reads the store per request: it asks the [`ClientDirectory`], rebuilt
//! with the channel table whenever the store's configuration generation changes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};

use crate::config::fields::{FieldErrors, Fields};
use crate::store::{Collection, Store, StoreResult};

/// Role names that a clientID may not take (they are API user roles in OpenHIM 8.5).
pub const RESERVED_CLIENT_IDS: [&str; 3] = ["admin", "manager", "operator"];

/// Longest clientID.
const MAX_CLIENT_ID: usize = 128;

/// A salted hash from OpenHIM: `hex(digest(password + salt))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaltedDigest {
    Sha512,
    Sha256,
    Sha1,
}

impl SaltedDigest {
    fn parse(name: &str) -> Option<SaltedDigest> {
        match name.to_ascii_lowercase().as_str() {
            "sha512" => Some(SaltedDigest::Sha512),
            "sha256" => Some(SaltedDigest::Sha256),
            "sha1" => Some(SaltedDigest::Sha1),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SaltedDigest::Sha512 => "sha512",
            SaltedDigest::Sha256 => "sha256",
            SaltedDigest::Sha1 => "sha1",
        }
    }

    fn len(self) -> usize {
        match self {
            SaltedDigest::Sha512 => 64,
            SaltedDigest::Sha256 => 32,
            SaltedDigest::Sha1 => 20,
        }
    }

    fn digest(self, password: &str, salt: &str) -> Vec<u8> {
        fn run<D: sha2::Digest>(password: &str, salt: &str) -> Vec<u8> {
            let mut d = D::new();
            d.update(password.as_bytes());
            d.update(salt.as_bytes());
            d.finalize().to_vec()
        }
        match self {
            SaltedDigest::Sha512 => run::<Sha512>(password, salt),
            SaltedDigest::Sha256 => run::<Sha256>(password, salt),
            SaltedDigest::Sha1 => run::<Sha1>(password, salt),
        }
    }
}

/// A client's stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    /// An argon2id PHC string: what every password ends as.
    Argon2(String),
    /// Imported from OpenHIM; re-hashed to argon2id on first successful use.
    Salted {
        digest: SaltedDigest,
        hash: Vec<u8>,
        salt: String,
    },
    /// A bcrypt hash imported from OpenHIM; re-hashed to argon2id on first successful use.
    Bcrypt(String),
}

impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoredPassword::Argon2(_) => "Argon2(..)",
            StoredPassword::Salted { .. } => "Salted(..)",
            StoredPassword::Bcrypt(_) => "Bcrypt(..)",
        })
    }
}

impl StoredPassword {
    /// Reads `passwordAlgorithm`, `passwordHash` and `passwordSalt` (OpenHIM's names).
    fn parse(f: &mut Fields<'_, '_>) -> Option<StoredPassword> {
        let algorithm: Option<String> = f.optional("passwordAlgorithm");
        let hash: Option<String> = f.optional("passwordHash");
        let salt: Option<String> = f.optional("passwordSalt");
        let hash = match hash {
            Some(hash) => hash,
            None => {
                if algorithm.is_some() || salt.is_some() {
                    f.error(
                        "passwordHash",
                        "is required with passwordAlgorithm or passwordSalt",
                    );
                }
                return None;
            }
        };
        let is_bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
        match algorithm.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("argon2id") if hash.starts_with("$argon2") => {
                match argon2::password_hash::PasswordHash::new(&hash) {
                    Ok(_) => Some(StoredPassword::Argon2(hash)),
                    Err(error) => {
                        f.error(
                            "passwordHash",
                            format!("is not a valid argon2 PHC string: {error}"),
                        );
                        None
                    }
                }
            }
            None | Some("bcrypt") if is_bcrypt => {
                if hash.parse::<bcrypt::HashParts>().is_ok() {
                    Some(StoredPassword::Bcrypt(hash))
                } else {
                    f.error("passwordHash", "is not a valid bcrypt hash");
                    None
                }
            }
            None => {
                f.error(
                    "passwordHash",
                    "is neither an argon2 PHC string nor a bcrypt hash; an OpenHIM salted hash \
                     needs passwordAlgorithm (sha512, sha256 or sha1) and passwordSalt",
                );
                None
            }
            Some(name) => {
                let Some(digest) = SaltedDigest::parse(name) else {
                    f.error(
                        "passwordAlgorithm",
                        format!(
                            "`{name}` is not supported; use argon2id, bcrypt, sha512, sha256 or sha1"
                        ),
                    );
                    return None;
                };
                let Ok(bytes) = hex::decode(hash.trim()) else {
                    f.error(
                        "passwordHash",
                        format!("is not hex (a {} digest)", digest.name()),
                    );
                    return None;
                };
                if bytes.len() != digest.len() {
                    f.error(
                        "passwordHash",
                        format!(
                            "is {} bytes; a {} digest is {}",
                            bytes.len(),
                            digest.name(),
                            digest.len()
                        ),
                    );
                    return None;
                }
                let Some(salt) = salt else {
                    f.error(
                        "passwordSalt",
                        format!("is required with passwordAlgorithm {}", digest.name()),
                    );
                    return None;
                };
                Some(StoredPassword::Salted {
                    digest,
                    hash: bytes,
                    salt,
                })
            }
        }
    }

    /// The document fields that store it.
    fn write(&self, doc: &mut Map<String, Value>) {
        let algorithm = self.algorithm();
        let (hash, salt) = match self {
            StoredPassword::Argon2(phc) | StoredPassword::Bcrypt(phc) => (phc.clone(), None),
            StoredPassword::Salted { hash, salt, .. } => (hex::encode(hash), Some(salt.clone())),
        };
        doc.insert("passwordAlgorithm".into(), json!(algorithm));
        doc.insert("passwordHash".into(), json!(hash));
        match salt {
            Some(salt) => doc.insert("passwordSalt".into(), json!(salt)),
            None => doc.remove("passwordSalt"),
        };
    }

    /// Its `passwordAlgorithm`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            StoredPassword::Argon2(_) => "argon2id",
            StoredPassword::Bcrypt(_) => "bcrypt",
            StoredPassword::Salted { digest, .. } => digest.name(),
        }
    }

    /// Whether it must be replaced by an argon2id hash after the next successful check.
    pub fn needs_rehash(&self) -> bool {
        !matches!(self, StoredPassword::Argon2(_))
    }

    /// Whether `password` matches. Slow for argon2 and bcrypt: call on the blocking pool.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            StoredPassword::Argon2(phc) => crate::password::verify_phc(password, phc),
            StoredPassword::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            StoredPassword::Salted { digest, hash, salt } => {
                constant_time_eq(&digest.digest(password, salt), hash)
            }
        }
    }

    /// A short text that changes whenever the stored password does (for remembered checks).
    pub fn version(&self) -> [u8; 32] {
        let mut d = Sha256::new();
        match self {
            StoredPassword::Argon2(s) | StoredPassword::Bcrypt(s) => d.update(s.as_bytes()),
            StoredPassword::Salted { hash, salt, .. } => {
                d.update(hash);
                d.update([0]);
                d.update(salt.as_bytes());
            }
        }
        d.finalize().into()
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A certificate fingerprint: SHA-256, or SHA-1 for clients imported from OpenHIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    Sha256([u8; 32]),
    Sha1([u8; 20]),
}

impl Fingerprint {
    /// 64 or 40 hex digits, in any case, with or without colons.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).map_err(|_| {
            format!("`{text}` is not a fingerprint: hex digits, optionally separated by colons")
        })?;
        if let Ok(sha256) = <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(Fingerprint::Sha256(sha256))
        } else if let Ok(sha1) = <[u8; 20]>::try_from(bytes.as_slice()) {
            Ok(Fingerprint::Sha1(sha1))
        } else {
            Err(format!(
                "`{text}` has {} bytes; a SHA-256 fingerprint has 32 (a SHA-1 one, from OpenHIM, 20)",
                bytes.len()
            ))
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Fingerprint::Sha256(b) => b,
            Fingerprint::Sha1(b) => b,
        }
    }
}

impl fmt::Display for Fingerprint {
    /// Upper-case hex pairs separated by colons, as OpenHIM shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// A client, read from its stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The document's id (OpenHIM's `_id`).
    pub id: String,
    /// Unique; what Basic authentication and JWT `sub` name, and what goes upstream as
    /// `X-OpenHIM-ClientID`.
    pub client_id: String,
    pub name: String,
    /// Matched against a channel's `allow`.
    pub roles: Vec<String>,
    pub organization: Option<String>,
    pub contact_person: Option<String>,
    pub contact_person_email: Option<String>,
    /// OpenHIM's `clientDomain`, kept for imports.
    pub client_domain: Option<String>,
    pub password: Option<StoredPassword>,
    /// SHA-256 of the custom token.
    pub custom_token_sha256: Option<[u8; 32]>,
    pub cert_fingerprint: Option<Fingerprint>,
}

impl Client {
    /// Reads a stored client document at `path`, adding every problem to `errors`.
    pub fn parse(path: String, value: &Value, errors: &mut FieldErrors) -> Option<Client> {
        let before = errors.0.len();
        let mut f = Fields::new(path, value, errors);
        let id: Option<String> = f.optional("_id");
        // Written by older tools (Mongo's version key); meaningless here.
        let _ = f.raw("__v");
        let client_id = f.parsed("clientID", parse_client_id);
        if client_id.is_none() && f.raw("clientID").is_none() {
            f.error("clientID", "is required");
        }
        let name = f.parsed("name", |n: String| {
            if n.trim().is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(n)
            }
        });
        if name.is_none() && f.raw("name").is_none() {
            f.error("name", "is required");
        }
        let roles = f
            .parsed("roles", |roles: Vec<String>| {
                if roles.iter().any(|r| r.trim().is_empty()) {
                    return Err("a role is empty".to_owned());
                }
                Ok(roles)
            })
            .unwrap_or_default();
        let organization = f.optional("organization");
        let contact_person = f.optional("contactPerson");
        let contact_person_email = f.optional("contactPersonEmail");
        let client_domain = f.optional("clientDomain");
        let password = StoredPassword::parse(&mut f);
        let custom_token_sha256 = f.parsed("customTokenHash", |h: String| {
            hex::decode(&h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| "is not a hex SHA-256".to_owned())
        });
        let cert_fingerprint = f.parsed("certFingerprint", |t: String| Fingerprint::parse(&t));
        f.finish();
        if errors.0.len() > before {
            return None;
        }
        Some(Client {
            id: id.unwrap_or_default(),
            client_id: client_id?,
            name: name?,
            roles,
            organization,
            contact_person,
            contact_person_email,
            client_domain,
            password,
            custom_token_sha256,
            cert_fingerprint,
        })
    }

    /// The document stored for this client (with its secrets in stored form).
    pub fn document(&self) -> Value {
        let mut doc = self.shown();
        if let Some(password) = &self.password {
            password.write(&mut doc);
        }
        if let Some(hash) = &self.custom_token_sha256 {
            doc.insert("customTokenHash".into(), json!(hex::encode(hash)));
        }
        Value::Object(doc)
    }

    /// What the API shows: no secret, only whether one is set (and the password's algorithm, so an
    /// operator sees which imported passwords are still to be re-hashed).
    pub fn public(&self) -> Value {
        let mut doc = self.shown();
        doc.insert("passwordSet".into(), json!(self.password.is_some()));
        if let Some(password) = &self.password {
            doc.insert("passwordAlgorithm".into(), json!(password.algorithm()));
        }
        doc.insert(
            "customTokenSet".into(),
            json!(self.custom_token_sha256.is_some()),
        );
        Value::Object(doc)
    }

    fn shown(&self) -> Map<String, Value> {
        let mut doc = Map::new();
        doc.insert("_id".into(), json!(self.id));
        doc.insert("clientID".into(), json!(self.client_id));
        doc.insert("name".into(), json!(self.name));
        doc.insert("roles".into(), json!(self.roles));
        for (key, value) in [
            ("organization", &self.organization),
            ("contactPerson", &self.contact_person),
            ("contactPersonEmail", &self.contact_person_email),
            ("clientDomain", &self.client_domain),
        ] {
            if let Some(value) = value {
                doc.insert(key.into(), json!(value));
            }
        }
        if let Some(fp) = &self.cert_fingerprint {
            doc.insert("certFingerprint".into(), json!(fp.to_string()));
        }
        doc
    }
}

/// A clientID: 1–128 characters, not a reserved role name.
pub fn parse_client_id(id: String) -> Result<String, String> {
    if id.is_empty() || id.chars().count() > MAX_CLIENT_ID {
        return Err(format!("must be 1 to {MAX_CLIENT_ID} characters"));
    }
    if id.chars().any(char::is_control) || id.contains(':') {
        // A colon would make Basic's `clientID:password` ambiguous.
        return Err("must not contain control characters or `:`".to_owned());
    }
    if RESERVED_CLIENT_IDS.contains(&id.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "`{id}` is a role name ({}); choose another",
            RESERVED_CLIENT_IDS.join(", ")
        ));
    }
    Ok(id)
}

/// SHA-256 of a custom token, as stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What `POST /clients` and `PUT /clients/:id` accept, beyond the stored document's fields:
/// plaintext `password` and `customTokenID`, hashed here and never stored as given.
#[derive(Debug, Default)]
pub struct ClientInput {
    /// The document without the plaintext fields (and without the read-only `passwordSet` and
    /// `customTokenSet`, which a client fetched with GET carries back).
    pub document: Map<String, Value>,
    /// A new password to hash; `Some(None)` removes the password.
    pub password: Option<Option<String>>,
    /// A new custom token; `Some(None)` removes it.
    pub custom_token: Option<Option<String>>,
}

impl ClientInput {
    /// Splits an API body. Errors (a plaintext field that is not a non-empty string) go to `errors`.
    pub fn split(mut body: Map<String, Value>, errors: &mut FieldErrors) -> ClientInput {
        body.remove("passwordSet");
        body.remove("customTokenSet");
        if body.contains_key("customTokenHash") {
            errors.push(
                "customTokenHash",
                "is computed by Mediary; send the token itself as customTokenID",
            );
            body.remove("customTokenHash");
        }
        let mut secret = |key: &str, errors: &mut FieldErrors| match body.remove(key) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) if !s.is_empty() => Some(Some(s)),
            Some(_) => {
                errors.push(key, "must be a non-empty string (or null to remove it)");
                None
            }
        };
        let password = secret("password", errors);
        let custom_token = secret("customTokenID", errors);
        ClientInput {
            document: body,
            password,
            custom_token,
        }
    }

    /// Whether the body also sets a stored password hash (an import), which a plaintext `password`
    /// would contradict.
    pub fn imports_hash(&self) -> bool {
        self.document.contains_key("passwordHash")
    }
}

/// The clients, indexed the ways the proxy finds them; rebuilt whole when clients change.
#[derive(Debug, Default)]
pub struct ClientDirectory {
    by_client_id: HashMap<String, Arc<Client>>,
    by_token: HashMap<[u8; 32], Arc<Client>>,
    by_sha256: HashMap<[u8; 32], Arc<Client>>,
    by_sha1: HashMap<[u8; 20], Arc<Client>>,
}

impl ClientDirectory {
    pub fn new(clients: impl IntoIterator<Item = Client>) -> ClientDirectory {
        let mut dir = ClientDirectory::default();
        // The API refuses a second client with the same certificate or token, but stored or
        // imported data may have one: the later client wins, and the operator is told.
        let shared = |what: &str, old: Option<Arc<Client>>, new: &Client| {
            if let Some(old) = old {
                tracing::warn!(
                    first = %old.client_id,
                    second = %new.client_id,
                    "Two clients have the same {what}; it identifies the second only."
                );
            }
        };
        for client in clients {
            let client = Arc::new(client);
            if let Some(hash) = client.custom_token_sha256 {
                let old = dir.by_token.insert(hash, Arc::clone(&client));
                shared("customTokenID", old, &client);
            }
            match client.cert_fingerprint {
                Some(Fingerprint::Sha256(fp)) => {
                    let old = dir.by_sha256.insert(fp, Arc::clone(&client));
                    shared("certFingerprint", old, &client);
                }
                Some(Fingerprint::Sha1(fp)) => {
                    let old = dir.by_sha1.insert(fp, Arc::clone(&client));
                    shared("certFingerprint", old, &client);
                }
                None => {}
            }
            dir.by_client_id.insert(client.client_id.clone(), client);
        }
        dir
    }

    /// Reads every stored client. A document that does not parse is skipped with an error in the
    /// log (that client cannot authenticate until fixed).
    pub async fn load(store: &dyn Store) -> StoreResult<ClientDirectory> {
        let documents = store.list(Collection::Clients).await?;
        let mut clients = Vec::with_capacity(documents.len());
        for (id, document) in documents {
            let mut errors = FieldErrors::default();
            match Client::parse(format!("clients/{id}"), &document, &mut errors) {
                Some(mut client) => {
                    client.id = id;
                    clients.push(client);
                }
                None => {
                    let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                    tracing::error!(client = %id, problems = %problems.join("; "), "A stored client is invalid; it cannot authenticate.");
                }
            }
        }
        Ok(ClientDirectory::new(clients))
    }

    pub fn by_client_id(&self, client_id: &str) -> Option<&Arc<Client>> {
        self.by_client_id.get(client_id)
    }

    /// The client whose custom token hashes to `hash`. A map lookup by the SHA-256 of the token: the
    /// timing can reveal nothing useful about a token, only about its hash.
    pub fn by_token_hash(&self, hash: &[u8; 32]) -> Option<&Arc<Client>> {
        self.by_token.get(hash)
    }

    /// The client whose `certFingerprint` is this certificate's (SHA-256, or SHA-1 for imports).
    pub fn by_certificate(&self, sha256: &[u8; 32], sha1: &[u8; 20]) -> Option<&Arc<Client>> {
        self.by_sha256
            .get(sha256)
            .or_else(|| self.by_sha1.get(sha1))
    }

    /// The client whose `certFingerprint` is one of these authorities' (OpenHIM's in-chain lookup),
    /// the nearest authority first: by SHA-256, or SHA-1 (`sha1`, the same authorities in the same
    /// order) for clients imported from OpenHIM.
    pub fn by_issuer(&self, sha256: &[[u8; 32]], sha1: &[[u8; 20]]) -> Option<&Arc<Client>> {
        sha256.iter().enumerate().find_map(|(i, fp)| {
            self.by_sha256
                .get(fp)
                .or_else(|| sha1.get(i).and_then(|fp| self.by_sha1.get(fp)))
        })
    }

    pub fn len(&self) -> usize {
        self.by_client_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Client, Vec<String>> {
        let mut errors = FieldErrors::default();
        Client::parse(String::new(), &v, &mut errors)
            .ok_or_else(|| errors.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn fingerprints_are_normalised() {
        let hex64 = "ab".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_owned()).collect();
        assert_eq!(
            Fingerprint::parse(&hex64).unwrap(),
            Fingerprint::parse(&colons.join(":")).unwrap()
        );
        let fp = Fingerprint::parse(&hex64).unwrap();
        assert_eq!(fp.to_string(), colons.join(":"));
        assert!(matches!(
            Fingerprint::parse(&"0F".repeat(20)).unwrap(),
            Fingerprint::Sha1(_)
        ));
        assert!(Fingerprint::parse("abc").is_err());
        assert!(
            Fingerprint::parse(&"ab".repeat(31))
                .unwrap_err()
                .contains("31 bytes")
        );
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(parse_client_id("client-1".into()).is_ok());
        for bad in ["", "Admin", "operator", "a:b"] {
            assert!(parse_client_id(bad.into()).is_err(), "{bad}");
        }
        assert!(parse_client_id("x".repeat(129)).is_err());
        let errors = parse(json!({"clientID": "admin", "roles": "x", "colour": 1})).unwrap_err();
        for field in ["clientID", "name", "roles", "colour"] {
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
                "{field}: {errors:?}"
            );
        }
    }

    #[test]
    fn openhim_salted_hashes_verify() {
        let salt = "22a61686-66f6-483c-a524-185aac251fb0";
        let hash = hex::encode(Sha512::digest(format!("secret{salt}").as_bytes()));
        let client = parse(
            json!({"clientID": "c", "name": "C", "passwordAlgorithm": "sha512",
            "passwordHash": hash, "passwordSalt": salt}),
        )
        .unwrap();
        let password = client.password.clone().unwrap();
        assert!(password.needs_rehash());
        assert!(password.verify("secret"));
        assert!(!password.verify("Secret"));
        // Round trip through the stored document.
        let again = parse(client.document()).unwrap();
        assert_eq!(again, client);
        let sha1 = hex::encode(Sha1::digest(b"pwsalt"));
        let c1 = parse(
            json!({"clientID": "c", "name": "C", "passwordAlgorithm": "sha1",
            "passwordHash": sha1, "passwordSalt": "salt"}),
        )
        .unwrap();
        assert!(c1.password.unwrap().verify("pw"));
    }

    #[test]
    fn bcrypt_and_argon2_hashes_verify() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let client = parse(json!({"clientID": "c", "name": "C", "passwordHash": hash})).unwrap();
        let password = client.password.unwrap();
        assert!(matches!(password, StoredPassword::Bcrypt(_)));
        assert!(password.needs_rehash() && password.verify("secret") && !password.verify("x"));
        let phc = crate::password::hash_password("secret").unwrap();
        let client = parse(
            json!({"clientID": "c", "name": "C", "passwordAlgorithm": "argon2id",
            "passwordHash": phc}),
        )
        .unwrap();
        let password = client.password.unwrap();
        assert!(!password.needs_rehash() && password.verify("secret"));
    }

    #[test]
    fn bad_password_fields_name_the_field() {
        let cases = [
            (json!({"passwordHash": "plain"}), "passwordHash"),
            (
                json!({"passwordAlgorithm": "md5", "passwordHash": "00"}),
                "passwordAlgorithm",
            ),
            (
                json!({"passwordAlgorithm": "sha512", "passwordHash": "zz", "passwordSalt": ""}),
                "passwordHash",
            ),
            (
                json!({"passwordAlgorithm": "sha256", "passwordHash": "00".repeat(32)}),
                "passwordSalt",
            ),
            (json!({"passwordSalt": "x"}), "passwordHash"),
            (json!({"passwordHash": "$2b$nonsense"}), "passwordHash"),
        ];
        for (extra, field) in cases {
            let mut doc = json!({"clientID": "c", "name": "C"});
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let errors = parse(doc).unwrap_err();
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
                "{field}: {errors:?}"
            );
        }
    }

    #[test]
    fn public_view_has_no_secrets() {
        let client = parse(
            json!({"_id": "1", "clientID": "c", "name": "C", "roles": ["r"],
            "passwordHash": crate::password::hash_password("pw").unwrap(),
            "customTokenHash": hex::encode(token_hash("tok")),
            "certFingerprint": "ab".repeat(32)}),
        )
        .unwrap();
        let shown = client.public();
        let text = shown.to_string();
        assert!(
            !text.contains("$argon2")
                && !text.contains("passwordHash")
                && !text.contains("customTokenHash"),
            "{text}"
        );
        assert_eq!(shown["passwordSet"], true);
        assert_eq!(shown["customTokenSet"], true);
        assert_eq!(
            shown["certFingerprint"],
            "AB:".repeat(32).trim_end_matches(':')
        );
    }

    #[test]
    fn the_directory_finds_clients_every_way() {
        let c = |id: &str, extra: Value| {
            let mut doc = json!({"clientID": id, "name": id});
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(doc).unwrap()
        };
        let dir = ClientDirectory::new([
            c(
                "a",
                json!({"customTokenHash": hex::encode(token_hash("tok-a"))}),
            ),
            c("b", json!({"certFingerprint": "11".repeat(32)})),
            c("old", json!({"certFingerprint": "22".repeat(20)})),
        ]);
        assert_eq!(dir.len(), 3);
        assert_eq!(dir.by_client_id("a").unwrap().client_id, "a");
        assert_eq!(
            dir.by_token_hash(&token_hash("tok-a")).unwrap().client_id,
            "a"
        );
        assert!(dir.by_token_hash(&token_hash("tok-b")).is_none());
        assert_eq!(
            dir.by_certificate(&[0x11; 32], &[0; 20]).unwrap().client_id,
            "b"
        );
        assert_eq!(
            dir.by_certificate(&[0; 32], &[0x22; 20]).unwrap().client_id,
            "old"
        );
        assert!(dir.by_certificate(&[0; 32], &[0; 20]).is_none());
        assert_eq!(
            dir.by_issuer(&[[0; 32], [0x11; 32]], &[[0; 20], [0; 20]])
                .unwrap()
                .client_id,
            "b"
        );
        // An imported SHA-1 authority, nearer than a SHA-256 one, is found first.
        assert_eq!(
            dir.by_issuer(&[[0; 32], [0x11; 32]], &[[0x22; 20], [0; 20]])
                .unwrap()
                .client_id,
            "old"
        );
    }

    #[test]
    fn input_splits_plaintext_secrets() {
        let mut errors = FieldErrors::default();
        let body = json!({"clientID": "c", "password": "pw", "customTokenID": null,
            "passwordSet": true, "customTokenHash": "00"});
        let input = ClientInput::split(body.as_object().unwrap().clone(), &mut errors);
        assert_eq!(input.password, Some(Some("pw".to_owned())));
        assert_eq!(input.custom_token, Some(None));
        assert!(!input.document.contains_key("passwordSet"));
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "customTokenHash");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
