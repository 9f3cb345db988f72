//! Channel plugins against the real binary: the example plugins (router, lab-csv, guard) doing their
//! jobs, the sandbox holding misbehaving plugins to their limits while the rest of Mediary carries
//! on, instance isolation, the capabilities a channel grants (config, key-value, outbound HTTP, log),
//! versions uploaded, switched under load, rolled back and refused, watched plugin files, and the
//! compiled-code cache across a restart.
//!
//! The plugins are the components `build.rs` builds from `plugins/` ([`mediary_e2e::plugins`]);
//! what each does with its settings is in its crate's doc comment. Channels carry them either as
//! uploads (`POST /plugins/:name`, then a channel created through the API) or as files named in the
//! config file (`plugin = { file = … }`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mediary_e2e::api::plugin_channel_json;
use mediary_e2e::plugins::{
    GUARD, LAB_CSV, ROUTER, TEST_MISBEHAVE, TEST_PROBE, TEST_TAG_A, TEST_TAG_B,
};
use mediary_e2e::{
    Answer, Api, Client, Load, Mediary, ROOT_EMAIL, Reply, Seen, Upstream, eventually,
    public_channel, public_channel_with_keys, unused_port, url_encode,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// How long a record may take to settle in the store, and a change to reach the proxy.
const SETTLE: Duration = Duration::from_secs(10);

// ----- fixtures -----

/// Lower-case hex SHA-256 of the file at `path`: what Mediary records as a plugin's `sha256`.
fn sha256_of(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The record of the exchange that gave `reply`, once settled.
fn record_of(api: &Api, reply: &Reply) -> Value {
    api.settled_transaction(&reply.transaction_id(), SETTLE)
}

/// The `error.message` of a record, or "" when it has none.
fn error_message(record: &Value) -> &str {
    record["error"]["message"].as_str().unwrap_or("")
}

/// TOML for a public channel to `upstream` (as [`public_channel`]) whose `plugin` is `plugin`, the
/// same JSON the API takes, written as a TOML inline table; `keys` are more channel keys.
fn plugin_channel(
    name: &str,
    url_pattern: &str,
    upstream: &Upstream,
    plugin: &Value,
    keys: &str,
) -> String {
    let keys = format!("plugin = {}\n{keys}", toml_inline(plugin));
    public_channel_with_keys(name, url_pattern, upstream, &keys)
}

/// `value` as a one-line TOML value (objects become inline tables). JSON's string escapes are all
/// TOML basic-string escapes.
fn toml_inline(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(key, value)| {
                    format!("{} = {}", Value::from(key.as_str()), toml_inline(value))
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => panic!("TOML has no null"),
        other => other.to_string(),
    }
}

/// The value of a response's `x-plugin-tag` (which of test-tag-a and test-tag-b answered).
fn tag(reply: &Reply) -> &str {
    reply
        .header("x-plugin-tag")
        .unwrap_or_else(|| panic!("no x-plugin-tag in {} {:?}", reply.status(), reply.headers))
}

/// The `field`s of an API validation error's `errors` list.
fn error_fields(error: &Value) -> Vec<&str> {
    error["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list in {error}"))
        .iter()
        .map(|e| e["field"].as_str().expect("each error names a field"))
        .collect()
}

/// Milliseconds since the Unix epoch, by this machine's clock (which Mediary's `clock` shares).
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit")
}

// ----- mediary-router -----

#[test]
fn router_sends_each_resource_type_to_its_route() {
    let patients = Upstream::fixed(200, "patients");
    let observations = Upstream::fixed(200, "observations");
    let mediary = Mediary::with_config("").start();
    let api = mediary.api();
    let sha256 = sha256_of(ROUTER);

    let uploaded = api.install_plugin("router", ROUTER);
    assert_eq!(uploaded["name"], "router", "{uploaded}");
    assert_eq!(uploaded["version"], 1, "{uploaded}");
    assert_eq!(uploaded["sha256"], sha256, "{uploaded}");
    let size = std::fs::metadata(ROUTER).expect("the router exists").len();
    assert_eq!(uploaded["size"], size, "{uploaded}");
    assert_eq!(uploaded["uploadedBy"], ROOT_EMAIL, "{uploaded}");
    assert_eq!(uploaded["transforms"], false, "{uploaded}");
    // Read from the component's producers sections: a Rust guest gets the compiled deadline.
    assert_eq!(uploaded["language"], "rust", "{uploaded}");
    assert_eq!(uploaded["current"], true, "{uploaded}");
    assert_eq!(uploaded["created"], true, "{uploaded}");
    // The same bytes again are the same version, not a new one.
    let again = api.upload_plugin("router", ROUTER);
    assert_eq!(again.status(), 200, "{}", again.text());
    assert_eq!(again.json()["created"], false);
    assert_eq!(again.json()["version"], 1);

    let routes = json!({"Patient": "patients", "Observation": "observations"});
    for (name, pattern, config) in [
        ("fhir", "^/fhir/", json!({"routes": routes})),
        (
            "by-header",
            "^/by-header$",
            json!({"by": "header", "routes": routes}),
        ),
        (
            "by-body",
            "^/by-body$",
            json!({"by": "body", "routes": routes}),
        ),
    ] {
        // The router logs its decisions at debug: the first channel keeps them, the others keep
        // only info and above (the default).
        let plugin = if name == "fhir" {
            json!({"name": "router", "config": config, "logLevel": "debug"})
        } else {
            json!({"name": "router", "config": config})
        };
        let mut channel = plugin_channel_json(name, pattern, patients.port(), plugin);
        channel["routes"] = json!([
            {"name": "patients", "host": "127.0.0.1", "port": patients.port(), "primary": true},
            {"name": "observations", "host": "127.0.0.1", "port": observations.port()},
        ]);
        api.create_channel(&channel);
    }
    let client = Client::new();

    let patient = client.get(mediary.url("/fhir/Patient/1")).send();
    assert_eq!(
        (patient.status(), patient.text().as_str()),
        (200, "patients")
    );
    assert_eq!(patients.single_request().path, "/fhir/Patient/1");
    let observation = client.get(mediary.url("/fhir/Observation?code=x")).send();
    assert_eq!(
        (observation.status(), observation.text().as_str()),
        (200, "observations")
    );
    let seen = observations.single_request();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/fhir/Observation", Some("code=x"))
    );

    let encounter = client.get(mediary.url("/fhir/Encounter")).send();
    assert_eq!(encounter.status(), 404, "{}", encounter.text());
    let error = encounter.json_error("client");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("No route serves FHIR resource type `Encounter`")),
        "{error}"
    );
    assert_eq!(error["channel"], "fhir", "{error}");
    assert_eq!(error["plugin"], "router", "{error}");

    // The records name the plugin's exact code and keep what it logged.
    let record = record_of(&api, &patient);
    assert_eq!(record["status"], "Successful", "{record:#}");
    assert_eq!(
        record["plugin"],
        json!({"name": "router", "version": 1, "sha256": sha256, "isolation": "reuse"}),
        "{record:#}"
    );
    let log = record["pluginLog"].as_array().expect("a pluginLog");
    assert_eq!(log.len(), 1, "{record:#}");
    assert_eq!(log[0]["level"], "debug");
    assert_eq!(log[0]["message"], "Routed by resource type.");
    assert_eq!(
        log[0]["fields"],
        json!([["resource", "Patient"], ["route", "patients"]])
    );
    assert!(log[0]["timestamp"].is_string() || log[0]["timestamp"].is_number());
    let orchestrations = record["orchestrations"].as_array().expect("orchestrations");
    assert_eq!(orchestrations.len(), 1, "{record:#}");
    assert_eq!(orchestrations[0]["name"], "patients");
    // The plugin chose one route: the other is not called as a secondary.
    assert_eq!(record["routes"], json!([]), "{record:#}");
    let observed = record_of(&api, &observation);
    assert_eq!(observed["orchestrations"][0]["name"], "observations");
    assert_eq!(
        observed["pluginLog"][0]["fields"],
        json!([["resource", "Observation"], ["route", "observations"]])
    );
    let refused = record_of(&api, &encounter);
    assert_eq!(refused["response"]["status"], 404, "{refused:#}");
    assert_eq!(refused["plugin"]["sha256"], sha256);
    assert_eq!(
        refused["pluginLog"][0]["message"],
        "No route for the resource type."
    );

    // by = "header"
    let by_header = client
        .get(mediary.url("/by-header"))
        .header("x-resource-type", "Observation")
        .send();
    assert_eq!(by_header.text(), "observations");
    let quiet = record_of(&api, &by_header);
    assert_eq!(quiet["plugin"]["name"], "router", "{quiet:#}");
    assert!(
        quiet.get("pluginLog").is_none(),
        "debug lines kept: {quiet:#}"
    );
    let no_header = client.get(mediary.url("/by-header")).send();
    assert_eq!(no_header.status(), 404);
    assert!(
        no_header.json_error("client")["error"]
            .as_str()
            .is_some_and(|e| e.contains("x-resource-type")),
        "{}",
        no_header.text()
    );

    // by = "body"
    let by_body = client
        .post(mediary.url("/by-body"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"id": "7", "name": [{"family": "Okafor"}], "resourceType": "Patient"}"#)
        .send();
    assert_eq!(by_body.text(), "patients");
    let body = &patients.requests()[1].body;
    assert!(body.starts_with(br#"{"id": "7""#), "forwarded unchanged");
    let not_json = client
        .post(mediary.url("/by-body"))
        .body("resourceType=Patient")
        .send();
    assert_eq!(not_json.status(), 404, "{}", not_json.text());
    not_json.json_error("client");

    assert_eq!(patients.requests().len(), 2);
    assert_eq!(observations.requests().len(), 2);
}

// ----- mediary-lab-csv -----

const LAB_UPLOAD: &str = "\
patient_id,code,display,value,unit,effective
p-1,2345-7,Glucose,95,mg/dL,2024-05-01
p-2,718-7,\"Hemoglobin, blood\",13.5,g/dL,2024-05-01T08:30:00Z
p-3,2160-0,Creatinine,1.1,mg/dL,2024-05-02
";

/// A FHIR server's answer to a transaction Bundle of Observations posted to `/fhir`: a
/// `transaction-response` with one created entry per Observation, or 418 saying what was wrong with
/// the request (so a failing test shows it).
fn fhir_transaction(seen: &Seen) -> Answer {
    let refuse = |why: String| Answer::status(418).body(why);
    if seen.method != "POST" || seen.path != "/fhir" || seen.query.is_some() {
        return refuse(format!("{} {} {:?}", seen.method, seen.path, seen.query));
    }
    if seen.header("content-type") != Some("application/fhir+json") {
        return refuse(format!("content-type {:?}", seen.header("content-type")));
    }
    let Ok(bundle) = serde_json::from_slice::<Value>(&seen.body) else {
        return refuse("not JSON".into());
    };
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let observations = entries
        .iter()
        .all(|e| e["resource"]["resourceType"] == "Observation");
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" || !observations {
        return refuse(format!("not a transaction of Observations: {bundle}"));
    }
    let entry: Vec<Value> = (1..=entries.len())
        .map(|i| {
            json!({"response": {"status": "201 Created", "location": format!("Observation/{i}/_history/1")}})
        })
        .collect();
    let answer = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entry});
    Answer::status(200)
        .header("content-type", "application/fhir+json")
        .body(answer.to_string())
}

#[test]
fn lab_csv_becomes_a_fhir_transaction_and_the_answer_csv() {
    let fhir = Upstream::answering(fhir_transaction);
    let plugin = json!({"file": LAB_CSV, "config": {"codeSystem": "http://loinc.org"}});
    let mediary =
        Mediary::with_config(plugin_channel("lab", "^/lab/results$", &fhir, &plugin, "")).start();
    let api = mediary.api();
    let client = Client::new();

    let reply = client
        .post(mediary.url("/lab/results?batch=9"))
        .header("content-type", "text/csv")
        .body(LAB_UPLOAD)
        .send();

    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/csv"));
    assert_eq!(
        reply.text(),
        "row,status,location\r\n\
         1,201 Created,Observation/1/_history/1\r\n\
         2,201 Created,Observation/2/_history/1\r\n\
         3,201 Created,Observation/3/_history/1\r\n"
    );
    let seen = fhir.single_request();
    assert_eq!(seen.header("accept"), Some("application/fhir+json"));
    let bundle: Value = serde_json::from_slice(&seen.body).expect("a JSON Bundle");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{bundle:#}");
    let second = &entries[1]["resource"];
    assert_eq!(second["status"], "final");
    assert_eq!(second["subject"]["reference"], "Patient/p-2");
    assert_eq!(
        second["code"]["coding"][0],
        json!({"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin, blood"})
    );
    assert_eq!(second["valueQuantity"]["value"], 13.5);
    assert_eq!(second["valueQuantity"]["unit"], "g/dL");
    assert_eq!(second["effectiveDateTime"], "2024-05-01T08:30:00Z");
    assert_eq!(
        entries[0]["request"],
        json!({"method": "POST", "url": "Observation"})
    );

    let record = record_of(&api, &reply);
    assert_eq!(record["status"], "Successful", "{record:#}");
    assert_eq!(record["response"]["status"], 200);
    assert_eq!(record["response"]["body"], reply.text(), "{record:#}");
    // The client's own request, not the rewritten one.
    assert_eq!(record["request"]["body"], LAB_UPLOAD, "{record:#}");
    assert_eq!(record["request"]["path"], "/lab/results");
    let orchestrations = record["orchestrations"].as_array().expect("orchestrations");
    assert_eq!(orchestrations.len(), 1, "{record:#}");
    assert_eq!(orchestrations[0]["name"], "lab route");
    // The orchestration shows the request as the plugin rewrote it; the record keeps the client's.
    assert_eq!(orchestrations[0]["request"]["path"], "/fhir", "{record:#}");
    assert_eq!(orchestrations[0]["request"]["method"], "POST", "{record:#}");
    assert_eq!(orchestrations[0]["response"]["status"], 200, "{record:#}");
    assert_eq!(record["plugin"]["name"], "mediary_lab_csv");
    assert_eq!(record["plugin"]["sha256"], sha256_of(LAB_CSV));
    assert_eq!(record["pluginLog"][0]["message"], "Converted lab results.");
    assert_eq!(
        record["pluginLog"][0]["fields"],
        json!([["observations", "3"]])
    );

    let malformed = LAB_UPLOAD.replace(",13.5,", ",x5,");
    let refused = client
        .post(mediary.url("/lab/results"))
        .header("content-type", "text/csv")
        .body(malformed)
        .send();
    assert_eq!(refused.status(), 400, "{}", refused.text());
    let error = refused.json_error("client");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("line 3, column `value`: `x5` is not a number"),
        "{error}"
    );
    assert_eq!(error["plugin"], "mediary_lab_csv");
    assert_eq!(fhir.requests().len(), 1, "a refused upload goes nowhere");
    let record = record_of(&api, &refused);
    assert_eq!(record["response"]["status"], 400, "{record:#}");
}

// ----- mediary-guard -----

#[test]
fn guard_requires_an_identifier_and_limits_each_client() {
    let upstream = Upstream::echo();
    let plugin = json!({
        "file": GUARD,
        "config": {"rateLimit": {"requests": 3, "windowMs": 60000}, "clientHeader": "x-client-id"},
    });
    let mediary = Mediary::with_config(plugin_channel(
        "guarded",
        "^/patients",
        &upstream,
        &plugin,
        "",
    ))
    .start();
    let client = Client::new();

    let anonymous = client.get(mediary.url("/patients")).send();
    assert_eq!(anonymous.status(), 400, "{}", anonymous.text());
    let error = anonymous.json_error("client");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("patient identifier is required")),
        "{error}"
    );
    assert!(upstream.requests().is_empty());

    // The windows are fixed minutes of the wall clock: stay clear of a boundary.
    let into_window = now_ms() % 60_000;
    if into_window > 55_000 {
        std::thread::sleep(Duration::from_millis(60_500 - into_window));
    }
    let as_client = |id: &str, n: usize| {
        client
            .get(mediary.url(&format!("/patients?identifier=p-{n}")))
            .header("x-client-id", id)
            .send()
    };
    for n in 1..=3 {
        let reply = as_client("a", n);
        assert_eq!(reply.status(), 200, "request {n}: {}", reply.text());
    }
    let fourth = as_client("a", 4);
    assert_eq!(fourth.status(), 429, "{}", fourth.text());
    let error = fourth.json_error("client");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("Too many requests: client `a` may make 3 per 60000 ms")),
        "{error}"
    );
    let other = client
        .get(mediary.url("/patients"))
        .header("x-patient-id", "p-9")
        .header("x-client-id", "b")
        .send();
    assert_eq!(other.status(), 200, "{}", other.text());
    assert_eq!(upstream.requests().len(), 4);
}

// ----- the sandbox -----

/// The channels of the sandbox test: for each mode of test-misbehave set by its `mode` setting, the
/// text its failure must be recorded with.
const MISBEHAVIOURS: [(&str, &str); 8] = [
    ("loop", "CPU deadline of 50 ms"),
    ("memory", "memory limit of 16 MiB"),
    ("trap", "deliberate trap"),
    ("header-injection", "invalid output"),
    ("bad-header-name", "invalid output"),
    ("framing", "invalid output"),
    ("hop-by-hop", "invalid output"),
    ("bad-status", "invalid output"),
];

/// A `[server]` table with one worker, so plugins that spin or hoard share it with every other
/// request (the fixture's default too, spelled out because these tests depend on it).
const ONE_WORKER: &str =
    "[server]\nbind = \"127.0.0.1\"\nhttp_port = 0\napi_port = 0\nworkers = 1\n";

/// test-misbehave with `config`, a 50 ms deadline and a 16 MiB memory cap.
fn misbehave(config: Value) -> Value {
    json!({"file": TEST_MISBEHAVE, "config": config, "deadlineMs": 50, "memoryLimit": "16MiB"})
}

#[test]
fn misbehaving_plugins_fail_their_requests_and_nothing_else() {
    let upstream = Upstream::echo();
    let mut config = ONE_WORKER.to_owned();
    for (mode, _) in MISBEHAVIOURS {
        let plugin = misbehave(json!({"mode": mode}));
        config += &plugin_channel(mode, &format!("^/sandbox/{mode}$"), &upstream, &plugin, "");
    }
    let trap_response = misbehave(json!({"mode": "forward", "responseMode": "trap-response"}));
    config += &plugin_channel(
        "trap-response",
        "^/sandbox/trap-response$",
        &upstream,
        &trap_response,
        "",
    );
    let inject_response = misbehave(json!({"mode": "forward", "responseMode": "inject-response"}));
    config += &plugin_channel(
        "inject-response",
        "^/sandbox/inject-response$",
        &upstream,
        &inject_response,
        "",
    );
    // Mode by the path's last segment: one channel that fails or serves, request by request.
    config += &plugin_channel(
        "by-path",
        "^/misbehave/",
        &upstream,
        &misbehave(json!({})),
        "",
    );
    config += &plugin_channel(
        "tagged",
        "^/tagged$",
        &upstream,
        &json!({"file": TEST_TAG_A}),
        "",
    );
    config += &public_channel("plain", "^/plain$", &upstream);
    let mediary = Mediary::with_config(config).start();
    assert_eq!(mediary.workers(), Some(1));
    let api = mediary.api();
    let client = Client::new();

    for (mode, reason) in MISBEHAVIOURS {
        let reply = client.get(mediary.url(&format!("/sandbox/{mode}"))).send();
        assert_eq!(reply.status(), 502, "{mode}: {}", reply.text());
        let error = reply.json_error("plugin");
        assert_eq!(error["channel"], mode, "{error}");
        assert_eq!(error["plugin"], "test_misbehave", "{error}");
        assert!(reply.header("x-injected").is_none(), "{mode}");
        assert!(reply.header("x-test").is_none(), "{mode}");
        let record = record_of(&api, &reply);
        assert_eq!(record["status"], "Failed", "{mode}: {record:#}");
        assert_eq!(record["response"]["status"], 502, "{mode}");
        assert!(
            error_message(&record).contains(reason),
            "{mode}: expected {reason:?} in {:?}",
            error_message(&record)
        );
        if mode == "loop" {
            // Stopped at its CPU deadline: not before it, and not long after (a noisy machine).
            assert!(
                reply.elapsed >= Duration::from_millis(50),
                "{:?}",
                reply.elapsed
            );
            assert!(
                reply.elapsed < Duration::from_secs(1),
                "{:?}",
                reply.elapsed
            );
        }
        if mode == "trap" {
            let log = record["pluginLog"].as_array().expect("a pluginLog");
            assert!(
                log.iter()
                    .any(|line| line["level"] == "error"
                        && line["message"] == "The plugin panicked."),
                "{record:#}"
            );
        }
    }
    // The same failures in `on-response`, after the upstream answered.
    for (mode, reason) in [
        ("trap-response", "deliberate trap in on-response"),
        ("inject-response", "invalid output"),
    ] {
        let reply = client.get(mediary.url(&format!("/sandbox/{mode}"))).send();
        assert_eq!(reply.status(), 502, "{mode}: {}", reply.text());
        reply.json_error("plugin");
        assert!(reply.header("x-injected").is_none(), "{mode}");
        assert!(reply.header("x-test").is_none(), "{mode}");
        let record = record_of(&api, &reply);
        assert_eq!(record["status"], "Failed", "{mode}: {record:#}");
        assert!(
            error_message(&record).contains(reason),
            "{mode}: expected {reason:?} in {:?}",
            error_message(&record)
        );
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "only the on-response modes forward"
    );

    // Plugins spinning and hoarding on the one worker while others are served.
    let (loop_url, memory_url) = (mediary.url("/sandbox/loop"), mediary.url("/sandbox/memory"));
    let load = Load::start(2, move |client, thread, _| {
        client.get(if thread == 0 { &loop_url } else { &memory_url })
    });
    let started = Instant::now();
    let mut served = Vec::new();
    while served.len() < 10 || started.elapsed() < Duration::from_millis(600) {
        let sent = Instant::now();
        let plain = client.get(mediary.url("/plain")).send();
        assert_eq!(plain.status(), 200, "{}", plain.text());
        let tagged = client.get(mediary.url("/tagged")).send();
        assert_eq!(tagged.status(), 200, "{}", tagged.text());
        assert_eq!(tag(&tagged), "a");
        served.push((sent, Instant::now()));
        assert!(started.elapsed() < Duration::from_secs(20), "too slow");
    }
    let outcomes = load.stop();
    assert!(outcomes.len() >= 2, "{outcomes:?}");
    for outcome in &outcomes {
        let reply = outcome.reply.as_ref().expect("a response");
        assert_eq!(reply.status(), 502, "{}", reply.text());
        // Each fails for its own reason, whatever else the worker was running.
        let reason = ["CPU deadline of 50 ms", "memory limit of 16 MiB"][outcome.thread];
        let error = reply.json_error("plugin");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(reason)),
            "thread {}: {error}",
            outcome.thread
        );
    }
    let overlapped = served.iter().any(|(sent, done)| {
        outcomes
            .iter()
            .any(|o| o.thread == 0 && o.sent < *done && *sent < o.done)
    });
    assert!(overlapped, "no request was served while a plugin spun");

    // The instance that failed is replaced; the channel serves the next request.
    for (mode, status) in [
        ("trap", 502),
        ("ok", 200),
        ("loop", 502),
        ("memory", 502),
        ("ok", 200),
    ] {
        let reply = client
            .get(mediary.url(&format!("/misbehave/{mode}")))
            .send();
        assert_eq!(reply.status(), status, "{mode}: {}", reply.text());
        if status == 200 {
            assert_eq!(reply.text(), "fine");
        }
    }
    let live = client.get(mediary.api_url("/health/live")).send();
    assert_eq!(live.status(), 200);
}

/// The epoch callback yields to the worker's runtime every slice "so a spinning plugin never holds
/// its worker for long" (`host/src/plugin/call.rs`): a request that arrives on the same worker while
/// a plugin spins towards a long deadline is served in the meantime, not after it.
#[test]
fn a_spinning_plugin_does_not_hold_its_worker() {
    let upstream = Upstream::echo();
    let spin = json!({"file": TEST_MISBEHAVE, "config": {"mode": "loop"}, "deadlineMs": 2000});
    let config = ONE_WORKER.to_owned()
        + &plugin_channel("spin", "^/spin$", &upstream, &spin, "")
        + &public_channel("plain", "^/plain$", &upstream);
    let mediary = Mediary::with_config(config).start();
    assert_eq!(mediary.workers(), Some(1));
    let client = Client::new();
    assert_eq!(client.get(mediary.url("/plain")).send().status(), 200);

    let spinning = client.get(mediary.url("/spin")).send_in_background();
    // No signal says the plugin has started: give the request a moment to get there.
    std::thread::sleep(Duration::from_millis(200));
    let mut during = Vec::new();
    while during.len() < 3 && !spinning.is_finished() {
        let reply = client.get(mediary.url("/plain")).send();
        assert_eq!(reply.status(), 200, "{}", reply.text());
        if !spinning.is_finished() {
            during.push(reply.elapsed);
        }
    }
    let spun = spinning.join().expect("the spinning request's thread");
    assert_eq!(spun.status(), 502, "{}", spun.text());
    assert!(
        !during.is_empty(),
        "no request was answered while the plugin spun"
    );
    // Normally a few milliseconds; held until the next slice that lets the worker poll its
    // connections (61 slices of 10 ms on tokio's current-thread runtime) it is over half a second.
    let fastest = during.iter().min().expect("at least one");
    assert!(
        *fastest < Duration::from_millis(300),
        "requests on the spinning plugin's worker took {during:?}"
    );
}

#[test]
fn a_bypassed_plugin_failure_routes_as_if_there_were_no_plugin() {
    let upstream = Upstream::echo();
    let plugin = json!({"file": TEST_MISBEHAVE, "config": {"mode": "trap"}});
    let channel = plugin_channel(
        "lenient",
        "^/lenient",
        &upstream,
        &plugin,
        "onPluginError = \"bypass\"",
    );
    let mediary = Mediary::with_config(channel).start();

    let reply = Client::new()
        .post(mediary.url("/lenient/x"))
        .body("still here")
        .send();

    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.text(), "still here");
    assert_eq!(upstream.single_request().path, "/lenient/x");
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Successful", "{record:#}");
    let failure = &record["properties"]["pluginError"];
    assert_eq!(failure["kind"], "trap", "{record:#}");
    assert_eq!(failure["bypassed"], true, "{record:#}");
    assert!(
        failure["message"]
            .as_str()
            .is_some_and(|m| m.contains("deliberate trap")),
        "{record:#}"
    );
    assert_eq!(record["plugin"]["name"], "test_misbehave");
}

#[test]
fn a_bypassed_failure_in_on_response_passes_the_answer_on_untransformed() {
    let upstream = Upstream::echo();
    let plugin = json!({"file": TEST_MISBEHAVE, "config": {"mode": "forward", "responseMode": "trap-response"}});
    let channel = plugin_channel(
        "lenient",
        "^/lenient",
        &upstream,
        &plugin,
        "onPluginError = \"bypass\"",
    );
    let mediary = Mediary::with_config(channel).start();

    let reply = Client::new()
        .post(mediary.url("/lenient/x"))
        .body("answered")
        .send();

    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.text(), "answered");
    assert_eq!(reply.header("x-upstream-saw"), Some("POST /lenient/x"));
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Successful", "{record:#}");
    assert_eq!(record["response"]["body"], "answered", "{record:#}");
    let failure = &record["properties"]["pluginError"];
    assert_eq!(failure["kind"], "trap", "{record:#}");
    assert_eq!(failure["bypassed"], true, "{record:#}");
}

// ----- isolation -----

#[test]
fn reused_and_fresh_instances_both_see_each_request_as_sent() {
    let upstream = Upstream::echo();
    let config = plugin_channel(
        "warm",
        "^/warm/",
        &upstream,
        &json!({"file": TEST_PROBE, "isolation": "reuse"}),
        "",
    ) + &plugin_channel(
        "fresh",
        "^/fresh/",
        &upstream,
        &json!({"file": TEST_PROBE, "isolation": "per-request"}),
        "",
    );
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();

    for (channel, isolation) in [("warm", "reuse"), ("fresh", "per-request")] {
        for n in 0..3 {
            let body = format!("hello {n}");
            let reply = client
                .post(mediary.url(&format!("/{channel}/echo?a=1&b=two")))
                .header("x-test", &format!("value-{n}"))
                .body(body.clone())
                .send();
            assert_eq!(reply.status(), 200, "{channel}: {}", reply.text());
            let seen = reply.json();
            assert_eq!(seen["method"], "POST", "{seen}");
            assert_eq!(seen["path"], format!("/{channel}/echo"), "{seen}");
            assert_eq!(seen["query"], "a=1&b=two", "{seen}");
            assert_eq!(seen["body"], body, "{seen}");
            assert_eq!(seen["channel"], channel, "{seen}");
            assert_eq!(seen["client"], Value::Null, "{seen}");
            let headers = seen["headers"].as_array().expect("headers");
            assert!(
                headers.contains(&json!(["x-test", format!("value-{n}")])),
                "{seen}"
            );
            let id = reply
                .header("x-mediary-transaction-id")
                .expect("the response names its transaction");
            assert_eq!(seen["transactionId"], id, "{seen}");
            let record = record_of(&api, &reply);
            assert_eq!(record["plugin"]["isolation"], isolation, "{record:#}");
            assert_eq!(record["status"], "Successful", "{record:#}");
        }
        // Forwarded, then transformed by the same instance.
        let forwarded = client.get(mediary.url(&format!("/{channel}/other"))).send();
        assert_eq!(forwarded.status(), 200, "{}", forwarded.text());
        assert_eq!(forwarded.header("x-probe"), Some("seen"));
    }
    assert_eq!(upstream.requests().len(), 2);
}

// ----- capabilities -----

#[test]
fn a_plugin_gets_the_capabilities_its_channel_grants() {
    let upstream = Upstream::echo();
    let outside = Upstream::fixed(200, "from outside");
    let settings = json!({"greeting": "hello", "limits": {"n": 3}, "list": [1, 2]});
    let granted = json!({
        "file": TEST_PROBE,
        "config": settings,
        "allowedHosts": [format!("127.0.0.1:{}", outside.port())],
    });
    let config = plugin_channel("probe-a", "^/a/", &upstream, &granted, "")
        + &plugin_channel(
            "probe-b",
            "^/b/",
            &upstream,
            &json!({"file": TEST_PROBE}),
            "",
        );
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();
    let get = |path: &str| {
        let reply = client.get(mediary.url(path)).send();
        assert_eq!(reply.status(), 200, "{path}: {}", reply.text());
        reply
    };

    // config
    assert_eq!(get("/a/config").json(), settings);
    assert_eq!(get("/b/config").json(), json!({}));

    // kv
    assert_eq!(
        get("/a/kv").json(),
        json!({
            "set": null,
            "get": "1",
            "casFirst": true,
            "casSecond": false,
            "increment": 5,
            "setX": null,
            "incrementNotInteger": {"error": "not-an-integer", "text": null},
            "delete": true,
            "getAfterDelete": null,
        })
    );
    // Each channel has its own keys.
    assert_eq!(get("/b/kv-get?key=n").json()["value"], Value::Null);
    assert_eq!(
        get("/a/kv-set?key=shared&value=one").json(),
        json!({"key": "shared", "set": null})
    );
    get("/b/kv-set?key=shared&value=two");
    assert_eq!(
        get("/a/kv-get?key=shared").json(),
        json!({"key": "shared", "value": "one"})
    );
    assert_eq!(
        get("/b/kv-get?key=shared").json(),
        json!({"key": "shared", "value": "two"})
    );

    // outbound-http
    let url = format!("http://127.0.0.1:{}/hello?x=1", outside.port());
    let reply = get(&format!("/a/outbound?url={}", url_encode(&url)));
    assert_eq!(
        reply.json(),
        json!({"status": 200, "body": "from outside", "error": null})
    );
    let seen = outside.single_request();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/hello", Some("x=1"))
    );
    let record = record_of(&api, &reply);
    let call = record["orchestrations"]
        .as_array()
        .expect("orchestrations")
        .iter()
        .find(|o| o["name"] == "test_probe (plugin)")
        .unwrap_or_else(|| panic!("no plugin call recorded: {record:#}"))
        .clone();
    assert_eq!(call["request"]["path"], "/hello", "{call:#}");
    assert_eq!(call["request"]["method"], "GET", "{call:#}");
    assert_eq!(call["response"]["status"], 200, "{call:#}");
    let elsewhere = format!("127.0.0.1:{}", unused_port());
    let url = format!("http://{elsewhere}/x");
    let refused = get(&format!("/a/outbound?url={}", url_encode(&url))).json();
    assert_eq!(refused["status"], Value::Null, "{refused}");
    assert_eq!(refused["error"]["case"], "not-allowed", "{refused}");
    let text = refused["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&elsewhere) && text.contains("allowedHosts"),
        "{refused}"
    );
    // Another channel's grants are not this one's.
    let url = format!("http://127.0.0.1:{}/hello", outside.port());
    let ungranted = get(&format!("/b/outbound?url={}", url_encode(&url))).json();
    assert_eq!(ungranted["error"]["case"], "not-allowed", "{ungranted}");
    assert_eq!(outside.requests().len(), 1);

    // log
    let reply = get("/a/log");
    assert_eq!(reply.header("x-probe"), Some("seen"));
    let record = record_of(&api, &reply);
    let lines: Vec<(Value, Value, Value)> = record["pluginLog"]
        .as_array()
        .unwrap_or_else(|| panic!("no pluginLog: {record:#}"))
        .iter()
        .map(|l| {
            (
                l["level"].clone(),
                l["message"].clone(),
                l["fields"].clone(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                json!("info"),
                json!("Probe line one."),
                json!([["level", "info"], ["n", "1"]])
            ),
            (
                json!("warn"),
                json!("Probe line two."),
                json!([["level", "warn"], ["n", "2"]])
            ),
            (
                json!("error"),
                json!("Probe line three."),
                json!([["level", "error"], ["n", "3"]])
            ),
        ]
    );

    // Past the per-request budget lines are counted, not kept.
    let flood = record_of(&api, &get("/a/log-flood"));
    assert_eq!(
        flood["pluginLog"].as_array().map(Vec::len),
        Some(100),
        "{flood:#}"
    );
    assert_eq!(flood["properties"]["pluginLogDropped"], 50, "{flood:#}");

    // clock
    let clock = get("/a/clock").json();
    let plugin_now = clock["nowMs"].as_u64().expect("nowMs");
    assert!(plugin_now.abs_diff(now_ms()) < 60_000, "{clock}");
}

// ----- versions, hot reload, rollback -----

#[test]
fn an_upload_under_load_switches_new_requests_without_failing_any() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config("").start();
    let api = mediary.api();
    let (sha_a, sha_b) = (sha256_of(TEST_TAG_A), sha256_of(TEST_TAG_B));
    api.install_plugin("tag", TEST_TAG_A);
    api.create_channel(&plugin_channel_json(
        "tagged",
        "^/tagged",
        upstream.port(),
        json!({"name": "tag"}),
    ));
    let url = mediary.url("/tagged");
    assert_eq!(tag(&Client::new().get(url.clone()).send()), "a");

    let load = Load::start(4, move |client, _, _| client.get(url.clone()));
    std::thread::sleep(Duration::from_secs(1));
    let upload_sent = Instant::now();
    let uploaded = api.install_plugin("tag", TEST_TAG_B);
    let upload_done = Instant::now();
    assert_eq!(uploaded["version"], 2, "{uploaded}");
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();

    let mut last_a: Option<&Reply> = None;
    let mut first_b: Option<&Reply> = None;
    for outcome in &outcomes {
        let reply = match &outcome.reply {
            Ok(reply) => reply,
            Err(error) => panic!(
                "request {} of thread {} failed: {error}",
                outcome.n, outcome.thread
            ),
        };
        assert_eq!(reply.status(), 200, "{}", reply.text());
        match tag(reply) {
            "a" => {
                assert!(outcome.sent < upload_done, "sent after the upload, yet a");
                last_a = Some(reply);
            }
            "b" => {
                assert!(outcome.done > upload_sent, "done before the upload, yet b");
                first_b = first_b.or(Some(reply));
            }
            other => panic!("x-plugin-tag: {other}"),
        }
    }
    // Each client, sending one request after another, switches once.
    for thread in 0..4 {
        let tags: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.thread == thread)
            .filter_map(|o| o.reply.as_ref().ok().map(tag))
            .collect();
        let switched = tags.iter().position(|t| *t == "b").unwrap_or(tags.len());
        assert!(
            tags[switched..].iter().all(|t| *t == "b"),
            "thread {thread}: {tags:?}"
        );
    }
    let (last_a, first_b) = (
        last_a.expect("requests answered by version 1"),
        first_b.expect("requests answered by version 2"),
    );
    let before = record_of(&api, last_a);
    assert_eq!(before["plugin"]["version"], 1, "{before:#}");
    assert_eq!(before["plugin"]["sha256"], sha_a);
    let after = record_of(&api, first_b);
    assert_eq!(after["plugin"]["version"], 2, "{after:#}");
    assert_eq!(after["plugin"]["sha256"], sha_b);
    let tags_upstream_saw: std::collections::BTreeSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|seen| seen.header("x-plugin-tag").map(str::to_owned))
        .collect();
    assert_eq!(
        tags_upstream_saw.into_iter().collect::<Vec<_>>(),
        ["a", "b"]
    );

    let rollback = api.rollback_plugin("tag");
    assert_eq!(rollback.status(), 200, "{}", rollback.text());
    assert_eq!(rollback.json()["current"], 1);
    assert_eq!(tag(&Client::new().get(mediary.url("/tagged")).send()), "a");
    let plugin = api.plugin("tag");
    assert_eq!(plugin["current"], 1, "{plugin:#}");
    let versions: Vec<(Value, Value)> = plugin["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].clone(), v["sha256"].clone()))
        .collect();
    assert_eq!(
        versions,
        [(json!(1), json!(sha_a)), (json!(2), json!(sha_b))]
    );
    assert_eq!(plugin["usedBy"], json!(["tagged"]));
}

#[test]
fn a_plugin_file_is_watched_and_reloaded_when_replaced() {
    let upstream = Upstream::echo();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("tag.wasm");
    std::fs::copy(TEST_TAG_A, &file).expect("copy test-tag-a");
    let plugin = json!({"file": file.to_str().expect("a UTF-8 path")});
    let config = format!(
        "[plugins]\nwatch_interval = \"200ms\"\n{}",
        plugin_channel("tagged", "^/tagged", &upstream, &plugin, "")
    );
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();

    let before = client.get(mediary.url("/tagged")).send();
    assert_eq!(tag(&before), "a");
    let record = record_of(&api, &before);
    assert_eq!(record["plugin"]["name"], "tag", "{record:#}");
    assert_eq!(record["plugin"]["sha256"], sha256_of(TEST_TAG_A));
    assert!(record["plugin"].get("version").is_none(), "{record:#}");

    // Replaced the way editors and build tools do it: written aside, renamed over.
    let aside = dir.path().join("tag.wasm.partial");
    std::fs::copy(TEST_TAG_B, &aside).expect("copy test-tag-b");
    std::fs::rename(&aside, &file).expect("rename over the plugin");

    let after = eventually(Duration::from_secs(5), "the new file answers", || {
        let reply = client.get(mediary.url("/tagged")).send();
        assert_eq!(reply.status(), 200, "{}", reply.text());
        (tag(&reply) == "b").then_some(reply)
    });
    let record = record_of(&api, &after);
    assert_eq!(record["plugin"]["sha256"], sha256_of(TEST_TAG_B));
}

// ----- refused uploads and references -----

#[test]
fn invalid_uploads_and_references_are_refused() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config("").start();
    let api = mediary.api();
    let refused = |reply: Reply, what: &str| -> String {
        assert_eq!(reply.status(), 400, "{what}: {}", reply.text());
        let error = reply.json();
        let message = error["error"].as_str().unwrap_or_default().to_owned();
        assert!(message.len() > 20, "{what}: {error}");
        message
    };

    // Bytes from a fixed-seed generator: not WebAssembly.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let message = refused(api.upload_plugin_bytes("noise", noise), "random bytes");
    assert!(message.starts_with("The plugin was refused: "), "{message}");
    let message = refused(api.upload_plugin_bytes("empty", Vec::new()), "no body");
    assert!(message.contains("no body"), "{message}");
    let router = std::fs::read(ROUTER).expect("the router");
    let half = router[..router.len() / 2].to_vec();
    let message = refused(api.upload_plugin_bytes("half", half), "truncated");
    assert!(message.starts_with("The plugin was refused: "), "{message}");
    let message = refused(
        api.upload_plugin_bytes("Bad%20Name", router.clone()),
        "bad name",
    );
    assert!(message.contains("is not a plugin name"), "{message}");
    // Nothing refused was stored.
    let listed = api.get("/plugins").send();
    assert_eq!((listed.status(), listed.json()), (200, json!([])));

    let unknown = api
        .post(
            "/channels",
            &plugin_channel_json("c", "^/c", upstream.port(), json!({"name": "nowhere"})),
        )
        .send();
    assert_eq!(unknown.status(), 400, "{}", unknown.text());
    assert_eq!(error_fields(&unknown.json()), ["plugin.name"]);

    api.install_plugin("router", ROUTER);
    let no_such_version = api
        .post(
            "/channels",
            &plugin_channel_json(
                "c",
                "^/c",
                upstream.port(),
                json!({"name": "router", "version": 7}),
            ),
        )
        .send();
    assert_eq!(no_such_version.status(), 400, "{}", no_such_version.text());
    assert_eq!(error_fields(&no_such_version.json()), ["plugin.version"]);
    let nothing_earlier = api.rollback_plugin("router");
    assert_eq!(nothing_earlier.status(), 409, "{}", nothing_earlier.text());

    api.create_channel(&plugin_channel_json(
        "routed",
        "^/routed",
        upstream.port(),
        json!({"name": "router", "version": 1, "config": {"fallback": "routed route"}}),
    ));
    let routed = Client::new().get(mediary.url("/routed/Patient")).send();
    assert_eq!(routed.status(), 200, "{}", routed.text());
    assert_eq!(api.plugin("router")["usedBy"], json!(["routed"]));
    let in_use = api.delete("/plugins/router").send();
    assert_eq!(in_use.status(), 409, "{}", in_use.text());
    assert!(in_use.text().contains("routed"), "{}", in_use.text());
    assert_eq!(api.plugin("router")["current"], 1);

    let deleted = api.delete("/channels/routed").send();
    assert_eq!(deleted.status(), 200, "{}", deleted.text());
    let deleted = api.delete("/plugins/router").send();
    assert_eq!(deleted.status(), 200, "{}", deleted.text());
    let gone = api.get("/plugins/router").send();
    assert_eq!(gone.status(), 404, "{}", gone.text());
}

// ----- restart -----

#[test]
fn an_uploaded_plugin_survives_a_restart_from_its_compiled_cache() {
    let upstream = Upstream::echo();
    let mut mediary = Mediary::with_config("").start();
    let api = mediary.api();
    api.install_plugin("tag", TEST_TAG_A);
    api.create_channel(&plugin_channel_json(
        "tagged",
        "^/tagged",
        upstream.port(),
        json!({"name": "tag"}),
    ));
    assert_eq!(tag(&Client::new().get(mediary.url("/tagged")).send()), "a");
    let cache = mediary.default_data_dir().join("plugin-cache");
    let compiled = |dir: &Path| -> Vec<(std::path::PathBuf, SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .map(|path| {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("a modification time");
                (path, modified)
            })
            .collect();
        files.sort();
        files
    };
    let before = compiled(&cache);
    assert_eq!(before.len(), 1, "{before:?}");
    let name = before[0]
        .0
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    assert!(name.starts_with(&sha256_of(TEST_TAG_A)), "{name}");

    mediary.stop();
    let mediary = mediary.restart();

    let reply = Client::new().get(mediary.url("/tagged")).send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(tag(&reply), "a");
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["plugin"]["version"], 1, "{record:#}");
    assert_eq!(record["plugin"]["sha256"], sha256_of(TEST_TAG_A));
    // Loaded from the cache, not compiled (and written) again.
    assert_eq!(compiled(&cache), before);
}
