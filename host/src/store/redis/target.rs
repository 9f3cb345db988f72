//! `store.url`: where the Redis store connects, parsed once when the configuration is read.

use std::fmt;

use percent_encoding::percent_decode_str;

/// The default port of a Sentinel.
const SENTINEL_PORT: u16 = 26379;

/// Where the Redis store connects.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS): one server.
    Direct {
        /// The URL as written (redis-rs parses it again when it connects).
        url: String,
    },
    /// `redis+sentinel://[user:pass@]host:port[,host:port…]/service[/db]` (`rediss+sentinel://`
    /// for TLS): ask the Sentinels which server is the primary of `service`, and ask again
    /// whenever the connection to it breaks or it turns out to be a replica (after a failover).
    /// The credentials and the database are the primary's; the Sentinels are asked without them.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
}

impl RedisTarget {
    /// Parses a `store.url`. The error says what is wrong, never echoing a password.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("must be a URL: redis://host:port/db, rediss://… (TLS) or \
                        redis+sentinel://host:port[,host:port…]/service[/db]"
                .into());
        };
        match scheme {
            "redis" | "rediss" => {
                redis::Client::open(url).map_err(|e| {
                    format!(
                        "is not a valid {scheme}:// URL: {}",
                        redact_error(&e.to_string(), url)
                    )
                })?;
                Ok(RedisTarget::Direct {
                    url: url.to_owned(),
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                parse_sentinel(rest, scheme == "rediss+sentinel")
            }
            other => Err(format!(
                "has the scheme {other:?}; Mediary speaks redis://, rediss:// (TLS), \
                 redis+sentinel:// and rediss+sentinel://"
            )),
        }
    }

    /// Whether the connection to Redis is encrypted.
    pub fn tls(&self) -> bool {
        match self {
            RedisTarget::Direct { url } => url.starts_with("rediss://"),
            RedisTarget::Sentinel { tls, .. } => *tls,
        }
    }
}

fn parse_sentinel(rest: &str, tls: bool) -> Result<RedisTarget, String> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            let decode = |s: &str| -> Result<String, String> {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| {
                        "has credentials that are not UTF-8 once percent-decoded".to_owned()
                    })
            };
            let user = (!user.is_empty()).then(|| decode(user)).transpose()?;
            let pass = pass.filter(|p| !p.is_empty()).map(decode).transpose()?;
            (user, pass)
        }
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        sentinels.push(parse_host_port(host)?);
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts
        .next()
        .ok_or("names no service: write redis+sentinel://host:port/<service>[/db]")?
        .to_owned();
    let db = match parts.next() {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| format!("has the database {db:?}; it must be a number"))?,
    };
    if parts.next().is_some() {
        return Err(
            "has too many path parts: write redis+sentinel://host:port/<service>[/db]".into(),
        );
    }
    Ok(RedisTarget::Sentinel {
        sentinels,
        service,
        db,
        username,
        password,
        tls,
    })
}

/// `host`, `host:port` or `[v6]:port`.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    if text.is_empty() {
        return Err("has an empty Sentinel address".into());
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("has the Sentinel address {text:?} with an unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("has the Sentinel address {text:?} without a host"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("has the Sentinel address {text:?} with a bad port"))?,
    };
    Ok((host.to_owned(), port))
}

/// `url` with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match password_span(url) {
        Some(span) => format!("{}***{}", &url[..span.start], &url[span.end..]),
        None => url.to_owned(),
    }
}

/// Where the password of `url` is (`scheme://user:PASSWORD@host…`), if it has the place for one.
fn password_span(url: &str) -> Option<std::ops::Range<usize>> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    let base = scheme.len() + "://".len();
    Some(base + colon + 1..base + at)
}

fn redact_error(error: &str, url: &str) -> String {
    match password_span(url) {
        Some(span) if !span.is_empty() => error.replace(&url[span], "***"),
        _ => error.to_owned(),
    }
}

impl fmt::Display for RedisTarget {
    /// The target as an operator wrote it, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Direct { url } => f.write_str(&redact(url)),
            RedisTarget::Sentinel {
                sentinels,
                service,
                db,
                username,
                password,
                tls,
            } => {
                let scheme = if *tls {
                    "rediss+sentinel"
                } else {
                    "redis+sentinel"
                };
                write!(f, "{scheme}://")?;
                match (username, password) {
                    (Some(user), Some(_)) => write!(f, "{user}:***@")?,
                    (None, Some(_)) => write!(f, ":***@")?,
                    (Some(user), None) => write!(f, "{user}@")?,
                    (None, None) => {}
                }
                let hosts: Vec<String> = sentinels
                    .iter()
                    .map(|(h, p)| {
                        if h.contains(':') {
                            format!("[{h}]:{p}")
                        } else {
                            format!("{h}:{p}")
                        }
                    })
                    .collect();
                write!(f, "{}/{service}/{db}", hosts.join(","))
            }
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_urls() {
        let t = RedisTarget::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(t.to_string(), "redis://127.0.0.1:6379/2");
        assert!(!t.tls());
        let t = RedisTarget::parse("rediss://app:s3cret@redis.example:6380/0").unwrap();
        assert!(t.tls());
        assert_eq!(t.to_string(), "rediss://app:***@redis.example:6380/0");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn sentinel_urls() {
        let t =
            RedisTarget::parse("redis+sentinel://:p%40ss@10.0.0.1:26379,[::1],s3:26380/mymaster/3")
                .unwrap();
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("::1".into(), 26379),
                    ("s3".into(), 26380)
                ],
                service: "mymaster".into(),
                db: 3,
                username: None,
                password: Some("p@ss".into()),
                tls: false,
            }
        );
        assert_eq!(
            t.to_string(),
            "redis+sentinel://:***@10.0.0.1:26379,[::1]:26379,s3:26380/mymaster/3"
        );
        let t = RedisTarget::parse("rediss+sentinel://127.0.0.1/primary").unwrap();
        assert!(t.tls());
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for (url, want) in [
            ("localhost:6379", "must be a URL"),
            ("http://localhost", "scheme \"http\""),
            ("redis+sentinel://h:1", "names no service"),
            ("redis+sentinel://h:x/m", "bad port"),
            ("redis+sentinel://h/m/x", "database \"x\""),
            ("redis+sentinel://h/m/1/2", "too many path parts"),
            ("redis+sentinel://,h/m", "empty Sentinel address"),
        ] {
            let error = RedisTarget::parse(url).unwrap_err();
            assert!(error.contains(want), "{url}: {error}");
        }
        let error = RedisTarget::parse("redis://u:hunter2@host:notaport/0").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
