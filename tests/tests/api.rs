//! The management API against the real binary: probes and heartbeat without credentials, HTTP Basic
//! for everything else, channels managed through the API and served by the proxy, transaction
//! listings with OpenHIM's filters, representations and stable pages, rerun, and metrics.

use std::time::Duration;

use mediary_e2e::{
    Client, Mediary, ROOT_EMAIL, ROOT_PASSWORD, Upstream, channel_json, eventually, filters,
    is_uuid_v7, public_channel, url_encode,
};
use serde_json::{Value, json};

/// How long a recorded transaction may take to show in a listing, and a channel change to reach
/// the proxy.
const SETTLE: Duration = Duration::from_secs(5);

/// The time the brief promises for a channel change to reach the proxy.
const RELOAD: Duration = Duration::from_secs(1);

fn mediary() -> Mediary {
    Mediary::with_config("").start()
}

/// The `error` sentence of one of the API's error replies, checking its shape on the way.
fn api_error(reply: &mediary_e2e::Reply, status: u16) -> Value {
    assert_eq!(reply.status(), status, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "content-type: {:?}",
        reply.header("content-type")
    );
    let error = reply.json();
    assert!(
        error["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    error
}

/// The `field`s of a validation error's `errors` list.
fn error_fields(error: &Value) -> Vec<String> {
    error["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list in {error}"))
        .iter()
        .map(|e| {
            e["field"]
                .as_str()
                .expect("each error names a field")
                .to_owned()
        })
        .collect()
}

/// The value of `name=value` in the log line containing `needle`.
fn log_field(logs: &str, needle: &str, name: &str) -> Option<String> {
    let line = logs.lines().find(|line| line.contains(needle))?;
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .map(|value| value.trim_matches('"').to_owned())
}

// ----- probes and authentication -----

#[test]
fn heartbeat_and_probes_need_no_credentials() {
    let mediary = mediary();
    let client = Client::new();

    let heartbeat = client.get(mediary.api_url("/heartbeat")).send();
    assert_eq!(heartbeat.status(), 200, "{}", heartbeat.text());
    let beat = heartbeat.json();
    assert!(beat["master"].as_f64().is_some_and(|s| s >= 0.0), "{beat}");
    assert_eq!(beat["mediators"], json!({}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as f64;
    let reported = beat["now"].as_f64().expect("now is milliseconds");
    assert!((reported - now).abs() < 60_000.0, "{beat}");

    let live = client.get(mediary.api_url("/health/live")).send();
    assert_eq!(
        (live.status(), live.json()),
        (200, json!({"status": "live"}))
    );
    let ready = client.get(mediary.api_url("/health/ready")).send();
    assert_eq!(
        (ready.status(), ready.json()),
        (200, json!({"status": "ready", "store": "embedded"}))
    );
}

#[test]
fn everything_else_needs_an_api_user() {
    let mediary = mediary();
    let client = Client::new();

    for path in ["/channels", "/transactions", "/metrics"] {
        let reply = client.get(mediary.api_url(path)).send();
        api_error(&reply, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"Mediary\""),
            "{path}"
        );
    }
    let api = mediary.api();
    let wrong_password = api
        .as_user(ROOT_EMAIL, "not-the-password")
        .get("/channels")
        .send();
    let unknown_user = api
        .as_user("nobody@example.org", ROOT_PASSWORD)
        .get("/channels")
        .send();
    for reply in [&wrong_password, &unknown_user] {
        let error = api_error(reply, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"Mediary\"")
        );
        // Nothing tells a wrong password from an unknown user.
        assert_eq!(error, api_error(&wrong_password, 401));
    }

    let reply = api.get("/channels").send();
    assert_eq!((reply.status(), reply.json()), (200, json!([])));
    // Emails are not case-sensitive.
    let shouting = api
        .as_user("ROOT@OpenHIM.org", ROOT_PASSWORD)
        .get("/channels")
        .send();
    assert_eq!(shouting.status(), 200);
}

#[test]
fn a_generated_root_password_is_logged_once_and_works() {
    let mediary = Mediary::with_config("").without_root_password().start();
    let logs = mediary.logs();
    let password = log_field(&logs, "shown only", "password")
        .unwrap_or_else(|| panic!("no generated password in the logs:\n{logs}"));
    assert!(password.len() >= 20, "{password}");
    assert_eq!(logs.matches(&password).count(), 1, "{logs}");

    let api = mediary.api().as_user(ROOT_EMAIL, &password);
    assert_eq!(api.get("/channels").send().status(), 200);
    assert_eq!(mediary.api().get("/channels").send().status(), 401);
}

#[test]
fn the_environment_password_wins_over_the_config_file() {
    let config = "[api]\nroot_password = \"from-the-config\"\n";
    let from_config = Mediary::with_config(config).without_root_password().start();
    let api = from_config.api();
    assert_eq!(
        api.as_user(ROOT_EMAIL, "from-the-config")
            .get("/channels")
            .send()
            .status(),
        200
    );
    assert!(!from_config.logs().contains("shown only"));

    let from_env = Mediary::with_config(config).start();
    let api = from_env.api();
    assert_eq!(api.get("/channels").send().status(), 200);
    assert_eq!(
        api.as_user(ROOT_EMAIL, "from-the-config")
            .get("/channels")
            .send()
            .status(),
        401
    );
}

// ----- channels -----

#[test]
fn channels_round_trip() {
    let mediary = mediary();
    let api = mediary.api();

    let created = api.create_channel(&channel_json("patients", "^/patients", 9));
    let id = created["_id"].as_str().expect("an _id").to_owned();
    assert!(is_uuid_v7(&id), "{id}");
    assert_eq!(created["name"], "patients");
    assert_eq!(created["routes"][0]["port"], 9);

    assert_eq!(api.get("/channels").send().json(), json!([created]));
    assert_eq!(api.channel(&id), created);
    assert_eq!(api.channel("patients"), created);

    let reply = api
        .put(
            &format!("/channels/{id}"),
            &json!({"urlPattern": "^/people", "priority": 3}),
        )
        .send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    let updated = reply.json();
    assert_eq!(updated["urlPattern"], "^/people");
    assert_eq!(updated["priority"], 3);
    assert_eq!(updated["name"], "patients");
    assert_eq!(updated["routes"], created["routes"]);
    assert_eq!(updated["_id"], id.as_str());
    assert_eq!(api.channel(&id), updated);

    let reply = api.delete(&format!("/channels/{id}")).send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert!(reply.json()["message"].is_string());
    api_error(&api.get(&format!("/channels/{id}")).send(), 404);
    api_error(&api.delete(&format!("/channels/{id}")).send(), 404);
    assert_eq!(api.get("/channels").send().json(), json!([]));
}

#[test]
fn an_invalid_channel_is_refused_with_every_problem() {
    let mediary = mediary();
    let api = mediary.api();
    let mut channel = channel_json("broken", "^/broken", 9);
    channel
        .as_object_mut()
        .expect("an object")
        .remove("urlPattern");
    channel["routes"][0]["port"] = json!(70000);

    let error = api_error(&api.post("/channels", &channel).send(), 400);
    let fields = error_fields(&error);
    assert_eq!(fields, ["urlPattern", "routes[0].port"], "{error}");
    assert_eq!(api.get("/channels").send().json(), json!([]));

    // An update is checked as a whole, and a refused one changes nothing.
    let stored = api.create_channel(&channel_json("fine", "^/fine", 9));
    let path = format!("/channels/{}", stored["_id"].as_str().expect("an id"));
    let error = api_error(
        &api.put(&path, &json!({"methods": ["FETCH"], "timeout": 0}))
            .send(),
        400,
    );
    assert_eq!(error_fields(&error), ["methods", "timeout"], "{error}");
    assert_eq!(api.channel("fine"), stored);
    api_error(&api.put(&path, &json!({"_id": "another"})).send(), 400);
}

#[test]
fn channel_names_are_unique() {
    let mediary = mediary();
    let api = mediary.api();
    api.create_channel(&channel_json("first", "^/first", 9));
    let second = api.create_channel(&channel_json("second", "^/second", 9));

    api_error(
        &api.post("/channels", &channel_json("first", "^/other", 9))
            .send(),
        409,
    );
    let path = format!("/channels/{}", second["_id"].as_str().expect("an id"));
    api_error(&api.put(&path, &json!({"name": "first"})).send(), 409);
    assert_eq!(api.channel("second"), second);
}

#[test]
fn channels_made_through_the_api_serve_and_deleted_ones_stop() {
    let upstream = Upstream::echo();
    let mediary = mediary();
    let api = mediary.api();
    let client = Client::new();
    let proxied = || client.post(mediary.url("/made/here")).body("hello").send();
    assert_eq!(proxied().status(), 404);

    let channel = api.create_channel(&channel_json("made", "^/made", upstream.port()));
    let reply = eventually(RELOAD, "the new channel serves", || {
        Some(proxied()).filter(|r| r.status() == 200)
    });
    assert_eq!(reply.text(), "hello");

    let path = format!("/channels/{}", channel["_id"].as_str().expect("an id"));
    assert_eq!(api.delete(&path).send().status(), 200);
    eventually(RELOAD, "the deleted channel stops serving", || {
        Some(()).filter(|()| proxied().status() == 404)
    });
}

// ----- requests the API refuses -----

#[test]
fn malformed_and_oversized_bodies_and_unknown_paths() {
    let mediary = Mediary::with_config("[api]\nmax_payload = 1024\n").start();
    let api = mediary.api();

    let reply = api
        .post("/channels", &Value::Null)
        .body("{\"name\": \"x\",\n  \"urlPattern\": }")
        .send();
    let error = api_error(&reply, 400);
    assert!(
        error["error"]
            .as_str()
            .unwrap_or("")
            .contains("line 2 column"),
        "{error}"
    );

    let mut big = channel_json("big", "^/big", 9);
    big["description"] = json!("x".repeat(2048));
    api_error(&api.post("/channels", &big).send(), 413);
    assert_eq!(api.get("/channels").send().json(), json!([]));

    api_error(&api.get("/nothing/here").send(), 404);
    let reply = api.delete("/transactions").send();
    api_error(&reply, 405);
    assert_eq!(reply.header("allow"), Some("GET"));
}

// ----- transactions -----

/// A Mediary with a channel `ok` (an echoing upstream at `^/ok`) and a channel `fail` (an upstream
/// answering 500 at `^/fail`), and the upstreams, which must live as long as it.
fn two_channels() -> (Mediary, [Upstream; 2]) {
    let ok = Upstream::echo();
    let fail = Upstream::fixed(500, "broken");
    let config = format!(
        "{}\n{}",
        public_channel("ok", "^/ok", &ok),
        public_channel("fail", "^/fail", &fail)
    );
    (Mediary::with_config(config).start(), [ok, fail])
}

/// Sends `POST <path>` with `body` through the proxy; returns the transaction id.
fn send(mediary: &Mediary, path: &str, body: &str) -> String {
    let reply = Client::new()
        .post(mediary.url(path))
        .body(body.to_owned())
        .send();
    reply
        .header("x-mediary-transaction-id")
        .expect("every proxied response names its transaction")
        .to_owned()
}

#[test]
fn listings_show_summaries_by_default_and_everything_on_request() {
    let (mediary, _upstreams) = two_channels();
    let api = mediary.api();
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|body| send(&mediary, "/ok/items", body))
        .collect();

    let summary = api.wait_for_transactions("", 3, SETTLE);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(summary.ids(), newest_first);
    for record in &summary.records {
        assert_eq!(record["channelName"], "ok");
        assert_eq!(record["status"], "Successful");
        assert_eq!(record["response"]["status"], 200);
        assert_eq!(record["request"]["path"], "/ok/items");
        assert!(record["request"].get("body").is_none(), "{record}");
        assert!(record["request"].get("headers").is_none(), "{record}");
        assert!(record["response"].get("body").is_none(), "{record}");
        assert_eq!(record["orchestrations"], json!([]), "{record}");
    }

    let simple = api.transactions("filterRepresentation=simpledetails");
    assert!(simple.records[0]["request"].get("body").is_none());
    assert!(simple.records[0]["request"]["headers"].is_object());

    let full = api.transactions("filterRepresentation=full");
    let bodies: Vec<&Value> = full.records.iter().map(|r| &r["request"]["body"]).collect();
    assert_eq!(bodies, [&json!("three"), &json!("two"), &json!("one")]);
    assert_eq!(full.records[0]["response"]["body"], "three");

    api_error(
        &api.get("/transactions?filterRepresentation=bulkrerun")
            .send(),
        400,
    );
}

#[test]
fn listings_filter_like_openhim() {
    let (mediary, _upstreams) = two_channels();
    let api = mediary.api();
    let first = send(&mediary, "/ok/a", "a");
    std::thread::sleep(Duration::from_millis(5));
    let second = send(&mediary, "/ok/B", "b");
    std::thread::sleep(Duration::from_millis(5));
    let failed = send(&mediary, "/fail/c", "c");
    api.wait_for_transactions("", 3, SETTLE);

    let listed = |filter: Value| api.transactions(&filters(&filter)).ids();
    let fail_id = api.channel("fail")["_id"].clone();
    assert_eq!(listed(json!({ "channelID": fail_id })), [failed.as_str()]);
    assert_eq!(listed(json!({"status": "Failed"})), [failed.as_str()]);
    assert_eq!(
        listed(json!({"status": {"$in": ["Successful", "Completed"]}})),
        [second.as_str(), first.as_str()]
    );
    assert_eq!(listed(json!({"status": ["Failed", "Successful"]})).len(), 3);
    assert_eq!(listed(json!({"response.status": 500})), [failed.as_str()]);
    assert_eq!(listed(json!({"response.status": "5xx"})), [failed.as_str()]);
    assert_eq!(
        listed(json!({"response.status": "200"})),
        [second.as_str(), first.as_str()]
    );
    assert_eq!(
        listed(json!({"request.path": "^/OK/"})),
        [second.as_str(), first.as_str()]
    );
    assert_eq!(listed(json!({"request.path": "c$"})), [failed.as_str()]);

    let timestamp = |id: &str| api.transaction(id)["request"]["timestamp"].clone();
    let since_second = json!({"$gte": timestamp(&second)});
    assert_eq!(
        listed(json!({ "request.timestamp": since_second })),
        [failed.as_str(), second.as_str()]
    );
    // OpenHIM's console sends the range as a JSON string.
    let before_second = json!({"$lt": timestamp(&second)}).to_string();
    assert_eq!(
        listed(json!({ "request.timestamp": before_second })),
        [first.as_str()]
    );
    let nothing = json!({"$gt": timestamp(&failed)});
    assert!(listed(json!({ "request.timestamp": nothing })).is_empty());
    assert_eq!(
        listed(json!({"status": "Successful", "request.path": "/b"})),
        [second.as_str()]
    );

    let error = api_error(
        &api.get(&format!(
            "/transactions?{}",
            filters(&json!({"childIDs": []}))
        ))
        .send(),
        400,
    );
    assert_eq!(error_fields(&error), ["filters.childIDs"]);
    let error = api_error(
        &api.get(&format!(
            "/transactions?{}",
            filters(&json!({"status": "Lost", "response.status": "6xx"}))
        ))
        .send(),
        400,
    );
    let mut fields = error_fields(&error);
    fields.sort();
    assert_eq!(fields, ["filters.response.status", "filters.status"]);
    let error = api_error(
        &api.get(&format!("/transactions?filters={}", url_encode("{oops")))
            .send(),
        400,
    );
    assert_eq!(error_fields(&error), ["filters"]);
}

#[test]
fn pages_stay_put_while_transactions_arrive() {
    let (mediary, _upstreams) = two_channels();
    let api = mediary.api();
    let mut sent: Vec<String> = (0..5)
        .map(|i| send(&mediary, "/ok/page", &i.to_string()))
        .collect();
    api.wait_for_transactions("", 5, SETTLE);

    let page0 = api.transactions("filterLimit=2&filterPage=0");
    sent.reverse();
    assert_eq!(page0.ids(), sent[..2]);
    let page1_query = format!("filterLimit=2&filterPage=1&snapshot={}", page0.snapshot);
    let page1 = api.transactions(&page1_query);
    assert_eq!(page1.ids(), sent[2..4]);
    assert_eq!(page1.snapshot, page0.snapshot);

    for i in 0..3 {
        send(&mediary, "/ok/page", &format!("late {i}"));
    }
    api.wait_for_transactions("", 8, SETTLE);
    let again = api.transactions(&page1_query);
    assert_eq!(again.ids(), page1.ids());
    assert_eq!(again.records, page1.records);
    // Without the snapshot, the same page has moved on.
    assert_ne!(
        api.transactions("filterLimit=2&filterPage=1").ids(),
        page1.ids()
    );

    for bad in [
        "filterLimit=0",
        "filterLimit=1001",
        "filterPage=-1",
        "snapshot=yesterday",
    ] {
        api_error(&api.get(&format!("/transactions?{bad}")).send(), 400);
    }
}

#[test]
fn one_transaction_by_id() {
    let (mediary, _upstreams) = two_channels();
    let api = mediary.api();
    let id = send(&mediary, "/ok/one", "the body");
    api.wait_for_transactions("", 1, SETTLE);

    let record = api.transaction(&id);
    assert_eq!(record["_id"], id.as_str());
    assert_eq!(record["request"]["body"], "the body");
    assert_eq!(record["response"]["body"], "the body");
    assert!(record["request"]["headers"].is_object());

    api_error(&api.get("/transactions/not-a-uuid").send(), 400);
    api_error(
        &api.get("/transactions/01890a5d-ac96-774b-bcce-b302099a8057")
            .send(),
        404,
    );
}

#[test]
fn a_rerun_is_a_linked_child() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
    let api = mediary.api();
    let parent = send(&mediary, "/echo/again", "once more");
    api.wait_for_transactions("", 1, SETTLE);

    let reply = api
        .post(&format!("/transactions/{parent}/rerun"), &json!({}))
        .send();
    assert_eq!(reply.status(), 201, "{}", reply.text());
    let child = reply.json();
    let child_id = child["_id"].as_str().expect("the child's id").to_owned();
    assert_ne!(child_id, parent);
    assert_eq!(child["parentID"], parent.as_str());
    assert_eq!(child["request"]["body"], "once more");
    assert_eq!(child["response"]["status"], 200);
    let seen = upstream.wait_for_requests(2, SETTLE);
    assert_eq!(seen[1].body, "once more");

    eventually(SETTLE, "the parent lists its child", || {
        let record = api.transaction(&parent);
        record["childIDs"]
            .as_array()
            .filter(|ids| ids.contains(&json!(child_id)))
            .map(|_| ())
    });

    api_error(
        &api.post(
            "/transactions/01890a5d-ac96-774b-bcce-b302099a8057/rerun",
            &json!({}),
        )
        .send(),
        404,
    );
    api_error(
        &api.post("/transactions/nope/rerun", &json!({})).send(),
        400,
    );
    api_error(
        &api.get(&format!("/transactions/{parent}/rerun")).send(),
        405,
    );
}

#[test]
fn a_transaction_whose_channel_is_gone_cannot_rerun() {
    let upstream = Upstream::echo();
    let mediary = mediary();
    let api = mediary.api();
    let channel = api.create_channel(&channel_json("brief", "^/brief", upstream.port()));
    let client = Client::new();
    let reply = eventually(RELOAD, "the new channel serves", || {
        Some(client.post(mediary.url("/brief")).body("x").send()).filter(|r| r.status() == 200)
    });
    let id = reply
        .header("x-mediary-transaction-id")
        .expect("a transaction id")
        .to_owned();
    api.wait_for_transactions("", 1, SETTLE);

    let path = format!("/channels/{}", channel["_id"].as_str().expect("an id"));
    assert_eq!(api.delete(&path).send().status(), 200);
    let error = api_error(
        &api.post(&format!("/transactions/{id}/rerun"), &json!({}))
            .send(),
        409,
    );
    assert!(
        error["error"].as_str().unwrap_or("").contains("brief"),
        "{error}"
    );
}

#[test]
fn metrics_count_requests_per_channel() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
    for _ in 0..2 {
        send(&mediary, "/echo", "x");
    }

    let reply = mediary.api().get("/metrics").send();
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = reply.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("mediary_channel_requests_total{channel=\"echo\""))
        .unwrap_or_else(|| panic!("no request counter for the channel:\n{text}"));
    let count: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(count >= 2, "{line}");
}
