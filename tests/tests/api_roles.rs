//! API users' roles and console sessions against the real binary: which endpoints each built-in
//! role may call (2xx) and which it may not (403 naming the permission), users without a role,
//! requests without credentials, and `POST /authenticate/local` sessions: the cookie, logout, a
//! wrong password, the CSRF guard, and a session accepted by a second instance sharing the Redis
//! store.

use std::time::{SystemTime, UNIX_EPOCH};

use mediary_e2e::{Api, Client, Mediary, Redis, Reply, channel_json, unused_port};
use serde_json::json;

const PASSWORD: &str = "a-good-password";

/// Creates a user with `groups` through the root user's API; returns the API as that user.
fn user(root: &Api, email: &str, groups: &[&str]) -> Api {
    let reply = root
        .post(
            "/users",
            &json!({
                "email": email,
                "firstname": "E2E",
                "surname": email,
                "groups": groups,
                "password": PASSWORD,
            }),
        )
        .send();
    assert_eq!(reply.status(), 201, "creating {email}: {}", reply.text());
    assert!(
        reply.json().get("passwordHash").is_none(),
        "{}",
        reply.text()
    );
    root.as_user(email, PASSWORD)
}

/// The status of one call, with its body when it failed (for assertion messages).
fn status(reply: &Reply) -> (u16, String) {
    (reply.status(), reply.text())
}

#[test]
fn each_role_may_call_what_its_permissions_allow() {
    let mediary = Mediary::with_config("").start();
    let root = mediary.api();
    let admin = user(&root, "admin@example.org", &["admin"]);
    let manager = user(&root, "manager@example.org", &["manager"]);
    let operator = user(&root, "operator@example.org", &["operator"]);
    // The API refuses unknown role names, so a user without a role has none at all.
    let nobody = user(&root, "nobody@example.org", &[]);

    // (who, expected statuses in the order of the calls below)
    let cases: [(&str, &Api, [u16; 12]); 4] = [
        (
            "admin",
            &admin,
            [200, 201, 200, 200, 200, 201, 200, 200, 200, 200, 200, 200],
        ),
        (
            "manager",
            &manager,
            [200, 201, 200, 200, 200, 403, 200, 200, 200, 200, 200, 200],
        ),
        (
            "operator",
            &operator,
            [200, 403, 200, 403, 403, 403, 403, 200, 200, 200, 403, 200],
        ),
        (
            "nobody",
            &nobody,
            [403, 403, 403, 403, 403, 403, 403, 403, 200, 403, 403, 403],
        ),
    ];
    for (who, api, expected) in cases {
        let email = format!("{who}@example.org");
        let calls = [
            ("GET /channels", api.get("/channels").send()),
            (
                "POST /channels",
                api.post(
                    "/channels",
                    &channel_json(&format!("by-{who}"), &format!("^/{who}$"), 9),
                )
                .send(),
            ),
            ("GET /transactions", api.get("/transactions").send()),
            ("GET /plugins", api.get("/plugins").send()),
            ("GET /users", api.get("/users").send()),
            (
                "POST /users",
                api.post(
                    "/users",
                    &json!({"email": format!("new-by-{who}@example.org"), "firstname": "N",
                        "surname": "U", "groups": ["operator"]}),
                )
                .send(),
            ),
            ("GET /roles", api.get("/roles").send()),
            ("GET /metrics", api.get("/metrics").send()),
            ("GET /me", api.get("/me").send()),
            (
                "GET /users/<self>",
                api.get(&format!("/users/{email}")).send(),
            ),
            (
                "GET /users/<other>",
                api.get("/users/manager@example.org").send(),
            ),
            ("GET /cluster", api.get("/cluster").send()),
        ];
        for ((what, reply), want) in calls.iter().zip(expected) {
            assert_eq!(reply.status(), want, "{who}: {what}: {}", reply.text());
            if want == 403 {
                let error = reply.json();
                assert_eq!(error["blame"], "client", "{error}");
                if who == "nobody" {
                    assert!(
                        error["error"]
                            .as_str()
                            .unwrap()
                            .contains("does not have an access role specified"),
                        "{error}"
                    );
                } else {
                    assert!(error["permission"].is_string(), "{who}: {what}: {error}");
                }
            }
        }
    }

    // The 403 names the missing permission.
    let reply = operator
        .post("/channels", &channel_json("x", "^/x$", 9))
        .send();
    assert_eq!(reply.json()["permission"], "channel-manage-all");
    // Nobody sees a password hash.
    let users = admin.get("/users").send().json();
    assert!(users.as_array().unwrap().len() >= 5, "{users}");
    assert!(!users.to_string().contains("passwordHash"), "{users}");
    // Roles list OpenHIM's permissions.
    let roles = admin.get("/roles/operator").send().json();
    assert_eq!(roles["permissions"]["transaction-view-body-all"], true);
    assert_eq!(roles["permissions"]["channel-manage-all"], false);

    // A user changes its own names but not its own groups; a manager cannot change anyone's.
    let reply = operator
        .put(
            "/users/operator@example.org",
            &json!({"firstname": "Opal", "groups": ["operator"]}),
        )
        .send();
    assert_eq!(status(&reply).0, 200, "{}", reply.text());
    let reply = operator
        .put("/users/operator@example.org", &json!({"groups": ["admin"]}))
        .send();
    assert_eq!(reply.status(), 403, "{}", reply.text());
    assert_eq!(reply.json()["permission"], "user-manage");
    let reply = manager
        .put("/users/operator@example.org", &json!({"surname": "X"}))
        .send();
    assert_eq!(reply.status(), 403, "{}", reply.text());
    // Unknown roles are refused by name.
    let reply = admin
        .put(
            "/users/operator@example.org",
            &json!({"groups": ["operator", "superuser"]}),
        )
        .send();
    assert_eq!(reply.status(), 400, "{}", reply.text());
    assert_eq!(reply.json()["errors"][0]["field"], "groups[1]");
    // The root user stays.
    assert_eq!(admin.delete("/users/root@openhim.org").send().status(), 409);
    assert_eq!(
        admin.delete("/users/nobody@example.org").send().status(),
        200
    );
    assert_eq!(nobody.get("/me").send().status(), 401);
}

#[test]
fn no_or_wrong_credentials_are_401() {
    let mediary = Mediary::with_config("").start();
    let client = Client::new();
    for path in ["/channels", "/users", "/me", "/roles"] {
        let reply = client.get(mediary.api_url(path)).send();
        assert_eq!(reply.status(), 401, "{path}: {}", reply.text());
        assert!(reply.header("www-authenticate").is_some(), "{path}");
    }
    let reply = mediary
        .api()
        .as_user("root@openhim.org", "wrong-password")
        .get("/channels")
        .send();
    assert_eq!(reply.status(), 401, "{}", reply.text());
    let metrics = mediary.api().get("/metrics").send().text();
    assert!(
        metrics.contains("mediary_api_auth_failures_total{method=\"basic\"} 1"),
        "{metrics}"
    );
    assert!(mediary.logs().contains("An API login failed."));
    assert!(!mediary.logs().contains("wrong-password"));
}

/// `POST /authenticate/local` on `api_url`; the reply.
fn login(client: &Client, url: String, email: &str, password: &str) -> Reply {
    client
        .post(url)
        .json(&json!({"username": email, "password": password}))
        .send()
}

/// The `name=value` of a `Set-Cookie` reply header, and its attributes.
fn cookie(reply: &Reply) -> (String, String) {
    let set = reply
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {}", reply.text()));
    let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
    (pair.trim().to_owned(), attributes.to_owned())
}

#[test]
fn a_console_session_authenticates_until_logout() {
    let mediary = Mediary::with_config("[api]\nsession_ttl = \"10m\"\n").start();
    let client = Client::new();
    let root = mediary.api();
    user(&root, "op@example.org", &["operator"]);

    let wrong = login(
        &client,
        mediary.api_url("/authenticate/local"),
        "op@example.org",
        "not-the-password",
    );
    assert_eq!(wrong.status(), 401, "{}", wrong.text());
    assert!(wrong.header("set-cookie").is_none());
    // A console shows its own page, not the browser's Basic dialog.
    assert!(wrong.header("www-authenticate").is_none());
    let unknown = login(
        &client,
        mediary.api_url("/authenticate/local"),
        "ghost@example.org",
        PASSWORD,
    );
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong.json()["error"], unknown.json()["error"]);

    let ok = login(
        &client,
        mediary.api_url("/authenticate/local"),
        "OP@example.org",
        PASSWORD,
    );
    assert_eq!(ok.status(), 200, "{}", ok.text());
    assert_eq!(ok.json()["email"], "op@example.org");
    assert!(ok.json().get("passwordHash").is_none());
    let (pair, attributes) = cookie(&ok);
    assert!(
        pair.starts_with("mediary.sid=") && pair.len() > 40,
        "{pair}"
    );
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=600",
        "Secure",
    ] {
        assert!(
            attributes.contains(attribute),
            "{attribute} in {attributes}"
        );
    }

    let with_cookie = |call: mediary_e2e::client::Call| call.header("cookie", &pair);
    let channels = with_cookie(client.get(mediary.api_url("/channels"))).send();
    assert_eq!(channels.status(), 200, "{}", channels.text());
    let me = with_cookie(client.get(mediary.api_url("/me"))).send();
    assert_eq!(me.json()["email"], "op@example.org");
    // The session has the operator's roles.
    let users = with_cookie(client.get(mediary.api_url("/users"))).send();
    assert_eq!(users.status(), 403);

    // A state-changing request with only the cookie must show it comes from a script.
    let tx = "0190f1f0-0000-7000-8000-000000000000";
    let forged =
        with_cookie(client.post(mediary.api_url(&format!("/transactions/{tx}/rerun")))).send();
    assert_eq!(forged.status(), 403, "{}", forged.text());
    assert!(forged.text().contains("X-Requested-With"));
    let scripted = with_cookie(client.post(mediary.api_url(&format!("/transactions/{tx}/rerun"))))
        .header("x-requested-with", "XMLHttpRequest")
        .send();
    assert_eq!(scripted.status(), 404, "{}", scripted.text());

    let out = with_cookie(client.get(mediary.api_url("/logout"))).send();
    assert_eq!(out.status(), 200, "{}", out.text());
    let (cleared, attributes) = cookie(&out);
    assert_eq!(cleared, "mediary.sid=");
    assert!(attributes.contains("Max-Age=0"), "{attributes}");
    let after = with_cookie(client.get(mediary.api_url("/channels"))).send();
    assert_eq!(after.status(), 401, "{}", after.text());
    assert!(after.header("www-authenticate").is_none());

    let metrics = root.get("/metrics").send().text();
    assert!(
        metrics.contains("mediary_api_auth_failures_total{method=\"local\"} 2"),
        "{metrics}"
    );
    let logs = mediary.logs();
    assert!(logs.contains("An API login failed."), "{logs}");
    assert!(logs.contains("ghost@example.org"));
    assert!(!logs.contains("not-the-password"));
}

/// The config of one instance on the shared Redis store.
fn instance_config(name: &str, url: &str, prefix: &str) -> String {
    format!(
        r#"[server]
bind = "127.0.0.1"
http_port = {http}
api_port = {api}
instance = "{name}"

[store]
data_dir = "data"
url = "{url}"
prefix = "{prefix}"
"#,
        http = unused_port(),
        api = unused_port(),
    )
}

#[test]
fn a_session_is_accepted_by_every_instance_sharing_the_store() {
    let redis = Redis::start();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .subsec_nanos();
    let prefix = format!("e2e-sessions-{}-{nanos}:", std::process::id());
    let first = Mediary::with_config(instance_config("s1", &redis.url(), &prefix)).start();
    let second = Mediary::with_config(instance_config("s2", &redis.url(), &prefix)).start();
    let client = Client::new();

    let ok = login(
        &client,
        first.api_url("/authenticate/local"),
        "root@openhim.org",
        mediary_e2e::ROOT_PASSWORD,
    );
    assert_eq!(ok.status(), 200, "{}", ok.text());
    let (pair, _) = cookie(&ok);
    let on_second = client
        .get(second.api_url("/me"))
        .header("cookie", &pair)
        .send();
    assert_eq!(on_second.status(), 200, "{}", on_second.text());
    assert_eq!(on_second.json()["email"], "root@openhim.org");

    // Only a digest of the id is stored.
    let id = pair.trim_start_matches("mediary.sid=");
    let keys = redis.keys("*");
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains(id)), "{keys:?}");

    // Logging out on the second ends it on the first.
    let out = client
        .get(second.api_url("/logout"))
        .header("cookie", &pair)
        .send();
    assert_eq!(out.status(), 200);
    let after = client
        .get(first.api_url("/channels"))
        .header("cookie", &pair)
        .send();
    assert_eq!(after.status(), 401, "{}", after.text());
}
