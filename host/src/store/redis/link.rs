//! The connection to Redis.
//!
//! A store owns a thread running a current-thread tokio runtime ([`Thread`]): the connections'
//! driver tasks and the store's background tasks live there, and every command runs there, so
//! callers on any runtime (the workers', the recorder's, the API's) can share one store, and none
//! of them needs a timer of its own.
//!
//! [`Link`] holds the one multiplexed connection that every caller shares. Every command is bounded
//! by `store.timeout`. When a command meets a dropped connection, an I/O error, a timeout or a
//! server that cannot serve now (`READONLY`: a demoted primary; `LOADING`; `MASTERDOWN`), the
//! caller gets [`StoreError::Unavailable`] and the connection is dropped; nothing is retried (the
//! command may have run: a timeout does not mean a write failed). A task of the store's
//! ([`Link::reconnect`]) then connects again with jittered exponential back-off (100 ms to 5 s),
//! asking the Sentinels afresh for the primary each time. Meanwhile calls fail at once.
//!
//! Change notifications come from [`listen`] (pub/sub on a connection of its own, which RESP3
//! allows to be a multiplexed one) and [`poll`] (reads the generation every
//! `store.poll_interval`, because pub/sub messages are lost while the listener reconnects).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, RedisError, RedisResult,
    ServerErrorKind, Value,
};
use tokio::sync::{Notify, mpsc, watch};

use super::model;
use super::target::RedisTarget;
use crate::store::{StoreError, StoreResult};

/// The first wait before reconnecting; it doubles after each failure.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is checked with a `PING`: a connection that went silent
/// (a stopped server, a lost network path) delivers no message and no error.
const LISTENER_PING: Duration = Duration::from_secs(5);

// ----- the thread -----

/// The store's thread and its runtime; stopped (and joined) when dropped.
#[derive(Debug)]
pub(super) struct Thread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Thread {
    pub(super) fn start() -> StoreResult<Thread> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("redis-store".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Either a stop or the store gone: dropping the runtime ends every task.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the Redis store thread: {e}"))
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| "the thread ended".to_owned())
            .and_then(|h| h)
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the Redis store's runtime: {e}"))
            })?;
        Ok(Thread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("The Redis store thread panicked.");
        }
    }
}

// ----- connecting -----

/// A connection's timeouts: `store.timeout` for connecting and for every answer.
fn config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// Connects to the server `target` names (asking the Sentinels first, if it names them), within
/// `timeout` in all. `push`: a connection for pub/sub (RESP3, messages sent there); otherwise one
/// for commands (RESP2, whose Lua replies the scripts are written for). Must run on the store's
/// runtime (the connection's driver task is spawned where it runs). The error says why, without a
/// password.
pub(super) async fn open(
    target: &RedisTarget,
    timeout: Duration,
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<MultiplexedConnection, String> {
    match tokio::time::timeout(timeout, open_within(target, timeout, push)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn open_within(
    target: &RedisTarget,
    timeout: Duration,
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<MultiplexedConnection, String> {
    let (info, from_sentinel) = match target {
        RedisTarget::Direct { url } => {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("the URL is not usable: {e}"))?;
            (info, false)
        }
        RedisTarget::Sentinel { .. } => (primary(target, timeout).await?, true),
    };
    // Named in errors only when the Sentinels chose it: a direct URL is in the caller's message.
    let at = |e: &dyn std::fmt::Display| {
        if from_sentinel {
            format!("the primary {}: {e}", info.addr())
        } else {
            e.to_string()
        }
    };
    let protocol = if push.is_some() {
        ProtocolVersion::RESP3
    } else {
        ProtocolVersion::RESP2
    };
    let redis = info.redis_settings().clone().set_protocol(protocol);
    let info = info.clone().set_redis_settings(redis);
    let client = Client::open(info).map_err(|e| at(&e))?;
    let mut config = config(timeout);
    if let Some(push) = push {
        config = config.set_push_sender(push);
    }
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| at(&e))?;
    if from_sentinel {
        // The Sentinels' answer can be stale (a failover under way): a replica refuses writes.
        let role: Value = redis::cmd("ROLE")
            .query_async(&mut con)
            .await
            .map_err(|e| at(&e))?;
        let role = match role {
            Value::Array(items) => items.into_iter().next(),
            _ => None,
        }
        .and_then(|first| model::bulk(first, "ROLE").ok().flatten());
        if role.as_deref() != Some(&b"master"[..]) {
            return Err(at(&format!(
                "named the primary by the Sentinels, it is a {}",
                role.map_or_else(
                    || "server of unknown role".to_owned(),
                    |r| String::from_utf8_lossy(&r).into_owned()
                )
            )));
        }
    }
    Ok(con)
}

/// Asks the Sentinels, in turn, where the primary is; the connection details to reach it.
async fn primary(target: &RedisTarget, timeout: Duration) -> Result<ConnectionInfo, String> {
    let RedisTarget::Sentinel {
        sentinels,
        service,
        db,
        username,
        password,
        tls,
    } = target
    else {
        return Err("not a Sentinel target".into());
    };
    let address = |host: &str, port: u16| {
        if *tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    };
    let mut failures = Vec::new();
    for (host, port) in sentinels {
        match ask_sentinel(address(host, *port), service, timeout).await {
            Ok((primary_host, primary_port)) => {
                let mut redis = RedisConnectionInfo::default().set_db(*db);
                if let Some(user) = username {
                    redis = redis.set_username(user);
                }
                if let Some(pass) = password {
                    redis = redis.set_password(pass);
                }
                let info = address(&primary_host, primary_port)
                    .into_connection_info()
                    .map_err(|e| format!("the primary {primary_host}:{primary_port}: {e}"))?
                    .set_redis_settings(redis);
                tracing::debug!(
                    sentinel = %format!("{host}:{port}"),
                    %service,
                    primary = %format!("{primary_host}:{primary_port}"),
                    "A Sentinel named the primary."
                );
                return Ok(info);
            }
            Err(why) => failures.push(format!("Sentinel {host}:{port}: {why}")),
        }
    }
    Err(format!(
        "no Sentinel named the primary of {service:?} ({})",
        failures.join("; ")
    ))
}

/// `SENTINEL get-master-addr-by-name` on one Sentinel.
async fn ask_sentinel(
    sentinel: ConnectionAddr,
    service: &str,
    timeout: Duration,
) -> Result<(String, u16), String> {
    let client = Client::open(sentinel).map_err(|e| e.to_string())?;
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config(timeout))
        .await
        .map_err(|e| e.to_string())?;
    let reply: Value = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(service)
        .query_async(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    let items = match reply {
        Value::Nil => return Err(format!("it knows no service {service:?}")),
        other => {
            model::array(other, "SENTINEL get-master-addr-by-name").map_err(|e| e.to_string())?
        }
    };
    let mut items = items.into_iter();
    let field = |v: Option<Value>| {
        v.and_then(|v| {
            model::bulk(v, "SENTINEL get-master-addr-by-name")
                .ok()
                .flatten()
        })
        .and_then(|b| String::from_utf8(b).ok())
    };
    let host = field(items.next());
    let port = field(items.next()).and_then(|p| p.parse::<u16>().ok());
    match (host, port) {
        (Some(host), Some(port)) => Ok((host, port)),
        _ => Err("its answer is not a host and port".into()),
    }
}

/// A wait of between half and all of `delay`, so that instances that lost Redis together do not
/// come back in step.
pub(super) fn jitter(delay: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let half = delay / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % nanos })
}

// ----- faults -----

/// What a failed command says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The connection, or the server behind it, cannot serve: replace it.
    Connection,
    /// The server refused for now (out of memory, no replicas, a script running long).
    Refused,
    /// The command itself failed (a script error, a bad argument).
    Command,
}

fn fault(error: &RedisError) -> Fault {
    match error.kind() {
        ErrorKind::Io | ErrorKind::Parse => Fault::Connection,
        ErrorKind::Server(
            ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown,
        ) => Fault::Connection,
        ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown) => {
            Fault::Refused
        }
        _ if error.is_connection_dropped() || error.is_timeout() => Fault::Connection,
        _ => match error.code() {
            Some("NOREPLICAS" | "OOM" | "BUSY" | "MISCONF" | "NOTREADY") => Fault::Refused,
            _ => Fault::Command,
        },
    }
}

// ----- the shared connection -----

/// The connection every caller of one store shares, and what replaces it when it breaks.
pub(super) struct Link {
    target: RedisTarget,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Wakes [`Link::reconnect`] when the connection breaks.
    broken: Notify,
    /// What [`Link::sync`] knows; a tokio mutex, held across its commands, so syncs queue.
    sync: tokio::sync::Mutex<SyncState>,
}

struct State {
    /// `None` while broken: calls fail at once until the reconnect task puts a new one here.
    con: Option<MultiplexedConnection>,
    /// Counts connections, so a failure seen on one does not break its successor.
    epoch: u64,
    /// Why the connection broke, or why the last attempt to replace it failed.
    why: String,
}

#[derive(Default)]
struct SyncState {
    /// The connection epoch the rest is about (a reconnect may reach another server).
    epoch: u64,
    waitaof: WaitAof,
    /// A connection of its own for `WAITAOF`, which blocks: on the shared connection every
    /// command behind it would wait too.
    con: Option<MultiplexedConnection>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum WaitAof {
    #[default]
    Unknown,
    Supported,
    /// Redis before 7.2: `sync` does nothing.
    Unsupported,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("connected", &state.con.is_some())
            .field("epoch", &state.epoch)
            .finish()
    }
}

impl Link {
    /// A link over `con`, a connection made by [`open`] on `runtime`.
    pub(super) fn new(
        target: RedisTarget,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
        con: MultiplexedConnection,
    ) -> Link {
        Link {
            target,
            timeout,
            runtime,
            state: Mutex::new(State {
                con: Some(con),
                epoch: 1,
                why: String::new(),
            }),
            broken: Notify::new(),
            sync: tokio::sync::Mutex::default(),
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits `pause` on the store's runtime (the caller's may have no timer).
    pub(super) async fn pause(&self, pause: Duration) {
        let _ = self.runtime.spawn(tokio::time::sleep(pause)).await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to the state is a single assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection, or why there is none.
    fn current(&self, what: &str) -> StoreResult<(MultiplexedConnection, u64)> {
        let state = self.state();
        match &state.con {
            Some(con) => Ok((con.clone(), state.epoch)),
            None => Err(StoreError::Unavailable(format!(
                "{what}: not connected to Redis at {} ({}); reconnecting",
                self.target, state.why
            ))),
        }
    }

    /// Runs `command` on the shared connection, on the store's runtime, within the timeout.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, command: F) -> StoreResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (con, epoch) = self.current(what)?;
        let result = self.run(command(con)).await;
        self.judge(what, epoch, result)
    }

    /// Runs `command` on the store's runtime within the timeout: `None` if it timed out.
    async fn run<T: Send + 'static>(
        &self,
        command: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> StoreResult<Option<RedisResult<T>>> {
        let timeout = self.timeout;
        self.runtime
            .spawn(async move { tokio::time::timeout(timeout, command).await.ok() })
            .await
            .map_err(|e| StoreError::Backend(format!("a Redis command's task failed: {e}")))
    }

    /// What a command's outcome means for the caller and for the connection it ran on.
    fn judge<T>(
        &self,
        what: &str,
        epoch: u64,
        result: StoreResult<Option<RedisResult<T>>>,
    ) -> StoreResult<T> {
        match result? {
            Some(Ok(value)) => Ok(value),
            None => {
                let why = format!(
                    "Redis did not answer within {} (the command may still take effect)",
                    humantime::format_duration(self.timeout)
                );
                self.break_off(epoch, &why);
                Err(StoreError::Unavailable(format!(
                    "{what}: {why} ({})",
                    self.target
                )))
            }
            Some(Err(error)) => match fault(&error) {
                Fault::Connection => {
                    self.break_off(epoch, &error.to_string());
                    Err(StoreError::Unavailable(format!(
                        "{what}: Redis at {}: {error}",
                        self.target
                    )))
                }
                Fault::Refused => Err(StoreError::Unavailable(format!(
                    "{what}: Redis at {} refused: {error}",
                    self.target
                ))),
                Fault::Command => Err(StoreError::Backend(format!("{what}: {error}"))),
            },
        }
    }

    /// Drops connection `epoch` (if it is still the current one) and wakes the reconnect task.
    fn break_off(&self, epoch: u64, why: &str) {
        {
            let mut state = self.state();
            if state.epoch != epoch || state.con.is_none() {
                return;
            }
            state.con = None;
            state.why = why.to_owned();
        }
        tracing::warn!(
            target = %self.target,
            reason = why,
            "Lost the connection to Redis; reconnecting in the background."
        );
        self.broken.notify_one();
    }

    /// The reconnect task: whenever the connection breaks, connects again (back-off between
    /// attempts) and puts the new connection in place. Runs on the store's runtime until it stops.
    pub(super) async fn reconnect(self: Arc<Self>) {
        loop {
            self.broken.notified().await;
            let mut delay = MIN_BACKOFF;
            let mut attempts = 0u32;
            loop {
                tokio::time::sleep(jitter(delay)).await;
                attempts += 1;
                match open(&self.target, self.timeout, None).await {
                    Ok(con) => {
                        {
                            let mut state = self.state();
                            state.epoch += 1;
                            state.con = Some(con);
                            state.why.clear();
                        }
                        tracing::info!(target = %self.target, attempts, "Reconnected to Redis.");
                        break;
                    }
                    Err(why) => {
                        tracing::debug!(target = %self.target, attempts, reason = %why, "Could not reconnect to Redis.");
                        self.state().why = why;
                        delay = (delay * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    // ----- sync -----

    /// Waits until Redis has fsynced every write acknowledged so far (`WAITAOF 1 0`), where it can
    /// (Redis 7.2 and later, with `appendonly yes`); otherwise only checks that it is connected.
    pub(super) async fn sync(&self, marker: String) -> StoreResult<()> {
        const WHAT: &str = "making writes durable";
        let (_, epoch) = self.current(WHAT)?;
        let mut sync = self.sync.lock().await;
        if sync.epoch != epoch {
            *sync = SyncState {
                epoch,
                ..SyncState::default()
            };
        }
        if sync.waitaof == WaitAof::Unknown {
            let info: Value = self
                .call(WHAT, |mut con| async move {
                    redis::cmd("COMMAND")
                        .arg("INFO")
                        .arg("WAITAOF")
                        .query_async(&mut con)
                        .await
                })
                .await?;
            // One entry per command asked about: nil for an unknown command.
            let known = matches!(&info, Value::Array(items) if items.first().is_some_and(|i| !matches!(i, Value::Nil)));
            sync.waitaof = if known {
                WaitAof::Supported
            } else {
                tracing::debug!(target = %self.target, "Redis has no WAITAOF (before 7.2): sync cannot wait for its fsync.");
                WaitAof::Unsupported
            };
        }
        if sync.waitaof == WaitAof::Unsupported {
            return Ok(());
        }
        let con = match &sync.con {
            Some(con) => con.clone(),
            None => {
                let (target, timeout) = (self.target.clone(), self.timeout);
                let opened = self
                    .runtime
                    .spawn(async move { open(&target, timeout, None).await })
                    .await
                    .map_err(|e| StoreError::Backend(format!("{WHAT}: the task failed: {e}")))?;
                let con = opened.map_err(|why| {
                    StoreError::Unavailable(format!(
                        "{WHAT}: cannot connect to Redis at {}: {why}",
                        self.target
                    ))
                })?;
                sync.con = Some(con.clone());
                con
            }
        };
        // Within our own timeout, with room for the answer.
        let wait_ms = (self.timeout.as_millis() * 3 / 4).max(1);
        let mut con_for_task = con;
        let result = self
            .run(async move {
                // `WAITAOF` waits for this connection's own writes: the marker makes everything
                // acknowledged before it (on any connection) one of them.
                redis::pipe()
                    .cmd("SET")
                    .arg(marker)
                    .arg(1)
                    .ignore()
                    .cmd("WAITAOF")
                    .arg(1)
                    .arg(0)
                    .arg(u64::try_from(wait_ms).unwrap_or(u64::MAX))
                    .query_async::<Value>(&mut con_for_task)
                    .await
            })
            .await?;
        let reply = match result {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => {
                let text = error.to_string();
                if text.contains("unknown command") {
                    sync.waitaof = WaitAof::Unsupported;
                    return Ok(());
                }
                if text.contains("appendonly") {
                    // No AOF to wait for: warned about when the store connected.
                    return Ok(());
                }
                sync.con = None;
                return Err(StoreError::Unavailable(format!(
                    "{WHAT}: Redis at {}: {error}",
                    self.target
                )));
            }
            None => {
                sync.con = None;
                return Err(StoreError::Unavailable(format!(
                    "{WHAT}: Redis at {} did not answer within {}",
                    self.target,
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        let counts = model::array(reply, "WAITAOF")?
            .into_iter()
            .next()
            .map(|v| model::array(v, "WAITAOF"))
            .transpose()?
            .unwrap_or_default();
        let local = counts
            .into_iter()
            .next()
            .map(|v| model::int(v, "WAITAOF"))
            .transpose()?
            .unwrap_or(0);
        if local < 1 {
            return Err(StoreError::Unavailable(format!(
                "{WHAT}: Redis at {} did not fsync its append-only file within {wait_ms} ms",
                self.target
            )));
        }
        Ok(())
    }
}

// ----- at connect -----

/// Warns if Redis would lose acknowledged writes in a crash (read with `CONFIG GET`, which may be
/// disabled: then nothing is said).
pub(super) async fn check_persistence(link: &Link) {
    let reply = link
        .call("reading the persistence settings", |mut con| async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("append*")
                .query_async::<Value>(&mut con)
                .await
        })
        .await;
    let settings: Vec<(String, String)> = match reply {
        Ok(Value::Array(items)) => {
            let mut out = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let (Ok(Some(k)), Ok(Some(v))) = (model::bulk(k, ""), model::bulk(v, "")) {
                    out.push((
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            }
            out
        }
        Ok(Value::Map(items)) => items
            .into_iter()
            .filter_map(|(k, v)| match (model::bulk(k, ""), model::bulk(v, "")) {
                (Ok(Some(k)), Ok(Some(v))) => Some((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )),
                _ => None,
            })
            .collect(),
        Ok(_) | Err(_) => {
            tracing::debug!(target = %link.target, "Could not read Redis' persistence settings (CONFIG GET is refused).");
            return;
        }
    };
    let get = |name: &str| {
        settings
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    match (get("appendonly"), get("appendfsync")) {
        (Some(appendonly), _) if !appendonly.eq_ignore_ascii_case("yes") => tracing::warn!(
            target = %link.target,
            appendonly,
            "Redis keeps no append-only file: a crash loses the writes since its last snapshot, \
             acknowledged transactions and configuration included. Set `appendonly yes` and \
             `appendfsync always` on the Redis server."
        ),
        (Some(_), Some(appendfsync)) if !appendfsync.eq_ignore_ascii_case("always") => {
            tracing::warn!(
                target = %link.target,
                appendfsync,
                "Redis does not fsync every write: a crash can lose about the last second of \
                 acknowledged writes. Set `appendfsync always` on the Redis server (on Redis 7.2 \
                 and later the recorder's syncs wait for the fsync anyway)."
            )
        }
        _ => {}
    }
}

// ----- change notifications -----

/// Sends `next` unless a later generation was sent already (notifications arrive in any order).
pub(super) fn announce(sender: &watch::Sender<u64>, next: u64) {
    sender.send_if_modified(|current| {
        if next > *current {
            *current = next;
            true
        } else {
            false
        }
    });
}

/// The pub/sub listener: subscribes to the change channel on a connection of its own, announces
/// every generation published there, and subscribes again (back-off between attempts, Sentinels
/// asked afresh) whenever that connection fails. Runs on the store's runtime until it stops.
pub(super) async fn listen(
    link: Arc<Link>,
    channel: String,
    generation_key: String,
    sender: Arc<watch::Sender<u64>>,
) {
    let mut delay = MIN_BACKOFF;
    loop {
        let (push, mut messages) = mpsc::unbounded_channel();
        match subscribe(&link, &channel, push).await {
            Ok(mut con) => {
                delay = MIN_BACKOFF;
                // Whatever was published while this listener was not subscribed.
                let read = tokio::time::timeout(
                    link.timeout,
                    redis::cmd("GET")
                        .arg(&generation_key)
                        .query_async::<Value>(&mut con),
                )
                .await;
                if let Ok(Ok(value)) = read
                    && let Ok(generation) = model::counter(value, "the generation")
                {
                    announce(&sender, generation);
                }
                let why = hear(&mut con, &mut messages, &sender, link.timeout).await;
                tracing::debug!(target = %link.target, reason = %why, "The change notification connection failed; subscribing again.");
            }
            Err(why) => {
                tracing::debug!(target = %link.target, reason = %why, "Could not subscribe to change notifications.");
            }
        }
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    link: &Link,
    channel: &str,
    push: mpsc::UnboundedSender<PushInfo>,
) -> Result<MultiplexedConnection, String> {
    let mut con = open(&link.target, link.timeout, Some(push)).await?;
    match tokio::time::timeout(link.timeout, con.subscribe(channel)).await {
        Ok(Ok(())) => Ok(con),
        Ok(Err(error)) => Err(format!("SUBSCRIBE: {error}")),
        Err(_) => Err("SUBSCRIBE: no answer".into()),
    }
}

/// Announces the generations published until the connection fails; why it failed.
async fn hear(
    con: &mut MultiplexedConnection,
    messages: &mut mpsc::UnboundedReceiver<PushInfo>,
    sender: &watch::Sender<u64>,
    timeout: Duration,
) -> String {
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                None => return "the connection closed".into(),
                Some(PushInfo { kind: PushKind::Disconnection, .. }) => {
                    return "the connection closed".into()
                }
                Some(PushInfo { kind: PushKind::Message, data }) => {
                    let generation = data
                        .into_iter()
                        .nth(1)
                        .and_then(|payload| model::counter(payload, "a change notification").ok());
                    if let Some(generation) = generation {
                        announce(sender, generation);
                    }
                }
                Some(_) => {}
            },
            () = tokio::time::sleep(LISTENER_PING) => {
                match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(con)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return format!("PING: {error}"),
                    Err(_) => return "PING: no answer".into(),
                }
            }
        }
    }
}

/// The poller: reads the generation every `every` and announces it. Catches what pub/sub missed.
pub(super) async fn poll(
    link: Arc<Link>,
    generation_key: String,
    sender: Arc<watch::Sender<u64>>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let key = generation_key.clone();
        let read = link
            .call("reading the generation", |mut con| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Value>(&mut con)
                    .await
            })
            .await
            .and_then(|value| model::counter(value, "the generation"));
        match read {
            Ok(generation) => announce(&sender, generation),
            // The connection's trouble is reported where it breaks.
            Err(error) => tracing::trace!(%error, "Could not poll the generation."),
        }
    }
}
