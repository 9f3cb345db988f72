//! Client authentication and channel authorisation on the proxy: basic and
//! custom-token credentials (valid, missing, wrong), a channel's `allow` and
//! `whitelist`, no fallthrough to a lower-priority channel, the clientID
//! upstream and in the transaction, OpenHIM-imported passwords re-hashed on
//! first use, and backoff after repeated failures.
//!
//! Clients are created through the management API (`POST /clients`), as an
//! operator would.

use std::time::{Duration, Instant};

use mediary_e2e::{Client, Mediary, Upstream};
use serde_json::{Value, json};

/// A channel on `pattern` to `upstream`, with extra keys (`authType`, `allow`, ...).
fn channel(name: &str, pattern: &str, extra: &str, upstream: &Upstream) -> String {
    format!(
        r#"
[[channels]]
name = "{name}"
urlPattern = "{pattern}"
methods = ["GET", "POST"]
{extra}

[[channels.routes]]
name = "{name} route"
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

/// A Mediary with `[auth]` settings `auth` and the channels `channels`.
fn start(auth: &str, channels: String) -> Mediary {
    Mediary::with_config(format!("[auth]\n{auth}\n{channels}")).start()
}

#[test]
fn basic_auth_valid_missing_and_wrong() {
    let upstream = Upstream::echo();
    let mediary = start(
        "",
        channel(
            "private",
            "^/private",
            r#"authType = "private"
allow = ["fhir"]"#,
            &upstream,
        ),
    );
    let created = create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "roles": ["fhir"], "password": "s3cret"}),
    );
    assert_eq!(created["passwordSet"], true);
    assert!(created.get("passwordHash").is_none() && created.get("password").is_none());
    let client = Client::new();

    let ok = client
        .get(mediary.url("/private"))
        .basic_auth("emr", "s3cret")
        .send();
    assert_eq!(ok.status(), 200, "{}", ok.text());
    // A keep-alive client is served again (from the remembered check).
    for _ in 0..3 {
        let again = client
            .get(mediary.url("/private"))
            .basic_auth("emr", "s3cret")
            .send();
        assert_eq!(again.status(), 200);
    }

    let missing = client.get(mediary.url("/private")).send();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Basic realm="Mediary""#)
    );
    let wrong = client
        .get(mediary.url("/private"))
        .basic_auth("emr", "nope")
        .send();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.header("www-authenticate").is_some());
    let unknown = client
        .get(mediary.url("/private"))
        .basic_auth("stranger", "s3cret")
        .send();
    assert_eq!(unknown.status(), 401);
    assert_eq!(upstream.requests().len(), 4);

    let audit = mediary.logs();
    assert!(audit.contains("mediary::audit"), "{audit}");
    assert!(!audit.contains("s3cret"), "a password reached the log");
}

#[test]
fn custom_tokens_authenticate_when_enabled() {
    let upstream = Upstream::echo();
    let mediary = start(
        "custom_token = true",
        channel(
            "private",
            "^/private",
            r#"authType = "private"
allow = ["lab"]"#,
            &upstream,
        ),
    );
    let created = create_client(
        &mediary,
        json!({"clientID": "lab", "name": "Lab", "customTokenID": "tok-123456789"}),
    );
    assert_eq!(created["customTokenSet"], true);
    assert!(created.get("customTokenID").is_none());
    let client = Client::new();
    let call = |value: Option<&str>| {
        let mut call = client.get(mediary.url("/private"));
        if let Some(value) = value {
            call = call.header("authorization", value);
        }
        call.send()
    };

    assert_eq!(call(Some("Custom tok-123456789")).status(), 200);
    let missing = call(None);
    assert_eq!(missing.status(), 401);
    assert!(missing.header("www-authenticate").is_some());
    let wrong = call(Some("Custom tok-999"));
    assert_eq!(wrong.status(), 401);
    assert!(wrong.header("www-authenticate").is_some());
    // Bearer tokens authenticate nobody while JWT is disabled.
    assert_eq!(call(Some("Bearer tok-123456789")).status(), 401);
}

#[test]
fn roles_allow_and_whitelist_decide() {
    let upstream = Upstream::echo();
    let mediary = start(
        "",
        channel(
            "by-role",
            "^/role",
            r#"authType = "private"
allow = ["fhir"]"#,
            &upstream,
        ) + &channel(
            "by-id",
            "^/id",
            r#"authType = "private"
allow = ["b"]"#,
            &upstream,
        ) + &channel(
            "far",
            "^/far",
            r#"authType = "private"
allow = ["fhir"]
whitelist = ["10.0.0.0/8"]"#,
            &upstream,
        ) + &channel(
            "near",
            "^/near",
            r#"authType = "private"
allow = ["fhir"]
whitelist = ["192.168.0.1", "127.0.0.0/8"]"#,
            &upstream,
        ) + &channel(
            "walled",
            "^/walled",
            r#"authType = "public"
whitelist = ["::2"]"#,
            &upstream,
        ) + &channel("open", "^/open", r#"authType = "public""#, &upstream),
    );
    create_client(
        &mediary,
        json!({"clientID": "a", "name": "A", "roles": ["fhir"], "password": "pa"}),
    );
    create_client(
        &mediary,
        json!({"clientID": "b", "name": "B", "roles": ["other"], "password": "pb"}),
    );
    let client = Client::new();
    let status = |path: &str, who: Option<(&str, &str)>| {
        let mut call = client.get(mediary.url(path));
        if let Some((user, password)) = who {
            call = call.basic_auth(user, password);
        }
        call.send().status()
    };
    let a = Some(("a", "pa"));
    let b = Some(("b", "pb"));

    assert_eq!(status("/role", a), 200, "allowed by role");
    assert_eq!(status("/role", b), 401, "wrong role");
    assert_eq!(status("/id", b), 200, "allowed by clientID");
    assert_eq!(status("/id", a), 401, "neither role nor clientID");
    assert_eq!(status("/far", a), 401, "address outside the whitelist");
    assert_eq!(status("/near", a), 200, "address inside the whitelist");
    assert_eq!(
        status("/walled", None),
        401,
        "whitelists bind public channels too"
    );
    assert_eq!(status("/open", None), 200, "public channels are open");
    assert_eq!(status("/open", a), 200);
    assert_eq!(status("/nothing", a), 404, "no channel stays 404");
}

#[test]
fn the_matched_channel_decides_without_fallthrough() {
    let private = Upstream::fixed(200, "private");
    let public = Upstream::fixed(200, "public");
    let mediary = start(
        "",
        channel(
            "private first",
            "^/patient",
            r#"authType = "private"
allow = ["fhir"]
priority = 1"#,
            &private,
        ) + &channel(
            "public later",
            "^/patient",
            r#"authType = "public"
priority = 2"#,
            &public,
        ),
    );
    let reply = Client::new().get(mediary.url("/patient/1")).send();
    assert_eq!(reply.status(), 401);
    assert!(private.requests().is_empty() && public.requests().is_empty());
}

#[test]
fn the_client_id_goes_upstream_and_into_the_transaction() {
    let upstream = Upstream::echo();
    let mediary = start(
        "",
        channel(
            "private",
            "^/private",
            r#"authType = "private"
allow = ["emr"]"#,
            &upstream,
        ) + &channel("open", "^/open", r#"authType = "public""#, &upstream),
    );
    create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "password": "pw"}),
    );
    let client = Client::new();

    let reply = client
        .get(mediary.url("/private"))
        .basic_auth("emr", "pw")
        .header("x-openhim-clientid", "someone-else")
        .send();
    assert_eq!(reply.status(), 200);
    let seen = upstream.single_request();
    assert_eq!(seen.header_values("x-openhim-clientid"), vec!["emr"]);
    assert!(
        seen.header("authorization").is_none(),
        "credentials stay here"
    );
    let tx = mediary
        .api()
        .settled_transaction(&reply.transaction_id(), Duration::from_secs(10));
    assert_eq!(tx["clientID"], "emr");

    // An anonymous request cannot name itself either.
    let spoofed = client
        .get(mediary.url("/open"))
        .header("x-openhim-clientid", "emr")
        .send();
    assert_eq!(spoofed.status(), 200);
    let seen = upstream.wait_for_requests(2, Duration::from_secs(5));
    assert!(seen[1].header("x-openhim-clientid").is_none());
    let tx = mediary
        .api()
        .settled_transaction(&spoofed.transaction_id(), Duration::from_secs(10));
    assert!(tx.get("clientID").is_none(), "{tx}");
}

#[test]
fn an_openhim_hashed_client_authenticates_and_is_rehashed() {
    let upstream = Upstream::echo();
    let mediary = start(
        "",
        channel(
            "private",
            "^/private",
            r#"authType = "private"
allow = ["legacy"]"#,
            &upstream,
        ),
    );
    // sha512("openhim-pw" + "a1b2c3d4"), as OpenHIM stores it.
    let hash = "25a6fb362e726ca32533717e35f4834b92d721dbfaf691d70684252d71a0f87f\
                f92b89be871d58a17161a70d2e87471c019d152e0b9063a7ee088d09d26c6bc6";
    let created = create_client(
        &mediary,
        json!({"clientID": "legacy", "name": "Legacy", "passwordAlgorithm": "sha512",
            "passwordHash": hash, "passwordSalt": "a1b2c3d4"}),
    );
    assert_eq!(created["passwordAlgorithm"], "sha512");
    assert!(created.get("passwordHash").is_none() && created.get("passwordSalt").is_none());
    let client = Client::new();
    let wrong = client
        .get(mediary.url("/private"))
        .basic_auth("legacy", "openhim-PW")
        .send();
    assert_eq!(wrong.status(), 401);
    let ok = client
        .get(mediary.url("/private"))
        .basic_auth("legacy", "openhim-pw")
        .send();
    assert_eq!(ok.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = mediary
            .api()
            .get("/clients/legacy?byNamedClientID=true")
            .send()
            .json();
        if stored["passwordAlgorithm"] == "argon2id" || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stored["passwordAlgorithm"], "argon2id", "{stored}");
    // And the password still works, now against the argon2id hash.
    let again = Client::new()
        .get(mediary.url("/private"))
        .basic_auth("legacy", "openhim-pw")
        .send();
    assert_eq!(again.status(), 200);
}

#[test]
fn repeated_failures_back_off() {
    let upstream = Upstream::echo();
    let mediary = start(
        "backoff_after = 3\nbackoff_initial = \"30s\"",
        channel(
            "private",
            "^/private",
            r#"authType = "private"
allow = ["emr"]"#,
            &upstream,
        ),
    );
    create_client(
        &mediary,
        json!({"clientID": "emr", "name": "EMR", "password": "pw"}),
    );
    let client = Client::new();
    let attempt = |password: &str| {
        client
            .get(mediary.url("/private"))
            .basic_auth("emr", password)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(attempt("guess").status(), 401);
    }
    let refused = attempt("guess");
    assert_eq!(refused.status(), 429, "{}", refused.text());
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Even the right password waits: the attempt is not checked.
    assert_eq!(attempt("pw").status(), 429);

    let metrics = mediary.api().metrics();
    assert_eq!(
        metrics.value(
            "mediary_auth_failures_total",
            &[("mechanism", "basic"), ("reason", "wrong-password")]
        ),
        3.0
    );
    assert!(metrics.value("mediary_auth_backoff_total", &[]) >= 2.0);
    assert!(upstream.requests().is_empty());
}

#[test]
fn client_api_checks_and_hides_secrets() {
    let mediary = start("", String::new());
    let api = mediary.api();
    let bad = api
        .post(
            "/clients",
            &json!({"clientID": "admin", "certFingerprint": "xyz", "roles": "r"}),
        )
        .send();
    assert_eq!(bad.status(), 400);
    let text = bad.text();
    for field in ["clientID", "name", "certFingerprint", "roles"] {
        assert!(text.contains(field), "{field} not named in {text}");
    }
    let created = create_client(
        &mediary,
        json!({"clientID": "c", "name": "C", "password": "pw", "certFingerprint": "ab".repeat(32)}),
    );
    let id = created["_id"].as_str().unwrap();
    assert_eq!(
        api.post("/clients", &json!({"clientID": "c", "name": "again"}))
            .send()
            .status(),
        409
    );
    let listed = api.get("/clients").send().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("argon2id$"));
    let updated = api
        .put(&format!("/clients/{id}"), &json!({"name": "Renamed"}))
        .send();
    assert_eq!(updated.status(), 200);
    assert_eq!(updated.json()["passwordSet"], true);
    assert_eq!(api.delete(&format!("/clients/{id}")).send().status(), 200);
    assert_eq!(api.get(&format!("/clients/{id}")).send().status(), 404);
}
