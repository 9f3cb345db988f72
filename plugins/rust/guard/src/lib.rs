//! A guard in front of patient data: every request must name the patient it is about, and each
//! client gets a fixed number of requests per time window.
//!
//! **Identifier.** A request whose query parameter `identifier.query` and header
//! `identifier.header` are both missing or empty is refused with 400.
//!
//! **Rate limit.** Requests are counted per client and per window of `rateLimit.windowMs`
//! milliseconds (fixed windows, counted in the channel's key-value store, so all Mediary instances
//! share the count); past `rateLimit.requests` in a window, the client is refused with 429. The
//! client is the authenticated client's id; on a public channel, the value of the `clientHeader`
//! header when that setting is given (a header the client chooses, so only as trustworthy as the
//! network in front of Mediary), else `anonymous` (all such clients share one count). When the store
//! cannot be reached the request is let through and a warning logged: the guard fails open.
//! `"rateLimit": null` turns the limit off.
//!
//! Requests that pass go to the channel's routes unchanged.
//!
//! ```json
//! {
//!   "identifier": { "query": "identifier", "header": "x-patient-id" },
//!   "rateLimit": { "requests": 100, "windowMs": 60000 },
//!   "clientHeader": "x-client-id"
//! }
//! ```
//!
//! All settings are optional: the values above are the defaults, except `clientHeader`, which has
//! none.

use std::time::Duration;

use mediary_plugin::prelude::*;
use serde::Deserialize;

/// The plugin's settings (`plugin.config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// Where the patient identifier may be.
    #[serde(default)]
    identifier: Identifier,
    /// The per-client limit; `None` (`null`) for none.
    #[serde(default = "default_rate_limit")]
    rate_limit: Option<RateLimit>,
    /// The header naming the client on public channels.
    #[serde(default)]
    client_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identifier {
    /// The query parameter that may carry the identifier.
    #[serde(default = "default_query")]
    query: String,
    /// The header that may carry the identifier.
    #[serde(default = "default_header")]
    header: String,
}

impl Default for Identifier {
    fn default() -> Self {
        Identifier {
            query: default_query(),
            header: default_header(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimit {
    /// Requests allowed per client and window.
    requests: u64,
    /// The window's length.
    window_ms: u64,
}

fn default_query() -> String {
    "identifier".to_owned()
}

fn default_header() -> String {
    "x-patient-id".to_owned()
}

fn default_rate_limit() -> Option<RateLimit> {
    Some(RateLimit {
        requests: 100,
        window_ms: 60_000,
    })
}

/// Checks what serde cannot.
fn validate(settings: Settings) -> Result<Settings, String> {
    if let Some(limit) = &settings.rate_limit
        && limit.window_ms == 0
    {
        return Err("plugin setting `rateLimit.windowMs` must be at least 1".to_owned());
    }
    Ok(settings)
}

/// The settings, parsed and checked on the instance's first request (they never change for an
/// instance).
static SETTINGS: config::Settings<Settings> = config::Settings::checked(validate);

struct Guard;

impl Router for Guard {
    fn on_request(request: Request) -> Action {
        let settings = match SETTINGS.get() {
            Ok(settings) => settings,
            Err(refusal) => return refusal,
        };
        if !has_identifier(&request, &settings.identifier) {
            return Action::reject(
                400,
                format!(
                    "A patient identifier is required: give query parameter `{}` or header `{}`.",
                    settings.identifier.query, settings.identifier.header
                ),
            );
        }
        if let Some(limit) = &settings.rate_limit {
            let client = client(&request, settings.client_header.as_deref());
            let key = window_key(client, clock::now_ms(), limit.window_ms);
            match kv::increment(&key, 1, Some(Duration::from_millis(limit.window_ms))) {
                Ok(count) if u64::try_from(count).is_ok_and(|count| count > limit.requests) => {
                    log::info(
                        "Rate limit reached.",
                        &[("client", client), ("count", &count.to_string())],
                    );
                    return Action::reject(
                        429,
                        format!(
                            "Too many requests: client `{client}` may make {} per {} ms.",
                            limit.requests, limit.window_ms
                        ),
                    );
                }
                Ok(_) => {}
                Err(error) => log::warn(
                    "Rate limit not checked: the key-value store failed; letting the request through.",
                    &[("client", client), ("error", &error.to_string())],
                ),
            }
        }
        Action::forward()
    }
}

mediary_plugin::export_router!(Guard);

/// Whether the query parameter or the header carries a non-empty identifier.
fn has_identifier(request: &Request, identifier: &Identifier) -> bool {
    let in_query = request
        .query_param(&identifier.query)
        .is_some_and(|value| !value.trim().is_empty());
    in_query
        || request
            .header(&identifier.header)
            .is_some_and(|value| !value.trim().is_empty())
}

/// Who the request is counted against.
fn client<'r>(request: &'r Request, client_header: Option<&str>) -> &'r str {
    request
        .client_id()
        .or_else(|| client_header.and_then(|name| request.header(name)))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .unwrap_or("anonymous")
}

/// The counter of `client`'s requests in the window that holds `now_ms`.
fn window_key(client: &str, now_ms: u64, window_ms: u64) -> String {
    format!("rate:{client}:{}", now_ms / window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str, headers: &[(&str, &str)], client: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/fhir/Patient".into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            client: client.map(|id| Client {
                id: id.into(),
                roles: Vec::new(),
            }),
            channel: "patients".into(),
            transaction_id: "t".into(),
        }
    }

    #[test]
    fn identifier_in_query_or_header() {
        let names = Identifier::default();
        assert!(has_identifier(
            &request("identifier=123", &[], None),
            &names
        ));
        assert!(has_identifier(
            &request("", &[("x-patient-id", "123")], None),
            &names
        ));
        assert!(!has_identifier(
            &request("identifier=", &[("x-patient-id", " ")], None),
            &names
        ));
        assert!(!has_identifier(&request("id=1", &[], None), &names));
    }

    #[test]
    fn who_is_counted() {
        let with_both = request("", &[("x-client-id", "lab")], Some("emr"));
        assert_eq!(client(&with_both, Some("x-client-id")), "emr");
        let header_only = request("", &[("x-client-id", "lab")], None);
        assert_eq!(client(&header_only, Some("x-client-id")), "lab");
        assert_eq!(client(&header_only, None), "anonymous");
        assert_eq!(window_key("lab", 125_000, 60_000), "rate:lab:2");
    }

    #[test]
    fn settings() {
        let parse = |json: &str| validate(serde_json::from_str(json).expect("settings JSON"));
        let defaults = parse("{}").expect("defaults");
        assert_eq!(defaults.identifier.query, "identifier");
        assert_eq!(defaults.rate_limit.as_ref().map(|l| l.requests), Some(100));
        assert!(
            parse(r#"{"rateLimit": null}"#)
                .expect("no limit")
                .rate_limit
                .is_none()
        );
        assert!(parse(r#"{"rateLimit": {"requests": 1, "windowMs": 0}}"#).is_err());
    }
}
