//! HTTPS: the proxy's listener (TLS 1.2 and 1.3, certificates reloaded from files while running),
//! mutual TLS at the handshake, the management API over HTTPS, and `secured` routes presenting a
//! client certificate to upstreams that require one.

use std::path::Path;
use std::time::Duration;

use mediary_e2e::{Client, Mediary, ServerCert, TestCa, Upstream, Versions, eventually, https_get};

/// A Mediary with `[tls]` from `cert` (written into `dir`), `extra` TLS keys, and a public channel
/// `/echo` to `upstream`.
fn https_config(dir: &Path, cert: &ServerCert, extra: &str, upstream: &Upstream) -> String {
    let (cert_file, key_file) = cert.write(dir, "server");
    format!(
        r#"
[server]
bind = "127.0.0.1"
http_port = 0
https_port = 0
api_port = 0
workers = 1

[tls]
cert_file = {cert_file:?}
key_file = {key_file:?}
{extra}

[[channels]]
name = "echo"
urlPattern = "^/echo"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "upstream"
host = "127.0.0.1"
port = {port}
primary = true
"#,
        port = upstream.port()
    )
}

#[test]
fn https_serves_tls_1_2_and_1_3_beside_plain_http() {
    let ca = TestCa::new("server CA");
    let cert = ca.issue(&["localhost"]);
    let upstream = Upstream::fixed(200, "hello");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mediary = Mediary::with_config(https_config(dir.path(), &cert, "", &upstream)).start();

    for (versions, expected) in [
        (Versions::Tls12, rustls::ProtocolVersion::TLSv1_2),
        (Versions::Tls13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let reply = https_get(mediary.https_addr(), "/echo/x", &ca, None, versions)
            .unwrap_or_else(|e| panic!("{versions:?}: {e}\n{}", mediary.logs()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "hello");
        assert_eq!(reply.version, expected);
        assert_eq!(reply.served_sha256, cert.sha256());
    }
    let plain = Client::new().get(mediary.url("/echo/x")).send();
    assert_eq!(plain.status(), 200);
}

#[test]
fn mutual_tls_accepts_a_known_client_and_refuses_unknown_or_expired_ones() {
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let stranger = TestCa::new("another CA");
    let upstream = Upstream::fixed(200, "hello");
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, clients.pem()).expect("write the client CA");
    let extra = format!("client_ca_files = [{ca_file:?}]");
    let mediary = Mediary::with_config(https_config(
        dir.path(),
        &ca.issue(&["localhost"]),
        &extra,
        &upstream,
    ))
    .start();
    let addr = mediary.https_addr();

    for versions in [Versions::Tls12, Versions::Tls13] {
        let known = clients.issue_client("client-a");
        let reply = https_get(addr, "/echo/x", &ca, Some(&known), versions)
            .unwrap_or_else(|e| panic!("{versions:?}: {e}\n{}", mediary.logs()));
        assert_eq!(reply.status, 200);

        // No certificate at all: served (another authentication may apply).
        let reply = https_get(addr, "/echo/x", &ca, None, versions).expect("no certificate");
        assert_eq!(reply.status, 200);

        for (what, cert) in [
            ("unknown CA", stranger.issue_client("client-b")),
            ("expired", clients.issue_expired_client("client-c")),
        ] {
            let result = https_get(addr, "/echo/x", &ca, Some(&cert), versions);
            assert!(
                result.is_err(),
                "{what} ({versions:?}) was served: {result:?}"
            );
        }
    }
    // Every request that reached the upstream came from an accepted client.
    assert_eq!(upstream.requests().len(), 4);
}

#[test]
fn replaced_certificate_files_are_served_to_new_connections_without_a_restart() {
    let ca = TestCa::new("server CA");
    let first = ca.issue(&["localhost"]);
    let upstream = Upstream::fixed(200, "hello");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mediary = Mediary::with_config(https_config(
        dir.path(),
        &first,
        "reload_interval = \"100ms\"",
        &upstream,
    ))
    .start();
    let addr = mediary.https_addr();
    let served = |what: &str| {
        https_get(addr, "/echo/x", &ca, None, Versions::Both)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", mediary.logs()))
            .served_sha256
    };
    assert_eq!(served("first"), first.sha256());

    let second = ca.issue(&["localhost"]);
    second.write(dir.path(), "server");
    eventually(
        Duration::from_secs(10),
        "the new certificate is served",
        || (served("second") == second.sha256()).then_some(()),
    );

    // A broken certificate file is reported and ignored.
    std::fs::write(dir.path().join("server.pem"), "not a certificate").expect("break the file");
    assert!(
        mediary.wait_for_log("not usable", Duration::from_secs(10)),
        "{}",
        mediary.logs()
    );
    assert_eq!(served("after a bad file"), second.sha256());
    assert!(
        mediary.logs().contains("tls.cert_file"),
        "{}",
        mediary.logs()
    );
}

#[test]
fn the_api_speaks_https_when_a_certificate_is_configured() {
    let ca = TestCa::new("server CA");
    let upstream = Upstream::fixed(200, "hello");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mediary = Mediary::with_config(https_config(
        dir.path(),
        &ca.issue(&["localhost"]),
        "",
        &upstream,
    ))
    .start();
    let reply = https_get(mediary.api_addr(), "/heartbeat", &ca, None, Versions::Both)
        .unwrap_or_else(|e| panic!("{e}\n{}", mediary.logs()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Plain HTTP to the API is not answered as HTTP.
    let plain = Client::new().get(mediary.api_url("/heartbeat")).try_send();
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "{plain:?}"
    );
}

#[test]
fn a_bad_certificate_file_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, "nothing").expect("write");
    let finished = Mediary::with_config(format!(
        "[tls]\ncert_file = {cert:?}\nkey_file = {:?}\n",
        dir.path().join("server.key")
    ))
    .check_config();
    assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
    assert!(
        finished.error_about("tls.cert_file").is_some(),
        "{}",
        finished.stderr
    );
}

/// A channel with a `secured` route to `upstream` (on `localhost`), trusting `ca_file`, and
/// presenting `client` when given.
fn secured_config(ca_file: &Path, client: Option<(&Path, &Path)>, upstream: &Upstream) -> String {
    let client = client
        .map(|(cert, key)| format!("client_cert_file = {cert:?}\nclient_key_file = {key:?}\n"))
        .unwrap_or_default();
    format!(
        r#"
[upstream]
ca_files = [{ca_file:?}]
{client}

[[channels]]
name = "secure"
urlPattern = "^/secure"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "mtls upstream"
host = "localhost"
port = {port}
primary = true
secured = true
"#,
        port = upstream.port()
    )
}

#[test]
fn a_secured_route_presents_its_client_certificate_to_an_upstream_that_requires_one() {
    let ca = TestCa::new("upstream CA");
    let clients = TestCa::new("upstream's client CA");
    let upstream =
        Upstream::tls_requiring_client_cert(ca.issue(&["localhost"]), &clients, 200, "mutual");
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let (cert, key) = clients.issue_client("mediary").write(dir.path(), "client");

    let mediary =
        Mediary::with_config(secured_config(&ca_file, Some((&cert, &key)), &upstream)).start();
    let reply = Client::new().get(mediary.url("/secure/x")).send();
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.text(), "mutual");
    drop(mediary);

    let without = Mediary::with_config(secured_config(&ca_file, None, &upstream)).start();
    let reply = Client::new().get(without.url("/secure/x")).send();
    assert_eq!(reply.status(), 502, "{}", reply.text());
    assert_eq!(upstream.requests().len(), 1);
}
