//! What the upstream receives for a request that matched a channel: the
//! body byte for byte, the query, the rewritten path, the headers a proxy
//! must drop or add, and the transaction id.

use mediary_e2e::{
    Answer, Client, Mediary, Method, RawConnection, Upstream, is_uuid_v7, public_channel,
    public_channel_with_route,
};

/// A few hundred KiB holding every byte value, in an order that shows any
/// lost, added or shifted byte.
fn binary_body() -> Vec<u8> {
    (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

#[test]
fn binary_bodies_arrive_byte_identical_for_every_method() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
    let body = binary_body();
    assert!((0..=255u8).all(|byte| body.contains(&byte)));
    let client = Client::new();

    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::GET,
        Method::OPTIONS,
    ] {
        let reply = client
            .request(method.clone(), mediary.url("/echo/binary"))
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send();

        assert_eq!(reply.status(), 200, "{method}");
        let seen = upstream
            .requests()
            .pop()
            .expect("the upstream saw the request");
        assert_eq!(seen.method, method);
        assert!(
            seen.body == body,
            "{method}: the upstream got a different body ({} bytes)",
            seen.body.len()
        );
        assert!(
            reply.body == body,
            "{method}: the client got a different body ({} bytes)",
            reply.body.len()
        );
    }
}

#[test]
fn the_upstreams_status_headers_and_body_reach_the_client() {
    let upstream = Upstream::answering(|_| {
        Answer::status(201)
            .header("location", "/fhir/Patient/7/_history/1")
            .header("x-upstream-says", "created")
            .body(r#"{"resourceType":"Patient","id":"7"}"#)
    });
    let mediary = Mediary::with_config(public_channel("fhir", "^/fhir", &upstream)).start();

    let reply = Client::new()
        .post(mediary.url("/fhir/Patient"))
        .body(r#"{"resourceType":"Patient"}"#)
        .send();

    assert_eq!(reply.status(), 201);
    assert_eq!(reply.header("location"), Some("/fhir/Patient/7/_history/1"));
    assert_eq!(reply.header("x-upstream-says"), Some("created"));
    assert_eq!(reply.text(), r#"{"resourceType":"Patient","id":"7"}"#);
}

#[test]
fn the_query_string_is_forwarded_unchanged() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    Client::new()
        .get(mediary.url("/echo/Patient?name=two%20words&_count=10&flag&empty="))
        .send();

    let seen = upstream.single_request();
    assert_eq!(seen.path, "/echo/Patient");
    assert_eq!(
        seen.query.as_deref(),
        Some("name=two%20words&_count=10&flag&empty=")
    );
}

#[test]
fn a_route_path_replaces_the_request_path_and_keeps_the_query() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_route(
        "fixed",
        "^/echo",
        &upstream,
        r#"path = "/fixed/target""#,
    ))
    .start();

    Client::new()
        .get(mediary.url("/echo/anything/else?x=1"))
        .send();

    let seen = upstream.single_request();
    assert_eq!(seen.path, "/fixed/target");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
}

#[test]
fn a_path_transform_replaces_the_first_match() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(
        public_channel_with_route(
            "once",
            "^/once/",
            &upstream,
            "pathTransform = 's/patient/Patient/'",
        ) + &public_channel_with_route(
            "prefix",
            "^/api/v1/",
            &upstream,
            r"pathTransform = 's/\/api\/v1/\/fhir/'",
        ) + &public_channel_with_route(
            "groups",
            "^/groups/",
            &upstream,
            r"pathTransform = 's/patient\/([0-9]+)/Patient\/$1\/_history/'",
        ),
    )
    .start();
    let client = Client::new();

    client
        .get(mediary.url("/once/patient/patient?q=patient"))
        .send();
    client.get(mediary.url("/api/v1/Patient/7")).send();
    client.get(mediary.url("/groups/patient/7")).send();

    let seen = upstream.wait_for_requests(3, std::time::Duration::from_secs(5));
    assert_eq!(seen[0].path, "/once/Patient/patient");
    assert_eq!(seen[0].query.as_deref(), Some("q=patient"));
    assert_eq!(
        seen[1].path, "/fhir/Patient/7",
        "escaped slashes in pathTransform"
    );
    assert_eq!(
        seen[2].path, "/groups/Patient/7/_history",
        "$1 in pathTransform"
    );
}

#[test]
fn a_path_transform_with_g_replaces_every_match() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_route(
        "every",
        "^/every/",
        &upstream,
        "pathTransform = 's/patient/Patient/g'",
    ))
    .start();

    Client::new()
        .get(mediary.url("/every/patient/patient"))
        .send();

    assert_eq!(upstream.single_request().path, "/every/Patient/Patient");
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    let reply = Client::new()
        .get(mediary.url("/echo"))
        .header("Connection", "keep-alive, X-Hop-Secret")
        .header("Connection", "X-Hop-Other")
        .header("X-Hop-Secret", "named in Connection")
        .header("X-Hop-Other", "named in a second Connection line")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Trailer", "X-Checksum")
        .header("Upgrade", "h2c")
        .header("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0")
        .header("Proxy-Connection", "keep-alive")
        .header("X-End-To-End", "kept")
        .send();

    assert_eq!(reply.status(), 200);
    let seen = upstream.single_request();
    for hop_by_hop in [
        "x-hop-secret",
        "x-hop-other",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(
            seen.header(hop_by_hop),
            None,
            "{hop_by_hop} reached the upstream"
        );
    }
    let connection = seen
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        !connection.contains("x-hop"),
        "the client's Connection header reached the upstream: {connection}"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

#[test]
fn the_clients_authorization_is_stripped_by_default() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    Client::new()
        .get(mediary.url("/echo"))
        .header("Authorization", "Bearer client-token")
        .send();

    assert_eq!(upstream.single_request().header("authorization"), None);
}

#[test]
fn the_clients_authorization_is_forwarded_when_the_route_asks() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_route(
        "echo",
        "^/echo",
        &upstream,
        "forwardAuthHeader = true",
    ))
    .start();

    Client::new()
        .get(mediary.url("/echo"))
        .header("Authorization", "Bearer client-token")
        .send();

    assert_eq!(
        upstream.single_request().header("authorization"),
        Some("Bearer client-token")
    );
}

#[test]
fn route_credentials_become_basic_auth_upstream() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel_with_route(
        "echo",
        "^/echo",
        &upstream,
        "username = \"mediary\"\npassword = \"s3cret\"",
    ))
    .start();

    Client::new()
        .get(mediary.url("/echo"))
        .header("Authorization", "Bearer client-token")
        .send();

    // base64("mediary:s3cret")
    assert_eq!(
        upstream.single_request().header("authorization"),
        Some("Basic bWVkaWFyeTpzM2NyZXQ=")
    );
}

#[test]
fn forwarded_headers_name_the_client_and_the_host_it_asked_for() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    Client::new().get(mediary.url("/echo")).send();

    let seen = upstream.single_request();
    assert_eq!(seen.header_list("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        seen.header_list("x-forwarded-host"),
        [mediary.addr().to_string()]
    );
}

#[test]
fn forwarded_headers_are_appended_to_existing_ones() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    Client::new()
        .get(mediary.url("/echo"))
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Forwarded-Host", "public.example.org")
        .send();

    let seen = upstream.single_request();
    assert_eq!(
        seen.header_list("x-forwarded-for"),
        ["203.0.113.9", "127.0.0.1"]
    );
    assert_eq!(
        seen.header_list("x-forwarded-host"),
        ["public.example.org".to_owned(), mediary.addr().to_string()]
    );
}

#[test]
fn the_upstream_host_header_names_the_route() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();

    Client::new().get(mediary.url("/echo")).send();

    assert_eq!(
        upstream.single_request().header("host"),
        Some(upstream.addr().to_string().as_str())
    );
}

#[test]
fn every_request_carries_one_uuid_v7_transaction_id_both_ways() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
    let client = Client::new();

    let first = client.get(mediary.url("/echo/1")).send();
    // A client cannot choose its transaction id.
    let second = client
        .get(mediary.url("/echo/2"))
        .header("X-Mediary-Transaction-ID", "forged")
        .header("X-OpenHIM-TransactionID", "forged")
        .send();

    let seen = upstream.wait_for_requests(2, std::time::Duration::from_secs(5));
    let mut ids = Vec::new();
    for (reply, seen) in [(&first, &seen[0]), (&second, &seen[1])] {
        let id = reply
            .header("x-mediary-transaction-id")
            .expect("the client gets X-Mediary-Transaction-ID");
        assert!(is_uuid_v7(id), "not a UUIDv7: {id}");
        assert_eq!(reply.header("x-openhim-transactionid"), Some(id));
        assert_eq!(seen.header_values("x-mediary-transaction-id"), [id]);
        assert_eq!(seen.header_values("x-openhim-transactionid"), [id]);
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1], "two requests share a transaction id");
}

#[test]
fn secondary_routes_get_a_copy_and_are_not_awaited() {
    let primary = Upstream::fixed(200, "from the primary");
    let copy = Upstream::slow(std::time::Duration::from_secs(5));
    let disabled = Upstream::echo();
    let mediary = Mediary::with_config(format!(
        r#"
[[channels]]
name = "fan-out"
urlPattern = "^/fan"
methods = ["POST"]
authType = "public"

[[channels.routes]]
name = "primary"
host = "127.0.0.1"
port = {primary}
primary = true

[[channels.routes]]
name = "slow copy"
host = "127.0.0.1"
port = {copy}

[[channels.routes]]
name = "switched off"
host = "127.0.0.1"
port = {disabled}
status = "disabled"
"#,
        primary = primary.port(),
        copy = copy.port(),
        disabled = disabled.port(),
    ))
    .start();

    let reply = Client::new()
        .post(mediary.url("/fan/out"))
        .body("payload")
        .send();

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "from the primary");
    assert!(
        reply.elapsed < std::time::Duration::from_secs(4),
        "the client waited {:?}, as if for the 5 s secondary",
        reply.elapsed
    );
    let copied = copy.wait_for_requests(1, std::time::Duration::from_secs(10));
    assert_eq!(copied[0].path, "/fan/out");
    assert_eq!(copied[0].body, "payload");
    assert_eq!(primary.single_request().body, "payload");
    assert!(
        disabled.requests().is_empty(),
        "a disabled route got a copy"
    );
}

#[test]
fn a_head_answer_keeps_the_upstreams_content_length() {
    // The Content-Length of a HEAD answer describes the resource; there is no body to count.
    let upstream = Upstream::fixed(200, "twelve bytes");
    let mediary = Mediary::with_config(public_channel("head", "^/", &upstream)).start();
    let mut connection = RawConnection::open(mediary.addr());

    connection.send("HEAD /x HTTP/1.1\r\nHost: m\r\n\r\n");
    let response = connection.read_head();

    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("12"));
}
