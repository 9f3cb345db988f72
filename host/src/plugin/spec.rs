//! A channel's `plugin` field, parsed once at the edge (config file or API) into [`PluginSpec`].
//!
//! ```json
//! "plugin": {
//!   "name": "fhir-router", "version": 3,          // or "file": "plugins/router.wasm"
//!   "config": { "routes": { "Patient": "patients" } },
//!   "isolation": "reuse", "deadlineMs": 100, "memoryLimit": "64MiB",
//!   "allowedHosts": ["terminology.example.org:443"], "maxReuse": 1000, "logLevel": "info"
//! },
//! "onPluginError": "fail"
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::config::fields::{FieldErrors, Fields};

/// The longest CPU deadline a channel may give its plugin.
const MAX_DEADLINE_MS: u64 = 60_000;

/// Where a channel's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// A plugin uploaded to the store (`POST /plugins/:name`): a version, or the current one.
    Stored { name: String, version: Option<u32> },
    /// A `.wasm` file, watched for changes (for development). Relative paths are relative to the
    /// config file's folder.
    File(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Stored { name, .. } => f.write_str(name),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How plugin instances are shared between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// A fresh instance for every request: nothing a request leaves in the plugin's memory can be
    /// seen by the next one.
    PerRequest,
    /// Each worker keeps warm instances and reuses them (replaced after `maxReuse` requests or after
    /// any trap). Faster; a plugin's global state survives from one request to the next.
    Reuse,
}

impl Isolation {
    pub fn parse(text: &str) -> Result<Isolation, String> {
        match text {
            "per-request" => Ok(Isolation::PerRequest),
            "reuse" => Ok(Isolation::Reuse),
            other => Err(format!("`{other}` is not \"per-request\" or \"reuse\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::PerRequest => "per-request",
            Isolation::Reuse => "reuse",
        }
    }
}

/// What a channel does when its plugin fails (traps, overruns, returns something invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPluginError {
    /// The client gets 502 naming the channel and plugin; the transaction is Failed.
    #[default]
    Fail,
    /// The request is routed as if the channel had no plugin; the failure is recorded.
    Bypass,
}

/// An upstream a plugin may call: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowedHost {
    /// Lower case; IPv6 addresses without brackets.
    pub host: String,
    /// `None`: the scheme's default ports (80 and 443) only.
    pub port: Option<u16>,
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<AllowedHost, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not `host`, `host:port` or `[ipv6]:port`");
        if text.is_empty() || text.contains(['/', ' ', '?', '#', '@', '*']) {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (text, None),
            }
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port number (1-65535)"))?,
            ),
            None => None,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(AllowedHost {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a call to `host:port` is allowed by this entry.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.host.eq_ignore_ascii_case(host)
            && match self.port {
                Some(p) => p == port,
                None => port == 80 || port == 443,
            }
    }
}

/// A channel's plugin, as configured. Limits left `None` take the `[plugins]` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    pub source: PluginSource,
    /// The plugin's settings, a JSON object (`{}` when none), handed to it by the `config` import.
    pub config: Value,
    pub isolation: Option<Isolation>,
    /// CPU time one call may use (`deadlineMs`).
    pub deadline: Option<Duration>,
    /// Most linear memory one instance may have (`memoryLimit`).
    pub memory_limit: Option<u64>,
    /// Upstreams the plugin may forward to by URL or call through `outbound-http`. Empty: none.
    pub allowed_hosts: Vec<AllowedHost>,
    /// In `reuse` isolation, how many requests one instance serves before it is replaced.
    pub max_reuse: Option<u32>,
    /// The least severe plugin log line kept with the transaction (`logLevel`, default `info`).
    pub log_level: LogLevel,
}

/// A plugin log line's severity, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn parse(text: &str) -> Result<LogLevel, String> {
        match text {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            other => Err(format!(
                "`{other}` is not one of trace, debug, info, warn, error"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl PluginSpec {
    /// Parses the `plugin` field at `path`; every problem goes to `errors`.
    pub fn parse(path: String, value: &Value, errors: &mut FieldErrors) -> Option<PluginSpec> {
        let before = errors.0.len();
        let mut f = Fields::new(path, value, errors);
        let name = f.parsed("name", |s: String| plugin_name(&s));
        let version = f.parsed("version", |v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| format!("{v} is not a version number (1 or more)"))
        });
        let file = f.parsed("file", |s: String| {
            if s.trim().is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(PathBuf::from(s))
            }
        });
        let source = match (name, file) {
            (Some(name), None) => Some(PluginSource::Stored { name, version }),
            (None, Some(file)) => {
                if version.is_some() {
                    f.error("version", "a file plugin has no versions; remove `version`");
                }
                Some(PluginSource::File(file))
            }
            (Some(_), Some(_)) => {
                f.error(
                    "file",
                    "a plugin has a `name` (uploaded) or a `file`, not both",
                );
                None
            }
            (None, None) => {
                if f.raw("name").is_none() && f.raw("file").is_none() {
                    f.error(
                        "name",
                        "is required (or `file` for a plugin read from disk)",
                    );
                }
                None
            }
        };
        let config = match f.raw("config") {
            None => Value::Object(Default::default()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => {
                let found = crate::config::fields::kind(other);
                f.error("config", format!("expected an object, found {found}"));
                Value::Null
            }
        };
        let isolation = f.parsed("isolation", |s: String| Isolation::parse(&s));
        let deadline = f.parsed("deadlineMs", |ms: u64| {
            if (1..=MAX_DEADLINE_MS).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(format!("{ms} is out of range (1 to {MAX_DEADLINE_MS} ms)"))
            }
        });
        let memory_limit = f
            .raw("memoryLimit")
            .is_some()
            .then(|| f.size("memoryLimit", 0))
            .filter(|s| *s > 0);
        if memory_limit.is_some_and(|m| m < 1024 * 1024) {
            f.error("memoryLimit", "must be at least 1MiB");
        }
        let allowed_hosts = f
            .parsed("allowedHosts", |hosts: Vec<String>| {
                hosts.iter().map(|h| AllowedHost::parse(h)).collect()
            })
            .unwrap_or_default();
        let max_reuse = f.parsed("maxReuse", |n: u64| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("{n} is out of range (1 or more)"))
        });
        let log_level = f
            .parsed("logLevel", |s: String| LogLevel::parse(&s))
            .unwrap_or_default();
        f.finish();
        if errors.0.len() > before {
            return None;
        }
        Some(PluginSpec {
            source: source?,
            config,
            isolation,
            deadline,
            memory_limit,
            allowed_hosts,
            max_reuse,
            log_level,
        })
    }
}

/// A plugin name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit (it appears in URLs,
/// file names and logs).
pub fn plugin_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "`{name}` is not a plugin name (1 to 64 of a-z, 0-9, -, _ and ., starting with a letter or digit)"
        ))
    }
}

pub fn parse_on_plugin_error(text: String) -> Result<OnPluginError, String> {
    match text.as_str() {
        "fail" => Ok(OnPluginError::Fail),
        "bypass" => Ok(OnPluginError::Bypass),
        other => Err(format!("`{other}` is not \"fail\" or \"bypass\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PluginSpec, Vec<String>> {
        let mut errors = FieldErrors::default();
        PluginSpec::parse("plugin".into(), &v, &mut errors)
            .ok_or_else(|| errors.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_stored_plugin_with_every_setting() {
        let spec = parse(json!({
            "name": "router", "version": 2, "config": {"a": 1}, "isolation": "reuse",
            "deadlineMs": 50, "memoryLimit": "32MiB", "allowedHosts": ["Example.org:8443", "[::1]:80", "x"],
            "maxReuse": 10
        }))
        .expect("valid");
        assert_eq!(
            spec.source,
            PluginSource::Stored {
                name: "router".into(),
                version: Some(2)
            }
        );
        assert_eq!(spec.memory_limit, Some(32 << 20));
        assert!(spec.allowed_hosts[0].allows("example.org", 8443));
        assert!(spec.allowed_hosts[1].allows("[::1]", 80));
        assert!(spec.allowed_hosts[2].allows("x", 443));
        assert!(!spec.allowed_hosts[2].allows("x", 8080));
    }

    #[test]
    fn every_problem_is_reported() {
        let errors = parse(json!({
            "name": "Bad Name", "config": 3, "isolation": "sometimes", "deadlineMs": 0,
            "allowedHosts": ["http://x/"], "colour": 1, "logLevel": "verbose"
        }))
        .unwrap_err();
        for field in [
            "plugin.name",
            "plugin.config",
            "plugin.isolation",
            "plugin.deadlineMs",
            "plugin.allowedHosts",
            "plugin.colour",
            "plugin.logLevel",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field} missing from {errors:?}"
            );
        }
        assert!(parse(json!({})).is_err());
        assert!(parse(json!({"name": "a", "file": "b"})).is_err());
    }
}
