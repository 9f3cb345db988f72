//! HTTP requests from the plugin to hosts on the channel's allow-list (`plugin.allowedHosts`),
//! recorded as orchestrations of the transaction.
//!
//! ```ignore
//! use mediary_plugin::http::{self, OutgoingRequest};
//! let answer = http::send(OutgoingRequest::get("http://mpi:8080/Patient?identifier=1"))?;
//! ```

use std::fmt;
use std::time::Duration;

use crate::__private::mediary::plugin::outbound_http as host;
pub use crate::__private::mediary::plugin::outbound_http::OutgoingRequest;
use crate::message::{Fields, Response};

/// Why an outbound request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The URL's host and port are not on the channel's allow-list (the text names them).
    NotAllowed(String),
    /// The request cannot be sent as given (bad URL, method or header); the text says why.
    InvalidRequest(String),
    /// No answer in time.
    Timeout,
    /// The host could not be reached or broke off the exchange; the text says why.
    ConnectionFailed(String),
    /// The response body was over the host's limit for plugin calls.
    TooLarge,
    /// The plugin has made as many outbound calls as one request may.
    TooManyRequests,
}

impl HttpError {
    /// The WIT case name (`not-allowed`, `invalid-request`, `timeout`, `connection-failed`,
    /// `too-large`, `too-many-requests`).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::NotAllowed(_) => "not-allowed",
            HttpError::InvalidRequest(_) => "invalid-request",
            HttpError::Timeout => "timeout",
            HttpError::ConnectionFailed(_) => "connection-failed",
            HttpError::TooLarge => "too-large",
            HttpError::TooManyRequests => "too-many-requests",
        }
    }

    /// The host's explanation, for the cases that carry one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            HttpError::NotAllowed(text)
            | HttpError::InvalidRequest(text)
            | HttpError::ConnectionFailed(text) => Some(text),
            HttpError::Timeout | HttpError::TooLarge | HttpError::TooManyRequests => None,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::NotAllowed(what) => write!(f, "not on the allow-list: {what}"),
            HttpError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            HttpError::Timeout => f.write_str("no answer in time"),
            HttpError::ConnectionFailed(why) => write!(f, "connection failed: {why}"),
            HttpError::TooLarge => f.write_str("response body too large"),
            HttpError::TooManyRequests => f.write_str("too many outbound requests"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<host::Error> for HttpError {
    fn from(error: host::Error) -> Self {
        match error {
            host::Error::NotAllowed(what) => HttpError::NotAllowed(what),
            host::Error::InvalidRequest(why) => HttpError::InvalidRequest(why),
            host::Error::Timeout => HttpError::Timeout,
            host::Error::ConnectionFailed(why) => HttpError::ConnectionFailed(why),
            host::Error::TooLarge => HttpError::TooLarge,
            host::Error::TooManyRequests => HttpError::TooManyRequests,
        }
    }
}

impl OutgoingRequest {
    /// A request with `method` to the absolute `url`, no header fields, an empty body and the
    /// channel's upstream timeout.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        OutgoingRequest {
            method: method.into(),
            url: url.into(),
            headers: Fields::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", url).with_body(body)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Gives up after `timeout` (at most the channel's upstream timeout), rounded down to whole
    /// milliseconds.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
        self
    }
}

/// Sends `request` and waits for the whole response.
pub fn send(request: OutgoingRequest) -> Result<Response, HttpError> {
    Ok(host::send(&request)?)
}
