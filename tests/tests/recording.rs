//! What Mediary records of the requests it routes, read back through the management API: OpenHIM's
//! final statuses, routes and orchestrations, credentials never stored, bodies as the channel says,
//! reruns, records that survive a restart, metrics, and recording switched off.
//!
//! Recording is asynchronous: a record shows in the API a few tens of milliseconds after the client's
//! response, and stays `Processing` while secondary routes run, so every check on a record polls
//! until it has settled ([`Api::settled_transaction`]).

use std::time::Duration;

use base64::Engine as _;
use mediary_e2e::{
    Answer, Api, Client, Mediary, RawConnection, Reply, Upstream, eventually, extra_route,
    public_channel, public_channel_to_port, public_channel_with_keys, public_channel_with_route,
    unused_port,
};
use serde_json::{Value, json};

/// How long a record may take to settle in the store, and a metric to count it.
const SETTLE: Duration = Duration::from_secs(10);

/// The record of the exchange that gave `reply`, once settled.
fn record_of(api: &Api, reply: &Reply) -> Value {
    api.settled_transaction(&reply.transaction_id(), SETTLE)
}

/// The `error.message` of a record or exchange, or "" when it has none.
fn error_message(value: &Value) -> &str {
    value["error"]["message"].as_str().unwrap_or("")
}

// ----- OpenHIM's final statuses (reference §2.6, §6 item 30) -----

#[test]
fn final_statuses_follow_openhim() {
    let ok = Upstream::fixed(200, "ok");
    let broken = Upstream::fixed(500, "broken");
    let missing = Upstream::fixed(404, "missing");
    let moved = Upstream::answering(|_| Answer::status(302).header("location", "/elsewhere"));
    // (channel, primary, secondary, the client's status, the record's status)
    let cases: [(&str, &Upstream, Option<&Upstream>, u16, &str); 8] = [
        ("primary-2xx", &ok, None, 200, "Successful"),
        ("both-2xx", &ok, Some(&ok), 200, "Successful"),
        ("primary-5xx", &broken, None, 500, "Failed"),
        (
            "secondary-5xx",
            &ok,
            Some(&broken),
            200,
            "Completed with error(s)",
        ),
        ("secondary-404", &ok, Some(&missing), 200, "Completed"),
        ("both-404", &missing, Some(&missing), 404, "Completed"),
        ("primary-404", &missing, None, 404, "Completed"),
        ("primary-302", &moved, None, 302, "Completed"),
    ];
    let config: String = cases
        .iter()
        .map(|(name, primary, secondary, _, _)| {
            let mut channel = public_channel(name, &format!("^/{name}$"), primary);
            if let Some(secondary) = secondary {
                channel += &extra_route(&format!("{name} secondary"), secondary, "");
            }
            channel
        })
        .collect();
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();

    for (name, _, secondary, client_status, status) in cases {
        let reply = client.get(mediary.url(&format!("/{name}"))).send();
        assert_eq!(reply.status(), client_status, "{name}: {}", reply.text());
        let record = record_of(&api, &reply);
        assert_eq!(record["status"], status, "{name}: {record:#}");
        assert_eq!(record["response"]["status"], client_status, "{name}");
        let routes = record["routes"].as_array().expect("routes is a list");
        assert_eq!(routes.len(), usize::from(secondary.is_some()), "{name}");
    }
}

#[test]
fn a_secondary_route_is_called_and_stored_in_routes_with_its_body() {
    let primary = Upstream::fixed(200, "target1");
    let secondary = Upstream::answering(|_| {
        Answer::status(201)
            .header("x-secondary", "yes")
            .body("target2")
    });
    let config = public_channel("both", "^/both", &primary) + &extra_route("copy", &secondary, "");
    let mediary = Mediary::with_config(config).start();

    let reply = Client::new()
        .post(mediary.url("/both/items?x=1"))
        .body("copy me")
        .send();

    assert_eq!((reply.status(), reply.text().as_str()), (200, "target1"));
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Successful", "{record:#}");
    assert_eq!(record["response"]["body"], "target1");
    let routes = record["routes"].as_array().expect("routes is a list");
    assert_eq!(routes.len(), 1, "{record:#}");
    let route = &routes[0];
    assert_eq!(route["name"], "copy");
    assert_eq!(route["request"]["method"], "POST");
    assert_eq!(route["request"]["path"], "/both/items");
    assert_eq!(route["request"]["querystring"], "x=1");
    assert_eq!(route["request"]["port"], secondary.port().to_string());
    assert_eq!(route["response"]["status"], 201);
    assert_eq!(route["response"]["body"], "target2");
    assert_eq!(route["response"]["headers"]["x-secondary"], "yes");
    assert!(route.get("error").is_none(), "{route:#}");

    let seen = secondary.single_request();
    assert_eq!(seen.body, "copy me");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(primary.single_request().body, "copy me");
}

#[test]
fn disabled_routes_are_not_called_nor_recorded() {
    let primary = Upstream::fixed(200, "primary");
    let never = Upstream::fixed(200, "never");
    let config = public_channel("quiet", "^/quiet", &primary)
        + &extra_route("disabled secondary", &never, "status = \"disabled\"")
        + &extra_route(
            "disabled primary",
            &never,
            "primary = true\nstatus = \"disabled\"",
        );
    let mediary = Mediary::with_config(config).start();

    let reply = Client::new().get(mediary.url("/quiet")).send();

    assert_eq!(reply.text(), "primary");
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Successful");
    assert_eq!(record["routes"], json!([]), "{record:#}");
    assert_eq!(record["orchestrations"].as_array().map(Vec::len), Some(1));
    assert_eq!(record["orchestrations"][0]["name"], "quiet route");
    assert_eq!(primary.requests().len(), 1);
    assert!(never.requests().is_empty(), "{:?}", never.requests());
}

#[test]
fn one_orchestration_for_the_primary_with_the_path_it_was_sent_to() {
    let primary = Upstream::echo();
    let secondary = Upstream::echo();
    let config =
        public_channel_with_route("fhir", "^/in/", &primary, r#"pathTransform = "s/in/out/""#)
            + &extra_route("audit", &secondary, "");
    let mediary = Mediary::with_config(config).start();

    let reply = Client::new()
        .put(mediary.url("/in/Patient/7?_format=json"))
        .body("{}")
        .send();

    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.header("x-upstream-saw"),
        Some("PUT /out/Patient/7?_format=json")
    );
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["request"]["path"], "/in/Patient/7");
    let orchestrations = record["orchestrations"]
        .as_array()
        .expect("orchestrations is a list");
    assert_eq!(orchestrations.len(), 1, "none for secondaries: {record:#}");
    let orchestration = &orchestrations[0];
    assert_eq!(orchestration["name"], "fhir route");
    assert_eq!(orchestration["request"]["method"], "PUT");
    assert_eq!(orchestration["request"]["path"], "/out/Patient/7");
    assert_eq!(orchestration["request"]["querystring"], "_format=json");
    assert_eq!(orchestration["request"]["host"], "127.0.0.1");
    assert_eq!(orchestration["request"]["port"], primary.port().to_string());
    assert_eq!(orchestration["response"]["status"], 200);
    assert!(orchestration.get("error").is_none(), "{orchestration:#}");
    // The secondary is a route entry, with the path as received.
    assert_eq!(record["routes"][0]["name"], "audit");
    assert_eq!(record["routes"][0]["request"]["path"], "/in/Patient/7");
    assert_eq!(secondary.single_request().path, "/in/Patient/7");
}

#[test]
fn a_refused_primary_is_a_502_and_a_failed_record_saying_why() {
    let mediary =
        Mediary::with_config(public_channel_to_port("gone", "^/gone", unused_port())).start();

    let reply = Client::new().post(mediary.url("/gone")).body("x").send();

    assert_eq!(reply.status(), 502, "{}", reply.text());
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Failed", "{record:#}");
    assert_eq!(record["response"]["status"], 502);
    let orchestration = &record["orchestrations"][0];
    assert_eq!(orchestration["name"], "gone route");
    let message = error_message(orchestration).to_lowercase();
    assert!(message.contains("refused"), "{orchestration:#}");
    assert!(orchestration.get("response").is_none(), "{orchestration:#}");
    assert!(!error_message(&record).is_empty(), "{record:#}");
}

#[test]
fn a_primary_slower_than_the_channel_timeout_is_a_504_and_a_failed_record() {
    let upstream = Upstream::slow(Duration::from_secs(5));
    let mediary = Mediary::with_config(public_channel_with_keys(
        "slow",
        "^/slow",
        &upstream,
        "timeout = 300",
    ))
    .start();

    let reply = Client::new().get(mediary.url("/slow")).send();

    assert_eq!(reply.status(), 504, "{}", reply.text());
    assert!(
        reply.elapsed < Duration::from_secs(4),
        "{:?}",
        reply.elapsed
    );
    let record = record_of(&mediary.api(), &reply);
    assert_eq!(record["status"], "Failed", "{record:#}");
    assert_eq!(record["response"]["status"], 504);
    let orchestration = &record["orchestrations"][0];
    assert!(
        error_message(orchestration).contains("300 ms"),
        "{orchestration:#}"
    );
}

#[test]
fn a_method_the_channel_does_not_accept_is_a_404_and_no_record() {
    let upstream = Upstream::echo();
    let config = format!(
        r#"
[[channels]]
name = "read-only"
urlPattern = "^/read"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "read-only route"
host = "127.0.0.1"
port = {}
primary = true
"#,
        upstream.port()
    );
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();

    let refused = client.post(mediary.url("/read")).body("no").send();
    assert_eq!(refused.status(), 404, "{}", refused.text());
    // A request after it, on the same worker, is recorded; by then the first would be too.
    let served = client.get(mediary.url("/read")).send();
    assert_eq!(served.status(), 200);
    record_of(&api, &served);

    assert_eq!(api.try_transaction(&refused.transaction_id()), None);
    // Listings show a record a little after it can be read by id (they stop at a snapshot that
    // trails the recorder).
    let listing = api.wait_for_transactions("", 1, SETTLE);
    assert_eq!(listing.ids(), [served.transaction_id()]);
    assert_eq!(upstream.single_request().method, "GET");
}

// ----- credentials -----

#[test]
fn credentials_are_never_stored() {
    const SECRETS: [&str; 6] = [
        "dXNlcjpzM2NyZXQ=",
        "s3cret",
        "cookie-secret",
        "proxy-secret",
        "upstream-cookie-secret",
        "route-cookie-secret",
    ];
    let primary = Upstream::answering(|_| {
        Answer::status(200)
            .header("set-cookie", "sid=upstream-cookie-secret; HttpOnly")
            .header("x-visible", "kept")
            .body("ok")
    });
    let secondary = Upstream::answering(|_| {
        Answer::status(200)
            .header("set-cookie", "sid=route-cookie-secret")
            .body("also ok")
    });
    let config =
        public_channel("login", "^/login", &primary) + &extra_route("copy", &secondary, "");
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();

    let reply = Client::new()
        .get(mediary.url("/login"))
        .header("authorization", "Basic dXNlcjpzM2NyZXQ=")
        .header("cookie", "session=cookie-secret")
        .header("proxy-authorization", "Bearer proxy-secret")
        .header("x-visible", "kept")
        .send();

    // The client still gets the upstream's cookie: redaction is for the record only.
    assert_eq!(
        reply.header("set-cookie"),
        Some("sid=upstream-cookie-secret; HttpOnly")
    );
    let record = record_of(&api, &reply);
    let headers = &record["request"]["headers"];
    assert_eq!(headers["authorization"], "Basic [redacted]", "{headers:#}");
    assert_eq!(headers["cookie"], "[redacted]");
    assert_eq!(headers["proxy-authorization"], "Bearer [redacted]");
    assert_eq!(headers["x-visible"], "kept");
    assert_eq!(record["response"]["headers"]["set-cookie"], "[redacted]");
    assert_eq!(record["response"]["headers"]["x-visible"], "kept");
    assert_eq!(
        record["routes"][0]["response"]["headers"]["set-cookie"],
        "[redacted]"
    );

    let listed = api.wait_for_transactions("filterRepresentation=full", 1, SETTLE);
    for text in [record.to_string(), json!(listed.records).to_string()] {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} is stored: {text}");
        }
    }
}

// ----- bodies -----

/// Bytes that are not UTF-8, every byte value included.
fn binary_body() -> Vec<u8> {
    (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn bodies_are_stored_as_each_channel_says() {
    let fixed = Upstream::fixed(201, "response text");
    let echo = Upstream::echo();
    let config = [
        public_channel("full", "^/full", &fixed),
        public_channel_with_keys(
            "no-request-body",
            "^/no-request-body",
            &echo,
            "requestBody = false",
        ),
        public_channel_with_keys(
            "no-response-body",
            "^/no-response-body",
            &echo,
            "responseBody = false",
        ),
        public_channel("binary", "^/binary", &echo),
    ]
    .concat();
    let mediary = Mediary::with_config(config).start();
    let api = mediary.api();
    let client = Client::new();

    let reply = client
        .post(mediary.url("/full"))
        .body("request text")
        .send();
    let record = record_of(&api, &reply);
    assert_eq!(record["request"]["body"], "request text");
    assert_eq!(record["response"]["body"], "response text");
    assert_eq!(record["canRerun"], true);
    assert!(
        record["request"].get("bodyTruncated").is_none(),
        "{record:#}"
    );

    let reply = client
        .post(mediary.url("/no-request-body"))
        .body("private request")
        .send();
    assert_eq!(reply.text(), "private request");
    let record = record_of(&api, &reply);
    assert!(record["request"].get("body").is_none(), "{record:#}");
    assert_eq!(record["response"]["body"], "private request");
    // Its body was not kept, so it cannot be sent again.
    assert_eq!(record["canRerun"], false);
    assert_eq!(api.rerun(&reply.transaction_id()).status(), 409);

    let reply = client.get(mediary.url("/no-request-body/q")).send();
    let record = record_of(&api, &reply);
    assert_eq!(
        record["canRerun"], true,
        "a bodiless GET can rerun: {record:#}"
    );
    let rerun = api.rerun(&reply.transaction_id());
    assert_eq!(rerun.status(), 201, "{}", rerun.text());
    assert_eq!(
        echo.requests().last().map(|s| s.path.clone()).as_deref(),
        Some("/no-request-body/q")
    );

    let reply = client
        .post(mediary.url("/no-response-body"))
        .body("kept request")
        .send();
    assert_eq!(reply.text(), "kept request");
    let record = record_of(&api, &reply);
    assert_eq!(record["request"]["body"], "kept request");
    assert!(record["response"].get("body").is_none(), "{record:#}");

    let body = binary_body();
    let reply = client
        .post(mediary.url("/binary"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send();
    assert!(reply.body == body, "the client got other bytes");
    let record = record_of(&api, &reply);
    assert_eq!(record["request"]["body"], json!({"base64": base64(&body)}));
    assert_eq!(record["response"]["body"], json!({"base64": base64(&body)}));
}

#[test]
fn a_body_over_the_stored_size_is_cut_in_the_record_only() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_keys(
        "capped",
        "^/capped",
        &upstream,
        "maxStoredBodySize = 100",
    ))
    .start();
    let api = mediary.api();
    let body: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    let reply = Client::new()
        .post(mediary.url("/capped"))
        .body(body.clone())
        .send();

    // The client and the upstream get every byte, whatever is stored.
    assert_eq!(reply.text(), body);
    assert_eq!(upstream.single_request().body, body);
    let record = record_of(&api, &reply);
    assert_eq!(record["request"]["body"], body[..100], "{record:#}");
    assert_eq!(record["request"]["bodyTruncated"], true);
    // The request used the whole allowance: nothing is left for the response's body.
    assert!(record["response"].get("body").is_none(), "{record:#}");
    assert_eq!(record["response"]["bodyTruncated"], true);
    assert_eq!(record["canRerun"], false);

    let rerun = api.rerun(&reply.transaction_id());
    assert_eq!(rerun.status(), 409, "{}", rerun.text());
    assert_eq!(
        upstream.requests().len(),
        1,
        "a refused rerun sends nothing"
    );
}

// ----- rerun -----

#[test]
fn a_rerun_sends_the_stored_binary_body_again_as_a_linked_child() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
    let api = mediary.api();
    let body = binary_body();
    let reply = Client::new()
        .post(mediary.url("/echo/upload?v=2"))
        .header("content-type", "application/octet-stream")
        .header("x-request-tag", "first")
        .body(body.clone())
        .send();
    let parent_id = reply.transaction_id();
    let parent = record_of(&api, &reply);

    let rerun = api.rerun(&parent_id);

    assert_eq!(rerun.status(), 201, "{}", rerun.text());
    let child_id = rerun.json()["_id"]
        .as_str()
        .expect("the child's id")
        .to_owned();
    assert_ne!(child_id, parent_id);
    let seen = upstream.wait_for_requests(2, SETTLE);
    assert_eq!(seen.len(), 2);
    assert!(seen[0].body == body && seen[1].body == body);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].path, "/echo/upload");
    assert_eq!(seen[1].query.as_deref(), Some("v=2"));
    assert_eq!(
        seen[1].header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(seen[1].header("x-request-tag"), Some("first"));
    assert_eq!(
        seen[1].header("x-openhim-transactionid"),
        Some(child_id.as_str())
    );

    let child = api.settled_transaction(&child_id, SETTLE);
    assert_eq!(child["parentID"], parent_id.as_str());
    assert_eq!(child["wasRerun"], true);
    assert_eq!(child["request"]["body"], parent["request"]["body"]);
    assert_eq!(child["request"]["body"], json!({"base64": base64(&body)}));
    assert_eq!(child["response"]["body"], parent["response"]["body"]);
    assert_eq!(child["status"], "Successful");
    eventually(SETTLE, "the parent lists its child", || {
        (api.transaction(&parent_id)["childIDs"] == json!([child_id])).then_some(())
    });
}

// ----- restart -----

#[test]
fn records_survive_a_graceful_restart_and_the_spool_is_left_empty() {
    let upstream = Upstream::echo();
    let mut mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream))
        .workers(2)
        .start();
    let client = Client::new();
    let before: Vec<Value> = (0..5)
        .map(|i| {
            let reply = client
                .post(mediary.url(&format!("/echo/{i}")))
                .body(format!("body {i}"))
                .send();
            record_of(&mediary.api(), &reply)
        })
        .collect();
    // One rerun, to include the API's own spool.
    let id = before[0]["_id"].as_str().expect("an id").to_owned();
    let child = api_rerun_child(&mediary.api(), &id);

    mediary.stop();
    assert_eq!(mediary.spool_files(), Vec::<std::path::PathBuf>::new());
    let mediary = mediary.restart();

    let api = mediary.api();
    for record in &before[1..] {
        let id = record["_id"].as_str().expect("an id");
        assert_eq!(&api.transaction(id), record);
    }
    assert_eq!(api.transaction(&id)["childIDs"], json!([child]));
    assert_eq!(api.transaction(&child)["parentID"], id.as_str());
    api.wait_for_transactions("", 6, SETTLE);
    assert_eq!(api.all_transactions("").len(), 6);
    let logs = mediary.logs();
    assert!(
        !logs.contains("Replayed the spool"),
        "a graceful stop leaves nothing to replay:\n{logs}"
    );
    // And it records as before.
    let reply = client.post(mediary.url("/echo/after")).body("after").send();
    assert_eq!(record_of(&api, &reply)["request"]["body"], "after");
}

/// Reruns `id` and returns the child's id.
fn api_rerun_child(api: &Api, id: &str) -> String {
    let rerun = api.rerun(id);
    assert_eq!(rerun.status(), 201, "{}", rerun.text());
    let child = rerun.json()["_id"].as_str().expect("an id").to_owned();
    api.settled_transaction(&child, SETTLE);
    child
}

// ----- metrics -----

#[test]
fn metrics_after_traffic() {
    let ok = Upstream::echo();
    let broken = Upstream::fixed(500, "broken");
    let config = public_channel("ok", "^/ok", &ok) + &public_channel("broken", "^/broken", &broken);
    let mediary = Mediary::with_config(config).workers(2).start();
    let api = mediary.api();
    let client = Client::one_connection_per_request();
    for i in 0..4 {
        assert_eq!(
            client
                .post(mediary.url("/ok"))
                .body(i.to_string())
                .send()
                .status(),
            200
        );
    }
    assert_eq!(client.get(mediary.url("/broken")).send().status(), 500);
    assert_eq!(client.get(mediary.url("/nowhere")).send().status(), 404);

    let ok_id = api.channel("ok")["_id"].as_str().expect("an id").to_owned();
    let ok_labels = [("channel", "ok"), ("channel_id", ok_id.as_str())];
    let metrics = eventually(SETTLE, "the metrics count every transaction", || {
        let metrics = api.metrics();
        let counted = metrics.sum("mediary_channel_transactions_total", &[]);
        (counted >= 5.0).then_some(metrics)
    });

    let requests =
        |channel| metrics.value("mediary_channel_requests_total", &[("channel", channel)]);
    assert_eq!((requests("ok"), requests("broken")), (4.0, 1.0));
    let responses = |channel, class| {
        metrics.value(
            "mediary_channel_responses_total",
            &[("channel", channel), ("class", class)],
        )
    };
    assert_eq!(responses("ok", "2xx"), 4.0);
    assert_eq!(responses("ok", "5xx"), 0.0);
    assert_eq!(responses("broken", "5xx"), 1.0);
    let transactions = |channel, status| {
        metrics.value(
            "mediary_channel_transactions_total",
            &[("channel", channel), ("status", status)],
        )
    };
    assert_eq!(transactions("ok", "Successful"), 4.0);
    assert_eq!(transactions("ok", "Failed"), 0.0);
    assert_eq!(transactions("broken", "Failed"), 1.0);
    assert_eq!(metrics.sum("mediary_channel_transactions_total", &[]), 5.0);

    let histogram = "mediary_channel_request_duration_seconds";
    let buckets: Vec<f64> = metrics
        .matching(&format!("{histogram}_bucket"), &ok_labels)
        .map(|s| s.value)
        .collect();
    assert!(buckets.len() > 2, "{}", metrics.text);
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {buckets:?}"
    );
    assert_eq!(
        metrics.value(
            &format!("{histogram}_bucket"),
            &[("channel", "ok"), ("le", "+Inf")]
        ),
        4.0
    );
    assert_eq!(
        metrics.value(&format!("{histogram}_count"), &ok_labels),
        4.0
    );
    assert!(metrics.value(&format!("{histogram}_sum"), &ok_labels) > 0.0);

    // Every request counts on the worker that served it, the unmatched one too.
    for worker in ["0", "1"] {
        metrics.value("mediary_worker_requests_total", &[("worker", worker)]);
        metrics.value("mediary_worker_open_connections", &[("worker", worker)]);
    }
    assert_eq!(metrics.sum("mediary_worker_requests_total", &[]), 6.0);

    let open = || api.metrics().sum("mediary_worker_open_connections", &[]);
    let connection = RawConnection::open(mediary.addr());
    eventually(SETTLE, "an open connection is counted", || {
        (open() == 1.0).then_some(())
    });
    drop(connection);
    eventually(SETTLE, "a closed connection is not", || {
        (open() == 0.0).then_some(())
    });
}

// ----- recording switched off -----

#[test]
fn with_recording_off_requests_are_served_and_nothing_is_recorded() {
    let upstream = Upstream::echo();
    let channel = public_channel("echo", "^/echo", &upstream);
    let mediary = Mediary::with_config(format!("[recording]\nenabled = false\n{channel}")).start();
    let api = mediary.api();
    let client = Client::new();

    let ids: Vec<String> = (0..3)
        .map(|i| {
            let reply = client
                .post(mediary.url("/echo"))
                .body(format!("unrecorded {i}"))
                .send();
            assert_eq!(reply.status(), 200);
            assert_eq!(reply.text(), format!("unrecorded {i}"));
            reply.transaction_id()
        })
        .collect();

    assert_eq!(upstream.requests().len(), 3);
    // Nothing is spooled at all, so nothing can reach the store later.
    assert_eq!(mediary.spool_files(), Vec::<std::path::PathBuf>::new());
    for id in &ids {
        assert_eq!(api.try_transaction(id), None);
    }
    assert_eq!(api.all_transactions(""), Vec::<Value>::new());
    let rerun = api.rerun(&ids[0]);
    assert_eq!(rerun.status(), 404, "{}", rerun.text());
}

#[test]
fn with_recording_off_earlier_records_are_listed_but_cannot_rerun() {
    let upstream = Upstream::echo();
    let channel = public_channel("echo", "^/echo", &upstream);
    let mut mediary = Mediary::with_config(channel.clone()).start();
    let client = Client::new();
    let reply = client.post(mediary.url("/echo")).body("recorded").send();
    let recorded = record_of(&mediary.api(), &reply);
    let id = recorded["_id"].as_str().expect("an id").to_owned();
    mediary.stop();

    mediary.rewrite_config(&format!("[recording]\nenabled = false\n{channel}"));
    let mediary = mediary.restart();
    let api = mediary.api();
    let reply = client.post(mediary.url("/echo")).body("unrecorded").send();
    assert_eq!(reply.text(), "unrecorded");

    assert_eq!(api.transaction(&id), recorded);
    assert_eq!(api.try_transaction(&reply.transaction_id()), None);
    let rerun = api.rerun(&id);
    assert_eq!(rerun.status(), 409, "{}", rerun.text());
    assert!(rerun.text().contains("recording"), "{}", rerun.text());
    assert_eq!(
        upstream.requests().len(),
        2,
        "a refused rerun sends nothing"
    );
    // The record is still in the store, so the listing shows it.
    assert_eq!(api.all_transactions(""), [recorded]);
}
