//! Lab results as CSV in, FHIR out: a lab system posts a CSV of results, the FHIR server receives a
//! `transaction` Bundle of `Observation`s, and the lab system gets a CSV of what was created.
//!
//! **Requests.** A `POST` whose `content-type` is `text/csv` or `application/csv` (or that has
//! none) is read as CSV with a header row naming the columns `patient_id`, `code`, `display`,
//! `value`, `unit` and `effective`, in any order (other columns are ignored; quoted fields may hold
//! commas, quotes and line breaks). Each row becomes an `Observation` (status `final`; `code` in the
//! `codeSystem`; `subject` `Patient/<patient_id>`; `valueQuantity` with the UCUM `unit`;
//! `effectiveDateTime`), created with `POST Observation` in one `transaction` Bundle. The request
//! is forwarded to `route` (default: the channel's routes) as `POST <path>` with an empty query,
//! the Bundle as its body and `content-type` and `accept` `application/fhir+json` (other header
//! fields are kept, except those that described the CSV body: `content-length`,
//! `content-encoding`, ...). A malformed upload (a missing column, a row with the wrong number of
//! fields, a `value` that is not a number, an empty `patient_id` or `code`) is refused with 400
//! naming the line and column. Other requests are forwarded unchanged.
//!
//! **Responses.** When the upstream answers an upload with 2xx and a FHIR `transaction-response`
//! Bundle, the client gets CSV instead (`content-type: text/csv`): `row,status,location`, one line
//! per entry, rows numbered from 1 in upload order. Any other response passes through unchanged.
//!
//! ```json
//! {
//!   "codeSystem": "http://loinc.org",
//!   "route": "fhir-server",
//!   "path": "/fhir"
//! }
//! ```
//!
//! All settings are optional; the values above are the defaults, except `route`, whose default is
//! the channel's own routes.

mod csv;
mod lab;

use mediary_plugin::message::set_field;
use mediary_plugin::prelude::*;
use serde::Deserialize;

/// The plugin's settings (`plugin.config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// The `system` of every Observation's code.
    #[serde(default = "default_code_system")]
    code_system: String,
    /// The route that receives the Bundle; `None`: the channel's routes.
    #[serde(default)]
    route: Option<String>,
    /// The path the Bundle is posted to (a FHIR server's base, where transactions go).
    #[serde(default = "default_path")]
    path: String,
}

fn default_code_system() -> String {
    "http://loinc.org".to_owned()
}

fn default_path() -> String {
    "/fhir".to_owned()
}

/// The settings, parsed on the instance's first request (they never change for an instance).
static SETTINGS: config::Settings<Settings> = config::Settings::new();

const FHIR_JSON: &str = "application/fhir+json";

/// Whether `request` is a CSV upload this plugin converts.
fn is_upload(request: &Request) -> bool {
    if request.method != "POST" {
        return false;
    }
    match request.header("content-type") {
        None => true,
        Some(value) => {
            let media_type = value.split(';').next().unwrap_or("").trim();
            media_type.eq_ignore_ascii_case("text/csv")
                || media_type.eq_ignore_ascii_case("application/csv")
        }
    }
}

struct LabCsv;

impl Router for LabCsv {
    fn on_request(request: Request) -> Action {
        let settings = match SETTINGS.get() {
            Ok(settings) => settings,
            Err(refusal) => return refusal,
        };
        if !is_upload(&request) {
            return Action::forward();
        }
        let Ok(text) = request.body_str() else {
            return Action::reject(400, "The CSV upload is not UTF-8 text.");
        };
        let rows = match lab::parse_rows(text) {
            Ok(rows) => rows,
            Err(error) => return Action::reject(400, format!("Invalid lab results CSV: {error}.")),
        };
        let bundle = lab::transaction_bundle(&rows, &settings.code_system);
        log::info(
            "Converted lab results.",
            &[("observations", &rows.len().to_string())],
        );

        let mut headers = request.headers;
        // The body is new: the fields that described the old one go.
        headers.retain(|(name, _)| {
            !matches!(
                name.as_str(),
                "content-length"
                    | "transfer-encoding"
                    | "content-encoding"
                    | "content-md5"
                    | "digest"
            )
        });
        set_field(&mut headers, "content-type", FHIR_JSON);
        set_field(&mut headers, "accept", FHIR_JSON);
        let rewrite = Rewrite::new()
            .method("POST")
            .path(settings.path.as_str())
            .query("")
            .headers(headers)
            .body(bundle);
        let action = match &settings.route {
            Some(route) => Action::to_route(route.as_str()),
            None => Action::forward(),
        };
        action.rewrite(rewrite)
    }
}

impl Transformer for LabCsv {
    fn on_response(request: Request, response: Response) -> Response {
        if !is_upload(&request) || !response.is_success() {
            return response;
        }
        let Some(csv) = lab::response_csv(&response.body) else {
            return response;
        };
        let mut response = response.with_body(csv);
        for framing in [
            "content-length",
            "transfer-encoding",
            "content-encoding",
            "etag",
        ] {
            response.remove_header(framing);
        }
        response.set_header("content-type", "text/csv");
        response
    }
}

mediary_plugin::export_plugin!(LabCsv);
