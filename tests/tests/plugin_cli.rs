//! `mediary plugin ...` against the real binary: for each language, a scaffold is created, built with
//! the real toolchain (cargo, npm + componentize-js, pip + componentize-py), tested offline on its
//! own cases, run offline against a transaction recorded by a running Mediary, and pushed to that
//! Mediary, whose channel then routes with it. The error cases check the messages and exit codes.
//!
//! The JavaScript and Python builds download their toolchains from npm and PyPI the first time
//! (npm's and pip's caches make later runs fast); the Rust build needs crates.io and the
//! wasm32-wasip2 target.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mediary_e2e::api::plugin_channel_json;
use mediary_e2e::binary::mediary_bin;
use mediary_e2e::{Client, Mediary, ROOT_EMAIL, ROOT_PASSWORD, Upstream};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(10);

/// What a finished `mediary` command said.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `mediary <args>` in `dir` and waits for it.
fn mediary(dir: &Path, args: &[&str]) -> Ran {
    let mut command = Command::new(mediary_bin());
    command.args(args).current_dir(dir);
    // `cargo test` hands this process its crate's variables; the scaffold's own cargo build must
    // not see them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let crate_var = (name.starts_with("CARGO_") && name != "CARGO_HOME")
            || name == "OUT_DIR"
            || name == "RUSTFLAGS";
        if crate_var {
            command.env_remove(name);
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run mediary {args:?}: {error}"));
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The component path a `plugin build` printed (`Built <path> (<size>).`).
fn built_path(dir: &Path, ran: &Ran) -> PathBuf {
    let line = ran
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Built "))
        .unwrap_or_else(|| panic!("no `Built` line: {ran:?}"));
    let path = line
        .rsplit_once(" (")
        .map_or(line, |(path, _)| path)
        .to_owned();
    dir.join(path)
}

/// The settings the scaffolds' `tests/cases.json` uses.
fn scaffold_settings() -> Value {
    json!({"requireHeader": "x-request-id", "routes": {"/fhir/": "fhir", "/lab/": "lab"}})
}

/// new → build → test → push → a channel routes with it → run against its recorded transaction.
fn round_trip(lang: &str, world: &str) {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let parent = temp.path();
    let name = format!("my-{lang}-plugin");

    let created = mediary(
        parent,
        &["plugin", "new", "--lang", lang, "--world", world, &name],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let dir = parent.join(&name);
    for file in [
        "wit/plugin.wit",
        "README.md",
        ".gitignore",
        "tests/cases.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }

    let built = mediary(&dir, &["plugin", "build"]);
    assert_eq!(built.code, 0, "{built:?}");
    let wasm = built_path(&dir, &built);
    assert!(wasm.is_file(), "{} is missing: {built:?}", wasm.display());

    let tested = mediary(&dir, &["plugin", "test", "--no-build"]);
    assert_eq!(tested.code, 0, "{tested:?}");
    assert!(tested.stdout.contains("4 passed, 0 failed."), "{tested:?}");

    // A case the plugin does not meet fails the run, and says what it got.
    let cases_path = dir.join("tests/cases.json");
    let mut cases: Value =
        serde_json::from_str(&std::fs::read_to_string(&cases_path).expect("cases")).expect("json");
    cases["cases"][0]["expect"] = json!({"route": "lab"});
    std::fs::write(&cases_path, cases.to_string()).expect("write cases");
    let failing = mediary(&dir, &["plugin", "test", "--no-build"]);
    assert_eq!(failing.code, 1, "{failing:?}");
    assert!(
        failing
            .stdout
            .contains("expected forward to route `lab`, got forward to route `fhir`"),
        "{failing:?}"
    );
    assert!(
        failing.stdout.contains("3 passed, 1 failed."),
        "{failing:?}"
    );

    // Push to a running Mediary; a wrong password is refused with a clear message.
    let fhir = Upstream::fixed(200, "fhir");
    let other = Upstream::fixed(200, "other");
    let server = Mediary::with_config("").start();
    let api_url = server.api_url("");
    let wasm_arg = wasm.to_string_lossy().into_owned();
    let refused = mediary(
        &dir,
        &[
            "plugin",
            "push",
            &name,
            &wasm_arg,
            "--api",
            &api_url,
            "--user",
            ROOT_EMAIL,
            "--password",
            "wrong",
        ],
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("401"), "{refused:?}");
    assert!(refused.stderr.contains("credentials"), "{refused:?}");
    let pushed = mediary(
        &dir,
        &[
            "plugin",
            "push",
            &name,
            &wasm_arg,
            "--api",
            &api_url,
            "--user",
            ROOT_EMAIL,
            "--password",
            ROOT_PASSWORD,
        ],
    );
    assert_eq!(pushed.code, 0, "{pushed:?}");
    assert!(
        pushed.stdout.contains(&format!("{name} version 1: pushed")),
        "{pushed:?}"
    );

    let api = server.api();
    // The host tells the languages apart by the producers their toolchains record; JavaScript and
    // Python get the interpreted deadline.
    let language = match lang {
        "js" => "javascript",
        other => other,
    };
    let stored = api.get(&format!("/plugins/{name}")).send().json();
    assert_eq!(stored["versions"][0]["language"], language, "{stored}");
    let mut channel = plugin_channel_json(
        "scaffold",
        "^/.*$",
        other.port(),
        json!({"name": name, "config": scaffold_settings()}),
    );
    channel["routes"] = json!([
        {"name": "default", "host": "127.0.0.1", "port": other.port(), "primary": true},
        {"name": "fhir", "host": "127.0.0.1", "port": fhir.port()},
    ]);
    api.create_channel(&channel);
    let client = Client::new();
    let routed = client
        .get(server.url("/fhir/Patient/1"))
        .header("x-request-id", "r-1")
        .send();
    assert_eq!((routed.status(), routed.text().as_str()), (200, "fhir"));
    if world == "channel-plugin" {
        assert_eq!(routed.header("x-mediary-plugin"), Some(name.as_str()));
    }
    let refused = client.get(server.url("/fhir/Patient/1")).send();
    assert_eq!(refused.status(), 400, "{}", refused.text());
    assert!(
        refused.text().contains("x-request-id"),
        "{}",
        refused.text()
    );

    // The recorded transaction, run offline: the same decision.
    let record = api.settled_transaction(&routed.transaction_id(), SETTLE);
    let record_path = parent.join("tx.json");
    std::fs::write(&record_path, record.to_string()).expect("write the record");
    let response_path = parent.join("response.json");
    std::fs::write(
        &response_path,
        json!({"status": 200, "headers": [["content-type", "text/plain"]], "body": "fhir"})
            .to_string(),
    )
    .expect("write the response");
    let settings = scaffold_settings().to_string();
    let ran = mediary(
        &dir,
        &[
            "plugin",
            "run",
            &wasm_arg,
            "--request",
            &record_path.to_string_lossy(),
            "--config",
            &settings,
            "--response",
            &response_path.to_string_lossy(),
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let out: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran:?}"));
    assert_eq!(
        out["forward"]["target"],
        json!({"route": "fhir"}),
        "{ran:?}"
    );
    assert!(
        ran.stderr.contains("Decided."),
        "the plugin's log line: {ran:?}"
    );
    if world == "channel-plugin" {
        let headers = out["response"]["headers"].to_string();
        assert!(headers.contains("x-mediary-plugin"), "{ran:?}");
    }
}

#[test]
fn a_rust_plugin_from_new_to_push() {
    round_trip("rust", "router-plugin");
}

#[test]
fn a_javascript_plugin_from_new_to_push() {
    round_trip("js", "channel-plugin");
}

#[test]
fn a_python_plugin_from_new_to_push() {
    round_trip("python", "channel-plugin");
}

#[test]
fn usage_errors_are_explained() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let parent = temp.path();

    let bad = mediary(parent, &["plugin", "new", "--lang", "rust", "Bad_Name"]);
    assert_eq!(bad.code, 64, "{bad:?}");
    assert!(
        bad.stderr.contains("`Bad_Name` is not a plugin name"),
        "{bad:?}"
    );

    let unknown = mediary(parent, &["plugin", "new", "--lang", "go", "x"]);
    assert_eq!(unknown.code, 64, "{unknown:?}");
    assert!(unknown.stderr.contains("invalid value 'go'"), "{unknown:?}");

    let first = mediary(parent, &["plugin", "new", "--lang", "js", "twice"]);
    assert_eq!(first.code, 0, "{first:?}");
    let second = mediary(parent, &["plugin", "new", "--lang", "python", "twice"]);
    assert_eq!(second.code, 64, "{second:?}");
    assert!(second.stderr.contains("already exists"), "{second:?}");

    std::fs::create_dir(parent.join("empty")).expect("a folder");
    let nothing = mediary(parent, &["plugin", "build", "empty"]);
    assert_eq!(nothing.code, 64, "{nothing:?}");
    assert!(nothing.stderr.contains("nothing to build"), "{nothing:?}");

    let missing = mediary(
        parent,
        &["plugin", "run", "none.wasm", "--request", "none.json"],
    );
    assert_eq!(missing.code, 64, "{missing:?}");
    assert!(missing.stderr.contains("none.json"), "{missing:?}");

    let refused = mediary(
        parent,
        &[
            "plugin",
            "push",
            "x",
            "none.wasm",
            "--api",
            "http://127.0.0.1:1",
            "--user",
            "a@b",
            "--password",
            "p",
        ],
    );
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(refused.stderr.contains("no such file"), "{refused:?}");

    std::fs::write(parent.join("some.wasm"), b"\0asm").expect("a file");
    let unreachable = mediary(
        parent,
        &[
            "plugin",
            "push",
            "x",
            "some.wasm",
            "--api",
            "http://127.0.0.1:1",
            "--user",
            "a@b",
            "--password",
            "p",
        ],
    );
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("connection refused"),
        "{unreachable:?}"
    );
}

#[test]
fn push_speaks_https_with_a_ca_file_or_insecure() {
    let ca = mediary_e2e::TestCa::new("API CA");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (cert_file, key_file) = ca.issue(&["localhost"]).write(dir.path(), "api");
    let server = Mediary::with_config(format!(
        "[tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n"
    ))
    .start();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let port = server.api_addr().port();
    let wasm = mediary_e2e::plugins::ROUTER;
    let push = |api: &str, extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "push",
            "router",
            wasm,
            "--api",
            api,
            "--user",
            ROOT_EMAIL,
            "--password",
            ROOT_PASSWORD,
        ];
        args.extend_from_slice(extra);
        mediary(dir.path(), &args)
    };

    let by_name = format!("https://localhost:{port}");
    let untrusted = push(&by_name, &[]);
    assert_eq!(untrusted.code, 1, "{untrusted:?}");
    assert!(
        untrusted.stderr.contains("TLS handshake failed"),
        "{untrusted:?}"
    );
    assert!(untrusted.stderr.contains("--ca"), "{untrusted:?}");

    let trusted = push(&by_name, &["--ca", &ca_file.to_string_lossy()]);
    assert_eq!(trusted.code, 0, "{trusted:?}");
    assert!(
        trusted.stdout.contains("router version 1: pushed"),
        "{trusted:?}"
    );

    let insecure = push(&format!("https://127.0.0.1:{port}"), &["--insecure"]);
    assert_eq!(insecure.code, 0, "{insecure:?}");
    assert!(
        insecure.stdout.contains("router version 1: unchanged"),
        "{insecure:?}"
    );
}
