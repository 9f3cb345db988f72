//! `mediary plugin ...`: write, build, test and ship channel plugins.
//!
//! - `new`: a plugin folder in Rust, JavaScript or Python ([`super::scaffold`]).
//! - `build`: runs the folder's toolchain ([`super::build`]).
//! - `run`: one request (bare, or a recorded transaction) through a component, offline
//!   ([`crate::plugin::offline`]).
//! - `test`: every case of `tests/cases.json` through the offline runner.
//! - `push`: uploads a component to a running Mediary ([`super::push`]).
//!
//! Exit codes: 0 ok, 1 a build, case or upload failed, 64 bad usage (what was asked cannot be
//! done as asked: a bad name, a folder that exists, a file that is not JSON).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value};

use super::build::{self, BuildError};
use super::scaffold::{self, Lang, World};
use super::{EXIT_BAD_CONFIG, EXIT_FAILURE};
use crate::plugin::offline::{self, OfflineOptions, OfflinePlugin};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin folder from a template (Rust, JavaScript or Python).
    ///
    /// Writes PARENT/NAME: sources, a copy of wit/plugin.wit, tests/cases.json and a README. The Rust, JavaScript and Python scaffolds implement the same small router (refuse
    /// requests without `x-request-id`, route by path prefix) and pass the same cases.
    New {
        /// The language: rust (cargo), js (componentize-js) or python (componentize-py).
        #[arg(long, value_enum)]
        lang: Lang,
        /// The plugin's name: lower-case letters, digits and `-`, starting with a letter.
        name: String,
        /// The folder to create the plugin in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The WIT world: router-plugin (on-request) or channel-plugin (also on-response).
        #[arg(long, value_enum, default_value = "router-plugin")]
        world: World,
    },
    /// Build the plugin in DIR with its language's toolchain.
    ///
    /// Cargo.toml → cargo (wasm32-wasip2); package.json → npm install and
    /// `npm run build`; pyproject.toml with [tool.mediary] → a .venv with requirements.txt and
    /// componentize-py. Prints the component's path and size.
    Build {
        /// The plugin's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin in DIR and run the cases of DIR/tests/cases.json through it.
    ///
    /// The cases run offline (as `plugin run`): one line per case and a summary; exits 1 if any case fails.
    Test {
        /// The plugin's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Test the component the last build left instead of building.
        #[arg(long)]
        no_build: bool,
    },
    /// Run one request (or a recorded transaction) through a component, offline.
    ///
    /// Uses the server's engine, imports and output checks: the key-value store is in a scratch folder, outbound-http is refused
    /// (unless --allow-host), log lines go to stderr. Prints the plugin's action as JSON.
    Run {
        /// The component (.wasm).
        component: PathBuf,
        /// The request, as JSON: {"method", "path", "query", "headers", "body"}, or a transaction
        /// record as `GET /transactions/:id` returns it (its `request` is used; credentials in it
        /// are redacted).
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// The plugin's settings (a channel's `plugin.config`): a JSON object, or @FILE.
        #[arg(long, value_name = "JSON|@FILE")]
        config: Option<String>,
        /// An upstream's response (JSON {"status", "headers", "body"}, or a transaction record):
        /// when the plugin forwards and transforms responses, on-response runs on it and the
        /// transformed response is printed too.
        #[arg(long, value_name = "FILE")]
        response: Option<PathBuf>,
        /// A host the plugin may call or forward to (`host[:port]`, as `plugin.allowedHosts`).
        #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
        allow_hosts: Vec<String>,
        /// A route of the channel; forwarding to a route not listed is invalid output. Without
        /// any, every route name is accepted.
        #[arg(long = "route", value_name = "NAME")]
        routes: Vec<String>,
        /// The plugin's CPU deadline per call, in ms (`plugin.deadlineMs`; default 100).
        #[arg(long, value_name = "MS")]
        deadline_ms: Option<u64>,
    },
    /// Upload a component to a running Mediary as a new version of plugin NAME.
    ///
    /// Sends POST /plugins/NAME to the API as an API user (HTTP Basic) and prints the new version
    /// and its digest. Channels that name the plugin without a
    /// version switch to it at once.
    Push {
        /// The plugin's name.
        name: String,
        /// The component (.wasm).
        file: PathBuf,
        /// The API's base URL, e.g. https://mediary.example.org:8080.
        #[arg(long, value_name = "URL")]
        api: String,
        /// An API user's email (default: $MEDIARY_API_USER).
        #[arg(long)]
        user: Option<String>,
        /// The user's password (default: $MEDIARY_API_PASSWORD, which keeps it out of the shell
        /// history).
        #[arg(long)]
        password: Option<String>,
        /// Accept any certificate from the API (a self-signed test instance).
        #[arg(long)]
        insecure: bool,
        /// Trust this CA certificate (PEM) for the API besides the system's roots.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
}

/// A failure and its exit code.
struct Fail(u8, String);

impl From<BuildError> for Fail {
    fn from(error: BuildError) -> Fail {
        match error {
            BuildError::Usage(m) => Fail(EXIT_BAD_CONFIG, m),
            BuildError::Failed(m) => Fail(EXIT_FAILURE, m),
        }
    }
}

fn usage(message: impl Into<String>) -> Fail {
    Fail(EXIT_BAD_CONFIG, message.into())
}

fn failed(message: impl Into<String>) -> Fail {
    Fail(EXIT_FAILURE, message.into())
}

/// Runs a `mediary plugin` command.
pub fn main(command: PluginCommand) -> ExitCode {
    match dispatch(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn dispatch(command: PluginCommand) -> Result<(), Fail> {
    match command {
        PluginCommand::New {
            lang,
            name,
            dir,
            world,
        } => {
            let (dir, files) = scaffold::create(lang, &name, &dir, world).map_err(usage)?;
            println!("Created {} ({} files).", dir.display(), files.len());
            println!("Next: cd {} && mediary plugin test", dir.display());
            Ok(())
        }
        PluginCommand::Build { dir } => {
            let wasm = build::build(&dir)?;
            print_built(&wasm);
            Ok(())
        }
        PluginCommand::Test { dir, no_build } => test(&dir, no_build),
        PluginCommand::Run {
            component,
            request,
            config,
            response,
            allow_hosts,
            routes,
            deadline_ms,
        } => {
            let request_json = read_json(&request)?;
            let request = offline::request_from_json(&request_json, &request.display().to_string())
                .map_err(usage)?;
            let response = match &response {
                Some(path) => Some(
                    offline::response_from_json(&read_json(path)?, &path.display().to_string())
                        .map_err(usage)?,
                ),
                None => None,
            };
            let options = OfflineOptions {
                wasm: component,
                config: settings(config.as_deref())?,
                allowed_hosts: allow_hosts,
                routes,
                deadline_ms,
            };
            runtime()?.block_on(async {
                let plugin = OfflinePlugin::load(&options).await.map_err(failed)?;
                let (action, transformed) = plugin.run(&request, response.as_ref()).await;
                let action = action.map_err(failed)?;
                let mut out = action;
                if let Some(transformed) = transformed {
                    out["response"] = transformed.map_err(failed)?;
                } else if response.is_some() {
                    let why = if plugin.transforms() {
                        "the plugin did not forward the request"
                    } else {
                        "the plugin does not export `transformer`"
                    };
                    eprintln!("note: on-response did not run: {why}.");
                }
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                Ok(())
            })
        }
        PluginCommand::Push {
            name,
            file,
            api,
            user,
            password,
            insecure,
            ca,
        } => {
            let user = user
                .or_else(|| std::env::var("MEDIARY_API_USER").ok())
                .ok_or_else(|| usage("no API user: give --user EMAIL or set MEDIARY_API_USER"))?;
            let password = password
                .or_else(|| std::env::var("MEDIARY_API_PASSWORD").ok())
                .ok_or_else(|| usage("no password: give --password or set MEDIARY_API_PASSWORD"))?;
            if !file.is_file() {
                return Err(usage(format!("{}: no such file", file.display())));
            }
            let push = super::push::Push {
                name: &name,
                wasm: &file,
                api: &api,
                user: &user,
                password: &password,
                insecure,
                ca: ca.as_deref(),
            };
            let line = runtime()?
                .block_on(super::push::push(&push))
                .map_err(failed)?;
            println!("{line}");
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    init_plugin_log();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))
}

/// Plugin log lines (which the host logs at `debug`) on stderr; everything else of Mediary's log
/// only when it is a warning. `RUST_LOG` overrides.
fn init_plugin_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,mediary::plugin::imports=debug")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        // The host logs every plugin line at `debug`; the plugin's own level is a field.
        .with_level(false)
        .try_init();
}

fn print_built(wasm: &Path) {
    let size = std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0);
    println!(
        "Built {} ({}).",
        wasm.display(),
        bytesize::ByteSize::b(size).display().si()
    );
}

fn read_json(path: &Path) -> Result<Value, Fail> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| usage(format!("{}: not JSON: {e}", path.display())))
}

/// `--config`: a JSON object, or @FILE holding one.
fn settings(arg: Option<&str>) -> Result<Map<String, Value>, Fail> {
    let Some(arg) = arg else {
        return Ok(Map::new());
    };
    let value = match arg.strip_prefix('@') {
        Some(path) => read_json(Path::new(path))?,
        None => {
            serde_json::from_str(arg).map_err(|e| usage(format!("--config is not JSON: {e}")))?
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        other => Err(usage(format!(
            "--config must be a JSON object, not {}",
            crate::config::fields::kind(&other)
        ))),
    }
}

/// One case of `tests/cases.json`.
struct Case {
    name: String,
    request: crate::plugin::bindings::types::Request,
    response: Option<crate::plugin::bindings::types::Response>,
    expect: Expect,
}

/// What a case expects the plugin to do.
#[derive(Debug)]
enum Expect {
    ChannelRoutes,
    Route(String),
    Url(String),
    /// Respond or reject with this status; the body (or the reason) contains the text.
    Status(u16, Option<String>),
    /// The plugin fails (traps, overruns, returns invalid output) with a message containing this.
    Failure(String),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::ChannelRoutes => f.write_str("forward to the channel's routes"),
            Expect::Route(r) => write!(f, "forward to route `{r}`"),
            Expect::Url(u) => write!(f, "forward to {u}"),
            Expect::Status(s, None) => write!(f, "status {s}"),
            Expect::Status(s, Some(t)) => write!(f, "status {s} with {t:?}"),
            Expect::Failure(t) => write!(f, "a plugin failure mentioning {t:?}"),
        }
    }
}

fn parse_expect(value: &Value, at: &str) -> Result<Expect, String> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    if let Some(route) = text("route") {
        return Ok(Expect::Route(route));
    }
    if let Some(url) = text("url") {
        return Ok(Expect::Url(url));
    }
    if value.get("forward").is_some() {
        return match text("forward").as_deref() {
            Some("channel-routes") => Ok(Expect::ChannelRoutes),
            _ => Err(format!("{at}: `forward` can only be \"channel-routes\"")),
        };
    }
    if let Some(status) = value.get("status") {
        let status = status
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| format!("{at}: `status` must be a number"))?;
        return Ok(Expect::Status(status, text("bodyContains")));
    }
    if let Some(failure) = text("failure") {
        return Ok(Expect::Failure(failure));
    }
    Err(format!(
        "{at}: expected {{\"route\": NAME}}, {{\"url\": URL}}, {{\"forward\": \"channel-routes\"}}, {{\"status\": N, \"bodyContains\": TEXT}} or {{\"failure\": TEXT}}"
    ))
}

/// `tests/cases.json`.
struct CaseFile {
    /// The plugin's settings for every case.
    config: Map<String, Value>,
    /// The channel's route names (empty: any name is accepted).
    routes: Vec<String>,
    cases: Vec<Case>,
}

/// Reads `tests/cases.json`, naming every problem in it.
fn read_cases(path: &Path) -> Result<CaseFile, Fail> {
    let file = path.display().to_string();
    let json = read_json(path)?;
    let config = match json.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(usage(format!("{file}: `config` must be an object"))),
    };
    let routes = match json.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value::<Vec<String>>(value.clone())
            .map_err(|_| usage(format!("{file}: `routes` must be a list of route names")))?,
    };
    let items = json
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| usage(format!("{file}: `cases` (a list) is required")))?;
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{file}: cases[{i}]");
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("case {}", i + 1), str::to_owned);
        let request = item
            .get("request")
            .ok_or_else(|| format!("{at}: `request` is required"))
            .and_then(|r| offline::request_from_json(r, &format!("{at}.request")));
        let response = item
            .get("response")
            .map(|r| offline::response_from_json(r, &format!("{at}.response")))
            .transpose();
        let expect = item
            .get("expect")
            .ok_or_else(|| format!("{at}: `expect` is required"))
            .and_then(|e| parse_expect(e, &format!("{at}.expect")));
        match (request, response, expect) {
            (Ok(request), Ok(response), Ok(expect)) => cases.push(Case {
                name,
                request,
                response,
                expect,
            }),
            (r, s, e) => problems.extend([r.err(), s.err(), e.err()].into_iter().flatten()),
        }
    }
    if !problems.is_empty() {
        return Err(usage(problems.join("\n")));
    }
    Ok(CaseFile {
        config,
        routes,
        cases,
    })
}

/// What the plugin did, in the words of a case's expectation.
fn describe(outcome: &Result<Value, String>) -> String {
    match outcome {
        Err(message) => format!("a failure: {message}"),
        Ok(action) => {
            if let Some(forward) = action.get("forward") {
                match &forward["target"] {
                    Value::String(_) => "forward to the channel's routes".into(),
                    target => match (target.get("route"), target.get("url")) {
                        (Some(r), _) => format!("forward to route `{}`", r.as_str().unwrap_or("")),
                        (_, Some(u)) => format!("forward to {}", u.as_str().unwrap_or("")),
                        _ => target.to_string(),
                    },
                }
            } else if let Some(reject) = action.get("reject") {
                format!(
                    "reject {} {:?}",
                    reject["status"],
                    reject["reason"].as_str().unwrap_or("")
                )
            } else if let Some(respond) = action.get("respond") {
                format!("respond {} {}", respond["status"], respond["body"])
            } else {
                action.to_string()
            }
        }
    }
}

fn matches(expect: &Expect, outcome: &Result<Value, String>) -> bool {
    let action = match (expect, outcome) {
        (Expect::Failure(text), Err(message)) => return message.contains(text.as_str()),
        (_, Err(_)) | (Expect::Failure(_), Ok(_)) => return false,
        (_, Ok(action)) => action,
    };
    let target = &action["forward"]["target"];
    match expect {
        Expect::ChannelRoutes => target == "channel-routes",
        Expect::Route(r) => target["route"] == r.as_str(),
        Expect::Url(u) => target["url"] == u.as_str(),
        Expect::Status(status, text) => {
            let (got, said) = if let Some(reject) = action.get("reject") {
                (
                    &reject["status"],
                    reject["reason"].as_str().unwrap_or("").to_owned(),
                )
            } else if let Some(respond) = action.get("respond") {
                let body = match &respond["body"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (&respond["status"], body)
            } else {
                return false;
            };
            *got == *status && text.as_ref().is_none_or(|t| said.contains(t.as_str()))
        }
        Expect::Failure(_) => false,
    }
}

fn test(dir: &Path, no_build: bool) -> Result<(), Fail> {
    let cases_path = dir.join("tests/cases.json");
    if !cases_path.is_file() {
        // Judge the folder first: "nothing to build here" says more than "no cases".
        build::detect(dir)?;
        return Err(usage(format!(
            "{}: no such file; list the cases there (see `mediary plugin new`)",
            cases_path.display()
        )));
    }
    let CaseFile {
        config,
        routes,
        cases,
    } = read_cases(&cases_path)?;
    let wasm = if no_build {
        build::artifact(dir)?
    } else {
        let wasm = build::build(dir)?;
        print_built(&wasm);
        wasm
    };
    let options = OfflineOptions {
        wasm,
        config,
        allowed_hosts: Vec::new(),
        routes,
        deadline_ms: None,
    };
    runtime()?.block_on(async {
        let plugin = OfflinePlugin::load(&options).await.map_err(failed)?;
        let mut failures = 0;
        for case in &cases {
            let (action, transformed) = plugin.run(&case.request, case.response.as_ref()).await;
            if matches(&case.expect, &action) {
                if let Some(Err(message)) = transformed {
                    failures += 1;
                    println!("FAILED {}: on-response failed: {message}", case.name);
                } else {
                    println!("ok     {}", case.name);
                }
            } else {
                failures += 1;
                println!(
                    "FAILED {}: expected {}, got {}",
                    case.name,
                    case.expect,
                    describe(&action)
                );
            }
        }
        let passed = cases.len() - failures;
        println!("{passed} passed, {failures} failed.");
        if failures > 0 {
            Err(Fail(
                EXIT_FAILURE,
                format!("{failures} of {} cases failed", cases.len()),
            ))
        } else {
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expectations_match_actions() {
        let route = Ok(json!({"forward": {"target": {"route": "fhir"}}}));
        let channel = Ok(json!({"forward": {"target": "channel-routes"}}));
        let reject = Ok(json!({"reject": {"status": 400, "reason": "no x-request-id header"}}));
        let respond = Ok(json!({"respond": {"status": 200, "headers": [], "body": "hello"}}));
        let e = |v: Value| parse_expect(&v, "t").expect("valid");
        assert!(matches(&e(json!({"route": "fhir"})), &route));
        assert!(!matches(&e(json!({"route": "lab"})), &route));
        assert!(matches(&e(json!({"forward": "channel-routes"})), &channel));
        assert!(!matches(&e(json!({"forward": "channel-routes"})), &route));
        assert!(matches(
            &e(json!({"status": 400, "bodyContains": "x-request-id"})),
            &reject
        ));
        assert!(!matches(&e(json!({"status": 403})), &reject));
        assert!(matches(
            &e(json!({"status": 200, "bodyContains": "hell"})),
            &respond
        ));
        assert!(matches(
            &e(json!({"failure": "trapped"})),
            &Err("the plugin trapped: x".into())
        ));
        assert!(parse_expect(&json!({"forward": "x"}), "t").is_err());
        assert!(parse_expect(&json!({}), "t").is_err());
    }
}
