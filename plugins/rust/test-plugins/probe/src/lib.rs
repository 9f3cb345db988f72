//! A plugin that exercises the host's capabilities and reports what it saw, for the host's tests.
//! Not for production.
//!
//! The mode is the request path's last segment (one channel `^/probe/` serves them all). JSON
//! answers have `content-type: application/json`; a failed key-value call appears as
//! `{"error": "<WIT case name>", "text": "<the case's text or null>"}`.
//!
//! | mode | answer |
//! |---|---|
//! | `config` | 200, the body `config.all()` returned |
//! | `kv` | 200, `{"set", "get", "casFirst", "casSecond", "increment", "setX", "incrementNotInteger", "delete", "getAfterDelete"}`: the results of, in order, `set("a", "1")`, `get("a")` (`"1"`), `compare-and-set("a", "1" → "2")` (`true`), `compare-and-set("a", "1" → "3")` (`false`), `increment("n", 5, ttl 60 s)` (`5` on a fresh store), `set("a", "x")`, `increment("a", 1)` (`{"error": "not-an-integer", ...}`), `delete("a")` (`true`), `get("a")` (`null`) |
//! | `kv-get` | 200, `{"key", "value"}` for query `key` (`value` `null` when unset) |
//! | `kv-set` | 200, `{"key", "set": null}` after setting query `key` to `value`, with `ttl` milliseconds if given |
//! | `outbound` | 200, `{"status", "body", "error"}` after a GET of query `url` (percent-decoded): `status` and `body` (as text) of the answer, or `null`s and `"error": {"case": "<WIT case name>", "text": "<its text or null>"}`; 400 without `url` |
//! | `log` | logs a line at `info`, `warn` and `error` with fields, then forwards to the channel's routes |
//! | `log-flood` | logs 150 lines at `info` (past the host's per-request budget of 100), then forwards |
//! | `clock` | 200, `{"nowMs", "monotonicNs"}` |
//! | `echo` | 200, the request as the plugin saw it: `{"method", "path", "query", "headers": [[name, value], ...], "body", "client": {"id", "roles"} or null, "channel", "transactionId"}` |
//! | anything else | forwards to the channel's routes |
//!
//! `on-response` adds `x-probe: seen` and passes the response through.

use std::time::Duration;

use mediary_plugin::http::{self, OutgoingRequest};
use mediary_plugin::kv::KvError;
use mediary_plugin::prelude::*;
use serde_json::{Value, json};

/// A key-value result: the value, or the error case and text.
fn kv_json<T: Into<Value>>(result: Result<T, KvError>) -> Value {
    match result {
        Ok(value) => value.into(),
        Err(error) => json!({ "error": error.kind(), "text": error.detail() }),
    }
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn kv_sequence() -> Value {
    let set = kv_json(kv::set("a", "1", None).map(|()| Value::Null));
    let get = kv_json(kv::get("a").map(text));
    let cas_first = kv_json(kv::compare_and_set("a", Some(b"1"), "2", None));
    let cas_second = kv_json(kv::compare_and_set("a", Some(b"1"), "3", None));
    let increment = kv_json(kv::increment("n", 5, Some(Duration::from_millis(60_000))));
    let set_x = kv_json(kv::set("a", "x", None).map(|()| Value::Null));
    let increment_not_integer = kv_json(kv::increment("a", 1, None));
    let delete = kv_json(kv::delete("a"));
    let get_after_delete = kv_json(kv::get("a").map(text));
    json!({
        "set": set,
        "get": get,
        "casFirst": cas_first,
        "casSecond": cas_second,
        "increment": increment,
        "setX": set_x,
        "incrementNotInteger": increment_not_integer,
        "delete": delete,
        "getAfterDelete": get_after_delete,
    })
}

fn outbound(url: String) -> Value {
    match http::send(OutgoingRequest::get(url)) {
        Ok(response) => json!({
            "status": response.status,
            "body": String::from_utf8_lossy(&response.body),
            "error": null,
        }),
        Err(error) => json!({
            "status": null,
            "body": null,
            "error": { "case": error.kind(), "text": error.detail() },
        }),
    }
}

fn echo(request: &Request) -> Value {
    json!({
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": request.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(&request.body),
        "client": request.client.as_ref().map(|c| json!({ "id": c.id, "roles": c.roles })),
        "channel": request.channel,
        "transactionId": request.transaction_id,
    })
}

struct Probe;

impl Router for Probe {
    fn on_request(request: Request) -> Action {
        let mode = request.path.rsplit('/').next().unwrap_or("");
        let answer = match mode {
            "config" => Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(config::all_json()),
            "kv" => Response::json(200, &kv_sequence()),
            "kv-get" => {
                let key = request.query_param("key").unwrap_or_default();
                let value = kv_json(kv::get(&key).map(text));
                Response::json(200, &json!({ "key": key, "value": value }))
            }
            "kv-set" => {
                let key = request.query_param("key").unwrap_or_default();
                let value = request.query_param("value").unwrap_or_default();
                let ttl = request
                    .query_param("ttl")
                    .and_then(|ttl| ttl.parse().ok())
                    .map(Duration::from_millis);
                let set = kv_json(kv::set(&key, value, ttl).map(|()| Value::Null));
                Response::json(200, &json!({ "key": key, "set": set }))
            }
            "outbound" => match request.query_param("url") {
                Some(url) => Response::json(200, &outbound(url)),
                None => return Action::reject(400, "The probe needs query parameter `url`."),
            },
            "log" => {
                log::info("Probe line one.", &[("level", "info"), ("n", "1")]);
                log::warn("Probe line two.", &[("level", "warn"), ("n", "2")]);
                log::error("Probe line three.", &[("level", "error"), ("n", "3")]);
                return Action::forward();
            }
            "log-flood" => {
                for n in 0..150 {
                    log::info("Flood line.", &[("n", &n.to_string())]);
                }
                return Action::forward();
            }
            "clock" => Response::json(
                200,
                &json!({ "nowMs": clock::now_ms(), "monotonicNs": clock::monotonic_ns() }),
            ),
            "echo" => Response::json(200, &echo(&request)),
            _ => return Action::forward(),
        };
        Action::respond(answer)
    }
}

impl Transformer for Probe {
    fn on_response(_request: Request, response: Response) -> Response {
        response.with_header("x-probe", "seen")
    }
}

mediary_plugin::export_plugin!(Probe);
