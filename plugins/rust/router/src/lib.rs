//! A content-based FHIR router: each request goes, unchanged, to the channel route that serves its
//! FHIR resource type.
//!
//! The resource type comes from one place, chosen by `by`:
//!
//! - `"path"` (the default): the first path segment that starts with an ASCII capital letter, so
//!   `/fhir/Patient/123` is a `Patient` and `/Observation?code=x` an `Observation`;
//! - `"header"`: the value of the header named by `header` (default `x-resource-type`);
//! - `"body"`: the JSON body's top-level string field named by `field` (default `resourceType`).
//!
//! `routes` maps resource types to route names; a request whose type is not there (or has none)
//! goes to `fallback`, or, without one, is refused with 404. Each decision is logged at `debug`
//! with the fields `resource` and `route`.
//!
//! ```json
//! {
//!   "by": "path",
//!   "header": "x-resource-type",
//!   "field": "resourceType",
//!   "routes": { "Patient": "patients", "Observation": "observations" },
//!   "fallback": "everything-else"
//! }
//! ```
//!
//! Invalid settings refuse every request with 500, naming the problem.

use std::collections::BTreeMap;
use std::fmt;

use mediary_plugin::prelude::*;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Where the resource type is read from.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Source {
    #[default]
    Path,
    Header,
    Body,
}

/// The plugin's settings (`plugin.config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// Where the resource type is read from.
    #[serde(default)]
    by: Source,
    /// The header that carries the resource type when `by` is `header`.
    #[serde(default = "default_header")]
    header: String,
    /// The body's top-level field that carries the resource type when `by` is `body`.
    #[serde(default = "default_field")]
    field: String,
    /// Resource type to route name.
    #[serde(default)]
    routes: BTreeMap<String, String>,
    /// The route for requests whose type is not in `routes`, or that have none.
    #[serde(default)]
    fallback: Option<String>,
}

fn default_header() -> String {
    "x-resource-type".to_owned()
}

fn default_field() -> String {
    "resourceType".to_owned()
}

/// The settings, parsed on the instance's first request (they never change for an instance).
static SETTINGS: config::Settings<Settings> = config::Settings::new();

struct FhirRouter;

impl Router for FhirRouter {
    fn on_request(request: Request) -> Action {
        let settings = match SETTINGS.get() {
            Ok(settings) => settings,
            Err(refusal) => return refusal,
        };
        let resource = match settings.by {
            Source::Path => resource_in_path(&request.path).map(str::to_owned),
            Source::Header => request
                .header(&settings.header)
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned),
            Source::Body => string_field(&request.body, &settings.field),
        };
        let route = resource
            .as_deref()
            .and_then(|resource| settings.routes.get(resource))
            .or(settings.fallback.as_ref());
        let resource_field = resource.as_deref().unwrap_or("");
        match route {
            Some(route) => {
                log::debug(
                    "Routed by resource type.",
                    &[("resource", resource_field), ("route", route)],
                );
                Action::to_route(route.as_str())
            }
            None => {
                log::debug(
                    "No route for the resource type.",
                    &[("resource", resource_field), ("route", "")],
                );
                Action::reject(404, no_route_reason(settings, resource.as_deref()))
            }
        }
    }
}

mediary_plugin::export_router!(FhirRouter);

fn no_route_reason(settings: &Settings, resource: Option<&str>) -> String {
    match (resource, settings.by) {
        (Some(resource), _) => format!("No route serves FHIR resource type `{resource}`."),
        (None, Source::Path) => "No FHIR resource type found in the request path.".to_owned(),
        (None, Source::Header) => format!(
            "No FHIR resource type found: header `{}` is missing or empty.",
            settings.header
        ),
        (None, Source::Body) => format!(
            "No FHIR resource type found: the body is not a JSON object with a string `{}`.",
            settings.field
        ),
    }
}

/// The first path segment that starts with an ASCII capital letter.
fn resource_in_path(path: &str) -> Option<&str> {
    path.split('/')
        .find(|segment| segment.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The string value of the JSON object's top-level `field`, without building the rest of the
/// document (other values are skipped, not allocated). `None` if the body is not a JSON object or
/// the field is missing or not a string.
fn string_field(body: &[u8], field: &str) -> Option<String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    FieldSeed(field)
        .deserialize(&mut deserializer)
        .ok()
        .flatten()
}

struct FieldSeed<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && key == self.0 {
                // Not a string (a number, an object): treated as no resource type.
                found = Some(
                    map.next_value::<serde_json::Value>()?
                        .as_str()
                        .map(str::to_owned),
                );
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_type_from_the_path() {
        assert_eq!(resource_in_path("/fhir/Patient/123"), Some("Patient"));
        assert_eq!(resource_in_path("/Observation"), Some("Observation"));
        assert_eq!(
            resource_in_path("/fhir/r4/Encounter/_history"),
            Some("Encounter")
        );
        assert_eq!(resource_in_path("/fhir/metadata"), None);
        assert_eq!(resource_in_path("/"), None);
        assert_eq!(resource_in_path(""), None);
    }

    #[test]
    fn resource_type_from_the_body() {
        let body = br#"{"id": "1", "meta": {"resourceType": "No"}, "resourceType": "Patient"}"#;
        assert_eq!(
            string_field(body, "resourceType").as_deref(),
            Some("Patient")
        );
        assert_eq!(
            string_field(br#"{"kind": "Bundle"}"#, "kind").as_deref(),
            Some("Bundle")
        );
        assert_eq!(
            string_field(br#"{"resourceType": 3}"#, "resourceType"),
            None
        );
        assert_eq!(string_field(br#"{"id": "1"}"#, "resourceType"), None);
        assert_eq!(string_field(br#"["Patient"]"#, "resourceType"), None);
        assert_eq!(string_field(b"not json", "resourceType"), None);
        assert_eq!(string_field(b"", "resourceType"), None);
        // An escaped key still matches.
        assert_eq!(
            string_field(br#"{"resource\u0054ype": "Group"}"#, "resourceType").as_deref(),
            Some("Group")
        );
    }

    #[test]
    fn settings_defaults_and_errors() {
        let settings: Settings = serde_json::from_str("{}").expect("empty settings");
        assert_eq!(settings.by, Source::Path);
        assert_eq!(settings.header, "x-resource-type");
        assert_eq!(settings.field, "resourceType");
        assert!(serde_json::from_str::<Settings>(r#"{"by": "query"}"#).is_err());
        assert!(serde_json::from_str::<Settings>(r#"{"rutes": {}}"#).is_err());
    }
}
