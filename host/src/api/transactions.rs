//! The transaction endpoints: listing with OpenHIM's query parameters, one record, and rerun.
//!
//! A listing's parameters (`filterPage`, `filterLimit`, `filterRepresentation`, `filters`, and
//! Mediary's `snapshot`) are parsed once into a [`Listing`]: a [`TxQuery`] for the store plus the
//! [`Representation`] to show, with every problem reported at once. Listings are pinned to a
//! snapshot (a transaction id at or below which every record is already stored); the snapshot used is
//! returned in `X-Mediary-Snapshot`, and passing it back keeps later pages where they were while new
//! transactions arrive.

use http::{HeaderValue, StatusCode};
use regex::RegexBuilder;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::{Api, Reply, json_reply};
use crate::config::fields::{FieldErrors, kind};
use crate::proxy::rerun::RerunError;
use crate::store::{ResponseStatus, TxQuery};
use crate::transaction::{Status, Timestamp, Transaction};

/// The header carrying a listing's snapshot.
pub const SNAPSHOT_HEADER: &str = "x-mediary-snapshot";

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1000;

/// The filters `filters` may hold.
const FILTERS: [&str; 5] = [
    "channelID",
    "status",
    "request.timestamp",
    "response.status",
    "request.path",
];

/// How much of each record a listing shows (OpenHIM's `filterRepresentation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Representation {
    /// No bodies, no headers, no routes or orchestrations: enough for a table of transactions.
    #[default]
    Summary,
    /// Everything but bodies (`simpledetails`).
    SimpleDetails,
    /// Everything (`full`; also `fulltruncate`, whose bodies are never longer than the stored ones
    /// here: Mediary caps bodies when it records them).
    Full,
}

impl Representation {
    fn parse(text: &str) -> Result<Representation, String> {
        match text {
            "" => Ok(Representation::Summary),
            "simpledetails" => Ok(Representation::SimpleDetails),
            "full" | "fulltruncate" => Ok(Representation::Full),
            other => Err(format!(
                "`{other}` is not a representation; use simpledetails, full or fulltruncate, or \
                 leave it out for the summary"
            )),
        }
    }

    /// This representation, or the nearest one without bodies when the user may not see them (no
    /// `transaction-view-body-all`).
    pub fn with_bodies(self, bodies: bool) -> Representation {
        match self {
            Representation::Full if !bodies => Representation::SimpleDetails,
            other => other,
        }
    }

    /// `tx` as JSON, with what this representation leaves out removed.
    pub fn show(self, tx: &Transaction) -> Value {
        let mut json = serde_json::to_value(tx).unwrap_or(Value::Null);
        let Value::Object(record) = &mut json else {
            return json;
        };
        match self {
            Representation::Full => {}
            Representation::SimpleDetails => {
                for part in ["request", "response"] {
                    strip(record.get_mut(part), &["body"]);
                }
                for list in ["routes", "orchestrations"] {
                    if let Some(Value::Array(exchanges)) = record.get_mut(list) {
                        for exchange in exchanges.iter_mut().filter_map(Value::as_object_mut) {
                            for part in ["request", "response"] {
                                strip(exchange.get_mut(part), &["body"]);
                            }
                        }
                    }
                }
            }
            Representation::Summary => {
                for part in ["request", "response"] {
                    strip(record.get_mut(part), &["body", "headers"]);
                }
                for list in ["routes", "orchestrations"] {
                    record.insert(list.to_owned(), Value::Array(Vec::new()));
                }
            }
        }
        json
    }
}

fn strip(part: Option<&mut Value>, keys: &[&str]) {
    if let Some(Value::Object(object)) = part {
        for key in keys {
            object.remove(*key);
        }
    }
}

/// A parsed `GET /transactions`.
#[derive(Debug)]
pub struct Listing {
    /// With `snapshot` unset when the client gave none: the caller fills in the current bound.
    pub query: TxQuery,
    pub representation: Representation,
}

impl Listing {
    /// Parses the query-string parameters (already percent-decoded). Parameters OpenHIM does not
    /// know are ignored, as OpenHIM does.
    pub fn parse(params: &[(String, String)]) -> Result<Listing, ApiError> {
        let mut errors = FieldErrors::default();
        let param = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let page = match param("filterPage") {
            None | Some("") => Some(0),
            Some(text) => text.parse::<usize>().ok().or_else(|| {
                errors.push(
                    "filterPage",
                    format!("`{text}` is not a page number (0 or more)"),
                );
                None
            }),
        };
        let limit = match param("filterLimit") {
            None | Some("") => Some(DEFAULT_LIMIT),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .or_else(|| {
                    errors.push(
                        "filterLimit",
                        format!("`{text}` is not a page size from 1 to {MAX_LIMIT}"),
                    );
                    None
                }),
        };
        let representation = Representation::parse(param("filterRepresentation").unwrap_or(""))
            .unwrap_or_else(|reason| {
                errors.push("filterRepresentation", reason);
                Representation::Summary
            });
        let snapshot = param("snapshot")
            .filter(|s| !s.is_empty())
            .and_then(|text| {
                Uuid::parse_str(text).ok().or_else(|| {
                    errors.push(
                        "snapshot",
                        format!(
                            "`{text}` is not a transaction id (a UUID from X-Mediary-Snapshot)"
                        ),
                    );
                    None
                })
            });
        let mut query = match param("filters").filter(|f| !f.trim().is_empty()) {
            None => TxQuery::default(),
            Some(text) => parse_filters(text, &mut errors),
        };
        if let (Some(page), Some(limit)) = (page, limit) {
            match page.checked_mul(limit) {
                Some(offset) => query.offset = offset,
                None => errors.push("filterPage", format!("page {page} is out of range")),
            }
            query.limit = limit;
        }
        query.snapshot = snapshot;
        if !errors.is_empty() {
            return Err(ApiError::Invalid {
                what: "transaction query",
                errors: errors.0,
            });
        }
        Ok(Listing {
            query,
            representation,
        })
    }
}

/// `GET /transactions`: a page of records, newest first, as a bare array (OpenHIM's shape). Without
/// `bodies` (the caller's permission to see them), no representation shows a body.
pub async fn list(api: &Api, params: &[(String, String)], bodies: bool) -> Result<Reply, ApiError> {
    let Listing {
        mut query,
        representation,
    } = Listing::parse(params)?;
    let representation = representation.with_bodies(bodies);
    let snapshot = *query
        .snapshot
        .get_or_insert_with(|| api.shared.snapshot_bound());
    let records = api.shared.store.list_transactions(&query).await?;
    let shown: Vec<Value> = records.iter().map(|tx| representation.show(tx)).collect();
    let mut reply = json_reply(StatusCode::OK, &shown);
    if let Ok(value) = HeaderValue::from_str(&snapshot.to_string()) {
        reply.headers_mut().insert(SNAPSHOT_HEADER, value);
    }
    Ok(reply)
}

/// `GET /transactions/:id`: the whole record (without bodies unless `bodies`).
pub async fn get(api: &Api, id: &str, bodies: bool) -> Result<Reply, ApiError> {
    let tx = find(api, id).await?;
    let representation = Representation::Full.with_bodies(bodies);
    Ok(json_reply(StatusCode::OK, &representation.show(&tx)))
}

/// `POST /transactions/:id/rerun`: sends the recorded request through its channel again; the answer
/// is the child's whole record.
pub async fn rerun(api: &Api, id: &str, bodies: bool) -> Result<Reply, ApiError> {
    let parent = find(api, id).await?;
    let child = api
        .proxy
        .rerun(&parent)
        .await
        .map_err(|error| match error {
            RerunError::NotRerunnable { .. } | RerunError::ChannelUnavailable { .. } => {
                ApiError::Conflict(sentence(&error.to_string()))
            }
            RerunError::Store(error) => ApiError::Store(error),
        })?;
    tracing::info!(parent = %parent.id, child = %child.id, "Transaction rerun through the API.");
    Ok(json_reply(
        StatusCode::CREATED,
        &Representation::Full.with_bodies(bodies).show(&child),
    ))
}

async fn find(api: &Api, id: &str) -> Result<Transaction, ApiError> {
    let uuid = Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a transaction id (a UUID).")))?;
    api.shared
        .store
        .transaction(uuid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No transaction has the id `{uuid}`.")))
}

/// A lower-case error message as a sentence.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut out: String = chars
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(chars.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Parses OpenHIM's `filters` JSON object into a query, adding every problem to `errors`.
fn parse_filters(text: &str, errors: &mut FieldErrors) -> TxQuery {
    let mut query = TxQuery::default();
    let object: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            errors.push(
                "filters",
                format!("expected a JSON object, found {}", kind(&other)),
            );
            return query;
        }
        Err(error) => {
            errors.push("filters", format!("not valid JSON: {error}"));
            return query;
        }
    };
    for (key, value) in &object {
        let field = format!("filters.{key}");
        let result = match key.as_str() {
            "channelID" => match value {
                Value::String(id) if !id.is_empty() => {
                    query.channel_id = Some(id.clone());
                    Ok(())
                }
                other => Err(format!("expected a channel id, found {}", shown(other))),
            },
            "status" => parse_statuses(value).map(|statuses| query.statuses = statuses),
            "request.timestamp" => parse_time_range(value).map(|(from, to)| {
                query.from = from;
                query.to = to;
            }),
            "response.status" => {
                parse_response_status(value).map(|status| query.response_status = Some(status))
            }
            "request.path" => match value {
                Value::String(source) => RegexBuilder::new(source)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map(|regex| query.path = Some(regex))
                    .map_err(|e| {
                        format!(
                            "not a valid regular expression: {}",
                            crate::channel::regex_error(&e)
                        )
                    }),
                other => Err(format!(
                    "expected a regular expression, found {}",
                    shown(other)
                )),
            },
            _ => Err(format!("unknown filter; supported: {}", FILTERS.join(", "))),
        };
        if let Err(reason) = result {
            errors.push(field, reason);
        }
    }
    query
}

/// `"Failed"`, `["Failed", "Completed"]` or `{"$in": [...]}`.
fn parse_statuses(value: &Value) -> Result<Vec<Status>, String> {
    let names: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) => items.iter().collect(),
        Value::Object(object) => match (object.len(), object.get("$in")) {
            (1, Some(Value::Array(items))) => items.iter().collect(),
            _ => {
                return Err(
                    "an object here must be {\"$in\": [status, …]} and nothing else".to_owned(),
                );
            }
        },
        other => {
            return Err(format!(
                "expected a status, a list of them or {{\"$in\": […]}}, found {}",
                shown(other)
            ));
        }
    };
    if names.is_empty() {
        return Err("the list of statuses is empty".to_owned());
    }
    let mut statuses = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        match name.as_str().and_then(Status::parse) {
            Some(status) => {
                if !statuses.contains(&status) {
                    statuses.push(status);
                }
            }
            None => unknown.push(shown(name)),
        }
    }
    if !unknown.is_empty() {
        let known: Vec<String> = Status::ALL.iter().map(|s| format!("\"{s}\"")).collect();
        return Err(format!(
            "{} is not a status; use one of {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    Ok(statuses)
}

/// `{"$gte": t, "$lte": t}` (any of `$gte`, `$gt`, `$lte`, `$lt`), as an object or as a JSON string
/// of one (what OpenHIM's console sends). Times are RFC 3339 or milliseconds since the epoch.
fn parse_time_range(value: &Value) -> Result<(Option<Timestamp>, Option<Timestamp>), String> {
    let parsed;
    let object = match value {
        Value::Object(object) => object,
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("not a JSON object of $gte/$gt/$lte/$lt: {e}"))?;
            match &parsed {
                Value::Object(object) => object,
                other => {
                    return Err(format!(
                        "expected an object of $gte/$gt/$lte/$lt, found {}",
                        kind(other)
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "expected an object of $gte/$gt/$lte/$lt, found {}",
                kind(other)
            ));
        }
    };
    if object.is_empty() {
        return Err("the range is empty; give $gte, $gt, $lte or $lt".to_owned());
    }
    let (mut from, mut to): (Option<Timestamp>, Option<Timestamp>) = (None, None);
    let mut problems = Vec::new();
    for (op, bound) in object {
        let time = match bound {
            Value::String(text) => Timestamp::parse(text),
            Value::Number(n) => n
                .as_u64()
                .map(Timestamp)
                .ok_or_else(|| format!("{n} is not milliseconds since 1970")),
            other => Err(format!("expected a time, found {}", kind(other))),
        };
        let time = match time {
            Ok(time) => time,
            Err(reason) => {
                problems.push(format!("{op}: {reason}"));
                continue;
            }
        };
        // Bounds are whole milliseconds, so a strict bound is the next one in.
        let (lower, upper) = match op.as_str() {
            "$gte" => (Some(time), None),
            "$gt" => (Some(Timestamp(time.0.saturating_add(1))), None),
            "$lte" => (None, Some(time)),
            "$lt" => match time.0.checked_sub(1) {
                Some(ms) => (None, Some(Timestamp(ms))),
                None => {
                    problems.push("$lt: nothing is earlier than 1970".to_owned());
                    continue;
                }
            },
            other => {
                problems.push(format!(
                    "`{other}` is not an operator; use $gte, $gt, $lte or $lt"
                ));
                continue;
            }
        };
        // Two lower (or upper) bounds: the stricter one holds.
        from = from.max(lower);
        to = match (to, upper) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((from, to))
}

/// `500`, `"500"` or a class `"5xx"`.
fn parse_response_status(value: &Value) -> Result<ResponseStatus, String> {
    let exact = |n: u64| {
        u16::try_from(n)
            .ok()
            .filter(|n| (100..=599).contains(n))
            .map(ResponseStatus::Exact)
            .ok_or_else(|| format!("{n} is not an HTTP status (100-599)"))
    };
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not an HTTP status (100-599)"))
            .and_then(exact),
        Value::String(text) => {
            let lower = text.to_ascii_lowercase();
            if let Some(class) = lower.strip_suffix("xx")
                && let Ok(class @ 1..=5) = class.parse::<u16>()
            {
                return Ok(ResponseStatus::Class(class));
            }
            text.parse::<u64>()
                .map_err(|_| ())
                .and_then(|n| exact(n).map_err(|_| ()))
                .map_err(|()| {
                    format!("`{text}` is not an HTTP status (100-599) or a class like \"5xx\"")
                })
        }
        other => Err(format!(
            "expected a status like 404 or a class like \"5xx\", found {}",
            kind(other)
        )),
    }
}

/// A value as it appears in an error: strings quoted, others as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) | Value::Object(_) => kind(value).to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fields::FieldError;
    use crate::transaction::{Body, Exchange, Headers, RequestRecord, ResponseRecord};
    use bytes::Bytes;
    use serde_json::json;

    /// The field errors of an `Invalid` error.
    fn fields(error: &ApiError) -> Vec<&FieldError> {
        match error {
            ApiError::Invalid { errors, .. } => errors.iter().collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn listing(pairs: &[(&str, &str)]) -> Listing {
        Listing::parse(&params(pairs)).expect("a valid listing")
    }

    fn rejected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let error = Listing::parse(&params(pairs)).expect_err("an invalid listing");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
        fields(&error)
            .into_iter()
            .map(|e| (e.path.clone(), e.reason.clone()))
            .collect()
    }

    fn with_filters(filters: Value) -> TxQuery {
        listing(&[("filters", &filters.to_string())]).query
    }

    fn filter_error(filters: &str) -> (String, String) {
        let mut errors = rejected(&[("filters", filters)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[test]
    fn defaults_follow_openhim() {
        let l = listing(&[]);
        assert_eq!((l.query.offset, l.query.limit), (0, 20));
        assert_eq!(l.representation, Representation::Summary);
        assert!(l.query.snapshot.is_none() && l.query.channel_id.is_none());
        let l = listing(&[("filterPage", "3"), ("filterLimit", "50"), ("filters", "")]);
        assert_eq!((l.query.offset, l.query.limit), (150, 50));
        for (text, want) in [
            ("simpledetails", Representation::SimpleDetails),
            ("full", Representation::Full),
            ("fulltruncate", Representation::Full),
        ] {
            assert_eq!(
                listing(&[("filterRepresentation", text)]).representation,
                want
            );
        }
        let id = Uuid::now_v7();
        assert_eq!(
            listing(&[("snapshot", &id.to_string())]).query.snapshot,
            Some(id)
        );
        assert!(listing(&[("unrelated", "x")]).query.snapshot.is_none());
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        let errors = rejected(&[
            ("filterPage", "-1"),
            ("filterLimit", "0"),
            ("filterRepresentation", "bulkrerun"),
            ("snapshot", "nope"),
            ("filters", r#"{"colour": "red", "status": "Lost"}"#),
        ]);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "filterPage",
                "filterLimit",
                "filterRepresentation",
                "snapshot",
                "filters.colour",
                "filters.status"
            ]
        );
        assert!(
            rejected(&[("filterLimit", "1001")])[0]
                .1
                .contains("1 to 1000")
        );
        assert!(rejected(&[("filterLimit", "ten")])[0].0 == "filterLimit");
        let huge = usize::MAX.to_string();
        assert_eq!(
            rejected(&[("filterPage", &huge), ("filterLimit", "2")])[0].0,
            "filterPage"
        );
    }

    #[test]
    fn filters_must_be_a_json_object() {
        let (field, reason) = filter_error("{\"status\": ");
        assert_eq!(field, "filters");
        assert!(reason.contains("line 1 column"), "{reason}");
        let (field, reason) = filter_error("[1]");
        assert_eq!(field, "filters");
        assert!(reason.contains("an array"), "{reason}");
    }

    #[test]
    fn channel_and_status_filters() {
        let q = with_filters(json!({"channelID": "abc", "status": "Failed"}));
        assert_eq!(q.channel_id.as_deref(), Some("abc"));
        assert_eq!(q.statuses, [Status::Failed]);
        let q = with_filters(json!({"status": ["Successful", "Completed with error(s)"]}));
        assert_eq!(
            q.statuses,
            [Status::Successful, Status::CompletedWithErrors]
        );
        let q = with_filters(json!({"status": {"$in": ["Processing", "Processing"]}}));
        assert_eq!(q.statuses, [Status::Processing]);

        assert_eq!(filter_error(r#"{"channelID": 7}"#).0, "filters.channelID");
        assert_eq!(filter_error(r#"{"channelID": ""}"#).0, "filters.channelID");
        let (_, reason) = filter_error(r#"{"status": ["Failed", "Lost", 3]}"#);
        assert!(reason.contains("\"Lost\", 3 is not a status"), "{reason}");
        assert!(reason.contains("\"Pending Async\""), "{reason}");
        assert!(filter_error(r#"{"status": []}"#).1.contains("empty"));
        assert!(
            filter_error(r#"{"status": {"$nin": ["Failed"]}}"#)
                .1
                .contains("$in")
        );
        assert!(filter_error(r#"{"status": true}"#).1.contains("found true"));
    }

    #[test]
    fn time_ranges_as_objects_or_strings() {
        let q = with_filters(json!({"request.timestamp": {
            "$gte": "2026-01-01T00:00:00Z", "$lte": 1_800_000_000_000u64}}));
        assert_eq!(
            q.from,
            Some(Timestamp::parse("2026-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(q.to, Some(Timestamp(1_800_000_000_000)));
        let as_string = json!({"$gt": "1000", "$lt": "2000"}).to_string();
        let q = with_filters(json!({ "request.timestamp": as_string }));
        assert_eq!(
            (q.from, q.to),
            (Some(Timestamp(1001)), Some(Timestamp(1999)))
        );
        let q = with_filters(
            json!({"request.timestamp": {"$gte": 10, "$gt": 20, "$lte": 50, "$lt": 40}}),
        );
        assert_eq!((q.from, q.to), (Some(Timestamp(21)), Some(Timestamp(39))));

        for (bad, needle) in [
            (
                json!({"request.timestamp": {"$after": 1}}),
                "`$after` is not an operator",
            ),
            (
                json!({"request.timestamp": {"$gte": "yesterday"}}),
                "$gte: `yesterday`",
            ),
            (json!({"request.timestamp": {"$gte": -5}}), "$gte: -5"),
            (
                json!({"request.timestamp": {"$lt": 0}}),
                "earlier than 1970",
            ),
            (json!({"request.timestamp": {}}), "empty"),
            (json!({"request.timestamp": "{nope"}), "not a JSON object"),
            (json!({"request.timestamp": "[1]"}), "found an array"),
            (json!({"request.timestamp": 5}), "found a number"),
        ] {
            let (field, reason) = filter_error(&bad.to_string());
            assert_eq!(field, "filters.request.timestamp");
            assert!(reason.contains(needle), "{reason} lacks {needle}");
        }
    }

    #[test]
    fn response_status_exact_or_class() {
        let status = |v: Value| with_filters(json!({ "response.status": v })).response_status;
        assert_eq!(status(json!(404)), Some(ResponseStatus::Exact(404)));
        assert_eq!(status(json!("201")), Some(ResponseStatus::Exact(201)));
        assert_eq!(status(json!("5xx")), Some(ResponseStatus::Class(5)));
        assert_eq!(status(json!("2XX")), Some(ResponseStatus::Class(2)));
        for bad in [
            json!(99),
            json!(600),
            json!("6xx"),
            json!("ok"),
            json!(2.5),
            json!(null),
        ] {
            let (field, _) = filter_error(&json!({ "response.status": bad }).to_string());
            assert_eq!(field, "filters.response.status", "{bad}");
        }
    }

    #[test]
    fn path_filter_is_a_case_insensitive_regex() {
        let q = with_filters(json!({"request.path": "^/fhir/patient"}));
        let path = q.path.expect("a regex");
        assert!(path.is_match("/FHIR/Patient/1"));
        assert!(!path.is_match("/other"));
        let (field, reason) = filter_error(r#"{"request.path": "("}"#);
        assert_eq!(field, "filters.request.path");
        assert!(!reason.contains('\n'), "{reason}");
        assert_eq!(
            filter_error(r#"{"request.path": 1}"#).0,
            "filters.request.path"
        );
    }

    #[test]
    fn every_bad_filter_is_reported_together() {
        let errors = rejected(&[(
            "filters",
            r#"{"channelID": 1, "status": "x", "request.timestamp": {"$gte": "x"},
               "response.status": "x", "request.path": "(", "childIDs": []}"#,
        )]);
        assert_eq!(errors.len(), 6, "{errors:?}");
        let unknown = errors
            .iter()
            .find(|(p, _)| p == "filters.childIDs")
            .unwrap();
        assert!(unknown.1.contains("request.timestamp"), "{}", unknown.1);
    }

    fn record() -> Transaction {
        let id = Uuid::now_v7();
        let exchange = Exchange {
            name: "r".into(),
            request: RequestRecord {
                path: "/up".into(),
                method: "GET".into(),
                body: Some(Body(Bytes::from_static(b"route request"))),
                headers: Headers(vec![("x".into(), "1".into())]),
                ..Default::default()
            },
            response: Some(ResponseRecord {
                status: 200,
                body: Some(Body(Bytes::from_static(b"route response"))),
                ..Default::default()
            }),
            error: None,
        };
        Transaction {
            id,
            channel_id: "c".into(),
            channel_name: "c".into(),
            client_id: None,
            client_ip: "127.0.0.1".into(),
            request: RequestRecord {
                path: "/x".into(),
                method: "POST".into(),
                headers: Headers(vec![("a".into(), "b".into())]),
                body: Some(Body(Bytes::from_static(b"hello"))),
                timestamp: Timestamp::of_id(id),
                ..Default::default()
            },
            response: Some(ResponseRecord {
                status: 200,
                headers: Headers(vec![("c".into(), "d".into())]),
                body: Some(Body(Bytes::from_static(b"world"))),
                timestamp: Timestamp::now(),
                ..Default::default()
            }),
            routes: vec![exchange.clone()],
            orchestrations: vec![exchange],
            properties: Default::default(),
            error: None,
            status: Status::Successful,
            can_rerun: true,
            was_rerun: false,
            parent_id: None,
            child_ids: vec![],
            worker: 0,
            instance: "i".into(),
            duration_ms: None,
            plugin: None,
            plugin_log: Vec::new(),
        }
    }

    #[test]
    fn users_without_body_permission_see_no_bodies() {
        let tx = record();
        let hidden = Representation::Full.with_bodies(false).show(&tx);
        assert!(hidden["request"].get("body").is_none(), "{hidden}");
        assert!(hidden["request"].get("headers").is_some(), "{hidden}");
        assert_eq!(Representation::Full.with_bodies(true), Representation::Full);
        assert_eq!(
            Representation::Summary.with_bodies(false),
            Representation::Summary
        );
        let shown = Representation::Full.with_bodies(true).show(&tx);
        assert!(shown["request"].get("body").is_some(), "{shown}");
    }

    #[test]
    fn representations_project_like_openhim() {
        let tx = record();
        let full = Representation::Full.show(&tx);
        assert_eq!(full, serde_json::to_value(&tx).unwrap());
        assert_eq!(full["request"]["body"], "hello");

        let simple = Representation::SimpleDetails.show(&tx);
        assert!(simple["request"].get("body").is_none());
        assert!(simple["response"].get("body").is_none());
        assert_eq!(simple["request"]["headers"]["a"], "b");
        assert!(simple["routes"][0]["request"].get("body").is_none());
        assert!(
            simple["orchestrations"][0]["response"]
                .get("body")
                .is_none()
        );
        assert_eq!(simple["routes"][0]["request"]["headers"]["x"], "1");

        let summary = Representation::Summary.show(&tx);
        for part in ["request", "response"] {
            assert!(summary[part].get("body").is_none(), "{part}");
            assert!(summary[part].get("headers").is_none(), "{part}");
        }
        assert_eq!(summary["request"]["path"], "/x");
        assert_eq!(summary["response"]["status"], 200);
        assert_eq!(summary["routes"], json!([]));
        assert_eq!(summary["orchestrations"], json!([]));
        assert_eq!(summary["_id"], tx.id.to_string());
        assert_eq!(summary["status"], "Successful");
    }
}
