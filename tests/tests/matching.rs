//! Which channel answers a request: `urlPattern` (an unanchored regex on the
//! path only), `methods`, `priority` (lower wins, none ranks last), `status`,
//! and what happens when no channel matches or the winner is private.
//!
//! Each channel sends to an upstream that answers with the channel's name,
//! so the response body says who won.

use mediary_e2e::{Client, Mediary, Method, Upstream};

/// A public channel named `name` whose upstream answers `name`, plus extra
/// channel keys (`priority`, `status`, ...) in `extra`.
fn channel(
    name: &str,
    url_pattern: &str,
    methods: &str,
    extra: &str,
    upstream: &Upstream,
) -> String {
    format!(
        r#"
[[channels]]
name = "{name}"
urlPattern = "{url_pattern}"
methods = {methods}
authType = "public"
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

#[test]
fn the_enabled_channel_with_the_lowest_priority_number_wins() {
    let second = Upstream::fixed(200, "second");
    let first = Upstream::fixed(200, "first");
    let third = Upstream::fixed(200, "third");
    let mediary = Mediary::with_config(
        channel("second", "^/patient", r#"["GET"]"#, "priority = 2", &second)
            + &channel("first", "^/patient", r#"["GET"]"#, "priority = 1", &first)
            + &channel("third", "^/patient", r#"["GET"]"#, "priority = 3", &third),
    )
    .start();

    let reply = Client::new().get(mediary.url("/patient/42")).send();

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "first");
    assert_eq!(first.requests().len(), 1);
    assert!(second.requests().is_empty() && third.requests().is_empty());
}

#[test]
fn a_channel_without_priority_ranks_last() {
    let catch_all = Upstream::fixed(200, "catch-all");
    let patients = Upstream::fixed(200, "patients");
    // The catch-all comes first in the file, but has no priority.
    let mediary = Mediary::with_config(
        channel("catch-all", "/", r#"["GET"]"#, "", &catch_all)
            + &channel(
                "patients",
                "^/patient",
                r#"["GET"]"#,
                "priority = 9",
                &patients,
            ),
    )
    .start();
    let client = Client::new();

    assert_eq!(
        client.get(mediary.url("/patient/42")).send().text(),
        "patients"
    );
    assert_eq!(client.get(mediary.url("/other")).send().text(), "catch-all");
}

#[test]
fn a_disabled_channel_is_ignored() {
    let disabled = Upstream::fixed(200, "disabled");
    let enabled = Upstream::fixed(200, "enabled");
    let mediary = Mediary::with_config(
        channel(
            "disabled",
            "^/patient",
            r#"["GET"]"#,
            "priority = 1\nstatus = \"disabled\"",
            &disabled,
        ) + &channel(
            "enabled",
            "^/patient",
            r#"["GET"]"#,
            "priority = 2\nstatus = \"enabled\"",
            &enabled,
        ),
    )
    .start();

    let reply = Client::new().get(mediary.url("/patient/42")).send();

    assert_eq!(reply.text(), "enabled");
    assert!(disabled.requests().is_empty());
}

#[test]
fn the_method_is_part_of_the_match() {
    let readers = Upstream::fixed(200, "readers");
    let writers = Upstream::fixed(200, "writers");
    let mediary = Mediary::with_config(
        channel(
            "readers",
            "^/patient",
            r#"["GET"]"#,
            "priority = 1",
            &readers,
        ) + &channel(
            "writers",
            "^/patient",
            r#"["POST", "PUT"]"#,
            "priority = 2",
            &writers,
        ),
    )
    .start();
    let client = Client::new();

    assert_eq!(
        client.get(mediary.url("/patient/1")).send().text(),
        "readers"
    );
    assert_eq!(
        client
            .post(mediary.url("/patient/1"))
            .body("{}")
            .send()
            .text(),
        "writers"
    );

    let wrong_method = client
        .request(Method::DELETE, mediary.url("/patient/1"))
        .send();
    assert_eq!(wrong_method.status(), 404, "no channel accepts DELETE");
    assert!(readers.requests().len() == 1 && writers.requests().len() == 1);
}

#[test]
fn the_url_pattern_is_an_unanchored_regex_on_the_path_only() {
    let encounters = Upstream::fixed(200, "encounters");
    let exact = Upstream::fixed(200, "exact");
    let mediary = Mediary::with_config(
        channel(
            "encounters",
            "encounter/[0-9]+",
            r#"["GET"]"#,
            "priority = 1",
            &encounters,
        ) + &channel("exact", "^/exact$", r#"["GET"]"#, "priority = 2", &exact),
    )
    .start();
    let client = Client::new();

    // Unanchored: the pattern may match anywhere in the path.
    assert_eq!(
        client
            .get(mediary.url("/fhir/encounter/17/_history"))
            .send()
            .text(),
        "encounters"
    );
    // The query string is not part of what the pattern sees.
    assert_eq!(
        client.get(mediary.url("/exact?encounter/5")).send().text(),
        "exact"
    );
    assert_eq!(
        client
            .get(mediary.url("/fhir?x=encounter/5"))
            .send()
            .status(),
        404
    );
    assert_eq!(client.get(mediary.url("/exact/more")).send().status(), 404);
}

#[test]
fn no_matching_channel_answers_404_with_a_json_error() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(channel(
        "patients",
        "^/patient",
        r#"["GET"]"#,
        "",
        &upstream,
    ))
    .start();

    let reply = Client::new().get(mediary.url("/nothing/here")).send();

    assert_eq!(reply.status(), 404);
    reply.json_error("client");
    assert!(upstream.requests().is_empty());
}

#[test]
fn a_private_channel_answers_401() {
    let upstream = Upstream::echo();
    let mediary = Mediary::with_config(format!(
        r#"
[[channels]]
name = "private by default"
urlPattern = "^/secret"
methods = ["GET"]

[[channels.routes]]
name = "secret route"
host = "127.0.0.1"
port = {port}
primary = true
"#,
        port = upstream.port()
    ))
    .start();

    let reply = Client::new().get(mediary.url("/secret")).send();

    assert_eq!(reply.status(), 401);
    assert!(upstream.requests().is_empty());
}
