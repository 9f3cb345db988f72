//! Between HTTP and the plugin's types: what a plugin is shown, and checks on everything it returns.
//!
//! A plugin's output is untrusted. A response it makes or transforms must be valid HTTP that cannot
//! smuggle anything past the client: a final status, header names and values that are valid (no
//! CR/LF, no NUL), no framing or hop-by-hop headers (Mediary frames the message), within the header
//! count and size limits, and a body within the channel's limit. A rewritten request is held to the
//! same checks, except that framing and hop-by-hop headers are removed rather than refused.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::bindings::types;

/// Most header fields a plugin may return.
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values a plugin may return.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Headers that describe the connection or the message framing, never the content.
const FORBIDDEN: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Header fields as the plugin sees them (values that are not UTF-8 are shown lossily).
pub fn fields_of(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = match value.to_str() {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// Checks header fields returned by a plugin. `strict`: framing and hop-by-hop fields are refused
/// (a response); otherwise they are dropped (a rewritten request, whose framing the host sets).
pub fn checked_headers(fields: &[(String, String)], strict: bool) -> Result<HeaderMap, String> {
    if fields.len() > MAX_HEADERS {
        return Err(format!(
            "{} header fields; the limit is {MAX_HEADERS}",
            fields.len()
        ));
    }
    let size: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return Err(format!(
            "{size} bytes of header fields; the limit is {MAX_HEADER_BYTES}"
        ));
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", name.escape_debug()))?;
        let header_value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
            format!(
                "the value of header `{header_name}` is not a valid header value (control characters such as CR or LF)"
            )
        })?;
        if FORBIDDEN.contains(&header_name.as_str()) {
            if strict {
                return Err(format!(
                    "header `{header_name}` is Mediary's to set (framing or hop-by-hop)"
                ));
            }
            continue;
        }
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Checks a response a plugin made or transformed.
pub fn checked_response(
    response: types::Response,
    max_body: u64,
) -> Result<http::Response<Bytes>, String> {
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| s.as_u16() >= 200 && s.as_u16() <= 599)
        .ok_or_else(|| {
            format!(
                "status {} is not a final HTTP status (200-599)",
                response.status
            )
        })?;
    let headers = checked_headers(&response.headers, true)?;
    if response.body.len() as u64 > max_body {
        return Err(format!(
            "a body of {} bytes; this channel's limit is {max_body}",
            response.body.len()
        ));
    }
    let mut out = http::Response::new(Bytes::from(response.body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Checks a rejection's status (400-599) and reason.
pub fn checked_rejection(rejection: &types::Rejection) -> Result<StatusCode, String> {
    if rejection.reason.len() > 4096 {
        return Err("a rejection reason longer than 4096 bytes".into());
    }
    StatusCode::from_u16(rejection.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| {
            format!(
                "status {} is not a rejection status (400-599)",
                rejection.status
            )
        })
}

/// A request as the plugin's rewrite leaves it.
#[derive(Debug)]
pub struct Rewritten {
    pub method: Option<Method>,
    /// Path and query, when either changed.
    pub path: Option<String>,
    pub query: Option<String>,
    pub headers: Option<HeaderMap>,
    pub body: Option<Bytes>,
}

/// Checks a plugin's rewrite of the request.
pub fn checked_rewrite(rewrite: types::Rewrite, max_body: u64) -> Result<Rewritten, String> {
    let method = rewrite
        .method
        .map(|m| {
            Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("`{}` is not an HTTP method", m.escape_debug()))
        })
        .transpose()?;
    if let Some(path) = &rewrite.path {
        let valid = path.starts_with('/')
            && !path.contains(['?', '#'])
            && http::uri::PathAndQuery::try_from(path.as_str()).is_ok();
        if !valid {
            return Err(format!(
                "`{}` is not a request path (it must start with / and hold no ? or #)",
                path.escape_debug()
            ));
        }
    }
    if let Some(query) = &rewrite.query {
        let valid = !query.contains('#')
            && http::uri::PathAndQuery::try_from(format!("/?{query}").as_str()).is_ok();
        if !valid {
            return Err(format!("`{}` is not a query string", query.escape_debug()));
        }
    }
    let headers = rewrite
        .headers
        .map(|fields| checked_headers(&fields, false))
        .transpose()?;
    if let Some(body) = &rewrite.body
        && body.len() as u64 > max_body
    {
        return Err(format!(
            "a request body of {} bytes; this channel's limit is {max_body}",
            body.len()
        ));
    }
    Ok(Rewritten {
        method,
        path: rewrite.path,
        query: rewrite.query,
        headers,
        body: rewrite.body.map(Bytes::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> types::Response {
        types::Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: b"x".to_vec(),
        }
    }

    #[test]
    fn responses_that_could_smuggle_are_refused() {
        for (status, headers, why) in [
            (
                200,
                vec![("x-a", "ok\r\nx-injected: 1")],
                "not a valid header value",
            ),
            (200, vec![("bad name", "v")], "not a valid header name"),
            (
                200,
                vec![("transfer-encoding", "chunked")],
                "Mediary's to set",
            ),
            (200, vec![("content-length", "5")], "Mediary's to set"),
            (200, vec![("connection", "close")], "Mediary's to set"),
            (700, vec![], "not a final HTTP status"),
            (101, vec![], "not a final HTTP status"),
        ] {
            let error = checked_response(response(status, &headers), 10).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        let ok = checked_response(response(201, &[("x-a", "é")]), 10).expect("valid");
        assert_eq!(ok.status(), 201);
        assert!(
            checked_response(response(200, &[]), 0).is_err(),
            "body over the limit"
        );
    }

    #[test]
    fn rewrites_drop_hop_by_hop_and_check_paths() {
        let rewrite = types::Rewrite {
            method: Some("PUT".into()),
            path: Some("/fhir/Patient".into()),
            query: Some("a=1".into()),
            headers: Some(vec![
                ("connection".into(), "close".into()),
                ("x-a".into(), "1".into()),
            ]),
            body: None,
        };
        let out = checked_rewrite(rewrite, 10).expect("valid");
        let headers = out.headers.expect("headers");
        assert!(!headers.contains_key("connection"));
        assert_eq!(headers["x-a"], "1");
        let bad = types::Rewrite {
            method: None,
            path: Some("no-slash".into()),
            query: None,
            headers: None,
            body: None,
        };
        assert!(checked_rewrite(bad, 10).is_err());
    }
}
