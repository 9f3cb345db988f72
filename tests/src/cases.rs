//! The shared test cases of the example plugins (`plugins/cases/*.json`, format in
//! `plugins/cases/README.md`), run through a real Mediary against one plugin component.
//!
//! [`CaseFile::run`] starts one Mediary with a channel per case and isolation mode (`/reuse-3/...`,
//! `/per-request-3/...`), each carrying the component with the case's settings and every route
//! of the file to its own recording upstream; sends every case's request; and checks what the
//! client got, which upstream saw what, and what the plugin logged. Every failure is collected,
//! and the run panics once, naming each case, language and isolation that failed and why.
//!
//! Compiled components are cached in `target/plugin-cache-tests` (see [`cache_dir`]), shared by
//! every test process: a 12–18 MB JavaScript or Python component is compiled by Cranelift once per
//! build of it, not in every test; artifacts of components that are gone are removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::{Answer, Client, Mediary, Method, Reply, Seen, Upstream};

/// The header that tells the upstreams which channel (isolation and case) a request came through.
const CASE_HEADER: &str = "x-mediary-case";

/// How long a transaction record may take to settle.
const SETTLE: Duration = Duration::from_secs(10);

/// A file of cases for one plugin.
#[derive(Debug)]
pub struct CaseFile {
    pub path: PathBuf,
    /// The plugin's folder name (`router`, `lab-csv`).
    pub plugin: String,
    /// The WIT world its versions target.
    pub world: String,
    /// The channel's routes; the first is the primary one.
    pub routes: Vec<String>,
    pub cases: Vec<Case>,
}

/// One case: settings, a request and what must come of it.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub config: Value,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What every route's upstream answers for this case; `None`: 200 with the route's name.
    pub upstream: Option<Canned>,
    /// The `expect` object, checked by [`check`].
    pub expect: Map<String, Value>,
}

/// A response the upstreams give for a case.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The keys `expect` may have; any other is a mistake in the file.
const EXPECT_KEYS: [&str; 8] = [
    "route",
    "status",
    "body",
    "bodyContains",
    "headers",
    "absentHeaders",
    "upstreamRequest",
    "log",
];

/// Where compiled plugins are cached for every test process: `plugin-cache-tests` in the target
/// directory this test binary runs from.
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test binary>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps");
    target.join("plugin-cache-tests")
}

/// Removes the compiled code of components that no longer exist from [`cache_dir`], once per
/// process, before any test uses it. componentize-js and componentize-py do not build
/// reproducibly: every rebuild of a guest is a new digest and leaves a 35 MB artifact behind.
/// Kept: the Rust plugins `build.rs` made and every `.wasm` now in `plugins/{js,python}/*/dist`.
fn prune_cache() {
    static PRUNED: std::sync::Once = std::sync::Once::new();
    PRUNED.call_once(|| {
        use sha2::{Digest as _, Sha256};
        let root = crate::guests::repo_root().join("plugins");
        let mut components: Vec<PathBuf> = [
            crate::plugins::ROUTER,
            crate::plugins::LAB_CSV,
            crate::plugins::GUARD,
            crate::plugins::TEST_MISBEHAVE,
            crate::plugins::TEST_PROBE,
            crate::plugins::TEST_TAG_A,
            crate::plugins::TEST_TAG_B,
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        for language in ["js", "python"] {
            let plugins = std::fs::read_dir(root.join(language)).into_iter().flatten();
            for plugin in plugins.filter_map(Result::ok) {
                let dist = std::fs::read_dir(plugin.path().join("dist"))
                    .into_iter()
                    .flatten();
                components.extend(
                    dist.filter_map(Result::ok)
                        .map(|entry| entry.path())
                        .filter(|path| path.extension().is_some_and(|e| e == "wasm")),
                );
            }
        }
        let kept: Vec<String> = components
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .map(|bytes| {
                Sha256::digest(&bytes)
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect()
            })
            .collect();
        let cached = std::fs::read_dir(cache_dir()).into_iter().flatten();
        for entry in cached.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cwasm") && !kept.iter().any(|digest| name.starts_with(digest)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
}

impl CaseFile {
    /// `plugins/cases/<name>.json`, parsed; panics naming the file and what is wrong.
    pub fn load(name: &str) -> CaseFile {
        let path = crate::guests::repo_root()
            .join("plugins/cases")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()));
        let bad = |what: &str| -> ! { panic!("{}: {what}", path.display()) };
        let text_of = |value: &Value, what: &str| -> String {
            value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| bad(&format!("{what} must be a string")))
        };
        let pairs = |value: &Value, what: &str| -> Vec<(String, String)> {
            value
                .as_array()
                .unwrap_or_else(|| bad(&format!("{what} must be a list of [name, value] pairs")))
                .iter()
                .map(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(name), Value::String(value)]) => {
                        (name.clone(), value.clone())
                    }
                    _ => bad(&format!("{what}: {pair} is not a [name, value] pair")),
                })
                .collect()
        };
        let routes: Vec<String> = doc["routes"]
            .as_array()
            .filter(|routes| !routes.is_empty())
            .unwrap_or_else(|| bad("`routes` must be a non-empty list of route names"))
            .iter()
            .map(|route| text_of(route, "each of `routes`"))
            .collect();
        let mut cases = Vec::new();
        for (i, case) in doc["cases"]
            .as_array()
            .unwrap_or_else(|| bad("`cases` must be a list"))
            .iter()
            .enumerate()
        {
            let name = text_of(&case["name"], &format!("cases[{i}].name"));
            let at = |field: &str| format!("case `{name}`: {field}");
            let request = &case["request"];
            let method = text_of(&request["method"], &at("request.method"));
            let method = Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|_| bad(&at("request.method is not an HTTP method")));
            let config = case
                .get("config")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            if !config.is_object() {
                bad(&at("config must be an object"));
            }
            let upstream = case.get("upstream").map(|answer| Canned {
                status: answer["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or_else(|| bad(&at("upstream.status must be a status code"))),
                headers: answer
                    .get("headers")
                    .map_or_else(Vec::new, |h| pairs(h, &at("upstream.headers"))),
                body: answer
                    .get("body")
                    .map_or_else(String::new, |b| text_of(b, &at("upstream.body"))),
            });
            let expect = case["expect"]
                .as_object()
                .cloned()
                .unwrap_or_else(|| bad(&at("expect must be an object")));
            if let Some(key) = expect.keys().find(|k| !EXPECT_KEYS.contains(&k.as_str())) {
                bad(&at(&format!(
                    "expect has an unknown key `{key}` (known: {EXPECT_KEYS:?})"
                )));
            }
            if let Some(route) = expect.get("route")
                && !route
                    .as_str()
                    .is_some_and(|r| routes.iter().any(|n| n == r))
            {
                bad(&at(&format!("expect.route {route} is not one of `routes`")));
            }
            cases.push(Case {
                config,
                method,
                path: text_of(&request["path"], &at("request.path")),
                query: request
                    .get("query")
                    .map_or_else(String::new, |q| text_of(q, &at("request.query"))),
                headers: request
                    .get("headers")
                    .map_or_else(Vec::new, |h| pairs(h, &at("request.headers"))),
                body: request
                    .get("body")
                    .map_or_else(String::new, |b| text_of(b, &at("request.body"))),
                upstream,
                expect,
                name,
            });
        }
        let names: std::collections::HashSet<&str> =
            cases.iter().map(|c| c.name.as_str()).collect();
        if names.len() != cases.len() {
            bad("two cases have the same name");
        }
        CaseFile {
            plugin: text_of(&doc["plugin"], "`plugin`"),
            world: text_of(&doc["world"], "`world`"),
            routes,
            cases,
            path,
        }
    }

    /// Runs every case against `component` (built from `language`'s version of the plugin), once
    /// per isolation mode (`"reuse"`, `"per-request"`), all in one Mediary; panics listing every
    /// failure.
    pub fn run(&self, language: &str, component: &Path, isolations: &[&str]) {
        self.run_with(language, component, isolations, "");
    }

    /// As [`CaseFile::run`], with more keys for Mediary's `[plugins]` table (`"max_instances = 1"`).
    pub fn run_with(&self, language: &str, component: &Path, isolations: &[&str], plugins: &str) {
        let canned: Arc<Vec<Option<Canned>>> =
            Arc::new(self.cases.iter().map(|c| c.upstream.clone()).collect());
        let upstreams: Vec<(String, Upstream)> = self
            .routes
            .iter()
            .map(|route| {
                let canned = Arc::clone(&canned);
                let name = route.clone();
                let upstream = Upstream::answering(move |seen| answer(&canned, &name, seen));
                (route.clone(), upstream)
            })
            .collect();

        let mut toml = format!(
            "[plugins]\ncache_dir = {}\n{plugins}\n",
            Value::from(cache_dir().to_string_lossy().as_ref())
        );
        for isolation in isolations {
            for (i, case) in self.cases.iter().enumerate() {
                toml.push_str(&self.channel(
                    &key(isolation, i),
                    case,
                    component,
                    isolation,
                    &upstreams,
                ));
            }
        }
        prune_cache();
        let heavy = crate::guests::heavy_work();
        let started = Instant::now();
        let mediary = Mediary::with_config(toml).start();
        drop(heavy);
        eprintln!(
            "{language} {}: Mediary ready in {:.2} s ({} channels)",
            self.plugin,
            started.elapsed().as_secs_f64(),
            isolations.len() * self.cases.len()
        );
        let api = mediary.api();
        let client = Client::new();

        let mut failures = Vec::new();
        let mut failed = Vec::new();
        for isolation in isolations {
            for (i, case) in self.cases.iter().enumerate() {
                let key = key(isolation, i);
                let mut url = mediary.url(&format!("/{key}{}", case.path));
                if !case.query.is_empty() {
                    url = format!("{url}?{}", case.query);
                }
                let mut call = client
                    .request(case.method.clone(), url)
                    .header(CASE_HEADER, &key);
                for (name, value) in &case.headers {
                    call = call.header(name, value);
                }
                let problems = match call.body(case.body.clone()).try_send() {
                    Err(error) => vec![format!("the request failed: {error}")],
                    Ok(reply) => {
                        let mut problems = check(case, &key, &reply, &upstreams);
                        if let Some(expected) = case.expect.get("log") {
                            let record = api.settled_transaction(&reply.transaction_id(), SETTLE);
                            problems.extend(check_log(expected, &record["pluginLog"]));
                            if record["plugin"]["isolation"] != *isolation {
                                problems.push(format!(
                                    "the record says the plugin ran with isolation {}",
                                    record["plugin"]["isolation"]
                                ));
                            }
                        }
                        problems
                    }
                };
                if !problems.is_empty() {
                    failed.push((isolation, i));
                }
                for problem in problems {
                    failures.push(format!(
                        "[{language}, {isolation}] {}: {problem}",
                        case.name
                    ));
                }
            }
        }
        failed.dedup();
        assert!(
            failures.is_empty(),
            "{} of the {} cases of {} failed for {language} ({}):\n  {}",
            failed.len(),
            self.cases.len() * isolations.len(),
            self.path.display(),
            component.display(),
            failures.join("\n  ")
        );
    }

    /// TOML for the channel of one case: `^/<key>/`, the plugin with the case's settings, every
    /// route to its upstream, the first one primary.
    fn channel(
        &self,
        key: &str,
        case: &Case,
        component: &Path,
        isolation: &str,
        upstreams: &[(String, Upstream)],
    ) -> String {
        let plugin = serde_json::json!({
            "file": component.to_string_lossy(),
            "config": case.config,
            "isolation": isolation,
            "logLevel": "debug",
        });
        let mut toml = format!(
            r#"
[[channels]]
name = "{key}"
urlPattern = "^/{key}/"
methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
authType = "public"
plugin = {}
"#,
            toml_inline(&plugin, &case.name)
        );
        for (i, (route, upstream)) in upstreams.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[channels.routes]]\nname = {}\nhost = \"127.0.0.1\"\nport = {}\nprimary = {}\n",
                Value::from(route.as_str()),
                upstream.port(),
                i == 0
            ));
        }
        toml
    }
}

/// The channel key (path prefix and case header) of case `i` under `isolation`.
fn key(isolation: &str, i: usize) -> String {
    format!("{isolation}-{i}")
}

/// What `route`'s upstream answers `seen`: the case's canned answer, or 200 with the route's name.
fn answer(canned: &[Option<Canned>], route: &str, seen: &Seen) -> Answer {
    let case = seen
        .header(CASE_HEADER)
        .and_then(|key| key.rsplit('-').next())
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| canned.get(i));
    match case {
        Some(Some(canned)) => canned
            .headers
            .iter()
            .fold(Answer::status(canned.status), |answer, (name, value)| {
                answer.header(name, value)
            })
            .body(canned.body.clone()),
        _ => Answer::status(200)
            .header("content-type", "text/plain")
            .body(route.to_owned()),
    }
}

/// What is wrong with `reply` (and with what the upstreams saw) for `case`.
fn check(case: &Case, key: &str, reply: &Reply, upstreams: &[(String, Upstream)]) -> Vec<String> {
    let expect = &case.expect;
    let mut problems = Vec::new();
    let got = format!(
        "got {} {:?}",
        reply.status(),
        String::from_utf8_lossy(&reply.body)
    );

    let seen: Vec<(&str, Seen)> = upstreams
        .iter()
        .flat_map(|(route, upstream)| {
            upstream
                .requests()
                .into_iter()
                .filter(|seen| seen.header(CASE_HEADER) == Some(key))
                .map(move |seen| (route.as_str(), seen))
        })
        .collect();
    let reached: Vec<&str> = seen.iter().map(|(route, _)| *route).collect();
    let route = expect.get("route").and_then(Value::as_str);
    match route {
        Some(route) if reached != [route] => problems.push(format!(
            "expected only route `{route}` to be called, but these were: {reached:?} ({got})"
        )),
        None if !reached.is_empty() => problems.push(format!(
            "expected no route to be called, but these were: {reached:?} ({got})"
        )),
        _ => {}
    }

    let status = expect
        .get("status")
        .and_then(Value::as_u64)
        .or_else(|| route.map(|_| case.upstream.as_ref().map_or(200, |c| u64::from(c.status))));
    if let Some(status) = status
        && u64::from(reply.status()) != status
    {
        problems.push(format!("expected status {status}, {got}"));
    }
    let body = String::from_utf8_lossy(&reply.body);
    let exact_body = expect
        .get("body")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            // Forwarded without other expectations: the client gets the upstream's answer.
            (route.is_some()
                && !expect.contains_key("status")
                && !expect.contains_key("bodyContains"))
            .then(|| {
                case.upstream
                    .as_ref()
                    .map_or_else(|| route.unwrap_or_default().to_owned(), |c| c.body.clone())
            })
        });
    if let Some(exact) = exact_body
        && body != exact
    {
        problems.push(format!("expected the body {exact:?}, {got}"));
    }
    if let Some(part) = expect.get("bodyContains").and_then(Value::as_str)
        && !body.contains(part)
    {
        problems.push(format!("expected the body to contain {part:?}, {got}"));
    }
    for (name, value) in string_pairs(expect.get("headers")) {
        if reply.header(name) != Some(value) {
            problems.push(format!(
                "expected response header {name}: {value}, got {:?}",
                reply.header(name)
            ));
        }
    }
    for name in expect
        .get("absentHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap_or("");
        if let Some(value) = reply.header(name) {
            problems.push(format!("expected no response header {name}, got {value:?}"));
        }
    }
    if let Some(wanted) = expect.get("upstreamRequest") {
        match seen.as_slice() {
            [(_, seen)] => problems.extend(check_upstream_request(wanted, key, seen)),
            _ => problems.push(format!(
                "expected one upstream request to check, there were {}",
                seen.len()
            )),
        }
    }
    problems
}

/// The `[name, value]` pairs of a JSON array (none when it is absent).
fn string_pairs(pairs: Option<&Value>) -> impl Iterator<Item = (&str, &str)> {
    pairs
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or(""),
                pair[1].as_str().unwrap_or(""),
            )
        })
}

/// What is wrong with the request an upstream saw, against `upstreamRequest`.
fn check_upstream_request(wanted: &Value, key: &str, seen: &Seen) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(method) = wanted.get("method").and_then(Value::as_str)
        && seen.method.as_str() != method
    {
        problems.push(format!(
            "upstream: expected method {method}, got {}",
            seen.method
        ));
    }
    if let Some(path) = wanted.get("path").and_then(Value::as_str) {
        let prefix = format!("/{key}");
        let got = seen.path.strip_prefix(&prefix).unwrap_or(&seen.path);
        if got != path {
            problems.push(format!("upstream: expected path {path}, got {}", seen.path));
        }
    }
    if let Some(query) = wanted.get("query").and_then(Value::as_str) {
        let got = seen.query.as_deref().unwrap_or("");
        if got != query {
            problems.push(format!("upstream: expected query {query:?}, got {got:?}"));
        }
    }
    for (name, value) in string_pairs(wanted.get("headers")) {
        if seen.header(name) != Some(value) {
            problems.push(format!(
                "upstream: expected header {name}: {value}, got {:?}",
                seen.header(name)
            ));
        }
    }
    let body = String::from_utf8_lossy(&seen.body);
    if let Some(exact) = wanted.get("body").and_then(Value::as_str)
        && body != exact
    {
        problems.push(format!(
            "upstream: expected the body {exact:?}, got {body:?}"
        ));
    }
    if let Some(json) = wanted.get("json") {
        match serde_json::from_slice::<Value>(&seen.body) {
            Ok(got) if got == *json => {}
            Ok(got) => problems.push(format!(
                "upstream: expected the JSON body {json}, got {got}"
            )),
            Err(error) => problems.push(format!(
                "upstream: the body is not JSON ({error}): {body:?}"
            )),
        }
    }
    problems
}

/// What is wrong with a record's `pluginLog`, against the case's `log`.
fn check_log(expected: &Value, log: &Value) -> Vec<String> {
    let expected = expected.as_array().map(Vec::as_slice).unwrap_or_default();
    let lines = log.as_array().map(Vec::as_slice).unwrap_or_default();
    if expected.len() != lines.len() {
        return vec![format!(
            "expected {} log lines, got {}: {log}",
            expected.len(),
            lines.len()
        )];
    }
    let mut problems = Vec::new();
    for (want, line) in expected.iter().zip(lines) {
        let same = ["level", "message", "fields"]
            .iter()
            .all(|field| want.get(field).is_none_or(|value| line[field] == *value));
        if !same {
            problems.push(format!("expected the log line {want}, got {line}"));
        }
    }
    problems
}

/// `value` as a one-line TOML value (objects become inline tables). JSON's string escapes are all
/// TOML basic-string escapes.
fn toml_inline(value: &Value, case: &str) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(key, value)| {
                    format!(
                        "{} = {}",
                        Value::from(key.as_str()),
                        toml_inline(value, case)
                    )
                })
                .collect();
            if items.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| toml_inline(v, case)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => panic!("case `{case}`: its config has a null, which TOML cannot say"),
        other => other.to_string(),
    }
}
