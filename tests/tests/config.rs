//! Config validation: a bad config stops `run` and `check-config` with exit
//! code 64 and one `error: <file>: <field>: <reason>` line per problem, all
//! of them at once; good configs pass `check-config`.

use mediary_e2e::binary::workspace_root;
use mediary_e2e::{Finished, Mediary};

/// Exit code for a bad config (EX_USAGE).
const BAD_CONFIG: i32 = 64;

/// Six independent mistakes, each in its own place.
const SIX_MISTAKES: &str = r#"
[server]
bind = "127.0.0.1"
http_port = 99999
api_port = 0
workers = 1

[[channels]]
name = "bad regex and port"
urlPattern = "^/patient/(["
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "port out of range"
host = "127.0.0.1"
port = 70000
primary = true

[[channels]]
name = "two primaries"
urlPattern = "^/two"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "first primary"
host = "127.0.0.1"
port = 8001
primary = true

[[channels.routes]]
name = "second primary"
host = "127.0.0.1"
port = 8002
primary = true

[[channels]]
name = "unknown field"
urlPattern = "^/unknown"
methods = ["GET"]
authType = "public"
colour = "blue"

[[channels.routes]]
name = "fine"
host = "127.0.0.1"
port = 8003
primary = true

[[channels]]
name = "path and pathTransform"
urlPattern = "^/both"
methods = ["GET"]
authType = "public"

[[channels.routes]]
name = "both"
host = "127.0.0.1"
port = 8004
primary = true
path = "/fixed"
pathTransform = "s/both/neither/"
"#;

/// The field path each mistake must be reported under (a prefix: the
/// reason, or a more precise path, may follow).
const EXPECTED_FIELDS: [&str; 6] = [
    "server.http_port",
    "channels[0].urlPattern",
    "channels[0].routes[0].port",
    "channels[1].routes",
    "channels[2].colour",
    "channels[3].routes[0]",
];

fn assert_every_mistake_is_reported(finished: &Finished) {
    assert_eq!(finished.code(), BAD_CONFIG, "stderr:\n{}", finished.stderr);
    let missing: Vec<&str> = EXPECTED_FIELDS
        .into_iter()
        .filter(|field| finished.error_about(field).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "no `error: {}: <field>: ...` line for {missing:?}; stderr:\n{}",
        finished.config_path.display(),
        finished.stderr
    );
    // One line per error: no reason may spill onto lines of its own.
    let prefix = format!("error: {}: ", finished.config_path.display());
    let stray: Vec<&str> = finished
        .error_lines()
        .into_iter()
        .filter(|line| !line.starts_with(&prefix))
        .collect();
    assert!(
        stray.is_empty(),
        "error lines that do not start with `{prefix}`: {stray:?}; stderr:\n{}",
        finished.stderr
    );
    assert_eq!(
        finished.error_lines().len(),
        EXPECTED_FIELDS.len(),
        "one line per mistake; stderr:\n{}",
        finished.stderr
    );
}

#[test]
fn run_with_a_bad_config_exits_64_naming_every_mistake() {
    let finished = Mediary::with_config(SIX_MISTAKES).run_until_exit();

    assert_every_mistake_is_reported(&finished);
}

#[test]
fn check_config_with_a_bad_config_exits_64_naming_every_mistake() {
    let finished = Mediary::with_config(SIX_MISTAKES).check_config();

    assert_every_mistake_is_reported(&finished);
}

#[test]
fn check_config_accepts_a_good_config() {
    let finished = Mediary::with_config(
        r#"
[timeouts]
upstream_response = "30s"

[limits]
max_request_body = "1MiB"

[[channels]]
name = "patients"
urlPattern = "^/fhir/Patient"
methods = ["GET", "POST"]
authType = "public"
priority = 1
timeout = 2000
maxBodySize = 1048576

[[channels.routes]]
name = "hapi"
host = "127.0.0.1"
port = 8080
primary = true
pathTransform = "s/fhir/baseR4/"
username = "mediary"
password = "s3cret"
"#,
    )
    .check_config();

    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
    assert!(
        finished.error_lines().is_empty(),
        "stderr:\n{}",
        finished.stderr
    );
}

#[test]
fn the_shipped_default_config_passes_check_config() {
    let default = workspace_root().join("config/default.toml");
    assert!(default.is_file(), "{} is missing", default.display());

    let finished = Mediary::with_config_file(default).check_config();

    assert_eq!(finished.code(), 0, "stderr:\n{}", finished.stderr);
}
