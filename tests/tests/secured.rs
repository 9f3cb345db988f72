//! `secured` routes speak HTTPS to the upstream and verify its certificate against the system's
//! roots plus the CAs in `upstream.ca_files`.

use mediary_e2e::{Client, Mediary, TestCa, Upstream};

fn secured_channel(ca_file: Option<&std::path::Path>, upstream: &Upstream) -> String {
    let upstream_table = ca_file
        .map(|f| format!("[upstream]\nca_files = [{:?}]\n", f.display().to_string()))
        .unwrap_or_default();
    format!(
        r#"
{upstream_table}
[[channels]]
name = "secure"
urlPattern = "^/secure"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "tls upstream"
host = "localhost"
port = {port}
primary = true
secured = true
"#,
        port = upstream.port()
    )
}

#[test]
fn a_secured_route_reaches_an_upstream_signed_by_a_configured_ca() {
    let ca = TestCa::new("Mediary test CA");
    let upstream = Upstream::tls(ca.issue(&["localhost"]), 200, "over tls");
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let mediary = Mediary::with_config(secured_channel(Some(&ca_file), &upstream)).start();

    let reply = Client::new().get(mediary.url("/secure/x")).send();

    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.text(), "over tls");
    assert_eq!(upstream.single_request().path, "/secure/x");
}

#[test]
fn a_secured_route_refuses_an_upstream_certificate_it_cannot_verify() {
    let trusted = TestCa::new("trusted CA");
    let stranger = TestCa::new("unknown CA");
    let upstream = Upstream::tls(stranger.issue(&["localhost"]), 200, "should not be read");
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, trusted.pem()).expect("write the CA");
    let mediary = Mediary::with_config(secured_channel(Some(&ca_file), &upstream)).start();

    let reply = Client::new().get(mediary.url("/secure/x")).send();

    assert_eq!(reply.status(), 502, "{}", reply.text());
    let error = reply.json_error("upstream");
    assert_eq!(error["route"], "tls upstream", "{error}");
    assert!(
        error["error"].as_str().is_some_and(|m| m.contains("TLS")),
        "{error}"
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_is_a_config_error() {
    let upstream = Upstream::fixed(200, "unused");
    let dir = tempfile::tempdir().expect("a temp dir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write a file");

    for file in [dir.path().join("missing.pem"), not_pem] {
        let finished = Mediary::with_config(secured_channel(Some(&file), &upstream)).check_config();
        assert_eq!(finished.status.code(), Some(64), "{}", finished.stderr);
        assert!(
            finished.error_about("upstream.ca_files").is_some(),
            "{}",
            finished.stderr
        );
    }
}
