//! Lab results CSV to a FHIR R4 transaction Bundle, and the transaction-response back to CSV.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::csv;

/// The columns every upload must have, in the order a [`Row`] holds them.
pub const COLUMNS: [&str; 6] = [
    "patient_id",
    "code",
    "display",
    "value",
    "unit",
    "effective",
];

const PATIENT_ID: usize = 0;
const CODE: usize = 1;
const DISPLAY: usize = 2;
const VALUE: usize = 3;
const UNIT: usize = 4;
const EFFECTIVE: usize = 5;

/// Why an upload is not a lab results CSV, naming the line and, where there is one, the column.
#[derive(Debug, PartialEq, Eq)]
pub struct UploadError {
    pub line: usize,
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, column `{column}`: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl From<csv::SyntaxError> for UploadError {
    fn from(error: csv::SyntaxError) -> Self {
        UploadError {
            line: error.line,
            column: None,
            message: error.message.to_owned(),
        }
    }
}

/// One result: the required columns' values, in [`COLUMNS`] order.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub fields: [String; 6],
    pub value: Number,
}

/// The data rows of a lab results CSV: a header row naming (at least) the [`COLUMNS`], in any
/// order, then one row per result with as many fields as the header. `patient_id`, `code` and
/// `value` must not be empty, and `value` must be a number; `display`, `unit` and `effective` may
/// be empty.
pub fn parse_rows(text: &str) -> Result<Vec<Row>, UploadError> {
    let mut records = csv::parse(text)?.into_iter();
    let Some(header) = records.next() else {
        return Err(UploadError {
            line: 1,
            column: None,
            message: "the CSV is empty; it needs a header row and at least one result".to_owned(),
        });
    };
    let mut positions = [0; 6];
    for (position, column) in positions.iter_mut().zip(COLUMNS) {
        *position = header
            .fields
            .iter()
            .position(|name| name.trim().eq_ignore_ascii_case(column))
            .ok_or_else(|| UploadError {
                line: header.line,
                column: Some(column.to_owned()),
                message: "the header row lacks this column".to_owned(),
            })?;
    }
    let width = header.fields.len();
    let mut rows = Vec::new();
    for record in records {
        if record.fields.len() != width {
            return Err(UploadError {
                line: record.line,
                column: None,
                message: format!(
                    "expected {width} fields, as in the header row, found {}",
                    record.fields.len()
                ),
            });
        }
        let fields: [String; 6] =
            std::array::from_fn(|i| record.fields[positions[i]].trim().to_owned());
        let error = |column: usize, message: String| UploadError {
            line: record.line,
            column: Some(COLUMNS[column].to_owned()),
            message,
        };
        for required in [PATIENT_ID, CODE, VALUE] {
            if fields[required].is_empty() {
                return Err(error(required, "is empty".to_owned()));
            }
        }
        let value = number(&fields[VALUE])
            .ok_or_else(|| error(VALUE, format!("`{}` is not a number", fields[VALUE])))?;
        rows.push(Row { fields, value });
    }
    if rows.is_empty() {
        return Err(UploadError {
            line: header.line,
            column: None,
            message: "the CSV has a header row but no results".to_owned(),
        });
    }
    Ok(rows)
}

/// `text` as a JSON number: an integer stays one; anything else must be a finite decimal.
fn number(text: &str) -> Option<Number> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(integer.into());
    }
    // `f64::from_str` also takes "inf", "NaN" and "1e5"; FHIR decimals are plain digits.
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = !(whole.is_empty() && fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        return None;
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

/// A FHIR R4 `transaction` Bundle with one `Observation` (status `final`) per row, each created
/// with `POST Observation`, as JSON.
pub fn transaction_bundle(rows: &[Row], code_system: &str) -> Vec<u8> {
    let bundle = TransactionBundle {
        resource_type: "Bundle",
        kind: "transaction",
        entry: rows
            .iter()
            .map(|row| BundleEntry {
                resource: observation(row, code_system),
                request: EntryRequest {
                    method: "POST",
                    url: "Observation",
                },
            })
            .collect(),
    };
    serde_json::to_vec(&bundle).expect("the Bundle serialises: its types have only string keys")
}

fn observation<'r>(row: &'r Row, code_system: &'r str) -> Observation<'r> {
    let f = &row.fields;
    let unit = non_empty(&f[UNIT]);
    Observation {
        resource_type: "Observation",
        status: "final",
        code: CodeableConcept {
            coding: [Coding {
                system: code_system,
                code: &f[CODE],
                display: non_empty(&f[DISPLAY]),
            }],
        },
        subject: Reference {
            reference: format!("Patient/{}", f[PATIENT_ID]),
        },
        effective_date_time: non_empty(&f[EFFECTIVE]),
        value_quantity: Quantity {
            value: &row.value,
            unit,
            system: unit.map(|_| "http://unitsofmeasure.org"),
            code: unit,
        },
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

// The FHIR JSON written, as types: serialising them is several times faster than building
// `serde_json::Value` trees.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TransactionBundle<'r> {
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    entry: Vec<BundleEntry<'r>>,
}

#[derive(Serialize)]
struct BundleEntry<'r> {
    resource: Observation<'r>,
    request: EntryRequest,
}

#[derive(Serialize)]
struct EntryRequest {
    method: &'static str,
    url: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Observation<'r> {
    resource_type: &'static str,
    status: &'static str,
    code: CodeableConcept<'r>,
    subject: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_date_time: Option<&'r str>,
    value_quantity: Quantity<'r>,
}

#[derive(Serialize)]
struct CodeableConcept<'r> {
    coding: [Coding<'r>; 1],
}

#[derive(Serialize)]
struct Coding<'r> {
    system: &'r str,
    code: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'r str>,
}

#[derive(Serialize)]
struct Reference {
    reference: String,
}

#[derive(Serialize)]
struct Quantity<'r> {
    value: &'r Number,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'r str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    resource_type: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    response: Option<EntryResponse>,
}

#[derive(Deserialize)]
struct EntryResponse {
    #[serde(default)]
    status: String,
    #[serde(default)]
    location: Option<String>,
}

/// A FHIR `transaction-response` Bundle as CSV `row,status,location`, one line per entry in
/// order (rows numbered from 1, as the uploaded results were); `None` if `body` is not one.
pub fn response_csv(body: &[u8]) -> Option<String> {
    let bundle: Bundle = serde_json::from_slice(body).ok()?;
    if bundle.resource_type != "Bundle" || bundle.kind != "transaction-response" {
        return None;
    }
    let mut out = String::new();
    csv::write_record(&mut out, &["row", "status", "location"]);
    for (i, entry) in bundle.entry.iter().enumerate() {
        let (status, location) = entry.response.as_ref().map_or(("", ""), |response| {
            (
                response.status.as_str(),
                response.location.as_deref().unwrap_or(""),
            )
        });
        csv::write_record(&mut out, &[&(i + 1).to_string(), status, location]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const UPLOAD: &str = "\
effective,patient_id,code,display,value,unit,lab
2024-05-01T08:30:00Z,123,2345-7,\"Glucose [Mass/volume] in Serum or Plasma\",95,mg/dL,north
2024-05-01,p-9,718-7,\"Hemoglobin, blood\",13.5,g/dL,
";

    #[test]
    fn rows_in_any_column_order() {
        let rows = parse_rows(UPLOAD).expect("a valid upload");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fields[PATIENT_ID], "123");
        assert_eq!(rows[0].value, Number::from(95));
        assert_eq!(rows[1].fields[DISPLAY], "Hemoglobin, blood");
        assert_eq!(rows[1].value, Number::from_f64(13.5).expect("finite"));
    }

    #[test]
    fn the_bundle() {
        let rows = parse_rows(UPLOAD).expect("a valid upload");
        let bundle: Value =
            serde_json::from_slice(&transaction_bundle(&rows, "http://loinc.org")).expect("JSON");
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "transaction");
        let entry = &bundle["entry"][0];
        assert_eq!(
            entry["request"],
            json!({"method": "POST", "url": "Observation"})
        );
        assert_eq!(
            entry["resource"],
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{
                    "system": "http://loinc.org",
                    "code": "2345-7",
                    "display": "Glucose [Mass/volume] in Serum or Plasma",
                }]},
                "subject": {"reference": "Patient/123"},
                "effectiveDateTime": "2024-05-01T08:30:00Z",
                "valueQuantity": {
                    "value": 95,
                    "unit": "mg/dL",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg/dL",
                },
            })
        );
        assert_eq!(
            bundle["entry"][1]["resource"]["valueQuantity"]["value"],
            13.5
        );
    }

    #[test]
    fn empty_optional_columns_are_left_out() {
        let rows = parse_rows("patient_id,code,display,value,unit,effective\n7,c,,1,,\n")
            .expect("a valid upload");
        let bundle: Value =
            serde_json::from_slice(&transaction_bundle(&rows, "urn:x")).expect("JSON");
        assert_eq!(
            bundle["entry"][0]["resource"],
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "urn:x", "code": "c"}]},
                "subject": {"reference": "Patient/7"},
                "valueQuantity": {"value": 1},
            })
        );
    }

    fn error(text: &str) -> String {
        parse_rows(text).expect_err("an invalid upload").to_string()
    }

    #[test]
    fn errors_name_the_line_and_column() {
        assert_eq!(
            error("patient_id,code,display,value,effective\n1,2,3,4,5\n"),
            "line 1, column `unit`: the header row lacks this column"
        );
        assert_eq!(
            error("patient_id,code,display,value,unit,effective\n1,c,d,4,u,e\n1,c,d,x5,u,e\n"),
            "line 3, column `value`: `x5` is not a number"
        );
        assert_eq!(
            error("patient_id,code,display,value,unit,effective\n1,c,d,4,u\n"),
            "line 2: expected 6 fields, as in the header row, found 5"
        );
        assert_eq!(
            error("patient_id,code,display,value,unit,effective\n,c,d,4,u,e\n"),
            "line 2, column `patient_id`: is empty"
        );
        assert_eq!(
            error("patient_id,code,display,value,unit,effective\n"),
            "line 1: the CSV has a header row but no results"
        );
        assert_eq!(
            error(""),
            "line 1: the CSV is empty; it needs a header row and at least one result"
        );
        assert_eq!(
            error("patient_id,code,display,value,unit,effective\n1,\"c,d,4,u,e\n"),
            "line 2: a quoted field is not closed"
        );
    }

    #[test]
    fn numbers() {
        for good in ["0", "-3", "+4", "1.5", "-0.25", ".5", "5.", "007"] {
            assert!(number(good).is_some(), "{good}");
        }
        for bad in ["", "x", "1e3", "NaN", "inf", "1.2.3", "-", ".", "1,5", " 1"] {
            assert!(number(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn transaction_response_to_csv() {
        let body = json!({
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "201 Created", "location": "Observation/1/_history/1"}},
                {"response": {"status": "400 Bad Request"}},
            ],
        });
        let csv = response_csv(body.to_string().as_bytes()).expect("a transaction-response");
        assert_eq!(
            csv,
            "row,status,location\r\n1,201 Created,Observation/1/_history/1\r\n2,400 Bad Request,\r\n"
        );
        assert_eq!(
            response_csv(br#"{"resourceType": "Bundle", "type": "searchset"}"#),
            None
        );
        assert_eq!(response_csv(br#"{"resourceType": "Patient"}"#), None);
        assert_eq!(response_csv(b"<html>"), None);
    }
}
