//! What can go wrong with a proxied request, who is to blame, and the one place where that becomes an
//! HTTP response.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Who caused a failure. Decides the status class and, later, the transaction's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    /// The client sent something we refuse.
    Client,
    /// The upstream service failed or was too slow.
    Upstream,
    /// The channel's plugin failed (trapped, overran its limits, returned invalid output).
    Plugin,
    /// Mediary itself failed.
    Host,
}

/// A failed request, with enough context to say what happened without exposing internals.
#[derive(Debug)]
pub enum ProxyError {
    /// No enabled channel matches the method and path.
    NoChannel,
    /// The matching channel does not admit this client (unauthenticated on a private channel, not
    /// in `allow`, or outside `whitelist`). `challenge`: the `WWW-Authenticate` value to send, when
    /// basic authentication is enabled.
    Unauthorized {
        channel: String,
        challenge: Option<HeaderValue>,
    },
    /// The client's clientID or address failed to authenticate too often lately: its attempts are
    /// refused unchecked until `retry_after` has passed (see [`crate::proxy::auth`]).
    AuthBackoff {
        channel: String,
        retry_after: Duration,
    },
    /// The request carries both `Content-Length` and `Transfer-Encoding` (a smuggling vector).
    AmbiguousFraming,
    /// The request body is over the channel's limit.
    BodyTooLarge { channel: String, limit: u64 },
    /// The client did not finish sending its body in time.
    BodyTimeout { channel: String },
    /// The client's body could not be read (connection dropped, bad chunk encoding).
    BodyRead { channel: String, cause: String },
    /// The upstream could not be reached: refused, unreachable, DNS or TLS failure, connect timeout.
    UpstreamUnreachable {
        channel: String,
        route: String,
        cause: String,
    },
    /// The upstream accepted the request but failed before answering (reset, malformed response).
    UpstreamFailed {
        channel: String,
        route: String,
        cause: String,
    },
    /// The upstream did not answer within the channel's timeout.
    UpstreamTimeout {
        channel: String,
        route: String,
        after: Duration,
    },
    /// Mediary could not build the upstream request.
    Internal { channel: String, cause: String },
    /// The transaction could not be recorded (the spool cannot be written): Mediary refuses to
    /// exchange data it cannot audit.
    RecordingUnavailable { channel: String, cause: String },
    /// The channel's plugin failed.
    Plugin {
        channel: String,
        plugin: String,
        failure: crate::plugin::Failure,
    },
    /// The channel's plugin refused the request, with its own status and reason.
    PluginRejected {
        channel: String,
        plugin: String,
        status: StatusCode,
        reason: String,
    },
}

impl ProxyError {
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoChannel
            | ProxyError::Unauthorized { .. }
            | ProxyError::AuthBackoff { .. }
            | ProxyError::AmbiguousFraming
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::BodyRead { .. }
            | ProxyError::PluginRejected { .. } => Blame::Client,
            ProxyError::Plugin { failure, .. } => match failure {
                crate::plugin::Failure::Busy | crate::plugin::Failure::Unavailable { .. } => {
                    Blame::Host
                }
                _ => Blame::Plugin,
            },
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamTimeout { .. } => Blame::Upstream,
            ProxyError::Internal { .. } | ProxyError::RecordingUnavailable { .. } => Blame::Host,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoChannel => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::AuthBackoff { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::AmbiguousFraming | ProxyError::BodyRead { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RecordingUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Plugin { failure, .. } => match failure {
                crate::plugin::Failure::Busy | crate::plugin::Failure::Unavailable { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            ProxyError::PluginRejected { status, .. } => *status,
        }
    }

    /// After these the connection cannot be trusted to carry another request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::AmbiguousFraming
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout { .. }
                | ProxyError::BodyRead { .. }
        )
    }

    fn channel(&self) -> Option<&str> {
        match self {
            ProxyError::NoChannel | ProxyError::AmbiguousFraming => None,
            ProxyError::Unauthorized { channel, .. }
            | ProxyError::AuthBackoff { channel, .. }
            | ProxyError::BodyTooLarge { channel, .. }
            | ProxyError::BodyTimeout { channel }
            | ProxyError::BodyRead { channel, .. }
            | ProxyError::UpstreamUnreachable { channel, .. }
            | ProxyError::UpstreamFailed { channel, .. }
            | ProxyError::UpstreamTimeout { channel, .. }
            | ProxyError::Internal { channel, .. }
            | ProxyError::RecordingUnavailable { channel, .. }
            | ProxyError::Plugin { channel, .. }
            | ProxyError::PluginRejected { channel, .. } => Some(channel),
        }
    }

    fn plugin(&self) -> Option<&str> {
        match self {
            ProxyError::Plugin { plugin, .. } | ProxyError::PluginRejected { plugin, .. } => {
                Some(plugin)
            }
            _ => None,
        }
    }

    fn route(&self) -> Option<&str> {
        match self {
            ProxyError::UpstreamUnreachable { route, .. }
            | ProxyError::UpstreamFailed { route, .. }
            | ProxyError::UpstreamTimeout { route, .. } => Some(route),
            _ => None,
        }
    }

    /// The JSON body the client receives: what happened, who is to blame, where. Never a stack trace.
    pub fn body(&self, transaction_id: &str) -> Bytes {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            error: String,
            blame: Blame,
            #[serde(skip_serializing_if = "Option::is_none")]
            channel: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            route: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            plugin: Option<&'a str>,
            transaction_id: &'a str,
        }
        let body = Body {
            error: self.to_string(),
            blame: self.blame(),
            channel: self.channel(),
            route: self.route(),
            plugin: self.plugin(),
            transaction_id,
        };
        serde_json::to_vec(&body).map_or_else(|_| Bytes::new(), Bytes::from)
    }

    /// Status, JSON body and the headers that go with them.
    pub fn into_response(self, transaction_id: &str) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body(transaction_id));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        match &self {
            ProxyError::Unauthorized {
                challenge: Some(challenge),
                ..
            } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            ProxyError::AuthBackoff { retry_after, .. } => {
                // Whole seconds, rounded up, so that a client that waits exactly this long is
                // not refused again.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoChannel => f.write_str("No channel matches this request."),
            ProxyError::Unauthorized { .. } => {
                f.write_str("This channel does not admit the client.")
            }
            ProxyError::AuthBackoff { retry_after, .. } => write!(
                f,
                "Too many failed authentication attempts; try again in {} s.",
                retry_after.as_secs().max(1)
            ),
            ProxyError::AmbiguousFraming => f.write_str(
                "The request has both Content-Length and Transfer-Encoding; refusing an ambiguous body.",
            ),
            ProxyError::BodyTooLarge { limit, .. } => {
                write!(f, "The request body is larger than this channel's limit of {limit} bytes.")
            }
            ProxyError::BodyTimeout { .. } => {
                f.write_str("The request body was not received in time.")
            }
            ProxyError::BodyRead { cause, .. } => {
                write!(f, "The request body could not be read: {cause}.")
            }
            ProxyError::UpstreamUnreachable { cause, .. } => {
                write!(f, "The upstream could not be reached: {cause}.")
            }
            ProxyError::UpstreamFailed { cause, .. } => {
                write!(f, "The upstream failed before answering: {cause}.")
            }
            ProxyError::UpstreamTimeout { after, .. } => write!(
                f,
                "The upstream did not answer within {} ms.",
                after.as_millis()
            ),
            ProxyError::Internal { cause, .. } => {
                write!(f, "Mediary could not process the request: {cause}.")
            }
            ProxyError::RecordingUnavailable { cause, .. } => {
                write!(f, "The transaction cannot be recorded, so it is refused: {cause}.")
            }
            ProxyError::Plugin { failure, .. } => {
                let text = failure.to_string();
                let mut chars = text.chars();
                let first = chars.next().map(|c| c.to_uppercase().collect::<String>());
                write!(f, "{}{}.", first.unwrap_or_default(), chars.as_str().trim_end_matches('.'))
            }
            ProxyError::PluginRejected { reason, .. } => {
                write!(f, "The channel's plugin refused the request: {reason}")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// The innermost cause of an error chain, for a short, human message (`Connection refused (os error
/// 111)` rather than `client error (Connect)`).
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_name_channel_and_route() {
        let e = ProxyError::UpstreamTimeout {
            channel: "c".into(),
            route: "r".into(),
            after: Duration::from_millis(300),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let body: serde_json::Value = serde_json::from_slice(&e.body("t")).expect("json");
        assert_eq!(body["channel"], "c");
        assert_eq!(body["route"], "r");
        assert_eq!(body["blame"], "upstream");
        assert_eq!(body["transactionId"], "t");
    }
}
