//! Channels: which requests Mediary accepts and where it sends them.
//!
//! The model and its field names are OpenHIM's (`urlPattern`, `methods`, `priority`, `routes`, ...), so
//! channel definitions move over unchanged. A channel is parsed once, at the edge (config file or API),
//! into the types below; matching and routing then trust them.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use regex::Regex;
use serde_json::Value;

use crate::config::fields::{FieldErrors, Fields};
use crate::metrics::ChannelMetrics;
use crate::plugin::{BoundPlugin, OnPluginError, PluginSpec};

/// The longest per-channel upstream timeout OpenHIM accepts (one hour), in milliseconds.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The methods a channel may list (OpenHIM's enum).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Who may use a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// Anyone, authenticated or not.
    Public,
    /// Only authenticated clients that the channel allows (`allow`).
    Private,
}

/// An entry of a channel's `whitelist`: one address or a CIDR range, IPv4 or IPv6. Parsed once when
/// the channel is loaded; an IPv4-mapped IPv6 client address is compared as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let network = crate::proxy::headers::canonical_ip(network);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("`{text}` has a prefix length that is not 0 to {max}")
                })?,
            };
        Ok(IpRange { network, prefix })
    }

    /// Whether `ip` (already canonical: IPv4-mapped shown as IPv4) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// A channel's URL pattern: a regular expression tested against the request path only (no query
/// string), unanchored as in OpenHIM: `^/patient` matches `/patients/1` too; write `^/patient$` to pin it.
#[derive(Clone)]
pub struct UrlPattern(Regex);

impl UrlPattern {
    pub fn parse(source: &str) -> Result<Self, String> {
        Regex::new(source)
            .map(UrlPattern)
            .map_err(|e| format!("not a valid regular expression: {}", regex_error(&e)))
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.0.is_match(path)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UrlPattern({:?})", self.0.as_str())
    }
}

/// OpenHIM's `pathTransform`: `s/from/to/` replaces the first match of the regex `from` in the path,
/// `s/from/to/g` every match. `\/` stands for a slash inside `from` or `to`; `$1` and `$&` in `to`
/// refer to capture groups and the whole match, as in JavaScript.
#[derive(Clone)]
pub struct PathTransform {
    source: String,
    from: Regex,
    to: String,
    global: bool,
}

impl PathTransform {
    pub fn parse(source: &str) -> Result<Self, String> {
        let malformed = || format!("`{source}` is not of the form s/from/to/ or s/from/to/g");
        let body = source.strip_prefix("s/").ok_or_else(malformed)?;
        let parts = split_unescaped_slashes(body);
        let [from, to, flags] = parts.as_slice() else {
            return Err(malformed());
        };
        let global = match flags.as_str() {
            "" => false,
            "g" => true,
            other => return Err(format!("unknown flag `{other}`; only `g` is supported")),
        };
        let from = Regex::new(from)
            .map_err(|e| format!("`{from}` is not a valid regex: {}", regex_error(&e)))?;
        Ok(PathTransform {
            source: source.to_owned(),
            from,
            to: js_replacement_to_regex(to),
            global,
        })
    }

    pub fn apply(&self, path: &str) -> String {
        let out = if self.global {
            self.from.replace_all(path, self.to.as_str())
        } else {
            self.from.replace(path, self.to.as_str())
        };
        out.into_owned()
    }
}

impl fmt::Debug for PathTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathTransform({:?})", self.source)
    }
}

/// A regex error on one line. The regex crate draws the pattern and a caret over several lines; an
/// error list wants one line per problem, so keep its last line, which says what is wrong.
pub fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_owned()
}

/// Splits on `/` not preceded by a backslash, turning `\/` into `/`.
fn split_unescaped_slashes(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push('/');
                }
            }
            '/' => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    parts
}

/// Rewrites a JavaScript replacement string (`$1`, `$&`, `$$`) into the regex crate's syntax, where a
/// bare `$1a` would name a group called `1a`.
fn js_replacement_to_regex(to: &str) -> String {
    let mut out = String::with_capacity(to.len() + 4);
    let mut chars = to.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('$') => {
                chars.next();
                out.push_str("$$");
            }
            Some('&') => {
                chars.next();
                out.push_str("${0}");
            }
            Some(d) if d.is_ascii_digit() => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            _ => out.push_str("$$"),
        }
    }
    out
}

/// How a route turns the incoming path into the upstream path.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Keep the request path.
    Keep,
    /// Replace it with a fixed path (`path`).
    Fixed(String),
    /// Transform it (`pathTransform`).
    Transform(PathTransform),
}

impl PathRewrite {
    pub fn apply(&self, path: &str) -> String {
        let out = match self {
            PathRewrite::Keep => return path.to_owned(),
            PathRewrite::Fixed(p) => p.clone(),
            PathRewrite::Transform(t) => t.apply(path),
        };
        if out.starts_with('/') {
            out
        } else {
            format!("/{out}")
        }
    }
}

/// `host:port` as it goes in a URI or `Host` header, IPv6 literals bracketed.
fn authority(host: &str, port: u16) -> String {
    match host.parse::<Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

/// An upstream a channel sends requests to.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `host:port` as it goes in a URI or `Host` header (IPv6 literals bracketed), computed once.
    pub authority: Arc<str>,
    /// The `Host` header sent upstream.
    pub host_header: HeaderValue,
    pub rewrite: PathRewrite,
    /// The route whose answer goes back to the client. Exactly one enabled route per channel is primary.
    pub primary: bool,
    /// Talk HTTPS to the upstream.
    pub secured: bool,
    /// `Authorization: Basic ...` built from the route's `username`/`password`, sent upstream.
    pub basic_auth: Option<HeaderValue>,
    /// Pass the client's own `Authorization` header upstream (stripped by default).
    pub forward_auth_header: bool,
    pub enabled: bool,
}

impl Route {
    /// A route to an absolute `http://` or `https://` URL: a plugin's target or outbound call. The
    /// route keeps the request's path (the caller puts the URL's path in the request).
    pub fn for_url(name: &str, uri: &http::Uri) -> Result<Route, String> {
        let secured = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "`{uri}` is not an absolute http:// or https:// URL"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{uri}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if secured { 443 } else { 80 });
        let authority = authority(&host, port);
        let host_header = HeaderValue::from_str(&authority)
            .map_err(|_| format!("`{host}` cannot be sent as a Host header"))?;
        Ok(Route {
            name: name.to_owned(),
            host,
            port,
            authority: authority.into(),
            host_header,
            rewrite: PathRewrite::Keep,
            primary: false,
            secured,
            basic_auth: None,
            forward_auth_header: false,
            enabled: true,
        })
    }

    fn parse(path: String, value: &Value, errors: &mut FieldErrors) -> Option<Route> {
        let before = errors.0.len();
        let mut f = Fields::new(path.clone(), value, errors);
        let name = f.parsed("name", non_empty);
        if name.is_none() && f.raw("name").is_none() {
            f.error("name", "is required");
        }
        let host = f.parsed("host", |h: String| {
            let h = h.trim().to_owned();
            if h.is_empty() {
                return Err("must not be empty".into());
            }
            if h.contains(['/', ' ', '?', '#', '@']) {
                return Err(format!(
                    "`{h}` is not a host name or IP address (no scheme, path or port here)"
                ));
            }
            Ok(h)
        });
        if host.is_none() && f.raw("host").is_none() {
            f.error("host", "is required");
        }
        let port = f.required::<u64>("port").and_then(|p| {
            if (1..=65535).contains(&p) {
                Some(p as u16)
            } else {
                f.error("port", format!("{p} is not a port number (1-65535)"));
                None
            }
        });
        let fixed = f.parsed("path", |p: String| {
            if p.starts_with('/') {
                Ok(p)
            } else {
                Err(format!("`{p}` must start with /"))
            }
        });
        let transform = f.parsed("pathTransform", |t: String| PathTransform::parse(&t));
        if f.raw("path").is_some() && f.raw("pathTransform").is_some() {
            f.error(
                "pathTransform",
                "a route may have `path` or `pathTransform`, not both",
            );
        }
        let primary = f.optional("primary").unwrap_or(false);
        let secured = f.optional("secured").unwrap_or(false);
        let username: Option<String> = f.optional("username");
        let password: Option<String> = f.optional("password");
        let basic_auth = match (&username, &password) {
            (Some(u), p) => {
                let token = base64_encode(format!("{u}:{}", p.as_deref().unwrap_or("")).as_bytes());
                HeaderValue::from_str(&format!("Basic {token}")).ok()
            }
            (None, Some(_)) => {
                f.error("password", "a password needs a `username`");
                None
            }
            (None, None) => None,
        };
        let forward_auth_header = f.optional("forwardAuthHeader").unwrap_or(false);
        let enabled = f.parsed("status", parse_status).unwrap_or(true);
        if let Some(t) = f.optional::<String>("type").filter(|t| t != "http") {
            f.error(
                "type",
                format!("`{t}` routes are not supported; use \"http\""),
            );
        }
        f.finish();
        if errors.0.len() > before {
            return None;
        }
        let (name, host, port) = (name?, host?, port?);
        let authority = authority(&host, port);
        let Ok(host_header) = HeaderValue::from_str(&authority) else {
            errors.push(
                format!("{path}.host"),
                format!("`{host}` cannot be sent as a Host header"),
            );
            return None;
        };
        let authority: Arc<str> = authority.into();
        let rewrite = match (fixed, transform) {
            (Some(p), _) => PathRewrite::Fixed(p),
            (None, Some(t)) => PathRewrite::Transform(t),
            (None, None) => PathRewrite::Keep,
        };
        Some(Route {
            name,
            host,
            port,
            authority,
            host_header,
            rewrite,
            primary,
            secured,
            basic_auth,
            forward_auth_header,
            enabled,
        })
    }
}

/// A channel: which requests it matches, who may use it, and its routes.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The channel's id (OpenHIM's `_id`): assigned by the store when the channel is first saved;
    /// empty for a channel read from the config file until it is.
    pub id: Arc<str>,
    pub name: String,
    pub description: Option<String>,
    pub url_pattern: UrlPattern,
    /// The methods the channel accepts. An empty list matches nothing, as in OpenHIM.
    pub methods: Vec<Method>,
    /// Lower numbers win; channels without a priority go after all that have one.
    pub priority: Option<u32>,
    pub enabled: bool,
    /// Upstream response timeout for this channel (OpenHIM's `timeout`, in ms); `None` = the global one.
    pub timeout: Option<Duration>,
    /// Largest request body accepted on this channel; `None` = the global limit.
    pub max_body_size: Option<u64>,
    pub auth_type: AuthType,
    /// Roles or clientIDs allowed on a private channel (`allow`).
    pub allow: Vec<String>,
    /// Addresses the channel accepts requests from (`whitelist`); empty = any.
    pub whitelist: Vec<IpRange>,
    pub routes: Vec<Route>,
    /// Store request bodies in transactions (OpenHIM's `requestBody`). Default true.
    pub request_body: bool,
    /// Store response bodies in transactions (OpenHIM's `responseBody`). Default true.
    pub response_body: bool,
    /// Stored bodies older than this many days are removed by the retention job (`maxBodyAgeDays`).
    pub max_body_age_days: Option<u32>,
    /// Most bytes of bodies stored per transaction (`maxStoredBodySize`); `None` = the global
    /// `recording.max_bodies_size`.
    pub max_stored_body_size: Option<u64>,
    /// This channel's counters, shared with every earlier and later version of it (set when the
    /// channel table is built; see [`crate::metrics::Metrics::channel`]).
    pub metrics: Arc<ChannelMetrics>,
    /// The channel's plugin as configured (`plugin`).
    pub plugin: Option<PluginSpec>,
    /// What happens when the plugin fails (`onPluginError`). Default `fail`.
    pub on_plugin_error: OnPluginError,
    /// The plugin, loaded: set when the channel table is built. `Err` says why it could not be
    /// (requests then fail, or bypass it, as `onPluginError` says).
    pub bound_plugin: Option<Result<Arc<BoundPlugin>, String>>,
    /// Index into `routes` of the one enabled primary route.
    primary: usize,
}

impl Channel {
    /// Parses one channel at `path` (e.g. `channels[2]`), adding every problem to `errors`.
    pub fn parse(path: String, value: &Value, errors: &mut FieldErrors) -> Option<Channel> {
        let before = errors.0.len();
        let mut f = Fields::new(path, value, errors);
        let id = f.parsed("_id", non_empty).unwrap_or_default();
        let name = f.parsed("name", non_empty);
        if name.is_none() && f.raw("name").is_none() {
            f.error("name", "is required");
        }
        let description = f.optional("description");
        let url_pattern = f.parsed("urlPattern", |p: String| UrlPattern::parse(&p));
        if url_pattern.is_none() && f.raw("urlPattern").is_none() {
            f.error("urlPattern", "is required");
        }
        let methods = f
            .parsed("methods", |ms: Vec<String>| {
                let mut out: Vec<Method> = Vec::with_capacity(ms.len());
                for m in &ms {
                    let upper = m.to_ascii_uppercase();
                    if !METHODS.contains(&upper.as_str()) {
                        return Err(format!("`{m}` is not one of {}", METHODS.join(", ")));
                    }
                    let method = Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string())?;
                    if out.contains(&method) {
                        return Err(format!("`{upper}` is listed more than once"));
                    }
                    out.push(method);
                }
                Ok(out)
            })
            .unwrap_or_default();
        let priority = f.parsed("priority", |p: u64| {
            u32::try_from(p)
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| format!("{p} is not a priority (1 or more)"))
        });
        let enabled = f.parsed("status", parse_status).unwrap_or(true);
        let timeout = f.parsed("timeout", |ms: u64| {
            if (1..=MAX_TIMEOUT_MS).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(format!(
                    "{ms} is out of range; a timeout is 1 to {MAX_TIMEOUT_MS} ms"
                ))
            }
        });
        let max_body_size = f.parsed("maxBodySize", |b: u64| {
            if b >= 1 {
                Ok(b)
            } else {
                Err("must be at least 1 byte".to_owned())
            }
        });
        let auth_type = f
            .parsed("authType", |a: String| match a.as_str() {
                "public" => Ok(AuthType::Public),
                "private" => Ok(AuthType::Private),
                other => Err(format!("`{other}` is not \"public\" or \"private\"")),
            })
            .unwrap_or(AuthType::Private);
        let allow = f
            .parsed("allow", |items: Vec<String>| {
                if items.iter().any(|a| a.trim().is_empty()) {
                    return Err("an entry is empty; list roles or clientIDs".to_owned());
                }
                Ok(items)
            })
            .unwrap_or_default();
        let whitelist = f
            .parsed("whitelist", |items: Vec<String>| {
                items.iter().map(|i| IpRange::parse(i)).collect()
            })
            .unwrap_or_default();
        let request_body = f.optional::<bool>("requestBody").unwrap_or(true);
        let response_body = f.optional::<bool>("responseBody").unwrap_or(true);
        let max_body_age_days = f.parsed("maxBodyAgeDays", |d: u64| {
            u32::try_from(d)
                .ok()
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| format!("{d} is out of range; it is 1 to 36500 days"))
        });
        if max_body_age_days.is_some() && !request_body && !response_body {
            f.error(
                "maxBodyAgeDays",
                "needs requestBody or responseBody: this channel stores no bodies to remove",
            );
        }
        let max_stored_body_size = f
            .raw("maxStoredBodySize")
            .is_some()
            .then(|| f.size("maxStoredBodySize", 0))
            .filter(|s| *s > 0);
        if let Some(t) = f.optional::<String>("type").filter(|t| t != "http") {
            f.error(
                "type",
                format!("`{t}` channels are not supported; use \"http\""),
            );
        }
        let plugin_path = f.path_of("plugin");
        let plugin = f
            .raw("plugin")
            .and_then(|v| PluginSpec::parse(plugin_path, v, f.errors()));
        let on_plugin_error = f
            .parsed("onPluginError", crate::plugin::spec::parse_on_plugin_error)
            .unwrap_or_default();
        let routes_path = f.path_of("routes");
        let routes = match f.raw("routes") {
            None => {
                f.error("routes", "is required: a channel needs a primary route");
                Vec::new()
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Route::parse(format!("{routes_path}[{i}]"), r, f.errors()))
                .collect(),
            Some(other) => {
                let found = crate::config::fields::kind(other);
                f.error(
                    "routes",
                    format!("expected an array of routes, found {found}"),
                );
                Vec::new()
            }
        };
        let primaries: Vec<usize> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.primary && r.enabled)
            .map(|(i, _)| i)
            .collect();
        // Only judge the primaries when every route parsed; otherwise the count would mislead.
        let routes_ok = errors_since(f.errors(), before) == 0;
        if routes_ok && !routes.is_empty() {
            match primaries.len() {
                1 => {}
                0 => f.error(
                    "routes",
                    "the channel must have exactly one enabled primary route; it has none",
                ),
                n => f.error(
                    "routes",
                    format!("the channel must have exactly one enabled primary route; it has {n}"),
                ),
            }
        } else if routes_ok {
            f.error(
                "routes",
                "the channel must have exactly one enabled primary route; it has no routes",
            );
        }
        f.finish();
        if errors.0.len() > before {
            return None;
        }
        Some(Channel {
            id: Arc::from(id.as_str()),
            name: name?,
            description,
            url_pattern: url_pattern?,
            methods,
            priority,
            enabled,
            timeout,
            max_body_size,
            auth_type,
            allow,
            whitelist,
            request_body,
            response_body,
            max_body_age_days,
            max_stored_body_size,
            metrics: Arc::default(),
            plugin,
            on_plugin_error,
            bound_plugin: None,
            primary: primaries[0],
            routes,
        })
    }

    /// The route whose response goes back to the client.
    pub fn primary(&self) -> &Route {
        &self.routes[self.primary]
    }

    /// The enabled routes other than the primary: called too, their answers are not sent to the client.
    pub fn secondaries(&self) -> impl Iterator<Item = &Route> {
        let primary = self.primary;
        self.routes
            .iter()
            .enumerate()
            .filter(move |(i, r)| *i != primary && r.enabled)
            .map(|(_, r)| r)
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.enabled && self.methods.contains(method) && self.url_pattern.is_match(path)
    }
}

fn errors_since(errors: &FieldErrors, before: usize) -> usize {
    errors.0.len() - before
}

fn non_empty(s: String) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

fn parse_status(s: String) -> Result<bool, String> {
    match s.as_str() {
        "enabled" => Ok(true),
        "disabled" => Ok(false),
        other => Err(format!("`{other}` is not \"enabled\" or \"disabled\"")),
    }
}

fn base64_encode(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// The channels in match order: by priority, those without one last, ties in definition order.
#[derive(Debug, Default)]
pub struct ChannelTable {
    channels: Vec<Arc<Channel>>,
}

impl ChannelTable {
    pub fn new(channels: impl IntoIterator<Item = Channel>) -> Self {
        let mut channels: Vec<Arc<Channel>> = channels.into_iter().map(Arc::new).collect();
        // A stable sort keeps definition order among equal priorities.
        channels.sort_by_key(|c| (c.priority.is_none(), c.priority.unwrap_or(0)));
        ChannelTable { channels }
    }

    /// The first enabled channel, in priority order, whose pattern and method match. Lower-priority
    /// channels are never tried once one matches, whatever it then decides (no fallthrough).
    pub fn find(&self, method: &Method, path: &str) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| c.matches(method, path))
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Every channel, in match order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Channel>> {
        self.channels.iter()
    }

    /// The channel with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| &*c.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channel(v: Value) -> Result<Channel, Vec<String>> {
        let mut errors = FieldErrors::default();
        Channel::parse("channels[0]".into(), &v, &mut errors)
            .ok_or_else(|| errors.0.iter().map(|e| e.to_string()).collect())
    }

    fn route(extra: Value) -> Value {
        let mut r = json!({"name": "r", "host": "127.0.0.1", "port": 9000, "primary": true});
        if let (Some(m), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        r
    }

    #[test]
    fn path_transform_replaces_first_or_all() {
        let t = PathTransform::parse("s/a/b/").expect("valid");
        assert_eq!(t.apply("/a/a"), "/b/a");
        let t = PathTransform::parse("s/a/b/g").expect("valid");
        assert_eq!(t.apply("/a/a"), "/b/b");
        let t = PathTransform::parse(r"s/\/fhir\/(\w+)/\/api\/$1x/").expect("valid");
        assert_eq!(t.apply("/fhir/Patient"), "/api/Patientx");
        assert!(PathTransform::parse("s/a/b").is_err());
        assert!(PathTransform::parse("x/a/b/").is_err());
        let unclosed = PathTransform::parse("s/(/b/").expect_err("invalid");
        assert!(!unclosed.contains('\n'), "{unclosed}");
        let pattern = UrlPattern::parse("^/p/([").expect_err("invalid");
        assert!(
            !pattern.contains('\n') && pattern.contains("unclosed"),
            "{pattern}"
        );
        assert!(PathTransform::parse("s/a/b/i").is_err());
    }

    #[test]
    fn a_channel_needs_exactly_one_enabled_primary() {
        let two = json!({"name": "c", "urlPattern": "^/", "methods": ["GET"],
            "routes": [route(json!({})), route(json!({"name": "r2"}))]});
        assert!(channel(two).unwrap_err()[0].contains("it has 2"));
        let disabled_second = json!({"name": "c", "urlPattern": "^/", "methods": ["GET"],
            "routes": [route(json!({})), route(json!({"name": "r2", "status": "disabled"}))]});
        assert!(channel(disabled_second).is_ok());
        let none = json!({"name": "c", "urlPattern": "^/", "methods": ["GET"],
            "routes": [route(json!({"primary": false}))]});
        assert!(channel(none).unwrap_err()[0].contains("it has none"));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let bad = json!({"name": "", "urlPattern": "(", "methods": ["GET", "GET"], "timeout": 0,
            "colour": "red", "routes": [route(json!({"port": 70000, "path": "x", "pathTransform": "s/a/b/"}))]});
        let errors = channel(bad).unwrap_err();
        for field in [
            "channels[0].name",
            "channels[0].urlPattern",
            "channels[0].methods",
            "channels[0].timeout",
            "channels[0].colour",
            "channels[0].routes[0].port",
            "channels[0].routes[0].path",
            "channels[0].routes[0].pathTransform",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
                "{field} missing from {errors:#?}"
            );
        }
    }

    #[test]
    fn whitelist_entries_are_addresses_and_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(r.contains(ip("10.1.200.3")) && !r.contains(ip("10.2.0.1")));
        assert!(!r.contains(ip("::1")));
        let one = IpRange::parse("192.168.1.7").unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let v6 = IpRange::parse("2001:db8::/33").unwrap();
        assert!(v6.contains(ip("2001:db8:7fff::1")) && !v6.contains(ip("2001:db8:8000::1")));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            IpRange::parse("::ffff:10.0.0.1")
                .unwrap()
                .contains(ip("10.0.0.1"))
        );
        assert!(
            IpRange::parse("10.0.0.0/20")
                .unwrap()
                .contains(ip("10.0.15.255"))
        );
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(IpRange::parse(bad).is_err(), "{bad}");
        }
        let bad = json!({"name": "c", "urlPattern": "^/", "methods": ["GET"],
            "whitelist": ["10.0.0.0/8", "bogus"], "allow": [""], "routes": [route(json!({}))]});
        let errors = channel(bad).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("channels[0].whitelist:") && e.contains("bogus")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("channels[0].allow:")),
            "{errors:?}"
        );
    }

    #[test]
    fn matching_follows_priority_then_definition_order() {
        let make = |name: &str, pattern: &str, priority: Option<u32>| {
            let mut v = json!({"name": name, "urlPattern": pattern, "methods": ["GET"], "routes": [route(json!({}))]});
            if let Some(p) = priority {
                v["priority"] = json!(p);
            }
            channel(v).expect("valid")
        };
        let table = ChannelTable::new([
            make("none", "^/a", None),
            make("low", "^/a", Some(5)),
            make("high", "^/a", Some(1)),
            make("other", "^/b", None),
        ]);
        assert_eq!(
            table.find(&Method::GET, "/a/x").map(|c| c.name.as_str()),
            Some("high")
        );
        assert_eq!(
            table.find(&Method::GET, "/b").map(|c| c.name.as_str()),
            Some("other")
        );
        assert!(table.find(&Method::POST, "/a").is_none());
        assert!(table.find(&Method::GET, "/c").is_none());
    }
}
