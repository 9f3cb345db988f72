//! `[auth]`: how the proxy authenticates clients (OpenHIM's order: JWT, custom token, basic, mutual
//! TLS, each switched on or off here), how long a successful password check is remembered, and how
//! repeated failures are slowed down.

use std::time::Duration;

use serde_json::Value;

use super::fields::{FieldErrors, Fields};

/// How a client certificate identifies a client (`mutual_tls_lookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertLookup {
    /// By the fingerprint of the client's own certificate (the client's `certFingerprint`).
    Strict,
    /// OpenHIM's "in-chain": by the fingerprint of any authority the certificate chains to, so
    /// every certificate one CA issues identifies the client holding that CA's fingerprint.
    InChain,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Accept `Authorization: Basic` with a client's clientID and password. Default true.
    pub basic: bool,
    /// Accept a verified client certificate (HTTPS listener with client CAs). Default true.
    pub mutual_tls: bool,
    /// Accept `Authorization: Custom <token>` (a client's `customTokenID`). Default false.
    pub custom_token: bool,
    /// Accept `Authorization: Bearer <JWT>` whose `sub` is a clientID: on when `[auth.jwt]` says
    /// how tokens are verified (it has an `algorithm`; see [`crate::jwt::JwtSettings`]).
    pub jwt: bool,
    /// How a client certificate finds its client. Default `strict`.
    pub mutual_tls_lookup: CertLookup,
    /// The realm named in `WWW-Authenticate: Basic realm="…"`. Default `"Mediary"`.
    pub realm: String,
    /// How long a successful password check is remembered, so that a keep-alive client does not pay
    /// argon2 on every request. Default 60 s; a changed password ends it at once.
    pub cache_ttl: Duration,
    /// Most remembered checks. Default 10000.
    pub cache_capacity: usize,
    /// Most argon2 checks computed at once (each holds ~19 MiB). Default 4.
    pub concurrent_hashes: usize,
    /// Failures from one clientID or one IP address, within `backoff_window`, before further
    /// attempts are refused unchecked. Default 5.
    pub backoff_after: u32,
    /// Failures older than this are forgotten. Default 5 min.
    pub backoff_window: Duration,
    /// The first refusal period; each further failure doubles it. Default 1 s.
    pub backoff_initial: Duration,
    /// The longest refusal period. Default 5 min.
    pub backoff_max: Duration,
    /// Most clientIDs and addresses tracked for backoff (each table). Default 10000.
    pub backoff_capacity: usize,
}

impl Default for Auth {
    fn default() -> Self {
        parse_auth(
            &Value::Object(Default::default()),
            &mut FieldErrors::default(),
        )
    }
}

pub(super) fn parse_auth(value: &Value, errors: &mut FieldErrors) -> Auth {
    let mut f = Fields::new("auth", value, errors);
    let count = |f: &mut Fields<'_, '_>, key: &'static str, default: u64| -> u64 {
        f.parsed(key, |n: u64| {
            if n == 0 {
                Err("must be at least 1".to_owned())
            } else {
                Ok(n)
            }
        })
        .unwrap_or(default)
    };
    f.raw("jwt");
    let auth = Auth {
        basic: f.optional("basic").unwrap_or(true),
        mutual_tls: f.optional("mutual_tls").unwrap_or(true),
        custom_token: f.optional("custom_token").unwrap_or(false),
        // Set by `Config::parse` from `[auth.jwt]`, which `jwt::parse_settings` reads (taken here so
        // that `finish` does not call it unknown).
        jwt: false,
        mutual_tls_lookup: f
            .parsed("mutual_tls_lookup", |s: String| match s.as_str() {
                "strict" => Ok(CertLookup::Strict),
                "in-chain" => Ok(CertLookup::InChain),
                other => Err(format!("`{other}` is not \"strict\" or \"in-chain\"")),
            })
            .unwrap_or(CertLookup::Strict),
        realm: f
            .parsed("realm", |s: String| {
                if s.is_empty()
                    || s.contains(['"', '\\'])
                    || !s.is_ascii()
                    || s.chars().any(|c| c.is_ascii_control())
                {
                    Err(
                        "must be non-empty printable ASCII without quotes or backslashes"
                            .to_owned(),
                    )
                } else {
                    Ok(s)
                }
            })
            .unwrap_or_else(|| "Mediary".to_owned()),
        cache_ttl: f.duration("cache_ttl", Duration::from_secs(60)),
        cache_capacity: count(&mut f, "cache_capacity", 10_000) as usize,
        concurrent_hashes: count(&mut f, "concurrent_hashes", 4) as usize,
        backoff_after: u32::try_from(count(&mut f, "backoff_after", 5)).unwrap_or(u32::MAX),
        backoff_window: f.duration("backoff_window", Duration::from_secs(300)),
        backoff_initial: f.duration("backoff_initial", Duration::from_secs(1)),
        backoff_max: f.duration("backoff_max", Duration::from_secs(300)),
        backoff_capacity: count(&mut f, "backoff_capacity", 10_000) as usize,
    };
    if auth.backoff_max < auth.backoff_initial {
        f.error("backoff_max", "must not be shorter than backoff_initial");
    }
    f.finish();
    auth
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_errors() {
        let auth = Auth::default();
        assert!(auth.basic && auth.mutual_tls && !auth.custom_token && !auth.jwt);
        assert_eq!(auth.mutual_tls_lookup, CertLookup::Strict);
        let mut errors = FieldErrors::default();
        parse_auth(
            &json!({"mutual_tls_lookup": "chain", "backoff_after": 0, "realm": "a\"b",
                "backoff_initial": "10s", "backoff_max": "1s", "colour": 1}),
            &mut errors,
        );
        let text: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        for field in [
            "auth.mutual_tls_lookup",
            "auth.backoff_after",
            "auth.realm",
            "auth.backoff_max",
            "auth.colour",
        ] {
            assert!(
                text.iter().any(|e| e.starts_with(field)),
                "{field}: {text:?}"
            );
        }
    }
}
