//! The [`Api`] fixture: Mediary's management API, called as one user.
//!
//! ```no_run
//! use mediary_e2e::{Mediary, Upstream, channel_json};
//!
//! let upstream = Upstream::echo();
//! let mediary = Mediary::with_config("").start();
//! let channel = mediary.api().create_channel(&channel_json("echo", "^/echo", upstream.port()));
//! let listed = mediary.api().get("/channels").send().json();
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::client::{Call, Client, Reply};
use crate::metrics::Metrics;

/// The management API at one base URL, as one user.
#[derive(Clone, Debug)]
pub struct Api {
    client: Client,
    base: String,
    user: String,
    password: String,
}

impl Api {
    /// The API at `base` (`http://host:port`), as `user` with `password`.
    pub fn new(base: impl Into<String>, user: &str, password: &str) -> Api {
        Api {
            client: Client::new(),
            base: base.into(),
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// The same API as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api::new(self.base.clone(), user, password)
    }

    /// `<base><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Call {
        self.authenticated(self.client.get(self.url(path)))
    }

    pub fn post(&self, path: &str, body: &Value) -> Call {
        self.authenticated(self.client.post(self.url(path)).json(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Call {
        self.authenticated(self.client.put(self.url(path)).json(body))
    }

    pub fn delete(&self, path: &str) -> Call {
        self.authenticated(self.client.delete(self.url(path)))
    }

    fn authenticated(&self, call: Call) -> Call {
        call.basic_auth(&self.user, &self.password)
    }

    /// Creates a channel and returns it as stored (with its `_id`); panics unless the API says 201.
    pub fn create_channel(&self, channel: &Value) -> Value {
        let reply = self.post("/channels", channel).send();
        assert_eq!(reply.status(), 201, "creating a channel: {}", reply.text());
        reply.json()
    }

    /// The stored channel with this id or name; panics unless the API says 200.
    pub fn channel(&self, id_or_name: &str) -> Value {
        let reply = self.get(&format!("/channels/{id_or_name}")).send();
        assert_eq!(reply.status(), 200, "reading a channel: {}", reply.text());
        reply.json()
    }

    /// `GET /transactions?<query>`; panics unless the API says 200.
    pub fn transactions(&self, query: &str) -> Listing {
        let reply = self.get(&format!("/transactions?{query}")).send();
        assert_eq!(
            reply.status(),
            200,
            "listing transactions: {}",
            reply.text()
        );
        Listing::from(reply)
    }

    /// Polls `GET /transactions?<query>` until it lists at least `count` records (recording is
    /// asynchronous); panics after `timeout`.
    pub fn wait_for_transactions(&self, query: &str, count: usize, timeout: Duration) -> Listing {
        let deadline = Instant::now() + timeout;
        loop {
            let listing = self.transactions(query);
            if listing.records.len() >= count {
                return listing;
            }
            assert!(
                Instant::now() < deadline,
                "GET /transactions?{query} listed {} records after {timeout:?}, expected {count}",
                listing.records.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /transactions/:id`; panics unless the API says 200.
    pub fn transaction(&self, id: &str) -> Value {
        let reply = self.get(&format!("/transactions/{id}")).send();
        assert_eq!(
            reply.status(),
            200,
            "reading transaction {id}: {}",
            reply.text()
        );
        reply.json()
    }

    /// `GET /transactions/:id`, or `None` while the API says 404 (not recorded, or not yet).
    pub fn try_transaction(&self, id: &str) -> Option<Value> {
        let reply = self.get(&format!("/transactions/{id}")).send();
        match reply.status() {
            200 => Some(reply.json()),
            404 => None,
            other => panic!("reading transaction {id}: {other} {}", reply.text()),
        }
    }

    /// Polls `GET /transactions/:id` until the record is there and no longer `Processing`, and
    /// returns it. Recording is asynchronous, and a record whose secondary routes are still running
    /// stays `Processing` after the client's response. Panics after `timeout`.
    pub fn settled_transaction(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.try_transaction(id);
            if let Some(record) = &record
                && record["status"] != "Processing"
            {
                return record.clone();
            }
            assert!(
                Instant::now() < deadline,
                "transaction {id} did not settle within {timeout:?}; last seen: {record:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record of the listing `GET /transactions?<query>` (in the `full` representation unless
    /// `query` says otherwise), paging through with the largest page size and one snapshot, so that
    /// records arriving meanwhile neither shift nor repeat a page.
    pub fn all_transactions(&self, query: &str) -> Vec<Value> {
        const PAGE: usize = 1000;
        let mut records = Vec::new();
        let mut snapshot: Option<String> = None;
        for page in 0.. {
            let mut params: Vec<String> = Vec::new();
            if !query.is_empty() {
                params.push(query.to_owned());
            }
            if !query.contains("filterRepresentation=") {
                params.push("filterRepresentation=full".to_owned());
            }
            params.push(format!("filterLimit={PAGE}&filterPage={page}"));
            if let Some(snapshot) = &snapshot {
                params.push(format!("snapshot={snapshot}"));
            }
            let listing = self.transactions(&params.join("&"));
            let last = listing.records.len() < PAGE;
            snapshot.get_or_insert(listing.snapshot);
            records.extend(listing.records);
            if last {
                break;
            }
        }
        records
    }

    /// `POST /transactions/:id/rerun`, whatever it answers.
    pub fn rerun(&self, id: &str) -> Reply {
        self.post(&format!("/transactions/{id}/rerun"), &json!({}))
            .send()
    }

    /// `GET /metrics`; panics unless the API says 200.
    pub fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics").send();
        assert_eq!(reply.status(), 200, "reading metrics: {}", reply.text());
        Metrics::parse(&reply.text())
    }

    /// `POST <path>` with `body` as it is (`content-type: application/octet-stream` unless the
    /// caller adds another).
    pub fn post_bytes(&self, path: &str, body: impl Into<Bytes>) -> Call {
        self.authenticated(self.client.post(self.url(path)).body(body))
    }

    /// `POST /plugins/:name` with `wasm` as the body, whatever the API answers. `name` is put in the
    /// path as given (percent-encode it to send a name that is not URL-safe).
    pub fn upload_plugin_bytes(&self, name: &str, wasm: impl Into<Bytes>) -> Reply {
        self.post_bytes(&format!("/plugins/{name}"), wasm)
            .header("content-type", "application/wasm")
            .send()
    }

    /// `POST /plugins/:name` with the component file at `wasm` (e.g. [`crate::plugins::ROUTER`]),
    /// whatever the API answers.
    pub fn upload_plugin(&self, name: &str, wasm: impl AsRef<Path>) -> Reply {
        let wasm = wasm.as_ref();
        let bytes = std::fs::read(wasm)
            .unwrap_or_else(|error| panic!("reading {}: {error}", wasm.display()));
        self.upload_plugin_bytes(name, bytes)
    }

    /// Uploads the component at `wasm` as a new version of plugin `name` and returns the version as
    /// the API describes it; panics unless the API says 201 (created).
    pub fn install_plugin(&self, name: &str, wasm: impl AsRef<Path>) -> Value {
        let reply = self.upload_plugin(name, wasm);
        assert_eq!(
            reply.status(),
            201,
            "uploading plugin {name}: {}",
            reply.text()
        );
        reply.json()
    }

    /// `GET /plugins/:name` (the plugin, its versions and the channels using it); panics unless the
    /// API says 200.
    pub fn plugin(&self, name: &str) -> Value {
        let reply = self.get(&format!("/plugins/{name}")).send();
        assert_eq!(
            reply.status(),
            200,
            "reading plugin {name}: {}",
            reply.text()
        );
        reply.json()
    }

    /// `POST /plugins/:name/rollback`, whatever it answers.
    pub fn rollback_plugin(&self, name: &str) -> Reply {
        self.post_bytes(&format!("/plugins/{name}/rollback"), Bytes::new())
            .send()
    }
}

/// One page of `GET /transactions`.
#[derive(Clone, Debug)]
pub struct Listing {
    pub records: Vec<Value>,
    /// The `X-Mediary-Snapshot` the page was taken at.
    pub snapshot: String,
}

impl Listing {
    /// The records' `_id`s, in order.
    pub fn ids(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| r["_id"].as_str().expect("a record has an _id").to_owned())
            .collect()
    }
}

impl From<Reply> for Listing {
    fn from(reply: Reply) -> Listing {
        let snapshot = reply
            .header("x-mediary-snapshot")
            .expect("a listing says which snapshot it shows")
            .to_owned();
        let records = match reply.json() {
            Value::Array(records) => records,
            other => panic!("a listing is a bare JSON array, got {other}"),
        };
        Listing { records, snapshot }
    }
}

/// JSON for a public channel that accepts every method on `url_pattern` and sends it to port `port`
/// of 127.0.0.1 through one primary route named `"<name> route"` (the API twin of
/// [`crate::public_channel`]).
pub fn channel_json(name: &str, url_pattern: &str, port: u16) -> Value {
    json!({
        "name": name,
        "urlPattern": url_pattern,
        "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        "authType": "public",
        "routes": [{
            "name": format!("{name} route"),
            "host": "127.0.0.1",
            "port": port,
            "primary": true,
        }],
    })
}

/// [`channel_json`] with a `plugin` field (`{"name": …}` or `{"file": …}`, with `config`, limits and
/// grants as the channel wants them).
pub fn plugin_channel_json(name: &str, url_pattern: &str, port: u16, plugin: Value) -> Value {
    let mut channel = channel_json(name, url_pattern, port);
    channel["plugin"] = plugin;
    channel
}

/// `filters=<json>`, URL-encoded, for a transaction listing's query string.
pub fn filters(value: &Value) -> String {
    format!("filters={}", url_encode(&value.to_string()))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn encodes_filters_for_a_query_string() {
        assert_eq!(url_encode("a b/{\"x\"}~"), "a%20b%2F%7B%22x%22%7D~");
        assert_eq!(filters(&json!({"a": 1})), "filters=%7B%22a%22%3A1%7D");
    }
}
