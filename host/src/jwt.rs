//! JSON Web Tokens for proxy authentication (`Authorization: Bearer <token>`): the `[auth.jwt]`
//! settings, and the verifier that turns a token into the clientID it names (its `sub` claim).
//!
//! The algorithm is pinned in the configuration: a token's header is never trusted to choose how it
//! is checked, so `alg: none` and the HS256-signed-with-the-RSA-public-key confusion are refused
//! before any signature is looked at. Keys are read once, when the configuration is parsed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::config::fields::{FieldErrors, Fields};

/// The algorithms Mediary accepts, one of which a deployment pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

impl JwtAlgorithm {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "ES256" => Ok(JwtAlgorithm::Es256),
            other => Err(format!(
                "`{other}` is not a supported algorithm (HS256, RS256 or ES256)"
            )),
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        })
    }
}

/// Where the verification key comes from.
#[derive(Clone)]
enum Keys {
    /// One key (a secret, or a public key file).
    Single(DecodingKey),
    /// A JWKS file's keys of the pinned algorithm's type, by `kid`.
    Set(HashMap<String, DecodingKey>),
}

impl fmt::Debug for Keys {
    // Never prints key material (an HS256 secret is a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::Single(_) => f.write_str("Single(..)"),
            Keys::Set(keys) => f.debug_tuple("Set").field(&keys.keys()).finish(),
        }
    }
}

/// `[auth.jwt]`, checked: the pinned algorithm, its key(s), and the claims required of a token.
/// Build a [`JwtVerifier`] from it.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `algorithm`: "HS256", "RS256" or "ES256". Required; a token whose header names another
    /// algorithm (including `none`) is refused.
    pub algorithm: JwtAlgorithm,
    /// Exactly one of `secret` (HS256, the shared secret as a string), `secret_file` (HS256, the
    /// file's bytes, a trailing newline removed), `public_key_file` (RS256/ES256, PEM) or
    /// `jwks_file` (a JWKS JSON file; the token's `kid` picks the key, and only keys of the pinned
    /// algorithm's type are used).
    keys: Keys,
    /// `audience`: when set (a string or a list), a token's `aud` must be present and name one.
    pub audience: Option<Vec<String>>,
    /// `issuer`: when set, a token's `iss` must be present and equal it.
    pub issuer: Option<String>,
    /// `leeway`: clock skew allowed when checking `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
}

/// Parses `[auth.jwt]` (the value of the `jwt` key of the `[auth]` table). Returns `None` when the
/// table is absent or has no `algorithm`, or when it has errors (which go to `errors`, each naming
/// its field). Relative file paths are relative to `base`.
pub fn parse_settings(
    value: Option<&Value>,
    base: &Path,
    errors: &mut FieldErrors,
) -> Option<JwtSettings> {
    let value = value?;
    let mut f = Fields::new("auth.jwt", value, errors);
    let algorithm = f.parsed("algorithm", |s: String| JwtAlgorithm::parse(&s));
    let secret = f.optional::<String>("secret");
    let secret_file = f.optional::<PathBuf>("secret_file");
    let public_key_file = f.optional::<PathBuf>("public_key_file");
    let jwks_file = f.optional::<PathBuf>("jwks_file");
    let audience = f.parsed("audience", |v: Value| match v {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err("expected a string or a list of strings".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|list| {
                if list.is_empty() {
                    Err("must not be an empty list (leave it out to accept any)".to_owned())
                } else {
                    Ok(list)
                }
            }),
        _ => Err("expected a string or a list of strings".to_owned()),
    });
    let issuer = f.optional::<String>("issuer");
    let leeway = f.duration("leeway", Duration::from_secs(30));
    let sources = [
        secret.is_some(),
        secret_file.is_some(),
        public_key_file.is_some(),
        jwks_file.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    let Some(algorithm) = algorithm else {
        if f.raw("algorithm").is_none() && sources > 0 {
            f.error(
                "algorithm",
                "is required when a key is given (HS256, RS256 or ES256)",
            );
        }
        f.finish();
        return None;
    };
    if sources != 1 {
        f.error(
            "secret",
            "exactly one of secret, secret_file, public_key_file or jwks_file must be set",
        );
        f.finish();
        return None;
    }
    let keys = match (algorithm, secret, secret_file, public_key_file, jwks_file) {
        (JwtAlgorithm::Hs256, Some(secret), ..) => {
            if secret.len() < 32 {
                Err(("secret", "must be at least 32 bytes for HS256".to_owned()))
            } else {
                Ok(Keys::Single(DecodingKey::from_secret(secret.as_bytes())))
            }
        }
        (JwtAlgorithm::Hs256, None, Some(file), ..) => read_secret(&base.join(file))
            .map(|s| Keys::Single(DecodingKey::from_secret(&s)))
            .map_err(|e| ("secret_file", e)),
        (JwtAlgorithm::Hs256, None, None, Some(_), _) => Err((
            "public_key_file",
            "HS256 takes a secret (secret or secret_file), not a public key".to_owned(),
        )),
        (_, Some(_), ..) | (_, None, Some(_), ..) => Err((
            "algorithm",
            format!("{algorithm} takes a public key (public_key_file or jwks_file), not a secret"),
        )),
        (_, None, None, Some(file), _) => read_public_key(algorithm, &base.join(file))
            .map(Keys::Single)
            .map_err(|e| ("public_key_file", e)),
        (_, None, None, None, Some(file)) => read_jwks(algorithm, &base.join(file))
            .map(Keys::Set)
            .map_err(|e| ("jwks_file", e)),
        (_, None, None, None, None) => unreachable_sources(),
    };
    let keys = f.finish_with(keys)?;
    Some(JwtSettings {
        algorithm,
        keys,
        audience,
        issuer,
        leeway,
    })
}

/// `sources == 1` was checked just before; this only satisfies the match.
fn unreachable_sources() -> Result<Keys, (&'static str, String)> {
    Err(("secret", "no key source given".to_owned()))
}

fn read_secret(file: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < 32 {
        return Err(format!(
            "{}: the secret must be at least 32 bytes for HS256",
            file.display()
        ));
    }
    Ok(bytes)
}

fn read_public_key(algorithm: JwtAlgorithm, file: &Path) -> Result<DecodingKey, String> {
    let pem = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let key = match algorithm {
        JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
        JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
        JwtAlgorithm::Hs256 => return Err("HS256 takes a secret".to_owned()),
    };
    key.map_err(|e| {
        format!(
            "{}: not a PEM {} public key: {e}",
            file.display(),
            match algorithm {
                JwtAlgorithm::Rs256 => "RSA",
                _ => "EC P-256",
            }
        )
    })
}

fn read_jwks(algorithm: JwtAlgorithm, file: &Path) -> Result<HashMap<String, DecodingKey>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a JWKS document: {e}", file.display()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        // Only keys of the pinned algorithm's type: an HMAC ("oct") key in the set must never be
        // usable, whatever the token says.
        let fits = matches!(
            (&jwk.algorithm, algorithm),
            (AlgorithmParameters::RSA(_), JwtAlgorithm::Rs256)
                | (AlgorithmParameters::EllipticCurve(_), JwtAlgorithm::Es256)
        );
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if !fits {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("{}: the key `{kid}` is not usable: {e}", file.display()))?;
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: has no key with a `kid` for {algorithm}",
            file.display()
        ));
    }
    Ok(keys)
}

/// Why a token was refused. The proxy answers 401 to all of them; the reason goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not the configured {0}")]
    WrongAlgorithm(JwtAlgorithm),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the token's `{0}` claim has the wrong type")]
    BadClaim(String),
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token names no known key (kid)")]
    UnknownKey,
}

/// Checks tokens against [`JwtSettings`]: built once, shared by every worker.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    algorithm: JwtAlgorithm,
    keys: Keys,
    validation: Validation,
}

/// The claims Mediary reads; `exp`, `aud`, `iss` and `nbf` are checked by `jsonwebtoken`.
#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<Value>,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Self {
        let mut validation = Validation::new(settings.algorithm.jsonwebtoken());
        validation.leeway = settings.leeway.as_secs();
        let mut required = vec!["exp", "sub"];
        match &settings.audience {
            Some(audience) => {
                validation.set_audience(audience);
                required.push("aud");
            }
            // A token may carry an audience nobody asked to check.
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        JwtVerifier {
            algorithm: settings.algorithm,
            keys: settings.keys.clone(),
            validation,
        }
    }

    /// Verifies `token` (without the `Bearer ` prefix) and returns its `sub` claim: the clientID.
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        // The header is read first only to refuse a foreign algorithm by name and to pick the key
        // by `kid`; `jsonwebtoken` checks the algorithm against the pinned one again.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `none` and other unknown names fail to parse as an algorithm.
            ErrorKind::Json(_) if token_names_an_algorithm(token) => {
                JwtError::WrongAlgorithm(self.algorithm)
            }
            _ => JwtError::Malformed,
        })?;
        if header.alg != self.algorithm.jsonwebtoken() {
            return Err(JwtError::WrongAlgorithm(self.algorithm));
        }
        let key = match &self.keys {
            Keys::Single(key) => key,
            Keys::Set(keys) => header
                .kid
                .as_deref()
                .and_then(|kid| keys.get(kid))
                .ok_or(JwtError::UnknownKey)?,
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| map_error(e.kind(), self.algorithm))?;
        match data.claims.sub {
            Some(Value::String(sub)) if !sub.is_empty() => Ok(sub),
            Some(_) => Err(JwtError::BadClaim("sub".into())),
            None => Err(JwtError::MissingClaim("sub".into())),
        }
    }
}

/// Whether a token's header parses as JSON with an `alg` (so a parse failure was the algorithm's).
fn token_names_an_algorithm(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

fn map_error(kind: &ErrorKind, algorithm: JwtAlgorithm) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            JwtError::WrongAlgorithm(algorithm)
        }
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => JwtError::BadClaim(claim.clone()),
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        _ => JwtError::Malformed,
    }
}

/// The proxy's `Authorization: Bearer` step (`[auth.jwt]`).
impl crate::proxy::auth::BearerVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<String, String> {
        JwtVerifier::verify(self, token).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!!";

    fn data(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/jwt")
            .join(file)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn settings(toml: &str) -> Result<JwtSettings, Vec<String>> {
        let table: toml::Table = toml::from_str(toml).expect("TOML");
        let value = serde_json::to_value(table).expect("JSON");
        let mut errors = FieldErrors::default();
        let dir = data("");
        let parsed = parse_settings(Some(&value), &dir, &mut errors);
        if errors.is_empty() {
            Ok(parsed.expect("settings"))
        } else {
            Err(errors
                .0
                .iter()
                .map(|e| format!("{}: {}", e.path, e.reason))
                .collect())
        }
    }

    fn verifier(toml: &str) -> JwtVerifier {
        JwtVerifier::new(&settings(toml).unwrap_or_else(|e| panic!("{e:?}")))
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).expect("sign")
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&std::fs::read(data("rsa-private.pem")).expect("key"))
            .expect("RSA key")
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(&std::fs::read(data("ec-private.pem")).expect("key"))
            .expect("EC key")
    }

    fn valid() -> Value {
        json!({"sub": "client-a", "exp": now() + 300})
    }

    #[test]
    fn hs256_accepts_a_valid_token_and_refuses_the_rest() {
        let v = verifier(&format!("algorithm = \"HS256\"\nsecret = \"{SECRET}\""));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = sign(Algorithm::HS256, &key, None, &valid());
        assert_eq!(v.verify(&token), Ok("client-a".to_owned()));

        let expired = json!({"sub": "client-a", "exp": now() - 3600});
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, &key, None, &expired)),
            Err(JwtError::Expired)
        );
        let no_exp = json!({"sub": "client-a"});
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, &key, None, &no_exp)),
            Err(JwtError::MissingClaim("exp".into()))
        );
        let other = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!!");
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, &other, None, &valid())),
            Err(JwtError::BadSignature)
        );
        // HS384 with the right secret: still not the pinned algorithm.
        assert_eq!(
            v.verify(&sign(Algorithm::HS384, &key, None, &valid())),
            Err(JwtError::WrongAlgorithm(JwtAlgorithm::Hs256))
        );
        assert_eq!(v.verify("not a token"), Err(JwtError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine as _;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&valid())
        );
        for config in [
            format!("algorithm = \"HS256\"\nsecret = \"{SECRET}\""),
            "algorithm = \"RS256\"\npublic_key_file = \"rsa-public.pem\"".to_owned(),
        ] {
            let v = verifier(&config);
            assert!(
                matches!(v.verify(&token), Err(JwtError::WrongAlgorithm(_))),
                "{:?}",
                v.verify(&token)
            );
        }
    }

    #[test]
    fn rs256_accepts_its_key_and_refuses_the_hmac_confusion() {
        let v = verifier("algorithm = \"RS256\"\npublic_key_file = \"rsa-public.pem\"");
        let token = sign(Algorithm::RS256, &rsa_key(), None, &valid());
        assert_eq!(v.verify(&token), Ok("client-a".to_owned()));
        // The classic attack: HS256 with the server's public key (PEM bytes) as the HMAC secret.
        let public_pem = std::fs::read(data("rsa-public.pem")).expect("PEM");
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            None,
            &valid(),
        );
        assert_eq!(
            v.verify(&forged),
            Err(JwtError::WrongAlgorithm(JwtAlgorithm::Rs256))
        );
        // Signed by another RSA key (the EC key cannot sign RS256): a tampered payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let other = sign(
            Algorithm::RS256,
            &rsa_key(),
            None,
            &json!({"sub": "admin", "exp": now() + 300}),
        );
        parts[1] = other.split('.').nth(1).expect("payload").to_owned();
        assert_eq!(v.verify(&parts.join(".")), Err(JwtError::BadSignature));
    }

    #[test]
    fn es256_accepts_its_key() {
        let v = verifier("algorithm = \"ES256\"\npublic_key_file = \"ec-public.pem\"");
        let token = sign(Algorithm::ES256, &ec_key(), None, &valid());
        assert_eq!(v.verify(&token), Ok("client-a".to_owned()));
        let rs = sign(Algorithm::RS256, &rsa_key(), None, &valid());
        assert_eq!(
            v.verify(&rs),
            Err(JwtError::WrongAlgorithm(JwtAlgorithm::Es256))
        );
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = verifier(&format!(
            "algorithm = \"HS256\"\nsecret = \"{SECRET}\"\naudience = [\"mediary\", \"hie\"]\nissuer = \"https://idp\""
        ));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let claims = |aud: Value, iss: Value| {
            let mut c = valid();
            if !aud.is_null() {
                c["aud"] = aud;
            }
            if !iss.is_null() {
                c["iss"] = iss;
            }
            sign(Algorithm::HS256, &key, None, &c)
        };
        assert_eq!(
            v.verify(&claims(json!("hie"), json!("https://idp"))),
            Ok("client-a".to_owned())
        );
        assert_eq!(
            v.verify(&claims(json!("elsewhere"), json!("https://idp"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            v.verify(&claims(Value::Null, json!("https://idp"))),
            Err(JwtError::MissingClaim("aud".into()))
        );
        assert_eq!(
            v.verify(&claims(json!("mediary"), json!("https://evil"))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            v.verify(&claims(json!("mediary"), Value::Null)),
            Err(JwtError::MissingClaim("iss".into()))
        );
    }

    #[test]
    fn jwks_picks_the_key_by_kid() {
        let v = verifier("algorithm = \"RS256\"\njwks_file = \"jwks.json\"");
        let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &valid());
        assert_eq!(v.verify(&token), Ok("client-a".to_owned()));
        let wrong_kid = sign(Algorithm::RS256, &rsa_key(), Some("rsa-2"), &valid());
        assert_eq!(v.verify(&wrong_kid), Err(JwtError::UnknownKey));
        let no_kid = sign(Algorithm::RS256, &rsa_key(), None, &valid());
        assert_eq!(v.verify(&no_kid), Err(JwtError::UnknownKey));
        // The EC key of the set is not usable when RS256 is pinned.
        let ec = sign(Algorithm::ES256, &ec_key(), Some("ec-1"), &valid());
        assert_eq!(
            v.verify(&ec),
            Err(JwtError::WrongAlgorithm(JwtAlgorithm::Rs256))
        );
        let v = verifier("algorithm = \"ES256\"\njwks_file = \"jwks.json\"");
        assert_eq!(v.verify(&ec), Ok("client-a".to_owned()));
    }

    #[test]
    fn settings_errors_name_the_field() {
        let cases: [(&str, &str); 8] = [
            ("algorithm = \"none\"\nsecret = \"x\"", "auth.jwt.algorithm"),
            ("secret = \"x\"", "auth.jwt.algorithm"),
            (
                &format!(
                    "algorithm = \"HS256\"\nsecret = \"{SECRET}\"\npublic_key_file = \"rsa-public.pem\""
                ),
                "auth.jwt.secret",
            ),
            (
                "algorithm = \"HS256\"\nsecret = \"short\"",
                "auth.jwt.secret",
            ),
            (
                "algorithm = \"RS256\"\npublic_key_file = \"missing.pem\"",
                "auth.jwt.public_key_file",
            ),
            (
                "algorithm = \"ES256\"\npublic_key_file = \"rsa-public.pem\"",
                "auth.jwt.public_key_file",
            ),
            (
                &format!("algorithm = \"RS256\"\nsecret = \"{SECRET}\""),
                "auth.jwt.algorithm",
            ),
            (
                "algorithm = \"RS256\"\npublic_key_file = \"rsa-public.pem\"\ncolour = 1",
                "auth.jwt.colour",
            ),
        ];
        for (toml, field) in cases {
            let errors = settings(toml).expect_err(toml);
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{toml}: {errors:?}"
            );
        }
    }
}
