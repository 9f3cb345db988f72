//! The configuration file: TOML in, a checked [`Config`] out, with every problem reported at once.
//!
//! The file is parsed into a JSON value tree first and then read field by field (see [`fields`]), so a
//! wrong type in one field does not hide an unknown key in another. Each field's meaning and default is
//! documented here, on the struct that holds it, and repeated in `config/default.toml`.

pub mod auth;
pub mod fields;

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;

use crate::channel::Channel;
use fields::{FieldError, FieldErrors, Fields};

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub upstream: Upstream,
    pub log: Log,
    pub store: StoreConfig,
    pub cluster: Cluster,
    pub recording: Recording,
    pub retention: Retention,
    pub api: Api,
    pub plugins: Plugins,
    /// `[tls]`: the HTTPS listener's and the API's certificate, and mutual TLS; `None` without a
    /// `cert_file` (see [`crate::tls::TlsSettings`]).
    pub tls: Option<crate::tls::TlsSettings>,
    /// `[auth.jwt]`: how JWTs are verified; `None` without an `algorithm` (see
    /// [`crate::jwt::JwtSettings`]).
    pub jwt: Option<crate::jwt::JwtSettings>,
    /// `[auth]`: client authentication on the proxy (see [`auth::Auth`]).
    pub auth: auth::Auth,
    /// The config file's folder: relative paths in channels (`plugin.file`) are found from here.
    pub base_dir: PathBuf,
    /// The channels loaded at start (upserted into the store by name).
    pub channels: Vec<Channel>,
    /// The same channels as written in the file (JSON), which is what the store keeps.
    pub channel_documents: Vec<Value>,
}

/// `[server]`: where Mediary listens and how many workers serve.
#[derive(Debug, Clone)]
pub struct Server {
    /// Address the proxy (and API) listen on. Default `0.0.0.0`.
    pub bind: IpAddr,
    /// Port of the HTTP proxy. Default 5001, as OpenHIM. 0 picks a free port (for tests).
    pub http_port: u16,
    /// Port of the management API. Default 8080, as OpenHIM.
    pub api_port: u16,
    /// Port of the HTTPS proxy, served when `[tls] cert_file` is set. Default 5000, as OpenHIM. 0
    /// picks a free port (for tests).
    pub https_port: u16,
    /// How many worker threads serve the proxy. Default `auto`: one per core.
    pub workers: Workers,
    /// Address the management API listens on. Default `127.0.0.1`: the API speaks plain HTTP until
    /// TLS is configured, so it is not exposed beyond this machine unless an operator says so.
    pub api_bind: IpAddr,
    /// This instance's name, recorded on every transaction it serves. Default: the host name.
    pub instance: String,
}

/// A worker count: a number, or `auto` for one per available core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(NonZeroUsize),
}

impl Workers {
    /// The number of workers to start.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Auto => num_cpus(),
            Workers::Count(n) => n.get(),
        }
    }
}

/// The cores this process may run on.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        s.parse::<NonZeroUsize>()
            .map(Workers::Count)
            .map_err(|_| format!("`{s}` is not a positive number of workers or \"auto\""))
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// `[timeouts]`: every wait Mediary makes is bounded.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Opening a TCP (and TLS) connection to an upstream. Default 5 s; past it the client gets 502.
    pub upstream_connect: Duration,
    /// Waiting for an upstream's response (head, then each body read). Default 60 s like OpenHIM's
    /// router timeout; a channel's `timeout` (ms) overrides it. Past it the client gets 504.
    pub upstream_response: Duration,
    /// A client must send a whole request head within this time of its first byte. Default 10 s.
    pub client_header_read: Duration,
    /// A client must send its whole request body within this time. Default 60 s; past it, 408.
    pub client_body_read: Duration,
    /// An idle keep-alive connection is closed after this long. Default 60 s.
    pub idle_keep_alive: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish. Default 30 s.
    pub shutdown_drain: Duration,
}

/// `[limits]`: the most a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and headers). Default 64 KiB; over it, 431.
    pub max_request_head: usize,
    /// Most request headers. Default 100; over it, 431.
    pub max_request_headers: usize,
    /// Largest request body. Default 16 MiB; over it, 413. A channel's `maxBodySize` overrides it.
    pub max_request_body: u64,
}

/// `[upstream]`: the connection pools to upstream services (one pool per worker).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Idle keep-alive connections kept per upstream host, per worker. Default 256.
    pub max_idle_per_host: usize,
    /// An idle pooled connection is closed after this long. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// `ca_files`: extra certificate authorities, as PEM files, that `secured` routes trust besides the
    /// system's root certificates (for upstreams with certificates from an internal CA). Relative
    /// paths are relative to the config file's folder. Default none. Read and checked once, here.
    pub ca_roots: rustls::RootCertStore,
    /// `client_cert_file` and `client_key_file` (PEM, both or neither): the certificate `secured`
    /// routes present to upstreams that ask for one (mutual TLS). Default none.
    pub client_cert: Option<crate::tls::CertAndKey>,
}

/// `[log]`: what Mediary logs.
#[derive(Debug, Clone)]
pub struct Log {
    /// Filter in `tracing` syntax, e.g. `info` or `mediary=debug,info`. Default `info`. The `RUST_LOG`
    /// environment variable, when set, wins.
    pub level: String,
}

/// `[store]`: where Mediary keeps its state.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Folder of the embedded store (`mediary.redb` and its record log `records/`) and the
    /// transaction spool (`spool/`). Relative
    /// paths are relative to the config file's folder. Default `data` (`config/default.toml` sets
    /// `../data`, i.e. `data/` beside `config/`). Created if missing.
    pub data_dir: PathBuf,
    /// The shared Redis store, when `store.url` is set (`redis://`, `rediss://`,
    /// `redis+sentinel://`); otherwise the embedded store in `data_dir`. The spool stays in
    /// `data_dir` either way.
    pub redis: Option<crate::store::redis::RedisSettings>,
}

/// `[cluster]`: how instances sharing a Redis store see each other.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// How often this instance writes its heartbeat (name, applied configuration generation) to
    /// the store. Default 1 s.
    pub heartbeat_interval: Duration,
    /// An instance whose last heartbeat is older than this is gone from `GET /cluster`. Default
    /// 5 s; at least twice `heartbeat_interval`.
    pub instance_ttl: Duration,
}

/// `[recording]`: how transactions are recorded.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Record transactions at all. Default true. Off, nothing is spooled or stored (for benchmarks
    /// and for deployments that only route).
    pub enabled: bool,
    /// The spool is flushed to disk (fdatasync) at least this often: the group commit. Default 5 ms.
    pub flush_interval: Duration,
    /// Wait for the spool to be on disk before a response completes. Default false: a record always
    /// reaches the kernel before its response completes (so a killed process loses nothing), but a
    /// power loss can lose the last `flush_interval` of records. True closes that window at the cost
    /// of latency.
    pub fsync_before_respond: bool,
    /// How long spooled records may wait before they are written to the store, so that the stages of
    /// one transaction are usually merged into one write. Default 20 ms.
    pub drain_interval: Duration,
    /// A spool segment file is closed and a new one started past this size. Default 64 MiB.
    pub segment_size: u64,
    /// Most bytes of bodies stored per transaction, all bodies together (OpenHIM's `maxBodiesSizeMB`).
    /// Default 15 MiB. A channel's `maxStoredBodySize` overrides it.
    pub max_bodies_size: u64,
}

/// `[retention]`: how long transaction records are kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Whole records older than this are deleted. Default none: kept until deleted by hand. Bodies
    /// are removed earlier per channel with `maxBodyAgeDays`.
    pub max_age: Option<Duration>,
    /// How often the retention job runs. Default 1 h.
    pub interval: Duration,
}

/// `[api]`: the management API.
#[derive(Debug, Clone)]
pub struct Api {
    /// Email of the root user created on first start. Default `root@openhim.org`, as OpenHIM, so that
    /// existing scripts and mediator libraries work unchanged.
    pub root_email: String,
    /// The root user's first password. `MEDIARY_ROOT_PASSWORD`, when set, wins; with neither, a
    /// random password is generated and printed once in the log. Only used when the root user is
    /// created.
    pub root_password: Option<String>,
    /// Largest request body the API accepts; over it, 413. Default 16 MiB.
    pub max_payload: u64,
    /// How long a console session (`POST /authenticate/local`) lasts: the cookie's `Max-Age` and the
    /// stored session's expiry. Default 2 h, as OpenHIM's.
    pub session_ttl: Duration,
    /// Whether the session cookie is marked `Secure` (sent back by browsers over HTTPS only).
    /// Default true; set it false only when browsers reach the API over plain HTTP, else they would
    /// never return the cookie.
    pub session_cookie_secure: bool,
}

/// `[plugins]`: the WebAssembly plugin host. A channel's `plugin` field may override the per-plugin
/// defaults (`isolation`, `deadlineMs`, `memoryLimit`, `maxReuse`).
#[derive(Debug, Clone)]
pub struct Plugins {
    /// Compiled plugins are cached here (by digest and engine settings), so a restart does not
    /// compile again. Default `plugin-cache` inside `store.data_dir`.
    pub cache_dir: PathBuf,
    /// Compiling one plugin may take at most this long; past it the upload (or load) is refused.
    /// Default 60 s (a JavaScript or Python plugin can take 10 s on a small machine).
    pub compile_timeout: Duration,
    /// How often the deadline clock ticks: CPU deadlines are enforced to within about one tick.
    /// Default 1 ms.
    pub epoch_tick: Duration,
    /// CPU time one plugin call may use (`plugin.deadlineMs`). Default 100 ms.
    pub deadline: Duration,
    /// The same for plugins that carry an interpreter (JavaScript built with componentize-js,
    /// Python built with componentize-py; see [`crate::plugin::Language`]), whose logic costs tens
    /// of times the CPU of a compiled guest's. A channel's `plugin.deadlineMs` still wins. Default
    /// 500 ms.
    pub interpreted_deadline: Duration,
    /// Linear memory one plugin instance may use (`plugin.memoryLimit`). Default 64 MiB.
    pub memory_limit: u64,
    /// The most memory any channel may give its plugin: the size of each slot of the instance pool.
    /// Default 256 MiB.
    pub max_memory: u64,
    /// Plugin instances alive at once in this process, all channels and workers together (the
    /// pooling allocator's size). Past it, requests on plugin channels get 503. Default 1000. Each
    /// slot reserves address space (a 4 GiB memory and its guards), not memory.
    pub max_instances: u32,
    /// `per-request` (a fresh instance for each request) or `reuse` (warm instances kept per
    /// worker). Default `reuse`; see the README for the trade-off.
    pub isolation: crate::plugin::Isolation,
    /// With `reuse`, one instance serves at most this many requests before it is replaced
    /// (`plugin.maxReuse`). Default 10000.
    pub max_reuse: u32,
    /// Largest `.wasm` the API accepts. Default 64 MiB.
    pub max_upload: u64,
    /// Most `outbound-http` calls a plugin may make for one request. Default 16.
    pub outbound_max_calls: u32,
    /// Largest response body an `outbound-http` call may return to the plugin. Default 4 MiB.
    pub outbound_max_response: u64,
    /// How often plugin files (`plugin.file`) are checked for changes. Default 1 s.
    pub watch_interval: Duration,
}

impl Plugins {
    /// The CPU deadline of a plugin call when the channel sets none: interpreters get theirs.
    pub fn default_deadline(&self, language: crate::plugin::Language) -> Duration {
        if language.interpreted() {
            self.interpreted_deadline
        } else {
            self.deadline
        }
    }
}

/// Everything wrong with a configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}: {e}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |reason: String| ConfigError {
            file: path.to_owned(),
            errors: vec![FieldError {
                path: "(file)".into(),
                reason,
            }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_in(&text, base).map_err(|errors| ConfigError {
            file: path.to_owned(),
            errors,
        })
    }

    /// Checks a configuration given as TOML text; relative paths in it are relative to the current
    /// directory.
    pub fn parse(text: &str) -> Result<Config, Vec<FieldError>> {
        Config::parse_in(text, Path::new("."))
    }

    /// Checks a configuration given as TOML text; relative paths in it are relative to `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, Vec<FieldError>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(syntax)".into());
            vec![FieldError {
                path: at,
                reason: format!("not valid TOML: {}", e.message()),
            }]
        })?;
        let value = serde_json::to_value(table).map_err(|e| {
            vec![FieldError {
                path: "(document)".into(),
                reason: e.to_string(),
            }]
        })?;
        Config::from_value(&value, base)
    }

    /// Checks a configuration given as a value tree; relative paths are relative to `base`.
    pub fn from_value(value: &Value, base: &Path) -> Result<Config, Vec<FieldError>> {
        let mut errors = FieldErrors::default();
        let empty = Value::Object(Default::default());
        let mut root = Fields::new("", value, &mut errors);
        let server = root.raw("server").unwrap_or(&empty);
        let timeouts = root.raw("timeouts").unwrap_or(&empty);
        let limits = root.raw("limits").unwrap_or(&empty);
        let upstream = root.raw("upstream").unwrap_or(&empty);
        let log = root.raw("log").unwrap_or(&empty);
        let store = root.raw("store").unwrap_or(&empty);
        let cluster = root.raw("cluster").unwrap_or(&empty);
        let recording = root.raw("recording").unwrap_or(&empty);
        let retention = root.raw("retention").unwrap_or(&empty);
        let api = root.raw("api").unwrap_or(&empty);
        let plugins = root.raw("plugins").unwrap_or(&empty);
        let auth = root.raw("auth").unwrap_or(&empty);
        let channels = root.raw("channels");
        let tls = root.raw("tls");
        let auth_jwt = auth.get("jwt");
        root.finish();

        let server = parse_server(server, &mut errors);
        let timeouts = parse_timeouts(timeouts, &mut errors);
        let limits = parse_limits(limits, &mut errors);
        let upstream = parse_upstream(upstream, base, &mut errors);
        let log = parse_log(log, &mut errors);
        let store = parse_store(store, base, &mut errors);
        let cluster = parse_cluster(cluster, &mut errors);
        let recording = parse_recording(recording, &mut errors);
        let retention = parse_retention(retention, &mut errors);
        let api = parse_api(api, &mut errors);
        let plugins = parse_plugins(plugins, &store.data_dir, base, &mut errors);
        let auth = auth::parse_auth(auth, &mut errors);
        let channel_documents = match channels {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let channels = parse_channels(channels, &mut errors);
        let tls = crate::tls::parse_settings(tls, base, &mut errors);
        let jwt = crate::jwt::parse_settings(auth_jwt, base, &mut errors);
        let auth = auth::Auth {
            jwt: jwt.is_some(),
            ..auth
        };

        if errors.is_empty() {
            Ok(Config {
                server,
                timeouts,
                limits,
                upstream,
                log,
                store,
                cluster,
                recording,
                retention,
                api,
                plugins,
                tls,
                jwt,
                auth,
                base_dir: base.to_owned(),
                channels,
                channel_documents,
            })
        } else {
            Err(errors.0)
        }
    }
}

fn parse_server(value: &Value, errors: &mut FieldErrors) -> Server {
    let mut f = Fields::new("server", value, errors);
    let bind = f
        .parsed("bind", |s: String| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("`{s}` is not an IP address"))
        })
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let http_port = f.optional("http_port").unwrap_or(5001);
    let api_port = f.optional("api_port").unwrap_or(8080);
    let https_port = f.optional("https_port").unwrap_or(5000);
    let workers = f
        .parsed("workers", |v: Value| match v {
            Value::String(s) => s.parse(),
            Value::Number(n) => n.to_string().parse(),
            other => Err(format!(
                "expected a number or \"auto\", found {}",
                fields::kind(&other)
            )),
        })
        .unwrap_or(Workers::Auto);
    let api_bind = f
        .parsed("api_bind", |s: String| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("`{s}` is not an IP address"))
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let instance = f
        .parsed("instance", |s: String| {
            if s.trim().is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(s)
            }
        })
        .unwrap_or_else(host_name);
    f.finish();
    Server {
        bind,
        http_port,
        api_port,
        https_port,
        workers,
        api_bind,
        instance,
    }
}

/// This machine's host name, or `mediary` when it has none.
fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mediary".to_owned())
}

fn parse_store(value: &Value, base: &Path, errors: &mut FieldErrors) -> StoreConfig {
    let mut f = Fields::new("store", value, errors);
    let data_dir = f
        .optional::<PathBuf>("data_dir")
        .unwrap_or_else(|| PathBuf::from("data"));
    let url = f.optional::<String>("url");
    let prefix = f.optional::<String>("prefix");
    let timeout = f.duration("timeout", Duration::from_secs(2));
    let poll_interval = f.duration("poll_interval", Duration::from_millis(500));
    let prefix = prefix.unwrap_or_else(|| "mediary:".to_owned());
    if prefix.is_empty()
        || prefix.len() > 64
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        f.error(
            "prefix",
            "must be 1 to 64 characters without spaces or control characters",
        );
    }
    let redis = match url {
        Some(url) => match crate::store::redis::RedisTarget::parse(&url) {
            Ok(target) => Some(crate::store::redis::RedisSettings {
                target,
                prefix,
                timeout,
                poll_interval,
            }),
            Err(reason) => {
                f.error("url", reason);
                None
            }
        },
        None => None,
    };
    f.finish();
    StoreConfig {
        data_dir: base.join(data_dir),
        redis,
    }
}

fn parse_cluster(value: &Value, errors: &mut FieldErrors) -> Cluster {
    let mut f = Fields::new("cluster", value, errors);
    let c = Cluster {
        heartbeat_interval: f.duration("heartbeat_interval", Duration::from_secs(1)),
        instance_ttl: f.duration("instance_ttl", Duration::from_secs(5)),
    };
    if c.instance_ttl < c.heartbeat_interval * 2 {
        f.error(
            "instance_ttl",
            "must be at least twice heartbeat_interval, or live instances would blink out",
        );
    }
    f.finish();
    c
}

fn parse_recording(value: &Value, errors: &mut FieldErrors) -> Recording {
    let mut f = Fields::new("recording", value, errors);
    let r = Recording {
        enabled: f.optional("enabled").unwrap_or(true),
        flush_interval: f.duration("flush_interval", Duration::from_millis(5)),
        fsync_before_respond: f.optional("fsync_before_respond").unwrap_or(false),
        drain_interval: f.duration("drain_interval", Duration::from_millis(20)),
        segment_size: f.size("segment_size", 64 * 1024 * 1024),
        max_bodies_size: f.size("max_bodies_size", 15 * 1024 * 1024),
    };
    if r.segment_size < 64 * 1024 {
        f.error("segment_size", "must be at least 64KiB");
    }
    f.finish();
    r
}

fn parse_retention(value: &Value, errors: &mut FieldErrors) -> Retention {
    let mut f = Fields::new("retention", value, errors);
    // Absent means "keep forever"; present, it must be a valid duration (zero is refused).
    let max_age = f
        .raw("max_age")
        .is_some()
        .then(|| f.duration("max_age", Duration::ZERO))
        .filter(|a| !a.is_zero());
    let interval = f.duration("interval", Duration::from_secs(3600));
    f.finish();
    Retention { max_age, interval }
}

fn parse_api(value: &Value, errors: &mut FieldErrors) -> Api {
    let mut f = Fields::new("api", value, errors);
    let root_email = f
        .parsed("root_email", |s: String| {
            if s.contains('@') {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(format!("`{s}` is not an email address"))
            }
        })
        .unwrap_or_else(|| "root@openhim.org".to_owned());
    let root_password = f.parsed("root_password", |s: String| {
        if s.len() >= 8 {
            Ok(s)
        } else {
            Err("must be at least 8 characters".to_owned())
        }
    });
    let max_payload = f.size("max_payload", 16 * 1024 * 1024);
    let session_ttl = f.duration("session_ttl", Duration::from_secs(2 * 3600));
    let session_cookie_secure = f.optional("session_cookie_secure").unwrap_or(true);
    f.finish();
    Api {
        root_email,
        root_password,
        max_payload,
        session_ttl,
        session_cookie_secure,
    }
}

fn parse_plugins(value: &Value, data_dir: &Path, base: &Path, errors: &mut FieldErrors) -> Plugins {
    let mut f = Fields::new("plugins", value, errors);
    let cache_dir = f
        .optional::<PathBuf>("cache_dir")
        .map_or_else(|| data_dir.join("plugin-cache"), |p| base.join(p));
    let count = |f: &mut Fields<'_, '_>, key: &'static str, default: u32, max: u32| {
        f.parsed(key, |n: u64| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{n} is out of range (1-{max})"))
        })
        .unwrap_or(default)
    };
    let plugins = Plugins {
        cache_dir,
        compile_timeout: f.duration("compile_timeout", Duration::from_secs(60)),
        epoch_tick: f.duration("epoch_tick", Duration::from_millis(1)),
        deadline: f.duration("deadline", Duration::from_millis(100)),
        interpreted_deadline: f.duration("interpreted_deadline", Duration::from_millis(500)),
        memory_limit: f.size("memory_limit", 64 << 20),
        max_memory: f.size("max_memory", 256 << 20),
        max_instances: count(&mut f, "max_instances", 1000, 100_000),
        isolation: f
            .parsed("isolation", |s: String| crate::plugin::Isolation::parse(&s))
            .unwrap_or(crate::plugin::Isolation::Reuse),
        max_reuse: count(&mut f, "max_reuse", 10_000, u32::MAX),
        max_upload: f.size("max_upload", 64 << 20),
        outbound_max_calls: count(&mut f, "outbound_max_calls", 16, 10_000),
        outbound_max_response: f.size("outbound_max_response", 4 << 20),
        watch_interval: f.duration("watch_interval", Duration::from_secs(1)),
    };
    if plugins.memory_limit > plugins.max_memory {
        f.error("memory_limit", "must not be over max_memory");
    }
    if plugins.max_memory > 4 << 30 {
        f.error(
            "max_memory",
            "must be at most 4GiB (32-bit WebAssembly memories)",
        );
    }
    if plugins.epoch_tick > plugins.deadline.min(plugins.interpreted_deadline) {
        f.error(
            "epoch_tick",
            "must be shorter than deadline and interpreted_deadline",
        );
    }
    f.finish();
    plugins
}

fn parse_timeouts(value: &Value, errors: &mut FieldErrors) -> Timeouts {
    let mut f = Fields::new("timeouts", value, errors);
    let t = Timeouts {
        upstream_connect: f.duration("upstream_connect", Duration::from_secs(5)),
        upstream_response: f.duration("upstream_response", Duration::from_secs(60)),
        client_header_read: f.duration("client_header_read", Duration::from_secs(10)),
        client_body_read: f.duration("client_body_read", Duration::from_secs(60)),
        idle_keep_alive: f.duration("idle_keep_alive", Duration::from_secs(60)),
        shutdown_drain: f.duration("shutdown_drain", Duration::from_secs(30)),
    };
    f.finish();
    t
}

fn parse_limits(value: &Value, errors: &mut FieldErrors) -> Limits {
    let mut f = Fields::new("limits", value, errors);
    let max_request_head = f.size("max_request_head", 64 * 1024);
    if max_request_head < 8192 {
        f.error("max_request_head", "must be at least 8KiB");
    }
    let max_request_headers = f
        .parsed("max_request_headers", |n: usize| {
            if (1..=10_000).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is out of range (1-10000)"))
            }
        })
        .unwrap_or(100);
    let limits = Limits {
        max_request_head: usize::try_from(max_request_head).unwrap_or(usize::MAX),
        max_request_headers,
        max_request_body: f.size("max_request_body", 16 * 1024 * 1024),
    };
    f.finish();
    limits
}

fn parse_upstream(value: &Value, base: &Path, errors: &mut FieldErrors) -> Upstream {
    let mut f = Fields::new("upstream", value, errors);
    let max_idle_per_host = f.optional("max_idle_per_host").unwrap_or(256);
    let pool_idle_timeout = f.duration("pool_idle_timeout", Duration::from_secs(90));
    let ca_files = f.optional::<Vec<PathBuf>>("ca_files").unwrap_or_default();
    let mut ca_roots = rustls::RootCertStore::empty();
    for file in ca_files.into_iter().map(|p| base.join(p)) {
        if let Err(reason) = add_certificates(&mut ca_roots, &file) {
            f.error("ca_files", format!("{}: {reason}", file.display()));
        }
    }
    let client_cert_file = f.optional::<PathBuf>("client_cert_file");
    let client_key_file = f.optional::<PathBuf>("client_key_file");
    let client_cert = match (client_cert_file, client_key_file) {
        (Some(cert), Some(key)) => {
            match crate::tls::CertAndKey::load(&base.join(cert), &base.join(key)) {
                Ok(loaded) => Some(loaded),
                Err((crate::tls::Which::Cert, reason)) => {
                    f.error("client_cert_file", reason);
                    None
                }
                Err((crate::tls::Which::Key, reason)) => {
                    f.error("client_key_file", reason);
                    None
                }
            }
        }
        (None, None) => None,
        (Some(_), None) => {
            f.error("client_key_file", "is required with client_cert_file");
            None
        }
        (None, Some(_)) => {
            f.error("client_cert_file", "is required with client_key_file");
            None
        }
    };
    f.finish();
    Upstream {
        max_idle_per_host,
        pool_idle_timeout,
        ca_roots,
        client_cert,
    }
}

/// Adds every certificate in a PEM file to `roots`; a file without one, or with one that cannot be a
/// trust anchor, is an error.
fn add_certificates(roots: &mut rustls::RootCertStore, file: &Path) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("contains no PEM certificate".into());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(())
}

fn parse_log(value: &Value, errors: &mut FieldErrors) -> Log {
    let mut f = Fields::new("log", value, errors);
    let level = f
        .parsed("level", |s: String| {
            tracing_subscriber::EnvFilter::try_new(&s)
                .map(|_| s.clone())
                .map_err(|e| format!("`{s}` is not a log filter: {e}"))
        })
        .unwrap_or_else(|| "info".into());
    f.finish();
    Log { level }
}

fn parse_channels(value: Option<&Value>, errors: &mut FieldErrors) -> Vec<Channel> {
    let items = match value {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(
                "channels",
                format!(
                    "expected an array of channels ([[channels]]), found {}",
                    fields::kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let channels: Vec<Channel> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Channel::parse(format!("channels[{i}]"), v, errors))
        .collect();
    for (i, c) in channels.iter().enumerate() {
        if channels[..i].iter().any(|o| o.name == c.name) {
            errors.push(
                "channels",
                format!("two channels are named `{}`; names must be unique", c.name),
            );
        }
    }
    channels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = Config::parse("").expect("valid");
        assert_eq!(c.server.http_port, 5001);
        assert_eq!(c.server.api_port, 8080);
        assert_eq!(c.server.workers, Workers::Auto);
        assert_eq!(c.timeouts.upstream_response, Duration::from_secs(60));
        assert_eq!(c.limits.max_request_head, 65536);
        assert_eq!(c.limits.max_request_body, 16 << 20);
    }

    #[test]
    fn every_section_reports_its_errors() {
        let errors = Config::parse(
            r#"
            colour = 1
            [server]
            http_port = 70000
            workers = 0
            [timeouts]
            upstream_connect = "soon"
            [[channels]]
            name = "x"
            "#,
        )
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "colour",
            "server.http_port",
            "server.workers",
            "timeouts.upstream_connect",
            "channels[0].urlPattern",
            "channels[0].routes",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn store_and_cluster_settings() {
        let config = Config::parse(
            r#"
            [store]
            url = "redis+sentinel://:pw@127.0.0.1:26379/mymaster/1"
            prefix = "hie-a:"
            timeout = "750ms"
            [cluster]
            heartbeat_interval = "200ms"
            instance_ttl = "1s"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let redis = config.store.redis.expect("redis settings");
        assert_eq!(redis.prefix, "hie-a:");
        assert_eq!(redis.timeout, Duration::from_millis(750));
        assert_eq!(redis.poll_interval, Duration::from_millis(500));
        assert_eq!(
            redis.target.to_string(),
            "redis+sentinel://:***@127.0.0.1:26379/mymaster/1"
        );
        assert_eq!(config.cluster.instance_ttl, Duration::from_secs(1));
        assert!(
            Config::parse("").unwrap().store.redis.is_none(),
            "embedded by default"
        );

        let errors = Config::parse(
            r#"
            [store]
            url = "http://u:hunter2@h"
            prefix = "has space"
            timeout = "0s"
            [cluster]
            heartbeat_interval = "1s"
            instance_ttl = "1500ms"
            "#,
        )
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "store.timeout",
                "store.prefix",
                "store.url",
                "cluster.instance_ttl"
            ],
            "{errors:?}"
        );
        assert!(!format!("{errors:?}").contains("hunter2"));
    }

    #[test]
    fn the_shipped_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.channels.is_empty());
    }
}
