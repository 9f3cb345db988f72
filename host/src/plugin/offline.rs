//! Running a plugin without the server, for `mediary plugin run` and `mediary plugin test`.
//!
//! The component is loaded by the same engine, linker and registry as in the server (a one-channel
//! configuration is built and checked like a config file's), called through the same
//! [`super::call::Session`], and its output goes through the same checks ([`super::output`]). What
//! differs is the world around it: the key-value store is a throw-away embedded store in a temporary
//! folder (removed when the [`OfflinePlugin`] is dropped), `outbound-http` reaches only the hosts
//! given as allowed (none by default), nothing is recorded, and log lines go to Mediary's log at
//! `debug` (the command line prints them on stderr).
//!
//! Requests come as JSON: a bare request (`{"method", "path", "query", "headers", "body"}`) or a
//! transaction record as `GET /transactions/:id` returns it, whose `request` is used ("test locally
//! against a recorded request").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::bindings::types;
use super::call::BoundPlugin;
use super::imports::Call;
use super::output;
use crate::config::Config;
use crate::proxy::upstream::{PoolSettings, Upstreams};
use crate::transaction::Body;

/// The name of the one channel an offline plugin runs in (what `request.channel` says unless the
/// recorded request names its own).
pub const OFFLINE_CHANNEL: &str = "offline";

/// How to run a plugin offline.
#[derive(Debug, Clone, Default)]
pub struct OfflineOptions {
    /// The component (`.wasm`).
    pub wasm: PathBuf,
    /// The plugin's settings (`plugin.config` of a channel): a JSON object.
    pub config: Map<String, Value>,
    /// `host[:port]` the plugin may call or forward to (`plugin.allowedHosts`); none by default, so
    /// `outbound-http` is refused.
    pub allowed_hosts: Vec<String>,
    /// The routes the channel has. A plugin that forwards to a route not listed returns invalid
    /// output, as it would on the server; with no list, any route name is accepted.
    pub routes: Vec<String>,
    /// `plugin.deadlineMs`; the server's default (100 ms) when `None`.
    pub deadline_ms: Option<u64>,
}

/// A plugin loaded for offline calls.
pub struct OfflinePlugin {
    bound: Arc<BoundPlugin>,
    upstreams: Arc<Upstreams>,
    routes: Vec<String>,
    max_body: u64,
    timeout: Duration,
    /// Keeps the store open until the plugin is gone (declared before `scratch`: dropped first).
    _shared: Arc<crate::Shared>,
    scratch: Scratch,
}

impl std::fmt::Debug for OfflinePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflinePlugin")
            .field("plugin", &self.bound.run.name)
            .field("scratch", &self.scratch.0)
            .finish_non_exhaustive()
    }
}

/// A temporary folder, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a call did: the action or transformed response as JSON, or why the plugin failed.
pub type Outcome = Result<Value, String>;

impl OfflinePlugin {
    /// Loads (compiles, or finds in the compile cache) the component and binds it to a one-channel
    /// configuration. Errors name the file and say why.
    pub async fn load(options: &OfflineOptions) -> Result<OfflinePlugin, String> {
        let wasm = std::path::absolute(&options.wasm)
            .map_err(|e| format!("{}: {e}", options.wasm.display()))?;
        if !wasm.is_file() {
            return Err(format!("{}: no such file", wasm.display()));
        }
        let scratch = Scratch(std::env::temp_dir().join(format!(
            "mediary-offline-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )));
        std::fs::create_dir_all(&scratch.0)
            .map_err(|e| format!("cannot create {}: {e}", scratch.0.display()))?;
        let routes: Vec<Value> = if options.routes.is_empty() {
            vec![json!({"name": "primary", "host": "127.0.0.1", "port": 9, "primary": true})]
        } else {
            options
                .routes
                .iter()
                .enumerate()
                .map(|(i, name)| json!({"name": name, "host": "127.0.0.1", "port": 9, "primary": i == 0}))
                .collect()
        };
        let mut plugin = json!({
            "file": wasm,
            "config": options.config,
            "allowedHosts": options.allowed_hosts,
            // Every call gets a fresh instance: cases do not see each other's plugin memory (the
            // key-value store is shared, as on the server).
            "isolation": "per-request",
        });
        if let Some(ms) = options.deadline_ms {
            plugin["deadlineMs"] = json!(ms);
        }
        let value = json!({
            "store": {"data_dir": scratch.0.join("store")},
            "plugins": {"cache_dir": compile_cache(&scratch.0), "max_instances": 8},
            "channels": [{
                "name": OFFLINE_CHANNEL,
                "urlPattern": "^/.*$",
                "authType": "public",
                "methods": ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
                "routes": routes,
                "plugin": plugin,
            }],
        });
        let config = Config::from_value(&value, Path::new(".")).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| e.to_string().replace("channels[0].plugin.", "--"))
                .collect();
            lines.join("; ")
        })?;
        let Some(channel) = config.channels.first().cloned() else {
            return Err("the offline channel did not parse".into());
        };
        let Some(spec) = channel.plugin.clone() else {
            return Err("the offline channel has no plugin".into());
        };
        let store = crate::store::open(&config.store)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let max_body = config.limits.max_request_body;
        let timeout = config.timeouts.upstream_response;
        let pool = PoolSettings {
            connect_timeout: config.timeouts.upstream_connect,
            max_idle_per_host: config.upstream.max_idle_per_host,
            idle_timeout: config.upstream.pool_idle_timeout,
        };
        let shared = Arc::new(crate::Shared::new(config, store, 1).map_err(|e| format!("{e:#}"))?);
        let bound = shared
            .plugins
            .bind(&channel, &spec)
            .await
            .map_err(|e| format!("{}: {e}", wasm.display()))?;
        let upstreams = Upstreams::new(pool, Arc::clone(&shared.upstream_tls));
        Ok(OfflinePlugin {
            bound,
            upstreams,
            routes: options.routes.clone(),
            max_body,
            timeout,
            _shared: shared,
            scratch,
        })
    }

    /// Whether the plugin transforms responses (exports `transformer`).
    pub fn transforms(&self) -> bool {
        self.bound.transforms()
    }

    /// Calls `on-request`, then (with `response`, when the plugin forwarded the request and
    /// transforms) `on-response` on the same instance, as the server does. Returns the action, and
    /// the transformed response when there is one.
    pub async fn run(
        &self,
        request: &types::Request,
        response: Option<&types::Response>,
    ) -> (Outcome, Option<Outcome>) {
        let call = Call::new(None, Arc::clone(&self.upstreams), self.timeout);
        let mut session = match self
            .bound
            .session(crate::plugin::CallEnv { worker: 0, call })
            .await
        {
            Ok(session) => session,
            Err(failure) => return (Err(failure.to_string()), None),
        };
        let action = match session.on_request(request).await {
            Ok(action) => action,
            Err(failure) => return (Err(failure.to_string()), None),
        };
        let forwarded = matches!(action, types::Action::Forward(_));
        let decided = self
            .decide(action)
            .map_err(|reason| crate::plugin::Failure::Invalid { reason }.to_string());
        let Some(response) = response.filter(|_| forwarded && decided.is_ok()) else {
            return (decided, None);
        };
        if !self.transforms() {
            return (decided, None);
        }
        let transformed = match session.on_response(request, response).await {
            Ok(out) => output::checked_response(out, self.max_body)
                .map(|checked| response_json(&checked))
                .map_err(|reason| crate::plugin::Failure::Invalid { reason }.to_string()),
            Err(failure) => Err(failure.to_string()),
        };
        (decided, Some(transformed))
    }

    /// Checks an action as the server's proxy does and turns it into JSON.
    fn decide(&self, action: types::Action) -> Result<Value, String> {
        match action {
            types::Action::Respond(response) => {
                let checked = output::checked_response(response, self.max_body)?;
                Ok(json!({"respond": response_json(&checked)}))
            }
            types::Action::Reject(rejection) => {
                let status = output::checked_rejection(&rejection)?;
                Ok(json!({"reject": {"status": status.as_u16(), "reason": rejection.reason}}))
            }
            types::Action::Forward(forward) => {
                let rewrite = forward
                    .rewrite
                    .map(|r| output::checked_rewrite(r, self.max_body))
                    .transpose()?;
                let target = match forward.target {
                    types::Target::ChannelRoutes => json!("channel-routes"),
                    types::Target::Route(name) => {
                        if !self.routes.is_empty() && !self.routes.contains(&name) {
                            return Err(format!(
                                "`{name}` is not an enabled route of this channel"
                            ));
                        }
                        json!({"route": name})
                    }
                    types::Target::Url(url) => {
                        self.bound
                            .url_target(&url)
                            .map_err(|e| format!("{e} (offline: --allow-host)"))?;
                        json!({"url": url})
                    }
                };
                let mut out = Map::new();
                out.insert("target".into(), target);
                if let Some(r) = rewrite {
                    let mut m = Map::new();
                    if let Some(method) = r.method {
                        m.insert("method".into(), json!(method.as_str()));
                    }
                    if let Some(path) = r.path {
                        m.insert("path".into(), json!(path));
                    }
                    if let Some(query) = r.query {
                        m.insert("query".into(), json!(query));
                    }
                    if let Some(headers) = r.headers {
                        m.insert("headers".into(), json!(output::fields_of(&headers)));
                    }
                    if let Some(body) = r.body {
                        m.insert("body".into(), body_json(&body));
                    }
                    out.insert("rewrite".into(), Value::Object(m));
                }
                Ok(json!({"forward": out}))
            }
        }
    }
}

/// Where compiled components are cached between runs (a JavaScript or Python component takes
/// seconds to compile): `$XDG_CACHE_HOME/mediary/plugin-cache`, else `~/.cache/mediary/plugin-cache`,
/// else inside the scratch folder.
fn compile_cache(scratch: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(base) if std::fs::create_dir_all(base.join("mediary/plugin-cache")).is_ok() => {
            base.join("mediary/plugin-cache")
        }
        _ => scratch.join("plugin-cache"),
    }
}

/// A body as JSON: text when it is UTF-8, else `{"base64": ...}` (the transaction record's form).
fn body_json(body: &[u8]) -> Value {
    serde_json::to_value(Body(bytes::Bytes::copy_from_slice(body))).unwrap_or(Value::Null)
}

fn response_json(response: &http::Response<bytes::Bytes>) -> Value {
    json!({
        "status": response.status().as_u16(),
        "headers": output::fields_of(response.headers()),
        "body": body_json(response.body()),
    })
}

/// Reads a request: a bare one, or a transaction record (its `request`, and its channel name and
/// id). `what` names the source in errors.
pub fn request_from_json(value: &Value, what: &str) -> Result<types::Request, String> {
    let (request, record) = match value.get("request") {
        Some(request) => (request, Some(value)),
        None => (value, None),
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "{what}: `{key}` must be a string, not {}",
                crate::config::fields::kind(other)
            )),
        }
    };
    let method = text("method")?
        .ok_or_else(|| {
            format!("{what}: `method` is required (a bare request or a transaction record)")
        })?
        .to_ascii_uppercase();
    let path = text("path")?.ok_or_else(|| format!("{what}: `path` is required"))?;
    if !path.starts_with('/') {
        return Err(format!("{what}: `path` must start with /"));
    }
    // A bare request says `query`; a transaction record `querystring`.
    let query = match text("query")? {
        Some(q) => q,
        None => text("querystring")?.unwrap_or_default(),
    };
    let query = query.strip_prefix('?').map(str::to_owned).unwrap_or(query);
    let headers = fields_from_json(request.get("headers"), &format!("{what}: `headers`"))?;
    let body = body_from_json(request.get("body"), &format!("{what}: `body`"))?;
    let channel = record
        .and_then(|r| r.get("channelName"))
        .and_then(Value::as_str)
        .unwrap_or(OFFLINE_CHANNEL)
        .to_owned();
    let transaction_id = record
        .and_then(|r| r.get("id").or_else(|| r.get("_id")))
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let client = record
        .and_then(|r| r.get("clientID").or_else(|| r.get("clientId")))
        .and_then(Value::as_str)
        .map(|id| types::Client {
            id: id.to_owned(),
            roles: Vec::new(),
        });
    Ok(types::Request {
        method,
        path,
        query,
        headers,
        body,
        client,
        channel,
        transaction_id,
    })
}

/// Reads a response: `{"status", "headers", "body"}`, or a transaction record's `response`.
pub fn response_from_json(value: &Value, what: &str) -> Result<types::Response, String> {
    let response = value.get("response").unwrap_or(value);
    let status = response
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| format!("{what}: `status` is required (a number such as 200)"))?;
    Ok(types::Response {
        status,
        headers: fields_from_json(response.get("headers"), &format!("{what}: `headers`"))?,
        body: body_from_json(response.get("body"), &format!("{what}: `body`"))?,
    })
}

/// Header fields from `[[name, value], ...]` or `{"name": "value"}` (a record's form). Names are
/// lower-cased, as the server hands them to plugins.
fn fields_from_json(value: Option<&Value>, what: &str) -> Result<Vec<(String, String)>, String> {
    let bad = || format!("{what} must be [[name, value], ...] or {{\"name\": \"value\"}}");
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.to_ascii_lowercase(), s.clone())),
                _ => Err(bad()),
            })
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => {
                    Ok((k.to_ascii_lowercase(), v.clone()))
                }
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// A body from text, `{"base64": "..."}`, or a JSON value (sent as its JSON text).
fn body_from_json(value: Option<&Value>, what: &str) -> Result<Vec<u8>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(v @ Value::Object(map)) if map.contains_key("base64") => {
            serde_json::from_value::<Body>(v.clone())
                .map(|b| b.0.to_vec())
                .map_err(|e| format!("{what}: {e}"))
        }
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_record_gives_its_request() {
        let record = json!({
            "id": "0190-abc", "channelName": "lab",
            "request": {"method": "post", "path": "/fhir/Patient", "querystring": "a=1",
                        "headers": {"X-Request-Id": "r1"}, "body": {"base64": "aGk="},
                        "timestamp": 1}
        });
        let request = request_from_json(&record, "tx.json").expect("a request");
        assert_eq!(request.method, "POST");
        assert_eq!(request.query, "a=1");
        assert_eq!(request.headers, vec![("x-request-id".into(), "r1".into())]);
        assert_eq!(request.body, b"hi");
        assert_eq!(request.channel, "lab");
        assert_eq!(request.transaction_id, "0190-abc");
    }

    #[test]
    fn a_bare_request_needs_a_method_and_a_path() {
        let error = request_from_json(&json!({"path": "/x"}), "r.json").unwrap_err();
        assert!(error.contains("`method` is required"), "{error}");
        let error =
            request_from_json(&json!({"method": "GET", "path": "x"}), "r.json").unwrap_err();
        assert!(error.contains("must start with /"), "{error}");
        let request = request_from_json(
            &json!({"method": "GET", "path": "/x", "query": "?b=2", "headers": [["A", "1"]], "body": "t"}),
            "r.json",
        )
        .expect("a request");
        assert_eq!(request.query, "b=2");
        assert_eq!(request.headers, vec![("a".into(), "1".into())]);
        assert_eq!(request.channel, OFFLINE_CHANNEL);
    }
}
