//! The transaction record: what Mediary keeps of every request it routes, with OpenHIM's field names.
//!
//! A record is written in stages (see [`Stage`]): when the request has been read (`Processing`), when
//! the client's response is complete, and when every secondary route has answered. Each stage is a
//! whole record; the latest stage wins, so writing a stage twice (a replayed spool) changes nothing.
//!
//! The same types serve two encodings, told apart by serde's `is_human_readable`:
//! - JSON for the management API: ids as UUID strings, times as RFC 3339, bodies as text (or
//!   `{"base64": …}` when they are not UTF-8);
//! - MessagePack (named fields, so the schema can grow) for the spool and the store: ids as 16 bytes,
//!   times as milliseconds, bodies as raw bytes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The status of a transaction, as OpenHIM names it (reference §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Processing,
    #[serde(rename = "Pending Async")]
    PendingAsync,
    Successful,
    Completed,
    #[serde(rename = "Completed with error(s)")]
    CompletedWithErrors,
    Failed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Processing,
        Status::PendingAsync,
        Status::Successful,
        Status::Completed,
        Status::CompletedWithErrors,
        Status::Failed,
    ];

    /// OpenHIM's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "Processing",
            Status::PendingAsync => "Pending Async",
            Status::Successful => "Successful",
            Status::Completed => "Completed",
            Status::CompletedWithErrors => "Completed with error(s)",
            Status::Failed => "Failed",
        }
    }

    /// A stable small number for index keys.
    pub fn code(self) -> u8 {
        match self {
            Status::Processing => 0,
            Status::PendingAsync => 1,
            Status::Successful => 2,
            Status::Completed => 3,
            Status::CompletedWithErrors => 4,
            Status::Failed => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }

    /// Parses OpenHIM's name for a status.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenHIM's final-status algorithm (`messageStore.setFinalStatus`, reference §2.6), for a primary
/// response status and the statuses of the non-primary routes. A route that failed without a response
/// counts as 500, as in OpenHIM.
pub fn final_status(primary: u16, routes: &[u16]) -> Status {
    if (500..=599).contains(&primary) {
        return Status::Failed;
    }
    let route_failures = routes.iter().any(|s| (500..=599).contains(s));
    let route_success = routes.iter().all(|s| (200..=299).contains(s));
    let mut status = Status::Processing;
    if route_failures {
        status = Status::CompletedWithErrors;
    }
    if (200..=299).contains(&primary) && route_success {
        status = Status::Successful;
    }
    if (400..=499).contains(&primary) && route_success {
        status = Status::Completed;
    }
    if status == Status::Processing {
        status = Status::Completed;
    }
    status
}

/// How far a record has got. A later stage replaces an earlier one, never the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The request has been read and is on its way upstream.
    Begun = 0,
    /// The client's response is complete; secondary routes may still be running.
    Responded = 1,
    /// Nothing more will happen to it (every route has answered, or it was marked interrupted).
    Final = 2,
}

impl Stage {
    pub fn from_code(code: u8) -> Option<Stage> {
        match code {
            0 => Some(Stage::Begun),
            1 => Some(Stage::Responded),
            2 => Some(Stage::Final),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch. JSON: RFC 3339 with milliseconds; binary: the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// The time a UUIDv7 was made (its first 48 bits).
    pub fn of_id(id: Uuid) -> Timestamp {
        Timestamp((id.as_u128() >> 80) as u64)
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Parses RFC 3339 (`2026-11-25T10:00:00Z`, fractions allowed) or milliseconds since the epoch.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        if let Ok(ms) = text.parse::<u64>() {
            return Ok(Timestamp(ms));
        }
        humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
            .map(Timestamp::from)
            .map_err(|_| format!("`{text}` is not an RFC 3339 time or milliseconds since 1970"))
    }

    /// The smallest UUIDv7 made at this millisecond: ids at or after this time sort at or above it.
    pub fn first_id(self) -> Uuid {
        Uuid::from_u128(u128::from(self.0) << 80)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time (RFC 3339 or milliseconds)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v.max(0) as u64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A stored body: raw bytes. JSON shows it as text when it is UTF-8, else as `{"base64": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body(pub Bytes);

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use base64::Engine as _;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a body (bytes, text, or {\"base64\": …})")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Body, E> {
                Ok(Body(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Body, E> {
                Ok(Body(Bytes::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Body, E> {
                Ok(Body(Bytes::copy_from_slice(v.as_bytes())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                use base64::Engine as _;
                let mut out = None;
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if key != "base64" {
                        return Err(de::Error::unknown_field(&key, &["base64"]));
                    }
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .map_err(de::Error::custom)?;
                    out = Some(Body(Bytes::from(bytes)));
                }
                out.ok_or_else(|| de::Error::missing_field("base64"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Headers in arrival order, shown as an object (OpenHIM's shape). Repeated headers are joined with
/// `, `; values that are not UTF-8 are stored lossily.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<(String, String)>);

/// The value stored in place of a credential.
pub const REDACTED: &str = "[redacted]";

/// Headers whose values are credentials; they are never stored.
fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION
        || name == header::PROXY_AUTHORIZATION
        || name == header::COOKIE
        || name == header::SET_COOKIE
}

impl Headers {
    /// Copies `map` for storage with every credential redacted. `Authorization` keeps its scheme
    /// (`Basic [redacted]`), which is useful when troubleshooting and reveals nothing.
    pub fn redacted(map: &HeaderMap) -> Headers {
        let mut out: Vec<(String, String)> = Vec::with_capacity(map.keys_len());
        for name in map.keys() {
            let mut values = map.get_all(name).iter();
            let value = if is_credential(name) {
                let first = values.next().map(|v| String::from_utf8_lossy(v.as_bytes()));
                match first.as_deref().and_then(|v| v.split_once(' ')) {
                    Some((scheme, _))
                        if name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION =>
                    {
                        format!("{scheme} {REDACTED}")
                    }
                    _ => REDACTED.to_owned(),
                }
            } else {
                let mut joined = String::new();
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        joined.push_str(", ");
                    }
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                joined
            };
            out.push((name.as_str().to_owned(), value));
        }
        Headers(out)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The request as received (or, in an orchestration, as sent upstream).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// The `Host` the client asked for (for orchestrations: the upstream's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The port, as a string like OpenHIM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    pub path: String,
    /// The query string without the `?` (empty when there is none).
    #[serde(default)]
    pub querystring: String,
    pub method: String,
    #[serde(default)]
    pub headers: Headers,
    /// The stored body; absent when the channel stores no request bodies or it is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// The stored body is shorter than the real one (the per-transaction cap was reached).
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_truncated: bool,
    pub timestamp: Timestamp,
}

/// A response: the client's, a route's or an orchestration's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseRecord {
    pub status: u16,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_truncated: bool,
    pub timestamp: Timestamp,
}

/// What went wrong, OpenHIM's `{message, stack}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErrorDetails {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl ErrorDetails {
    pub fn new(message: impl Into<String>) -> ErrorDetails {
        ErrorDetails {
            message: message.into(),
            stack: None,
        }
    }
}

/// One call to an upstream: for the primary route an orchestration, for the others a route entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub name: String,
    pub request: RequestRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetails>,
}

impl Exchange {
    /// The status this exchange counts as in the status algorithm: its response's, or 500 when it
    /// failed without one.
    pub fn effective_status(&self) -> u16 {
        self.response.as_ref().map_or(500, |r| r.status)
    }
}

/// The whole record of one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    #[serde(rename = "_id")]
    pub id: Uuid,
    #[serde(rename = "channelID")]
    pub channel_id: String,
    pub channel_name: String,
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(rename = "clientIP")]
    pub client_ip: String,
    pub request: RequestRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseRecord>,
    /// Non-primary routes, each with its request and response or error.
    #[serde(default)]
    pub routes: Vec<Exchange>,
    /// The primary route's call (OpenHIM records one orchestration for it).
    #[serde(default)]
    pub orchestrations: Vec<Exchange>,
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetails>,
    pub status: Status,
    pub can_rerun: bool,
    #[serde(default)]
    pub was_rerun: bool,
    #[serde(rename = "parentID", default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Uuid>,
    #[serde(rename = "childIDs", default)]
    pub child_ids: Vec<Uuid>,
    /// The worker thread that served it.
    pub worker: u16,
    /// The Mediary instance that served it (`server.instance`).
    pub instance: String,
    /// Milliseconds from the request's arrival to the end of the client's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The channel's plugin, as it ran for this transaction (name, version and digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginRun>,
    /// What the plugin logged while handling this transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_log: Vec<PluginLogLine>,
}

/// Which plugin handled a transaction: enough to find the exact code again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginRun {
    pub name: String,
    /// The uploaded version; absent for a plugin read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The SHA-256 of the `.wasm`, lower-case hex.
    pub sha256: String,
    /// `per-request` or `reuse`.
    pub isolation: String,
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginLogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
    pub timestamp: Timestamp,
}

impl Transaction {
    /// Drops every body the record holds (request, response, routes' and orchestrations'), as
    /// retention does past a channel's `maxBodyAgeDays`; whether it held any.
    pub fn strip_bodies(&mut self) -> bool {
        fn request(request: &mut RequestRecord) -> bool {
            request.body_truncated = false;
            request.body.take().is_some()
        }
        fn response(response: Option<&mut ResponseRecord>) -> bool {
            response.is_some_and(|r| {
                r.body_truncated = false;
                r.body.take().is_some()
            })
        }
        // `|` not `||`: every body goes, not just the first one found.
        let mut had = request(&mut self.request) | response(self.response.as_mut());
        for exchange in self.routes.iter_mut().chain(self.orchestrations.iter_mut()) {
            had |= request(&mut exchange.request) | response(exchange.response.as_mut());
        }
        had
    }

    /// The binary form kept in the spool and the store.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Transaction, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    /// Recomputes `status` from the responses, as OpenHIM does once every route has answered.
    pub fn settle_status(&mut self) {
        let primary = self.response.as_ref().map_or(500, |r| r.status);
        let routes: Vec<u16> = self.routes.iter().map(Exchange::effective_status).collect();
        self.status = final_status(primary, &routes);
    }

    /// Marks a record left unfinished by a process that stopped (a crash, or a shutdown past the
    /// drain timeout): Failed if the client got no response; otherwise unfinished routes count as
    /// failed and the status is computed as usual.
    pub fn mark_interrupted(&mut self) {
        let message = "interrupted: Mediary stopped before the transaction completed";
        if self.response.is_none() {
            self.status = Status::Failed;
            self.error = Some(ErrorDetails::new(message));
        } else {
            for route in &mut self.routes {
                if route.response.is_none() && route.error.is_none() {
                    route.error = Some(ErrorDetails::new(message));
                }
            }
            self.settle_status();
        }
    }
}

/// The share of the per-transaction body cap that is left: bodies are stored in the order they are
/// captured until the cap is reached, then cut.
#[derive(Debug, Clone, Copy)]
pub struct BodyBudget {
    remaining: u64,
}

impl BodyBudget {
    pub fn new(cap: u64) -> BodyBudget {
        BodyBudget { remaining: cap }
    }

    /// Takes what fits of `bytes`: the stored body (None when empty) and whether it was cut.
    pub fn take(&mut self, bytes: &Bytes) -> (Option<Body>, bool) {
        let len = bytes.len() as u64;
        if len == 0 {
            return (None, false);
        }
        let keep = len.min(self.remaining);
        self.remaining -= keep;
        let truncated = keep < len;
        if keep == 0 {
            return (None, truncated);
        }
        (Some(Body(bytes.slice(..keep as usize))), truncated)
    }

    /// How many more bytes may be stored.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // OpenHIM's messageStore status cases (reference §6, item 30).
    #[test]
    fn status_follows_openhim() {
        assert_eq!(final_status(200, &[]), Status::Successful);
        assert_eq!(final_status(201, &[200, 204]), Status::Successful);
        assert_eq!(final_status(500, &[]), Status::Failed);
        assert_eq!(final_status(503, &[200]), Status::Failed);
        assert_eq!(final_status(200, &[500]), Status::CompletedWithErrors);
        assert_eq!(final_status(404, &[502]), Status::CompletedWithErrors);
        assert_eq!(final_status(200, &[404]), Status::Completed);
        assert_eq!(final_status(404, &[404]), Status::Completed);
        assert_eq!(final_status(404, &[]), Status::Completed);
        assert_eq!(final_status(302, &[]), Status::Completed);
        assert_eq!(final_status(302, &[500]), Status::CompletedWithErrors);
    }

    #[test]
    fn credentials_are_redacted() {
        let mut map = HeaderMap::new();
        map.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        map.insert(header::PROXY_AUTHORIZATION, "Bearer abc".parse().unwrap());
        map.insert(header::COOKIE, "session=secret".parse().unwrap());
        map.append(header::SET_COOKIE, "a=1".parse().unwrap());
        map.append(header::SET_COOKIE, "b=2".parse().unwrap());
        map.append(header::ACCEPT, "text/plain".parse().unwrap());
        map.append(header::ACCEPT, "application/json".parse().unwrap());
        let h = Headers::redacted(&map);
        assert_eq!(h.get("authorization"), Some("Basic [redacted]"));
        assert_eq!(h.get("proxy-authorization"), Some("Bearer [redacted]"));
        assert_eq!(h.get("cookie"), Some("[redacted]"));
        assert_eq!(h.get("set-cookie"), Some("[redacted]"));
        assert_eq!(h.get("accept"), Some("text/plain, application/json"));
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("dXNlcjpwYXNz") && !json.contains("secret"));
    }

    #[test]
    fn budget_cuts_bodies_in_order() {
        let mut budget = BodyBudget::new(10);
        let (a, cut_a) = budget.take(&Bytes::from_static(b"123456"));
        let (b, cut_b) = budget.take(&Bytes::from_static(b"abcdef"));
        let (c, cut_c) = budget.take(&Bytes::from_static(b"xyz"));
        assert_eq!((a.unwrap().0.as_ref(), cut_a), (&b"123456"[..], false));
        assert_eq!((b.unwrap().0.as_ref(), cut_b), (&b"abcd"[..], true));
        assert_eq!((c, cut_c), (None, true));
        assert_eq!(budget.take(&Bytes::new()), (None, false));
    }

    fn sample() -> Transaction {
        let id = Uuid::now_v7();
        Transaction {
            id,
            channel_id: "c1".into(),
            channel_name: "echo".into(),
            client_id: None,
            client_ip: "127.0.0.1".into(),
            request: RequestRecord {
                path: "/x".into(),
                method: "POST".into(),
                headers: Headers(vec![("a".into(), "b".into())]),
                body: Some(Body(Bytes::from_static(&[0xff, 0x00, 0x41]))),
                timestamp: Timestamp::of_id(id),
                ..Default::default()
            },
            response: Some(ResponseRecord {
                status: 200,
                body: Some(Body(Bytes::from_static(b"ok"))),
                timestamp: Timestamp::now(),
                ..Default::default()
            }),
            routes: vec![],
            orchestrations: vec![],
            properties: Default::default(),
            error: None,
            status: Status::Successful,
            can_rerun: true,
            was_rerun: false,
            parent_id: None,
            child_ids: vec![Uuid::now_v7()],
            worker: 1,
            instance: "test".into(),
            duration_ms: Some(1.5),
            plugin: None,
            plugin_log: Vec::new(),
        }
    }

    #[test]
    fn binary_encoding_round_trips() {
        let tx = sample();
        assert_eq!(Transaction::decode(&tx.encode()).unwrap(), tx);
    }

    #[test]
    fn json_shows_openhim_names_and_readable_values() {
        let tx = sample();
        let json = serde_json::to_value(&tx).unwrap();
        assert_eq!(json["_id"], tx.id.to_string());
        assert_eq!(json["channelID"], "c1");
        assert_eq!(json["clientIP"], "127.0.0.1");
        assert_eq!(json["status"], "Successful");
        assert_eq!(json["canRerun"], true);
        assert_eq!(json["response"]["body"], "ok");
        assert_eq!(json["request"]["body"]["base64"], "/wBB");
        assert!(
            json["request"]["timestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let back: Transaction = serde_json::from_value(json).unwrap();
        assert_eq!(back, tx);
    }

    #[test]
    fn interrupted_records() {
        let mut tx = sample();
        tx.response = None;
        tx.status = Status::Processing;
        tx.mark_interrupted();
        assert_eq!(tx.status, Status::Failed);
        assert!(tx.error.unwrap().message.starts_with("interrupted"));

        let mut tx = sample();
        tx.routes.push(Exchange {
            name: "audit".into(),
            ..Default::default()
        });
        tx.status = Status::Processing;
        tx.mark_interrupted();
        assert_eq!(tx.status, Status::CompletedWithErrors);
    }

    #[test]
    fn timestamps_parse_and_bound_ids() {
        let t = Timestamp::parse("2026-11-25T10:00:00.250Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T10:00:00.250Z");
        assert_eq!(Timestamp::parse("1000").unwrap(), Timestamp(1000));
        let id = Uuid::now_v7();
        assert!(Timestamp::of_id(id).first_id() <= id);
        assert_eq!(Timestamp::of_id(Timestamp(77).first_id()), Timestamp(77));
    }
}
