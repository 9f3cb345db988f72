//! Mutual TLS and JWT client authentication through the real binary, a private channel and a real
//! upstream: client certificates made here (rcgen) identify the client whose `certFingerprint` is
//! theirs (SHA-256, an OpenHIM SHA-1, or the issuing CA's with `mutual_tls_lookup = "in-chain"`),
//! and `Authorization: Bearer` tokens signed here (HS256, RS256, ES256) identify their `sub`.
//! Anything else on a private channel is a 401, or no handshake at all.
//!
//! Clients are created through the management API (`POST /clients`), as an operator would.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mediary_e2e::{
    Client, HttpsReply, Mediary, ServerCert, TestCa, Upstream, Versions, eventually, https_client,
    https_get_using, https_get_with,
};
use serde_json::{Value, json};

/// A private channel on `^/private` allowing `allow` (roles or clientIDs), to `upstream`.
fn private_channel(allow: &[&str], upstream: &Upstream) -> String {
    format!(
        r#"
[[channels]]
name = "private"
urlPattern = "^/private"
methods = ["GET"]
authType = "private"
allow = {allow:?}

[[channels.routes]]
name = "upstream"
host = "127.0.0.1"
port = {port}
primary = true
"#,
        port = upstream.port()
    )
}

fn create_client(mediary: &Mediary, client: Value) -> Value {
    let reply = mediary.api().post("/clients", &client).send();
    assert_eq!(reply.status(), 201, "creating a client: {}", reply.text());
    reply.json()
}

/// Lower-case hex, as `certFingerprint` is usually written.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Upper-case hex pairs separated by colons, as OpenHIM stored `certFingerprint`.
fn openhim_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS

/// The certificates of one mutual-TLS test: the server's CA, the CA its clients' certificates
/// must chain to, and a CA nobody trusts.
struct Pki {
    server: TestCa,
    clients: TestCa,
    stranger: TestCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            server: TestCa::new("server CA"),
            clients: TestCa::new("client CA"),
            stranger: TestCa::new("another CA"),
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// A Mediary serving HTTPS with `clients` as its client CA (and `more_cas`), `[auth]` settings
    /// `auth`, and `channels`. The API stays on plain HTTP for the fixture's client.
    fn start(&self, auth: &str, more_cas: &[&TestCa], channels: &str) -> Mediary {
        self.start_with(auth, "", more_cas, channels)
    }

    /// [`Pki::start`] with more `[tls]` keys.
    fn start_with(&self, auth: &str, tls: &str, more_cas: &[&TestCa], channels: &str) -> Mediary {
        let (cert_file, key_file) = self
            .server
            .issue(&["localhost"])
            .write(self.dir.path(), "server");
        let mut ca_files = Vec::new();
        for (i, ca) in std::iter::once(&self.clients)
            .chain(more_cas.iter().copied())
            .enumerate()
        {
            let file = self.dir.path().join(format!("client-ca-{i}.pem"));
            std::fs::write(&file, ca.pem()).expect("write a client CA");
            ca_files.push(file);
        }
        Mediary::with_config(format!(
            r#"
[server]
bind = "127.0.0.1"
http_port = 0
https_port = 0
api_port = 0
workers = 1

[auth]
{auth}

[tls]
cert_file = {cert_file:?}
key_file = {key_file:?}
client_ca_files = {ca_files:?}
api = false
{tls}
{channels}"#
        ))
        .start()
    }

    /// `GET path` over HTTPS to `mediary`, presenting `cert` if given.
    fn get(
        &self,
        mediary: &Mediary,
        path: &str,
        cert: Option<&ServerCert>,
    ) -> Result<HttpsReply, String> {
        https_get_with(
            mediary.https_addr(),
            path,
            &[],
            &self.server,
            cert,
            Versions::Both,
        )
    }

    /// Like [`Pki::get`], expecting the handshake (and the request) to succeed.
    fn served(&self, mediary: &Mediary, path: &str, cert: Option<&ServerCert>) -> HttpsReply {
        self.get(mediary, path, cert)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", mediary.logs()))
    }
}

#[test]
fn a_registered_client_certificate_identifies_its_client() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start("", &[], &private_channel(&["emr"], &upstream));
    let known = pki.clients.issue_client("emr");
    create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "certFingerprint": hex(&known.sha256())}),
    );

    let reply = pki.served(&mediary, "/private/x", Some(&known));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    let seen = upstream.single_request();
    assert_eq!(seen.header_values("x-openhim-clientid"), vec!["emr"]);
    let tx_id = reply
        .header("x-openhim-transactionid")
        .expect("a transaction ID");
    let tx = mediary
        .api()
        .settled_transaction(tx_id, Duration::from_secs(10));
    assert_eq!(tx["clientID"], "emr", "{tx}");

    // TLS 1.2 identifies the client just the same.
    let reply = https_get_with(
        mediary.https_addr(),
        "/private/x",
        &[],
        &pki.server,
        Some(&known),
        Versions::Tls12,
    )
    .expect("a TLS 1.2 handshake");
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Trusted CA, in date, but no client has its fingerprint.
    let unregistered = pki.clients.issue_client("emr");
    let reply = pki.served(&mediary, "/private/x", Some(&unregistered));
    assert_eq!(reply.status, 401, "{}", reply.body);
    let metrics = mediary.api().metrics();
    assert_eq!(
        metrics.value(
            "mediary_auth_failures_total",
            &[
                ("mechanism", "mutual-tls"),
                ("reason", "unknown-certificate")
            ]
        ),
        1.0
    );

    // No certificate at all: a private channel challenges for basic credentials.
    let reply = pki.served(&mediary, "/private/x", None);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Basic realm="Mediary""#)
    );

    // Certificates that fail verification get no HTTP answer at all.
    for (what, cert) in [
        ("expired", pki.clients.issue_expired_client("emr")),
        ("another CA", pki.stranger.issue_client("emr")),
    ] {
        let result = pki.get(&mediary, "/private/x", Some(&cert));
        assert!(result.is_err(), "{what} was answered: {result:?}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "only the known client got through");
    assert_eq!(seen[1].header_values("x-openhim-clientid"), vec!["emr"]);
}

#[test]
fn an_openhim_sha1_fingerprint_identifies_its_client() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start("", &[], &private_channel(&["legacy"], &upstream));
    let cert = pki.clients.issue_client("legacy");
    let created = create_client(
        &mediary,
        json!({"clientID": "legacy", "name": "Legacy", "certFingerprint": openhim_hex(&cert.sha1())}),
    );
    assert!(created.get("certFingerprint").is_some(), "{created}");

    let reply = pki.served(&mediary, "/private/x", Some(&cert));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    assert_eq!(
        upstream
            .single_request()
            .header_values("x-openhim-clientid"),
        vec!["legacy"]
    );
    // Another certificate of the same CA is someone else.
    let other = pki.clients.issue_client("legacy");
    assert_eq!(pki.served(&mediary, "/private/x", Some(&other)).status, 401);
}

#[test]
fn in_chain_lookup_identifies_every_certificate_the_registered_ca_issued() {
    let pki = Pki::new();
    let other_ca = TestCa::new("second client CA");
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "mutual_tls_lookup = \"in-chain\"\nbasic = false",
        &[&other_ca],
        &private_channel(&["hospital"], &upstream),
    );
    create_client(
        &mediary,
        json!({"clientID": "hospital", "name": "Hospital", "certFingerprint": hex(&pki.clients.sha256())}),
    );

    for name in ["ward-1", "ward-2"] {
        let reply = pki.served(
            &mediary,
            "/private/x",
            Some(&pki.clients.issue_client(name)),
        );
        assert_eq!(
            reply.status,
            200,
            "{name}: {}\n{}",
            reply.body,
            mediary.logs()
        );
    }
    let seen = upstream.wait_for_requests(2, Duration::from_secs(5));
    for request in &seen {
        assert_eq!(
            request.header_values("x-openhim-clientid"),
            vec!["hospital"]
        );
    }

    // A certificate from the other trusted CA verifies, but that CA is nobody's.
    let reply = pki.served(
        &mediary,
        "/private/x",
        Some(&other_ca.issue_client("ward-3")),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    // A client of the other CA that also presents the registered CA's certificate (public, after
    // all) is still not its client: only the authorities its certificate was verified through
    // count, not whatever else it sent along.
    let mut smuggler = other_ca.issue_client("ward-4");
    smuggler.chain.push(pki.clients.der().clone());
    let reply = pki.served(&mediary, "/private/x", Some(&smuggler));
    assert_eq!(reply.status, 401, "an extra certificate named the client");
    // No certificate, and basic is off: 401 without a Basic challenge.
    let reply = pki.served(&mediary, "/private/x", None);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.header("www-authenticate"), None);
    assert_eq!(upstream.requests().len(), 2);
}

#[test]
fn in_chain_lookup_names_the_nearest_registered_authority_through_intermediates() {
    let pki = Pki::new();
    let department = pki.clients.intermediate("department CA");
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "mutual_tls_lookup = \"in-chain\"",
        &[],
        &private_channel(&["dept", "hospital"], &upstream),
    );
    create_client(
        &mediary,
        json!({"clientID": "hospital", "name": "Hospital", "certFingerprint": hex(&pki.clients.sha256())}),
    );

    // Through the intermediate (which the client presents) to the registered root.
    let mut via_department = department.issue_client("ward");
    via_department.chain.push(department.der().clone());
    let reply = pki.served(&mediary, "/private/x", Some(&via_department));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    // With the intermediate registered too, it is the nearer authority, so its client.
    create_client(
        &mediary,
        json!({"clientID": "dept", "name": "Department", "certFingerprint": hex(&department.sha256())}),
    );
    let reply = pki.served(&mediary, "/private/x", Some(&via_department));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    let direct = pki.clients.issue_client("front desk");
    let reply = pki.served(&mediary, "/private/x", Some(&direct));
    assert_eq!(reply.status, 200, "{}", reply.body);

    let seen = upstream.wait_for_requests(3, Duration::from_secs(5));
    let ids: Vec<_> = seen
        .iter()
        .map(|r| r.header_values("x-openhim-clientid").join(","))
        .collect();
    assert_eq!(ids, ["hospital", "dept", "hospital"]);
}

#[test]
fn in_chain_lookup_walks_up_through_configured_authorities() {
    // An operator's CA bundle often holds the intermediate beside its root: the chain then ends
    // at the intermediate, and the root above it still names the client (as in OpenHIM, which
    // walks up its keystore's CAs).
    let pki = Pki::new();
    let department = pki.clients.intermediate("department CA");
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "mutual_tls_lookup = \"in-chain\"",
        &[&department],
        &private_channel(&["hospital"], &upstream),
    );
    create_client(
        &mediary,
        json!({"clientID": "hospital", "name": "Hospital", "certFingerprint": hex(&pki.clients.sha256())}),
    );
    let reply = pki.served(
        &mediary,
        "/private/x",
        Some(&department.issue_client("ward")),
    );
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    assert_eq!(
        upstream
            .single_request()
            .header_values("x-openhim-clientid"),
        vec!["hospital"]
    );
}

#[test]
fn in_chain_lookup_tries_the_certificate_itself_first_and_openhim_sha1_authorities() {
    // OpenHIM's in-chain lookup looks for the certificate's own fingerprint first, then walks up
    // the chain; its fingerprints are SHA-1.
    let pki = Pki::new();
    let imported_ca = TestCa::new("imported client CA");
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "mutual_tls_lookup = \"in-chain\"",
        &[&imported_ca],
        &private_channel(&["own", "ca", "imported"], &upstream),
    );
    let own = pki.clients.issue_client("own");
    create_client(
        &mediary,
        json!({"clientID": "own", "name": "Own", "certFingerprint": hex(&own.sha256())}),
    );
    create_client(
        &mediary,
        json!({"clientID": "ca", "name": "CA", "certFingerprint": hex(&pki.clients.sha256())}),
    );
    let ca_sha1: [u8; 20] = {
        use sha1::Digest as _;
        sha1::Sha1::digest(imported_ca.der()).into()
    };
    create_client(
        &mediary,
        json!({"clientID": "imported", "name": "Imported", "certFingerprint": openhim_hex(&ca_sha1)}),
    );

    for cert in [
        own,
        pki.clients.issue_client("other"),
        imported_ca.issue_client("x"),
    ] {
        let reply = pki.served(&mediary, "/private/x", Some(&cert));
        assert_eq!(reply.status, 200, "{}\n{}", reply.body, mediary.logs());
    }
    let ids: Vec<_> = upstream
        .wait_for_requests(3, Duration::from_secs(5))
        .iter()
        .map(|r| r.header_values("x-openhim-clientid").join(","))
        .collect();
    assert_eq!(ids, ["own", "ca", "imported"]);
}

#[test]
fn a_resumed_session_identifies_nobody_once_its_ca_is_withdrawn() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start_with(
        "",
        "reload_interval = \"100ms\"",
        &[],
        &private_channel(&["emr"], &upstream),
    );
    let addr = mediary.https_addr();
    let cert = pki.clients.issue_client("emr");
    create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "certFingerprint": hex(&cert.sha256())}),
    );
    let sessions: Vec<_> = [Versions::Tls12, Versions::Tls13]
        .into_iter()
        .map(|versions| https_client(&pki.server, Some(&cert), versions))
        .collect();
    for config in &sessions {
        for round in 0..2 {
            let reply = https_get_using(addr, "/private/x", &[], config)
                .unwrap_or_else(|e| panic!("{e}\n{}", mediary.logs()));
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.resumed, round == 1, "the second connection resumes");
        }
    }

    // The operator withdraws the client CA.
    std::fs::write(pki.dir.path().join("client-ca-0.pem"), pki.stranger.pem())
        .expect("replace the client CA file");
    eventually(
        Duration::from_secs(10),
        "new handshakes refuse the certificate",
        || {
            pki.get(&mediary, "/private/x", Some(&cert))
                .is_err()
                .then_some(())
        },
    );
    let served = upstream.requests().len();
    for config in &sessions {
        // Resuming skips the certificate check of a full handshake: the session must not carry
        // the identity of a certificate no longer trusted.
        let reply = https_get_using(addr, "/private/x", &[], config)
            .unwrap_or_else(|e| panic!("{e}\n{}", mediary.logs()));
        assert!(reply.resumed, "the session was resumed");
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    assert_eq!(upstream.requests().len(), served);
}

#[test]
fn with_mutual_tls_off_a_certificate_identifies_nobody() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "mutual_tls = false",
        &[],
        &private_channel(&["emr"], &upstream),
    );
    let cert = pki.clients.issue_client("emr");
    create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "certFingerprint": hex(&cert.sha256())}),
    );
    let reply = pki.served(&mediary, "/private/x", Some(&cert));
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// JWT

/// `host/tests/data/jwt/<name>`.
fn jwt_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../host/tests/data/jwt")
        .join(name)
}

const HS_SECRET: &str = "an HS256 secret of at least 32 bytes, for tests";
const AUDIENCE: &str = "mediary-e2e";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims for `sub`, valid for five minutes, for [`AUDIENCE`].
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "aud": AUDIENCE, "iat": now(), "exp": now() + 300})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign a token")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        None,
        claims,
    )
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(jwt_data("rsa-private.pem")).expect("the RSA key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
    sign(Algorithm::RS256, &key, Some("rsa-1"), claims)
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(jwt_data("ec-private.pem")).expect("the EC key");
    let key = EncodingKey::from_ec_pem(&pem).expect("an EC key");
    sign(Algorithm::ES256, &key, Some("ec-1"), claims)
}

/// An unsigned token (`alg: none`), which must never be accepted.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A Mediary verifying JWTs as `jwt` (the `[auth.jwt]` table's keys) with a private channel
/// allowing the client `emr` (and the clients `emr` and `outsider`, with no secrets of their own).
fn start_jwt(jwt: &str, upstream: &Upstream) -> Mediary {
    let mediary = Mediary::with_config(format!(
        "[auth.jwt]\n{jwt}\n{}",
        private_channel(&["emr"], upstream)
    ))
    .start();
    create_client(&mediary, json!({"clientID": "emr", "name": "EMR"}));
    create_client(
        &mediary,
        json!({"clientID": "outsider", "name": "Outsider"}),
    );
    mediary
}

/// The status of `GET /private/x` with `Authorization: Bearer <token>`.
fn bearer(mediary: &Mediary, token: &str) -> u16 {
    Client::new()
        .get(mediary.url("/private/x"))
        .header("authorization", &format!("Bearer {token}"))
        .send()
        .status()
}

#[test]
fn hs256_tokens_identify_their_subject_and_bad_ones_are_refused() {
    let upstream = Upstream::echo();
    let mediary = start_jwt(
        &format!("algorithm = \"HS256\"\nsecret = {HS_SECRET:?}\naudience = {AUDIENCE:?}"),
        &upstream,
    );

    let reply = Client::new()
        .get(mediary.url("/private/x"))
        .header(
            "authorization",
            &format!("Bearer {}", hs256(&claims("emr"))),
        )
        .send();
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text(), mediary.logs());
    let seen = upstream.single_request();
    assert_eq!(seen.header_values("x-openhim-clientid"), vec!["emr"]);
    let tx = mediary
        .api()
        .settled_transaction(&reply.transaction_id(), Duration::from_secs(10));
    assert_eq!(tx["clientID"], "emr", "{tx}");

    // An audience among several is enough.
    let mut audiences = claims("emr");
    audiences["aud"] = json!(["another-service", AUDIENCE]);
    assert_eq!(
        bearer(&mediary, &hs256(&audiences)),
        200,
        "one of the audiences"
    );
    upstream.wait_for_requests(2, Duration::from_secs(5));

    let expired = json!({"sub": "emr", "aud": AUDIENCE, "iat": now() - 7200, "exp": now() - 3600});
    let mut not_yet = claims("emr");
    not_yet["nbf"] = json!(now() + 3600);
    let mut no_audience = claims("emr");
    no_audience.as_object_mut().unwrap().remove("aud");
    let mut wrong_audience = claims("emr");
    wrong_audience["aud"] = json!("someone-else");
    let mut no_exp = claims("emr");
    no_exp.as_object_mut().unwrap().remove("exp");
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret, also 32 bytes or more"),
        None,
        &claims("emr"),
    );
    for (what, token) in [
        ("expired", hs256(&expired)),
        ("alg none", unsigned(&claims("emr"))),
        ("wrong audience", hs256(&wrong_audience)),
        ("no exp", hs256(&no_exp)),
        ("not yet valid", hs256(&not_yet)),
        ("no audience", hs256(&no_audience)),
        ("another secret", other_secret),
        ("unknown subject", hs256(&claims("nobody"))),
        (
            "a client the channel does not allow",
            hs256(&claims("outsider")),
        ),
        ("not a JWT", "emr".to_owned()),
    ] {
        assert_eq!(bearer(&mediary, &token), 401, "{what}");
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "only the valid tokens got through"
    );
    // Each was refused for what it is: eight bad tokens, one unknown subject (the client the
    // channel does not allow is the channel's refusal, not the token's).
    let metrics = mediary.api().metrics();
    let failures = |mechanism: &str, reason: &str| {
        metrics.value(
            "mediary_auth_failures_total",
            &[("mechanism", mechanism), ("reason", reason)],
        )
    };
    assert_eq!(failures("jwt", "invalid-token"), 8.0);
    assert_eq!(failures("jwt", "unknown-client"), 1.0);
}

#[test]
fn rs256_tokens_identify_their_subject_and_the_public_key_is_no_hmac_secret() {
    let upstream = Upstream::echo();
    let public_key = jwt_data("rsa-public.pem");
    let mediary = start_jwt(
        &format!("algorithm = \"RS256\"\npublic_key_file = {public_key:?}"),
        &upstream,
    );
    assert_eq!(
        bearer(&mediary, &rs256(&claims("emr"))),
        200,
        "{}",
        mediary.logs()
    );
    assert_eq!(
        upstream
            .single_request()
            .header_values("x-openhim-clientid"),
        vec!["emr"]
    );

    // The classic confusion: HS256 with the RSA public key's PEM as the HMAC secret.
    let pem = std::fs::read(&public_key).expect("the public key");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        None,
        &claims("emr"),
    );
    assert_eq!(
        bearer(&mediary, &confused),
        401,
        "HS256 with the public key as secret"
    );
    assert_eq!(bearer(&mediary, &unsigned(&claims("emr"))), 401, "alg none");
    assert_eq!(
        bearer(&mediary, &es256(&claims("emr"))),
        401,
        "another algorithm"
    );
    let mut expired = claims("emr");
    expired["exp"] = json!(now() - 3600);
    assert_eq!(bearer(&mediary, &rs256(&expired)), 401, "expired");
    assert_eq!(
        bearer(&mediary, &rs256(&claims("outsider"))),
        401,
        "not allowed"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn es256_tokens_identify_their_subject() {
    let upstream = Upstream::echo();
    let public_key = jwt_data("ec-public.pem");
    let mediary = start_jwt(
        &format!(
            "algorithm = \"ES256\"\npublic_key_file = {public_key:?}\nissuer = \"https://idp.test\""
        ),
        &upstream,
    );
    let mut good = claims("emr");
    good["iss"] = json!("https://idp.test");
    assert_eq!(bearer(&mediary, &es256(&good)), 200, "{}", mediary.logs());
    assert_eq!(
        upstream
            .single_request()
            .header_values("x-openhim-clientid"),
        vec!["emr"]
    );
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("https://elsewhere.test");
    assert_eq!(bearer(&mediary, &es256(&wrong_issuer)), 401, "wrong issuer");
    assert_eq!(bearer(&mediary, &es256(&claims("emr"))), 401, "no issuer");
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn a_jwks_file_verifies_tokens_by_kid() {
    let upstream = Upstream::echo();
    let jwks = jwt_data("jwks.json");
    let mediary = start_jwt(
        &format!("algorithm = \"RS256\"\njwks_file = {jwks:?}"),
        &upstream,
    );
    assert_eq!(
        bearer(&mediary, &rs256(&claims("emr"))),
        200,
        "{}",
        mediary.logs()
    );
    let pem = std::fs::read(jwt_data("rsa-private.pem")).expect("the RSA key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
    let unknown_kid = sign(Algorithm::RS256, &key, Some("rsa-2"), &claims("emr"));
    assert_eq!(bearer(&mediary, &unknown_kid), 401, "unknown kid");
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn a_changed_or_deleted_client_no_longer_answers_to_its_old_certificate() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start("", &[], &private_channel(&["emr"], &upstream));
    let first = pki.clients.issue_client("emr");
    let second = pki.clients.issue_client("emr");
    let created = create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "certFingerprint": hex(&first.sha256())}),
    );
    let id = created["_id"].as_str().expect("an _id");
    assert_eq!(pki.served(&mediary, "/private/x", Some(&first)).status, 200);

    let api = mediary.api();
    let updated = api
        .put(
            &format!("/clients/{id}"),
            &json!({"certFingerprint": openhim_hex(&second.sha256())}),
        )
        .send();
    assert_eq!(updated.status(), 200, "{}", updated.text());
    assert_eq!(
        pki.served(&mediary, "/private/x", Some(&first)).status,
        401,
        "the old certificate"
    );
    assert_eq!(
        pki.served(&mediary, "/private/x", Some(&second)).status,
        200,
        "the new one"
    );

    assert_eq!(api.delete(&format!("/clients/{id}")).send().status(), 200);
    assert_eq!(
        pki.served(&mediary, "/private/x", Some(&second)).status,
        401,
        "deleted"
    );
    assert_eq!(upstream.requests().len(), 2);
}

#[test]
fn a_certificate_or_custom_token_names_one_client_only() {
    let pki = Pki::new();
    let upstream = Upstream::echo();
    let mediary = pki.start(
        "custom_token = true",
        &[],
        &private_channel(&["first"], &upstream),
    );
    let cert = pki.clients.issue_client("shared");
    create_client(
        &mediary,
        json!({"clientID": "first", "name": "First", "certFingerprint": hex(&cert.sha256()),
            "customTokenID": "tok-first-123456"}),
    );
    let api = mediary.api();
    // The same fingerprint, even written the OpenHIM way, is another client's: which of the two
    // a certificate identified would be up to chance.
    let second = api
        .post(
            "/clients",
            &json!({"clientID": "second", "name": "Second", "certFingerprint": openhim_hex(&cert.sha256())}),
        )
        .send();
    assert_eq!(second.status(), 409, "{}", second.text());
    assert!(
        second.text().contains("certFingerprint"),
        "{}",
        second.text()
    );
    let third = api
        .post(
            "/clients",
            &json!({"clientID": "third", "name": "Third", "customTokenID": "tok-first-123456"}),
        )
        .send();
    assert_eq!(third.status(), 409, "{}", third.text());
    // Nor can an existing client take them over by an update.
    let other = create_client(&mediary, json!({"clientID": "fourth", "name": "Fourth"}));
    let id = other["_id"].as_str().expect("an _id");
    let taken = api
        .put(
            &format!("/clients/{id}"),
            &json!({"certFingerprint": hex(&cert.sha256())}),
        )
        .send();
    assert_eq!(taken.status(), 409, "{}", taken.text());
    // A client keeps its own when updated.
    let first = api.get("/clients/first?byNamedClientID=true").send().json();
    let first_id = first["_id"].as_str().expect("an _id");
    let renamed = api
        .put(
            &format!("/clients/{first_id}"),
            &json!({"name": "Renamed", "certFingerprint": hex(&cert.sha256()), "customTokenID": "tok-first-123456"}),
        )
        .send();
    assert_eq!(renamed.status(), 200, "{}", renamed.text());

    let reply = pki.served(&mediary, "/private/x", Some(&cert));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        upstream
            .single_request()
            .header_values("x-openhim-clientid"),
        vec!["first"]
    );
}
