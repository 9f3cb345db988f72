//! Reading one JSON object field by field, collecting every problem instead of stopping at the first.
//!
//! Both the config file (TOML, converted to JSON values) and, later, the management API (JSON) describe
//! channels; they share this reader so that a channel is validated the same way wherever it comes from.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One problem with one field: where it is and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `channels[0].routes[1].port`.
    pub path: String,
    /// A short sentence saying what is wrong.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Every problem found in one document.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Joins a parent path and a key: `""` + `server` = `server`, `server` + `bind` = `server.bind`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A reader over one object. Each accessor marks its key as known; [`Fields::finish`] reports the rest
/// as unknown fields, so a typo never passes silently.
#[derive(Debug)]
pub struct Fields<'v, 'e> {
    path: String,
    map: Option<&'v Map<String, Value>>,
    known: Vec<&'static str>,
    errors: &'e mut FieldErrors,
}

impl<'v, 'e> Fields<'v, 'e> {
    /// Starts reading `value` at `path`. A value that is not an object is reported once, and every
    /// accessor then answers `None`.
    pub fn new(path: impl Into<String>, value: &'v Value, errors: &'e mut FieldErrors) -> Self {
        let path = path.into();
        let map = match value {
            Value::Object(map) => Some(map),
            other => {
                let shown = if path.is_empty() { "document" } else { &path };
                errors.push(
                    shown,
                    format!("expected a table/object, found {}", kind(other)),
                );
                None
            }
        };
        Fields {
            path,
            map,
            known: Vec::new(),
            errors,
        }
    }

    /// The path of a key of this object.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Records a problem with `key`.
    pub fn error(&mut self, key: &str, reason: impl Into<String>) {
        let path = self.path_of(key);
        self.errors.push(path, reason);
    }

    /// Gives access to the error list, for nested readers.
    pub fn errors(&mut self) -> &mut FieldErrors {
        self.errors
    }

    /// The raw value of `key`, if present (and not JSON `null`).
    pub fn raw(&mut self, key: &'static str) -> Option<&'v Value> {
        self.known.push(key);
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// An optional field of any deserializable type.
    pub fn optional<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let value = self.raw(key)?;
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(key, e.to_string());
                None
            }
        }
    }

    /// A required field: its absence is an error.
    pub fn required<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        if self.map.is_some() && self.raw(key).is_none() {
            self.error(key, "is required");
            return None;
        }
        self.optional(key)
    }

    /// An optional field parsed from its deserialized form by `parse`, whose error becomes the reason.
    pub fn parsed<T: DeserializeOwned, U>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<U> {
        let raw = self.optional::<T>(key)?;
        match parse(raw) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(key, reason);
                None
            }
        }
    }

    /// A duration written the human way (`"5s"`, `"250ms"`, `"1m 30s"`).
    pub fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        self.parsed(key, |s: String| {
            let d = humantime::parse_duration(&s)
                .map_err(|e| format!("`{s}` is not a duration like \"5s\" or \"250ms\": {e}"))?;
            if d.is_zero() {
                return Err("must be greater than zero".into());
            }
            Ok(d)
        })
        .unwrap_or(default)
    }

    /// A size in bytes: a number, or a string like `"64KiB"` or `"16 MiB"`.
    pub fn size(&mut self, key: &'static str, default: u64) -> u64 {
        self.parsed(key, |v: Value| {
            let bytes = match &v {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| format!("{n} is not a whole number of bytes"))?,
                Value::String(s) => s
                    .parse::<bytesize::ByteSize>()
                    .map_err(|e| format!("`{s}` is not a size like \"64KiB\": {e}"))?
                    .as_u64(),
                other => return Err(format!("expected a size, found {}", kind(other))),
            };
            if bytes == 0 {
                return Err("must be greater than zero".into());
            }
            Ok(bytes)
        })
        .unwrap_or(default)
    }

    /// Finishes the table with the outcome of a check that spans several fields (reading the files
    /// they name): its error, if any, is reported on the field it names, and the value comes back.
    pub fn finish_with<T>(mut self, checked: Result<T, (&str, String)>) -> Option<T> {
        let value = match checked {
            Ok(value) => Some(value),
            Err((key, reason)) => {
                self.error(key, reason);
                None
            }
        };
        self.finish();
        value
    }

    /// Reports every key that no accessor asked for.
    pub fn finish(self) {
        let Some(map) = self.map else { return };
        for key in map.keys() {
            if !self.known.contains(&key.as_str()) {
                let path = join(&self.path, key);
                let expected = self.known.join(", ");
                self.errors
                    .push(path, format!("unknown field; expected one of: {expected}"));
            }
        }
    }
}

/// The JSON kind of a value, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table/object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_error_and_unknown_fields() {
        let doc = json!({"port": "x", "extra": 1, "timeout": "soon"});
        let mut errors = FieldErrors::default();
        let mut f = Fields::new("server", &doc, &mut errors);
        assert_eq!(f.optional::<u16>("port"), None);
        assert_eq!(f.required::<String>("name"), None);
        f.duration("timeout", Duration::from_secs(1));
        f.finish();
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.port",
                "server.name",
                "server.timeout",
                "server.extra"
            ]
        );
    }

    #[test]
    fn sizes_accept_numbers_and_units() {
        let doc = json!({"a": 10, "b": "64KiB", "c": "lots"});
        let mut errors = FieldErrors::default();
        let mut f = Fields::new("", &doc, &mut errors);
        assert_eq!(f.size("a", 1), 10);
        assert_eq!(f.size("b", 1), 65536);
        assert_eq!(f.size("c", 7), 7);
        f.finish();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "c");
    }
}
