//! The channel's plugin settings (`plugin.config` in the channel definition), read as JSON.
//!
//! Settings never change during an instance's life: parse them once, with [`Settings`].
//!
//! ```ignore
//! #[derive(serde::Deserialize)]
//! struct MySettings { route: String }
//! static SETTINGS: Settings<MySettings> = Settings::new();
//!
//! // in on_request: invalid settings refuse the request with 500, logged, naming the problem.
//! let settings = match SETTINGS.get() { Ok(s) => s, Err(refusal) => return refusal };
//! let limit: Option<u32> = mediary_plugin::config::get("limit")?;
//! ```

use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::message::Action;

use crate::__private::mediary::plugin::config;

/// A setting that is not the JSON its reader expects.
#[derive(Debug)]
pub struct ConfigError {
    /// The top-level key, or `None` for the whole settings object.
    key: Option<String>,
    source: serde_json::Error,
}

impl ConfigError {
    /// The top-level key, or `None` when the whole settings object was read.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "plugin setting `{key}` is invalid: {}", self.source),
            None => write!(f, "plugin settings are invalid: {}", self.source),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// All settings, deserialised from the settings object (`{}` when the channel sets none).
pub fn all<T: DeserializeOwned>() -> Result<T, ConfigError> {
    serde_json::from_str(&config::all()).map_err(|source| ConfigError { key: None, source })
}

/// Top-level setting `key`, deserialised; `Ok(None)` when it is not set.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, ConfigError> {
    config::get(key)
        .map(|text| {
            serde_json::from_str(&text).map_err(|source| ConfigError {
                key: Some(key.to_owned()),
                source,
            })
        })
        .transpose()
}

/// All settings as the host gives them: a JSON object text.
pub fn all_json() -> String {
    config::all()
}

/// Top-level setting `key` as JSON text (`"abc"`, `12`, `{...}`), or `None` when it is not set.
pub fn get_json(key: &str) -> Option<String> {
    config::get(key)
}

/// A plugin's settings, read from `plugin.config` and checked on the instance's first request, then
/// kept: `static SETTINGS: Settings<MySettings> = Settings::new();`.
pub struct Settings<T> {
    parsed: OnceLock<Result<T, String>>,
    check: fn(T) -> Result<T, String>,
}

impl<T: DeserializeOwned> Settings<T> {
    /// Settings that are valid when they deserialise.
    pub const fn new() -> Self {
        Settings {
            parsed: OnceLock::new(),
            check: Ok,
        }
    }

    /// Settings that must also pass `check` (which says what is wrong, naming the setting).
    pub const fn checked(check: fn(T) -> Result<T, String>) -> Self {
        Settings {
            parsed: OnceLock::new(),
            check,
        }
    }

    /// The settings; invalid ones give the action that refuses the request (500, naming the
    /// problem) after logging it.
    pub fn get(&self) -> Result<&T, Action> {
        let parsed = self.parsed.get_or_init(|| {
            all()
                .map_err(|error| error.to_string())
                .and_then(self.check)
        });
        parsed.as_ref().map_err(|error| {
            crate::log::error("Invalid settings.", &[("error", error)]);
            Action::reject(500, error.clone())
        })
    }
}

impl<T> fmt::Debug for Settings<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("parsed", &self.parsed.get().map(Result::is_ok))
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Default for Settings<T> {
    fn default() -> Self {
        Settings::new()
    }
}
