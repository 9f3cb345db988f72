//! What a plugin can ask of the host: the imports of `wit/plugin.wit`, granted per channel.
//!
//! One [`HostState`] lives in each plugin instance's store. Its [`Grants`] are the channel's (fixed
//! for the instance's life); its [`Call`] is the current request's (set before each call, taken after),
//! which is what lets a reused instance serve one request after another without mixing them up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Limited};
use serde_json::Value;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{clock, config, kv, log, outbound_http, types};
use super::spec::{AllowedHost, LogLevel};
use crate::channel::Route;
use crate::proxy::headers;
use crate::proxy::record::{TxRecording, answer_record};
use crate::proxy::upstream::Upstreams;
use crate::store::{Store, StoreError};
use crate::transaction::{
    ErrorDetails, Exchange, Headers, PluginLogLine, RequestRecord, Timestamp,
};

/// Most log lines kept per request; later ones are counted, not kept.
const MAX_LOG_LINES: u32 = 100;
/// Most bytes of log text (messages and fields) kept per request.
const MAX_LOG_BYTES: usize = 64 * 1024;
/// Longest key-value key, in bytes.
const MAX_KV_KEY: usize = 512;
/// Largest key-value value, in bytes.
const MAX_KV_VALUE: usize = 1024 * 1024;
/// Most bytes of guest stderr kept (a panic message is what we want from it).
const STDERR_CAPACITY: usize = 16 * 1024;

/// What the channel grants its plugin. Shared by every instance of one channel's plugin.
#[derive(Debug)]
pub struct Grants {
    pub channel: String,
    pub plugin: String,
    /// `plugin.config` as JSON text (handed out by `config.all`) and as a map (for `config.get`).
    pub config_text: String,
    pub config: serde_json::Map<String, Value>,
    /// The channel's id: keys of one channel never meet another's.
    pub kv_namespace: String,
    pub store: Arc<dyn Store>,
    pub allowed_hosts: Vec<AllowedHost>,
    /// Log lines below this level are not kept with the transaction.
    pub log_level: LogLevel,
    /// Most outbound calls one request may make.
    pub outbound_max_calls: u32,
    /// Largest outbound response body.
    pub outbound_max_response: u64,
}

/// The request being served by the instance.
#[derive(Debug)]
pub struct Call {
    pub started: Instant,
    /// Time spent waiting in host calls (the store, the network): not the guest's CPU time.
    pub waited: Duration,
    /// Nanoseconds the call spent yielded to other tasks of its worker (not its CPU time either);
    /// counted by the yield futures the deadline callback hands to wasmtime.
    pub yielded: Arc<std::sync::atomic::AtomicU64>,
    /// CPU time this call may use.
    pub deadline: Duration,
    pub recording: Option<Arc<TxRecording>>,
    /// The worker's upstream connections, for `outbound-http`.
    pub upstreams: Arc<Upstreams>,
    /// The channel's upstream timeout: the default and the longest for an outbound call.
    pub timeout: Duration,
    pub log_lines: u32,
    pub log_bytes: usize,
    pub log_dropped: u32,
    pub outbound_calls: u32,
    pub deadline_hit: bool,
}

impl Call {
    pub fn new(
        recording: Option<Arc<TxRecording>>,
        upstreams: Arc<Upstreams>,
        timeout: Duration,
    ) -> Call {
        Call {
            started: Instant::now(),
            waited: Duration::ZERO,
            yielded: Arc::default(),
            deadline: Duration::ZERO,
            recording,
            upstreams,
            timeout,
            log_lines: 0,
            log_bytes: 0,
            log_dropped: 0,
            outbound_calls: 0,
            deadline_hit: false,
        }
    }

    /// CPU time the guest has used so far (wall time minus time waiting on the host or yielded to
    /// other requests).
    pub fn guest_time(&self) -> Duration {
        let yielded = Duration::from_nanos(self.yielded.load(std::sync::atomic::Ordering::Relaxed));
        self.started
            .elapsed()
            .saturating_sub(self.waited)
            .saturating_sub(yielded)
    }
}

/// The data of one plugin instance's store.
pub struct HostState {
    pub grants: Arc<Grants>,
    pub call: Option<Call>,
    /// Memory cap for this instance, and whether the guest hit it.
    pub memory_limit: usize,
    pub memory_hit: bool,
    /// WASI, built on first use: most Rust guests touch it only to print a panic message.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("channel", &self.grants.channel)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub fn new(grants: Arc<Grants>, memory_limit: usize) -> HostState {
        HostState {
            grants,
            call: None,
            memory_limit,
            memory_hit: false,
            wasi: None,
            table: ResourceTable::new(),
            stderr: MemoryOutputPipe::new(STDERR_CAPACITY),
        }
    }

    /// What the guest has written to stderr so far (a panic message, usually).
    pub fn stderr(&self) -> Bytes {
        self.stderr.contents()
    }

    /// Runs a host operation that waits, counting its time as waiting rather than guest CPU.
    async fn waiting<T>(&mut self, op: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = op.await;
        if let Some(call) = &mut self.call {
            call.waited += started.elapsed();
        }
        out
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = self.stderr.clone();
        let ctx = self.wasi.get_or_insert_with(|| {
            // No files, no sockets, no environment: only stderr, captured.
            WasiCtxBuilder::new().stderr(stderr).build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_hit = true;
            wasmtime::bail!(
                "the plugin tried to grow its memory to {desired} bytes, over its limit of {} bytes",
                self.memory_limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let grants = &self.grants;
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        tracing::debug!(channel = %grants.channel, plugin = %grants.plugin, level = level.as_str(), fields = ?fields, "{message}");
        if level < grants.log_level {
            return;
        }
        let Some(call) = &mut self.call else { return };
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if call.log_lines >= MAX_LOG_LINES || call.log_bytes + size > MAX_LOG_BYTES {
            call.log_dropped += 1;
            return;
        }
        call.log_lines += 1;
        call.log_bytes += size;
        if let Some(recording) = &call.recording {
            recording.plugin_log(PluginLogLine {
                level: level.as_str().to_owned(),
                message,
                fields,
                timestamp: Timestamp::now(),
            });
        }
    }
}

impl config::Host for HostState {
    async fn all(&mut self) -> String {
        self.grants.config_text.clone()
    }

    async fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).map(Value::to_string)
    }
}

impl clock::Host for HostState {
    async fn now_ms(&mut self) -> u64 {
        Timestamp::now().0
    }

    async fn monotonic_ns(&mut self) -> u64 {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn kv_error(error: StoreError) -> kv::Error {
    match error {
        StoreError::NotAnInteger => kv::Error::NotAnInteger,
        other => kv::Error::Unavailable(other.to_string()),
    }
}

fn check_key(key: &str) -> Result<(), kv::Error> {
    if key.len() > MAX_KV_KEY {
        return Err(kv::Error::TooLarge(format!(
            "the key is {} bytes; the limit is {MAX_KV_KEY}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), kv::Error> {
    if value.len() > MAX_KV_VALUE {
        return Err(kv::Error::TooLarge(format!(
            "the value is {} bytes; the limit is {MAX_KV_VALUE}",
            value.len()
        )));
    }
    Ok(())
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        check_key(&key)?;
        let grants = Arc::clone(&self.grants);
        let got = self
            .waiting(grants.store.kv_get(&grants.kv_namespace, &key))
            .await;
        got.map(|v| v.map(|b| b.to_vec())).map_err(kv_error)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::Error> {
        check_key(&key)?;
        check_value(&value)?;
        let grants = Arc::clone(&self.grants);
        let done = self
            .waiting(grants.store.kv_set(
                &grants.kv_namespace,
                &key,
                Bytes::from(value),
                ttl(ttl_ms),
            ))
            .await;
        done.map_err(kv_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::Error> {
        check_key(&key)?;
        let grants = Arc::clone(&self.grants);
        let done = self
            .waiting(grants.store.kv_delete(&grants.kv_namespace, &key))
            .await;
        done.map_err(kv_error)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::Error> {
        check_key(&key)?;
        let grants = Arc::clone(&self.grants);
        let done = self
            .waiting(
                grants
                    .store
                    .kv_increment(&grants.kv_namespace, &key, delta, ttl(ttl_ms)),
            )
            .await;
        done.map_err(kv_error)
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, kv::Error> {
        check_key(&key)?;
        check_value(&value)?;
        let grants = Arc::clone(&self.grants);
        let done = self
            .waiting(grants.store.kv_compare_and_set(
                &grants.kv_namespace,
                &key,
                expected.map(Bytes::from),
                Bytes::from(value),
                ttl(ttl_ms),
            ))
            .await;
        done.map_err(kv_error)
    }
}

/// An outbound request checked against the grants: where it goes and what it is.
struct Outbound {
    route: Route,
    request: Request<Bytes>,
    record: RequestRecord,
    timeout: Duration,
}

impl HostState {
    fn prepare_outbound(
        &mut self,
        request: outbound_http::OutgoingRequest,
    ) -> Result<Outbound, outbound_http::Error> {
        use outbound_http::Error;
        let grants = Arc::clone(&self.grants);
        let Some(call) = &mut self.call else {
            return Err(Error::InvalidRequest("no request is being served".into()));
        };
        if call.outbound_calls >= grants.outbound_max_calls {
            return Err(Error::TooManyRequests);
        }
        let uri: Uri = request
            .url
            .parse()
            .map_err(|e| Error::InvalidRequest(format!("`{}` is not a URL: {e}", request.url)))?;
        let route = Route::for_url(&grants.plugin, &uri).map_err(Error::InvalidRequest)?;
        if !grants
            .allowed_hosts
            .iter()
            .any(|a| a.allows(&route.host, route.port))
        {
            return Err(Error::NotAllowed(format!(
                "{} is not on this channel's allowedHosts",
                route.authority
            )));
        }
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| Error::InvalidRequest(format!("`{}` is not a method", request.method)))?;
        let mut header_map = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::InvalidRequest(format!("`{name}` is not a header name")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                Error::InvalidRequest(format!("the value of `{name}` is not a valid header value"))
            })?;
            header_map.append(name, value);
        }
        headers::strip_hop_by_hop(&mut header_map);
        header_map.insert(http::header::HOST, route.host_header.clone());
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let body = Bytes::from(request.body);
        let (stored_body, body_truncated) = call
            .recording
            .as_ref()
            .map_or((None, false), |r| r.store_request_body(&body));
        let record = RequestRecord {
            host: Some(route.host.clone()),
            port: Some(route.port.to_string()),
            path: uri.path().to_owned(),
            querystring: uri.query().unwrap_or("").to_owned(),
            method: method.as_str().to_owned(),
            headers: Headers::redacted(&header_map),
            body: stored_body,
            body_truncated,
            timestamp: Timestamp::now(),
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = method;
        *outgoing.uri_mut() =
            Uri::try_from(path_and_query).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        *outgoing.headers_mut() = header_map;
        let timeout = request
            .timeout_ms
            .map_or(call.timeout, |ms| Duration::from_millis(u64::from(ms)))
            .min(call.timeout);
        call.outbound_calls += 1;
        Ok(Outbound {
            route,
            request: outgoing,
            record,
            timeout,
        })
    }
}

impl outbound_http::Host for HostState {
    async fn send(
        &mut self,
        request: outbound_http::OutgoingRequest,
    ) -> Result<types::Response, outbound_http::Error> {
        use outbound_http::Error;
        let Outbound {
            route,
            request,
            record,
            timeout,
        } = self.prepare_outbound(request)?;
        let Some(call) = &self.call else {
            return Err(Error::InvalidRequest("no request is being served".into()));
        };
        let upstreams = Arc::clone(&call.upstreams);
        let recording = call.recording.clone();
        let limit = usize::try_from(self.grants.outbound_max_response).unwrap_or(usize::MAX);
        let exchange = async {
            let response = upstreams
                .send(&route, request)
                .await
                .map_err(|e| Error::ConnectionFailed(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Error::TooLarge
                    } else {
                        Error::ConnectionFailed(crate::proxy::error::root_cause(e.as_ref()))
                    }
                })?
                .to_bytes();
            Ok((parts, body))
        };
        let result = self
            .waiting(async {
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout),
                }
            })
            .await;
        let mut recorded = Exchange {
            name: format!("{} (plugin)", self.grants.plugin),
            request: record,
            response: None,
            error: None,
        };
        let answer = match result {
            Ok((parts, body)) => {
                recorded.response = Some(answer_record(recording.as_ref(), &parts, &body));
                Ok(types::Response {
                    status: parts.status.as_u16(),
                    headers: super::output::fields_of(&parts.headers),
                    body: body.to_vec(),
                })
            }
            Err(error) => {
                recorded.error = Some(ErrorDetails::new(format!("{error:?}")));
                Err(error)
            }
        };
        if let Some(recording) = recording {
            recording.add_orchestration(recorded);
        }
        answer
    }
}
