//! What can go wrong with a management API call, who is to blame, and the one place where that
//! becomes an HTTP response: `{"error": "<sentence>", "blame": …}`, plus `"errors": [{field, reason}]`
//! when a document or a query was invalid.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::config::fields::FieldError;
use crate::proxy::error::Blame;
use crate::store::StoreError;

/// The realm API clients are asked to authenticate for.
const REALM: &str = "Basic realm=\"Mediary\"";

/// A failed API call.
#[derive(Debug)]
pub enum ApiError {
    /// No usable credentials, or credentials that were not accepted. The reason never says whether
    /// the user exists.
    Unauthorized(&'static str),
    /// The user is authenticated but its roles do not allow this; `permission` names what is
    /// missing (none when the user has no role at all).
    Forbidden {
        reason: String,
        permission: Option<crate::api::roles::Permission>,
    },
    /// Nothing is served at this path.
    NoRoute,
    /// Something is served at this path, but not for this method.
    MethodNotAllowed { allow: &'static [Method] },
    /// The request body is over `api.max_payload`.
    TooLarge { limit: u64 },
    /// The request body did not arrive within the body timeout.
    BodyTimeout,
    /// The request body could not be read (connection dropped, bad chunk encoding).
    BodyRead(String),
    /// The body is not JSON; the reason says where (line and column).
    MalformedJson(String),
    /// The request is wrong in a way one sentence says.
    BadRequest(String),
    /// A document or a query is invalid: every problem, each with its field.
    Invalid {
        what: &'static str,
        errors: Vec<FieldError>,
    },
    /// The thing asked for does not exist.
    NotFound(String),
    /// The request contradicts what is stored (a duplicate name, a transaction that cannot rerun).
    Conflict(String),
    /// The store failed; nothing was changed by this call unless the store says otherwise.
    Store(StoreError),
    /// Mediary is not ready to serve (`/health/ready`).
    NotReady(String),
    /// A bug or a broken invariant inside Mediary.
    Internal(String),
}

impl ApiError {
    pub fn blame(&self) -> Blame {
        match self {
            ApiError::Store(_) | ApiError::NotReady(_) | ApiError::Internal(_) => Blame::Host,
            _ => Blame::Client,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NoRoute | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyRead(_)
            | ApiError::MalformedJson(_)
            | ApiError::BadRequest(_)
            | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Status, JSON body and the headers that go with them.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Problem<'a> {
            field: &'a str,
            reason: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            error: String,
            blame: Blame,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            errors: Vec<Problem<'a>>,
            /// The permission a 403 is for.
            #[serde(skip_serializing_if = "Option::is_none")]
            permission: Option<&'static str>,
        }
        let errors = match &self {
            ApiError::Invalid { errors, .. } => errors
                .iter()
                .map(|e| Problem {
                    field: &e.path,
                    reason: &e.reason,
                })
                .collect(),
            _ => Vec::new(),
        };
        let permission = match &self {
            ApiError::Forbidden { permission, .. } => permission.map(|p| p.name()),
            _ => None,
        };
        let body = Body {
            error: self.to_string(),
            blame: self.blame(),
            errors,
            permission,
        };
        let bytes = serde_json::to_vec(&body).map_or_else(|_| Bytes::new(), Bytes::from);
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
            }
            ApiError::MethodNotAllowed { allow } => {
                let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
                if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                    headers.insert(header::ALLOW, value);
                }
            }
            // The rest of an unread body would be taken for the next request.
            ApiError::TooLarge { .. } | ApiError::BodyTimeout | ApiError::BodyRead(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unauthorized(reason) => f.write_str(reason),
            ApiError::Forbidden { reason, .. } => f.write_str(reason),
            ApiError::NoRoute => f.write_str("Nothing is served at this path."),
            ApiError::MethodNotAllowed { allow } => {
                let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
                write!(f, "This path only answers {}.", list.join(", "))
            }
            ApiError::TooLarge { limit } => {
                write!(
                    f,
                    "The request body is larger than the API's limit of {limit} bytes."
                )
            }
            ApiError::BodyTimeout => f.write_str("The request body was not received in time."),
            ApiError::BodyRead(cause) => write!(f, "The request body could not be read: {cause}."),
            ApiError::MalformedJson(cause) => write!(f, "The body is not valid JSON: {cause}."),
            ApiError::BadRequest(sentence)
            | ApiError::NotFound(sentence)
            | ApiError::Conflict(sentence)
            | ApiError::Internal(sentence) => f.write_str(sentence),
            ApiError::Invalid { what, errors } => match errors.len() {
                1 => write!(f, "The {what} is invalid: {}.", errors[0]),
                n => write!(
                    f,
                    "The {what} is invalid: {n} problems, listed in `errors`."
                ),
            },
            ApiError::Store(error) => write!(f, "The request could not be completed: {error}."),
            ApiError::NotReady(reason) => write!(f, "Mediary is not ready: {reason}."),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body(response: Response<Full<Bytes>>) -> serde_json::Value {
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(response.into_body().collect())
            .unwrap_or_else(|never| match never {});
        serde_json::from_slice(&collected.to_bytes()).expect("a JSON body")
    }

    #[test]
    fn validation_errors_list_every_field() {
        let error = ApiError::Invalid {
            what: "channel",
            errors: vec![
                FieldError {
                    path: "urlPattern".into(),
                    reason: "is required".into(),
                },
                FieldError {
                    path: "routes[0].port".into(),
                    reason: "70000 is not a port number (1-65535)".into(),
                },
            ],
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let json = body(response);
        assert_eq!(json["blame"], "client");
        assert_eq!(json["errors"][0]["field"], "urlPattern");
        assert_eq!(json["errors"][1]["field"], "routes[0].port");
        assert!(json["error"].as_str().unwrap().contains("2 problems"));
    }

    #[test]
    fn unauthorized_asks_for_basic_and_405_lists_methods() {
        let response = ApiError::Unauthorized("no").into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"Mediary\""
        );
        let response = ApiError::MethodNotAllowed {
            allow: &[Method::GET, Method::POST],
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        let json = body(ApiError::Store(StoreError::Unavailable("down".into())).into_response());
        assert_eq!(json["blame"], "host");
        assert!(json.get("errors").is_none());
    }
}
