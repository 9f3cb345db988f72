//! What the client gets when the upstream cannot be reached or is too slow:
//! 502 and 504 with a JSON error that says who is to blame and where.

use std::time::Duration;

use mediary_e2e::{Client, Mediary, Reply, Upstream, unused_port};

/// Checks the JSON error body shared by proxy-made error responses.
fn assert_upstream_error(reply: &Reply, channel: &str, route: &str) {
    let error = reply.json_error("upstream");
    assert_eq!(error["channel"], channel, "{error}");
    assert_eq!(error["route"], route, "{error}");
    let id = reply
        .header("x-mediary-transaction-id")
        .expect("an error response still has a transaction id");
    assert_eq!(error["transactionId"], id, "{error}");
}

#[test]
fn an_upstream_that_refuses_connections_gives_502() {
    let port = unused_port();
    let mediary = Mediary::with_config(format!(
        r#"
[[channels]]
name = "nobody home"
urlPattern = "^/down"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "closed port"
host = "127.0.0.1"
port = {port}
primary = true
"#
    ))
    .start();

    let reply = Client::new().get(mediary.url("/down")).send();

    assert_eq!(
        reply.status(),
        502,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_upstream_error(&reply, "nobody home", "closed port");
}

#[test]
fn a_slow_upstream_gives_504_at_the_channel_timeout() {
    let upstream = Upstream::slow(Duration::from_secs(10));
    let mediary = Mediary::with_config(format!(
        r#"
[timeouts]
upstream_response = "30s"

[[channels]]
name = "impatient"
urlPattern = "^/slow"
methods = ["GET"]
authType = "public"
timeout = 300

[[channels.routes]]
name = "sleepy"
host = "127.0.0.1"
port = {port}
primary = true
"#,
        port = upstream.port()
    ))
    .start();

    let reply = Client::new().get(mediary.url("/slow")).send();

    assert_eq!(
        reply.status(),
        504,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_upstream_error(&reply, "impatient", "sleepy");
    assert!(
        reply.elapsed >= Duration::from_millis(250),
        "gave up after {:?}, before the 300 ms channel timeout",
        reply.elapsed
    );
    assert!(
        reply.elapsed < Duration::from_secs(8),
        "took {:?}: the channel timeout (300 ms) was not applied",
        reply.elapsed
    );
    assert_eq!(upstream.requests().len(), 1);
}
