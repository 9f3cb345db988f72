//! A key-value store private to the channel, shared by all its plugin instances (with the Redis
//! store, by every Mediary instance too). Durations are rounded down to whole milliseconds.
//!
//! ```ignore
//! use std::time::Duration;
//! let hits = mediary_plugin::kv::increment("hits", 1, Some(Duration::from_secs(60)))?;
//! ```

use std::fmt;
use std::time::Duration;

use crate::__private::mediary::plugin::kv as host;

/// Why a key-value call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The key or value is over the host's limit (the text says which and the limit).
    TooLarge(String),
    /// [`increment`] on a value that is not a decimal integer.
    NotAnInteger,
    /// The store cannot be reached now; the text says why.
    Unavailable(String),
}

impl KvError {
    /// The WIT case name: `too-large`, `not-an-integer` or `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            KvError::TooLarge(_) => "too-large",
            KvError::NotAnInteger => "not-an-integer",
            KvError::Unavailable(_) => "unavailable",
        }
    }

    /// The host's explanation, for the cases that carry one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            KvError::TooLarge(text) | KvError::Unavailable(text) => Some(text),
            KvError::NotAnInteger => None,
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::TooLarge(why) => write!(f, "key-value entry too large: {why}"),
            KvError::NotAnInteger => f.write_str("key-value entry is not a decimal integer"),
            KvError::Unavailable(why) => write!(f, "key-value store unavailable: {why}"),
        }
    }
}

impl std::error::Error for KvError {}

impl From<host::Error> for KvError {
    fn from(error: host::Error) -> Self {
        match error {
            host::Error::TooLarge(why) => KvError::TooLarge(why),
            host::Error::NotAnInteger => KvError::NotAnInteger,
            host::Error::Unavailable(why) => KvError::Unavailable(why),
        }
    }
}

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// The value of `key`, or `None` if there is none (or it expired).
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    Ok(host::get(key)?)
}

/// Sets `key`; with `ttl` it expires that long from now, without it never.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), KvError> {
    Ok(host::set(key, value.as_ref(), ttl_ms(ttl))?)
}

/// Removes `key`; `true` if it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    Ok(host::delete(key)?)
}

/// Adds `delta` to the decimal integer at `key` (a missing key counts as 0) and returns the new
/// value. `ttl` applies only when the key is created, so a counter keeps its window.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    Ok(host::increment(key, delta, ttl_ms(ttl))?)
}

/// Sets `key` to `value` only if its current value is `expected` (`None`: only if there is no
/// such key). Returns whether it did.
pub fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: impl AsRef<[u8]>,
    ttl: Option<Duration>,
) -> Result<bool, KvError> {
    Ok(host::compare_and_set(
        key,
        expected,
        value.as_ref(),
        ttl_ms(ttl),
    )?)
}
