//! Header hygiene between client and upstream: hop-by-hop headers stay on their hop, framing headers
//! are recomputed by hyper from the body, and the forwarding headers tell the upstream who asked.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The transaction id, under Mediary's own name.
pub static X_MEDIARY_TRANSACTION_ID: HeaderName =
    HeaderName::from_static("x-mediary-transaction-id");
/// The same id under OpenHIM's name, for upstreams and clients written against OpenHIM.
pub static X_OPENHIM_TRANSACTIONID: HeaderName = HeaderName::from_static("x-openhim-transactionid");
/// The authenticated client's clientID, as OpenHIM sends it upstream.
pub static X_OPENHIM_CLIENTID: HeaderName = HeaderName::from_static("x-openhim-clientid");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection (RFC 9110 §7.6.1) or the message framing, never forwarded.
fn is_hop_by_hop_or_framing(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == header::CONTENT_LENGTH
}

/// Removes hop-by-hop and framing headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Most messages carry one or two of these (usually Content-Length): find them in one pass over the
    // names, then remove only those, without allocating.
    let mut found: [Option<HeaderName>; 10] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if count < found.len() && is_hop_by_hop_or_framing(name) {
            found[count] = Some(name.clone());
            count += 1;
        }
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
}

/// Appends `value` to a comma-separated header, or sets it when absent.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    let joined = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {value}"),
        _ => value.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name.clone(), v);
    }
}

/// Prepares a client's headers for the upstream: no hop-by-hop headers, no client `Host` (the upstream
/// gets its own), no `Expect` (the body is already read), and the forwarding headers. `Authorization`
/// is each route's business (see [`route_auth`]).
pub fn for_upstream(headers: &mut HeaderMap, client_ip: IpAddr) {
    strip_hop_by_hop(headers);
    let host = headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    append_list(headers, &X_FORWARDED_FOR, &client_ip.to_string());
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        append_list(headers, &X_FORWARDED_HOST, host);
    }
}

/// Applies a route's authorization rule: the client's `Authorization` is stripped unless the route
/// forwards it, and the route's own credentials, when it has some, replace it.
pub fn route_auth(headers: &mut HeaderMap, forward_auth: bool, route_auth: Option<&HeaderValue>) {
    if !forward_auth {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(auth) = route_auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
}

/// Sets `X-OpenHIM-ClientID` to the authenticated client's id, or removes it for an anonymous
/// request, so that whatever the client sent under that name never reaches the upstream.
pub fn set_client_id(headers: &mut HeaderMap, client_id: Option<&str>) {
    headers.remove(&X_OPENHIM_CLIENTID);
    if let Some(value) = client_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(X_OPENHIM_CLIENTID.clone(), value);
    }
}

/// The client's address as it should appear in `X-Forwarded-For`: IPv4-mapped IPv6 shown as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_named_headers_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarding_headers_are_set_or_appended() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let mut h = map(&[("host", "mediary:5001"), ("authorization", "Basic x")]);
        for_upstream(&mut h, ip);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "mediary:5001");
        assert!(h.get("host").is_none());
        let mut stripped = h.clone();
        route_auth(&mut stripped, false, None);
        assert!(stripped.get("authorization").is_none());
        route_auth(&mut h, true, None);
        assert_eq!(h["authorization"], "Basic x");
        route_auth(&mut h, true, Some(&HeaderValue::from_static("Basic route")));
        assert_eq!(h["authorization"], "Basic route");

        let mut h = map(&[
            ("host", "m"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-host", "lb"),
        ]);
        for_upstream(&mut h, ip);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "lb, m");
    }

    #[test]
    fn mapped_ipv6_is_shown_as_ipv4() {
        let ip: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(canonical_ip(ip).to_string(), "127.0.0.1");
    }
}
