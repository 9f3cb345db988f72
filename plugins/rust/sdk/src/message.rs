//! The values a plugin receives and returns (the WIT `types` interface), with helpers.
//!
//! The types are the generated ones, re-exported, so their fields are public and match the WIT
//! definitions one to one; the helpers here cover the common cases.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::__private::mediary::plugin::types::{
    Action, Client, Fields, Forward, Rejection, Request, Response, Rewrite, Target,
};

/// The first value of header `name` (compared ignoring ASCII case).
fn find_header<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

impl Request {
    /// The first value of header `name`, compared ignoring ASCII case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name`, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The query string's `(name, value)` pairs, percent-decoded (`+` is a space).
    pub fn query_pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
    }

    /// The first value of query parameter `name`, percent-decoded; `Some("")` for `?name` or
    /// `?name=`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The authenticated client's id, if any.
    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|client| client.id.as_str())
    }
}

impl Response {
    /// A response with `status`, no header fields and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with `status` and `value` as its JSON body (`content-type: application/json`).
    ///
    /// # Panics
    ///
    /// If `value` cannot be serialised as JSON (a map whose keys are not strings, or a `Serialize`
    /// implementation that fails): a bug in the plugin, and the host fails the request.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        let body = serde_json::to_vec(value).expect("the response value serialises as JSON");
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body)
    }

    /// Adds a header field (after any others of the same name). The name is stored lower case.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets header `name` to `value`, removing any other fields of that name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Removes every field named `name` (ignoring ASCII case).
    pub fn remove_header(&mut self, name: &str) {
        self.headers
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// The first value of header `name`, compared ignoring ASCII case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Action {
    /// Forwards the request, unchanged, to the channel's routes (primary and secondaries).
    pub fn forward() -> Self {
        Self::forward_to(Target::ChannelRoutes)
    }

    /// Forwards the request, unchanged, to the channel's route named `name` only.
    pub fn to_route(name: impl Into<String>) -> Self {
        Self::forward_to(Target::Route(name.into()))
    }

    /// Forwards the request, unchanged, to `url` (its host and port must be on the channel's
    /// `allowedHosts`; its path and query replace the request's).
    pub fn to_url(url: impl Into<String>) -> Self {
        Self::forward_to(Target::Url(url.into()))
    }

    fn forward_to(target: Target) -> Self {
        Action::Forward(Forward {
            target,
            rewrite: None,
        })
    }

    /// Sends the forwarded request upstream with `rewrite` applied.
    ///
    /// # Panics
    ///
    /// On a `respond` or `reject` action, which have no upstream request to rewrite: a bug in the
    /// plugin, and the host fails the request.
    pub fn rewrite(self, rewrite: Rewrite) -> Self {
        match self {
            Action::Forward(forward) => Action::Forward(Forward {
                rewrite: Some(rewrite),
                ..forward
            }),
            Action::Respond(_) | Action::Reject(_) => {
                panic!("Action::rewrite on an action that does not forward")
            }
        }
    }

    /// Refuses the request: the client gets `status` (400 to 599) and a JSON error with `reason`.
    pub fn reject(status: u16, reason: impl Into<String>) -> Self {
        Action::Reject(Rejection {
            status,
            reason: reason.into(),
        })
    }

    /// Answers the request with `response`, calling no upstream.
    pub fn respond(response: Response) -> Self {
        Action::Respond(response)
    }
}

impl From<Response> for Action {
    fn from(response: Response) -> Self {
        Action::Respond(response)
    }
}

impl Rewrite {
    /// A rewrite that changes nothing; set what should change with the other methods.
    pub fn new() -> Self {
        Rewrite {
            method: None,
            path: None,
            query: None,
            headers: None,
            body: None,
        }
    }

    /// Replaces the method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Replaces the path (without a query string).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Replaces the query string (without a leading `?`).
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Replaces all header fields with `headers`.
    pub fn headers(mut self, headers: Fields) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl Default for Rewrite {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets header `name` to `value` in `fields`, removing any other fields of that name (ignoring
/// ASCII case). The name is stored lower case.
pub fn set_field(fields: &mut Fields, name: &str, value: impl Into<String>) {
    fields.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    fields.push((name.to_ascii_lowercase(), value.into()));
}

/// Decodes `%XX` escapes and `+` (a space, as in HTML forms). Escapes that are not two hex digits
/// are kept as they are; bytes that do not form UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    if !text.contains(['%', '+']) {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    decoded.push(high << 4 | low);
                    i += 2;
                }
                _ => decoded.push(b'%'),
            },
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8(decoded)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("http%3A%2F%2Fx%3A1%2Fy"), "http://x:1/y");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    fn request(query: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            client: None,
            channel: "c".into(),
            transaction_id: "t".into(),
        }
    }

    #[test]
    fn headers_ignore_case() {
        let req = request("", &[("x-patient-id", "1"), ("X-Patient-Id", "2")]);
        assert_eq!(req.header("X-PATIENT-ID"), Some("1"));
        assert_eq!(
            req.header_values("x-patient-id").collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(req.header("accept"), None);
    }

    #[test]
    fn query_params() {
        let req = request("a=1&identifier=urn%3Aoid%7C12&flag&b=x+y&a=2", &[]);
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("identifier").as_deref(), Some("urn:oid|12"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("b").as_deref(), Some("x y"));
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn actions() {
        let action = Action::to_route("r").rewrite(Rewrite::new().path("/x"));
        let Action::Forward(forward) = action else {
            panic!("not a forward")
        };
        assert_eq!(forward.target, Target::Route("r".into()));
        assert_eq!(forward.rewrite.and_then(|r| r.path).as_deref(), Some("/x"));
        let response = Response::json(201, &serde_json::json!({"a": 1})).with_header("X-A", "b");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(response.body, br#"{"a":1}"#);
    }
}
